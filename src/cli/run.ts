// `mtlsd run`: start the sidecar from a config file and keep it running until a signal stops it.
import cluster from "node:cluster";
import { parseArgs } from "node:util";
import { ConfigError, loadConfigFile } from "../config/index.ts";
import { MtlsdError } from "../errors.ts";
import { parseDnsServers } from "../outbound/index.ts";
import { Sidecar } from "../sidecar.ts";
import { logsWritten } from "../telemetry/index.ts";
import { Primary, runWorker } from "../workers/index.ts";
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
  "FEDERATED_BUNDLE_INVALID",
  "DNS_SERVERS_INVALID",
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
  // With `workers: N`, the primary forks this same command N times; each copy serves as a worker.
  if (cluster.isWorker) return runWorker(workerOptions(io));
  const file = configPath(values.config, io);
  const signals = io.signals ?? process;
  // Listening from the first moment: a stop signal that arrives just as startup ends must drain rather than
  // kill the process by default, and one during a long startup (the Workload API's wait for a first SVID)
  // ends it at once, with nothing serving yet.
  const stop = new StopSignals(signals);
  let sidecar: Sidecar | Primary;
  try {
    const dnsServers = dnsServersFrom(io.env);
    // SIGHUP reloads the credentials and the config (as nginx and ghostunnel reload) instead of ending the
    // process; the config file is watched for changes too.
    const loaded = loadConfigFile(file);
    const started = await Promise.race([
      loaded.config.workers > 1
        ? Primary.start(loaded, { signals, watchConfig: true })
        : Sidecar.start(loaded, {
            signals,
            watchConfig: true,
            ...(dnsServers ? { dnsServers } : {}),
          }),
      stop.first,
    ]);
    if (typeof started === "string") {
      io.stderr.write(`mtlsd: ${started} while starting: stopped before serving\n`);
      stop.close();
      return EXIT_OK;
    }
    sidecar = started;
  } catch (error) {
    stop.close();
    io.stderr.write(`mtlsd: ${(error as Error).message}\n`);
    return exitCodeFor(error);
  }
  return await drainOnSignals(sidecar, stop);
}

/** A worker reads `$MTLSD_DNS_SERVERS` as the primary did (they share the environment). */
function workerOptions(io: CliIo): { dnsServers?: string[] } {
  const dnsServers = dnsServersFrom(io.env);
  return dnsServers ? { dnsServers } : {};
}

/** `$MTLSD_DNS_SERVERS`: DNS servers asked for upstream names instead of the system's resolver. */
function dnsServersFrom(env: NodeJS.ProcessEnv): string[] | undefined {
  const text = env.MTLSD_DNS_SERVERS;
  if (text === undefined || text.trim() === "") return undefined;
  const parsed = parseDnsServers(text);
  if ("error" in parsed) {
    throw new MtlsdError(
      "DNS_SERVERS_INVALID",
      `$MTLSD_DNS_SERVERS: ${parsed.error}; give IP addresses with optional ports, comma-separated (127.0.0.1:8600,[::1]:53), or unset it to use the system's resolver`,
    );
  }
  return parsed.servers;
}

/** SIGTERM and SIGINT, counted from construction until closed: the first, and the second. */
class StopSignals {
  readonly first: Promise<NodeJS.Signals>;
  readonly second: Promise<NodeJS.Signals>;
  readonly #signals: NodeJS.EventEmitter;
  readonly #onSignal: (signal: NodeJS.Signals) => void;

  constructor(signals: NodeJS.EventEmitter) {
    this.#signals = signals;
    let received = 0;
    let first: (signal: NodeJS.Signals) => void = () => {};
    let second: (signal: NodeJS.Signals) => void = () => {};
    this.first = new Promise((resolve) => {
      first = resolve;
    });
    this.second = new Promise((resolve) => {
      second = resolve;
    });
    // Listeners stay installed until exit: a signal with no listener would kill the process outright.
    this.#onSignal = (signal) => {
      received++;
      if (received === 1) first(signal);
      else if (received === 2) second(signal);
    };
    signals.on("SIGTERM", this.#onSignal);
    signals.on("SIGINT", this.#onSignal);
  }

  close(): void {
    this.#signals.off("SIGTERM", this.#onSignal);
    this.#signals.off("SIGINT", this.#onSignal);
  }
}

/**
 * The first SIGTERM or SIGINT drains (limits.drainTimeout) and exits 0, even when the deadline had to cut
 * connections: the shutdown went as configured. A second signal during the drain exits 1 at once, as
 * "runtime failure": requests still in flight were abandoned.
 */
async function drainOnSignals(sidecar: Sidecar | Primary, stop: StopSignals): Promise<number> {
  try {
    const signal = await stop.first;
    // Read now, not at startup: a config reload may have changed it.
    const drainTimeout = sidecar.config.limits.drainTimeout;
    sidecar.logger.info({ signal, drain_timeout_ms: drainTimeout }, "stop signal received");
    const outcome = await Promise.race([
      sidecar.stop(drainTimeout).then(() => "drained" as const),
      stop.second,
    ]);
    if (outcome === "drained") {
      await logsWritten(sidecar.logger);
      return EXIT_OK;
    }
    sidecar.logger.warn({ signal: outcome }, "second stop signal: exiting now without finishing the drain");
    // Workers are processes of their own: they must not outlive the primary's exit.
    if (sidecar instanceof Primary) void sidecar.stop(0);
    await logsWritten(sidecar.logger);
    return EXIT_FAILURE;
  } finally {
    stop.close();
  }
}
