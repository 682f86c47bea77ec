// Certificate authorities for the dev PKI: self-signed roots, intermediates, and CAs loaded back from PEM files.

import { X509Certificate as NodeX509Certificate } from "node:crypto";
import { MtlsdError } from "../errors.ts";
import { x509 } from "../x509.ts";
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
import {
  type CryptoKeyPair,
  generateKeyPair,
  importPrivateKeyPem,
  type KeyAlgorithm,
  pemEncodeKey,
} from "./keys.ts";
import { pemDecodeAll, pemEncode } from "./pem.ts";

/** A CA that can sign. */
export interface Issuer {
  cert: x509.X509Certificate;
  certPem: string;
  /** PKCS#8 PEM. */
  keyPem: string;
  keys: CryptoKeyPair;
  /** This CA's cert followed by its parents up to but excluding the root; "" for a root. */
  chainPem: string;
  trustDomain: string;
}

export interface RootCAOptions {
  trustDomain: string;
  commonName?: string;
  ttlMs?: number;
  notBefore?: Date;
  notAfter?: Date;
  keyAlgorithm?: KeyAlgorithm;
  serialHex?: string;
}

export interface IntermediateCAOptions {
  commonName?: string;
  ttlMs?: number;
  notBefore?: Date;
  notAfter?: Date;
  /** Default 0: this CA signs leaves only. Give ≥ 1 to a CA that will sign further intermediates. */
  pathLength?: number;
  keyAlgorithm?: KeyAlgorithm;
  serialHex?: string;
}

// SPIFFE-ID.md: trust domain is lowercase letters, digits, dots, dashes and underscores, at most 255 bytes.
const TRUST_DOMAIN = /^[a-z0-9._-]{1,255}$/;
const CA_KEY_USAGE =
  x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign | x509.KeyUsageFlags.digitalSignature;

function checkTrustDomain(trustDomain: string): void {
  if (!TRUST_DOMAIN.test(trustDomain)) {
    throw new MtlsdError(
      "PKI_INVALID_TRUST_DOMAIN",
      `trust domain ${JSON.stringify(trustDomain)} is not valid: use 1-255 lowercase letters, digits, ".", "-" or "_" (e.g. example.org)`,
    );
  }
}

// X509-SVID.md §3: a signing certificate may carry the trust domain's SPIFFE ID as its URI SAN.
function trustDomainSan(trustDomain: string): x509.JsonGeneralNames {
  return trustDomain === "" ? [] : [{ type: "url", value: `spiffe://${trustDomain}` }];
}

async function caExtensions(
  keys: CryptoKeyPair,
  trustDomain: string,
  pathLength: number | undefined,
  authorityKeyId: string | undefined,
): Promise<x509.Extension[]> {
  const extensions: x509.Extension[] = [
    new x509.BasicConstraintsExtension(true, pathLength, true),
    new x509.KeyUsagesExtension(CA_KEY_USAGE, true),
    new x509.SubjectKeyIdentifierExtension(await keyIdentifierHex(keys.publicKey)),
  ];
  if (authorityKeyId !== undefined) extensions.push(new x509.AuthorityKeyIdentifierExtension(authorityKeyId));
  const san = sanExtension(trustDomainSan(trustDomain));
  if (san) extensions.push(san);
  return extensions;
}

export async function createRootCA(opts: RootCAOptions): Promise<Issuer> {
  checkTrustDomain(opts.trustDomain);
  const { notBefore, notAfter } = validityWindow(opts, pkiDefaults.rootTtlMs);
  const keys = await generateKeyPair(opts.keyAlgorithm);
  const name = subjectName(opts.commonName ?? `${opts.trustDomain} root CA`);
  const { cert, certPem } = await signCertificate({
    subject: name,
    issuer: new x509.Name(name),
    publicKey: keys.publicKey,
    signingKey: keys.privateKey,
    serialHex: opts.serialHex === undefined ? randomSerialHex() : checkSerialHex(opts.serialHex),
    notBefore,
    notAfter,
    extensions: await caExtensions(keys, opts.trustDomain, undefined, undefined),
  });
  return {
    cert,
    certPem,
    keyPem: await pemEncodeKey(keys),
    keys,
    chainPem: "",
    trustDomain: opts.trustDomain,
  };
}

/** The issuer's key identifier as stated in its cert, so AKI matches SKI even for CAs made by other tools. */
async function authorityKeyId(parent: Issuer): Promise<string> {
  return (
    parent.cert.getExtension(x509.SubjectKeyIdentifierExtension)?.keyId ??
    (await keyIdentifierHex(parent.keys.publicKey))
  );
}

