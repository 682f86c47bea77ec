// deploy/kubernetes: orders and frontend with mtlsd as a native sidecar, wired so the app is reached only through it.
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import path from "node:path";
import t from "tap";
import { parseDuration, parseHostPort } from "../src/config/index.ts";
import {
  isRecord,
  readRepoFile,
  repoPath,
  validateShippedConfig,
  type Yaml,
  yamlDocuments,
} from "./helpers/deploy.ts";
import { podContainers, type Rendered, renderKustomization } from "./helpers/kustomize.ts";

const VARIANTS = {
  "csi-driver-spiffe": repoPath("deploy/kubernetes/csi-driver-spiffe"),
  secret: repoPath("deploy/kubernetes/secret"),
};
const TRUST_DOMAIN = "example.org";
const NAMESPACE = "shop";
const CSI_DRIVER = "spiffe.csi.cert-manager.io";

const rendered = Object.fromEntries(
  Object.entries(VARIANTS).map(([name, dir]) => [name, renderKustomization(dir)]),
) as Record<keyof typeof VARIANTS, Rendered>;

/** The Dockerfile's USER, which the pods' runAsUser must repeat (and runAsNonRoot verifies). */
const imageUser = /^USER\s+(\d+):(\d+)\s*$/m.exec(readRepoFile("Dockerfile"));

function find(resources: Yaml[], kind: string, name: string): Yaml {
  const found = resources.find(
    (resource) => resource.kind === kind && (resource.metadata as Yaml | undefined)?.name === name,
  );
  if (!found) throw new Error(`no ${kind} ${name}`);
  return found;
}

interface Workload {
  name: string;
  deployment: Yaml;
  pod: Yaml;
  mtlsd: Yaml;
  app: Yaml;
  config: ReturnType<typeof validateShippedConfig>;
  spiffeId: string;
}

/** A Deployment with its pod spec, its mtlsd sidecar, its app container and the mtlsd config it mounts. */
function workload(resources: Yaml[], name: string): Workload {
  const deployment = find(resources, "Deployment", name);
  const pod = ((deployment.spec as Yaml).template as Yaml).spec as Yaml;
  const mtlsd = ((pod.initContainers ?? []) as Yaml[]).find((container) => container.name === "mtlsd");
  if (!mtlsd) throw new Error(`${name}: no mtlsd init container`);
  const app = (pod.containers as Yaml[])[0]!;
  const args = mtlsd.args as string[];
  const configPath = args[args.indexOf("-c") + 1]!;
  const mount = (mtlsd.volumeMounts as Yaml[]).find((each) => each.mountPath === path.dirname(configPath));
  if (!mount) throw new Error(`${name}: nothing mounted at ${path.dirname(configPath)}`);
  const volume = (pod.volumes as Yaml[]).find((each) => each.name === mount.name)!;
  const configMap = find(resources, "ConfigMap", (volume.configMap as Yaml).name as string);
  const text = (configMap.data as Record<string, string>)[path.basename(configPath)];
  if (!text) throw new Error(`${name}: ConfigMap has no ${path.basename(configPath)}`);
  const config = validateShippedConfig(text, `ConfigMap ${NAMESPACE}/${(configMap.metadata as Yaml).name}`);
  const spiffeId = `spiffe://${TRUST_DOMAIN}/ns/${NAMESPACE}/sa/${pod.serviceAccountName}`;
  return { name, deployment, pod, mtlsd, app, config, spiffeId };
}

function containerPort(container: Yaml, portName: string): number {
  const port = ((container.ports ?? []) as Yaml[]).find((each) => each.name === portName);
  if (!port) throw new Error(`${container.name}: no port named ${portName}`);
  return port.containerPort as number;
}

t.test("each kustomization renders from files that exist", async (t) => {
  for (const [variant, { files, resources }] of Object.entries(rendered)) {
    for (const file of files) t.ok(existsSync(file), `${variant}: ${path.relative(repoPath(), file)} exists`);
    t.ok(resources.length > 0, `${variant} renders resources`);
  }
  t.ok(
    rendered.secret.files.some((file) => file.includes("csi-driver-spiffe")),
    "the Secret variant builds on the CSI one",
  );
});

