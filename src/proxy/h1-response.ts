// A strict, incremental HTTP/1.1 response parser: what the HTTP/1.1 client (h1-client.ts) reads an app's answers with.
//
// It accepts RFC 9112 as written and refuses the rest, as llhttp's strict mode does and stricter where a
// response could be read two ways (REFERENCE.md, "Bypasses"): CR LF line ends only (a bare LF or CR is an
// error), no obsolete line folding, no whitespace between a field name and its colon, no control characters
// in a value, Content-Length as digits only and only once, Transfer-Encoding only as `chunked` and never with a
// Content-Length, chunk sizes in hex that fit a safe integer, chunk extensions and trailers of the proper
// grammar. A refused response is an HttpResponseError whose code starts with `HPE_`, like llhttp's, so the
// forwarding engine maps it to 502 upstream_protocol_error (before the head) or a cut (after it).
import { isNamed, type ResponseHeaders } from "./headers.ts";

export class HttpResponseError extends Error {
  readonly code: string;

  constructor(code: string, message: string) {
    super(message);
    this.name = "HTTPParserError";
    this.code = code;
  }
}

/** What the parser tells its owner, in order: interim heads, then a head, body chunks, the end. */
export interface ResponseEvents {
  /** A 1xx other than 101: informational, another head follows. */
  onInterim(statusCode: number): void;
  /** The final head. `bodyless`: no body follows (HEAD, 204, 304), the end comes at once. */
  onHead(statusCode: number, statusMessage: string, headers: ResponseHeaders, bodyless: boolean): void;
  onBody(chunk: Buffer): void;
  onEnd(trailers: ResponseHeaders | undefined): void;
}

/** How the body of the response being read is delimited (`State`). */
const State = {
  /** Reading a head (status line and fields) up to its empty line. */
  Head: 0,
  /** `remaining` bytes of a Content-Length body. */
  Length: 1,
  /** A chunk-size line. */
  ChunkSize: 2,
  /** `remaining` bytes of chunk data. */
  ChunkData: 3,
  /** The CR LF after a chunk's data. */
  ChunkEnd: 4,
  /** The trailer section after the last chunk, up to its empty line. */
  Trailers: 5,
  /** Everything up to the end of the connection. */
  UntilClose: 6,
  /** The response is complete; bytes after it are an error. */
  Done: 7,
} as const;
type State = (typeof State)[keyof typeof State];

const CRLF = 0x0a0d; // "\r\n" read as a little-endian uint16
const HEAD_END = Buffer.from("\r\n\r\n");
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
/** A field value after its surrounding whitespace is trimmed: visible characters, obs-text, inner SP and HTAB. */
const FIELD_VALUE = /^[\x21-\x7e\x80-\xff](?:[\t\x20-\x7e\x80-\xff]*[\x21-\x7e\x80-\xff])?$/;
const STATUS_LINE = /^HTTP\/1\.([01]) ([1-9]\d\d)(?: ([\t\x20-\x7e\x80-\xff]*))?$/;
/**
 * chunk-size [ chunk-ext ]: hex digits, then `;name` or `;name=token` / `;name="quoted"`. Without the optional
 * whitespace RFC 9112 allows around `;` and `=`: llhttp refuses it, and what it refuses is not read here either.
 */
