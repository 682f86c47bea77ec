// The client side of one request, whatever protocol carried it: what the per-request pipeline reads and answers.
//
// Envoy keeps codecs at the edges and one filter chain for every protocol; so does mtlsd. An HTTP/1.1 request
// (node:http's IncomingMessage and ServerResponse) and an HTTP/2 stream (node:http2's ServerHttp2Stream) are
// both wrapped as a Downstream, and the handlers, the forwarding engine and the error responses see only that.
import type { IncomingMessage, ServerResponse } from "node:http";
import http2 from "node:http2";
import type { Socket } from "node:net";
import { Readable } from "node:stream";
import { setTimeout } from "node:timers/promises";
import type { ResponseHeaders } from "./headers.ts";

/** The protocol a request arrived on, as the `protocol` log field names it (upgrades are logged as their token). */
export type Protocol = "http/1.1" | "h2";

const {
  HTTP2_HEADER_STATUS,
  HTTP2_HEADER_METHOD,
  HTTP2_HEADER_PATH,
  HTTP2_HEADER_AUTHORITY,
  HTTP2_HEADER_SCHEME,
} = http2.constants;

/**
 * Node resets a stream with CANCEL when it is destroyed with its own AbortError, and with INTERNAL_ERROR for any
 * other error. Its class is not exported; an aborted timer rejects with one, so take its constructor from there.
 */
const AbortError: new (message?: string) => Error = await setTimeout(0, undefined, {
  signal: AbortSignal.abort(),
}).then(
  () => Error,
  (error: Error) => error.constructor as new (message?: string) => Error,
);

/**
 * Resets an HTTP/2 stream at once: RST_STREAM with CANCEL (the answer is no longer wanted) or INTERNAL_ERROR
 * (it cannot be completed). Never `stream.close()`: that ends the stream's own side first, so a body cut short
 * would reach the peer as complete.
 */
export function resetStream(stream: http2.Http2Stream, cancelled: boolean): void {
  if (stream.destroyed) return;
  stream.destroy(cancelled ? new AbortError("cancelled") : new Error("the stream could not be completed"));
}

/** The part of a response-writing API the forwarding engine and the sidecar's own errors use. */
export interface Downstream {
  readonly protocol: Protocol;
  readonly method: string;
  /** The request-target: origin-form path and query, or (HTTP/1.1 proxy requests) an absolute URL. */
  readonly target: string;
  /** Request headers as a flat [name, value, …] list, without pseudo-headers; HTTP/2's `:authority` as `host`. */
  readonly rawHeaders: readonly string[];
  /**
   * Whether the request must carry a Host (HTTP/2: `:authority` or `host`). RFC 9112 §3.2 requires one of every
   * HTTP/1.1 request only: an HTTP/1.0 request may come without, as it did before Host existed.
   */
  readonly hostRequired: boolean;
  /** Whether the request is gRPC (`content-type: application/grpc…`): errors are then rendered as gRPC statuses. */
  readonly grpc: boolean;
  /** Whether a body follows, when the protocol's framing says so (HTTP/2); undefined: the headers tell (HTTP/1.1). */
  readonly hasBody: boolean | undefined;
  readonly headersSent: boolean;
  /** The client went away, or the response was cut. */
  readonly destroyed: boolean;
  /** The request body as a stream of its own: destroying it never cuts the response. */
  body(): Readable;
  /** A 100 Continue, for a client that sent `Expect: 100-continue` and waits for it. */
  writeContinue(): void;
  /**
   * The response head. `endStream`: the head is the whole response (HTTP/2 Trailers-Only, a HEAD answer).
   * `trailers: false`: none can follow (the upstream's framing rules them out), so HTTP/2 ends the stream with
   * the last DATA frame instead of an empty trailing HEADERS frame.
   */
  writeHead(
    status: number,
    headers: readonly string[],
    statusMessage?: string,
    endStream?: boolean,
    trailers?: boolean,
  ): void;
  /** False when the client is not keeping up: wait for `onDrain`. */
  write(chunk: Buffer): boolean;
  onDrain(listener: () => void): void;
  end(trailers?: ResponseHeaders): void;
  /** Ends the response abnormally: HTTP/1.1 closes the connection, HTTP/2 resets only this stream. */
  abort(cancelled?: boolean): void;
  /** Asks the client to close the connection after this response (HTTP/1.1 `Connection: close`; no-op on h2). */
  closeAfter(): void;
  onClose(listener: () => void): void;
  offClose(listener: () => void): void;
}

const GRPC_CONTENT_TYPE = /^application\/grpc(?:$|[+;])/i;

/** gRPC, as the gRPC HTTP/2 protocol names its content types (`application/grpc`, `+proto`, `+json`, …). */
export function isGrpcContentType(value: string | undefined): boolean {
  return value !== undefined && GRPC_CONTENT_TYPE.test(value);
}

