// Builds, parses and forwards X-Forwarded-Client-Cert exactly as Envoy does (http_conn_man/headers.rst).
import { MtlsdError } from "../errors.ts";

/** Envoy's forward_client_cert_details, minus ALWAYS_FORWARD_ONLY, which trusts unauthenticated callers. */
export type XfccMode = "sanitize_set" | "append_forward" | "sanitize" | "forward_only";
export const XFCC_MODES: readonly XfccMode[] = ["sanitize_set", "append_forward", "sanitize", "forward_only"];

/** The peer-certificate details an element can carry after By and Hash (Envoy's set_current_client_cert_details). */
export type XfccDetail = "Cert" | "Chain" | "Subject" | "URI" | "DNS";
/**
 * The order Envoy emits details in: its http_connection_manager config pushes cert, chain, subject, uri, dns
 * in that order (source/extensions/filters/network/http_connection_manager/config.cc). With no Cert or
 * Chain this is DESIGN.md's By, Hash, Subject, URI, DNS.
 */
export const ENVOY_DETAIL_ORDER: readonly XfccDetail[] = ["Cert", "Chain", "Subject", "URI", "DNS"];

/** One XFCC element's content; `cert` and `chain` are already URL-encoded PEM, `subject` is RFC 2253. */
export interface XfccFields {
  /** Our own URI SANs: one `By` pair each. */
  by: readonly string[];
  /** Lowercase hex SHA-256 of the peer's DER leaf; omitted when empty, as Envoy does. */
  hash: string;
  /** Omitted when undefined; `Subject=""` when the subject is empty, as Envoy does. */
  subject?: string;
  /** One `URI` pair each, and a bare `URI=` when there are none, as Envoy does. */
  uris: readonly string[];
  dns: readonly string[];
  cert?: string;
  chain?: string;
}

/** A key/value pair as written in the header; keys compare case-insensitively (headers.rst). */
export interface XfccPair {
  key: string;
  value: string;
}
export type XfccElement = XfccPair[];

const SP = 0x20;
const HTAB = 0x09;
const DQUOTE = 0x22;
const COMMA = 0x2c;
const SEMICOLON = 0x3b;
const EQUALS = 0x3d;
const BACKSLASH = 0x5c;

// RFC 9110 §5.6.2 tchar: what a key may be made of.
const TCHAR = new Uint8Array(128);
for (const c of "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ") {
  TCHAR[c.charCodeAt(0)] = 1;
}

/** Says whether a value must be quoted: it holds a delimiter, an escape, or edge whitespace parsers strip. */
function needsQuotes(value: string): boolean {
  const n = value.length;
  if (n === 0) return false;
  const first = value.charCodeAt(0);
  const last = value.charCodeAt(n - 1);
  if (first === SP || first === HTAB || last === SP || last === HTAB) return true;
  for (let i = 0; i < n; i++) {
    const c = value.charCodeAt(i);
    if (c === COMMA || c === SEMICOLON || c === EQUALS || c === DQUOTE || c === BACKSLASH) return true;
  }
  return false;
}

/** headers.rst: a quoted value escapes `"` as `\"`; Envoy's parser also reads `\\` as `\`, so we write that. */
function quoted(key: string, value: string): string {
  checkHeaderSafe(key, value);
  return `"${value.replace(/["\\]/g, "\\$&")}"`;
}

/**
 * Envoy writes Subject (and Cert/Chain) raw inside the quotes, and apps that read Envoy's XFCC expect those
 * bytes, e.g. `Subject="O=Acme\, Inc."`. Raw is kept whenever it reads back unchanged (no `"`, no `\\` or
 * `\"` pair, no trailing `\`); otherwise the value is fully escaped, where Envoy's output would be lossy.
 */
function quotedRaw(key: string, value: string): string {
  checkHeaderSafe(key, value);
  for (let i = value.indexOf("\\"); i !== -1; i = value.indexOf("\\", i + 2)) {
    const next = value.charCodeAt(i + 1);
    if (Number.isNaN(next) || next === DQUOTE || next === BACKSLASH) return quoted(key, value);
  }
  return value.includes('"') ? quoted(key, value) : `"${value}"`;
}

function plainOrQuoted(key: string, value: string): string {
  if (needsQuotes(value)) return quoted(key, value);
  checkHeaderSafe(key, value);
  return value;
}

