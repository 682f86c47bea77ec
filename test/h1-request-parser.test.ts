// The fast path's request-head reader measured against llhttp (read through node:http's server): what it calls
// plain, node:http reads the same (method, target, fields, body, persistence); what llhttp refuses is never plain.
import assert from "node:assert/strict";
import http from "node:http";
import type { Socket } from "node:net";
import { duplexPair } from "node:stream";
import fc from "fast-check";
import t from "tap";
import { type PlainRequest, parseRequestHead } from "../src/proxy/h1-request.ts";
import {
  bytesOf,
  chr,
  field,
  fieldName,
  fieldValue,
  latin1,
  type MutationOp,
  mutated,
  mutations,
} from "./helpers/http-mutations.ts";

const LIMITS = { maxHeaderCount: 12, maxHeaderSize: 1024 };

/** A request as read: the same shape from our reader and from node:http. Bodies are latin1 strings. */
interface Read {
  method: string;
  target: string;
  rawHeaders: string[];
  body: string;
  keepAlive: boolean;
}

type Reference =
  | { ok: true; read: Read; minor: number }
  | { ok: false; error: string }
  | { ok: "elsewhere"; event: string };

/**
 * The reference: a node:http server set up as the outbound listener sets up its own (strict parser, the same
 * limits, Host checked by us rather than by Node), reading `bytes` from a connection the client then ends.
 * Upgrades, CONNECT and Expect go to events of their own, which the fast path never serves.
 */
function nodeReads(bytes: Buffer): Promise<Reference> {
  return new Promise((resolve) => {
    const [client, server] = duplexPair();
    const httpServer = http.createServer({
      maxHeaderSize: LIMITS.maxHeaderSize,
      joinDuplicateHeaders: false,
      insecureHTTPParser: false,
      requireHostHeader: false,
    });
    httpServer.maxHeadersCount = LIMITS.maxHeaderCount + 1;
    let settled = false;
    const settle = (reference: Reference): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      client.destroy();
      server.destroy();
      httpServer.close();
      resolve(reference);
    };
    const timer = setTimeout(() => settle({ ok: false, error: "no verdict within 5 s" }), 5_000);
    let requested = false;
    // Bytes after a complete request are another request's: an error in them says nothing of the first.
    httpServer.on("clientError", (error: NodeJS.ErrnoException) => {
      if (!requested) settle({ ok: false, error: error.code ?? error.message });
    });
    for (const event of ["upgrade", "connect", "checkContinue", "checkExpectation"]) {
      httpServer.on(event, () => settle({ ok: "elsewhere", event }));
    }
    httpServer.on("request", (req: http.IncomingMessage, res: http.ServerResponse) => {
      requested = true;
      const chunks: Buffer[] = [];
      const done = () =>
        settle({
          ok: true,
          read: {
            method: req.method!,
            target: req.url!,
            rawHeaders: req.rawHeaders,
            body: Buffer.concat(chunks).toString("latin1"),
            keepAlive: res.shouldKeepAlive,
          },
          minor: req.httpVersionMinor,
        });
      req.on("data", (chunk: Buffer) => chunks.push(chunk));
      // The client ended before the whole body: node:http waits for the rest, and what came is compared.
      server.once("end", () => setTimeout(done, 20));
      req.on("end", done);
      req.on("close", done);
    });
    httpServer.emit("connection", server as unknown as Socket);
    client.resume();
    client.end(bytes);
  });
}

/** What our reader says of `bytes`, with the body that follows a plain head (as much of it as came). */
function ours(bytes: Buffer): { head: ReturnType<typeof parseRequestHead>; read?: Read } {
  const head = parseRequestHead(bytes, LIMITS);
  if (typeof head === "string") return { head };
  return { head, read: readOf(head, bytes) };
}

function readOf(head: PlainRequest, bytes: Buffer): Read {
  return {
    method: head.method,
    target: head.target,
    rawHeaders: head.rawHeaders,
    body: bytes.toString("latin1", head.headLength, head.headLength + head.contentLength),
    keepAlive: head.keepAlive,
  };
}

// ---------------------------------------------------------------------------------------------------------------
// Generators: plain requests (a model and its bytes), mutations, noise.

