// Regenerates deploy/prometheus/mtlsd-prometheusrule.yaml from mtlsd-alerts.yaml, so the two cannot drift.
import { readFileSync, writeFileSync } from "node:fs";

export const RULES_FILE = new URL("../deploy/prometheus/mtlsd-alerts.yaml", import.meta.url);
export const PROMETHEUS_RULE_FILE = new URL(
  "../deploy/prometheus/mtlsd-prometheusrule.yaml",
  import.meta.url,
);

const HEADER = `# Generated from mtlsd-alerts.yaml by \`npm run prometheus-rule\`: edit that file, then regenerate this one.
#
# mtlsd's alerting rules as a PrometheusRule for the Prometheus Operator: apply it where your Prometheus looks
# for rules, with the labels its ruleSelector asks for (kube-prometheus-stack: \`release: <release name>\`).
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: mtlsd
  labels:
    app.kubernetes.io/name: mtlsd
    app.kubernetes.io/component: alerting-rules
spec:
`;

/**
 * The PrometheusRule for a rules file: its `groups:` and everything after, verbatim (comments included) and
 * indented under `spec:`. Text, not a YAML round trip, so the rules read the same in both files.
 */
export function prometheusRule(rulesText: string): string {
  const lines = rulesText.split("\n");
  const start = lines.findIndex((line) => line.startsWith("groups:"));
  if (start === -1) throw new Error("the rules file has no top-level `groups:`");
  const body = lines
    .slice(start)
    .map((line) => (line === "" ? line : `  ${line}`))
    .join("\n");
  return HEADER + body;
}

if (import.meta.main) {
  writeFileSync(PROMETHEUS_RULE_FILE, prometheusRule(readFileSync(RULES_FILE, "utf8")));
  process.stdout.write(`wrote ${PROMETHEUS_RULE_FILE.pathname}\n`);
}
