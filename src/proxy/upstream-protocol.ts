// Responses from an upstream (the app, a peer) that break HTTP/1.1's framing: refused as upstream_protocol_error.
//
// undici's parser refuses them (RFC 9112 §6.3: Content-Length with Transfer-Encoding, differing Content-Lengths,
// bare LF line ends; and a 101 nobody asked for) before the head is handed on, so the client gets a 502; one found
// in the body (a malformed chunk) cuts the response that already started.
import type { ForwardFailure } from "./errors.ts";

/**
 * An undici error that says the upstream answered, but not in HTTP/1.1 as it must be: the parser refused the
 * head (bare LF line ends, say), a body longer or shorter than its Content-Length, a 101 to a request that
 * asked for no upgrade, a 100 where undici accepts none. The upstream was reachable; this is its answer's fault.
 */
export function upstreamProtocolFailure(
  error: Error & { code?: string },
  upstream: string,
): ForwardFailure | undefined {
  const code = error.code ?? "";
  let what: string | undefined;
  if (error.name === "HTTPParserError" || code.startsWith("HPE_")) what = error.message;
  // undici reports any parser error on a response with a Content-Length as a length mismatch.
  else if (code === "UND_ERR_RES_CONTENT_LENGTH_MISMATCH")
    what = "its Content-Length is contradicted (by another Content-Length, a Transfer-Encoding, or the body)";
  else if (code === "UND_ERR_SOCKET" && error.message === "bad upgrade")
    what = "101 Switching Protocols to a request that asked for no upgrade";
  else if (code === "UND_ERR_SOCKET" && error.message === "bad response")
    what = "a response nobody asked for";
  if (what === undefined) return undefined;
  return upstreamProtocolError(upstream, what);
}

function upstreamProtocolError(upstream: string, what: string): ForwardFailure {
  return {
    status: 502,
    reason: "upstream_protocol_error",
    message: `${upstream} answered with a response that breaks HTTP/1.1: ${what}`,
  };
}
