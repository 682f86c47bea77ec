// Uploads that wait for `100 Continue`: the inbound answers it only once policy allows, so a denied upload never
// streams its body; and a denied upload already on the wire is one denial, logged and counted once.
import { writeFile } from "node:fs/promises";
import path from "node:path";
import t from "tap";
import { startApp } from "./helpers/app.ts";
import { curl } from "./helpers/clients.ts";
import { createTestPki } from "./helpers/pki.ts";
import { type LogLine, startSidecar } from "./helpers/sidecar.ts";

const pki = await createTestPki();
t.teardown(() => pki.cleanup());
const app = await startApp();
t.teardown(() => app.stop());
const orders = await pki.identity("orders");
const frontend = await pki.identity("frontend");
const sidecar = await startSidecar(pki, orders, {
  inbound: {
    listen: "127.0.0.1:0",
    app: app.url,
    policy: {
      rules: [{ name: "uploads", action: "allow", from: [frontend.spiffeId], to: [{ paths: ["/uploads"] }] }],
    },
  },
});
t.teardown(() => sidecar.stop());

const MIB = 1024 * 1024;
const big = path.join(pki.dir, "upload-50m.bin");
await writeFile(big, Buffer.alloc(50 * MIB, 0x61));
const small = path.join(pki.dir, "upload-5m.bin");
await writeFile(small, Buffer.alloc(5 * MIB, 0x62));

interface Upload {
  status: number;
  /** Bytes of the body curl handed to the connection. */
  uploaded: number;
  /** curl -v's trace: request and response heads, 100 Continue included. */
  trace: string;
  /** The response head, as curl -D wrote it. */
  head: string;
}

/** `curl --data-binary @file` as frontend, with the flags given (protocol, Expect). */
async function upload(file: string, urlPath: string, flags: string[]): Promise<Upload> {
  const result = await curl(
    [
      "-sS",
      "-v",
      ...flags,
      "--cacert",
      pki.bundlePath,
      "--cert",
      frontend.certPath,
      "--key",
      frontend.keyPath,
      "--data-binary",
      `@${file}`,
      "-D",
      "-",
      "-o",
      "/dev/null",
      "-w",
      "\n%{http_code} %{size_upload}\n",
      `${sidecar.inboundUrl}${urlPath}`,
    ],
    { timeoutMs: 30_000 },
  );
  const lines = result.stdout.trimEnd().split("\n");
  const [status, uploaded] = lines.at(-1)!.split(" ").map(Number);
  return { status: status!, uploaded: uploaded!, trace: result.stderr, head: lines.slice(0, -1).join("\n") };
}

function requestLines(from: number): LogLine[] {
  return sidecar.logs.slice(from).filter((line) => line.msg === "request");
}

/** The inbound request count for frontend, by decision and status class, from /metrics. */
async function counted(decision: string, statusClass: string): Promise<number> {
  const text = await sidecar.sidecar.metrics.metrics();
  let sum = 0;
  for (const line of text.split("\n")) {
    if (!line.startsWith("mtlsd_requests_total{")) continue;
    if (!line.includes(`decision="${decision}"`) || !line.includes(`status_class="${statusClass}"`)) continue;
    sum += Number(line.split(" ").at(-1));
  }
  return sum;
}

/** Quiet time for a late parse error, had one been coming, to be logged. */
const settle = () => new Promise((resolve) => setTimeout(resolve, 300));

t.test(
  "a denied HTTP/1.1 upload waiting for 100-continue gets its 403 without a 100, and sends no body",
  async (t) => {
    const before = sidecar.logs.length;
    const denied4xx = await counted("deny", "4xx");
    const result = await upload(big, "/elsewhere", ["--http1.1", "-H", "Expect: 100-continue"]);
    await settle();
    t.equal(result.status, 403);
    t.notMatch(result.trace, /HTTP\/1\.1 100/, "no 100 Continue was sent");
    t.equal(result.uploaded, 0, "not one byte of the 50 MiB body was sent");
    t.match(result.head, /connection: close/i, "the unread body ends the connection");
    const lines = requestLines(before);
    t.equal(lines.length, 1, "one log line");
    t.match(lines[0], { status: 403, reason: "policy_denied", path: "/elsewhere", protocol: "http/1.1" });
    t.equal(await counted("deny", "4xx"), denied4xx + 1, "one count");
  },
);

t.test("an allowed HTTP/1.1 upload gets its 100 Continue and reaches the app whole", async (t) => {
  const before = sidecar.logs.length;
  const result = await upload(small, "/uploads", ["--http1.1", "-H", "Expect: 100-continue"]);
  t.equal(result.status, 200);
  t.match(result.trace, /HTTP\/1\.1 100 Continue/);
  t.equal(result.uploaded, 5 * MIB);
  t.match(requestLines(before), [{ status: 200, decision: "allow", path: "/uploads" }]);
});

t.test(
  "a denied upload sent without waiting is answered, and logged and counted once when the client hangs up",
  async (t) => {
    // `Expect:` with no value stops curl from sending the header: the body follows the head at once.
    const before = sidecar.logs.length;
    const denied4xx = await counted("deny", "4xx");
    const result = await upload(big, "/elsewhere", ["--http1.1", "-H", "Expect:"]);
    await settle();
    t.equal(result.status, 403);
    t.ok(result.uploaded < 50 * MIB, `curl stopped at the 403 (${result.uploaded} bytes sent)`);
    const lines = requestLines(before);
    t.equal(lines.length, 1, "one log line: the body cut short by the hang-up is no second request");
    t.match(lines[0], { status: 403, reason: "policy_denied" });
    t.equal(await counted("deny", "4xx"), denied4xx + 1, "one count");
  },
);

t.test(
  "a client that stops waiting for the 100 and sends anyway still reads its 403, logged once",
  async (t) => {
    // curl sends the body after --expect100-timeout without a 100: the refusal finds it already on the wire, and
    // the connection, which must close, reads and drops it meanwhile instead of resetting it under our answer.
    const before = sidecar.logs.length;
    const result = await upload(big, "/elsewhere", [
      "--http1.1",
      "-H",
      "Expect: 100-continue",
      "--expect100-timeout",
      "0.001",
    ]);
    await settle();
    t.equal(result.status, 403, "not a send failure: the 403 was read");
    t.match(result.head, /connection: close/i);
    t.ok(result.uploaded < 50 * MIB, `curl stopped at the 403 (${result.uploaded} bytes sent)`);
    t.equal(requestLines(before).length, 1);
  },
);

t.test("a denied HTTP/2 upload waiting for 100-continue gets its 403 and sends no body", async (t) => {
  const before = sidecar.logs.length;
  const result = await upload(big, "/elsewhere", ["--http2", "-H", "Expect: 100-continue"]);
  await settle();
  t.equal(result.status, 403);
  t.notMatch(result.trace, /HTTP\/2 100/, "no 100 was sent");
  t.equal(result.uploaded, 0);
  t.match(requestLines(before), [{ status: 403, reason: "policy_denied", protocol: "h2" }]);
  t.equal(requestLines(before).length, 1);
});

t.test(
  "an allowed HTTP/2 upload waiting for 100-continue gets its 100 and reaches the app whole",
  async (t) => {
    const result = await upload(small, "/uploads", ["--http2", "-H", "Expect: 100-continue"]);
    t.equal(result.status, 200);
    t.match(result.trace, /HTTP\/2 100/);
    t.equal(result.uploaded, 5 * MIB);
  },
);
