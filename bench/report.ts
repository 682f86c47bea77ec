// Turns benchmark results into the markdown table (ratios to the direct baseline, the best peer and the runtime's ceiling) and an SVG.
//
// Rows come in groups by what the app speaks; a row's ratios and added latency are taken within its group
// only (a gRPC row against the gRPC baseline and the best gRPC peer), and each group has a table of its own.
// The ceiling row (family "ceiling": two minimal Node TLS byte relays in the sidecars' places) is what the
// same Node binary carries with no HTTP work at all; an mtlsd row's "× ceiling" says how close it gets.

/** What the app speaks: HTTP/1.1 requests, gRPC unary calls, or WebSocket message round-trips. */
export type Group = "http" | "grpc" | "websocket";

export interface LoadStats {
  generator: string;
  requests: number;
  errors: number;
  rps: number;
  p50_ms: number;
  p90_ms: number;
  p99_ms: number;
  handshakes?: { full: number; resumed: number };
}

export interface Measured {
  result: LoadStats;
  usage: { name: string; cpuSeconds: number; peakRssBytes: number; peakPrivateBytes?: number }[];
}

/** A proxy's memory once started and settled, before any load. */
export interface IdleUsage {
  name: string;
  rssBytes: number;
  privateBytes: number;
}

export interface ScenarioResult {
  name: string;
  label: string;
  group: Group;
  family: "baseline" | "mtlsd" | "peer" | "ceiling";
  /** Each proxy process after startup, before the first request (none for the direct baseline). */
  idle?: IdleUsage[];
  /** Closed loop, maximum throughput. */
  max: Measured;
  /** Fixed rate (1000 req/s by default), latency from intended send time. */
  fixed?: Measured | undefined;
  /** With several rounds: the lowest and highest closed-loop req/s behind the median. */
  rpsRange?: [number, number];
  /** With several rounds: the median over rounds of (this p99 − the direct baseline's p99) at the fixed rate. */
  addedP99Ms?: number;
  /** With several rounds: the median over rounds of (this p99 − HAProxy's p99, same group and shape) at the fixed rate. */
  p99OverHaproxyMs?: number;
}

export interface Machine {
  cpus: number;
  cpuModel: string;
  memoryGiB: number;
  kernel: string;
  node: string;
  openssl: string;
  date: string;
  settings: {
    duration: number;
    warmup: number;
    rate: number;
    connections: number;
    rounds?: number;
    wrk: boolean;
    /** Node flags the mtlsd processes ran with ("" as shipped). */
    mtlsdNodeFlags?: string;
    /** The commit mtlsd was built from. */
    commit?: string;
    /** gRPC unary: the load's connections and streams in flight on each; whether h2load drove the closed loop. */
    grpc?: { connections: number; streams: number; h2load: boolean };
    /** WebSocket echo: the load's connections. */
    websocket?: { connections: number };
    /** gRPC's Note text and WebSocket's message, in bytes. */
    messageBytes?: number;
  };
}

function median(values: number[]): number {
  const sorted = values.filter(Number.isFinite).sort((a, b) => a - b);
  if (sorted.length === 0) return Number.NaN;
  const middle = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[middle]! : (sorted[middle - 1]! + sorted[middle]!) / 2;
}

/** One measurement whose every number is the median of the rounds' (errors: their sum, so none hides). */
function medianMeasured(runs: Measured[]): Measured {
  const of = (read: (measured: Measured) => number) => median(runs.map(read));
  const first = runs[0]!;
  const requests = Math.round(of((measured) => measured.result.requests));
  const handshakes = first.result.handshakes
    ? {
        full: of((measured) => measured.result.handshakes?.full ?? Number.NaN),
        resumed: of((measured) => measured.result.handshakes?.resumed ?? Number.NaN),
      }
    : undefined;
  return {
    result: {
      generator: first.result.generator,
      requests,
      errors: runs.reduce((sum, measured) => sum + measured.result.errors, 0),
      rps: of((measured) => measured.result.rps),
      p50_ms: of((measured) => measured.result.p50_ms),
      p90_ms: of((measured) => measured.result.p90_ms),
      p99_ms: of((measured) => measured.result.p99_ms),
      ...(handshakes ? { handshakes } : {}),
    },
    usage: first.usage.map((usage, index) => ({
      name: usage.name,
      // CPU per request is a per-round ratio: take its median, expressed over the median request count.
      cpuSeconds: of((measured) => measured.usage[index]!.cpuSeconds / measured.result.requests) * requests,
      peakRssBytes: of((measured) => measured.usage[index]!.peakRssBytes),
      peakPrivateBytes: of((measured) => measured.usage[index]!.peakPrivateBytes ?? Number.NaN),
    })),
  };
}

