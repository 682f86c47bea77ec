// The telemetry module's public face: the logger and the traffic records.
export { createLogger, type Logger, type LoggerOptions } from "./logger.ts";
export { type MetricSources, Metrics, TrafficFanout } from "./metrics.ts";
export {
  type Direction,
  type HandshakeFailureRecord,
  type RequestRecord,
  TrafficLog,
  type TrafficObserver,
} from "./requests.ts";
