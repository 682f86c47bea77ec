// A pool of HTTP/2 client sessions to one origin, dispatching requests the way an undici Pool does.
//
// Why not undici's own HTTP/2: gRPC through a proxy needs what its h2 client does not give us — the response
// head that ends the stream (gRPC Trailers-Only) told apart from one followed by a body, the reset code of a
// stream, and whether a failed request was ever processed (REFUSED_STREAM, GOAWAY) so it can be tried again.

import type { IncomingHttpHeaders } from "node:http";
import http2 from "node:http2";
import net from "node:net";
import type { Duplex } from "node:stream";
import type { Dispatcher } from "undici";
import { ExchangeController, IDLE_CONTROLLER } from "./dispatch-controller.ts";
import { fieldsObject, resetStream } from "./downstream.ts";
import type { ResponseHeaders } from "./headers.ts";

const {
  HTTP2_HEADER_AUTHORITY,
  HTTP2_HEADER_METHOD,
  HTTP2_HEADER_PATH,
  HTTP2_HEADER_SCHEME,
  HTTP2_HEADER_STATUS,
  NGHTTP2_NO_ERROR,
  NGHTTP2_REFUSED_STREAM,
} = http2.constants;

/** Opens one connection for a session: plain TCP (h2c) or TLS that negotiated ALPN `h2`. */
export type SessionConnector = (callback: (error: Error | null, socket: Duplex | null) => void) => void;

/** Plain TCP for h2c (HTTP/2 with prior knowledge), with a connect deadline. */
export function tcpConnector(host: string, port: number, timeoutMs: number): SessionConnector {
  return (callback) => {
    const socket = net.connect({ host, port, noDelay: true });
    let settled = false;
    const settle = (error: Error | null) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.removeListener("error", settle);
      if (error) {
        socket.destroy();
        callback(error, null);
      } else callback(null, socket);
    };
    const timer = setTimeout(() => {
      settle(
        Object.assign(new Error(`connecting to ${host}:${port} took longer than ${timeoutMs} ms`), {
          code: "UND_ERR_CONNECT_TIMEOUT",
        }),
      );
    }, timeoutMs);
    socket.once("connect", () => settle(null));
    socket.once("error", settle);
  };
}

export interface H2ClientOptions {
  /** `:scheme` of every request: https between sidecars, http to an h2c app. */
  scheme: "http" | "https";
  /** `:authority` when a request has no Host. */
  authority: string;
  connect: SessionConnector;
  /** Sessions at most; a session carries as many streams as the server's SETTINGS_MAX_CONCURRENT_STREAMS. */
  maxSessions: number;
  /** A session without streams for this long is closed. */
  idleTimeoutMs: number;
  /** A new session whose server sends no SETTINGS within this long is given up. */
  settingsTimeoutMs: number;
  /**
   * A connection came back without HTTP/2 (an `auto` upstream that speaks only HTTP/1.1): the socket and the
   * requests waiting for it are handed over, to be sent another way. Without it, they fail.
   */
  fallback?: (socket: Duplex, waiting: QueuedRequest[]) => void;
  /** A connection negotiated HTTP/2 and its session is up. */
  onNegotiated?: () => void;
}

/**
 * The handler API of undici, plus what only the protocol's framing can say: that the head ends the response, and
 * (`trailers: false`) that no trailers can follow it (an HTTP/1.1 body framed by Content-Length or by the close).
 */
export interface StreamHandler extends Dispatcher.DispatchHandler {
  onResponseStart?(
    controller: Dispatcher.DispatchController,
    statusCode: number,
    headers: ResponseHeaders,
    statusMessage?: string,
    endStream?: boolean,
    trailers?: boolean,
  ): void;
}

export interface QueuedRequest {
  options: Dispatcher.DispatchOptions;
  handler: StreamHandler;
  /** Attempts so far: a request the server refused unprocessed is queued again. */
  attempts?: number;
}

/** An error whose `code` classifyForwardError maps to a reason. */
class StreamError extends Error {
  readonly code: string;
  /** The RST_STREAM code, when the server reset the stream. */
  readonly rstCode: number | undefined;

