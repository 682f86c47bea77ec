// Migrating a service to mTLS: strict mode turns plaintext away with a 400, permissive mode serves it as unauthenticated.
import { randomUUID } from "node:crypto";
import net from "node:net";
import t from "tap";
import { startApp } from "./helpers/app.ts";
import { curl, curlRequest, parseHttpResponse } from "./helpers/clients.ts";
import { createTestPki } from "./helpers/pki.ts";
import { type LogLine, type RunningSidecar, startSidecar, waitForLog } from "./helpers/sidecar.ts";

const pki = await createTestPki();
t.teardown(() => pki.cleanup());
const app = await startApp();
t.teardown(() => app.stop());
const orders = await pki.identity("orders");
const frontend = await pki.identity("frontend");

const policy = {
  default: "deny",
  rules: [
    // No `from`: any source, the unauthenticated one included (a probe that must work during the migration).
    { name: "anyone-reads-health", action: "allow", to: [{ methods: ["GET"], paths: ["/healthz/*"] }] },
    // `from: ["*"]` needs an authenticated peer, so it never covers a plaintext caller.
    { name: "peers-read-orders", action: "allow", from: ["*"], to: [{ paths: ["/v1/orders/*"] }] },
  ],
};

async function sidecarWith(inbound: Record<string, unknown>, extra: Record<string, unknown> = {}) {
  const running = await startSidecar(pki, orders, {
    inbound: { listen: "127.0.0.1:0", app: app.url, policy, ...inbound },
    ...extra,
  });
  t.teardown(() => running.stop());
  return running;
}

const strict = await sidecarWith({});
const permissive = await sidecarWith({ mode: "permissive" }, { metrics: { maxIdentityLabels: 1 } });
const permissiveForwardOnly = await sidecarWith({ mode: "permissive", xfcc: "forward_only" });

function plainUrl(sidecar: RunningSidecar, path: string): string {
  return `http://127.0.0.1:${sidecar.inboundPort}${path}`;
}

function requestLine(sidecar: RunningSidecar, path: string): Promise<LogLine> {
  return waitForLog(sidecar.logs, (line) => line.msg === "request" && line.path === path);
}

interface Echo {
  url: string;
  headers: Record<string, string | string[] | undefined>;
}

t.test(
  "strict: a plaintext curl gets a 400 saying mutual TLS is required, then the connection closes",
  async (t) => {
    const before = strict.logs.length;
    const path = `/healthz/${randomUUID()}`;
    const result = await curlRequest(plainUrl(strict, path), { cacert: pki.bundlePath });
    t.equal(result.code, 0, `curl got a response (${result.stderr.trim()})`);
    const response = result.response!;
    t.equal(response.status, 400);
    t.equal(response.headers["x-mtlsd-reason"], "mtls_required");
    t.equal(response.headers.connection, "close", "the sidecar announces the close");
    t.match(JSON.parse(response.body), { reason: "mtls_required", error: /mutual TLS/ });
    t.notOk(response.headers["x-app"], "the sidecar answered, not the app");

    const failure = await waitForLog(
      strict.logs,
      (line) => line.msg === "plaintext refused: mTLS required" && strict.logs.indexOf(line) >= before,
    );
    t.match(failure, {
      level: "warn",
      reason: "mtls_required",
      remote_address: "127.0.0.1",
      detail: /plaintext HTTP on a strict mTLS port/,
    });
    t.notOk(
      strict.logs.some((line) => line.msg === "request" && line.path === path),
      "no request was forwarded or logged as served",
    );
  },
);

t.test(
  "strict: the server closes a plaintext connection even if the client would keep it open",
  async (t) => {
    const socket = net.connect(strict.inboundPort, "127.0.0.1");
    t.teardown(() => socket.destroy());
    const chunks: Buffer[] = [];
    socket.on("data", (chunk: Buffer) => chunks.push(chunk));
    socket.write("GET /healthz/x HTTP/1.1\r\nHost: orders\r\nConnection: keep-alive\r\n\r\n");
    const closed = await new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => resolve(false), 5000);
      socket.on("close", () => {
        clearTimeout(timer);
        resolve(true);
      });
    });
    t.ok(closed, "the socket was closed by the server within 5 s");
    const response = parseHttpResponse(Buffer.concat(chunks).toString("latin1"));
    t.equal(response?.status, 400);
    t.equal(response?.headers["x-mtlsd-reason"], "mtls_required");
  },
);

