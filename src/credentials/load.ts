// Loads this workload's certificate chain, key and trust bundle from PEM files and proves they work together.

import { createHash, createPrivateKey, type KeyObject, X509Certificate } from "node:crypto";
import { once } from "node:events";
import { readFile } from "node:fs/promises";
import { duplexPair } from "node:stream";
import tls from "node:tls";
import { MtlsdError } from "../errors.ts";
import { checkLeafSvid, classifyVerifyError } from "../identity/index.ts";
import { x509 } from "../x509.ts";
import { checkCrls, crlOption } from "./crl.ts";

export interface CredentialFiles {
  cert: string;
  key: string;
  trustBundle: string;
  /** Optional PEM CRLs (`identity.crl`). */
  crl?: string;
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
  /** Fingerprint of the set of trusted roots: when it changes, TLS sessions from before must not resume. */
  readonly bundleSha256: string;
  /** PEM of the leaf followed by intermediates, as presented to peers. */
  readonly chainPem: string;
  /** PEM of the private key; not enumerable, so no logger or JSON dump can ever print it. */
  readonly keyPem: string;
  readonly bundlePem: string;
  /** `identity.crl` as loaded, when configured; TLS contexts check peers against it (see crlOption). */
  readonly crlPem?: string;
  readonly loadedAt: Date;
}

export interface LoadOptions {
  trustDomain: string;
  now?: Date;
}

const PEM_CERTIFICATE = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g;

/** Reads the three files named in `identity` and validates them; throws MtlsdError naming file and reason. */
export async function loadCredentials(files: CredentialFiles, options: LoadOptions): Promise<Credentials> {
  const [chainPem, keyPem, bundlePem, crlPem] = await Promise.all([
    readPem("identity.cert", files.cert),
    readPem("identity.key", files.key),
    readPem("identity.trustBundle", files.trustBundle),
    files.crl === undefined ? undefined : readPem("identity.crl", files.crl),
  ]);
  return validateCredentials({ chainPem, keyPem, bundlePem, crlPem }, files, options);
}

