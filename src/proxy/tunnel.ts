// Upgraded connections (WebSocket): after the app's 101, bytes flow both ways until either side closes.
import type { Duplex } from "node:stream";

/** What a tunnel carried, for its log line when it closes. */
export interface TunnelResult {
  bytesUp: number;
  bytesDown: number;
  /** Why it ended: a side closed, it idled past the limit, or a drain cut it. */
  endedBy: "client" | "upstream" | "idle" | "drain";
}

interface Tunnel {
  client: Duplex;
  upstream: Duplex;
  endedBy: TunnelResult["endedBy"] | undefined;
}

/**
 * Every open tunnel of a listener, so a drain can close them at its end (they never finish on their own) and
 * limits and metrics can count them.
 */
export class Tunnels {
  readonly #open = new Set<Tunnel>();

  get size(): number {
    return this.#open.size;
  }

  /**
   * Joins `client` and `upstream`. `head` holds what the client sent after its request, `upstreamHead` what the
   * upstream sent after its 101. `idleMs` with no byte either way closes both. `done` is called once.
   */
  open(
    client: Duplex,
    upstream: Duplex,
    heads: { client: Buffer; upstream: Buffer },
    idleMs: number,
    done: (result: TunnelResult) => void,
  ): void {
    const tunnel: Tunnel = { client, upstream, endedBy: undefined };
    this.#open.add(tunnel);
    let bytesUp = heads.client.length;
    let bytesDown = heads.upstream.length;
    let finished = false;
    const finish = (endedBy: TunnelResult["endedBy"]) => {
      tunnel.endedBy ??= endedBy;
      if (finished) return;
      finished = true;
      this.#open.delete(tunnel);
      client.destroy();
      upstream.destroy();
      done({ bytesUp, bytesDown, endedBy: tunnel.endedBy });
    };
    client.on("data", (chunk: Buffer) => {
      bytesUp += chunk.length;
    });
    upstream.on("data", (chunk: Buffer) => {
      bytesDown += chunk.length;
    });
    client.on("error", () => finish("client"));
    upstream.on("error", () => finish("upstream"));
    client.once("close", () => finish("client"));
    upstream.once("close", () => finish("upstream"));
    const socket = client as Duplex & { setTimeout?: (ms: number, listener: () => void) => void };
    socket.setTimeout?.(idleMs, () => finish("idle"));
    if (heads.client.length > 0) upstream.write(heads.client);
    if (heads.upstream.length > 0) client.write(heads.upstream);
    client.pipe(upstream);
    upstream.pipe(client);
    client.resume();
    upstream.resume();
  }

  /** Closes every tunnel: the end of a drain. */
  closeAll(): void {
    for (const tunnel of this.#open) {
      tunnel.endedBy = "drain";
      tunnel.client.destroy();
      tunnel.upstream.destroy();
    }
  }
}
