// Changing the policy of a running `mtlsd run`: on a config file change or SIGHUP, validated first, bad ones kept out.
import { EventEmitter } from "node:events";
import { mkdir, symlink, writeFile } from "node:fs/promises";
import path from "node:path";
import t from "tap";
import { stringify } from "yaml";
import { loadConfigFile } from "../src/config/index.ts";
import { Sidecar } from "../src/sidecar.ts";
import { startApp } from "./helpers/app.ts";
import { curlRequest } from "./helpers/clients.ts";
import { createTestPki, type IdentityFiles, identityConfig } from "./helpers/pki.ts";
import { type SidecarProcess, spawnSidecar } from "./helpers/process.ts";
import { captureLogs, waitForLog } from "./helpers/sidecar.ts";

const pki = await createTestPki();
t.teardown(() => pki.cleanup());
const app = await startApp();
t.teardown(() => app.stop());
const orders = await pki.identity("orders");
const frontend = await pki.identity("frontend");
const reporting = await pki.identity("reporting");

type Rule = Record<string, unknown>;
const FRONTEND_RULE: Rule = { name: "frontend", action: "allow", from: [frontend.spiffeId] };
const REPORTING_RULE: Rule = { name: "reporting", action: "allow", from: [reporting.spiffeId] };

function configText(rules: Rule[], inbound: Record<string, unknown> = {}, overrides: Rule[] = []): string {
  return stringify({
    identity: identityConfig(pki, orders),
    inbound: { listen: "127.0.0.1:0", app: app.url, policy: { rules, overrides }, ...inbound },
    // Tests run in parallel: the admin listener's default port would collide.
    admin: { listen: "127.0.0.1:0" },
  });
}

type Line = Record<string, unknown>;

/** Waits (bounded) for a log line after index `from` that matches. */
async function waitForLine(
  running: SidecarProcess,
  from: number,
  match: (line: Line) => boolean,
): Promise<Line> {
  const deadline = Date.now() + 8000;
  for (;;) {
    const found = running.logs.slice(from).find(match);
    if (found) return found;
    if (Date.now() > deadline)
      throw new Error(`no matching log line; got: ${JSON.stringify(running.logs.slice(from))}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

const isReload = (line: Line) => typeof line.msg === "string" && line.msg.startsWith("config reload");

async function status(running: SidecarProcess, who: IdentityFiles): Promise<number | undefined> {
  const port = running.listeners.inbound!.split(":").at(-1);
  const result = await curlRequest(`https://localhost:${port}/v1/orders`, {
    cacert: pki.bundlePath,
    cert: who.certPath,
    key: who.keyPath,
  });
  return result.response?.status;
}

/** The subtest handed to a `t.test` callback. */
type TestContext = Parameters<Parameters<typeof t.test>[0]>[0];

async function startWith(t: TestContext, file: string): Promise<SidecarProcess> {
  const running = await spawnSidecar(file);
  t.teardown(() => running.stop("SIGKILL"));
  return running;
}

t.test("a policy changed in the config file applies without a restart", async (t) => {
  const file = path.join(pki.dir, "watched.yaml");
  await writeFile(file, configText([FRONTEND_RULE]));
  const running = await startWith(t, file);
  t.equal(await status(running, reporting), 403, "reporting is denied at first");

  const before = running.logs.length;
  await writeFile(file, configText([FRONTEND_RULE, REPORTING_RULE]));
  const line = await waitForLine(running, before, isReload);
  t.match(line, {
    level: "info",
    msg: "config reloaded",
    trigger: "watch",
    changed: ["inbound.policy.rules"],
    rules: 2,
  });
  t.equal(await status(running, reporting), 200, "reporting is allowed now");
  t.equal(await status(running, frontend), 200, "frontend still is");
});

