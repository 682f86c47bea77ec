// Every request-target trick that got past a real proxy's path rules, tried as raw bytes on a real sidecar,
// and again as an HTTP/2 `:path`.
import { once } from "node:events";
import http2 from "node:http2";
import t, { type Test } from "tap";
import { startApp } from "./helpers/app.ts";
import { createTestPki } from "./helpers/pki.ts";
import { type ClientTls, exchange, type RawResponse, rawGet, startWiretap } from "./helpers/raw-http.ts";
import { type LogLine, startSidecar, waitForLog } from "./helpers/sidecar.ts";

const pki = await createTestPki();
t.teardown(() => pki.cleanup());
const app = await startApp();
t.teardown(() => app.stop());
// The sidecar reaches the echo app through a byte recorder: "the app never saw it" is checked on the wire.
const wire = await startWiretap(app.port);
t.teardown(() => wire.close());

const orders = await pki.identity("orders");
const frontend = await pki.identity("frontend");
const anyone = ["*"];
const sidecar = await startSidecar(pki, orders, {
  inbound: {
    listen: "127.0.0.1:0",
    app: wire.url,
    policy: {
      default: "deny",
      rules: [
        { name: "public-reads", action: "allow", from: anyone, to: [{ paths: ["/public/*", "/info/*"] }] },
        { name: "v1", action: "allow", from: anyone, to: [{ paths: ["/v1/*", "/v2/exact"] }] },
        { name: "no-admin", action: "deny", from: anyone, to: [{ paths: ["/admin*", "/private*"] }] },
        { name: "no-exact", action: "deny", from: anyone, to: [{ paths: ["/v1/exact"] }] },
      ],
    },
  },
});
t.teardown(() => sidecar.stop());

const client: ClientTls = { ca: pki.bundlePem, cert: frontend.chainPem, key: frontend.keyPem };

interface Attempt {
  response: RawResponse;
  /** The sidecar's `request` log line for this request. */
  log: LogLine;
  /** Request-targets the app was sent while this attempt ran. */
  appSaw: string[];
  closed: boolean;
}

/** The shape the echo app reports. */
interface Echo {
  url: string;
  headers: Record<string, string | string[]>;
  rawHeaders: string[];
}

/** Sends one raw request on a fresh connection; requests in this file run one at a time. */
async function attempt(bytes: string): Promise<Attempt> {
  const logsBefore = sidecar.logs.length;
  const wireBefore = wire.requests().length;
  const result = await exchange(sidecar.inboundPort, client, bytes, { expect: 1 });
  const response = result.responses[0];
  if (!response) throw new Error(`no response; the sidecar sent ${JSON.stringify(result.raw)}`);
  const log = await waitForLog(
    sidecar.logs,
    (line) => line.msg === "request" && sidecar.logs.indexOf(line) >= logsBefore,
  );
  const appSaw = wire
    .requests()
    .slice(wireBefore)
    .map((r) => r.target);
  return { response, log, appSaw, closed: result.closed };
}

/**
 * How a permissive app framework would read a target it was sent: WHATWG URL parsing decodes `%2e` dots,
 * turns `\` into `/` and resolves dot segments. A forbidden path must not appear even under that reading.
 */
function forbiddenInAppView(target: string): boolean {
  // Bytes the recorder cannot frame prove nothing either way, so they count against the sidecar.
  if (target === "<unparsable>") return true;
  const pathname = new URL(target, "http://app").pathname;
  return /^\/+(admin|private)/i.test(pathname) || target.includes("%23") || target.includes("#");
}

function assertNothingForbiddenReachedTheApp(t: Test): void {
  const seen = wire.requests().map((r) => r.target);
  t.same(seen.filter(forbiddenInAppView), [], "no forbidden path ever reached the app");
}

async function assertDenied(t: Test, target: string, normalized: string): Promise<void> {
  const { response, log, appSaw } = await attempt(rawGet(target));
  t.equal(response.status, 403);
  t.equal(response.header("x-mtlsd-reason"), "policy_denied");
  t.equal(log.path, normalized, "the policy judged the normalized path");
  t.equal(log.rule, "no-admin");
  t.same(appSaw, [], "the app was sent nothing");
  assertNothingForbiddenReachedTheApp(t);
}

async function assertBadPath(t: Test, target: string, detail: RegExp): Promise<void> {
  const { response, log, appSaw } = await attempt(rawGet(target));
  t.equal(response.status, 400);
  t.equal(response.header("x-mtlsd-reason"), "bad_path");
  t.match(JSON.parse(response.body), { reason: "bad_path", error: detail });
  t.equal(log.reason, "bad_path");
  t.equal(log.status, 400);
  t.same(appSaw, [], "the app was sent nothing");
  assertNothingForbiddenReachedTheApp(t);
}

