// Reads what the sidecar decides on (SANs, CA flag, key usages, serial, CRL entries) straight from DER, so the runtime loads no ASN.1 library.
import { constants, type KeyObject, verify as verifySignatureWith } from "node:crypto";
import { MtlsdError } from "../errors.ts";
import { type DerElement, derOidText, readDerElement } from "./der-reader.ts";

// Why not @peculiar/x509 here: with its reflect-metadata and @peculiar/asn1-* dependencies it costs each
// sidecar ~13 MiB of RSS (issue 16), and the runtime reads only a handful of fields. Why not node:crypto's
// X509Certificate alone: its `subjectAltName` is a rendered string, and a URI holding ", URI:" would read as
// two (the CVE-2021-44532 class). So the reader below follows RFC 5280's ASN.1 strictly (DER, definite
// lengths, each tag where the module puts it) and refuses, never guesses: a certificate that does not read
// exactly as specified is malformed. @peculiar/x509 stays the reference in tests and for the CLI's PKI.

/** One DER element: its tag and where its header and contents are in the buffer. */
type Element = DerElement;

const TAG_BOOLEAN = 0x01;
const TAG_INTEGER = 0x02;
const TAG_BIT_STRING = 0x03;
const TAG_OCTET_STRING = 0x04;
const TAG_OID = 0x06;
const TAG_UTC_TIME = 0x17;
const TAG_GENERALIZED_TIME = 0x18;
const TAG_NULL = 0x05;
const TAG_ENUMERATED = 0x0a;
const TAG_UNIVERSAL_STRING = 0x1c;
const TAG_BMP_STRING = 0x1e;
const TAG_SEQUENCE = 0x30;
const TAG_SET = 0x31;
// The universal types X.509 uses: BOOLEAN, INTEGER, BIT STRING, OCTET STRING, NULL, OID, ENUMERATED,
// SEQUENCE, SET, the times and the string types. The rest (EOC, REAL, RELATIVE-OID, TIME…) are refused.
const UNIVERSAL_TAGS = new Set([
  1, 2, 3, 4, 5, 6, 10, 12, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 30,
]);
const TAG_VERSION = 0xa0; // [0] EXPLICIT Version
const TAG_ISSUER_UID = 0x81; // [1] IMPLICIT UniqueIdentifier (a BIT STRING)
const TAG_SUBJECT_UID = 0x82; // [2] IMPLICIT UniqueIdentifier
const TAG_EXTENSIONS = 0xa3; // [3] EXPLICIT Extensions
const TAG_CRL_EXTENSIONS = 0xa0; // [0] EXPLICIT Extensions, in a TBSCertList

const OID_SUBJECT_ALT_NAME = "2.5.29.17";
const OID_BASIC_CONSTRAINTS = "2.5.29.19";
const OID_KEY_USAGE = "2.5.29.15";
const OID_EXT_KEY_USAGE = "2.5.29.37";

/** KeyUsage bits (RFC 5280 §4.2.1.3) as flags, bit n being 1 << n; the same values as @peculiar/x509's KeyUsageFlags. */
export const KeyUsage = {
  digitalSignature: 1,
  nonRepudiation: 2,
  keyEncipherment: 4,
  dataEncipherment: 8,
  keyAgreement: 16,
  keyCertSign: 32,
  cRLSign: 64,
  encipherOnly: 128,
  decipherOnly: 256,
} as const;

/** An extension as it appears in the certificate: its criticality and the DER inside its OCTET STRING. */
export interface RawExtension {
  readonly critical: boolean;
  readonly value: Uint8Array;
}

/** What the runtime reads from a certificate; every name and DER field is a view into the certificate's bytes. */
export interface CertificateFields {
  /** Lowercase hex of the serial's INTEGER contents, a sign byte dropped, as @peculiar/x509 prints it. */
  readonly serialHex: string;
  /** The serial's value as unsigned big-endian bytes, leading zero bytes dropped (for comparing with CRL entries). */
  readonly serial: Uint8Array;
  /** DER of the issuer and subject Names. */
  readonly issuerDer: Uint8Array;
  readonly subjectDer: Uint8Array;
  readonly notBefore: Date;
  readonly notAfter: Date;
  /** Every extension by OID; RFC 5280 §4.2 allows each at most once, and a repeat is refused. */
  readonly extensions: ReadonlyMap<string, RawExtension>;
  /** URI and dNSName entries of the subjectAltName extension, in order; other GeneralName types are skipped. */
  readonly subjectAltName?: {
    readonly critical: boolean;
    readonly uris: string[];
    readonly dnsNames: string[];
  };
  readonly basicConstraints?: {
    readonly critical: boolean;
    readonly ca: boolean;
    readonly pathLength?: number;
  };
  /** `usages` is an OR of KeyUsage flags. */
  readonly keyUsage?: { readonly critical: boolean; readonly usages: number };
  /** Dotted OIDs of the extendedKeyUsage extension, in order. */
  readonly extendedKeyUsage?: { readonly critical: boolean; readonly usages: string[] };
}

