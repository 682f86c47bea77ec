// Break-glass overrides: time-boxed allows, every use logged with its approver, ignored (and said so) once expired.
import { randomUUID } from "node:crypto";
import { readFile, writeFile } from "node:fs/promises";
import t from "tap";
import { parse, stringify } from "yaml";
import { ConfigError, parseConfig } from "../src/config/index.ts";
import { startApp } from "./helpers/app.ts";
import { curlRequest } from "./helpers/clients.ts";
import { createTestPki, type IdentityFiles } from "./helpers/pki.ts";
import { type LogLine, startSidecar, waitForLog } from "./helpers/sidecar.ts";

const HOUR = 3_600_000;
const pki = await createTestPki();
t.teardown(() => pki.cleanup());
const app = await startApp();
t.teardown(() => app.stop());
const orders = await pki.identity("orders");
const frontend = await pki.identity("frontend");
const oncall = await pki.identity("oncall");

const active = {
  from: [oncall.spiffeId],
  to: [{ paths: ["/v1/refunds/*"] }],
  reason: "INC-1234 refunds stuck",
  approvedBy: "alice@example.org",
  expires: new Date(Date.now() + 2 * HOUR).toISOString(),
};
const expired = {
  from: [oncall.spiffeId],
  to: [{ paths: ["/v1/legacy/*"] }],
  reason: "INC-1000 legacy export",
  approvedBy: "bob@example.org",
  expires: new Date(Date.now() - 24 * HOUR).toISOString(),
};
// Short enough to pass while the tests run, long enough to be seen active at startup on a loaded machine.
const shortLived = {
  from: [oncall.spiffeId],
  to: [{ paths: ["/v1/short/*"] }],
  reason: "INC-1300 five-second window",
  approvedBy: "carol@example.org",
  expires: new Date(Date.now() + 5000).toISOString(),
};

const sidecar = await startSidecar(pki, orders, {
  inbound: {
    listen: "127.0.0.1:0",
    app: app.url,
    policy: {
      default: "deny",
      rules: [{ name: "refunds-sealed", action: "deny", to: [{ paths: ["/v1/refunds/sealed"] }] }],
      overrides: [active, expired, shortLived],
    },
  },
});
t.teardown(() => sidecar.stop());

async function call(
  who: IdentityFiles,
  path: string,
): Promise<{ status: number | undefined; line: LogLine }> {
  const result = await curlRequest(sidecar.inboundUrl + path, {
    cacert: pki.bundlePath,
    cert: who.certPath,
    key: who.keyPath,
  });
  const line = await waitForLog(sidecar.logs, (l) => l.msg === "request" && l.path === path);
  return { status: result.response?.status, line };
}

function linesAbout(approvedBy: string, msg: RegExp): LogLine[] {
  return sidecar.logs.filter(
    (l) => msg.test(l.msg) && (l.override as { approvedBy?: string } | undefined)?.approvedBy === approvedBy,
  );
}

t.test(
  "an active override allows what the default denies, and each use is logged at warn with its approver",
  async (t) => {
    for (let i = 0; i < 2; i++) {
      const { status, line } = await call(oncall, `/v1/refunds/${randomUUID()}`);
      t.equal(status, 200);
      t.match(line, {
        level: "warn",
        decision: "allow",
        rule: "override",
        reason: "override",
        source_identity: oncall.spiffeId,
        override: { reason: active.reason, approvedBy: active.approvedBy, expires: active.expires },
      });
    }
  },
);

t.test("an active override is announced once at startup", async (t) => {
  const announced = linesAbout(active.approvedBy, /override active/);
  t.equal(announced.length, 1);
  t.match(announced[0], { level: "warn", override: { reason: active.reason, expires: active.expires } });
});

t.test("a matching deny rule still wins over an active override", async (t) => {
  const { status, line } = await call(oncall, "/v1/refunds/sealed");
  t.equal(status, 403);
  t.match(line, { decision: "deny", rule: "refunds-sealed" });
  t.notOk("override" in line);
});

t.test("an override reaches only the callers it names", async (t) => {
  const { status, line } = await call(frontend, `/v1/refunds/${randomUUID()}`);
  t.equal(status, 403);
  t.match(line, { decision: "deny", rule: "default" });
});

t.test("an expired override is ignored, and logged once at startup", async (t) => {
  const { status, line } = await call(oncall, `/v1/legacy/${randomUUID()}`);
  t.equal(status, 403);
  t.match(line, { rule: "default" });
  const lines = linesAbout(expired.approvedBy, /override expired/);
  t.equal(lines.length, 1, "one line for the expired override");
  t.match(lines[0], { level: "warn", override: { reason: expired.reason, expires: expired.expires } });
});

