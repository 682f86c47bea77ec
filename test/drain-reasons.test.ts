// Requests still in flight when a drain's deadline passes are logged as cut by the drain, not as clients leaving.
import http2 from "node:http2";
import t from "tap";
import { startGateApp } from "./helpers/gate-app.ts";
import { createTestPki } from "./helpers/pki.ts";
import { type ClientTls, RawConnection, rawGet } from "./helpers/raw-http.ts";
import { startSidecar, waitForLog } from "./helpers/sidecar.ts";

const pki = await createTestPki();
t.teardown(() => pki.cleanup());
const orders = await pki.identity("orders");
const frontend = await pki.identity("frontend");
const client: ClientTls = { ca: pki.bundlePem, cert: frontend.chainPem, key: frontend.keyPem };

/** The subtest handed to a `t.test` callback. */
type TestContext = Parameters<Parameters<typeof t.test>[0]>[0];

async function gatedSidecar(t: TestContext) {
  const gate = await startGateApp();
  t.teardown(() => gate.close());
  const running = await startSidecar(pki, orders, {
    inbound: {
      listen: "127.0.0.1:0",
      app: gate.url,
      policy: { rules: [{ name: "frontend", action: "allow", from: [frontend.spiffeId] }] },
    },
  });
  t.teardown(() => running.stop());
  return { gate, running };
}

t.test("an HTTP/1.1 request cut at the drain deadline is logged with reason draining", async (t) => {
  const { gate, running } = await gatedSidecar(t);
  const connection = await RawConnection.open(running.inboundPort, client);
  t.teardown(() => connection.close());
  connection.write(rawGet("/gate/h1"));
  await gate.arrived();

  await running.sidecar.stop(100);
  const line = await waitForLog(
    running.logs,
    (entry) => entry.msg === "request" && entry.path === "/gate/h1",
  );
  t.match(line, { level: "warn", reason: "draining", status: 503, error: /drain deadline/ });
  t.notOk(
    running.logs.some((entry) => entry.reason === "client_closed"),
    "not logged as the client closing",
  );
  t.equal((await connection.read(1, 2000)).closed, true, "the connection was cut");
});

t.test("an HTTP/2 stream cut at the drain deadline is logged with reason draining", async (t) => {
  const { gate, running } = await gatedSidecar(t);
  const session = http2.connect(running.inboundUrl, client);
  t.teardown(() => session.destroy());
  session.on("error", () => {});
  const stream = session.request({ ":path": "/gate/h2" });
  stream.on("error", () => {});
  stream.end();
  await gate.arrived();

  await running.sidecar.stop(100);
  const line = await waitForLog(
    running.logs,
    (entry) => entry.msg === "request" && entry.path === "/gate/h2",
  );
  t.match(line, { level: "warn", protocol: "h2", reason: "draining", status: 503 });
  t.notOk(running.logs.some((entry) => entry.reason === "client_closed"));
});
