// The benchmark reads h2load's per-request log for gRPC latencies, and counts what h2load cannot see as errors.
import t from "tap";
import { framedNote, noteText } from "../bench/grpc-call.ts";
import { h2loadArgs, parseH2load } from "../bench/h2load.ts";

/** h2load's summary, as nghttp2-client 1.52 prints it, with `dataBytes` of response DATA received. */
const summary = (dataBytes: number) =>
  [
    "finished in 2.01s, 13336.00 req/s, 13.53MB/s",
    "requests: 4 total, 4 started, 4 done, 4 succeeded, 0 failed, 0 errored, 0 timeout",
    "status codes: 4 2xx, 0 3xx, 0 4xx, 0 5xx",
    `traffic: 27.07MB (28380453) total, 78.50KB (80388) headers (space savings 95.76%), 26.27MB (${dataBytes}) data`,
  ].join("\n");

const log = (rows: [number, number][]) =>
  rows.map(([status, micros], index) => `${1796228169713928 + index}\t${status}\t${micros}`).join("\n");

t.test("latencies come from the log, in milliseconds, and throughput over the run's duration", async (t) => {
  const stats = parseH2load(
    log([
      [200, 1000],
      [200, 2000],
      [200, 3000],
      [200, 4000],
    ]),
    summary(4 * 1032),
    1032,
    2,
  );
  t.same(stats, { requests: 4, errors: 0, rps: 2, p50_ms: 3, p90_ms: 4, p99_ms: 4 });
});

t.test("a failed stream or a status other than 2xx is an error", async (t) => {
  const stats = parseH2load(
    log([
      [200, 1000],
      [-1, 2000],
      [503, 3000],
    ]),
    summary(1032),
    1032,
    1,
  );
  t.equal(stats.errors, 2);
});

t.test(
  "a call answered without its echoed message is an error, as a gRPC error in trailers is",
  async (t) => {
    // Three 200s, but only two messages' worth of DATA: one was Trailers-Only, a gRPC error h2load calls a success.
    const stats = parseH2load(
      log([
        [200, 1000],
        [200, 1000],
        [200, 1000],
      ]),
      summary(2 * 1032 + 500),
      1032,
      1,
    );
    t.equal(stats.errors, 1);
  },
);

t.test("h2load's output without a traffic line is refused, naming what was printed", async (t) => {
  t.throws(() => parseH2load(log([[200, 1000]]), "connect: Connection refused", 1032, 1), {
    message: /h2load printed no traffic line:\nconnect: Connection refused/,
  });
});

t.test("h2load posts the framed note as a gRPC call, with a log only when asked", async (t) => {
  const args = h2loadArgs({
    url: "http://127.0.0.1:1/mtlsd.test.Echo/Unary",
    connections: 4,
    streams: 8,
    seconds: 10,
    bodyFile: "/tmp/note.bin",
  });
  t.same(args.slice(0, 4), ["-t1", "-c4", "-m8", "-D10"]);
  t.ok(args.includes("content-type: application/grpc") && args.includes("te: trailers"));
  t.notOk(args.includes("--log-file"));
  t.ok(
    h2loadArgs({ url: "u", connections: 1, streams: 1, seconds: 1, bodyFile: "b", logFile: "l" }).includes(
      "--log-file",
    ),
  );
});

t.test("the framed note is a 5-byte gRPC prefix around the protobuf Note", async (t) => {
  const short = framedNote("hi");
  t.same([...short], [0, 0, 0, 0, 4, 0x0a, 2, 0x68, 0x69], "tag 0x0a, length 2, then the text");
  const long = framedNote(noteText(1024));
  t.equal(long.readUInt32BE(1), 1 + 2 + 1024, "a 1024-byte text has a two-byte varint length");
  t.same([...long.subarray(5, 8)], [0x0a, 0x80, 0x08]);
});
