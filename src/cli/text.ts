// Plain-text helpers the commands share: relative times people read at a glance, and colour only on a terminal.

/** "3d 4h", "59m", "12s": the two largest units, because "expires in 364d 23h 59m 59s" is noise. */
export function formatSpan(ms: number): string {
  const units: readonly (readonly [string, number])[] = [
    ["d", 86_400_000],
    ["h", 3_600_000],
    ["m", 60_000],
    ["s", 1000],
  ];
  const total = Math.abs(Math.round(ms));
  for (const [index, [unit, size]] of units.entries()) {
    if (total < size) continue;
    const first = Math.floor(total / size);
    const next = units[index + 1];
    const second = next ? Math.floor((total - first * size) / next[1]) : 0;
    return next && second > 0 ? `${first}${unit} ${second}${next[0]}` : `${first}${unit}`;
  }
  return `${total}ms`;
}

/** "expires in 59m", "expired 3h 5m ago", or "not valid for another 2h (starts …)". */
export function describeValidity(notBefore: Date, notAfter: Date, now: Date): string {
  if (now < notBefore) return `not yet valid: starts in ${formatSpan(notBefore.getTime() - now.getTime())}`;
  if (now > notAfter) return `EXPIRED ${formatSpan(now.getTime() - notAfter.getTime())} ago`;
  return `expires in ${formatSpan(notAfter.getTime() - now.getTime())}`;
}

/** ISO 8601 without milliseconds: what people compare with `date -u`. */
export function isoSeconds(date: Date): string {
  return date.toISOString().replace(/\.\d{3}Z$/, "Z");
}

export interface Style {
  bold(text: string): string;
  dim(text: string): string;
  good(text: string): string;
  bad(text: string): string;
  warn(text: string): string;
  accent(text: string): string;
}

const PLAIN: Style = {
  bold: (t) => t,
  dim: (t) => t,
  good: (t) => t,
  bad: (t) => t,
  warn: (t) => t,
  accent: (t) => t,
};

const sgr = (open: number, close: number) => (text: string) => `\u001b[${open}m${text}\u001b[${close}m`;

const ANSI: Style = {
  bold: sgr(1, 22),
  dim: sgr(2, 22),
  good: sgr(32, 39),
  bad: sgr(31, 39),
  warn: sgr(33, 39),
  accent: sgr(36, 39),
};

/** Colour only when writing to a terminal and NO_COLOR (no-color.org) is unset, so logs and pipes stay clean. */
export function styleFor(stream: NodeJS.WritableStream, env: NodeJS.ProcessEnv): Style {
  const isTty = "isTTY" in stream && stream.isTTY === true;
  return isTty && !env.NO_COLOR ? ANSI : PLAIN;
}
