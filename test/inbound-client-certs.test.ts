// Who gets past the inbound handshake: only a valid X509-SVID of our trust domain, and every refusal says why.
import { randomUUID } from "node:crypto";
import t from "tap";
import { startApp } from "./helpers/app.ts";
import { curlRequest, rawTlsRequest } from "./helpers/clients.ts";
import { createTestPki, type IdentityFiles } from "./helpers/pki.ts";
import { type LogLine, startSidecar, waitForLog } from "./helpers/sidecar.ts";

const HOUR = 3600_000;

type Test = Parameters<Parameters<typeof t.test>[0]>[0];

const pki = await createTestPki();
t.teardown(() => pki.cleanup());
const app = await startApp();
t.teardown(() => app.stop());
const orders = await pki.identity("orders");
const frontend = await pki.identity("frontend");
const inbound = {
  listen: "127.0.0.1:0",
  app: app.url,
  policy: { rules: [{ name: "frontend-calls-orders", action: "allow", from: [frontend.spiffeId] }] },
};
const sidecar = await startSidecar(pki, orders, { inbound });
t.teardown(() => sidecar.stop());

// Every identity presented in this file, so the log hygiene test can look for all of their keys.
const presented: IdentityFiles[] = [orders, frontend];

function requestLines(lines: readonly LogLine[], path: string): LogLine[] {
  return lines.filter((line) => line.msg === "request" && line.path === path);
}

/**
 * A request that the sidecar must forward, awaited until its log line is written. Handling is in order on
 * this one process, so once it is logged, anything a refused connection sent earlier would have been too.
 */
async function forwardedMarker(): Promise<void> {
  const path = `/marker/${randomUUID()}`;
  const result = await curlRequest(sidecar.inboundUrl + path, {
    cacert: pki.bundlePath,
    cert: frontend.certPath,
    key: frontend.keyPath,
  });
  if (result.response?.status !== 200) throw new Error(`marker request failed: ${result.stderr}`);
  await waitForLog(sidecar.logs, (line) => line.msg === "request" && line.path === path);
}

/**
 * Connects with `who` (or without a client certificate), sends a request to a path used nowhere else, and
 * checks the refusal from three sides: the 403 the peer reads, the one warn line in our log, and that no
 * request with that path reached the app.
 */
async function assertRefused(
  t: Test,
  who: IdentityFiles | null,
  reason: string,
  detail: RegExp = /./,
): Promise<LogLine> {
  const before = sidecar.logs.length;
  const path = `/refused/${reason}/${randomUUID()}`;
  const result = await curlRequest(sidecar.inboundUrl + path, {
    cacert: pki.bundlePath,
    ...(who ? { cert: who.certPath, key: who.keyPath } : {}),
  });
  t.equal(result.response?.status, 403, `the peer reads a 403 (curl: ${result.stderr.trim()})`);
  t.equal(result.response?.headers["x-mtlsd-reason"], reason, "x-mtlsd-reason names the reason");
  t.match(JSON.parse(result.response?.body ?? "{}"), { reason });
  t.notOk(result.response?.headers["x-app"], "the body is the sidecar's, not the app's");

  const failures = sidecar.logs.slice(before).filter((line) => line.msg === "handshake failed");
  t.equal(failures.length, 1, "one handshake failure is logged");
  const line = failures[0]!;
  t.match(line, { level: "warn", direction: "inbound", reason, destination_identity: orders.spiffeId });
  t.match(line.detail, detail, "the detail says what was wrong");

  await forwardedMarker();
  t.same(requestLines(sidecar.logs, path), [], "no request from the refused connection was forwarded");
  return line;
}

t.test("a valid frontend certificate gets 200 and the app sees the request", async (t) => {
  const path = `/v1/orders/${randomUUID()}`;
  const result = await curlRequest(sidecar.inboundUrl + path, {
    cacert: pki.bundlePath,
    cert: frontend.certPath,
    key: frontend.keyPath,
  });
  t.equal(result.code, 0, result.stderr);
  t.equal(result.response?.status, 200);
  t.equal(result.response?.headers["x-app"], "echo", "the response comes from the app");
  const echoed = JSON.parse(result.response!.body) as {
    method: string;
    url: string;
    headers: Record<string, string>;
  };
  t.equal(echoed.method, "GET");
  t.equal(echoed.url, path);
  t.match(echoed.headers["x-forwarded-client-cert"], `URI=${frontend.spiffeId}`);
  const line = await waitForLog(sidecar.logs, (l) => l.msg === "request" && l.path === path);
  t.match(line, { level: "info", decision: "allow", source_identity: frontend.spiffeId, status: 200 });
});

t.test("a client without a certificate is refused as no_client_cert", async (t) => {
  const line = await assertRefused(t, null, "no_client_cert");
  t.notOk(line.source_identity, "there is no identity to name");
});

t.test("a certificate from a CA the sidecar does not trust is refused as unknown_ca", async (t) => {
  // Same trust domain and the very SPIFFE ID policy allows: only the issuing CA is wrong.
  const stranger = await createTestPki();
  t.teardown(() => stranger.cleanup());
  const impostor = await stranger.identity("frontend");
  presented.push(impostor);
  await assertRefused(t, impostor, "unknown_ca", /trusted root/);
});

