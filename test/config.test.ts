// The config contract: the published schema and example stay true, and every mistake is named by file, field and line.
import { readFile } from "node:fs/promises";
import path from "node:path";
import t from "tap";
import { parse as parseYaml } from "yaml";
import { ConfigError, configJsonSchema, parseConfig } from "../src/config/index.ts";
import { Policy } from "../src/policy/index.ts";

const CONFIG_DIR = new URL("../config/", import.meta.url).pathname;
const EXAMPLE_PATH = path.join(CONFIG_DIR, "mtlsd.example.yaml");
const SCHEMA_PATH = path.join(CONFIG_DIR, "mtlsd.schema.json");
const FILE = "/etc/mtlsd/mtlsd.yaml";

const exampleText = await readFile(EXAMPLE_PATH, "utf8");
// The identity from a SPIRE agent instead of files: the keys the main example cannot set beside cert/key/bundle.
const SPIRE_EXAMPLE_PATH = path.join(CONFIG_DIR, "mtlsd.spire.example.yaml");
const spireExampleText = await readFile(SPIRE_EXAMPLE_PATH, "utf8");
const publishedSchema = JSON.parse(await readFile(SCHEMA_PATH, "utf8")) as JsonSchema;

/** The smallest valid config; cases append to it, so its line count is what their line numbers build on. */
const IDENTITY = `identity:
  cert: tls.crt
  key: tls.key
  trustBundle: ca.crt
  trustDomain: example.org
`;
const IDENTITY_LINES = 5;

/** The subtest handed to a `t.test` callback. */
type TestContext = Parameters<Parameters<typeof t.test>[0]>[0];

/** Parses text that must fail, and returns the ConfigError. */
function configError(text: string): ConfigError {
  try {
    parseConfig(text, FILE);
  } catch (error) {
    if (error instanceof ConfigError) return error;
    throw error;
  }
  throw new Error("the config was accepted");
}

/** Asserts one problem is reported with the file, its field path, its line, what was expected and what was found. */
function assertProblem(
  t: TestContext,
  error: ConfigError,
  problem: { path: string; line: number; expected: string | RegExp; found: string | RegExp },
): void {
  t.equal(error.code, "CONFIG_INVALID");
  t.equal(error.file, FILE);
  t.ok(error.message.startsWith(`${FILE}: invalid configuration`), "the message starts with the file");
  t.match(error.message, "nothing was started");
  const issue = error.issues.find((candidate) => candidate.path === problem.path);
  t.ok(issue, `an issue for ${problem.path} among: ${error.message}`);
  if (!issue) return;
  t.equal(issue.line, problem.line, `${problem.path} is on line ${problem.line}`);
  t.match(issue.expected, problem.expected, "says what was expected");
  t.match(issue.found, problem.found, "says what was found");
  t.ok(
    error.message.includes(
      `${problem.path} (line ${problem.line}): expected ${issue.expected}, found ${issue.found}`,
    ),
    "the printed message carries it all on one line",
  );
}

t.test("the published JSON Schema is what the config schema produces", async (t) => {
  t.same(
    publishedSchema,
    configJsonSchema(),
    "config/mtlsd.schema.json is stale: run `node scripts/write-schema.ts` and commit the result",
  );
  const text = await readFile(SCHEMA_PATH, "utf8");
  t.equal(
    text,
    `${JSON.stringify(configJsonSchema(), null, 2)}\n`,
    "pretty-printed, with a trailing newline",
  );
});

t.test("the example config loads and points editors at the schema", async (t) => {
  t.ok(exampleText.startsWith("# yaml-language-server: $schema=./mtlsd.schema.json\n"));
  const { config } = parseConfig(exampleText, EXAMPLE_PATH);
  t.equal(config.identity.trustDomain, "example.org");
  t.equal(config.inbound?.policy.rules.length, 2);
  t.doesNotThrow(() => new Policy(config.inbound!.policy), "its policy compiles as the sidecar would");
});

t.test("the SPIRE example config loads, with its identity from the Workload API", async (t) => {
  t.ok(spireExampleText.startsWith("# yaml-language-server: $schema=./mtlsd.schema.json\n"));
  const { config } = parseConfig(spireExampleText, SPIRE_EXAMPLE_PATH, { env: {} });
  t.equal(config.identity.workloadApi?.socket, "unix:///run/spire/sockets/agent.sock");
  t.equal(config.identity.cert, undefined);
});