/** An HTTP/1.1 exchange: node:http's request and response. */
export class H1Downstream implements Downstream {
  readonly protocol = "http/1.1" as const;
  readonly hasBody = undefined;
  readonly req: IncomingMessage;
  readonly res: ServerResponse;
  #grpc: boolean | undefined;

  constructor(req: IncomingMessage, res: ServerResponse) {
    this.req = req;
    this.res = res;
  }

  /** Read from the raw headers, once: `req.headers` would build an object per request just for this. */
  get grpc(): boolean {
    this.#grpc ??= isGrpcContentType(fieldValue(this.req.rawHeaders, "content-type"));
    return this.#grpc;
  }

  get method(): string {
    return this.req.method!;
  }

  get target(): string {
    return this.req.url!;
  }

  get rawHeaders(): readonly string[] {
    return this.req.rawHeaders;
  }

  get hostRequired(): boolean {
    return hostRequiredOf(this.req);
  }

  get headersSent(): boolean {
    return this.res.headersSent;
  }

  get destroyed(): boolean {
    return this.res.destroyed;
  }

  body(): Readable {
    return this.req;
  }

  writeContinue(): void {
    this.res.writeContinue();
  }

  writeHead(status: number, headers: readonly string[], statusMessage?: string): void {
    if (statusMessage) this.res.writeHead(status, statusMessage, headers as string[]);
    else this.res.writeHead(status, headers as string[]);
  }

  write(chunk: Buffer): boolean {
    return this.res.write(chunk);
  }

  onDrain(listener: () => void): void {
    this.res.once("drain", listener);
  }

  end(trailers?: ResponseHeaders): void {
    // Node sends trailers only on a chunked response, and drops them on one framed by Content-Length.
    // A client that closed after the whole body (Connection: close) is owed nothing more.
    if (this.res.destroyed) return;
    if (trailers && hasFields(trailers)) this.res.addTrailers(definedFields(trailers));
    this.res.end();
  }

  abort(): void {
    this.res.destroy();
  }

  closeAfter(): void {
    if (!this.res.headersSent) this.res.setHeader("connection", "close");
    if (bodyUnread(this.req)) lingerAfterResponse(this.req.socket);
  }

  onClose(listener: () => void): void {
    this.res.once("close", listener);
  }

  offClose(listener: () => void): void {
    this.res.removeListener("close", listener);
  }
}

/** Whether an HTTP/1.x request must carry a Host: all but HTTP/1.0 ones (RFC 9112 §3.2). */
export function hostRequiredOf(req: IncomingMessage): boolean {
  return req.httpVersionMajor !== 1 || req.httpVersionMinor !== 0;
}

/** Whether the request announced a body that has not all arrived yet (Node marks even a GET complete only later). */
function bodyUnread(req: IncomingMessage): boolean {
  if (req.complete) return false;
  const length = req.headers["content-length"];
  return req.headers["transfer-encoding"] !== undefined || (length !== undefined && length !== "0");
}

/** How long a closing connection still reads (and drops) a request body nobody will use, at most. */
const LINGER_MS = 2000;

/**
 * Node closes a `Connection: close` response's socket as soon as the response is written. A client still sending
 * the body of a refused request then meets a reset, which can destroy our response before it is read (curl:
 * "Send failure: Broken pipe" instead of the 403). As nginx's lingering close does, the socket instead only
 * ends its own side and drops what still arrives until the client closes, or LINGER_MS pass.
 */
function lingerAfterResponse(socket: Socket): void {
  socket.destroySoon = () => {
    socket.end();
    socket.setTimeout(LINGER_MS, () => socket.destroy());
  };
}

/** An HTTP/2 stream; its pseudo-headers read as a request line and Host. */
export class H2Downstream implements Downstream {
  readonly protocol = "h2" as const;
  readonly stream: http2.ServerHttp2Stream;
  readonly method: string;
  readonly target: string;
  readonly rawHeaders: readonly string[];
  readonly hostRequired = true;
  readonly grpc: boolean;
  readonly hasBody: boolean;
  #trailers: ResponseHeaders | undefined;
  #waitingForTrailers = false;
  #body: Readable | undefined;

