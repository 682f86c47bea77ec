// deploy/compose: the two-service demo is well-formed, and its PKI script, configs and apps work end to end
// without Docker (the same processes, on loopback ports instead of container network namespaces).
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { once } from "node:events";
import { existsSync } from "node:fs";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { createInterface } from "node:readline";
import t from "tap";
import { stringify } from "yaml";
import { parseDuration } from "../src/config/index.ts";
import { loadCredentials } from "../src/credentials/index.ts";
import {
  readRepoFile,
  repoPath,
  startMtlsd,
  validateShippedConfig,
  type Yaml,
  yamlDocuments,
} from "./helpers/deploy.ts";
import { CLI } from "./helpers/process.ts";

const COMPOSE_DIR = repoPath("deploy/compose");
const compose = yamlDocuments(readRepoFile("deploy/compose/compose.yaml"), "compose.yaml")[0]!;
const services = compose.services as Record<string, Yaml>;
const MAKE_CERTS = path.join(COMPOSE_DIR, "make-certs.sh");
const ORDERS_ID = "spiffe://example.org/ns/shop/sa/orders";
const FRONTEND_ID = "spiffe://example.org/ns/shop/sa/frontend";
const BOUND_MS = 15_000;

const dir = await mkdtemp(path.join(os.tmpdir(), "mtlsd-compose-"));
t.teardown(() => rm(dir, { recursive: true, force: true }));

/** Bind mounts of a service: [host path resolved against the compose file, container path]. */
function binds(service: Yaml): [string, string][] {
  return ((service.volumes ?? []) as string[]).map((volume) => {
    const [source, target] = volume.split(":");
    return [path.resolve(COMPOSE_DIR, source!), target!];
  });
}

/** The mtlsd config a sidecar service mounts, as shipped. */
function sidecarConfig(name: string): { file: string; text: string } {
  const bind = binds(services[name]!).find(([, target]) => target === "/etc/mtlsd/mtlsd.yaml");
  if (!bind) throw new Error(`${name} mounts no /etc/mtlsd/mtlsd.yaml`);
  return { file: bind[0], text: readRepoFile(path.relative(repoPath(), bind[0])) };
}

function sh(
  args: string[],
  env: NodeJS.ProcessEnv = {},
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    execFile(
      "sh",
      args,
      { env: { PATH: process.env.PATH, ...env }, timeout: 60_000 },
      (error, stdout, stderr) => {
        if (error && typeof error.code === "string") return reject(error);
        resolve({ code: error ? ((error.code as number | undefined) ?? null) : 0, stdout, stderr });
      },
    );
  });
}

t.test("compose.yaml names the demo's services and every file they mount or build from exists", async (t) => {
  t.same(Object.keys(services).sort(), ["frontend", "frontend-mtlsd", "orders", "orders-mtlsd", "pki"]);
  for (const [name, service] of Object.entries(services)) {
    for (const [source] of binds(service)) {
      if (source.startsWith(path.join(COMPOSE_DIR, "certs"))) continue; // made by the pki service
      t.ok(existsSync(source), `${name}: ${path.relative(COMPOSE_DIR, source)} exists`);
    }
    const build = service.build as Yaml | undefined;
    if (build?.context) {
      const context = path.resolve(COMPOSE_DIR, build.context as string);
      t.ok(existsSync(path.join(context, build.dockerfile as string)), `${name}: its Dockerfile exists`);
    }
  }
  t.match(readRepoFile("deploy/compose/.gitignore"), /^certs\/$/m, "the generated PKI is never committed");
});

t.test("each mtlsd shares its app's network namespace, and the apps listen on loopback only", async (t) => {
  for (const app of ["orders", "frontend"]) {
    const sidecar = services[`${app}-mtlsd`]!;
    t.equal(sidecar.network_mode, `service:${app}`, `${app}-mtlsd joins ${app}'s network namespace`);
    t.equal(sidecar.read_only, true, `${app}-mtlsd runs with a read-only root`);
    t.ok((sidecar.depends_on as Yaml).pki, `${app}-mtlsd waits for the PKI`);
    const grace = parseDuration(String(sidecar.stop_grace_period))!;
    const { raw } = validateShippedConfig(sidecarConfig(`${app}-mtlsd`).text, `${app}.mtlsd.yaml`);
    const drain = parseDuration(String((raw.limits as Yaml).drainTimeout))!;
    t.ok(grace > drain, `${app}-mtlsd: stop_grace_period ${grace}ms outlasts drainTimeout ${drain}ms`);
    const script = readRepoFile("deploy/compose/apps", `${app}.mjs`);
    if (app === "orders") t.match(script, /listen\(port, "127\.0\.0\.1"/, "orders listens on 127.0.0.1 only");
  }
  t.same(services.orders!.ports, ["127.0.0.1:15006:15006"], "only mTLS is published, on the host's loopback");
  t.notOk(services.frontend!.ports, "frontend publishes nothing");
});

t.test("make-certs.sh issues X509-SVIDs that mtlsd loads as each workload's identity", async (t) => {
  const out = path.join(dir, "svids");
  const made = await sh([MAKE_CERTS, out]);
  t.equal(made.code, 0, made.stderr);
  for (const [name, spiffeId] of [
    ["orders", ORDERS_ID],
    ["frontend", FRONTEND_ID],
  ] as const) {
    const credentials = await loadCredentials(
      {
        cert: path.join(out, name, "tls.crt"),
        key: path.join(out, name, "tls.key"),
        trustBundle: path.join(out, name, "ca.crt"),
      },
      { trustDomain: "example.org" },
    );
    t.equal(credentials.spiffeId, spiffeId, `${name}: a valid SVID for ${spiffeId}`);
  }
});

t.test(
  "make-certs.sh keeps what is valid on a second run, and ROTATE=1 re-issues the leaves only",
  async (t) => {
    const out = path.join(dir, "rotation");
    await sh([MAKE_CERTS, out]);
    const read = (file: string) => readFile(path.join(out, file), "utf8");
    const [ca, leaf] = [await read("ca.crt"), await read("orders/tls.crt")];
    const again = await sh([MAKE_CERTS, out]);
    t.equal(again.code, 0, again.stderr);
    t.equal(again.stdout, "", "nothing to do");
    t.equal(await read("orders/tls.crt"), leaf, "the leaf is kept");
    const rotated = await sh([MAKE_CERTS, out], { ROTATE: "1" });
    t.equal(rotated.code, 0, rotated.stderr);
    t.not(await read("orders/tls.crt"), leaf, "ROTATE=1: a new leaf");
    t.equal(await read("ca.crt"), ca, "under the same CA");
  },
);

/** Starts one of the demo's apps as its compose service does, and returns it with its stdout lines. */
async function startDemoApp(
  t: TestContext,
  script: string,
  env: NodeJS.ProcessEnv,
): Promise<{ child: ChildProcess; lines: string[]; first: string }> {
  const child = spawn(process.execPath, [path.join(COMPOSE_DIR, "apps", script)], {
    env: { PATH: process.env.PATH, ...env },
    stdio: ["ignore", "pipe", "inherit"],
  });
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  });
  const lines: string[] = [];
  const first = new Promise<string>((resolve, reject) => {
    createInterface({ input: child.stdout }).on("line", (line) => {
      lines.push(line);
      if (lines.length === 1) resolve(line);
    });
    child.once("exit", (code) => reject(new Error(`${script} exited with ${code} before printing`)));
    setTimeout(() => reject(new Error(`${script} printed nothing within ${BOUND_MS}ms`)), BOUND_MS).unref();
  });
  return { child, lines, first: await first };
}

