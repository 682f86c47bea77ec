// The compose demo's orders app: plain HTTP on 127.0.0.1 only, telling each caller who mtlsd says it is.
//
// It trusts X-Forwarded-Client-Cert because mtlsd sits in front of it and replaces whatever a caller sent;
// that is only true because it listens on 127.0.0.1, where nothing but mtlsd (in the same network namespace)
// can reach it.
import http from "node:http";

const port = Number(process.env.PORT ?? 8080);

/** The caller's SPIFFE ID: the URI= of the last XFCC element (the one mtlsd added). */
function callerOf(xfcc) {
  if (typeof xfcc !== "string") return "unknown";
  const match = /(?:^|;|,)URI=([^;,]+)[^,]*$/.exec(xfcc);
  return match ? match[1] : "unknown";
}

const server = http.createServer((req, res) => {
  const caller = callerOf(req.headers["x-forwarded-client-cert"]);
  const path = new URL(req.url ?? "/", "http://orders").pathname;
  const body =
    path === "/v1/orders" || path.startsWith("/v1/orders/")
      ? { orders: [{ id: 1, item: "coffee" }], caller }
      : { error: "not found", caller };
  res.writeHead(body.error ? 404 : 200, { "content-type": "application/json" });
  res.end(`${JSON.stringify(body)}\n`);
});

server.listen(port, "127.0.0.1", () => {
  console.log(JSON.stringify({ msg: "orders listening", port: server.address().port }));
});
process.on("SIGTERM", () => server.close(() => process.exit(0)));
