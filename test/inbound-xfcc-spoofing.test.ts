// A peer cannot forge the identity headers the app trusts: the XFCC and X-Forwarded-Proto it gets, per mode.
import { createHash, X509Certificate } from "node:crypto";
import t from "tap";
import { startApp } from "./helpers/app.ts";
import { createTestPki } from "./helpers/pki.ts";
import { type ClientTls, exchange, rawGet, startWiretap } from "./helpers/raw-http.ts";
import { type RunningSidecar, startSidecar } from "./helpers/sidecar.ts";

const pki = await createTestPki();
t.teardown(() => pki.cleanup());
const app = await startApp();
t.teardown(() => app.stop());
// The sidecars reach the app through a byte recorder, to see what went on the wire beyond the echoed headers.
const wire = await startWiretap(app.port);
t.teardown(() => wire.close());

const orders = await pki.identity("orders");
const frontend = await pki.identity("frontend", {
  organization: "acme",
  dnsNames: ["frontend.example.org", "localhost"],
});
const client: ClientTls = { ca: pki.bundlePem, cert: frontend.chainPem, key: frontend.keyPem };

async function sidecarInMode(xfcc: string): Promise<RunningSidecar> {
  const running = await startSidecar(pki, orders, {
    inbound: {
      listen: "127.0.0.1:0",
      app: wire.url,
      xfcc,
      policy: { rules: [{ name: "frontend", action: "allow", from: [frontend.spiffeId] }] },
    },
  });
  t.teardown(() => running.stop());
  return running;
}

const sanitizeSet = await sidecarInMode("sanitize_set");
const appendForward = await sidecarInMode("append_forward");
const sanitize = await sidecarInMode("sanitize");
const forwardOnly = await sidecarInMode("forward_only");

// Our element, written out from the certificate itself (sha256 of the DER leaf; subject as `openssl x509
// -nameopt RFC2253` prints it), not from the code under test.
const leafSha256 = createHash("sha256")
  .update(new X509Certificate(frontend.issued.certPem).raw)
  .digest("hex");
const OURS =
  `By=${orders.spiffeId};Hash=${leafSha256};Subject="CN=frontend,O=acme";` +
  `URI=${frontend.spiffeId};DNS=frontend.example.org;DNS=localhost`;

// What an attacker (or an upstream hop, for the forwarding modes) sends: well-formed, and claiming to be ops.
const FORGED = "By=spiffe://example.org/ns/orders/sa/orders;URI=spiffe://example.org/ns/ops/sa/admin";
const FORGED_2 = "By=spiffe://example.org/ns/edge/sa/edge;URI=spiffe://example.org/ns/ops/sa/root";

interface Echo {
  url: string;
  headers: Record<string, string | string[] | undefined>;
  rawHeaders: string[];
}

/** Every value of a header the app received, in order, read from its raw header list. */
function received(echo: Echo, name: string): string[] {
  const values: string[] = [];
  for (let i = 0; i < echo.rawHeaders.length; i += 2) {
    if (echo.rawHeaders[i]!.toLowerCase() === name) values.push(echo.rawHeaders[i + 1]!);
  }
  return values;
}

/** Sends a GET with extra raw header lines and returns what the echo app saw. */
async function echoOf(running: RunningSidecar, extraHeaders: string): Promise<Echo> {
  const result = await exchange(running.inboundPort, client, rawGet("/xfcc", extraHeaders));
  const response = result.responses[0];
  if (response?.status !== 200)
    throw new Error(`expected 200 from the app, got ${JSON.stringify(result.raw)}`);
  return JSON.parse(response.body) as Echo;
}

t.test("sanitize_set: without a forged header the app gets exactly our element", async (t) => {
  const echo = await echoOf(sanitizeSet, "");
  t.same(received(echo, "x-forwarded-client-cert"), [OURS]);
});

t.test("CVE-2023-27487: sanitize_set replaces a forged XFCC with ours", async (t) => {
  const echo = await echoOf(sanitizeSet, `X-Forwarded-Client-Cert: ${FORGED}\r\n`);
  t.same(received(echo, "x-forwarded-client-cert"), [OURS]);
});

t.test("CVE-2021-32777: sanitize_set removes two separate forged XFCC headers, not just one", async (t) => {
  const echo = await echoOf(
    sanitizeSet,
    `X-Forwarded-Client-Cert: ${FORGED}\r\nX-Forwarded-Client-Cert: ${FORGED_2}\r\n`,
  );
  t.same(received(echo, "x-forwarded-client-cert"), [OURS]);
});

