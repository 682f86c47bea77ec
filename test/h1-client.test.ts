// H1Client, mtlsd's own HTTP/1.1 client (the inbound's to the app, the outbound's to its peers), driven directly
// against real servers on 127.0.0.1:
// node:http apps, and raw TCP apps that write exact bytes, so every framing, pooling and timing rule is seen on the wire.
import http from "node:http";
import http2 from "node:http2";
import net from "node:net";
import { PassThrough, Readable } from "node:stream";
import { setTimeout as sleep } from "node:timers/promises";
import t, { type Test } from "tap";
import type { Dispatcher } from "undici";
import { H1Client, type H1ClientOptions, type H1Connector, requestUnsent } from "../src/proxy/h1-client.ts";
import { H2Client, tcpConnector as h2cConnector } from "../src/proxy/h2-client.ts";

type CodedError = Error & { code?: string };
type Fields = Record<string, string | string[]>;
type Controller = Dispatcher.DispatchController;

/** What a handler saw of one exchange. */
interface Recorded {
  /** Callbacks in order: start, head, data, end, error. */
  events: string[];
  status?: number;
  statusMessage?: string;
  headers?: Fields;
  bodyless?: boolean;
  chunks: Buffer[];
  trailers?: Fields;
  error?: CodedError;
  controller?: Controller;
  /** Resolves at onResponseEnd or onResponseError. */
  settled: Promise<Recorded>;
  body(): string;
}

interface Hooks {
  onRequestStart?(controller: Controller, recorded: Recorded): void;
  onResponseStart?(controller: Controller, recorded: Recorded): void;
  /** Called after the chunk is recorded. */
  onResponseData?(controller: Controller, recorded: Recorded): void;
}

type Request = Partial<Dispatcher.DispatchOptions>;

/** Dispatches one request with a handler that records every callback. */
function start(client: Pick<H1Client, "dispatch">, request: Request, hooks: Hooks = {}): Recorded {
  let settle!: (recorded: Recorded) => void;
  const recorded: Recorded = {
    events: [],
    chunks: [],
    settled: new Promise((resolve) => (settle = resolve)),
    body: () => Buffer.concat(recorded.chunks).toString("latin1"),
  };
  client.dispatch({ method: "GET", path: "/", ...request } as Dispatcher.DispatchOptions, {
    onRequestStart(controller) {
      recorded.events.push("start");
      recorded.controller = controller;
      hooks.onRequestStart?.(controller, recorded);
    },
    onResponseStart(controller, status, headers, statusMessage, bodyless) {
      recorded.events.push("head");
      recorded.status = status;
      recorded.headers = headers as Fields;
      recorded.statusMessage = statusMessage;
      recorded.bodyless = bodyless;
      hooks.onResponseStart?.(controller, recorded);
    },
    onResponseData(controller, chunk) {
      recorded.events.push("data");
      recorded.chunks.push(Buffer.from(chunk));
      hooks.onResponseData?.(controller, recorded);
    },
    onResponseEnd(_controller, trailers) {
      recorded.events.push("end");
      recorded.trailers = trailers as Fields;
      settle(recorded);
    },
    onResponseError(_controller, error) {
      recorded.events.push("error");
      recorded.error = error as CodedError;
      settle(recorded);
    },
  });
  return recorded;
}

/** One request, awaited to its end or error. */
function send(
  client: Pick<H1Client, "dispatch">,
  request: Request = {},
  hooks: Hooks = {},
): Promise<Recorded> {
  return start(client, request, hooks).settled;
}

/** Waits until `condition` holds, polling; fails the wait after `ms`. */
async function until(condition: () => boolean, what: string, ms = 3000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}

function h1(t: Test, origin: string, options: Partial<H1ClientOptions> = {}): H1Client {
  const client = new H1Client({ origin, ...options });
  t.teardown(() => client.destroy());
  return client;
}

interface Listening {
  origin: string;
  port: number;
  /** The server side of every connection the client opened, in order. */
  sockets: net.Socket[];
}

async function listen(t: Test, server: net.Server): Promise<Listening> {
  const sockets: net.Socket[] = [];
  server.on("connection", (socket: net.Socket) => {
    sockets.push(socket);
    socket.on("error", () => {});
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  t.teardown(
    () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
      }),
  );
  const port = (server.address() as net.AddressInfo).port;
  return { origin: `http://127.0.0.1:${port}`, port, sockets };
}

/** A node:http app. Its keepAliveTimeout is long, so the client is the one to end idle connections. */
async function httpApp(t: Test, listener: http.RequestListener): Promise<Listening> {
  const server = http.createServer({ keepAliveTimeout: 60_000 }, listener);
  return listen(t, server);
}

/** A TCP app for exact bytes: `onConnection` gets each connection and its index. */
async function rawApp(
  t: Test,
  onConnection: (socket: net.Socket, index: number) => void,
): Promise<Listening> {
  let count = 0;
  const server = net.createServer((socket) => {
    socket.setNoDelay(true);
    onConnection(socket, count++);
  });
  return listen(t, server);
}

/** Everything a raw socket receives, as latin1, readable as it grows. */
function received(socket: net.Socket): { text: string } {
  const seen = { text: "" };
  socket.on("data", (chunk: Buffer) => {
    seen.text += chunk.toString("latin1");
  });
  return seen;
}

/**
 * A raw app answering each bodiless request head (on any connection) with the next of `responses`, as exact
 * bytes; `heads` collects the request heads in arrival order.
 */
async function scriptedApp(
  t: Test,
  responses: Array<string | ((socket: net.Socket) => void)>,
): Promise<Listening & { heads: string[] }> {
  const heads: string[] = [];
  const app = await rawApp(t, (socket) => {
    let buffer = "";
    socket.on("data", (chunk: Buffer) => {
      buffer += chunk.toString("latin1");
      for (let end = buffer.indexOf("\r\n\r\n"); end !== -1; end = buffer.indexOf("\r\n\r\n")) {
        heads.push(buffer.slice(0, end + 4));
        buffer = buffer.slice(end + 4);
        const response = responses[heads.length - 1];
        if (typeof response === "string") socket.write(response, "latin1");
        else response?.(socket);
      }
    });
  });
  return { ...app, heads };
}

const OK = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

/** Resolves once the app's side of a connection has closed (at once if it already has). */
async function closed(socket: net.Socket): Promise<void> {
  // Not events.once: an 'error' on the way (an app's parser refusing a cut request) would reject it.
  if (!socket.closed) await new Promise((resolve) => socket.once("close", resolve));
}

/** Resolves once the client has ended its side of a connection (at once if it already has). */
async function ended(socket: net.Socket): Promise<void> {
  if (!socket.readableEnded) await new Promise((resolve) => socket.once("end", resolve));
}

