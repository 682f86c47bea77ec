// The outbound side proves the server is the SPIFFE ID the config names, and says why when it is not.
import { writeFile } from "node:fs/promises";
import type { AddressInfo } from "node:net";
import path from "node:path";
import tls from "node:tls";
import t from "tap";
import { stringify } from "yaml";
import { parseConfig } from "../src/config/index.ts";
import { issueLeaf } from "../src/pki/index.ts";
import { startApp } from "./helpers/app.ts";
import { startOpensslServer } from "./helpers/openssl-server.ts";
import {
  appRequest,
  echoed,
  inboundAddress,
  sidecarError,
  startCaller,
  startUpstream,
} from "./helpers/outbound.ts";
import { createTestPki } from "./helpers/pki.ts";
import { waitForLog } from "./helpers/sidecar.ts";

const HOUR = 3600_000;

const pki = await createTestPki();
t.teardown(() => pki.cleanup());
// A second CA in the same trust domain, which our sidecars do not trust.
const stranger = await createTestPki();
t.teardown(() => stranger.cleanup());
const app = await startApp();
t.teardown(() => app.stop());
const frontend = await pki.identity("frontend");
// Its certificate names a host nobody connects to: hostnames play no part in who the server is.
const orders = await pki.identity("orders", { dnsNames: ["not-this-host.example"] });
const payments = await pki.identity("payments");

const ordersSidecar = await startUpstream(pki, orders, app, [frontend.spiffeId]);
t.teardown(() => ordersSidecar.stop());
// Allows nobody: its policy answers every request with 403 policy_denied.
const paymentsSidecar = await startUpstream(pki, payments, app, ["spiffe://example.org/ns/nobody/sa/nobody"]);
t.teardown(() => paymentsSidecar.stop());
// The orders SPIFFE ID, issued by a CA we do not trust.
const strangerOrders = await stranger.identity("orders");
const strangerSidecar = await startUpstream(stranger, strangerOrders, app, [frontend.spiffeId]);
t.teardown(() => strangerSidecar.stop());

/** A bare TLS server (not mtlsd) on loopback; it answers any request with 200 "plain". */
async function tlsServer(options: tls.TlsOptions): Promise<string> {
  const server = tls.createServer(options, (socket) => {
    socket.on("error", () => {});
    socket.once("data", () =>
      socket.end("HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nplain"),
    );
  });
  server.on("tlsClientError", () => {});
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())));
  return `127.0.0.1:${(server.address() as AddressInfo).port}`;
}

/**
 * `openssl s_server` requiring a client certificate from the stranger CA. Unlike a Node TLS server, which
 * drops a refused client without a word, OpenSSL's own server sends the TLS alert (unknown_ca). `alpn`: the
 * protocol it selects.
 */
async function opensslServer(alpn?: string): Promise<string> {
  const server = await startOpensslServer({
    certPath: orders.certPath,
    keyPath: orders.keyPath,
    caPath: stranger.bundlePath,
    ...(alpn ? { alpn } : {}),
  });
  t.teardown(() => server.stop());
  return server.address;
}

const expiredOrders = await pki.identity("orders-expired", {
  spiffeId: orders.spiffeId,
  notBefore: new Date(Date.now() - 3 * HOUR),
  notAfter: new Date(Date.now() - HOUR),
});
// A certificate any browser would take for localhost, with no URI SAN at all.
const noUriOrders = await issueLeaf(pki.intermediate, { dnsNames: ["localhost"] });
const serving = (identity: { chainPem: string; keyPem: string }) => ({
  cert: identity.chainPem,
  key: identity.keyPem,
});

const caller = await startCaller(pki, frontend, {
  orders: { address: inboundAddress(ordersSidecar), identity: orders.spiffeId },
  // Each of these points at a server that is not the identity the config expects, or cannot prove it.
  "orders-at-payments": { address: inboundAddress(paymentsSidecar), identity: orders.spiffeId },
  "orders-at-localhost": { address: `localhost:${paymentsSidecar.inboundPort}`, identity: orders.spiffeId },
  "orders-canary": {
    address: inboundAddress(ordersSidecar),
    identity: "spiffe://example.org/ns/orders/sa/orders-canary",
  },
  payments: { address: inboundAddress(paymentsSidecar), identity: payments.spiffeId },
  "orders-stranger": { address: inboundAddress(strangerSidecar), identity: orders.spiffeId },
  "orders-expired": { address: await tlsServer(serving(expiredOrders)), identity: orders.spiffeId },
  "orders-no-uri": { address: await tlsServer(serving(noUriOrders)), identity: orders.spiffeId },
  "orders-tls12": {
    address: await tlsServer({ ...serving(orders), maxVersion: "TLSv1.2" }),
    identity: orders.spiffeId,
  },
  "orders-alerting": { address: await opensslServer(), identity: orders.spiffeId },
  "orders-alerting-h2": { address: await opensslServer("h2"), identity: orders.spiffeId, protocol: "h2" },
  // A Node TLS server that trusts only the stranger CA: it closes on our certificate without an alert.
  "orders-silent": {
    address: await tlsServer({
      ...serving(orders),
      ca: stranger.bundlePem,
      requestCert: true,
      rejectUnauthorized: true,
    }),
    identity: orders.spiffeId,
  },
});
t.teardown(() => caller.stop());

