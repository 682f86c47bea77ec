// One configured upstream: its pools of mTLS connections (HTTP/1.1, HTTP/2 sessions), swapped whole when credentials change.
import net from "node:net";
import type { Duplex } from "node:stream";
import type tls from "node:tls";
import { type buildConnector, Pool } from "undici";
import type { UpstreamConfig } from "../config/index.ts";
import type { DenyList, PeerIdentityCache } from "../identity/index.ts";
import {
  type FailureInterpreter,
  H2Client,
  type QueuedRequest,
  type UpstreamDispatcher,
} from "../proxy/index.ts";
import { mtlsConnector, type UpstreamHandshakeFailure } from "./connector.ts";
import { upstreamFailures } from "./failures.ts";

/** The protocol spoken with an upstream's sidecar: known once a connection has negotiated it. */
export type UpstreamProtocol = "h2" | "http/1.1" | "unknown";

export interface UpstreamStats {
  address: string;
  identity: string;
  protocol: UpstreamProtocol;
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

/** The connections of one credential version: an HTTP/2 client, an HTTP/1.1 pool, or both. */
interface Generation {
  context: tls.SecureContext;
  h2: H2Client | undefined;
  http1: Pool | undefined;
  /** Sockets that negotiated HTTP/1.1 while an `auto` upstream was finding out: the HTTP/1.1 pool's first. */
  handedOver: Duplex[];
  protocol: UpstreamProtocol;
}

/**
 * undici has no way to change a dispatcher's TLS options, so a credential rotation builds new pools with
 * a connector bound to the new SecureContext; the old ones close once their in-flight requests finish.
 * A request always runs whole on one pool, so it never sees half of a rotation.
 *
 * `protocol: auto` offers ALPN h2 and http/1.1 on the first connection of each generation and keeps to what the
 * upstream chose: an h2 session carries every request from then on, or the socket and the requests waiting for
 * it move to an HTTP/1.1 pool. Upgrades (WebSocket) always ride HTTP/1.1 connections of their own.
 */
export class Upstream {
  readonly name: string;
  readonly config: UpstreamConfig;
  readonly origin: string;
  readonly handshakes = { full: 0, resumed: 0 };
  /** How this upstream's failures read to the app; the forwarding engine consults it. */
  readonly failures: FailureInterpreter;
  #current: Generation;
  /** Generations of earlier credential versions, closing as their in-flight requests finish. */
  readonly #retiring = new Set<Generation>();
  readonly #options: UpstreamOptions;

  constructor(options: UpstreamOptions) {
    this.#options = options;
    this.name = options.name;
    this.config = options.config;
    this.origin = `https://${options.config.address}`;
    this.failures = upstreamFailures(this.name, (failure) => options.onFailure?.(this, failure));
    this.#current = this.#generation(options.context);
  }

  /** Where requests go now. */
  get dispatcher(): UpstreamDispatcher {
    const current = this.#current;
    if (current.protocol === "http/1.1" || !current.h2) return this.#http1Pool(current);
    return current.h2;
  }

  /** An HTTP/1.1 pool, for upgrades: those never ride an HTTP/2 session. */
  http1(): UpstreamDispatcher {
    return this.#http1Pool(this.#current);
  }

  get protocol(): UpstreamProtocol {
    return this.#current.protocol;
  }

