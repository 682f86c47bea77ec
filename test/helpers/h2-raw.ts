// A raw HTTP/2 client that writes frames byte by byte: for requests no well-behaved client library will send.
//
// Node's own http2 client refuses to send malformed requests (uppercase names, duplicate pseudo-headers,
// connection-specific headers), and floods need frames sent faster than any client would. This one encodes
// header blocks itself (HPACK literals without indexing or Huffman, RFC 7541 §6.2.2) and decodes what the
// server answers with hpack.js, so a test can assert per stream: a response status, or a reset and its code.
import { createRequire } from "node:module";
import net from "node:net";
import tls from "node:tls";

const require = createRequire(import.meta.url);

interface Decompressor {
  write(data: Buffer): void;
  execute(): void;
  read(): { name: string; value: string } | null;
}
const hpack = require("hpack.js") as {
  decompressor: { create(options: { table: { size: number } }): Decompressor };
};

export const FRAME = {
  DATA: 0x0,
  HEADERS: 0x1,
  PRIORITY: 0x2,
  RST_STREAM: 0x3,
  SETTINGS: 0x4,
  PUSH_PROMISE: 0x5,
  PING: 0x6,
  GOAWAY: 0x7,
  WINDOW_UPDATE: 0x8,
  CONTINUATION: 0x9,
} as const;

export const FLAG = { END_STREAM: 0x1, ACK: 0x1, END_HEADERS: 0x4 } as const;

/** RFC 9113 §7 error codes, by number, for readable assertions. */
export const ERROR_NAMES: Record<number, string> = {
  0: "NO_ERROR",
  1: "PROTOCOL_ERROR",
  2: "INTERNAL_ERROR",
  3: "FLOW_CONTROL_ERROR",
  5: "STREAM_CLOSED",
  6: "FRAME_SIZE_ERROR",
  7: "REFUSED_STREAM",
  8: "CANCEL",
  9: "COMPRESSION_ERROR",
  11: "ENHANCE_YOUR_CALM",
};

const PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "latin1");

export type HeaderList = readonly (readonly [string, string])[];

/** What happened on one stream, as far as the server has told us. */
export interface StreamResult {
  /** Every header block the server sent (informational, final, trailers), names as sent. */
  headers: [string, string][][];
  status?: number;
  data: Buffer;
  ended: boolean;
  /** RST_STREAM from the server: its error code name. */
  reset?: string;
}

export interface Frame {
  type: number;
  flags: number;
  stream: number;
  payload: Buffer;
}

/** Encodes a header block: each field a literal without indexing, new name, no Huffman (RFC 7541 §6.2.2). */
export function encodeHeaders(headers: HeaderList): Buffer {
  const parts: Buffer[] = [];
  for (const [name, value] of headers) {
    parts.push(Buffer.from([0x00]), hpackString(name), hpackString(value));
  }
  return Buffer.concat(parts);
}

function hpackString(text: string): Buffer {
  const bytes = Buffer.from(text, "latin1");
  return Buffer.concat([hpackInteger(bytes.length, 7, 0x00), bytes]);
}

function hpackInteger(value: number, prefixBits: number, firstByteFlags: number): Buffer {
  const max = (1 << prefixBits) - 1;
  if (value < max) return Buffer.from([firstByteFlags | value]);
  const out = [firstByteFlags | max];
  let rest = value - max;
  while (rest >= 128) {
    out.push((rest % 128) + 128);
    rest = Math.floor(rest / 128);
  }
  out.push(rest);
  return Buffer.from(out);
}

export function frame(
  type: number,
  flags: number,
  stream: number,
  payload: Buffer = Buffer.alloc(0),
): Buffer {
  const head = Buffer.alloc(9);
  head.writeUIntBE(payload.length, 0, 3);
  head[3] = type;
  head[4] = flags;
  head.writeUInt32BE(stream & 0x7fffffff, 5);
  return Buffer.concat([head, payload]);
}

export function settingsPayload(settings: Record<number, number>): Buffer {
  const entries = Object.entries(settings);
  const payload = Buffer.alloc(entries.length * 6);
  entries.forEach(([id, value], index) => {
    payload.writeUInt16BE(Number(id), index * 6);
    payload.writeUInt32BE(value, index * 6 + 2);
  });
  return payload;
}

