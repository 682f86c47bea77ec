// The single binary as a VM operator gets it: built once, unpacked from its release tarball, run with no Node on PATH.
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { EventEmitter, once } from "node:events";
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { createInterface } from "node:readline";
import { promisify } from "node:util";
import t from "tap";
import { stringify } from "yaml";
import { startApp } from "./helpers/app.ts";
import { curl, curlRequest } from "./helpers/clients.ts";
import { appRequest, echoed } from "./helpers/outbound.ts";
import { createTestPki, identityConfig } from "./helpers/pki.ts";

const execFileAsync = promisify(execFile);
const REPO = new URL("../", import.meta.url).pathname;
const { version } = JSON.parse(await readFile(path.join(REPO, "package.json"), "utf8")) as {
  version: string;
};
const RELEASE = `mtlsd-${version}-linux-x64`;

// Building takes seconds (bundle, copy of Node, code cache, tarball): once for the whole file.
t.setTimeout(240_000);
const work = await mkdtemp(path.join(os.tmpdir(), "mtlsd-binary-"));
t.teardown(() => rm(work, { recursive: true, force: true }));
const out = path.join(work, "build");
await execFileAsync(process.execPath, [path.join(REPO, "scripts/build-binary.ts"), "--out", out], {
  maxBuffer: 16 * 1024 * 1024,
});
const tarball = path.join(out, `${RELEASE}.tar.gz`);
const unpacked = path.join(work, "unpacked");
await mkdir(unpacked);
await execFileAsync("tar", ["-xzf", tarball, "-C", unpacked]);
const release = path.join(unpacked, RELEASE);
const MTLSD = path.join(release, "mtlsd");

// An empty directory as the whole PATH: the binary must not need a `node` (or anything else) from it.
const emptyPath = path.join(work, "empty-path");
await mkdir(emptyPath);
const BARE_ENV = { PATH: emptyPath };

const pki = await createTestPki();
t.teardown(() => pki.cleanup());
const orders = await pki.identity("orders");
const frontend = await pki.identity("frontend");

// The sidecars start before any subtest is queued: tap ends a file once its queued subtests are done, and a
// top-level await between subtests (a slow start on a loaded machine) would find the file already ended.
const app = await startApp();
t.teardown(() => app.stop());
const ordersSidecar = await startBinary("orders", {
  identity: identityConfig(pki, orders),
  inbound: {
    listen: "127.0.0.1:0",
    app: app.url,
    policy: {
      rules: [
        {
          name: "frontend-reads-orders",
          action: "allow",
          from: [frontend.spiffeId],
          to: [{ methods: ["GET"], paths: ["/v1/orders/*"] }],
        },
      ],
    },
  },
  admin: { listen: "127.0.0.1:0" },
  log: { level: "info" },
});
const frontendSidecar = await startBinary("frontend", {
  identity: identityConfig(pki, frontend),
  outbound: {
    listen: "127.0.0.1:0",
    upstreams: { orders: { address: ordersSidecar.listeners.inbound, identity: orders.spiffeId } },
  },
  admin: { listen: "127.0.0.1:0" },
});
const ordersPort = ordersSidecar.listeners.inbound!.split(":").at(-1);

/** Runs the binary to completion with the bare environment. */
async function mtlsd(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await execFileAsync(MTLSD, args, {
      env: BARE_ENV,
      cwd: pki.dir,
      timeout: 20_000,
    });
    return { code: 0, stdout, stderr };
  } catch (error) {
    const failed = error as { code: number; stdout: string; stderr: string };
    return { code: failed.code, stdout: failed.stdout, stderr: failed.stderr };
  }
}

t.test(
  "the release tarball holds the binary, the files a VM install needs, and their SHA-256 sums",
  async (t) => {
    t.same((await readdir(release)).sort(), [
      "SHA256SUMS",
      "mtlsd",
      "mtlsd.env",
      "mtlsd.example.yaml",
      "mtlsd.schema.json",
      "mtlsd.service",
      "mtlsd.sysusers",
      "mtlsd.yaml",
    ]);
    const check = await execFileAsync("sha256sum", ["--check", "--strict", "SHA256SUMS"], { cwd: release });
    t.match(check.stdout, /^mtlsd: OK$/m, "sha256sum confirms the binary");
    t.equal(check.stdout.trim().split("\n").length, 7, "every file is summed");
    const tarballSum = await execFileAsync("sha256sum", ["--check", "--strict", `${RELEASE}.tar.gz.sha256`], {
      cwd: out,
    });
    t.match(tarballSum.stdout, `${RELEASE}.tar.gz: OK`, "the tarball's own sum checks");
    t.equal(
      await readFile(path.join(release, "mtlsd.schema.json"), "utf8"),
      await readFile(path.join(REPO, "config/mtlsd.schema.json"), "utf8"),
      "the JSON Schema is the published one",
    );
  },
);

