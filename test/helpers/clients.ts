// Real clients for e2e tests: curl and openssl as child processes, undici over mTLS, raw bytes over tls.connect.
//
// Every call is asynchronous and bounded by a timeout: the sidecar under test runs in the test's own process,
// so a synchronous child process (execFileSync) would freeze the very server it is talking to.
import { execFile } from "node:child_process";
import tls from "node:tls";
import { buildConnector, Client } from "undici";

export interface CommandResult {
  /** Exit code; null when the process was killed (e.g. by the timeout). */
  code: number | null;
  stdout: string;
  stderr: string;
}

export interface RunOptions {
  /** Written to the child's stdin, which is then closed. Without it stdin is closed at once. */
  input?: string | Buffer;
  /** Kills the child after this long. Default 10 s. */
  timeoutMs?: number;
  /** The child's environment; default: this process's. */
  env?: NodeJS.ProcessEnv;
}

/**
 * Runs a program and resolves with its exit code and output; never rejects on a non-zero exit, so a test
 * can assert on how a client failed (curl's exit code, openssl's stderr) as well as on success.
 */
export function run(
  command: string,
  args: readonly string[],
  options: RunOptions = {},
): Promise<CommandResult> {
  return new Promise((resolve, reject) => {
    const child = execFile(
      command,
      args,
      {
        encoding: "utf8",
        timeout: options.timeoutMs ?? 10_000,
        maxBuffer: 64 * 1024 * 1024,
        ...(options.env ? { env: options.env } : {}),
      },
      (error, stdout, stderr) => {
        if (error && typeof error.code === "string") {
          // ENOENT and friends: the program is missing, which is a broken test machine, not a result.
          reject(error);
          return;
        }
        resolve({ code: error ? (typeof error.code === "number" ? error.code : null) : 0, stdout, stderr });
      },
    );
    child.stdin?.on("error", () => {});
    child.stdin?.end(options.input);
  });
}

/** Runs curl with exactly these arguments. */
export function curl(args: readonly string[], options: RunOptions = {}): Promise<CommandResult> {
  return run("curl", args, options);
}

/** Runs the openssl CLI with exactly these arguments. */
export function openssl(args: readonly string[], options: RunOptions = {}): Promise<CommandResult> {
  return run("openssl", args, options);
}

export interface HttpResponse {
  status: number;
  /** Lowercased names; repeated headers joined with ", ". */
  headers: Record<string, string>;
  body: string;
}

/**
 * Parses one HTTP/1.x response; null when there is no status line. `wire: true` (the default) reads bytes as
 * they came off a socket and decodes chunked framing; pass false for `curl -i` output, which curl already decoded.
 */
export function parseHttpResponse(raw: string, wire = true): HttpResponse | null {
  // curl -i prints an HTTP/2 response's status line as "HTTP/2 200".
  const start = raw.search(/HTTP\/(?:1\.[01]|2) \d{3}/);
  if (start < 0) return null;
  const text = raw.slice(start);
  const end = text.indexOf("\r\n\r\n");
  const head = end < 0 ? text : text.slice(0, end);
  const [statusLine, ...lines] = head.split("\r\n");
  const headers: Record<string, string> = {};
  for (const line of lines) {
    const colon = line.indexOf(":");
    if (colon <= 0) continue;
    const name = line.slice(0, colon).trim().toLowerCase();
    const value = line.slice(colon + 1).trim();
    headers[name] = headers[name] === undefined ? value : `${headers[name]}, ${value}`;
  }
  const rawBody = end < 0 ? "" : text.slice(end + 4);
  const chunked = wire && /(^|,)\s*chunked\s*$/i.test(headers["transfer-encoding"] ?? "");
  return { status: Number(statusLine!.split(" ")[1]), headers, body: chunked ? dechunk(rawBody) : rawBody };
}

/** Decodes a chunked body (RFC 9112 §7.1) as far as it arrived; a raw socket sees the framing curl hides. */
function dechunk(raw: string): string {
  let body = "";
  let at = 0;
  for (;;) {
    const lineEnd = raw.indexOf("\r\n", at);
    if (lineEnd < 0) return body;
    const size = Number.parseInt(raw.slice(at, lineEnd).split(";")[0]!, 16);
    if (!(size > 0)) return body;
    body += raw.slice(lineEnd + 2, lineEnd + 2 + size);
    at = lineEnd + 2 + size + 2;
  }
}

export interface CurlRequest {
  /** Trust for the server certificate (a PEM file). */
  cacert: string;
  /** Client certificate chain and key files; omit both to connect without a client certificate. */
  cert?: string;
  key?: string;
  method?: string;
  /** Extra request headers, "Name: value". */
  headers?: string[];
  /** Further curl arguments, placed before the URL. */
  args?: string[];
  timeoutMs?: number;
}

