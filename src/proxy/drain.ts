// Graceful drain of HTTP/1.1 servers: which requests are in flight, `Connection: close` once draining, a deadline.
import type http from "node:http";
import net from "node:net";
import type { Downstream } from "./downstream.ts";
import type { ForwardFailure } from "./errors.ts";
import { cutForward } from "./forward.ts";

// How often a drain checks whether every connection is gone.
const POLL_MS = 20;

/** How a request still in flight at the drain deadline is logged: cut by the drain, not by its client. */
export const DRAIN_CUT: ForwardFailure = Object.freeze({
  status: 503,
  reason: "draining",
  message: "cut at the drain deadline (limits.drainTimeout)",
});

/** The moment a drain must end; a second stop request can bring it forward, never push it back. */
export class Deadline {
  /** Resolves when the deadline passes (or is brought forward to now). */
  readonly reached: Promise<void>;
  #resolve: () => void = () => {};
  #timer: NodeJS.Timeout | undefined;
  #at: number;
  #expired = false;

  constructor(ms: number) {
    this.#at = Date.now() + ms;
    this.reached = new Promise((resolve) => {
      this.#resolve = resolve;
    });
    this.#arm(ms);
  }

  get expired(): boolean {
    return this.#expired;
  }

  /** Milliseconds left, 0 once expired. */
  get remaining(): number {
    return this.#expired ? 0 : Math.max(0, this.#at - Date.now());
  }

  /** Brings the deadline forward to `ms` from now, if that is sooner than it already is. */
  shorten(ms: number): void {
    if (this.#expired || Date.now() + ms >= this.#at) return;
    this.#at = Date.now() + ms;
    this.#arm(ms);
  }

  /** Stops the timer once nothing waits for the deadline any more. */
  cancel(): void {
    clearTimeout(this.#timer);
  }

  #arm(ms: number): void {
    clearTimeout(this.#timer);
    if (ms <= 0) {
      this.#expire();
      return;
    }
    // Never the reason the process stays alive: whoever waits on `reached` has its own handles.
    this.#timer = setTimeout(() => this.#expire(), ms).unref();
  }

  #expire(): void {
    this.#expired = true;
    this.#resolve();
  }
}

/** A connection served outside node:http (the HTTP/1.1 fast path), drained as node:http's are. */
export interface DrainedConnection {
  readonly socket: net.Socket;
  /** The request being answered on it, if any. */
  readonly current: Downstream | undefined;
  /** The drain began: close if idle, else answer the request in flight with `Connection: close`, then close. */
  drain(): void;
}

export interface DrainResult {
  /** Requests in flight when the drain began. */
  inFlight: number;
  /** Connections still open at the deadline, and cut. */
  cut: number;
}

/**
 * Follows the connections and in-flight requests of a listener's http.Servers so the listener can drain the
 * way Envoy drains HTTP/1.1: stop accepting; close the connections that are idle (between requests, or
 * connected and silent); answer every request still to be answered with `Connection: close`, including
 * requests that were still arriving or arrive on connections that finish their TLS handshake during the
 * drain, so a request already on the wire is served; cut whatever is left at the deadline.
 */
export class HttpDrain {
  readonly #servers: http.Server[] = [];
  readonly #sockets = new Set<net.Socket>();
  /** The response in progress on each connection; pipelined requests wait their turn behind it. */
  readonly #inFlight = new Map<net.Socket, http.ServerResponse>();
  /** The last response on each connection, in flight or done: a parse error may concern its request's body. */
  readonly #last = new WeakMap<net.Socket, http.ServerResponse>();
  /** Fast-path connections, until they close or are handed to node:http. */
  readonly #adopted = new Set<DrainedConnection>();
  #draining = false;

