// An upstream of several instances: requests spread over its endpoints, DNS changes followed, failing ones ejected.
import { once } from "node:events";
import { writeFile } from "node:fs/promises";
import http from "node:http";
import net from "node:net";
import path from "node:path";
import tls from "node:tls";
import t from "tap";
import { request } from "undici";
import { WebSocket } from "ws";
import { startApp } from "./helpers/app.ts";
import { startDnsServer } from "./helpers/dns-server.ts";
import { startGateApp } from "./helpers/gate-app.ts";
import { startOpensslServer } from "./helpers/openssl-server.ts";
import { inboundAddress } from "./helpers/outbound.ts";
import { createTestPki, type TestPki } from "./helpers/pki.ts";
import { type RunningSidecar, startSidecar, waitForLog } from "./helpers/sidecar.ts";

type Test = Parameters<Parameters<typeof t.test>[0]>[0];

const pki = await createTestPki();
t.teardown(() => pki.cleanup());
const app = await startApp();
t.teardown(() => app.stop());
const dns = await startDnsServer();
t.teardown(() => dns.close());
const frontend = await pki.identity("frontend");
const orders = await pki.identity("orders");
const payments = await pki.identity("payments");
// A second CA, which the orders instances do not trust: a caller whose certificate it issued is refused by them.
const stranger = await createTestPki();
t.teardown(() => stranger.cleanup());
// The orders SPIFFE ID from the stranger CA, and a bundle of both roots for a caller that accepts either.
const strangerOrders = await stranger.identity("orders");
const bothRoots = { ...pki, bundlePath: path.join(pki.dir, "both-roots.pem") };
await writeFile(bothRoots.bundlePath, pki.bundlePem + stranger.bundlePem);

/** An inbound sidecar as `identity` at `listen`, in front of `appUrl`, allowing frontend; trusting `trust`'s roots. */
function instance(
  listen: string,
  identity = orders,
  appUrl = app.url,
  trust: TestPki = pki,
): Promise<RunningSidecar> {
  return startSidecar(trust, identity, {
    inbound: {
      listen,
      app: appUrl,
      policy: { rules: [{ name: "frontend", action: "allow", from: [frontend.spiffeId] }] },
    },
  });
}

/**
 * Three instances of orders on one port at 127.0.0.1, .2 and .3, as three hosts behind one DNS name would be (all
 * of 127/8 is loopback on Linux). The port is the first one's free port; the others take it on their own address.
 */
async function threeInstances(): Promise<{ port: number; instances: RunningSidecar[] }> {
  for (;;) {
    const first = await instance("127.0.0.1:0");
    const port = first.inboundPort;
    try {
      const rest = await Promise.all([instance(`127.0.0.2:${port}`), instance(`127.0.0.3:${port}`)]);
      return { port, instances: [first, ...rest] };
    } catch {
      // Another process holds that port on .2 or .3: try another.
      await first.stop();
    }
  }
}

const { port, instances } = await threeInstances();
t.teardown(() => Promise.all(instances.map((running) => running.stop())));
const addresses = ["127.0.0.1", "127.0.0.2", "127.0.0.3"].map((host) => `${host}:${port}`);

interface Caller extends RunningSidecar {
  proxyUrl: string;
}

/** A frontend sidecar whose upstream `orders` is `upstream` (plus its identity); names resolve through `dns`. */
async function caller(
  t: Test,
  upstream: Record<string, unknown>,
  extra: Record<string, unknown> = {},
  trust: TestPki = pki,
) {
  const running = await startSidecar(
    trust,
    frontend,
    {
      outbound: { listen: "127.0.0.1:0", upstreams: { orders: { identity: orders.spiffeId, ...upstream } } },
      ...extra,
    },
    { dnsServers: [dns.address] },
  );
  t.teardown(() => running.stop());
  return { ...running, proxyUrl: `http://127.0.0.1:${running.sidecar.addresses().outbound!.port}` } as Caller;
}

/** A request from the app through the caller, Host: orders. */
async function send(via: Caller, path: string, init: { method?: string; body?: string } = {}) {
  const response = await request(`${via.proxyUrl}${path}`, {
    method: (init.method ?? "GET") as "GET",
    headers: { host: "orders" },
    ...(init.body !== undefined ? { body: init.body } : {}),
  });
  return { status: response.statusCode, headers: response.headers, text: await response.body.text() };
}

