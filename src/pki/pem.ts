// PEM armour written and read by hand, so every file we emit is the strict RFC 7468 form OpenSSL and Node expect.

import { MtlsdError } from "../errors.ts";

const LINE_WIDTH = 64;
const BLOCK = /-----BEGIN ([A-Z0-9 ]+)-----([A-Za-z0-9+/=\s]*?)-----END \1-----/g;

/** One PEM block: 64-column base64 between BEGIN/END lines, ending in a newline so files concatenate cleanly. */
export function pemEncode(label: string, der: ArrayBuffer | Uint8Array): string {
  const base64 = Buffer.from(der instanceof Uint8Array ? der : new Uint8Array(der)).toString("base64");
  const lines: string[] = [];
  for (let i = 0; i < base64.length; i += LINE_WIDTH) lines.push(base64.slice(i, i + LINE_WIDTH));
  return `-----BEGIN ${label}-----\n${lines.join("\n")}\n-----END ${label}-----\n`;
}

/** The DER bodies of every block labelled `label`, in file order; other blocks (keys, comments) are ignored. */
export function pemDecodeAll(pem: string, label: string): Uint8Array[] {
  const bodies: Uint8Array[] = [];
  for (const match of pem.matchAll(BLOCK)) {
    if (match[1] !== label) continue;
    const body = (match[2] ?? "").replace(/\s+/g, "");
    if (body.length === 0) throw new MtlsdError("PKI_BAD_PEM", `an empty ${label} PEM block was found`);
    bodies.push(new Uint8Array(Buffer.from(body, "base64")));
  }
  return bodies;
}
