// `mtlsd certs init|issue|inspect` as a developer meets them: the real CLI, files on disk, openssl as the judge.
import { mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import t from "tap";
import { issueLeaf, loadIssuer } from "../src/pki/index.ts";
import { runCli } from "./helpers/cli.ts";
import { openssl } from "./helpers/clients.ts";

const ORDERS = "spiffe://example.org/ns/orders/sa/orders";

const base = await mkdtemp(path.join(os.tmpdir(), "mtlsd-certs-"));
t.teardown(() => rm(base, { recursive: true, force: true }));
let dirs = 0;

/** A fresh directory name under the test's temp dir (not created: `certs init` creates it). */
function freshDir(): string {
  return path.join(base, `pki-${++dirs}`);
}

async function mustInit(dir: string, trustDomain = "example.org"): Promise<void> {
  const result = await runCli(["certs", "init", "--dir", dir, "--trust-domain", trustDomain]);
  if (result.code !== 0) throw new Error(`certs init failed: ${result.stderr}`);
}

async function modeOf(file: string): Promise<number> {
  return (await stat(file)).mode & 0o777;
}

const shared = freshDir();
await mustInit(shared);
const issued = await runCli([
  "certs",
  "issue",
  "--dir",
  shared,
  "--spiffe-id",
  ORDERS,
  "--dns",
  "orders.internal",
  "--ip",
  "127.0.0.1",
]);
if (issued.code !== 0) throw new Error(`certs issue failed: ${issued.stderr}`);

t.test("certs init writes a root, an intermediate and the bundle, with both CA keys mode 0600", async (t) => {
  for (const name of ["root.crt", "intermediate.crt", "bundle.pem"])
    t.equal(await modeOf(path.join(shared, name)), 0o644, name);
  for (const name of ["root.key", "intermediate.key"])
    t.equal(await modeOf(path.join(shared, name)), 0o600, name);
  t.equal(
    await readFile(path.join(shared, "bundle.pem"), "utf8"),
    await readFile(path.join(shared, "root.crt"), "utf8"),
  );
});

t.test(
  "openssl reads the intermediate as a critical CA:TRUE, pathlen 0, keyCertSign CA in the trust domain",
  async (t) => {
    const text = await openssl(["x509", "-noout", "-text", "-in", path.join(shared, "intermediate.crt")]);
    t.equal(text.code, 0, text.stderr);
    t.match(text.stdout, /X509v3 Basic Constraints: critical\n\s+CA:TRUE, pathlen:0\n/);
    t.match(text.stdout, /X509v3 Key Usage: critical\n\s+.*Certificate Sign/);
    t.match(text.stdout, /Public-Key: \(256 bit\)[\s\S]*NIST CURVE: P-256/);
    t.match(text.stdout, /URI:spiffe:\/\/example\.org\n/);
  },
);

t.test(
  "openssl verify accepts the issued chain against the root with the intermediate as untrusted",
  async (t) => {
    const result = await openssl([
      "verify",
      "-x509_strict",
      "-CAfile",
      path.join(shared, "root.crt"),
      "-untrusted",
      path.join(shared, "intermediate.crt"),
      path.join(shared, "orders.crt"),
    ]);
    t.equal(result.code, 0, result.stderr);
    t.match(result.stdout, /orders\.crt: OK/);
  },
);

t.test("certs issue writes <name>.crt as leaf then intermediate, and <name>.key mode 0600", async (t) => {
  t.equal(await modeOf(path.join(shared, "orders.key")), 0o600);
  const chain = await readFile(path.join(shared, "orders.crt"), "utf8");
  t.equal(chain.match(/BEGIN CERTIFICATE/g)?.length, 2);
  t.ok(
    chain.endsWith(await readFile(path.join(shared, "intermediate.crt"), "utf8")),
    "the intermediate follows the leaf",
  );
  const text = await openssl(["x509", "-noout", "-text", "-in", path.join(shared, "orders.crt")]);
  t.match(
    text.stdout,
    /URI:spiffe:\/\/example\.org\/ns\/orders\/sa\/orders, DNS:orders\.internal, IP Address:127\.0\.0\.1/,
  );
  t.match(issued.stdout, /trustBundle: .*bundle\.pem/, "prints the identity section of a config");
});

t.test("the key certs issue writes belongs to the leaf (openssl compares the public keys)", async (t) => {
  const fromCert = await openssl(["x509", "-noout", "-pubkey", "-in", path.join(shared, "orders.crt")]);
  const fromKey = await openssl(["pkey", "-pubout", "-in", path.join(shared, "orders.key")]);
  t.equal(fromKey.code, 0, fromKey.stderr);
  t.equal(fromCert.stdout, fromKey.stdout);
});

t.test("certs issue honours --ttl and --name", async (t) => {
  const result = await runCli([
    "certs",
    "issue",
    "--dir",
    shared,
    "--spiffe-id",
    "spiffe://example.org/ns/batch/sa/nightly",
    "--ttl",
    "10m",
    "--name",
    "nightly-job",
  ]);
  t.equal(result.code, 0, result.stderr);
  const end = await openssl(["x509", "-noout", "-enddate", "-in", path.join(shared, "nightly-job.crt")]);
  const notAfter = new Date(end.stdout.replace("notAfter=", "").trim());
  // notBefore is backdated a minute for clock skew, so the window ends about 9 minutes from now.
  t.ok(
    Math.abs(notAfter.getTime() - (Date.now() + 9 * 60_000)) < 60_000,
    `notAfter ${notAfter.toISOString()}`,
  );
});

t.test(
  "a second certs init refuses to overwrite, names the files, and leaves them as they were",
  async (t) => {
    const before = await readFile(path.join(shared, "root.key"), "utf8");
    const result = await runCli(["certs", "init", "--dir", shared, "--trust-domain", "example.org"]);
    t.equal(result.code, 2);
    t.match(result.stderr, /root\.crt.*already exist.*nothing was written.*--force/);
    t.equal(await readFile(path.join(shared, "root.key"), "utf8"), before);
  },
);

t.test("certs init --force replaces the CA, and the new keys are still mode 0600", async (t) => {
  const dir = freshDir();
  await mustInit(dir);
  const before = await readFile(path.join(dir, "root.crt"), "utf8");
  const result = await runCli(["certs", "init", "--dir", dir, "--trust-domain", "example.org", "--force"]);
  t.equal(result.code, 0, result.stderr);
  t.not(await readFile(path.join(dir, "root.crt"), "utf8"), before);
  t.equal(await modeOf(path.join(dir, "root.key")), 0o600);
  t.equal(await modeOf(path.join(dir, "intermediate.key")), 0o600);
});

t.test("certs issue refuses to overwrite an existing leaf unless --force", async (t) => {
  const before = await readFile(path.join(shared, "orders.key"), "utf8");
  const again = await runCli(["certs", "issue", "--dir", shared, "--spiffe-id", ORDERS]);
  t.equal(again.code, 2);
  t.match(again.stderr, /orders\.crt, .*orders\.key already exist/);
  t.equal(await readFile(path.join(shared, "orders.key"), "utf8"), before);
  const dir = freshDir();
  await mustInit(dir);
  t.equal((await runCli(["certs", "issue", "--dir", dir, "--spiffe-id", ORDERS])).code, 0);
  const forced = await runCli(["certs", "issue", "--dir", dir, "--spiffe-id", ORDERS, "--force"]);
  t.equal(forced.code, 0, forced.stderr);
  t.equal(await modeOf(path.join(dir, "orders.key")), 0o600);
});

t.test("bad arguments exit 2 with a message that says what to do", async (t) => {
  const cases: [string[], RegExp][] = [
    [["certs", "init", "--dir", freshDir()], /--trust-domain is required/],
    [["certs", "init", "--trust-domain", "example.org"], /--dir is required/],
    [
      ["certs", "init", "--dir", freshDir(), "--trust-domain", "Example.ORG"],
      /trust domain "Example\.ORG" is not valid/,
    ],
    [
      ["certs", "init", "--dir", freshDir(), "--trust-domain", "example.org", "--root-ttl", "soon"],
      /--root-ttl "soon"/,
    ],
    [["certs", "issue", "--dir", shared], /--spiffe-id is required/],
    [
      ["certs", "issue", "--dir", shared, "--spiffe-id", "spiffe://other.org/ns/x/sa/x"],
      /trust domain other\.org.*for example\.org/,
    ],
    [["certs", "issue", "--dir", shared, "--spiffe-id", "spiffe://example.org"], /needs a path/],
    [["certs", "issue", "--dir", shared, "--spiffe-id", "https://example.org/x"], /--spiffe-id https/],
    [
      ["certs", "issue", "--dir", shared, "--spiffe-id", ORDERS, "--ip", "localhost"],
      /--ip "localhost" is not an IPv4/,
    ],
    [
      ["certs", "issue", "--dir", shared, "--spiffe-id", ORDERS, "--name", "root"],
      /would overwrite the CA's own files/,
    ],
    [
      ["certs", "issue", "--dir", shared, "--spiffe-id", ORDERS, "--ttl", "3650d", "--force"],
      /outlive the intermediate CA/,
    ],
    [
      ["certs", "issue", "--dir", freshDir(), "--spiffe-id", ORDERS],
      /intermediate\.crt: no such file; create the CA first: mtlsd certs init/,
    ],
    [["certs", "issue", "--dir", shared, "--spiffe-id", ORDERS, "--colour"], /Unknown option '--colour'/],
    [["certs", "renew"], /unknown subcommand "renew"/],
    [["certs", "inspect"], /give at least one FILE/],
  ];
  for (const [args, message] of cases) {
    const result = await runCli(args);
    t.equal(result.code, 2, args.join(" "));
    t.match(result.stderr, message, args.join(" "));
  }
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
  const issuer = await loadIssuer(
    await readFile(path.join(shared, "intermediate.crt"), "utf8"),
    await readFile(path.join(shared, "intermediate.key"), "utf8"),
  );
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
  const issuer = await loadIssuer(
    await readFile(path.join(shared, "intermediate.crt"), "utf8"),
    await readFile(path.join(shared, "intermediate.key"), "utf8"),
  );
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
