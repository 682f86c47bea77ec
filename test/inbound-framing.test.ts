// Ambiguous framing and hop-by-hop headers, sent as raw bytes: nothing is smuggled past the sidecar.
import http from "node:http";
import type { AddressInfo } from "node:net";
import t, { type Test } from "tap";
import { startApp } from "./helpers/app.ts";
import { createTestPki } from "./helpers/pki.ts";
import { type ClientTls, exchange, RawConnection, rawGet, startWiretap } from "./helpers/raw-http.ts";
import { startSidecar, waitForLog } from "./helpers/sidecar.ts";

const pki = await createTestPki();
t.teardown(() => pki.cleanup());
const app = await startApp();
t.teardown(() => app.stop());
// Everything the sidecar sends the echo app passes a byte recorder: a smuggled request would show up there
// even if the sidecar itself never parsed it as one.
const wire = await startWiretap(app.port);
t.teardown(() => wire.close());

const orders = await pki.identity("orders");
const frontend = await pki.identity("frontend");
const client: ClientTls = { ca: pki.bundlePem, cert: frontend.chainPem, key: frontend.keyPem };

// Everything but /denied-* is allowed, so anything the sidecar mistook for a request would be forwarded and
// seen on the wire.
const openPolicy = {
  default: "allow",
  rules: [{ name: "no-denied", action: "deny", from: ["*"], to: [{ paths: ["/denied-*"] }] }],
};
const sidecar = await startSidecar(pki, orders, {
  inbound: { listen: "127.0.0.1:0", app: wire.url, policy: openPolicy },
  limits: { maxHeaderSize: "2KiB" },
});
t.teardown(() => sidecar.stop());

const SMUGGLED = "GET /smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n";

interface Echo {
  method: string;
  url: string;
  headers: Record<string, string | string[] | undefined>;
  rawHeaders: string[];
  bodyBytes: number;
}

function receivedHeaderNames(echo: Echo): string[] {
  return echo.rawHeaders.filter((_, i) => i % 2 === 0).map((name) => name.toLowerCase());
}

/**
 * A request on its own connection that must be forwarded: once its response is back, the app has been sent
 * everything the sidecar forwarded before it (requests here run one at a time).
 */
async function settle(): Promise<void> {
  const result = await exchange(sidecar.inboundPort, client, rawGet("/settle"));
  if (result.responses[0]?.status !== 200) throw new Error(`settle request failed: ${result.raw}`);
}

/**
 * Sends a request whose framing is ambiguous, with a second request hidden where a lenient parser would find
 * it, and checks: one 400 from the sidecar, the connection closed, and no /smuggled on the app's wire.
 * Unless `headMayReachApp`, it also checks that not even the first request's head was forwarded.
 */
async function assertNotSmuggled(t: Test, bytes: string, headMayReachApp = false): Promise<void> {
  const path = /^[A-Z]+ (\S+)/.exec(bytes)![1]!;
  const logsBefore = sidecar.logs.length;
  const result = await exchange(sidecar.inboundPort, client, bytes, { expect: 2, timeoutMs: 2000 });
  t.equal(result.responses.length, 1, "exactly one response: the hidden request got none");
  const response = result.responses[0];
  t.equal(response?.status, 400);
  t.equal(response?.header("x-mtlsd-reason"), "bad_request");
  t.ok(result.closed, "the sidecar closed the connection, where the hidden request would have waited");
  await waitForLog(
    sidecar.logs,
    (line) => line.msg === "request" && line.status === 400 && sidecar.logs.indexOf(line) >= logsBefore,
  );
  await settle();
  const targets = wire.requests().map((r) => r.target);
  t.notOk(targets.includes("/smuggled"), "the app was never sent the hidden request");
  t.notOk(wire.text().includes("/smuggled"), "not even as body bytes");
  t.notOk(targets.includes("<unparsable>"), "what the app was sent frames as clean HTTP/1.1");
  if (!headMayReachApp) t.notOk(targets.includes(path), "the app was never sent the ambiguous request");
}

function post(path: string, headers: string, body: string): string {
  return `POST ${path} HTTP/1.1\r\nHost: localhost\r\n${headers}\r\n${body}`;
}

t.test("a request with both Content-Length and Transfer-Encoding: chunked is refused", async (t) => {
  await assertNotSmuggled(
    t,
    post("/cl-te", "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", `0\r\n\r\n${SMUGGLED}`),
  );
});

t.test("a request with Transfer-Encoding: chunked before Content-Length is refused", async (t) => {
  await assertNotSmuggled(
    t,
    post(
      "/te-cl",
      `Transfer-Encoding: chunked\r\nContent-Length: ${5 + SMUGGLED.length}\r\n`,
      `0\r\n\r\n${SMUGGLED}`,
    ),
  );
});

