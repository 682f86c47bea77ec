// Per-request work on the inbound side: normalize the path, ask the policy, set XFCC, forward to the app.
import type { IncomingMessage, ServerResponse } from "node:http";
import { performance } from "node:perf_hooks";
import type { Dispatcher } from "undici";
import type { InboundConfig, LimitsConfig } from "../config/index.ts";
import type { CredentialStore } from "../credentials/index.ts";
import { type Decision, normalizePath, type Policy } from "../policy/index.ts";
import { type ForwardOutcome, forward, sendError } from "../proxy/index.ts";
import type { RequestRecord, TrafficObserver } from "../telemetry/index.ts";
import { type InboundConnection, type InboundSocket, kConnection } from "./connection.ts";
import { buildInboundHeaders } from "./headers.ts";

export interface InboundHandlerOptions {
  app: Dispatcher;
  config: InboundConfig;
  limits: LimitsConfig;
  policy: Policy;
  store: CredentialStore;
  observer: TrafficObserver;
}

const UNAUTHENTICATED = "unauthenticated";
const NO_CONNECTION: InboundConnection = { peer: null, xfcc: null, plaintext: true };

export class InboundHandler {
  /** Swapped whole on a policy reload; a request uses the policy it started with. */
  policy: Policy;
  readonly #options: InboundHandlerOptions;

  constructor(options: InboundHandlerOptions) {
    this.#options = options;
    this.policy = options.policy;
  }

  readonly handle = (req: IncomingMessage, res: ServerResponse): void => {
    const started = performance.now();
    const connection = (req.socket as InboundSocket)[kConnection] ?? NO_CONNECTION;
    const source = connection.peer?.spiffeId ?? null;
    const method = req.method!;
    const record: RequestRecord = {
      direction: "inbound",
      source_identity: source ?? UNAUTHENTICATED,
      destination_identity: this.#options.store.current.spiffeId,
      method,
      path: "",
      decision: "deny",
      reason: "",
      status: 0,
      duration_ms: 0,
    };
    if (connection.plaintext) record.plaintext = true;

    // "Policy sees what the app sees": authorize the normalized path and forward exactly that.
    const target = normalizePath(req.url!);
    if (!target.ok) {
      record.path = req.url!.split("?")[0]!.slice(0, 200);
      sendError(res, 400, "bad_path", `request path refused: ${target.detail}`);
      this.#finish(record, started, 400, "bad_path");
      return;
    }
    record.path = target.path;
    const decision = this.policy.evaluate({ source, method, path: target.path });
    applyDecision(record, decision);
    if (!decision.allow) {
      sendError(res, 403, "policy_denied", "denied by policy");
      this.#finish(record, started, 403, "policy_denied");
      return;
    }
    const built = buildInboundHeaders(
      req.rawHeaders,
      this.#options.config.xfcc,
      connection.xfcc,
      connection.plaintext ? "http" : "https",
    );
    if (!built.ok) {
      record.decision = "deny";
      sendError(res, 400, "bad_request", built.detail, true);
      this.#finish(record, started, 400, "bad_request");
      return;
    }
    forward(
      req,
      res,
      {
        dispatcher: this.#options.app,
        upstream: "app",
        method,
        path: target.path + target.query,
        headers: built.headers,
        hasBody: built.hasBody,
        headersTimeout: this.#options.config.appTimeout,
        bodyTimeout: this.#options.limits.requestTimeout,
      },
      (outcome: ForwardOutcome) => {
        if (outcome.failure) {
          record.reason = outcome.failure.reason;
          record.error = outcome.failure.message;
        }
        this.#finish(record, started, outcome.status);
      },
    );
  };

  #finish(record: RequestRecord, started: number, status: number, reason?: string): void {
    record.status = status;
    if (reason) record.reason = reason;
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
