// An HTTP/2 upstream that refuses a stream unprocessed (REFUSED_STREAM, or a GOAWAY below it): the request goes again.
import { createHash } from "node:crypto";
import http from "node:http";
import http2 from "node:http2";
import type net from "node:net";
import tls from "node:tls";
import t from "tap";
import { FRAME, frame, settingsPayload } from "./helpers/h2-raw.ts";
import { startCaller } from "./helpers/outbound.ts";
import { createTestPki } from "./helpers/pki.ts";
import { waitForLog } from "./helpers/sidecar.ts";

type Test = Parameters<Parameters<typeof t.test>[0]>[0];

const pki = await createTestPki();
t.teardown(() => pki.cleanup());
const frontend = await pki.identity("frontend");
const orders = await pki.identity("orders");

/** What the upstream's server did with each stream it was sent. */
interface StreamSeen {
  connection: number;
  stream: number;
  path: string;
  outcome: "refused" | "goaway" | "answered";
  /** Bytes of the request body it read, for an answered stream. */
  bytes?: number;
}

interface H2Upstream {
  address: string;
  streams: StreamSeen[];
  /** Resolves when a stream for `path` is answered, i.e. read by the server as a request to process. */
  reached(path: string): Promise<void>;
  /** TLS connections accepted. */
  connections(): number;
}

/**
 * An HTTP/2 server over mutual TLS as the orders identity, not mtlsd: another mesh's proxy, or a gRPC server. Each
 * request it processes is read whole and answered with the byte count and digest of its body. `refuseFirst`:
 * the first stream of each path is reset with REFUSED_STREAM, unread. `goawayFirst`: its first connection is played
 * by hand, and answers the first request's HEADERS with a GOAWAY whose last stream is 0, below it.
 */
async function h2Upstream(t: Test, behaviour: { refuseFirst?: boolean; goawayFirst?: boolean }) {
  const streams: StreamSeen[] = [];
  const waiting = new Map<string, () => void>();
  const refusedPaths = new Set<string>();
  let connections = 0;
  // Which connection a session runs on: it is made while its connection is handed over, synchronously.
  const numbered = new WeakMap<http2.Http2Session, number>();
  const server = http2.createServer();
  server.on("session", (session) => numbered.set(session, connections));
  server.on("stream", (stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders) => {
    const path = String(headers[":path"]);
    const connection = numbered.get(stream.session!) ?? 0;
    stream.on("error", () => {});
    if (behaviour.refuseFirst && !refusedPaths.has(path)) {
      refusedPaths.add(path);
      streams.push({ connection, stream: stream.id!, path, outcome: "refused" });
      stream.close(http2.constants.NGHTTP2_REFUSED_STREAM);
      return;
    }
    const seen: StreamSeen = { connection, stream: stream.id!, path, outcome: "answered" };
    streams.push(seen);
    waiting.get(path)?.();
    const digest = createHash("sha256");
    let bytes = 0;
    stream.on("data", (chunk: Buffer) => {
      bytes += chunk.length;
      digest.update(chunk);
    });
    stream.on("end", () => {
      seen.bytes = bytes;
      stream.respond({ ":status": 200, "content-type": "application/json" });
      stream.end(JSON.stringify({ bytes, sha256: digest.digest("hex") }));
    });
  });
  const listener = tls.createServer(
    {
      cert: orders.chainPem,
      key: orders.keyPem,
      ca: pki.bundlePem,
      requestCert: true,
      rejectUnauthorized: true,
      ALPNProtocols: ["h2"],
    },
    (socket) => {
      const connection = ++connections;
      socket.on("error", () => {});
      if (behaviour.goawayFirst && connection === 1) {
        goawayOnFirstHeaders(socket, (stream) =>
          streams.push({ connection, stream, path: "", outcome: "goaway" }),
        );
        return;
      }
      server.emit("connection", socket);
    },
  );
  await new Promise<void>((resolve) => listener.listen(0, "127.0.0.1", resolve));
  t.teardown(() => new Promise<void>((resolve) => listener.close(() => resolve())));
  return {
    address: `127.0.0.1:${(listener.address() as net.AddressInfo).port}`,
    streams,
    reached: (path: string) =>
      new Promise<void>((resolve) => {
        if (streams.some((seen) => seen.path === path && seen.outcome === "answered")) resolve();
        else waiting.set(path, resolve);
      }),
    connections: () => connections,
  } satisfies H2Upstream;
}

/**
 * An HTTP/2 server side written frame by frame, as no library lets a test pick a GOAWAY's last stream: SETTINGS
 * exchanged, then the first HEADERS answered with GOAWAY (NO_ERROR, last stream 0). Node's own server would name
 * the stream it just received, since it counts it as processed.
 */
