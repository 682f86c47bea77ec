// Streams this workload's X509-SVID from the SPIFFE Workload API (a SPIRE agent's socket) into the CredentialStore.
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { formatDuration, parseWorkloadApiSocket } from "../config/index.ts";
import { MtlsdError } from "../errors.ts";
import { derToPem, splitDer } from "./der.ts";
import {
  type CredentialFiles,
  type CredentialLabels,
  type CredentialMaterial,
  federationFileLabels,
  materialSha256,
  readFederationFiles,
} from "./load.ts";
import {
  asMtlsdError,
  logInstalled,
  type ReloadOutcome,
  type ReloadStatus,
  type ReloadTrigger,
} from "./reload.ts";
import type { CredentialSource, SourceOptions } from "./source.ts";
import { CredentialStore } from "./store.ts";

/** The proto written from the spec (proto/workload.proto); it ships beside dist/ and src/. */
const PROTO_FILE = fileURLToPath(new URL("../../proto/workload.proto", import.meta.url));

/** One X509SVID of a FetchX509SVID message, field names as in the proto. */
export interface X509SvidMessage {
  spiffe_id: string;
  x509_svid: Buffer;
  x509_svid_key: Buffer;
  bundle: Buffer;
  hint: string;
}

/** One FetchX509SVID message: the full state, every time. */
export interface X509SvidResponse {
  svids: X509SvidMessage[];
  crl: Buffer[];
  /** DER roots by the foreign trust domain's SPIFFE ID (`spiffe://partner.example`). */
  federated_bundles: Record<string, Buffer>;
}

type FetchCall = grpc.ClientReadableStream<X509SvidResponse>;
type WorkloadApiClient = grpc.Client & {
  FetchX509SVID(request: object, metadata: grpc.Metadata): FetchCall;
};

let clientConstructor: grpc.ServiceClientConstructor | undefined;

/** The generated client class, loaded from the proto once per process. */
function workloadApiClient(): grpc.ServiceClientConstructor {
  if (!clientConstructor) {
    const definition = protoLoader.loadSync(PROTO_FILE, { keepCase: true, defaults: true });
    clientConstructor = grpc.loadPackageDefinition(definition)
      .SpiffeWorkloadAPI as grpc.ServiceClientConstructor;
  }
  return clientConstructor;
}

/** `identity.workloadApi`, with the socket already resolved (config, else $SPIFFE_ENDPOINT_SOCKET). */
export interface WorkloadApiSettings {
  socket: string;
  /** Which SVID to use when several are offered; the first one otherwise. */
  spiffeId?: string | undefined;
  startupTimeoutMs: number;
}

/** Reconnection: capped exponential backoff with jitter, so a fleet of sidecars does not retry in lockstep. */
export interface BackoffTiming {
  initialMs: number;
  maxMs: number;
}

export const WORKLOAD_API_BACKOFF: Readonly<BackoffTiming> = Object.freeze({ initialMs: 500, maxMs: 30_000 });

/** The gRPC target for a Workload API socket URI (SPIFFE_Workload_Endpoint.md: `unix:///path`, `tcp://IP:port`). */
function grpcTarget(socket: string): string {
  const parsed = parseWorkloadApiSocket(socket);
  if (!("kind" in parsed)) {
    throw new MtlsdError(
      "CONFIG_INVALID",
      `identity.workloadApi.socket ${JSON.stringify(socket)}: ${parsed.error}`,
    );
  }
  if (parsed.kind === "unix") return `unix://${parsed.path}`;
  return parsed.host.includes(":")
    ? `ipv6:[${parsed.host}]:${parsed.port}`
    : `ipv4:${parsed.host}:${parsed.port}`;
}

/**
 * Opens one FetchX509SVID stream. Each stream gets a channel of its own (and no shared subchannel), so a
 * retry really connects again instead of waiting out grpc-js's own reconnect backoff of a dead channel.
 */
function openStream(socket: string): { call: FetchCall; close(): void } {
  const Client = workloadApiClient();
  const client = new Client(grpcTarget(socket), grpc.credentials.createInsecure(), {
    "grpc.use_local_subchannel_pool": 1,
  }) as unknown as WorkloadApiClient;
  const metadata = new grpc.Metadata();
  // SPIFFE_Workload_API.md: the server refuses calls without it (a guard against SSRF through proxies).
  metadata.set("workload.spiffe.io", "true");
  const call = client.FetchX509SVID({}, metadata);
  return {
    call,
    close() {
      call.cancel();
      client.close();
    },
  };
}

