// `workers: 2` as an operator runs it: the real CLI, two worker processes behind one port, real mTLS clients.
import { readFile, writeFile } from "node:fs/promises";
import net from "node:net";
import t from "tap";
import { parse, stringify } from "yaml";
import { startApp } from "./helpers/app.ts";
import { createTestPki } from "./helpers/pki.ts";
import { type SidecarProcess, spawnSidecar } from "./helpers/process.ts";
import {
  logLine,
  metricValue,
  requestOnNewConnection,
  workerThatServed,
  writeWorkersConfig,
} from "./helpers/workers.ts";

t.setTimeout(120_000);
const pki = await createTestPki();
t.teardown(() => pki.cleanup());
const app = await startApp();
t.teardown(() => app.stop());
const orders = await pki.identity("orders");
const frontend = await pki.identity("frontend");
const client = { pki, identity: frontend };

/** The subtest handed to a `t.test` callback. */
type TestContext = Parameters<Parameters<typeof t.test>[0]>[0];

/** Starts `mtlsd run` with `workers: 2` for orders, allowing frontend; stopped (killed) at the test's end. */
async function startWorkers(
  t: TestContext,
  name: string,
): Promise<SidecarProcess & { port: number; file: string }> {
  const file = await writeWorkersConfig(pki, orders, {
    name,
    app: app.url,
    workers: 2,
    allow: [frontend.spiffeId],
  });
  const sidecar = await spawnSidecar(file, 30_000);
  // SIGTERM, not SIGKILL: the primary and its workers drain and exit, as in production (and write coverage).
  t.teardown(async () => {
    if (sidecar.child.exitCode !== null) return;
    const killer = setTimeout(() => sidecar.child.kill("SIGKILL"), 15_000);
    await sidecar.stop("SIGTERM");
    clearTimeout(killer);
  });
  const port = Number(sidecar.listeners.inbound!.split(":")[1]);
  return Object.assign(sidecar, { port, file });
}

/** Whether process `pid` has ended: no such process, or a zombie waiting to be reaped. */
async function goneOrZombie(pid: number): Promise<boolean> {
  const stat = await readFile(`/proc/${pid}/stat`, "utf8").catch(() => "");
  return stat === "" || stat.slice(stat.lastIndexOf(")") + 2).startsWith("Z");
}

/** Sends `count` requests, each on a new connection; returns which worker served each. */
async function spread(sidecar: SidecarProcess & { port: number }, label: string, count: number) {
  const workers: number[] = [];
  for (let i = 0; i < count; i++) {
    const result = await requestOnNewConnection(sidecar.port, client, `/${label}/${i}`);
    if (result.status !== 200) throw new Error(`request ${i} answered ${result.status}`);
    workers.push(await workerThatServed(sidecar, `/${label}/${i}`));
  }
  return workers;
}

t.test("two workers serve the same port, and both get connections", async (t) => {
  const sidecar = await startWorkers(t, "spread");
  t.equal(sidecar.logs.find((line) => line.msg === "mtlsd started")?.workers, 2);
  const workers = await spread(sidecar, "spread", 6);
  t.same([...new Set(workers)].sort(), [1, 2], `connections went to ${workers.join(", ")}`);
});

t.test("a TLS session from one worker resumes on the other", async (t) => {
  const sidecar = await startWorkers(t, "resume");
  const first = await requestOnNewConnection(sidecar.port, client, "/resume/first");
  t.equal(first.status, 200);
  t.ok(first.session, "the first connection got a session ticket");
  const issuer = await workerThatServed(sidecar, "/resume/first");
  // Round-robin hands the next connection to the other worker; a few tries make that certain.
  const others: number[] = [];
  for (let i = 0; i < 4; i++) {
    const again = await requestOnNewConnection(sidecar.port, client, `/resume/${i}`, first.session);
    t.equal(again.status, 200);
    t.ok(again.reused, `connection ${i} resumed the session`);
    others.push(await workerThatServed(sidecar, `/resume/${i}`));
  }
  t.ok(
    others.some((worker) => worker !== issuer),
    `worker ${issuer} issued the ticket; resumed on ${others.join(", ")}`,
  );
});

