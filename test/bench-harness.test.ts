// The benchmark harness keeps working: a one-second run of two scenarios produces the table, JSON and SVG.
import { execFile } from "node:child_process";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import t from "tap";

const run = promisify(execFile);

const ROOT = path.resolve(import.meta.dirname, "..");

t.setTimeout(150_000);

t.test(
  "npm run bench measures the direct baseline and the mtlsd two-hop path and writes its reports",
  async (t) => {
    const out = await mkdtemp(path.join(os.tmpdir(), "mtlsd-bench-test-"));
    t.teardown(() => rm(out, { recursive: true, force: true }));
    const { stdout } = await run(
      process.execPath,
      [
        path.join(ROOT, "bench", "run.ts"),
        "--duration",
        "1",
        "--warmup",
        "0",
        "--rate",
        "200",
        "--rounds",
        "2",
        "--only",
        "direct,mtlsd-keepalive,mtls-resumed",
        "--out",
        out,
        "--from-source",
      ],
      { cwd: ROOT, timeout: 120_000 },
    );
    t.match(stdout, /\| \(a\) app direct, no TLS \| \d+ \(\d+–\d+\) \| 1\.00 \|/);
    t.match(stdout, /\| \(b\) mtlsd two-hop, keep-alive \| \d+ \(\d+–\d+\) \| 0\.\d\d \|/);
    t.match(
      stdout,
      /\(e\) mTLS to mtlsd inbound, new connection \+ resumed session per request \(\d+% resumed\)/,
    );
    const report = JSON.parse(await readFile(path.join(out, "latest.json"), "utf8")) as {
      rounds: unknown[][];
      results: {
        name: string;
        max: {
          result: { requests: number; errors: number };
          usage: { cpuSeconds: number; peakRssBytes: number; peakPrivateBytes: number }[];
        };
      }[];
    };
    t.equal(report.rounds.length, 2, "both rounds are in the raw JSON");
    t.same(
      report.results.map((result) => result.name),
      ["direct", "mtlsd-keepalive", "mtls-resumed"],
    );
    for (const result of report.results) {
      t.ok(result.max.result.requests > 0, `${result.name} completed requests`);
      t.equal(result.max.result.errors, 0, `${result.name} had no errors`);
      for (const usage of result.max.usage) {
        // CPU comes from the load generator's measured window: a missing window marker fails the run.
        t.ok(usage.cpuSeconds > 0, `${result.name}: the proxy's CPU time was measured`);
        t.ok(
          usage.peakPrivateBytes > 0 && usage.peakPrivateBytes < usage.peakRssBytes,
          `${result.name}: private memory is a part of RSS`,
        );
      }
    }
    t.match(await readFile(path.join(out, "latest.svg"), "utf8"), /^<svg /);
  },
);

t.test(
  "npm run bench measures gRPC calls and WebSocket round-trips with its own clients, each against its own baseline",
  async (t) => {
    const out = await mkdtemp(path.join(os.tmpdir(), "mtlsd-bench-test-"));
    t.teardown(() => rm(out, { recursive: true, force: true }));
    const { stdout } = await run(
      process.execPath,
      [
        path.join(ROOT, "bench", "run.ts"),
        "--duration",
        "1",
        "--warmup",
        "0",
        "--rate",
        "200",
        "--rounds",
        "1",
        "--group",
        "grpc,websocket",
        "--only",
        "grpc-direct,grpc-mtlsd,grpc-stunnel,ws-direct,ws-mtlsd",
        "--out",
        out,
        "--from-source",
      ],
      // A PATH with nothing but Node on it: no h2load and no stunnel, as in CI. The gRPC closed loop falls
      // back to bench/grpc-load.ts, and a peer that is not there is skipped with what to install.
      { cwd: ROOT, timeout: 120_000, env: { ...process.env, PATH: path.dirname(process.execPath) } },
    );
    t.match(
      stdout,
      /- stunnel two-hop, gRPC unary \(L4\): stunnel not installed \(apt-get install stunnel4\)/,
    );
    t.match(stdout, /Closed loop: bench\/grpc-load\.ts, 4 connections × 4 streams\./);
    t.match(stdout, /#### gRPC unary\n[\s\S]*\| \(f\) gRPC app direct, h2c, no TLS \| \d+ \| 1\.00 \| – \|/);
    t.match(stdout, /\| \(g\) mtlsd two-hop, gRPC unary [^|]*\| \d+ \| \d\.\d\d \|/);
    t.match(
      stdout,
      /#### WebSocket echo\n[\s\S]*\| \(h\) WebSocket app direct, no TLS \| \d+ \| 1\.00 \| – \|/,
    );
    t.match(stdout, /\| \(i\) mtlsd two-hop, WebSocket echo \| \d+ \| \d\.\d\d \|/);
    t.notMatch(stdout, /#### HTTP/, "no HTTP scenario was asked for");
    const report = JSON.parse(await readFile(path.join(out, "latest.json"), "utf8")) as {
      results: {
        name: string;
        group: string;
        max: {
          result: { generator: string; requests: number; errors: number };
          usage: { cpuSeconds: number }[];
        };
        fixed: { result: { requests: number; errors: number } };
      }[];
    };
    t.same(
      report.results.map((result) => `${result.group} ${result.name}`),
      ["grpc grpc-direct", "grpc grpc-mtlsd", "websocket ws-direct", "websocket ws-mtlsd"],
    );
    for (const result of report.results) {
      t.ok(result.max.result.requests > 0 && result.fixed.result.requests > 0, `${result.name} was measured`);
      t.match(result.max.result.generator, /^bench\/(grpc|ws)-load\.ts$/, `${result.name}: our own client`);
      t.equal(result.max.result.errors + result.fixed.result.errors, 0, `${result.name} had no errors`);
      for (const usage of result.max.usage) t.ok(usage.cpuSeconds > 0, `${result.name}: CPU was measured`);
    }
  },
);
