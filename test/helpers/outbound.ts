// Outbound e2e pieces: an upstream sidecar in front of a real app, a calling sidecar, and curl as the app.
import { createHash, X509Certificate } from "node:crypto";
import { parseXfcc } from "../../src/inbound/index.ts";
import type { AppProcess } from "./app.ts";
import { type CurlResponse, curl, parseHttpResponse } from "./clients.ts";
import type { IdentityFiles, TestPki } from "./pki.ts";
import { type RunningSidecar, startSidecar } from "./sidecar.ts";

/** An upstream sidecar: inbound mTLS in front of `app`, allowing only the given SPIFFE IDs. */
export function startUpstream(
  pki: TestPki,
  identity: IdentityFiles,
  app: Pick<AppProcess, "url">,
  allow: readonly string[],
  extra: Record<string, unknown> = {},
): Promise<RunningSidecar> {
  return startSidecar(pki, identity, {
    inbound: {
      listen: "127.0.0.1:0",
      app: app.url,
      policy: { rules: [{ name: "callers", action: "allow", from: allow }] },
    },
    ...extra,
  });
}

export interface CallingSidecar extends RunningSidecar {
  /** http://127.0.0.1:<port> of the shared outbound listener: what an app puts in HTTP_PROXY. */
  proxyUrl: string;
  outboundPort: number;
}

/** A sidecar whose outbound listener carries the app's calls to `upstreams`. */
export async function startCaller(
  pki: TestPki,
  identity: IdentityFiles,
  upstreams: Record<string, Record<string, unknown>>,
  extra: Record<string, unknown> = {},
): Promise<CallingSidecar> {
  const running = await startSidecar(pki, identity, {
    outbound: { listen: "127.0.0.1:0", upstreams },
    ...extra,
  });
  const port = running.sidecar.addresses().outbound!.port;
  return { ...running, proxyUrl: `http://127.0.0.1:${port}`, outboundPort: port };
}

/** `host:port` of a running sidecar's inbound listener, as an upstream `address`. */
export function inboundAddress(sidecar: RunningSidecar): string {
  return `127.0.0.1:${sidecar.inboundPort}`;
}

export interface AppRequest {
  /** Go through this HTTP proxy the way an app with HTTP_PROXY set does (curl reads `http_proxy`). */
  proxy?: string;
  method?: string;
  /** "Name: value" lines. */
  headers?: string[];
  body?: string;
  /** Further curl arguments, before the URL. */
  args?: string[];
  timeoutMs?: number;
}

const PROXY_VARIABLES = ["http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"];

/**
 * One plain-HTTP request with curl, as the app next to the sidecar makes it. The proxy comes only from
 * `request.proxy` (set as `http_proxy` in curl's environment), never from the test machine's own settings.
 */
export async function appRequest(url: string, request: AppRequest = {}): Promise<CurlResponse> {
  const timeoutMs = request.timeoutMs ?? 10_000;
  const env: NodeJS.ProcessEnv = { ...process.env, no_proxy: "", NO_PROXY: "" };
  for (const name of PROXY_VARIABLES) delete env[name];
  if (request.proxy) env.http_proxy = request.proxy;
  const args = ["-sS", "-i", "--max-time", String(Math.ceil(timeoutMs / 1000))];
  if (request.method) args.push("-X", request.method);
  for (const header of request.headers ?? []) args.push("-H", header);
  if (request.body !== undefined) args.push("--data-binary", request.body);
  args.push(...(request.args ?? []), url);
  const result = await curl(args, { timeoutMs: timeoutMs + 2000, env });
  return { ...result, response: parseHttpResponse(result.stdout, false) };
}

/** What the echo app saw, from its JSON body. */
export interface Echoed {
  method: string;
  url: string;
  headers: Record<string, string | undefined>;
  bodyBytes: number;
  /** The pairs of the single XFCC element the upstream sidecar set: By, Hash, Subject, URI, DNS. */
  xfcc: Record<string, string>;
}

export function echoed(result: CurlResponse): Echoed {
  if (result.response?.status !== 200) {
    throw new Error(
      `expected 200 from the app, got ${result.response?.status}: ${result.stdout}${result.stderr}`,
    );
  }
  const echo = JSON.parse(result.response.body) as Omit<Echoed, "xfcc">;
  const [element] = parseXfcc(echo.headers["x-forwarded-client-cert"] ?? "");
  const xfcc = Object.fromEntries((element ?? []).map(({ key, value }) => [key, value]));
  return { ...echo, xfcc };
}

/** The XFCC `Hash` an upstream computes for this leaf: lowercase hex sha256 of its DER. */
export function leafHash(chainPem: string): string {
  return createHash("sha256").update(new X509Certificate(chainPem).raw).digest("hex");
}

/** The sidecar's JSON error body and reason header, for a response mtlsd made itself. */
export function sidecarError(result: CurlResponse): {
  status: number | undefined;
  header: string | undefined;
  reason: string;
  error: string;
} {
  const body = JSON.parse(result.response?.body || "{}") as { reason?: string; error?: string };
  return {
    status: result.response?.status,
    header: result.response?.headers["x-mtlsd-reason"],
    reason: body.reason ?? "",
    error: body.error ?? "",
  };
}
