// Path normalization: the bypass classes that hit real proxies, the normalization table, and a fixed-point property.

import t from "tap";
import { normalizePath, type PathResult } from "../src/policy/index.ts";

function pathOf(target: string): string {
  const r = normalizePath(target);
  if (!r.ok) throw new Error(`expected ${JSON.stringify(target)} to normalize, got: ${r.detail}`);
  return r.path;
}

function refused(r: PathResult): boolean {
  return !r.ok;
}

t.test("CVE-2019-9901: /info/../private is resolved to /private before matching", async (t) => {
  t.equal(pathOf("/info/../private"), "/private");
});

t.test("CVE-2021-31920: an encoded slash is refused, in either hex case", async (t) => {
  t.ok(refused(normalizePath("/admin%2Fusers")));
  t.ok(refused(normalizePath("/public%2f..%2fadmin")));
});

t.test("CVE-2021-29492: an encoded backslash is refused, in either hex case", async (t) => {
  t.ok(refused(normalizePath("/public%5C..%5Cadmin")));
  t.ok(refused(normalizePath("/public%5c..%5cadmin")));
});

t.test("a repeated slash cannot hide /admin: //admin is merged to /admin", async (t) => {
  t.equal(pathOf("//admin"), "/admin");
  t.equal(pathOf("/public//..//admin"), "/admin");
});

t.test("CVE-2021-39156: a fragment is refused, in the path and in the query", async (t) => {
  const inPath = normalizePath("/user/profile#frag");
  t.notOk(inPath.ok);
  if (!inPath.ok) t.match(inPath.detail, /fragment/);
  t.ok(refused(normalizePath("/user/profile?x=1#frag")));
});

t.test("CVE-2020-8595: the query is split off, so an exact match sees the path alone", async (t) => {
  t.same(normalizePath("/healthz?probe=1"), { ok: true, path: "/healthz", query: "?probe=1" });
});

t.test("a bare ? keeps its empty query so the app receives the same bytes", async (t) => {
  t.same(normalizePath("/a?"), { ok: true, path: "/a", query: "?" });
});

t.test("the query is kept verbatim, escapes and slashes included", async (t) => {
  t.same(normalizePath("/a/./b?next=/x/../y&v=%2f%zz"), {
    ok: true,
    path: "/a/b",
    query: "?next=/x/../y&v=%2f%zz",
  });
});

t.test("servlet path-parameter tricks on dot segments are refused", async (t) => {
  for (const target of [
    "/public/..;/admin",
    "/public/.;/admin",
    "/public/..;jsessionid=1/admin",
    "/a/%2e%2e;/b",
    "/a/..%3b/b",
  ]) {
    t.notOk(normalizePath(target).ok, target);
  }
});

t.test("semicolons outside dot segments are matrix parameters and are kept", async (t) => {
  t.equal(pathOf("/cart;jsessionid=abc/items"), "/cart;jsessionid=abc/items");
  t.equal(pathOf("/a/...;x"), "/a/...;x");
});

t.test("the request-target must be origin-form", async (t) => {
  for (const target of ["", "*", "admin", "http://example.org/admin"])
    t.notOk(normalizePath(target).ok, target);
});

t.test("malformed percent-escapes are refused", async (t) => {
  for (const target of ["/a%", "/a%4", "/a%zz", "/a%4g", "/a%%41"]) t.notOk(normalizePath(target).ok, target);
});

t.test("an encoded NUL is refused", async (t) => {
  t.notOk(normalizePath("/a%00b").ok);
});

t.test("spaces, control characters and non-ASCII are refused in the path and the query", async (t) => {
  for (const target of [
    "/a b",
    "/a\tb",
    "/a\nb",
    "/a\x7fb",
    "/caf\u00e9",
    "/a?x=1 2",
    "/a?x=\r",
    "/a?\u00e9",
  ]) {
    t.notOk(normalizePath(target).ok, JSON.stringify(target));
  }
});

t.test("characters outside RFC 3986 pchar must be percent-encoded in the path", async (t) => {
  for (const target of ["/a{b}", "/a|b", "/a<b>", '/a"b', "/a[0]", "/a^b", "/a`b"]) {
    t.notOk(normalizePath(target).ok, target);
  }
});

t.test("the detail of a refusal names what was wrong", async (t) => {
  const r = normalizePath("/a%2Fb");
  t.notOk(r.ok);
  if (!r.ok) t.match(r.detail, /encoded slash/);
});

t.test("normalization follows the table", async (t) => {
  const table: Array<[string, string]> = [
    ["/", "/"],
    ["/a/b", "/a/b"],
    ["/a/b/", "/a/b/"],
    ["/a//b///c", "/a/b/c"],
    ["/a/./b", "/a/b"],
    ["/a/b/..", "/a/"],
    ["/a/b/../", "/a/"],
    ["/a/.", "/a/"],
    ["/..", "/"],
    ["/../../etc/passwd", "/etc/passwd"],
    ["/a/../../b", "/b"],
    ["/a\\b\\..\\c", "/a/c"],
    ["/%2e%2E/admin", "/admin"],
    ["/a/%2e/b", "/a/b"],
    ["/%61%62%7E%2D%5f", "/ab~-_"],
    ["/a%252e%252e/b", "/a%252e%252e/b"],
    ["/a%3b%20b", "/a%3B%20b"],
    ["/a%c3%a9", "/a%C3%A9"],
    ["/.well-known/x", "/.well-known/x"],
    ["/a/..b/c", "/a/..b/c"],
    ["/a/...", "/a/..."],
    ["//", "/"],
    ["/./", "/"],
    ["/a/b/c/../../", "/a/"],
    ["/v1/orders:cancel@x", "/v1/orders:cancel@x"],
    ["/a*b,c=d!$&'()+", "/a*b,c=d!$&'()+"],
  ];
  for (const [input, expected] of table) t.equal(pathOf(input), expected, input);
});

t.test("a path with nothing to rewrite is returned as the very same string", async (t) => {
  const target = "/v1/orders/123";
  const r = normalizePath(target);
  t.ok(r.ok && r.path === target && r.query === "");
});

// Mulberry32: a tiny seeded PRNG, so a failure reproduces with the seed in the test output.
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let x = Math.imul(a ^ (a >>> 15), 1 | a);
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x;
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}

t.test("every path that normalizes is a fixed point with no //, dot segments or backslashes", async (t) => {
  const alphabet = ["/", ".", "..", "%2e", "%2E", "%2f", "%5c", "\\", ";", "#", "?", "a", "b"];
  const seed = 20260524;
  const random = prng(seed);
  let accepted = 0;
  for (let i = 0; i < 20000; i++) {
    let target = "/";
    const parts = 1 + Math.floor(random() * 12);
    for (let j = 0; j < parts; j++) target += alphabet[Math.floor(random() * alphabet.length)];
    const r = normalizePath(target);
    if (!r.ok) continue;
    accepted++;
    const again = normalizePath(r.path);
    const problem =
      !again.ok || again.path !== r.path || again.query !== ""
        ? "not a fixed point"
        : /\/\/|\/\.\/|\/\.\.\/|\/\.{1,2}$|\\/.test(r.path)
          ? "contains //, a dot segment or a backslash"
          : null;
    if (problem !== null) {
      t.fail(`${JSON.stringify(target)} -> ${JSON.stringify(r.path)}: ${problem} (seed ${seed})`);
      return;
    }
  }
  t.ok(accepted > 1000, `enough accepted samples (${accepted}) to mean something`);
});
