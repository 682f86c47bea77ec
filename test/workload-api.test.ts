// The Workload API as identity source: a real gRPC server on a unix socket hands out SVIDs, pushes, dies, comes back.
import { writeFile } from "node:fs/promises";
import path from "node:path";
import * as grpc from "@grpc/grpc-js";
import t from "tap";
import { request } from "undici";
import { parseConfig } from "../src/config/index.ts";
import { Sidecar } from "../src/sidecar.ts";
import { startApp } from "./helpers/app.ts";
import { spawnCli, waitForExit } from "./helpers/cli.ts";
import { mtlsClient } from "./helpers/clients.ts";
import { createTestPki } from "./helpers/pki.ts";
import { reloadCount, waitFor } from "./helpers/rotation.ts";
import { captureLogs, type LogLine, startSidecar, waitForLog } from "./helpers/sidecar.ts";
import { messageFor, type SvidPems, WorkloadApiServer } from "./helpers/workload-api.ts";

const pki = await createTestPki();
t.teardown(() => pki.cleanup());
const app = await startApp();
t.teardown(() => app.stop());
const frontend = await pki.identity("frontend");
const unused = await pki.identity("unused");
const FAST = { initialMs: 50, maxMs: 200 };

async function svid(name: string): Promise<SvidPems> {
  const issued = await pki.identity(name);
  return {
    spiffeId: issued.spiffeId,
    chainPem: issued.chainPem,
    keyPem: issued.keyPem,
    bundlePem: pki.bundlePem,
  };
}

let sockets = 0;
const socketPath = () => path.join(pki.dir, `agent-${++sockets}.sock`);

/** An inbound sidecar whose identity comes from `server`, allowing frontend. */
function ordersSidecar(server: WorkloadApiServer, workloadApi: Record<string, unknown> = {}) {
  return startSidecar(
    pki,
    unused,
    {
      identity: { workloadApi: { socket: server.socket, ...workloadApi }, trustDomain: pki.trustDomain },
      inbound: {
        listen: "127.0.0.1:0",
        app: app.url,
        policy: { rules: [{ name: "frontend", action: "allow", from: [frontend.spiffeId] }] },
      },
    },
    { workloadApiBackoff: FAST },
  );
}

/** One mTLS request as frontend, on a new connection. */
async function call(port: number): Promise<{ status: number }> {
  const client = mtlsClient(`https://localhost:${port}`, {
    ca: pki.bundlePem,
    cert: frontend.chainPem,
    key: frontend.keyPem,
  });
  try {
    const response = await client.client.request({ method: "GET", path: "/v1/orders" });
    await response.body.text();
    return { status: response.statusCode };
  } finally {
    await client.close();
  }
}

async function status(adminUrl: string): Promise<Record<string, unknown>> {
  const response = await request(`${adminUrl}/status`);
  return (await response.body.json()) as Record<string, unknown>;
}

t.test("a sidecar takes its identity from the Workload API and serves peers with it", async (t) => {
  const orders = await svid("orders");
  const server = await WorkloadApiServer.start(socketPath(), { svids: [orders] });
  t.teardown(() => server.stop());
  const sidecar = await ordersSidecar(server);
  t.teardown(() => sidecar.stop());
  t.equal(sidecar.sidecar.store.current.spiffeId, orders.spiffeId, "the SVID's identity");
  t.equal((await call(sidecar.inboundPort)).status, 200, "a peer gets through");
  const document = await status(sidecar.adminUrl);
  t.equal(document.source, "workload_api");
  t.match(document.trustDomains, [{ trustDomain: pki.trustDomain, bundle: [{ sha256: /^[0-9a-f]{64}$/ }] }]);
  t.match(document.reload, { result: "success", trigger: "startup" });
  t.ok(server.calls >= 1 && server.streams === 1, "one stream stays open for updates");
  const started = await waitForLog(sidecar.logs, (line) => line.msg === "mtlsd started");
  t.equal(started.source, "workload_api");
});