/** Sends GET /<name>/<path> as Host <upstream> through the caller; returns the response and the log lines. */
async function call(upstream: string, requestPath = `/${upstream}`) {
  const before = caller.logs.length;
  const result = await appRequest(`${caller.proxyUrl}${requestPath}`, { headers: [`Host: ${upstream}`] });
  const request = await waitForLog(
    caller.logs,
    (line) => line.msg === "request" && line.path === requestPath && caller.logs.indexOf(line) >= before,
  );
  const handshake = caller.logs
    .slice(before)
    .filter((line) => line.msg === "handshake failed" && line.upstream === upstream);
  return { result, request, handshake };
}

t.test("the configured SPIFFE ID is accepted whatever host name the address uses", async (t) => {
  const { result } = await call("orders");
  const echo = echoed(result);
  t.equal(echo.xfcc.By, orders.spiffeId, "the orders sidecar answered");
  t.equal(echo.xfcc.URI, frontend.spiffeId, "and it saw our client certificate");
});

t.test("a server presenting another SPIFFE ID gets 502 upstream_identity_mismatch", async (t) => {
  const paymentsBefore = paymentsSidecar.logs.filter((line) => line.msg === "request").length;
  const { result, request, handshake } = await call("orders-at-payments");
  const error = sidecarError(result);
  t.equal(error.status, 502);
  t.equal(error.header, "upstream_identity_mismatch");
  t.equal(error.reason, "upstream_identity_mismatch");
  t.match(error.error, `presented ${payments.spiffeId}, expected ${orders.spiffeId}`);
  t.match(request, {
    level: "warn",
    direction: "outbound",
    reason: "upstream_identity_mismatch",
    destination_identity: orders.spiffeId,
    status: 502,
  });
  t.equal(handshake.length, 1, "the refused connection is logged once");
  t.match(handshake[0], {
    level: "warn",
    direction: "outbound",
    reason: "upstream_identity_mismatch",
    destination_identity: orders.spiffeId,
    presented_identity: payments.spiffeId,
  });
  t.equal(
    paymentsSidecar.logs.filter((line) => line.msg === "request").length,
    paymentsBefore,
    "no request was sent to the wrong server",
  );
});

t.test("a server that failed the identity check fails it on every new connection", async (t) => {
  // Were a TLS session from the refused connection kept, the next connection would resume it unchecked.
  for (const attempt of [1, 2, 3]) {
    const { result } = await call("orders-at-payments", `/again-${attempt}`);
    t.equal(sidecarError(result).reason, "upstream_identity_mismatch", `attempt ${attempt}`);
  }
  t.notOk(caller.sidecar.upstreamStats()["orders-at-payments"]!.handshakes.resumed, "nothing resumed");
});

t.test("a DNS name that matches the address does not make a wrong SPIFFE ID right", async (t) => {
  // The payments certificate names localhost, the very host this upstream connects to.
  const { result } = await call("orders-at-localhost");
  t.equal(sidecarError(result).reason, "upstream_identity_mismatch");
});

t.test("identities compare exactly: a longer ID with the same prefix is a mismatch", async (t) => {
  const { result } = await call("orders-canary");
  const error = sidecarError(result);
  t.equal(error.reason, "upstream_identity_mismatch");
  t.match(
    error.error,
    `presented ${orders.spiffeId}, expected spiffe://example.org/ns/orders/sa/orders-canary`,
  );
});

t.test("a server certificate without a SPIFFE ID is an identity mismatch", async (t) => {
  const { result, handshake } = await call("orders-no-uri");
  const error = sidecarError(result);
  t.equal(error.reason, "upstream_identity_mismatch");
  t.match(error.error, "no valid SPIFFE ID");
  t.match(handshake[0], { reason: "bad_svid", direction: "outbound" });
});

t.test("a server certificate from a CA we do not trust gives upstream_tls_error unknown_ca", async (t) => {
  const { result, request, handshake } = await call("orders-stranger");
  const error = sidecarError(result);
  t.equal(error.status, 502);
  t.equal(error.header, "upstream_tls_error");
  t.match(error.error, "unknown_ca");
  t.match(request, { reason: "upstream_tls_error", status: 502 });
  t.match(handshake[0], {
    reason: "unknown_ca",
    direction: "outbound",
    destination_identity: orders.spiffeId,
  });
});

t.test("an expired server certificate gives upstream_tls_error cert_expired", async (t) => {
  const { result, handshake } = await call("orders-expired");
  const error = sidecarError(result);
  t.equal(error.status, 502);
  t.equal(error.reason, "upstream_tls_error");
  t.match(error.error, "cert_expired");
  t.match(handshake[0], { reason: "cert_expired" });
});

