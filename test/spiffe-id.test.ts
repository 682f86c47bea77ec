// Checks SPIFFE ID parsing against each rule of spiffe/spiffe standards/SPIFFE-ID.md §2, using its own examples.
import t from "tap";
import { isValidTrustDomain, parseSpiffeId, type SpiffeIdResult } from "../src/identity/spiffe-id.ts";

function reasonOf(result: SpiffeIdResult): string {
  return result.ok ? "(accepted)" : result.reason;
}

t.test("the spec's example IDs parse into trust domain and path", async (t) => {
  const examples: [string, string, string][] = [
    ["spiffe://trust-domain-name/path", "trust-domain-name", "/path"],
    ["spiffe://staging.example.com/payments/mysql", "staging.example.com", "/payments/mysql"],
    ["spiffe://staging.example.com/payments/web-fe", "staging.example.com", "/payments/web-fe"],
    ["spiffe://k8s-west.example.com/ns/staging/sa/default", "k8s-west.example.com", "/ns/staging/sa/default"],
    [
      "spiffe://example.com/9eebccd2-12bf-40a6-b262-65fe0487d453",
      "example.com",
      "/9eebccd2-12bf-40a6-b262-65fe0487d453",
    ],
  ];
  for (const [uri, trustDomain, path] of examples) {
    t.same(parseSpiffeId(uri), { ok: true, id: { uri, trustDomain, path } }, uri);
  }
});

t.test("a trust-domain ID has an empty path", async (t) => {
  t.same(parseSpiffeId("spiffe://example.org"), {
    ok: true,
    id: { uri: "spiffe://example.org", trustDomain: "example.org", path: "" },
  });
});

t.test("an empty string is not an ID", async (t) => {
  t.equal(reasonOf(parseSpiffeId("")), "SPIFFE ID is empty");
});

t.test("a scheme other than spiffe is refused", async (t) => {
  t.equal(reasonOf(parseSpiffeId("https://example.org/a")), 'scheme is missing or not "spiffe://"');
  t.equal(reasonOf(parseSpiffeId("spiffe:example.org/a")), 'scheme is missing or not "spiffe://"');
  t.equal(reasonOf(parseSpiffeId("example.org/a")), 'scheme is missing or not "spiffe://"');
});

t.test("an uppercase scheme is refused", async (t) => {
  t.equal(reasonOf(parseSpiffeId("SPIFFE://example.org/a")), 'scheme must be lowercase "spiffe://"');
  t.equal(reasonOf(parseSpiffeId("Spiffe://example.org/a")), 'scheme must be lowercase "spiffe://"');
});

t.test("a missing trust domain is refused", async (t) => {
  t.equal(reasonOf(parseSpiffeId("spiffe:///path")), "trust domain is missing");
  t.equal(reasonOf(parseSpiffeId("spiffe://")), "trust domain is missing");
});

t.test("a trust domain with an uppercase letter is refused", async (t) => {
  t.equal(reasonOf(parseSpiffeId("spiffe://Example.org/a")), "trust domain contains an uppercase letter");
});

t.test("a trust domain with a port is refused", async (t) => {
  t.equal(reasonOf(parseSpiffeId("spiffe://example.org:8443/a")), "trust domain contains a port");
  t.equal(reasonOf(parseSpiffeId("spiffe://example.org:/a")), "trust domain contains a port");
});

t.test("a trust domain with userinfo is refused", async (t) => {
  t.equal(reasonOf(parseSpiffeId("spiffe://user@example.org/a")), "trust domain contains userinfo");
  t.equal(reasonOf(parseSpiffeId("spiffe://user:pw@example.org/a")), "trust domain contains a port");
});

t.test("a percent-encoded trust domain is refused", async (t) => {
  t.equal(reasonOf(parseSpiffeId("spiffe://exa%6Dple.org/a")), "trust domain contains percent-encoding");
});

t.test("a trust domain with a character outside a-z 0-9 . - _ is refused", async (t) => {
  t.equal(
    reasonOf(parseSpiffeId("spiffe://exa mple.org/a")),
    'trust domain contains the character " "; only a-z 0-9 . - _ are allowed',
  );
  t.equal(
    reasonOf(parseSpiffeId("spiffe://[::1]/a")),
    'trust domain contains the character "["; only a-z 0-9 . - _ are allowed',
  );
  t.equal(
    reasonOf(parseSpiffeId("spiffe://bücher.example/a")),
    'trust domain contains the character "ü"; only a-z 0-9 . - _ are allowed',
  );
});

