// The runtime's own DER reader for certificates and CRLs, property-tested against @peculiar/x509 as the reference.
import { deepStrictEqual } from "node:assert/strict";
import { webcrypto } from "node:crypto";
import { AsnConvert } from "@peculiar/asn1-schema";
import { Certificate } from "@peculiar/asn1-x509";
import fc from "fast-check";
import t from "tap";
import {
  type CertificateFields,
  identifyPeer,
  KeyUsage,
  nameText,
  readCertificate,
  readCrl,
  verifySignature,
} from "../src/identity/index.ts";
import { x509 } from "../src/x509.ts";

const HOUR_MS = 60 * 60 * 1000;
const SERVER_AUTH = "1.3.6.1.5.5.7.3.1";
const CLIENT_AUTH = "1.3.6.1.5.5.7.3.2";

const keys = (await webcrypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, true, [
  "sign",
  "verify",
])) as webcrypto.CryptoKeyPair;
const rsaKeys = (await webcrypto.subtle.generateKey(
  {
    name: "RSASSA-PKCS1-v1_5",
    modulusLength: 2048,
    publicExponent: new Uint8Array([1, 0, 1]),
    hash: "SHA-256",
  },
  true,
  ["sign", "verify"],
)) as webcrypto.CryptoKeyPair;

/** What both readers are compared on: every field the X509-SVID rules and CRL checks read. */
interface Reading {
  uris: string[];
  dnsNames: string[];
  san: boolean;
  sanCritical: boolean | undefined;
  ca: boolean | undefined;
  bcCritical: boolean | undefined;
  pathLength: number | undefined;
  keyUsage: number | undefined;
  kuCritical: boolean | undefined;
  eku: string[] | undefined;
  ekuCritical: boolean | undefined;
  serialHex: string;
  notBefore: number;
  notAfter: number;
}

/** The extensions a Reading is made of, as @peculiar/x509 reads them; undefined where the certificate has none. */
interface ReferenceExtensions {
  san: x509.SubjectAlternativeNameExtension | undefined;
  bc: x509.BasicConstraintsExtension | undefined;
  ku: x509.KeyUsagesExtension | undefined;
  eku: x509.ExtendedKeyUsageExtension | undefined;
}

/** The reference's Reading: the same mapping from @peculiar/x509's objects, however they were obtained. */
function referenceReading(
  { san, bc, ku, eku }: ReferenceExtensions,
  serialHex: string,
  notBefore: Date,
  notAfter: Date,
): Reading {
  const items = san?.names.items ?? [];
  return {
    uris: items.filter((name) => name.type === "url").map((name) => name.value),
    dnsNames: items.filter((name) => name.type === "dns").map((name) => name.value),
    san: san !== undefined,
    sanCritical: san?.critical,
    ca: bc?.ca,
    bcCritical: bc?.critical,
    pathLength: bc?.pathLength,
    // An empty BIT STRING reads as NaN there: no flags either way.
    keyUsage: ku ? ku.usages || 0 : undefined,
    kuCritical: ku?.critical,
    eku: eku ? [...eku.usages].map(String) : undefined,
    ekuCritical: eku?.critical,
    serialHex,
    notBefore: notBefore.getTime(),
    notAfter: notAfter.getTime(),
  };
}

function reference(der: Uint8Array): Reading {
  const cert = new x509.X509Certificate(der);
  const extensions = {
    san: cert.getExtension(x509.SubjectAlternativeNameExtension) ?? undefined,
    bc: cert.getExtension(x509.BasicConstraintsExtension) ?? undefined,
    ku: cert.getExtension(x509.KeyUsagesExtension) ?? undefined,
    eku: cert.getExtension(x509.ExtendedKeyUsageExtension) ?? undefined,
  };
  return referenceReading(extensions, cert.serialNumber.toLowerCase(), cert.notBefore, cert.notAfter);
}

/**
 * The reference for mutated DER: @peculiar/x509's schemas for the certificate and for the four extensions the
 * runtime reads, and nothing else. Its X509Certificate also refuses a certificate whose other extensions
 * (authorityKeyIdentifier, issuerAltName…) fail their schemas; the runtime does not read those, and OpenSSL
 * judges them on every handshake before identity/ sees the certificate.
 */