/** What the runtime reads from a CRL (RFC 5280 §5.1). */
export interface CrlFields {
  /** DER of the issuer Name. */
  readonly issuerDer: Uint8Array;
  readonly thisUpdate: Date;
  readonly nextUpdate?: Date;
  /** Revoked serials as unsigned big-endian bytes, leading zero bytes dropped. */
  readonly revokedSerials: readonly Uint8Array[];
  /** The signed part (TBSCertList, header included), its signature algorithm and the signature. */
  readonly tbs: Uint8Array;
  readonly signatureAlgorithm: Uint8Array;
  readonly signature: Uint8Array;
}

function malformed(what: string): MtlsdError {
  return new MtlsdError("CERT_MALFORMED", what);
}

/** X.690 DER: one element with a low tag number and a definite, minimally encoded length inside `limit`. */
function readElement(der: Uint8Array, start: number, limit: number): Element {
  return readDerElement(der, start, limit, malformed);
}

function expect(der: Uint8Array, start: number, limit: number, tag: number, what: string): Element {
  const element = readElement(der, start, limit);
  if (element.tag !== tag) {
    throw malformed(
      `${what} at byte ${start} has tag 0x${element.tag.toString(16).padStart(2, "0")}, expected 0x${tag.toString(16).padStart(2, "0")}`,
    );
  }
  return element;
}

/** The elements inside a constructed element, which must fill it exactly. */
function children(der: Uint8Array, parent: Element): Element[] {
  const items: Element[] = [];
  for (let pos = parent.contentStart; pos < parent.end; ) {
    const item = readElement(der, pos, parent.end);
    items.push(item);
    pos = item.end;
  }
  return items;
}

function contents(der: Uint8Array, element: Element): Uint8Array {
  return der.subarray(element.contentStart, element.end);
}

/** X.690 §8.19: dotted-decimal text of an OBJECT IDENTIFIER, each arc in its shortest form. */
function oidText(der: Uint8Array, element: Element): string {
  if (element.tag !== TAG_OID) throw malformed(`expected an OBJECT IDENTIFIER at byte ${element.start}`);
  return derOidText(der, element.contentStart, element.end, malformed);
}

/** DER BOOLEAN: one byte, 0x00 or 0xFF. */
function booleanValue(der: Uint8Array, element: Element, what: string): boolean {
  if (element.tag !== TAG_BOOLEAN) throw malformed(`${what} is not a BOOLEAN`);
  if (element.end - element.contentStart !== 1) throw malformed(`${what} is a BOOLEAN that is not one byte`);
  const b = der[element.contentStart]!;
  if (b !== 0x00 && b !== 0xff)
    throw malformed(`${what} is a BOOLEAN that is neither 0x00 nor 0xFF (not DER)`);
  return b === 0xff;
}

/** INTEGER contents, minimally encoded (X.690 §8.3.2). */
function integerContents(der: Uint8Array, element: Element, what: string): Uint8Array {
  if (element.tag !== TAG_INTEGER) throw malformed(`${what} is not an INTEGER`);
  const bytes = contents(der, element);
  if (bytes.length === 0) throw malformed(`${what} is an empty INTEGER`);
  if (
    bytes.length > 1 &&
    ((bytes[0] === 0 && bytes[1]! < 0x80) || (bytes[0] === 0xff && bytes[1]! >= 0x80))
  ) {
    throw malformed(`${what} is an INTEGER with a redundant leading byte (not DER)`);
  }
  return bytes;
}

function unsignedMagnitude(bytes: Uint8Array): Uint8Array {
  let first = 0;
  while (first < bytes.length - 1 && bytes[first] === 0) first++;
  return bytes.subarray(first);
}

function hex(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("hex");
}

const DIGITS = /^[0-9]+$/;

/** RFC 5280 §4.1.2.5: UTCTime YYMMDDHHMMSSZ (years 1950-2049) or GeneralizedTime YYYYMMDDHHMMSSZ. */
function timeValue(der: Uint8Array, element: Element, what: string): Date {
  const text = Buffer.from(contents(der, element)).toString("latin1");
  let year: number;
  let rest: string;
  if (element.tag === TAG_UTC_TIME && text.length === 13) {
    const yy = Number(text.slice(0, 2));
    year = yy < 50 ? 2000 + yy : 1900 + yy;
    rest = text.slice(2);
  } else if (element.tag === TAG_GENERALIZED_TIME && text.length === 15) {
    year = Number(text.slice(0, 4));
    rest = text.slice(4);
  } else {
    throw malformed(`${what} is not a UTCTime or GeneralizedTime of the form RFC 5280 §4.1.2.5 requires`);
  }
  const digits = text.slice(0, -1);
  if (!DIGITS.test(digits) || !rest.endsWith("Z")) throw malformed(`${what} is not a time in UTC digits`);
  const [month, day, hour, minute, second] = [0, 2, 4, 6, 8].map((at) => Number(rest.slice(at, at + 2))) as [
    number,
    number,
    number,
    number,
    number,
  ];
  const ms = Date.UTC(year, month - 1, day, hour, minute, second);
  const date = new Date(ms);
  // Date.UTC rolls 31 February into March; a time that does not read back is not a time.
  if (
    month < 1 ||
    date.getUTCMonth() !== month - 1 ||
    date.getUTCDate() !== day ||
    hour > 23 ||
    minute > 59 ||
    second > 59
  ) {
    throw malformed(`${what} is not a valid date and time`);
  }
  if (year < 100) date.setUTCFullYear(year);
  return date;
}