t.test("the binary is a self-contained Linux executable", async (t) => {
  const { stdout } = await execFileAsync("od", ["-A", "n", "-t", "x1", "-N", "4", MTLSD]);
  t.equal(stdout.trim(), "7f 45 4c 46", "an ELF file, not a script for an interpreter");
});

t.test("mtlsd --version prints the package version with no Node on PATH", async (t) => {
  const result = await mtlsd(["--version"]);
  t.equal(result.code, 0, result.stderr);
  t.equal(result.stdout, `mtlsd ${version}\n`);
  t.equal(result.stderr, "", "no experimental-feature warning");
});

t.test("mtlsd check validates a config and its credentials with no Node on PATH", async (t) => {
  const config = path.join(pki.dir, "check.yaml");
  await writeFile(
    config,
    stringify({
      identity: identityConfig(pki, orders),
      inbound: { listen: "127.0.0.1:0", app: "http://127.0.0.1:8080" },
    }),
  );
  const result = await mtlsd(["check", "-c", config]);
  t.equal(result.code, 0, `exits 0: ${result.stderr}`);
  t.match(result.stdout, orders.spiffeId, "names our SPIFFE ID");
  t.match(result.stdout, "valid", "finds the config valid");
});

t.test("mtlsd check exits 2 naming the field of a bad config, as from source", async (t) => {
  const config = path.join(pki.dir, "bad.yaml");
  await writeFile(
    config,
    stringify({ identity: { ...identityConfig(pki, orders), trustDomain: "Example.org" } }),
  );
  const result = await mtlsd(["check", "-c", config]);
  t.equal(result.code, 2);
  t.match(result.stderr + result.stdout, "identity.trustDomain");
});

interface RunningBinary {
  child: ChildProcess;
  logs: Record<string, unknown>[];
  listeners: Record<string, string>;
  /** Emits "line" with each parsed log entry. */
  lines: EventEmitter;
}

/** The first log line of `sidecar` that matches, waiting up to 5 s for it to be written. */
async function logLine(
  sidecar: RunningBinary,
  matches: (entry: Record<string, unknown>) => boolean,
): Promise<Record<string, unknown>> {
  const found = sidecar.logs.find(matches);
  if (found) return found;
  return await new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      sidecar.lines.off("line", onLine);
      reject(new Error("no matching log line within 5s"));
    }, 5000);
    const onLine = (entry: Record<string, unknown>) => {
      if (!matches(entry)) return;
      clearTimeout(timer);
      sidecar.lines.off("line", onLine);
      resolve(entry);
    };
    sidecar.lines.on("line", onLine);
  });
}

/** Starts the binary's `mtlsd run` on a config and resolves on its `mtlsd started` log line. */
async function startBinary(name: string, config: Record<string, unknown>): Promise<RunningBinary> {
  const file = path.join(pki.dir, `${name}.yaml`);
  await writeFile(file, stringify(config));
  const child = spawn(MTLSD, ["run", "-c", file], { env: BARE_ENV, stdio: ["ignore", "pipe", "pipe"] });
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  });
  let stderr = "";
  child.stderr!.on("data", (chunk: Buffer) => {
    stderr += chunk.toString();
  });
  const logs: Record<string, unknown>[] = [];
  const lines = new EventEmitter();
  const started = await new Promise<Record<string, unknown>>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`mtlsd did not start within 10s: ${stderr}`)), 10_000);
    createInterface({ input: child.stdout! }).on("line", (line) => {
      const entry = JSON.parse(line) as Record<string, unknown>;
      logs.push(entry);
      lines.emit("line", entry);
      if (entry.msg === "mtlsd started") {
        clearTimeout(timer);
        resolve(entry);
      }
    });
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`mtlsd exited with ${code} before starting: ${stderr}`));
    });
  });
  return { child, logs, lines, listeners: started.listeners as Record<string, string> };
}