t.test("the SVID named by workloadApi.spiffeId is used when several are offered", async (t) => {
  const other = await svid("other");
  const orders = await svid("orders");
  const server = await WorkloadApiServer.start(socketPath(), { svids: [other, orders] });
  t.teardown(() => server.stop());
  const sidecar = await ordersSidecar(server, { spiffeId: orders.spiffeId });
  t.teardown(() => sidecar.stop());
  t.equal(sidecar.sidecar.store.current.spiffeId, orders.spiffeId);
});

t.test("/readyz answers 503 until the first X509-SVID arrives, then 200", async (t) => {
  const server = await WorkloadApiServer.start(socketPath());
  t.teardown(() => server.stop());
  const { lines, stream } = captureLogs();
  const text = JSON.stringify({
    identity: { workloadApi: { socket: server.socket }, trustDomain: pki.trustDomain },
    inbound: { listen: "127.0.0.1:0", app: app.url },
    admin: { listen: "127.0.0.1:0" },
    log: { level: "debug" },
  });
  const starting = Sidecar.start(parseConfig(text, path.join(pki.dir, "waiting.yaml")), {
    logStream: stream,
    workloadApiBackoff: FAST,
  });
  const up = await waitForLog(lines, (line) => typeof line.admin === "string");
  const adminUrl = `http://${up.admin}`;
  const waiting = await request(`${adminUrl}/readyz`);
  t.equal(waiting.statusCode, 503, "not ready without an SVID");
  t.match(await waiting.body.json(), { ready: false, failed: ["credentials"] });
  t.equal((await request(`${adminUrl}/healthz`)).statusCode, 200, "alive meanwhile");
  const early = await request(`${adminUrl}/status`);
  t.equal(early.statusCode, 503);
  await early.body.dump();
  await waitForLog(lines, (line) => line.msg === "waiting for the Workload API");

  server.push({ svids: [await svid("orders")] });
  const sidecar = await starting;
  t.teardown(() => sidecar.stop());
  t.equal(sidecar.addresses().admin?.port, Number(String(up.admin).split(":")[1]), "the same admin port");
  const ready = await request(`${adminUrl}/readyz`);
  const body = (await ready.body.json()) as { checks: Record<string, { ok: boolean }> };
  t.ok(body.checks.credentials?.ok, "credentials are in");
  t.equal((await status(adminUrl)).source, "workload_api");
});

t.test("a bad SVID push is refused: the old one stays in use and the failure is counted", async (t) => {
  const orders = await svid("orders");
  const server = await WorkloadApiServer.start(socketPath(), { svids: [orders] });
  t.teardown(() => server.stop());
  const sidecar = await ordersSidecar(server);
  t.teardown(() => sidecar.stop());
  const serial = sidecar.sidecar.store.current.leaf.serialHex;

  // The key of another SVID: a push that a careless issuer could make.
  const other = await svid("orders-other");
  server.pushMessage(messageFor({ svids: [{ ...orders, keyPem: other.keyPem }] }));
  await waitFor("the refusal", async () => (await reloadCount(sidecar.sidecar, "failure")) === 1);
  t.equal(sidecar.sidecar.store.current.leaf.serialHex, serial, "the old certificate is kept");
  const refused = await waitForLog(
    sidecar.logs,
    (line) => line.msg === "credential update from the Workload API refused; keeping the current credentials",
  );
  t.equal(refused.code, "CERT_KEY_MISMATCH");
  t.match(refused.error, /the private key of the X509-SVID .* from the Workload API/);
  t.match((await status(sidecar.adminUrl)).reload, {
    result: "failure",
    error: { code: "CERT_KEY_MISMATCH" },
  });
  t.equal((await call(sidecar.inboundPort)).status, 200, "traffic still flows");

  const next = await svid("orders");
  server.push({ svids: [next] });
  await waitFor("the good push", () => sidecar.sidecar.store.current.chainPem === next.chainPem);
  t.equal(await reloadCount(sidecar.sidecar, "success"), 1, "the next good push is installed");
});

