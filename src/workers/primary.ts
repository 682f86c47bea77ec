// The primary of `workers: N`: validates and reloads once, pushes to N workers, serves admin, replaces the dead.
//
// Why the cluster module and not `reusePort`: the primary is needed anyway, as the one process that reads and
// validates credentials and config, counts and logs each reload once, answers the admin port with every
// worker's metrics summed, and forks a replacement when a worker dies. With it in place, cluster's round-robin
// costs one extra hop per accepted connection (the primary accepts, then hands the socket to a worker), never
// per request, and sidecar traffic runs on long-lived keep-alive connections. It spreads connections evenly
// where the kernel's SO_REUSEPORT hash can leave a core idle, and it works on every platform and every Node
// mtlsd supports, where `reusePort` needs Linux and Node 22.12 or later.
import cluster, { type Worker } from "node:cluster";
import { randomBytes } from "node:crypto";
import type { EventEmitter } from "node:events";
import type { AddressInfo } from "node:net";
import { performance } from "node:perf_hooks";
import { isSea } from "node:sea";
import type { DestinationStream } from "pino";
import type { Counter } from "prom-client";
import type { Config, LoadedConfig } from "../config/index.ts";
import { ConfigReloader, compileConfigPolicy, type ReloadPlan, readConfigText } from "../config-reload.ts";
import {
  type CredentialLabels,
  type CredentialSource,
  type CredentialStore,
  type Credentials,
  ExpiryMonitor,
  fileLabels,
  RELOAD_TIMING,
} from "../credentials/index.ts";
import { MtlsdError } from "../errors.ts";
import type { UpstreamStats } from "../outbound/index.ts";
import type { Policy } from "../policy/index.ts";
import { httpLimits } from "../proxy/index.ts";
import {
  appAddress,
  credentialSource,
  listenOrExplain,
  type SidecarAddresses,
  startingAdminFor,
} from "../sidecar.ts";
import { AdminServer, createLogger, type Logger, Metrics, Readiness } from "../telemetry/index.ts";
import type { ConfigApplied, FromWorker, PushedCredentials, ToWorker } from "./messages.ts";
import { aggregateMetrics, workerRestartsCounter } from "./metrics.ts";

export interface PrimaryOptions {
  /** Log destination; stdout by default. */
  logStream?: DestinationStream;
  /** Where SIGHUP comes from; each one reloads the credentials and the config, once, for every worker. */
  signals?: EventEmitter;
  /** Reload the config when its file changes (`mtlsd run` does). */
  watchConfig?: boolean;
  /** How long a worker may take to answer the primary (metrics, a config reload) before it is left out. */
  replyTimeoutMs?: number;
}

/** One worker slot: the process in it now, and whether it serves. */
interface Slot {
  id: number;
  worker: Worker | undefined;
  listening: boolean;
  /** Consecutive deaths soon after starting: the replacement waits longer each time. */
  quickDeaths: number;
  startedAt: number;
  upstreams: Record<string, UpstreamStats>;
  /** The credential version its start message carried. */
  started: PushedCredentials | undefined;
  /** Its series as last scraped: stand in when it does not answer, and keep its counts once it is gone. */
  metrics: object[] | undefined;
}

// A worker that dies within this long of starting died of something a restart will not fix at once: back off.
const QUICK_DEATH_MS = 10_000;
const RESTART_DELAY_MS = 100;
const MAX_RESTART_DELAY_MS = 10_000;
const STATS_INTERVAL_MS = 1000;

export class Primary {
  readonly loaded: LoadedConfig;
  readonly logger: Logger;
  readonly store: CredentialStore;
  readonly metrics: Metrics;
  readonly #restarts: Counter;
  readonly #source: CredentialSource;
  readonly #expiry: ExpiryMonitor;
  readonly #reloader: ConfigReloader;
  readonly #readiness: Readiness;
  readonly #admin: AdminServer;
  readonly #slots: Slot[];
  readonly #options: PrimaryOptions;
  readonly #ticketKeySecret = randomBytes(32);
  /** The config text a reload is validating now: what it hands the workers. */
  #readText = "";
  /** The config text the workers run since the last reload that succeeded: a replacement catches up to it. */
  #appliedText: string;
  #pushed: PushedCredentials;
  #addresses: SidecarAddresses = {};
  #requests = 0;
  readonly #pending = new Map<number, (message: FromWorker) => void>();
  /** The counters and histograms of workers that exited, as last scraped. */
  readonly #retired: object[][] = [];
  #statsTimer: NodeJS.Timeout | undefined;
  #stopping: Promise<void> | undefined;
  /** Resolves once every worker has exited after a drain was asked for. */
  #exited: (() => void) | undefined;
  #unsubscribe: () => void = () => {};

