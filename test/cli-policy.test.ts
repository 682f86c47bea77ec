// "Why was this call denied?" in seconds, and policy reviewed in CI: `mtlsd policy explain` and `mtlsd policy test`.
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import t from "tap";
import { stringify } from "yaml";
import { runCli } from "./helpers/process.ts";

const dir = await mkdtemp(path.join(os.tmpdir(), "mtlsd-policy-cli-"));
t.teardown(() => rm(dir, { recursive: true, force: true }));

const FRONTEND = "spiffe://example.org/ns/frontend/sa/frontend";
const REPORTING = "spiffe://example.org/ns/reporting/sa/reporting";
const ONCALL = "spiffe://example.org/ns/ops/sa/oncall";
const HOUR = 3_600_000;

/** A config file; policy commands never read the credential files, so these need not exist. */
async function config(
  name: string,
  inbound: Record<string, unknown>,
  deny?: Record<string, unknown>,
): Promise<string> {
  const file = path.join(dir, `${name}.yaml`);
  const identity = { cert: "tls.crt", key: "tls.key", trustBundle: "ca.crt", trustDomain: "example.org" };
  await writeFile(file, stringify({ identity: deny ? { ...identity, deny } : identity, inbound }));
  return file;
}

const policy = {
  default: "deny",
  rules: [
    {
      name: "frontend-reads-orders",
      action: "allow",
      from: [FRONTEND],
      to: [{ methods: ["GET", "POST"], paths: ["/v1/orders", "/v1/orders/*"] }],
    },
    { name: "nobody-reaches-admin", action: "deny", from: ["*"], to: [{ paths: ["/admin/{**}"] }] },
    { name: "block-deletes", action: "deny", to: [{ methods: ["DELETE"] }], dryRun: true },
  ],
  overrides: [
    {
      from: [ONCALL],
      to: [{ paths: ["/v1/refunds/*"] }],
      reason: "INC-1234 refunds stuck",
      approvedBy: "alice@example.org",
      expires: new Date(Date.now() + 2 * HOUR).toISOString(),
    },
  ],
};
const strictConfig = await config("strict", { policy }, { spiffeIds: [REPORTING] });
const permissiveConfig = await config("permissive", {
  mode: "permissive",
  policy: {
    ...policy,
    rules: [...policy.rules, { name: "health", action: "allow", to: [{ paths: ["/healthz"] }] }],
  },
});

async function cases(name: string, rows: unknown): Promise<string> {
  const file = path.join(dir, `${name}.cases.yaml`);
  await writeFile(file, typeof rows === "string" ? rows : stringify(rows));
  return file;
}

t.test("explain names the deciding rule and why every other rule did not match", async (t) => {
  const result = await runCli([
    "policy",
    "explain",
    "-c",
    strictConfig,
    "--from",
    FRONTEND,
    "--method",
    "DELETE",
    "--path",
    "/v1/orders/42",
  ]);
  t.equal(result.code, 0, result.stderr);
  t.match(result.stdout, `config:   ${strictConfig}\n`);
  t.match(result.stdout, `request:  DELETE /v1/orders/42 from ${FRONTEND}\n`);
  t.match(result.stdout, "peer:     mTLS, in trust domain example.org\n");
  t.match(result.stdout, "decision: DENY by the default (default_deny)\n");
  t.match(
    result.stdout,
    "[no match] allow frontend-reads-orders: from matched; to[0] method DELETE not listed",
  );
  t.match(result.stdout, "[no match] deny  nobody-reaches-admin: from matched; to[0] path did not match");
  t.match(result.stdout, 'shadow:   dry-run rule "block-deletes" would deny (shadow_deny)');
});

t.test("explain shows the path as the sidecar normalizes it before matching", async (t) => {
  const result = await runCli([
    "policy",
    "explain",
    "-c",
    strictConfig,
    "--from",
    FRONTEND,
    "--path",
    "/v1/orders/../../admin/users?x=1",
  ]);
  t.equal(result.code, 0);
  t.match(
    result.stdout,
    'path:     /admin/users (query "?x=1" is not matched) (normalized from "/v1/orders/../../admin/users?x=1")',
  );
  t.match(result.stdout, 'decision: DENY by rule "nobody-reaches-admin" (rule_deny)');
  t.match(result.stdout, "[match]    deny  nobody-reaches-admin");
});

