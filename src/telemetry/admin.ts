// The admin HTTP listener: /healthz, /readyz, /metrics and /status, for probes, Prometheus and operators.
import http from "node:http";
import type { AddressInfo } from "node:net";
import { parseHostPort } from "../config/index.ts";
import type { ReadinessCheck } from "./readiness.ts";

/** The last credential reload that did something, as the credential reloader keeps it (startup counts). */
export interface LastReload {
  at: Date;
  result: "success" | "failure";
  /** What asked for it: startup, watch, poll, signal (SIGHUP) or request. */
  trigger: string;
  /** Why it failed; null after a success. */
  error: { code: string; message: string } | null;
}

/** `reload` in /status: the startup load until a rotation or SIGHUP reload replaces it. */
export interface ReloadReport {
  /** ISO 8601 time of the attempt. */
  at: string;
  result: "success" | "failure";
  trigger: string;
  /** What went wrong (a stable code and a message), when result is failure; null otherwise. */
  error: { code: string; message: string } | null;
}

/** The last config reload (startup counts), as the config reloader keeps it. */
export interface LastConfigReload {
  at: Date;
  result: "success" | "failure";
  /** startup, watch, poll, signal (SIGHUP) or request. */
  trigger: string;
  /** Why the file was refused; null after a success. */
  error: { code: string; message: string } | null;
  /** Settings the file changes that keep their running value until a restart, by field path. */
  restartRequired: readonly string[];
}

/** `configReload` in /status: whether the config file on disk is the one running, and if not, why. */
export interface ConfigReloadReport {
  /** ISO 8601 time of the attempt. */
  at: string;
  result: "success" | "failure";
  trigger: string;
  error: { code: string; message: string } | null;
  restartRequired: string[];
}

/** One trust domain's roots in /status: ours first, then each federated one. */
export interface TrustDomainReport {
  trustDomain: string;
  bundle: { subject: string; sha256: string }[];
}

/** One endpoint of an upstream in /status: `state` healthy or ejected (until `ejectedUntil`, ISO 8601). */
export interface EndpointReport {
  address: string;
  state: string;
  ejectedUntil: string | null;
  connections: number;
  pending: number;
}

/** One upstream in /status: totals over its endpoints, then each endpoint. */
export interface UpstreamReport {
  address: string;
  identity: string;
  connections: number;
  pending: number;
  endpoints: EndpointReport[];
}

/** The /status document (DESIGN.md): exactly these keys, so scripts can rely on them. */
export interface StatusDocument {
  identity: string;
  trustDomain: string;
  /** Where the identity comes from: `files` or `workload_api`. */
  source: string;
  trustDomains: TrustDomainReport[];
  cert: { serial: string; notBefore: string; notAfter: string };
  trustBundle: { subject: string; sha256: string }[];
  /** Null when there is no inbound side, hence no policy. */
  policy: { rules: number; sha256: string } | null;
  reload: ReloadReport;
  configReload: ConfigReloadReport;
  upstreams: Record<string, UpstreamReport>;
  draining: boolean;
}

/** Where /status reads from, at request time; the sidecar wires these to its live parts. */
export interface StatusSources {
  credentials(): {
    spiffeId: string;
    trustDomain: string;
    leaf: { serialHex: string; notBefore: Date; notAfter: Date };
    trustBundle: readonly { subject: string; sha256: string }[];
    federation: readonly { trustDomain: string; roots: readonly { subject: string; sha256: string }[] }[];
  };
  /** `files` or `workload_api`. */
  source(): string;
  policy(): { ruleCount: number; sha256: string } | undefined;
  reload(): LastReload;
  configReload(): LastConfigReload;
  upstreams(): Record<string, UpstreamReport>;
}

export interface AdminOptions {
  /** `admin.listen`. */
  listen: string;
  /** Header size and timeouts, as for the data listeners (the admin port is no less exposed to a slow client). */
  serverOptions: http.ServerOptions;
  maxConnections: number;
  metrics: { metrics(): Promise<string>; readonly contentType: string };
  status: StatusSources;
  readiness: { check(): Promise<ReadinessCheck[]> };
  /** True from the first stop signal on: /readyz answers 503 so traffic moves elsewhere. */
  draining(): boolean;
}

/**
 * While the sidecar waits for its first credentials (the Workload API's first X509-SVID), the admin listener
 * already answers, so a readiness probe gets a reasoned 503 instead of a refused connection.
 */
