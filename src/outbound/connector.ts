// Opens mTLS connections to one upstream: our current client certificate, its SPIFFE ID checked, sessions resumed.
import tls from "node:tls";
import type { buildConnector } from "undici";
import {
  classifyTlsError,
  type DenyList,
  type HandshakeFailureReason,
  type PeerCheck,
  type PeerIdentityCache,
} from "../identity/index.ts";
import { IDENTITY_MISMATCH_CODE, UPSTREAM_TLS_CODE } from "../proxy/index.ts";
import { RECEIVED_ALERT, refusesOurCertificate } from "./refusal.ts";

/** Why a connection to an upstream was given up during or right after its handshake. */
export interface UpstreamHandshakeFailure {
  /** A handshake failure reason, or `upstream_identity_mismatch` for a valid SVID with another SPIFFE ID. */
  reason: HandshakeFailureReason | "upstream_identity_mismatch";
  detail: string;
  /** The SPIFFE ID the server presented, when it presented a valid one. */
  presented?: string;
}

export interface ConnectorOptions {
  upstream: string;
  /** The SPIFFE ID the server must present, exactly. */
  identity: string;
  /** Built once per credential version: our chain and key, the trust bundle, TLS 1.3. */
  context: tls.SecureContext;
  peers: PeerIdentityCache;
  /** `identity.deny`: a listed server certificate fails the handshake as revoked, like a CRL hit does. */
  denyList: DenyList;
  /** TCP connect plus TLS handshake must finish within this many ms. */
  timeoutMs: number;
  /** ALPN protocols to offer, in order of preference: ["http/1.1"], ["h2"], or both for `protocol: auto`. */
  alpn: readonly string[];
  /** Called after every successful handshake, to count how many were resumed. */
  onHandshake?: (resumed: boolean) => void;
  /** Called once for each connection refused during or right after its handshake, by either side. */
  onFailure?: (failure: UpstreamHandshakeFailure) => void;
  /**
   * A connection already handed over was refused by the server's verdict on our certificate (a TLS 1.3 alert
   * on the first read): it failed its handshake as surely as one that never opened, with the same error.
   */
  onRefused?: (error: Error & { code: string }) => void;
}

/** An error whose `code` the forwarding engine maps to a reason. */
class UpstreamError extends Error {
  readonly code: string;

  constructor(code: string, message: string, cause?: unknown) {
    super(message, { cause });
    this.code = code;
  }
}

/**
 * A connector, in undici's shape (the HTTP/1.1 and HTTP/2 clients and the upgrades' undici Pool all open their
 * connections with it), that keeps the newest TLS session ticket (a strong reference: undici's own cache holds
 * sessions weakly, so a GC can cost a full handshake) and checks the server's identity by URI SAN, never by
 * hostname: `checkServerIdentity` is replaced, the chain is still verified against our bundle.
 */
