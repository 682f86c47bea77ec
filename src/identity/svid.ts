// The X509-SVID rules (spiffe/spiffe standards/X509-SVID.md) applied to a leaf certificate, ours or a peer's.
import { type CertificateFields, KeyUsage } from "./certificate-der.ts";
import { parseSpiffeId } from "./spiffe-id.ts";

/** What the certificate is used as: our own (server and client), a peer client, a peer server. */
export type SvidRole = "own" | "client" | "server";

export type SvidCheck =
  | { ok: true; spiffeId: string; trustDomain: string; uris: string[]; dnsNames: string[] }
  | { ok: false; reason: "bad_svid" | "wrong_trust_domain"; detail: string; spiffeId?: string };

/** One rule a certificate breaks, with the refusal reason it maps to. */
export interface SvidProblem {
  reason: "bad_svid" | "wrong_trust_domain";
  detail: string;
}

/** Every rule a leaf breaks, in the order checkLeafSvid reports the first one; for `mtlsd certs inspect`. */
export interface SvidReport {
  /** The SPIFFE ID when the single URI SAN parses as one. */
  spiffeId?: string;
  uris: string[];
  dnsNames: string[];
  problems: SvidProblem[];
}

const SERVER_AUTH = "1.3.6.1.5.5.7.3.1";
const CLIENT_AUTH = "1.3.6.1.5.5.7.3.2";

function sanNames(cert: CertificateFields): { uris: string[]; dnsNames: string[] } {
  return {
    uris: [...(cert.subjectAltName?.uris ?? [])],
    dnsNames: [...(cert.subjectAltName?.dnsNames ?? [])],
  };
}

/**
 * Checks a leaf against X509-SVID §4 and our trust domain (or any of the trust domains we accept: ours first,
 * then the federated ones) and lists every problem. Identities are read only from URI-type SANs parsed from
 * the DER (readCertificate), never from a rendered string (the CVE-2021-44532 class of SAN-string injection).
 */
export function svidProblems(
  cert: CertificateFields,
  role: SvidRole,
  trustDomain: string | readonly string[],
): SvidReport {
  const { uris, dnsNames } = sanNames(cert);
  const problems: SvidProblem[] = [];
  const bad = (detail: string) => problems.push({ reason: "bad_svid", detail });
  let spiffeId: string | undefined;
  let idTrustDomain: string | undefined;
  // §2: an X509-SVID MUST contain exactly one URI SAN.
  if (uris.length !== 1) {
    bad(`has ${uris.length} URI SANs; an X509-SVID has exactly one (the SPIFFE ID)`);
  } else {
    const uri = uris[0]!;
    const parsed = parseSpiffeId(uri);
    if (!parsed.ok) bad(`URI SAN ${JSON.stringify(uri)} is not a SPIFFE ID: ${parsed.reason}`);
    else {
      spiffeId = parsed.id.uri;
      idTrustDomain = parsed.id.trustDomain;
      if (parsed.id.path === "") bad(`leaf SPIFFE ID ${spiffeId} has no path`);
    }
  }
  // §4.1: a leaf MUST set cA to false.
  if (cert.basicConstraints?.ca) {
    bad("leaf has CA:TRUE; an X509-SVID leaf is not a CA");
  }
  // §4.3: key usage MUST be present and critical, with digitalSignature and without keyCertSign or cRLSign.
  const keyUsage = cert.keyUsage;
  if (!keyUsage) bad("leaf has no key usage extension");
  else {
    if (!keyUsage.critical) bad("leaf key usage extension is not marked critical");
    if (!(keyUsage.usages & KeyUsage.digitalSignature)) bad("leaf key usage lacks digitalSignature");
    if (keyUsage.usages & (KeyUsage.keyCertSign | KeyUsage.cRLSign)) {
      bad("leaf key usage allows keyCertSign or cRLSign");
    }
  }
  // §4.4: when present, extended key usage must allow the role the certificate plays here (CVE-2022-21657:
  // a proxy that skipped this accepted server-only certificates as client credentials).
  const eku = cert.extendedKeyUsage;
  if (eku) {
    const usages = eku.usages;
    const needed =
      role === "own" ? [SERVER_AUTH, CLIENT_AUTH] : role === "client" ? [CLIENT_AUTH] : [SERVER_AUTH];
    for (const oid of needed) {
      if (!usages.includes(oid))
        bad(`extended key usage lacks ${oid === SERVER_AUTH ? "serverAuth" : "clientAuth"}`);
    }
  }
  const accepted = typeof trustDomain === "string" ? [trustDomain] : trustDomain;
  if (idTrustDomain !== undefined && !accepted.includes(idTrustDomain)) {
    const expected =
      accepted.length === 1
        ? accepted[0]
        : `${accepted[0]} or a federated trust domain (${accepted.slice(1).join(", ")})`;
    problems.push({
      reason: "wrong_trust_domain",
      detail: `SPIFFE ID ${spiffeId} is in trust domain ${idTrustDomain}, expected ${expected}`,
    });
  }
  return { ...(spiffeId === undefined ? {} : { spiffeId }), uris, dnsNames, problems };
}

/** Checks a leaf against X509-SVID §4 and our trust domain; the first problem decides, as a peer is refused for one. */
export function checkLeafSvid(
  cert: CertificateFields,
  role: SvidRole,
  trustDomain: string | readonly string[],
): SvidCheck {
  const report = svidProblems(cert, role, trustDomain);
  const first = report.problems[0];
  if (first) {
    return { ok: false, ...first, ...(report.spiffeId === undefined ? {} : { spiffeId: report.spiffeId }) };
  }
  return {
    ok: true,
    spiffeId: report.spiffeId!,
    // The ID parsed, so its trust domain is what follows the scheme (and is one we accept).
    trustDomain: report.spiffeId!.slice("spiffe://".length).split("/")[0]!,
    uris: report.uris,
    dnsNames: report.dnsNames,
  };
}

/**
 * The X509-SVID rules for a signing (CA) certificate (§3.2, §4.1, §4.3): cA true, key usage critical with
 * keyCertSign, and a SPIFFE ID, when present, without a path. Returns every rule broken.
 */
export function signingCertProblems(cert: CertificateFields): string[] {
  const problems: string[] = [];
  const constraints = cert.basicConstraints;
  if (!constraints?.ca)
    problems.push("basic constraints do not say CA:TRUE, so it may not sign certificates");
  else if (!constraints.critical)
    problems.push("basic constraints extension is not marked critical (RFC 5280 §4.2.1.9)");
  const keyUsage = cert.keyUsage;
  if (!keyUsage) problems.push("has no key usage extension");
  else {
    if (!keyUsage.critical) problems.push("key usage extension is not marked critical");
    if (!(keyUsage.usages & KeyUsage.keyCertSign)) problems.push("key usage lacks keyCertSign");
  }
  for (const uri of sanNames(cert).uris) {
    const parsed = parseSpiffeId(uri);
    if (parsed.ok && parsed.id.path !== "") {
      problems.push(
        `SPIFFE ID ${uri} has a path; a signing certificate's SPIFFE ID is the trust domain alone`,
      );
    }
  }
  return problems;
}
