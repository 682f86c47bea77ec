// One address of an upstream: its pools of mTLS connections (HTTP/1.1, HTTP/2 sessions), swapped whole when credentials change.
// Plain HTTP/1.1 requests ride mtlsd's own client (H1Client, src/proxy/h1-client.ts); upgrades ride undici's Pool.
import type net from "node:net";
import type { Duplex } from "node:stream";
import type tls from "node:tls";
import type { buildConnector, Dispatcher } from "undici";
import type { UpstreamConfig } from "../config/index.ts";
import type { DenyList, PeerIdentityCache } from "../identity/index.ts";
import {
  H1Client,
  H2Client,
  LazyPool,
  type QueuedRequest,
  tolerateContinue,
  toleratingContinue,
  type UpstreamDispatcher,
} from "../proxy/index.ts";
import { mtlsConnector, type UpstreamHandshakeFailure } from "./connector.ts";
import { EndpointHealth } from "./outlier.ts";

/** The protocol spoken with an upstream's sidecar: known once a connection has negotiated it. */
export type UpstreamProtocol = "h2" | "http/1.1" | "unknown";

export interface EndpointOptions {
  /** The upstream's name, for messages. */
  upstream: string;
  config: UpstreamConfig;
  /** `host:port` of this endpoint, the host an IP address once resolved (IPv6 in brackets). */
  address: string;
  /** What to connect to: an IP address, or a name when nothing resolved it first. */
  host: string;
  port: number;
  /** SNI: the DNS name the address came from; none for an address configured as an IP. */
  servername: string | undefined;
  /** `:authority` of an HTTP/2 request that has no Host. */
  authority: string;
  context: tls.SecureContext;
  peers: PeerIdentityCache;
  denyList: DenyList;
  connectTimeoutMs: number;
  idleTimeoutMs: number;
  /** Counted for the whole upstream: resumption works per endpoint, and is reported per upstream. */
  handshakes: { full: number; resumed: number };
  /** A connection refused during or right after its handshake, by either side. */
  onHandshakeFailure(failure: UpstreamHandshakeFailure): void;
  /**
   * A connection could not be opened at all: refused, unreachable, timed out, or its handshake failed (the
   * server's refusal of our certificate included, though in TLS 1.3 it comes once the connection is in use).
   */
  onConnectFailure(error: Error & { code?: string }): void;
}

/** The connections of one credential version: an HTTP/2 client, HTTP/1.1 pools, or both. */
interface Generation {
  context: tls.SecureContext;
  h2: H2Client | undefined;
  /** Plain HTTP/1.1 requests. */
  http1: H1Client | undefined;
  /** Upgrades (WebSocket), each on an HTTP/1.1 connection of its own: undici's upgrade API serves them. */
  upgrades: LazyPool | undefined;
  /** Sockets that negotiated HTTP/1.1 while an `auto` endpoint was finding out: the HTTP/1.1 client's first. */
  handedOver: Duplex[];
  /** What the HTTP/2 client learned (or the setting fixed): `http/1.1` when the endpoint does not speak h2. */
  protocol: UpstreamProtocol;
  /** An HTTP/1.1 connection has been opened: the endpoint speaks HTTP/1.1, whatever it says to h2. */
  spokeHttp1: boolean;
  /** Under `auto`, the endpoint refused a connection offering only http/1.1: its HTTP/1.1 requests ride h2. */
  refusesHttp1: boolean;
}

/**
 * A pool's connector is bound to one SecureContext (undici has no way to change a dispatcher's TLS options), so
 * a credential rotation builds new pools with a connector bound to the new one; the old ones close once their
 * in-flight requests finish.
 * A request always runs whole on one pool, so it never sees half of a rotation.
 *
 * `protocol: auto` keeps each request in the protocol the app spoke, as Istio's sidecars do by default
 * (h2UpgradePolicy DO_NOT_UPGRADE): in Node an HTTP/2 hop costs more CPU per request than an HTTP/1.1 one, and
 * multiplexing buys little on a pool of kept-alive connections (docs/protocols.md, "Between sidecars, the app's
 * protocol").
 * HTTP/1.1 requests ride HTTP/1.1 connections, which offer ALPN http/1.1 only (a server that prefers h2 would
 * pick it from a longer list); an endpoint that refuses that offer (an h2-only server's "no application
 * protocol" alert) is not counted as failing, and its HTTP/1.1 requests ride h2 from then on, the first one
 * included. h2 requests (gRPC, h2c apps) offer ALPN h2 and http/1.1 on the first connection of each generation
 * and keep to what the endpoint chose: an h2 session carries them from then on, or the socket and the requests
 * waiting for it move to the HTTP/1.1 pool. Upgrades (WebSocket) always ride HTTP/1.1 connections of their own.
 */
