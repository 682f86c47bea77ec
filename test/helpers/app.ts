// Starts the echo app as its own process, as a real app runs next to the sidecar.
import { type ChildProcess, spawn } from "node:child_process";
import { once } from "node:events";
import { createInterface } from "node:readline";

export interface AppProcess {
  port: number;
  url: string;
  child: ChildProcess;
  stop(): Promise<void>;
}

const ECHO_APP = new URL("../fixtures/echo-app.ts", import.meta.url).pathname;

export async function startApp(port = 0): Promise<AppProcess> {
  const child = spawn(process.execPath, [ECHO_APP], {
    env: { ...process.env, PORT: String(port) },
    stdio: ["ignore", "pipe", "inherit"],
  });
  const lines = createInterface({ input: child.stdout! });
  const [line] = (await Promise.race([
    once(lines, "line"),
    once(child, "exit").then(() => {
      throw new Error("echo app exited before listening");
    }),
  ])) as [string];
  const appPort = (JSON.parse(line) as { port: number }).port;
  return {
    port: appPort,
    url: `http://127.0.0.1:${appPort}`,
    child,
    async stop() {
      if (child.exitCode !== null) return;
      child.kill("SIGTERM");
      await once(child, "exit");
    },
  };
}
