// `mtlsd run` sizes V8's heap for a sidecar unless the user chose: the flags it adds, and the real process it becomes.
import { spawn } from "node:child_process";
import { once } from "node:events";
import { readFile, writeFile } from "node:fs/promises";
import path from "node:path";
import { createInterface } from "node:readline";
import t from "tap";
import { stringify } from "yaml";
import { HEAP_DEFAULTS, heapReexec, missingHeapFlags } from "../src/cli/heap.ts";
import { startApp } from "./helpers/app.ts";
import { createTestPki, identityConfig } from "./helpers/pki.ts";

const CLI = new URL("../src/cli/main.ts", import.meta.url).pathname;
const DEFAULT_FLAGS = [...HEAP_DEFAULTS].map(([flag, value]) => `${flag}=${value}`);

t.test("with no heap flag given, both defaults are added", async (t) => {
  t.same(missingHeapFlags([], undefined), DEFAULT_FLAGS);
  t.same(missingHeapFlags(["--enable-source-maps"], "--trace-warnings"), DEFAULT_FLAGS);
});

t.test(
  "a heap flag the user gave on the command line or in NODE_OPTIONS is kept, in either spelling",
  async (t) => {
    t.same(missingHeapFlags(["--max-old-space-size=1024"], undefined), ["--max-semi-space-size=1"]);
    t.same(missingHeapFlags([], "--max_semi_space_size=16"), ["--max-old-space-size=256"]);
    t.same(missingHeapFlags(["--max-semi-space-size", "8"], "--max-old-space-size=64"), []);
  },
);

t.test(
  "the restart keeps the runtime, its flags and the arguments, and puts the defaults first",
  async (t) => {
    const reexec = heapReexec({
      execPath: "/usr/bin/node",
      execArgv: ["--enable-source-maps"],
      argv: ["/usr/bin/node", "/app/dist/cli/main.js", "run", "-c", "/etc/mtlsd/mtlsd.yaml"],
      env: {},
      sea: false,
      canExecve: true,
    });
    t.same(reexec, {
      file: "/usr/bin/node",
      args: [
        "/usr/bin/node",
        ...DEFAULT_FLAGS,
        "--enable-source-maps",
        "/app/dist/cli/main.js",
        "run",
        "-c",
        "/etc/mtlsd/mtlsd.yaml",
      ],
    });
  },
);

t.test(
  "no restart once the flags are there, in a single executable, without execve, or when turned off",
  async (t) => {
    const base = {
      execPath: "/usr/bin/node",
      execArgv: [] as string[],
      argv: ["/usr/bin/node", "main.js", "run"],
      env: {} as NodeJS.ProcessEnv,
      sea: false,
      canExecve: true,
    };
    t.equal(heapReexec({ ...base, execArgv: DEFAULT_FLAGS }), undefined);
    t.equal(heapReexec({ ...base, sea: true }), undefined);
    t.equal(heapReexec({ ...base, canExecve: false }), undefined);
    t.equal(heapReexec({ ...base, env: { MTLSD_HEAP_DEFAULTS: "off" } }), undefined);
  },
);

t.test("a real `mtlsd run` becomes, under the same PID, a process started with the defaults", async (t) => {
  const pki = await createTestPki();
  t.teardown(() => pki.cleanup());
  const app = await startApp();
  t.teardown(() => app.stop());
  const orders = await pki.identity("orders");
  const file = path.join(pki.dir, "heap.yaml");
  await writeFile(
    file,
    stringify({
      identity: identityConfig(pki, orders),
      inbound: {
        listen: "127.0.0.1:0",
        app: app.url,
        policy: {
          rules: [{ name: "any", action: "allow", from: ["spiffe://example.org/ns/frontend/sa/frontend"] }],
        },
      },
      admin: { listen: "127.0.0.1:0" },
    }),
  );

  const started = async (nodeFlags: string[]): Promise<string[]> => {
    const child = spawn(process.execPath, [...nodeFlags, CLI, "run", "-c", file], {
      stdio: ["ignore", "pipe", "inherit"],
    });
    const lines = createInterface({ input: child.stdout });
    for await (const line of lines) if (line.includes('"mtlsd started"')) break;
    // The PID the test spawned is the sidecar that started: execve replaced it, nothing stayed behind.
    const cmdline = (await readFile(`/proc/${child.pid}/cmdline`, "utf8")).split("\0");
    child.kill("SIGTERM");
    const [code] = await once(child, "exit");
    t.equal(code, 0, "the restarted process drains and exits 0 on SIGTERM");
    return cmdline;
  };

  const plain = await started([]);
  for (const flag of DEFAULT_FLAGS) t.ok(plain.includes(flag), `started with ${flag}`);
  t.ok(plain.includes("run") && plain.includes(file), "with the same command and config");

  const chosen = await started(["--max-old-space-size=512"]);
  t.ok(chosen.includes("--max-semi-space-size=1"), "the default the user left alone is added");
  t.ok(chosen.includes("--max-old-space-size=512"), "and the user's own flag is still there");
  t.notOk(chosen.includes("--max-old-space-size=256"), "the one the user set is theirs");
});
