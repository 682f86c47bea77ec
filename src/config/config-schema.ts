// The mtlsd configuration: every key, its type, its default and its documentation, in one place.
import { isIP } from "node:net";
import { availableParallelism } from "node:os";
import { isValidTrustDomain, parseSpiffeId } from "../identity/spiffe-id.ts";
import { pathPatternProblem } from "./path-pattern.ts";
import { type Infer, s } from "./schema.ts";

/** A SPIFFE ID (`spiffe://trust.domain/path`), checked against the SPIFFE-ID standard. */
export const spiffeId = () =>
  s.string({
    expected: "a SPIFFE ID like spiffe://example.org/ns/orders/sa/orders",
    check: (value) => {
      const parsed = parseSpiffeId(value);
      return parsed.ok ? undefined : parsed.reason;
    },
  });

/** A source pattern in policy rules: an exact SPIFFE ID, `prefix*`, `*suffix` or `*`. */
const spiffeIdPattern = () =>
  s.string({
    expected: 'a SPIFFE ID or a pattern: exact, "prefix*", "*suffix" or "*"',
    check: (value) => {
      if (value === "*") return undefined;
      const star = value.indexOf("*");
      if (star === -1) {
        const parsed = parseSpiffeId(value);
        return parsed.ok ? undefined : parsed.reason;
      }
      if (value.indexOf("*", star + 1) !== -1 || (star !== 0 && star !== value.length - 1)) {
        return "a * may only stand at the start or the end";
      }
      if (star !== 0 && !value.startsWith("spiffe://")) return 'a prefix pattern must start with "spiffe://"';
      return undefined;
    },
  });

/** A path pattern: exact, `prefix*`, `*suffix`, `*`, or an Istio template with `{*}` / `{**}` segments. */
const pathPattern = () =>
  s.string({
    expected:
      'a path pattern: exact "/v1/orders", "/v1/*", "*.json", "*", or a template "/v1/{*}/items/{**}"',
    check: pathPatternProblem,
  });

const httpMethod = () =>
  s.string({ expected: "an HTTP method in upper case, like GET", pattern: /^[A-Z]+$/ });

/** `host:port` to listen on; port 0 picks a free port (useful in tests). */
export const listenAddress = () =>
  s.string({
    expected: "host:port, like 127.0.0.1:15000 or [::1]:15000",
    check: (value) => (parseHostPort(value) ? undefined : "not host:port with a port from 0 to 65535"),
  });

export function parseHostPort(value: string): { host: string; port: number } | undefined {
  const match = /^(\[[0-9a-fA-F:.]+\]|[a-zA-Z0-9.-]+):(\d{1,5})$/.exec(value);
  if (!match) return undefined;
  const port = Number(match[2]);
  if (port > 65535) return undefined;
  const host = match[1]!.startsWith("[") ? match[1]!.slice(1, -1) : match[1]!;
  return { host, port };
}

const appUrl = () =>
  s.string({
    expected: "an http:// URL of the app's origin, like http://127.0.0.1:8080",
    check: (value) => {
      let url: URL;
      try {
        url = new URL(value);
      } catch {
        return "not a URL";
      }
      if (url.protocol !== "http:") return "only http:// is supported: mtlsd forwards plain HTTP to the app";
      if (url.pathname !== "/" || url.search || url.hash || url.username || url.password) {
        return "give only scheme, host and port";
      }
      return undefined;
    },
  });

