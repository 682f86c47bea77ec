// `npm run bench`: what mTLS costs, with and without connection reuse, side by side with nginx, HAProxy, stunnel.
//
// Every scenario runs on loopback in this one process tree: the app, the proxies, and a load generator in a
// process of its own. For each scenario: closed-loop maximum throughput, then a fixed 1000 req/s for latency
// measured from each request's intended send time; CPU seconds per 1000 requests and peak RSS of every proxy
// process come from /proc. Results: a markdown table on stdout and in bench/results/, the raw JSON, an SVG.
//
//   npm run bench                         # everything installed (apt-get install nginx-light haproxy stunnel4 wrk)
//   npm run bench -- --duration 5         # shorter runs
//   npm run bench -- --rounds 1           # one round instead of the median of three
//   npm run bench -- --only direct,mtlsd-keepalive
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { once } from "node:events";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { createInterface } from "node:readline";
import { parseArgs } from "node:util";
import { stringify } from "yaml";
import { createIntermediateCA, createRootCA, issueLeaf } from "../src/pki/index.ts";
import { type LoadStats, medianResults, renderChart, renderTable, type ScenarioResult } from "./report.ts";
import { WINDOW_CLOSES, WINDOW_OPENS } from "./window.ts";

const ROOT = path.resolve(import.meta.dirname, "..");
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
    // The protocol between the two sidecars (upstreams.NAME.protocol): auto (as shipped) | http1 | h2.
    "mtlsd-protocol": { type: "string", default: "auto" },
    // Node flags for the mtlsd processes only (e.g. "--max-semi-space-size=1" to study memory); none by default, as shipped.
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
const mtlsdNodeFlags = values["mtlsd-node-flags"].split(" ").filter(Boolean);

