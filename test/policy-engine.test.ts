// The policy engine: every matcher kind, Istio's deny-wins order, defaults, dry-run shadows, overrides and explain.

import t from "tap";
import { MtlsdError } from "../src/errors.ts";
import {
  compilePolicy,
  formatExplanation,
  Policy,
  type PolicyConfig,
  type PolicyOverride,
  type PolicyRequest,
  type PolicyRule,
} from "../src/policy/index.ts";

const FRONTEND = "spiffe://example.org/ns/frontend/sa/frontend";
const OPS = "spiffe://example.org/ns/ops/sa/oncall";
const NOW = Date.parse("2026-05-24T12:00:00Z");
const clock = () => NOW;

function req(source: string | null, method: string, path: string): PolicyRequest {
  return { source, method, path };
}

function policyOf(rules: PolicyRule[], extra: Partial<PolicyConfig> = {}): Policy {
  return new Policy({ default: "deny", rules, ...extra }, { now: clock });
}

function allows(p: Policy, r: PolicyRequest): boolean {
  return p.evaluate(r).allow;
}

function override(fields: Partial<PolicyOverride> = {}): PolicyOverride {
  return {
    from: [OPS],
    to: [{ paths: ["/v1/refunds/*"] }],
    reason: "INC-1234 refunds stuck",
    approvedBy: "alice@example.org",
    expires: new Date(NOW + 3_600_000),
    ...fields,
  };
}

t.test("an exact from matches only that identity", async (t) => {
  const p = policyOf([{ name: "r", action: "allow", from: [FRONTEND] }]);
  t.ok(allows(p, req(FRONTEND, "GET", "/")));
  t.notOk(allows(p, req(`${FRONTEND}x`, "GET", "/")));
});

t.test("a prefix from matches the identities under it, and the prefix itself", async (t) => {
  const p = policyOf([{ name: "r", action: "allow", from: ["spiffe://example.org/ns/frontend/*"] }]);
  t.ok(allows(p, req(FRONTEND, "GET", "/")));
  t.ok(allows(p, req("spiffe://example.org/ns/frontend/", "GET", "/")));
  t.notOk(allows(p, req("spiffe://example.org/ns/backend/sa/x", "GET", "/")));
});

t.test("a suffix from matches identities ending with it", async (t) => {
  const p = policyOf([{ name: "r", action: "allow", from: ["*/sa/frontend"] }]);
  t.ok(allows(p, req(FRONTEND, "GET", "/")));
  t.notOk(allows(p, req("spiffe://example.org/ns/frontend/sa/other", "GET", "/")));
});

t.test("from * matches any authenticated source but not an unauthenticated one", async (t) => {
  const p = policyOf([{ name: "r", action: "allow", from: ["*"] }]);
  t.ok(allows(p, req(FRONTEND, "GET", "/")));
  t.notOk(allows(p, req(null, "GET", "/")));
});

t.test("a rule without from matches unauthenticated requests too", async (t) => {
  const p = policyOf([{ name: "r", action: "allow", to: [{ paths: ["/healthz"] }] }]);
  t.ok(allows(p, req(null, "GET", "/healthz")));
});

t.test("no from pattern matches an unauthenticated source", async (t) => {
  const p = policyOf([
    { name: "r", action: "allow", from: ["spiffe://*", "*", "*x", "spiffe://example.org/x"] },
  ]);
  t.notOk(allows(p, req(null, "GET", "/")));
});

t.test("methods match exactly and case-sensitively", async (t) => {
  const p = policyOf([{ name: "r", action: "allow", to: [{ methods: ["GET", "HEAD"] }] }]);
  t.ok(allows(p, req(FRONTEND, "GET", "/x")));
  t.ok(allows(p, req(FRONTEND, "HEAD", "/x")));
  t.notOk(allows(p, req(FRONTEND, "get", "/x")));
  t.notOk(allows(p, req(FRONTEND, "POST", "/x")));
});

t.test("an exact path matches only that path, not its trailing-slash twin", async (t) => {
  const p = policyOf([{ name: "r", action: "allow", to: [{ paths: ["/v1/orders"] }] }]);
  t.ok(allows(p, req(FRONTEND, "GET", "/v1/orders")));
  t.notOk(allows(p, req(FRONTEND, "GET", "/v1/orders/")));
  t.notOk(allows(p, req(FRONTEND, "GET", "/v1/orders/1")));
});

