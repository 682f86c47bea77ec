// The two apps of `mtlsd demo`: an orders API that reads XFCC to know its caller, and a frontend that calls it.
import http from "node:http";
import type { AddressInfo } from "node:net";

/** What an app saw of one request: the transcript prints it. */
export interface ReceivedRequest {
  method: string;
  url: string;
  headers: http.IncomingHttpHeaders;
}

/** A reply as a client saw it. */
export interface Reply {
  status: number;
  statusText: string;
  headers: http.IncomingHttpHeaders;
  body: string;
}

export interface RequestOptions {
  port: number;
  method?: string;
  /** An origin-form path, or an absolute URL to send to an HTTP proxy. */
  path: string;
  headers?: http.OutgoingHttpHeaders;
  body?: string;
  /** A keep-alive agent, or false for a new connection per request (the app that sends Connection: close). */
  agent?: http.Agent | false;
  timeoutMs?: number;
}

/** One plain HTTP request to 127.0.0.1, bounded by a timeout. */
export function httpRequest(options: RequestOptions): Promise<Reply> {
  // A request to a proxy names its target twice, in the URL and in Host; Node's default Host would
  // name the proxy, and the sidecar refuses a Host that disagrees with the URL (RFC 9112 §3.2).
  const headers = /^https?:\/\//.test(options.path)
    ? { host: new URL(options.path).host, ...options.headers }
    : options.headers;
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        host: "127.0.0.1",
        port: options.port,
        method: options.method ?? "GET",
        path: options.path,
        headers,
        agent: options.agent ?? false,
        timeout: options.timeoutMs ?? 5000,
      },
      (res) => {
        let body = "";
        res.setEncoding("utf8");
        res.on("data", (chunk: string) => {
          body += chunk;
        });
        res.on("end", () =>
          resolve({
            status: res.statusCode ?? 0,
            statusText: res.statusMessage ?? "",
            headers: res.headers,
            body,
          }),
        );
        res.on("error", reject);
      },
    );
    req.on("timeout", () => req.destroy(new Error(`no answer from 127.0.0.1:${options.port} in time`)));
    req.on("error", reject);
    req.end(options.body);
  });
}

async function listen(server: http.Server): Promise<number> {
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => resolve());
  });
  return (server.address() as AddressInfo).port;
}

async function close(server: http.Server): Promise<void> {
  if (!server.listening) return;
  const closed = new Promise<void>((resolve) => server.close(() => resolve()));
  server.closeAllConnections();
  await closed;
}

/** The caller's SPIFFE ID from the XFCC element our sidecar set: the one fact an app behind mtlsd needs. */
export function callerFromXfcc(xfcc: string | undefined): string | undefined {
  return xfcc === undefined ? undefined : /(?:^|;)URI=([^;,]+)/.exec(xfcc)?.[1];
}

/** The orders API: knows nothing of TLS, and learns who called from X-Forwarded-Client-Cert. */
export class OrdersApp {
  readonly received: ReceivedRequest[] = [];
  port = 0;
  readonly #server = http.createServer((req, res) => this.#handle(req, res));

  async start(): Promise<number> {
    this.port = await listen(this.#server);
    return this.port;
  }

  close(): Promise<void> {
    return close(this.#server);
  }

  #handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    req.resume();
    req.on("end", () => {
      const method = req.method ?? "GET";
      const url = req.url ?? "/";
      // Only the last requests matter to the transcript; a long --keep run must not grow without bound.
      if (this.received.length >= 100) this.received.shift();
      this.received.push({ method, url, headers: req.headers });
      const xfcc = req.headers["x-forwarded-client-cert"];
      const caller = callerFromXfcc(Array.isArray(xfcc) ? xfcc[0] : xfcc) ?? "unknown";
      const order = /^\/v1\/orders\/([A-Za-z0-9-]+)$/.exec(url.split("?")[0]!)?.[1];
      const reply = (status: number, body: Record<string, unknown>) => {
        res.writeHead(status, { "content-type": "application/json" });
        res.end(JSON.stringify(body));
      };
      if (method === "GET" && order) reply(200, { id: order, status: "shipped", caller });
      else if (method === "GET" && url.split("?")[0] === "/v1/orders")
        reply(200, { orders: ["42", "43"], caller });
      else if (method === "POST") reply(201, { accepted: url, caller });
      else reply(404, { error: `no route for ${method} ${url}` });
    });
  }
}

/**
 * The frontend: a page handler that calls orders through its sidecar, set as its HTTP proxy, with a new
 * connection for every call, as many apps do (the sidecar's pool is what keeps the mTLS connections).
 */
export class FrontendApp {
  readonly #proxyPort: number;
  readonly #server = http.createServer((req, res) => void this.#handle(req, res));
  port = 0;

  constructor(proxyPort: number) {
    this.#proxyPort = proxyPort;
  }

  async start(): Promise<number> {
    this.port = await listen(this.#server);
    return this.port;
  }

  close(): Promise<void> {
    return close(this.#server);
  }

  async #handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    req.resume();
    const id = /^\/order\/([A-Za-z0-9-]+)$/.exec(req.url ?? "")?.[1];
    if (req.method !== "GET" || !id) {
      res.writeHead(404, { "content-type": "text/plain" });
      res.end("try GET /order/42\n");
      return;
    }
    try {
      const orders = await httpRequest({
        port: this.#proxyPort,
        path: `http://orders/v1/orders/${id}`,
        headers: { connection: "close" },
        agent: false,
      });
      res.writeHead(orders.status === 200 ? 200 : 502, { "content-type": "application/json" });
      res.end(
        JSON.stringify({
          page: `order ${id}`,
          orders_status: orders.status,
          orders: JSON.parse(orders.body),
        }),
      );
    } catch (error) {
      res.writeHead(502, { "content-type": "application/json" });
      res.end(JSON.stringify({ page: `order ${id}`, error: (error as Error).message }));
    }
  }
}
