// Streams that live for minutes — a gRPC call idle for 10 minutes, server-sent events for 3 — are never cut by
// request timeouts: only a stream's own idle limit (streamIdleTimeout) ends one. This file takes ~10 minutes
// of wall time, spent waiting; it runs beside the rest of the suite.
import t from "tap";
import { startApp } from "./helpers/app.ts";
import { echoClient, grpc, type Note } from "./helpers/grpc.ts";
import { inboundAddress } from "./helpers/outbound.ts";
import { createTestPki } from "./helpers/pki.ts";
import { startSidecar, waitForLog } from "./helpers/sidecar.ts";

const MINUTE = 60_000;
const GRPC_IDLE = Number(process.env.MTLSD_TEST_IDLE_MS ?? 10 * MINUTE);
t.setTimeout(GRPC_IDLE + 3 * MINUTE);

const pki = await createTestPki();
t.teardown(() => pki.cleanup());
const frontend = await pki.identity("frontend");
const orders = await pki.identity("orders");
const grpcApp = await startApp(0, "grpc-app.ts");
t.teardown(() => grpcApp.stop());
const httpApp = await startApp();
t.teardown(() => httpApp.stop());

// Every request timeout is far shorter than the streams' lives; only the idle limit is long enough.
const limits = { requestTimeout: "20s", headersTimeout: "5s", keepAliveTimeout: "30s" };
const allow = { rules: [{ name: "frontend", action: "allow", from: [frontend.spiffeId] }] };
const grpcSidecar = await startSidecar(pki, orders, {
  inbound: {
    listen: "127.0.0.1:0",
    app: grpcApp.url,
    appProtocol: "h2c",
    appTimeout: "20s",
    streamIdleTimeout: "11m",
    policy: allow,
  },
  limits,
});
t.teardown(() => grpcSidecar.stop());
const httpSidecar = await startSidecar(pki, orders, {
  inbound: { listen: "127.0.0.1:0", app: httpApp.url, appTimeout: "20s", policy: allow },
  limits,
});
t.teardown(() => httpSidecar.stop());
// The outbound's own idle limit too: its default (5m) would end the idle call halfway.
const caller = await startSidecar(pki, frontend, {
  outbound: {
    listen: "127.0.0.1:0",
    streamIdleTimeout: "11m",
    upstreams: {
      orders: {
        address: inboundAddress(grpcSidecar),
        identity: orders.spiffeId,
        listen: "127.0.0.1:0",
        timeout: "20s",
      },
      events: {
        address: inboundAddress(httpSidecar),
        identity: orders.spiffeId,
        listen: "127.0.0.1:0",
        timeout: "20s",
      },
    },
  },
  limits,
});
t.teardown(() => caller.stop());
const ports = caller.sidecar.addresses().upstreams!;

t.test("a gRPC call idle for 10 minutes, then active, and SSE for 3 minutes, are never cut", async (t) => {
  const idleCall = (async () => {
    const client = echoClient(`127.0.0.1:${ports.orders!.port}`);
    try {
      const call = client.Chat();
      const next = () =>
        new Promise<string>((resolve) => call.once("data", (note: Note) => resolve(note.text)));
      const first = next();
      call.write({ text: "before" });
      t.equal(await first, "re: before");
      await new Promise((resolve) => setTimeout(resolve, GRPC_IDLE));
      const second = next();
      call.write({ text: "after ten idle minutes" });
      t.equal(await second, "re: after ten idle minutes", "the stream was still open and both ways worked");
      const ended = new Promise<grpc.StatusObject>((resolve) => call.on("status", resolve));
      call.end();
      t.equal((await ended).code, grpc.status.OK);
    } finally {
      client.close();
    }
  })();
  const events = (async () => {
    // An event every 50 s for 3.3 minutes: each gap longer than requestTimeout, headersTimeout and appTimeout.
    const response = await fetch(
      `http://127.0.0.1:${ports.events!.port}/events?count=4&every=${Number(process.env.MTLSD_TEST_EVENT_GAP_MS ?? 50_000)}`,
    );
    const text = await response.text();
    t.equal(text.match(/^data: /gm)?.length, 4, "every event of a 3-minute stream arrived");
  })();
  await Promise.all([idleCall, events]);
  const line = await waitForLog(
    grpcSidecar.logs,
    (l) => l.msg === "request" && l.path === "/mtlsd.test.Echo/Chat",
  );
  t.match(line, { status: 200, grpc_status: "0" });
  t.ok(Number(line.duration_ms) >= GRPC_IDLE, `logged once, at its end, after ${line.duration_ms} ms`);
});
