// Formats an X.509 Name as Envoy's XFCC Subject: OpenSSL's X509_NAME_print_ex(..., XN_FLAG_RFC2253).
import { MtlsdError } from "../errors.ts";
import { type DerElement, derOidText, readDerElement } from "./der-reader.ts";

// XN_FLAG_RFC2253 = ASN1_STRFLGS_RFC2253 | XN_FLAG_SEP_COMMA_PLUS | XN_FLAG_DN_REV | XN_FLAG_FN_SN |
// XN_FLAG_DUMP_UNKNOWN_FIELDS (openssl/x509.h). What each flag means here:
// - DN_REV: entries are printed last to first, so `O=acme, CN=frontend` in DER prints `CN=frontend,O=acme`;
//   OpenSSL reverses the flat entry list, so the values inside a multi-valued RDN come out reversed too.
// - SEP_COMMA_PLUS: `,` between RDNs and `+` inside a multi-valued RDN, no spaces.
// - FN_SN: OpenSSL's short name for the attribute type; a type OpenSSL has no name for prints as a dotted
//   OID, and DUMP_UNKNOWN_FIELDS then prints its value as `#` + hex of its DER.
// - ASN1_STRFLGS_RFC2253: escape per RFC 2253 §2.4 (`,+"\<>;` always, `#` first, space first or last),
//   control bytes and every byte above 0x7F as `\XX` (ESC_CTRL, ESC_MSB) after converting the string
//   to UTF-8 (UTF8_CONVERT), and dump values of non-string types as `#` + hex DER (DUMP_UNKNOWN, DUMP_DER).
// The reference is OpenSSL 3 (`openssl x509 -nameopt RFC2253`, and the library Node's TLS uses). Envoy itself
// links BoringSSL, whose printer differs in two corners: it escapes a value that is exactly "#" (`\#`, as
// RFC 4514 §2.4 asks; OpenSSL leaves it bare), and it has no names for uid (0.9.2342.19200300.100.1.44), organizationIdentifier,
// c3, n3, dnsName (2.5.4.97-100), the EV jurisdiction* types or the Russian INN/OGRN/SNILS/OGRNIP, which it
// therefore prints as dotted OIDs with hex dumps.