t.test("a broken policy is refused: the running policy stays, and the log says why", async (t) => {
  const file = path.join(pki.dir, "broken.yaml");
  await writeFile(file, configText([FRONTEND_RULE]));
  const running = await startWith(t, file);

  const before = running.logs.length;
  const broken = configText([FRONTEND_RULE, { ...REPORTING_RULE, from: ["spiffe://Example.org/ns/x"] }]);
  await writeFile(file, broken);
  const line = await waitForLine(running, before, isReload);
  t.match(line, {
    level: "warn",
    msg: "config reload refused; keeping the running config",
    trigger: "watch",
    error: /inbound\.policy\.rules\[1\]\.from\[0\] \(line \d+\): expected a SPIFFE ID/,
  });
  t.equal(await status(running, frontend), 200, "the old policy still serves frontend");
  t.equal(await status(running, reporting), 403, "and still denies reporting");
  t.equal(running.child.exitCode, null, "the sidecar keeps running");

  // Another file changing in the same directory (a rotated certificate, say) does not repeat the complaint.
  await writeFile(path.join(pki.dir, "unrelated.txt"), "x");
  await new Promise((resolve) => setTimeout(resolve, 600));
  t.equal(running.logs.slice(before).filter(isReload).length, 1, "the bad file was reported once");
});

t.test("an override expiring too far ahead is refused on reload, naming the field", async (t) => {
  const file = path.join(pki.dir, "override.yaml");
  await writeFile(file, configText([FRONTEND_RULE]));
  const running = await startWith(t, file);

  const before = running.logs.length;
  const tooFar = {
    from: [reporting.spiffeId],
    reason: "INC-9",
    approvedBy: "mallory@example.org",
    expires: new Date(Date.now() + 3 * 86_400_000).toISOString(),
  };
  await writeFile(file, configText([FRONTEND_RULE], {}, [tooFar]));
  const line = await waitForLine(running, before, isReload);
  t.match(line, {
    level: "warn",
    error: /inbound\.policy\.overrides\[0\]\.expires \(line \d+\): expected a time at most 24h from now/,
  });
  t.equal(await status(running, reporting), 403, "the override never applied");
});

t.test("SIGHUP reloads the policy when no file event announces the change", async (t) => {
  // A config reached through a symlink into another directory (as a mounted ConfigMap is): editing the target
  // raises no event in the watched directory, so only the signal picks the change up.
  const realDir = path.join(pki.dir, "real");
  const linkDir = path.join(pki.dir, "link");
  await mkdir(realDir, { recursive: true });
  await mkdir(linkDir, { recursive: true });
  const real = path.join(realDir, "mtlsd.yaml");
  const link = path.join(linkDir, "mtlsd.yaml");
  await writeFile(real, configText([FRONTEND_RULE]));
  await symlink(real, link);
  const running = await startWith(t, link);
  t.equal(await status(running, reporting), 403);

  await writeFile(real, configText([FRONTEND_RULE, REPORTING_RULE]));
  await new Promise((resolve) => setTimeout(resolve, 500));
  t.notOk(running.logs.some(isReload), "no reload without the signal");
  const before = running.logs.length;
  running.child.kill("SIGHUP");
  const line = await waitForLine(running, before, isReload);
  t.match(line, { msg: "config reloaded", trigger: "signal", changed: ["inbound.policy.rules"] });
  t.equal(await status(running, reporting), 200);
  t.equal(running.child.exitCode, null, "SIGHUP does not stop the process");
});

t.test("SIGHUP with an unchanged file confirms the running policy", async (t) => {
  const file = path.join(pki.dir, "unchanged.yaml");
  await writeFile(file, configText([FRONTEND_RULE]));
  const running = await startWith(t, file);
  const before = running.logs.length;
  running.child.kill("SIGHUP");
  const line = await waitForLine(running, before, isReload);
  t.match(line, { level: "info", msg: "config reloaded; unchanged", trigger: "signal", changed: [] });
});

t.test(
  "a changed listen address is named in one warn line; the policy beside it still applies",
  async (t) => {
    const file = path.join(pki.dir, "restart.yaml");
    await writeFile(file, configText([FRONTEND_RULE]));
    const running = await startWith(t, file);

    const before = running.logs.length;
    await writeFile(file, configText([FRONTEND_RULE, REPORTING_RULE], { listen: "127.0.0.1:1" }));
    const line = await waitForLine(running, before, isReload);
    t.match(line, {
      level: "warn",
      msg: "config reloaded; some changes need a restart and keep their running value",
      changed: ["inbound.policy.rules"],
      restart_required: ["inbound.listen"],
    });
    t.equal(await status(running, reporting), 200, "the policy part applied, on the port it had");
  },
);

