// What Prometheus reads from /metrics after real traffic, parsed as Prometheus parses the text format.
import { writeFile } from "node:fs/promises";
import http from "node:http";
import t from "tap";
import { startApp } from "./helpers/app.ts";
import { mtlsClient } from "./helpers/clients.ts";
import { createTestPki, type IdentityFiles } from "./helpers/pki.ts";
import { type MetricFamily, parsePrometheusText, samplesOf, seriesValue } from "./helpers/prometheus.ts";
import { freePort } from "./helpers/prometheus-server.ts";
import { type RunningSidecar, startSidecar } from "./helpers/sidecar.ts";

const pki = await createTestPki();
t.teardown(() => pki.cleanup());
const app = await startApp();
t.teardown(() => app.stop());
const orders = await pki.identity("orders");
const frontend = await pki.identity("frontend");
const policy = {
  rules: [
    { name: "no-admin", action: "deny", from: ["*"], to: [{ paths: ["/admin/*"] }] },
    { name: "reads", action: "allow", from: ["*"], to: [{ methods: ["GET"] }] },
    { name: "would-deny-reports", action: "deny", from: ["*"], to: [{ paths: ["/reports"] }], dryRun: true },
  ],
  overrides: [
    {
      from: [frontend.spiffeId],
      to: [{ paths: ["/refunds/*"] }],
      reason: "INC-1234 refunds stuck",
      approvedBy: "alice@example.org",
      expires: new Date(Date.now() + 3_600_000).toISOString(),
    },
  ],
};
const sidecar = await startSidecar(pki, orders, { inbound: { listen: "127.0.0.1:0", app: app.url, policy } });
t.teardown(() => sidecar.stop());

async function scrape(
  running: RunningSidecar,
): Promise<{ families: Map<string, MetricFamily>; text: string }> {
  const response = await fetch(`${running.adminUrl}/metrics`, { signal: AbortSignal.timeout(5000) });
  if (response.status !== 200) throw new Error(`/metrics answered ${response.status}`);
  const contentType = response.headers.get("content-type");
  if (contentType !== "text/plain; version=0.0.4; charset=utf-8")
    throw new Error(`/metrics content-type ${contentType}`);
  const text = await response.text();
  return { families: parsePrometheusText(text), text };
}

/** GETs `path` through the inbound listener as `who`, and reads the whole response. */
async function call(who: IdentityFiles | null, path: string, method = "GET", port = sidecar.inboundPort) {
  const client = mtlsClient(`https://localhost:${port}`, {
    ca: pki.bundlePem,
    ...(who ? { cert: who.chainPem, key: who.keyPem } : {}),
  });
  try {
    const response = await client.client.request({ path, method });
    await response.body.text();
    return response.statusCode;
  } finally {
    await client.close();
  }
}

/** A plain HTTP request as the app makes it to its outbound listener, naming the upstream in Host. */
function viaOutbound(port: number, host: string, path: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const request = http.request({ host: "127.0.0.1", port, path, headers: { host }, timeout: 10_000 });
    request.on("response", (response) => {
      response.resume();
      response.on("end", () => resolve(response.statusCode!));
    });
    request.on("timeout", () => request.destroy(new Error("no response in 10 s")));
    request.on("error", reject);
    request.end();
  });
}

