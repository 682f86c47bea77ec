// Every mtlsd config shipped under deploy/ (files and Kubernetes ConfigMaps) is valid and keeps the app and
// the outbound proxy off the network.
import { readdirSync } from "node:fs";
import path from "node:path";
import t from "tap";
import { parse as parseYaml } from "yaml";
import { parseHostPort } from "../src/config/index.ts";
import { Policy } from "../src/policy/index.ts";
import {
  isRecord,
  readRepoFile,
  repoPath,
  validateShippedConfig,
  type Yaml,
  yamlDocuments,
} from "./helpers/deploy.ts";

interface Found {
  where: string;
  text: string;
  /** A Kubernetes ConfigMap, where admin must listen beyond loopback for the kubelet's probes. */
  inPod: boolean;
}

/** Every YAML file under deploy/, recursively. */
function yamlFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) return entry.name === "certs" ? [] : yamlFiles(full);
    return /\.ya?ml$/.test(entry.name) ? [full] : [];
  });
}

/** mtlsd configs found by their content: a top-level `identity`, or a ConfigMap value that has one. */
function shippedConfigs(): Found[] {
  const found: Found[] = [];
  for (const file of yamlFiles(repoPath("deploy"))) {
    const where = path.relative(repoPath(), file);
    const text = readRepoFile(where);
    const documents = yamlDocuments(text, where, file.includes("/kubernetes/") ? "1.1" : "1.2");
    for (const document of documents) {
      if (isRecord(document.identity)) found.push({ where, text, inPod: false });
      if (document.kind !== "ConfigMap" || !isRecord(document.data)) continue;
      for (const [key, value] of Object.entries(document.data)) {
        if (typeof value === "string" && isRecord((parseYaml(value) as Yaml | null)?.identity)) {
          found.push({
            where: `${where}: ConfigMap ${(document.metadata as Yaml).name} ${key}`,
            text: value,
            inPod: true,
          });
        }
      }
    }
  }
  return found;
}

const configs = shippedConfigs();

t.test("deploy/ ships an mtlsd config for systemd, for compose and for each Kubernetes pod", async (t) => {
  const places = configs.map((each) => each.where);
  t.ok(
    places.some((where) => where.startsWith("deploy/systemd/")),
    "systemd",
  );
  t.equal(
    places.filter((where) => where.startsWith("deploy/compose/")).length,
    2,
    "compose: orders and frontend",
  );
  t.equal(configs.filter((each) => each.inPod).length, 2, "Kubernetes: orders and frontend");
});

for (const { where, text, inPod } of configs) {
  t.test(`${where} validates against the config schema`, async (t) => {
    const { loaded, raw } = validateShippedConfig(text, where);
    if (loaded.config.inbound) {
      t.doesNotThrow(() => new Policy(loaded.config.inbound!.policy), "its policy compiles");
      t.equal(new URL(loaded.config.inbound.app).hostname, "127.0.0.1", "forwards to the app on loopback");
    }
    if (loaded.config.outbound) {
      t.equal(
        parseHostPort(loaded.config.outbound.listen)?.host,
        "127.0.0.1",
        "the outbound proxy is for the local app only",
      );
    }
    const admin = isRecord(raw.admin) ? parseHostPort(String(raw.admin.listen)) : undefined;
    t.ok(admin, "sets admin.listen, for health checks and metrics");
    t.equal(
      admin?.host,
      inPod ? "0.0.0.0" : "127.0.0.1",
      inPod ? "reachable by the kubelet" : "admin on loopback",
    );
    t.ok(
      isRecord(raw.limits) && raw.limits.drainTimeout,
      "sets the drain budget its supervisor's timeout is sized for",
    );
    t.ok(isRecord(raw.identity) && isRecord(raw.identity.reload), "reloads rotated credentials");
  });
}
