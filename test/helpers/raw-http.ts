// Raw HTTP/1.1 for adversarial tests: bytes go out over mTLS exactly as written; responses parsed by hand.
import net from "node:net";
import tls from "node:tls";

/** What a test client presents: its certificate chain and key, and the roots it trusts for the server. */
export interface ClientTls {
  ca: string;
  cert: string;
  key: string;
  /** SNI and the name checked in the server certificate; the test PKI issues `localhost`. */
  servername?: string;
}

export interface RawResponse {
  status: number;
  reason: string;
  /** Header lines in the order received, names as the server spelled them. */
  rawHeaders: Array<[string, string]>;
  /** The body, de-chunked when the response was chunked. */
  body: string;
  /** Every value of a header, case-insensitively, in order. */
  values(name: string): string[];
  /** The first value of a header, case-insensitively. */
  header(name: string): string | undefined;
}

export interface RawExchange {
  /** Complete final responses in order (1xx interim responses are skipped). */
  responses: RawResponse[];
  /** The server ended or reset the connection before we stopped listening. */
  closed: boolean;
  /** Stopped because the deadline passed, not because the expected responses arrived or the server closed. */
  timedOut: boolean;
  /** Everything the server sent, for failure messages. */
  raw: string;
}

const HEAD_END = "\r\n\r\n";

interface Parsed {
  response: RawResponse;
  consumed: number;
}

function makeResponse(status: number, reason: string, rawHeaders: Array<[string, string]>, body: string) {
  const values = (name: string): string[] => {
    const lower = name.toLowerCase();
    return rawHeaders.filter(([n]) => n.toLowerCase() === lower).map(([, v]) => v);
  };
  return { status, reason, rawHeaders, body, values, header: (name: string) => values(name)[0] };
}

/**
 * Parses one response from the start of `buffer` (latin1, so string offsets are byte offsets). Returns null
 * until it is complete; a response framed by connection close is complete only once `ended` is true.
 */
function parseResponse(buffer: string, ended: boolean): Parsed | null {
  const headEnd = buffer.indexOf(HEAD_END);
  if (headEnd < 0) return null;
  const lines = buffer.slice(0, headEnd).split("\r\n");
  const statusLine = /^HTTP\/1\.[01] (\d{3}) ?(.*)$/.exec(lines[0]!);
  if (!statusLine) throw new Error(`not an HTTP/1.1 status line: ${JSON.stringify(lines[0])}`);
  const status = Number(statusLine[1]);
  const rawHeaders: Array<[string, string]> = [];
  for (const line of lines.slice(1)) {
    const colon = line.indexOf(":");
    if (colon <= 0) throw new Error(`malformed response header line: ${JSON.stringify(line)}`);
    rawHeaders.push([line.slice(0, colon), line.slice(colon + 1).trim()]);
  }
  const response = (body: string) => makeResponse(status, statusLine[2]!, rawHeaders, body);
  const bodyStart = headEnd + HEAD_END.length;
  if (status < 200 || status === 204 || status === 304)
    return { response: response(""), consumed: bodyStart };

  const find = (name: string) => rawHeaders.find(([n]) => n.toLowerCase() === name)?.[1];
  const transferEncoding = find("transfer-encoding");
  if (transferEncoding?.toLowerCase().includes("chunked")) {
    let at = bodyStart;
    let body = "";
    for (;;) {
      const lineEnd = buffer.indexOf("\r\n", at);
      if (lineEnd < 0) return null;
      const size = Number.parseInt(buffer.slice(at, lineEnd).split(";")[0]!, 16);
      if (Number.isNaN(size)) throw new Error(`bad chunk size line at ${at}`);
      at = lineEnd + 2;
      if (size === 0) {
        // Trailers, if any, end with an empty line.
        const trailersEnd = buffer.indexOf("\r\n", at);
        if (trailersEnd < 0) return null;
        if (trailersEnd === at) return { response: response(body), consumed: at + 2 };
        const end = buffer.indexOf(HEAD_END, at);
        if (end < 0) return null;
        return { response: response(body), consumed: end + HEAD_END.length };
      }
      if (buffer.length < at + size + 2) return null;
      body += buffer.slice(at, at + size);
      at += size + 2;
    }
  }
  const contentLength = find("content-length");
  if (contentLength !== undefined) {
    const length = Number(contentLength);
    if (buffer.length < bodyStart + length) return null;
    return { response: response(buffer.slice(bodyStart, bodyStart + length)), consumed: bodyStart + length };
  }
  // Neither framing header: the body runs to the end of the connection.
  if (!ended) return null;
  return { response: response(buffer.slice(bodyStart)), consumed: buffer.length };
}

