// `mtlsd check --peer HOST:PORT`: a live mTLS handshake with a running sidecar, and each way it can go wrong, named.
import { once } from "node:events";
import { writeFile } from "node:fs/promises";
import http from "node:http";
import type { AddressInfo } from "node:net";
import net from "node:net";
import path from "node:path";
import tls from "node:tls";
import t from "tap";
import { stringify } from "yaml";
import { runCli } from "./helpers/cli.ts";
import { createTestPki, type IdentityFiles } from "./helpers/pki.ts";
import { startSidecar } from "./helpers/sidecar.ts";

/** The subtest handed to a `t.test` callback. */
type TestContext = Parameters<Parameters<typeof t.test>[0]>[0];

const ORDERS = "spiffe://example.org/ns/orders/sa/orders";
const pki = await createTestPki();
t.teardown(() => pki.cleanup());
const foreignPki = await createTestPki();
t.teardown(() => foreignPki.cleanup());
const frontend = await pki.identity("frontend");

const orders = await startSidecar(pki, await pki.identity("orders"), {
  inbound: { listen: "127.0.0.1:0", policy: { rules: [] } },
});
t.teardown(() => orders.stop());
const ordersAddress = `127.0.0.1:${orders.inboundPort}`;

let configs = 0;
/** A config for the frontend workload that runs `check`; `extra` replaces its sections. */
async function checkerConfig(
  extra: Record<string, unknown>,
  identity: IdentityFiles = frontend,
): Promise<string> {
  const file = path.join(pki.dir, `checker-${++configs}.yaml`);
  const config = {
    identity: {
      cert: identity.certPath,
      key: identity.keyPath,
      trustBundle: pki.bundlePath,
      trustDomain: "example.org",
    },
    ...extra,
  };
  await writeFile(file, stringify(config));
  return file;
}

const allowsOrdersToRead = {
  inbound: {
    listen: "127.0.0.1:0",
    policy: {
      rules: [
        {
          name: "orders-reads-status",
          action: "allow",
          from: [ORDERS],
          to: [{ methods: ["GET"], paths: ["/", "/status"] }],
        },
      ],
    },
  },
};

/** A TLS server presenting `identity`, for peers the sidecar itself would refuse to run with. */
async function tlsServer(t: TestContext, identity: IdentityFiles): Promise<string> {
  const server = tls.createServer({ cert: identity.chainPem, key: identity.keyPem }, (socket) =>
    socket.end(),
  );
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())));
  return `127.0.0.1:${(server.address() as AddressInfo).port}`;
}

