// The container image as written: two stages, production dependencies only, non-root, exec-form entrypoint, a
// HEALTHCHECK that works without curl, and a build context that sends only what the Dockerfile copies.
import { execFile } from "node:child_process";
import { existsSync, readdirSync, statSync } from "node:fs";
import http from "node:http";
import type { AddressInfo } from "node:net";
import path from "node:path";
import t from "tap";
import { REPO, readRepoFile, repoPath } from "./helpers/deploy.ts";
import { dockerignore, type Instruction, parseDockerfile, type Stage } from "./helpers/dockerfile.ts";

const dockerfile = parseDockerfile(readRepoFile("Dockerfile"));
const ignore = dockerignore(readRepoFile(".dockerignore"));
const pkg = JSON.parse(readRepoFile("package.json")) as {
  version: string;
  bin: Record<string, string>;
  engines: { node: string };
  devDependencies: Record<string, string>;
  scripts: Record<string, string>;
};
const buildConfig = JSON.parse(readRepoFile("tsconfig.build.json")) as {
  compilerOptions: { outDir: string };
};
const HEALTHCHECK_SCRIPT = repoPath("deploy/docker/healthcheck.mjs");

/** The subtest handed to a `t.test` callback. */
type TestContext = Parameters<Parameters<typeof t.test>[0]>[0];

const [build, runtime] = dockerfile.stages as [Stage, Stage];
const all = (stage: Stage, keyword: string) => stage.instructions.filter((each) => each.keyword === keyword);
const last = (stage: Stage, keyword: string): Instruction | undefined => all(stage, keyword).at(-1);

/** WORKDIR in force at an instruction of a stage. */
function workdirAt(stage: Stage, at: Instruction): string {
  let dir = "/";
  for (const each of stage.instructions) {
    if (each === at) break;
    if (each.keyword === "WORKDIR") dir = path.posix.resolve(dir, each.words[0]!);
  }
  return dir;
}

t.test("the image is built in a build stage and runs from a separate runtime stage", async (t) => {
  t.equal(dockerfile.stages.length, 2, "two stages");
  t.equal(build.name, "build");
  t.equal(runtime.name, "runtime", "the last stage, the one `docker build` outputs, is the runtime");
  t.equal(
    build.base,
    runtime.base,
    "both on the same base, so the built JavaScript meets the Node it was built for",
  );
});

t.test("the base is the slim image of the Active LTS Node line, the one the tests run on", async (t) => {
  const major = Number(dockerfile.globalArgs.NODE_MAJOR);
  t.equal(runtime.base, `node:${major}-slim`);
  t.equal(major % 2, 0, "an even line: only those become LTS");
  t.equal(major, 26, "Node 26 has been Active LTS since 2026-10-28 (Node 24 is in maintenance)");
  const pinned = /(\d+)/.exec(pkg.devDependencies.node!)?.[1];
  t.equal(String(major), pinned, "the same major as the Node the test suite runs on");
  const minimum = /^>=(\d+)\./.exec(pkg.engines.node)?.[1];
  t.ok(major >= Number(minimum), `satisfies engines.node ${pkg.engines.node}`);
});

t.test("the build stage compiles with the dev dependencies and no install scripts", async (t) => {
  const runs = all(build, "RUN").map((each) => each.args);
  t.ok(
    runs.some((args) => /^npm ci\b.*--ignore-scripts/.test(args)),
    "npm ci --ignore-scripts",
  );
  t.ok(runs.includes("npm run build"), "npm run build");
  t.equal(pkg.scripts.build, "tsc -p tsconfig.build.json", "which compiles with tsconfig.build.json");
  const copied = all(build, "COPY").flatMap((each) => each.words.slice(0, -1));
  for (const file of ["package.json", "package-lock.json", "tsconfig.json", "tsconfig.build.json", "src"]) {
    t.ok(copied.includes(file), `the build stage has ${file}`);
  }
});