/** One mTLS connection on which a test writes raw bytes and reads back whole responses. */
export class RawConnection {
  readonly socket: tls.TLSSocket;
  #buffer = "";
  #raw = "";
  #ended = false;
  #responses: RawResponse[] = [];
  #delivered = 0;
  #wake: (() => void) | undefined;

  private constructor(socket: tls.TLSSocket) {
    this.socket = socket;
    socket.setEncoding("latin1");
    socket.on("data", (chunk: string) => {
      this.#raw += chunk;
      this.#buffer += chunk;
      this.#parse();
    });
    const ended = () => {
      this.#ended = true;
      this.#parse();
    };
    socket.on("end", ended);
    socket.on("close", ended);
    // A reset after the server's last response is one way of closing; the test asserts on what arrived.
    socket.on("error", ended);
  }

  /** Connects and completes the mTLS handshake, or rejects within `timeoutMs`. */
  static open(port: number, client: ClientTls, timeoutMs = 3000): Promise<RawConnection> {
    return new Promise((resolve, reject) => {
      const socket = tls.connect({
        host: "127.0.0.1",
        port,
        servername: client.servername ?? "localhost",
        ca: client.ca,
        cert: client.cert,
        key: client.key,
        ALPNProtocols: ["http/1.1"],
      });
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new Error(`no TLS handshake with 127.0.0.1:${port} within ${timeoutMs}ms`));
      }, timeoutMs);
      socket.once("secureConnect", () => {
        clearTimeout(timer);
        socket.removeListener("error", onError);
        resolve(new RawConnection(socket));
      });
      const onError = (error: Error) => {
        clearTimeout(timer);
        reject(error);
      };
      socket.once("error", onError);
    });
  }

  write(bytes: string | Buffer): void {
    this.socket.write(typeof bytes === "string" ? Buffer.from(bytes, "latin1") : bytes);
  }

  get ended(): boolean {
    return this.#ended;
  }

  /** Everything received so far. */
  get raw(): string {
    return this.#raw;
  }

  /**
   * Waits for `count` more complete responses than earlier calls returned, until the server closes, or until
   * `timeoutMs`; returns what arrived and never throws on a timeout (the caller asserts on the count).
   */
  async read(count: number, timeoutMs = 3000): Promise<RawExchange> {
    const deadline = Date.now() + timeoutMs;
    let timedOut = false;
    while (this.#responses.length - this.#delivered < count && !this.#ended) {
      const left = deadline - Date.now();
      if (left <= 0) {
        timedOut = true;
        break;
      }
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.#wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.#wake = undefined;
    }
    const responses = this.#responses.slice(this.#delivered);
    this.#delivered = this.#responses.length;
    return { responses, closed: this.#ended, timedOut, raw: this.#raw };
  }

  /** Resolves true once the server has closed the connection, false if it is still open after `timeoutMs`. */
  async closedWithin(timeoutMs: number): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (!this.#ended && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 10));
    return this.#ended;
  }

  close(): void {
    this.socket.destroy();
  }

  #parse(): void {
    try {
      for (;;) {
        const parsed = parseResponse(this.#buffer, this.#ended);
        if (!parsed) break;
        this.#buffer = this.#buffer.slice(parsed.consumed);
        if (parsed.response.status >= 200) this.#responses.push(parsed.response);
      }
    } catch (error) {
      // Bytes that are not HTTP end the conversation; the test sees the raw text and the responses so far.
      this.#ended = true;
      this.socket.destroy(error as Error);
    }
    this.#wake?.();
  }
}

/** A plain TCP connection as an app holds one to a sidecar's listener: raw bytes out, everything back. */
export function plainConnection(port: number) {
  const socket = net.connect(port, "127.0.0.1");
  let received = "";
  socket.setEncoding("latin1");
  socket.on("data", (chunk: string) => {
    received += chunk;
  });
  socket.on("error", () => {});
  const closed = new Promise<void>((resolve) => socket.once("close", () => resolve()));
  return {
    socket,
    received: () => received,
    /** Resolves once the sidecar closed the connection; rejects after `timeoutMs`. */
    async closedWithin(timeoutMs: number) {
      let timer: NodeJS.Timeout | undefined;
      const late = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`connection still open after ${timeoutMs}ms`)), timeoutMs);
      });
      await Promise.race([closed, late]).finally(() => clearTimeout(timer));
    },
  };
}

/**
 * Opens a connection, writes `bytes` in one go (several pipelined requests if you like), and waits for
 * `expect` responses or the server closing, whichever is first, then closes. Bounded by `timeoutMs`.
 */
