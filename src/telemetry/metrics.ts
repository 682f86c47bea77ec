// Prometheus metrics (prom-client): the DESIGN.md names, bounded identity labels, sub-millisecond buckets.
import { Counter, collectDefaultMetrics, Gauge, type Metric, Registry } from "prom-client";
import type { Direction, HandshakeFailureRecord, RequestRecord, TrafficObserver } from "./requests.ts";

/**
 * Live values the metrics read at scrape time, so nothing on the request path keeps them up to date. The optional
 * ones belong to a running sidecar: without them their series are left out.
 */
export interface MetricSources {
  /** Our leaf's notAfter, or undefined before credentials load. */
  certNotAfter(): Date | undefined;
  /** Per-upstream pool state, totals and per endpoint, and what the balancer did since startup. */
  upstreams(): Record<string, UpstreamMetricSource>;
  /** Our leaf's notBefore: with notAfter, the lifetime that alerts take a fraction of. */
  certNotBefore?(): Date | undefined;
  /** Our SPIFFE ID, for `mtlsd_identity_info`. */
  identity?(): string | undefined;
  /** Where credentials come from, and whether the last update (or the Workload API stream) succeeded. */
  credentials?(): { source: string; lastReload: "success" | "failure" };
  /** Whether /readyz would answer 200 now (false while draining). */
  ready?(): Promise<boolean>;
}

export interface UpstreamMetricSource {
  connections: number;
  pending: number;
  endpoints?: readonly { address: string; state: string; connections: number; pending: number }[];
  ejections?: number;
  retries?: Readonly<Record<string, number>>;
}

// Sub-millisecond resolution at the low end: a sidecar's added latency lives there.
const DURATION_BUCKETS = [
  0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
];

/** One sample as prom-client's registry renders it: `labels` first, then `sharedLabels`. */
interface Sample {
  labels: Record<string, string | number>;
  sharedLabels?: Record<string, string>;
  value: number;
  metricName: string;
  /** prom-client's samples carry the key: null on buckets without exemplars, undefined on _sum and _count. */
  exemplar: null | undefined;
}

interface MetricData {
  name: string;
  help: string;
  type: string;
  values: Sample[];
  aggregator: string;
}

/**
 * `mtlsd_request_duration_seconds{direction,protocol}`, counted into plain numbers per request and turned into
 * samples only when scraped. prom-client's Histogram validates and hashes the label set on every
 * observation (with the Counter's, 3.6% of a sidecar's CPU in a perf profile at 1000 req/s; 1.1% now). It renders
 * through prom-client's registry, whose sample shape (`sharedLabels`, `exemplar`) is not a public API: the
 * package is pinned to 15.1.x and test/metrics-request-series.test.ts compares the output with prom-client's
 * own Histogram. The exposition is
 * the one prom-client writes for a histogram: cumulative `le` buckets, `+Inf`, `_sum`, `_count`.
 */
class DurationHistogram {
  readonly name = "mtlsd_request_duration_seconds";
  readonly help = "Time from request head to response end, as seen by the sidecar.";
  readonly type = "histogram";
  readonly aggregator = "sum";
  readonly #series = new Map<
    string,
    { labels: { direction: Direction; protocol: string }; buckets: Float64Array; sum: number; count: number }
  >();

  observe(direction: Direction, protocol: string, seconds: number): void {
    const key = `${direction}\u0000${protocol}`;
    let series = this.#series.get(key);
    if (!series) {
      series = {
        labels: { direction, protocol },
        buckets: new Float64Array(DURATION_BUCKETS.length),
        sum: 0,
        count: 0,
      };
      this.#series.set(key, series);
    }
    // Each observation lands in the first bucket whose bound holds it; beyond the last, only +Inf counts it.
    for (let index = 0; index < DURATION_BUCKETS.length; index++) {
      if (seconds <= DURATION_BUCKETS[index]!) {
        series.buckets[index]!++;
        break;
      }
    }
    series.sum += seconds;
    series.count++;
  }

