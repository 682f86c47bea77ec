// An incremental, strict HTTP/1.1 response parser (RFC 9112) for the upstream side of the forwarding engine.
//
// Requests from untrusted clients are parsed by Node's llhttp; this parser only reads responses from the
// app on localhost or from a peer sidecar we verified. It is still strict: whatever it accepts is replayed
// to a client, so ambiguous framing (RFC 9112 §6.3) or malformed heads end the exchange with an error
// instead of being guessed at.

/** Thrown for a response that breaks HTTP/1.1; the forwarding engine answers 502. */
export class ResponseProtocolError extends Error {
  readonly code = "MTLSD_UPSTREAM_PROTOCOL";
}

export interface ResponseEvents {
  /** The final (non-1xx) response head. `headers` is a flat [name, value, ...] list as received. */
  onHead(status: number, statusText: string, headers: string[]): void;
  onBody(chunk: Buffer): void;
  /** The whole message has arrived; `keepAlive` says whether the connection can carry another one. */
  onComplete(keepAlive: boolean): void;
}

const STATE = {
  idle: 0,
  head: 1,
  length: 2,
  chunkSize: 3,
  chunkData: 4,
  chunkDataEnd: 5,
  trailers: 6,
  untilClose: 7,
} as const;
type State = (typeof STATE)[keyof typeof STATE];

const EMPTY = Buffer.alloc(0);
const CR = 0x0d;
const LF = 0x0a;
const MAX_CHUNK_LINE = 4096;

// RFC 9110 §5.6.2 tchar.
const TOKEN = new Uint8Array(128);
for (const c of "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ") {
  TOKEN[c.charCodeAt(0)] = 1;
}

function isToken(text: string): boolean {
  if (text.length === 0) return false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c > 127 || TOKEN[c] !== 1) return false;
  }
  return true;
}

/** field-value: visible characters, spaces and tabs, obs-text; never CR, LF, NUL or other controls. */
function isFieldValue(text: string): boolean {
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if ((c < 0x20 && c !== 0x09) || c === 0x7f) return false;
  }
  return true;
}

const STATUS_LINE = /^HTTP\/1\.([01]) ([1-9]\d\d)(?: ([^\r\n]*))?$/;

export class ResponseParser {
  readonly #events: ResponseEvents;
  readonly #maxHeadBytes: number;
  #state: State = STATE.idle;
  #isHeadRequest = false;
  #headChunks: Buffer[] = [];
  #headBytes = 0;
  /** The last (up to 3) bytes of a partial head, to find a blank line split across reads. */
  #tail: Buffer = EMPTY;
  #completed = false;
  #remaining = 0;
  #keepAlive = true;
  #line = "";

  constructor(events: ResponseEvents, maxHeadBytes = 64 * 1024) {
    this.#events = events;
    this.#maxHeadBytes = maxHeadBytes;
  }

  /** Arms the parser for the response to one request (`isHeadRequest`: a HEAD, whose response has no body). */
  expect(isHeadRequest: boolean): void {
    this.#state = STATE.head;
    this.#isHeadRequest = isHeadRequest;
    this.#headChunks = [];
    this.#headBytes = 0;
    this.#tail = EMPTY;
  }

  /** Whether any byte of the current response has arrived (a reused connection that failed before may retry). */
  get started(): boolean {
    return this.#state !== STATE.head || this.#headBytes > 0;
  }