function isTime(element: Element): boolean {
  return element.tag === TAG_UTC_TIME || element.tag === TAG_GENERALIZED_TIME;
}

/** Extensions ::= SEQUENCE SIZE (1..MAX) OF Extension, each OID at most once (RFC 5280 §4.2). */
function readExtensions(der: Uint8Array, wrapper: Element): Map<string, RawExtension> {
  const sequence = expect(der, wrapper.contentStart, wrapper.end, TAG_SEQUENCE, "Extensions");
  if (sequence.end !== wrapper.end) throw malformed("bytes follow the Extensions");
  // SIZE (1..MAX), but @peculiar/x509's generator writes an empty one for a certificate without extensions
  // and OpenSSL reads it as none; so does this.
  const items = children(der, sequence);
  const extensions = new Map<string, RawExtension>();
  for (const item of items) {
    if (item.tag !== TAG_SEQUENCE) throw malformed(`an Extension at byte ${item.start} is not a SEQUENCE`);
    const fields = children(der, item);
    const oid = oidText(der, fields[0] ?? item);
    let next = 1;
    let critical = false;
    if (fields[next]?.tag === TAG_BOOLEAN)
      critical = booleanValue(der, fields[next++]!, `extension ${oid} critical`);
    const value = fields[next++];
    if (!value || value.tag !== TAG_OCTET_STRING)
      throw malformed(`extension ${oid} has no OCTET STRING value`);
    if (next !== fields.length) throw malformed(`extension ${oid} has fields after its value`);
    if (extensions.has(oid)) throw malformed(`extension ${oid} appears more than once (RFC 5280 §4.2)`);
    extensions.set(oid, { critical, value: contents(der, value) });
  }
  return extensions;
}

/** The single element an extension's OCTET STRING holds, which must fill it. */
function extensionValue(ext: RawExtension, tag: number, what: string): { der: Uint8Array; element: Element } {
  const der = ext.value;
  const element = expect(der, 0, der.length, tag, what);
  if (element.end !== der.length) throw malformed(`bytes follow the ${what}`);
  checkTree(der, element);
  return { der, element };
}

// GeneralName (RFC 5280 §4.2.1.6) context tags with IMPLICIT tagging: the primitive ones hold strings,
// OCTET STRINGs or OIDs; otherName, x400Address, directoryName (a CHOICE, so EXPLICIT) and ediPartyName
// are constructed.
const GENERAL_NAME_TAGS = new Set([0xa0, 0x81, 0x82, 0xa3, 0xa4, 0xa5, 0x86, 0x87, 0x88]);
const TAG_OTHER_NAME = 0xa0;
const TAG_DNS_NAME = 0x82;
const TAG_X400_ADDRESS = 0xa3;
const TAG_DIRECTORY_NAME = 0xa4;
const TAG_EDI_PARTY_NAME = 0xa5;
// DirectoryString: TeletexString, PrintableString, UniversalString, UTF8String, BMPString.
const DIRECTORY_STRING_TAGS = new Set([0x14, 0x13, 0x1c, 0x0c, 0x1e]);
const TAG_IP_ADDRESS = 0x87;
const TAG_REGISTERED_ID = 0x88;
const TAG_URI = 0x86;

function readSubjectAltName(ext: RawExtension): { critical: boolean; uris: string[]; dnsNames: string[] } {
  const { der, element } = extensionValue(ext, TAG_SEQUENCE, "subjectAltName GeneralNames");
  const names = children(der, element);
  if (names.length === 0) throw malformed("empty subjectAltName (SIZE (1..MAX))");
  const uris: string[] = [];
  const dnsNames: string[] = [];
  for (const name of names) {
    if (!GENERAL_NAME_TAGS.has(name.tag)) {
      throw malformed(`subjectAltName entry with tag 0x${name.tag.toString(16)} is not a GeneralName`);
    }
    if (name.tag === TAG_X400_ADDRESS) {
      // ORAddress is a structure of its own that no TLS peer uses; refused rather than half-read.
      throw malformed("subjectAltName holds an x400Address, which mtlsd does not read");
    }
    if (name.tag === TAG_OTHER_NAME) {
      // OtherName ::= SEQUENCE { type-id OID, value [0] EXPLICIT ANY }, its SEQUENCE tag replaced by [0].
      const [typeId, value, ...rest] = children(der, name);
      if (!typeId || value?.tag !== 0xa0 || rest.length > 0)
        throw malformed("subjectAltName otherName is malformed");
      oidText(der, typeId);
    } else if (name.tag === TAG_DIRECTORY_NAME) {
      const [inner, ...rest] = children(der, name);
      if (rest.length > 0) throw malformed("subjectAltName directoryName holds more than a Name");
      checkName(der, inner, "subjectAltName directoryName");
    } else if (name.tag === TAG_EDI_PARTY_NAME) {
      // EDIPartyName ::= SEQUENCE { nameAssigner [0] DirectoryString OPTIONAL, partyName [1] DirectoryString }
      const parts = children(der, name);
      const tags = parts.map((part) => part.tag).join(",");
      if (tags !== "160,161" && tags !== "161") throw malformed("subjectAltName ediPartyName is malformed");
      for (const part of parts) {
        const [text, ...rest] = children(der, part);
        if (!text || !DIRECTORY_STRING_TAGS.has(text.tag) || rest.length > 0) {
          throw malformed("subjectAltName ediPartyName holds something other than a DirectoryString");
        }
      }
    } else if (name.tag === TAG_REGISTERED_ID) {
      oidText(der, { ...name, tag: TAG_OID });
    } else if (
      name.tag === TAG_IP_ADDRESS &&
      name.end - name.contentStart !== 4 &&
      name.end - name.contentStart !== 16
    ) {
      throw malformed("subjectAltName iPAddress is neither 4 nor 16 bytes");
    }
    if (name.tag !== TAG_URI && name.tag !== TAG_DNS_NAME) continue;
    const bytes = contents(der, name);
    const text = Buffer.from(bytes).toString("latin1");
    const kind = name.tag === TAG_URI ? "URI" : "dNSName";
    if (bytes.some((b) => b > 0x7f))
      throw malformed(`subjectAltName ${kind} is not an IA5String (a byte above 0x7F)`);
    (name.tag === TAG_URI ? uris : dnsNames).push(text);
  }
  return { critical: ext.critical, uris, dnsNames };
}

