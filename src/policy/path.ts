// Request-target normalization, so that the path the policy authorizes is byte for byte the path the app receives.
//
// Follows Istio's BASE + MERGE_SLASHES normalization (istio.io/latest/docs/reference/config/security/normalization/)
// and RFC 3986, and is stricter where a proxy and an app could read the same bytes differently:
// - `%2F`, `%5C` (CVE-2021-31920, CVE-2021-29492) and `%00` are refused instead of being left for the app to decode.
// - `#` is refused anywhere: a fragment is never sent on the wire, and forwarding it re-encoded let
//   `/user#x` slip past a DENY on `/user` (CVE-2021-39156, CVE-2021-32779).
// - A dot segment carrying path parameters (`..;`, `.;x=1`, `..%3B`) is refused: servlet containers strip the
//   parameter and then resolve the segment as `..`, so `/public/..;/admin` reaches `/admin` in the app while
//   looking like `/public/...` to us. Other `;` uses (matrix parameters, `;jsessionid=`) are left alone.
// - The path may hold only RFC 3986 `pchar` and `/` (plus `\`, which becomes `/` as in Istio BASE); anything
//   else must be percent-encoded. The query is forwarded verbatim and never matched, so it is only checked
//   for what no HTTP message may carry: `#`, spaces, control characters and bytes >= 0x80.

import type { PathResult } from "./types.ts";

const SLASH = 0x2f;
const DOT = 0x2e;
const PERCENT = 0x25;
const BACKSLASH = 0x5c;
const SEMICOLON = 0x3b;
const QUESTION = 0x3f;
const HASH = 0x23;

// Character classes of the path part, indexed by char code (ASCII only; everything >= 0x80 is refused).
const REJECT = 0;
const PLAIN = 1;
const SPECIAL = 2;

