// Reads a YAML config file, validates it against the schema and cross-field rules, and resolves file paths.
import { readFileSync } from "node:fs";
import path from "node:path";
import { type Document, isMap, isNode, isScalar, isSeq, LineCounter, parseDocument } from "yaml";
import { MtlsdError } from "../errors.ts";
import { type Config, configSchema, parseHostPort, parseWorkloadApiSocket } from "./config-schema.ts";
import { formatDuration, INVALID, type Issue } from "./schema.ts";

/** A config that did not pass: `issues` name each field; `message` is ready to print. */
export class ConfigError extends MtlsdError {
  readonly file: string;
  readonly issues: readonly (Issue & { line?: number })[];

  constructor(file: string, issues: (Issue & { line?: number })[]) {
    const lines = issues.map((issue) => {
      const where = issue.line ? `${issue.path} (line ${issue.line})` : issue.path;
      return `  ${where}: expected ${issue.expected}, found ${issue.found}`;
    });
    const count = issues.length === 1 ? "1 problem" : `${issues.length} problems`;
    super(
      "CONFIG_INVALID",
      `${file}: invalid configuration (${count}); nothing was started\n${lines.join("\n")}`,
    );
    this.name = "ConfigError";
    this.file = file;
    this.issues = issues;
  }
}

export interface LoadedConfig {
  config: Config;
  /** Absolute path of the file it came from (or the name given for a string). */
  file: string;
  /** The raw text, so a reload can tell whether anything changed. */
  text: string;
}

export interface ParseOptions {
  /** Milliseconds since the epoch that time-boxed settings (policy overrides) are checked against; default now. */
  now?: number;
  /** Where `$SPIFFE_ENDPOINT_SOCKET` is read when `identity.workloadApi.socket` is not set; default the process's. */
  env?: Readonly<Record<string, string | undefined>>;
}

export function loadConfigFile(file: string, options: ParseOptions = {}): LoadedConfig {
  const absolute = path.resolve(file);
  let text: string;
  try {
    text = readFileSync(absolute, "utf8");
  } catch (error) {
    const reason =
      (error as NodeJS.ErrnoException).code === "ENOENT" ? "no such file" : (error as Error).message;
    throw new MtlsdError("CONFIG_UNREADABLE", `${absolute}: cannot read the config file: ${reason}`, {
      cause: error,
    });
  }
  return parseConfig(text, absolute, options);
}

/**
 * Parses config text. Relative file paths inside resolve against the directory of `file`,
 * so a config and its certificates can move together.
 */
export function parseConfig(text: string, file: string, options: ParseOptions = {}): LoadedConfig {
  const lineCounter = new LineCounter();
  const document = parseDocument(text, {
    lineCounter,
    uniqueKeys: true,
    prettyErrors: false,
    schema: "core",
  });
  if (document.errors.length > 0) {
    throw new ConfigError(
      file,
      document.errors.map((error) => {
        // linePos is only filled in with prettyErrors, which would also put source excerpts in the message.
        const line = lineCounter.linePos(error.pos[0]).line;
        if (error.code === "DUPLICATE_KEY") {
          return {
            path: fieldPathAt(document.contents, error.pos[0], ""),
            line,
            expected: "each key at most once per mapping",
            found: "the key a second time",
          };
        }
        const detail = error.message.split("\n")[0] ?? error.code;
        return { path: "(YAML)", line, expected: "valid YAML", found: `a syntax error: ${detail}` };
      }),
    );
  }
  const value = document.toJS({ maxAliasCount: 50 });
  if (value === undefined || value === null) {
    throw new ConfigError(file, [
      {
        path: "(top level)",
        line: 1,
        expected:
          "a mapping with an identity section and an inbound or outbound one (see config/mtlsd.example.yaml)",
        found: "an empty document",
      },
    ]);
  }
  const issues: Issue[] = [];
  const parsed = configSchema.read(value, "", issues);
  if (parsed !== INVALID) {
    issues.push(...crossFieldIssues(parsed, options.now ?? Date.now()));
    issues.push(...identitySourceIssues(parsed, options.env ?? process.env));
  }
  if (issues.length > 0) {
    throw new ConfigError(
      file,
      issues.map((issue) => ({ ...issue, line: lineOf(document, lineCounter, issue.path) })),
    );
  }
  const config = parsed as Config;
  const base = path.dirname(file);
  for (const key of ["cert", "key", "trustBundle", "crl"] as const) {
    const value = config.identity[key];
    if (value !== undefined) config.identity[key] = path.resolve(base, value);
  }
  for (const entry of config.identity.federation) {
    if (entry.trustBundle !== undefined) entry.trustBundle = path.resolve(base, entry.trustBundle);
  }
  return { config, file, text };
}

