// An app's plain request finds its upstream by the upstream's own port, else its proxy URL, else its Host header.
import http2 from "node:http2";
import https from "node:https";
import type net from "node:net";
import t from "tap";
import { EnvHttpProxyAgent, request } from "undici";
import { startApp } from "./helpers/app.ts";
import {
  appRequest,
  echoed,
  inboundAddress,
  sidecarError,
  startCaller,
  startUpstream,
} from "./helpers/outbound.ts";
import { createTestPki } from "./helpers/pki.ts";
import { plainConnection } from "./helpers/raw-http.ts";
import { waitForLog } from "./helpers/sidecar.ts";

const pki = await createTestPki();
t.teardown(() => pki.cleanup());
const frontend = await pki.identity("frontend");
const orders = await pki.identity("orders");
const payments = await pki.identity("payments");
const ordersApp = await startApp();
t.teardown(() => ordersApp.stop());
const paymentsApp = await startApp();
t.teardown(() => paymentsApp.stop());
const ordersSidecar = await startUpstream(pki, orders, ordersApp, [frontend.spiffeId]);
t.teardown(() => ordersSidecar.stop());
const paymentsSidecar = await startUpstream(pki, payments, paymentsApp, [frontend.spiffeId]);
t.teardown(() => paymentsSidecar.stop());
// An upstream that is not mtlsd (another mesh's proxy, say): it reports the request line exactly as it came.
const ledger = await pki.identity("ledger");
const ledgerServer = https.createServer(
  {
    cert: ledger.chainPem,
    key: ledger.keyPem,
    ca: pki.bundlePem,
    requestCert: true,
    rejectUnauthorized: true,
  },
  (req, res) => res.end(JSON.stringify({ url: req.url, host: req.headers.host })),
);
await new Promise<void>((resolve) => ledgerServer.listen(0, "127.0.0.1", resolve));
t.teardown(() => new Promise<void>((resolve) => ledgerServer.close(() => resolve())));
const ledgerAddress = `127.0.0.1:${(ledgerServer.address() as net.AddressInfo).port}`;
const caller = await startCaller(pki, frontend, {
  orders: { address: inboundAddress(ordersSidecar), identity: orders.spiffeId, listen: "127.0.0.1:0" },
  payments: { address: inboundAddress(paymentsSidecar), identity: payments.spiffeId },
  ledger: { address: ledgerAddress, identity: ledger.spiffeId },
});
t.teardown(() => caller.stop());
const ordersPort = caller.sidecar.addresses().upstreams!.orders!.port;

t.test("an app with HTTP_PROXY set reaches an upstream by its name", async (t) => {
  const result = await appRequest("http://orders/v1/orders?page=2", { proxy: caller.proxyUrl });
  const echo = echoed(result);
  t.equal(echo.url, "/v1/orders?page=2", "the app receives origin-form path and query");
  t.equal(echo.xfcc.By, orders.spiffeId, "the orders sidecar served it");
  t.equal(echo.xfcc.URI, frontend.spiffeId, "and saw our identity");
  t.notOk(echo.headers["proxy-connection"], "proxy hop-by-hop headers are not forwarded");
  const line = await waitForLog(
    caller.logs,
    (l) => l.msg === "request" && l.direction === "outbound" && l.path === "/v1/orders",
  );
  t.match(line, {
    level: "info",
    source_identity: frontend.spiffeId,
    destination_identity: orders.spiffeId,
    upstream: "orders",
    decision: "allow",
    status: 200,
  });
});

t.test("a Node app using undici's EnvHttpProxyAgent is routed by its proxy URL", async (t) => {
  const dispatcher = new EnvHttpProxyAgent({ httpProxy: caller.proxyUrl, noProxy: "" });
  t.teardown(() => dispatcher.close());
  const response = await request("http://payments/v1/charges", { dispatcher });
  const echo = (await response.body.json()) as { url: string; headers: Record<string, string> };
  t.equal(response.statusCode, 200);
  t.equal(echo.url, "/v1/charges");
  t.match(echo.headers["x-forwarded-client-cert"], `By=${payments.spiffeId}`);
});