t.test("one SIGHUP reloads both the credentials and the policy", async (t) => {
  // Config and credentials live in a directory the sidecar does not watch (the config is reached through a
  // symlink, the credential watch is off and its poll an hour away), so only the signal can pick them up.
  const realDir = path.join(pki.dir, "both-real");
  const linkDir = path.join(pki.dir, "both-link");
  await mkdir(realDir, { recursive: true });
  await mkdir(linkDir, { recursive: true });
  const cert = path.join(realDir, "tls.crt");
  const key = path.join(realDir, "tls.key");
  await writeFile(cert, orders.chainPem);
  await writeFile(key, orders.keyPem);
  const text = (rules: Rule[]) =>
    stringify({
      identity: {
        cert,
        key,
        trustBundle: pki.bundlePath,
        trustDomain: pki.trustDomain,
        reload: { watch: false, interval: "1h" },
      },
      inbound: { listen: "127.0.0.1:0", app: app.url, policy: { rules } },
      admin: { listen: "127.0.0.1:0" },
    });
  const real = path.join(realDir, "mtlsd.yaml");
  const link = path.join(linkDir, "mtlsd.yaml");
  await writeFile(real, text([FRONTEND_RULE]));
  await symlink(real, link);
  const running = await startWith(t, link);

  const renewed = await pki.identity("orders-renewed", { spiffeId: orders.spiffeId });
  await writeFile(cert, renewed.chainPem);
  await writeFile(key, renewed.keyPem);
  await writeFile(real, text([FRONTEND_RULE, REPORTING_RULE]));
  const before = running.logs.length;
  running.child.kill("SIGHUP");
  const credentials = await waitForLine(running, before, (line) => line.msg === "credentials reloaded");
  const policy = await waitForLine(running, before, isReload);
  t.match(credentials, { trigger: "signal", new_serial: renewed.issued.serialHex.toLowerCase() });
  t.match(policy, { msg: "config reloaded", trigger: "signal", changed: ["inbound.policy.rules"], rules: 2 });
  t.equal(
    running.logs.slice(before).filter((line) => line.msg === "reloading credentials and config").length,
    1,
    "one signal, one announcement",
  );
  t.equal(await status(running, reporting), 200, "the new policy serves");
});

t.test("a SIGHUP that arrives while the sidecar starts is served once it runs", async (t) => {
  const file = path.join(pki.dir, "early-sighup.yaml");
  await writeFile(file, configText([FRONTEND_RULE]));
  const signals = new EventEmitter();
  const { lines, stream } = captureLogs();
  const starting = Sidecar.start(loadConfigFile(file), { signals, logStream: stream });
  // Still reading and validating the credentials: no listener would mean the process's default action, exit.
  signals.emit("SIGHUP");
  const sidecar = await starting;
  t.teardown(() => sidecar.stop());
  const announced = await waitForLog(lines, (line) => line.msg === "reloading credentials and config");
  const started = lines.findIndex((line) => line.msg === "mtlsd started");
  t.ok(started >= 0 && lines.indexOf(announced) > started, "served after startup, not lost");
  await waitForLog(lines, (line) => line.msg === "config reloaded; unchanged" && line.trigger === "signal");
  await waitForLog(lines, (line) => line.msg === "credential files unchanged; nothing to reload");
  t.equal(signals.listenerCount("SIGHUP"), 1, "only the running sidecar listens now");
  await sidecar.stop();
  t.equal(signals.listenerCount("SIGHUP"), 0, "and stopping removes it");
});

t.test("a sidecar that fails to start leaves no SIGHUP listener behind", async (t) => {
  const file = path.join(pki.dir, "missing-cert.yaml");
  await writeFile(
    file,
    stringify({
      identity: {
        cert: path.join(pki.dir, "no-such.crt"),
        key: orders.keyPath,
        trustBundle: pki.bundlePath,
        trustDomain: pki.trustDomain,
      },
      inbound: { listen: "127.0.0.1:0", app: app.url, policy: { rules: [FRONTEND_RULE] } },
      admin: { listen: "127.0.0.1:0" },
    }),
  );
  const signals = new EventEmitter();
  await t.rejects(Sidecar.start(loadConfigFile(file), { signals, logStream: captureLogs().stream }), {
    code: "CREDENTIAL_UNREADABLE",
  });
  t.equal(signals.listenerCount("SIGHUP"), 0);
});
