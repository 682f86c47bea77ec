// Composition root: builds every part from a Config, and starts and stops them in order.
import type { AddressInfo } from "node:net";
import { performance } from "node:perf_hooks";
import type { DestinationStream } from "pino";
import { ConfigError, type LoadedConfig } from "./config/index.ts";
import { CredentialStore, loadCredentials } from "./credentials/index.ts";
import { MtlsdError } from "./errors.ts";
import { InboundListener } from "./inbound/index.ts";
import { OutboundListener, type UpstreamStats } from "./outbound/index.ts";
import { Policy } from "./policy/index.ts";
import { Deadline, httpLimits } from "./proxy/index.ts";
import {
  AdminServer,
  createLogger,
  type Logger,
  Metrics,
  Readiness,
  type ReloadStatus,
  TrafficFanout,
  TrafficLog,
  type TrafficObserver,
} from "./telemetry/index.ts";

export interface SidecarOptions {
  /** Log destination; stdout by default. Tests pass a stream to read the lines. */
  logStream?: DestinationStream;
}

export interface SidecarAddresses {
  admin?: AddressInfo;
  inbound?: AddressInfo;
  outbound?: AddressInfo;
  /** Per-upstream listeners, by upstream name. */
  upstreams?: Record<string, AddressInfo>;
}

export class Sidecar {
  readonly loaded: LoadedConfig;
  readonly logger: Logger;
  readonly store: CredentialStore;
  readonly metrics: Metrics;
  /** Where the data path reports: the request log and the metrics. */
  readonly observer: TrafficObserver;
  readonly #inbound: InboundListener | undefined;
  readonly #outbound: OutboundListener | undefined;
  readonly #admin: AdminServer;
  readonly #policy: Policy | undefined;
  #outboundAddresses: Record<string, AddressInfo> = {};
  /** What /status reports as the last credential load; a credential reload overwrites it with its own outcome. */
  #lastReload: ReloadStatus;
  /** Set by the first stop request; a later one can only bring it forward. */
  #deadline: Deadline | undefined;
  #stopping: Promise<void> | undefined;