t.test("the example configs together show every key the schema knows", async (t) => {
  const shown = new Set([
    ...documentKeys(parseYaml(exampleText), publishedSchema),
    ...documentKeys(parseYaml(spireExampleText), publishedSchema),
  ]);
  for (const key of schemaKeys(publishedSchema)) {
    t.ok(shown.has(key), `an example sets ${key}`);
  }
});

t.test("the example configs write each default exactly as the schema publishes it", async (t) => {
  const examples = [parseYaml(exampleText) as unknown, parseYaml(spireExampleText) as unknown];
  for (const [key, value] of defaultsOf(publishedSchema)) {
    const found = examples.flatMap((example) => valuesAt(example, key.split(".")));
    t.ok(found.length > 0, `an example sets ${key}`);
    for (const each of found) t.same(each, value, `${key} shows its default`);
  }
});

t.test("the example configs are valid against the published JSON Schema", async (t) => {
  t.same(validate(publishedSchema, parseYaml(exampleText)), []);
  t.same(validate(publishedSchema, parseYaml(spireExampleText)), []);
});

t.test("every default in the published JSON Schema is valid against its own field", async (t) => {
  const walk = (schema: JsonSchema, at: string): void => {
    if ("default" in schema) t.same(validate(schema, schema.default, at), [], `${at} default`);
    for (const [key, child] of Object.entries((schema.properties ?? {}) as Record<string, JsonSchema>)) {
      walk(child, at ? `${at}.${key}` : key);
    }
    if (schema.items) walk(schema.items as JsonSchema, `${at}[]`);
    if (isObject(schema.additionalProperties)) walk(schema.additionalProperties, `${at}.*`);
  };
  walk(publishedSchema, "");
});

t.test("the published JSON Schema rejects an unknown key, so editors flag typos", async (t) => {
  const example = parseYaml(exampleText) as Record<string, Record<string, unknown>>;
  const problems = validate(publishedSchema, { ...example, inbound: { ...example.inbound, lisen: "x:1" } });
  t.same(problems, ["inbound.lisen: not an allowed key"]);
});

t.test("the published JSON Schema rejects bad values and missing keys as mtlsd does", async (t) => {
  const example = parseYaml(exampleText) as Record<string, Record<string, unknown>>;
  const withInbound = (inbound: Record<string, unknown>) => ({
    ...example,
    inbound: { ...example.inbound, ...inbound },
  });
  const xfcc = validate(publishedSchema, withInbound({ xfcc: "bogus" }));
  t.equal(xfcc.length, 1);
  t.match(xfcc, ["inbound.xfcc: not one of sanitize_set"]);
  const duration = validate(publishedSchema, withInbound({ appTimeout: "30 seconds" }));
  t.equal(duration.length, 1);
  t.match(duration, ["inbound.appTimeout: does not match"]);
  t.same(validate(publishedSchema, { ...example, identity: { trustDomain: "example.org" } }), [
    "identity: matches 0 of the oneOf options",
  ]);
  const both = { ...example.identity, workloadApi: { socket: "unix:///run/spire/sockets/agent.sock" } };
  t.same(validate(publishedSchema, { ...example, identity: both }), [
    "identity: matches 2 of the oneOf options",
  ]);
});

t.test("defaults fill in what the file leaves out, durations in ms and sizes in bytes", async (t) => {
  const { config } = parseConfig(`${IDENTITY}inbound: {}\n`, FILE);
  t.same(config.inbound, {
    listen: "0.0.0.0:15006",
    app: "http://127.0.0.1:8080",
    appTimeout: 30_000,
    mode: "strict",
    minTLSVersion: "TLSv1.3",
    xfcc: "sanitize_set",
    appProtocol: "http1",
    upgrades: ["websocket"],
    streamIdleTimeout: 300_000,
    headersWithUnderscores: "drop",
    removeRequestHeaders: [],
    policy: { default: "deny", rules: [], overrides: [], overridesMaxLifetime: 86_400_000 },
  });
  t.same(config.identity.deny, { serials: [], spiffeIds: [] });
  t.equal(config.identity.crl, undefined, "no CRL unless one is named");
  t.same(config.limits, {
    maxConnections: 10_000,
    maxHeaderSize: 16_384,
    maxHeaderCount: 100,
    handshakeTimeout: 10_000,
    headersTimeout: 10_000,
    requestTimeout: 300_000,
    keepAliveTimeout: 60_000,
    maxConcurrentStreams: 100,
    drainTimeout: 30_000,
  });
  t.same(config.admin, { listen: "127.0.0.1:15000" });
  t.same(config.log, { level: "info" });
});

