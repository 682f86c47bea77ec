// The admin listener as probes and operators meet it: /healthz, /readyz, /status, and what it refuses.
import { createHash, X509Certificate } from "node:crypto";
import { readFile, writeFile } from "node:fs/promises";
import net from "node:net";
import t from "tap";
import { parse as parseYaml, stringify } from "yaml";
import { Policy } from "../src/policy/index.ts";
import { Readiness } from "../src/telemetry/index.ts";
import { startApp } from "./helpers/app.ts";
import { createTestPki, identityConfig } from "./helpers/pki.ts";
import { startSidecar } from "./helpers/sidecar.ts";

const pki = await createTestPki();
t.teardown(() => pki.cleanup());
const app = await startApp();
t.teardown(() => app.stop());
const orders = await pki.identity("orders");
const frontend = await pki.identity("frontend");
const payments = await pki.identity("payments");
const policy = {
  rules: [
    { name: "frontend-reads", action: "allow", from: [frontend.spiffeId], to: [{ methods: ["GET"] }] },
    { name: "shadow-writes", action: "deny", from: ["*"], to: [{ methods: ["POST"] }], dryRun: true },
  ],
};
const sidecar = await startSidecar(pki, orders, {
  inbound: { listen: "127.0.0.1:0", app: app.url, policy },
  outbound: {
    listen: "127.0.0.1:0",
    // An IP address needs no DNS: one endpoint from the start (a name that does not resolve fails /readyz).
    upstreams: { payments: { address: "127.0.0.1:15006", identity: payments.spiffeId } },
  },
});
t.teardown(() => sidecar.stop());

async function get(url: string, method = "GET") {
  const response = await fetch(url, { method, signal: AbortSignal.timeout(5000) });
  const text = await response.text();
  return { status: response.status, headers: response.headers, text };
}