t.test("the rendering matches kubectl kustomize where kubectl is installed", async (t) => {
  const kubectl = ["/usr/bin/kubectl", "/usr/local/bin/kubectl"].find((candidate) => existsSync(candidate));
  if (!kubectl) {
    t.comment("kubectl is not installed: the rendering above was checked by test/helpers/kustomize.ts alone");
    t.pass("nothing to compare against");
    return;
  }
  for (const [variant, dir] of Object.entries(VARIANTS)) {
    const output = await new Promise<string>((resolve, reject) =>
      execFile(kubectl, ["kustomize", dir], { timeout: 30_000 }, (error, stdout, stderr) =>
        error ? reject(new Error(`kubectl kustomize ${dir}: ${stderr}`)) : resolve(stdout),
      ),
    );
    const byId = (resources: Yaml[]) =>
      Object.fromEntries(
        resources.map((resource) => [`${resource.kind}/${(resource.metadata as Yaml).name}`, resource]),
      );
    t.same(
      byId(yamlDocuments(output, "kubectl output", "1.1")),
      byId(rendered[variant as keyof typeof VARIANTS].resources),
      variant,
    );
  }
});

t.test("every resource names its API, kind, name and namespace", async (t) => {
  for (const [variant, { resources }] of Object.entries(rendered)) {
    for (const resource of resources) {
      const metadata = resource.metadata as Yaml | undefined;
      const id = `${variant}: ${resource.kind}/${metadata?.name}`;
      t.match(resource.apiVersion, /^([a-z0-9.-]+\/)?v\d+$/, `${id} has an apiVersion`);
      t.type(resource.kind, "string", `${id} has a kind`);
      t.type(metadata?.name, "string", `${id} has a name`);
      if (resource.kind !== "Namespace") t.equal(metadata?.namespace, NAMESPACE, `${id} is in ${NAMESPACE}`);
    }
    const deployments = resources.filter((resource) => resource.kind === "Deployment");
    for (const deployment of deployments) {
      const spec = deployment.spec as Yaml;
      const template = spec.template as Yaml;
      t.same(
        (spec.selector as Yaml).matchLabels,
        Object.fromEntries(
          Object.entries((template.metadata as Yaml).labels as Yaml).filter(([key]) =>
            Object.hasOwn((spec.selector as Yaml).matchLabels as Yaml, key),
          ),
        ),
        `${variant}: Deployment ${(deployment.metadata as Yaml).name}'s selector matches its pod labels`,
      );
    }
  }
});

t.test("mtlsd runs as a native sidecar: an init container with restartPolicy Always", async (t) => {
  for (const [variant, { resources }] of Object.entries(rendered)) {
    for (const name of ["orders", "frontend"]) {
      const { mtlsd, pod } = workload(resources, name);
      t.equal(mtlsd.restartPolicy, "Always", `${variant}/${name}`);
      t.equal(
        mtlsd.image,
        "registry.example.org/mtlsd:0.1.0",
        `${variant}/${name}: the image set by kustomize`,
      );
      t.same((mtlsd.args as string[]).slice(0, 1), ["run"], `${variant}/${name}: runs mtlsd run`);
      t.notOk(
        (pod.containers as Yaml[]).some((container) => container.name === "mtlsd"),
        `${variant}/${name}: not also a regular container`,
      );
    }
  }
});

t.test("the mtlsd configs in the ConfigMaps validate against the config schema", async (t) => {
  for (const name of ["orders", "frontend"]) {
    const { config } = workload(rendered["csi-driver-spiffe"].resources, name);
    t.equal(config.loaded.config.identity.trustDomain, TRUST_DOMAIN, name);
  }
});

