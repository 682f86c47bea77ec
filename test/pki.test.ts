// Checks the dev PKI against the tools that will judge its output: OpenSSL, Node's crypto and a real TLS handshake.

import { execFile } from "node:child_process";
import { createPrivateKey, X509Certificate as NodeX509Certificate } from "node:crypto";
import { once } from "node:events";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as tls from "node:tls";
import { promisify } from "node:util";
import t from "tap";
import { MtlsdError } from "../src/errors.ts";
import {
  createIntermediateCA,
  createRootCA,
  type Issuer,
  issueLeaf,
  loadIssuer,
  pemEncodeKey,
  pkiDefaults,
} from "../src/pki/index.ts";
import { x509 } from "../src/x509.ts";

const execFileAsync = promisify(execFile);
const TRUST_DOMAIN = "example.org";
const FRONTEND = "spiffe://example.org/ns/shop/sa/frontend";
const ORDERS = "spiffe://example.org/ns/shop/sa/orders";
const HOUR_MS = 60 * 60 * 1000;

/** The subtest handed to a `t.test` callback (the last overload of `t.test` takes only the callback). */
type TestContext = Parameters<Parameters<typeof t.test>[0]>[0];

const root = await createRootCA({ trustDomain: TRUST_DOMAIN });
const intermediate = await createIntermediateCA(root);
const leaf = await issueLeaf(intermediate, { spiffeId: FRONTEND, organization: "acme" });

/** A fresh temp dir, removed after the test. */
async function tempDir(tt: TestContext): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "mtlsd-pki-"));
  tt.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** Writes PEMs into a fresh temp dir and returns their paths by name. */
async function tempFiles(tt: TestContext, files: Record<string, string>): Promise<Record<string, string>> {
  const dir = await tempDir(tt);
  const paths: Record<string, string> = {};
  for (const [name, content] of Object.entries(files)) {
    paths[name] = join(dir, name);
    await writeFile(join(dir, name), content);
  }
  return paths;
}

/** Runs openssl and reports success plus everything it printed, since verify errors land on either stream. */
async function openssl(args: string[]): Promise<{ ok: boolean; output: string }> {
  try {
    const { stdout, stderr } = await execFileAsync("openssl", args, { timeout: 10_000 });
    return { ok: true, output: stdout + stderr };
  } catch (error) {
    const { stdout = "", stderr = "" } = error as { stdout?: string; stderr?: string };
    return { ok: false, output: stdout + stderr };
  }
}

async function opensslText(tt: TestContext, certPem: string): Promise<string> {
  const { cert } = await tempFiles(tt, { cert: certPem });
  const { ok, output } = await openssl(["x509", "-noout", "-text", "-in", cert!]);
  tt.ok(ok, "openssl parses the certificate");
  return output;
}

/** `openssl verify` of a leaf against a root, with the issuer's chain as untrusted intermediates. */
async function opensslVerify(
  tt: TestContext,
  issuer: Issuer,
  certPem: string,
  extraArgs: string[] = [],
  rootPem = root.certPem,
): Promise<{ ok: boolean; output: string }> {
  const files = await tempFiles(tt, {
    "root.pem": rootPem,
    "chain.pem": issuer.chainPem,
    "leaf.pem": certPem,
  });
  const untrusted = issuer.chainPem === "" ? [] : ["-untrusted", files["chain.pem"]!];
  return openssl(["verify", ...extraArgs, "-CAfile", files["root.pem"]!, ...untrusted, files["leaf.pem"]!]);
}

/** URI SANs read from the ASN.1, the way mtlsd must read them (never from Node's subjectaltname string). */
function uriSans(cert: NodeX509Certificate | x509.X509Certificate): string[] {
  const parsed = cert instanceof NodeX509Certificate ? new x509.X509Certificate(cert.raw) : cert;
  const san = parsed.getExtension(x509.SubjectAlternativeNameExtension);
  return (san?.names.items ?? []).filter((name) => name.type === "url").map((name) => name.value);
}

