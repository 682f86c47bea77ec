// The outbound listener: plain HTTP/1.1 and h2c from the app on localhost, carried to upstreams over pooled mTLS.
import http from "node:http";
import http2 from "node:http2";
import type { AddressInfo } from "node:net";
import net from "node:net";
import { performance } from "node:perf_hooks";
import type { Duplex } from "node:stream";
import tls from "node:tls";
import type { LimitsConfig, OutboundConfig, UpstreamConfig } from "../config/index.ts";
import { parseHostPort } from "../config/index.ts";
import { type CredentialStore, type Credentials, crlOption } from "../credentials/index.ts";
import { type DenyList, PeerIdentityCache } from "../identity/index.ts";
import {
  type Deadline,
  type Downstream,
  type DrainResult,
  feed,
  filterRequestHeaders,
  forward,
  forwardUpgrade,
  H1Connection,
  type H1ConnectionOptions,
  H1Downstream,
  H2Downstream,
  H2Sessions,
  HttpDrain,
  h2ServerOptions,
  handedHeadRead,
  headerCountProblem,
  hostRequiredOf,
  httpLimits,
  limitHeaderCount,
  listenerFastPath,
  rawErrorResponse,
  reportCapacity,
  requestTimeoutError,
  sendError,
  settleClientError,
  sniffHttp2Preface,
  superviseStream,
  Tunnels,
  unlessResetAtOnce,
  updateHttpLimits,
  upgradeProtocol,
  upgradeRefusal,
  upgradeRequested,
  upgradeToken,
  wireStatus,
} from "../proxy/index.ts";
import type { Logger, RequestRecord, TrafficObserver } from "../telemetry/index.ts";
import type { UpstreamHandshakeFailure } from "./connector.ts";
import { type ResolveHost, systemResolver } from "./resolve.ts";
import { badRequestRoute, Router } from "./router.ts";
import { Upstream, type UpstreamStats } from "./upstream.ts";

export interface OutboundOptions {
  config: OutboundConfig;
  limits: LimitsConfig;
  store: CredentialStore;
  trustDomain: string;
  /** `identity.deny`: an upstream presenting a listed certificate is refused (502 upstream_tls_error, revoked). */
  denyList: DenyList;
  observer: TrafficObserver;
  logger: Logger;
  /** How upstream DNS names become endpoints; the system's resolver (getaddrinfo) by default. */
  resolve?: ResolveHost;
}

/** Our client credentials as a SecureContext: built once per credential version, shared by every upstream. */
export function clientContext(credentials: Credentials): tls.SecureContext {
  return tls.createSecureContext({
    cert: credentials.chainPem,
    key: credentials.keyPem,
    ca: credentials.caPem,
    // An upstream's certificate is checked against identity.crl exactly as a peer's is inbound.
    ...crlOption(credentials),
    minVersion: "TLSv1.3",
  });
}

/** Which upstream a connection from the app is bound to (its own port, a CONNECT tunnel): it decides, whatever Host says. */
interface BoundRoute {
  /** By name, looked up per request: a config reload may replace the upstream (or remove it) under an open connection. */
  upstream: string;
}

const kRoute = Symbol("mtlsd.outboundRoute");
type AppSocket = net.Socket & { [kRoute]?: BoundRoute };

const CONNECT_ESTABLISHED = "HTTP/1.1 200 Connection Established\r\n\r\n";

/**
 * Every listen address is a net.Server whose connections go, by their first bytes, to one http.Server (HTTP/1.1)
 * or one http2 server (h2c with prior knowledge). A connection on an upstream's own port, or through a CONNECT
 * tunnel, carries that upstream on its socket.
 */