  constructor(code: string, message: string, rstCode?: number) {
    super(message);
    this.code = code;
    this.rstCode = rstCode;
  }
}

const RESET_NAMES: Record<number, string> = Object.fromEntries(
  Object.entries(http2.constants)
    .filter(
      ([name]) =>
        name.startsWith("NGHTTP2_") && !name.startsWith("NGHTTP2_SESSION") && !name.includes("FLAG"),
    )
    .map(([name, value]) => [value, name.slice("NGHTTP2_".length)]),
);

/** The name of an RST_STREAM error code, as the logs show it. */
export function resetCodeName(code: number): string {
  return RESET_NAMES[code] ?? `code ${code}`;
}

interface PooledSession {
  session: http2.ClientHttp2Session;
  streams: number;
  /** The server's SETTINGS arrived: its stream limit is known, streams may be opened. */
  ready: boolean;
  /** GOAWAY received or sent: no new streams. */
  closing: boolean;
}

/** A request refused unprocessed (REFUSED_STREAM, a GOAWAY) is queued again this many times at most. */
const MAX_ATTEMPTS = 3;

export class H2Client {
  readonly #options: H2ClientOptions;
  readonly #sessions = new Set<PooledSession>();
  readonly #queue: QueuedRequest[] = [];
  /** Connections being opened; each will take requests from the queue once its session is up. */
  #connecting = 0;
  /** Sessions up, waiting for the server's SETTINGS. */
  #settling = 0;
  #closed = false;
  #running = 0;

  constructor(options: H2ClientOptions) {
    this.#options = options;
  }

  /** Open sessions, requests waiting for a stream, requests in flight: the shape of undici's Pool stats. */
  get stats(): { connected: number; pending: number; running: number } {
    return { connected: this.#sessions.size, pending: this.#queue.length, running: this.#running };
  }

  dispatch(options: Dispatcher.DispatchOptions, handler: StreamHandler): boolean {
    if (this.#closed) {
      handler.onResponseError?.(IDLE_CONTROLLER, new StreamError("UND_ERR_CLOSED", "the pool is closed"));
      return false;
    }
    const session = this.#available();
    if (session) this.#start(session, { options, handler });
    else {
      this.#queue.push({ options, handler });
      this.#grow();
    }
    return true;
  }

  /** Stops taking requests; resolves once every session has finished its streams and closed. */
  async close(): Promise<void> {
    this.#closed = true;
    this.#failQueue(new StreamError("UND_ERR_CLOSED", "the pool is closing"));
    await Promise.all(
      [...this.#sessions].map(({ session }) => {
        if (session.destroyed) return undefined;
        const closed = new Promise<void>((resolve) => session.once("close", () => resolve()));
        // A session already closing (after a GOAWAY) ignores close() and its callback: wait for it to end.
        if (!session.closed) session.close();
        return closed;
      }),
    );
  }

  /** Ends every session now, failing what is in flight. */
  async destroy(): Promise<void> {
    this.#closed = true;
    this.#failQueue(new StreamError("UND_ERR_DESTROYED", "the pool was destroyed"));
    for (const pooled of this.#sessions) pooled.session.destroy();
  }

  /** The session with the fewest streams that can take one more, if any. */
  #available(): PooledSession | undefined {
    let best: PooledSession | undefined;
    for (const pooled of this.#sessions) {
      if (!pooled.ready || pooled.closing || pooled.session.destroyed) continue;
      const limit = pooled.session.remoteSettings.maxConcurrentStreams ?? 100;
      if (pooled.streams >= limit) continue;
      if (!best || pooled.streams < best.streams) best = pooled;
    }
    return best;
  }

