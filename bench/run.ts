// `npm run bench`: what mTLS costs, with and without connection reuse, side by side with nginx, HAProxy, stunnel.
//
// The HTTP group also runs the runtime's ceiling (two minimal Node TLS byte relays, bench/relay.ts, in the
// sidecars' places) and, when GHOSTUNNEL=/path/to/ghostunnel is set, ghostunnel as both sidecars.
//
// Every scenario runs on loopback in this one process tree: the app, the proxies, and a load generator in a
// process of its own. For each scenario: closed-loop maximum throughput, then a fixed 1000 req/s for latency
// measured from each request's intended send time; CPU seconds per 1000 requests and peak RSS of every proxy
// process come from /proc. Results: a markdown table on stdout and in bench/results/, the raw JSON, an SVG.
// Scenarios come in groups by what the app speaks (HTTP/1.1, gRPC unary, WebSocket echo), each group with
// its own app, load generators and direct baseline; the table compares a row only within its group.
//
//   npm run bench                         # everything installed (apt-get install nghttp2-client nginx-light haproxy stunnel4 wrk)
//   npm run bench -- --duration 5         # shorter runs
//   npm run bench -- --rounds 1           # one round instead of the median of three
//   npm run bench -- --only direct,mtlsd-keepalive
//   npm run bench -- --group grpc,websocket --out bench/results/protocols
//   GHOSTUNNEL=/usr/local/bin/ghostunnel npm run bench -- --group http
import { type ChildProcess, execFile, execFileSync, spawn } from "node:child_process";
import { once } from "node:events";
import { closeSync, createWriteStream, existsSync, openSync } from "node:fs";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { createInterface } from "node:readline";
import { parseArgs, promisify } from "node:util";
import { stringify } from "yaml";
import { createIntermediateCA, createRootCA, issueLeaf } from "../src/pki/index.ts";
import { ghostunnelArgs } from "./ghostunnel.ts";
import { framedNote, noteText, UNARY_PATH, verifyUnary } from "./grpc-call.ts";
import { h2loadArgs, parseH2load } from "./h2load.ts";
import {
  type Group,
  type IdleUsage,
  type LoadStats,
  medianResults,
  renderChart,
  renderTable,
  type ScenarioResult,
} from "./report.ts";
import { WINDOW_CLOSES, WINDOW_OPENS } from "./window.ts";

const ROOT = path.resolve(import.meta.dirname, "..");
const execFileAsync = promisify(execFile);
const { values } = parseArgs({
  options: {
    duration: { type: "string", default: "10" },
    warmup: { type: "string", default: "2" },
    rate: { type: "string", default: "1000" },
    connections: { type: "string", default: "16" },
    // Every scenario runs once per round, each round in a rotated order, so a slow spell of a shared machine
    // does not fall on the same scenarios every time; the table shows each number's median over the rounds.
    rounds: { type: "string", default: "3" },
    only: { type: "string" },
    // Only the scenarios of these groups (http, grpc, websocket); --only narrows further.
    group: { type: "string" },
    // gRPC: the load's connections, and the calls in flight on each (h2load -c, -m); the Note's text size.
    "grpc-connections": { type: "string", default: "4" },
    "grpc-streams": { type: "string", default: "4" },
    // WebSocket: connections, each with one message out at a time in the closed loop; the message size.
    "ws-connections": { type: "string", default: "16" },
    "message-bytes": { type: "string", default: "1024" },
    // The protocol between the two sidecars (upstreams.NAME.protocol): auto (as shipped) | http1 | h2.
    "mtlsd-protocol": { type: "string", default: "auto" },
    // Node flags for the mtlsd processes only (e.g. "--max-semi-space-size=1" to study memory). None by default: mtlsd
    // then runs as shipped, with its own heap defaults (src/cli/heap.ts); a flag given here replaces its default.
    "mtlsd-node-flags": { type: "string", default: "" },
    out: { type: "string", default: path.join(ROOT, "bench", "results") },
    // Run mtlsd from src/ (Node's type stripping) instead of a fresh dist/ build; the harness test uses it.
    "from-source": { type: "boolean", default: false },
  },
});
const duration = Number(values.duration);
const warmup = Number(values.warmup);
const rate = Number(values.rate);
const connections = Number(values.connections);
const rounds = Number(values.rounds);
if (!Number.isInteger(rounds) || rounds < 1) {
  process.stderr.write(`[bench] --rounds must be a whole number of at least 1, got "${values.rounds}"\n`);
  process.exit(2);
}
const only = values.only ? new Set(values.only.split(",")) : undefined;
const GROUPS: readonly string[] = ["http", "grpc", "websocket"] satisfies Group[];
const groups = new Set((values.group ?? GROUPS.join(",")).split(","));
for (const group of groups) {
  if (!GROUPS.includes(group)) {
    process.stderr.write(`[bench] --group takes ${GROUPS.join(", ")}; got "${group}"\n`);
    process.exit(2);
  }
}
const grpcConnections = Number(values["grpc-connections"]);
const grpcStreams = Number(values["grpc-streams"]);
const wsConnections = Number(values["ws-connections"]);
const messageBytes = Number(values["message-bytes"]);
const mtlsdNodeFlags = values["mtlsd-node-flags"].split(" ").filter(Boolean);

