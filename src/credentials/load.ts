// Validates this workload's certificate chain, key and trust bundles (from files or the Workload API) and proves they work together.

import { createHash, createPrivateKey, type KeyObject, X509Certificate } from "node:crypto";
import { once } from "node:events";
import { readFile } from "node:fs/promises";
import { duplexPair } from "node:stream";
import tls from "node:tls";
import { MtlsdError } from "../errors.ts";
import {
  type CertificateFields,
  type CrlFields,
  checkLeafSvid,
  classifyVerifyError,
  KeyUsage,
  nameText,
  readCertificate,
  readCrl,
  sameSerial,
  verifySignature,
} from "../identity/index.ts";
import { bundleText } from "./der.ts";

export interface CredentialFiles {
  cert: string;
  key: string;
  trustBundle: string;
  /** Optional PEM CRL file (`identity.crl`). */
  crl?: string | undefined;
  /** Bundle files of federated trust domains (`identity.federation[].trustBundle`), by trust domain. */
  federation?: readonly { trustDomain: string; trustBundle?: string | undefined }[] | undefined;
}

/** The raw PEM text of one version of our credentials, from whichever source, before validation. */
export interface CredentialMaterial {
  chainPem: string;
  keyPem: string;
  bundlePem: string;
  crlPem?: string | undefined;
  /** PEM roots of federated trust domains, by trust domain name; a configured domain may be missing. */
  federated?: Readonly<Record<string, string>> | undefined;
}

/**
 * Where each part of a version came from, as error messages name it: `identity.cert (/etc/mtlsd/tls.crt)` for
 * files, the Workload API and its socket for an SVID. Every message a person reads says where to look.
 */
export interface CredentialLabels {
  cert: string;
  key: string;
  trustBundle: string;
  crl?: string | undefined;
  /** By federated trust domain. */
  federated?: Readonly<Record<string, string>> | undefined;
}

/** One trust domain's bundle: the roots a peer of that domain must chain to, and no other domain's. */
export interface TrustDomainBundle {
  readonly trustDomain: string;
  /** Empty when the source has not delivered this domain's bundle (yet): its peers are then refused. */
  readonly roots: readonly CertSummary[];
  readonly pem: string;
}

/** One CRL from `identity.crl`, as validated: which CA issued it and how long it is current. */
export interface CrlSummary {
  issuer: string;
  thisUpdate: Date;
  nextUpdate: Date | undefined;
  revoked: number;
}

export interface CertSummary {
  subject: string;
  serialHex: string;
  /** Lowercase hex SHA-256 of the DER certificate. */
  sha256: string;
  notBefore: Date;
  notAfter: Date;
}

/** One validated version of our credentials. Immutable; a rotation makes a new one. */
export interface Credentials {
  readonly spiffeId: string;
  readonly trustDomain: string;
  readonly dnsNames: readonly string[];
  readonly leaf: CertSummary;
  readonly trustBundle: readonly CertSummary[];
  /**
   * Fingerprint of every trust domain's set of trusted roots, ours and the federated ones: when it changes,
   * TLS sessions from before must not resume.
   */
  readonly bundleSha256: string;
  /** The federated trust domains of `identity.federation`, in config order, each with its own bundle. */
  readonly federation: readonly TrustDomainBundle[];
  /**
   * Our roots and every federated domain's, for OpenSSL's `ca`: it must accept any of them for a chain to
   * verify at all; which domain's roots a peer must chain to is decided after the handshake (identity/).
   */
  readonly caPem: string;
  /** PEM of the leaf followed by intermediates, as presented to peers. */
  readonly chainPem: string;
  /** PEM of the private key; not enumerable, so no logger or JSON dump can ever print it. */
  readonly keyPem: string;
  readonly bundlePem: string;
  /**
   * The `identity.crl` file as read (absent when not configured): one or more `X509 CRL` PEM blocks, each
   * already checked to be signed by a CA in the bundle or an intermediate of our chain and to be current, and
   * together covering every CA of our own chain. The TLS contexts enforce them: Node's
   * `createSecureContext({ crl })` reads only the first CRL of a string, so contexts get `crlBlocks` (one
   * string per CRL, see crlOption) to reach every CA's list.
   */
  readonly crlPem?: string;
  readonly crlBlocks?: readonly string[];
  readonly crl?: readonly CrlSummary[];
  readonly loadedAt: Date;
}

