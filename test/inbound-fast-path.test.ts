// The inbound port's HTTP/1.1 fast path: plain requests on a verified TLS connection are served on the socket,
// through the same pipeline as node:http's (peer, path normalization, policy, XFCC, headers, logs, metrics), and
// every head it does not take, smuggling heads among them, is node:http's, answered as it always was.
import { createHash, X509Certificate } from "node:crypto";
import tls from "node:tls";
import t from "tap";
import { startApp } from "./helpers/app.ts";
import { createTestPki } from "./helpers/pki.ts";
import {
  type ClientTls,
  exchange,
  RawConnection,
  type RawResponse,
  rawGet,
  startWiretap,
  type TappedRequest,
} from "./helpers/raw-http.ts";
import { type LogLine, startSidecar, waitForLog } from "./helpers/sidecar.ts";

type Test = Parameters<Parameters<typeof t.test>[0]>[0];

const HEADERS_TIMEOUT_MS = 1000;
// Node checks its own timers on a tick; the rest is slack for a busy machine.
const SLACK_MS = 1500;

const pki = await createTestPki();
t.teardown(() => pki.cleanup());
const app = await startApp();
t.teardown(() => app.stop());
// The sidecar reaches the echo app through a byte recorder: "the app never saw it" is checked on the wire.
const wire = await startWiretap(app.port);
t.teardown(() => wire.close());

const orders = await pki.identity("orders");
const frontend = await pki.identity("frontend");
const anyone = ["*"];
const sidecar = await startSidecar(pki, orders, {
  inbound: {
    listen: "127.0.0.1:0",
    app: wire.url,
    xfcc: "sanitize_set",
    policy: {
      default: "deny",
      rules: [
        { name: "public-reads", action: "allow", from: anyone, to: [{ paths: ["/public/*", "/info/*"] }] },
        { name: "v1", action: "allow", from: anyone, to: [{ paths: ["/v1/*"] }] },
        { name: "no-admin", action: "deny", from: anyone, to: [{ paths: ["/admin*", "/private*"] }] },
        { name: "no-exact", action: "deny", from: anyone, to: [{ paths: ["/v1/exact"] }] },
      ],
    },
  },
  limits: { headersTimeout: `${HEADERS_TIMEOUT_MS}ms`, keepAliveTimeout: "5s" },
});
t.teardown(() => sidecar.stop());

const client: ClientTls = { ca: pki.bundlePem, cert: frontend.chainPem, key: frontend.keyPem };

/** Requests the fast path has served so far: read from the listener's own count, no mock involved. */
function fastServed(): number {
  return sidecar.sidecar.inboundStats()!.fastPathRequests;
}

/**
 * A head the fast path calls `other` (a field value with obs-text, which llhttp accepts) and node:http serves:
 * sent first, it hands the connection to node:http, so what follows it on the connection is node:http's.
 */
const HANDOVER = "GET /public/handover HTTP/1.1\r\nHost: localhost\r\nX-Note: caf\xe9\r\n\r\n";

interface Echo {
  method: string;
  url: string;
  httpVersion: string;
  rawHeaders: string[];
  bodyBytes: number;
}

/** Every value of a header the app received, in order. */
function received(echo: Echo, name: string): string[] {
  const values: string[] = [];
  for (let i = 0; i < echo.rawHeaders.length; i += 2) {
    if (echo.rawHeaders[i]!.toLowerCase() === name) values.push(echo.rawHeaders[i + 1]!);
  }
  return values;
}

interface Outcome {
  /** What the client can tell apart: status, our reason, the connection's fate, the body. */
  answer: { status: number; reason: string | undefined; connection: string | undefined; body: unknown };
  /** The sidecar's request log line for it, without its timing. */
  log: Record<string, unknown>;
  /** Request-targets the app was sent for it, on the wire. */
  appSaw: string[];
  /** Whether the fast path served it. */
  fast: boolean;
}