t.test("sanitize_set removes a forged XFCC whatever the casing of its name", async (t) => {
  const echo = await echoOf(
    sanitizeSet,
    `x-FORWARDED-client-CERT: ${FORGED}\r\nX-forwarded-Client-cert: ${FORGED_2}\r\n`,
  );
  t.same(received(echo, "x-forwarded-client-cert"), [OURS]);
});

t.test("Connection: x-forwarded-client-cert cannot remove the XFCC we set", async (t) => {
  const echo = await echoOf(
    sanitizeSet,
    `Connection: keep-alive, X-Forwarded-Client-Cert\r\nX-Forwarded-Client-Cert: ${FORGED}\r\n`,
  );
  t.same(received(echo, "x-forwarded-client-cert"), [OURS]);
});

t.test("a forged X-Forwarded-Proto: http is replaced by https", async (t) => {
  const echo = await echoOf(sanitizeSet, "X-Forwarded-Proto: http\r\nx-forwarded-PROTO: http\r\n");
  t.same(received(echo, "x-forwarded-proto"), ["https"]);
});

t.test("append_forward: the app gets the incoming element, a comma, then ours", async (t) => {
  const echo = await echoOf(appendForward, `X-Forwarded-Client-Cert: ${FORGED}\r\n`);
  t.same(received(echo, "x-forwarded-client-cert"), [`${FORGED},${OURS}`]);
});

t.test("append_forward: two incoming XFCC headers are both kept, in order, before ours", async (t) => {
  const echo = await echoOf(
    appendForward,
    `X-Forwarded-Client-Cert: ${FORGED}\r\nX-Forwarded-Client-Cert: ${FORGED_2}\r\n`,
  );
  t.same(received(echo, "x-forwarded-client-cert"), [`${FORGED},${FORGED_2},${OURS}`]);
});

t.test("append_forward: a malformed incoming XFCC is dropped and ours is kept", async (t) => {
  // An unclosed quote would swallow our element into the peer's value if it were forwarded.
  const echo = await echoOf(appendForward, 'X-Forwarded-Client-Cert: By=x;URI="spiffe://a/b;DNS=c\r\n');
  t.same(received(echo, "x-forwarded-client-cert"), [OURS]);
});

t.test("append_forward without an incoming header sends ours alone", async (t) => {
  const echo = await echoOf(appendForward, "");
  t.same(received(echo, "x-forwarded-client-cert"), [OURS]);
});

t.test("sanitize: the app gets no XFCC at all, forged or ours", async (t) => {
  const echo = await echoOf(sanitize, `X-Forwarded-Client-Cert: ${FORGED}\r\n`);
  t.same(received(echo, "x-forwarded-client-cert"), []);
  t.same(received(echo, "x-forwarded-proto"), ["https"]);
});

t.test("forward_only: the app gets the incoming XFCC unchanged and not ours", async (t) => {
  const echo = await echoOf(forwardOnly, `X-Forwarded-Client-Cert: ${FORGED}\r\n`);
  t.same(received(echo, "x-forwarded-client-cert"), [FORGED]);
});

t.test("forward_only without an incoming header sends no XFCC", async (t) => {
  const echo = await echoOf(forwardOnly, "");
  t.same(received(echo, "x-forwarded-client-cert"), []);
});

t.test("an XFCC sent as a trailer of a chunked body never reaches the app", async (t) => {
  // A value used nowhere else in this file, so the wire search cannot find another test's forgery.
  const forged = "By=spiffe://example.org/ns/orders/sa/orders;URI=spiffe://example.org/ns/ops/sa/trailer";
  const result = await exchange(
    sanitizeSet.inboundPort,
    client,
    "POST /xfcc-trailer HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n" +
      "Trailer: X-Forwarded-Client-Cert\r\n\r\n5\r\nhello\r\n0\r\n" +
      `X-Forwarded-Client-Cert: ${forged}\r\n\r\n`,
  );
  t.equal(result.responses[0]?.status, 200);
  const echo = JSON.parse(result.responses[0]!.body) as Echo;
  t.same(received(echo, "x-forwarded-client-cert"), [OURS]);
  t.notOk(wire.text().includes("ns/ops/sa/trailer"), "the forged value is nowhere on the app's wire");
});