t.test("an allowed path reaches the app, so the refusals below are the policy's doing", async (t) => {
  const { response, appSaw } = await attempt(rawGet("/public/hello"));
  t.equal(response.status, 200);
  t.equal((JSON.parse(response.body) as Echo).url, "/public/hello");
  t.same(appSaw, ["/public/hello"]);
});

t.test("CVE-2019-9901: /info/../private is normalized to /private before matching and denied", async (t) => {
  await assertDenied(t, "/info/../private", "/private");
});

t.test("CVE-2021-31920: an encoded slash %2F is refused as a bad path", async (t) => {
  await assertBadPath(t, "/public%2F..%2Fadmin", /encoded slash/);
});

t.test("CVE-2021-31920: a lowercase encoded slash %2f is refused as a bad path", async (t) => {
  await assertBadPath(t, "/public%2f..%2fadmin", /encoded slash/);
});

t.test("CVE-2021-29492: an encoded backslash %5C is refused as a bad path", async (t) => {
  await assertBadPath(t, "/public%5C..%5Cadmin", /encoded backslash/);
});

t.test("CVE-2021-31920: a doubled slash //admin is merged and denied", async (t) => {
  await assertDenied(t, "//admin", "/admin");
});

t.test("CVE-2021-31920: /public/..//admin resolves and merges to /admin and is denied", async (t) => {
  await assertDenied(t, "/public/..//admin", "/admin");
});

t.test("encoded dots /public/%2e%2e/admin are decoded, resolved to /admin, and denied", async (t) => {
  await assertDenied(t, "/public/%2e%2e/admin", "/admin");
});

t.test("double-encoded dots are decoded once only and reach the app as the literal path", async (t) => {
  const { response, log, appSaw } = await attempt(rawGet("/public/%252e%252e/admin"));
  t.equal(response.status, 200);
  t.equal(log.path, "/public/%252e%252e/admin", "the policy judged the literal segment");
  t.equal(log.rule, "public-reads");
  t.same(appSaw, ["/public/%252e%252e/admin"], "the app was sent exactly the bytes the policy allowed");
  t.equal((JSON.parse(response.body) as Echo).url, "/public/%252e%252e/admin");
});

t.test("CVE-2021-39156: a fragment /user/profile#frag is refused, never forwarded as %23", async (t) => {
  await assertBadPath(t, "/user/profile#frag", /fragment/);
});

t.test("CVE-2021-32779: a fragment hiding dot segments /public/x#/../admin is refused", async (t) => {
  await assertBadPath(t, "/public/x#/../admin", /fragment/);
});

t.test("CVE-2020-8595: a query does not take a path out of an exact DENY rule", async (t) => {
  const { response, log, appSaw } = await attempt(rawGet("/v1/exact?x"));
  t.equal(response.status, 403);
  t.equal(response.header("x-mtlsd-reason"), "policy_denied");
  t.equal(log.path, "/v1/exact");
  t.equal(log.rule, "no-exact");
  t.same(appSaw, []);
});

t.test("CVE-2020-8595: a fragment after an exact DENY path is refused as a bad path", async (t) => {
  await assertBadPath(t, "/v1/exact#y", /fragment/);
});

t.test("an exact ALLOW rule still matches with a query, and the app gets the query", async (t) => {
  const { response, log, appSaw } = await attempt(rawGet("/v2/exact?x"));
  t.equal(response.status, 200);
  t.equal(log.path, "/v2/exact");
  t.same(appSaw, ["/v2/exact?x"]);
});

t.test("an encoded NUL %00 is refused as a bad path", async (t) => {
  await assertBadPath(t, "/public/%00", /NUL/);
});

t.test("a backslash is a separator: /public\\..\\admin resolves to /admin and is denied", async (t) => {
  await assertDenied(t, "/public\\..\\admin", "/admin");
});

t.test("a dot segment with path parameters /public/..;/admin is refused as a bad path", async (t) => {
  await assertBadPath(t, "/public/..;/admin", /dot segment with path parameters/);
});

t.test("the app receives exactly the normalized path and the original query", async (t) => {
  const { response, log, appSaw } = await attempt(rawGet("/public/./a//b?q=%2F"));
  t.equal(response.status, 200);
  t.equal(log.path, "/public/a/b");
  t.same(appSaw, ["/public/a/b?q=%2F"]);
  t.equal((JSON.parse(response.body) as Echo).url, "/public/a/b?q=%2F");
});

