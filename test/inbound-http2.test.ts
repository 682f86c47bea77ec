// HTTP/2 on the inbound port: ALPN beside HTTP/1.1, each stream decided like a request, malformed ones reset alone.
import { once } from "node:events";
import http2 from "node:http2";
import t from "tap";
import { startApp } from "./helpers/app.ts";
import { curlRequest, openssl } from "./helpers/clients.ts";
import { FLAG, FRAME, type HeaderList, RawH2 } from "./helpers/h2-raw.ts";
import { createTestPki } from "./helpers/pki.ts";
import { startWiretap } from "./helpers/raw-http.ts";
import { startSidecar, waitForLog } from "./helpers/sidecar.ts";

const pki = await createTestPki();
t.teardown(() => pki.cleanup());
const frontend = await pki.identity("frontend");
const orders = await pki.identity("orders");
const app = await startApp();
t.teardown(() => app.stop());
// Every byte the inbound sends the app goes through this tap: a refused request must leave no trace there.
const wiretap = await startWiretap(app.port);
t.teardown(() => wiretap.close());
const policy = {
  rules: [
    {
      name: "frontend-reads",
      action: "allow",
      from: [frontend.spiffeId],
      to: [{ paths: ["/v1/*", "/etag", "/trailers", "/events", "/hold"] }],
    },
  ],
};
const sidecar = await startSidecar(pki, orders, {
  inbound: { listen: "127.0.0.1:0", app: wiretap.url, policy },
});
t.teardown(() => sidecar.stop());
const port = sidecar.inboundPort;
const tlsClient = {
  ca: pki.bundlePem,
  cert: frontend.chainPem,
  key: frontend.keyPem,
  servername: "localhost",
};
const curlTls = { cacert: pki.bundlePath, cert: frontend.certPath, key: frontend.keyPath };

/** A Node HTTP/2 client with the frontend's certificate: one session, many streams. */
async function h2Session(target = port): Promise<http2.ClientHttp2Session> {
  const session = http2.connect(`https://localhost:${target}`, tlsClient);
  session.on("error", () => {});
  await once(session, "connect");
  return session;
}

function get(
  session: http2.ClientHttp2Session,
  path: string,
  extra: http2.OutgoingHttpHeaders = {},
): Promise<{
  status: number;
  headers: http2.IncomingHttpHeaders;
  body: string;
  trailers?: http2.IncomingHttpHeaders;
}> {
  return new Promise((resolve, reject) => {
    const stream = session.request({ ":path": path, ...extra });
    const chunks: Buffer[] = [];
    let headers: http2.IncomingHttpHeaders = {};
    let trailers: http2.IncomingHttpHeaders | undefined;
    stream.on("response", (fields) => {
      headers = fields;
    });
    stream.on("trailers", (fields) => {
      trailers = fields;
    });
    stream.on("data", (chunk: Buffer) => chunks.push(chunk));
    stream.on("end", () =>
      resolve({
        status: Number(headers[":status"]),
        headers,
        body: Buffer.concat(chunks).toString(),
        ...(trailers ? { trailers } : {}),
      }),
    );
    stream.on("error", reject);
  });
}

const GOOD: HeaderList = [
  [":method", "GET"],
  [":scheme", "https"],
  [":authority", "orders"],
];

t.test("curl negotiates h2 by default and gets what an HTTP/1.1 request gets", async (t) => {
  const result = await curlRequest(`https://localhost:${port}/v1/orders/1?q=1`, curlTls);
  t.match(result.stdout, /^HTTP\/2 200/, "the response came over HTTP/2");
  const echo = JSON.parse(result.response!.body) as { url: string; headers: Record<string, string> };
  t.equal(echo.url, "/v1/orders/1?q=1");
  t.match(echo.headers["x-forwarded-client-cert"], `URI=${frontend.spiffeId}`);
  t.equal(echo.headers.host, `localhost:${port}`, ":authority reaches an HTTP/1.1 app as Host");
  const line = await waitForLog(sidecar.logs, (l) => l.msg === "request" && l.path === "/v1/orders/1");
  t.match(line, { protocol: "h2", decision: "allow", status: 200, source_identity: frontend.spiffeId });
});

