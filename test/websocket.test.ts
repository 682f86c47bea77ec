// WebSocket through the sidecars: decided like any request, then a tunnel both ways; other upgrades refused.
import { once } from "node:events";
import tls from "node:tls";
import t, { type Test } from "tap";
import WebSocketClient from "ws";
import { startApp } from "./helpers/app.ts";
import { inboundAddress, startCaller } from "./helpers/outbound.ts";
import { createTestPki } from "./helpers/pki.ts";
import { plainConnection } from "./helpers/raw-http.ts";
import { startSidecar, waitForLog } from "./helpers/sidecar.ts";

const pki = await createTestPki();
t.teardown(() => pki.cleanup());
const frontend = await pki.identity("frontend");
const orders = await pki.identity("orders");
const app = await startApp(0, "ws-app.ts");
t.teardown(() => app.stop());

const policy = {
  rules: [
    { name: "chat", action: "allow", from: [frontend.spiffeId], to: [{ paths: ["/chat", "/chat/*"] }] },
  ],
};
const ordersSidecar = await startSidecar(pki, orders, {
  inbound: { listen: "127.0.0.1:0", app: app.url, policy },
});
t.teardown(() => ordersSidecar.stop());
// The same app behind a sidecar that passes no upgrades at all.
const closedSidecar = await startSidecar(pki, orders, {
  inbound: { listen: "127.0.0.1:0", app: app.url, policy, upgrades: [] },
});
t.teardown(() => closedSidecar.stop());
const caller = await startCaller(pki, frontend, {
  orders: { address: inboundAddress(ordersSidecar), identity: orders.spiffeId, listen: "127.0.0.1:0" },
  closed: { address: inboundAddress(closedSidecar), identity: orders.spiffeId, listen: "127.0.0.1:0" },
});
t.teardown(() => caller.stop());
const ports = caller.sidecar.addresses().upstreams!;

/** Node's built-in WebSocket client, as a browser-like app uses it; resolves once open. */
async function open(
  url: string,
): Promise<{ socket: WebSocket; messages: string[]; next(): Promise<string> }> {
  const socket = new WebSocket(url);
  socket.binaryType = "arraybuffer";
  const messages: string[] = [];
  const waiting: ((message: string) => void)[] = [];
  socket.addEventListener("message", (event) => {
    const text =
      typeof event.data === "string" ? event.data : Buffer.from(event.data as ArrayBuffer).toString();
    const waiter = waiting.shift();
    if (waiter) waiter(text);
    else messages.push(text);
  });
  await new Promise<void>((resolve, reject) => {
    socket.addEventListener("open", () => resolve());
    socket.addEventListener("error", () => reject(new Error(`WebSocket to ${url} failed`)));
  });
  return {
    socket,
    messages,
    next: () => {
      const queued = messages.shift();
      return queued !== undefined ? Promise.resolve(queued) : new Promise((resolve) => waiting.push(resolve));
    },
  };
}

/** The answer a refused WebSocket handshake got, through the ws package's client (it shows the response). */
async function refusal(
  url: string,
  options: WebSocketClient.ClientOptions = {},
): Promise<{ status: number; reason: string | undefined }> {
  const client = new WebSocketClient(url, options);
  client.on("error", () => {});
  const [, response] = (await once(client, "unexpected-response")) as [
    unknown,
    import("node:http").IncomingMessage,
  ];
  const reason = response.headers["x-mtlsd-reason"] as string | undefined;
  response.resume();
  client.terminate();
  return { status: response.statusCode ?? 0, reason };
}