function referenceFields(der: Uint8Array): Reading {
  const asn = AsnConvert.parse(der, Certificate);
  const tbs = asn.tbsCertificate;
  const first = (oid: string) => {
    const found = tbs.extensions?.find((ext) => ext.extnID === oid);
    return found ? new Uint8Array(AsnConvert.serialize(found)) : undefined;
  };
  const sanRaw = first("2.5.29.17");
  const bcRaw = first("2.5.29.19");
  const kuRaw = first("2.5.29.15");
  const ekuRaw = first("2.5.29.37");
  const extensions = {
    san: sanRaw ? new x509.SubjectAlternativeNameExtension(sanRaw) : undefined,
    bc: bcRaw ? new x509.BasicConstraintsExtension(bcRaw) : undefined,
    ku: kuRaw ? new x509.KeyUsagesExtension(kuRaw) : undefined,
    eku: ekuRaw ? new x509.ExtendedKeyUsageExtension(ekuRaw) : undefined,
  };
  let serial = new Uint8Array(tbs.serialNumber);
  if (serial.length > 1 && serial[0] === 0 && serial[1]! > 0x7f) serial = serial.subarray(1);
  return referenceReading(
    extensions,
    Buffer.from(serial).toString("hex"),
    tbs.validity.notBefore.getTime(),
    tbs.validity.notAfter.getTime(),
  );
}

function ours(fields: CertificateFields): Reading {
  return {
    uris: fields.subjectAltName?.uris ?? [],
    dnsNames: fields.subjectAltName?.dnsNames ?? [],
    san: fields.subjectAltName !== undefined,
    sanCritical: fields.subjectAltName?.critical,
    ca: fields.basicConstraints?.ca,
    bcCritical: fields.basicConstraints?.critical,
    pathLength: fields.basicConstraints?.pathLength,
    keyUsage: fields.keyUsage?.usages,
    kuCritical: fields.keyUsage?.critical,
    eku: fields.extendedKeyUsage?.usages,
    ekuCritical: fields.extendedKeyUsage?.critical,
    serialHex: fields.serialHex,
    notBefore: fields.notBefore.getTime(),
    notAfter: fields.notAfter.getTime(),
  };
}

// IA5 text that looks like more than one name when rendered, as OpenSSL's subjectAltName string does.
const ia5 = fc.oneof(
  fc.string({ unit: fc.integer({ min: 0x20, max: 0x7e }).map((c) => String.fromCharCode(c)), maxLength: 40 }),
  fc.constantFrom(
    "spiffe://example.org/orders",
    "spiffe://example.org/a, URI:spiffe://evil.example/admin",
    'spiffe://example.org/x", DNS:evil.example',
    "localhost",
  ),
);
const generalName = fc.oneof(
  ia5.map((value) => ({ type: "url" as const, value })),
  ia5.map((value) => ({ type: "dns" as const, value })),
  fc.constantFrom("10.0.0.1", "::1", "192.168.1.254").map((value) => ({ type: "ip" as const, value })),
  fc.constantFrom("ops@example.org", "a@b").map((value) => ({ type: "email" as const, value })),
  fc.constantFrom("CN=orders, O=acme", "O=x+OU=y").map((value) => ({ type: "dn" as const, value })),
  fc.constantFrom("1.2.3.4", "1.3.6.1.4.1.99999.1").map((value) => ({ type: "id" as const, value })),
  fc.constantFrom("user@example.org").map((value) => ({ type: "upn" as const, value })),
);
const ekuOid = fc.oneof(
  fc.constantFrom(SERVER_AUTH, CLIENT_AUTH, "1.3.6.1.5.5.7.3.3", "1.3.6.1.5.5.7.3.8"),
  fc.tuple(fc.nat(200000), fc.nat(1000)).map(([a, b]) => `1.3.6.1.4.1.${a}.${b}`),
);
const extensionSpec = fc.record({
  san: fc.option(
    fc.record({ names: fc.array(generalName, { minLength: 1, maxLength: 6 }), critical: fc.boolean() }),
  ),
  bc: fc.option(
    fc.record({
      ca: fc.boolean(),
      pathLength: fc.option(fc.nat(10), { nil: undefined }),
      critical: fc.boolean(),
    }),
  ),
  ku: fc.option(fc.record({ usages: fc.integer({ min: 0, max: 511 }), critical: fc.boolean() })),
  eku: fc.option(
    fc.record({ usages: fc.array(ekuOid, { minLength: 1, maxLength: 4 }), critical: fc.boolean() }),
  ),
  order: fc.nat(23),
  serial: fc.uint8Array({ minLength: 1, maxLength: 20 }).filter((bytes) => bytes.some((b) => b !== 0)),
  rsa: fc.boolean(),
});
type ExtensionSpec = typeof extensionSpec extends fc.Arbitrary<infer T> ? T : never;

