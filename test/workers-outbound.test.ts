// `workers: 2` on the outbound side: each worker pools its own upstream connections; /status and /metrics sum them.
import { once } from "node:events";
import { readFile, writeFile } from "node:fs/promises";
import http from "node:http";
import net from "node:net";
import path from "node:path";
import t from "tap";
import { parse, stringify } from "yaml";
import { startApp } from "./helpers/app.ts";
import { createTestPki, identityConfig } from "./helpers/pki.ts";
import { type SidecarProcess, spawnSidecar } from "./helpers/process.ts";
import { logLine, metricValue, workerThatServed } from "./helpers/workers.ts";

t.setTimeout(120_000);
const pki = await createTestPki();
t.teardown(() => pki.cleanup());
const app = await startApp();
t.teardown(() => app.stop());
const orders = await pki.identity("orders");
const frontend = await pki.identity("frontend");

/** Spawns `mtlsd run` for `config`; stopped with SIGTERM (drained) when the file's tests end. */
async function spawn(name: string, config: Record<string, unknown>): Promise<SidecarProcess> {
  const file = path.join(pki.dir, `${name}.yaml`);
  await writeFile(file, stringify(config));
  const sidecar = await spawnSidecar(file, 30_000);
  t.teardown(async () => {
    const killer = setTimeout(() => sidecar.child.kill("SIGKILL"), 15_000);
    await sidecar.stop("SIGTERM");
    clearTimeout(killer);
  });
  return sidecar;
}

/** A plain HTTP GET on a connection of its own, as an app calling its sidecar would make it. */
function get(port: number, requestPath: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const request = http.get({ host: "127.0.0.1", port, path: requestPath, agent: false }, (response) => {
      response.resume();
      response.on("end", () => resolve(response.statusCode!));
    });
    request.on("error", reject);
  });
}

const inbound = await spawn("orders-in", {
  identity: identityConfig(pki, orders),
  inbound: {
    listen: "127.0.0.1:0",
    app: app.url,
    policy: { rules: [{ name: "frontend", action: "allow", from: [frontend.spiffeId] }] },
  },
  admin: { listen: "127.0.0.1:0" },
});
const outbound = await spawn("frontend-out", {
  workers: 2,
  identity: identityConfig(pki, frontend),
  outbound: {
    listen: "127.0.0.1:0",
    upstreams: {
      orders: { address: inbound.listeners.inbound, identity: orders.spiffeId, listen: "127.0.0.1:0" },
    },
  },
  admin: { listen: "127.0.0.1:0" },
});
const upstreamPort = Number(outbound.listeners["upstream:orders"]!.split(":")[1]);
const admin = outbound.listeners.admin!;

t.test("calls through an upstream's port are served by both workers, each with its own pool", async (t) => {
  const workers: number[] = [];
  for (let i = 0; i < 6; i++) {
    t.equal(await get(upstreamPort, `/out/${i}`), 200);
    workers.push(await workerThatServed(outbound, `/out/${i}`));
  }
  t.same([...new Set(workers)].sort(), [1, 2], `calls went to ${workers.join(", ")}`);
  t.equal(await metricValue(admin, "mtlsd_requests_total", 'direction="outbound"'), 6);
  // Each worker keeps its pooled connection to the upstream: two in all.
  t.equal(await metricValue(admin, "mtlsd_upstream_connections", 'upstream="orders"'), 2);
});

t.test("/status sums the workers' upstream pools and /readyz counts their listeners", async (t) => {
  // The primary refreshes the workers' pool numbers every second.
  await new Promise((resolve) => setTimeout(resolve, 1500));
  const status = (await (await fetch(`http://${admin}/status`)).json()) as {
    upstreams: Record<string, { connections: number; endpoints: { connections: number }[] }>;
  };
  t.equal(status.upstreams.orders?.connections, 2);
  t.equal(status.upstreams.orders?.endpoints[0]?.connections, 2);
  const readyz = (await (await fetch(`http://${admin}/readyz`)).json()) as {
    ready: boolean;
    checks: Record<string, { ok: boolean; detail: string }>;
  };
  t.equal(readyz.ready, true);
  t.equal(readyz.checks.listeners?.ok, true);
  t.equal(readyz.checks.upstreams?.ok, true);
});

t.test(
  "a reload adding an upstream port that is taken is refused once, and every worker keeps serving",
  async (t) => {
    const taken = net.createServer().listen(0, "127.0.0.1");
    await once(taken, "listening");
    t.teardown(() => taken.close());
    const port = (taken.address() as net.AddressInfo).port;
    const file = path.join(pki.dir, "frontend-out.yaml");
    const config = parse(await readFile(file, "utf8"));
    config.outbound.upstreams.billing = {
      address: inbound.listeners.inbound,
      identity: orders.spiffeId,
      listen: `127.0.0.1:${port}`,
    };
    await writeFile(file, stringify(config));
    const refused = await logLine(outbound, (line) => String(line.msg).startsWith("config reload refused"));
    t.match(refused.error, "outbound.upstreams.billing.listen");
    t.match(refused.error, "already in use");
    t.equal(outbound.logs.filter((line) => String(line.msg).startsWith("config reload")).length, 1);
    t.equal(await metricValue(admin, "mtlsd_config_reloads_total", 'result="failure"'), 1);
    const workers = new Set<number>();
    for (let i = 0; i < 4; i++) {
      t.equal(await get(upstreamPort, `/after-refusal/${i}`), 200);
      workers.add(await workerThatServed(outbound, `/after-refusal/${i}`));
    }
    t.same([...workers].sort(), [1, 2]);
  },
);
