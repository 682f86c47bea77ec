// `mtlsd policy explain` and `mtlsd policy test`: why a request gets its decision, and a decision table for CI.
import { parseArgs } from "node:util";
import { type Config, ConfigError, type LoadedConfig, loadConfigFile } from "../config/index.ts";
import { compileConfigPolicy } from "../config-reload.ts";
import { MtlsdError } from "../errors.ts";
import { DenyList, parseSpiffeId } from "../identity/index.ts";
import { type Decision, formatExplanation, type Policy } from "../policy/index.ts";
import { type CliIo, EXIT_FAILURE, EXIT_OK, EXIT_USAGE, UsageError } from "./io.ts";
import { isMethod, loadPolicyCases, type PolicyCase, parseSource } from "./policy-cases.ts";
import { configPath } from "./run.ts";

export const POLICY_HELP = `Usage:
  mtlsd policy explain [-c FILE] [--from ID] [--method M] --path P
      Prints the decision for one request, the rule that made it, and why every other rule did not match.
      --from      the caller's SPIFFE ID, or "unauthenticated" (the default: a plaintext caller)
      --method    the HTTP method (default GET)
      --path      the request-target as sent, query included; it is normalized as the sidecar would
  mtlsd policy test [-c FILE] CASES.yaml
      Checks a list of requests against their expected decisions; prints the ones that differ.
      Each case: {name?, from?, method? (GET), path, expect: allow | deny | bad_path, rule?, shadow?}

FILE defaults to $MTLSD_CONFIG, then ./mtlsd.yaml. Exit codes: 0 as expected (test) or explained (explain),
1 some case differs (test), 2 usage, config or cases file error.
`;

/** Why a caller never reaches the policy: the connection itself is refused first. */
interface ConnectionRefusal {
  reason: string;
  detail: string;
}

interface LoadedPolicy {
  loaded: LoadedConfig;
  config: Config;
  policy: Policy;
  denyList: DenyList;
}

/** Loads the config and compiles its policy as `mtlsd run` would; config problems are ConfigErrors. */
function loadPolicy(file: string): LoadedPolicy {
  const loaded = loadConfigFile(file);
  if (!loaded.config.inbound) {
    throw new ConfigError(loaded.file, [
      {
        path: "inbound",
        expected: "an inbound section (its policy is what this command reads)",
        found: "none",
      },
    ]);
  }
  return {
    loaded,
    config: loaded.config,
    policy: compileConfigPolicy(loaded),
    denyList: new DenyList(loaded.config.identity.deny),
  };
}

/** What the inbound listener does before any policy: strict mode, the trust domain and the deny list. */
function connectionRefusal(
  config: Config,
  denyList: DenyList,
  source: string | null,
): ConnectionRefusal | null {
  if (source === null) {
    return config.inbound!.mode === "strict"
      ? {
          reason: "mtls_required",
          detail: "inbound.mode is strict: a plaintext request gets 400 mtls_required before any policy runs",
        }
      : null;
  }
  const parsed = parseSpiffeId(source);
  const trustDomain = config.identity.trustDomain;
  if (parsed.ok && parsed.id.trustDomain !== trustDomain) {
    return {
      reason: "wrong_trust_domain",
      detail: `the peer is outside identity.trustDomain ${trustDomain}: its connection is refused at the handshake`,
    };
  }
  if (denyList.deniesSpiffeId(source)) {
    return {
      reason: "revoked",
      detail:
        "the SPIFFE ID is listed in identity.deny.spiffeIds: its connection is refused at the handshake",
    };
  }
  return null;
}

function describeConnection(
  config: Config,
  source: string | null,
  refusal: ConnectionRefusal | null,
): string {
  if (refusal) return `peer:     REFUSED (${refusal.reason}): ${refusal.detail}; the policy below never runs`;
  if (source === null) return "peer:     plaintext, accepted as unauthenticated (inbound.mode is permissive)";
  return `peer:     mTLS, in trust domain ${config.identity.trustDomain}`;
}

function configErrorExit(error: unknown, io: CliIo): number {
  if (error instanceof MtlsdError) {
    io.stderr.write(`mtlsd: ${error.message.replace("; nothing was started", "")}\n`);
    return EXIT_USAGE;
  }
  throw error;
}

export async function policyCommand(args: string[], io: CliIo): Promise<number> {
  const [subcommand, ...rest] = args;
  if (subcommand === "--help" || subcommand === "-h" || subcommand === "help") {
    io.stdout.write(POLICY_HELP);
    return EXIT_OK;
  }
  if (subcommand === "explain") return explainCommand(rest, io);
  if (subcommand === "test") return testCommand(rest, io);
  throw new UsageError(
    `${subcommand === undefined ? "a subcommand is required" : `unknown subcommand "${subcommand}"`}\n\n${POLICY_HELP}`,
  );
}

