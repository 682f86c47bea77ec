// Builds the pino logger: JSON lines on stdout (or a given stream), ISO timestamps, no certificate material.
import { type DestinationStream, type Logger, pino } from "pino";

export type { Logger };

export interface LoggerOptions {
  level: string;
  /** Where lines go; defaults to an asynchronous stdout writer that is flushed on exit. */
  stream?: DestinationStream;
}

export function createLogger(options: LoggerOptions): Logger {
  const stream = options.stream ?? pino.destination({ dest: 1, sync: false });
  return pino(
    {
      level: options.level,
      base: { pid: process.pid },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
      // Defence in depth: these names never carry anything a log should hold.
      redact: { paths: ["keyPem", "*.keyPem", "privateKey", "*.privateKey"], remove: true },
    },
    stream,
  );
}
