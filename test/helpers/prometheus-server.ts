// A real Prometheus (Debian's `prometheus` binary) on loopback for tests: it scrapes sidecars, evaluates rule
// files and answers PromQL over its HTTP API, as it would for an operator's dashboards and alerts.
import { type ChildProcess, spawn } from "node:child_process";
import { once } from "node:events";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { stringify } from "yaml";

/** A port nobody listens on right now (for servers that cannot be told to take port 0, like Prometheus). */
export async function freePort(): Promise<number> {
  const server = net.createServer().listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = server.address() as net.AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** One answer of /api/v1/query: a vector's samples, or Prometheus' error for a query it refused. */
export type QueryAnswer =
  | {
      status: "success";
      data: { resultType: string; result: { metric: Record<string, string>; value?: [number, string] }[] };
    }
  | { status: "error"; errorType: string; error: string };

export interface RuleState {
  name: string;
  type: "alerting" | "recording";
  health: string;
  lastError?: string;
  state?: "inactive" | "pending" | "firing";
}

export interface PrometheusServer {
  url: string;
  /** An instant query at the current time. */
  query(expr: string): Promise<QueryAnswer>;
  /** The values of `label` on series that match `selector` (what Grafana's label_values() asks). */
  labelValues(label: string, selector: string): Promise<string[]>;
  /** Every rule of the loaded rule files, with its health and (for alerts) state. */
  rules(): Promise<RuleState[]>;
  stop(): Promise<void>;
}

export interface PrometheusOptions {
  /** `host:port` of each target to scrape at /metrics. */
  targets: string[];
  job?: string;
  /** Scrape and rule evaluation interval; 1s keeps tests short. */
  interval?: string;
  ruleFiles?: string[];
}

/**
 * Starts Prometheus with a temporary storage directory (retrying on another port if the one chosen was taken),
 * and resolves once it has scraped every target.
 */
export async function startPrometheus(options: PrometheusOptions): Promise<PrometheusServer> {
  const dir = await mkdtemp(path.join(os.tmpdir(), "mtlsd-prometheus-"));
  const interval = options.interval ?? "1s";
  const configPath = path.join(dir, "prometheus.yml");
  await writeFile(
    configPath,
    stringify({
      global: { scrape_interval: interval, scrape_timeout: interval, evaluation_interval: interval },
      ...(options.ruleFiles ? { rule_files: options.ruleFiles } : {}),
      scrape_configs: [{ job_name: options.job ?? "mtlsd", static_configs: [{ targets: options.targets }] }],
    }),
  );
  let lastError: Error | undefined;
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = await freePort();
    const child = spawn(
      "prometheus",
      [
        `--config.file=${configPath}`,
        `--storage.tsdb.path=${path.join(dir, `data-${attempt}`)}`,
        `--web.listen-address=127.0.0.1:${port}`,
        "--log.level=warn",
      ],
      { stdio: ["ignore", "ignore", "pipe"] },
    );
    let stderr = "";
    child.stderr!.on("data", (chunk: Buffer) => {
      stderr += chunk.toString();
    });
    const url = `http://127.0.0.1:${port}`;
    try {
      await waitReady(url, child, () => stderr);
      await waitScraped(url, options.targets.length);
      return server(url, child, dir);
    } catch (error) {
      lastError = error as Error;
      await kill(child);
    }
  }
  await rm(dir, { recursive: true, force: true });
  throw lastError;
}

async function waitReady(url: string, child: ChildProcess, stderr: () => string): Promise<void> {
  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`prometheus exited with ${child.exitCode}: ${stderr()}`);
    try {
      const response = await fetch(`${url}/-/ready`, { signal: AbortSignal.timeout(1000) });
      await response.arrayBuffer();
      if (response.status === 200) return;
    } catch {
      // Not listening yet.
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error(`prometheus not ready within 30 s: ${stderr()}`);
}

/**
 * Prometheus hands discovered targets to its scrape manager every 5 seconds, so the first scrape comes a few
 * seconds after it is ready: waits until every target has been scraped once, and successfully.
 */
async function waitScraped(url: string, count: number): Promise<void> {
  const deadline = Date.now() + 30_000;
  let seen: { scrapeUrl: string; health: string; lastError: string }[] = [];
  while (Date.now() < deadline) {
    const response = await fetch(`${url}/api/v1/targets`, { signal: AbortSignal.timeout(5000) });
    seen = ((await response.json()) as { data: { activeTargets: typeof seen } }).data.activeTargets;
    if (seen.length === count && seen.every((target) => target.health === "up")) return;
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  throw new Error(`prometheus has not scraped all ${count} targets within 30 s: ${JSON.stringify(seen)}`);
}

async function kill(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.kill("SIGTERM");
  const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
  await once(child, "exit");
  clearTimeout(timer);
}

function server(url: string, child: ChildProcess, dir: string): PrometheusServer {
  const api = async (pathAndQuery: string): Promise<unknown> => {
    const response = await fetch(`${url}${pathAndQuery}`, { signal: AbortSignal.timeout(10_000) });
    return response.json();
  };
  return {
    url,
    query: (expr) => api(`/api/v1/query?query=${encodeURIComponent(expr)}`) as Promise<QueryAnswer>,
    async labelValues(label, selector) {
      const answer = (await api(
        `/api/v1/label/${encodeURIComponent(label)}/values?match[]=${encodeURIComponent(selector)}`,
      )) as { status: string; data?: string[]; error?: string };
      if (answer.status !== "success") throw new Error(`label values of ${label}: ${answer.error}`);
      return answer.data ?? [];
    },
    async rules() {
      const answer = (await api("/api/v1/rules")) as { data: { groups: { rules: RuleState[] }[] } };
      return answer.data.groups.flatMap((group) => group.rules);
    },
    async stop() {
      await kill(child);
      await rm(dir, { recursive: true, force: true });
    },
  };
}
