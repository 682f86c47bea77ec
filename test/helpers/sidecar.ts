// Starts a Sidecar in-process from a config object, with its log lines captured for assertions.
import { writeFile } from "node:fs/promises";
import path from "node:path";
import { stringify } from "yaml";
import { parseConfig } from "../../src/config/index.ts";
import { Sidecar, type SidecarOptions } from "../../src/sidecar.ts";
import { type IdentityFiles, identityConfig, type TestPki } from "./pki.ts";

export type LogLine = Record<string, unknown> & { level: string; msg: string };

export interface RunningSidecar {
  sidecar: Sidecar;
  /** https://localhost:<port> of the inbound listener. */
  inboundUrl: string;
  inboundPort: number;
  /** http://127.0.0.1:<port> of the admin listener. */
  adminUrl: string;
  logs: LogLine[];
  configPath: string;
  stop(): Promise<void>;
}

/** A pino destination that keeps parsed lines in memory. */
export function captureLogs(): { lines: LogLine[]; stream: { write(line: string): void } } {
  const lines: LogLine[] = [];
  return { lines, stream: { write: (line: string) => lines.push(JSON.parse(line) as LogLine) } };
}

export async function startSidecar(
  pki: TestPki,
  identity: IdentityFiles,
  config: Record<string, unknown>,
  /** Passed to Sidecar.start, beside the captured log stream (a SIGHUP source, a clock). */
  options: Omit<SidecarOptions, "logStream"> = {},
): Promise<RunningSidecar> {
  const full = {
    identity: identityConfig(pki, identity),
    log: { level: "debug" },
    // Tests run in parallel: the admin listener's default port would collide.
    admin: { listen: "127.0.0.1:0" },
    ...config,
  };
  const configPath = path.join(
    pki.dir,
    `${identity.name}-${Date.now()}-${Math.random().toString(36).slice(2)}.yaml`,
  );
  const text = stringify(full);
  await writeFile(configPath, text);
  const { lines, stream } = captureLogs();
  const sidecar = await Sidecar.start(parseConfig(text, configPath), { ...options, logStream: stream });
  const port = sidecar.addresses().inbound?.port ?? 0;
  return {
    sidecar,
    inboundUrl: `https://localhost:${port}`,
    inboundPort: port,
    adminUrl: `http://127.0.0.1:${sidecar.addresses().admin?.port ?? 0}`,
    logs: lines,
    configPath,
    stop: () => sidecar.stop(),
  };
}

/** Waits until a log line matching `predicate` appears (logging is synchronous, but requests are not). */
export async function waitForLog(
  logs: LogLine[],
  predicate: (line: LogLine) => boolean,
  timeoutMs = 3000,
): Promise<LogLine> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const found = logs.find(predicate);
    if (found) return found;
    if (Date.now() > deadline) throw new Error(`no matching log line within ${timeoutMs}ms`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}
