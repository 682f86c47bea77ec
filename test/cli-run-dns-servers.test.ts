// `$MTLSD_DNS_SERVERS`: upstream names asked of given DNS servers (a service registry's) instead of the host's resolver.
import { writeFile } from "node:fs/promises";
import path from "node:path";
import t from "tap";
import { stringify } from "yaml";
import { parseDnsServers } from "../src/outbound/index.ts";
import { runCli, spawnCli, waitForExit } from "./helpers/cli.ts";
import { startDnsServer } from "./helpers/dns-server.ts";
import { createTestPki, identityConfig } from "./helpers/pki.ts";

const pki = await createTestPki();
t.teardown(() => pki.cleanup());
const frontend = await pki.identity("frontend");
const dns = await startDnsServer();
t.teardown(() => dns.close());

const configPath = path.join(pki.dir, "frontend.yaml");
await writeFile(
  configPath,
  stringify({
    identity: identityConfig(pki, frontend),
    outbound: {
      listen: "127.0.0.1:0",
      upstreams: {
        orders: { address: "orders.registry:15006", identity: "spiffe://example.org/ns/orders/sa/orders" },
      },
    },
    admin: { listen: "127.0.0.1:0" },
  }),
);

t.test("the list takes IP addresses with optional ports, and refuses names", async (t) => {
  t.same(parseDnsServers("127.0.0.1:8600, 10.0.0.2,[::1]:53,fd00::1"), {
    servers: ["127.0.0.1:8600", "10.0.0.2", "[::1]:53", "fd00::1"],
  });
  t.match(parseDnsServers("dns.example"), { error: /"dns\.example" is not an IP address/ });
  t.match(parseDnsServers("127.0.0.1:99999"), { error: /127\.0\.0\.1:99999/ });
  t.match(parseDnsServers(" , "), { error: "no server given" });
});

t.test("a malformed $MTLSD_DNS_SERVERS stops mtlsd run with exit 2, saying what it takes", async (t) => {
  const result = await runCli(["run", "-c", configPath], { env: { MTLSD_DNS_SERVERS: "dns.example" } });
  t.equal(result.code, 2);
  t.match(result.stderr, '$MTLSD_DNS_SERVERS: "dns.example" is not an IP address with an optional port');
  t.match(result.stderr, "or unset it to use the system's resolver");
});

t.test("with $MTLSD_DNS_SERVERS, an upstream name resolves through those servers", async (t) => {
  dns.set("orders.registry", ["127.0.0.2", "127.0.0.3"]);
  const child = spawnCli(["run", "-c", configPath], { env: { MTLSD_DNS_SERVERS: dns.address } });
  t.teardown(() => {
    if (child.exitCode === null) child.kill("SIGKILL");
  });
  const deadline = Date.now() + 10_000;
  let started: { listeners: Record<string, string> } | undefined;
  while (!started) {
    if (Date.now() > deadline || child.exitCode !== null) throw new Error(`not started: ${child.output()}`);
    const line = child
      .output()
      .split("\n")
      .find((text) => text.includes('"mtlsd started"'));
    if (line) started = JSON.parse(line) as { listeners: Record<string, string> };
    else await new Promise((resolve) => setTimeout(resolve, 20));
  }
  const status = (await (await fetch(`http://${started.listeners.admin}/status`)).json()) as {
    upstreams: { orders: { endpoints: { address: string }[] } };
  };
  t.same(
    status.upstreams.orders.endpoints.map((endpoint) => endpoint.address),
    ["127.0.0.2:15006", "127.0.0.3:15006"],
  );
  t.ok(dns.queries("orders.registry") >= 1, "asked the given server");
  child.kill("SIGTERM");
  t.equal(await waitForExit(child, "mtlsd run", 10_000), 0);
});
