// Rotation without a dropped request: both sidecars' leaves rotate 20 times under continuous load, and nothing fails.
import { createHash } from "node:crypto";
import { mkdir, writeFile } from "node:fs/promises";
import path from "node:path";
import t from "tap";
import { request } from "undici";
import { type IssuedCert, issueLeaf } from "../src/pki/index.ts";
import { startApp } from "./helpers/app.ts";
import { createTestPki } from "./helpers/pki.ts";
import {
  reloadCount,
  rewriteInPlace,
  SecretVolume,
  startLoad,
  waitFor,
  waitForSerial,
} from "./helpers/rotation.ts";
import { startSidecar } from "./helpers/sidecar.ts";

const ROTATIONS = 20;

const pki = await createTestPki();
t.teardown(() => pki.cleanup());
const app = await startApp();
t.teardown(() => app.stop());
const ORDERS = `spiffe://${pki.trustDomain}/ns/orders/sa/orders`;
const FRONTEND = `spiffe://${pki.trustDomain}/ns/frontend/sa/frontend`;
const issue = (spiffeId: string) => issueLeaf(pki.intermediate, { spiffeId, dnsNames: ["localhost"] });
const reload = { watch: true, interval: "1h" };

// orders gets its files the Kubernetes way (secret volume), frontend the spiffe-helper way (in place).
let ordersLeaf = await issue(ORDERS);
const ordersVolume = await SecretVolume.create(path.join(pki.dir, "orders-volume"), {
  cert: ordersLeaf.chainPem,
  key: ordersLeaf.keyPem,
  bundle: pki.bundlePem,
});
let frontendLeaf = await issue(FRONTEND);
const frontendDir = path.join(pki.dir, "frontend-svid");
await mkdir(frontendDir);
const frontendFiles = {
  cert: path.join(frontendDir, "svid.pem"),
  key: path.join(frontendDir, "svid_key.pem"),
  bundle: path.join(frontendDir, "svid_bundle.pem"),
};
await writeFile(frontendFiles.cert, frontendLeaf.chainPem);
await writeFile(frontendFiles.key, frontendLeaf.keyPem);
await writeFile(frontendFiles.bundle, pki.bundlePem);

const anyIdentity = await pki.identity("unused");
const orders = await startSidecar(pki, anyIdentity, {
  identity: {
    cert: ordersVolume.paths.cert,
    key: ordersVolume.paths.key,
    trustBundle: ordersVolume.paths.bundle,
    trustDomain: pki.trustDomain,
    reload,
  },
  inbound: {
    listen: "127.0.0.1:0",
    app: app.url,
    policy: { rules: [{ name: "frontend", action: "allow", from: [FRONTEND] }] },
  },
  log: { level: "warn" },
});
t.teardown(() => orders.stop());
const frontend = await startSidecar(pki, anyIdentity, {
  identity: {
    cert: frontendFiles.cert,
    key: frontendFiles.key,
    trustBundle: frontendFiles.bundle,
    trustDomain: pki.trustDomain,
    reload,
  },
  outbound: {
    listen: "127.0.0.1:0",
    upstreams: { orders: { address: `127.0.0.1:${orders.inboundPort}`, identity: ORDERS } },
  },
  log: { level: "warn" },
});
t.teardown(() => frontend.stop());
const outboundUrl = `http://127.0.0.1:${frontend.sidecar.addresses().outbound!.port}`;

const sha256 = (leaf: IssuedCert) =>
  createHash("sha256").update(new Uint8Array(leaf.cert.rawData)).digest("hex");

/** One request through both sidecars; the app's echo shows which frontend certificate orders saw. */
async function xfccHash(): Promise<string | undefined> {
  const response = await request(`${outboundUrl}/v1/orders`, { headers: { host: "orders" } });
  const echo = (await response.body.json()) as { headers: Record<string, string> };
  return /Hash=([0-9a-f]{64})/.exec(echo.headers["x-forwarded-client-cert"] ?? "")?.[1];
}

t.test(`${ROTATIONS} leaf rotations of both sidecars under continuous load fail no request`, async (t) => {
  t.equal(await xfccHash(), sha256(frontendLeaf), "before: orders sees the first frontend certificate");
  const load = startLoad(outboundUrl, { concurrency: 4, host: "orders", path: "/v1/orders" });
  let stopped = false;
  t.teardown(async () => {
    if (!stopped) await load.stop();
  });
  await waitFor("the load to get going", () => load.total() >= 50);
  for (let rotation = 1; rotation <= ROTATIONS; rotation++) {
    ordersLeaf = await issue(ORDERS);
    frontendLeaf = await issue(FRONTEND);
    await Promise.all([
      ordersVolume.swap({ cert: ordersLeaf.chainPem, key: ordersLeaf.keyPem, bundle: pki.bundlePem }),
      rewriteInPlace(
        [
          [frontendFiles.cert, frontendLeaf.chainPem],
          [frontendFiles.key, frontendLeaf.keyPem],
          [frontendFiles.bundle, pki.bundlePem],
        ],
        50,
      ),
    ]);
    await Promise.all([
      waitForSerial(orders.sidecar, ordersLeaf.serialHex),
      waitForSerial(frontend.sidecar, frontendLeaf.serialHex),
    ]);
    // Traffic flows over the new credentials before the next rotation starts.
    const before = load.total();
    await waitFor(`requests after rotation ${rotation}`, () => load.total() >= before + 20);
  }
  const summary = await load.stop();
  stopped = true;
  t.comment(
    `${summary.total} requests during ${ROTATIONS} rotations of each sidecar, ${summary.failures.length} failed`,
  );
  t.same(summary.failures, [], "no request failed");
  t.ok(summary.total > ROTATIONS * 20, "traffic flowed between every two rotations");
  t.equal(await reloadCount(orders.sidecar, "success"), ROTATIONS, "orders reloaded at every swap");
  t.equal(await reloadCount(frontend.sidecar, "success"), ROTATIONS, "frontend reloaded at every rewrite");
  t.equal(await reloadCount(orders.sidecar, "failure"), 0, "orders counted no failed push");
  t.equal(await reloadCount(frontend.sidecar, "failure"), 0, "frontend counted no failed push");
  t.equal(await xfccHash(), sha256(frontendLeaf), "after: orders sees the last frontend certificate");
  const handshakes = frontend.sidecar.upstreamStats().orders!.handshakes;
  t.ok(
    handshakes.full > ROTATIONS,
    `each rotation made new connections (${handshakes.full} full handshakes)`,
  );
});
