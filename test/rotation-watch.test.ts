// Rotated files are picked up however they arrive: a Kubernetes secret-volume swap, in-place rewrites, SIGHUP, polling.
import { EventEmitter } from "node:events";
import { mkdir, utimes, writeFile } from "node:fs/promises";
import path from "node:path";
import t from "tap";
import { stringify } from "yaml";
import { ConfigError, parseConfig } from "../src/config/index.ts";
import { type IssuedCert, issueLeaf } from "../src/pki/index.ts";
import { startApp } from "./helpers/app.ts";
import { createTestPki } from "./helpers/pki.ts";
import { spawnSidecar } from "./helpers/process.ts";
import {
  type CredentialPems,
  probe,
  reloadCount,
  rewriteInPlace,
  SecretVolume,
  sleep,
  waitFor,
  waitForSerial,
} from "./helpers/rotation.ts";
import { type RunningSidecar, startSidecar, waitForLog } from "./helpers/sidecar.ts";

/** The subtest handed to a `t.test` callback. */
type TestContext = Parameters<Parameters<typeof t.test>[0]>[0];

const pki = await createTestPki();
t.teardown(() => pki.cleanup());
const app = await startApp();
t.teardown(() => app.stop());
const frontend = await pki.identity("frontend");
const client = { ca: pki.bundlePem, cert: frontend.chainPem, key: frontend.keyPem };
const ORDERS = `spiffe://${pki.trustDomain}/ns/orders/sa/orders`;

function issueOrders(): Promise<IssuedCert> {
  return issueLeaf(pki.intermediate, { spiffeId: ORDERS, dnsNames: ["localhost"] });
}

function pems(leaf: IssuedCert): CredentialPems {
  return { cert: leaf.chainPem, key: leaf.keyPem, bundle: pki.bundlePem };
}

/** Plain files in a directory of their own, for the writers that rewrite in place. */
async function plainFiles(name: string, leaf: IssuedCert) {
  const dir = path.join(pki.dir, name);
  await mkdir(dir, { recursive: true });
  const files = {
    cert: path.join(dir, "tls.crt"),
    key: path.join(dir, "tls.key"),
    bundle: path.join(dir, "ca.crt"),
  };
  await writeFile(files.cert, leaf.chainPem);
  await writeFile(files.key, leaf.keyPem);
  await writeFile(files.bundle, pki.bundlePem);
  return files;
}

function ordersConfig(files: { cert: string; key: string; bundle: string }, reload: Record<string, unknown>) {
  return {
    identity: {
      cert: files.cert,
      key: files.key,
      trustBundle: files.bundle,
      trustDomain: pki.trustDomain,
      reload,
    },
    inbound: {
      listen: "127.0.0.1:0",
      app: app.url,
      policy: { rules: [{ name: "frontend", action: "allow", from: [frontend.spiffeId] }] },
    },
    // Tests run in parallel: the admin listener's default port would collide.
    admin: { listen: "127.0.0.1:0" },
  };
}

async function startOrders(
  t: TestContext,
  files: { cert: string; key: string; bundle: string },
  reload: Record<string, unknown>,
  options: { signals?: EventEmitter } = {},
): Promise<RunningSidecar> {
  const orders = await startSidecar(pki, frontend, ordersConfig(files, reload), options);
  t.teardown(() => orders.stop());
  return orders;
}

/** A fresh connection to the inbound listener is served with this certificate, and the request goes through. */
async function servesWith(t: TestContext, port: number, leaf: IssuedCert) {
  const result = await probe(port, client);
  t.equal(result.serverSerial, leaf.serialHex.toLowerCase(), "new handshakes get the new certificate");
  t.equal(result.response?.status, 200, "and the request reaches the app");
}

const reloadLogs = (orders: RunningSidecar) =>
  orders.logs.filter((line) => line.msg === "credentials reloaded");

t.test("identity.reload defaults to watching, with a 30 s polling backstop", async (t) => {
  const { config } = parseConfig(
    stringify(ordersConfig({ cert: "a", key: "b", bundle: "c" }, {})),
    "/x.yaml",
  );
  t.same(config.identity.reload, { watch: true, interval: 30_000 });
  t.equal(config.identity.crl, undefined);
});

t.test("a polling interval below 100ms is refused, naming the field", async (t) => {
  const text = stringify(ordersConfig({ cert: "a", key: "b", bundle: "c" }, { interval: "10ms" }));
  const error = await Promise.resolve()
    .then(() => parseConfig(text, "/x.yaml"))
    .catch((error: unknown) => error);
  t.type(error, ConfigError);
  t.match((error as ConfigError).issues, [{ path: "identity.reload.interval", found: '"10ms"' }]);
});