/** Where a command is: on PATH under one of `names`, else at one of `paths` (sbin is not on every user's PATH). */
const locate = (names: string[], paths: string[] = []): string | undefined => {
  for (const name of names) {
    try {
      return execFileSync("sh", ["-c", `command -v ${name}`], { encoding: "utf8" }).trim();
    } catch {}
  }
  return paths.find((candidate) => existsSync(candidate));
};
const tools = {
  wrk: locate(["wrk"]),
  h2load: locate(["h2load"]),
  nginx: locate(["nginx"], ["/usr/sbin/nginx"]),
  haproxy: locate(["haproxy"], ["/usr/sbin/haproxy"]),
  stunnel: locate(["stunnel4", "stunnel"]),
  // Not packaged in Debian: only a binary the caller names.
  ghostunnel: process.env.GHOSTUNNEL || undefined,
};
if (tools.ghostunnel && !existsSync(tools.ghostunnel)) {
  process.stderr.write(
    `[bench] GHOSTUNNEL=${tools.ghostunnel}: no such file; unset it or point it at a ghostunnel binary\n`,
  );
  process.exit(2);
}
type Tool = keyof typeof tools;
/** How to get each tool, for the note a skipped scenario leaves. */
const INSTALL: Record<Tool, string> = {
  wrk: "apt-get install wrk",
  h2load: "apt-get install nghttp2-client",
  nginx: "apt-get install nginx-light",
  haproxy: "apt-get install haproxy",
  stunnel: "apt-get install stunnel4",
  ghostunnel: "set GHOSTUNNEL=/path/to/ghostunnel; not in Debian, build it from its Go source",
};

/** The commit the sidecars were built from, marked when what goes into dist/ has uncommitted changes. */
function sourceCommit(): string {
  try {
    const git = (...args: string[]) =>
      execFileSync("git", ["-C", ROOT, ...args], { encoding: "utf8" }).trim();
    const built = ["src", "package.json", "package-lock.json", "tsconfig.json", "tsconfig.build.json"];
    return (
      git("rev-parse", "--short", "HEAD") + (git("status", "--porcelain", "--", ...built) ? "+changes" : "")
    );
  } catch {
    return "unknown";
  }
}

// ---------------------------------------------------------------- processes

interface Running {
  name: string;
  child: ChildProcess;
}

const running = new Set<Running>();

/**
 * Where mtlsd processes write their stdout (their logs), unless BENCH_LOG_DIR keeps them: a file of
 * their own in the run's work directory, as a sidecar writing to a log file (or a container runtime's json-file
 * driver) would. Through a pipe this harness drained, the reading would cost the harness CPU on the two cores the
 * proxies share, a cost no deployment puts next to the sidecar, and the (b') row would measure it too.
 */
let stdoutDir: string | undefined;

function start(
  name: string,
  command: string,
  args: string[],
  env: NodeJS.ProcessEnv = {},
  stdoutToFile = false,
): Running {
  const logDir = process.env.BENCH_LOG_DIR;
  const stdoutFile =
    stdoutToFile && !logDir && stdoutDir
      ? path.join(stdoutDir, `${name.replace(/\W+/g, "_")}-${Date.now()}.log`)
      : undefined;
  const stdoutFd = stdoutFile ? openSync(stdoutFile, "w") : undefined;
  const child = spawn(command, args, {
    stdio: ["ignore", stdoutFd ?? "pipe", "pipe"],
    env: { ...process.env, ...env },
  });
  if (stdoutFd !== undefined) closeSync(stdoutFd);
  let stderr = "";
  child.stderr!.on("data", (chunk: Buffer) => {
    stderr = (stderr + chunk.toString()).slice(-4000);
  });
  // BENCH_LOG_DIR=DIR keeps each process's stdout (mtlsd's logs) as DIR/NAME-PID.log, to see why a row has errors.
  if (logDir)
    child.stdout!.pipe(createWriteStream(path.join(logDir, `${name.replace(/\W+/g, "_")}-${child.pid}.log`)));
  else if (!stdoutFile) child.stdout!.resume();
  child.once("exit", (code, signal) => {
    if (stdoutFile) void rm(stdoutFile, { force: true });
    if (code && code !== 0)
      process.stderr.write(`[bench] ${name} exited with ${code ?? signal}: ${stderr}\n`);
  });
  const entry = { name, child };
  running.add(entry);
  return entry;
}

async function stop(entry: Running): Promise<void> {
  running.delete(entry);
  if (entry.child.exitCode !== null || entry.child.signalCode !== null) return;
  entry.child.kill("SIGTERM");
  const timer = setTimeout(() => entry.child.kill("SIGKILL"), 5000);
  await once(entry.child, "exit");
  clearTimeout(timer);
}

