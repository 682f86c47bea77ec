// The one table that decides what a config reload applies live: it covers every key of the schema, and a plan
// built from it applies the live changes and keeps restart-only settings at their running values.
import { readFileSync } from "node:fs";
import t from "tap";
import { type Config, configChangeKeys, configChanges, parseConfig } from "../src/config/index.ts";
import { planReload, RELOAD_RULES, reloadRule } from "../src/config-reload.ts";

const BASE = {
  identity: { cert: "/c", key: "/k", trustBundle: "/b", trustDomain: "example.org" },
  inbound: { listen: "127.0.0.1:15006", app: "http://127.0.0.1:8080" },
  outbound: {
    listen: "127.0.0.1:15001",
    upstreams: { orders: { address: "orders:15006", identity: "spiffe://example.org/ns/orders/sa/orders" } },
  },
};

function config(change: (raw: typeof BASE & Record<string, unknown>) => void = () => {}): Config {
  const raw = structuredClone(BASE) as typeof BASE & Record<string, unknown>;
  change(raw);
  return parseConfig(JSON.stringify(raw), "/etc/mtlsd/mtlsd.yaml").config;
}

t.test("every key of the config schema is either applied live or named as needing a restart", async (t) => {
  const missing = configChangeKeys().filter((key) => !Object.hasOwn(RELOAD_RULES, key));
  t.same(missing, [], "add each of these to RELOAD_RULES in src/config-reload.ts: live, or restart with why");
});

t.test("the table names no key the schema does not have", async (t) => {
  const keys = new Set(configChangeKeys());
  t.same(
    Object.keys(RELOAD_RULES).filter((key) => !keys.has(key)),
    [],
    "a key was renamed or removed from the schema",
  );
});

t.test("every rule says how its change takes effect, or why it waits for a restart", async (t) => {
  for (const [key, rule] of Object.entries(RELOAD_RULES)) {
    t.ok((rule.live && rule.takesEffect) || rule.restart, key);
  }
});

t.test(
  "listen addresses and the identity source need a restart; timeouts, upstreams and policy do not",
  async (t) => {
    for (const key of [
      "inbound.listen",
      "outbound.listen",
      "admin.listen",
      "identity.cert",
      "identity.workloadApi",
    ]) {
      t.ok(reloadRule(key).restart, `${key} waits for a restart`);
    }
    for (const key of [
      "inbound.appTimeout",
      "inbound.xfcc",
      "inbound.appProtocol",
      "inbound.policy.rules",
      "outbound.upstreams",
      "outbound.upstreams.<name>.timeout",
      "outbound.upstreams.<name>.listen",
      "limits.headersTimeout",
      "identity.deny.serials",
      "identity.reload.interval",
      "log.level",
    ]) {
      t.ok(reloadRule(key).live, `${key} applies live`);
    }
  },
);

t.test("a key the table does not know is treated as needing a restart", async (t) => {
  t.match(reloadRule("inbound.somethingNew"), { restart: /not known to apply live/ });
});

t.test("changes are reported by the key the reference uses and the path in this config", async (t) => {
  const changes = configChanges(
    config(),
    config((raw) => {
      raw.inbound = { ...raw.inbound, appTimeout: "5s" } as typeof raw.inbound;
      raw.outbound.upstreams.orders = { ...raw.outbound.upstreams.orders, timeout: "5s" } as never;
      (raw.outbound.upstreams as Record<string, unknown>).payments = {
        address: "payments:15006",
        identity: "spiffe://example.org/ns/payments/sa/payments",
      };
      raw.log = { level: "debug" };
    }),
  );
  t.same(changes, [
    { key: "inbound.appTimeout", path: "inbound.appTimeout" },
    { key: "outbound.upstreams.<name>.timeout", path: "outbound.upstreams.orders.timeout" },
    { key: "outbound.upstreams", path: "outbound.upstreams.payments" },
    { key: "log.level", path: "log.level" },
  ]);
});

t.test("a section that comes or goes is one change", async (t) => {
  const next = config((raw) => {
    delete (raw as Record<string, unknown>).outbound;
  });
  t.same(configChanges(config(), next), [{ key: "outbound", path: "outbound" }]);
});

