// How an upstream's failures read to the app: TLS causes named, and a peer's refusal of our certificate as one.
import { HANDSHAKE_FAILURE_REASONS, type HandshakeFailureReason } from "../identity/index.ts";
import { type FailureInterpreter, REFUSAL_MARK, type ResponseHeaders } from "../proxy/index.ts";
import { isTlsFailure, tlsFailure, type UpstreamHandshakeFailure } from "./connector.ts";
import { LostRequestError } from "./exchange.ts";

/** An upstream with no endpoint at all: its DNS name does not resolve (yet). */
export const NO_ENDPOINT_CODE = "MTLSD_NO_ENDPOINT";

const REFUSAL_REASONS: ReadonlySet<string> = new Set(HANDSHAKE_FAILURE_REASONS);

/**
 * Built once per upstream. `report` receives refusals that only show up as a response: an mtlsd inbound in
 * TLS 1.3 completes the handshake on our side, then answers 403 with the reason it refused our certificate.
 */
export function upstreamFailures(
  upstream: string,
  report: (failure: UpstreamHandshakeFailure) => void,
): FailureInterpreter {
  return {
    response(statusCode: number, headers: ResponseHeaders) {
      const reason = refusalReason(statusCode, headers);
      if (!reason) return undefined;
      const message = `${upstream} refused our certificate: ${reason}`;
      report({ reason, detail: message });
      return { status: 502, reason: "upstream_tls_error", message };
    },
    error(error: Error & { code?: string }) {
      // The connector's own timeout says which phase took too long; the generic text would not.
      if (error instanceof LostRequestError) {
        const reason = error.code === "MTLSD_UPSTREAM_RESET" ? "upstream_reset" : "upstream_unreachable";
        return { status: 502, reason, message: `${upstream}: ${error.message}` };
      }
      if (error.code === NO_ENDPOINT_CODE) {
        return { status: 502, reason: "upstream_unreachable", message: error.message };
      }
      if (error.code === "UND_ERR_CONNECT_TIMEOUT") {
        return { status: 504, reason: "upstream_timeout", message: error.message };
      }
      if (!isTlsFailure(error)) return undefined;
      return { status: 502, reason: "upstream_tls_error", message: tlsFailure(upstream, error).message };
    },
  };
}

/**
 * The reason of a peer sidecar's certificate refusal, or undefined for any other response. A refusal is a
 * 403 whose x-mtlsd-reason is a handshake reason and which closes the connection (HTTP/1.1), or carries the
 * refusal mark (HTTP/2, which has no Connection header): an app's own response passes through its sidecar, which
 * drops the app's Connection header and any refusal mark, so an app cannot pose as a refusal.
 */
function refusalReason(statusCode: number, headers: ResponseHeaders): HandshakeFailureReason | undefined {
  if (statusCode !== 403) return undefined;
  const reason = headers["x-mtlsd-reason"];
  if (typeof reason !== "string" || !REFUSAL_REASONS.has(reason)) return undefined;
  if (headers[REFUSAL_MARK] === reason) return reason as HandshakeFailureReason;
  const connection = headers.connection;
  if (typeof connection !== "string" || !/(^|,)\s*close\s*(,|$)/i.test(connection)) return undefined;
  return reason as HandshakeFailureReason;
}