/**
 * Folds rounds into one result per scenario, every number the median over the rounds it ran in (a round
 * whose run of it failed has no result for it). Scenarios keep the order in which they first appear.
 */
export function medianResults(rounds: ScenarioResult[][]): ScenarioResult[] {
  if (rounds.length === 1) return rounds[0]!;
  const names = [...new Set(rounds.flat().map((result) => result.name))];
  return names.map((name) => {
    const inRound = (round: ScenarioResult[]) => round.find((result) => result.name === name);
    const runs = rounds.flatMap((round) => inRound(round) ?? []);
    const first = runs[0]!;
    const rps = runs.map((run) => run.max.result.rps);
    const fixedRuns = runs.flatMap((run) => (run.fixed ? [run.fixed] : []));
    // Added latency is a difference within one round (same machine weather); only then the median.
    const added = rounds.map((round) => {
      const baseline = baselineOf(round, first.group);
      const fixed = inRound(round)?.fixed;
      return baseline?.fixed && fixed && baseline.name !== name
        ? fixed.result.p99_ms - baseline.fixed.result.p99_ms
        : Number.NaN;
    });
    const addedP99Ms = median(added);
    const overHaproxy = rounds.map((round) => {
      const haproxy = haproxyOf(round, first);
      const fixed = inRound(round)?.fixed;
      return haproxy?.fixed && fixed && haproxy.name !== name && first.family !== "baseline"
        ? fixed.result.p99_ms - haproxy.fixed.result.p99_ms
        : Number.NaN;
    });
    const p99OverHaproxyMs = median(overHaproxy);
    const idle = medianIdle(runs.flatMap((run) => (run.idle && run.idle.length > 0 ? [run.idle] : [])));
    return {
      name,
      label: first.label,
      group: first.group,
      family: first.family,
      ...(idle ? { idle } : {}),
      max: medianMeasured(runs.map((run) => run.max)),
      fixed: fixedRuns.length > 0 ? medianMeasured(fixedRuns) : undefined,
      rpsRange: [Math.min(...rps), Math.max(...rps)],
      ...(Number.isFinite(addedP99Ms) ? { addedP99Ms } : {}),
      ...(Number.isFinite(p99OverHaproxyMs) ? { p99OverHaproxyMs } : {}),
    };
  });
}

/** Each process's idle memory, the median over the rounds that measured it. */
function medianIdle(runs: IdleUsage[][]): IdleUsage[] | undefined {
  if (runs.length === 0) return undefined;
  return runs[0]!.map((usage, index) => ({
    name: usage.name,
    rssBytes: median(runs.map((run) => run[index]?.rssBytes ?? Number.NaN)),
    privateBytes: median(runs.map((run) => run[index]?.privateBytes ?? Number.NaN)),
  }));
}

/** The no-proxy row a group's ratios are taken against. */
function baselineOf(results: ScenarioResult[], group: Group): ScenarioResult | undefined {
  return results.find((result) => result.family === "baseline" && result.group === group);
}

/** The group's runtime-ceiling row: the same path with two bare Node TLS byte relays. */
function ceilingOf(results: ScenarioResult[], group: Group): ScenarioResult | undefined {
  return results.find((result) => result.family === "ceiling" && result.group === group);
}

/** HAProxy's row of the same group and shape, the peer whose added latency the goals compare with. */
function haproxyOf(results: ScenarioResult[], of: ScenarioResult): ScenarioResult | undefined {
  return results.find(
    (result) =>
      result.family === "peer" &&
      result.group === of.group &&
      result.name.includes("haproxy") &&
      shape(result.name) === shape(of.name),
  );
}

const fmt = (value: number, digits = 2) => (Number.isFinite(value) ? value.toFixed(digits) : "–");