  /** Opens another session when the queue is longer than what the sessions being opened will take. */
  #grow(): void {
    if (this.#sessions.size + this.#connecting >= this.#options.maxSessions) return;
    // One connection in progress serves a burst: its session takes up to its stream limit from the queue.
    if (this.#connecting > 0 || this.#settling > 0) return;
    this.#connecting++;
    this.#options.connect((error, socket) => {
      this.#connecting--;
      if (error || !socket) {
        this.#failQueue(error ?? new StreamError("UND_ERR_SOCKET", "connection failed"));
        return;
      }
      if (this.#closed) {
        socket.destroy();
        return;
      }
      const alpn = (socket as { alpnProtocol?: string | false }).alpnProtocol;
      if (alpn !== undefined && alpn !== "h2") {
        const waiting = this.#queue.splice(0);
        if (this.#options.fallback) this.#options.fallback(socket, waiting);
        else {
          socket.destroy();
          for (const request of waiting) {
            failBeforeStart(
              request,
              new StreamError("UND_ERR_SOCKET", `the server chose ${alpn || "no"} ALPN protocol, not h2`),
            );
          }
        }
        return;
      }
      this.#options.onNegotiated?.();
      this.#addSession(socket);
    });
  }

  #addSession(socket: Duplex): void {
    const session = http2.connect(`${this.#options.scheme}://${this.#options.authority}`, {
      createConnection: () => socket,
      // No server push from upstreams: nothing downstream would want it.
      settings: { enablePush: false },
    });
    const pooled: PooledSession = { session, streams: 0, ready: false, closing: false };
    this.#sessions.add(pooled);
    this.#settling++;
    // What ended a session before its SETTINGS came: a TLS alert refusing our certificate, most often.
    let failure: Error | undefined;
    session.on("error", (error: Error) => {
      failure ??= error;
    });
    session.setTimeout(this.#options.idleTimeoutMs, () => {
      if (pooled.streams === 0) {
        pooled.closing = true;
        session.close();
      }
    });
    session.on("goaway", () => {
      pooled.closing = true;
    });
    // A server that never sends its SETTINGS is no server to wait for.
    const settled = setTimeout(() => {
      const timeout = this.#options.settingsTimeoutMs;
      failure ??= new StreamError(
        "UND_ERR_SOCKET",
        `the server sent no HTTP/2 SETTINGS within ${timeout} ms`,
      );
      session.destroy();
    }, this.#options.settingsTimeoutMs);
    const settle = () => {
      clearTimeout(settled);
      if (pooled.ready) return;
      pooled.ready = true;
      this.#settling--;
    };
    session.once("close", () => {
      const wasReady = pooled.ready;
      settle();
      this.#sessions.delete(pooled);
      if (!wasReady) {
        // The connection failed before it carried a stream, as surely as one that could not be opened: the requests
        // waiting fail as they would then (nothing of them was sent, so they may be tried elsewhere). Opening
        // another at once would meet the same end, again and again.
        this.#failQueue(
          failure ??
            new StreamError("UND_ERR_SOCKET", "the connection closed before the server's HTTP/2 SETTINGS"),
        );
        return;
      }
      // Requests still waiting need a session of their own now.
      if (this.#queue.length > 0 && !this.#closed) this.#grow();
    });
    // The server's SETTINGS tell how many streams it takes: opening more before they arrive gets them refused.
    session.once("remoteSettings", () => {
      settle();
      this.#drainQueue();
    });
  }

  #drainQueue(): void {
    while (this.#queue.length > 0) {
      const session = this.#available();
      if (!session) {
        this.#grow();
        return;
      }
      this.#start(session, this.#queue.shift()!);
    }
  }

  #failQueue(error: Error): void {
    for (const request of this.#queue.splice(0)) failBeforeStart(request, error);
  }

  #start(pooled: PooledSession, request: QueuedRequest): void {
    const exchange = new StreamExchange(request, this.#options);
    request.attempts = (request.attempts ?? 0) + 1;
    pooled.streams++;
    this.#running++;
    exchange.start(pooled.session, (refused) => {
      pooled.streams--;
      this.#running--;
      // Never processed by the server (REFUSED_STREAM, or beyond the last stream of a GOAWAY): queued again,
      // first in line, when nothing of the request was read yet, so it can be sent again whole.
      const again =
        refused &&
        !this.#closed &&
        request.attempts! < MAX_ATTEMPTS &&
        !exchange.responded &&
        !exchange.bodySent;
      if (again) this.#queue.unshift(request);
      if (this.#queue.length > 0) this.#drainQueue();
      return again;
    });
  }
}

