// Stopping without dropping: SIGTERM drains the real mtlsd process, a second signal exits at once.
import { spawn } from "node:child_process";
import { EventEmitter, once } from "node:events";
import { writeFile } from "node:fs/promises";
import net from "node:net";
import path from "node:path";
import t from "tap";
import { stringify } from "yaml";
import { startApp } from "./helpers/app.ts";
import { type GateApp, startGateApp } from "./helpers/gate-app.ts";
import { inboundAddress, startCaller, startUpstream } from "./helpers/outbound.ts";
import { createTestPki, identityConfig } from "./helpers/pki.ts";
import { type SidecarProcess, spawnSidecar } from "./helpers/process.ts";
import { type ClientTls, plainConnection, RawConnection, rawGet } from "./helpers/raw-http.ts";
import { installFiles } from "./helpers/rotation.ts";
import { startSidecar } from "./helpers/sidecar.ts";

type Test = Parameters<Parameters<typeof t.test>[0]>[0];

const FIXTURE = new URL("./fixtures/stop-and-exit.ts", import.meta.url).pathname;

const pki = await createTestPki();
t.teardown(() => pki.cleanup());
const orders = await pki.identity("orders");
const frontend = await pki.identity("frontend");
const client: ClientTls = { ca: pki.bundlePem, cert: frontend.chainPem, key: frontend.keyPem };

interface Running {
  process: SidecarProcess;
  gate: GateApp;
  inboundPort: number;
  adminUrl: string;
}

/** Starts the real `mtlsd run` in front of a gate app; the teardown kills whatever is left. */
async function start(t: Test, drainTimeout = "10s"): Promise<Running> {
  const gate = await startGateApp();
  t.teardown(() => gate.close());
  const configPath = path.join(pki.dir, `drain-${Date.now()}-${Math.random().toString(36).slice(2)}.yaml`);
  await writeFile(
    configPath,
    stringify({
      identity: identityConfig(pki, orders),
      inbound: {
        listen: "127.0.0.1:0",
        app: gate.url,
        policy: { rules: [{ name: "frontend", action: "allow", from: [frontend.spiffeId] }] },
      },
      limits: { drainTimeout },
      admin: { listen: "127.0.0.1:0" },
      log: { level: "info" },
    }),
  );
  const process = await spawnSidecar(configPath);
  t.teardown(() => {
    if (process.child.exitCode === null && process.child.signalCode === null) process.child.kill("SIGKILL");
  });
  const port = (address: string) => Number(address.split(":").at(-1));
  return {
    process,
    gate,
    inboundPort: port(process.listeners.inbound!),
    adminUrl: `http://127.0.0.1:${port(process.listeners.admin!)}`,
  };
}

/**
 * Resolves with the exit code once the process has exited and its output is read to the end ("close", not
 * "exit", so the last log lines are in), or rejects if it is still running after `timeoutMs`.
 */
async function exitWithin(running: Running, timeoutMs: number): Promise<number | null> {
  const { child } = running.process;
  if (child.exitCode !== null && child.stdout?.readableEnded) return child.exitCode;
  const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
  const [code, signal] = (await once(child, "close")) as [number | null, string | null];
  clearTimeout(timer);
  if (signal === "SIGKILL") throw new Error(`mtlsd still running after ${timeoutMs} ms`);
  return code;
}

/** Polls /readyz (bounded) until it answers 503, and returns its body. */
async function untilDraining(running: Running): Promise<Record<string, unknown>> {
  for (const deadline = Date.now() + 5000; Date.now() < deadline; ) {
    const response = await fetch(`${running.adminUrl}/readyz`, { signal: AbortSignal.timeout(2000) });
    const body = (await response.json()) as Record<string, unknown>;
    if (response.status === 503) return body;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  throw new Error("/readyz never answered 503");
}

/** Whether a new TCP connection to `port` is refused. */
function refused(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect(port, "127.0.0.1");
    socket.once("connect", () => {
      socket.destroy();
      resolve(false);
    });
    socket.once("error", (error: NodeJS.ErrnoException) => resolve(error.code === "ECONNREFUSED"));
  });
}

