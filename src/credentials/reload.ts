// Picks up rotated credentials: on a hint (file event, poll, SIGHUP) it reads, validates, and swaps or keeps.
import type { Logger } from "pino";
import { MtlsdError } from "../errors.ts";
import {
  type CredentialFiles,
  type CredentialMaterial,
  type Credentials,
  fileLabels,
  materialOf,
  materialSha256,
  readCredentialMaterial,
} from "./load.ts";
import type { CredentialStore } from "./store.ts";
import { DirectoryWatch } from "./watch.ts";

/**
 * What asked for a reload: a file event, the polling backstop, SIGHUP, a caller (the admin API, tests), or a
 * message on the Workload API stream (and the stream going down).
 */
export type ReloadTrigger = "startup" | "watch" | "poll" | "signal" | "request" | "workload_api";

export type ReloadResult = "success" | "failure";

/** The last reload that did something, for /status: when, how it ended, and why it failed. */
export interface ReloadStatus {
  at: Date;
  result: ReloadResult;
  trigger: ReloadTrigger;
  /** Null after a success. */
  error: { code: string; message: string } | null;
}

/** How one requested reload ended; `unchanged` when the files hold what is already in use. */
export type ReloadOutcome = { result: "unchanged" } | { result: ReloadResult; status: ReloadStatus };

/**
 * How a burst of writes is told from a finished push. `debounceMs`: quiet time after the last file event
 * before reading. `settleMs`: a version that fails validation is only declared bad once the files have not
 * changed for this long (spiffe-helper writes cert, key and bundle one after another, and a reader in between
 * sees a new cert with the old key). `retryMs`: how often the files are re-read while settling.
 */
export interface ReloadTiming {
  debounceMs: number;
  settleMs: number;
  retryMs: number;
}

export const RELOAD_TIMING: Readonly<ReloadTiming> = Object.freeze({
  debounceMs: 200,
  settleMs: 1000,
  retryMs: 200,
});

export interface ReloaderOptions {
  files: CredentialFiles;
  store: CredentialStore;
  logger: Logger;
  /** Watch the files' directories (`identity.reload.watch`). */
  watch: boolean;
  /** Polling backstop period (`identity.reload.interval`). */
  intervalMs: number;
  /** Told once per concluded attempt: feeds `mtlsd_credential_reloads_total{result}`. */
  onResult?: (result: ReloadResult) => void;
  timing?: Partial<ReloadTiming>;
}

/**
 * Validate before swap: a new version replaces the old in the store only after `validateCredentials` accepts
 * it; otherwise the old one stays in use and the failure is logged, counted and kept for /status. Reloads run
 * one at a time, and only when the bytes on disk differ from what was last installed or reported, so the
 * polling backstop never repeats itself.
 */
export class CredentialReloader {
  readonly #options: ReloaderOptions;
  readonly #timing: ReloadTiming;
  #watch: DirectoryWatch | undefined;
  #intervalMs: number;
  #started = false;
  #status: ReloadStatus;
  #installed = { version: 0, sha256: "" };
  /** Digest of the content whose failure was last reported: not reported again until it changes. */
  #reported: string | undefined;
  /** A version that failed while the files may still be mid-write; undefined when no burst is open. */
  #burst: { sha256: string; error: MtlsdError; trigger: ReloadTrigger } | undefined;
  /** The last content seen, and when the files were last seen (or heard) to change. */
  #observed: string | undefined;
  #changedAt = 0;
  #timer: NodeJS.Timeout | undefined;
  #poller: NodeJS.Timeout | undefined;
  #running = false;
  #again: { trigger: ReloadTrigger; force: boolean } | undefined;
  #runs = 0;
  #waiters: { after: number; resolve: (outcome: ReloadOutcome) => void }[] = [];
  #closed = false;

  constructor(options: ReloaderOptions) {
    this.#options = options;
    this.#timing = { ...RELOAD_TIMING, ...options.timing };
    const current = options.store.current;
    this.#status = { at: current.loadedAt, result: "success", trigger: "startup", error: null };
    this.#intervalMs = options.intervalMs;
    if (options.watch) this.#watch = this.#directoryWatch();
  }

  /** Starts watching and polling. */
  start(): void {
    this.#started = true;
    this.#watch?.arm();
    this.#poller = setInterval(() => this.#poll(), this.#intervalMs);
    this.#poller.unref();
  }

