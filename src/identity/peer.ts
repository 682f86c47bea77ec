// Computes a peer's identity from its DER leaf once per connection (and once per distinct certificate).
import { createHash } from "node:crypto";
import { x509 } from "../x509.ts";
import type { HandshakeFailureReason } from "./handshake-failure.ts";
import { formatSubjectRfc2253, subjectDerOfCertificate } from "./subject.ts";
import { checkLeafSvid, type SvidRole } from "./svid.ts";

/** Who is on the other end of a connection, as proven by its certificate. */
export interface PeerIdentity {
  readonly spiffeId: string;
  readonly trustDomain: string;
  readonly uris: readonly string[];
  readonly dnsNames: readonly string[];
  /** RFC 2253 subject, as Envoy writes it into XFCC: `CN=frontend,O=acme`. */
  readonly subject: string;
  /** Lowercase hex SHA-256 of the DER leaf. */
  readonly sha256: string;
  readonly serialHex: string;
  readonly notAfter: Date;
}

export type PeerCheck =
  | { ok: true; peer: PeerIdentity }
  | { ok: false; reason: HandshakeFailureReason; detail: string; spiffeId?: string };

/** Parses a DER leaf and checks it as an X509-SVID in `trustDomain` for the given role. */
export function identifyPeer(
  der: Uint8Array,
  role: SvidRole,
  trustDomain: string,
  sha256?: string,
): PeerCheck {
  let cert: x509.X509Certificate;
  try {
    cert = new x509.X509Certificate(der);
  } catch (error) {
    return {
      ok: false,
      reason: "bad_svid",
      detail: `certificate does not parse: ${(error as Error).message}`,
    };
  }
  const svid = checkLeafSvid(cert, role, trustDomain);
  if (!svid.ok) return svid;
  return {
    ok: true,
    peer: Object.freeze({
      spiffeId: svid.spiffeId,
      trustDomain: svid.trustDomain,
      uris: Object.freeze(svid.uris),
      dnsNames: Object.freeze(svid.dnsNames),
      // Read the subject straight from the DER: re-encoding the parsed Name costs ~30x more per handshake.
      subject: formatSubjectRfc2253(subjectDerOfCertificate(der)),
      sha256: sha256 ?? createHash("sha256").update(der).digest("hex"),
      serialHex: cert.serialNumber.toLowerCase(),
      notAfter: cert.notAfter,
    }),
  };
}

/**
 * Remembers results per certificate fingerprint: peers that open many connections (or clients that send
 * `Connection: close`) present the same leaf again and again, and ASN.1 parsing is the expensive part.
 * Chain verification is not cached here; OpenSSL does it on every handshake.
 */
export class PeerIdentityCache {
  readonly role: SvidRole;
  readonly trustDomain: string;
  readonly #capacity: number;
  readonly #entries = new Map<string, PeerCheck>();

  constructor(role: SvidRole, trustDomain: string, capacity = 1024) {
    this.role = role;
    this.trustDomain = trustDomain;
    this.#capacity = capacity;
  }

  identify(der: Uint8Array): PeerCheck {
    const sha256 = createHash("sha256").update(der).digest("hex");
    const cached = this.#entries.get(sha256);
    if (cached) return cached;
    const result = identifyPeer(der, this.role, this.trustDomain, sha256);
    if (this.#entries.size >= this.#capacity) {
      // Evict the oldest entry; Map iterates in insertion order.
      this.#entries.delete(this.#entries.keys().next().value!);
    }
    this.#entries.set(sha256, result);
    return result;
  }
}
