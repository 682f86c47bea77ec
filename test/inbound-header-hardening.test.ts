// What reaches the app that it may wrongly trust: look-alike header names, rerouting headers, invalid Hosts.
import { once } from "node:events";
import http2 from "node:http2";
import t from "tap";
import { startApp } from "./helpers/app.ts";
import { RawH2 } from "./helpers/h2-raw.ts";
import { createTestPki } from "./helpers/pki.ts";
import { type ClientTls, exchange, rawGet, startWiretap } from "./helpers/raw-http.ts";
import { type RunningSidecar, startSidecar, waitForLog } from "./helpers/sidecar.ts";

const pki = await createTestPki();
t.teardown(() => pki.cleanup());
const app = await startApp();
t.teardown(() => app.stop());
// Every byte the sidecars send the app passes this recorder: a dropped header must leave no trace on the wire.
const wire = await startWiretap(app.port);
t.teardown(() => wire.close());

const orders = await pki.identity("orders");
const frontend = await pki.identity("frontend");
const client: ClientTls = { ca: pki.bundlePem, cert: frontend.chainPem, key: frontend.keyPem };

async function sidecarWith(inbound: Record<string, unknown>): Promise<RunningSidecar> {
  const running = await startSidecar(pki, orders, {
    inbound: {
      listen: "127.0.0.1:0",
      app: wire.url,
      policy: { rules: [{ name: "frontend", action: "allow", from: [frontend.spiffeId] }] },
      ...inbound,
    },
  });
  t.teardown(() => running.stop());
  return running;
}

const byDefault = await sidecarWith({});
const rejecting = await sidecarWith({ headersWithUnderscores: "reject" });
const allowing = await sidecarWith({
  headersWithUnderscores: "allow",
  removeRequestHeaders: ["l5d-client-id", "x-ssl-client-*", "forwarded", "x-forwarded-user"],
});

interface Echo {
  url: string;
  method: string;
  rawHeaders: string[];
}

/** The header names the app received, lowercased, in order. */
function names(echo: Echo): string[] {
  return echo.rawHeaders.filter((_, i) => i % 2 === 0).map((name) => name.toLowerCase());
}

function values(echo: Echo, name: string): string[] {
  return echo.rawHeaders.filter((_, i) => i % 2 === 1 && echo.rawHeaders[i - 1]!.toLowerCase() === name);
}

/** Sends a GET with raw extra header lines; returns what the echo app saw. */
async function echoOf(running: RunningSidecar, extra: string, target = "/headers"): Promise<Echo> {
  const result = await exchange(running.inboundPort, client, rawGet(target, extra));
  const response = result.responses[0];
  if (response?.status !== 200)
    throw new Error(`expected 200 from the app, got ${JSON.stringify(result.raw)}`);
  return JSON.parse(response.body) as Echo;
}

async function h2Session(port: number): Promise<http2.ClientHttp2Session> {
  const session = http2.connect(`https://localhost:${port}`, { ...client, servername: "localhost" });
  session.on("error", () => {});
  await once(session, "connect");
  return session;
}

function h2Get(
  session: http2.ClientHttp2Session,
  headers: http2.OutgoingHttpHeaders,
): Promise<{ status: number; reason: string | undefined; body: string }> {
  return new Promise((resolve, reject) => {
    const stream = session.request({ ":path": "/headers", ...headers, endStream: true } as never);
    let status = 0;
    let reason: string | undefined;
    const chunks: Buffer[] = [];
    stream.on("response", (fields) => {
      status = Number(fields[":status"]);
      reason = fields["x-mtlsd-reason"] as string | undefined;
    });
    stream.on("data", (chunk: Buffer) => chunks.push(chunk));
    stream.on("end", () => resolve({ status, reason, body: Buffer.concat(chunks).toString() }));
    stream.on("error", reject);
  });
}

const OURS_BY = `By=${orders.spiffeId}`;

