// What the data path reports (requests, refused handshakes) and the log that writes it, one line each.
import { type Logger, symbols } from "pino";

export type Direction = "inbound" | "outbound";

/** Everything known about one request once it is over. Field names are the log contract. */
export interface RequestRecord {
  direction: Direction;
  source_identity: string;
  destination_identity: string;
  method: string;
  path: string;
  /** `http/1.1`, `h2`, or an upgrade's token (`websocket`) once the request asked for one. */
  protocol: string;
  decision: "allow" | "deny";
  /** DESIGN.md: present when a dry-run rule matched; shadow_deny if any dry-run deny matched. */
  shadow?: "shadow_allow" | "shadow_deny";
  /** Every dry-run rule that matched, for the log and `mtlsd_policy_shadow_total`. */
  shadow_hits?: readonly { rule: string; result: "shadow_allow" | "shadow_deny" }[];
  rule?: string;
  /** A break-glass override allowed this request: logged at warn, with who approved it. */
  override?: { reason: string; approvedBy: string; expires: string };
  reason: string;
  status: number;
  duration_ms: number;
  plaintext?: true;
  upstream?: string;
  /** Outbound: the endpoint (`ip:port`) of the upstream the request was last sent to. */
  endpoint?: string;
  error?: string;
  /** A gRPC call's status (`grpc-status`), from the app or peer, or the one mtlsd answered with. */
  grpc_status?: string;
  /** An upgraded connection (WebSocket): bytes each way, and which side ended it. */
  bytes_up?: number;
  bytes_down?: number;
  ended_by?: string;
}

/** A connection refused before any request: the DESIGN.md handshake failure reasons. */
export interface HandshakeFailureRecord {
  direction: Direction;
  reason: string;
  detail: string;
  remote_address?: string;
  source_identity?: string;
  destination_identity?: string;
  /** Outbound: the upstream's name, and the SPIFFE ID its server presented when it was not the expected one. */
  upstream?: string;
  /** Outbound: the endpoint (`ip:port`) of the upstream the connection went to. */
  endpoint?: string;
  presented_identity?: string;
}

/** Where the data path reports what happened; the log and the metrics both implement it. */
export interface TrafficObserver {
  request(record: RequestRecord): void;
  handshakeFailure(record: HandshakeFailureRecord): void;
}

/**
 * Logs allowed requests at info; denied or failed ones, and those a break-glass override let through, at warn.
 *
 * A request line is the one log line per request, so it is written without pino's general machinery: the same
 * bytes pino would write (level, time, the logger's bindings, the record's fields in order, msg), built in one
 * pass and handed to the logger's own destination. Same stream, so lines stay in order with every other log
 * line, and the same flush at exit and at the end of a drain. It skips pino's redaction, which a request record
 * cannot need (its fields are the contract above, none of them key material), and halves the cost of a line.
 */
export class TrafficLog implements TrafficObserver {
  readonly #logger: Logger;

  constructor(logger: Logger) {
    this.#logger = logger;
  }

  request(record: RequestRecord): void {
    // A response cut short after its head went out still carries the 2xx the client saw: a failure all the same.
    // A break-glass override's use is news too, whatever the status.
    const level =
      record.decision === "deny" ||
      record.status >= 500 ||
      record.reason === "upstream_reset" ||
      record.reason === "upstream_timeout" ||
      record.override
        ? "warn"
        : "info";
    if (!this.#logger.isLevelEnabled(level)) return;
    const logger = this.#logger as Logger & Record<symbol, unknown>;
    const stream = logger[symbols.streamSym] as { write(line: string): unknown };
    stream.write(requestLine(level, logger[symbols.chindingsSym] as string, record));
  }

  handshakeFailure(record: HandshakeFailureRecord): void {
    // A client that connects and leaves without a word is a port check, not an incident.
    if (record.detail === "connection closed before the TLS handshake")
      this.#logger.debug(record, "handshake failed");
    // No handshake was even tried: a client speaking plain HTTP to an mTLS port, answered 400 mtls_required.
    else if (record.reason === "mtls_required") this.#logger.warn(record, "plaintext refused: mTLS required");
    else this.#logger.warn(record, "handshake failed");
  }
}

/** The JSON line pino writes for `logger[level](record, "request")` with createLogger's options. */
export function requestLine(level: "info" | "warn", bindings: string, record: RequestRecord): string {
  let line = `{"level":"${level}","time":"${new Date().toISOString()}"${bindings}`;
  for (const key in record) {
    const value = record[key as keyof RequestRecord];
    // As JSON.stringify (and pino) do: an absent field is left out, not written as null.
    if (value !== undefined) line += `,"${key}":${JSON.stringify(value)}`;
  }
  return `${line},"msg":"request"}\n`;
}
