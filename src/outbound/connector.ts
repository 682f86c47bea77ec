// Opens mTLS connections to one upstream: our current client certificate, its SPIFFE ID checked, sessions resumed.
import tls from "node:tls";
import type { buildConnector } from "undici";
import { classifyTlsError, type DenyList, type PeerIdentityCache } from "../identity/index.ts";
import { IDENTITY_MISMATCH_CODE, UPSTREAM_TLS_CODE } from "../proxy/index.ts";

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
  /** Called after every successful handshake, to count how many were resumed. */
  onHandshake?: (resumed: boolean) => void;
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
 * A connector for undici that keeps the newest TLS session ticket (a strong reference: undici's own cache
 * holds sessions weakly, so a GC can cost a full handshake) and checks the server's identity by URI SAN,
 * never by hostname: `checkServerIdentity` is replaced, the chain is still verified against our bundle.
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
      ALPNProtocols: ["http/1.1"],
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
    let verified = false;
    let pendingTicket: Buffer | undefined;
    socket.on("session", (ticket: Buffer) => {
      if (verified) session = ticket;
      else pendingTicket = ticket;
    });
    socket.once("secureConnect", () => {
      const resumed = socket.isSessionReused();
      if (!resumed) {
        const certificate = socket.getPeerX509Certificate();
        const check = certificate
          ? options.peers.identify(certificate.raw)
          : ({ ok: false, detail: "presented no certificate" } as const);
        if (!check.ok || check.peer.spiffeId !== options.identity) {
          session = undefined;
          const presented = check.ok ? check.peer.spiffeId : `no valid SPIFFE ID (${check.detail})`;
          finish(
            new UpstreamError(
              IDENTITY_MISMATCH_CODE,
              `${options.upstream} presented ${presented}, expected ${options.identity}`,
            ),
            socket,
          );
          return;
        }
        // A revoked upstream is a TLS failure (what a CRL hit gives), not a mismatch: it is the expected identity.
        const denied = options.denyList.check(check.peer);
        if (denied.denied) {
          session = undefined;
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
      if (pendingTicket) session = pendingTicket;
      options.onHandshake?.(resumed);
      finish(null, socket);
    });
    socket.on("error", (error: Error & { code?: string }) => {
      if (done) return;
      if (isTlsFailure(error)) {
        const { reason, detail } = classifyTlsError(error);
        finish(
          new UpstreamError(
            UPSTREAM_TLS_CODE,
            `TLS with ${options.upstream} failed: ${reason}: ${detail}`,
            error,
          ),
          socket,
        );
      } else finish(error, socket);
    });
  };
}

function isTlsFailure(error: Error & { code?: string }): boolean {
  const code = error.code ?? "";
  return (
    code.startsWith("ERR_SSL") || code.startsWith("ERR_TLS") || /CERT|ISSUER|SIGNATURE|VERIFY/.test(code)
  );
}