  /** A config reload changed `identity.reload`: watch (or stop watching) and poll at the new pace from now on. */
  retime(settings: { watch: boolean; intervalMs: number }): void {
    if (this.#closed) return;
    if (settings.watch && !this.#watch) {
      this.#watch = this.#directoryWatch();
      if (this.#started) this.#watch.arm();
    } else if (!settings.watch && this.#watch) {
      this.#watch.close();
      this.#watch = undefined;
    }
    this.#intervalMs = settings.intervalMs;
    if (this.#started) {
      clearInterval(this.#poller);
      this.#poller = setInterval(() => this.#poll(), this.#intervalMs);
      this.#poller.unref();
    }
  }

  #directoryWatch(): DirectoryWatch {
    const { cert, key, trustBundle, crl, federation } = this.#options.files;
    const federated = (federation ?? []).flatMap((entry) => (entry.trustBundle ? [entry.trustBundle] : []));
    return new DirectoryWatch(
      [cert, key, trustBundle, ...(crl ? [crl] : []), ...federated],
      () => this.#fileEvent(),
      this.#options.logger,
    );
  }

  status(): ReloadStatus {
    return { ...this.#status };
  }

  /** Directories under watch (empty with `watch: false`). */
  watchedDirectories(): string[] {
    return this.#watch?.directories ?? [];
  }

  /**
   * Reads the files now and reloads them even if this exact content was already refused (the operator asked);
   * resolves when the attempt concludes, after any settling a half-written version needs.
   */
  reload(trigger: ReloadTrigger = "request"): Promise<ReloadOutcome> {
    if (this.#closed) return Promise.resolve({ result: "unchanged" });
    const outcome = new Promise<ReloadOutcome>((resolve) => {
      this.#waiters.push({ after: this.#runs, resolve });
    });
    clearTimeout(this.#timer);
    this.#timer = undefined;
    void this.#run(trigger, true);
    return outcome;
  }

  close(): void {
    this.#closed = true;
    clearTimeout(this.#timer);
    clearInterval(this.#poller);
    this.#watch?.close();
    for (const waiter of this.#waiters.splice(0)) waiter.resolve({ result: "unchanged" });
  }

  #fileEvent(): void {
    this.#changedAt = Date.now();
    this.#schedule(this.#timing.debounceMs, "watch");
  }

  #poll(): void {
    // A watcher that died (its directory was replaced) comes back here; symlinks may point elsewhere now.
    this.#watch?.arm();
    if (this.#timer || this.#running) return;
    void this.#run("poll", false);
  }

  #schedule(delayMs: number, trigger: ReloadTrigger): void {
    if (this.#closed) return;
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      void this.#run(trigger, false);
    }, delayMs);
    this.#timer.unref();
  }

  async #run(trigger: ReloadTrigger, force: boolean): Promise<void> {
    if (this.#closed) return;
    if (this.#running) {
      this.#again = { trigger, force: force || (this.#again?.force ?? false) };
      return;
    }
    this.#running = true;
    const run = ++this.#runs;
    try {
      const outcome = await this.#attempt(trigger, force);
      if (outcome) this.#conclude(run, outcome);
    } catch (error) {
      // Nothing above should throw, but a reload must never take the data path down with it.
      this.#options.logger.error({ trigger, error: (error as Error).message }, "credential reload crashed");
      this.#conclude(run, { result: "unchanged" });
    } finally {
      this.#running = false;
      const again = this.#again;
      this.#again = undefined;
      if (again) void this.#run(again.trigger, again.force);
    }
  }

  /** One look at the files; undefined while a failed version is still settling. */
  async #attempt(trigger: ReloadTrigger, force: boolean): Promise<ReloadOutcome | undefined> {
    let material: CredentialMaterial | undefined;
    let sha256: string;
    let error: MtlsdError | undefined;
    try {
      material = await readCredentialMaterial(this.#options.files);
      sha256 = materialSha256(material);
    } catch (readError) {
      error = asMtlsdError(readError);
      sha256 = `unreadable: ${error.message}`;
    }
    const now = Date.now();
    if (sha256 !== this.#observed) {
      this.#observed = sha256;
      this.#changedAt = now;
    }
    if (sha256 === this.#installedSha256()) {
      // What is in use already: a touch, a burst that undid itself, or a SIGHUP with nothing new.
      this.#burst = undefined;
      this.#reported = undefined;
      // After a refused push, files that are back to what is in use end the failure: /status says so.
      if (this.#status.result === "failure") this.#recover(trigger);
      else if (force) this.#options.logger.info({ trigger }, "credential files unchanged; nothing to reload");
      return { result: "unchanged" };
    }
    if (!force && !this.#burst && sha256 === this.#reported) return { result: "unchanged" };
    const burstTrigger = this.#burst?.trigger ?? trigger;
    if (!error && material && (force || this.#burst?.sha256 !== sha256)) {
      try {
        const previous = this.#options.store.current;
        const next = await this.#options.store.offer(material, fileLabels(this.#options.files));
        return this.#install(next, previous, sha256, burstTrigger);
      } catch (validationError) {
        error = asMtlsdError(validationError);
      }
    }
    const fresh = !this.#burst || this.#burst.sha256 !== sha256;
    error ??= this.#burst!.error;
    this.#burst = { sha256, error, trigger: burstTrigger };
    const quietFor = now - this.#changedAt;
    if (quietFor >= this.#timing.settleMs) return this.#fail(error, sha256, burstTrigger);
    if (fresh) {
      this.#options.logger.debug(
        { trigger: burstTrigger, code: error.code, settle_ms: this.#timing.settleMs },
        "credential files do not validate yet; waiting for the rest of the write",
      );
    }
    this.#schedule(Math.min(this.#timing.retryMs, this.#timing.settleMs - quietFor), burstTrigger);
    return undefined;
  }

  #install(next: Credentials, previous: Credentials, sha256: string, trigger: ReloadTrigger): ReloadOutcome {
    const { store, logger } = this.#options;
    this.#installed = { version: store.version, sha256 };
    this.#burst = undefined;
    this.#reported = undefined;
    this.#status = { at: new Date(), result: "success", trigger, error: null };
    this.#options.onResult?.("success");
    logInstalled(logger, trigger, next, previous);
    this.#watch?.arm();
    return { result: "success", status: this.status() };
  }

  #fail(error: MtlsdError, sha256: string, trigger: ReloadTrigger): ReloadOutcome {
    const current = this.#options.store.current;
    this.#burst = undefined;
    this.#reported = sha256;
    this.#status = {
      at: new Date(),
      result: "failure",
      trigger,
      error: { code: error.code, message: error.message },
    };
    this.#options.onResult?.("failure");
    this.#options.logger.error(
      {
        trigger,
        code: error.code,
        error: error.message,
        identity: current.spiffeId,
        kept_serial: current.leaf.serialHex,
        kept_not_after: current.leaf.notAfter.toISOString(),
      },
      "credential reload failed; keeping the current credentials",
    );
    return { result: "failure", status: this.status() };
  }

  #recover(trigger: ReloadTrigger): void {
    const current = this.#options.store.current;
    const failed = this.#status.error;
    this.#status = { at: new Date(), result: "success", trigger, error: null };
    this.#options.logger.info(
      {
        trigger,
        identity: current.spiffeId,
        serial: current.leaf.serialHex,
        not_after: current.leaf.notAfter.toISOString(),
        previous_error: failed?.code,
      },
      "credential files match the credentials in use again; recovered from the failed reload",
    );
  }

  #conclude(run: number, outcome: ReloadOutcome): void {
    this.#waiters = this.#waiters.filter((waiter) => {
      if (waiter.after >= run) return true;
      waiter.resolve(outcome);
      return false;
    });
  }