t.test("probes ask /readyz and /healthz on the admin port the config listens on", async (t) => {
  for (const name of ["orders", "frontend"]) {
    const { mtlsd, config } = workload(rendered["csi-driver-spiffe"].resources, name);
    const admin = parseHostPort(String((config.raw.admin as Yaml).listen))!;
    // The kubelet probes from the node, so the admin listener cannot stay on the pod's loopback.
    t.equal(admin.host, "0.0.0.0", `${name}: admin listens where the kubelet can reach it`);
    t.equal(containerPort(mtlsd, "admin"), admin.port, `${name}: the admin containerPort is admin.listen's`);
    const probe = (kind: string) => ((mtlsd[kind] as Yaml).httpGet as Yaml) ?? {};
    t.same(probe("readinessProbe"), { path: "/readyz", port: "admin" }, `${name}: readiness`);
    t.same(probe("livenessProbe"), { path: "/healthz", port: "admin" }, `${name}: liveness`);
    t.same(probe("startupProbe"), { path: "/healthz", port: "admin" }, `${name}: the app waits for mtlsd`);
  }
});

t.test("every container runs locked down: non-root, read-only root, no capabilities", async (t) => {
  t.ok(imageUser, "the Dockerfile sets a numeric USER");
  for (const [variant, { resources }] of Object.entries(rendered)) {
    for (const name of ["orders", "frontend"]) {
      const { pod, mtlsd } = workload(resources, name);
      t.equal((pod.securityContext as Yaml).runAsNonRoot, true, `${variant}/${name}: runAsNonRoot`);
      t.same(((pod.securityContext as Yaml).seccompProfile as Yaml).type, "RuntimeDefault");
      const context = mtlsd.securityContext as Yaml;
      t.equal(context.runAsUser, Number(imageUser?.[1]), `${variant}/${name}: mtlsd as the image's user`);
      t.equal(context.runAsGroup, Number(imageUser?.[2]), `${variant}/${name}: and group`);
      for (const container of podContainers([find(resources, "Deployment", name)])) {
        const security = container.securityContext as Yaml;
        const id = `${variant}/${name}/${container.name}`;
        t.equal(security.readOnlyRootFilesystem, true, `${id}: read-only root file system`);
        t.equal(security.allowPrivilegeEscalation, false, `${id}: no privilege escalation`);
        t.same((security.capabilities as Yaml).drop, ["ALL"], `${id}: every capability dropped`);
        t.notOk((security.capabilities as Yaml).add, `${id}: none added`);
        t.ok((container.resources as Yaml).requests, `${id}: requests resources`);
        t.ok(((container.resources as Yaml).limits as Yaml).memory, `${id}: has a memory limit`);
      }
    }
  }
});

