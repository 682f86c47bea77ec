// When our credentials change, new upstream connections present the new certificate; old ones finish, then close.
import net from "node:net";
import t from "tap";
import { startApp } from "./helpers/app.ts";
import { appRequest, echoed, leafHash, startCaller, startUpstream } from "./helpers/outbound.ts";
import { createTestPki } from "./helpers/pki.ts";
import { installFiles } from "./helpers/rotation.ts";

/** A TCP relay to `port` that counts the connections through it, so a test sees when one closes. */
async function startRelay(port: number) {
  const sockets = new Set<net.Socket>();
  let opened = 0;
  let open = 0;
  const server = net.createServer((client) => {
    opened++;
    open++;
    const upstream = net.connect(port, "127.0.0.1");
    sockets.add(client).add(upstream);
    client.pipe(upstream).pipe(client);
    let closed = false;
    for (const socket of [client, upstream]) {
      socket.on("error", () => {});
      socket.on("close", () => {
        sockets.delete(socket);
        client.destroy();
        upstream.destroy();
        if (!closed) {
          closed = true;
          open--;
        }
      });
    }
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    address: `127.0.0.1:${(server.address() as net.AddressInfo).port}`,
    opened: () => opened,
    open: () => open,
    async close() {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

async function until(condition: () => boolean, what: string, timeoutMs = 3000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeoutMs}ms`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

t.test(
  "a credential change moves new connections to the new certificate without failing any request",
  async (t) => {
    const pki = await createTestPki();
    t.teardown(() => pki.cleanup());
    const app = await startApp();
    t.teardown(() => app.stop());
    const frontend = await pki.identity("frontend");
    const orders = await pki.identity("orders");
    const upstream = await startUpstream(pki, orders, app, [frontend.spiffeId]);
    t.teardown(() => upstream.stop());
    const relay = await startRelay(upstream.inboundPort);
    t.teardown(() => relay.close());
    const caller = await startCaller(pki, frontend, {
      orders: { address: relay.address, identity: orders.spiffeId },
    });
    t.teardown(() => caller.stop());
    const call = (path: string) => appRequest(`${caller.proxyUrl}${path}`, { headers: ["Host: orders"] });

    const before = echoed(await call("/before"));
    t.equal(before.xfcc.Hash, leafHash(frontend.chainPem), "the upstream sees the first certificate");

    // A slow request in flight on the pooled connection when the credentials change.
    const slow = call("/slow?ms=1500");
    await until(() => caller.sidecar.upstreamStats().orders!.pending === 1, "the slow request is in flight");

    const next = await pki.identity("frontend-next", { spiffeId: frontend.spiffeId });
    await installFiles(caller.sidecar.store, {
      cert: next.certPath,
      key: next.keyPath,
      trustBundle: pki.bundlePath,
    });

    t.equal(caller.sidecar.upstreamStats().orders!.pending, 1, "stats still count the old pool's request");

    // A resumed TLS session would carry the old certificate to the upstream: the Hash proves a fresh one.
    const after = echoed(await call("/after"));
    t.equal(after.xfcc.Hash, leafHash(next.chainPem), "a new connection presents the new certificate");
    t.equal(relay.opened(), 2, "on a second connection, while the first is busy");

    const finished = await slow;
    t.equal(finished.response?.status, 200, "the in-flight request on the old connection completes");
    await until(() => relay.open() === 1, "the old connection closes once its request is done");

    const later = echoed(await call("/later"));
    t.equal(later.xfcc.Hash, leafHash(next.chainPem));
    t.equal(relay.opened(), 2, "later requests reuse the new pooled connection");
    t.match(caller.sidecar.upstreamStats().orders, { connections: 1, pending: 0 });
  },
);