/** Waits until `process` listens on `port`; fails at once, with its own words, if it exits first. */
async function waitForPort(port: number, process: Running, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const { exitCode, signalCode } = process.child;
    if (exitCode !== null || signalCode !== null) {
      throw new Error(`${process.name} exited (${exitCode ?? signalCode}) before listening on port ${port}`);
    }
    const ok = await new Promise<boolean>((resolve) => {
      const socket = net.connect(port, "127.0.0.1", () => {
        socket.destroy();
        resolve(true);
      });
      socket.once("error", () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline) {
      throw new Error(`${process.name} did not listen on port ${port} within ${timeoutMs}ms`);
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

// ---------------------------------------------------------------- /proc sampling

const CLOCK_TICKS = 100;

/** A process and its children: an mtlsd with `workers: N` is a primary and N worker processes, one sidecar. */
async function withChildren(pid: number): Promise<number[]> {
  const children = await readFile(`/proc/${pid}/task/${pid}/children`, "utf8").catch(() => "");
  return [pid, ...children.split(" ").filter(Boolean).map(Number)];
}

async function cpuSeconds(pid: number): Promise<number> {
  let total = 0;
  for (const each of await withChildren(pid)) {
    const stat = await readFile(`/proc/${each}/stat`, "utf8").catch(() => "");
    if (!stat) continue;
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    total += (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS;
  }
  return total;
}

/**
 * Resident memory, and the part of it that is the process's own (RssAnon: heap, buffers, TLS state). The
 * rest is file-backed, mostly the executable's code, shared by every process that runs the same binary.
 */
async function residentBytes(pid: number): Promise<{ rss: number; private: number }> {
  const total = { rss: 0, private: 0 };
  for (const each of await withChildren(pid)) {
    const status = await readFile(`/proc/${each}/status`, "utf8").catch(() => "");
    const kib = (field: string) => Number(new RegExp(`${field}:\\s+(\\d+) kB`).exec(status)?.[1] ?? 0) * 1024;
    total.rss += kib("VmRSS");
    total.private += kib("RssAnon");
  }
  return total;
}

interface ProcessUsage {
  name: string;
  cpuSeconds: number;
  peakRssBytes: number;
  peakPrivateBytes: number;
}

/**
 * The load generator's measured window: CPU time is read when it opens and when it closes, so a warm-up
 * (whose requests are not counted) never inflates CPU per 1000 requests.
 */
class MeasuredWindow {
  #before: Promise<number[]> | undefined;
  #after: Promise<number[]> | undefined;
  readonly #pids: number[];

  constructor(pids: number[]) {
    this.#pids = pids;
  }

  readonly open = (): void => {
    this.#before = Promise.all(this.#pids.map(cpuSeconds));
  };

  readonly close = (): void => {
    this.#after = Promise.all(this.#pids.map(cpuSeconds));
  };

  async cpuSeconds(): Promise<number[]> {
    if (!this.#before || !this.#after)
      throw new Error("the load generator never reported its measured window");
    const [before, after] = await Promise.all([this.#before, this.#after]);
    return after.map((seconds, index) => seconds - before[index]!);
  }
}

/** CPU time of the proxies inside the measured window, and their RSS sampled every 200 ms while `work` runs. */
async function measure<T>(
  proxies: Running[],
  work: (window: MeasuredWindow) => Promise<T>,
): Promise<{ result: T; usage: ProcessUsage[] }> {
  const pids = proxies.map((proxy) => proxy.child.pid!);
  const window = new MeasuredWindow(pids);
  const peaks = pids.map(() => ({ rss: 0, private: 0 }));
  const sample = async (index: number) => {
    const now = await residentBytes(pids[index]!);
    const peak = peaks[index]!;
    peak.rss = Math.max(peak.rss, now.rss);
    peak.private = Math.max(peak.private, now.private);
  };
  const sampler = setInterval(() => {
    for (const index of pids.keys()) sample(index).catch(() => undefined);
  }, 200);
  const result = await work(window);
  clearInterval(sampler);
  const cpu = await window.cpuSeconds();
  await Promise.all(pids.map((_, index) => sample(index)));
  return {
    result,
    usage: proxies.map((proxy, index) => ({
      name: proxy.name,
      cpuSeconds: cpu[index]!,
      peakRssBytes: peaks[index]!.rss,
      peakPrivateBytes: peaks[index]!.private,
    })),
  };
}

/** How long a proxy that listens is left alone before its idle memory is read: startup's own work settles. */
const IDLE_SETTLE_MS = 1000;

/** Each proxy's memory after startup and before any request: what it costs just to be there. */
async function idleMemory(proxies: Running[]): Promise<IdleUsage[]> {
  if (proxies.length === 0) return [];
  await new Promise((resolve) => setTimeout(resolve, IDLE_SETTLE_MS));
  return Promise.all(
    proxies.map(async (proxy) => {
      const now = await residentBytes(proxy.child.pid!);
      return { name: proxy.name, rssBytes: now.rss, privateBytes: now.private };
    }),
  );
}

// ---------------------------------------------------------------- load generators

type LoadResult = LoadStats;

/** Runs a load generator to its JSON result line; bench/load.ts's "measuring"/"measured" lines mark the window. */
function runToJson(command: string, args: string[], window?: MeasuredWindow): Promise<LoadResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    createInterface({ input: child.stdout }).on("line", (line) => {
      if (line === WINDOW_OPENS) window?.open();
      else if (line === WINDOW_CLOSES) window?.close();
      else stdout += `${line}\n`;
    });
    child.stderr.on("data", (chunk: Buffer) => {
      stderr += chunk.toString();
    });
    child.once("close", (code) => {
      const line = stdout.split("\n").find((candidate) => candidate.startsWith("{"));
      if (code !== 0 || !line) reject(new Error(`${command} failed (${code}): ${stderr || stdout}`));
      else
        resolve({
          generator: path.basename(command),
          ...(JSON.parse(line) as Omit<LoadResult, "generator">),
        });
    });
  });
}

interface LoadSpec {
  url: string;
  close?: boolean;
  /** Client certificate for direct mTLS scenarios (the load generator then is bench/load.ts). */
  tls?: { cert: string; key: string; ca: string; resume: boolean };
}

async function closedLoop(spec: LoadSpec, window: MeasuredWindow): Promise<LoadResult> {
  if (tools.wrk && !spec.tls) {
    const args = ["-t1", `-c${connections}`, "-s", path.join(ROOT, "bench", "wrk-report.lua"), spec.url];
    if (spec.close) args.unshift("-H", "Connection: close");
    await runToJson(tools.wrk, [...args.slice(0, -1), `-d${warmup}s`, spec.url]).catch(() => undefined);
    // wrk's warm-up is a run of its own: the window is this second run, start to exit.
    window.open();
    const result = await runToJson(tools.wrk, [...args.slice(0, -1), `-d${duration}s`, spec.url]);
    window.close();
    return result;
  }
  return nodeLoad(spec, [], window);
}

function nodeLoad(spec: LoadSpec, extra: string[], window: MeasuredWindow): Promise<LoadResult> {
  const args = ["--connections", String(connections), ...extra];
  if (spec.close) args.push("--close");
  if (spec.tls) {
    args.push("--cert", spec.tls.cert, "--key", spec.tls.key, "--ca", spec.tls.ca);
    if (spec.tls.resume) args.push("--resume");
  }
  return benchGenerator("load.ts", spec.url, args, window);
}

/** A generator of this benchmark (a .ts file in bench/) in its own process, with `extra` arguments. */
function benchGenerator(
  file: string,
  url: string,
  extra: string[],
  window: MeasuredWindow,
): Promise<LoadResult> {
  const args = [
    path.join(ROOT, "bench", file),
    "--url",
    url,
    "--duration",
    String(duration),
    "--warmup",
    String(warmup),
    ...extra,
  ];
  return runToJson(process.execPath, args, window).then((result) => ({
    ...result,
    generator: `bench/${file}`,
  }));
}

/** Closed-loop gRPC unary calls: h2load when installed (a C client), else bench/grpc-load.ts. */
async function grpcClosedLoop(url: string, work: string, window: MeasuredWindow): Promise<LoadResult> {
  const shape = ["--connections", String(grpcConnections), "--streams", String(grpcStreams)];
  const h2load = tools.h2load;
  if (!h2load)
    return benchGenerator("grpc-load.ts", url, [...shape, "--message-bytes", String(messageBytes)], window);
  const bodyFile = path.join(work, "grpc-unary.bin");
  const body = framedNote(noteText(messageBytes));
  await writeFile(bodyFile, body);
  const run = async (seconds: number, logFile?: string) => {
    const args = h2loadArgs({
      url,
      connections: grpcConnections,
      streams: grpcStreams,
      seconds,
      bodyFile,
      ...(logFile ? { logFile } : {}),
    });
    const { stdout } = await execFileAsync(h2load, args, { maxBuffer: 16 * 2 ** 20 });
    return stdout;
  };
  // As with wrk: the warm-up is a run of its own, and the window is the second run, start to exit.
  if (warmup > 0) await run(warmup);
  const logFile = path.join(work, "h2load.log");
  window.open();
  const output = await run(duration, logFile);
  window.close();
  const log = await readFile(logFile, "utf8");
  await rm(logFile);
  return { generator: "h2load", ...parseH2load(log, output, body.length, duration) };
}

// ---------------------------------------------------------------- scenarios

interface Stack {
  entryPort: number;
  proxies: Running[];
}

interface Scenario {
  name: string;
  label: string;
  /** What the app speaks: its app, its load generators, and the rows its ratios are taken against. */
  group: Group;
  /** Which proxy family it measures (for "vs best peer" and "vs ceiling"). */
  family: ScenarioResult["family"];
  /** Tools it cannot run without: a missing one skips it, with the reason. */
  requires?: Tool[];
  /** HTTP: how the load connects (Connection: close, an mTLS client of its own). */
  load?: Omit<LoadSpec, "url">;
  fixedRate: boolean;
  start(): Promise<Stack>;
}

/** How one group's scenarios are driven, given the port the load enters by. */
interface Workload {
  /** Checked once before the scenario is measured; throws if the path does not really work. */
  verify?(entryPort: number): Promise<void>;
  closedLoop(entryPort: number, scenario: Scenario, window: MeasuredWindow): Promise<LoadResult>;
  fixedRate(entryPort: number, scenario: Scenario, window: MeasuredWindow): Promise<LoadResult>;
}

async function main(): Promise<void> {
  // The throwaway PKI's keys never outlive the run, whether it ends well or not.
  const work = await mkdtemp(path.join(os.tmpdir(), "mtlsd-bench-"));
  try {
    await runScenarios(work);
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

async function runScenarios(work: string): Promise<void> {
  const certs = path.join(work, "certs");
  await mkdir(certs);
  stdoutDir = path.join(work, "stdout");
  await mkdir(stdoutDir);
  if (!values["from-source"]) {
    // The sidecars under test run from dist/, compiled now, as in production.
    process.stderr.write("[bench] building dist/\n");
    execFileSync(
      path.join(ROOT, "node_modules", ".bin", "tsc"),
      ["-p", path.join(ROOT, "tsconfig.build.json")],
      {
        stdio: "inherit",
      },
    );
  }
  process.stderr.write(`[bench] a throwaway PKI in ${work}\n`);
  const root = await createRootCA({ trustDomain: "example.org" });
  const intermediate = await createIntermediateCA(root);
  await writeFile(path.join(certs, "bundle.pem"), root.certPem);
  for (const name of ["orders", "frontend"]) {
    const leaf = await issueLeaf(intermediate, {
      spiffeId: `spiffe://example.org/ns/${name}/sa/${name}`,
      dnsNames: ["localhost"],
      ttlMs: 24 * 3600_000,
    });
    await writeFile(path.join(certs, `${name}.crt`), leaf.chainPem);
    await writeFile(path.join(certs, `${name}.key`), leaf.keyPem, { mode: 0o600 });
    await writeFile(path.join(certs, `${name}.pem`), leaf.chainPem + leaf.keyPem, { mode: 0o600 });
  }
  // One app per group, started when a scenario of that group first needs it.
  const apps = new Map<Group, Promise<{ app: Running; port: number }>>();
  const appPort = async (group: Group): Promise<number> => {
    let started = apps.get(group);
    if (!started) {
      started = (async () => {
        const app = start(`${group} app`, process.execPath, [path.join(ROOT, "bench", "app.ts")], {
          PORT: "0",
          PROTOCOL: group,
        });
        const [line] = (await once(createInterface({ input: app.child.stdout! }), "line")) as [string];
        return { app, port: (JSON.parse(line) as { port: number }).port };
      })();
      apps.set(group, started);
    }
    return (await started).port;
  };

  const mtlsd = async (name: string, config: Record<string, unknown>, port: number): Promise<Running> => {
    const file = path.join(work, `${name}.yaml`);
    await writeFile(
      file,
      stringify({
        identity: {
          cert: path.join(certs, `${name.split("-")[0]}.crt`),
          key: path.join(certs, `${name.split("-")[0]}.key`),
          trustBundle: path.join(certs, "bundle.pem"),
          trustDomain: "example.org",
        },
        ...config,
      }),
    );
    const entry = values["from-source"]
      ? path.join(ROOT, "src", "cli", "main.ts")
      : path.join(ROOT, "dist", "cli", "main.js");
    const proxy = start(
      `mtlsd ${name}`,
      process.execPath,
      [...mtlsdNodeFlags, entry, "run", "-c", file],
      {},
      true,
    );
    await waitForPort(port, proxy);
    return proxy;
  };

  const mtlsdTwoHop =
    (group: Group, logLevel: string, workers = 1) =>
    async (): Promise<Stack> => {
      const [inboundPort, upstreamPort, outboundPort] = await Promise.all(
        Array.from({ length: 3 }, freePort),
      );
      const log = { level: logLevel };
      const inbound = await mtlsd(
        "orders-in",
        {
          inbound: {
            listen: `127.0.0.1:${inboundPort}`,
            app: `http://127.0.0.1:${await appPort(group)}`,
            // A gRPC app speaks HTTP/2 with prior knowledge; WebSocket upgrades pass by default.
            ...(group === "grpc" ? { appProtocol: "h2c" } : {}),
            policy: {
              rules: [
                { name: "frontend", action: "allow", from: ["spiffe://example.org/ns/frontend/sa/frontend"] },
              ],
            },
          },
          // Several sidecars at once: each admin listener on a port of its own.
          admin: { listen: "127.0.0.1:0" },
          log,
          ...(workers > 1 ? { workers } : {}),
        },
        inboundPort!,
      );
      const outbound = await mtlsd(
        "frontend-out",
        {
          outbound: {
            listen: `127.0.0.1:${outboundPort}`,
            upstreams: {
              orders: {
                address: `127.0.0.1:${inboundPort}`,
                identity: "spiffe://example.org/ns/orders/sa/orders",
                listen: `127.0.0.1:${upstreamPort}`,
                pool: { connections },
                protocol: values["mtlsd-protocol"],
              },
            },
          },
          admin: { listen: "127.0.0.1:0" },
          log,
          ...(workers > 1 ? { workers } : {}),
        },
        upstreamPort!,
      );
      return { entryPort: upstreamPort!, proxies: [outbound, inbound] };
    };

  const mtlsdInboundOnly = async (): Promise<Stack> => {
    const inboundPort = await freePort();
    const inbound = await mtlsd(
      "orders-in",
      {
        inbound: {
          listen: `127.0.0.1:${inboundPort}`,
          app: `http://127.0.0.1:${await appPort("http")}`,
          policy: {
            rules: [
              { name: "frontend", action: "allow", from: ["spiffe://example.org/ns/frontend/sa/frontend"] },
            ],
          },
        },
        admin: { listen: "127.0.0.1:0" },
        log: { level: "warn" },
      },
      inboundPort,
    );
    return { entryPort: inboundPort, proxies: [inbound] };
  };

  const peerTwoHop = (group: Group, peer: "nginx" | "haproxy" | "stunnel") => async (): Promise<Stack> => {
    const [inboundPort, outboundPort] = await Promise.all([freePort(), freePort()]);
    const vars: Record<string, string> = {
      DIR: work,
      CERT_DIR: certs,
      APP_PORT: String(await appPort(group)),
      INBOUND_PORT: String(inboundPort),
      OUTBOUND_PORT: String(outboundPort),
    };
    // HTTP/1.1 configs carry WebSocket too; gRPC needs HTTP/2 on both sides of each hop, except from
    // stunnel, which never looks inside the bytes.
    const config = group === "grpc" && peer !== "stunnel" ? `${peer}-grpc` : peer;
    const render = async (side: "inbound" | "outbound") => {
      const extension = peer === "haproxy" ? "cfg" : "conf";
      const template = await readFile(
        path.join(ROOT, "bench", "peers", `${config}-${side}.${extension}`),
        "utf8",
      );
      const file = path.join(work, `${config}-${side}.${extension}`);
      await writeFile(
        file,
        template.replace(/\$\{(\w+)\}/g, (_, key: string) => vars[key] ?? ""),
      );
      return file;
    };
    const launch = (side: "inbound" | "outbound", file: string) => {
      const name = `${peer} ${side}`;
      const command = tools[peer]!;
      if (peer === "nginx") return start(name, command, ["-p", work, "-c", file]);
      if (peer === "haproxy") return start(name, command, ["-db", "-f", file]);
      return start(name, command, [file]);
    };
    const inbound = launch("inbound", await render("inbound"));
    await waitForPort(inboundPort!, inbound);
    const outbound = launch("outbound", await render("outbound"));
    await waitForPort(outboundPort!, outbound);
    return { entryPort: outboundPort!, proxies: [outbound, inbound] };
  };

  // The runtime's ceiling: bench/relay.ts on both hops, run by the same Node binary as mtlsd (as shipped: no
  // --mtlsd-node-flags), with the same certificates.
  const relayTwoHop = (group: Group) => async (): Promise<Stack> => {
    const [inboundPort, outboundPort] = await Promise.all([freePort(), freePort()]);
    const relay = (side: "inbound" | "outbound", listen: number, target: number, identity: string) =>
      start(`relay ${side}`, process.execPath, [
        path.join(ROOT, "bench", "relay.ts"),
        side,
        ...["--listen", String(listen), "--target", String(target)],
        ...["--cert", path.join(certs, `${identity}.crt`), "--key", path.join(certs, `${identity}.key`)],
        ...["--ca", path.join(certs, "bundle.pem")],
      ]);
    const inbound = relay("inbound", inboundPort!, await appPort(group), "orders");
    await waitForPort(inboundPort!, inbound);
    const outbound = relay("outbound", outboundPort!, inboundPort!, "frontend");
    await waitForPort(outboundPort!, outbound);
    return { entryPort: outboundPort!, proxies: [outbound, inbound] };
  };

  const ghostunnelTwoHop = (group: Group) => async (): Promise<Stack> => {
    const [inboundPort, outboundPort] = await Promise.all([freePort(), freePort()]);
    const inbound = start(
      "ghostunnel inbound",
      tools.ghostunnel!,
      ghostunnelArgs("inbound", {
        listenPort: inboundPort!,
        targetPort: await appPort(group),
        keystore: path.join(certs, "orders.pem"),
        cacert: path.join(certs, "bundle.pem"),
        peerSpiffeId: "spiffe://example.org/ns/frontend/sa/frontend",
      }),
    );
    await waitForPort(inboundPort!, inbound);
    const outbound = start(
      "ghostunnel outbound",
      tools.ghostunnel!,
      ghostunnelArgs("outbound", {
        listenPort: outboundPort!,
        targetPort: inboundPort!,
        keystore: path.join(certs, "frontend.pem"),
        cacert: path.join(certs, "bundle.pem"),
        peerSpiffeId: "spiffe://example.org/ns/orders/sa/orders",
      }),
    );
    await waitForPort(outboundPort!, outbound);
    return { entryPort: outboundPort!, proxies: [outbound, inbound] };
  };

  const tlsClient = (resume: boolean) => ({
    cert: path.join(certs, "frontend.crt"),
    key: path.join(certs, "frontend.key"),
    ca: path.join(certs, "bundle.pem"),
    resume,
  });

  const scenarios: Scenario[] = [
    {
      name: "direct",
      label: "(a) app direct, no TLS",
      group: "http",
      family: "baseline",
      fixedRate: true,
      start: async () => ({ entryPort: await appPort("http"), proxies: [] }),
    },
    {
      name: "mtlsd-keepalive",
      label: "(b) mtlsd two-hop, keep-alive",
      group: "http",
      family: "mtlsd",
      fixedRate: true,
      start: mtlsdTwoHop("http", "warn"),
    },
    {
      name: "mtlsd-keepalive-logs",
      label: "(b') mtlsd two-hop, keep-alive, info request logs",
      group: "http",
      family: "mtlsd",
      fixedRate: false,
      start: mtlsdTwoHop("http", "info"),
    },
    {
      // On 2 cores shared with the load generator and the app, two workers per sidecar are not expected to win:
      // the row shows what the cluster costs (CPU and memory of all of a sidecar's processes) and gives.
      name: "mtlsd-workers-2",
      label: "(b2) mtlsd two-hop, keep-alive, workers: 2 in each sidecar",
      group: "http",
      family: "mtlsd",
      fixedRate: false,
      start: mtlsdTwoHop("http", "warn", 2),
    },
    {
      name: "mtlsd-close",
      label: "(c) mtlsd two-hop, clients send Connection: close",
      group: "http",
      family: "mtlsd",
      load: { close: true },
      fixedRate: false,
      start: mtlsdTwoHop("http", "warn"),
    },
    {
      name: "mtls-full-handshake",
      label: "(d) mTLS to mtlsd inbound, new connection + full handshake per request",
      group: "http",
      family: "mtlsd",
      load: { close: true, tls: tlsClient(false) },
      fixedRate: false,
      start: mtlsdInboundOnly,
    },
    {
      name: "mtls-resumed",
      label: "(e) mTLS to mtlsd inbound, new connection + resumed session per request",
      group: "http",
      family: "mtlsd",
      load: { close: true, tls: tlsClient(true) },
      fixedRate: false,
      start: mtlsdInboundOnly,
    },
  ];
  // The ceiling sits with mtlsd's rows: it is the bar they are read against.
  scenarios.push({
    name: "relay-keepalive",
    label: "runtime ceiling: two Node TLS byte relays, keep-alive",
    group: "http",
    family: "ceiling",
    fixedRate: true,
    start: relayTwoHop("http"),
  });
  const peers = ["nginx", "haproxy", "stunnel"] as const;
  for (const peer of peers) {
    scenarios.push({
      name: `${peer}-keepalive`,
      label: `${peer} two-hop, keep-alive`,
      group: "http",
      family: "peer",
      requires: [peer],
      fixedRate: true,
      start: peerTwoHop("http", peer),
    });
    scenarios.push({
      name: `${peer}-close`,
      label: `${peer} two-hop, clients send Connection: close`,
      group: "http",
      family: "peer",
      requires: [peer],
      load: { close: true },
      fixedRate: false,
      start: peerTwoHop("http", peer),
    });
  }
  scenarios.push(
    {
      name: "ghostunnel-keepalive",
      label: "ghostunnel two-hop, keep-alive (L4)",
      group: "http",
      family: "peer",
      requires: ["ghostunnel"],
      fixedRate: true,
      start: ghostunnelTwoHop("http"),
    },
    {
      name: "ghostunnel-close",
      label: "ghostunnel two-hop, clients send Connection: close (L4)",
      group: "http",
      family: "peer",
      requires: ["ghostunnel"],
      load: { close: true },
      fixedRate: false,
      start: ghostunnelTwoHop("http"),
    },
  );
  const grpcVia = { nginx: "grpc_pass", haproxy: "h2 both sides", stunnel: "L4" };
  scenarios.push(
    {
      name: "grpc-direct",
      label: "(f) gRPC app direct, h2c, no TLS",
      group: "grpc",
      family: "baseline",
      fixedRate: true,
      start: async () => ({ entryPort: await appPort("grpc"), proxies: [] }),
    },
    {
      name: "grpc-mtlsd",
      label: "(g) mtlsd two-hop, gRPC unary (h2c in, h2 between sidecars, h2c to the app)",
      group: "grpc",
      family: "mtlsd",
      fixedRate: true,
      start: mtlsdTwoHop("grpc", "warn"),
    },
    ...peers.map(
      (peer): Scenario => ({
        name: `grpc-${peer}`,
        label: `${peer} two-hop, gRPC unary (${grpcVia[peer]})`,
        group: "grpc",
        family: "peer",
        requires: [peer],
        fixedRate: true,
        start: peerTwoHop("grpc", peer),
      }),
    ),
    {
      name: "ws-direct",
      label: "(h) WebSocket app direct, no TLS",
      group: "websocket",
      family: "baseline",
      fixedRate: true,
      start: async () => ({ entryPort: await appPort("websocket"), proxies: [] }),
    },
    {
      name: "ws-mtlsd",
      label: "(i) mtlsd two-hop, WebSocket echo",
      group: "websocket",
      family: "mtlsd",
      fixedRate: true,
      start: mtlsdTwoHop("websocket", "warn"),
    },
    ...peers.map(
      (peer): Scenario => ({
        name: `ws-${peer}`,
        label: `${peer} two-hop, WebSocket echo${peer === "stunnel" ? " (L4)" : ""}`,
        group: "websocket",
        family: "peer",
        requires: [peer],
        fixedRate: true,
        start: peerTwoHop("websocket", peer),
      }),
    ),
  );

  const httpSpec = (entryPort: number, scenario: Scenario): LoadSpec => ({
    ...scenario.load,
    url: `${scenario.load?.tls ? "https://localhost" : "http://127.0.0.1"}:${entryPort}/`,
  });
  const grpcUrl = (entryPort: number) => `http://127.0.0.1:${entryPort}${UNARY_PATH}`;
  const wsArgs = ["--connections", String(wsConnections), "--message-bytes", String(messageBytes)];
  const workloads: Record<Group, Workload> = {
    http: {
      closedLoop: (port, scenario, window) => closedLoop(httpSpec(port, scenario), window),
      fixedRate: (port, scenario, window) =>
        nodeLoad(httpSpec(port, scenario), ["--rate", String(rate), "--connections", "32"], window),
    },
    grpc: {
      verify: (port) => verifyUnary(`127.0.0.1:${port}`, noteText(messageBytes)),
      closedLoop: (port, _scenario, window) => grpcClosedLoop(grpcUrl(port), work, window),
      fixedRate: (port, _scenario, window) =>
        benchGenerator(
          "grpc-load.ts",
          grpcUrl(port),
          [
            "--rate",
            String(rate),
            "--connections",
            String(grpcConnections),
            "--message-bytes",
            String(messageBytes),
          ],
          window,
        ),
    },
    websocket: {
      closedLoop: (port, _scenario, window) =>
        benchGenerator("ws-load.ts", `ws://127.0.0.1:${port}/`, wsArgs, window),
      fixedRate: (port, _scenario, window) =>
        benchGenerator("ws-load.ts", `ws://127.0.0.1:${port}/`, [...wsArgs, "--rate", String(rate)], window),
    },
  };

  const runScenario = async (scenario: Scenario): Promise<ScenarioResult> => {
    const stack = await scenario.start();
    try {
      const idle = await idleMemory(stack.proxies);
      const workload = workloads[scenario.group];
      await workload.verify?.(stack.entryPort);
      const max = await measure(stack.proxies, (window) =>
        workload.closedLoop(stack.entryPort, scenario, window),
      );
      const fixed = scenario.fixedRate
        ? await measure(stack.proxies, (window) => workload.fixedRate(stack.entryPort, scenario, window))
        : undefined;
      const { name, label, group, family } = scenario;
      return { name, label, group, family, idle, max, fixed };
    } finally {
      await Promise.all(stack.proxies.map(stop));
    }
  };

  const skipped: string[] = [];
  const selected = scenarios.filter((scenario) => {
    if (!groups.has(scenario.group) || (only && !only.has(scenario.name))) return false;
    const missing = (scenario.requires ?? []).filter((tool) => !tools[tool]);
    if (missing.length > 0) {
      skipped.push(
        `${scenario.label}: ${missing.join(", ")} not installed (${missing.map((tool) => INSTALL[tool]).join("; ")})`,
      );
      return false;
    }
    return true;
  });
  const perRound: ScenarioResult[][] = [];
  // A scenario failing in a later round costs that round's result, not the run: its median is over the
  // others. In the first round a failure is a setup problem (a bad flag, a missing binary) and stops at once.
  const failed: string[] = [];
  for (let round = 1; round <= rounds; round++) {
    const results: ScenarioResult[] = [];
    const shift = Math.floor(((round - 1) * selected.length) / rounds);
    const order = [...selected.slice(shift), ...selected.slice(0, shift)];
    for (const scenario of order) {
      process.stderr.write(`[bench] round ${round}/${rounds}: ${scenario.label}\n`);
      try {
        results.push(await runScenario(scenario));
      } catch (error) {
        if (round === 1) throw error;
        const reason = `round ${round}, ${scenario.label}: ${(error as Error).message}`;
        process.stderr.write(`[bench] left out of the medians: ${reason}\n`);
        failed.push(reason);
      }
    }
    // Rounds are folded by name; keep the listed order.
    perRound.push(selected.flatMap((scenario) => results.filter((result) => result.name === scenario.name)));
  }
  const results = medianResults(perRound);
  for (const started of apps.values()) await stop((await started).app);

  const machine = {
    cpus: os.cpus().length,
    cpuModel: os.cpus()[0]?.model ?? "unknown",
    memoryGiB: Math.round(os.totalmem() / 2 ** 30),
    kernel: os.release(),
    node: process.version,
    openssl: process.versions.openssl,
    date: new Date().toISOString(),
    settings: {
      duration,
      warmup,
      rate,
      connections,
      rounds,
      wrk: Boolean(tools.wrk),
      grpc: { connections: grpcConnections, streams: grpcStreams, h2load: Boolean(tools.h2load) },
      websocket: { connections: wsConnections },
      messageBytes,
      mtlsdNodeFlags: mtlsdNodeFlags.join(" "),
      commit: sourceCommit(),
    },
  };
  const table = renderTable(results, machine, skipped, failed);
  process.stdout.write(`${table}\n`);
  await mkdir(values.out, { recursive: true });
  const stamp = machine.date.replace(/[:.]/g, "-");
  await writeFile(
    path.join(values.out, `${stamp}.json`),
    `${JSON.stringify({ machine, results, rounds: perRound, skipped, failed }, null, 2)}\n`,
  );
  await writeFile(path.join(values.out, `${stamp}.md`), `${table}\n`);
  await writeFile(path.join(values.out, "latest.md"), `${table}\n`);
  await writeFile(path.join(values.out, "latest.svg"), renderChart(results));
  await writeFile(
    path.join(values.out, "latest.json"),
    `${JSON.stringify({ machine, results, rounds: perRound, skipped, failed }, null, 2)}\n`,
  );
  process.stderr.write(`[bench] wrote ${path.join(values.out, "latest.md")}, latest.json, latest.svg\n`);
  if (failed.length > 0) {
    process.stderr.write(
      `[bench] ${failed.length} scenario run(s) failed and were left out (listed in the table)\n`,
    );
    process.exitCode = 1;
  }
}

process.on("SIGINT", () => {
  for (const entry of running) entry.child.kill("SIGKILL");
  process.exit(130);
});

try {
  await main();
} catch (error) {
  // The failing process already printed its reason ("[bench] … exited with …"); no stack trace on top.
  process.stderr.write(`[bench] stopped: ${(error as Error).message}\n`);
  process.exitCode = 1;
} finally {
  for (const entry of running) entry.child.kill("SIGKILL");
}
