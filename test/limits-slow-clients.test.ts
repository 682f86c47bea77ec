// Clients that hold a connection without finishing (slowloris, stalled handshakes, endless bodies) are cut on time.
import net from "node:net";
import tls from "node:tls";
import t from "tap";
import { connectionsCheckingInterval } from "../src/proxy/index.ts";
import { startApp } from "./helpers/app.ts";
import { mtlsClient } from "./helpers/clients.ts";
import { createTestPki } from "./helpers/pki.ts";
import { parsePrometheusText, seriesValue } from "./helpers/prometheus.ts";
import { type ClientTls, RawConnection, rawGet } from "./helpers/raw-http.ts";
import { startSidecar, waitForLog } from "./helpers/sidecar.ts";

type Test = Parameters<Parameters<typeof t.test>[0]>[0];

const LIMITS = {
  handshakeTimeout: 1000,
  headersTimeout: 1000,
  requestTimeout: 2000,
  keepAliveTimeout: 1000,
};
// Shorter than the inbound one it forwards to, so the outbound listener's own timer is the one that fires.
const OUTBOUND_REQUEST_TIMEOUT = 1500;
// A cut comes at the limit plus at most one tick of Node's timeout timer; the rest is slack for a busy machine.
const SLACK_MS = 1500;

const pki = await createTestPki();
t.teardown(() => pki.cleanup());
const app = await startApp();
t.teardown(() => app.stop());
const orders = await pki.identity("orders");
const frontend = await pki.identity("frontend");
const client: ClientTls = { ca: pki.bundlePem, cert: frontend.chainPem, key: frontend.keyPem };
const sidecar = await startSidecar(pki, orders, {
  inbound: {
    listen: "127.0.0.1:0",
    app: app.url,
    policy: { rules: [{ name: "callers", action: "allow", from: [frontend.spiffeId, orders.spiffeId] }] },
  },
  limits: {
    handshakeTimeout: "1s",
    headersTimeout: "1s",
    requestTimeout: "2s",
    keepAliveTimeout: "1s",
  },
});
t.teardown(() => sidecar.stop());
// Outbound to our own inbound port: the app's side of the sidecar, with the same limits.
const outbound = await startSidecar(pki, frontend, {
  outbound: {
    listen: "127.0.0.1:0",
    upstreams: { orders: { address: `127.0.0.1:${sidecar.inboundPort}`, identity: orders.spiffeId } },
  },
  limits: {
    headersTimeout: "1s",
    requestTimeout: `${OUTBOUND_REQUEST_TIMEOUT}ms`,
    keepAliveTimeout: "1s",
    maxHeaderSize: "2KiB",
  },
});
t.teardown(() => outbound.stop());
const outboundPort = outbound.sidecar.addresses().outbound!.port;

/**
 * Makes a fresh mTLS connection and a request every 100 ms until `attack` settles, so "other clients are
 * unaffected" covers accepting, handshaking and answering while the attack holds its connection.
 */
