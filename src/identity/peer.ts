// Computes a peer's identity once per connection (and once per distinct certificate), in its own trust domain.
import { createHash, X509Certificate } from "node:crypto";
import { type CertificateFields, readCertificate } from "./certificate-der.ts";
import type { HandshakeFailureReason } from "./handshake-failure.ts";
import { formatSubjectRfc2253 } from "./subject.ts";
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

/** Parses a DER leaf and checks it as an X509-SVID in `trustDomain` (or one of several) for the given role. */
export function identifyPeer(
  der: Uint8Array,
  role: SvidRole,
  trustDomain: string | readonly string[],
  sha256?: string,
): PeerCheck {
  let cert: CertificateFields;
  try {
    cert = readCertificate(der);
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
      // Format the subject in place in the DER: re-encoding a parsed Name costs ~30x more per handshake.
      subject: formatSubjectRfc2253(cert.subjectDer),
      sha256: sha256 ?? createHash("sha256").update(der).digest("hex"),
      serialHex: cert.serialHex,
      notAfter: cert.notAfter,
    }),
  };
}

/**
 * What the cache reads trust from: the credential store, described by shape (identity does not import
 * credentials). `bundleSha256` fingerprints every domain's roots; verdicts are kept until it changes.
 */
export interface TrustSource {
  readonly current: {
    readonly trustDomain: string;
    readonly bundlePem: string;
    readonly bundleSha256: string;
    readonly federation: readonly { readonly trustDomain: string; readonly pem: string }[];
  };
}

/** Each trust domain's roots as parsed once per trust version, and the verdicts reached under them. */
interface Anchors {
  bundleSha256: string;
  /** Ours first, then the federated ones. */
  domains: string[];
  roots: Map<string, X509Certificate[]>;
  verdicts: Map<string, PeerCheck>;
}

// Intermediates a chain may have between leaf and root before we stop looking (OpenSSL's default depth is 100,
// SPIRE issues through at most a few); a longer chain is refused as unknown_ca.
const MAX_CHAIN_DEPTH = 8;

/**
 * Decides who a peer is, once per distinct certificate: peers that open many connections (or clients that
 * send `Connection: close`) present the same leaf again and again, and parsing is the expensive part.
 *
 * With federation, OpenSSL is given every trust domain's roots (it must accept a partner's chain at all), so
 * on its own it would accept a certificate claiming partner.example that chains to our CA, or one claiming our
 * domain issued by the partner's CA. Here the chain must lead to a root in the bundle of the trust domain of
 * the peer's own SPIFFE ID, and no other (SPIFFE Trust Domain and Bundle spec: a bundle belongs to one trust
 * domain). Signatures are checked on the chain the peer presented; OpenSSL has already verified validity,
 * constraints and revocation on its path. Without federation there is one bundle, so OpenSSL's verdict is
 * the whole answer and nothing more is done.
 */
export class PeerIdentityCache {
  readonly role: SvidRole;
  readonly #trust: TrustSource;
  readonly #capacity: number;
  #anchors: Anchors | undefined;

  constructor(role: SvidRole, trust: TrustSource, capacity = 4096) {
    this.role = role;
    this.#trust = trust;
    this.#capacity = capacity;
  }

  /** The verdict on a peer's certificate as the TLS socket gives it (with the chain it presented). */
  identify(certificate: X509Certificate): PeerCheck {
    const anchors = this.#current();
    const der = certificate.raw;
    const sha256 = createHash("sha256").update(der).digest("hex");
    const cached = anchors.verdicts.get(sha256);
    if (cached) return cached;
    let verdict = identifyPeer(der, this.role, anchors.domains, sha256);
    let complete = true;
    if (verdict.ok && anchors.domains.length > 1) {
      const anchored = anchorCheck(certificate, verdict.peer, anchors);
      if (anchored) {
        verdict = anchored.verdict;
        complete = anchored.complete;
      }
    }
    // A verdict reached without the chain (a resumed session presents only the leaf) is not kept: the next full
    // handshake, chain and all, decides afresh.
    if (complete) {
      if (anchors.verdicts.size >= this.#capacity) {
        // Evict the oldest entry; Map iterates in insertion order.
        anchors.verdicts.delete(anchors.verdicts.keys().next().value!);
      }
      anchors.verdicts.set(sha256, verdict);
    }
    return verdict;
  }

