// identity.crl: a CRL file is read and checked (issuer trusted, signature, freshness, covers our chain) before use.
import { once } from "node:events";
import { writeFile } from "node:fs/promises";
import type { AddressInfo } from "node:net";
import path from "node:path";
import tls from "node:tls";
import t from "tap";
import { parseConfig } from "../src/config/index.ts";
import { type Credentials, loadCredentials } from "../src/credentials/index.ts";
import { MtlsdError } from "../src/errors.ts";
import {
  type CrlOptions,
  type CryptoKeyPair,
  createIntermediateCA,
  createRootCA,
  type Issuer,
  issueCrl,
} from "../src/pki/index.ts";
import { x509 } from "../src/x509.ts";
import { createTestPki } from "./helpers/pki.ts";

const HOUR_MS = 3600_000;

const pki = await createTestPki("example.org");
t.teardown(() => pki.cleanup());
const orders = await pki.identity("orders");
const otherRoot = await createRootCA({ trustDomain: "example.org", commonName: "other root CA" });
/** The root's CRL, revoking nothing: with CRLs enforced, the root must vouch for our intermediate. */
const rootCrl = await crl(pki.root);

/** One CRL's PEM. */
async function crl(issuer: Issuer, options: CrlOptions = {}): Promise<string> {
  return (await issueCrl(issuer, options)).crlPem;
}

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

t.test("the root's and the intermediate's CRLs load and travel with the credentials", async (t) => {
  const root = await crl(pki.root, { revokedSerials: ["0a0b0c", "0d0e0f"] });
  const intermediate = await crl(pki.intermediate, { revokedSerials: ["01"] });
  const credentials = await load(await crlFile("both.crl", root + intermediate));
  t.equal(credentials.crlPem, root + intermediate, "the file as read");
  t.same(
    credentials.crlBlocks,
    [root.trim(), intermediate.trim()],
    "one string per CRL, as Node's crl option wants them",
  );
  t.same(
    credentials.crl?.map((crl) => [crl.issuer, crl.revoked]),
    [
      [pki.root.cert.subject, 2],
      [pki.intermediate.cert.subject, 1],
    ],
  );
  t.ok(credentials.crl?.[0]?.nextUpdate instanceof Date);
});

