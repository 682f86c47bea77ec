// Per-request work on the inbound side: normalize the path, ask the policy, set XFCC, forward to the app.
//
// It never learns which protocol carried a request: HTTP/1.1 and HTTP/2 both arrive as a Downstream, and an
// upgrade (WebSocket) takes the same decision before its tunnel opens.
import type { IncomingMessage } from "node:http";
import { performance } from "node:perf_hooks";
import type { Duplex } from "node:stream";
import type { InboundConfig, LimitsConfig } from "../config/index.ts";
import type { CredentialStore } from "../credentials/index.ts";
import { type Decision, normalizePath, type Policy } from "../policy/index.ts";
import {
  type Downstream,
  type ForwardOutcome,
  forward,
  forwardUpgrade,
  hostRequiredOf,
  type RequestHeaderRules,
  rawErrorResponse,
  sendError,
  type Tunnels,
  type UpstreamDispatcher,
  wireStatus,
} from "../proxy/index.ts";
import type { RequestRecord, TrafficObserver } from "../telemetry/index.ts";
import type { InboundConnection } from "./connection.ts";
import { buildInboundHeaders, inboundHeaderRules } from "./headers.ts";

/** How the sidecar reaches the app: requests on `dispatcher` (HTTP/1.1 or h2c), upgrades always on HTTP/1.1. */
export interface AppClient {
  dispatcher: UpstreamDispatcher;
  http1(): UpstreamDispatcher;
}

export interface InboundHandlerOptions {
  app: AppClient;
  config: InboundConfig;
  limits: LimitsConfig;
  policy: Policy;
  store: CredentialStore;
  observer: TrafficObserver;
  tunnels: Tunnels;
}

const UNAUTHENTICATED = "unauthenticated";
const GRPC_NEEDS_H2C = "gRPC needs HTTP/2 to the app: set inbound.appProtocol: h2c";

/** A request that passed identity, path normalization and policy, with the headers the app gets. */
interface Admitted {
  path: string;
  headers: string[];
  hasBody: boolean;
}

export class InboundHandler {
  /** Swapped whole on a policy reload; a request uses the policy it started with. */
  policy: Policy;
  /** Swapped whole on a config reload (`configure`); a request reads it as it starts. */
  #options: InboundHandlerOptions;
  /** Built from the config's header settings, with it. */
  #headerRules: RequestHeaderRules;

  constructor(options: InboundHandlerOptions) {
    this.#options = options;
    this.policy = options.policy;
    this.#headerRules = inboundHeaderRules(options.config);
  }

  /** A config reload: requests from now on use these settings and this app client; those in flight keep theirs. */
  configure(config: InboundConfig, app: AppClient): void {
    this.#options = { ...this.#options, config, app };
    this.#headerRules = inboundHeaderRules(config);
  }