t.test(
  "a peer whose identity our policy allows: its chain, SPIFFE ID, expiry and ALLOW, exit 0",
  async (t) => {
    const result = await runCli([
      "check",
      "-c",
      await checkerConfig(allowsOrdersToRead),
      "--peer",
      ordersAddress,
    ]);
    t.equal(result.code, 0, result.stdout);
    t.match(result.stdout, new RegExp(`peer ${ordersAddress}\\n`));
    t.match(result.stdout, /TLS +TLSv1\.3, /);
    t.match(
      result.stdout,
      /\[0\] leaf: CN=orders\n +issuer +CN=example\.org intermediate CA\n +serial +[0-9a-f]+\n +valid +/,
    );
    t.match(result.stdout, /\[1\] intermediate CA: CN=example\.org intermediate CA/);
    t.match(result.stdout, /verification +ok: the chain leads to a root in our trust bundle/);
    t.match(result.stdout, /SPIFFE ID +spiffe:\/\/example\.org\/ns\/orders\/sa\/orders\n/);
    t.match(result.stdout, /X509-SVID +valid, in our trust domain example\.org/);
    t.match(result.stdout, /expires +\S+ \(expires in (59|58)m/);
    t.match(result.stdout, /our cert +accepted by the peer/);
    t.match(
      result.stdout,
      /inbound +our policy would ALLOW GET \/ from this peer, by rule "orders-reads-status"/,
    );
    t.match(result.stdout, /result: OK/);
  },
);

t.test(
  "a request our policy denies to that peer exits 1, named policy denial with the deciding rule",
  async (t) => {
    const file = await checkerConfig(allowsOrdersToRead);
    const result = await runCli([
      "check",
      "-c",
      file,
      "--peer",
      ordersAddress,
      "--method",
      "POST",
      "--path",
      "/status",
    ]);
    t.equal(result.code, 1);
    t.match(result.stdout, /our policy would DENY POST \/status from this peer, by the default/);
    t.match(
      result.stdout,
      /rules: .*\n +\[no match\] allow orders-reads-status: from matched; to\[0\] method POST not listed/,
    );
    t.match(
      result.stdout,
      /PROBLEM policy denial: our inbound policy denies POST \/status from spiffe:\/\/example\.org\/ns\/orders\/sa\/orders, by the default/,
    );
  },
);

t.test("a peer identity denied by a named deny rule is reported with that rule", async (t) => {
  const file = await checkerConfig({
    inbound: {
      listen: "127.0.0.1:0",
      policy: {
        default: "allow",
        rules: [{ name: "orders-never-calls-us", action: "deny", from: [ORDERS] }],
      },
    },
  });
  const result = await runCli(["check", "-c", file, "--peer", ordersAddress]);
  t.equal(result.code, 1);
  t.match(result.stdout, /PROBLEM policy denial: .*by rule "orders-never-calls-us"/);
});

t.test("the upstream we call at that address presents the identity we expect: exit 0", async (t) => {
  const file = await checkerConfig({
    outbound: { listen: "127.0.0.1:0", upstreams: { orders: { address: ordersAddress, identity: ORDERS } } },
  });
  const result = await runCli(["check", "-c", file, "--peer", ordersAddress]);
  t.equal(result.code, 0, result.stdout);
  t.match(
    result.stdout,
    /outbound +upstream "orders" expects spiffe:\/\/example\.org\/ns\/orders\/sa\/orders: it matches/,
  );
  t.match(result.stdout, /inbound +no inbound in this config/);
});

t.test("an upstream that presents another identity than configured is named identity mismatch", async (t) => {
  const file = await checkerConfig({
    outbound: {
      listen: "127.0.0.1:0",
      upstreams: {
        payments: { address: ordersAddress, identity: "spiffe://example.org/ns/payments/sa/payments" },
      },
    },
  });
  const result = await runCli(["check", "-c", file, "--peer", ordersAddress]);
  t.equal(result.code, 1);
  t.match(
    result.stdout,
    /PROBLEM identity mismatch: upstream "payments" .* must present spiffe:\/\/example\.org\/ns\/payments\/sa\/payments, but the peer presents spiffe:\/\/example\.org\/ns\/orders\/sa\/orders; calls to payments fail with 502 upstream_identity_mismatch/,
  );
});

t.test("a peer in another trust domain is named wrong trust domain, and it refuses us too", async (t) => {
  const stranger = await pki.identity("stranger", { spiffeId: "spiffe://other.org/ns/orders/sa/orders" });
  const peer = await startSidecar(pki, stranger, {
    identity: {
      cert: stranger.certPath,
      key: stranger.keyPath,
      trustBundle: pki.bundlePath,
      trustDomain: "other.org",
    },
    inbound: { listen: "127.0.0.1:0" },
  });
  t.teardown(() => peer.stop());
  const result = await runCli([
    "check",
    "-c",
    await checkerConfig(allowsOrdersToRead),
    "--peer",
    `127.0.0.1:${peer.inboundPort}`,
  ]);
  t.equal(result.code, 1);
  t.match(
    result.stdout,
    /X509-SVID +NOT VALID for us: SPIFFE ID spiffe:\/\/other\.org\/ns\/orders\/sa\/orders is in trust domain other\.org, expected example\.org/,
  );
  t.match(result.stdout, /our cert +REFUSED by the peer: wrong_trust_domain/);
  t.match(result.stdout, /inbound +not reached: our sidecar refuses this peer at the handshake/);
  t.match(result.stdout, /PROBLEM wrong trust domain: /);
  t.match(result.stdout, /PROBLEM refused by peer: .*x-mtlsd-reason: wrong_trust_domain/);
});

t.test(
  "a peer whose chain leads to another CA is named unknown CA, and the namesake root is pointed out",
  async (t) => {
    const foreign = await foreignPki.identity("orders");
    const peer = await startSidecar(foreignPki, foreign, { inbound: { listen: "127.0.0.1:0" } });
    t.teardown(() => peer.stop());
    const result = await runCli([
      "check",
      "-c",
      await checkerConfig(allowsOrdersToRead),
      "--peer",
      `127.0.0.1:${peer.inboundPort}`,
    ]);
    t.equal(result.code, 1);
    t.match(result.stdout, /verification +FAILED: unknown CA/);
    t.match(
      result.stdout,
      /PROBLEM unknown CA: .*does not lead to a root in our trust bundle .*our bundle has a root named CN=example\.org root CA, but it did not sign this chain/,
    );
    t.match(result.stdout, /PROBLEM refused by peer: .*unknown_ca/);
  },
);

t.test("a peer presenting an expired certificate is named expired, with how long ago", async (t) => {
  const notAfter = new Date(Date.now() - 3 * 3_600_000);
  const old = await pki.identity("old-server", {
    spiffeId: ORDERS,
    notBefore: new Date(notAfter.getTime() - 3_600_000),
    notAfter,
  });
  const address = await tlsServer(t, old);
  const result = await runCli(["check", "-c", await checkerConfig(allowsOrdersToRead), "--peer", address]);
  t.equal(result.code, 1);
  t.match(
    result.stdout,
    /PROBLEM expired: the peer \(.*\) presents CN=orders, which expired 3h(?: \d+s)? ago/,
  );
});

t.test("a peer whose certificate starts in the future is named clock skew, with the gap", async (t) => {
  const early = await pki.identity("early-server", {
    spiffeId: ORDERS,
    notBefore: new Date(Date.now() + 2 * 3_600_000),
  });
  const address = await tlsServer(t, early);
  const result = await runCli(["check", "-c", await checkerConfig(allowsOrdersToRead), "--peer", address]);
  t.equal(result.code, 1);
  t.match(
    result.stdout,
    /PROBLEM not yet valid \(clock skew\): the peer .* valid only from \S+: (1h 59m|2h) from now/,
  );
});

t.test("nothing listening on the port is named connection refused", async (t) => {
  const probe = net.createServer();
  probe.listen(0, "127.0.0.1");
  await once(probe, "listening");
  const port = (probe.address() as AddressInfo).port;
  await new Promise<void>((resolve) => probe.close(() => resolve()));
  const result = await runCli([
    "check",
    "-c",
    await checkerConfig(allowsOrdersToRead),
    "--peer",
    `127.0.0.1:${port}`,
  ]);
  t.equal(result.code, 1);
  t.match(result.stdout, /TLS +no session: connection refused/);
  t.match(
    result.stdout,
    new RegExp(`PROBLEM connection refused: nothing accepts connections on 127\\.0\\.0\\.1:${port}`),
  );
});

t.test("a plain HTTP port is named handshake failure, with the likely mistake", async (t) => {
  const server = http.createServer((_req, res) => res.end("app"));
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())));
  const port = (server.address() as AddressInfo).port;
  const result = await runCli([
    "check",
    "-c",
    await checkerConfig(allowsOrdersToRead),
    "--peer",
    `127.0.0.1:${port}`,
  ]);
  t.equal(result.code, 1);
  t.match(result.stdout, /PROBLEM handshake failure: 127\.0\.0\.1:\d+ does not speak TLS/);
});
