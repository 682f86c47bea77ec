// `mtlsd certs init` and `issue` as a developer meets them: the real CLI, files on disk, openssl as the judge.
import { mkdtemp, readFile, rm, stat } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import t from "tap";
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
    [
      ["certs", "init", "--dir", freshDir(), "--trust-domain", "Example.ORG"],
      /trust domain "Example\.ORG" is not valid/,
    ],
    [
      ["certs", "init", "--dir", freshDir(), "--trust-domain", "example.org", "--root-ttl", "soon"],
      /--root-ttl "soon"/,
    ],
    [
      ["certs", "issue", "--dir", shared, "--spiffe-id", "spiffe://other.org/ns/x/sa/x"],
      /trust domain other\.org.*for example\.org/,
    ],
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
  ];
  // Each case is its own process and none writes anything, so they run side by side.
  const results = await Promise.all(cases.map(([args]) => runCli(args)));
  for (const [i, [args, message]] of cases.entries()) {
    t.equal(results[i]!.code, 2, args.join(" "));
    t.match(results[i]!.stderr, message, args.join(" "));
  }
});
