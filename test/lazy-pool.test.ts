// LazyPool: undici's Pool built on first use, for the upgrades that are all either sidecar still needs it for.
import { once } from "node:events";
import http from "node:http";
import type { AddressInfo } from "node:net";
import t from "tap";
import type { Dispatcher, Pool } from "undici";
import { LazyPool } from "../src/proxy/lazy-pool.ts";

const server = http.createServer((req, res) => res.end(`hello ${req.url}`));
server.listen(0, "127.0.0.1");
await once(server, "listening");
t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())));
const origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;

function get(pool: LazyPool, path: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    let status = 0;
    let body = "";
    pool.dispatch(
      { origin, path, method: "GET", headers: {} },
      {
        onRequestStart() {},
        onResponseStart(_controller: Dispatcher.DispatchController, statusCode: number) {
          status = statusCode;
        },
        onResponseData(_controller: Dispatcher.DispatchController, chunk: Buffer) {
          body += chunk;
        },
        onResponseEnd() {
          resolve({ status, body });
        },
        onResponseError(_controller: Dispatcher.DispatchController | null, error: Error) {
          reject(error);
        },
      },
    );
  });
}

t.test(
  "the pool is built once, by the first dispatch, and requests made while undici loads all run",
  async (t) => {
    let built = 0;
    const pool = new LazyPool((undici) => {
      built++;
      return new undici.Pool(origin, { connections: 2 });
    });
    t.teardown(() => pool.destroy());
    t.equal(built, 0, "nothing is built before a request needs it");
    t.same(pool.stats, { connected: 0, pending: 0, running: 0 });
    const results = await Promise.all([get(pool, "/a"), get(pool, "/b"), get(pool, "/c")]);
    t.same(
      results.map((result) => result.body),
      ["hello /a", "hello /b", "hello /c"],
    );
    t.equal(built, 1);
    t.ok(pool.stats.connected >= 1, "stats are the pool's once it exists");
    t.equal((await get(pool, "/d")).body, "hello /d");
    t.equal(built, 1);
  },
);

t.test(
  "a close while the pool is being built closes it once built; requests dispatched before still run",
  async (t) => {
    let created: Pool | undefined;
    const pool = new LazyPool((undici) => {
      created = new undici.Pool(origin);
      return created;
    });
    const answer = get(pool, "/before-close");
    await pool.close();
    t.equal((await answer).body, "hello /before-close");
    t.ok(created?.closed, "the pool built after close() was called is closed");
    await t.rejects(
      get(pool, "/after-close"),
      { code: /^UND_ERR_(CLOSED|DESTROYED)$/ },
      "later requests fail",
    );
  },
);

t.test("destroy fails what is in flight; a pool never built closes at once", async (t) => {
  const never = new LazyPool(() => {
    throw new Error("not to be built");
  });
  await never.close();
  await never.destroy();
  t.pass("closing a pool nobody used builds nothing");
  const hanging = http.createServer(() => {});
  hanging.listen(0, "127.0.0.1");
  await once(hanging, "listening");
  t.teardown(() => {
    hanging.closeAllConnections();
    hanging.close();
  });
  const slowOrigin = `http://127.0.0.1:${(hanging.address() as AddressInfo).port}`;
  const pool = new LazyPool((undici) => new undici.Pool(slowOrigin));
  const inFlight = get(pool, "/hangs");
  await new Promise((resolve) => setTimeout(resolve, 100));
  await pool.destroy();
  await t.rejects(inFlight, { code: "UND_ERR_DESTROYED" });
});

t.test("a failure to build reaches the request's handler", async (t) => {
  const pool = new LazyPool(() => {
    throw new Error("no pool today");
  });
  await t.rejects(get(pool, "/x"), { message: "no pool today" });
});