function answerOf(response: RawResponse): Outcome["answer"] {
  let body: unknown = response.body;
  if (response.header("x-app") === "echo") body = JSON.parse(response.body) as Echo;
  return {
    status: response.status,
    reason: response.header("x-mtlsd-reason"),
    connection: response.header("connection"),
    body,
  };
}

/** The request-targets the app was sent since `before` (a snapshot of wire.requests()), whatever the pool did. */
function sentSince(before: TappedRequest[]): string[] {
  const earlier = new Map<string, number>();
  for (const { target } of before) earlier.set(target, (earlier.get(target) ?? 0) + 1);
  const since: string[] = [];
  for (const { target } of wire.requests()) {
    const left = earlier.get(target) ?? 0;
    if (left > 0) earlier.set(target, left - 1);
    else if (target !== "/public/handover") since.push(target);
  }
  return since;
}

/**
 * Sends `bytes` on a fresh connection; with `viaNode`, only once HANDOVER was answered on it, so node:http reads
 * them. Returns how the request was answered, logged and forwarded.
 */
async function attempt(bytes: string, viaNode: boolean): Promise<Outcome> {
  const logsBefore = sidecar.logs.length;
  const wireBefore = wire.requests();
  const fastBefore = fastServed();
  const connection = await RawConnection.open(sidecar.inboundPort, client);
  let response: RawResponse | undefined;
  try {
    if (viaNode) {
      connection.write(HANDOVER);
      const handover = await connection.read(1);
      if (handover.responses[0]?.status !== 200)
        throw new Error(`the handover request was not served: ${JSON.stringify(handover.raw)}`);
    }
    connection.write(bytes);
    const result = await connection.read(1);
    response = result.responses[0];
    if (!response) throw new Error(`no response; the sidecar sent ${JSON.stringify(result.raw)}`);
  } finally {
    connection.close();
  }
  const requestLines = () =>
    sidecar.logs
      .slice(logsBefore)
      .filter((line) => line.msg === "request" && line.path !== "/public/handover");
  await waitForLog(sidecar.logs, () => requestLines().length > 0);
  const { time: _time, duration_ms: _duration, ...log } = requestLines()[0]! as LogLine;
  return { answer: answerOf(response), log, appSaw: sentSince(wireBefore), fast: fastServed() > fastBefore };
}

/** The same bytes on the fast path and on node:http's path, decided alike; returns the fast one. */
async function decidedAlike(t: Test, bytes: string, fast = true): Promise<Outcome> {
  const quick = await attempt(bytes, false);
  const slow = await attempt(bytes, true);
  t.equal(quick.fast, fast, fast ? "the fast path served it" : "the fast path left it to node:http");
  t.equal(slow.fast, false, "after the handover, node:http served it");
  t.same(quick.answer, slow.answer, "the client gets the same answer");
  t.same(quick.log, slow.log, "the same request log line");
  t.same(quick.appSaw, slow.appSaw, "the app is sent the same");
  return quick;
}

t.test("a plain request takes the fast path, and one after a handover is node:http's", async (t) => {
  const before = fastServed();
  const quick = await attempt(rawGet("/public/one"), false);
  t.equal(quick.answer.status, 200);
  t.equal(fastServed(), before + 1, "counted once, by the fast path");
  const slow = await attempt(rawGet("/public/one"), true);
  t.equal(slow.answer.status, 200);
  t.equal(fastServed(), before + 1, "neither the handover nor the request after it were the fast path's");
});

