// Revoking a certificate: a CRL or the identity.deny list refuses the peer (or upstream) as revoked, resumed sessions too.
import { randomUUID } from "node:crypto";
import { once } from "node:events";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import path from "node:path";
import tls from "node:tls";
import t from "tap";
import { ConfigError, parseConfig } from "../src/config/index.ts";
import { normalizeSerial } from "../src/identity/index.ts";
import { issueCrl } from "../src/pki/index.ts";
import { startApp } from "./helpers/app.ts";
import { curl, curlRequest, openssl, parseHttpResponse } from "./helpers/clients.ts";
import { createTestPki, type IdentityFiles, identityConfig } from "./helpers/pki.ts";
import { type RunningSidecar, startSidecar, waitForLog } from "./helpers/sidecar.ts";

const pki = await createTestPki();
t.teardown(() => pki.cleanup());
const app = await startApp();
t.teardown(() => app.stop());

const orders = await pki.identity("orders");
const frontend = await pki.identity("frontend");
const stolen = await pki.identity("stolen"); // on the intermediate's CRL
const lostLaptop = await pki.identity("laptop"); // its serial is on identity.deny.serials
const compromised = await pki.identity("compromised"); // its SPIFFE ID is on identity.deny.spiffeIds
const payments = await pki.identity("payments"); // an upstream whose certificate the CRL lists
const billing = await pki.identity("billing"); // an upstream whose SPIFFE ID is deny-listed

/** Writes PEM CRLs into one file, as an operator would concatenate them. */
async function crlFile(name: string, pems: string[]): Promise<string> {
  const file = path.join(pki.dir, name);
  await writeFile(file, pems.join(""));
  return file;
}

const intermediateCrl = await issueCrl(pki.intermediate, {
  revokedSerials: [stolen.issued.serialHex, payments.issued.serialHex],
});
const rootCrl = await issueCrl(pki.root); // revokes nothing, but OpenSSL needs a CRL for every CA in the chain
const crlPath = await crlFile("crl.pem", [intermediateCrl.crlPem, rootCrl.crlPem]);

/** The serial as `openssl x509 -serial` and certificate viewers print it: upper case, colon-separated. */
function colonSerial(hex: string): string {
  return hex.toUpperCase().match(/../g)!.join(":");
}

function identityBlock(who: IdentityFiles, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    identity: {
      ...identityConfig(pki, who),
      ...extra,
    },
  };
}

const revocation = {
  crl: crlPath,
  deny: {
    serials: [colonSerial(lostLaptop.issued.serialHex)],
    spiffeIds: [compromised.spiffeId, billing.spiffeId],
  },
};
const allowAll = { rules: [{ name: "any-peer", action: "allow", from: ["*"] }] };

async function start(who: IdentityFiles, config: Record<string, unknown>): Promise<RunningSidecar> {
  const running = await startSidecar(pki, who, config);
  t.teardown(() => running.stop());
  return running;
}

const guarded = await start(orders, {
  ...identityBlock(orders, revocation),
  inbound: { listen: "127.0.0.1:0", app: app.url, policy: allowAll },
});
// Upstreams for the outbound tests: they revoke nothing themselves.
const paymentsUpstream = await start(payments, {
  inbound: { listen: "127.0.0.1:0", app: app.url, policy: allowAll },
});
const billingUpstream = await start(billing, {
  inbound: { listen: "127.0.0.1:0", app: app.url, policy: allowAll },
});
const caller = await start(frontend, {
  ...identityBlock(frontend, revocation),
  outbound: {
    listen: "127.0.0.1:0",
    upstreams: {
      payments: { address: `localhost:${paymentsUpstream.inboundPort}`, identity: payments.spiffeId },
      billing: { address: `localhost:${billingUpstream.inboundPort}`, identity: billing.spiffeId },
      orders: { address: `localhost:${guarded.inboundPort}`, identity: orders.spiffeId },
    },
  },
});

/** The subtest handed to a `t.test` callback. */
type TestContext = Parameters<Parameters<typeof t.test>[0]>[0];

