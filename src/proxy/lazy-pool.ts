// undici, loaded the first time a request needs it: since both sidecars speak HTTP/1.1 with clients of their own
// (h1-client.ts), only upgrades (WebSocket) use undici's Pool, and loading it costs every process ~6 MiB of
// private memory (measured: +6.0 MiB anonymous, +6.9 MiB RSS, +3.3 MiB of heap, Node 26) that most never use.
import type { Dispatcher, Pool } from "undici";
import type { UpstreamDispatcher } from "./forward.ts";
import type { StreamHandler } from "./h2-client.ts";

export type Undici = typeof import("undici");

let loading: Promise<Undici> | undefined;

/** The undici module, imported once. */
export function loadUndici(): Promise<Undici> {
  loading ??= import("undici");
  return loading;
}

/**
 * An undici Pool built on first dispatch. Requests dispatched while undici loads go to the pool in order once it
 * exists; a close or destroy meanwhile applies to the pool as soon as it is built (requests already dispatched
 * still run under close, and fail under destroy).
 */
export class LazyPool implements UpstreamDispatcher {
  readonly #create: (undici: Undici) => Pool;
  #pool: Pool | undefined;
  #building: Promise<Pool> | undefined;

  constructor(create: (undici: Undici) => Pool) {
    this.#create = create;
  }

  /** Open connections and requests, as undici counts them; nothing until the pool exists. */
  get stats(): { connected: number; pending: number; running: number } {
    const stats = this.#pool?.stats;
    return stats
      ? { connected: stats.connected, pending: stats.pending, running: stats.running }
      : { connected: 0, pending: 0, running: 0 };
  }

  dispatch(options: Dispatcher.DispatchOptions, handler: StreamHandler): boolean {
    if (this.#pool) return this.#pool.dispatch(options, handler);
    this.#build().then(
      (pool) => pool.dispatch(options, handler),
      (error: Error) => handler.onResponseError?.(null as unknown as Dispatcher.DispatchController, error),
    );
    return true;
  }

  async close(): Promise<void> {
    const pool = this.#pool ?? (await this.#building?.catch(() => undefined));
    await pool?.close();
  }

  async destroy(): Promise<void> {
    const pool = this.#pool ?? (await this.#building?.catch(() => undefined));
    await pool?.destroy();
  }

  #build(): Promise<Pool> {
    this.#building ??= loadUndici().then((undici) => {
      const pool = this.#create(undici);
      this.#pool = pool;
      return pool;
    });
    return this.#building;
  }
}