t.test("many requests reuse one TLS connection, each served on the fast path", async (t) => {
  const connectionsBefore = sidecar.sidecar.inboundStats()!.connections;
  const fastBefore = fastServed();
  const connection = await RawConnection.open(sidecar.inboundPort, client);
  t.teardown(() => connection.close());
  for (let i = 0; i < 25; i++) {
    connection.write(rawGet(`/public/keep/${i}`));
    const { responses, closed } = await connection.read(1);
    t.equal(responses[0]?.status, 200, `request ${i}`);
    t.equal((JSON.parse(responses[0]!.body) as Echo).url, `/public/keep/${i}`);
    t.equal(responses[0]?.header("connection"), "keep-alive");
    t.equal(closed, false);
  }
  // Pipelined: answered in order.
  connection.write(rawGet("/public/pipe/a") + rawGet("/public/pipe/b") + rawGet("/public/pipe/c"));
  const { responses } = await connection.read(3);
  t.same(
    responses.map((response) => (JSON.parse(response.body) as Echo).url),
    ["/public/pipe/a", "/public/pipe/b", "/public/pipe/c"],
  );
  t.equal(sidecar.sidecar.inboundStats()!.connections, connectionsBefore + 1, "one TLS connection");
  t.equal(fastServed(), fastBefore + 28, "every request on the fast path");
});

t.test("an HTTP/1.0 request is answered and the connection closed, as node:http does", async (t) => {
  const quick = await decidedAlike(t, "GET /public/old HTTP/1.0\r\n\r\n");
  t.equal(quick.answer.status, 200);
  t.equal(quick.answer.connection, "close");
  t.equal((quick.answer.body as Echo).url, "/public/old");
});

t.test("a request asking for Connection: close gets it, and the connection ends", async (t) => {
  const result = await exchange(sidecar.inboundPort, client, rawGet("/public/bye", "Connection: close\r\n"));
  t.equal(result.responses[0]?.status, 200);
  t.equal(result.responses[0]?.header("connection"), "close");
  t.equal(result.closed, true);
  await decidedAlike(t, rawGet("/public/bye", "Connection: close\r\n"));
});

t.test("a HEAD request is answered without a body, and the connection serves the next", async (t) => {
  const fastBefore = fastServed();
  // Read by hand: a response parser cannot know that a HEAD answer's Content-Length promises no body.
  const socket = tls.connect({
    host: "127.0.0.1",
    port: sidecar.inboundPort,
    servername: "localhost",
    ALPNProtocols: ["http/1.1"],
    ...client,
  });
  t.teardown(() => socket.destroy());
  let text = "";
  socket.setEncoding("latin1");
  socket.on("data", (chunk: string) => {
    text += chunk;
  });
  const until = async (pattern: RegExp) => {
    const deadline = Date.now() + 3000;
    while (!pattern.test(text) && Date.now() < deadline)
      await new Promise((resolve) => setTimeout(resolve, 10));
  };
  socket.write("HEAD /public/head HTTP/1.1\r\nHost: localhost\r\n\r\n");
  await until(/\r\n\r\n/);
  await new Promise((resolve) => setTimeout(resolve, 100));
  t.match(text, /^HTTP\/1\.1 200 OK\r\n/);
  t.match(text, /\r\nConnection: keep-alive\r\n/i);
  t.match(text, /\r\n\r\n$/, "nothing after the head");
  const head = text.length;
  socket.write(rawGet("/public/after-head"));
  await until(/"url":"\/public\/after-head"/);
  t.match(text.slice(head), /^HTTP\/1\.1 200 OK\r\n[\s\S]*"url":"\/public\/after-head"/);
  t.equal(fastServed(), fastBefore + 2, "both on the fast path");
});

t.test("a POST body of Content-Length bytes reaches the app whole, on the fast path", async (t) => {
  const body = "x".repeat(3000);
  const quick = await decidedAlike(
    t,
    `POST /v1/orders HTTP/1.1\r\nHost: localhost\r\nContent-Length: ${body.length}\r\n\r\n${body}`,
  );
  t.equal(quick.answer.status, 200);
  t.match(quick.answer.body, { method: "POST", url: "/v1/orders", bodyBytes: 3000 });
});