t.test(
  "SIGTERM lets a request in flight finish, answered with Connection: close, then exits 0",
  async (t) => {
    const running = await start(t);
    const connection = await RawConnection.open(running.inboundPort, client);
    t.teardown(() => connection.close());
    connection.write(rawGet("/gate/slow"));
    await running.gate.arrived();

    running.process.child.kill("SIGTERM");
    const readiness = await untilDraining(running);
    t.match(readiness, { ready: false, reason: "draining", failed: ["draining"] });
    const status = (await (await fetch(`${running.adminUrl}/status`)).json()) as { draining: boolean };
    t.equal(status.draining, true, "/status says so too");
    t.ok(await refused(running.inboundPort), "new connections are refused at once");

    running.gate.release();
    const { responses } = await connection.read(1, 5000);
    t.equal(responses[0]?.status, 200);
    t.equal(responses[0]?.body, "released");
    t.equal(responses[0]?.header("connection"), "close");
    t.ok(await connection.closedWithin(2000), "the connection is closed after the response");
    t.equal(await exitWithin(running, 5000), 0);
    const stopped = running.process.logs.find((line) => line.msg === "mtlsd stopped");
    t.match(stopped, { in_flight: 1, cut: 0 });
    t.match(
      running.process.logs.find((line) => line.msg === "stop signal received"),
      { signal: "SIGTERM", drain_timeout_ms: 10_000 },
    );
  },
);

t.test(
  "idle keep-alive connections, and connected ones that said nothing, close as the drain starts",
  async (t) => {
    const running = await start(t);
    const idle = await RawConnection.open(running.inboundPort, client);
    t.teardown(() => idle.close());
    idle.write(rawGet("/open"));
    const first = await idle.read(1, 5000);
    t.equal(first.responses[0]?.status, 200);
    t.equal(first.closed, false, "kept alive after its response");
    const silent = await RawConnection.open(running.inboundPort, client);
    t.teardown(() => silent.close());
    // A request in flight keeps the process draining, so these close because of the drain, not the exit.
    const busy = await RawConnection.open(running.inboundPort, client);
    t.teardown(() => busy.close());
    busy.write(rawGet("/gate/hold"));
    await running.gate.arrived();

    running.process.child.kill("SIGTERM");
    t.ok(await idle.closedWithin(3000), "the idle keep-alive connection is closed");
    t.ok(await silent.closedWithin(3000), "the silent one too");
    t.equal(running.process.child.exitCode, null, "while the drain is still going");
    running.gate.release();
    t.equal((await busy.read(1, 5000)).responses[0]?.status, 200);
    t.equal(await exitWithin(running, 5000), 0);
  },
);

t.test("a request still arriving when the drain starts is served, with Connection: close", async (t) => {
  const running = await start(t);
  const busy = await RawConnection.open(running.inboundPort, client);
  t.teardown(() => busy.close());
  busy.write(rawGet("/gate/hold"));
  await running.gate.arrived();
  const late = await RawConnection.open(running.inboundPort, client);
  t.teardown(() => late.close());
  const request = rawGet("/open/late");
  late.write(request.slice(0, 20));
  // Let the sidecar read the first half, so the request has begun when the signal comes.
  await new Promise((resolve) => setTimeout(resolve, 300));

  running.process.child.kill("SIGTERM");
  await untilDraining(running);
  late.write(request.slice(20));
  const { responses } = await late.read(1, 5000);
  t.equal(responses[0]?.status, 200, "served, not cut");
  t.equal(responses[0]?.header("connection"), "close");
  t.ok(await late.closedWithin(2000));
  running.gate.release();
  t.equal(await exitWithin(running, 5000), 0);
});

t.test("a second signal during the drain exits 1 at once, cutting what is in flight", async (t) => {
  const running = await start(t, "1m");
  const connection = await RawConnection.open(running.inboundPort, client);
  t.teardown(() => connection.close());
  connection.write(rawGet("/gate/forever"));
  await running.gate.arrived();

  running.process.child.kill("SIGTERM");
  await untilDraining(running);
  running.process.child.kill("SIGINT");
  t.equal(await exitWithin(running, 3000), 1, "well before the 1 m drain timeout");
  t.match(
    running.process.logs.find((line) => line.msg?.toString().startsWith("second stop signal")),
    { level: "warn", signal: "SIGINT" },
  );
  const { responses, closed } = await connection.read(1, 2000);
  t.same(responses, [], "the request in flight got no response");
  t.equal(closed, true, "its connection was cut");
});

