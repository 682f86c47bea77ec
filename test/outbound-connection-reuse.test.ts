// An app that opens a connection per request does not pay a TLS handshake per request.
import tls from "node:tls";
import t from "tap";
import { startApp } from "./helpers/app.ts";
import { appRequest, inboundAddress, startCaller, startUpstream } from "./helpers/outbound.ts";
import { createTestPki } from "./helpers/pki.ts";
import { installFiles } from "./helpers/rotation.ts";

const pki = await createTestPki();
t.teardown(() => pki.cleanup());
const app = await startApp();
t.teardown(() => app.stop());
const frontend = await pki.identity("frontend");
const orders = await pki.identity("orders");

// Closes idle connections after 100 ms and tells clients so (Keep-Alive: timeout=0): every request gets a
// new connection, which is how pooled connections churn when an upstream restarts or trims idle ones.
const churning = await startUpstream(pki, orders, app, [frontend.spiffeId], {
  limits: { keepAliveTimeout: "100ms" },
});
t.teardown(() => churning.stop());

/** Accepted TLS connections on an upstream sidecar's inbound listener. */
function accepted(upstream: typeof churning): { connections: number; resumed: number } {
  return upstream.sidecar.inboundStats()!;
}

async function sequential(count: number, url: string, headers: string[] = []): Promise<number[]> {
  const statuses: number[] = [];
  for (let i = 0; i < count; i++) {
    const result = await appRequest(url, { headers });
    statuses.push(result.response?.status ?? 0);
  }
  return statuses;
}

t.test("apps that send Connection: close on every request ride one pooled upstream connection", async (t) => {
  const upstream = await startUpstream(pki, orders, app, [frontend.spiffeId]);
  t.teardown(() => upstream.stop());
  const caller = await startCaller(pki, frontend, {
    orders: { address: inboundAddress(upstream), identity: orders.spiffeId },
  });
  t.teardown(() => caller.stop());
  const requests = 20;
  for (let i = 0; i < requests; i++) {
    // A new curl process each time: a new app connection, closed after one request.
    const result = await appRequest(`${caller.proxyUrl}/v1/orders/${i}`, {
      headers: ["Host: orders", "Connection: close"],
    });
    t.equal(result.response?.status, 200, `request ${i} succeeds`);
    if (i === 0) t.equal(result.response?.headers.connection, "close", "the app's own connection closes");
  }
  t.equal(
    accepted(upstream).connections,
    1,
    `the upstream accepted one TLS connection for ${requests} requests`,
  );
  t.same(caller.sidecar.upstreamStats().orders!.handshakes, { full: 1, resumed: 0 });
  t.equal(caller.sidecar.upstreamStats().orders!.connections, 1, "and it stays open in the pool");
});

t.test("concurrent requests open at most pool.connections upstream connections", async (t) => {
  const upstream = await startUpstream(pki, orders, app, [frontend.spiffeId]);
  t.teardown(() => upstream.stop());
  const caller = await startCaller(pki, frontend, {
    orders: {
      address: inboundAddress(upstream),
      identity: orders.spiffeId,
      pool: { connections: 2 },
      // The HTTP/1.1 pool: one request per connection at a time (HTTP/2: test/outbound-http2.test.ts).
      protocol: "http1",
    },
  });
  t.teardown(() => caller.stop());
  const results = await Promise.all(
    Array.from({ length: 6 }, () =>
      appRequest(`${caller.proxyUrl}/slow?ms=300`, { headers: ["Host: orders", "Connection: close"] }),
    ),
  );
  t.same(
    results.map((result) => result.response?.status),
    [200, 200, 200, 200, 200, 200],
    "all six complete, queued behind the pool",
  );
  t.equal(accepted(upstream).connections, 2, "the upstream accepted exactly pool.connections");
});

