// The inbound listener: terminates mTLS, identifies the peer once per connection, and serves HTTP on top.
import { createHash, hkdfSync, randomBytes } from "node:crypto";
import http from "node:http";
import http2 from "node:http2";
import type { AddressInfo } from "node:net";
import net from "node:net";
import type { Duplex } from "node:stream";
import tls from "node:tls";
import type { InboundConfig, LimitsConfig } from "../config/index.ts";
import { parseHostPort } from "../config/index.ts";
import { type CredentialStore, type Credentials, crlOption } from "../credentials/index.ts";
import {
  classifyTlsError,
  classifyVerifyError,
  type DenyList,
  type HandshakeFailureReason,
  PeerIdentityCache,
} from "../identity/index.ts";
import type { Policy } from "../policy/index.ts";
import {
  type Deadline,
  type DrainResult,
  feed,
  H1Client,
  H1Connection,
  type H1ConnectionOptions,
  H1Downstream,
  type H1ServerDownstream,
  H2Client,
  H2Downstream,
  H2Sessions,
  HttpDrain,
  h2ServerOptions,
  handedHeadRead,
  headerCountProblem,
  httpLimits,
  LazyPool,
  limitHeaderCount,
  listenerFastPath,
  malformedH2Request,
  NGHTTP2_PROTOCOL_ERROR,
  REFUSAL_MARK,
  rawErrorResponse,
  reportCapacity,
  sendError,
  settleClientError,
  sniffHttp2Preface,
  superviseStream,
  Tunnels,
  tcpConnector,
  toleratingContinue,
  type UpstreamDispatcher,
  unlessResetAtOnce,
  updateHttpLimits,
  upgradeProtocol,
  upgradeRefusal,
  upgradeRequested,
  upgradeToken,
} from "../proxy/index.ts";
import type { Logger, TrafficObserver } from "../telemetry/index.ts";
import { type InboundConnection, type InboundSocket, kConnection } from "./connection.ts";
import { type AppClient, InboundHandler } from "./handler.ts";
import { formatXfccElement } from "./xfcc.ts";

const TLS_HANDSHAKE_RECORD = 0x16;
// How long a refused peer may keep the socket open to read our explanation before we cut it.
const REFUSAL_LINGER_MS = 2000;
/** Permissive mode: a plaintext connection has no peer, so the policy sees it as unauthenticated. */
const PLAINTEXT_CONNECTION: InboundConnection = Object.freeze({ peer: null, xfcc: null, plaintext: true });

/**
 * TLS connections whose handshake completed (refused peers included), how many resumed a session, and how many
 * HTTP/1.1 requests the fast path (src/proxy/h1-server.ts) served rather than node:http.
 */
export interface InboundStats {
  connections: number;
  resumed: number;
  fastPathRequests: number;
}

export interface InboundOptions {
  config: InboundConfig;
  limits: LimitsConfig;
  store: CredentialStore;
  policy: Policy;
  trustDomain: string;
  /** `identity.deny`: peers refused as revoked, checked on every connection (resumed ones too). */
  denyList: DenyList;
  logger: Logger;
  observer: TrafficObserver;
  /**
   * With `workers: N`, the primary's secret from which every worker derives the same session ticket keys, so a
   * session resumes on whichever worker the next connection lands on. Without it, the keys are random.
   */
  ticketKeySecret?: Buffer | undefined;
}

/**
 * One TCP port, four layers: a net.Server that looks at the first byte (TLS or not), a tls.Server that is
 * fed connections and never listens itself, and an http.Server and an http2 server that are fed the verified
 * TLS sockets by the protocol their ALPN chose (and, in permissive mode, the plaintext ones by their preface).
 * Feeding the layers by hand lets us classify every refusal and explain it to the peer, which a plain
 * `https.Server` with `rejectUnauthorized` would turn into a silent disconnect.
 */
