// The compose demo's frontend app: calls orders in plain HTTP through mtlsd's outbound listener, and prints
// what came back, so `docker compose logs frontend` shows an allowed call and a denied one.
import http from "node:http";

const proxy = new URL(process.env.MTLSD_OUTBOUND ?? "http://127.0.0.1:15001");
const interval = Number(process.env.INTERVAL_MS ?? 5000);
const once = process.env.ONCE === "1";

/** One GET to http://orders<path>, sent to mtlsd as a proxy request (absolute-form target). */
function call(path) {
  return new Promise((resolve) => {
    const req = http.request(
      {
        host: proxy.hostname,
        port: proxy.port,
        method: "GET",
        path: `http://orders${path}`,
        headers: { host: "orders" },
        timeout: 5000,
      },
      (res) => {
        let body = "";
        res.setEncoding("utf8");
        res.on("data", (chunk) => {
          body += chunk;
        });
        res.on("end", () =>
          resolve({ path, status: res.statusCode, reason: res.headers["x-mtlsd-reason"], body: body.trim() }),
        );
      },
    );
    req.on("timeout", () => req.destroy(new Error("no answer within 5s")));
    req.on("error", (error) => resolve({ path, error: error.message }));
    req.end();
  });
}

async function round() {
  // Allowed by orders' policy (frontend may GET /v1/orders), then denied (no rule allows /v1/refunds).
  for (const path of ["/v1/orders", "/v1/refunds"]) console.log(JSON.stringify(await call(path)));
}

await round();
if (!once) setInterval(round, interval);
process.on("SIGTERM", () => process.exit(0));
