// Holds the current credentials and swaps them atomically, only after validating them; inbound and outbound subscribe.
import {
  type CredentialLabels,
  type CredentialMaterial,
  type Credentials,
  type LoadOptions,
  validateCredentials,
} from "./load.ts";

export type CredentialListener = (next: Credentials, previous: Credentials) => void;

/** What every version is validated against: our trust domain and the federated ones. */
export type TrustSettings = Omit<LoadOptions, "now">;

/**
 * The single source of truth for "which certificate do we present now". Validate before swap lives here, so
 * no credential source (files, the Workload API) can skip it: a source hands over raw material, and only
 * material that passes `validateCredentials` ever becomes current. A swap is one assignment, so a handshake
 * sees either the old version or the new one, never a mix; listeners run synchronously after it.
 */
export class CredentialStore {
  readonly trust: TrustSettings;
  #current: Credentials;
  #version = 1;
  readonly #listeners = new Set<CredentialListener>();
  /** Offers run one at a time, so an older version can never land after a newer one. */
  #queue: Promise<unknown> = Promise.resolve();

  private constructor(initial: Credentials, trust: TrustSettings) {
    this.#current = initial;
    this.trust = trust;
  }

  /** Validates the first version; throws MtlsdError (naming the part and the reason) when it is not usable. */
  static async open(
    material: CredentialMaterial,
    labels: CredentialLabels,
    trust: TrustSettings,
  ): Promise<CredentialStore> {
    return new CredentialStore(await validateCredentials(material, labels, trust), trust);
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

  /**
   * Validates a new version and, only if it passes, installs it and tells every subscriber. Rejects with the
   * validation error otherwise, and the current version stays in use.
   */
  offer(material: CredentialMaterial, labels: CredentialLabels): Promise<Credentials> {
    const offered = this.#queue.then(async () => {
      const next = await validateCredentials(material, labels, this.trust);
      const previous = this.#current;
      this.#current = next;
      this.#version++;
      for (const listener of this.#listeners) listener(next, previous);
      return next;
    });
    this.#queue = offered.catch(() => undefined);
    return offered;
  }
}