/**
 * Certificate fields are attacker-chosen bytes under a CA's signature; refusing anything outside printable
 * ASCII once per connection is cheaper than Node throwing ERR_INVALID_CHAR on every request.
 */
function checkHeaderSafe(key: string, value: string): void {
  for (let i = 0; i < value.length; i++) {
    const c = value.charCodeAt(i);
    if ((c < SP && c !== HTAB) || c > 0x7e) {
      throw new MtlsdError(
        "XFCC_INVALID_VALUE",
        `XFCC ${key} value has the character U+${c.toString(16).toUpperCase().padStart(4, "0")} at offset ${i}; ` +
          "only printable ASCII can go in the header",
      );
    }
  }
}

/**
 * Formats one XFCC element the way Envoy's mutateXfccRequestHeader does: By pairs, Hash, then `details`
 * in the given order (Envoy's own order by default). Cert, Chain and Subject are always quoted; other values
 * only when they need it, with `"` and `\` escaped. Cert, Chain and Subject go raw inside their quotes,
 * byte for byte as Envoy writes them (see quotedRaw).
 * Called once per connection. Throws MtlsdError XFCC_INVALID_VALUE on a value a header cannot carry.
 */
export function formatXfccElement(
  f: XfccFields,
  details: readonly XfccDetail[] = ENVOY_DETAIL_ORDER,
): string {
  const pairs: string[] = [];
  for (const by of f.by) pairs.push(`By=${plainOrQuoted("By", by)}`);
  if (f.hash !== "") pairs.push(`Hash=${plainOrQuoted("Hash", f.hash)}`);
  for (const detail of details) {
    switch (detail) {
      case "Cert":
        if (f.cert) pairs.push(`Cert=${quotedRaw("Cert", f.cert)}`);
        break;
      case "Chain":
        if (f.chain) pairs.push(`Chain=${quotedRaw("Chain", f.chain)}`);
        break;
      case "Subject":
        if (f.subject !== undefined) pairs.push(`Subject=${quotedRaw("Subject", f.subject)}`);
        break;
      case "URI":
        if (f.uris.length === 0) pairs.push("URI=");
        for (const uri of f.uris) pairs.push(`URI=${plainOrQuoted("URI", uri)}`);
        break;
      case "DNS":
        for (const dns of f.dns) pairs.push(`DNS=${plainOrQuoted("DNS", dns)}`);
        break;
    }
  }
  return pairs.join(";");
}

function skipWhitespace(h: string, i: number): number {
  while (i < h.length) {
    const c = h.charCodeAt(i);
    if (c !== SP && c !== HTAB) break;
    i++;
  }
  return i;
}

/** Throws when parsing, or returns -1 when only validating, so validation never allocates a message. */
function malformed(out: XfccElement[] | null, message: () => string): number {
  if (out !== null)
    throw new MtlsdError("XFCC_MALFORMED", `X-Forwarded-Client-Cert is malformed: ${message()}`);
  return -1;
}

/**
 * One pass over a header: counts its elements (and collects them into `out` when given), or reports the first
 * syntax error. Grammar (headers.rst): elements split by `,`, pairs by `;`, `key=value`, a value either
 * plain or double-quoted; `\"` and `\\` are escapes in both forms, as in Envoy's XFCC parser
 * (source/extensions/formatter/xfcc_value). Stricter than Envoy's parser, which skips what it cannot read:
 * an unterminated quote, a quote inside a plain value, text after a closing quote, a pair without `=` or
 * a key that is not an RFC 9110 token is an error. Whitespace around keys and values is ignored and so are
 * empty elements and pairs (RFC 9110 §5.6.1 asks recipients to skip empty list elements).
 */