async function assertRevoked(t: TestContext, who: IdentityFiles, detail: RegExp) {
  const before = guarded.logs.length;
  const result = await curlRequest(`${guarded.inboundUrl}/v1/${randomUUID()}`, {
    cacert: pki.bundlePath,
    cert: who.certPath,
    key: who.keyPath,
  });
  t.equal(result.response?.status, 403, `refused (curl: ${result.stderr.trim()})`);
  t.equal(result.response?.headers["x-mtlsd-reason"], "revoked");
  t.notOk(result.response?.headers["x-app"], "the app never saw it");
  const line = await waitForLog(
    guarded.logs,
    (l) => l.msg === "handshake failed" && guarded.logs.indexOf(l) >= before,
  );
  t.match(line, { level: "warn", direction: "inbound", reason: "revoked", detail });
}

t.test(
  "a serial matches however a tool printed it: case, colons and a leading zero byte do not matter",
  async (t) => {
    t.equal(normalizeSerial("00:5C:18:0A"), "5c180a");
    t.equal(normalizeSerial("5c180a"), "5c180a");
    t.equal(normalizeSerial("005C180A"), "5c180a");
    t.equal(normalizeSerial("0"), "0");
  },
);

t.test("a deny-listed serial that is not hex is a config error naming the field", async (t) => {
  const text = `identity:\n  cert: a\n  key: b\n  trustBundle: c\n  trustDomain: example.org\n  deny:\n    serials: ["serial=5C18"]\ninbound: {}\n`;
  t.throws(() => parseConfig(text, "/etc/mtlsd/mtlsd.yaml"), ConfigError);
  try {
    parseConfig(text, "/etc/mtlsd/mtlsd.yaml");
  } catch (error) {
    t.match(
      (error as ConfigError).message,
      /identity\.deny\.serials\[0\] \(line 7\): expected a certificate serial number in hex/,
    );
  }
});

t.test("a peer whose certificate is on the intermediate's CRL is refused as revoked", async (t) => {
  await assertRevoked(t, stolen, /revoked \(CERT_REVOKED\)/);
});

t.test("a peer that no CRL lists is served as before", async (t) => {
  const result = await curlRequest(`${guarded.inboundUrl}/v1/ok`, {
    cacert: pki.bundlePath,
    cert: frontend.certPath,
    key: frontend.keyPath,
  });
  t.equal(result.response?.status, 200);
  t.equal(result.response?.headers["x-app"], "echo");
});

t.test(
  "a serial on identity.deny.serials is refused as revoked, however the serial was written",
  async (t) => {
    await assertRevoked(t, lostLaptop, new RegExp(`serial ${lostLaptop.issued.serialHex} is listed`));
  },
);

t.test("a SPIFFE ID on identity.deny.spiffeIds is refused as revoked", async (t) => {
  await assertRevoked(t, compromised, /spiffeIds/);
});

t.test("refused revoked peers are counted under reason revoked", async (t) => {
  const text = await guarded.sidecar.metrics.metrics();
  const line = text
    .split("\n")
    .find((l) => l.startsWith("mtlsd_handshake_failures_total{") && l.includes('reason="revoked"'));
  t.ok(line, "a revoked handshake-failure series exists");
  t.ok(Number(line?.split(" ").at(-1)) >= 3, "one per refused connection above");
});

interface Exchange {
  status: number | undefined;
  reason: string | undefined;
  resumed: boolean;
  session: Buffer | undefined;
}