function readBasicConstraints(ext: RawExtension): { critical: boolean; ca: boolean; pathLength?: number } {
  const { der, element } = extensionValue(ext, TAG_SEQUENCE, "basicConstraints");
  const fields = children(der, element);
  let next = 0;
  let ca = false;
  if (fields[next]?.tag === TAG_BOOLEAN) ca = booleanValue(der, fields[next++]!, "basicConstraints cA");
  let pathLength: number | undefined;
  if (fields[next]) {
    const bytes = integerContents(der, fields[next++]!, "basicConstraints pathLenConstraint");
    if (bytes[0]! & 0x80) throw malformed("basicConstraints pathLenConstraint is negative");
    if (bytes.length > 4) throw malformed("basicConstraints pathLenConstraint is out of range");
    pathLength = bytes.reduce((value, b) => value * 256 + b, 0);
  }
  if (next !== fields.length) throw malformed("basicConstraints has fields after pathLenConstraint");
  return { critical: ext.critical, ca, ...(pathLength === undefined ? {} : { pathLength }) };
}

/** KeyUsage BIT STRING: bit n (counting from the first byte's top bit) is flag 1 << n. */
function readKeyUsage(ext: RawExtension): { critical: boolean; usages: number } {
  const { der, element } = extensionValue(ext, TAG_BIT_STRING, "keyUsage");
  const bytes = contents(der, element);
  if (bytes.length === 0) throw malformed("keyUsage BIT STRING has no unused-bits byte");
  const unused = bytes[0]!;
  if (unused > 7) throw malformed("keyUsage BIT STRING says more than 7 unused bits");
  if (bytes.length === 1 && unused !== 0) throw malformed("empty keyUsage BIT STRING with unused bits");
  // Nine bits are defined; more than two bytes of them is not a key usage.
  if (bytes.length > 3) throw malformed("keyUsage BIT STRING is longer than the bits RFC 5280 defines");
  if (bytes.length > 1 && (bytes[bytes.length - 1]! & ((1 << unused) - 1)) !== 0) {
    throw malformed("keyUsage BIT STRING has unused bits set (not DER)");
  }
  let usages = 0;
  for (let i = 1; i < bytes.length; i++) {
    for (let bit = 0; bit < 8; bit++) {
      if (bytes[i]! & (0x80 >> bit)) usages |= 1 << ((i - 1) * 8 + bit);
    }
  }
  return { critical: ext.critical, usages };
}

function readExtendedKeyUsage(ext: RawExtension): { critical: boolean; usages: string[] } {
  const { der, element } = extensionValue(ext, TAG_SEQUENCE, "extendedKeyUsage");
  const usages = children(der, element).map((item) => oidText(der, item));
  if (usages.length === 0) throw malformed("empty extendedKeyUsage (SIZE (1..MAX))");
  return { critical: ext.critical, usages };
}

/**
 * Every element of a tree is DER, however deep, including inside parameters and extensions we do not read:
 * constructed ones are walked, and the primitives with a fixed shape (BOOLEAN, INTEGER, BIT STRING, NULL,
 * OBJECT IDENTIFIER) are checked. A certificate that is DER only where we look is not a certificate.
 */