t.test("an expired certificate is refused as cert_expired", async (t) => {
  const expired = await pki.identity("expired", {
    spiffeId: frontend.spiffeId,
    notBefore: new Date(Date.now() - 2 * HOUR),
    notAfter: new Date(Date.now() - HOUR),
  });
  presented.push(expired);
  await assertRefused(t, expired, "cert_expired", /expired/);
});

t.test("a certificate whose notBefore is in the future is refused as cert_not_yet_valid", async (t) => {
  // What a peer with a clock running ahead would mint.
  const early = await pki.identity("early", {
    spiffeId: frontend.spiffeId,
    notBefore: new Date(Date.now() + HOUR),
    notAfter: new Date(Date.now() + 2 * HOUR),
  });
  presented.push(early);
  await assertRefused(t, early, "cert_not_yet_valid", /not yet valid/);
});

t.test("a certificate with two URI SANs is refused as bad_svid", async (t) => {
  const twoIds = await pki.identity("two-ids", {
    spiffeId: frontend.spiffeId,
    extraUris: ["spiffe://example.org/ns/admin/sa/admin"],
  });
  presented.push(twoIds);
  await assertRefused(t, twoIds, "bad_svid", /2 URI SANs/);
});

t.test("a leaf with CA:TRUE is refused as bad_svid", async (t) => {
  const caLeaf = await pki.identity("ca-leaf", { spiffeId: frontend.spiffeId, isCA: true });
  presented.push(caLeaf);
  await assertRefused(t, caLeaf, "bad_svid", /CA:TRUE/);
});

t.test(
  "a leaf whose extended key usage lacks clientAuth is refused as bad_svid (CVE-2022-21657)",
  async (t) => {
    const serverOnly = await pki.identity("server-only", {
      spiffeId: frontend.spiffeId,
      extKeyUsage: ["serverAuth"],
    });
    presented.push(serverOnly);
    // OpenSSL refuses it first (purpose sslclient); identity/svid.ts would refuse it too.
    await assertRefused(t, serverOnly, "bad_svid", /INVALID_PURPOSE|clientAuth/);
  },
);

t.test("a trusted leaf naming another trust domain is refused as wrong_trust_domain", async (t) => {
  const foreignId = "spiffe://other.org/ns/x/sa/x";
  const foreign = await pki.identity("foreign", { spiffeId: foreignId });
  t.equal(foreign.issued.cert.issuer, pki.intermediate.cert.subject, "issued by the CA the sidecar trusts");
  presented.push(foreign);
  const line = await assertRefused(t, foreign, "wrong_trust_domain", /other\.org/);
  t.equal(line.source_identity, foreignId, "the log names the identity that was claimed");
});

t.test("a client limited to TLS 1.2 is refused under the default minTLSVersion TLSv1.3", async (t) => {
  const before = sidecar.logs.length;
  const result = await rawTlsRequest({
    port: sidecar.inboundPort,
    ca: pki.bundlePem,
    cert: frontend.chainPem,
    key: frontend.keyPem,
    maxVersion: "TLSv1.2",
    send: "GET /v1/orders HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
  });
  t.equal(result.connected, false, "the handshake does not complete");
  t.equal(
    result.error?.code,
    "ERR_SSL_TLSV1_ALERT_PROTOCOL_VERSION",
    "the client is told why: protocol version",
  );
  const line = await waitForLog(
    sidecar.logs,
    (l) => l.msg === "handshake failed" && sidecar.logs.indexOf(l) >= before,
  );
  t.match(line, { level: "warn", reason: "tls_protocol", detail: /unsupported protocol/ });
  t.same(
    sidecar.logs.slice(before).filter((l) => l.msg === "request"),
    [],
    "nothing was forwarded",
  );
});

t.test("a TLS 1.2 client is accepted when the config sets minTLSVersion TLSv1.2", async (t) => {
  const legacy = await startSidecar(pki, orders, { inbound: { ...inbound, minTLSVersion: "TLSv1.2" } });
  t.teardown(() => legacy.stop());
  const result = await rawTlsRequest({
    port: legacy.inboundPort,
    ca: pki.bundlePem,
    cert: frontend.chainPem,
    key: frontend.keyPem,
    maxVersion: "TLSv1.2",
    send: "GET /v1/orders HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
  });
  t.equal(result.error, null);
  t.equal(result.protocol, "TLSv1.2");
  t.equal(result.response?.status, 200);
  t.equal(result.response?.headers["x-app"], "echo");
  t.match(JSON.parse(result.response!.body), { url: "/v1/orders" });
});

t.test("no log line carries PEM, a private key or a certificate", async (t) => {
  // The refusal tests above ran against this sidecar; add one accepted connection so both paths are covered.
  await forwardedMarker();
  const text = sidecar.logs.map((line) => JSON.stringify(line)).join("\n");
  t.ok(
    sidecar.logs.some((l) => l.msg === "handshake failed"),
    "the log holds refusals to check",
  );
  t.notMatch(text, "BEGIN", "no PEM armour");
  t.notMatch(text, "PRIVATE KEY");
  for (const identity of presented) {
    // Any full line of a PEM body is 48 bytes of DER: enough to spot a key or certificate dumped whole.
    const bodyLines = [identity.keyPem, identity.chainPem]
      .flatMap((pem) => pem.split("\n"))
      .filter((l) => /^[A-Za-z0-9+/=]{64}$/.test(l));
    t.same(
      bodyLines.filter((l) => text.includes(l)),
      [],
      `neither the key nor the certificates of ${identity.name}`,
    );
  }
});
