// Hop-by-hop header rules (RFC 9110 §7.6.1) shared by both directions: what must never be forwarded.

/** Headers that describe one connection, not the message: never forwarded in either direction. */
const HOP_BY_HOP = new Set([
  "connection",
  "keep-alive",
  "proxy-connection",
  "proxy-authorization",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade",
]);

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

/** The first value of a header in a flat [name, value, ...] list, by lowercase name. */
export function headerValue(headers: readonly string[], lowerName: string): string | undefined {
  for (let i = 0; i < headers.length; i += 2) {
    const name = headers[i]!;
    if (name.length === lowerName.length && name.toLowerCase() === lowerName) return headers[i + 1];
  }
  return undefined;
}

/**
 * A response head for the client, without hop-by-hop headers or those the response's own Connection header
 * nominates. In and out as flat [name, value, ...] lists, which keep repeated headers and their order.
 */
export function forwardableResponseHeaders(headers: readonly string[]): string[] {
  const nominated = nominatedHeaders(headers);
  const out: string[] = [];
  for (let i = 0; i < headers.length; i += 2) {
    const name = headers[i]!;
    const lower = name.toLowerCase();
    if (HOP_BY_HOP.has(lower) || nominated?.has(lower)) continue;
    out.push(name, headers[i + 1]!);
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
 * nominates, and `Expect` (Node answers 100-continue itself); `drop` lets a caller take out and collect
 * headers of its own (inbound replaces XFCC). The rest keep their order and case.
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
      continue;
    }
    if (lower === "expect" || drop?.(lower, value)) continue;
    if (nominated?.has(lower) && !NEVER_NOMINATED.has(lower)) continue;
    if (lower === "host") {
      if (hosts++ === 0) host = value;
    } else if (lower === "content-length") hasBody = value !== "0";
    list.push(name, value);
  }
  return { list, host, hosts, hasBody };
}
