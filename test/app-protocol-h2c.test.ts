// inbound.appProtocol: h2c — HTTP/1.1 and HTTP/2 peers alike reach an HTTP/2 app; trailers and resets pass through.
import { once } from "node:events";
import http2 from "node:http2";
import t from "tap";
import { startApp } from "./helpers/app.ts";
import { curlRequest, rawTlsRequest } from "./helpers/clients.ts";
import { createTestPki } from "./helpers/pki.ts";
import { startSidecar, waitForLog } from "./helpers/sidecar.ts";

const pki = await createTestPki();
t.teardown(() => pki.cleanup());
const frontend = await pki.identity("frontend");
const orders = await pki.identity("orders");
const app = await startApp(0, "echo-app.ts", { APP_PROTOCOL: "h2c" });
t.teardown(() => app.stop());
const sidecar = await startSidecar(pki, orders, {
  inbound: {
    listen: "127.0.0.1:0",
    app: app.url,
    appProtocol: "h2c",
    policy: { rules: [{ name: "frontend", action: "allow", from: [frontend.spiffeId] }] },
  },
});
t.teardown(() => sidecar.stop());
const tlsClient = {
  ca: pki.bundlePem,
  cert: frontend.chainPem,
  key: frontend.keyPem,
  servername: "localhost",
};
const curlTls = { cacert: pki.bundlePath, cert: frontend.certPath, key: frontend.keyPath };

interface Echo {
  url: string;
  httpVersion: string;
  headers: Record<string, string>;
  bodyBytes: number;
}

t.test("an HTTP/1.1 peer's request reaches the app over HTTP/2, with XFCC", async (t) => {
  const result = await curlRequest(`https://localhost:${sidecar.inboundPort}/h1?x=1`, {
    ...curlTls,
    args: ["--http1.1", "--data-binary", "twelve bytes"],
  });
  t.match(result.stdout, /^HTTP\/1\.1 200/);
  const echo = JSON.parse(result.response!.body) as Echo;
  t.equal(echo.httpVersion, "2.0");
  t.equal(echo.url, "/h1?x=1");
  t.equal(echo.bodyBytes, 12);
  t.equal(echo.headers[":authority"], `localhost:${sidecar.inboundPort}`, "Host became :authority");
  t.match(echo.headers["x-forwarded-client-cert"], `URI=${frontend.spiffeId}`);
  t.equal(echo.headers.connection, undefined, "no connection-specific field reached the app");
});

t.test("an HTTP/1.0 request without Host reaches the app with the :authority of inbound.app", async (t) => {
  // HTTP/1.0 may leave Host out (RFC 9112 §3.2); HTTP/2 to the app needs an :authority all the same.
  const raw = await rawTlsRequest({
    port: sidecar.inboundPort,
    ...tlsClient,
    ALPNProtocols: ["http/1.1"],
    send: "GET /no-host HTTP/1.0\r\n\r\n",
  });
  t.equal(raw.response?.status, 200, raw.received);
  const echo = JSON.parse(raw.response!.body) as Echo;
  t.equal(echo.httpVersion, "2.0");
  t.equal(echo.url, "/no-host");
  t.equal(echo.headers[":authority"], new URL(app.url).host);
});

t.test("an HTTP/2 peer's request reaches the app over HTTP/2 too", async (t) => {
  const result = await curlRequest(`https://localhost:${sidecar.inboundPort}/h2`, {
    ...curlTls,
    args: ["--http2"],
  });
  t.match(result.stdout, /^HTTP\/2 200/);
  t.match(JSON.parse(result.response!.body), { httpVersion: "2.0", url: "/h2" });
  const line = await waitForLog(sidecar.logs, (l) => l.msg === "request" && l.path === "/h2");
  t.match(line, { protocol: "h2", status: 200 });
});

t.test(
  "the app's trailers reach an HTTP/2 peer as trailers and an HTTP/1.1 peer in the chunked body",
  async (t) => {
    const session = http2.connect(`https://localhost:${sidecar.inboundPort}`, tlsClient);
    t.teardown(() => session.close());
    const stream = session.request({ ":path": "/trailers" });
    let body = "";
    stream.on("data", (chunk: Buffer) => {
      body += chunk;
    });
    const [trailers] = (await once(stream, "trailers")) as [http2.IncomingHttpHeaders];
    t.equal(body, "row 1\nrow 2\n");
    t.equal(trailers["x-checksum"], "sha256=abc123");
    t.equal(trailers["x-rows"], "2");

    const raw = await rawTlsRequest({
      port: sidecar.inboundPort,
      ...tlsClient,
      ALPNProtocols: ["http/1.1"],
      send: "GET /trailers HTTP/1.1\r\nHost: orders\r\nTE: trailers\r\nConnection: close\r\n\r\n",
    });
    t.match(raw.received, /^HTTP\/1\.1 200/);
    t.match(raw.received, /\r\ntrailer: x-checksum, x-rows\r\n/i, "the Trailer field announces them");
    t.match(
      raw.received,
      /\r\n0\r\nx-checksum: sha256=abc123\r\nx-rows: 2\r\n\r\n$/,
      "and they follow the last chunk",
    );
  },
);

t.test("a peer that resets its stream reaches the app as a reset of the app's stream", async (t) => {
  const session = http2.connect(`https://localhost:${sidecar.inboundPort}`, tlsClient);
  t.teardown(() => session.close());
  const stream = session.request({ ":path": "/hold" });
  stream.on("error", () => {});
  await once(stream, "data");
  stream.close(http2.constants.NGHTTP2_CANCEL);
  const event = await app.event((e) => e.event === "aborted" && e.url === "/hold");
  t.equal(event.httpVersion, "2.0");
  const line = await waitForLog(sidecar.logs, (l) => l.msg === "request" && l.path === "/hold");
  t.equal(line.reason, "client_closed");
});

t.test("streams are timed by their idleness, not by requestTimeout", async (t) => {
  const short = await startSidecar(pki, orders, {
    inbound: {
      listen: "127.0.0.1:0",
      app: app.url,
      appProtocol: "h2c",
      streamIdleTimeout: "1500ms",
      policy: { rules: [{ name: "frontend", action: "allow", from: [frontend.spiffeId] }] },
    },
    limits: { requestTimeout: "500ms", headersTimeout: "500ms" },
  });
  t.teardown(() => short.stop());
  const session = http2.connect(`https://localhost:${short.inboundPort}`, tlsClient);
  t.teardown(() => session.close());
  // Events every 300 ms for 1.8 s: longer than requestTimeout, never idle for streamIdleTimeout.
  const events = session.request({ ":path": "/events?count=6&every=300" });
  let text = "";
  events.on("data", (chunk: Buffer) => {
    text += chunk;
  });
  await once(events, "end");
  t.equal(text.match(/^data: /gm)?.length, 6, "every event arrived");
  // A response that then goes silent is cut once idle for streamIdleTimeout.
  const held = session.request({ ":path": "/hold" });
  held.on("data", () => {});
  held.on("error", () => {});
  await new Promise((resolve) => held.on("close", resolve));
  t.not(held.rstCode, 0, "the idle stream was reset");
  const line = await waitForLog(short.logs, (l) => l.msg === "request" && l.path === "/hold");
  // Whichever side's idle timer fires first: the peer's stream (request_timeout) or the app's (upstream_timeout).
  t.match(line.reason, /^(request_timeout|upstream_timeout)$/);
  t.match(line.error, "streamIdleTimeout");
});