t.test("while the Workload API is down the sidecar keeps serving, says so, and reconnects", async (t) => {
  const server = await WorkloadApiServer.start(socketPath(), { svids: [await svid("orders")] });
  t.teardown(() => server.stop());
  const sidecar = await ordersSidecar(server);
  t.teardown(() => sidecar.stop());

  await server.stop();
  const down = await waitForLog(
    sidecar.logs,
    (line) => line.msg === "Workload API stream is down; keeping the current credentials and reconnecting",
  );
  t.equal(down.code, "WORKLOAD_API_UNAVAILABLE");
  t.equal(await reloadCount(sidecar.sidecar, "failure"), 1, "counted once");
  t.match((await status(sidecar.adminUrl)).reload, {
    result: "failure",
    trigger: "workload_api",
    error: { code: "WORKLOAD_API_UNAVAILABLE" },
  });
  t.equal((await call(sidecar.inboundPort)).status, 200, "serving with what it has");

  await server.restart();
  await waitForLog(sidecar.logs, (line: LogLine) => line.msg === "Workload API stream is up again", 5000);
  await waitFor("/status to recover", async () => (await status(sidecar.adminUrl)).reload);
  t.match((await status(sidecar.adminUrl)).reload, { result: "success" });
  const next = await svid("orders");
  server.push({ svids: [next] });
  await waitFor(
    "the rotation after the outage",
    () => sidecar.sidecar.store.current.chainPem === next.chainPem,
  );
  t.pass("rotations arrive again");
});

/** Starts a sidecar expected to fail; returns the error. */
async function startFails(server: { socket: string }, workloadApi: Record<string, unknown> = {}) {
  const text = JSON.stringify({
    identity: {
      workloadApi: { socket: server.socket, startupTimeout: "500ms", ...workloadApi },
      trustDomain: pki.trustDomain,
    },
    inbound: { listen: "127.0.0.1:0", app: app.url },
    admin: { listen: "127.0.0.1:0" },
  });
  const { stream } = captureLogs();
  try {
    const sidecar = await Sidecar.start(parseConfig(text, path.join(pki.dir, "failing.yaml")), {
      logStream: stream,
      workloadApiBackoff: FAST,
    });
    await sidecar.stop();
    return undefined;
  } catch (error) {
    return error as Error & { code?: string };
  }
}

t.test("a socket that does not exist is named in the startup error", async (t) => {
  const missing = path.join(pki.dir, "no-agent-here.sock");
  const error = await startFails({ socket: `unix://${missing}` });
  t.equal(error?.code, "WORKLOAD_API_UNAVAILABLE");
  t.match(error?.message, `no such socket ${missing}`);
  t.match(error?.message, "identity.workloadApi.startupTimeout");
});

t.test("a server that offers no SVID with the configured ID is a startup error naming both", async (t) => {
  const server = await WorkloadApiServer.start(socketPath(), { svids: [await svid("other")] });
  t.teardown(() => server.stop());
  const wanted = `spiffe://${pki.trustDomain}/ns/orders/sa/orders`;
  const error = await startFails(server, { spiffeId: wanted });
  t.equal(error?.code, "WORKLOAD_API_NO_SVID");
  t.match(error?.message, `offered no X509-SVID for ${wanted}`);
  t.match(error?.message, "/ns/other/sa/other");
});

t.test("an SVID outside our trust domain is refused at startup", async (t) => {
  const stranger = await createTestPki("stranger.example");
  t.teardown(() => stranger.cleanup());
  const foreign = await stranger.identity("orders");
  const server = await WorkloadApiServer.start(socketPath(), {
    svids: [
      {
        spiffeId: foreign.spiffeId,
        chainPem: foreign.chainPem,
        keyPem: foreign.keyPem,
        bundlePem: stranger.bundlePem,
      },
    ],
  });
  t.teardown(() => server.stop());
  const error = await startFails(server);
  t.equal(error?.code, "WRONG_TRUST_DOMAIN");
  t.match(error?.message, "stranger.example");
});

