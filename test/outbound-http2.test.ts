// The app speaks h2c or HTTP/1.1 on the same outbound port; between sidecars, HTTP/2 sessions pooled and multiplexed.
import { once } from "node:events";
import http from "node:http";
import http2 from "node:http2";
import https from "node:https";
import type net from "node:net";
import t from "tap";
import { startApp } from "./helpers/app.ts";
import { curl } from "./helpers/clients.ts";
import { appRequest, inboundAddress, sidecarError, startCaller, startUpstream } from "./helpers/outbound.ts";
import { createTestPki } from "./helpers/pki.ts";
import { waitForLog } from "./helpers/sidecar.ts";

const pki = await createTestPki();
t.teardown(() => pki.cleanup());
const frontend = await pki.identity("frontend");
const orders = await pki.identity("orders");
const payments = await pki.identity("payments");
const app = await startApp();
t.teardown(() => app.stop());
const ordersSidecar = await startUpstream(pki, orders, app, [frontend.spiffeId]);
t.teardown(() => ordersSidecar.stop());
// An upstream that speaks only HTTP/1.1 over TLS (another mesh's proxy, say).
const ledger = await pki.identity("ledger");
const ledgerServer = https.createServer(
  {
    cert: ledger.chainPem,
    key: ledger.keyPem,
    ca: pki.bundlePem,
    requestCert: true,
    rejectUnauthorized: true,
  },
  (req, res) => res.end(JSON.stringify({ httpVersion: req.httpVersion, url: req.url })),
);
await new Promise<void>((resolve) => ledgerServer.listen(0, "127.0.0.1", resolve));
t.teardown(() => new Promise<void>((resolve) => ledgerServer.close(() => resolve())));
const ledgerAddress = `127.0.0.1:${(ledgerServer.address() as net.AddressInfo).port}`;

const caller = await startCaller(pki, frontend, {
  orders: { address: inboundAddress(ordersSidecar), identity: orders.spiffeId, listen: "127.0.0.1:0" },
  "orders-h1": { address: inboundAddress(ordersSidecar), identity: orders.spiffeId, protocol: "http1" },
  ledger: { address: ledgerAddress, identity: ledger.spiffeId },
  "ledger-h2": { address: ledgerAddress, identity: ledger.spiffeId, protocol: "h2" },
  impostor: { address: inboundAddress(ordersSidecar), identity: payments.spiffeId, protocol: "h2" },
});
t.teardown(() => caller.stop());
const ordersPort = caller.sidecar.addresses().upstreams!.orders!.port;

/** An app's h2c client (HTTP/2 with prior knowledge) on a plain outbound port. */
async function h2c(port: number): Promise<http2.ClientHttp2Session> {
  const session = http2.connect(`http://127.0.0.1:${port}`);
  session.on("error", () => {});
  await once(session, "connect");
  return session;
}

function request(
  session: http2.ClientHttp2Session,
  headers: http2.OutgoingHttpHeaders,
): Promise<{ status: number; body: string; headers: http2.IncomingHttpHeaders }> {
  return new Promise((resolve, reject) => {
    const stream = session.request(headers);
    let body = "";
    let fields: http2.IncomingHttpHeaders = {};
    stream.on("response", (response) => {
      fields = response;
    });
    stream.on("data", (chunk: Buffer) => {
      body += chunk;
    });
    stream.on("end", () => resolve({ status: Number(fields[":status"]), body, headers: fields }));
    stream.on("error", reject);
  });
}

t.test("an h2c app on the shared port is routed by :authority, like Host", async (t) => {
  const session = await h2c(caller.outboundPort);
  t.teardown(() => session.close());
  const result = await request(session, { ":path": "/v1/h2c?x=1", ":authority": "orders" });
  t.equal(result.status, 200);
  const echo = JSON.parse(result.body) as { url: string; headers: Record<string, string> };
  t.equal(echo.url, "/v1/h2c?x=1");
  t.equal(echo.headers.host, "orders");
  t.match(echo.headers["x-forwarded-client-cert"], `URI=${frontend.spiffeId}`);
  const line = await waitForLog(caller.logs, (l) => l.msg === "request" && l.path === "/v1/h2c");
  t.match(line, { direction: "outbound", protocol: "h2", upstream: "orders", status: 200 });
  const unknown = await request(session, { ":path": "/v1/x", ":authority": "nowhere" });
  t.equal(unknown.status, 502);
  t.equal(unknown.headers["x-mtlsd-reason"], "unknown_upstream");
});