async function rejectsWithCode(tt: TestContext, promise: Promise<unknown>, code: string): Promise<void> {
  const error = await promise.then(
    () => undefined,
    (reason: unknown) => reason,
  );
  tt.ok(error instanceof MtlsdError, "rejects with an MtlsdError");
  tt.equal((error as MtlsdError | undefined)?.code, code);
}

t.test(
  "a leaf from an intermediate verifies against the root with openssl in X.509 strict mode",
  async (t) => {
    const { ok, output } = await opensslVerify(t, intermediate, leaf.certPem, ["-x509_strict"]);
    t.ok(ok, output);
  },
);

t.test("openssl accepts a default leaf for both the TLS server and the TLS client purpose", async (t) => {
  for (const purpose of ["sslserver", "sslclient"]) {
    const { ok, output } = await opensslVerify(t, intermediate, leaf.certPem, ["-purpose", purpose]);
    t.ok(ok, `${purpose}: ${output}`);
  }
});

t.test("openssl shows the SPIFFE ID as the only URI SAN of a default leaf", async (t) => {
  const text = await opensslText(t, leaf.certPem);
  t.match(
    text,
    /X509v3 Subject Alternative Name: \n\s+URI:spiffe:\/\/example\.org\/ns\/shop\/sa\/frontend\n/,
  );
  t.same(uriSans(leaf.cert), [FRONTEND]);
});

t.test("openssl shows a default leaf as critical CA:FALSE", async (t) => {
  t.match(await opensslText(t, leaf.certPem), /X509v3 Basic Constraints: critical\n\s+CA:FALSE\n/);
});

t.test("openssl shows a default EC leaf's key usage as critical digitalSignature only", async (t) => {
  t.match(await opensslText(t, leaf.certPem), /X509v3 Key Usage: critical\n\s+Digital Signature\n/);
});

t.test(
  "openssl shows a default leaf with both the serverAuth and clientAuth extended key usages",
  async (t) => {
    t.match(
      await opensslText(t, leaf.certPem),
      /X509v3 Extended Key Usage: \n\s+TLS Web Server Authentication, TLS Web Client Authentication\n/,
    );
  },
);

t.test("a leaf's authority key identifier is its issuer's subject key identifier", async (t) => {
  const aki = leaf.cert.getExtension(x509.AuthorityKeyIdentifierExtension);
  const issuerSki = intermediate.cert.getExtension(x509.SubjectKeyIdentifierExtension);
  t.ok(leaf.cert.getExtension(x509.SubjectKeyIdentifierExtension), "the leaf has a subject key identifier");
  t.ok(issuerSki?.keyId);
  t.equal(aki?.keyId, issuerSki?.keyId);
});

t.test(
  "a leaf's subject is O then CN, with CN defaulting to the SPIFFE ID's last path segment",
  async (t) => {
    t.equal(new NodeX509Certificate(leaf.certPem).subject, "O=acme\nCN=frontend");
    t.equal(leaf.cert.subject, "O=acme, CN=frontend");
  },
);

t.test(
  "the root is a critical CA:TRUE without a path length, with critical certificate and CRL signing",
  async (t) => {
    const text = await opensslText(t, root.certPem);
    t.match(text, /X509v3 Basic Constraints: critical\n\s+CA:TRUE\n/);
    t.match(text, /X509v3 Key Usage: critical\n\s+Digital Signature, Certificate Sign, CRL Sign\n/);
    t.match(text, /X509v3 Subject Key Identifier:/);
    t.notMatch(text, /Authority Key Identifier/);
  },
);

t.test("the root and the intermediate carry the trust domain's SPIFFE ID as their URI SAN", async (t) => {
  t.same(uriSans(root.cert), ["spiffe://example.org"]);
  t.same(uriSans(intermediate.cert), ["spiffe://example.org"]);
  t.equal(root.trustDomain, TRUST_DOMAIN);
  t.equal(intermediate.trustDomain, TRUST_DOMAIN);
});