const PCHAR = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:@/?%";
const visible = fc.integer({ min: 0x21, max: 0x7e }).map(chr);
const SPECIAL = new Set([
  "host",
  "content-length",
  "transfer-encoding",
  "connection",
  "proxy-connection",
  "upgrade",
  "expect",
  "http2-settings",
  "te",
]);
const requestField = field(
  fieldName(["Accept", "Cookie", "X-Forwarded-For", "Accept-Language", "constructor", "__proto__"], SPECIAL),
  fieldValue(visible),
);
const path = fc.string({ unit: fc.constantFrom(...PCHAR), maxLength: 30 }).map((rest) => `/${rest}`);
const host = fc.oneof(
  fc.constantFrom("orders", "orders:8080", "127.0.0.1:9", "[::1]:80", "a-b.example"),
  fc.stringMatching(/^[a-z0-9][a-z0-9.-]{0,20}$/),
);
const target = fc.oneof(
  path,
  path,
  fc.tuple(host, fc.option(path, { nil: undefined })).map(([h, p]) => `http://${h}${p ?? ""}`),
);
const requestModel = fc.record({
  method: fc.constantFrom("GET", "HEAD", "DELETE", "OPTIONS", "POST", "PUT", "PATCH"),
  target,
  minor: fc.constantFrom(0, 1, 1, 1),
  host: fc.option(host, { nil: undefined }),
  fields: fc.array(requestField, { maxLength: 6 }),
  connection: fc.constantFrom(undefined, "close", "keep-alive", "Keep-Alive", "close, x-trace", "Close"),
  body: fc.uint8Array({ maxLength: 40 }).map(latin1),
  length: fc.constantFrom("exact", "none", "zeros"),
  at: fc.nat(),
});
type RequestModel = typeof requestModel extends fc.Arbitrary<infer T> ? T : never;

interface Generated {
  text: string;
  expected: Read;
}

/** A model's bytes and what they mean; a model the fast path does not take (a GET with a body) has no meaning. */
function render(model: RequestModel): Generated | undefined {
  const bodyless = ["GET", "HEAD", "DELETE", "OPTIONS"].includes(model.method);
  const body = bodyless || model.length === "none" ? "" : model.body;
  const fields = [...model.fields];
  const insert = (name: string, value: string): void => {
    fields.splice(model.at % (fields.length + 1), 0, { name, value, line: `${name}: ${value}` });
  };
  // An HTTP/1.1 request has exactly one Host; an HTTP/1.0 one may have none.
  const hostValue = model.host ?? (model.minor === 1 ? "orders" : undefined);
  if (hostValue !== undefined) insert("Host", hostValue);
  if (model.length !== "none")
    insert("Content-Length", `${model.length === "zeros" ? "00" : ""}${body.length}`);
  if (model.connection !== undefined) insert("Connection", model.connection);
  const text = `${model.method} ${model.target} HTTP/1.${model.minor}\r\n${fields.map((f) => `${f.line}\r\n`).join("")}\r\n${body}`;
  if (Buffer.byteLength(text, "latin1") - body.length >= LIMITS.maxHeaderSize || fields.length > 12)
    return undefined;
  const tokens = (model.connection ?? "")
    .toLowerCase()
    .split(",")
    .map((token) => token.trim());
  return {
    text,
    expected: {
      method: model.method,
      target: model.target,
      rawHeaders: fields.flatMap((f) => [f.name, f.value]),
      body,
      keepAlive: !tokens.includes("close") && (model.minor === 1 || tokens.includes("keep-alive")),
    },
  };
}

const plainRequest = requestModel.map(render).filter((generated) => generated !== undefined);

/** Bytes that make a head unusual, suspicious or malformed when put in the wrong place. */
const FRAGMENTS = [
  "\r",
  "\n",
  "\0",
  " ",
  "\t",
  ":",
  "\x7f",
  "\x80",
  "#",
  '"',
  "\\",
  ",",
  "0",
  "-",
  "+",
  "\r\n",
  "\r\n\r\n",
  "\r\n ",
  "\r\n\t",
  " :",
  "\r\nContent-Length: 0",
  "\r\nContent-Length: 3",
  "\r\nContent-Length: +3",
  "\r\nContent-Length: 3 3",
  "\r\nContent-Length: 3, 3",
  "\r\nTransfer-Encoding: chunked",
  "\r\nTransfer-Encoding: gzip, chunked",
  "\r\nTransfer-Encoding : chunked",
  "\r\nHost: other",
  "\r\nConnection: close",
  "\r\nConnection: upgrade",
  "\r\nUpgrade: websocket",
  "\r\nExpect: 100-continue",
  "\r\nProxy-Connection: close",
  "HTTP/1.1",
  "HTTP/2.0",
  "GET ",
  "CONNECT ",
  "http://",
  "*",
];

