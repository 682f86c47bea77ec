// When an upstream is down, slow or dies mid-request, the app gets a prompt, honest answer, never a hang.
import net from "node:net";
import tls from "node:tls";
import t from "tap";
import { startApp } from "./helpers/app.ts";
import { parseHttpResponse } from "./helpers/clients.ts";
import { appRequest, inboundAddress, sidecarError, startCaller, startUpstream } from "./helpers/outbound.ts";
import { createTestPki } from "./helpers/pki.ts";
import { plainConnection, startWiretap } from "./helpers/raw-http.ts";
import { waitForLog } from "./helpers/sidecar.ts";

type Test = Parameters<Parameters<typeof t.test>[0]>[0];

const pki = await createTestPki();
t.teardown(() => pki.cleanup());
const app = await startApp();
t.teardown(() => app.stop());
const frontend = await pki.identity("frontend");
const orders = await pki.identity("orders");

async function listen(server: net.Server): Promise<string> {
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())));
  return `127.0.0.1:${(server.address() as net.AddressInfo).port}`;
}

async function freeAddress(): Promise<string> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return `127.0.0.1:${port}`;
}

// Streams towards the app of every test below go through this tap, which keeps every byte the app was sent.
const wiretap = await startWiretap(app.port);
t.teardown(() => wiretap.close());
const upstream = await startUpstream(pki, orders, wiretap, [frontend.spiffeId]);
t.teardown(() => upstream.stop());

t.test("an upstream with nothing listening gives 502 upstream_unreachable", async (t) => {
  const caller = await startCaller(pki, frontend, {
    orders: { address: await freeAddress(), identity: orders.spiffeId },
  });
  t.teardown(() => caller.stop());
  const result = await appRequest(`${caller.proxyUrl}/down`, { headers: ["Host: orders"] });
  const error = sidecarError(result);
  t.equal(error.status, 502);
  t.equal(error.header, "upstream_unreachable");
  t.match(error.error, "ECONNREFUSED");
  const line = await waitForLog(caller.logs, (l) => l.msg === "request" && l.path === "/down");
  t.match(line, { level: "warn", direction: "outbound", reason: "upstream_unreachable", status: 502 });
});

t.test("an upstream app slower than the upstream's timeout gives 504 upstream_timeout", async (t) => {
  const caller = await startCaller(pki, frontend, {
    orders: { address: inboundAddress(upstream), identity: orders.spiffeId, timeout: "300ms" },
  });
  t.teardown(() => caller.stop());
  const started = Date.now();
  const result = await appRequest(`${caller.proxyUrl}/slow?ms=5000`, { headers: ["Host: orders"] });
  const elapsed = Date.now() - started;
  const error = sidecarError(result);
  t.equal(error.status, 504);
  t.equal(error.header, "upstream_timeout");
  // undici's response timers tick about once a second, so "at the timeout" means within about a second.
  t.ok(elapsed < 3000, `answered at the timeout, not when the app finished (${elapsed}ms)`);
  const next = await appRequest(`${caller.proxyUrl}/slow?ms=10`, { headers: ["Host: orders"] });
  t.equal(next.response?.status, 200, "the next request works");
});

t.test(
  "an upstream that never completes the TLS handshake gives 504 at limits.handshakeTimeout",
  async (t) => {
    // Accepts the TCP connection and says nothing, like a hung process or a black-holing middlebox.
    const held = new Set<net.Socket>();
    const silent = net.createServer((socket) => {
      held.add(socket);
      socket.on("error", () => {});
    });
    const address = await listen(silent);
    t.teardown(() => {
      for (const socket of held) socket.destroy();
    });
    const caller = await startCaller(
      pki,
      frontend,
      { orders: { address, identity: orders.spiffeId } },
      { limits: { handshakeTimeout: "300ms" } },
    );
    t.teardown(() => caller.stop());
    const result = await appRequest(`${caller.proxyUrl}/hung`, { headers: ["Host: orders"] });
    const error = sidecarError(result);
    t.equal(error.status, 504);
    t.equal(error.reason, "upstream_timeout");
    t.match(error.error, "took longer than 300ms");
  },
);

t.test("an address that answers in plain HTTP gives upstream_tls_error tls_protocol", async (t) => {
  // A common slip: `address` names the upstream app's port rather than its sidecar's.
  const caller = await startCaller(pki, frontend, {
    orders: { address: `127.0.0.1:${app.port}`, identity: orders.spiffeId },
  });
  t.teardown(() => caller.stop());
  const result = await appRequest(`${caller.proxyUrl}/plain`, { headers: ["Host: orders"] });
  const error = sidecarError(result);
  t.equal(error.status, 502);
  t.equal(error.reason, "upstream_tls_error");
  t.match(error.error, /tls_protocol: wrong version number \(ERR_SSL_WRONG_VERSION_NUMBER\)/);
});