t.test("an intermediate defaults to path length 0 and names the root's key as its authority", async (t) => {
  const text = await opensslText(t, intermediate.certPem);
  t.match(text, /X509v3 Basic Constraints: critical\n\s+CA:TRUE, pathlen:0\n/);
  t.match(text, /X509v3 Key Usage: critical\n\s+Digital Signature, Certificate Sign, CRL Sign\n/);
  t.equal(
    intermediate.cert.getExtension(x509.AuthorityKeyIdentifierExtension)?.keyId,
    root.cert.getExtension(x509.SubjectKeyIdentifierExtension)?.keyId,
  );
});

t.test("an intermediate with path length 1 can sign a second intermediate whose leaves verify", async (t) => {
  const outer = await createIntermediateCA(root, { pathLength: 1 });
  const inner = await createIntermediateCA(outer);
  const deepLeaf = await issueLeaf(inner, { spiffeId: ORDERS });
  t.equal(inner.chainPem, inner.certPem + outer.certPem);
  t.equal(deepLeaf.chainPem, deepLeaf.certPem + inner.certPem + outer.certPem);
  const { ok, output } = await opensslVerify(t, inner, deepLeaf.certPem, ["-x509_strict"]);
  t.ok(ok, output);
});

t.test("a second intermediate under a path length 0 intermediate fails openssl verification", async (t) => {
  const inner = await createIntermediateCA(intermediate);
  const deepLeaf = await issueLeaf(inner, { spiffeId: ORDERS });
  const { ok, output } = await opensslVerify(t, inner, deepLeaf.certPem);
  t.notOk(ok);
  t.match(output, /path length constraint exceeded/);
});

t.test("Node's signature check and checkIssued agree on who issued the leaf", async (t) => {
  const nodeLeaf = new NodeX509Certificate(leaf.certPem);
  const nodeIntermediate = new NodeX509Certificate(intermediate.certPem);
  const nodeRoot = new NodeX509Certificate(root.certPem);
  t.ok(nodeLeaf.verify(nodeIntermediate.publicKey), "signed by the intermediate");
  t.ok(nodeLeaf.checkIssued(nodeIntermediate), "issued by the intermediate");
  t.notOk(nodeLeaf.verify(nodeRoot.publicKey), "not signed by the root");
  t.notOk(nodeLeaf.checkIssued(nodeRoot), "not issued by the root");
  t.ok(nodeIntermediate.verify(nodeRoot.publicKey) && nodeIntermediate.checkIssued(nodeRoot));
});

t.test("a leaf's private key matches its certificate and no other", async (t) => {
  const other = await issueLeaf(intermediate, { spiffeId: ORDERS });
  const nodeLeaf = new NodeX509Certificate(leaf.certPem);
  t.ok(nodeLeaf.checkPrivateKey(createPrivateKey(leaf.keyPem)));
  t.notOk(nodeLeaf.checkPrivateKey(createPrivateKey(other.keyPem)));
});

t.test("certificate and key PEMs are standard 64-column blocks ending in a newline", async (t) => {
  for (const [pem, label] of [
    [leaf.certPem, "CERTIFICATE"],
    [leaf.keyPem, "PRIVATE KEY"],
  ] as const) {
    const lines = pem.split("\n");
    t.equal(lines[0], `-----BEGIN ${label}-----`);
    t.equal(lines.at(-2), `-----END ${label}-----`);
    t.equal(lines.at(-1), "", "ends with a newline");
    t.ok(
      lines.slice(1, -2).every((line) => line.length > 0 && line.length <= 64),
      "base64 lines are at most 64 columns",
    );
    t.ok(
      lines.slice(1, -3).every((line) => line.length === 64),
      "every base64 line but the last is full",
    );
  }
});

t.test("Node reads the key and chain PEMs into a TLS secure context", async (t) => {
  t.equal(createPrivateKey(leaf.keyPem).asymmetricKeyType, "ec");
  t.equal(new NodeX509Certificate(leaf.certPem).serialNumber.toLowerCase(), leaf.serialHex);
  t.doesNotThrow(() => tls.createSecureContext({ cert: leaf.chainPem, key: leaf.keyPem, ca: root.certPem }));
});

