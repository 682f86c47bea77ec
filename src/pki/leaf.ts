// End-entity certificates: X509-SVIDs by default, and on request the deliberately broken ones tests need.

import { MtlsdError } from "../errors.ts";
import { x509 } from "../x509.ts";
import type { Issuer } from "./ca.ts";
import {
  checkSerialHex,
  keyIdentifierHex,
  pkiDefaults,
  randomSerialHex,
  sanExtension,
  signCertificate,
  subjectName,
  validityWindow,
} from "./certificate.ts";
import { type CryptoKeyPair, generateKeyPair, isRsaKey, type KeyAlgorithm, pemEncodeKey } from "./keys.ts";

export type ExtKeyUsageName = "serverAuth" | "clientAuth";
export type KeyUsageName = "digitalSignature" | "keyEncipherment" | "keyCertSign" | "cRLSign";

/**
 * What to put in a leaf. Nothing here is validated against the SPIFFE rules on purpose:
 * tests rely on the PKI to mint malformed SVIDs (two URI SANs, CA:TRUE, odd IDs) that mtlsd must reject.
 */
export interface LeafOptions {
  /** The single URI SAN of an X509-SVID. */
  spiffeId?: string;
  /** Additional URI SANs (to make an invalid SVID with two URI SANs). */
  extraUris?: string[];
  dnsNames?: string[];
  ipAddresses?: string[];
  /** Default: last path segment of the SPIFFE ID, else the first DNS name, else "leaf". */
  commonName?: string;
  organization?: string;
  /** Default 1 h from notBefore. */
  ttlMs?: number;
  /** Default now − 60 s. Set notBefore/notAfter to make expired or not-yet-valid certs. */
  notBefore?: Date;
  notAfter?: Date;
  /** Default false; true makes a bad SVID (CA:TRUE). */
  isCA?: boolean;
  /** Default both; null omits the extension. */
  extKeyUsage?: ExtKeyUsageName[] | null;
  /** Default [digitalSignature] (+ keyEncipherment for RSA); always critical. */
  keyUsage?: KeyUsageName[];
  keyAlgorithm?: KeyAlgorithm;
  /** Default: 16 random bytes, positive. */
  serialHex?: string;
}

export interface IssuedCert {
  cert: x509.X509Certificate;
  certPem: string;
  /** PKCS#8 PEM. */
  keyPem: string;
  keys: CryptoKeyPair;
  /** Leaf PEM followed by the issuer's chainPem: what a server or client presents. */
  chainPem: string;
  /** Lowercase hex, as `x509.X509Certificate.serialNumber` reports it. */
  serialHex: string;
}

const KEY_USAGE_FLAGS: Record<KeyUsageName, x509.KeyUsageFlags> = {
  digitalSignature: x509.KeyUsageFlags.digitalSignature,
  keyEncipherment: x509.KeyUsageFlags.keyEncipherment,
  keyCertSign: x509.KeyUsageFlags.keyCertSign,
  cRLSign: x509.KeyUsageFlags.cRLSign,
};
const EXT_KEY_USAGE_OIDS: Record<ExtKeyUsageName, x509.ExtendedKeyUsage> = {
  serverAuth: x509.ExtendedKeyUsage.serverAuth,
  clientAuth: x509.ExtendedKeyUsage.clientAuth,
};

function defaultCommonName(opts: LeafOptions): string {
  const lastSegment = opts.spiffeId
    ?.split("/")
    .filter((s) => s !== "")
    .at(-1);
  return lastSegment ?? opts.dnsNames?.[0] ?? "leaf";
}

function keyUsageExtension(opts: LeafOptions, keys: CryptoKeyPair): x509.KeyUsagesExtension {
  // RSA TLS 1.2 key exchange encrypts to the leaf key, so RSA leaves conventionally carry keyEncipherment too.
  const names =
    opts.keyUsage ?? (isRsaKey(keys) ? ["digitalSignature", "keyEncipherment"] : ["digitalSignature"]);
  if (names.length === 0) {
    throw new MtlsdError("PKI_INVALID_OPTION", "keyUsage must name at least one usage");
  }
  let flags = 0;
  for (const name of names) {
    const flag = KEY_USAGE_FLAGS[name];
    if (flag === undefined)
      throw new MtlsdError("PKI_INVALID_OPTION", `unknown keyUsage ${JSON.stringify(name)}`);
    flags |= flag;
  }
  return new x509.KeyUsagesExtension(flags, true);
}

function extKeyUsageExtension(opts: LeafOptions): x509.ExtendedKeyUsageExtension | undefined {
  const names = opts.extKeyUsage === undefined ? (["serverAuth", "clientAuth"] as const) : opts.extKeyUsage;
  if (names === null) return undefined;
  // An empty EKU SEQUENCE is not valid DER (SIZE 1..MAX), so "no EKU" has one spelling: null.
  if (names.length === 0) {
    throw new MtlsdError(
      "PKI_INVALID_OPTION",
      "extKeyUsage must not be empty; pass null to omit the extension",
    );
  }
  return new x509.ExtendedKeyUsageExtension(
    names.map((name) => {
      const oid = EXT_KEY_USAGE_OIDS[name];
      if (oid === undefined)
        throw new MtlsdError("PKI_INVALID_OPTION", `unknown extKeyUsage ${JSON.stringify(name)}`);
      return oid;
    }),
    false,
  );
}

function subjectAltNames(opts: LeafOptions): x509.JsonGeneralNames {
  const uris = [...(opts.spiffeId === undefined ? [] : [opts.spiffeId]), ...(opts.extraUris ?? [])];
  return [
    ...uris.map((value) => ({ type: "url" as const, value })),
    ...(opts.dnsNames ?? []).map((value) => ({ type: "dns" as const, value })),
    ...(opts.ipAddresses ?? []).map((value) => ({ type: "ip" as const, value })),
  ];
}

export async function issueLeaf(issuer: Issuer, opts: LeafOptions = {}): Promise<IssuedCert> {
  const { notBefore, notAfter } = validityWindow(opts, pkiDefaults.leafTtlMs);
  const serialHex = opts.serialHex === undefined ? randomSerialHex() : checkSerialHex(opts.serialHex);
  const keys = await generateKeyPair(opts.keyAlgorithm);
  const authorityKeyId =
    issuer.cert.getExtension(x509.SubjectKeyIdentifierExtension)?.keyId ??
    (await keyIdentifierHex(issuer.keys.publicKey));
  const extensions: x509.Extension[] = [
    new x509.BasicConstraintsExtension(opts.isCA ?? false, undefined, true),
    keyUsageExtension(opts, keys),
    new x509.SubjectKeyIdentifierExtension(await keyIdentifierHex(keys.publicKey)),
    new x509.AuthorityKeyIdentifierExtension(authorityKeyId),
  ];
  const eku = extKeyUsageExtension(opts);
  if (eku) extensions.push(eku);
  const san = sanExtension(subjectAltNames(opts));
  if (san) extensions.push(san);

  const { cert, certPem } = await signCertificate({
    subject: subjectName(opts.commonName ?? defaultCommonName(opts), opts.organization),
    issuer: issuer.cert.subjectName,
    publicKey: keys.publicKey,
    signingKey: issuer.keys.privateKey,
    serialHex,
    notBefore,
    notAfter,
    extensions,
  });
  return {
    cert,
    certPem,
    keyPem: await pemEncodeKey(keys),
    keys,
    chainPem: certPem + issuer.chainPem,
    serialHex: cert.serialNumber,
  };
}
