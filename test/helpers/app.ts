// Starts an app (the echo app, or another fixture) as its own process, as a real app runs next to the sidecar.
import { type ChildProcess, spawn } from "node:child_process";
import { once } from "node:events";
import { createInterface } from "node:readline";

export interface AppProcess {
  port: number;
  url: string;
  child: ChildProcess;
  /** Every JSON line the app printed after its port: the events a test waits for. */
  events: Record<string, unknown>[];
  /** Resolves with the first event (already printed or still to come) that matches. */
  event(
    predicate: (event: Record<string, unknown>) => boolean,
    timeoutMs?: number,
  ): Promise<Record<string, unknown>>;
  stop(): Promise<void>;
}

const FIXTURES = new URL("../fixtures/", import.meta.url).pathname;

/** `fixture`: a file in test/fixtures that prints {"port": N} once listening (echo-app.ts by default). */
export async function startApp(
  port = 0,
  fixture = "echo-app.ts",
  env: NodeJS.ProcessEnv = {},
): Promise<AppProcess> {
  const child = spawn(process.execPath, [`${FIXTURES}${fixture}`], {
    env: { ...process.env, ...env, PORT: String(port) },
    stdio: ["ignore", "pipe", "inherit"],
  });
  const lines = createInterface({ input: child.stdout! });
  const [line] = (await Promise.race([
    once(lines, "line"),
    once(child, "exit").then(() => {
      throw new Error(`${fixture} exited before listening`);
    }),
  ])) as [string];
  const appPort = (JSON.parse(line) as { port: number }).port;
  const events: Record<string, unknown>[] = [];
  lines.on("line", (text) => events.push(JSON.parse(text) as Record<string, unknown>));
  return {
    port: appPort,
    url: `http://127.0.0.1:${appPort}`,
    child,
    events,
    async event(predicate, timeoutMs = 5000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const found = events.find(predicate);
        if (found) return found;
        if (Date.now() > deadline)
          throw new Error(`${fixture}: no matching event within ${timeoutMs} ms: ${JSON.stringify(events)}`);
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
    },
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill("SIGTERM");
      await once(child, "exit");
    },
  };
}
