// Responses the sidecar makes itself: a JSON body and `x-mtlsd-reason`, with stable snake_case reasons.
import type { ServerResponse } from "node:http";

/** Reason codes of responses mtlsd makes itself (DESIGN.md); dashboards and clients match on these. */
export type ResponseReason =
  | "policy_denied"
  | "bad_path"
  | "bad_request"
  | "request_timeout"
  | "unknown_upstream"
  | "upstream_unreachable"
  | "upstream_identity_mismatch"
  | "upstream_tls_error"
  | "upstream_timeout"
  | "draining";

/** Sends `{"error", "reason"}`; `close` ends the connection after it (when the framing is in doubt). */
export function sendError(
  res: ServerResponse,
  status: number,
  reason: ResponseReason,
  message: string,
  close = false,
): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const body = JSON.stringify({ error: message, reason });
  const headers: Record<string, string | number> = {
    "content-type": "application/json",
    "content-length": Buffer.byteLength(body),
    "x-mtlsd-reason": reason,
    "cache-control": "no-store",
  };
  if (close) headers.connection = "close";
  res.writeHead(status, headers);
  res.end(body);
}

/**
 * A complete HTTP/1.1 error response as bytes, for sockets that have no HTTP server yet (a parse error,
 * a refused TLS peer, a plaintext client on a TLS port).
 */
export function rawErrorResponse(
  status: number,
  statusText: string,
  reason: string,
  message: string,
): string {
  const body = JSON.stringify({ error: message, reason });
  return (
    `HTTP/1.1 ${status} ${statusText}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\n` +
    `x-mtlsd-reason: ${reason}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n${body}`
  );
}

/** What to answer when Node's HTTP parser gives up on a client (`clientError`), and why, for the client and the log. */
export function describeClientError(error: Error & { code?: string }): {
  status: number;
  statusText: string;
  reason: "bad_request" | "request_timeout";
  message: string;
} {
  if (error.code === "HPE_HEADER_OVERFLOW")
    return {
      status: 431,
      statusText: "Request Header Fields Too Large",
      reason: "bad_request",
      message: "request headers are larger than limits.maxHeaderSize",
    };
  if (error.code === "ERR_HTTP_REQUEST_TIMEOUT")
    return {
      status: 408,
      statusText: "Request Timeout",
      reason: "request_timeout",
      message: "the request did not arrive within limits.headersTimeout / limits.requestTimeout",
    };
  return {
    status: 400,
    statusText: "Bad Request",
    reason: "bad_request",
    message: `malformed HTTP request (${error.code ?? error.message})`,
  };
}
