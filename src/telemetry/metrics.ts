// Prometheus metrics (prom-client): the DESIGN.md names, bounded identity labels, sub-millisecond buckets.
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from "prom-client";
import type { HandshakeFailureRecord, RequestRecord, TrafficObserver } from "./requests.ts";

/** Live values the metrics read at scrape time, so nothing on the request path keeps them up to date. */
export interface MetricSources {
  /** Our leaf's notAfter, or undefined before credentials load. */
  certNotAfter(): Date | undefined;
  /** Per-upstream pool state. */
  upstreams(): Record<string, { connections: number; pending: number }>;
}

// Sub-millisecond resolution at the low end: a sidecar's added latency lives there.
const DURATION_BUCKETS = [
  0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
];

const OTHER = "other";
/** Permissive-mode plaintext callers: always their own label, so they can never hide in `other`. */
const UNAUTHENTICATED = "unauthenticated";

export class Metrics implements TrafficObserver {
  readonly registry = new Registry();
  readonly requests: Counter<
    "direction" | "decision" | "source_identity" | "destination_identity" | "status_class"
  >;
  readonly handshakeFailures: Counter<"direction" | "reason">;
  readonly credentialReloads: Counter<"result">;
  readonly policyShadow: Counter<"rule" | "result">;
  readonly requestDuration: Histogram<"direction">;
  readonly #maxIdentityLabels: number;
  readonly #identities = new Set<string>();
  // Label children cached by a composite key: prom-client hashes the label object on every inc() otherwise.
  readonly #requestChildren = new Map<string, { inc(): void }>();
  readonly #durationChildren: Record<string, { observe(value: number): void }>;

  constructor(
    sources: MetricSources,
    options: { maxIdentityLabels?: number; processMetrics?: boolean } = {},
  ) {
    this.#maxIdentityLabels = options.maxIdentityLabels ?? 100;
    const registers = [this.registry];
    this.requests = new Counter({
      name: "mtlsd_requests_total",
      help: "Requests handled, by direction, decision, peer identity (source inbound, destination outbound) and status class.",
      labelNames: ["direction", "decision", "source_identity", "destination_identity", "status_class"],
      registers,
    });
    this.handshakeFailures = new Counter({
      name: "mtlsd_handshake_failures_total",
      help: "Connections refused during or right after the TLS handshake, by reason.",
      labelNames: ["direction", "reason"],
      registers,
    });
    this.credentialReloads = new Counter({
      name: "mtlsd_credential_reloads_total",
      help: "Attempts to load rotated credentials, by result (success | failure).",
      labelNames: ["result"],
      registers,
    });
    // Both series exist from the start, so `increase(...{result="failure"}[5m]) > 0` can fire on the first one.
    for (const result of ["success", "failure"]) this.credentialReloads.inc({ result }, 0);
    this.policyShadow = new Counter({
      name: "mtlsd_policy_shadow_total",
      help: "Dry-run policy rules that matched, by rule and shadow result.",
      labelNames: ["rule", "result"],
      registers,
    });
    this.requestDuration = new Histogram({
      name: "mtlsd_request_duration_seconds",
      help: "Time from request head to response end, as seen by the sidecar.",
      labelNames: ["direction"],
      buckets: DURATION_BUCKETS,
      registers,
    });
    this.#durationChildren = {
      inbound: this.requestDuration.labels({ direction: "inbound" }),
      outbound: this.requestDuration.labels({ direction: "outbound" }),
    };
    new Gauge({
      name: "mtlsd_cert_expiry_seconds",
      help: "Seconds until this workload's certificate expires (negative once expired).",
      registers,
      collect() {
        const notAfter = sources.certNotAfter();
        if (notAfter) this.set((notAfter.getTime() - Date.now()) / 1000);
      },
    });
    new Gauge({
      name: "mtlsd_upstream_connections",
      help: "Open pooled mTLS connections per upstream.",
      labelNames: ["upstream"],
      registers,
      collect() {
        for (const [upstream, stats] of Object.entries(sources.upstreams()))
          this.set({ upstream }, stats.connections);
      },
    });
    new Gauge({
      name: "mtlsd_upstream_pending_requests",
      help: "Requests queued or in flight per upstream.",
      labelNames: ["upstream"],
      registers,
      collect() {
        for (const [upstream, stats] of Object.entries(sources.upstreams()))
          this.set({ upstream }, stats.pending);
      },
    });
    if (options.processMetrics !== false) collectDefaultMetrics({ register: this.registry });
  }

  /** Caps distinct identity label values: the first N seen keep their name, later ones read `other`. */
  identityLabel(identity: string): string {
    if (identity === UNAUTHENTICATED || this.#identities.has(identity)) return identity;
    if (this.#identities.size >= this.#maxIdentityLabels) return OTHER;
    this.#identities.add(identity);
    return identity;
  }

  request(record: RequestRecord): void {
    const peer = this.identityLabel(
      record.direction === "inbound" ? record.source_identity : record.destination_identity,
    );
    const statusClass = `${Math.floor(record.status / 100)}xx`;
    const key = `${record.direction}\u0000${record.decision}\u0000${peer}\u0000${statusClass}`;
    let child = this.#requestChildren.get(key);
    if (!child) {
      child = this.requests.labels({
        direction: record.direction,
        decision: record.decision,
        status_class: statusClass,
        ...(record.direction === "inbound" ? { source_identity: peer } : { destination_identity: peer }),
      });
      this.#requestChildren.set(key, child);
    }
    child.inc();
    this.#durationChildren[record.direction]?.observe(record.duration_ms / 1000);
    if (record.shadow_hits) {
      for (const hit of record.shadow_hits) this.policyShadow.inc({ rule: hit.rule, result: hit.result });
    }
  }

  handshakeFailure(record: HandshakeFailureRecord): void {
    this.handshakeFailures.inc({ direction: record.direction, reason: record.reason });
  }

  metrics(): Promise<string> {
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }
}

/** Sends each record to several observers (the log and the metrics). */
export class TrafficFanout implements TrafficObserver {
  readonly #observers: readonly TrafficObserver[];

  constructor(observers: readonly TrafficObserver[]) {
    this.#observers = observers;
  }

  request(record: RequestRecord): void {
    for (const observer of this.#observers) observer.request(record);
  }

  handshakeFailure(record: HandshakeFailureRecord): void {
    for (const observer of this.#observers) observer.handshakeFailure(record);
  }
}