t.test("/metrics on the admin port counts every worker's requests once", async (t) => {
  const sidecar = await startWorkers(t, "metrics");
  const admin = sidecar.listeners.admin!;
  const workers = await spread(sidecar, "metrics", 7);
  t.same([...new Set(workers)].sort(), [1, 2]);
  t.equal(await metricValue(admin, "mtlsd_requests_total", 'direction="inbound"'), 7);
  t.equal(await metricValue(admin, "mtlsd_request_duration_seconds_count", 'direction="inbound"'), 7);
  // The primary's own series are there once, not summed over the workers.
  const text = await (await fetch(`http://${admin}/metrics`)).text();
  t.equal(text.split("\n").filter((line) => line.startsWith("mtlsd_cert_expiry_seconds ")).length, 1);
  const expiry = await metricValue(admin, "mtlsd_cert_expiry_seconds");
  t.ok(expiry > 0 && expiry <= 3600, `cert expiry ${expiry}s is one certificate's, not a sum`);
  t.equal(await metricValue(admin, "mtlsd_ready"), 1);
  t.equal(await metricValue(admin, "mtlsd_worker_restarts_total"), 0);
  const readyz = await fetch(`http://${admin}/readyz`);
  t.equal(readyz.status, 200);
});

t.test("a config change is validated once, reported once, and applied by every worker", async (t) => {
  const sidecar = await startWorkers(t, "config-reload");
  const config = parse(await readFile(sidecar.file, "utf8"));
  // Deny frontend from now on: every worker must refuse it.
  config.inbound.policy.rules[0].from = ["spiffe://example.org/ns/someone-else/sa/someone-else"];
  await writeFile(sidecar.file, stringify(config));
  await logLine(sidecar, (line) => line.msg === "config reloaded");
  const statuses: number[] = [];
  const workers: number[] = [];
  for (let i = 0; i < 4; i++) {
    const result = await requestOnNewConnection(sidecar.port, client, `/after-reload/${i}`);
    statuses.push(result.status!);
    workers.push(await workerThatServed(sidecar, `/after-reload/${i}`));
  }
  t.same(statuses, [403, 403, 403, 403]);
  t.same([...new Set(workers)].sort(), [1, 2], "both workers refused");
  t.equal(sidecar.logs.filter((line) => String(line.msg).startsWith("config reload")).length, 1);
  t.equal(await metricValue(sidecar.listeners.admin!, "mtlsd_config_reloads_total", 'result="success"'), 1);
});

t.test("a bad config is refused once, and every worker keeps the running one", async (t) => {
  const sidecar = await startWorkers(t, "config-bad");
  const config = parse(await readFile(sidecar.file, "utf8"));
  config.inbound.policy.rules[0].from = ["not a spiffe id"];
  await writeFile(sidecar.file, stringify(config));
  const refused = await logLine(sidecar, (line) => String(line.msg).startsWith("config reload refused"));
  t.match(refused.error, "inbound.policy.rules[0].from[0]");
  const workers = await spread(sidecar, "after-bad-config", 4);
  t.same([...new Set(workers)].sort(), [1, 2], "both workers still serve with the running policy");
  t.equal(sidecar.logs.filter((line) => String(line.msg).startsWith("config reload")).length, 1);
  const admin = sidecar.listeners.admin!;
  t.equal(await metricValue(admin, "mtlsd_config_reloads_total", 'result="failure"'), 1);
  t.equal(await metricValue(admin, "mtlsd_config_reloads_total", 'result="success"'), 0);
});

t.test("rotated credentials are validated once and presented by every worker", async (t) => {
  const sidecar = await startWorkers(t, "rotate");
  const before = await requestOnNewConnection(sidecar.port, client, "/rotate/before");
  const renewed = await pki.identity("orders-renewed", { spiffeId: orders.spiffeId });
  await writeFile(orders.certPath, renewed.chainPem);
  await writeFile(orders.keyPath, renewed.keyPem);
  t.teardown(async () => {
    await writeFile(orders.certPath, orders.chainPem);
    await writeFile(orders.keyPath, orders.keyPem);
  });
  sidecar.child.kill("SIGHUP");
  await logLine(sidecar, (line) => line.msg === "credentials reloaded");
  const serials = new Set<string>();
  const workers: number[] = [];
  for (let i = 0; i < 4; i++) {
    const result = await requestOnNewConnection(sidecar.port, client, `/rotate/${i}`);
    t.equal(result.status, 200);
    serials.add(result.serial);
    workers.push(await workerThatServed(sidecar, `/rotate/${i}`));
  }
  t.same([...new Set(workers)].sort(), [1, 2]);
  t.same([...serials], [renewed.issued.serialHex.toUpperCase()], "every worker presents the new certificate");
  t.not(before.serial, renewed.issued.serialHex.toUpperCase());
  t.equal(sidecar.logs.filter((line) => line.msg === "credentials reloaded").length, 1);
  t.equal(
    await metricValue(sidecar.listeners.admin!, "mtlsd_credential_reloads_total", 'result="success"'),
    1,
  );
});

