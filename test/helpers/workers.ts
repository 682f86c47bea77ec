// For `workers: N` tests: one mTLS request per new connection, which worker served it, and the admin port's numbers.
import { writeFile } from "node:fs/promises";
import path from "node:path";
import tls from "node:tls";
import { stringify } from "yaml";
import type { IdentityFiles, TestPki } from "./pki.ts";
import { identityConfig } from "./pki.ts";
import type { SidecarProcess } from "./process.ts";

export interface ConnectionResult {
  status: number | null;
  /** Whether the TLS session was resumed from `session`. */
  reused: boolean;
  /** The session to resume on a later connection (TLS 1.3: sent after the handshake). */
  session: Buffer | undefined;
  /** Serial of the certificate the sidecar presented (uppercase hex, as Node reports it). */
  serial: string;
}

/**
 * Opens a new mTLS connection to `port`, sends one HTTP/1.1 request with `Connection: close` and reads the reply.
 * A new connection each time, so the cluster's round-robin hands each to the next worker.
 */
export function requestOnNewConnection(
  port: number,
  client: { pki: Pick<TestPki, "bundlePem">; identity: Pick<IdentityFiles, "chainPem" | "keyPem"> },
  requestPath: string,
  session?: Buffer,
): Promise<ConnectionResult> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let received: Buffer | undefined;
    const socket = tls.connect({
      host: "127.0.0.1",
      port,
      servername: "localhost",
      ca: client.pki.bundlePem,
      cert: client.identity.chainPem,
      key: client.identity.keyPem,
      ALPNProtocols: ["http/1.1"],
      ...(session ? { session } : {}),
    });
    socket.on("session", (ticket: Buffer) => {
      received = ticket;
    });
    let serial = "";
    let reused = false;
    socket.once("secureConnect", () => {
      serial = socket.getPeerCertificate().serialNumber ?? "";
      reused = socket.isSessionReused();
      socket.write(`GET ${requestPath} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n`);
    });
    socket.on("data", (chunk: Buffer) => chunks.push(chunk));
    socket.setTimeout(10_000, () => socket.destroy(new Error(`no reply to ${requestPath} within 10s`)));
    socket.once("error", reject);
    socket.once("close", () => {
      const text = Buffer.concat(chunks).toString("latin1");
      const match = /^HTTP\/1\.1 (\d{3})/.exec(text);
      resolve({
        status: match ? Number(match[1]) : null,
        reused,
        session: received,
        serial,
      });
    });
  });
}

/** Resolves with the first log line (already logged or still to come) that matches; rejects after `timeoutMs`. */
export async function logLine(
  sidecar: Pick<SidecarProcess, "logs">,
  predicate: (line: Record<string, unknown>) => boolean,
  timeoutMs = 10_000,
): Promise<Record<string, unknown>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const line = sidecar.logs.find(predicate);
    if (line) return line;
    if (Date.now() > deadline) throw new Error(`no matching log line within ${timeoutMs}ms`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** The worker (1..N) whose request log line has this path. */
export async function workerThatServed(
  sidecar: Pick<SidecarProcess, "logs">,
  requestPath: string,
): Promise<number> {
  const line = await logLine(sidecar, (entry) => entry.path === requestPath && entry.direction !== undefined);
  return line.worker as number;
}

/** The sum of every sample of `name` on the admin port's /metrics whose labels contain `labels`. */
export async function metricValue(admin: string, name: string, labels = ""): Promise<number> {
  const text = await (await fetch(`http://${admin}/metrics`)).text();
  let total = 0;
  for (const line of text.split("\n")) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    if (labels && !line.includes(labels)) continue;
    total += Number(line.slice(line.lastIndexOf(" ") + 1));
  }
  return total;
}

/** Writes a config with `workers` for `identity` serving an inbound listener to `app`; returns its path. */
export async function writeWorkersConfig(
  pki: TestPki,
  identity: IdentityFiles,
  options: { name: string; app: string; workers: number | "auto"; allow: string[]; drainTimeout?: string },
): Promise<string> {
  const file = path.join(pki.dir, `${options.name}.yaml`);
  await writeFile(file, workersConfigText(pki, identity, options));
  return file;
}

export function workersConfigText(
  pki: TestPki,
  identity: IdentityFiles,
  options: { app: string; workers: number | "auto"; allow: string[]; drainTimeout?: string },
): string {
  return stringify({
    workers: options.workers,
    identity: { ...identityConfig(pki, identity), reload: { watch: false, interval: "1h" } },
    inbound: {
      listen: "127.0.0.1:0",
      app: options.app,
      policy: { rules: [{ name: "allowed", action: "allow", from: options.allow }] },
    },
    admin: { listen: "127.0.0.1:0" },
    limits: { drainTimeout: options.drainTimeout ?? "5s" },
  });
}
