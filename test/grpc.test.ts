// gRPC through two sidecars: grpc-js client, grpc-js app, every call shape, trailers, deadlines, cancels, policy.
import net from "node:net";
import t from "tap";
import { startApp } from "./helpers/app.ts";
import { adminClient, echoClient, grpc, type Note, unary } from "./helpers/grpc.ts";
import { inboundAddress, startCaller } from "./helpers/outbound.ts";
import { createTestPki } from "./helpers/pki.ts";
import { startSidecar, waitForLog } from "./helpers/sidecar.ts";

const pki = await createTestPki();
t.teardown(() => pki.cleanup());
const frontend = await pki.identity("frontend");
const orders = await pki.identity("orders");
const app = await startApp(0, "grpc-app.ts");
t.teardown(() => app.stop());

// The app speaks gRPC, so its sidecar speaks HTTP/2 to it. Only the Echo service is allowed: Admin is denied.
const ordersSidecar = await startSidecar(pki, orders, {
  inbound: {
    listen: "127.0.0.1:0",
    app: app.url,
    appProtocol: "h2c",
    policy: {
      rules: [
        { name: "echo", action: "allow", from: [frontend.spiffeId], to: [{ paths: ["/mtlsd.test.Echo/*"] }] },
      ],
    },
  },
});
t.teardown(() => ordersSidecar.stop());
// The same app behind a sidecar left at appProtocol: http1, as a user who forgot the setting has it.
const legacySidecar = await startSidecar(pki, orders, {
  inbound: {
    listen: "127.0.0.1:0",
    app: app.url,
    policy: { rules: [{ name: "all", action: "allow", from: [frontend.spiffeId] }] },
  },
});
t.teardown(() => legacySidecar.stop());
const closedPort = await new Promise<number>((resolve) => {
  const server = net.createServer().listen(0, "127.0.0.1", () => {
    const { port } = server.address() as net.AddressInfo;
    server.close(() => resolve(port));
  });
});
const caller = await startCaller(pki, frontend, {
  orders: { address: inboundAddress(ordersSidecar), identity: orders.spiffeId, listen: "127.0.0.1:0" },
  legacy: { address: inboundAddress(legacySidecar), identity: orders.spiffeId, listen: "127.0.0.1:0" },
  gone: { address: `127.0.0.1:${closedPort}`, identity: orders.spiffeId, listen: "127.0.0.1:0" },
});
t.teardown(() => caller.stop());
const ports = caller.sidecar.addresses().upstreams!;

// The app's gRPC client dials the upstream's own outbound port, in plaintext, as apps next to a sidecar do.
const client = echoClient(`127.0.0.1:${ports.orders!.port}`);
t.teardown(() => client.close());

function readAll(
  stream: grpc.ClientReadableStream<Note>,
): Promise<{ notes: Note[]; error?: grpc.ServiceError }> {
  return new Promise((resolve) => {
    const notes: Note[] = [];
    stream.on("data", (note: Note) => notes.push(note));
    stream.on("error", (error: grpc.ServiceError) => resolve({ notes, error }));
    stream.on("end", () => resolve({ notes }));
  });
}

t.test("a unary call returns its reply, and its trailers (text and -bin) arrive intact", async (t) => {
  const result = await unary(client.Unary, client, { text: "hello" });
  t.equal(result.error, null);
  t.equal(result.reply?.text, "echo: hello");
  t.equal(result.trailers?.get("x-trailer-text")[0], "kept as sent");
  t.same(
    result.trailers?.get("x-trailer-bin")[0],
    Buffer.from([0, 1, 2, 254, 255]),
    "binary metadata, byte for byte",
  );
  t.match(
    String(result.trailers?.get("x-caller")[0]),
    `URI=${frontend.spiffeId}`,
    "the app saw the caller's identity in XFCC",
  );
  const inbound = await waitForLog(
    ordersSidecar.logs,
    (l) => l.msg === "request" && l.path === "/mtlsd.test.Echo/Unary",
  );
  t.match(inbound, {
    direction: "inbound",
    protocol: "h2",
    decision: "allow",
    status: 200,
    grpc_status: "0",
  });
  t.equal(inbound.source_identity, frontend.spiffeId);
  const outbound = await waitForLog(
    caller.logs,
    (l) => l.msg === "request" && l.path === "/mtlsd.test.Echo/Unary",
  );
  t.match(outbound, { direction: "outbound", protocol: "h2", upstream: "orders", grpc_status: "0" });
});

