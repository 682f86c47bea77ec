// The outbound listener: plain HTTP from the app on localhost, carried to upstreams over pooled mTLS.
import http from "node:http";
import type net from "node:net";
import type { AddressInfo } from "node:net";
import { performance } from "node:perf_hooks";
import tls from "node:tls";
import type { LimitsConfig, OutboundConfig } from "../config/index.ts";
import { parseHostPort } from "../config/index.ts";
import { type CredentialStore, type Credentials, crlOption } from "../credentials/index.ts";
import { type DenyList, PeerIdentityCache } from "../identity/index.ts";
import {
  type Deadline,
  type DrainResult,
  filterRequestHeaders,
  forward,
  HttpDrain,
  httpLimits,
  rawErrorResponse,
  reportCapacity,
  sendError,
  settleClientError,
  stopAccepting,
} from "../proxy/index.ts";
import type { Logger, RequestRecord, TrafficObserver } from "../telemetry/index.ts";
import type { UpstreamHandshakeFailure } from "./connector.ts";
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

export class OutboundListener {
  readonly #options: OutboundOptions;
  readonly #upstreams: Upstream[];
  readonly #router: Router;
  /** The shared listener first, then one per upstream that has a `listen` of its own. */
  readonly #servers: { field: string; server: http.Server; address: string }[] = [];
  readonly #unsubscribe: () => void;
  readonly #drain = new HttpDrain();