  /** What the registry renders as text: label `le` first, then the series' own labels. */
  getForPromString(): MetricData {
    const values: Sample[] = [];
    const bucket = `${this.name}_bucket`;
    for (const series of this.#series.values()) {
      const sharedLabels = series.labels;
      let cumulative = 0;
      DURATION_BUCKETS.forEach((bound, index) => {
        cumulative += series.buckets[index]!;
        values.push({
          labels: { le: bound },
          sharedLabels,
          value: cumulative,
          metricName: bucket,
          exemplar: null,
        });
      });
      values.push(
        { labels: { le: "+Inf" }, sharedLabels, value: series.count, metricName: bucket, exemplar: null },
        { labels: {}, sharedLabels, value: series.sum, metricName: `${this.name}_sum`, exemplar: undefined },
        {
          labels: {},
          sharedLabels,
          value: series.count,
          metricName: `${this.name}_count`,
          exemplar: undefined,
        },
      );
    }
    return { name: this.name, help: this.help, type: this.type, values, aggregator: this.aggregator };
  }

  /** The same samples with every label in one set, as `registry.getMetricsAsJSON()` reports them. */
  get(): MetricData {
    const data = this.getForPromString();
    data.values = data.values.map(({ labels, sharedLabels, ...sample }) => ({
      ...sample,
      labels: { ...labels, ...sharedLabels },
    }));
    return data;
  }

  reset(): void {
    this.#series.clear();
  }
}

/**
 * Counts per label set in plain numbers, handed to a prom-client Counter only when it is scraped: prom-client
 * validates and hashes the label set on every inc(), work a request need not pay for (counts are the same
 * either way). A request whose label set was seen before costs a string key and a map lookup, nothing more.
 */
class PendingCounts {
  readonly #series = new Map<string, { labels: Record<string, string>; pending: number }>();

  /** Counts one for the label set `key` names; false (nothing counted) when it is new: then `open` it. */
  add(key: string): boolean {
    const series = this.#series.get(key);
    if (!series) return false;
    series.pending++;
    return true;
  }

  /** The first count of a new label set. */
  open(key: string, labels: Record<string, string>): void {
    this.#series.set(key, { labels, pending: 1 });
  }

  /** Moves what was counted since the last scrape into `counter`. */
  flush(counter: Counter): void {
    for (const series of this.#series.values()) {
      if (series.pending === 0) continue;
      counter.inc(series.labels, series.pending);
      series.pending = 0;
    }
  }

  clear(): void {
    this.#series.clear();
  }
}

/** A Counter fed from `counts` at scrape time; its reset() also forgets what was counted since the last scrape. */
function deferredCounter<T extends string>(
  counts: PendingCounts,
  configuration: { name: string; help: string; labelNames: readonly T[]; registers: Registry[] },
): Counter<T> {
  const counter = new Counter<T>({
    ...configuration,
    collect() {
      counts.flush(this as unknown as Counter);
    },
  });
  const reset = counter.reset.bind(counter);
  counter.reset = () => {
    counts.clear();
    reset();
  };
  return counter;
}

const OTHER = "other";
/** Permissive-mode plaintext callers: always their own label, so they can never hide in `other`. */
const UNAUTHENTICATED = "unauthenticated";

export class Metrics implements TrafficObserver {
  readonly registry = new Registry();
  readonly requests: Counter<
    | "direction"
    | "decision"
    | "source_identity"
    | "destination_identity"
    | "status_class"
    | "protocol"
    | "grpc_status"
  >;
  readonly handshakeFailures: Counter<"direction" | "reason">;
  /** Requests the sidecar answered (or cut) itself, by its reason code: what went wrong, where 5xx says only that. */
  readonly requestErrors: Counter<"direction" | "reason">;
  readonly credentialReloads: Counter<"result">;
  readonly configReloads: Counter<"result">;
  readonly policyShadow: Counter<"rule" | "result">;
  /** Requests a policy rule (or the default) denied: the rollout view's "denied by which rule, from whom". */
  readonly policyDenials: Counter<"rule" | "source_identity">;
  /** Requests a break-glass override let through. */
  readonly policyOverrides: Counter<"source_identity" | "approved_by">;
  readonly #requestDuration = new DurationHistogram();
  #maxIdentityLabels: number;
  readonly #identities = new Set<string>();
  /** `upstream address` pairs that have a label of their own; bounded like identities. */
  readonly #endpointLabels = new Set<string>();
  readonly #requestCounts = new PendingCounts();
  readonly #denialCounts = new PendingCounts();
  readonly #overrideCounts = new PendingCounts();

