// The one request-forwarding engine: streams a client request to a dispatcher and the response back.
import type { ServerResponse } from "node:http";
import http2 from "node:http2";
import type { Dispatcher } from "undici";
import { type Downstream, H1Downstream, H2Downstream } from "./downstream.ts";
import { classifyForwardError, type ForwardFailure } from "./errors.ts";
import type { StreamHandler } from "./h2-client.ts";
import { forwardableResponseHeaders, type ResponseHeaders } from "./headers.ts";
import { type ResponseReason, sendError } from "./respond.ts";

/** What can carry a request to an upstream: an undici Pool (HTTP/1.1) or an H2Client (HTTP/2). */
export interface UpstreamDispatcher {
  dispatch(options: Dispatcher.DispatchOptions, handler: StreamHandler): boolean;
}

export interface ForwardRequest {
  dispatcher: UpstreamDispatcher;
  /** Name of the upstream for error messages ("app", "orders"). */
  upstream: string;
  method: string;
  /** Path and query exactly as the upstream must receive them. */
  path: string;
  /** Flat [name, value, ...] list, already filtered. */
  headers: string[];
  /** Whether the client request has a body (Content-Length > 0 or Transfer-Encoding, an HTTP/2 stream with DATA). */
  hasBody: boolean;
  /** No response head within this many ms: 504 upstream_timeout. */
  headersTimeout: number;
  /** Longest gap between response body chunks, in ms. */
  bodyTimeout: number;
  /** What a direction knows better than the generic rules about how an exchange failed. */
  failures?: FailureInterpreter;
}

/**
 * Lets a direction put its own meaning on failures. Outbound uses it for TLS causes and for a peer sidecar
 * that refused our certificate: that refusal arrives as an HTTP response, but for the app it is a TLS failure.
 */
export interface FailureInterpreter {
  /** A response head that is really a failure: the client gets the sidecar's error response instead. */
  response?(statusCode: number, headers: ResponseHeaders): ForwardFailure | undefined;
  /** An error the generic classification would describe less exactly. */
  error?(error: Error & { code?: string }): ForwardFailure | undefined;
}

/** How a forwarded request ended, for the request log. */
export interface ForwardOutcome {
  status: number;
  failure?: ForwardFailure;
  /** A gRPC call's status: from the upstream's trailers (or Trailers-Only head), or the one mtlsd answered. */
  grpcStatus?: string;
}

class ClientClosedError extends Error {
  readonly code = "MTLSD_CLIENT_CLOSED";
}

class ReplacedResponseError extends Error {
  readonly code = "MTLSD_RESPONSE_REPLACED";
}

/** Why a forward was ended from outside (a request timeout, a body that broke its framing). */
class ForwardFailedError extends Error {
  readonly code = "MTLSD_FORWARD_FAILED";
}

const { NGHTTP2_CANCEL } = http2.constants;
const kForwarding = Symbol("mtlsd.forwarding");
/** How long a response whose body the client already has may wait for the upstream's end of stream. */
const END_OF_STREAM_GRACE_MS = 1000;
/**
 * What a forward in progress is found by: node:http's response, the HTTP/2 stream, or the downstream itself
 * (the HTTP/1.1 fast path, which has no other object per request).
 */
type ForwardTarget = ServerResponse | http2.ServerHttp2Stream | Downstream;
type Forwarded = ForwardTarget & { [kForwarding]?: Forwarding };

function targetOf(down: Downstream): Forwarded {
  if (down instanceof H1Downstream) return down.res;
  if (down instanceof H2Downstream) return down.stream;
  return down;
}

/**
 * One in-flight forward, as an undici dispatch handler: a single object per request instead of closures,
 * with backpressure both ways (a slow client pauses the upstream; the dispatcher pulls the request body as it sends).
 */
class Forwarding implements StreamHandler {
  readonly #down: Downstream;
  readonly #upstream: string;
  readonly #done: (outcome: ForwardOutcome) => void;
  readonly #hasBody: boolean;
  readonly #failures: FailureInterpreter | undefined;
  #controller: Dispatcher.DispatchController | undefined;
  #status = 0;
  #grpcStatus: string | undefined;
  /** Set once the outcome is known, by the upstream or from outside by `fail`: later events are dropped. */
  #finished = false;
  /** Response body bytes still due by the upstream's Content-Length; undefined when it gave none. */
  #bodyDue: number | undefined;
  #lingering: NodeJS.Timeout | undefined;