/** One request over a fresh TLS connection, optionally resuming `session`; returns the ticket it got. */
async function exchange(port: number, who: IdentityFiles, session?: Buffer): Promise<Exchange> {
  const socket = tls.connect({
    host: "127.0.0.1",
    port,
    servername: "localhost",
    ca: pki.bundlePem,
    cert: who.chainPem,
    key: who.keyPem,
    ...(session ? { session } : {}),
  });
  let ticket: Buffer | undefined;
  socket.on("session", (s: Buffer) => {
    ticket = s;
  });
  const chunks: Buffer[] = [];
  socket.on("data", (chunk: Buffer) => chunks.push(chunk));
  socket.on("error", () => {});
  const timer = setTimeout(() => socket.destroy(), 5000);
  await once(socket, "secureConnect");
  const resumed = socket.isSessionReused();
  socket.write("GET /v1/resume HTTP/1.1\r\nHost: orders\r\nConnection: close\r\n\r\n");
  await once(socket, "close");
  clearTimeout(timer);
  const response = parseHttpResponse(Buffer.concat(chunks).toString("latin1"));
  return {
    status: response?.status,
    reason: response?.headers["x-mtlsd-reason"],
    resumed,
    session: ticket,
  };
}

t.test("a deny-listed peer is refused again when it resumes a TLS session", async (t) => {
  const first = await exchange(guarded.inboundPort, compromised);
  t.equal(first.reason, "revoked");
  t.ok(first.session, "TLS 1.3 handed out a ticket before the refusal");
  const second = await exchange(guarded.inboundPort, compromised, first.session);
  t.ok(second.resumed, "the session was resumed (no chain verification this time)");
  t.equal(second.status, 403);
  t.equal(second.reason, "revoked", "the deny list is checked on resumed connections too");
});

t.test(
  "a reloaded CRL invalidates session tickets, so a newly revoked peer cannot resume its way in",
  async (t) => {
    // Starts with CRLs that revoke nothing; the watch is off so only the explicit reload below picks up the new file.
    const emptyCrls = await crlFile("reload-crl.pem", [
      (await issueCrl(pki.intermediate)).crlPem,
      rootCrl.crlPem,
    ]);
    const open = await start(orders, {
      ...identityBlock(orders, { crl: emptyCrls, reload: { watch: false, interval: "1h" } }),
      inbound: { listen: "127.0.0.1:0", app: app.url, policy: allowAll },
    });
    const first = await exchange(open.inboundPort, stolen);
    t.equal(first.status, 200, "served while no CRL lists it");
    const resumed = await exchange(open.inboundPort, stolen, first.session);
    t.ok(resumed.resumed, "resumption works while trust is unchanged");

    await writeFile(emptyCrls, await readFile(crlPath, "utf8"));
    t.match(await open.sidecar.reloadCredentials(), { result: "success" });
    const after = await exchange(open.inboundPort, stolen, resumed.session ?? first.session);
    t.notOk(after.resumed, "the old ticket no longer resumes");
    t.equal(after.reason, "revoked", "the full handshake checks the new CRL");
  },
);

async function outbound(
  upstream: string,
): Promise<{ status: number | undefined; reason: string | undefined }> {
  const port = caller.sidecar.addresses().outbound!.port;
  const result = await curl([
    "-sS",
    "-i",
    "--max-time",
    "10",
    "-H",
    `Host: ${upstream}`,
    `http://127.0.0.1:${port}/v1/x`,
  ]);
  const response = parseHttpResponse(result.stdout, false);
  return { status: response?.status, reason: response?.headers["x-mtlsd-reason"] };
}

/** The outbound handshake-failure line for `upstream` logged after index `from`. */
function outboundRefusal(from: number, upstream: string) {
  return waitForLog(
    caller.logs,
    (l) => l.msg === "handshake failed" && l.upstream === upstream && caller.logs.indexOf(l) >= from,
  );
}

/** mtlsd_handshake_failures_total{direction="outbound",reason="revoked"} as a scrape reads it. */
async function outboundRevokedCount(): Promise<number> {
  const text = await caller.sidecar.metrics.metrics();
  const match = /^mtlsd_handshake_failures_total\{direction="outbound",reason="revoked"\} (\d+)$/m.exec(text);
  return match ? Number(match[1]) : 0;
}

