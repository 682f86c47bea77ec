// HTTP/2 servers fed connections by a listener: the limits that bound them, and the request rules nghttp2 leaves to us.
import http2 from "node:http2";
import type { LimitsConfig } from "../config/index.ts";
import { resetStream } from "./downstream.ts";
import { DRAIN_CUT } from "./drain.ts";
import { cutForward, failForward } from "./forward.ts";

const { NGHTTP2_PROTOCOL_ERROR } = http2.constants;

export { NGHTTP2_PROTOCOL_ERROR };

/**
 * The http2 options every client-facing HTTP/2 server uses. nghttp2 bounds the floods (rapid reset is rate
 * limited, CONTINUATION frames are capped, unanswered SETTINGS and PING acknowledgements end the session);
 * these settings bound the rest: streams per connection, header block size, memory per session.
 */
export function h2ServerOptions(limits: LimitsConfig): http2.ServerOptions {
  return {
    settings: {
      maxConcurrentStreams: limits.maxConcurrentStreams,
      maxHeaderListSize: limits.maxHeaderSize,
      enablePush: false,
    },
    // Node counts the pseudo-headers (:method, :scheme, :authority, :path) among the pairs; limits.maxHeaderCount
    // counts the fields an HTTP/1.1 request would carry, so they come on top. A stream beyond it is reset.
    maxHeaderListPairs: limits.maxHeaderCount + 4,
    // Streams opened beyond SETTINGS_MAX_CONCURRENT_STREAMS are refused; this many refusals end the session.
    maxSessionRejectedStreams: 100,
    // Frames nghttp2 finds invalid; this many end the session.
    maxSessionInvalidFrames: 100,
    // Megabytes of buffered frames per session before new streams are refused (Node's default, made explicit).
    maxSessionMemory: 10,
    maxOutstandingPings: 10,
    // Rapid reset (CVE-2023-44487): nghttp2 lets a client reset this many streams at once, then this many a
    // second, and ends a session that goes faster (its defaults, made explicit).
    streamResetBurst: 1000,
    streamResetRate: 33,
    // A connection that never sends the preface is cut like a stalled handshake.
    unknownProtocolTimeout: limits.handshakeTimeout,
  };
}

/**
 * What every server stream gets first: its errors are settled by whoever ends it, and a stream with no byte
 * either way for `idleMs` is ended — its forward answered (or cut) as a timeout, named after `setting`.
 * Long-lived streams (gRPC, SSE) are timed by their idleness, never by a total.
 */
export function superviseStream(stream: http2.ServerHttp2Stream, idleMs: number, setting: string): void {
  stream.on("error", noop);
  stream.setTimeout(idleMs, () => {
    const failure = {
      status: 408,
      reason: "request_timeout" as const,
      message: `the stream was idle longer than ${setting}`,
    };
    if (!failForward(stream, failure)) resetStream(stream, true);
  });
}

function noop(): void {}

/**
 * Runs `handle` once the read that brought the stream in is over, unless the client reset the stream in that
 * same read: a rapid-reset flood (CVE-2023-44487) then costs the sidecar a stream object, never a request to
 * the app. `dropped` is told of a stream reset before it was handled.
 */
export function unlessResetAtOnce(
  stream: http2.ServerHttp2Stream,
  handle: () => void,
  dropped: () => void,
): void {
  setImmediate(() => {
    if (stream.destroyed || stream.closed) dropped();
    else handle();
  });
}

/**
 * Rules of RFC 9113 §8.3.1 that nghttp2 does not check (it already refuses uppercase names, connection-specific
 * fields, bad, missing or duplicate pseudo-headers, and content-length that disagrees with DATA): `:authority`
 * and `host` must agree, and `:authority` carries no userinfo. Returns what is wrong, or undefined.
 */
export function malformedH2Request(headers: http2.IncomingHttpHeaders): string | undefined {
  const authority = headers[":authority"];
  const host = headers.host;
  if (authority !== undefined && host !== undefined && authority !== host) {
    return `:authority ${JSON.stringify(authority)} and host ${JSON.stringify(host)} differ`;
  }
  if (authority?.includes("@")) return ":authority carries userinfo";
  return undefined;
}

const kOpenStreams = Symbol("mtlsd.openStreams");
type CountedSession = http2.ServerHttp2Session & { [kOpenStreams]?: number };

/**
 * Follows the sessions of an HTTP/2 server: counts each one's open streams, closes a session that has none once
 * nothing moved for `idleMs` (long-lived streams — gRPC, SSE — are timed by their own idle limit, never by the
 * connection's), and drains them: GOAWAY, streams in flight finish, new ones are refused.
 */
export class H2Sessions {
  readonly #sessions = new Set<http2.ServerHttp2Session>();
  /** Streams open over every session, so a drain's deadline can say why each one was cut. */
  readonly #streams = new Set<http2.ServerHttp2Stream>();
  #draining = false;

  watch(server: http2.Http2Server, idleMs: number): void {
    server.on("session", (session: CountedSession) => {
      session[kOpenStreams] = 0;
      this.#sessions.add(session);
      session.once("close", () => this.#sessions.delete(session));
      session.on("error", () => {});
      session.setTimeout(idleMs, () => {
        if (session[kOpenStreams] === 0) session.close();
      });
      if (this.#draining) session.close();
    });
    server.on("stream", (stream: http2.ServerHttp2Stream) => {
      const session = stream.session as CountedSession | undefined;
      if (!session) return;
      session[kOpenStreams] = (session[kOpenStreams] ?? 0) + 1;
      this.#streams.add(stream);
      stream.once("close", () => {
        session[kOpenStreams]!--;
        this.#streams.delete(stream);
      });
    });
  }

  get size(): number {
    return this.#sessions.size;
  }

  /** Streams open over every session: requests in flight. */
  get openStreams(): number {
    let open = 0;
    for (const session of this.#sessions) open += (session as CountedSession)[kOpenStreams] ?? 0;
    return open;
  }

  /** GOAWAY on every session: requests in flight finish, then the session closes; later ones are refused. */
  drain(): void {
    this.#draining = true;
    for (const session of this.#sessions) session.close();
  }

  /** The drain's deadline: every session is cut, and each stream still in flight is logged as cut by it. */
  destroy(): void {
    for (const stream of this.#streams) cutForward(stream, DRAIN_CUT);
    for (const session of this.#sessions) session.destroy();
  }
}