export class OutboundListener {
  /** Swapped whole by a config reload, with the upstreams and the router built from it. */
  #options: OutboundOptions;
  #upstreams: Upstream[];
  #router: Router;
  /** Our client credentials, for upstreams a config reload adds. */
  #context: tls.SecureContext;
  readonly #peers: PeerIdentityCache;
  /** How upstream names become endpoint addresses: the system's resolver unless one is given (tests). */
  readonly #resolve: ResolveHost;
  /** Upstreams a config reload replaced or removed, closing once their requests in flight finish. */
  readonly #retiring = new Set<Promise<void>>();
  /** The shared listener first, then one per upstream that has a `listen` of its own. */
  #listeners: Listener[] = [];
  #draining = false;
  readonly #http: http.Server;
  readonly #h2: http2.Http2Server;
  readonly #sockets = new Set<net.Socket>();
  readonly #unsubscribe: () => void;
  readonly #drain = new HttpDrain();
  readonly #sessions = new H2Sessions();
  readonly #tunnels = new Tunnels();

  constructor(options: OutboundOptions) {
    this.#options = options;
    const { config, limits, store } = options;
    this.#context = clientContext(store.current);
    this.#peers = new PeerIdentityCache("server", store);
    this.#resolve = options.resolve ?? systemResolver();
    this.#upstreams = Object.entries(config.upstreams).map(([name, upstream]) =>
      this.#upstream(name, upstream),
    );
    this.#router = new Router(this.#upstreams);