  /** Digest of what the store holds, recomputed only when someone else swapped it. */
  #installedSha256(): string {
    const { store } = this.#options;
    if (this.#installed.version !== store.version) {
      this.#installed = { version: store.version, sha256: materialSha256(materialOf(store.current)) };
    }
    return this.#installed.sha256;
  }
}

/** The log line of an installed version, the same for every source: what changed, and a new identity loudly. */
export function logInstalled(
  logger: Logger,
  trigger: ReloadTrigger,
  next: Credentials,
  previous: Credentials,
): void {
  const fields = {
    trigger,
    identity: next.spiffeId,
    old_serial: previous.leaf.serialHex,
    old_not_after: previous.leaf.notAfter.toISOString(),
    new_serial: next.leaf.serialHex,
    new_not_after: next.leaf.notAfter.toISOString(),
    bundle_changed: next.bundleSha256 !== previous.bundleSha256,
    trust_bundle: next.trustBundle.map((root) => root.subject),
    ...(next.federation.length > 0
      ? {
          federation: Object.fromEntries(
            next.federation.map((bundle) => [bundle.trustDomain, bundle.roots.map((root) => root.subject)]),
          ),
        }
      : {}),
    ...(next.crl ? { crls: next.crl.length } : {}),
  };
  if (next.spiffeId !== previous.spiffeId) {
    logger.warn({ ...fields, old_identity: previous.spiffeId }, "credentials reloaded with a new SPIFFE ID");
  } else logger.info(fields, "credentials reloaded");
}

export function asMtlsdError(error: unknown): MtlsdError {
  if (error instanceof MtlsdError) return error;
  return new MtlsdError("CREDENTIAL_INVALID", (error as Error).message ?? String(error), { cause: error });
}
