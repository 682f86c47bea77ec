// Composition root: builds every part from a Config, and starts and stops them in order.
import type { EventEmitter } from "node:events";
import type { AddressInfo } from "node:net";
import { performance } from "node:perf_hooks";
import type { DestinationStream } from "pino";
import type { Config, LoadedConfig } from "./config/index.ts";
import {
  ConfigReloader,
  type ConfigReloadOutcome,
  type ConfigReloadTrigger,
  compileConfigPolicy,
  type LivePart,
  type ReloadPlan,
} from "./config-reload.ts";
import {
  type BackoffTiming,
  type CredentialSource,
  type CredentialStore,
  ExpiryMonitor,
  FileSource,
  loadWorkloadApi,
  RELOAD_TIMING,
  type ReloadOutcome,
  type ReloadResult,
  type ReloadStatus,
} from "./credentials/index.ts";
import { MtlsdError } from "./errors.ts";
import { DenyList } from "./identity/index.ts";
import { InboundListener, type InboundStats } from "./inbound/index.ts";
import { dnsServerResolver, OutboundListener, type UpstreamStats } from "./outbound/index.ts";
import type { Policy } from "./policy/index.ts";
import { Deadline, httpLimits } from "./proxy/index.ts";
import {
  AdminServer,
  createLogger,
  type Logger,
  Metrics,
  Readiness,
  TrafficFanout,
  TrafficLog,
  type TrafficObserver,
} from "./telemetry/index.ts";

export interface SidecarOptions {
  /** Log destination; stdout by default. Tests pass a stream to read the lines. */
  logStream?: DestinationStream;
  /**
   * Where SIGHUP comes from (the process, for `mtlsd run`); each one reloads the credentials and the config.
   * Subscribed from the start, so a SIGHUP during startup is served once running instead of ending the process.
   */
  signals?: EventEmitter;
  /** Reload the config when its file changes (`mtlsd run` does); SIGHUP works either way. */
  watchConfig?: boolean;
  /** The clock the certificate expiry warnings and override expiries read; tests move it. */
  now?: () => Date;
  /** How fast a lost Workload API stream is retried; tests shorten it. */
  workloadApiBackoff?: Partial<BackoffTiming>;
  /**
   * DNS servers (`IP` or `IP:port`) asked directly for upstream names' A and AAAA records, instead of the system's
   * resolver; `mtlsd run` takes them from `$MTLSD_DNS_SERVERS`.
   */
  dnsServers?: readonly string[];
  /** Set in a worker process of `workers: N` (src/workers/): the primary does once what each sidecar does alone. */
  worker?: WorkerRole;
}

/**
 * A sidecar that is one of N workers behind the same listeners. The primary reads and validates the credentials
 * and the config, reports reloads, warns of expiry and serves the admin port; the worker takes what it pushes
 * and serves traffic, its log lines marked with `worker`.
 */
export interface WorkerRole {
  id: number;
  /** The credentials the primary validated, as it pushes them. */
  source: CredentialSource;
  /** Session ticket keys derive from it, the same in every worker: a session resumes on any of them. */
  ticketKeySecret: Buffer;
  /** The config text the primary validated last: a config reload reads it instead of the file. */
  configText: () => string;
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
  readonly #readiness: Readiness;
  /** `identity.deny`, one list shared by every listener and upstream; a reload replaces its entries. */
  readonly #denyList: DenyList;
  readonly #configReloader: ConfigReloader;
  /** Where the credentials come from (files or the Workload API); it offers every new version to the store. */
  readonly #source: CredentialSource;
  readonly #expiry: ExpiryMonitor;
  readonly #signals: EventEmitter | undefined;
  readonly #worker: boolean;
  /** Set by the first stop request; a later one can only bring it forward. */
  #deadline: Deadline | undefined;
  #stopping: Promise<void> | undefined;

