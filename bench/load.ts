// A closed-loop HTTP load generator with optional mTLS client credentials, run in its own process.
//
// wrk cannot present a client certificate, and the direct-mTLS scenarios need one, so the benchmark brings
// its own. It keeps `connections` requests in flight on keep-alive connections (or, with --close, one
// connection per request) for `duration` seconds and prints one JSON line: requests/s and latency quantiles.
import { readFileSync } from "node:fs";
import { performance } from "node:perf_hooks";
import { parseArgs } from "node:util";
import { Agent, type Dispatcher, Pool } from "undici";

const { values } = parseArgs({
  options: {
    url: { type: "string" },
    connections: { type: "string", default: "16" },
    duration: { type: "string", default: "10" },
    warmup: { type: "string", default: "1" },
    cert: { type: "string" },
    key: { type: "string" },
    ca: { type: "string" },
    close: { type: "boolean", default: false },
  },
});
if (!values.url) throw new Error("--url is required");
const url = new URL(values.url);
const connections = Number(values.connections);
const tlsOptions = values.ca
  ? {
      ca: readFileSync(values.ca),
      ...(values.cert ? { cert: readFileSync(values.cert), key: readFileSync(values.key!) } : {}),
      servername: "localhost",
    }
  : undefined;
const dispatcher: Dispatcher = values.close
  ? new Agent({ connect: tlsOptions, pipelining: 0 })
  : new Pool(url.origin, { connections, pipelining: 1, connect: tlsOptions });
const headers = values.close ? { connection: "close" } : {};

const samples: number[] = [];
let errors = 0;
let recording = false;
let running = true;

async function worker(): Promise<void> {
  while (running) {
    const started = performance.now();
    try {
      const response = await dispatcher.request({
        origin: url.origin,
        path: url.pathname,
        method: "GET",
        headers,
      });
      await response.body.dump();
      if (response.statusCode >= 400) errors++;
    } catch {
      errors++;
    }
    if (recording) samples.push(performance.now() - started);
  }
}

const workers = Array.from({ length: connections }, () => worker());
await new Promise((resolve) => setTimeout(resolve, Number(values.warmup) * 1000));
recording = true;
const started = performance.now();
await new Promise((resolve) => setTimeout(resolve, Number(values.duration) * 1000));
recording = false;
const elapsed = (performance.now() - started) / 1000;
running = false;
await Promise.all(workers);
await dispatcher.close();

samples.sort((a, b) => a - b);
const quantile = (q: number) => samples[Math.min(samples.length - 1, Math.floor(q * samples.length))] ?? 0;
process.stdout.write(
  `${JSON.stringify({
    requests: samples.length,
    errors,
    rps: Math.round(samples.length / elapsed),
    p50_ms: quantile(0.5),
    p90_ms: quantile(0.9),
    p99_ms: quantile(0.99),
  })}\n`,
);
