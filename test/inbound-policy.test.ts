// Inbound policy end to end: which identity may call which method and path, and what each decision leaves in the log.
import t from "tap";
import { startApp } from "./helpers/app.ts";
import { type MtlsClient, mtlsClient } from "./helpers/clients.ts";
import { createTestPki, type IdentityFiles } from "./helpers/pki.ts";
import { type LogLine, startSidecar, waitForLog } from "./helpers/sidecar.ts";

const pki = await createTestPki();
t.teardown(() => pki.cleanup());
const app = await startApp();
t.teardown(() => app.stop());
const orders = await pki.identity("orders");
const frontend = await pki.identity("frontend");
const reporting = await pki.identity("reporting");
const sidecar = await startSidecar(pki, orders, {
  inbound: {
    listen: "127.0.0.1:0",
    app: app.url,
    policy: {
      default: "deny",
      rules: [
        {
          name: "frontend-reads-orders",
          action: "allow",
          from: [frontend.spiffeId],
          to: [{ methods: ["GET", "POST"], paths: ["/v1/orders", "/v1/orders/*"] }],
        },
        // Listed after the allow rule on purpose: a deny wins by kind, not by position.
        {
          name: "order-13-is-sealed",
          action: "deny",
          from: [frontend.spiffeId],
          to: [{ paths: ["/v1/orders/13"] }],
        },
      ],
    },
  },
});
t.teardown(() => sidecar.stop());

/** An undici client presenting `identity`, closed when `owner` (the file, or one test) ends. */
function clientFor(identity: IdentityFiles, owner: { teardown(fn: () => unknown): void } = t): MtlsClient {
  const client = mtlsClient(sidecar.inboundUrl, {
    ca: pki.bundlePem,
    cert: identity.chainPem,
    key: identity.keyPem,
  });
  owner.teardown(() => client.close());
  return client;
}
const asFrontend = clientFor(frontend);
const asReporting = clientFor(reporting);

interface Reply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

async function call(client: MtlsClient, method: string, path: string): Promise<Reply> {
  const res = await client.client.request({ method, path, signal: AbortSignal.timeout(5000) });
  return { status: res.statusCode, headers: res.headers, body: await res.body.text() };
}

/** The request line logged after `before` for this caller, method and (normalized) path. */
function requestLine(before: number, source: string, method: string, path: string): Promise<LogLine> {
  return waitForLog(
    sidecar.logs,
    (line) =>
      line.msg === "request" &&
      line.source_identity === source &&
      line.method === method &&
      line.path === path &&
      sidecar.logs.indexOf(line) >= before,
  );
}

t.test("frontend may GET an order: 200 from the app", async (t) => {
  const before = sidecar.logs.length;
  const reply = await call(asFrontend, "GET", "/v1/orders/42");
  t.equal(reply.status, 200);
  t.equal(reply.headers["x-app"], "echo");
  t.match(JSON.parse(reply.body), { method: "GET", url: "/v1/orders/42" });
  const line = await requestLine(before, frontend.spiffeId, "GET", "/v1/orders/42");
  t.match(line, { decision: "allow", rule: "frontend-reads-orders", status: 200 });
});

t.test("frontend may not DELETE an order: 403 policy_denied, and the app never sees it", async (t) => {
  const before = sidecar.logs.length;
  const reply = await call(asFrontend, "DELETE", "/v1/orders/42");
  t.equal(reply.status, 403);
  t.equal(reply.headers["x-mtlsd-reason"], "policy_denied");
  t.match(JSON.parse(reply.body), { reason: "policy_denied" });
  t.notOk(reply.headers["x-app"], "the sidecar answered, not the app");
  const line = await requestLine(before, frontend.spiffeId, "DELETE", "/v1/orders/42");
  t.match(line, { decision: "deny", rule: "default", status: 403 });
});

t.test("reporting, which no rule allows, is denied by default with a complete log line", async (t) => {
  const before = sidecar.logs.length;
  const reply = await call(asReporting, "GET", "/v1/orders/42");
  t.equal(reply.status, 403);
  t.equal(reply.headers["x-mtlsd-reason"], "policy_denied");
  const line = await requestLine(before, reporting.spiffeId, "GET", "/v1/orders/42");
  t.match(line, {
    direction: "inbound",
    rule: "default",
    decision: "deny",
    reason: "policy_denied",
    source_identity: reporting.spiffeId,
    destination_identity: orders.spiffeId,
    method: "GET",
    path: "/v1/orders/42",
    status: 403,
  });
  t.type(line.duration_ms, "number");
  t.ok((line.duration_ms as number) >= 0, "duration_ms is a non-negative number");
});

t.test("an explicit deny rule beats an allow rule, and the log names it", async (t) => {
  const before = sidecar.logs.length;
  const allowedNeighbour = await call(asFrontend, "GET", "/v1/orders/12");
  t.equal(allowedNeighbour.status, 200, "the allow rule covers /v1/orders/*");
  const reply = await call(asFrontend, "GET", "/v1/orders/13");
  t.equal(reply.status, 403);
  t.equal(reply.headers["x-mtlsd-reason"], "policy_denied");
  const line = await requestLine(before, frontend.spiffeId, "GET", "/v1/orders/13");
  t.match(line, { decision: "deny", rule: "order-13-is-sealed", status: 403 });
});

t.test("the query string is ignored for matching but reaches the app verbatim", async (t) => {
  const before = sidecar.logs.length;
  // An exact path rule must still match with a query (CVE-2020-8595), and the query must not be rewritten.
  const target = "/v1/orders?page=2&filter=a%2Fb&next=/v1/admin/../x&empty=&flag";
  const reply = await call(asFrontend, "GET", target);
  t.equal(reply.status, 200);
  t.equal(JSON.parse(reply.body).url, target, "the app receives the query byte for byte");
  const line = await requestLine(before, frontend.spiffeId, "GET", "/v1/orders");
  t.match(line, { decision: "allow", rule: "frontend-reads-orders" });

  // Nor can a query that spells an allowed path open a path that is not allowed.
  const smuggled = await call(asFrontend, "GET", "/v1/admin?/v1/orders");
  t.equal(smuggled.status, 403);
  const denied = await requestLine(before, frontend.spiffeId, "GET", "/v1/admin");
  t.match(denied, { decision: "deny", rule: "default" });
  const sealed = await call(asFrontend, "GET", "/v1/orders/13?override=true");
  t.equal(sealed.status, 403, "a query does not escape a deny rule either");
});

t.test("an allowed request logs at info and a denied one at warn", async (t) => {
  const before = sidecar.logs.length;
  await call(asFrontend, "POST", "/v1/orders");
  await call(asReporting, "POST", "/v1/orders");
  const allowed = await requestLine(before, frontend.spiffeId, "POST", "/v1/orders");
  const denied = await requestLine(before, reporting.spiffeId, "POST", "/v1/orders");
  t.match(allowed, { level: "info", decision: "allow" });
  t.match(denied, { level: "warn", decision: "deny" });
});

t.test("a denied request leaves its keep-alive connection open for the next request", async (t) => {
  const client = clientFor(frontend, t);
  const denied = await call(client, "DELETE", "/v1/orders/7");
  t.equal(denied.status, 403);
  t.not(denied.headers.connection, "close", "the refusal does not ask to close the connection");
  const allowed = await call(client, "GET", "/v1/orders/7");
  t.equal(allowed.status, 200);
  t.equal(allowed.headers["x-app"], "echo");
  t.equal(client.connections(), 1, "both requests went over one TLS connection");
});
