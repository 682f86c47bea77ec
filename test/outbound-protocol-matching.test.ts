// protocol: auto keeps each request in the protocol the app spoke; h2 and http1 keep to theirs whatever the app spoke.
import { once } from "node:events";
import http2 from "node:http2";
import type net from "node:net";
import t from "tap";
import { startApp } from "./helpers/app.ts";
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

// A server that speaks only HTTP/2 over TLS (a Node http2 server without allowHTTP1, say): it refuses a
// ClientHello offering only http/1.1 with the "no application protocol" alert.
const ledger = await pki.identity("ledger");
const seen: string[] = [];
const ledgerServer = http2.createSecureServer(
  {
    cert: ledger.chainPem,
    key: ledger.keyPem,
    ca: pki.bundlePem,
    requestCert: true,
    rejectUnauthorized: true,
  },
  (req, res) => {
    seen.push(req.httpVersion);
    res.end(JSON.stringify({ httpVersion: req.httpVersion, url: req.url }));
  },
);
const handshakeErrors: string[] = [];
ledgerServer.on("tlsClientError", (error: Error & { code?: string }) =>
  handshakeErrors.push(error.code ?? ""),
);
ledgerServer.listen(0, "127.0.0.1");
await once(ledgerServer, "listening");
t.teardown(() => new Promise<void>((resolve) => ledgerServer.close(() => resolve())));
const ledgerAddress = `127.0.0.1:${(ledgerServer.address() as net.AddressInfo).port}`;

const caller = await startCaller(pki, frontend, {
  orders: { address: inboundAddress(ordersSidecar), identity: orders.spiffeId },
  "orders-h2": { address: inboundAddress(ordersSidecar), identity: orders.spiffeId, protocol: "h2" },
  ledger: { address: ledgerAddress, identity: ledger.spiffeId },
});
t.teardown(() => caller.stop());

async function h2cGet(authority: string, path: string): Promise<number> {
  const session = http2.connect(`http://127.0.0.1:${caller.outboundPort}`);
  session.on("error", () => {});
  try {
    const stream = session.request({ ":path": path, ":authority": authority });
    stream.resume();
    const [headers] = (await once(stream, "response")) as [http2.IncomingHttpHeaders];
    await once(stream, "end");
    return Number(headers[":status"]);
  } finally {
    session.close();
  }
}

t.test("under auto, an HTTP/1.1 request rides HTTP/1.1 to mtlsd, and an h2 request rides h2", async (t) => {
  const h1 = await appRequest(`${caller.proxyUrl}/v1/matched-h1`, { headers: ["Host: orders"] });
  t.equal(h1.response?.status, 200);
  const h1Line = await waitForLog(
    ordersSidecar.logs,
    (l) => l.msg === "request" && l.path === "/v1/matched-h1",
  );
  t.equal(h1Line.protocol, "http/1.1", "the hop between sidecars was HTTP/1.1");
  t.equal(caller.sidecar.upstreamStats().orders!.protocol, "http/1.1");

  t.equal(await h2cGet("orders", "/v1/matched-h2"), 200);
  const h2Line = await waitForLog(
    ordersSidecar.logs,
    (l) => l.msg === "request" && l.path === "/v1/matched-h2",
  );
  t.equal(h2Line.protocol, "h2", "the hop between sidecars was HTTP/2");
  t.equal(caller.sidecar.upstreamStats().orders!.protocol, "h2", "/status says h2 once a session speaks it");

  const again = await appRequest(`${caller.proxyUrl}/v1/matched-h1-again`, { headers: ["Host: orders"] });
  t.equal(again.response?.status, 200);
  const line = await waitForLog(
    ordersSidecar.logs,
    (l) => l.msg === "request" && l.path === "/v1/matched-h1-again",
  );
  t.equal(line.protocol, "http/1.1", "an h2 session to the endpoint does not draw HTTP/1.1 requests to it");
});

t.test("protocol: h2 carries HTTP/1.1 requests over HTTP/2 between sidecars", async (t) => {
  const result = await appRequest(`${caller.proxyUrl}/v1/upgraded`, { headers: ["Host: orders-h2"] });
  t.equal(result.response?.status, 200);
  const line = await waitForLog(ordersSidecar.logs, (l) => l.msg === "request" && l.path === "/v1/upgraded");
  t.equal(line.protocol, "h2");
});

t.test(
  "under auto, an h2-only server's refusal of HTTP/1.1 switches its HTTP/1.1 requests to h2, the first included, and is no failure",
  async (t) => {
    const first = await appRequest(`${caller.proxyUrl}/v1/first`, { headers: ["Host: ledger"] });
    t.equal(first.response?.status, 200, "the first request is answered");
    t.match(JSON.parse(first.response!.body), { httpVersion: "2.0", url: "/v1/first" });
    t.ok(handshakeErrors.length >= 1, "the server did refuse a connection (that offered only http/1.1)");
    const refusals = handshakeErrors.length;
    for (const path of ["/v1/second", "/v1/third"]) {
      const result = await appRequest(`${caller.proxyUrl}${path}`, { headers: ["Host: ledger"] });
      t.equal(result.response?.status, 200);
    }
    t.equal(
      handshakeErrors.length,
      refusals,
      "later requests go straight to h2: no more refused connections",
    );
    t.same(seen, ["2.0", "2.0", "2.0"], "every request reached the server once, over HTTP/2");
    const stats = caller.sidecar.upstreamStats().ledger!;
    t.equal(stats.protocol, "h2");
    t.equal(stats.endpoints[0]!.state, "healthy", "the refusal did not count against the endpoint");
    t.same(
      caller.logs.filter((l) => l.msg === "handshake failed" && l.upstream === "ledger"),
      [],
      "no handshake failure logged (or counted: the same record feeds mtlsd_handshake_failures_total)",
    );
  },
);