/** A port nothing listens on. */
async function closedPort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** `length` bytes of a pattern that shows a lost, repeated or reordered chunk. */
function pattern(length: number): Buffer {
  const buffer = Buffer.alloc(length);
  for (let i = 0; i < length; i += 4) buffer.writeUInt32LE(i, i);
  return buffer;
}

/** A body of `total` bytes made as it is read, in 64 KiB pieces. */
function largeBody(total: number): Readable {
  let sent = 0;
  const piece = Buffer.alloc(64 * 1024, "x");
  return new Readable({
    read() {
      if (sent >= total) this.push(null);
      else {
        sent += piece.length;
        this.push(piece);
      }
    },
  });
}

// Connections and the pool.

t.test("sequential requests share one connection", async (t) => {
  const app = await httpApp(t, (_req, res) => res.end("ok"));
  const client = h1(t, app.origin);
  for (let i = 0; i < 3; i++) {
    const answer = await send(client);
    t.equal(answer.status, 200);
    t.equal(answer.body(), "ok");
  }
  t.equal(app.sockets.length, 1, "one connection for three requests");
  t.equal(client.stats.connected, 1);
});

t.test("concurrent requests each open a connection of their own", async (t) => {
  const waiting: http.ServerResponse[] = [];
  const app = await httpApp(t, (_req, res) => {
    waiting.push(res);
    if (waiting.length === 3) for (const held of waiting) held.end("ok");
  });
  const client = h1(t, app.origin);
  const answers = await Promise.all([send(client), send(client), send(client)]);
  t.same(
    answers.map((answer) => answer.body()),
    ["ok", "ok", "ok"],
  );
  t.equal(app.sockets.length, 3, "no request waited for another's connection");
  t.equal(client.stats.connected, 3, "all three kept for reuse");
});

t.test("the connection released last is the one reused next", async (t) => {
  const held: Array<() => void> = [];
  const app = await httpApp(t, (req, res) => {
    held.push(() => res.end(String(req.socket.remotePort)));
  });
  const client = h1(t, app.origin);
  const first = [start(client, {}), start(client, {}), start(client, {})];
  await until(() => held.length === 3, "three requests at the app");
  const released: string[] = [];
  for (const release of held.splice(0)) {
    release();
    await until(
      () => first.filter((answer) => answer.events.includes("end")).length > released.length,
      "an end",
    );
    const ended = first.find((answer) => answer.events.includes("end") && !released.includes(answer.body()));
    released.push(ended!.body());
  }
  const next = start(client, {});
  await until(() => held.length === 1, "the next request at the app");
  held[0]!();
  await next.settled;
  t.equal(next.body(), released[2], "the warmest connection was taken");
  t.equal(app.sockets.length, 3, "no new connection");
});

t.test(
  "an app's Keep-Alive timeout makes the client close the idle connection before the app would",
  async (t) => {
    const app = await scriptedApp(t, [
      "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nKeep-Alive: timeout=3\r\n\r\nok",
    ]);
    // The client's own limit (4 s by default) is longer: only the hint (3 s, less a margin) explains an earlier close.
    const client = h1(t, app.origin);
    const answer = await send(client);
    t.equal(answer.body(), "ok");
    const answered = Date.now();
    const socket = app.sockets[0]!;
    await ended(socket);
    const idled = Date.now() - answered;
    t.ok(idled >= 900, `kept for the hint's time less its margin (${idled} ms)`);
    t.ok(idled < 2500, `closed before the app's 3 s, and not on the client's own 4 s (${idled} ms)`);
    t.equal(client.stats.connected, 0);
  },
);

t.test("keepAliveTimeoutMs closes a connection left idle that long", async (t) => {
  const app = await scriptedApp(t, [OK]);
  const client = h1(t, app.origin, { keepAliveTimeoutMs: 300 });
  await send(client);
  const answered = Date.now();
  await ended(app.sockets[0]!);
  const idled = Date.now() - answered;
  t.ok(idled >= 250, `kept while idle for less than the timeout (${idled} ms)`);
  t.ok(idled < 1500, `closed soon after it (${idled} ms)`);
  t.equal(client.stats.connected, 0);
});

t.test("an app that closes an idle connection costs the next request nothing", async (t) => {
  const app = await httpApp(t, (_req, res) => res.end("ok"));
  const client = h1(t, app.origin);
  t.equal((await send(client)).body(), "ok");
  const socket = app.sockets[0]!;
  socket.end();
  await closed(socket);
  await sleep(20);
  const answer = await send(client);
  t.equal(answer.error, undefined, "no error");
  t.equal(answer.body(), "ok");
  t.equal(app.sockets.length, 2, "on a new connection");
});

t.test(
  "bytes that arrive on an idle connection get it dropped, and the next request goes elsewhere",
  async (t) => {
    const app = await scriptedApp(t, [
      (socket) => {
        socket.write(OK);
        setTimeout(() => socket.write("HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nunsaid"), 50);
      },
      OK,
    ]);
    const client = h1(t, app.origin);
    const first = await send(client);
    t.equal(first.body(), "ok");
    await closed(app.sockets[0]!);
    t.same(first.events, ["start", "head", "data", "end"], "nothing unasked reached the first handler");
    const second = await send(client);
    t.equal(second.body(), "ok");
    t.equal(app.sockets.length, 2, "the second request went on a new connection");
  },
);

t.test("bytes after a complete response get the connection dropped", async (t) => {
  const app = await scriptedApp(t, [`${OK}HTTP/1.1 200 OK\r\n\r\n`, OK]);
  const client = h1(t, app.origin);
  t.equal((await send(client)).body(), "ok");
  await closed(app.sockets[0]!);
  t.equal((await send(client)).body(), "ok");
  t.equal(app.sockets.length, 2);
});

// What goes out.

t.test("Host is added from the origin when the request has none", async (t) => {
  const seen: string[][] = [];
  const app = await httpApp(t, (req, res) => {
    seen.push(req.rawHeaders);
    res.end();
  });
  const client = h1(t, app.origin);
  await send(client, { headers: ["x-a", "1"] });
  t.same(seen[0], ["x-a", "1", "host", `127.0.0.1:${app.port}`]);
});

t.test("a Host the request carries is kept, once", async (t) => {
  const seen: string[][] = [];
  const app = await httpApp(t, (req, res) => {
    seen.push(req.rawHeaders);
    res.end();
  });
  const client = h1(t, app.origin);
  await send(client, { headers: ["Host", "orders.internal:8443", "x-a", "1"] });
  t.same(seen[0], ["Host", "orders.internal:8443", "x-a", "1"]);
});