t.test("a WebSocket through both sidecars: the app knows the caller, messages flow both ways", async (t) => {
  const ws = await open(`ws://127.0.0.1:${ports.orders!.port}/chat`);
  const hello = JSON.parse(await ws.next()) as { hello: string; xfcc: string };
  t.equal(hello.hello, "/chat");
  t.match(hello.xfcc, `URI=${frontend.spiffeId}`, "XFCC was set on the upgrade request");
  ws.socket.send("ping");
  t.equal(await ws.next(), "echo: ping");
  ws.socket.send(new Uint8Array([1, 2, 3]));
  t.equal(await ws.next(), "\u0001\u0002\u0003", "binary frames too");
  const closed = new Promise((resolve) => ws.socket.addEventListener("close", resolve));
  ws.socket.close(1000, "done");
  await closed;
  await app.event((event) => event.event === "close" && event.url === "/chat");
  const inbound = await waitForLog(
    ordersSidecar.logs,
    (line) => line.msg === "request" && line.path === "/chat" && line.protocol === "websocket",
  );
  t.match(inbound, {
    direction: "inbound",
    decision: "allow",
    status: 101,
    source_identity: frontend.spiffeId,
  });
  t.ok(Number(inbound.bytes_up) > 0 && Number(inbound.bytes_down) > 0, "the log counts bytes each way");
  const outbound = await waitForLog(
    caller.logs,
    (line) => line.msg === "request" && line.path === "/chat" && line.protocol === "websocket",
  );
  t.match(outbound, { direction: "outbound", upstream: "orders", status: 101 });
  const metrics = await (await fetch(`${ordersSidecar.adminUrl}/metrics`)).text();
  t.match(metrics, /mtlsd_requests_total\{[^}]*protocol="websocket"\} [1-9]/);
});

t.test(
  "the ws package's client with a client certificate opens a WebSocket on the inbound itself",
  async (t) => {
    const client = new WebSocketClient(`wss://localhost:${ordersSidecar.inboundPort}/chat/room`, {
      ca: pki.bundlePem,
      cert: frontend.chainPem,
      key: frontend.keyPem,
    });
    const messages: string[] = [];
    client.on("message", (data) => messages.push(String(data)));
    await once(client, "open");
    client.send("over mTLS");
    while (messages.length < 2) await new Promise((resolve) => setTimeout(resolve, 10));
    t.match(JSON.parse(messages[0]!), { hello: "/chat/room" });
    t.equal(messages[1], "echo: over mTLS");
    client.close();
    await once(client, "close");
  },
);

t.test("an app on the shared outbound port reaches a WebSocket upstream by its Host header", async (t) => {
  const client = new WebSocketClient(`ws://127.0.0.1:${caller.outboundPort}/chat`, {
    headers: { host: "orders" },
  });
  const [data] = (await once(client, "message")) as [Buffer];
  t.match(JSON.parse(String(data)), { hello: "/chat" });
  client.close();
  await once(client, "close");
});

t.test("a path the policy denies is refused with 403 before the app sees anything", async (t) => {
  const answer = await refusal(`ws://127.0.0.1:${ports.orders!.port}/admin`);
  t.same(answer, { status: 403, reason: "policy_denied" });
  const line = await waitForLog(ordersSidecar.logs, (l) => l.msg === "request" && l.path === "/admin");
  t.match(line, { decision: "deny", reason: "policy_denied", protocol: "websocket", status: 403 });
  t.notOk(
    app.events.some((event) => event.url === "/admin"),
    "the app never heard of it",
  );
});

t.test("with inbound.upgrades: [] a WebSocket is refused as upgrade_refused, never passed on", async (t) => {
  const answer = await refusal(`ws://127.0.0.1:${ports.closed!.port}/chat/closed`);
  t.same(answer, { status: 400, reason: "upgrade_refused" });
  t.notOk(app.events.some((event) => event.url === "/chat/closed"));
});

/**
 * Sends an h2c upgrade for `path` to both listeners: from the app to the outbound, and from a peer (with its
 * certificate, over HTTP/1.1) to the inbound. Resolves with what each answered before closing.
 */
async function h2cUpgrades(t: Test, path: string): Promise<{ outbound: string; inbound: string }> {
  const h2cUpgrade =
    `GET ${path} HTTP/1.1\r\nHost: orders\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n` +
    "HTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n";
  const fromApp = plainConnection(ports.orders!.port);
  t.teardown(() => fromApp.socket.destroy());
  fromApp.socket.write(h2cUpgrade);
  await fromApp.closedWithin(3000);

  const fromPeer = tls.connect({
    port: ordersSidecar.inboundPort,
    host: "127.0.0.1",
    servername: "localhost",
    ca: pki.bundlePem,
    cert: frontend.chainPem,
    key: frontend.keyPem,
    ALPNProtocols: ["http/1.1"],
  });
  t.teardown(() => fromPeer.destroy());
  await once(fromPeer, "secureConnect");
  const chunks: Buffer[] = [];
  fromPeer.on("data", (chunk: Buffer) => chunks.push(chunk));
  fromPeer.write(h2cUpgrade);
  await once(fromPeer, "close");
  return { outbound: fromApp.received(), inbound: Buffer.concat(chunks).toString("latin1") };
}