/** A loopback port nothing listens on. */
async function closedPort(): Promise<number> {
  const server = net.createServer().listen(0, "127.0.0.1");
  await new Promise((resolve) => server.once("listening", resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

t.test("the admin listener is named in the started log line, on the port it was given", async (t) => {
  const started = sidecar.logs.find((line) => line.msg === "mtlsd started");
  const listeners = started?.listeners as Record<string, string>;
  t.equal(listeners.admin, `127.0.0.1:${sidecar.sidecar.addresses().admin?.port}`);
});

t.test("/healthz answers 200 while the process is alive", async (t) => {
  const response = await get(`${sidecar.adminUrl}/healthz`);
  t.equal(response.status, 200);
  t.same(JSON.parse(response.text), { alive: true });
  t.equal(response.headers.get("cache-control"), "no-store");
});

t.test("/readyz answers 200 when credentials, listeners and the app are all fine", async (t) => {
  const response = await get(`${sidecar.adminUrl}/readyz`);
  t.equal(response.status, 200);
  const body = JSON.parse(response.text);
  t.equal(body.ready, true);
  t.same(Object.keys(body.checks).sort(), ["app", "credentials", "listeners", "upstreams"]);
  t.match(body.checks.credentials, { ok: true, detail: /certificate valid until / });
  t.match(body.checks.listeners, { ok: true });
  t.match(body.checks.app, { ok: true, detail: `127.0.0.1:${app.port} accepts connections` });
});

t.test("/readyz answers 503 naming the app when the app does not accept connections", async (t) => {
  const port = await closedPort();
  const orphan = await startSidecar(pki, orders, {
    inbound: { listen: "127.0.0.1:0", app: `http://127.0.0.1:${port}`, policy },
  });
  t.teardown(() => orphan.stop());
  const response = await get(`${orphan.adminUrl}/readyz`);
  t.equal(response.status, 503);
  t.equal(response.headers.get("x-mtlsd-reason"), "not_ready");
  const body = JSON.parse(response.text);
  t.match(body, { ready: false, reason: "not_ready", failed: ["app"] });
  t.match(body.error, `app (cannot connect to 127.0.0.1:${port}: ECONNREFUSED)`);
  t.equal(body.checks.credentials.ok, true, "the other checks still pass and say so");
});

t.test("/readyz turns ready once the app comes up, without a restart", async (t) => {
  const port = await closedPort();
  const early = await startSidecar(pki, orders, {
    inbound: { listen: "127.0.0.1:0", app: `http://127.0.0.1:${port}`, policy },
  });
  t.teardown(() => early.stop());
  t.equal((await get(`${early.adminUrl}/readyz`)).status, 503);
  const late = net.createServer((socket) => socket.destroy()).listen(port, "127.0.0.1");
  await new Promise((resolve) => late.once("listening", resolve));
  t.teardown(() => new Promise((resolve) => late.close(resolve)));
  // The verdict is cached for a second; poll (bounded) until it is renewed.
  let status = 0;
  for (const deadline = Date.now() + 5000; Date.now() < deadline; ) {
    status = (await get(`${early.adminUrl}/readyz`)).status;
    if (status === 200) break;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  t.equal(status, 200);
});

t.test("/readyz probes the app at most once a second, however often it is asked", async (t) => {
  let probes = 0;
  const counted = net
    .createServer((socket) => {
      probes++;
      socket.destroy();
    })
    .listen(0, "127.0.0.1");
  await new Promise((resolve) => counted.once("listening", resolve));
  t.teardown(() => new Promise((resolve) => counted.close(resolve)));
  const { port } = counted.address() as net.AddressInfo;
  const watched = await startSidecar(pki, orders, {
    inbound: { listen: "127.0.0.1:0", app: `http://127.0.0.1:${port}`, policy },
  });
  t.teardown(() => watched.stop());
  const started = Date.now();
  const answers = await Promise.all(
    Array.from({ length: 30 }, () => get(`${watched.adminUrl}/readyz`).then((r) => r.status)),
  );
  for (let i = 0; i < 10; i++) answers.push((await get(`${watched.adminUrl}/readyz`)).status);
  const seconds = Math.ceil((Date.now() - started) / 1000);
  t.same(new Set(answers), new Set([200]));
  t.ok(probes >= 1, "the app was probed");
  t.ok(probes <= seconds + 1, `${probes} probes for 40 calls in ${seconds} s`);
});

t.test(
  "/status reports the DESIGN.md document: identity, cert, bundle, policy, reload, upstreams",
  async (t) => {
    const response = await get(`${sidecar.adminUrl}/status`);
    t.equal(response.status, 200);
    t.equal(response.headers.get("content-type"), "application/json");
    const status = JSON.parse(response.text);
    t.same(Object.keys(status).sort(), [
      "cert",
      "configReload",
      "draining",
      "identity",
      "policy",
      "reload",
      "source",
      "trustBundle",
      "trustDomain",
      "trustDomains",
      "upstreams",
    ]);
    const leaf = new X509Certificate(orders.chainPem);
    const root = new X509Certificate(pki.bundlePem);
    t.equal(status.identity, orders.spiffeId);
    t.equal(status.trustDomain, "example.org");
    t.same(status.cert, {
      serial: leaf.serialNumber.toLowerCase(),
      notBefore: new Date(leaf.validFrom).toISOString(),
      notAfter: new Date(leaf.validTo).toISOString(),
    });
    t.same(status.trustBundle, [
      {
        subject: root.subject.split("\n").reverse().join(","),
        sha256: createHash("sha256").update(root.raw).digest("hex"),
      },
    ]);
    t.equal(status.source, "files", "the identity comes from files");
    t.same(
      status.trustDomains,
      [{ trustDomain: "example.org", bundle: status.trustBundle }],
      "one trust domain, ours, with the same bundle",
    );
    t.equal(status.policy.rules, 2, "dry-run rules count as rules");
    t.match(status.policy.sha256, /^[0-9a-f]{64}$/);
    t.equal(status.policy.sha256, new Policy(sidecar.sidecar.loaded.config.inbound!.policy).sha256);
    t.same(Object.keys(status.reload).sort(), ["at", "error", "result", "trigger"]);
    t.match(status.reload, { result: "success", trigger: "startup", error: null });
    t.ok(Date.parse(status.reload.at) <= Date.now(), "the startup load, in the past");
    t.match(status.configReload, {
      result: "success",
      trigger: "startup",
      error: null,
      restartRequired: [],
    });
    t.same(status.upstreams, {
      payments: {
        address: "127.0.0.1:15006",
        identity: payments.spiffeId,
        connections: 0,
        pending: 0,
        endpoints: [
          { address: "127.0.0.1:15006", state: "healthy", ejectedUntil: null, connections: 0, pending: 0 },
        ],
      },
    });
    t.equal(status.draining, false);
  },
);

t.test(
  "/status reload follows the credential reloader: a refused push with its code, then the next good one",
  async (t) => {
    const rotating = await pki.identity("orders-rotating", { spiffeId: orders.spiffeId });
    const running = await startSidecar(pki, rotating, {
      identity: {
        ...identityConfig(pki, rotating),
        // Only the reloads this test asks for.
        reload: { watch: false, interval: "1h" },
      },
      inbound: { listen: "127.0.0.1:0", app: app.url, policy },
    });
    t.teardown(() => running.stop());
    const status = async () => JSON.parse((await get(`${running.adminUrl}/status`)).text);
    const reloads = async (result: string) => {
      const text = (await get(`${running.adminUrl}/metrics`)).text;
      return Number(
        new RegExp(`^mtlsd_credential_reloads_total\\{result="${result}"\\} (\\d+)$`, "m").exec(text)?.[1],
      );
    };
    const started = await status();

    // A key that does not belong to the certificate: refused, the old credentials stay.
    await writeFile(rotating.keyPath, frontend.keyPem);
    t.match(await running.sidecar.reloadCredentials(), { result: "failure" });
    const refused = await status();
    t.match(refused.reload, { result: "failure", trigger: "request", error: { code: "CERT_KEY_MISMATCH" } });
    t.match(refused.reload.error.message, /does not belong to the certificate/);
    t.ok(Date.parse(refused.reload.at) >= Date.parse(started.reload.at), "a later attempt");
    t.equal(refused.cert.serial, started.cert.serial, "the certificate in use is unchanged");
    t.equal(await reloads("failure"), 1, "/metrics counts the refusal");

    const renewed = await pki.identity("orders-renewed", { spiffeId: orders.spiffeId });
    await writeFile(rotating.certPath, renewed.chainPem);
    await writeFile(rotating.keyPath, renewed.keyPem);
    t.match(await running.sidecar.reloadCredentials(), { result: "success" });
    const installed = await status();
    t.match(installed.reload, { result: "success", trigger: "request", error: null });
    t.equal(installed.cert.serial, renewed.issued.serialHex.toLowerCase(), "the new certificate");
    t.equal(await reloads("success"), 1, "/metrics counts the success");
  },
);

t.test(
  "/status policy is the policy in force after a reload, not the one the sidecar started with",
  async (t) => {
    const running = await startSidecar(pki, orders, {
      inbound: { listen: "127.0.0.1:0", app: app.url, policy: { rules: [policy.rules[0]] } },
    });
    t.teardown(() => running.stop());
    const before = JSON.parse((await get(`${running.adminUrl}/status`)).text).policy;
    t.equal(before.rules, 1);
    const config = parseYaml(await readFile(running.configPath, "utf8")) as {
      inbound: { policy: { rules: unknown[] } };
    };
    config.inbound.policy.rules.push(policy.rules[1]);
    await writeFile(running.configPath, stringify(config));
    t.match(await running.sidecar.reloadConfig("request"), {
      result: "applied",
      changed: ["inbound.policy.rules"],
    });
    const after = JSON.parse((await get(`${running.adminUrl}/status`)).text).policy;
    t.equal(after.rules, 2);
    t.not(after.sha256, before.sha256);
    t.equal(after.sha256, running.sidecar.policy?.sha256, "the hash of the policy requests are decided by");
  },
);

t.test("/status tells two sidecars with different policies apart by the policy hash", async (t) => {
  const other = await startSidecar(pki, orders, {
    inbound: { listen: "127.0.0.1:0", app: app.url, policy: { rules: [policy.rules[0]] } },
  });
  t.teardown(() => other.stop());
  const mine = JSON.parse((await get(`${sidecar.adminUrl}/status`)).text);
  const theirs = JSON.parse((await get(`${other.adminUrl}/status`)).text);
  t.equal(theirs.policy.rules, 1);
  t.not(theirs.policy.sha256, mine.policy.sha256);
  t.same(theirs.upstreams, {}, "no outbound side, no upstreams");
});

t.test("an outbound-only sidecar reports no policy and does not probe an app", async (t) => {
  const outboundOnly = await startSidecar(pki, orders, {
    outbound: {
      listen: "127.0.0.1:0",
      upstreams: { payments: { address: "127.0.0.1:15006", identity: payments.spiffeId } },
    },
  });
  t.teardown(() => outboundOnly.stop());
  const status = JSON.parse((await get(`${outboundOnly.adminUrl}/status`)).text);
  t.equal(status.policy, null);
  const ready = await get(`${outboundOnly.adminUrl}/readyz`);
  t.equal(ready.status, 200);
  t.same(Object.keys(JSON.parse(ready.text).checks).sort(), ["credentials", "listeners", "upstreams"]);
});

t.test("an unknown admin path is a 404 that lists the endpoints", async (t) => {
  const response = await get(`${sidecar.adminUrl}/debug/pprof`);
  t.equal(response.status, 404);
  t.match(JSON.parse(response.text), {
    reason: "not_found",
    error: /\/healthz, \/readyz, \/metrics or \/status/,
  });
});

t.test("a method other than GET or HEAD is a 405 with an Allow header", async (t) => {
  for (const method of ["POST", "PUT", "DELETE"]) {
    const response = await get(`${sidecar.adminUrl}/status`, method);
    t.equal(response.status, 405, method);
    t.equal(response.headers.get("allow"), "GET, HEAD");
  }
});

t.test("HEAD answers with the headers of GET and no body", async (t) => {
  for (const path of ["/healthz", "/readyz", "/metrics", "/status"]) {
    const response = await get(`${sidecar.adminUrl}${path}`, "HEAD");
    t.equal(response.status, 200, path);
    t.equal(response.text, "", `${path} has no body`);
    t.ok(Number(response.headers.get("content-length")) > 0, `${path} says how long GET's body is`);
  }
});

t.test("a query string does not change which endpoint answers", async (t) => {
  t.equal((await get(`${sidecar.adminUrl}/healthz?verbose=1`)).status, 200);
});

t.test("the credentials check fails once the certificate has expired, and before it is valid", async (t) => {
  const notBefore = new Date("2026-01-01T00:00:00Z");
  const notAfter = new Date("2026-02-01T00:00:00Z");
  const readiness = (at: string) =>
    new Readiness({
      certificate: () => ({ notBefore, notAfter }),
      listeners: () => ({ "inbound.listen": true }),
      now: () => new Date(at),
    });
  const [during] = await readiness("2026-01-15T00:00:00Z").check();
  t.match(during, { name: "credentials", ok: true });
  const [after] = await readiness("2026-02-01T00:00:00Z").check();
  t.match(after, {
    name: "credentials",
    ok: false,
    detail: "certificate expired at 2026-02-01T00:00:00.000Z",
  });
  const [before] = await readiness("2025-12-31T23:59:59Z").check();
  t.match(before, { name: "credentials", ok: false, detail: /not valid before 2026-01-01/ });
});

t.test("/readyz judges the certificate by the sidecar's clock, the one its other checks read", async (t) => {
  const afterExpiry = new Date(orders.issued.cert.notAfter.getTime() + 1000);
  const late = await startSidecar(
    pki,
    orders,
    { inbound: { listen: "127.0.0.1:0", app: app.url, policy } },
    { now: () => afterExpiry },
  );
  t.teardown(() => late.stop());
  const response = await get(`${late.adminUrl}/readyz`);
  t.equal(response.status, 503);
  t.match(JSON.parse(response.text), {
    failed: ["credentials"],
    checks: { credentials: { ok: false, detail: /^certificate expired at / } },
  });
});

t.test("the listeners check names every listener that does not accept connections", async (t) => {
  const readiness = new Readiness({
    certificate: () => ({ notBefore: new Date(0), notAfter: new Date(Date.now() + 60_000) }),
    listeners: () => ({
      "inbound.listen": true,
      "outbound.listen": false,
      "outbound.upstreams.a.listen": false,
    }),
  });
  const [, listeners] = await readiness.check();
  t.same(listeners, {
    name: "listeners",
    ok: false,
    detail: "not accepting: outbound.listen, outbound.upstreams.a.listen",
  });
});

t.test(
  "an admin port already in use stops the start, naming admin.listen, and frees the data ports",
  async (t) => {
    const blocker = net.createServer().listen(0, "127.0.0.1");
    await new Promise((resolve) => blocker.once("listening", resolve));
    t.teardown(() => new Promise((resolve) => blocker.close(resolve)));
    const { port } = blocker.address() as net.AddressInfo;
    const inboundPort = await closedPort();
    await t.rejects(
      startSidecar(pki, orders, {
        inbound: { listen: `127.0.0.1:${inboundPort}`, app: app.url, policy },
        admin: { listen: `127.0.0.1:${port}` },
      }),
      { code: "LISTEN_FAILED", message: /^admin\.listen: cannot listen: the port is already in use/ },
    );
    const probe = net.createServer().listen(inboundPort, "127.0.0.1");
    await new Promise((resolve, reject) => {
      probe.once("listening", resolve);
      probe.once("error", reject);
    });
    await new Promise((resolve) => probe.close(resolve));
    t.pass(`inbound port ${inboundPort} was released`);
  },
);
