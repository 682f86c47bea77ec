// One request through an upstream's balancer: tried on an endpoint, tried again elsewhere when that is safe.

import http2 from "node:http2";
import type { Duplex, Readable } from "node:stream";
import type { Dispatcher } from "undici";
import type { HandshakeFailureReason } from "../identity/index.ts";
import { type ResponseHeaders, requestUnsent, type StreamHandler } from "../proxy/index.ts";
import type { Endpoint } from "./endpoint.ts";
import { peerRefusal, refusesOurCertificate } from "./refusal.ts";

const { NGHTTP2_REFUSED_STREAM } = http2.constants;

/** RFC 9110 §9.2.2: a method whose request, sent twice, has the effect of sending it once. */
const IDEMPOTENT = new Set(["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"]);

/** Why a request went to another endpoint, as `mtlsd_upstream_retries_total` counts it. */
export type RetryReason = "not_sent" | "idempotent";

/** Where an exchange notes the endpoint it sent the request to last: the request's log record. */
export interface EndpointRecord {
  endpoint?: string;
  /** The protocol the app's request came in: under `protocol: auto`, the one it rides to the upstream. */
  protocol?: string;
}

/** What an exchange needs of its upstream. */
export interface ExchangeHost {
  /** An endpoint for a try: one not in `tried` when there is any; `repeat` allows a tried one when there is not. */
  pick(tried: readonly Endpoint[], repeat: boolean): Endpoint | undefined;
  /** `retries`: extra tries for idempotent bodiless requests that may have reached the upstream. */
  readonly retries: number;
  /** How a try ended, for outlier detection: an answer (its status) or a failure after the request went out. */
  answered(endpoint: Endpoint, status: number): void;
  failed(endpoint: Endpoint, error: Error): void;
  /** The endpoint's sidecar answered that it refuses our certificate (a 403 with its reason): a failed handshake. */
  refused(endpoint: Endpoint, reason: HandshakeFailureReason): void;
  retried(reason: RetryReason, from: Endpoint, error: Error & { code?: string }): void;
}

/**
 * The forwarding engine hands every request one handler and one controller; an exchange stands between them and
 * the endpoints' pools so that a try that failed and was made again elsewhere is invisible to it: the handler hears
 * `onRequestStart` once, with this exchange as its controller for every try, and only the last try's answer.
 *
 * Tried again, once, on another endpoint: a request that never reached the upstream — its connection failed before
 * any of it was written (HTTP/1.1: H1Client says so of its error, see requestUnsent), an HTTP/2 stream the server
 * refused unprocessed (REFUSED_STREAM, or beyond a GOAWAY's last stream), or a server that refused our certificate
 * (a TLS alert on the first read, or an mtlsd inbound's 403 saying so) — when its body, if any, is still unread.
 * A request that may have reached it is tried again only if its method is idempotent, it has no body and `retries`
 * allows. Never once anything of the answer went to the client.
 */
export class BalancedExchange implements Dispatcher.DispatchController {
  readonly #host: ExchangeHost;
  readonly #options: Dispatcher.DispatchOptions;
  readonly #handler: StreamHandler;
  /** Upgrades (WebSocket) ride an endpoint's HTTP/1.1 pool. */
  readonly #upgrade: boolean;
  readonly #record: EndpointRecord;
  readonly #tried: Endpoint[] = [];
  #try: Try | undefined;
  #handlerStarted = false;
  /** The controller the handler sees, for every try: set once aborted, whichever try was running. */
  aborted = false;
  reason: Error | null = null;
  paused = false;
  #notSentRetried = false;
  /** Sent again over h2 because the endpoint refused HTTP/1.1 (see Endpoint.switchToH2). */
  #switched = false;
  #retriesLeft: number;

  constructor(
    host: ExchangeHost,
    options: Dispatcher.DispatchOptions,
    handler: StreamHandler,
    upgrade: boolean,
    record: EndpointRecord,
  ) {
    this.#host = host;
    this.#options = options;
    this.#handler = handler;
    this.#upgrade = upgrade;
    this.#record = record;
    this.#retriesLeft = host.retries;
  }

  abort(reason: Error): void {
    if (this.aborted) return;
    this.aborted = true;
    this.reason = reason;
    // A try still waiting for a connection is aborted when it starts (see tryStarted).
    this.#try?.controller?.abort(reason);
  }

  // Only the response of the last try reaches the handler, so only that try is ever paused.
  pause(): void {
    this.paused = true;
    this.#try?.controller?.pause();
  }

  resume(): void {
    this.paused = false;
    this.#try?.controller?.resume();
  }

