// The image's runtime stage replayed without Docker: its production install from the npm registry, its
// entrypoint, and mtlsd serving mTLS with a read-only root file system, as `docker run --read-only` gives it.
//
// Needs the npm registry (or a warm npm cache). Only when npm ci fails AND the registry does not answer are
// the tests skipped, with the reason printed; any other failure is a failure.
import { execFile } from "node:child_process";
import { cp, mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import t from "tap";
import { stringify } from "yaml";
import { startApp } from "./helpers/app.ts";
import { curlRequest } from "./helpers/clients.ts";
import { REPO, readRepoFile, repoPath, startMtlsd } from "./helpers/deploy.ts";
import { parseDockerfile, type Stage } from "./helpers/dockerfile.ts";
import { createTestPki, identityConfig } from "./helpers/pki.ts";

const pkg = JSON.parse(readRepoFile("package.json")) as {
  version: string;
  dependencies: Record<string, string>;
  devDependencies: Record<string, string>;
};
const runtime = parseDockerfile(readRepoFile("Dockerfile")).stages.at(-1) as Stage;
/** The image's working directory, which the replay maps onto a temporary directory. */
const IMAGE_APP = "/app";

const work = await mkdtemp(path.join(os.tmpdir(), "mtlsd-image-"));
t.teardown(() => rm(work, { recursive: true, force: true }));
const app = path.join(work, "app");
/** A path in the image → the same path in the replay. */
const local = (imagePath: string) => path.join(app, path.posix.relative(IMAGE_APP, imagePath));
/**
 * The environment of what the replay runs: this machine's (npm needs its proxy and CA settings) without the
 * test runner's hooks and coverage, and with the test's own Node first on PATH, as node:<major>-slim has it.
 */
const env: NodeJS.ProcessEnv = Object.fromEntries(
  Object.entries(process.env).filter(
    ([key]) => !/^(NODE_OPTIONS|NODE_V8_COVERAGE|TAP|_TAPJS)/.test(key) && !key.startsWith("npm_"),
  ),
);
env.PATH = `${path.dirname(process.execPath)}:${process.env.PATH}`;

interface Finished {
  code: number | null;
  stdout: string;
  stderr: string;
}

/**
 * A command line that runs without the test runner's hooks: tap's process tracking adds its loader to the
 * NODE_OPTIONS of every child it sees spawned, and neither tsc nor the image's node should run with it.
 */
function plain(command: string, args: string[]): [string, string[]] {
  return ["env", ["-u", "NODE_OPTIONS", "-u", "NODE_V8_COVERAGE", command, ...args]];
}

function run(
  command: string,
  args: string[],
  options: { cwd?: string; timeoutMs?: number; env?: NodeJS.ProcessEnv } = {},
): Promise<Finished> {
  return new Promise((resolve, reject) => {
    execFile(
      command,
      args,
      {
        cwd: options.cwd,
        env: options.env ?? env,
        timeout: options.timeoutMs ?? 60_000,
        maxBuffer: 16 * 1024 * 1024,
      },
      (error, stdout, stderr) => {
        if (error && typeof error.code === "string") return reject(error);
        resolve({ code: error ? ((error.code as number | undefined) ?? null) : 0, stdout, stderr });
      },
    );
  });
}

/**
 * Replays the runtime stage: WORKDIR, COPY from the context, COPY --from=build (a fresh build of src/ with
 * the project's tsc), and each `npm ci` of its RUN lines exactly as written. Other RUN commands (npm cache
 * clean) would act on this machine rather than an image layer, so they are left out and listed.
 */
async function replayRuntimeStage(): Promise<{ npmCi: Finished[]; leftOut: string[] }> {
  await mkdir(app, { recursive: true });
  const npmCi: Finished[] = [];
  const leftOut: string[] = [];
  let workdir = "/";
  for (const each of runtime.instructions) {
    if (each.keyword === "WORKDIR") workdir = path.posix.resolve(workdir, each.words[0]!);
    if (each.keyword === "COPY") {
      const destination = local(path.posix.resolve(workdir, each.words.at(-1)!));
      if (each.flags.from === "build") {
        const tsc = repoPath("node_modules/typescript/bin/tsc");
        const built = await run(
          ...plain(process.execPath, [tsc, "-p", "tsconfig.build.json", "--outDir", destination]),
          { cwd: REPO },
        );
        if (built.code !== 0) throw new Error(`tsc failed: ${built.stdout}${built.stderr}`);
        continue;
      }
      for (const source of each.words.slice(0, -1)) {
        const target = each.words.at(-1)!.endsWith("/")
          ? path.join(destination, path.basename(source))
          : destination;
        await cp(repoPath(source), target, { recursive: true });
      }
    }
    if (each.keyword === "RUN") {
      for (const command of each.args.split("&&").map((part) => part.trim())) {
        if (!command.startsWith("npm ci ")) {
          leftOut.push(command);
          continue;
        }
        if (workdir !== IMAGE_APP) throw new Error(`npm ci runs in ${workdir}, not ${IMAGE_APP}`);
        npmCi.push(
          await run(...plain("npm", command.split(/\s+/).slice(1)), { cwd: app, timeoutMs: 300_000 }),
        );
      }
    }
  }
  return { npmCi, leftOut };
}

const replay = await replayRuntimeStage();
const failed = replay.npmCi.find((result) => result.code !== 0);
let skip: string | false = false;
if (failed) {
  const ping = await run("npm", ["ping"], { timeoutMs: 30_000 }).catch((error: Error) => ({
    code: 1,
    stdout: "",
    stderr: error.message,
  }));
  if (ping.code !== 0) {
    skip = `the npm registry is unreachable (npm ping: ${ping.stderr.trim().split("\n").at(-1)}), so the production install cannot be replayed`;
    console.error(`# SKIP ${skip}`);
  }
}

t.test(
  "the runtime stage's npm ci installs the production dependencies and nothing else",
  { skip },
  async (t) => {
    t.equal(replay.npmCi.length, 1, "one npm ci");
    t.equal(failed, undefined, `npm ci succeeded: ${failed?.stderr}`);
    t.same(replay.leftOut, ["npm cache clean --force"], "only the cache cleanup was left out of the replay");
    const installed = new Set(await packagesIn(path.join(app, "node_modules")));
    for (const name of Object.keys(pkg.dependencies)) t.ok(installed.has(name), `${name} is installed`);
    // A dev dependency that a production dependency also needs (protobufjs, under grpc-js, lists @types/node)
    // is production code too: the lockfile then no longer marks it dev, and npm ci --omit=dev installs it.
    const lock = JSON.parse(readRepoFile("package-lock.json")) as {
      packages: Record<string, { dev?: boolean }>;
    };
    for (const name of Object.keys(pkg.devDependencies)) {
      if (lock.packages[`node_modules/${name}`]?.dev === true)
        t.notOk(installed.has(name), `${name} (dev) is not`);
      else t.ok(installed.has(name), `${name} (dev, and needed by a production dependency) is`);
    }
    t.notOk(installed.has("typescript"), "no compiler in the image");
    t.comment(`${installed.size} packages in the image's node_modules`);
  },
);

t.test("the image's entrypoint prints the version", { skip }, async (t) => {
  const result = await run(...plain(process.execPath, [local("/app/dist/cli/main.js"), "--version"]));
  t.same(result, { code: 0, stdout: `mtlsd ${pkg.version}\n`, stderr: "" });
});

/** Runs a command in a private mount namespace whose root file system is remounted read-only. */
function readOnlyRoot(command: string[]): [string, string[]] {
  return [
    "unshare",
    [
      "--user",
      "--map-root-user",
      "--mount",
      "--propagation",
      "private",
      "sh",
      "-c",
      'unset NODE_OPTIONS NODE_V8_COVERAGE && mount -o remount,bind,ro / && exec "$@"',
      "sh",
      ...command,
    ],
  ];
}

t.test("mtlsd serves mTLS with a read-only root file system and drains on SIGTERM", { skip }, async (t) => {
  const [wrapper, wrapperArgs] = readOnlyRoot(["touch", path.join(work, "written")]);
  const control = await run(wrapper, wrapperArgs);
  t.equal(control.code, 1, "the wrapper really makes / read-only: touch fails");
  t.match(control.stderr, "Read-only file system");

  const pki = await createTestPki();
  t.teardown(() => pki.cleanup());
  const echo = await startApp();
  t.teardown(() => echo.stop());
  const [orders, frontend] = await Promise.all([pki.identity("orders"), pki.identity("frontend")]);
  const config = path.join(pki.dir, "mtlsd.yaml");
  await writeFile(
    config,
    stringify({
      identity: identityConfig(pki, orders),
      inbound: {
        listen: "127.0.0.1:0",
        app: echo.url,
        policy: {
          default: "deny",
          rules: [{ name: "frontend", action: "allow", from: [frontend.spiffeId] }],
        },
      },
      // Tests run in parallel: the admin listener's default port would collide.
      admin: { listen: "127.0.0.1:0" },
    }),
  );
  const before = await snapshot(app);
  // The image's ENTRYPOINT and CMD, with the image's environment.
  const [command, args] = readOnlyRoot([process.execPath, local("/app/dist/cli/main.js"), "run"]);
  const sidecar = await startMtlsd(command, args, {
    env: { ...env, NODE_ENV: "production", MTLSD_CONFIG: config },
  });
  t.teardown(() => sidecar.stop("SIGKILL"));
  const port = sidecar.listeners.inbound!.split(":").at(-1);
  const result = await curlRequest(`https://localhost:${port}/v1/orders`, {
    cacert: pki.bundlePath,
    cert: frontend.certPath,
    key: frontend.keyPath,
    args: ["--resolve", `localhost:${port}:127.0.0.1`],
  });
  t.equal(result.response?.status, 200, `served: ${result.stderr}`);
  t.match(result.response?.body, frontend.spiffeId, "the app saw the caller's identity");
  t.equal(await sidecar.stop("SIGTERM"), 0, "SIGTERM: drained and exited 0");
  t.equal(sidecar.stderr(), "", "nothing on stderr");
  t.ok(
    sidecar.logs.some((line) => line.msg === "mtlsd stopped"),
    "logged its stop",
  );
  t.same(
    sidecar.logs.filter((line) => (line.level as number) >= 50),
    [],
    "no error was logged",
  );
  t.same(await snapshot(app), before, "the installed files are exactly as before");
});

/** Top-level package names in a node_modules directory (scoped ones as @scope/name). */
async function packagesIn(dir: string): Promise<string[]> {
  const names: string[] = [];
  for (const entry of await readdir(dir)) {
    if (entry.startsWith(".")) continue;
    if (entry.startsWith("@"))
      names.push(...(await readdir(path.join(dir, entry))).map((name) => `${entry}/${name}`));
    else names.push(entry);
  }
  return names;
}

/** Every file under a directory with its size and modification time. */
async function snapshot(dir: string): Promise<Record<string, [number, number]>> {
  const files: Record<string, [number, number]> = {};
  for (const entry of await readdir(dir, { recursive: true })) {
    const info = await stat(path.join(dir, entry));
    files[entry] = [info.size, info.mtimeMs];
  }
  return files;
}

t.test("the replay reads the Dockerfile's own commands", { skip }, async (t) => {
  // Guards the replay itself: if the Dockerfile stopped installing into /app, the tests above would test nothing.
  t.ok(
    (await readFile(path.join(app, "package.json"), "utf8")).includes('"name": "mtlsd"'),
    "package.json copied",
  );
  t.ok((await stat(local("/app/dist/cli/main.js"))).isFile(), "dist built in");
  t.ok((await stat(local("/app/healthcheck.mjs"))).isFile(), "healthcheck copied");
  t.ok((await stat(local("/app/config/mtlsd.example.yaml"))).isFile(), "config copied");
});
