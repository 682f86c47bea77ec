#!/usr/bin/env node
// Entry point of the `mtlsd` command: hands argv to the CLI and exits with its code.
import { isSea } from "node:sea";
import { heapReexec } from "./heap.ts";
import { runCli } from "./index.ts";

// A sidecar is sized for sharing its host: `run` restarts itself (same PID) with the heap defaults of heap.ts.
if (process.argv[2] === "run") {
  const reexec = heapReexec({
    execPath: process.execPath,
    execArgv: process.execArgv,
    argv: process.argv,
    env: process.env,
    sea: isSea(),
    canExecve: typeof process.execve === "function",
  });
  if (reexec) process.execve!(reexec.file, reexec.args, process.env);
}

const code = await runCli(process.argv.slice(2), {
  stdout: process.stdout,
  stderr: process.stderr,
  env: process.env,
  cwd: process.cwd(),
});
process.exitCode = code;
// Listeners, pools and timers are closed by the commands; exit explicitly so a stray handle cannot hang.
setImmediate(() => process.exit(code));