t.test("at the drain deadline what is still open is cut, and the exit is still 0", async (t) => {
  const running = await start(t, "500ms");
  const connection = await RawConnection.open(running.inboundPort, client);
  t.teardown(() => connection.close());
  connection.write(rawGet("/gate/never"));
  await running.gate.arrived();

  running.process.child.kill("SIGTERM");
  t.equal(await exitWithin(running, 5000), 0);
  const cut = running.process.logs.find((line) => line.msg?.toString().startsWith("drain deadline reached"));
  t.match(cut, { level: "warn", in_flight: 1, cut: 1 });
  const { responses, closed } = await connection.read(1, 2000);
  t.same(responses, []);
  t.equal(closed, true);
});

t.test("SIGINT drains like SIGTERM", async (t) => {
  const running = await start(t);
  running.process.child.kill("SIGINT");
  t.equal(await exitWithin(running, 5000), 0);
  t.match(
    running.process.logs.find((line) => line.msg === "stop signal received"),
    { signal: "SIGINT" },
  );
  t.match(running.process.logs.at(-1), { msg: "mtlsd stopped", in_flight: 0, cut: 0 });
});

t.test("in-process, a second stop during a drain brings the deadline forward to its own", async (t) => {
  const gate = await startGateApp();
  t.teardown(() => gate.close());
  const running = await startSidecar(pki, orders, {
    inbound: {
      listen: "127.0.0.1:0",
      app: gate.url,
      policy: { rules: [{ name: "frontend", action: "allow", from: [frontend.spiffeId] }] },
    },
  });
  t.teardown(() => running.stop());
  const connection = await RawConnection.open(running.inboundPort, client);
  t.teardown(() => connection.close());
  connection.write(rawGet("/gate/held"));
  await gate.arrived();

  const first = running.sidecar.stop(60_000);
  t.equal(running.sidecar.draining, true);
  const started = Date.now();
  await running.sidecar.stop(0);
  t.ok(Date.now() - started < 5000, "the second stop did not wait out the first one's minute");
  await first;
  t.match(running.logs.at(-1), { msg: "mtlsd stopped", in_flight: 1, cut: 1 });
  t.equal((await connection.read(1, 2000)).closed, true);
});

t.test("the outbound listener drains too, and the upstream pool closes after", async (t) => {
  const gate = await startGateApp();
  t.teardown(() => gate.close());
  const upstream = await startUpstream(pki, orders, gate, [frontend.spiffeId]);
  t.teardown(() => upstream.stop());
  const caller = await startCaller(pki, frontend, {
    orders: { address: inboundAddress(upstream), identity: orders.spiffeId },
  });
  t.teardown(() => caller.stop());
  const port = caller.outboundPort;
  const app = plainConnection(port);
  t.teardown(() => app.socket.destroy());
  app.socket.write("GET /gate/outbound HTTP/1.1\r\nHost: orders\r\n\r\n");
  await gate.arrived();
  t.equal(caller.sidecar.upstreamStats().orders?.connections, 1);

  const stopped = caller.sidecar.stop(10_000);
  t.ok(await refused(port), "the outbound listener no longer accepts");
  gate.release();
  await app.closedWithin(5000);
  t.match(app.received(), /^HTTP\/1\.1 200 OK\r\n/);
  t.match(app.received(), /\r\nconnection: close\r\n/i);
  t.match(app.received(), /\r\n\r\nreleased$/);
  await stopped;
  t.equal(caller.sidecar.upstreamStats().orders?.connections, 0, "the pool's connections are closed");
  t.match(caller.logs.at(-1), { msg: "mtlsd stopped", in_flight: 1, cut: 0 });
});

t.test(
  "a drain waits for a request on a pool retired by a rotation, then closes that pool too",
  async (t) => {
    const gate = await startGateApp();
    t.teardown(() => gate.close());
    const upstream = await startUpstream(pki, orders, gate, [frontend.spiffeId]);
    t.teardown(() => upstream.stop());
    const caller = await startCaller(pki, frontend, {
      orders: { address: inboundAddress(upstream), identity: orders.spiffeId },
    });
    t.teardown(() => caller.stop());
    const app = plainConnection(caller.outboundPort);
    t.teardown(() => app.socket.destroy());
    app.socket.write("GET /gate/rotated HTTP/1.1\r\nHost: orders\r\n\r\n");
    await gate.arrived();
    // The rotation retires the pool that carries the request; the new pool has no connection yet.
    const next = await pki.identity("frontend-drain-next", { spiffeId: frontend.spiffeId });
    await installFiles(caller.sidecar.store, {
      cert: next.certPath,
      key: next.keyPath,
      trustBundle: pki.bundlePath,
    });
    t.match(caller.sidecar.upstreamStats().orders, { connections: 1, pending: 1 }, "on the retired pool");

    const stopped = caller.sidecar.stop(10_000);
    gate.release();
    await app.closedWithin(5000);
    t.match(app.received(), /^HTTP\/1\.1 200 OK\r\n/, "the request finished");
    await stopped;
    t.match(
      caller.sidecar.upstreamStats().orders,
      { connections: 0, pending: 0 },
      "the retired pool is closed",
    );
    t.match(caller.logs.at(-1), { msg: "mtlsd stopped", in_flight: 1, cut: 0 });
  },
);

