// Applies a changed config file to the running sidecar, as `nginx -s reload` does: the whole file is validated,
// then everything that can change live does, and what cannot keeps its running value until a restart.
//
// RELOAD_RULES is the one place that decides, for every key of the config, which is which; a test walks the
// schema and fails when a key is in neither column, so a new key cannot be forgotten.
import { type FSWatcher, readFileSync, watch } from "node:fs";
import path from "node:path";
import {
  type Config,
  type ConfigChange,
  ConfigError,
  configChanges,
  type LoadedConfig,
  parseConfig,
} from "./config/index.ts";
import { MtlsdError } from "./errors.ts";
import { Policy, type PolicyOverride } from "./policy/index.ts";
import type { LastConfigReload, Logger } from "./telemetry/index.ts";

/** A part of the running sidecar that takes new settings live; the sidecar knows how to hand them to each. */
export type LivePart =
  | "policy"
  | "inbound"
  | "outbound"
  | "limits"
  | "log"
  | "metrics"
  | "denyList"
  | "credentialReload";

/** How a changed key is taken: by a part of the sidecar (and when it shows), or at the next restart (and why). */
export type ReloadRule =
  | { live: LivePart; takesEffect: string; restart?: undefined }
  | { restart: string; live?: undefined; takesEffect?: undefined };

const live = (part: LivePart, takesEffect: string): ReloadRule => ({ live: part, takesEffect });
const restart = (why: string): ReloadRule => ({ restart: why });

const SOURCE =
  "where the credentials come from: the running source keeps the files or socket it started with";
const LISTENER = "a listen address: its port was bound at startup";
const SECTION = "adding or removing a listener: ports are bound at startup";
const NEXT_REQUESTS = "requests from now on; those in flight keep what they started with";
const NEXT_CONNECTIONS = "connections from now on";

/**
 * Every key of the config, as `configChangeKeys()` spells it (test/config-reload.test.ts checks both ways), and
 * how a changed value is taken: live by a part of the sidecar, or at the next restart (and why).
 */