// Short names OpenSSL 3 gives the attribute types that occur in names (from obj_mac.h, which objects.txt
// generates; an object with no short name uses its long name). Arcs: X.520 attribute types (2.5.4),
// PKCS #9 (1.2.840.113549.1.9), RFC 4519/COSINE (0.9.2342.19200300.100.1), EV jurisdiction
// (1.3.6.1.4.1.311.60.2.1) and the Russian registration numbers OpenSSL also knows.
const SHORT_NAMES: ReadonlyMap<string, string> = new Map([
  ["0.9.2342.19200300.100.1.1", "UID"],
  ["0.9.2342.19200300.100.1.2", "textEncodedORAddress"],
  ["0.9.2342.19200300.100.1.3", "mail"],
  ["0.9.2342.19200300.100.1.4", "info"],
  ["0.9.2342.19200300.100.1.5", "favouriteDrink"],
  ["0.9.2342.19200300.100.1.6", "roomNumber"],
  ["0.9.2342.19200300.100.1.7", "photo"],
  ["0.9.2342.19200300.100.1.8", "userClass"],
  ["0.9.2342.19200300.100.1.9", "host"],
  ["0.9.2342.19200300.100.1.10", "manager"],
  ["0.9.2342.19200300.100.1.11", "documentIdentifier"],
  ["0.9.2342.19200300.100.1.12", "documentTitle"],
  ["0.9.2342.19200300.100.1.13", "documentVersion"],
  ["0.9.2342.19200300.100.1.14", "documentAuthor"],
  ["0.9.2342.19200300.100.1.15", "documentLocation"],
  ["0.9.2342.19200300.100.1.20", "homeTelephoneNumber"],
  ["0.9.2342.19200300.100.1.21", "secretary"],
  ["0.9.2342.19200300.100.1.22", "otherMailbox"],
  ["0.9.2342.19200300.100.1.23", "lastModifiedTime"],
  ["0.9.2342.19200300.100.1.24", "lastModifiedBy"],
  ["0.9.2342.19200300.100.1.25", "DC"],
  ["0.9.2342.19200300.100.1.26", "aRecord"],
  ["0.9.2342.19200300.100.1.27", "pilotAttributeType27"],
  ["0.9.2342.19200300.100.1.28", "mXRecord"],
  ["0.9.2342.19200300.100.1.29", "nSRecord"],
  ["0.9.2342.19200300.100.1.30", "sOARecord"],
  ["0.9.2342.19200300.100.1.31", "cNAMERecord"],
  ["0.9.2342.19200300.100.1.37", "associatedDomain"],
  ["0.9.2342.19200300.100.1.38", "associatedName"],
  ["0.9.2342.19200300.100.1.39", "homePostalAddress"],
  ["0.9.2342.19200300.100.1.40", "personalTitle"],
  ["0.9.2342.19200300.100.1.41", "mobileTelephoneNumber"],
  ["0.9.2342.19200300.100.1.42", "pagerTelephoneNumber"],
  ["0.9.2342.19200300.100.1.43", "friendlyCountryName"],
  ["0.9.2342.19200300.100.1.44", "uid"],
  ["0.9.2342.19200300.100.1.45", "organizationalStatus"],
  ["0.9.2342.19200300.100.1.46", "janetMailbox"],
  ["0.9.2342.19200300.100.1.47", "mailPreferenceOption"],
  ["0.9.2342.19200300.100.1.48", "buildingName"],
  ["0.9.2342.19200300.100.1.49", "dSAQuality"],
  ["0.9.2342.19200300.100.1.50", "singleLevelQuality"],
  ["0.9.2342.19200300.100.1.51", "subtreeMinimumQuality"],
  ["0.9.2342.19200300.100.1.52", "subtreeMaximumQuality"],
  ["0.9.2342.19200300.100.1.53", "personalSignature"],
  ["0.9.2342.19200300.100.1.54", "dITRedirect"],
  ["0.9.2342.19200300.100.1.55", "audio"],
  ["0.9.2342.19200300.100.1.56", "documentPublisher"],
  ["1.2.643.3.131.1.1", "INN"],
  ["1.2.643.100.1", "OGRN"],
  ["1.2.643.100.3", "SNILS"],
  ["1.2.643.100.5", "OGRNIP"],
  ["1.2.840.113549.1.9.1", "emailAddress"],
  ["1.2.840.113549.1.9.2", "unstructuredName"],
  ["1.2.840.113549.1.9.3", "contentType"],
  ["1.2.840.113549.1.9.4", "messageDigest"],
  ["1.2.840.113549.1.9.5", "signingTime"],
  ["1.2.840.113549.1.9.6", "countersignature"],
  ["1.2.840.113549.1.9.7", "challengePassword"],
  ["1.2.840.113549.1.9.8", "unstructuredAddress"],
  ["1.2.840.113549.1.9.9", "extendedCertificateAttributes"],
  ["1.2.840.113549.1.9.14", "extReq"],
  ["1.2.840.113549.1.9.15", "SMIME-CAPS"],
  ["1.2.840.113549.1.9.16", "SMIME"],
  ["1.2.840.113549.1.9.20", "friendlyName"],
  ["1.2.840.113549.1.9.21", "localKeyID"],
  ["1.3.6.1.4.1.311.60.2.1.1", "jurisdictionL"],
  ["1.3.6.1.4.1.311.60.2.1.2", "jurisdictionST"],
  ["1.3.6.1.4.1.311.60.2.1.3", "jurisdictionC"],
  ["2.5.4.3", "CN"],
  ["2.5.4.4", "SN"],
  ["2.5.4.5", "serialNumber"],
  ["2.5.4.6", "C"],
  ["2.5.4.7", "L"],
  ["2.5.4.8", "ST"],
  ["2.5.4.9", "street"],
  ["2.5.4.10", "O"],
  ["2.5.4.11", "OU"],
  ["2.5.4.12", "title"],
  ["2.5.4.13", "description"],
  ["2.5.4.14", "searchGuide"],
  ["2.5.4.15", "businessCategory"],
  ["2.5.4.16", "postalAddress"],
  ["2.5.4.17", "postalCode"],
  ["2.5.4.18", "postOfficeBox"],
  ["2.5.4.19", "physicalDeliveryOfficeName"],
  ["2.5.4.20", "telephoneNumber"],
  ["2.5.4.21", "telexNumber"],
  ["2.5.4.22", "teletexTerminalIdentifier"],
  ["2.5.4.23", "facsimileTelephoneNumber"],
  ["2.5.4.24", "x121Address"],
  ["2.5.4.25", "internationaliSDNNumber"],
  ["2.5.4.26", "registeredAddress"],
  ["2.5.4.27", "destinationIndicator"],
  ["2.5.4.28", "preferredDeliveryMethod"],
  ["2.5.4.29", "presentationAddress"],
  ["2.5.4.30", "supportedApplicationContext"],
  ["2.5.4.31", "member"],
  ["2.5.4.32", "owner"],
  ["2.5.4.33", "roleOccupant"],
  ["2.5.4.34", "seeAlso"],
  ["2.5.4.35", "userPassword"],
  ["2.5.4.36", "userCertificate"],
  ["2.5.4.37", "cACertificate"],
  ["2.5.4.38", "authorityRevocationList"],
  ["2.5.4.39", "certificateRevocationList"],
  ["2.5.4.40", "crossCertificatePair"],
  ["2.5.4.41", "name"],
  ["2.5.4.42", "GN"],
  ["2.5.4.43", "initials"],
  ["2.5.4.44", "generationQualifier"],
  ["2.5.4.45", "x500UniqueIdentifier"],
  ["2.5.4.46", "dnQualifier"],
  ["2.5.4.47", "enhancedSearchGuide"],
  ["2.5.4.48", "protocolInformation"],
  ["2.5.4.49", "distinguishedName"],
  ["2.5.4.50", "uniqueMember"],
  ["2.5.4.51", "houseIdentifier"],
  ["2.5.4.52", "supportedAlgorithms"],
  ["2.5.4.53", "deltaRevocationList"],
  ["2.5.4.54", "dmdName"],
  ["2.5.4.65", "pseudonym"],
  ["2.5.4.72", "role"],
  ["2.5.4.97", "organizationIdentifier"],
  ["2.5.4.98", "c3"],
  ["2.5.4.99", "n3"],
  ["2.5.4.100", "dnsName"],
]);

