// identity.crl: a CRL file is read and checked (issuer trusted, signature, freshness) before it is handed on.
import { writeFile } from "node:fs/promises";
import path from "node:path";
import t from "tap";
import { parseConfig } from "../src/config/index.ts";
import { type Credentials, loadCredentials } from "../src/credentials/index.ts";
import { MtlsdError } from "../src/errors.ts";
import { type CryptoKeyPair, createIntermediateCA, createRootCA } from "../src/pki/index.ts";
import { x509 } from "../src/x509.ts";
import { createTestPki } from "./helpers/pki.ts";
import { issueCrl } from "./helpers/rotation.ts";

const HOUR_MS = 3600_000;

const pki = await createTestPki("example.org");
t.teardown(() => pki.cleanup());
const orders = await pki.identity("orders");
const otherRoot = await createRootCA({ trustDomain: "example.org", commonName: "other root CA" });

async function crlFile(name: string, content: string): Promise<string> {
  const file = path.join(pki.dir, name);
  await writeFile(file, content);
  return file;
}

function load(crl: string | undefined, bundlePath = pki.bundlePath): Promise<Credentials> {
  return loadCredentials(
    { cert: orders.certPath, key: orders.keyPath, trustBundle: bundlePath, crl },
    { trustDomain: "example.org" },
  );
}

async function refusal(promise: Promise<unknown>): Promise<MtlsdError> {
  const error = await promise.then(
    () => new Error("loaded, but should have been refused"),
    (error: unknown) => error,
  );
  if (!(error instanceof MtlsdError)) throw error;
  return error;
}

t.test("a CRL signed by the bundle's root loads and travels with the credentials", async (t) => {
  const pem = await issueCrl(pki.root, { revokedSerials: ["0a0b0c", "0d0e0f"] });
  const credentials = await load(await crlFile("root.crl", pem));
  t.equal(credentials.crlPem, pem, "the file as read, for the TLS contexts");
  t.same(credentials.crlBlocks, [pem.trim()], "one string per CRL, as Node's crl option wants them");
  t.equal(credentials.crl?.length, 1);
  t.equal(credentials.crl?.[0]?.issuer, pki.root.cert.subject);
  t.equal(credentials.crl?.[0]?.revoked, 2);
  t.ok(credentials.crl?.[0]?.nextUpdate instanceof Date);
});

t.test("a file holding the root's and the intermediate's CRLs yields both", async (t) => {
  const root = await issueCrl(pki.root);
  const intermediate = await issueCrl(pki.intermediate, { revokedSerials: ["01"] });
  const credentials = await load(await crlFile("both.crl", root + intermediate));
  t.equal(credentials.crlBlocks?.length, 2);
  t.same(
    credentials.crl?.map((crl) => crl.issuer),
    [pki.root.cert.subject, pki.intermediate.cert.subject],
  );
});

t.test("without identity.crl the credentials carry no CRL", async (t) => {
  const credentials = await load(undefined);
  t.equal(credentials.crlPem, undefined);
  t.equal(credentials.crl, undefined);
});

t.test("a CRL from a CA we do not trust is refused", async (t) => {
  const file = await crlFile("stranger.crl", await issueCrl(otherRoot));
  const error = await refusal(load(file));
  t.equal(error.code, "CRL_UNTRUSTED");
  t.match(error.message, `identity.crl (${file})`);
  t.match(error.message, /issuer CN=other root CA\) was not issued by a CA in identity.trustBundle/);
});

