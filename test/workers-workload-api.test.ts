// `workers: 2` with the SPIFFE Workload API: one stream (the primary's), each rotation pushed to every worker.
import { writeFile } from "node:fs/promises";
import path from "node:path";
import t from "tap";
import { stringify } from "yaml";
import { startApp } from "./helpers/app.ts";
import { createTestPki } from "./helpers/pki.ts";
import { spawnSidecar } from "./helpers/process.ts";
import { logLine, metricValue, requestOnNewConnection, workerThatServed } from "./helpers/workers.ts";
import { WorkloadApiServer } from "./helpers/workload-api.ts";

t.setTimeout(120_000);
const pki = await createTestPki();
t.teardown(() => pki.cleanup());
const app = await startApp();
t.teardown(() => app.stop());
const orders = await pki.identity("orders");
const frontend = await pki.identity("frontend");
const client = { pki, identity: frontend };
const svid = (identity: typeof orders) => ({
  spiffeId: identity.spiffeId,
  chainPem: identity.chainPem,
  keyPem: identity.keyPem,
  bundlePem: pki.bundlePem,
});

t.test("an SVID rotation reaches every worker through the primary's one stream", async (t) => {
  const agent = await WorkloadApiServer.start(path.join(pki.dir, "agent.sock"), { svids: [svid(orders)] });
  t.teardown(() => agent.stop());
  const file = path.join(pki.dir, "workload-api.yaml");
  await writeFile(
    file,
    stringify({
      workers: 2,
      identity: { workloadApi: { socket: agent.socket }, trustDomain: pki.trustDomain },
      inbound: {
        listen: "127.0.0.1:0",
        app: app.url,
        policy: { rules: [{ name: "frontend", action: "allow", from: [frontend.spiffeId] }] },
      },
      admin: { listen: "127.0.0.1:0" },
    }),
  );
  const sidecar = await spawnSidecar(file, 30_000);
  t.teardown(async () => {
    const killer = setTimeout(() => sidecar.child.kill("SIGKILL"), 15_000);
    await sidecar.stop("SIGTERM");
    clearTimeout(killer);
  });
  t.equal(agent.streams, 1, "only the primary talks to the agent");
  const port = Number(sidecar.listeners.inbound!.split(":")[1]);
  const renewed = await pki.identity("orders-renewed", { spiffeId: orders.spiffeId });
  agent.push({ svids: [svid(renewed)] });
  await logLine(sidecar, (line) => line.msg === "credentials reloaded");
  const serials = new Set<string>();
  const workers = new Set<number>();
  for (let i = 0; i < 4; i++) {
    const result = await requestOnNewConnection(port, client, `/svid/${i}`);
    t.equal(result.status, 200);
    serials.add(result.serial);
    workers.add(await workerThatServed(sidecar, `/svid/${i}`));
  }
  t.same([...workers].sort(), [1, 2]);
  t.same([...serials], [renewed.issued.serialHex.toUpperCase()], "both workers present the rotated SVID");
  const status = (await (await fetch(`http://${sidecar.listeners.admin}/status`)).json()) as {
    source: string;
  };
  t.equal(status.source, "workload_api");
  t.equal(
    await metricValue(sidecar.listeners.admin!, "mtlsd_credential_reloads_total", 'result="success"'),
    1,
  );
});
