// A bad push keeps the old credentials serving, says why, counts a failure, and a later good push recovers.
import path from "node:path";
import t from "tap";
import {
  createIntermediateCA,
  createRootCA,
  type IssuedCert,
  issueCrl,
  issueLeaf,
} from "../src/pki/index.ts";
import { startApp } from "./helpers/app.ts";
import { createTestPki } from "./helpers/pki.ts";
import {
  type CredentialPems,
  probe,
  reloadCount,
  SecretVolume,
  sleep,
  waitFor,
  waitForSerial,
} from "./helpers/rotation.ts";
import { startSidecar } from "./helpers/sidecar.ts";

const HOUR_MS = 3600_000;

/** The subtest handed to a `t.test` callback. */
type TestContext = Parameters<Parameters<typeof t.test>[0]>[0];

const pki = await createTestPki();
t.teardown(() => pki.cleanup());
const app = await startApp();
t.teardown(() => app.stop());
const frontend = await pki.identity("frontend");
const client = { ca: pki.bundlePem, cert: frontend.chainPem, key: frontend.keyPem };
const ORDERS = `spiffe://${pki.trustDomain}/ns/orders/sa/orders`;
const strangerRoot = await createRootCA({ trustDomain: pki.trustDomain, commonName: "stranger root CA" });
const strangerIntermediate = await createIntermediateCA(strangerRoot);

const issueOrders = (options = {}, issuer = pki.intermediate) =>
  issueLeaf(issuer, { spiffeId: ORDERS, dnsNames: ["localhost"], ...options });
/** The intermediate's CRL, then the root's: once CRLs are enforced, every CA of the chain needs one. */
const rootCrl = (await issueCrl(pki.root)).crlPem;
const freshCrl = async (revokedSerials: string[] = []) =>
  (await issueCrl(pki.intermediate, { revokedSerials })).crlPem + rootCrl;

async function good(leaf: IssuedCert): Promise<CredentialPems> {
  return { cert: leaf.chainPem, key: leaf.keyPem, bundle: pki.bundlePem, crl: await freshCrl() };
}

const first = await issueOrders();
const volume = await SecretVolume.create(path.join(pki.dir, "orders-volume"), await good(first));
// Watched, and polled five times a second: a refused push must still be reported once, not every poll.
const orders = await startSidecar(pki, frontend, {
  identity: {
    cert: volume.paths.cert,
    key: volume.paths.key,
    trustBundle: volume.paths.bundle,
    crl: volume.paths.crl,
    trustDomain: pki.trustDomain,
    reload: { watch: true, interval: "200ms" },
  },
  inbound: {
    listen: "127.0.0.1:0",
    app: app.url,
    policy: { rules: [{ name: "frontend", action: "allow", from: [frontend.spiffeId] }] },
  },
});
t.teardown(() => orders.stop());
let serving = first;
let successes = 0;

/**
 * Pushes `pems` and asserts the whole contract of a refusal: the failure is counted once, logged with its code
 * and the serial kept, kept for /status, and peers are still served with the old certificate.
 */
async function refusedPush(
  t: TestContext,
  pems: CredentialPems,
  code: string,
  reason: RegExp,
): Promise<void> {
  const failures = await reloadCount(orders.sidecar, "failure");
  const logged = orders.logs.length;
  await volume.swap(pems);
  await waitFor(
    `a failed reload (${code})`,
    async () => (await reloadCount(orders.sidecar, "failure")) === failures + 1,
  );
  const status = orders.sidecar.reloadStatus();
  t.equal(status.result, "failure", "/status reports the failure");
  t.equal(status.error?.code, code);
  t.match(status.error?.message, reason);
  t.equal(
    orders.sidecar.store.current.leaf.serialHex,
    serving.serialHex.toLowerCase(),
    "the old credentials stay",
  );
  const line = orders.logs
    .slice(logged)
    .find((line) => line.msg === "credential reload failed; keeping the current credentials");
  t.ok(line, "the failure is logged");
  t.equal(line?.level, "error");
  t.equal(line?.code, code);
  t.match(line?.error, reason);
  t.equal(line?.kept_serial, serving.serialHex.toLowerCase(), "the log names the certificate still in use");
  t.notOk(JSON.stringify(orders.logs.slice(logged)).includes("-----BEGIN"), "no PEM in the logs");
  const result = await probe(orders.inboundPort, client);
  t.equal(
    result.serverSerial,
    serving.serialHex.toLowerCase(),
    "new handshakes still get the old certificate",
  );
  t.equal(result.response?.status, 200, "and requests keep working");
  t.equal(await reloadCount(orders.sidecar, "success"), successes, "nothing was installed");
}

t.test("a key that does not match the certificate is refused", async (t) => {
  const next = await issueOrders();
  const other = await issueOrders();
  await refusedPush(
    t,
    { ...(await good(next)), key: other.keyPem },
    "CERT_KEY_MISMATCH",
    /does not belong to the certificate/,
  );
});