t.test("a proxy URL may name the upstream by its address instead of its name", async (t) => {
  const result = await appRequest(`http://${inboundAddress(paymentsSidecar)}/by-address`, {
    proxy: caller.proxyUrl,
  });
  t.equal(echoed(result).xfcc.By, payments.spiffeId);
});

t.test("a proxy URL whose Host header names another authority gets 400 bad_request", async (t) => {
  const result = await appRequest("http://payments/url-and-host-differ", {
    proxy: caller.proxyUrl,
    headers: ["Host: orders"],
  });
  const error = sidecarError(result);
  t.equal(error.status, 400);
  t.equal(error.reason, "bad_request");
  t.match(error.error, /Host header "orders" names another authority than the URL \("payments"\)/);
});

t.test("a proxy URL and a Host that differ only in case and the default port agree", async (t) => {
  const result = await appRequest("http://payments/host-agrees", {
    proxy: caller.proxyUrl,
    headers: ["Host: PAYMENTS:80"],
  });
  const echo = echoed(result);
  t.equal(echo.xfcc.By, payments.spiffeId);
  t.equal(echo.headers.host, "payments", "the Host sent upstream is the URL's (RFC 9112 §3.2.2)");
});

t.test("the path of a proxy URL is forwarded byte for byte, not re-parsed or re-encoded", async (t) => {
  // A URL parser would turn "{" into "%7B" and resolve "..": the upstream must judge what the app sent.
  const result = await appRequest(caller.proxyUrl, {
    headers: ["Host: ledger"],
    args: ["--request-target", "http://ledger/v1/{id}/../x?q=`a`"],
  });
  t.equal(result.response?.status, 200, result.stdout);
  t.same(JSON.parse(result.response!.body), { url: "/v1/{id}/../x?q=`a`", host: "ledger" });
});

t.test("an app that sets Host: orders reaches orders through the shared port", async (t) => {
  const result = await appRequest(`${caller.proxyUrl}/v1/orders/7`, { headers: ["Host: orders"] });
  const echo = echoed(result);
  t.equal(echo.url, "/v1/orders/7");
  t.equal(echo.xfcc.By, orders.spiffeId);
});

t.test("Host names compare case-insensitively and may carry any port", async (t) => {
  const result = await appRequest(`${caller.proxyUrl}/case`, { headers: ["Host: PayMents:8080"] });
  t.equal(echoed(result).xfcc.By, payments.spiffeId);
});

t.test("an upstream's own port needs neither a proxy nor a Host header", async (t) => {
  // curl sends Host: 127.0.0.1:<port>, which names no upstream: the port decides.
  const result = await appRequest(`http://127.0.0.1:${ordersPort}/own-port`);
  const echo = echoed(result);
  t.equal(echo.url, "/own-port");
  t.equal(echo.xfcc.By, orders.spiffeId);
});

t.test(
  "on an upstream's own port, the port decides: a Host naming another upstream does not reroute",
  async (t) => {
    // The app may pass along a Host its own caller chose; on this port it can only ever reach orders.
    const result = await appRequest(`http://127.0.0.1:${ordersPort}/port-decides`, {
      headers: ["Host: payments"],
    });
    const echo = echoed(result);
    t.equal(echo.xfcc.By, orders.spiffeId);
    t.equal(echo.headers.host, "payments", "the Host goes on as the app sent it");
  },
);

t.test("on an upstream's own port, a proxy URL naming another upstream gets 400 bad_request", async (t) => {
  const app = plainConnection(ordersPort);
  t.teardown(() => app.socket.destroy());
  app.socket.write(
    "GET http://payments/port-and-url-differ HTTP/1.1\r\nHost: payments\r\nConnection: close\r\n\r\n",
  );
  await app.closedWithin(3000);
  t.match(app.received(), /^HTTP\/1\.1 400 /);
  t.match(app.received(), "x-mtlsd-reason: bad_request");
  t.match(app.received(), "carries requests for upstream orders only");
});

