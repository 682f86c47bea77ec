// Compiles `from` and `paths` patterns once, into matchers that run per request without regexes or allocation.

import { pathPatternProblem } from "../config/index.ts";
import { MtlsdError } from "../errors.ts";
import { normalizePath } from "./path.ts";

function invalid(field: string, message: string): MtlsdError {
  return new MtlsdError("POLICY_INVALID", `${field}: ${message}`);
}

/**
 * Istio string match (istio/api security/v1beta1/authorization_policy.proto, `Rule`): exact "abc", prefix "abc*",
 * suffix "*abc", presence "*". Returns the kind and the literal part.
 */
function classify(
  pattern: string,
  field: string,
): { kind: "exact" | "prefix" | "suffix" | "presence"; text: string } {
  if (pattern === "") throw invalid(field, "expected a pattern, found an empty string");
  if (pattern === "*") return { kind: "presence", text: "" };
  const first = pattern.indexOf("*");
  if (first === -1) return { kind: "exact", text: pattern };
  if (first === pattern.length - 1) return { kind: "prefix", text: pattern.slice(0, -1) };
  if (first === 0 && pattern.indexOf("*", 1) === -1) return { kind: "suffix", text: pattern.slice(1) };
  throw invalid(
    field,
    `expected an exact value, "prefix*", "*suffix" or "*", found ${JSON.stringify(pattern)} ("*" may only be first or last)`,
  );
}

/** Matches a request's source identity against one `from` list. */
export class SourceMatcher {
  private readonly presence: boolean;
  private readonly exact: ReadonlySet<string>;
  private readonly prefixes: readonly string[];
  private readonly suffixes: readonly string[];

  constructor(patterns: readonly string[], field: string) {
    const exact = new Set<string>();
    const prefixes: string[] = [];
    const suffixes: string[] = [];
    let presence = false;
    patterns.forEach((pattern, i) => {
      const { kind, text } = classify(pattern, `${field}[${i}]`);
      if (kind === "presence") presence = true;
      else if (kind === "exact") exact.add(text);
      else if (kind === "prefix") prefixes.push(text);
      else suffixes.push(text);
    });
    this.presence = presence;
    this.exact = exact;
    this.prefixes = prefixes;
    this.suffixes = suffixes;
  }

  /** An unauthenticated source (null) matches no pattern, not even "*": Istio's presence match needs a value. */
  matches(source: string | null): boolean {
    if (source === null || source === "") return false;
    if (this.presence || this.exact.has(source)) return true;
    for (const p of this.prefixes) if (source.startsWith(p)) return true;
    for (const s of this.suffixes) if (source.endsWith(s)) return true;
    return false;
  }
}

/**
 * An Istio path template (`{*}` one non-empty segment, `{**}` the rest, and only as the last operator), compiled
 * to the semantics of the Envoy URI template it becomes (envoy source/extensions/path/uri_template_lib): `{*}` is
 * `[pchar]+` and `{**}` is `[pchar/]*`, so `/foo/{**}` matches `/foo/` and `/foo/a/b` but not `/foo`.
 * Deliberately wider than Envoy inside a segment: Envoy's `{*}` does not match segments holding `*` or `=`, which
 * would let `/admin/a=b` slip past a DENY on `/admin/{*}`; here any non-empty segment matches.
 */
interface PathTemplate {
  /** Segments before `{**}` (or all of them): a literal, or null for `{*}`. */
  readonly head: ReadonlyArray<string | null>;
  /** Whether the template ends with `{**}` (possibly followed by literal segments, kept in `tail`). */
  readonly glob: boolean;
  /** The literal text after `{**}`, starting with "/" (e.g. "/meta", or "/" for a trailing slash), or "". */
  readonly tail: string;
}

function matchTemplate(t: PathTemplate, path: string): boolean {
  const len = path.length;
  let pos = 1; // just past the leading "/"
  for (const literal of t.head) {
    if (pos > len) return false; // the path has fewer segments than the template
    let end = path.indexOf("/", pos);
    if (end === -1) end = len;
    if (literal === null) {
      if (end === pos) return false;
    } else if (end - pos !== literal.length || !path.startsWith(literal, pos)) {
      return false;
    }
    pos = end + 1;
  }
  if (!t.glob) return pos === len + 1;
  // `{**}` sits right after a "/" that the path must have, then anything, then the literal tail.
  return pos <= len && len - pos >= t.tail.length && path.endsWith(t.tail);
}

