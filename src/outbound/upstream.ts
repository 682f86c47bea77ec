// One configured upstream: its endpoints (from a DNS name or a list), a balancer over them, ejection and retries.
import net from "node:net";
import { performance } from "node:perf_hooks";
import type tls from "node:tls";
import type { Dispatcher } from "undici";
import type { UpstreamConfig } from "../config/index.ts";
import { parseHostPort } from "../config/index.ts";
import type { DenyList, HandshakeFailureReason, PeerIdentityCache } from "../identity/index.ts";
import {
  type FailureInterpreter,
  IDLE_CONTROLLER,
  type StreamHandler,
  type UpstreamDispatcher,
} from "../proxy/index.ts";
import type { Logger } from "../telemetry/index.ts";
import type { UpstreamHandshakeFailure } from "./connector.ts";
import { Endpoint, type UpstreamProtocol } from "./endpoint.ts";
import { BalancedExchange, type EndpointRecord, type ExchangeHost, type RetryReason } from "./exchange.ts";
import { NO_ENDPOINT_CODE, upstreamFailures } from "./failures.ts";
import type { Ejection } from "./outlier.ts";
import { joinHostPort, type ResolveHost } from "./resolve.ts";

export type { UpstreamProtocol } from "./endpoint.ts";

/** One endpoint in /status. */
export interface EndpointStats {
  address: string;
  state: "healthy" | "ejected";
  /** ISO 8601 end of the current ejection; null when in rotation. */
  ejectedUntil: string | null;
  connections: number;
  pending: number;
}

export interface UpstreamStats {
  /** `address` as configured, or the `endpoints` joined with commas. */
  address: string;
  identity: string;
  protocol: UpstreamProtocol;
  connections: number;
  pending: number;
  handshakes: { full: number; resumed: number };
  endpoints: EndpointStats[];
  /** Why there is no endpoint at all (a name that does not resolve), when there is none. */
  noEndpoint?: string;
  /** Since startup: endpoints ejected, and requests sent again, by why. */
  ejections: number;
  retries: Record<RetryReason, number>;
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
  /** How DNS names in `address` or `endpoints` become addresses. */
  resolve: ResolveHost;
  logger: Logger;
  /** Milliseconds, for ejection times; tests pass their own clock. */
  now?: () => number;
  /** A connection refused during or right after its handshake, by either side; `endpoint` when known. */
  onFailure?: (upstream: Upstream, failure: UpstreamHandshakeFailure, endpoint?: string) => void;
}

/** One entry of `address` / `endpoints`: an IP address is one endpoint, a name as many as it resolves to. */
interface Target {
  /** As configured. */
  text: string;
  host: string;
  port: number;
  /** A DNS name (also the SNI of its endpoints), or undefined for an IP address. */
  name: string | undefined;
  /** The addresses the name resolved to last time it did. */
  addresses: string[];
  /** Why the last resolution failed; undefined after a success. */
  error: string | undefined;
}

/**
 * What the forwarding engine sees of an upstream is a dispatcher, as before. Behind it, each endpoint has its own
 * pools (so pooling and TLS session resumption work per endpoint), a balancer picks one per request (least_request:
 * the one with fewer requests in flight of two picked at random; or round_robin), endpoints that fail are ejected
 * for a while (never all: when every one is ejected, all are used), and a request is tried again elsewhere when
 * that is safe (see BalancedExchange).
 *
 * DNS names are resolved again every `resolveInterval`: a new address becomes an endpoint at once, one that went
 * away takes no new requests and closes once its requests in flight are done. A failed resolution keeps the
 * addresses of the last one that worked.
 */
