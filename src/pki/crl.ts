// Certificate revocation lists for the dev PKI: a CA signs the list of serials it no longer vouches for.

import { MtlsdError } from "../errors.ts";
import { x509 } from "../x509.ts";
import type { Issuer } from "./ca.ts";
import { checkSerialHex, pkiDefaults } from "./certificate.ts";
import { pemEncode } from "./pem.ts";

const DAY_MS = 24 * 60 * 60 * 1000;

export interface CrlOptions {
  /** Hex serials of the certificates this CA revokes; an empty list is a valid CRL ("nothing revoked"). */
  revokedSerials?: readonly string[];
  /** Default: now minus the clock-skew allowance, as for certificates, so a peer a little behind accepts it. */
  thisUpdate?: Date;
  /** Default: thisUpdate + 7 days. OpenSSL refuses every peer once this has passed (CRL_HAS_EXPIRED). */
  nextUpdate?: Date;
  /**
   * Signs with this CA's key while still naming `issuer`: a forged CRL, for testing that validation checks the
   * signature and not just the name. Default: `issuer` itself.
   */
  signer?: Issuer;
}

export interface IssuedCrl {
  crl: x509.X509Crl;
  /** One `X509 CRL` PEM block; concatenate several into one `identity.crl` file. */
  crlPem: string;
}

/** Issues a v2 CRL signed by `issuer`, naming it as the issuer so OpenSSL matches it to the certs it signed. */
export async function issueCrl(issuer: Issuer, opts: CrlOptions = {}): Promise<IssuedCrl> {
  const thisUpdate = opts.thisUpdate ?? new Date(Date.now() - pkiDefaults.clockSkewMs);
  const nextUpdate = opts.nextUpdate ?? new Date(thisUpdate.getTime() + 7 * DAY_MS);
  if (nextUpdate.getTime() <= thisUpdate.getTime()) {
    throw new MtlsdError(
      "PKI_INVALID_OPTION",
      `nextUpdate (${nextUpdate.toISOString()}) must be later than thisUpdate (${thisUpdate.toISOString()})`,
    );
  }
  const signingKey = (opts.signer ?? issuer).keys.privateKey;
  const crl = await x509.X509CrlGenerator.create({
    issuer: issuer.cert.subjectName,
    thisUpdate,
    nextUpdate,
    signingKey,
    signingAlgorithm: { name: signingKey.algorithm.name, hash: "SHA-256" },
    entries: (opts.revokedSerials ?? []).map((serial) => ({
      serialNumber: checkSerialHex(serial),
      revocationDate: thisUpdate,
      reason: x509.X509CrlReason.keyCompromise,
    })),
  });
  return { crl, crlPem: pemEncode("X509 CRL", crl.rawData) };
}