/** Rules that involve more than one field. */
function crossFieldIssues(config: Config, now: number): Issue[] {
  const issues: Issue[] = [];
  if (!config.inbound && !config.outbound) {
    issues.push({
      path: "inbound",
      expected: "an inbound or an outbound section (without either mtlsd has nothing to do)",
      found: "neither",
    });
  }
  const seen = new Map<string, number>();
  config.inbound?.policy.rules.forEach((rule, index) => {
    const first = seen.get(rule.name);
    if (first !== undefined) {
      issues.push({
        path: `inbound.policy.rules[${index}].name`,
        expected: "a name no other rule has (logs and metrics identify rules by name)",
        found: `"${rule.name}", already used by rules[${first}]`,
      });
    } else seen.set(rule.name, index);
  });
  if (config.inbound) issues.push(...overrideLifetimeIssues(config.inbound.policy, now));
  const trusted = [
    config.identity.trustDomain,
    ...config.identity.federation.map((entry) => entry.trustDomain),
  ];
  for (const [name, upstream] of Object.entries(config.outbound?.upstreams ?? {})) {
    // The schema already checked the SPIFFE ID's syntax: its trust domain is what follows the scheme.
    const domain = upstream.identity.slice("spiffe://".length).split("/")[0]!;
    if (!trusted.includes(domain)) {
      issues.push({
        path: `outbound.upstreams.${name}.identity`,
        expected: `a SPIFFE ID in identity.trustDomain (spiffe://${config.identity.trustDomain}/...) or in a trust domain of identity.federation: servers outside them are always refused`,
        found: `"${upstream.identity}"`,
      });
    }
  }
  for (const [name, upstream] of Object.entries(config.outbound?.upstreams ?? {})) {
    issues.push(...upstreamEndpointIssues(`outbound.upstreams.${name}`, upstream));
  }
  const listeners: [string, string][] = [];
  if (config.inbound) listeners.push(["inbound.listen", config.inbound.listen]);
  if (config.outbound) {
    listeners.push(["outbound.listen", config.outbound.listen]);
    for (const [name, upstream] of Object.entries(config.outbound.upstreams)) {
      if (upstream.listen) listeners.push([`outbound.upstreams.${name}.listen`, upstream.listen]);
    }
  }
  listeners.push(["admin.listen", config.admin.listen]);
  const ports = new Map<number, string>();
  for (const [field, address] of listeners) {
    const port = parseHostPort(address)?.port;
    if (!port) continue;
    const other = ports.get(port);
    if (other) {
      issues.push({ path: field, expected: `a port other than ${other}'s`, found: `port ${port} again` });
    } else ports.set(port, field);
  }
  // Node refuses to build a server otherwise; say so here, with the field, rather than at listen time.
  const { headersTimeout, requestTimeout } = config.limits;
  if (headersTimeout > requestTimeout) {
    issues.push({
      path: "limits.headersTimeout",
      expected: `at most limits.requestTimeout (${formatDuration(requestTimeout)}): headers are part of the request`,
      found: formatDuration(headersTimeout),
    });
  }
  return issues;
}