t.test("a server-streaming call delivers every message, in order", async (t) => {
  const result = await readAll(client.Stream({ text: "tick", count: 5, delayMs: 20 }));
  t.equal(result.error, undefined);
  t.same(
    result.notes.map((note) => note.text),
    ["tick 1", "tick 2", "tick 3", "tick 4", "tick 5"],
  );
});

t.test("a client-streaming call delivers every message the client sent", async (t) => {
  const reply = await new Promise<Note | undefined>((resolve, reject) => {
    const call = client.Collect(new grpc.Metadata(), {}, (error, note) =>
      error ? reject(error) : resolve(note),
    );
    for (const text of ["a", "b", "c", "d"]) call.write({ text });
    call.end();
  });
  t.equal(reply?.text, "a,b,c,d");
  t.equal(reply?.count, 4);
});

t.test("a bidirectional call answers each message before the client sends the next", async (t) => {
  const call = client.Chat();
  const replies: string[] = [];
  const next = () => new Promise<string>((resolve) => call.once("data", (note: Note) => resolve(note.text)));
  for (const text of ["one", "two", "three"]) {
    const reply = next();
    call.write({ text });
    // The reply arrives while the request stream is still open: nothing waits for the client to finish.
    replies.push(await reply);
  }
  const ended = new Promise<void>((resolve) => call.on("end", () => resolve()));
  call.end();
  await ended;
  t.same(replies, ["re: one", "re: two", "re: three"]);
});

t.test("an app's error status and message arrive as the app sent them", async (t) => {
  const result = await unary(client.Unary, client, {
    text: "no such order ✓ 100%",
    failWith: grpc.status.NOT_FOUND,
  });
  t.equal(result.error?.code, grpc.status.NOT_FOUND);
  t.equal(result.error?.details, "no such order ✓ 100%");
  const line = await waitForLog(ordersSidecar.logs, (l) => l.msg === "request" && l.grpc_status === "5");
  t.equal(line.status, 200, "a gRPC error is an HTTP 200 with its status in the trailers");
});

t.test("a grpc-timeout deadline reaches the app, which sees the call cancelled", async (t) => {
  const result = await unary(client.Hang, client, { text: "deadline" }, { deadline: Date.now() + 300 });
  t.equal(result.error?.code, grpc.status.DEADLINE_EXCEEDED);
  const started = await app.event((event) => event.event === "started" && event.text === "deadline");
  // Without grpc-timeout the app's deadline would be infinite (null here): the cancel alone proves nothing,
  // as the client resets its stream when its own deadline passes.
  const left = started.deadlineLeftMs;
  t.type(left, "number", "the app's call has a deadline: grpc-timeout passed both sidecars");
  t.ok(
    (left as number) > 0 && (left as number) <= 300,
    `the app's deadline is the client's, less the time on the way (${String(left)} ms of 300 left)`,
  );
  await app.event((event) => event.event === "cancelled" && event.text === "deadline");
});

t.test("a client's cancellation reaches the app as a reset of its stream", async (t) => {
  const done = new Promise<grpc.ServiceError | null>((resolve) => {
    const call = client.Hang({ text: "cancel me" }, new grpc.Metadata(), {}, (error) => resolve(error));
    setTimeout(() => call.cancel(), 200);
  });
  t.equal((await done)?.code, grpc.status.CANCELLED);
  const started = await app.event((event) => event.event === "started" && event.text === "cancel me");
  t.equal(started.deadlineLeftMs, null, "the call had no deadline: only the reset can end it at the app");
  await app.event((event) => event.event === "cancelled" && event.text === "cancel me");
});