export interface LoadOptions {
  trustDomain: string;
  /** Federated trust domains (`identity.federation[].trustDomain`): only these get a bundle of their own. */
  federation?: readonly string[] | undefined;
  now?: Date;
}

const PEM_CERTIFICATE = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g;
const PEM_CRL = /-----BEGIN X509 CRL-----[\s\S]+?-----END X509 CRL-----/g;

/** Reads the files named in `identity` and validates them; throws MtlsdError naming file and reason. */
export async function loadCredentials(files: CredentialFiles, options: LoadOptions): Promise<Credentials> {
  return validateCredentials(await readCredentialMaterial(files), fileLabels(files), options);
}

/** Reads the files as they are now, without judging them: a reload hashes this to see whether anything changed. */
export async function readCredentialMaterial(files: CredentialFiles): Promise<CredentialMaterial> {
  const [chainPem, keyPem, bundlePem, crlPem, federated] = await Promise.all([
    readPem("identity.cert", files.cert),
    readPem("identity.key", files.key),
    readPem("identity.trustBundle", files.trustBundle),
    files.crl ? readPem("identity.crl", files.crl) : undefined,
    readFederationFiles(files.federation),
  ]);
  return { chainPem, keyPem, bundlePem, crlPem, ...(federated ? { federated } : {}) };
}

/** Reads the federated bundles that come from files (`identity.federation[].trustBundle`); undefined without any. */
export async function readFederationFiles(
  federation: CredentialFiles["federation"],
): Promise<Record<string, string> | undefined> {
  const entries = (federation ?? []).flatMap((entry, index) =>
    entry.trustBundle ? [{ index, trustDomain: entry.trustDomain, file: entry.trustBundle }] : [],
  );
  if (entries.length === 0) return undefined;
  const pems = await Promise.all(
    entries.map(async ({ index, file }) => {
      const field = `identity.federation[${index}].trustBundle`;
      // A partner may hand over its roots as DER (`openssl x509 -outform der`) as well as PEM.
      const content = await readFileOrExplain(field, file);
      try {
        return bundleText(content, `${field} (${file})`);
      } catch (error) {
        throw new MtlsdError(
          "FEDERATED_BUNDLE_INVALID",
          `${(error as Error).message}; expected PEM or DER root certificates`,
          { cause: error },
        );
      }
    }),
  );
  return Object.fromEntries(entries.map(({ trustDomain }, index) => [trustDomain, pems[index]!]));
}

/** How errors name each file: the config field and the path. */
export function fileLabels(files: CredentialFiles): CredentialLabels {
  return {
    cert: `identity.cert (${files.cert})`,
    key: `identity.key (${files.key})`,
    trustBundle: `identity.trustBundle (${files.trustBundle})`,
    ...(files.crl ? { crl: `identity.crl (${files.crl})` } : {}),
    federated: federationFileLabels(files.federation),
  };
}

/** Labels of the federated bundles that come from files, by trust domain. */
export function federationFileLabels(federation: CredentialFiles["federation"]): Record<string, string> {
  return Object.fromEntries(
    (federation ?? []).flatMap((entry, index) =>
      entry.trustBundle
        ? [[entry.trustDomain, `identity.federation[${index}].trustBundle (${entry.trustBundle})`]]
        : [],
    ),
  );
}

/** The material a validated version was made from, to compare with what a source holds now. */
export function materialOf(credentials: Credentials): CredentialMaterial {
  const federated = credentials.federation.filter((bundle) => bundle.pem !== "");
  return {
    chainPem: credentials.chainPem,
    keyPem: credentials.keyPem,
    bundlePem: credentials.bundlePem,
    crlPem: credentials.crlPem,
    ...(federated.length > 0
      ? { federated: Object.fromEntries(federated.map((bundle) => [bundle.trustDomain, bundle.pem])) }
      : {}),
  };
}

/** SHA-256 over every part's content: equal digests mean nothing changed at the source. */
export function materialSha256(material: CredentialMaterial): string {
  const hash = createHash("sha256");
  const federated = Object.entries(material.federated ?? {}).sort(([a], [b]) => (a < b ? -1 : 1));
  for (const part of [
    material.chainPem,
    material.keyPem,
    material.bundlePem,
    material.crlPem ?? "",
    ...federated.flat(),
  ]) {
    // Length-prefixed, so moving text from one file to the next cannot produce the same digest.
    hash.update(`${Buffer.byteLength(part)}:`).update(part);
  }
  return hash.digest("hex");
}