/** Where an upstream's endpoints come from (address or endpoints, one of them), each once; sane ejection times. */
function upstreamEndpointIssues(
  where: string,
  upstream: NonNullable<Config["outbound"]>["upstreams"][string],
): Issue[] {
  const issues: Issue[] = [];
  if (upstream.address !== undefined && upstream.endpoints !== undefined) {
    issues.push({
      path: `${where}.endpoints`,
      expected: `either ${where}.address or ${where}.endpoints, not both`,
      found: "both",
    });
  } else if (upstream.address === undefined && upstream.endpoints === undefined) {
    issues.push({
      path: `${where}.address`,
      expected:
        "where the upstream's sidecars listen: address (host:port; a DNS name stands for all its records) or endpoints (a list of host:port)",
      found: "neither address nor endpoints",
    });
  }
  const seen = new Map<string, number>();
  upstream.endpoints?.forEach((endpoint, index) => {
    const key = endpoint.toLowerCase();
    const first = seen.get(key);
    if (first === undefined) seen.set(key, index);
    else {
      issues.push({
        path: `${where}.endpoints[${index}]`,
        expected: "each endpoint once (a duplicate would get twice the share of requests)",
        found: `"${endpoint}", already ${where}.endpoints[${first}]`,
      });
    }
  });
  const { ejectFor, maxEjectFor } = upstream.outlier;
  if (maxEjectFor < ejectFor) {
    issues.push({
      path: `${where}.outlier.maxEjectFor`,
      expected: `at least outlier.ejectFor (${formatDuration(ejectFor)}): it caps the doubling ejection time`,
      found: formatDuration(maxEjectFor),
    });
  }
  return issues;
}

const FILE_KEYS = ["cert", "key", "trustBundle"] as const;
const FILE_WHAT: Record<(typeof FILE_KEYS)[number], string> = {
  cert: "the path of this workload's certificate",
  key: "the path of the certificate's private key",
  trustBundle: "the path of the trust bundle",
};

/**
 * Where the identity comes from: the files (cert, key, trustBundle, all three) or the Workload API, exactly
 * one of them; the Workload API socket from the config or `$SPIFFE_ENDPOINT_SOCKET`; and federated domains
 * that are neither our own nor listed twice, each with a bundle file unless the Workload API can deliver it.
 * Fills in `identity.workloadApi.socket` from the environment.
 */
function identitySourceIssues(config: Config, env: Readonly<Record<string, string | undefined>>): Issue[] {
  const issues: Issue[] = [];
  const { identity } = config;
  const given = FILE_KEYS.filter((key) => identity[key] !== undefined);
  const workloadApi = identity.workloadApi;
  if (workloadApi && given.length > 0) {
    issues.push({
      path: "identity.workloadApi",
      expected:
        "either identity.workloadApi or the files identity.cert, identity.key and identity.trustBundle, not both",
      found: `both (identity.${given.join(", identity.")} given too)`,
    });
  } else if (!workloadApi && given.length === 0) {
    issues.push({
      path: "identity",
      expected:
        "where the identity comes from: identity.cert, identity.key and identity.trustBundle (files), or identity.workloadApi (a SPIRE agent)",
      found: "neither",
    });
  } else if (!workloadApi) {
    for (const key of FILE_KEYS.filter((key) => identity[key] === undefined)) {
      issues.push({
        path: `identity.${key}`,
        expected: `${FILE_WHAT[key]}: identity.cert, identity.key and identity.trustBundle go together (or identity.workloadApi replaces all three)`,
        found: "nothing (it is required)",
      });
    }
  }
  if (workloadApi && identity.crl !== undefined) {
    issues.push({
      path: "identity.crl",
      expected: "no CRL file with identity.workloadApi: the Workload API delivers the CRLs itself",
      found: `"${identity.crl}"`,
    });
  }
  if (workloadApi && workloadApi.socket === undefined) {
    const fromEnv = env.SPIFFE_ENDPOINT_SOCKET;
    const parsed = fromEnv ? parseWorkloadApiSocket(fromEnv) : undefined;
    if (!fromEnv) {
      issues.push({
        path: "identity.workloadApi.socket",
        expected:
          "a Workload API endpoint like unix:///run/spire/sockets/agent.sock, here or in $SPIFFE_ENDPOINT_SOCKET",
        found: "nothing, and $SPIFFE_ENDPOINT_SOCKET is not set",
      });
    } else if (parsed && "error" in parsed) {
      issues.push({
        path: "identity.workloadApi.socket",
        expected: "a Workload API endpoint: unix:///path/to/agent.sock or tcp://IP:port",
        found: `nothing, and $SPIFFE_ENDPOINT_SOCKET is ${JSON.stringify(fromEnv)} (${parsed.error})`,
      });
    } else workloadApi.socket = fromEnv;
  }
  const seen = new Map<string, number>();
  identity.federation.forEach((entry, index) => {
    const where = `identity.federation[${index}]`;
    if (entry.trustDomain === identity.trustDomain) {
      issues.push({
        path: `${where}.trustDomain`,
        expected: "a trust domain other than identity.trustDomain (our own bundle is trusted already)",
        found: `"${entry.trustDomain}"`,
      });
    }
    const first = seen.get(entry.trustDomain);
    if (first !== undefined) {
      issues.push({
        path: `${where}.trustDomain`,
        expected: "each federated trust domain once (one bundle per trust domain)",
        found: `"${entry.trustDomain}", already in identity.federation[${first}]`,
      });
    } else seen.set(entry.trustDomain, index);
    if (entry.trustBundle === undefined && !workloadApi) {
      issues.push({
        path: `${where}.trustBundle`,
        expected:
          "the path of the trust domain's bundle file: without identity.workloadApi there are no federated bundles to take",
        found: "nothing",
      });
    }
  });
  return issues;
}