t.test("explain names an active override and who approved it", async (t) => {
  const result = await runCli([
    "policy",
    "explain",
    "-c",
    strictConfig,
    "--from",
    ONCALL,
    "--method",
    "POST",
    "--path",
    "/v1/refunds/7",
  ]);
  t.equal(result.code, 0);
  t.match(
    result.stdout,
    /decision: ALLOW by break-glass override "INC-1234 refunds stuck" approved by alice@example.org, expires \S+ \(override\)/,
  );
});

t.test("explain says when the connection is refused before any policy: a deny-listed peer", async (t) => {
  const result = await runCli([
    "policy",
    "explain",
    "-c",
    strictConfig,
    "--from",
    REPORTING,
    "--path",
    "/v1/orders",
  ]);
  t.equal(result.code, 0);
  t.match(result.stdout, "peer:     REFUSED (revoked): the SPIFFE ID is listed in identity.deny.spiffeIds");
});

t.test("explain says when the connection is refused before any policy: another trust domain", async (t) => {
  const result = await runCli([
    "policy",
    "explain",
    "-c",
    strictConfig,
    "--from",
    "spiffe://other.org/ns/x/sa/x",
    "--path",
    "/",
  ]);
  t.equal(result.code, 0);
  t.match(result.stdout, "peer:     REFUSED (wrong_trust_domain)");
});

t.test(
  "explain of a plaintext caller: refused in strict mode, unauthenticated in permissive mode",
  async (t) => {
    const strict = await runCli(["policy", "explain", "-c", strictConfig, "--path", "/healthz"]);
    t.match(strict.stdout, "request:  GET /healthz from unauthenticated (no client certificate)");
    t.match(strict.stdout, "peer:     REFUSED (mtls_required)");
    const permissive = await runCli([
      "policy",
      "explain",
      "-c",
      permissiveConfig,
      "--from",
      "unauthenticated",
      "--path",
      "/healthz",
    ]);
    t.match(
      permissive.stdout,
      "peer:     plaintext, accepted as unauthenticated (inbound.mode is permissive)",
    );
    t.match(permissive.stdout, 'decision: ALLOW by rule "health" (rule_allow)');
  },
);

t.test("explain with a malformed --from is a usage error naming the flag", async (t) => {
  const result = await runCli(["policy", "explain", "-c", strictConfig, "--from", "frontend", "--path", "/"]);
  t.equal(result.code, 2);
  t.match(
    result.stderr,
    /^mtlsd policy: --from: expected a SPIFFE ID like .*, or "unauthenticated"; found "frontend"/,
  );
  t.equal(result.stdout, "");
});

t.test("explain without --path is a usage error", async (t) => {
  const result = await runCli(["policy", "explain", "-c", strictConfig, "--from", FRONTEND]);
  t.equal(result.code, 2);
  t.match(result.stderr, "--path is required");
});

t.test("policy without a subcommand is a usage error that shows the policy help", async (t) => {
  const result = await runCli(["policy"]);
  t.equal(result.code, 2);
  t.match(result.stderr, "mtlsd policy test [-c FILE] CASES.yaml");
});

t.test("policy test exits 0 and says so when every case gets its expected decision", async (t) => {
  const file = await cases("passing", [
    {
      name: "frontend reads",
      from: FRONTEND,
      path: "/v1/orders/1",
      expect: "allow",
      rule: "frontend-reads-orders",
    },
    {
      from: FRONTEND,
      method: "DELETE",
      path: "/v1/orders/1",
      expect: "deny",
      rule: "default",
      shadow: "shadow_deny",
    },
    { from: ONCALL, method: "POST", path: "/v1/refunds/9", expect: "allow", rule: "override" },
    { from: FRONTEND, path: "/v1/orders%2F1", expect: "bad_path" },
    { from: REPORTING, path: "/v1/orders/1", expect: "deny" },
    { path: "/v1/orders/1", expect: "deny" },
  ]);
  const result = await runCli(["policy", "test", "-c", strictConfig, file]);
  t.equal(result.code, 0, result.stdout + result.stderr);
  t.equal(
    result.stdout,
    `mtlsd policy test: all 6 cases as expected (config ${strictConfig}, cases ${file})\n`,
  );
});

