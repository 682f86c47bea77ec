// Opens plain TCP connections to the local app, with a deadline, for the app's connection pool.
import net from "node:net";
import { CONNECT_TIMEOUT_CODE } from "./errors.ts";
import { type Connector, OriginError } from "./origin.ts";

export function tcpConnector(host: string, port: number, timeoutMs: number, name: string): Connector {
  return (callback) => {
    const socket = net.connect({ host, port, noDelay: true, keepAlive: true, keepAliveInitialDelay: 60_000 });
    const timer = setTimeout(() => {
      socket.destroy();
      finish(
        new OriginError(
          CONNECT_TIMEOUT_CODE,
          `connecting to ${name} (${host}:${port}) took longer than ${timeoutMs}ms`,
        ),
      );
    }, timeoutMs);
    let done = false;
    const finish = (error: Error | null) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      socket.off("error", finish);
      if (error) callback(error, null);
      else callback(null, socket);
    };
    socket.once("connect", () => finish(null));
    socket.once("error", finish);
  };
}
