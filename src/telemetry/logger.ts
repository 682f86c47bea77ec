// Builds the pino logger: JSON lines on stdout (or a given stream), ISO timestamps, no certificate material.
import { type DestinationStream, type Logger, pino, symbols } from "pino";

export type { Logger };

export interface LoggerOptions {
  level: string;
  /** Where lines go; defaults to an asynchronous stdout writer (wait for `logsWritten` before exiting). */
  stream?: DestinationStream;
}

/**
 * Log lines are written in batches of up to this many bytes, one write(2) per batch rather than one per line: at
 * `info` every request writes a line, and a write per line cost a sidecar about a tenth of its throughput. Under
 * PIPE_BUF (4096), so a batch is written to a pipe whole even where several processes share it (workers).
 */
const LOG_BATCH_BYTES = 4000;
/** A line waits in the batch at most this long: logs stay timely when traffic is light. */
const LOG_FLUSH_MS = 250;

/** An asynchronous, batching destination for `dest` (stdout by default; a file path in tests). */
export function logDestination(dest: number | string = 1): DestinationStream {
  return pino.destination({
    dest,
    sync: false,
    minLength: LOG_BATCH_BYTES,
    maxWrite: LOG_BATCH_BYTES + 1,
    periodicFlush: LOG_FLUSH_MS,
  });
}

export function createLogger(options: LoggerOptions): Logger {
  const stream = options.stream ?? logDestination();
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
  /** A write is in flight (and more may be queued behind it); "drain" follows once it is written. */
  _writing?: boolean;
  /** Bytes not yet written: a batch still filling, or queued behind the write in flight. */
  _len?: number;
  once?(event: "drain", listener: () => void): unknown;
  /** Writes everything not yet written, synchronously (only when no write is in flight). */
  flushSync?(): void;
}

/**
 * Resolves once every line handed to the logger so far is written, or after `timeoutMs`. The asynchronous
 * destination has a write in flight much of the time, and a batch filling; process.exit would drop both
 * (pino's own flush on exit is not installed under coverage tools). sonic-boom's "drain" can come while a
 * batch smaller than its size is still held, so: wait out the write in flight, then write the rest at once.
 */
export function logsWritten(logger: Logger, timeoutMs = 1000): Promise<void> {
  const stream = (logger as Logger & Record<symbol, unknown>)[symbols.streamSym] as AsyncDestination;
  if (typeof stream.once !== "function" || typeof stream.flushSync !== "function") return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, timeoutMs);
    const step = (): void => {
      if (stream._writing) {
        stream.once!("drain", step);
        return;
      }
      if ((stream._len ?? 0) > 0) {
        try {
          stream.flushSync!();
        } catch {
          // A destination that is gone takes its lines with it: nothing left to wait for.
        }
      }
      clearTimeout(timer);
      resolve();
    };
    step();
  });
}