t.test("the credentials are mounted read-only where the config reads them", async (t) => {
  for (const [variant, { resources }] of Object.entries(rendered)) {
    for (const name of ["orders", "frontend"]) {
      const { pod, mtlsd, config } = workload(resources, name);
      const identity = config.loaded.config.identity;
      const dirs = new Set(
        [identity.cert!, identity.key!, identity.trustBundle!].map((file) => path.dirname(file)),
      );
      t.equal(dirs.size, 1, `${variant}/${name}: one directory holds the SVID and the bundle`);
      const [dir] = dirs;
      const mount = (mtlsd.volumeMounts as Yaml[]).find((each) => each.mountPath === dir);
      t.ok(mount, `${variant}/${name}: a volume is mounted at ${dir}`);
      t.equal(mount?.readOnly, true, `${variant}/${name}: read-only`);
      t.same(
        [identity.cert!, identity.key!, identity.trustBundle!].map((file) => path.basename(file)),
        ["tls.crt", "tls.key", "ca.crt"],
        `${variant}/${name}: the file names cert-manager writes`,
      );
      const volume = (pod.volumes as Yaml[]).find((each) => each.name === mount?.name)!;
      t.notOk(
        (pod.containers as Yaml[]).some((container) =>
          ((container.volumeMounts ?? []) as Yaml[]).some((each) => each.name === volume.name),
        ),
        `${variant}/${name}: the app cannot read the key`,
      );
      if (variant === "csi-driver-spiffe") {
        const csi = volume.csi as Yaml;
        t.equal(csi.driver, CSI_DRIVER, `${name}: csi-driver-spiffe`);
        t.equal(csi.readOnly, true, `${name}: a read-only CSI volume`);
        t.equal(
          (csi.volumeAttributes as Yaml)[`${CSI_DRIVER}/fs-group`],
          String((mtlsd.securityContext as Yaml).runAsGroup),
          `${name}: files group-owned by mtlsd's group`,
        );
      } else {
        const secret = volume.secret as Yaml;
        t.notOk(volume.csi, `${name}: no CSI volume left`);
        t.equal(secret.defaultMode, 0o440, `${name}: the key is not world-readable`);
        const certificate = find(resources, "Certificate", secret.secretName as string);
        const spec = certificate.spec as Yaml;
        t.equal(spec.secretName, secret.secretName, `${name}: cert-manager writes the mounted Secret`);
        t.same(
          spec.uris,
          [workload(resources, name).spiffeId],
          `${name}: exactly one URI SAN, its SPIFFE ID`,
        );
        t.notOk(spec.dnsNames ?? spec.commonName, `${name}: no other names`);
        t.same(
          [...(spec.usages as string[])].sort(),
          ["client auth", "digital signature", "server auth"],
          `${name}: an X509-SVID's usages`,
        );
        t.equal((spec.privateKey as Yaml).encoding, "PKCS8", `${name}: a key mtlsd reads`);
        t.ok(
          (parseDuration(String(spec.renewBefore)) ?? 0) < (parseDuration(String(spec.duration)) ?? 0),
          `${name}: renewed before it expires`,
        );
      }
    }
  }
});

t.test("the SPIFFE IDs are the ones csi-driver-spiffe gives each service account", async (t) => {
  const { resources } = rendered["csi-driver-spiffe"];
  const orders = workload(resources, "orders");
  const frontend = workload(resources, "frontend");
  for (const each of [orders, frontend]) {
    t.ok(
      find(resources, "ServiceAccount", each.pod.serviceAccountName as string),
      `${each.name}: its account exists`,
    );
  }
  const rule = orders.config.loaded.config.inbound!.policy.rules.find((each) => each.action === "allow")!;
  t.ok(rule.from?.includes(frontend.spiffeId), "orders' policy allows frontend's SPIFFE ID");
  const upstream = frontend.config.loaded.config.outbound!.upstreams.orders!;
  t.equal(upstream.identity, orders.spiffeId, "frontend expects orders' SPIFFE ID");
  const service = find(resources, "Service", "orders");
  const servicePort = ((service.spec as Yaml).ports as Yaml[])[0]!;
  t.equal(
    upstream.address,
    `orders.${NAMESPACE}.svc.cluster.local:${servicePort.port}`,
    "through the Service",
  );
});

t.test("each pod's account may create the CertificateRequests csi-driver-spiffe makes for it", async (t) => {
  const { resources } = rendered["csi-driver-spiffe"];
  for (const name of ["orders", "frontend"]) {
    const account = workload(resources, name).pod.serviceAccountName;
    const binding = resources.find(
      (resource) =>
        resource.kind === "RoleBinding" &&
        ((resource.subjects ?? []) as Yaml[]).some((subject) => subject.name === account),
    );
    if (!binding) throw new Error(`${name}: no RoleBinding for service account ${account}`);
    const role = find(resources, "Role", (binding.roleRef as Yaml).name as string);
    t.same(role.rules, [
      { apiGroups: ["cert-manager.io"], resources: ["certificaterequests"], verbs: ["create"] },
    ]);
  }
});