function checkTree(der: Uint8Array, element: Element, depth = 0): void {
  if (depth > 32) throw malformed("elements nested more than 32 deep");
  const { tag, start } = element;
  if ((tag & 0xc0) === 0) {
    const number = tag & 0x1f;
    if (!UNIVERSAL_TAGS.has(number))
      throw malformed(`universal tag ${number} at byte ${start} has no place in X.509`);
    // DER: SEQUENCE and SET are constructed, everything else primitive (X.690 §10.2).
    const constructed = number === 16 || number === 17;
    if (((tag & 0x20) !== 0) !== constructed)
      throw malformed(`tag 0x${tag.toString(16)} at byte ${start} is not DER`);
  }
  if (tag & 0x20) {
    for (const child of children(der, element)) checkTree(der, child, depth + 1);
    return;
  }
  const length = element.end - element.contentStart;
  switch (tag) {
    case TAG_BOOLEAN:
      booleanValue(der, element, `the BOOLEAN at byte ${start}`);
      break;
    case TAG_INTEGER:
    case TAG_ENUMERATED:
      integerContents(der, { ...element, tag: TAG_INTEGER }, `the INTEGER at byte ${start}`);
      break;
    case TAG_BIT_STRING:
      checkBitString(der, element, `the BIT STRING at byte ${start}`);
      break;
    case TAG_NULL:
      if (length !== 0) throw malformed(`the NULL at byte ${start} has contents`);
      break;
    case TAG_OID:
      oidText(der, element);
      break;
    case TAG_UTC_TIME:
    case TAG_GENERALIZED_TIME:
      timeValue(der, element, `the time at byte ${start}`);
      break;
    case TAG_BMP_STRING:
      if (length % 2 !== 0) throw malformed(`the BMPString at byte ${start} has an odd length`);
      break;
    case TAG_UNIVERSAL_STRING:
      if (length % 4 !== 0) throw malformed(`the UniversalString at byte ${start} is not whole characters`);
      break;
  }
}

/** A BIT STRING's leading byte counts its unused bits: 0 to 7, and 0 when no bits follow. */
function checkBitString(der: Uint8Array, element: Element | undefined, what: string): void {
  if (element?.tag !== TAG_BIT_STRING) throw malformed(`${what} must be a BIT STRING`);
  const length = element.end - element.contentStart;
  const unused = der[element.contentStart];
  if (unused === undefined || unused > 7 || (length === 1 && unused !== 0)) {
    throw malformed(`${what} is a BIT STRING with a bad unused-bits count`);
  }
}

/** AlgorithmIdentifier ::= SEQUENCE { algorithm OID, parameters ANY OPTIONAL }. */
function checkAlgorithm(der: Uint8Array, element: Element | undefined, what: string): void {
  if (element?.tag !== TAG_SEQUENCE) throw malformed(`${what} must be an AlgorithmIdentifier (a SEQUENCE)`);
  const [oid, params, ...rest] = children(der, element);
  if (!oid || rest.length > 0) throw malformed(`${what} is not an algorithm OID and optional parameters`);
  oidText(der, oid);
  if (params) readElement(der, params.start, params.end);
}

/** Name ::= SEQUENCE OF SET OF SEQUENCE { type OID, value ANY }: the shape only; the values are text for others to read. */
function checkName(der: Uint8Array, element: Element | undefined, what: string): Element {
  if (element?.tag !== TAG_SEQUENCE) throw malformed(`${what} must be a Name (a SEQUENCE)`);
  for (const rdn of children(der, element)) {
    if (rdn.tag !== TAG_SET) throw malformed(`${what} holds a RelativeDistinguishedName that is not a SET`);
    const attributes = children(der, rdn);
    if (attributes.length === 0) throw malformed(`${what} holds an empty RelativeDistinguishedName`);
    for (const atv of attributes) {
      if (atv.tag !== TAG_SEQUENCE)
        throw malformed(`${what} holds an AttributeTypeAndValue that is not a SEQUENCE`);
      const [type, value, ...rest] = children(der, atv);
      if (!type || !value || rest.length > 0)
        throw malformed(`${what} holds an attribute that is not a type and a value`);
      oidText(der, type);
    }
  }
  return element;
}

function asBytes(der: Uint8Array | ArrayBuffer): Uint8Array {
  return der instanceof Uint8Array ? der : new Uint8Array(der);
}

/**
 * Reads a DER certificate (RFC 5280 §4.1) and the extensions the X509-SVID rules look at. Throws MtlsdError
 * CERT_MALFORMED, saying what is wrong, when it is not exactly a DER certificate.
 */