  /** Starts following `server`'s connections (for a server fed by hand, the ones emitted to it). */
  watch(server: http.Server): void {
    this.#servers.push(server);
    server.on("connection", this.#onConnection);
  }

  get draining(): boolean {
    return this.#draining;
  }

  /** Follows a connection served outside node:http until `release`. */
  adopt(connection: DrainedConnection): void {
    this.#adopted.add(connection);
  }

  release(connection: DrainedConnection): void {
    this.#adopted.delete(connection);
  }

  /** Open HTTP connections. */
  get connections(): number {
    return this.#sockets.size;
  }

  /** Call as each request starts, before anything is written. */
  request(req: http.IncomingMessage, res: http.ServerResponse): void {
    if (this.#draining) res.setHeader("connection", "close");
    const socket = req.socket;
    this.#inFlight.set(socket, res);
    this.#last.set(socket, res);
    res.once("close", () => {
      if (this.#inFlight.get(socket) === res) this.#inFlight.delete(socket);
    });
  }

  /** The response in progress on `socket`, if any: a late parse error must never write into it. */
  responseOn(socket: net.Socket): http.ServerResponse | undefined {
    return this.#inFlight.get(socket);
  }

  /**
   * Whether `socket` is past its last response but still reading that request's body (Node drops the body of a
   * request answered early, a refused upload's): a parse error now concerns a request that was already answered,
   * logged and counted, typically a client that read our answer and hung up mid-body.
   */
  discardingBodyOn(socket: net.Socket): boolean {
    const last = this.#last.get(socket);
    return last?.writableEnded === true && !last.req.complete;
  }

  /**
   * Drains; the caller has already stopped accepting (see `stopAccepting`). Resolves once no connection is
   * open, or at the deadline after cutting the rest. `open` counts the connections to wait for: by default the
   * HTTP ones; a listener that also holds connections still in their TLS handshake counts those too.
   */
  async drain(deadline: Deadline, open: () => number = () => this.#sockets.size): Promise<DrainResult> {
    this.#draining = true;
    let inFlight = this.#inFlight.size;
    for (const connection of [...this.#adopted]) {
      if (connection.current) inFlight++;
      connection.drain();
    }
    for (const [socket, res] of this.#inFlight) {
      if (!res.headersSent) res.setHeader("connection", "close");
      else {
        // Its head already promised keep-alive: end the connection once the response is done, unless
        // another request has started on it (that one is answered with Connection: close).
        res.once("close", () => {
          if (!this.#inFlight.has(socket)) socket.end();
        });
      }
    }
    // Once, not on every tick: a connection that completes its handshake during the drain is idle until its
    // first request arrives, and that request deserves an answer (Node's headersTimeout still bounds it).
    for (const server of this.#servers) server.closeIdleConnections();
    while (!deadline.expired && open() > 0) {
      await Promise.race([new Promise((resolve) => setTimeout(resolve, POLL_MS)), deadline.reached]);
    }
    const cut = open();
    for (const res of this.#inFlight.values()) cutForward(res, DRAIN_CUT);
    for (const socket of this.#sockets) socket.destroy();
    for (const connection of [...this.#adopted]) {
      if (connection.current) cutForward(connection.current, DRAIN_CUT);
      connection.socket.destroy();
    }
    return { inFlight, cut };
  }

  /** Stops Node's header and request timers and forgets the servers; call once the drain is over. */
  close(): void {
    for (const server of this.#servers) {
      server.off("connection", this.#onConnection);
      server.closeAllConnections();
      // http.Server.close() clears the timeout timer even when the server no longer (or never) listened.
      server.close();
    }
  }

  readonly #onConnection = (socket: net.Socket): void => {
    this.#sockets.add(socket);
    socket.once("close", () => this.#sockets.delete(socket));
  };
}

/**
 * Stops a listening http.Server from accepting without Node's `http.Server.close()`, which would also stop
 * the timer that enforces `headersTimeout` and `requestTimeout`: during a drain, a client that trickles its
 * headers must still be cut on time. `HttpDrain.close()` stops that timer at the end.
 */
export function stopAccepting(server: http.Server): void {
  if (server.listening) net.Server.prototype.close.call(server);
}
