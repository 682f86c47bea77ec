// The parts of certificate issuance that CAs and leaves share: defaults, validity windows, serials, names, signing.

import { webcrypto } from "node:crypto";
import { MtlsdError } from "../errors.ts";
import { x509 } from "../x509.ts";
import { pemEncode } from "./pem.ts";

const HOUR_MS = 60 * 60 * 1000;
const DAY_MS = 24 * HOUR_MS;

/** Every default the PKI applies, in one place so the CLI can print them and tests can reason about them. */
export const pkiDefaults = Object.freeze({
  /** notBefore is backdated by this much so a peer whose clock runs a little behind still accepts a fresh cert. */
  clockSkewMs: 60 * 1000,
  rootTtlMs: 365 * DAY_MS,
  intermediateTtlMs: 180 * DAY_MS,
  leafTtlMs: HOUR_MS,
  /** 16 random bytes, as the CA/Browser Forum asks for at least 64 bits of entropy; we keep 126. */
  serialBytes: 16,
});

export interface ValidityOptions {
  ttlMs?: number;
  notBefore?: Date;
  notAfter?: Date;
}

/** notBefore defaults to now minus the skew allowance; notAfter to notBefore + ttl. */
export function validityWindow(
  opts: ValidityOptions,
  defaultTtlMs: number,
): { notBefore: Date; notAfter: Date } {
  const notBefore = opts.notBefore ?? new Date(Date.now() - pkiDefaults.clockSkewMs);
  const ttlMs = opts.ttlMs ?? defaultTtlMs;
  if (!Number.isFinite(ttlMs) || ttlMs <= 0) {
    throw new MtlsdError(
      "PKI_INVALID_OPTION",
      `ttlMs must be a positive number of milliseconds, got ${ttlMs}`,
    );
  }
  const notAfter = opts.notAfter ?? new Date(notBefore.getTime() + ttlMs);
  if (Number.isNaN(notBefore.getTime()) || Number.isNaN(notAfter.getTime())) {
    throw new MtlsdError("PKI_INVALID_OPTION", "notBefore and notAfter must be valid dates");
  }
  // Expired and not-yet-valid certs are fine to ask for; an inverted window is always a caller mistake.
  if (notAfter.getTime() <= notBefore.getTime()) {
    throw new MtlsdError(
      "PKI_INVALID_OPTION",
      `notAfter (${notAfter.toISOString()}) must be later than notBefore (${notBefore.toISOString()})`,
    );
  }
  return { notBefore, notAfter };
}

/**
 * A random positive serial of exactly `serialBytes` bytes, as lowercase hex.
 * The top bit is cleared so DER needs no 0x00 sign pad; the next bit is set so the length never shrinks,
 * which keeps the hex we return identical to what the certificate carries.
 */
export function randomSerialHex(): string {
  const bytes = webcrypto.getRandomValues(new Uint8Array(pkiDefaults.serialBytes));
  bytes[0] = ((bytes[0] ?? 0) & 0x7f) | 0x40;
  return Buffer.from(bytes).toString("hex");
}

export function checkSerialHex(serialHex: string): string {
  if (!/^(?:[0-9a-fA-F]{2})+$/.test(serialHex) || /^0*$/.test(serialHex)) {
    throw new MtlsdError(
      "PKI_INVALID_OPTION",
      `serialHex must be a non-zero, even-length hex string, got ${JSON.stringify(serialHex)}`,
    );
  }
  return serialHex.toLowerCase();
}

/** Subject as a structured name, so commas or equals signs in a common name never need escaping. O precedes CN in DER, so RFC 2253 prints `CN=...,O=...`. */
export function subjectName(commonName: string, organization?: string): x509.JsonName {
  const name: x509.JsonName = [];
  if (organization !== undefined) name.push({ O: [organization] });
  name.push({ CN: [commonName] });
  return name;
}

/** The SHA-1 key identifier (RFC 5280 §4.2.1.2 method 1) of a public key, as hex. */
export async function keyIdentifierHex(publicKey: CryptoKey): Promise<string> {
  return (await x509.SubjectKeyIdentifierExtension.create(publicKey)).keyId;
}

export function sanExtension(names: x509.JsonGeneralNames): x509.SubjectAlternativeNameExtension | undefined {
  return names.length > 0 ? new x509.SubjectAlternativeNameExtension(names, false) : undefined;
}

export interface SignParams {
  subject: x509.JsonName;
  issuer: x509.Name;
  publicKey: CryptoKey;
  signingKey: CryptoKey;
  serialHex: string;
  notBefore: Date;
  notAfter: Date;
  extensions: x509.Extension[];
}

/** Signs with SHA-256 (ECDSA or RSA PKCS#1 v1.5, following the signing key) and returns the cert with its PEM. */
export async function signCertificate(
  params: SignParams,
): Promise<{ cert: x509.X509Certificate; certPem: string }> {
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: params.serialHex,
    subject: params.subject,
    issuer: params.issuer,
    notBefore: params.notBefore,
    notAfter: params.notAfter,
    publicKey: params.publicKey,
    signingKey: params.signingKey,
    // The generator merges hash SHA-256 with the signing key's own algorithm (ECDSA, or RSA bound to SHA-256).
    signingAlgorithm: { name: params.signingKey.algorithm.name, hash: "SHA-256" },
    extensions: params.extensions,
  });
  return { cert, certPem: pemEncode("CERTIFICATE", cert.rawData) };
}
