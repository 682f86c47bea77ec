// A drain over HTTP/2: GOAWAY at once, the streams in flight finish, and the drain ends when they have.
import { once } from "node:events";
import http2 from "node:http2";
import t from "tap";
import { startApp } from "./helpers/app.ts";
import { inboundAddress, startCaller, startUpstream } from "./helpers/outbound.ts";
import { createTestPki } from "./helpers/pki.ts";
import { waitForLog } from "./helpers/sidecar.ts";

const pki = await createTestPki();
t.teardown(() => pki.cleanup());
const frontend = await pki.identity("frontend");
const orders = await pki.identity("orders");
const app = await startApp();
t.teardown(() => app.stop());

t.test(
  "a draining inbound finishes the HTTP/2 streams in flight, then stops without waiting for the deadline",
  async (t) => {
    const upstream = await startUpstream(pki, orders, app, [frontend.spiffeId]);
    const caller = await startCaller(pki, frontend, {
      orders: { address: inboundAddress(upstream), identity: orders.spiffeId, listen: "127.0.0.1:0" },
    });
    t.teardown(() => caller.stop());
    const session = http2.connect(`http://127.0.0.1:${caller.sidecar.addresses().upstreams!.orders!.port}`);
    session.on("error", () => {});
    t.teardown(() => session.close());
    await once(session, "connect");
    const slow = session.request({ ":path": "/slow?ms=600" });
    let body = "";
    slow.on("data", (chunk: Buffer) => {
      body += chunk;
    });
    const answered = new Promise<number>((resolve) =>
      slow.on("response", (headers) => resolve(Number(headers[":status"]))),
    );
    // Until the request is at the app: the upstream sidecar has logged nothing yet, but holds one connection.
    while (upstream.sidecar.inboundStats()!.connections === 0)
      await new Promise((resolve) => setTimeout(resolve, 10));
    await new Promise((resolve) => setTimeout(resolve, 150));
    const started = Date.now();
    const stopped = upstream.sidecar.stop(10_000);
    t.equal(await answered, 200, "the request in flight was answered");
    await once(slow, "end");
    t.match(body, /"slept":600/);
    await stopped;
    const took = Date.now() - started;
    t.ok(took < 5000, `the drain ended with its last stream (${took} ms), not at its 10 s deadline`);
    const summary = await waitForLog(upstream.logs, (line) => line.msg === "mtlsd stopped");
    t.ok(Number(summary.in_flight) >= 1, "it was counted in flight");
    t.equal(summary.cut, 0, "nothing was cut");
  },
);
