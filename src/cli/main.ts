#!/usr/bin/env node
// Entry point of the `mtlsd` command: hands argv to the CLI dispatcher and exits with its code.
console.log("mtlsd", process.version);