t.test("strict: a plaintext request is counted as an mtls_required refusal, not a TLS failure", async (t) => {
  const count = async (reason: string) =>
    (await strict.sidecar.metrics.handshakeFailures.get()).values.find(
      (sample) => sample.labels.reason === reason && sample.labels.direction === "inbound",
    )?.value ?? 0;
  const [required, protocol] = [await count("mtls_required"), await count("tls_protocol")];
  const result = await curlRequest(plainUrl(strict, "/counted"), { cacert: pki.bundlePath });
  t.equal(result.response?.status, 400);
  t.equal(await count("mtls_required"), required + 1);
  t.equal(await count("tls_protocol"), protocol, "no tls_protocol failure for it");
});

t.test("the startup line says which mode the inbound listener runs in", async (t) => {
  t.match(
    strict.logs.find((l) => l.msg === "mtlsd started"),
    { inbound_mode: "strict" },
  );
  t.match(
    permissive.logs.find((l) => l.msg === "mtlsd started"),
    { inbound_mode: "permissive" },
  );
});

t.test("permissive: plaintext and mTLS clients are served on the same port", async (t) => {
  const plainPath = `/healthz/${randomUUID()}`;
  const tlsPath = `/healthz/${randomUUID()}`;
  const [plain, mtls] = await Promise.all([
    curlRequest(plainUrl(permissive, plainPath), { cacert: pki.bundlePath }),
    curlRequest(`https://localhost:${permissive.inboundPort}${tlsPath}`, {
      cacert: pki.bundlePath,
      cert: frontend.certPath,
      key: frontend.keyPath,
    }),
  ]);
  t.equal(plain.response?.status, 200, `plaintext: ${plain.stderr}`);
  t.equal(plain.response?.headers["x-app"], "echo", "the app answered the plaintext request");
  t.equal(mtls.response?.status, 200, `mTLS: ${mtls.stderr}`);

  const plainLine = await requestLine(permissive, plainPath);
  t.match(plainLine, {
    level: "info",
    plaintext: true,
    source_identity: "unauthenticated",
    decision: "allow",
    rule: "anyone-reads-health",
    status: 200,
  });
  const tlsLine = await requestLine(permissive, tlsPath);
  t.match(tlsLine, { source_identity: frontend.spiffeId, decision: "allow" });
  t.notOk("plaintext" in tlsLine, "an mTLS request is not flagged plaintext");
});

t.test("permissive: several plaintext requests share one keep-alive connection", async (t) => {
  const paths = [`/healthz/${randomUUID()}`, `/healthz/${randomUUID()}`];
  const result = await curl([
    "-sS",
    "-v",
    "-o",
    "/dev/null",
    "-o",
    "/dev/null",
    ...paths.map((p) => plainUrl(permissive, p)),
  ]);
  t.equal(result.code, 0, "curl succeeded");
  t.match(result.stderr, /Re-using existing connection/, "curl reused the connection for the second request");
  for (const path of paths) t.match(await requestLine(permissive, path), { status: 200, plaintext: true });
});

t.test("permissive: a plaintext request that arrives one byte first is read whole, in order", async (t) => {
  // The first byte decides TLS or not; the rest must reach the HTTP parser after it, not before.
  const path = `/healthz/${randomUUID()}`;
  const socket = net.connect(permissive.inboundPort, "127.0.0.1");
  t.teardown(() => socket.destroy());
  const chunks: Buffer[] = [];
  socket.on("data", (chunk: Buffer) => chunks.push(chunk));
  socket.setNoDelay(true);
  socket.write("G");
  await new Promise((resolve) => setTimeout(resolve, 100));
  socket.write(`ET ${path} HTTP/1.1\r\nHost: orders\r\nConnection: close\r\n\r\n`);
  await new Promise<void>((resolve) => {
    const timer = setTimeout(resolve, 5000);
    socket.on("close", () => {
      clearTimeout(timer);
      resolve();
    });
  });
  const response = parseHttpResponse(Buffer.concat(chunks).toString("latin1"));
  t.equal(response?.status, 200);
  t.equal((JSON.parse(response!.body) as Echo).url, path, "the app got the whole request line");
});