export function readCertificate(input: Uint8Array | ArrayBuffer): CertificateFields {
  const der = asBytes(input);
  const certificate = expect(der, 0, der.length, TAG_SEQUENCE, "Certificate");
  if (certificate.end !== der.length) throw malformed("bytes follow the Certificate");
  const [tbs, signatureAlgorithm, signature, ...extra] = children(der, certificate);
  if (!tbs || tbs.tag !== TAG_SEQUENCE) throw malformed("a TBSCertificate must be a SEQUENCE");
  checkAlgorithm(der, signatureAlgorithm, "a Certificate's signatureAlgorithm");
  checkBitString(der, signature, "a Certificate's signatureValue");
  if (extra.length > 0) throw malformed("a Certificate has fields after its signature");
  checkTree(der, certificate);
  const fields = children(der, tbs);
  let next = 0;
  let version = 0;
  if (fields[next]?.tag === TAG_VERSION) {
    const wrapper = fields[next++]!;
    const value = expect(der, wrapper.contentStart, wrapper.end, TAG_INTEGER, "version");
    if (value.end !== wrapper.end) throw malformed("bytes follow the version");
    const bytes = integerContents(der, value, "version");
    if (bytes.length !== 1 || bytes[0]! > 2) throw malformed("version is not v1, v2 or v3");
    version = bytes[0]!;
  }
  const serialField = fields[next++];
  if (!serialField) throw malformed("a TBSCertificate has no serialNumber");
  const serialBytes = integerContents(der, serialField, "serialNumber");
  checkAlgorithm(der, fields[next++], "a TBSCertificate's signature");
  const issuer = checkName(der, fields[next++], "a certificate's issuer");
  const validity = fields[next++];
  if (validity?.tag !== TAG_SEQUENCE) throw malformed("a certificate's validity must be a SEQUENCE");
  const times = children(der, validity);
  if (times.length !== 2 || !times.every(isTime))
    throw malformed("validity must hold notBefore and notAfter");
  const subject = checkName(der, fields[next++], "a certificate's subject");
  const spki = fields[next++];
  if (spki?.tag !== TAG_SEQUENCE) throw malformed("a certificate's subjectPublicKeyInfo must be a SEQUENCE");
  const [keyAlgorithm, key, ...keyRest] = children(der, spki);
  checkAlgorithm(der, keyAlgorithm, "a subjectPublicKeyInfo's algorithm");
  checkBitString(der, key, "a subjectPublicKeyInfo's key");
  if (keyRest.length > 0) throw malformed("a subjectPublicKeyInfo has fields after its key");
  if (fields[next]?.tag === TAG_ISSUER_UID) next++;
  if (fields[next]?.tag === TAG_SUBJECT_UID) next++;
  let extensions = new Map<string, RawExtension>();
  if (fields[next]?.tag === TAG_EXTENSIONS) {
    if (version !== 2) throw malformed("a certificate with extensions must be v3 (RFC 5280 §4.1.2.1)");
    extensions = readExtensions(der, fields[next++]!);
  }
  if (next !== fields.length) throw malformed("a TBSCertificate has unexpected fields after its known ones");
  // A serial's sign byte is dropped the way @peculiar/x509 (and so `mtlsd certs`) prints serials.
  const printed =
    serialBytes.length > 1 && serialBytes[0] === 0 && serialBytes[1]! > 0x7f
      ? serialBytes.subarray(1)
      : serialBytes;
  const san = extensions.get(OID_SUBJECT_ALT_NAME);
  const bc = extensions.get(OID_BASIC_CONSTRAINTS);
  const ku = extensions.get(OID_KEY_USAGE);
  const eku = extensions.get(OID_EXT_KEY_USAGE);
  return {
    serialHex: hex(printed),
    serial: unsignedMagnitude(serialBytes),
    issuerDer: der.subarray(issuer.start, issuer.end),
    subjectDer: der.subarray(subject.start, subject.end),
    notBefore: timeValue(der, times[0]!, "notBefore"),
    notAfter: timeValue(der, times[1]!, "notAfter"),
    extensions,
    ...(san ? { subjectAltName: readSubjectAltName(san) } : {}),
    ...(bc ? { basicConstraints: readBasicConstraints(bc) } : {}),
    ...(ku ? { keyUsage: readKeyUsage(ku) } : {}),
    ...(eku ? { extendedKeyUsage: readExtendedKeyUsage(eku) } : {}),
  };
}

/**
 * Reads a DER CRL (RFC 5280 §5.1): issuer, update times, revoked serials and what its signature covers.
 * Throws MtlsdError CERT_MALFORMED when it is not exactly a DER CertificateList.
 */
export function readCrl(input: Uint8Array | ArrayBuffer): CrlFields {
  const der = asBytes(input);
  const list = expect(der, 0, der.length, TAG_SEQUENCE, "CertificateList");
  if (list.end !== der.length) throw malformed("bytes follow the CertificateList");
  const [tbs, signatureAlgorithm, signature, ...extra] = children(der, list);
  if (!tbs || tbs.tag !== TAG_SEQUENCE) throw malformed("a TBSCertList must be a SEQUENCE");
  if (signatureAlgorithm?.tag !== TAG_SEQUENCE)
    throw malformed("a CRL's signatureAlgorithm must be a SEQUENCE");
  if (signature?.tag !== TAG_BIT_STRING) throw malformed("a CRL's signatureValue must be a BIT STRING");
  if (extra.length > 0) throw malformed("a CRL has fields after its signature");
  checkTree(der, list);
  const signatureBytes = contents(der, signature);
  if (signatureBytes.length === 0 || signatureBytes[0] !== 0)
    throw malformed("a CRL's signature is not whole bytes");
  const fields = children(der, tbs);
  let next = 0;
  let version = 0;
  if (fields[next]?.tag === TAG_INTEGER) {
    const bytes = integerContents(der, fields[next++]!, "CRL version");
    if (bytes.length !== 1 || bytes[0] !== 1) throw malformed("CRL version is not v2");
    version = 1;
  }
  const innerAlgorithm = fields[next++];
  if (innerAlgorithm?.tag !== TAG_SEQUENCE)
    throw malformed("a TBSCertList's signature must be an AlgorithmIdentifier");
  // RFC 5280 §5.1.1.2: the algorithm outside the signed part must be the one inside it.
  if (
    !Buffer.from(der.subarray(innerAlgorithm.start, innerAlgorithm.end)).equals(
      der.subarray(signatureAlgorithm.start, signatureAlgorithm.end),
    )
  ) {
    throw malformed("a CRL's signatureAlgorithm differs from the one in its TBSCertList");
  }
  const issuer = checkName(der, fields[next++], "a CRL's issuer");
  const thisUpdate = fields[next++];
  if (!thisUpdate || !isTime(thisUpdate)) throw malformed("a CRL has no thisUpdate time");
  let nextUpdate: Date | undefined;
  if (fields[next] && isTime(fields[next]!)) nextUpdate = timeValue(der, fields[next++]!, "nextUpdate");
  const revokedSerials: Uint8Array[] = [];
  if (fields[next]?.tag === TAG_SEQUENCE) {
    const entries = children(der, fields[next++]!);
    for (const entry of entries) {
      if (entry.tag !== TAG_SEQUENCE) throw malformed("a revoked certificate entry is not a SEQUENCE");
      const [serial, date, entryExtensions, ...rest] = children(der, entry);
      if (!serial || !date || !isTime(date) || rest.length > 0) {
        throw malformed("a revoked certificate entry is not serial, date and optional extensions");
      }
      timeValue(der, date, "revocationDate");
      if (entryExtensions) {
        if (version !== 1) throw malformed("a CRL entry with extensions must be in a v2 CRL");
        readExtensions(der, {
          tag: TAG_SEQUENCE,
          start: entryExtensions.start,
          contentStart: entryExtensions.start,
          end: entryExtensions.end,
        });
      }
      revokedSerials.push(unsignedMagnitude(integerContents(der, serial, "revoked serial")));
    }
  }
  if (fields[next]?.tag === TAG_CRL_EXTENSIONS) {
    if (version !== 1) throw malformed("a CRL with extensions must be v2 (RFC 5280 §5.1.2.1)");
    readExtensions(der, fields[next++]!);
  }
  if (next !== fields.length) throw malformed("a TBSCertList has unexpected fields after its known ones");
  return {
    issuerDer: der.subarray(issuer.start, issuer.end),
    thisUpdate: timeValue(der, thisUpdate, "thisUpdate"),
    ...(nextUpdate ? { nextUpdate } : {}),
    revokedSerials,
    tbs: der.subarray(tbs.start, tbs.end),
    signatureAlgorithm: der.subarray(signatureAlgorithm.start, signatureAlgorithm.end),
    signature: signatureBytes.subarray(1),
  };
}

