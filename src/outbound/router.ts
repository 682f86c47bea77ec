// Decides which upstream a plain request from the app is for: proxy URL, then Host header, then listener port.
import type { Upstream } from "./upstream.ts";

export type Route =
  | { ok: true; upstream: Upstream; path: string }
  | { ok: false; asked: string; detail: string };

export class Router {
  readonly #byName = new Map<string, Upstream>();
  readonly #byAuthority = new Map<string, Upstream>();
  readonly #names: string;

  constructor(upstreams: readonly Upstream[]) {
    // An app may address an upstream by its name with any port (http://orders/...), or by its real address
    // with the port (http://orders.internal:15006/...). A bare address host is not enough: loopback or a
    // shared gateway host would be ambiguous, and a per-upstream port's own Host must not match another.
    for (const upstream of upstreams) {
      if (!this.#byName.has(upstream.name)) this.#byName.set(upstream.name, upstream);
      const authority = upstream.config.address.toLowerCase();
      if (!this.#byAuthority.has(authority)) this.#byAuthority.set(authority, upstream);
    }
    this.#names = upstreams.map((upstream) => upstream.name).join(", ");
  }

  /**
   * `target` is the request-target; `host` the Host header; `portUpstream` the upstream owning the port the
   * request arrived on, if any. Host names compare case-insensitively (CVE-2021-39155 was a proxy that didn't).
   */
  route(target: string, host: string | undefined, portUpstream: Upstream | undefined): Route {
    let path = target;
    let asked = host ?? "";
    let upstream: Upstream | undefined;
    if (target.charCodeAt(0) !== 0x2f /* "/" */) {
      let url: URL;
      try {
        url = new URL(target);
      } catch {
        return {
          ok: false,
          asked: target,
          detail: "the request-target is neither a path nor an absolute URL",
        };
      }
      if (url.protocol !== "http:") {
        return {
          ok: false,
          asked: target,
          detail: `only http:// URLs can be proxied (mtlsd adds the TLS), not ${url.protocol}`,
        };
      }
      asked = url.host;
      upstream = this.#lookup(url.host);
      path = url.pathname + url.search;
    } else if (host) {
      upstream = this.#lookup(host);
    }
    upstream ??= portUpstream;
    if (!upstream) {
      return {
        ok: false,
        asked,
        detail: `no upstream for host ${JSON.stringify(asked)}; known upstreams: ${this.#names}`,
      };
    }
    return { ok: true, upstream, path };
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