t.test("pemEncodeKey writes the same PKCS#8 PEM the issued cert carries", async (t) => {
  t.equal(await pemEncodeKey(leaf.keys), leaf.keyPem);
});

t.test("a chain is the leaf followed by the intermediates, never the root", async (t) => {
  t.equal(root.chainPem, "");
  t.equal(intermediate.chainPem, intermediate.certPem);
  t.equal(leaf.chainPem, leaf.certPem + intermediate.certPem);
  const direct = await issueLeaf(root, { spiffeId: ORDERS });
  t.equal(direct.chainPem, direct.certPem);
});

t.test("a leaf's validity starts a minute in the past and lasts an hour from there by default", async (t) => {
  const before = Date.now();
  const fresh = await issueLeaf(intermediate, { spiffeId: ORDERS });
  const notBefore = fresh.cert.notBefore.getTime();
  // X.509 times have whole seconds, so allow the truncation.
  t.ok(
    notBefore >= before - pkiDefaults.clockSkewMs - 1000 && notBefore <= Date.now() - pkiDefaults.clockSkewMs,
  );
  t.equal(fresh.cert.notAfter.getTime() - notBefore, HOUR_MS);
});

t.test("random serials are unique, positive and 16 bytes long", async (t) => {
  const issued = await Promise.all(
    Array.from({ length: 20 }, () => issueLeaf(intermediate, { spiffeId: ORDERS })),
  );
  const serials = issued.map((cert) => cert.serialHex);
  t.equal(new Set(serials).size, serials.length, "all distinct");
  for (const serial of serials) {
    t.match(serial, /^[0-7][0-9a-f]{31}$/, "16 bytes with the top bit clear");
  }
});

t.test("openssl reads the serial number the PKI reports", async (t) => {
  const { cert } = await tempFiles(t, { cert: leaf.certPem });
  const { output } = await openssl(["x509", "-noout", "-serial", "-in", cert!]);
  t.equal(output.trim(), `serial=${leaf.serialHex.toUpperCase()}`);
});

t.test("a caller-chosen serial is used as given", async (t) => {
  const chosen = await issueLeaf(intermediate, { spiffeId: ORDERS, serialHex: "0A1B2C" });
  t.equal(chosen.serialHex, "0a1b2c");
  t.equal(new NodeX509Certificate(chosen.certPem).serialNumber.toUpperCase(), "0A1B2C");
});

t.test(
  "a server and a client complete a mutual TLS handshake and each sees the other's SPIFFE ID",
  async (t) => {
    const serverCert = await issueLeaf(intermediate, { spiffeId: ORDERS, dnsNames: ["localhost"] });
    const clientCert = await issueLeaf(intermediate, { spiffeId: FRONTEND });
    const serverSockets: tls.TLSSocket[] = [];
    const server = tls.createServer({
      cert: serverCert.chainPem,
      key: serverCert.keyPem,
      ca: root.certPem,
      requestCert: true,
      rejectUnauthorized: true,
    });
    const signal = AbortSignal.timeout(5000);
    const serverSaw = once(server, "secureConnection", { signal }).then(([socket]: tls.TLSSocket[]) => {
      serverSockets.push(socket!);
      socket!.end("hello");
      return uriSans(socket!.getPeerX509Certificate()!);
    });
    server.listen(0, "127.0.0.1");
    await once(server, "listening", { signal });
    const client = tls.connect({
      host: "127.0.0.1",
      port: (server.address() as AddressInfo).port,
      servername: "localhost",
      ca: root.certPem,
      cert: clientCert.chainPem,
      key: clientCert.keyPem,
      rejectUnauthorized: true,
    });
    t.teardown(async () => {
      client.destroy();
      for (const socket of serverSockets) socket.destroy();
      await new Promise((resolve) => server.close(resolve));
    });
    await once(client, "secureConnect", { signal });
    t.same(uriSans(client.getPeerX509Certificate()!), [ORDERS], "the client sees the server's SPIFFE ID");
    t.same(await serverSaw, [FRONTEND], "the server sees the client's SPIFFE ID");
    const [data] = await once(client, "data", { signal });
    t.equal(String(data), "hello", "application data flows after both sides verified");
  },
);

