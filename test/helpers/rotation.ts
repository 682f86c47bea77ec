// Rotation as real writers do it (a Kubernetes secret-volume swap, spiffe-helper's in-place rewrites), and probes.
import { mkdir, mkdtemp, readdir, readlink, rename, rm, symlink, writeFile } from "node:fs/promises";
import path from "node:path";
import tls from "node:tls";
import { Pool } from "undici";
import {
  type CredentialFiles,
  type CredentialStore,
  fileLabels,
  readCredentialMaterial,
} from "../../src/credentials/index.ts";
import type { Sidecar } from "../../src/sidecar.ts";
import { type HttpResponse, parseHttpResponse } from "./clients.ts";

/** One version of a workload's files: leaf chain, key, trust bundle, and optionally CRLs. */
export interface CredentialPems {
  cert: string;
  key: string;
  bundle: string;
  crl?: string;
}

/** Offers the files' content to a store, as the file source does: validated, then swapped in. */
export async function installFiles(store: CredentialStore, files: CredentialFiles): Promise<void> {
  await store.offer(await readCredentialMaterial(files), fileLabels(files));
}

export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * A Kubernetes secret volume, written the way the kubelet's AtomicWriter writes it: the data lives in a
 * `..<timestamp>.<random>` directory, `..data` is a symlink to it, and each user-visible file is a symlink
 * `tls.crt -> ..data/tls.crt`. An update writes a new timestamped directory, points a `..data_tmp` symlink at
 * it, renames `..data_tmp` over `..data` (the atomic step), and removes the old directory.
 */
export class SecretVolume {
  readonly dir: string;
  readonly paths: { cert: string; key: string; bundle: string; crl: string };
  swaps = 0;

  private constructor(dir: string) {
    this.dir = dir;
    this.paths = {
      cert: path.join(dir, "tls.crt"),
      key: path.join(dir, "tls.key"),
      bundle: path.join(dir, "ca.crt"),
      crl: path.join(dir, "crl.pem"),
    };
  }

  static async create(dir: string, pems: CredentialPems): Promise<SecretVolume> {
    await mkdir(dir, { recursive: true });
    const volume = new SecretVolume(dir);
    await volume.#write(pems);
    return volume;
  }

  /** Replaces every file at once, exactly as the kubelet does. */
  async swap(pems: CredentialPems): Promise<void> {
    await this.#write(pems);
    this.swaps++;
  }

  /** The `..<timestamp>` data directories present now (one, between swaps). */
  async dataDirectories(): Promise<string[]> {
    return (await readdir(this.dir)).filter((name) => name.startsWith("..") && name !== "..data");
  }

  async #write(pems: CredentialPems): Promise<void> {
    const previous = await readlink(path.join(this.dir, "..data")).catch(() => undefined);
    const stamp = new Date().toISOString().replace(/[-:T]/g, "_").replace(/\..*$/, "");
    // Go's os.MkdirTemp, as the kubelet calls it: the prefix, then a random suffix.
    const data = await mkdtemp(path.join(this.dir, `..${stamp}.`));
    const files: [string, string][] = [
      ["tls.crt", pems.cert],
      ["tls.key", pems.key],
      ["ca.crt", pems.bundle],
    ];
    if (pems.crl !== undefined) files.push(["crl.pem", pems.crl]);
    for (const [name, content] of files) await writeFile(path.join(data, name), content, { mode: 0o600 });
    const tmp = path.join(this.dir, "..data_tmp");
    await symlink(path.basename(data), tmp);
    await rename(tmp, path.join(this.dir, "..data"));
    for (const [name] of files) {
      await symlink(path.join("..data", name), path.join(this.dir, name)).catch(
        (error: NodeJS.ErrnoException) => {
          if (error.code !== "EEXIST") throw error;
        },
      );
    }
    if (previous) await rm(path.join(this.dir, previous), { recursive: true, force: true });
  }
}

/** spiffe-helper's way: rewrite each file in place (same inode, truncated then written), one after another. */
export async function rewriteInPlace(steps: readonly [file: string, content: string][], gapMs: number) {
  for (const [index, [file, content]] of steps.entries()) {
    if (index > 0) await sleep(gapMs);
    await writeFile(file, content);
  }
}

