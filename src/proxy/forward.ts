// The one request-forwarding engine: streams a client request to a dispatcher and the response back.
import type { IncomingMessage, ServerResponse } from "node:http";
import type { Dispatcher } from "undici";
import { classifyForwardError, type ForwardFailure } from "./errors.ts";
import { forwardableResponseHeaders, type ResponseHeaders } from "./headers.ts";
import { type ResponseReason, sendError } from "./respond.ts";

export interface ForwardRequest {
  dispatcher: Dispatcher;
  /** Name of the upstream for error messages ("app", "orders"). */
  upstream: string;
  method: string;
  /** Path and query exactly as the upstream must receive them. */
  path: string;
  /** Flat [name, value, ...] list, already filtered. */
  headers: string[];
  /** Whether the client request has a body (Content-Length > 0 or Transfer-Encoding). */
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

const kForwarding = Symbol("mtlsd.forwarding");
type ForwardedResponse = ServerResponse & { [kForwarding]?: Forwarding };

/**
 * One in-flight forward, as an undici dispatch handler: a single object per request instead of closures,
 * with backpressure both ways (a slow client pauses the upstream; undici pulls the request body as it sends).
 */
class Forwarding implements Dispatcher.DispatchHandler {
  readonly #res: ServerResponse;
  readonly #upstream: string;
  readonly #done: (outcome: ForwardOutcome) => void;
  readonly #hasBody: boolean;
  readonly #failures: FailureInterpreter | undefined;
  #controller: Dispatcher.DispatchController | undefined;
  #status = 0;
  /** Set once the outcome is known, by the upstream or from outside by `fail`: later events are dropped. */
  #finished = false;

  constructor(
    res: ServerResponse,
    upstream: string,
    hasBody: boolean,
    failures: FailureInterpreter | undefined,
    done: (outcome: ForwardOutcome) => void,
  ) {
    this.#res = res;
    this.#upstream = upstream;
    this.#hasBody = hasBody;
    this.#failures = failures;
    this.#done = done;
    res.once("close", this.#onClientClose);
    (res as ForwardedResponse)[kForwarding] = this;
  }

  onRequestStart(controller: Dispatcher.DispatchController): void {
    this.#controller = controller;
    if (this.#finished) controller.abort(new ForwardFailedError("forward failed before it started"));
    else if (this.#res.destroyed) controller.abort(new ClientClosedError("client closed the connection"));
  }

  /** Ends the exchange with `failure`: the client gets it (or a cut, once a response has started). */
  fail(failure: ForwardFailure): void {
    if (this.#finished) return;
    if (this.#res.headersSent) this.#res.destroy();
    else sendError(this.#res, failure.status, failure.reason as ResponseReason, failure.message, true);
    this.#finish({ status: failure.status, failure });
    // Finished first, so the error this abort reports back to us is dropped.
    this.#controller?.abort(new ForwardFailedError(failure.message));
  }

  onResponseStart(
    controller: Dispatcher.DispatchController,
    statusCode: number,
    headers: ResponseHeaders,
    statusMessage?: string,
  ): void {
    // 1xx heads are informational; Node answers `Expect: 100-continue` to the client itself.
    // After `fail`, whatever the upstream still sends is dropped.
    if (statusCode < 200 || this.#finished) return;
    const failure = this.#failures?.response?.(statusCode, headers);
    if (failure) {
      this.#fail(failure);
      controller.abort(new ReplacedResponseError(failure.message));
      return;
    }
    this.#status = statusCode;
    const forwarded = forwardableResponseHeaders(headers);
    if (statusMessage) this.#res.writeHead(statusCode, statusMessage, forwarded);
    else this.#res.writeHead(statusCode, forwarded);
  }

  onResponseData(controller: Dispatcher.DispatchController, chunk: Buffer): void {
    if (this.#finished) return;
    if (!this.#res.write(chunk)) {
      controller.pause();
      this.#res.once("drain", () => controller.resume());
    }
  }

  onResponseEnd(): void {
    if (this.#finished) return;
    this.#res.end();
    this.#finish({ status: this.#status });
  }

  onResponseError(_controller: Dispatcher.DispatchController, error: Error): void {
    if (this.#finished) return;
    const failure = this.#failures?.error?.(error) ?? classifyForwardError(error, this.#upstream);
    if (failure.reason === "client_closed") {
      this.#finish({ status: 499, failure });
      return;
    }
    if (this.#res.headersSent) {
      // The head is out: the only honest signal left is an aborted response, never a truncated "success".
      this.#res.destroy();
      this.#finish({
        status: this.#status,
        failure: { status: this.#status, reason: "upstream_reset", message: failure.message },
      });
      return;
    }
    this.#fail(failure);
  }

  #fail(failure: ForwardFailure): void {
    // A request body may be half consumed by the failed attempt: close rather than guess where it ends.
    sendError(this.#res, failure.status, failure.reason as ResponseReason, failure.message, this.#hasBody);
    this.#finish({ status: failure.status, failure });
  }

  readonly #onClientClose = (): void => {
    if (this.#finished) return;
    this.#controller?.abort(new ClientClosedError("client closed the connection"));
  };

  #finish(outcome: ForwardOutcome): void {
    if (this.#finished) return;
    this.#finished = true;
    this.#res.removeListener("close", this.#onClientClose);
    (this.#res as ForwardedResponse)[kForwarding] = undefined;
    this.#done(outcome);
  }
}

/**
 * Ends the forward that owns `res` with `failure`, reported once, as that request's outcome; false when `res`
 * has no forward in progress. For what the HTTP server learns mid-request: a request timeout, broken framing.
 */
export function failForward(res: ServerResponse, failure: ForwardFailure): boolean {
  const forwarding = (res as ForwardedResponse)[kForwarding];
  if (!forwarding) return false;
  forwarding.fail(failure);
  return true;
}

/** Forwards `req` as described and calls `done` exactly once, when the exchange is over. */
export function forward(
  req: IncomingMessage,
  res: ServerResponse,
  request: ForwardRequest,
  done: (outcome: ForwardOutcome) => void,
): void {
  const handler = new Forwarding(res, request.upstream, request.hasBody, request.failures, done);
  request.dispatcher.dispatch(
    {
      method: request.method,
      path: request.path,
      headers: request.headers,
      body: request.hasBody ? req : null,
      headersTimeout: request.headersTimeout,
      bodyTimeout: request.bodyTimeout,
    },
    handler,
  );
}