function explainCommand(args: string[], io: CliIo): number {
  const { values } = parseArgs({
    args,
    options: {
      config: { type: "string", short: "c" },
      from: { type: "string" },
      method: { type: "string", default: "GET" },
      path: { type: "string" },
    },
    strict: true,
  });
  const source = parseSource(values.from);
  if (!source.ok) throw new UsageError(`--from: ${source.problem}`);
  const method = values.method;
  if (!isMethod(method))
    throw new UsageError(`--method: expected an HTTP method like GET, found ${JSON.stringify(method)}`);
  if (values.path === undefined || values.path === "") {
    throw new UsageError("--path is required: the request-target to explain, like /v1/orders/42?full=1");
  }
  let loaded: LoadedPolicy;
  try {
    loaded = loadPolicy(configPath(values.config, io));
  } catch (error) {
    return configErrorExit(error, io);
  }
  const { config, policy, denyList } = loaded;
  const refusal = connectionRefusal(config, denyList, source.source);
  const [requestLine, ...others] = formatExplanation(
    policy.explain({ source: source.source, method, path: values.path }),
  ).split("\n");
  const lines = [
    `config:   ${loaded.loaded.file}`,
    requestLine,
    describeConnection(config, source.source, refusal),
    ...others,
  ];
  io.stdout.write(`${lines.join("\n")}\n`);
  return EXIT_OK;
}

/** What the sidecar would do with one case's request, in the terms a case states its expectation in. */
interface Outcome {
  verdict: "allow" | "deny" | "bad_path";
  /** The deciding rule, "default" or "override"; null when no policy decision was made. */
  rule: string | null;
  shadow: "shadow_allow" | "shadow_deny" | "none";
  /** For the table: "allow by rule x", "deny (refused at connection: revoked)". */
  text: string;
}

function shadowOf(decision: Decision): Outcome["shadow"] {
  if (decision.shadow.length === 0) return "none";
  return decision.shadow.some((hit) => hit.result === "shadow_deny") ? "shadow_deny" : "shadow_allow";
}

function outcomeOf(loaded: LoadedPolicy, c: PolicyCase): Outcome {
  const refusal = connectionRefusal(loaded.config, loaded.denyList, c.from);
  if (refusal)
    return {
      verdict: "deny",
      rule: null,
      shadow: "none",
      text: `deny (connection refused: ${refusal.reason})`,
    };
  const explanation = loaded.policy.explain({ source: c.from, method: c.method, path: c.path });
  const decision = explanation.decision;
  if (!decision)
    return { verdict: "bad_path", rule: null, shadow: "none", text: "bad_path (400 before policy)" };
  const verdict = decision.allow ? "allow" : "deny";
  const by =
    decision.rule === "default" || decision.rule === "override" ? decision.rule : `rule ${decision.rule}`;
  const shadow = shadowOf(decision);
  return {
    verdict,
    rule: decision.rule,
    shadow,
    text: `${verdict} by ${by}${shadow === "none" ? "" : `, ${shadow}`}`,
  };
}

function differs(c: PolicyCase, o: Outcome): boolean {
  return (
    c.expect !== o.verdict ||
    (c.rule !== undefined && c.rule !== o.rule) ||
    (c.shadow !== undefined && c.shadow !== o.shadow)
  );
}

function describeExpectation(c: PolicyCase): string {
  let text: string = c.expect;
  if (c.rule !== undefined) {
    text += ` by ${c.rule === "default" || c.rule === "override" ? c.rule : `rule ${c.rule}`}`;
  }
  if (c.shadow !== undefined) text += `, ${c.shadow === "none" ? "no shadow" : c.shadow}`;
  return text;
}

/** A plain-text table with padded columns, header first: readable in a terminal and in a CI log. */
function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, column) => Math.max(...rows.map((row) => row[column]!.length)));
  return rows
    .map((row) =>
      row
        .map((cell, column) => (column === row.length - 1 ? cell : cell.padEnd(widths[column]!)))
        .join("  ")
        .trimEnd(),
    )
    .map((line) => `  ${line}`)
    .join("\n");
}

function testCommand(args: string[], io: CliIo): number {
  const { values, positionals } = parseArgs({
    args,
    options: { config: { type: "string", short: "c" } },
    allowPositionals: true,
    strict: true,
  });
  if (positionals.length !== 1) {
    throw new UsageError(
      positionals.length === 0
        ? "the cases file is required: mtlsd policy test -c FILE CASES.yaml"
        : `one cases file, found ${positionals.length}: ${positionals.join(" ")}`,
    );
  }
  const casesFile = positionals[0]!;
  let loaded: LoadedPolicy;
  let cases: PolicyCase[];
  try {
    loaded = loadPolicy(configPath(values.config, io));
    cases = loadPolicyCases(configPath(casesFile, io));
  } catch (error) {
    return configErrorExit(error, io);
  }
  const rows: string[][] = [["case", "line", "request", "expected", "got"]];
  for (const c of cases) {
    const outcome = outcomeOf(loaded, c);
    if (!differs(c, outcome)) continue;
    rows.push([
      c.name === undefined ? `#${c.number}` : `#${c.number} ${c.name}`,
      c.line === undefined ? "" : String(c.line),
      `${c.method} ${c.path} from ${c.from ?? "unauthenticated"}`,
      describeExpectation(c),
      outcome.text,
    ]);
  }
  const where = `config ${loaded.loaded.file}, cases ${configPath(casesFile, io)}`;
  const failed = rows.length - 1;
  if (failed === 0) {
    io.stdout.write(`mtlsd policy test: all ${cases.length} cases as expected (${where})\n`);
    return EXIT_OK;
  }
  io.stdout.write(
    `mtlsd policy test: ${failed} of ${cases.length} cases differ (${where})\n\n${table(rows)}\n\n` +
      "Explain one with: mtlsd policy explain -c FILE --from ID --method M --path P\n",
  );
  return EXIT_FAILURE;
}