t.test(
  "an upstream whose certificate is on the CRL gets 502 upstream_tls_error, logged and counted as revoked",
  async (t) => {
    const before = caller.logs.length;
    const counted = await outboundRevokedCount();
    t.same(await outbound("payments"), { status: 502, reason: "upstream_tls_error" });
    const line = await waitForLog(
      caller.logs,
      (l) => l.msg === "request" && caller.logs.indexOf(l) >= before,
    );
    t.match(line, {
      direction: "outbound",
      upstream: "payments",
      reason: "upstream_tls_error",
      error: /revoked/,
    });
    t.match(await outboundRefusal(before, "payments"), {
      level: "warn",
      direction: "outbound",
      reason: "revoked",
      destination_identity: payments.spiffeId,
      detail: /CERT_REVOKED/,
    });
    t.equal(await outboundRevokedCount(), counted + 1, "one refused handshake");
  },
);

t.test(
  "an upstream on identity.deny gets 502 upstream_tls_error, logged and counted as revoked",
  async (t) => {
    const before = caller.logs.length;
    const counted = await outboundRevokedCount();
    t.same(await outbound("billing"), { status: 502, reason: "upstream_tls_error" });
    const line = await waitForLog(
      caller.logs,
      (l) => l.msg === "request" && caller.logs.indexOf(l) >= before,
    );
    t.match(line, { upstream: "billing", reason: "upstream_tls_error", error: /revoked: .*spiffeIds/ });
    t.match(await outboundRefusal(before, "billing"), {
      level: "warn",
      direction: "outbound",
      reason: "revoked",
      destination_identity: billing.spiffeId,
      detail: /spiffeIds/,
    });
    t.equal(await outboundRevokedCount(), counted + 1, "one refused handshake");
  },
);

t.test("an upstream that nothing revokes is reached through the same CRL", async (t) => {
  t.same(await outbound("orders"), { status: 200, reason: undefined });
});

/** A CRL made by `openssl ca -gencrl` for one of the test CAs, revoking the given certificates. */
async function opensslCrl(name: string, ca: { certPem: string; keyPem: string }, revoke: string[]) {
  const dir = path.join(pki.dir, `openssl-${name}`);
  await mkdir(dir, { recursive: true });
  const at = (file: string) => path.join(dir, file);
  await writeFile(at("ca.crt"), ca.certPem);
  await writeFile(at("ca.key"), ca.keyPem, { mode: 0o600 });
  await writeFile(at("index.txt"), "");
  await writeFile(
    at("ca.cnf"),
    `[ca]\ndefault_ca = crl_ca\n[crl_ca]\ndatabase = ${at("index.txt")}\ncertificate = ${at("ca.crt")}\n` +
      `private_key = ${at("ca.key")}\ndefault_md = sha256\ndefault_crl_days = 1\n`,
  );
  for (const [index, certPem] of revoke.entries()) {
    await writeFile(at(`revoked-${index}.crt`), certPem);
    const revoked = await openssl(["ca", "-config", at("ca.cnf"), "-revoke", at(`revoked-${index}.crt`)]);
    if (revoked.code !== 0) throw new Error(`openssl ca -revoke failed: ${revoked.stderr}`);
  }
  const made = await openssl(["ca", "-config", at("ca.cnf"), "-gencrl", "-out", at("crl.pem")]);
  if (made.code !== 0) throw new Error(`openssl ca -gencrl failed: ${made.stderr}`);
  return readFile(at("crl.pem"), "utf8");
}

t.test("CRLs made by openssl ca -gencrl are enforced the same way", async (t) => {
  const file = await crlFile("openssl-crls.pem", [
    await opensslCrl("intermediate", pki.intermediate, [stolen.issued.certPem]),
    await opensslCrl("root", pki.root, []),
  ]);
  const sidecar = await start(orders, {
    ...identityBlock(orders, { crl: file }),
    inbound: { listen: "127.0.0.1:0", app: app.url, policy: allowAll },
  });
  const refused = await exchange(sidecar.inboundPort, stolen);
  t.equal(refused.reason, "revoked", "the revoked peer is refused");
  const served = await exchange(sidecar.inboundPort, frontend);
  t.equal(served.status, 200, "others are served");
});