  /** Sends the request to `endpoint`. */
  start(endpoint: Endpoint): void {
    const attempt = new Try(this, endpoint);
    this.#try = attempt;
    this.#tried.push(endpoint);
    this.#record.endpoint = endpoint.address;
    endpoint.health.active++;
    const dispatcher = this.#upgrade
      ? endpoint.upgrades
      : endpoint.dispatcherFor(this.#record.protocol === "h2" ? "h2" : "http/1.1");
    dispatcher.dispatch(this.#options, attempt);
  }

  // What each try reports; only the current one is listened to.

  tryStarted(attempt: Try, context: unknown): void {
    if (this.aborted) {
      attempt.controller!.abort(this.reason!);
      return;
    }
    if (this.#handlerStarted) return;
    this.#handlerStarted = true;
    this.#handler.onRequestStart?.(this, context as object);
  }

  tryUpgraded(attempt: Try, statusCode: number, headers: ResponseHeaders, socket: Duplex): void {
    this.#host.answered(attempt.endpoint, statusCode);
    this.#handler.onRequestUpgrade?.(this, statusCode, headers as Record<string, string>, socket);
  }

  tryResponded(
    attempt: Try,
    statusCode: number,
    headers: ResponseHeaders,
    statusMessage?: string,
    endStream?: boolean,
  ): void {
    const refusal = statusCode >= 200 ? peerRefusal(statusCode, headers) : undefined;
    if (refusal) {
      // The sidecar never passed the request to its app: it refuses our certificate on every connection.
      this.#host.refused(attempt.endpoint, refusal);
      const error = new Error(`${attempt.endpoint.address} refused our certificate: ${refusal}`);
      const next = this.#retry(attempt, true, error);
      if (next) {
        attempt.drop(error);
        this.#sendAgain(next, error);
        return;
      }
    } else if (statusCode >= 200) this.#host.answered(attempt.endpoint, statusCode);
    this.#handler.onResponseStart?.(this, statusCode, headers, statusMessage, endStream);
  }

  tryData(chunk: Buffer): void {
    this.#handler.onResponseData?.(this, chunk);
  }

  tryEnded(trailers: ResponseHeaders): void {
    this.#handler.onResponseEnd?.(this, trailers);
  }

  tryFailed(attempt: Try, error: Error & { code?: string; rstCode?: number }): void {
    if (this.aborted) {
      // Whatever the try ended with, the request ended because it was aborted (the client went away, or failed).
      this.#handler.onResponseError?.(this, this.reason ?? error);
      return;
    }
    if (!attempt.responded && !this.#upgrade && !this.#switched && attempt.endpoint.switchToH2(error)) {
      // The endpoint speaks only h2: the request, which never left, goes to it again that way (once).
      this.#switched = true;
      this.#sendAgain(attempt.endpoint, error);
      return;
    }
    if (attempt.responded) {
      this.#host.failed(attempt.endpoint, error);
      this.#handler.onResponseError?.(this, error);
      return;
    }
    // Not started: no connection took it (the connector reports its own failures). Refused: the server said it
    // did not process it, and is not failing for that (it may be draining). Our certificate refused by a TLS alert:
    // the server read none of it, and the connector has ejected the endpoint already.
    const unprocessed = error.rstCode === NGHTTP2_REFUSED_STREAM || refusesOurCertificate(error);
    if (attempt.started && !unprocessed) this.#host.failed(attempt.endpoint, error);
    const next = this.#retry(attempt, unprocessed, error);
    if (!next) {
      this.#handler.onResponseError?.(
        this,
        attempt.started && !unprocessed ? this.#lost(attempt, error) : error,
      );
      return;
    }
    this.#sendAgain(next, error);
  }

  #sendAgain(next: Endpoint, error: Error): void {
    // On the next tick: the failed pool is still unwinding the call that brought us here.
    process.nextTick(() => {
      if (this.aborted) this.#handler.onResponseError?.(this, this.reason ?? error);
      else this.start(next);
    });
  }

  /**
   * A connection lost (or a stream reset) after the request went out, told as such: which endpoint, and why the
   * request was not sent again, so that a 502 for a POST reads as the deliberate answer it is.
   */
  #lost(attempt: Try, error: Error & { code?: string; rstCode?: number }): Error {
    if (!LOST.has(error.code ?? "")) return error;
    const { method } = this.#options;
    const why =
      this.#options.body !== null && this.#options.body !== undefined
        ? `a ${method} with a body may have been processed`
        : !IDEMPOTENT.has(method)
          ? `a ${method} may have been processed`
          : this.#host.retries === 0
            ? "retries is 0"
            : `retries (${this.#host.retries}) used up`;
    return new LostRequestError(
      `${attempt.endpoint.address} failed after the request was sent (${error.message}); not sent again: ${why}`,
      error,
    );
  }

