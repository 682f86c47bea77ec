// One timer a connection arms and stops again and again (request by request), with no new Timeout each time.
//
// setTimeout makes a Timeout object (and a closure, for a callback with arguments) and clearTimeout unlinks it for
// good; done per request, that is up to four objects and list operations a request on the hot path. Here the
// Timeout is made once per duration and restarted with refresh(); stopping only marks it stopped and unrefs it, and
// if it fires stopped it does nothing. Its duration rarely changes (a config reload, an app's Keep-Alive hint): then
// it is replaced.

export class Timer {
  #timeout: NodeJS.Timeout | undefined;
  #ms = 0;
  #callback: (() => void) | undefined;
  #closed = false;

  /** Calls `callback` in `ms` unless stopped or armed again first; `ref: false` lets the process exit meanwhile. */
  arm(ms: number, callback: () => void, ref = true): void {
    if (this.#closed) return;
    this.#callback = callback;
    const timeout = this.#timeout;
    if (timeout !== undefined && this.#ms === ms) {
      timeout.refresh();
      if (ref) timeout.ref();
      else timeout.unref();
      return;
    }
    clearTimeout(timeout);
    this.#ms = ms;
    this.#timeout = setTimeout(this.#fire, ms);
    if (!ref) this.#timeout.unref();
  }

  /** Whether a callback is due. */
  get armed(): boolean {
    return this.#callback !== undefined;
  }

  /** Starts the armed wait over, from now, with the same duration. */
  refresh(): void {
    if (this.#callback !== undefined) this.#timeout?.refresh();
  }

  /** Nothing is due any more; the Timeout stays for the next arm, unref'd so it holds nothing up. */
  stop(): void {
    if (this.#callback === undefined) return;
    this.#callback = undefined;
    this.#timeout?.unref();
  }

  /** For good (its owner closed): the Timeout goes too. */
  close(): void {
    this.#closed = true;
    this.#callback = undefined;
    clearTimeout(this.#timeout);
    this.#timeout = undefined;
  }

  readonly #fire = (): void => {
    const callback = this.#callback;
    this.#callback = undefined;
    callback?.();
  };
}