t.test(
  "an override that expires while the sidecar runs stops applying, and its expiry is logged once",
  async (t) => {
    const line = await waitForLog(
      sidecar.logs,
      (l) =>
        /override expired/.test(l.msg) &&
        (l.override as { approvedBy: string }).approvedBy === shortLived.approvedBy,
      10_000,
    );
    t.ok(Date.now() >= Date.parse(shortLived.expires), "logged once the expiry passed");
    t.match(line, { level: "warn", override: { reason: shortLived.reason } });
    const { status } = await call(oncall, `/v1/short/${randomUUID()}`);
    t.equal(status, 403, "no longer allowed");
    t.equal(linesAbout(shortLived.approvedBy, /override expired/).length, 1, "logged exactly once");
  },
);

t.test("reloading a config with the same overrides does not log them again", async (t) => {
  const config = parse(await readFile(sidecar.configPath, "utf8")) as {
    inbound: { policy: { rules: unknown[] } };
  };
  config.inbound.policy.rules.push({ name: "frontend-reads", action: "allow", from: [frontend.spiffeId] });
  await writeFile(sidecar.configPath, stringify(config));
  const outcome = await sidecar.sidecar.reloadConfig("signal");
  t.match(outcome, { result: "applied", changed: ["inbound.policy.rules"] });
  t.equal(linesAbout(expired.approvedBy, /override expired/).length, 1, "the expired one, still once");
  t.equal(linesAbout(active.approvedBy, /override active/).length, 1, "the active one, still once");
});

const IDENTITY = "identity:\n  cert: a\n  key: b\n  trustBundle: c\n  trustDomain: example.org\n";
const NOW = Date.parse("2026-11-23T12:00:00Z");

function overrideConfig(expires: string, extra = ""): string {
  return `${IDENTITY}inbound:
  policy:${extra}
    overrides:
      - from: ["spiffe://example.org/ns/oncall/sa/oncall"]
        reason: INC-1
        approvedBy: alice@example.org
        expires: ${expires}
`;
}

function configError(text: string): ConfigError {
  try {
    parseConfig(text, "/etc/mtlsd/mtlsd.yaml", { now: NOW });
  } catch (error) {
    if (error instanceof ConfigError) return error;
    throw error;
  }
  throw new Error("the config was accepted");
}

t.test(
  "an override expiring further ahead than 24h is refused, naming the field, its line and the latest time",
  async (t) => {
    const error = configError(overrideConfig("2026-11-25T12:00:00Z"));
    t.match(
      error.message,
      "inbound.policy.overrides[0].expires (line 12): expected a time at most 24h from now (inbound.policy.overridesMaxLifetime), so no later than 2026-11-24T12:00:00.000Z, found 2026-11-25T12:00:00.000Z, 2.0 days from now",
    );
  },
);

t.test("an override within 24h, or already expired, is accepted", async (t) => {
  t.doesNotThrow(() => parseConfig(overrideConfig("2026-11-24T11:59:00Z"), "/x.yaml", { now: NOW }));
  t.doesNotThrow(() => parseConfig(overrideConfig("2026-01-01T00:00:00Z"), "/x.yaml", { now: NOW }));
});

t.test("overridesMaxLifetime sets the limit", async (t) => {
  const text = overrideConfig("2026-11-25T12:00:00Z", "\n    overridesMaxLifetime: 72h");
  t.doesNotThrow(() => parseConfig(text, "/x.yaml", { now: NOW }));
  const error = configError(overrideConfig("2026-11-23T14:00:00Z", "\n    overridesMaxLifetime: 1h"));
  t.match(error.message, /expected a time at most 1h from now/);
});

t.test("an override without expires is refused: every break-glass needs an end", async (t) => {
  const text = overrideConfig("2026-11-24T00:00:00Z").replace(/ {8}expires: .*\n/, "");
  t.match(
    configError(text).message,
    /inbound\.policy\.overrides\[0\]\.expires \(line \d+\): expected an RFC 3339 timestamp/,
  );
});

t.test("an override without approvedBy is refused", async (t) => {
  const text = overrideConfig("2026-11-24T00:00:00Z").replace(/ {8}approvedBy: .*\n/, "");
  t.match(
    configError(text).message,
    /inbound\.policy\.overrides\[0\]\.approvedBy .*expected who approved the exception/,
  );
});
