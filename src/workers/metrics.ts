// /metrics of `workers: N`: the workers' series summed (prom-client's AggregatorRegistry), the primary's own as they are.
import { AggregatorRegistry, Counter, type Registry } from "prom-client";

/**
 * Series the primary alone keeps: it reloads and validates the credentials and the config, watches expiry and
 * answers /readyz for every worker. The workers' copies say nothing more, and summed they would say something
 * false (N times the seconds to expiry), so theirs are left out.
 */
export const PRIMARY_SERIES: ReadonlySet<string> = new Set([
  "mtlsd_cert_expiry_seconds",
  "mtlsd_cert_lifetime_seconds",
  "mtlsd_identity_info",
  "mtlsd_credential_last_reload_successful",
  "mtlsd_credential_reloads_total",
  "mtlsd_config_reloads_total",
  "mtlsd_ready",
  "mtlsd_worker_restarts_total",
]);

interface MetricJson {
  name: string;
}

/**
 * One registry from the primary's metrics and each worker's `getMetricsAsJSON()`: the primary's series as they
 * are, every other series summed over the workers (or as its `aggregator` says: prom-client's process metrics
 * know which of theirs add up). Series the primary keeps but the workers also report count once.
 */
export function aggregateMetrics(
  primary: readonly object[],
  workers: readonly (readonly object[])[],
): Registry {
  const own = (primary as MetricJson[]).filter((metric) => PRIMARY_SERIES.has(metric.name));
  const rest = (primary as MetricJson[]).filter((metric) => !PRIMARY_SERIES.has(metric.name));
  const served = workers.map((metrics) =>
    (metrics as MetricJson[]).filter((metric) => !PRIMARY_SERIES.has(metric.name)),
  );
  return AggregatorRegistry.aggregate([own, rest, ...served]);
}

/** `mtlsd_worker_restarts_total`: workers that died and were replaced. */
export function workerRestartsCounter(registry: Registry): Counter {
  return new Counter({
    name: "mtlsd_worker_restarts_total",
    help: "Worker processes that exited without being asked to (crashed, killed) and were replaced.",
    registers: [registry],
  });
}