t.test("every allowed trust domain character is accepted, IPv4 addresses included", async (t) => {
  t.ok(isValidTrustDomain("abcdefghijklmnopqrstuvwxyz0123456789.-_"));
  t.ok(isValidTrustDomain("trust_domain_name.example.com"));
  t.ok(isValidTrustDomain("192.168.0.1"));
  t.ok(parseSpiffeId("spiffe://192.168.0.1/db").ok);
});

t.test("a trust domain of 255 bytes is accepted and one of 256 is refused", async (t) => {
  t.ok(isValidTrustDomain("a".repeat(255)));
  t.notOk(isValidTrustDomain("a".repeat(256)));
  t.equal(
    reasonOf(parseSpiffeId(`spiffe://${"a".repeat(256)}/x`)),
    "trust domain is 256 bytes, longer than 255",
  );
});

t.test("isValidTrustDomain refuses what parseSpiffeId refuses in a trust domain", async (t) => {
  for (const td of ["", "Example.org", "example.org:80", "u@example.org", "ex%41", "spiffe://example.org"]) {
    t.notOk(isValidTrustDomain(td), JSON.stringify(td));
  }
});

t.test("a path with an empty segment is refused", async (t) => {
  t.equal(reasonOf(parseSpiffeId("spiffe://example.org//a")), "path contains an empty segment");
  t.equal(reasonOf(parseSpiffeId("spiffe://example.org/a//b")), "path contains an empty segment");
});

t.test("a path with a dot segment is refused", async (t) => {
  t.equal(reasonOf(parseSpiffeId("spiffe://example.org/.")), 'path contains the dot segment "."');
  t.equal(reasonOf(parseSpiffeId("spiffe://example.org/a/./b")), 'path contains the dot segment "."');
  t.equal(reasonOf(parseSpiffeId("spiffe://example.org/a/../b")), 'path contains the dot segment ".."');
  t.equal(reasonOf(parseSpiffeId("spiffe://example.org/..")), 'path contains the dot segment ".."');
});

t.test("segments that merely contain dots are accepted", async (t) => {
  t.ok(parseSpiffeId("spiffe://example.org/.../a..b/.hidden/x.").ok);
});

t.test("a path with a trailing slash is refused", async (t) => {
  t.equal(reasonOf(parseSpiffeId("spiffe://example.org/")), "path has a trailing slash");
  t.equal(reasonOf(parseSpiffeId("spiffe://example.org/a/")), "path has a trailing slash");
});

t.test("a percent-encoded path is refused", async (t) => {
  t.equal(reasonOf(parseSpiffeId("spiffe://example.org/a%2Fb")), "path contains percent-encoding");
});

t.test("a path with a character outside a-z A-Z 0-9 . - _ is refused", async (t) => {
  for (const ch of [" ", "~", "+", "*", "@", ":", "é", "\\"]) {
    t.equal(
      reasonOf(parseSpiffeId(`spiffe://example.org/a${ch}b`)),
      `path contains the character ${JSON.stringify(ch)}; only a-z A-Z 0-9 . - _ are allowed in a segment`,
      JSON.stringify(ch),
    );
  }
});

t.test("every allowed path character is accepted, uppercase included", async (t) => {
  const segment = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.-_";
  t.same(parseSpiffeId(`spiffe://example.org/${segment}`), {
    ok: true,
    id: { uri: `spiffe://example.org/${segment}`, trustDomain: "example.org", path: `/${segment}` },
  });
});

t.test("an ID with a query is refused", async (t) => {
  t.equal(reasonOf(parseSpiffeId("spiffe://example.org/a?b=c")), "ID contains a query");
  t.equal(reasonOf(parseSpiffeId("spiffe://example.org?x")), "ID contains a query");
});

t.test("an ID with a fragment is refused", async (t) => {
  t.equal(reasonOf(parseSpiffeId("spiffe://example.org/a#b")), "ID contains a fragment");
  t.equal(reasonOf(parseSpiffeId("spiffe://example.org#b")), "ID contains a fragment");
});

t.test("an ID of 2048 bytes is accepted and one of 2049 is refused", async (t) => {
  const prefix = "spiffe://example.org/";
  const longest = prefix + "a".repeat(2048 - prefix.length);
  t.equal(longest.length, 2048);
  t.ok(parseSpiffeId(longest).ok);
  t.equal(reasonOf(parseSpiffeId(`${longest}b`)), "SPIFFE ID is longer than 2048 bytes");
});