/**
 * Keep-alive and Connection: close scenarios are compared with peers of the same shape. Direct mTLS to the
 * inbound sidecar (a handshake per request, one proxy) has no peer and no ceiling of its shape.
 */
function shape(name: string): "close" | "keepalive" | "direct-mtls" | "other" {
  if (name.startsWith("mtls-")) return "direct-mtls";
  if (name.endsWith("-close")) return "close";
  if (name.endsWith("-keepalive") || name === "mtlsd-keepalive-logs" || name === "mtlsd-workers-2")
    return "keepalive";
  return "other";
}

function cpuPer1000(measured: Measured): string {
  const requests = measured.result.requests;
  if (requests === 0 || measured.usage.length === 0) return "–";
  return measured.usage.map((usage) => fmt((usage.cpuSeconds / requests) * 1000, 3)).join(" / ");
}

function peakRss(measured: Measured, which: "peakRssBytes" | "peakPrivateBytes" = "peakRssBytes"): string {
  if (measured.usage.length === 0) return "–";
  return measured.usage.map((usage) => fmt((usage[which] ?? Number.NaN) / 2 ** 20, 0)).join(" / ");
}

const mib = (bytes: number) => fmt(bytes / 2 ** 20, 0);

/** Idle RSS per process, then its private part in parentheses: "98 / 97 (42 / 41)". */
function idleMemory(idle: IdleUsage[] | undefined): string {
  if (!idle || idle.length === 0) return "–";
  const each = (read: (usage: IdleUsage) => number) => idle.map((usage) => mib(read(usage))).join(" / ");
  return `${each((usage) => usage.rssBytes)} (${each((usage) => usage.privateBytes)})`;
}

/** A memory column: the fixed-rate run's peaks, the closed loop's in parentheses (only the latter if no fixed run). */
function peaks(
  max: Measured,
  fixed: Measured | undefined,
  which: "peakRssBytes" | "peakPrivateBytes",
): string {
  return fixed && fixed.usage.length > 0
    ? `${peakRss(fixed, which)} (${peakRss(max, which)})`
    : peakRss(max, which);
}

/** How each group's table names what it counts, and the line that says how its rows were measured. */
const GROUPS: Record<Group, { title: string; unit: string; per: string }> = {
  http: { title: "HTTP/1.1", unit: "req/s", per: "req" },
  grpc: { title: "gRPC unary", unit: "calls/s", per: "calls" },
  websocket: { title: "WebSocket echo", unit: "round-trips/s", per: "round-trips" },
};

function describeGroup(group: Group, machine: Machine): string {
  const { settings } = machine;
  const bytes = settings.messageBytes ?? 1024;
  if (group === "grpc") {
    const grpc = settings.grpc ?? { connections: 4, streams: 4, h2load: true };
    const generator = grpc.h2load
      ? `h2load -t1 -c${grpc.connections} -m${grpc.streams} (it sees HTTP statuses only: each scenario first passes one grpc-js call, and a call whose echoed message never arrived counts as an error)`
      : `bench/grpc-load.ts, ${grpc.connections} connections × ${grpc.streams} streams`;
    return `POST /mtlsd.test.Echo/Unary with a ${bytes}-byte Note, echoed by a node:http2 app over h2c; h2c into the first hop, mTLS between the hops. Closed loop: ${generator}. Fixed rate: bench/grpc-load.ts on ${grpc.connections} connections, every call checked for grpc-status 0.`;
  }
  if (group === "websocket") {
    const connections = settings.websocket?.connections ?? 16;
    return `${connections} WebSockets (bench/ws-load.ts, the ws package), each sending a ${bytes}-byte binary message and waiting for its echo from a ws app; a round-trip is one message each way, the upgrade happens once per connection before measuring. Fixed rate: message i due at t0 + i/rate on connection i mod ${connections}.`;
  }
  return "";
}

