// Reading the deployment files as their tools do, and validating the mtlsd configs shipped inside them.
import { type ChildProcess, spawn } from "node:child_process";
import { once } from "node:events";
import { readFileSync } from "node:fs";
import path from "node:path";
import { createInterface } from "node:readline";
import { parseAllDocuments, parse as parseYaml } from "yaml";
import { type LoadedConfig, parseConfig } from "../../src/config/index.ts";

export const REPO = new URL("../../", import.meta.url).pathname;

export function repoPath(...parts: string[]): string {
  return path.join(REPO, ...parts);
}

export function readRepoFile(...parts: string[]): string {
  return readFileSync(repoPath(...parts), "utf8");
}

export type Yaml = Record<string, unknown>;

/**
 * Every document of a YAML stream. Kubernetes reads YAML 1.1 (so `0440` is octal there), Compose and
 * mtlsd read YAML 1.2; pass the version the consuming tool uses.
 */
export function yamlDocuments(text: string, where: string, version: "1.1" | "1.2" = "1.2"): Yaml[] {
  return parseAllDocuments(text, { version, uniqueKeys: true }).flatMap((document, index) => {
    if (document.errors.length > 0) throw new Error(`${where} document ${index + 1}: ${document.errors[0]}`);
    const value = document.toJS() as unknown;
    return value === null || value === undefined ? [] : [value as Yaml];
  });
}

export interface ShippedConfig {
  loaded: LoadedConfig;
  /** The raw YAML, as written. */
  raw: Yaml;
}

/** Validates a shipped mtlsd config with the real schema, as `mtlsd run` would. */
export function validateShippedConfig(text: string, file: string): ShippedConfig {
  return { loaded: parseConfig(text, file), raw: parseYaml(text) as Yaml };
}

/** A value at a dotted path of a plain object, or undefined. */
export function valueAt(node: unknown, key: string): unknown {
  return key.split(".").reduce<unknown>((at, part) => (isRecord(at) ? at[part] : undefined), node);
}

export function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

export interface RunningMtlsd {
  child: ChildProcess;
  /** Parsed JSON log lines from stdout, in order. */
  logs: Record<string, unknown>[];
  /** Listener addresses from the "mtlsd started" line, e.g. { inbound: "127.0.0.1:40123" }. */
  listeners: Record<string, string>;
  stderr(): string;
  /** Sends the signal (null: none, it was sent elsewhere) and resolves with the exit code once the output is drained (bounded). */
  stop(signal?: NodeJS.Signals | null): Promise<number | null>;
}

/**
 * Starts `mtlsd run` as a deployment would, possibly under a wrapper (strace, unshare): `command` and `args`
 * are the whole command line. Resolves on the "mtlsd started" log line; the caller stops it in teardown.
 */
export async function startMtlsd(
  command: string,
  args: string[],
  options: { env?: NodeJS.ProcessEnv; timeoutMs?: number } = {},
): Promise<RunningMtlsd> {
  const timeoutMs = options.timeoutMs ?? 15_000;
  const child = spawn(command, args, { env: options.env ?? process.env, stdio: ["ignore", "pipe", "pipe"] });
  const logs: Record<string, unknown>[] = [];
  let stderr = "";
  child.stderr.on("data", (chunk: Buffer) => {
    stderr += chunk.toString();
  });
  const closed = once(child, "close") as Promise<[number | null, NodeJS.Signals | null]>;
  const started = new Promise<Record<string, unknown>>((resolve, reject) => {
    createInterface({ input: child.stdout }).on("line", (line) => {
      let entry: Record<string, unknown>;
      try {
        entry = JSON.parse(line) as Record<string, unknown>;
      } catch {
        entry = { msg: line, unparsed: true };
      }
      logs.push(entry);
      if (entry.msg === "mtlsd started") resolve(entry);
    });
    void closed.then(([code]) => reject(new Error(`mtlsd exited with ${code} before starting: ${stderr}`)));
    setTimeout(
      () => reject(new Error(`mtlsd did not start within ${timeoutMs}ms: ${stderr}`)),
      timeoutMs,
    ).unref();
  });
  const startLine = await started.catch((error: unknown) => {
    child.kill("SIGKILL");
    throw error;
  });
  return {
    child,
    logs,
    listeners: startLine.listeners as Record<string, string>,
    stderr: () => stderr,
    async stop(signal: NodeJS.Signals | null = "SIGTERM") {
      if (signal && child.exitCode === null && child.signalCode === null) child.kill(signal);
      const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
      const [code] = await closed;
      clearTimeout(timer);
      return code;
    },
  };
}