// Universal tags (X.680 §8.4) and the version tag of RFC 5280 §4.1 (TBSCertificate.version is [0] EXPLICIT).
const TAG_OID = 0x06;
const TAG_UTF8_STRING = 0x0c;
const TAG_SEQUENCE = 0x30;
const TAG_SET = 0x31;
const TAG_VERSION = 0xa0;
// OpenSSL reads a name's value as ASN1_PRINTABLE, whose mask admits only the text types below and these,
// which it prints as hex dumps. A certificate with any other value type (INTEGER, OCTET STRING, UTCTime,
// VisibleString, ...) fails to load, so no TLS peer can present one, and we refuse it as malformed too.
// So are constructed (BER) strings, which OpenSSL accepts but DER forbids.
const DUMPED_TAGS: ReadonlySet<number> = new Set([
  0x03, // BIT STRING
  0x07, // ObjectDescriptor
  0x08, // EXTERNAL
  0x09, // REAL
  0x0b, // EMBEDDED PDV
  0x0d, // RELATIVE-OID
  0x0e, // TIME
  0x0f, // reserved
  0x1d, // CHARACTER STRING
  TAG_SEQUENCE,
]);
// How wide one character of each text type is (ASN1_STRING_print_ex's tag2nbyte). UTF8String is printed
// byte by byte (OpenSSL does not decode it); the one-byte types are Latin-1 and converted to UTF-8 first.
const TEXT_WIDTH: ReadonlyMap<number, 1 | 2 | 4> = new Map([
  [0x12, 1], // NumericString
  [0x13, 1], // PrintableString
  [0x14, 1], // T61String (TeletexString)
  [0x16, 1], // IA5String
  [0x1c, 4], // UniversalString
  [0x1e, 2], // BMPString
]);
// OpenSSL refuses to load a name whose UTF8String is not valid UTF-8 (its canonical-name step decodes it).
const STRICT_UTF8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

// RFC 2253 §2.4 specials, escaped with a backslash wherever they occur.
const ALWAYS_ESCAPED = new Set([0x2c, 0x2b, 0x22, 0x5c, 0x3c, 0x3e, 0x3b].map((c) => String.fromCharCode(c)));
const HEX = "0123456789ABCDEF";