// A short `mtlsd run` of two binaries with real traffic: a frontend sidecar (outbound) calling an orders
// sidecar (inbound) in front of a real app process, both started from the unpacked release.
t.test("mtlsd run lets an allowed mTLS client through to the app, telling it who called", async (t) => {
  const result = await curlRequest(`https://localhost:${ordersPort}/v1/orders/42`, {
    cacert: pki.bundlePath,
    cert: frontend.certPath,
    key: frontend.keyPath,
  });
  const echo = echoed(result);
  t.equal(echo.url, "/v1/orders/42");
  t.equal(echo.xfcc.URI, frontend.spiffeId, "XFCC names the caller");
  t.equal(echo.xfcc.By, orders.spiffeId);
});

t.test("mtlsd run refuses a request its policy denies, with the reason", async (t) => {
  const result = await curlRequest(`https://localhost:${ordersPort}/admin`, {
    cacert: pki.bundlePath,
    cert: frontend.certPath,
    key: frontend.keyPath,
  });
  t.equal(result.response?.status, 403);
  t.equal(result.response?.headers["x-mtlsd-reason"], "policy_denied");
  // The log is written asynchronously (pino's non-blocking stdout): the line may follow the response.
  const line = await logLine(ordersSidecar, (entry) => entry.path === "/admin");
  t.equal(line.decision, "deny", "the JSON log line records the denial");
});

t.test("mtlsd run carries the app's plain HTTP call to its upstream over mTLS", async (t) => {
  const result = await appRequest(`http://${frontendSidecar.listeners.outbound}/v1/orders/7`, {
    headers: ["Host: orders"],
  });
  const echo = echoed(result);
  t.equal(echo.url, "/v1/orders/7");
  t.equal(echo.xfcc.URI, frontend.spiffeId, "the orders sidecar verified the frontend's certificate");
});

t.test("mtlsd run serves its metrics on the admin listener", async (t) => {
  const result = await curl(["-sS", `http://${ordersSidecar.listeners.admin}/metrics`]);
  t.equal(result.code, 0, result.stderr);
  t.match(result.stdout, /mtlsd_requests_total\{[^}]*decision="allow"[^}]*\} [1-9]/);
  t.match(result.stdout, /mtlsd_requests_total\{[^}]*decision="deny"[^}]*\} [1-9]/);
  t.match(result.stdout, /^process_resident_memory_bytes /m, "with the process metrics");
});

t.test("mtlsd run drains and exits 0 on SIGTERM", async (t) => {
  for (const sidecar of [frontendSidecar, ordersSidecar]) {
    // "close", not "exit": by then its stdout has been read to the end, last log line included.
    const closed = once(sidecar.child, "close");
    sidecar.child.kill("SIGTERM");
    const [code] = (await closed) as [number | null];
    t.equal(code, 0);
    t.ok(
      sidecar.logs.some((entry) => entry.msg === "mtlsd stopped"),
      "logs that it stopped",
    );
  }
});

t.test("the binary runs workers: 2, each worker forked from the binary itself", async (t) => {
  const sidecar = await startBinary("orders-workers", {
    workers: 2,
    identity: identityConfig(pki, orders),
    inbound: {
      listen: "127.0.0.1:0",
      app: app.url,
      policy: { rules: [{ name: "frontend", action: "allow", from: [frontend.spiffeId] }] },
    },
    admin: { listen: "127.0.0.1:0" },
  });
  for (const worker of [1, 2]) {
    const started = await logLine(
      sidecar,
      (entry) => entry.msg === "worker started" && entry.worker === worker,
    );
    t.not(started.pid, sidecar.child.pid, `worker ${worker} is a process of its own`);
  }
  const port = sidecar.listeners.inbound!.split(":").at(-1);
  const result = await curlRequest(`https://localhost:${port}/v1/orders/1`, {
    cacert: pki.bundlePath,
    cert: frontend.certPath,
    key: frontend.keyPath,
  });
  t.equal(echoed(result).xfcc.URI, frontend.spiffeId);
  const closed = once(sidecar.child, "close");
  sidecar.child.kill("SIGTERM");
  const [code] = (await closed) as [number | null];
  t.equal(code, 0);
});
