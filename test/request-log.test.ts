// The request line: the bytes pino would write, at the right level, none lost or out of order under load or at a drain.
import { once } from "node:events";
import { writeFile } from "node:fs/promises";
import path from "node:path";
import { createInterface } from "node:readline";
import t from "tap";
import { stringify } from "yaml";
import { createLogger } from "../src/telemetry/index.ts";
import { type RequestRecord, TrafficLog } from "../src/telemetry/requests.ts";
import { startApp } from "./helpers/app.ts";
import { mtlsClient } from "./helpers/clients.ts";
import { createTestPki, identityConfig } from "./helpers/pki.ts";
import { spawnSidecar } from "./helpers/process.ts";

const RECORDS: RequestRecord[] = [
  {
    direction: "inbound",
    source_identity: "spiffe://example.org/ns/frontend/sa/frontend",
    destination_identity: "spiffe://example.org/ns/orders/sa/orders",
    method: "GET",
    path: "/orders/1",
    protocol: "http/1.1",
    decision: "allow",
    rule: "frontend",
    reason: "ok",
    status: 200,
    duration_ms: 1.234,
    upstream: undefined,
  },
  {
    direction: "outbound",
    source_identity: "spiffe://example.org/ns/frontend/sa/frontend",
    destination_identity: "spiffe://example.org/ns/orders/sa/orders",
    method: "POST",
    // Quotes, a backslash, control characters and non-ASCII: escaped exactly as JSON.stringify does.
    path: '/a"b\\c\u0001\n/ünï/\u2028',
    protocol: "h2",
    decision: "deny",
    shadow: "shadow_deny",
    shadow_hits: [{ rule: "dry", result: "shadow_deny" }],
    override: { reason: "INC-1", approvedBy: "oncall", expires: "2026-12-03T00:00:00Z" },
    reason: "denied_by_policy",
    status: 403,
    duration_ms: 0.05,
    grpc_status: "7",
    upstream: "orders",
    endpoint: "127.0.0.1:15006",
  },
];

/** Everything a logger writes, as raw lines. */
function capture(level: string) {
  const lines: string[] = [];
  const logger = createLogger({ level, stream: { write: (line: string) => void lines.push(line) } });
  return { logger, lines };
}

const withoutTime = (line: string) => line.replace(/"time":"[^"]+"/, '"time":"T"');

t.test("a request line is byte for byte what pino writes for the same record", async (t) => {
  for (const record of RECORDS) {
    const level = record.decision === "deny" ? "warn" : "info";
    const viaPino = capture("info");
    viaPino.logger[level](record, "request");
    const direct = capture("info");
    new TrafficLog(direct.logger).request(record);
    t.equal(direct.lines.length, 1);
    t.equal(
      withoutTime(direct.lines[0]!),
      withoutTime(viaPino.lines[0]!),
      `${record.method} ${record.status}`,
    );
    t.match(JSON.parse(direct.lines[0]!), { level, pid: process.pid, msg: "request", path: record.path });
  }
});

t.test(
  "the log level still decides: at warn an allowed request writes nothing, a denied one writes",
  async (t) => {
    const { logger, lines } = capture("warn");
    const log = new TrafficLog(logger);
    log.request(RECORDS[0]!);
    t.equal(lines.length, 0);
    log.request(RECORDS[1]!);
    t.equal(lines.length, 1);
    // A level changed at run time (a config reload) applies to the next line.
    logger.level = "info";
    log.request(RECORDS[0]!);
    t.equal(lines.length, 2);
  },
);

t.test(
  "under concurrent load and then a drain, every answered request has one line, in order per connection",
  async (t) => {
    const pki = await createTestPki();
    t.teardown(() => pki.cleanup());
    const app = await startApp();
    t.teardown(() => app.stop());
    const orders = await pki.identity("orders");
    const frontend = await pki.identity("frontend");
    const file = path.join(pki.dir, "request-log.yaml");
    await writeFile(
      file,
      stringify({
        identity: identityConfig(pki, orders),
        log: { level: "info" },
        inbound: {
          listen: "127.0.0.1:0",
          app: app.url,
          policy: { rules: [{ name: "frontend", action: "allow", from: [frontend.spiffeId] }] },
        },
        admin: { listen: "127.0.0.1:0" },
      }),
    );
    const sidecar = await spawnSidecar(file);
    // Every line the process writes, up to the end of its stdout (not only up to its exit).
    const ended = once(createInterface({ input: sidecar.child.stdout! }), "close");
    const origin = `https://${sidecar.listeners.inbound}`;

    const CONNECTIONS = 8;
    const PER_CONNECTION = 150;
    const answered: string[][] = Array.from({ length: CONNECTIONS }, () => []);
    let drainStarted = false;
    const clients = Array.from({ length: CONNECTIONS }, () =>
      mtlsClient(origin, { ca: pki.bundlePem, cert: frontend.chainPem, key: frontend.keyPem }),
    );
    const load = clients.map(async ({ client }, c) => {
      for (let i = 0; i < PER_CONNECTION; i++) {
        const requestPath = `/log-order/${c}/${i}`;
        try {
          const response = await client.request({ path: requestPath, method: "GET" });
          await response.body.text();
          answered[c]!.push(requestPath);
        } catch {
          // Refused once the drain closed the listener: not answered, so not expected in the log.
          if (drainStarted) return;
          throw new Error(`${requestPath} failed before the drain`);
        }
        // Halfway through, the drain begins while every connection has requests going.
        if (c === 0 && i === PER_CONNECTION / 2) {
          drainStarted = true;
          sidecar.child.kill("SIGTERM");
        }
      }
    });
    await Promise.all(load);
    await Promise.all(clients.map((client) => client.close().catch(() => {})));
    const [code] = (await once(sidecar.child, "exit").catch(() => [sidecar.child.exitCode])) as [
      number | null,
    ];
    await ended;
    t.equal(code ?? sidecar.child.exitCode, 0, "the drain ends with exit 0");

    const logged = sidecar.logs.filter((line) => line.msg === "request").map((line) => line.path as string);
    const total = answered.reduce((sum, paths) => sum + paths.length, 0);
    // The drain began when connection 0 was halfway; every connection had its requests going by then.
    t.ok(
      answered.every((paths) => paths.length >= 1),
      `every connection had requests answered before the drain: ${answered.map((p) => p.length).join(", ")}`,
    );
    for (let c = 0; c < CONNECTIONS; c++) {
      const ofConnection = logged.filter((p) => p.startsWith(`/log-order/${c}/`));
      // Each connection sends one request at a time: its lines must come in the order it sent them, none missing.
      t.same(ofConnection, answered[c], `connection ${c}: ${answered[c]!.length} lines, in order`);
    }
    t.equal(logged.length, total, "no extra line either");
  },
);
