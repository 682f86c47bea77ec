// One live mTLS handshake with a peer, as our sidecar would make it, recording what each side made of the other.
import net from "node:net";
import { performance } from "node:perf_hooks";
import tls from "node:tls";
import {
  classifyTlsError,
  classifyVerifyError,
  type HandshakeFailureReason,
  PeerIdentityCache,
  type SvidReport,
  svidProblems,
  type TrustSource,
} from "../identity/index.ts";
import { type CertFacts, certFacts } from "./cert-text.ts";

/** A named failure: `kind` is what an operator greps for and what the summary lists. */
export interface Problem {
  kind: string;
  detail: string;
}

export interface PeerProbeOptions {
  host: string;
  port: number;
  chainPem: string;
  keyPem: string;
  /** Every root we trust: ours and the federated domains'. */
  bundlePem: string;
  /** Our trust domain, then the federated ones. */
  trustDomain: string | readonly string[];
  /** Each trust domain's roots, to check, as the sidecar does, that the peer chains to its own domain's. */
  trust?: TrustSource;
  /** TCP connect plus handshake. */
  timeoutMs: number;
  /** How long to listen, after the handshake, for the peer refusing our certificate. Default 1 s. */
  refusalWaitMs?: number;
}

export interface PeerProbe {
  address: string;
  /** Set when no TLS session came about: nothing listening, a timeout, a failed handshake. */
  connectFailure?: Problem;
  protocol: string;
  cipher: string;
  handshakeMs: number;
  /** The peer's chain as OpenSSL built it: leaf first. */
  chain: CertFacts[];
  /** Why OpenSSL would not accept the peer's chain against our bundle; absent when it would. */
  verifyFailure?: { reason: HandshakeFailureReason; detail: string };
  /** The peer's leaf judged as an X509-SVID of a server in our trust domain. */
  svid?: SvidReport;
  /** The peer told us it refused our certificate (mtlsd's 403, or a TLS alert after the handshake). */
  refusedUs?: { reason: string; detail: string };
  refusalWaitMs: number;
}

// TLS 1.3 clients finish the handshake before the server has judged their certificate, so a refusal
// arrives after `secureConnect`: a peer mtlsd answers at once; a second covers a slow link.
const DEFAULT_REFUSAL_WAIT_MS = 1000;

function connectProblem(error: Error & { code?: string }, address: string, host: string): Problem {
  switch (error.code) {
    case "ECONNREFUSED":
      return {
        kind: "connection refused",
        detail: `nothing accepts connections on ${address} (ECONNREFUSED): is the peer's sidecar running, and is this its inbound port?`,
      };
    case "ENOTFOUND":
    case "EAI_AGAIN":
      return { kind: "unknown host", detail: `${host} does not resolve (${error.code})` };
    case "ETIMEDOUT":
    case "EHOSTUNREACH":
    case "ENETUNREACH":
      return { kind: "unreachable", detail: `${address} cannot be reached (${error.code})` };
    case "ECONNRESET":
      return {
        kind: "handshake failure",
        detail: `${address} closed the connection during the TLS handshake (ECONNRESET)`,
      };
    case "ERR_SSL_WRONG_VERSION_NUMBER":
    case "ERR_SSL_PACKET_LENGTH_TOO_LONG":
      return {
        kind: "handshake failure",
        detail: `${address} does not speak TLS (is it the app's plain HTTP port rather than the sidecar's?)`,
      };
    default: {
      const { reason, detail } = classifyTlsError(error);
      return { kind: "handshake failure", detail: `${address}: ${reason}: ${detail}` };
    }
  }
}

function peerChain(socket: tls.TLSSocket): CertFacts[] {
  const chain: CertFacts[] = [];
  const seen = new Set<string>();
  let current: tls.DetailedPeerCertificate | undefined = socket.getPeerCertificate(true);
  while (current?.raw && !seen.has(current.fingerprint256)) {
    seen.add(current.fingerprint256);
    chain.push(certFacts(new Uint8Array(current.raw), `the peer's certificate ${chain.length}`));
    current = current.issuerCertificate;
  }
  return chain;
}