const HEX = "0123456789ABCDEF";

/** Decodes unreserved escapes and uppercases the rest, as normalizePath does; malformed escapes are left for it to report. */
function canonicalEscapes(text: string): string {
  if (!text.includes("%")) return text;
  return text.replace(/%([0-9A-Fa-f])([0-9A-Fa-f])/g, (_, hi: string, lo: string) => {
    const ch = String.fromCharCode(Number.parseInt(hi + lo, 16));
    return /[A-Za-z0-9\-._~]/.test(ch)
      ? ch
      : `%${HEX[Number.parseInt(hi, 16)]}${HEX[Number.parseInt(lo, 16)]}`;
  });
}

/** Requests are matched after normalization, so a pattern that is not itself normalized could never match. */
function requireNormalized(candidate: string, field: string, pattern: string): void {
  const r = normalizePath(candidate);
  if (!r.ok) throw invalid(field, `${JSON.stringify(pattern)} can never match a request: ${r.detail}`);
  if (r.query !== "") {
    throw invalid(field, `${JSON.stringify(pattern)} contains "?": paths are matched without the query`);
  }
  if (r.path !== candidate) {
    throw invalid(
      field,
      `${JSON.stringify(pattern)} is not a normalized path (requests are matched after merging slashes and resolving dot segments, so it would never match)`,
    );
  }
}

/** Compiles a template that `pathPatternProblem` accepted: operators are whole segments, `{**}` is the last one. */
function compileTemplate(pattern: string, field: string): PathTemplate {
  const segments = pattern.slice(1).split("/");
  const head: Array<string | null> = [];
  let glob = false;
  const tail: string[] = [];
  segments.forEach((seg, i) => {
    if (seg === "{**}") glob = true;
    else if (seg === "{*}") head.push(null);
    else {
      const literal = canonicalEscapes(seg);
      // Only a trailing slash may leave an empty segment; dot segments never survive normalization.
      if (literal === "" && i !== segments.length - 1) {
        throw invalid(
          field,
          `${JSON.stringify(pattern)} has an empty segment ("//"), which a normalized path never has`,
        );
      }
      if (literal !== "") requireNormalized(`/${literal}`, field, pattern);
      if (glob) tail.push(literal);
      else head.push(literal);
    }
  });
  return { head, glob, tail: tail.length > 0 ? `/${tail.join("/")}` : "" };
}

/** Matches a normalized path against one `paths` list. */
export class PathMatcher {
  private readonly any: boolean;
  private readonly exact: ReadonlySet<string>;
  private readonly prefixes: readonly string[];
  private readonly suffixes: readonly string[];
  private readonly templates: readonly PathTemplate[];

  constructor(patterns: readonly string[], field: string) {
    const exact = new Set<string>();
    const prefixes: string[] = [];
    const suffixes: string[] = [];
    const templates: PathTemplate[] = [];
    let any = false;
    patterns.forEach((pattern, i) => {
      const at = `${field}[${i}]`;
      // The config schema refuses these first; a policy built another way gets the same advice.
      const problem = pathPatternProblem(pattern);
      if (problem) throw invalid(at, `${JSON.stringify(pattern)}: ${problem}`);
      if (pattern.includes("{*}") || pattern.includes("{**}")) {
        templates.push(compileTemplate(pattern, at));
        return;
      }
      const { kind, text } = classify(pattern, at);
      const literal = canonicalEscapes(text);
      if (kind === "presence") {
        // A request path is never empty, so presence matches every path.
        any = true;
      } else if (kind === "exact") {
        requireNormalized(literal, at, pattern);
        exact.add(literal);
      } else if (kind === "prefix") {
        // Validate a completed path: "/v1/.*" is a fine prefix for dotfiles even though "/v1/." alone is not.
        requireNormalized(`${literal}x`, at, pattern);
        prefixes.push(literal);
      } else {
        requireNormalized(`/x${literal}`, at, pattern);
        suffixes.push(literal);
      }
    });
    this.any = any;
    this.exact = exact;
    this.prefixes = prefixes;
    this.suffixes = suffixes;
    this.templates = templates;
  }

  matches(path: string): boolean {
    if (this.any || this.exact.has(path)) return true;
    for (const p of this.prefixes) if (path.startsWith(p)) return true;
    for (const s of this.suffixes) if (path.endsWith(s)) return true;
    for (const t of this.templates) if (matchTemplate(t, path)) return true;
    return false;
  }
}
