// Checks `identity.crl` before it is used: every block parses, none is stale, and each CA in our chain has one.
//
// Node turns on both X509_V_FLAG_CRL_CHECK and X509_V_FLAG_CRL_CHECK_ALL as soon as a SecureContext gets a `crl`,
// so OpenSSL then wants a CRL from the issuer of every certificate in a peer's chain: the intermediate's (for
// leaves) and the root's (for intermediates). A file with only the intermediate's CRL would refuse every peer
// with UNABLE_TO_GET_CRL. Peers of the same trust domain normally share our chain's CAs, so checking that our
// own chain is covered catches that mistake at load instead of as an outage.
import { MtlsdError } from "../errors.ts";
import { x509 } from "../x509.ts";

const PEM_CRL = /-----BEGIN X509 CRL-----[\s\S]+?-----END X509 CRL-----/g;

/** Splits the file into one PEM string per CRL, as `tls.createSecureContext({ crl: [...] })` takes them. */
export function splitCrlPem(pem: string): string[] {
  return (pem.match(PEM_CRL) ?? []).map((block) => `${block}\n`);
}

/**
 * The `crl` option for tls.createSecureContext, one PEM per entry so no OpenSSL version reads only the first;
 * empty (no revocation checking) without a CRL. Contexts are built once per credential version, not per use.
 */
export function crlOption(crlPem: string | undefined): { crl?: string[] } {
  return crlPem === undefined ? {} : { crl: splitCrlPem(crlPem) };
}

/**
 * Validates the CRL file against our own chain (leaf first, then intermediates, as DER) at time `now`.
 * Signatures and our own revocation status are left to the TLS self-test, so OpenSSL decides those exactly.
 */
export function checkCrls(pem: string, file: string, chainDer: readonly Uint8Array[], now: Date): void {
  const blocks = splitCrlPem(pem);
  if (blocks.length === 0) {
    throw new MtlsdError(
      "CRL_INVALID",
      `identity.crl (${file}): no PEM "BEGIN X509 CRL" block found; convert a DER CRL with: openssl crl -inform DER -in CRL -out CRL.pem`,
    );
  }
  const issuers = new Set<string>();
  blocks.forEach((block, index) => {
    let crl: x509.X509Crl;
    try {
      crl = new x509.X509Crl(block);
    } catch (error) {
      throw new MtlsdError(
        "CRL_INVALID",
        `identity.crl (${file}): CRL ${index + 1} does not parse: ${(error as Error).message}`,
        { cause: error },
      );
    }
    if (crl.nextUpdate && crl.nextUpdate.getTime() < now.getTime()) {
      throw new MtlsdError(
        "CRL_INVALID",
        `identity.crl (${file}): CRL ${index + 1} (from ${crl.issuer}) was due for renewal at ${crl.nextUpdate.toISOString()}; OpenSSL would refuse every peer with it (CRL_HAS_EXPIRED): install a fresh CRL`,
      );
    }
    issuers.add(crl.issuer);
  });
  for (const der of chainDer) {
    const cert = new x509.X509Certificate(der);
    if (issuers.has(cert.issuer)) continue;
    throw new MtlsdError(
      "CRL_INVALID",
      `identity.crl (${file}): no CRL from ${cert.issuer}, which issued ${cert.subject}; revocation is checked for every certificate in a chain, so the file needs a CRL from each CA, the root's included (an empty CRL will do)`,
    );
  }
}