  /**
   * Feeds bytes from the socket and returns how many belong to this response. It stops right after a
   * complete message (events may already have armed the parser for the next exchange), so a return value
   * below `data.length` means the upstream sent bytes nobody asked for. Throws ResponseProtocolError.
   */
  execute(data: Buffer): number {
    let offset = 0;
    this.#completed = false;
    while (offset < data.length && !this.#completed) {
      switch (this.#state) {
        case STATE.idle:
          return offset;
        case STATE.head:
          offset = this.#readHead(data, offset);
          break;
        case STATE.length: {
          const take = Math.min(this.#remaining, data.length - offset);
          this.#remaining -= take;
          const chunk = data.subarray(offset, offset + take);
          offset += take;
          this.#events.onBody(chunk);
          if (this.#remaining === 0) this.#complete();
          break;
        }
        case STATE.chunkSize:
        case STATE.trailers:
          offset = this.#readLine(data, offset);
          break;
        case STATE.chunkData: {
          const take = Math.min(this.#remaining, data.length - offset);
          this.#remaining -= take;
          const chunk = data.subarray(offset, offset + take);
          offset += take;
          if (this.#remaining === 0) {
            this.#state = STATE.chunkDataEnd;
            this.#remaining = 2;
          }
          this.#events.onBody(chunk);
          break;
        }
        case STATE.chunkDataEnd: {
          // The CRLF after chunk data, possibly split across reads.
          const expected = this.#remaining === 2 ? CR : LF;
          if (data[offset] !== expected)
            throw new ResponseProtocolError("chunk data is not followed by CRLF");
          offset++;
          if (--this.#remaining === 0) this.#state = STATE.chunkSize;
          break;
        }
        case STATE.untilClose: {
          const chunk = offset === 0 ? data : data.subarray(offset);
          offset = data.length;
          this.#events.onBody(chunk);
          break;
        }
      }
    }
    return offset;
  }

  /** The upstream closed the connection: completes a close-delimited body, else it is a truncated response. */
  finish(): void {
    if (this.#state === STATE.untilClose) {
      this.#state = STATE.idle;
      this.#events.onComplete(false);
      return;
    }
    if (this.#state !== STATE.idle) {
      throw new ResponseProtocolError(
        this.started
          ? "the upstream closed the connection in the middle of its response"
          : "the upstream closed the connection without a response",
      );
    }
  }

  #complete(): void {
    this.#state = STATE.idle;
    this.#completed = true;
    this.#events.onComplete(this.#keepAlive);
  }

  #readHead(data: Buffer, offset: number): number {
    if (this.#headBytes > 0) {
      // The blank line may straddle reads: look across the last bytes kept and the first new ones.
      const tail = this.#tail;
      const probe = Buffer.concat([tail, data.subarray(offset, offset + 3)]);
      const at = probe.indexOf("\r\n\r\n", 0, "latin1");
      if (at !== -1 && at + 4 > tail.length) {
        const head = Buffer.concat(this.#headChunks).subarray(0, this.#headBytes - tail.length + at);
        this.#parseHead(head);
        return offset + at + 4 - tail.length;
      }
    }
    const end = data.indexOf("\r\n\r\n", offset, "latin1");
    if (end === -1) {
      this.#collectHead(data.subarray(offset));
      return data.length;
    }
    const head =
      this.#headBytes === 0
        ? data.subarray(offset, end)
        : Buffer.concat([...this.#headChunks, data.subarray(offset, end)]);
    this.#parseHead(head);
    return end + 4;
  }

  #collectHead(piece: Buffer): void {
    this.#headBytes += piece.length;
    if (this.#headBytes > this.#maxHeadBytes) throw new ResponseProtocolError("response head is too large");
    this.#headChunks.push(piece);
    const joined = piece.length >= 3 ? piece : Buffer.concat([this.#tail, piece]);
    this.#tail = joined.subarray(Math.max(0, joined.length - 3));
  }

  #parseHead(head: Buffer): void {
    if (head.length + 4 > this.#maxHeadBytes) throw new ResponseProtocolError("response head is too large");
    this.#headChunks = [];
    this.#headBytes = 0;
    this.#tail = EMPTY;
    const lines = head.toString("latin1").split("\r\n");
    const status = STATUS_LINE.exec(lines[0]!);
    if (!status)
      throw new ResponseProtocolError(`malformed status line ${JSON.stringify(lines[0]!.slice(0, 80))}`);
    const minor = status[1]!;
    const code = Number(status[2]);
    const headers: string[] = [];
    let contentLength: string | undefined;
    let transferEncoding: string | undefined;
    let connection = "";
    for (let i = 1; i < lines.length; i++) {
      const line = lines[i]!;
      const first = line.charCodeAt(0);
      if (first === 0x20 || first === 0x09)
        throw new ResponseProtocolError("obsolete line folding in a response header");
      const colon = line.indexOf(":");
      const name = colon > 0 ? line.slice(0, colon) : "";
      if (!isToken(name))
        throw new ResponseProtocolError(
          `malformed response header line ${JSON.stringify(line.slice(0, 80))}`,
        );
      const value = line.slice(colon + 1).trim();
      if (!isFieldValue(value))
        throw new ResponseProtocolError(`response header ${name} has a forbidden character`);
      const lower = name.length === 14 || name.length === 17 || name.length === 10 ? name.toLowerCase() : "";
      if (lower === "content-length") {
        // Repeats are allowed only with the same length (RFC 9110 §8.6); the list is checked as one below.
        contentLength = contentLength === undefined ? value : `${contentLength},${value}`;
      } else if (lower === "transfer-encoding") {
        transferEncoding = transferEncoding === undefined ? value : `${transferEncoding},${value}`;
      } else if (lower === "connection") {
        connection += `,${value.toLowerCase()}`;
      }
      headers.push(name, value);
    }
    if (code < 200) {
      // RFC 9110 §15.2: informational heads precede the final one; 101 would switch protocols, which we don't.
      if (code === 101) {
        throw new ResponseProtocolError("the upstream switched protocols (101), which mtlsd does not proxy");
      }
      return;
    }
    this.#keepAlive = minor === "1" ? !hasToken(connection, "close") : hasToken(connection, "keep-alive");
    this.#events.onHead(code, status[3] ?? "", headers);
    if (this.#isHeadRequest || code === 204 || code === 304) {
      this.#complete();
      return;
    }
    if (transferEncoding !== undefined) {
      if (contentLength !== undefined) {
        throw new ResponseProtocolError("the response has both Transfer-Encoding and Content-Length");
      }
      if (transferEncoding.trim().toLowerCase() !== "chunked") {
        throw new ResponseProtocolError(
          `unsupported response Transfer-Encoding ${JSON.stringify(transferEncoding)}`,
        );
      }
      this.#state = STATE.chunkSize;
      this.#line = "";
      return;
    }
    if (contentLength !== undefined) {
      const length = parseContentLength(contentLength);
      if (length === undefined) {
        throw new ResponseProtocolError(
          `malformed or differing response Content-Length ${JSON.stringify(contentLength)}`,
        );
      }
      this.#remaining = length;
      if (length === 0) this.#complete();
      else this.#state = STATE.length;
      return;
    }
    // RFC 9112 §6.3 rule 8: no framing, the body runs until the connection closes.
    this.#keepAlive = false;
    this.#state = STATE.untilClose;
  }

  /** Reads a CRLF-terminated line of a chunked body (a chunk size, or a trailer). */
  #readLine(data: Buffer, offset: number): number {
    const lf = data.indexOf(LF, offset);
    const end = lf === -1 ? data.length : lf;
    this.#line += data.toString("latin1", offset, end);
    if (this.#line.length > MAX_CHUNK_LINE)
      throw new ResponseProtocolError("chunk header or trailer line is too long");
    if (lf === -1) return data.length;
    const line = this.#line;
    this.#line = "";
    if (line.charCodeAt(line.length - 1) !== CR)
      throw new ResponseProtocolError("bare LF in a chunked response body");
    const content = line.slice(0, -1);
    if (this.#state === STATE.chunkSize) {
      const match = /^([0-9a-fA-F]{1,15})[ \t]*(?:;[^\r\n]*)?$/.exec(content);
      if (!match)
        throw new ResponseProtocolError(`malformed chunk size ${JSON.stringify(content.slice(0, 40))}`);
      const size = Number.parseInt(match[1]!, 16);
      if (size === 0) this.#state = STATE.trailers;
      else {
        this.#remaining = size;
        this.#state = STATE.chunkData;
      }
    } else if (content === "") {
      // End of the trailer section: the message is complete. Trailers are not forwarded.
      this.#complete();
    } else if (content.indexOf(":") <= 0 || !isFieldValue(content)) {
      throw new ResponseProtocolError("malformed trailer line in a chunked response");
    }
    return lf + 1;
  }
}

function hasToken(list: string, token: string): boolean {
  for (const part of list.split(",")) if (part.trim() === token) return true;
  return false;
}

/** A Content-Length value, allowing the list form of identical values (RFC 9110 §8.6). */
function parseContentLength(value: string): number | undefined {
  let result: number | undefined;
  for (const part of value.split(",")) {
    const digits = part.trim();
    if (!/^\d{1,15}$/.test(digits)) return undefined;
    const number = Number(digits);
    if (result !== undefined && number !== result) return undefined;
    result = number;
  }
  return result;
}
