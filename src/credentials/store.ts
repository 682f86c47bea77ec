// Holds the current credentials and swaps them atomically; inbound and outbound subscribe to changes.
import type { Credentials } from "./load.ts";

export type CredentialListener = (next: Credentials, previous: Credentials) => void;

/**
 * The single source of truth for "which certificate do we present now". A swap is one assignment, so a
 * handshake sees either the old version or the new one, never a mix; listeners run synchronously after it.
 */
export class CredentialStore {
  #current: Credentials;
  #version = 1;
  readonly #listeners = new Set<CredentialListener>();

  constructor(initial: Credentials) {
    this.#current = initial;
  }

  get current(): Credentials {
    return this.#current;
  }

  /** Increments with every swap; SecureContexts are built once per version. */
  get version(): number {
    return this.#version;
  }

  subscribe(listener: CredentialListener): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** Installs already-validated credentials and tells every subscriber. */
  replace(next: Credentials): void {
    const previous = this.#current;
    this.#current = next;
    this.#version++;
    for (const listener of this.#listeners) listener(next, previous);
  }
}