/** Why a stream ended, in words an operator can act on. */
function describeStreamError(socket: string, status: { code: number; details: string }): MtlsdError {
  const parsed = parseWorkloadApiSocket(socket);
  const where = `the Workload API at ${socket}`;
  if (
    status.code === grpc.status.UNAVAILABLE &&
    "kind" in parsed &&
    parsed.kind === "unix" &&
    !existsSync(parsed.path)
  ) {
    return new MtlsdError(
      "WORKLOAD_API_UNAVAILABLE",
      `identity.workloadApi.socket: ${where}: no such socket ${parsed.path}; is the SPIRE agent running, and its socket directory mounted here?`,
    );
  }
  switch (status.code) {
    case grpc.status.PERMISSION_DENIED:
      return new MtlsdError(
        "WORKLOAD_API_NO_IDENTITY",
        `${where} issued no identity to this workload (PermissionDenied: ${status.details}); is there a registration entry whose selectors match it?`,
      );
    case grpc.status.INVALID_ARGUMENT:
      return new MtlsdError(
        "WORKLOAD_API_REFUSED",
        `${where} refused the request (InvalidArgument: ${status.details}); not retried, as the spec says`,
      );
    case grpc.status.OK:
      return new MtlsdError("WORKLOAD_API_UNAVAILABLE", `${where} ended the stream`);
    default:
      return new MtlsdError(
        "WORKLOAD_API_UNAVAILABLE",
        `${where} is unavailable (${grpc.status[status.code] ?? status.code}: ${status.details})`,
      );
  }
}

/** The trust domain name of a federated_bundles key: the spec keys by `spiffe://td`; a bare name is read too. */
function trustDomainOfKey(key: string): string {
  return key.startsWith("spiffe://") ? key.slice("spiffe://".length).replace(/\/$/, "") : key;
}

export interface MaterialOptions {
  settings: WorkloadApiSettings;
  /** `identity.federation`: which foreign bundles to take, and which come from files instead. */
  federation: CredentialFiles["federation"];
}

/**
 * Turns one message into material for the store: the chosen SVID (the one named in the config, else the
 * first), its key and bundle, the CRLs, and the bundle of each federated domain (from a file when the config
 * names one, else from the message). Throws MtlsdError when the message lacks what we need.
 */
export async function materialFromMessage(
  message: X509SvidResponse,
  options: MaterialOptions,
): Promise<{ material: CredentialMaterial; labels: CredentialLabels }> {
  const { socket, spiffeId } = options.settings;
  const where = `the Workload API (${socket})`;
  const svids = message.svids ?? [];
  const svid = spiffeId ? svids.find((entry) => entry.spiffe_id === spiffeId) : svids[0];
  if (!svid) {
    const offered = svids.map((entry) => entry.spiffe_id).join(", ") || "none";
    throw new MtlsdError(
      "WORKLOAD_API_NO_SVID",
      spiffeId
        ? `identity.workloadApi.spiffeId: ${where} offered no X509-SVID for ${spiffeId} (it offered: ${offered}); check the registration entries or the configured ID`
        : `${where} sent a message with no X509-SVID in it`,
    );
  }
  const cert = `the X509-SVID ${svid.spiffe_id} from ${where}`;
  const labels: CredentialLabels = {
    cert,
    key: `the private key of ${cert}`,
    trustBundle: `the bundle of ${svid.spiffe_id}'s trust domain from ${where}`,
    crl: `the CRLs from ${where}`,
    federated: {},
  };
  const federated: Record<string, string> = {};
  const received = new Map(
    Object.entries(message.federated_bundles ?? {}).map(([key, der]) => [trustDomainOfKey(key), der]),
  );
  for (const { trustDomain, trustBundle } of options.federation ?? []) {
    if (trustBundle) continue;
    const label = `the federated bundle of ${trustDomain} from ${where}`;
    (labels.federated as Record<string, string>)[trustDomain] = label;
    const der = received.get(trustDomain);
    if (der === undefined) continue;
    try {
      federated[trustDomain] = derToPem("CERTIFICATE", splitDer(der, label));
    } catch (error) {
      throw new MtlsdError("FEDERATED_BUNDLE_INVALID", (error as Error).message, { cause: error });
    }
  }
  Object.assign(labels.federated as Record<string, string>, federationFileLabels(options.federation));
  Object.assign(federated, await readFederationFiles(options.federation));
  const material: CredentialMaterial = {
    chainPem: derToPem("CERTIFICATE", splitDer(svid.x509_svid, cert)),
    keyPem: derToPem("PRIVATE KEY", [svid.x509_svid_key]),
    bundlePem: derToPem("CERTIFICATE", splitDer(svid.bundle, labels.trustBundle)),
    crlPem: message.crl?.length ? derToPem("X509 CRL", message.crl) : undefined,
    ...(Object.keys(federated).length > 0 ? { federated } : {}),
  };
  return { material, labels };
}