/** The subtest handed to a `t.test` callback. */
type TestContext = Parameters<Parameters<typeof t.test>[0]>[0];

/** A shipped sidecar config pointed at this test's files and loopback ports instead of the containers'. */
async function localConfig(name: string, certs: string, change: (config: Yaml) => void): Promise<string> {
  const { file, text } = sidecarConfig(name);
  const config = validateShippedConfig(text, file).raw;
  const identity = config.identity as Yaml;
  for (const key of ["cert", "key", "trustBundle"]) {
    identity[key] = path.join(certs, path.basename(identity[key] as string));
  }
  // Each container has a loopback of its own; here both sidecars share the host's, beside parallel tests.
  config.admin = { listen: "127.0.0.1:0" };
  change(config);
  const target = path.join(dir, `${name}.yaml`);
  await writeFile(target, stringify(config));
  return target;
}

t.test("the demo runs end to end: frontend's allowed call reaches orders, the other is denied", async (t) => {
  const certs = path.join(dir, "demo");
  t.equal((await sh([MAKE_CERTS, certs])).code, 0);
  const orders = await startDemoApp(t, "orders.mjs", { PORT: "0" });
  const ordersPort = (JSON.parse(orders.first) as { port: number }).port;

  const ordersConfig = await localConfig("orders-mtlsd", path.join(certs, "orders"), (config) => {
    const inbound = config.inbound as Yaml;
    t.equal(inbound.app, "http://127.0.0.1:8080", "as shipped, orders-mtlsd forwards to 127.0.0.1:8080");
    inbound.listen = "127.0.0.1:0";
    inbound.app = `http://127.0.0.1:${ordersPort}`;
  });
  const ordersSidecar = await startMtlsd(process.execPath, [CLI, "run", "-c", ordersConfig]);
  t.teardown(() => ordersSidecar.stop());

  const frontendConfig = await localConfig("frontend-mtlsd", path.join(certs, "frontend"), (config) => {
    const outbound = config.outbound as Yaml;
    const upstream = (outbound.upstreams as Record<string, Yaml>).orders!;
    t.equal(
      upstream.address,
      "orders:15006",
      "as shipped, frontend-mtlsd calls the orders service's namespace",
    );
    outbound.listen = "127.0.0.1:0";
    upstream.address = ordersSidecar.listeners.inbound;
  });
  const frontendSidecar = await startMtlsd(process.execPath, [CLI, "run", "-c", frontendConfig]);
  t.teardown(() => frontendSidecar.stop());

  const frontend = await startDemoApp(t, "frontend.mjs", {
    ONCE: "1",
    MTLSD_OUTBOUND: `http://${frontendSidecar.listeners.outbound}`,
  });
  const [code] = (await Promise.race([
    once(frontend.child, "exit"),
    new Promise((_, reject) =>
      setTimeout(() => reject(new Error("frontend.mjs did not finish")), BOUND_MS).unref(),
    ),
  ])) as [number | null];
  t.equal(code, 0, "frontend made its round and exited");
  const [allowed, denied] = frontend.lines.map((line) => JSON.parse(line) as Yaml);
  t.equal(allowed?.path, "/v1/orders");
  t.equal(allowed?.status, 200, `allowed: ${JSON.stringify(allowed)}`);
  t.same(
    JSON.parse(String(allowed?.body)),
    { orders: [{ id: 1, item: "coffee" }], caller: FRONTEND_ID },
    "orders saw frontend's SPIFFE ID",
  );
  t.equal(denied?.path, "/v1/refunds");
  t.equal(denied?.status, 403, `denied: ${JSON.stringify(denied)}`);
  t.equal(denied?.reason, "policy_denied");
});
