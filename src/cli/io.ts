// What a CLI command may touch of the outside world, passed in so tests can run commands in-process.
export interface CliIo {
  stdout: NodeJS.WritableStream;
  stderr: NodeJS.WritableStream;
  env: NodeJS.ProcessEnv;
  cwd: string;
  /** Where SIGTERM/SIGINT (drain and stop; a second one exits at once) and SIGHUP (reload credentials and policy) come from; the process by default. */
  signals?: NodeJS.EventEmitter;
}

/** Exit codes (DESIGN.md): 0 ok, 1 runtime failure, 2 usage or config error. */
export const EXIT_OK = 0;
export const EXIT_FAILURE = 1;
export const EXIT_USAGE = 2;

export class UsageError extends Error {
  override name = "UsageError";
}
