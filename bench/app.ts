// The benchmark's app: answers every request with a fixed 1 KiB body, as Istio's and Linkerd's benchmarks do.
import { createServer } from "node:http";

const body = Buffer.alloc(Number(process.env.BODY_BYTES ?? 1024), 0x78);
const server = createServer((req, res) => {
  req.resume();
  req.on("end", () => {
    res.writeHead(200, { "content-type": "text/plain", "content-length": body.length });
    res.end(body);
  });
});
server.keepAliveTimeout = 65_000;
server.listen(Number(process.env.PORT ?? 0), "127.0.0.1", () => {
  const address = server.address();
  process.stdout.write(`${JSON.stringify({ port: typeof address === "object" ? address?.port : 0 })}\n`);
});
process.on("SIGTERM", () => process.exit(0));