t.test("peers reach orders only through mtlsd's inbound port", async (t) => {
  const { resources } = rendered["csi-driver-spiffe"];
  const orders = workload(resources, "orders");
  const inbound = orders.config.loaded.config.inbound!;
  const listen = parseHostPort(inbound.listen)!;
  t.equal(containerPort(orders.mtlsd, "mtls"), listen.port, "the mtls containerPort is inbound.listen's");
  t.equal(new URL(inbound.app).hostname, "127.0.0.1", "mtlsd forwards to the app on loopback");
  t.match((orders.app.args as string[]).join(" "), "127.0.0.1:8080", "and the app listens only there");
  t.notOk(orders.app.ports, "the app exposes no port");
  const service = find(resources, "Service", "orders");
  t.same(
    ((service.spec as Yaml).ports as Yaml[]).map((port) => port.targetPort),
    ["mtls"],
    "the Service sends only to mtlsd",
  );
  const policy = find(resources, "NetworkPolicy", "orders-only-through-mtlsd");
  const spec = policy.spec as Yaml;
  t.same((spec.podSelector as Yaml).matchLabels, { "app.kubernetes.io/name": "orders" });
  t.ok((spec.policyTypes as string[]).includes("Ingress"), "isolates ingress");
  const rules = spec.ingress as Yaml[];
  const ports = rules.flatMap((rule) => (rule.ports as Yaml[]).map((port) => port.port));
  t.same(ports.sort(), [listen.port, 15000].sort(), "only the mTLS port and the admin port are open");
  for (const rule of rules)
    t.ok(Array.isArray(rule.from) && rule.from.length > 0, "each from a named source");
  const adminRule = rules.find((rule) => (rule.ports as Yaml[]).some((port) => port.port === 15000))!;
  t.same(
    adminRule.from,
    [{ namespaceSelector: { matchLabels: { "kubernetes.io/metadata.name": "monitoring" } } }],
    "admin only from the monitoring namespace (the kubelet's probes come from the node, always allowed)",
  );
});

t.test("frontend takes no traffic but scrapes and sends only to orders' mTLS port and DNS", async (t) => {
  const { resources } = rendered["csi-driver-spiffe"];
  const frontend = workload(resources, "frontend");
  const outbound = frontend.config.loaded.config.outbound!;
  t.equal(parseHostPort(outbound.listen)?.host, "127.0.0.1", "the outbound proxy is for the pod alone");
  t.notOk(frontend.config.loaded.config.inbound, "frontend has no inbound listener");
  const spec = find(resources, "NetworkPolicy", "frontend-only-through-mtlsd").spec as Yaml;
  t.same(spec.policyTypes, ["Ingress", "Egress"]);
  t.same(
    (spec.ingress as Yaml[]).flatMap((rule) => (rule.ports as Yaml[]).map((port) => port.port)),
    [15000],
    "only the admin port takes traffic",
  );
  const egress = spec.egress as Yaml[];
  const toOrders = egress.find((rule) =>
    ((rule.to ?? []) as Yaml[]).some(
      (peer) =>
        isRecord(peer.podSelector) &&
        (peer.podSelector.matchLabels as Yaml)["app.kubernetes.io/name"] === "orders",
    ),
  );
  t.same(toOrders?.ports, [
    { port: parseHostPort(outbound.upstreams.orders!.address!)!.port, protocol: "TCP" },
  ]);
  const otherPorts = egress
    .filter((rule) => rule !== toOrders)
    .flatMap((rule) => (rule.ports as Yaml[]).map((port) => port.port));
  t.same([...new Set(otherPorts)], [53], "and DNS");
});

t.test("the grace period covers the app's preStop sleep and mtlsd's drain", async (t) => {
  for (const name of ["orders", "frontend"]) {
    const { pod, app, config } = workload(rendered["csi-driver-spiffe"].resources, name);
    const drain = parseDuration(String(((config.raw.limits ?? {}) as Yaml).drainTimeout ?? "30s"))!;
    const preStop = ((
      ((app.lifecycle as Yaml | undefined)?.preStop as Yaml | undefined)?.sleep as Yaml | undefined
    )?.seconds ?? 0) as number;
    t.ok(
      (pod.terminationGracePeriodSeconds as number) * 1000 > preStop * 1000 + drain,
      `${name}: ${pod.terminationGracePeriodSeconds}s > ${preStop}s + ${drain / 1000}s`,
    );
  }
});
