// Responses the sidecar makes itself: a JSON body and `x-mtlsd-reason`, or for gRPC the same reason as a gRPC status.
import type { Downstream } from "./downstream.ts";

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
  | "upstream_reset"
  | "upstream_protocol_error"
  | "upgrade_refused"
  | "method_not_allowed"
  | "app_protocol_mismatch"
  | "draining";

/**
 * The gRPC status a proxy answers for an HTTP status it would have sent (grpc/grpc doc/http-grpc-status-mapping.md):
 * 400 INTERNAL, 401 UNAUTHENTICATED, 403 PERMISSION_DENIED, 404 UNIMPLEMENTED, 429/502/503/504 UNAVAILABLE,
 * anything else UNKNOWN.
 */
export function grpcStatusFor(httpStatus: number): number {
  switch (httpStatus) {
    case 400:
      return 13;
    case 401:
      return 16;
    case 403:
      return 7;
    case 404:
      return 12;
    case 429:
    case 502:
    case 503:
    case 504:
      return 14;
    default:
      return 2;
  }
}

/**
 * `grpc-message` is percent-encoded (gRPC over HTTP/2, "Responses"): every byte outside printable ASCII, and
 * `%` itself, as %XX of its UTF-8 bytes.
 */
export function encodeGrpcMessage(message: string): string {
  let out = "";
  for (const byte of Buffer.from(message, "utf8")) {
    out +=
      byte >= 0x20 && byte <= 0x7e && byte !== 0x25
        ? String.fromCharCode(byte)
        : `%${byte.toString(16).toUpperCase().padStart(2, "0")}`;
  }
  return out;
}

/**
 * Answers with `{"error", "reason"}` and `x-mtlsd-reason`; a gRPC request instead gets HTTP 200 with its
 * `grpc-status` and `grpc-message` in the only head (Trailers-Only), so the client shows the reason instead of a
 * protocol error. `close` ends an HTTP/1.1 connection after it (when the framing is in doubt). Returns the gRPC
 * status sent, if any, for the log.
 */
export function sendError(
  down: Downstream,
  status: number,
  /** A ResponseReason, or (a refused peer) the handshake failure reason. */
  reason: ResponseReason | (string & {}),
  message: string,
  close = false,
  /** Further response fields, as a flat list. */
  extra: readonly string[] = [],
): number | undefined {
  if (down.headersSent) {
    down.abort();
    return undefined;
  }
  if (close) down.closeAfter();
  if (down.grpc) {
    const grpcStatus = grpcStatusFor(status);
    down.writeHead(
      200,
      [
        "content-type",
        "application/grpc",
        "grpc-status",
        String(grpcStatus),
        "grpc-message",
        encodeGrpcMessage(`${message} (${reason})`),
        "x-mtlsd-reason",
        reason,
        ...extra,
        ...(down.protocol === "h2" ? [] : ["content-length", "0"]),
      ],
      undefined,
      true,
    );
    down.end();
    return grpcStatus;
  }
  const body = Buffer.from(JSON.stringify({ error: message, reason }));
  down.writeHead(status, [
    "content-type",
    "application/json",
    "content-length",
    String(body.length),
    "x-mtlsd-reason",
    reason,
    "cache-control",
    "no-store",
    ...extra,
  ]);
  down.write(body);
  down.end();
  return undefined;
}

/**
 * Marks the 403 with which an mtlsd inbound refuses a peer's certificate over HTTP/2, where no `Connection: close`
 * can tell it from an app's own 403. The inbound never passes this field on from an app (see forwardableResponseHeaders).
 */
export const REFUSAL_MARK = "x-mtlsd-refused";

/**
 * A complete HTTP/1.1 error response as bytes, for sockets that have no HTTP server yet (a parse error,
 * a refused TLS peer, a plaintext client on a TLS port).
 */
export function rawErrorResponse(
  status: number,
  statusText: string,
  reason: string,
  message: string,
  /** Extra header lines, e.g. the refusal mark: [name, value, …]. */
  extra: readonly string[] = [],
): string {
  const body = JSON.stringify({ error: message, reason });
  let more = "";
  for (let i = 0; i + 1 < extra.length; i += 2) more += `${extra[i]}: ${extra[i + 1]}\r\n`;
  return (
    `HTTP/1.1 ${status} ${statusText}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\n` +
    `x-mtlsd-reason: ${reason}\r\n${more}cache-control: no-store\r\nconnection: close\r\n\r\n${body}`
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
