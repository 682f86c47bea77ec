// Builds the header list the app receives: hop-by-hop removed, forged identity headers replaced, ours set.
import { isHopByHop, nominatedHeaders } from "../proxy/index.ts";
import { applyXfccMode, type XfccMode } from "./xfcc.ts";

export type InboundHeaders =
  | { ok: true; headers: string[]; hasBody: boolean }
  | { ok: false; detail: string };

const XFCC = "x-forwarded-client-cert";
const XFP = "x-forwarded-proto";

// A Connection header may nominate extra hop-by-hop headers, but never these: dropping them would change
// the message's framing or target, not just a connection's options.
const NEVER_NOMINATED = new Set(["host", "content-length"]);

/**
 * One pass over the client's raw headers. `ourXfcc` is this connection's XFCC element (null when the peer
 * is unauthenticated); whatever the client sent as XFCC or X-Forwarded-Proto is dropped here and only
 * re-added as the XFCC mode allows, so a `Connection: x-forwarded-client-cert` can only remove theirs.
 */
export function buildInboundHeaders(
  rawHeaders: readonly string[],
  mode: XfccMode,
  ourXfcc: string | null,
  forwardedProto: "https" | "http",
): InboundHeaders {
  const nominated = nominatedHeaders(rawHeaders);
  const headers: string[] = [];
  let incomingXfcc: string | undefined;
  let hosts = 0;
  let hasBody = false;
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const name = rawHeaders[i]!;
    const value = rawHeaders[i + 1]!;
    const lower = name.toLowerCase();
    if (isHopByHop(lower)) {
      if (lower === "transfer-encoding") hasBody = true;
      continue;
    }
    if (lower === XFCC) {
      // Several XFCC headers are one list (RFC 9110 §5.3); keep all of them in order, check none separately.
      incomingXfcc = incomingXfcc === undefined ? value : `${incomingXfcc},${value}`;
      continue;
    }
    if (lower === XFP || lower === "expect") continue;
    if (nominated?.has(lower) && !NEVER_NOMINATED.has(lower)) continue;
    if (lower === "host") hosts++;
    else if (lower === "content-length") hasBody = value !== "0";
    headers.push(name, value);
  }
  if (hosts > 1) return { ok: false, detail: "the request has more than one Host header" };
  if (nominated?.has(XFCC)) incomingXfcc = undefined;
  const xfcc = applyXfccMode(mode, incomingXfcc, ourXfcc);
  if (xfcc !== undefined) headers.push(XFCC, xfcc);
  headers.push(XFP, forwardedProto);
  return { ok: true, headers, hasBody };
}