t.test("a body without Content-Length goes out chunked, byte for byte", async (t) => {
  let seen = { text: "" };
  const app = await rawApp(t, (socket) => {
    seen = received(socket);
    socket.on("data", () => {
      if (seen.text.endsWith("0\r\n\r\n")) socket.write(OK);
    });
  });
  const client = h1(t, app.origin);
  const body = Readable.from([
    Buffer.from("hello"),
    Buffer.from(" world!"),
    Buffer.alloc(0),
    Buffer.from("x"),
  ]);
  const answer = await send(client, { method: "POST", path: "/upload", headers: ["x-a", "1"], body });
  t.equal(answer.body(), "ok");
  t.equal(
    seen.text,
    `POST /upload HTTP/1.1\r\nx-a: 1\r\nhost: 127.0.0.1:${app.port}\r\ntransfer-encoding: chunked\r\n\r\n` +
      "5\r\nhello\r\n7\r\n world!\r\n1\r\nx\r\n0\r\n\r\n",
    "an empty piece is not sent as a last chunk",
  );
});

t.test("a chunked body reaches a node:http app whole", async (t) => {
  const app = await httpApp(t, (req, res) => {
    const pieces: Buffer[] = [];
    req.on("data", (piece: Buffer) => pieces.push(piece));
    req.on("end", () => res.end(`${req.headers["transfer-encoding"]}:${Buffer.concat(pieces).toString()}`));
  });
  const client = h1(t, app.origin);
  const body = new PassThrough();
  const answer = start(client, { method: "PUT", body });
  for (const piece of ["one ", "two ", "three"]) {
    body.write(piece);
    await sleep(20);
  }
  body.end();
  await answer.settled;
  t.equal(answer.body(), "chunked:one two three");
});

t.test("a body with Content-Length goes out as it is, unframed", async (t) => {
  let seen = { text: "" };
  const app = await rawApp(t, (socket) => {
    seen = received(socket);
    socket.on("data", () => {
      if (seen.text.endsWith("hello world")) socket.write(OK);
    });
  });
  const client = h1(t, app.origin);
  const body = Readable.from([Buffer.from("hello"), Buffer.from(" world")]);
  const answer = await send(client, { method: "POST", headers: ["content-length", "11"], body });
  t.equal(answer.body(), "ok");
  t.equal(
    seen.text,
    `POST / HTTP/1.1\r\ncontent-length: 11\r\nhost: 127.0.0.1:${app.port}\r\n\r\nhello world`,
  );
});

t.test("POST, PUT and PATCH without a body say content-length: 0, and GET says nothing", async (t) => {
  const seen = new Map<string, http.IncomingHttpHeaders>();
  const app = await httpApp(t, (req, res) => {
    seen.set(req.method!, req.headers);
    res.end();
  });
  const client = h1(t, app.origin);
  for (const method of ["POST", "PUT", "PATCH", "GET"] as const) await send(client, { method });
  for (const method of ["POST", "PUT", "PATCH"]) {
    t.equal(seen.get(method)?.["content-length"], "0", method);
    t.equal(seen.get(method)?.["transfer-encoding"], undefined, method);
  }
  t.equal(seen.get("GET")?.["content-length"], undefined);
  t.equal(seen.get("GET")?.["transfer-encoding"], undefined);
});

/** A node:http app that counts the requests it saw begin and the bodies it got whole. */
async function countingApp(t: Test): Promise<Listening & { begun: number; whole: number }> {
  const counts = { begun: 0, whole: 0 };
  const app = await httpApp(t, (req, res) => {
    counts.begun++;
    req.on("error", () => {});
    req.on("end", () => {
      counts.whole++;
      res.end("ok");
    });
    req.resume();
  });
  return {
    ...app,
    get begun() {
      return counts.begun;
    },
    get whole() {
      return counts.whole;
    },
  };
}

t.test("a body longer than its Content-Length fails, and the app never has the request whole", async (t) => {
  const app = await countingApp(t);
  const client = h1(t, app.origin);
  const body = new PassThrough();
  const answer = start(client, { method: "POST", headers: ["content-length", "5"], body });
  body.write("hel");
  await until(() => app.begun === 1, "the request at the app");
  body.write("lo wo");
  await answer.settled;
  t.equal(answer.error?.code, "UND_ERR_REQ_CONTENT_LENGTH_MISMATCH");
  t.same(answer.events, ["start", "error"]);
  await closed(app.sockets[0]!);
  t.equal(app.whole, 0, "the app never read a complete body");
});

t.test("a body longer than its Content-Length in its first piece never reaches the app", async (t) => {
  let seen = { text: "" };
  const app = await rawApp(t, (socket) => {
    seen = received(socket);
  });
  const client = h1(t, app.origin);
  const body = Readable.from([Buffer.from("hello world")]);
  const answer = await send(client, { method: "POST", headers: ["content-length", "5"], body });
  t.equal(answer.error?.code, "UND_ERR_REQ_CONTENT_LENGTH_MISMATCH");
  await closed(app.sockets[0]!);
  t.equal(seen.text, "", "not a byte");
});

t.test("a body shorter than its Content-Length fails, and the app never has the request whole", async (t) => {
  const app = await countingApp(t);
  const client = h1(t, app.origin);
  const body = Readable.from([Buffer.from("hello")]);
  const answer = await send(client, { method: "POST", headers: ["content-length", "11"], body });
  t.equal(answer.error?.code, "UND_ERR_REQ_CONTENT_LENGTH_MISMATCH");
  await closed(app.sockets[0]!);
  t.equal(app.whole, 0, "the app never read a complete body");
});

t.test("a CR or LF in a field is refused before anything is written", async (t) => {
  const app = await rawApp(t, () => {});
  const client = h1(t, app.origin);
  const requests: Request[] = [
    { headers: ["x-a", "1\r\nx-injected: yes"] },
    { headers: ["x-a", "1\nx-injected: yes"] },
    { headers: ["x-a", "1\rx"] },
    { headers: ["x-a\r\nx-injected", "yes"] },
    { path: "/ HTTP/1.1\r\nx-injected: yes\r\nx:" },
  ];
  for (const request of requests) {
    const answer = await send(client, request);
    t.equal(answer.error?.code, "UND_ERR_INVALID_ARG", JSON.stringify(request));
    t.same(answer.events, ["start", "error"]);
  }
  await sleep(50);
  t.equal(app.sockets.length, 0, "no connection was even opened");
});