function scanXfcc(h: string, out: XfccElement[] | null): number {
  const n = h.length;
  let elements = 0;
  let pairsInElement = 0;
  let element: XfccElement | null = null;
  let i = 0;
  for (;;) {
    i = skipWhitespace(h, i);
    if (i >= n) break;
    const c = h.charCodeAt(i);
    if (c === COMMA || c === SEMICOLON) {
      if (c === COMMA && pairsInElement > 0) {
        elements++;
        if (out !== null && element !== null) out.push(element);
        element = null;
        pairsInElement = 0;
      }
      i++;
      continue;
    }
    const keyStart = i;
    while (i < n) {
      const k = h.charCodeAt(i);
      if (k >= 128 || TCHAR[k] !== 1) break;
      i++;
    }
    const keyEnd = i;
    if (keyEnd === keyStart) {
      return malformed(
        out,
        () => `expected a key at offset ${keyStart}, found ${JSON.stringify(h[keyStart])}`,
      );
    }
    i = skipWhitespace(h, i);
    if (i >= n || h.charCodeAt(i) !== EQUALS) {
      return malformed(out, () => `key "${h.slice(keyStart, keyEnd)}" at offset ${keyStart} has no "="`);
    }
    i = skipWhitespace(h, i + 1);
    let value = "";
    if (i < n && h.charCodeAt(i) === DQUOTE) {
      const open = i;
      let segment = ++i;
      for (;;) {
        if (i >= n) return malformed(out, () => `the quote at offset ${open} is never closed`);
        const v = h.charCodeAt(i);
        if (v === DQUOTE) break;
        if (v === BACKSLASH && i + 1 < n) {
          const e = h.charCodeAt(i + 1);
          if (e === DQUOTE || e === BACKSLASH) {
            if (out !== null) value += h.slice(segment, i);
            segment = i + 1;
            i += 2;
            continue;
          }
        }
        i++;
      }
      if (out !== null) value += h.slice(segment, i);
      i = skipWhitespace(h, i + 1);
      if (i < n) {
        const after = h.charCodeAt(i);
        if (after !== SEMICOLON && after !== COMMA) {
          return malformed(
            out,
            () => `unexpected ${JSON.stringify(h[i])} at offset ${i} after a quoted value`,
          );
        }
      }
    } else {
      let segment = i;
      let end = i;
      while (i < n) {
        const v = h.charCodeAt(i);
        if (v === SEMICOLON || v === COMMA) break;
        if (v === DQUOTE) return malformed(out, () => `a quote at offset ${i} is inside an unquoted value`);
        if (v === BACKSLASH && i + 1 < n) {
          const e = h.charCodeAt(i + 1);
          if (e === DQUOTE || e === BACKSLASH) {
            if (out !== null) value += h.slice(segment, i);
            segment = i + 1;
            i += 2;
            end = i;
            continue;
          }
        }
        i++;
        if (v !== SP && v !== HTAB) end = i;
      }
      if (out !== null) value += h.slice(segment, end);
    }
    pairsInElement++;
    if (out !== null) {
      element ??= [];
      element.push({ key: h.slice(keyStart, keyEnd), value });
    }
  }
  if (pairsInElement > 0) {
    elements++;
    if (out !== null && element !== null) out.push(element);
  }
  return elements;
}

/**
 * Parses a whole header into its elements, oldest hop first. Throws MtlsdError XFCC_MALFORMED on a syntax
 * error (see scanXfcc); an empty header has no elements.
 */
export function parseXfcc(header: string): XfccElement[] {
  const out: XfccElement[] = [];
  scanXfcc(header, out);
  return out;
}

/** True when `header` parses; allocation-free, for the per-request path. */
export function isWellFormedXfcc(header: string): boolean {
  return scanXfcc(header, null) >= 0;
}

/**
 * The XFCC header the app receives, or undefined for none. `incoming` is the peer's header (several joined
 * with ","), `ours` our element for this connection, computed once per connection, or null when the peer
 * presented no client certificate — then every mode removes the header, as Envoy's do (but the unsafe
 * ALWAYS_FORWARD_ONLY, which mtlsd does not offer).
 *
 * Envoy forwards an incoming header verbatim. We scan it first (no allocation) and drop it when it does not
 * parse: with append_forward, a dangling quote in the peer's part would swallow our element into the peer's
 * value, so a parser downstream could not tell our By/Hash from theirs. append_forward then sends ours alone,
 * forward_only sends nothing. A header with no elements counts as absent.
 */
export function applyXfccMode(
  mode: XfccMode,
  incoming: string | undefined,
  ours: string | null,
): string | undefined {
  if (ours === null) return undefined;
  switch (mode) {
    case "sanitize_set":
      return ours;
    case "sanitize":
      return undefined;
    case "append_forward":
      return incoming !== undefined && scanXfcc(incoming, null) > 0 ? `${incoming},${ours}` : ours;
    case "forward_only":
      return incoming !== undefined && scanXfcc(incoming, null) > 0 ? incoming : undefined;
  }
}