/** Requests whose path starts with `prefix` that an inbound sidecar served. */
function served(running: RunningSidecar, prefix: string): number {
  return running.logs.filter((line) => line.msg === "request" && String(line.path).startsWith(prefix)).length;
}

interface StatusBody {
  upstreams: Record<string, { address: string; endpoints: { address: string; state: string }[] }>;
}

interface ReadyBody {
  checks: Record<string, { ok: boolean; detail: string }>;
}

async function getJson<T>(url: string): Promise<{ status: number; body: T }> {
  const response = await fetch(url, { signal: AbortSignal.timeout(5000) });
  return { status: response.status, body: (await response.json()) as T };
}

/** A plain app that answers every request with 503, as an instance whose dependencies are down would. */
async function failingApp(t: Test): Promise<string> {
  const server = http.createServer((req, res) => {
    req.resume();
    res.writeHead(503, { "content-type": "text/plain", "x-app": "failing" });
    res.end("down");
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  t.teardown(() => {
    server.closeAllConnections();
    return new Promise<void>((resolve) => server.close(() => resolve()));
  });
  return `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`;
}

async function until(condition: () => boolean, what: string, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

t.test("requests to an upstream with an endpoints list are spread across all of them", async (t) => {
  const via = await caller(t, { endpoints: addresses });
  const statuses = [];
  for (let i = 0; i < 30; i++) statuses.push((await send(via, `/spread-list/${i}`)).status);
  t.same(new Set(statuses), new Set([200]), "every request answered");
  for (const [index, running] of instances.entries()) {
    t.ok(
      served(running, "/spread-list/") > 0,
      `${addresses[index]} served some (${served(running, "/spread-list/")})`,
    );
  }
  const { body } = await getJson<StatusBody>(`${via.adminUrl}/status`);
  t.same(body.upstreams.orders!.endpoints.map((endpoint) => endpoint.address).sort(), addresses);
  t.match(body.upstreams.orders!.endpoints[0], {
    state: "healthy",
    ejectedUntil: null,
    connections: Number,
    pending: Number,
  });
  t.equal(body.upstreams.orders!.address, addresses.join(","), "address shows the list as configured");
});

t.test("round_robin gives each endpoint its turn", async (t) => {
  const via = await caller(t, { endpoints: addresses, balance: "round_robin" });
  for (let i = 0; i < 9; i++) t.equal((await send(via, `/round-robin/${i}`)).status, 200);
  t.same(
    instances.map((running) => served(running, "/round-robin/")),
    [3, 3, 3],
  );
  const logged = via.logs.filter(
    (line) => line.msg === "request" && String(line.path).startsWith("/round-robin/"),
  );
  t.same(
    addresses.map((address) => logged.filter((line) => line.endpoint === address).length),
    [3, 3, 3],
    "each request's log line names the endpoint it went to",
  );
});

t.test("a DNS name with three A records is three endpoints, and requests reach all three", async (t) => {
  dns.set("orders.test", ["127.0.0.1", "127.0.0.2", "127.0.0.3"]);
  const via = await caller(t, { address: `orders.test:${port}` });
  for (let i = 0; i < 30; i++) t.equal((await send(via, `/spread-dns/${i}`)).status, 200);
  for (const [index, running] of instances.entries()) {
    t.ok(
      served(running, "/spread-dns/") > 0,
      `${addresses[index]} served some (${served(running, "/spread-dns/")})`,
    );
  }
  const { body } = await getJson<StatusBody>(`${via.adminUrl}/status`);
  t.same(body.upstreams.orders!.endpoints.map((endpoint) => endpoint.address).sort(), addresses);
  t.equal(body.upstreams.orders!.address, `orders.test:${port}`);
});

t.test(
  "a record that leaves DNS loses its endpoint after its request in flight, a new one gains it",
  async (t) => {
    dns.set("moving.test", ["127.0.0.2"]);
    const via = await caller(t, { address: `moving.test:${port}`, resolveInterval: "100ms" });
    const slow = send(via, "/slow?ms=1500");
    await until(() => via.sidecar.upstreamStats().orders!.pending === 1, "the slow request is in flight");
    dns.set("moving.test", ["127.0.0.1", "127.0.0.3"]);
    const changed = await waitForLog(
      via.logs,
      (line) => line.msg === "upstream endpoints changed" && (line.removed as string[]).length > 0,
    );
    t.match(changed, { upstream: "orders", added: [addresses[0], addresses[2]], removed: [addresses[1]] });
    t.match(
      via.sidecar.upstreamStats().orders,
      { pending: 1, endpoints: [{ pending: 0 }, { pending: 0 }] },
      "its request in flight still counts for the upstream while the endpoint is gone from the list",
    );
    t.equal((await slow).status, 200, "the request in flight on the endpoint that left finished");
    for (let i = 0; i < 10; i++) t.equal((await send(via, `/moved/${i}`)).status, 200);
    t.equal(served(instances[1]!, "/moved/"), 0, "the endpoint that left gets no new request");
    t.equal(served(instances[0]!, "/moved/") + served(instances[2]!, "/moved/"), 10);
    t.same(
      via.sidecar
        .upstreamStats()
        .orders!.endpoints.map((endpoint) => endpoint.address)
        .sort(),
      [addresses[0], addresses[2]],
    );
  },
);

t.test(
  "a name that does not resolve at startup: mtlsd starts, says which upstream, and sends once it does",
  async (t) => {
    const via = await caller(t, { address: `late.test:${port}`, resolveInterval: "100ms" });
    const warned = await waitForLog(via.logs, (line) => line.msg.startsWith("upstream name did not resolve"));
    t.match(warned, {
      level: "warn",
      upstream: "orders",
      name: "late.test",
      error: "ENOTFOUND",
      endpoints: 0,
    });
    const notReady = await getJson<ReadyBody>(`${via.adminUrl}/readyz`);
    t.equal(notReady.status, 503);
    t.match(notReady.body.checks.upstreams, {
      ok: false,
      detail: "orders has no endpoint (late.test did not resolve (ENOTFOUND))",
    });
    const refused = await send(via, "/late");
    t.equal(refused.status, 502);
    t.equal(refused.headers["x-mtlsd-reason"], "upstream_unreachable");
    t.match(JSON.parse(refused.text).error, "orders has no endpoint: late.test did not resolve (ENOTFOUND)");

    dns.set("late.test", ["127.0.0.3"]);
    await waitForLog(via.logs, (line) => line.msg === "upstream name resolves again");
    t.equal((await getJson<ReadyBody>(`${via.adminUrl}/readyz`)).status, 200, "ready once the name resolves");
    t.equal((await send(via, "/late/resolved")).status, 200);
    t.equal(served(instances[2]!, "/late/resolved"), 1);
  },
);

t.test("a lookup that fails later keeps the endpoints of the last one that worked", async (t) => {
  dns.set("flaky.test", ["127.0.0.1", "127.0.0.2"]);
  const via = await caller(t, { address: `flaky.test:${port}`, resolveInterval: "100ms" });
  dns.set("flaky.test", []);
  const warned = await waitForLog(via.logs, (line) => line.msg.startsWith("upstream name did not resolve"));
  t.match(warned, {
    msg: "upstream name did not resolve: keeping the addresses it had",
    name: "flaky.test",
    error: "ENOTFOUND",
    endpoints: 2,
  });
  t.same(
    via.sidecar
      .upstreamStats()
      .orders!.endpoints.map((endpoint) => endpoint.address)
      .sort(),
    [addresses[0], addresses[1]],
  );
  t.equal((await send(via, "/flaky")).status, 200);
});

t.test("two entries that name the same endpoint make one endpoint, with a warning", async (t) => {
  dns.set("also-first.test", ["127.0.0.1"]);
  const via = await caller(t, { endpoints: [addresses[0], `also-first.test:${port}`] });
  const warned = await waitForLog(via.logs, (line) => line.msg.startsWith("two entries of the upstream"));
  t.match(warned, {
    level: "warn",
    endpoint: addresses[0],
    entries: [addresses[0], `also-first.test:${port}`],
  });
  t.same(
    via.sidecar.upstreamStats().orders!.endpoints.map((endpoint) => endpoint.address),
    [addresses[0]],
  );
});

t.test("an endpoint presenting the wrong identity is ejected at once and never sent a request", async (t) => {
  const impostor = await instance("127.0.0.1:0", payments);
  t.teardown(() => impostor.stop());
  const wrong = inboundAddress(impostor);
  const via = await caller(t, { endpoints: [addresses[0], addresses[1], wrong], balance: "round_robin" });
  for (let i = 0; i < 20; i++) t.equal((await send(via, `/impostor/${i}`)).status, 200);
  t.equal(
    impostor.logs.filter((line) => line.msg === "request").length,
    0,
    "the impostor never saw a request",
  );
  const ejected = await waitForLog(via.logs, (line) => line.msg === "upstream endpoint ejected");
  t.match(ejected, {
    level: "warn",
    upstream: "orders",
    endpoint: wrong,
    reason: "connect_failure",
    detail:
      /presented spiffe:\/\/example\.org\/ns\/payments\/sa\/payments, expected spiffe:\/\/example\.org\/ns\/orders\/sa\/orders/,
    ejected_for_ms: 30_000,
  });
  const handshake = await waitForLog(via.logs, (line) => line.msg === "handshake failed");
  t.match(handshake, { reason: "upstream_identity_mismatch", upstream: "orders", endpoint: wrong });
  const stats = via.sidecar.upstreamStats().orders!;
  const state = stats.endpoints.find((endpoint) => endpoint.address === wrong);
  t.equal(state?.state, "ejected");
  t.ok(Date.parse(state!.ejectedUntil!) > Date.now(), "ejected until later");
  t.ok(stats.retries.not_sent >= 1, "the request that met it went elsewhere");
});

/** What a caller knows of the endpoint at `address` after requests: its state, the ejections and retries. */
async function afterRefusal(t: Test, via: Caller, address: string, prefix: string): Promise<void> {
  t.equal(
    served(instances[0]!, prefix) + served(instances[1]!, prefix),
    9,
    "every GET was served by the other endpoints, once",
  );
  const stats = via.sidecar.upstreamStats().orders!;
  t.equal(stats.ejections, 1, "ejected after its first refusal, and only then");
  t.same(stats.retries, { not_sent: 1, idempotent: 0 }, "the one GET that met it went to another endpoint");
  t.equal(stats.handshakes.full, 3, "one connection to each endpoint: none to it again while ejected");
  const { body } = await getJson<StatusBody>(`${via.adminUrl}/status`);
  t.match(
    body.upstreams.orders!.endpoints.find((endpoint) => endpoint.address === address),
    { state: "ejected", ejectedUntil: String },
  );
  const metrics = await (await fetch(`${via.adminUrl}/metrics`)).text();
  t.match(metrics, /^mtlsd_upstream_ejections_total\{upstream="orders"\} 1$/m);
  t.match(metrics, /^mtlsd_handshake_failures_total\{direction="outbound",reason="unknown_ca"\} 1$/m);
}

for (const protocol of ["http1", "h2"] as const) {
  t.test(
    `an endpoint whose TLS alert refuses our certificate is ejected at once, and GETs go to the others (${protocol})`,
    async (t) => {
      // Trusts only the stranger CA, so it refuses our certificate; in TLS 1.3 its alert comes on the first read.
      const refusing = await startOpensslServer({
        certPath: orders.certPath,
        keyPath: orders.keyPath,
        caPath: stranger.bundlePath,
        ...(protocol === "h2" ? { alpn: "h2" } : {}),
      });
      t.teardown(() => refusing.stop());
      const via = await caller(t, {
        endpoints: [addresses[0], refusing.address, addresses[1]],
        balance: "round_robin",
        protocol,
      });
      const prefix = `/alert-${protocol}/`;
      for (let i = 0; i < 9; i++) t.equal((await send(via, `${prefix}${i}`)).status, 200);
      t.match(await waitForLog(via.logs, (line) => line.msg === "upstream endpoint ejected"), {
        level: "warn",
        upstream: "orders",
        endpoint: refusing.address,
        reason: "connect_failure",
        detail: 'unknown_ca: orders sent the TLS alert "unknown ca" (it did not accept our certificate)',
        ejected_for_ms: 30_000,
      });
      t.match(await waitForLog(via.logs, (line) => line.msg === "handshake failed"), {
        direction: "outbound",
        reason: "unknown_ca",
        upstream: "orders",
        endpoint: refusing.address,
      });
      await afterRefusal(t, via, refusing.address, prefix);
    },
  );

  t.test(
    `an mtlsd endpoint that answers 403 refusing our certificate is ejected at once, and GETs go to the others (${protocol})`,
    async (t) => {
      // The orders SPIFFE ID from the stranger CA, whose sidecar trusts only that CA: it completes the handshake,
      // then answers 403 unknown_ca. The caller trusts both roots, so this server passes its identity check.
      const refusing = await instance("127.0.0.1:0", strangerOrders, app.url, stranger);
      t.teardown(() => refusing.stop());
      const via = await caller(
        t,
        {
          endpoints: [addresses[0], inboundAddress(refusing), addresses[1]],
          balance: "round_robin",
          protocol,
        },
        {},
        bothRoots,
      );
      const prefix = `/refused-${protocol}/`;
      for (let i = 0; i < 9; i++) t.equal((await send(via, `${prefix}${i}`)).status, 200);
      t.equal(served(refusing, prefix), 0, "its app never saw a request");
      t.match(await waitForLog(refusing.logs, (line) => line.msg === "handshake failed"), {
        direction: "inbound",
        reason: "unknown_ca",
      });
      t.match(await waitForLog(via.logs, (line) => line.msg === "upstream endpoint ejected"), {
        level: "warn",
        upstream: "orders",
        endpoint: inboundAddress(refusing),
        reason: "connect_failure",
        detail: "orders refused our certificate: unknown_ca",
        ejected_for_ms: 30_000,
      });
      t.match(await waitForLog(via.logs, (line) => line.msg === "handshake failed"), {
        direction: "outbound",
        reason: "unknown_ca",
        upstream: "orders",
        endpoint: inboundAddress(refusing),
      });
      await afterRefusal(t, via, inboundAddress(refusing), prefix);
    },
  );
}

t.test(
  "an endpoint that answers 403 policy_denied is healthy: its answer is passed on, nothing ejected",
  async (t) => {
    const denying = await startSidecar(pki, orders, {
      inbound: {
        listen: "127.0.0.1:0",
        app: app.url,
        policy: {
          rules: [{ name: "nobody", action: "allow", from: ["spiffe://example.org/ns/nobody/sa/nobody"] }],
        },
      },
    });
    t.teardown(() => denying.stop());
    const via = await caller(t, {
      endpoints: [addresses[0], inboundAddress(denying)],
      balance: "round_robin",
      outlier: { consecutiveFailures: 1 },
    });
    const answers: string[] = [];
    for (let i = 0; i < 6; i++) {
      const response = await send(via, `/denied/${i}`);
      answers.push(`${response.status} ${response.headers["x-mtlsd-reason"] ?? "-"}`);
    }
    t.same(
      answers.sort(),
      ["200 -", "200 -", "200 -", "403 policy_denied", "403 policy_denied", "403 policy_denied"],
      "each endpoint kept its turn; the denial reached the app as the upstream made it",
    );
    const stats = via.sidecar.upstreamStats().orders!;
    t.equal(stats.ejections, 0);
    t.same(stats.retries, { not_sent: 0, idempotent: 0 }, "a denial is an answer, not sent again");
    t.same(
      stats.endpoints.map((endpoint) => endpoint.state),
      ["healthy", "healthy"],
    );
    t.notOk(
      via.logs.some((line) => line.msg === "handshake failed"),
      "a policy denial is not a refused certificate",
    );
  },
);

t.test("least_request sends requests to the endpoints with fewer in flight, not to a busy one", async (t) => {
  const gate = await startGateApp();
  t.teardown(() => gate.close());
  const busy = await instance("127.0.0.1:0", orders, gate.url);
  t.teardown(() => busy.stop());
  // free.test resolves to nothing yet: the first requests can only go to the busy instance, where they wait.
  const via = await caller(t, {
    endpoints: [inboundAddress(busy), `free.test:${port}`],
    resolveInterval: "100ms",
  });
  const held = Array.from({ length: 4 }, (_, i) => send(via, `/gate/${i}`));
  await gate.arrived(4);
  // Two free instances join. The busy endpoint is the same one, still with its 4 requests in flight.
  dns.set("free.test", ["127.0.0.1", "127.0.0.2"]);
  await until(() => via.sidecar.upstreamStats().orders!.endpoints.length === 3, "the free instances joined");
  t.match(
    via.sidecar
      .upstreamStats()
      .orders!.endpoints.find((endpoint) => endpoint.address === inboundAddress(busy)),
    { pending: 4 },
  );
  // Rounds of 3 at once: a free endpoint never has 4 in flight, so the busy one is never the better of two. A
  // random pick would send it a third of them (none of 24: odds under 1 in 10,000).
  for (let round = 0; round < 8; round++) {
    const answers = await Promise.all(Array.from({ length: 3 }, (_, i) => send(via, `/least/${round}-${i}`)));
    t.same(
      answers.map((answer) => answer.status),
      [200, 200, 200],
    );
  }
  const sentTo = (address: string) =>
    via.logs.filter(
      (line) =>
        line.msg === "request" && String(line.path).startsWith("/least/") && line.endpoint === address,
    ).length;
  t.equal(sentTo(inboundAddress(busy)), 0, "the busy endpoint got none");
  t.equal(sentTo(addresses[0]!) + sentTo(addresses[1]!), 24, "the free ones got all 24");
  t.ok(sentTo(addresses[0]!) > 0 && sentTo(addresses[1]!) > 0, "and shared them");
  gate.release();
  t.same(
    (await Promise.all(held)).map((answer) => answer.status),
    [200, 200, 200, 200],
    "the held requests finish",
  );
});

for (const protocol of ["h2", "http1"]) {
  t.test(
    `a POST whose endpoint refuses the connection is sent, body and all, to another (${protocol})`,
    async (t) => {
      const closed = net.createServer();
      await new Promise<void>((resolve) => closed.listen(0, "127.0.0.1", resolve));
      const refusing = `127.0.0.1:${(closed.address() as net.AddressInfo).port}`;
      await new Promise<void>((resolve) => closed.close(() => resolve()));
      const via = await caller(t, { endpoints: [refusing, addresses[0]], balance: "round_robin", protocol });
      const body = "x".repeat(1000);
      const prefix = `/post-retry-${protocol}/`;
      for (let i = 0; i < 4; i++) {
        const response = await send(via, `${prefix}${i}`, { method: "POST", body });
        t.equal(response.status, 200);
        t.equal(JSON.parse(response.text).bodyBytes, 1000, "the whole body arrived");
      }
      t.equal(served(instances[0]!, prefix), 4, "each POST served once");
      t.match(await waitForLog(via.logs, (line) => line.msg === "upstream endpoint ejected"), {
        endpoint: refusing,
        reason: "connect_failure",
        detail: /ECONNREFUSED/,
      });
      const metrics = await (await fetch(`${via.adminUrl}/metrics`)).text();
      t.match(metrics, /^mtlsd_upstream_retries_total\{upstream="orders",reason="not_sent"\} [1-9]/m);
      t.match(metrics, /^mtlsd_upstream_ejections_total\{upstream="orders"\} 1$/m);
      t.match(metrics, /^mtlsd_upstream_endpoints\{upstream="orders",state="ejected"\} 1$/m);
    },
  );
}

t.test(
  "5xx answers are passed on, and consecutiveFailures of them in a row eject the endpoint",
  async (t) => {
    const failing = await instance("127.0.0.1:0", orders, await failingApp(t));
    t.teardown(() => failing.stop());
    const via = await caller(t, {
      endpoints: [addresses[0], inboundAddress(failing)],
      balance: "round_robin",
      outlier: { consecutiveFailures: 2, ejectFor: "1m" },
    });
    const statuses = [];
    for (let i = 0; i < 10; i++) statuses.push((await send(via, `/five-hundreds/${i}`)).status);
    t.equal(statuses.filter((status) => status === 503).length, 2, `two 503s, then none (${statuses})`);
    t.same(statuses.slice(-6), [200, 200, 200, 200, 200, 200]);
    t.match(await waitForLog(via.logs, (line) => line.msg === "upstream endpoint ejected"), {
      endpoint: inboundAddress(failing),
      reason: "consecutive_failures",
      detail: "answered 503",
      ejected_for_ms: 60_000,
    });
  },
);

t.test("when every endpoint is ejected, requests still go to all of them", async (t) => {
  const failingUrl = await failingApp(t);
  const failing = await Promise.all([
    instance("127.0.0.1:0", orders, failingUrl),
    instance("127.0.0.1:0", orders, failingUrl),
  ]);
  t.teardown(() => Promise.all(failing.map((running) => running.stop())));
  const via = await caller(t, {
    endpoints: failing.map(inboundAddress),
    balance: "round_robin",
    outlier: { consecutiveFailures: 1 },
  });
  for (let i = 0; i < 8; i++) {
    const response = await send(via, `/all-ejected/${i}`);
    t.equal(response.headers["x-app"], "failing", "the app's own 503, not a 502 from mtlsd");
  }
  t.same(
    via.sidecar.upstreamStats().orders!.endpoints.map((endpoint) => endpoint.state),
    ["ejected", "ejected"],
  );
  for (const running of failing) t.ok(served(running, "/all-ejected/") >= 3, "each kept getting requests");
});

t.test("endpoint metrics keep an address label only while there are few", async (t) => {
  const via = await caller(t, { endpoints: addresses }, { metrics: { maxIdentityLabels: 2 } });
  for (let i = 0; i < 12; i++) await send(via, `/labels/${i}`);
  const metrics = await (await fetch(`${via.adminUrl}/metrics`)).text();
  const labels = [
    ...metrics.matchAll(/^mtlsd_upstream_endpoint_connections\{upstream="orders",address="([^"]+)"\}/gm),
  ]
    .map((match) => match[1])
    .sort();
  t.same(labels, [addresses[0], addresses[1], "other"].sort(), "two addresses, then other");
  t.match(metrics, /^mtlsd_upstream_endpoints\{upstream="orders",state="healthy"\} 3$/m);
});

t.test("a WebSocket upgrade whose endpoint refuses the connection is opened on another", async (t) => {
  const wsApp = await startApp(0, "ws-app.ts");
  t.teardown(() => wsApp.stop());
  const wsInstance = await instance("127.0.0.1:0", orders, wsApp.url);
  t.teardown(() => wsInstance.stop());
  const closed = net.createServer();
  await new Promise<void>((resolve) => closed.listen(0, "127.0.0.1", resolve));
  const refusing = `127.0.0.1:${(closed.address() as net.AddressInfo).port}`;
  await new Promise<void>((resolve) => closed.close(() => resolve()));
  const via = await caller(t, { endpoints: [refusing, inboundAddress(wsInstance)], balance: "round_robin" });
  for (const round of [1, 2]) {
    const socket = new WebSocket(`${via.proxyUrl.replace("http:", "ws:")}/ws/${round}`, {
      headers: { host: "orders" },
    });
    const [hello] = (await once(socket, "message")) as [Buffer];
    t.match(JSON.parse(hello.toString()), { hello: `/ws/${round}` }, `upgrade ${round} reached the app`);
    socket.close();
    await once(socket, "close");
  }
  t.ok(
    via.sidecar.upstreamStats().orders!.retries.not_sent >= 1,
    "one of them met the refusing endpoint first",
  );
});

t.test("over HTTP/1.1, a POST whose endpoint refuses the connection is sent whole to another", async (t) => {
  const closed = net.createServer();
  await new Promise<void>((resolve) => closed.listen(0, "127.0.0.1", resolve));
  const refusing = `127.0.0.1:${(closed.address() as net.AddressInfo).port}`;
  await new Promise<void>((resolve) => closed.close(() => resolve()));
  const via = await caller(t, {
    endpoints: [refusing, addresses[0]],
    balance: "round_robin",
    protocol: "http1",
  });
  for (let i = 0; i < 4; i++) {
    const response = await send(via, `/refused-post/${i}`, { method: "POST", body: "order=42" });
    t.equal(response.status, 200, `POST ${i} answered`);
    t.match(JSON.parse(response.text), { method: "POST", bodyBytes: 8 }, "with its body whole");
  }
  const stats = via.sidecar.upstreamStats().orders!;
  t.ok(
    stats.retries.not_sent >= 1,
    "the POSTs that met the refusal went to the other endpoint, never written",
  );
  t.equal(stats.retries.idempotent, 0);
  t.equal(served(instances[0]!, "/refused-post/"), 4, "each reached the app once");
});

t.test("a large answer through the balancer reaches a slow reader whole", async (t) => {
  const via = await caller(t, { endpoints: addresses });
  // More than the kernel buffers between here and the caller hold (Linux lets TCP grow them to 32 MiB).
  const bytes = 64 * 1024 * 1024;
  const response = await request(`${via.proxyUrl}/download?bytes=${bytes}`, { headers: { host: "orders" } });
  t.equal(response.statusCode, 200);
  // Not read for a while: the buffers fill, and the endpoint's stream is paused until the reader catches up.
  await new Promise((resolve) => setTimeout(resolve, 300));
  let received = 0;
  for await (const chunk of response.body) received += (chunk as Buffer).length;
  t.equal(received, bytes);
});

t.test("with a single endpoint, retries send a GET whose connection was lost to it again", async (t) => {
  // The right identity; the first connection is dropped as soon as the request arrives, later ones answered.
  let connections = 0;
  const server = tls.createServer(
    { cert: orders.chainPem, key: orders.keyPem, ca: pki.bundlePem, requestCert: true },
    (socket) => {
      const first = connections++ === 0;
      socket.on("error", () => {});
      socket.on("data", () => {
        if (first) socket.destroy();
        else socket.write("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nagain");
      });
    },
  );
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())));
  const via = await caller(t, {
    endpoints: [`127.0.0.1:${(server.address() as net.AddressInfo).port}`],
    protocol: "http1",
    retries: 1,
  });
  const response = await send(via, "/lost-once");
  t.equal(response.status, 200);
  t.equal(response.text, "again");
  t.equal(connections, 2, "sent again on a new connection to the same endpoint");
  t.equal(via.sidecar.upstreamStats().orders!.retries.idempotent, 1);
});