function malformed(what: string): MtlsdError {
  return new MtlsdError("NAME_MALFORMED", `X.509 name is not valid DER: ${what}`);
}

type Element = DerElement;

function readElement(der: Uint8Array, start: number, limit: number): Element {
  return readDerElement(der, start, limit, malformed);
}

function oidText(der: Uint8Array, start: number, end: number): string {
  return derOidText(der, start, end, malformed);
}

function hexDump(der: Uint8Array, start: number, end: number): string {
  let out = "#";
  for (let i = start; i < end; i++) {
    const b = der[i]!;
    out += HEX[b >> 4]! + HEX[b & 0x0f]!;
  }
  return out;
}

/** do_esc_char for one byte: `first`/`last` say whether it is the string's first or last character. */
function escapeByte(b: number, first: boolean, last: boolean): string {
  if (b >= 0x80 || b < 0x20 || b === 0x7f) return `\\${HEX[b >> 4]}${HEX[b & 0x0f]}`;
  const ch = String.fromCharCode(b);
  if (ALWAYS_ESCAPED.has(ch)) return `\\${ch}`;
  // OpenSSL marks the last character after the first, so a one-character "#" stays bare but " " does not.
  if (b === 0x20 && (first || last)) return "\\ ";
  if (b === 0x23 && first && !last) return "\\#";
  return ch;
}

/** do_buf: prints a string value of `width`-byte big-endian characters, converting to UTF-8 unless raw. */
function printText(der: Uint8Array, start: number, end: number, width: 1 | 2 | 4, raw: boolean): string {
  if ((end - start) % width !== 0) throw malformed(`string length is not a multiple of ${width}`);
  let out = "";
  for (let p = start; p < end; p += width) {
    let c = der[p]!;
    for (let k = 1; k < width; k++) c = c * 256 + der[p + k]!;
    const first = p === start;
    const last = p + width === end;
    if (c < 0x80 || raw) {
      out += escapeByte(c, first, last);
      continue;
    }
    if ((c >= 0xd800 && c <= 0xdfff) || c > 0x10ffff) {
      throw malformed(`string holds U+${c.toString(16).toUpperCase()}, which is not a Unicode scalar value`);
    }
    // Every UTF-8 byte of a non-ASCII character is above 0x7F, so each prints as \XX (ESC_MSB).
    if (c < 0x800) {
      out += escapeByte(0xc0 | (c >> 6), false, false) + escapeByte(0x80 | (c & 0x3f), false, false);
    } else if (c < 0x10000) {
      out +=
        escapeByte(0xe0 | (c >> 12), false, false) +
        escapeByte(0x80 | ((c >> 6) & 0x3f), false, false) +
        escapeByte(0x80 | (c & 0x3f), false, false);
    } else {
      out +=
        escapeByte(0xf0 | (c >> 18), false, false) +
        escapeByte(0x80 | ((c >> 12) & 0x3f), false, false) +
        escapeByte(0x80 | ((c >> 6) & 0x3f), false, false) +
        escapeByte(0x80 | (c & 0x3f), false, false);
    }
  }
  return out;
}

/** Prints one AttributeTypeAndValue as `type=value`. */
function printAttribute(der: Uint8Array, atv: Element): string {
  const type = readElement(der, atv.contentStart, atv.end);
  if (type.tag !== TAG_OID) throw malformed("attribute type is not an OBJECT IDENTIFIER");
  const value = readElement(der, type.end, atv.end);
  if (value.end !== atv.end) throw malformed("attribute has more than a type and a value");
  const oid = oidText(der, type.contentStart, type.end);
  const width = value.tag === TAG_UTF8_STRING ? 1 : TEXT_WIDTH.get(value.tag);
  if (width === undefined && !DUMPED_TAGS.has(value.tag)) {
    throw malformed(
      `attribute ${oid} has a value of ASN.1 tag 0x${value.tag.toString(16)}, which OpenSSL refuses`,
    );
  }
  const shortName = SHORT_NAMES.get(oid);
  if (width === undefined) return `${shortName ?? oid}=${hexDump(der, value.start, value.end)}`;
  if (value.tag === TAG_UTF8_STRING) {
    try {
      STRICT_UTF8.decode(der.subarray(value.contentStart, value.end));
    } catch {
      throw malformed(`attribute ${oid} is a UTF8String that is not valid UTF-8`);
    }
  }
  // Text is decoded even under an unknown type, because OpenSSL refuses undecodable text whatever the type.
  const text = printText(der, value.contentStart, value.end, width, value.tag === TAG_UTF8_STRING);
  if (shortName === undefined) return `${oid}=${hexDump(der, value.start, value.end)}`;
  return `${shortName}=${text}`;
}