async function readPem(field: string, file: string): Promise<string> {
  try {
    return await readFile(file, "utf8");
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
  material: { chainPem: string; keyPem: string; bundlePem: string; crlPem?: string | undefined },
  files: CredentialFiles,
  options: LoadOptions,
): Promise<Credentials> {
  const now = options.now ?? new Date();
  const chain = parseCertificates("identity.cert", files.cert, material.chainPem);
  const bundle = parseCertificates("identity.trustBundle", files.trustBundle, material.bundlePem);
  bundle.forEach((cert, index) => {
    if (!cert.ca) {
      throw new MtlsdError(
        "BUNDLE_INVALID",
        `identity.trustBundle (${files.trustBundle}): certificate ${index + 1} (${cert.subject.replaceAll("\n", ", ")}) is not a CA certificate; the bundle holds trusted roots`,
      );
    }
  });
  const leaf = chain[0]!;
  const key = parseKey(files.key, material.keyPem);
  if (!leaf.checkPrivateKey(key)) {
    throw new MtlsdError(
      "CERT_KEY_MISMATCH",
      `identity.key (${files.key}) does not belong to the certificate in identity.cert (${files.cert}); a rotation may have written one file but not yet the other`,
    );
  }
  const notBefore = new Date(leaf.validFrom);
  const notAfter = new Date(leaf.validTo);
  if (now < notBefore) {
    throw new MtlsdError(
      "CERT_NOT_YET_VALID",
      `identity.cert (${files.cert}) is not valid until ${notBefore.toISOString()}; check this host's clock`,
    );
  }
  if (now > notAfter) {
    throw new MtlsdError(
      "CERT_EXPIRED",
      `identity.cert (${files.cert}) expired at ${notAfter.toISOString()} (this host's clock says ${now.toISOString()}); install a renewed certificate`,
    );
  }
  const svid = checkLeafSvid(new x509.X509Certificate(leaf.raw), "own", options.trustDomain);
  if (!svid.ok) {
    const code = svid.reason === "wrong_trust_domain" ? "WRONG_TRUST_DOMAIN" : "SVID_INVALID";
    throw new MtlsdError(code, `identity.cert (${files.cert}) is not a usable X509-SVID: ${svid.detail}`);
  }
  const crlPem = material.crlPem;
  if (crlPem !== undefined) {
    // Our own chain minus the root (a trust anchor is never checked for revocation).
    const issued = chain.filter((cert) => cert.issuer !== cert.subject).map((cert) => cert.raw);
    checkCrls(crlPem, files.crl ?? "identity.crl", issued, now);
  }
  await verifyChain(material.chainPem, material.keyPem, material.bundlePem, crlPem, files);
  const bundleSummaries = bundle.map(summarize);
  const credentials = {
    spiffeId: svid.spiffeId,
    trustDomain: svid.trustDomain,
    dnsNames: Object.freeze(svid.dnsNames),
    leaf: summarize(leaf),
    trustBundle: Object.freeze(bundleSummaries),
    bundleSha256: createHash("sha256")
      .update(
        bundleSummaries
          .map((cert) => cert.sha256)
          .sort()
          .join(","),
      )
      .digest("hex"),
    chainPem: material.chainPem,
    bundlePem: material.bundlePem,
    ...(crlPem === undefined ? {} : { crlPem }),
    loadedAt: now,
  };
  Object.defineProperty(credentials, "keyPem", { value: material.keyPem, enumerable: false });
  return Object.freeze(credentials as Credentials);
}

function parseCertificates(field: string, file: string, pem: string): X509Certificate[] {
  const blocks = pem.match(PEM_CERTIFICATE) ?? [];
  if (blocks.length === 0) {
    throw new MtlsdError("CERT_PARSE", `${field} (${file}): no PEM "BEGIN CERTIFICATE" block found`);
  }
  return blocks.map((block, index) => {
    try {
      return new X509Certificate(block);
    } catch (error) {
      throw new MtlsdError(
        "CERT_PARSE",
        `${field} (${file}): certificate ${index + 1} does not parse: ${(error as Error).message}`,
        { cause: error },
      );
    }
  });
}

function parseKey(file: string, pem: string): KeyObject {
  if (/ENCRYPTED/.test(pem)) {
    throw new MtlsdError(
      "KEY_PARSE",
      `identity.key (${file}): encrypted private keys are not supported; write it out decrypted (openssl pkey -in KEY -out PLAIN_KEY) and protect it with file permissions`,
    );
  }
  try {
    return createPrivateKey(pem);
  } catch (error) {
    throw new MtlsdError(
      "KEY_PARSE",
      `identity.key (${file}): not a PEM private key (PKCS#8, SEC1 or PKCS#1): ${(error as Error).message}`,
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
  crlPem: string | undefined,
  files: CredentialFiles,
): Promise<void> {
  const [serverEnd, clientEnd] = duplexPair();
  const context = {
    cert: chainPem,
    key,
    ca: bundlePem,
    minVersion: "TLSv1.2" as const,
    ...crlOption(crlPem),
  };
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
      const { reason, detail } = classifyVerifyError(code);
      if (reason === "revoked") {
        // Peers that load the same CRL would refuse us, or (a CRL problem) every peer would be refused.
        throw new MtlsdError(
          code === "CERT_REVOKED" ? "CERT_REVOKED" : "CRL_INVALID",
          code === "CERT_REVOKED"
            ? `identity.cert (${files.cert}) is revoked by a CRL in identity.crl (${files.crl}); install a new certificate`
            : `identity.crl (${files.crl}): ${detail}`,
        );
      }
      // The usual cause in practice: a cert file written with the leaf alone.
      const hint =
        (chainPem.match(PEM_CERTIFICATE) ?? []).length === 1
          ? "; identity.cert holds only the leaf: if an intermediate CA issued it, append the intermediate after it"
          : "";
      throw new MtlsdError(
        "CHAIN_UNTRUSTED",
        `identity.cert (${files.cert}) does not verify against identity.trustBundle (${files.trustBundle}): ${detail}${hint}`,
      );
    }
  } catch (error) {
    if (error instanceof MtlsdError) throw error;
    throw new MtlsdError(
      "CHAIN_UNTRUSTED",
      `identity.cert (${files.cert}) failed a TLS handshake test against identity.trustBundle (${files.trustBundle}): ${(error as Error).message}`,
      { cause: error },
    );
  } finally {
    client.destroy();
    serverEnd.destroy();
    server.close();
  }
}
