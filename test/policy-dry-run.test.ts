// Trying a rule before enforcing it: dryRun rules are logged as shadow decisions and counted, never enforced.
import { randomUUID } from "node:crypto";
import t from "tap";
import { startApp } from "./helpers/app.ts";
import { curlRequest } from "./helpers/clients.ts";
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
        { name: "frontend-reads-orders", action: "allow", from: [frontend.spiffeId] },
        // The rule being tried out: would it break the frontend's writes?
        {
          name: "block-order-writes",
          action: "deny",
          to: [{ methods: ["POST", "PUT", "DELETE"], paths: ["/v1/orders/*"] }],
          dryRun: true,
        },
        // A planned opening for reporting, not yet live.
        {
          name: "reporting-reads-orders",
          action: "allow",
          from: [reporting.spiffeId],
          to: [{ methods: ["GET"] }],
          dryRun: true,
        },
      ],
    },
  },
});
t.teardown(() => sidecar.stop());

async function call(
  who: IdentityFiles,
  method: string,
): Promise<{ status: number | undefined; line: LogLine }> {
  const path = `/v1/orders/${randomUUID()}`;
  const result = await curlRequest(sidecar.inboundUrl + path, {
    cacert: pki.bundlePath,
    cert: who.certPath,
    key: who.keyPath,
    method,
  });
  const line = await waitForLog(sidecar.logs, (l) => l.msg === "request" && l.path === path);
  return { status: result.response?.status, line };
}

function shadowCount(text: string, rule: string, result: string): number {
  const line = text
    .split("\n")
    .find((l) => l.startsWith(`mtlsd_policy_shadow_total{rule="${rule}",result="${result}"}`));
  return line ? Number(line.split(" ").at(-1)) : 0;
}

t.test("a dry-run deny rule that matches lets the request through and logs shadow_deny", async (t) => {
  const { status, line } = await call(frontend, "POST");
  t.equal(status, 200, "the request was forwarded: dry-run rules are never enforced");
  t.match(line, {
    level: "info",
    decision: "allow",
    rule: "frontend-reads-orders",
    shadow: "shadow_deny",
    shadow_hits: [{ rule: "block-order-writes", result: "shadow_deny" }],
  });
});

t.test(
  "a dry-run allow rule that matches a denied request leaves it denied and logs shadow_allow",
  async (t) => {
    const { status, line } = await call(reporting, "GET");
    t.equal(status, 403, "still denied by default");
    t.match(line, {
      level: "warn",
      decision: "deny",
      rule: "default",
      shadow: "shadow_allow",
      shadow_hits: [{ rule: "reporting-reads-orders", result: "shadow_allow" }],
    });
  },
);

t.test("a request no dry-run rule matches carries no shadow fields", async (t) => {
  const { line } = await call(frontend, "GET");
  t.notOk("shadow" in line, "no shadow");
  t.notOk("shadow_hits" in line, "no shadow_hits");
});

t.test("shadow decisions are counted in mtlsd_policy_shadow_total by rule and result", async (t) => {
  const before = await sidecar.sidecar.metrics.metrics();
  await call(frontend, "DELETE");
  await call(frontend, "PUT");
  await call(reporting, "GET");
  const after = await sidecar.sidecar.metrics.metrics();
  t.equal(
    shadowCount(after, "block-order-writes", "shadow_deny") -
      shadowCount(before, "block-order-writes", "shadow_deny"),
    2,
  );
  t.equal(
    shadowCount(after, "reporting-reads-orders", "shadow_allow") -
      shadowCount(before, "reporting-reads-orders", "shadow_allow"),
    1,
  );
});
