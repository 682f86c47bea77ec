// `mtlsd run`: start the sidecar from a config file and keep it running until a signal stops it.
import { once } from "node:events";
import { parseArgs } from "node:util";
import { ConfigError, loadConfigFile } from "../config/index.ts";
import { MtlsdError } from "../errors.ts";
import { Sidecar } from "../sidecar.ts";
import { configPath } from "./config-path.ts";
import { type CliIo, EXIT_FAILURE, EXIT_OK, EXIT_USAGE } from "./io.ts";

// Re-exported for commands that import it from here; it lives in config-path.ts so they need not load the sidecar.
export { configPath };

// Codes that mean "what you gave me is wrong" (exit 2) rather than "something failed while running" (exit 1).
const CONFIG_CODES = new Set([
  "CONFIG_INVALID",
  "CONFIG_UNREADABLE",
  "POLICY_INVALID",
  "CREDENTIAL_UNREADABLE",
  "CERT_PARSE",
  "KEY_PARSE",
  "BUNDLE_INVALID",
  "CERT_KEY_MISMATCH",
  "CERT_EXPIRED",
  "CERT_NOT_YET_VALID",
  "SVID_INVALID",
  "WRONG_TRUST_DOMAIN",
  "CHAIN_UNTRUSTED",
  "CRL_PARSE",
  "CRL_UNTRUSTED",
  "CRL_NOT_YET_VALID",
  "CRL_EXPIRED",
  "CRL_INCOMPLETE",
  "CERT_REVOKED",
]);

export function exitCodeFor(error: unknown): number {
  return error instanceof ConfigError || (error instanceof MtlsdError && CONFIG_CODES.has(error.code))
    ? EXIT_USAGE
    : EXIT_FAILURE;
}

export async function runCommand(args: string[], io: CliIo): Promise<number> {
  const { values } = parseArgs({
    args,
    options: { config: { type: "string", short: "c" } },
    strict: true,
  });
  const file = configPath(values.config, io);
  const signals = io.signals ?? process;
  let sidecar: Sidecar;
  try {
    // SIGHUP reloads the credentials and the policy (as nginx and ghostunnel reload) instead of ending the
    // process; the config file is watched for policy changes too.
    sidecar = await Sidecar.start(loadConfigFile(file), { signals, watchConfig: true });
  } catch (error) {
    io.stderr.write(`mtlsd: ${(error as Error).message}\n`);
    return exitCodeFor(error);
  }
  const [signal] = await Promise.race([once(signals, "SIGTERM"), once(signals, "SIGINT")]);
  sidecar.logger.info({ signal }, "stopping");
  await sidecar.stop();
  return EXIT_OK;
}