/** Polls `probe` until it returns something truthy; fails the test with `what` after `timeoutMs`. */
export async function waitFor<T>(
  what: string,
  probe: () => T | undefined | null | false | Promise<T | undefined | null | false>,
  timeoutMs = 8000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs}ms waiting for ${what}`);
    await sleep(20);
  }
}

/** `mtlsd_credential_reloads_total{result}` from the Prometheus text, as a scrape would read it. */
export async function reloadCount(sidecar: Sidecar, result: "success" | "failure"): Promise<number> {
  const text = await sidecar.metrics.metrics();
  const match = new RegExp(`^mtlsd_credential_reloads_total\\{result="${result}"\\} (\\d+)$`, "m").exec(text);
  if (!match) throw new Error(`no mtlsd_credential_reloads_total{result="${result}"} in:\n${text}`);
  return Number(match[1]);
}

/** Waits until the sidecar presents the leaf with this serial. */
export function waitForSerial(sidecar: Sidecar, serialHex: string, timeoutMs?: number): Promise<true> {
  return waitFor(
    `the sidecar to install serial ${serialHex}`,
    () => sidecar.store.current.leaf.serialHex === serialHex.toLowerCase(),
    timeoutMs,
  );
}

export interface ProbeResult {
  /** The serial of the certificate the server presented (lowercase hex); absent on a resumed session. */
  serverSerial: string | undefined;
  /** Whether the client resumed the session it offered. */
  resumed: boolean;
  /** The newest session ticket the server sent, for a later resumption. */
  session: Buffer | undefined;
  response: HttpResponse | null;
  error: (Error & { code?: string }) | null;
}

export interface ProbeOptions {
  ca: string;
  cert: string;
  key: string;
  /** A session from an earlier probe, to try resuming. */
  session?: Buffer;
  path?: string;
}

/**
 * One mTLS connection to an inbound listener: handshake, one GET with `Connection: close`, the reply, and the
 * session ticket the server sent. Lets a test decide exactly which session is offered for resumption.
 */
export function probe(port: number, options: ProbeOptions, timeoutMs = 5000): Promise<ProbeResult> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let serverSerial: string | undefined;
    let resumed = false;
    let session: Buffer | undefined;
    let error: (Error & { code?: string }) | null = null;
    const socket = tls.connect({
      host: "127.0.0.1",
      port,
      servername: "localhost",
      ca: options.ca,
      cert: options.cert,
      key: options.key,
      ALPNProtocols: ["http/1.1"],
      // The inbound certificates name the SPIFFE ID, not this host; the chain is still verified.
      checkServerIdentity: () => undefined,
      ...(options.session ? { session: options.session } : {}),
    });
    const timer = setTimeout(() => {
      error ??= Object.assign(new Error(`no close within ${timeoutMs}ms`), { code: "TEST_TIMEOUT" });
      socket.destroy();
    }, timeoutMs);
    socket.on("session", (ticket: Buffer) => {
      session = ticket;
    });
    socket.once("secureConnect", () => {
      resumed = socket.isSessionReused();
      serverSerial = socket.getPeerX509Certificate()?.serialNumber.toLowerCase();
      socket.write(
        `GET ${options.path ?? "/v1/orders"} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n`,
      );
    });
    socket.on("data", (chunk: Buffer) => chunks.push(chunk));
    socket.on("error", (err: Error & { code?: string }) => {
      error ??= err;
    });
    socket.on("close", () => {
      clearTimeout(timer);
      const response = parseHttpResponse(Buffer.concat(chunks).toString("latin1"));
      resolve({ serverSerial, resumed, session, response, error });
    });
  });
}

export interface LoadSummary {
  total: number;
  failures: string[];
}

/**
 * Clients that loop requests through a plain-HTTP origin (an outbound listener) until stopped, each request
 * checked for a 200 from the app behind the far sidecar. Every failure is kept with its reason.
 */
export function startLoad(
  origin: string,
  options: { concurrency: number; host: string; path: string },
): { total(): number; failures(): string[]; stop(): Promise<LoadSummary> } {
  const pool = new Pool(origin, { connections: options.concurrency, pipelining: 1 });
  let running = true;
  let total = 0;
  const failures: string[] = [];
  const loop = async () => {
    while (running) {
      try {
        const response = await pool.request({
          method: "GET",
          path: options.path,
          headers: { host: options.host },
          headersTimeout: 10_000,
          bodyTimeout: 10_000,
        });
        const body = await response.body.text();
        if (response.statusCode !== 200 || response.headers["x-app"] !== "echo") {
          failures.push(
            `${response.statusCode} ${response.headers["x-mtlsd-reason"] ?? ""} ${body.slice(0, 200)}`,
          );
        }
      } catch (error) {
        failures.push(`client error: ${(error as Error).message}`);
      }
      total++;
    }
  };
  const loops = Array.from({ length: options.concurrency }, loop);
  return {
    total: () => total,
    failures: () => [...failures],
    async stop() {
      running = false;
      await Promise.all(loops);
      await pool.close();
      return { total, failures };
    },
  };
}
