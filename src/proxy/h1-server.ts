// The HTTP/1.1 server fast path: plain requests read and answered on the socket itself, all else left to node:http.
//
// node:http's server costs the outbound sidecar about 40 % of its CPU (issue 16) for requests that are, almost
// always, a plain head and a Content-Length body. An H1Connection reads such heads itself (h1-request.ts) and
// serves them as an H1ServerDownstream, which the per-request pipeline treats as any Downstream. The first
// head it does not recognize as plain, at a request boundary (no response in flight, the body read), ends its
// part: the bytes it holds are put back and the socket is handed to node:http, whose llhttp and handlers then
// decide everything about that connection, as they did before the fast path existed.
import http from "node:http";
import type net from "node:net";
import { performance } from "node:perf_hooks";
import { Readable } from "node:stream";
import { type Downstream, isGrpcContentType } from "./downstream.ts";
import { failForward } from "./forward.ts";
import { type PlainRequest, parseRequestHead, type RequestHeadLimits } from "./h1-request.ts";
import { isNamed, type ResponseHeaders } from "./headers.ts";
import { describeClientError } from "./respond.ts";
import { feed } from "./sniff.ts";

/** The bounds a fast connection keeps, read afresh at each use: a config reload may change them. */
export interface H1ServerLimits extends RequestHeadLimits {
  /** How long an idle connection waits for its next request, ms (Node adds a second: see httpLimits). */
  keepAliveTimeout: number;
  /** How long a request's head and body may take to arrive, ms. */
  requestTimeout: number;
  /** How long a connection's first head may take to arrive, ms (read only with `headersTimedOut`). */
  headersTimeout: number;
}

export interface H1ConnectionOptions {
  limits(): H1ServerLimits;
  /** Whether a drain has begun: every response then says `Connection: close`. */
  draining(): boolean;
  /** A plain request, its body still arriving: handled as any other request. */
  request(down: H1ServerDownstream): void;
  /** A head the fast path does not serve: the socket, its buffered bytes put back, goes to node:http. */
  handOver(socket: net.Socket): void;
  /** The request's body did not arrive within limits.requestTimeout. */
  requestTimedOut(down: H1ServerDownstream): void;
  /** The connection has ended its fast part (closed, or handed over): forget it. */
  released(connection: H1Connection): void;
  /**
   * When given, a connection's first head is bound by limits.headersTimeout from the start, as node:http binds
   * it: a connection that sends nothing within it is released and passed here, to be answered as node:http's
   * clientError (ERR_HTTP_REQUEST_TIMEOUT) is. A first head handed to node:http (incomplete, or not plain) keeps
   * that deadline rather than a new one from the handover: at the deadline the socket is passed here again,
   * `handedOver`, and the listener answers it only if node:http has not read a whole head on it meanwhile.
   * Without it, a new connection waits until its client speaks (both listeners give it: listenerFastPath).
   */
  headersTimedOut?(socket: net.Socket, handedOver: boolean): void;
}

/** How long a closing connection still reads (and drops) a request body nobody will use, at most (as H1Downstream). */
const LINGER_MS = 2000;
/** Node keeps an idle connection this much longer than the Keep-Alive timeout it advertises (httpLimits). */
const KEEP_ALIVE_BUFFER_MS = 1000;
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
/** What node:http refuses in a header value or status message (ERR_INVALID_CHAR). */
const INVALID_CHAR = /[^\t\x20-\x7e\x80-\xff]/;
/** What writeHead makes of a field, by its name: one it writes itself (dropped), the length, the date, or another. */
const Field = { Other: 0, Own: 1, Length: 2, Date: 3 } as const;
type Field = (typeof Field)[keyof typeof Field];

/** Connection, Keep-Alive and Transfer-Encoding the connection writes itself: what a caller passes is dropped. */
function fieldOf(name: string): Field {
  switch (name.length) {
    case 4:
      return isNamed(name, "date") ? Field.Date : Field.Other;
    case 10:
      return isNamed(name, "connection") || isNamed(name, "keep-alive") ? Field.Own : Field.Other;
    case 14:
      return isNamed(name, "content-length") ? Field.Length : Field.Other;
    case 17:
      return isNamed(name, "transfer-encoding") ? Field.Own : Field.Other;
    default:
      return Field.Other;
  }
}