t.test("extraUris gives a leaf two URI SANs", async (t) => {
  const twoUris = await issueLeaf(intermediate, { spiffeId: FRONTEND, extraUris: [ORDERS] });
  t.match(await opensslText(t, twoUris.certPem), `URI:${FRONTEND}, URI:${ORDERS}`);
  t.same(uriSans(twoUris.cert), [FRONTEND, ORDERS]);
});

t.test("isCA makes a leaf with critical CA:TRUE basic constraints", async (t) => {
  const caLeaf = await issueLeaf(intermediate, { spiffeId: FRONTEND, isCA: true });
  t.match(await opensslText(t, caLeaf.certPem), /X509v3 Basic Constraints: critical\n\s+CA:TRUE\n/);
  t.equal(caLeaf.cert.getExtension(x509.BasicConstraintsExtension)?.ca, true);
});

// A warning for SVID checks: OpenSSL's X509_check_ca, behind Node's `ca`, also wants keyCertSign when key usage is present.
t.test("Node's ca flag sees a CA:TRUE leaf only when it also has keyCertSign", async (t) => {
  const withoutCertSign = await issueLeaf(intermediate, { spiffeId: FRONTEND, isCA: true });
  const withCertSign = await issueLeaf(intermediate, {
    spiffeId: FRONTEND,
    isCA: true,
    keyUsage: ["digitalSignature", "keyCertSign"],
  });
  t.equal(new NodeX509Certificate(withoutCertSign.certPem).ca, false);
  t.equal(new NodeX509Certificate(withCertSign.certPem).ca, true);
});

t.test("extKeyUsage null leaves the extended key usage extension out", async (t) => {
  const noEku = await issueLeaf(intermediate, { spiffeId: FRONTEND, extKeyUsage: null });
  t.notMatch(await opensslText(t, noEku.certPem), /Extended Key Usage/);
});

t.test("a serverAuth-only leaf is refused by openssl for the TLS client purpose", async (t) => {
  const serverOnly = await issueLeaf(intermediate, { spiffeId: FRONTEND, extKeyUsage: ["serverAuth"] });
  t.ok((await opensslVerify(t, intermediate, serverOnly.certPem, ["-purpose", "sslserver"])).ok);
  const { ok, output } = await opensslVerify(t, intermediate, serverOnly.certPem, ["-purpose", "sslclient"]);
  t.notOk(ok);
  t.match(output, /unsuitable certificate purpose/);
});

t.test("keyUsage can give a leaf certificate signing, which an SVID must not have", async (t) => {
  const signing = await issueLeaf(intermediate, {
    spiffeId: FRONTEND,
    keyUsage: ["digitalSignature", "keyCertSign"],
  });
  t.match(
    await opensslText(t, signing.certPem),
    /X509v3 Key Usage: critical\n\s+Digital Signature, Certificate Sign\n/,
  );
});

t.test("a leaf whose notAfter has passed is refused by openssl as expired", async (t) => {
  const expired = await issueLeaf(intermediate, {
    spiffeId: FRONTEND,
    notBefore: new Date(Date.now() - 2 * HOUR_MS),
    notAfter: new Date(Date.now() - HOUR_MS),
  });
  t.ok(new Date(new NodeX509Certificate(expired.certPem).validTo).getTime() < Date.now());
  const { ok, output } = await opensslVerify(t, intermediate, expired.certPem);
  t.notOk(ok);
  t.match(output, /certificate has expired/);
});