t.test(
  "a method the policy denies fails with PERMISSION_DENIED and the reason, before the app",
  async (t) => {
    const admin = adminClient(`127.0.0.1:${ports.orders!.port}`);
    t.teardown(() => admin.close());
    const result = await unary(admin.Reset, admin, { text: "wipe" });
    t.equal(result.error?.code, grpc.status.PERMISSION_DENIED);
    t.match(result.error?.details, /denied by policy \(policy_denied\)/);
    t.equal(result.trailers?.get("x-mtlsd-reason")[0], "policy_denied");
    const line = await waitForLog(
      ordersSidecar.logs,
      (l) => l.msg === "request" && l.path === "/mtlsd.test.Admin/Reset",
    );
    t.match(line, {
      decision: "deny",
      reason: "policy_denied",
      status: 200,
      grpc_status: "7",
      protocol: "h2",
    });
    t.notOk(
      app.events.some((event) => event.method === "Reset"),
      "the app never saw the denied call",
    );
    const metrics = await (await fetch(`${ordersSidecar.adminUrl}/metrics`)).text();
    t.match(
      metrics,
      /mtlsd_requests_total\{direction="inbound",decision="deny",[^}]*protocol="h2",grpc_status="7"\} \d/,
    );
  },
);

t.test("gRPC to an app left at appProtocol: http1 fails with UNAVAILABLE naming the setting", async (t) => {
  const legacy = echoClient(`127.0.0.1:${ports.legacy!.port}`);
  t.teardown(() => legacy.close());
  const result = await unary(legacy.Unary, legacy, { text: "x" }, { deadline: Date.now() + 5000 });
  t.equal(result.error?.code, grpc.status.UNAVAILABLE, "an answer, not a hang");
  t.match(result.error?.details, "set inbound.appProtocol: h2c");
  t.equal(result.trailers?.get("x-mtlsd-reason")[0], "app_protocol_mismatch");
});

t.test("an upstream that is down fails with UNAVAILABLE and the reason, not a protocol error", async (t) => {
  const gone = echoClient(`127.0.0.1:${ports.gone!.port}`);
  t.teardown(() => gone.close());
  const result = await unary(gone.Unary, gone, { text: "x" }, { deadline: Date.now() + 5000 });
  t.equal(result.error?.code, grpc.status.UNAVAILABLE);
  t.equal(result.trailers?.get("x-mtlsd-reason")[0], "upstream_unreachable");
  const line = await waitForLog(caller.logs, (l) => l.msg === "request" && l.upstream === "gone");
  t.match(line, { status: 200, reason: "upstream_unreachable", grpc_status: "14" });
});

t.test("a gRPC client with grpc_proxy set reaches the upstream through a CONNECT tunnel", async (t) => {
  // grpc-js reads its proxy from the environment when a channel is made, and then sends CONNECT orders:443.
  const saved = { grpc_proxy: process.env.grpc_proxy, no_grpc_proxy: process.env.no_grpc_proxy };
  process.env.grpc_proxy = caller.proxyUrl;
  delete process.env.no_grpc_proxy;
  const proxied = echoClient("orders:443");
  for (const [name, value] of Object.entries(saved)) {
    if (value === undefined) delete process.env[name];
    else process.env[name] = value;
  }
  t.teardown(() => proxied.close());
  const result = await unary(proxied.Unary, proxied, { text: "via proxy" }, { deadline: Date.now() + 5000 });
  t.equal(result.error, null);
  t.equal(result.reply?.text, "echo: via proxy");
  const line = await waitForLog(
    caller.logs,
    (l) =>
      l.msg === "request" &&
      l.path === "/mtlsd.test.Echo/Unary" &&
      l.upstream === "orders" &&
      l.status === 200,
  );
  t.equal(line.grpc_status, "0", "each call in the tunnel is forwarded and logged as any other");
});
