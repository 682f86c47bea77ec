// A TLS 1.2 peer cannot make the inbound listener renegotiate: the attempt ends its connection.
import { spawn } from "node:child_process";
import { once } from "node:events";
import t from "tap";
import { startApp } from "./helpers/app.ts";
import { createTestPki } from "./helpers/pki.ts";
import { startSidecar, waitForLog } from "./helpers/sidecar.ts";

const pki = await createTestPki();
t.teardown(() => pki.cleanup());
const app = await startApp();
t.teardown(() => app.stop());
const orders = await pki.identity("orders");
const frontend = await pki.identity("frontend");
const sidecar = await startSidecar(pki, orders, {
  inbound: {
    listen: "127.0.0.1:0",
    app: app.url,
    minTLSVersion: "TLSv1.2",
    policy: { rules: [{ name: "frontend", action: "allow", from: [frontend.spiffeId] }] },
  },
});
t.teardown(() => sidecar.stop());

/**
 * openssl s_client over TLS 1.2, driven line by line: a line "R" asks it to renegotiate. Resolves with
 * everything it printed once it exits (the server closed), or after `timeoutMs` (then it is killed).
 */
function sClient(lines: Array<{ after: number; text: string }>, timeoutMs = 5000) {
  const child = spawn(
    "openssl",
    [
      "s_client",
      "-connect",
      `127.0.0.1:${sidecar.inboundPort}`,
      "-tls1_2",
      "-servername",
      "localhost",
      "-CAfile",
      pki.bundlePath,
      "-cert",
      frontend.certPath,
      // The file holds the leaf and its intermediate: -cert sends only the leaf, -cert_chain the rest.
      "-cert_chain",
      frontend.certPath,
      "-key",
      frontend.keyPath,
      // Neither -quiet nor -ign_eof: only then does s_client read "R" as a command rather than as data.
    ],
    { stdio: ["pipe", "pipe", "pipe"] },
  );
  let output = "";
  child.stdout.on("data", (chunk: Buffer) => {
    output += chunk.toString("latin1");
  });
  child.stderr.on("data", (chunk: Buffer) => {
    output += chunk.toString("latin1");
  });
  child.stdin.on("error", () => {});
  const timers = lines.map(({ after, text }) => setTimeout(() => child.stdin.write(text), after));
  const killer = setTimeout(() => child.kill(), timeoutMs);
  return once(child, "exit").then(([code]) => {
    for (const timer of timers) clearTimeout(timer);
    clearTimeout(killer);
    return { code: code as number | null, output, killed: child.killed };
  });
}

const GET = "GET /renegotiate HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";

t.test("a TLS 1.2 client's plain request is served (the connection itself is fine)", async (t) => {
  const result = await sClient([{ after: 300, text: GET }], 2000);
  t.match(result.output, "Protocol  : TLSv1.2");
  t.match(result.output, "HTTP/1.1 200 OK");
});

t.test(
  "a client-initiated renegotiation (s_client's R) ends the connection; no request follows",
  async (t) => {
    const result = await sClient([
      { after: 300, text: "R\n" },
      { after: 800, text: GET },
    ]);
    t.match(result.output, "RENEGOTIATING");
    t.notOk(result.killed, "the sidecar closed the connection, s_client did not have to be killed");
    t.notMatch(result.output, "HTTP/1.1 200 OK", "nothing was served after the attempt");
    const line = await waitForLog(
      sidecar.logs,
      (l) => l.msg === "handshake failed" && l.detail === RENEGOTIATION,
    );
    t.match(line, { level: "warn", direction: "inbound", reason: "tls_protocol" });
  },
);

const RENEGOTIATION = "the client asked for a TLS renegotiation, which this listener refuses";