/** An HTTP/1.1 Upgrade token mtlsd may pass on after policy; h2c never (a tunnel past per-request policy). */
const upgradeTokens = () =>
  s
    .array(
      s.string({
        expected: "an Upgrade token in lower case, like websocket",
        pattern: /^[a-z0-9!#$%&'*+.^_`|~-]+$/,
        check: (value) =>
          value === "h2c"
            ? "h2c is never honored: an h2c upgrade would open a tunnel past per-request policy (use HTTP/2 over TLS)"
            : undefined,
      }),
    )
    .default(["websocket"]);

/** A request header name to remove (lowercase, as HTTP/2 writes them), with an optional trailing `*` for a prefix. */
const headerNamePattern = () =>
  s.string({
    expected:
      'a header name in lower case, like x-forwarded-user, or a prefix ending in *, like "x-ssl-client-*"',
    pattern: /^[a-z0-9!#$%&'+.^_`|~-]+\*?$/,
  });

/** How long a long-lived stream (gRPC, SSE, WebSocket) may stay silent both ways. */
const streamIdleTimeout = () =>
  s
    .duration(1000)
    .default(300_000)
    .describe(
      "A stream (gRPC, server-sent events, an upgraded WebSocket) with no byte either way for this long is closed. An idle limit, not a total: streams may live for hours.",
    );

/** An upstream sidecar's mTLS listener: `host:port`, the host an IP address or a DNS name. */
const upstreamAddress = () =>
  s.string({
    expected: "host:port of an upstream sidecar's mTLS listener, like orders.internal:15006",
    check: (value) => (parseHostPort(value) ? undefined : "not host:port"),
  });

const file = (what: string) => s.string({ expected: `the path of ${what}`, minLength: 1 });

/** A Workload API endpoint, as SPIFFE_Workload_Endpoint.md spells it: `unix:///path` or `tcp://IP:port`. */
export type WorkloadApiSocket =
  | { kind: "unix"; path: string }
  | { kind: "tcp"; host: string; port: number }
  | { error: string };

export function parseWorkloadApiSocket(value: string): WorkloadApiSocket {
  if (value.startsWith("unix:")) {
    // unix:///run/spire/agent.sock (empty authority) or unix:/run/spire/agent.sock; never a host or a query.
    const rest = value.slice("unix:".length);
    const path = rest.startsWith("//") ? rest.slice(2) : rest;
    if (!path.startsWith("/"))
      return { error: "a unix socket needs an absolute path, like unix:///run/spire/sockets/agent.sock" };
    if (/[?#]/.test(path)) return { error: "a unix socket URI has no query or fragment" };
    return { kind: "unix", path };
  }
  if (value.startsWith("tcp://")) {
    const hostPort = parseHostPort(value.slice("tcp://".length));
    // The spec allows an IP address only: a name would be resolved through DNS, which an attacker may answer.
    if (!hostPort || hostPort.port === 0 || !isIP(hostPort.host)) {
      return { error: "a tcp endpoint is tcp://IP:port, with an IP address (no name) and a port" };
    }
    return { kind: "tcp", host: hostPort.host, port: hostPort.port };
  }
  return { error: 'the scheme must be "unix:" or "tcp:"' };
}

const workloadApiSocket = () =>
  s.string({
    expected: "a Workload API endpoint: unix:///path/to/agent.sock or tcp://IP:port",
    check: (value) => {
      const parsed = parseWorkloadApiSocket(value);
      return "error" in parsed ? parsed.error : undefined;
    },
  });

const trustDomainName = () =>
  s.string({
    expected: "a SPIFFE trust domain like example.org (lowercase letters, digits, . _ -)",
    check: (value) => (isValidTrustDomain(value) ? undefined : "not a valid trust domain"),
  });

const policyTo = s.object({
  methods: s.array(httpMethod(), 1).optional().describe("Methods to match; absent = every method."),
  paths: s
    .array(pathPattern(), 1)
    .optional()
    .describe("Normalized paths to match (the query is ignored); absent = every path."),
});

const policyRule = s.object({
  name: s
    .string({
      expected: "a rule name (letters, digits, . _ -)",
      pattern: /^[A-Za-z0-9][A-Za-z0-9._-]*$/,
    })
    .describe("Names the rule in decisions, logs and metrics."),
  action: s.enum("allow", "deny").describe("allow or deny; a matching deny always wins."),
  from: s
    .array(spiffeIdPattern(), 1)
    .optional()
    .describe(
      'Peer SPIFFE IDs: exact, "prefix*", "*suffix", "*" (any authenticated peer); absent = any source.',
    ),
  to: s.array(policyTo, 1).optional().describe("Operations; absent = every request."),
  dryRun: s.boolean().default(false).describe("Evaluate and log a shadow decision, never enforce."),
});

const policyOverride = s.object({
  from: s
    .array(spiffeIdPattern(), 1)
    .describe('Who the exception is for: SPIFFE IDs, "prefix*", "*suffix" or "*"; required.'),
  to: s.array(policyTo, 1).optional().describe("Operations it allows; absent = every request."),
  reason: s
    .string({ expected: "why the exception exists, like an incident ticket", minLength: 1 })
    .describe("Logged with every request the override allows."),
  approvedBy: s
    .string({ expected: "who approved the exception, like alice@example.org", minLength: 1 })
    .describe("Logged with every request the override allows."),
  expires: s
    .timestamp()
    .describe(
      "Required; at most overridesMaxLifetime ahead. Once passed, the override is ignored (and logged once).",
    ),
});

const policy = s.object({
  default: s.enum("deny", "allow").default("deny").describe("Decision when no rule matches."),
  rules: s
    .array(policyRule)
    .default([])
    .describe("Evaluated together: a matching deny wins, else a matching allow allows, else the default."),
  overrides: s
    .array(policyOverride)
    .default([])
    .describe(
      "Break-glass allows for an outage: time-boxed, each use logged at warn with the approver. A deny rule still wins.",
    ),
  overridesMaxLifetime: s
    .duration(60_000, 30 * 86_400_000)
    .default(86_400_000)
    .describe("A config whose override expires further ahead than this is refused."),
});

/** A certificate serial number in hex, with or without colons, as `openssl x509 -serial` or browsers print it. */
const certificateSerial = () =>
  s.string({
    expected: "a certificate serial number in hex, like 5c1867faaa7baa80 or 5C:18:67:FA:AA:7B:AA:80",
    pattern: /^(?:[0-9a-fA-F]+|[0-9a-fA-F]{1,2}(?::[0-9a-fA-F]{1,2})*)$/,
  });

export const configSchema = s.object({
  identity: s
    .object({
      cert: file("this workload's certificate: PEM leaf, then intermediates")
        .optional()
        .describe(
          "This workload's X509-SVID: the leaf first, then its intermediates; reloaded when it changes. Or use workloadApi.",
        ),
      key: file("the private key of the certificate (PKCS#8, SEC1 or PKCS#1 PEM)")
        .optional()
        .describe("The certificate's private key, unencrypted; reloaded with it. Or use workloadApi."),
      trustBundle: file("the trusted root certificates (PEM, several allowed during a CA rotation)")
        .optional()
        .describe(
          "Our trust domain's root certificates (PEM, several during a CA rotation); or use workloadApi.",
        ),
      workloadApi: s
        .object({
          socket: workloadApiSocket()
            .optional()
            .describe(
              "The Workload API endpoint (the SPIRE agent's socket); default: $SPIFFE_ENDPOINT_SOCKET.",
            ),
          spiffeId: spiffeId()
            .optional()
            .describe("Which X509-SVID to use when the Workload API offers several; default: the first."),
          startupTimeout: s
            .duration(100, 3_600_000)
            .default(60_000)
            .describe("How long to wait for the first X509-SVID at startup; /readyz answers 503 meanwhile."),
        })
        .optional()
        .describe(
          "Take the identity from the SPIFFE Workload API (a SPIRE agent) instead of cert/key/trustBundle: rotations are streamed, each validated before use.",
        ),
      federation: s
        .array(
          s.object({
            trustDomain: trustDomainName().describe("A foreign trust domain whose peers we accept or call."),
            trustBundle: file("the trust domain's root certificates (PEM or DER)")
              .optional()
              .describe(
                "Its root certificates (PEM or DER), reloaded like our own; omit to take them from the Workload API's federated bundles.",
              ),
          }),
        )
        .default([])
        .describe(
          "Other trust domains: a peer with a SPIFFE ID in one of them is verified against that domain's bundle only.",
        ),
      crl: file("certificate revocation lists (PEM X509 CRL blocks, one per CA)")
        .optional()
        .describe(
          "PEM CRLs, checked for every certificate in a peer's chain: one from each CA, the root's too (it may be empty); each signed by a CA in the trust bundle (or an intermediate in cert) and current. Reloaded like the rest.",
        ),
      deny: s
        .object({
          serials: s
            .array(certificateSerial())
            .default([])
            .describe("Certificate serial numbers to refuse, from any issuer."),
          spiffeIds: s
            .array(spiffeId())
            .default([])
            .describe("SPIFFE IDs to refuse, whatever certificate they hold."),
        })
        .default({ serials: [], spiffeIds: [] })
        .describe("Emergency revocation without a CRL: matching peers and upstreams are refused as revoked."),
      trustDomain: trustDomainName().describe(
        "This workload's trust domain; peers must be in it, or in a federated one.",
      ),
      reload: s
        .object({
          watch: s
            .boolean()
            .default(true)
            .describe(
              "Watch the directories holding these files (Kubernetes secret volumes, in-place rewrites); SIGHUP always reloads.",
            ),
          interval: s
            .duration(100, 86_400_000)
            .default(30_000)
            .describe(
              "Polling backstop: the files and the config file are re-read (and the certificate's expiry checked) this often.",
            ),
        })
        .default({ watch: true, interval: 30_000 })
        .describe("How rotated credentials are picked up; each version is validated before it is used."),
    })
    .requireOneOf(["cert", "key", "trustBundle"], ["workloadApi"])
    .describe(
      "This workload's credentials. Relative paths are resolved against the config file's directory.",
    ),
  inbound: s
    .object({
      listen: listenAddress().default("0.0.0.0:15006").describe("Where peers connect with mTLS."),
      app: appUrl()
        .default("http://127.0.0.1:8080")
        .describe("Where allowed requests are forwarded, as plain HTTP."),
      appTimeout: s
        .duration()
        .default(30_000)
        .describe("No response head from the app within this time: 504 upstream_timeout."),
      mode: s
        .enum("strict", "permissive")
        .default("strict")
        .describe(
          "strict: mTLS only, plaintext gets 400. permissive: plaintext too on the same port, as unauthenticated.",
        ),
      minTLSVersion: s
        .enum("TLSv1.3", "TLSv1.2")
        .default("TLSv1.3")
        .describe("The oldest TLS version a peer may use; TLSv1.2 only for legacy peers."),
      xfcc: s
        .enum("sanitize_set", "append_forward", "sanitize", "forward_only")
        .default("sanitize_set")
        .describe("How X-Forwarded-Client-Cert is set for the app (Envoy's modes)."),
      appProtocol: s
        .enum("http1", "h2c")
        .default("http1")
        .describe(
          "How mtlsd speaks to the app: http1 (HTTP/1.1; HTTP/2 requests are translated), or h2c (HTTP/2 with prior knowledge: gRPC apps).",
        ),
      upgrades: upgradeTokens().describe(
        "HTTP/1.1 Upgrade tokens passed to the app after policy (WebSocket); [] = none. Other tokens are ignored, h2c is refused.",
      ),
      streamIdleTimeout: streamIdleTimeout(),
      headersWithUnderscores: s
        .enum("drop", "reject", "allow")
        .default("drop")
        .describe(
          "Request headers with an underscore in their name (CGI-style apps read X_Forwarded_Client_Cert as X-Forwarded-Client-Cert): drop them, reject the request (400), or allow them. Look-alikes of headers mtlsd sets or removes are dropped even with allow.",
        ),
      removeRequestHeaders: s
        .array(headerNamePattern())
        .default([])
        .describe(
          "Further request headers removed before the app, like l5d-client-id or x-ssl-client-*; a trailing * matches a prefix. X-Original-URL, X-Rewrite-URL, X-HTTP-Method-Override, X-HTTP-Method and X-Method-Override are always removed.",
        ),
      policy: policy
        .default({ default: "deny", rules: [], overrides: [], overridesMaxLifetime: 86_400_000 })
        .describe("Which peer identities may make which requests; reloaded when the config file changes."),
    })
    .optional()
    .describe("Accept mTLS from peers, authorize, forward to the app."),
  outbound: s
    .object({
      listen: listenAddress()
        .default("127.0.0.1:15001")
        .describe("Where the app sends plain HTTP: as HTTP_PROXY, or with the upstream's name as Host."),
      upstreams: s
        .record(
          s
            .object({
              address: upstreamAddress()
                .optional()
                .describe(
                  "Where the upstream's sidecar listens for mTLS. A DNS name stands for every A/AAAA record it resolves to, each an endpoint, re-resolved every resolveInterval. Or use endpoints.",
                ),
              endpoints: s
                .array(upstreamAddress(), 1)
                .optional()
                .describe(
                  "Instead of address: the instances' sidecars, host:port each (a DNS name among them stands for all its records). Each endpoint has its own pool.",
                ),
              resolveInterval: s
                .duration(100, 86_400_000)
                .default(30_000)
                .describe(
                  "DNS names in address or endpoints are resolved again this often; endpoints that went away finish their requests in flight first.",
                ),
              balance: s
                .enum("least_request", "round_robin")
                .default("least_request")
                .describe(
                  "How a request picks an endpoint: least_request (of two picked at random, the one with fewer requests in flight) or round_robin.",
                ),
              outlier: s
                .object({
                  consecutiveFailures: s
                    .integer(1, 1000)
                    .default(5)
                    .describe(
                      "An endpoint is ejected after this many 5xx answers or resets in a row; a refused connection, a failed handshake or a wrong identity ejects it at once.",
                    ),
                  ejectFor: s
                    .duration(100, 86_400_000)
                    .default(30_000)
                    .describe("How long a first ejection lasts; each further one in a row doubles it."),
                  maxEjectFor: s
                    .duration(100, 86_400_000)
                    .default(300_000)
                    .describe("The longest an ejection lasts, however often the endpoint failed."),
                })
                .default({ consecutiveFailures: 5, ejectFor: 30_000, maxEjectFor: 300_000 })
                .describe(
                  "Ejection of failing endpoints: an ejected endpoint gets no requests until its time is up, unless every endpoint is ejected.",
                ),
              retries: s
                .integer(0, 5)
                .default(0)
                .describe(
                  "Extra tries, on another endpoint, for idempotent requests without a body that may have reached the upstream. A request that never reached it is always tried once more elsewhere.",
                ),
              identity: spiffeId().describe("The SPIFFE ID the upstream must present, exactly."),
              listen: listenAddress()
                .optional()
                .describe(
                  "A local port of its own, for apps that can set neither a proxy nor a Host header.",
                ),
              timeout: s
                .duration()
                .default(30_000)
                .describe(
                  "No response head within this time: 504 upstream_timeout (gRPC calls: their own deadline).",
                ),
              protocol: s
                .enum("auto", "http1", "h2")
                .default("auto")
                .describe(
                  "Between the sidecars: auto keeps each request in the app's protocol (HTTP/1.1 requests on HTTP/1.1 connections, h2 and gRPC on HTTP/2 when the upstream offers it, each falling back to the other when the upstream speaks only that); http1 or h2 insist. Upgrades (WebSocket) always use HTTP/1.1.",
                ),
              pool: s
                .object({
                  connections: s
                    .integer(1, 1024)
                    .default(16)
                    .describe(
                      "Keep-alive connections per endpoint at most (HTTP/2: sessions, each carrying as many streams as the upstream allows).",
                    ),
                })
                .default({ connections: 16 })
                .describe("The keep-alive pool of mTLS connections to each endpoint of this upstream."),
            })
            .requireOneOf(["address"], ["endpoints"]),
          /^[a-z0-9]([a-z0-9-]*[a-z0-9])?$/,
          "an upstream name: lowercase letters, digits and -, as in a DNS label (apps may use it as Host)",
          1,
        )
        .describe("The services the app may call; anything else gets 502 unknown_upstream."),
      upgrades: upgradeTokens().describe(
        "HTTP/1.1 Upgrade tokens carried to upstreams (WebSocket); [] = none. Other tokens are ignored, h2c is refused.",
      ),
      streamIdleTimeout: streamIdleTimeout(),
    })
    .optional()
    .describe("Carry the app's plain HTTP to upstream sidecars over mTLS, on pooled connections."),
  limits: s
    .object({
      maxConnections: s
        .integer(1, 1_000_000)
        .default(10_000)
        .describe("Open client connections per listener."),
      maxHeaderSize: s
        .byteSize(1024, 1024 * 1024)
        .default(16 * 1024)
        .describe(
          "HTTP/1.1: the bytes of the request-target, the header names and the header values as sent (trailing spaces included; not the method, version, colons, spaces after them or line ends); a request whose count reaches it gets 431. HTTP/2: the header list size SETTINGS_MAX_HEADER_LIST_SIZE counts (name + value + 32 per field, pseudo-headers included); a stream over it is reset.",
        ),
      maxHeaderCount: s
        .integer(1, 10_000)
        .default(100)
        .describe(
          "Header fields in a request (HTTP/2: not counting pseudo-headers); a request with more gets 431 (HTTP/2: the stream is reset).",
        ),
      handshakeTimeout: s
        .duration()
        .default(10_000)
        .describe("A TLS handshake must finish within this time."),
      headersTimeout: s
        .duration()
        .default(10_000)
        .describe("A request's headers must arrive within this time."),
      requestTimeout: s.duration().default(300_000).describe("A whole request must arrive within this time."),
      keepAliveTimeout: s
        .duration()
        .default(60_000)
        .describe("Idle connections are closed after this: client connections and pooled upstream ones."),
      maxConcurrentStreams: s
        .integer(1, 10_000)
        .default(100)
        .describe(
          "HTTP/2 streams a client may have open on one connection; more are refused (REFUSED_STREAM).",
        ),
      drainTimeout: s
        .duration(0)
        .default(30_000)
        .describe(
          "On SIGTERM/SIGINT, in-flight requests get this long to finish before their connections are cut.",
        ),
    })
    .describe("Bounds on every listener (inbound, outbound, per-upstream ports, admin).")
    .default({
      maxConnections: 10_000,
      maxHeaderSize: 16 * 1024,
      maxHeaderCount: 100,
      handshakeTimeout: 10_000,
      headersTimeout: 10_000,
      requestTimeout: 300_000,
      keepAliveTimeout: 60_000,
      maxConcurrentStreams: 100,
      drainTimeout: 30_000,
    }),
  admin: s
    .object({
      listen: listenAddress()
        .default("127.0.0.1:15000")
        .describe("host:port of /healthz, /readyz, /metrics and /status; keep it on loopback."),
    })
    .default({ listen: "127.0.0.1:15000" })
    .describe("The admin HTTP listener (plain HTTP, no authentication)."),
  metrics: s
    .object({
      maxIdentityLabels: s
        .integer(1, 100_000)
        .default(100)
        .describe(
          "Distinct peer identities, and distinct upstream endpoint addresses, kept as metric labels; later ones are counted as `other`.",
        ),
    })
    .default({ maxIdentityLabels: 100 })
    .describe("Prometheus metrics, served on the admin listener."),
  workers: s
    .integerOrAuto(1, 256, availableParallelism)
    .default(1)
    .describe(
      "Event loops (processes) serving the same listeners: a number, or auto for one per available core. 1 runs everything in one process; more runs a primary that supervises that many workers (Node's cluster module).",
    ),
  log: s
    .object({
      level: s
        .enum("trace", "debug", "info", "warn", "error", "fatal", "silent")
        .default("info")
        .describe("Allowed requests log at info, denials and failures at warn."),
    })
    .default({ level: "info" })
    .describe("pino JSON lines on stdout."),
});

export type Config = Infer<typeof configSchema>;
export type IdentityConfig = Config["identity"];
export type DenyConfig = IdentityConfig["deny"];
export type WorkloadApiConfig = NonNullable<IdentityConfig["workloadApi"]>;
export type FederationConfig = IdentityConfig["federation"];
export type InboundConfig = NonNullable<Config["inbound"]>;
export type LimitsConfig = Config["limits"];
export type OutboundConfig = NonNullable<Config["outbound"]>;
export type UpstreamConfig = OutboundConfig["upstreams"][string];
export type AdminConfig = Config["admin"];