t.test("a plan applies live changes and keeps restart-only ones at their running value", async (t) => {
  const running = config();
  const plan = planReload(
    running,
    config((raw) => {
      raw.inbound = { ...raw.inbound, listen: "127.0.0.1:16006", appTimeout: "5s" } as typeof raw.inbound;
      raw.limits = { keepAliveTimeout: "5s", headersTimeout: "2s" };
    }),
  );
  t.same(
    plan.applied.map((change) => change.path),
    ["inbound.appTimeout", "limits.headersTimeout"],
  );
  t.same(
    plan.restartRequired.map((change) => change.path),
    ["inbound.listen", "limits.keepAliveTimeout"],
  );
  t.same([...plan.parts].sort(), ["inbound", "limits"]);
  t.equal(plan.effective.inbound!.listen, "127.0.0.1:15006", "the running listen address stays");
  t.equal(plan.effective.limits.keepAliveTimeout, running.limits.keepAliveTimeout);
  t.equal(plan.effective.inbound!.appTimeout, 5000, "the new timeout is taken");
  t.equal(plan.effective.limits.headersTimeout, 2000);
});

t.test("a removed inbound section is kept whole until a restart", async (t) => {
  const running = config();
  const plan = planReload(
    running,
    config((raw) => {
      delete (raw as Record<string, unknown>).inbound;
    }),
  );
  t.same(plan.restartRequired, [{ key: "inbound", path: "inbound" }]);
  t.same(plan.effective.inbound, running.inbound);
});

t.test("an added outbound section is left out until a restart", async (t) => {
  const running = config((raw) => {
    delete (raw as Record<string, unknown>).outbound;
  });
  const plan = planReload(running, config());
  t.same(plan.restartRequired, [{ key: "outbound", path: "outbound" }]);
  t.equal(plan.effective.outbound, undefined);
});

t.test("switching to the Workload API keeps the files in use until a restart", async (t) => {
  const running = config();
  const next = parseConfig(
    JSON.stringify({
      ...BASE,
      identity: { workloadApi: { socket: "unix:///run/spire/agent.sock" }, trustDomain: "example.org" },
    }),
    "/etc/mtlsd/mtlsd.yaml",
  ).config;
  const plan = planReload(running, next);
  t.same(
    plan.restartRequired.map((change) => change.path),
    ["identity.cert", "identity.key", "identity.trustBundle", "identity.workloadApi"],
  );
  t.same(plan.effective.identity, running.identity);
  t.same(plan.applied, []);
});

/** The backticked keys of the docs table that starts with `| heading |`, in docs/configuration.md. */
function documented(heading: string): string[] {
  const page = readFileSync(new URL("../docs/configuration.md", import.meta.url), "utf8");
  const start = page.indexOf(`| ${heading} |`);
  const table = page.slice(start, page.indexOf("\n\n", start));
  return table
    .split("\n")
    .slice(2)
    .flatMap((row) => [...(row.split(" | ")[0] ?? "").matchAll(/`([^`]+)`/g)].map((match) => match[1]!));
}

/** A key is documented when it, or a section above it, is in the table. */
function covered(key: string, keys: readonly string[]): boolean {
  return keys.some((documentedKey) => key === documentedKey || key.startsWith(`${documentedKey}.`));
}

t.test("docs/configuration.md lists every key that waits for a restart, and only those", async (t) => {
  const restart = documented("waits for a restart");
  for (const [key, rule] of Object.entries(RELOAD_RULES)) {
    if (rule.restart) t.ok(covered(key, restart), `${key} is in the restart table`);
  }
  for (const key of restart) t.ok(RELOAD_RULES[key]?.restart, `${key} does wait for a restart`);
});

t.test("docs/configuration.md lists every key that applies live", async (t) => {
  const live = documented("applies live");
  for (const [key, rule] of Object.entries(RELOAD_RULES)) {
    if (rule.live) t.ok(covered(key, live), `${key} is in the live table`);
  }
});
