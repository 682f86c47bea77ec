// `mtlsd run` exits right after its drain: the asynchronous log destination must have written every line first,
// "mtlsd stopped" last among them.

import { once } from "node:events";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { pino } from "pino";
import t from "tap";
import { createLogger, logsWritten } from "../src/telemetry/index.ts";

t.test(
  "logsWritten resolves once every line queued on the asynchronous destination is in the file",
  async (t) => {
    const dir = await mkdtemp(path.join(tmpdir(), "mtlsd-log-"));
    t.teardown(() => rm(dir, { recursive: true, force: true }));
    const file = path.join(dir, "out.log");
    const stream = pino.destination({ dest: file, sync: false });
    await once(stream, "ready");
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