t.test("the runtime stage installs production dependencies only and copies the built output", async (t) => {
  const runs = all(runtime, "RUN").map((each) => each.args);
  t.ok(
    runs.some((args) => /^npm ci --omit=dev --ignore-scripts\b/.test(args)),
    "npm ci --omit=dev --ignore-scripts: no compiler, no `node` download, no `prepare`",
  );
  const fromBuild = all(runtime, "COPY").filter((each) => each.flags.from === "build");
  t.equal(fromBuild.length, 1, "one thing comes from the build stage");
  const [source, destination] = fromBuild[0]!.words;
  const buildCopy = all(build, "RUN").find((each) => each.args === "npm run build")!;
  t.equal(
    source,
    path.posix.join(workdirAt(build, buildCopy), buildConfig.compilerOptions.outDir),
    "the compiler's outDir in the build stage",
  );
  t.equal(
    path.posix.resolve(workdirAt(runtime, fromBuild[0]!), destination!),
    "/app/dist",
    "lands in /app/dist",
  );
  t.notOk(
    all(runtime, "COPY").some((each) => each.words.includes("src") || each.words.includes("test")),
    "no sources or tests in the runtime image",
  );
});

t.test("the runtime stage runs as a numeric non-root user, after every file is in place", async (t) => {
  const user = last(runtime, "USER");
  t.ok(user, "sets USER");
  const [uid, gid] = user!.words[0]!.split(":").map(Number);
  t.ok(
    Number.isInteger(uid) && uid! > 0,
    `a numeric uid other than 0 (${uid}), which runAsNonRoot can verify`,
  );
  t.ok(Number.isInteger(gid) && gid! > 0, `and a numeric gid (${gid})`);
  const index = runtime.instructions.indexOf(user!);
  t.notOk(
    runtime.instructions.slice(index).some((each) => each.keyword === "COPY" || each.keyword === "RUN"),
    "files are owned by root, so mtlsd cannot change them",
  );
});

t.test("the entrypoint runs node directly, so SIGTERM reaches mtlsd and starts the drain", async (t) => {
  const entrypoint = last(runtime, "ENTRYPOINT")!;
  const cmd = last(runtime, "CMD")!;
  t.ok(entrypoint.execForm, "ENTRYPOINT in exec form: no /bin/sh -c between Docker and node");
  t.ok(cmd.execForm, "CMD in exec form too");
  t.same(entrypoint.words, ["node", `/app/${pkg.bin.mtlsd}`], "node runs the package's bin");
  t.same(cmd.words, ["run"], "`mtlsd run`, which reads $MTLSD_CONFIG");
  const env = all(runtime, "ENV")
    .map((each) => each.args)
    .join(" ");
  t.match(env, /MTLSD_CONFIG=\/etc\/mtlsd\/mtlsd\.yaml/, "pointed at the mounted config");
  t.match(env, /NODE_ENV=production/);
  t.same(
    last(runtime, "EXPOSE")?.words.map(Number).sort(),
    [15000, 15001, 15006],
    "the default inbound, outbound and admin ports",
  );
});

t.test("the HEALTHCHECK asks /healthz with the script shipped in the image", async (t) => {
  const check = last(runtime, "HEALTHCHECK")!;
  t.ok(check.flags.CMD && check.execForm, "CMD in exec form");
  t.same(check.words, ["node", "/app/healthcheck.mjs"]);
  const copy = all(runtime, "COPY").find((each) => each.words[0] === "deploy/docker/healthcheck.mjs");
  t.ok(copy, "the script is copied in");
  t.equal(path.posix.resolve(workdirAt(runtime, copy!), copy!.words[1]!), "/app/healthcheck.mjs");
  t.ok(
    Number.parseInt(check.flags.timeout!, 10) * 1000 > 2000,
    "Docker's timeout outlasts the script's own 2s",
  );
  t.match(
    readRepoFile("deploy/docker/healthcheck.mjs"),
    '"http://127.0.0.1:15000/healthz"',
    "admin's default",
  );
});

t.test("the runtime stage ships the Workload API proto where the built client reads it", async (t) => {
  const copy = all(runtime, "COPY").find((each) => each.words[0] === "proto");
  t.ok(copy, "proto/ is copied in");
  // dist/credentials/workload-api.js reads ../../proto/workload.proto, as src/credentials/ does.
  t.equal(path.posix.resolve(workdirAt(runtime, copy!), copy!.words[1]!), "/app/proto");
  t.ok(existsSync(path.join(REPO, "proto/workload.proto")));
  t.ok((pkg as { files?: string[] }).files?.includes("proto"), "and the npm package includes it");
});

