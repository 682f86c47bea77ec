#!/usr/bin/env node
// Entry point of the `mtlsd` command: hands argv to the CLI and exits with its code.
import { runCli } from "./index.ts";

const code = await runCli(process.argv.slice(2), {
  stdout: process.stdout,
  stderr: process.stderr,
  env: process.env,
  cwd: process.cwd(),
});
process.exitCode = code;
// Listeners, pools and timers are closed by the commands; exit explicitly so a stray handle cannot hang.
setImmediate(() => process.exit(code));