t.test("requests waiting for an HTTP/1.1 connection count as pending in the upstream's stats", async (t) => {
  const upstream = await startUpstream(pki, orders, app, [frontend.spiffeId]);
  t.teardown(() => upstream.stop());
  const caller = await startCaller(pki, frontend, {
    orders: {
      address: inboundAddress(upstream),
      identity: orders.spiffeId,
      pool: { connections: 2 },
      protocol: "http1",
    },
  });
  t.teardown(() => caller.stop());
  const stats = () => caller.sidecar.upstreamStats().orders!;
  const requests = Array.from({ length: 6 }, () =>
    appRequest(`${caller.proxyUrl}/slow?ms=1500`, { headers: ["Host: orders"] }),
  );
  const deadline = Date.now() + 5000;
  while (stats().pending < 6 && Date.now() < deadline)
    await new Promise((resolve) => setTimeout(resolve, 20));
  t.match(stats(), { connections: 2, pending: 6 }, "two on the connections, four waiting for them");
  const results = await Promise.all(requests);
  t.same(
    results.map((result) => result.response?.status),
    [200, 200, 200, 200, 200, 200],
  );
  t.match(stats(), { connections: 2, pending: 0 }, "nothing waits once they are done; the connections stay");
});

t.test("when pooled connections churn, new ones resume the TLS session", async (t) => {
  const caller = await startCaller(pki, frontend, {
    orders: { address: inboundAddress(churning), identity: orders.spiffeId, protocol: "http1" },
  });
  t.teardown(() => caller.stop());
  const before = accepted(churning);
  const requests = 10;
  const statuses = await sequential(requests, `${caller.proxyUrl}/churn`, ["Host: orders"]);
  t.same(statuses, Array(requests).fill(200), "every request succeeds on a resumed connection");
  const { handshakes } = caller.sidecar.upstreamStats().orders!;
  const after = accepted(churning);
  t.equal(after.connections - before.connections, requests, "each request needed a new connection");
  t.equal(handshakes.full + handshakes.resumed, requests);
  t.equal(handshakes.full, 1, "only the first connection paid a full handshake");
  t.equal(after.resumed - before.resumed, handshakes.resumed, "the upstream agrees on how many resumed");
});

t.test("SecureContexts are built once per credential version, never per connection", async (t) => {
  const caller = await startCaller(pki, frontend, {
    orders: { address: inboundAddress(churning), identity: orders.spiffeId, protocol: "http1" },
  });
  t.teardown(() => caller.stop());
  // Every outbound connection goes through tls.connect: record what each was given.
  const contexts: (tls.SecureContext | undefined)[] = [];
  let ownMaterial = 0;
  const connect = tls.connect;
  const patched = tls as { connect: (options: tls.ConnectionOptions) => tls.TLSSocket };
  patched.connect = (options: tls.ConnectionOptions) => {
    if (options.port === churning.inboundPort) {
      contexts.push(options.secureContext);
      if (options.cert || options.key || options.ca || options.pfx) ownMaterial++;
    }
    return connect(options);
  };
  t.teardown(() => {
    patched.connect = connect;
  });

  const first = await sequential(25, `${caller.proxyUrl}/context`, ["Host: orders"]);
  t.same(first, Array(25).fill(200));
  const next = await pki.identity("frontend-next", { spiffeId: frontend.spiffeId });
  await installFiles(caller.sidecar.store, {
    cert: next.certPath,
    key: next.keyPath,
    trustBundle: pki.bundlePath,
  });
  const second = await sequential(25, `${caller.proxyUrl}/context`, ["Host: orders"]);
  t.same(second, Array(25).fill(200));

  t.equal(contexts.length, 50, "50 requests over churning connections opened 50 connections");
  t.equal(ownMaterial, 0, "no connection was given key material to build a context of its own");
  t.ok(
    contexts.every((context) => context !== undefined),
    "every connection got a prebuilt SecureContext",
  );
  t.equal(new Set(contexts.slice(0, 25)).size, 1, "one context for the first credential version");
  t.equal(new Set(contexts.slice(25)).size, 1, "one context for the second");
  t.not(contexts[0], contexts[25], "and they differ");
});