export interface RawH2Options {
  port: number;
  host?: string;
  /** TLS with these options (client certificate, CA); ALPN h2 is added. Plain TCP (h2c) without. */
  tls?: tls.ConnectionOptions;
  /** Our SETTINGS; the default asks for no dynamic table so every response block decodes alone. */
  settings?: Record<number, number>;
}

/**
 * One HTTP/2 connection driven by hand. Incoming frames are parsed as they arrive; PINGs and SETTINGS are
 * acknowledged as a real client would, and the server's header blocks are decoded per stream.
 */
export class RawH2 {
  readonly socket: net.Socket;
  readonly streams = new Map<number, StreamResult>();
  readonly frames: Frame[] = [];
  goaway?: { lastStream: number; code: string; debug: string };
  closed = false;
  /** Answer the server's PINGs and SETTINGS (a flood test turns this off to play a peer that never reads). */
  autoAck = true;
  #buffer = Buffer.alloc(0);
  #decoder = hpack.decompressor.create({ table: { size: 4096 } });
  #headerBlock: { stream: number; parts: Buffer[] } | undefined;
  #waiters: (() => void)[] = [];

  private constructor(socket: net.Socket) {
    this.socket = socket;
    socket.on("data", (chunk: Buffer) => this.#onData(chunk));
    socket.on("close", () => {
      this.closed = true;
      this.#wake();
    });
    socket.on("error", () => {});
  }

  static async connect(options: RawH2Options): Promise<RawH2> {
    const host = options.host ?? "127.0.0.1";
    const socket = options.tls
      ? tls.connect({ host, port: options.port, ALPNProtocols: ["h2"], ...options.tls })
      : net.connect(options.port, host);
    await new Promise<void>((resolve, reject) => {
      socket.once(options.tls ? "secureConnect" : "connect", () => resolve());
      socket.once("error", reject);
    });
    if (options.tls && (socket as tls.TLSSocket).alpnProtocol !== "h2") {
      socket.destroy();
      throw new Error(`server chose ALPN ${(socket as tls.TLSSocket).alpnProtocol}, not h2`);
    }
    const client = new RawH2(socket);
    socket.write(PREFACE);
    socket.write(frame(FRAME.SETTINGS, 0, 0, settingsPayload(options.settings ?? {})));
    return client;
  }

  /** Writes raw bytes; false when the socket wants a drain, or is already gone (a flood test keeps going). */
  send(bytes: Buffer): boolean {
    if (this.socket.destroyed || !this.socket.writable) return false;
    try {
      return this.socket.write(bytes);
    } catch {
      return false;
    }
  }

  /** HEADERS (END_HEADERS set) on `stream`; `endStream` for a request without a body. */
  request(stream: number, headers: HeaderList, endStream = true): void {
    this.send(
      frame(
        FRAME.HEADERS,
        FLAG.END_HEADERS | (endStream ? FLAG.END_STREAM : 0),
        stream,
        encodeHeaders(headers),
      ),
    );
  }

  data(stream: number, body: Buffer | string, endStream = true): void {
    this.send(frame(FRAME.DATA, endStream ? FLAG.END_STREAM : 0, stream, Buffer.from(body)));
  }

  reset(stream: number, code = 8): void {
    const payload = Buffer.alloc(4);
    payload.writeUInt32BE(code);
    this.send(frame(FRAME.RST_STREAM, 0, stream, payload));
  }

  /** Resolves once `stream` has a final response and its end, or a reset; rejects after `timeoutMs`. */
  async result(stream: number, timeoutMs = 5000): Promise<StreamResult> {
    await this.until(() => {
      const result = this.streams.get(stream);
      return result !== undefined && (result.ended || result.reset !== undefined);
    }, timeoutMs);
    return this.streams.get(stream)!;
  }

  /** Waits for `condition` (checked on every frame, and at close); rejects with the state after `timeoutMs`. */
  async until(condition: () => boolean, timeoutMs = 5000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!condition()) {
      if (this.closed) throw new Error("connection closed");
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out; streams: ${JSON.stringify([...this.streams])}`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.#waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  close(): void {
    this.socket.destroy();
  }

  #wake(): void {
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const wake of waiters) wake();
  }

  #onData(chunk: Buffer): void {
    this.#buffer = Buffer.concat([this.#buffer, chunk]);
    while (this.#buffer.length >= 9) {
      const length = this.#buffer.readUIntBE(0, 3);
      if (this.#buffer.length < 9 + length) break;
      const parsed: Frame = {
        type: this.#buffer[3]!,
        flags: this.#buffer[4]!,
        stream: this.#buffer.readUInt32BE(5) & 0x7fffffff,
        payload: this.#buffer.subarray(9, 9 + length),
      };
      this.#buffer = this.#buffer.subarray(9 + length);
      this.frames.push(parsed);
      this.#onFrame(parsed);
    }
    this.#wake();
  }

  #stream(id: number): StreamResult {
    let result = this.streams.get(id);
    if (!result) {
      result = { headers: [], data: Buffer.alloc(0), ended: false };
      this.streams.set(id, result);
    }
    return result;
  }

  #onFrame({ type, flags, stream, payload }: Frame): void {
    switch (type) {
      case FRAME.SETTINGS:
        if (!(flags & FLAG.ACK) && this.autoAck) this.send(frame(FRAME.SETTINGS, FLAG.ACK, 0));
        return;
      case FRAME.PING:
        if (!(flags & FLAG.ACK) && this.autoAck) this.send(frame(FRAME.PING, FLAG.ACK, 0, payload));
        return;
      case FRAME.GOAWAY:
        this.goaway = {
          lastStream: payload.readUInt32BE(0) & 0x7fffffff,
          code: ERROR_NAMES[payload.readUInt32BE(4)] ?? String(payload.readUInt32BE(4)),
          debug: payload.subarray(8).toString("latin1"),
        };
        return;
      case FRAME.RST_STREAM:
        this.#stream(stream).reset = ERROR_NAMES[payload.readUInt32BE(0)] ?? String(payload.readUInt32BE(0));
        return;
      case FRAME.DATA: {
        const result = this.#stream(stream);
        const padded = flags & 0x8;
        const body = padded ? payload.subarray(1, payload.length - payload[0]!) : payload;
        result.data = Buffer.concat([result.data, body]);
        // Give the window back, as a reading client does.
        if (body.length > 0) {
          const increment = Buffer.alloc(4);
          increment.writeUInt32BE(payload.length);
          this.send(frame(FRAME.WINDOW_UPDATE, 0, 0, increment));
          this.send(frame(FRAME.WINDOW_UPDATE, 0, stream, increment));
        }
        if (flags & FLAG.END_STREAM) result.ended = true;
        return;
      }
      case FRAME.HEADERS:
      case FRAME.CONTINUATION: {
        let block = payload;
        if (type === FRAME.HEADERS) {
          let offset = 0;
          let padding = 0;
          if (flags & 0x8) {
            padding = payload[0]!;
            offset = 1;
          }
          if (flags & 0x20) offset += 5;
          block = payload.subarray(offset, payload.length - padding);
          this.#headerBlock = { stream, parts: [] };
          if (flags & FLAG.END_STREAM) this.#stream(stream).ended = true;
        }
        this.#headerBlock?.parts.push(block);
        if (flags & FLAG.END_HEADERS && this.#headerBlock) this.#decodeBlock(this.#headerBlock);
        return;
      }
    }
  }

  #decodeBlock(block: { stream: number; parts: Buffer[] }): void {
    this.#headerBlock = undefined;
    this.#decoder.write(Buffer.concat(block.parts));
    this.#decoder.execute();
    const fields: [string, string][] = [];
    for (let field = this.#decoder.read(); field; field = this.#decoder.read()) {
      fields.push([field.name, field.value]);
    }
    const result = this.#stream(block.stream);
    result.headers.push(fields);
    const status = fields.find(([name]) => name === ":status")?.[1];
    if (status && Number(status) >= 200) result.status = Number(status);
  }
}
