// Expiry awareness: the gauge counts down, a late renewal is warned about once, an expired cert is an error at every check.
import { writeFile } from "node:fs/promises";
import t from "tap";
import type { LeafOptions } from "../src/pki/index.ts";
import { startApp } from "./helpers/app.ts";
import { createTestPki, type IdentityFiles, identityConfig } from "./helpers/pki.ts";
import { reloadCount, sleep, waitFor, waitForSerial } from "./helpers/rotation.ts";
import { type RunningSidecar, startSidecar, waitForLog } from "./helpers/sidecar.ts";

const HOUR_MS = 3600_000;
const MINUTE_MS = 60_000;

/** The subtest handed to a `t.test` callback. */
type TestContext = Parameters<Parameters<typeof t.test>[0]>[0];

const pki = await createTestPki();
t.teardown(() => pki.cleanup());
const app = await startApp();
t.teardown(() => app.stop());
let identities = 0;

/** A fresh orders identity in files of its own, so each test rotates without disturbing the others. */
function ordersIdentity(options: LeafOptions = {}): Promise<IdentityFiles> {
  return pki.identity(`orders-${++identities}`, {
    spiffeId: `spiffe://${pki.trustDomain}/ns/orders/sa/orders`,
    ...options,
  });
}

/** Starts orders on `identity` with checks every 100ms and a clock `offset()` ms ahead of the real one. */
async function startOrders(
  t: TestContext,
  identity: IdentityFiles,
  offset: () => number = () => 0,
): Promise<RunningSidecar> {
  const orders = await startSidecar(
    pki,
    identity,
    {
      identity: {
        ...identityConfig(pki, identity),
        reload: { watch: true, interval: "100ms" },
      },
      inbound: { listen: "127.0.0.1:0", app: app.url, policy: { default: "allow" } },
    },
    { now: () => new Date(Date.now() + offset()) },
  );
  t.teardown(() => orders.stop());
  return orders;
}

async function expiryGauge(orders: RunningSidecar): Promise<number> {
  const text = await orders.sidecar.metrics.metrics();
  const match = /^mtlsd_cert_expiry_seconds (\S+)$/m.exec(text);
  if (!match) throw new Error(`no mtlsd_cert_expiry_seconds in:\n${text}`);
  return Number(match[1]);
}

const overdue = (orders: RunningSidecar) =>
  orders.logs.filter((line) => line.msg === "certificate renewal overdue");
const expired = (orders: RunningSidecar) => orders.logs.filter((line) => line.msg === "certificate expired");

t.test(
  "mtlsd_cert_expiry_seconds counts down to the current certificate's notAfter and follows a rotation",
  async (t) => {
    const identity = await ordersIdentity({ ttlMs: HOUR_MS });
    const orders = await startOrders(t, identity);
    const left = (identity.issued.cert.notAfter.getTime() - Date.now()) / 1000;
    t.ok(Math.abs((await expiryGauge(orders)) - left) < 5, "about an hour left");
    const renewed = await pki.identity("renewed-gauge", {
      spiffeId: identity.spiffeId,
      notBefore: new Date(Date.now() - MINUTE_MS),
      notAfter: new Date(Date.now() + 3 * HOUR_MS),
    });
    await writeFile(identity.certPath, renewed.chainPem);
    await writeFile(identity.keyPath, renewed.keyPem);
    await waitForSerial(orders.sidecar, renewed.issued.serialHex);
    t.ok(Math.abs((await expiryGauge(orders)) - 3 * 3600) < 5, "three hours left on the renewed certificate");
  },
);

t.test("nothing is said while more than a third of the lifetime is left", async (t) => {
  const orders = await startOrders(t, await ordersIdentity());
  await sleep(500);
  t.equal(overdue(orders).length, 0);
  t.equal(expired(orders).length, 0);
});

