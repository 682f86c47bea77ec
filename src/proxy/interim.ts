// Lets an HTTP/1.1 upstream send `100 Continue` unasked, as RFC 9110 §15.2 allows, without the exchange failing.
//
// undici's HTTP/1.1 client destroys the connection on any 100 response ("bad response": it never sends
// `Expect: 100-continue` itself), so an app that answers every request with an early 100 — some frameworks do, and
// RFC 9110 §15.2.1 lets a server send it whether or not the client asked — would see all its answers become 502s.
// The connections the sidecar opens to such an upstream drop a 100 head that starts a response before undici's
// parser reads it; every other byte reaches the parser unchanged (other 1xx heads undici handles, and the
// forwarding engine ignores them).
import diagnosticsChannel from "node:diagnostics_channel";
import type net from "node:net";
import type { buildConnector } from "undici";

type Connector = buildConnector.connector;

const kInterim = Symbol("mtlsd.interim");

interface InterimState {
  /** The next byte read starts a response head (a request was just sent, pipelining 1). */
  atHead: boolean;
  /** The start of a head that may be a 100, not yet complete. */
  held: Buffer | undefined;
  /** Bytes read from the socket after an interim head that went to the parser: looked at by the next read. */
  after: Buffer | undefined;
}

type WatchedSocket = net.Socket & { [kInterim]?: InterimState };

/** `HTTP/1.` then any digit, a space, then `1`: the start of a 1xx status line. */
const INTERIM_PREFIX = Buffer.from("HTTP/1.0 1", "latin1");
const VERSION_DIGIT = 7;
const HEAD_END = Buffer.from("\r\n\r\n", "latin1");
/** A 100 head longer than this is not one undici would accept either: passed on for it to refuse. */
const MAX_INTERIM_HEAD = 16 * 1024;

let watching = false;

/**
 * undici publishes `undici:client:sendHeaders` just before it writes a request's first byte on a socket (a
 * documented diagnostics channel). With one request at a time per connection (pipelining 1, as every pool of the
 * sidecar uses), the response to it is the next thing that socket reads: its first bytes are a head.
 */
function watchRequestHeads(): void {
  if (watching) return;
  watching = true;
  diagnosticsChannel.subscribe("undici:client:sendHeaders", (message) => {
    const state = (message as { socket?: WatchedSocket }).socket?.[kInterim];
    if (!state) return;
    state.atHead = true;
    state.held = undefined;
    state.after = undefined;
  });
}

/**
 * Wraps an undici connector (for a Pool with pipelining 1) so that its connections drop an unsolicited
 * `100 Continue` ahead of a response. undici's parser pulls bytes with `socket.read()`; the socket's own `read`
 * is wrapped, and does nothing past the first bytes of each response.
 */
export function toleratingContinue(connect: Connector): Connector {
  return (options, callback) =>
    connect(options, (error, socket) => {
      if (socket) tolerateContinue(socket as net.Socket);
      // undici's callback is typed as two overloads; calling it with both arguments as received is what it expects.
      (callback as (error: Error | null, socket: net.Socket | null) => void)(
        error,
        socket as net.Socket | null,
      );
    });
}

/** The same, for a connection made elsewhere that an undici pool (pipelining 1) is about to take over. */
export function tolerateContinue(socket: net.Socket): net.Socket {
  watchRequestHeads();
  watch(socket as WatchedSocket);
  return socket;
}

function watch(socket: WatchedSocket): void {
  if (socket[kInterim]) return;
  const state: InterimState = { atHead: true, held: undefined, after: undefined };
  socket[kInterim] = state;
  const read = socket.read;
  socket.read = function readPastContinue(this: net.Socket, size?: number) {
    for (;;) {
      const after = state.after;
      state.after = undefined;
      const chunk = after ?? (read.call(this, size) as Buffer | null);
      if (chunk === null || !state.atHead) return chunk;
      const passed = skipContinue(state, chunk);
      if (passed) return passed;
    }
  } as typeof socket.read;
}

/** What of `chunk` (after what was held) goes to the parser now; undefined when nothing does yet. */
function skipContinue(state: InterimState, chunk: Buffer): Buffer | undefined {
  let bytes = state.held ? Buffer.concat([state.held, chunk]) : chunk;
  state.held = undefined;
  for (;;) {
    if (bytes.length === 0) return undefined;
    if (!mayBeInterim(bytes)) {
      state.atHead = false;
      return bytes;
    }
    const end = bytes.indexOf(HEAD_END);
    if (end === -1) {
      if (bytes.length > MAX_INTERIM_HEAD) {
        state.atHead = false;
        return bytes;
      }
      state.held = bytes;
      return undefined;
    }
    const next = end + HEAD_END.length;
    // "HTTP/1.x 1dd": only 100 is dropped. A 101 ends the responses (an upgrade, or undici refuses it); the other
    // 1xx heads (102, 103) go to undici, which passes them over, and a head still follows them.
    if (bytes[10] !== 0x30 || bytes[11] !== 0x30 || (bytes[12] !== 0x20 && bytes[12] !== 0x0d)) {
      if (bytes[10] === 0x30 && bytes[11] === 0x31) state.atHead = false;
      else if (next < bytes.length) state.after = bytes.subarray(next);
      return state.atHead ? bytes.subarray(0, next) : bytes;
    }
    bytes = bytes.subarray(next);
  }
}

/** Whether `bytes` start like a 1xx status line, as far as they go. */
function mayBeInterim(bytes: Buffer): boolean {
  const length = Math.min(bytes.length, INTERIM_PREFIX.length);
  for (let i = 0; i < length; i++) {
    if (i === VERSION_DIGIT) {
      if (bytes[i]! < 0x30 || bytes[i]! > 0x39) return false;
    } else if (bytes[i] !== INTERIM_PREFIX[i]) return false;
  }
  return true;
}