export function mtlsConnector(options: ConnectorOptions): buildConnector.connector {
  let session: Buffer | undefined;
  return ({ hostname, port, servername }, callback) => {
    let done = false;
    const finish = (error: Error | null, socket: tls.TLSSocket | null) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      if (error) {
        socket?.destroy();
        callback(error, null);
      } else callback(null, socket!);
    };
    const connectOptions: tls.ConnectionOptions = {
      host: hostname,
      port: Number(port) || 443,
      secureContext: options.context,
      ALPNProtocols: [...options.alpn],
      rejectUnauthorized: true,
      checkServerIdentity: () => undefined,
    };
    if (servername) connectOptions.servername = servername;
    if (session) connectOptions.session = session;
    const socket = tls.connect(connectOptions);
    const timer = setTimeout(() => {
      const error = new UpstreamError(
        "UND_ERR_CONNECT_TIMEOUT",
        `connecting to ${options.upstream} (${hostname}:${port}) took longer than ${options.timeoutMs}ms`,
      );
      finish(error, socket);
    }, options.timeoutMs);
    socket.setNoDelay(true);
    // Only tickets from a connection whose server passed the identity check are kept, so resuming one is
    // proof enough: a TLS 1.3 client sees no peer certificate on a resumed session, only the server that
    // holds the ticket key can complete it, and that server was verified when it issued the ticket.
    // TLS 1.3 servers send tickets after the handshake, so they arrive after the check below has run.
    let verified = false;
    socket.on("session", (ticket: Buffer) => {
      if (verified) session = ticket;
    });
    socket.once("secureConnect", () => {
      const resumed = socket.isSessionReused();
      if (!resumed) {
        const certificate = socket.getPeerX509Certificate();
        const check: PeerCheck = certificate
          ? options.peers.identify(certificate)
          : { ok: false, reason: "bad_svid", detail: "presented no certificate" };
        if (!check.ok || check.peer.spiffeId !== options.identity) {
          session = undefined;
          const presented = check.ok ? check.peer.spiffeId : `no valid SPIFFE ID (${check.detail})`;
          const detail = `${options.upstream} presented ${presented}, expected ${options.identity}`;
          options.onFailure?.(
            check.ok
              ? { reason: "upstream_identity_mismatch", detail, presented }
              : { reason: check.reason, detail, ...(check.spiffeId ? { presented: check.spiffeId } : {}) },
          );
          finish(new UpstreamError(IDENTITY_MISMATCH_CODE, detail), socket);
          return;
        }
        // A revoked upstream is a TLS failure (what a CRL hit gives), not a mismatch: it is the expected identity.
        // Counted and logged like any other outbound handshake failure, with reason revoked.
        const denied = options.denyList.check(check.peer);
        if (denied.denied) {
          session = undefined;
          options.onFailure?.({ reason: "revoked", detail: denied.detail });
          finish(
            new UpstreamError(
              UPSTREAM_TLS_CODE,
              `TLS with ${options.upstream} failed: revoked: ${denied.detail}`,
            ),
            socket,
          );
          return;
        }
      }
      verified = true;
      options.onHandshake?.(resumed);
      finish(null, socket);
    });
    let failed = false;
    socket.on("error", (error: Error & { code?: string }) => {
      if (!isTlsFailure(error)) {
        if (!done) finish(error, socket);
        return;
      }
      const failure = tlsFailure(options.upstream, error);
      if (!failed) {
        failed = true;
        options.onFailure?.({ reason: failure.reason, detail: failure.detail });
      }
      if (!done) {
        finish(new UpstreamError(UPSTREAM_TLS_CODE, failure.message, error), socket);
        return;
      }
      if (refusesOurCertificate(error)) {
        options.onRefused?.(new UpstreamError(UPSTREAM_TLS_CODE, failure.message, error));
      }
      // In TLS 1.3 the server judges our certificate after our side of the handshake is done, so its alert
      // arrives once an HTTP client owns the socket. A fatal alert ends the connection: destroy it now, or the 'end'
      // that follows makes the client fail the request as "other side closed" and the cause is lost.
      socket.destroy();
    });
  };
}

/**
 * A TLS error, classified, told from our side: "TLS with orders failed: unknown_ca: orders sent the TLS alert
 * "unknown ca" (it did not accept our certificate)", or "…: the server's certificate has expired (…)".
 */
export function tlsFailure(
  upstream: string,
  error: Error & { code?: string },
): { reason: HandshakeFailureReason; detail: string; message: string } {
  const { reason, detail: generic } = classifyTlsError(error);
  const code = error.code ?? "";
  const alert = RECEIVED_ALERT.exec(code)?.[1]?.toLowerCase().replaceAll("_", " ");
  let detail: string;
  if (alert) {
    const hint = refusesOurCertificate(error)
      ? " (it did not accept our certificate)"
      : alert === "protocol version"
        ? " (mtlsd speaks only TLS 1.3 to upstreams)"
        : alert === "no application protocol"
          ? ` (it speaks none of the protocols offered: see outbound.upstreams.${upstream}.protocol)`
          : "";
    detail = `${upstream} sent the TLS alert "${alert}"${hint}`;
  } else if (code.startsWith("ERR_SSL") || code.startsWith("ERR_TLS")) {
    // OpenSSL's text is "…:SSL routines:<function>:<reason>:<file>:<line>…"; the reason is the useful part.
    const openssl = /SSL routines:[^:]*:([^:]+):/.exec(error.message)?.[1];
    detail = openssl ? `${openssl} (${code})` : generic;
  } else {
    // Our own verification of the server's chain (CERT_HAS_EXPIRED, UNABLE_TO_GET_ISSUER_CERT…).
    detail = `the server's ${generic}`;
  }
  return { reason, detail, message: `TLS with ${upstream} failed: ${reason}: ${detail}` };
}

export function isTlsFailure(error: Error & { code?: string }): boolean {
  const code = error.code ?? "";
  return (
    code.startsWith("ERR_SSL") || code.startsWith("ERR_TLS") || /CERT|ISSUER|SIGNATURE|VERIFY/.test(code)
  );
}