t.test("a leaf whose notBefore is in the future is refused by openssl as not yet valid", async (t) => {
  const future = await issueLeaf(intermediate, {
    spiffeId: FRONTEND,
    notBefore: new Date(Date.now() + HOUR_MS),
  });
  t.ok(new Date(new NodeX509Certificate(future.certPem).validFrom).getTime() > Date.now());
  const { ok, output } = await opensslVerify(t, intermediate, future.certPem);
  t.notOk(ok);
  t.match(output, /certificate is not yet valid/);
});

t.test("an rsa-2048 leaf has a 2048-bit RSA key with keyEncipherment, and still verifies", async (t) => {
  const rsa = await issueLeaf(intermediate, { spiffeId: FRONTEND, keyAlgorithm: "rsa-2048" });
  const publicKey = new NodeX509Certificate(rsa.certPem).publicKey;
  t.equal(publicKey.asymmetricKeyType, "rsa");
  t.equal(publicKey.asymmetricKeyDetails?.modulusLength, 2048);
  t.match(
    await opensslText(t, rsa.certPem),
    /X509v3 Key Usage: critical\n\s+Digital Signature, Key Encipherment\n/,
  );
  t.ok((await opensslVerify(t, intermediate, rsa.certPem)).ok);
  t.doesNotThrow(() => tls.createSecureContext({ cert: rsa.chainPem, key: rsa.keyPem }));
});

t.test("an rsa-2048 root signs with sha256WithRSAEncryption and its EC leaves verify", async (t) => {
  const rsaRoot = await createRootCA({ trustDomain: TRUST_DOMAIN, keyAlgorithm: "rsa-2048" });
  const ecLeaf = await issueLeaf(rsaRoot, { spiffeId: FRONTEND });
  t.match(await opensslText(t, ecLeaf.certPem), /Signature Algorithm: sha256WithRSAEncryption/);
  const { ok, output } = await opensslVerify(t, rsaRoot, ecLeaf.certPem, ["-x509_strict"], rsaRoot.certPem);
  t.ok(ok, output);
});

t.test("loadIssuer rebuilds an intermediate from its PEMs", async (t) => {
  const loaded = await loadIssuer(intermediate.certPem, intermediate.keyPem);
  t.equal(loaded.certPem, intermediate.certPem);
  t.equal(loaded.keyPem, intermediate.keyPem);
  t.equal(loaded.chainPem, intermediate.chainPem);
  t.equal(loaded.trustDomain, TRUST_DOMAIN);
  t.equal(loaded.cert.serialNumber, intermediate.cert.serialNumber);
});

t.test("a leaf issued by a loaded intermediate verifies against the original root", async (t) => {
  const loaded = await loadIssuer(intermediate.certPem, intermediate.keyPem);
  const issued = await issueLeaf(loaded, { spiffeId: ORDERS });
  const { ok, output } = await opensslVerify(t, loaded, issued.certPem, ["-x509_strict"]);
  t.ok(ok, output);
});

t.test("loadIssuer keeps parents from the cert file and the chain but drops the root", async (t) => {
  const outer = await createIntermediateCA(root, { pathLength: 1 });
  const inner = await createIntermediateCA(outer);
  const fromBundle = await loadIssuer(inner.certPem + outer.certPem + root.certPem, inner.keyPem);
  t.equal(fromBundle.chainPem, inner.chainPem);
  const fromChain = await loadIssuer(inner.certPem, inner.keyPem, inner.chainPem + root.certPem);
  t.equal(fromChain.chainPem, inner.chainPem);
  t.equal((await loadIssuer(root.certPem, root.keyPem)).chainPem, "");
});

