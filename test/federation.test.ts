// Federation: peers of a partner trust domain are verified against the partner's bundle, and only against it.
import { X509Certificate } from "node:crypto";
import { writeFile } from "node:fs/promises";
import https from "node:https";
import type { AddressInfo } from "node:net";
import path from "node:path";
import t from "tap";
import { stringify } from "yaml";
import { loadCredentials } from "../src/credentials/index.ts";
import { startApp } from "./helpers/app.ts";
import { runCli } from "./helpers/cli.ts";
import {
  appRequest,
  echoed,
  inboundAddress,
  sidecarError,
  startCaller,
  startUpstream,
} from "./helpers/outbound.ts";
import { createTestPki, type IdentityFiles } from "./helpers/pki.ts";
import { probe, reloadCount, waitFor } from "./helpers/rotation.ts";
import { type RunningSidecar, startSidecar, waitForLog } from "./helpers/sidecar.ts";

const pki = await createTestPki("example.org");
t.teardown(() => pki.cleanup());
const partner = await createTestPki("partner.example");
t.teardown(() => partner.cleanup());
const app = await startApp();
t.teardown(() => app.stop());

const CHECKOUT = "spiffe://partner.example/ns/shop/sa/checkout";
const orders = await pki.identity("orders");
const frontend = await pki.identity("frontend");
const checkout = await partner.identity("checkout", { spiffeId: CHECKOUT });

/** Our identity block, trusting partner.example through a bundle file. */
function federated(identity: IdentityFiles, bundle = partner.bundlePath) {
  return {
    cert: identity.certPath,
    key: identity.keyPath,
    trustBundle: pki.bundlePath,
    trustDomain: "example.org",
    federation: [{ trustDomain: "partner.example", trustBundle: bundle }],
  };
}

const ordersSidecar = await startUpstream(pki, orders, app, [frontend.spiffeId, CHECKOUT], {
  identity: federated(orders),
});
t.teardown(() => ordersSidecar.stop());

/** One request to orders' inbound as `who`, on a fresh connection (with a session to resume, if given). */
function callOrders(who: IdentityFiles, session?: Buffer) {
  return probe(ordersSidecar.inboundPort, {
    ca: pki.bundlePem,
    cert: who.chainPem,
    key: who.keyPem,
    ...(session ? { session } : {}),
  });
}

function refusal(sidecar: RunningSidecar, spiffeId: string) {
  return waitForLog(
    sidecar.logs,
    (line) => line.msg === "handshake failed" && line.source_identity === spiffeId,
  );
}

t.test("a partner's peer, chaining to the partner's bundle, is let in with its own identity", async (t) => {
  const result = await callOrders(checkout);
  t.equal(result.response?.status, 200);
  const echo = JSON.parse(result.response!.body) as { headers: Record<string, string> };
  t.match(echo.headers["x-forwarded-client-cert"], `URI=${CHECKOUT}`, "XFCC shows the partner's ID as it is");
  const logged = await waitForLog(ordersSidecar.logs, (line) => line.source_identity === CHECKOUT);
  t.equal(logged.rule, "callers", "the policy's from matched the federated ID");
  const metrics = await ordersSidecar.sidecar.metrics.metrics();
  t.match(metrics, `source_identity="${CHECKOUT}"`, "metrics label it as it is");
});

t.test("a resumed session of a partner's peer is let in again", async (t) => {
  const first = await callOrders(checkout);
  t.equal(first.response?.status, 200);
  const second = await callOrders(checkout, first.session);
  t.ok(second.resumed, "the session resumed (only the leaf is known then)");
  t.equal(second.response?.status, 200);
});

