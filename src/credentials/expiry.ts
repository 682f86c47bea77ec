// Says out loud when our certificate is running out: renewal overdue at a third of its life left, then expired.
import type { Logger } from "pino";
import type { ReloadStatus } from "./reload.ts";
import type { CredentialStore } from "./store.ts";

export interface ExpiryMonitorOptions {
  store: CredentialStore;
  logger: Logger;
  /** How often to look (`identity.reload.interval`). */
  intervalMs: number;
  /** The clock; injectable so tests can stand at any point of a certificate's life. */
  now?: () => Date;
  /** The last reload, quoted in the warning: a failed renewal is usually why the old cert is still here. */
  lastReload?: () => ReloadStatus;
}

/**
 * Issuers renew well before expiry (cert-manager, by default, when a third of the lifetime is left; SPIRE
 * earlier), so a certificate with less than a third of its life left means a renewal is late: warn once per
 * certificate, with the last reload result (the first symptom is usually a refused push). Once expired,
 * every peer refuses us, so log an error at every check until a valid certificate is installed.
 */
export class ExpiryMonitor {
  #options: ExpiryMonitorOptions;
  readonly #now: () => Date;
  #warned: string | undefined;
  #timer: NodeJS.Timeout | undefined;

  constructor(options: ExpiryMonitorOptions) {
    this.#options = options;
    this.#now = options.now ?? (() => new Date());
  }

  /** Checks now (a sidecar started on an old certificate says so at once), then every interval. */
  start(): void {
    this.check();
    this.#timer = setInterval(() => this.check(), this.#options.intervalMs);
    this.#timer.unref();
  }

  close(): void {
    clearInterval(this.#timer);
    this.#timer = undefined;
  }

  /** A config reload changed `identity.reload.interval`: look at that pace from now on. */
  retime(intervalMs: number): void {
    this.#options = { ...this.#options, intervalMs };
    if (this.#timer === undefined) return;
    clearInterval(this.#timer);
    this.#timer = setInterval(() => this.check(), intervalMs);
    this.#timer.unref();
  }

  /** One look at the current certificate; returns what it found. */
  check(): "ok" | "renewal_overdue" | "expired" {
    const credentials = this.#options.store.current;
    const { notBefore, notAfter, serialHex } = credentials.leaf;
    const now = this.#now().getTime();
    const remainingMs = notAfter.getTime() - now;
    const lifetimeMs = notAfter.getTime() - notBefore.getTime();
    const fields = {
      identity: credentials.spiffeId,
      serial: serialHex,
      not_after: notAfter.toISOString(),
    };
    if (remainingMs <= 0) {
      this.#options.logger.error(
        { ...fields, expired_seconds_ago: Math.round(-remainingMs / 1000), ...this.#lastReload() },
        "certificate expired",
      );
      return "expired";
    }
    if (remainingMs < lifetimeMs / 3) {
      if (this.#warned !== serialHex) {
        this.#warned = serialHex;
        this.#options.logger.warn(
          {
            ...fields,
            remaining_seconds: Math.round(remainingMs / 1000),
            lifetime_seconds: Math.round(lifetimeMs / 1000),
            ...this.#lastReload(),
          },
          "certificate renewal overdue",
        );
      }
      return "renewal_overdue";
    }
    return "ok";
  }

  #lastReload(): Record<string, string> {
    const status = this.#options.lastReload?.();
    if (!status) return {};
    return {
      last_reload_at: status.at.toISOString(),
      last_reload_result: status.result,
      ...(status.error ? { last_reload_error: `${status.error.code}: ${status.error.message}` } : {}),
    };
  }
}