t.test(
  "ALPN: HTTP/1.1, and HTTP/1.0 clients that offer only http/1.0, are served on the same port",
  async (t) => {
    const http11 = await curlRequest(`https://localhost:${port}/v1/one`, { ...curlTls, args: ["--http1.1"] });
    t.match(http11.stdout, /^HTTP\/1\.1 200/);
    const http10 = await curlRequest(`https://localhost:${port}/v1/ten`, { ...curlTls, args: ["--http1.0"] });
    t.equal(http10.code, 0, http10.stderr);
    t.match(http10.stdout, /^HTTP\/1\.[01] 200/, "not refused with no_application_protocol");
    t.match(JSON.parse(http10.response!.body), { httpVersion: "1.1" }, "forwarded to the app as HTTP/1.1");
    const odd = await openssl(
      [
        "s_client",
        "-connect",
        `127.0.0.1:${port}`,
        "-servername",
        "localhost",
        "-CAfile",
        pki.bundlePath,
        "-cert",
        frontend.certPath,
        "-cert_chain",
        frontend.certPath,
        "-key",
        frontend.keyPath,
        "-alpn",
        "spdy/3",
        "-quiet",
      ],
      { input: "GET /v1/odd HTTP/1.1\r\nHost: orders\r\nConnection: close\r\n\r\n", timeoutMs: 5000 },
    );
    t.match(odd.stdout, /^HTTP\/1\.1 200/, "a client with no ALPN overlap gets HTTP/1.1");
  },
);

t.test("a stream the policy denies gets 403 policy_denied; the session serves the next one", async (t) => {
  const session = await h2Session();
  t.teardown(() => session.close());
  const denied = await get(session, "/admin/users");
  t.equal(denied.status, 403);
  t.equal(denied.headers["x-mtlsd-reason"], "policy_denied");
  t.match(JSON.parse(denied.body), { reason: "policy_denied" });
  const allowed = await get(session, "/v1/after-denial");
  t.equal(allowed.status, 200);
  t.notMatch(wiretap.text(), "/admin/users", "the denied request never reached the app");
});

t.test("a peer without a client certificate that chose h2 reads its refusal in HTTP/2", async (t) => {
  const result = await curlRequest(`https://localhost:${port}/v1/orders`, { cacert: pki.bundlePath });
  t.match(result.stdout, /^HTTP\/2 403/);
  t.equal(result.response?.headers["x-mtlsd-reason"], "no_client_cert");
});

t.test("many streams on one connection are multiplexed, each decided and logged", async (t) => {
  const session = await h2Session();
  t.teardown(() => session.close());
  const results = await Promise.all(Array.from({ length: 20 }, (_, i) => get(session, `/v1/many/${i}`)));
  t.same(
    results.map((result) => result.status),
    Array(20).fill(200),
  );
  const lines = sidecar.logs.filter((l) => l.msg === "request" && String(l.path).startsWith("/v1/many/"));
  t.equal(lines.length, 20, "one log line per stream");
});

// RFC 9113 §8.2–8.3: malformed requests are stream errors, never forwarded, and the connection's other streams
// go on. nghttp2 checks most of these; mtlsd checks :authority against host itself.
const MALFORMED: [string, HeaderList][] = [
  ["an uppercase field name", [...GOOD, [":path", "/v1/bad-upper"], ["X-Upper", "1"]]],
  ["a connection-specific field", [...GOOD, [":path", "/v1/bad-connection"], ["connection", "keep-alive"]]],
  ["transfer-encoding", [...GOOD, [":path", "/v1/bad-te"], ["transfer-encoding", "chunked"]]],
  ["TE other than trailers", [...GOOD, [":path", "/v1/bad-te-gzip"], ["te", "gzip"]]],
  ["a duplicate :path", [...GOOD, [":path", "/v1/bad-dup"], [":path", "/v1/other"]]],
  [
    "a missing :scheme",
    [
      [":method", "GET"],
      [":path", "/v1/bad-scheme"],
      [":authority", "orders"],
    ],
  ],
  ["an unknown pseudo-header", [...GOOD, [":path", "/v1/bad-pseudo"], [":protocol", "x"]]],
  [
    "a pseudo-header after a regular field",
    [
      [":method", "GET"],
      ["x-a", "1"],
      [":scheme", "https"],
      [":path", "/v1/bad-order"],
    ],
  ],
  [":authority and host that differ", [...GOOD, [":path", "/v1/bad-host"], ["host", "payments"]]],
  [
    ":authority with userinfo",
    [
      [":method", "GET"],
      [":scheme", "https"],
      [":path", "/v1/bad-userinfo"],
      [":authority", "me@orders"],
    ],
  ],
];