t.test("the exposition parser refuses malformed text, so these tests can fail", async (t) => {
  const valid = '# HELP a_total An \\\\ escape\n# TYPE a_total counter\na_total{x="q\\"uote"} 3\n';
  const parsed = parsePrometheusText(valid).get("a_total");
  t.equal(parsed?.help, "An \\ escape");
  t.same(parsed?.samples, [{ name: "a_total", labels: { x: 'q"uote' }, value: 3 }]);
  const broken: Record<string, string> = {
    "no final newline": "a 1",
    "unterminated label value": 'a{x="1} 1\n',
    "label without quotes": "a{x=1} 1\n",
    "bad value": "a one\n",
    "bad escape": 'a{x="\\t"} 1\n',
    "duplicate label": 'a{x="1",x="2"} 1\n',
    "repeated series": "a 1\na 2\n",
    "family split in two": 'a 1\nb 1\na{x="1"} 2\n',
    "TYPE after samples": "a 1\n# TYPE a gauge\n",
    "negative counter": "# TYPE a counter\na -1\n",
    "histogram without +Inf": '# TYPE h histogram\nh_bucket{le="1"} 1\nh_sum 1\nh_count 1\n',
    "histogram not cumulative":
      '# TYPE h histogram\nh_bucket{le="1"} 2\nh_bucket{le="2"} 1\nh_bucket{le="+Inf"} 2\nh_sum 1\nh_count 2\n',
    "+Inf bucket differs from _count": '# TYPE h histogram\nh_bucket{le="+Inf"} 2\nh_sum 1\nh_count 3\n',
  };
  for (const [problem, text] of Object.entries(broken)) t.throws(() => parsePrometheusText(text), problem);
});

t.test("/metrics declares every documented metric with its type", async (t) => {
  const { families } = await scrape(sidecar);
  const expected: Record<string, string> = {
    mtlsd_requests_total: "counter",
    mtlsd_handshake_failures_total: "counter",
    mtlsd_credential_reloads_total: "counter",
    mtlsd_policy_shadow_total: "counter",
    mtlsd_request_duration_seconds: "histogram",
    mtlsd_cert_expiry_seconds: "gauge",
    mtlsd_upstream_connections: "gauge",
    mtlsd_upstream_pending_requests: "gauge",
    mtlsd_policy_denials_total: "counter",
    mtlsd_request_errors_total: "counter",
    mtlsd_policy_overrides_total: "counter",
    mtlsd_cert_lifetime_seconds: "gauge",
    mtlsd_identity_info: "gauge",
    mtlsd_credential_last_reload_successful: "gauge",
    mtlsd_ready: "gauge",
  };
  for (const [name, type] of Object.entries(expected)) {
    t.equal(families.get(name)?.type, type, `${name} is a ${type}`);
    t.ok(families.get(name)?.help, `${name} has HELP text`);
  }
});

t.test("Node process metrics come with the mtlsd ones", async (t) => {
  const { families } = await scrape(sidecar);
  for (const name of [
    "process_cpu_user_seconds_total",
    "process_resident_memory_bytes",
    "process_open_fds",
    "nodejs_eventloop_lag_seconds",
    "nodejs_heap_size_used_bytes",
  ]) {
    t.ok(families.has(name), name);
  }
});

t.test("requests are counted by direction, decision, source identity and status class", async (t) => {
  t.equal(await call(frontend, "/v1/orders"), 200);
  t.equal(await call(frontend, "/v1/orders"), 200);
  t.equal(await call(frontend, "/v1/orders", "POST"), 403);
  const { families } = await scrape(sidecar);
  const labels = { direction: "inbound", source_identity: frontend.spiffeId };
  t.equal(
    seriesValue(families, "mtlsd_requests_total", { ...labels, decision: "allow", status_class: "2xx" }),
    2,
  );
  t.equal(
    seriesValue(families, "mtlsd_requests_total", { ...labels, decision: "deny", status_class: "4xx" }),
    1,
  );
  for (const sample of samplesOf(families, "mtlsd_requests_total", { direction: "inbound" })) {
    t.notOk("destination_identity" in sample.labels, "inbound series carry the source identity only");
  }
});

t.test("refused handshakes are counted by reason", async (t) => {
  const stranger = await (await createTestPki()).identity("stranger");
  t.equal(await call(null, "/no-cert"), 403);
  t.equal(await call(stranger, "/unknown-ca"), 403);
  const { families } = await scrape(sidecar);
  const failures = (reason: string) =>
    seriesValue(families, "mtlsd_handshake_failures_total", { direction: "inbound", reason });
  t.equal(failures("no_client_cert"), 1);
  t.equal(failures("unknown_ca"), 1);
});

