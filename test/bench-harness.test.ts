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