t.test("the policy allows and denies on the fast path as on node:http's", async (t) => {
  const allowed = await decidedAlike(t, rawGet("/v1/things"));
  t.equal(allowed.answer.status, 200);
  t.match(allowed.log, { decision: "allow", rule: "v1", source_identity: frontend.spiffeId });
  const denied = await decidedAlike(t, rawGet("/admin/panel"));
  t.equal(denied.answer.status, 403);
  t.equal(denied.answer.reason, "policy_denied");
  t.match(denied.log, { decision: "deny", rule: "no-admin", status: 403, protocol: "http/1.1" });
  t.same(denied.appSaw, [], "the app never saw it");
});

t.test(
  "a denied POST's body is read and dropped, and the next request on the connection is served",
  async (t) => {
    const fastBefore = fastServed();
    const wireBefore = wire.requests();
    const result = await exchange(
      sidecar.inboundPort,
      client,
      `POST /admin/upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nhello${rawGet("/public/next")}`,
      { expect: 2 },
    );
    t.equal(result.responses[0]?.status, 403);
    t.equal(result.responses[0]?.header("x-mtlsd-reason"), "policy_denied");
    t.equal(result.responses[1]?.status, 200);
    t.equal((JSON.parse(result.responses[1]!.body) as Echo).url, "/public/next");
    t.equal(fastServed(), fastBefore + 2, "both on the fast path");
    t.same(sentSince(wireBefore), ["/public/next"], "the denied upload never reached the app");
  },
);

t.test("a spoofed XFCC and X-Forwarded-Proto are replaced by ours on the fast path", async (t) => {
  const forged = "By=spiffe://example.org/ns/orders/sa/orders;URI=spiffe://example.org/ns/ops/sa/admin";
  const quick = await decidedAlike(
    t,
    rawGet(
      "/public/xfcc",
      `X-Forwarded-Client-Cert: ${forged}\r\nx-forwarded-client-cert: ${forged}\r\nX-Forwarded-Proto: http\r\n`,
    ),
  );
  const echo = quick.answer.body as Echo;
  const leafSha256 = createHash("sha256")
    .update(new X509Certificate(frontend.issued.certPem).raw)
    .digest("hex");
  const xfcc = received(echo, "x-forwarded-client-cert");
  t.equal(xfcc.length, 1, "one XFCC, ours");
  t.match(xfcc[0], `By=${orders.spiffeId};Hash=${leafSha256};`);
  t.match(xfcc[0], `URI=${frontend.spiffeId}`);
  t.notMatch(xfcc[0], "ops/sa/admin");
  t.same(received(echo, "x-forwarded-proto"), ["https"]);
});

t.test("hop-by-hop headers, and those the client nominates, never reach the app", async (t) => {
  const quick = await decidedAlike(
    t,
    rawGet(
      "/public/hop",
      "Connection: keep-alive, X-Private\r\nX-Private: secret\r\nKeep-Alive: timeout=9\r\n",
    ),
  );
  const echo = quick.answer.body as Echo;
  t.same(received(echo, "x-private"), []);
  t.same(received(echo, "keep-alive"), []);
});

/** What each target tries, the status node:http's path has always given it, and whether the fast path takes it. */
const BYPASSES: Array<[string, string, number, boolean]> = [
  ["dot segments", "/info/../private", 403, true],
  ["encoded dot segments", "/public/%2e%2e/admin", 403, true],
  ["an encoded slash", "/public/..%2Fadmin", 400, true],
  ["a lowercase encoded slash", "/public%2fadmin", 400, true],
  ["an encoded backslash", "/public/..%5Cadmin", 400, true],
  ["a doubled slash", "//admin", 403, true],
  ["dot segments and a doubled slash", "/public/..//admin", 403, true],
  ["path parameters on a dot segment", "/public/..;/admin", 400, true],
  ["an encoded NUL", "/public/%00", 400, true],
  ["a query after an exact deny", "/v1/exact?x=1", 403, true],
  ["an absolute-form target", "http://localhost/admin", 400, true],
  // Not plain to the fast path: node:http reads these, and the same pipeline decides.
  ["a fragment hiding dot segments", "/public/x#/../admin", 400, false],
  ["a backslash", "/public\\..\\admin", 403, false],
];

