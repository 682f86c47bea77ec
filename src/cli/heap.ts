// The V8 heap sizing `mtlsd run` gets by default: a sidecar's live heap is ~25 MiB, V8's defaults grow it to ~150.
//
// V8 sizes its young generation (up to 3 × the semi-space, 16–32 MiB each by default on 64-bit) and lets the
// old generation grow far past the live set before a full collection, because it assumes a process that owns
// the machine. A sidecar shares its pod or host with the app it serves: measured under the bench's maximum
// load, an mtlsd process held ~23 MiB of live heap in ~96 MiB of heap (~200 MiB RSS). These limits keep the
// young generation small (scavenges stay cheap: a proxy's garbage dies young) and tell V8's growth heuristics
// the heap is meant to stay small. Both flags only size the heap; a user who sets either (on the command line
// or in NODE_OPTIONS) keeps their own value.
//
// The flags must be given when V8 starts (neither takes effect from v8.setFlagsFromString once the heap exists),
// so `run` replaces its own process with one started with them (process.execve: same PID, same stdio, signals
// unchanged, no parent left behind). The single binary carries them in its SEA config instead.

/** Flag name → the value `run` uses when the user did not choose one. */
export const HEAP_DEFAULTS: ReadonlyMap<string, string> = new Map([
  ["--max-semi-space-size", "1"],
  ["--max-old-space-size", "256"],
]);

/** The flags in HEAP_DEFAULTS that neither the command line nor NODE_OPTIONS sets already. */
export function missingHeapFlags(execArgv: readonly string[], nodeOptions: string | undefined): string[] {
  const given = [...execArgv, ...(nodeOptions ?? "").split(/\s+/)];
  const missing: string[] = [];
  for (const [flag, value] of HEAP_DEFAULTS) {
    // V8 reads `_` and `-` alike in flag names.
    const names = [flag, flag.replaceAll("-", "_").replace(/^__/, "--")];
    if (!given.some((arg) => names.some((name) => arg === name || arg.startsWith(`${name}=`))))
      missing.push(`${flag}=${value}`);
  }
  return missing;
}

export interface Reexec {
  file: string;
  args: string[];
}

/**
 * How to restart this process with the heap defaults, or undefined when it already has them (or cannot:
 * a single executable, whose flags are in its SEA config, or a runtime without process.execve).
 */
export function heapReexec(process: {
  execPath: string;
  execArgv: readonly string[];
  argv: readonly string[];
  env: NodeJS.ProcessEnv;
  sea: boolean;
  canExecve: boolean;
}): Reexec | undefined {
  if (process.sea || !process.canExecve || process.env.MTLSD_HEAP_DEFAULTS === "off") return undefined;
  const missing = missingHeapFlags(process.execArgv, process.env.NODE_OPTIONS);
  if (missing.length === 0) return undefined;
  return {
    file: process.execPath,
    args: [process.execPath, ...missing, ...process.execArgv, ...process.argv.slice(1)],
  };
}