t.test("SIGHUP with nothing but the Workload API says there is nothing to reload", async (t) => {
  const server = await WorkloadApiServer.start(socketPath(), { svids: [await svid("orders")] });
  t.teardown(() => server.stop());
  const sidecar = await ordersSidecar(server);
  t.teardown(() => sidecar.stop());
  t.same(await sidecar.sidecar.reloadCredentials(), { result: "unchanged" });
  await waitForLog(sidecar.logs, (line) => /nothing to reload/.test(line.msg));
});

t.test("a server that refuses the request as invalid fails startup at once, not after retries", async (t) => {
  const server = await WorkloadApiServer.start(socketPath(), { svids: [await svid("orders")] });
  t.teardown(() => server.stop());
  server.refuseWith = grpc.status.INVALID_ARGUMENT;
  const started = Date.now();
  const error = await startFails(server, { startupTimeout: "10s" });
  t.equal(error?.code, "WORKLOAD_API_REFUSED");
  t.match(error?.message, "InvalidArgument");
  t.ok(Date.now() - started < 5000, "without waiting out the startup timeout");
  t.equal(server.calls, 1, "and without retrying");
});

t.test("a stream the server ends is reopened; an InvalidArgument after that stops the retries", async (t) => {
  const server = await WorkloadApiServer.start(socketPath(), { svids: [await svid("orders")] });
  t.teardown(() => server.stop());
  const sidecar = await ordersSidecar(server);
  t.teardown(() => sidecar.stop());
  server.endStreams();
  const ended = await waitForLog(sidecar.logs, (line) => /stream is down/.test(line.msg));
  t.match(ended.error, "ended the stream");
  await waitForLog(sidecar.logs, (line) => line.msg === "Workload API stream is up again");

  server.refuseWith = grpc.status.INVALID_ARGUMENT;
  server.endStreams();
  const refused = await waitForLog(
    sidecar.logs,
    (line) => line.msg === "Workload API stream refused; keeping the current credentials, not retrying",
  );
  t.equal(refused.code, "WORKLOAD_API_REFUSED");
  const calls = server.calls;
  await new Promise((resolve) => setTimeout(resolve, 500));
  t.equal(server.calls, calls, "no further calls");
  t.equal((await call(sidecar.inboundPort)).status, 200, "still serving");
});

t.test("a message without an SVID, or with a bad federated bundle, is refused like a bad SVID", async (t) => {
  const partner = await createTestPki("partner.example");
  t.teardown(() => partner.cleanup());
  const orders = await svid("orders");
  const server = await WorkloadApiServer.start(socketPath(), { svids: [orders] });
  t.teardown(() => server.stop());
  const sidecar = await startSidecar(
    pki,
    unused,
    {
      identity: {
        workloadApi: { socket: server.socket },
        trustDomain: pki.trustDomain,
        federation: [{ trustDomain: "partner.example" }],
      },
      inbound: { listen: "127.0.0.1:0", app: app.url },
    },
    { workloadApiBackoff: FAST },
  );
  t.teardown(() => sidecar.stop());
  t.same(sidecar.sidecar.store.current.federation[0]?.roots, [], "no partner bundle delivered yet");

  const refusals: [string, () => void, string][] = [
    [
      "no SVID",
      () => server.pushMessage({ ...messageFor({ svids: [orders] }), svids: [] }),
      "no X509-SVID in it",
    ],
    [
      "a federated bundle that is not DER",
      () =>
        server.pushMessage({
          ...messageFor({ svids: [orders] }),
          federated_bundles: { "spiffe://partner.example": Buffer.from("not DER at all") },
        }),
      "not DER",
    ],
    [
      "an empty federated bundle",
      () =>
        server.pushMessage({
          ...messageFor({ svids: [orders] }),
          federated_bundles: { "spiffe://partner.example": Buffer.alloc(0) },
        }),
      "is empty",
    ],
  ];
  for (const [index, [what, push, detail]] of refusals.entries()) {
    push();
    await waitFor(what, async () => (await reloadCount(sidecar.sidecar, "failure")) === index + 1);
    t.match(sidecar.sidecar.reloadStatus().error?.message, detail, `${what} is refused`);
  }
  server.push({ svids: [orders], federated: { "partner.example": partner.bundlePem } });
  await waitFor("the partner bundle", () => sidecar.sidecar.store.current.federation[0]?.roots.length === 1);
  t.match((await status(sidecar.adminUrl)).trustDomains, [
    { trustDomain: pki.trustDomain },
    { trustDomain: "partner.example", bundle: [{ subject: /partner\.example/ }] },
  ]);
});

