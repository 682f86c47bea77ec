// An instance of an upstream killed under load: no GET fails, it is ejected and comes back; a POST is never resent.
import { once } from "node:events";
import { writeFile } from "node:fs/promises";
import http from "node:http";
import type net from "node:net";
import path from "node:path";
import t from "tap";
import { Pool } from "undici";
import { stringify } from "yaml";
import { createTestPki, identityConfig } from "./helpers/pki.ts";
import { type SidecarProcess, spawnSidecar } from "./helpers/process.ts";
import { type RunningSidecar, startSidecar, waitForLog } from "./helpers/sidecar.ts";

type Test = Parameters<Parameters<typeof t.test>[0]>[0];

const pki = await createTestPki();
t.teardown(() => pki.cleanup());
const frontend = await pki.identity("frontend");
const orders = await pki.identity("orders");

/** What every instance's app does with `/hold`: the first one after `holdNext()` is never answered. */
const hold = { next: false, by: undefined as number | undefined };

interface InstanceApp {
  url: string;
  /** Requests received, by "METHOD /path". */
  received: Map<string, number>;
  close(): Promise<void>;
}

/** The app behind instance `index`: answers 200 with `x-instance: index`, or holds one /hold request. */
async function instanceApp(index: number): Promise<InstanceApp> {
  const received = new Map<string, number>();
  const sockets = new Set<net.Socket>();
  const server = http.createServer((req, res) => {
    const key = `${req.method} ${req.url}`;
    received.set(key, (received.get(key) ?? 0) + 1);
    req.resume();
    req.once("end", () => {
      if (req.url === "/hold" && hold.next) {
        hold.next = false;
        hold.by = index;
        return;
      }
      res.writeHead(200, { "content-type": "text/plain", "x-instance": String(index) });
      res.end(`instance ${index}`);
    });
  });
  server.on("connection", (socket: net.Socket) => {
    sockets.add(socket);
    socket.once("close", () => sockets.delete(socket));
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  return {
    url: `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`,
    received,
    async close() {
      for (const socket of sockets) socket.destroy();
      server.close();
      await once(server, "close");
    },
  };
}

const apps = await Promise.all([0, 1, 2].map(instanceApp));
t.teardown(() => Promise.all(apps.map((app) => app.close())));

/** `mtlsd run` as orders in front of app `index`: a real process, so that killing it is a real kill. */
async function spawnInstance(index: number, listen: string): Promise<SidecarProcess> {
  const configPath = path.join(pki.dir, `orders-${index}-${Date.now()}.yaml`);
  await writeFile(
    configPath,
    stringify({
      identity: identityConfig(pki, orders),
      inbound: {
        listen,
        app: apps[index]!.url,
        policy: { rules: [{ name: "frontend", action: "allow", from: [frontend.spiffeId] }] },
      },
      admin: { listen: "127.0.0.1:0" },
      log: { level: "info" },
    }),
  );
  const running = await spawnSidecar(configPath);
  t.teardown(() => {
    if (running.child.exitCode === null && running.child.signalCode === null) running.child.kill("SIGKILL");
  });
  return running;
}

const processes = await Promise.all([0, 1, 2].map((index) => spawnInstance(index, "127.0.0.1:0")));
const addresses = processes.map((running) => running.listeners.inbound!);

async function kill(index: number): Promise<void> {
  const { child } = processes[index]!;
  const exited = once(child, "exit");
  child.kill("SIGKILL");
  await exited;
}

/** Starts instance `index` again on the address it had. */
async function restart(index: number): Promise<void> {
  processes[index] = await spawnInstance(index, addresses[index]!);
}

interface Caller extends RunningSidecar {
  pool: Pool;
}

async function caller(t: Test, upstream: Record<string, unknown>): Promise<Caller> {
  const running = await startSidecar(pki, frontend, {
    outbound: {
      listen: "127.0.0.1:0",
      upstreams: { orders: { endpoints: addresses, identity: orders.spiffeId, ...upstream } },
    },
  });
  t.teardown(() => running.stop());
  const pool = new Pool(`http://127.0.0.1:${running.sidecar.addresses().outbound!.port}`, {
    connections: 16,
  });
  t.teardown(() => pool.close());
  return { ...running, pool };
}

interface Outcome {
  status: number;
  instance: string | undefined;
  /** When the request was sent, in ms since the epoch. */
  at: number;
  body: string;
}

async function send(via: Caller, requestPath: string, method = "GET", body?: string): Promise<Outcome> {
  const at = Date.now();
  try {
    const response = await via.pool.request({
      path: requestPath,
      method: method as "GET",
      headers: { host: "orders" },
      ...(body !== undefined ? { body } : {}),
    });
    const instance = response.headers["x-instance"];
    return {
      status: response.statusCode,
      instance: typeof instance === "string" ? instance : undefined,
      at,
      body: await response.body.text(),
    };
  } catch (error) {
    return { status: 0, instance: undefined, at, body: (error as Error).message };
  }
}

/** `workers` loops of GETs, one at a time each, until stopped: the app's steady traffic. */
function steadyLoad(via: Caller, workers: number) {
  const outcomes: Outcome[] = [];
  let stopped = false;
  let sequence = 0;
  const loops = Array.from({ length: workers }, async () => {
    while (!stopped) outcomes.push(await send(via, `/load/${sequence++}`));
  });
  return {
    outcomes,
    async stop(): Promise<Outcome[]> {
      stopped = true;
      await Promise.all(loops);
      return outcomes;
    },
  };
}

async function until(condition: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

const servedBy = (outcomes: readonly Outcome[], index: number) =>
  outcomes.filter((outcome) => outcome.instance === String(index)).length;

t.test(
  "an instance killed under steady GET load: no GET fails, it is ejected, and back once restarted",
  async (t) => {
    const via = await caller(t, { retries: 1, outlier: { ejectFor: "300ms", maxEjectFor: "1s" } });
    const load = steadyLoad(via, 8);
    await until(() => [0, 1, 2].every((index) => servedBy(load.outcomes, index) >= 20), "all three serve");

    await kill(1);
    const killedAt = Date.now();
    const ejected = await waitForLog(
      via.logs,
      (line) => line.msg === "upstream endpoint ejected" && line.endpoint === addresses[1],
      10_000,
    );
    // Usually the next connection is refused (or reset, if it was being accepted as the process died); with
    // many requests in flight, their broken streams may count to consecutiveFailures first.
    t.match(ejected, {
      level: "warn",
      upstream: "orders",
      reason: /^(connect_failure|consecutive_failures)$/,
    });
    const afterKill = load.outcomes.length;
    await until(() => load.outcomes.length >= afterKill + 200, "200 more requests");
    const whileDown = load.outcomes.filter((outcome) => outcome.at > killedAt);
    t.equal(servedBy(whileDown, 1), 0, "nothing answered by the killed instance");
    t.ok(servedBy(whileDown, 0) > 0 && servedBy(whileDown, 2) > 0, "the other two take its share");

    await restart(1);
    const restartedAt = Date.now();
    await until(
      () => load.outcomes.some((outcome) => outcome.at > restartedAt && outcome.instance === "1"),
      "the restarted instance serves again",
    );
    await waitForLog(
      via.logs,
      (line) =>
        line.msg === "upstream endpoint answers again after its ejection" && line.endpoint === addresses[1],
      10_000,
    );
    const outcomes = await load.stop();

    const failed = outcomes.filter((outcome) => outcome.status !== 200);
    const stats = via.sidecar.upstreamStats().orders!;
    t.comment(
      `${outcomes.length} GETs (${[0, 1, 2].map((index) => servedBy(outcomes, index)).join(" / ")} by instance), ` +
        `${failed.length} failed; sent again: ${stats.retries.not_sent} never sent, ${stats.retries.idempotent} after a lost connection; ` +
        `${stats.ejections} ejections`,
    );
    t.same(
      failed.slice(0, 5).map(({ status, body }) => `${status} ${body}`),
      [],
      `no GET failed (${failed.length} of ${outcomes.length})`,
    );
    t.same(
      stats.endpoints.map((endpoint) => endpoint.state),
      ["healthy", "healthy", "healthy"],
    );
  },
);

t.test("a POST in flight on a killed instance gets a clear 502 and is not sent again", async (t) => {
  const via = await caller(t, { retries: 1 });
  hold.next = true;
  hold.by = undefined;
  const pending = send(via, "/hold", "POST", "order=42");
  await until(() => hold.by !== undefined, "the POST reached an instance");
  const holder = hold.by!;
  await kill(holder);
  const outcome = await pending;
  t.equal(outcome.status, 502);
  const error = JSON.parse(outcome.body) as { reason: string; error: string };
  // The connection died under the stream: HTTP/2 reports it as the stream cut (upstream_reset), HTTP/1.1 as closed.
  t.match(error.reason, /^upstream_(reset|unreachable)$/);
  t.match(error.error, `orders: ${addresses[holder]} failed after the request was sent (`);
  t.match(error.error, "); not sent again: a POST with a body may have been processed");
  const posts = apps.reduce((sum, app) => sum + (app.received.get("POST /hold") ?? 0), 0);
  t.equal(posts, 1, "the POST reached one instance, once");
  const line = await waitForLog(via.logs, (entry) => entry.msg === "request" && entry.path === "/hold");
  t.match(line, { level: "warn", status: 502, reason: error.reason, endpoint: addresses[holder] });
  await restart(holder);
});

t.test("a GET in flight on a killed instance is sent again only when retries allows", async (t) => {
  for (const retries of [0, 1]) {
    const via = await caller(t, { retries });
    const before = apps.map((app) => app.received.get("GET /hold") ?? 0);
    hold.next = true;
    hold.by = undefined;
    const pending = send(via, "/hold");
    await until(() => hold.by !== undefined, "the GET reached an instance");
    const holder = hold.by!;
    await kill(holder);
    const outcome = await pending;
    const arrivals = apps.reduce(
      (sum, app, index) => sum + (app.received.get("GET /hold") ?? 0) - before[index]!,
      0,
    );
    if (retries === 0) {
      t.equal(outcome.status, 502, "retries: 0 — the lost GET is not sent again");
      t.match(JSON.parse(outcome.body).error, "not sent again: retries is 0");
      t.equal(arrivals, 1);
    } else {
      t.equal(outcome.status, 200, "retries: 1 — the lost GET is answered by another instance");
      t.not(outcome.instance, String(holder));
      t.equal(arrivals, 2, "it reached two instances: the killed one, then another");
    }
    await restart(holder);
  }
});
