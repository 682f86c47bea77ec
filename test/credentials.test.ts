// Startup credentials: real PEM files from a throwaway PKI either load, or are refused with a reason naming field and file.
import { createPrivateKey } from "node:crypto";
import { writeFile } from "node:fs/promises";
import path from "node:path";
import t from "tap";
import { type Credentials, loadCredentials } from "../src/credentials/index.ts";
import { MtlsdError } from "../src/errors.ts";
import {
  createIntermediateCA,
  createRootCA,
  type IssuedCert,
  issueLeaf,
  type LeafOptions,
} from "../src/pki/index.ts";
import { createTestPki, type IdentityFiles } from "./helpers/pki.ts";

const HOUR_MS = 60 * 60 * 1000;

/** The subtest handed to a `t.test` callback. */
type TestContext = Parameters<Parameters<typeof t.test>[0]>[0];

const pki = await createTestPki("example.org");
t.teardown(() => pki.cleanup());

/** A second, unrelated CA in the same trust domain (a rotation target, or an attacker's CA). */
const otherRoot = await createRootCA({ trustDomain: "example.org", commonName: "other root CA" });
const otherIntermediate = await createIntermediateCA(otherRoot);

const good = await pki.identity("orders");

/** Writes a PEM into the PKI's directory and returns its path. */
async function pemFile(name: string, content: string): Promise<string> {
  const file = path.join(pki.dir, name);
  await writeFile(file, content, { mode: 0o600 });
  return file;
}

/** A leaf issued straight from the PKI, so tests can make ones the helper won't (no URI SAN at all). */
async function rawLeaf(name: string, options: LeafOptions): Promise<{ certPath: string; keyPath: string }> {
  const issued: IssuedCert = await issueLeaf(pki.intermediate, options);
  return {
    certPath: await pemFile(`${name}.crt`, issued.chainPem),
    keyPath: await pemFile(`${name}.key`, issued.keyPem),
  };
}

function load(
  files: { certPath: string; keyPath: string },
  bundlePath = pki.bundlePath,
  trustDomain = pki.trustDomain,
): Promise<Credentials> {
  return loadCredentials(
    { cert: files.certPath, key: files.keyPath, trustBundle: bundlePath },
    { trustDomain },
  );
}

/** Asserts the refusal's code, and that its message names the config field and the file it is about. */
async function refused(
  t: TestContext,
  promise: Promise<unknown>,
  code: string,
  mentions: { field: string; file: string; reason: RegExp },
): Promise<void> {
  const error = await promise.then(
    () => undefined,
    (error: unknown) => error,
  );
  t.type(error, MtlsdError, "refused with an MtlsdError");
  const { message } = error as MtlsdError;
  t.equal((error as MtlsdError).code, code, message);
  t.ok(message.includes(mentions.field), `names the field ${mentions.field}: ${message}`);
  t.ok(message.includes(mentions.file), `names the file ${mentions.file}: ${message}`);
  t.match(message, mentions.reason, "says why");
}

t.test("a valid SVID with its key and bundle loads, and describes itself without the key", async (t) => {
  const creds = await load(good);
  t.equal(creds.spiffeId, good.spiffeId);
  t.equal(creds.trustDomain, "example.org");
  t.equal(creds.leaf.serialHex, good.issued.serialHex.toLowerCase());
  t.equal(creds.leaf.notAfter.getTime(), good.issued.cert.notAfter.getTime());
  t.equal(creds.trustBundle.length, 1);
  t.match(creds.trustBundle[0]!.sha256, /^[0-9a-f]{64}$/);
  t.match(creds.bundleSha256, /^[0-9a-f]{64}$/);
  t.ok(creds.keyPem.includes("PRIVATE KEY"), "the key is there for the TLS context");
  t.notOk(JSON.stringify(creds).includes("PRIVATE KEY"), "but never in a JSON dump or a log line");
  t.ok(Object.isFrozen(creds), "a loaded version cannot be changed afterwards");
});

