// `mtlsd run` exits right after its drain: the asynchronous log destination must have written every line first,
// "mtlsd stopped" last among them.

import { type EventEmitter, once } from "node:events";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import t from "tap";
import { createLogger, logDestination, logsWritten } from "../src/telemetry/index.ts";

t.test(
  "logsWritten resolves once every line queued on the asynchronous destination is in the file",
  async (t) => {
    const dir = await mkdtemp(path.join(tmpdir(), "mtlsd-log-"));
    t.teardown(() => rm(dir, { recursive: true, force: true }));
    const file = path.join(dir, "out.log");
    const stream = logDestination(file);
    await once(stream as unknown as EventEmitter, "ready");
    const logger = createLogger({ level: "info", stream });
    const LINES = 5000;
    for (let i = 0; i < LINES; i++) logger.info({ i, padding: "x".repeat(200) }, "line");
    logger.info("mtlsd stopped");
    await logsWritten(logger);
    const lines = (await readFile(file, "utf8")).trim().split("\n");
    t.equal(lines.length, LINES + 1, "every line is written");
    t.match(JSON.parse(lines.at(-1)!), { msg: "mtlsd stopped" }, "the last one last");
  },
);

t.test("with a synchronous or in-memory destination there is nothing to wait for", async (t) => {
  const lines: string[] = [];
  const logger = createLogger({ level: "info", stream: { write: (line: string) => lines.push(line) } });
  logger.info("hello");
  await logsWritten(logger);
  t.equal(lines.length, 1);
});

t.test(
  "a batch smaller than its size is written by logsWritten, and by the periodic flush without it",
  async (t) => {
    const dir = await mkdtemp(path.join(tmpdir(), "mtlsd-log-"));
    t.teardown(() => rm(dir, { recursive: true, force: true }));
    const file = path.join(dir, "out.log");
    const stream = logDestination(file);
    await once(stream as unknown as EventEmitter, "ready");
    const logger = createLogger({ level: "info", stream });
    logger.info("first");
    logger.info("second");
    t.equal(await readFile(file, "utf8"), "", "two short lines wait for their batch");
    await logsWritten(logger);
    t.same(
      (await readFile(file, "utf8"))
        .trim()
        .split("\n")
        .map((line) => JSON.parse(line).msg),
      ["first", "second"],
      "logsWritten writes them, in order",
    );
    logger.info("third");
    // No flush asked for: the periodic flush (a fraction of a second) writes it; 5 s is only the test's patience.
    const deadline = Date.now() + 5000;
    while (!(await readFile(file, "utf8")).includes('"third"') && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    t.match(await readFile(file, "utf8"), '"msg":"third"', "a lone line is written without a flush");
    (stream as unknown as { destroy(): void }).destroy();
  },
);
