// A WebSocket echo load generator (the ws package's client), run in its own process by bench/run.ts.
//
// It opens `connections` WebSockets and measures message round-trips: a message sent, its echo received.
// Closed loop (default): each connection sends its next message as soon as the last one's echo is back.
// --rate R: message i is due at t0 + i/R on connection i mod N, timed from that due time (bench/loop.ts);
// a connection's echoes come back in the order it sent, so each answers the oldest message it has out.
// An echo of the wrong size, or a connection that closes, counts as an error.
// Prints one JSON line: requests (round-trips), errors, rps, latency quantiles.
import { once } from "node:events";
import { parseArgs } from "node:util";
import { WebSocket } from "ws";
import { runLoop } from "./loop.ts";

const { values } = parseArgs({
  options: {
    url: { type: "string" },
    connections: { type: "string", default: "16" },
    "message-bytes": { type: "string", default: "1024" },
    duration: { type: "string", default: "10" },
    warmup: { type: "string", default: "2" },
    rate: { type: "string" },
  },
});
if (!values.url) throw new Error("--url is required");
const url = values.url;
const message = Buffer.alloc(Number(values["message-bytes"]), 0x78);

interface Connection {
  socket: WebSocket;
  /** Who waits for each echo still due, oldest first. */
  waiting: ((ok: boolean) => void)[];
}

async function open(): Promise<Connection> {
  const socket = new WebSocket(url, { perMessageDeflate: false });
  const connection: Connection = { socket, waiting: [] };
  socket.on("message", (data: Buffer) => connection.waiting.shift()?.(data.length === message.length));
  socket.on("error", () => undefined);
  socket.on("close", () => {
    for (const settle of connection.waiting.splice(0)) settle(false);
  });
  await once(socket, "open");
  return connection;
}

const pool = await Promise.all(Array.from({ length: Number(values.connections) }, open));

function roundTrip(slot: number): Promise<boolean> {
  const connection = pool[slot % pool.length]!;
  if (connection.socket.readyState !== WebSocket.OPEN) return Promise.resolve(false);
  return new Promise((resolve) => {
    connection.waiting.push(resolve);
    connection.socket.send(message, { binary: true });
  });
}

const stats = await runLoop({
  concurrency: pool.length,
  rate: values.rate ? Number(values.rate) : undefined,
  warmupMs: Number(values.warmup) * 1000,
  durationMs: Number(values.duration) * 1000,
  send: roundTrip,
});
await Promise.all(
  pool.map(async ({ socket }) => {
    socket.close(1000);
    if (socket.readyState !== WebSocket.CLOSED) await once(socket, "close");
  }),
);
process.stdout.write(`${JSON.stringify(stats)}\n`);
