// What a config reload leaves to see: /status.configReload, mtlsd_config_reloads_total and the log for a refused
// file and for changes waiting for a restart; and settings read later (reload pace, drain timeout) taken live.
import { writeFile } from "node:fs/promises";
import path from "node:path";
import t from "tap";
import { stringify } from "yaml";
import { startApp } from "./helpers/app.ts";
import { createTestPki, identityConfig } from "./helpers/pki.ts";
import { spawnSidecar } from "./helpers/process.ts";
import { editConfig } from "./helpers/reload.ts";
import { waitForSerial } from "./helpers/rotation.ts";
import { type LogLine, startSidecar, waitForLog } from "./helpers/sidecar.ts";

const pki = await createTestPki();
t.teardown(() => pki.cleanup());
const app = await startApp();
t.teardown(() => app.stop());
const orders = await pki.identity("orders");
const frontend = await pki.identity("frontend");
const INBOUND = {
  listen: "127.0.0.1:0",
  app: app.url,
  policy: { rules: [{ name: "frontend", action: "allow", from: [frontend.spiffeId] }] },
};

async function status(adminUrl: string): Promise<{ configReload: Record<string, unknown> }> {
  return (await (await fetch(`${adminUrl}/status`)).json()) as { configReload: Record<string, unknown> };
}

t.test("a file that does not validate is refused: /status, the metric and the log say so", async (t) => {
  const running = await startSidecar(pki, orders, { inbound: INBOUND });
  t.teardown(() => running.stop());
  const reloads = async () =>
    Object.fromEntries(
      (await running.sidecar.metrics.configReloads.get()).values.map((sample) => [
        sample.labels.result,
        sample.value,
      ]),
    );
  t.same(await reloads(), { success: 0, failure: 0 }, "both series exist from the start");

  await writeFile(running.configPath, "identity: [not, a, mapping\n");
  t.match(await running.sidecar.reloadConfig("signal"), { result: "rejected", error: /valid YAML/ });
  t.match((await status(running.adminUrl)).configReload, {
    result: "failure",
    trigger: "signal",
    error: { code: "CONFIG_INVALID", message: /valid YAML/ },
  });
  t.same(await reloads(), { success: 0, failure: 1 });
  t.match(
    running.logs.find((line) => line.msg === "config reload refused; keeping the running config"),
    { level: "warn", trigger: "signal", code: "CONFIG_INVALID" },
  );
  t.equal(running.sidecar.policy?.ruleCount, 1, "the running policy stays");
});

t.test("changes waiting for a restart are listed in /status until the file matches again", async (t) => {
  const running = await startSidecar(pki, orders, { inbound: INBOUND });
  t.teardown(() => running.stop());
  const outcome = await editConfig(running, (config) => {
    config.inbound.listen = "127.0.0.1:1";
    config.inbound.appTimeout = "5s";
  });
  t.match(outcome, {
    result: "applied",
    changed: ["inbound.appTimeout"],
    restartRequired: ["inbound.listen"],
  });
  t.match((await status(running.adminUrl)).configReload, {
    result: "success",
    error: null,
    restartRequired: ["inbound.listen"],
  });
  t.match(
    running.logs.find((line) => line.msg?.startsWith("config reloaded; some changes need a restart")),
    { level: "warn", restart_required: ["inbound.listen"], changed: ["inbound.appTimeout"] },
  );
  t.equal(running.sidecar.addresses().inbound?.port, running.inboundPort, "still on its port");
  await editConfig(running, (config) => (config.inbound.listen = "127.0.0.1:0"));
  t.match((await status(running.adminUrl)).configReload, { result: "success", restartRequired: [] });
});

t.test("a faster identity.reload.interval polls the credential files at the new pace", async (t) => {
  const stamp = Date.now();
  const cert = path.join(pki.dir, `pace-${stamp}.crt`);
  const key = path.join(pki.dir, `pace-${stamp}.key`);
  await writeFile(cert, orders.chainPem);
  await writeFile(key, orders.keyPem);
  const running = await startSidecar(pki, orders, {
    identity: {
      ...identityConfig(pki, { certPath: cert, keyPath: key }),
      reload: { watch: false, interval: "1h" },
    },
    inbound: INBOUND,
  });
  t.teardown(() => running.stop());
  t.match(await editConfig(running, (config) => (config.identity.reload.interval = "200ms")), {
    changed: ["identity.reload.interval"],
  });
  const renewed = await pki.identity(`orders-paced-${stamp}`, { spiffeId: orders.spiffeId });
  await writeFile(cert, renewed.chainPem);
  await writeFile(key, renewed.keyPem);
  await waitForSerial(running.sidecar, renewed.issued.serialHex, 5000);
  t.pass("picked up by the poll, not in an hour");
});

t.test("mtlsd run drains for the limits.drainTimeout of the config reloaded last", async (t) => {
  const file = path.join(pki.dir, `drain-reload-${Date.now()}.yaml`);
  const text = (drainTimeout: string) =>
    stringify({
      identity: identityConfig(pki, orders),
      inbound: INBOUND,
      limits: { drainTimeout },
      admin: { listen: "127.0.0.1:0" },
    });
  await writeFile(file, text("30s"));
  const running = await spawnSidecar(file);
  t.teardown(() => running.stop("SIGKILL"));
  await writeFile(file, text("1s"));
  await waitForLog(running.logs as LogLine[], (line) => line.msg === "config reloaded", 8000);
  t.equal(await running.stop("SIGTERM"), 0);
  t.match(
    running.logs.find((line) => line.msg === "stop signal received"),
    { drain_timeout_ms: 1000 },
  );
});
