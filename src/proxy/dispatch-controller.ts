// The state undici's DispatchController shows a handler (aborted, paused, reason), kept once for mtlsd's own
// HTTP/1.1 and HTTP/2 clients: each says only what aborting, pausing and resuming do to its connection or stream.
import type { Dispatcher } from "undici";

/** What a handler is given with an error reported before its request started: there is nothing to control. */
export const IDLE_CONTROLLER: Dispatcher.DispatchController = {
  aborted: false,
  paused: false,
  reason: null,
  abort() {},
  pause() {},
  resume() {},
};

/** One request and its answer as the handler controls them: aborted at most once, never after it is over. */
export abstract class ExchangeController implements Dispatcher.DispatchController {
  #aborted = false;
  #paused = false;
  #reason: Error | null = null;
  #ended = false;

  get aborted(): boolean {
    return this.#aborted;
  }

  get paused(): boolean {
    return this.#paused;
  }

  get reason(): Error | null {
    return this.#reason;
  }

  /** The handler was told the end of the response or its error: nothing more is reported. */
  get ended(): boolean {
    return this.#ended;
  }

  abort(reason: Error): void {
    if (this.#aborted || this.#ended) return;
    this.#aborted = true;
    this.#reason = reason;
    this.onAbort(reason);
  }

  pause(): void {
    this.#paused = true;
    this.onPause();
  }

  resume(): void {
    if (!this.#paused) return;
    this.#paused = false;
    this.onResume();
  }

  /** Marks the exchange over; false when it already was, and the caller reports nothing. */
  protected markEnded(): boolean {
    if (this.#ended) return false;
    this.#ended = true;
    return true;
  }

  /** Stops the exchange for `reason` and reports it (through markEnded) to the handler. */
  protected abstract onAbort(reason: Error): void;
  /** Stops reading the response: the handler cannot take more. */
  protected abstract onPause(): void;
  /** Reads the response again after a pause. */
  protected abstract onResume(): void;
}
