// Checks the XFCC Subject formatter byte for byte against `openssl x509 -nameopt RFC2253` on real certificates.
import { execFile } from "node:child_process";
import { generateKeyPairSync, sign } from "node:crypto";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import t from "tap";
import { formatSubjectRfc2253, subjectDerOfCertificate } from "../src/identity/subject.ts";
import { x509 } from "../src/x509.ts";

const run = promisify(execFile);
const dir = await mkdtemp(join(tmpdir(), "mtlsd-subject-"));
t.teardown(() => rm(dir, { recursive: true, force: true }));
let serial = 0;

/** What OpenSSL (hence Envoy's XFCC Subject) prints for a certificate file's subject. */
async function opensslSubject(certFile: string, inform: "PEM" | "DER"): Promise<string> {
  const { stdout } = await run("openssl", [
    "x509",
    "-inform",
    inform,
    "-in",
    certFile,
    "-noout",
    "-subject",
    "-nameopt",
    "RFC2253",
  ]);
  return stdout.replace(/^subject=/, "").replace(/\n$/, "");
}

// Minimal DER writing, enough to build a certificate with any subject bytes.
function tlv(tag: number, ...parts: Uint8Array[]): Uint8Array {
  const content = Buffer.concat(parts);
  const n = content.length;
  const length = n < 0x80 ? [n] : n < 0x100 ? [0x81, n] : [0x82, n >> 8, n & 0xff];
  return Buffer.concat([Uint8Array.of(tag, ...length), content]);
}

function oid(dotted: string): Uint8Array {
  const arcs = dotted.split(".").map(BigInt);
  const out: number[] = [];
  for (const arc of [arcs[0]! * 40n + arcs[1]!, ...arcs.slice(2)]) {
    const bytes = [Number(arc & 0x7fn)];
    for (let v = arc >> 7n; v > 0n; v >>= 7n) bytes.unshift(Number(v & 0x7fn) | 0x80);
    out.push(...bytes);
  }
  return tlv(0x06, Uint8Array.from(out));
}

/** One attribute: type OID and an already-encoded value. */
type Attribute = [string, Uint8Array];

function nameDer(rdns: Attribute[][]): Uint8Array {
  return tlv(
    0x30,
    ...rdns.map((rdn) => tlv(0x31, ...rdn.map(([type, value]) => tlv(0x30, oid(type), value)))),
  );
}

const utf8 = (s: string) => tlv(0x0c, Buffer.from(s, "utf8"));