t.test("a CRL that names our root but is signed by another key is refused as forged", async (t) => {
  const file = await crlFile("forged.crl", await issueCrl(pki.root, { signer: otherRoot }));
  const error = await refusal(load(file));
  t.equal(error.code, "CRL_UNTRUSTED");
  t.match(error.message, /signature does not verify with that CA's key/);
});

t.test("a CRL past its nextUpdate is refused, since it would refuse every peer once enforced", async (t) => {
  const nextUpdate = new Date(Date.now() - HOUR_MS);
  const stale = await issueCrl(pki.root, { thisUpdate: new Date(Date.now() - 2 * HOUR_MS), nextUpdate });
  const error = await refusal(load(await crlFile("stale.crl", stale)));
  t.equal(error.code, "CRL_EXPIRED");
  t.match(error.message, `expired at ${nextUpdate.toISOString().slice(0, 19)}`);
  t.match(error.message, /publish a fresh one/);
});

t.test("a CRL issued in the future is refused with a hint about the clock", async (t) => {
  const future = await issueCrl(pki.root, { thisUpdate: new Date(Date.now() + HOUR_MS) });
  const error = await refusal(load(await crlFile("future.crl", future)));
  t.equal(error.code, "CRL_NOT_YET_VALID");
  t.match(error.message, /check this host's clock/);
});

t.test("a CRL from a CA whose key usage lacks cRLSign is refused", async (t) => {
  const keys = (await crypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, true, [
    "sign",
    "verify",
  ])) as CryptoKeyPair;
  const noCrlSign = await x509.X509CertificateGenerator.createSelfSigned({
    name: "CN=certs only root",
    keys,
    notBefore: new Date(Date.now() - HOUR_MS),
    notAfter: new Date(Date.now() + HOUR_MS),
    signingAlgorithm: { name: "ECDSA", hash: "SHA-256" },
    extensions: [
      new x509.BasicConstraintsExtension(true, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign, true),
    ],
  });
  const rootPem = noCrlSign.toString("pem");
  const bundle = await crlFile("with-certs-only-root.pem", pki.root.certPem + rootPem);
  const crl = await issueCrl({ ...pki.root, cert: noCrlSign, keys, certPem: rootPem });
  const error = await refusal(load(await crlFile("no-crlsign.crl", crl), bundle));
  t.equal(error.code, "CRL_UNTRUSTED");
  t.match(error.message, /key usage lacks cRLSign/);
});

t.test("a CRL file without an X509 CRL block is refused as unparseable", async (t) => {
  const error = await refusal(load(await crlFile("garbage.crl", "not a crl\n")));
  t.equal(error.code, "CRL_PARSE");
  t.match(error.message, /no PEM "BEGIN X509 CRL" block found$/);
});

t.test('a CRL labelled "BEGIN CRL" is refused with how to relabel it', async (t) => {
  const pem = (await issueCrl(pki.root)).replaceAll("X509 CRL", "CRL");
  const error = await refusal(load(await crlFile("relabel.crl", pem)));
  t.equal(error.code, "CRL_PARSE");
  t.match(error.message, /relabel them "X509 CRL"/);
});

t.test("a CRL whose contents are broken is refused as unparseable", async (t) => {
  const broken = "-----BEGIN X509 CRL-----\nbm90IGEgY3Js\n-----END X509 CRL-----\n";
  const error = await refusal(load(await crlFile("broken.crl", broken)));
  t.equal(error.code, "CRL_PARSE");
  t.match(error.message, /CRL 1 does not parse/);
});

t.test("a CRL issued by the intermediate in our chain is accepted, as OpenSSL would", async (t) => {
  const intermediate = await createIntermediateCA(pki.root, { commonName: "second intermediate" });
  const leaf = await pki.identity("via-second", {}, intermediate);
  const file = await crlFile("second.crl", await issueCrl(intermediate));
  const credentials = await loadCredentials(
    { cert: leaf.certPath, key: leaf.keyPath, trustBundle: pki.bundlePath, crl: file },
    { trustDomain: "example.org" },
  );
  t.equal(credentials.crl?.[0]?.issuer, intermediate.cert.subject);
});

t.test("identity.crl resolves against the config file's directory, like the other files", async (t) => {
  const { config } = parseConfig(
    [
      "identity:",
      "  cert: tls.crt",
      "  key: tls.key",
      "  trustBundle: ca.crt",
      "  crl: revoked/crl.pem",
      "  trustDomain: example.org",
      "outbound:",
      "  upstreams:",
      "    orders: { address: 127.0.0.1:1, identity: spiffe://example.org/ns/orders/sa/orders }",
    ].join("\n"),
    "/etc/mtlsd/mtlsd.yaml",
  );
  t.equal(config.identity.crl, "/etc/mtlsd/revoked/crl.pem");
});