/**
 * One look at the Workload API, for `mtlsd check`: the first message's material, or why there is none
 * within `timeoutMs`.
 */
export function fetchWorkloadApiMaterial(
  options: MaterialOptions,
  timeoutMs: number,
): Promise<{ material: CredentialMaterial; labels: CredentialLabels }> {
  return new Promise((resolve, reject) => {
    const stream = openStream(options.settings.socket);
    const timer = setTimeout(() => {
      finish(() =>
        reject(
          new MtlsdError(
            "WORKLOAD_API_UNAVAILABLE",
            `the Workload API at ${options.settings.socket} sent no X509-SVID within ${formatDuration(timeoutMs)}`,
          ),
        ),
      );
    }, timeoutMs);
    let done = false;
    const finish = (settle: () => void) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      stream.close();
      settle();
    };
    stream.call.on("data", (message: X509SvidResponse) => {
      materialFromMessage(message, options).then(
        (result) => finish(() => resolve(result)),
        (error: unknown) => finish(() => reject(error)),
      );
    });
    stream.call.on("error", () => undefined);
    stream.call.on("status", (status: grpc.StatusObject) =>
      finish(() => reject(describeStreamError(options.settings.socket, status))),
    );
  });
}

export interface WorkloadApiSourceOptions extends SourceOptions, MaterialOptions {
  /** How often federated bundle files are re-read (`identity.reload.interval`); the API pushes the rest. */
  intervalMs: number;
  backoff?: Partial<BackoffTiming>;
  /** For the jitter; injectable so a test can pin it. */
  random?: () => number;
}

/**
 * The SPIFFE Workload API as a credential source: a FetchX509SVID stream whose every message is offered to
 * the store, which validates it before it replaces anything (a bad push keeps the old credentials, counted as
 * a failed reload). While the stream is down the sidecar keeps serving with what it has, says so in /status,
 * the log and the metric, and reconnects with capped, jittered backoff.
 */
export class WorkloadApiSource implements CredentialSource {
  readonly kind = "workload_api" as const;
  #options: WorkloadApiSourceOptions;
  readonly #backoff: BackoffTiming;
  readonly #random: () => number;
  #store: CredentialStore | undefined;
  #status: ReloadStatus;
  #stream: { call: FetchCall; close(): void } | undefined;
  /** Whether the current stream has delivered a message (it is "up"). */
  #up = false;
  /** Consecutive failed connections, for the backoff. */
  #failures = 0;
  #retry: NodeJS.Timeout | undefined;
  #poller: NodeJS.Timeout | undefined;
  #closed = false;
  /** The last message, re-read with fresh federation files on a poll or SIGHUP. */
  #last: X509SvidResponse | undefined;
  /** Digest of the material installed, and of the last one refused (refused once, not at every re-send). */
  #installed: string | undefined;
  #refused: string | undefined;
  /** Messages are handled one at a time, in order. */
  #queue: Promise<unknown> = Promise.resolve();
  #opening:
    | { resolve(store: CredentialStore): void; reject(error: unknown): void; timer: NodeJS.Timeout }
    | undefined;
  /** Why there is no usable SVID yet (startup) or why the stream is down, said once per distinct reason. */
  #lastError: MtlsdError | undefined;

  constructor(options: WorkloadApiSourceOptions) {
    this.#options = options;
    this.#backoff = { ...WORKLOAD_API_BACKOFF, ...options.backoff };
    this.#random = options.random ?? Math.random;
    this.#status = { at: new Date(), result: "success", trigger: "startup", error: null };
  }

