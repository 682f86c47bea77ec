// An HTTP load generator with optional mTLS client credentials, run in its own process by bench/run.ts.
//
// wrk cannot present a client certificate (the direct-mTLS scenarios need one) and has no fixed-rate
// mode, so the benchmark brings its own. Two modes:
//   closed loop (default): `connections` requests always in flight, as fast as the server answers;
//   --rate R: open loop, request i is due at t0 + i/R and its latency counts from that intended time, so a
//             stall is charged to every request it delayed (no coordinated omission).
// --close opens a new connection per request (Connection: close); --resume lets those reuse TLS sessions.
// Prints one JSON line: requests, errors, rps, latency quantiles, TLS handshakes and how many were resumed.
import { readFileSync } from "node:fs";
import { performance } from "node:perf_hooks";
import tls from "node:tls";
import { parseArgs } from "node:util";
import { Agent, type buildConnector, type Dispatcher, Pool } from "undici";
import { WINDOW_CLOSES, WINDOW_OPENS } from "./window.ts";

const { values } = parseArgs({
  options: {
    url: { type: "string" },
    connections: { type: "string", default: "16" },
    duration: { type: "string", default: "10" },
    warmup: { type: "string", default: "2" },
    rate: { type: "string" },
    cert: { type: "string" },
    key: { type: "string" },
    ca: { type: "string" },
    close: { type: "boolean", default: false },
    resume: { type: "boolean", default: false },
  },
});
if (!values.url) throw new Error("--url is required");
const url = new URL(values.url);
const connections = Number(values.connections);
const handshakes = { full: 0, resumed: 0 };

function tlsConnector(): buildConnector.connector {
  const context = tls.createSecureContext({
    ca: readFileSync(values.ca!),
    ...(values.cert ? { cert: readFileSync(values.cert), key: readFileSync(values.key!) } : {}),
  });
  let session: Buffer | undefined;
  return ({ hostname, port }, callback) => {
    const socket = tls.connect({
      host: hostname,
      port: Number(port),
      secureContext: context,
      servername: "localhost",
      ALPNProtocols: ["http/1.1"],
      ...(values.resume && session ? { session } : {}),
    });
    socket.setNoDelay(true);
    if (values.resume) socket.on("session", (ticket: Buffer) => (session = ticket));
    socket.once("secureConnect", () => {
      if (socket.isSessionReused()) handshakes.resumed++;
      else handshakes.full++;
      callback(null, socket);
    });
    socket.once("error", (error) => callback(error, null));
  };
}

const connect = url.protocol === "https:" ? tlsConnector() : undefined;
const dispatcher: Dispatcher = values.close
  ? new Agent({ connections, pipelining: 1, ...(connect ? { connect } : {}) })
  : new Pool(url.origin, { connections, pipelining: 1, ...(connect ? { connect } : {}) });
const headers: Record<string, string> = values.close ? { connection: "close" } : {};

const samples: number[] = [];
let errors = 0;
let recording = false;
let running = true;

async function send(dueAt: number): Promise<void> {
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
  if (recording && dueAt >= measureStart) samples.push(performance.now() - dueAt);
}

let measureStart = Number.POSITIVE_INFINITY;
const warmupMs = Number(values.warmup) * 1000;
const durationMs = Number(values.duration) * 1000;

async function closedLoop(): Promise<void> {
  const worker = async () => {
    while (running) await send(performance.now());
  };
  await Promise.all(Array.from({ length: connections }, worker));
}

async function openLoop(rate: number): Promise<void> {
  const start = performance.now();
  const interval = 1000 / rate;
  const inFlight = new Set<Promise<void>>();
  for (let i = 0; running; i++) {
    const dueAt = start + i * interval;
    const wait = dueAt - performance.now();
    if (wait > 1) await new Promise((resolve) => setTimeout(resolve, wait));
    // Requests due while we slept (or while the server stalled) go out now, each timed from its due time.
    const request = send(dueAt).finally(() => inFlight.delete(request));
    inFlight.add(request);
  }
  await Promise.all(inFlight);
}

const load = values.rate ? openLoop(Number(values.rate)) : closedLoop();
await new Promise((resolve) => setTimeout(resolve, warmupMs));
const handshakesAtStart = { ...handshakes };
recording = true;
measureStart = performance.now();
// The harness reads the proxies' CPU time at these two lines: the warm-up is not what it divides by.
process.stdout.write(`${WINDOW_OPENS}\n`);
await new Promise((resolve) => setTimeout(resolve, durationMs));
const elapsed = (performance.now() - measureStart) / 1000;
recording = false;
process.stdout.write(`${WINDOW_CLOSES}\n`);
running = false;
await load;
await dispatcher.close();

samples.sort((a, b) => a - b);
const quantile = (q: number) => samples[Math.min(samples.length - 1, Math.floor(q * samples.length))] ?? 0;
const round = (ms: number) => Math.round(ms * 10_000) / 10_000;
process.stdout.write(
  `${JSON.stringify({
    requests: samples.length,
    errors,
    rps: Math.round((samples.length / elapsed) * 10) / 10,
    p50_ms: round(quantile(0.5)),
    p90_ms: round(quantile(0.9)),
    p99_ms: round(quantile(0.99)),
    handshakes: {
      full: handshakes.full - handshakesAtStart.full,
      resumed: handshakes.resumed - handshakesAtStart.resumed,
    },
  })}\n`,
);