export class InboundListener {
  /** Swapped whole by a config reload (`applyConfig`, `applyLimits`): read per connection, never cached. */
  #options: InboundOptions;
  readonly #net: net.Server;
  readonly #tls: tls.Server;
  readonly #http: http.Server;
  readonly #h2: http2.Http2Server;
  /** Where a refused peer that chose HTTP/2 learns why, in HTTP/2. */
  readonly #refusals: http2.Http2Server;
  #app: InboundApp;
  readonly #handler: InboundHandler;
  readonly #drain = new HttpDrain();
  readonly #sessions = new H2Sessions();
  readonly #tunnels = new Tunnels();
  /** Every accepted TCP connection, from accept to close. */
  readonly #sockets = new Set<net.Socket>();
  /** Verified mTLS connections, so a changed `identity.deny` can close those of a peer it now lists. */
  readonly #verified = new Set<tls.TLSSocket>();
  readonly #stats: InboundStats = { connections: 0, resumed: 0, fastPathRequests: 0 };
  #peers: PeerIdentityCache;
  #bundleSha256: string;
  #crlPem: string | undefined;
  #ticketKeys: Buffer;
  #unsubscribe: () => void;

  constructor(options: InboundOptions) {
    this.#options = options;
    const { config, limits, store } = options;
    this.#peers = new PeerIdentityCache("client", store);
    this.#bundleSha256 = store.current.bundleSha256;
    this.#crlPem = store.current.crlPem;
    this.#ticketKeys = ticketKeysFor(options.ticketKeySecret, store.current);
    this.#app = new InboundApp(config, limits);
    this.#handler = new InboundHandler({
      app: this.#app,
      config,
      limits,
      policy: options.policy,
      store,
      observer: options.observer,
      tunnels: this.#tunnels,
    });

    this.#tls = tls.createServer({
      ...this.#contextOptions(store.current),
      requestCert: true,
      // We check the verdict ourselves in `secureConnection`, so every refusal gets a reason and a reply.
      rejectUnauthorized: false,
      handshakeTimeout: limits.handshakeTimeout,
      ALPNCallback: selectProtocol,
    });
    this.#tls.on("secureConnection", this.#onSecureConnection);
    this.#tls.on("tlsClientError", this.#onTlsClientError);

    this.#http = http.createServer(
      {
        ...httpLimits(limits),
        // Checked in the handler instead, so a missing Host gets our JSON 400 like every other refusal.
        requireHostHeader: false,
        joinDuplicateHeaders: false,
        insecureHTTPParser: false,
        shouldUpgradeCallback: upgradeRequested(() => this.#options.config.upgrades),
      },
      (req, res) => this.#onRequest(req, res, false),
    );
    limitHeaderCount(this.#http, limits);
    this.#http.on("checkContinue", (req, res) => this.#onRequest(req, res, true));
    this.#http.on("upgrade", this.#onUpgrade);
    this.#http.on("connect", this.#onConnect);
    this.#http.on("clientError", this.#onClientError);
    this.#drain.watch(this.#http);

    this.#h2 = http2.createServer(h2ServerOptions(limits));
    this.#h2.on("stream", this.#onStream);
    this.#refusals = http2.createServer(h2ServerOptions(limits));
    this.#refusals.on("stream", this.#onRefusedStream);
    this.#sessions.watch(this.#h2, limits.keepAliveTimeout);

    this.#net = net.createServer({ noDelay: true }, this.#onConnection);
    this.#net.maxConnections = limits.maxConnections;
    reportCapacity(this.#net, "inbound.listen", options.logger);

    this.#unsubscribe = store.subscribe((next) => this.#onCredentials(next));
  }

  async listen(): Promise<AddressInfo> {
    const { host, port } = parseHostPort(this.#options.config.listen)!;
    await new Promise<void>((resolve, reject) => {
      this.#net.once("error", reject);
      this.#net.listen(port, host, () => {
        this.#net.off("error", reject);
        resolve();
      });
    });
    // The http.Server is fed sockets and never listens itself, but Node starts the timer that enforces
    // headersTimeout and requestTimeout (and the bookkeeping behind closeIdleConnections) on "listening".
    // Without this, a client trickling its headers held an inbound connection forever.
    this.#http.emit("listening");
    return this.#net.address() as AddressInfo;
  }

  /** Whether the port is accepting connections. */
  get listening(): boolean {
    return this.#net.listening;
  }

  /** Open connections: TCP connections in their handshake, and verified ones serving HTTP. */
  get connections(): number {
    return this.#sockets.size;
  }

  address(): AddressInfo | null {
    return this.#net.address() as AddressInfo | null;
  }

  stats(): InboundStats {
    return { ...this.#stats };
  }

  setPolicy(policy: Policy): void {
    this.#handler.policy = policy;
  }

  /**
   * A config reload (src/config-reload.ts decides what reaches here): connections and requests from now on read
   * the new settings. A new app address or protocol gets a new client; requests in flight finish on the old one,
   * which then closes. A new minTLSVersion goes into the TLS context new handshakes use.
   */
  applyConfig(config: InboundConfig): void {
    const previous = this.#options.config;
    this.#options = { ...this.#options, config };
    if (config.app !== previous.app || config.appProtocol !== previous.appProtocol) {
      const retired = this.#app;
      this.#app = new InboundApp(config, this.#options.limits);
      void retired.close();
    }
    this.#handler.configure(config, this.#app);
    if (config.minTLSVersion !== previous.minTLSVersion) {
      this.#tls.setSecureContext(this.#contextOptions(this.#options.store.current));
    }
  }

  /** A config reload changed `limits`: new connections and requests get the new bounds. */
  applyLimits(limits: LimitsConfig): void {
    this.#options = { ...this.#options, limits };
    this.#net.maxConnections = limits.maxConnections;
    updateHttpLimits({ http: this.#http, h2: this.#h2 }, limits);
  }

  /**
   * `identity.deny` changed (the list itself is shared and already replaced): a connection from a peer it now
   * lists is closed, as a new one would be refused. Returns how many were closed.
   */
  enforceDenyList(): number {
    let closed = 0;
    for (const socket of this.#verified) {
      const peer = (socket as InboundSocket)[kConnection]?.peer;
      const verdict = peer ? this.#options.denyList.check(peer) : undefined;
      if (!peer || !verdict?.denied) continue;
      this.#options.logger.warn(
        { source_identity: peer.spiffeId, remote_address: socket.remoteAddress, detail: verdict.detail },
        "closing a connection: its peer is now listed in identity.deny",
      );
      socket.destroy();
      closed++;
    }
    return closed;
  }

  /**
   * Stops accepting and drains: requests in flight (and any that arrive on open connections) are answered with
   * `Connection: close`, idle connections close at once, handshakes under way may finish, and what is still
   * open at the deadline is cut. Then the pool to the app closes.
   */
  async drain(deadline: Deadline): Promise<DrainResult> {
    this.#unsubscribe();
    const closed = new Promise<void>((resolve) => this.#net.close(() => resolve()));
    // HTTP/2 sessions get GOAWAY at once; their streams in flight finish. Tunnels (WebSocket) have no end of
    // their own: they are open connections like any other until the deadline.
    const streams = this.#sessions.openStreams + this.#tunnels.size;
    this.#sessions.drain();
    const result = await this.#drain.drain(deadline, () => this.#sockets.size);
    result.inFlight += streams;
    this.#tunnels.closeAll();
    this.#sessions.destroy();
    for (const socket of this.#sockets) socket.destroy();
    this.#drain.close();
    this.#h2.close();
    this.#refusals.close();
    await closed;
    // Every client connection is gone, so no forward is left: close without waiting on anything.
    await this.#app.close();
    return result;
  }

  #contextOptions(credentials: Credentials): tls.SecureContextOptions & { ticketKeys: Buffer } {
    return {
      cert: credentials.chainPem,
      key: credentials.keyPem,
      ca: credentials.caPem,
      // With CRLs, OpenSSL checks every certificate of the peer's chain (see checkCrl in credentials/load.ts).
      ...crlOption(credentials),
      minVersion: this.#options.config.minTLSVersion,
      // Session resumption with client certificates requires a session ID context.
      sessionIdContext: "mtlsd-inbound",
      ticketKeys: this.#ticketKeys,
    };
  }

  #onCredentials(next: Credentials): void {
    // A session ticket carries the old verification result: when trust changes, old tickets must not resume
    // (CVE-2022-21654), so the ticket keys change with the bundle; otherwise they stay and resumption survives.
    // A new CRL is a change of trust too: OpenSSL does not re-check revocation on a resumed session.
    if (next.bundleSha256 !== this.#bundleSha256 || next.crlPem !== this.#crlPem) {
      this.#ticketKeys = ticketKeysFor(this.#options.ticketKeySecret, next);
      this.#bundleSha256 = next.bundleSha256;
      this.#crlPem = next.crlPem;
    }
    this.#tls.setSecureContext(this.#contextOptions(next));
  }

  readonly #onConnection = (socket: net.Socket): void => {
    this.#sockets.add(socket);
    socket.on("error", noop);
    // One deadline from accept to a verified peer, however the client spends it: silent, or trickling its
    // ClientHello a byte at a time. (Node's own TLS handshakeTimeout would start only at the first byte.)
    const timeoutMs = this.#options.limits.handshakeTimeout;
    const pending: PendingHandshake = {
      remoteAddress: socket.remoteAddress,
      cut: false,
      timer: setTimeout(() => {
        pending.cut = true;
        this.#handshakeFailure(
          socket,
          "tls_protocol",
          `TLS handshake not completed within limits.handshakeTimeout (${timeoutMs} ms)`,
        );
        socket.destroy();
      }, timeoutMs),
    };
    (socket as AcceptedSocket)[kHandshake] = pending;
    socket.once("close", () => {
      this.#sockets.delete(socket);
      clearTimeout(pending.timer);
    });
    socket.once("data", (chunk: Buffer) => {
      socket.pause();
      socket.unshift(chunk);
      if (chunk[0] === TLS_HANDSHAKE_RECORD) this.#tls.emit("connection", socket);
      else {
        // Not TLS: the handshake deadline is over; a permissive plaintext connection is HTTP's to time from here.
        clearTimeout(pending.timer);
        if (this.#options.config.mode === "permissive") this.#acceptPlaintext(socket);
        else this.#refusePlaintext(socket);
      }
    });
  };

  /** Istio's PERMISSIVE: the first byte was not a TLS record, so serve HTTP (1.1, or h2c) without an identity. */
  #acceptPlaintext(socket: net.Socket): void {
    (socket as InboundSocket)[kConnection] = PLAINTEXT_CONNECTION;
    sniffHttp2Preface(socket, (isHttp2) => feed(isHttp2 ? this.#h2 : this.#http, socket));
  }

  #refusePlaintext(socket: net.Socket): void {
    this.#handshakeFailure(
      socket,
      "mtls_required",
      "plaintext HTTP on a strict mTLS port: the client must connect with https:// and a client certificate",
    );
    linger(socket);
    socket.end(
      rawErrorResponse(
        400,
        "Bad Request",
        "mtls_required",
        "this port requires mutual TLS: connect with https:// and a client certificate",
      ),
    );
  }

  readonly #onSecureConnection = (socket: tls.TLSSocket): void => {
    // TLS 1.2 lets a client ask for a new handshake at any time: a full handshake's CPU for a few bytes of its
    // own, and nothing this listener needs (TLS 1.3 has no renegotiation). An attempt now ends the connection.
    socket.disableRenegotiation();
    socket.on("error", (error: Error & { code?: string }) => {
      if (error.code !== RENEGOTIATION_REFUSED) return;
      this.#handshakeFailure(socket, "tls_protocol", RENEGOTIATION_DETAIL);
      socket.destroy();
    });
    const pending = pendingHandshake(socket);
    if (pending) {
      clearTimeout(pending.timer);
      // The handshake finished in the same turn its deadline fired: the connection is already being cut.
      if (pending.cut) {
        socket.destroy();
        return;
      }
    }
    this.#stats.connections++;
    if (socket.isSessionReused()) this.#stats.resumed++;
    const certificate = socket.getPeerX509Certificate();
    if (!certificate) {
      this.#refuse(socket, "no_client_cert", "peer sent no client certificate");
      return;
    }
    if (!socket.authorized) {
      const { reason, detail } = classifyVerifyError(String(socket.authorizationError));
      this.#refuse(socket, reason, detail);
      return;
    }
    const check = this.#peers.identify(certificate);
    if (!check.ok) {
      this.#refuse(socket, check.reason, check.detail, check.spiffeId);
      return;
    }
    const peer = check.peer;
    // On every connection, resumed ones too: a resumed session skips chain verification, not this check.
    const denied = this.#options.denyList.check(peer);
    if (denied.denied) {
      this.#refuse(socket, "revoked", denied.detail, peer.spiffeId);
      return;
    }
    const connection: InboundConnection = {
      peer,
      xfcc: formatXfccElement({
        by: [this.#options.store.current.spiffeId],
        hash: peer.sha256,
        subject: peer.subject,
        uris: peer.uris,
        dns: peer.dnsNames,
      }),
      plaintext: false,
    };
    (socket as InboundSocket)[kConnection] = connection;
    this.#verified.add(socket);
    socket.once("close", () => this.#verified.delete(socket));
    if (socket.alpnProtocol === "h2") this.#h2.emit("connection", socket);
    else this.#drain.adopt(new H1Connection(socket, this.#fastPath));
  };

  /**
   * HTTP/1.1 connections (ALPN http/1.1, or none) start on the fast path (src/proxy/h1-server.ts): plain requests
   * are read and answered on the TLS socket and go through the same pipeline as node:http's (#serve: the peer
   * found at handshake, path normalization, policy, XFCC, headers, logs, metrics). At the first head it does not
   * call plain, the connection is node:http's for good, and everything about it is decided as before.
   */
  readonly #fastPath: H1ConnectionOptions = listenerFastPath({
    limits: () => this.#options.limits,
    draining: () => this.#drain.draining,
    request: (down) => {
      this.#stats.fastPathRequests++;
      this.#serve(down, false);
    },
    http: () => this.#http,
    released: (connection) => this.#drain.release(connection),
    clientError: (error, socket) => this.#onClientError(error, socket),
  });

  #onRequest(req: http.IncomingMessage, res: http.ServerResponse, expectsContinue: boolean): void {
    if (!handedHeadRead(req.socket)) return;
    this.#drain.request(req, res);
    this.#serve(new H1Downstream(req, res), expectsContinue);
  }

  /** An HTTP/1.1 request, from node:http or the fast path: one pipeline for both. */
  #serve(down: H1Downstream | H1ServerDownstream, expectsContinue: boolean): void {
    const socket = down instanceof H1Downstream ? down.req.socket : down.socket;
    const tooMany = headerCountProblem(down.rawHeaders, this.#options.limits);
    if (tooMany) {
      sendError(down, 431, "bad_request", tooMany, true);
      this.#handler.refused(
        down.method,
        down.target,
        connectionOf(socket),
        "http/1.1",
        431,
        "bad_request",
        tooMany,
      );
      return;
    }
    this.#handler.handle(down, connectionOf(socket), expectsContinue);
  }

  readonly #onStream = (
    stream: http2.ServerHttp2Stream,
    headers: http2.IncomingHttpHeaders,
    _flags: number,
    rawHeaders: string[],
  ): void => {
    superviseStream(stream, this.#options.config.streamIdleTimeout, "inbound.streamIdleTimeout");
    const connection = connectionOf(stream.session?.socket);
    const method = headers[":method"] ?? "";
    const target = headers[":path"] ?? "";
    // RFC 9113 §8.1.1: a malformed request is a stream error, never forwarded; the connection's other streams
    // are untouched.
    const malformed = malformedH2Request(headers);
    if (malformed) {
      stream.close(NGHTTP2_PROTOCOL_ERROR);
      this.#handler.refused(
        method,
        target,
        connection,
        "h2",
        400,
        "bad_request",
        `malformed HTTP/2 request: ${malformed}`,
      );
      return;
    }
    const down = new H2Downstream(stream, headers, rawHeaders);
    if (method === "CONNECT") {
      sendError(down, 405, "method_not_allowed", CONNECT_REFUSED);
      this.#handler.refused(
        method,
        headers[":authority"] ?? "",
        connection,
        "h2",
        405,
        "method_not_allowed",
        CONNECT_REFUSED,
      );
      return;
    }
    unlessResetAtOnce(
      stream,
      () => this.#handler.handle(down, connection, headers.expect === "100-continue"),
      () =>
        this.#options.logger.debug(
          { method, path: target, protocol: "h2" },
          "stream reset before it was forwarded",
        ),
    );
  };

  readonly #onUpgrade = (req: http.IncomingMessage, socket: Duplex, head: Buffer): void => {
    if (!handedHeadRead(req.socket)) return;
    const connection = connectionOf(req.socket);
    const token = upgradeToken(req.rawHeaders)!;
    const protocol = upgradeProtocol(token);
    const tooMany = headerCountProblem(req.rawHeaders, this.#options.limits);
    if (tooMany) {
      socket.end(rawErrorResponse(431, "Request Header Fields Too Large", "bad_request", tooMany));
      this.#handler.refused(req.method!, req.url!, connection, protocol, 431, "bad_request", tooMany);
      return;
    }
    const message = upgradeRefusal(
      token,
      this.#options.config.upgrades,
      "inbound.upgrades",
      "speak HTTP/2 over TLS (ALPN h2) instead",
    );
    if (message) {
      socket.end(rawErrorResponse(400, "Bad Request", "upgrade_refused", message));
      this.#handler.refused(req.method!, req.url!, connection, protocol, 400, "upgrade_refused", message);
      return;
    }
    this.#handler.handleUpgrade(req, socket, head, connection, token);
  };

  readonly #onConnect = (req: http.IncomingMessage, socket: Duplex): void => {
    if (!handedHeadRead(req.socket)) return;
    socket.end(rawErrorResponse(405, "Method Not Allowed", "method_not_allowed", CONNECT_REFUSED));
    this.#handler.refused(
      req.method!,
      req.url!,
      connectionOf(req.socket),
      "http/1.1",
      405,
      "method_not_allowed",
      CONNECT_REFUSED,
    );
  };

  readonly #onTlsClientError = (error: Error & { code?: string }, socket: tls.TLSSocket): void => {
    // Cut by our handshake deadline, which has reported it already.
    if (pendingHandshake(socket)?.cut) return;
    if (error.code === "ECONNRESET") {
      this.#handshakeFailure(socket, "tls_protocol", "connection closed before the TLS handshake");
      return;
    }
    const { reason, detail } = classifyTlsError(error);
    this.#handshakeFailure(socket, reason, detail);
    // Node reports its own handshake timeout but leaves the connection open.
    if (error.code === "ERR_TLS_HANDSHAKE_TIMEOUT") socket.destroy();
  };

  readonly #onClientError = (error: Error & { code?: string }, socket: net.Socket): void => {
    // Reported and cut where the TLS socket raised it (see onSecureConnection): no HTTP answer is due.
    if (error.code === RENEGOTIATION_REFUSED) return;
    const answer = settleClientError(error, socket, this.#drain);
    if (!answer) return;
    const { status, statusText, reason, message } = answer;
    const connection = (socket as InboundSocket)[kConnection];
    this.#options.observer.request({
      direction: "inbound",
      source_identity: connection?.peer?.spiffeId ?? "unauthenticated",
      destination_identity: this.#options.store.current.spiffeId,
      method: "-",
      path: "-",
      protocol: "http/1.1",
      decision: "deny",
      reason,
      status,
      duration_ms: 0,
      error: error.code ?? error.message,
    });
    linger(socket);
    socket.end(rawErrorResponse(status, statusText, reason, message));
  };

  /**
   * Logs the refusal, then tells the peer why in an HTTP response (as nginx does) and closes. A peer that chose
   * HTTP/2 reads it as HTTP/2: its first stream is answered 403 (a gRPC client: PERMISSION_DENIED), then GOAWAY.
   */
  #refuse(socket: tls.TLSSocket, reason: HandshakeFailureReason, detail: string, spiffeId?: string): void {
    this.#handshakeFailure(socket, reason, detail, spiffeId);
    if (socket.alpnProtocol === "h2") {
      (socket as RefusedSocket)[kRefusal] = reason;
      socket.setTimeout(REFUSAL_LINGER_MS, () => socket.destroy());
      this.#refusals.emit("connection", socket);
      return;
    }
    linger(socket);
    // The peer learns the category, not our trust configuration; the full detail is in our log.
    socket.end(rawErrorResponse(403, "Forbidden", reason, refusalMessage(reason), [REFUSAL_MARK, reason]));
  }

  readonly #onRefusedStream = (
    stream: http2.ServerHttp2Stream,
    headers: http2.IncomingHttpHeaders,
    _flags: number,
    rawHeaders: string[],
  ): void => {
    stream.on("error", noop);
    const reason = (stream.session?.socket as RefusedSocket | undefined)?.[kRefusal] ?? "tls_protocol";
    sendError(new H2Downstream(stream, headers, rawHeaders), 403, reason, refusalMessage(reason), false, [
      REFUSAL_MARK,
      reason,
    ]);
    stream.session?.close();
  };

  #handshakeFailure(
    socket: net.Socket,
    reason: HandshakeFailureReason,
    detail: string,
    spiffeId?: string,
  ): void {
    this.#options.observer.handshakeFailure({
      direction: "inbound",
      reason,
      detail,
      // A TLS socket that failed early may no longer know its peer's address; its TCP socket noted it at accept.
      remote_address: pendingHandshake(socket)?.remoteAddress ?? socket.remoteAddress,
      ...(spiffeId ? { source_identity: spiffeId } : {}),
      destination_identity: this.#options.store.current.spiffeId,
    });
  }
}