  /** Connects and waits up to the startup timeout for a first SVID that validates. */
  open(): Promise<CredentialStore> {
    const { settings } = this.#options;
    return new Promise<CredentialStore>((resolve, reject) => {
      const timer = setTimeout(() => {
        const last = this.#lastError;
        const detail = last ? `: ${last.message}` : "";
        this.#opening = undefined;
        this.close();
        reject(
          new MtlsdError(
            last && last.code !== "WORKLOAD_API_UNAVAILABLE" ? last.code : "WORKLOAD_API_UNAVAILABLE",
            `identity.workloadApi: no usable X509-SVID from ${settings.socket} within ${formatDuration(settings.startupTimeoutMs)} (identity.workloadApi.startupTimeout)${detail}`,
            { cause: last },
          ),
        );
      }, settings.startupTimeoutMs);
      this.#opening = { resolve, reject, timer };
      this.#options.logger.info(
        { socket: settings.socket, startup_timeout_ms: settings.startupTimeoutMs },
        "waiting for an X509-SVID from the Workload API",
      );
      this.#connect();
    });
  }

  start(): void {
    if (!(this.#options.federation ?? []).some((entry) => entry.trustBundle)) return;
    this.#poller = setInterval(() => void this.#reoffer("poll"), this.#options.intervalMs);
    this.#poller.unref();
  }

  /** The API pushes every change by itself: only the pace at which federated bundle files are re-read changes. */
  retime(settings: { watch: boolean; intervalMs: number }): void {
    this.#options = { ...this.#options, intervalMs: settings.intervalMs };
    if (this.#poller === undefined || this.#closed) return;
    clearInterval(this.#poller);
    this.#poller = setInterval(() => void this.#reoffer("poll"), this.#options.intervalMs);
    this.#poller.unref();
  }

  status(): ReloadStatus {
    return { ...this.#status };
  }

  /**
   * SIGHUP: the API pushes every change of the SVID and bundles by itself, so only federated bundle files can
   * be re-read here.
   */
  reload(trigger: ReloadTrigger = "request"): Promise<ReloadOutcome> {
    if (!(this.#options.federation ?? []).some((entry) => entry.trustBundle)) {
      this.#options.logger.info(
        { trigger },
        "credentials come from the Workload API, which pushes every change; nothing to reload",
      );
      return Promise.resolve({ result: "unchanged" });
    }
    return this.#reoffer(trigger);
  }

  close(): void {
    this.#closed = true;
    clearTimeout(this.#retry);
    clearInterval(this.#poller);
    this.#stream?.close();
    this.#stream = undefined;
    this.#up = false;
  }

  #connect(): void {
    if (this.#closed) return;
    let stream: { call: FetchCall; close(): void };
    try {
      stream = openStream(this.#options.settings.socket);
    } catch (error) {
      this.#ended(asMtlsdError(error), false);
      return;
    }
    this.#stream = stream;
    stream.call.on("data", (message: X509SvidResponse) => {
      if (this.#stream !== stream) return;
      this.#failures = 0;
      const wasUp = this.#up;
      this.#up = true;
      if (!wasUp && this.#store) {
        this.#options.logger.info(
          { socket: this.#options.settings.socket },
          "Workload API stream is up again",
        );
      }
      this.#enqueue(() => this.#handle(message));
    });
    // Every end, error or not, is reported once as a status; errors must have a listener or they throw.
    stream.call.on("error", () => undefined);
    stream.call.on("status", (status: grpc.StatusObject) => {
      if (this.#stream !== stream) return;
      this.#stream = undefined;
      stream.close();
      const error = describeStreamError(this.#options.settings.socket, status);
      this.#ended(error, status.code === grpc.status.INVALID_ARGUMENT);
    });
  }

  #ended(error: MtlsdError, permanent: boolean): void {
    if (this.#closed) return;
    const wasUp = this.#up;
    this.#up = false;
    const { logger, settings } = this.#options;
    const fresh = this.#lastError?.message !== error.message;
    this.#lastError = error;
    if (this.#store && (wasUp || permanent)) {
      // Down while serving: keep the credentials we have, say so everywhere (counted once per outage), reconnect.
      this.#status = {
        at: new Date(),
        result: "failure",
        trigger: "workload_api",
        error: { code: error.code, message: error.message },
      };
      this.#options.onResult?.("failure");
      logger.error(
        {
          socket: settings.socket,
          code: error.code,
          error: error.message,
          identity: this.#store.current.spiffeId,
          kept_serial: this.#store.current.leaf.serialHex,
          kept_not_after: this.#store.current.leaf.notAfter.toISOString(),
        },
        permanent
          ? "Workload API stream refused; keeping the current credentials, not retrying"
          : "Workload API stream is down; keeping the current credentials and reconnecting",
      );
    } else if (this.#store && fresh && this.#status.result === "failure") {
      // Still down, for another reason now (the socket went away, say): /status and the log show the latest.
      this.#status = { ...this.#status, error: { code: error.code, message: error.message } };
      logger.warn(
        { socket: settings.socket, code: error.code, error: error.message },
        "Workload API still unreachable",
      );
    } else if (!this.#store && fresh) {
      logger.warn(
        { socket: settings.socket, code: error.code, error: error.message },
        "waiting for the Workload API",
      );
    }
    if (permanent) {
      if (this.#opening) {
        const opening = this.#opening;
        this.#opening = undefined;
        clearTimeout(opening.timer);
        this.close();
        opening.reject(error);
      }
      return;
    }
    const ceiling = Math.min(this.#backoff.maxMs, this.#backoff.initialMs * 2 ** this.#failures);
    this.#failures++;
    // "Equal jitter": half the delay fixed, half random, so retries spread out but never come too soon.
    const delay = Math.round(ceiling / 2 + (ceiling / 2) * this.#random());
    clearTimeout(this.#retry);
    this.#retry = setTimeout(() => this.#connect(), delay);
    this.#retry.unref();
  }

  #enqueue<T>(task: () => Promise<T>): Promise<T> {
    const run = this.#queue.then(task);
    this.#queue = run.catch(() => undefined);
    return run;
  }

  async #handle(message: X509SvidResponse): Promise<void> {
    this.#last = message;
    if (this.#store) {
      await this.#offer(message, "workload_api");
      return;
    }
    if (!this.#opening) return;
    try {
      const { material, labels } = await materialFromMessage(message, this.#options);
      const store = await CredentialStore.open(material, labels, this.#options.trust);
      this.#installed = materialSha256(material);
      this.#store = store;
      this.#lastError = undefined;
      this.#status = { at: new Date(), result: "success", trigger: "startup", error: null };
      const opening = this.#opening;
      this.#opening = undefined;
      if (!opening) return;
      clearTimeout(opening.timer);
      opening.resolve(store);
    } catch (error) {
      const refused = asMtlsdError(error);
      this.#lastError = refused;
      this.#options.logger.error(
        { socket: this.#options.settings.socket, code: refused.code, error: refused.message },
        "X509-SVID from the Workload API is not usable; waiting for another",
      );
    }
  }

  /** Re-offers the last message, with federated bundle files as they are now. */
  #reoffer(trigger: ReloadTrigger): Promise<ReloadOutcome> {
    return this.#enqueue(async () => {
      if (!this.#last || !this.#store) return { result: "unchanged" } as const;
      return this.#offer(this.#last, trigger);
    });
  }

  async #offer(message: X509SvidResponse, trigger: ReloadTrigger): Promise<ReloadOutcome> {
    const store = this.#store!;
    const { logger, settings } = this.#options;
    let sha256: string | undefined;
    try {
      const { material, labels } = await materialFromMessage(message, this.#options);
      sha256 = materialSha256(material);
      if (sha256 === this.#installed || sha256 === this.#refused) {
        if (this.#status.result === "failure" && sha256 === this.#installed) {
          // Back after an outage with nothing new: the stream is healthy again.
          this.#status = { at: new Date(), result: "success", trigger, error: null };
        }
        return { result: "unchanged" };
      }
      const previous = store.current;
      const next = await store.offer(material, labels);
      this.#installed = sha256;
      this.#refused = undefined;
      this.#status = { at: new Date(), result: "success", trigger, error: null };
      this.#options.onResult?.("success");
      logInstalled(logger, trigger, next, previous);
      return { result: "success", status: this.status() };
    } catch (error) {
      const refused = asMtlsdError(error);
      this.#refused = sha256;
      this.#status = {
        at: new Date(),
        result: "failure",
        trigger,
        error: { code: refused.code, message: refused.message },
      };
      this.#options.onResult?.("failure");
      logger.error(
        {
          trigger,
          socket: settings.socket,
          code: refused.code,
          error: refused.message,
          identity: store.current.spiffeId,
          kept_serial: store.current.leaf.serialHex,
          kept_not_after: store.current.leaf.notAfter.toISOString(),
        },
        "credential update from the Workload API refused; keeping the current credentials",
      );
      return { result: "failure", status: this.status() };
    }
  }
}
