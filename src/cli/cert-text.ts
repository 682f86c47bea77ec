// Reads certificates from PEM (or DER) and describes them the way `certs inspect` and `check` print them.
import { X509Certificate as NodeX509Certificate } from "node:crypto";
import { MtlsdError } from "../errors.ts";
import { type CertificateFields, formatSubjectRfc2253, readCertificate } from "../identity/index.ts";
import { x509 } from "../x509.ts";
import { describeValidity, isoSeconds, type Style } from "./text.ts";

const PEM_BLOCK = /-----BEGIN ([A-Z0-9 ]+)-----([A-Za-z0-9+/=\s]*?)-----END \1-----/g;

/** Everything printed about one certificate, parsed once. */
export interface CertFacts {
  der: Uint8Array;
  cert: x509.X509Certificate;
  /** What the sidecar reads from the DER, for the X509-SVID rules: the same reader `mtlsd run` uses. */
  fields: CertificateFields;
  node: NodeX509Certificate;
  subject: string;
  issuer: string;
  serialHex: string;
  uris: string[];
  dnsNames: string[];
  ips: string[];
  emails: string[];
  notBefore: Date;
  notAfter: Date;
  /** SHA-256 of the DER, colon-separated upper case, as `openssl x509 -fingerprint -sha256` prints it. */
  sha256: string;
  keyType: string;
  /**
   * Judged as a signing certificate (X509-SVID §3.2): CA:TRUE with keyCertSign, or with no key usage at all
   * (old roots). CA:TRUE without keyCertSign is a leaf that wrongly claims to be a CA, and is judged as a leaf.
   */
  isCA: boolean;
  pathLength: number | undefined;
  selfSigned: boolean;
}

export interface PemContents {
  certificates: Uint8Array[];
  /** Labels of the other blocks (PRIVATE KEY, X509 CRL…), so a command can say what else the file holds. */
  otherBlocks: string[];
}

/** The certificates in a PEM text, in order; a file that is one DER certificate is read as such. */
export function readCertificateFile(content: Buffer, file: string): PemContents {
  const text = content.toString("latin1");
  const certificates: Uint8Array[] = [];
  const otherBlocks: string[] = [];
  for (const match of text.matchAll(PEM_BLOCK)) {
    if (match[1] === "CERTIFICATE") {
      certificates.push(new Uint8Array(Buffer.from((match[2] ?? "").replace(/\s+/g, ""), "base64")));
    } else otherBlocks.push(match[1]!);
  }
  // A DER certificate starts with a SEQUENCE tag; anything else that holds no PEM block is not ours to read.
  if (certificates.length === 0 && otherBlocks.length === 0 && content[0] === 0x30) {
    certificates.push(new Uint8Array(content));
  }
  if (certificates.length === 0) {
    throw new MtlsdError(
      "CERT_PARSE",
      `${file}: no certificate found (expected PEM "-----BEGIN CERTIFICATE-----" blocks or one DER certificate)${otherBlocks.length > 0 ? `; it holds ${otherBlocks.join(", ")}` : ""}`,
    );
  }
  return { certificates, otherBlocks };
}

function keyTypeOf(node: NodeX509Certificate): string {
  const key = node.publicKey;
  const details = key.asymmetricKeyDetails ?? {};
  if (key.asymmetricKeyType === "ec") {
    const curve = details.namedCurve ?? "unknown curve";
    return `EC ${{ prime256v1: "P-256", secp384r1: "P-384", secp521r1: "P-521" }[curve] ?? curve}`;
  }
  if (key.asymmetricKeyType === "rsa") return `RSA ${details.modulusLength ?? "?"} bits`;
  return (key.asymmetricKeyType ?? "unknown").toUpperCase();
}

/** Parses one DER certificate; `where` names it in the error ("certificate 2 in FILE"). */
export function certFacts(der: Uint8Array, where: string): CertFacts {
  let cert: x509.X509Certificate;
  let node: NodeX509Certificate;
  let fields: CertificateFields;
  try {
    cert = new x509.X509Certificate(der);
    node = new NodeX509Certificate(der);
    fields = readCertificate(der);
  } catch (error) {
    throw new MtlsdError(
      "CERT_PARSE",
      `${where} is not a valid X.509 certificate: ${(error as Error).message}`,
      {
        cause: error,
      },
    );
  }
  const names = {
    uris: [] as string[],
    dnsNames: [] as string[],
    ips: [] as string[],
    emails: [] as string[],
  };
  for (const name of cert.getExtension(x509.SubjectAlternativeNameExtension)?.names.items ?? []) {
    if (name.type === "url") names.uris.push(name.value);
    else if (name.type === "dns") names.dnsNames.push(name.value);
    else if (name.type === "ip") names.ips.push(name.value);
    else if (name.type === "email") names.emails.push(name.value);
  }
  const constraints = cert.getExtension(x509.BasicConstraintsExtension);
  const keyUsage = cert.getExtension(x509.KeyUsagesExtension);
  const signs = !keyUsage || (keyUsage.usages & x509.KeyUsageFlags.keyCertSign) !== 0;
  return {
    der,
    cert,
    fields,
    node,
    subject: formatSubjectRfc2253(cert.subjectName) || "(empty subject)",
    issuer: formatSubjectRfc2253(cert.issuerName) || "(empty issuer)",
    serialHex: cert.serialNumber.toLowerCase(),
    ...names,
    notBefore: cert.notBefore,
    notAfter: cert.notAfter,
    sha256: node.fingerprint256,
    keyType: keyTypeOf(node),
    isCA: constraints?.ca === true && signs,
    pathLength: constraints?.pathLength,
    selfSigned: node.checkIssued(node) && node.verify(node.publicKey),
  };
}

/** "root CA", "intermediate CA" or "leaf". */
export function kindOf(facts: CertFacts): string {
  if (!facts.isCA) return "leaf";
  return facts.selfSigned ? "root CA" : "intermediate CA";
}

/** True when `issuer` signed `subject` (names chain and the signature verifies). */
export function issuedBy(subject: CertFacts, issuer: CertFacts): boolean {
  return subject.node.checkIssued(issuer.node) && subject.node.verify(issuer.node.publicKey);
}

/** "URI spiffe://…, DNS localhost, IP 127.0.0.1"; "none" when the certificate has no SAN. */
export function describeSans(facts: CertFacts): string {
  const parts = [
    ...facts.uris.map((v) => `URI ${v}`),
    ...facts.dnsNames.map((v) => `DNS ${v}`),
    ...facts.ips.map((v) => `IP ${v}`),
    ...facts.emails.map((v) => `email ${v}`),
  ];
  return parts.length === 0 ? "none" : parts.join(", ");
}

/** The validity line: both ends, and how far now is from them; red once outside the window. */
export function describeWindow(facts: CertFacts, now: Date, style: Style): string {
  const relative = describeValidity(facts.notBefore, facts.notAfter, now);
  const inside = now >= facts.notBefore && now <= facts.notAfter;
  return `${isoSeconds(facts.notBefore)} to ${isoSeconds(facts.notAfter)} (${inside ? relative : style.bad(relative)})`;
}

/** Aligned "label  value" lines under an indent, for the sections every command prints. */
export function fieldLines(fields: [string, string][], indent: string): string[] {
  const width = Math.max(...fields.map(([label]) => label.length));
  return fields.map(([label, value]) => `${indent}${label.padEnd(width)}  ${value}`);
}
