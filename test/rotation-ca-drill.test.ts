// The CA rotation drill: overlap bundle, leaves re-issued by the new root, old root removed; old trust ends for good.
import path from "node:path";
import t from "tap";
import {
  createIntermediateCA,
  createRootCA,
  type IssuedCert,
  type Issuer,
  issueLeaf,
} from "../src/pki/index.ts";
import { startApp } from "./helpers/app.ts";
import { createTestPki } from "./helpers/pki.ts";
import {
  type CredentialPems,
  type ProbeResult,
  probe,
  reloadCount,
  SecretVolume,
  startLoad,
  waitFor,
  waitForSerial,
} from "./helpers/rotation.ts";
import { startSidecar } from "./helpers/sidecar.ts";

const pki = await createTestPki();
t.teardown(() => pki.cleanup());
const app = await startApp();
t.teardown(() => app.stop());
const TD = pki.trustDomain;
const ORDERS = `spiffe://${TD}/ns/orders/sa/orders`;
const FRONTEND = `spiffe://${TD}/ns/frontend/sa/frontend`;
const REPORTING = `spiffe://${TD}/ns/reporting/sa/reporting`;

const oldRoot = pki.root;
const newRoot = await createRootCA({ trustDomain: TD, commonName: `${TD} root CA 2027` });
const newIntermediate = await createIntermediateCA(newRoot);
const bundles = {
  old: oldRoot.certPem,
  overlap: oldRoot.certPem + newRoot.certPem,
  new: newRoot.certPem,
};

const issue = (spiffeId: string, issuer: Issuer) => issueLeaf(issuer, { spiffeId, dnsNames: ["localhost"] });
const pems = (leaf: IssuedCert, bundle: string): CredentialPems => ({
  cert: leaf.chainPem,
  key: leaf.keyPem,
  bundle,
});

// A peer that never gets a new-root certificate: the one the drill must lock out at the end.
const reportingLeaf = await issue(REPORTING, pki.intermediate);
const reporting = { ca: bundles.overlap, cert: reportingLeaf.chainPem, key: reportingLeaf.keyPem };

let ordersLeaf = await issue(ORDERS, pki.intermediate);
let frontendLeaf = await issue(FRONTEND, pki.intermediate);
const ordersVolume = await SecretVolume.create(path.join(pki.dir, "orders"), pems(ordersLeaf, bundles.old));
const frontendVolume = await SecretVolume.create(
  path.join(pki.dir, "frontend"),
  pems(frontendLeaf, bundles.old),
);

const volumeIdentity = (volume: SecretVolume) => ({
  cert: volume.paths.cert,
  key: volume.paths.key,
  trustBundle: volume.paths.bundle,
  trustDomain: TD,
  reload: { watch: true, interval: "1h" },
});
const anyIdentity = await pki.identity("unused");
const orders = await startSidecar(pki, anyIdentity, {
  identity: volumeIdentity(ordersVolume),
  inbound: {
    listen: "127.0.0.1:0",
    app: app.url,
    policy: { rules: [{ name: "callers", action: "allow", from: [FRONTEND, REPORTING] }] },
  },
});
t.teardown(() => orders.stop());
const frontend = await startSidecar(pki, anyIdentity, {
  identity: volumeIdentity(frontendVolume),
  outbound: {
    listen: "127.0.0.1:0",
    upstreams: { orders: { address: `127.0.0.1:${orders.inboundPort}`, identity: ORDERS } },
  },
});
t.teardown(() => frontend.stop());

// The drill runs under load from start to end: no stage may fail a request.
const load = startLoad(`http://127.0.0.1:${frontend.sidecar.addresses().outbound!.port}`, {
  concurrency: 3,
  host: "orders",
  path: "/v1/orders",
});
let loadStopped = false;
t.teardown(async () => {
  if (!loadStopped) await load.stop();
});
await waitFor("the load to get going", () => load.total() >= 30);

/** Pushes to both sidecars and waits until both run the new version (bundle fingerprint and leaf). */
async function pushBoth(bundle: string): Promise<void> {
  const versions = [orders.sidecar.store.version, frontend.sidecar.store.version];
  await Promise.all([
    ordersVolume.swap(pems(ordersLeaf, bundle)),
    frontendVolume.swap(pems(frontendLeaf, bundle)),
  ]);
  await waitFor(
    "both sidecars to reload",
    () => orders.sidecar.store.version > versions[0]! && frontend.sidecar.store.version > versions[1]!,
  );
  await Promise.all([
    waitForSerial(orders.sidecar, ordersLeaf.serialHex),
    waitForSerial(frontend.sidecar, frontendLeaf.serialHex),
  ]);
  // Some traffic over the new version before the next stage.
  const before = load.total();
  await waitFor("requests over the new version", () => load.total() >= before + 20);
}