t.test("the request head waits for the body's first bytes", async (t) => {
  let seen = { text: "" };
  const app = await rawApp(t, (socket) => {
    seen = received(socket);
    socket.on("data", () => {
      if (seen.text.endsWith("0\r\n\r\n")) socket.write(OK);
    });
  });
  const client = h1(t, app.origin);
  const body = new PassThrough();
  const answer = start(client, { method: "POST", body });
  await until(() => app.sockets.length === 1, "the connection");
  await sleep(100);
  t.equal(seen.text, "", "nothing before the body");
  body.end("hi");
  await answer.settled;
  t.equal(answer.body(), "ok");
  t.ok(seen.text.endsWith("\r\n\r\n2\r\nhi\r\n0\r\n\r\n"), "head and body went out together");
});

t.test("a body that fails before its first byte leaves the app with no request at all", async (t) => {
  let seen = { text: "" };
  const app = await rawApp(t, (socket) => {
    seen = received(socket);
  });
  const client = h1(t, app.origin);
  const body = new Readable({
    read() {
      this.destroy(new Error("the client's framing was refused"));
    },
  });
  const answer = await send(client, { method: "POST", body });
  t.equal(answer.error?.message, "the client's framing was refused");
  t.same(answer.events, ["start", "error"]);
  await until(() => app.sockets.length === 1, "the connection");
  await closed(app.sockets[0]!);
  t.equal(seen.text, "", "not a byte reached the app");
});

// What comes back.

t.test("a Content-Length response arrives whole", async (t) => {
  const app = await scriptedApp(t, [
    "HTTP/1.1 200 Fine\r\nContent-Length: 5\r\nX-A: 1\r\nX-A: 2\r\n\r\nhello",
  ]);
  const client = h1(t, app.origin);
  const answer = await send(client);
  t.equal(answer.status, 200);
  t.equal(answer.statusMessage, "Fine");
  t.same(answer.headers, { "content-length": "5", "x-a": ["1", "2"] });
  t.equal(answer.bodyless, false);
  t.equal(answer.body(), "hello");
  t.same(answer.trailers, {});
  t.equal(answer.events.at(-1), "end");
});

t.test(
  "a chunked response, arriving a few bytes at a time, delivers its trailers to onResponseEnd",
  async (t) => {
    const response =
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-checksum\r\n\r\n" +
      "5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Checksum: abc\r\nX-Count: 2\r\n\r\n";
    const app = await scriptedApp(t, [
      async (socket) => {
        for (let i = 0; i < response.length; i += 3) {
          socket.write(response.slice(i, i + 3), "latin1");
          await sleep(1);
        }
      },
      OK,
    ]);
    const client = h1(t, app.origin);
    const answer = await send(client);
    t.equal(answer.error, undefined);
    t.equal(answer.body(), "hello world");
    t.same(answer.trailers, { "x-checksum": "abc", "x-count": "2" });
    t.equal((await send(client)).body(), "ok", "the connection is reused after the trailers");
    t.equal(app.sockets.length, 1);
  },
);

t.test("a response without length ends when the app closes, and its connection is not reused", async (t) => {
  const app = await scriptedApp(t, [
    (socket) => {
      socket.write("HTTP/1.1 200 OK\r\n\r\nhello");
      setTimeout(() => socket.end(" world"), 30);
    },
    OK,
  ]);
  const client = h1(t, app.origin);
  const answer = await send(client);
  t.equal(answer.error, undefined);
  t.equal(answer.body(), "hello world");
  t.equal((await send(client)).body(), "ok");
  t.equal(app.sockets.length, 2);
});

t.test("a HEAD response with a Content-Length is bodyless, and its connection is reused", async (t) => {
  const app = await scriptedApp(t, ["HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", OK]);
  const client = h1(t, app.origin);
  const head = await send(client, { method: "HEAD" });
  t.equal(head.bodyless, true);
  t.same(head.events, ["start", "head", "end"]);
  t.equal(head.headers?.["content-length"], "100");
  const next = await send(client);
  t.equal(next.body(), "ok", "the next response was not read as the HEAD's body");
  t.equal(app.sockets.length, 1);
});

t.test("204 and 304 responses are bodyless whatever they declare", async (t) => {
  const app = await scriptedApp(t, [
    "HTTP/1.1 204 No Content\r\n\r\n",
    "HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
    OK,
  ]);
  const client = h1(t, app.origin);
  for (const status of [204, 304]) {
    const answer = await send(client);
    t.equal(answer.status, status);
    t.equal(answer.bodyless, true);
    t.same(answer.events, ["start", "head", "end"]);
  }
  t.equal((await send(client)).body(), "ok");
  t.equal(app.sockets.length, 1);
});

t.test("a 103 before the 200 is passed over", async (t) => {
  const app = await scriptedApp(t, [
    (socket) => {
      socket.write("HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n");
      setTimeout(() => socket.write(OK), 20);
    },
  ]);
  const client = h1(t, app.origin);
  const answer = await send(client);
  t.equal(answer.status, 200);
  t.same(answer.events, ["start", "head", "data", "end"]);
  t.equal(answer.headers?.link, undefined, "the hint's fields are not the response's");
});

t.test("an unasked 101 fails the exchange with a parser error", async (t) => {
  const app = await scriptedApp(t, [
    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
  ]);
  const client = h1(t, app.origin);
  const answer = await send(client);
  t.match(answer.error?.code, /^HPE_/);
  t.same(answer.events, ["start", "error"]);
  await closed(app.sockets[0]!);
});

t.test("a response cut mid-body fails with UND_ERR_SOCKET, once", async (t) => {
  const app = await scriptedApp(t, [
    (socket) => socket.end("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello"),
  ]);
  const client = h1(t, app.origin);
  const answer = await send(client);
  t.equal(answer.error?.code, "UND_ERR_SOCKET");
  t.equal(answer.body(), "hello");
  await sleep(20);
  t.same(answer.events, ["start", "head", "data", "error"]);
});

t.test("a Connection: close response's connection is not reused, though the app keeps it open", async (t) => {
  const app = await scriptedApp(t, [
    "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
    OK,
  ]);
  const client = h1(t, app.origin);
  t.equal((await send(client)).body(), "ok");
  t.equal((await send(client)).body(), "ok");
  t.equal(app.sockets.length, 2);
  await ended(app.sockets[0]!);
});

t.test("a response head longer than maxHeaderSize fails with HPE_HEADER_OVERFLOW", async (t) => {
  const app = await scriptedApp(t, [
    `HTTP/1.1 200 OK\r\nX-Big: ${"a".repeat(2000)}\r\nContent-Length: 2\r\n\r\nok`,
  ]);
  const client = h1(t, app.origin, { maxHeaderSize: 1024 });
  const answer = await send(client);
  t.equal(answer.error?.code, "HPE_HEADER_OVERFLOW");
  t.same(answer.events, ["start", "error"]);
});

