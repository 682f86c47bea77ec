// `mtlsd run` as an operator meets it: the real CLI process, its exit codes, its stderr, and a real mTLS request.
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { once } from "node:events";
import { readFileSync } from "node:fs";
import { writeFile } from "node:fs/promises";
import net from "node:net";
import path from "node:path";
import { createInterface } from "node:readline";
import { promisify } from "node:util";
import t from "tap";
import { stringify } from "yaml";
import { startApp } from "./helpers/app.ts";
import { createTestPki, type IdentityFiles } from "./helpers/pki.ts";

const execFileAsync = promisify(execFile);
const CLI = new URL("../src/cli/main.ts", import.meta.url).pathname;
const PACKAGE = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8")) as {
  version: string;
};
const EXIT_TIMEOUT_MS = 10_000;

const pki = await createTestPki();
t.teardown(() => pki.cleanup());
const app = await startApp();
t.teardown(() => app.stop());
const orders = await pki.identity("orders");
const frontend = await pki.identity("frontend");

interface Finished {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs the CLI to completion (bounded), with a clean environment unless `env` adds to it. */
async function mtlsd(
  args: string[],
  options: { env?: NodeJS.ProcessEnv; cwd?: string } = {},
): Promise<Finished> {
  const child = spawn(process.execPath, [CLI, ...args], {
    cwd: options.cwd ?? pki.dir,
    env: { PATH: process.env.PATH, ...options.env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (chunk: Buffer) => {
    stdout += chunk.toString();
  });
  child.stderr.on("data", (chunk: Buffer) => {
    stderr += chunk.toString();
  });
  const code = await exitCode(child, `mtlsd ${args.join(" ")}`);
  return { code, stdout, stderr };
}

/** Waits for a child to exit and its output to drain ("close", not "exit"), killing it if it outlives the bound. */
async function exitCode(child: ChildProcess, what: string): Promise<number | null> {
  const timer = setTimeout(() => child.kill("SIGKILL"), EXIT_TIMEOUT_MS);
  const [code, signal] = (await once(child, "close")) as [number | null, NodeJS.Signals | null];
  clearTimeout(timer);
  if (signal === "SIGKILL") throw new Error(`${what} did not exit within ${EXIT_TIMEOUT_MS}ms`);
  return code;
}

interface Running {
  child: ChildProcess;
  logs: Record<string, unknown>[];
  started: Record<string, unknown>;
  stderr: () => string;
}

/** Starts `mtlsd run -c FILE` and resolves on its `mtlsd started` log line; the test's teardown stops it. */
async function startMtlsd(t: TestContext, configPath: string): Promise<Running> {
  const child = spawn(process.execPath, [CLI, "run", "-c", configPath], {
    env: { PATH: process.env.PATH },
    stdio: ["ignore", "pipe", "pipe"],
  });
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  });
  const logs: Record<string, unknown>[] = [];
  let stderr = "";
  child.stderr.on("data", (chunk: Buffer) => {
    stderr += chunk.toString();
  });
  const started = await new Promise<Record<string, unknown>>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`mtlsd did not start within 10s: ${stderr}`)), 10_000);
    createInterface({ input: child.stdout }).on("line", (line) => {
      const entry = JSON.parse(line) as Record<string, unknown>;
      logs.push(entry);
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
  return { child, logs, started, stderr: () => stderr };
}

/** The subtest handed to a `t.test` callback. */
type TestContext = Parameters<Parameters<typeof t.test>[0]>[0];

/** Writes a config for `identity` into the PKI directory; `inbound` overrides the defaults below. */
async function writeConfig(
  name: string,
  inbound: Record<string, unknown> = {},
  identity: IdentityFiles = orders,
): Promise<string> {
  const file = path.join(pki.dir, `${name}.yaml`);
  const config = {
    identity: {
      cert: path.basename(identity.certPath),
      key: path.basename(identity.keyPath),
      trustBundle: path.basename(pki.bundlePath),
      trustDomain: pki.trustDomain,
    },
    inbound: {
      listen: "127.0.0.1:0",
      app: app.url,
      policy: {
        rules: [
          { name: "frontend-reads", action: "allow", from: [frontend.spiffeId], to: [{ methods: ["GET"] }] },
        ],
      },
      ...inbound,
    },
    admin: { listen: "127.0.0.1:0" },
  };
  await writeFile(file, stringify(config));
  return file;
}

/** A loopback port that was free a moment ago. */
async function freePort(): Promise<number> {
  const server = net.createServer().listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = server.address() as net.AddressInfo;
  server.close();
  await once(server, "close");
  return port;
}

/** Whether this process can bind the port itself, i.e. nobody else listens there. */
async function canBind(port: number): Promise<boolean> {
  const server = net.createServer();
  try {
    server.listen(port, "127.0.0.1");
    await Promise.race([
      once(server, "listening"),
      once(server, "error").then(([error]) => Promise.reject(error)),
    ]);
    return true;
  } catch {
    return false;
  } finally {
    server.close();
  }
}

t.test("--version prints the package version", async (t) => {
  const result = await mtlsd(["--version"]);
  t.equal(result.code, 0);
  t.equal(result.stdout.trim(), `mtlsd ${PACKAGE.version}`);
});

t.test("--help lists the run command and exits 0", async (t) => {
  const result = await mtlsd(["--help"]);
  t.equal(result.code, 0);
  t.match(result.stdout, /mtlsd run \[-c FILE\]/);
});

t.test("an unknown command is a usage error", async (t) => {
  const result = await mtlsd(["serve"]);
  t.equal(result.code, 2);
  t.match(result.stderr, 'unknown command "serve"');
});

t.test("a config file that does not exist is named in the error", async (t) => {
  const result = await mtlsd(["run", "-c", "missing.yaml"]);
  t.equal(result.code, 2);
  t.match(result.stderr, `${path.join(pki.dir, "missing.yaml")}: cannot read the config file: no such file`);
});

t.test("an invalid SPIFFE ID in a rule is reported with its field path and line, and exits 2", async (t) => {
  const file = await writeConfig("bad-spiffe-id", {
    policy: {
      rules: [
        { name: "a", action: "allow" },
        { name: "b", action: "allow" },
        { name: "c", action: "allow", from: ["spiffe://Example.org/ns/x/sa/x"] },
      ],
    },
  });
  const lines = readFileSync(file, "utf8").split("\n");
  const line = lines.findIndex((text) => text.includes("spiffe://Example.org")) + 1;
  const result = await mtlsd(["run", "-c", file]);
  t.equal(result.code, 2);
  t.match(result.stderr, file);
  t.match(result.stderr, `inbound.policy.rules[2].from[0] (line ${line}): expected a SPIFFE ID`);
  t.match(result.stderr, "uppercase");
  t.equal(result.stdout, "", "no mtlsd started line: nothing ran");
});

t.test("an expired certificate exits 2 naming the file, and nothing listens", async (t) => {
  const hour = 60 * 60 * 1000;
  const expired = await pki.identity("expired", {
    notBefore: new Date(Date.now() - 2 * hour),
    notAfter: new Date(Date.now() - hour),
  });
  const port = await freePort();
  const file = await writeConfig("expired", { listen: `127.0.0.1:${port}` }, expired);
  const result = await mtlsd(["run", "-c", file]);
  t.equal(result.code, 2);
  t.match(result.stderr, expired.certPath);
  t.match(result.stderr, "expired");
  t.ok(await canBind(port), `port ${port} was never taken`);
});

t.test("MTLSD_CONFIG names the config when -c is absent", async (t) => {
  const file = await writeConfig("from-env", { listen: "nowhere" });
  const result = await mtlsd(["run"], { env: { MTLSD_CONFIG: path.basename(file) } });
  t.equal(result.code, 2);
  t.match(result.stderr, `${file}: invalid configuration`);
  const line = readFileSync(file, "utf8").split("\n").indexOf("  listen: nowhere") + 1;
  t.match(result.stderr, `inbound.listen (line ${line}): expected host:port`);
  t.match(result.stderr, 'found "nowhere"');
});

t.test("without -c or MTLSD_CONFIG, ./mtlsd.yaml is the config", async (t) => {
  const result = await mtlsd(["run"]);
  t.equal(result.code, 2);
  t.match(result.stderr, `${path.join(pki.dir, "mtlsd.yaml")}: cannot read the config file: no such file`);
});

t.test("a good config starts, serves an mTLS request to the app, and stops cleanly on SIGTERM", async (t) => {
  const running = await startMtlsd(t, await writeConfig("good"));
  t.equal(running.started.identity, orders.spiffeId);
  const listen = (running.started.listeners as Record<string, string>).inbound!;
  const port = Number(listen.split(":").at(-1));
  const { stdout } = await execFileAsync(
    "curl",
    [
      "-sS",
      "--max-time",
      "10",
      "--cacert",
      pki.bundlePath,
      "--cert",
      frontend.certPath,
      "--key",
      frontend.keyPath,
      `https://localhost:${port}/v1/orders?id=1`,
    ],
    { encoding: "utf8", timeout: 15_000 },
  );
  const echoed = JSON.parse(stdout) as { method: string; url: string; headers: Record<string, string> };
  t.equal(echoed.method, "GET");
  t.equal(echoed.url, "/v1/orders?id=1");
  t.match(echoed.headers["x-forwarded-client-cert"], `URI=${frontend.spiffeId}`);
  running.child.kill("SIGTERM");
  t.equal(await exitCode(running.child, "mtlsd run"), 0, running.stderr());
  t.ok(
    running.logs.some((line) => line.msg === "mtlsd stopped"),
    "the last words are on stdout",
  );
});

t.test("a port already in use exits 1 and says so", async (t) => {
  const blocker = net.createServer().listen(0, "127.0.0.1");
  await once(blocker, "listening");
  t.teardown(() => blocker.close());
  const { port } = blocker.address() as net.AddressInfo;
  const result = await mtlsd(["run", "-c", await writeConfig("port-taken", { listen: `127.0.0.1:${port}` })]);
  t.equal(result.code, 1);
  t.match(result.stderr, "inbound.listen");
  t.match(result.stderr, "already in use");
});