t.test("look-alike names of headers mtlsd sets or strips never reach the app by default", async (t) => {
  const echo = await echoOf(
    byDefault,
    "X_Forwarded_Client_Cert: By=spiffe://example.org/ns/ops/sa/lookalike\r\n" +
      "x-forwarded_proto: http\r\n" +
      "Transfer_Encoding: chunked\r\n" +
      "Content_Length: 5\r\n" +
      "X_Original_URL: /admin\r\n",
  );
  t.same(
    names(echo).filter((name) => name.includes("_")),
    [],
    "no header with an underscore",
  );
  t.equal(values(echo, "x-forwarded-client-cert").length, 1);
  t.match(values(echo, "x-forwarded-client-cert")[0], OURS_BY, "only our XFCC");
  t.same(values(echo, "x-forwarded-proto"), ["https"]);
  t.notOk(wire.text().includes("sa/lookalike"), "the forged value is nowhere on the app's wire");
});

t.test("by default every header name with an underscore is dropped, the request still served", async (t) => {
  const echo = await echoOf(byDefault, "X_Tenant: acme\r\nX-Tenant-Id: 7\r\n");
  t.same(values(echo, "x_tenant"), []);
  t.same(values(echo, "x-tenant-id"), ["7"], "names without an underscore pass");
});

t.test("headersWithUnderscores: reject answers 400 bad_request and the app sees nothing", async (t) => {
  const result = await exchange(
    rejecting.inboundPort,
    client,
    rawGet("/rejected-underscore", "X_Tenant: acme-rejected\r\n"),
  );
  const response = result.responses[0]!;
  t.equal(response.status, 400);
  t.equal(response.header("x-mtlsd-reason"), "bad_request");
  t.match(JSON.parse(response.body).error, /"x_tenant" has an underscore.*headersWithUnderscores/);
  t.notOk(wire.text().includes("acme-rejected"), "nothing of the request reached the app");
  const line = await waitForLog(
    rejecting.logs,
    (l) => l.msg === "request" && l.path === "/rejected-underscore",
  );
  t.match(line, { level: "warn", decision: "deny", reason: "bad_request", status: 400 });
});

t.test("headersWithUnderscores: allow passes other names, never look-alikes", async (t) => {
  const echo = await echoOf(
    allowing,
    "X_Tenant: acme\r\n" +
      "X_Forwarded_Client_Cert: By=spiffe://example.org/ns/ops/sa/allowed-lookalike\r\n" +
      "X_HTTP_Method_Override: DELETE\r\n" +
      "Keep_Alive: timeout=1\r\n" +
      "X_SSL_Client_Verify: SUCCESS\r\n" +
      "L5D_Client_Id: admin.ops\r\n",
  );
  t.same(values(echo, "x_tenant"), ["acme"], "a name that looks like nothing of ours passes");
  for (const name of [
    "x_forwarded_client_cert",
    "x_http_method_override",
    "keep_alive",
    "x_ssl_client_verify",
  ]) {
    t.same(values(echo, name), [], `${name} is dropped`);
  }
  t.same(values(echo, "l5d_client_id"), [], "a look-alike of a configured name is dropped");
  t.notOk(wire.text().includes("allowed-lookalike"));
});

t.test("headers that reroute a request past the policy are removed by default", async (t) => {
  const echo = await echoOf(
    byDefault,
    "X-Original-URL: /admin/reroute\r\n" +
      "X-Rewrite-URL: /admin/reroute\r\n" +
      "X-HTTP-Method-Override: DELETE\r\n" +
      "X-HTTP-Method: DELETE\r\n" +
      "x-method-override: DELETE\r\n",
    "/v1/orders",
  );
  t.equal(echo.url, "/v1/orders");
  for (const name of [
    "x-original-url",
    "x-rewrite-url",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
  ]) {
    t.same(values(echo, name), [], `${name} is removed`);
  }
  t.notOk(wire.text().includes("/admin/reroute"), "nothing of them is on the app's wire");
});

