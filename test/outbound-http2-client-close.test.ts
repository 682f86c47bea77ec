// A client that sends Connection: close leaves as soon as it has the whole body. Over a pooled HTTP/2 upstream the
// end of stream may still be on its way; leaving then is not a cancellation, and must not reach the server as a
// RST_STREAM: nghttp2 servers (Node's, mtlsd's inbound) end a session past 33 resets a second (CVE-2023-44487),
// which under a busy Connection: close load tore down the pooled session with every stream on it.
import http2 from "node:http2";
import net from "node:net";
import tls from "node:tls";
import t from "tap";
import { startCaller } from "./helpers/outbound.ts";
import { createTestPki } from "./helpers/pki.ts";
import { waitForLog } from "./helpers/sidecar.ts";

const pki = await createTestPki();
t.teardown(() => pki.cleanup());
const frontend = await pki.identity("frontend");
const orders = await pki.identity("orders");

const BODY = "0123456789";

/** An HTTP/2 server over mTLS that sends the whole body, then its end of stream in a frame of its own, later. */
const closes: number[] = [];
let connections = 0;
const server = http2.createServer();
const sessions = new Set<http2.ServerHttp2Session>();
server.on("session", (session) => {
  sessions.add(session);
  session.on("close", () => sessions.delete(session));
});
server.on("stream", (stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders) => {
  stream.on("error", () => {});
  stream.on("close", () => closes.push(stream.rstCode ?? -1));
  const path = String(headers[":path"]);
  stream.respond({ ":status": 200, "content-length": String(BODY.length) });
  if (path === "/half") {
    // Half the body, and the rest never.
    stream.write(BODY.slice(0, BODY.length / 2));
    return;
  }
  stream.write(BODY);
  setTimeout(
    () => {
      if (!stream.destroyed) stream.end();
    },
    Number(path.split("/").pop()),
  ).unref();
});
const listener = tls.createServer(
  {
    cert: orders.chainPem,
    key: orders.keyPem,
    ca: pki.bundlePem,
    requestCert: true,
    rejectUnauthorized: true,
    ALPNProtocols: ["h2"],
  },
  (socket) => {
    connections++;
    socket.on("error", () => {});
    server.emit("connection", socket);
  },
);
await new Promise<void>((resolve) => listener.listen(0, "127.0.0.1", resolve));
t.teardown(
  () =>
    new Promise<void>((resolve) => {
      for (const session of sessions) session.destroy();
      listener.close(() => resolve());
    }),
);
const address = `127.0.0.1:${(listener.address() as net.AddressInfo).port}`;

const caller = await startCaller(pki, frontend, {
  orders: { address, identity: orders.spiffeId, protocol: "h2" },
});
t.teardown(() => caller.stop());

/** Sends one Connection: close request and hangs up the moment the whole body is in. Returns what it read. */
function getAndLeave(path: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(caller.outboundPort, "127.0.0.1");
    let received = "";
    socket.setEncoding("latin1");
    socket.on("error", reject);
    socket.on("data", (chunk: string) => {
      received += chunk;
      const [head, body] = received.split("\r\n\r\n");
      if (body !== undefined && body.length >= BODY.length) {
        socket.destroy();
        resolve(`${head}\r\n\r\n${body}`);
      }
    });
    socket.write(`GET ${path} HTTP/1.1\r\nHost: orders\r\nConnection: close\r\n\r\n`);
  });
}

async function streamCloses(count: number): Promise<number[]> {
  for (let i = 0; i < 100 && closes.length < count; i++) await new Promise((r) => setTimeout(r, 20));
  return closes.splice(0, count);
}

t.test("a client that leaves with the whole body does not cancel the upstream's stream", async (t) => {
  const response = await getAndLeave("/leave/200");
  t.match(response, /^HTTP\/1\.1 200 /);
  t.ok(response.endsWith(BODY), "the whole body arrived");
  t.same(
    await streamCloses(1),
    [http2.constants.NGHTTP2_NO_ERROR],
    "the stream ended on its own, no RST_STREAM",
  );
  const line = await waitForLog(
    caller.logs,
    (entry) => entry.msg === "request" && entry.path === "/leave/200",
  );
  t.match(line, { status: 200, upstream: "orders" });
  t.equal(line.reason, "forwarded", "logged as answered, not as a client that went away");
});

t.test("many such clients in a row keep the pooled session: no stream is reset", async (t) => {
  for (let i = 0; i < 60; i++) t.match(await getAndLeave("/many/5"), /^HTTP\/1\.1 200 /);
  const codes = await streamCloses(60);
  t.equal(codes.filter((code) => code !== http2.constants.NGHTTP2_NO_ERROR).length, 0, `codes: ${codes}`);
  t.equal(connections, 1, "every request went over the one pooled connection");
});

t.test("a server that never ends the stream is cut a second after the client left", async (t) => {
  const started = Date.now();
  t.match(await getAndLeave("/never/60000"), /^HTTP\/1\.1 200 /);
  t.same(await streamCloses(1), [http2.constants.NGHTTP2_CANCEL], "cancelled, once the wait was over");
  t.ok(Date.now() - started >= 900, "not before the linger");
  // The client got a whole 200: that is what the log says, not a client that went away.
  const line = await waitForLog(
    caller.logs,
    (entry) => entry.msg === "request" && entry.path === "/never/60000",
  );
  t.match(line, { status: 200, reason: "forwarded" });
});

t.test("a client that leaves before the whole body still cancels", async (t) => {
  await new Promise<void>((resolve, reject) => {
    const client = net.connect(caller.outboundPort, "127.0.0.1");
    client.setEncoding("latin1");
    let received = "";
    client.on("error", reject);
    client.on("data", (chunk: string) => {
      received += chunk;
      if (!received.includes("\r\n\r\n")) return;
      client.destroy();
      resolve();
    });
    client.write("GET /half HTTP/1.1\r\nHost: orders\r\nConnection: close\r\n\r\n");
  });
  t.same(await streamCloses(1), [http2.constants.NGHTTP2_CANCEL], "the upstream stream is cancelled");
});
