// Two sidecars on one Workload API under steady load: rotations, a CA drill, a bad push and an outage fail nothing.
import path from "node:path";
import t from "tap";
import {
  createIntermediateCA,
  createRootCA,
  type IssuedCert,
  type Issuer,
  issueLeaf,
} from "../src/pki/index.ts";
import type { Sidecar } from "../src/sidecar.ts";
import { startApp } from "./helpers/app.ts";
import { createTestPki } from "./helpers/pki.ts";
import { reloadCount, startLoad, waitFor } from "./helpers/rotation.ts";
import { startSidecar, waitForLog } from "./helpers/sidecar.ts";
import { messageFor, WorkloadApiServer, type WorkloadState } from "./helpers/workload-api.ts";

const ROTATIONS = 10;
type TestContext = Parameters<Parameters<typeof t.test>[0]>[0];

const pki = await createTestPki();
t.teardown(() => pki.cleanup());
const app = await startApp();
t.teardown(() => app.stop());
const ORDERS = `spiffe://${pki.trustDomain}/ns/orders/sa/orders`;
const FRONTEND = `spiffe://${pki.trustDomain}/ns/frontend/sa/frontend`;

/** What the agent hands out now: each workload's leaf, from `issuer`, with `bundlePem` as our roots. */
let issuer: Issuer = pki.intermediate;
let bundlePem = pki.bundlePem;
let ordersLeaf: IssuedCert;
let frontendLeaf: IssuedCert;
const issue = (spiffeId: string) => issueLeaf(issuer, { spiffeId, dnsNames: ["localhost"] });
const state = (): WorkloadState => ({
  svids: [
    { spiffeId: ORDERS, chainPem: ordersLeaf.chainPem, keyPem: ordersLeaf.keyPem, bundlePem },
    { spiffeId: FRONTEND, chainPem: frontendLeaf.chainPem, keyPem: frontendLeaf.keyPem, bundlePem },
  ],
});
ordersLeaf = await issue(ORDERS);
frontendLeaf = await issue(FRONTEND);

// One agent on the node serves both workloads; each sidecar takes its own SVID by ID.
const agent = await WorkloadApiServer.start(path.join(pki.dir, "agent.sock"), state());
t.teardown(() => agent.stop());
const unused = await pki.identity("unused");
const backoff = { workloadApiBackoff: { initialMs: 100, maxMs: 1000 } };
const orders = await startSidecar(
  pki,
  unused,
  {
    identity: { workloadApi: { socket: agent.socket, spiffeId: ORDERS }, trustDomain: pki.trustDomain },
    inbound: {
      listen: "127.0.0.1:0",
      app: app.url,
      policy: { rules: [{ name: "frontend", action: "allow", from: [FRONTEND] }] },
    },
    log: { level: "info" },
  },
  backoff,
);
t.teardown(() => orders.stop());
const frontend = await startSidecar(
  pki,
  unused,
  {
    identity: { workloadApi: { socket: agent.socket, spiffeId: FRONTEND }, trustDomain: pki.trustDomain },
    outbound: {
      listen: "127.0.0.1:0",
      upstreams: { orders: { address: `127.0.0.1:${orders.inboundPort}`, identity: ORDERS } },
    },
    log: { level: "info" },
  },
  backoff,
);
t.teardown(() => frontend.stop());
const outboundUrl = `http://127.0.0.1:${frontend.sidecar.addresses().outbound!.port}`;

const load = startLoad(outboundUrl, { concurrency: 4, host: "orders", path: "/v1/orders" });
let stopped = false;
t.teardown(async () => {
  if (!stopped) await load.stop();
});
await waitFor("the load to get going", () => load.total() >= 50);

/** Pushes the current state and waits until both sidecars present what it holds, then for traffic on it. */
async function pushAndWait(what: string): Promise<void> {
  agent.push(state());
  await waitFor(`${what}: both sidecars to install it`, () =>
    [
      [orders.sidecar, ordersLeaf],
      [frontend.sidecar, frontendLeaf],
    ].every(
      ([sidecar, leaf]) =>
        (sidecar as Sidecar).store.current.chainPem === (leaf as IssuedCert).chainPem &&
        (sidecar as Sidecar).store.current.bundlePem === bundlePem,
    ),
  );
  await flowing(what);
}

/** Waits until 20 more requests have been answered. */
async function flowing(what: string): Promise<void> {
  const before = load.total();
  await waitFor(`requests after ${what}`, () => load.total() >= before + 20);
}