t.test("an upstream that fails after the response head aborts the app's connection", async (t) => {
  // The right identity; it promises 1000 bytes, sends 10, and drops the connection.
  const truncating = tls.createServer(
    { cert: orders.chainPem, key: orders.keyPem, ca: pki.bundlePem, requestCert: true },
    (socket) => {
      socket.on("error", () => {});
      socket.once("data", () => {
        socket.write("HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n0123456789", () => socket.destroy());
      });
    },
  );
  const caller = await startCaller(pki, frontend, {
    orders: { address: await listen(truncating), identity: orders.spiffeId },
  });
  t.teardown(() => caller.stop());
  const result = await appRequest(`${caller.proxyUrl}/truncated`, { headers: ["Host: orders"] });
  t.equal(result.response?.status, 200, "the head had already gone out");
  t.equal(result.code, 18, `curl reports a partial transfer, not a complete one (${result.stderr.trim()})`);
  const line = await waitForLog(caller.logs, (l) => l.msg === "request" && l.path === "/truncated");
  t.match(line, { level: "warn", reason: "upstream_reset" });
});

t.test("an upstream that dies mid-body gives the app an error, never a success", async (t) => {
  // A server with the right identity that reads part of the upload, then drops the connection.
  const dying = tls.createServer(
    { cert: orders.chainPem, key: orders.keyPem, ca: pki.bundlePem, requestCert: true },
    (socket) => {
      let bytes = 0;
      socket.on("error", () => {});
      socket.on("data", (chunk: Buffer) => {
        bytes += chunk.length;
        if (bytes > 16 * 1024) socket.destroy();
      });
    },
  );
  const caller = await startCaller(pki, frontend, {
    orders: { address: await listen(dying), identity: orders.spiffeId },
  });
  t.teardown(() => caller.stop());
  const connection = plainConnection(caller.outboundPort);
  t.teardown(() => connection.socket.destroy());
  const length = 256 * 1024;
  connection.socket.write(
    `POST /v1/upload HTTP/1.1\r\nHost: orders\r\nContent-Length: ${length}\r\n\r\n${"x".repeat(length / 2)}`,
  );
  // The rest of the body never comes: the answer must not wait for it.
  await connection.closedWithin(5000);
  const response = parseHttpResponse(connection.received());
  t.equal(response?.status, 502);
  t.equal(response?.headers["x-mtlsd-reason"], "upstream_unreachable");
  t.equal(response?.headers.connection, "close", "the half-read request body ends the app's connection");
});

/**
 * Sends a request head and part of its body to the outbound listener, waits until the head has reached the
 * app, then aborts. Returns everything the app was sent on that request's connection after the head.
 */
async function abortMidBody(t: Test, path: string, head: string, part: string): Promise<string> {
  const caller = await startCaller(pki, frontend, {
    orders: { address: inboundAddress(upstream), identity: orders.spiffeId },
  });
  t.teardown(() => caller.stop());
  const connection = plainConnection(caller.outboundPort);
  connection.socket.write(`POST ${path} HTTP/1.1\r\nHost: orders\r\n${head}\r\n${part}`);
  const deadline = Date.now() + 5000;
  while (!wiretap.text().includes(`POST ${path} `)) {
    if (Date.now() > deadline) throw new Error(`${path} did not reach the app within 5s`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  connection.socket.destroy();
  // The upstream sidecar logs the request once it is over, whichever way it ended.
  const line = await waitForLog(upstream.logs, (l) => l.msg === "request" && l.path === path, 5000);
  t.not(line.status, 200, `the upstream did not answer it as complete (status ${line.status})`);
  const text = wiretap.text();
  const start = text.indexOf("\r\n\r\n", text.indexOf(`POST ${path} `)) + 4;
  // Each connection's bytes are separate in the tap's text; this request's run until the next request head.
  const next = text.slice(start).search(/\n?(GET|POST) \/\S* HTTP\/1\.1\r\n/);
  return next < 0 ? text.slice(start) : text.slice(start, start + next);
}

t.test("an app that aborts mid-body never delivers a complete request (Content-Length)", async (t) => {
  const length = 64 * 1024;
  const sent = await abortMidBody(
    t,
    "/v1/abort-length",
    `Content-Length: ${length}\r\n`,
    "x".repeat(length / 2),
  );
  const body = sent.replace(/[^x]/g, "");
  t.ok(body.length < length, `the app received ${body.length} of ${length} body bytes`);
});

t.test("an app that aborts mid-body never delivers a complete request (chunked)", async (t) => {
  const chunk = "x".repeat(4096);
  const part = `1000\r\n${chunk}\r\n`.repeat(4);
  const sent = await abortMidBody(t, "/v1/abort-chunked", "Transfer-Encoding: chunked\r\n", part);
  t.notMatch(sent, /(^|\r\n)0\r\n\r\n/, "the app never saw the last-chunk that would complete the body");
});