t.test("removeRequestHeaders removes exact names and every name a trailing * covers", async (t) => {
  const echo = await echoOf(
    allowing,
    "l5d-client-id: admin.ops\r\n" +
      "X-SSL-Client-Verify: SUCCESS\r\n" +
      "X-SSL-Client-S-DN: CN=admin\r\n" +
      "Forwarded: for=10.0.0.1;by=admin\r\n" +
      "X-Forwarded-User: admin\r\n" +
      "X-SSL-Protocol: TLSv1.3\r\n",
  );
  for (const name of [
    "l5d-client-id",
    "x-ssl-client-verify",
    "x-ssl-client-s-dn",
    "forwarded",
    "x-forwarded-user",
  ]) {
    t.same(values(echo, name), [], `${name} is removed`);
  }
  t.same(values(echo, "x-ssl-protocol"), ["TLSv1.3"], "a name outside the list and its prefixes passes");
});

t.test("HTTP/2: look-alike, rerouting and listed headers are removed as on HTTP/1.1", async (t) => {
  const session = await h2Session(allowing.inboundPort);
  t.teardown(() => session.close());
  const result = await h2Get(session, {
    x_forwarded_client_cert: "By=spiffe://example.org/ns/ops/sa/h2-lookalike",
    "x-http-method-override": "DELETE",
    "x-ssl-client-dn": "CN=admin",
    x_tenant: "acme",
  });
  t.equal(result.status, 200);
  const echo = JSON.parse(result.body) as Echo;
  t.same(values(echo, "x_forwarded_client_cert"), []);
  t.same(values(echo, "x-http-method-override"), []);
  t.same(values(echo, "x-ssl-client-dn"), []);
  t.same(values(echo, "x_tenant"), ["acme"]);
  t.match(values(echo, "x-forwarded-client-cert")[0], OURS_BY);
  t.notOk(wire.text().includes("h2-lookalike"));
});

t.test("HTTP/2: by default every underscore name is dropped, the stream still served", async (t) => {
  const dropping = await h2Session(byDefault.inboundPort);
  t.teardown(() => dropping.close());
  const dropped = await h2Get(dropping, { x_tenant: "acme" });
  t.equal(dropped.status, 200);
  t.same(values(JSON.parse(dropped.body) as Echo, "x_tenant"), []);
});

t.test("HTTP/2: headersWithUnderscores: reject answers the stream 400 bad_request", async (t) => {
  const refusing = await h2Session(rejecting.inboundPort);
  t.teardown(() => refusing.close());
  const refused = await h2Get(refusing, { x_tenant: "acme-h2-rejected" });
  t.equal(refused.status, 400);
  t.equal(refused.reason, "bad_request");
  t.notOk(wire.text().includes("acme-h2-rejected"));
});

t.test("a Host RFC 9112 makes invalid gets 400 bad_request and never reaches the app", async (t) => {
  for (const host of [
    "user@localhost",
    "localhost/admin",
    "local host",
    "localhost:99999",
    "localhost:8x",
    "[::1",
    "[zz::1]",
    "[::1]x",
    "exa<mple",
    "exa%zzmple",
    ":443",
  ]) {
    const result = await exchange(byDefault.inboundPort, client, rawGet("/bad-host", "", host));
    const response = result.responses[0];
    t.equal(response?.status, 400, `Host: ${host}`);
    t.equal(response?.header("x-mtlsd-reason"), "bad_request", `Host: ${host}`);
  }
  t.notOk(
    wire.requests().some((request) => request.target === "/bad-host"),
    "no request with a bad Host reached the app",
  );
});

t.test("an empty Host gets 400 bad_request", async (t) => {
  const result = await exchange(byDefault.inboundPort, client, "GET /empty-host HTTP/1.1\r\nHost:\r\n\r\n");
  t.equal(result.responses[0]?.status, 400);
  t.match(JSON.parse(result.responses[0]!.body).error, "empty");
});

