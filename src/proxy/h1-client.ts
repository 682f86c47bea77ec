// mtlsd's HTTP/1.1 client: a pool of keep-alive connections, one request at a time on each (no pipelining),
// reporting to the same handler API as undici and the HTTP/2 client. The inbound reaches its app with it over TCP;
// the outbound reaches its peers with it over the mTLS connections its connector opens (the `connect` option).
//
// Why not undici here: on the hop to the app it cost 43% of the inbound sidecar's CPU in the benchmark's profile
// (its WebAssembly llhttp alone 18%), for requests that are a head, maybe a body, and an answer. This client
// writes a request as one string and reads the answer with ResponseParser (h1-response.ts), as strict as
// llhttp's strict mode. Upgrades still go through undici (forwardUpgrade), where its upgrade API serves best.
import net from "node:net";
import type { Duplex, Readable } from "node:stream";
import type { Dispatcher } from "undici";
import { ExchangeController } from "./dispatch-controller.ts";
import { ResponseParser } from "./h1-response.ts";
import type { StreamHandler } from "./h2-client.ts";
import type { ResponseHeaders } from "./headers.ts";
import { Timer } from "./timer.ts";

/**
 * Opens one connection for the client, in place of its own TCP dial: the socket given is ready for the request
 * (connected, its TLS handshake done), and the connector keeps its own deadline. Its errors reach the request as
 * they are, so their codes classify as the connector meant them to.
 */
export type H1Connector = (callback: (error: Error | null, socket: Duplex | null) => void) => void;

export interface H1ClientOptions {
  /** The origin, `http://host:port` (`https://` with a connector): the Host of a request that has none. */
  origin: string;
  /** How connections are opened; without it, a TCP connection to the origin's host and port. */
  connect?: H1Connector;
  /**
   * Connections at most, idle or busy; a request that finds none free waits for one, first come first served.
   * Without it there is no limit and no request ever waits.
   */
  connections?: number;
  /** No TCP connection within this long: UND_ERR_CONNECT_TIMEOUT (not with `connect`: the connector's own). */
  connectTimeoutMs?: number;
  /** An idle connection is closed after this long, or sooner if the app's Keep-Alive header asks for less. */
  keepAliveTimeoutMs?: number;
  /** Most bytes a response head may take. */
  maxHeaderSize?: number;
}

/** An error with the code classifyForwardError maps to a reason, as undici's errors carry. */
class ClientError extends Error {
  readonly code: string;

  constructor(code: string, message: string) {
    super(message);
    this.code = code;
  }
}

const DEFAULT_CONNECT_TIMEOUT_MS = 10_000;
/** undici's default: under Node's own server keepAliveTimeout (5 s), so the client gives up first. */
const DEFAULT_KEEP_ALIVE_TIMEOUT_MS = 4_000;
/** The margin kept under the idle time an app announces (`Keep-Alive: timeout=N`), as undici keeps one. */
const KEEP_ALIVE_MARGIN_MS = 2_000;
const DEFAULT_MAX_HEADER_SIZE = 16 * 1024;
/** Methods whose request is expected to carry a body: without one, they say `content-length: 0`. */
const BODY_METHODS = new Set(["POST", "PUT", "PATCH", "QUERY"]);
/** A name or value that could end a line early or smuggle a second request. */
const UNSAFE = /[\r\n\0]/;
const LAST_CHUNK = "0\r\n\r\n";

/** Errors an exchange failed with before any byte of its request was written to a connection. */
const UNSENT = new WeakSet<Error>();

/**
 * Whether `error` ended a request before any of it was written: its connection could not be opened, or closed
 * while the request was waiting for it or for its body's first bytes; the request may be sent elsewhere whole.
 * An error that is not H1Client's own keeps its code and message: this is told beside them, not in them.
 */
export function requestUnsent(error: Error): boolean {
  return UNSENT.has(error);
}