// Signature algorithms (RFC 4055, RFC 5758, RFC 8410) by OID: the digest node:crypto's verify takes.
const HASH_OF: ReadonlyMap<string, string | null> = new Map([
  ["1.2.840.113549.1.1.5", "sha1"],
  ["1.2.840.113549.1.1.14", "sha224"],
  ["1.2.840.113549.1.1.11", "sha256"],
  ["1.2.840.113549.1.1.12", "sha384"],
  ["1.2.840.113549.1.1.13", "sha512"],
  ["1.2.840.10045.4.1", "sha1"],
  ["1.2.840.10045.4.3.1", "sha224"],
  ["1.2.840.10045.4.3.2", "sha256"],
  ["1.2.840.10045.4.3.3", "sha384"],
  ["1.2.840.10045.4.3.4", "sha512"],
  ["1.3.101.112", null], // Ed25519
  ["1.3.101.113", null], // Ed448
]);
const OID_RSA_PSS = "1.2.840.113549.1.1.10";
const HASH_NAMES: ReadonlyMap<string, string> = new Map([
  ["1.3.14.3.2.26", "sha1"],
  ["2.16.840.1.101.3.4.2.4", "sha224"],
  ["2.16.840.1.101.3.4.2.1", "sha256"],
  ["2.16.840.1.101.3.4.2.2", "sha384"],
  ["2.16.840.1.101.3.4.2.3", "sha512"],
]);

/** RSASSA-PSS-params (RFC 4055 §3.1): the hash (MGF1 must use the same) and the salt length. */
function pssParameters(der: Uint8Array, params: Element | undefined): { hash: string; saltLength: number } {
  let hash = "sha1";
  let saltLength = 20;
  if (!params) return { hash, saltLength };
  if (params.tag !== TAG_SEQUENCE) throw malformed("RSASSA-PSS parameters are not a SEQUENCE");
  for (const field of children(der, params)) {
    const inner = readElement(der, field.contentStart, field.end);
    if (field.tag === 0xa0) {
      hash = HASH_NAMES.get(oidText(der, readElement(der, inner.contentStart, inner.end))) ?? "";
    } else if (field.tag === 0xa1) {
      const [mgf, mgfHash] = children(der, inner);
      if (!mgf || oidText(der, mgf) !== "1.2.840.113549.1.1.8" || mgfHash?.tag !== TAG_SEQUENCE) {
        throw malformed("RSASSA-PSS mask generation is not MGF1");
      }
      const mgfHashName = HASH_NAMES.get(oidText(der, readElement(der, mgfHash.contentStart, mgfHash.end)));
      if (mgfHashName !== hash) throw malformed("RSASSA-PSS uses a different hash for MGF1");
    } else if (field.tag === 0xa2) {
      const bytes = integerContents(der, inner, "RSASSA-PSS saltLength");
      saltLength = bytes.reduce((value, b) => value * 256 + b, 0);
    } else if (field.tag !== 0xa3) {
      throw malformed("RSASSA-PSS parameters hold an unknown field");
    }
  }
  if (hash === "") throw malformed("RSASSA-PSS uses an unknown hash");
  return { hash, saltLength };
}