  /** A request, over HTTP/1.1 or HTTP/2. `expectsContinue`: the client waits for a 100 before its body. */
  handle(down: Downstream, connection: InboundConnection, expectsContinue = false): void {
    const started = performance.now();
    const record = this.#record(down.method, connection, down.protocol);
    const admitted = this.#admit(
      down.target,
      down.rawHeaders,
      down.hostRequired,
      connection,
      record,
      (status, reason, message) => {
        // A client waiting for `100 Continue` learns here that its body is not wanted: it may still send it
        // (tired of waiting), or not, so where the next request starts is unknown and the connection closes.
        // Without Expect the body is on its way; Node reads and drops it and the connection stays usable.
        const close = reason === "bad_request" || expectsContinue;
        const grpcStatus = sendError(down, status, reason, message, close);
        this.#finish(record, started, wireStatus(status, grpcStatus), reason, grpcStatus);
      },
    );
    if (!admitted) return;
    if (down.grpc && this.#options.config.appProtocol === "http1") {
      const grpcStatus = sendError(down, 502, "app_protocol_mismatch", GRPC_NEEDS_H2C, expectsContinue);
      this.#finish(
        record,
        started,
        wireStatus(502, grpcStatus),
        "app_protocol_mismatch",
        grpcStatus,
        GRPC_NEEDS_H2C,
      );
      return;
    }
    // Only now, once the request is allowed, may the client send its body.
    if (expectsContinue) down.writeContinue();
    const { config } = this.#options;
    const idle = config.streamIdleTimeout;
    forward(
      down,
      {
        dispatcher: this.#options.app.dispatcher,
        upstream: "app",
        method: down.method,
        path: admitted.path,
        headers: admitted.headers,
        hasBody: down.hasBody ?? admitted.hasBody,
        // A gRPC stream may wait long for its first message: its deadline is the client's (grpc-timeout).
        headersTimeout: down.grpc ? idle : config.appTimeout,
        bodyTimeout: idle,
      },
      (outcome: ForwardOutcome) => {
        if (outcome.failure) {
          record.reason = outcome.failure.reason;
          record.error = outcome.failure.message;
        }
        this.#finish(record, started, outcome.status, undefined, outcome.grpcStatus);
      },
    );
  }

  /**
   * An HTTP/1.1 Upgrade request whose token is honored: decided like any request, then forwarded on an HTTP/1.1
   * connection to the app; on its 101 the connections are joined until either closes.
   */
  handleUpgrade(
    req: IncomingMessage,
    socket: Duplex,
    head: Buffer,
    connection: InboundConnection,
    token: string,
  ): void {
    const started = performance.now();
    const record = this.#record(req.method!, connection, token);
    const admitted = this.#admit(
      req.url!,
      req.rawHeaders,
      hostRequiredOf(req),
      connection,
      record,
      (status, reason, message) => {
        socket.end(rawErrorResponse(status, status === 403 ? "Forbidden" : "Bad Request", reason, message));
        this.#finish(record, started, status, reason);
      },
    );
    if (!admitted) return;
    forwardUpgrade(
      socket,
      head,
      {
        dispatcher: this.#options.app.http1(),
        upstream: "app",
        method: req.method!,
        path: admitted.path,
        headers: admitted.headers,
        token,
        headersTimeout: this.#options.config.appTimeout,
        idleMs: this.#options.config.streamIdleTimeout,
        tunnels: this.#options.tunnels,
      },
      (outcome) => {
        if (outcome.failure) {
          record.reason = outcome.failure.reason;
          record.error = outcome.failure.message;
        }
        if (outcome.tunnel) {
          record.bytes_up = outcome.tunnel.bytesUp;
          record.bytes_down = outcome.tunnel.bytesDown;
          record.ended_by = outcome.tunnel.endedBy;
        }
        this.#finish(record, started, outcome.status);
      },
    );
  }

  /**
   * A request the listener refuses before it is decided (an upgrade we never honor, CONNECT, a malformed HTTP/2
   * stream): logged and counted like any other refusal.
   */
  refused(
    method: string,
    target: string,
    connection: InboundConnection,
    protocol: string,
    status: number,
    reason: string,
    error: string,
  ): void {
    const record = this.#record(method, connection, protocol);
    record.path = target.split("?")[0]!.slice(0, 200);
    record.error = error;
    this.#finish(record, performance.now(), status, reason);
  }

  #record(method: string, connection: InboundConnection, protocol: string): RequestRecord {
    const record: RequestRecord = {
      direction: "inbound",
      source_identity: connection.peer?.spiffeId ?? UNAUTHENTICATED,
      destination_identity: this.#options.store.current.spiffeId,
      method,
      path: "",
      protocol,
      decision: "deny",
      reason: "",
      status: 0,
      duration_ms: 0,
    };
    if (connection.plaintext) record.plaintext = true;
    return record;
  }

  /** Normalizes, decides and builds the app's headers; on refusal calls `refuse` and returns undefined. */
  #admit(
    target: string,
    rawHeaders: readonly string[],
    hostRequired: boolean,
    connection: InboundConnection,
    record: RequestRecord,
    refuse: (status: number, reason: "bad_path" | "policy_denied" | "bad_request", message: string) => void,
  ): Admitted | undefined {
    // "Policy sees what the app sees": authorize the normalized path and forward exactly that.
    const normalized = normalizePath(target);
    if (!normalized.ok) {
      record.path = target.split("?")[0]!.slice(0, 200);
      refuse(400, "bad_path", `request path refused: ${normalized.detail}`);
      return undefined;
    }
    record.path = normalized.path;
    const decision = this.policy.evaluate({
      source: connection.peer?.spiffeId ?? null,
      method: record.method,
      path: normalized.path,
    });
    applyDecision(record, decision);
    if (!decision.allow) {
      refuse(403, "policy_denied", "denied by policy");
      return undefined;
    }
    const built = buildInboundHeaders(
      rawHeaders,
      hostRequired,
      this.#options.config.xfcc,
      connection.xfcc,
      connection.plaintext ? "http" : "https",
      this.#headerRules,
    );
    if (!built.ok) {
      record.decision = "deny";
      refuse(400, "bad_request", built.detail);
      return undefined;
    }
    return { path: normalized.path + normalized.query, headers: built.headers, hasBody: built.hasBody };
  }

  #finish(
    record: RequestRecord,
    started: number,
    status: number,
    reason?: string,
    grpcStatus?: string | number,
    error?: string,
  ): void {
    record.status = status;
    if (reason) record.reason = reason;
    if (error) record.error = error;
    if (grpcStatus !== undefined) record.grpc_status = String(grpcStatus);
    record.duration_ms = Math.round((performance.now() - started) * 1000) / 1000;
    this.#options.observer.request(record);
  }
}

function applyDecision(record: RequestRecord, decision: Decision): void {
  record.decision = decision.allow ? "allow" : "deny";
  record.rule = decision.rule;
  record.reason = decision.reason;
  if (decision.override) {
    const { reason, approvedBy, expires } = decision.override;
    record.override = { reason, approvedBy, expires: expires.toISOString() };
  }
  if (decision.shadow.length > 0) {
    record.shadow_hits = decision.shadow;
    record.shadow = decision.shadow.some((hit) => hit.result === "shadow_deny")
      ? "shadow_deny"
      : "shadow_allow";
  }
}
