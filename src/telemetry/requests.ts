// What the data path reports (requests, refused handshakes) and the log that writes it, one line each.
import type { Logger } from "pino";

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

/** Logs allowed requests at info; denied or failed ones, and those a break-glass override let through, at warn. */
export class TrafficLog implements TrafficObserver {
  readonly #logger: Logger;

  constructor(logger: Logger) {
    this.#logger = logger;
  }

  request(record: RequestRecord): void {
    // A response cut short after its head went out still carries the 2xx the client saw: a failure all the same.
    // A break-glass override's use is news too, whatever the status.
    if (
      record.decision === "deny" ||
      record.status >= 500 ||
      record.reason === "upstream_reset" ||
      record.reason === "upstream_timeout" ||
      record.reason === "upstream_protocol_error" ||
      record.override
    )
      this.#logger.warn(record, "request");
    else this.#logger.info(record, "request");
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
