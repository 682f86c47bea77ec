// The outbound HTTP/1.1 fast path answers plain requests as node:http would, and every request-smuggling or
// odd-framing head is handed to node:http, at a request boundary, and answered exactly as node:http answers it.
import http from "node:http";
import https from "node:https";
import type net from "node:net";
import { duplexPair } from "node:stream";
import t from "tap";
import { startCaller } from "./helpers/outbound.ts";
import { createTestPki } from "./helpers/pki.ts";
import { plainConnection } from "./helpers/raw-http.ts";

const pki = await createTestPki();
t.teardown(() => pki.cleanup());
const frontend = await pki.identity("frontend");
const orders = await pki.identity("orders");

interface Seen {
  method: string;
  url: string;
  body: string;
}

/** An mTLS upstream that records what reaches it; `/chunked` answers without a Content-Length. */
const seen: Seen[] = [];
const upstream = https.createServer(
  {
    cert: orders.chainPem,
    key: orders.keyPem,
    ca: pki.bundlePem,
    requestCert: true,
    rejectUnauthorized: true,
  },
  (req, res) => {
    let body = "";
    req.setEncoding("latin1");
    req.on("data", (chunk: string) => {
      body += chunk;
    });
    req.on("end", () => {
      seen.push({ method: req.method!, url: req.url!, body });
      const answer = JSON.stringify({ url: req.url, body });
      if (req.url === "/chunked") {
        res.writeHead(200, { "content-type": "application/json" });
        res.write(answer.slice(0, 5));
        res.end(answer.slice(5));
      } else res.writeHead(200, { "content-length": Buffer.byteLength(answer) }).end(answer);
    });
  },
);
await new Promise<void>((resolve) => upstream.listen(0, "127.0.0.1", resolve));
t.teardown(() => new Promise<void>((resolve) => upstream.close(() => resolve())));
const caller = await startCaller(
  pki,
  frontend,
  {
    orders: {
      address: `127.0.0.1:${(upstream.address() as net.AddressInfo).port}`,
      identity: orders.spiffeId,
    },
  },
  { limits: { keepAliveTimeout: "7s" } },
);
t.teardown(() => caller.stop());

/** Writes `bytes` on a new connection from the app and returns all that comes back until the sidecar closes. */
async function exchange(bytes: string, closeAfterMs = 2000): Promise<string> {
  const app = plainConnection(caller.outboundPort);
  app.socket.write(Buffer.from(bytes, "latin1"));
  await app.closedWithin(closeAfterMs).catch(() => app.socket.destroy());
  return app.received();
}

