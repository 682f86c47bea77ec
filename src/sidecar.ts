// Composition root: builds every part from a Config, and starts and stops them in order.
import type { AddressInfo } from "node:net";
import type { DestinationStream } from "pino";
import { ConfigError, type LoadedConfig } from "./config/index.ts";
import { CredentialStore, loadCredentials } from "./credentials/index.ts";
import { MtlsdError } from "./errors.ts";
import { DenyList } from "./identity/index.ts";
import { InboundListener } from "./inbound/index.ts";
import { OutboundListener, type UpstreamStats } from "./outbound/index.ts";
import { Policy } from "./policy/index.ts";
import {
  createLogger,
  type Logger,
  Metrics,
  TrafficFanout,
  TrafficLog,
  type TrafficObserver,
} from "./telemetry/index.ts";

export interface SidecarOptions {
  /** Log destination; stdout by default. Tests pass a stream to read the lines. */
  logStream?: DestinationStream;
}

export interface SidecarAddresses {
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
  #outboundAddresses: Record<string, AddressInfo> = {};
  #stopped = false;

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
    const denyList = new DenyList(config.identity.deny);
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
      });
    }
    if (config.outbound) {
      this.#outbound = new OutboundListener({
        config: config.outbound,
        limits: config.limits,
        store,
        trustDomain: config.identity.trustDomain,
        denyList,
        observer: this.observer,
      });
    }
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

  /** Stops listening and closes connections, giving in-flight requests up to `graceMs`. */
  async stop(graceMs = 0): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    await Promise.all([this.#inbound?.close(graceMs), this.#outbound?.close(graceMs)]);
    this.logger.info("mtlsd stopped");
    this.logger.flush();
  }
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
