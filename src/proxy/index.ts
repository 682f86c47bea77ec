// The proxy module's public face: the forwarding engine, the protocols it speaks, and the sidecar's own responses.

export { type ClientErrorAnswer, settleClientError } from "./client-error.ts";
export { IDLE_CONTROLLER } from "./dispatch-controller.ts";
export {
  type Downstream,
  fieldsObject,
  H1Downstream,
  H2Downstream,
  hostRequiredOf,
  isGrpcContentType,
  type Protocol,
  resetStream,
} from "./downstream.ts";
export { Deadline, type DrainedConnection, type DrainResult, HttpDrain, stopAccepting } from "./drain.ts";
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
  type UpstreamDispatcher,
  wireStatus,
} from "./forward.ts";
export { H1Client, type H1ClientOptions, type H1Connector, requestUnsent } from "./h1-client.ts";
export { type PlainRequest, parseRequestHead, type RequestHead } from "./h1-request.ts";
export {
  type FastPathListener,
  H1Connection,
  type H1ConnectionOptions,
  H1ServerDownstream,
  type H1ServerLimits,
  handedHeadRead,
  listenerFastPath,
  requestTimeoutError,
} from "./h1-server.ts";
export {
  H2Client,
  type H2ClientOptions,
  type QueuedRequest,
  resetCodeName,
  type SessionConnector,
  type StreamHandler,
  tcpConnector,
} from "./h2-client.ts";
export {
  H2Sessions,
  h2ServerOptions,
  malformedH2Request,
  NGHTTP2_PROTOCOL_ERROR,
  superviseStream,
  unlessResetAtOnce,
} from "./h2-server.ts";
export {
  filterRequestHeaders,
  forwardableResponseHeaders,
  isHopByHop,
  nominatedHeaders,
  type RequestHeaders,
  type ResponseHeaders,
} from "./headers.ts";
export { authorityKey, hostProblem } from "./host.ts";
export { tolerateContinue, toleratingContinue } from "./interim.ts";
export { LazyPool, loadUndici, type Undici } from "./lazy-pool.ts";
export {
  type CapacityLog,
  connectionsCheckingInterval,
  headerCountProblem,
  httpLimits,
  limitHeaderCount,
  reportCapacity,
  updateHttpLimits,
} from "./limits.ts";
export {
  type HeaderVerdict,
  REROUTING_HEADERS,
  RequestHeaderRules,
  type RequestHeaderRulesConfig,
  type UnderscoreAction,
} from "./request-headers.ts";
export {
  describeClientError,
  encodeGrpcMessage,
  grpcStatusFor,
  REFUSAL_MARK,
  type ResponseReason,
  rawErrorResponse,
  sendError,
} from "./respond.ts";
export { feed, sniffHttp2Preface } from "./sniff.ts";
export { type TunnelResult, Tunnels } from "./tunnel.ts";
export {
  forwardUpgrade,
  type UpgradeOutcome,
  type UpgradeRequest,
  upgradeProtocol,
  upgradeRefusal,
  upgradeRequested,
  upgradeToken,
} from "./upgrade.ts";
