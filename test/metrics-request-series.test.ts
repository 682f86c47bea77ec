// The per-request series are counted in plain numbers and rendered at scrape time: what Prometheus reads must be
// exactly what prom-client's own Counter and Histogram would have written for the same requests.
import { Counter, Histogram, Registry } from "prom-client";
import t from "tap";
import { Metrics, type RequestRecord } from "../src/telemetry/index.ts";

const sources = { certNotAfter: () => undefined, upstreams: () => ({}) };

function record(index: number, durationMs: number): RequestRecord {
  const direction = index % 3 === 0 ? "outbound" : "inbound";
  return {
    direction,
    source_identity: `spiffe://example.org/caller/${index % 4}`,
    destination_identity: `spiffe://example.org/callee/${index % 5}`,
    method: "GET",
    path: "/",
    protocol: ["http/1.1", "h2"][index % 2]!,
    ...(index % 4 === 1 ? { grpc_status: String(index % 17) } : {}),
    decision: index % 7 === 0 ? "deny" : "allow",
    reason: "",
    status: [200, 404, 503][index % 3]!,
    duration_ms: durationMs,
  };
}

// Below the first bound, exactly on bounds, between them, and beyond the last (30 s).
const DURATIONS_MS = [0.01, 0.1, 0.25, 0.37, 1, 2.5, 7, 12.3456, 25, 100, 999, 30_000, 31_000, 0.5, 5];

/** One metric family's lines from an exposition text. */
function family(text: string, name: string): string {
  return text
    .split("\n")
    .filter((line) => line.startsWith(name) || line.includes(` ${name} `))
    .join("\n");
}

t.test(
  "counts and durations read exactly as prom-client's Counter and Histogram would write them",
  async (t) => {
    const metrics = new Metrics(sources, { processMetrics: false, maxIdentityLabels: 3 });
    DURATIONS_MS.forEach((duration, index) => {
      metrics.request(record(index, duration));
    });
    const ours = await metrics.metrics();

    // The reference: prom-client's classes fed the same requests, with the same bounds and label cap.
    const registry = new Registry();
    const bounds = [
      ...ours.matchAll(
        /mtlsd_request_duration_seconds_bucket\{le="([\d.e-]+)",direction="inbound",protocol="h2"\}/g,
      ),
    ].map((match) => Number(match[1]));
    t.ok(bounds.length > 10, `the histogram has its buckets (${bounds.length})`);
    const described = await metrics.registry.getMetricsAsJSON();
    const helpOf = (name: string) => described.find((metric) => metric.name === name)!.help;
    const histogram = new Histogram({
      name: "mtlsd_request_duration_seconds",
      help: helpOf("mtlsd_request_duration_seconds"),
      labelNames: ["direction", "protocol"],
      buckets: bounds,
      registers: [registry],
    });
    const counter = new Counter({
      name: "mtlsd_requests_total",
      help: helpOf("mtlsd_requests_total"),
      labelNames: [
        "direction",
        "decision",
        "source_identity",
        "destination_identity",
        "status_class",
        "protocol",
        "grpc_status",
      ],
      registers: [registry],
    });
    DURATIONS_MS.forEach((duration, index) => {
      const request = record(index, duration);
      const peer = metrics.identityLabel(
        request.direction === "inbound" ? request.source_identity : request.destination_identity,
      );
      counter.inc({
        direction: request.direction,
        decision: request.decision,
        status_class: `${Math.floor(request.status / 100)}xx`,
        ...(request.direction === "inbound" ? { source_identity: peer } : { destination_identity: peer }),
        protocol: request.protocol,
        ...(request.grpc_status !== undefined ? { grpc_status: request.grpc_status } : {}),
      });
      histogram.observe({ direction: request.direction, protocol: request.protocol }, duration / 1000);
    });
    const reference = await registry.metrics();

    for (const name of ["mtlsd_request_duration_seconds", "mtlsd_requests_total"]) {
      t.equal(family(ours, name), family(reference, name), `${name}: the same exposition`);
    }
    const json = async (source: Registry, name: string) =>
      (await source.getMetricsAsJSON()).find((metric) => metric.name === name);
    t.same(
      await json(metrics.registry, "mtlsd_request_duration_seconds"),
      await json(registry, "mtlsd_request_duration_seconds"),
      "getMetricsAsJSON reports the histogram as prom-client does",
    );
  },
);

t.test("requests between scrapes are all counted, and a scrape does not count them twice", async (t) => {
  const metrics = new Metrics(sources, { processMetrics: false });
  const count = async () =>
    Number(/mtlsd_requests_total\{[^}]*\} (\d+)/.exec(await metrics.metrics())?.[1] ?? Number.NaN);
  for (let i = 0; i < 5; i++) metrics.request(record(1, 1));
  t.equal(await count(), 5);
  t.equal(await count(), 5, "a second scrape with no new requests");
  for (let i = 0; i < 3; i++) metrics.request(record(1, 1));
  t.equal(await count(), 8);
  t.match(
    await metrics.metrics(),
    /mtlsd_request_duration_seconds_count\{direction="inbound",protocol="h2"\} 8/,
  );
});

t.test("resetting the registry forgets requests not yet scraped", async (t) => {
  const metrics = new Metrics(sources, { processMetrics: false });
  metrics.request(record(1, 1));
  metrics.registry.resetMetrics();
  const text = await metrics.metrics();
  t.notMatch(text, /mtlsd_requests_total\{/);
  t.notMatch(text, /mtlsd_request_duration_seconds_count/);
  metrics.request(record(1, 1));
  t.match(await metrics.metrics(), /mtlsd_requests_total\{[^}]*\} 1\n/);
});

t.test("with no request yet, both series are declared and empty", async (t) => {
  const text = await new Metrics(sources, { processMetrics: false }).metrics();
  t.match(text, /# TYPE mtlsd_request_duration_seconds histogram\n/);
  t.match(text, /# TYPE mtlsd_requests_total counter\n/);
  t.notMatch(text, /mtlsd_request_duration_seconds_count/);
});