/** Counts the requests and failures of one scenario, and reports them. */
async function scenario(t: TestContext, name: string, run: () => Promise<void>): Promise<void> {
  const started = { total: load.total(), failures: load.failures().length };
  await run();
  const requests = load.total() - started.total;
  const failures = load.failures().length - started.failures;
  t.comment(`${name}: ${requests} requests, ${failures} failed`);
  t.equal(failures, 0, `${name}: no request failed (${requests} requests)`);
}

t.test(`${ROTATIONS} SVID rotations of both sidecars under load fail no request`, async (t) => {
  await scenario(t, `${ROTATIONS} rotations`, async () => {
    for (let rotation = 1; rotation <= ROTATIONS; rotation++) {
      ordersLeaf = await issue(ORDERS);
      frontendLeaf = await issue(FRONTEND);
      await pushAndWait(`rotation ${rotation}`);
    }
  });
  t.equal(await reloadCount(orders.sidecar, "success"), ROTATIONS, "orders installed every push");
  t.equal(await reloadCount(frontend.sidecar, "success"), ROTATIONS, "frontend installed every push");
  const handshakes = frontend.sidecar.upstreamStats().orders!.handshakes;
  t.ok(
    handshakes.full > ROTATIONS,
    `each rotation made new connections (${handshakes.full} full handshakes)`,
  );
});

t.test("a CA rotation drill through the Workload API fails no request", async (t) => {
  const newRoot = await createRootCA({ trustDomain: pki.trustDomain });
  const newIntermediate = await createIntermediateCA(newRoot);
  await scenario(t, "CA rotation drill", async () => {
    bundlePem = pki.bundlePem + newRoot.certPem;
    await pushAndWait("the new root joining the bundle");
    issuer = newIntermediate;
    ordersLeaf = await issue(ORDERS);
    frontendLeaf = await issue(FRONTEND);
    await pushAndWait("leaves from the new CA");
    bundlePem = newRoot.certPem;
    await pushAndWait("the old root leaving the bundle");
  });
  t.equal(orders.sidecar.store.current.trustBundle.length, 1, "orders trusts the new root alone");
});

t.test("a bad SVID push is refused while traffic continues", async (t) => {
  await scenario(t, "bad push", async () => {
    const wrongKey = await issue(ORDERS);
    const bad = messageFor(state());
    bad.svids[0] = {
      ...messageFor({ svids: [{ ...state().svids[0]!, keyPem: wrongKey.keyPem }] }).svids[0]!,
    };
    agent.pushMessage(bad);
    await waitFor("orders to refuse it", async () => (await reloadCount(orders.sidecar, "failure")) === 1);
    t.equal(orders.sidecar.store.current.chainPem, ordersLeaf.chainPem, "orders keeps its SVID");
    await flowing("the bad push");
    ordersLeaf = await issue(ORDERS);
    await pushAndWait("the good push after it");
  });
  t.equal(await reloadCount(frontend.sidecar, "failure"), 0, "frontend's own SVID was untouched");
});

t.test("traffic continues while the Workload API is down, and rotations resume after", async (t) => {
  await scenario(t, "outage", async () => {
    await agent.stop();
    for (const sidecar of [orders, frontend]) {
      await waitForLog(sidecar.logs, (line) => line.msg.startsWith("Workload API stream is down"));
    }
    // A second and a half without the agent, under load.
    const outageStarted = Date.now();
    await waitFor("the outage to last", () => Date.now() - outageStarted >= 1500, 5000);
    await flowing("the outage");
    t.match(orders.sidecar.reloadStatus(), {
      result: "failure",
      error: { code: "WORKLOAD_API_UNAVAILABLE" },
    });
    await agent.restart();
    for (const sidecar of [orders, frontend]) {
      await waitForLog(sidecar.logs, (line) => line.msg === "Workload API stream is up again", 10_000);
    }
    ordersLeaf = await issue(ORDERS);
    frontendLeaf = await issue(FRONTEND);
    await pushAndWait("the rotation after the outage");
  });
  t.equal(await reloadCount(orders.sidecar, "failure"), 2, "orders counted the bad push and the outage");
  t.equal(await reloadCount(frontend.sidecar, "failure"), 1, "frontend counted the outage");
});

t.test("in all, not one request failed", async (t) => {
  const summary = await load.stop();
  stopped = true;
  t.comment(`${summary.total} requests in all, ${summary.failures.length} failed`);
  t.same(summary.failures, []);
});
