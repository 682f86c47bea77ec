// Maps why forwarding failed to the status and reason the client gets.
import type { ResponseReason } from "./respond.ts";
import { upstreamProtocolFailure } from "./upstream-protocol.ts";

export interface ForwardFailure {
  status: number;
  /** A ResponseReason when the sidecar answers; `client_closed` appears only in logs. */
  reason: ResponseReason | "client_closed";
  message: string;
}

const UNREACHABLE = new Set([
  "ECONNREFUSED",
  "ECONNRESET",
  "EPIPE",
  "ENOTFOUND",
  "EAI_AGAIN",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "UND_ERR_SOCKET",
  "UND_ERR_CLOSED",
  "UND_ERR_DESTROYED",
]);
const TIMEOUT = new Set([
  "UND_ERR_HEADERS_TIMEOUT",
  "UND_ERR_CONNECT_TIMEOUT",
  "UND_ERR_BODY_TIMEOUT",
  "ETIMEDOUT",
]);

/** Codes a caller's own connector raises (outbound identity checks) map through here too. */
export const IDENTITY_MISMATCH_CODE = "MTLSD_UPSTREAM_IDENTITY_MISMATCH";
/** A TLS handshake failure already classified by the connector; its message carries the cause. */
export const UPSTREAM_TLS_CODE = "MTLSD_UPSTREAM_TLS";

export function classifyForwardError(error: Error & { code?: string }, upstream: string): ForwardFailure {
  const code = error.code ?? "";
  if (code === "UND_ERR_ABORTED" || code === "MTLSD_CLIENT_CLOSED") {
    return { status: 499, reason: "client_closed", message: "client closed the connection first" };
  }
  if (code === IDENTITY_MISMATCH_CODE) {
    return { status: 502, reason: "upstream_identity_mismatch", message: error.message };
  }
  if (code === UPSTREAM_TLS_CODE)
    return { status: 502, reason: "upstream_tls_error", message: error.message };
  if (code === "UND_ERR_BODY_TIMEOUT") {
    return {
      status: 504,
      reason: "upstream_timeout",
      message: `${upstream} sent nothing for longer than the stream idle limit (streamIdleTimeout)`,
    };
  }
  if (TIMEOUT.has(code)) {
    return { status: 504, reason: "upstream_timeout", message: `${upstream} did not answer in time` };
  }
  if (code === "MTLSD_UPSTREAM_RESET") {
    return { status: 502, reason: "upstream_reset", message: `${upstream}: ${error.message}` };
  }
  if (code === "UND_ERR_REQ_CONTENT_LENGTH_MISMATCH") {
    return {
      status: 400,
      reason: "bad_request",
      message: "request body length differs from its Content-Length",
    };
  }
  const protocol = upstreamProtocolFailure(error, upstream);
  if (protocol) return protocol;
  if (code.startsWith("ERR_SSL") || code.startsWith("ERR_TLS") || /CERT|ISSUER|SIGNATURE|VERIFY/.test(code)) {
    return { status: 502, reason: "upstream_tls_error", message: `TLS with ${upstream} failed: ${code}` };
  }
  if (UNREACHABLE.has(code)) {
    return { status: 502, reason: "upstream_unreachable", message: `${upstream} is unreachable (${code})` };
  }
  return {
    status: 502,
    reason: "upstream_unreachable",
    message: `${upstream} failed: ${code || error.message}`,
  };
}