t.test("a request with two different Content-Length headers is refused", async (t) => {
  await assertNotSmuggled(
    t,
    post("/two-cl", `Content-Length: 0\r\nContent-Length: ${SMUGGLED.length}\r\n`, SMUGGLED),
  );
});

t.test("a request with two equal Content-Length headers is refused as well", async (t) => {
  const length = SMUGGLED.length;
  await assertNotSmuggled(
    t,
    post("/same-cl", `Content-Length: ${length}\r\nContent-Length: ${length}\r\n`, SMUGGLED),
  );
});

t.test("CVE-2022-32215: Transfer-Encoding: gzip without chunked is refused", async (t) => {
  await assertNotSmuggled(t, post("/te-gzip", "Transfer-Encoding: gzip\r\n", SMUGGLED));
});

t.test("Transfer-Encoding: chunked, identity (chunked not last) is refused", async (t) => {
  await assertNotSmuggled(
    t,
    post("/te-chunked-identity", "Transfer-Encoding: chunked, identity\r\n", `0\r\n\r\n${SMUGGLED}`),
  );
});

t.test("CVE-2022-32215: a Transfer-Encoding folded over two lines is refused", async (t) => {
  await assertNotSmuggled(
    t,
    post("/te-folded", "Transfer-Encoding: gzip,\r\n chunked\r\n", `0\r\n\r\n${SMUGGLED}`),
  );
});

t.test("an obs-fold continuation line in any header is refused", async (t) => {
  await assertNotSmuggled(
    t,
    post("/obs-fold", `X-Note: a\r\n b\r\nContent-Length: ${SMUGGLED.length}\r\n`, SMUGGLED),
  );
});

t.test("CVE-2024-27982: a Content-Length line starting with a space is refused", async (t) => {
  await assertNotSmuggled(
    t,
    post("/space-cl", `X-Note: a\r\n Content-Length: ${SMUGGLED.length}\r\n`, SMUGGLED),
  );
});

t.test("a space between a header name and its colon is refused", async (t) => {
  await assertNotSmuggled(t, post("/space-colon", `Content-Length : ${SMUGGLED.length}\r\n`, SMUGGLED));
});

t.test("CVE-2022-32214: a header line ending in a bare LF is refused", async (t) => {
  await assertNotSmuggled(t, post("/bare-lf", `X-Note: a\nContent-Length: ${SMUGGLED.length}\r\n`, SMUGGLED));
});

t.test("a request written entirely with bare LF line endings is refused", async (t) => {
  await assertNotSmuggled(
    t,
    `POST /all-lf HTTP/1.1\nHost: localhost\nContent-Length: ${SMUGGLED.length}\n\n${SMUGGLED}`,
  );
});

t.test("CVE-2023-30589: a header line ending in a bare CR is refused", async (t) => {
  await assertNotSmuggled(t, post("/bare-cr", `X-Note: a\rContent-Length: ${SMUGGLED.length}\r\n`, SMUGGLED));
});

// Chunk errors are found after the head has been parsed, so the head may already be on its way to the app;
// what matters is that the app's request is cut off and the bytes after the error never read as a request.
t.test("a chunk size written as 0x5 is refused", async (t) => {
  await assertNotSmuggled(
    t,
    post("/chunk-0x", "Transfer-Encoding: chunked\r\n", `0x5\r\nhello\r\n0\r\n\r\n${SMUGGLED}`),
    true,
  );
});

t.test("a chunk extension ended by a bare LF is refused", async (t) => {
  await assertNotSmuggled(
    t,
    post("/chunk-ext-lf", "Transfer-Encoding: chunked\r\n", `5;ext\nhello\r\n0\r\n\r\n${SMUGGLED}`),
    true,
  );
});

t.test("a chunk with more data than its size says is refused", async (t) => {
  await assertNotSmuggled(
    t,
    post("/chunk-overrun", "Transfer-Encoding: chunked\r\n", `5\r\nhello${SMUGGLED}0\r\n\r\n`),
    true,
  );
});

