// An app whose /gate requests wait until the test opens the gate: in-flight requests on demand, no sleeps.
import { once } from "node:events";
import http from "node:http";
import type net from "node:net";

export interface GateApp {
  url: string;
  /** Resolves once `count` /gate requests have arrived in all (rejects after `timeoutMs`). */
  arrived(count?: number, timeoutMs?: number): Promise<void>;
  /** Answers every /gate request waiting now and any that arrive later: 200 "released". */
  release(): void;
  close(): Promise<void>;
}

export async function startGateApp(): Promise<GateApp> {
  const waiting: http.ServerResponse[] = [];
  let arrivals = 0;
  let released = false;
  const sockets = new Set<net.Socket>();
  const server = http.createServer((req, res) => {
    req.resume();
    if (!req.url?.startsWith("/gate")) {
      res.end("open");
      return;
    }
    arrivals++;
    if (released) res.end("released");
    else waiting.push(res);
  });
  server.on("connection", (socket: net.Socket) => {
    sockets.add(socket);
    socket.once("close", () => sockets.delete(socket));
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = server.address() as net.AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    async arrived(count = 1, timeoutMs = 5000) {
      const deadline = Date.now() + timeoutMs;
      while (arrivals < count) {
        if (Date.now() > deadline) throw new Error(`${arrivals} of ${count} gated requests arrived in time`);
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
    },
    release() {
      released = true;
      for (const res of waiting.splice(0)) res.end("released");
    },
    async close() {
      for (const socket of sockets) socket.destroy();
      server.close();
      await once(server, "close");
    },
  };
}