t.test("policy test exits 1 and prints a table of only the cases that differ", async (t) => {
  const file = await cases(
    "failing",
    `- name: frontend reads
  from: ${FRONTEND}
  path: /v1/orders/1
  expect: allow
- name: frontend deletes
  from: ${FRONTEND}
  method: DELETE
  path: /v1/orders/1
  expect: allow
- from: ${FRONTEND}
  path: /admin/x
  expect: deny
  rule: frontend-reads-orders
- from: ${FRONTEND}
  path: /v1/orders/2
  expect: allow
  shadow: shadow_deny
`,
  );
  const result = await runCli(["policy", "test", "-c", strictConfig, file]);
  t.equal(result.code, 1);
  const lines = result.stdout.split("\n");
  t.equal(lines[0], `mtlsd policy test: 3 of 4 cases differ (config ${strictConfig}, cases ${file})`);
  t.match(lines[2], /^ {2}case +line +request +expected +got$/);
  t.match(
    lines[3],
    new RegExp(
      `^  #2 frontend deletes +5 +DELETE /v1/orders/1 from ${FRONTEND} +allow +deny by default, shadow_deny$`,
    ),
  );
  t.match(
    lines[4],
    /^ {2}#3 +10 +GET \/admin\/x from \S+ +deny by rule frontend-reads-orders +deny by rule nobody-reaches-admin$/,
  );
  t.match(
    lines[5],
    /^ {2}#4 +14 +GET \/v1\/orders\/2 from \S+ +allow, shadow_deny +allow by rule frontend-reads-orders$/,
  );
  t.notMatch(result.stdout, "frontend reads", "a passing case is not listed");
  t.match(result.stdout, "Explain one with: mtlsd policy explain");
});

t.test("policy test exits 2 on a malformed cases file, naming every bad case and its line", async (t) => {
  const file = await cases(
    "malformed",
    `- from: ${FRONTEND}
  path: /v1/orders/1
  expect: alow
- from: frontend
  path: /v1/orders/1
  expect: deny
- path: /v1/orders/1
  expect: deny
  methods: [GET]
`,
  );
  const result = await runCli(["policy", "test", "-c", strictConfig, file]);
  t.equal(result.code, 2);
  t.match(result.stderr, `${file}: invalid policy test cases (3 problems); nothing was tested`);
  t.match(result.stderr, 'case 1 (line 1): expect: expected one of allow | deny | bad_path, found "alow"');
  t.match(result.stderr, "case 2 (line 4): from: expected a SPIFFE ID");
  t.match(
    result.stderr,
    'case 3 (line 7): unknown key "methods"; the keys are name, from, method, path, expect, rule, shadow',
  );
});

t.test("policy test exits 2 when the cases file is missing", async (t) => {
  const result = await runCli(["policy", "test", "-c", strictConfig, path.join(dir, "nope.yaml")]);
  t.equal(result.code, 2);
  t.match(result.stderr, "cannot read the cases file: no such file");
});

t.test("policy test exits 2 when the cases file is not a list", async (t) => {
  const file = await cases("mapping", "cases: []\n");
  const result = await runCli(["policy", "test", "-c", strictConfig, file]);
  t.equal(result.code, 2);
  t.match(result.stderr, "(top level): expected a list of cases");
});

t.test("a config whose override expires too far ahead is refused with exit 2 naming the field", async (t) => {
  const file = await config("too-far", {
    policy: {
      overrides: [{ ...policy.overrides[0], expires: new Date(Date.now() + 72 * HOUR).toISOString() }],
    },
  });
  const [explain, test, run] = await Promise.all([
    runCli(["policy", "explain", "-c", file, "--from", ONCALL, "--path", "/v1/refunds/1"]),
    runCli(["policy", "test", "-c", file, await cases("any", [{ path: "/", expect: "deny" }])]),
    runCli(["run", "-c", file]),
  ]);
  for (const [name, result] of [
    ["explain", explain],
    ["test", test],
    ["run", run],
  ] as const) {
    t.equal(result.code, 2, `${name} exits 2`);
    t.match(result.stderr, `${file}: invalid configuration (1 problem)`, name);
    t.match(
      result.stderr,
      /inbound\.policy\.overrides\[0\]\.expires \(line \d+\): expected a time at most 24h from now/,
      name,
    );
  }
});

t.test("the example cases file passes against the example config, as docs/policy.md shows", async (t) => {
  const root = new URL("../config/", import.meta.url).pathname;
  const result = await runCli([
    "policy",
    "test",
    "-c",
    `${root}mtlsd.example.yaml`,
    `${root}policy-cases.example.yaml`,
  ]);
  t.equal(result.code, 0, result.stdout + result.stderr);
  t.match(result.stdout, /all \d+ cases as expected/);
});

t.test("--help lists the policy commands", async (t) => {
  const result = await runCli(["--help"]);
  t.equal(result.code, 0);
  t.match(result.stdout, "mtlsd policy explain [-c FILE] [--from ID] [--method M] --path P");
  t.match(result.stdout, "mtlsd policy test [-c FILE] CASES.yaml");
});
