// The emergency revocation list (`identity.deny`): certificate serials and SPIFFE IDs refused as `revoked`.
import type { PeerIdentity } from "./peer.ts";

export interface DenyListConfig {
  /** Hex serials, any case, with or without colons. */
  serials: readonly string[];
  spiffeIds: readonly string[];
}

export type DenyVerdict = { denied: false } | { denied: true; detail: string };

const NOT_DENIED: DenyVerdict = Object.freeze({ denied: false });

/**
 * `5C:18:0a` and `5c180a` and `005c180a` name the same serial: colons go, case folds, and leading zero
 * bytes (the DER sign pad some tools print) are dropped, so a serial copied from any tool matches.
 */
export function normalizeSerial(serial: string): string {
  const hex = serial
    .replaceAll(":", "")
    .toLowerCase()
    .replace(/^0+(?=.)/, "");
  return hex;
}

/**
 * Checked once per connection against the peer's leaf, after the chain verified. A serial is unique only per
 * issuer, so a listed serial is refused whichever CA in the trust bundle issued it: collisions between random
 * 126-bit serials do not happen in practice, and an emergency list should err on the side of refusing.
 */
export class DenyList {
  size = 0;
  #serials: ReadonlySet<string> = new Set();
  #spiffeIds: ReadonlySet<string> = new Set();

  constructor(config: DenyListConfig) {
    this.replace(config);
  }

  /**
   * A config reload: every listener and upstream holds this one list, so connections checked from now on see the
   * new entries. (Open connections were checked when they were made; the listeners close those it now lists.)
   */
  replace(config: DenyListConfig): void {
    this.#serials = new Set(config.serials.map(normalizeSerial));
    this.#spiffeIds = new Set(config.spiffeIds);
    this.size = this.#serials.size + this.#spiffeIds.size;
  }

  check(peer: Pick<PeerIdentity, "spiffeId" | "serialHex">): DenyVerdict {
    if (this.size === 0) return NOT_DENIED;
    if (this.#spiffeIds.has(peer.spiffeId)) {
      return { denied: true, detail: `SPIFFE ID ${peer.spiffeId} is listed in identity.deny.spiffeIds` };
    }
    const serial = normalizeSerial(peer.serialHex);
    if (this.#serials.has(serial)) {
      return { denied: true, detail: `certificate serial ${serial} is listed in identity.deny.serials` };
    }
    return NOT_DENIED;
  }

  /** Whether a SPIFFE ID alone is listed (for `mtlsd policy explain`, which has no certificate). */
  deniesSpiffeId(spiffeId: string): boolean {
    return this.#spiffeIds.has(spiffeId);
  }
}
