// Parses and validates SPIFFE IDs by the rules of spiffe/spiffe standards/SPIFFE-ID.md §2.

/** A SPIFFE ID that passed every rule of SPIFFE-ID.md §2; `path` is "" for the trust-domain ID itself. */
export interface SpiffeId {
  readonly uri: string;
  readonly trustDomain: string;
  readonly path: string;
}

export type SpiffeIdResult = { ok: true; id: SpiffeId } | { ok: false; reason: string };

const SCHEME_PREFIX = "spiffe://";
// SPIFFE-ID.md §2.3: implementations must support IDs up to 2048 bytes and should not produce longer ones;
// mtlsd refuses longer ones so no peer can make us carry an unbounded identity through logs and labels.
const MAX_ID_BYTES = 2048;
// SPIFFE-ID.md §2.3, after RFC 3986 §3.2.2: the host, hence the trust domain name, is at most 255 bytes.
const MAX_TRUST_DOMAIN_BYTES = 255;

// Character classes as lookup tables indexed by char code: parsing runs once per peer connection.
// SPIFFE-ID.md §2.1: trust domain characters are [a-z0-9.-_]; §2.2: path segment characters are [a-zA-Z0-9.-_].
const TRUST_DOMAIN_CHAR = new Uint8Array(128);
const PATH_SEGMENT_CHAR = new Uint8Array(128);
for (let c = 0; c < 128; c++) {
  const lower = c >= 0x61 && c <= 0x7a;
  const upper = c >= 0x41 && c <= 0x5a;
  const digit = c >= 0x30 && c <= 0x39;
  const punct = c === 0x2e || c === 0x2d || c === 0x5f; // . - _
  TRUST_DOMAIN_CHAR[c] = lower || digit || punct ? 1 : 0;
  PATH_SEGMENT_CHAR[c] = lower || upper || digit || punct ? 1 : 0;
}

const SLASH = 0x2f;
const DOT = 0x2e;

/** Says why a trust domain name breaks SPIFFE-ID.md §2.1, or returns undefined when it is valid. */
function trustDomainProblem(td: string): string | undefined {
  if (td.length === 0) return "trust domain is missing";
  for (let i = 0; i < td.length; i++) {
    const c = td.charCodeAt(i);
    if (c < 128 && TRUST_DOMAIN_CHAR[c] === 1) continue;
    if (c >= 0x41 && c <= 0x5a) return "trust domain contains an uppercase letter";
    if (c === 0x3a) return "trust domain contains a port";
    if (c === 0x40) return "trust domain contains userinfo";
    if (c === 0x25) return "trust domain contains percent-encoding";
    return `trust domain contains the character ${JSON.stringify(td[i])}; only a-z 0-9 . - _ are allowed`;
  }
  if (td.length > MAX_TRUST_DOMAIN_BYTES) {
    return `trust domain is ${td.length} bytes, longer than ${MAX_TRUST_DOMAIN_BYTES}`;
  }
  return undefined;
}

/** Says why a path (starting with "/") breaks SPIFFE-ID.md §2.2, or returns undefined when it is valid. */
function pathProblem(path: string): string | undefined {
  let segmentStart = 1;
  for (let i = 1; i <= path.length; i++) {
    const c = i === path.length ? SLASH : path.charCodeAt(i);
    if (c === SLASH) {
      const length = i - segmentStart;
      if (length === 0) {
        return i === path.length ? "path has a trailing slash" : "path contains an empty segment";
      }
      if (
        path.charCodeAt(segmentStart) === DOT &&
        (length === 1 || (length === 2 && path.charCodeAt(i - 1) === DOT))
      ) {
        return `path contains the dot segment "${path.slice(segmentStart, i)}"`;
      }
      segmentStart = i + 1;
      continue;
    }
    if (c < 128 && PATH_SEGMENT_CHAR[c] === 1) continue;
    if (c === 0x25) return "path contains percent-encoding";
    return `path contains the character ${JSON.stringify(path[i])}; only a-z A-Z 0-9 . - _ are allowed in a segment`;
  }
  return undefined;
}

/** Parses `s` as a SPIFFE ID; on failure `reason` says which rule it broke, for logs and config errors. */
export function parseSpiffeId(s: string): SpiffeIdResult {
  if (s.length === 0) return { ok: false, reason: "SPIFFE ID is empty" };
  // UTF-16 length never exceeds UTF-8 length, so this never rejects a valid ID; longer non-ASCII input
  // that slips under it is rejected by the character rules below.
  if (s.length > MAX_ID_BYTES) {
    return { ok: false, reason: `SPIFFE ID is longer than ${MAX_ID_BYTES} bytes` };
  }
  // SPIFFE-ID.md §2: the scheme is `spiffe`; like go-spiffe we accept only the lowercase form that §2.1
  // requires of the rest of the authority, so one identity has one spelling in policy and logs.
  if (!s.startsWith(SCHEME_PREFIX)) {
    return {
      ok: false,
      reason: s.toLowerCase().startsWith(SCHEME_PREFIX)
        ? 'scheme must be lowercase "spiffe://"'
        : 'scheme is missing or not "spiffe://"',
    };
  }
  let end = s.length;
  // Query and fragment are reported as such wherever they start, even inside the trust domain.
  for (let i = SCHEME_PREFIX.length; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c === 0x3f) return { ok: false, reason: "ID contains a query" };
    if (c === 0x23) return { ok: false, reason: "ID contains a fragment" };
    if (c === SLASH && end === s.length) end = i;
  }
  const trustDomain = s.slice(SCHEME_PREFIX.length, end);
  const tdProblem = trustDomainProblem(trustDomain);
  if (tdProblem !== undefined) return { ok: false, reason: tdProblem };
  const path = s.slice(end);
  if (path.length > 0) {
    const problem = pathProblem(path);
    if (problem !== undefined) return { ok: false, reason: problem };
  }
  return { ok: true, id: { uri: s, trustDomain, path } };
}

/** True when `td` is a trust domain name allowed by SPIFFE-ID.md §2.1 (as in config `identity.trustDomain`). */
export function isValidTrustDomain(td: string): boolean {
  return trustDomainProblem(td) === undefined;
}
