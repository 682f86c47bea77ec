// How an upstream tells us it refuses our certificate once our side of the handshake is done: a TLS alert, or a 403.
import { HANDSHAKE_FAILURE_REASONS, type HandshakeFailureReason } from "../identity/index.ts";
import { REFUSAL_MARK, type ResponseHeaders } from "../proxy/index.ts";

/** An alert the server sent, as OpenSSL reports it: ERR_SSL_TLSV1_ALERT_UNKNOWN_CA, ERR_SSL_TLSV13_ALERT_…. */
export const RECEIVED_ALERT = /^ERR_SSL_(?:SSLV3|TLSV1|TLSV13)_ALERT_([A-Z_]+)$/;

/**
 * Alerts by which a server refuses the client's certificate: missing, untrusted, expired, revoked, unusable, or
 * not allowed in. In TLS 1.3 the client's handshake is complete before the server has checked it, so these arrive
 * on the first read, after the request was written; but no server reads application data before the client's
 * certificate and Finished passed, so nothing of the request was processed. None of them can come later in a
 * connection: TLS 1.3 has no handshake left to refuse (mtlsd never asks for post-handshake authentication).
 */
const REFUSING_ALERTS: ReadonlySet<string> = new Set([
  "CERTIFICATE_REQUIRED",
  "BAD_CERTIFICATE",
  "UNSUPPORTED_CERTIFICATE",
  "CERTIFICATE_REVOKED",
  "CERTIFICATE_EXPIRED",
  "CERTIFICATE_UNKNOWN",
  "UNKNOWN_CA",
  "ACCESS_DENIED",
]);

/** Whether `error` is a TLS alert by which the server refused our certificate. */
export function refusesOurCertificate(error: Error & { code?: string }): boolean {
  const alert = RECEIVED_ALERT.exec(error.code ?? "")?.[1];
  return alert !== undefined && REFUSING_ALERTS.has(alert);
}

const REFUSAL_REASONS: ReadonlySet<string> = new Set(HANDSHAKE_FAILURE_REASONS);

/**
 * The reason of a peer sidecar's refusal of our certificate, or undefined for any other response. An mtlsd
 * inbound completes the TLS handshake whatever our certificate is, then refuses it (not one path: every request
 * on every connection) with a 403 whose x-mtlsd-reason is a handshake reason and which carries the refusal mark
 * with the same reason. A sidecar drops any refusal mark from the responses it forwards, its app's included, so
 * an app cannot pose as a refusal (its own x-mtlsd-reason, or a Connection: close a draining sidecar adds, are
 * not enough); and a `403 policy_denied` is a decision about one request, from a healthy instance.
 */
export function peerRefusal(
  statusCode: number,
  headers: ResponseHeaders,
): HandshakeFailureReason | undefined {
  if (statusCode !== 403) return undefined;
  const reason = headers["x-mtlsd-reason"];
  if (typeof reason !== "string" || !REFUSAL_REASONS.has(reason)) return undefined;
  return headers[REFUSAL_MARK] === reason ? (reason as HandshakeFailureReason) : undefined;
}