t.test("path bypass attempts on the fast path are decided exactly as on node:http's", async (t) => {
  for (const [what, target, status, fast] of BYPASSES) {
    await t.test(`${what}: ${target}`, async (t) => {
      const quick = await decidedAlike(t, rawGet(target), fast);
      t.equal(quick.answer.status, status);
      t.same(quick.appSaw, [], "the app never saw it");
    });
  }
});

t.test("double-encoded dots and dots in a query reach the app literally, on both paths alike", async (t) => {
  const encoded = await decidedAlike(t, rawGet("/public/%252e%252e/x"));
  t.equal(encoded.answer.status, 200);
  t.same(encoded.appSaw, ["/public/%252e%252e/x"]);
  const query = await decidedAlike(t, rawGet("/public/x?a=/../admin"));
  t.equal(query.answer.status, 200);
  t.same(query.appSaw, ["/public/x?a=/../admin"]);
});

const SMUGGLING: Record<string, string> = {
  "Content-Length with Transfer-Encoding":
    "POST /public/smuggled HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
  "two different Content-Length fields":
    "POST /public/smuggled HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
  "two equal Content-Length fields":
    "POST /public/smuggled HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\nabcd",
  "a signed Content-Length":
    "POST /public/smuggled HTTP/1.1\r\nHost: localhost\r\nContent-Length: +4\r\n\r\nabcd",
  "Transfer-Encoding: chunked, identity":
    "POST /public/smuggled HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
  "Transfer-Encoding: xchunked":
    "POST /public/smuggled HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
  "Transfer-Encoding with a space before its colon":
    "POST /public/smuggled HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
  "Transfer-Encoding folded onto a second line":
    "POST /public/smuggled HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
  "an obs-fold": "GET /public/smuggled HTTP/1.1\r\nHost: localhost\r\nX-A: 1\r\n  folded\r\n\r\n",
  "a bare LF ending a field": "GET /public/smuggled HTTP/1.1\r\nHost: localhost\nX-A: 1\r\n\r\n",
  "a bare LF ending the request line": "GET /public/smuggled HTTP/1.1\nHost: localhost\r\n\r\n",
};