export const RELOAD_RULES: Readonly<Record<string, ReloadRule>> = Object.freeze({
  "identity.cert": restart(SOURCE),
  "identity.key": restart(SOURCE),
  "identity.trustBundle": restart(SOURCE),
  "identity.workloadApi": restart(SOURCE),
  "identity.workloadApi.socket": restart(SOURCE),
  "identity.workloadApi.spiffeId": restart(SOURCE),
  "identity.workloadApi.startupTimeout": restart("only read while starting"),
  "identity.federation": restart(SOURCE),
  "identity.crl": restart(SOURCE),
  "identity.deny.serials": live(
    "denyList",
    "connections from now on; open ones from a newly listed peer are closed, upstream pools renewed",
  ),
  "identity.deny.spiffeIds": live(
    "denyList",
    "connections from now on; open ones from a newly listed peer are closed, upstream pools renewed",
  ),
  "identity.trustDomain": restart("every connection and upstream was verified against it"),
  "identity.reload.watch": live("credentialReload", "at once"),
  "identity.reload.interval": live("credentialReload", "the next poll and expiry check"),
  inbound: restart(SECTION),
  "inbound.listen": restart(LISTENER),
  "inbound.app": live("inbound", "a new client to the app; requests in flight finish on the old one"),
  "inbound.appTimeout": live("inbound", NEXT_REQUESTS),
  "inbound.mode": live("inbound", NEXT_CONNECTIONS),
  "inbound.minTLSVersion": live("inbound", "handshakes from now on"),
  "inbound.xfcc": live("inbound", NEXT_REQUESTS),
  "inbound.appProtocol": live("inbound", "a new client to the app; requests in flight finish on the old one"),
  "inbound.upgrades": live("inbound", NEXT_REQUESTS),
  "inbound.streamIdleTimeout": live("inbound", NEXT_REQUESTS),
  "inbound.headersWithUnderscores": live("inbound", NEXT_REQUESTS),
  "inbound.removeRequestHeaders": live("inbound", NEXT_REQUESTS),
  "inbound.policy.default": live("policy", NEXT_REQUESTS),
  "inbound.policy.rules": live("policy", NEXT_REQUESTS),
  "inbound.policy.overrides": live("policy", NEXT_REQUESTS),
  "inbound.policy.overridesMaxLifetime": live("policy", "the next reload's check of override lifetimes"),
  outbound: restart(SECTION),
  "outbound.listen": restart(LISTENER),
  "outbound.upstreams": live(
    "outbound",
    "an added upstream serves at once; a removed one finishes its requests in flight, then its pools close",
  ),
  "outbound.upstreams.<name>.address": live(
    "outbound",
    "new pools; the old ones finish their requests, then close",
  ),
  "outbound.upstreams.<name>.identity": live(
    "outbound",
    "new pools; the old ones finish their requests, then close",
  ),
  "outbound.upstreams.<name>.listen": live(
    "outbound",
    "the new port is bound before anything else changes (a port in use refuses the reload); the old one stops accepting",
  ),
  "outbound.upstreams.<name>.timeout": live(
    "outbound",
    "new pools; the old ones finish their requests, then close",
  ),
  "outbound.upstreams.<name>.protocol": live(
    "outbound",
    "new pools; the old ones finish their requests, then close",
  ),
  "outbound.upstreams.<name>.pool.connections": live(
    "outbound",
    "new pools; the old ones finish their requests, then close",
  ),
  "outbound.upstreams.<name>.endpoints": live(
    "outbound",
    "new pools; the old ones finish their requests, then close",
  ),
  "outbound.upstreams.<name>.resolveInterval": live(
    "outbound",
    "new pools; the old ones finish their requests, then close",
  ),
  "outbound.upstreams.<name>.balance": live(
    "outbound",
    "new pools; the old ones finish their requests, then close",
  ),
  "outbound.upstreams.<name>.outlier.consecutiveFailures": live(
    "outbound",
    "new pools; the old ones finish their requests, then close",
  ),
  "outbound.upstreams.<name>.outlier.ejectFor": live(
    "outbound",
    "new pools; the old ones finish their requests, then close",
  ),
  "outbound.upstreams.<name>.outlier.maxEjectFor": live(
    "outbound",
    "new pools; the old ones finish their requests, then close",
  ),
  "outbound.upstreams.<name>.retries": live(
    "outbound",
    "new pools; the old ones finish their requests, then close",
  ),
  "outbound.upgrades": live("outbound", NEXT_REQUESTS),
  "outbound.streamIdleTimeout": live("outbound", NEXT_REQUESTS),
  "limits.maxConnections": live("limits", NEXT_CONNECTIONS),
  "limits.maxHeaderSize": live("limits", NEXT_CONNECTIONS),
  "limits.maxHeaderCount": restart("HTTP/2 sessions take it from the servers' options, set at startup"),
  "limits.handshakeTimeout": restart("built into the TLS servers and the upstream connectors at startup"),
  "limits.headersTimeout": live("limits", NEXT_REQUESTS),
  "limits.requestTimeout": live("limits", NEXT_REQUESTS),
  "limits.keepAliveTimeout": restart("built into the connection pools and HTTP/2 sessions at startup"),
  "limits.maxConcurrentStreams": restart("announced in the HTTP/2 servers' settings at startup"),
  "limits.drainTimeout": live("limits", "the next drain"),
  "admin.listen": restart(LISTENER),
  "metrics.maxIdentityLabels": live("metrics", "identities seen from now on"),
  "log.level": live("log", "at once"),
  workers: restart("the worker processes are forked at startup"),
});

/** How a changed key is taken: its rule, or (a key missing from the table, which a test forbids) a restart. */
export function reloadRule(key: string): ReloadRule {
  return RELOAD_RULES[key] ?? restart("not known to apply live");
}

export interface ReloadPlan {
  /** What runs once applied: the new file's values, except restart-only ones, which keep their running value. */
  effective: Config;
  /** Changes applied live. */
  applied: ConfigChange[];
  /** Changes that wait for a restart. */
  restartRequired: ConfigChange[];
  /** The parts of the sidecar that take the applied changes. */
  parts: ReadonlySet<LivePart>;
}

/** Sorts the differences between the running config and the new one into what applies live and what waits. */
export function planReload(running: Config, next: Config): ReloadPlan {
  const applied: ConfigChange[] = [];
  const restartRequired: ConfigChange[] = [];
  const parts = new Set<LivePart>();
  const effective = structuredClone(next);
  for (const change of configChanges(running, next)) {
    const rule = reloadRule(change.key);
    if (rule.live) {
      applied.push(change);
      parts.add(rule.live);
    } else {
      restartRequired.push(change);
      keepRunningValue(effective, running, change.path);
    }
  }
  return { effective, applied, restartRequired, parts };
}

/** Sets `path` (`inbound.listen`) in `effective` to its value in `running` (or removes it where it had none). */
function keepRunningValue(effective: Config, running: Config, at: string): void {
  const keys = at.split(".");
  const last = keys.pop()!;
  let target = effective as unknown as Record<string, unknown>;
  let source: unknown = running;
  for (const key of keys) {
    target = target[key] as Record<string, unknown>;
    source = (source as Record<string, unknown> | undefined)?.[key];
  }
  const value = (source as Record<string, unknown> | undefined)?.[last];
  if (value === undefined) delete target[last];
  else target[last] = structuredClone(value);
}