async function readPem(field: string, file: string): Promise<string> {
  return (await readFileOrExplain(field, file)).toString("utf8");
}

async function readFileOrExplain(field: string, file: string): Promise<Buffer> {
  try {
    return await readFile(file);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    const reason =
      code === "ENOENT" ? "no such file" : code === "EACCES" ? "permission denied" : (error as Error).message;
    throw new MtlsdError("CREDENTIAL_UNREADABLE", `${field} (${file}): cannot read: ${reason}`, {
      cause: error,
    });
  }
}

/**
 * Validate before use: key matches cert, validity window, X509-SVID rules, trust domain, and a real TLS
 * handshake of the chain against the bundle in both roles, so OpenSSL itself says whether peers will accept it.
 */
export async function validateCredentials(
  material: CredentialMaterial,
  labels: CredentialLabels,
  options: LoadOptions,
): Promise<Credentials> {
  const now = options.now ?? new Date();
  const chain = parseCertificates(labels.cert, material.chainPem);
  const bundle = parseCertificates(labels.trustBundle, material.bundlePem);
  checkRoots(labels.trustBundle, bundle);
  const federation = (options.federation ?? []).map((trustDomain) =>
    federatedBundle(trustDomain, material.federated?.[trustDomain], labels),
  );
  const leaf = chain[0]!;
  const key = parseKey(labels.key, material.keyPem);
  if (!leaf.checkPrivateKey(key)) {
    throw new MtlsdError(
      "CERT_KEY_MISMATCH",
      `${labels.key} does not belong to the certificate in ${labels.cert}; a rotation may have written one file but not yet the other`,
    );
  }
  const notBefore = new Date(leaf.validFrom);
  const notAfter = new Date(leaf.validTo);
  if (now < notBefore) {
    throw new MtlsdError(
      "CERT_NOT_YET_VALID",
      `${labels.cert} is not valid until ${notBefore.toISOString()}; check this host's clock`,
    );
  }
  if (now > notAfter) {
    throw new MtlsdError(
      "CERT_EXPIRED",
      `${labels.cert} expired at ${notAfter.toISOString()} (this host's clock says ${now.toISOString()}); install a renewed certificate`,
    );
  }
  let leafFields: CertificateFields;
  try {
    leafFields = readCertificate(leaf.raw);
  } catch (error) {
    throw new MtlsdError(
      "SVID_INVALID",
      `${labels.cert} is not a usable X509-SVID: certificate does not parse: ${(error as Error).message}`,
      { cause: error },
    );
  }
  const svid = checkLeafSvid(leafFields, "own", options.trustDomain);
  if (!svid.ok) {
    const code = svid.reason === "wrong_trust_domain" ? "WRONG_TRUST_DOMAIN" : "SVID_INVALID";
    throw new MtlsdError(code, `${labels.cert} is not a usable X509-SVID: ${svid.detail}`);
  }
  await verifyChain(material.chainPem, material.keyPem, material.bundlePem, labels);
  const federatedRoots = federation.flatMap((entry) => entry.certificates);
  const crl =
    material.crlPem === undefined
      ? undefined
      : await checkCrl(material.crlPem, [...bundle, ...federatedRoots], chain, labels, now);
  const bundleSummaries = bundle.map(summarize);
  const credentials = {
    spiffeId: svid.spiffeId,
    trustDomain: svid.trustDomain,
    dnsNames: Object.freeze(svid.dnsNames),
    leaf: summarize(leaf),
    trustBundle: Object.freeze(bundleSummaries),
    bundleSha256: trustSha256(bundleSummaries, federation),
    federation: Object.freeze(federation.map(({ bundle }) => bundle)),
    caPem: [material.bundlePem, ...federation.map(({ bundle }) => bundle.pem)]
      .filter((pem) => pem !== "")
      .join("\n"),
    chainPem: material.chainPem,
    bundlePem: material.bundlePem,
    ...(crl
      ? { crlPem: material.crlPem, crlBlocks: Object.freeze(crl.blocks), crl: Object.freeze(crl.summaries) }
      : {}),
    loadedAt: now,
  };
  Object.defineProperty(credentials, "keyPem", { value: material.keyPem, enumerable: false });
  return Object.freeze(credentials as Credentials);
}

/**
 * The fingerprint of every domain's roots: ours alone as before federation existed, then each federated domain
 * by name, so moving a root from one domain to another changes it too.
 */
