// Outlier detection for one endpoint, against a clock the test moves: when it is ejected, for how long, and back.
import t from "tap";
import { EndpointHealth } from "../src/outbound/index.ts";

const settings = { consecutiveFailures: 3, ejectFor: 1000, maxEjectFor: 5000 };

t.test("a failed connection ejects an endpoint at once, for ejectFor", async (t) => {
  const health = new EndpointHealth();
  const ejection = health.connectFailure(10_000, settings, "ECONNREFUSED");
  t.match(ejection, {
    reason: "connect_failure",
    detail: "ECONNREFUSED",
    forMs: 1000,
    until: 11_000,
    inARow: 1,
  });
  t.ok(health.isEjected(10_999));
  t.equal(health.ejectedUntil(10_500), 11_000);
  t.notOk(health.isEjected(11_000), "back when the time is up");
  t.equal(health.ejectedUntil(11_000), undefined);
});

t.test(
  "answers eject only after consecutiveFailures in a row; a success in between starts over",
  async (t) => {
    const health = new EndpointHealth();
    t.equal(health.failure(0, settings, "answered 503"), undefined);
    t.equal(health.failure(0, settings, "answered 503"), undefined);
    health.success(0);
    t.equal(health.failure(0, settings, "answered 503"), undefined);
    t.equal(health.failure(0, settings, "answered 503"), undefined);
    t.match(health.failure(0, settings, "answered 503"), { reason: "consecutive_failures", forMs: 1000 });
  },
);

t.test("each ejection in a row doubles the time, up to maxEjectFor", async (t) => {
  const health = new EndpointHealth();
  let now = 0;
  const times: number[] = [];
  for (let i = 0; i < 5; i++) {
    const ejection = health.connectFailure(now, settings, "ECONNREFUSED")!;
    times.push(ejection.forMs);
    now = ejection.until;
  }
  t.same(times, [1000, 2000, 4000, 5000, 5000]);
});

t.test("the first success after an ejection ends the run: the next ejection is short again", async (t) => {
  const health = new EndpointHealth();
  const first = health.connectFailure(0, settings, "ECONNREFUSED")!;
  health.connectFailure(first.until, settings, "ECONNREFUSED");
  t.equal(health.success(500), false, "an answer while ejected (a request already in flight) ends nothing");
  t.equal(health.success(10_000), true, "the first success once back says so");
  t.equal(health.success(10_001), false, "and only once");
  t.equal(health.connectFailure(20_000, settings, "ECONNREFUSED")!.forMs, 1000);
});

t.test("failures while ejected change nothing", async (t) => {
  const health = new EndpointHealth();
  health.connectFailure(0, settings, "ECONNREFUSED");
  t.equal(health.connectFailure(10, settings, "ECONNREFUSED"), undefined);
  for (let i = 0; i < 5; i++) t.equal(health.failure(20, settings, "answered 503"), undefined);
  t.equal(health.ejectedUntil(30), 1000, "still the first ejection's end");
});