export class Upstream implements ExchangeHost {
  readonly name: string;
  readonly config: UpstreamConfig;
  readonly handshakes = { full: 0, resumed: 0 };
  /** How this upstream's failures read to the app; the forwarding engine consults it. */
  readonly failures: FailureInterpreter;
  readonly retries: number;
  readonly #options: UpstreamOptions;
  readonly #now: () => number;
  readonly #targets: Target[];
  /** In rotation, by address. */
  readonly #endpoints = new Map<string, Endpoint>();
  #list: Endpoint[] = [];
  /** Endpoints whose addresses went away, finishing their requests in flight. */
  readonly #leaving = new Set<Endpoint>();
  #context: tls.SecureContext;
  #cursor = 0;
  #ejections = 0;
  readonly #retried: Record<RetryReason, number> = { not_sent: 0, idempotent: 0 };
  readonly #resolved: Promise<void>;
  #timer: NodeJS.Timeout | undefined;
  /** A lookup slower than resolveInterval is not overlapped by the next. */
  #resolving = false;
  #closed = false;

  constructor(options: UpstreamOptions) {
    this.#options = options;
    this.name = options.name;
    this.config = options.config;
    this.retries = options.config.retries;
    this.#now = options.now ?? (() => performance.timeOrigin + performance.now());
    this.#context = options.context;
    this.failures = upstreamFailures(this.name);
    const texts = options.config.endpoints ?? [options.config.address!];
    this.#targets = texts.map((text) => {
      const { host, port } = parseHostPort(text)!;
      return { text, host, port, name: net.isIP(host) ? undefined : host, addresses: [], error: undefined };
    });
    this.#apply();
    if (this.#targets.some((target) => target.name)) {
      this.#resolved = this.#resolve();
      this.#timer = setInterval(() => {
        if (!this.#resolving) void this.#resolve();
      }, options.config.resolveInterval);
      this.#timer.unref();
    } else this.#resolved = Promise.resolve();
  }

  /** Settles once every DNS name has been looked up once, whatever the answer. */
  resolved(): Promise<void> {
    return this.#resolved;
  }

  /** Where requests go: the balancer. It notes in `record.endpoint` where each was sent, for the request log. */
  dispatcherFor(record: EndpointRecord): UpstreamDispatcher {
    return { dispatch: (options, handler) => this.#dispatch(options, handler, false, record) };
  }

  /** Upgrades (WebSocket) through the balancer, each on an endpoint's HTTP/1.1 pool. */
  http1(record: EndpointRecord): UpstreamDispatcher {
    return { dispatch: (options, handler) => this.#dispatch(options, handler, true, record) };
  }

  #dispatch(
    options: Dispatcher.DispatchOptions,
    handler: StreamHandler,
    upgrade: boolean,
    record: EndpointRecord,
  ): boolean {
    const endpoint = this.pick([], false);
    if (!endpoint) {
      handler.onResponseError?.(IDLE_CONTROLLER, this.#noEndpointError());
      return false;
    }
    new BalancedExchange(this, options, handler, upgrade, record).start(endpoint);
    return true;
  }

  get protocol(): UpstreamProtocol {
    return this.#list.find((endpoint) => endpoint.protocol !== "unknown")?.protocol ?? "unknown";
  }

  /** Installs pools built on the new credentials on every endpoint; the old ones drain in the background. */
  async useContext(context: tls.SecureContext): Promise<void> {
    this.#context = context;
    await Promise.all(this.#list.map((endpoint) => endpoint.useContext(context)));
  }

  pick(tried: readonly Endpoint[], repeat: boolean): Endpoint | undefined {
    const list = this.#list;
    if (list.length === 0) return undefined;
    const now = this.#now();
    let candidates: Endpoint[] = [];
    const ejected: Endpoint[] = [];
    for (const endpoint of list) {
      if (tried.includes(endpoint)) continue;
      if (endpoint.health.isEjected(now)) ejected.push(endpoint);
      else candidates.push(endpoint);
    }
    // Panic, as Envoy calls it: when every endpoint left is ejected, they are all used; failing ones beat none.
    if (candidates.length === 0) candidates = ejected;
    if (candidates.length === 0 && repeat) {
      candidates = list.filter((endpoint) => !endpoint.health.isEjected(now));
      if (candidates.length === 0) candidates = list;
    }
    if (candidates.length <= 1) return candidates[0];
    if (this.config.balance === "round_robin") {
      this.#cursor = (this.#cursor + 1) % candidates.length;
      return candidates[this.#cursor];
    }
    // Power of two choices: two distinct endpoints at random, the one with fewer requests in flight.
    const first = Math.floor(Math.random() * candidates.length);
    let second = Math.floor(Math.random() * (candidates.length - 1));
    if (second >= first) second++;
    const a = candidates[first]!;
    const b = candidates[second]!;
    return b.health.active < a.health.active ? b : a;
  }

  answered(endpoint: Endpoint, status: number): void {
    const now = this.#now();
    if (status < 500) {
      if (endpoint.health.success(now)) {
        this.#options.logger.info(
          { upstream: this.name, endpoint: endpoint.address },
          "upstream endpoint answers again after its ejection",
        );
      }
      return;
    }
    this.#ejected(endpoint, endpoint.health.failure(now, this.config.outlier, `answered ${status}`));
  }

  failed(endpoint: Endpoint, error: Error & { code?: string }): void {
    const detail = error.code ? `${error.code}: ${error.message}` : error.message;
    this.#ejected(endpoint, endpoint.health.failure(this.#now(), this.config.outlier, detail));
  }

  refused(endpoint: Endpoint, reason: HandshakeFailureReason): void {
    const detail = `${this.name} refused our certificate: ${reason}`;
    this.#options.onFailure?.(this, { reason, detail }, endpoint.address);
    this.#ejected(endpoint, endpoint.health.connectFailure(this.#now(), this.config.outlier, detail));
  }

  retried(reason: RetryReason, from: Endpoint, error: Error & { code?: string }): void {
    this.#retried[reason]++;
    this.#options.logger.debug(
      { upstream: this.name, endpoint: from.address, retry: reason, error: error.code ?? error.message },
      "request sent to another endpoint",
    );
  }

  stats(): UpstreamStats {
    const now = this.#now();
    let connections = 0;
    let pending = 0;
    const endpoints = this.#list.map((endpoint): EndpointStats => {
      const stats = endpoint.stats();
      connections += stats.connections;
      pending += stats.pending;
      const until = endpoint.health.ejectedUntil(now);
      return {
        address: endpoint.address,
        state: until === undefined ? "healthy" : "ejected",
        ejectedUntil: until === undefined ? null : new Date(until).toISOString(),
        ...stats,
      };
    });
    for (const endpoint of this.#leaving) {
      const stats = endpoint.stats();
      connections += stats.connections;
      pending += stats.pending;
    }
    const noEndpoint = endpoints.length === 0 ? this.#noEndpointReason() : undefined;
    return {
      address: this.config.address ?? (this.config.endpoints ?? []).join(","),
      identity: this.config.identity,
      protocol: this.protocol,
      connections,
      pending,
      handshakes: { ...this.handshakes },
      endpoints,
      ...(noEndpoint ? { noEndpoint } : {}),
      ejections: this.#ejections,
      retries: { ...this.#retried },
    };
  }

  /** Closes every pool once its in-flight requests finish. */
  async close(): Promise<void> {
    this.#stop();
    await Promise.all([...this.#list, ...this.#leaving].map((endpoint) => endpoint.close()));
  }

  /** Closes every pool now, failing what is in flight. */
  async destroy(): Promise<void> {
    this.#stop();
    await Promise.all([...this.#list, ...this.#leaving].map((endpoint) => endpoint.destroy()));
  }

  #stop(): void {
    this.#closed = true;
    clearInterval(this.#timer);
  }

  #ejected(endpoint: Endpoint, ejection: Ejection | undefined): void {
    if (!ejection) return;
    this.#ejections++;
    this.#options.logger.warn(
      {
        upstream: this.name,
        endpoint: endpoint.address,
        reason: ejection.reason,
        detail: ejection.detail,
        ejected_for_ms: ejection.forMs,
        ejected_until: new Date(ejection.until).toISOString(),
        ejections_in_a_row: ejection.inARow,
      },
      "upstream endpoint ejected",
    );
  }

  /** Looks up every DNS name again, then brings the endpoints in line with the answers. */
  async #resolve(): Promise<void> {
    const { logger, resolve } = this.#options;
    this.#resolving = true;
    await Promise.all(
      this.#targets.map(async (target) => {
        if (!target.name) return;
        let addresses: string[];
        try {
          addresses = await resolve(target.name);
          if (addresses.length === 0) throw Object.assign(new Error("no address"), { code: "ENODATA" });
        } catch (error) {
          const code = (error as { code?: string }).code;
          const reason = code ? `${code}` : (error as Error).message;
          if (target.error !== reason) {
            logger.warn(
              {
                upstream: this.name,
                name: target.name,
                error: reason,
                endpoints: target.addresses.length,
              },
              target.addresses.length > 0
                ? "upstream name did not resolve: keeping the addresses it had"
                : "upstream name did not resolve: no endpoint for it yet; trying again every resolveInterval",
            );
          }
          target.error = reason;
          return;
        }
        if (target.error !== undefined) {
          logger.info({ upstream: this.name, name: target.name, addresses }, "upstream name resolves again");
        }
        target.error = undefined;
        target.addresses = addresses;
      }),
    );
    this.#resolving = false;
    if (!this.#closed) this.#apply();
  }

  /** Adds the endpoints the targets name now and retires those they no longer name. */
  #apply(): void {
    const wanted = new Map<string, { target: Target; host: string }>();
    for (const target of this.#targets) {
      const hosts = target.name ? target.addresses : [target.host];
      for (const host of hosts) {
        const address = joinHostPort(host, target.port);
        const other = wanted.get(address);
        if (other) {
          if (other.target !== target) {
            this.#options.logger.warn(
              { upstream: this.name, endpoint: address, entries: [other.target.text, target.text] },
              "two entries of the upstream name the same endpoint: it is used once",
            );
          }
          continue;
        }
        wanted.set(address, { target, host });
      }
    }
    const added: string[] = [];
    const removed: string[] = [];
    for (const [address, endpoint] of this.#endpoints) {
      if (wanted.has(address)) continue;
      this.#endpoints.delete(address);
      removed.push(address);
      this.#leaving.add(endpoint);
      void endpoint
        .close()
        .catch(() => endpoint.destroy())
        .finally(() => this.#leaving.delete(endpoint));
    }
    for (const [address, { target, host }] of wanted) {
      if (this.#endpoints.has(address)) continue;
      added.push(address);
      this.#endpoints.set(address, this.#endpoint(address, target, host));
    }
    this.#list = [...this.#endpoints.values()];
    if (added.length > 0 || removed.length > 0) {
      this.#options.logger.info(
        { upstream: this.name, added, removed, endpoints: this.#list.length },
        "upstream endpoints changed",
      );
    }
  }

  #endpoint(address: string, target: Target, host: string): Endpoint {
    const options = this.#options;
    const endpoint: Endpoint = new Endpoint({
      upstream: this.name,
      config: this.config,
      address,
      host,
      port: target.port,
      servername: target.name,
      authority: this.config.address ?? this.name,
      context: this.#context,
      peers: options.peers,
      denyList: options.denyList,
      connectTimeoutMs: options.connectTimeoutMs,
      idleTimeoutMs: options.idleTimeoutMs,
      handshakes: this.handshakes,
      onHandshakeFailure: (failure) => options.onFailure?.(this, failure, address),
      onConnectFailure: (error) => {
        const detail = error.code ? `${error.code}: ${error.message}` : error.message;
        this.#ejected(endpoint, endpoint.health.connectFailure(this.#now(), this.config.outlier, detail));
      },
    });
    return endpoint;
  }

  #noEndpointReason(): string {
    const failing = this.#targets.filter((target) => target.error !== undefined);
    if (failing.length === 0) return "its DNS names are still being resolved";
    return `${failing.map((target) => `${target.name} did not resolve (${target.error})`).join("; ")}`;
  }

  #noEndpointError(): Error {
    return Object.assign(new Error(`${this.name} has no endpoint: ${this.#noEndpointReason()}`), {
      code: NO_ENDPOINT_CODE,
    });
  }
}