t.test(
  "an answer that comes before the upload ends is delivered at once; the connection is reused after the upload",
  async (t) => {
    // Node's server reads and drops the rest of a body it answered without reading, and keeps the connection.
    const app = await httpApp(t, (req, res) => res.end(req.url === "/early" ? "early" : "ok"));
    const client = h1(t, app.origin);
    const body = new PassThrough();
    const early = start(client, { method: "POST", path: "/early", body });
    body.write("first");
    await early.settled;
    t.equal(early.body(), "early");
    t.equal(client.stats.running, 1, "the connection is busy while the upload goes on");
    await sleep(50);
    body.end("last");
    await until(() => client.stats.running === 0, "the upload's end");
    const next = await send(client);
    t.equal(next.body(), "ok");
    t.equal(app.sockets.length, 1, "the same connection");
    t.same(early.events, ["start", "head", "data", "end"], "the early answer was reported once");
  },
);

// Backpressure and timeouts.

t.test("a paused handler gets nothing until it resumes, and a 4 MiB body arrives intact", async (t) => {
  const expected = pattern(4 * 1024 * 1024);
  const app = await httpApp(t, (_req, res) => res.end(expected));
  const client = h1(t, app.origin);
  let whilePaused = -1;
  const answer = await send(
    client,
    { bodyTimeout: 5000 },
    {
      onResponseData(controller, recorded) {
        const count = recorded.chunks.length;
        if (count === 1) {
          controller.pause();
          setTimeout(() => {
            whilePaused = recorded.chunks.length;
            controller.resume();
          }, 300);
        } else if (count % 8 === 0) {
          // Paused again and again, from the callback, resumed on a later turn.
          controller.pause();
          setImmediate(() => controller.resume());
        }
      },
    },
  );
  t.equal(answer.error, undefined);
  t.equal(whilePaused, 1, "no data while paused");
  t.ok(answer.chunks.length > 8, `the body came in pieces (${answer.chunks.length})`);
  t.ok(Buffer.concat(answer.chunks).equals(expected), "the body is intact");
});

t.test("a pause longer than bodyTimeout does not time the body out", async (t) => {
  const expected = pattern(1024 * 1024);
  const app = await httpApp(t, (_req, res) => res.end(expected));
  const client = h1(t, app.origin);
  const answer = await send(
    client,
    { bodyTimeout: 100 },
    {
      onResponseStart(controller) {
        controller.pause();
        setTimeout(() => controller.resume(), 400);
      },
    },
  );
  t.equal(answer.error, undefined);
  t.ok(Buffer.concat(answer.chunks).equals(expected), "the body is intact");
});

t.test("a pause and a resume within one callback go on reading", async (t) => {
  const app = await scriptedApp(t, [
    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
  ]);
  const client = h1(t, app.origin);
  const answer = await send(
    client,
    { bodyTimeout: 500 },
    {
      onResponseStart(controller) {
        controller.pause();
        controller.resume();
      },
      onResponseData(controller) {
        controller.pause();
        controller.resume();
      },
    },
  );
  t.equal(answer.error, undefined);
  t.equal(answer.body(), "hello world");
});

t.test(
  "a handler still paused when its response ends does not stall the connection's next request",
  async (t) => {
    const app = await scriptedApp(t, [OK, OK]);
    const client = h1(t, app.origin);
    const first = await send(client, {}, { onResponseData: (controller) => controller.pause() });
    t.equal(first.body(), "ok");
    const second = await send(client, { headersTimeout: 1000 });
    t.equal(second.error, undefined);
    t.equal(second.body(), "ok");
    t.equal(app.sockets.length, 1);
  },
);

t.test("a handler that pauses after its response ended does not stall the next request", async (t) => {
  const app = await scriptedApp(t, [OK, OK]);
  const client = h1(t, app.origin);
  const first = await send(client);
  first.controller!.pause();
  const second = await send(client, { headersTimeout: 1000 });
  t.equal(second.error, undefined);
  t.equal(second.body(), "ok");
  first.controller!.resume();
});

t.test("an app that never answers fails with UND_ERR_HEADERS_TIMEOUT", async (t) => {
  const app = await rawApp(t, () => {});
  const client = h1(t, app.origin);
  const began = Date.now();
  const answer = await send(client, { headersTimeout: 200 });
  t.equal(answer.error?.code, "UND_ERR_HEADERS_TIMEOUT");
  t.ok(Date.now() - began >= 190, "not before its time");
  t.same(answer.events, ["start", "error"]);
});

t.test("a body that stalls fails with UND_ERR_BODY_TIMEOUT", async (t) => {
  const app = await scriptedApp(t, ["HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello"]);
  const client = h1(t, app.origin);
  const answer = await send(client, { bodyTimeout: 200 });
  t.equal(answer.error?.code, "UND_ERR_BODY_TIMEOUT");
  t.same(answer.events, ["start", "head", "data", "error"]);
  t.equal(answer.body(), "hello");
});

t.test("a slow upload the app is reading does not count against headersTimeout", async (t) => {
  const app = await httpApp(t, (req, res) => {
    let length = 0;
    req.on("data", (piece: Buffer) => {
      length += piece.length;
    });
    req.on("end", () => res.end(String(length)));
    req.on("error", () => {});
  });
  const client = h1(t, app.origin);
  const body = new PassThrough();
  const answer = start(client, { method: "POST", body, headersTimeout: 300 });
  for (let i = 0; i < 8; i++) {
    body.write("0123456789");
    await sleep(100);
  }
  body.end();
  await answer.settled;
  t.equal(answer.error, undefined);
  t.equal(answer.body(), "80");
});

t.test(
  "an app that takes a whole upload and never answers times out, counted from the upload's end",
  async (t) => {
    const app = await httpApp(t, (req) => {
      req.on("error", () => {});
      req.resume();
    });
    const client = h1(t, app.origin);
    const body = new PassThrough();
    const answer = start(client, { method: "POST", body, headersTimeout: 300 });
    for (let i = 0; i < 4; i++) {
      body.write("0123456789");
      await sleep(100);
    }
    const uploaded = Date.now();
    body.end();
    await answer.settled;
    t.equal(answer.error?.code, "UND_ERR_HEADERS_TIMEOUT");
    const waited = Date.now() - uploaded;
    t.ok(waited >= 250, `the app had its headersTimeout after the upload (${waited} ms)`);
  },
);

t.test(
  "an app that neither reads an upload nor answers still fails with UND_ERR_HEADERS_TIMEOUT",
  async (t) => {
    const app = await rawApp(t, (socket) => socket.pause());
    const client = h1(t, app.origin);
    const answer = await send(client, {
      method: "POST",
      body: largeBody(256 * 1024 * 1024),
      headersTimeout: 300,
    });
    t.equal(answer.error?.code, "UND_ERR_HEADERS_TIMEOUT");
  },
);

