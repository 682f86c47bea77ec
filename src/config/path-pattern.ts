// Which policy path patterns mtlsd accepts, and for those it refuses, what to write instead.
//
// The forms are Istio's (security/v1beta1 Operation.paths): exact, `prefix*`, `*suffix`, `*`, and templates with
// `{*}` (one segment) and `{**}` (zero or more segments, the last operator). Istio reads anything else as one
// of the first four, so `/api/**` becomes a prefix ending in a literal `*` that no request has: a rule that
// silently never matches. mtlsd refuses such a pattern and names the one the writer most likely meant.

const TEMPLATE_SEGMENT = /^(\{\*\}|\{\*\*\}|[^{}*]*)$/;

/** What is wrong with `value` as a path pattern, with what to write instead; undefined when it is fine. */
export function pathPatternProblem(value: string): string | undefined {
  if (value === "*") return undefined;
  if (value === "") return 'an empty pattern matches nothing: write "*" for every path';
  if (value.includes("{") || value.includes("}")) return templateProblem(value);
  const doubled = value.indexOf("**");
  if (doubled !== -1) return globstarProblem(value, doubled);
  const star = value.indexOf("*");
  if (star === -1) {
    return value.startsWith("/") ? undefined : `an exact path must start with /: write "/${value}"`;
  }
  if (value.indexOf("*", star + 1) !== -1 || (star !== 0 && star !== value.length - 1)) {
    return starProblem(value, star);
  }
  if (star !== 0 && !value.startsWith("/")) return `a prefix pattern must start with /: write "/${value}"`;
  return undefined;
}

/** `{*}` and `{**}` segments; literal segments may follow `{**}`, another operator may not (Istio). */
function templateProblem(value: string): string | undefined {
  if (value === "{**}" || value === "{*}") {
    return `a template must start with /: write "/${value}", or "*" for every path`;
  }
  if (!value.startsWith("/")) return `a path template must start with /: write "/${value}"`;
  const segments = value.split("/");
  let globAt = -1;
  for (const [index, segment] of segments.entries()) {
    if (!TEMPLATE_SEGMENT.test(segment)) return segmentProblem(segment);
    if (segment === "{*}" || segment === "{**}") {
      if (globAt !== -1) {
        return `{**} must be the last operator: only literal segments may follow it, as in "/files/{**}/meta"`;
      }
      if (segment === "{**}") globAt = index;
    }
  }
  return undefined;
}

function segmentProblem(segment: string): string {
  // `{id}`, `{name=*}`, `{name=**}`: Envoy's named variables, which Istio policies do not take.
  if (/^\{[^{}]*\}$/.test(segment)) {
    return `"${segment}": named variables are not supported; write {*} for one segment or {**} for the rest`;
  }
  if (segment.includes("**")) {
    return `"${segment}": write {**} (in braces, a whole segment) for any number of segments`;
  }
  return `segment "${segment}" mixes {*} or {**} with other text: an operator is a whole segment ("/files/{*}"); to match a file ending, write a suffix pattern like "*.txt"`;
}

/** `/api/**`, `/**`, `/a/**\/b`: a glob from another tool; Istio's form is `{**}`, or a prefix. */
function globstarProblem(value: string, at: number): string {
  const before = value.slice(0, at);
  const after = value.slice(at + 2);
  if (before.endsWith("/") && after === "") {
    const base = before === "/" ? "" : before.slice(0, -1);
    const own = base === "" ? "" : ` (add "${base}" to match ${base} itself)`;
    return `"**" is not a pattern here: for every path under ${before}, write the template "${before}{**}" or the prefix "${before}*"${own}`;
  }
  if (before === "" || before === "*") {
    return `"**" is not a pattern here: for any path ending in ${after}, write the suffix "*${after}"`;
  }
  const template = value
    .split("/")
    .map((segment) => (segment === "**" ? "{**}" : segment))
    .join("/");
  if (template !== value && pathPatternProblem(template) === undefined) {
    return `"**" is not a pattern here: write the template ${quote(template)} ({**} in braces)`;
  }
  return `"**" is not a pattern here: write {**} as a whole segment, followed only by literal segments, like "/files/{**}/meta"`;
}

/** A `*` in the middle, or two of them. */
function starProblem(value: string, star: number): string {
  if (star === 0 && value.endsWith("*")) {
    return `a pattern has one * at most: "contains" cannot be said; list the paths, or use a template with {*} segments`;
  }
  const template = templateFor(value);
  if (template !== value && !template.replaceAll("{*}", "").includes("*")) {
    return `a * may only stand at the start or the end; for any one segment there, write the template ${quote(template)}`;
  }
  return `a * may only stand at the start or the end, and never inside a segment: list the paths, or use the prefix ${quote(
    `${value.slice(0, star)}*`,
  )}`;
}

/** The template that replaces each inner `*` by `{*}`: `/api/*\/items` → `/api/{*}/items`. */
function templateFor(value: string): string {
  const path = value.startsWith("/") ? value : `/${value}`;
  return path
    .split("/")
    .map((segment) => (segment === "*" ? "{*}" : segment))
    .join("/");
}

function quote(text: string): string {
  return JSON.stringify(text);
}