t.test("loadIssuer accepts a CA made by openssl with a SEC1 key and no trust domain", async (t) => {
  const dir = await tempDir(t);
  const made = await openssl([
    "req",
    "-x509",
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:P-256",
    "-nodes",
    "-days",
    "1",
    "-subj",
    "/O=Example Ops/CN=External CA",
    "-addext",
    "basicConstraints=critical,CA:TRUE",
    "-addext",
    "keyUsage=critical,keyCertSign,cRLSign",
    "-keyout",
    join(dir, "ca.key"),
    "-out",
    join(dir, "ca.pem"),
  ]);
  t.ok(made.ok, made.output);
  const sec1 = await openssl(["ec", "-in", join(dir, "ca.key"), "-out", join(dir, "ca-sec1.key")]);
  t.ok(sec1.ok, sec1.output);
  const caPem = await readFile(join(dir, "ca.pem"), "utf8");
  const sec1Pem = await readFile(join(dir, "ca-sec1.key"), "utf8");
  t.match(sec1Pem, /BEGIN EC PRIVATE KEY/);
  const external = await loadIssuer(caPem, sec1Pem);
  t.equal(external.trustDomain, "");
  t.match(external.keyPem, /^-----BEGIN PRIVATE KEY-----\n/);
  const issued = await issueLeaf(external, { spiffeId: FRONTEND });
  const { ok, output } = await opensslVerify(t, external, issued.certPem, [], caPem);
  t.ok(ok, output);
});

t.test("loadIssuer refuses a key that belongs to another certificate", async (t) => {
  await rejectsWithCode(t, loadIssuer(intermediate.certPem, root.keyPem), "CERT_KEY_MISMATCH");
});

t.test("loadIssuer refuses a leaf, which cannot issue certificates", async (t) => {
  await rejectsWithCode(t, loadIssuer(leaf.certPem, leaf.keyPem), "PKI_NOT_A_CA");
});

t.test("loadIssuer refuses input without a certificate block", async (t) => {
  await rejectsWithCode(t, loadIssuer(root.keyPem, root.keyPem), "PKI_BAD_PEM");
});

t.test("loadIssuer refuses a key PEM that does not parse", async (t) => {
  await rejectsWithCode(
    t,
    loadIssuer(root.certPem, "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"),
    "PKI_BAD_PEM",
  );
});

t.test("createRootCA refuses a trust domain that is not a valid SPIFFE trust domain", async (t) => {
  await rejectsWithCode(t, createRootCA({ trustDomain: "Example.org" }), "PKI_INVALID_TRUST_DOMAIN");
  await rejectsWithCode(t, createRootCA({ trustDomain: "" }), "PKI_INVALID_TRUST_DOMAIN");
});

t.test("issueLeaf refuses a validity window that ends before it starts", async (t) => {
  const now = Date.now();
  await rejectsWithCode(
    t,
    issueLeaf(intermediate, { spiffeId: FRONTEND, notBefore: new Date(now), notAfter: new Date(now - 1000) }),
    "PKI_INVALID_OPTION",
  );
});

t.test("issueLeaf refuses an empty extKeyUsage list, since null is how to omit it", async (t) => {
  await rejectsWithCode(
    t,
    issueLeaf(intermediate, { spiffeId: FRONTEND, extKeyUsage: [] }),
    "PKI_INVALID_OPTION",
  );
});

t.test("createIntermediateCA refuses a negative path length", async (t) => {
  await rejectsWithCode(t, createIntermediateCA(root, { pathLength: -1 }), "PKI_INVALID_OPTION");
});

t.test("issueLeaf refuses a serial that is not whole bytes of hex", async (t) => {
  await rejectsWithCode(
    t,
    issueLeaf(intermediate, { spiffeId: FRONTEND, serialHex: "xyz" }),
    "PKI_INVALID_OPTION",
  );
  await rejectsWithCode(
    t,
    issueLeaf(intermediate, { spiffeId: FRONTEND, serialHex: "abc" }),
    "PKI_INVALID_OPTION",
  );
});

t.test("issueLeaf refuses a zero serial, which RFC 5280 forbids", async (t) => {
  await rejectsWithCode(
    t,
    issueLeaf(intermediate, { spiffeId: FRONTEND, serialHex: "0000" }),
    "PKI_INVALID_OPTION",
  );
});

t.test("issueLeaf refuses a ttl that is not a positive number", async (t) => {
  await rejectsWithCode(t, issueLeaf(intermediate, { spiffeId: FRONTEND, ttlMs: 0 }), "PKI_INVALID_OPTION");
});