t.test("a Kubernetes secret-volume swap is picked up, every time, by the directory watch", async (t) => {
  const first = await issueOrders();
  const volume = await SecretVolume.create(path.join(pki.dir, "k8s-volume"), pems(first));
  // An hour between polls: only the watch can notice a swap within this test.
  const orders = await startOrders(t, volume.paths, { watch: true, interval: "1h" });
  await servesWith(t, orders.inboundPort, first);
  const serials = [first.serialHex];
  for (let swap = 1; swap <= 5; swap++) {
    const next = await issueOrders();
    await volume.swap(pems(next));
    await waitForSerial(orders.sidecar, next.serialHex);
    await servesWith(t, orders.inboundPort, next);
    t.equal((await volume.dataDirectories()).length, 1, `swap ${swap}: the old data directory is gone`);
    serials.push(next.serialHex);
  }
  t.equal(await reloadCount(orders.sidecar, "success"), 5, "five swaps, five reloads");
  t.equal(await reloadCount(orders.sidecar, "failure"), 0, "and no failure");
  const logs = reloadLogs(orders);
  t.same(
    logs.map((line) => [line.old_serial, line.new_serial]),
    serials.slice(1).map((serial, index) => [serials[index], serial]),
    "each reload logs the serial it replaced and the one it installed",
  );
  t.ok(
    logs.every((line) => line.trigger === "watch" && line.bundle_changed === false),
    "each picked up by the watch, with the same bundle",
  );
  t.ok(
    logs.every((line) => typeof line.old_not_after === "string" && typeof line.new_not_after === "string"),
    "and the notAfter of both",
  );
  t.equal(orders.sidecar.reloadStatus().result, "success", "/status: the last reload succeeded");
  t.equal(orders.sidecar.reloadStatus().trigger, "watch", "/status: and what triggered it");
});

t.test(
  "cert, key and bundle rewritten in place one after another are picked up once, with no failure",
  async (t) => {
    const first = await issueOrders();
    const files = await plainFiles("in-place", first);
    const orders = await startOrders(t, files, { watch: true, interval: "1h" });
    const next = await issueOrders();
    // Gaps longer than the debounce: a read between the cert and the key sees a new cert with the old key.
    await rewriteInPlace(
      [
        [files.cert, next.chainPem],
        [files.key, next.keyPem],
        [files.bundle, pki.bundlePem],
      ],
      300,
    );
    await waitForSerial(orders.sidecar, next.serialHex);
    await servesWith(t, orders.inboundPort, next);
    t.ok(
      orders.logs.some((line) => line.msg.startsWith("credential files do not validate yet")),
      "a reader did see the half-written version, and waited",
    );
    // Longer than the settle window: a failure would have been declared by now.
    await sleep(1500);
    t.equal(await reloadCount(orders.sidecar, "success"), 1, "one push, one reload");
    t.equal(await reloadCount(orders.sidecar, "failure"), 0, "the half-written moment is not a failed push");
    t.notOk(orders.logs.some((line) => line.msg.startsWith("credential reload failed")));
  },
);

t.test("a write that changes no bytes reloads nothing", async (t) => {
  const first = await issueOrders();
  const files = await plainFiles("same-bytes", first);
  const orders = await startOrders(t, files, { watch: true, interval: "1h" });
  await writeFile(files.cert, first.chainPem);
  await utimes(files.key, new Date(), new Date());
  await sleep(800);
  t.equal(await reloadCount(orders.sidecar, "success"), 0);
  t.equal(await reloadCount(orders.sidecar, "failure"), 0);
  t.equal(orders.sidecar.reloadStatus().trigger, "startup");
});

t.test("SIGHUP reloads the files when nothing watches them", async (t) => {
  const first = await issueOrders();
  const files = await plainFiles("sighup", first);
  const signals = new EventEmitter();
  const orders = await startOrders(t, files, { watch: false, interval: "1h" }, { signals });
  const next = await issueOrders();
  await writeFile(files.cert, next.chainPem);
  await writeFile(files.key, next.keyPem);
  await sleep(500);
  t.equal(
    orders.sidecar.store.current.leaf.serialHex,
    first.serialHex.toLowerCase(),
    "not picked up by itself",
  );
  signals.emit("SIGHUP");
  await waitForSerial(orders.sidecar, next.serialHex);
  await servesWith(t, orders.inboundPort, next);
  t.equal(reloadLogs(orders)[0]?.trigger, "signal");
  t.equal(await reloadCount(orders.sidecar, "success"), 1);
});