function extensionsOf(spec: ExtensionSpec): x509.Extension[] {
  const list: x509.Extension[] = [];
  if (spec.san) list.push(new x509.SubjectAlternativeNameExtension(spec.san.names, spec.san.critical));
  if (spec.bc)
    list.push(new x509.BasicConstraintsExtension(spec.bc.ca, spec.bc.pathLength, spec.bc.critical));
  if (spec.ku) list.push(new x509.KeyUsagesExtension(spec.ku.usages, spec.ku.critical));
  if (spec.eku) list.push(new x509.ExtendedKeyUsageExtension(spec.eku.usages, spec.eku.critical));
  // Some order of the extensions; which one comes first must not matter.
  for (let i = 0; i < spec.order % Math.max(list.length, 1); i++) list.push(list.shift()!);
  return list;
}

async function issue(spec: ExtensionSpec, extensions = extensionsOf(spec)): Promise<Uint8Array> {
  const pair = spec.rsa ? rsaKeys : keys;
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: Buffer.from(spec.serial).toString("hex"),
    subject: "CN=orders, O=acme",
    issuer: "CN=example.org CA, O=acme",
    notBefore: new Date(Date.UTC(2026, 0, 1, 10, 0, 0)),
    notAfter: new Date(Date.UTC(2026, 11, 31, 23, 59, 59)),
    signingKey: pair.privateKey,
    publicKey: pair.publicKey,
    signingAlgorithm: spec.rsa
      ? { name: "RSASSA-PKCS1-v1_5", hash: "SHA-256" }
      : { name: "ECDSA", hash: "SHA-256" },
    ...(extensions.length > 0 ? { extensions } : {}),
  });
  return new Uint8Array(cert.rawData);
}

t.test(
  "the reader reads SANs, cA, key usages, EKUs, serial and validity as @peculiar/x509 does",
  async (t) => {
    await fc.assert(
      fc.asyncProperty(extensionSpec, async (spec) => {
        const der = await issue(spec);
        deepStrictEqual(ours(readCertificate(der)), reference(der));
      }),
      { numRuns: 150 },
    );
    t.pass("150 generated certificates read alike");
  },
);

t.test("a URI SAN holding ', URI:' is one URI, not two", async (t) => {
  const uri = "spiffe://example.org/a, URI:spiffe://evil.example/admin";
  const der = await issue(
    { san: null, bc: null, ku: null, eku: null, order: 0, serial: new Uint8Array([1]), rsa: false },
    [new x509.SubjectAlternativeNameExtension([{ type: "url", value: uri }])],
  );
  t.strictSame(readCertificate(der).subjectAltName?.uris, [uri]);
});

t.test("a certificate that repeats an extension is refused (RFC 5280 §4.2)", async (t) => {
  const der = await issue(
    { san: null, bc: null, ku: null, eku: null, order: 0, serial: new Uint8Array([1]), rsa: false },
    [
      new x509.SubjectAlternativeNameExtension([{ type: "url", value: "spiffe://example.org/orders" }]),
      new x509.SubjectAlternativeNameExtension([{ type: "url", value: "spiffe://evil.example/admin" }]),
    ],
  );
  t.throws(() => readCertificate(der), { code: "CERT_MALFORMED", message: /appears more than once/ });
  const verdict = identifyPeer(der, "client", "example.org");
  t.equal(verdict.ok, false);
  if (!verdict.ok) {
    t.equal(verdict.reason, "bad_svid");
    t.match(verdict.detail, /^certificate does not parse: extension 2\.5\.29\.17 appears more than once/);
  }
});

/** Mutations that keep the bytes DER-shaped often enough to reach deep into the reader. */
const mutation = fc.oneof(
  fc.record({ kind: fc.constant("truncate" as const), at: fc.nat() }),
  fc.record({ kind: fc.constant("set" as const), at: fc.nat(), value: fc.nat(255) }),
  fc.record({ kind: fc.constant("indefinite" as const), at: fc.nat() }),
  fc.record({
    kind: fc.constant("flipLength" as const),
    at: fc.nat(),
    delta: fc.integer({ min: -3, max: 3 }),
  }),
  fc.record({ kind: fc.constant("delete" as const), at: fc.nat() }),
  fc.record({ kind: fc.constant("insert" as const), at: fc.nat(), value: fc.nat(255) }),
);
type Mutation = typeof mutation extends fc.Arbitrary<infer T> ? T : never;