t.test("a prefix path matches everything under it", async (t) => {
  const p = policyOf([{ name: "r", action: "allow", to: [{ paths: ["/v1/orders/*"] }] }]);
  t.ok(allows(p, req(FRONTEND, "GET", "/v1/orders/1")));
  t.ok(allows(p, req(FRONTEND, "GET", "/v1/orders/1/items")));
  t.ok(allows(p, req(FRONTEND, "GET", "/v1/orders/")));
  t.notOk(allows(p, req(FRONTEND, "GET", "/v1/orders")));
});

t.test("a suffix path matches paths ending with it", async (t) => {
  const p = policyOf([{ name: "r", action: "allow", to: [{ paths: ["*.json"] }] }]);
  t.ok(allows(p, req(FRONTEND, "GET", "/a/b.json")));
  t.notOk(allows(p, req(FRONTEND, "GET", "/a/b.jsonx")));
});

t.test("path * matches every path", async (t) => {
  const p = policyOf([{ name: "r", action: "allow", to: [{ paths: ["*"] }] }]);
  t.ok(allows(p, req(FRONTEND, "GET", "/")));
  t.ok(allows(p, req(FRONTEND, "GET", "/any/thing")));
});

t.test("the template {*} matches exactly one non-empty segment", async (t) => {
  const p = policyOf([{ name: "r", action: "allow", to: [{ paths: ["/v1/orders/{*}/items"] }] }]);
  t.ok(allows(p, req(FRONTEND, "GET", "/v1/orders/42/items")));
  t.ok(allows(p, req(FRONTEND, "GET", "/v1/orders/a=b/items")));
  t.notOk(allows(p, req(FRONTEND, "GET", "/v1/orders/42/7/items")));
  t.notOk(allows(p, req(FRONTEND, "GET", "/v1/orders/items")));
  t.notOk(allows(p, req(FRONTEND, "GET", "/v1/orders/42/items/")));
});

t.test("the template {**} matches zero or more segments after its slash, as Envoy's ** does", async (t) => {
  const p = policyOf([{ name: "r", action: "allow", to: [{ paths: ["/files/{**}"] }] }]);
  t.ok(allows(p, req(FRONTEND, "GET", "/files/")));
  t.ok(allows(p, req(FRONTEND, "GET", "/files/a")));
  t.ok(allows(p, req(FRONTEND, "GET", "/files/a/b/c")));
  t.notOk(allows(p, req(FRONTEND, "GET", "/files")));
  t.notOk(allows(p, req(FRONTEND, "GET", "/filesystem")));
});

t.test("a template may follow {**} with literal segments and a trailing slash", async (t) => {
  const p = policyOf([
    { name: "r", action: "allow", to: [{ paths: ["/foo/{*}/bar/{**}/", "/x/{**}/meta"] }] },
  ]);
  t.ok(allows(p, req(FRONTEND, "GET", "/foo/buzz/bar/a/")));
  t.ok(allows(p, req(FRONTEND, "GET", "/foo/buzz/bar/a/b/")));
  t.notOk(allows(p, req(FRONTEND, "GET", "/foo/buzz/bar/a")));
  t.ok(allows(p, req(FRONTEND, "GET", "/x/1/2/meta")));
  t.notOk(allows(p, req(FRONTEND, "GET", "/x/1/2/metadata")));
});

t.test("a to entry needs both its methods and its paths to match", async (t) => {
  const p = policyOf([{ name: "r", action: "allow", to: [{ methods: ["GET"], paths: ["/read"] }] }]);
  t.ok(allows(p, req(FRONTEND, "GET", "/read")));
  t.notOk(allows(p, req(FRONTEND, "POST", "/read")));
  t.notOk(allows(p, req(FRONTEND, "GET", "/write")));
});

t.test("any one of several to entries is enough", async (t) => {
  const p = policyOf([
    {
      name: "r",
      action: "allow",
      to: [
        { methods: ["GET"], paths: ["/read"] },
        { methods: ["POST"], paths: ["/write"] },
      ],
    },
  ]);
  t.ok(allows(p, req(FRONTEND, "POST", "/write")));
  t.notOk(allows(p, req(FRONTEND, "POST", "/read")));
});