t.test("a certificate claiming the partner's domain but issued by our CA is refused", async (t) => {
  const forged = await pki.identity("forged-checkout", { spiffeId: CHECKOUT });
  const result = await callOrders(forged);
  t.equal(result.response?.status, 403);
  t.equal(result.response?.headers["x-mtlsd-reason"], "wrong_trust_domain");
  const line = await refusal(ordersSidecar, CHECKOUT);
  t.equal(line.reason, "wrong_trust_domain");
  t.match(line.detail, "claims trust domain partner.example");
  t.match(line.detail, "chains to the bundle of trust domain example.org");
});

t.test("a refused certificate gets no further by resuming the session it was handed", async (t) => {
  // TLS 1.3 servers send session tickets right after the handshake, before mtlsd has judged the peer.
  const forged = await pki.identity("forged-resumer", { spiffeId: CHECKOUT });
  const first = await callOrders(forged);
  t.equal(first.response?.status, 403);
  t.ok(first.session, "a ticket was handed out all the same");
  const again = await callOrders(forged, first.session);
  t.equal(again.response?.status, 403, "refused on resumption too");
  t.equal(again.response?.headers["x-mtlsd-reason"], "wrong_trust_domain");
});

t.test("a certificate claiming our domain but issued by the partner's CA is refused", async (t) => {
  const forged = await partner.identity("forged-frontend", { spiffeId: frontend.spiffeId });
  const result = await callOrders(forged);
  t.equal(result.response?.status, 403);
  t.equal(result.response?.headers["x-mtlsd-reason"], "wrong_trust_domain");
  const line = await refusal(ordersSidecar, frontend.spiffeId);
  t.match(line.detail, "claims trust domain example.org");
  t.match(line.detail, "chains to the bundle of trust domain partner.example");
});

t.test("a peer of a trust domain that is not configured is refused as wrong_trust_domain", async (t) => {
  const stranger = await pki.identity("stranger", { spiffeId: "spiffe://other.example/ns/x/sa/x" });
  const result = await callOrders(stranger);
  t.equal(result.response?.headers["x-mtlsd-reason"], "wrong_trust_domain");
  const line = await refusal(ordersSidecar, "spiffe://other.example/ns/x/sa/x");
  t.match(line.detail, "expected example.org or a federated trust domain (partner.example)");
});

t.test("our outbound calls a partner's sidecar that federates with us, both ways verified", async (t) => {
  // The partner runs mtlsd too, in its own trust domain, trusting example.org by our bundle file.
  const partnerSidecar = await startSidecar(partner, checkout, {
    identity: {
      cert: checkout.certPath,
      key: checkout.keyPath,
      trustBundle: partner.bundlePath,
      trustDomain: "partner.example",
      federation: [{ trustDomain: "example.org", trustBundle: pki.bundlePath }],
    },
    inbound: {
      listen: "127.0.0.1:0",
      app: app.url,
      policy: { rules: [{ name: "example-frontend", action: "allow", from: [frontend.spiffeId] }] },
    },
  });
  t.teardown(() => partnerSidecar.stop());
  const caller = await startCaller(
    pki,
    frontend,
    { checkout: { address: inboundAddress(partnerSidecar), identity: CHECKOUT } },
    { identity: federated(frontend) },
  );
  t.teardown(() => caller.stop());
  const result = await appRequest(`${caller.proxyUrl}/v1/cart`, { headers: ["Host: checkout"] });
  t.equal(result.response?.status, 200);
  t.equal(echoed(result).xfcc.URI, frontend.spiffeId, "the partner's app sees our caller's ID");
});

