// Connection floods: maxConnections refuses the excess, and hundreds of idle connections do not stop service.
import net from "node:net";
import t from "tap";
import { startApp } from "./helpers/app.ts";
import { mtlsClient } from "./helpers/clients.ts";
import { createTestPki } from "./helpers/pki.ts";
import { type ClientTls, RawConnection, rawGet } from "./helpers/raw-http.ts";
import { type RunningSidecar, startSidecar, waitForLog } from "./helpers/sidecar.ts";

type Test = Parameters<Parameters<typeof t.test>[0]>[0];

const FLOOD = 500;

const pki = await createTestPki();
t.teardown(() => pki.cleanup());
const app = await startApp();
t.teardown(() => app.stop());
const orders = await pki.identity("orders");
const frontend = await pki.identity("frontend");
const client: ClientTls = { ca: pki.bundlePem, cert: frontend.chainPem, key: frontend.keyPem };
const policy = { rules: [{ name: "callers", action: "allow", from: [frontend.spiffeId, orders.spiffeId] }] };

/** A sidecar with inbound and an outbound listener whose one upstream is its own inbound port. */
async function start(
  t: Test,
  limits: Record<string, unknown>,
): Promise<{ inbound: RunningSidecar; inboundPort: number; outboundPort: number; adminUrl: string }> {
  const inbound = await startSidecar(pki, orders, {
    inbound: { listen: "127.0.0.1:0", app: app.url, policy },
    limits,
  });
  t.teardown(() => inbound.stop());
  const outbound = await startSidecar(pki, frontend, {
    outbound: {
      listen: "127.0.0.1:0",
      upstreams: { orders: { address: `127.0.0.1:${inbound.inboundPort}`, identity: orders.spiffeId } },
    },
    limits,
  });
  t.teardown(() => outbound.stop());
  return {
    inbound,
    inboundPort: inbound.inboundPort,
    outboundPort: outbound.sidecar.addresses().outbound!.port,
    adminUrl: inbound.adminUrl,
  };
}

/** One request on a fresh mTLS connection; the status, or the error code when there was no response. */
async function freshRequest(port: number): Promise<number | string> {
  const fresh = mtlsClient(`https://localhost:${port}`, client);
  try {
    const response = await fresh.client.request({ path: "/normal", method: "GET" });
    await response.body.text();
    return response.statusCode;
  } catch (error) {
    return (error as { code?: string }).code ?? String(error);
  } finally {
    await fresh.close();
  }
}

/** A plain request as the app sends it to the outbound listener; resolves with the status line's code. */
function appRequest(port: number): Promise<number | string> {
  return new Promise((resolve) => {
    let received = "";
    const socket = net.connect(port, "127.0.0.1", () =>
      socket.write("GET /normal HTTP/1.1\r\nHost: orders\r\nConnection: close\r\n\r\n"),
    );
    socket.setEncoding("latin1");
    socket.on("data", (chunk: string) => {
      received += chunk;
    });
    socket.setTimeout(10_000, () => socket.destroy());
    socket.on("error", (error: NodeJS.ErrnoException) => resolve(error.code ?? "error"));
    socket.on("close", () => resolve(Number(/^HTTP\/1\.1 (\d{3})/.exec(received)?.[1] ?? 0)));
  });
}

/** Opens `count` TCP connections that never send a byte, 50 at a time; all are connected when it resolves. */
async function idleTcp(t: Test, port: number, count: number): Promise<net.Socket[]> {
  const sockets: net.Socket[] = [];
  t.teardown(() => {
    for (const socket of sockets) socket.destroy();
  });
  for (let opened = 0; opened < count; opened += 50) {
    const batch = Array.from({ length: Math.min(50, count - opened) }, () => {
      const socket = net.connect(port, "127.0.0.1");
      sockets.push(socket);
      socket.on("error", () => {});
      return new Promise<void>((resolve, reject) => {
        socket.once("connect", () => resolve());
        socket.once("close", () => reject(new Error("an idle connection was closed while opening")));
      });
    });
    await Promise.all(batch);
  }
  return sockets;
}

function stillOpen(sockets: readonly net.Socket[]): number {
  return sockets.filter((socket) => !socket.destroyed && socket.readable).length;
}