/** Writes a self-signed DER certificate whose subject is exactly `subject`, signed with node:crypto. */
async function certWithSubject(
  subject: Uint8Array,
  { issuer = subject, v1 = false }: { issuer?: Uint8Array; v1?: boolean } = {},
): Promise<{ file: string; der: Uint8Array }> {
  const { privateKey, publicKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
  const ecdsaWithSha256 = tlv(0x30, oid("1.2.840.10045.4.3.2"));
  const time = (s: string) => tlv(0x17, Buffer.from(s, "ascii"));
  const tbs = tlv(
    0x30,
    v1 ? new Uint8Array(0) : tlv(0xa0, tlv(0x02, Uint8Array.of(2))),
    tlv(0x02, Uint8Array.of(++serial)),
    ecdsaWithSha256,
    issuer,
    tlv(0x30, time("250101000000Z"), time("350101000000Z")),
    subject,
    publicKey.export({ type: "spki", format: "der" }),
  );
  const signature = sign("sha256", tbs, privateKey);
  const cert = tlv(0x30, tbs, ecdsaWithSha256, tlv(0x03, Uint8Array.of(0), signature));
  const file = join(dir, `crafted-${serial}.der`);
  await writeFile(file, cert);
  return { file, der: cert };
}

/** Issues a certificate with the openssl CLI, the way an operator would. */
async function opensslCert(subj: string, ...extra: string[]): Promise<{ file: string; der: Uint8Array }> {
  const base = join(dir, `cli-${++serial}`);
  await run("openssl", [
    "req",
    "-x509",
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:P-256",
    "-nodes",
    "-keyout",
    `${base}.key`,
    "-out",
    `${base}.pem`,
    "-days",
    "1",
    "-subj",
    subj,
    ...extra,
  ]);
  const pem = await readFile(`${base}.pem`, "utf8");
  return { file: `${base}.pem`, der: new Uint8Array(new x509.X509Certificate(pem).rawData) };
}

/** Asserts that openssl and formatSubjectRfc2253 both print `expected`. */
async function agree(
  t: { same: (found: unknown, wanted: unknown) => boolean },
  cert: { file: string; der: Uint8Array },
  expected: string,
): Promise<void> {
  t.same(await bothPrints(cert), { openssl: expected, ours: expected });
}

/** The subject as openssl prints it and as formatSubjectRfc2253 prints it, to compare with one expectation. */
async function bothPrints(cert: {
  file: string;
  der: Uint8Array;
}): Promise<{ openssl: string; ours: string }> {
  const inform = cert.file.endsWith(".der") ? "DER" : "PEM";
  return {
    openssl: await opensslSubject(cert.file, inform),
    ours: formatSubjectRfc2253(subjectDerOfCertificate(cert.der)),
  };
}

t.test("RDNs print in reverse DER order: O=acme, CN=frontend gives CN=frontend,O=acme", async (t) => {
  await agree(t, await opensslCert("/O=acme/CN=frontend"), "CN=frontend,O=acme");
});

t.test("an x509.Name prints the same as the DER it came from", async (t) => {
  const cert = await opensslCert('/DC=org/DC=example/O=acme, inc/OU=a\\+b/CN=say "hi"');
  const parsed = new x509.X509Certificate(cert.der);
  t.equal(formatSubjectRfc2253(parsed.subjectName), await opensslSubject(cert.file, "PEM"));
});

t.test("an ArrayBuffer and a Uint8Array view of the same DER print the same", async (t) => {
  const view = subjectDerOfCertificate((await opensslCert("/O=acme/CN=frontend")).der);
  const copy = view.slice().buffer;
  t.equal(formatSubjectRfc2253(copy), "CN=frontend,O=acme");
  t.equal(formatSubjectRfc2253(view), "CN=frontend,O=acme");
});

t.test("commas in a value are escaped", async (t) => {
  await agree(t, await opensslCert("/O=Acme, Inc./CN=a,b,c"), "CN=a\\,b\\,c,O=Acme\\, Inc.");
});

t.test("a plus in a single-valued RDN is escaped", async (t) => {
  await agree(t, await opensslCert("/CN=c\\+\\+/OU=a\\+b"), "OU=a\\+b,CN=c\\+\\+");
});

t.test("double quotes and backslashes are escaped", async (t) => {
  await agree(t, await opensslCert('/CN=say "hi" \\\\o'), 'CN=say \\"hi\\" \\\\o');
});

t.test("angle brackets and semicolons are escaped but equals signs are not", async (t) => {
  await agree(t, await opensslCert("/CN=<a>;b=c"), "CN=\\<a\\>\\;b=c");
});

t.test("a leading hash is escaped and an inner one is not", async (t) => {
  await agree(t, await opensslCert("/CN=#hash/OU=a#b"), "OU=a#b,CN=\\#hash");
});

t.test("a value that is only a hash stays bare, as OpenSSL prints it", async (t) => {
  // BoringSSL, which Envoy links, prints `CN=\#` here; OpenSSL is the reference (see subject.ts).
  await agree(t, await opensslCert("/CN=#"), "CN=#");
});

t.test("leading and trailing spaces are escaped and inner ones are not", async (t) => {
  await agree(
    t,
    await opensslCert("/CN= lead/OU=trail /L= /O=in side"),
    "O=in side,L=\\ ,OU=trail\\ ,CN=\\ lead",
  );
});

t.test("a multi-valued RDN joins its values with + in reverse DER order", async (t) => {
  // DER sorts a SET, so the CLI's order is lost: the encoded order here is OU, CN, UID.
  await agree(
    t,
    await opensslCert("/O=acme/CN=frontend+UID=42+OU=web", "-multivalue-rdn"),
    "UID=42+CN=frontend+OU=web,O=acme",
  );
});

t.test("values inside a multi-valued RDN print in reverse of their encoded order, not sorted", async (t) => {
  const subject = nameDer([
    [["2.5.4.10", utf8("acme")]],
    [
      ["2.5.4.3", utf8("a")],
      ["2.5.4.11", utf8("b")],
      ["2.5.4.7", utf8("c")],
    ],
  ]);
  await agree(t, await certWithSubject(subject), "L=c+OU=b+CN=a,O=acme");
});

t.test("UTF-8 values print each non-ASCII byte as \\XX", async (t) => {
  await agree(
    t,
    await opensslCert("/O=Ünïcödé 日本 😀/CN=café", "-utf8"),
    "CN=caf\\C3\\A9,O=\\C3\\9Cn\\C3\\AFc\\C3\\B6d\\C3\\A9 \\E6\\97\\A5\\E6\\9C\\AC \\F0\\9F\\98\\80",
  );
});

t.test("control characters print as \\XX", async (t) => {
  await agree(t, await opensslCert("/CN=a\u0001b\tc\u007fd"), "CN=a\\01b\\09c\\7Fd");
});

t.test("common attribute types print with OpenSSL's short names", async (t) => {
  await agree(
    t,
    await opensslCert(
      "/DC=org/DC=example/C=US/ST=CA/L=SF/street=1 Main/O=acme/OU=eng/CN=svc/emailAddress=a@example.org" +
        "/UID=u1/serialNumber=42/title=t/GN=g/SN=s/initials=i/pseudonym=p/organizationIdentifier=VATDE-1" +
        "/businessCategory=b/postalCode=9/jurisdictionC=US/name=n/dnQualifier=q/description=d",
    ),
    "description=d,dnQualifier=q,name=n,jurisdictionC=US,postalCode=9,businessCategory=b," +
      "organizationIdentifier=VATDE-1,pseudonym=p,initials=i,SN=s,GN=g,title=t,serialNumber=42,UID=u1," +
      "emailAddress=a@example.org,CN=svc,OU=eng,O=acme,street=1 Main,L=SF,ST=CA,C=US,DC=example,DC=org",
  );
});

t.test("an empty subject prints as an empty string", async (t) => {
  await agree(t, await certWithSubject(nameDer([])), "");
});

t.test("Latin-1, BMP and Universal strings are converted to UTF-8 before escaping", async (t) => {
  const t61 = tlv(0x14, Uint8Array.of(0x63, 0x61, 0x66, 0xe9)); // "café" in Latin-1
  const bmp = tlv(0x1e, Buffer.from([0x00, 0x41, 0x65, 0xe5, 0x00, 0x2c])); // "A日,"
  const universal = tlv(0x1c, Uint8Array.of(0, 0, 0, 0x78, 0, 1, 0xf6, 0x00)); // "x😀"
  const ia5 = tlv(0x16, Buffer.from("a@b", "ascii"));
  const printable = tlv(0x13, Buffer.from("US", "ascii"));
  const subject = nameDer([
    [["2.5.4.6", printable]],
    [["2.5.4.10", t61]],
    [["2.5.4.11", bmp]],
    [["2.5.4.3", universal]],
    [["1.2.840.113549.1.9.1", ia5]],
  ]);
  await agree(
    t,
    await certWithSubject(subject),
    "emailAddress=a@b,CN=x\\F0\\9F\\98\\80,OU=A\\E6\\97\\A5\\,,O=caf\\C3\\A9,C=US",
  );
});

t.test("an attribute type OpenSSL has no name for prints as its OID and a hex dump", async (t) => {
  const uuidOid = "2.25.329800735698586629295641978511506172918";
  const subject = nameDer([
    [["2.5.4.3", utf8("svc")]],
    [["1.3.6.1.4.1.99999.1", utf8("v,1")]],
    [[uuidOid, tlv(0x03, Uint8Array.of(0x00, 0xaa))]],
  ]);
  await agree(
    t,
    await certWithSubject(subject),
    `${uuidOid}=#030200AA,1.3.6.1.4.1.99999.1=#0C03762C31,CN=svc`,
  );
});

t.test("a value that is not a text type prints as a hex dump of its DER", async (t) => {
  const subject = nameDer([
    [["2.5.4.3", tlv(0x03, Uint8Array.of(0x00, 0xaa))]],
    [["2.5.4.10", tlv(0x30, tlv(0x02, Uint8Array.of(0x01)))]],
  ]);
  await agree(t, await certWithSubject(subject), "O=#3003020101,CN=#030200AA");
});

t.test("a name OpenSSL refuses to load is refused with NAME_MALFORMED", async (t) => {
  const cases: [string, Uint8Array][] = [
    ["invalid UTF-8", tlv(0x0c, Uint8Array.of(0x61, 0xff))],
    ["an overlong UTF-8 sequence", tlv(0x0c, Uint8Array.of(0xc0, 0xaf))],
    ["a UTF-8 encoded surrogate", tlv(0x0c, Uint8Array.of(0xed, 0xa0, 0x80))],
    ["a BMPString of odd length", tlv(0x1e, Uint8Array.of(0, 0x41, 0))],
    ["a lone surrogate in a BMPString", tlv(0x1e, Uint8Array.of(0xd8, 0x00))],
    ["a UniversalString beyond U+10FFFF", tlv(0x1c, Uint8Array.of(0, 0x11, 0, 0))],
    ["an INTEGER", tlv(0x02, Uint8Array.of(1))],
    ["an OCTET STRING", tlv(0x04, Uint8Array.of(1))],
    ["a UTCTime", tlv(0x17, Buffer.from("250101000000Z", "ascii"))],
    ["a VisibleString", tlv(0x1a, Buffer.from("x", "ascii"))],
  ];
  for (const [what, value] of cases) {
    for (const type of ["2.5.4.3", "1.3.6.1.4.1.99999.1"]) {
      const cert = await certWithSubject(nameDer([[[type, value]]]));
      await t.rejects(opensslSubject(cert.file, "DER"), `openssl refuses ${what} under ${type}`);
      t.throws(
        () => formatSubjectRfc2253(subjectDerOfCertificate(cert.der)),
        { name: "MtlsdError", code: "NAME_MALFORMED" },
        `we refuse ${what} under ${type}`,
      );
    }
  }
});

t.test("the subject is found in a v1 certificate, which has no version field", async (t) => {
  const subject = nameDer([[["2.5.4.3", utf8("leaf")]]]);
  const issuer = nameDer([[["2.5.4.3", utf8("issuer")]]]);
  await agree(t, await certWithSubject(subject, { issuer, v1: true }), "CN=leaf");
});

t.test("the subject, not the issuer, is taken from a certificate", async (t) => {
  const subject = nameDer([[["2.5.4.3", utf8("leaf")]]]);
  const issuer = nameDer([[["2.5.4.3", utf8("issuer")]]]);
  await agree(t, await certWithSubject(subject, { issuer }), "CN=leaf");
});

t.test("bytes that are not a certificate are refused with NAME_MALFORMED", async (t) => {
  const cases: [string, Uint8Array][] = [
    ["a Name", nameDer([])],
    ["a SET", tlv(0x31, tlv(0x30, new Uint8Array(0)))],
    ["a SEQUENCE holding a SET", tlv(0x30, tlv(0x31, new Uint8Array(0)))],
    ["a TBSCertificate that is too short", tlv(0x30, tlv(0x30, tlv(0x02, Uint8Array.of(1))))],
    [
      "a subject that is not a SEQUENCE",
      tlv(0x30, tlv(0x30, ...Array.from({ length: 5 }, () => tlv(0x02, Uint8Array.of(1))))),
    ],
  ];
  for (const [what, bytes] of cases) {
    t.throws(() => subjectDerOfCertificate(bytes), { name: "MtlsdError", code: "NAME_MALFORMED" }, what);
  }
});

t.test("bytes that are not a Name are refused with NAME_MALFORMED", async (t) => {
  const cases: [string, Uint8Array][] = [
    ["empty input", new Uint8Array(0)],
    ["not a SEQUENCE", tlv(0x31, new Uint8Array(0))],
    ["trailing bytes", Buffer.concat([nameDer([]), Uint8Array.of(0)])],
    ["an RDN that is not a SET", tlv(0x30, tlv(0x30, new Uint8Array(0)))],
    ["an empty RDN", tlv(0x30, tlv(0x31, new Uint8Array(0)))],
    ["a length past the end", Uint8Array.of(0x30, 0x05, 0x31)],
    ["an indefinite length", Uint8Array.of(0x30, 0x80, 0x00, 0x00)],
    ["a type that is not an OID", tlv(0x30, tlv(0x31, tlv(0x30, utf8("x"), utf8("y"))))],
    ["a truncated OID", tlv(0x30, tlv(0x31, tlv(0x30, tlv(0x06, Uint8Array.of(0x55, 0x84)), utf8("x"))))],
    ["an empty OID", tlv(0x30, tlv(0x31, tlv(0x30, tlv(0x06, new Uint8Array(0)), utf8("x"))))],
    [
      "an attribute with a third element",
      tlv(0x30, tlv(0x31, tlv(0x30, oid("2.5.4.3"), utf8("x"), utf8("y")))),
    ],
    ["an attribute that is not a SEQUENCE", tlv(0x30, tlv(0x31, tlv(0x31, oid("2.5.4.3"), utf8("x"))))],
    ["a multi-byte tag", Uint8Array.of(0x1f, 0x81, 0x00)],
    ["a constructed (BER) string", nameDer([[["2.5.4.3", tlv(0x2c, utf8("x"))]]])],
    ["a truncated length", Uint8Array.of(0x30, 0x82, 0x01)],
    // DER, not BER: the same strict element reader as certificates (src/identity/der-reader.ts).
    ["a long-form length under 128", Uint8Array.of(0x30, 0x81, 0x00)],
    ["a length with a leading zero byte", Uint8Array.of(0x30, 0x82, 0x00, 0x00)],
    ["tag 0 (end-of-contents)", Uint8Array.of(0x00, 0x00)],
    [
      "an OID arc with a leading 0x80",
      tlv(0x30, tlv(0x31, tlv(0x30, tlv(0x06, Uint8Array.of(0x55, 0x80, 0x03)), utf8("x")))),
    ],
  ];
  for (const [what, bytes] of cases) {
    t.throws(() => formatSubjectRfc2253(bytes), { name: "MtlsdError", code: "NAME_MALFORMED" }, what);
  }
});