  constructor(options: OutboundOptions) {
    this.#options = options;
    const { config, limits, store } = options;
    const context = clientContext(store.current);
    const peers = new PeerIdentityCache("server", store);
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
          onFailure: this.#onHandshakeFailure,
        }),
    );
    this.#router = new Router(this.#upstreams);
    this.#servers.push({
      field: "outbound.listen",
      server: this.#createServer("outbound.listen", undefined),
      address: config.listen,
    });
    for (const upstream of this.#upstreams) {
      if (upstream.config.listen) {
        this.#servers.push({
          field: `outbound.upstreams.${upstream.name}.listen`,
          server: this.#createServer(`outbound.upstreams.${upstream.name}.listen`, upstream),
          address: upstream.config.listen,
        });
      }
    }
    this.#unsubscribe = store.subscribe((next) => {
      const nextContext = clientContext(next);
      for (const upstream of this.#upstreams) void upstream.useContext(nextContext);
    });
  }

  /** Binds every listener; on failure, the field that could not be bound is named. */
  async listen(): Promise<Record<string, AddressInfo>> {
    const bound: Record<string, AddressInfo> = {};
    for (const { field, server, address } of this.#servers) {
      const { host, port } = parseHostPort(address)!;
      await new Promise<void>((resolve, reject) => {
        server.once("error", (error: Error) => reject(Object.assign(error, { field })));
        server.listen(port, host, () => resolve());
      });
      bound[field] = server.address() as AddressInfo;
    }
    return bound;
  }

  stats(): Record<string, UpstreamStats> {
    return Object.fromEntries(this.#upstreams.map((upstream) => [upstream.name, upstream.stats()]));
  }

  /** Whether each listener accepts connections, by config field. */
  listening(): Record<string, boolean> {
    return Object.fromEntries(this.#servers.map(({ field, server }) => [field, server.listening]));
  }

  /** Open connections from the app, over every listener. */
  get connections(): number {
    return this.#drain.connections;
  }

  /**
   * Stops accepting on every listener and drains (see HttpDrain): requests in flight finish with
   * `Connection: close`, idle connections close at once, the rest are cut at the deadline. Then the upstream
   * pools close.
   */
  async drain(deadline: Deadline): Promise<DrainResult> {
    this.#unsubscribe();
    for (const { server } of this.#servers) stopAccepting(server);
    const result = await this.#drain.drain(deadline);
    this.#drain.close();
    // No client connection is left, so nothing is in flight on the pools; a pool that still fails to close
    // (a connection mid-handshake) is destroyed.
    await Promise.all(this.#upstreams.map((upstream) => upstream.close().catch(() => upstream.destroy())));
    return result;
  }

  #createServer(field: string, portUpstream: Upstream | undefined): http.Server {
    const { limits } = this.#options;
    const server = http.createServer(
      {
        ...httpLimits(limits),
        joinDuplicateHeaders: false,
        insecureHTTPParser: false,
        noDelay: true,
      },
      (req, res) => this.#handle(req, res, portUpstream),
    );
    server.maxConnections = limits.maxConnections;
    reportCapacity(server, field, this.#options.logger);
    this.#drain.watch(server);
    server.on("connect", (_req: http.IncomingMessage, socket: net.Socket) => {
      socket.end(
        rawErrorResponse(
          405,
          "Method Not Allowed",
          "bad_request",
          "CONNECT tunnels are not supported: send plain http:// requests and mtlsd adds the mutual TLS",
        ),
      );
    });
    server.on("clientError", (error: Error & { code?: string }, socket: net.Socket) => {
      const answer = settleClientError(error, socket, this.#drain);
      if (answer)
        socket.end(rawErrorResponse(answer.status, answer.statusText, answer.reason, answer.message));
    });
    return server;
  }

  #handle(req: http.IncomingMessage, res: http.ServerResponse, portUpstream: Upstream | undefined): void {
    const started = performance.now();
    this.#drain.request(req, res);
    const method = req.method!;
    // A `Connection: close` from the app ends only the app's own connection, never a pooled one.
    const headers = filterRequestHeaders(req.rawHeaders);
    const record: RequestRecord = {
      direction: "outbound",
      source_identity: this.#options.store.current.spiffeId,
      destination_identity: "",
      method,
      path: "",
      decision: "allow",
      reason: "forwarded",
      status: 0,
      duration_ms: 0,
    };
    const route = this.#router.route(req.url!, headers.host, portUpstream);
    if (!route.ok || headers.hosts > 1) {
      const [status, reason, detail] = route.ok
        ? ([400, "bad_request", "the request has more than one Host header"] as const)
        : ([route.status, route.reason, route.detail] as const);
      record.path = req.url!.split("?")[0]!.slice(0, 200);
      record.decision = "deny";
      record.destination_identity = "unknown";
      sendError(res, status, reason, detail, headers.hasBody);
      this.#finish(record, started, status, reason, detail);
      return;
    }
    if (route.authority !== undefined) replaceHost(headers.list, route.authority);
    const { upstream, path } = route;
    record.destination_identity = upstream.config.identity;
    record.upstream = upstream.name;
    record.path = path.split("?")[0]!;
    forward(
      req,
      res,
      {
        dispatcher: upstream.dispatcher,
        upstream: upstream.name,
        method,
        path,
        headers: headers.list,
        hasBody: headers.hasBody,
        headersTimeout: upstream.config.timeout,
        bodyTimeout: this.#options.limits.requestTimeout,
        failures: upstream.failures,
      },
      (outcome) =>
        this.#finish(record, started, outcome.status, outcome.failure?.reason, outcome.failure?.message),
    );
  }

  readonly #onHandshakeFailure = (upstream: Upstream, failure: UpstreamHandshakeFailure): void => {
    this.#options.observer.handshakeFailure({
      direction: "outbound",
      reason: failure.reason,
      detail: failure.detail,
      upstream: upstream.name,
      source_identity: this.#options.store.current.spiffeId,
      destination_identity: upstream.config.identity,
      ...(failure.presented ? { presented_identity: failure.presented } : {}),
    });
  };

  #finish(record: RequestRecord, started: number, status: number, reason?: string, error?: string): void {
    record.status = status;
    if (reason) record.reason = reason;
    if (error) record.error = error;
    record.duration_ms = Math.round((performance.now() - started) * 1000) / 1000;
    this.#options.observer.request(record);
  }
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