t.test("malformed requests are reset alone, never reach the app, and the connection serves on", async (t) => {
  const raw = await RawH2.connect({ port, tls: tlsClient });
  t.teardown(() => raw.close());
  let stream = 1;
  for (const [what, headers] of MALFORMED) {
    raw.request(stream, headers);
    const result = await raw.result(stream);
    t.equal(result.reset, "PROTOCOL_ERROR", `${what}: a stream error`);
    t.equal(result.headers.length, 0, `${what}: no response head before the reset`);
    stream += 2;
    raw.request(stream, [...GOOD, [":path", `/v1/after-${stream}`]]);
    t.equal((await raw.result(stream)).status, 200, `${what}: the next stream on the connection is served`);
    stream += 2;
  }
  t.equal(raw.goaway, undefined, "the connection was never closed");
  for (const [, headers] of MALFORMED) {
    const path = headers.find(([name]) => name === ":path")![1];
    t.notMatch(wiretap.text(), path, `${path} never reached the app`);
  }
  const logged = await waitForLog(sidecar.logs, (l) => l.msg === "request" && l.path === "/v1/bad-host");
  t.match(logged, { status: 400, reason: "bad_request", decision: "deny", protocol: "h2" });
  t.match(logged.error, ":authority");
});

t.test("a body shorter than its content-length is a stream error and never a complete request", async (t) => {
  const raw = await RawH2.connect({ port, tls: tlsClient });
  t.teardown(() => raw.close());
  raw.request(
    1,
    [[":method", "POST"], ...GOOD.slice(1), [":path", "/v1/short-body"], ["content-length", "10"]],
    false,
  );
  raw.data(1, "abc", true);
  t.equal((await raw.result(1)).reset, "PROTOCOL_ERROR");
  raw.request(3, [...GOOD, [":path", "/v1/after-short"]]);
  t.equal((await raw.result(3)).status, 200, "the connection's next stream is served");
  await new Promise((resolve) => setTimeout(resolve, 100));
  t.notMatch(wiretap.text(), /POST \/v1\/short-body[\s\S]*abc/, "the app never got the body");
});

// Node's HTTP/2 layer (nghttp2 1.70 inside Node 26) treats DATA beyond the declared content-length as an error
// of the whole session: that connection ends (GOAWAY) instead of the one stream. The request is still never
// delivered complete, and no other connection notices.
t.test("a body longer than its content-length never reaches the app complete", async (t) => {
  const raw = await RawH2.connect({ port, tls: tlsClient });
  t.teardown(() => raw.close());
  raw.request(
    1,
    [[":method", "POST"], ...GOOD.slice(1), [":path", "/v1/long-body"], ["content-length", "2"]],
    false,
  );
  raw.data(1, "abcdef", true);
  await raw.until(() => raw.closed || raw.streams.get(1)?.reset !== undefined).catch(() => {});
  t.notOk(raw.streams.get(1)?.status, "no response");
  t.notMatch(wiretap.text(), /abcdef/, "the app never got the body");
  const other = await h2Session();
  t.teardown(() => other.close());
  t.equal((await get(other, "/v1/after-long")).status, 200, "other connections are served");
});

t.test("CONNECT in an HTTP/2 stream is refused with 405", async (t) => {
  const raw = await RawH2.connect({ port, tls: tlsClient });
  t.teardown(() => raw.close());
  raw.request(1, [
    [":method", "CONNECT"],
    [":authority", "127.0.0.1:22"],
  ]);
  const result = await raw.result(1);
  t.equal(result.status, 405);
});

t.test("HEAD and 304 over HTTP/2 end with their head", async (t) => {
  const session = await h2Session();
  t.teardown(() => session.close());
  const head = await get(session, "/v1/head", { ":method": "HEAD" });
  t.equal(head.status, 200);
  t.equal(head.body, "");
  const notModified = await get(session, "/etag", { "if-none-match": '"v1"' });
  t.equal(notModified.status, 304);
  t.equal(notModified.body, "");
  t.equal((await get(session, "/v1/after-304")).status, 200, "the session goes on");
});