t.test("a bundle with two roots trusts a leaf under either of them", async (t) => {
  const bundlePath = await pemFile("two-roots.pem", pki.root.certPem + otherRoot.certPem);
  const underB = await pki.identity("rotated", {}, otherIntermediate);
  const creds = await load(underB, bundlePath);
  t.equal(creds.spiffeId, underB.spiffeId);
  t.equal(creds.trustBundle.length, 2);
  t.not(creds.trustBundle[0]!.sha256, creds.trustBundle[1]!.sha256);
  t.not(creds.bundleSha256, (await load(good)).bundleSha256, "the bundle fingerprint covers every root");
  t.equal((await load(good, bundlePath)).spiffeId, good.spiffeId, "a leaf under the first root still loads");
});

t.test("a key that belongs to another certificate is refused as a mismatch", async (t) => {
  const other = await pki.identity("payments");
  await refused(t, load({ certPath: good.certPath, keyPath: other.keyPath }), "CERT_KEY_MISMATCH", {
    field: "identity.key",
    file: other.keyPath,
    reason: /does not belong to the certificate/,
  });
});

t.test("an expired certificate is refused with the time it expired", async (t) => {
  const notAfter = new Date(Date.now() - HOUR_MS);
  const expired = await pki.identity("expired", { notBefore: new Date(Date.now() - 2 * HOUR_MS), notAfter });
  await refused(t, load(expired), "CERT_EXPIRED", {
    field: "identity.cert",
    file: expired.certPath,
    reason: new RegExp(`expired at ${notAfter.toISOString().slice(0, 19)}.*clock says .*renewed certificate`),
  });
});

t.test("a certificate that is not yet valid is refused with a hint about the clock", async (t) => {
  const future = await pki.identity("future", { notBefore: new Date(Date.now() + HOUR_MS) });
  await refused(t, load(future), "CERT_NOT_YET_VALID", {
    field: "identity.cert",
    file: future.certPath,
    reason: /not valid until .*clock/,
  });
});

t.test("a leaf with two URI SANs is not an X509-SVID", async (t) => {
  const twoUris = await pki.identity("two-uris", { extraUris: ["spiffe://example.org/ns/x/sa/y"] });
  await refused(t, load(twoUris), "SVID_INVALID", {
    field: "identity.cert",
    file: twoUris.certPath,
    reason: /has 2 URI SANs; an X509-SVID has exactly one/,
  });
});

t.test("a leaf marked CA:TRUE is not an X509-SVID", async (t) => {
  const ca = await pki.identity("is-ca", { isCA: true });
  await refused(t, load(ca), "SVID_INVALID", {
    field: "identity.cert",
    file: ca.certPath,
    reason: /CA:TRUE/,
  });
});

t.test("a leaf without a URI SAN is not an X509-SVID", async (t) => {
  const noUri = await rawLeaf("no-uri", { dnsNames: ["orders.internal"] });
  await refused(t, load(noUri), "SVID_INVALID", {
    field: "identity.cert",
    file: noUri.certPath,
    reason: /has 0 URI SANs/,
  });
});

t.test("a leaf whose URI SAN is not a SPIFFE ID is not an X509-SVID", async (t) => {
  const https = await pki.identity("https-uri", { spiffeId: "https://example.org/ns/orders" });
  await refused(t, load(https), "SVID_INVALID", {
    field: "identity.cert",
    file: https.certPath,
    reason: /URI SAN "https:\/\/example.org\/ns\/orders" is not a SPIFFE ID/,
  });
});

t.test("a leaf whose SPIFFE ID names only the trust domain is not an X509-SVID", async (t) => {
  const bare = await pki.identity("bare", { spiffeId: "spiffe://example.org" });
  await refused(t, load(bare), "SVID_INVALID", {
    field: "identity.cert",
    file: bare.certPath,
    reason: /spiffe:\/\/example.org has no path/,
  });
});

t.test("a leaf from another trust domain than identity.trustDomain is refused", async (t) => {
  const foreign = await pki.identity("foreign", { spiffeId: "spiffe://other.org/ns/orders/sa/orders" });
  await refused(t, load(foreign), "WRONG_TRUST_DOMAIN", {
    field: "identity.cert",
    file: foreign.certPath,
    reason: /trust domain other\.org, expected example\.org/,
  });
});

