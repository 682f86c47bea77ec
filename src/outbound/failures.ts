// How an upstream's failures read to the app: TLS causes named, and a peer's refusal of our certificate as one.
import type { FailureInterpreter, ResponseHeaders } from "../proxy/index.ts";
import { isTlsFailure, tlsFailure } from "./connector.ts";
import { LostRequestError } from "./exchange.ts";
import { peerRefusal } from "./refusal.ts";

/** An upstream with no endpoint at all: its DNS name does not resolve (yet). */
export const NO_ENDPOINT_CODE = "MTLSD_NO_ENDPOINT";

/**
 * Built once per upstream. A refusal of our certificate that shows up as a response (an mtlsd inbound completes
 * the handshake, then answers 403 with its reason) reaches the app as the TLS failure it is; the balancer has
 * logged, counted and ejected it already (see BalancedExchange), and sent the request elsewhere when it could.
 */
export function upstreamFailures(upstream: string): FailureInterpreter {
  return {
    response(statusCode: number, headers: ResponseHeaders) {
      const reason = peerRefusal(statusCode, headers);
      if (!reason) return undefined;
      return {
        status: 502,
        reason: "upstream_tls_error",
        message: `${upstream} refused our certificate: ${reason}`,
      };
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
