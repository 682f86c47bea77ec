// HTTP/2 floods against the inbound port: each is contained to its own connection, memory stays bounded,
// and the sidecar serves everyone else within a second.
import { once } from "node:events";
import http2 from "node:http2";
import t from "tap";
import { startApp } from "./helpers/app.ts";
import { encodeHeaders, FLAG, FRAME, frame, type HeaderList, RawH2 } from "./helpers/h2-raw.ts";
import { createTestPki } from "./helpers/pki.ts";
import { startWiretap } from "./helpers/raw-http.ts";
import { startSidecar } from "./helpers/sidecar.ts";

const pki = await createTestPki();
t.teardown(() => pki.cleanup());
const frontend = await pki.identity("frontend");
const orders = await pki.identity("orders");
const app = await startApp();
t.teardown(() => app.stop());
// The sidecar reaches the app through a byte recorder, so a test can count the requests a flood got through.
const wiretap = await startWiretap(app.port);
t.teardown(() => wiretap.close());
const sidecar = await startSidecar(pki, orders, {
  inbound: {
    listen: "127.0.0.1:0",
    app: wiretap.url,
    policy: { rules: [{ name: "frontend", action: "allow", from: [frontend.spiffeId] }] },
  },
  // The attacks log a line per stream they reach; keep the test's memory to the sidecar's own.
  log: { level: "warn" },
});
t.teardown(() => sidecar.stop());
const port = sidecar.inboundPort;
const tlsClient = {
  ca: pki.bundlePem,
  cert: frontend.chainPem,
  key: frontend.keyPem,
  servername: "localhost",
};

const REQUEST: HeaderList = [
  [":method", "GET"],
  [":scheme", "https"],
  [":authority", "orders"],
  [":path", "/v1/flood"],
];

/** A well-behaved client on its own connection: the time its request took, which must stay short. */
async function bystander(): Promise<{ status: number; ms: number }> {
  const started = Date.now();
  const session = http2.connect(`https://localhost:${port}`, tlsClient);
  session.on("error", () => {});
  try {
    const stream = session.request({ ":path": "/v1/bystander" });
    stream.resume();
    const [headers] = (await once(stream, "response")) as [http2.IncomingHttpHeaders];
    await once(stream, "end");
    return { status: Number(headers[":status"]), ms: Date.now() - started };
  } finally {
    session.close();
  }
}

/** Waits for the attacker's connection to end (GOAWAY, reset or close), with a bound. */
async function ended(raw: RawH2, timeoutMs = 5000): Promise<boolean> {
  raw.socket.resume();
  try {
    await raw.until(() => raw.closed || raw.goaway !== undefined, timeoutMs);
    return true;
  } catch {
    return raw.closed || raw.goaway !== undefined;
  }
}

/** After a write the socket would not take: until it drains, or is gone. */
function settled(raw: RawH2): Promise<unknown> {
  if (raw.closed || raw.socket.destroyed) return Promise.resolve();
  return new Promise((resolve) => {
    raw.socket.once("drain", resolve);
    raw.socket.once("close", resolve);
  });
}

const rss = () => process.memoryUsage().rss;
const MiB = 1024 * 1024;

t.test(
  "rapid reset (CVE-2023-44487): streams opened and reset at once end the attacker's connection",
  async (t) => {
    const before = rss();
    const raw = await RawH2.connect({ port, tls: tlsClient });
    t.teardown(() => raw.close());
    const path = "/v1/rapid-reset";
    const block = encodeHeaders([...REQUEST.slice(0, 3), [":path", path]]);
    const reset = Buffer.from([0, 0, 0, 8]);
    const batch: Buffer[] = [];
    const opened = 5000;
    for (let stream = 1; stream < 2 * opened; stream += 2) {
      batch.push(frame(FRAME.HEADERS, FLAG.END_HEADERS | FLAG.END_STREAM, stream, block));
      batch.push(frame(FRAME.RST_STREAM, 0, stream, reset));
    }
    raw.send(Buffer.concat(batch));
    t.ok(await ended(raw), "the attacker's connection was ended");
    t.ok(raw.goaway, `the server said goodbye: ${JSON.stringify(raw.goaway)}`);
    const other = await bystander();
    t.equal(other.status, 200);
    t.ok(other.ms < 1000, `a bystander was served in ${other.ms} ms`);
    t.ok(rss() - before < 200 * MiB, `memory stayed bounded (+${Math.round((rss() - before) / MiB)} MiB)`);
    // A stream reset in the read that opened it is never forwarded; only one whose RST_STREAM came in a later
    // read (the two frames split across TLS records) may have reached the app.
    const reached = wiretap.requests().filter((request) => request.target === path).length;
    t.ok(reached < opened / 100, `the app was sent ${reached} of the ${opened} reset streams`);
  },
);

