// Hop-by-hop header rules (RFC 9110 §7.6.1) shared by both directions: what must never be forwarded.
import { REFUSAL_MARK } from "./respond.ts";

/**
 * Headers that describe one connection, not the message: never forwarded in either direction. `Trailer` is not
 * among them (RFC 9110 §6.6.2: it announces the message's trailer fields); `HTTP2-Settings` belongs to an h2c
 * upgrade, which is never passed on. `TE` is, except for its `trailers` token (see filterRequestHeaders).
 */
const HOP_BY_HOP = new Set([
  "connection",
  "keep-alive",
  "proxy-connection",
  "proxy-authorization",
  "te",
  "transfer-encoding",
  "upgrade",
  "http2-settings",
]);

/**
 * A request's `Trailer` header announces trailer fields, which neither HTTP/1.1 client on the way to the app
 * forwards: announcing fields that never come would mislead the app, so on requests it is dropped too.
 */
const REQUEST_ONLY_DROPPED = "trailer";

/**
 * Whether `text` is `lower` but for the case of ASCII letters (`lower` being lowercase ASCII), as
 * `text.toLowerCase() === lower` says but with no lowercase copy made: this runs for fields of every message.
 */
export function isNamed(text: string, lower: string): boolean {
  if (text.length !== lower.length) return false;
  for (let i = 0; i < lower.length; i++) {
    let c = text.charCodeAt(i);
    if (c >= 0x41 && c <= 0x5a) c |= 0x20;
    if (c !== lower.charCodeAt(i)) return false;
  }
  return true;
}

export function isHopByHop(lowerName: string): boolean {
  return HOP_BY_HOP.has(lowerName);
}

/**
 * The header names a `Connection` header nominates as hop-by-hop (RFC 9110 §7.6.1), lowercased.
 * Returns undefined in the common case of no nominations beyond keep-alive/close, to skip a set lookup.
 */
export function nominatedHeaders(rawHeaders: readonly string[]): Set<string> | undefined {
  let nominated: Set<string> | undefined;
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const name = rawHeaders[i]!;
    if (name.length !== 10 || name.toLowerCase() !== "connection") continue;
    for (const token of rawHeaders[i + 1]!.split(",")) {
      const lower = token.trim().toLowerCase();
      if (lower === "" || lower === "close" || lower === "keep-alive") continue;
      nominated ??= new Set();
      nominated.add(lower);
    }
  }
  return nominated;
}

export type ResponseHeaders = Record<string, string | string[] | undefined>;

/**
 * Copies a response head for the client, without hop-by-hop headers or those the response's own
 * Connection header nominates. Returns a flat [name, value, ...] list, which keeps repeated headers.
 */
export function forwardableResponseHeaders(headers: ResponseHeaders): string[] {
  const out: string[] = [];
  const connection = headers.connection;
  // Most responses say only keep-alive or close, which nominate nothing.
  const nominated =
    connection && !isNamed(String(connection), "keep-alive") && !isNamed(String(connection), "close")
      ? nominatedHeaders(["connection", String(connection)])
      : undefined;
  for (const name in headers) {
    if (HOP_BY_HOP.has(name) || nominated?.has(name) || name === REFUSAL_MARK) continue;
    const value = headers[name];
    if (value === undefined) continue;
    if (typeof value === "string") out.push(name, value);
    else for (const item of value) out.push(name, item);
  }
  return out;
}

// A Connection header may nominate extra hop-by-hop headers, but never these: dropping them would change
// the message's framing or target, not just a connection's options.
const NEVER_NOMINATED = new Set(["host", "content-length"]);

export interface RequestHeaders {
  /** Flat [name, value, ...] list to forward. */
  list: string[];
  /** The (first) Host header, and how many there were: more than one is a 400. */
  host: string | undefined;
  hosts: number;
  /** Whether a body follows (Content-Length other than 0, or Transfer-Encoding). */
  hasBody: boolean;
}

/**
 * One pass over a client's raw request headers: drops hop-by-hop ones, those the Connection header
 * nominates, and `Expect` (the sidecar answers 100-continue itself); `drop` lets a caller take out and collect
 * headers of its own (inbound replaces XFCC). The rest keep their order and case. `TE: trailers` is kept, as
 * Envoy keeps it: gRPC servers require it, and it says the client reads trailers (RFC 9110 §10.1.4).
 */
export function filterRequestHeaders(
  rawHeaders: readonly string[],
  drop?: (lowerName: string, value: string) => boolean,
): RequestHeaders {
  const nominated = nominatedHeaders(rawHeaders);
  const list: string[] = [];
  let host: string | undefined;
  let hosts = 0;
  let hasBody = false;
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const name = rawHeaders[i]!;
    const value = rawHeaders[i + 1]!;
    const lower = name.toLowerCase();
    if (HOP_BY_HOP.has(lower)) {
      if (lower === "transfer-encoding") hasBody = true;
      else if (lower === "te" && acceptsTrailers(value)) list.push(name, "trailers");
      continue;
    }
    if (lower === "expect" || lower === REQUEST_ONLY_DROPPED || drop?.(lower, value)) continue;
    if (nominated?.has(lower) && !NEVER_NOMINATED.has(lower)) continue;
    if (lower === "host") {
      if (hosts++ === 0) host = value;
    } else if (lower === "content-length") hasBody = value !== "0";
    list.push(name, value);
  }
  return { list, host, hosts, hasBody };
}

/** Whether a TE header value lists the `trailers` token (its other codings are this hop's business). */
function acceptsTrailers(value: string): boolean {
  for (const token of value.split(",")) {
    if (token.trim().split(";")[0]!.trim().toLowerCase() === "trailers") return true;
  }
  return false;
}