function failBeforeStart(request: QueuedRequest, error: Error): void {
  request.handler.onResponseError?.(IDLE_CONTROLLER, error);
}

/** One request on one stream, reporting to an undici-style handler. */
class StreamExchange extends ExchangeController {
  readonly #request: QueuedRequest;
  readonly #options: H2ClientOptions;
  #stream: http2.ClientHttp2Stream | undefined;
  #headTimer: NodeJS.Timeout | undefined;
  #trailers: ResponseHeaders | undefined;
  responded = false;
  /** Whether any of the request body was read: a body consumed cannot be sent again. */
  bodySent = false;
  #onDone: ((refused: boolean) => boolean) | undefined;

  constructor(request: QueuedRequest, options: H2ClientOptions) {
    super();
    this.#request = request;
    this.#options = options;
  }

  protected override onAbort(reason: Error): void {
    // CANCEL tells the server the answer is no longer wanted (gRPC: a cancelled call reaches the app as such).
    if (this.#stream) resetStream(this.#stream, true);
    this.#fail(reason);
  }

  protected override onPause(): void {
    this.#stream?.pause();
  }

  protected override onResume(): void {
    this.#stream?.resume();
  }

  /** `done(refused)` is called once the stream is over; it returns true when it sends the request again. */
  start(session: http2.ClientHttp2Session, done: (refused: boolean) => boolean): void {
    this.#onDone = done;
    const { options, handler } = this.#request;
    handler.onRequestStart?.(this, {});
    if (this.aborted) {
      this.#settle(false);
      return;
    }
    const headers = requestHeaders(options, this.#options);
    const body = options.body as NodeJS.ReadableStream | null | undefined;
    let stream: http2.ClientHttp2Stream;
    try {
      stream = session.request(headers, { endStream: !body });
    } catch (error) {
      // The session went away between choosing it and opening the stream: nothing was sent.
      this.#stream = undefined;
      const refused = new StreamError("UND_ERR_SOCKET", (error as Error).message);
      if (!this.#settle(true)) this.#fail(refused);
      return;
    }
    this.#stream = stream;
    if (options.headersTimeout) {
      this.#headTimer = setTimeout(() => {
        this.abort(new StreamError("UND_ERR_HEADERS_TIMEOUT", "no response head in time"));
      }, options.headersTimeout);
    }
    if (options.bodyTimeout) {
      stream.setTimeout(options.bodyTimeout, () => {
        if (this.responded) this.abort(new StreamError("UND_ERR_BODY_TIMEOUT", "the response stalled"));
      });
    }
    stream.on("response", (fields, flags) => this.#onResponse(fields, flags));
    stream.on("data", (chunk: Buffer) => {
      if (!this.ended) handler.onResponseData?.(this, chunk);
    });
    stream.on("trailers", (fields) => {
      this.#trailers = responseFields(fields);
    });
    stream.on("end", () => {
      if (!this.responded || !this.markEnded()) return;
      clearTimeout(this.#headTimer);
      handler.onResponseEnd?.(this, (this.#trailers ?? {}) as IncomingHttpHeaders);
    });
    stream.on("error", () => {});
    stream.once("close", () => this.#onClose(stream));
    if (body) this.#sendBody(stream, body);
  }

  #sendBody(stream: http2.ClientHttp2Stream, body: NodeJS.ReadableStream): void {
    const onData = (chunk: Buffer) => {
      this.bodySent = true;
      if (!stream.write(chunk)) body.pause();
    };
    const onDrain = () => body.resume();
    const onEnd = () => {
      // node:http ends a request whose client vanished mid-body too; only a complete one may end the stream.
      if ((body as { complete?: boolean }).complete === false) {
        onError(new Error("the client closed before its body ended"));
        return;
      }
      cleanup();
      if (!stream.destroyed) stream.end();
    };
    const onError = (error: Error) => {
      cleanup();
      this.abort(
        Object.assign(new Error(`request body failed: ${error.message}`), { code: "MTLSD_CLIENT_CLOSED" }),
      );
    };
    // A body that closes without its end (the client went away mid-request) is a cut: never end the stream.
    const onClose = () => onError(new Error("the client closed before its body ended"));
    const cleanup = () => {
      body.removeListener("data", onData);
      body.removeListener("end", onEnd);
      body.removeListener("error", onError);
      body.removeListener("close", onClose);
      stream.removeListener("drain", onDrain);
    };
    body.on("data", onData);
    body.once("end", onEnd);
    body.once("error", onError);
    body.once("close", onClose);
    stream.on("drain", onDrain);
    stream.once("close", cleanup);
    // A body an HTTP/1.1 try elsewhere let go unread was paused there, to keep its bytes (h1-client.ts): it flows here.
    body.resume();
  }

  #onResponse(fields: http2.IncomingHttpHeaders & http2.IncomingHttpStatusHeader, flags: number): void {
    if (this.ended) return;
    const status = Number(fields[HTTP2_HEADER_STATUS]);
    // 1xx heads arrive as 'headers' events, not here; this is the final one.
    this.responded = true;
    clearTimeout(this.#headTimer);
    const endStream = (flags & http2.constants.NGHTTP2_FLAG_END_STREAM) !== 0;
    this.#request.handler.onResponseStart?.(this, status, responseFields(fields), undefined, endStream);
  }

  #onClose(stream: http2.ClientHttp2Stream): void {
    clearTimeout(this.#headTimer);
    const code = stream.rstCode ?? NGHTTP2_NO_ERROR;
    if (this.ended) {
      this.#settle(false);
      return;
    }
    // Closed before the response ended: refused (never processed), reset by the server, or the session died.
    // nghttp2 closes the streams a GOAWAY left unprocessed with REFUSED_STREAM too.
    const refused = code === NGHTTP2_REFUSED_STREAM;
    if (this.#settle(refused && !this.responded)) return;
    const error =
      code === NGHTTP2_NO_ERROR
        ? new StreamError("UND_ERR_SOCKET", "the connection closed before the response ended")
        : new StreamError(
            "MTLSD_UPSTREAM_RESET",
            `the server reset the stream (${resetCodeName(code)})`,
            code,
          );
    this.#fail(error);
  }

  /** Reports the end of the stream to the pool; true when the pool sends the request again. */
  #settle(refused: boolean): boolean {
    const done = this.#onDone;
    this.#onDone = undefined;
    return done?.(refused) ?? false;
  }

  #fail(error: Error): void {
    if (!this.markEnded()) return;
    clearTimeout(this.#headTimer);
    this.#request.handler.onResponseError?.(this, error);
  }
}

/** HTTP/1.1-shaped request headers as HTTP/2 fields: Host as `:authority`, names lowercased. */
function requestHeaders(
  options: Dispatcher.DispatchOptions,
  client: H2ClientOptions,
): http2.OutgoingHttpHeaders {
  const list = (options.headers ?? []) as string[];
  const fields = fieldsObject(list);
  const host = fields.host;
  delete fields.host;
  fields[HTTP2_HEADER_METHOD] = options.method;
  fields[HTTP2_HEADER_PATH] = options.path;
  fields[HTTP2_HEADER_SCHEME] = client.scheme;
  fields[HTTP2_HEADER_AUTHORITY] = typeof host === "string" ? host : client.authority;
  return fields;
}

/** Response fields without pseudo-headers, in the shape undici hands its handlers. */
function responseFields(fields: http2.IncomingHttpHeaders): ResponseHeaders {
  const out: ResponseHeaders = {};
  for (const name in fields) {
    if (name.charCodeAt(0) === 0x3a) continue;
    out[name] = fields[name];
  }
  return out;
}