t.test("a bad credential push is refused once, and every worker keeps the old certificate", async (t) => {
  const sidecar = await startWorkers(t, "rotate-bad");
  const before = await requestOnNewConnection(sidecar.port, client, "/bad-push/before");
  const other = await pki.identity("orders-other", { spiffeId: orders.spiffeId });
  // A new certificate with the old key: they do not match.
  await writeFile(orders.certPath, other.chainPem);
  t.teardown(() => writeFile(orders.certPath, orders.chainPem));
  sidecar.child.kill("SIGHUP");
  const failed = await logLine(sidecar, (line) => String(line.msg).startsWith("credential reload failed"));
  t.equal(failed.code, "CERT_KEY_MISMATCH");
  const serials = new Set<string>();
  for (let i = 0; i < 4; i++) {
    const result = await requestOnNewConnection(sidecar.port, client, `/bad-push/${i}`);
    t.equal(result.status, 200);
    serials.add(result.serial);
  }
  t.same([...serials], [before.serial], "both workers still present the old certificate");
  t.equal(sidecar.logs.filter((line) => String(line.msg).startsWith("credential reload failed")).length, 1);
  t.equal(
    await metricValue(sidecar.listeners.admin!, "mtlsd_credential_reloads_total", 'result="failure"'),
    1,
  );
});

t.test("a worker killed with SIGKILL is replaced and counted, and traffic continues", async (t) => {
  const sidecar = await startWorkers(t, "kill");
  const admin = sidecar.listeners.admin!;
  await spread(sidecar, "before-kill", 4);
  t.equal(await metricValue(admin, "mtlsd_requests_total", 'direction="inbound"'), 4);
  const started = await logLine(sidecar, (line) => line.msg === "worker started" && line.worker === 1);
  process.kill(started.pid as number, "SIGKILL");
  const exited = await logLine(sidecar, (line) => line.msg === "worker exited; starting a replacement");
  t.equal(exited.worker, 1);
  t.equal(exited.signal, "SIGKILL");
  await logLine(sidecar, (line) => line.msg === "worker replaced");
  const replacement = await logLine(
    sidecar,
    (line) => line.msg === "worker started" && line.worker === 1 && line.pid !== started.pid,
  );
  t.not(replacement.pid, started.pid);
  const workers = await spread(sidecar, "after-kill", 4);
  t.same([...new Set(workers)].sort(), [1, 2]);
  t.equal(await metricValue(admin, "mtlsd_worker_restarts_total"), 1);
  t.equal(
    await metricValue(admin, "mtlsd_requests_total", 'direction="inbound"'),
    8,
    "the killed worker's requests still count: the counter does not go down",
  );
  t.equal((await fetch(`http://${admin}/readyz`)).status, 200);
});

t.test("SIGTERM drains every worker, lets requests in flight finish, and exits 0", async (t) => {
  const sidecar = await startWorkers(t, "drain");
  // Two slow requests in flight, one on each worker.
  const slow = [
    requestOnNewConnection(sidecar.port, client, "/slow?ms=1500&n=1"),
    requestOnNewConnection(sidecar.port, client, "/slow?ms=1500&n=2"),
  ];
  await new Promise((resolve) => setTimeout(resolve, 500));
  const code = sidecar.stop("SIGTERM");
  const results = await Promise.all(slow);
  t.same(
    results.map((result) => result.status),
    [200, 200],
  );
  t.equal(await code, 0);
  await logLine(sidecar, (line) => line.msg === "mtlsd stopped" && line.worker === undefined);
  await logLine(sidecar, (line) => line.msg === "worker stopped" && line.worker === 1);
  await logLine(sidecar, (line) => line.msg === "worker stopped" && line.worker === 2);
});

