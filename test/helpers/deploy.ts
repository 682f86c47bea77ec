// Reading the deployment files as their tools do, and validating the mtlsd configs shipped inside them.
import { type ChildProcess, spawn } from "node:child_process";
import { once } from "node:events";
import { readFileSync } from "node:fs";
import path from "node:path";
import { createInterface } from "node:readline";
import { parseAllDocuments, parse as parseYaml, stringify } from "yaml";
import {
  configJsonSchema,
  type LoadedConfig,
  parseConfig,
  parseDuration,
  parseHostPort,
} from "../../src/config/index.ts";

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

/**
 * Config keys from DESIGN.md that other branches add to the schema. Shipped configs use them (a deployment
 * needs the admin listener for probes, a drain budget, and credential reload), so until the schema knows a
 * key, `validateShippedConfig` checks its value by DESIGN.md's rules and validates the rest with the real
 * schema; once the schema knows it, the key is validated by the schema like any other.
 */
export const PENDING_KEYS: Record<string, (value: unknown) => string | undefined> = {
  admin: (value) =>
    isRecord(value) &&
    Object.keys(value).every((key) => key === "listen") &&
    typeof value.listen === "string" &&
    parseHostPort(value.listen)
      ? undefined
      : "expected { listen: host:port }",
  "limits.drainTimeout": (value) =>
    typeof value === "string" && parseDuration(value) !== undefined ? undefined : "expected a duration",
  "identity.reload": (value) =>
    isRecord(value) &&
    Object.keys(value).every((key) => key === "watch" || key === "interval") &&
    (value.watch === undefined || typeof value.watch === "boolean") &&
    (value.interval === undefined ||
      (typeof value.interval === "string" && parseDuration(value.interval) !== undefined))
      ? undefined
      : "expected { watch: boolean, interval: duration }",
};

/** Whether the current config schema has a property at this dotted path. */
export function schemaKnows(key: string): boolean {
  let node: unknown = configJsonSchema();
  for (const part of key.split(".")) {
    const properties = isRecord(node) && isRecord(node.properties) ? node.properties : undefined;
    if (!properties || !(part in properties)) return false;
    node = properties[part];
  }
  return true;
}

export interface ShippedConfig {
  loaded: LoadedConfig;
  /** The raw YAML, pending keys included. */
  raw: Yaml;
  /** Pending keys this config sets that the schema does not know yet (checked by PENDING_KEYS instead). */
  pending: string[];
}

/**
 * A copy of a config without the pending keys the schema does not know yet, each checked by DESIGN.md's rule
 * first; with the list of keys taken out.
 */
export function withoutPendingKeys(raw: Yaml, file: string): { config: Yaml; pending: string[] } {
  const copy = structuredClone(raw);
  const pending: string[] = [];
  for (const [key, check] of Object.entries(PENDING_KEYS)) {
    if (schemaKnows(key)) continue;
    const parts = key.split(".");
    const parentKey = parts.slice(0, -1).join(".");
    const parent = parentKey ? valueAt(copy, parentKey) : copy;
    const leaf = parts.at(-1)!;
    if (!isRecord(parent) || !(leaf in parent)) continue;
    const problem = check(parent[leaf]);
    if (problem) throw new Error(`${file}: ${key}: ${problem}, found ${JSON.stringify(parent[leaf])}`);
    delete parent[leaf];
    // A section left empty (limits: { drainTimeout } alone) goes too, as if it had never been written.
    if (parentKey && Object.keys(parent).length === 0) {
      const grandparentKey = parts.slice(0, -2).join(".");
      const grandparent = grandparentKey ? valueAt(copy, grandparentKey) : copy;
      if (isRecord(grandparent)) delete grandparent[parts.at(-2)!];
    }
    pending.push(key);
  }
  return { config: copy, pending };
}

/** Validates a shipped mtlsd config: the real schema for every key it knows, DESIGN.md's rules for the rest. */
export function validateShippedConfig(text: string, file: string): ShippedConfig {
  const raw = parseYaml(text) as Yaml;
  const { config, pending } = withoutPendingKeys(raw, file);
  return { loaded: parseConfig(stringify(config), file), raw, pending };
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