export interface CurlResponse extends CommandResult {
  /** The parsed response, or null when curl got none (then `code` and `stderr` say why). */
  response: HttpResponse | null;
}

/** One HTTPS request with curl (`-sS -i`), its response parsed. */
export async function curlRequest(url: string, request: CurlRequest): Promise<CurlResponse> {
  const timeoutMs = request.timeoutMs ?? 10_000;
  const args = ["-sS", "-i", "--max-time", String(Math.ceil(timeoutMs / 1000)), "--cacert", request.cacert];
  if (request.cert) args.push("--cert", request.cert);
  if (request.key) args.push("--key", request.key);
  if (request.method) args.push("-X", request.method);
  for (const header of request.headers ?? []) args.push("-H", header);
  args.push(...(request.args ?? []), url);
  const result = await curl(args, { timeoutMs: timeoutMs + 2000 });
  return { ...result, response: parseHttpResponse(result.stdout, false) };
}

export interface MtlsClientOptions {
  /** PEM strings. */
  ca: string;
  cert?: string;
  key?: string;
  /** Default "localhost" (the test PKI's server certificates name it). */
  servername?: string;
  minVersion?: tls.SecureVersion;
  maxVersion?: tls.SecureVersion;
}

export interface MtlsClient {
  client: Client;
  /** How many TLS connections the client has opened so far: 1 after many requests means keep-alive held. */
  connections(): number;
  close(): Promise<void>;
}

/**
 * An undici Client (one origin, one connection at a time unless told otherwise) that presents a client
 * certificate, counting the TLS connections it opens by wrapping its connector.
 */
export function mtlsClient(origin: string, options: MtlsClientOptions): MtlsClient {
  const connector = buildConnector({
    ca: options.ca,
    ...(options.cert ? { cert: options.cert } : {}),
    ...(options.key ? { key: options.key } : {}),
    servername: options.servername ?? "localhost",
    ...(options.minVersion ? { minVersion: options.minVersion } : {}),
    ...(options.maxVersion ? { maxVersion: options.maxVersion } : {}),
  });
  let opened = 0;
  const client = new Client(origin, {
    connect: (connectOptions, callback) => {
      opened++;
      connector(connectOptions, callback);
    },
    connectTimeout: 5000,
    headersTimeout: 10_000,
    bodyTimeout: 10_000,
  });
  return {
    client,
    connections: () => opened,
    close: () => client.close(),
  };
}

export interface RawTlsRequest extends tls.ConnectionOptions {
  port: number;
  /** Default 127.0.0.1. */
  host?: string;
  /** Bytes written once the handshake completes; the exchange ends when the server closes. */
  send: string | Buffer;
  /** Default 5 s. */
  timeoutMs?: number;
}

export interface RawTlsResult {
  /** False when the handshake did not complete. */
  connected: boolean;
  /** Negotiated protocol ("TLSv1.3"), when connected. */
  protocol: string | null;
  /** Everything the server sent, as latin1 text. */
  received: string;
  response: HttpResponse | null;
  /** The socket error, if any (a refused handshake, a reset). */
  error: (Error & { code?: string }) | null;
}

/**
 * Writes raw bytes over a TLS connection (for what curl cannot express: a TLS 1.2-only client, hand-made
 * requests) and collects the reply until the server closes. Never rejects: a refusal is a result.
 */
export function rawTlsRequest(request: RawTlsRequest): Promise<RawTlsResult> {
  const { port, host = "127.0.0.1", send, timeoutMs = 5000, ...tlsOptions } = request;
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let connected = false;
    let protocol: string | null = null;
    let error: (Error & { code?: string }) | null = null;
    const socket = tls.connect({ servername: "localhost", ...tlsOptions, host, port }, () => {
      connected = true;
      protocol = socket.getProtocol();
      socket.write(send);
    });
    const timer = setTimeout(() => {
      error ??= Object.assign(new Error(`no close within ${timeoutMs}ms`), { code: "TEST_TIMEOUT" });
      socket.destroy();
    }, timeoutMs);
    socket.on("data", (chunk: Buffer) => chunks.push(chunk));
    socket.on("error", (err: Error & { code?: string }) => {
      error ??= err;
    });
    socket.on("close", () => {
      clearTimeout(timer);
      const received = Buffer.concat(chunks).toString("latin1");
      resolve({ connected, protocol, received, response: parseHttpResponse(received), error });
    });
  });
}