t.test(
  "a Host RFC 9112 makes invalid gets 400 bad_request on the shared and the upstream's own port",
  async (t) => {
    for (const port of [caller.outboundPort, ordersPort]) {
      for (const host of ["orders@payments", "orders/x", "orders x", "orders:99999", "[orders]", ""]) {
        const app = plainConnection(port);
        t.teardown(() => app.socket.destroy());
        app.socket.write(`GET /bad-host HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`);
        await app.closedWithin(3000);
        t.match(app.received(), /^HTTP\/1\.1 400 /, `Host: ${JSON.stringify(host)} on port ${port}`);
        t.match(app.received(), "x-mtlsd-reason: bad_request");
      }
    }
  },
);

t.test("an unknown Host gets 502 unknown_upstream naming the host and the known upstreams", async (t) => {
  const result = await appRequest(`${caller.proxyUrl}/v1/stock`, { headers: ["Host: inventory"] });
  const error = sidecarError(result);
  t.equal(error.status, 502);
  t.equal(error.header, "unknown_upstream");
  t.equal(error.reason, "unknown_upstream");
  t.match(error.error, '"inventory"');
  t.match(error.error, "known upstreams: orders, payments, ledger");
  const line = await waitForLog(caller.logs, (l) => l.msg === "request" && l.path === "/v1/stock");
  t.match(line, {
    level: "warn",
    direction: "outbound",
    decision: "deny",
    reason: "unknown_upstream",
    status: 502,
  });
});

t.test("an unknown host in a proxy URL gets 502 unknown_upstream naming it", async (t) => {
  const result = await appRequest("http://inventory:8080/v1/stock", { proxy: caller.proxyUrl });
  const error = sidecarError(result);
  t.equal(error.status, 502);
  t.equal(error.reason, "unknown_upstream");
  t.match(error.error, '"inventory:8080"');
});

t.test("an https:// URL sent to the proxy is refused: mtlsd adds the TLS itself", async (t) => {
  const result = await appRequest(`${caller.proxyUrl}`, {
    args: ["--request-target", "https://orders/secret"],
  });
  const error = sidecarError(result);
  t.equal(error.status, 502);
  t.equal(error.reason, "unknown_upstream");
  t.match(error.error, "only http:// URLs");
});

t.test("a proxy URL with userinfo is refused with 400 bad_request", async (t) => {
  const result = await appRequest(caller.proxyUrl, { args: ["--request-target", "http://admin@orders/"] });
  const error = sidecarError(result);
  t.equal(error.status, 400);
  t.equal(error.reason, "bad_request");
  t.match(error.error, "userinfo");
});

t.test("a request-target that is neither a path nor an http:// URL gets 400 bad_request", async (t) => {
  for (const target of ["*", "http://[::1/x"]) {
    const result = await appRequest(caller.proxyUrl, {
      method: "OPTIONS",
      headers: ["Host: orders"],
      args: ["--request-target", target],
    });
    const error = sidecarError(result);
    t.equal(error.status, 400, target);
    t.equal(error.reason, "bad_request", target);
  }
});

t.test(
  "a CONNECT tunnel to anything but a configured upstream is refused with 405 and an explanation",
  async (t) => {
    const app = plainConnection(caller.outboundPort);
    t.teardown(() => app.socket.destroy());
    app.socket.write("CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n");
    await app.closedWithin(3000);
    t.match(app.received(), /^HTTP\/1\.1 405 /);
    t.match(app.received(), "send plain http:// requests");
  },
);

t.test(
  "HTTP/2 (h2c): an :authority RFC 3986 refuses gets 400 bad_request; a valid one is routed",
  async (t) => {
    const session = http2.connect(caller.proxyUrl);
    session.on("error", () => {});
    t.teardown(() => session.close());
    const status = (authority: string) =>
      new Promise<{ status: number; reason: unknown }>((resolve, reject) => {
        const stream = session.request({ ":path": "/h2-authority", ":authority": authority });
        stream.on("response", (headers) =>
          resolve({ status: Number(headers[":status"]), reason: headers["x-mtlsd-reason"] }),
        );
        stream.on("error", reject);
        stream.resume();
        stream.end();
      });
    t.same(await status("orders:99999"), { status: 400, reason: "bad_request" });
    t.same(await status("or%zzders"), { status: 400, reason: "bad_request" });
    t.equal((await status("orders")).status, 200);
  },
);
