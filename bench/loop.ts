// The measuring loop every load generator of the benchmark shares: closed or open loop, the window, quantiles.
//
// Closed loop: `concurrency` senders, each sending its next request as soon as the last one is answered.
// Open loop (`rate`): request i is due at t0 + i/rate and its latency counts from that intended time, so a
// stall is charged to every request it delayed (no coordinated omission). The warm-up's requests are not
// counted; the measured window is announced on stdout so the harness reads the proxies' CPU time there.
import { performance } from "node:perf_hooks";
import { WINDOW_CLOSES, WINDOW_OPENS } from "./window.ts";

export interface LoopOptions {
  /** Closed loop: this many senders, each waiting for its answer before sending again. */
  concurrency: number;
  /** Open loop at this many requests per second instead. */
  rate?: number | undefined;
  warmupMs: number;
  durationMs: number;
  /**
   * One request (or round-trip); resolves true if it succeeded. `slot` is the sender's index in a closed
   * loop and the request's sequence number in an open loop: a generator with several connections spreads
   * requests over them by it.
   */
  send(slot: number): Promise<boolean>;
  /** Called as the measured window opens (e.g. to snapshot counters of the warm-up). */
  onWindowOpen?: () => void;
}

export interface LoopStats {
  requests: number;
  /** Failed requests, warm-up included: an error is never hidden by when it happened. */
  errors: number;
  rps: number;
  p50_ms: number;
  p90_ms: number;
  p99_ms: number;
}

export async function runLoop(options: LoopOptions): Promise<LoopStats> {
  const samples: number[] = [];
  let errors = 0;
  let measureStart = Number.POSITIVE_INFINITY;
  let recording = false;
  let running = true;

  const timed = async (slot: number, dueAt: number): Promise<void> => {
    let ok = false;
    try {
      ok = await options.send(slot);
    } catch {
      ok = false;
    }
    if (!ok) errors++;
    if (recording && dueAt >= measureStart) samples.push(performance.now() - dueAt);
  };

  const closedLoop = async () => {
    const sender = async (slot: number) => {
      while (running) await timed(slot, performance.now());
    };
    await Promise.all(Array.from({ length: options.concurrency }, (_, slot) => sender(slot)));
  };

  const openLoop = async (rate: number) => {
    const start = performance.now();
    const interval = 1000 / rate;
    const inFlight = new Set<Promise<void>>();
    for (let i = 0; running; i++) {
      const dueAt = start + i * interval;
      const wait = dueAt - performance.now();
      // Never early (a request sent before its due time would be timed short); a timer's lateness (Node's
      // timers tick in whole milliseconds) is charged to the request, the same for every scenario.
      if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
      // Requests due while we slept (or while the server stalled) go out now, each timed from its due time.
      const request = timed(i, dueAt).finally(() => inFlight.delete(request));
      inFlight.add(request);
    }
    await Promise.all(inFlight);
  };

  const load = options.rate ? openLoop(options.rate) : closedLoop();
  await new Promise((resolve) => setTimeout(resolve, options.warmupMs));
  options.onWindowOpen?.();
  recording = true;
  measureStart = performance.now();
  process.stdout.write(`${WINDOW_OPENS}\n`);
  await new Promise((resolve) => setTimeout(resolve, options.durationMs));
  const elapsed = (performance.now() - measureStart) / 1000;
  recording = false;
  process.stdout.write(`${WINDOW_CLOSES}\n`);
  running = false;
  await load;

  return {
    requests: samples.length,
    errors,
    rps: round(samples.length / elapsed, 1),
    ...quantiles(samples),
  };
}

/** p50, p90 and p99 in milliseconds of latencies given in milliseconds (nearest rank). */
export function quantiles(latenciesMs: number[]): Pick<LoopStats, "p50_ms" | "p90_ms" | "p99_ms"> {
  const sorted = [...latenciesMs].sort((a, b) => a - b);
  const at = (q: number) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? 0;
  return { p50_ms: round(at(0.5), 4), p90_ms: round(at(0.9), 4), p99_ms: round(at(0.99), 4) };
}

function round(value: number, digits: number): number {
  const scale = 10 ** digits;
  return Math.round(value * scale) / scale;
}
