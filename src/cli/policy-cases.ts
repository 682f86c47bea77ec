// Reads the CASES.yaml of `mtlsd policy test`: a list of requests with the decision each must get.
import { readFileSync } from "node:fs";
import { isMap, isNode, isSeq, LineCounter, parseDocument } from "yaml";
import { MtlsdError } from "../errors.ts";
import { parseSpiffeId } from "../identity/index.ts";

export type ExpectedVerdict = "allow" | "deny" | "bad_path";
export type ExpectedShadow = "shadow_allow" | "shadow_deny" | "none";

/** One row of the table: a request and what must happen to it. */
export interface PolicyCase {
  /** 1-based position in the file, as people count. */
  number: number;
  line: number | undefined;
  name: string | undefined;
  /** A SPIFFE ID, or null for an unauthenticated (plaintext) caller. */
  from: string | null;
  method: string;
  path: string;
  expect: ExpectedVerdict;
  /** When given, the deciding rule must be this one ("default" and "override" included). */
  rule: string | undefined;
  shadow: ExpectedShadow | undefined;
}

const KEYS = ["name", "from", "method", "path", "expect", "rule", "shadow"] as const;
const VERDICTS: readonly string[] = ["allow", "deny", "bad_path"];
const SHADOWS: readonly string[] = ["shadow_allow", "shadow_deny", "none"];
// RFC 9110 section 5.6.2: a method is a token.
const METHOD = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;

/** What `--from` and a case's `from` accept: a SPIFFE ID, or `unauthenticated` (absent means the same). */
export function parseSource(
  value: string | undefined,
): { ok: true; source: string | null } | { ok: false; problem: string } {
  if (value === undefined || value === "unauthenticated") return { ok: true, source: null };
  const parsed = parseSpiffeId(value);
  if (parsed.ok) return { ok: true, source: value };
  return {
    ok: false,
    problem: `expected a SPIFFE ID like spiffe://example.org/ns/frontend/sa/frontend, or "unauthenticated"; found ${JSON.stringify(value)} (${parsed.reason})`,
  };
}

export function isMethod(value: string): boolean {
  return METHOD.test(value);
}

/**
 * Parses and checks the whole file before anything runs, and reports every problem at once with the case number
 * and line, so a CI log says exactly which row to fix. Throws MtlsdError CASES_INVALID or CASES_UNREADABLE.
 */
export function loadPolicyCases(file: string): PolicyCase[] {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (error) {
    const reason =
      (error as NodeJS.ErrnoException).code === "ENOENT" ? "no such file" : (error as Error).message;
    throw new MtlsdError("CASES_UNREADABLE", `${file}: cannot read the cases file: ${reason}`, {
      cause: error,
    });
  }
  const lineCounter = new LineCounter();
  const document = parseDocument(text, { lineCounter, uniqueKeys: true, prettyErrors: false });
  if (document.errors.length > 0) {
    const problems = document.errors.map(
      (error) => `  line ${lineCounter.linePos(error.pos[0]).line}: ${error.message.split("\n")[0]}`,
    );
    throw invalid(file, problems);
  }
  const root = document.contents;
  if (!isSeq(root)) {
    throw invalid(file, [
      "  (top level): expected a list of cases, each like {from: spiffe://..., method: GET, path: /v1/x, expect: allow}",
    ]);
  }
  const problems: string[] = [];
  const cases: PolicyCase[] = [];
  root.items.forEach((node, index) => {
    const number = index + 1;
    const line = isNode(node) && node.range ? lineCounter.linePos(node.range[0]).line : undefined;
    const where = `  case ${number}${line ? ` (line ${line})` : ""}`;
    if (!isMap(node)) {
      problems.push(`${where}: expected a mapping with path and expect`);
      return;
    }
    const value = node.toJSON() as Record<string, unknown>;
    const before = problems.length;
    for (const key of Object.keys(value)) {
      if (!(KEYS as readonly string[]).includes(key)) {
        problems.push(`${where}: unknown key ${JSON.stringify(key)}; the keys are ${KEYS.join(", ")}`);
      }
    }
    const text = (key: string): string | undefined => {
      const field = value[key];
      if (field === undefined || field === null) return undefined;
      if (typeof field === "string") return field;
      problems.push(`${where}: ${key}: expected a string, found ${JSON.stringify(field)}`);
      return undefined;
    };
    const name = text("name");
    const rule = text("rule");
    const source = parseSource(text("from"));
    if (!source.ok) problems.push(`${where}: from: ${source.problem}`);
    const method = text("method") ?? "GET";
    if (!isMethod(method))
      problems.push(`${where}: method: expected an HTTP method like GET, found ${JSON.stringify(method)}`);
    const path = text("path");
    if (path === undefined || path === "")
      problems.push(`${where}: path: expected a request path like /v1/orders/42, found nothing`);
    const expect = text("expect");
    if (expect === undefined || !VERDICTS.includes(expect)) {
      problems.push(
        `${where}: expect: expected one of ${VERDICTS.join(" | ")}, found ${expect === undefined ? "nothing" : JSON.stringify(expect)}`,
      );
    }
    const shadow = text("shadow");
    if (shadow !== undefined && !SHADOWS.includes(shadow)) {
      problems.push(
        `${where}: shadow: expected one of ${SHADOWS.join(" | ")}, found ${JSON.stringify(shadow)}`,
      );
    }
    if (problems.length > before || !source.ok) return;
    cases.push({
      number,
      line,
      name,
      from: source.source,
      method,
      path: path!,
      expect: expect as ExpectedVerdict,
      rule,
      shadow: shadow as ExpectedShadow | undefined,
    });
  });
  if (problems.length > 0) throw invalid(file, problems);
  if (cases.length === 0)
    throw invalid(file, ["  (top level): the list of cases is empty; nothing would be tested"]);
  return cases;
}

function invalid(file: string, problems: string[]): MtlsdError {
  const count = problems.length === 1 ? "1 problem" : `${problems.length} problems`;
  return new MtlsdError(
    "CASES_INVALID",
    `${file}: invalid policy test cases (${count}); nothing was tested\n${problems.join("\n")}`,
  );
}