t.test("request durations land in sub-millisecond buckets, and the histogram is whole", async (t) => {
  t.equal(await call(frontend, "/timed"), 200);
  const { families } = await scrape(sidecar);
  const buckets = samplesOf(families, "mtlsd_request_duration_seconds_bucket", { direction: "inbound" });
  const bounds = buckets.map((sample) => Number(sample.labels.le));
  for (const bound of [0.0001, 0.00025, 0.0005, 0.001])
    t.ok(bounds.includes(bound), `a bucket at ${bound} s`);
  t.ok(bounds.filter((bound) => bound < 0.001).length >= 3, "three buckets below a millisecond");
  const count = seriesValue(families, "mtlsd_request_duration_seconds_count", { direction: "inbound" })!;
  const requests = samplesOf(families, "mtlsd_requests_total", { direction: "inbound" }).reduce(
    (sum, sample) => sum + sample.value,
    0,
  );
  t.equal(count, requests, "one observation per counted request");
  t.ok(seriesValue(families, "mtlsd_request_duration_seconds_sum", { direction: "inbound" })! > 0);
});

t.test("dry-run rule matches are counted by rule and shadow result", async (t) => {
  t.equal(await call(frontend, "/reports"), 200, "a dry-run deny does not deny");
  const { families } = await scrape(sidecar);
  t.equal(
    seriesValue(families, "mtlsd_policy_shadow_total", { rule: "would-deny-reports", result: "shadow_deny" }),
    1,
  );
});

t.test("policy denials are counted by the deciding rule and source identity", async (t) => {
  const denials = async (rule: string) =>
    seriesValue((await scrape(sidecar)).families, "mtlsd_policy_denials_total", {
      rule,
      source_identity: frontend.spiffeId,
    }) ?? 0;
  const before = { rule: await denials("no-admin"), default: await denials("default") };
  t.equal(await call(frontend, "/admin/users"), 403, "denied by a deny rule");
  t.equal(await call(frontend, "/v1/orders", "POST"), 403, "denied by the default");
  t.equal(await call(frontend, "/v1/orders", "POST"), 403);
  t.equal((await denials("no-admin")) - before.rule, 1);
  t.equal((await denials("default")) - before.default, 2);
});

t.test("a refused path is a denial of the request but not of the policy", async (t) => {
  const requests = (families: Map<string, MetricFamily>) =>
    seriesValue(families, "mtlsd_requests_total", {
      direction: "inbound",
      decision: "deny",
      source_identity: frontend.spiffeId,
      status_class: "4xx",
    }) ?? 0;
  const before = (await scrape(sidecar)).families;
  t.equal(await call(frontend, "/v1%2forders"), 400, "an encoded slash is a bad path");
  const after = (await scrape(sidecar)).families;
  t.same(samplesOf(after, "mtlsd_policy_denials_total"), samplesOf(before, "mtlsd_policy_denials_total"));
  t.equal(requests(after) - requests(before), 1);
});

t.test("a break-glass override's use is counted by source identity and approver", async (t) => {
  t.equal(await call(frontend, "/refunds/7", "POST"), 200, "no rule allows it; the override does");
  t.equal(await call(frontend, "/refunds/8", "POST"), 200);
  const { families } = await scrape(sidecar);
  t.same(
    samplesOf(families, "mtlsd_policy_overrides_total").map(({ labels, value }) => ({ labels, value })),
    [{ labels: { source_identity: frontend.spiffeId, approved_by: "alice@example.org" }, value: 2 }],
  );
});

