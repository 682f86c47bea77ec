// What real HTTP/1.1 apps use, through both sidecars: SSE, 100-continue, trailers, HEAD, 304, HTTP/1.0 clients.
import { once } from "node:events";
import net from "node:net";
import t from "tap";
import { startApp } from "./helpers/app.ts";
import { curl, curlRequest } from "./helpers/clients.ts";
import { appRequest, inboundAddress, startCaller, startUpstream } from "./helpers/outbound.ts";
import { createTestPki } from "./helpers/pki.ts";
import { waitForLog } from "./helpers/sidecar.ts";

const pki = await createTestPki();
t.teardown(() => pki.cleanup());
const frontend = await pki.identity("frontend");
const orders = await pki.identity("orders");
const app = await startApp();
t.teardown(() => app.stop());
const ordersSidecar = await startUpstream(pki, orders, app, [frontend.spiffeId]);
t.teardown(() => ordersSidecar.stop());
const caller = await startCaller(pki, frontend, {
  orders: { address: inboundAddress(ordersSidecar), identity: orders.spiffeId, listen: "127.0.0.1:0" },
});
t.teardown(() => caller.stop());
const base = `http://127.0.0.1:${caller.sidecar.addresses().upstreams!.orders!.port}`;

/** Raw bytes to the app's outbound port, read until the sidecar closes the connection. */
async function exchange(bytes: string): Promise<string> {
  const socket = net.connect(caller.sidecar.addresses().upstreams!.orders!.port, "127.0.0.1");
  await once(socket, "connect");
  let received = "";
  socket.on("data", (chunk: Buffer) => {
    received += chunk.toString("latin1");
  });
  socket.write(bytes);
  await once(socket, "close");
  return received;
}

t.test("server-sent events arrive one by one, as the app writes them", async (t) => {
  const response = await fetch(`${base}/events?count=4&every=150`);
  t.equal(response.headers.get("content-type"), "text/event-stream");
  const reader = response.body!.getReader();
  const arrivals: { id: number; sentAt: number; at: number }[] = [];
  let buffered = "";
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    buffered += Buffer.from(value).toString();
    let end = buffered.indexOf("\n\n");
    while (end >= 0) {
      const event = buffered.slice(0, end);
      buffered = buffered.slice(end + 2);
      const [, id, sentAt] = /id: (\d+)\ndata: event \d+ at (\d+)/.exec(event)!;
      arrivals.push({ id: Number(id), sentAt: Number(sentAt), at: Date.now() });
      end = buffered.indexOf("\n\n");
    }
  }
  t.same(
    arrivals.map((arrival) => arrival.id),
    [1, 2, 3, 4],
  );
  t.ok(arrivals[0]!.at < arrivals[1]!.sentAt, "the first event arrived before the app wrote the second");
});

t.test("Expect: 100-continue: the client gets its 100, sends the body, gets the app's answer", async (t) => {
  const body = "x".repeat(256 * 1024);
  const result = await curl(
    [
      "-sS",
      "-i",
      "-H",
      "Expect: 100-continue",
      "-H",
      "Content-Type: application/octet-stream",
      "--data-binary",
      "@-",
      `${base}/v1/upload`,
    ],
    { input: body },
  );
  t.match(result.stdout, /^HTTP\/1\.1 100 Continue\r\n\r\nHTTP\/1\.1 200 OK/);
  t.match(result.stdout, `"bodyBytes":${body.length}`);
  const echoed = JSON.parse(result.stdout.slice(result.stdout.indexOf("{"))) as {
    headers: Record<string, string>;
  };
  t.equal(echoed.headers.expect, undefined, "the sidecar answered the expectation itself");
});

t.test("trailers of a chunked response arrive after its last chunk, announced by Trailer", async (t) => {
  const received = await exchange(
    "GET /trailers HTTP/1.1\r\nHost: orders\r\nTE: trailers\r\nConnection: close\r\n\r\n",
  );
  t.match(received, /^HTTP\/1\.1 200 /);
  t.match(received, /\r\ntrailer: x-checksum, x-rows\r\n/i);
  t.match(received, /\r\n0\r\nx-checksum: sha256=abc123\r\nx-rows: 2\r\n\r\n$/);
});

t.test("HEAD gets the head of a GET, without a body, and the connection goes on", async (t) => {
  const received = await exchange(
    "HEAD /etag HTTP/1.1\r\nHost: orders\r\n\r\nGET /etag HTTP/1.1\r\nHost: orders\r\nConnection: close\r\n\r\n",
  );
  const responses = received.split(/(?=HTTP\/1\.1 )/);
  t.equal(responses.length, 2, "two responses on one connection");
  t.match(
    responses[0],
    /^HTTP\/1\.1 200 [\s\S]*content-length: 7\r\n[\s\S]*\r\n\r\n$/,
    "a head with no body",
  );
  t.match(responses[1], /\r\n\r\nversion$/);
});

t.test("a conditional GET gets the app's 304 without a body", async (t) => {
  const result = await appRequest(`${base}/etag`, { headers: ['If-None-Match: "v1"'] });
  t.equal(result.response?.status, 304);
  t.equal(result.response?.body, "");
  t.equal(result.response?.headers.etag, '"v1"');
});

t.test("an HTTP/1.0 client is served, on both listeners", async (t) => {
  const outbound = await appRequest(`${base}/v1/old`, { args: ["--http1.0"] });
  t.equal(outbound.response?.status, 200);
  const inbound = await curlRequest(`https://localhost:${ordersSidecar.inboundPort}/v1/old-tls`, {
    cacert: pki.bundlePath,
    cert: frontend.certPath,
    key: frontend.keyPath,
    args: ["--http1.0"],
  });
  t.equal(inbound.code, 0, `curl --http1.0 offers ALPN http/1.0 only, and is not refused: ${inbound.stderr}`);
  t.equal(inbound.response?.status, 200);
  const line = await waitForLog(ordersSidecar.logs, (l) => l.msg === "request" && l.path === "/v1/old-tls");
  t.equal(line.protocol, "http/1.1");
});
