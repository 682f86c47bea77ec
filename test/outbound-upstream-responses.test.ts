// What an upstream that is not mtlsd answers over HTTP/1.1: an unsolicited 100 is passed over, broken framing is a 502.
import type net from "node:net";
import tls from "node:tls";
import t from "tap";
import { appRequest, sidecarError, startCaller } from "./helpers/outbound.ts";
import { createTestPki } from "./helpers/pki.ts";
import { waitForLog } from "./helpers/sidecar.ts";

const pki = await createTestPki();
t.teardown(() => pki.cleanup());
const frontend = await pki.identity("frontend");
const ledger = await pki.identity("ledger");

const OK = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello";
const ANSWERS: Record<string, string> = {
  "/continue": `HTTP/1.1 100 Continue\r\n\r\n${OK}`,
  "/cl-and-te":
    "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
};

// A TLS server with the ledger's SVID that answers each request line with exact bytes (keep-alive), and speaks
// only HTTP/1.1 (ALPN), as a proxy of another mesh or a plain HTTPS service may.
const connections: number[] = [];
const server = tls.createServer(
  {
    cert: ledger.chainPem,
    key: ledger.keyPem,
    ca: pki.bundlePem,
    requestCert: true,
    rejectUnauthorized: true,
    ALPNProtocols: ["http/1.1"],
  },
  (socket) => {
    const id = connections.length + 1;
    let buffered = "";
    socket.setEncoding("latin1");
    socket.on("error", () => {});
    socket.on("data", (chunk: string) => {
      buffered += chunk;
      for (let end = buffered.indexOf("\r\n\r\n"); end !== -1; end = buffered.indexOf("\r\n\r\n")) {
        const path = buffered.slice(0, end).split(" ")[1]!;
        buffered = buffered.slice(end + 4);
        connections.push(id);
        socket.write(ANSWERS[path] ?? OK);
      }
    });
  },
);
await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())));
const address = `127.0.0.1:${(server.address() as net.AddressInfo).port}`;

const caller = await startCaller(pki, frontend, {
  "ledger-h1": { address, identity: ledger.spiffeId, protocol: "http1" },
  "ledger-auto": { address, identity: ledger.spiffeId, protocol: "auto" },
});
t.teardown(() => caller.stop());

for (const upstream of ["ledger-h1", "ledger-auto"]) {
  t.test(
    `${upstream}: an unsolicited 100 before the answer reaches the app as the final answer`,
    async (t) => {
      for (let i = 0; i < 2; i++) {
        const result = await appRequest(`http://${upstream}/continue`, { proxy: caller.proxyUrl });
        t.equal(result.response?.status, 200, result.stdout);
        t.equal(result.response?.body, "hello");
      }
    },
  );
}

t.test(
  "an upstream answer with Content-Length and Transfer-Encoding is a 502 upstream_protocol_error",
  async (t) => {
    const result = await appRequest("http://ledger-h1/cl-and-te", { proxy: caller.proxyUrl });
    const error = sidecarError(result);
    t.equal(error.status, 502);
    t.equal(error.header, "upstream_protocol_error");
    t.match(error.error, "ledger-h1 answered with a response that breaks HTTP/1.1");
    const line = await waitForLog(caller.logs, (l) => l.msg === "request" && l.path === "/cl-and-te");
    t.match(line, { level: "warn", direction: "outbound", reason: "upstream_protocol_error", status: 502 });
  },
);