export function renderTable(
  results: ScenarioResult[],
  machine: Machine,
  skipped: string[],
  failed: string[] = [],
): string {
  const rounds = machine.settings.rounds ?? 1;
  const flags = machine.settings.mtlsdNodeFlags
    ? `, mtlsd run with \`${machine.settings.mtlsdNodeFlags}\``
    : "";
  const present = (Object.keys(GROUPS) as Group[]).filter((group) =>
    results.some((result) => result.group === group),
  );
  const onlyHttp = present.length === 1 && present[0] === "http";
  const { settings } = machine;
  const lines = [
    `### mtlsd benchmark — ${machine.date.slice(0, 10)}`,
    "",
    `Machine: ${machine.cpus} × ${machine.cpuModel}, ${machine.memoryGiB} GiB, Linux ${machine.kernel}; Node ${machine.node}, OpenSSL ${machine.openssl}; mtlsd at ${settings.commit ?? "unknown commit"}${flags}.`,
    present.includes("http")
      ? `Loopback; every process shares the same ${machine.cpus} cores. Closed loop: ${settings.connections} connections, ${settings.duration} s after ${settings.warmup} s warm-up (${settings.wrk ? "wrk -t1" : "bench/load.ts"} for plain-HTTP entry points, bench/load.ts for mTLS clients). Fixed rate: ${settings.rate} req/s open loop, latency from the intended send time. App: 1 KiB responses. Proxies: one worker each; mtlsd logs at warn unless noted.`
      : `Loopback; every process shares the same ${machine.cpus} cores. Closed loop: ${settings.duration} s after ${settings.warmup} s warm-up. Fixed rate: ${settings.rate} per second open loop, latency from the intended send time. Proxies: one worker each; mtlsd logs at warn.`,
  ];
  for (const group of present) {
    const { title, unit, per } = GROUPS[group];
    if (!onlyHttp) {
      lines.push("", `#### ${title}`);
      const description = describeGroup(group, machine);
      if (description) lines.push("", description);
    }
    lines.push(
      "",
      `| scenario | ${unit}${rounds > 1 ? ` (median of ${rounds} rounds, range)` : ""} | × direct | × best peer | × ceiling | p50 ms | p99 ms | p99 ms @${settings.rate}/s | added p99 ms @${settings.rate}/s | p99 − HAProxy's ms @${settings.rate}/s | CPU s per 1k ${per} (out / in) | peak RSS MiB @${settings.rate}/s (at max) (out / in) | of it private MiB @${settings.rate}/s (at max) | idle RSS MiB (private) | errors |`,
      "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
      ...renderRows(results.filter((result) => result.group === group)),
    );
  }
  lines.push(
    "",
    `${rounds > 1 ? `Every number is the median over ${rounds} rounds (each round runs every scenario once, in a rotated order); added p99 is the median of each round's difference to the direct baseline, the × ratios are between medians; errors are summed. ` : ""}× ceiling is an mtlsd row's throughput over the runtime-ceiling row's (two bare Node TLS byte relays on the same two hops, no HTTP work; not for direct mTLS to one sidecar, which has no such row). p99 − HAProxy's is the row's fixed-rate p99 minus HAProxy's of the same shape${rounds > 1 ? ", per round, then the median" : ""} (negative: lower than HAProxy's). CPU per 1000 requests${onlyHttp ? "" : " (gRPC calls, WebSocket round-trips)"} is measured at the fixed rate where there is one (else at maximum throughput), per proxy process, over the measured window only (not the warm-up): outbound / inbound (direct-mTLS scenarios: inbound only). Peak RSS is sampled every 200 ms during the fixed-rate run, and in parentheses during the closed-loop run; 'private' is its anonymous part (heap, buffers, TLS state), the rest being file-backed pages (the executable and its libraries), shared only with processes that map the same files. Idle RSS is read once per process, 1 s after it listens and before the first request, its private part in parentheses.${onlyHttp ? "" : " Each table's ratios and added p99 are against its own group's direct baseline and best peer."}`,
  );
  if (skipped.length > 0) lines.push("", "Skipped:", ...skipped.map((line) => `- ${line}`));
  if (failed.length > 0)
    lines.push(
      "",
      "Left out of the medians (the run failed; the scenario's median is over its other rounds):",
      ...failed.map((line) => `- ${line}`),
    );
  return lines.join("\n");
}

/** The rows of one group's table: ratios to that group's direct baseline and best peer of the same shape. */
function renderRows(results: ScenarioResult[]): string[] {
  const direct = results.find((result) => result.family === "baseline");
  const ceiling = results[0] ? ceilingOf(results, results[0].group) : undefined;
  const bestPeer = (kind: string) =>
    results
      .filter((result) => result.family === "peer" && shape(result.name) === kind)
      .sort((a, b) => b.max.result.rps - a.max.result.rps)[0];
  return results.map((result) => {
    const { max, fixed } = result;
    const peer = result.family === "mtlsd" ? bestPeer(shape(result.name)) : undefined;
    const versusDirect =
      result === direct ? "1.00" : direct ? fmt(max.result.rps / direct.max.result.rps) : "–";
    const versusPeer = peer ? fmt(max.result.rps / peer.max.result.rps) : "–";
    const versusCeiling =
      result === ceiling
        ? "1.00"
        : ceiling && result.family === "mtlsd" && shape(result.name) !== "direct-mtls"
          ? fmt(max.result.rps / ceiling.max.result.rps)
          : "–";
    const haproxy = haproxyOf(results, result);
    const overHaproxy =
      result.p99OverHaproxyMs !== undefined
        ? fmt(result.p99OverHaproxyMs, 3)
        : fixed && haproxy?.fixed && haproxy !== result && result !== direct
          ? fmt(fixed.result.p99_ms - haproxy.fixed.result.p99_ms, 3)
          : "–";
    const addedP99 =
      result.addedP99Ms !== undefined
        ? fmt(result.addedP99Ms, 3)
        : fixed && direct?.fixed && result !== direct
          ? fmt(fixed.result.p99_ms - direct.fixed.result.p99_ms, 3)
          : "–";
    const handshakes = max.result.handshakes;
    const resumedNote =
      handshakes && handshakes.full + handshakes.resumed > 0
        ? ` (${Math.round((100 * handshakes.resumed) / (handshakes.full + handshakes.resumed))}% resumed)`
        : "";
    return `| ${result.label}${resumedNote} | ${fmt(max.result.rps, 0)}${result.rpsRange ? ` (${fmt(result.rpsRange[0], 0)}–${fmt(result.rpsRange[1], 0)})` : ""} | ${versusDirect} | ${versusPeer} | ${versusCeiling} | ${fmt(max.result.p50_ms)} | ${fmt(max.result.p99_ms)} | ${fixed ? fmt(fixed.result.p99_ms) : "–"} | ${addedP99} | ${overHaproxy} | ${cpuPer1000(fixed ?? max)} | ${peaks(max, fixed, "peakRssBytes")} | ${peaks(max, fixed, "peakPrivateBytes")} | ${idleMemory(result.idle)} | ${max.result.errors + (fixed?.result.errors ?? 0)} |`;
  });
}

/** A horizontal bar chart of maximum throughput, in plain SVG (no dependencies). */
export function renderChart(results: ScenarioResult[]): string {
  const rowHeight = 26;
  const labelWidth = 430;
  const barWidth = 420;
  const top = 40;
  const max = Math.max(1, ...results.map((result) => result.max.result.rps));
  const color = { baseline: "#888888", mtlsd: "#2b7bb9", peer: "#d9822b", ceiling: "#3a9a4a" };
  const escapeXml = (text: string) => text.replace(/&/g, "&amp;").replace(/</g, "&lt;");
  const rows = results.map((result, index) => {
    const y = top + index * rowHeight;
    const width = Math.max(1, (result.max.result.rps / max) * barWidth);
    return [
      `<text x="${labelWidth - 8}" y="${y + 17}" text-anchor="end">${escapeXml(result.label)}</text>`,
      `<rect x="${labelWidth}" y="${y + 4}" width="${width.toFixed(1)}" height="${rowHeight - 8}" fill="${color[result.family]}"/>`,
      `<text x="${labelWidth + width + 6}" y="${y + 17}">${Math.round(result.max.result.rps)} req/s</text>`,
    ].join("");
  });
  const height = top + results.length * rowHeight + 20;
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${labelWidth + barWidth + 110}" height="${height}" font-family="sans-serif" font-size="13">
<text x="10" y="22" font-size="15" font-weight="bold">Maximum throughput (closed loop); grey: no proxy, blue: mtlsd, orange: peers, green: the Node relay ceiling</text>
${rows.join("\n")}
</svg>
`;
}