function mutate(der: Uint8Array, change: Mutation): Uint8Array {
  const at = change.at % der.length;
  const bytes = Uint8Array.from(der);
  switch (change.kind) {
    case "truncate":
      return bytes.subarray(0, at);
    case "set":
      bytes[at] = change.value;
      return bytes;
    case "indefinite":
      bytes[at] = 0x80;
      return bytes;
    case "flipLength": {
      // The byte after a tag-looking byte is a length more often than not.
      const length = Math.min(at + 1, bytes.length - 1);
      bytes[length] = (bytes[length]! + change.delta + 256) % 256;
      return bytes;
    }
    case "delete":
      return Uint8Array.from([...bytes.subarray(0, at), ...bytes.subarray(at + 1)]);
    case "insert":
      return Uint8Array.from([...bytes.subarray(0, at), change.value, ...bytes.subarray(at)]);
  }
}

const bases = await Promise.all(
  fc.sample(extensionSpec, { numRuns: 24, seed: 16 }).map((spec) => issue(spec)),
);

t.test("mutated DER is refused or reads exactly as @peculiar/x509 reads it", async (t) => {
  let refused = 0;
  fc.assert(
    fc.property(
      fc.nat(bases.length - 1),
      fc.array(mutation, { minLength: 1, maxLength: 3 }),
      (index, changes) => {
        const der = changes.reduce(mutate, bases[index]!);
        let fields: CertificateFields;
        try {
          fields = readCertificate(der);
        } catch (error) {
          if ((error as { code?: string }).code !== "CERT_MALFORMED") throw error;
          refused++;
          return;
        }
        let expected: Reading;
        try {
          expected = referenceFields(der);
        } catch (error) {
          throw new Error(
            `accepted DER that @peculiar/x509 refuses (${(error as Error).message}): ${Buffer.from(der).toString("hex")}`,
          );
        }
        deepStrictEqual(ours(fields), expected);
      },
    ),
    { numRuns: 3000 },
  );
  t.ok(refused > 0, `the mutations reached the reader's refusals (${refused} refused)`);
});

t.test("indefinite lengths, non-minimal lengths and bad BOOLEANs are refused", async (t) => {
  const der = await issue({
    san: { names: [{ type: "url", value: "spiffe://example.org/orders" }], critical: false },
    bc: { ca: false, pathLength: undefined, critical: true },
    ku: { usages: KeyUsage.digitalSignature, critical: true },
    eku: null,
    order: 0,
    serial: new Uint8Array([7]),
    rsa: false,
  });
  const indefinite = Uint8Array.from(der);
  indefinite[1] = 0x80;
  t.throws(() => readCertificate(indefinite), { code: "CERT_MALFORMED", message: /indefinite length/ });
  // 30 82 XX XX -> 30 83 00 XX XX: the same length with a leading zero byte.
  const padded = Uint8Array.from([0x30, 0x83, 0x00, ...der.subarray(2)]);
  t.throws(() => readCertificate(padded), { code: "CERT_MALFORMED", message: /leading zero byte/ });
  // The critical flag of basicConstraints as 0x01 (BER's TRUE, not DER's).
  const bcAt = Buffer.from(der).indexOf(Buffer.from([0x06, 0x03, 0x55, 0x1d, 0x13, 0x01, 0x01, 0xff]));
  t.ok(bcAt > 0, "found basicConstraints");
  const loose = Uint8Array.from(der);
  loose[bcAt + 7] = 0x01;
  t.throws(() => readCertificate(loose), { code: "CERT_MALFORMED", message: /neither 0x00 nor 0xFF/ });
});

// Names with the characters that need escaping, in the order and forms @peculiar/x509 prints.
const nameValue = fc
  .string({
    unit: fc.constantFrom(
      "a",
      "Z",
      "0",
      " ",
      ",",
      "+",
      '"',
      "\\",
      "<",
      ">",
      ";",
      "#",
      "=",
      "\n",
      "\t",
      "é",
      "-",
    ),
    minLength: 0,
    maxLength: 12,
  })
  .chain((value) =>
    // Typed values, because the Name builder reads a leading # as hex and strips quotes and backslashes.
    fc.constantFrom(
      { utf8String: value },
      { bmpString: value },
      ...(/^[ -~]*$/.test(value) ? [{ ia5String: value }, { printableString: value }] : []),
    ),
  );