t.test("a GET that timed out is not sent again, whatever retries allows", async (t) => {
  const via = await caller(t, { endpoints: addresses, retries: 2, timeout: "300ms" });
  const slowLines = () =>
    instances.reduce((sum, running) => sum + running.logs.filter((line) => line.path === "/slow").length, 0);
  const before = slowLines();
  const response = await send(via, "/slow?ms=3000");
  t.equal(response.status, 504);
  t.equal(response.headers["x-mtlsd-reason"], "upstream_timeout");
  t.same(via.sidecar.upstreamStats().orders!.retries, { not_sent: 0, idempotent: 0 });
  await until(() => slowLines() > before, "the instance logs the cancelled request");
  t.equal(slowLines(), before + 1, "one instance saw it, once");
});

t.test("each endpoint keeps its own pool and resumes its own TLS sessions", async (t) => {
  const pooled = await caller(t, { endpoints: addresses, balance: "round_robin" });
  for (let i = 0; i < 12; i++) t.equal((await send(pooled, `/pooled/${i}`)).status, 200);
  t.same(pooled.sidecar.upstreamStats().orders!.handshakes, { full: 3, resumed: 0 }, "one connection each");
  t.equal(pooled.sidecar.upstreamStats().orders!.connections, 3);

  // Pooled connections close after 100 ms idle: each endpoint's second connection resumes its first's session.
  const churning = await caller(
    t,
    { endpoints: addresses, balance: "round_robin" },
    { limits: { keepAliveTimeout: "100ms" } },
  );
  for (let i = 0; i < 6; i++) {
    t.equal((await send(churning, `/churn/${i}`)).status, 200);
    if (i === 2)
      await until(() => churning.sidecar.upstreamStats().orders!.connections === 0, "idle ones closed");
  }
  t.same(churning.sidecar.upstreamStats().orders!.handshakes, { full: 3, resumed: 3 });
});
