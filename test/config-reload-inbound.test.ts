// A config reload reaches the inbound side without a restart: timeouts, XFCC, the app and how it is spoken to,
// the mode, per-request limits, the log level and identity.deny.
import { randomUUID } from "node:crypto";
import t from "tap";
import { startApp } from "./helpers/app.ts";
import { curlRequest, mtlsClient } from "./helpers/clients.ts";
import { startGateApp } from "./helpers/gate-app.ts";
import { createTestPki } from "./helpers/pki.ts";
import { type ClientTls, exchange, RawConnection, rawGet } from "./helpers/raw-http.ts";
import { editConfig } from "./helpers/reload.ts";
import { type RunningSidecar, startSidecar, waitForLog } from "./helpers/sidecar.ts";

/** The subtest handed to a `t.test` callback. */
type TestContext = Parameters<Parameters<typeof t.test>[0]>[0];

const pki = await createTestPki();
t.teardown(() => pki.cleanup());
const app = await startApp();
t.teardown(() => app.stop());
const orders = await pki.identity("orders");
const frontend = await pki.identity("frontend");
const client: ClientTls = { ca: pki.bundlePem, cert: frontend.chainPem, key: frontend.keyPem };

async function inbound(
  t: TestContext,
  settings: Record<string, unknown> = {},
  extra = {},
): Promise<RunningSidecar> {
  const running = await startSidecar(pki, orders, {
    inbound: {
      listen: "127.0.0.1:0",
      app: app.url,
      policy: { rules: [{ name: "frontend", action: "allow", from: [frontend.spiffeId] }] },
      ...settings,
    },
    ...extra,
  });
  t.teardown(() => running.stop());
  return running;
}

async function get(
  running: RunningSidecar,
  path: string,
  as: ClientTls = client,
): Promise<{ status: number; headers: Record<string, unknown>; body: string }> {
  const http = mtlsClient(running.inboundUrl, as);
  try {
    const response = await http.client.request({ path, method: "GET" });
    return { status: response.statusCode, headers: response.headers, body: await response.body.text() };
  } finally {
    await http.close();
  }
}

t.test("a shorter inbound.appTimeout applies to the next request", async (t) => {
  const running = await inbound(t, { appTimeout: "10s" });
  t.equal((await get(running, "/slow?ms=800")).status, 200);
  t.match(await editConfig(running, (config) => (config.inbound.appTimeout = "200ms")), {
    result: "applied",
    changed: ["inbound.appTimeout"],
  });
  const response = await get(running, "/slow?ms=800");
  t.equal(response.status, 504);
  t.equal(response.headers["x-mtlsd-reason"], "upstream_timeout");
});