t.test("an upstream claiming the partner's ID with a certificate from our CA is refused", async (t) => {
  // mtlsd itself refuses to run with an ID outside its trust domain: the impostor is a bare TLS server.
  const forged = await pki.identity("forged-upstream", { spiffeId: CHECKOUT });
  const impostor = https.createServer(
    { cert: forged.chainPem, key: forged.keyPem, ca: pki.bundlePem, requestCert: true },
    (_req, res) => res.end("served by an impostor"),
  );
  await new Promise<void>((resolve) => impostor.listen(0, "127.0.0.1", resolve));
  t.teardown(() => new Promise<void>((resolve) => impostor.close(() => resolve())));
  const { port } = impostor.address() as AddressInfo;
  const caller = await startCaller(
    pki,
    frontend,
    { checkout: { address: `127.0.0.1:${port}`, identity: CHECKOUT } },
    { identity: federated(frontend) },
  );
  t.teardown(() => caller.stop());
  const result = await appRequest(`${caller.proxyUrl}/v1/cart`, { headers: ["Host: checkout"] });
  t.equal(result.response?.status, 502);
  t.equal(sidecarError(result).reason, "upstream_identity_mismatch");
  const line = await waitForLog(caller.logs, (entry) => entry.msg === "handshake failed");
  t.equal(line.reason, "wrong_trust_domain");
  t.match(line.detail, "chains to the bundle of trust domain example.org");
});

t.test(
  "a federated bundle file is reloaded, and old TLS sessions do not resume past the change",
  async (t) => {
    const bundle = path.join(partner.dir, "reloaded-partner-ca.crt");
    await writeFile(bundle, partner.bundlePem);
    const sidecar = await startUpstream(pki, orders, app, [CHECKOUT], {
      identity: federated(orders, bundle),
    });
    t.teardown(() => sidecar.stop());
    const call = (session?: Buffer) =>
      probe(sidecar.inboundPort, {
        ca: pki.bundlePem,
        cert: checkout.chainPem,
        key: checkout.keyPem,
        ...(session ? { session } : {}),
      });
    const first = await call();
    t.equal(first.response?.status, 200);
    t.ok((await call(first.session)).resumed, "resumption works while trust is unchanged");

    // The partner rotates its CA: the new root joins the bundle.
    const next = await createTestPki("partner.example");
    t.teardown(() => next.cleanup());
    await writeFile(bundle, partner.bundlePem + next.bundlePem);
    const outcome = await sidecar.sidecar.reloadCredentials();
    t.equal(outcome.result, "success");
    const domains = sidecar.sidecar.store.current.federation[0]!.roots;
    t.equal(domains.length, 2, "both partner roots are trusted");

    const after = await call(first.session);
    t.notOk(after.resumed, "the old session is not resumed after the change of trust (CVE-2022-21654)");
    t.equal(after.response?.status, 200, "a full handshake against the new bundle passes");
    const fromNewCa = await next.identity("checkout", { spiffeId: CHECKOUT });
    const newPeer = await probe(sidecar.inboundPort, {
      ca: pki.bundlePem,
      cert: fromNewCa.chainPem,
      key: fromNewCa.keyPem,
    });
    t.equal(newPeer.response?.status, 200, "a peer of the partner's new CA is let in");
  },
);

t.test("a federated bundle that is empty or not PEM/DER is a startup error naming the field", async (t) => {
  const cases: [string, string][] = [
    ["empty", ""],
    ["not a certificate", "this is not a certificate\n"],
  ];
  for (const [what, content] of cases) {
    const file = path.join(pki.dir, `bad-partner-${what.replaceAll(" ", "-")}.crt`);
    await writeFile(file, content);
    const error = await loadCredentials(
      {
        cert: orders.certPath,
        key: orders.keyPath,
        trustBundle: pki.bundlePath,
        federation: [{ trustDomain: "partner.example", trustBundle: file }],
      },
      { trustDomain: "example.org", federation: ["partner.example"] },
    ).catch((caught: Error & { code?: string }) => caught);
    t.equal((error as { code?: string }).code, "FEDERATED_BUNDLE_INVALID", what);
    t.match(
      (error as Error).message,
      `identity.federation[0].trustBundle (${file})`,
      `${what}: names the field and file`,
    );
  }
});

