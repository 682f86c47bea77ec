// Builds the header list the app receives: hop-by-hop removed, forged identity headers replaced, ours set.
import type { InboundConfig } from "../config/index.ts";
import { filterRequestHeaders, hostProblem, RequestHeaderRules } from "../proxy/index.ts";
import { applyXfccMode, type XfccMode } from "./xfcc.ts";

export type InboundHeaders =
  | { ok: true; headers: string[]; hasBody: boolean }
  | { ok: false; detail: string };

const XFCC = "x-forwarded-client-cert";
const XFP = "x-forwarded-proto";

/** The header rules of an inbound config: the names we set are guarded against look-alikes too. */
export function inboundHeaderRules(config: InboundConfig): RequestHeaderRules {
  return new RequestHeaderRules(config, [XFCC, XFP]);
}

/**
 * `ourXfcc` is this connection's XFCC element (null when the peer is unauthenticated). Whatever the client
 * sent as XFCC or X-Forwarded-Proto is taken out during the one pass over its headers and only re-added as
 * the XFCC mode allows, so a `Connection: x-forwarded-client-cert` can only ever remove theirs. `rules` take out
 * look-alike and rerouting headers (or refuse the request, for `headersWithUnderscores: reject`). Without
 * `hostRequired` (HTTP/1.0) a request may have no Host; the app then gets the Host of `inbound.app`, which the
 * HTTP/1.1 or HTTP/2 hop to it needs.
 */
export function buildInboundHeaders(
  rawHeaders: readonly string[],
  hostRequired: boolean,
  mode: XfccMode,
  ourXfcc: string | null,
  forwardedProto: "https" | "http",
  rules: RequestHeaderRules,
): InboundHeaders {
  let incomingXfcc: string | undefined;
  let xfccNominated = false;
  let refused: string | undefined;
  const filtered = filterRequestHeaders(rawHeaders, (lower, value) => {
    if (lower === XFCC) {
      // Several XFCC headers are one list (RFC 9110 §5.3): keep them together, in order.
      incomingXfcc = incomingXfcc === undefined ? value : `${incomingXfcc},${value}`;
      return true;
    }
    if (lower === "connection" && value.toLowerCase().includes(XFCC)) xfccNominated = true;
    if (lower === XFP) return true;
    const verdict = rules.verdict(lower);
    if (verdict === "reject") refused ??= lower;
    return verdict !== "keep";
  });
  if (refused !== undefined) {
    return {
      ok: false,
      detail: `the header name ${JSON.stringify(refused.slice(0, 100))} has an underscore, which inbound.headersWithUnderscores refuses`,
    };
  }
  if (filtered.hosts > 1) return { ok: false, detail: "the request has more than one Host header" };
  if (filtered.host === undefined) {
    if (hostRequired) return { ok: false, detail: "the request has no Host header" };
  } else {
    const badHost = hostProblem(filtered.host);
    if (badHost) return { ok: false, detail: badHost };
  }
  // A peer that nominates its own XFCC as hop-by-hop asks us to drop it: honour that, never touching ours.
  const xfcc = applyXfccMode(mode, xfccNominated ? undefined : incomingXfcc, ourXfcc);
  const headers = filtered.list;
  if (xfcc !== undefined) headers.push(XFCC, xfcc);
  headers.push(XFP, forwardedProto);
  return { ok: true, headers, hasBody: filtered.hasBody };
}
