// Forwards an HTTP/1.1 Upgrade request (WebSocket) and, on the upstream's 101, joins the two connections.
import { type IncomingMessage, STATUS_CODES } from "node:http";
import type { Duplex } from "node:stream";
import type { Dispatcher } from "undici";
import { classifyForwardError, type ForwardFailure } from "./errors.ts";
import type { FailureInterpreter, UpstreamDispatcher } from "./forward.ts";
import { forwardableResponseHeaders, type ResponseHeaders } from "./headers.ts";
import { rawErrorResponse } from "./respond.ts";
import type { TunnelResult, Tunnels } from "./tunnel.ts";

export interface UpgradeRequest {
  /** An HTTP/1.1 dispatcher: upgrades never ride an HTTP/2 session. */
  dispatcher: UpstreamDispatcher;
  upstream: string;
  method: string;
  path: string;
  /** Filtered request headers; the Connection and Upgrade headers are set from `token`. */
  headers: string[];
  /** The Upgrade token, lowercased: `websocket`. */
  token: string;
  headersTimeout: number;
  /** A tunnel with no byte either way for this long is closed. */
  idleMs: number;
  tunnels: Tunnels;
  failures?: FailureInterpreter;
}

/** How an upgrade ended, for the request log: on a 101, once its tunnel closed. */
export interface UpgradeOutcome {
  status: number;
  failure?: ForwardFailure;
  tunnel?: TunnelResult;
}

/** Upgrade tokens that open a tunnel: refused with a reason when not honored, never passed on as plain requests. */
const TUNNEL_TOKENS = new Set(["websocket", "h2c"]);

/**
 * For http.Server's `shouldUpgradeCallback`: upgrades that open a tunnel come to the `upgrade` event (to be
 * decided, or refused with a reason); any other token is ignored, as RFC 9110 §7.8 allows, and the request is
 * served as plain HTTP/1.1 (its Upgrade header dropped as hop-by-hop). `honored` is read per request: a
 * config reload may change it.
 */
export function upgradeRequested(honored: () => readonly string[]): (req: IncomingMessage) => boolean {
  return (req) => {
    const token = upgradeToken(req.rawHeaders);
    return token !== undefined && (TUNNEL_TOKENS.has(token) || honored().includes(token));
  };
}

/**
 * Why an upgrade that reached the `upgrade` event is refused, or undefined when `token` is honored. `h2c` never
 * is: an h2c upgrade would open an HTTP/2 tunnel past per-request policy. `h2cInstead` says what to do.
 */
export function upgradeRefusal(
  token: string,
  honored: readonly string[],
  setting: string,
  h2cInstead: string,
): string | undefined {
  if (token === "h2c") return `Upgrade: h2c is never honored: ${h2cInstead}`;
  return honored.includes(token) ? undefined : `Upgrade: ${token} is not in ${setting}`;
}

/**
 * The `protocol` an Upgrade request is logged and counted with: its token (`websocket`), except `h2c`, which is
 * never honored: that request never leaves HTTP/1.1, and is counted as `http/1.1`, which keeps the label
 * to the documented set (`http/1.1`, `h2`, `websocket`).
 */
export function upgradeProtocol(token: string): string {
  return token === "h2c" ? "http/1.1" : token;
}

/** The Upgrade token a request asks for (the first one it lists), lowercased; undefined when none. */
export function upgradeToken(rawHeaders: readonly string[]): string | undefined {
  for (let i = 0; i < rawHeaders.length; i += 2) {
    if (rawHeaders[i]!.length === 7 && rawHeaders[i]!.toLowerCase() === "upgrade") {
      const first = rawHeaders[i + 1]!.split(",")[0]!.trim().toLowerCase();
      // `websocket/13` names a version; the protocol is what precedes the slash.
      return first.split("/")[0] || undefined;
    }
  }
  return undefined;
}