t.test("HTTP/1.1 and h2c with prior knowledge share one port", async (t) => {
  const h1 = await appRequest(`http://127.0.0.1:${ordersPort}/v1/plain`);
  t.equal(h1.response?.status, 200);
  const h2 = await curl(["-sS", "-i", "--http2-prior-knowledge", `http://127.0.0.1:${ordersPort}/v1/prior`]);
  t.match(h2.stdout, /^HTTP\/2 200/);
});

t.test("between sidecars, auto speaks HTTP/2 to mtlsd, and many requests share one session", async (t) => {
  const session = await h2c(ordersPort);
  t.teardown(() => session.close());
  const before = ordersSidecar.sidecar.inboundStats()!.connections;
  const results = await Promise.all(
    Array.from({ length: 20 }, (_, i) => request(session, { ":path": `/v1/mux/${i}` })),
  );
  t.same(
    results.map((result) => result.status),
    Array(20).fill(200),
  );
  t.ok(ordersSidecar.sidecar.inboundStats()!.connections - before <= 1, "at most one new connection");
  t.equal(caller.sidecar.upstreamStats().orders!.protocol, "h2");
  const inbound = await waitForLog(ordersSidecar.logs, (l) => l.msg === "request" && l.path === "/v1/mux/0");
  t.equal(inbound.protocol, "h2", "the hop between sidecars was HTTP/2");
});

t.test("protocol: http1 keeps the hop between sidecars on HTTP/1.1", async (t) => {
  const result = await appRequest(`${caller.proxyUrl}/v1/h1-hop`, { headers: ["Host: orders-h1"] });
  t.equal(result.response?.status, 200);
  const inbound = await waitForLog(ordersSidecar.logs, (l) => l.msg === "request" && l.path === "/v1/h1-hop");
  t.equal(inbound.protocol, "http/1.1");
  t.equal(caller.sidecar.upstreamStats()["orders-h1"]!.protocol, "http/1.1");
});

t.test(
  "auto falls back to HTTP/1.1 for an upstream that does not offer h2; h2 refuses it clearly",
  async (t) => {
    const auto = await appRequest(`${caller.proxyUrl}/v1/auto`, { headers: ["Host: ledger"] });
    t.equal(auto.response?.status, 200);
    t.match(JSON.parse(auto.response!.body), { httpVersion: "1.1" });
    t.equal(caller.sidecar.upstreamStats().ledger!.protocol, "http/1.1");
    const again = await appRequest(`${caller.proxyUrl}/v1/auto-again`, { headers: ["Host: ledger"] });
    t.equal(again.response?.status, 200, "and keeps to it");
    const insisted = await appRequest(`${caller.proxyUrl}/v1/h2-only`, { headers: ["Host: ledger-h2"] });
    const error = sidecarError(insisted);
    t.equal(error.status, 502);
    t.match(error.error, 'TLS alert "no application protocol"');
    t.match(error.error, "outbound.upstreams.ledger-h2.protocol", "the message names the setting");
  },
);

t.test("auto's HTTP/1.1 fallback sends its requests on the connection that found out", async (t) => {
  let connections = 0;
  const count = () => connections++;
  ledgerServer.on("secureConnection", count);
  t.teardown(() => ledgerServer.off("secureConnection", count));
  const fresh = await startCaller(pki, frontend, {
    ledger: { address: ledgerAddress, identity: ledger.spiffeId },
  });
  t.teardown(() => fresh.stop());
  for (const path of ["/v1/first", "/v1/second"]) {
    const result = await appRequest(`${fresh.proxyUrl}${path}`, { headers: ["Host: ledger"] });
    t.equal(result.response?.status, 200);
    t.match(JSON.parse(result.response!.body), { httpVersion: "1.1", url: path });
  }
  t.equal(connections, 1, "one TLS connection: offered h2, it chose http/1.1, and carried both requests");
  t.same(fresh.sidecar.upstreamStats().ledger!.handshakes, { full: 1, resumed: 0 });
});