export class H1Client {
  readonly #host: string;
  readonly #port: number;
  readonly #authority: string;
  readonly #connectTimeoutMs: number;
  readonly #keepAliveTimeoutMs: number;
  readonly #maxHeaderSize: number;
  readonly #connect: H1Connector | undefined;
  readonly #connections: number;
  /** Connections with no request, newest last: the warmest is reused first. */
  readonly #idle: Connection[] = [];
  /** Connections with a request, or opening for one. */
  readonly #busy = new Set<Connection>();
  /** Requests waiting for a connection (only with `connections`), first in line first. */
  readonly #queue: Exchange[] = [];
  #pumping = false;
  #closed = false;
  /** Each close() waiting for the requests in flight. */
  readonly #whenIdle: Array<() => void> = [];

  constructor(options: H1ClientOptions) {
    const url = new URL(options.origin);
    this.#host = url.hostname.replace(/^\[(.*)\]$/, "$1");
    this.#port = Number(url.port || 80);
    this.#authority = url.host;
    this.#connectTimeoutMs = options.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
    this.#keepAliveTimeoutMs = options.keepAliveTimeoutMs ?? DEFAULT_KEEP_ALIVE_TIMEOUT_MS;
    this.#maxHeaderSize = options.maxHeaderSize ?? DEFAULT_MAX_HEADER_SIZE;
    this.#connect = options.connect;
    this.#connections = options.connections ?? Number.POSITIVE_INFINITY;
    if (!(this.#connections >= 1)) throw new RangeError("connections must be at least 1");
  }

  /**
   * Open connections (opening ones too), requests waiting for a connection, requests on one: the shape of
   * undici's Pool stats.
   */
  get stats(): { connected: number; pending: number; running: number } {
    return {
      connected: this.#idle.length + this.#busy.size,
      pending: this.#queue.length,
      running: this.#busy.size,
    };
  }

  dispatch(options: Dispatcher.DispatchOptions, handler: StreamHandler): boolean {
    const exchange = new Exchange(options, handler);
    if (this.#closed) {
      exchange.start();
      exchange.fail(new ClientError("UND_ERR_CLOSED", "the client is closed"));
      return true;
    }
    let head: string;
    try {
      head = requestHead(options, this.#authority);
    } catch (error) {
      exchange.start();
      exchange.fail(error as Error);
      return true;
    }
    exchange.head = head;
    // The handler may abort at once (its client is already gone): then no connection is taken, or opened.
    exchange.start();
    if (exchange.ended) return true;
    if (this.#closed) {
      exchange.fail(new ClientError("UND_ERR_CLOSED", "the client is closed"));
      return true;
    }
    if (this.#queue.length > 0 || !this.#take(exchange)) this.#wait(exchange);
    return true;
  }

  /**
   * Waits for the requests in flight and those waiting, then closes every connection; later requests fail.
   */
  async close(): Promise<void> {
    this.#closed = true;
    for (const connection of this.#idle.splice(0)) connection.destroy();
    if (this.#busy.size > 0 || this.#queue.length > 0) {
      await new Promise<void>((resolve) => this.#whenIdle.push(resolve));
    }
  }

  /** Ends every connection now; requests in flight and those waiting fail. */
  async destroy(): Promise<void> {
    this.#closed = true;
    const waiting = this.#queue.splice(0);
    if (waiting.length > 0) {
      const error = unsent(new ClientError("UND_ERR_DESTROYED", "the client was destroyed"));
      for (const exchange of waiting) exchange.fail(error);
    }
    for (const connection of this.#idle.splice(0)) connection.destroy();
    for (const connection of [...this.#busy]) {
      connection.destroy(new ClientError("UND_ERR_DESTROYED", "the client was destroyed"));
    }
    this.#settle();
  }

  /** Runs `exchange` on an idle connection, or a new one if the limit allows; false when there is none. */
  #take(exchange: Exchange): boolean {
    let connection = this.#idle.pop();
    while (connection && !connection.usable) {
      connection.destroy();
      connection = this.#idle.pop();
    }
    if (connection) {
      this.#busy.add(connection);
      connection.run(exchange);
      return true;
    }
    if (this.#busy.size + this.#idle.length >= this.#connections) return false;
    connection = new Connection(this, this.#maxHeaderSize);
    this.#busy.add(connection);
    connection.run(exchange);
    if (this.#connect) connection.attach(this.#connect);
    else connection.dial(this.#host, this.#port, this.#connectTimeoutMs);
    return true;
  }

  /** Every connection is taken: `exchange` waits in line (at its front: it was first already); an abort takes it out. */
  #wait(exchange: Exchange, front = false): void {
    if (front) this.#queue.unshift(exchange);
    else this.#queue.push(exchange);
    exchange.dequeue = () => {
      const at = this.#queue.indexOf(exchange);
      if (at !== -1) this.#queue.splice(at, 1);
      this.#settle();
    };
  }

  /** The next waiting request, taken out of line. */
  #next(): Exchange | undefined {
    const exchange = this.#queue.shift();
    if (exchange) exchange.dequeue = undefined;
    return exchange;
  }

  /**
   * Requests waiting get the connections there are now (one idle, or room for one). Not re-entered: a connection that
   * fails as it is taken (a connector that answers at once) calls forget() from within, and this loop goes on.
   */
  #pump(): void {
    if (this.#pumping) return;
    this.#pumping = true;
    try {
      while (this.#queue.length > 0) {
        const exchange = this.#next()!;
        if (!this.#take(exchange)) {
          this.#wait(exchange, true);
          return;
        }
      }
    } finally {
      this.#pumping = false;
    }
  }

  /** close() calls resolve once nothing is in flight or waiting. */
  #settle(): void {
    if (this.#busy.size === 0 && this.#queue.length === 0) {
      for (const resolve of this.#whenIdle.splice(0)) resolve();
    }
  }

  /**
   * A connection finished its request: kept if it can be (for a request waiting, closed or not), else closed.
   * A request waiting takes it once the read that ended the response is over: bytes after the response, in that
   * same read, close it, and must not cost the next request anything.
   */
  release(connection: Connection, reusable: boolean, idleMs: number | undefined): void {
    this.#busy.delete(connection);
    const waiting = this.#queue.length > 0;
    if (reusable && (waiting || !this.#closed)) {
      connection.idle(Math.min(this.#keepAliveTimeoutMs, idleMs ?? Number.POSITIVE_INFINITY));
      this.#idle.push(connection);
      if (waiting) queueMicrotask(this.#pumpLater);
    } else connection.destroy();
    this.#settle();
  }

  readonly #pumpLater = (): void => {
    this.#pump();
    // Kept for requests waiting after close(): none is left to take them.
    if (this.#closed && this.#queue.length === 0) {
      for (const connection of this.#idle.splice(0)) connection.destroy();
    }
  };

  /** A connection closed: forgotten wherever it was, and its place goes to a request waiting. */
  forget(connection: Connection): void {
    this.#busy.delete(connection);
    const at = this.#idle.indexOf(connection);
    if (at !== -1) this.#idle.splice(at, 1);
    this.#pump();
    this.#settle();
  }
}

/** `error`, marked as having ended a request none of which was written. */
function unsent(error: Error): Error {
  UNSENT.add(error);
  return error;
}

/**
 * The request line and fields as one latin1 string. Host is added when the request has none (the Host of the
 * origin); a body without Content-Length goes chunked; a POST, PUT or PATCH without a body says Content-Length: 0.
 */
function requestHead(options: Dispatcher.DispatchOptions, authority: string): string {
  const method = options.method;
  const path = options.path;
  if (UNSAFE.test(method) || UNSAFE.test(path) || path.includes(" ")) {
    throw new ClientError("UND_ERR_INVALID_ARG", "invalid request line");
  }
  let head = `${method} ${path} HTTP/1.1\r\n`;
  let host = false;
  let length = false;
  const headers = options.headers as string[] | null | undefined;
  if (headers) {
    for (let i = 0; i < headers.length; i += 2) {
      const name = headers[i]!;
      const value = headers[i + 1]!;
      if (UNSAFE.test(name) || UNSAFE.test(value) || name.includes(":")) {
        throw new ClientError("UND_ERR_INVALID_ARG", `invalid header ${JSON.stringify(name.slice(0, 100))}`);
      }
      const lower = name.length === 4 || name.length === 14 ? name.toLowerCase() : "";
      if (lower === "host") host = true;
      else if (lower === "content-length") length = true;
      head += `${name}: ${value}\r\n`;
    }
  }
  if (!host) head += `host: ${authority}\r\n`;
  if (options.body) {
    if (!length) head += "transfer-encoding: chunked\r\n";
  } else if (!length && BODY_METHODS.has(method)) head += "content-length: 0\r\n";
  return `${head}\r\n`;
}

/** The declared Content-Length of a request's fields, when they carry one. */
function declaredLength(headers: string[] | null | undefined): number | undefined {
  if (!headers) return undefined;
  for (let i = 0; i < headers.length; i += 2) {
    const name = headers[i]!;
    if (name.length === 14 && name.toLowerCase() === "content-length") return Number(headers[i + 1]);
  }
  return undefined;
}

/** One request and its answer, as the handler sees them; also the controller the handler pauses and aborts with. */
class Exchange extends ExchangeController {
  readonly options: Dispatcher.DispatchOptions;
  readonly handler: StreamHandler;
  head = "";
  connection: Connection | undefined;
  /** Takes the exchange out of the client's line while it waits there. */
  dequeue: (() => void) | undefined;
  /** Some of the request was written to a connection: it may have reached the server. */
  written = false;

  constructor(options: Dispatcher.DispatchOptions, handler: StreamHandler) {
    super();
    this.options = options;
    this.handler = handler;
  }

  start(): void {
    this.handler.onRequestStart?.(this, {});
  }

  protected override onAbort(reason: Error): void {
    if (this.connection) this.connection.destroy(reason);
    else {
      this.dequeue?.();
      this.dequeue = undefined;
      this.fail(reason);
    }
  }

  // Once the response is over, the connection is no longer this exchange's to pause (it may carry the next).
  protected override onPause(): void {
    if (!this.ended) this.connection?.pause();
  }

  protected override onResume(): void {
    if (!this.ended) this.connection?.resume();
  }

  /** Reported once: the exchange is over. */
  fail(error: Error): void {
    if (!this.markEnded()) return;
    if (!this.written) unsent(error);
    this.handler.onResponseError?.(this, error);
  }

  end(trailers: ResponseHeaders | undefined): void {
    if (!this.markEnded()) return;
    this.handler.onResponseEnd?.(this, (trailers ?? {}) as Record<string, string | string[]>);
  }
}

/** One connection to the server, carrying one exchange at a time. */
class Connection {
  readonly #client: H1Client;
  /** Undefined while a connector is still opening it. */
  #socket: Duplex | undefined;
  readonly #parser: ResponseParser;
  #exchange: Exchange | undefined;
  #connected = false;
  #closed = false;
  /** The error the connection was ended with, reported to the exchange in flight. */
  #error: Error | undefined;
  /** The connect within its timeout, then each response head within headersTimeout. */
  readonly #headTimer = new Timer();
  /** Then each gap in the response body within bodyTimeout (a Timer each: their durations differ). */
  readonly #bodyTimer = new Timer();
  /** An idle connection's: closed once it has idled for as long as the app keeps connections. */
  readonly #idleTimer = new Timer();
  /** Bytes read while the exchange was paused, to parse on resume. */
  #held: Buffer | undefined;
  /** The request body is still being sent: the connection cannot be reused until it is all out. */
  #sending = false;
  /** The response is complete: only the request body may still be going out. */
  #answered = false;
  /** What the app's Keep-Alive header allows for idling, in ms. */
  #idleMs: number | undefined;
  #body: Readable | undefined;
  /** Body bytes still owed by the request's Content-Length, when it has one. */
  #bodyDue: number | undefined;
  #headersTimeout = 0;
  #bodyTimeout = 0;
  /** The request head waits for the body's first bytes. */
  #headPending = false;
  /** The final head of the exchange in flight has arrived: the body timer runs, not the head's. */
  #headReceived = false;

  constructor(client: H1Client, maxHeaderSize: number) {
    this.#client = client;
    this.#parser = new ResponseParser(this, { maxHeaderSize });
  }

  /** Opens a TCP connection of its own. */
  dial(host: string, port: number, connectTimeoutMs: number): void {
    const socket = net.connect({ host, port, noDelay: true, keepAlive: true, keepAliveInitialDelay: 60_000 });
    this.#socket = socket;
    this.#headTimer.arm(connectTimeoutMs, this.#onConnectTimeout);
    socket.once("connect", this.#onConnect);
    this.#listen(socket);
  }

  /** Takes the socket the connector opens (or the error it fails with), maybe before this returns. */
  attach(connect: H1Connector): void {
    connect((error, socket) => {
      if (this.#closed || error || !socket || socket.destroyed) {
        socket?.destroy();
        if (!this.#closed) {
          this.#error ??= error ?? new ClientError("UND_ERR_SOCKET", "the connection closed as it opened");
          this.#finishClose();
        }
        return;
      }
      this.#socket = socket;
      this.#listen(socket);
      this.#onConnect();
    });
  }

  #listen(socket: Duplex): void {
    socket.on("data", this.#onData);
    socket.on("end", this.#onEnd);
    socket.on("error", this.#onError);
    socket.on("close", this.#onClose);
  }

  /** Whether an idle connection can take a request: still open, nothing unasked arrived. */
  get usable(): boolean {
    const socket = this.#socket;
    return !this.#closed && socket !== undefined && !socket.destroyed && socket.readable;
  }

  run(exchange: Exchange): void {
    this.#headTimer.stop();
    this.#bodyTimer.stop();
    this.#idleTimer.stop();
    this.#exchange = exchange;
    this.#answered = false;
    this.#headPending = false;
    this.#headReceived = false;
    this.#idleMs = undefined;
    exchange.connection = this;
    if (this.#connected) this.#send();
  }

  idle(ms: number): void {
    this.#exchange = undefined;
    // A pause the last handler made, in its last callbacks, ended with its response: an idle connection reads,
    // to see the app close it, and a paused one would leave the next request's answer unread.
    this.#socket!.resume();
    this.#headTimer.stop();
    this.#bodyTimer.stop();
    this.#idleTimer.arm(ms, this.#onIdleTimeout, false);
  }

  /** The handler cannot take more: stop reading. A stalled client is not a stalled app: the body timer stops too. */
  pause(): void {
    this.#socket?.pause();
    this.#parser.pause();
    if (this.#headReceived) this.#bodyTimer.stop();
  }

  resume(): void {
    if (this.#headReceived && this.#exchange && !this.#answered) {
      this.#armBody();
    }
    // Resumed from the callback that paused: the parser goes on with the bytes it is in the middle of.
    this.#parser.resume();
    const held = this.#held;
    this.#held = undefined;
    if (held) this.#onData(held);
    if (!this.#exchange?.paused) this.#socket?.resume();
  }

  destroy(error?: Error): void {
    if (error && !this.#error) this.#error = error;
    this.#socket?.destroy();
    this.#finishClose();
  }

  readonly #onConnect = (): void => {
    this.#connected = true;
    this.#headTimer.stop();
    if (this.#exchange && !this.#exchange.ended) this.#send();
  };

  readonly #onConnectTimeout = (): void => {
    this.destroy(new ClientError("UND_ERR_CONNECT_TIMEOUT", "connecting to the app timed out"));
  };

  readonly #onIdleTimeout = (): void => {
    this.destroy();
  };

  #send(): void {
    const exchange = this.#exchange!;
    const { options } = exchange;
    this.#headersTimeout = options.headersTimeout ?? 300_000;
    this.#bodyTimeout = options.bodyTimeout ?? 300_000;
    this.#parser.expect(options.method === "HEAD");
    this.#armHeaders();
    const body = options.body as Readable | null | undefined;
    if (!body) {
      exchange.written = true;
      this.#socket!.write(exchange.head, "latin1");
      return;
    }
    // The head goes out with the body's first bytes (or its end): a request whose body fails before any of it
    // arrives (a client's framing refused by its own parser) never reaches the app at all.
    this.#headPending = true;
    this.#body = body;
    this.#sending = true;
    this.#bodyDue = declaredLength(options.headers as string[] | null | undefined);
    body.on("data", this.#onBodyData);
    body.once("end", this.#onBodyEnd);
    body.once("error", this.#onBodyError);
    // A body let go unread by an earlier try, elsewhere, was paused there (see #finishClose).
    body.resume();
    this.#socket!.on("drain", this.#onDrain);
  }

  /** Writes the request head if it has not gone out yet. */
  #writeHead(): void {
    if (!this.#headPending) return;
    this.#headPending = false;
    const exchange = this.#exchange!;
    exchange.written = true;
    this.#socket!.write(exchange.head, "latin1");
  }

  readonly #onBodyData = (chunk: Buffer): void => {
    if (this.#bodyDue !== undefined) {
      this.#bodyDue -= chunk.length;
      if (this.#bodyDue < 0) {
        this.destroy(
          new ClientError(
            "UND_ERR_REQ_CONTENT_LENGTH_MISMATCH",
            "request body longer than its Content-Length",
          ),
        );
        return;
      }
    }
    if (chunk.length === 0) return;
    this.#socket!.cork();
    this.#writeHead();
    let flowing: boolean;
    if (this.#bodyDue === undefined) {
      this.#socket!.write(`${chunk.length.toString(16)}\r\n`, "latin1");
      this.#socket!.write(chunk);
      flowing = this.#socket!.write("\r\n", "latin1");
    } else flowing = this.#socket!.write(chunk);
    this.#socket!.uncork();
    if (!flowing) {
      // Answered, and no longer reading what is left of the upload: the connection is not worth waiting for.
      if (this.#answered) {
        this.destroy();
        return;
      }
      this.#body?.pause();
      if (!this.#headReceived) this.#headTimer.refresh();
    }
  };

  readonly #onDrain = (): void => {
    this.#body?.resume();
  };

  readonly #onBodyEnd = (): void => {
    if (this.#bodyDue !== undefined && this.#bodyDue > 0) {
      this.destroy(
        new ClientError(
          "UND_ERR_REQ_CONTENT_LENGTH_MISMATCH",
          "request body shorter than its Content-Length",
        ),
      );
      return;
    }
    this.#socket!.cork();
    this.#writeHead();
    if (this.#bodyDue === undefined) this.#socket!.write(LAST_CHUNK, "latin1");
    this.#socket!.uncork();
    this.#stopSending();
    if (!this.#headReceived) this.#headTimer.refresh();
    if (this.#answered) this.#done();
  };

  readonly #onBodyError = (error: Error): void => {
    this.destroy(error);
  };

  #stopSending(): void {
    const body = this.#body;
    if (!body) return;
    this.#body = undefined;
    this.#sending = false;
    body.off("data", this.#onBodyData);
    body.off("end", this.#onBodyEnd);
    body.off("error", this.#onBodyError);
    this.#socket?.off("drain", this.#onDrain);
  }

  /**
   * The head's timer. While the request body is still going out and the app takes it, the wait for the answer has
   * not begun: it counts from the body's end, or from the app's last refusal to take more (as undici counts it).
   */
  #armHeaders(): void {
    if (this.#headersTimeout > 0) this.#headTimer.arm(this.#headersTimeout, this.#onHeadersTimeout);
    else this.#headTimer.stop();
  }

  readonly #onHeadersTimeout = (): void => {
    if (this.#sending && !this.#socket!.writableNeedDrain) {
      this.#armHeaders();
      return;
    }
    this.destroy(new ClientError("UND_ERR_HEADERS_TIMEOUT", "no response head in time"));
  };

  /** The response head is in: each gap in its body must end within bodyTimeout. */
  #armBody(): void {
    if (this.#bodyTimeout > 0) this.#bodyTimer.arm(this.#bodyTimeout, this.#onBodyTimeout);
    else this.#bodyTimer.stop();
  }

  readonly #onBodyTimeout = (): void => {
    this.destroy(new ClientError("UND_ERR_BODY_TIMEOUT", "the response body stalled"));
  };

  readonly #onData = (data: Buffer): void => {
    const exchange = this.#exchange;
    if (!exchange || exchange.ended) {
      // Nothing was asked: an idle connection that speaks unasked is not reused.
      this.destroy();
      return;
    }
    if (exchange.paused) {
      this.#held = this.#held ? Buffer.concat([this.#held, data]) : data;
      this.#socket!.pause();
      return;
    }
    let used: number;
    try {
      used = this.#parser.execute(data);
    } catch (error) {
      this.destroy(error as Error);
      return;
    }
    if (used < data.length && !this.#closed) {
      if (this.#exchange === exchange && !exchange.ended) {
        // Paused from a callback: the rest waits for resume.
        this.#held = data.subarray(used);
        this.#socket!.pause();
      } else this.destroy();
    }
  };

  // ResponseEvents: the parser reports to the connection, which reports to the exchange's handler.

  onInterim(): void {
    this.#armHeaders();
  }

  onHead(statusCode: number, statusMessage: string, headers: ResponseHeaders, bodyless: boolean): void {
    const exchange = this.#exchange;
    // The handler aborted from an earlier callback of this same read: the connection is closed, stop parsing.
    if (!exchange) {
      this.#parser.pause();
      return;
    }
    this.#headReceived = true;
    this.#headTimer.stop();
    this.#armBody();
    this.#idleMs = keepAliveHint(headers["keep-alive"]);
    // Only a chunked body can end with trailers; the parser has refused any Transfer-Encoding but chunked.
    const trailers = !bodyless && headers["transfer-encoding"] !== undefined;
    exchange.handler.onResponseStart?.(exchange, statusCode, headers, statusMessage, bodyless, trailers);
    if (exchange.paused) this.#parser.pause();
  }

  onBody(chunk: Buffer): void {
    const exchange = this.#exchange;
    // The handler aborted from an earlier callback of this same read: the connection is closed, stop parsing.
    if (!exchange) {
      this.#parser.pause();
      return;
    }
    this.#bodyTimer.refresh();
    exchange.handler.onResponseData?.(exchange, chunk);
    if (exchange.paused) this.#parser.pause();
  }

  onEnd(trailers: ResponseHeaders | undefined): void {
    this.#bodyTimer.stop();
    this.#answered = true;
    const exchange = this.#exchange;
    // The handler aborted from an earlier callback of this same read: the connection is closed, stop parsing.
    if (!exchange) {
      this.#parser.pause();
      return;
    }
    // Reported before the connection is released: the handler may dispatch its next request at once.
    exchange.end(trailers);
    this.#parser.pause();
    if (!this.#sending) this.#done();
    // Answered while the upload is stuck behind an app that no longer reads it (undici closes at once here).
    else if (this.#socket!.writableNeedDrain) this.destroy();
  }

  /** The exchange is over on both sides: the connection goes back to the pool, or closes. */
  #done(): void {
    if (this.#closed) return;
    const reusable = this.#parser.keepAlive && this.#held === undefined && this.usable;
    this.#exchange = undefined;
    this.#client.release(this, reusable, this.#idleMs);
  }

  readonly #onEnd = (): void => {
    // The app ended its side: that completes a body read until close, and breaks anything else.
    const exchange = this.#exchange;
    if (exchange && !exchange.ended) {
      try {
        this.#parser.finish();
      } catch {
        this.#error ??= new ClientError("UND_ERR_SOCKET", "other side closed");
      }
    }
    this.destroy();
  };

  readonly #onError = (error: Error): void => {
    this.#error ??= error;
  };

  readonly #onClose = (): void => {
    this.#finishClose();
  };

  #finishClose(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#headTimer.close();
    this.#bodyTimer.close();
    this.#idleTimer.close();
    const body = this.#body;
    this.#stopSending();
    const exchange = this.#exchange;
    // None of the request went out: its body, unread, may be sent elsewhere; flowing with no reader, it would be lost.
    if (body && exchange && !exchange.written) body.pause();
    this.#exchange = undefined;
    this.#client.forget(this);
    if (exchange && !exchange.ended) {
      exchange.fail(this.#error ?? new ClientError("UND_ERR_SOCKET", "other side closed"));
    }
  }
}

/** `Keep-Alive: timeout=N` from the app: how long it keeps an idle connection, less a margin; undefined if unsaid. */
function keepAliveHint(value: string | string[] | undefined): number | undefined {
  if (value === undefined) return undefined;
  const text = Array.isArray(value) ? value.join(",") : value;
  // An app says the same thing on every response: read it once.
  if (text === lastHint.text) return lastHint.ms;
  const match = /(?:^|[,\s])timeout\s*=\s*(\d+)/i.exec(text);
  const ms = match ? Math.max(Number(match[1]) * 1000 - KEEP_ALIVE_MARGIN_MS, 0) : undefined;
  lastHint = { text, ms };
  return ms;
}

let lastHint: { text: string; ms: number | undefined } = { text: "", ms: undefined };
