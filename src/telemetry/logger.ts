// Builds the pino logger: JSON lines on stdout (or a given stream), ISO timestamps, no certificate material.
import { type DestinationStream, type Logger, pino, symbols } from "pino";

export type { Logger };

export interface LoggerOptions {
  level: string;
  /** Where lines go; defaults to an asynchronous stdout writer (wait for `logsWritten` before exiting). */
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

/** What `logsWritten` reads of pino's asynchronous destination (sonic-boom). */
interface AsyncDestination {
  /** A write is in flight (and more may be queued behind it); "drain" follows once all is written. */
  _writing?: boolean;
  once?(event: "drain", listener: () => void): unknown;
}

/**
 * Resolves once every line handed to the logger so far is written, or after `timeoutMs`. The asynchronous
 * destination has a write in flight much of the time; process.exit would drop it and what is queued behind it
 * (pino's own flush on exit writes only what is queued, and is not installed under coverage tools).
 */
export function logsWritten(logger: Logger, timeoutMs = 1000): Promise<void> {
  const stream = (logger as Logger & Record<symbol, unknown>)[symbols.streamSym] as AsyncDestination;
  if (!stream._writing || typeof stream.once !== "function") return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, timeoutMs);
    stream.once!("drain", () => {
      clearTimeout(timer);
      resolve();
    });
  });
}