/**
 * Whether `signature` over `signed` verifies with `publicKey` under the DER AlgorithmIdentifier `algorithm`
 * (a certificate's or CRL's signatureAlgorithm). An algorithm we do not know does not verify.
 */
export function verifySignature(
  signed: Uint8Array,
  algorithm: Uint8Array,
  signature: Uint8Array,
  publicKey: KeyObject,
): boolean {
  try {
    const identifier = expect(algorithm, 0, algorithm.length, TAG_SEQUENCE, "AlgorithmIdentifier");
    const [oidElement, params] = children(algorithm, identifier);
    const oid = oidText(algorithm, oidElement ?? identifier);
    if (oid === OID_RSA_PSS) {
      const { hash, saltLength } = pssParameters(algorithm, params);
      return verifySignatureWith(
        hash,
        signed,
        { key: publicKey, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength },
        signature,
      );
    }
    const hash = HASH_OF.get(oid);
    if (hash === undefined) return false;
    return verifySignatureWith(hash, signed, publicKey, signature);
  } catch {
    return false;
  }
}

/** Unsigned big-endian serials compare equal (both with leading zero bytes dropped, as readers here return them). */
export function sameSerial(a: Uint8Array, b: Uint8Array): boolean {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(b);
}

// Short names @peculiar/x509 gives attribute types in its one-line Name text (its `names` table).
const TEXT_NAMES: ReadonlyMap<string, string> = new Map([
  ["2.5.4.3", "CN"],
  ["2.5.4.7", "L"],
  ["2.5.4.8", "ST"],
  ["2.5.4.10", "O"],
  ["2.5.4.11", "OU"],
  ["2.5.4.6", "C"],
  ["0.9.2342.19200300.100.1.25", "DC"],
  ["1.2.840.113549.1.9.1", "E"],
  ["2.5.4.42", "G"],
  ["2.5.4.43", "I"],
  ["2.5.4.4", "SN"],
  ["2.5.4.12", "T"],
]);

function textValue(der: Uint8Array, value: Element): string | undefined {
  const bytes = contents(der, value);
  switch (value.tag) {
    case TAG_NULL: // NULL, which @peculiar/x509 reads as no value at all
      return "";
    case 0x0c: // UTF8String
      return new TextDecoder().decode(bytes);
    case 0x13: // PrintableString
    case 0x14: // TeletexString
    case 0x16: // IA5String
      return Buffer.from(bytes).toString("latin1");
    case 0x1e: {
      // BMPString: UTF-16BE
      if (bytes.length % 2 !== 0) throw malformed("a BMPString of an odd number of bytes");
      let text = "";
      for (let i = 0; i < bytes.length; i += 2) text += String.fromCharCode((bytes[i]! << 8) | bytes[i + 1]!);
      return text;
    }
    case 0x1c: {
      // UniversalString: UTF-32BE, each code unit cut to 16 bits as @peculiar/x509 reads it.
      if (bytes.length % 4 !== 0) throw malformed("a UniversalString whose length is not a multiple of 4");
      let text = "";
      for (let i = 0; i < bytes.length; i += 4)
        text += String.fromCharCode((bytes[i + 2]! << 8) | bytes[i + 3]!);
      return text;
    }
    default:
      return undefined;
  }
}

function escapeText(value: string): string {
  // As @peculiar/x509's Name escapes: RFC 4514 specials, a leading space or #, a trailing space, and only
  // the first CR, LF or TAB as \XX.
  return value
    .replace(/([,+"\\<>;])/g, "\\$1")
    .replace(/^([ #])/, "\\$1")
    .replace(/([ ]$)/, "\\$1")
    .replace(/([\r\n\t])/, (char) => `\\${char.charCodeAt(0).toString(16).padStart(2, "0").toUpperCase()}`);
}

/**
 * A Name as one line in DER order, `CN=orders CA, O=acme`: the text @peculiar/x509 gives `Name.toString()`,
 * which CRL messages and summaries have always used (and `mtlsd certs` prints). XFCC uses formatSubjectRfc2253.
 * Throws MtlsdError CERT_MALFORMED when the DER is not a Name.
 */
export function nameText(input: Uint8Array): string {
  const der = input;
  const name = expect(der, 0, der.length, TAG_SEQUENCE, "Name");
  if (name.end !== der.length) throw malformed("bytes follow the Name");
  const rdns: string[] = [];
  for (const rdn of children(der, name)) {
    if (rdn.tag !== TAG_SET) throw malformed("a RelativeDistinguishedName must be a SET");
    const attributes: string[] = [];
    for (const atv of children(der, rdn)) {
      if (atv.tag !== TAG_SEQUENCE) throw malformed("an AttributeTypeAndValue must be a SEQUENCE");
      const [type, value, ...rest] = children(der, atv);
      if (!type || !value || rest.length > 0)
        throw malformed("an AttributeTypeAndValue is not a type and a value");
      const oid = oidText(der, type);
      const text = textValue(der, value);
      const shown = text === undefined ? `#${hex(der.subarray(value.start, value.end))}` : escapeText(text);
      attributes.push(`${TEXT_NAMES.get(oid) ?? oid}=${shown}`);
    }
    rdns.push(attributes.join("+"));
  }
  return rdns.join(", ");
}