t.test(
  "request-smuggling heads are left to node:http and refused with 400, nothing reaching the app",
  async (t) => {
    for (const [name, bytes] of Object.entries(SMUGGLING)) {
      await t.test(name, async (t) => {
        const quick = await decidedAlike(t, bytes, false);
        t.equal(quick.answer.status, 400);
        t.equal(quick.answer.reason, "bad_request");
        t.match(quick.answer.body, /malformed HTTP request \(HPE_/);
        t.same(quick.appSaw, [], "the app never saw it");
      });
    }
  },
);

t.test("a smuggling head after a plain request is refused only after the plain one is served", async (t) => {
  const fastBefore = fastServed();
  const wireBefore = wire.requests();
  const result = await exchange(
    sidecar.inboundPort,
    client,
    rawGet("/public/first") + SMUGGLING["Content-Length with Transfer-Encoding"],
    { expect: 2 },
  );
  t.equal(result.responses[0]?.status, 200, "the plain request is served");
  t.equal((JSON.parse(result.responses[0]!.body) as Echo).url, "/public/first");
  t.equal(result.responses[1]?.status, 400, "the next one is refused");
  t.match(result.responses[1]?.body, /HPE_INVALID_TRANSFER_ENCODING|HPE_UNEXPECTED_CONTENT_LENGTH/);
  t.equal(fastServed(), fastBefore + 1, "the first on the fast path");
  t.same(sentSince(wireBefore), ["/public/first"], "the smuggled request never reached the app");
});

t.test("fast-path requests are counted in mtlsd_requests_total like any other", async (t) => {
  const count = async () => {
    const text = await (await fetch(`${sidecar.adminUrl}/metrics`)).text();
    const line = text
      .split("\n")
      .find(
        (l) =>
          l.startsWith("mtlsd_requests_total{") &&
          l.includes('direction="inbound"') &&
          l.includes('decision="allow"') &&
          l.includes('protocol="http/1.1"') &&
          l.includes('status_class="2xx"'),
      );
    return line ? Number(line.split(" ").at(-1)) : 0;
  };
  const before = await count();
  const fastBefore = fastServed();
  await attempt(rawGet("/public/metrics"), false);
  t.equal(fastServed(), fastBefore + 1);
  t.equal(await count(), before + 1);
});

t.test(
  "a connection that never sends its request is answered 408 at headersTimeout, as node:http did",
  async (t) => {
    const logsBefore = sidecar.logs.length;
    const connection = await RawConnection.open(sidecar.inboundPort, client);
    t.teardown(() => connection.close());
    const started = Date.now();
    const { responses, closed } = await connection.read(1, HEADERS_TIMEOUT_MS + SLACK_MS + 1000);
    const after = Date.now() - started;
    t.equal(responses[0]?.status, 408);
    t.equal(responses[0]?.header("x-mtlsd-reason"), "request_timeout");
    t.ok(closed || (await connection.closedWithin(3000)), "and the connection closed");
    t.ok(after >= HEADERS_TIMEOUT_MS - 50 && after <= HEADERS_TIMEOUT_MS + SLACK_MS, `cut after ${after} ms`);
    const log = await waitForLog(
      sidecar.logs,
      (line) => line.msg === "request" && sidecar.logs.indexOf(line) >= logsBefore,
    );
    t.match(log, {
      direction: "inbound",
      source_identity: frontend.spiffeId,
      status: 408,
      reason: "request_timeout",
      error: "ERR_HTTP_REQUEST_TIMEOUT",
    });
  },
);

t.test(
  "a first head that starts late and trickles is cut at headersTimeout from the connect, as node:http cut it",
  async (t) => {
    const logsBefore = sidecar.logs.length;
    const wireBefore = wire.requests();
    const connection = await RawConnection.open(sidecar.inboundPort, client);
    t.teardown(() => connection.close());
    const started = Date.now();
    // Silent for most of the deadline, then a head that is not whole: the fast path hands it to node:http,
    // whose own clock would start only now.
    const silentMs = HEADERS_TIMEOUT_MS - 200;
    await new Promise((resolve) => setTimeout(resolve, silentMs));
    const request = rawGet("/public/trickled");
    let sent = 0;
    const trickle = setInterval(() => {
      if (sent < request.length - 1 && !connection.ended) connection.write(request[sent++]!);
    }, 50);
    t.teardown(() => clearInterval(trickle));
    const { responses } = await connection.read(1, HEADERS_TIMEOUT_MS + SLACK_MS + 1000);
    const after = Date.now() - started;
    clearInterval(trickle);
    t.equal(responses[0]?.status, 408);
    t.equal(responses[0]?.header("x-mtlsd-reason"), "request_timeout");
    // From the handover it would have been silentMs + HEADERS_TIMEOUT_MS at least.
    t.ok(
      after < silentMs + HEADERS_TIMEOUT_MS,
      `cut after ${after} ms, not a whole headersTimeout after the first byte`,
    );
    // The rest of the head, after the 408: node:http's parser may still complete it, and it must go nowhere.
    connection.write(request.slice(sent));
    await new Promise((resolve) => setTimeout(resolve, 300));
    t.same(sentSince(wireBefore), [], "the app never saw the late request");
    const lines = sidecar.logs.slice(logsBefore).filter((line) => line.msg === "request");
    t.equal(lines.length, 1, "one request log line, the 408");
    t.match(lines[0], { status: 408, reason: "request_timeout", source_identity: frontend.spiffeId });
  },
);