t.test("every file the Dockerfile copies from the context exists and passes .dockerignore", async (t) => {
  const sources = dockerfile.stages.flatMap((stage) =>
    all(stage, "COPY")
      .filter((each) => !each.flags.from)
      .flatMap((each) => each.words.slice(0, -1)),
  );
  t.ok(sources.length >= 6, `copies ${sources.join(", ")}`);
  for (const source of sources) {
    const full = path.join(REPO, source);
    t.ok(existsSync(full), `${source} exists`);
    const files = statSync(full).isDirectory() ? walk(full) : [full];
    const kept = files.filter((file) => !ignore.excluded(path.relative(REPO, file)));
    t.same(kept.length, files.length, `${source}: all ${files.length} files reach the builder`);
  }
});

t.test(".dockerignore keeps keys, dependencies, tests and history out of the build context", async (t) => {
  for (const file of [
    "node_modules/undici/index.js",
    ".git/config",
    "dist/cli/main.js",
    "test/helpers/pki.ts",
    "bench/run.ts",
    "deploy/compose/certs/orders/tls.key",
    "tls.key",
    "coverage/lcov.info",
    ".env",
    "Dockerfile",
  ]) {
    t.ok(ignore.excluded(file), `${file} stays out`);
  }
});

/** Every file under a directory. */
function walk(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) =>
    entry.isDirectory() ? walk(path.join(dir, entry.name)) : [path.join(dir, entry.name)],
  );
}

/** Runs the shipped healthcheck script against a URL; resolves with its exit code and stderr (bounded). */
function healthcheck(url: string): Promise<{ code: number | null; stderr: string }> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [HEALTHCHECK_SCRIPT],
      { env: { MTLSD_HEALTHCHECK_URL: url }, timeout: 10_000 },
      (error, _stdout, stderr) =>
        resolve({ code: error ? (typeof error.code === "number" ? error.code : null) : 0, stderr }),
    );
  });
}

/** A stand-in for the admin listener that answers /healthz as told. */
async function adminStandIn(t: TestContext, answer: (res: http.ServerResponse) => void): Promise<string> {
  const server = http.createServer((req, res) =>
    req.url === "/healthz" ? answer(res) : res.writeHead(404).end(),
  );
  server.listen(0, "127.0.0.1");
  await new Promise((resolve) => server.once("listening", resolve));
  t.teardown(() => {
    server.closeAllConnections();
    server.close();
  });
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}/healthz`;
}

t.test("the healthcheck exits 0 when /healthz answers 200", async (t) => {
  const url = await adminStandIn(t, (res) =>
    res.writeHead(200, { "content-type": "application/json" }).end('{"alive":true}'),
  );
  t.same(await healthcheck(url), { code: 0, stderr: "" });
});

t.test("the healthcheck exits 1 and says why when /healthz answers otherwise", async (t) => {
  const url = await adminStandIn(t, (res) => res.writeHead(503).end());
  const result = await healthcheck(url);
  t.equal(result.code, 1);
  t.equal(result.stderr, `unhealthy: ${url}: status 503\n`);
});

t.test("the healthcheck exits 1 when nothing listens", async (t) => {
  const url = await adminStandIn(t, () => {});
  const closed = url.replace(/:\d+\//, ":1/");
  const result = await healthcheck(closed);
  t.equal(result.code, 1);
  t.match(result.stderr, `unhealthy: ${closed}: connect ECONNREFUSED`);
});

t.test("the healthcheck gives up on a hung admin listener within its own timeout", async (t) => {
  const url = await adminStandIn(t, () => {}); // accepts, never answers
  const result = await healthcheck(url);
  t.equal(result.code, 1, "unhealthy, not killed by Docker's timeout");
  t.equal(result.stderr, `unhealthy: ${url}: no answer within 2000ms\n`);
});