t.test(
  "an HTTP/2 upstream presenting another SPIFFE ID is refused as upstream_identity_mismatch",
  async (t) => {
    const result = await appRequest(`${caller.proxyUrl}/v1/impostor`, { headers: ["Host: impostor"] });
    const error = sidecarError(result);
    t.equal(error.status, 502);
    t.equal(error.header, "upstream_identity_mismatch");
    t.notOk(
      ordersSidecar.logs.some((l) => l.msg === "request" && l.path === "/v1/impostor"),
      "no request was sent to the wrong server",
    );
  },
);

t.test(
  "the upstream's limit on concurrent streams is respected, and sessions stay within pool.connections",
  async (t) => {
    // An app that counts how many requests it holds at once.
    let inFlight = 0;
    let most = 0;
    const counting = http.createServer((_req, res) => {
      inFlight++;
      most = Math.max(most, inFlight);
      setTimeout(() => {
        inFlight--;
        res.end("done");
      }, 150);
    });
    await new Promise<void>((resolve) => counting.listen(0, "127.0.0.1", resolve));
    t.teardown(() => new Promise<void>((resolve) => counting.close(() => resolve())));
    const countingUrl = `http://127.0.0.1:${(counting.address() as net.AddressInfo).port}`;
    const narrow = await startUpstream(pki, orders, { url: countingUrl }, [frontend.spiffeId], {
      limits: { maxConcurrentStreams: 2 },
    });
    t.teardown(() => narrow.stop());
    const one = await startCaller(pki, frontend, {
      narrow: {
        address: inboundAddress(narrow),
        identity: orders.spiffeId,
        listen: "127.0.0.1:0",
        pool: { connections: 1 },
      },
    });
    t.teardown(() => one.stop());
    const session = await h2c(one.sidecar.addresses().upstreams!.narrow!.port);
    t.teardown(() => session.close());
    const results = await Promise.all(
      Array.from({ length: 8 }, (_, i) => request(session, { ":path": `/q/${i}` })),
    );
    t.same(
      results.map((result) => result.status),
      Array(8).fill(200),
      "none refused: they waited for a free stream",
    );
    t.equal(most, 2, "never more than the upstream's SETTINGS_MAX_CONCURRENT_STREAMS at once");
    t.equal(narrow.sidecar.inboundStats()!.connections, 1, "one session, as pool.connections says");

    most = 0;
    const two = await startCaller(pki, frontend, {
      narrow: {
        address: inboundAddress(narrow),
        identity: orders.spiffeId,
        listen: "127.0.0.1:0",
        pool: { connections: 2 },
      },
    });
    t.teardown(() => two.stop());
    const before = narrow.sidecar.inboundStats()!.connections;
    const wide = await h2c(two.sidecar.addresses().upstreams!.narrow!.port);
    t.teardown(() => wide.close());
    await Promise.all(Array.from({ length: 8 }, (_, i) => request(wide, { ":path": `/w/${i}` })));
    t.equal(
      narrow.sidecar.inboundStats()!.connections - before,
      2,
      "a second session opened when the first was full",
    );
    t.equal(most, 4, "two sessions of two streams each");
  },
);

t.test("a CONNECT tunnel to a configured upstream is served as that upstream's plain HTTP", async (t) => {
  const socket = (await import("node:net")).default.connect(caller.outboundPort, "127.0.0.1");
  t.teardown(() => socket.destroy());
  await once(socket, "connect");
  socket.write("CONNECT orders:443 HTTP/1.1\r\nHost: orders:443\r\n\r\n");
  const [established] = (await once(socket, "data")) as [Buffer];
  t.match(established.toString(), /^HTTP\/1\.1 200 /);
  // In the tunnel: an HTTP/1.1 request whose Host names another upstream still goes to orders.
  socket.write("GET /v1/tunnel HTTP/1.1\r\nHost: ledger\r\nConnection: close\r\n\r\n");
  let response = "";
  socket.on("data", (chunk: Buffer) => {
    response += chunk;
  });
  await once(socket, "close");
  t.match(response, /^HTTP\/1\.1 200 /);
  t.match(response, /"url":"\/v1\/tunnel"/);
  const line = await waitForLog(caller.logs, (l) => l.msg === "request" && l.path === "/v1/tunnel");
  t.equal(line.upstream, "orders", "the tunnel's upstream decides, not the Host inside it");
});