function noop(): void {}

const kRefusal = Symbol("mtlsd.refusal");
type RefusedSocket = net.Socket & { [kRefusal]?: HandshakeFailureReason };

/** The peer learns the category, not our trust configuration; the full detail is in our log. */
function refusalMessage(reason: HandshakeFailureReason): string {
  return `client certificate refused (${reason})`;
}

const RENEGOTIATION_REFUSED = "ERR_TLS_RENEGOTIATION_DISABLED";
const RENEGOTIATION_DETAIL = "the client asked for a TLS renegotiation, which this listener refuses";
const CONNECT_REFUSED = "CONNECT is not served on the inbound listener: no tunnel bypasses the policy";
const NO_CONNECTION: InboundConnection = { peer: null, xfcc: null, plaintext: true };

/** What the handshake learnt about the connection a request arrived on. */
function connectionOf(socket: net.Socket | undefined): InboundConnection {
  return (socket as InboundSocket | undefined)?.[kConnection] ?? NO_CONNECTION;
}

/**
 * ALPN: HTTP/2 when the peer offers it, else HTTP/1.1. A client that offers neither (`curl --http1.0` offers only
 * `http/1.0`) gets one of its own protocols named and is served by the HTTP/1.1 server, which speaks 1.0 too;
 * refusing it with `no_application_protocol`, as a fixed ALPN list does, would lock out a working client.
 */