const PATH_CLASS = new Uint8Array(128);
const UNRESERVED = new Uint8Array(128);
for (let c = 0; c < 128; c++) {
  const ch = String.fromCharCode(c);
  // RFC 3986 section 2.3: unreserved = ALPHA / DIGIT / "-" / "." / "_" / "~"
  if (/[A-Za-z0-9\-._~]/.test(ch)) UNRESERVED[c] = 1;
  // RFC 3986 section 3.3: pchar = unreserved / pct-encoded / sub-delims / ":" / "@"
  if (/[A-Za-z0-9\-_~!$&'()*+,=:@]/.test(ch)) PATH_CLASS[c] = PLAIN;
}
for (const c of [SLASH, DOT, PERCENT, BACKSLASH, SEMICOLON]) PATH_CLASS[c] = SPECIAL;

const HEX_UPPER = "0123456789ABCDEF";

function hexValue(c: number): number {
  if (c >= 0x30 && c <= 0x39) return c - 0x30;
  if (c >= 0x41 && c <= 0x46) return c - 0x41 + 10;
  if (c >= 0x61 && c <= 0x66) return c - 0x61 + 10;
  return -1;
}

function refuse(detail: string): PathResult {
  return { ok: false, detail };
}

function describeCharacter(c: number, at: number, part: "path" | "query"): string {
  if (c === HASH) {
    return `a fragment ("#" at offset ${at}) is not allowed in a request-target: fragments are never sent to the app`;
  }
  if (c === 0x20) return `a space (offset ${at}) is not allowed in the ${part}`;
  if (c < 0x20 || c === 0x7f) {
    return `control character 0x${c.toString(16).padStart(2, "0")} (offset ${at}) is not allowed in the ${part}`;
  }
  if (c >= 0x80) return `non-ASCII character (offset ${at}) is not allowed in the ${part}: percent-encode it`;
  return `character ${JSON.stringify(String.fromCharCode(c))} (offset ${at}) must be percent-encoded in the ${part}`;
}

/**
 * Normalizes an origin-form request-target (`/a/b?x=1`). On success the caller authorizes `path` and forwards
 * `path + query` to the app; `query` is "" or starts with "?" and is kept verbatim.
 */
export function normalizePath(target: string): PathResult {
  const len = target.length;
  if (len === 0 || target.charCodeAt(0) !== SLASH) {
    return refuse('the request-target must be in origin-form, starting with "/"');
  }

  // One scan: validate the path characters, find the query, and notice whether anything needs rewriting.
  let queryAt = len;
  let needsRewrite = false;
  let prev = 0;
  for (let i = 0; i < len; i++) {
    const c = target.charCodeAt(i);
    if (c === QUESTION) {
      queryAt = i;
      break;
    }
    const cls = c < 128 ? PATH_CLASS[c] : REJECT;
    if (cls === PLAIN) {
      prev = c;
      continue;
    }
    if (cls === REJECT) return refuse(describeCharacter(c, i, "path"));
    // "//" merges, "/." may start a dot segment; "%", "\" and ";" always take the slow path.
    if (c === SLASH || c === DOT) {
      if (prev === SLASH) needsRewrite = true;
    } else {
      needsRewrite = true;
    }
    prev = c;
  }
  for (let i = queryAt + 1; i < len; i++) {
    const c = target.charCodeAt(i);
    if (c <= 0x20 || c >= 0x7f || c === HASH) return refuse(describeCharacter(c, i, "query"));
  }

  const path = queryAt === len ? target : target.slice(0, queryAt);
  const query = queryAt === len ? "" : target.slice(queryAt);
  if (!needsRewrite) return { ok: true, path, query };
  return rewrite(path, query);
}

/** The slow path: decode unreserved escapes once, turn `\` into `/`, then merge slashes and resolve dot segments. */
function rewrite(raw: string, query: string): PathResult {
  let decoded = "";
  let runStart = 0;
  const len = raw.length;
  for (let i = 0; i < len; i++) {
    const c = raw.charCodeAt(i);
    if (c === BACKSLASH) {
      decoded += `${raw.slice(runStart, i)}/`;
      runStart = i + 1;
    } else if (c === PERCENT) {
      const hi = i + 1 < len ? hexValue(raw.charCodeAt(i + 1)) : -1;
      const lo = i + 2 < len ? hexValue(raw.charCodeAt(i + 2)) : -1;
      if (hi < 0 || lo < 0) {
        return refuse(`malformed percent-escape ${JSON.stringify(raw.slice(i, i + 3))} at offset ${i}`);
      }
      const v = hi * 16 + lo;
      if (v === SLASH) return refuse(`an encoded slash (${raw.slice(i, i + 3)}) is not allowed in the path`);
      if (v === BACKSLASH)
        return refuse(`an encoded backslash (${raw.slice(i, i + 3)}) is not allowed in the path`);
      if (v === 0) return refuse("an encoded NUL (%00) is not allowed in the path");
      // Istio BASE: decode unreserved characters once; everything else stays encoded, in one canonical
      // (uppercase) spelling so a pattern and a path that differ only in hex case still compare equal.
      decoded += raw.slice(runStart, i);
      decoded +=
        v < 128 && UNRESERVED[v] === 1 ? String.fromCharCode(v) : `%${HEX_UPPER[hi]}${HEX_UPPER[lo]}`;
      i += 2;
      runStart = i + 1;
    }
  }
  decoded += raw.slice(runStart);

  // RFC 3986 section 5.2.4 (remove_dot_segments), plus MERGE_SLASHES: empty segments are dropped. A path that
  // ended in "/", "/." or "/.." keeps its trailing slash, as remove_dot_segments does.
  const segments = decoded.split("/");
  const out: string[] = [];
  let trailingSlash = false;
  for (let i = 1; i < segments.length; i++) {
    const seg = segments[i]!;
    const last = i === segments.length - 1;
    if (seg.charCodeAt(0) === DOT && isDotSegmentWithParameters(seg)) {
      return refuse(
        `the segment ${JSON.stringify(seg)} is a dot segment with path parameters; servlet containers resolve it as "${seg.startsWith("..") ? ".." : "."}"`,
      );
    }
    if (seg === "" || seg === ".") {
      trailingSlash = last;
    } else if (seg === "..") {
      out.pop();
      trailingSlash = last;
    } else {
      out.push(seg);
      trailingSlash = false;
    }
  }
  let path = `/${out.join("/")}`;
  if (trailingSlash && out.length > 0) path += "/";
  return { ok: true, path, query };
}

/** True for `.;…`, `..;…`, `.%3B…`, `..%3B…` (escapes are already uppercase here). */
function isDotSegmentWithParameters(seg: string): boolean {
  const afterDots = seg.charCodeAt(1) === DOT ? 2 : 1;
  return seg.charCodeAt(afterDots) === SEMICOLON || seg.startsWith("%3B", afterDots);
}
