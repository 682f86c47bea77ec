// Measures how many outbound TLS handshakes resume a session while pooled upstream connections churn.
//
// Two sidecars in this process: "orders" (inbound, in front of a tiny app) closes every connection after its
// response (limits.keepAliveTimeout 100ms, so it announces Keep-Alive: timeout=0), and "frontend" (outbound)
// carries `--requests` requests to it, `--concurrency` at a time. Every request therefore opens a new mTLS
// connection; the output says how many of those handshakes were full and how many resumed, counted on both
// sides (the caller's upstream stats and the upstream's inbound listener).
//
//   npx node bench/outbound-resumption.ts --requests 2000 --concurrency 8
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import http from "node:http";
import type { AddressInfo } from "node:net";
import os from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import { Pool } from "undici";
import { stringify } from "yaml";
import { parseConfig } from "../src/config/index.ts";
import { createIntermediateCA, createRootCA, issueLeaf } from "../src/pki/index.ts";
import { Sidecar } from "../src/sidecar.ts";

const { values } = parseArgs({
  options: {
    requests: { type: "string", default: "2000" },
    concurrency: { type: "string", default: "8" },
    "keep-alive": { type: "string", default: "100ms" },
  },
});
const requests = Number(values.requests);
const concurrency = Number(values.concurrency);

const dir = await mkdtemp(path.join(os.tmpdir(), "mtlsd-bench-"));
const trustDomain = "example.org";
const root = await createRootCA({ trustDomain });
const intermediate = await createIntermediateCA(root);
await writeFile(path.join(dir, "bundle.pem"), root.certPem);
async function identity(name: string) {
  const spiffeId = `spiffe://${trustDomain}/ns/${name}/sa/${name}`;
  const leaf = await issueLeaf(intermediate, { spiffeId });
  await writeFile(path.join(dir, `${name}.crt`), leaf.chainPem);
  await writeFile(path.join(dir, `${name}.key`), leaf.keyPem, { mode: 0o600 });
  return {
    spiffeId,
    files: {
      cert: path.join(dir, `${name}.crt`),
      key: path.join(dir, `${name}.key`),
      trustBundle: path.join(dir, "bundle.pem"),
      trustDomain,
    },
  };
}
async function start(name: string, config: Record<string, unknown>): Promise<Sidecar> {
  const file = path.join(dir, `${name}.yaml`);
  // Two sidecars in this process: each admin listener on a port of its own.
  const text = stringify({ ...config, admin: { listen: "127.0.0.1:0" }, log: { level: "silent" } });
  await writeFile(file, text);
  return Sidecar.start(parseConfig(text, file));
}

const app = http.createServer((_req, res) => res.end("ok"));
await new Promise<void>((resolve) => app.listen(0, "127.0.0.1", resolve));
const frontend = await identity("frontend");
const orders = await identity("orders");
const upstream = await start("orders", {
  identity: orders.files,
  inbound: {
    listen: "127.0.0.1:0",
    app: `http://127.0.0.1:${(app.address() as AddressInfo).port}`,
    policy: { rules: [{ name: "frontend", action: "allow", from: [frontend.spiffeId] }] },
  },
  limits: { keepAliveTimeout: values["keep-alive"] },
});
const caller = await start("frontend", {
  identity: frontend.files,
  outbound: {
    listen: "127.0.0.1:0",
    upstreams: {
      orders: { address: `127.0.0.1:${upstream.addresses().inbound!.port}`, identity: orders.spiffeId },
    },
  },
});

// The app side: keep-alive to the outbound listener, so only the upstream side churns.
const appClient = new Pool(`http://127.0.0.1:${caller.addresses().outbound!.port}`, {
  connections: concurrency,
});
let next = 0;
let failed = 0;
async function worker(): Promise<void> {
  while (next < requests) {
    next++;
    const response = await appClient.request({ path: "/", method: "GET", headers: { host: "orders" } });
    await response.body.dump();
    if (response.statusCode !== 200) failed++;
  }
}
await Promise.all(Array.from({ length: concurrency }, worker));

const { handshakes } = caller.upstreamStats().orders!;
const accepted = upstream.inboundStats()!;
const total = handshakes.full + handshakes.resumed;
console.log(
  JSON.stringify({
    requests,
    concurrency,
    failed,
    upstreamKeepAlive: values["keep-alive"],
    caller: { ...handshakes, resumedShare: Number((handshakes.resumed / total).toFixed(4)) },
    upstream: accepted,
  }),
);

await appClient.close();
await caller.stop();
await upstream.stop();
await new Promise<void>((resolve) => app.close(() => resolve()));
await rm(dir, { recursive: true, force: true });
