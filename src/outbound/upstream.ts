// One configured upstream: its keep-alive pool of mTLS connections, swapped whole when credentials change.
import type tls from "node:tls";
import { Pool } from "undici";
import type { UpstreamConfig } from "../config/index.ts";
import type { DenyList, PeerIdentityCache } from "../identity/index.ts";
import type { FailureInterpreter } from "../proxy/index.ts";
import { mtlsConnector, type UpstreamHandshakeFailure } from "./connector.ts";
import { upstreamFailures } from "./failures.ts";

export interface UpstreamStats {
  address: string;
  identity: string;
  connections: number;
  pending: number;
  handshakes: { full: number; resumed: number };
}

export interface UpstreamOptions {
  name: string;
  config: UpstreamConfig;
  /** Our client SecureContext for the current credential version. */
  context: tls.SecureContext;
  peers: PeerIdentityCache;
  /** `identity.deny`: a listed server certificate is refused as revoked. */
  denyList: DenyList;
  /** TCP connect plus TLS handshake must finish within this many ms. */
  connectTimeoutMs: number;
  /** Idle pooled connections close after this many ms (sooner when the upstream announces a shorter one). */
  idleTimeoutMs: number;
  /** A connection refused during or right after its handshake, by either side. */
  onFailure?: (upstream: Upstream, failure: UpstreamHandshakeFailure) => void;
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
  /** How this upstream's failures read to the app; the forwarding engine consults it. */
  readonly failures: FailureInterpreter;
  #pool: Pool;
  /** Pools of earlier credential versions, closing as their in-flight requests finish. */
  readonly #retiring = new Set<Pool>();
  readonly #options: UpstreamOptions;

  constructor(options: UpstreamOptions) {
    this.#options = options;
    this.name = options.name;
    this.config = options.config;
    this.origin = `https://${options.config.address}`;
    this.failures = upstreamFailures(this.name, (failure) => options.onFailure?.(this, failure));
    this.#pool = this.#createPool(options.context);
  }

  get dispatcher(): Pool {
    return this.#pool;
  }

  /** Installs a pool built on the new credentials; the old one drains in the background. */
  useContext(context: tls.SecureContext): Promise<void> {
    const previous = this.#pool;
    this.#pool = this.#createPool(context);
    this.#retiring.add(previous);
    return previous
      .close()
      .catch(() => undefined)
      .finally(() => this.#retiring.delete(previous));
  }

  stats(): UpstreamStats {
    let { connected, pending, running } = this.#pool.stats;
    for (const pool of this.#retiring) {
      connected += pool.stats.connected;
      running += pool.stats.running;
    }
    return {
      address: this.config.address,
      identity: this.config.identity,
      connections: connected,
      pending: pending + running,
      handshakes: { ...this.handshakes },
    };
  }

  /** Closes every pool once its in-flight requests finish. */
  async close(): Promise<void> {
    await Promise.all([this.#pool, ...this.#retiring].map((pool) => pool.close()));
  }

  /** Closes every pool now, failing what is in flight. */
  async destroy(): Promise<void> {
    await Promise.all([this.#pool, ...this.#retiring].map((pool) => pool.destroy()));
  }

  #createPool(context: tls.SecureContext): Pool {
    const { config, idleTimeoutMs } = this.#options;
    return new Pool(this.origin, {
      connections: config.pool.connections,
      pipelining: 1,
      // Idle pooled connections outlive a client's Connection: close; undici also honours the server's
      // Keep-Alive hint so it never reuses a connection the upstream is about to close.
      keepAliveTimeout: idleTimeoutMs,
      keepAliveMaxTimeout: idleTimeoutMs,
      connect: mtlsConnector({
        upstream: this.name,
        identity: config.identity,
        context,
        peers: this.#options.peers,
        denyList: this.#options.denyList,
        timeoutMs: this.#options.connectTimeoutMs,
        onHandshake: (resumed) => {
          if (resumed) this.handshakes.resumed++;
          else this.handshakes.full++;
        },
        onFailure: (failure) => this.#options.onFailure?.(this, failure),
      }),
    });
  }
}
