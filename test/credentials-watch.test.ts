// The directory watch: which file-system events count as "the credentials may have changed", and surviving replacement.
import { mkdir, mkdtemp, rename, rm, symlink, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import t from "tap";
import { DirectoryWatch } from "../src/credentials/index.ts";
import { createLogger } from "../src/telemetry/index.ts";
import { sleep, waitFor } from "./helpers/rotation.ts";
import { captureLogs } from "./helpers/sidecar.ts";

/** The subtest handed to a `t.test` callback. */
type TestContext = Parameters<Parameters<typeof t.test>[0]>[0];

const root = await mkdtemp(path.join(os.tmpdir(), "mtlsd-watch-"));
t.teardown(() => rm(root, { recursive: true, force: true }));
let dirs = 0;

/** A directory with a tls.crt in it, and a watch on that file counting its events. */
async function watched(t: TestContext) {
  const dir = path.join(root, `d${++dirs}`);
  await mkdir(dir);
  const file = path.join(dir, "tls.crt");
  await writeFile(file, "one");
  const { stream } = captureLogs();
  let events = 0;
  const watch = new DirectoryWatch([file], () => events++, createLogger({ level: "warn", stream }));
  watch.arm();
  t.teardown(() => watch.close());
  return { dir, file, watch, events: () => events };
}

t.test("a file rewritten in place is an event", async (t) => {
  const { file, events } = await watched(t);
  await writeFile(file, "two");
  await waitFor("an event", () => events() > 0);
  t.pass("the rewrite was seen");
});

t.test("a file renamed over the watched one is an event, and so is the next one", async (t) => {
  const { dir, file, events } = await watched(t);
  for (const content of ["two", "three"]) {
    const seen = events();
    await writeFile(path.join(dir, "tls.crt.tmp"), content);
    await rename(path.join(dir, "tls.crt.tmp"), file);
    await waitFor(`an event for ${content}`, () => events() > seen);
  }
  t.pass("both replacements were seen: the watch is on the directory, not the replaced inode");
});

t.test("other files in the same directory are not events", async (t) => {
  const { dir, events } = await watched(t);
  await writeFile(path.join(dir, "app.log"), "unrelated");
  await sleep(300);
  t.equal(events(), 0, "an app.log written beside the certificate wakes nothing");
});

t.test("a symlink into another directory also watches the directory it points into", async (t) => {
  const target = path.join(root, `target${++dirs}`);
  await mkdir(target);
  await writeFile(path.join(target, "svid.pem"), "one");
  const linkDir = path.join(root, `links${dirs}`);
  await mkdir(linkDir);
  await symlink(path.join(target, "svid.pem"), path.join(linkDir, "tls.crt"));
  let events = 0;
  const { stream } = captureLogs();
  const watch = new DirectoryWatch(
    [path.join(linkDir, "tls.crt")],
    () => events++,
    createLogger({ level: "warn", stream }),
  );
  watch.arm();
  t.teardown(() => watch.close());
  t.same(watch.directories.sort(), [linkDir, target].sort(), "both directories are watched");
  await writeFile(path.join(target, "svid.pem"), "two");
  await waitFor("an event from the target directory", () => events > 0);
  t.pass("the rewrite behind the link was seen");
});

t.test("a directory replaced by a new one is watched again once re-armed (as each poll does)", async (t) => {
  const { dir, file, watch, events } = await watched(t);
  await rename(dir, `${dir}.old`);
  await mkdir(dir);
  await sleep(100);
  const before = events();
  await writeFile(file, "in the new directory");
  await sleep(300);
  t.equal(events(), before, "the old watch follows the old directory and hears nothing");
  watch.arm();
  await writeFile(file, "again");
  await waitFor("an event in the new directory", () => events() > before);
  t.pass("the new directory is watched");
});
