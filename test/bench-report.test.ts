// The benchmark report folds rounds into medians, so one slow spell of a shared machine does not set the table.
import t from "tap";
import {
  type Machine,
  type Measured,
  medianResults,
  renderTable,
  type ScenarioResult,
} from "../bench/report.ts";

const machine = (rounds: number): Machine => ({
  cpus: 2,
  cpuModel: "test CPU",
  memoryGiB: 1,
  kernel: "6.0",
  node: "v26.0.0",
  openssl: "3.5",
  date: "2026-11-23T00:00:00.000Z",
  settings: {
    duration: 10,
    warmup: 2,
    rate: 1000,
    connections: 16,
    rounds,
    wrk: true,
    mtlsdNodeFlags: rounds > 1 ? "--max-semi-space-size=2" : "",
    commit: "abc1234",
  },
});

function measured(rps: number, cpuSecondsPerRequest: number[], rssMiB: number, errors = 0): Measured {
  const requests = rps * 10;
  return {
    result: { generator: "wrk", requests, errors, rps, p50_ms: 1000 / rps, p90_ms: 2, p99_ms: 3 },
    usage: cpuSecondsPerRequest.map((perRequest, index) => ({
      name: `proxy ${index}`,
      cpuSeconds: perRequest * requests,
      peakRssBytes: rssMiB * 2 ** 20,
      peakPrivateBytes: (rssMiB / 2) * 2 ** 20,
    })),
  };
}

const round = (direct: number, mtlsd: number, cpu: number, rss: number, errors = 0): ScenarioResult[] => [
  { name: "direct", label: "(a) direct", group: "http", family: "baseline", max: measured(direct, [], 0) },
  {
    name: "mtlsd-keepalive",
    label: "(b) mtlsd",
    group: "http",
    family: "mtlsd",
    max: measured(mtlsd, [cpu, cpu], rss, errors),
    fixed: measured(1000, [cpu * 2, cpu], rss),
  },
];

t.test("every number is the median over the rounds, and errors are summed", async (t) => {
  const [direct, mtlsd] = medianResults([
    round(50_000, 9000, 0.0002, 200),
    round(70_000, 6000, 0.0001, 100, 2),
    round(60_000, 8000, 0.0003, 150, 1),
  ]);
  t.equal(direct!.max.result.rps, 60_000);
  t.same(direct!.rpsRange, [50_000, 70_000]);
  t.equal(mtlsd!.max.result.rps, 8000);
  t.equal(mtlsd!.max.result.errors, 3, "an error in any round shows");
  // CPU per request is taken per round: median 0.0002 s, i.e. 0.2 CPU-s per 1000 requests.
  const cpuPer1000 = (mtlsd!.max.usage[0]!.cpuSeconds / mtlsd!.max.result.requests) * 1000;
  t.ok(Math.abs(cpuPer1000 - 0.2) < 1e-9, `CPU per 1000 requests is the median ratio (${cpuPer1000})`);
  t.equal(mtlsd!.max.usage[1]!.peakRssBytes, 150 * 2 ** 20);
  t.equal(mtlsd!.max.usage[1]!.peakPrivateBytes, 75 * 2 ** 20);
  t.equal(mtlsd!.fixed!.result.rps, 1000);
});

t.test("an even number of rounds takes the mean of the middle two", async (t) => {
  const [direct] = medianResults([round(40_000, 1, 0.0001, 1), round(60_000, 1, 0.0001, 1)]);
  t.equal(direct!.max.result.rps, 50_000);
});

t.test("one round is reported as measured, without a range", async (t) => {
  const only = round(50_000, 9000, 0.0002, 200);
  t.equal(medianResults([only]), only);
  const table = renderTable(only, machine(1), []);
  t.match(table, /\| \(b\) mtlsd \| 9000 \| 0\.18 \|/);
  t.notMatch(table, /median of/);
});

t.test("added p99 is the median of each round's difference to the direct baseline", async (t) => {
  const withP99 = (directP99: number, mtlsdP99: number): ScenarioResult[] => {
    const [direct, mtlsd] = round(50_000, 9000, 0.0002, 200);
    direct!.fixed = measured(1000, [], 0);
    direct!.fixed.result.p99_ms = directP99;
    mtlsd!.fixed!.result.p99_ms = mtlsdP99;
    return [direct!, mtlsd!];
  };
  // Differences 1, 2, 6: median 2. Medians of the p99s (2 and 5) would say 3.
  const results = medianResults([withP99(1, 2), withP99(2, 4), withP99(3, 9)]);
  t.equal(results[1]!.addedP99Ms, 2);
  t.equal(results[0]!.addedP99Ms, undefined, "the baseline adds nothing to itself");
  t.match(renderTable(results, machine(3), []), /\| 4\.00 \| 2\.000 \|/);
});