export async function createIntermediateCA(
  parent: Issuer,
  opts: IntermediateCAOptions = {},
): Promise<Issuer> {
  const pathLength = opts.pathLength ?? 0;
  if (!Number.isInteger(pathLength) || pathLength < 0) {
    throw new MtlsdError(
      "PKI_INVALID_OPTION",
      `pathLength must be a non-negative integer, got ${pathLength}`,
    );
  }
  const { notBefore, notAfter } = validityWindow(opts, pkiDefaults.intermediateTtlMs);
  const keys = await generateKeyPair(opts.keyAlgorithm);
  const label = parent.trustDomain === "" ? "mtlsd" : parent.trustDomain;
  // A sub-CA named like its parent would be "self-issued", and RFC 5280 §4.2.1.9 exempts those from pathLength.
  const depth = pemDecodeAll(parent.chainPem, "CERTIFICATE").length + 1;
  const defaultName = depth === 1 ? `${label} intermediate CA` : `${label} intermediate CA (level ${depth})`;
  const { cert, certPem } = await signCertificate({
    subject: subjectName(opts.commonName ?? defaultName),
    issuer: parent.cert.subjectName,
    publicKey: keys.publicKey,
    signingKey: parent.keys.privateKey,
    serialHex: opts.serialHex === undefined ? randomSerialHex() : checkSerialHex(opts.serialHex),
    notBefore,
    notAfter,
    extensions: await caExtensions(keys, parent.trustDomain, pathLength, await authorityKeyId(parent)),
  });
  return {
    cert,
    certPem,
    keyPem: await pemEncodeKey(keys),
    keys,
    chainPem: certPem + parent.chainPem,
    trustDomain: parent.trustDomain,
  };
}

function trustDomainOf(cert: x509.X509Certificate): string {
  const san = cert.getExtension(x509.SubjectAlternativeNameExtension);
  for (const name of san?.names.items ?? []) {
    const match = name.type === "url" ? /^spiffe:\/\/([^/]+)/i.exec(name.value) : null;
    if (match?.[1]) return match[1];
  }
  return "";
}

function parseCertificates(pem: string, what: string): x509.X509Certificate[] {
  return pemDecodeAll(pem, "CERTIFICATE").map((der, i) => {
    try {
      return new x509.X509Certificate(der);
    } catch (cause) {
      throw new MtlsdError(
        "PKI_BAD_PEM",
        `certificate ${i + 1} in the ${what} is not a valid X.509 certificate`,
        {
          cause,
        },
      );
    }
  });
}

/**
 * Rebuilds an Issuer from PEM files (e.g. what `mtlsd certs init` wrote).
 * `certPem` starts with the CA cert and may go on with its parents; `chainPem` may add (or repeat) parents.
 * Roots are dropped from the chain, since peers already hold them in their trust bundle.
 */
export async function loadIssuer(certPem: string, keyPem: string, chainPem = ""): Promise<Issuer> {
  const [cert, ...parents] = [
    ...parseCertificates(certPem, "CA certificate PEM"),
    ...parseCertificates(chainPem, "chain PEM"),
  ];
  if (cert === undefined) {
    throw new MtlsdError("PKI_BAD_PEM", "the CA certificate PEM holds no -----BEGIN CERTIFICATE----- block");
  }
  if (cert.getExtension(x509.BasicConstraintsExtension)?.ca !== true) {
    throw new MtlsdError(
      "PKI_NOT_A_CA",
      `${cert.subject} is not a CA (basicConstraints CA:TRUE is missing), so it cannot issue certificates`,
    );
  }
  const { keys, keyObject } = importPrivateKeyPem(keyPem);
  if (!new NodeX509Certificate(new Uint8Array(cert.rawData)).checkPrivateKey(keyObject)) {
    throw new MtlsdError(
      "CERT_KEY_MISMATCH",
      `the private key does not belong to the CA certificate ${cert.subject}`,
    );
  }
  const seen = new Set<string>();
  const chain: x509.X509Certificate[] = [];
  for (const candidate of [cert, ...parents]) {
    const der = Buffer.from(candidate.rawData).toString("base64");
    if (seen.has(der)) continue;
    seen.add(der);
    if (await candidate.isSelfSigned()) continue;
    chain.push(candidate);
  }
  const ownPem = pemEncode("CERTIFICATE", cert.rawData);
  return {
    cert,
    certPem: ownPem,
    keyPem: await pemEncodeKey(keys),
    keys,
    chainPem: chain.map((c) => pemEncode("CERTIFICATE", c.rawData)).join(""),
    trustDomain: trustDomainOf(cert),
  };
}
