// A config reload reaches the outbound side without a restart: upstreams added, removed and changed (new pools,
// old ones drained), per-upstream ports bound and closed; a port that cannot be bound refuses the whole reload.
import { once } from "node:events";
import { writeFile } from "node:fs/promises";
import net from "node:net";
import path from "node:path";
import t from "tap";
import { stringify } from "yaml";
import { startApp } from "./helpers/app.ts";
import { startGateApp } from "./helpers/gate-app.ts";
import {
  appRequest,
  type CallingSidecar,
  inboundAddress,
  sidecarError,
  startCaller,
  startUpstream,
} from "./helpers/outbound.ts";
import { createTestPki, identityConfig } from "./helpers/pki.ts";
import { type SidecarProcess, spawnSidecar } from "./helpers/process.ts";
import { editConfig } from "./helpers/reload.ts";
import { type LogLine, waitForLog } from "./helpers/sidecar.ts";

/** The subtest handed to a `t.test` callback. */
type TestContext = Parameters<Parameters<typeof t.test>[0]>[0];

const pki = await createTestPki();
t.teardown(() => pki.cleanup());
const app = await startApp();
t.teardown(() => app.stop());
const orders = await pki.identity("orders");
const payments = await pki.identity("payments");
const frontend = await pki.identity("frontend");
const ordersSidecar = await startUpstream(pki, orders, app, [frontend.spiffeId]);
t.teardown(() => ordersSidecar.stop());
const paymentsSidecar = await startUpstream(pki, payments, app, [frontend.spiffeId]);
t.teardown(() => paymentsSidecar.stop());

const ORDERS = { address: inboundAddress(ordersSidecar), identity: orders.spiffeId };
const PAYMENTS = { address: inboundAddress(paymentsSidecar), identity: payments.spiffeId };

async function caller(
  t: TestContext,
  upstreams: Record<string, Record<string, unknown>>,
): Promise<CallingSidecar> {
  const running = await startCaller(pki, frontend, upstreams);
  t.teardown(() => running.stop());
  return running;
}

function call(running: CallingSidecar, upstream: string, urlPath = "/call") {
  return appRequest(`http://${upstream}${urlPath}`, { proxy: running.proxyUrl });
}

t.test("an upstream added by a reload serves the next call", async (t) => {
  const running = await caller(t, { orders: ORDERS });
  t.equal(sidecarError(await call(running, "payments")).reason, "unknown_upstream");
  t.match(await editConfig(running, (config) => (config.outbound.upstreams.payments = PAYMENTS)), {
    result: "applied",
    changed: ["outbound.upstreams.payments"],
  });
  t.equal((await call(running, "payments")).response?.status, 200);
  t.equal((await call(running, "orders")).response?.status, 200, "the other upstream still serves");
  t.ok(running.sidecar.upstreamStats().payments, "/status lists it");
});

t.test("a removed upstream refuses the next call, and a call in flight on it finishes", async (t) => {
  const gate = await startGateApp();
  t.teardown(() => gate.close());
  const gated = await startUpstream(pki, orders, gate, [frontend.spiffeId]);
  t.teardown(() => gated.stop());
  const running = await caller(t, {
    orders: { address: inboundAddress(gated), identity: orders.spiffeId },
    payments: PAYMENTS,
  });
  const inFlight = call(running, "orders", "/gate/in-flight");
  await gate.arrived();
  await editConfig(running, (config) => delete config.outbound.upstreams.orders);
  const refused = sidecarError(await call(running, "orders"));
  t.equal(refused.status, 502);
  t.equal(refused.reason, "unknown_upstream");
  gate.release();
  const finished = await inFlight;
  t.equal(finished.response?.status, 200, "the call in flight was not cut");
  t.equal(finished.response?.body, "released");
  t.same(Object.keys(running.sidecar.upstreamStats()), ["payments"]);
});

t.test("a shorter upstream timeout applies to the next call", async (t) => {
  const running = await caller(t, { orders: { ...ORDERS, timeout: "10s" } });
  t.equal((await call(running, "orders", "/slow?ms=800")).response?.status, 200);
  t.match(await editConfig(running, (config) => (config.outbound.upstreams.orders.timeout = "200ms")), {
    changed: ["outbound.upstreams.orders.timeout"],
  });
  t.equal(sidecarError(await call(running, "orders", "/slow?ms=800")).reason, "upstream_timeout");
});