t.test("a leaf from a CA outside the bundle does not verify", async (t) => {
  const stranger = await pki.identity("stranger", {}, otherIntermediate);
  await refused(t, load(stranger), "CHAIN_UNTRUSTED", {
    field: "identity.trustBundle",
    file: pki.bundlePath,
    reason: new RegExp(`identity.cert \\(${stranger.certPath.replaceAll(".", "\\.")}\\) does not verify`),
  });
});

t.test("a chain that lacks its intermediate does not verify", async (t) => {
  const leafOnly = await pemFile("leaf-only.crt", good.issued.certPem);
  await refused(t, load({ certPath: leafOnly, keyPath: good.keyPath }), "CHAIN_UNTRUSTED", {
    field: "identity.cert",
    file: leafOnly,
    reason: /does not verify against identity\.trustBundle.*holds only the leaf: .*append the intermediate/,
  });
});

t.test("a bundle holding a certificate that is not a CA is refused", async (t) => {
  const bundlePath = await pemFile("leaf-in-bundle.pem", pki.root.certPem + good.issued.certPem);
  await refused(t, load(good, bundlePath), "BUNDLE_INVALID", {
    field: "identity.trustBundle",
    file: bundlePath,
    reason: /certificate 2 \(.*CN=orders.*\) is not a CA certificate/,
  });
});

t.test("a missing file is refused naming the field that points at it", async (t) => {
  const missing = path.join(pki.dir, "nowhere", "tls.key");
  await refused(t, load({ certPath: good.certPath, keyPath: missing }), "CREDENTIAL_UNREADABLE", {
    field: "identity.key",
    file: missing,
    reason: /no such file/,
  });
});

t.test("a certificate file without PEM certificates is refused as unparseable", async (t) => {
  const garbage = await pemFile("garbage.crt", "this is not a certificate\n");
  await refused(t, load({ certPath: garbage, keyPath: good.keyPath }), "CERT_PARSE", {
    field: "identity.cert",
    file: garbage,
    reason: /no PEM "BEGIN CERTIFICATE" block/,
  });
});

t.test("a PEM block with broken contents is refused as unparseable", async (t) => {
  const broken = await pemFile(
    "broken.crt",
    "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
  );
  await refused(t, load({ certPath: broken, keyPath: good.keyPath }), "CERT_PARSE", {
    field: "identity.cert",
    file: broken,
    reason: /certificate 1 does not parse/,
  });
});

t.test("an encrypted private key is refused, since nobody could type its passphrase", async (t) => {
  const encrypted = createPrivateKey(good.keyPem).export({
    type: "pkcs8",
    format: "pem",
    cipher: "aes-256-cbc",
    passphrase: "secret",
  }) as string;
  const keyPath = await pemFile("encrypted.key", encrypted);
  await refused(t, load({ certPath: good.certPath, keyPath }), "KEY_PARSE", {
    field: "identity.key",
    file: keyPath,
    reason: /encrypted private keys are not supported; write it out decrypted/,
  });
});

t.test("a key file that is no key at all is refused as unparseable", async (t) => {
  const keyPath = await pemFile("not-a.key", good.issued.certPem);
  await refused(t, load({ certPath: good.certPath, keyPath }), "KEY_PARSE", {
    field: "identity.key",
    file: keyPath,
    reason: /not a PEM private key/,
  });
});

t.test("an EC key in SEC1 form loads", async (t) => {
  const sec1 = createPrivateKey(good.keyPem).export({ type: "sec1", format: "pem" }) as string;
  t.match(sec1, /BEGIN EC PRIVATE KEY/);
  const keyPath = await pemFile("orders-sec1.key", sec1);
  t.equal((await load({ certPath: good.certPath, keyPath })).spiffeId, good.spiffeId);
});

t.test("an RSA key in PKCS#1 form loads", async (t) => {
  const rsa: IdentityFiles = await pki.identity("rsa", { keyAlgorithm: "rsa-2048" });
  const pkcs1 = createPrivateKey(rsa.keyPem).export({ type: "pkcs1", format: "pem" }) as string;
  t.match(pkcs1, /BEGIN RSA PRIVATE KEY/);
  const keyPath = await pemFile("rsa-pkcs1.key", pkcs1);
  t.equal((await load({ certPath: rsa.certPath, keyPath })).spiffeId, rsa.spiffeId);
});