const jsonName = fc.array(
  fc.dictionary(
    fc.constantFrom("CN", "O", "OU", "C", "L", "ST", "DC", "E", "2.5.4.5", "1.2.3.4"),
    fc.array(nameValue, { minLength: 1, maxLength: 2 }),
    {
      minKeys: 1,
      maxKeys: 2,
    },
  ),
  { minLength: 1, maxLength: 4 },
);

t.test(
  "a Name prints as @peculiar/x509 prints it, so CRL messages and summaries read as before",
  async (t) => {
    fc.assert(
      fc.property(jsonName, (json) => {
        const name = new x509.Name(json as unknown as x509.JsonName);
        deepStrictEqual(nameText(new Uint8Array(name.toArrayBuffer())), name.toString());
      }),
      { numRuns: 300 },
    );
    t.pass("300 generated names print alike");
  },
);

const crlSpec = fc.record({
  // Distinct as numbers: @peculiar/x509's generator refuses a CRL that lists one serial twice.
  serials: fc.uniqueArray(
    fc.uint8Array({ minLength: 1, maxLength: 20 }).filter((b) => b.some((x) => x !== 0)),
    {
      maxLength: 5,
      selector: (serial) =>
        Buffer.from(serial)
          .toString("hex")
          .replace(/^(00)+(?=.)/, ""),
    },
  ),
  nextUpdate: fc.boolean(),
  rsa: fc.boolean(),
});

t.test(
  "a CRL reads as @peculiar/x509 reads it, and its signature verifies with the issuer's key only",
  async (t) => {
    const other = (await webcrypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, true, [
      "sign",
      "verify",
    ])) as webcrypto.CryptoKeyPair;
    const { KeyObject } = await import("node:crypto");
    await fc.assert(
      fc.asyncProperty(crlSpec, async (spec) => {
        const pair = spec.rsa ? rsaKeys : keys;
        const thisUpdate = new Date(Date.UTC(2026, 5, 1, 12, 0, 0));
        const crl = await x509.X509CrlGenerator.create({
          issuer: "CN=example.org CA, O=acme",
          thisUpdate,
          ...(spec.nextUpdate ? { nextUpdate: new Date(thisUpdate.getTime() + 24 * HOUR_MS) } : {}),
          signingKey: pair.privateKey,
          signingAlgorithm: spec.rsa
            ? { name: "RSASSA-PKCS1-v1_5", hash: "SHA-256" }
            : { name: "ECDSA", hash: "SHA-256" },
          entries: spec.serials.map((serial) => ({
            serialNumber: Buffer.from(serial).toString("hex"),
            revocationDate: thisUpdate,
            reason: x509.X509CrlReason.keyCompromise,
          })),
        });
        const fields = readCrl(new Uint8Array(crl.rawData));
        t.equal(nameText(fields.issuerDer), crl.issuer);
        t.equal(fields.thisUpdate.getTime(), crl.thisUpdate.getTime());
        t.equal(fields.nextUpdate?.getTime(), crl.nextUpdate?.getTime());
        // The serials as issued, leading zero bytes dropped. Not @peculiar/x509's `entries`: it reads none from
        // a CRL without nextUpdate (its schema takes the revokedCertificates SEQUENCE for the optional time).
        const issued = spec.serials.map((serial) =>
          Buffer.from(serial)
            .toString("hex")
            .replace(/^(00)+(?=.)/, ""),
        );
        t.strictSame(
          fields.revokedSerials.map((serial) => Buffer.from(serial).toString("hex")),
          issued,
        );
        if (spec.nextUpdate) t.equal(crl.entries.length, issued.length);
        const issuerKey = KeyObject.from(pair.publicKey);
        t.ok(verifySignature(fields.tbs, fields.signatureAlgorithm, fields.signature, issuerKey));
        t.notOk(
          verifySignature(
            fields.tbs,
            fields.signatureAlgorithm,
            fields.signature,
            KeyObject.from(other.publicKey),
          ),
        );
      }),
      { numRuns: 40 },
    );
  },
);