t.test("CVE-2021-39155: a Host header in odd case reaches the app unchanged", async (t) => {
  const { response } = await attempt(rawGet("/public/host", "", "PuBlIc.Example.ORG"));
  t.equal(response.status, 200);
  const echo = JSON.parse(response.body) as Echo;
  t.equal(echo.headers.host, "PuBlIc.Example.ORG");
  t.equal(
    echo.rawHeaders.filter((_, i) => i % 2 === 0 && echo.rawHeaders[i]!.toLowerCase() === "host").length,
    1,
  );
});

t.test("CVE-2021-39155: the Host header plays no part in the decision", async (t) => {
  const denied = await attempt(rawGet("/admin", "", "PUBLIC.example.org"));
  t.equal(denied.response.status, 403);
  t.same(denied.appSaw, []);
  const allowed = await attempt(rawGet("/public/x", "", "Admin.Internal"));
  t.equal(allowed.response.status, 200);
  t.same(allowed.appSaw, ["/public/x"]);
});

t.test("two Host headers are refused with 400 and never reach the app", async (t) => {
  const { response, appSaw, closed } = await attempt(
    "GET /public/two-hosts HTTP/1.1\r\nHost: public.example.org\r\nHost: admin.internal\r\n\r\n",
  );
  t.equal(response.status, 400);
  t.equal(response.header("x-mtlsd-reason"), "bad_request");
  t.same(appSaw, []);
  t.ok(closed, "the connection is closed: the request's meaning is in doubt");
});

t.test("an absolute-form request-target is refused as a bad path, so no rule judges a URL", async (t) => {
  await assertBadPath(t, "http://localhost/public/../admin", /origin-form/);
});

// HTTP/2: the same tricks as `:path` values, from node:http2 with the frontend's certificate. Each must end as it
// does over HTTP/1.1: the same status, reason and normalized path, and nothing forbidden sent to the app.

interface H2Attempt {
  status?: number;
  reason?: string;
  body: string;
  /** The stream's RST_STREAM code when it was reset instead of answered. */
  reset?: number;
  /** The sidecar's `request` log line, when the stream got an answer. */
  log?: LogLine;
  appSaw: string[];
}

/** Sends one GET with `path` as its `:path` on a fresh HTTP/2 session; attempts in this file run one at a time. */
async function attemptH2(path: string): Promise<H2Attempt> {
  const logsBefore = sidecar.logs.length;
  const wireBefore = wire.requests().length;
  const session = http2.connect(`https://localhost:${sidecar.inboundPort}`, client);
  session.on("error", () => {});
  try {
    await once(session, "connect");
    const stream = session.request({ ":path": path });
    let headers: http2.IncomingHttpHeaders = {};
    const chunks: Buffer[] = [];
    stream.on("response", (fields) => {
      headers = fields;
    });
    stream.on("data", (chunk: Buffer) => chunks.push(chunk));
    const reset = await new Promise<number | undefined>((resolve) => {
      stream.on("end", () => resolve(undefined));
      stream.on("error", () => resolve(stream.rstCode));
    });
    const answered = headers[":status"] !== undefined;
    const log = answered
      ? await waitForLog(
          sidecar.logs,
          (line) => line.msg === "request" && sidecar.logs.indexOf(line) >= logsBefore,
        )
      : undefined;
    const appSaw = wire
      .requests()
      .slice(wireBefore)
      .map((r) => r.target);
    return {
      ...(answered ? { status: Number(headers[":status"]) } : {}),
      ...(typeof headers["x-mtlsd-reason"] === "string" ? { reason: headers["x-mtlsd-reason"] } : {}),
      body: Buffer.concat(chunks).toString(),
      ...(reset !== undefined ? { reset } : {}),
      ...(log ? { log } : {}),
      appSaw,
    };
  } finally {
    session.close();
  }
}

t.test(
  "HTTP/2: an allowed :path reaches the app, so the refusals below are the policy's doing",
  async (t) => {
    const { status, log, appSaw, body } = await attemptH2("/public/h2-hello");
    t.equal(status, 200);
    t.equal(log?.protocol, "h2");
    t.equal((JSON.parse(body) as Echo).url, "/public/h2-hello");
    t.same(appSaw, ["/public/h2-hello"]);
  },
);

