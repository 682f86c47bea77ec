// Which trust domain's bundle must anchor a peer: the verdicts the handshake cannot show, decided on certificates.
import { X509Certificate } from "node:crypto";
import t from "tap";
import { PeerIdentityCache, type TrustSource } from "../src/identity/index.ts";
import { createTestPki } from "./helpers/pki.ts";

const ours = await createTestPki("example.org");
t.teardown(() => ours.cleanup());
const partner = await createTestPki("partner.example");
t.teardown(() => partner.cleanup());
const CHECKOUT = "spiffe://partner.example/ns/shop/sa/checkout";

function trust(partnerPem: string, version = "v1"): TrustSource {
  return {
    current: {
      trustDomain: "example.org",
      bundlePem: ours.bundlePem,
      bundleSha256: version,
      federation: [{ trustDomain: "partner.example", pem: partnerPem }],
    },
  };
}

/** The leaf alone, as a resumed TLS session shows it: no chain to follow. */
const leafOnly = (chainPem: string) => new X509Certificate(chainPem);

t.test("a leaf signed by the partner's root itself is anchored without a chain", async (t) => {
  const direct = await partner.identity("direct", { spiffeId: CHECKOUT }, partner.root);
  const check = new PeerIdentityCache("client", trust(partner.bundlePem)).identify(leafOnly(direct.chainPem));
  t.ok(check.ok);
});

t.test("a peer of a federated domain whose bundle is empty is refused as unknown_ca", async (t) => {
  const direct = await partner.identity("direct-empty", { spiffeId: CHECKOUT }, partner.root);
  const check = new PeerIdentityCache("client", trust("")).identify(leafOnly(direct.chainPem));
  t.match(check, { ok: false, reason: "unknown_ca", detail: /whose bundle is empty/ });
});

t.test("a leaf known without its chain and without an earlier verdict is refused, not trusted", async (t) => {
  const viaIntermediate = await partner.identity("resumed", { spiffeId: CHECKOUT });
  const cache = new PeerIdentityCache("client", trust(partner.bundlePem));
  const check = cache.identify(leafOnly(viaIntermediate.chainPem));
  t.match(check, { ok: false, reason: "unknown_ca", detail: /only its leaf is known/ });
});

t.test("a leaf signed directly by another domain's root is refused as wrong_trust_domain", async (t) => {
  const forged = await ours.identity("forged-direct", { spiffeId: CHECKOUT }, ours.root);
  const check = new PeerIdentityCache("client", trust(partner.bundlePem)).identify(leafOnly(forged.chainPem));
  t.match(check, {
    ok: false,
    reason: "wrong_trust_domain",
    detail: /chains to the bundle of trust domain example\.org/,
  });
});

t.test("verdicts are kept per trust version and bounded in number", async (t) => {
  const a = await partner.identity("a", { spiffeId: CHECKOUT }, partner.root);
  const b = await partner.identity("b", { spiffeId: `${CHECKOUT}-b` }, partner.root);
  const source = { current: trust(partner.bundlePem).current };
  const cache = new PeerIdentityCache("client", source, 1);
  t.ok(cache.identify(leafOnly(a.chainPem)).ok);
  t.ok(cache.identify(leafOnly(b.chainPem)).ok, "the second evicts the first");
  t.ok(cache.identify(leafOnly(a.chainPem)).ok, "and the first is decided afresh");
  source.current = trust("", "v2").current;
  t.match(cache.identify(leafOnly(a.chainPem)), { ok: false }, "a change of trust drops the old verdicts");
});