function selectProtocol({ protocols }: { protocols: string[] }): string | undefined {
  if (protocols.includes("h2")) return "h2";
  if (protocols.includes("http/1.1")) return "http/1.1";
  return protocols[0];
}

/** How the inbound reaches the app: `inbound.appProtocol` decides requests; upgrades always use HTTP/1.1. */
class InboundApp implements AppClient {
  readonly dispatcher: UpstreamDispatcher;
  readonly #origin: string;
  /** Requests over HTTP/1.1: mtlsd's own client (src/proxy/h1-client.ts). */
  readonly #h1: H1Client | undefined;
  /** Upgrades: undici, whose upgrade API serves them (loaded by the first one). */
  #http1: LazyPool | undefined;
  readonly #h2: H2Client | undefined;

  constructor(config: InboundConfig, limits: LimitsConfig) {
    this.#origin = config.app;
    if (config.appProtocol === "h2c") {
      const url = new URL(config.app);
      const port = Number(url.port || 80);
      const host = url.hostname.replace(/^\[(.*)\]$/, "$1");
      this.#h2 = new H2Client({
        scheme: "http",
        authority: url.host,
        connect: tcpConnector(host, port, limits.handshakeTimeout),
        // A session opens only when those open carry as many streams as the app allows.
        maxSessions: 16,
        idleTimeoutMs: limits.keepAliveTimeout,
        settingsTimeoutMs: limits.handshakeTimeout,
      });
      this.dispatcher = this.#h2;
    } else {
      this.#h1 = new H1Client({ origin: config.app });
      this.dispatcher = this.#h1;
    }
  }

  http1(): UpstreamDispatcher {
    this.#http1 ??= http1Pool(this.#origin);
    return this.#http1;
  }

  /** Every client connection is gone, so no forward is left: close without waiting on anything. */
  async close(): Promise<void> {
    await Promise.all([
      this.#h1?.close().catch(() => this.#h1?.destroy()),
      this.#http1?.close().catch(() => this.#http1?.destroy()),
      this.#h2?.close().catch(() => this.#h2?.destroy()),
    ]);
  }
}