t.test("a SIGHUP during a drain is answered, not fatal, and stopping removes the listener", async (t) => {
  const gate = await startGateApp();
  t.teardown(() => gate.close());
  const signals = new EventEmitter();
  const running = await startSidecar(
    pki,
    orders,
    {
      inbound: {
        listen: "127.0.0.1:0",
        app: gate.url,
        policy: { rules: [{ name: "frontend", action: "allow", from: [frontend.spiffeId] }] },
      },
    },
    { signals },
  );
  t.teardown(() => running.stop());
  const connection = await RawConnection.open(running.inboundPort, client);
  t.teardown(() => connection.close());
  connection.write(rawGet("/gate/held-over-sighup"));
  await gate.arrived();

  const stopped = running.sidecar.stop(10_000);
  t.equal(signals.listenerCount("SIGHUP"), 1, "still listening while draining");
  signals.emit("SIGHUP");
  t.match(running.logs.at(-1), { msg: "draining: reload ignored", signal: "SIGHUP" });
  t.notOk(
    running.logs.some((line) => line.msg === "reloading credentials and config"),
    "nothing is reloaded",
  );
  gate.release();
  t.equal((await connection.read(1, 5000)).responses[0]?.status, 200);
  await stopped;
  t.equal(signals.listenerCount("SIGHUP"), 0, "removed once stopped");
});

t.test(
  "after a drain nothing the sidecars started keeps the process alive: watchers, timers, old pools",
  async (t) => {
    const app = await startApp();
    t.teardown(() => app.stop());
    const next = await pki.identity("frontend-exit-next", { spiffeId: frontend.spiffeId });
    const identity = (who: { certPath: string; keyPath: string }) => ({
      ...identityConfig(pki, who),
      // Watch and poll as in production, with a short poll so its timer is surely armed.
      reload: { watch: true, interval: "1s" },
    });
    const upstreamConfig = path.join(pki.dir, "exit-upstream.yaml");
    await writeFile(
      upstreamConfig,
      stringify({
        identity: identity(orders),
        inbound: {
          listen: "127.0.0.1:0",
          app: app.url,
          policy: { rules: [{ name: "frontend", action: "allow", from: [frontend.spiffeId] }] },
        },
        admin: { listen: "127.0.0.1:0" },
        log: { level: "silent" },
      }),
    );
    const child = spawn(
      process.execPath,
      [
        FIXTURE,
        JSON.stringify({
          upstreamConfig,
          callerConfig: path.join(pki.dir, "exit-caller.yaml"),
          callerIdentity: identity(frontend),
          upstreamId: orders.spiffeId,
          next: { cert: next.certPath, key: next.keyPath, trustBundle: pki.bundlePath },
        }),
      ],
      { stdio: ["ignore", "pipe", "pipe"] },
    );
    t.teardown(() => {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    });
    let stdout = "";
    let stderr = "";
    child.stdout.setEncoding("utf8").on("data", (chunk: string) => {
      stdout += chunk;
    });
    child.stderr.setEncoding("utf8").on("data", (chunk: string) => {
      stderr += chunk;
    });
    // Starting, two calls and a rotation take a second or two; a process held by a handle never ends.
    const timer = setTimeout(() => child.kill("SIGKILL"), 20_000);
    const [code, signal] = (await once(child, "close")) as [number | null, NodeJS.Signals | null];
    clearTimeout(timer);
    t.equal(signal, null, `the process ended by itself (${stderr.trim() || "no stderr"})`);
    t.equal(code, 0, stderr);
    const report = JSON.parse(stdout.trim().split("\n").at(-1) ?? "{}") as Record<string, unknown>;
    t.match(report, {
      stopped: true,
      statuses: [200, 200],
      sighupListenersLeft: 0,
      upstream: { connections: 0, pending: 0 },
    });
  },
);
