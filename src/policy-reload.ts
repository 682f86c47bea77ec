// Keeps the running inbound policy current: reloads it from the config file (on change and on SIGHUP), validated
// first, and reports break-glass overrides when they are installed and when they expire.
import { type FSWatcher, readFileSync, watch } from "node:fs";
import path from "node:path";
import { type Config, ConfigError, type LoadedConfig, parseConfig } from "./config/index.ts";
import { MtlsdError } from "./errors.ts";
import { Policy, type PolicyOverride } from "./policy/index.ts";
import type { Logger } from "./telemetry/index.ts";

/** What asked for a policy reload; the same words the credential reloader logs, so one SIGHUP reads as one. */
export type PolicyReloadTrigger = "watch" | "poll" | "signal" | "request";

export type PolicyReloadOutcome =
  | { result: "applied"; sha256: string; changed: boolean; restartRequired: string[] }
  | { result: "rejected"; error: string };

export interface PolicyReloaderOptions {
  /** The config the sidecar runs with; everything but `inbound.policy` stays as it is until a restart. */
  running: LoadedConfig;
  /** The policy compiled from it. */
  policy: Policy;
  /** Installs a new policy for requests that start from now on (InboundListener.setPolicy). */
  apply: (policy: Policy) => void;
  logger: Logger;
  /** Milliseconds since the epoch; decides override expiry and the override lifetime check. */
  now?: () => number;
}

export interface WatchOptions {
  /** Quiet time after the last change event before the file is read: editors and `kubectl` write in bursts. */
  debounceMs: number;
  /** A stat-free backstop: the file is re-read this often in case a change event was missed. */
  pollMs: number;
}

// setTimeout stores its delay in a signed 32-bit integer; longer waits are re-armed in steps.
const MAX_TIMER_MS = 2_147_483_647;

/** Compiles `inbound.policy`, reporting a policy problem as a ConfigError that names the file and the field. */
export function compileConfigPolicy(loaded: LoadedConfig, now?: () => number): Policy {
  try {
    return new Policy(loaded.config.inbound!.policy, now ? { now } : {});
  } catch (error) {
    if (error instanceof MtlsdError && error.code === "POLICY_INVALID") {
      const [field, ...rest] = error.message.split(": ");
      throw new ConfigError(loaded.file, [
        { path: field ?? "inbound.policy", expected: "a valid policy", found: rest.join(": ") },
      ]);
    }
    throw error;
  }
}

/**
 * Where a new config differs from the running one outside `inbound.policy`: those changes are not applied by
 * a reload, so the log says they need a restart. Paths go two levels deep (`inbound.listen`, `identity.deny`).
 */
export function changesNeedingRestart(running: Config, next: Config): string[] {
  const strip = (config: Config): Record<string, unknown> => {
    const { inbound, ...rest } = config;
    if (!inbound) return rest;
    const { policy: _policy, ...inboundRest } = inbound;
    return { ...rest, inbound: inboundRest };
  };
  const a = strip(running);
  const b = strip(next);
  const changed: string[] = [];
  for (const key of new Set([...Object.keys(a), ...Object.keys(b)])) {
    const left = a[key];
    const right = b[key];
    if (JSON.stringify(left) === JSON.stringify(right)) continue;
    if (!isMapping(left) || !isMapping(right)) {
      changed.push(key);
      continue;
    }
    for (const child of new Set([...Object.keys(left), ...Object.keys(right)])) {
      if (JSON.stringify(left[child]) !== JSON.stringify(right[child])) changed.push(`${key}.${child}`);
    }
  }
  return changed;
}

function readConfigText(file: string): string {
  try {
    return readFileSync(file, "utf8");
  } catch (error) {
    const reason =
      (error as NodeJS.ErrnoException).code === "ENOENT" ? "no such file" : (error as Error).message;
    throw new MtlsdError("CONFIG_UNREADABLE", `${file}: cannot read the config file: ${reason}`, {
      cause: error,
    });
  }
}

