// The two DER primitives both X.509 readers share (certificate-der.ts, subject.ts): one element's header, and an
// OBJECT IDENTIFIER's dotted text. Each reader passes its own error, so a refusal keeps the reader's code.

/** One DER element: where its tag starts, where its contents start and end. */
export interface DerElement {
  readonly tag: number;
  readonly start: number;
  readonly contentStart: number;
  readonly end: number;
}

/** Builds the error a reader throws for input that is not DER. */
export type Malformed = (what: string) => Error;

/** X.690 DER: one element with a low tag number and a definite, minimally encoded length inside `limit`. */
export function readDerElement(
  der: Uint8Array,
  start: number,
  limit: number,
  malformed: Malformed,
): DerElement {
  if (start + 2 > limit) throw malformed(`truncated element at byte ${start}`);
  const tag = der[start]!;
  if ((tag & 0x1f) === 0x1f) throw malformed(`multi-byte tag at byte ${start}`);
  // Universal tag 0 is BER's end-of-contents marker, never an element.
  if (tag === 0) throw malformed(`tag 0 at byte ${start}`);
  let pos = start + 1;
  let length = der[pos++]!;
  if (length & 0x80) {
    const count = length & 0x7f;
    // Indefinite length (count 0) is BER, not DER; four length bytes already exceed any certificate.
    if (count === 0) throw malformed(`indefinite length at byte ${start} (BER, not DER)`);
    if (count > 4) throw malformed(`length of ${count} bytes at byte ${start}`);
    if (pos + count > limit) throw malformed(`truncated length at byte ${start}`);
    if (der[pos] === 0) throw malformed(`length with a leading zero byte at byte ${start} (not DER)`);
    length = 0;
    for (let i = 0; i < count; i++) length = length * 256 + der[pos++]!;
    if (length < 0x80) throw malformed(`long-form length under 128 at byte ${start} (not DER)`);
  }
  const end = pos + length;
  if (end > limit) throw malformed(`element at byte ${start} runs past its parent`);
  return { tag, start, contentStart: pos, end };
}

/** X.690 §8.19: dotted-decimal text of the OBJECT IDENTIFIER contents in [start, end), each arc in its shortest form. */
export function derOidText(der: Uint8Array, start: number, end: number, malformed: Malformed): string {
  if (start >= end) throw malformed("empty OBJECT IDENTIFIER");
  let text = "";
  // BigInt, because UUID OIDs (2.25.<128-bit UUID>, ITU-T X.667) overflow a double.
  let value = 0n;
  let arcStart = true;
  for (let i = start; i < end; i++) {
    const b = der[i]!;
    if (arcStart && b === 0x80) throw malformed("OBJECT IDENTIFIER arc with a leading 0x80 byte (not DER)");
    value = (value << 7n) | BigInt(b & 0x7f);
    if (b & 0x80) {
      if (i === end - 1) throw malformed("truncated OBJECT IDENTIFIER");
      arcStart = false;
      continue;
    }
    if (text === "") {
      const arc0 = value < 40n ? 0n : value < 80n ? 1n : 2n;
      text = `${arc0}.${value - arc0 * 40n}`;
    } else {
      text += `.${value}`;
    }
    value = 0n;
    arcStart = true;
  }
  return text;
}
