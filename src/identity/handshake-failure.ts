// Turns the ways a peer can fail certificate checks into the stable reasons logs and metrics use.

/** Reasons a peer's TLS connection is refused (DESIGN.md: log `reason`, metric label). */
export const HANDSHAKE_FAILURE_REASONS = [
  "no_client_cert",
  "cert_expired",
  "cert_not_yet_valid",
  "unknown_ca",
  "bad_svid",
  "revoked",
  "wrong_trust_domain",
  "tls_protocol",
  // Not TLS at all: a plaintext HTTP request on a strict mTLS port (answered 400 mtls_required).
  "mtls_required",
] as const;

export type HandshakeFailureReason = (typeof HANDSHAKE_FAILURE_REASONS)[number];

// OpenSSL X509_V_ERR_* names, as Node reports them in `authorizationError` / `err.code`.
const VERIFY_ERROR_REASONS: Record<string, HandshakeFailureReason> = {
  CERT_HAS_EXPIRED: "cert_expired",
  CERT_NOT_YET_VALID: "cert_not_yet_valid",
  UNABLE_TO_GET_ISSUER_CERT: "unknown_ca",
  UNABLE_TO_GET_ISSUER_CERT_LOCALLY: "unknown_ca",
  UNABLE_TO_VERIFY_LEAF_SIGNATURE: "unknown_ca",
  SELF_SIGNED_CERT_IN_CHAIN: "unknown_ca",
  DEPTH_ZERO_SELF_SIGNED_CERT: "unknown_ca",
  CERT_SIGNATURE_FAILURE: "unknown_ca",
  UNABLE_TO_DECRYPT_CERT_SIGNATURE: "unknown_ca",
  UNABLE_TO_DECODE_ISSUER_PUBLIC_KEY: "unknown_ca",
  CERT_UNTRUSTED: "unknown_ca",
  CERT_REJECTED: "unknown_ca",
  CERT_CHAIN_TOO_LONG: "unknown_ca",
  CERT_REVOKED: "revoked",
  INVALID_CA: "bad_svid",
  INVALID_PURPOSE: "bad_svid",
  PATH_LENGTH_EXCEEDED: "bad_svid",
  ERROR_IN_CERT_NOT_BEFORE_FIELD: "bad_svid",
  ERROR_IN_CERT_NOT_AFTER_FIELD: "bad_svid",
  INVALID_EXTENSION: "bad_svid",
  UNHANDLED_CRITICAL_EXTENSION: "bad_svid",
};

const VERIFY_ERROR_TEXT: Partial<Record<HandshakeFailureReason, string>> = {
  cert_expired: "certificate has expired",
  cert_not_yet_valid: "certificate is not yet valid (check the clocks of both hosts)",
  unknown_ca: "certificate does not chain to a trusted root",
  revoked: "certificate is revoked",
};

// Revocation checking fails closed: when OpenSSL cannot tell whether a certificate is revoked, it is refused as
// `revoked`, and the detail says which part of the CRL setup is missing, since that is ours to fix, not the peer's.
const CRL_ERROR_TEXT: Record<string, string> = {
  UNABLE_TO_GET_CRL:
    "revocation status unknown: identity.crl has no CRL from an issuer in the chain (every CA needs one, the root's too)",
  CRL_HAS_EXPIRED:
    "revocation status unknown: a CRL in identity.crl is past its nextUpdate; install a fresh one",
  CRL_NOT_YET_VALID: "revocation status unknown: a CRL in identity.crl is not valid yet (check the clock)",
  CRL_SIGNATURE_FAILURE: "revocation status unknown: a CRL in identity.crl has a bad signature",
  UNABLE_TO_GET_CRL_ISSUER: "revocation status unknown: the issuer of a CRL in identity.crl is not trusted",
};

/** Classifies an OpenSSL verification error code; unknown codes count as a bad certificate, never as success. */
export function classifyVerifyError(code: string): { reason: HandshakeFailureReason; detail: string } {
  const reason = VERIFY_ERROR_REASONS[code] ?? (code.includes("CRL") ? "revoked" : "bad_svid");
  const text = CRL_ERROR_TEXT[code] ?? VERIFY_ERROR_TEXT[reason] ?? "certificate rejected";
  return { reason, detail: `${text} (${code})` };
}

/** Classifies an error thrown during the handshake itself (before any certificate decision). */
export function classifyTlsError(error: Error & { code?: string }): {
  reason: HandshakeFailureReason;
  detail: string;
} {
  const code = error.code ?? "";
  if (
    code === "ERR_SSL_PEER_DID_NOT_RETURN_A_CERTIFICATE" ||
    /did not return a certificate/.test(error.message)
  ) {
    return { reason: "no_client_cert", detail: "peer sent no client certificate" };
  }
  if (code in VERIFY_ERROR_REASONS) return classifyVerifyError(code);
  if (/certificate expired/i.test(error.message)) return { reason: "cert_expired", detail: error.message };
  if (/unknown ca/i.test(error.message)) return { reason: "unknown_ca", detail: error.message };
  if (/certificate revoked/i.test(error.message)) return { reason: "revoked", detail: error.message };
  if (code === "ERR_TLS_HANDSHAKE_TIMEOUT")
    return { reason: "tls_protocol", detail: "TLS handshake timed out" };
  return { reason: "tls_protocol", detail: code ? `${code}: ${error.message}` : error.message };
}
