// A strict HTTP/1.1 request-head reader for the outbound fast path: it recognizes only plain requests, never refuses.
//
// The fast path serves a request itself only when its head is one every reader would read the same way: a
// request line of single spaces, a method from a short list, an origin-form or http:// absolute-form target of
// unreserved characters, HTTP/1.1 (or 1.0), fields of token names and printable ASCII values on CR LF lines, one
// Host (HTTP/1.1), at most one Content-Length of digits and no other framing, no upgrade, no Expect, within
// limits.maxHeaderCount and limits.maxHeaderSize. Whatever else comes (unusual, suspicious, malformed) is
// `other`: the connection is handed to node:http, whose llhttp and the listener's existing handlers decide as
// they always have. So this reader has no error of its own, and no request is refused here that was served
// before, nor served here that llhttp would have refused (test/h1-request-parser.test.ts).

/** A request head the fast path may serve. */
export interface PlainRequest {
  readonly method: string;
  /** Origin-form path and query, or an absolute http:// URL, as sent. */
  readonly target: string;
  /** 1 for HTTP/1.1, 0 for HTTP/1.0. */
  readonly minor: 0 | 1;
  /** Field names as sent and values without their surrounding whitespace, as a flat [name, value, …] list. */
  readonly rawHeaders: string[];
  /** Bytes of body that follow the head: the Content-Length, 0 without one. */
  readonly contentLength: number;
  /** Whether the client lets the connection persist after this exchange (RFC 9112 §9.3). */
  readonly keepAlive: boolean;
  /** Bytes the head took, its empty line included: the body starts there. */
  readonly headLength: number;
}

/** What the bytes at a request boundary are. */
export type RequestHead = PlainRequest | "incomplete" | "other";

export interface RequestHeadLimits {
  /** Most header fields a request may carry (limits.maxHeaderCount). */
  maxHeaderCount: number;
  /** Most bytes a head may take (limits.maxHeaderSize); a head of this size or more is left to node:http. */
  maxHeaderSize: number;
}

const HEAD_END = Buffer.from("\r\n\r\n");
/** Methods whose requests carry no body here: a Content-Length other than 0 sends them to node:http. */
const BODYLESS = new Set(["GET", "HEAD", "DELETE", "OPTIONS"]);
const WITH_BODY = new Set(["POST", "PUT", "PATCH"]);
/** RFC 3986 unreserved, sub-delims, `:`, `@`, `/`, `?` and `%`: no fragment, no spaces, no controls. */
const ORIGIN_FORM = /^\/[A-Za-z0-9\-._~!$&'()*+,;=:@/?%]*$/;
/** http:// with a host of letters, digits, dots, hyphens (or a bracketed IPv6 address) and an optional port. */
const ABSOLUTE_FORM =
  /^http:\/\/(?:[A-Za-z0-9\-.]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?(?:\/[A-Za-z0-9\-._~!$&'()*+,;=:@/?%]*)?$/;
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
/** A field value without its surrounding whitespace: printable ASCII, inner SP and HTAB. No obs-text. */
const FIELD_VALUE = /^[\x21-\x7e](?:[\t\x20-\x7e]*[\x21-\x7e])?$/;
/** Content-Length: digits that fit a safe integer. */
const LENGTH = /^[0-9]{1,15}$/;

/**
 * Reads the head at the start of `buffer` (the bytes at a request boundary). `incomplete`: no end of head yet,
 * and what has come is within maxHeaderSize; `other`: anything this reader does not recognize as plain.
 */
export function parseRequestHead(buffer: Buffer, limits: RequestHeadLimits): RequestHead {
  const end = buffer.indexOf(HEAD_END);
  if (end === -1) return buffer.length < limits.maxHeaderSize ? "incomplete" : "other";
  const headLength = end + 4;
  // node:http counts less than the whole head against maxHeaderSize: a head under it is under node's count too.
  if (headLength >= limits.maxHeaderSize) return "other";
  const text = buffer.toString("latin1", 0, end);
  const lines = text.split("\r\n");
  const requestLine = lines[0]!;
  const firstSpace = requestLine.indexOf(" ");
  const lastSpace = requestLine.lastIndexOf(" ");
  if (firstSpace <= 0 || lastSpace === firstSpace) return "other";
  const method = requestLine.slice(0, firstSpace);
  const target = requestLine.slice(firstSpace + 1, lastSpace);
  const version = requestLine.slice(lastSpace + 1);
  const bodyless = BODYLESS.has(method);
  if (!bodyless && !WITH_BODY.has(method)) return "other";
  let minor: 0 | 1;
  if (version === "HTTP/1.1") minor = 1;
  else if (version === "HTTP/1.0") minor = 0;
  else return "other";
  if (!ORIGIN_FORM.test(target) && !ABSOLUTE_FORM.test(target)) return "other";
  if (lines.length - 1 > limits.maxHeaderCount) return "other";
  const rawHeaders: string[] = [];
  let hosts = 0;
  let contentLength: string | undefined;
  let close = false;
  let keepAliveToken = false;
  for (let i = 1; i < lines.length; i++) {
    const line = lines[i]!;
    // A bare CR or LF within a line, an obs-fold (a line starting with whitespace), a line without a colon:
    // all fail the name or value grammar below.
    const colon = line.indexOf(":");
    if (colon <= 0) return "other";
    const name = line.slice(0, colon);
    if (!TOKEN.test(name)) return "other";
    let start = colon + 1;
    let stop = line.length;
    while (start < stop && (line.charCodeAt(start) === 0x20 || line.charCodeAt(start) === 0x09)) start++;
    while (stop > start && (line.charCodeAt(stop - 1) === 0x20 || line.charCodeAt(stop - 1) === 0x09)) stop--;
    const value = line.slice(start, stop);
    if (value.length > 0 && !FIELD_VALUE.test(value)) return "other";
    switch (name.toLowerCase()) {
      case "host":
        hosts++;
        break;
      case "content-length":
        if (contentLength !== undefined || !LENGTH.test(value)) return "other";
        contentLength = value;
        break;
      case "connection":
        for (const item of value.split(",")) {
          const token = item.trim().toLowerCase();
          // Empty list items are allowed by RFC 9110 §5.6.1 but not worth reading here.
          if (!TOKEN.test(token) || token === "upgrade") return "other";
          if (token === "close") close = true;
          else if (token === "keep-alive") keepAliveToken = true;
        }
        break;
      case "te":
        // node:http answers an HTTP/1.0 request that accepts chunked with a chunked response: not ours to mimic.
        if (minor === 0) return "other";
        break;
      // Framing, upgrades and expectations are node:http's; llhttp reads Proxy-Connection as Connection.
      case "transfer-encoding":
      case "upgrade":
      case "expect":
      case "proxy-connection":
      case "http2-settings":
        return "other";
    }
    rawHeaders.push(name, value);
  }
  if (minor === 1 ? hosts !== 1 : hosts > 1) return "other";
  // llhttp keeps an HTTP/1.0 connection that says both; RFC 9112 §9.6 closes it. Either reading is node:http's.
  if (close && keepAliveToken) return "other";
  const length = contentLength === undefined ? 0 : Number(contentLength);
  if (bodyless && length !== 0) return "other";
  return {
    method,
    target,
    minor,
    rawHeaders,
    contentLength: length,
    keepAlive: !close && (minor === 1 || keepAliveToken),
    headLength,
  };
}
