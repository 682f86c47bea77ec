// deploy/systemd: the hardened unit verifies, scores low on exposure, and its sandbox lets mtlsd do its work.
import { execFile } from "node:child_process";
import { chmod, copyFile, mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import t from "tap";
import { stringify } from "yaml";
import { parseDuration } from "../src/config/index.ts";
import { startApp } from "./helpers/app.ts";
import { curlRequest } from "./helpers/clients.ts";
import { readRepoFile, repoPath, startMtlsd, validateShippedConfig } from "./helpers/deploy.ts";
import { createTestPki, identityConfig } from "./helpers/pki.ts";
import { CLI } from "./helpers/process.ts";

const UNIT_PATH = repoPath("deploy/systemd/mtlsd.service");
const unitText = readRepoFile("deploy/systemd/mtlsd.service");
const EXEC = "/usr/local/bin/mtlsd";
/** Exit code for usage and config errors (DESIGN.md), which the unit must not restart on. */
const EXIT_USAGE = 2;

const dir = await mkdtemp(path.join(os.tmpdir(), "mtlsd-systemd-"));
t.teardown(() => rm(dir, { recursive: true, force: true }));

interface Finished {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs a command to completion (bounded); never rejects on a non-zero exit. */
function run(command: string, args: string[], timeoutMs = 30_000): Promise<Finished> {
  return new Promise((resolve, reject) => {
    execFile(command, args, { timeout: timeoutMs, maxBuffer: 16 * 1024 * 1024 }, (error, stdout, stderr) => {
      if (error && typeof error.code === "string") return reject(error);
      resolve({ code: error ? ((error.code as number | undefined) ?? null) : 0, stdout, stderr });
    });
  });
}

/** The unit's settings: "Section.Key" → every value given (systemd keys may repeat). */
function unitSettings(text: string): Map<string, string[]> {
  const settings = new Map<string, string[]>();
  let section = "";
  for (const line of text.split("\n")) {
    const trimmed = line.trim();
    if (trimmed === "" || trimmed.startsWith("#") || trimmed.startsWith(";")) continue;
    const header = /^\[(\w+)\]$/.exec(trimmed);
    if (header) {
      section = header[1]!;
      continue;
    }
    const equals = trimmed.indexOf("=");
    const key = `${section}.${trimmed.slice(0, equals)}`;
    settings.set(key, [...(settings.get(key) ?? []), trimmed.slice(equals + 1)]);
  }
  return settings;
}
const settings = unitSettings(unitText);
const setting = (key: string) => settings.get(`Service.${key}`)?.at(-1);

/** systemd's own time spans in the unit ("45s", "1min 30s") in milliseconds. */
function timespan(value: string): number {
  return parseDuration(value.replaceAll(/\s+/g, "").replace("min", "m")) ?? Number.NaN;
}

/** A copy of the unit whose ExecStart names an executable that exists, so verify checks everything else. */
async function verifiableUnit(): Promise<string> {
  const bin = path.join(dir, "bin", "mtlsd");
  await mkdir(path.dirname(bin), { recursive: true });
  await writeFile(bin, `#!/bin/sh\nexec "${process.execPath}" "${CLI}" "$@"\n`);
  await chmod(bin, 0o755);
  const unit = path.join(dir, "mtlsd.service");
  await writeFile(unit, unitText.replaceAll(EXEC, bin));
  return unit;
}

t.test("systemd-analyze verify finds nothing wrong with the unit", async (t) => {
  const unit = await verifiableUnit();
  const result = await run("systemd-analyze", ["verify", "--man=no", "--generators=no", unit]);
  t.equal(result.code, 0, result.stderr);
  t.equal(result.stderr.trim(), "", "not even a warning");
  const original = await run("systemd-analyze", ["verify", "--man=no", "--generators=no", UNIT_PATH]);
  t.same(
    original.stderr.trim().split("\n"),
    [`mtlsd.service: Command ${EXEC} is not executable: No such file or directory`],
    `as shipped, the only complaint is that ${EXEC} is not installed on this machine`,
  );
});

t.test("systemd-analyze security rates the unit's exposure as OK or better", async (t) => {
  const unit = await verifiableUnit();
  const result = await run("systemd-analyze", ["security", "--offline=true", "--no-pager", unit]);
  const overall = /Overall exposure level for mtlsd\.service: ([\d.]+) (\w+)/.exec(result.stdout);
  t.ok(overall, `an overall score in: ${result.stdout.slice(-300)}`);
  t.comment(
    `systemd-analyze security --offline=true: exposure ${overall?.[1]} ${overall?.[2]} (0 = fully sandboxed, 10 = none)`,
  );
  t.ok(Number(overall?.[1]) <= 2, `exposure ${overall?.[1]} is at most 2.0`);
});

t.test("the unit runs mtlsd unprivileged on a read-only system with no capabilities", async (t) => {
  t.equal(setting("User"), "mtlsd");
  t.equal(setting("Group"), "mtlsd");
  t.equal(setting("NoNewPrivileges"), "yes");
  t.equal(setting("CapabilityBoundingSet"), "", "no capability: every default port is above 1024");
  t.equal(setting("AmbientCapabilities"), "");
  t.equal(setting("ProtectSystem"), "strict", "the whole file system is read-only to it");
  t.equal(setting("ReadOnlyPaths"), "/etc/mtlsd");
  t.equal(setting("ProtectHome"), "yes");
  t.equal(setting("PrivateTmp"), "yes");
  t.equal(setting("RestrictAddressFamilies"), "AF_INET AF_INET6 AF_UNIX");
  t.same(settings.get("Service.SystemCallFilter"), ["@system-service", "~@privileged"]);
  t.equal(setting("SystemCallErrorNumber"), "EPERM");
  t.notOk(setting("MemoryDenyWriteExecute"), "not set: V8's JIT needs writable executable memory");
});

t.test("the unit reloads on SIGHUP, drains on SIGTERM and restarts only on runtime failures", async (t) => {
  t.match(setting("ExecStart"), /^\/usr\/local\/bin\/mtlsd run$/, "mtlsd run reads $MTLSD_CONFIG");
  t.same(settings.get("Service.Environment"), ["MTLSD_CONFIG=/etc/mtlsd/mtlsd.yaml"]);
  t.equal(setting("ExecReload"), "/bin/kill -HUP $MAINPID");
  t.equal(setting("KillSignal"), "SIGTERM");
  t.equal(setting("Restart"), "on-failure");
  t.equal(setting("RestartPreventExitStatus"), String(EXIT_USAGE), "a config error is not retried forever");
  const shipped = validateShippedConfig(
    readRepoFile("deploy/systemd/mtlsd.yaml"),
    "deploy/systemd/mtlsd.yaml",
  );
  const drain = parseDuration(String((shipped.raw.limits as Record<string, unknown>).drainTimeout))!;
  const stop = timespan(setting("TimeoutStopSec")!);
  t.ok(stop > drain, `TimeoutStopSec (${stop}ms) outlasts limits.drainTimeout (${drain}ms)`);
});

t.test("the sysusers entry creates the mtlsd user and group, with no login", async (t) => {
  const root = path.join(dir, "sysroot");
  await mkdir(path.join(root, "etc"), { recursive: true });
  await mkdir(path.join(root, "usr/lib/sysusers.d"), { recursive: true });
  await copyFile(repoPath("deploy/systemd/mtlsd.sysusers"), path.join(root, "usr/lib/sysusers.d/mtlsd.conf"));
  const result = await run("systemd-sysusers", [`--root=${root}`]);
  t.equal(result.code, 0, result.stderr);
  const passwd = (await readFile(path.join(root, "etc/passwd"), "utf8")).trim().split(":");
  t.equal(passwd[0], "mtlsd");
  t.ok(Number(passwd[2]) > 0 && Number(passwd[2]) < 1000, `a system uid (${passwd[2]})`);
  t.equal(passwd.at(-1), "/usr/sbin/nologin");
  const group = (await readFile(path.join(root, "etc/group"), "utf8")).trim().split(":");
  t.same([group[0], group[2]], ["mtlsd", passwd[3]], "its own group");
});

t.test("the env file sets the config path and stays plain KEY=value lines", async (t) => {
  const lines = readRepoFile("deploy/systemd/mtlsd.env")
    .split("\n")
    .filter((line) => line.trim() !== "" && !line.startsWith("#"));
  for (const line of lines) t.match(line, /^[A-Z_][A-Z0-9_]*=(\S*|"[^"]*")$/, line);
  t.ok(lines.includes("MTLSD_CONFIG=/etc/mtlsd/mtlsd.yaml"));
});

t.test("the env file's commented alternatives are valid lines once uncommented", async (t) => {
  const alternatives = readRepoFile("deploy/systemd/mtlsd.env")
    .split("\n")
    .filter((line) => /^#[A-Z_][A-Z0-9_]*=/.test(line));
  t.ok(alternatives.length > 0, "there is at least one");
  for (const line of alternatives) t.match(line.slice(1), /^[A-Z_][A-Z0-9_]*=(\S*|"[^"]*")$/, line);
});

/** The syscalls a SystemCallFilter allows: the listed groups expanded, minus the ~groups expanded. */
async function allowedSyscalls(filters: string[]): Promise<Set<string>> {
  const listing = await run("systemd-analyze", ["syscall-filter", "--no-pager"]);
  const groups = new Map<string, string[]>();
  let current: string[] | undefined;
  for (const line of listing.stdout.split("\n")) {
    if (line.startsWith("@")) {
      current = [];
      groups.set(line.trim(), current);
    } else if (current && line.trim() && !line.trim().startsWith("#")) current.push(line.trim());
    else if (!line.trim()) current = undefined;
  }
  const expand = (name: string, into: Set<string>): Set<string> => {
    if (!name.startsWith("@")) into.add(name);
    else for (const member of groups.get(name) ?? []) expand(member, into);
    return into;
  };
  const allowed = new Set<string>();
  for (const filter of filters) {
    const deny = filter.startsWith("~");
    for (const name of (deny ? filter.slice(1) : filter).split(/\s+/)) {
      const set = expand(name, new Set());
      for (const call of set) deny ? allowed.delete(call) : allowed.add(call);
    }
  }
  return allowed;
}

t.test("every system call mtlsd makes while serving both directions passes the unit's filter", async (t) => {
  const pki = await createTestPki();
  t.teardown(() => pki.cleanup());
  const app = await startApp();
  t.teardown(() => app.stop());
  const [client, traced, peer] = await Promise.all([
    pki.identity("client"),
    pki.identity("traced"),
    pki.identity("peer"),
  ]);
  const allowAll = (from: string) => ({
    default: "deny",
    rules: [{ name: "allow", action: "allow", from: [from] }],
  });
  const identity = (who: typeof traced) => identityConfig(pki, who);
  // The peer answers the traced mtlsd's outbound calls; it is not traced itself.
  const peerConfig = path.join(dir, "peer.yaml");
  await writeFile(
    peerConfig,
    stringify({
      identity: identity(peer),
      inbound: { listen: "127.0.0.1:0", app: app.url, policy: allowAll(traced.spiffeId) },
      // Two sidecars here, and tests run in parallel: the admin listener's default port would collide.
      admin: { listen: "127.0.0.1:0" },
    }),
  );
  const peerSidecar = await startMtlsd(process.execPath, [CLI, "run", "-c", peerConfig]);
  t.teardown(() => peerSidecar.stop());
  const tracedConfig = path.join(dir, "traced.yaml");
  await writeFile(
    tracedConfig,
    stringify({
      identity: identity(traced),
      inbound: { listen: "127.0.0.1:0", app: app.url, policy: allowAll(client.spiffeId) },
      outbound: {
        listen: "127.0.0.1:0",
        upstreams: { peer: { address: peerSidecar.listeners.inbound, identity: peer.spiffeId } },
      },
      admin: { listen: "127.0.0.1:0" },
    }),
  );
  const summary = path.join(dir, "syscalls.txt");
  const sidecar = await startMtlsd(
    "strace",
    ["-f", "-c", "-qq", "-o", summary, "--", process.execPath, CLI, "run", "-c", tracedConfig],
    { timeoutMs: 30_000 },
  );
  t.teardown(() => sidecar.stop("SIGKILL"));
  const inboundPort = sidecar.listeners.inbound!.split(":").at(-1);
  const inbound = await curlRequest(`https://localhost:${inboundPort}/inbound`, {
    cacert: pki.bundlePath,
    cert: client.certPath,
    key: client.keyPath,
    args: ["--resolve", `localhost:${inboundPort}:127.0.0.1`],
  });
  t.equal(inbound.response?.status, 200, `inbound: ${inbound.stderr}`);
  const outbound = await curlRequest(`http://${sidecar.listeners.outbound}/outbound`, {
    cacert: pki.bundlePath,
    headers: ["Host: peer"],
  });
  t.equal(outbound.response?.status, 200, `outbound: ${outbound.stderr}`);
  // A rotation through SIGHUP (ExecReload).
  const tracee = Number(
    (await readFile(`/proc/${sidecar.child.pid}/task/${sidecar.child.pid}/children`, "utf8")).trim(),
  );
  t.ok(tracee > 0, `node runs under strace as pid ${tracee}`);
  await pki.identity("traced");
  process.kill(tracee, "SIGHUP");
  const deadline = Date.now() + 10_000;
  while (!sidecar.logs.some((line) => line.msg === "credentials reloaded") && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  t.ok(
    sidecar.logs.some((line) => line.msg === "credentials reloaded"),
    "SIGHUP reloaded the rotated files",
  );
  // strace passes its own exit code on, but a signal must go to the traced node itself, as systemd's would.
  process.kill(tracee, "SIGTERM");
  t.equal(await sidecar.stop(null), 0, "drained and exited 0");

  const made = (await readFile(summary, "utf8"))
    .split("\n")
    .map((line) => line.trim().split(/\s+/))
    .filter((columns) => columns.length >= 5 && /^\d/.test(columns[0]!) && columns.at(-1) !== "total")
    .map((columns) => columns.at(-1)!);
  t.ok(made.length > 20, `strace counted the calls (${made.length} distinct)`);
  const allowed = await allowedSyscalls(settings.get("Service.SystemCallFilter")!);
  const refused = made.filter((call) => !allowed.has(call));
  t.same(refused, [], "none would be refused with EPERM under the unit");
  t.comment(`system calls made: ${made.sort().join(" ")}`);
});