const reportingProbe = (session?: Buffer): Promise<ProbeResult> =>
  probe(orders.inboundPort, { ...reporting, ...(session ? { session } : {}) });

let sessionBeforeDrill: Buffer | undefined;
let sessionUnderOverlap: Buffer | undefined;

t.test("before the drill, the old-root peer is served and its TLS session resumes", async (t) => {
  const first = await reportingProbe();
  t.equal(first.response?.status, 200, "served");
  t.ok(first.session, "the server sent a session ticket");
  sessionBeforeDrill = first.session;
  const again = await reportingProbe(first.session);
  t.ok(again.resumed, "offering the ticket resumes the session (so this test can see resumption)");
  t.equal(again.response?.status, 200, "and the resumed connection is served");
});

t.test(
  "with the overlap bundle (old + new root) on both sidecars, the old-root peer is still served",
  async (t) => {
    await pushBoth(bundles.overlap);
    t.equal(orders.sidecar.store.current.trustBundle.length, 2, "orders trusts both roots");
    const reloaded = orders.logs.filter((line) => line.msg === "credentials reloaded").at(-1);
    t.equal(reloaded?.bundle_changed, true, "the reload log says the trust bundle changed");
    const result = await reportingProbe();
    t.equal(result.response?.status, 200, "the old-root peer is served");
    sessionUnderOverlap = result.session;
  },
);

t.test(
  "leaves re-issued by the new root are accepted under the overlap, and sessions survive the leaf rotation",
  async (t) => {
    const sessionBeforeLeafRotation = (await reportingProbe()).session;
    ordersLeaf = await issue(ORDERS, newIntermediate);
    frontendLeaf = await issue(FRONTEND, newIntermediate);
    await pushBoth(bundles.overlap);
    const served = await probe(orders.inboundPort, {
      ...reporting,
      ca: bundles.new,
    });
    t.equal(served.serverSerial, ordersLeaf.serialHex.toLowerCase(), "orders presents its new-root leaf");
    t.equal(served.response?.status, 200, "the old-root peer is still served during the overlap");
    const resumed = await reportingProbe(sessionBeforeLeafRotation);
    t.ok(resumed.resumed, "the bundle did not change, so the ticket keys did not, and the session resumes");
    t.equal(resumed.response?.status, 200, "and served");
    sessionUnderOverlap = resumed.session ?? sessionUnderOverlap;
  },
);

t.test("with the old root removed, a peer with an old-root leaf is refused", async (t) => {
  await pushBoth(bundles.new);
  t.equal(orders.sidecar.store.current.trustBundle.length, 1, "orders trusts the new root only");
  const result = await reportingProbe();
  t.notOk(result.resumed, "a full handshake");
  t.equal(result.response?.status, 403, "refused");
  t.equal(result.response?.headers["x-mtlsd-reason"], "unknown_ca", "because its CA is no longer trusted");
});

t.test("with the old root removed, a TLS session from before the trust change is not resumed", async (t) => {
  for (const [when, session] of [
    ["while the old root was trusted alongside the new", sessionUnderOverlap],
    ["before the drill began", sessionBeforeDrill],
  ] as const) {
    t.ok(session, `a session from ${when} was kept`);
    const result = await reportingProbe(session);
    t.notOk(result.resumed, `the session from ${when} is not resumed`);
    t.equal(result.response?.status, 403, "the full handshake that follows refuses the old-root leaf");
    t.equal(result.response?.headers["x-mtlsd-reason"], "unknown_ca", "with reason unknown_ca");
  }
});

t.test("the whole drill ran under load without a failed request", async (t) => {
  const summary = await load.stop();
  loadStopped = true;
  t.comment(
    `${summary.total} requests through frontend → orders during the CA rotation drill, ${summary.failures.length} failed`,
  );
  t.same(summary.failures, [], "no request failed");
  t.equal(await reloadCount(orders.sidecar, "failure"), 0, "orders refused no push");
  t.equal(await reloadCount(frontend.sidecar, "failure"), 0, "frontend refused no push");
  t.equal(await reloadCount(orders.sidecar, "success"), 3, "overlap, new leaves, old root removed");
});