// Aborts, failures, close and destroy.

t.test("an abort from onRequestStart sends nothing and leaves the connection reusable", async (t) => {
  const paths: string[] = [];
  const app = await httpApp(t, (req, res) => {
    paths.push(req.url!);
    res.end("ok");
  });
  const client = h1(t, app.origin);
  await send(client, { path: "/first" });
  const reason = new Error("the client left");
  const aborted = await send(
    client,
    { path: "/aborted" },
    { onRequestStart: (controller) => controller.abort(reason) },
  );
  t.equal(aborted.error, reason);
  t.same(aborted.events, ["start", "error"]);
  t.equal((await send(client, { path: "/third" })).body(), "ok");
  t.same(paths, ["/first", "/third"], "the app never saw the aborted request");
  t.equal(app.sockets.length, 1, "the connection was reused");
});

t.test("an abort from onRequestStart on a client with no idle connection opens none", async (t) => {
  const app = await rawApp(t, () => {});
  const client = h1(t, app.origin);
  const reason = new Error("the client left");
  const aborted = await send(client, {}, { onRequestStart: (controller) => controller.abort(reason) });
  t.equal(aborted.error, reason);
  await sleep(50);
  t.equal(app.sockets.length, 0, "no connection to the app");
  t.equal(client.stats.connected, 0);
});

t.test(
  "an abort from onRequestStart leaves the idle connection's Keep-Alive deadline as the app set it",
  async (t) => {
    const app = await scriptedApp(t, [
      "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nKeep-Alive: timeout=3\r\n\r\nok",
    ]);
    const client = h1(t, app.origin);
    await send(client);
    const answered = Date.now();
    await send(
      client,
      {},
      { onRequestStart: (controller) => controller.abort(new Error("the client left")) },
    );
    await ended(app.sockets[0]!);
    const idled = Date.now() - answered;
    t.ok(idled < 2500, `closed on the app's hint, not on the client's own 4 s (${idled} ms)`);
  },
);

t.test("an abort mid-response is reported once and closes the connection", async (t) => {
  const app = await scriptedApp(t, [
    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n5\r\nworld\r\n5\r\nagain\r\n",
    OK,
  ]);
  const client = h1(t, app.origin);
  const reason = new Error("the client left");
  const answer = await send(client, {}, { onResponseData: (controller) => controller.abort(reason) });
  t.equal(answer.error, reason);
  await closed(app.sockets[0]!);
  t.same(answer.events, ["start", "head", "data", "error"], "one piece of data, one error");
  t.equal(client.stats.connected, 0);
  t.equal((await send(client)).body(), "ok", "the next request has a new connection");
  t.equal(app.sockets.length, 2);
});

t.test("a refused connection fails with ECONNREFUSED", async (t) => {
  const client = h1(t, `http://127.0.0.1:${await closedPort()}`);
  const answer = await send(client);
  t.equal(answer.error?.code, "ECONNREFUSED");
  t.same(answer.events, ["start", "error"]);
  t.equal(client.stats.connected, 0);
});

t.test("close waits for the request in flight, then refuses new ones with UND_ERR_CLOSED", async (t) => {
  const held: http.ServerResponse[] = [];
  const app = await httpApp(t, (_req, res) => held.push(res));
  const client = h1(t, app.origin);
  const answer = start(client, {});
  await until(() => held.length === 1, "the request at the app");
  let closed = false;
  const closing = client.close().then(() => {
    closed = true;
  });
  await sleep(100);
  t.equal(closed, false, "still waiting for the request in flight");
  held[0]!.end("ok");
  await answer.settled;
  await closing;
  t.equal(answer.body(), "ok");
  t.equal(client.stats.connected, 0);
  const later = await send(client);
  t.equal(later.error?.code, "UND_ERR_CLOSED");
  t.same(later.events, ["start", "error"]);
  t.equal(app.sockets.length, 1);
});

t.test("close called twice resolves both calls once the request in flight is done", async (t) => {
  const held: http.ServerResponse[] = [];
  const app = await httpApp(t, (_req, res) => held.push(res));
  const client = h1(t, app.origin);
  const answer = start(client, {});
  await until(() => held.length === 1, "the request at the app");
  let resolved = 0;
  const closings = [client.close(), client.close()].map((closing) => closing.then(() => resolved++));
  held[0]!.end("ok");
  await answer.settled;
  await until(() => resolved === 2, "both closes resolved", 1000);
  await Promise.all(closings);
  t.equal(resolved, 2);
});

t.test("destroy fails the request in flight with UND_ERR_DESTROYED", async (t) => {
  const held: http.ServerResponse[] = [];
  const app = await httpApp(t, (_req, res) => held.push(res));
  const client = h1(t, app.origin);
  const answer = start(client, {});
  await until(() => held.length === 1, "the request at the app");
  await client.destroy();
  await answer.settled;
  t.equal(answer.error?.code, "UND_ERR_DESTROYED");
  t.same(answer.events, ["start", "error"]);
  await closed(app.sockets[0]!);
});