t.test("a bad chunk after the head was forwarded cuts the app's request off", async (t) => {
  const connection = await RawConnection.open(sidecar.inboundPort, client);
  t.teardown(() => connection.close());
  // undici sends the head with the first body bytes, so one good chunk goes first.
  connection.write(post("/chunk-late", "Transfer-Encoding: chunked\r\n", "5\r\nhello\r\n"));
  // Wait until the head is on the app's wire, so the error comes mid-forward.
  const deadline = Date.now() + 3000;
  while (!wire.requests().some((r) => r.target === "/chunk-late") && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  t.ok(
    wire.requests().some((r) => r.target === "/chunk-late"),
    "the head was forwarded first",
  );
  connection.write(`0x5\r\nhello\r\n0\r\n\r\n${SMUGGLED}`);
  const result = await connection.read(2, 2000);
  t.same(
    result.responses.map((r) => r.status),
    [400],
    "the client gets the 400, not the app's answer",
  );
  t.ok(result.closed);
  const logged = await waitForLog(
    sidecar.logs,
    (line) => line.msg === "request" && line.path === "/chunk-late",
  );
  t.not(logged.status, 200, "the app's request did not complete");
  await settle();
  t.notOk(
    wire.requests().some((r) => r.target === "/smuggled"),
    "the app was never sent the hidden request",
  );
});

t.test("a chunk extension is legal HTTP and the chunk data reaches the app intact", async (t) => {
  // RFC 9112 §7.1.1: recipients ignore unknown chunk extensions; refusing them would break valid clients.
  const result = await exchange(
    sidecar.inboundPort,
    client,
    post("/chunk-ext", "Transfer-Encoding: chunked\r\n", "5;ext=1\r\nhello\r\n0\r\n\r\n"),
  );
  t.equal(result.responses[0]?.status, 200);
  const echo = JSON.parse(result.responses[0]!.body) as Echo;
  t.equal(echo.bodyBytes, 5);
  t.notOk(wire.text().includes("ext=1"), "the extension itself was not forwarded");
});

t.test("a denied request's Content-Length body is skipped, never read as the next request", async (t) => {
  const result = await exchange(
    sidecar.inboundPort,
    client,
    post("/denied-body", `Content-Length: ${SMUGGLED.length}\r\n`, SMUGGLED) + rawGet("/after-denied-body"),
    { expect: 2 },
  );
  t.same(
    result.responses.map((r) => r.status),
    [403, 200],
    "in order: a body read as a request would have taken the second answer",
  );
  t.equal((JSON.parse(result.responses[1]!.body) as Echo).url, "/after-denied-body");
  t.notOk(wire.text().includes("/smuggled"), "the app was never sent the body's bytes");
  t.notOk(
    sidecar.logs.some((line) => line.msg === "request" && line.path === "/smuggled"),
    "the sidecar never parsed the body as a request",
  );
});

t.test("a denied request's chunked body is skipped, never read as the next request", async (t) => {
  const body = `${SMUGGLED.length.toString(16)}\r\n${SMUGGLED}\r\n0\r\n\r\n`;
  const result = await exchange(
    sidecar.inboundPort,
    client,
    post("/denied-chunked", "Transfer-Encoding: chunked\r\n", body) + rawGet("/after-denied-chunked"),
    { expect: 2 },
  );
  t.same(
    result.responses.map((r) => r.status),
    [403, 200],
  );
  t.equal((JSON.parse(result.responses[1]!.body) as Echo).url, "/after-denied-chunked");
  t.notOk(wire.text().includes("/smuggled"));
  t.notOk(sidecar.logs.some((line) => line.msg === "request" && line.path === "/smuggled"));
});

t.test("headers a Connection header nominates never reach the app", async (t) => {
  const result = await exchange(
    sidecar.inboundPort,
    client,
    rawGet("/nominated", "Connection: keep-alive, X-Secret\r\nX-Secret: 1\r\nX-Kept: yes\r\n"),
  );
  t.equal(result.responses[0]?.status, 200);
  const echo = JSON.parse(result.responses[0]!.body) as Echo;
  t.notOk(receivedHeaderNames(echo).includes("x-secret"));
  t.notMatch(String(echo.headers.connection ?? ""), /x-secret/i, "the client's Connection value is gone too");
  t.equal(echo.headers["x-kept"], "yes", "ordinary headers pass");
});

t.test("the standard hop-by-hop headers never reach the app", async (t) => {
  const result = await exchange(
    sidecar.inboundPort,
    client,
    rawGet(
      "/hop-by-hop",
      "Keep-Alive: timeout=5, max=1000\r\nTE: deflate\r\nTrailer: X-Checksum\r\n" +
        "Proxy-Authorization: Basic c2VjcmV0OnNlY3JldA==\r\nProxy-Connection: keep-alive\r\n",
    ),
  );
  t.equal(result.responses[0]?.status, 200);
  const echo = JSON.parse(result.responses[0]!.body) as Echo;
  const names = receivedHeaderNames(echo);
  for (const name of ["keep-alive", "te", "trailer", "proxy-authorization", "proxy-connection"]) {
    t.notOk(names.includes(name), `${name} was dropped`);
  }
  t.notOk(wire.text().includes("c2VjcmV0OnNlY3JldA=="), "the proxy credentials never went on the app's wire");
});

t.test("TE: trailers reaches the app (gRPC servers require it); its other codings do not", async (t) => {
  const result = await exchange(sidecar.inboundPort, client, rawGet("/te", "TE: deflate, trailers\r\n"));
  t.equal(result.responses[0]?.status, 200);
  const echo = JSON.parse(result.responses[0]!.body) as Echo;
  t.equal(echo.headers.te, "trailers");
});

// RFC 9110 §7.8: a server may ignore Upgrade. A token mtlsd never tunnels (here the one httpclient5 5.4 sent on
// plain http://, which Envoy answered with 403) is dropped and the request served as HTTP/1.1.
t.test("Upgrade: TLS/1.2 never reaches the app and the request is served as plain HTTP", async (t) => {
  const result = await exchange(
    sidecar.inboundPort,
    client,
    rawGet("/upgrade", "Connection: Upgrade\r\nUpgrade: TLS/1.2\r\n"),
  );
  t.equal(result.responses[0]?.status, 200);
  const echo = JSON.parse(result.responses[0]!.body) as Echo;
  t.notOk(receivedHeaderNames(echo).includes("upgrade"));
  t.notMatch(String(echo.headers.connection ?? ""), /upgrade/i);
});

t.test("hop-by-hop headers in the app's response never reach the client", async (t) => {
  const hopApp = http.createServer((_req, res) => {
    res.writeHead(200, {
      Connection: "x-internal",
      "X-Internal": "1",
      "Keep-Alive": "timeout=5, max=7",
      "Proxy-Connection": "keep-alive",
      Upgrade: "h2c",
      "X-Public": "yes",
      "Content-Length": "2",
    });
    res.end("ok");
  });
  await new Promise<void>((resolve) => hopApp.listen(0, "127.0.0.1", resolve));
  t.teardown(() => new Promise<void>((resolve) => hopApp.close(() => resolve())));
  hopApp.on("connection", (socket) => t.teardown(() => socket.destroy()));
  const port = (hopApp.address() as AddressInfo).port;
  const front = await startSidecar(pki, orders, {
    inbound: { listen: "127.0.0.1:0", app: `http://127.0.0.1:${port}`, policy: openPolicy },
  });
  t.teardown(() => front.stop());

  const result = await exchange(front.inboundPort, client, rawGet("/response-hops"));
  const response = result.responses[0]!;
  t.equal(response.status, 200);
  t.equal(response.body, "ok");
  t.equal(response.header("x-public"), "yes");
  t.same(response.values("x-internal"), [], "the header the app's Connection nominated is gone");
  t.same(response.values("proxy-connection"), []);
  t.same(response.values("upgrade"), []);
  t.notMatch(response.values("connection").join(","), /x-internal/i, "the app's Connection value is gone");
  t.notMatch(response.values("keep-alive").join(","), /max=7/, "the app's Keep-Alive is gone");
});

t.test("a bad path followed by a good request, pipelined, still gets the good one a 200", async (t) => {
  const result = await exchange(
    sidecar.inboundPort,
    client,
    rawGet("/public%2F..%2Fadmin") + rawGet("/after-bad-path-pipelined"),
    { expect: 2 },
  );
  t.same(
    result.responses.map((r) => r.status),
    [400, 200],
  );
  t.equal(result.responses[0]!.header("x-mtlsd-reason"), "bad_path");
  t.equal((JSON.parse(result.responses[1]!.body) as Echo).url, "/after-bad-path-pipelined");
});

t.test(
  "a bad path followed by a good request on the same connection still gets the good one a 200",
  async (t) => {
    const connection = await RawConnection.open(sidecar.inboundPort, client);
    t.teardown(() => connection.close());
    connection.write(rawGet("/user/profile#frag"));
    const first = await connection.read(1);
    t.equal(first.responses[0]?.status, 400);
    t.equal(first.responses[0]?.header("x-mtlsd-reason"), "bad_path");
    t.notOk(first.closed, "a bad path is a complete, well-framed request: the connection stays open");
    connection.write(rawGet("/after-bad-path-sequential"));
    const second = await connection.read(1);
    t.equal(second.responses[0]?.status, 200);
    t.equal((JSON.parse(second.responses[0]!.body) as Echo).url, "/after-bad-path-sequential");
  },
);

t.test("headers larger than limits.maxHeaderSize get 431 and never reach the app", async (t) => {
  const result = await exchange(
    sidecar.inboundPort,
    client,
    rawGet("/too-big", `X-Padding: ${"a".repeat(3 * 1024)}\r\n`),
    { expect: 2 },
  );
  t.same(
    result.responses.map((r) => r.status),
    [431],
  );
  t.ok(result.closed);
  await settle();
  t.notOk(
    wire.requests().some((r) => r.target === "/too-big"),
    "the app was never sent the oversized request",
  );
});

t.test("headers just under limits.maxHeaderSize are forwarded", async (t) => {
  const result = await exchange(
    sidecar.inboundPort,
    client,
    rawGet("/almost-too-big", `X-Padding: ${"a".repeat(1536)}\r\n`),
  );
  t.equal(result.responses[0]?.status, 200);
});