let keepAliveSeconds = -1;
let keepAliveField = "";
/** The Keep-Alive field for a timeout, built again only when the timeout changes. */
function keepAliveLine(timeoutMs: number): string {
  const seconds = Math.floor(timeoutMs / 1000);
  if (seconds !== keepAliveSeconds) {
    keepAliveSeconds = seconds;
    keepAliveField = `Keep-Alive: timeout=${seconds}\r\n`;
  }
  return keepAliveField;
}
const CONTINUE = Buffer.from("HTTP/1.1 100 Continue\r\n\r\n", "latin1");
const LAST_CHUNK = "0\r\n";
const CRLF = "\r\n";

let dateSecond = 0;
let dateField = "";
/** The Date field, built once a second as node:http does. */
function dateLine(): string {
  const now = Date.now();
  const second = Math.floor(now / 1000);
  if (second !== dateSecond) {
    dateSecond = second;
    dateField = `Date: ${new Date(now).toUTCString()}\r\n`;
  }
  return dateField;
}

/**
 * Where a socket handed to node:http stands with its first head's deadline (see H1ConnectionOptions'
 * headersTimedOut): node:http read a head on it in time, or the deadline came first and was answered 408.
 */
const kHead = Symbol("mtlsd.head");
type HeadedSocket = net.Socket & { [kHead]?: "read" | "late" };

/**
 * For a listener's headersTimedOut: whether the first head's deadline is to be answered now. Not when node:http,
 * given the socket, read a head on it in time (or the socket can no longer be answered); otherwise node:http's
 * parser may still complete a head on it, and handedHeadRead drops that one.
 */
export function firstHeadLate(socket: net.Socket, handedOver: boolean): boolean {
  if (!handedOver) return true;
  const headed = socket as HeadedSocket;
  if (headed[kHead] === "read" || !socket.writable) return false;
  headed[kHead] = "late";
  return true;
}

/** node:http read a whole head on `socket`: false (and the socket cut) when its 408 was already sent. */
export function handedHeadRead(socket: net.Socket): boolean {
  const headed = socket as HeadedSocket;
  if (headed[kHead] === "late") {
    socket.destroy();
    return false;
  }
  headed[kHead] = "read";
  return true;
}

/** The error node:http reports when headersTimeout or requestTimeout runs out. */
export function requestTimeoutError(): Error & { code: string } {
  return Object.assign(new Error("request timeout"), { code: "ERR_HTTP_REQUEST_TIMEOUT" });
}

/** What a listener decides about its fast connections; listenerFastPath adds what both listeners do alike. */
export interface FastPathListener
  extends Pick<H1ConnectionOptions, "limits" | "draining" | "request" | "released"> {
  /** The listener's node:http server: it takes a connection at the first head the fast path does not serve. */
  http(): http.Server;
  /** Answers a connection as the listener's node:http `clientError` handler does. */
  clientError(error: Error & { code?: string }, socket: net.Socket): void;
}

/**
 * A listener's fast-path options, its deadlines kept as node:http keeps them: a request whose body is late
 * (requestTimeout) fails as settleClientError fails node:http's; a connection whose first head does not come
 * whole within headersTimeout is answered 408 through `clientError`, unless node:http, handed it, read a head on
 * it in time (it is then node:http's business alone).
 */
export function listenerFastPath(listener: FastPathListener): H1ConnectionOptions {
  return {
    limits: () => listener.limits(),
    draining: () => listener.draining(),
    request: (down) => listener.request(down),
    handOver: (socket) => feed(listener.http(), socket),
    requestTimedOut: (down) => {
      if (!failForward(down, describeClientError(requestTimeoutError()))) down.abort();
    },
    released: (connection) => listener.released(connection),
    headersTimedOut: (socket, handedOver) => {
      if (firstHeadLate(socket, handedOver)) listener.clientError(requestTimeoutError(), socket);
    },
  };
}