t.test("SIGHUP with unchanged files says so and swaps nothing", async (t) => {
  const first = await issueOrders();
  const files = await plainFiles("sighup-same", first);
  const signals = new EventEmitter();
  const orders = await startOrders(t, files, { watch: false, interval: "1h" }, { signals });
  const version = orders.sidecar.store.version;
  signals.emit("SIGHUP");
  await waitForLog(orders.logs, (line) => line.msg === "credential files unchanged; nothing to reload");
  t.equal(orders.sidecar.store.version, version);
  t.equal(await reloadCount(orders.sidecar, "success"), 0);
});

t.test("with watch: false the polling backstop picks up a change", async (t) => {
  const first = await issueOrders();
  const files = await plainFiles("poll", first);
  const orders = await startOrders(t, files, { watch: false, interval: "300ms" });
  const next = await issueOrders();
  await writeFile(files.cert, next.chainPem);
  await writeFile(files.key, next.keyPem);
  await waitForSerial(orders.sidecar, next.serialHex);
  await servesWith(t, orders.inboundPort, next);
  t.equal(reloadLogs(orders)[0]?.trigger, "poll");
});

t.test("the polling backstop reloads nothing while the files stay the same", async (t) => {
  const files = await plainFiles("poll-idle", await issueOrders());
  const orders = await startOrders(t, files, { watch: false, interval: "100ms" });
  await sleep(1000);
  t.equal(await reloadCount(orders.sidecar, "success"), 0, "ten polls, no reload");
  t.equal(reloadLogs(orders).length, 0);
});

t.test("SIGHUP to the mtlsd process reloads its credentials", async (t) => {
  const first = await issueOrders();
  const files = await plainFiles("cli-sighup", first);
  const configPath = path.join(pki.dir, "cli-sighup.yaml");
  await writeFile(configPath, stringify(ordersConfig(files, { watch: false, interval: "1h" })));
  const mtlsd = await spawnSidecar(configPath);
  t.teardown(() => mtlsd.stop());
  const port = Number(mtlsd.listeners.inbound!.split(":").at(-1));
  const next = await issueOrders();
  await writeFile(files.cert, next.chainPem);
  await writeFile(files.key, next.keyPem);
  mtlsd.child.kill("SIGHUP");
  const line = await waitFor("the reload log line", () =>
    mtlsd.logs.find((line) => line.msg === "credentials reloaded"),
  );
  t.equal(line.trigger, "signal");
  t.equal(line.new_serial, next.serialHex.toLowerCase());
  const result = await probe(port, client);
  t.equal(result.serverSerial, next.serialHex.toLowerCase());
  t.equal(result.response?.status, 200);
  t.equal(mtlsd.child.exitCode, null, "SIGHUP did not end the process");
  t.equal(await mtlsd.stop(), 0);
});

t.test("a reload asked for through the sidecar resolves with its outcome", async (t) => {
  const first = await issueOrders();
  const files = await plainFiles("api-reload", first);
  const orders = await startOrders(t, files, { watch: false, interval: "1h" });
  t.same(await orders.sidecar.reloadCredentials(), { result: "unchanged" }, "nothing new on disk");
  const next = await issueOrders();
  await writeFile(files.cert, next.chainPem);
  const refused = await orders.sidecar.reloadCredentials();
  t.equal(refused.result, "failure", "a new cert with the old key is refused once the files settle");
  t.equal("status" in refused && refused.status.error?.code, "CERT_KEY_MISMATCH");
  await writeFile(files.key, next.keyPem);
  const installed = await orders.sidecar.reloadCredentials();
  t.equal(installed.result, "success");
  t.equal(orders.sidecar.store.current.leaf.serialHex, next.serialHex.toLowerCase());
  t.same(orders.sidecar.reloadStatus().error, null);
});

t.test(
  "a certificate with another SPIFFE ID is installed, and the change is logged as a warning",
  async (t) => {
    const first = await issueOrders();
    const files = await plainFiles("identity-change", first);
    const orders = await startOrders(t, files, { watch: true, interval: "1h" });
    const renamed = await issueLeaf(pki.intermediate, {
      spiffeId: `spiffe://${pki.trustDomain}/ns/orders/sa/orders-v2`,
      dnsNames: ["localhost"],
    });
    await writeFile(files.cert, renamed.chainPem);
    await writeFile(files.key, renamed.keyPem);
    await waitForSerial(orders.sidecar, renamed.serialHex);
    const line = await waitForLog(
      orders.logs,
      (line) => line.msg === "credentials reloaded with a new SPIFFE ID",
    );
    t.equal(line.level, "warn");
    t.equal(line.old_identity, ORDERS);
    t.equal(line.identity, `spiffe://${pki.trustDomain}/ns/orders/sa/orders-v2`);
    t.equal(orders.sidecar.store.current.spiffeId, line.identity, "XFCC By and logs follow the new identity");
  },
);