t.test("a federated bundle given as DER is read like PEM", async (t) => {
  const file = path.join(pki.dir, "partner-ca.der");
  await writeFile(file, new X509Certificate(partner.bundlePem).raw);
  const credentials = await loadCredentials(
    {
      cert: orders.certPath,
      key: orders.keyPath,
      trustBundle: pki.bundlePath,
      federation: [{ trustDomain: "partner.example", trustBundle: file }],
    },
    { trustDomain: "example.org", federation: ["partner.example"] },
  );
  t.equal(credentials.federation[0]?.roots.length, 1);
});

t.test("a bad federated bundle at reload is refused and the old one kept", async (t) => {
  const bundle = path.join(partner.dir, "soon-bad-partner-ca.crt");
  await writeFile(bundle, partner.bundlePem);
  const sidecar = await startUpstream(pki, orders, app, [CHECKOUT], { identity: federated(orders, bundle) });
  t.teardown(() => sidecar.stop());
  await writeFile(bundle, "");
  const outcome = await sidecar.sidecar.reloadCredentials();
  t.equal(outcome.result, "failure");
  t.equal(await reloadCount(sidecar.sidecar, "failure"), 1);
  t.match(sidecar.sidecar.reloadStatus().error, { code: "FEDERATED_BUNDLE_INVALID" });
  await waitFor("a partner call to pass", async () => {
    const result = await probe(sidecar.inboundPort, {
      ca: pki.bundlePem,
      cert: checkout.chainPem,
      key: checkout.keyPem,
    });
    return result.response?.status === 200;
  });
  t.pass("partner peers are still let in with the old bundle");
});

t.test("mtlsd check --peer verifies a partner's sidecar against the partner's bundle", async (t) => {
  const partnerSidecar = await startSidecar(partner, checkout, {
    identity: {
      cert: checkout.certPath,
      key: checkout.keyPath,
      trustBundle: partner.bundlePath,
      trustDomain: "partner.example",
      federation: [{ trustDomain: "example.org", trustBundle: pki.bundlePath }],
    },
    inbound: { listen: "127.0.0.1:0", app: app.url, policy: { rules: [] } },
  });
  t.teardown(() => partnerSidecar.stop());
  const file = path.join(pki.dir, "check-partner.yaml");
  await writeFile(
    file,
    stringify({
      identity: federated(frontend),
      outbound: {
        upstreams: { checkout: { address: inboundAddress(partnerSidecar), identity: CHECKOUT } },
      },
    }),
  );
  const result = await runCli(["check", "-c", file, "--peer", inboundAddress(partnerSidecar)]);
  t.equal(result.code, 0, result.stdout + result.stderr);
  t.match(result.stdout, /verification +ok: the chain leads to a root in the bundle of partner\.example/);
  t.match(result.stdout, /X509-SVID +valid, in the federated trust domain partner\.example/);
  t.match(result.stdout, `upstream "checkout" expects ${CHECKOUT}: it matches`);
  t.match(result.stdout, /- partner\.example \(federated\): 1 root/);
});

t.test("mtlsd check --peer names a server whose ID and CA are of different trust domains", async (t) => {
  const forged = await pki.identity("forged-checked", { spiffeId: CHECKOUT });
  const impostor = https.createServer(
    { cert: forged.chainPem, key: forged.keyPem, ca: pki.bundlePem, requestCert: true },
    (_req, res) => res.end("served by an impostor"),
  );
  await new Promise<void>((resolve) => impostor.listen(0, "127.0.0.1", resolve));
  t.teardown(() => new Promise<void>((resolve) => impostor.close(() => resolve())));
  const file = path.join(pki.dir, "check-impostor.yaml");
  await writeFile(file, stringify({ identity: federated(frontend), inbound: { listen: "127.0.0.1:0" } }));
  const address = `127.0.0.1:${(impostor.address() as AddressInfo).port}`;
  const result = await runCli(["check", "-c", file, "--peer", address]);
  t.equal(result.code, 1, result.stdout + result.stderr);
  t.match(result.stdout, /verification +FAILED: wrong trust domain/);
  t.match(result.stdout, "chains to the bundle of trust domain example.org");
});