/** What asked for a reload; the same words the credential reloader logs, so one SIGHUP reads as one. */
export type ConfigReloadTrigger = "watch" | "poll" | "signal" | "request";

export type ConfigReloadOutcome =
  | { result: "applied"; changed: string[]; restartRequired: string[] }
  | { result: "rejected"; error: string };

export interface ConfigReloaderOptions {
  /** The config the sidecar started with. */
  running: LoadedConfig;
  /** The policy compiled from it; undefined without an inbound section. */
  policy: Policy | undefined;
  /**
   * Hands a validated plan to the parts of the sidecar (the policy, already compiled, with it). May reject only
   * before it changed anything (a per-upstream port that cannot be bound): the reload is then refused.
   */
  apply: (plan: ReloadPlan, policy: Policy | undefined) => Promise<void>;
  /** Told once per reload: feeds `mtlsd_config_reloads_total{result}`. */
  onResult?: (result: "success" | "failure") => void;
  logger: Logger;
  /** Milliseconds since the epoch; decides override expiry and the override lifetime check. */
  now?: () => number;
  /** Where a reload reads the config text: the file by default; a worker reads what its primary validated. */
  read?: (file: string) => string;
}

export interface WatchOptions {
  /** Quiet time after the last change event before the file is read: editors and `kubectl` write in bursts. */
  debounceMs: number;
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

export function readConfigText(file: string): string {
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

/** What an override log line shows: enough to find it in the config and to know who to ask. */
function describeOverride(o: PolicyOverride): Record<string, unknown> {
  return { reason: o.reason, approvedBy: o.approvedBy, expires: o.expires.toISOString(), from: o.from };
}

/** The same override in two config versions is the same override: it is reported once per process. */
function overrideKey(o: PolicyOverride): string {
  return JSON.stringify([o.expires.toISOString(), o.approvedBy, o.reason, o.from, o.to ?? null]);
}

/**
 * Keeps the running sidecar's config current: on a change of the file (watched, and polled every
 * `identity.reload.interval`) and on SIGHUP. Reloads run one at a time. Also reports break-glass overrides when
 * they are installed and when they expire.
 */
export class ConfigReloader {
  readonly #options: ConfigReloaderOptions;
  readonly #now: () => number;
  /** The config in force: the last file applied, with restart-only settings at their running values. */
  #running: LoadedConfig;
  #policy: Policy | undefined;
  #status: LastConfigReload;
  /** The text last read from the file, good or bad, so an unchanged file is not reloaded (or complained about) again. */
  #lastText: string;
  #queue: Promise<unknown> = Promise.resolve();
  readonly #announced = new Set<string>();
  readonly #expired = new Set<string>();
  #expiryTimer: NodeJS.Timeout | undefined;
  #watcher: FSWatcher | undefined;
  #debounce: NodeJS.Timeout | undefined;
  #poll: NodeJS.Timeout | undefined;
  #closed = false;

  constructor(options: ConfigReloaderOptions) {
    this.#options = options;
    this.#now = options.now ?? Date.now;
    this.#running = options.running;
    this.#policy = options.policy;
    this.#lastText = options.running.text;
    this.#status = {
      at: new Date(this.#now()),
      result: "success",
      trigger: "startup",
      error: null,
      restartRequired: [],
    };
  }

  /** The config in force now (restart-only settings at the values the sidecar started with). */
  get config(): Config {
    return this.#running.config;
  }

  get policy(): Policy | undefined {
    return this.#policy;
  }

  /** The last reload (startup counts), for /status. */
  status(): LastConfigReload {
    return { ...this.#status };
  }

  /** Reports the overrides of the starting policy and arms the expiry timer. */
  start(): void {
    this.#reportOverrides();
  }

  /**
   * Reads and validates the whole file (schema, cross-field rules, override lifetimes, policy compile), then
   * applies what applies live. A file that fails changes nothing and the log says why. Never rejects.
   */
  reload(trigger: ConfigReloadTrigger): Promise<ConfigReloadOutcome> {
    const run = this.#queue.then(() => this.#reload(trigger));
    // #reload settles every failure itself; should it ever throw, the next reload must still run.
    this.#queue = run.catch(() => undefined);
    return run;
  }

  /**
   * Watches the config file's directory, not the file: Kubernetes ConfigMaps (and editors that save by rename)
   * replace the file, after which a watch on the file itself goes silent. The poll (`identity.reload.interval`)
   * backs the watch up.
   */
  watch(options: WatchOptions): void {
    const file = this.#running.file;
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
    this.#armPoll();
  }

  close(): void {
    this.#closed = true;
    clearTimeout(this.#expiryTimer);
    clearTimeout(this.#debounce);
    clearInterval(this.#poll);
    this.#poll = undefined;
    this.#watcher?.close();
  }

  async #reload(trigger: ConfigReloadTrigger): Promise<ConfigReloadOutcome> {
    const { logger } = this.#options;
    const file = this.#running.file;
    if (this.#closed) return { result: "rejected", error: "the sidecar is stopping" };
    let next: LoadedConfig;
    let plan: ReloadPlan;
    let policy: Policy | undefined;
    try {
      const text = (this.#options.read ?? readConfigText)(file);
      // Remembered before validation: a bad file is reported once, not again at every event or poll.
      this.#lastText = text;
      next = parseConfig(text, file, { now: this.#now() });
      plan = planReload(this.#running.config, next.config);
      const effective = { ...next, config: plan.effective };
      policy = plan.effective.inbound ? compileConfigPolicy(effective, this.#now) : undefined;
      if (policy && this.#policy && policy.sha256 === this.#policy.sha256) policy = this.#policy;
      await this.#options.apply(plan, policy);
      this.#running = effective;
    } catch (error) {
      const failure =
        error instanceof MtlsdError ? error : new MtlsdError("CONFIG_RELOAD_FAILED", String(error));
      const message = failure.message.replace("; nothing was started", "");
      this.#status = {
        at: new Date(this.#now()),
        result: "failure",
        trigger,
        error: { code: failure.code, message },
        restartRequired: this.#status.restartRequired,
      };
      this.#options.onResult?.("failure");
      logger.warn(
        { trigger, config: file, code: failure.code, error: message, ...this.#policyFields() },
        "config reload refused; keeping the running config",
      );
      return { result: "rejected", error: message };
    }
    const previous = this.#policy;
    this.#policy = policy;
    const changed = plan.applied.map((change) => change.path);
    const restartRequired = plan.restartRequired.map((change) => change.path);
    this.#status = { at: new Date(this.#now()), result: "success", trigger, error: null, restartRequired };
    this.#options.onResult?.("success");
    const fields = {
      trigger,
      config: file,
      changed,
      ...this.#policyFields(),
      ...(previous && policy !== previous ? { previous_sha256: previous.sha256 } : {}),
      ...(restartRequired.length > 0 ? { restart_required: restartRequired } : {}),
    };
    if (restartRequired.length > 0) {
      // The file on disk now differs from what runs: that deserves more than an info line.
      logger.warn(fields, "config reloaded; some changes need a restart and keep their running value");
    } else logger.info(fields, changed.length > 0 ? "config reloaded" : "config reloaded; unchanged");
    if (policy !== previous) this.#reportOverrides();
    if (plan.parts.has("credentialReload") && this.#poll) this.#armPoll();
    return { result: "applied", changed, restartRequired };
  }

  #policyFields(): Record<string, unknown> {
    const policy = this.#policy;
    if (!policy) return {};
    return { rules: policy.ruleCount, overrides: policy.overrideCount, policy_sha256: policy.sha256 };
  }

  #armPoll(): void {
    clearInterval(this.#poll);
    this.#poll = setInterval(
      () => this.#reloadIfChanged("poll"),
      this.#running.config.identity.reload.interval,
    );
    this.#poll.unref();
  }

  #reloadIfChanged(trigger: ConfigReloadTrigger): void {
    if (this.#closed) return;
    let text: string;
    try {
      text = readConfigText(this.#running.file);
    } catch {
      // Mid-rename, or deleted: the reload that follows the next event (or SIGHUP) will say what is wrong.
      return;
    }
    if (text === this.#lastText) return;
    void this.reload(trigger);
  }

  /**
   * Logs each override once per process: at warn when it is first seen active (a break-glass is news), and at
   * warn again once it has expired and is ignored. Then arms a timer for the next expiry.
   */
  #reportOverrides(): void {
    clearTimeout(this.#expiryTimer);
    const policy = this.#policy;
    if (this.#closed || !policy) return;
    const now = this.#now();
    for (const o of policy.expiredOverrides(now)) {
      const key = overrideKey(o);
      if (this.#expired.has(key)) continue;
      this.#expired.add(key);
      this.#options.logger.warn(
        { override: describeOverride(o) },
        "break-glass override expired; it is ignored and can be removed from the config",
      );
    }
    let nextExpiry = Number.POSITIVE_INFINITY;
    for (const o of policy.activeOverrides(now)) {
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