t.test("an expired certificate is refused", async (t) => {
  const expired = await issueOrders({
    notBefore: new Date(Date.now() - 2 * HOUR_MS),
    notAfter: new Date(Date.now() - HOUR_MS),
  });
  await refusedPush(t, await good(expired), "CERT_EXPIRED", /expired at .*install a renewed certificate/);
});

t.test("a certificate from another trust domain is refused", async (t) => {
  const foreign = await issueOrders({ spiffeId: "spiffe://other.org/ns/orders/sa/orders" });
  await refusedPush(
    t,
    await good(foreign),
    "WRONG_TRUST_DOMAIN",
    /trust domain other\.org, expected example\.org/,
  );
});

t.test("a certificate from a CA outside the bundle is refused", async (t) => {
  const stranger = await issueOrders({}, strangerIntermediate);
  await refusedPush(
    t,
    await good(stranger),
    "CHAIN_UNTRUSTED",
    /does not verify against identity\.trustBundle/,
  );
});

t.test("a certificate file that is not PEM is refused", async (t) => {
  const next = await issueOrders();
  await refusedPush(
    t,
    { ...(await good(next)), cert: "garbage, not a certificate\n" },
    "CERT_PARSE",
    /no PEM "BEGIN CERTIFICATE" block/,
  );
});

t.test("a stale CRL is refused with the rest of the push", async (t) => {
  const next = await issueOrders();
  const stale = await issueCrl(pki.intermediate, {
    thisUpdate: new Date(Date.now() - 2 * HOUR_MS),
    nextUpdate: new Date(Date.now() - HOUR_MS),
  });
  await refusedPush(
    t,
    { ...(await good(next)), crl: stale.crlPem + rootCrl },
    "CRL_EXPIRED",
    /publish a fresh one/,
  );
});

t.test("a CRL file without the root's CRL is refused with the rest of the push", async (t) => {
  const next = await issueOrders();
  const intermediateOnly = (await issueCrl(pki.intermediate)).crlPem;
  await refusedPush(
    t,
    { ...(await good(next)), crl: intermediateOnly },
    "CRL_INCOMPLETE",
    /no CRL from CN=example\.org root CA/,
  );
});

t.test("a refused push is counted once, not again at every poll", async (t) => {
  const failures = await reloadCount(orders.sidecar, "failure");
  await sleep(1200);
  t.equal(await reloadCount(orders.sidecar, "failure"), failures, "six polls later, still one failure");
});

t.test("a good push after bad ones recovers", async (t) => {
  const next = await issueOrders();
  await volume.swap(await good(next));
  await waitForSerial(orders.sidecar, next.serialHex);
  serving = next;
  successes++;
  const status = orders.sidecar.reloadStatus();
  t.equal(status.result, "success");
  t.equal(status.error, null, "/status no longer shows the old failure");
  t.equal(await reloadCount(orders.sidecar, "success"), 1);
  const result = await probe(orders.inboundPort, client);
  t.equal(result.serverSerial, next.serialHex.toLowerCase());
  t.equal(result.response?.status, 200);
});

/** What the volume held when it was last installed: putting it back is no new version. */
let installed: CredentialPems | undefined;

t.test("a new CRL on its own is a reload, and the credentials carry it", async (t) => {
  const crl = await freshCrl(["0badc0de"]);
  installed = { ...(await good(serving)), crl };
  await volume.swap(installed);
  await waitFor("the new CRL", () => orders.sidecar.store.current.crlPem === crl);
  successes++;
  t.equal(orders.sidecar.store.current.crl?.[0]?.revoked, 1);
  t.equal(orders.sidecar.store.current.leaf.serialHex, serving.serialHex.toLowerCase(), "same certificate");
  t.equal(await reloadCount(orders.sidecar, "success"), 2);
});

t.test("files put back to what is in use after a refused push read as recovered", async (t) => {
  const other = await issueOrders();
  await refusedPush(t, { ...installed!, key: other.keyPem }, "CERT_KEY_MISMATCH", /does not belong/);
  const failures = await reloadCount(orders.sidecar, "failure");
  const logged = orders.logs.length;
  await volume.swap(installed!);
  await waitFor("/status to recover", () => orders.sidecar.reloadStatus().result === "success");
  t.equal(orders.sidecar.reloadStatus().error, null, "/status no longer shows the refused push");
  const line = orders.logs
    .slice(logged)
    .find((entry) => entry.msg?.toString().startsWith("credential files match the credentials in use again"));
  t.match(line, {
    level: "info",
    previous_error: "CERT_KEY_MISMATCH",
    serial: serving.serialHex.toLowerCase(),
  });
  t.equal(await reloadCount(orders.sidecar, "failure"), failures, "no new failure");
  t.equal(await reloadCount(orders.sidecar, "success"), successes, "and nothing new installed");
});