export class Endpoint {
  readonly address: string;
  /** What the balancer knows of it: requests in flight, failures, ejection. */
  readonly health = new EndpointHealth();
  #current: Generation;
  /** Generations of earlier credential versions, closing as their in-flight requests finish. */
  readonly #retiring = new Set<Generation>();
  readonly #options: EndpointOptions;
  /** Plain requests over HTTP/1.1, on the current generation's client. */
  readonly #http1: UpstreamDispatcher;
  /** Dispatches the upgrades' pool with one servername, whatever Host the app sent (see #pooled). */
  readonly #upgrades: UpstreamDispatcher;

  constructor(options: EndpointOptions) {
    this.#options = options;
    this.address = options.address;
    this.#current = this.#generation(options.context);
    this.#http1 = {
      dispatch: (dispatch, handler) => this.#http1Client(this.#current).dispatch(dispatch, handler),
    };
    this.#upgrades = {
      dispatch: (dispatch, handler) =>
        this.#upgradePool(this.#current).dispatch(this.#pooled(dispatch), handler),
    };
  }

  /** Where a request to this endpoint goes now: `h2` for one the app sent over HTTP/2, else HTTP/1.1. */
  dispatcherFor(appProtocol: "h2" | "http/1.1"): UpstreamDispatcher {
    const current = this.#current;
    if (current.protocol === "http/1.1" || !current.h2) return this.#http1;
    if (appProtocol === "h2" || this.#options.config.protocol !== "auto" || current.refusesHttp1)
      return current.h2;
    return this.#http1;
  }

  /**
   * Whether an HTTP/1.1 request that failed with `error` goes again to this endpoint, over h2: under `auto`, the
   * endpoint refused a connection that offered only http/1.1 (an h2-only server). The request never left; this
   * endpoint's HTTP/1.1 requests ride h2 from now on.
   */
  switchToH2(error: Error): boolean {
    const current = this.#current;
    if (this.#options.config.protocol !== "auto" || !current.h2 || !refusesProtocol(error)) return false;
    current.refusesHttp1 = true;
    return true;
  }

  /** An HTTP/1.1 pool for upgrades: those never ride an HTTP/2 session. */
  get upgrades(): UpstreamDispatcher {
    return this.#upgrades;
  }

  /** `h2` once an HTTP/2 session was negotiated, else `http/1.1` once an HTTP/1.1 connection was. */
  get protocol(): UpstreamProtocol {
    const { protocol, spokeHttp1 } = this.#current;
    return protocol === "unknown" && spokeHttp1 ? "http/1.1" : protocol;
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

  /** Open connections, and requests queued or in flight (queued ones only on the current pools). */
  stats(): { connections: number; pending: number } {
    let connections = 0;
    let pending = 0;
    for (const generation of [this.#current, ...this.#retiring]) {
      for (const pool of [generation.http1, generation.upgrades, generation.h2]) {
        if (!pool) continue;
        connections += pool.stats.connected;
        pending += pool.stats.running + (generation === this.#current ? pool.stats.pending : 0);
      }
    }
    return { connections, pending };
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
        generation.upgrades?.destroy(),
        generation.h2?.destroy(),
      ]),
    );
  }

  /**
   * undici opens a new connection whenever a request's servername differs from its connection's, and takes it
   * from the Host header when none is given: one fixed value keeps the pool whatever Host the app sends. The
   * connector ignores it and sends the endpoint's own SNI (as it does for H1Client, which never looks at Host).
   */
  #pooled(options: Dispatcher.DispatchOptions): Dispatcher.DispatchOptions {
    // A DispatchOptions that undici takes, though its type does not say so.
    return { ...options, servername: this.address } as Dispatcher.DispatchOptions;
  }

  #generation(context: tls.SecureContext): Generation {
    const { protocol } = this.#options.config;
    const generation: Generation = {
      context,
      h2: undefined,
      http1: undefined,
      upgrades: undefined,
      handedOver: [],
      protocol: protocol === "http1" ? "http/1.1" : protocol === "h2" ? "h2" : "unknown",
      spokeHttp1: false,
      refusesHttp1: false,
    };
    generation.h2 = protocol === "http1" ? undefined : this.#h2Client(context, generation);
    return generation;
  }

  #h2Client(context: tls.SecureContext, generation: Generation): H2Client {
    const { config, idleTimeoutMs, host, port, servername, authority } = this.#options;
    const auto = config.protocol === "auto";
    const connector = this.#connector(context, auto ? ["h2", "http/1.1"] : ["h2"]);
    return new H2Client({
      scheme: "https",
      authority,
      connect: (callback) =>
        connector(
          { hostname: host, host, port: String(port), servername: servername ?? "", protocol: "https:" },
          callback,
        ),
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
              const client = this.#http1Client(generation);
              for (const request of waiting) client.dispatch(request.options, request.handler);
            },
          }
        : {}),
    });
  }

  #http1Client(generation: Generation): H1Client {
    if (generation.http1) return generation.http1;
    const { config, idleTimeoutMs, address, host, port, servername } = this.#options;
    const connector = this.#connector(generation.context, ["http/1.1"], () => {
      generation.spokeHttp1 = true;
    });
    generation.http1 = new H1Client({
      origin: `https://${address}`,
      // Requests beyond this wait for a connection, first come first served, as in undici's Pool.
      connections: config.pool.connections,
      // Idle connections outlive a client's Connection: close; the upstream's Keep-Alive hint, less a 2 s margin,
      // shortens it, so a connection the upstream is about to close is not reused. An unasked `100 Continue`
      // from an upstream that is not mtlsd (RFC 9110 §15.2) is passed over by the client's parser.
      keepAliveTimeoutMs: idleTimeoutMs,
      connect: (callback) => {
        const socket = generation.handedOver.pop();
        if (socket && !socket.destroyed) callback(null, socket);
        else
          connector(
            { hostname: host, host, port: String(port), servername: servername ?? "", protocol: "https:" },
            callback as Parameters<buildConnector.connector>[1],
          );
      },
    });
    return generation.http1;
  }

  #upgradePool(generation: Generation): LazyPool {
    if (generation.upgrades) return generation.upgrades;
    const { config, idleTimeoutMs, address, host, port, servername } = this.#options;
    // An upstream that is not mtlsd may answer `100 Continue` unasked (RFC 9110 §15.2): the app gets its final answer.
    const connector = toleratingContinue(this.#connector(generation.context, ["http/1.1"]));
    // undici is loaded by the first upgrade (LazyPool): plain requests never need it.
    generation.upgrades = new LazyPool(
      (undici) =>
        new undici.Pool(`https://${address}`, {
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
            if (socket && !socket.destroyed)
              process.nextTick(callback, null, tolerateContinue(socket as net.Socket));
            else
              connector(
                { ...options, hostname: host, host, port: String(port), servername: servername ?? "" },
                callback,
              );
          },
        }),
    );
    return generation.upgrades;
  }

  #connector(
    context: tls.SecureContext,
    alpn: readonly string[],
    onConnected?: () => void,
  ): buildConnector.connector {
    const options = this.#options;
    // Under auto, an HTTP/1.1-only offer the server refuses is a protocol to switch, not an endpoint failing.
    const switching = options.config.protocol === "auto" && alpn.length === 1 && alpn[0] === "http/1.1";
    const connect = mtlsConnector({
      upstream: options.upstream,
      identity: options.config.identity,
      context,
      peers: options.peers,
      denyList: options.denyList,
      timeoutMs: options.connectTimeoutMs,
      alpn,
      onHandshake: (resumed) => {
        if (resumed) options.handshakes.resumed++;
        else options.handshakes.full++;
      },
      onFailure: (failure) => {
        if (!(switching && failure.detail.includes(NO_APPLICATION_PROTOCOL)))
          options.onHandshakeFailure(failure);
      },
      onRefused: options.onConnectFailure,
    });
    return (connectOptions, callback) =>
      connect(connectOptions, (error, socket) => {
        if (error) {
          if (!(switching && refusesProtocol(error))) options.onConnectFailure(error);
        } else onConnected?.();
        (callback as (error: Error | null, socket: net.Socket | tls.TLSSocket | null) => void)(error, socket);
      });
  }
}

/** The words of the TLS alert a server sends when it speaks none of the protocols offered (RFC 7301 §3.2). */
const NO_APPLICATION_PROTOCOL = "no application protocol";

/** A connection failed because the server speaks none of the protocols we offered. */
function refusesProtocol(error: Error & { cause?: unknown }): boolean {
  const cause = error.cause as { code?: string } | undefined;
  return cause?.code === "ERR_SSL_TLSV1_ALERT_NO_APPLICATION_PROTOCOL";
}

async function closeGeneration(generation: Generation): Promise<void> {
  for (const socket of generation.handedOver.splice(0)) socket.destroy();
  await Promise.all([generation.http1?.close(), generation.upgrades?.close(), generation.h2?.close()]);
}