function trustSha256(
  own: readonly CertSummary[],
  federation: readonly { bundle: TrustDomainBundle }[],
): string {
  const shas = (roots: readonly CertSummary[]) =>
    roots
      .map((cert) => cert.sha256)
      .sort()
      .join(",");
  let text = shas(own);
  for (const { bundle } of federation) text += `|${bundle.trustDomain}=${shas(bundle.roots)}`;
  return createHash("sha256").update(text).digest("hex");
}

function checkRoots(label: string, roots: readonly X509Certificate[]): void {
  roots.forEach((cert, index) => {
    if (!cert.ca) {
      throw new MtlsdError(
        "BUNDLE_INVALID",
        `${label}: certificate ${index + 1} (${cert.subject.replaceAll("\n", ", ")}) is not a CA certificate; the bundle holds trusted roots`,
      );
    }
  });
}

/**
 * A federated domain's bundle. A source that delivered nothing for a configured domain (the Workload API
 * before the federation relationship exists) leaves it empty, and that domain's peers are refused; what was
 * delivered must be CA certificates in PEM, or the whole version is refused like any other bad part.
 */
function federatedBundle(
  trustDomain: string,
  pem: string | undefined,
  labels: CredentialLabels,
): { bundle: TrustDomainBundle; certificates: X509Certificate[] } {
  if (pem === undefined) {
    return { bundle: Object.freeze({ trustDomain, roots: Object.freeze([]), pem: "" }), certificates: [] };
  }
  const label = labels.federated?.[trustDomain] ?? `the federated bundle of ${trustDomain}`;
  if (pem.trim() === "") {
    throw new MtlsdError(
      "FEDERATED_BUNDLE_INVALID",
      `${label} is empty; it must hold the PEM root certificates of trust domain ${trustDomain}`,
    );
  }
  let certificates: X509Certificate[];
  try {
    certificates = parseCertificates(label, pem);
    checkRoots(label, certificates);
  } catch (error) {
    throw new MtlsdError(
      "FEDERATED_BUNDLE_INVALID",
      `${(error as Error).message} (the bundle of federated trust domain ${trustDomain})`,
      { cause: error },
    );
  }
  return {
    bundle: Object.freeze({ trustDomain, roots: Object.freeze(certificates.map(summarize)), pem }),
    certificates,
  };
}

function parseCertificates(label: string, pem: string): X509Certificate[] {
  const blocks = pem.match(PEM_CERTIFICATE) ?? [];
  if (blocks.length === 0) {
    throw new MtlsdError("CERT_PARSE", `${label}: no PEM "BEGIN CERTIFICATE" block found`);
  }
  return blocks.map((block, index) => {
    try {
      return new X509Certificate(block);
    } catch (error) {
      throw new MtlsdError(
        "CERT_PARSE",
        `${label}: certificate ${index + 1} does not parse: ${(error as Error).message}`,
        { cause: error },
      );
    }
  });
}

/**
 * The `crl` option for tls.createSecureContext: one PEM string per CRL (Node reads only the first CRL of a
 * string), nothing without `identity.crl`. Built once per credential version, never per connection.
 */
export function crlOption(credentials: Pick<Credentials, "crlBlocks">): { crl?: string[] } {
  return credentials.crlBlocks ? { crl: [...credentials.crlBlocks] } : {};
}

/**
 * A CRL must come from a CA whose certificates we accept (a bundle root, or an intermediate we present),
 * be signed by it, and be current: OpenSSL refuses every peer of a CA whose CRL is stale once CRLs are enforced.
 *
 * And the file must cover our own chain. Node turns on X509_V_FLAG_CRL_CHECK and X509_V_FLAG_CRL_CHECK_ALL as
 * soon as a context gets a CRL, so OpenSSL then wants a CRL from the issuer of every certificate in a peer's
 * chain: the intermediate's (for leaves) and the root's (for intermediates). A file with only the
 * intermediate's CRL would refuse every peer with UNABLE_TO_GET_CRL. Peers of the same trust domain normally
 * share our chain's CAs, so checking that our own chain is covered catches that mistake at load instead of as
 * an outage. Our own certificates must not be on those CRLs either: peers that load them would refuse us.
 */