function goawayOnFirstHeaders(socket: tls.TLSSocket, onGoaway: (stream: number) => void): void {
  let buffer = Buffer.alloc(0);
  let prefaceRead = false;
  let sent = false;
  socket.write(frame(FRAME.SETTINGS, 0, 0, settingsPayload({})));
  socket.on("data", (chunk: Buffer) => {
    buffer = Buffer.concat([buffer, chunk]);
    if (!prefaceRead) {
      if (buffer.length < 24) return;
      buffer = buffer.subarray(24);
      prefaceRead = true;
    }
    while (buffer.length >= 9) {
      const length = buffer.readUIntBE(0, 3);
      if (buffer.length < 9 + length) return;
      const type = buffer[3]!;
      const flags = buffer[4]!;
      const stream = buffer.readUInt32BE(5) & 0x7fffffff;
      buffer = buffer.subarray(9 + length);
      if (type === FRAME.SETTINGS && (flags & 0x1) === 0) socket.write(frame(FRAME.SETTINGS, 0x1, 0));
      if (type === FRAME.HEADERS && !sent) {
        sent = true;
        const goaway = Buffer.alloc(8);
        goaway.writeUInt32BE(0, 0);
        goaway.writeUInt32BE(http2.constants.NGHTTP2_NO_ERROR, 4);
        socket.write(frame(FRAME.GOAWAY, 0, 0, goaway));
        onGoaway(stream);
      }
    }
  });
  socket.on("end", () => socket.end());
}

/**
 * POSTs `body` through the caller as Host `upstream`, the way an app streams an upload: the head first, the body
 * once `ready` resolves. Here `ready` is the server reading the request: its body was still on its way when the
 * server refused the first stream, so nothing of it had been read, and it can go again whole.
 */
function upload(
  port: number,
  upstream: string,
  path: string,
  body: Buffer,
  ready: Promise<void>,
): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const request = http.request(
      {
        host: "127.0.0.1",
        port,
        path,
        method: "POST",
        headers: { host: upstream, "content-length": body.length },
      },
      (response) => {
        let text = "";
        response.setEncoding("utf8");
        response.on("data", (chunk: string) => {
          text += chunk;
        });
        response.on("end", () => resolve({ status: response.statusCode!, text }));
      },
    );
    request.on("error", reject);
    request.flushHeaders();
    void ready.then(() => request.end(body));
  });
}

const body = Buffer.alloc(256 * 1024, "refused once, then served; ");
const digest = createHash("sha256").update(body).digest("hex");

t.test(
  "a POST whose stream the upstream refused (REFUSED_STREAM) is sent again whole, and served once",
  async (t) => {
    const upstream = await h2Upstream(t, { refuseFirst: true });
    const caller = await startCaller(pki, frontend, {
      orders: { address: upstream.address, identity: orders.spiffeId, protocol: "h2" },
    });
    t.teardown(() => caller.stop());
    const response = await upload(
      caller.outboundPort,
      "orders",
      "/refused/upload",
      body,
      upstream.reached("/refused/upload"),
    );
    t.equal(response.status, 200);
    t.same(JSON.parse(response.text), { bytes: body.length, sha256: digest }, "the body arrived intact");
    t.match(
      upstream.streams,
      [
        { connection: 1, stream: 1, path: "/refused/upload", outcome: "refused" },
        { connection: 1, stream: 3, path: "/refused/upload", outcome: "answered", bytes: body.length },
      ],
      "refused on its first stream, sent again on the next one of the same connection",
    );
    t.equal(upstream.streams.length, 2, "processed once: the refused stream was never read");
    t.match(
      await waitForLog(caller.logs, (line) => line.msg === "request" && line.path === "/refused/upload"),
      {
        status: 200,
        reason: "forwarded",
      },
    );
  },
);

t.test(
  "a POST beyond the last stream of the upstream's GOAWAY is sent again on a new connection",
  async (t) => {
    const upstream = await h2Upstream(t, { goawayFirst: true });
    const caller = await startCaller(pki, frontend, {
      orders: { address: upstream.address, identity: orders.spiffeId, protocol: "h2" },
    });
    t.teardown(() => caller.stop());
    const response = await upload(
      caller.outboundPort,
      "orders",
      "/goaway/upload",
      body,
      upstream.reached("/goaway/upload"),
    );
    t.equal(response.status, 200);
    t.same(JSON.parse(response.text), { bytes: body.length, sha256: digest }, "the body arrived intact");
    t.match(upstream.streams, [
      { connection: 1, stream: 1, outcome: "goaway" },
      { connection: 2, path: "/goaway/upload", outcome: "answered", bytes: body.length },
    ]);
    t.equal(upstream.streams.length, 2, "processed once");
    t.equal(upstream.connections(), 2, "a second connection, since the first was going away");
  },
);
