// `mtlsd run` reads certificates without @peculiar/x509 and its dependencies: ~13 MiB of RSS per sidecar (issue 16).
import type { ChildProcess } from "node:child_process";
import { once } from "node:events";
import { readFile, writeFile } from "node:fs/promises";
import net from "node:net";
import path from "node:path";
import t from "tap";
import { stringify } from "yaml";
import { startApp } from "./helpers/app.ts";
import { curl, curlRequest } from "./helpers/clients.ts";
import { createTestPki } from "./helpers/pki.ts";
import { spawnSidecar } from "./helpers/process.ts";

const RECORDER = new URL("./fixtures/record-modules.mjs", import.meta.url).pathname;

// What the CLI's PKI commands load and the sidecar must not: the library, its polyfill, its DI container and
// its ASN.1 and buffer helpers, and our one module that loads them.
const FORBIDDEN = [
  /\/node_modules\/@peculiar\//,
  /\/node_modules\/reflect-metadata\//,
  /\/node_modules\/tsyringe\//,
  /\/node_modules\/pvtsutils\//,
  /\/src\/x509\.ts$/,
  // Both sidecars speak HTTP/1.1 with clients of their own: undici (~6 MiB private) is loaded by the first upgrade.
  /\/node_modules\/undici\//,
];

const pki = await createTestPki();
t.teardown(() => pki.cleanup());
const app = await startApp();
t.teardown(() => app.stop());
const orders = await pki.identity("orders");
const frontend = await pki.identity("frontend");

/** Starts `mtlsd run` with the recorder, once it logs `mtlsd started`: its inbound and outbound ports. */
async function startRecorded(
  configPath: string,
  log: string,
): Promise<{ child: ChildProcess; port: number; outboundPort: number }> {
  const { child, listeners } = await spawnSidecar(configPath, 20_000, {
    execArgv: ["--import", RECORDER],
    env: { PATH: process.env.PATH, MTLSD_MODULE_LOG: log },
  });
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  });
  const portOf = (address: string | undefined) => Number(address?.split(":").at(-1));
  return { child, port: portOf(listeners.inbound), outboundPort: portOf(listeners.outbound) };
}

t.test(
  "mtlsd run serves mTLS requests, inbound and outbound, without loading @peculiar/x509, its dependencies or undici",
  async (t) => {
    const configPath = path.join(pki.dir, "modules.yaml");
    // The outbound calls this same sidecar's inbound: its port has to be known before the config is written.
    const probe = net.createServer().listen(0, "127.0.0.1");
    await once(probe, "listening");
    const inboundPort = (probe.address() as net.AddressInfo).port;
    await new Promise((resolve) => probe.close(resolve));
    await writeFile(
      configPath,
      stringify({
        identity: {
          cert: orders.certPath,
          key: orders.keyPath,
          trustBundle: pki.bundlePath,
          trustDomain: pki.trustDomain,
        },
        inbound: {
          listen: `127.0.0.1:${inboundPort}`,
          app: app.url,
          policy: {
            rules: [{ name: "callers", action: "allow", from: [frontend.spiffeId, orders.spiffeId] }],
          },
        },
        outbound: {
          listen: "127.0.0.1:0",
          upstreams: { self: { address: `127.0.0.1:${inboundPort}`, identity: orders.spiffeId } },
        },
        admin: { listen: "127.0.0.1:0" },
      }),
    );
    const log = path.join(pki.dir, "modules.log");
    const { child, port, outboundPort } = await startRecorded(configPath, log);
    // A client certificate makes the sidecar read a peer's certificate: the code path that used the library.
    const inbound = await curlRequest(`https://localhost:${port}/v1/orders`, {
      cacert: pki.bundlePath,
      cert: frontend.certPath,
      key: frontend.keyPath,
    });
    const echoed = JSON.parse(inbound.response!.body) as { headers: Record<string, string> };
    t.match(echoed.headers["x-forwarded-client-cert"], `URI=${frontend.spiffeId}`, "the peer was identified");
    // The app's call through the outbound, over mTLS to the inbound: both sidecars' HTTP/1.1 clients at work.
    const outbound = await curl(
      ["-sS", "--max-time", "10", "-H", "Host: self", `http://127.0.0.1:${outboundPort}/v1/through`],
      {
        timeoutMs: 15_000,
      },
    );
    const through = JSON.parse(outbound.stdout) as { url: string; headers: Record<string, string> };
    t.equal(through.url, "/v1/through");
    t.match(through.headers["x-forwarded-client-cert"], `URI=${orders.spiffeId}`, "it went over mTLS");
    child.kill("SIGTERM");
    await once(child, "close");

    const loaded = (await readFile(log, "utf8")).split("\n").filter((url) => url !== "");
    t.ok(
      loaded.some((url) => url.endsWith("/src/sidecar.ts")),
      "the recorder saw the sidecar's own modules load",
    );
    t.ok(
      loaded.some((url) => url.endsWith("/src/identity/certificate-der.ts")),
      "and the DER reader the sidecar reads certificates with",
    );
    t.strictSame(
      loaded.filter((url) => FORBIDDEN.some((pattern) => pattern.test(url))),
      [],
      "no module of @peculiar/x509, reflect-metadata, tsyringe, pvtsutils or undici, nor src/x509.ts",
    );
  },
);