t.test("an app that answers 413 before reading a large upload, and closes, is reported once", async (t) => {
  const app = await rawApp(t, (socket) => {
    socket.once("data", () => {
      socket.pause();
      socket.end("HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    });
  });
  const client = h1(t, app.origin);
  const answer = await send(client, { method: "POST", body: largeBody(64 * 1024 * 1024) });
  t.equal(answer.status, 413);
  await until(() => client.stats.connected === 0, "the connection closed");
  await sleep(50);
  t.same(answer.events, ["start", "head", "end"], "the 413 once, and no error after it");
  t.equal(client.stats.connected, 0);
});

t.test(
  "an app that answers early and then neither reads the upload nor closes loses the connection",
  async (t) => {
    // A raw server: answers at once, never reads again, never closes. The client must not hold the connection busy.
    const sockets: net.Socket[] = [];
    const server = net.createServer((socket) => {
      sockets.push(socket);
      socket.once("data", () => {
        socket.pause();
        socket.write("HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\n\r\n");
      });
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    t.teardown(() => {
      for (const socket of sockets) socket.destroy();
      server.close();
    });
    const { port } = server.address() as net.AddressInfo;
    const client = h1(t, `http://127.0.0.1:${port}`);
    const body = new PassThrough();
    const early = start(client, {
      method: "POST",
      path: "/upload",
      headers: ["content-length", String(64 * 1024 * 1024)],
      body,
    });
    const chunk = Buffer.alloc(1024 * 1024, 1);
    const feed = setInterval(() => body.write(chunk), 5);
    t.teardown(() => clearInterval(feed));
    await early.settled;
    t.same(early.events, ["start", "head", "end"], "the 413 is reported once, without a body");
    await until(() => client.stats.connected === 0, "the stuck connection to be closed");
    clearInterval(feed);
    t.pass("no connection is left busy");
  },
);

// Connections given by a connector, a limit on them, and the requests that wait for one.

/** A connector that dials the app over TCP itself, counting its calls, as the outbound's mTLS one does. */
function tcpConnector(port: number): H1Connector & { calls: number } {
  const connect = ((callback) => {
    connect.calls++;
    const socket = net.connect({ host: "127.0.0.1", port });
    socket.once("connect", () => callback(null, socket));
    socket.once("error", (error) => callback(error, null));
  }) as H1Connector & { calls: number };
  connect.calls = 0;
  return connect;
}

/** A node:http app that holds every response until released, in arrival order. */
async function heldApp(t: Test): Promise<Listening & { held: http.ServerResponse[]; paths: string[] }> {
  const held: http.ServerResponse[] = [];
  const paths: string[] = [];
  const app = await httpApp(t, (req, res) => {
    paths.push(req.url ?? "");
    held.push(res);
  });
  return { ...app, held, paths };
}

t.test("a client given a connector sends its requests on the sockets it gives, reused", async (t) => {
  const app = await scriptedApp(t, [OK, OK]);
  const connect = tcpConnector(app.port);
  // The origin only names the Host: nothing listens at it.
  const client = h1(t, "https://peer.example:8443", { connect });
  for (let i = 0; i < 2; i++) t.equal((await send(client, { path: `/${i}` })).body(), "ok");
  t.equal(connect.calls, 1, "one connection, opened by the connector, carried both");
  t.equal(app.sockets.length, 1);
  t.match(app.heads[0], /^GET \/0 HTTP\/1\.1\r\nhost: peer\.example:8443\r\n\r\n$/);
  t.match(app.heads[1], /^GET \/1 HTTP\/1\.1\r\n/);
});

t.test("a connector that answers before it returns is taken at its word", async (t) => {
  const app = await scriptedApp(t, [OK]);
  const socket = net.connect({ host: "127.0.0.1", port: app.port });
  await new Promise((resolve) => socket.once("connect", resolve));
  const client = h1(t, app.origin, { connect: (callback) => callback(null, socket) });
  t.equal((await send(client)).body(), "ok");
});

t.test("a connector's error reaches the request as it is, told as never written", async (t) => {
  const refused = Object.assign(new Error("TLS with peer failed: unknown_ca"), {
    code: "MTLSD_UPSTREAM_TLS",
  });
  const client = h1(t, "https://peer.example:8443", {
    connect: (callback) => setImmediate(callback, refused, null),
  });
  const answer = await send(client);
  t.equal(answer.error, refused, "the same error, code and message");
  t.same(answer.events, ["start", "error"]);
  t.equal(requestUnsent(answer.error!), true);
  t.same(client.stats, { connected: 0, pending: 0, running: 0 });
});

t.test("a refused TCP connection is told as never written too", async (t) => {
  const client = h1(t, `http://127.0.0.1:${await closedPort()}`);
  const answer = await send(client);
  t.equal(answer.error?.code, "ECONNREFUSED");
  t.equal(requestUnsent(answer.error!), true);
});

t.test("a connection that closes after the request went out is not told as never written", async (t) => {
  const app = await rawApp(t, (socket) => socket.once("data", () => socket.destroy()));
  const client = h1(t, app.origin, { connect: tcpConnector(app.port) });
  const answer = await send(client);
  t.equal(answer.error?.code, "UND_ERR_SOCKET");
  t.equal(answer.error?.message, "other side closed");
  t.equal(requestUnsent(answer.error!), false);
});

t.test(
  "a connection that closes while the request waits for its body leaves the body unread and paused",
  async (t) => {
    const app = await rawApp(t, (socket) => setTimeout(() => socket.end(), 50));
    const client = h1(t, app.origin, { connect: tcpConnector(app.port) });
    const body = new PassThrough();
    const answer = await send(client, { method: "POST", body });
    t.equal(answer.error?.code, "UND_ERR_SOCKET");
    t.equal(requestUnsent(answer.error!), true, "nothing of it was written");
    t.equal(body.readableDidRead, false);
    t.equal(body.isPaused(), true, "its bytes wait for whoever sends it next");
    body.write("late");
    await sleep(20);
    t.equal(body.readableLength, 4, "kept, not emitted to no one");
  },
);

t.test("a body let go unread by one client is sent whole by the next", async (t) => {
  const dead = await rawApp(t, (socket) => setTimeout(() => socket.end(), 50));
  const first = h1(t, dead.origin, { connect: tcpConnector(dead.port) });
  const body = new PassThrough();
  const failed = await send(first, { method: "POST", body });
  t.equal(requestUnsent(failed.error!), true);
  body.end("the whole body");
  const seen: string[] = [];
  const app = await httpApp(t, (req, res) => {
    let text = "";
    req.on("data", (chunk: Buffer) => (text += chunk));
    req.on("end", () => {
      seen.push(text);
      res.end("ok");
    });
  });
  const second = h1(t, app.origin);
  t.equal((await send(second, { method: "POST", body })).body(), "ok");
  t.same(seen, ["the whole body"]);
});

t.test("a body let go unread is sent whole by the HTTP/2 client too", async (t) => {
  const dead = await rawApp(t, (socket) => setTimeout(() => socket.end(), 50));
  const first = h1(t, dead.origin, { connect: tcpConnector(dead.port) });
  const body = new PassThrough();
  t.equal(requestUnsent((await send(first, { method: "POST", body })).error!), true);
  body.end("the whole body");
  const seen: string[] = [];
  const server = http2.createServer((req, res) => {
    let text = "";
    req.on("data", (chunk: Buffer) => (text += chunk));
    req.on("end", () => {
      seen.push(text);
      res.end("ok");
    });
  });
  const app = await listen(t, server as unknown as net.Server);
  const h2 = new H2Client({
    scheme: "http",
    authority: `127.0.0.1:${app.port}`,
    connect: h2cConnector("127.0.0.1", app.port, 1000),
    maxSessions: 1,
    idleTimeoutMs: 1000,
    settingsTimeoutMs: 1000,
  });
  t.teardown(() => h2.destroy());
  const answer = await send(h2, { method: "POST", body, headersTimeout: 2000 });
  t.equal(answer.error, undefined);
  t.equal(answer.body(), "ok");
  t.same(seen, ["the whole body"]);
});

t.test("with connections: 2, further requests wait, and are served first come first served", async (t) => {
  const app = await heldApp(t);
  const client = h1(t, app.origin, { connections: 2 });
  const answers = [1, 2, 3, 4].map((n) => start(client, { path: `/${n}` }));
  await until(() => app.held.length === 2, "two requests at the app");
  await sleep(50);
  t.same(app.paths, ["/1", "/2"], "only as many as there are connections");
  t.same(client.stats, { connected: 2, pending: 2, running: 2 });
  app.held[1]!.end("two");
  await answers[1]!.settled;
  await until(() => app.held.length === 3, "the third at the app");
  t.same(app.paths, ["/1", "/2", "/3"], "the first waiting goes first");
  t.equal(client.stats.pending, 1);
  app.held[0]!.end("one");
  app.held[2]!.end("three");
  await until(() => app.held.length === 4, "the fourth at the app");
  app.held[3]!.end("four");
  t.same(
    (await Promise.all(answers.map((answer) => answer.settled))).map((answer) => answer.body()),
    ["one", "two", "three", "four"],
  );
  t.equal(app.sockets.length, 2, "the waiting ones took the connections freed, no more were opened");
  t.same(client.stats, { connected: 2, pending: 0, running: 0 });
});

t.test(
  "a request aborted while it waits leaves the line at once, reported once with its reason",
  async (t) => {
    const app = await heldApp(t);
    const client = h1(t, app.origin, { connections: 1 });
    const first = start(client, { path: "/1" });
    const second = start(client, { path: "/2" });
    const third = start(client, { path: "/3" });
    await until(() => app.held.length === 1, "the first at the app");
    t.equal(client.stats.pending, 2);
    const reason = Object.assign(new Error("client went away"), { code: "MTLSD_CLIENT_CLOSED" });
    second.controller!.abort(reason);
    await second.settled;
    t.equal(second.error, reason);
    t.same(second.events, ["start", "error"]);
    t.equal(client.stats.pending, 1, "out of the line before any connection is free");
    app.held[0]!.end("one");
    await until(() => app.held.length === 2, "the next at the app");
    app.held[1]!.end("three");
    t.equal((await third.settled).body(), "three");
    t.equal((await first.settled).body(), "one");
    t.same(app.paths, ["/1", "/3"], "the aborted request never reached the app");
    t.same(second.events, ["start", "error"], "and was reported once");
  },
);

t.test("a connection that closes gives its place to a request waiting", async (t) => {
  let count = 0;
  const app = await rawApp(t, (socket, index) => {
    socket.once("data", () => {
      count++;
      if (index === 0) socket.destroy();
      else socket.write(OK);
    });
  });
  const client = h1(t, app.origin, { connections: 1 });
  const first = start(client, { path: "/1" });
  const second = start(client, { path: "/2" });
  t.equal((await first.settled).error?.code, "UND_ERR_SOCKET");
  t.equal((await second.settled).body(), "ok");
  t.equal(count, 2);
  t.equal(app.sockets.length, 2);
});

t.test("bytes after a response cost the request waiting for its connection nothing", async (t) => {
  const app = await scriptedApp(t, [`${OK}HTTP/1.1 200 OK\r\n\r\n`, OK]);
  const client = h1(t, app.origin, { connections: 1 });
  const first = start(client, { path: "/1" });
  const second = start(client, { path: "/2" });
  t.equal((await first.settled).body(), "ok");
  const answer = await second.settled;
  t.equal(answer.error, undefined);
  t.equal(answer.body(), "ok", "answered on a new connection");
  t.equal(app.sockets.length, 2);
});

t.test(
  "a handler that pauses in its last callback does not stall the request waiting for its connection",
  async (t) => {
    const app = await scriptedApp(t, [OK, OK]);
    const client = h1(t, app.origin, { connections: 1 });
    const first = start(client, { path: "/1" }, { onResponseData: (controller) => controller.pause() });
    const second = start(client, { path: "/2", headersTimeout: 1000 });
    t.equal((await first.settled).body(), "ok");
    const answer = await second.settled;
    t.equal(answer.error, undefined);
    t.equal(answer.body(), "ok");
    t.equal(app.sockets.length, 1, "on the connection the first one left");
  },
);

t.test("a connector that fails at once fails every request waiting, each in turn", async (t) => {
  let calls = 0;
  const client = h1(t, "https://peer.example:8443", {
    connections: 1,
    connect: (callback) => {
      calls++;
      callback(Object.assign(new Error("refused"), { code: "ECONNREFUSED" }), null);
    },
  });
  const answers = [1, 2, 3].map(() => start(client, {}));
  const settled = await Promise.all(answers.map((answer) => answer.settled));
  t.same(
    settled.map((answer) => answer.error?.code),
    ["ECONNREFUSED", "ECONNREFUSED", "ECONNREFUSED"],
  );
  t.equal(calls, 3, "each tried a connection of its own");
  t.same(client.stats, { connected: 0, pending: 0, running: 0 });
});

t.test("destroy fails the requests waiting with UND_ERR_DESTROYED, none of them written", async (t) => {
  const app = await heldApp(t);
  const client = h1(t, app.origin, { connections: 1 });
  const first = start(client, { path: "/1" });
  const waiting = [start(client, { path: "/2" }), start(client, { path: "/3" })];
  await until(() => app.held.length === 1, "the first at the app");
  await client.destroy();
  t.equal((await first.settled).error?.code, "UND_ERR_DESTROYED");
  t.equal(requestUnsent(first.error!), false, "the first was written");
  for (const answer of waiting) {
    await answer.settled;
    t.equal(answer.error?.code, "UND_ERR_DESTROYED");
    t.same(answer.events, ["start", "error"]);
    t.equal(requestUnsent(answer.error!), true);
  }
  t.same(client.stats, { connected: 0, pending: 0, running: 0 });
  t.same(app.paths, ["/1"]);
});

t.test("close waits for the requests waiting as well, serves them, then closes", async (t) => {
  const app = await heldApp(t);
  const client = h1(t, app.origin, { connections: 1 });
  const first = start(client, { path: "/1" });
  const second = start(client, { path: "/2" });
  await until(() => app.held.length === 1, "the first at the app");
  let done = false;
  const closing = client.close().then(() => {
    done = true;
  });
  t.equal((await send(client, { path: "/3" })).error?.code, "UND_ERR_CLOSED", "new requests are refused");
  app.held[0]!.end("one");
  await first.settled;
  await until(() => app.held.length === 2, "the waiting one at the app");
  await sleep(50);
  t.equal(done, false, "still waiting for the one that waited");
  app.held[1]!.end("two");
  t.equal((await second.settled).body(), "two");
  await closing;
  t.same(client.stats, { connected: 0, pending: 0, running: 0 });
  t.same(app.paths, ["/1", "/2"]);
  await closed(app.sockets[0]!);
});