t.test(
  "with less than a third of its lifetime left and no renewal, a warning says renewal is overdue, once",
  async (t) => {
    // Valid from an hour ago for two hours; the clock stands 30 minutes ahead: 30 of 120 minutes left.
    const identity = await ordersIdentity({
      notBefore: new Date(Date.now() - HOUR_MS),
      notAfter: new Date(Date.now() + HOUR_MS),
    });
    const orders = await startOrders(t, identity, () => 30 * MINUTE_MS);
    const line = await waitForLog(orders.logs, (line) => line.msg === "certificate renewal overdue");
    t.equal(line.level, "warn");
    t.equal(line.serial, identity.issued.serialHex.toLowerCase());
    t.equal(line.not_after, identity.issued.cert.notAfter.toISOString());
    t.ok(Math.abs((line.remaining_seconds as number) - 30 * 60) < 5, "about 30 minutes left");
    t.equal(line.lifetime_seconds, 2 * 3600);
    t.equal(line.last_reload_result, "success");
    await sleep(500);
    t.equal(overdue(orders).length, 1, "five checks later, still one warning for this certificate");
  },
);

t.test("the overdue warning quotes the renewal that was refused", async (t) => {
  const identity = await ordersIdentity({
    notBefore: new Date(Date.now() - HOUR_MS),
    notAfter: new Date(Date.now() + HOUR_MS),
  });
  let offset = 0;
  const orders = await startOrders(t, identity, () => offset);
  const other = await ordersIdentity();
  // A renewal whose key went missing: the certificate is new, the key still the old one.
  await writeFile(identity.certPath, other.chainPem);
  await waitFor("the refused renewal", async () => (await reloadCount(orders.sidecar, "failure")) === 1);
  offset = 30 * MINUTE_MS;
  const line = await waitForLog(orders.logs, (line) => line.msg === "certificate renewal overdue");
  t.equal(line.last_reload_result, "failure");
  t.match(line.last_reload_error, /^CERT_KEY_MISMATCH: /);
});

t.test("a renewal that arrives in time silences the warning", async (t) => {
  const identity = await ordersIdentity({
    notBefore: new Date(Date.now() - HOUR_MS),
    notAfter: new Date(Date.now() + HOUR_MS),
  });
  const orders = await startOrders(t, identity, () => 30 * MINUTE_MS);
  await waitForLog(orders.logs, (line) => line.msg === "certificate renewal overdue");
  // Two hours from now: at the clock's 30 minutes ahead, well over a third of its life is left.
  const renewed = await pki.identity("renewed-in-time", {
    spiffeId: identity.spiffeId,
    notBefore: new Date(Date.now() - MINUTE_MS),
    notAfter: new Date(Date.now() + 2 * HOUR_MS),
  });
  await writeFile(identity.certPath, renewed.chainPem);
  await writeFile(identity.keyPath, renewed.keyPem);
  await waitForSerial(orders.sidecar, renewed.issued.serialHex);
  await sleep(500);
  t.same(
    overdue(orders).map((line) => line.serial),
    [identity.issued.serialHex.toLowerCase()],
    "only the old certificate was warned about",
  );
});

t.test("an expired certificate is an error at every check", async (t) => {
  const identity = await ordersIdentity({ ttlMs: HOUR_MS });
  const orders = await startOrders(t, identity, () => 2 * HOUR_MS);
  await waitFor("three expiry errors", () => expired(orders).length >= 3, 3000);
  const line = expired(orders)[0]!;
  t.equal(line.level, "error");
  t.equal(line.serial, identity.issued.serialHex.toLowerCase());
  t.ok((line.expired_seconds_ago as number) > 3000, "says how long ago");
});

t.test("a short-lived certificate warns, then expires, on the real clock", async (t) => {
  // Three seconds of life: the last third starts after two, expiry after three.
  const identity = await ordersIdentity({
    notBefore: new Date(Date.now() - 1000),
    notAfter: new Date(Date.now() + 2000),
  });
  const orders = await startOrders(t, identity);
  const warning = await waitForLog(orders.logs, (line) => line.msg === "certificate renewal overdue", 4000);
  t.ok(Date.now() >= identity.issued.cert.notAfter.getTime() - 1100, "not before the last third");
  await waitForLog(orders.logs, (line) => line.msg === "certificate expired", 4000);
  t.ok(orders.logs.indexOf(warning) < orders.logs.findIndex((line) => line.msg === "certificate expired"));
  t.ok((await expiryGauge(orders)) < 0, "the gauge goes negative once expired");
});
