// The telemetry module's public face: the logger, the traffic records, the metrics and the admin listener.
export {
  type AdminOptions,
  AdminServer,
  type ConfigReloadReport,
  type EndpointReport,
  type LastConfigReload,
  type LastReload,
  type ReloadReport,
  type StatusDocument,
  type StatusSources,
  type UpstreamReport,
} from "./admin.ts";
export { createLogger, type Logger, type LoggerOptions, logDestination, logsWritten } from "./logger.ts";
export { type MetricSources, Metrics, TrafficFanout, type UpstreamMetricSource } from "./metrics.ts";
export { Readiness, type ReadinessCheck, type ReadinessSources, TcpProbe } from "./readiness.ts";
export {
  type Direction,
  type HandshakeFailureRecord,
  type RequestRecord,
  TrafficLog,
  type TrafficObserver,
} from "./requests.ts";
