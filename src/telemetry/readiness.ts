// What /readyz checks: credentials within their validity, every listener accepting, upstreams with endpoints, the app reachable.
import net from "node:net";
import { performance } from "node:perf_hooks";

/** One check's verdict; `detail` says what was found, for the operator reading the probe's body. */
export interface ReadinessCheck {
  name: "credentials" | "listeners" | "upstreams" | "app";
  ok: boolean;
  detail: string;
}

export interface ReadinessSources {
  /** Validity window of the certificate presented now. */
  certificate(): { notBefore: Date; notAfter: Date };
  /** Whether each listener accepts connections, by its config field (`inbound.listen`, ...). */
  listeners(): Record<string, boolean>;
  /** Each upstream's endpoints now, and why it has none when it has none (a DNS name that does not resolve). */
  upstreams?: () => Record<string, { endpoints: readonly unknown[]; noEndpoint?: string }>;
  /** Where the app listens, when there is an inbound side to forward to it. */
  app?: { host: string; port: number } | undefined;
  /** The sidecar's clock, against which the certificate's validity is judged; tests move it. */
  now?: () => Date;
}

// A probe is a TCP connect to a local app: a second is long. Results are reused for a second, so however often
// probes (or a curious operator) call /readyz, the app sees at most one connection per second from us.
const APP_PROBE_TIMEOUT_MS = 1000;
const APP_PROBE_CACHE_MS = 1000;

/** Runs the readiness checks; each call is cheap, and the app probe is shared and cached. */
export class Readiness {
  readonly #sources: ReadinessSources;
  readonly #now: () => Date;
  #app: TcpProbe | undefined;

  constructor(sources: ReadinessSources) {
    this.#sources = sources;
    this.#now = sources.now ?? (() => new Date());
    this.probeApp(sources.app);
  }

  /** Where the app listens, when there is one; a config reload that moves `inbound.app` calls it again. */
  probeApp(app: { host: string; port: number } | undefined): void {
    this.#app = app
      ? new TcpProbe(app.host, app.port, { timeoutMs: APP_PROBE_TIMEOUT_MS, cacheMs: APP_PROBE_CACHE_MS })
      : undefined;
  }

  async check(): Promise<ReadinessCheck[]> {
    const checks: ReadinessCheck[] = [this.#credentials(), this.#listeners()];
    if (this.#sources.upstreams) checks.push(upstreamCheck(this.#sources.upstreams()));
    if (this.#app) {
      const probe = await this.#app.probe();
      checks.push({ name: "app", ...probe });
    }
    return checks;
  }

  #credentials(): ReadinessCheck {
    const { notBefore, notAfter } = this.#sources.certificate();
    const now = this.#now().getTime();
    if (now < notBefore.getTime())
      return {
        name: "credentials",
        ok: false,
        detail: `certificate not valid before ${notBefore.toISOString()}`,
      };
    if (now >= notAfter.getTime())
      return { name: "credentials", ok: false, detail: `certificate expired at ${notAfter.toISOString()}` };
    return { name: "credentials", ok: true, detail: `certificate valid until ${notAfter.toISOString()}` };
  }

  #listeners(): ReadinessCheck {
    const down = Object.entries(this.#sources.listeners())
      .filter(([, up]) => !up)
      .map(([field]) => field);
    return down.length === 0
      ? { name: "listeners", ok: true, detail: "all listeners accept connections" }
      : { name: "listeners", ok: false, detail: `not accepting: ${down.join(", ")}` };
  }
}

/** Every upstream needs an endpoint to send to; one that is merely ejected still counts (all are used then). */
function upstreamCheck(
  upstreams: Record<string, { endpoints: readonly unknown[]; noEndpoint?: string }>,
): ReadinessCheck {
  const empty = Object.entries(upstreams).filter(([, upstream]) => upstream.endpoints.length === 0);
  if (empty.length === 0) {
    return { name: "upstreams", ok: true, detail: "every upstream has an endpoint" };
  }
  const detail = empty
    .map(
      ([name, upstream]) =>
        `${name} has no endpoint${upstream.noEndpoint ? ` (${upstream.noEndpoint})` : ""}`,
    )
    .join("; ");
  return { name: "upstreams", ok: false, detail };
}

/** A TCP connect to host:port, at most one at a time, its result reused for `cacheMs`. */
export class TcpProbe {
  readonly #host: string;
  readonly #port: number;
  readonly #timeoutMs: number;
  readonly #cacheMs: number;
  /** Elapsed time, for the cache: monotonic, unlike the calendar clock a test may move. */
  readonly #now: () => number;
  #last: { at: number; result: { ok: boolean; detail: string } } | undefined;
  #running: Promise<{ ok: boolean; detail: string }> | undefined;

  constructor(
    host: string,
    port: number,
    options: { timeoutMs: number; cacheMs: number; now?: () => number },
  ) {
    this.#host = host;
    this.#port = port;
    this.#timeoutMs = options.timeoutMs;
    this.#cacheMs = options.cacheMs;
    this.#now = options.now ?? (() => performance.now());
  }

  probe(): Promise<{ ok: boolean; detail: string }> {
    if (this.#last && this.#now() - this.#last.at < this.#cacheMs) return Promise.resolve(this.#last.result);
    this.#running ??= this.#connect().then((result) => {
      this.#last = { at: this.#now(), result };
      this.#running = undefined;
      return result;
    });
    return this.#running;
  }

  #connect(): Promise<{ ok: boolean; detail: string }> {
    const where = `${this.#host.includes(":") ? `[${this.#host}]` : this.#host}:${this.#port}`;
    return new Promise((resolve) => {
      const socket = net.connect({ host: this.#host, port: this.#port });
      const done = (ok: boolean, detail: string) => {
        clearTimeout(timer);
        socket.destroy();
        resolve({ ok, detail });
      };
      const timer = setTimeout(
        () => done(false, `no TCP connection to ${where} within ${this.#timeoutMs} ms`),
        this.#timeoutMs,
      );
      socket.once("connect", () => done(true, `${where} accepts connections`));
      socket.once("error", (error: NodeJS.ErrnoException) =>
        done(false, `cannot connect to ${where}: ${error.code ?? error.message}`),
      );
    });
  }
}