const hasCommand = (name: string) => {
  try {
    execFileSync("sh", ["-c", `command -v ${name}`], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
};
const tools = {
  wrk: hasCommand("wrk"),
  nginx: hasCommand("nginx") || existsSync("/usr/sbin/nginx"),
  haproxy: hasCommand("haproxy") || existsSync("/usr/sbin/haproxy"),
  stunnel: hasCommand("stunnel4") || hasCommand("stunnel"),
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

function start(name: string, command: string, args: string[], env: NodeJS.ProcessEnv = {}): Running {
  const child = spawn(command, args, { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, ...env } });
  let stderr = "";
  child.stderr!.on("data", (chunk: Buffer) => {
    stderr = (stderr + chunk.toString()).slice(-4000);
  });
  child.stdout!.resume();
  child.once("exit", (code, signal) => {
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

async function cpuSeconds(pid: number): Promise<number> {
  const stat = await readFile(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS;
}

/**
 * Resident memory, and the part of it that is the process's own (RssAnon: heap, buffers, TLS state). The
 * rest is file-backed, mostly the executable's code, shared by every process that runs the same binary.
 */
async function residentBytes(pid: number): Promise<{ rss: number; private: number }> {
  const status = await readFile(`/proc/${pid}/status`, "utf8");
  const kib = (field: string) => Number(new RegExp(`${field}:\\s+(\\d+) kB`).exec(status)?.[1] ?? 0) * 1024;
  return { rss: kib("VmRSS"), private: kib("RssAnon") };
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
    await runToJson("wrk", [...args.slice(0, -1), `-d${warmup}s`, spec.url]).catch(() => undefined);
    // wrk's warm-up is a run of its own: the window is this second run, start to exit.
    window.open();
    const result = await runToJson("wrk", [...args.slice(0, -1), `-d${duration}s`, spec.url]);
    window.close();
    return result;
  }
  return nodeLoad(spec, [], window);
}

function nodeLoad(spec: LoadSpec, extra: string[], window: MeasuredWindow): Promise<LoadResult> {
  const args = [
    path.join(ROOT, "bench", "load.ts"),
    "--url",
    spec.url,
    "--connections",
    String(connections),
    "--duration",
    String(duration),
    "--warmup",
    String(warmup),
    ...extra,
  ];
  if (spec.close) args.push("--close");
  if (spec.tls) {
    args.push("--cert", spec.tls.cert, "--key", spec.tls.key, "--ca", spec.tls.ca);
    if (spec.tls.resume) args.push("--resume");
  }
  return runToJson(process.execPath, args, window).then((result) => ({
    ...result,
    generator: "bench/load.ts",
  }));
}

// ---------------------------------------------------------------- scenarios

interface Stack {
  entryPort: number;
  proxies: Running[];
}

interface Scenario {
  name: string;
  label: string;
  /** Which proxy family it measures (for "vs best peer"). */
  family: "baseline" | "mtlsd" | "peer";
  load: Omit<LoadSpec, "url">;
  fixedRate: boolean;
  start(): Promise<Stack>;
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
  const app = start("app", process.execPath, [path.join(ROOT, "bench", "app.ts")], { PORT: "0" });
  const [appLine] = (await once(createInterface({ input: app.child.stdout! }), "line")) as [string];
  const appPort = (JSON.parse(appLine) as { port: number }).port;

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
    const proxy = start(`mtlsd ${name}`, process.execPath, [...mtlsdNodeFlags, entry, "run", "-c", file]);
    await waitForPort(port, proxy);
    return proxy;
  };

  const mtlsdTwoHop = (logLevel: string) => async (): Promise<Stack> => {
    const [inboundPort, upstreamPort, outboundPort] = await Promise.all(Array.from({ length: 3 }, freePort));
    const log = { level: logLevel };
    const inbound = await mtlsd(
      "orders-in",
      {
        inbound: {
          listen: `127.0.0.1:${inboundPort}`,
          app: `http://127.0.0.1:${appPort}`,
          policy: {
            rules: [
              { name: "frontend", action: "allow", from: ["spiffe://example.org/ns/frontend/sa/frontend"] },
            ],
          },
        },
        // Several sidecars at once: each admin listener on a port of its own.
        admin: { listen: "127.0.0.1:0" },
        log,
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
          app: `http://127.0.0.1:${appPort}`,
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

  const peerTwoHop = (peer: "nginx" | "haproxy" | "stunnel") => async (): Promise<Stack> => {
    const [inboundPort, outboundPort] = await Promise.all([freePort(), freePort()]);
    const vars: Record<string, string> = {
      DIR: work,
      CERT_DIR: certs,
      APP_PORT: String(appPort),
      INBOUND_PORT: String(inboundPort),
      OUTBOUND_PORT: String(outboundPort),
    };
    const render = async (side: "inbound" | "outbound") => {
      const extension = peer === "haproxy" ? "cfg" : "conf";
      const template = await readFile(
        path.join(ROOT, "bench", "peers", `${peer}-${side}.${extension}`),
        "utf8",
      );
      const file = path.join(work, `${peer}-${side}.${extension}`);
      await writeFile(
        file,
        template.replace(/\$\{(\w+)\}/g, (_, key: string) => vars[key] ?? ""),
      );
      return file;
    };
    const launch = (side: "inbound" | "outbound", file: string) => {
      const name = `${peer} ${side}`;
      if (peer === "nginx") return start(name, "nginx", ["-p", work, "-c", file]);
      if (peer === "haproxy") return start(name, "haproxy", ["-db", "-f", file]);
      return start(name, hasCommand("stunnel4") ? "stunnel4" : "stunnel", [file]);
    };
    const inbound = launch("inbound", await render("inbound"));
    await waitForPort(inboundPort!, inbound);
    const outbound = launch("outbound", await render("outbound"));
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
      family: "baseline",
      load: {},
      fixedRate: true,
      start: async () => ({ entryPort: appPort, proxies: [] }),
    },
    {
      name: "mtlsd-keepalive",
      label: "(b) mtlsd two-hop, keep-alive",
      family: "mtlsd",
      load: {},
      fixedRate: true,
      start: mtlsdTwoHop("warn"),
    },
    {
      name: "mtlsd-keepalive-logs",
      label: "(b') mtlsd two-hop, keep-alive, info request logs",
      family: "mtlsd",
      load: {},
      fixedRate: false,
      start: mtlsdTwoHop("info"),
    },
    {
      name: "mtlsd-close",
      label: "(c) mtlsd two-hop, clients send Connection: close",
      family: "mtlsd",
      load: { close: true },
      fixedRate: false,
      start: mtlsdTwoHop("warn"),
    },
    {
      name: "mtls-full-handshake",
      label: "(d) mTLS to mtlsd inbound, new connection + full handshake per request",
      family: "mtlsd",
      load: { close: true, tls: tlsClient(false) },
      fixedRate: false,
      start: mtlsdInboundOnly,
    },
    {
      name: "mtls-resumed",
      label: "(e) mTLS to mtlsd inbound, new connection + resumed session per request",
      family: "mtlsd",
      load: { close: true, tls: tlsClient(true) },
      fixedRate: false,
      start: mtlsdInboundOnly,
    },
  ];
  for (const peer of ["nginx", "haproxy", "stunnel"] as const) {
    scenarios.push({
      name: `${peer}-keepalive`,
      label: `${peer} two-hop, keep-alive`,
      family: "peer",
      load: {},
      fixedRate: true,
      start: peerTwoHop(peer),
    });
    scenarios.push({
      name: `${peer}-close`,
      label: `${peer} two-hop, clients send Connection: close`,
      family: "peer",
      load: { close: true },
      fixedRate: false,
      start: peerTwoHop(peer),
    });
  }

  const runScenario = async (scenario: Scenario): Promise<ScenarioResult> => {
    const stack = await scenario.start();
    try {
      const spec = {
        ...scenario.load,
        url: `${scenario.load.tls ? "https://localhost" : "http://127.0.0.1"}:${stack.entryPort}/`,
      };
      const max = await measure(stack.proxies, (window) => closedLoop(spec, window));
      const fixed = scenario.fixedRate
        ? await measure(stack.proxies, (window) =>
            nodeLoad(spec, ["--rate", String(rate), "--connections", "32"], window),
          )
        : undefined;
      return { name: scenario.name, label: scenario.label, family: scenario.family, max, fixed };
    } finally {
      await Promise.all(stack.proxies.map(stop));
    }
  };

  const skipped: string[] = [];
  const selected = scenarios.filter((scenario) => {
    if (only && !only.has(scenario.name)) return false;
    const peer = scenario.name.split("-")[0] as keyof typeof tools;
    if (scenario.family === "peer" && !tools[peer]) {
      skipped.push(
        `${scenario.label}: ${peer} is not installed (apt-get install nginx-light haproxy stunnel4)`,
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
  await stop(app);

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
      wrk: tools.wrk,
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