  /** `headers` are Node's parsed request headers, `raw` the flat list with pseudo-headers first. */
  constructor(stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders, raw: readonly string[]) {
    this.stream = stream;
    this.method = headers[HTTP2_HEADER_METHOD] as string;
    this.target = (headers[HTTP2_HEADER_PATH] as string | undefined) ?? "";
    this.rawHeaders = requestFields(raw, headers[HTTP2_HEADER_AUTHORITY] as string | undefined);
    this.grpc = isGrpcContentType(headers["content-type"]);
    this.hasBody = !stream.endAfterHeaders && headers["content-length"] !== "0";
    stream.on("wantTrailers", this.#sendTrailers);
  }

  get headersSent(): boolean {
    return this.stream.headersSent;
  }

  get destroyed(): boolean {
    return this.stream.destroyed;
  }

  /**
   * The stream's DATA as a Readable of its own. A forward that fails destroys its request body: on the stream
   * itself, that would reset it before the client could read why.
   */
  body(): Readable {
    if (this.#body) return this.#body;
    const stream = this.stream;
    const body = new Readable({
      read() {
        stream.resume();
      },
    });
    // Whoever reads the body sees its errors; a forward that failed before reading it must not crash on them.
    body.on("error", () => {});
    stream.on("data", (chunk: Buffer) => {
      if (!body.push(chunk)) stream.pause();
    });
    // A reset stream ends its readable side too: that end is a cut, never the end of the body.
    const cut = () =>
      body.destroy(Object.assign(new Error("the client reset the stream"), { code: "ECONNRESET" }));
    stream.once("end", () => {
      if (stream.aborted || (stream.rstCode ?? 0) !== 0) cut();
      else body.push(null);
    });
    stream.once("aborted", cut);
    stream.once("close", () => {
      if (!body.readableEnded) cut();
    });
    this.#body = body;
    return body;
  }

  writeContinue(): void {
    if (!this.stream.headersSent && !this.stream.destroyed)
      this.stream.additionalHeaders({ [HTTP2_HEADER_STATUS]: 100 });
  }

  writeHead(
    status: number,
    headers: readonly string[],
    _statusMessage?: string,
    endStream = false,
    trailers = true,
  ): void {
    if (this.stream.destroyed) return;
    const fields = fieldsObject(headers);
    fields[HTTP2_HEADER_STATUS] = status;
    // Node ends the stream with the head by itself for HEAD requests and 204/205/304 responses.
    const waitForTrailers = !endStream && trailers;
    this.#waitingForTrailers = waitForTrailers;
    this.stream.respond(fields, { endStream, waitForTrailers });
  }

  write(chunk: Buffer): boolean {
    if (this.stream.destroyed || this.stream.writableEnded) return true;
    return this.stream.write(chunk);
  }

  onDrain(listener: () => void): void {
    this.stream.once("drain", listener);
  }

  end(trailers?: ResponseHeaders): void {
    if (this.stream.destroyed) return;
    if (!this.stream.headersSent) this.writeHead(200, []);
    this.#trailers = trailers;
    if (!this.stream.writableEnded) this.stream.end();
  }

  abort(cancelled = false): void {
    resetStream(this.stream, cancelled);
  }

  closeAfter(): void {}

  onClose(listener: () => void): void {
    this.stream.once("close", listener);
  }

  offClose(listener: () => void): void {
    this.stream.removeListener("close", listener);
  }

  readonly #sendTrailers = (): void => {
    if (!this.#waitingForTrailers) return;
    const trailers = this.#trailers;
    this.stream.sendTrailers(trailers && hasFields(trailers) ? definedFields(trailers) : {});
  };
}

/**
 * The request's fields for an HTTP/1.1-shaped pipeline: pseudo-headers removed, `:authority` as `host` when
 * there is none (RFC 9113 §8.3.1), and several `cookie` fields as one (§8.2.3: an HTTP/1.1 hop needs one).
 */
function requestFields(raw: readonly string[], authority: string | undefined): string[] {
  const fields: string[] = [];
  let hasHost = false;
  let cookie: string | undefined;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!;
    if (name.charCodeAt(0) === 0x3a /* ":" */) continue;
    const value = raw[i + 1]!;
    if (name === "cookie") {
      cookie = cookie === undefined ? value : `${cookie}; ${value}`;
      continue;
    }
    if (name === "host") hasHost = true;
    fields.push(name, value);
  }
  if (!hasHost && authority !== undefined) fields.unshift("host", authority);
  if (cookie !== undefined) fields.push("cookie", cookie);
  return fields;
}

/** The first value of a field in a flat raw header list, by its lowercase name. */
function fieldValue(raw: readonly string[], lowerName: string): string | undefined {
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!;
    if (name.length === lowerName.length && name.toLowerCase() === lowerName) return raw[i + 1];
  }
  return undefined;
}

/** A flat header list as an HTTP/2 headers object: repeated names become arrays. */
export function fieldsObject(list: readonly string[]): http2.OutgoingHttpHeaders {
  const fields: http2.OutgoingHttpHeaders = {};
  for (let i = 0; i < list.length; i += 2) {
    const name = list[i]!.toLowerCase();
    const value = list[i + 1]!;
    const existing = fields[name];
    if (existing === undefined) fields[name] = value;
    else if (Array.isArray(existing)) existing.push(value);
    else fields[name] = [String(existing), value];
  }
  return fields;
}

function hasFields(fields: ResponseHeaders): boolean {
  for (const name in fields) if (fields[name] !== undefined) return true;
  return false;
}

function definedFields(fields: ResponseHeaders): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  for (const name in fields) {
    const value = fields[name];
    if (value !== undefined) out[name] = value;
  }
  return out;
}

export { HTTP2_HEADER_AUTHORITY, HTTP2_HEADER_METHOD, HTTP2_HEADER_PATH, HTTP2_HEADER_SCHEME };