const MUTATIONS: MutationOp[] = [
  "insert",
  "insert",
  "replace",
  "delete",
  "bare-lf",
  "bare-cr",
  "repeat-line",
];

const mutatedRequest = fc
  .tuple(plainRequest, mutations(MUTATIONS, FRAGMENTS))
  .map(([request, changes]) => mutated(request.text, changes));

const noise = fc
  .tuple(
    fc.constantFrom(
      "",
      "GET / HTTP/1.1\r\nHost: orders\r\n",
      "POST /x HTTP/1.1\r\nHost: o\r\nContent-Length: 2\r\n",
    ),
    fc.array(fc.oneof(fc.constantFrom(...FRAGMENTS), fc.uint8Array({ maxLength: 8 }).map(latin1)), {
      maxLength: 10,
    }),
  )
  .map(([start, parts]) => `${start + parts.join("")}\r\n\r\n`);

/** The property: a head we call plain is one node:http reads, and reads as we do. */
async function agreesWhenPlain(text: string): Promise<boolean> {
  const bytes = bytesOf(text);
  const mine = ours(bytes);
  if (mine.read === undefined) return false;
  const reference = await nodeReads(bytes);
  assert.equal(reference.ok, true, `plain to us, but node:http: ${JSON.stringify(reference)}`);
  assert.deepEqual(mine.read, (reference as { read: Read }).read);
  return true;
}

// ---------------------------------------------------------------------------------------------------------------
// Properties

t.test("generated plain requests are plain and read exactly as node:http reads them", async (t) => {
  let checked = 0;
  await fc.assert(
    fc.asyncProperty(plainRequest, async (request) => {
      const bytes = bytesOf(request.text);
      const mine = ours(bytes);
      assert.ok(mine.read, `not plain: ${JSON.stringify(request.text)}`);
      assert.deepEqual(mine.read, request.expected);
      assert.ok(await agreesWhenPlain(request.text));
      checked++;
    }),
    { numRuns: 300 },
  );
  t.equal(checked, 300, "every generated request agreed with node:http");
});

t.test("a mutated request is plain only where node:http reads it the same way", async (t) => {
  let plain = 0;
  let other = 0;
  await fc.assert(
    fc.asyncProperty(mutatedRequest, async (text) => {
      if (await agreesWhenPlain(text)) plain++;
      else other++;
    }),
    { numRuns: 600 },
  );
  t.ok(plain > 0 && other > 0, `both kinds were generated (${plain} plain, ${other} other)`);
});

t.test("noise is plain only where node:http reads it the same way", async (t) => {
  await fc.assert(
    fc.asyncProperty(noise, async (text) => {
      await agreesWhenPlain(text);
    }),
    { numRuns: 300 },
  );
  t.pass("no disagreement");
});

t.test("a head still arriving is incomplete until it passes limits.maxHeaderSize", async (t) => {
  t.equal(parseRequestHead(bytesOf("GET / HTTP/1.1\r\nHost: o\r\n"), LIMITS), "incomplete");
  t.equal(parseRequestHead(bytesOf(`GET /${"a".repeat(LIMITS.maxHeaderSize)}`), LIMITS), "other");
  const justUnder = `GET / HTTP/1.1\r\nHost: o\r\nX: ${"a".repeat(LIMITS.maxHeaderSize - 33)}\r\n\r\n`;
  t.equal(Buffer.byteLength(justUnder), LIMITS.maxHeaderSize - 1);
  t.type(parseRequestHead(bytesOf(justUnder), LIMITS), "object", "a head one byte under the limit is plain");
  t.equal(parseRequestHead(bytesOf(justUnder.replace("X: ", "X: a")), LIMITS), "other");
});

t.test("a request with more fields than limits.maxHeaderCount is left to node:http", async (t) => {
  const fields = (count: number) => Array.from({ length: count - 1 }, (_, i) => `X-${i}: v\r\n`).join("");
  t.type(parseRequestHead(bytesOf(`GET / HTTP/1.1\r\nHost: o\r\n${fields(12)}\r\n`), LIMITS), "object");
  t.equal(parseRequestHead(bytesOf(`GET / HTTP/1.1\r\nHost: o\r\n${fields(13)}\r\n`), LIMITS), "other");
});