  private constructor(
    loaded: LoadedConfig,
    logger: Logger,
    source: CredentialSource,
    store: CredentialStore,
    policy: Policy | undefined,
    startingAdmin: AdminServer | undefined,
    options: PrimaryOptions,
  ) {
    this.loaded = loaded;
    this.logger = logger;
    this.store = store;
    this.#source = source;
    this.#options = options;
    this.#appliedText = loaded.text;
    const { config } = loaded;
    this.#slots = Array.from({ length: config.workers }, (_, index) => ({
      id: index + 1,
      worker: undefined,
      listening: false,
      quickDeaths: 0,
      startedAt: 0,
      upstreams: {},
      started: undefined,
      metrics: undefined,
    }));
    this.#pushed = this.#push(store.current);
    this.#expiry = new ExpiryMonitor({
      store,
      logger,
      intervalMs: config.identity.reload.interval,
      lastReload: () => this.#source.status(),
    });
    this.metrics = new Metrics(
      {
        certNotAfter: () => this.store.current.leaf.notAfter,
        certNotBefore: () => this.store.current.leaf.notBefore,
        // Each worker reports its own pools; summed in /metrics.
        upstreams: () => ({}),
        identity: () => this.store.current.spiffeId,
        credentials: () => ({ source: this.#source.kind, lastReload: this.#source.status().result }),
        ready: async () => !this.draining && (await this.#readiness.check()).every((check) => check.ok),
      },
      { maxIdentityLabels: config.metrics.maxIdentityLabels },
    );
    this.#restarts = workerRestartsCounter(this.metrics.registry);
    this.#reloader = new ConfigReloader({
      running: loaded,
      policy,
      read: (file) => {
        this.#readText = readConfigText(file);
        return this.#readText;
      },
      apply: (plan) => this.#applyEverywhere(plan),
      onResult: (result) => {
        if (result === "success") this.#appliedText = this.#readText;
        this.metrics.configReloads.inc({ result });
      },
      logger,
    });
    this.#readiness = new Readiness({
      certificate: () => this.store.current.leaf,
      // A listener accepts when every worker behind it does: a dead worker's share of connections would wait.
      listeners: () => {
        const serving = this.#slots.every((slot) => slot.listening);
        return Object.fromEntries(listenerFields(this.config).map((field) => [field, serving]));
      },
      ...(config.outbound ? { upstreams: () => this.upstreamStats() } : {}),
      app: config.inbound ? appAddress(config.inbound.app) : undefined,
    });
    const served = {
      metrics: { metrics: () => this.#aggregatedMetrics(), contentType: this.metrics.contentType },
      readiness: this.#readiness,
      draining: () => this.draining,
      status: {
        credentials: () => this.store.current,
        source: () => this.#source.kind,
        policy: () => this.#reloader.policy,
        reload: () => this.#source.status(),
        configReload: () => this.#reloader.status(),
        upstreams: () => this.upstreamStats(),
      },
    };
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
   * Validates the config and the credentials once, forks `workers` workers and resolves once every one of them
   * serves; then starts the admin listener and the reloads. Throws MtlsdError as Sidecar.start does, and a worker
   * that cannot start (its listener cannot bind) fails the start with the worker's error.
   */
  static async start(loaded: LoadedConfig, options: PrimaryOptions = {}): Promise<Primary> {
    let heldSighup = false;
    const hold = (): void => {
      heldSighup = true;
    };
    options.signals?.on("SIGHUP", hold);
    let primary: Primary | undefined;
    try {
      const { config } = loaded;
      const policy = config.inbound ? compileConfigPolicy(loaded) : undefined;
      const logger = createLogger({
        level: config.log.level,
        ...(options.logStream ? { stream: options.logStream } : {}),
      });
      const source = await credentialSource(loaded, logger, {}, (result) =>
        primary?.metrics.credentialReloads.inc({ result }),
      );
      const startingAdmin = await startingAdminFor(loaded, source, logger);
      let store: CredentialStore;
      try {
        store = await source.open();
      } catch (error) {
        source.close();
        await startingAdmin?.close();
        throw error;
      }
      primary = new Primary(loaded, logger, source, store, policy, startingAdmin, options);
      try {
        await primary.#start();
      } catch (error) {
        await primary.stop(0);
        throw error;
      }
    } finally {
      options.signals?.off("SIGHUP", hold);
    }
    const running = primary;
    options.signals?.on("SIGHUP", running.#onSighup);
    if (heldSighup) running.#onSighup();
    return running;
  }

  /** The config in force: the file as last reloaded, restart-only settings at their starting values. */
  get config(): Config {
    return this.#reloader.config;
  }

  get draining(): boolean {
    return this.#stopping !== undefined;
  }

  /** Every worker's pools, summed per upstream and endpoint; refreshed every second. */
  upstreamStats(): Record<string, UpstreamStats> {
    return sumUpstreams(this.#slots.filter((slot) => slot.listening).map((slot) => slot.upstreams));
  }

  readonly #onSighup = (): void => {
    if (this.draining) {
      this.logger.info({ signal: "SIGHUP" }, "draining: reload ignored");
      return;
    }
    this.logger.info({ signal: "SIGHUP" }, "reloading credentials and config");
    void this.#source.reload("signal");
    void this.#reloader.reload("signal");
  };

  async #start(): Promise<void> {
    const { config } = this.loaded;
    // Round-robin is the default on Linux; set here so that NODE_CLUSTER_SCHED_POLICY cannot turn it off.
    cluster.schedulingPolicy = cluster.SCHED_RR;
    // The single binary carries its Node flags inside (its SEA config): given again on the command line, they
    // would arrive as arguments of the command.
    if (isSea()) cluster.setupPrimary({ execArgv: [] });
    cluster.on("message", this.#onMessage);
    cluster.on("exit", this.#onExit);
    await Promise.all(this.#slots.map((slot) => this.#fork(slot)));
    // Every worker reports the same shared ports; the first one's are the ones to print.
    const admin = this.#admin.listening
      ? this.#admin.address()!
      : await listenOrExplain("admin.listen", () => this.#admin.listen());
    this.#reloader.start();
    if (this.#options.watchConfig) this.#reloader.watch({ debounceMs: RELOAD_TIMING.debounceMs });
    // A new credential version, validated by the store, goes to every worker; a worker forked later gets it too.
    this.#unsubscribe = this.store.subscribe((next) => {
      this.#pushed = this.#push(next);
      this.#broadcast({ type: "credentials", credentials: this.#pushed });
    });
    this.#statsTimer = setInterval(() => void this.#refreshStats(), STATS_INTERVAL_MS);
    this.#statsTimer.unref();
    await this.#refreshStats();
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
        listeners: { ...printable(this.#addresses), admin: `${admin.address}:${admin.port}` },
        workers: config.workers,
        ...(config.inbound ? { inbound_mode: config.inbound.mode } : {}),
        ...(config.identity.crl ? { crl: config.identity.crl } : {}),
        config: this.loaded.file,
      },
      "mtlsd started",
    );
    this.#source.start();
    this.#expiry.start();
  }

  /** Forks the worker of `slot` and resolves once it serves; rejects with its error if it cannot start. */
  #fork(slot: Slot): Promise<void> {
    const worker = cluster.fork({ MTLSD_WORKER_ID: String(slot.id) });
    slot.worker = worker;
    slot.listening = false;
    slot.startedAt = performance.now();
    return new Promise((resolve, reject) => {
      const onMessage = (message: FromWorker): void => {
        if (message.type === "hello") {
          slot.started = this.#pushed;
          worker.send({
            type: "start",
            id: slot.id,
            file: this.loaded.file,
            text: this.loaded.text,
            credentials: this.#pushed,
            ticketKeySecret: this.#ticketKeySecret.toString("hex"),
          } satisfies ToWorker);
        } else if (message.type === "listening") {
          worker.off("message", onMessage);
          worker.off("exit", onExit);
          slot.listening = true;
          this.#addresses = message.addresses;
          resolve(this.#catchUp(slot));
        } else if (message.type === "failed") {
          worker.off("message", onMessage);
          worker.off("exit", onExit);
          reject(new MtlsdError(message.code, message.message));
        }
      };
      const onExit = (code: number | null, signal: string | null): void => {
        worker.off("message", onMessage);
        reject(
          new MtlsdError(
            "WORKER_START_FAILED",
            `worker ${slot.id} exited while starting (${signal ?? `exit code ${code}`})`,
          ),
        );
      };
      worker.on("message", onMessage);
      worker.once("exit", onExit);
    });
  }

  /**
   * A worker starts from the config the primary started with (so it binds the same ports); when reloads have
   * changed it since, the worker takes the latest as a reload, as every other worker did.
   */
  async #catchUp(slot: Slot): Promise<void> {
    // Credentials that rotated while it started were not broadcast to it: it gets them now.
    if (slot.started !== this.#pushed) slot.worker?.send({ type: "credentials", credentials: this.#pushed });
    const text = this.#appliedText;
    if (text === this.loaded.text) return;
    const applied = await this.#configure(slot, text);
    if (applied?.result === "rejected") {
      this.logger.error(
        { worker: slot.id, error: applied.error },
        "a replacement worker refused the config the others run",
      );
    }
  }

  readonly #onMessage = (worker: Worker, message: FromWorker): void => {
    if ("id" in message) {
      const reply = this.#pending.get(message.id);
      if (reply) reply(message);
    }
    void worker;
  };

  /** A worker that exits without being asked is replaced; during a drain, each exit brings the end closer. */
  readonly #onExit = (worker: Worker, code: number | null, signal: string | null): void => {
    const slot = this.#slots.find((candidate) => candidate.worker === worker);
    if (!slot) return;
    const wasServing = slot.listening;
    slot.listening = false;
    slot.worker = undefined;
    // What it counted stays counted; what it measured now (gauges) went with it.
    if (slot.metrics) this.#retired.push(countersOf(slot.metrics));
    slot.metrics = undefined;
    if (this.#stopping) {
      if (this.#slots.every((candidate) => candidate.worker === undefined)) this.#exited?.();
      return;
    }
    // One that never served failed its start: Primary.start reports it, nothing to replace.
    if (!wasServing) return;
    const quick = performance.now() - slot.startedAt < QUICK_DEATH_MS;
    slot.quickDeaths = quick ? slot.quickDeaths + 1 : 0;
    // Exit code 0 is a worker that drained on a signal of its own (someone sent it SIGTERM): not a crash.
    const crashed = code !== 0 || signal !== null;
    if (crashed) this.#restarts.inc();
    this.logger[crashed ? "error" : "warn"](
      { worker: slot.id, pid: worker.process.pid, exit_code: code, signal, restart_in_ms: this.#delay(slot) },
      crashed ? "worker exited; starting a replacement" : "worker stopped on its own; starting a replacement",
    );
    this.#replace(slot);
  };

  /** Forks a replacement after the slot's backoff, and keeps trying (backing off further) until one serves. */
  #replace(slot: Slot): void {
    const timer = setTimeout(() => {
      if (this.#stopping) return;
      this.#fork(slot).then(
        () => this.logger.info({ worker: slot.id, pid: slot.worker?.process.pid }, "worker replaced"),
        (error: Error) => {
          slot.quickDeaths++;
          this.logger.error(
            { worker: slot.id, error: error.message, retry_in_ms: this.#delay(slot) },
            "worker restart failed; trying again",
          );
          this.#replace(slot);
        },
      );
    }, this.#delay(slot));
    timer.unref();
  }

  /** Right away after a worker that ran a while; doubling up to a ceiling while they keep dying young. */
  #delay(slot: Slot): number {
    return Math.min(RESTART_DELAY_MS * 2 ** slot.quickDeaths, MAX_RESTART_DELAY_MS);
  }

  /** Sends to every worker that serves, or is starting (it gets the same in its start message otherwise). */
  #broadcast(message: ToWorker): void {
    for (const slot of this.#slots) {
      if (slot.listening) slot.worker?.send(message);
    }
  }

  /** Asks one worker; resolves with its reply, or undefined when it does not answer in time (or is gone). */
  #ask(slot: Slot, build: (id: number) => ToWorker): Promise<FromWorker | undefined> {
    const worker = slot.worker;
    if (!worker || !slot.listening) return Promise.resolve(undefined);
    const id = ++this.#requests;
    return new Promise((resolve) => {
      const timer = setTimeout(() => finish(undefined), this.#options.replyTimeoutMs ?? 5000);
      const onExit = (): void => finish(undefined);
      const finish = (message: FromWorker | undefined): void => {
        clearTimeout(timer);
        worker.off("exit", onExit);
        this.#pending.delete(id);
        resolve(message);
      };
      this.#pending.set(id, finish);
      worker.once("exit", onExit);
      worker.send(build(id));
    });
  }

  /**
   * The one validated reload, handed to every worker (each applies it as its own sidecar would), then to what the
   * primary runs itself. A worker that refuses (a per-upstream port it cannot bind) refuses the reload.
   */
  async #applyEverywhere(plan: ReloadPlan): Promise<void> {
    const text = this.#readText;
    const asked = this.#slots.filter((slot) => slot.listening);
    const outcomes = await Promise.all(asked.map((slot) => this.#configure(slot, text)));
    const refused = outcomes.find((outcome) => outcome?.result === "rejected");
    if (refused?.result === "rejected") {
      // The workers that took it go back to what the others run, so the refusal holds for all of them.
      const running = this.#appliedText;
      await Promise.all(
        asked.map((slot, index) =>
          outcomes[index]?.result === "applied" ? this.#configure(slot, running) : undefined,
        ),
      );
      throw new MtlsdError(refused.code, refused.error);
    }
    // A worker that began serving meanwhile started from the config before this one.
    for (const slot of this.#slots) {
      if (slot.listening && !asked.includes(slot)) void this.#configure(slot, text);
    }
    const { parts, effective } = plan;
    if (parts.has("log")) this.logger.level = effective.log.level;
    if (parts.has("metrics")) this.metrics.setMaxIdentityLabels(effective.metrics.maxIdentityLabels);
    if (parts.has("credentialReload")) {
      const { watch, interval } = effective.identity.reload;
      this.#source.retime({ watch, intervalMs: interval });
      this.#expiry.retime(interval);
    }
    if (parts.has("inbound") && effective.inbound)
      this.#readiness.probeApp(appAddress(effective.inbound.app));
    if (parts.has("limits")) {
      this.#admin.applyLimits(httpLimits(effective.limits), effective.limits.maxConnections);
    }
  }

  /**
   * Every worker's series, summed with those that dead workers counted up to their last scrape, so a counter
   * never goes down when a worker is replaced (Prometheus would read that as a reset, and a rate would spike).
   * A worker that does not answer in time stands in with its last scrape, for the same reason.
   */
  /** Hands one worker a config text to apply as a reload; undefined when it did not answer (or is gone). */
  async #configure(slot: Slot, text: string): Promise<ConfigApplied | undefined> {
    const reply = await this.#ask(slot, (id) => ({ type: "config", id, text }));
    return reply?.type === "config" ? reply.outcome : undefined;
  }

  async #aggregatedMetrics(): Promise<string> {
    const replies = await Promise.all(
      this.#slots.map((slot) => this.#ask(slot, (id) => ({ type: "metrics", id }))),
    );
    const workers: object[][] = [...this.#retired];
    for (const [index, reply] of replies.entries()) {
      const slot = this.#slots[index]!;
      if (reply?.type === "metrics") slot.metrics = reply.metrics as object[];
      if (slot.metrics) workers.push(slot.metrics);
    }
    return aggregateMetrics(await this.metrics.registry.getMetricsAsJSON(), workers).metrics();
  }

  async #refreshStats(): Promise<void> {
    await Promise.all(
      this.#slots.map(async (slot) => {
        const reply = await this.#ask(slot, (id) => ({ type: "stats", id }));
        if (reply?.type === "stats") slot.upstreams = reply.upstreams;
      }),
    );
  }

  /** What a worker needs to hold a credential version: the PEM material, as the primary validated it. */
  #push(credentials: Credentials): PushedCredentials {
    const status = this.#source.status?.();
    return {
      kind: this.#source.kind,
      material: {
        chainPem: credentials.chainPem,
        keyPem: credentials.keyPem,
        bundlePem: credentials.bundlePem,
        crlPem: credentials.crlPem,
        federated: Object.fromEntries(
          credentials.federation
            .filter((bundle) => bundle.pem)
            .map((bundle) => [bundle.trustDomain, bundle.pem]),
        ),
      },
      labels: this.#labels(),
      status: {
        at: (status?.at ?? new Date()).toISOString(),
        result: status?.result ?? "success",
        trigger: status?.trigger ?? "startup",
        error: status?.error ?? null,
      },
    };
  }

  #labels(): CredentialLabels {
    const { identity } = this.loaded.config;
    if (!identity.workloadApi) {
      return fileLabels({
        cert: identity.cert!,
        key: identity.key!,
        trustBundle: identity.trustBundle!,
        crl: identity.crl,
        federation: identity.federation,
      });
    }
    const from = `the X509-SVID from the Workload API (${identity.workloadApi.socket})`;
    return { cert: from, key: from, trustBundle: from };
  }

  /**
   * Drains every worker (each as a single sidecar drains: /readyz 503 here at once, listeners closed, requests
   * in flight finished or cut at the deadline), waits for all to exit, then closes the admin listener. A second
   * call during the drain kills the workers that remain.
   */
  stop(drainTimeoutMs = 0): Promise<void> {
    if (this.#stopping) {
      if (drainTimeoutMs === 0) for (const slot of this.#slots) slot.worker?.process.kill("SIGKILL");
      return this.#stopping;
    }
    this.#stopping = this.#drainAndStop(drainTimeoutMs);
    return this.#stopping;
  }

  async #drainAndStop(drainTimeoutMs: number): Promise<void> {
    const started = performance.now();
    this.#reloader.close();
    this.#source.close();
    this.#expiry.close();
    this.#unsubscribe();
    clearInterval(this.#statsTimer);
    const exited = new Promise<void>((resolve) => {
      this.#exited = resolve;
    });
    const running = this.#slots.filter((slot) => slot.worker !== undefined);
    if (running.length > 0) {
      if (drainTimeoutMs > 0)
        this.logger.info({ drain_timeout_ms: drainTimeoutMs, workers: running.length }, "draining");
      for (const slot of running) {
        // One still starting cannot drain: it has nothing in flight, so it ends now.
        if (slot.listening)
          slot.worker!.send({ type: "drain", timeoutMs: drainTimeoutMs } satisfies ToWorker);
        else slot.worker!.process.kill("SIGKILL");
      }
      await exited;
    }
    cluster.off("message", this.#onMessage);
    cluster.off("exit", this.#onExit);
    await this.#admin.close();
    this.#options.signals?.off("SIGHUP", this.#onSighup);
    this.logger.info({ drain_ms: Math.round(performance.now() - started) }, "mtlsd stopped");
    this.logger.flush();
  }
}

/** Counters and histograms only: what a process counted, as opposed to what it measures now. */
function countersOf(metrics: readonly object[]): object[] {
  return metrics.filter((metric) => {
    const { type } = metric as { type?: string };
    return type === "counter" || type === "histogram";
  });
}

/** The data listeners of a config, by the field that names them (as /readyz reports them). */
function listenerFields(config: Config): string[] {
  const fields: string[] = [];
  if (config.inbound) fields.push("inbound.listen");
  if (config.outbound) {
    fields.push("outbound.listen");
    for (const [name, upstream] of Object.entries(config.outbound.upstreams)) {
      if (upstream.listen) fields.push(`outbound.upstreams.${name}.listen`);
    }
  }
  return fields;
}

function printable(addresses: SidecarAddresses): Record<string, string> {
  const text = (address: AddressInfo): string => `${address.address}:${address.port}`;
  const out: Record<string, string> = {};
  if (addresses.inbound) out.inbound = text(addresses.inbound);
  if (addresses.outbound) out.outbound = text(addresses.outbound);
  for (const [name, address] of Object.entries(addresses.upstreams ?? {}))
    out[`upstream:${name}`] = text(address);
  return out;
}

/** Pools per upstream and endpoint, summed over the workers (each has its own). */
function sumUpstreams(perWorker: readonly Record<string, UpstreamStats>[]): Record<string, UpstreamStats> {
  const total: Record<string, UpstreamStats> = {};
  for (const upstreams of perWorker) {
    for (const [name, stats] of Object.entries(upstreams)) {
      const sum = total[name];
      if (!sum) {
        total[name] = structuredClone(stats);
        continue;
      }
      sum.connections += stats.connections;
      sum.pending += stats.pending;
      sum.ejections += stats.ejections;
      sum.handshakes.full += stats.handshakes.full;
      sum.handshakes.resumed += stats.handshakes.resumed;
      for (const endpoint of stats.endpoints) {
        const same = sum.endpoints.find((candidate) => candidate.address === endpoint.address);
        if (!same) sum.endpoints.push({ ...endpoint });
        else {
          same.connections += endpoint.connections;
          same.pending += endpoint.pending;
          // Ejection is each worker's own view: an endpoint is ejected if any worker ejected it.
          if (endpoint.state === "ejected") {
            same.state = "ejected";
            same.ejectedUntil = endpoint.ejectedUntil;
          }
        }
      }
    }
  }
  return total;
}