t.test("a CONTINUATION flood (CVE-2024-27983 class) is cut long before it is read whole", async (t) => {
  const before = rss();
  const raw = await RawH2.connect({ port, tls: tlsClient });
  t.teardown(() => raw.close());
  raw.send(frame(FRAME.HEADERS, 0, 1, encodeHeaders(REQUEST)));
  const filler = encodeHeaders([["x-filler", "f".repeat(1000)]]);
  let sent = 0;
  // 20 MB of header block in CONTINUATION frames that never end it, far beyond limits.maxHeaderSize.
  for (let i = 0; i < 20_000 && !raw.closed; i++) {
    if (!raw.send(frame(FRAME.CONTINUATION, 0, 1, filler))) await settled(raw);
    sent++;
  }
  t.ok(await ended(raw), "the connection was ended");
  t.ok(sent < 20_000 || raw.goaway !== undefined, `the server stopped reading (${sent} frames written)`);
  const other = await bystander();
  t.equal(other.status, 200);
  t.ok(other.ms < 1000, `a bystander was served in ${other.ms} ms`);
  t.ok(rss() - before < 200 * MiB, `memory stayed bounded (+${Math.round((rss() - before) / MiB)} MiB)`);
});

for (const [name, type, payload] of [
  ["SETTINGS", FRAME.SETTINGS, Buffer.alloc(0)],
  ["PING", FRAME.PING, Buffer.alloc(8)],
] as const) {
  t.test(
    `a ${name} flood from a peer that never reads the acknowledgements ends its connection`,
    async (t) => {
      const before = rss();
      const raw = await RawH2.connect({ port, tls: tlsClient });
      t.teardown(() => raw.close());
      raw.autoAck = false;
      raw.socket.pause();
      const one = frame(type, 0, 0, payload);
      const batch = Buffer.concat(Array.from({ length: 10_000 }, () => one));
      for (let i = 0; i < 20 && !raw.closed; i++) {
        if (!raw.send(batch)) await settled(raw);
      }
      t.ok(await ended(raw), "the connection was ended");
      const other = await bystander();
      t.equal(other.status, 200);
      t.ok(other.ms < 1000, `a bystander was served in ${other.ms} ms`);
      t.ok(rss() - before < 200 * MiB, `memory stayed bounded (+${Math.round((rss() - before) / MiB)} MiB)`);
    },
  );
}

t.test("streams beyond limits.maxConcurrentStreams are refused; those within are served", async (t) => {
  const raw = await RawH2.connect({ port, tls: tlsClient });
  t.teardown(() => raw.close());
  const post: HeaderList = [[":method", "POST"], ...REQUEST.slice(1)];
  const streams = Array.from({ length: 130 }, (_, i) => 2 * i + 1);
  // Every request waits for its body, so all of them are open at once.
  for (const stream of streams) raw.request(stream, post, false);
  await raw.until(() => streams.slice(100).every((stream) => raw.streams.get(stream)?.reset !== undefined));
  const refused = streams.filter((stream) => raw.streams.get(stream)?.reset !== undefined);
  t.equal(refused.length, 30, "the 30 beyond the limit of 100 were refused");
  t.match(raw.streams.get(streams[100]!)?.reset, /REFUSED_STREAM|PROTOCOL_ERROR/);
  for (const stream of streams.slice(0, 100)) raw.data(stream, "body");
  await raw.until(() => streams.slice(0, 100).every((stream) => raw.streams.get(stream)?.ended));
  t.ok(
    streams.slice(0, 100).every((stream) => raw.streams.get(stream)?.status === 200),
    "the 100 within the limit were served",
  );
  const other = await bystander();
  t.equal(other.status, 200);
});