t.test(
  "the certificate's lifetime is exported beside its expiry, for fraction-of-lifetime alerts",
  async (t) => {
    const { families } = await scrape(sidecar);
    const { notBefore, notAfter } = orders.issued.cert;
    t.equal(
      seriesValue(families, "mtlsd_cert_lifetime_seconds"),
      (notAfter.getTime() - notBefore.getTime()) / 1000,
    );
  },
);

t.test("the sidecar's own SPIFFE ID is an info series, to name the callee of inbound requests", async (t) => {
  const { families } = await scrape(sidecar);
  t.same(
    samplesOf(families, "mtlsd_identity_info").map(({ labels, value }) => ({ labels, value })),
    [{ labels: { identity: orders.spiffeId }, value: 1 }],
  );
});

t.test(
  "the last credential reload reads 0 while rotated files are refused, and 1 once good ones arrive",
  async (t) => {
    const own = await pki.identity("rotating");
    const other = await pki.identity("other-key");
    const rotating = await startSidecar(pki, own, {
      inbound: { listen: "127.0.0.1:0", app: app.url, policy },
    });
    t.teardown(() => rotating.stop());
    const successful = async () =>
      seriesValue((await scrape(rotating)).families, "mtlsd_credential_last_reload_successful", {
        source: "files",
      });
    t.equal(await successful(), 1, "the startup load succeeded");
    await writeFile(own.keyPath, other.keyPem);
    t.match(await rotating.sidecar.reloadCredentials(), { result: "failure" });
    t.equal(await successful(), 0, "a key that is not the certificate's is refused");
    const renewed = await pki.identity("rotating-renewed", { spiffeId: own.spiffeId });
    await writeFile(own.certPath, renewed.chainPem);
    await writeFile(own.keyPath, renewed.keyPem);
    t.match(await rotating.sidecar.reloadCredentials(), { result: "success" });
    t.equal(await successful(), 1, "a renewed certificate and its key are installed");
  },
);

t.test("mtlsd_ready follows /readyz: 0 while the app is unreachable", async (t) => {
  t.equal(seriesValue((await scrape(sidecar)).families, "mtlsd_ready"), 1);
  const port = await freePort();
  const orphan = await startSidecar(pki, orders, {
    inbound: { listen: "127.0.0.1:0", app: `http://127.0.0.1:${port}`, policy },
  });
  t.teardown(() => orphan.stop());
  t.equal(seriesValue((await scrape(orphan)).families, "mtlsd_ready"), 0);
  t.equal((await fetch(`${orphan.adminUrl}/readyz`)).status, 503);
});

t.test("the certificate expiry gauge counts the seconds left", async (t) => {
  const { families } = await scrape(sidecar);
  const seconds = seriesValue(families, "mtlsd_cert_expiry_seconds")!;
  const expected = (orders.issued.cert.notAfter.getTime() - Date.now()) / 1000;
  t.ok(Math.abs(seconds - expected) < 60, `${seconds} s left, expected about ${expected} s`);
});

t.test(
  "identity labels stop at metrics.maxIdentityLabels; later identities are counted as other",
  async (t) => {
    const capped = await startSidecar(pki, orders, {
      inbound: { listen: "127.0.0.1:0", app: app.url, policy },
      metrics: { maxIdentityLabels: 2 },
    });
    t.teardown(() => capped.stop());
    const clients = await Promise.all(["c1", "c2", "c3", "c4"].map((name) => pki.identity(name)));
    for (const client of clients) t.equal(await call(client, "/", "GET", capped.inboundPort), 200);
    t.equal(await call(clients[0]!, "/", "GET", capped.inboundPort), 200, "a known identity keeps its label");
    const { families } = await scrape(capped);
    const byIdentity = Object.fromEntries(
      samplesOf(families, "mtlsd_requests_total", { direction: "inbound" }).map((sample) => [
        sample.labels.source_identity,
        sample.value,
      ]),
    );
    t.same(byIdentity, { [clients[0]!.spiffeId]: 2, [clients[1]!.spiffeId]: 1, other: 2 });
  },
);