t.test("a matching deny rule wins over an allow rule listed before it", async (t) => {
  const p = policyOf([
    { name: "everyone-reads", action: "allow", from: ["*"] },
    { name: "no-admin", action: "deny", to: [{ paths: ["/admin/*"] }] },
  ]);
  t.same(p.evaluate(req(FRONTEND, "GET", "/admin/users")), {
    allow: false,
    rule: "no-admin",
    reason: "rule_deny",
    shadow: [],
  });
});

t.test("a matching allow rule names itself in the decision", async (t) => {
  const p = policyOf([{ name: "frontend-reads", action: "allow", from: [FRONTEND] }]);
  const d = p.evaluate(req(FRONTEND, "GET", "/"));
  t.equal(d.rule, "frontend-reads");
  t.equal(d.reason, "rule_allow");
});

t.test("with no matching rule the default deny applies", async (t) => {
  const p = policyOf([{ name: "r", action: "allow", from: [FRONTEND] }]);
  t.same(p.evaluate(req(OPS, "GET", "/")), {
    allow: false,
    rule: "default",
    reason: "default_deny",
    shadow: [],
  });
});

t.test("with no matching rule the default allow applies", async (t) => {
  const p = new Policy({
    default: "allow",
    rules: [{ name: "no-admin", action: "deny", to: [{ paths: ["/admin"] }] }],
  });
  t.same(p.evaluate(req(OPS, "GET", "/")), {
    allow: true,
    rule: "default",
    reason: "default_allow",
    shadow: [],
  });
  t.notOk(allows(p, req(OPS, "GET", "/admin")));
});

t.test("a dry-run deny rule is reported as a shadow hit and not enforced", async (t) => {
  const p = policyOf([
    { name: "reads", action: "allow", from: [FRONTEND] },
    { name: "maybe-block", action: "deny", to: [{ paths: ["/v1/*"] }], dryRun: true },
  ]);
  const d = p.evaluate(req(FRONTEND, "GET", "/v1/x"));
  t.equal(d.allow, true);
  t.equal(d.rule, "reads");
  t.same(d.shadow, [{ rule: "maybe-block", result: "shadow_deny" }]);
});

t.test("a dry-run allow rule is reported as a shadow hit and not enforced", async (t) => {
  const p = policyOf([{ name: "maybe-allow", action: "allow", from: [OPS], dryRun: true }]);
  const d = p.evaluate(req(OPS, "GET", "/"));
  t.equal(d.allow, false);
  t.equal(d.reason, "default_deny");
  t.same(d.shadow, [{ rule: "maybe-allow", result: "shadow_allow" }]);
});

t.test("every matching dry-run rule is reported, in config order", async (t) => {
  const p = policyOf([
    { name: "a", action: "deny", dryRun: true },
    { name: "b", action: "allow", dryRun: true, from: [OPS] },
    { name: "c", action: "allow", dryRun: true },
  ]);
  t.same(
    p.evaluate(req(FRONTEND, "GET", "/")).shadow.map((s) => s.rule),
    ["a", "c"],
  );
});

t.test("decisions without shadow hits share one frozen empty shadow array", async (t) => {
  const p = policyOf([
    { name: "r", action: "allow", from: [FRONTEND] },
    { name: "d", action: "deny", dryRun: true, from: [OPS] },
  ]);
  const a = p.evaluate(req(FRONTEND, "GET", "/"));
  const b = p.evaluate(req(null, "GET", "/"));
  t.equal(a.shadow, b.shadow);
  t.ok(Object.isFrozen(a.shadow));
  t.ok(Object.isFrozen(a));
});

t.test("evaluate returns the same decision for the same input", async (t) => {
  const p = policyOf([{ name: "r", action: "allow", from: [FRONTEND], to: [{ paths: ["/v1/*"] }] }], {
    overrides: [override()],
  });
  for (const r of [req(FRONTEND, "GET", "/v1/a"), req(OPS, "GET", "/v1/refunds/1"), req(null, "GET", "/")]) {
    t.same(p.evaluate(r), p.evaluate(r));
  }
});

t.test("an active override allows what the default would deny, and says who approved it", async (t) => {
  const p = policyOf([], { overrides: [override()] });
  t.same(p.evaluate(req(OPS, "POST", "/v1/refunds/9")), {
    allow: true,
    rule: "override",
    reason: "override",
    shadow: [],
    override: {
      reason: "INC-1234 refunds stuck",
      approvedBy: "alice@example.org",
      expires: new Date(NOW + 3_600_000),
    },
  });
});

