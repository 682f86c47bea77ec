// DER and PEM: the Workload API speaks concatenated DER, OpenSSL and our validation read PEM.
import { MtlsdError } from "../errors.ts";

/**
 * Splits concatenated DER structures (the Workload API's chains and bundles): each is a SEQUENCE whose length
 * says where the next one starts. Throws on anything that is not a whole number of DER SEQUENCEs.
 */
export function splitDer(der: Uint8Array, what: string): Uint8Array[] {
  const items: Uint8Array[] = [];
  let pos = 0;
  while (pos < der.length) {
    if (der[pos] !== 0x30 || pos + 2 > der.length) {
      throw new MtlsdError("CERT_PARSE", `${what}: not DER (no SEQUENCE at byte ${pos})`);
    }
    let length = der[pos + 1]!;
    let header = 2;
    if (length & 0x80) {
      const count = length & 0x7f;
      if (count === 0 || count > 4 || pos + 2 + count > der.length) {
        throw new MtlsdError("CERT_PARSE", `${what}: not DER (bad length at byte ${pos})`);
      }
      length = 0;
      for (let i = 0; i < count; i++) length = length * 256 + der[pos + 2 + i]!;
      header += count;
    }
    const end = pos + header + length;
    if (end > der.length) throw new MtlsdError("CERT_PARSE", `${what}: not DER (truncated at byte ${pos})`);
    items.push(der.subarray(pos, end));
    pos = end;
  }
  return items;
}

/** DER items as PEM blocks with the given label. */
export function derToPem(label: string, items: readonly Uint8Array[]): string {
  return items
    .map((der) => {
      const base64 = Buffer.from(der).toString("base64").replace(/.{64}/g, "$&\n");
      return `-----BEGIN ${label}-----\n${base64}${base64.endsWith("\n") ? "" : "\n"}-----END ${label}-----\n`;
    })
    .join("");
}

/** Bundle file content as PEM: PEM stays as it is, concatenated DER certificates are converted. */
export function bundleText(content: Buffer, what: string): string {
  if (content.length > 0 && content[0] === 0x30) return derToPem("CERTIFICATE", splitDer(content, what));
  return content.toString("utf8");
}
