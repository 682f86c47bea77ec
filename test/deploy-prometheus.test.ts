// The alerting rules shipped in deploy/prometheus: valid for Prometheus, unit-tested with promtool, the same in
// the PrometheusRule, and each one linked to a runbook section that exists.
import { readFileSync } from "node:fs";
import path from "node:path";
import t from "tap";
import { parse as parseYaml } from "yaml";
import { PROMETHEUS_RULE_FILE, prometheusRule, RULES_FILE } from "../scripts/write-prometheus-rule.ts";
import { run } from "./helpers/clients.ts";
import { anchorsOf, ROOT } from "./helpers/docs.ts";

const DIR = path.join(ROOT, "deploy/prometheus");
const RUNBOOK_BASE = "https://github.com/mtlsd/mtlsd/blob/main/";

interface AlertingRule {
  alert: string;
  expr: string;
  for?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}

const rulesText = readFileSync(RULES_FILE, "utf8");
const rules = parseYaml(rulesText) as { groups: { name: string; rules: AlertingRule[] }[] };
const alerts = rules.groups.flatMap((group) => group.rules);

t.test("promtool accepts the rules file", async (t) => {
  const result = await run("promtool", ["check", "rules", RULES_FILE.pathname]);
  t.equal(result.code, 0, result.stdout + result.stderr);
  t.match(result.stdout, `SUCCESS: ${alerts.length} rules found`);
});

t.test("every alert passes its promtool unit tests", async (t) => {
  const result = await run("promtool", ["test", "rules", path.join(DIR, "mtlsd-alerts.test.yaml")], {
    timeoutMs: 60_000,
  });
  t.equal(result.code, 0, result.stdout + result.stderr);
  t.match(result.stdout, "SUCCESS");
});

t.test("every alert has a unit test where it fires and one where it stays quiet", async (t) => {
  const tests = parseYaml(readFileSync(path.join(DIR, "mtlsd-alerts.test.yaml"), "utf8")) as {
    tests: { alert_rule_test: { alertname: string; exp_alerts: unknown[] }[] }[];
  };
  const cases = tests.tests.flatMap((group) => group.alert_rule_test);
  for (const { alert } of alerts) {
    const own = cases.filter((test) => test.alertname === alert);
    t.ok(
      own.some((test) => test.exp_alerts.length > 0),
      `${alert} is tested firing`,
    );
    t.ok(
      own.some((test) => test.exp_alerts.length === 0),
      `${alert} is tested quiet`,
    );
  }
});

t.test("the PrometheusRule is what the rules file generates", async (t) => {
  t.equal(
    readFileSync(PROMETHEUS_RULE_FILE, "utf8"),
    prometheusRule(rulesText),
    "deploy/prometheus/mtlsd-prometheusrule.yaml is stale: run `npm run prometheus-rule` and commit the result",
  );
  const resource = parseYaml(readFileSync(PROMETHEUS_RULE_FILE, "utf8"), { version: "1.1" }) as {
    apiVersion: string;
    kind: string;
    metadata: { name: string };
    spec: unknown;
  };
  t.equal(resource.apiVersion, "monitoring.coreos.com/v1");
  t.equal(resource.kind, "PrometheusRule");
  t.equal(resource.metadata.name, "mtlsd");
  t.same(resource.spec, rules, "the same groups, rules and annotations");
});

t.test("npm run prometheus-rule rewrites the PrometheusRule from the rules file", async (t) => {
  const before = readFileSync(PROMETHEUS_RULE_FILE, "utf8");
  const result = await run(process.execPath, [path.join(ROOT, "scripts/write-prometheus-rule.ts")]);
  t.equal(result.code, 0, result.stderr);
  t.equal(result.stdout, `wrote ${PROMETHEUS_RULE_FILE.pathname}\n`);
  t.equal(readFileSync(PROMETHEUS_RULE_FILE, "utf8"), before, "an up-to-date file is written unchanged");
});

t.test("a rules file without groups cannot be turned into a PrometheusRule", async (t) => {
  t.throws(() => prometheusRule("rules: []\n"), /no top-level `groups:`/);
});

t.test(
  "every alert has a severity, a summary, a description and a runbook section that exists",
  async (t) => {
    t.ok(alerts.length >= 10, `${alerts.length} alerts`);
    for (const rule of alerts) {
      t.match(rule.labels?.severity, /^(critical|warning|info)$/, `${rule.alert} has a severity`);
      t.ok(rule.annotations?.summary, `${rule.alert} has a summary`);
      t.ok(rule.annotations?.description, `${rule.alert} has a description`);
      const url = rule.annotations?.runbook_url ?? "";
      t.ok(url.startsWith(`${RUNBOOK_BASE}docs/`), `${rule.alert}'s runbook is in the docs: ${url}`);
      const [file, anchor] = url.slice(RUNBOOK_BASE.length).split("#") as [string, string | undefined];
      const page = readFileSync(path.join(ROOT, file), "utf8");
      t.ok(anchor && anchorsOf(page).has(anchor), `${file} has a section #${anchor} for ${rule.alert}`);
    }
  },
);

t.test("the alerts cover what the operations docs promise", async (t) => {
  const names = alerts.map((rule) => rule.alert);
  for (const expected of [
    "MtlsdSidecarDown",
    "MtlsdSidecarNotReady",
    "MtlsdCertificateExpiring",
    "MtlsdCertificateExpired",
    "MtlsdCredentialReloadFailing",
    "MtlsdWorkloadApiUpdatesFailing",
    "MtlsdHandshakeFailuresRising",
    "MtlsdPolicyDenialsRising",
    "MtlsdShadowDenialsPresent",
    "MtlsdPlaintextRequests",
    "MtlsdBreakGlassOverrideInUse",
  ]) {
    t.ok(names.includes(expected), expected);
  }
  const operations = readFileSync(path.join(ROOT, "docs/operations.md"), "utf8");
  for (const name of names) t.ok(operations.includes(`\`${name}\``), `docs/operations.md names ${name}`);
});