export async function exchange(
  port: number,
  client: ClientTls,
  bytes: string | Buffer,
  options: { expect?: number; timeoutMs?: number } = {},
): Promise<RawExchange> {
  const connection = await RawConnection.open(port, client, options.timeoutMs);
  try {
    connection.write(bytes);
    const result = await connection.read(options.expect ?? 1, options.timeoutMs);
    // A server that answered and is about to close (Connection: close) has usually done so by now; give it
    // a moment so `closed` tells "kept alive" from "closed after the response".
    if (!result.closed) result.closed = await connection.closedWithin(100);
    return result;
  } finally {
    connection.close();
  }
}

/** A GET request as raw bytes; `extra` goes into the header block verbatim (each line ending in CRLF). */
export function rawGet(target: string, extra = "", host = "localhost"): string {
  return `GET ${target} HTTP/1.1\r\nHost: ${host}\r\n${extra}\r\n`;
}

/** One request line as the app's side of the wire saw it. */
export interface TappedRequest {
  method: string;
  target: string;
}

/**
 * A transparent TCP relay in front of the app that keeps every byte the app was sent, so a test can prove
 * what the app never received, independently of what the sidecar says it forwarded.
 */
export interface Wiretap {
  port: number;
  url: string;
  /** Everything sent towards the app so far, all connections, in arrival order per connection. */
  text(): string;
  /** The requests sent towards the app, framed the way an HTTP/1.1 parser frames them. */
  requests(): TappedRequest[];
  close(): Promise<void>;
}

/**
 * Frames a client-to-server byte stream into requests (Content-Length or chunked bodies), as the app's parser
 * would. Bytes that do not frame end the list with a `<unparsable>` entry rather than a guess.
 */
function splitRequests(stream: string): TappedRequest[] {
  const found: TappedRequest[] = [];
  let at = 0;
  while (at < stream.length) {
    const headEnd = stream.indexOf(HEAD_END, at);
    if (headEnd < 0) break;
    const lines = stream.slice(at, headEnd).split("\r\n");
    const requestLine = /^([A-Z]+) (\S+) HTTP\/1\.[01]$/.exec(lines[0]!);
    if (!requestLine) {
      found.push({ method: "?", target: "<unparsable>" });
      break;
    }
    found.push({ method: requestLine[1]!, target: requestLine[2]! });
    const header = (name: string) =>
      lines
        .slice(1)
        .find((line) => line.toLowerCase().startsWith(`${name}:`))
        ?.slice(name.length + 1)
        .trim();
    at = headEnd + HEAD_END.length;
    if (header("transfer-encoding")?.toLowerCase() === "chunked") {
      for (;;) {
        const lineEnd = stream.indexOf("\r\n", at);
        if (lineEnd < 0) return found;
        const size = Number.parseInt(stream.slice(at, lineEnd), 16);
        at = lineEnd + 2;
        if (Number.isNaN(size)) {
          found.push({ method: "?", target: "<unparsable>" });
          return found;
        }
        if (size === 0) {
          // The trailer section: header lines, then an empty line.
          if (stream.startsWith("\r\n", at)) {
            at += 2;
          } else {
            const end = stream.indexOf(HEAD_END, at);
            if (end < 0) return found;
            at = end + HEAD_END.length;
          }
          break;
        }
        at += size + 2;
      }
    } else {
      at += Number(header("content-length") ?? 0);
    }
  }
  return found;
}

export async function startWiretap(appPort: number): Promise<Wiretap> {
  const streams: string[][] = [];
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    const chunks: string[] = [];
    streams.push(chunks);
    const app = net.connect(appPort, "127.0.0.1");
    sockets.add(client);
    sockets.add(app);
    client.on("data", (chunk: Buffer) => {
      chunks.push(chunk.toString("latin1"));
      app.write(chunk);
    });
    app.on("data", (chunk: Buffer) => client.write(chunk));
    client.on("end", () => app.end());
    app.on("end", () => client.end());
    for (const [a, b] of [
      [client, app],
      [app, client],
    ] as const) {
      a.on("error", () => b.destroy());
      a.on("close", () => {
        sockets.delete(a);
        b.destroy();
      });
    }
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as net.AddressInfo).port;
  const text = () => streams.map((chunks) => chunks.join("")).join("\n");
  return {
    port,
    url: `http://127.0.0.1:${port}`,
    text,
    requests() {
      return streams.flatMap((chunks) => splitRequests(chunks.join("")));
    },
    async close() {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