/**
 * `client` is the socket Node's HTTP server handed over with its `upgrade` event, `head` what followed the
 * request. The upstream's answer is written to it as raw HTTP/1.1: its 101 (then the tunnel), or any other
 * response whole, after which the connection closes (the HTTP server no longer parses it).
 */
export function forwardUpgrade(
  client: Duplex,
  head: Buffer,
  request: UpgradeRequest,
  done: (outcome: UpgradeOutcome) => void,
): void {
  let finished = false;
  const finish = (outcome: UpgradeOutcome) => {
    if (finished) return;
    finished = true;
    done(outcome);
  };
  let controller: Dispatcher.DispatchController | undefined;
  const onClientClose = () =>
    controller?.abort(Object.assign(new Error("client closed"), { code: "MTLSD_CLIENT_CLOSED" }));
  client.once("close", onClientClose);
  const fail = (failure: ForwardFailure) => {
    client.off("close", onClientClose);
    client.end(
      rawErrorResponse(
        failure.status,
        STATUS_CODES[failure.status] ?? "Error",
        failure.reason,
        failure.message,
      ),
    );
    finish({ status: failure.status, failure });
  };
  let status = 0;
  request.dispatcher.dispatch(
    {
      method: request.method,
      path: request.path,
      headers: request.headers,
      upgrade: request.token,
      headersTimeout: request.headersTimeout,
      body: null,
    },
    {
      onRequestStart(started) {
        controller = started;
        if (client.destroyed)
          started.abort(Object.assign(new Error("client closed"), { code: "MTLSD_CLIENT_CLOSED" }));
      },
      onRequestUpgrade(_controller, statusCode, headers, upstream) {
        client.off("close", onClientClose);
        const fields = forwardableResponseHeaders(headers as ResponseHeaders);
        fields.push("connection", "upgrade", "upgrade", request.token);
        client.write(responseHead(statusCode, fields));
        // Whatever the upstream sent after its 101 is already in its socket's buffer: it flows through the pipe.
        request.tunnels.open(
          client,
          upstream,
          { client: head, upstream: Buffer.alloc(0) },
          request.idleMs,
          (tunnel) => finish({ status: statusCode, tunnel }),
        );
      },
      onResponseStart(started, statusCode, headers, statusMessage) {
        const failure = request.failures?.response?.(statusCode, headers as ResponseHeaders);
        if (failure) {
          fail(failure);
          started.abort(new Error(failure.message));
          return;
        }
        // Not upgraded: the app's answer (a 403 from its own checks, a 426…) goes back whole, then the connection
        // closes, its end marking the end of the body.
        status = statusCode;
        client.off("close", onClientClose);
        const fields = dropContentLength(forwardableResponseHeaders(headers as ResponseHeaders));
        client.write(responseHead(statusCode, fields, statusMessage, true));
      },
      onResponseData(_controller, chunk) {
        client.write(chunk);
      },
      onResponseEnd() {
        client.end();
        finish({ status });
      },
      onResponseError(_controller, error) {
        if (finished) return;
        const failure =
          request.failures?.error?.(error as Error & { code?: string }) ??
          classifyForwardError(error, request.upstream);
        if (failure.reason === "client_closed") {
          finish({ status: 499, failure });
          return;
        }
        if (status !== 0) {
          client.destroy();
          finish({ status, failure: { status, reason: "upstream_reset", message: failure.message } });
          return;
        }
        fail(failure);
      },
    },
  );
}

function dropContentLength(fields: string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < fields.length; i += 2) {
    if (fields[i] === "content-length") continue;
    out.push(fields[i]!, fields[i + 1]!);
  }
  return out;
}

function responseHead(
  status: number,
  fields: readonly string[],
  statusMessage?: string,
  close = false,
): string {
  let head = `HTTP/1.1 ${status} ${statusMessage || STATUS_CODES[status] || ""}\r\n`;
  for (let i = 0; i < fields.length; i += 2) head += `${fields[i]}: ${fields[i + 1]}\r\n`;
  if (close) head += "connection: close\r\n";
  return `${head}\r\n`;
}
