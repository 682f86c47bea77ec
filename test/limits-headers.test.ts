// limits.maxHeaderSize and limits.maxHeaderCount count exactly what the docs say, on HTTP/1.1 and HTTP/2.
import { once } from "node:events";
import http2 from "node:http2";
import t from "tap";
import { startApp } from "./helpers/app.ts";
import { startCaller, startUpstream } from "./helpers/outbound.ts";
import { createTestPki } from "./helpers/pki.ts";
import { type ClientTls, exchange, plainConnection, startWiretap } from "./helpers/raw-http.ts";
import { waitForLog } from "./helpers/sidecar.ts";

const pki = await createTestPki();
t.teardown(() => pki.cleanup());
const app = await startApp();
t.teardown(() => app.stop());
const wire = await startWiretap(app.port);
t.teardown(() => wire.close());
const orders = await pki.identity("orders");
const frontend = await pki.identity("frontend");
const limits = { maxHeaderSize: "1KiB", maxHeaderCount: 10 };
const sidecar = await startUpstream(pki, orders, { url: wire.url }, [frontend.spiffeId], { limits });
t.teardown(() => sidecar.stop());
const caller = await startCaller(
  pki,
  frontend,
  { orders: { address: `127.0.0.1:${sidecar.inboundPort}`, identity: orders.spiffeId } },
  { limits },
);
t.teardown(() => caller.stop());
const client: ClientTls = { ca: pki.bundlePem, cert: frontend.chainPem, key: frontend.keyPem };

/** A GET whose header block has `fields` fields: Host, then X-F1… (each value "1"). */
function withFields(target: string, fields: number): string {
  let head = `GET ${target} HTTP/1.1\r\nHost: x\r\n`;
  for (let i = 1; i < fields; i++) head += `X-F${i}: 1\r\n`;
  return `${head}\r\n`;
}

/**
 * A GET whose count, as maxHeaderSize counts on HTTP/1.1, is `counted`: target "/" (1) + "Host" (4) + "x" (1) +
 * "X-Pad" (5) + the pad. The method, version, colons, the spaces after them and the line ends are not counted.
 */
function counted(total: number): string {
  return `GET / HTTP/1.1\r\nHost: x\r\nX-Pad: ${"a".repeat(total - 11)}\r\n\r\n`;
}

t.test("HTTP/1.1 inbound: a request with maxHeaderCount fields is forwarded whole", async (t) => {
  const result = await exchange(sidecar.inboundPort, client, withFields("/ten-fields", 10));
  t.equal(result.responses[0]?.status, 200);
  const echo = JSON.parse(result.responses[0]!.body) as { rawHeaders: string[] };
  t.ok(echo.rawHeaders.includes("X-F9"), "the last field reached the app");
});

t.test(
  "HTTP/1.1 inbound: one field more gets 431 bad_request, never a silently shortened request",
  async (t) => {
    const result = await exchange(sidecar.inboundPort, client, withFields("/eleven-fields", 11));
    const response = result.responses[0]!;
    t.equal(response.status, 431);
    t.equal(response.header("x-mtlsd-reason"), "bad_request");
    t.match(JSON.parse(response.body).error, "more than limits.maxHeaderCount (10) header fields");
    t.notOk(
      wire.requests().some((request) => request.target === "/eleven-fields"),
      "nothing reached the app",
    );
    const line = await waitForLog(sidecar.logs, (l) => l.msg === "request" && l.path === "/eleven-fields");
    t.match(line, { level: "warn", decision: "deny", reason: "bad_request", status: 431 });
  },
);

t.test("HTTP/1.1 outbound: one field more than maxHeaderCount gets 431 bad_request", async (t) => {
  const appSide = plainConnection(caller.outboundPort);
  t.teardown(() => appSide.socket.destroy());
  appSide.socket.write(withFields("/outbound-eleven", 11));
  await appSide.closedWithin(3000);
  t.match(appSide.received(), /^HTTP\/1\.1 431 /);
  t.match(appSide.received(), "x-mtlsd-reason: bad_request");
  const line = await waitForLog(caller.logs, (l) => l.msg === "request" && l.path === "/outbound-eleven");
  t.match(line, { direction: "outbound", reason: "bad_request", status: 431 });
});

t.test("HTTP/1.1: maxHeaderSize counts target, names and values; one byte under it passes", async (t) => {
  const result = await exchange(sidecar.inboundPort, client, counted(1023));
  t.equal(result.responses[0]?.status, 200);
});

t.test("HTTP/1.1: a request whose count reaches maxHeaderSize gets 431", async (t) => {
  const result = await exchange(sidecar.inboundPort, client, counted(1024));
  t.equal(result.responses[0]?.status, 431);
  t.match(result.responses[0]?.body, "limits.maxHeaderSize");
});