t.test("a scenario that failed in a round is folded over the rounds it ran in", async (t) => {
  const [direct, mtlsd] = round(50_000, 9000, 0.0002, 200);
  const withoutMtlsd = round(60_000, 1, 0.0001, 100).slice(0, 1);
  const results = medianResults([[direct!, mtlsd!], withoutMtlsd, round(70_000, 7000, 0.0002, 200)]);
  t.same(
    results.map((result) => result.name),
    ["direct", "mtlsd-keepalive"],
  );
  t.equal(results[0]!.max.result.rps, 60_000, "direct: all three rounds");
  t.equal(results[1]!.max.result.rps, 8000, "mtlsd: the median of its two rounds");
  t.same(results[1]!.rpsRange, [7000, 9000]);
  const table = renderTable(results, machine(3), [], ["round 2, (b) mtlsd: mtlsd orders-in exited (1)"]);
  t.match(table, /Left out of the medians[^\n]*\n- round 2, \(b\) mtlsd: mtlsd orders-in exited \(1\)/);
});

t.test("the table names the rounds and shows each median with its range", async (t) => {
  const results = medianResults([
    round(50_000, 9000, 0.0002, 200),
    round(70_000, 6000, 0.0001, 100),
    round(60_000, 8000, 0.0003, 150),
  ]);
  const table = renderTable(results, machine(3), []);
  t.match(table, /req\/s \(median of 3 rounds, range\)/);
  t.match(table, /\| \(b\) mtlsd \| 8000 \(6000–9000\) \| 0\.13 \|/);
  t.match(table, /Every number is the median over 3 rounds/);
  t.match(table, /mtlsd at abc1234, mtlsd run with `--max-semi-space-size=2`\./);
  t.match(table, /\| 0\.400 \/ 0\.200 \|/, "fixed-rate CPU per 1000 requests, outbound / inbound");
  t.match(table, /\| 150 \/ 150 \(150 \/ 150\) \| 75 \/ 75 \(75 \/ 75\) \|/, "RSS and its private part");
});

/** One round with an HTTP pair and a gRPC group: its baseline, mtlsd, and two peers. */
const withGrpc = (grpcDirectP99: number, grpcMtlsdP99: number): ScenarioResult[] => {
  const [direct, mtlsd] = round(50_000, 9000, 0.0002, 200);
  direct!.fixed = measured(1000, [], 0);
  direct!.fixed.result.p99_ms = 1;
  const grpcDirect: ScenarioResult = {
    name: "grpc-direct",
    label: "(f) gRPC direct",
    group: "grpc",
    family: "baseline",
    max: measured(20_000, [], 0),
    fixed: measured(1000, [], 0),
  };
  grpcDirect.fixed!.result.p99_ms = grpcDirectP99;
  const grpcMtlsd: ScenarioResult = {
    name: "grpc-mtlsd",
    label: "(g) mtlsd gRPC",
    group: "grpc",
    family: "mtlsd",
    max: measured(3000, [0.0003, 0.0003], 200),
    fixed: measured(1000, [0.0003, 0.0003], 200),
  };
  grpcMtlsd.fixed!.result.p99_ms = grpcMtlsdP99;
  const peer = (name: string, rps: number): ScenarioResult => ({
    name: `grpc-${name}`,
    label: `${name} gRPC`,
    group: "grpc",
    family: "peer",
    max: measured(rps, [0.0001, 0.0001], 20),
  });
  return [direct!, mtlsd!, grpcDirect, grpcMtlsd, peer("nginx", 6000), peer("haproxy", 12_000)];
};

t.test("a gRPC row's ratios are to the gRPC baseline and the best gRPC peer", async (t) => {
  const table = renderTable(withGrpc(2, 5), machine(1), []);
  t.match(table, /\| \(g\) mtlsd gRPC \| 3000 \| 0\.15 \| 0\.25 \|/, "3000 / 20000 direct, / 12000 HAProxy");
  t.match(table, /\| \(f\) gRPC direct \| 20000 \| 1\.00 \| – \|/, "a baseline has no peer ratio");
  t.match(table, /\| \(b\) mtlsd \| 9000 \| 0\.18 \| – \|/, "HTTP rows never meet gRPC peers");
  t.match(table, /\| nginx gRPC \| 6000 \| 0\.30 \| – \|/);
});

