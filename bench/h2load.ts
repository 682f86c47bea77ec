// Reads an h2load run (nghttp2-client) of gRPC unary calls: per-request timings from its --log-file, and what it cannot see.
//
// h2load judges a response by its HTTP status alone, and a gRPC error is HTTP 200 with a non-zero
// grpc-status; it cannot read trailers. What it does count is response DATA bytes: an error answered
// Trailers-Only (how a proxy or a server refuses a call) carries none. So a call counts as an error when its
// status is not 2xx, its stream failed (status -1), or when fewer whole echoed messages arrived than calls
// succeeded. The harness also makes one call with grpc-js first (bench/grpc-call.ts verifyUnary).
import { type LoopStats, quantiles } from "./loop.ts";

/** h2load's arguments for `seconds` of closed-loop unary calls, each posting the framed message in `bodyFile`. */
export function h2loadArgs(options: {
  url: string;
  connections: number;
  streams: number;
  seconds: number;
  bodyFile: string;
  logFile?: string;
}): string[] {
  return [
    "-t1",
    `-c${options.connections}`,
    `-m${options.streams}`,
    `-D${options.seconds}`,
    "-d",
    options.bodyFile,
    "-H",
    "content-type: application/grpc",
    "-H",
    "te: trailers",
    ...(options.logFile ? ["--log-file", options.logFile] : []),
    options.url,
  ];
}

/**
 * The stats of one measured run: `log` is its --log-file (start µs, status, duration µs per line), `output`
 * its stdout, `responseBytes` the size of one whole echoed message, `seconds` the run's duration (-D).
 */
export function parseH2load(log: string, output: string, responseBytes: number, seconds: number): LoopStats {
  const latencies: number[] = [];
  let failed = 0;
  for (const line of log.split("\n")) {
    const [, status, micros] = line.split("\t");
    if (status === undefined || micros === undefined) continue;
    latencies.push(Number(micros) / 1000);
    if (!/^2\d\d$/.test(status)) failed++;
  }
  const dataBytes = Number(/traffic:.*\((\d+)\) data/.exec(output)?.[1] ?? Number.NaN);
  if (!Number.isFinite(dataBytes)) throw new Error(`h2load printed no traffic line:\n${output}`);
  // Bytes of calls still in flight at the end count too, so only a shortfall says something is missing.
  const missing = Math.max(0, latencies.length - failed - Math.floor(dataBytes / responseBytes));
  return {
    requests: latencies.length,
    errors: failed + missing,
    rps: Math.round((latencies.length / seconds) * 10) / 10,
    ...quantiles(latencies),
  };
}
