// `mtlsd certs inspect` on chains, roots, broken and expired leaves, openssl-made and DER files: the real CLI.
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import t from "tap";
import { initPkiDirectory, issueIdentityFiles } from "../src/cli/pki-dir.ts";
import { issueLeaf } from "../src/pki/index.ts";
import { runCli } from "./helpers/cli.ts";
import { openssl } from "./helpers/clients.ts";

const ORDERS = "spiffe://example.org/ns/orders/sa/orders";

const base = await mkdtemp(path.join(os.tmpdir(), "mtlsd-inspect-"));
t.teardown(() => rm(base, { recursive: true, force: true }));
// The files certs init and certs issue write (their own tests run them as commands); made in-process here.
const shared = path.join(base, "pki");
const { intermediate: issuer } = await initPkiDirectory(shared, { trustDomain: "example.org" });
await issueIdentityFiles(shared, issuer, {
  spiffeId: ORDERS,
  dnsNames: ["orders.internal"],
  ipAddresses: ["127.0.0.1"],
});

t.test("certs inspect prints each certificate of a chain and a valid X509-SVID verdict", async (t) => {
  const result = await runCli(["certs", "inspect", path.join(shared, "orders.crt")]);
  t.equal(result.code, 0, result.stdout);
  t.match(result.stdout, /2 certificates/);
  t.match(result.stdout, /\[1\] leaf: CN=orders\n/);
  t.match(
    result.stdout,
    /SANs +URI spiffe:\/\/example\.org\/ns\/orders\/sa\/orders, DNS orders\.internal, IP 127\.0\.0\.1/,
  );
  t.match(result.stdout, /validity +\S+ to \S+ \(expires in (59|58)m/);
  t.match(result.stdout, /key +EC P-256/);
  t.match(result.stdout, /issued by +\[2\] \(signature verifies\)/);
  t.match(result.stdout, /X509-SVID +valid: spiffe:\/\/example\.org\/ns\/orders\/sa\/orders/);
  t.match(result.stdout, /\[2\] intermediate CA: CN=example\.org intermediate CA\n/);
  t.match(result.stdout, /CA checks +ok: CA:TRUE, key usage keyCertSign \(critical\), path length 0/);
  t.notOk(result.stdout.includes("\u001b["), "no colours when stdout is not a terminal");
});

t.test("certs inspect prints the same SHA-256 fingerprint and serial as openssl", async (t) => {
  const result = await runCli(["certs", "inspect", path.join(shared, "root.crt")]);
  const fingerprint = await openssl([
    "x509",
    "-noout",
    "-fingerprint",
    "-sha256",
    "-in",
    path.join(shared, "root.crt"),
  ]);
  const serial = await openssl(["x509", "-noout", "-serial", "-in", path.join(shared, "root.crt")]);
  t.match(result.stdout, `SHA-256    ${fingerprint.stdout.split("=")[1]!.trim()}`);
  t.match(result.stdout, `serial     ${serial.stdout.split("=")[1]!.trim().toLowerCase()}`);
  t.match(result.stdout, /\[1\] root CA: CN=example\.org root CA\n[\s\S]*issued by +itself \(self-signed\)/);
});

t.test("certs inspect lists every X509-SVID rule a leaf breaks and exits 1", async (t) => {
  const bad = await issueLeaf(issuer, {
    spiffeId: ORDERS,
    extraUris: ["spiffe://example.org/ns/other/sa/other"],
    isCA: true,
    extKeyUsage: ["serverAuth"],
  });
  const file = path.join(base, "bad.crt");
  await writeFile(file, bad.chainPem);
  const result = await runCli(["certs", "inspect", file]);
  t.equal(result.code, 1);
  t.match(result.stdout, /X509-SVID +NOT VALID\n/);
  t.match(result.stdout, /- has 2 URI SANs; an X509-SVID has exactly one/);
  t.match(result.stdout, /- leaf has CA:TRUE/);
  t.match(result.stdout, /- extended key usage lacks clientAuth/);
  t.match(result.stdout, /1 certificate failed the checks above/);
});

t.test("certs inspect says how long ago a leaf expired, and exits 1", async (t) => {
  const notAfter = new Date(Date.now() - 3 * 3_600_000);
  const expired = await issueLeaf(issuer, {
    spiffeId: ORDERS,
    notBefore: new Date(notAfter.getTime() - 3_600_000),
    notAfter,
  });
  const file = path.join(base, "expired.crt");
  await writeFile(file, expired.certPem);
  const result = await runCli(["certs", "inspect", file]);
  t.equal(result.code, 1);
  t.match(result.stdout, /validity +.*\(EXPIRED 3h(?: \d+s)? ago\)/);
  t.match(result.stdout, /- EXPIRED 3h/);
});

t.test("certs inspect --trust-domain judges a leaf against that trust domain", async (t) => {
  const result = await runCli([
    "certs",
    "inspect",
    "--trust-domain",
    "other.org",
    path.join(shared, "orders.crt"),
  ]);
  t.equal(result.code, 1);
  t.match(
    result.stdout,
    /SPIFFE ID spiffe:\/\/example\.org\/ns\/orders\/sa\/orders is in trust domain example\.org, expected other\.org/,
  );
});

t.test(
  "certs inspect reads a certificate openssl made, DER as well as PEM, and says what else a file holds",
  async (t) => {
    const key = path.join(base, "legacy.key");
    const pem = path.join(base, "legacy.pem");
    // biome-ignore format: one option and its value per line reads like the command it is
    const made = await openssl([
    "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
    "-keyout", key, "-out", pem, "-days", "1", "-subj", "/O=Acme, Inc./CN=legacy",
    "-addext", "subjectAltName=URI:spiffe://example.org/ns/legacy/sa/legacy,DNS:legacy.internal",
    "-addext", "basicConstraints=critical,CA:FALSE",
    "-addext", "keyUsage=digitalSignature",
  ]);
    t.equal(made.code, 0, made.stderr);
    const der = path.join(base, "legacy.der");
    t.equal((await openssl(["x509", "-in", pem, "-outform", "DER", "-out", der])).code, 0);
    for (const file of [pem, der]) {
      const result = await runCli(["certs", "inspect", file]);
      t.equal(result.code, 1, "its key usage is not critical");
      t.match(result.stdout, /\[1\] leaf: CN=legacy,O=Acme\\, Inc\.\n/);
      t.match(result.stdout, /- leaf key usage extension is not marked critical/);
    }
    const both = path.join(base, "legacy-with-key.pem");
    await writeFile(both, (await readFile(pem, "utf8")) + (await readFile(key, "utf8")));
    const result = await runCli(["certs", "inspect", both]);
    t.match(result.stdout, /1 certificate; also PRIVATE KEY \(not shown\)/);
    t.notMatch(result.stdout, /BEGIN PRIVATE KEY/);
  },
);

t.test("certs inspect exits 2 for a file that holds no certificate, and for a missing file", async (t) => {
  const empty = path.join(base, "notes.txt");
  await writeFile(empty, "not a certificate\n");
  const none = await runCli(["certs", "inspect", empty]);
  t.equal(none.code, 2);
  t.match(none.stderr, /notes\.txt: no certificate found/);
  const missing = await runCli(["certs", "inspect", path.join(base, "nope.crt")]);
  t.equal(missing.code, 2);
  t.match(missing.stderr, /nope\.crt: cannot read: no such file/);
});
