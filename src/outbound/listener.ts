// The outbound listener: plain HTTP/1.1 and h2c from the app on localhost, carried to upstreams over pooled mTLS.
import http from "node:http";
import http2 from "node:http2";
import type { AddressInfo } from "node:net";
import net from "node:net";
import { performance } from "node:perf_hooks";
import type { Duplex } from "node:stream";
import tls from "node:tls";
import type { LimitsConfig, OutboundConfig } from "../config/index.ts";
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
  H1Downstream,
  H2Downstream,
  H2Sessions,
  HttpDrain,
  h2ServerOptions,
  httpLimits,
  rawErrorResponse,
  reportCapacity,
  sendError,
  settleClientError,
  sniffHttp2Preface,
  superviseStream,
  Tunnels,
  unlessResetAtOnce,
  upgradeRefusal,
  upgradeRequested,
  upgradeToken,
  wireStatus,
} from "../proxy/index.ts";
import type { Logger, RequestRecord, TrafficObserver } from "../telemetry/index.ts";
import type { UpstreamHandshakeFailure } from "./connector.ts";
import { type ResolveHost, systemResolver } from "./resolve.ts";
import { Router } from "./router.ts";
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

/** Which upstream a connection from the app is bound to, if any. */
interface BoundRoute {
  upstream: Upstream;
  /** A CONNECT tunnel names its upstream once for all its requests; their Host cannot reroute them. */
  pinned: boolean;
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
  readonly #options: OutboundOptions;
  readonly #upstreams: Upstream[];
  readonly #router: Router;
  /** The shared listener first, then one per upstream that has a `listen` of its own. */
  readonly #listeners: { field: string; server: net.Server; address: string; upstream?: Upstream }[] = [];
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
    const context = clientContext(store.current);
    const peers = new PeerIdentityCache("server", store);
    const resolve = options.resolve ?? systemResolver();
    this.#upstreams = Object.entries(config.upstreams).map(
      ([name, upstream]) =>
        new Upstream({
          name,
          config: upstream,
          context,
          peers,
          denyList: options.denyList,
          connectTimeoutMs: limits.handshakeTimeout,
          idleTimeoutMs: limits.keepAliveTimeout,
          resolve,
          logger: options.logger,
          onFailure: this.#onHandshakeFailure,
        }),
    );
    this.#router = new Router(this.#upstreams);

    this.#http = http.createServer(
      {
        ...httpLimits(limits),
        joinDuplicateHeaders: false,
        insecureHTTPParser: false,
        shouldUpgradeCallback: upgradeRequested(config.upgrades),
      },
      (req, res) => this.#onRequest(req, res, false),
    );
    // The app waits for a 100 before its body: there is no policy on this side, so once routed it may send.
    this.#http.on("checkContinue", (req, res) => this.#onRequest(req, res, true));
    this.#http.on("upgrade", this.#onUpgrade);
    this.#http.on("connect", this.#onConnect);
    this.#http.on("clientError", (error: Error & { code?: string }, socket: net.Socket) => {
      const answer = settleClientError(error, socket, this.#drain);
      if (answer)
        socket.end(rawErrorResponse(answer.status, answer.statusText, answer.reason, answer.message));
    });
    this.#drain.watch(this.#http);

    this.#h2 = http2.createServer(h2ServerOptions(limits));
    this.#h2.on("stream", this.#onStream);
    this.#sessions.watch(this.#h2, limits.keepAliveTimeout);

    this.#addListener("outbound.listen", config.listen, undefined);
    for (const upstream of this.#upstreams) {
      if (upstream.config.listen) {
        this.#addListener(`outbound.upstreams.${upstream.name}.listen`, upstream.config.listen, upstream);
      }
    }
    this.#unsubscribe = store.subscribe((next) => {
      const nextContext = clientContext(next);
      for (const upstream of this.#upstreams) void upstream.useContext(nextContext);
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
    const bound: Record<string, AddressInfo> = {};
    for (const { field, server, address } of this.#listeners) {
      const { host, port } = parseHostPort(address)!;
      await new Promise<void>((resolve, reject) => {
        server.once("error", (error: Error) => reject(Object.assign(error, { field })));
        server.listen(port, host, () => resolve());
      });
      bound[field] = server.address() as AddressInfo;
    }
    // The http.Server is fed sockets and never listens itself, but Node starts the timer that enforces
    // headersTimeout and requestTimeout on "listening" (see the inbound listener).
    this.#http.emit("listening");
    return bound;
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
    await Promise.all(this.#upstreams.map((upstream) => upstream.close().catch(() => upstream.destroy())));
    return result;
  }

  #addListener(field: string, address: string, upstream: Upstream | undefined): void {
    const { limits, logger } = this.#options;
    const server = net.createServer({ noDelay: true }, (socket: AppSocket) => {
      if (upstream) socket[kRoute] = { upstream, pinned: false };
      this.#accept(socket);
    });
    server.maxConnections = limits.maxConnections;
    reportCapacity(server, field, logger);
    this.#listeners.push({ field, server, address, ...(upstream ? { upstream } : {}) });
  }

  /** A connection from the app (or a tunnel inside one): HTTP/1.1 or h2c, by its first bytes. */
  #accept(socket: net.Socket): void {
    if (!this.#sockets.has(socket)) {
      this.#sockets.add(socket);
      socket.on("error", noop);
      socket.once("close", () => this.#sockets.delete(socket));
    }
    sniffHttp2Preface(socket, (isHttp2) => feed(isHttp2 ? this.#h2 : this.#http, socket));
  }

  #onRequest(req: http.IncomingMessage, res: http.ServerResponse, expectsContinue: boolean): void {
    this.#drain.request(req, res);
    this.#handle(new H1Downstream(req, res), (req.socket as AppSocket)[kRoute], expectsContinue);
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
    const route = this.#router.route(down.target, headers.host, bound?.upstream, bound?.pinned);
    if (!route.ok || headers.hosts > 1) {
      const [status, reason, detail] = route.ok
        ? ([400, "bad_request", "the request has more than one Host header"] as const)
        : ([route.status, route.reason, route.detail] as const);
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
    const started = performance.now();
    const token = upgradeToken(req.rawHeaders)!;
    const record = this.#record(req.method!, req.url!.split("?")[0]!.slice(0, 200), token);
    const refuse = (status: number, reason: string, detail: string) => {
      record.decision = "deny";
      record.destination_identity ||= "unknown";
      socket.end(rawErrorResponse(status, http.STATUS_CODES[status] ?? "Error", reason, detail));
      this.#finish(record, started, status, reason, detail);
    };
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
    const route = this.#router.route(req.url!, headers.host, bound?.upstream, bound?.pinned);
    if (!route.ok || headers.hosts > 1) {
      if (route.ok) refuse(400, "bad_request", "the request has more than one Host header");
      else refuse(route.status, route.reason, route.detail);
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
    tunnel[kRoute] = { upstream, pinned: true };
    this.#options.logger.debug({ upstream: upstream.name, authority }, "CONNECT tunnel opened");
    tunnel.write(CONNECT_ESTABLISHED);
    if (head.length > 0) tunnel.unshift(head);
    this.#accept(tunnel);
  };

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
