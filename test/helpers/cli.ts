// Runs the real `mtlsd` CLI as a child process to completion, asynchronously and bounded, for command tests.
import { type ChildProcess, spawn } from "node:child_process";
import { once } from "node:events";

export const CLI = new URL("../../src/cli/main.ts", import.meta.url).pathname;

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

export interface CliOptions {
  cwd?: string;
  /** Added to a clean environment (PATH only), so a developer's MTLSD_CONFIG or NO_COLOR cannot leak in. */
  env?: NodeJS.ProcessEnv;
  /** Killed (and the test failed) after this long; default 20 s. */
  timeoutMs?: number;
}

/** Waits for the child to exit and its output to drain, killing it when it outlives `timeoutMs`. */
export async function waitForExit(
  child: ChildProcess,
  what: string,
  timeoutMs: number,
): Promise<number | null> {
  const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
  const [code, signal] = (await once(child, "close")) as [number | null, NodeJS.Signals | null];
  clearTimeout(timer);
  if (signal === "SIGKILL") throw new Error(`${what} did not exit within ${timeoutMs}ms`);
  return code;
}

/** Starts `mtlsd ARGS` with piped output; the caller decides when it ends. */
export function spawnCli(args: string[], options: CliOptions = {}): ChildProcess & { output: () => string } {
  const child = spawn(process.execPath, [CLI, ...args], {
    cwd: options.cwd,
    env: { PATH: process.env.PATH, ...options.env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stdout = "";
  child.stdout.setEncoding("utf8").on("data", (chunk: string) => {
    stdout += chunk;
  });
  return Object.assign(child, { output: () => stdout });
}

export async function runCli(args: string[], options: CliOptions = {}): Promise<CliResult> {
  const child = spawnCli(args, options);
  let stderr = "";
  child.stderr!.setEncoding("utf8").on("data", (chunk: string) => {
    stderr += chunk;
  });
  const code = await waitForExit(child, `mtlsd ${args.join(" ")}`, options.timeoutMs ?? 20_000);
  return { code, stdout: child.output(), stderr };
}
