// The proxy module's public face: the forwarding engine, header rules, and the sidecar's own responses.
export { classifyForwardError, type ForwardFailure, IDENTITY_MISMATCH_CODE } from "./errors.ts";
export { type ForwardOutcome, type ForwardRequest, forward } from "./forward.ts";
export { forwardableResponseHeaders, isHopByHop, nominatedHeaders, type ResponseHeaders } from "./headers.ts";
export { type ResponseReason, rawErrorResponse, sendError } from "./respond.ts";
