// identity.reload changed by a config reload: the credential watch comes and goes, and the polls (files, and
// federated bundle files beside the Workload API) take the new pace, without a restart.
import { writeFile } from "node:fs/promises";
import path from "node:path";
import t from "tap";
import { startApp } from "./helpers/app.ts";
import { createTestPki } from "./helpers/pki.ts";
import { editConfig } from "./helpers/reload.ts";
import { waitFor, waitForSerial } from "./helpers/rotation.ts";
import { startSidecar } from "./helpers/sidecar.ts";
import { WorkloadApiServer } from "./helpers/workload-api.ts";

const pki = await createTestPki();
t.teardown(() => pki.cleanup());
const app = await startApp();
t.teardown(() => app.stop());
const orders = await pki.identity("orders");
const INBOUND = { listen: "127.0.0.1:0", app: app.url };

t.test("turning identity.reload.watch on by a reload picks up the next rotation at once", async (t) => {
  const stamp = Date.now();
  const cert = path.join(pki.dir, `watch-${stamp}.crt`);
  const key = path.join(pki.dir, `watch-${stamp}.key`);
  await writeFile(cert, orders.chainPem);
  await writeFile(key, orders.keyPem);
  const running = await startSidecar(pki, orders, {
    identity: {
      cert,
      key,
      trustBundle: pki.bundlePath,
      trustDomain: pki.trustDomain,
      reload: { watch: false, interval: "1h" },
    },
    inbound: INBOUND,
  });
  t.teardown(() => running.stop());
  t.match(await editConfig(running, (config) => (config.identity.reload.watch = true)), {
    changed: ["identity.reload.watch"],
  });
  const renewed = await pki.identity(`orders-watched-${stamp}`, { spiffeId: orders.spiffeId });
  await writeFile(cert, renewed.chainPem);
  await writeFile(key, renewed.keyPem);
  await waitForSerial(running.sidecar, renewed.issued.serialHex, 5000);

  await editConfig(running, (config) => (config.identity.reload.watch = false));
  const again = await pki.identity(`orders-unwatched-${stamp}`, { spiffeId: orders.spiffeId });
  await writeFile(cert, again.chainPem);
  await writeFile(key, again.keyPem);
  await new Promise((resolve) => setTimeout(resolve, 800));
  t.equal(
    running.sidecar.store.current.leaf.serialHex,
    renewed.issued.serialHex.toLowerCase(),
    "with the watch off again, only SIGHUP or the hourly poll would see it",
  );
});

t.test(
  "beside the Workload API, a faster identity.reload.interval re-reads federated bundle files sooner",
  async (t) => {
    const partner = await createTestPki("partner.example");
    t.teardown(() => partner.cleanup());
    const bundle = path.join(partner.dir, "partner-ca.crt");
    await writeFile(bundle, partner.bundlePem);
    const issued = await pki.identity("orders-api");
    const server = await WorkloadApiServer.start(path.join(pki.dir, `agent-reload-${Date.now()}.sock`), {
      svids: [
        {
          spiffeId: issued.spiffeId,
          chainPem: issued.chainPem,
          keyPem: issued.keyPem,
          bundlePem: pki.bundlePem,
        },
      ],
    });
    t.teardown(() => server.stop());
    const running = await startSidecar(pki, orders, {
      identity: {
        workloadApi: { socket: server.socket },
        trustDomain: pki.trustDomain,
        federation: [{ trustDomain: "partner.example", trustBundle: bundle }],
        reload: { interval: "1h" },
      },
      inbound: INBOUND,
    });
    t.teardown(() => running.stop());
    t.match(await editConfig(running, (config) => (config.identity.reload.interval = "200ms")), {
      changed: ["identity.reload.interval"],
    });
    const next = await createTestPki("partner.example");
    t.teardown(() => next.cleanup());
    await writeFile(bundle, partner.bundlePem + next.bundlePem);
    await waitFor("the poll", () => running.sidecar.store.current.federation[0]?.roots.length === 2);
    t.pass("picked up by the poll at the new pace");
  },
);
