// A worker of `workers: N`: one sidecar event loop serving the shared listeners with what its primary pushes.
import type { DestinationStream } from "pino";
import { parseConfig } from "../config/index.ts";
import {
  type CredentialSource,
  type CredentialSourceKind,
  CredentialStore,
  type ReloadOutcome,
  type ReloadStatus,
  type TrustSettings,
} from "../credentials/index.ts";
import { MtlsdError } from "../errors.ts";
import { Sidecar } from "../sidecar.ts";
import type { FromWorker, PushedCredentials, ToWorker } from "./messages.ts";

/**
 * The credentials as the primary validated and pushed them. The store still validates each version before the
 * swap (no source may skip it), which, on the same bytes, cannot decide otherwise than the primary did.
 */
export class PrimarySource implements CredentialSource {
  /** Where the primary's credentials come from, for this worker's metrics. */
  readonly kind: CredentialSourceKind;
  readonly #initial: PushedCredentials;
  readonly #trust: TrustSettings;
  #store: CredentialStore | undefined;
  #status: ReloadStatus;

  constructor(initial: PushedCredentials, trust: TrustSettings) {
    this.kind = initial.kind;
    this.#initial = initial;
    this.#trust = trust;
    this.#status = statusOf(initial);
  }

  async open(): Promise<CredentialStore> {
    const { material, labels } = this.#initial;
    this.#store = await CredentialStore.open(material, labels, this.#trust);
    return this.#store;
  }

  /** A new version from the primary: in use once this resolves. */
  async push(pushed: PushedCredentials): Promise<void> {
    await this.#store!.offer(pushed.material, pushed.labels);
    this.#status = statusOf(pushed);
  }

  start(): void {}

  status(): ReloadStatus {
    return this.#status;
  }

  /** The primary reloads for every worker; a worker has nothing of its own to look at. */
  async reload(): Promise<ReloadOutcome> {
    return { result: "unchanged" };
  }

  retime(): void {}

  close(): void {}
}

function statusOf(pushed: PushedCredentials): ReloadStatus {
  return { ...pushed.status, at: new Date(pushed.status.at) };
}

export interface WorkerOptions {
  /** Log destination; stdout by default. */
  logStream?: DestinationStream;
  dnsServers?: readonly string[];
  /** Where the primary is: this process (cluster's IPC channel) unless a test gives another. */
  channel?: WorkerChannel;
  /** SIGTERM and SIGINT: the primary drains its workers, but a supervisor may signal every process of the group. */
  signals?: NodeJS.EventEmitter;
}

/** The IPC channel to the primary, as a cluster worker's `process` offers it. */
export interface WorkerChannel extends NodeJS.EventEmitter {
  send?(message: FromWorker): boolean;
}

/**
 * Runs one worker until it has drained: asks the primary for the config, credentials and ticket key secret,
 * starts a sidecar in worker mode, then serves the primary's pushes and requests. Resolves with the exit code.
 */
export async function runWorker(options: WorkerOptions = {}): Promise<number> {
  const channel = options.channel ?? (process as WorkerChannel);
  const signals = options.signals ?? process;
  const send = (message: FromWorker): void => {
    channel.send?.(message);
  };
  const start = await new Promise<Extract<ToWorker, { type: "start" }>>((resolve) => {
    const onMessage = (message: ToWorker): void => {
      if (message.type !== "start") return;
      channel.off("message", onMessage);
      resolve(message);
    };
    channel.on("message", onMessage);
    send({ type: "hello" });
  });
  // Until the sidecar runs, a stop signal ends the worker; once it runs, it drains (below).
  let sidecar: Sidecar;
  let configText = start.text;
  let source: PrimarySource;
  try {
    const loaded = parseConfig(start.text, start.file);
    const { identity } = loaded.config;
    source = new PrimarySource(start.credentials, {
      trustDomain: identity.trustDomain,
      federation: identity.federation.map((entry) => entry.trustDomain),
    });
    sidecar = await Sidecar.start(loaded, {
      ...(options.logStream ? { logStream: options.logStream } : {}),
      ...(options.dnsServers?.length ? { dnsServers: options.dnsServers } : {}),
      worker: {
        id: start.id,
        source,
        ticketKeySecret: Buffer.from(start.ticketKeySecret, "hex"),
        configText: () => configText,
      },
    });
  } catch (error) {
    const code = error instanceof MtlsdError ? error.code : "WORKER_START_FAILED";
    send({ type: "failed", code, message: (error as Error).message });
    return 1;
  }
  send({ type: "listening", addresses: sidecar.addresses() });

  let drained!: () => void;
  const done = new Promise<void>((resolve) => {
    drained = resolve;
  });
  const drain = (timeoutMs: number): void => {
    void sidecar.stop(timeoutMs).then(drained);
  };
  // A supervisor that signals the whole process group (systemd's default KillMode) reaches the workers too:
  // SIGTERM drains, as the primary would have asked; SIGINT (a terminal's Ctrl-C) and SIGHUP are the primary's.
  const onTerm = (): void => drain(sidecar.config.limits.drainTimeout);
  const ignore = (): void => {};
  signals.on("SIGTERM", onTerm);
  signals.on("SIGINT", ignore);
  signals.on("SIGHUP", ignore);
  const onMessage = (message: ToWorker): void => {
    switch (message.type) {
      case "credentials":
        source.push(message.credentials).catch((error: Error) => {
          // The primary validated these very bytes; a refusal here means the two disagree, which must be seen.
          sidecar.logger.error({ error: error.message }, "credentials pushed by the primary refused");
        });
        break;
      case "config":
        configText = message.text;
        void sidecar.reloadConfig("request").then((outcome) => {
          send({
            type: "config",
            id: message.id,
            outcome:
              outcome.result === "applied"
                ? { result: "applied" }
                : { result: "rejected", error: outcome.error, code: "CONFIG_RELOAD_FAILED" },
          });
        });
        break;
      case "metrics":
        void sidecar.metrics.registry.getMetricsAsJSON().then((metrics) => {
          send({ type: "metrics", id: message.id, metrics });
        });
        break;
      case "stats":
        send({ type: "stats", id: message.id, upstreams: sidecar.upstreamStats() });
        break;
      case "drain":
        drain(message.timeoutMs);
        break;
    }
  };
  channel.on("message", onMessage);
  // A primary that is gone cannot drain us or replace us: drain and leave rather than serve unsupervised.
  const onDisconnect = (): void => onTerm();
  channel.on("disconnect", onDisconnect);
  await done;
  channel.off("message", onMessage);
  channel.off("disconnect", onDisconnect);
  signals.off("SIGTERM", onTerm);
  signals.off("SIGINT", ignore);
  signals.off("SIGHUP", ignore);
  return 0;
}
