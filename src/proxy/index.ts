// The proxy module's public face: the forwarding engine, header rules, and the sidecar's own responses.

export { type ClientErrorAnswer, settleClientError } from "./client-error.ts";
export { Deadline, type DrainResult, HttpDrain, stopAccepting } from "./drain.ts";
export {
  classifyForwardError,
  type ForwardFailure,
  IDENTITY_MISMATCH_CODE,
  UPSTREAM_TLS_CODE,
} from "./errors.ts";
export {
  type FailureInterpreter,
  type ForwardOutcome,
  type ForwardRequest,
  failForward,
  forward,
} from "./forward.ts";
export {
  filterRequestHeaders,
  forwardableResponseHeaders,
  isHopByHop,
  nominatedHeaders,
  type RequestHeaders,
  type ResponseHeaders,
} from "./headers.ts";
export { type CapacityLog, connectionsCheckingInterval, httpLimits, reportCapacity } from "./limits.ts";
export { type ResponseReason, rawErrorResponse, sendError } from "./respond.ts";