t.test("an HTTP/1.1 request with no Host gets 400 bad_request and never reaches the app", async (t) => {
  const result = await exchange(byDefault.inboundPort, client, "GET /no-host HTTP/1.1\r\n\r\n");
  const response = result.responses[0];
  t.equal(response?.status, 400);
  t.equal(response?.header("x-mtlsd-reason"), "bad_request");
  t.match(JSON.parse(response!.body), { reason: "bad_request", error: "the request has no Host header" });
  t.ok(result.closed, "the connection is closed after the refusal");
  const line = await waitForLog(byDefault.logs, (l) => l.msg === "request" && l.path === "/no-host");
  t.match(line, { protocol: "http/1.1", decision: "deny", status: 400, reason: "bad_request" });
  t.notOk(
    wire.requests().some((request) => request.target === "/no-host"),
    "the app never saw it",
  );
});

t.test(
  "HTTP/2: a stream with neither :authority nor host is reset as malformed, never forwarded",
  async (t) => {
    // The HTTP/1.0 leniency below has no HTTP/2 counterpart: nghttp2 refuses such a request as malformed.
    const raw = await RawH2.connect({
      port: byDefault.inboundPort,
      tls: { ...client, servername: "localhost" },
    });
    t.teardown(() => raw.close());
    raw.request(1, [
      [":method", "GET"],
      [":scheme", "https"],
      [":path", "/no-authority"],
    ]);
    const result = await raw.result(1);
    t.equal(result.reset, "PROTOCOL_ERROR");
    t.equal(result.headers.length, 0, "no response head before the reset");
    t.notOk(
      wire.requests().some((request) => request.target === "/no-authority"),
      "the app never saw it",
    );
  },
);

t.test("an HTTP/1.0 request with no Host is served; the app gets the Host of inbound.app", async (t) => {
  // RFC 9112 §3.2 requires Host of HTTP/1.1 only; nginx serves HTTP/1.0 without one too.
  const result = await exchange(byDefault.inboundPort, client, "GET /no-host-1.0 HTTP/1.0\r\n\r\n");
  const response = result.responses[0];
  t.equal(response?.status, 200, result.raw);
  const echo = JSON.parse(response!.body) as Echo & { httpVersion: string };
  t.equal(echo.url, "/no-host-1.0");
  t.equal(echo.httpVersion, "1.1", "forwarded as HTTP/1.1, which needs a Host");
  t.same(
    values(echo, "host"),
    [new URL(wire.url).host],
    "the Host of inbound.app, as the hop to it names it",
  );
  t.match(values(echo, "x-forwarded-client-cert")[0], `URI=${frontend.spiffeId}`, "decided like any request");
});

t.test("an HTTP/1.0 request's Host, when it sends one, is checked as any other", async (t) => {
  for (const head of [
    "GET /bad-host-1.0 HTTP/1.0\r\nHost: user@localhost\r\n\r\n",
    "GET /bad-host-1.0 HTTP/1.0\r\nHost: localhost\r\nHost: admin.internal\r\n\r\n",
  ]) {
    const result = await exchange(byDefault.inboundPort, client, head);
    t.equal(result.responses[0]?.status, 400, JSON.stringify(head));
    t.equal(result.responses[0]?.header("x-mtlsd-reason"), "bad_request");
  }
  t.notOk(wire.requests().some((request) => request.target === "/bad-host-1.0"));
});

t.test("valid Hosts pass: names, ports, IPv4, IPv6 literals, sub-delims and %-escapes", async (t) => {
  for (const host of [
    "localhost",
    "ORDERS.internal:15006",
    "127.0.0.1:443",
    "[::1]:8443",
    "a-b_c~d!$&'()*+,;=",
    "x%41y",
  ]) {
    const result = await exchange(byDefault.inboundPort, client, rawGet("/good-host", "", host));
    t.equal(result.responses[0]?.status, 200, `Host: ${host}`);
    t.same(values(JSON.parse(result.responses[0]!.body) as Echo, "host"), [host]);
  }
});

t.test("HTTP/2: an :authority RFC 3986 refuses gets 400 bad_request", async (t) => {
  const session = await h2Session(byDefault.inboundPort);
  t.teardown(() => session.close());
  for (const authority of ["localhost:99999", "exa%zzmple"]) {
    const result = await h2Get(session, { ":authority": authority });
    t.equal(result.status, 400, authority);
    t.equal(result.reason, "bad_request", authority);
  }
});
