// Decides which upstream a plain request from the app is for: the port it came to, else proxy URL, else Host header.
import { authorityKey, hostProblem } from "../proxy/index.ts";
import type { Upstream } from "./upstream.ts";

export type Route =
  | {
      ok: true;
      upstream: Upstream;
      /** Path and query for the upstream, exactly as the app wrote them. */
      path: string;
      /** The authority of an absolute-form target: it replaces the Host header (RFC 9112 §3.2.2). */
      authority?: string;
    }
  | { ok: false; status: 400 | 502; reason: "bad_request" | "unknown_upstream"; detail: string };

// scheme "://" authority, then the rest: path, query (and a fragment the upstream will refuse).
const ABSOLUTE_FORM = /^([a-z][a-z0-9+.-]*):\/\/([^/?#]*)(.*)$/is;

export class Router {
  readonly #byName = new Map<string, Upstream>();
  readonly #byAuthority = new Map<string, Upstream>();
  /** The configured upstream names, for messages. */
  readonly names: string;

  constructor(upstreams: readonly Upstream[]) {
    // An app may address an upstream by its name with any port (http://orders/...), or by its real address
    // with the port (http://orders.internal:15006/...). A bare address host is not enough: loopback or a
    // shared gateway host would be ambiguous, and a per-upstream port's own Host must not match another.
    for (const upstream of upstreams) {
      if (!this.#byName.has(upstream.name)) this.#byName.set(upstream.name, upstream);
      const authority = upstream.config.address?.toLowerCase();
      if (authority && !this.#byAuthority.has(authority)) this.#byAuthority.set(authority, upstream);
    }
    this.names = upstreams.map((upstream) => upstream.name).join(", ");
  }

  /**
   * `target` is the request-target; `host` the Host header (HTTP/2: `:authority`); `portUpstream` the upstream
   * owning the port (or the CONNECT tunnel) the request arrived on, if any. Such a port decides its upstream
   * whatever the Host says: an app on it may pass a Host its own caller chose, which must not reroute the call.
   * A Host that RFC 9112 §3.2 makes invalid is a 400 wherever the request arrived. Host names compare
   * case-insensitively (CVE-2021-39155 was a proxy that didn't).
   */
  route(target: string, host: string | undefined, portUpstream: Upstream | undefined): Route {
    const badHost = host === undefined ? undefined : hostProblem(host);
    if (badHost) return badRequestRoute(badHost);
    if (target.charCodeAt(0) !== 0x2f /* "/" */) return this.#routeAbsolute(target, host, portUpstream);
    const upstream = portUpstream ?? (host ? this.#lookup(host) : undefined);
    if (!upstream) return this.#unknown(host ?? "");
    return { ok: true, upstream, path: target };
  }

  /**
   * A proxy request (`GET http://orders/v1/x`). The path is cut out of the target as written, not taken from
   * a parsed URL: WHATWG parsing would resolve dot segments and re-encode characters, and the upstream must
   * receive (and authorize) exactly the path the app sent. Its Host must name the same authority (RFC 9112
   * §3.2.2); on an upstream's own port, the URL must name that upstream.
   */
  #routeAbsolute(target: string, host: string | undefined, portUpstream: Upstream | undefined): Route {
    const parts = ABSOLUTE_FORM.exec(target);
    if (!parts) {
      return badRequestRoute(
        `the request-target ${quote(target)} is neither a path nor an absolute http:// URL`,
      );
    }
    const scheme = parts[1]!.toLowerCase();
    const authority = parts[2]!;
    if (scheme !== "http") {
      return {
        ok: false,
        status: 502,
        reason: "unknown_upstream",
        detail: `only http:// URLs can be proxied (mtlsd adds the TLS), not ${scheme}://`,
      };
    }
    // RFC 9110 §4.2.4: userinfo in an http URI is to be treated as an error, not silently dropped.
    if (authority.includes("@"))
      return badRequestRoute("the URL has userinfo (user@host), which is not allowed");
    const badAuthority = authority === "" ? "it is empty" : hostProblem(authority);
    if (badAuthority) {
      return badRequestRoute(
        `the URL's host ${quote(authority)} is not a valid host[:port]: ${badAuthority}`,
      );
    }
    if (host !== undefined && authorityKey(host) !== authorityKey(authority)) {
      return badRequestRoute(
        `the Host header ${quote(host)} names another authority than the URL (${quote(authority)})`,
      );
    }
    const upstream = this.#lookup(authority);
    if (!upstream) return this.#unknown(authority);
    if (portUpstream && upstream !== portUpstream) {
      return badRequestRoute(
        `this port carries requests for upstream ${portUpstream.name} only, not for ${quote(authority)}`,
      );
    }
    const rest = parts[3]!;
    const path = rest === "" ? "/" : rest.charCodeAt(0) === 0x2f ? rest : `/${rest}`;
    return { ok: true, upstream, path, authority };
  }

  /** The upstream configured under `name`, if any. */
  named(name: string): Upstream | undefined {
    return this.#byName.get(name);
  }

  /** The upstream a CONNECT authority (`orders:443`, `orders.internal:15006`) names, if any. */
  upstreamFor(authority: string): Upstream | undefined {
    return authority === "" ? undefined : this.#lookup(authority);
  }

  #unknown(asked: string): Route {
    return {
      ok: false,
      status: 502,
      reason: "unknown_upstream",
      detail: `no upstream for host ${quote(asked)}; known upstreams: ${this.names}`,
    };
  }

  #lookup(authority: string): Upstream | undefined {
    const lower = authority.toLowerCase();
    return this.#byAuthority.get(lower) ?? this.#byName.get(hostOf(lower));
  }
}

/** The host part of `host[:port]` or `[v6]:port`, lowercased. */
function hostOf(authority: string): string {
  const lower = authority.toLowerCase();
  if (lower.startsWith("[")) return lower.slice(1, lower.indexOf("]"));
  const colon = lower.lastIndexOf(":");
  return colon === -1 ? lower : lower.slice(0, colon);
}

export function badRequestRoute(detail: string): Route {
  return { ok: false, status: 400, reason: "bad_request", detail };
}

/** JSON-quoted and cut short: the value came from the app and goes into a log line and a response. */
function quote(value: string): string {
  return JSON.stringify(value.length > 200 ? `${value.slice(0, 200)}…` : value);
}
