// Request headers an app behind the sidecar may wrongly trust: look-alike names, rerouting headers, a configured list.
import { isHopByHop } from "./headers.ts";

/** What happens to a request header whose name has an underscore (Envoy's `headers_with_underscores_action`). */
export type UnderscoreAction = "drop" | "reject" | "allow";

/**
 * Headers frameworks honour to route a request to another path or method than its request line names
 * (IIS/ASP.NET, Symfony, Laravel, Express's method-override, Rails): a path or method the policy never saw.
 */
export const REROUTING_HEADERS: readonly string[] = [
  "x-original-url",
  "x-rewrite-url",
  "x-http-method-override",
  "x-http-method",
  "x-method-override",
];

/**
 * Names the sidecar itself reads, strips or sets on every request, besides hop-by-hop ones: their look-alikes
 * (`_` for `-`) would reach a CGI-style app as the very header we stand for (CGI maps both to HTTP_X_…).
 */
const GUARDED = new Set(["host", "content-length", "expect", "trailer", ...REROUTING_HEADERS]);

export type HeaderVerdict = "keep" | "drop" | "reject";

export interface RequestHeaderRulesConfig {
  headersWithUnderscores: UnderscoreAction;
  /** Further names to remove, lowercase; a trailing `*` matches every name with that prefix. */
  removeRequestHeaders: readonly string[];
}

/**
 * Built once per config. `ownHeaders` are the names a direction sets itself (inbound: XFCC, X-Forwarded-Proto):
 * their look-alikes are dropped too, whatever `headersWithUnderscores` says.
 */
export class RequestHeaderRules {
  readonly #action: UnderscoreAction;
  readonly #exact: Set<string>;
  readonly #prefixes: string[];
  readonly #own: ReadonlySet<string>;

  constructor(config: RequestHeaderRulesConfig, ownHeaders: readonly string[] = []) {
    this.#action = config.headersWithUnderscores;
    this.#exact = new Set(REROUTING_HEADERS);
    this.#prefixes = [];
    for (const entry of config.removeRequestHeaders) {
      const lower = entry.toLowerCase();
      if (lower.endsWith("*")) this.#prefixes.push(lower.slice(0, -1));
      else this.#exact.add(lower);
    }
    this.#own = new Set(ownHeaders);
  }

  /** What to do with a request header, by its lowercased name. */
  verdict(lowerName: string): HeaderVerdict {
    if (this.#removed(lowerName)) return "drop";
    if (lowerName.indexOf("_") === -1) return "keep";
    if (this.#action === "reject") return "reject";
    if (this.#action === "drop") return "drop";
    const dashed = lowerName.replaceAll("_", "-");
    const lookalike =
      isHopByHop(dashed) || GUARDED.has(dashed) || this.#own.has(dashed) || this.#removed(dashed);
    return lookalike ? "drop" : "keep";
  }

  #removed(lowerName: string): boolean {
    if (this.#exact.has(lowerName)) return true;
    for (const prefix of this.#prefixes) if (lowerName.startsWith(prefix)) return true;
    return false;
  }
}
