// When the app is down or too slow, callers get 502/504 with a reason instead of a hang or a reset.
import { createServer } from "node:net";
import t from "tap";
import { Client } from "undici";
import { startApp } from "./helpers/app.ts";
import { createTestPki } from "./helpers/pki.ts";
import { startSidecar } from "./helpers/sidecar.ts";

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as { port: number };
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

t.test("app failures become sidecar responses with stable reasons", async (t) => {
  const pki = await createTestPki();
  t.teardown(() => pki.cleanup());
  const orders = await pki.identity("orders");
  const frontend = await pki.identity("frontend");
  const policy = { rules: [{ name: "frontend", action: "allow", from: [frontend.spiffeId] }] };
  const connect = { cert: frontend.chainPem, key: frontend.keyPem, ca: pki.bundlePem };

  t.test("an app that is not running gives 502 upstream_unreachable", async (t) => {
    const sidecar = await startSidecar(pki, orders, {
      inbound: { listen: "127.0.0.1:0", app: `http://127.0.0.1:${await freePort()}`, policy },
    });
    t.teardown(() => sidecar.stop());
    const client = new Client(sidecar.inboundUrl, { connect });
    t.teardown(() => client.close());
    const response = await client.request({ path: "/v1/orders", method: "GET" });
    const body = (await response.body.json()) as { reason: string; error: string };
    t.equal(response.statusCode, 502);
    t.equal(response.headers["x-mtlsd-reason"], "upstream_unreachable");
    t.equal(body.reason, "upstream_unreachable");
    t.match(body.error, /ECONNREFUSED/);
    const line = sidecar.logs.find((entry) => entry.msg === "request");
    t.match(line, { level: "warn", status: 502, reason: "upstream_unreachable", decision: "allow" });
  });

  t.test(
    "an app slower than inbound.appTimeout gives 504 upstream_timeout, and the next request works",
    async (t) => {
      const app = await startApp();
      t.teardown(() => app.stop());
      const sidecar = await startSidecar(pki, orders, {
        inbound: { listen: "127.0.0.1:0", app: app.url, appTimeout: "300ms", policy },
      });
      t.teardown(() => sidecar.stop());
      const client = new Client(sidecar.inboundUrl, { connect });
      t.teardown(() => client.close());
      const started = Date.now();
      const slow = await client.request({ path: "/slow?ms=3000", method: "GET" });
      await slow.body.text();
      t.equal(slow.statusCode, 504);
      t.equal(slow.headers["x-mtlsd-reason"], "upstream_timeout");
      t.ok(Date.now() - started < 2500, "answered at the timeout, not when the app finished");
      const next = await client.request({ path: "/slow?ms=10", method: "GET" });
      await next.body.text();
      t.equal(next.statusCode, 200);
    },
  );

  t.test("an app that stops mid-service gives 502 to later requests, not a hang", async (t) => {
    const app = await startApp();
    const sidecar = await startSidecar(pki, orders, {
      inbound: { listen: "127.0.0.1:0", app: app.url, policy },
    });
    t.teardown(() => sidecar.stop());
    const client = new Client(sidecar.inboundUrl, { connect });
    t.teardown(() => client.close());
    const first = await client.request({ path: "/", method: "GET" });
    await first.body.text();
    t.equal(first.statusCode, 200);
    await app.stop();
    const second = await client.request({ path: "/", method: "GET" });
    await second.body.text();
    t.equal(second.statusCode, 502);
    t.equal(second.headers["x-mtlsd-reason"], "upstream_unreachable");
  });
});
