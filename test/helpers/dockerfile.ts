// Reads a Dockerfile and a .dockerignore the way the Docker builder does, for tests that have no Docker engine.
//
// Dockerfile: line continuations, comments, ARG defaults substituted into FROM, stages with their
// instructions. .dockerignore: Go filepath.Match patterns with `**`, `!` exceptions, last match wins, and a
// pattern that matches a parent directory matching everything below it (moby's patternmatcher).

export interface Instruction {
  keyword: string;
  /** The text after the keyword, continuations joined. */
  args: string;
  /** `--name=value` flags (COPY --from, HEALTHCHECK --interval). */
  flags: Record<string, string>;
  /** The arguments after the flags: a parsed JSON array in exec form, else split on whitespace. */
  words: string[];
  /** True when written as a JSON array (exec form). */
  execForm: boolean;
  line: number;
}

export interface Stage {
  name: string | undefined;
  base: string;
  instructions: Instruction[];
}

export interface Dockerfile {
  /** ARGs declared before the first FROM, with their defaults. */
  globalArgs: Record<string, string>;
  stages: Stage[];
}

export function parseDockerfile(text: string): Dockerfile {
  const instructions: Instruction[] = [];
  const lines = text.split("\n");
  for (let index = 0; index < lines.length; index++) {
    const start = index;
    let line = lines[index]!;
    if (/^\s*(#|$)/.test(line)) continue;
    while (line.endsWith("\\") && index + 1 < lines.length) {
      index++;
      const next = lines[index]!;
      if (/^\s*#/.test(next)) continue; // comments inside a continuation are dropped, as the builder does
      line = `${line.slice(0, -1)} ${next.trim()}`;
    }
    const match = /^\s*([A-Za-z]+)\s+(.*)$/.exec(line);
    if (!match) throw new Error(`Dockerfile line ${start + 1}: cannot read "${line}"`);
    instructions.push(instruction(match[1]!.toUpperCase(), match[2]!.trim(), start + 1));
  }
  const globalArgs: Record<string, string> = {};
  const stages: Stage[] = [];
  for (const each of instructions) {
    if (each.keyword === "FROM") {
      const [base, as, name] = each.words;
      const resolved = base!.replaceAll(/\$\{(\w+)\}|\$(\w+)/g, (_, braced, bare) => {
        const value = globalArgs[braced ?? bare];
        if (value === undefined)
          throw new Error(`Dockerfile line ${each.line}: ARG ${braced ?? bare} has no default`);
        return value;
      });
      stages.push({ name: as?.toUpperCase() === "AS" ? name : undefined, base: resolved, instructions: [] });
    } else if (stages.length === 0) {
      if (each.keyword !== "ARG")
        throw new Error(`Dockerfile line ${each.line}: ${each.keyword} before FROM`);
      const [key, value] = each.args.split("=");
      globalArgs[key!] = value ?? "";
    } else {
      stages.at(-1)!.instructions.push(each);
    }
  }
  return { globalArgs, stages };
}

function instruction(keyword: string, args: string, line: number): Instruction {
  const flags: Record<string, string> = {};
  let rest = args;
  for (;;) {
    const flag = /^--([\w-]+)(?:=(\S+))?\s*/.exec(rest);
    if (!flag) break;
    flags[flag[1]!] = flag[2] ?? "true";
    rest = rest.slice(flag[0].length);
  }
  // HEALTHCHECK's flags come before CMD, whose arguments are then the command.
  if (keyword === "HEALTHCHECK" && rest.startsWith("CMD ")) {
    flags.CMD = "true";
    rest = rest.slice(4).trim();
  }
  if (rest.startsWith("[")) {
    const words = JSON.parse(rest) as unknown;
    if (!Array.isArray(words) || !words.every((word) => typeof word === "string")) {
      throw new Error(`Dockerfile line ${line}: ${keyword}'s JSON array must hold strings`);
    }
    return { keyword, args, flags, words, execForm: true, line };
  }
  return { keyword, args, flags, words: rest.split(/\s+/).filter(Boolean), execForm: false, line };
}

interface IgnorePattern {
  exclusion: boolean;
  regex: RegExp;
  text: string;
}

/** A .dockerignore as a predicate: `excluded("src/cli/main.ts")`. */
export function dockerignore(text: string): { excluded(file: string): boolean; patterns: string[] } {
  const patterns: IgnorePattern[] = [];
  for (const raw of text.split("\n")) {
    let line = raw.trim();
    if (line === "" || line.startsWith("#")) continue;
    const exclusion = line.startsWith("!");
    if (exclusion) line = line.slice(1).trim();
    line = cleanPath(line);
    if (/[[\]\\]/.test(line))
      throw new Error(`.dockerignore: "${raw}": character classes and escapes are not supported here`);
    patterns.push({ exclusion, regex: globToRegex(line), text: raw.trim() });
  }
  return {
    patterns: patterns.map((pattern) => pattern.text),
    excluded(file: string) {
      const cleaned = cleanPath(file);
      const parents = cleaned.split("/").slice(0, -1);
      let matched = false;
      for (const pattern of patterns) {
        // An exclusion can only undo a match, and an inclusion only matters when not yet matched.
        if (pattern.exclusion !== matched) continue;
        let match = pattern.regex.test(cleaned);
        for (let depth = 1; !match && depth <= parents.length; depth++) {
          match = pattern.regex.test(parents.slice(0, depth).join("/"));
        }
        if (match) matched = !pattern.exclusion;
      }
      return matched;
    },
  };
}

function cleanPath(value: string): string {
  return value.replace(/^(\.\/|\/)+/, "").replace(/\/+$/, "") || ".";
}

function globToRegex(pattern: string): RegExp {
  let source = "";
  for (let index = 0; index < pattern.length; index++) {
    const char = pattern[index]!;
    if (char === "*" && pattern[index + 1] === "*") {
      index++;
      if (pattern[index + 1] === "/") {
        index++;
        source += "(?:.*/)?";
      } else {
        source += ".*";
      }
    } else if (char === "*") source += "[^/]*";
    else if (char === "?") source += "[^/]";
    else source += char.replace(/[.+^${}()|]/g, "\\$&");
  }
  return new RegExp(`^${source}$`);
}