  private constructor(
    loaded: LoadedConfig,
    logger: Logger,
    store: CredentialStore,
    policy: Policy | undefined,
  ) {
    this.loaded = loaded;
    this.logger = logger;
    this.store = store;
    const { config } = loaded;
    this.metrics = new Metrics(
      {
        certNotAfter: () => this.store.current.leaf.notAfter,
        upstreams: () => this.upstreamStats(),
      },
      { maxIdentityLabels: config.metrics.maxIdentityLabels },
    );
    this.observer = new TrafficFanout([new TrafficLog(logger), this.metrics]);
    this.#policy = policy;
    this.#lastReload = { at: store.current.loadedAt.toISOString(), result: "success", error: null };
    if (config.inbound && policy) {
      this.#inbound = new InboundListener({
        config: config.inbound,
        limits: config.limits,
        store,
        policy,
        trustDomain: config.identity.trustDomain,
        logger,
        observer: this.observer,
      });
    }
    if (config.outbound) {
      this.#outbound = new OutboundListener({
        config: config.outbound,
        limits: config.limits,
        store,
        trustDomain: config.identity.trustDomain,
        observer: this.observer,
        logger,
      });
    }
    const readiness = new Readiness({
      certificate: () => this.store.current.leaf,
      listeners: () => this.#listening(),
      app: config.inbound ? appAddress(config.inbound.app) : undefined,
    });
    this.#admin = new AdminServer({
      listen: config.admin.listen,
      serverOptions: httpLimits(config.limits),
      maxConnections: config.limits.maxConnections,
      metrics: this.metrics,
      readiness,
      draining: () => this.draining,
      status: {
        credentials: () => this.store.current,
        policy: () => this.#policy,
        reload: () => this.#lastReload,
        upstreams: () => this.upstreamStats(),
      },
    });
  }

  /**
   * Validates everything that can be validated before binding a port (config, policy, credentials), so a
   * bad config starts nothing; then listens. Throws MtlsdError; `code` tells config problems from runtime ones.
   */
  static async start(loaded: LoadedConfig, options: SidecarOptions = {}): Promise<Sidecar> {
    const { config } = loaded;
    const policy = config.inbound ? compilePolicy(loaded) : undefined;
    const credentials = await loadCredentials(config.identity, { trustDomain: config.identity.trustDomain });
    const logger = createLogger({
      level: config.log.level,
      ...(options.logStream ? { stream: options.logStream } : {}),
    });
    const sidecar = new Sidecar(loaded, logger, new CredentialStore(credentials), policy);
    try {
      await sidecar.#listen();
    } catch (error) {
      await sidecar.stop();
      throw error;
    }
    return sidecar;
  }

  addresses(): SidecarAddresses {
    const addresses: SidecarAddresses = {};
    const admin = this.#admin.address();
    if (admin) addresses.admin = admin;
    const inbound = this.#inbound?.address();
    if (inbound) addresses.inbound = inbound;
    for (const [field, address] of Object.entries(this.#outboundAddresses)) {
      if (field === "outbound.listen") addresses.outbound = address;
      else {
        addresses.upstreams ??= {};
        addresses.upstreams[field.split(".")[2]!] = address;
      }
    }
    return addresses;
  }

  upstreamStats(): Record<string, UpstreamStats> {
    return this.#outbound?.stats() ?? {};
  }

  /** True from the first stop request on: /readyz answers 503 and no listener accepts. */
  get draining(): boolean {
    return this.#deadline !== undefined;
  }

  #listening(): Record<string, boolean> {
    const listening: Record<string, boolean> = {};
    if (this.#inbound) listening["inbound.listen"] = this.#inbound.listening;
    if (this.#outbound) Object.assign(listening, this.#outbound.listening());
    return listening;
  }

  async #listen(): Promise<void> {
    const addresses: Record<string, string> = {};
    if (this.#inbound) {
      const address = await listenOrExplain("inbound.listen", () => this.#inbound!.listen());
      addresses.inbound = `${address.address}:${address.port}`;
    }
    if (this.#outbound) {
      this.#outboundAddresses = await listenOrExplain("outbound.listen", () => this.#outbound!.listen());
      for (const [field, address] of Object.entries(this.#outboundAddresses)) {
        addresses[field === "outbound.listen" ? "outbound" : `upstream:${field.split(".")[2]}`] =
          `${address.address}:${address.port}`;
      }
    }
    const admin = await listenOrExplain("admin.listen", () => this.#admin.listen());
    addresses.admin = `${admin.address}:${admin.port}`;
    const credentials = this.store.current;
    this.logger.info(
      {
        identity: credentials.spiffeId,
        trust_domain: credentials.trustDomain,
        cert_not_after: credentials.leaf.notAfter.toISOString(),
        listeners: addresses,
        config: this.loaded.file,
      },
      "mtlsd started",
    );
  }

  /**
   * Drains, then stops. At once: /readyz answers 503, every data listener stops accepting, and idle
   * connections close. Requests in flight, and requests still arriving, are answered with `Connection: close`.
   * Whatever is still open after `drainTimeoutMs` is cut. Then the pools close, and the admin listener last,
   * so probes see the drain until the end. A call during a drain brings the deadline forward to its own
   * timeout (0: cut now) and resolves when the first one does. Tests use the default, 0.
   */
  stop(drainTimeoutMs = 0): Promise<void> {
    if (this.#stopping) {
      this.#deadline!.shorten(drainTimeoutMs);
      return this.#stopping;
    }
    const deadline = new Deadline(drainTimeoutMs);
    this.#deadline = deadline;
    this.#stopping = this.#drainAndStop(deadline, drainTimeoutMs);
    return this.#stopping;
  }

  async #drainAndStop(deadline: Deadline, drainTimeoutMs: number): Promise<void> {
    const started = performance.now();
    if (drainTimeoutMs > 0) {
      this.logger.info(
        {
          drain_timeout_ms: drainTimeoutMs,
          connections: (this.#inbound?.connections ?? 0) + (this.#outbound?.connections ?? 0),
        },
        "draining",
      );
    }
    const results = await Promise.all([this.#inbound?.drain(deadline), this.#outbound?.drain(deadline)]);
    deadline.cancel();
    await this.#admin.close();
    const summary = {
      drain_ms: Math.round(performance.now() - started),
      in_flight: results.reduce((sum, result) => sum + (result?.inFlight ?? 0), 0),
      cut: results.reduce((sum, result) => sum + (result?.cut ?? 0), 0),
    };
    if (drainTimeoutMs > 0 && summary.cut > 0) {
      this.logger.warn(summary, "drain deadline reached: connections still open were cut");
    }
    this.logger.info(summary, "mtlsd stopped");
    this.logger.flush();
  }
}

/** Where readiness probes the app: host and port of `inbound.app` (http:// only, so port 80 by default). */
function appAddress(app: string): { host: string; port: number } {
  const url = new URL(app);
  return { host: url.hostname.replace(/^\[(.*)\]$/, "$1"), port: Number(url.port || 80) };
}

function compilePolicy(loaded: LoadedConfig): Policy {
  try {
    return new Policy(loaded.config.inbound!.policy);
  } catch (error) {
    if (error instanceof MtlsdError && error.code === "POLICY_INVALID") {
      const [path, ...rest] = error.message.split(": ");
      throw new ConfigError(loaded.file, [
        { path: path ?? "inbound.policy", expected: "a valid policy", found: rest.join(": ") },
      ]);
    }
    throw error;
  }
}

async function listenOrExplain<T>(field: string, listen: () => Promise<T>): Promise<T> {
  try {
    return await listen();
  } catch (error) {
    // A listener that binds several ports says which one failed.
    field = (error as { field?: string }).field ?? field;
    const code = (error as NodeJS.ErrnoException).code;
    const hint =
      code === "EADDRINUSE"
        ? "the port is already in use (another mtlsd, or the app itself?)"
        : code === "EACCES"
          ? "permission denied (ports below 1024 need CAP_NET_BIND_SERVICE)"
          : code === "EADDRNOTAVAIL"
            ? "that address does not belong to this host"
            : (error as Error).message;
    throw new MtlsdError("LISTEN_FAILED", `${field}: cannot listen: ${hint}`, { cause: error });
  }
}
