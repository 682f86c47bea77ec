// The proxy module's public face: the forwarding engine, header rules, and the sidecar's own responses.

export { tcpConnector } from "./connect.ts";
export { Deadline, type DrainResult, HttpDrain, stopAccepting } from "./drain.ts";
export {
  CONNECT_TIMEOUT_CODE,
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
  headerValue,
  isHopByHop,
  nominatedHeaders,
  type RequestHeaders,
} from "./headers.ts";
export { type CapacityLog, connectionsCheckingInterval, httpLimits, reportCapacity } from "./limits.ts";
export { type Connector, Origin, OriginError, type OriginStats } from "./origin.ts";
export { describeClientError, type ResponseReason, rawErrorResponse, sendError } from "./respond.ts";