t.test("added p99 is taken against the baseline of the row's own group", async (t) => {
  // gRPC differences 3, 1, 10: median 3; against the HTTP baseline (p99 1) they would be 4, 6, 19.
  const results = medianResults([withGrpc(2, 5), withGrpc(5, 6), withGrpc(3, 13)]);
  const grpcMtlsd = results.find((result) => result.name === "grpc-mtlsd")!;
  t.equal(grpcMtlsd.addedP99Ms, 3);
  t.equal(grpcMtlsd.group, "grpc", "the group survives the folding of rounds");
  t.equal(results.find((result) => result.name === "grpc-direct")!.addedP99Ms, undefined);
});

t.test("each group has a table of its own, counting in its own unit", async (t) => {
  const table = renderTable(withGrpc(2, 5), machine(1), []);
  t.match(table, /#### HTTP\/1\.1\n\n\| scenario \| req\/s \|/);
  t.match(
    table,
    /#### gRPC unary\n\nPOST \/mtlsd\.test\.Echo\/Unary [^\n]*h2load -t1 -c4 -m4[^\n]*\n\n\| scenario \| calls\/s \|/,
  );
  t.match(table, /CPU s per 1k calls \(out \/ in\)/);
  t.notMatch(table, /WebSocket echo/, "a group without rows has no table");
  const httpOnly = renderTable(round(50_000, 9000, 0.0002, 200), machine(1), []);
  t.notMatch(httpOnly, /####/, "HTTP alone keeps the one table it always had");
});

t.test("a WebSocket table counts round-trips", async (t) => {
  const results: ScenarioResult[] = [
    {
      name: "ws-direct",
      label: "(h) ws direct",
      group: "websocket",
      family: "baseline",
      max: measured(30_000, [], 0),
    },
    {
      name: "ws-mtlsd",
      label: "(i) ws mtlsd",
      group: "websocket",
      family: "mtlsd",
      max: measured(6000, [0.0001, 0.0001], 100),
    },
  ];
  const settings = { ...machine(1).settings, websocket: { connections: 8 }, messageBytes: 64 };
  const table = renderTable(results, { ...machine(1), settings }, []);
  t.match(table, /8 WebSockets \(bench\/ws-load\.ts[^\n]*64-byte binary message/);
  t.match(table, /\| scenario \| round-trips\/s \|/);
  t.match(table, /\| \(i\) ws mtlsd \| 6000 \| 0\.20 \| – \|/);
  t.match(table, /Closed loop: 10 s after 2 s warm-up\./, "the settings line names no HTTP load generator");
});

/** A row of the HTTP group with a fixed-rate run whose p99 is `p99`, from a family and a name. */
const row = (
  name: string,
  family: ScenarioResult["family"],
  rps: number,
  p99: number,
  cpu: number[] = [0.0001, 0.0001],
): ScenarioResult => {
  const fixed = measured(1000, cpu, 100);
  fixed.result.p99_ms = p99;
  return { name, label: name, group: "http", family, max: measured(rps, cpu, 100), fixed };
};

/** A row measured closed-loop only, as the Connection: close and direct-mTLS scenarios are. */
const maxOnly = (name: string, family: ScenarioResult["family"], rps: number): ScenarioResult => ({
  ...row(name, family, rps, 0),
  fixed: undefined,
});

/** Direct, mtlsd keep-alive and close, direct mTLS, HAProxy in both shapes, and the relay ceiling. */
const ceilingRound = (mtlsdP99: number, haproxyP99: number): ScenarioResult[] => [
  row("direct", "baseline", 40_000, 1, []),
  row("mtlsd-keepalive", "mtlsd", 4000, mtlsdP99),
  maxOnly("mtlsd-close", "mtlsd", 3000),
  maxOnly("mtls-resumed", "mtlsd", 800),
  row("haproxy-keepalive", "peer", 12_000, haproxyP99),
  maxOnly("haproxy-close", "peer", 6000),
  row("relay-keepalive", "ceiling", 10_000, 3),
];

/** The cells of the table row whose scenario is `name`, by column header. */
function cells(table: string, name: string): Record<string, string> {
  const lines = table.split("\n");
  const header = lines.find((line) => line.startsWith("| scenario |"))!;
  const split = (line: string) =>
    line
      .slice(2, -2)
      .split(" | ")
      .map((cell) => cell.trim());
  const values = split(lines.find((line) => line.startsWith(`| ${name} |`))!);
  return Object.fromEntries(split(header).map((title, index) => [title, values[index]!]));
}

t.test(
  "every two-hop mtlsd row shows its throughput over the ceiling row's beside its ratio to the best peer",
  async (t) => {
    const table = renderTable(ceilingRound(5, 4), machine(1), []);
    const keepalive = cells(table, "mtlsd-keepalive");
    t.equal(keepalive["× ceiling"], "0.40", "4000 / 10000 relays");
    t.equal(keepalive["× best peer"], "0.33", "4000 / 12000 HAProxy");
    t.equal(cells(table, "mtlsd-close")["× ceiling"], "0.30", "the close row against the same ceiling");
    t.equal(cells(table, "mtlsd-close")["× best peer"], "0.50", "but against the peers' close rows");
    t.equal(cells(table, "relay-keepalive")["× ceiling"], "1.00");
    t.equal(cells(table, "relay-keepalive")["× best peer"], "–", "the ceiling is not a peer");
    t.equal(cells(table, "mtls-resumed")["× ceiling"], "–", "direct mTLS to one sidecar has no ceiling row");
    t.equal(cells(table, "haproxy-keepalive")["× ceiling"], "–");
  },
);

t.test("a row's p99 is compared with HAProxy's of the same shape at the fixed rate", async (t) => {
  const table = renderTable(ceilingRound(5, 4), machine(1), []);
  t.equal(cells(table, "mtlsd-keepalive")["p99 − HAProxy's ms @1000/s"], "1.000", "5 ms against 4 ms");
  t.equal(cells(table, "relay-keepalive")["p99 − HAProxy's ms @1000/s"], "-1.000", "3 ms against 4 ms");
  t.equal(cells(table, "haproxy-keepalive")["p99 − HAProxy's ms @1000/s"], "–", "HAProxy against itself");
  t.equal(cells(table, "direct")["p99 − HAProxy's ms @1000/s"], "–", "the baseline is no proxy");
});

t.test("with several rounds, p99 against HAProxy is the median of each round's difference", async (t) => {
  // Differences 1, 4, -1: median 1. The medians of the p99s (6 and 4) would say 2.
  const results = medianResults([ceilingRound(5, 4), ceilingRound(6, 2), ceilingRound(9, 10)]);
  const mtlsd = results.find((result) => result.name === "mtlsd-keepalive")!;
  t.equal(mtlsd.p99OverHaproxyMs, 1);
  t.equal(
    cells(renderTable(results, machine(3), []), "mtlsd-keepalive")["p99 − HAProxy's ms @1000/s"],
    "1.000",
  );
  const names = (predicate: (result: ScenarioResult) => boolean) =>
    results.filter(predicate).map((result) => result.name);
  t.same(
    names((result) => result.p99OverHaproxyMs === undefined),
    ["direct", "mtlsd-close", "mtls-resumed", "haproxy-keepalive", "haproxy-close"],
    "only rows with a fixed-rate run beside HAProxy's of their shape; not HAProxy itself, nor the baseline",
  );
});

t.test(
  "memory is shown per sidecar: peaks at the fixed rate and at maximum, private too, and idle before load",
  async (t) => {
    const [direct, mtlsd] = round(50_000, 9000, 0.0002, 200);
    mtlsd!.fixed!.usage[0]!.peakRssBytes = 120 * 2 ** 20;
    mtlsd!.fixed!.usage[0]!.peakPrivateBytes = 40 * 2 ** 20;
    mtlsd!.idle = [
      { name: "mtlsd frontend-out", rssBytes: 98 * 2 ** 20, privateBytes: 42 * 2 ** 20 },
      { name: "mtlsd orders-in", rssBytes: 97 * 2 ** 20, privateBytes: 41 * 2 ** 20 },
    ];
    const table = renderTable([direct!, mtlsd!], machine(1), []);
    const cell = cells(table, "(b) mtlsd");
    t.equal(cell["peak RSS MiB @1000/s (at max) (out / in)"], "120 / 200 (200 / 200)");
    t.equal(cell["of it private MiB @1000/s (at max)"], "40 / 100 (100 / 100)");
    t.equal(cell["idle RSS MiB (private)"], "98 / 97 (42 / 41)");
    t.equal(cell["CPU s per 1k req (out / in)"], "0.400 / 0.200", "CPU per sidecar, not summed");
    t.equal(cells(table, "(a) direct")["idle RSS MiB (private)"], "–");
  },
);

t.test("idle memory is folded over the rounds like every other number", async (t) => {
  const withIdle = (rssMiB: number): ScenarioResult[] => {
    const [direct, mtlsd] = round(50_000, 9000, 0.0002, 200);
    mtlsd!.idle = [{ name: "mtlsd orders-in", rssBytes: rssMiB * 2 ** 20, privateBytes: 2 ** 20 }];
    return [direct!, mtlsd!];
  };
  const [direct, mtlsd] = medianResults([withIdle(90), withIdle(110), withIdle(100)]);
  t.same(mtlsd!.idle, [{ name: "mtlsd orders-in", rssBytes: 100 * 2 ** 20, privateBytes: 2 ** 20 }]);
  t.equal(direct!.idle, undefined, "no proxy, no idle memory");
});