/**
 * The subject (or issuer) string Envoy puts in XFCC `Subject`: RFC 2253 order and escaping, exactly as
 * `openssl x509 -noout -subject -nameopt RFC2253` prints it. Pass the DER of the Name (a Uint8Array view
 * such as `subjectDerOfCertificate(peerCert.raw)` is read in place) or a parsed name that can re-encode
 * itself (the CLI's `x509.Name`), which is slower. A name OpenSSL itself refuses to load (a value that is not valid UTF-8 or not of
 * a string-like type) is refused too, so it cannot happen on a TLS connection.
 * Throws MtlsdError NAME_MALFORMED when the DER is not a Name.
 */
export function formatSubjectRfc2253(
  name: { toArrayBuffer(): ArrayBuffer } | ArrayBuffer | Uint8Array,
): string {
  const der =
    name instanceof Uint8Array
      ? name
      : new Uint8Array(name instanceof ArrayBuffer ? name : name.toArrayBuffer());
  const outer = readElement(der, 0, der.length);
  if (outer.tag !== TAG_SEQUENCE) throw malformed("a Name must be a SEQUENCE");
  if (outer.end !== der.length) throw malformed("bytes follow the Name");
  const rdns: string[][] = [];
  for (let pos = outer.contentStart; pos < outer.end; ) {
    const rdn = readElement(der, pos, outer.end);
    if (rdn.tag !== TAG_SET) throw malformed("a RelativeDistinguishedName must be a SET");
    if (rdn.contentStart === rdn.end) throw malformed("empty RelativeDistinguishedName");
    const attributes: string[] = [];
    for (let p = rdn.contentStart; p < rdn.end; ) {
      const atv = readElement(der, p, rdn.end);
      if (atv.tag !== TAG_SEQUENCE) throw malformed("an AttributeTypeAndValue must be a SEQUENCE");
      attributes.push(printAttribute(der, atv));
      p = atv.end;
    }
    rdns.push(attributes);
    pos = rdn.end;
  }
  let out = "";
  for (let i = rdns.length - 1; i >= 0; i--) {
    const attributes = rdns[i]!;
    for (let j = attributes.length - 1; j >= 0; j--) {
      if (out.length > 0) out += j === attributes.length - 1 ? "," : "+";
      out += attributes[j];
    }
  }
  return out;
}

/**
 * The DER of a certificate's subject Name, as a view into `certDer` (no copy): the sixth field of
 * TBSCertificate (RFC 5280 §4.1). Formatting this view costs a few microseconds; formatting an `x509.Name`
 * re-encodes it first and costs about twenty-five times more, which matters once per handshake.
 * Throws MtlsdError NAME_MALFORMED when `certDer` is not a certificate.
 */
export function subjectDerOfCertificate(certDer: Uint8Array): Uint8Array {
  const certificate = readElement(certDer, 0, certDer.length);
  if (certificate.tag !== TAG_SEQUENCE) throw malformed("a Certificate must be a SEQUENCE");
  const tbs = readElement(certDer, certificate.contentStart, certificate.end);
  if (tbs.tag !== TAG_SEQUENCE) throw malformed("a TBSCertificate must be a SEQUENCE");
  let field = readElement(certDer, tbs.contentStart, tbs.end);
  if (field.tag === TAG_VERSION) field = readElement(certDer, field.end, tbs.end);
  // serialNumber, signature, issuer and validity come before the subject.
  for (let i = 0; i < 4; i++) field = readElement(certDer, field.end, tbs.end);
  if (field.tag !== TAG_SEQUENCE) throw malformed("a certificate subject must be a SEQUENCE");
  return certDer.subarray(field.start, field.end);
}