    this.#http = http.createServer(
      {
        ...httpLimits(limits),
        joinDuplicateHeaders: false,
        insecureHTTPParser: false,
        // An HTTP/1.1 request without Host is refused below, with a reason and a log line (Node's own 400 has neither).
        requireHostHeader: false,
        shouldUpgradeCallback: upgradeRequested(() => this.#options.config.upgrades),
      },
      (req, res) => this.#onRequest(req, res, false),
    );
    // The app waits for a 100 before its body: there is no policy on this side, so once routed it may send.
    limitHeaderCount(this.#http, limits);
    this.#http.on("checkContinue", (req, res) => this.#onRequest(req, res, true));
    this.#http.on("upgrade", this.#onUpgrade);
    this.#http.on("connect", this.#onConnect);
    this.#http.on("clientError", this.#onClientError);
    this.#drain.watch(this.#http);

    this.#h2 = http2.createServer(h2ServerOptions(limits));
    this.#h2.on("stream", this.#onStream);
    this.#sessions.watch(this.#h2, limits.keepAliveTimeout);

    this.#listeners.push(this.#listener("outbound.listen", config.listen, undefined));
    for (const upstream of this.#upstreams) {
      if (upstream.config.listen) {
        this.#listeners.push(
          this.#listener(`outbound.upstreams.${upstream.name}.listen`, upstream.config.listen, upstream.name),
        );
      }
    }
    this.#unsubscribe = store.subscribe((next) => {
      this.#context = clientContext(next);
      for (const upstream of this.#upstreams) void upstream.useContext(this.#context);
    });
  }

  /**
   * Binds every listener once each upstream's DNS names have been looked up (a name that does not resolve is
   * logged and tried again; its upstream answers 502 meanwhile); on failure, the field that could not be bound
   * is named.
   */
  async listen(): Promise<Record<string, AddressInfo>> {
    // A lookup is part of connecting: it gets as long as limits.handshakeTimeout before mtlsd starts regardless.
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      Promise.all(this.#upstreams.map((upstream) => upstream.resolved())),
      new Promise((resolve) => {
        timer = setTimeout(resolve, this.#options.limits.handshakeTimeout);
      }),
    ]);
    clearTimeout(timer);
    for (const listener of this.#listeners) await bind(listener);
    // The http.Server is fed sockets and never listens itself, but Node starts the timer that enforces
    // headersTimeout and requestTimeout on "listening" (see the inbound listener).
    this.#http.emit("listening");
    return this.addresses();
  }

  /** Where each listener is bound, by config field. */
  addresses(): Record<string, AddressInfo> {
    return Object.fromEntries(
      this.#listeners.flatMap(({ field, server }) =>
        server.listening ? [[field, server.address() as AddressInfo]] : [],
      ),
    );
  }

  /**
   * A config reload changed `outbound` (src/config-reload.ts decides what reaches here). First the part that can
   * fail: the per-upstream ports the new config adds are bound (a port in use refuses the whole reload, and
   * nothing changes). The returned function then installs the rest, and cannot fail: an upstream whose settings
   * changed, or that is new, gets new pools; one replaced or removed finishes its requests in flight and closes;
   * a per-upstream port the config no longer has stops accepting (its open connections stay, routed by name).
   */
  async prepare(config: OutboundConfig): Promise<() => void> {
    const wanted = Object.entries(config.upstreams).flatMap(([name, upstream]) =>
      upstream.listen
        ? [{ field: `outbound.upstreams.${name}.listen`, address: upstream.listen, upstream: name }]
        : [],
    );
    const isWanted = (listener: Listener) =>
      listener.upstream === undefined ||
      wanted.some((w) => w.field === listener.field && w.address === listener.address);
    const kept = this.#listeners.filter(isWanted);
    const added = wanted
      .filter((w) => !kept.some((listener) => listener.field === w.field))
      .map((w) => this.#listener(w.field, w.address, w.upstream));
    try {
      for (const listener of added) await bind(listener);
      // A stop that came while the ports were being bound closed the listeners it knew: these must not outlive it.
      if (this.#draining) throw new Error("the outbound listener is draining");
    } catch (error) {
      for (const listener of added) listener.server.close();
      throw error;
    }
    return () => {
      const closing = this.#listeners.filter((listener) => !isWanted(listener));
      this.#listeners = [...kept, ...added];
      for (const { server } of closing) server.close();
      this.#options = { ...this.#options, config };
      const previous = new Map(this.#upstreams.map((upstream) => [upstream.name, upstream]));
      this.#upstreams = Object.entries(config.upstreams).map(([name, upstreamConfig]) => {
        const current = previous.get(name);
        if (current && samePools(current.config, upstreamConfig)) {
          // Same pools: a changed `listen` alone is the port's business, done above.
          previous.delete(name);
          return current;
        }
        return this.#upstream(name, upstreamConfig);
      });
      this.#router = new Router(this.#upstreams);
      for (const upstream of previous.values()) this.#retire(upstream);
    };
  }

  /** A config reload changed `limits`: new connections and requests on every port get the new bounds. */
  applyLimits(limits: LimitsConfig): void {
    this.#options = { ...this.#options, limits };
    for (const { server } of this.#listeners) server.maxConnections = limits.maxConnections;
    updateHttpLimits({ http: this.#http, h2: this.#h2 }, limits);
  }

  /**
   * `identity.deny` changed (the list itself is shared and already replaced): every upstream gets new pools, whose
   * connections are checked against it; requests in flight finish on the old ones.
   */
  renewPools(): void {
    for (const upstream of this.#upstreams) void upstream.useContext(this.#context);
  }

  stats(): Record<string, UpstreamStats> {
    return Object.fromEntries(this.#upstreams.map((upstream) => [upstream.name, upstream.stats()]));
  }

  /** Whether each listener accepts connections, by config field. */
  listening(): Record<string, boolean> {
    return Object.fromEntries(this.#listeners.map(({ field, server }) => [field, server.listening]));
  }

  /** Open connections from the app, over every listener (tunnels and WebSockets included). */
  get connections(): number {
    return this.#sockets.size;
  }

  /**
   * Stops accepting on every listener and drains (see HttpDrain): requests in flight finish with
   * `Connection: close` (HTTP/2: GOAWAY), idle connections close at once, the rest — WebSockets among them — are
   * cut at the deadline. Then the upstream pools close.
   */
  async drain(deadline: Deadline): Promise<DrainResult> {
    this.#draining = true;
    this.#unsubscribe();
    const closed = Promise.all(
      this.#listeners.map(({ server }) => new Promise<void>((resolve) => server.close(() => resolve()))),
    );
    const streams = this.#sessions.openStreams + this.#tunnels.size;
    this.#sessions.drain();
    const result = await this.#drain.drain(deadline, () => this.#sockets.size);
    result.inFlight += streams;
    this.#tunnels.closeAll();
    this.#sessions.destroy();
    for (const socket of this.#sockets) socket.destroy();
    this.#drain.close();
    this.#h2.close();
    await closed;
    // No client connection is left, so nothing is in flight on the pools; a pool that still fails to close
    // (a connection mid-handshake) is destroyed.
    await Promise.all([
      ...this.#upstreams.map((upstream) => upstream.close().catch(() => upstream.destroy())),
      ...this.#retiring,
    ]);
    return result;
  }

  #upstream(name: string, config: UpstreamConfig): Upstream {
    const { limits, denyList } = this.#options;
    return new Upstream({
      name,
      config,
      context: this.#context,
      peers: this.#peers,
      denyList,
      connectTimeoutMs: limits.handshakeTimeout,
      idleTimeoutMs: limits.keepAliveTimeout,
      resolve: this.#resolve,
      logger: this.#options.logger,
      onFailure: this.#onHandshakeFailure,
    });
  }

  #retire(upstream: Upstream): void {
    const closing: Promise<void> = upstream
      .close()
      .catch(() => upstream.destroy())
      .finally(() => this.#retiring.delete(closing));
    this.#retiring.add(closing);
  }

  /** A port of the app's side; `upstream` names the upstream it is for, when it has one. */
  #listener(field: string, address: string, upstream: string | undefined): Listener {
    const { limits, logger } = this.#options;
    const server = net.createServer({ noDelay: true }, (socket: AppSocket) => {
      if (upstream) socket[kRoute] = { upstream };
      this.#accept(socket);
    });
    server.maxConnections = limits.maxConnections;
    reportCapacity(server, field, logger);
    return { field, server, address, ...(upstream ? { upstream } : {}) };
  }

  /** A connection from the app (or a tunnel inside one): HTTP/1.1 or h2c, by its first bytes. */
  #accept(socket: net.Socket): void {
    if (!this.#sockets.has(socket)) {
      this.#sockets.add(socket);
      socket.on("error", noop);
      socket.once("close", () => this.#sockets.delete(socket));
    }
    // A connection that sends too little to tell its protocol within headersTimeout (nothing at all, say) is
    // answered as node:http's headersTimeout answers a silent HTTP/1.1 connection; held open, it would count
    // against maxConnections for good.
    const { headersTimeout } = this.#options.limits;
    const acceptedAt = performance.now();
    const deadline =
      headersTimeout > 0
        ? setTimeout(() => this.#onClientError(requestTimeoutError(), socket), headersTimeout)
        : undefined;
    deadline?.unref();
    socket.once("close", () => clearTimeout(deadline));
    sniffHttp2Preface(socket, (isHttp2) => {
      clearTimeout(deadline);
      if (isHttp2) feed(this.#h2, socket);
      else this.#drain.adopt(new H1Connection(socket, this.#fastPath, acceptedAt));
    });
  }

  /**
   * HTTP/1.1 connections start on the fast path (src/proxy/h1-server.ts): plain requests are read and answered
   * there, and go through the same pipeline as node:http's (#handle). At the first request it does not take,
   * the connection is node:http's for good, and everything about it is decided as before.
   */
  readonly #fastPath: H1ConnectionOptions = listenerFastPath({
    limits: () => this.#options.limits,
    draining: () => this.#drain.draining,
    request: (down) => this.#handle(down, (down.socket as AppSocket)[kRoute], false),
    http: () => this.#http,
    released: (connection) => this.#drain.release(connection),
    // A connection that sends nothing, or not a whole first head, within headersTimeout is answered 408 here.
    clientError: (error, socket) => this.#onClientError(error, socket),
  });

  #onRequest(req: http.IncomingMessage, res: http.ServerResponse, expectsContinue: boolean): void {
    if (!handedHeadRead(req.socket)) return;
    this.#drain.request(req, res);
    const down = new H1Downstream(req, res);
    const tooMany = headerCountProblem(req.rawHeaders, this.#options.limits);
    if (tooMany) {
      const record = this.#record(down.method, down.target.split("?")[0]!.slice(0, 200), down.protocol);
      record.decision = "deny";
      record.destination_identity = "unknown";
      sendError(down, 431, "bad_request", tooMany, true);
      this.#finish(record, performance.now(), 431, "bad_request", tooMany);
      return;
    }
    this.#handle(down, (req.socket as AppSocket)[kRoute], expectsContinue);
  }

  readonly #onStream = (
    stream: http2.ServerHttp2Stream,
    headers: http2.IncomingHttpHeaders,
    _flags: number,
    rawHeaders: string[],
  ): void => {
    superviseStream(stream, this.#options.config.streamIdleTimeout, "outbound.streamIdleTimeout");
    const down = new H2Downstream(stream, headers, rawHeaders);
    const route = (stream.session?.socket as AppSocket | undefined)?.[kRoute];
    if (down.method === "CONNECT") {
      const detail = "CONNECT inside HTTP/2 is not supported: send requests, or CONNECT over HTTP/1.1";
      const record = this.#record(down.method, down.target || (headers[":authority"] ?? ""), down.protocol);
      sendError(down, 405, "method_not_allowed", detail);
      this.#finish(record, performance.now(), 405, "method_not_allowed", detail);
      return;
    }
    unlessResetAtOnce(
      stream,
      () => this.#handle(down, route, headers.expect === "100-continue"),
      () =>
        this.#options.logger.debug(
          { method: down.method, path: down.target, protocol: "h2" },
          "stream reset before it was forwarded",
        ),
    );
  };

  #handle(down: Downstream, bound: BoundRoute | undefined, expectsContinue: boolean): void {
    const started = performance.now();
    // A `Connection: close` from the app ends only the app's own connection, never a pooled one.
    const headers = filterRequestHeaders(down.rawHeaders);
    const record = this.#record(down.method, "", down.protocol);
    const hostCount = hostCountProblem(headers.hosts, down.hostRequired);
    const route = hostCount
      ? badRequestRoute(hostCount)
      : this.#router.route(down.target, headers.host, this.#bound(bound));
    if (!route.ok) {
      const { status, reason, detail } = route;
      record.path = down.target.split("?")[0]!.slice(0, 200);
      record.decision = "deny";
      record.destination_identity = "unknown";
      const grpcStatus = sendError(down, status, reason, detail, headers.hasBody);
      this.#finish(record, started, wireStatus(status, grpcStatus), reason, detail, grpcStatus);
      return;
    }
    if (route.authority !== undefined) replaceHost(headers.list, route.authority);
    const { upstream, path } = route;
    record.destination_identity = upstream.config.identity;
    record.upstream = upstream.name;
    record.path = path.split("?")[0]!;
    if (expectsContinue) down.writeContinue();
    const idle = this.#options.config.streamIdleTimeout;
    forward(
      down,
      {
        dispatcher: upstream.dispatcherFor(record),
        upstream: upstream.name,
        method: down.method,
        path,
        headers: headers.list,
        hasBody: down.hasBody ?? headers.hasBody,
        // A gRPC stream may wait long for its first message: its deadline is the client's (grpc-timeout).
        headersTimeout: down.grpc ? idle : upstream.config.timeout,
        bodyTimeout: idle,
        failures: upstream.failures,
      },
      (outcome) =>
        this.#finish(
          record,
          started,
          outcome.status,
          outcome.failure?.reason,
          outcome.failure?.message,
          outcome.grpcStatus,
        ),
    );
  }

  readonly #onUpgrade = (req: http.IncomingMessage, socket: Duplex, head: Buffer): void => {
    if (!handedHeadRead(req.socket)) return;
    const started = performance.now();
    const token = upgradeToken(req.rawHeaders)!;
    const record = this.#record(req.method!, req.url!.split("?")[0]!.slice(0, 200), upgradeProtocol(token));
    const refuse = (status: number, reason: string, detail: string) => {
      record.decision = "deny";
      record.destination_identity ||= "unknown";
      socket.end(rawErrorResponse(status, http.STATUS_CODES[status] ?? "Error", reason, detail));
      this.#finish(record, started, status, reason, detail);
    };
    const tooMany = headerCountProblem(req.rawHeaders, this.#options.limits);
    if (tooMany) {
      record.decision = "deny";
      record.destination_identity = "unknown";
      socket.end(rawErrorResponse(431, "Request Header Fields Too Large", "bad_request", tooMany));
      this.#finish(record, started, 431, "bad_request", tooMany);
      return;
    }
    const refusal = upgradeRefusal(
      token,
      this.#options.config.upgrades,
      "outbound.upgrades",
      "send HTTP/2 with prior knowledge (curl --http2-prior-knowledge) or HTTP/1.1",
    );
    if (refusal) {
      refuse(400, "upgrade_refused", refusal);
      return;
    }
    const headers = filterRequestHeaders(req.rawHeaders);
    const bound = (req.socket as AppSocket)[kRoute];
    const hostCount = hostCountProblem(headers.hosts, hostRequiredOf(req));
    const route = hostCount
      ? badRequestRoute(hostCount)
      : this.#router.route(req.url!, headers.host, this.#bound(bound));
    if (!route.ok) {
      refuse(route.status, route.reason, route.detail);
      return;
    }
    if (route.authority !== undefined) replaceHost(headers.list, route.authority);
    const { upstream, path } = route;
    record.destination_identity = upstream.config.identity;
    record.upstream = upstream.name;
    record.path = path.split("?")[0]!;
    forwardUpgrade(
      socket,
      head,
      {
        dispatcher: upstream.http1(record),
        upstream: upstream.name,
        method: req.method!,
        path,
        headers: headers.list,
        token,
        headersTimeout: upstream.config.timeout,
        idleMs: this.#options.config.streamIdleTimeout,
        tunnels: this.#tunnels,
        failures: upstream.failures,
      },
      (outcome) => {
        if (outcome.tunnel) {
          record.bytes_up = outcome.tunnel.bytesUp;
          record.bytes_down = outcome.tunnel.bytesDown;
          record.ended_by = outcome.tunnel.endedBy;
        }
        this.#finish(record, started, outcome.status, outcome.failure?.reason, outcome.failure?.message);
      },
    );
  };

  /**
   * `CONNECT orders:443` is what an HTTP client (grpc-js among them) sends to its HTTP proxy: for a configured
   * upstream it is answered 200 and the tunnel is served as that upstream's plain HTTP — every request in it
   * forwarded, logged and counted like any other. Anything else is refused: never an open tunnel.
   */
  readonly #onConnect = (req: http.IncomingMessage, socket: Duplex, head: Buffer): void => {
    if (!handedHeadRead(req.socket)) return;
    const authority = req.url ?? "";
    const upstream = this.#router.upstreamFor(authority);
    if (!upstream) {
      const started = performance.now();
      const record = this.#record(req.method!, authority.slice(0, 200), "http/1.1");
      record.decision = "deny";
      record.destination_identity = "unknown";
      const detail = `CONNECT tunnels are served only for configured upstreams (${this.#router.names}), not ${JSON.stringify(authority.slice(0, 200))}: send plain http:// requests and mtlsd adds the mutual TLS`;
      socket.end(rawErrorResponse(405, "Method Not Allowed", "method_not_allowed", detail));
      this.#finish(record, started, 405, "method_not_allowed", detail);
      return;
    }
    const tunnel = socket as AppSocket;
    tunnel[kRoute] = { upstream: upstream.name };
    this.#options.logger.debug({ upstream: upstream.name, authority }, "CONNECT tunnel opened");
    tunnel.write(CONNECT_ESTABLISHED);
    if (head.length > 0) tunnel.unshift(head);
    this.#accept(tunnel);
  };

  /** Node's parser gave up on the app's request (too large, malformed, too slow): answered, logged and counted. */
  readonly #onClientError = (error: Error & { code?: string }, socket: net.Socket): void => {
    const answer = settleClientError(error, socket, this.#drain);
    if (!answer) return;
    const { status, statusText, reason, message } = answer;
    const record = this.#record("-", "-", "http/1.1");
    record.decision = "deny";
    record.destination_identity = "unknown";
    this.#finish(record, performance.now(), status, reason, error.code ?? error.message);
    socket.end(rawErrorResponse(status, statusText, reason, message));
  };

  /** The upstream a port or tunnel is bound to, as configured now (undefined once a reload removed it). */
  #bound(route: BoundRoute | undefined): Upstream | undefined {
    return route ? this.#router.named(route.upstream) : undefined;
  }

  readonly #onHandshakeFailure = (
    upstream: Upstream,
    failure: UpstreamHandshakeFailure,
    endpoint?: string,
  ): void => {
    this.#options.observer.handshakeFailure({
      direction: "outbound",
      reason: failure.reason,
      detail: failure.detail,
      upstream: upstream.name,
      ...(endpoint ? { endpoint } : {}),
      source_identity: this.#options.store.current.spiffeId,
      destination_identity: upstream.config.identity,
      ...(failure.presented ? { presented_identity: failure.presented } : {}),
    });
  };

  #record(method: string, path: string, protocol: string): RequestRecord {
    return {
      direction: "outbound",
      source_identity: this.#options.store.current.spiffeId,
      destination_identity: "",
      method,
      path,
      protocol,
      decision: "allow",
      reason: "forwarded",
      status: 0,
      duration_ms: 0,
    };
  }

  #finish(
    record: RequestRecord,
    started: number,
    status: number,
    reason?: string,
    error?: string,
    grpcStatus?: string | number,
  ): void {
    record.status = status;
    if (reason) record.reason = reason;
    if (error) record.error = error;
    if (grpcStatus !== undefined) record.grpc_status = String(grpcStatus);
    record.duration_ms = Math.round((performance.now() - started) * 1000) / 1000;
    this.#options.observer.request(record);
  }
}

