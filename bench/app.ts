// The benchmark's app, one protocol per process (PROTOCOL): http, grpc or websocket, each as small as the protocol allows.
//
//   http (default): every request answered with a fixed 1 KiB body, as Istio's and Linkerd's benchmarks do;
//   grpc: h2c with prior knowledge; Echo/Unary answers the request's message as sent, with grpc-status 0 in
//         trailers (node:http2, not grpc-js: the baseline is the protocol's cost, not a framework's);
//   websocket: every message echoed (the ws package's server).
// Prints {"port": N} once listening.
import { createServer } from "node:http";
import http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { WebSocketServer } from "ws";
import { UNARY_PATH } from "./grpc-call.ts";

const protocol = process.env.PROTOCOL ?? "http";
const port = Number(process.env.PORT ?? 0);

function listening(this: { address(): AddressInfo | string | null }): void {
  const address = this.address();
  process.stdout.write(`${JSON.stringify({ port: typeof address === "object" ? address?.port : 0 })}\n`);
}

if (protocol === "grpc") {
  const server = http2.createServer();
  server.on("stream", (stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders) => {
    if (headers[":path"] !== UNARY_PATH) {
      // Trailers-Only: the status in the one HEADERS frame.
      stream.respond(
        { ":status": 200, "content-type": "application/grpc", "grpc-status": "12" },
        { endStream: true },
      );
      stream.resume();
      return;
    }
    const chunks: Buffer[] = [];
    // A caller that gives up (a reset, a proxy's timeout) ends the stream early: nothing to answer then.
    stream.on("error", () => undefined);
    stream.on("data", (chunk: Buffer) => chunks.push(chunk));
    stream.on("end", () => {
      if (stream.destroyed || stream.closed) return;
      stream.respond({ ":status": 200, "content-type": "application/grpc" }, { waitForTrailers: true });
      stream.once("wantTrailers", () => stream.sendTrailers({ "grpc-status": "0" }));
      stream.end(Buffer.concat(chunks));
    });
  });
  server.listen(port, "127.0.0.1", listening);
} else if (protocol === "websocket") {
  const server = createServer((_req, res) => {
    res.writeHead(426).end();
  });
  server.keepAliveTimeout = 65_000;
  const sockets = new WebSocketServer({ server, perMessageDeflate: false });
  sockets.on("connection", (socket) => {
    socket.on("error", () => undefined);
    socket.on("message", (data, isBinary) => socket.send(data, { binary: isBinary }));
  });
  server.listen(port, "127.0.0.1", listening);
} else {
  const body = Buffer.alloc(Number(process.env.BODY_BYTES ?? 1024), 0x78);
  const server = createServer((req, res) => {
    req.resume();
    req.on("end", () => {
      res.writeHead(200, { "content-type": "text/plain", "content-length": body.length });
      res.end(body);
    });
  });
  server.keepAliveTimeout = 65_000;
  server.listen(port, "127.0.0.1", listening);
}
process.on("SIGTERM", () => process.exit(0));