  /** Installs pools built on the new credentials; the old ones drain in the background. */
  useContext(context: tls.SecureContext): Promise<void> {
    const previous = this.#current;
    this.#current = this.#generation(context);
    this.#retiring.add(previous);
    return closeGeneration(previous)
      .catch(() => undefined)
      .finally(() => this.#retiring.delete(previous));
  }

  stats(): UpstreamStats {
    let connections = 0;
    let pending = 0;
    for (const generation of [this.#current, ...this.#retiring]) {
      for (const pool of [generation.http1, generation.h2]) {
        if (!pool) continue;
        connections += pool.stats.connected;
        pending += pool.stats.running + (generation === this.#current ? pool.stats.pending : 0);
      }
    }
    return {
      address: this.config.address,
      identity: this.config.identity,
      protocol: this.#current.protocol,
      connections,
      pending,
      handshakes: { ...this.handshakes },
    };
  }

  /** Closes every pool once its in-flight requests finish. */
  async close(): Promise<void> {
    await Promise.all([this.#current, ...this.#retiring].map(closeGeneration));
  }

  /** Closes every pool now, failing what is in flight. */
  async destroy(): Promise<void> {
    await Promise.all(
      [this.#current, ...this.#retiring].flatMap((generation) => [
        generation.http1?.destroy(),
        generation.h2?.destroy(),
      ]),
    );
  }

  #generation(context: tls.SecureContext): Generation {
    const { protocol } = this.config;
    const generation: Generation = {
      context,
      h2: undefined,
      http1: undefined,
      handedOver: [],
      protocol: protocol === "http1" ? "http/1.1" : protocol === "h2" ? "h2" : "unknown",
    };
    generation.h2 = protocol === "http1" ? undefined : this.#h2Client(context, generation);
    return generation;
  }

  #h2Client(context: tls.SecureContext, generation: Generation): H2Client {
    const { config, idleTimeoutMs } = this.#options;
    const auto = config.protocol === "auto";
    const connector = this.#connector(context, auto ? ["h2", "http/1.1"] : ["h2"]);
    const { hostname, port } = hostAndPort(config.address);
    // SNI names a host, never an address (RFC 6066 §3), as undici does for its own connections.
    const servername = net.isIP(hostname) ? "" : hostname;
    return new H2Client({
      scheme: "https",
      authority: config.address,
      connect: (callback) =>
        connector({ hostname, host: hostname, port, servername, protocol: "https:" }, callback),
      maxSessions: config.pool.connections,
      idleTimeoutMs,
      settingsTimeoutMs: this.#options.connectTimeoutMs,
      onNegotiated: () => {
        generation.protocol = "h2";
      },
      ...(auto
        ? {
            fallback: (socket: Duplex, waiting: QueuedRequest[]) => {
              generation.protocol = "http/1.1";
              generation.handedOver.push(socket);
              const pool = this.#http1Pool(generation);
              for (const request of waiting) pool.dispatch(request.options, request.handler);
            },
          }
        : {}),
    });
  }

  #http1Pool(generation: Generation): Pool {
    if (generation.http1) return generation.http1;
    const { config, idleTimeoutMs } = this.#options;
    const connector = this.#connector(generation.context, ["http/1.1"]);
    generation.http1 = new Pool(this.origin, {
      connections: config.pool.connections,
      pipelining: 1,
      allowH2: false,
      // Idle pooled connections outlive a client's Connection: close; undici also honours the server's
      // Keep-Alive hint so it never reuses a connection the upstream is about to close.
      keepAliveTimeout: idleTimeoutMs,
      keepAliveMaxTimeout: idleTimeoutMs,
      connect: (options, callback) => {
        const socket = generation.handedOver.pop();
        // undici loses the request when its connector answers before returning: answer on the next tick.
        if (socket && !socket.destroyed) process.nextTick(callback, null, socket as net.Socket);
        else connector(options, callback);
      },
    });
    return generation.http1;
  }

  #connector(context: tls.SecureContext, alpn: readonly string[]): buildConnector.connector {
    return mtlsConnector({
      upstream: this.name,
      identity: this.config.identity,
      context,
      peers: this.#options.peers,
      denyList: this.#options.denyList,
      timeoutMs: this.#options.connectTimeoutMs,
      alpn,
      onHandshake: (resumed) => {
        if (resumed) this.handshakes.resumed++;
        else this.handshakes.full++;
      },
      onFailure: (failure) => this.#options.onFailure?.(this, failure),
    });
  }
}

async function closeGeneration(generation: Generation): Promise<void> {
  for (const socket of generation.handedOver.splice(0)) socket.destroy();
  await Promise.all([generation.http1?.close(), generation.h2?.close()]);
}

function hostAndPort(address: string): { hostname: string; port: string } {
  const colon = address.lastIndexOf(":");
  return { hostname: address.slice(0, colon).replace(/^\[(.*)\]$/, "$1"), port: address.slice(colon + 1) };
}
