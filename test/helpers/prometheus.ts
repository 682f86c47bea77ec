// A strict parser of the Prometheus text exposition format (0.0.4), written from the spec, for scrape tests.
//
// https://prometheus.io/docs/instrumenting/exposition_formats/#text-based-format: lines end in \n; `# HELP name
// text` (escapes \\ and \n) and `# TYPE name counter|gauge|histogram|summary|untyped` at most once per family and
// before its samples; other `#` lines are comments; a sample is `name{label="value",...} value [timestamp]` with
// label values escaped as \\, \" and \n, and values as Go's ParseFloat reads them (NaN and ±Inf in any case).
// A family's lines are contiguous; a histogram has `_bucket` series with `le` (one `+Inf`), cumulative counts,
// `_sum` and `_count`. Anything else throws, naming the line, so a malformed exposition fails its scrape test.

export type MetricType = "counter" | "gauge" | "histogram" | "summary" | "untyped";

export interface Sample {
  /** The series name as written (`x_bucket`, `x_sum` for a histogram `x`). */
  name: string;
  labels: Record<string, string>;
  value: number;
  timestampMs?: number;
}

export interface MetricFamily {
  name: string;
  type: MetricType;
  help?: string;
  samples: Sample[];
}

const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*/;
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*/;
const TYPES = new Set<MetricType>(["counter", "gauge", "histogram", "summary", "untyped"]);
const SUFFIXES: Partial<Record<MetricType, readonly string[]>> = {
  histogram: ["_bucket", "_sum", "_count"],
  summary: ["_sum", "_count"],
};

class ParseError extends Error {
  constructor(line: number, text: string, problem: string) {
    super(`exposition line ${line}: ${problem}: ${JSON.stringify(text.slice(0, 200))}`);
  }
}

/** Parses a whole exposition; throws on the first line that breaks the format. */
export function parsePrometheusText(text: string): Map<string, MetricFamily> {
  if (text.length > 0 && !text.endsWith("\n")) throw new Error("exposition does not end with a newline");
  const families = new Map<string, MetricFamily>();
  const finished = new Set<string>();
  let current: MetricFamily | undefined;
  const seenSeries = new Set<string>();

  const family = (name: string, lineNo: number, line: string): MetricFamily => {
    if (current?.name === name) return current;
    if (finished.has(name) || families.has(name)) {
      throw new ParseError(lineNo, line, `lines of family ${name} are not contiguous`);
    }
    if (current) finished.add(current.name);
    current = { name, type: "untyped", samples: [] };
    families.set(name, current);
    return current;
  };

  const lines = text.split("\n");
  lines.pop();
  lines.forEach((line, index) => {
    const lineNo = index + 1;
    if (line.trim() === "") return;
    if (line.startsWith("#")) {
      const match = /^#\s+(HELP|TYPE)\s+(\S+)(?:\s(.*))?$/.exec(line);
      if (!match) return; // a comment
      const [, keyword, name, rest = ""] = match;
      if (!METRIC_NAME.test(name!) || METRIC_NAME.exec(name!)![0] !== name)
        throw new ParseError(lineNo, line, "bad metric name");
      const target = family(name!, lineNo, line);
      if (keyword === "HELP") {
        if (target.help !== undefined) throw new ParseError(lineNo, line, "second HELP");
        target.help = unescapeHelp(rest, lineNo, line);
      } else {
        if (target.samples.length > 0) throw new ParseError(lineNo, line, "TYPE after samples");
        if (!TYPES.has(rest.trim() as MetricType)) throw new ParseError(lineNo, line, "unknown type");
        if ((target as { typed?: boolean }).typed) throw new ParseError(lineNo, line, "second TYPE");
        (target as { typed?: boolean }).typed = true;
        target.type = rest.trim() as MetricType;
      }
      return;
    }
    const sample = parseSample(line, lineNo);
    const owner =
      current && sampleBelongs(current, sample.name) ? current : family(sample.name, lineNo, line);
    const key = `${sample.name}${JSON.stringify(Object.entries(sample.labels).sort())}`;
    if (seenSeries.has(key)) throw new ParseError(lineNo, line, "series repeated");
    seenSeries.add(key);
    owner.samples.push(sample);
  });
  for (const parsed of families.values()) {
    delete (parsed as { typed?: boolean }).typed;
    checkFamily(parsed);
  }
  return families;
}

function sampleBelongs(family: MetricFamily, name: string): boolean {
  if (name === family.name) return family.type !== "histogram";
  return (SUFFIXES[family.type] ?? []).some((suffix) => name === family.name + suffix);
}

function unescapeHelp(text: string, lineNo: number, line: string): string {
  return text.replace(/\\(.?)/g, (_all, next: string) => {
    if (next === "\\") return "\\";
    if (next === "n") return "\n";
    throw new ParseError(lineNo, line, `bad escape \\${next} in HELP`);
  });
}