// [what it tried, :path, the path the policy must judge]
const DENIED_OVER_H2: [string, string, string][] = [
  ["CVE-2019-9901: dot segments", "/info/../private", "/private"],
  ["CVE-2021-31920: a doubled slash", "//admin", "/admin"],
  ["CVE-2021-31920: dot segments then a doubled slash", "/public/..//admin", "/admin"],
  ["encoded dots", "/public/%2e%2e/admin", "/admin"],
  ["uppercase encoded dots", "/public/%2E%2E/admin", "/admin"],
  ["backslashes as separators", "/public\\..\\admin", "/admin"],
];

for (const [what, path, normalized] of DENIED_OVER_H2) {
  t.test(`HTTP/2, ${what}: :path ${path} is judged as ${normalized} and denied`, async (t) => {
    const { status, reason, log, appSaw } = await attemptH2(path);
    t.equal(status, 403);
    t.equal(reason, "policy_denied");
    t.match(
      log,
      { protocol: "h2", path: normalized, rule: "no-admin" },
      "the policy judged the normalized path",
    );
    t.same(appSaw, [], "the app was sent nothing");
    assertNothingForbiddenReachedTheApp(t);
  });
}

// [what it tried, :path, what the refusal says]
const BAD_OVER_H2: [string, string, RegExp][] = [
  ["CVE-2021-31920: an encoded slash", "/public%2F..%2Fadmin", /encoded slash/],
  ["CVE-2021-31920: a lowercase encoded slash", "/public%2f..%2fadmin", /encoded slash/],
  ["CVE-2021-29492: an encoded backslash", "/public%5C..%5Cadmin", /encoded backslash/],
  ["CVE-2021-39156: a fragment", "/user/profile#frag", /fragment/],
  ["CVE-2021-32779: a fragment hiding dot segments", "/public/x#/../admin", /fragment/],
  ["CVE-2020-8595: a fragment after an exact DENY path", "/v1/exact#y", /fragment/],
  ["a dot segment with path parameters", "/public/..;/admin", /dot segment with path parameters/],
  ["an encoded NUL", "/public/%00", /NUL/],
];

for (const [what, path, detail] of BAD_OVER_H2) {
  t.test(`HTTP/2, ${what}: :path ${path} is refused as a bad path`, async (t) => {
    const { status, reason, body, log, appSaw } = await attemptH2(path);
    t.equal(status, 400);
    t.equal(reason, "bad_path");
    t.match(JSON.parse(body), { reason: "bad_path", error: detail });
    t.match(log, { protocol: "h2", reason: "bad_path", status: 400 });
    t.same(appSaw, [], "the app was sent nothing");
    assertNothingForbiddenReachedTheApp(t);
  });
}

t.test("HTTP/2, CVE-2020-8595: a query does not take :path out of an exact DENY rule", async (t) => {
  const { status, reason, log, appSaw } = await attemptH2("/v1/exact?x");
  t.equal(status, 403);
  t.equal(reason, "policy_denied");
  t.match(log, { protocol: "h2", path: "/v1/exact", rule: "no-exact" });
  t.same(appSaw, []);
});

t.test(
  "HTTP/2: double-encoded dots in :path are decoded once and reach the app as the literal path",
  async (t) => {
    const { status, log, appSaw } = await attemptH2("/public/%252e%252e/admin");
    t.equal(status, 200);
    t.match(log, { protocol: "h2", path: "/public/%252e%252e/admin", rule: "public-reads" });
    t.same(appSaw, ["/public/%252e%252e/admin"], "the app was sent exactly the bytes the policy allowed");
  },
);

// RFC 9113 §8.3.1: `:path` of a GET is origin-form, starting with "/", with no whitespace. Such a stream is
// malformed: reset before it is a request at all, so it never meets the policy or the app.
const MALFORMED_OVER_H2: [string, string][] = [
  ["a relative path", "public/../admin"],
  ["an absolute URL", "http://localhost/public/../admin"],
  ["an asterisk", "*"],
  ["a space", "/public/ /../admin"],
  ["a tab", "/public/\t/../admin"],
];

for (const [what, path] of MALFORMED_OVER_H2) {
  t.test(`HTTP/2: a :path with ${what} is reset as malformed and never reaches the app`, async (t) => {
    const { status, reset, appSaw } = await attemptH2(path);
    t.equal(status, undefined, "no answer: the stream was reset");
    t.equal(reset, http2.constants.NGHTTP2_PROTOCOL_ERROR);
    t.same(appSaw, [], "the app was sent nothing");
    assertNothingForbiddenReachedTheApp(t);
  });
}
