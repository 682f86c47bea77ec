// Tells an HTTP/2 connection with prior knowledge from an HTTP/1.1 one by its first bytes, before either server sees them.
import http from "node:http";
import type http2 from "node:http2";
import type net from "node:net";

/** RFC 9113 §3.4: every HTTP/2 connection starts with these 24 bytes; no HTTP/1.1 request can. */
const PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "latin1");

/**
 * Reads until the bytes either match the preface (HTTP/2) or stop matching it (HTTP/1.1), then puts them back
 * and pauses the socket for the server it goes to. One look per connection, most often one chunk: an HTTP/1.1
 * request line differs within its first three bytes.
 */
export function sniffHttp2Preface(socket: net.Socket, decided: (http2: boolean) => void): void {
  let seen: Buffer = Buffer.alloc(0);
  const onData = (chunk: Buffer) => {
    seen = seen.length === 0 ? chunk : Buffer.concat([seen, chunk]);
    const compared = Math.min(seen.length, PREFACE.length);
    const matches = seen.subarray(0, compared).equals(PREFACE.subarray(0, compared));
    if (matches && compared < PREFACE.length) return;
    socket.off("data", onData);
    socket.pause();
    socket.unshift(seen);
    decided(matches);
  };
  socket.on("data", onData);
  socket.resume();
}

/**
 * Hands a socket whose first bytes were read back into its buffer to the server it belongs to. The HTTP/1.1
 * server reads new bytes straight from the handle, so the buffered ones must flow to it first (they are delivered
 * before any later read); the HTTP/2 session reads the buffer itself on its next tick, and a flowing socket would
 * have emitted those bytes to nobody by then.
 */
export function feed(server: http.Server | http2.Http2Server, socket: net.Socket): void {
  server.emit("connection", socket);
  if (server instanceof http.Server) socket.resume();
}