t.test("an h2c upgrade is refused with a reason on both listeners, and no tunnel opens", async (t) => {
  const { outbound, inbound } = await h2cUpgrades(t, "/chat");
  t.match(outbound, /^HTTP\/1\.1 400 /);
  t.match(outbound, /x-mtlsd-reason: upgrade_refused/);
  t.match(inbound, /^HTTP\/1\.1 400 /);
  t.match(inbound, /Upgrade: h2c is never honored/);
  t.notMatch(inbound, /101 Switching Protocols/);
});

t.test("a refused h2c upgrade is logged and counted as the HTTP/1.1 request it stayed", async (t) => {
  await h2cUpgrades(t, "/chat/h2c");
  for (const [direction, logs, admin] of [
    ["outbound", caller.logs, caller.adminUrl],
    ["inbound", ordersSidecar.logs, ordersSidecar.adminUrl],
  ] as const) {
    const line = await waitForLog(logs, (l) => l.msg === "request" && l.path === "/chat/h2c");
    t.match(line, { direction, protocol: "http/1.1", status: 400, reason: "upgrade_refused" }, direction);
    const metrics = await (await fetch(`${admin}/metrics`)).text();
    t.match(
      metrics,
      new RegExp(
        `mtlsd_requests_total\\{direction="${direction}",decision="deny",[^}]*protocol="http/1\\.1"`,
      ),
      `${direction}: counted under protocol="http/1.1"`,
    );
    t.notMatch(metrics, /protocol="h2c"/, `${direction}: no h2c series, outside the documented protocols`);
  }
});

t.test("CONNECT on the inbound is refused with 405: no tunnel bypasses the policy", async (t) => {
  const socket = tls.connect({
    port: ordersSidecar.inboundPort,
    host: "127.0.0.1",
    servername: "localhost",
    ca: pki.bundlePem,
    cert: frontend.chainPem,
    key: frontend.keyPem,
    ALPNProtocols: ["http/1.1"],
  });
  t.teardown(() => socket.destroy());
  await once(socket, "secureConnect");
  const chunks: Buffer[] = [];
  socket.on("data", (chunk: Buffer) => chunks.push(chunk));
  socket.write("CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n");
  await once(socket, "close");
  const received = Buffer.concat(chunks).toString("latin1");
  t.match(received, /^HTTP\/1\.1 405 /);
  t.match(received, /x-mtlsd-reason: method_not_allowed/);
  const line = await waitForLog(ordersSidecar.logs, (l) => l.msg === "request" && l.method === "CONNECT");
  t.match(line, { decision: "deny", status: 405, reason: "method_not_allowed" });
});

t.test("an open WebSocket counts as a connection and is closed when the drain ends", async (t) => {
  const upstream = await startSidecar(pki, orders, {
    inbound: { listen: "127.0.0.1:0", app: app.url, policy },
  });
  const client = new WebSocketClient(`wss://localhost:${upstream.inboundPort}/chat/drain`, {
    ca: pki.bundlePem,
    cert: frontend.chainPem,
    key: frontend.keyPem,
  });
  await once(client, "message");
  const status = (await (await fetch(`${upstream.adminUrl}/status`)).json()) as Record<string, unknown>;
  t.ok(status, "the sidecar is up");
  const started = Date.now();
  const closed = once(client, "close");
  const stopped = upstream.sidecar.stop(400);
  await closed;
  const took = Date.now() - started;
  await stopped;
  t.ok(took >= 300, `the WebSocket lived until the drain's deadline (${took} ms)`);
  const line = await waitForLog(upstream.logs, (l) => l.msg === "request" && l.path === "/chat/drain");
  t.equal(line.ended_by, "drain");
  const summary = await waitForLog(upstream.logs, (l) => l.msg === "mtlsd stopped");
  t.ok(Number(summary.in_flight) >= 1, "the drain counted it in flight");
});