function http1Pool(origin: string): LazyPool {
  return new LazyPool(
    (undici) =>
      new undici.Pool(origin, {
        connections: null,
        pipelining: 1,
        allowH2: false,
        // An app may answer `100 Continue` unasked (RFC 9110 §15.2): its final response is what the client gets.
        connect: toleratingContinue(undici.buildConnector({ allowH2: false })),
      }),
  );
}

/** What is known about an accepted TCP connection until its peer is verified. */
interface PendingHandshake {
  timer: NodeJS.Timeout;
  remoteAddress: string | undefined;
  /** The deadline fired: the connection was reported and cut, and the TLS layer's own error is noise. */
  cut: boolean;
}

const kHandshake = Symbol("mtlsd.handshake");
type AcceptedSocket = net.Socket & { [kHandshake]?: PendingHandshake };

/**
 * The handshake record of a TCP socket, or of the TCP socket under a TLS socket the tls.Server built on it
 * (Node keeps that one as `_parent`; the handshake deadline tests fail if it ever stops doing so).
 */
function pendingHandshake(socket: net.Socket): PendingHandshake | undefined {
  const own = (socket as AcceptedSocket)[kHandshake];
  if (own) return own;
  const parent = (socket as { _parent?: unknown })._parent;
  return parent instanceof net.Socket ? (parent as AcceptedSocket)[kHandshake] : undefined;
}

/** Reads and discards what the peer still sends, so our reply is not lost to a reset, then closes. */
function linger(socket: net.Socket): void {
  socket.on("data", noop);
  socket.resume();
  socket.setTimeout(REFUSAL_LINGER_MS, () => socket.destroy());
}

/**
 * Session ticket keys (48 bytes: name, HMAC and AES keys): random in a single process. Workers derive them from
 * the primary's secret and the trust in force (bundles and CRL), so all of them hold the same keys without
 * talking to each other, and the keys still change whenever trust does.
 */
function ticketKeysFor(secret: Buffer | undefined, credentials: Credentials): Buffer {
  if (!secret) return randomBytes(48);
  const crl = createHash("sha256")
    .update(credentials.crlPem ?? "")
    .digest("hex");
  return Buffer.from(hkdfSync("sha256", secret, credentials.bundleSha256, `mtlsd ticket keys ${crl}`, 48));
}