t.test("durations and sizes in the file become ms and bytes", async (t) => {
  const { config } = parseConfig(
    `${IDENTITY}inbound:\n  appTimeout: 1m30s\nlimits:\n  maxHeaderSize: 32KiB\n  handshakeTimeout: 250ms\n`,
    FILE,
  );
  t.equal(config.inbound?.appTimeout, 90_000);
  t.equal(config.limits.maxHeaderSize, 32_768);
  t.equal(config.limits.handshakeTimeout, 250);
});

t.test("relative credential paths resolve against the config file's directory", async (t) => {
  const { config } = parseConfig(
    `identity:\n  cert: certs/tls.crt\n  key: ../secret/tls.key\n  trustBundle: /abs/ca.crt\n  trustDomain: example.org\ninbound: {}\n`,
    "/etc/mtlsd/mtlsd.yaml",
  );
  t.equal(config.identity.cert, "/etc/mtlsd/certs/tls.crt");
  t.equal(config.identity.key, "/etc/secret/tls.key");
  t.equal(config.identity.trustBundle, "/abs/ca.crt");
});

t.test("an unknown key is an error that suggests the key that was meant", async (t) => {
  const error = configError(`${IDENTITY}inbound:\n  lisen: 127.0.0.1:15006\n`);
  assertProblem(t, error, {
    path: "inbound.lisen",
    line: IDENTITY_LINES + 2,
    expected: 'a known key (did you mean "listen"?)',
    found: "an unknown key",
  });
});

t.test("an unknown key with no near miss lists the keys that exist", async (t) => {
  const error = configError(`${IDENTITY}inbound: {}\nmetrix2000: {}\n`);
  assertProblem(t, error, {
    path: "metrix2000",
    line: IDENTITY_LINES + 2,
    expected: /^one of the keys identity, inbound, .*limits, .*log/,
    found: "an unknown key",
  });
});

t.test("a value of the wrong type names the type expected and the value found", async (t) => {
  const error = configError(`${IDENTITY}inbound: {}\nlimits:\n  maxConnections: many\n`);
  assertProblem(t, error, {
    path: "limits.maxConnections",
    line: IDENTITY_LINES + 3,
    expected: "an integer from 1 to 1000000",
    found: '"many"',
  });
});

t.test("a duration in words is refused with the accepted forms", async (t) => {
  const error = configError(`${IDENTITY}inbound:\n  appTimeout: 30 seconds\n`);
  assertProblem(t, error, {
    path: "inbound.appTimeout",
    line: IDENTITY_LINES + 2,
    expected: /^a duration like 250ms, 30s, 5m or 1h/,
    found: '"30 seconds"',
  });
});

t.test("a size with a unit mtlsd does not know is refused with the accepted forms", async (t) => {
  const error = configError(`${IDENTITY}inbound: {}\nlimits:\n  maxHeaderSize: 16KB\n`);
  assertProblem(t, error, {
    path: "limits.maxHeaderSize",
    line: IDENTITY_LINES + 3,
    expected: /^a size like 16KiB or 1MiB, from 1KiB to 1MiB/,
    found: '"16KB"',
  });
});

t.test(
  "a headersWithUnderscores action mtlsd does not know is refused with the three it knows",
  async (t) => {
    const error = configError(`${IDENTITY}inbound:\n  headersWithUnderscores: ignore\n`);
    assertProblem(t, error, {
      path: "inbound.headersWithUnderscores",
      line: IDENTITY_LINES + 2,
      expected: /drop.*reject.*allow/,
      found: '"ignore"',
    });
  },
);

t.test("a removeRequestHeaders entry with a * inside or uppercase letters is refused", async (t) => {
  for (const entry of ["x-*-user", "X-Forwarded-User"]) {
    const error = configError(`${IDENTITY}inbound:\n  removeRequestHeaders:\n    - x-ok\n    - "${entry}"\n`);
    assertProblem(t, error, {
      path: "inbound.removeRequestHeaders[1]",
      line: IDENTITY_LINES + 4,
      expected: /a header name in lower case/,
      found: JSON.stringify(entry),
    });
  }
});