/** Writes `bytes` and waits until `count` responses have arrived (by their status lines), keeping the connection. */
async function responses(
  app: ReturnType<typeof plainConnection>,
  bytes: string,
  count: number,
): Promise<string> {
  const before = (app.received().match(/HTTP\/1\.1 \d\d\d /g) ?? []).length;
  app.socket.write(Buffer.from(bytes, "latin1"));
  const deadline = Date.now() + 3000;
  for (;;) {
    const text = app.received();
    const statuses = (text.match(/HTTP\/1\.1 \d\d\d /g) ?? []).length;
    if (statuses >= before + count && /\r\n\r\n/.test(text.slice(text.lastIndexOf("HTTP/1.1 ")))) {
      await new Promise((resolve) => setTimeout(resolve, 50));
      return app.received();
    }
    if (Date.now() > deadline) return text;
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

t.test(
  "plain requests on one connection are answered in turn, kept alive as node:http keeps them",
  async (t) => {
    const app = plainConnection(caller.outboundPort);
    t.teardown(() => app.socket.destroy());
    const first = await responses(app, "GET /one HTTP/1.1\r\nHost: orders\r\n\r\n", 1);
    t.match(first, /^HTTP\/1\.1 200 OK\r\n/);
    t.match(first, /\r\ndate: [A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d GMT\r\n/i);
    t.match(first, /\r\nConnection: keep-alive\r\nKeep-Alive: timeout=7\r\n/);
    t.match(first, /\r\ncontent-length: \d+\r\n/);
    const second = await responses(
      app,
      "POST /two HTTP/1.1\r\nHost: orders\r\nContent-Length: 5\r\n\r\nhello",
      1,
    );
    t.match(
      second,
      /"url":"\/two","body":"hello"/,
      "the body reaches the upstream whole, on the same connection",
    );
    const third = await responses(app, "GET /chunked HTTP/1.1\r\nHost: orders\r\n\r\n", 1);
    t.match(third.slice(second.length), /\r\nTransfer-Encoding: chunked\r\n\r\n[0-9a-f]+\r\n\{"url/);
    t.match(third, /0\r\n\r\n$/, "a response without Content-Length ends with its last chunk");
  },
);

t.test(
  "a client asking to close, and an HTTP/1.0 client, get Connection: close and the end of the connection",
  async (t) => {
    const closing = await exchange("GET /close HTTP/1.1\r\nHost: orders\r\nConnection: close\r\n\r\n");
    t.match(closing, /^HTTP\/1\.1 200 OK\r\n/);
    t.match(closing, /\r\nConnection: close\r\n/);
    const old = await exchange("GET http://orders/chunked HTTP/1.0\r\n\r\n");
    t.match(old, /^HTTP\/1\.1 200 OK\r\n/);
    t.match(old, /\r\nConnection: close\r\n/);
    t.notMatch(old, /Transfer-Encoding/i, "an HTTP/1.0 client's body is delimited by the close");
    t.match(old, /\r\n\r\n\{"url":"\/chunked","body":""\}$/);
  },
);

t.test("a HEAD request is answered without a body, and the connection serves the next", async (t) => {
  const app = plainConnection(caller.outboundPort);
  t.teardown(() => app.socket.destroy());
  const head = await responses(app, "HEAD /head HTTP/1.1\r\nHost: orders\r\n\r\n", 1);
  t.match(head, /\r\ncontent-length: \d+\r\n/);
  t.match(head, /\r\n\r\n$/, "nothing after the head");
  const next = await responses(app, "GET /after HTTP/1.1\r\nHost: orders\r\n\r\n", 1);
  t.match(next.slice(head.length), /^HTTP\/1\.1 200 OK\r\n[\s\S]*"url":"\/after"/);
});

type Verdict = { error: string } | { method: string; url: string };

/**
 * node:http's verdict on a request, from a server set up as the outbound listener sets up its own. llhttp may
 * report a request and then refuse its framing (a Transfer-Encoding it cannot read): the error is the verdict.
 */
function nodeVerdict(bytes: string): Promise<Verdict> {
  return new Promise<Verdict>((resolve) => {
    const [client, server] = duplexPair();
    const reference = http.createServer({
      joinDuplicateHeaders: false,
      insecureHTTPParser: false,
      requireHostHeader: false,
    });
    let request: Verdict | undefined;
    const settle = (verdict: Verdict) => {
      reference.close();
      server.destroy();
      resolve(verdict);
    };
    reference.on("clientError", (error: NodeJS.ErrnoException) =>
      settle({ error: error.code ?? error.message }),
    );
    reference.on("request", (req: http.IncomingMessage) => {
      request = { method: req.method!, url: req.url! };
      req.resume();
      req.on("end", () => setTimeout(() => settle(request!), 20));
    });
    reference.emit("connection", server as unknown as net.Socket);
    client.resume();
    client.end(Buffer.from(bytes, "latin1"));
  });
}

const SMUGGLING: Record<string, string> = {
  "Content-Length with Transfer-Encoding":
    "POST /smuggled HTTP/1.1\r\nHost: orders\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
  "two different Content-Length fields":
    "POST /smuggled HTTP/1.1\r\nHost: orders\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
  "two equal Content-Length fields":
    "POST /smuggled HTTP/1.1\r\nHost: orders\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\nabcd",
  "a signed Content-Length": "POST /smuggled HTTP/1.1\r\nHost: orders\r\nContent-Length: +4\r\n\r\nabcd",
  "Transfer-Encoding: chunked, identity":
    "POST /smuggled HTTP/1.1\r\nHost: orders\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
  "Transfer-Encoding: xchunked":
    "POST /smuggled HTTP/1.1\r\nHost: orders\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
  "Transfer-Encoding with a space before its colon":
    "POST /smuggled HTTP/1.1\r\nHost: orders\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
  "Transfer-Encoding followed by a tab":
    "POST /smuggled HTTP/1.1\r\nHost: orders\r\nTransfer-Encoding: chunked\t\r\n\r\n0\r\n\r\n",
  "Transfer-Encoding folded onto a second line":
    "POST /smuggled HTTP/1.1\r\nHost: orders\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
  "an obs-fold": "GET /smuggled HTTP/1.1\r\nHost: orders\r\nX-A: 1\r\n  folded\r\n\r\n",
  "a bare LF ending a field": "GET /smuggled HTTP/1.1\r\nHost: orders\nX-A: 1\r\n\r\n",
  "a bare LF ending the request line": "GET /smuggled HTTP/1.1\nHost: orders\r\n\r\n",
};

t.test(
  "request-smuggling heads are handed to node:http and answered as node:http answers them",
  async (t) => {
    for (const [name, bytes] of Object.entries(SMUGGLING)) {
      const verdict = await nodeVerdict(bytes);
      t.ok("error" in verdict, `${name}: node:http refuses it`);
      const code = (verdict as { error: string }).error;
      const before = seen.length;
      const answer = await exchange(bytes);
      t.match(answer, /^HTTP\/1\.1 400 Bad Request\r\n/, `${name}: 400`);
      t.match(answer, /\r\nx-mtlsd-reason: bad_request\r\n/, `${name}: the listener's own refusal`);
      // Only node:http's parser has HPE_ codes: the answer names the one llhttp gave for these bytes.
      t.match(answer, `malformed HTTP request (${code})`, `${name}: ${code}, as node:http read it`);
      t.equal(seen.length, before, `${name}: nothing reached the upstream`);
    }
  },
);

t.test(
  "a framing node:http accepts but the fast path does not take is forwarded by node:http as before",
  async (t) => {
    const bytes =
      "POST /chunked-request HTTP/1.1\r\nHost: orders\r\nTransfer-Encoding: Chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    t.match(await nodeVerdict(bytes), { method: "POST", url: "/chunked-request" });
    const answer = await exchange(bytes);
    t.match(answer, /^HTTP\/1\.1 200 OK\r\n/);
    t.match(answer, /"url":"\/chunked-request","body":"abc"/);
  },
);

t.test("a smuggling head after a plain request is refused after the plain one is served", async (t) => {
  const before = seen.length;
  const answer = await exchange(
    `GET /first HTTP/1.1\r\nHost: orders\r\n\r\n${SMUGGLING["Content-Length with Transfer-Encoding"]}`,
  );
  const [first, second] = answer.split(/(?=HTTP\/1\.1 )/);
  t.match(first, /^HTTP\/1\.1 200 OK\r\n[\s\S]*"url":"\/first"/, "the plain request is served");
  t.match(
    second,
    /^HTTP\/1\.1 400 Bad Request\r\n[\s\S]*HPE_INVALID_TRANSFER_ENCODING/,
    "the next one is node:http's",
  );
  t.same(
    seen.slice(before).map((request) => request.url),
    ["/first"],
    "the smuggled request never reached the upstream",
  );
});