function isMapping(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** What an override log line shows: enough to find it in the config and to know who to ask. */
function describeOverride(o: PolicyOverride): Record<string, unknown> {
  return { reason: o.reason, approvedBy: o.approvedBy, expires: o.expires.toISOString(), from: o.from };
}

/** The same override in two config versions is the same override: it is reported once per process. */
function overrideKey(o: PolicyOverride): string {
  return JSON.stringify([o.expires.toISOString(), o.approvedBy, o.reason, o.from, o.to ?? null]);
}

export class PolicyReloader {
  readonly #options: PolicyReloaderOptions;
  readonly #now: () => number;
  #policy: Policy;
  /** The text last read from the file, good or bad, so an unchanged file is not reloaded (or complained about) again. */
  #lastText: string;
  readonly #announced = new Set<string>();
  readonly #expired = new Set<string>();
  #expiryTimer: NodeJS.Timeout | undefined;
  #watcher: FSWatcher | undefined;
  #debounce: NodeJS.Timeout | undefined;
  #poll: NodeJS.Timeout | undefined;
  #closed = false;

  constructor(options: PolicyReloaderOptions) {
    this.#options = options;
    this.#now = options.now ?? Date.now;
    this.#policy = options.policy;
    this.#lastText = options.running.text;
  }

  get policy(): Policy {
    return this.#policy;
  }

  /** Reports the overrides of the starting policy and arms the expiry timer. */
  start(): void {
    this.#reportOverrides();
  }

  /**
   * Reads, validates (schema, cross-field rules, override lifetime, policy compile) and, only if all pass,
   * installs the new policy. A bad config keeps the running policy and logs why. Never throws.
   */
  reload(trigger: PolicyReloadTrigger): PolicyReloadOutcome {
    const { running, logger } = this.#options;
    const file = running.file;
    let next: LoadedConfig;
    let policy: Policy;
    try {
      const text = readConfigText(file);
      // Remembered before validation: a bad file is reported once, not again at every event or poll.
      this.#lastText = text;
      next = parseConfig(text, file, { now: this.#now() });
      if (!next.config.inbound) {
        throw new ConfigError(file, [
          {
            path: "inbound",
            expected: "an inbound section while the sidecar runs one (removing it needs a restart)",
            found: "none",
          },
        ]);
      }
      policy = compileConfigPolicy(next, this.#now);
    } catch (error) {
      const message = (error as Error).message.replace("; nothing was started", "");
      logger.warn(
        { trigger, config: file, error: message, policy_sha256: this.#policy.sha256 },
        "policy reload failed; keeping the current policy",
      );
      return { result: "rejected", error: message };
    }
    const previous = this.#policy;
    const changed = policy.sha256 !== previous.sha256;
    if (changed) {
      this.#policy = policy;
      this.#options.apply(policy);
    }
    const restartRequired = changesNeedingRestart(running.config, next.config);
    const fields = {
      trigger,
      config: file,
      changed,
      rules: this.#policy.ruleCount,
      overrides: this.#policy.overrideCount,
      policy_sha256: this.#policy.sha256,
      ...(changed ? { previous_sha256: previous.sha256 } : {}),
      ...(restartRequired.length > 0 ? { restart_required: restartRequired } : {}),
    };
    // Other settings on disk now differ from what runs: that deserves more than an info line.
    if (restartRequired.length > 0) {
      logger.warn(fields, "policy reloaded; other changed settings need a restart");
    } else logger.info(fields, changed ? "policy reloaded" : "policy reloaded; unchanged");
    if (changed) this.#reportOverrides();
    return { result: "applied", sha256: this.#policy.sha256, changed, restartRequired };
  }

  /**
   * Watches the config file's directory, not the file: Kubernetes ConfigMaps (and editors that save by rename)
   * replace the file, after which a watch on the file itself goes silent. A slow poll backs the watch up.
   */
  watch(options: WatchOptions): void {
    const file = this.#options.running.file;
    const schedule = () => {
      if (this.#closed) return;
      clearTimeout(this.#debounce);
      this.#debounce = setTimeout(() => this.#reloadIfChanged("watch"), options.debounceMs);
      this.#debounce.unref();
    };
    try {
      this.#watcher = watch(path.dirname(file), { persistent: false }, schedule);
      this.#watcher.on("error", (error) => {
        this.#options.logger.warn(
          { config: file, error: error.message },
          "config watch failed; relying on SIGHUP and polling",
        );
        this.#watcher?.close();
      });
    } catch (error) {
      this.#options.logger.warn(
        { config: file, error: (error as Error).message },
        "cannot watch the config directory; relying on SIGHUP and polling",
      );
    }
    this.#poll = setInterval(() => this.#reloadIfChanged("poll"), options.pollMs);
    this.#poll.unref();
  }

  close(): void {
    this.#closed = true;
    clearTimeout(this.#expiryTimer);
    clearTimeout(this.#debounce);
    clearInterval(this.#poll);
    this.#watcher?.close();
  }

  #reloadIfChanged(trigger: PolicyReloadTrigger): void {
    if (this.#closed) return;
    let text: string;
    try {
      text = readConfigText(this.#options.running.file);
    } catch {
      // Mid-rename, or deleted: the reload that follows the next event (or SIGHUP) will say what is wrong.
      return;
    }
    if (text === this.#lastText) return;
    this.reload(trigger);
  }

  /**
   * Logs each override once per process: at warn when it is first seen active (a break-glass is news), and at
   * warn again once it has expired and is ignored. Then arms a timer for the next expiry.
   */
  #reportOverrides(): void {
    clearTimeout(this.#expiryTimer);
    if (this.#closed) return;
    const now = this.#now();
    for (const o of this.#policy.expiredOverrides(now)) {
      const key = overrideKey(o);
      if (this.#expired.has(key)) continue;
      this.#expired.add(key);
      this.#options.logger.warn(
        { override: describeOverride(o) },
        "break-glass override expired; it is ignored and can be removed from the config",
      );
    }
    let nextExpiry = Number.POSITIVE_INFINITY;
    for (const o of this.#policy.activeOverrides(now)) {
      const key = overrideKey(o);
      nextExpiry = Math.min(nextExpiry, o.expires.getTime());
      if (this.#announced.has(key)) continue;
      this.#announced.add(key);
      this.#options.logger.warn({ override: describeOverride(o) }, "break-glass override active");
    }
    if (nextExpiry !== Number.POSITIVE_INFINITY) {
      const delay = Math.min(Math.max(nextExpiry - now, 0) + 1, MAX_TIMER_MS);
      this.#expiryTimer = setTimeout(() => this.#reportOverrides(), delay);
      this.#expiryTimer.unref();
    }
  }
}
