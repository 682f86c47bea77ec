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

export type ResponseHeaders = Record<string, string | string[] | undefined>;

/**
 * Copies a response head for the client, without hop-by-hop headers or those the response's own
 * Connection header nominates. Returns a flat [name, value, ...] list, which keeps repeated headers.
 */
export function forwardableResponseHeaders(headers: ResponseHeaders): string[] {
  const out: string[] = [];
  const connection = headers.connection;
  const nominated = connection ? nominatedHeaders(["connection", String(connection)]) : undefined;
  for (const name in headers) {
    if (HOP_BY_HOP.has(name) || nominated?.has(name)) continue;
    const value = headers[name];
    if (value === undefined) continue;
    if (typeof value === "string") out.push(name, value);
    else for (const item of value) out.push(name, item);
  }
  return out;
}
