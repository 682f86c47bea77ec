// Runs the real `mtlsd` CLI as a child process and waits for its "mtlsd started" log line.
import { type ChildProcess, spawn } from "node:child_process";
import { once } from "node:events";
import { readFile } from "node:fs/promises";
import { createInterface } from "node:readline";

export const CLI = new URL("../../src/cli/main.ts", import.meta.url).pathname;

export interface SidecarProcess {
  child: ChildProcess;
  /** Parsed JSON log lines from stdout, in order. */
  logs: Record<string, unknown>[];
  /** Listener addresses from the "mtlsd started" line, e.g. { inbound: "127.0.0.1:40123" }. */
  listeners: Record<string, string>;
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

/** How the child is launched, beyond its config: Node's own options (`--import` a hook) and its environment. */
export interface SidecarLaunch {
  execArgv?: string[];
  /** The child's whole environment; without it, this process's. */
  env?: NodeJS.ProcessEnv;
}

export async function spawnSidecar(
  configPath: string,
  timeoutMs = 10_000,
  launch: SidecarLaunch = {},
): Promise<SidecarProcess> {
  const child = spawn(process.execPath, [...(launch.execArgv ?? []), CLI, "run", "-c", configPath], {
    env: launch.env,
    stdio: ["ignore", "pipe", "pipe"],
  });
  const logs: Record<string, unknown>[] = [];
  let stderr = "";
  child.stderr!.on("data", (chunk: Buffer) => {
    stderr += chunk.toString();
  });
  const started = new Promise<Record<string, unknown>>((resolve, reject) => {
    createInterface({ input: child.stdout! }).on("line", (line) => {
      const entry = JSON.parse(line) as Record<string, unknown>;
      logs.push(entry);
      if (entry.msg === "mtlsd started") resolve(entry);
    });
    child.once("exit", (code) => reject(new Error(`mtlsd exited with ${code} before starting: ${stderr}`)));
    setTimeout(
      () => reject(new Error(`mtlsd did not start within ${timeoutMs}ms: ${stderr}`)),
      timeoutMs,
    ).unref();
  });
  const startLine = await started.catch((error) => {
    child.kill("SIGKILL");
    throw error;
  });
  return {
    child,
    logs,
    listeners: startLine.listeners as Record<string, string>,
    async stop(signal = "SIGTERM") {
      if (child.exitCode !== null) return child.exitCode;
      child.kill(signal);
      const [code] = (await once(child, "exit")) as [number | null];
      return code;
    },
  };
}

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs `mtlsd ARGS` to completion (killed after `timeoutMs`), with a clean environment plus `env`. */
export async function runCli(
  args: string[],
  options: { cwd?: string; env?: NodeJS.ProcessEnv; timeoutMs?: number } = {},
): Promise<CliResult> {
  const child = spawn(process.execPath, [CLI, ...args], {
    ...(options.cwd ? { cwd: options.cwd } : {}),
    env: { PATH: process.env.PATH, ...options.env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stdout = "";
  let stderr = "";
  child.stdout!.on("data", (chunk: Buffer) => {
    stdout += chunk.toString();
  });
  child.stderr!.on("data", (chunk: Buffer) => {
    stderr += chunk.toString();
  });
  const timer = setTimeout(() => child.kill("SIGKILL"), options.timeoutMs ?? 10_000);
  const [code, signal] = (await once(child, "close")) as [number | null, NodeJS.Signals | null];
  clearTimeout(timer);
  if (signal === "SIGKILL") throw new Error(`mtlsd ${args.join(" ")} did not exit in time`);
  return { code, stdout, stderr };
}

/** Peak and current resident memory of a process, in bytes, from /proc (Linux). */
export async function memoryOf(pid: number): Promise<{ rss: number; peak: number }> {
  const status = await readFile(`/proc/${pid}/status`, "utf8");
  const kib = (field: string) => Number(new RegExp(`${field}:\\s+(\\d+) kB`).exec(status)?.[1] ?? 0) * 1024;
  return { rss: kib("VmRSS"), peak: kib("VmHWM") };
}