t.test("an override does not reach beyond its from and to", async (t) => {
  const p = policyOf([], { overrides: [override()] });
  t.notOk(allows(p, req(FRONTEND, "POST", "/v1/refunds/9")));
  t.notOk(allows(p, req(OPS, "POST", "/v1/orders/9")));
});

t.test("an override does not beat a matching deny rule", async (t) => {
  const p = policyOf([{ name: "freeze-refunds", action: "deny", to: [{ paths: ["/v1/refunds/*"] }] }], {
    overrides: [override()],
  });
  const d = p.evaluate(req(OPS, "POST", "/v1/refunds/9"));
  t.equal(d.allow, false);
  t.equal(d.rule, "freeze-refunds");
});

t.test("a matching allow rule decides before an override is consulted", async (t) => {
  const p = policyOf([{ name: "ops", action: "allow", from: [OPS] }], { overrides: [override()] });
  t.equal(p.evaluate(req(OPS, "POST", "/v1/refunds/9")).rule, "ops");
});

t.test("an expired override is ignored", async (t) => {
  const p = policyOf([], { overrides: [override({ expires: new Date(NOW) })] });
  t.equal(p.evaluate(req(OPS, "POST", "/v1/refunds/9")).reason, "default_deny");
});

t.test("an override expires when the injected clock passes it", async (t) => {
  let now = NOW;
  const p = new Policy({ default: "deny", rules: [], overrides: [override()] }, { now: () => now });
  t.equal(p.evaluate(req(OPS, "GET", "/v1/refunds/1")).reason, "override");
  now = NOW + 3_600_000;
  t.equal(p.evaluate(req(OPS, "GET", "/v1/refunds/1")).reason, "default_deny");
});

t.test(
  "expiredOverrides lists the config's own expired overrides so the caller can log each once",
  async (t) => {
    const stale = override({ expires: new Date(NOW - 1) });
    const fresh = override();
    const p = policyOf([], { overrides: [fresh, stale] });
    t.equal(p.expiredOverrides().length, 1);
    t.equal(p.expiredOverrides()[0], stale);
    t.same(p.expiredOverrides(NOW + 3_600_000), [fresh, stale]);
  },
);

t.test("ruleCount counts every rule, dry-run ones included", async (t) => {
  const p = policyOf([
    { name: "a", action: "allow" },
    { name: "b", action: "deny", dryRun: true },
  ]);
  t.equal(p.ruleCount, 2);
});

t.test("sha256 depends on the config's content, not on key order", async (t) => {
  const a = compilePolicy({ default: "deny", rules: [{ name: "r", action: "allow", from: [FRONTEND] }] });
  const b = compilePolicy({ rules: [{ from: [FRONTEND], action: "allow", name: "r" }], default: "deny" });
  const c = compilePolicy({ default: "allow", rules: [{ name: "r", action: "allow", from: [FRONTEND] }] });
  t.match(a.sha256, /^[0-9a-f]{64}$/);
  t.equal(a.sha256, b.sha256);
  t.not(a.sha256, c.sha256);
});

t.test("path patterns with percent-escapes match the normalized spelling", async (t) => {
  const p = policyOf([{ name: "r", action: "allow", to: [{ paths: ["/%7euser/*", "/x%3bd"] }] }]);
  t.ok(allows(p, req(FRONTEND, "GET", "/~user/a")));
  t.ok(allows(p, req(FRONTEND, "GET", "/x%3Bd")));
});

function compileError(config: PolicyConfig): string {
  try {
    new Policy(config);
  } catch (err) {
    if (err instanceof MtlsdError) return `${err.code} ${err.message}`;
    throw err;
  }
  return "compiled";
}

t.test("a pattern with * in the middle is refused with the field path", async (t) => {
  t.match(
    compileError({ default: "deny", rules: [{ name: "r", action: "allow", from: ["spiffe://*/sa/x"] }] }),
    /^POLICY_INVALID inbound\.policy\.rules\[0\]\.from\[0\]: /,
  );
});

