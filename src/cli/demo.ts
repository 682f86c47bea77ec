// `mtlsd demo`: a guided tour with no setup: a throwaway PKI, two apps and three sidecars in this one process.
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { parseArgs } from "node:util";
import { stringify } from "yaml";
import { loadConfigFile } from "../config/index.ts";
import { MtlsdError } from "../errors.ts";
import type { Issuer } from "../pki/index.ts";
import { Sidecar } from "../sidecar.ts";
import { FrontendApp, httpRequest, OrdersApp, type Reply } from "./demo-apps.ts";
import { type CliIo, EXIT_FAILURE, EXIT_OK } from "./io.ts";
import { probePeer } from "./peer-probe.ts";
import { initPkiDirectory, issueIdentityFiles, PKI_FILES } from "./pki-dir.ts";
import { formatSpan, type Style, styleFor } from "./text.ts";

const TRUST_DOMAIN = "example.org";
const ID = {
  orders: `spiffe://${TRUST_DOMAIN}/ns/orders/sa/orders`,
  frontend: `spiffe://${TRUST_DOMAIN}/ns/frontend/sa/frontend`,
  reporting: `spiffe://${TRUST_DOMAIN}/ns/reporting/sa/reporting`,
} as const;
/** Calls in the connection-reuse step. */
const REUSE_CALLS = 50;
/** Concurrent callers while orders' certificate rotates, and how long traffic runs on each side of the swap. */
const ROTATION_CALLERS = 4;
const ROTATION_MARGIN_MS = 400;
/** Log lines kept per sidecar: the transcript quotes recent ones; --keep must not grow without bound. */
const LOG_LINES_KEPT = 2000;

type LogLine = Record<string, unknown> & { msg?: string };
type WorkloadName = keyof typeof ID;

/** A sidecar of the demo, with its log lines kept in memory instead of on stdout. */
interface DemoSidecar {
  name: WorkloadName;
  sidecar: Sidecar;
  logs: LogLine[];
  configPath: string;
}

export const DEMO_HELP = `mtlsd demo: a tour of mtlsd with nothing to set up

Usage:
  mtlsd demo [--keep]

Makes a throwaway PKI in a temporary directory, starts an orders app and a frontend app, each with
its sidecar (and a reporting job's sidecar), then shows an allowed call with the XFCC the app
received, a denied call with the rule that denied it, connection reuse, and a certificate rotation
under load. Everything listens on 127.0.0.1 only and is removed at the end.
  --keep   leave it all running and print URLs and curl commands to try; Ctrl-C stops and cleans up
`;

class DemoFailure extends Error {
  override name = "DemoFailure";
}

class Demo {
  readonly #io: CliIo;
  readonly #style: Style;
  readonly #sidecars = new Map<WorkloadName, DemoSidecar>();
  #dir = "";
  #intermediate: Issuer | undefined;
  #ordersApp: OrdersApp | undefined;
  #frontendApp: FrontendApp | undefined;
  #step = 0;
  #frontendCalls = 0;
  #tour: Promise<void> | undefined;
  #cleaned: Promise<void> | undefined;
  /** Set in --keep mode: request log lines are printed as they happen. */
  #follow = false;

  constructor(io: CliIo) {
    this.#io = io;
    this.#style = styleFor(io.stdout, io.env);
  }

  get dir(): string {
    return this.#dir;
  }

