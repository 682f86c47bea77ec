#!/usr/bin/env node
// Entry point of the `mtlsd` command: hands argv to the CLI and exits with its code.
import cluster from "node:cluster";
import { isSea } from "node:sea";
import { heapReexec } from "./heap.ts";
import { runCli } from "./index.ts";

const args = process.argv.slice(2);
// A `workers: N` worker is forked with the primary's script as its first argument; the single binary has no
// script but itself, which then arrives as an argument of its own: it is not the command.
if (cluster.isWorker && args[0] === process.execPath) args.shift();

// A sidecar is sized for sharing its host: `run` restarts itself (same PID) with the heap defaults of heap.ts.
// A worker of `workers: N` was forked with its primary's flags, those included.
if (args[0] === "run" && !cluster.isWorker) {
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

const code = await runCli(args, {
  stdout: process.stdout,
  stderr: process.stderr,
  env: process.env,
  cwd: process.cwd(),
});
process.exitCode = code;
// Listeners, pools and timers are closed by the commands; exit explicitly so a stray handle cannot hang.
setImmediate(() => process.exit(code));
