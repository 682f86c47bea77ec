// fast-check pieces for HTTP/1.1 heads and their mutations, shared by the request and response parser suites:
// both measure a reader of ours against llhttp by generating valid heads, then breaking them in the same ways.
import fc from "fast-check";

export const chr = (code: number): string => String.fromCharCode(code);
export const latin1 = (bytes: Uint8Array): string => Buffer.from(bytes).toString("latin1");
export const bytesOf = (text: string): Buffer => Buffer.from(text, "latin1");

/** RFC 9110 §5.6.2: the characters of a token (a method, a field name, a chunk extension's name). */
export const TCHAR = "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
export const blank = fc.constantFrom(" ", "\t");
export const token = fc.string({ unit: fc.constantFrom(...TCHAR), minLength: 1, maxLength: 12 });
/** Optional whitespace around a field value, empty most often. */
export const ows = fc.constantFrom("", "", " ", "\t", "  ", " \t ");

/** A field value: empty, one character, or blanks between two `visible` characters (what a value may end with). */
export function fieldValue(visible: fc.Arbitrary<string>): fc.Arbitrary<string> {
  return fc.oneof(
    fc.constant(""),
    visible,
    fc
      .tuple(visible, fc.string({ unit: fc.oneof(visible, blank), maxLength: 24 }), visible)
      .map((parts) => parts.join("")),
  );
}

/**
 * A field name: a token or one of `common` (names a reader might treat as special, `constructor` and `__proto__`
 * among them), never one of `excluded` (the framing fields a model adds itself), in any case.
 */
export function fieldName(common: readonly string[], excluded: ReadonlySet<string>): fc.Arbitrary<string> {
  return fc.oneof(token, fc.constantFrom(...common)).filter((name) => !excluded.has(name.toLowerCase()));
}

/** A field as it is read (name, value) and as it is written, with optional whitespace around the value. */
export interface Field {
  name: string;
  value: string;
  line: string;
}

export function field(name: fc.Arbitrary<string>, value: fc.Arbitrary<string>): fc.Arbitrary<Field> {
  return fc
    .tuple(name, ows, value, ows)
    .map(
      ([name, before, value, after]): Field => ({ name, value, line: `${name}:${before}${value}${after}` }),
    );
}

/**
 * How a head is broken: a fragment inserted at, or written over, any place; bytes deleted; a fragment put before a
 * line's CRLF (`line-end`: whitespace and separators at the end of a value are where readers differ most); a CRLF
 * made a bare LF or a bare CR; a line repeated (a second Content-Length, Transfer-Encoding or Host).
 */
export type MutationOp = "insert" | "replace" | "delete" | "line-end" | "bare-lf" | "bare-cr" | "repeat-line";

export interface Mutation {
  op: MutationOp;
  at: number;
  fragment: string;
  length: number;
}

/**
 * One to three mutations, each an op from `ops` (repeat one to make it likelier) with a fragment from `fragments`
 * (bytes that break a head when put in the wrong place).
 */
export function mutations(
  ops: readonly MutationOp[],
  fragments: readonly string[],
): fc.Arbitrary<Mutation[]> {
  const mutation = fc.record({
    op: fc.constantFrom(...ops),
    at: fc.nat(),
    fragment: fc.constantFrom(...fragments),
    length: fc.integer({ min: 1, max: 4 }),
  });
  return fc.array(mutation, { minLength: 1, maxLength: 3 });
}

/** `text` with `changes` made in turn. */
export function mutated(text: string, changes: readonly Mutation[]): string {
  return changes.reduce(mutate, text);
}

function mutate(text: string, change: Mutation): string {
  const at = change.at % (text.length + 1);
  switch (change.op) {
    case "insert":
      return text.slice(0, at) + change.fragment + text.slice(at);
    case "replace":
      return text.slice(0, at) + change.fragment + text.slice(at + change.fragment.length);
    case "delete":
      return text.slice(0, at) + text.slice(at + change.length);
    case "line-end":
    case "bare-lf":
    case "bare-cr": {
      const ends = [...text.matchAll(/\r\n/g)].map((match) => match.index);
      if (ends.length === 0) return text;
      const end = ends[change.at % ends.length]!;
      if (change.op === "line-end") return text.slice(0, end) + change.fragment + text.slice(end);
      return text.slice(0, end) + (change.op === "bare-lf" ? "\n" : "\r") + text.slice(end + 2);
    }
    case "repeat-line": {
      const lines = text.split("\r\n");
      const line = change.at % lines.length;
      lines.splice(line, 0, lines[line]!);
      return lines.join("\r\n");
    }
  }
  throw new Error(`unknown mutation ${change.op}`);
}