t.test("a server that offers only TLS 1.2 gives upstream_tls_error tls_protocol", async (t) => {
  const { result, handshake } = await call("orders-tls12");
  const error = sidecarError(result);
  t.equal(error.reason, "upstream_tls_error");
  t.match(error.error, "tls_protocol");
  t.match(handshake[0], { reason: "tls_protocol" });
});

t.test("a TLS server that rejects our certificate with an alert gives upstream_tls_error", async (t) => {
  const { result, handshake } = await call("orders-alerting");
  const error = sidecarError(result);
  t.equal(error.status, 502);
  t.equal(error.reason, "upstream_tls_error");
  t.match(error.error, 'unknown_ca: orders-alerting sent the TLS alert "unknown ca"');
  t.match(handshake[0], { reason: "unknown_ca", direction: "outbound" });
});

t.test(
  "an HTTP/2 server that refuses our certificate with an alert gives 502 after one connection",
  async (t) => {
    // The alert ends the session before the server's SETTINGS: the request fails with it, no connection is retried.
    const { result, handshake } = await call("orders-alerting-h2");
    const error = sidecarError(result);
    t.equal(error.status, 502);
    t.equal(error.reason, "upstream_tls_error");
    t.match(error.error, 'unknown_ca: orders-alerting-h2 sent the TLS alert "unknown ca"');
    t.equal(handshake.length, 1);
    await new Promise((resolve) => setTimeout(resolve, 200));
    t.same(caller.sidecar.upstreamStats()["orders-alerting-h2"]!.handshakes, { full: 1, resumed: 0 });
  },
);

t.test("a TLS server that drops our certificate without an alert gives 502, not a hang", async (t) => {
  const { result } = await call("orders-silent");
  const error = sidecarError(result);
  t.equal(error.status, 502);
  t.equal(error.reason, "upstream_unreachable", "nothing says why, so nothing more is claimed");
});

t.test(
  "an mtlsd upstream that refuses our certificate gives upstream_tls_error with its reason",
  async (t) => {
    // Our certificate comes from the stranger CA; we trust both CAs, the orders sidecar only its own.
    const bundlePath = path.join(pki.dir, "both-roots.pem");
    await writeFile(bundlePath, pki.bundlePem + stranger.bundlePem);
    const strangerFrontend = await stranger.identity("frontend");
    const refused = await startCaller({ ...pki, bundlePath }, strangerFrontend, {
      orders: { address: inboundAddress(ordersSidecar), identity: orders.spiffeId },
    });
    t.teardown(() => refused.stop());
    const result = await appRequest(`${refused.proxyUrl}/refused`, { headers: ["Host: orders"] });
    const error = sidecarError(result);
    t.equal(error.status, 502);
    t.equal(error.header, "upstream_tls_error");
    t.match(error.error, "orders refused our certificate: unknown_ca");
    const request = await waitForLog(
      refused.logs,
      (line) => line.msg === "request" && line.path === "/refused",
    );
    t.match(request, { level: "warn", reason: "upstream_tls_error", status: 502 });
    const handshake = await waitForLog(refused.logs, (line) => line.msg === "handshake failed");
    t.match(handshake, { direction: "outbound", reason: "unknown_ca", upstream: "orders" });
  },
);

t.test("the upstream's own 403 policy_denied reaches the app unchanged", async (t) => {
  const { result, handshake } = await call("payments");
  const error = sidecarError(result);
  t.equal(error.status, 403);
  t.equal(error.reason, "policy_denied", "the decision is the upstream's, passed through");
  t.equal(handshake.length, 0, "a policy denial is not a handshake failure");
});

t.test("outbound handshake failures are counted by direction and reason", async (t) => {
  const count = async (reason: string) => {
    const text = await caller.sidecar.metrics.metrics();
    const line = new RegExp(
      `^mtlsd_handshake_failures_total\\{direction="outbound",reason="${reason}"\\} (\\d+)$`,
      "m",
    );
    return Number(line.exec(text)?.[1] ?? 0);
  };
  const [unknownCa, mismatch] = [await count("unknown_ca"), await count("upstream_identity_mismatch")];
  await call("orders-stranger", "/counted-1");
  await call("orders-at-payments", "/counted-2");
  t.equal(await count("unknown_ca"), unknownCa + 1);
  t.equal(await count("upstream_identity_mismatch"), mismatch + 1);
});

t.test("an upstream identity outside our trust domain is a config error naming the field", async (t) => {
  const config = stringify({
    identity: { cert: "tls.crt", key: "tls.key", trustBundle: "ca.crt", trustDomain: "example.org" },
    outbound: { upstreams: { partner: { address: "partner:15006", identity: "spiffe://partner.org/api" } } },
  });
  t.throws(() => parseConfig(config, "/etc/mtlsd/mtlsd.yaml"), {
    code: "CONFIG_INVALID",
    message:
      /outbound\.upstreams\.partner\.identity \(line \d+\): expected a SPIFFE ID in identity\.trustDomain/,
  });
});
