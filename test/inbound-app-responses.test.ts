// What the app answers: 1xx before the final response is passed over; framing a proxy must refuse is a 502 that says so.
import { once } from "node:events";
import http2 from "node:http2";
import t from "tap";
import { startApp } from "./helpers/app.ts";
import { createTestPki } from "./helpers/pki.ts";
import { type ClientTls, exchange, RawConnection, rawGet } from "./helpers/raw-http.ts";
import { startSidecar, waitForLog } from "./helpers/sidecar.ts";

const pki = await createTestPki();
t.teardown(() => pki.cleanup());
const app = await startApp(0, "raw-response-app.ts");
t.teardown(() => app.stop());
const orders = await pki.identity("orders");
const frontend = await pki.identity("frontend");
const sidecar = await startSidecar(pki, orders, {
  inbound: {
    listen: "127.0.0.1:0",
    app: app.url,
    policy: { rules: [{ name: "frontend", action: "allow", from: [frontend.spiffeId] }] },
  },
});
t.teardown(() => sidecar.stop());
const client: ClientTls = { ca: pki.bundlePem, cert: frontend.chainPem, key: frontend.keyPem };

/** The app's connection that served the last request to `path`. */
async function appConnectionOf(path: string): Promise<number> {
  const events = app.events.filter((event) => event.path === path);
  if (events.length === 0) await app.event((event) => event.path === path);
  return app.events.filter((event) => event.path === path).at(-1)!.connection as number;
}

for (const [path, what] of [
  ["/continue", "an unsolicited 100 Continue in the same packet as the final response"],
  ["/continue-alone", "an unsolicited 100 Continue on its own, the final response later"],
  ["/continue-split", "an unsolicited 100 Continue with a header, split over three writes"],
  ["/continue-twice", "two unsolicited 100 Continue heads, one of them HTTP/1.0"],
  ["/early-hints", "a 103 Early Hints before the final response"],
  ["/hints-then-continue", "a 103 Early Hints and a 100 Continue in one packet with the final response"],
] as const) {
  t.test(`the app sends ${what}: the client gets only the final response`, async (t) => {
    const result = await exchange(sidecar.inboundPort, client, rawGet(path));
    t.equal(result.responses.length, 1);
    t.equal(result.responses[0]?.status, 200, result.raw);
    t.equal(result.responses[0]?.body, "hello");
    t.notMatch(result.raw, /^HTTP\/1\.1 10[03]/, "the interim response is the app's, not forwarded");
  });
}

t.test("after an unsolicited 100 the connection to the app is kept and reused", async (t) => {
  const connection = await RawConnection.open(sidecar.inboundPort, client);
  t.teardown(() => connection.close());
  connection.write(rawGet("/continue"));
  t.equal((await connection.read(1)).responses[0]?.status, 200);
  connection.write(rawGet("/ok"));
  t.equal((await connection.read(1)).responses[0]?.status, 200);
  t.equal(await appConnectionOf("/ok"), await appConnectionOf("/continue"), "one app connection served both");
});

t.test("HTTP/2: an unsolicited 100 from the app is passed over too", async (t) => {
  const session = http2.connect(`https://localhost:${sidecar.inboundPort}`, client);
  session.on("error", () => {});
  await once(session, "connect");
  t.teardown(() => session.close());
  const stream = session.request({ ":path": "/continue-split" });
  stream.end();
  const [headers] = (await once(stream, "response")) as [http2.IncomingHttpHeaders];
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  t.equal(headers[":status"], 200);
  t.equal(Buffer.concat(chunks).toString(), "hello");
});

/** The value of mtlsd_request_errors_total for one reason, inbound, from /metrics. */
async function protocolErrors(): Promise<number> {
  const text = await (await fetch(`${sidecar.adminUrl}/metrics`)).text();
  const line = text
    .split("\n")
    .find((l) =>
      l.startsWith('mtlsd_request_errors_total{direction="inbound",reason="upstream_protocol_error"}'),
    );
  return line ? Number(line.split(" ").at(-1)) : 0;
}

for (const [path, what, detail] of [
  ["/cl-and-te", "Content-Length with Transfer-Encoding", "Content-Length is contradicted"],
  ["/two-lengths", "two different Content-Lengths", "Content-Length is contradicted"],
  ["/switching", "a 101 to a request that asked for no upgrade", "101 Switching Protocols"],
  ["/bare-lf", "bare LF line ends", "HTTP/1.1"],
] as const) {
  t.test(
    `an app response with ${what} is a 502 upstream_protocol_error: response, log, metric`,
    async (t) => {
      const before = await protocolErrors();
      const result = await exchange(sidecar.inboundPort, client, rawGet(path));
      const response = result.responses[0];
      t.equal(response?.status, 502, result.raw);
      t.equal(response?.header("x-mtlsd-reason"), "upstream_protocol_error");
      const body = JSON.parse(response!.body) as { reason: string; error: string };
      t.equal(body.reason, "upstream_protocol_error");
      t.match(body.error, `app answered with a response that breaks HTTP/1.1`);
      t.match(body.error, detail);
      t.notMatch(result.raw, "hello", "nothing of the app's answer reached the client");
      const line = await waitForLog(sidecar.logs, (l) => l.msg === "request" && l.path === path);
      t.match(line, { level: "warn", reason: "upstream_protocol_error", status: 502 });
      t.equal(await protocolErrors(), before + 1, "mtlsd_request_errors_total counts it under its reason");
    },
  );
}

t.test(
  "a malformed chunk after the head went out cuts the response, logged as upstream_protocol_error",
  async (t) => {
    const before = await protocolErrors();
    const result = await exchange(sidecar.inboundPort, client, rawGet("/bad-chunk"));
    t.match(result.raw, /^HTTP\/1\.1 200 /, "the head had gone out");
    t.equal(result.responses.length, 0, "the response never ends as if complete");
    t.ok(result.closed, "the connection is cut");
    const line = await waitForLog(sidecar.logs, (l) => l.msg === "request" && l.path === "/bad-chunk");
    t.match(line, { level: "warn", reason: "upstream_protocol_error", status: 200 });
    t.equal(await protocolErrors(), before + 1);
  },
);
