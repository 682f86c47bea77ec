// The benchmark harness keeps working: one-second runs of a few scenarios produce the table, JSON and SVG.
import { execFile } from "node:child_process";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import t from "tap";

const run = promisify(execFile);

const ROOT = path.resolve(import.meta.dirname, "..");

t.setTimeout(240_000);

t.test(
  "npm run bench measures the direct baseline, the mtlsd two-hop path and the runtime's ceiling, and writes its reports",
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
        "direct,mtlsd-keepalive,mtls-resumed,relay-keepalive,ghostunnel-keepalive",
        "--out",
        out,
        "--from-source",
      ],
      // No ghostunnel here (it is not in Debian): its row is skipped with how to give it one.
      { cwd: ROOT, timeout: 120_000, env: { ...process.env, GHOSTUNNEL: "" } },
    );
    t.match(stdout, /\| \(a\) app direct, no TLS \| \d+ \(\d+–\d+\) \| 1\.00 \|/);
    t.match(stdout, /\| \(b\) mtlsd two-hop, keep-alive \| \d+ \(\d+–\d+\) \| 0\.\d\d \| – \| \d+\.\d\d \|/);
    t.match(
      stdout,
      /\| runtime ceiling: two Node TLS byte relays, keep-alive \| \d+ \(\d+–\d+\) \| \d\.\d\d \| – \| 1\.00 \|/,
    );
    t.match(stdout, /- ghostunnel two-hop, keep-alive \(L4\): ghostunnel not installed \(set GHOSTUNNEL=/);
    t.match(
      stdout,
      /\(e\) mTLS to mtlsd inbound, new connection \+ resumed session per request \(\d+% resumed\)/,
    );
    const report = JSON.parse(await readFile(path.join(out, "latest.json"), "utf8")) as {
      rounds: unknown[][];
      results: {
        name: string;
        idle?: { name: string; rssBytes: number; privateBytes: number }[];
        max: {
          result: { requests: number; errors: number };
          usage: { cpuSeconds: number; peakRssBytes: number; peakPrivateBytes: number }[];
        };
        fixed?: { result: { requests: number; errors: number } };
      }[];
    };
    t.equal(report.rounds.length, 2, "both rounds are in the raw JSON");
    t.same(
      report.results.map((result) => result.name),
      ["direct", "mtlsd-keepalive", "mtls-resumed", "relay-keepalive"],
    );
    for (const result of report.results) {
      t.ok(result.max.result.requests > 0, `${result.name} completed requests`);
      t.equal(
        result.max.result.errors + (result.fixed?.result.errors ?? 0),
        0,
        `${result.name} had no errors`,
      );
      t.equal(
        result.idle?.length ?? 0,
        result.max.usage.length,
        `${result.name}: idle memory of every proxy`,
      );
      for (const idle of result.idle ?? []) {
        t.ok(
          idle.privateBytes > 0 && idle.privateBytes < idle.rssBytes,
          `${idle.name}: idle memory was read`,
        );
      }
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

t.test("a GHOSTUNNEL that names no file stops the benchmark before anything runs", async (t) => {
  const failure = await run(process.execPath, [path.join(ROOT, "bench", "run.ts"), "--from-source"], {
    cwd: ROOT,
    env: { ...process.env, GHOSTUNNEL: "/nonexistent/ghostunnel" },
  }).then(
    () => undefined,
    (error: { code: number; stderr: string }) => error,
  );
  t.equal(failure?.code, 2);
  t.match(
    failure?.stderr,
    /GHOSTUNNEL=\/nonexistent\/ghostunnel: no such file; unset it or point it at a ghostunnel binary/,
  );
});
