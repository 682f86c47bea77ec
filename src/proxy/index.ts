// The proxy module's public face: the forwarding engine, header rules, and the sidecar's own responses.
export {
  classifyForwardError,
  type ForwardFailure,
  IDENTITY_MISMATCH_CODE,
  UPSTREAM_TLS_CODE,
} from "./errors.ts";
export { type FailureInterpreter, type ForwardOutcome, type ForwardRequest, forward } from "./forward.ts";
export {
  filterRequestHeaders,
  forwardableResponseHeaders,
  isHopByHop,
  nominatedHeaders,
  type RequestHeaders,
  type ResponseHeaders,
} from "./headers.ts";
export { type ResponseReason, rawErrorResponse, sendError } from "./respond.ts";
