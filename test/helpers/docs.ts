// Reads the project's Markdown pages as GitHub renders them: their headings' anchors and their relative links.
import { existsSync, readdirSync, readFileSync } from "node:fs";
import path from "node:path";

export const ROOT = new URL("../../", import.meta.url).pathname;

/** README.md and every page in docs/, as paths relative to the repository root. */
export function markdownPages(): string[] {
  const docs = readdirSync(path.join(ROOT, "docs"))
    .filter((name) => name.endsWith(".md"))
    .sort()
    .map((name) => `docs/${name}`);
  return ["README.md", ...docs];
}

/** The text outside fenced code blocks, line by line (code blocks are not Markdown: no headings, no links). */
function proseLines(text: string): string[] {
  const lines: string[] = [];
  let fence: string | undefined;
  for (const line of text.split("\n")) {
    const marker = /^\s*(```+|~~~+)/.exec(line)?.[1];
    if (marker && (fence === undefined || marker.startsWith(fence))) {
      fence = fence === undefined ? marker : undefined;
      continue;
    }
    if (fence === undefined) lines.push(line);
  }
  return lines;
}

/** GitHub's anchor for a heading: lowercase, punctuation dropped, spaces to hyphens (as github-slugger does). */
export function slug(heading: string): string {
  const text = heading
    .replace(/!?\[([^\]]*)\]\([^)]*\)/g, "$1")
    .replace(/<[^>]+>/g, "")
    .toLowerCase();
  return text.replace(/[^\p{L}\p{M}\p{N}\p{Pc} -]/gu, "").replaceAll(" ", "-");
}

/** Every anchor a page offers: its headings (duplicates numbered -1, -2, … as GitHub does) and explicit ids. */
export function anchorsOf(text: string): Set<string> {
  const anchors = new Set<string>();
  const seen = new Map<string, number>();
  for (const line of proseLines(text)) {
    const heading = /^#{1,6}\s+(.*?)\s*#*\s*$/.exec(line)?.[1];
    if (heading !== undefined) {
      const base = slug(heading);
      const count = seen.get(base) ?? 0;
      seen.set(base, count + 1);
      anchors.add(count === 0 ? base : `${base}-${count}`);
    }
    for (const [, id] of line.matchAll(/<a\s+(?:id|name)="([^"]+)"/g)) anchors.add(id!);
  }
  return anchors;
}

/** The targets of a page's links and images that stay inside the repository (no scheme, not mail). */
export function relativeLinks(text: string): string[] {
  const targets: string[] = [];
  for (const line of proseLines(text)) {
    const withoutCode = line.replace(/`[^`]*`/g, "");
    for (const [, target] of withoutCode.matchAll(/\]\(([^)\s]+)(?:\s+"[^"]*")?\)/g)) {
      if (!/^[a-z][a-z0-9+.-]*:/i.test(target!)) targets.push(target!);
    }
  }
  return targets;
}

/** The links of `page` (relative to ROOT) that lead nowhere: a missing file, or a missing anchor in a page. */
export function deadLinks(page: string, text: string, readPage = readRepoFile): string[] {
  const dead: string[] = [];
  for (const target of relativeLinks(text)) {
    const [file, anchor] = target.split("#", 2) as [string, string | undefined];
    const resolved =
      file === "" ? page : path.posix.normalize(path.posix.join(path.posix.dirname(page), file));
    const targetText = file === "" ? text : readPage(resolved);
    if (targetText === undefined) {
      dead.push(`${target} (no file ${resolved})`);
      continue;
    }
    if (anchor !== undefined && resolved.endsWith(".md") && !anchorsOf(targetText).has(anchor)) {
      dead.push(`${target} (no heading with anchor #${anchor} in ${resolved})`);
    }
  }
  return dead;
}

/** A file's text, "" for a directory, undefined when nothing is there. */
function readRepoFile(relative: string): string | undefined {
  const full = path.join(ROOT, relative);
  if (!existsSync(full)) return undefined;
  try {
    return readFileSync(full, "utf8");
  } catch {
    return "";
  }
}
