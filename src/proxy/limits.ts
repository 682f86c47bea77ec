// The `limits` every client-facing HTTP server applies, in the shape node:http takes them.
import type http from "node:http";
import type http2 from "node:http2";
import type net from "node:net";
import type { LimitsConfig } from "../config/index.ts";

/**
 * Node checks `headersTimeout` and `requestTimeout` on a timer, not per connection, so a client is cut between
 * the limit and the limit plus one tick. A tick of a tenth of the shorter limit, at most 1 s, keeps the cut
 * within 10 % of the configured value (a 1 s headersTimeout cuts at 1.0–1.1 s).
 */
export function connectionsCheckingInterval(limits: LimitsConfig): number {
  const shorter = Math.min(limits.headersTimeout, limits.requestTimeout);
  return Math.min(1000, Math.max(10, Math.round(shorter / 10)));
}

/** Header size and the timers of an http.Server, from `limits`. */
export function httpLimits(limits: LimitsConfig): http.ServerOptions {
  return {
    maxHeaderSize: limits.maxHeaderSize,
    headersTimeout: limits.headersTimeout,
    requestTimeout: limits.requestTimeout,
    keepAliveTimeout: limits.keepAliveTimeout,
    // Node's default (24.6+), made explicit: responses advertise `Keep-Alive: timeout=<keepAliveTimeout>` and the
    // socket stays open 1 s longer, so a client that honours the header closes first and never races our close.
    keepAliveTimeoutBuffer: 1000,
    connectionsCheckingInterval: connectionsCheckingInterval(limits),
  };
}

/**
 * Node keeps only the first `maxHeadersCount` header fields of an HTTP/1.1 request and silently drops the rest;
 * one more than the limit is kept, so that a request over it can be told apart and refused (see headerCountProblem).
 */
export function limitHeaderCount(server: http.Server, limits: LimitsConfig): void {
  server.maxHeadersCount = limits.maxHeaderCount + 1;
}

/** Why a request has too many header fields for `limits.maxHeaderCount`, or undefined when it is within it. */
export function headerCountProblem(rawHeaders: readonly string[], limits: LimitsConfig): string | undefined {
  if (rawHeaders.length <= 2 * limits.maxHeaderCount) return undefined;
  return `the request has more than limits.maxHeaderCount (${limits.maxHeaderCount}) header fields`;
}

/**
 * A config reload changed `limits`: what an HTTP server reads per connection or request takes the new values
 * (`maxHeaderSize` for new connections; the request timers at their next check, which keeps the pace it was
 * started with), and so do the HTTP/2 settings new sessions are offered.
 */
export function updateHttpLimits(
  servers: { http: http.Server; h2?: http2.Http2Server },
  limits: LimitsConfig,
): void {
  const { http: server, h2 } = servers;
  (server as http.Server & { maxHeaderSize: number }).maxHeaderSize = limits.maxHeaderSize;
  server.headersTimeout = limits.headersTimeout;
  server.requestTimeout = limits.requestTimeout;
  limitHeaderCount(server, limits);
  h2?.updateSettings({ maxHeaderListSize: limits.maxHeaderSize });
}

/** Where a listener says that it reached, and left, `limits.maxConnections`. */
export interface CapacityLog {
  warn(fields: object, message: string): void;
  info(fields: object, message: string): void;
}

/**
 * Node refuses connections beyond `maxConnections` silently (it closes them and emits "drop"). Say so once when
 * the limit is reached, and once when a connection is accepted again: an operator learns of the episode, and a
 * flood of refused connections does not become a flood of log lines.
 */
export function reportCapacity(server: net.Server, field: string, log: CapacityLog): void {
  let full = false;
  let refused = 0;
  server.on("drop", () => {
    refused++;
    if (full) return;
    full = true;
    log.warn(
      { listener: field, max_connections: server.maxConnections },
      "limits.maxConnections reached: refusing new connections",
    );
  });
  server.on("connection", () => {
    if (!full) return;
    full = false;
    log.info({ listener: field, refused }, "accepting connections again");
    refused = 0;
  });
}