function parseSample(line: string, lineNo: number): Sample {
  let at = 0;
  const nameMatch = METRIC_NAME.exec(line);
  if (!nameMatch) throw new ParseError(lineNo, line, "no metric name");
  const name = nameMatch[0];
  at = name.length;
  const labels: Record<string, string> = {};
  if (line[at] === "{") {
    at++;
    for (;;) {
      if (line[at] === "}") {
        at++;
        break;
      }
      const labelMatch = LABEL_NAME.exec(line.slice(at));
      if (!labelMatch) throw new ParseError(lineNo, line, `bad label name at column ${at + 1}`);
      const label = labelMatch[0];
      if (label.startsWith("__")) throw new ParseError(lineNo, line, `reserved label name ${label}`);
      if (Object.hasOwn(labels, label)) throw new ParseError(lineNo, line, `label ${label} twice`);
      at += label.length;
      if (line[at] !== "=" || line[at + 1] !== '"')
        throw new ParseError(lineNo, line, `expected ="…" after label ${label}`);
      at += 2;
      let value = "";
      for (;;) {
        const char = line[at];
        if (char === undefined) throw new ParseError(lineNo, line, "unterminated label value");
        if (char === '"') {
          at++;
          break;
        }
        if (char === "\\") {
          const next = line[at + 1];
          if (next === "\\") value += "\\";
          else if (next === '"') value += '"';
          else if (next === "n") value += "\n";
          else throw new ParseError(lineNo, line, `bad escape \\${next ?? ""} in label value`);
          at += 2;
          continue;
        }
        value += char;
        at++;
      }
      labels[label] = value;
      if (line[at] === ",") at++;
      else if (line[at] !== "}") throw new ParseError(lineNo, line, `expected , or } at column ${at + 1}`);
    }
  }
  const rest = line.slice(at);
  const parts = /^[ \t]+(\S+)(?:[ \t]+(-?\d+))?[ \t]*$/.exec(rest);
  if (!parts) throw new ParseError(lineNo, line, "expected a value and an optional timestamp");
  const value = parseValue(parts[1]!);
  if (value === undefined) throw new ParseError(lineNo, line, `bad value ${parts[1]}`);
  const sample: Sample = { name, labels, value };
  if (parts[2] !== undefined) sample.timestampMs = Number(parts[2]);
  return sample;
}

/** Go's strconv.ParseFloat, as Prometheus reads values: NaN and Inf in any case (prom-client writes "Nan"). */
function parseValue(text: string): number | undefined {
  if (/^nan$/i.test(text)) return Number.NaN;
  const infinity = /^([-+]?)inf(inity)?$/i.exec(text);
  if (infinity) return infinity[1] === "-" ? Number.NEGATIVE_INFINITY : Number.POSITIVE_INFINITY;
  if (!/^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/.test(text)) return undefined;
  return Number(text);
}

/** Type-level rules: counters never negative, histograms complete and cumulative per label set. */
function checkFamily(family: MetricFamily): void {
  if (family.type === "counter") {
    for (const sample of family.samples) {
      if (!(sample.value >= 0)) throw new Error(`counter ${sample.name} is ${sample.value}`);
    }
  }
  if (family.type !== "histogram") return;
  const groups = new Map<string, { buckets: [number, number][]; sum?: number; count?: number }>();
  for (const sample of family.samples) {
    const { le, ...rest } = sample.labels;
    const key = JSON.stringify(Object.entries(rest).sort());
    const group = groups.get(key) ?? { buckets: [] };
    groups.set(key, group);
    if (sample.name.endsWith("_bucket")) {
      const bound = le === undefined ? undefined : parseValue(le);
      if (bound === undefined) throw new Error(`${sample.name} without a valid le label`);
      group.buckets.push([bound, sample.value]);
    } else if (sample.name.endsWith("_sum")) group.sum = sample.value;
    else group.count = sample.value;
  }
  for (const [key, group] of groups) {
    const where = `${family.name}${key}`;
    if (group.sum === undefined || group.count === undefined) throw new Error(`${where}: no _sum or _count`);
    const sorted = [...group.buckets].sort(([a], [b]) => a - b);
    const last = sorted.at(-1);
    if (!last || last[0] !== Number.POSITIVE_INFINITY) throw new Error(`${where}: no le="+Inf" bucket`);
    if (last[1] !== group.count) throw new Error(`${where}: +Inf bucket ${last[1]} differs from _count`);
    for (let i = 1; i < sorted.length; i++) {
      if (sorted[i]![1] < sorted[i - 1]![1]) throw new Error(`${where}: buckets are not cumulative`);
    }
  }
}

/** The samples of `family` whose labels include all of `labels`. */
export function samplesOf(
  families: Map<string, MetricFamily>,
  name: string,
  labels: Record<string, string> = {},
): Sample[] {
  const family = families.get(name.replace(/_(bucket|sum|count)$/, "")) ?? families.get(name);
  return (family?.samples ?? []).filter(
    (sample) =>
      sample.name === name &&
      Object.entries(labels).every(([label, value]) => sample.labels[label] === value),
  );
}

/** The single value of a series, or undefined when it is absent. */
export function seriesValue(
  families: Map<string, MetricFamily>,
  name: string,
  labels: Record<string, string> = {},
): number | undefined {
  const found = samplesOf(families, name, labels);
  if (found.length > 1) throw new Error(`${name} ${JSON.stringify(labels)} matches ${found.length} series`);
  return found[0]?.value;
}