t.test(
  "at maxConnections the inbound port refuses more, the open ones keep working, and it says so",
  async (t) => {
    const sidecar = await start(t, { maxConnections: 3 });
    const open = await Promise.all([1, 2, 3].map(() => RawConnection.open(sidecar.inboundPort, client)));
    t.teardown(() => {
      for (const connection of open) connection.close();
    });
    await t.rejects(RawConnection.open(sidecar.inboundPort, client, 3000), "a fourth connection is refused");
    const full = await waitForLog(sidecar.inbound.logs, (line) =>
      String(line.msg).startsWith("limits.maxConnections reached"),
    );
    t.match(full, { level: "warn", listener: "inbound.listen", max_connections: 3 });
    for (const [index, connection] of open.entries()) {
      connection.write(rawGet(`/still-served/${index}`));
      t.equal(
        (await connection.read(1, 5000)).responses[0]?.status,
        200,
        `connection ${index + 1} still served`,
      );
    }
    open[0]!.close();
    let status: number | string = "not tried";
    for (const deadline = Date.now() + 5000; Date.now() < deadline && status !== 200; ) {
      status = await freshRequest(sidecar.inboundPort);
    }
    t.equal(status, 200, "once one closes, a new connection gets in");
    t.match(await waitForLog(sidecar.inbound.logs, (line) => line.msg === "accepting connections again"), {
      listener: "inbound.listen",
      refused: 1,
    });
  },
);

t.test("at maxConnections the outbound listener refuses more while the open ones keep working", async (t) => {
  const sidecar = await start(t, { maxConnections: 3 });
  const open = await idleTcp(t, sidecar.outboundPort, 3);
  const fourth = await appRequest(sidecar.outboundPort);
  t.not(fourth, 200, `a fourth connection gets no answer (${fourth})`);
  for (const socket of open) {
    const response = new Promise<string>((resolve) => {
      let received = "";
      socket.setEncoding("latin1");
      socket.on("data", (chunk: string) => {
        received += chunk;
        if (received.includes("\r\n\r\n")) resolve(received);
      });
    });
    socket.write("GET /held HTTP/1.1\r\nHost: orders\r\n\r\n");
    t.match(await response, /^HTTP\/1\.1 200 /);
  }
});

t.test(`${FLOOD} idle TCP connections to the inbound port do not stop a normal client`, async (t) => {
  const sidecar = await start(t, { handshakeTimeout: "1m" });
  const flood = await idleTcp(t, sidecar.inboundPort, FLOOD);
  const statuses = [];
  for (let i = 0; i < 10; i++) statuses.push(await freshRequest(sidecar.inboundPort));
  t.same(new Set(statuses), new Set([200]), "10 of 10 answered");
  t.equal(stillOpen(flood), FLOOD, "the flood is still connected: served alongside it, not by cutting it");
  const ready = await fetch(`${sidecar.adminUrl}/readyz`);
  t.equal(ready.status, 200, "/readyz still answers");
});

t.test(`${FLOOD} idle TCP connections to the outbound listener do not stop the app's requests`, async (t) => {
  const sidecar = await start(t, { headersTimeout: "1m" });
  const flood = await idleTcp(t, sidecar.outboundPort, FLOOD);
  const statuses = [];
  for (let i = 0; i < 10; i++) statuses.push(await appRequest(sidecar.outboundPort));
  t.same(new Set(statuses), new Set([200]), "10 of 10 answered");
  t.equal(stillOpen(flood), FLOOD);
});

t.test(`${FLOOD} idle mTLS connections, handshakes done, do not stop a normal client`, async (t) => {
  const sidecar = await start(t, { headersTimeout: "1m" });
  const connections: RawConnection[] = [];
  t.teardown(() => {
    for (const connection of connections) connection.close();
  });
  const started = Date.now();
  for (let opened = 0; opened < FLOOD; opened += 25) {
    const batch = await Promise.all(
      Array.from({ length: 25 }, () => RawConnection.open(sidecar.inboundPort, client, 10_000)),
    );
    connections.push(...batch);
  }
  t.comment(
    `${FLOOD} mTLS connections opened in ${Date.now() - started} ms (client and sidecar in one process)`,
  );
  const statuses = [];
  for (let i = 0; i < 10; i++) statuses.push(await freshRequest(sidecar.inboundPort));
  t.same(new Set(statuses), new Set([200]), "10 of 10 answered");
  t.equal(
    connections.filter((connection) => !connection.ended).length,
    FLOOD,
    "the idle ones are still open",
  );
  // And they are usable: the last one opened still gets an answer.
  const last = connections.at(-1)!;
  last.write(rawGet("/after-the-flood"));
  t.equal((await last.read(1, 5000)).responses[0]?.status, 200);
});