t.test(
  "permissive: a plaintext caller is unauthenticated, so a from: [*] rule does not cover it",
  async (t) => {
    const path = `/v1/orders/${randomUUID()}`;
    const plain = await curlRequest(plainUrl(permissive, path), { cacert: pki.bundlePath });
    t.equal(plain.response?.status, 403);
    t.equal(plain.response?.headers["x-mtlsd-reason"], "policy_denied");
    t.match(await requestLine(permissive, path), {
      level: "warn",
      plaintext: true,
      source_identity: "unauthenticated",
      decision: "deny",
      rule: "default",
    });

    const mtlsPath = `/v1/orders/${randomUUID()}`;
    const mtls = await curlRequest(`https://localhost:${permissive.inboundPort}${mtlsPath}`, {
      cacert: pki.bundlePath,
      cert: frontend.certPath,
      key: frontend.keyPath,
    });
    t.equal(mtls.response?.status, 200, "the same path is allowed to an authenticated peer");
  },
);

for (const [mode, sidecar] of [
  ["sanitize_set", permissive],
  ["forward_only", permissiveForwardOnly],
] as const) {
  t.test(`permissive (${mode}): an XFCC sent over plaintext is removed before the app sees it`, async (t) => {
    const forged = "By=spiffe://example.org/ns/orders/sa/orders;URI=spiffe://example.org/ns/ops/sa/admin";
    const result = await curlRequest(plainUrl(sidecar, `/healthz/${randomUUID()}`), {
      cacert: pki.bundlePath,
      headers: [`X-Forwarded-Client-Cert: ${forged}`, "X-Forwarded-Proto: https"],
    });
    t.equal(result.response?.status, 200);
    const echo = JSON.parse(result.response!.body) as Echo;
    t.equal(echo.headers["x-forwarded-client-cert"], undefined, "no XFCC reaches the app");
    t.equal(echo.headers["x-forwarded-proto"], "http", "the app learns the request came in plaintext");
  });
}

t.test("permissive: a TLS client without a certificate is still refused as no_client_cert", async (t) => {
  const result = await curlRequest(`https://localhost:${permissive.inboundPort}/healthz/x`, {
    cacert: pki.bundlePath,
  });
  t.equal(result.response?.status, 403);
  t.equal(result.response?.headers["x-mtlsd-reason"], "no_client_cert");
});

t.test(
  "permissive: plaintext requests are counted as source_identity unauthenticated, never as other",
  async (t) => {
    // maxIdentityLabels is 1 here and the frontend has taken that one label by now.
    const path = `/healthz/${randomUUID()}`;
    await curlRequest(plainUrl(permissive, path), { cacert: pki.bundlePath });
    await requestLine(permissive, path);
    const text = await permissive.sidecar.metrics.metrics();
    const counted = (decision: string, identity: string) =>
      text
        .split("\n")
        .filter(
          (line) =>
            line.startsWith("mtlsd_requests_total{") &&
            line.includes(`decision="${decision}"`) &&
            line.includes(`source_identity="${identity}"`),
        )
        .reduce((sum, line) => sum + Number(line.split(" ").at(-1)), 0);
    t.ok(counted("allow", "unauthenticated") >= 1, "allowed plaintext requests are counted");
    t.ok(counted("deny", "unauthenticated") >= 1, "denied plaintext requests are counted");
    t.ok(counted("allow", frontend.spiffeId) >= 1, "the frontend holds the one identity label");
    t.equal(counted("allow", "other") + counted("deny", "other"), 0, "nothing overflowed into other");
  },
);