async function checkCrl(
  pem: string,
  bundle: readonly X509Certificate[],
  chain: readonly X509Certificate[],
  labels: CredentialLabels,
  now: Date,
): Promise<{ blocks: string[]; summaries: CrlSummary[] }> {
  const where = labels.crl ?? "the CRLs";
  const blocks = pem.match(PEM_CRL) ?? [];
  if (blocks.length === 0) {
    // Some tools label CRLs "BEGIN CRL"; OpenSSL, and so Node, read only "BEGIN X509 CRL".
    const hint = /-----BEGIN CRL-----/.test(pem)
      ? ': it has "BEGIN CRL" blocks, which OpenSSL does not read; relabel them "X509 CRL" (openssl crl -in FILE -out FILE)'
      : "";
    throw new MtlsdError("CRL_PARSE", `${where}: no PEM "BEGIN X509 CRL" block found${hint}`);
  }
  const cas = [...bundle, ...chain.slice(1)]
    .filter((cert) => cert.ca)
    .map((node) => {
      try {
        const fields = readCertificate(node.raw);
        return { node, fields, subject: nameText(fields.subjectDer) };
      } catch (error) {
        throw new MtlsdError(
          "CRL_UNTRUSTED",
          `${where}: the CA ${node.subject.replaceAll("\n", ", ")} that would sign CRLs does not parse: ${(error as Error).message}`,
          { cause: error },
        );
      }
    });
  const summaries: CrlSummary[] = [];
  const signed: { crl: CrlFields; signer: X509Certificate }[] = [];
  for (const [index, block] of blocks.entries()) {
    let crl: CrlFields;
    let issuer: string;
    try {
      crl = readCrl(pemBody(block));
      issuer = nameText(crl.issuerDer);
    } catch (error) {
      throw new MtlsdError(
        "CRL_PARSE",
        `${where}: CRL ${index + 1} does not parse: ${(error as Error).message}`,
        { cause: error },
      );
    }
    const label = `CRL ${index + 1} (issuer ${issuer})`;
    const named = cas.filter((ca) => ca.subject === issuer);
    const signer = named.find((ca) =>
      verifySignature(crl.tbs, crl.signatureAlgorithm, crl.signature, ca.node.publicKey),
    );
    if (!signer) {
      throw new MtlsdError(
        "CRL_UNTRUSTED",
        named.length === 0
          ? `${where}: ${label} was not issued by a CA in ${labels.trustBundle} or an intermediate in ${labels.cert}; a CRL can only revoke certificates of a CA we trust`
          : `${where}: ${label} names a trusted CA as issuer but its signature does not verify with that CA's key; the file is corrupt or forged`,
      );
    }
    const keyUsage = signer.fields.keyUsage;
    if (keyUsage && (keyUsage.usages & KeyUsage.cRLSign) === 0) {
      throw new MtlsdError(
        "CRL_UNTRUSTED",
        `${where}: ${label} is signed by a CA whose key usage lacks cRLSign, so TLS libraries will not accept it`,
      );
    }
    if (crl.thisUpdate > now) {
      throw new MtlsdError(
        "CRL_NOT_YET_VALID",
        `${where}: ${label} is not valid until ${crl.thisUpdate.toISOString()}; check this host's clock`,
      );
    }
    if (crl.nextUpdate && crl.nextUpdate < now) {
      throw new MtlsdError(
        "CRL_EXPIRED",
        `${where}: ${label} expired at ${crl.nextUpdate.toISOString()} (this host's clock says ${now.toISOString()}); a stale CRL would refuse every peer of that CA: publish a fresh one`,
      );
    }
    signed.push({ crl, signer: signer.node });
    summaries.push({
      issuer,
      thisUpdate: crl.thisUpdate,
      nextUpdate: crl.nextUpdate,
      revoked: crl.revokedSerials.length,
    });
  }
  // A self-signed root in the chain is a trust anchor: the root's own CRL covers it along with what it issued.
  for (const [index, cert] of chain.entries()) {
    if (cert.issuer === cert.subject) continue;
    let parsed: CertificateFields;
    let issuer: string;
    let subject: string;
    try {
      parsed = readCertificate(cert.raw);
      issuer = nameText(parsed.issuerDer);
      subject = nameText(parsed.subjectDer);
    } catch (error) {
      throw new MtlsdError(
        "CERT_PARSE",
        `${labels.cert}: certificate ${index + 1} does not parse: ${(error as Error).message}`,
        { cause: error },
      );
    }
    const covering = signed.filter(({ signer }) => cert.checkIssued(signer) && cert.verify(signer.publicKey));
    if (covering.length === 0) {
      throw new MtlsdError(
        "CRL_INCOMPLETE",
        `${where}: no CRL from ${issuer}, which issued ${subject}; revocation is checked for every certificate in a chain, so the file needs a CRL from each CA, the root's included (an empty CRL will do)`,
      );
    }
    if (covering.some(({ crl }) => crl.revokedSerials.some((serial) => sameSerial(serial, parsed.serial)))) {
      const which = index === 0 ? "the certificate" : `the intermediate CA ${subject} in it`;
      throw new MtlsdError(
        "CERT_REVOKED",
        `${labels.cert} is revoked by a CRL in ${where}: ${which} (serial ${parsed.serialHex}) is listed by ${issuer}; peers that load this CRL refuse it, so install a new certificate`,
      );
    }
  }
  return { blocks, summaries };
}