  /** The endpoint of the next try, if the request may be sent again; counts the retry. */
  #retry(attempt: Try, unprocessed: boolean, error: Error & { code?: string }): Endpoint | undefined {
    const body = this.#options.body as Readable | null | undefined;
    const bodiless = body === null || body === undefined;
    const notSent = (!attempt.started && !isInvalidRequest(error)) || unprocessed;
    if (notSent && !this.#notSentRetried && (bodiless || (!attempt.started && unread(body)))) {
      const next = this.#host.pick(this.#tried, false);
      if (next) {
        this.#notSentRetried = true;
        this.#host.retried("not_sent", attempt.endpoint, error);
        return next;
      }
    }
    if (this.#retriesLeft === 0 || !bodiless || !IDEMPOTENT.has(this.#options.method)) return undefined;
    // A broken connection, not a slow answer: a timeout is not cured by doubling the load that caused it.
    if (!notSent && !LOST.has(error.code ?? "")) return undefined;
    const next = this.#host.pick(this.#tried, true);
    if (!next) return undefined;
    this.#retriesLeft--;
    this.#host.retried("idempotent", attempt.endpoint, error);
    return next;
  }
}

/** One try on one endpoint: reports to its exchange as long as it is the exchange's current one. */
class Try implements StreamHandler {
  readonly #exchange: BalancedExchange;
  readonly endpoint: Endpoint;
  controller: Dispatcher.DispatchController | undefined;
  /** A connection took the request: from here on, some of it may have reached the upstream (unless told otherwise). */
  started = false;
  /** The final response head arrived: the client is about to see it, so there is no going back. */
  responded = false;
  #over = false;
  /** Given up for another try: nothing more of it reaches the exchange. */
  #dropped = false;

  constructor(exchange: BalancedExchange, endpoint: Endpoint) {
    this.#exchange = exchange;
    this.endpoint = endpoint;
  }

  onRequestStart(controller: Dispatcher.DispatchController, context: unknown): void {
    this.controller = controller;
    this.started = true;
    this.#exchange.tryStarted(this, context);
  }

  onRequestUpgrade(
    _controller: Dispatcher.DispatchController,
    statusCode: number,
    headers: Record<string, string | string[] | undefined>,
    socket: Duplex,
  ): void {
    this.responded = true;
    this.#finish();
    this.#exchange.tryUpgraded(this, statusCode, headers as ResponseHeaders, socket);
  }

  onResponseStart(
    _controller: Dispatcher.DispatchController,
    statusCode: number,
    headers: ResponseHeaders,
    statusMessage?: string,
    endStream?: boolean,
  ): void {
    if (statusCode >= 200) this.responded = true;
    this.#exchange.tryResponded(this, statusCode, headers, statusMessage, endStream);
  }

  onResponseData(_controller: Dispatcher.DispatchController, chunk: Buffer): void {
    if (this.#dropped) return;
    this.#exchange.tryData(chunk);
  }

  onResponseEnd(_controller: Dispatcher.DispatchController, trailers: ResponseHeaders): void {
    if (this.#dropped) return;
    this.#finish();
    this.#exchange.tryEnded(trailers);
  }

  onResponseError(_controller: Dispatcher.DispatchController | null, error: Error): void {
    if (this.#over) return;
    // HTTP/1.1 starts a request as it takes it, waiting for a connection or not: it says when none of it went out.
    if (this.started && !this.responded && requestUnsent(error)) this.started = false;
    this.#finish();
    this.#exchange.tryFailed(this, error);
  }

  /** Its answer is not wanted (the exchange sends the request elsewhere): the stream or connection is let go. */
  drop(reason: Error): void {
    this.#dropped = true;
    this.#finish();
    this.controller?.abort(reason);
  }

  #finish(): void {
    if (this.#over) return;
    this.#over = true;
    this.endpoint.health.active--;
  }
}

/** Codes of a connection that broke (closed, reset) rather than one that timed out or refused our certificate. */
const LOST = new Set(["UND_ERR_SOCKET", "ECONNRESET", "EPIPE", "MTLSD_UPSTREAM_RESET"]);

/** A request that may have reached the upstream when its connection broke; `code` and `rstCode` are the cause's. */
export class LostRequestError extends Error {
  readonly code: string | undefined;
  readonly rstCode: number | undefined;

  constructor(message: string, cause: Error & { code?: string; rstCode?: number }) {
    super(message, { cause });
    this.code = cause.code;
    this.rstCode = cause.rstCode;
  }
}

/** A request the client refused to build (a bad header, say; H1Client's codes are undici's): it fails anywhere. */
function isInvalidRequest(error: Error & { code?: string }): boolean {
  return error.code === "UND_ERR_INVALID_ARG" || error.code === "UND_ERR_NOT_SUPPORTED";
}

/** A body stream nothing has read from yet, so another try can send it whole. */
function unread(body: Readable | null | undefined): boolean {
  return !!body && typeof body.readableDidRead === "boolean" && !body.readableDidRead && !body.destroyed;
}