async function normalClientDuring(attack: Promise<unknown>): Promise<number[]> {
  let over = false;
  void attack.finally(() => {
    over = true;
  });
  const statuses: number[] = [];
  while (!over) {
    const fresh = mtlsClient(sidecar.inboundUrl, client);
    try {
      const response = await fresh.client.request({ path: "/normal", method: "GET" });
      await response.body.text();
      statuses.push(response.statusCode);
    } finally {
      await fresh.close();
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  return statuses;
}

/** The same, as the app calling through the outbound listener with plain HTTP. */
async function normalAppDuring(attack: Promise<unknown>): Promise<number[]> {
  let over = false;
  void attack.finally(() => {
    over = true;
  });
  const statuses: number[] = [];
  while (!over) {
    const response = await plainExchange(
      outboundPort,
      "GET /normal HTTP/1.1\r\nHost: orders\r\nConnection: close\r\n\r\n",
    );
    statuses.push(Number(/^HTTP\/1\.1 (\d{3})/.exec(response)?.[1] ?? 0));
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  return statuses;
}

/** Writes `bytes` on a plain TCP connection and returns everything read until the server closes (bounded). */
function plainExchange(port: number, bytes: string, timeoutMs = 5000): Promise<string> {
  return new Promise((resolve) => {
    let received = "";
    const socket = net.connect(port, "127.0.0.1", () => socket.write(bytes));
    socket.setEncoding("latin1");
    socket.on("data", (chunk: string) => {
      received += chunk;
    });
    const timer = setTimeout(() => socket.destroy(), timeoutMs);
    socket.on("error", () => {});
    socket.on("close", () => {
      clearTimeout(timer);
      resolve(received);
    });
  });
}

/**
 * Writes `bytes` one at a time every `everyMs` on `socket` (after `prefix`, if any, in one go) until the server
 * closes it; resolves with how long after the first byte that was, and what the server sent.
 */
function trickle(
  socket: net.Socket,
  bytes: string | Buffer,
  everyMs = 200,
): Promise<{ cutAfterMs: number; received: string }> {
  const data = typeof bytes === "string" ? Buffer.from(bytes, "latin1") : bytes;
  return new Promise((resolve) => {
    let received = "";
    let sent = 0;
    const started = Date.now();
    socket.on("data", (chunk: Buffer | string) => {
      received += chunk.toString("latin1");
    });
    socket.on("error", () => {});
    const timer = setInterval(() => {
      if (sent < data.length && socket.writable) socket.write(data.subarray(sent, ++sent));
    }, everyMs);
    // Never trickle forever if the server never cuts: the test then fails on the bound.
    const giveUp = setTimeout(() => socket.destroy(), 15_000);
    socket.write(data.subarray(0, ++sent));
    socket.once("close", () => {
      clearInterval(timer);
      clearTimeout(giveUp);
      resolve({ cutAfterMs: Date.now() - started, received });
    });
  });
}

function assertCutOnTime(t: Test, cutAfterMs: number, limitMs: number, what: string): void {
  t.ok(
    cutAfterMs >= limitMs - 50 && cutAfterMs <= limitMs + SLACK_MS,
    `${what} cut after ${cutAfterMs} ms (limit ${limitMs} ms)`,
  );
}

/** A real ClientHello, as tls.connect writes it, to replay in part. */
async function clientHello(): Promise<Buffer> {
  const capture = net.createServer();
  capture.listen(0, "127.0.0.1");
  await new Promise((resolve) => capture.once("listening", resolve));
  const { port } = capture.address() as net.AddressInfo;
  const hello = new Promise<Buffer>((resolve) =>
    capture.once("connection", (socket) => socket.once("data", (chunk: Buffer) => resolve(chunk))),
  );
  const tlsClient = tls.connect({ host: "127.0.0.1", port, servername: "localhost", ca: pki.bundlePem });
  tlsClient.on("error", () => {});
  const bytes = await hello;
  tlsClient.destroy();
  await new Promise((resolve) => capture.close(resolve));
  return bytes;
}

async function handshakeFailures(): Promise<number> {
  const text = await (await fetch(`${sidecar.adminUrl}/metrics`)).text();
  return (
    seriesValue(parsePrometheusText(text), "mtlsd_handshake_failures_total", {
      direction: "inbound",
      reason: "tls_protocol",
    }) ?? 0
  );
}

t.test(
  "Node's timeout timer ticks at a tenth of the shorter timeout, and at least once a second",
  async (t) => {
    const limits = (headersTimeout: number, requestTimeout: number) =>
      connectionsCheckingInterval({ ...LIMITS, headersTimeout, requestTimeout } as never);
    t.equal(limits(1000, 2000), 100);
    t.equal(limits(10_000, 300_000), 1000);
    t.equal(limits(60_000, 300_000), 1000, "never slower than a second");
    t.equal(limits(50, 100), 10, "never faster than 10 ms");
  },
);

t.test("headers trickled to the inbound port are cut at headersTimeout with a 408", async (t) => {
  const connection = await RawConnection.open(sidecar.inboundPort, client);
  t.teardown(() => connection.close());
  const attack = trickle(connection.socket, `${rawGet("/slowloris", "X-Slow: ".padEnd(200, "x"))}`);
  const [{ cutAfterMs, received }, normal] = await Promise.all([attack, normalClientDuring(attack)]);
  assertCutOnTime(t, cutAfterMs, LIMITS.headersTimeout, "the slowloris connection");
  t.match(received, /^HTTP\/1\.1 408 Request Timeout\r\n/);
  t.match(received, /"reason":"request_timeout"/);
  t.ok(normal.length >= 5, `${normal.length} normal requests meanwhile`);
  t.same(new Set(normal), new Set([200]), "every one answered 200");
  await waitForLog(sidecar.logs, (line) => line.reason === "request_timeout" && line.status === 408);
});

t.test("headers trickled to the outbound listener are cut at headersTimeout with a 408", async (t) => {
  const socket = net.connect(outboundPort, "127.0.0.1");
  await new Promise((resolve) => socket.once("connect", resolve));
  const attack = trickle(socket, "GET /slowloris HTTP/1.1\r\nHost: orders\r\nX-Slow: ".padEnd(200, "x"));
  const [{ cutAfterMs, received }, normal] = await Promise.all([attack, normalAppDuring(attack)]);
  assertCutOnTime(t, cutAfterMs, LIMITS.headersTimeout, "the slowloris connection");
  t.match(received, /^HTTP\/1\.1 408 Request Timeout\r\n/);
  t.ok(normal.length >= 5, `${normal.length} normal requests meanwhile`);
  t.same(new Set(normal), new Set([200]));
});

t.test(
  "an app connection to the outbound listener that says nothing is answered 408 at headersTimeout",
  async (t) => {
    const socket = net.connect(outboundPort, "127.0.0.1");
    socket.on("error", () => {});
    let received = "";
    socket.setEncoding("latin1");
    socket.on("data", (chunk: string) => {
      received += chunk;
    });
    const giveUp = setTimeout(() => socket.destroy(), 15_000);
    t.teardown(() => clearTimeout(giveUp));
    await new Promise((resolve) => socket.once("connect", resolve));
    const started = Date.now();
    const closed = new Promise((resolve) => socket.once("close", resolve));
    const normal = normalAppDuring(closed);
    await closed;
    assertCutOnTime(t, Date.now() - started, LIMITS.headersTimeout, "the silent connection");
    t.match(
      received,
      /^HTTP\/1\.1 408 Request Timeout\r\n/,
      "answered as node:http's headersTimeout answers it",
    );
    t.same(new Set(await normal), new Set([200]), "apps' other requests were answered meanwhile");
  },
);

t.test(
  "an app's first head that starts late on the outbound listener and trickles is cut at headersTimeout from the connect",
  async (t) => {
    const socket = net.connect(outboundPort, "127.0.0.1");
    await new Promise((resolve) => socket.once("connect", resolve));
    const started = Date.now();
    // Silent for most of the limit, then a head too slow to finish: handed to node:http, whose own clock
    // would start again at the handover (or at the first byte, which the listener reads to tell h2c apart).
    const silentMs = LIMITS.headersTimeout - 300;
    await new Promise((resolve) => setTimeout(resolve, silentMs));
    const { received } = await trickle(
      socket,
      "GET /late HTTP/1.1\r\nHost: orders\r\nX-Slow: ".padEnd(200, "x"),
    );
    const cutAfterMs = Date.now() - started;
    assertCutOnTime(t, cutAfterMs, LIMITS.headersTimeout, "the late, trickling connection");
    t.ok(
      cutAfterMs < silentMs + LIMITS.headersTimeout - 100,
      "counted from the connect, not from the first byte",
    );
    t.match(received, /^HTTP\/1\.1 408 Request Timeout\r\n/);
  },
);

t.test("a client that connects and says nothing is cut at handshakeTimeout", async (t) => {
  const before = await handshakeFailures();
  const socket = net.connect(sidecar.inboundPort, "127.0.0.1");
  socket.on("error", () => {});
  const started = Date.now();
  await new Promise((resolve) => socket.once("connect", resolve));
  const normal = normalClientDuring(new Promise((resolve) => socket.once("close", resolve)));
  await new Promise((resolve) => socket.once("close", resolve));
  assertCutOnTime(t, Date.now() - started, LIMITS.handshakeTimeout, "the silent connection");
  t.same(new Set(await normal), new Set([200]), "normal clients were answered meanwhile");
  t.equal(await handshakeFailures(), before + 1, "counted once, as tls_protocol");
  const line = await waitForLog(sidecar.logs, (entry) =>
    /not completed within limits.handshakeTimeout/.test(String(entry.detail)),
  );
  t.match(line, { level: "warn", reason: "tls_protocol", remote_address: "127.0.0.1" });
});

t.test("a client that sends part of a ClientHello and stalls is cut at handshakeTimeout", async (t) => {
  const hello = await clientHello();
  const before = await handshakeFailures();
  const socket = net.connect(sidecar.inboundPort, "127.0.0.1");
  await new Promise((resolve) => socket.once("connect", resolve));
  const started = Date.now();
  socket.write(hello.subarray(0, 40));
  socket.on("error", () => {});
  const closed = new Promise((resolve) => socket.once("close", resolve));
  const normal = normalClientDuring(closed);
  await closed;
  assertCutOnTime(t, Date.now() - started, LIMITS.handshakeTimeout, "the stalled handshake");
  t.same(new Set(await normal), new Set([200]));
  t.equal(await handshakeFailures(), before + 1, "counted once, although TLS had started");
});

t.test("a ClientHello trickled a byte at a time is cut at handshakeTimeout from the connect", async (t) => {
  const hello = await clientHello();
  const before = await handshakeFailures();
  const socket = net.connect(sidecar.inboundPort, "127.0.0.1");
  await new Promise((resolve) => socket.once("connect", resolve));
  const { cutAfterMs } = await trickle(socket, hello, 100);
  assertCutOnTime(t, cutAfterMs, LIMITS.handshakeTimeout, "the trickled handshake");
  t.equal(await handshakeFailures(), before + 1);
});

t.test("a request body that trickles forever is cut at requestTimeout, as one 408 in the log", async (t) => {
  const connection = await RawConnection.open(sidecar.inboundPort, client);
  t.teardown(() => connection.close());
  const head = "POST /upload/trickle HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100000\r\n\r\n";
  connection.write(head);
  const { cutAfterMs, received } = await trickle(connection.socket, "x".repeat(1000));
  assertCutOnTime(t, cutAfterMs, LIMITS.requestTimeout, "the endless body");
  t.match(received, /^HTTP\/1\.1 408 Request Timeout\r\n/);
  t.match(received, /\r\nconnection: close\r\n/i);
  await waitForLog(sidecar.logs, (line) => line.path === "/upload/trickle");
  await new Promise((resolve) => setTimeout(resolve, 200));
  const lines = sidecar.logs.filter((line) => line.msg === "request" && line.path === "/upload/trickle");
  t.equal(lines.length, 1, "one record for the request, not one per layer");
  t.match(lines[0], { method: "POST", status: 408, reason: "request_timeout" });
});

t.test("a request body trickled to the outbound listener is cut at requestTimeout too", async (t) => {
  const socket = net.connect(outboundPort, "127.0.0.1");
  await new Promise((resolve) => socket.once("connect", resolve));
  socket.write("POST /upload/out HTTP/1.1\r\nHost: orders\r\nContent-Length: 100000\r\n\r\n");
  const { cutAfterMs, received } = await trickle(socket, "x".repeat(1000));
  assertCutOnTime(t, cutAfterMs, OUTBOUND_REQUEST_TIMEOUT, "the endless body");
  t.match(received, /^HTTP\/1\.1 408 Request Timeout\r\n/);
  const line = await waitForLog(outbound.logs, (entry) => entry.path === "/upload/out");
  t.match(line, { direction: "outbound", status: 408, reason: "request_timeout" });
});

t.test(
  "an idle keep-alive connection closes after keepAliveTimeout, as its Keep-Alive header says",
  async (t) => {
    const connection = await RawConnection.open(sidecar.inboundPort, client);
    t.teardown(() => connection.close());
    connection.write(rawGet("/keepalive"));
    const { responses } = await connection.read(1, 5000);
    const answered = Date.now();
    t.equal(responses[0]?.status, 200);
    t.equal(responses[0]?.header("keep-alive"), "timeout=1");
    t.ok(await connection.closedWithin(5000), "closed by the sidecar");
    const idleMs = Date.now() - answered;
    // Node keeps the socket one second past the advertised timeout, so clients that honour it close first.
    t.ok(
      idleMs >= LIMITS.keepAliveTimeout && idleMs <= LIMITS.keepAliveTimeout + 1000 + SLACK_MS,
      `closed after ${idleMs} ms idle`,
    );
  },
);

t.test("headers larger than maxHeaderSize on the outbound listener get 431", async (t) => {
  const response = await plainExchange(
    outboundPort,
    `GET / HTTP/1.1\r\nHost: orders\r\nX-Big: ${"b".repeat(4096)}\r\n\r\n`,
  );
  t.match(response, /^HTTP\/1\.1 431 Request Header Fields Too Large\r\n/);
  t.match(response, /limits\.maxHeaderSize/);
});