function noop(): void {}

interface Listener {
  field: string;
  server: net.Server;
  address: string;
  /** The upstream whose own port this is, by name. */
  upstream?: string;
}

/** Binds a listener; an error names its config field. */
async function bind({ field, server, address }: Listener): Promise<void> {
  const { host, port } = parseHostPort(address)!;
  await new Promise<void>((resolve, reject) => {
    const failed = (error: Error) => reject(Object.assign(error, { field }));
    server.once("error", failed);
    server.listen(port, host, () => {
      server.off("error", failed);
      resolve();
    });
  });
}

/** Whether an upstream's pools serve `next` as they are: every setting but its own `listen` port is theirs. */
function samePools(current: UpstreamConfig, next: UpstreamConfig): boolean {
  const { listen: _current, ...pools } = current;
  const { listen: _next, ...nextPools } = next;
  return JSON.stringify(pools) === JSON.stringify(nextPools);
}

/** Sets the Host of a flat header list to the absolute-form target's authority, as RFC 9112 §3.2.2 requires. */
function replaceHost(list: string[], authority: string): void {
  for (let i = 0; i < list.length; i += 2) {
    if (list[i]!.length === 4 && list[i]!.toLowerCase() === "host") {
      list[i + 1] = authority;
      return;
    }
  }
  list.push("host", authority);
}

/**
 * Why the number of Host headers is wrong, or undefined: exactly one, or none on HTTP/1.0, which RFC 9112 §3.2
 * allows (routed by the target or the port; on the shared port an origin-form target then names no upstream).
 */
function hostCountProblem(hosts: number, hostRequired: boolean): string | undefined {
  if (hosts > 1) return "the request has more than one Host header";
  if (hosts === 0 && hostRequired)
    return "the request has no Host header (RFC 9112 §3.2 requires one in HTTP/1.1)";
  return undefined;
}