t.test(
  "a replacement worker serves the config as last reloaded, not the one the primary started with",
  async (t) => {
    const sidecar = await startWorkers(t, "catch-up");
    const config = parse(await readFile(sidecar.file, "utf8"));
    config.inbound.policy.rules[0].from = ["spiffe://example.org/ns/someone-else/sa/someone-else"];
    await writeFile(sidecar.file, stringify(config));
    await logLine(sidecar, (line) => line.msg === "config reloaded");
    const started = await logLine(sidecar, (line) => line.msg === "worker started" && line.worker === 2);
    process.kill(started.pid as number, "SIGKILL");
    await logLine(sidecar, (line) => line.msg === "worker replaced");
    const workers: number[] = [];
    for (let i = 0; i < 4; i++) {
      const result = await requestOnNewConnection(sidecar.port, client, `/catch-up/${i}`);
      t.equal(result.status, 403, `request ${i} is refused by the reloaded policy`);
      workers.push(await workerThatServed(sidecar, `/catch-up/${i}`));
    }
    t.same([...new Set(workers)].sort(), [1, 2]);
  },
);

t.test("a second SIGTERM during the drain kills the workers and exits 1", async (t) => {
  const sidecar = await startWorkers(t, "second-signal");
  const pids = await Promise.all(
    [1, 2].map(async (worker) => {
      const line = await logLine(
        sidecar,
        (entry) => entry.msg === "worker started" && entry.worker === worker,
      );
      return line.pid as number;
    }),
  );
  const slow = requestOnNewConnection(sidecar.port, client, "/slow?ms=5000").catch(() => null);
  await new Promise((resolve) => setTimeout(resolve, 300));
  sidecar.child.kill("SIGTERM");
  await logLine(sidecar, (line) => line.msg === "draining" && line.worker === undefined);
  const code = sidecar.stop("SIGTERM");
  t.equal(await code, 1);
  await slow;
  // No worker outlives its primary (one killed but not yet reaped by init is a zombie: it serves nothing).
  await new Promise((resolve) => setTimeout(resolve, 500));
  for (const pid of pids) t.ok(await goneOrZombie(pid), `worker ${pid} is gone`);
});

t.test("a port already in use fails the start with the field named, and exits 1", async (t) => {
  const taken = net.createServer().listen(0, "127.0.0.1");
  await new Promise((resolve) => taken.once("listening", resolve));
  t.teardown(() => taken.close());
  const port = (taken.address() as net.AddressInfo).port;
  const file = await writeWorkersConfig(pki, orders, {
    name: "port-taken",
    app: app.url,
    workers: 2,
    allow: [frontend.spiffeId],
  });
  const config = parse(await readFile(file, "utf8"));
  config.inbound.listen = `127.0.0.1:${port}`;
  await writeFile(file, stringify(config));
  const failed = await spawnSidecar(file, 30_000).then(
    () => null,
    (error: Error) => error.message,
  );
  t.match(failed, /exited with 1 before starting/);
  t.match(failed, "inbound.listen: cannot listen: the port is already in use");
});

t.test("a worker sent SIGTERM on its own drains and is replaced, without counting as a crash", async (t) => {
  const sidecar = await startWorkers(t, "worker-sigterm");
  const started = await logLine(sidecar, (line) => line.msg === "worker started" && line.worker === 2);
  process.kill(started.pid as number, "SIGTERM");
  await logLine(sidecar, (line) => line.msg === "worker stopped" && line.worker === 2);
  const stopped = await logLine(
    sidecar,
    (line) => line.msg === "worker stopped on its own; starting a replacement",
  );
  t.equal(stopped.exit_code, 0);
  await logLine(sidecar, (line) => line.msg === "worker replaced");
  const workers = await spread(sidecar, "after-worker-sigterm", 4);
  t.same([...new Set(workers)].sort(), [1, 2]);
  t.equal(await metricValue(sidecar.listeners.admin!, "mtlsd_worker_restarts_total"), 0);
});
