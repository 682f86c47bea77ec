// The shapes the policy engine consumes (the validated `inbound.policy` config) and produces (decisions, explanations).

/** One operation a rule covers; an absent or empty list matches every method (or path). */
export interface PolicyTo {
  methods?: string[];
  paths?: string[];
}

/** One named rule; an absent `from` matches any source, unauthenticated included; an absent `to` matches every request. */
export interface PolicyRule {
  name: string;
  action: "allow" | "deny";
  from?: string[];
  to?: PolicyTo[];
  dryRun?: boolean;
}

/** A time-boxed break-glass allow, approved by a named person; ignored once `expires` has passed. */
export interface PolicyOverride {
  from: string[];
  to?: PolicyTo[];
  reason: string;
  approvedBy: string;
  expires: Date;
}

/** The value of `inbound.policy`, as the config module produces it after syntactic validation. */
export interface PolicyConfig {
  default: "deny" | "allow";
  rules: PolicyRule[];
  overrides?: PolicyOverride[];
}

export type ShadowResult = "shadow_allow" | "shadow_deny";

/** What a dry-run rule would have done to this request. */
export interface ShadowHit {
  readonly rule: string;
  readonly result: ShadowResult;
}

/** One request as the policy sees it: `path` is already normalized (see normalizePath) and has no query. */
export interface PolicyRequest {
  /** The peer's SPIFFE ID, or null when the request is plaintext / unauthenticated. */
  source: string | null;
  method: string;
  path: string;
}

export type DecisionReason = "rule_allow" | "rule_deny" | "override" | "default_allow" | "default_deny";

/** The enforced outcome for one request. Decisions are frozen and may be shared between requests. */
export interface Decision {
  readonly allow: boolean;
  /** The deciding rule's name, "override", or "default". */
  readonly rule: string;
  readonly reason: DecisionReason;
  /** Every matching dry-run rule; one shared frozen empty array when none matched. */
  readonly shadow: ReadonlyArray<ShadowHit>;
  /** Present when reason is "override": the caller logs these at warn. */
  readonly override?: { readonly reason: string; readonly approvedBy: string; readonly expires: Date };
}

/** The normalized path (authorize it, forward `path + query`), or why the request-target must be refused. */
export type PathResult = { ok: true; path: string; query: string } | { ok: false; detail: string };

/** How one `to` entry fared; a part that the entry leaves unconstrained counts as matched. */
export interface ToExplanation {
  readonly index: number;
  readonly methodMatched: boolean;
  readonly pathMatched: boolean;
  readonly matched: boolean;
}

/** Why one rule did or did not match. `matched` ignores dryRun; `enforced` is false for dry-run rules. */
export interface RuleExplanation {
  readonly name: string;
  readonly action: "allow" | "deny";
  readonly dryRun: boolean;
  readonly fromMatched: boolean;
  readonly toMatched: boolean;
  /** Empty when the rule has no `to` (it matches every request). */
  readonly to: ReadonlyArray<ToExplanation>;
  readonly matched: boolean;
}

/** Why one override did or did not apply; an expired override never applies. */
export interface OverrideExplanation {
  readonly index: number;
  readonly reason: string;
  readonly approvedBy: string;
  readonly expires: Date;
  readonly expired: boolean;
  readonly fromMatched: boolean;
  readonly toMatched: boolean;
  readonly to: ReadonlyArray<ToExplanation>;
  readonly matched: boolean;
}

/** Everything `mtlsd policy explain` prints for one request. */
export interface Explanation {
  readonly source: string | null;
  readonly method: string;
  /** The request-target as given, before normalization. */
  readonly target: string;
  readonly normalized: PathResult;
  /** Null when the path is refused: the sidecar answers 400 bad_path before policy runs. */
  readonly decision: Decision | null;
  readonly default: "allow" | "deny";
  readonly rules: ReadonlyArray<RuleExplanation>;
  readonly overrides: ReadonlyArray<OverrideExplanation>;
}