t.test(
  "in permissive mode a plaintext HTTP/2 client (prior knowledge) is served as unauthenticated",
  async (t) => {
    const permissive = await startSidecar(pki, orders, {
      inbound: {
        listen: "127.0.0.1:0",
        app: wiretap.url,
        mode: "permissive",
        policy: { rules: [{ name: "anyone", action: "allow", to: [{ paths: ["/v1/*"] }] }] },
      },
    });
    t.teardown(() => permissive.stop());
    const session = http2.connect(`http://127.0.0.1:${permissive.inboundPort}`);
    session.on("error", () => {});
    t.teardown(() => session.close());
    const result = await get(session, "/v1/plain-h2c", { "x-forwarded-client-cert": "By=forged" });
    t.equal(result.status, 200);
    const echo = JSON.parse(result.body) as { headers: Record<string, string> };
    t.equal(echo.headers["x-forwarded-client-cert"], undefined, "a forged XFCC never reaches the app");
    t.equal(echo.headers["x-forwarded-proto"], "http");
    const line = await waitForLog(permissive.logs, (l) => l.msg === "request" && l.path === "/v1/plain-h2c");
    t.match(line, { protocol: "h2", plaintext: true, source_identity: "unauthenticated" });
  },
);

t.test(
  "an app head HTTP/2 cannot carry (two Content-Type fields) is a 502 upstream_protocol_error",
  async (t) => {
    const { createServer } = await import("node:http");
    const odd = createServer((_req, res) => {
      res.writeHead(200, [
        ["content-type", "text/plain"],
        ["content-type", "text/html"],
      ]);
      res.end("which one?");
    });
    await new Promise<void>((resolve) => odd.listen(0, "127.0.0.1", resolve));
    t.teardown(() => new Promise<void>((resolve) => odd.close(() => resolve())));
    const address = odd.address() as { port: number };
    const front = await startSidecar(pki, orders, {
      inbound: { listen: "127.0.0.1:0", app: `http://127.0.0.1:${address.port}`, policy },
    });
    t.teardown(() => front.stop());
    const session = await h2Session(front.inboundPort);
    t.teardown(() => session.close());
    const result = await get(session, "/v1/odd-head");
    t.equal(result.status, 502);
    t.equal(result.headers["x-mtlsd-reason"], "upstream_protocol_error");
    t.match(JSON.parse(result.body).error, "content-type");
    const http11 = await curlRequest(`https://localhost:${front.inboundPort}/v1/odd-head`, {
      ...curlTls,
      args: ["--http1.1"],
    });
    t.equal(http11.response?.status, 200, "an HTTP/1.1 peer gets the head as the app sent it");
  },
);

t.test(
  "an app body framed by Content-Length ends its HTTP/2 stream with the data; a chunked one may carry trailers",
  async (t) => {
    const { createServer } = await import("node:http");
    const framed = createServer((req, res) => {
      if (req.url === "/v1/length") {
        res.writeHead(200, { "content-type": "text/plain", "content-length": "5" });
        res.end("hello");
        return;
      }
      res.writeHead(200, { "content-type": "text/plain", trailer: "x-checksum" });
      res.write("hel");
      res.addTrailers({ "x-checksum": "abc" });
      res.end("lo");
    });
    await new Promise<void>((resolve) => framed.listen(0, "127.0.0.1", resolve));
    t.teardown(() => new Promise<void>((resolve) => framed.close(() => resolve())));
    const address = framed.address() as { port: number };
    const front = await startSidecar(pki, orders, {
      inbound: { listen: "127.0.0.1:0", app: `http://127.0.0.1:${address.port}`, policy },
    });
    t.teardown(() => front.stop());
    const raw = await RawH2.connect({ port: front.inboundPort, tls: tlsClient });
    t.teardown(() => raw.close());
    raw.request(1, [...GOOD, [":path", "/v1/length"]]);
    const length = await raw.result(1);
    t.equal(length.data.toString(), "hello");
    t.equal(length.headers.length, 1, "one header block: no trailing HEADERS frame");
    const frames = raw.frames.filter((f) => f.stream === 1 && f.type !== FRAME.WINDOW_UPDATE);
    t.same(
      frames.map((f) => [f.type, f.payload.length, f.flags & FLAG.END_STREAM]),
      [
        [FRAME.HEADERS, frames[0]!.payload.length, 0],
        [FRAME.DATA, 5, FLAG.END_STREAM],
      ],
      "HEADERS, then one DATA frame that ends the stream (no empty frame to end it)",
    );
    raw.request(3, [...GOOD, [":path", "/v1/chunked"]]);
    const chunked = await raw.result(3);
    t.equal(chunked.data.toString(), "hello");
    t.equal(chunked.headers.length, 2, "a chunked body's trailers follow in a header block of their own");
    t.same(chunked.headers[1], [["x-checksum", "abc"]]);
  },
);
