// The upstream HTTP/1.1 client against a real TCP server that answers with hand-written bytes: framing the
// client must get right, framing it must refuse, and the pool's reuse, retry, limit and close rules.
import net from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import t, { type Test } from "tap";
import { Origin, tcpConnector } from "../src/proxy/index.ts";
import type { DispatchController, OriginOptions } from "../src/proxy/origin.ts";

/** Answers each request on a connection with what `respond` writes; counts connections and requests. */
interface Scripted {
  port: number;
  connections: number;
  requests: string[];
  close(): Promise<void>;
}

type Respond = (socket: net.Socket, request: string, index: number) => void | Promise<void>;

async function scripted(respond: Respond): Promise<Scripted> {
  const sockets = new Set<net.Socket>();
  const state: Scripted = {
    port: 0,
    connections: 0,
    requests: [],
    close: async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
  const server = net.createServer((socket) => {
    state.connections++;
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    socket.on("error", () => {});
    let buffered = "";
    socket.on("data", (data) => {
      buffered += data.toString("latin1");
      for (let end = buffered.indexOf("\r\n\r\n"); end !== -1; end = buffered.indexOf("\r\n\r\n")) {
        const request = buffered.slice(0, end + 4);
        buffered = buffered.slice(end + 4);
        state.requests.push(request);
        void respond(socket, request, state.requests.length - 1);
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  state.port = (server.address() as net.AddressInfo).port;
  return state;
}

interface Result {
  status: number;
  statusText: string;
  headers: string[];
  body: string;
  error?: Error & { code?: string };
}

interface RequestOptions {
  method?: string;
  headersTimeout?: number;
  bodyTimeout?: number;
  onData?: (controller: DispatchController) => void;
}

function request(origin: Origin, options: RequestOptions = {}): Promise<Result> {
  return new Promise((resolve) => {
    const result: Result = { status: 0, statusText: "", headers: [], body: "" };
    origin.dispatch(
      {
        method: options.method ?? "GET",
        path: "/thing?x=1",
        headers: ["accept", "*/*"],
        body: null,
        headersTimeout: options.headersTimeout ?? 5000,
        bodyTimeout: options.bodyTimeout ?? 5000,
      },
      {
        onRequestStart() {},
        onResponseStart(_controller, status, headers, statusText) {
          Object.assign(result, { status, headers, statusText });
        },
        onResponseData(controller, chunk) {
          result.body += chunk.toString("latin1");
          options.onData?.(controller);
        },
        onResponseEnd() {
          resolve(result);
        },
        onResponseError(_controller, error) {
          result.error = error;
          resolve(result);
        },
      },
    );
  });
}

function originFor(server: Scripted, overrides: Partial<OriginOptions> = {}): Origin {
  return new Origin({
    authority: `127.0.0.1:${server.port}`,
    connect: tcpConnector("127.0.0.1", server.port, 2000, "the test server"),
    connections: null,
    idleTimeoutMs: 10_000,
    ...overrides,
  });
}

/** A server whose every answer is `response`, and an origin in front of it; both closed by teardown. */
async function serving(
  t: Test,
  response: string | Respond,
  overrides: Partial<OriginOptions> = {},
): Promise<{ server: Scripted; origin: Origin }> {
  const respond: Respond = typeof response === "string" ? (socket) => void socket.write(response) : response;
  const server = await scripted(respond);
  const origin = originFor(server, overrides);
  t.teardown(async () => {
    await origin.destroy();
    await server.close();
  });
  return { server, origin };
}

t.test("a chunked response dribbled one byte at a time arrives whole, trailers dropped", async (t) => {
  const response =
    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n" +
    "5;ext=1\r\nhello\r\n7 \r\n, world\r\n0\r\nX-Checksum: abc\r\n\r\n";
  const { server, origin } = await serving(t, async (socket) => {
    for (const byte of response) {
      socket.write(byte);
      await sleep(1);
    }
  });
  const first = await request(origin);
  t.equal(first.error, undefined);
  t.equal(first.status, 200);
  t.equal(first.statusText, "OK");
  t.equal(first.body, "hello, world");
  t.same(first.headers, ["Content-Type", "text/plain", "Transfer-Encoding", "chunked"]);
  const second = await request(origin);
  t.equal(second.body, "hello, world");
  t.equal(server.connections, 1, "the connection is reused once the message is complete");
  t.match(
    server.requests[0],
    /^GET \/thing\?x=1 HTTP\/1\.1\r\naccept: \*\/\*\r\nhost: 127\.0\.0\.1:\d+\r\n\r\n$/,
  );
});

t.test("informational 100 and 103 heads are skipped for the final response", async (t) => {
  const { origin } = await serving(
    t,
    "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n" +
      "HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
  );
  const result = await request(origin);
  t.equal(result.status, 201);
  t.equal(result.body, "ok");
});

t.test("responses without a body: HEAD, 204, 304 and Content-Length: 0 keep the connection", async (t) => {
  const answers = [
    "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n",
    "HTTP/1.1 204 No Content\r\n\r\n",
    "HTTP/1.1 304 Not Modified\r\nContent-Length: 100\r\n\r\n",
    "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
  ];
  const { server, origin } = await serving(
    t,
    (socket, _request, index) => void socket.write(answers[index]!),
  );
  const results = [
    await request(origin, { method: "HEAD" }),
    await request(origin),
    await request(origin),
    await request(origin),
  ];
  t.same(
    results.map((r) => [r.status, r.body, r.error]),
    [
      [200, "", undefined],
      [204, "", undefined],
      [304, "", undefined],
      [200, "", undefined],
    ],
  );
  t.equal(server.connections, 1);
});

t.test("a body delimited by close is read to the end, and that connection is not reused", async (t) => {
  const { server, origin } = await serving(t, (socket) => {
    socket.end("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the very end");
  });
  t.equal((await request(origin)).body, "until the very end");
  t.equal((await request(origin)).body, "until the very end");
  t.equal(server.connections, 2);
});

t.test("whether a connection is kept follows the response's version and Connection header", async (t) => {
  const cases: Array<[string, string, number]> = [
    [
      "HTTP/1.1 with Connection: close",
      "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\na",
      2,
    ],
    ["HTTP/1.0 without keep-alive", "HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\na", 2],
    [
      "HTTP/1.0 with keep-alive",
      "HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 1\r\n\r\na",
      1,
    ],
    ["HTTP/1.1 plain", "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na", 1],
  ];
  for (const [name, response, connections] of cases) {
    t.test(name, async (t) => {
      const { server, origin } = await serving(t, response);
      t.equal((await request(origin)).body, "a");
      await sleep(20);
      t.equal((await request(origin)).body, "a");
      t.equal(server.connections, connections);
    });
  }
});

t.test("bytes after a complete response end that connection, not the response", async (t) => {
  const { server, origin } = await serving(
    t,
    "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n\r\n",
  );
  const first = await request(origin);
  t.equal(first.body, "ok");
  await sleep(20);
  t.equal(origin.stats.connected, 0, "the desynchronized connection was closed");
  t.equal((await request(origin)).body, "ok");
  t.equal(server.connections, 2);
});

t.test("Content-Length as a list of equal values is one length", async (t) => {
  const { origin } = await serving(
    t,
    "HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\nContent-Length: 3\r\n\r\nabc",
  );
  t.equal((await request(origin)).body, "abc");
});

t.test("ambiguous or malformed responses fail the exchange instead of being guessed at", async (t) => {
  const cases: Array<[string, string, RegExp]> = [
    ["a bad status line", "HTTP/1.1 2000 OK\r\n\r\n", /malformed status line/],
    ["not HTTP at all", "SSH-2.0-OpenSSH\r\n\r\n", /malformed status line/],
    [
      "obsolete line folding",
      "HTTP/1.1 200 OK\r\nX-A: 1\r\n  continued\r\nContent-Length: 0\r\n\r\n",
      /line folding/,
    ],
    ["a header without a name", "HTTP/1.1 200 OK\r\n: x\r\n\r\n", /malformed response header line/],
    [
      "a space before the colon",
      "HTTP/1.1 200 OK\r\nContent-Length : 0\r\n\r\n",
      /malformed response header line/,
    ],
    ["a NUL in a value", "HTTP/1.1 200 OK\r\nX-A: a\u0000b\r\n\r\n", /forbidden character/],
    [
      "Transfer-Encoding and Content-Length together",
      "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
      /both Transfer-Encoding and Content-Length/,
    ],
    [
      "a coding other than chunked",
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
      /Transfer-Encoding/,
    ],
    [
      "differing Content-Length headers",
      "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
      /differing response Content-Length "1,2"/,
    ],
    [
      "a negative Content-Length",
      "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
      /malformed or differing response Content-Length/,
    ],
    [
      "a list of unequal lengths",
      "HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n",
      /malformed or differing response Content-Length/,
    ],
    [
      "a chunk size that is not hex",
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
      /malformed chunk size/,
    ],
    [
      "a bare LF after a chunk size",
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\nab\r\n",
      /bare LF/,
    ],
    [
      "chunk data longer than its size",
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n",
      /not followed by CRLF/,
    ],
    [
      "a malformed trailer",
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nnot a trailer\r\n\r\n",
      /malformed trailer/,
    ],
    [
      "an endless chunk line",
      `HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;${"x".repeat(5000)}`,
      /too long/,
    ],
    ["a switch to another protocol", "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n", /101/],
    ["a head larger than 64 KiB", `HTTP/1.1 200 OK\r\nX-Big: ${"b".repeat(70_000)}`, /too large/],
    [
      "a complete head larger than 64 KiB",
      `HTTP/1.1 200 OK\r\nX-Big: ${"b".repeat(70_000)}\r\nContent-Length: 0\r\n\r\n`,
      /too large/,
    ],
  ];
  for (const [name, response, message] of cases) {
    t.test(name, async (t) => {
      const { origin } = await serving(t, response);
      const result = await request(origin);
      t.equal(result.error?.code, "MTLSD_UPSTREAM_PROTOCOL", result.error?.message ?? "no error");
      t.match(result.error?.message, message);
      await sleep(10);
      t.equal(origin.stats.connected, 0, "the connection is closed");
    });
  }
});

t.test("a connection closed part-way through a response or before one is an error", async (t) => {
  t.test("in the middle of a body", async (t) => {
    const { origin } = await serving(
      t,
      (socket) => void socket.end("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf"),
    );
    const result = await request(origin);
    t.equal(result.error?.code, "MTLSD_UPSTREAM_PROTOCOL");
    t.match(result.error?.message, /middle of its response/);
    t.equal(result.body, "half", "what arrived was passed on; the client sees the truncation");
  });
  t.test("before any byte, on a fresh connection: no retry", async (t) => {
    const { server, origin } = await serving(t, (socket) => void socket.end());
    const result = await request(origin);
    t.match(result.error?.message, /without a response/);
    t.equal(server.requests.length, 1);
  });
  t.test("reset by the server", async (t) => {
    const { origin } = await serving(t, (socket) => void socket.resetAndDestroy());
    const result = await request(origin);
    t.ok(result.error, "the exchange failed");
    t.match(result.error?.code, /ECONNRESET|MTLSD_UPSTREAM_/);
  });
});

t.test(
  "a reused connection that the server closed as we used it: idempotent requests go again, once",
  async (t) => {
    // The server answers the first request on each connection and hangs up on the second (the keep-alive race).
    const perSocket = new WeakMap<net.Socket, number>();
    const { server, origin } = await serving(t, (socket) => {
      const count = (perSocket.get(socket) ?? 0) + 1;
      perSocket.set(socket, count);
      if (count === 1) socket.write("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
      else socket.destroy();
    });
    t.equal((await request(origin)).body, "ok");
    const retried = await request(origin, { method: "GET" });
    t.equal(retried.error, undefined);
    t.equal(retried.body, "ok", "GET went again on a fresh connection");
    t.equal(server.connections, 2);
    const post = await request(origin, { method: "POST" });
    t.ok(post.error, "POST is not repeated: the app may have acted on it");
    t.equal(server.connections, 2);
  },
);

t.test("Keep-Alive: timeout from the server shortens how long an idle connection is kept", async (t) => {
  const { server, origin } = await serving(
    t,
    "HTTP/1.1 200 OK\r\nKeep-Alive: timeout=1\r\nContent-Length: 1\r\n\r\na",
  );
  await request(origin);
  await sleep(50);
  t.equal(origin.stats.connected, 0, "closed a second before the server's one-second timeout");
  await request(origin);
  t.equal(server.connections, 2);
});

t.test("idle connections close after idleTimeoutMs", async (t) => {
  const { origin } = await serving(t, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na", { idleTimeoutMs: 30 });
  await request(origin);
  t.equal(origin.stats.connected, 1);
  await sleep(150);
  t.equal(origin.stats.connected, 0);
});

t.test("a connection limit queues requests in order on the open connections", async (t) => {
  const { server, origin } = await serving(
    t,
    async (socket, _request, index) => {
      await sleep(30);
      socket.write(`HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n${index}`);
    },
    { connections: 1 },
  );
  const pending = [request(origin), request(origin), request(origin)];
  await sleep(5);
  t.same(origin.stats, { connected: 1, pending: 2, running: 1 });
  const results = await Promise.all(pending);
  t.same(
    results.map((r) => r.body),
    ["0", "1", "2"],
  );
  t.equal(server.connections, 1);
});

t.test("timeouts name their phase", async (t) => {
  t.test("no response head in time", async (t) => {
    const { origin } = await serving(t, () => {});
    const result = await request(origin, { headersTimeout: 50 });
    t.equal(result.error?.code, "MTLSD_UPSTREAM_HEADERS_TIMEOUT");
  });
  t.test("a body that stalls", async (t) => {
    const { origin } = await serving(t, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc");
    const result = await request(origin, { bodyTimeout: 50 });
    t.equal(result.error?.code, "MTLSD_UPSTREAM_BODY_TIMEOUT");
    t.equal(result.body, "abc");
  });
});

t.test("a paused exchange resumes and completes", async (t) => {
  const { origin } = await serving(t, async (socket) => {
    socket.write("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n");
    await sleep(20);
    socket.write("3\r\ndef\r\n0\r\n\r\n");
  });
  let paused = false;
  const result = await request(origin, {
    onData(controller) {
      if (paused) return;
      paused = true;
      controller.pause();
      setTimeout(() => controller.resume(), 50);
    },
  });
  t.equal(result.body, "abcdef");
});

t.test("an exchange aborted by its handler leaves nothing behind", async (t) => {
  const { server, origin } = await serving(t, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na");
  const error = await new Promise<Error>((resolve) => {
    origin.dispatch(
      { method: "GET", path: "/", headers: [], body: null, headersTimeout: 1000, bodyTimeout: 1000 },
      {
        onRequestStart(controller) {
          controller.abort(new Error("not wanted"));
        },
        onResponseStart() {},
        onResponseData() {},
        onResponseEnd() {},
        onResponseError(_controller, error) {
          resolve(error);
        },
      },
    );
  });
  t.equal(error.message, "not wanted");
  await sleep(20);
  t.equal(server.requests.length, 0, "nothing was sent");
  t.same(origin.stats, { connected: 0, pending: 0, running: 0 });
});

t.test(
  "close waits for in-flight requests; destroy fails queued ones; neither accepts new work",
  async (t) => {
    t.test("close", async (t) => {
      const { origin } = await serving(t, async (socket) => {
        await sleep(50);
        socket.write("HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone");
      });
      await request(origin);
      const inFlight = request(origin);
      await sleep(5);
      let closed = false;
      const closing = origin.close().then(() => {
        closed = true;
      });
      await sleep(10);
      t.equal(closed, false, "close waits for the request on the wire");
      t.equal((await inFlight).body, "done");
      await closing;
      t.same(origin.stats, { connected: 0, pending: 0, running: 0 });
      const late = await request(origin);
      t.equal(late.error?.code, "MTLSD_POOL_CLOSED");
    });
    t.test("close with nothing in flight resolves at once and closes idle connections", async (t) => {
      const { origin } = await serving(t, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na");
      await request(origin);
      t.equal(origin.stats.connected, 1);
      await origin.close();
      t.equal(origin.stats.connected, 0);
    });
    t.test("destroy", async (t) => {
      const { origin } = await serving(t, () => {}, { connections: 1 });
      const running = request(origin);
      const queued = request(origin);
      await sleep(10);
      await origin.destroy();
      t.equal((await running).error?.code, "MTLSD_UPSTREAM_CLOSED");
      t.equal((await queued).error?.code, "MTLSD_POOL_CLOSED");
    });
  },
);

t.test("an origin nobody listens on fails with the socket's error", async (t) => {
  const server = await scripted(() => {});
  const origin = originFor(server);
  await server.close();
  const result = await request(origin);
  t.equal(result.error?.code, "ECONNREFUSED");
  t.same(origin.stats, { connected: 0, pending: 0, running: 0 });
});