  constructor(
    sources: MetricSources,
    options: { maxIdentityLabels?: number; processMetrics?: boolean } = {},
  ) {
    this.#maxIdentityLabels = options.maxIdentityLabels ?? 100;
    const registers = [this.registry];
    this.requests = deferredCounter(this.#requestCounts, {
      name: "mtlsd_requests_total",
      help: "Requests handled, by direction, decision, peer identity (source inbound, destination outbound), status class, protocol (http/1.1, h2, websocket) and, for gRPC, grpc_status.",
      labelNames: [
        "direction",
        "decision",
        "source_identity",
        "destination_identity",
        "status_class",
        "protocol",
        "grpc_status",
      ],
      registers,
    });
    this.handshakeFailures = new Counter({
      name: "mtlsd_handshake_failures_total",
      help: "Connections refused during or right after the TLS handshake, by reason.",
      labelNames: ["direction", "reason"],
      registers,
    });
    this.requestErrors = new Counter({
      name: "mtlsd_request_errors_total",
      help: "Requests the sidecar answered with an error of its own, or cut, by direction and reason (upstream_unreachable, upstream_protocol_error, bad_request, …; policy denials are in mtlsd_policy_denials_total).",
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
    this.configReloads = new Counter({
      name: "mtlsd_config_reloads_total",
      help: "Reloads of the config file (on change or SIGHUP), by result: success (applied, perhaps with changes waiting for a restart) or failure (refused, the running config kept).",
      labelNames: ["result"],
      registers,
    });
    for (const result of ["success", "failure"]) this.configReloads.inc({ result }, 0);
    this.policyShadow = new Counter({
      name: "mtlsd_policy_shadow_total",
      help: "Dry-run policy rules that matched, by rule and shadow result.",
      labelNames: ["rule", "result"],
      registers,
    });
    // Rule names come from the config and identities are capped, so both labels stay bounded.
    this.policyDenials = deferredCounter(this.#denialCounts, {
      name: "mtlsd_policy_denials_total",
      help: "Inbound requests denied by policy, by the deciding rule (`default` when no rule matched) and source identity.",
      labelNames: ["rule", "source_identity"],
      registers,
    });
    this.policyOverrides = deferredCounter(this.#overrideCounts, {
      name: "mtlsd_policy_overrides_total",
      help: "Inbound requests a break-glass override allowed, by source identity and the override's approver.",
      labelNames: ["source_identity", "approved_by"],
      registers,
    });
    // The registry only calls get()/getForPromString(); its type admits prom-client's own classes alone.
    this.registry.registerMetric(this.#requestDuration as unknown as Metric);
    new Gauge({
      name: "mtlsd_cert_expiry_seconds",
      help: "Seconds until this workload's certificate expires (negative once expired).",
      registers,
      collect() {
        const notAfter = sources.certNotAfter();
        if (notAfter) this.set((notAfter.getTime() - Date.now()) / 1000);
      },
    });
    const { certNotBefore, identity, credentials, ready } = sources;
    if (certNotBefore) {
      new Gauge({
        name: "mtlsd_cert_lifetime_seconds",
        help: "Validity period of this workload's certificate (notAfter - notBefore), so alerts can take a fraction of it.",
        registers,
        collect() {
          const notBefore = certNotBefore();
          const notAfter = sources.certNotAfter();
          if (notBefore && notAfter) this.set((notAfter.getTime() - notBefore.getTime()) / 1000);
        },
      });
    }
    if (identity) {
      new Gauge({
        name: "mtlsd_identity_info",
        help: "Always 1, labelled with this sidecar's own SPIFFE ID: join on it to name the callee of inbound series.",
        labelNames: ["identity"],
        registers,
        collect() {
          this.reset();
          const spiffeId = identity();
          if (spiffeId) this.set({ identity: spiffeId }, 1);
        },
      });
    }
    if (credentials) {
      new Gauge({
        name: "mtlsd_credential_last_reload_successful",
        help: "1 when the last credential update (or the Workload API stream) succeeded, 0 while it is failing, by source (files | workload_api).",
        labelNames: ["source"],
        registers,
        collect() {
          const { source, lastReload } = credentials();
          this.set({ source }, lastReload === "success" ? 1 : 0);
        },
      });
    }
    if (ready) {
      new Gauge({
        name: "mtlsd_ready",
        help: "1 when /readyz answers 200, 0 when it answers 503 (a failing check, or draining).",
        registers,
        async collect() {
          this.set((await ready()) ? 1 : 0);
        },
      });
    }
    new Gauge({
      name: "mtlsd_upstream_connections",
      help: "Open pooled mTLS connections per upstream.",
      labelNames: ["upstream"],
      registers,
      collect() {
        // A reload may remove an upstream: its series goes with it rather than freezing at its last value.
        this.reset();
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
        this.reset();
        for (const [upstream, stats] of Object.entries(sources.upstreams()))
          this.set({ upstream }, stats.pending);
      },
    });
    this.#endpointMetrics(sources, registers);
    if (options.processMetrics !== false) collectDefaultMetrics({ register: this.registry });
  }