t.test("a federated bundle file beside the Workload API is re-read on SIGHUP and by the poll", async (t) => {
  const partner = await createTestPki("partner.example");
  t.teardown(() => partner.cleanup());
  const bundle = path.join(partner.dir, "partner-ca.crt");
  await writeFile(bundle, partner.bundlePem);
  const server = await WorkloadApiServer.start(socketPath(), { svids: [await svid("orders")] });
  t.teardown(() => server.stop());
  const sidecar = await startSidecar(
    pki,
    unused,
    {
      identity: {
        workloadApi: { socket: server.socket },
        trustDomain: pki.trustDomain,
        federation: [{ trustDomain: "partner.example", trustBundle: bundle }],
        reload: { interval: "200ms" },
      },
      inbound: { listen: "127.0.0.1:0", app: app.url },
    },
    { workloadApiBackoff: FAST },
  );
  t.teardown(() => sidecar.stop());
  t.same(await sidecar.sidecar.reloadCredentials(), { result: "unchanged" }, "nothing changed yet");
  const next = await createTestPki("partner.example");
  t.teardown(() => next.cleanup());
  await writeFile(bundle, partner.bundlePem + next.bundlePem);
  t.match(await sidecar.sidecar.reloadCredentials(), { result: "success" }, "SIGHUP picks up the new root");
  t.equal(sidecar.sidecar.store.current.federation[0]?.roots.length, 2);
  await writeFile(bundle, next.bundlePem);
  await waitFor("the poll", () => sidecar.sidecar.store.current.federation[0]?.roots.length === 1);
  t.pass("the polling backstop picks up the next change");
});

t.test("a tcp endpoint with nothing listening is named in the startup error", async (t) => {
  for (const socket of ["tcp://127.0.0.1:1", "tcp://[::1]:1"]) {
    const error = await startFails({ socket });
    t.equal(error?.code, "WORKLOAD_API_UNAVAILABLE", socket);
    t.match(error?.message, `the Workload API at ${socket} is unavailable`);
  }
});

t.test("SIGTERM while mtlsd waits for its first SVID ends it at once", async (t) => {
  const server = await WorkloadApiServer.start(socketPath());
  t.teardown(() => server.stop());
  const file = path.join(pki.dir, "waiting-run.yaml");
  await writeFile(
    file,
    JSON.stringify({
      identity: {
        workloadApi: { socket: server.socket, startupTimeout: "1m" },
        trustDomain: pki.trustDomain,
      },
      inbound: { listen: "127.0.0.1:0", app: app.url },
      admin: { listen: "127.0.0.1:0" },
    }),
  );
  const child = spawnCli(["run", "-c", file]);
  let stderr = "";
  child.stderr!.setEncoding("utf8").on("data", (chunk: string) => {
    stderr += chunk;
  });
  await waitFor("the wait to begin", () => child.output().includes("waiting for the Workload API"));
  const signalled = Date.now();
  child.kill("SIGTERM");
  t.equal(await waitForExit(child, "mtlsd run", 5000), 0, "exits 0: nothing was serving yet");
  t.ok(Date.now() - signalled < 4000, "without waiting out the startup timeout");
  t.match(stderr, "SIGTERM while starting: stopped before serving");
});