/** The DER inside one PEM block (the regular expressions above found its BEGIN and END lines). */
function pemBody(block: string): Uint8Array {
  const base64 = block.replace(/-----(BEGIN|END) [A-Z0-9 ]+-----/g, "").replace(/\s+/g, "");
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(base64)) throw new Error("the PEM block is not base64");
  return Buffer.from(base64, "base64");
}

function parseKey(label: string, pem: string): KeyObject {
  if (/ENCRYPTED/.test(pem)) {
    throw new MtlsdError(
      "KEY_PARSE",
      `${label}: encrypted private keys are not supported; write it out decrypted (openssl pkey -in KEY -out PLAIN_KEY) and protect it with file permissions`,
    );
  }
  try {
    return createPrivateKey(pem);
  } catch (error) {
    throw new MtlsdError(
      "KEY_PARSE",
      `${label}: not a PEM private key (PKCS#8, SEC1 or PKCS#1): ${(error as Error).message}`,
      { cause: error },
    );
  }
}

function summarize(cert: X509Certificate): CertSummary {
  return {
    subject: cert.subject.split("\n").reverse().join(","),
    serialHex: cert.serialNumber.toLowerCase(),
    sha256: cert.fingerprint256.replaceAll(":", "").toLowerCase(),
    notBefore: new Date(cert.validFrom),
    notAfter: new Date(cert.validTo),
  };
}

/**
 * Runs an in-memory TLS handshake of our chain against itself with the bundle as trust anchor: the server
 * side verifies it for client use, the client side for server use, exactly as peers will.
 */
async function verifyChain(
  chainPem: string,
  key: string,
  bundlePem: string,
  labels: CredentialLabels,
): Promise<void> {
  const [serverEnd, clientEnd] = duplexPair();
  const context = { cert: chainPem, key, ca: bundlePem, minVersion: "TLSv1.2" as const };
  const server = tls.createServer({ ...context, requestCert: true, rejectUnauthorized: false });
  const serverVerdict = once(server, "secureConnection").then(
    ([socket]) => (socket as tls.TLSSocket).authorizationError,
  );
  const serverFailure = once(server, "tlsClientError").then(([error]) => {
    throw error;
  });
  server.emit("connection", serverEnd);
  const client = tls.connect({
    ...context,
    socket: clientEnd,
    rejectUnauthorized: false,
    checkServerIdentity: () => undefined,
  });
  try {
    const [clientError, serverError] = await Promise.all([
      once(client, "secureConnect").then(() => client.authorizationError),
      Promise.race([serverVerdict, serverFailure]),
    ]);
    const error = serverError ?? clientError;
    if (error) {
      const code = typeof error === "string" ? error : String(error);
      const { detail } = classifyVerifyError(code);
      // The usual cause in practice: a cert file written with the leaf alone.
      const hint =
        (chainPem.match(PEM_CERTIFICATE) ?? []).length === 1
          ? "; identity.cert holds only the leaf: if an intermediate CA issued it, append the intermediate after it"
          : "";
      throw new MtlsdError(
        "CHAIN_UNTRUSTED",
        `${labels.cert} does not verify against ${labels.trustBundle}: ${detail}${hint}`,
      );
    }
  } catch (error) {
    if (error instanceof MtlsdError) throw error;
    throw new MtlsdError(
      "CHAIN_UNTRUSTED",
      `${labels.cert} failed a TLS handshake test against ${labels.trustBundle}: ${(error as Error).message}`,
      { cause: error },
    );
  } finally {
    client.destroy();
    serverEnd.destroy();
    server.close();
  }
}