/** mtlsd refuses a client certificate with an HTTP 403 and `x-mtlsd-reason`, before any request. */
function parseRefusal(received: string): { reason: string; detail: string } | undefined {
  const status = /^HTTP\/1\.[01] (\d{3})/.exec(received)?.[1];
  if (!status) return undefined;
  const reason = /\r\nx-mtlsd-reason: *([a-z_]+)/i.exec(received)?.[1];
  return {
    reason: reason ?? `http_${status}`,
    detail: `it answered HTTP ${status}${reason ? ` with x-mtlsd-reason: ${reason}` : ""} before any request`,
  };
}

export function probePeer(options: PeerProbeOptions): Promise<PeerProbe> {
  const address = `${options.host.includes(":") ? `[${options.host}]` : options.host}:${options.port}`;
  const refusalWaitMs = Math.min(options.refusalWaitMs ?? DEFAULT_REFUSAL_WAIT_MS, options.timeoutMs);
  const probe: PeerProbe = { address, protocol: "", cipher: "", handshakeMs: 0, chain: [], refusalWaitMs: 0 };
  return new Promise((resolve) => {
    const started = performance.now();
    const socket = tls.connect({
      host: options.host,
      port: options.port,
      ...(net.isIP(options.host) === 0 ? { servername: options.host } : {}),
      cert: options.chainPem,
      key: options.keyPem,
      ca: options.bundlePem,
      minVersion: "TLSv1.2",
      ALPNProtocols: ["http/1.1"],
      // We judge the peer ourselves below, so that every verdict is reported rather than one error thrown.
      rejectUnauthorized: false,
      checkServerIdentity: () => undefined,
    });
    let settled = false;
    let waitTimer: NodeJS.Timeout | undefined;
    const finish = () => {
      if (settled) return;
      settled = true;
      clearTimeout(connectTimer);
      clearTimeout(waitTimer);
      socket.destroy();
      resolve(probe);
    };
    const connectTimer = setTimeout(() => {
      probe.connectFailure = {
        kind: "timeout",
        detail: `no TLS session with ${address} within ${options.timeoutMs} ms`,
      };
      finish();
    }, options.timeoutMs);
    socket.on("error", (error: Error & { code?: string }) => {
      if (probe.protocol === "") probe.connectFailure = connectProblem(error, address, options.host);
      else {
        // A TLS 1.3 server that refuses our certificate says so with an alert after our handshake completed.
        const { reason, detail } = classifyTlsError(error);
        probe.refusedUs ??= { reason, detail: `it sent a TLS alert: ${detail}` };
      }
      finish();
    });
    socket.once("secureConnect", () => {
      clearTimeout(connectTimer);
      probe.handshakeMs = Math.round(performance.now() - started);
      probe.protocol = socket.getProtocol() ?? "TLS";
      probe.cipher = socket.getCipher().name;
      probe.chain = peerChain(socket);
      if (!socket.authorized) probe.verifyFailure = classifyVerifyError(String(socket.authorizationError));
      const leaf = probe.chain[0];
      if (leaf) probe.svid = svidProblems(leaf.fields, "server", options.trustDomain);
      const certificate = socket.getPeerX509Certificate();
      if (socket.authorized && options.trust && certificate && probe.svid?.problems.length === 0) {
        // OpenSSL accepted the chain against every domain's roots; the sidecar also wants the peer's own domain's.
        const check = new PeerIdentityCache("server", options.trust).identify(certificate);
        if (!check.ok) probe.verifyFailure = { reason: check.reason, detail: check.detail };
      }
      let received = "";
      socket.setEncoding("latin1");
      socket.on("data", (chunk: string) => {
        received += chunk;
        if (received.includes("\r\n\r\n") || received.length > 16_384) {
          probe.refusedUs = parseRefusal(received);
          finish();
        }
      });
      socket.on("end", () => {
        probe.refusedUs = parseRefusal(received) ?? {
          reason: "closed",
          detail: "it closed the connection right after the handshake, without a word",
        };
        finish();
      });
      probe.refusalWaitMs = refusalWaitMs;
      waitTimer = setTimeout(finish, refusalWaitMs);
    });
  });
}