/** The request-smuggling and odd-framing heads of REFERENCE.md and the existing suites: none is plain. */
const NEVER_PLAIN: Record<string, string> = {
  "Content-Length and Transfer-Encoding":
    "POST / HTTP/1.1\r\nHost: o\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
  "two Content-Length fields":
    "POST / HTTP/1.1\r\nHost: o\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
  "two equal Content-Length fields":
    "POST / HTTP/1.1\r\nHost: o\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\nabcd",
  "a Content-Length list": "POST / HTTP/1.1\r\nHost: o\r\nContent-Length: 4, 4\r\n\r\nabcd",
  "a signed Content-Length": "POST / HTTP/1.1\r\nHost: o\r\nContent-Length: +4\r\n\r\nabcd",
  "Transfer-Encoding: chunked": "POST / HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
  "Transfer-Encoding with a space before its colon":
    "POST / HTTP/1.1\r\nHost: o\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
  "Transfer-Encoding: chunked, identity":
    "POST / HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
  "Transfer-Encoding: xchunked": "POST / HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
  "Transfer-Encoding followed by a tab":
    "POST / HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: chunked\t\r\n\r\n0\r\n\r\n",
  "an obs-fold": "GET / HTTP/1.1\r\nHost: o\r\nX-A: 1\r\n  folded\r\n\r\n",
  "an obs-fold under Transfer-Encoding":
    "POST / HTTP/1.1\r\nHost: o\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
  "a bare LF ending a field": "GET / HTTP/1.1\r\nHost: o\nX-A: 1\r\n\r\n",
  "a bare LF ending the request line": "GET / HTTP/1.1\nHost: o\r\n\r\n",
  "a bare CR in a value": "GET / HTTP/1.1\r\nHost: o\r\nX-A: 1\r2\r\n\r\n",
  "a NUL in a value": "GET / HTTP/1.1\r\nHost: o\r\nX-A: 1\x002\r\n\r\n",
  "no Host in HTTP/1.1": "GET / HTTP/1.1\r\nX-A: 1\r\n\r\n",
  "two Host fields": "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
  "an Upgrade": "GET / HTTP/1.1\r\nHost: o\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
  "Connection: upgrade alone": "GET / HTTP/1.1\r\nHost: o\r\nConnection: Upgrade\r\n\r\n",
  "an h2c upgrade":
    "GET / HTTP/1.1\r\nHost: o\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
  "Expect: 100-continue": "POST / HTTP/1.1\r\nHost: o\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\nhi",
  CONNECT: "CONNECT orders:443 HTTP/1.1\r\nHost: orders:443\r\n\r\n",
  "a GET with a body": "GET / HTTP/1.1\r\nHost: o\r\nContent-Length: 2\r\n\r\nhi",
  "an unlisted method": "PROPFIND / HTTP/1.1\r\nHost: o\r\n\r\n",
  "a lowercase method": "get / HTTP/1.1\r\nHost: o\r\n\r\n",
  "HTTP/0.9": "GET /\r\n\r\n",
  "HTTP/2.0 in a request line": "GET / HTTP/2.0\r\nHost: o\r\n\r\n",
  "two spaces in the request line": "GET  / HTTP/1.1\r\nHost: o\r\n\r\n",
  "a fragment in the target": "GET /a#b HTTP/1.1\r\nHost: o\r\n\r\n",
  "an https:// target": "GET https://orders/ HTTP/1.1\r\nHost: orders\r\n\r\n",
  "an asterisk target": "OPTIONS * HTTP/1.1\r\nHost: o\r\n\r\n",
  "a space before a colon": "GET / HTTP/1.1\r\nHost : o\r\n\r\n",
  "obs-text in a value": "GET / HTTP/1.1\r\nHost: o\r\nX-A: caf\xe9\r\n\r\n",
  "an empty line before the request": "\r\nGET / HTTP/1.1\r\nHost: o\r\n\r\n",
  "an HTTP/1.0 request with TE": "GET / HTTP/1.0\r\nTE: chunked\r\n\r\n",
  "HTTP/1.0 asking both to keep alive and to close":
    "GET / HTTP/1.0\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n",
  "Proxy-Connection": "GET / HTTP/1.1\r\nHost: o\r\nProxy-Connection: close\r\n\r\n",
};

t.test("request-smuggling and odd-framing heads are never plain", async (t) => {
  for (const [name, text] of Object.entries(NEVER_PLAIN)) {
    t.equal(parseRequestHead(bytesOf(text), LIMITS), "other", name);
  }
});