t.test("outbound requests are counted by destination, and the pool gauges follow the upstream", async (t) => {
  const caller = await startSidecar(pki, frontend, {
    outbound: {
      listen: "127.0.0.1:0",
      upstreams: {
        orders: {
          address: `127.0.0.1:${sidecar.inboundPort}`,
          identity: orders.spiffeId,
          pool: { connections: 4 },
        },
      },
    },
  });
  t.teardown(() => caller.stop());
  const port = caller.sidecar.addresses().outbound!.port;
  t.equal(await viaOutbound(port, "orders", "/v1/orders/1"), 200);
  t.equal(await viaOutbound(port, "orders", "/v1/orders/2"), 200);
  t.equal(await viaOutbound(port, "nowhere", "/"), 502, "an unknown upstream");

  const slow = viaOutbound(port, "orders", "/slow?ms=1500");
  let during: Map<string, MetricFamily> | undefined;
  for (const deadline = Date.now() + 3000; Date.now() < deadline; ) {
    const { families } = await scrape(caller);
    if (seriesValue(families, "mtlsd_upstream_pending_requests", { upstream: "orders" }) === 1) {
      during = families;
      break;
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  t.ok(during, "the slow request shows as pending while it is in flight");
  t.equal(await slow, 200);

  const { families } = await scrape(caller);
  const sent = { direction: "outbound", destination_identity: orders.spiffeId, decision: "allow" };
  t.equal(seriesValue(families, "mtlsd_requests_total", { ...sent, status_class: "2xx" }), 3);
  t.equal(
    seriesValue(families, "mtlsd_requests_total", {
      direction: "outbound",
      decision: "deny",
      status_class: "5xx",
    }),
    1,
  );
  const connections = seriesValue(families, "mtlsd_upstream_connections", { upstream: "orders" })!;
  t.ok(connections >= 1 && connections <= 4, `${connections} pooled connections, within pool.connections`);
  t.equal(seriesValue(families, "mtlsd_upstream_pending_requests", { upstream: "orders" }), 0);
  const status = (await (await fetch(`${caller.adminUrl}/status`)).json()) as {
    upstreams: Record<string, { connections: number; pending: number }>;
  };
  t.same(status.upstreams.orders, {
    address: `127.0.0.1:${sidecar.inboundPort}`,
    identity: orders.spiffeId,
    connections,
    pending: 0,
    endpoints: [
      {
        address: `127.0.0.1:${sidecar.inboundPort}`,
        state: "healthy",
        ejectedUntil: null,
        connections,
        pending: 0,
      },
    ],
  });
});

t.test("the text agrees with prom-client's own registry", async (t) => {
  const { families } = await scrape(sidecar);
  const fromRegistry = await sidecar.sidecar.metrics.registry.getMetricsAsJSON();
  const names = fromRegistry.map((metric) => metric.name).filter((name) => name.startsWith("mtlsd_"));
  t.ok(names.length >= 8);
  // The expiry gauge is computed at each scrape, so it moves between the two reads.
  const stable = fromRegistry.filter(
    (metric) => metric.name.startsWith("mtlsd_") && metric.name !== "mtlsd_cert_expiry_seconds",
  );
  for (const metric of stable) {
    for (const value of metric.values) {
      const name = (value as { metricName?: string }).metricName ?? metric.name;
      const labels = Object.fromEntries(
        Object.entries(value.labels).map(([label, text]) => [
          label,
          label === "le" ? formatLe(text) : String(text),
        ]),
      );
      t.equal(seriesValue(families, name, labels), value.value, `${name} ${JSON.stringify(labels)}`);
    }
  }
});

/** prom-client's JSON gives `le` as a number (or "+Inf"); the text gives it as written there. */
function formatLe(value: string | number | undefined): string {
  return value === "+Inf" || value === Number.POSITIVE_INFINITY ? "+Inf" : String(value);
}
