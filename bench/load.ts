// An HTTP load generator with optional mTLS client credentials, run in its own process by bench/run.ts.
//
// wrk cannot present a client certificate (the direct-mTLS scenarios need one) and has no fixed-rate
// mode, so the benchmark brings its own. Two modes (bench/loop.ts):
//   closed loop (default): `connections` requests always in flight, as fast as the server answers;
//   --rate R: open loop, request i is due at t0 + i/R and its latency counts from that intended time, so a
//             stall is charged to every request it delayed (no coordinated omission).
// --close opens a new connection per request (Connection: close); --resume lets those reuse TLS sessions.
// Prints one JSON line: requests, errors, rps, latency quantiles, TLS handshakes and how many were resumed.
import { readFileSync } from "node:fs";
import tls from "node:tls";
import { parseArgs } from "node:util";
import { Agent, type buildConnector, type Dispatcher, Pool } from "undici";
import { runLoop } from "./loop.ts";

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

/** One GET; a response of 400 or above is an error. */
async function send(): Promise<boolean> {
  const response = await dispatcher.request({
    origin: url.origin,
    path: url.pathname,
    method: "GET",
    headers,
  });
  await response.body.dump();
  return response.statusCode < 400;
}

let handshakesAtStart = { ...handshakes };
const stats = await runLoop({
  concurrency: connections,
  rate: values.rate ? Number(values.rate) : undefined,
  warmupMs: Number(values.warmup) * 1000,
  durationMs: Number(values.duration) * 1000,
  send,
  onWindowOpen: () => {
    handshakesAtStart = { ...handshakes };
  },
});
await dispatcher.close();

process.stdout.write(
  `${JSON.stringify({
    ...stats,
    handshakes: {
      full: handshakes.full - handshakesAtStart.full,
      resumed: handshakes.resumed - handshakesAtStart.resumed,
    },
  })}\n`,
);