t.test("a new inbound.xfcc mode applies to the next request", async (t) => {
  const running = await inbound(t);
  const xfcc = async () =>
    (JSON.parse((await get(running, "/xfcc")).body) as { headers: Record<string, string> }).headers[
      "x-forwarded-client-cert"
    ];
  t.match(await xfcc(), /^By=spiffe:\/\//, "sanitize_set: the app gets our XFCC");
  await editConfig(running, (config) => (config.inbound.xfcc = "sanitize"));
  t.equal(await xfcc(), undefined, "sanitize: none at all");
});

t.test("inbound.headersWithUnderscores and removeRequestHeaders apply to the next request", async (t) => {
  const running = await inbound(t);
  const sent = async () => {
    const result = await exchange(
      running.inboundPort,
      client,
      rawGet("/headers", "X_Tenant: acme\r\nX-Forwarded-User: admin\r\n"),
    );
    const response = result.responses[0]!;
    if (response.status !== 200) return response.status;
    return (JSON.parse(response.body) as { rawHeaders: string[] }).rawHeaders.filter((_, i) => i % 2 === 0);
  };
  const before = await sent();
  t.notOk((before as string[]).includes("X_Tenant"), "dropped by default");
  t.ok((before as string[]).includes("X-Forwarded-User"), "not in removeRequestHeaders yet");
  t.match(
    await editConfig(running, (config) => {
      config.inbound.removeRequestHeaders = ["x-forwarded-*"];
    }),
    { result: "applied", changed: ["inbound.removeRequestHeaders"] },
  );
  t.notOk(((await sent()) as string[]).includes("X-Forwarded-User"), "removed after the reload");
  await editConfig(running, (config) => {
    config.inbound.headersWithUnderscores = "reject";
  });
  t.equal(await sent(), 400, "refused after the reload");
});

t.test("a moved inbound.app gets the next request, and /readyz probes it", async (t) => {
  const gate = await startGateApp();
  t.teardown(() => gate.close());
  const running = await inbound(t);
  t.match((await get(running, "/which")).body, /"url":"\/which"/, "the echo app answers");
  await editConfig(running, (config) => (config.inbound.app = gate.url));
  t.equal((await get(running, "/which")).body, "open", "the other app answers now");
  await gate.close();
  const ready = await fetch(`${running.adminUrl}/readyz`);
  t.equal(ready.status, 503, "the moved app, now down, fails readiness");
  t.match(await ready.json(), { failed: ["app"] });
});

t.test("inbound.appProtocol h2c reaches an HTTP/2 app after a reload", async (t) => {
  const h2App = await startApp(0, "echo-app.ts", { APP_PROTOCOL: "h2c" });
  t.teardown(() => h2App.stop());
  const running = await inbound(t, { app: h2App.url });
  t.equal((await get(running, "/proto")).status, 502, "HTTP/1.1 to an h2c-only app fails");
  await editConfig(running, (config) => (config.inbound.appProtocol = "h2c"));
  const response = await get(running, "/proto");
  t.equal(response.status, 200);
  t.match(JSON.parse(response.body), { httpVersion: "2.0" });
});

t.test("switching inbound.mode to permissive serves plaintext from the next connection", async (t) => {
  const running = await inbound(t, {
    policy: { rules: [{ name: "anyone", action: "allow" }] },
  });
  const plain = () =>
    curlRequest(`http://127.0.0.1:${running.inboundPort}/plain`, { cacert: pki.bundlePath });
  t.equal((await plain()).response?.status, 400);
  await editConfig(running, (config) => (config.inbound.mode = "permissive"));
  t.equal((await plain()).response?.status, 200);
});

t.test("a smaller limits.maxHeaderSize applies to the next connection", async (t) => {
  const running = await inbound(t);
  const big = rawGet("/big", `X-Big: ${"b".repeat(4000)}\r\n`);
  t.same(
    (await exchange(running.inboundPort, client, big)).responses.map((r) => r.status),
    [200],
  );
  t.match(await editConfig(running, (config) => (config.limits = { maxHeaderSize: "2KiB" })), {
    changed: ["limits.maxHeaderSize"],
  });
  t.same(
    (await exchange(running.inboundPort, client, big)).responses.map((r) => r.status),
    [431],
  );
});

t.test("log.level reloads: a quieter level drops the info lines of allowed requests", async (t) => {
  const running = await inbound(t, {}, { log: { level: "info" } });
  await editConfig(running, (config) => (config.log.level = "warn"));
  const path = `/quiet/${randomUUID()}`;
  t.equal((await get(running, path)).status, 200);
  t.notOk(
    running.logs.some((line) => line.path === path),
    "no info line for an allowed request",
  );
  t.equal(running.sidecar.logger.level, "warn");
});

t.test("identity.deny closes the open connections of a newly listed peer and refuses new ones", async (t) => {
  const running = await inbound(t);
  const connection = await RawConnection.open(running.inboundPort, client);
  t.teardown(() => connection.close());
  connection.write(rawGet("/before-deny"));
  t.equal((await connection.read(1)).responses[0]?.status, 200);

  await editConfig(running, (config) => (config.identity.deny = { spiffeIds: [frontend.spiffeId] }));
  t.ok(await connection.closedWithin(2000), "the open connection was closed");
  t.match(await waitForLog(running.logs, (line) => line.msg?.startsWith("closing a connection") ?? false), {
    level: "warn",
    source_identity: frontend.spiffeId,
    detail: /identity\.deny\.spiffeIds/,
  });
  const again = await exchange(running.inboundPort, client, rawGet("/after-deny"));
  t.equal(again.responses[0]?.status, 403);
  t.equal(again.responses[0]?.header("x-mtlsd-reason"), "revoked");
});

t.test("metrics.maxIdentityLabels reloads: identities seen after it count as other", async (t) => {
  const running = await inbound(t, {
    policy: { rules: [{ name: "all", action: "allow", from: ["*"] }] },
  });
  await editConfig(running, (config) => (config.metrics = { maxIdentityLabels: 1 }));
  const reporting = await pki.identity("reporting-labels");
  t.equal((await get(running, "/one")).status, 200);
  const as = { ca: pki.bundlePem, cert: reporting.chainPem, key: reporting.keyPem };
  t.equal((await get(running, "/two", as)).status, 200);
  const { values } = await running.sidecar.metrics.requests.get();
  const labels = values.map((sample) => sample.labels.source_identity);
  t.ok(labels.includes(frontend.spiffeId));
  t.ok(labels.includes("other"), "the second identity is folded into other");
});

t.test("inbound.minTLSVersion TLSv1.2 lets a legacy peer in from the next handshake", async (t) => {
  const running = await inbound(t);
  const legacy = { ...client, maxVersion: "TLSv1.2" as const };
  await t.rejects(get(running, "/legacy", legacy), "TLS 1.2 is refused under the default TLSv1.3");
  await editConfig(running, (config) => (config.inbound.minTLSVersion = "TLSv1.2"));
  t.equal((await get(running, "/legacy", legacy)).status, 200);
});
