// The container's HEALTHCHECK: asks mtlsd's admin /healthz and exits 0 on a 200, 1 on anything else.
//
// Plain JavaScript with no imports beyond Node's own, because the image has neither curl nor a compiler.
// MTLSD_HEALTHCHECK_URL overrides the address when admin.listen is not 127.0.0.1:15000.
import http from "node:http";

const url = process.env.MTLSD_HEALTHCHECK_URL || "http://127.0.0.1:15000/healthz";
// Below Docker's --timeout (3s), so a hung admin listener is reported as unhealthy by us, with a reason.
const TIMEOUT_MS = 2000;

function fail(reason) {
  process.stderr.write(`unhealthy: ${url}: ${reason}\n`);
  process.exit(1);
}

const request = http.get(url, { timeout: TIMEOUT_MS }, (response) => {
  response.resume();
  if (response.statusCode === 200) process.exit(0);
  fail(`status ${response.statusCode}`);
});
request.on("timeout", () => request.destroy(new Error(`no answer within ${TIMEOUT_MS}ms`)));
request.on("error", (error) => fail(error.message));