t.test(
  "HTTP/1.1: the method, version, colons, spaces after them and line ends are not counted",
  async (t) => {
    // 1 + 4 + 1 + 5 + 1011 + 1 = 1023 counted bytes, with a longer method and 23 spaces that are not counted.
    const head = `OPTIONS / HTTP/1.1\r\nHost:        x\r\nX-Pad:        ${"a".repeat(1011)}\r\nX: \r\n\r\n`;
    const result = await exchange(sidecar.inboundPort, client, head);
    t.equal(result.responses[0]?.status, 200);
  },
);

t.test("HTTP/1.1: trailing spaces of a header value are counted", async (t) => {
  // 1 + 4 + 1 + 5 + 1010 = 1021, and the 3 spaces after the value make 1024.
  const head = `GET / HTTP/1.1\r\nHost: x\r\nX-Pad: ${"a".repeat(1010)}   \r\n\r\n`;
  const result = await exchange(sidecar.inboundPort, client, head);
  t.equal(result.responses[0]?.status, 431);
});

async function h2Session(): Promise<http2.ClientHttp2Session> {
  const session = http2.connect(`https://localhost:${sidecar.inboundPort}`, client);
  session.on("error", () => {});
  await once(session, "connect");
  return session;
}

function h2Status(session: http2.ClientHttp2Session, headers: http2.OutgoingHttpHeaders): Promise<string> {
  return new Promise((resolve) => {
    const stream = session.request({ ":path": "/h2-limits", ...headers });
    stream.on("response", (fields) => resolve(String(fields[":status"])));
    stream.on("error", () => {});
    stream.on("close", () => resolve(`reset ${stream.rstCode}`));
    stream.resume();
    stream.end();
  });
}

const { NGHTTP2_ENHANCE_YOUR_CALM } = http2.constants;

t.test(
  "HTTP/2: maxHeaderCount fields besides the pseudo-headers pass; one more resets the stream",
  async (t) => {
    const session = await h2Session();
    t.teardown(() => session.close());
    const fields = (n: number) => Object.fromEntries(Array.from({ length: n }, (_, i) => [`x-f${i}`, "1"]));
    t.equal(await h2Status(session, fields(10)), "200");
    t.equal(await h2Status(session, fields(11)), `reset ${NGHTTP2_ENHANCE_YOUR_CALM}`);
    t.equal(await h2Status(session, fields(1)), "200", "the connection's other streams go on");
  },
);

t.test("HTTP/2: maxHeaderSize is the header list size, name + value + 32 per field", async (t) => {
  const session = await h2Session();
  t.teardown(() => session.close());
  // :method GET, :path /h2-limits, :scheme https, :authority localhost:PORT, each + 32.
  const pseudo =
    7 + 3 + 32 + (5 + 10 + 32) + (7 + 5 + 32) + (10 + `localhost:${sidecar.inboundPort}`.length + 32);
  const pad = (total: number) => ({ "x-pad": "a".repeat(total - pseudo - 5 - 32) });
  t.equal(await h2Status(session, pad(1024)), "200", "exactly the limit passes");
  t.equal(await h2Status(session, pad(1025)), `reset ${NGHTTP2_ENHANCE_YOUR_CALM}`, "one byte over is reset");
});

/** A WebSocket upgrade request with `fields` header fields in all. */
function upgradeWithFields(target: string, fields: number): string {
  let head = `GET ${target} HTTP/1.1\r\nHost: orders\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n`;
  for (let i = 3; i < fields; i++) head += `X-F${i}: 1\r\n`;
  return `${head}\r\n`;
}

t.test(
  "an upgrade request with more than maxHeaderCount fields gets 431, inbound and outbound",
  async (t) => {
    const inbound = await exchange(sidecar.inboundPort, client, upgradeWithFields("/ws-inbound", 11));
    t.equal(inbound.responses[0]?.status, 431);
    t.equal(inbound.responses[0]?.header("x-mtlsd-reason"), "bad_request");
    const appSide = plainConnection(caller.outboundPort);
    t.teardown(() => appSide.socket.destroy());
    appSide.socket.write(upgradeWithFields("/ws-outbound", 11));
    await appSide.closedWithin(3000);
    t.match(appSide.received(), /^HTTP\/1\.1 431 /);
    const line = await waitForLog(caller.logs, (l) => l.msg === "request" && l.path === "/ws-outbound");
    t.match(line, { direction: "outbound", reason: "bad_request", status: 431, protocol: "websocket" });
  },
);