  #print(text = ""): void {
    this.#io.stdout.write(`${text}\n`);
  }

  /** Once cleanup has begun (a signal), no step may start or write another file. */
  #checkpoint(): void {
    if (this.#cleaned) throw new DemoFailure("interrupted");
  }

  #heading(title: string): void {
    this.#checkpoint();
    this.#step++;
    this.#print();
    this.#print(this.#style.bold(this.#style.accent(`${this.#step}. ${title}`)));
  }

  #status(reply: Reply): string {
    const text = `${reply.status} ${reply.statusText}`;
    return reply.status < 400 ? this.#style.good(text) : this.#style.bad(text);
  }

  #sidecar(name: WorkloadName): DemoSidecar {
    const found = this.#sidecars.get(name);
    if (!found) throw new DemoFailure(`the ${name} sidecar is not running`);
    return found;
  }

  /** Runs the tour once; cleanup waits for it to settle before removing the directory. */
  run(): Promise<void> {
    this.#tour ??= this.#run();
    return this.#tour;
  }

  async #run(): Promise<void> {
    this.#print(
      this.#style.bold("mtlsd demo: two services talking over mutual TLS, with nothing to configure"),
    );
    await this.#makePki();
    await this.#startWorkloads();
    await this.#allowedCall();
    await this.#deniedCall();
    await this.#connectionReuse();
    await this.#rotation();
    this.#summary();
  }

  async #makePki(): Promise<void> {
    this.#dir = await mkdtemp(path.join(os.tmpdir(), "mtlsd-demo-"));
    this.#checkpoint();
    const pki = await initPkiDirectory(this.#dir, { trustDomain: TRUST_DOMAIN });
    this.#intermediate = pki.intermediate;
    this.#heading(`A throwaway PKI for trust domain ${TRUST_DOMAIN}, in ${this.#dir}`);
    this.#print("   (the same files `mtlsd certs init` and `mtlsd certs issue` write)");
    const rows: [string, string][] = [
      [
        "root CA",
        `${pki.root.cert.subject}; ${PKI_FILES.bundle} holds it: the trust bundle of every sidecar`,
      ],
      ["intermediate CA", `${pki.intermediate.cert.subject}; signs the workload certificates`],
    ];
    for (const name of ["orders", "frontend", "reporting"] as const) {
      // orders gets names for 127.0.0.1 too, so curl can verify it directly in --keep mode.
      const extra = name === "orders" ? { dnsNames: ["localhost"], ipAddresses: ["127.0.0.1"] } : {};
      const issued = await issueIdentityFiles(this.#dir, pki.intermediate, {
        spiffeId: ID[name],
        name,
        ...extra,
      });
      rows.push([name, `${ID[name]}  (serial ${short(issued.issued.serialHex)}, valid for 1h)`]);
    }
    this.#table(rows, "   ");
  }

  #table(rows: [string, string][], indent: string): void {
    const width = Math.max(...rows.map(([label]) => label.length));
    for (const [label, value] of rows) this.#print(`${indent}${label.padEnd(width)}  ${value}`);
  }

  async #startSidecar(name: WorkloadName, config: Record<string, unknown>): Promise<DemoSidecar> {
    this.#checkpoint();
    const configPath = path.join(this.#dir, `${name}.yaml`);
    const full = {
      identity: {
        cert: `${name}.crt`,
        key: `${name}.key`,
        trustBundle: PKI_FILES.bundle,
        trustDomain: TRUST_DOMAIN,
      },
      // Three sidecars in one process (and perhaps a real mtlsd beside it): each gets an admin port of its own.
      admin: { listen: "127.0.0.1:0" },
      ...config,
    };
    await writeFile(configPath, `# written by mtlsd demo\n${stringify(full)}`);
    const logs: LogLine[] = [];
    const logStream = {
      write: (line: string) => {
        const entry = JSON.parse(line) as LogLine;
        if (logs.length >= LOG_LINES_KEPT) logs.shift();
        logs.push(entry);
        if (this.#follow) this.#printLogLine(name, entry);
      },
    };
    const sidecar = await Sidecar.start(loadConfigFile(configPath), { logStream });
    const running = { name, sidecar, logs, configPath };
    this.#sidecars.set(name, running);
    return running;
  }

  async #startWorkloads(): Promise<void> {
    const ordersApp = new OrdersApp();
    this.#ordersApp = ordersApp;
    await ordersApp.start();
    const orders = await this.#startSidecar("orders", {
      inbound: {
        listen: "127.0.0.1:0",
        app: `http://127.0.0.1:${ordersApp.port}`,
        policy: {
          default: "deny",
          rules: [
            {
              name: "frontend-manages-orders",
              action: "allow",
              from: [ID.frontend],
              to: [{ methods: ["GET", "POST"], paths: ["/v1/orders", "/v1/orders/*"] }],
            },
            {
              name: "reporting-reads-orders",
              action: "allow",
              from: [ID.reporting],
              to: [{ methods: ["GET"], paths: ["/v1/orders", "/v1/orders/*"] }],
            },
            {
              name: "reporting-is-read-only",
              action: "deny",
              from: [ID.reporting],
              to: [{ methods: ["POST", "PUT", "PATCH", "DELETE"] }],
            },
          ],
        },
      },
      log: { level: "info" },
    });
    const ordersAddress = `127.0.0.1:${orders.sidecar.addresses().inbound!.port}`;
    const outbound = {
      listen: "127.0.0.1:0",
      upstreams: { orders: { address: ordersAddress, identity: ID.orders, listen: "127.0.0.1:0" } },
    };
    const frontend = await this.#startSidecar("frontend", { outbound, log: { level: "info" } });
    const reporting = await this.#startSidecar("reporting", { outbound, log: { level: "info" } });
    const frontendApp = new FrontendApp(frontend.sidecar.addresses().outbound!.port);
    this.#frontendApp = frontendApp;
    await frontendApp.start();

    this.#heading("Two services and their sidecars, all on 127.0.0.1");
    this.#table(
      [
        [
          "orders",
          `app http://127.0.0.1:${ordersApp.port}  <-  sidecar https://${ordersAddress} (mTLS in, policy, XFCC)`,
        ],
        [
          "frontend",
          `app http://127.0.0.1:${frontendApp.port}  ->  sidecar http://127.0.0.1:${frontend.sidecar.addresses().outbound!.port} (its HTTP proxy; mTLS out to orders)`,
        ],
        [
          "reporting",
          `a batch job          ->  sidecar http://127.0.0.1:${reporting.sidecar.addresses().outbound!.port} (mTLS out to orders)`,
        ],
      ],
      "   ",
    );
    this.#print(
      `   The orders sidecar's policy (${path.basename(orders.configPath)} in the directory above):`,
    );
    this.#table(
      [
        ["allow frontend-manages-orders", "frontend may GET and POST /v1/orders and /v1/orders/*"],
        ["allow reporting-reads-orders", "reporting may GET /v1/orders and /v1/orders/*"],
        ["deny  reporting-is-read-only", "reporting may not POST, PUT, PATCH or DELETE anything"],
        ["default deny", "everything else is refused"],
      ],
      "     ",
    );
  }

  /** The frontend app serving a page: it calls orders through its sidecar, on a new connection each time. */
  async #frontendPage(id: string): Promise<Reply> {
    this.#frontendCalls++;
    return httpRequest({ port: this.#frontendApp!.port, path: `/order/${id}` });
  }

  async #allowedCall(): Promise<void> {
    this.#heading("An allowed call: frontend -> orders");
    const frontendPort = this.#frontendApp!.port;
    const proxyPort = this.#sidecar("frontend").sidecar.addresses().outbound!.port;
    this.#print(
      `   A user opens http://127.0.0.1:${frontendPort}/order/42. To answer, the frontend app sends plain HTTP`,
    );
    this.#print(`   to its sidecar (its HTTP proxy, 127.0.0.1:${proxyPort}); it knows nothing about TLS:`);
    this.#print(`     GET http://orders/v1/orders/42`);
    const before = this.#ordersApp!.received.length;
    const page = await this.#frontendPage("42");
    const received = this.#ordersApp!.received.slice(before);
    const seen = received[0];
    if (page.status !== 200 || !seen) {
      throw new DemoFailure(
        `the allowed call failed: the frontend app answered ${page.status}: ${page.body}`,
      );
    }
    const decision = await this.#findLog(
      "orders",
      (line) => line.msg === "request" && line.path === "/v1/orders/42" && line.decision === "allow",
    );
    this.#print(
      "   The frontend sidecar opened mutual TLS to the orders sidecar and checked that it presents",
    );
    this.#print(`   ${ID.orders}. The orders sidecar checked frontend's certificate, allowed the`);
    this.#print(
      `   request by rule "${String(decision.rule)}", and told the app who called. The orders app received:`,
    );
    this.#print(`     ${seen.method} ${seen.url}`);
    for (const header of ["x-forwarded-client-cert", "x-forwarded-proto"]) {
      const value = seen.headers[header];
      if (value !== undefined) this.#print(`     ${header}: ${this.#style.accent(String(value))}`);
    }
    const orders = JSON.parse(page.body) as { orders_status: number; orders: unknown };
    this.#print(
      `   and answered ${this.#style.good(String(orders.orders_status))} ${JSON.stringify(orders.orders)}`,
    );
    this.#print(`   The user got: ${this.#status(page)}`);
    this.#print(
      "   XFCC is set by the sidecar alone: whatever a caller sends in that header is removed first.",
    );
  }

  async #deniedCall(): Promise<void> {
    this.#heading("A denied call: reporting -> orders");
    const proxyPort = this.#sidecar("reporting").sidecar.addresses().outbound!.port;
    const target = "http://orders/v1/orders/42/refund";
    this.#print(
      `   The reporting job may read orders but not change them. It tries, through its sidecar (127.0.0.1:${proxyPort}):`,
    );
    this.#print(`     POST ${target}`);
    const before = this.#ordersApp!.received.length;
    const reply = await httpRequest({
      port: proxyPort,
      method: "POST",
      path: target,
      headers: { "content-type": "application/json", connection: "close" },
      body: JSON.stringify({ amount: 100 }),
    });
    if (reply.status !== 403)
      throw new DemoFailure(`the denied call got ${reply.status}, not 403: ${reply.body}`);
    this.#print(`   <- ${this.#status(reply)}  x-mtlsd-reason: ${String(reply.headers["x-mtlsd-reason"])}`);
    this.#print(`      ${reply.body}`);
    const line = await this.#findLog(
      "orders",
      (entry) =>
        entry.msg === "request" && entry.decision === "deny" && entry.path === "/v1/orders/42/refund",
    );
    this.#print("   The orders sidecar's log line for it:");
    this.#print(
      `     ${this.#style.dim(JSON.stringify(pick(line, ["level", "direction", "source_identity", "method", "path", "decision", "rule", "reason", "status"])))}`,
    );
    this.#print(`   Denied by rule ${this.#style.bad(`"${String(line.rule)}"`)}.`);
    const reached = this.#ordersApp!.received.length - before;
    this.#print(
      reached === 0
        ? "   The orders app never saw the request."
        : this.#style.bad(`   The orders app received ${reached} request(s): that should not happen.`),
    );
  }

  #handshakes(): { full: number; resumed: number; connections: number } {
    const stats = this.#sidecar("frontend").sidecar.upstreamStats().orders;
    return {
      full: stats?.handshakes.full ?? 0,
      resumed: stats?.handshakes.resumed ?? 0,
      connections: stats?.connections ?? 0,
    };
  }

  async #connectionReuse(): Promise<void> {
    this.#heading("Connection reuse");
    this.#print(
      `   The frontend app opens a new connection to its sidecar for every call (Connection: close), as`,
    );
    this.#print(`   many apps do. ${REUSE_CALLS} more pages:`);
    let failed = 0;
    for (let i = 0; i < REUSE_CALLS; i++) {
      const reply = await this.#frontendPage(String(100 + i));
      if (reply.status !== 200) failed++;
    }
    if (failed > 0) throw new DemoFailure(`${failed} of ${REUSE_CALLS} calls failed`);
    const { full, resumed, connections } = this.#handshakes();
    const handshakes = full + resumed;
    const calls = this.#frontendCalls;
    this.#print(`   <- ${this.#style.good(`${REUSE_CALLS} x 200 OK`)}`);
    this.#print(
      `   ${calls} calls from frontend so far -> the orders sidecar accepted ${this.#style.bold(String(handshakes))} TLS connection${handshakes === 1 ? "" : "s"} from frontend's sidecar`,
    );
    this.#print(
      `   (${full} full handshake${full === 1 ? "" : "s"}, ${resumed} resumed) instead of ${calls}: the sidecar keeps ${connections} pooled mTLS connection${connections === 1 ? "" : "s"} open and reuses it.`,
    );
  }

  async #rotation(): Promise<void> {
    this.#heading("A certificate rotation under load");
    const orders = this.#sidecar("orders");
    const oldSerial = orders.sidecar.store.current.leaf.serialHex;
    this.#print(
      `   ${ROTATION_CALLERS} users keep loading pages (frontend -> orders) while orders gets a new certificate.`,
    );
    let stop = false;
    let calls = 0;
    const failures: string[] = [];
    const caller = async () => {
      while (!stop && !this.#cleaned) {
        try {
          const reply = await this.#frontendPage("7");
          if (reply.status !== 200) failures.push(`${reply.status} ${reply.body}`);
        } catch (error) {
          failures.push((error as Error).message);
        }
        calls++;
      }
    };
    const callers = Array.from({ length: ROTATION_CALLERS }, caller);
    await sleep(ROTATION_MARGIN_MS);
    this.#checkpoint();
    const issued = await issueIdentityFiles(this.#dir, this.#intermediate!, {
      spiffeId: ID.orders,
      name: "orders",
      dnsNames: ["localhost"],
      ipAddresses: ["127.0.0.1"],
      force: true,
    });
    this.#print(
      `   - issued a new certificate for ${ID.orders}\n     (serial ${short(issued.issued.serialHex)}, was ${short(oldSerial)}) and wrote orders.crt and orders.key`,
    );
    // `mtlsd run` notices the new files itself (directory watch, polling, SIGHUP); the demo asks at once.
    const outcome = await orders.sidecar.reloadCredentials();
    const now = orders.sidecar.store.current.leaf.serialHex;
    if (now !== issued.issued.serialHex) {
      throw new DemoFailure(
        `the orders sidecar did not take the new certificate (reload: ${outcome.result})`,
      );
    }
    const reloaded = await this.#findLog("orders", (line) => line.msg === "credentials reloaded");
    this.#print(
      `   - the orders sidecar validated the files and swapped them in; its log says "credentials reloaded",\n     old_serial ${short(String(reloaded.old_serial))}, new_serial ${short(String(reloaded.new_serial))}`,
    );
    this.#print(
      "     (`mtlsd run` picks new files up by itself: it watches their directory, polls, and reloads on SIGHUP)",
    );
    await sleep(ROTATION_MARGIN_MS);
    stop = true;
    await Promise.all(callers);
    const credentials = this.#sidecar("frontend").sidecar.store.current;
    const probe = await probePeer({
      host: "127.0.0.1",
      port: orders.sidecar.addresses().inbound!.port,
      chainPem: credentials.chainPem,
      keyPem: credentials.keyPem,
      bundlePem: credentials.bundlePem,
      trustDomain: TRUST_DOMAIN,
      timeoutMs: 5000,
      refusalWaitMs: 0,
    });
    const presented = probe.chain[0]?.serialHex;
    this.#print(
      `   - a new handshake with the orders sidecar now gets serial ${short(presented ?? "(none)")}; open connections carried on`,
    );
    const result = `${calls} calls during the rotation, ${failures.length} failed`;
    this.#print(`   <- ${failures.length === 0 ? this.#style.good(result) : this.#style.bad(result)}`);
    if (failures.length > 0)
      throw new DemoFailure(`calls failed during the rotation: ${failures.slice(0, 3).join("; ")}`);
    if (presented !== issued.issued.serialHex)
      throw new DemoFailure("the orders sidecar still presents the old certificate");
  }

  #summary(): void {
    const { full, resumed } = this.#handshakes();
    this.#print();
    this.#print(
      `In all: ${this.#frontendCalls} calls from frontend to orders on ${full + resumed} TLS handshakes (${full} full, ${resumed} resumed with a session ticket).`,
    );
  }

  /** --keep: where to point curl, and the sidecars' request log as it happens. */
  printKeepInstructions(): void {
    const d = this.#dir;
    const frontend = this.#sidecar("frontend").sidecar.addresses();
    const reporting = this.#sidecar("reporting").sidecar.addresses();
    const ordersInbound = this.#sidecar("orders").sidecar.addresses().inbound!.port;
    this.#print();
    this.#print(this.#style.bold("Still running (--keep). Try, from another terminal:"));
    this.#table(
      [
        ["the frontend app", `curl http://127.0.0.1:${this.#frontendApp!.port}/order/42`],
        ["as the frontend app", `curl http://127.0.0.1:${frontend.upstreams!.orders!.port}/v1/orders/42`],
        [
          "  (the same, as a proxy)",
          `curl -x http://127.0.0.1:${frontend.outbound!.port} http://orders/v1/orders/42`,
        ],
        [
          "as reporting (403)",
          `curl -i -X POST http://127.0.0.1:${reporting.upstreams!.orders!.port}/v1/orders/42/refund`,
        ],
        [
          "orders' mTLS port",
          `curl --cacert ${d}/bundle.pem --cert ${d}/frontend.crt --key ${d}/frontend.key https://127.0.0.1:${ordersInbound}/v1/orders/42`,
        ],
        ["check a peer", `mtlsd check -c ${d}/frontend.yaml --peer 127.0.0.1:${ordersInbound}`],
        ["inspect a certificate", `mtlsd certs inspect ${d}/orders.crt`],
        ["orders' sidecar status", `curl ${this.#adminUrl("orders")}/status`],
        ["  its metrics", `curl ${this.#adminUrl("orders")}/metrics`],
      ],
      "  ",
    );
    this.#print(this.#style.dim("  (from a checkout, run mtlsd as: npm run mtlsd -- check ...)"));
    this.#print("Admin endpoints (/healthz /readyz /metrics /status) of each sidecar:");
    this.#table(
      (["orders", "frontend", "reporting"] as const).map((name) => [name, this.#adminUrl(name)]),
      "  ",
    );
    this.#print(`The configs and certificates are in ${d}. Ctrl-C stops everything and removes it.`);
    this.#print("Requests, as the sidecars log them:");
    this.#follow = true;
  }

  #adminUrl(name: WorkloadName): string {
    return `http://127.0.0.1:${this.#sidecar(name).sidecar.addresses().admin!.port}`;
  }

  #printLogLine(name: WorkloadName, entry: LogLine): void {
    if (entry.msg === "request") {
      const who =
        entry.direction === "inbound"
          ? `from ${String(entry.source_identity)}`
          : `to ${String(entry.destination_identity)}`;
      const decision = entry.decision === "allow" ? this.#style.good("allow") : this.#style.bad("deny");
      const rule = entry.rule === undefined ? "" : ` (rule ${String(entry.rule)})`;
      this.#print(
        `  ${name} sidecar, ${String(entry.direction)}: ${decision} ${String(entry.method)} ${String(entry.path)} ${who}${rule} -> ${String(entry.status)} ${String(entry.reason)}`,
      );
    } else if (entry.msg === "handshake failed") {
      this.#print(
        `  ${name} sidecar: ${this.#style.bad("handshake refused")} (${String(entry.reason)}): ${String(entry.detail)}`,
      );
    }
  }

  /** The sidecars log a request once it is over: wait (bounded) for the line rather than race it. */
  async #findLog(name: WorkloadName, predicate: (line: LogLine) => boolean): Promise<LogLine> {
    const { logs } = this.#sidecar(name);
    const deadline = Date.now() + 2000;
    for (;;) {
      const found = logs.findLast(predicate);
      if (found) return found;
      if (Date.now() > deadline) throw new DemoFailure(`the ${name} sidecar did not log the expected line`);
      await sleep(10);
    }
  }

  /**
   * Stops everything and removes the directory; safe to call more than once and from a signal. A tour
   * interrupted mid-step may still be writing a certificate: with the servers gone its next step fails at
   * once, so wait (bounded) for it to settle, or it could write into the directory as it is removed.
   */
  cleanup(): Promise<void> {
    this.#cleaned ??= (async () => {
      this.#follow = false;
      const stopAll = async () => {
        await Promise.allSettled([...this.#sidecars.values()].map(({ sidecar }) => sidecar.stop()));
        await Promise.allSettled([this.#ordersApp?.close(), this.#frontendApp?.close()]);
      };
      await stopAll();
      if (this.#tour) await Promise.race([this.#tour.catch(() => undefined), sleep(5000)]);
      // A sidecar or app that finished starting while the first round stopped the others.
      await stopAll();
      if (this.#dir !== "") await rm(this.#dir, { recursive: true, force: true, maxRetries: 3 });
    })();
    return this.#cleaned;
  }
}

function short(serialHex: string): string {
  return serialHex.length > 12 ? `${serialHex.slice(0, 12)}…` : serialHex;
}

function pick(line: LogLine, keys: string[]): Record<string, unknown> {
  return Object.fromEntries(keys.filter((key) => key in line).map((key) => [key, line[key]]));
}

export async function demoCommand(args: string[], io: CliIo): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      keep: { type: "boolean", default: false },
      help: { type: "boolean", short: "h", default: false },
    },
    strict: true,
  });
  if (values.help) {
    io.stdout.write(DEMO_HELP);
    return EXIT_OK;
  }
  const signals = io.signals ?? process;
  const demo = new Demo(io);
  let onSignal: (() => void) | undefined;
  const stopped = new Promise<string>((resolve) => {
    const handler = (signal: string) => () => resolve(signal);
    const onInt = handler("SIGINT");
    const onTerm = handler("SIGTERM");
    signals.once("SIGINT", onInt);
    signals.once("SIGTERM", onTerm);
    onSignal = () => {
      signals.off("SIGINT", onInt);
      signals.off("SIGTERM", onTerm);
    };
  });
  const started = Date.now();
  try {
    const interrupted = await Promise.race([demo.run().then(() => undefined), stopped]);
    if (interrupted) {
      io.stderr.write(`\nmtlsd demo: ${interrupted}: stopping and removing ${demo.dir}\n`);
      return EXIT_FAILURE;
    }
    if (!values.keep) {
      io.stdout.write(
        `\nDone in ${formatSpan(Date.now() - started)}; stopped everything and removed ${demo.dir}.\n`,
      );
      io.stdout.write(
        "Next: `mtlsd demo --keep` to try it with curl, and docs/getting-started.md to run mtlsd next to your own app.\n",
      );
      return EXIT_OK;
    }
    demo.printKeepInstructions();
    const signal = await stopped;
    io.stdout.write(`\n${signal}: stopping and removing ${demo.dir}\n`);
    return EXIT_OK;
  } catch (error) {
    // A step that did not go as the tour says is reported as such; anything else is a bug and keeps its stack.
    if (!(error instanceof DemoFailure) && !(error instanceof MtlsdError)) throw error;
    io.stderr.write(`\nmtlsd demo: ${error.message}\n`);
    return EXIT_FAILURE;
  } finally {
    onSignal?.();
    await demo.cleanup();
  }
}
