// One configured upstream: its keep-alive pool of mTLS connections, swapped whole when credentials change.
import type tls from "node:tls";
import { Pool } from "undici";
import type { UpstreamConfig } from "../config/index.ts";
import type { DenyList, PeerIdentityCache } from "../identity/index.ts";
import { mtlsConnector } from "./connector.ts";

export interface UpstreamStats {
  address: string;
  identity: string;
  connections: number;
  pending: number;
  handshakes: { full: number; resumed: number };
}

/**
 * undici has no way to change a dispatcher's TLS options, so a credential rotation builds a new Pool with
 * a connector bound to the new SecureContext; the old pool closes once its in-flight requests finish.
 * A request always runs whole on one pool, so it never sees half of a rotation.
 */
export class Upstream {
  readonly name: string;
  readonly config: UpstreamConfig;
  readonly origin: string;
  readonly handshakes = { full: 0, resumed: 0 };
  #pool: Pool;
  readonly #peers: PeerIdentityCache;
  readonly #denyList: DenyList;
  readonly #connectTimeoutMs: number;

  constructor(
    name: string,
    config: UpstreamConfig,
    context: tls.SecureContext,
    peers: PeerIdentityCache,
    denyList: DenyList,
    connectTimeoutMs: number,
  ) {
    this.name = name;
    this.config = config;
    this.origin = `https://${config.address}`;
    this.#peers = peers;
    this.#denyList = denyList;
    this.#connectTimeoutMs = connectTimeoutMs;
    this.#pool = this.#createPool(context);
  }

  get dispatcher(): Pool {
    return this.#pool;
  }

  /** Installs a pool built on the new credentials; the old one drains in the background. */
  useContext(context: tls.SecureContext): Promise<void> {
    const previous = this.#pool;
    this.#pool = this.#createPool(context);
    return previous.close().catch(() => undefined);
  }

  stats(): UpstreamStats {
    const { connected, pending, running } = this.#pool.stats;
    return {
      address: this.config.address,
      identity: this.config.identity,
      connections: connected,
      pending: pending + running,
      handshakes: { ...this.handshakes },
    };
  }

  close(): Promise<void> {
    return this.#pool.close();
  }

  destroy(): Promise<void> {
    return this.#pool.destroy();
  }

  #createPool(context: tls.SecureContext): Pool {
    return new Pool(this.origin, {
      connections: this.config.pool.connections,
      pipelining: 1,
      // Idle pooled connections outlive a client's Connection: close; undici also honours the server's
      // Keep-Alive hint so it never reuses a connection the upstream is about to close.
      keepAliveTimeout: 30_000,
      keepAliveMaxTimeout: 600_000,
      connect: mtlsConnector({
        upstream: this.name,
        identity: this.config.identity,
        context,
        peers: this.#peers,
        denyList: this.#denyList,
        timeoutMs: this.#connectTimeoutMs,
        onHandshake: (resumed) => {
          if (resumed) this.handshakes.resumed++;
          else this.handshakes.full++;
        },
      }),
    });
  }
}
