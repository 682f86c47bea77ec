// A gRPC unary load generator (node:http2, h2c), run in its own process by bench/run.ts: the fixed-rate runs, and closed loop without h2load.
//
// h2load is the faster closed-loop client, but its --rps is a rate per client that times each request from
// when it is actually sent: a request held back while all of a connection's streams are busy is not charged
// for the wait (coordinated omission). Here request i is due at t0 + i/rate and timed from then (bench/loop.ts).
// Closed loop: `connections` × `streams` calls in flight. Every call is checked as a gRPC client would:
// HTTP 200, the whole echoed message back, and grpc-status 0 (in trailers, or Trailers-Only headers).
// Prints one JSON line: requests, errors, rps, latency quantiles.
import http2 from "node:http2";
import net from "node:net";
import { parseArgs } from "node:util";
import { framedNote, GRPC_HEADERS, noteText, UNARY_PATH } from "./grpc-call.ts";
import { runLoop } from "./loop.ts";

const { values } = parseArgs({
  options: {
    url: { type: "string" },
    connections: { type: "string", default: "4" },
    streams: { type: "string", default: "4" },
    "message-bytes": { type: "string", default: "1024" },
    duration: { type: "string", default: "10" },
    warmup: { type: "string", default: "2" },
    rate: { type: "string" },
  },
});
if (!values.url) throw new Error("--url is required");
const target = new URL(values.url);
const origin = target.origin;
const connections = Number(values.connections);
const body = framedNote(noteText(Number(values["message-bytes"])));
const requestHeaders = { ":method": "POST", ":path": UNARY_PATH, ...GRPC_HEADERS };

/** Connected sessions, opened on first use and opened again if one closes. */
const sessions: (http2.ClientHttp2Session | undefined)[] = Array.from({ length: connections });

function session(slot: number): http2.ClientHttp2Session {
  const index = slot % connections;
  const current = sessions[index];
  if (current && !current.closed && !current.destroyed) return current;
  const fresh = http2.connect(origin, {
    createConnection: () => net.connect({ host: target.hostname, port: Number(target.port), noDelay: true }),
  });
  fresh.on("error", () => undefined);
  sessions[index] = fresh;
  return fresh;
}

function call(slot: number): Promise<boolean> {
  return new Promise((resolve) => {
    const stream = session(slot).request(requestHeaders);
    let status = 0;
    let grpcStatus: string | undefined;
    let received = 0;
    stream.on("response", (headers) => {
      status = Number(headers[":status"]);
      grpcStatus = headers["grpc-status"] as string | undefined;
    });
    stream.on("trailers", (trailers) => {
      grpcStatus = trailers["grpc-status"] as string | undefined;
    });
    stream.on("data", (chunk: Buffer) => {
      received += chunk.length;
    });
    stream.on("error", () => resolve(false));
    stream.on("close", () =>
      resolve(status === 200 && grpcStatus === "0" && received === body.length && stream.rstCode === 0),
    );
    stream.end(body);
  });
}

const streams = Number(values.streams);
const stats = await runLoop({
  concurrency: connections * streams,
  rate: values.rate ? Number(values.rate) : undefined,
  warmupMs: Number(values.warmup) * 1000,
  durationMs: Number(values.duration) * 1000,
  send: call,
});
for (const open of sessions) open?.close();
process.stdout.write(`${JSON.stringify(stats)}\n`);
