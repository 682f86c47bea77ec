// Renders an Explanation as the plain text `mtlsd policy explain` prints: the decision first, then every rule's reasoning.

import type { Decision, Explanation, ToExplanation } from "./types.ts";

function describeDecision(d: Decision): string {
  const verdict = d.allow ? "ALLOW" : "DENY";
  if (d.reason === "override" && d.override) {
    return `${verdict} by break-glass override "${d.override.reason}" approved by ${d.override.approvedBy}, expires ${d.override.expires.toISOString()} (override)`;
  }
  if (d.rule === "default") return `${verdict} by the default (${d.reason})`;
  return `${verdict} by rule "${d.rule}" (${d.reason})`;
}

function describeTo(to: ReadonlyArray<ToExplanation>, toMatched: boolean, method: string): string {
  if (to.length === 0) return "to: every request";
  const parts = to.map((t) => {
    if (t.matched) return `to[${t.index}] matched`;
    const failed: string[] = [];
    if (!t.methodMatched) failed.push(`method ${method} not listed`);
    if (!t.pathMatched) failed.push("path did not match");
    return `to[${t.index}] ${failed.join(", ")}`;
  });
  return toMatched ? parts.filter((_, i) => to[i]?.matched).join("; ") : parts.join("; ");
}

/** Human-readable, multi-line; stable enough to paste into a ticket, not meant to be parsed. */
export function formatExplanation(e: Explanation): string {
  const lines: string[] = [];
  const source = e.source ?? "unauthenticated (no client certificate)";
  lines.push(`request:  ${e.method} ${e.target} from ${source}`);
  if (!e.normalized.ok) {
    lines.push(`path:     refused: ${e.normalized.detail}`);
    lines.push("decision: none; the sidecar answers 400 bad_path before policy runs");
    return lines.join("\n");
  }
  const { path, query } = e.normalized;
  const asGiven = path + query === e.target ? "unchanged" : `normalized from ${JSON.stringify(e.target)}`;
  lines.push(
    `path:     ${path}${query === "" ? "" : ` (query ${JSON.stringify(query)} is not matched)`} (${asGiven})`,
  );
  if (e.decision) {
    lines.push(`decision: ${describeDecision(e.decision)}`);
    for (const hit of e.decision.shadow) {
      lines.push(
        `shadow:   dry-run rule "${hit.rule}" would ${hit.result === "shadow_deny" ? "deny" : "allow"} (${hit.result})`,
      );
    }
  }
  lines.push(`default:  ${e.default}`);

  lines.push(
    e.rules.length === 0 ? "rules:    none" : "rules:    (a matching deny rule wins over any allow rule)",
  );
  for (const r of e.rules) {
    const mark = r.matched ? "[match]   " : "[no match]";
    const flags = r.dryRun ? " (dryRun: reported, not enforced)" : "";
    const from = r.fromMatched ? "from matched" : "from did not match";
    lines.push(
      `  ${mark} ${r.action.padEnd(5)} ${r.name}${flags}: ${from}; ${describeTo(r.to, r.toMatched, e.method)}`,
    );
  }

  if (e.overrides.length > 0) lines.push("overrides: (break-glass; apply only when no rule matched)");
  for (const o of e.overrides) {
    const mark = o.expired ? "[expired] " : o.matched ? "[match]   " : "[no match]";
    const from = o.fromMatched ? "from matched" : "from did not match";
    lines.push(
      `  ${mark} #${o.index} "${o.reason}" approved by ${o.approvedBy}, expires ${o.expires.toISOString()}: ${from}; ${describeTo(o.to, o.toMatched, e.method)}`,
    );
  }
  return lines.join("\n");
}
