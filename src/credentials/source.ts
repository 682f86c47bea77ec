// The one interface every credential source implements (files, the Workload API), feeding the one CredentialStore.
import type { Logger } from "pino";
import { type CredentialFiles, fileLabels, readCredentialMaterial } from "./load.ts";
import {
  CredentialReloader,
  type ReloadOutcome,
  type ReloadResult,
  type ReloadStatus,
  type ReloadTiming,
  type ReloadTrigger,
} from "./reload.ts";
import { CredentialStore, type TrustSettings } from "./store.ts";

/** `/status.source`: where this sidecar's identity comes from. */
export type CredentialSourceKind = "files" | "workload_api";

/**
 * A source delivers raw material; the store validates it before it becomes current, so no source can skip
 * validate-before-swap (ghostunnel's certloader has the same shape: one interface, one file per source).
 */
export interface CredentialSource {
  readonly kind: CredentialSourceKind;
  /**
   * Delivers the first valid version as a new store: files are read now, the Workload API is waited for up to
   * its startup timeout. Throws MtlsdError naming what is wrong and where.
   */
  open(): Promise<CredentialStore>;
  /** After open: follows rotations into the store until closed. */
  start(): void;
  /** The last update that did something (startup counts), for /status and logs. */
  status(): ReloadStatus;
  /** SIGHUP or a caller: look again now. */
  reload(trigger?: ReloadTrigger): Promise<ReloadOutcome>;
  /** A config reload changed `identity.reload`: watch and poll as it now says. */
  retime(settings: { watch: boolean; intervalMs: number }): void;
  close(): void;
}

/** What every source is told, besides where its material lives. */
export interface SourceOptions {
  trust: TrustSettings;
  logger: Logger;
  /** Told once per concluded attempt: feeds `mtlsd_credential_reloads_total{result}`. */
  onResult?: (result: ReloadResult) => void;
}

export interface FileSourceOptions extends SourceOptions {
  files: CredentialFiles;
  /** Watch the files' directories (`identity.reload.watch`). */
  watch: boolean;
  /** Polling backstop period (`identity.reload.interval`). */
  intervalMs: number;
  timing?: Partial<ReloadTiming>;
}

/** PEM files on disk (`identity.cert`/`key`/`trustBundle`, `crl`, federated bundle files), watched and polled. */
export class FileSource implements CredentialSource {
  readonly kind = "files" as const;
  readonly #options: FileSourceOptions;
  #reloader: CredentialReloader | undefined;

  constructor(options: FileSourceOptions) {
    this.#options = options;
  }

  async open(): Promise<CredentialStore> {
    const { files, trust } = this.#options;
    const store = await CredentialStore.open(await readCredentialMaterial(files), fileLabels(files), trust);
    this.#reloader = new CredentialReloader({
      files,
      store,
      logger: this.#options.logger,
      watch: this.#options.watch,
      intervalMs: this.#options.intervalMs,
      ...(this.#options.onResult ? { onResult: this.#options.onResult } : {}),
      ...(this.#options.timing ? { timing: this.#options.timing } : {}),
    });
    return store;
  }

  start(): void {
    this.#opened().start();
  }

  status(): ReloadStatus {
    return this.#opened().status();
  }

  reload(trigger: ReloadTrigger = "request"): Promise<ReloadOutcome> {
    return this.#opened().reload(trigger);
  }

  retime(settings: { watch: boolean; intervalMs: number }): void {
    this.#opened().retime(settings);
  }

  close(): void {
    this.#reloader?.close();
  }

  #opened(): CredentialReloader {
    if (!this.#reloader) throw new Error("FileSource used before open()");
    return this.#reloader;
  }
}