export interface StartingOptions {
  listen: string;
  serverOptions: http.ServerOptions;
  maxConnections: number;
  /** What is awaited, for /readyz and /status. */
  waitingFor: string;
}

type Route = (res: http.ServerResponse) => Promise<void> | void;

export class AdminServer {
  #options: AdminOptions;
  readonly #server: http.Server;
  readonly #routes: Record<string, Route>;
  #waitingFor: string | undefined;

  /** An admin listener for the startup wait: /healthz 200, /readyz and /status 503 saying what is awaited. */
  static starting(options: StartingOptions): AdminServer {
    const admin = new AdminServer({
      listen: options.listen,
      serverOptions: options.serverOptions,
      maxConnections: options.maxConnections,
      metrics: { metrics: async () => "", contentType: "text/plain; version=0.0.4; charset=utf-8" },
      readiness: { check: async () => [] },
      draining: () => false,
      // Never read while waiting: /status answers 503 until serve() hands over the running sidecar's sources.
      status: {} as StatusSources,
    });
    admin.#waitingFor = options.waitingFor;
    return admin;
  }

  constructor(options: AdminOptions) {
    this.#options = options;
    this.#routes = {
      "/healthz": (res) => sendJson(res, 200, { alive: true }),
      "/readyz": (res) => this.#readyz(res),
      "/metrics": (res) => this.#metrics(res),
      "/status": (res) =>
        this.#waitingFor === undefined
          ? sendJson(res, 200, this.status())
          : sendJson(res, 503, { error: `starting: ${this.#waitingFor}`, reason: "starting" }),
    };
    this.#server = http.createServer(options.serverOptions, (req, res) => void this.#handle(req, res));
    this.#server.maxConnections = options.maxConnections;
    this.#server.on("clientError", (_error, socket) => socket.destroy());
  }

  async listen(): Promise<AddressInfo> {
    const { host, port } = parseHostPort(this.#options.listen)!;
    await new Promise<void>((resolve, reject) => {
      this.#server.once("error", reject);
      this.#server.listen(port, host, () => {
        this.#server.off("error", reject);
        resolve();
      });
    });
    return this.#server.address() as AddressInfo;
  }

  address(): AddressInfo | null {
    return this.#server.address() as AddressInfo | null;
  }

  get listening(): boolean {
    return this.#server.listening;
  }

  /** A config reload changed `limits`: new connections and requests on the admin port get these. */
  applyLimits(serverOptions: http.ServerOptions, maxConnections: number): void {
    const server = this.#server as http.Server & { maxHeaderSize?: number };
    server.maxConnections = maxConnections;
    if (serverOptions.maxHeaderSize !== undefined) server.maxHeaderSize = serverOptions.maxHeaderSize;
    if (serverOptions.headersTimeout !== undefined) server.headersTimeout = serverOptions.headersTimeout;
    if (serverOptions.requestTimeout !== undefined) server.requestTimeout = serverOptions.requestTimeout;
  }

  /** Ends the startup wait: from now on every endpoint reads from the running sidecar. */
  serve(options: Omit<AdminOptions, "listen" | "serverOptions" | "maxConnections">): this {
    this.#options = { ...this.#options, ...options };
    this.#waitingFor = undefined;
    return this;
  }

  /** The /status document as of now. */
  status(): StatusDocument {
    const { status } = this.#options;
    const credentials = status.credentials();
    const policy = status.policy();
    return {
      identity: credentials.spiffeId,
      trustDomain: credentials.trustDomain,
      source: status.source(),
      trustDomains: [
        { trustDomain: credentials.trustDomain, bundle: credentials.trustBundle },
        ...credentials.federation.map(({ trustDomain, roots }) => ({ trustDomain, bundle: roots })),
      ].map(({ trustDomain, bundle }) => ({
        trustDomain,
        bundle: bundle.map(({ subject, sha256 }) => ({ subject, sha256 })),
      })),
      cert: {
        serial: credentials.leaf.serialHex,
        notBefore: credentials.leaf.notBefore.toISOString(),
        notAfter: credentials.leaf.notAfter.toISOString(),
      },
      trustBundle: credentials.trustBundle.map(({ subject, sha256 }) => ({ subject, sha256 })),
      policy: policy ? { rules: policy.ruleCount, sha256: policy.sha256 } : null,
      reload: reloadReport(status.reload()),
      configReload: configReloadReport(status.configReload()),
      upstreams: Object.fromEntries(
        Object.entries(status.upstreams()).map(
          ([name, { address, identity, connections, pending, endpoints }]) => [
            name,
            {
              address,
              identity,
              connections,
              pending,
              endpoints: endpoints.map((endpoint) => ({
                address: endpoint.address,
                state: endpoint.state,
                ejectedUntil: endpoint.ejectedUntil,
                connections: endpoint.connections,
                pending: endpoint.pending,
              })),
            },
          ],
        ),
      ),
      draining: this.#options.draining(),
    };
  }

  async close(): Promise<void> {
    const closed = new Promise<void>((resolve) => this.#server.close(() => resolve()));
    this.#server.closeAllConnections();
    await closed;
  }

  async #handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const path = req.url!.split("?")[0]!;
    const route = Object.hasOwn(this.#routes, path) ? this.#routes[path] : undefined;
    if (!route) {
      sendJson(res, 404, {
        error: `no admin endpoint ${JSON.stringify(path.slice(0, 100))}; try /healthz, /readyz, /metrics or /status`,
        reason: "not_found",
      });
      return;
    }
    if (req.method !== "GET" && req.method !== "HEAD") {
      res.setHeader("allow", "GET, HEAD");
      sendJson(res, 405, { error: `${path} answers GET and HEAD only`, reason: "method_not_allowed" });
      return;
    }
    try {
      await route(res);
    } catch (error) {
      sendJson(res, 500, { error: `${path} failed: ${(error as Error).message}`, reason: "internal_error" });
    }
  }

  async #readyz(res: http.ServerResponse): Promise<void> {
    if (this.#waitingFor !== undefined) {
      sendJson(res, 503, {
        ready: false,
        reason: "not_ready",
        error: `not ready: credentials (${this.#waitingFor})`,
        failed: ["credentials"],
        checks: { credentials: { ok: false, detail: this.#waitingFor } },
      });
      return;
    }
    if (this.#options.draining()) {
      sendJson(res, 503, {
        ready: false,
        reason: "draining",
        error: "mtlsd is shutting down: stopped accepting connections, finishing requests in flight",
        failed: ["draining"],
        checks: { draining: { ok: false, detail: "a stop signal was received" } },
      });
      return;
    }
    const checks = await this.#options.readiness.check();
    const failed = checks.filter((check) => !check.ok);
    const body = {
      ready: failed.length === 0,
      ...(failed.length > 0
        ? {
            reason: "not_ready",
            error: `not ready: ${failed.map((check) => `${check.name} (${check.detail})`).join("; ")}`,
            failed: failed.map((check) => check.name),
          }
        : {}),
      checks: Object.fromEntries(checks.map(({ name, ok, detail }) => [name, { ok, detail }])),
    };
    sendJson(res, failed.length === 0 ? 200 : 503, body);
  }

  async #metrics(res: http.ServerResponse): Promise<void> {
    const text = await this.#options.metrics.metrics();
    res.writeHead(200, {
      "content-type": this.#options.metrics.contentType,
      "content-length": Buffer.byteLength(text),
      "cache-control": "no-store",
    });
    res.end(text);
  }
}

function reloadReport({ at, result, trigger, error }: LastReload): ReloadReport {
  return {
    at: at.toISOString(),
    result,
    trigger,
    error: error ? { code: error.code, message: error.message } : null,
  };
}

function configReloadReport({
  at,
  result,
  trigger,
  error,
  restartRequired,
}: LastConfigReload): ConfigReloadReport {
  return {
    at: at.toISOString(),
    result,
    trigger,
    error: error ? { code: error.code, message: error.message } : null,
    restartRequired: [...restartRequired],
  };
}

function sendJson(res: http.ServerResponse, status: number, body: unknown): void {
  const text = `${JSON.stringify(body)}\n`;
  const headers: Record<string, string | number> = {
    "content-type": "application/json",
    "content-length": Buffer.byteLength(text),
    "cache-control": "no-store",
  };
  const reason = (body as { reason?: unknown }).reason;
  if (status >= 400 && typeof reason === "string") headers["x-mtlsd-reason"] = reason;
  res.writeHead(status, headers);
  res.end(text);
}