  /**
   * A config reload changed `metrics.maxIdentityLabels`: identities seen from now on are counted against it;
   * those already labelled keep their label (a series never changes its name mid-life).
   */
  setMaxIdentityLabels(max: number): void {
    this.#maxIdentityLabels = max;
  }

  /**
   * Per endpoint, read at scrape time like the per-upstream gauges. An endpoint keeps its `address` label while
   * there are few (the same bound as identity labels): a DNS name behind an autoscaler must not grow series without
   * end, so later addresses are summed under `other`. Ejections and retries count per upstream; the log names the
   * endpoint.
   */
  #endpointMetrics(sources: MetricSources, registers: Registry[]): void {
    const label = (upstream: string, address: string) => this.#endpointLabel(upstream, address);
    const perEndpoint = (gauge: Gauge<"upstream" | "address">, value: "connections" | "pending") => {
      gauge.reset();
      for (const [upstream, stats] of Object.entries(sources.upstreams())) {
        const sums = new Map<string, number>();
        for (const endpoint of stats.endpoints ?? []) {
          const address = label(upstream, endpoint.address);
          sums.set(address, (sums.get(address) ?? 0) + endpoint[value]);
        }
        for (const [address, sum] of sums) gauge.set({ upstream, address }, sum);
      }
    };
    new Gauge({
      name: "mtlsd_upstream_endpoints",
      help: "Endpoints per upstream, by state: healthy, or ejected after failures.",
      labelNames: ["upstream", "state"],
      registers,
      collect() {
        for (const [upstream, stats] of Object.entries(sources.upstreams())) {
          const endpoints = stats.endpoints ?? [];
          const ejected = endpoints.filter((endpoint) => endpoint.state === "ejected").length;
          this.set({ upstream, state: "healthy" }, endpoints.length - ejected);
          this.set({ upstream, state: "ejected" }, ejected);
        }
      },
    });
    new Gauge({
      name: "mtlsd_upstream_endpoint_connections",
      help: "Open pooled mTLS connections per upstream endpoint (address `other`: those beyond the label bound).",
      labelNames: ["upstream", "address"],
      registers,
      collect() {
        perEndpoint(this, "connections");
      },
    });
    new Gauge({
      name: "mtlsd_upstream_endpoint_pending_requests",
      help: "Requests queued or in flight per upstream endpoint (address `other`: those beyond the label bound).",
      labelNames: ["upstream", "address"],
      registers,
      collect() {
        perEndpoint(this, "pending");
      },
    });
    new Counter({
      name: "mtlsd_upstream_ejections_total",
      help: "Upstream endpoints ejected after a failed connection or consecutive failures.",
      labelNames: ["upstream"],
      registers,
      collect() {
        this.reset();
        for (const [upstream, stats] of Object.entries(sources.upstreams()))
          this.inc({ upstream }, stats.ejections ?? 0);
      },
    });
    new Counter({
      name: "mtlsd_upstream_retries_total",
      help: "Requests sent to another endpoint, by why: not_sent (never reached the first) or idempotent (retries).",
      labelNames: ["upstream", "reason"],
      registers,
      collect() {
        this.reset();
        for (const [upstream, stats] of Object.entries(sources.upstreams())) {
          for (const [reason, count] of Object.entries(stats.retries ?? {}))
            this.inc({ upstream, reason }, count);
        }
      },
    });
  }

  #endpointLabel(upstream: string, address: string): string {
    const key = `${upstream} ${address}`;
    if (this.#endpointLabels.has(key)) return address;
    if (this.#endpointLabels.size >= this.#maxIdentityLabels) return OTHER;
    this.#endpointLabels.add(key);
    return address;
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
    const grpcStatus = grpcStatusLabel(record.grpc_status);
    const key = `${record.direction}\u0000${record.decision}\u0000${peer}\u0000${statusClass}\u0000${record.protocol}\u0000${grpcStatus ?? ""}`;
    if (!this.#requestCounts.add(key)) {
      this.#requestCounts.open(key, {
        direction: record.direction,
        decision: record.decision,
        status_class: statusClass,
        ...(record.direction === "inbound" ? { source_identity: peer } : { destination_identity: peer }),
        protocol: record.protocol,
        ...(grpcStatus !== undefined ? { grpc_status: grpcStatus } : {}),
      });
    }
    this.#requestDuration.observe(record.direction, record.protocol, record.duration_ms / 1000);
    if (record.shadow_hits) {
      for (const hit of record.shadow_hits) this.policyShadow.inc({ rule: hit.rule, result: hit.result });
    }
    if (ERROR_REASONS.has(record.reason))
      this.requestErrors.inc({ direction: record.direction, reason: record.reason });
    // Other refusals (bad_path, bad_request) are decision "deny" too, but no rule made them.
    if (record.direction === "inbound" && record.reason === "policy_denied") {
      const rule = record.rule ?? "default";
      const denial = `${rule}\u0000${peer}`;
      if (!this.#denialCounts.add(denial)) this.#denialCounts.open(denial, { rule, source_identity: peer });
    }
    if (record.override) {
      const approvedBy = record.override.approvedBy;
      const use = `${approvedBy}\u0000${peer}`;
      if (!this.#overrideCounts.add(use))
        this.#overrideCounts.open(use, { source_identity: peer, approved_by: approvedBy });
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

/**
 * The reason codes of DESIGN.md for requests the sidecar failed itself (policy denials have a counter of their
 * own). A fixed set keeps the label bounded: a request's `reason` also carries the policy's words on success.
 */
const ERROR_REASONS = new Set([
  "bad_path",
  "bad_request",
  "request_timeout",
  "unknown_upstream",
  "upstream_unreachable",
  "upstream_identity_mismatch",
  "upstream_tls_error",
  "upstream_timeout",
  "upstream_reset",
  "upstream_protocol_error",
  "upgrade_refused",
  "method_not_allowed",
  "app_protocol_mismatch",
  "draining",
]);

/** gRPC status codes are 0–16; anything else an app sends is counted as `other`, so the label stays bounded. */
function grpcStatusLabel(status: string | undefined): string | undefined {
  if (status === undefined) return undefined;
  return /^(?:1[0-6]|[0-9])$/.test(status) ? status : "other";
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