t.test("a maxHeaderCount of 0 is refused with the range it may take", async (t) => {
  const error = configError(`${IDENTITY}inbound: {}\nlimits:\n  maxHeaderCount: 0\n`);
  assertProblem(t, error, {
    path: "limits.maxHeaderCount",
    line: IDENTITY_LINES + 3,
    expected: /1.*10000/,
    found: "0",
  });
});

/** A policy whose third rule (rules[2]) has the given `from` entries, one per line from line IDENTITY_LINES + 11. */
function policyWithFrom(...from: string[]): string {
  return `${IDENTITY}inbound:
  policy:
    rules:
      - name: first
        action: allow
      - name: second
        action: allow
      - name: third
        action: allow
        from:
${from.map((entry) => `          - "${entry}"`).join("\n")}
`;
}
const FROM_LINE = IDENTITY_LINES + 11;

t.test("a SPIFFE ID with an uppercase trust domain is refused at its place in the rule", async (t) => {
  assertProblem(t, configError(policyWithFrom("spiffe://Example.org/ns/a/sa/a")), {
    path: "inbound.policy.rules[2].from[0]",
    line: FROM_LINE,
    expected: /a SPIFFE ID/,
    found: /"spiffe:\/\/Example.org\/ns\/a\/sa\/a" \(.*uppercase/,
  });
});

t.test("a SPIFFE ID with percent-encoding is refused", async (t) => {
  assertProblem(t, configError(policyWithFrom("spiffe://example.org/ns/a%2Fb")), {
    path: "inbound.policy.rules[2].from[0]",
    line: FROM_LINE,
    expected: /a SPIFFE ID/,
    found: /percent-encoding/,
  });
});

t.test("a SPIFFE ID with a .. segment is refused", async (t) => {
  assertProblem(t, configError(policyWithFrom("spiffe://example.org/ns/../sa/a")), {
    path: "inbound.policy.rules[2].from[0]",
    line: FROM_LINE,
    expected: /a SPIFFE ID/,
    found: /"\.\."/,
  });
});

t.test("a from pattern with a * in the middle is refused", async (t) => {
  assertProblem(t, configError(policyWithFrom("spiffe://example.org/ns/a/sa/a", "spiffe://x/*/y")), {
    path: "inbound.policy.rules[2].from[1]",
    line: FROM_LINE + 1,
    expected: /"prefix\*", "\*suffix" or "\*"/,
    found: /"spiffe:\/\/x\/\*\/y" \(a \* may only stand at the start or the end\)/,
  });
});

/** A single rule whose `to[0].paths` holds one pattern, on line IDENTITY_LINES + 8. */
function policyWithPath(pattern: string): string {
  return `${IDENTITY}inbound:
  policy:
    rules:
      - name: only
        action: allow
        to:
          - paths:
              - "${pattern}"
`;
}

t.test("a path pattern that is not a path is refused", async (t) => {
  assertProblem(t, configError(policyWithPath("v1/orders")), {
    path: "inbound.policy.rules[0].to[0].paths[0]",
    line: IDENTITY_LINES + 8,
    expected: /^a path pattern/,
    found: /must start with \//,
  });
});

t.test("a glob from another tool is refused with the pattern to write instead", async (t) => {
  assertProblem(t, configError(policyWithPath("/api/**")), {
    path: "inbound.policy.rules[0].to[0].paths[0]",
    line: IDENTITY_LINES + 8,
    expected: /^a path pattern/,
    found: /write the template "\/api\/\{\*\*\}" or the prefix "\/api\/\*"/,
  });
});

t.test("a missing required key points at the mapping that should hold it", async (t) => {
  const error = configError(
    `identity:\n  key: tls.key\n  trustBundle: ca.crt\n  trustDomain: example.org\ninbound: {}\n`,
  );
  assertProblem(t, error, {
    path: "identity.cert",
    line: 2,
    expected: /certificate/,
    found: "nothing (it is required)",
  });
});

t.test("an empty file is refused as an empty document", async (t) => {
  for (const text of ["", "# only a comment\n"]) {
    assertProblem(t, configError(text), {
      path: "(top level)",
      line: 1,
      expected: /an identity section and an inbound or outbound one/,
      found: "an empty document",
    });
  }
});

t.test("a YAML syntax error is reported with its line", async (t) => {
  assertProblem(t, configError(`${IDENTITY}inbound:\n\tlisten: 127.0.0.1:15006\n`), {
    path: "(YAML)",
    line: IDENTITY_LINES + 2,
    expected: "valid YAML",
    found: /^a syntax error: Tabs are not allowed/,
  });
  assertProblem(t, configError(`${IDENTITY}inbound:\n  listen: 127.0.0.1:15006\n  app: http: x\n`), {
    path: "(YAML)",
    line: IDENTITY_LINES + 3,
    expected: "valid YAML",
    found: /^a syntax error: Nested mappings/,
  });
});

t.test("a key written twice in one mapping is refused at the second one", async (t) => {
  const error = configError(
    `${IDENTITY}inbound:\n  listen: 127.0.0.1:1\n  app: http://127.0.0.1:2\n  listen: 127.0.0.1:3\n`,
  );
  assertProblem(t, error, {
    path: "inbound.listen",
    line: IDENTITY_LINES + 4,
    expected: "each key at most once per mapping",
    found: "the key a second time",
  });
});

t.test("two rules with the same name are refused, naming the first", async (t) => {
  const error = configError(
    `${IDENTITY}inbound:\n  policy:\n    rules:\n      - name: same\n        action: allow\n      - name: same\n        action: deny\n`,
  );
  assertProblem(t, error, {
    path: "inbound.policy.rules[1].name",
    line: IDENTITY_LINES + 6,
    expected: /a name no other rule has/,
    found: '"same", already used by rules[0]',
  });
});

t.test("a config with neither inbound nor outbound is refused because it would do nothing", async (t) => {
  assertProblem(t, configError(IDENTITY), {
    path: "inbound",
    line: 1,
    expected: /an inbound or an outbound section/,
    found: "neither",
  });
});

t.test("an app URL that is not plain http is refused with the reason", async (t) => {
  assertProblem(t, configError(`${IDENTITY}inbound:\n  app: https://127.0.0.1:8080\n`), {
    path: "inbound.app",
    line: IDENTITY_LINES + 2,
    expected: /an http:\/\/ URL/,
    found: /"https:\/\/127.0.0.1:8080" \(only http:\/\/ is supported/,
  });
});

t.test("a listen address without a valid port is refused", async (t) => {
  for (const listen of ["localhost", "127.0.0.1:99999"]) {
    assertProblem(t, configError(`${IDENTITY}inbound:\n  listen: ${listen}\n`), {
      path: "inbound.listen",
      line: IDENTITY_LINES + 2,
      expected: /^host:port/,
      found: new RegExp(`"${listen}"`),
    });
  }
});

t.test("the admin listener may not share a port with a data listener", async (t) => {
  assertProblem(
    t,
    configError(`${IDENTITY}inbound:\n  listen: 0.0.0.0:15006\nadmin:\n  listen: 127.0.0.1:15006\n`),
    {
      path: "admin.listen",
      line: IDENTITY_LINES + 4,
      expected: "a port other than inbound.listen's",
      found: "port 15006 again",
    },
  );
});

t.test("a headers timeout longer than the request timeout is refused, as Node would refuse it", async (t) => {
  assertProblem(
    t,
    configError(`${IDENTITY}inbound: {}\nlimits:\n  headersTimeout: 2m\n  requestTimeout: 1m\n`),
    {
      path: "limits.headersTimeout",
      line: IDENTITY_LINES + 3,
      expected: "at most limits.requestTimeout (1m)",
      found: "2m",
    },
  );
});

t.test(
  "a drain timeout of zero is allowed: connections are cut as soon as the listeners close",
  async (t) => {
    const { config } = parseConfig(`${IDENTITY}inbound: {}\nlimits:\n  drainTimeout: 0s\n`, FILE);
    t.equal(config.limits.drainTimeout, 0);
  },
);

t.test("several mistakes are all reported at once", async (t) => {
  const error = configError(
    `${IDENTITY}inbound:\n  listen: nowhere\n  xfcc: bogus\n  appTimeout: soon\nlimits:\n  maxConnections: 0\n  maxHeaderSise: 1KiB\n`,
  );
  t.match(error.message, "(5 problems)");
  t.same(error.issues.map((issue) => [issue.path, issue.line]).sort(), [
    ["inbound.appTimeout", IDENTITY_LINES + 4],
    ["inbound.listen", IDENTITY_LINES + 2],
    ["inbound.xfcc", IDENTITY_LINES + 3],
    ["limits.maxConnections", IDENTITY_LINES + 6],
    ["limits.maxHeaderSise", IDENTITY_LINES + 7],
  ]);
});

// ---------------------------------------------------------------------------------------------------------
// A deliberately small JSON Schema checker, for the keywords the published schema uses. It throws on any
// other keyword, so the schema cannot grow a rule these tests silently ignore.

type JsonSchema = { [key: string]: unknown };

const ANNOTATIONS = new Set(["$schema", "$id", "title", "description", "default", "format"]);
const CHECKED = new Set([
  "type",
  "properties",
  "required",
  "additionalProperties",
  "propertyNames",
  "minProperties",
  "enum",
  "pattern",
  "minLength",
  "items",
  "minItems",
  "minimum",
  "maximum",
  "oneOf",
]);

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** Returns one `path: problem` line per violation; empty when `value` is valid. */
function validate(schema: JsonSchema, value: unknown, at = ""): string[] {
  const where = at || "(top level)";
  for (const keyword of Object.keys(schema)) {
    if (!ANNOTATIONS.has(keyword) && !CHECKED.has(keyword)) {
      throw new Error(`${where}: the test's schema checker does not know the keyword ${keyword}`);
    }
  }
  const problems: string[] = [];
  if (schema.oneOf) {
    const passing = (schema.oneOf as JsonSchema[]).filter(
      (option) => validate(option, value, at).length === 0,
    );
    if (passing.length !== 1) problems.push(`${where}: matches ${passing.length} of the oneOf options`);
  }
  if (schema.type !== undefined && !hasType(value, schema.type as string)) {
    return [...problems, `${where}: not of type ${schema.type}`];
  }
  if (schema.enum && !(schema.enum as unknown[]).includes(value)) {
    problems.push(`${where}: not one of ${(schema.enum as unknown[]).join(", ")}`);
  }
  if (typeof value === "string") {
    if (schema.pattern && !new RegExp(schema.pattern as string, "u").test(value)) {
      problems.push(`${where}: does not match ${schema.pattern}`);
    }
    if (schema.minLength !== undefined && value.length < (schema.minLength as number)) {
      problems.push(`${where}: shorter than ${schema.minLength}`);
    }
  }
  if (typeof value === "number") {
    if (schema.minimum !== undefined && value < (schema.minimum as number))
      problems.push(`${where}: too small`);
    if (schema.maximum !== undefined && value > (schema.maximum as number))
      problems.push(`${where}: too large`);
  }
  if (Array.isArray(value)) {
    if (schema.minItems !== undefined && value.length < (schema.minItems as number)) {
      problems.push(`${where}: fewer than ${schema.minItems} items`);
    }
    if (schema.items) {
      value.forEach((item, index) => {
        problems.push(...validate(schema.items as JsonSchema, item, `${at}[${index}]`));
      });
    }
  }
  if (isObject(value)) {
    const properties = (schema.properties ?? {}) as Record<string, JsonSchema>;
    for (const key of (schema.required ?? []) as string[]) {
      if (!(key in value)) problems.push(`${where}: missing required key ${key}`);
    }
    if (schema.minProperties !== undefined && Object.keys(value).length < (schema.minProperties as number)) {
      problems.push(`${where}: fewer than ${schema.minProperties} keys`);
    }
    for (const [key, field] of Object.entries(value)) {
      const fieldAt = at ? `${at}.${key}` : key;
      if (schema.propertyNames) problems.push(...validate(schema.propertyNames as JsonSchema, key, fieldAt));
      if (properties[key]) problems.push(...validate(properties[key], field, fieldAt));
      else if (schema.additionalProperties === false) problems.push(`${fieldAt}: not an allowed key`);
      else if (isObject(schema.additionalProperties)) {
        problems.push(...validate(schema.additionalProperties, field, fieldAt));
      }
    }
  }
  return problems;
}

function hasType(value: unknown, type: string): boolean {
  switch (type) {
    case "object":
      return isObject(value);
    case "array":
      return Array.isArray(value);
    case "string":
      return typeof value === "string";
    case "integer":
      return Number.isInteger(value);
    case "number":
      return typeof value === "number";
    case "boolean":
      return typeof value === "boolean";
    default:
      throw new Error(`the test's schema checker does not know the type ${type}`);
  }
}

function propertiesOf(schema: JsonSchema): Record<string, JsonSchema> {
  return (schema.properties ?? {}) as Record<string, JsonSchema>;
}

/** Every key the schema defines, as a path: list items are `[]`, named entries (upstreams) are `*`. */
function schemaKeys(schema: JsonSchema, at = "", out = new Set<string>()): Set<string> {
  for (const [key, child] of Object.entries(propertiesOf(schema))) {
    const childAt = at ? `${at}.${key}` : key;
    out.add(childAt);
    schemaKeys(child, childAt, out);
  }
  if (schema.items) schemaKeys(schema.items as JsonSchema, `${at}[]`, out);
  if (isObject(schema.additionalProperties)) schemaKeys(schema.additionalProperties, `${at}.*`, out);
  return out;
}

/** The keys a document sets, spelt as schemaKeys spells them (read through the schema, so names become `*`). */
function documentKeys(value: unknown, schema: JsonSchema, at = "", out = new Set<string>()): Set<string> {
  if (Array.isArray(value) && schema.items) {
    for (const item of value) documentKeys(item, schema.items as JsonSchema, `${at}[]`, out);
  } else if (isObject(value)) {
    for (const [key, child] of Object.entries(value)) {
      const property = propertiesOf(schema)[key];
      if (property) {
        const childAt = at ? `${at}.${key}` : key;
        out.add(childAt);
        documentKeys(child, property, childAt, out);
      } else if (isObject(schema.additionalProperties)) {
        documentKeys(child, schema.additionalProperties, `${at}.*`, out);
      }
    }
  }
  return out;
}

/** Defaults of fields outside lists, by key path (`*` for every named entry), as the schema publishes them. */
function defaultsOf(schema: JsonSchema, at = "", out = new Map<string, unknown>()): Map<string, unknown> {
  for (const [key, child] of Object.entries(propertiesOf(schema))) {
    const childAt = at ? `${at}.${key}` : key;
    if (child.properties) defaultsOf(child, childAt, out);
    else if (isObject(child.additionalProperties))
      defaultsOf(child.additionalProperties, `${childAt}.*`, out);
    else if ("default" in child && !Array.isArray(child.default)) out.set(childAt, child.default);
  }
  return out;
}

/** The values at a key path in a document; `*` stands for every entry of a mapping. */
function valuesAt(value: unknown, keys: string[]): unknown[] {
  if (keys.length === 0) return value === undefined ? [] : [value];
  if (!isObject(value)) return [];
  const [key, ...rest] = keys;
  const children = key === "*" ? Object.values(value) : [value[key!]];
  return children.flatMap((child) => valuesAt(child, rest));
}

/** The issue reported for `path`, from a config that must fail. */
function issueAt(text: string, path: string, env: Record<string, string> = {}) {
  let error: ConfigError | undefined;
  try {
    parseConfig(text, FILE, { env });
  } catch (caught) {
    if (!(caught instanceof ConfigError)) throw caught;
    error = caught;
  }
  if (!error) throw new Error("the config was accepted");
  const issue = error.issues.find((candidate) => candidate.path === path);
  if (!issue) throw new Error(`no issue at ${path} in: ${error.message}`);
  return issue;
}

const WORKLOAD_API = `identity:
  workloadApi:
    socket: unix:///run/spire/sockets/agent.sock
  trustDomain: example.org
inbound: {}
`;

t.test("identity.workloadApi with cert, key and trustBundle too is refused, naming both", async (t) => {
  const issue = issueAt(
    `identity:\n  workloadApi: {socket: "unix:///run/agent.sock"}\n  cert: tls.crt\n  key: tls.key\n  trustBundle: ca.crt\n  trustDomain: example.org\ninbound: {}\n`,
    "identity.workloadApi",
  );
  t.match(
    issue.expected,
    "either identity.workloadApi or the files identity.cert, identity.key and identity.trustBundle",
  );
  t.match(issue.found, "both (identity.cert, identity.key, identity.trustBundle given too)");
});

t.test("an identity with neither files nor workloadApi says where an identity can come from", async (t) => {
  const issue = issueAt("identity:\n  trustDomain: example.org\ninbound: {}\n", "identity");
  t.match(
    issue.expected,
    "identity.cert, identity.key and identity.trustBundle (files), or identity.workloadApi",
  );
  t.equal(issue.found, "neither");
});

t.test("a Workload API socket of another scheme, or a tcp name instead of an IP, is refused", async (t) => {
  for (const [socket, reason] of [
    ["http://127.0.0.1:8081", 'the scheme must be "unix:" or "tcp:"'],
    ["tcp://spire-agent:8081", "with an IP address (no name)"],
    ["unix:agent.sock", "a unix socket needs an absolute path"],
  ] as const) {
    const issue = issueAt(
      WORKLOAD_API.replace("unix:///run/spire/sockets/agent.sock", socket),
      "identity.workloadApi.socket",
    );
    t.match(issue.found, reason, socket);
  }
});

t.test("the Workload API socket comes from $SPIFFE_ENDPOINT_SOCKET when the file names none", async (t) => {
  const text = WORKLOAD_API.replace(
    "    socket: unix:///run/spire/sockets/agent.sock\n",
    "    startupTimeout: 5s\n",
  );
  const { config } = parseConfig(text, FILE, { env: { SPIFFE_ENDPOINT_SOCKET: "tcp://127.0.0.1:8081" } });
  t.equal(config.identity.workloadApi?.socket, "tcp://127.0.0.1:8081");
  t.equal(config.identity.workloadApi?.startupTimeout, 5000);
  t.match(issueAt(text, "identity.workloadApi.socket").found, "$SPIFFE_ENDPOINT_SOCKET is not set");
  t.match(
    issueAt(text, "identity.workloadApi.socket", { SPIFFE_ENDPOINT_SOCKET: "agent.sock" }).found,
    '$SPIFFE_ENDPOINT_SOCKET is "agent.sock"',
  );
});

t.test("identity.crl is refused beside the Workload API, which delivers CRLs itself", async (t) => {
  const issue = issueAt(
    WORKLOAD_API.replace("  trustDomain:", "  crl: crl.pem\n  trustDomain:"),
    "identity.crl",
  );
  t.match(issue.expected, "the Workload API delivers the CRLs itself");
});

t.test(
  "federated trust domains must be valid, other than ours, listed once, with a bundle source",
  async (t) => {
    const federation = (entries: string) => `${IDENTITY}  federation:\n${entries}inbound: {}\n`;
    t.match(
      issueAt(
        federation("    - trustDomain: Partner.Example\n      trustBundle: p.crt\n"),
        "identity.federation[0].trustDomain",
      ).found,
      "not a valid trust domain",
    );
    t.match(
      issueAt(
        federation("    - trustDomain: example.org\n      trustBundle: p.crt\n"),
        "identity.federation[0].trustDomain",
      ).expected,
      "other than identity.trustDomain",
    );
    t.match(
      issueAt(
        federation(
          "    - trustDomain: partner.example\n      trustBundle: p.crt\n    - trustDomain: partner.example\n      trustBundle: q.crt\n",
        ),
        "identity.federation[1].trustDomain",
      ).found,
      "already in identity.federation[0]",
    );
    t.match(
      issueAt(federation("    - trustDomain: partner.example\n"), "identity.federation[0].trustBundle")
        .expected,
      "without identity.workloadApi there are no federated bundles to take",
    );
  },
);

t.test(
  "a federated bundle path resolves against the config's directory, and federated IDs may be upstreams",
  async (t) => {
    const { config } = parseConfig(
      `${IDENTITY}  federation:\n    - trustDomain: partner.example\n      trustBundle: partner-ca.crt\noutbound:\n  upstreams:\n    checkout: {address: "checkout.partner.example:15006", identity: "spiffe://partner.example/ns/shop/sa/checkout"}\n`,
      FILE,
    );
    t.equal(config.identity.federation[0]?.trustBundle, "/etc/mtlsd/partner-ca.crt");
    t.equal(config.outbound?.upstreams.checkout?.identity, "spiffe://partner.example/ns/shop/sa/checkout");
    t.match(
      issueAt(
        `${IDENTITY}outbound:\n  upstreams:\n    checkout: {address: "c:1", identity: "spiffe://partner.example/x"}\n`,
        "outbound.upstreams.checkout.identity",
      ).expected,
      "or in a trust domain of identity.federation",
    );
  },
);