  private constructor(
    loaded: LoadedConfig,
    logger: Logger,
    store: CredentialStore,
    policy: Policy | undefined,
    options: SidecarOptions,
    source: CredentialSource,
    startingAdmin: AdminServer | undefined,
  ) {
    this.loaded = loaded;
    this.logger = logger;
    this.store = store;
    this.#source = source;
    const { config } = loaded;
    const { reload } = config.identity;
    // A worker's reloads and expiry warnings are its primary's to report, once for all workers.
    const reports = options.worker ? logger.child({}, { level: "silent" }) : logger;
    this.#expiry = new ExpiryMonitor({
      store,
      logger: reports,
      intervalMs: reload.interval,
      ...(options.now ? { now: options.now } : {}),
      lastReload: () => this.#source.status(),
    });
    this.#signals = options.signals;
    this.#worker = options.worker !== undefined;
    this.metrics = new Metrics(
      {
        certNotAfter: () => this.store.current.leaf.notAfter,
        certNotBefore: () => this.store.current.leaf.notBefore,
        upstreams: () => this.upstreamStats(),
        identity: () => this.store.current.spiffeId,
        credentials: () => ({ source: this.#source.kind, lastReload: this.#source.status().result }),
        // The readiness checks are built below; this runs only when /metrics is scraped, once the sidecar is whole.
        ready: async () => !this.draining && (await this.#readiness.check()).every((check) => check.ok),
      },
      { maxIdentityLabels: config.metrics.maxIdentityLabels },
    );
    this.observer = new TrafficFanout([new TrafficLog(logger), this.metrics]);
    const denyList = new DenyList(config.identity.deny);
    this.#denyList = denyList;
    if (config.inbound && policy) {
      this.#inbound = new InboundListener({
        config: config.inbound,
        limits: config.limits,
        store,
        policy,
        trustDomain: config.identity.trustDomain,
        denyList,
        logger,
        observer: this.observer,
        ticketKeySecret: options.worker?.ticketKeySecret,
      });
    }
    this.#configReloader = new ConfigReloader({
      running: loaded,
      policy,
      apply: (plan, next) => this.#applyLive(plan, next),
      ...(options.worker
        ? { read: options.worker.configText }
        : { onResult: (result) => this.metrics.configReloads.inc({ result }) }),
      logger: reports,
      ...(options.now ? { now: millisecondsOf(options.now) } : {}),
    });
    if (config.outbound) {
      this.#outbound = new OutboundListener({
        config: config.outbound,
        limits: config.limits,
        store,
        trustDomain: config.identity.trustDomain,
        denyList,
        observer: this.observer,
        logger,
        ...(options.dnsServers?.length
          ? { resolve: dnsServerResolver(options.dnsServers, config.limits.handshakeTimeout) }
          : {}),
      });
    }
    this.#readiness = new Readiness({
      certificate: () => this.store.current.leaf,
      listeners: () => this.#listening(),
      ...(config.outbound ? { upstreams: () => this.upstreamStats() } : {}),
      app: config.inbound ? appAddress(config.inbound.app) : undefined,
      ...(options.now ? { now: options.now } : {}),
    });
    const served = {
      metrics: this.metrics,
      readiness: this.#readiness,
      draining: () => this.draining,
      status: {
        credentials: () => this.store.current,
        source: () => this.#source.kind,
        // Read at request time: the policy in force after any reload, the last credential reload's outcome.
        policy: () => this.policy,
        reload: () => this.#source.status(),
        configReload: () => this.#configReloader.status(),
        upstreams: () => this.upstreamStats(),
      },
    };
    // The admin listener that answered during the startup wait keeps its port and now serves the sidecar.
    this.#admin =
      startingAdmin?.serve(served) ??
      new AdminServer({
        listen: config.admin.listen,
        serverOptions: httpLimits(config.limits),
        maxConnections: config.limits.maxConnections,
        ...served,
      });
  }

  /**
   * Validates everything that can be validated before binding a port (config, policy, credentials), so a
   * bad config starts nothing; then listens. Throws MtlsdError; `code` tells config problems from runtime ones.
   */
  static async start(loaded: LoadedConfig, options: SidecarOptions = {}): Promise<Sidecar> {
    // SIGHUP's default action ends the process: one that arrives while starting is held and served once
    // running, since the files may have changed after they were read.
    let heldSighup = false;
    const hold = (): void => {
      heldSighup = true;
    };
    options.signals?.on("SIGHUP", hold);
    let sidecar: Sidecar | undefined;
    try {
      const { config } = loaded;
      const now = options.now ? millisecondsOf(options.now) : undefined;
      const policy = config.inbound ? compileConfigPolicy(loaded, now) : undefined;
      const root = createLogger({
        level: config.log.level,
        ...(options.logStream ? { stream: options.logStream } : {}),
      });
      const logger = options.worker ? root.child({ worker: options.worker.id }) : root;
      // The counter exists once the sidecar does: what happens during the startup wait is in the log instead.
      const source =
        options.worker?.source ??
        (await credentialSource(loaded, logger, options, (result) =>
          sidecar?.metrics.credentialReloads.inc({ result }),
        ));
      const startingAdmin = options.worker ? undefined : await startingAdminFor(loaded, source, logger);
      let store: CredentialStore;
      try {
        store = await source.open();
      } catch (error) {
        source.close();
        await startingAdmin?.close();
        throw error;
      }
      sidecar = new Sidecar(loaded, logger, store, policy, options, source, startingAdmin);
      try {
        await sidecar.#listen(options.watchConfig === true);
      } catch (error) {
        await sidecar.stop();
        throw error;
      }
    } finally {
      options.signals?.off("SIGHUP", hold);
    }
    const running = sidecar;
    options.signals?.on("SIGHUP", running.#onSighup);
    if (heldSighup) running.#onSighup();
    return running;
  }

  /** The policy requests are decided by now; undefined without an inbound section. */
  get policy(): Policy | undefined {
    return this.#configReloader.policy;
  }

  /** The config in force: the file as last reloaded, with restart-only settings at their starting values. */
  get config(): Config {
    return this.#configReloader.config;
  }

  /**
   * Re-reads the config file and, if it validates, applies what applies live (src/config-reload.ts says what);
   * the log line names what waits for a restart. A bad file keeps everything as it is. Never rejects.
   */
  reloadConfig(trigger: ConfigReloadTrigger = "request"): Promise<ConfigReloadOutcome> {
    return this.#configReloader.reload(trigger);
  }

  addresses(): SidecarAddresses {
    const addresses: SidecarAddresses = {};
    const admin = this.#admin.address();
    if (admin) addresses.admin = admin;
    const inbound = this.#inbound?.address();
    if (inbound) addresses.inbound = inbound;
    for (const [field, address] of Object.entries(this.#outbound?.addresses() ?? {})) {
      if (field === "outbound.listen") addresses.outbound = address;
      else {
        addresses.upstreams ??= {};
        addresses.upstreams[field.split(".")[2]!] = address;
      }
    }
    return addresses;
  }

  /** Accepted TLS connections on the inbound listener; undefined without one. */
  inboundStats(): InboundStats | undefined {
    return this.#inbound?.stats();
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

  /** The last credential reload that did something (startup counts), for /status. */
  reloadStatus(): ReloadStatus {
    return this.#source.status();
  }

  /** Re-reads the credential files now, as SIGHUP does; resolves once the new version is in use or refused. */
  reloadCredentials(): Promise<ReloadOutcome> {
    return this.#source.reload("request");
  }

  /** SIGHUP, as nginx and ghostunnel treat it: re-read everything that can change without a restart. */
  readonly #onSighup = (): void => {
    if (this.draining) {
      // Still subscribed so that a SIGHUP during the drain cannot end the process; there is nothing to reload.
      this.logger.info({ signal: "SIGHUP" }, "draining: reload ignored");
      return;
    }
    this.logger.info({ signal: "SIGHUP" }, "reloading credentials and config");
    void this.#source.reload("signal");
    void this.#configReloader.reload("signal");
  };

  /**
   * Hands a validated reload to the parts that take it. The one step that can fail (binding a per-upstream port)
   * runs first, so a failure leaves everything as it was; each part then takes its settings.
   */
  async #applyLive(plan: ReloadPlan, policy: Policy | undefined): Promise<void> {
    const { parts, effective } = plan;
    let commitOutbound: (() => void) | undefined;
    if (parts.has("outbound") && this.#outbound && effective.outbound) {
      const outbound = this.#outbound;
      commitOutbound = await listenOrExplain("outbound.upstreams", () =>
        outbound.prepare(effective.outbound!),
      );
    }
    const apply: Record<LivePart, () => void> = {
      policy: () => {
        if (policy) this.#inbound?.setPolicy(policy);
      },
      inbound: () => {
        this.#inbound?.applyConfig(effective.inbound!);
        this.#readiness.probeApp(appAddress(effective.inbound!.app));
      },
      outbound: () => commitOutbound?.(),
      limits: () => {
        this.#inbound?.applyLimits(effective.limits);
        this.#outbound?.applyLimits(effective.limits);
        this.#admin.applyLimits(httpLimits(effective.limits), effective.limits.maxConnections);
      },
      log: () => {
        this.logger.level = effective.log.level;
      },
      metrics: () => this.metrics.setMaxIdentityLabels(effective.metrics.maxIdentityLabels),
      denyList: () => {
        this.#denyList.replace(effective.identity.deny);
        this.#inbound?.enforceDenyList();
        this.#outbound?.renewPools();
      },
      credentialReload: () => {
        const { watch, interval } = effective.identity.reload;
        this.#source.retime({ watch, intervalMs: interval });
        this.#expiry.retime(interval);
      },
    };
    for (const part of LIVE_ORDER) if (parts.has(part)) apply[part]();
  }

  async #listen(watchConfig: boolean): Promise<void> {
    const addresses: Record<string, string> = {};
    if (this.#inbound) {
      const address = await listenOrExplain("inbound.listen", () => this.#inbound!.listen());
      addresses.inbound = `${address.address}:${address.port}`;
    }
    if (this.#outbound) {
      const bound = await listenOrExplain("outbound.listen", () => this.#outbound!.listen());
      for (const [field, address] of Object.entries(bound)) {
        addresses[field === "outbound.listen" ? "outbound" : `upstream:${field.split(".")[2]}`] =
          `${address.address}:${address.port}`;
      }
    }
    // A worker has no admin port: its primary serves one for all workers.
    if (!this.#worker) {
      const admin = this.#admin.listening
        ? this.#admin.address()!
        : await listenOrExplain("admin.listen", () => this.#admin.listen());
      addresses.admin = `${admin.address}:${admin.port}`;
    }
    // Before "mtlsd started": whoever waits for that line may change the config file right after it.
    this.#configReloader.start();
    // The config file is watched like the credential files: same debounce, same polling backstop.
    if (watchConfig) this.#configReloader.watch({ debounceMs: RELOAD_TIMING.debounceMs });
    const credentials = this.store.current;
    this.logger.info(
      {
        identity: credentials.spiffeId,
        trust_domain: credentials.trustDomain,
        source: this.#source.kind,
        ...(credentials.federation.length > 0
          ? { federation: credentials.federation.map((bundle) => bundle.trustDomain) }
          : {}),
        cert_not_after: credentials.leaf.notAfter.toISOString(),
        listeners: addresses,
        // Permissive serves plaintext: the one line every operator reads at startup should say so.
        ...(this.loaded.config.inbound ? { inbound_mode: this.loaded.config.inbound.mode } : {}),
        ...(this.loaded.config.identity.crl ? { crl: this.loaded.config.identity.crl } : {}),
        config: this.loaded.file,
      },
      // The primary says "mtlsd started" once every worker serves.
      this.#worker ? "worker started" : "mtlsd started",
    );
    this.#source.start();
    this.#expiry.start();
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
    // Nothing is reloaded during a drain: the watchers, the polling and expiry timers stop now, so none of
    // them keeps the process alive once the drain is over.
    this.#configReloader.close();
    this.#source.close();
    this.#expiry.close();
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
    // Last: until now a SIGHUP during the drain was answered (ignored) instead of ending the process.
    this.#signals?.off("SIGHUP", this.#onSighup);
    this.logger.info(summary, this.#worker ? "worker stopped" : "mtlsd stopped");
    this.logger.flush();
  }
}

/**
 * The order in which parts take a reload: the outbound's new upstreams before the limits that bound its ports,
 * the rest independent of each other.
 */
const LIVE_ORDER: readonly LivePart[] = [
  "log",
  "metrics",
  "denyList",
  "credentialReload",
  "policy",
  "inbound",
  "outbound",
  "limits",
];

/** The files of `identity`, or the Workload API of `identity.workloadApi`; validation lives in the store. */
export async function credentialSource(
  loaded: LoadedConfig,
  logger: Logger,
  options: SidecarOptions,
  onResult: (result: ReloadResult) => void,
): Promise<CredentialSource> {
  const { identity } = loaded.config;
  const trust = {
    trustDomain: identity.trustDomain,
    federation: identity.federation.map((entry) => entry.trustDomain),
  };
  if (identity.workloadApi) {
    const { WorkloadApiSource } = await loadWorkloadApi();
    return new WorkloadApiSource({
      trust,
      logger,
      onResult,
      settings: {
        // The config loader filled it in from $SPIFFE_ENDPOINT_SOCKET when the file left it out.
        socket: identity.workloadApi.socket!,
        spiffeId: identity.workloadApi.spiffeId,
        startupTimeoutMs: identity.workloadApi.startupTimeout,
      },
      federation: identity.federation,
      intervalMs: identity.reload.interval,
      ...(options.workloadApiBackoff ? { backoff: options.workloadApiBackoff } : {}),
    });
  }
  return new FileSource({
    trust,
    logger,
    onResult,
    // The config loader made sure all three are given when workloadApi is not.
    files: {
      cert: identity.cert!,
      key: identity.key!,
      trustBundle: identity.trustBundle!,
      crl: identity.crl,
      federation: identity.federation,
    },
    watch: identity.reload.watch,
    intervalMs: identity.reload.interval,
  });
}

/** For the Workload API's startup wait: the admin listener answers at once, /readyz 503 until an SVID is in. */
export async function startingAdminFor(
  loaded: LoadedConfig,
  source: CredentialSource,
  logger: Logger,
): Promise<AdminServer | undefined> {
  const { config } = loaded;
  if (source.kind !== "workload_api") return undefined;
  const admin = AdminServer.starting({
    listen: config.admin.listen,
    serverOptions: httpLimits(config.limits),
    maxConnections: config.limits.maxConnections,
    waitingFor: `waiting for the first X509-SVID from the Workload API (${config.identity.workloadApi!.socket})`,
  });
  const address = await listenOrExplain("admin.listen", () => admin.listen());
  logger.info(
    { admin: `${address.address}:${address.port}` },
    "admin listener up; /readyz answers 503 until the first X509-SVID is in",
  );
  return admin;
}

/** Where readiness probes the app: host and port of `inbound.app` (http:// only, so port 80 by default). */
export function appAddress(app: string): { host: string; port: number } {
  const url = new URL(app);
  return { host: url.hostname.replace(/^\[(.*)\]$/, "$1"), port: Number(url.port || 80) };
}

/** The policy counts override lifetimes in epoch milliseconds; the sidecar's one clock speaks Date. */
function millisecondsOf(now: () => Date): () => number {
  return () => now().getTime();
}

export async function listenOrExplain<T>(field: string, listen: () => Promise<T>): Promise<T> {
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
