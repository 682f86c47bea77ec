// Every request-target trick that got past a real proxy's path rules, tried as raw bytes on a real sidecar.
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
