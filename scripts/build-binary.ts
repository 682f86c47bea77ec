// Builds the single `mtlsd` executable for linux-x64 (Node's single executable applications) and its release tarball.
//
// Steps: bundle src/cli/main.ts and its dependencies into one ES module with esbuild (a SEA runs one script and
// cannot load files from node_modules), strip the pinned Node binary's debug symbols, let `node --build-sea`
// inject the bundle into it, then pack the binary with the files a VM install needs, and their SHA-256 sums.
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { chmodSync, copyFileSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import path from "node:path";
import { parseArgs } from "node:util";
import { build } from "esbuild";
import { HEAP_DEFAULTS } from "../src/cli/heap.ts";

const ROOT = new URL("../", import.meta.url).pathname;
const { values } = parseArgs({
  options: {
    out: { type: "string", default: path.join(ROOT, "build/binary") },
    "no-tarball": { type: "boolean", default: false },
  },
});
const OUT = path.resolve(values.out!);
const { version } = JSON.parse(readFileSync(path.join(ROOT, "package.json"), "utf8")) as { version: string };
const RELEASE = `mtlsd-${version}-linux-x64`;

if (process.platform !== "linux" || process.arch !== "x64") {
  process.stderr.write(
    `build-binary: builds for linux-x64 only, and this is ${process.platform}-${process.arch}\n`,
  );
  process.exit(2);
}

rmSync(OUT, { recursive: true, force: true });
mkdirSync(OUT, { recursive: true });
const bundle = path.join(OUT, "mtlsd.mjs");
const started = performance.now();

// One ES module, so main.ts's top-level await and import.meta work as in development. Dependencies written as
// CommonJS (pino, prom-client) call require() for Node's built-in modules: the banner gives the module one.
await build({
  entryPoints: [path.join(ROOT, "src/cli/main.ts")],
  bundle: true,
  platform: "node",
  format: "esm",
  target: "node22",
  outfile: bundle,
  minify: true,
  // Class and function names stay readable in stack traces and in `error.name`.
  keepNames: true,
  legalComments: "external",
  banner: {
    js: "import { createRequire as __mtlsdRequire } from 'node:module'; const require = __mtlsdRequire(import.meta.url);",
  },
  logLevel: "warning",
});

// The Node that builds the SEA must be the one it is injected into: the pinned one running this script.
// Its symbol tables are a quarter of its size and nothing at run time reads them (the dynamic symbols stay).
const node = path.join(OUT, "node");
copyFileSync(process.execPath, node);
chmodSync(node, 0o755);
try {
  execFileSync("strip", [node], { stdio: "inherit" });
} catch (error) {
  process.stderr.write(
    `build-binary: strip failed (${(error as Error).message}); the binary keeps its symbols\n`,
  );
}

const binary = path.join(OUT, "mtlsd");
const seaConfig = path.join(OUT, "sea-config.json");
writeFileSync(
  seaConfig,
  JSON.stringify(
    {
      main: bundle,
      mainFormat: "module",
      executable: node,
      output: binary,
      disableExperimentalSEAWarning: true,
      // V8's compiled code travels in the binary: startup skips parsing and compiling the bundle.
      useCodeCache: true,
      // The heap sizing `mtlsd run` restarts itself with under `node` (src/cli/heap.ts); a SEA cannot re-exec.
      execArgv: [...HEAP_DEFAULTS].map(([flag, value]) => `${flag}=${value}`),
      assets: { "package.json": path.join(ROOT, "package.json") },
    },
    null,
    2,
  ),
);
execFileSync(process.execPath, ["--build-sea", seaConfig], { stdio: "inherit" });
rmSync(node);
const seconds = ((performance.now() - started) / 1000).toFixed(1);
process.stdout.write(`built ${binary} (${mib(statSync(binary).size)} MiB) in ${seconds} s\n`);

if (!values["no-tarball"]) {
  // The release: the binary, what its docs install next to it, and the sums to check them.
  const stage = path.join(OUT, RELEASE);
  mkdirSync(stage);
  const files: [string, string][] = [
    [binary, "mtlsd"],
    [path.join(ROOT, "config/mtlsd.example.yaml"), "mtlsd.example.yaml"],
    [path.join(ROOT, "config/mtlsd.schema.json"), "mtlsd.schema.json"],
    [path.join(ROOT, "deploy/systemd/mtlsd.service"), "mtlsd.service"],
    [path.join(ROOT, "deploy/systemd/mtlsd.sysusers"), "mtlsd.sysusers"],
    [path.join(ROOT, "deploy/systemd/mtlsd.env"), "mtlsd.env"],
    [path.join(ROOT, "deploy/systemd/mtlsd.yaml"), "mtlsd.yaml"],
  ];
  const sums: string[] = [];
  for (const [from, name] of files) {
    copyFileSync(from, path.join(stage, name));
    sums.push(`${sha256(path.join(stage, name))}  ${name}`);
  }
  chmodSync(path.join(stage, "mtlsd"), 0o755);
  writeFileSync(path.join(stage, "SHA256SUMS"), `${sums.join("\n")}\n`);

  const tarball = path.join(OUT, `${RELEASE}.tar.gz`);
  // Reproducible: sorted names, one owner, the time of the commit rather than of the build.
  const mtime = commitTime();
  execFileSync(
    "tar",
    [
      "--sort=name",
      `--mtime=@${mtime}`,
      "--owner=0",
      "--group=0",
      "--numeric-owner",
      // gzip -n leaves the name and time out of the header, so the same inputs give the same bytes.
      "--use-compress-program=gzip -n",
      "-C",
      OUT,
      "-cf",
      tarball,
      RELEASE,
    ],
    { stdio: "inherit" },
  );
  writeFileSync(`${tarball}.sha256`, `${sha256(tarball)}  ${path.basename(tarball)}\n`);
  process.stdout.write(
    `packed ${tarball} (${mib(statSync(tarball).size)} MiB) and ${path.basename(tarball)}.sha256\n`,
  );
}

function sha256(file: string): string {
  return createHash("sha256").update(readFileSync(file)).digest("hex");
}

function mib(bytes: number): string {
  return (bytes / 1024 / 1024).toFixed(1);
}

function commitTime(): number {
  try {
    return Number(execFileSync("git", ["log", "-1", "--format=%ct"], { cwd: ROOT, encoding: "utf8" }).trim());
  } catch {
    return 0;
  }
}