/**
 * A break-glass override must end soon: one that expires further ahead than `overridesMaxLifetime` is refused,
 * so a forgotten exception cannot quietly become policy. One already expired is accepted (the sidecar ignores
 * it and says so), so that a config does not break on its own when the clock passes an override.
 */
function overrideLifetimeIssues(policy: NonNullable<Config["inbound"]>["policy"], now: number): Issue[] {
  const max = policy.overridesMaxLifetime;
  const issues: Issue[] = [];
  policy.overrides.forEach((override, index) => {
    const ahead = override.expires.getTime() - now;
    if (ahead <= max) return;
    issues.push({
      path: `inbound.policy.overrides[${index}].expires`,
      expected: `a time at most ${formatDuration(max)} from now (inbound.policy.overridesMaxLifetime), so no later than ${new Date(now + max).toISOString()}`,
      found: `${override.expires.toISOString()}, ${describeAhead(ahead)} from now`,
    });
  });
  return issues;
}

function describeAhead(ms: number): string {
  const hours = ms / 3_600_000;
  return hours >= 48 ? `${(hours / 24).toFixed(1)} days` : `${hours.toFixed(1)} hours`;
}

/** The field path (`inbound.listen`) of the deepest key or item whose source holds `offset`. */
function fieldPathAt(node: unknown, offset: number, prefix: string): string {
  const holds = (child: unknown) => {
    const range = isNode(child) ? child.range : undefined;
    return !!range && range[0] <= offset && offset < range[2];
  };
  if (isMap(node)) {
    for (const pair of node.items) {
      const key = isScalar(pair.key) ? String(pair.key.value) : "?";
      const path = prefix ? `${prefix}.${key}` : key;
      if (holds(pair.key)) return path;
      if (holds(pair.value)) return fieldPathAt(pair.value, offset, path);
    }
  } else if (isSeq(node)) {
    for (const [index, item] of node.items.entries()) {
      if (holds(item)) return fieldPathAt(item, offset, `${prefix}[${index}]`);
    }
  }
  return prefix || "(top level)";
}

/** The 1-based line of the node at a field path like `inbound.policy.rules[2].from[0]`, if it exists. */
function lineOf(document: Document, lineCounter: LineCounter, fieldPath: string): number | undefined {
  const keys = fieldPath
    .split(/\.|\[(\d+)\]/)
    .filter((part) => part !== undefined && part !== "")
    .map((part) => (/^\d+$/.test(part) ? Number(part) : part));
  // Walk up until the path exists: a missing key points at the mapping that should hold it.
  for (let depth = keys.length; depth >= 0; depth--) {
    const node = depth === 0 ? document.contents : document.getIn(keys.slice(0, depth), true);
    if (!isNode(node) || !node.range) continue;
    if (depth < keys.length && isMap(node)) {
      const pair = node.items.find((item) => isScalar(item.key) && item.key.value === keys[depth]);
      if (pair && isNode(pair.key) && pair.key.range) return lineCounter.linePos(pair.key.range[0]).line;
    }
    return lineCounter.linePos(node.range[0]).line;
  }
  return undefined;
}