t.test("a file without the root's CRL is refused as incomplete, naming the missing CA", async (t) => {
  const file = await crlFile("intermediate-only.crl", await crl(pki.intermediate));
  const error = await refusal(load(file));
  t.equal(error.code, "CRL_INCOMPLETE");
  t.match(error.message, `identity.crl (${file}): no CRL from CN=example.org root CA, which issued`);
  t.match(error.message, /the root's included \(an empty CRL will do\)/);
});

t.test("a file without the intermediate's CRL is refused as incomplete", async (t) => {
  const error = await refusal(load(await crlFile("root-only.crl", rootCrl)));
  t.equal(error.code, "CRL_INCOMPLETE");
  t.match(
    error.message,
    `no CRL from ${pki.intermediate.cert.subject}, which issued ${orders.issued.cert.subject}`,
  );
});

t.test(
  "a CRL that revokes our own certificate is refused, as peers loading it would refuse us",
  async (t) => {
    const revoking = await crl(pki.intermediate, { revokedSerials: [orders.issued.serialHex] });
    const file = await crlFile("revokes-us.crl", revoking + rootCrl);
    const error = await refusal(load(file));
    t.equal(error.code, "CERT_REVOKED");
    t.match(
      error.message,
      `identity.cert (${orders.certPath}) is revoked by a CRL in identity.crl (${file})`,
    );
    t.match(error.message, /install a new certificate/);
  },
);

t.test("a CRL that revokes the intermediate in our chain is refused, naming it", async (t) => {
  const revoking = await crl(pki.root, { revokedSerials: [pki.intermediate.cert.serialNumber] });
  const error = await refusal(
    load(await crlFile("revokes-intermediate.crl", (await crl(pki.intermediate)) + revoking)),
  );
  t.equal(error.code, "CERT_REVOKED");
  t.match(error.message, `the intermediate CA ${pki.intermediate.cert.subject} in it`);
});

t.test(
  "OpenSSL refuses every peer whose chain has a CA without a CRL, which is why the file must cover the chain",
  async (t) => {
    // What the contexts would do with an intermediate-only file, if loading let it through.
    const frontend = await pki.identity("frontend-openssl");
    const server = tls.createServer({
      cert: orders.chainPem,
      key: orders.keyPem,
      ca: pki.bundlePem,
      crl: [await crl(pki.intermediate)],
      requestCert: true,
      rejectUnauthorized: false,
    });
    const verdicts: (string | null)[] = [];
    server.on("secureConnection", (socket: tls.TLSSocket) => {
      verdicts.push(socket.authorizationError ? String(socket.authorizationError) : null);
      socket.end();
    });
    server.listen(0, "127.0.0.1");
    await once(server, "listening");
    t.teardown(() => server.close());
    const client = tls.connect({
      port: (server.address() as AddressInfo).port,
      host: "127.0.0.1",
      ca: pki.bundlePem,
      cert: frontend.chainPem,
      key: frontend.keyPem,
      checkServerIdentity: () => undefined,
    });
    client.on("data", () => {});
    await once(client, "close");
    t.same(verdicts, ["UNABLE_TO_GET_CRL"], "a valid, unrevoked peer is refused");
  },
);

t.test("without identity.crl the credentials carry no CRL", async (t) => {
  const credentials = await load(undefined);
  t.equal(credentials.crlPem, undefined);
  t.equal(credentials.crl, undefined);
});

t.test("a CRL from a CA we do not trust is refused", async (t) => {
  const file = await crlFile("stranger.crl", await crl(otherRoot));
  const error = await refusal(load(file));
  t.equal(error.code, "CRL_UNTRUSTED");
  t.match(error.message, `identity.crl (${file})`);
  t.match(error.message, /issuer CN=other root CA\) was not issued by a CA in identity.trustBundle/);
});

t.test("a CRL that names our root but is signed by another key is refused as forged", async (t) => {
  const file = await crlFile("forged.crl", await crl(pki.root, { signer: otherRoot }));
  const error = await refusal(load(file));
  t.equal(error.code, "CRL_UNTRUSTED");
  t.match(error.message, /signature does not verify with that CA's key/);
});

t.test("a CRL past its nextUpdate is refused, since it would refuse every peer once enforced", async (t) => {
  const nextUpdate = new Date(Date.now() - HOUR_MS);
  const stale = await crl(pki.root, { thisUpdate: new Date(Date.now() - 2 * HOUR_MS), nextUpdate });
  const error = await refusal(load(await crlFile("stale.crl", stale)));
  t.equal(error.code, "CRL_EXPIRED");
  t.match(error.message, `expired at ${nextUpdate.toISOString().slice(0, 19)}`);
  t.match(error.message, /publish a fresh one/);
});

t.test("a CRL issued in the future is refused with a hint about the clock", async (t) => {
  const future = await crl(pki.root, { thisUpdate: new Date(Date.now() + HOUR_MS) });
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
  const pem = await crl({ ...pki.root, cert: noCrlSign, keys, certPem: rootPem });
  const error = await refusal(load(await crlFile("no-crlsign.crl", pem), bundle));
  t.equal(error.code, "CRL_UNTRUSTED");
  t.match(error.message, /key usage lacks cRLSign/);
});

t.test("a CRL file without an X509 CRL block is refused as unparseable", async (t) => {
  const error = await refusal(load(await crlFile("garbage.crl", "not a crl\n")));
  t.equal(error.code, "CRL_PARSE");
  t.match(error.message, /no PEM "BEGIN X509 CRL" block found$/);
});

t.test('a CRL labelled "BEGIN CRL" is refused with how to relabel it', async (t) => {
  const pem = rootCrl.replaceAll("X509 CRL", "CRL");
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
  const file = await crlFile("second.crl", (await crl(intermediate)) + rootCrl);
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