/** One connection from a client, served request by request until it closes or is handed over. */
export class H1Connection {
  readonly socket: net.Socket;
  readonly #options: H1ConnectionOptions;
  /** Bytes read and not yet used: the start of the next head (or, while a body is due, nothing). */
  #buffer: Buffer | undefined;
  /** The request being served, until its response is done and its body read. */
  #current: H1ServerDownstream | undefined;
  #released = false;
  /** Nothing has been read yet: a timeout now is the first head's (see headersTimedOut). */
  #fresh = true;
  /** No request has been served yet: a handover now hands over the first head, and its deadline. */
  #first = true;
  /** When the first head is due (performance.now()), with headersTimedOut. */
  #headDeadline: number | undefined;

  /**
   * `acceptedAt` (performance.now()) is when the connection was accepted, if something read from it before (the
   * outbound's look at its first bytes): the first head's deadline counts from then.
   */
  constructor(socket: net.Socket, options: H1ConnectionOptions, acceptedAt = performance.now()) {
    this.socket = socket;
    this.#options = options;
    socket.on("data", this.#onData);
    socket.on("close", this.#onClose);
    socket.on("timeout", this.#onIdleTimeout);
    if (options.headersTimedOut) {
      // Nothing is written before the first request, so this idle timer runs from the start, as node:http's does.
      const { headersTimeout } = options.limits();
      if (headersTimeout > 0) {
        this.#headDeadline = acceptedAt + headersTimeout;
        socket.setTimeout(Math.max(1, this.#headDeadline - performance.now()));
      }
    }
    socket.resume();
  }

  /** The request being served (between its head and the end of its response and body), if any. */
  get current(): H1ServerDownstream | undefined {
    return this.#current;
  }

  /** A drain began: an idle connection closes now; one with a request in flight closes after its response. */
  drain(): void {
    if (this.#current) this.#current.closeAfter();
    else this.socket.destroy();
  }

  readonly #onData = (chunk: Buffer): void => {
    this.#fresh = false;
    const current = this.#current;
    if (current) {
      const rest = current.take(chunk);
      if (rest === undefined) return;
      // Bytes after the body: the next request's, read once this one is answered.
      this.#buffer = this.#buffer ? Buffer.concat([this.#buffer, rest]) : rest;
      this.socket.pause();
      return;
    }
    this.#buffer = this.#buffer ? Buffer.concat([this.#buffer, chunk]) : chunk;
    this.#next();
  };

  /** At a request boundary with bytes in hand: serve a plain head, or hand the connection over. */
  #next(): void {
    const buffer = this.#buffer;
    if (!buffer || buffer.length === 0 || this.#released) return;
    const head = parseRequestHead(buffer, this.#options.limits());
    // A head that did not come whole in what was read is left to node:http too: its headersTimeout then
    // bounds a client that trickles it, as it always has.
    if (typeof head === "string") {
      this.#handOver();
      return;
    }
    // The idle timer is not stopped for the request: while one is current, its firing is passed over (see
    // #onIdleTimeout), and the socket's reads and writes start it over. Stopping and setting it per request would
    // make a Timeout and a bound function each time.
    const rest = buffer.length === head.headLength ? undefined : buffer.subarray(head.headLength);
    this.#buffer = undefined;
    const down = new H1ServerDownstream(this, head);
    this.#current = down;
    this.#first = false;
    if (rest) {
      const after = down.take(rest);
      if (after !== undefined) {
        this.#buffer = after;
        this.socket.pause();
      }
    }
    this.#options.request(down);
  }

  #handOver(): void {
    this.#release();
    const socket = this.socket;
    socket.setTimeout(0);
    socket.pause();
    if (this.#buffer) socket.unshift(this.#buffer);
    this.#buffer = undefined;
    this.#options.handOver(socket);
    const headersTimedOut = this.#options.headersTimedOut;
    if (this.#first && headersTimedOut && this.#headDeadline !== undefined) {
      const timer = setTimeout(
        () => headersTimedOut(socket, true),
        Math.max(0, this.#headDeadline - performance.now()),
      );
      timer.unref();
      socket.once("close", () => clearTimeout(timer));
    }
  }

  /** The response to `down` is done and its body read (or dropped): on to the next request, or closed. */
  finished(down: H1ServerDownstream, keepAlive: boolean): void {
    if (this.#current !== down) return;
    this.#current = undefined;
    if (!keepAlive) {
      this.#release();
      // As node:http closes after a `Connection: close` response: our side ends, the socket goes once it is written.
      this.socket.destroySoon();
      return;
    }
    if (this.#buffer) {
      this.socket.resume();
      this.#next();
      return;
    }
    const idleMs = this.#options.limits().keepAliveTimeout + KEEP_ALIVE_BUFFER_MS;
    // Set once per connection (and again if a reload changes it): every read and write since restarted it, so it
    // counts from this response's last write.
    if (this.socket.timeout !== idleMs) this.socket.setTimeout(idleMs);
    this.socket.resume();
  }

  /** The response said `Connection: close` before the body was all read: end our side, drop what still comes. */
  linger(down: H1ServerDownstream): void {
    if (this.#current !== down) return;
    this.#current = undefined;
    this.#release();
    const socket = this.socket;
    socket.on("data", noop);
    socket.resume();
    socket.end();
    socket.setTimeout(LINGER_MS, () => socket.destroy());
  }

  requestTimedOut(down: H1ServerDownstream): void {
    if (this.#current === down) this.#options.requestTimedOut(down);
  }

  readonly #onIdleTimeout = (): void => {
    if (this.#current) return;
    const headersTimedOut = this.#options.headersTimedOut;
    if (this.#fresh && headersTimedOut) {
      this.#release();
      this.socket.setTimeout(0);
      headersTimedOut(this.socket, false);
      return;
    }
    this.socket.destroy();
  };

  readonly #onClose = (): void => {
    this.#current?.closed();
    this.#current = undefined;
    this.#release();
  };

  #release(): void {
    if (this.#released) return;
    this.#released = true;
    this.socket.off("data", this.#onData);
    this.socket.off("close", this.#onClose);
    this.socket.off("timeout", this.#onIdleTimeout);
    this.#options.released(this);
  }

  /** The connection's options, for the requests it serves. */
  get options(): H1ConnectionOptions {
    return this.#options;
  }
}

/** How the response body is delimited on the wire. */
const Framing = { None: 0, Length: 1, Chunked: 2, Close: 3 } as const;
type Framing = (typeof Framing)[keyof typeof Framing];

/** A plain HTTP/1.1 request served on the fast path, and its response, written by hand as node:http would. */
export class H1ServerDownstream implements Downstream {
  readonly protocol = "http/1.1" as const;
  readonly hasBody = undefined;
  readonly method: string;
  readonly target: string;
  readonly rawHeaders: readonly string[];
  readonly hostRequired: boolean;
  /** The client's connection: what a listener binds a route to. */
  readonly socket: net.Socket;
  readonly #connection: H1Connection;
  readonly #socket: net.Socket;
  readonly #head: PlainRequest;
  /** Body bytes still to come from the client. */
  #remaining: number;
  #body: Readable | undefined;
  /** Whether the body is being read only to be dropped (the response came first). */
  #discarding = false;
  #requestTimer: NodeJS.Timeout | undefined;
  #grpc: boolean | undefined;
  #headersSent = false;
  #ended = false;
  #aborted = false;
  #close = false;
  #keepAlive = false;
  #framing: Framing = Framing.None;
  #closeListeners: (() => void)[] = [];

  constructor(connection: H1Connection, head: PlainRequest) {
    this.#connection = connection;
    this.socket = connection.socket;
    this.#socket = connection.socket;
    this.#head = head;
    this.method = head.method;
    this.target = head.target;
    this.rawHeaders = head.rawHeaders;
    this.hostRequired = head.minor === 1;
    this.#remaining = head.contentLength;
    if (this.#remaining > 0) {
      this.#body = new Readable({ read: () => this.#socket.resume() });
      // Whoever reads the body sees its errors; a forward that failed before reading it must not crash on them.
      this.#body.on("error", noop);
      const { requestTimeout } = connection.options.limits();
      if (requestTimeout > 0) {
        this.#requestTimer = setTimeout(() => this.#connection.requestTimedOut(this), requestTimeout);
        this.#requestTimer.unref();
      }
    }
  }

  get grpc(): boolean {
    this.#grpc ??= isGrpcContentType(fieldValue(this.rawHeaders, "content-type"));
    return this.#grpc;
  }

  get headersSent(): boolean {
    return this.#headersSent;
  }

  get destroyed(): boolean {
    return this.#aborted || this.#socket.destroyed;
  }

  /** Whether the whole body has arrived (or there was none). */
  get complete(): boolean {
    return this.#remaining === 0;
  }

  /**
   * Bytes read from the socket while this request is current: what belongs to its body goes there; the rest,
   * if any, is returned (the next request's).
   */
  take(chunk: Buffer): Buffer | undefined {
    if (this.#remaining === 0) return chunk;
    const used = Math.min(this.#remaining, chunk.length);
    this.#remaining -= used;
    const part = used === chunk.length ? chunk : chunk.subarray(0, used);
    if (!this.#discarding && this.#body && !this.#body.destroyed) {
      if (!this.#body.push(part)) this.#socket.pause();
    }
    if (this.#remaining === 0) this.#bodyComplete();
    return used === chunk.length ? undefined : chunk.subarray(used);
  }

  #bodyComplete(): void {
    clearTimeout(this.#requestTimer);
    if (!this.#discarding) this.#body?.push(null);
    if (this.#ended) this.#connection.finished(this, this.#keepAlive);
  }

  /** The request body as a Readable of exactly Content-Length bytes, paced by its reader. */
  body(): Readable {
    this.#body ??= Readable.from([]);
    return this.#body;
  }

  writeContinue(): void {
    if (!this.#headersSent && !this.destroyed) this.#socket.write(CONTINUE);
  }

  writeHead(status: number, headers: readonly string[], statusMessage?: string): void {
    if (this.#headersSent)
      throw Object.assign(new Error("the response head was already sent"), { code: "ERR_HTTP_HEADERS_SENT" });
    if (!Number.isInteger(status) || status < 100 || status > 999) {
      throw Object.assign(new RangeError(`Invalid status code: ${status}`), {
        code: "ERR_HTTP_INVALID_STATUS_CODE",
      });
    }
    const message = statusMessage || http.STATUS_CODES[status] || "unknown";
    if (INVALID_CHAR.test(message)) throw invalidChar("statusMessage");
    // Names are told by length and a case-insensitive compare (fieldOf), not by a lowercase copy of each.
    let length = false;
    let date = false;
    for (let i = 0; i < headers.length; i += 2) {
      const name = headers[i]!;
      const value = headers[i + 1]!;
      if (!TOKEN.test(name)) {
        throw Object.assign(new TypeError(`Header name must be a valid HTTP token ["${name}"]`), {
          code: "ERR_INVALID_HTTP_TOKEN",
        });
      }
      if (INVALID_CHAR.test(value)) throw invalidChar(`the "${name}" header`);
      const field = fieldOf(name);
      if (field === Field.Own) continue;
      if (field === Field.Length) length = true;
      else if (field === Field.Date) date = true;
    }
    const bodyless = this.method === "HEAD" || status === 204 || status === 304 || status < 200;
    const minor = this.#head.minor;
    if (bodyless) this.#framing = Framing.None;
    else if (length) this.#framing = Framing.Length;
    else if (minor === 1) this.#framing = Framing.Chunked;
    else this.#framing = Framing.Close;
    // node:http: an HTTP/1.0 response persists only with a Content-Length, whatever its body.
    const persistable = minor === 1 || length;
    this.#keepAlive =
      this.#head.keepAlive && persistable && !this.#close && !this.#connection.options.draining();
    let head = `HTTP/1.1 ${status} ${message}\r\n`;
    for (let i = 0; i < headers.length; i += 2) {
      const name = headers[i]!;
      if (fieldOf(name) === Field.Own) continue;
      head += `${name}: ${headers[i + 1]!}\r\n`;
    }
    if (!date) head += dateLine();
    if (this.#keepAlive) {
      const { keepAliveTimeout } = this.#connection.options.limits();
      head += "Connection: keep-alive\r\n";
      if (keepAliveTimeout > 0) head += keepAliveLine(keepAliveTimeout);
    } else head += "Connection: close\r\n";
    if (this.#framing === Framing.Chunked) head += "Transfer-Encoding: chunked\r\n";
    head += CRLF;
    this.#headersSent = true;
    if (this.#socket.destroyed) return;
    this.#socket.cork();
    this.#socket.write(head, "latin1");
    process.nextTick(uncork, this.#socket);
  }

  write(chunk: Buffer): boolean {
    if (this.destroyed || this.#ended || chunk.length === 0) return true;
    if (!this.#headersSent) this.writeHead(200, []);
    const socket = this.#socket;
    switch (this.#framing) {
      case Framing.None:
        return true;
      case Framing.Chunked:
        socket.cork();
        socket.write(`${chunk.length.toString(16)}\r\n`, "latin1");
        socket.write(chunk);
        process.nextTick(uncork, socket);
        return socket.write(CRLF, "latin1");
      default:
        return socket.write(chunk);
    }
  }

  onDrain(listener: () => void): void {
    this.#socket.once("drain", listener);
  }

  end(trailers?: ResponseHeaders): void {
    if (this.#ended || this.destroyed) return;
    if (!this.#headersSent) this.writeHead(200, []);
    this.#ended = true;
    if (this.#framing === Framing.Chunked) {
      let last = LAST_CHUNK;
      if (trailers) {
        for (const name in trailers) {
          const value = trailers[name];
          if (value === undefined || !TOKEN.test(name)) continue;
          for (const item of Array.isArray(value) ? value : [value]) {
            if (!INVALID_CHAR.test(item)) last += `${name}: ${item}\r\n`;
          }
        }
      }
      this.#socket.write(last + CRLF, "latin1");
    }
    const keepAlive = this.#keepAlive && this.#framing !== Framing.Close;
    // After the caller is done with `end`, as node:http emits a response's close: a forward that ends with its
    // own error response must log that, not the close it caused.
    process.nextTick(() => this.#emitClose());
    if (keepAlive && this.#remaining > 0) {
      // The answer came before the whole body: it is read and dropped, as node:http does, before the next request.
      this.#discarding = true;
      this.#body?.destroy();
      this.#socket.resume();
      return;
    }
    if (!keepAlive && this.#remaining > 0) {
      this.#body?.destroy();
      this.#connection.linger(this);
      return;
    }
    if (this.#remaining === 0) this.#connection.finished(this, keepAlive);
  }

  abort(): void {
    if (this.#aborted) return;
    this.#aborted = true;
    this.#socket.destroy();
  }

  closeAfter(): void {
    this.#close = true;
    if (this.#headersSent && this.#keepAlive) {
      // Its head already promised keep-alive: the connection ends once this response is done.
      this.#keepAlive = false;
    }
  }

  onClose(listener: () => void): void {
    this.#closeListeners.push(listener);
  }

  offClose(listener: () => void): void {
    const at = this.#closeListeners.indexOf(listener);
    if (at !== -1) this.#closeListeners.splice(at, 1);
  }

  /** The socket closed while this request was current. */
  closed(): void {
    clearTimeout(this.#requestTimer);
    if (this.#remaining > 0 && this.#body && !this.#body.destroyed) {
      this.#body.destroy(
        Object.assign(new Error("the client closed the connection"), { code: "ECONNRESET" }),
      );
    }
    this.#emitClose();
  }

  #emitClose(): void {
    const listeners = this.#closeListeners;
    this.#closeListeners = [];
    for (const listener of listeners) listener();
  }
}

function uncork(socket: net.Socket): void {
  socket.uncork();
}

function invalidChar(what: string): Error {
  return Object.assign(new TypeError(`Invalid character in ${what}`), { code: "ERR_INVALID_CHAR" });
}

function fieldValue(raw: readonly string[], lowerName: string): string | undefined {
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!;
    if (name.length === lowerName.length && name.toLowerCase() === lowerName) return raw[i + 1];
  }
  return undefined;
}

function noop(): void {}
