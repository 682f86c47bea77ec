// The `mtlsd` command: parses the subcommand, dispatches, and turns outcomes into exit codes.
import { readFileSync } from "node:fs";
import { getAsset, isSea } from "node:sea";
import { type CliIo, EXIT_OK, EXIT_USAGE, UsageError } from "./io.ts";

export type { CliIo } from "./io.ts";

const HELP = `mtlsd: a sidecar that wraps plain HTTP in mutual TLS with SPIFFE identities

Usage:
  mtlsd demo [--keep]     a tour with nothing to set up: two apps, their sidecars, allowed and denied
                          calls, connection reuse, a certificate rotation
  mtlsd run [-c FILE]     run the sidecar (FILE defaults to $MTLSD_CONFIG, then ./mtlsd.yaml);
                          SIGHUP reloads credentials and policy, a change of FILE reloads the policy
  mtlsd check [-c FILE] [--peer HOST:PORT [--method M] [--path P]]
                          validate config and credentials; with --peer, a live mTLS handshake
  mtlsd policy explain [-c FILE] [--from ID] [--method M] --path P
                          the decision for one request, the rule that made it, why the others did not match
  mtlsd policy test [-c FILE] CASES.yaml
                          check a table of expected decisions; exit 1 on any difference
  mtlsd certs init|issue|inspect   a dev PKI, and a verdict on any certificate file (certs --help)
  mtlsd --version         print the version
  mtlsd --help            print this help

SIGTERM or SIGINT drains (limits.drainTimeout) and exits 0; a second one exits 1 at once.
Exit codes: 0 ok, 1 runtime failure, 2 usage or config error.
Docs: README.md and docs/ (every config key: docs/configuration.md; a full example: config/mtlsd.example.yaml)
`;

// Each command is loaded on use: `certs`, `check` and `--version` need neither the data path nor its
// dependencies, and start in about half the time.
const COMMANDS: Record<string, (args: string[], io: CliIo) => Promise<number>> = {
  run: async (args, io) => (await import("./run.ts")).runCommand(args, io),
  certs: async (args, io) => (await import("./certs.ts")).certsCommand(args, io),
  check: async (args, io) => (await import("./check.ts")).checkCommand(args, io),
  demo: async (args, io) => (await import("./demo.ts")).demoCommand(args, io),
  policy: async (args, io) => (await import("./policy.ts")).policyCommand(args, io),
};

export function version(): string {
  // The single binary (scripts/build-binary.ts) carries package.json as an asset: it has no file beside it.
  const text = isSea()
    ? getAsset("package.json", "utf8")
    : readFileSync(new URL("../../package.json", import.meta.url), "utf8");
  const manifest = JSON.parse(text) as { version: string };
  return manifest.version;
}

export async function runCli(argv: string[], io: CliIo): Promise<number> {
  const [command, ...rest] = argv;
  if (command === undefined) {
    io.stderr.write(HELP);
    return EXIT_USAGE;
  }
  if (command === "--help" || command === "-h" || command === "help") {
    io.stdout.write(HELP);
    return EXIT_OK;
  }
  if (command === "--version" || command === "-v") {
    io.stdout.write(`mtlsd ${version()}\n`);
    return EXIT_OK;
  }
  const handler = COMMANDS[command];
  if (!handler) {
    io.stderr.write(`mtlsd: unknown command "${command}"\n\n${HELP}`);
    return EXIT_USAGE;
  }
  try {
    return await handler(rest, io);
  } catch (error) {
    if (error instanceof UsageError || (error as { code?: string }).code?.startsWith("ERR_PARSE_ARGS")) {
      io.stderr.write(`mtlsd ${command}: ${(error as Error).message}\n`);
      return EXIT_USAGE;
    }
    throw error;
  }
}
