// The X509-SVID rules (spiffe/spiffe standards/X509-SVID.md) applied to a leaf certificate, ours or a peer's.
import { x509 } from "../x509.ts";
import { parseSpiffeId } from "./spiffe-id.ts";

/** What the certificate is used as: our own (server and client), a peer client, a peer server. */
export type SvidRole = "own" | "client" | "server";

export type SvidCheck =
  | { ok: true; spiffeId: string; trustDomain: string; uris: string[]; dnsNames: string[] }
  | { ok: false; reason: "bad_svid" | "wrong_trust_domain"; detail: string; spiffeId?: string };

const SERVER_AUTH = "1.3.6.1.5.5.7.3.1";
const CLIENT_AUTH = "1.3.6.1.5.5.7.3.2";

/**
 * Checks a leaf against X509-SVID §4 and our trust domain. Identities are read only from URI-type SANs
 * parsed from ASN.1, never from a rendered string (the CVE-2021-44532 class of SAN-string injection).
 */
export function checkLeafSvid(cert: x509.X509Certificate, role: SvidRole, trustDomain: string): SvidCheck {
  const uris: string[] = [];
  const dnsNames: string[] = [];
  const san = cert.getExtension(x509.SubjectAlternativeNameExtension);
  for (const name of san?.names.items ?? []) {
    if (name.type === "url") uris.push(name.value);
    else if (name.type === "dns") dnsNames.push(name.value);
  }
  // §2: an X509-SVID MUST contain exactly one URI SAN.
  if (uris.length !== 1) {
    return {
      ok: false,
      reason: "bad_svid",
      detail: `has ${uris.length} URI SANs; an X509-SVID has exactly one (the SPIFFE ID)`,
    };
  }
  const uri = uris[0]!;
  const parsed = parseSpiffeId(uri);
  if (!parsed.ok) {
    return {
      ok: false,
      reason: "bad_svid",
      detail: `URI SAN ${JSON.stringify(uri)} is not a SPIFFE ID: ${parsed.reason}`,
    };
  }
  const spiffeId = parsed.id.uri;
  if (parsed.id.path === "") {
    return { ok: false, reason: "bad_svid", detail: `leaf SPIFFE ID ${spiffeId} has no path`, spiffeId };
  }
  // §4.1: a leaf MUST set cA to false.
  if (cert.getExtension(x509.BasicConstraintsExtension)?.ca) {
    return {
      ok: false,
      reason: "bad_svid",
      detail: "leaf has CA:TRUE; an X509-SVID leaf is not a CA",
      spiffeId,
    };
  }
  // §4.3: key usage MUST be present and critical, with digitalSignature and without keyCertSign or cRLSign.
  const keyUsage = cert.getExtension(x509.KeyUsagesExtension);
  if (!keyUsage)
    return { ok: false, reason: "bad_svid", detail: "leaf has no key usage extension", spiffeId };
  if (!keyUsage.critical) {
    return {
      ok: false,
      reason: "bad_svid",
      detail: "leaf key usage extension is not marked critical",
      spiffeId,
    };
  }
  if (!(keyUsage.usages & x509.KeyUsageFlags.digitalSignature)) {
    return { ok: false, reason: "bad_svid", detail: "leaf key usage lacks digitalSignature", spiffeId };
  }
  if (keyUsage.usages & (x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign)) {
    return {
      ok: false,
      reason: "bad_svid",
      detail: "leaf key usage allows keyCertSign or cRLSign",
      spiffeId,
    };
  }
  // §4.4: when present, extended key usage must allow the role the certificate plays here (CVE-2022-21657:
  // a proxy that skipped this accepted server-only certificates as client credentials).
  const eku = cert.getExtension(x509.ExtendedKeyUsageExtension);
  if (eku) {
    const usages = eku.usages.map(String);
    const needed =
      role === "own" ? [SERVER_AUTH, CLIENT_AUTH] : role === "client" ? [CLIENT_AUTH] : [SERVER_AUTH];
    for (const oid of needed) {
      if (!usages.includes(oid)) {
        const name = oid === SERVER_AUTH ? "serverAuth" : "clientAuth";
        return { ok: false, reason: "bad_svid", detail: `extended key usage lacks ${name}`, spiffeId };
      }
    }
  }
  if (parsed.id.trustDomain !== trustDomain) {
    return {
      ok: false,
      reason: "wrong_trust_domain",
      detail: `SPIFFE ID ${spiffeId} is in trust domain ${parsed.id.trustDomain}, expected ${trustDomain}`,
      spiffeId,
    };
  }
  return { ok: true, spiffeId, trustDomain: parsed.id.trustDomain, uris, dnsNames };
}
