// Requests from the app that the outbound listener refuses before routing (too large, malformed) are logged and
// counted like every other request it answers itself.
import t from "tap";
import { startCaller } from "./helpers/outbound.ts";
import { createTestPki } from "./helpers/pki.ts";
import { plainConnection } from "./helpers/raw-http.ts";
import { waitForLog } from "./helpers/sidecar.ts";

const pki = await createTestPki();
t.teardown(() => pki.cleanup());
const frontend = await pki.identity("frontend");
const caller = await startCaller(
  pki,
  frontend,
  { orders: { address: "127.0.0.1:9", identity: "spiffe://example.org/ns/orders/sa/orders" } },
  { limits: { maxHeaderSize: "2KiB" } },
);
t.teardown(() => caller.stop());

async function send(bytes: string): Promise<string> {
  const app = plainConnection(caller.outboundPort);
  app.socket.write(bytes);
  await app.closedWithin(5000);
  return app.received();
}

async function outboundDenials(): Promise<number> {
  const { values } = await caller.sidecar.metrics.requests.get();
  return values
    .filter((sample) => sample.labels.direction === "outbound" && sample.labels.decision === "deny")
    .reduce((sum, sample) => sum + sample.value, 0);
}

t.test("headers over limits.maxHeaderSize get 431, one log line and one count", async (t) => {
  const before = await outboundDenials();
  const response = await send(`GET / HTTP/1.1\r\nHost: orders\r\nX-Big: ${"b".repeat(4096)}\r\n\r\n`);
  t.match(response, /^HTTP\/1\.1 431 /);
  const line = await waitForLog(caller.logs, (entry) => entry.msg === "request" && entry.status === 431);
  t.match(line, {
    level: "warn",
    direction: "outbound",
    source_identity: frontend.spiffeId,
    decision: "deny",
    reason: "bad_request",
    error: "HPE_HEADER_OVERFLOW",
  });
  t.equal(await outboundDenials(), before + 1);
});

t.test("a malformed request gets 400 and a log line naming the parser's error", async (t) => {
  const response = await send("GET / HTTP/1.1\r\nHost: orders\r\nContent-Length: x\r\n\r\n");
  t.match(response, /^HTTP\/1\.1 400 /);
  const line = await waitForLog(caller.logs, (entry) => entry.msg === "request" && entry.status === 400);
  t.match(line, { direction: "outbound", reason: "bad_request", error: /^HPE_/ });
});

t.test(
  "an HTTP/1.1 request without Host gets 400 naming what is missing, one log line and one count",
  async (t) => {
    const before = await outboundDenials();
    const response = await send("GET /v1/no-host HTTP/1.1\r\nConnection: close\r\n\r\n");
    t.match(response, /^HTTP\/1\.1 400 /);
    t.match(response, /x-mtlsd-reason: bad_request/i);
    const line = await waitForLog(
      caller.logs,
      (entry) => entry.msg === "request" && entry.path === "/v1/no-host",
    );
    t.match(line, { status: 400, reason: "bad_request", error: /no Host header/ });
    t.equal(await outboundDenials(), before + 1);
  },
);

t.test(
  "HTTP/1.0 may leave Host out: the URL routes it, and an origin-form target names no upstream",
  async (t) => {
    const routed = await send("GET http://orders/v1/ten HTTP/1.0\r\n\r\n");
    // Routed to orders, whose address has nothing listening: a 502 about the upstream, not a 400 about Host.
    t.match(routed, /^HTTP\/1\.1 502 /);
    t.notMatch(routed, /x-mtlsd-reason: (bad_request|unknown_upstream)/i);
    const unrouted = await send("GET /v1/ten HTTP/1.0\r\n\r\n");
    t.match(unrouted, /^HTTP\/1\.1 502 /);
    t.match(unrouted, /x-mtlsd-reason: unknown_upstream/i);
  },
);
