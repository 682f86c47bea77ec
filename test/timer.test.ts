// Timer: the one timer per connection that H1Client arms, refreshes and stops request by request.
import { execFile } from "node:child_process";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import t from "tap";
import { Timer } from "../src/proxy/timer.ts";

function counter(): { fired: number; fire: () => void } {
  const state = {
    fired: 0,
    fire: () => {
      state.fired++;
    },
  };
  return state;
}

t.test("fires once, after its time, and is armed until then", async (t) => {
  const timer = new Timer();
  const c = counter();
  timer.arm(30, c.fire);
  t.ok(timer.armed);
  await sleep(5);
  t.equal(c.fired, 0, "not before its time");
  await sleep(80);
  t.equal(c.fired, 1);
  t.notOk(timer.armed, "not armed once fired");
  await sleep(60);
  t.equal(c.fired, 1, "only once");
  timer.close();
});

t.test("a stopped timer does not fire; armed again, it fires with the new callback", async (t) => {
  const timer = new Timer();
  const first = counter();
  const second = counter();
  timer.arm(30, first.fire);
  timer.stop();
  t.notOk(timer.armed);
  // Its Timeout runs out while stopped, and must be restarted by the next arm.
  await sleep(80);
  t.equal(first.fired, 0);
  timer.arm(30, second.fire);
  await sleep(100);
  t.equal(first.fired, 0);
  t.equal(second.fired, 1);
  timer.close();
});

t.test("arming again before it fires starts the wait over", async (t) => {
  const timer = new Timer();
  const c = counter();
  timer.arm(60, c.fire);
  for (let i = 0; i < 4; i++) {
    await sleep(30);
    timer.arm(60, c.fire);
  }
  t.equal(c.fired, 0, "re-armed every 30 ms, a 60 ms timer never fired");
  await sleep(120);
  t.equal(c.fired, 1);
  timer.close();
});

t.test("refresh restarts an armed wait and does nothing to a stopped one", async (t) => {
  const timer = new Timer();
  const c = counter();
  timer.arm(60, c.fire);
  for (let i = 0; i < 4; i++) {
    await sleep(30);
    timer.refresh();
  }
  t.equal(c.fired, 0);
  timer.stop();
  timer.refresh();
  await sleep(120);
  t.equal(c.fired, 0, "refresh did not re-arm a stopped timer");
  timer.close();
});

t.test("a new duration replaces the wait", async (t) => {
  const timer = new Timer();
  const long = counter();
  const short = counter();
  timer.arm(10_000, long.fire);
  timer.arm(20, short.fire);
  await sleep(80);
  t.equal(short.fired, 1);
  t.equal(long.fired, 0);
  timer.arm(10_000, long.fire);
  timer.close();
});

t.test("a closed timer cannot be armed again", async (t) => {
  const timer = new Timer();
  const c = counter();
  timer.arm(20, c.fire);
  timer.close();
  timer.arm(20, c.fire);
  t.notOk(timer.armed);
  await sleep(80);
  t.equal(c.fired, 0);
});

t.test("stopped, or armed with ref false, it does not keep the process alive", async (t) => {
  const module = fileURLToPath(new URL("../src/proxy/timer.ts", import.meta.url));
  // Exits on its own, or is killed after 4 s (an error).
  const run = (script: string) =>
    new Promise<void>((resolve, reject) => {
      execFile(
        process.execPath,
        ["--input-type=module", "-e", `import { Timer } from ${JSON.stringify(module)};\n${script}`],
        { timeout: 4000 },
        (error) => (error ? reject(error) : resolve()),
      );
    });
  await t.resolves(run("const t = new Timer(); t.arm(60_000, () => {}); t.stop();"), "stopped");
  await t.resolves(run("const t = new Timer(); t.arm(60_000, () => {}, false);"), "armed unref'd");
  await t.resolves(
    run("const t = new Timer(); t.arm(60_000, () => {}); t.arm(60_000, () => {}, false);"),
    "armed ref'd, then again unref'd",
  );
  await t.rejects(run("const t = new Timer(); t.arm(60_000, () => {});"), "an armed ref'd timer holds it");
  await t.rejects(
    run("const t = new Timer(); t.arm(60_000, () => {}); t.stop(); t.arm(60_000, () => {});"),
    "armed again after a stop, it holds it again",
  );
});