  /** Roots parsed once per trust version; verdicts from before a change of trust are dropped. */
  #current(): Anchors {
    const current = this.#trust.current;
    if (this.#anchors?.bundleSha256 === current.bundleSha256) return this.#anchors;
    const roots = new Map<string, X509Certificate[]>([[current.trustDomain, parseRoots(current.bundlePem)]]);
    for (const bundle of current.federation) roots.set(bundle.trustDomain, parseRoots(bundle.pem));
    this.#anchors = {
      bundleSha256: current.bundleSha256,
      domains: [...roots.keys()],
      roots,
      verdicts: new Map(),
    };
    return this.#anchors;
  }
}

function parseRoots(pem: string): X509Certificate[] {
  return (pem.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? []).map(
    (block) => new X509Certificate(block),
  );
}

/**
 * The failure when the peer's chain does not lead to its own trust domain's roots; undefined when it does.
 * `complete` is false when the verdict lacked the chain (so it must not be remembered).
 */
function anchorCheck(
  certificate: X509Certificate,
  peer: PeerIdentity,
  anchors: Anchors,
): { verdict: PeerCheck; complete: boolean } | undefined {
  const claimed = `${peer.spiffeId} claims trust domain ${peer.trustDomain}`;
  const roots = anchors.roots.get(peer.trustDomain) ?? [];
  if (roots.length === 0) {
    return {
      verdict: {
        ok: false,
        reason: "unknown_ca",
        detail: `${claimed}, whose bundle is empty (no federated bundle delivered for it yet)`,
        spiffeId: peer.spiffeId,
      },
      complete: true,
    };
  }
  const own = anchorsIn(certificate, roots);
  if (own.anchored) return undefined;
  const other = anchors.domains.find(
    (domain) => domain !== peer.trustDomain && anchorsIn(certificate, anchors.roots.get(domain)!).anchored,
  );
  if (!other && !own.complete) {
    return {
      verdict: {
        ok: false,
        reason: "unknown_ca",
        detail: `${claimed}, but only its leaf is known (a resumed TLS session) and no earlier verdict on it is kept; the peer must reconnect with a full handshake`,
        spiffeId: peer.spiffeId,
      },
      complete: false,
    };
  }
  return {
    verdict: {
      ok: false,
      reason: other ? "wrong_trust_domain" : "unknown_ca",
      detail: other
        ? `${claimed}, but its certificate chains to the bundle of trust domain ${other}; a peer is verified against its own trust domain's bundle only`
        : `${claimed}, but its certificate does not chain to a root in the bundle of ${peer.trustDomain}`,
      spiffeId: peer.spiffeId,
    },
    complete: true,
  };
}

/**
 * Follows the chain the peer presented (Node links each certificate to its issuer in it), checking each
 * signature, until a certificate is signed by one of `roots` or is one of them.
 */
function anchorsIn(
  leaf: X509Certificate,
  roots: readonly X509Certificate[],
): { anchored: boolean; complete: boolean } {
  let current = leaf;
  for (let depth = 0; depth <= MAX_CHAIN_DEPTH; depth++) {
    for (const root of roots) {
      if (current.fingerprint256 === root.fingerprint256 || signedBy(current, root)) {
        return { anchored: true, complete: true };
      }
    }
    const issuer = current.issuerCertificate;
    if (!issuer) return { anchored: false, complete: current !== leaf || isSelfIssued(leaf) };
    if (issuer.fingerprint256 === current.fingerprint256 || !signedBy(current, issuer)) {
      return { anchored: false, complete: true };
    }
    current = issuer;
  }
  return { anchored: false, complete: true };
}

function signedBy(child: X509Certificate, issuer: X509Certificate): boolean {
  return child.checkIssued(issuer) && child.verify(issuer.publicKey);
}

function isSelfIssued(cert: X509Certificate): boolean {
  return cert.checkIssued(cert);
}