t.test("a per-upstream port added by a reload accepts calls, and one removed stops accepting", async (t) => {
  const running = await caller(t, { orders: ORDERS });
  t.equal(running.sidecar.addresses().upstreams, undefined);
  await editConfig(running, (config) => (config.outbound.upstreams.orders.listen = "127.0.0.1:0"));
  const port = running.sidecar.addresses().upstreams?.orders?.port;
  t.ok(port, "the port is bound");
  t.equal((await appRequest(`http://127.0.0.1:${port}/own-port`)).response?.status, 200);
  t.match(await running.sidecar.reloadConfig(), { result: "applied", changed: [] }, "kept across reloads");
  t.equal(running.sidecar.addresses().upstreams?.orders?.port, port);

  await editConfig(running, (config) => delete config.outbound.upstreams.orders.listen);
  t.equal(running.sidecar.addresses().upstreams, undefined);
  const refused = await appRequest(`http://127.0.0.1:${port}/gone`);
  t.not(refused.code, 0, "connection refused");
  t.equal((await call(running, "orders")).response?.status, 200, "the upstream itself still serves");
});

t.test("a per-upstream port in use refuses the whole reload: nothing changes", async (t) => {
  const taken = net.createServer();
  taken.listen(0, "127.0.0.1");
  await once(taken, "listening");
  t.teardown(() => taken.close());
  const busy = (taken.address() as net.AddressInfo).port;
  const running = await caller(t, { orders: { ...ORDERS, timeout: "10s" } });
  const outcome = await editConfig(running, (config) => {
    config.outbound.upstreams.orders.timeout = "200ms";
    config.outbound.upstreams.orders.listen = `127.0.0.1:${busy}`;
  });
  t.match(outcome, {
    result: "rejected",
    error: /outbound\.upstreams\.orders\.listen: cannot listen: the port is already in use/,
  });
  t.equal(
    running.sidecar.config.outbound!.upstreams.orders!.timeout,
    10_000,
    "the timeout did not change either",
  );
  t.equal((await call(running, "orders", "/slow?ms=500")).response?.status, 200);
  const status = (await (await fetch(`${running.adminUrl}/status`)).json()) as {
    configReload: Record<string, unknown>;
  };
  t.match(status.configReload, { result: "failure", trigger: "request", error: { code: "LISTEN_FAILED" } });
  const { values } = await running.sidecar.metrics.configReloads.get();
  t.same(Object.fromEntries(values.map((sample) => [sample.labels.result, sample.value])), {
    success: 0,
    failure: 1,
  });
  t.match(
    running.logs.find((line) => line.msg === "config reload refused; keeping the running config"),
    { level: "warn", code: "LISTEN_FAILED" },
  );
});

t.test("an outbound-only mtlsd run watches its config and applies a changed upstream", async (t) => {
  const file = path.join(pki.dir, `outbound-only-${Date.now()}.yaml`);
  const text = (upstreams: Record<string, unknown>) =>
    stringify({
      identity: identityConfig(pki, frontend),
      outbound: { listen: "127.0.0.1:0", upstreams },
      admin: { listen: "127.0.0.1:0" },
    });
  await writeFile(file, text({ orders: ORDERS }));
  const running: SidecarProcess = await spawnSidecar(file);
  t.teardown(() => running.stop("SIGKILL"));
  const proxy = `http://${running.listeners.outbound}`;
  t.equal(sidecarError(await appRequest("http://payments/x", { proxy })).reason, "unknown_upstream");
  await writeFile(file, text({ orders: ORDERS, payments: PAYMENTS }));
  await waitFor(running, (line) => line.msg === "config reloaded");
  t.equal((await appRequest("http://payments/x", { proxy })).response?.status, 200);

  running.child.kill("SIGHUP");
  await waitFor(running, (line) => line.msg === "config reloaded; unchanged" && line.trigger === "signal");
  t.ok(running.logs.some((line) => line.msg === "reloading credentials and config"));
});

async function waitFor(running: SidecarProcess, match: (line: LogLine) => boolean) {
  await waitForLog(running.logs as LogLine[], match, 8000);
}

t.test("an upstream newly listed in identity.deny is refused from the next call", async (t) => {
  const running = await caller(t, { orders: ORDERS });
  t.equal((await call(running, "orders")).response?.status, 200);
  await editConfig(running, (config) => (config.identity.deny = { spiffeIds: [orders.spiffeId] }));
  const refused = sidecarError(await call(running, "orders"));
  t.equal(refused.reason, "upstream_tls_error");
  t.match(refused.error, /revoked/);
});

t.test(
  "a smaller limits.maxHeaderSize applies to the app's next connection to the outbound port",
  async (t) => {
    const running = await caller(t, { orders: ORDERS });
    const big = [`X-Big: ${"b".repeat(4000)}`];
    t.equal(
      (await appRequest("http://orders/big", { proxy: running.proxyUrl, headers: big })).response?.status,
      200,
    );
    await editConfig(running, (config) => (config.limits = { maxHeaderSize: "2KiB" }));
    t.equal(
      (await appRequest("http://orders/big", { proxy: running.proxyUrl, headers: big })).response?.status,
      431,
    );
  },
);