t.test("a path pattern that is not normalized is refused, since it could never match", async (t) => {
  for (const path of ["/a//b", "/a/../b", "/a/./b*", "/a?x=1", "*/../x", "/a#b", "/a%2Fb", "/a%zz"]) {
    t.match(
      compileError({ default: "deny", rules: [{ name: "r", action: "deny", to: [{ paths: [path] }] }] }),
      /^POLICY_INVALID inbound\.policy\.rules\[0\]\.to\[0\]\.paths\[0\]: /,
      path,
    );
  }
});

t.test("a path template with {**} before another operator is refused", async (t) => {
  t.match(
    compileError({
      default: "deny",
      rules: [{ name: "r", action: "allow", to: [{ paths: ["/{**}/foo/{*}"] }] }],
    }),
    /must be the last operator/,
  );
});

t.test("a path template with text beside an operator in one segment is refused", async (t) => {
  t.match(
    compileError({
      default: "deny",
      rules: [{ name: "r", action: "allow", to: [{ paths: ["/foo/{*}.txt"] }] }],
    }),
    /POLICY_INVALID/,
  );
});

t.test("a rule named default or override is refused, since decisions use those names", async (t) => {
  t.match(compileError({ default: "deny", rules: [{ name: "default", action: "allow" }] }), /reserved/);
});

t.test("an override with an empty from is refused", async (t) => {
  t.match(
    compileError({ default: "deny", rules: [], overrides: [override({ from: [] })] }),
    /overrides\[0\]\.from/,
  );
});

t.test("explain normalizes the path and names the deciding rule", async (t) => {
  const p = policyOf([
    { name: "reads", action: "allow", from: [FRONTEND], to: [{ methods: ["GET"], paths: ["/v1/*"] }] },
    { name: "no-admin", action: "deny", to: [{ paths: ["/admin/*"] }] },
  ]);
  const e = p.explain(req(FRONTEND, "GET", "/v1/../admin/x?y=1"));
  t.same(e.normalized, { ok: true, path: "/admin/x", query: "?y=1" });
  t.equal(e.decision?.rule, "no-admin");
  t.same(
    e.rules.map((r) => [r.name, r.fromMatched, r.toMatched, r.matched]),
    [
      ["reads", true, false, false],
      ["no-admin", true, true, true],
    ],
  );
});

t.test("explain tells which part of a to entry failed", async (t) => {
  const p = policyOf([{ name: "reads", action: "allow", to: [{ methods: ["GET"], paths: ["/v1/*"] }] }]);
  const e = p.explain(req(FRONTEND, "POST", "/v2/x"));
  t.same(e.rules[0]?.to, [{ index: 0, methodMatched: false, pathMatched: false, matched: false }]);
  t.match(formatExplanation(e), /to\[0\] method POST not listed, path did not match/);
});

t.test("explain reports a refused path instead of a decision", async (t) => {
  const p = policyOf([{ name: "r", action: "allow" }]);
  const e = p.explain(req(FRONTEND, "GET", "/a%2Fb"));
  t.equal(e.decision, null);
  t.match(formatExplanation(e), /400 bad_path/);
});

t.test("explain marks expired overrides and dry-run rules", async (t) => {
  const p = policyOf([{ name: "trial", action: "deny", dryRun: true }], {
    overrides: [override({ expires: new Date(NOW - 1) })],
  });
  const e = p.explain(req(OPS, "GET", "/v1/refunds/1"));
  t.equal(e.overrides[0]?.expired, true);
  t.equal(e.overrides[0]?.matched, false);
  const text = formatExplanation(e);
  t.match(text, /decision: DENY by the default \(default_deny\)/);
  t.match(text, /shadow: +dry-run rule "trial" would deny \(shadow_deny\)/);
  t.match(text, /\[expired\] +#0 "INC-1234 refunds stuck" approved by alice@example\.org/);
});

t.test("explain text names an override decision with its approver", async (t) => {
  const p = policyOf([], { overrides: [override()] });
  t.match(
    formatExplanation(p.explain(req(OPS, "GET", "/v1/refunds/1"))),
    /decision: ALLOW by break-glass override "INC-1234 refunds stuck" approved by alice@example\.org/,
  );
});

t.test("explain calls an unauthenticated source by that name", async (t) => {
  const p = policyOf([{ name: "r", action: "allow", from: ["*"] }]);
  t.match(formatExplanation(p.explain(req(null, "GET", "/"))), /from unauthenticated/);
});
