// Path patterns as users write them: what `/api/*`, `/api/{**}` and friends match, and what a refused one says.
import t from "tap";
import { parseConfig } from "../src/config/index.ts";
import { Policy } from "../src/policy/index.ts";

const FRONTEND = "spiffe://example.org/ns/frontend/sa/frontend";

function matcher(pattern: string): (path: string) => boolean {
  const policy = new Policy({
    default: "deny",
    rules: [{ name: "r", action: "allow", to: [{ paths: [pattern] }] }],
  });
  return (path) => policy.evaluate({ source: FRONTEND, method: "GET", path }).allow;
}

/** The config error for one rule with `paths: [pattern]`, as `mtlsd check` and a reload print it. */
function refusal(pattern: string): string {
  const text = `identity: { cert: a, key: b, trustBundle: c, trustDomain: example.org }
inbound:
  policy:
    rules:
      - { name: r, action: allow, to: [{ paths: [${JSON.stringify(pattern)}] }] }
`;
  try {
    parseConfig(text, "/etc/mtlsd/mtlsd.yaml");
  } catch (error) {
    return (error as Error).message;
  }
  throw new Error(`${pattern} was accepted`);
}

t.test("/api/{**} matches /api/ and everything below it, but not /api itself (as in Istio)", async (t) => {
  const matches = matcher("/api/{**}");
  t.ok(matches("/api/"));
  t.ok(matches("/api/orders"));
  t.ok(matches("/api/orders/42/items"));
  t.notOk(matches("/api"), "zero segments still need the slash before {**}");
  t.notOk(matches("/apikeys"));
});

t.test("/api/* is a prefix: everything below /api/ at any depth, not /api itself", async (t) => {
  const matches = matcher("/api/*");
  t.ok(matches("/api/"));
  t.ok(matches("/api/orders/42/items"));
  t.notOk(matches("/api"));
  t.notOk(matches("/apikeys"));
});

t.test("/api* is a prefix of the string: it also matches /apikeys", async (t) => {
  const matches = matcher("/api*");
  t.ok(matches("/api"));
  t.ok(matches("/api/orders"));
  t.ok(matches("/apikeys"), "which is why the docs recommend /api plus /api/{**}");
});

t.test("{**} may be followed by literal segments, as Istio allows", async (t) => {
  const matches = matcher("/v1/{**}/items");
  t.ok(matches("/v1/orders/items"));
  t.ok(matches("/v1/orders/42/items"));
  t.notOk(matches("/v1/items"));
});

t.test("/api/** is refused, naming the template and the prefix to write instead", async (t) => {
  t.match(
    refusal("/api/**"),
    'write the template "/api/{**}" or the prefix "/api/*" (add "/api" to match /api itself)',
  );
});

t.test("a * in the middle of a path is refused, naming the {*} template", async (t) => {
  t.match(refusal("/v1/*/items"), 'write the template "/v1/{*}/items"');
});

t.test("a * inside a segment is refused, pointing at a prefix or a list", async (t) => {
  t.match(refusal("/v1/ord*ers"), 'list the paths, or use the prefix "/v1/ord*"');
});

t.test("a pattern with a * at both ends is refused: it cannot say contains", async (t) => {
  t.match(refusal("*/admin/*"), '"contains" cannot be said');
});

t.test("** as a whole segment before more path is refused, naming the template", async (t) => {
  t.match(refusal("/files/**/meta"), 'write the template "/files/{**}/meta"');
});

t.test("a leading ** is refused, naming the suffix pattern", async (t) => {
  t.match(refusal("**/meta"), 'write the suffix "*/meta"');
});

t.test("a bare {**} is refused, pointing at * or /{**}", async (t) => {
  t.match(refusal("{**}"), 'write "/{**}", or "*" for every path');
});

t.test("a template that does not start with / is refused with the corrected one", async (t) => {
  t.match(refusal("v1/{*}"), 'write "/v1/{*}"');
});

t.test("a path without a leading / is refused with the corrected one", async (t) => {
  t.match(refusal("v1/orders"), 'write "/v1/orders"');
  t.match(refusal("v1/*"), 'write "/v1/*"');
});

t.test("an empty pattern is refused, pointing at *", async (t) => {
  t.match(refusal(""), 'write "*" for every path');
});

t.test("a named variable is refused, pointing at {*} and {**}", async (t) => {
  t.match(refusal("/v1/orders/{id}"), "named variables are not supported; write {*} for one segment");
});

t.test("an operator with other text in its segment is refused, pointing at a suffix pattern", async (t) => {
  t.match(refusal("/files/{*}.txt"), 'write a suffix pattern like "*.txt"');
});

t.test("** inside a template segment is refused, pointing at {**}", async (t) => {
  t.match(refusal("/files/a**/{*}"), "write {**} (in braces, a whole segment)");
});

t.test("an operator after {**} is refused: {**} must be the last operator", async (t) => {
  t.match(refusal("/{**}/foo/{*}"), "{**} must be the last operator: only literal segments may follow it");
});

t.test("a policy built without the config schema gets the same advice", async (t) => {
  t.throws(
    () =>
      new Policy({
        default: "deny",
        rules: [{ name: "r", action: "allow", to: [{ paths: ["/api/**"] }] }],
      }),
    {
      code: "POLICY_INVALID",
      message: /rules\[0\]\.to\[0\]\.paths\[0\]: "\/api\/\*\*": .*"\/api\/\{\*\*\}"/,
    },
  );
});

t.test("/** is refused, naming /{**} and the prefix /*", async (t) => {
  t.match(refusal("/**"), 'write the template "/{**}" or the prefix "/*"');
});

t.test("** glued to other text is refused, pointing at {**} as a whole segment", async (t) => {
  t.match(refusal("/files/a**"), "write {**} as a whole segment");
});

t.test(
  "a template with an empty segment is refused by the policy: a normalized path never has one",
  async (t) => {
    t.throws(() => matcher("/v1//{*}"), {
      code: "POLICY_INVALID",
      message: /has an empty segment \("\/\/"\)/,
    });
  },
);

t.test("a relative path with a * in the middle is refused, naming the absolute template", async (t) => {
  t.match(refusal("v1/*/items"), 'write the template "/v1/{*}/items"');
});