const CHUNK_LINE =
  /^([0-9A-Fa-f]+)((?:;[!#$%&'*+\-.^_`|~0-9A-Za-z]+(?:=(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+|"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"))?)*)$/;
/** Chunk sizes past 13 hex digits could exceed Number.MAX_SAFE_INTEGER: refused, as llhttp refuses an overflow. */
const MAX_CHUNK_SIZE_DIGITS = 13;
/** A chunk-size line, extensions included, longer than this is refused. */
const MAX_CHUNK_LINE = 4096;
/** A CR not followed by LF, or an LF not preceded by CR. */
const BARE_LINE_END = /\r(?!\n)|(?<!\r)\n/;

export interface ResponseParserOptions {
  /** Most bytes a head (or trailer section) may take, its line ends included. */
  maxHeaderSize: number;
}

/**
 * One connection's parser, reused response after response. `expect` announces each request before its
 * response is read (a HEAD's answer has no body); `execute` takes bytes as they come and returns how many it
 * used, fewer when the owner paused it from a callback (the rest is to be passed again); `finish` is the end
 * of the connection.
 */
export class ResponseParser {
  readonly #events: ResponseEvents;
  readonly #maxHeaderSize: number;
  #state: State = State.Done;
  #head = false;
  /** Bytes of an unfinished head, trailer section or chunk-size line. */
  #pending: Buffer | undefined;
  #remaining = 0;
  #paused = false;
  /** Whether the connection may carry another request after this response. */
  #keepAlive = true;

  constructor(events: ResponseEvents, options: ResponseParserOptions) {
    this.#events = events;
    this.#maxHeaderSize = options.maxHeaderSize;
  }

  /** A request went out: its response is what comes next. `head`: a HEAD request (its answer has no body). */
  expect(head: boolean): void {
    this.#state = State.Head;
    this.#head = head;
    this.#pending = undefined;
    this.#keepAlive = true;
  }

  /** Whether a response is being read (a request is waiting for all of its answer). */
  get reading(): boolean {
    return this.#state !== State.Done;
  }

  /** After a complete response: whether the connection may carry another request. */
  get keepAlive(): boolean {
    return this.#keepAlive;
  }

  /** Stops `execute` after the callback in progress: its return value says how far it got. */
  pause(): void {
    this.#paused = true;
  }

  /** Undoes a pause made in the callback in progress: `execute` goes on with the rest of its bytes. */
  resume(): void {
    this.#paused = false;
  }

  /** Parses `data`; returns the bytes used (all of them unless paused). Throws HttpResponseError on bad input. */
  execute(data: Buffer): number {
    this.#paused = false;
    let offset = 0;
    while (offset < data.length && !this.#paused) {
      switch (this.#state) {
        case State.Head:
        case State.Trailers:
          offset = this.#section(data, offset);
          break;
        case State.ChunkSize:
          offset = this.#chunkSize(data, offset);
          break;
        case State.Length:
        case State.ChunkData: {
          const take = Math.min(this.#remaining, data.length - offset);
          const chunk = data.subarray(offset, offset + take);
          offset += take;
          this.#remaining -= take;
          if (this.#remaining === 0) this.#state = this.#state === State.Length ? State.Done : State.ChunkEnd;
          this.#events.onBody(chunk);
          if (this.#state === State.Done) this.#events.onEnd(undefined);
          break;
        }
        case State.ChunkEnd:
          offset = this.#chunkEnd(data, offset);
          break;
        case State.UntilClose:
          this.#events.onBody(offset === 0 ? data : data.subarray(offset));
          offset = data.length;
          break;
        case State.Done:
          // Pipelining is never used: bytes after a complete response answer nothing that was asked.
          throw new HttpResponseError("HPE_UNEXPECTED_DATA", "data after the end of a response");
      }
    }
    return offset;
  }

  /** The connection ended: that completes a body read until close, and truncates anything else. */
  finish(): void {
    if (this.#state === State.UntilClose) {
      this.#state = State.Done;
      this.#events.onEnd(undefined);
      return;
    }
    if (this.#state !== State.Done) {
      throw new HttpResponseError(
        "HPE_INVALID_EOF_STATE",
        "the connection closed before the response was complete",
      );
    }
  }

  /** Collects a head or trailer section up to its empty line, within maxHeaderSize. */
  #section(data: Buffer, offset: number): number {
    const pending = this.#pending;
    const buffer = pending ? Buffer.concat([pending, data.subarray(offset)]) : data;
    const start = pending ? 0 : offset;
    /** Where a position in `buffer` is in `data`. */
    const inData = (position: number): number => (pending ? offset + position - pending.length : position);
    // A trailer section may be empty: the last chunk's line is followed at once by CR LF.
    if (this.#state === State.Trailers && buffer.length - start >= 2 && buffer.readUInt16LE(start) === CRLF) {
      this.#pending = undefined;
      this.#state = State.Done;
      this.#events.onEnd(undefined);
      return inData(start + 2);
    }
    const end = buffer.indexOf(HEAD_END, start);
    const stop = end === -1 ? buffer.length : end;
    if (stop + (end === -1 ? 0 : 4) - start > this.#maxHeaderSize) {
      throw new HttpResponseError(
        "HPE_HEADER_OVERFLOW",
        `a response head is longer than ${this.#maxHeaderSize} bytes`,
      );
    }
    const text = buffer.toString("latin1", start, stop);
    // A bare CR or LF is refused as soon as it arrives (a CR at the very end may be half of a CR LF still coming).
    const bare = BARE_LINE_END.exec(end === -1 && text.endsWith("\r") ? text.slice(0, -1) : text);
    if (bare) {
      throw new HttpResponseError("HPE_LF_EXPECTED", "a line that does not end in CR LF");
    }
    if (end === -1) {
      // Copied: the caller's buffer is not ours to keep.
      this.#pending = Buffer.from(buffer.subarray(start));
      return data.length;
    }
    this.#pending = undefined;
    if (this.#state === State.Head) this.#onHead(text);
    else this.#onTrailers(text);
    return inData(end + 4);
  }

  #onHead(text: string): void {
    const lines = text.split("\r\n");
    const statusLine = lines[0]!;
    const status = STATUS_LINE.exec(statusLine);
    if (!status) {
      throw new HttpResponseError(
        "HPE_INVALID_STATUS",
        `a malformed status line: ${JSON.stringify(statusLine.slice(0, 100))}`,
      );
    }
    const minor = status[1]!;
    const statusCode = Number(status[2]);
    const headers = parseFields(lines);
    if (statusCode === 101) {
      throw new HttpResponseError(
        "HPE_UNEXPECTED_UPGRADE",
        "101 Switching Protocols to a request that asked for no upgrade",
      );
    }
    // Checked in interim heads too: llhttp refuses a bad or contradicted Content-Length in any head.
    const framing = this.#framing(statusCode, headers);
    if (statusCode < 200) {
      // Passed over whatever its version or Connection field say: the final response decides whether the
      // connection persists. llhttp would read nothing after an HTTP/1.0 or `Connection: close` interim head; some
      // apps send an unasked `HTTP/1.0 100 Continue` and then their answer, which the client is owed (as before,
      // when such heads were dropped ahead of undici's llhttp).
      this.#events.onInterim(statusCode);
      this.#state = State.Head;
      return;
    }
    // RFC 9112 §6.1: a Transfer-Encoding in an HTTP/1.0 message may be one its sender never meant (a smuggled
    // framing); the message is read, and the connection closed after it.
    const downgraded = minor === "0" && headers["transfer-encoding"] !== undefined;
    this.#keepAlive = framing !== State.UntilClose && !downgraded && keepsAlive(minor, headers.connection);
    const bodyless = framing === State.Done;
    this.#state = framing;
    this.#events.onHead(statusCode, status[3] ?? "", headers, bodyless);
    if (bodyless && this.#state === State.Done) this.#events.onEnd(undefined);
  }

  /** RFC 9112 §6.3: how the body is delimited; a Content-Length body sets `remaining`. */
  #framing(statusCode: number, headers: ResponseHeaders): State {
    const te = headers["transfer-encoding"];
    const cl = headers["content-length"];
    if (te !== undefined && cl !== undefined) {
      throw new HttpResponseError(
        "HPE_UNEXPECTED_CONTENT_LENGTH",
        "its Content-Length is contradicted (by a Transfer-Encoding)",
      );
    }
    if (Array.isArray(cl))
      throw new HttpResponseError(
        "HPE_UNEXPECTED_CONTENT_LENGTH",
        "its Content-Length is contradicted (by another Content-Length)",
      );
    let length: number | undefined;
    if (cl !== undefined) {
      // Leading zeros are allowed, as many as come; the value must fit a safe integer.
      if (!/^\d+$/.test(cl) || cl.replace(/^0+(?=.)/, "").length > 15) {
        throw new HttpResponseError(
          "HPE_INVALID_CONTENT_LENGTH",
          `an invalid Content-Length: ${JSON.stringify(cl.slice(0, 40))}`,
        );
      }
      length = Number(cl);
    }
    let chunked = false;
    if (te !== undefined) {
      const value = Array.isArray(te) ? te.join(",") : te;
      if (value.toLowerCase() !== "chunked") {
        throw new HttpResponseError(
          "HPE_INVALID_TRANSFER_ENCODING",
          `a Transfer-Encoding other than chunked: ${JSON.stringify(value.slice(0, 40))}`,
        );
      }
      chunked = true;
    }
    if (this.#head || statusCode < 200 || statusCode === 204 || statusCode === 304) return State.Done;
    if (chunked) return State.ChunkSize;
    if (length !== undefined) {
      this.#remaining = length;
      return length === 0 ? State.Done : State.Length;
    }
    return State.UntilClose;
  }

  #onTrailers(text: string): void {
    // The section starts with the trailer fields themselves: parse them as a head without its status line.
    const trailers = parseFields(["", ...text.split("\r\n")]);
    if (trailers["content-length"] !== undefined) {
      // llhttp refuses it (a chunked body has no Content-Length); a reader that honoured it would frame differently.
      throw new HttpResponseError(
        "HPE_INVALID_CONTENT_LENGTH",
        "a Content-Length in the trailers of a chunked body",
      );
    }
    this.#state = State.Done;
    this.#events.onEnd(trailers);
  }

  #chunkSize(data: Buffer, offset: number): number {
    const lf = data.indexOf(0x0a, offset);
    if (lf === -1) {
      const rest = data.subarray(offset);
      this.#pending = this.#pending ? Buffer.concat([this.#pending, rest]) : Buffer.from(rest);
      // Its CR may have come without the LF: a line of the longest length allowed must not be refused for that.
      if (this.#pending.length > MAX_CHUNK_LINE + 1) {
        throw new HttpResponseError("HPE_INVALID_CHUNK_SIZE", "a chunk-size line longer than 4096 bytes");
      }
      return data.length;
    }
    const tail = data.subarray(offset, lf + 1);
    const line = this.#pending ? Buffer.concat([this.#pending, tail]) : tail;
    this.#pending = undefined;
    if (line.length > MAX_CHUNK_LINE + 2) {
      throw new HttpResponseError("HPE_INVALID_CHUNK_SIZE", "a chunk-size line longer than 4096 bytes");
    }
    if (line.length < 2 || line[line.length - 2] !== 0x0d) {
      throw new HttpResponseError("HPE_LF_EXPECTED", "a chunk-size line that does not end in CR LF");
    }
    const text = line.toString("latin1", 0, line.length - 2);
    const match = CHUNK_LINE.exec(text);
    if (!match) {
      throw new HttpResponseError(
        "HPE_INVALID_CHUNK_SIZE",
        `a malformed chunk-size line: ${JSON.stringify(text.slice(0, 60))}`,
      );
    }
    const digits = match[1]!.replace(/^0+(?=.)/, "");
    if (digits.length > MAX_CHUNK_SIZE_DIGITS) {
      throw new HttpResponseError("HPE_INVALID_CHUNK_SIZE", "a chunk size too large");
    }
    const size = Number.parseInt(digits, 16);
    if (size === 0) this.#state = State.Trailers;
    else {
      this.#remaining = size;
      this.#state = State.ChunkData;
    }
    return lf + 1;
  }

  /** The CR LF that closes a chunk's data, possibly split across reads (`#remaining` counts what was seen). */
  #chunkEnd(data: Buffer, offset: number): number {
    let position = offset;
    while (position < data.length && this.#remaining < 2) {
      const expected = this.#remaining === 0 ? 0x0d : 0x0a;
      if (data[position] !== expected) {
        throw new HttpResponseError("HPE_STRICT", "chunk data not followed by CR LF");
      }
      position++;
      this.#remaining++;
    }
    if (this.#remaining === 2) {
      this.#remaining = 0;
      this.#state = State.ChunkSize;
    }
    return position;
  }
}

/** Whether the connection stays open after this response (RFC 9112 §9.3). */
function keepsAlive(minor: string, connection: string | string[] | undefined): boolean {
  // What nearly every response says, told without splitting it.
  if (connection === undefined) return minor === "1";
  if (typeof connection === "string") {
    if (isNamed(connection, "keep-alive")) return true;
    if (isNamed(connection, "close")) return false;
  }
  const tokens = (Array.isArray(connection) ? connection.join(",") : (connection ?? ""))
    .toLowerCase()
    .split(",")
    .map((token) => token.trim());
  if (tokens.includes("close")) return false;
  return minor === "1" || tokens.includes("keep-alive");
}

/**
 * The fields of a head (after its first line), lowercased names, repeated names as arrays. Refuses bare CR or
 * LF, obsolete folding, whitespace before the colon, names outside the token grammar, values with controls.
 */
function parseFields(lines: string[]): ResponseHeaders {
  const code = "HPE_INVALID_HEADER_TOKEN";
  const headers: ResponseHeaders = Object.create(null);
  for (let i = 1; i < lines.length; i++) {
    const line = lines[i]!;
    const colon = line.indexOf(":");
    if (colon <= 0) {
      const what =
        line.length > 0 && (line[0] === " " || line[0] === "\t")
          ? "an obsolete folded line"
          : "a line that is not a field";
      throw new HttpResponseError(code, `${what}: ${JSON.stringify(line.slice(0, 100))}`);
    }
    const name = line.slice(0, colon);
    if (!TOKEN.test(name)) {
      throw new HttpResponseError(code, `an invalid field name: ${JSON.stringify(name.slice(0, 100))}`);
    }
    // Trimmed by hand: a regular expression anchored at the end retries at every blank of a long run of them,
    // which made one field of 16 KiB of spaces cost a fifth of a second.
    let start = colon + 1;
    let end = line.length;
    while (start < end && (line[start] === " " || line[start] === "\t")) start++;
    while (end > start && (line[end - 1] === " " || line[end - 1] === "\t")) end--;
    const value = line.slice(start, end);
    if (value.length > 0 && !FIELD_VALUE.test(value)) {
      throw new HttpResponseError(
        "HPE_INVALID_HEADER_TOKEN",
        `an invalid value in the field ${JSON.stringify(name)}`,
      );
    }
    const lower = name.toLowerCase();
    if (lower === "transfer-encoding" && line.includes("\t", end)) {
      // llhttp takes `chunked` followed by a tab for another coding and reads the body to the close: refused,
      // or the two would frame the same bytes differently.
      throw new HttpResponseError(
        "HPE_INVALID_TRANSFER_ENCODING",
        "a Transfer-Encoding followed by a tab, which llhttp reads as a coding other than chunked",
      );
    }
    const existing = headers[lower];
    if (existing === undefined) headers[lower] = value;
    else if (Array.isArray(existing)) existing.push(value);
    else headers[lower] = [existing, value];
  }
  return headers;
}
