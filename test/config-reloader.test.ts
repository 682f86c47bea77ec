// The config reloader on its own, with a real file: how it refuses, when it reads, and what it never does twice.
import { mkdir, mkdtemp, rm, symlink, unlink, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import t from "tap";
import { stringify } from "yaml";
import { loadConfigFile } from "../src/config/index.ts";
import { ConfigReloader, compileConfigPolicy, type ReloadPlan } from "../src/config-reload.ts";
import { MtlsdError } from "../src/errors.ts";
import { createLogger } from "../src/telemetry/index.ts";
import { captureLogs, type LogLine, waitForLog } from "./helpers/sidecar.ts";

const dir = await mkdtemp(path.join(os.tmpdir(), "mtlsd-reloader-"));
t.teardown(() => rm(dir, { recursive: true, force: true }));

function text(appTimeout: string, interval = "30s"): string {
  return stringify({
    identity: {
      cert: "c.crt",
      key: "c.key",
      trustBundle: "ca.crt",
      trustDomain: "example.org",
      reload: { interval },
    },
    inbound: { listen: "127.0.0.1:0", appTimeout, policy: { rules: [{ name: "r", action: "allow" }] } },
  });
}

/** The subtest handed to a `t.test` callback. */
type TestContext = Parameters<Parameters<typeof t.test>[0]>[0];

/** A reloader for a fresh file, whose parts are `apply` (the sidecar's job, here a stand-in). */
async function reloader(
  t: TestContext,
  apply: (plan: ReloadPlan) => Promise<void> = async () => {},
): Promise<{ reloader: ConfigReloader; file: string; logs: LogLine[] }> {
  const file = path.join(dir, `${Math.random().toString(36).slice(2)}.yaml`);
  await writeFile(file, text("30s"));
  const running = loadConfigFile(file);
  const { lines, stream } = captureLogs();
  const logger = createLogger({ level: "debug", stream });
  const created = new ConfigReloader({ running, policy: compileConfigPolicy(running), apply, logger });
  t.teardown(() => created.close());
  return { reloader: created, file, logs: lines };
}

t.test("an apply that fails unexpectedly refuses the reload, and the running config stays", async (t) => {
  const { reloader: r, file } = await reloader(t, async () => {
    throw new TypeError("a part broke");
  });
  await writeFile(file, text("5s"));
  t.match(await r.reload("request"), { result: "rejected", error: /a part broke/ });
  t.match(r.status(), { result: "failure", error: { code: "CONFIG_RELOAD_FAILED" } });
  t.equal(r.config.inbound!.appTimeout, 30_000);
});

t.test("an apply that refuses with a reason passes its code on", async (t) => {
  const { reloader: r, file } = await reloader(t, async () => {
    throw new MtlsdError("LISTEN_FAILED", "outbound.upstreams.a.listen: cannot listen: in use");
  });
  await writeFile(file, text("5s"));
  await r.reload("signal");
  t.match(r.status(), { result: "failure", trigger: "signal", error: { code: "LISTEN_FAILED" } });
});

t.test("a config file that is gone is refused as unreadable, and the running config stays", async (t) => {
  const { reloader: r, file } = await reloader(t);
  await unlink(file);
  t.match(await r.reload("signal"), {
    result: "rejected",
    error: /cannot read the config file: no such file/,
  });
  t.match(r.status(), { error: { code: "CONFIG_UNREADABLE" } });
});

t.test("after close, a reload is refused without reading the file", async (t) => {
  const { reloader: r, file } = await reloader(t);
  await writeFile(file, text("5s"));
  r.close();
  t.match(await r.reload("request"), { result: "rejected", error: "the sidecar is stopping" });
  t.equal(r.config.inbound!.appTimeout, 30_000);
});

t.test("reloads run one at a time, in the order they were asked for", async (t) => {
  let running = 0;
  let most = 0;
  const triggers: string[] = [];
  const { reloader: r, file } = await reloader(t, async () => {
    running++;
    most = Math.max(most, running);
    await new Promise((resolve) => setTimeout(resolve, 20));
    running--;
  });
  await writeFile(file, text("5s"));
  const outcomes = await Promise.all([r.reload("watch"), r.reload("signal")]);
  triggers.push(r.status().trigger);
  t.equal(most, 1, "never two at once");
  t.match(outcomes, [
    { result: "applied", changed: ["inbound.appTimeout"] },
    { result: "applied", changed: [] },
  ]);
  t.same(triggers, ["signal"], "the last one asked for is the last one done");
});

t.test("the watch picks up a change to the file", async (t) => {
  const { reloader: r, file, logs } = await reloader(t);
  r.watch({ debounceMs: 20 });
  await writeFile(file, text("5s"));
  await waitForLog(logs, (line) => line.msg === "config reloaded" && line.trigger === "watch");
  t.equal(r.config.inbound!.appTimeout, 5000);
});

t.test("a reload that changes identity.reload.interval re-arms the poll at that pace", async (t) => {
  // Reached through a symlink into another directory, as a mounted ConfigMap is: edits to the target raise no
  // event in the watched directory, so only the poll can find them.
  const real = path.join(dir, `real-${Date.now()}`);
  await mkdir(real);
  const target = path.join(real, "mtlsd.yaml");
  await writeFile(target, text("30s", "1h"));
  const { reloader: r, file, logs } = await reloader(t);
  await unlink(file);
  await symlink(target, file);
  await r.reload("signal");
  r.watch({ debounceMs: 20 });
  await writeFile(target, text("30s", "150ms"));
  t.match(await r.reload("signal"), { changed: ["identity.reload.interval"] });
  await writeFile(target, text("7s", "150ms"));
  await waitForLog(logs, (line) => line.msg === "config reloaded" && line.trigger === "poll", 5000);
  t.equal(r.config.inbound!.appTimeout, 7000);
});

t.test("a deleted file is left for the next event: the poll does not complain", async (t) => {
  const { reloader: r, file, logs } = await reloader(t);
  await writeFile(file, text("30s", "100ms"));
  await r.reload("request");
  r.watch({ debounceMs: 20 });
  const before = logs.length;
  await unlink(file);
  await new Promise((resolve) => setTimeout(resolve, 400));
  t.same(
    logs.slice(before).filter((line) => line.msg.startsWith("config reload")),
    [],
    "nothing logged while the file is missing",
  );
});

t.test("a policy the engine refuses is refused by the reload, naming the field", async (t) => {
  const { reloader: r, file } = await reloader(t);
  await writeFile(
    file,
    stringify({
      identity: { cert: "c.crt", key: "c.key", trustBundle: "ca.crt", trustDomain: "example.org" },
      inbound: { listen: "127.0.0.1:0", policy: { rules: [{ name: "default", action: "allow" }] } },
    }),
  );
  t.match(await r.reload("request"), {
    result: "rejected",
    error: /inbound\.policy\.rules\[0\]\.name.*reserved/,
  });
  t.equal(r.policy?.ruleCount, 1, "the running policy stays");
});

t.test("a config directory that cannot be watched is said in the log; the poll is still armed", async (t) => {
  const seed = path.join(dir, `seed-${Date.now()}.yaml`);
  await writeFile(seed, text("30s"));
  const running = loadConfigFile(seed);
  const { lines, stream } = captureLogs();
  const gone = path.join(dir, "no-such-directory", "mtlsd.yaml");
  const orphan = new ConfigReloader({
    running: { ...running, file: gone },
    policy: compileConfigPolicy(running),
    apply: async () => {},
    logger: createLogger({ level: "debug", stream }),
  });
  t.teardown(() => orphan.close());
  orphan.watch({ debounceMs: 20 });
  t.match(
    lines.find((line) => line.msg.startsWith("cannot watch the config directory")),
    { level: "warn", config: gone, error: /ENOENT|no such file/ },
  );
});