  constructor(
    down: Downstream,
    upstream: string,
    hasBody: boolean,
    failures: FailureInterpreter | undefined,
    done: (outcome: ForwardOutcome) => void,
  ) {
    this.#down = down;
    this.#upstream = upstream;
    this.#hasBody = hasBody;
    this.#failures = failures;
    this.#done = done;
    down.onClose(this.#onClientClose);
    targetOf(down)[kForwarding] = this;
  }

  onRequestStart(controller: Dispatcher.DispatchController): void {
    this.#controller = controller;
    if (this.#finished) controller.abort(new ForwardFailedError("forward failed before it started"));
    else if (this.#down.destroyed) controller.abort(new ClientClosedError("client closed the connection"));
  }

  /** Ends the exchange with `failure`: the client gets it (or a cut, once a response has started). */
  fail(failure: ForwardFailure): void {
    if (this.#finished) return;
    let grpcStatus: number | undefined;
    if (this.#down.headersSent) this.#down.abort();
    else
      grpcStatus = sendError(
        this.#down,
        failure.status,
        failure.reason as ResponseReason,
        failure.message,
        true,
      );
    this.#finish({ status: wireStatus(failure.status, grpcStatus), failure, ...grpcOutcome(grpcStatus) });
    // Finished first, so the error this abort reports back to us is dropped.
    this.#controller?.abort(new ForwardFailedError(failure.message));
  }

  /** Cuts the exchange without a word to the client (a drain's deadline); `failure` is what the log says. */
  cut(failure: ForwardFailure): void {
    if (this.#finished) return;
    const status = this.#down.headersSent ? this.#status : failure.status;
    this.#down.abort();
    this.#finish({ status, failure });
    this.#controller?.abort(new ForwardFailedError(failure.message));
  }

  onResponseStart(
    controller: Dispatcher.DispatchController,
    statusCode: number,
    headers: ResponseHeaders,
    statusMessage?: string,
    endStream?: boolean,
    trailers?: boolean,
  ): void {
    // 1xx heads are informational: a 100 Continue was the sidecar's to send. After `fail`, whatever the
    // upstream still sends is dropped.
    if (statusCode < 200 || this.#finished) return;
    const failure = this.#failures?.response?.(statusCode, headers);
    if (failure) {
      this.#fail(failure);
      controller.abort(new ReplacedResponseError(failure.message));
      return;
    }
    this.#status = statusCode;
    if (this.#down.grpc) this.#grpcStatus = firstValue(headers["grpc-status"]);
    // The body the client is owed: none for HEAD, 204 and 304, else what Content-Length says (if it says).
    const length = headers["content-length"];
    if (this.#down.method === "HEAD" || statusCode === 204 || statusCode === 304) this.#bodyDue = 0;
    else if (typeof length === "string" && /^\d+$/.test(length)) this.#bodyDue = Number(length);
    try {
      this.#down.writeHead(
        statusCode,
        forwardableResponseHeaders(headers),
        statusMessage,
        endStream,
        trailers,
      );
    } catch (error) {
      // A head HTTP/1.1 allowed that HTTP/2 does not (two Content-Type fields, say): the app was reachable,
      // its answer cannot be passed on as it is.
      const message = `${this.#upstream}'s response cannot be passed on: ${(error as Error).message}`;
      this.#fail({ status: 502, reason: "upstream_protocol_error", message });
      controller.abort(new ReplacedResponseError(message));
    }
  }

  onResponseData(controller: Dispatcher.DispatchController, chunk: Buffer): void {
    if (this.#finished) return;
    if (this.#bodyDue !== undefined) this.#bodyDue -= chunk.length;
    if (!this.#down.write(chunk)) {
      controller.pause();
      this.#down.onDrain(() => controller.resume());
    }
  }

  onResponseEnd(_controller: Dispatcher.DispatchController, trailers?: ResponseHeaders): void {
    if (this.#finished) return;
    if (this.#down.grpc && trailers)
      this.#grpcStatus = firstValue(trailers["grpc-status"]) ?? this.#grpcStatus;
    this.#down.end(trailers);
    this.#finish({ status: this.#status, ...(this.#grpcStatus ? { grpcStatus: this.#grpcStatus } : {}) });
  }

  onResponseError(_controller: Dispatcher.DispatchController, error: Error): void {
    if (this.#finished) return;
    const failure = this.#failures?.error?.(error) ?? classifyForwardError(error, this.#upstream);
    if (failure.reason === "client_closed") {
      this.#finish({ status: 499, failure });
      return;
    }
    if (this.#down.headersSent) {
      // The head is out: the only honest signal left is an aborted response, never a truncated "success".
      // An upstream that cancelled its stream is cancelled downstream too (gRPC tells CANCELLED from INTERNAL).
      this.#down.abort((error as { rstCode?: number }).rstCode === NGHTTP2_CANCEL);
      // A stalled response or a broken body keeps its reason; anything else that cuts a started response is a reset.
      const reason =
        failure.reason === "upstream_timeout" || failure.reason === "upstream_protocol_error"
          ? failure.reason
          : "upstream_reset";
      this.#finish({
        status: this.#status,
        failure: { status: this.#status, reason, message: failure.message },
      });
      return;
    }
    this.#fail(failure);
  }

  #fail(failure: ForwardFailure): void {
    // A request body may be half consumed by the failed attempt: close rather than guess where it ends.
    const grpcStatus = sendError(
      this.#down,
      failure.status,
      failure.reason as ResponseReason,
      failure.message,
      this.#hasBody,
    );
    this.#finish({ status: wireStatus(failure.status, grpcStatus), failure, ...grpcOutcome(grpcStatus) });
  }

  readonly #onClientClose = (): void => {
    if (this.#finished) return;
    if (this.#bodyDue === 0) {
      // The client has the whole body and closed (Connection: close), while the upstream's end of stream is still
      // on its way (HTTP/2 may send it in a frame of its own). Nothing is cancelled: a RST_STREAM here would read
      // as a reset to a server that counts them (nghttp2 ends a session past 33 a second, CVE-2023-44487), and
      // busy Connection: close clients would get the pooled session, with every stream on it, torn down. The
      // end comes at once from any sound server; a server that holds the stream open is cut after END_OF_STREAM_GRACE_MS.
      this.#lingering = setTimeout(this.#onGraceOver, END_OF_STREAM_GRACE_MS);
      this.#lingering.unref();
      return;
    }
    this.#onClientGone();
  };

  /** The client got the whole response: that is what is logged; the stream the upstream held open is cancelled. */
  readonly #onGraceOver = (): void => {
    if (this.#finished) return;
    const grpc = this.#grpcStatus ? { grpcStatus: this.#grpcStatus } : {};
    this.#finish({ status: this.#status, ...grpc });
    // Finished first, so the error this abort reports back to us is dropped.
    this.#controller?.abort(
      new ClientClosedError("the upstream did not end a stream whose body was complete"),
    );
  };

  readonly #onClientGone = (): void => {
    if (this.#finished) return;
    this.#controller?.abort(new ClientClosedError("client closed the connection"));
  };

  #finish(outcome: ForwardOutcome): void {
    if (this.#finished) return;
    this.#finished = true;
    clearTimeout(this.#lingering);
    this.#down.offClose(this.#onClientClose);
    targetOf(this.#down)[kForwarding] = undefined;
    this.#done(outcome);
  }
}

function firstValue(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value[0] : value;
}

/** The status the client saw: a gRPC-shaped error travels as HTTP 200, its meaning in `grpc_status`. */
export function wireStatus(status: number, grpcStatus: number | undefined): number {
  return grpcStatus === undefined ? status : 200;
}

function grpcOutcome(grpcStatus: number | undefined): { grpcStatus?: string } {
  return grpcStatus === undefined ? {} : { grpcStatus: String(grpcStatus) };
}

/**
 * Ends the forward that owns `target` (an HTTP/1.1 response, an HTTP/2 stream) with `failure`, reported once, as
 * that request's outcome; false when it has no forward in progress. For what the server learns mid-request: a
 * request timeout, broken framing, a stream idle too long.
 */
export function failForward(target: ForwardTarget, failure: ForwardFailure): boolean {
  const forwarding = (target as Forwarded)[kForwarding];
  if (!forwarding) return false;
  forwarding.fail(failure);
  return true;
}

/**
 * Cuts the forward that owns `target`, reported once with `failure` as its outcome, where it would otherwise
 * read as the client closing: a drain's deadline ends what is still in flight. False when none is in progress.
 */
export function cutForward(target: ForwardTarget, failure: ForwardFailure): boolean {
  const forwarding = (target as Forwarded)[kForwarding];
  if (!forwarding) return false;
  forwarding.cut(failure);
  return true;
}

/** Forwards the request of `down` as described and calls `done` exactly once, when the exchange is over. */
export function forward(
  down: Downstream,
  request: ForwardRequest,
  done: (outcome: ForwardOutcome) => void,
): void {
  const handler = new Forwarding(down, request.upstream, request.hasBody, request.failures, done);
  request.dispatcher.dispatch(
    {
      method: request.method,
      path: request.path,
      headers: request.headers,
      body: request.hasBody ? down.body() : null,
      headersTimeout: request.headersTimeout,
      bodyTimeout: request.bodyTimeout,
    },
    handler,
  );
}
