// The compiled inbound policy: decides allow or deny per request, with Istio AuthorizationPolicy semantics.
//
// Evaluation order (istio/api security/v1beta1/authorization_policy.proto): any matching DENY rule denies;
// else any matching ALLOW rule allows; else an active break-glass override allows; else the configured default.
// A rule matches when its `from` matches (or is absent) AND one of its `to` entries matches (or it has none);
// a `to` entry matches when its methods AND its paths match. Dry-run rules (Istio's `istio.io/dry-run`) are
// evaluated for every request and reported as shadow hits, never enforced.
//
// Break-glass overrides rank below deny rules, on purpose. A deny rule is an explicit, reviewed statement that
// something must never happen (block a compromised identity, fence off /admin); an override is a one-person,
// time-boxed exception for an outage, usually because the default-deny allowlist missed something. Letting the
// exception beat an explicit deny would make every deny rule only as strong as the least careful approver, and
// breaks the rule operators already know from AWS IAM policy evaluation ("an explicit deny always wins", also for
// break-glass roles). An operator who really must lift a deny rule marks it `dryRun: true`: that is reviewed in
// the same place as the rule and keeps reporting what it would have blocked.
//
// Hot path: everything is compiled in the constructor, and the common decisions (no dry-run hit) are frozen
// objects built once, so `evaluate` allocates nothing unless a dry-run rule matched.

import { createHash } from "node:crypto";
import { MtlsdError } from "../errors.ts";
import { PathMatcher, SourceMatcher } from "./matchers.ts";
import { normalizePath } from "./path.ts";
import type {
  Decision,
  Explanation,
  OverrideExplanation,
  PolicyConfig,
  PolicyOverride,
  PolicyRequest,
  PolicyTo,
  RuleExplanation,
  ShadowHit,
  ToExplanation,
} from "./types.ts";

const FIELD = "inbound.policy";

/** Names a Decision uses for itself; a rule with one of them would make logs ambiguous. */
const RESERVED_RULE_NAMES: ReadonlySet<string> = new Set(["default", "override"]);

const NO_SHADOW: ReadonlyArray<ShadowHit> = Object.freeze([]);

interface CompiledTo {
  /** Null when the entry leaves methods unconstrained. */
  readonly methods: ReadonlySet<string> | null;
  /** Null when the entry leaves paths unconstrained. */
  readonly paths: PathMatcher | null;
}

interface CompiledMatch {
  /** Null: any source, unauthenticated included. */
  readonly from: SourceMatcher | null;
  /** Null: every request. */
  readonly to: ReadonlyArray<CompiledTo> | null;
}

interface CompiledRule extends CompiledMatch {
  readonly name: string;
  readonly action: "allow" | "deny";
  readonly dryRun: boolean;
  /** The decision this rule makes when it decides and no dry-run rule matched. */
  readonly decision: Decision;
  readonly shadow: ShadowHit;
}

interface CompiledOverride extends CompiledMatch {
  readonly source: PolicyOverride;
  readonly expiresAt: number;
  readonly decision: Decision;
}

function compileTo(
  entries: readonly PolicyTo[] | undefined,
  field: string,
): ReadonlyArray<CompiledTo> | null {
  // An empty list means "not set", as in Istio's proto3 API, where the two cannot be told apart.
  if (entries === undefined || entries.length === 0) return null;
  return entries.map((entry, i) => ({
    methods: entry.methods && entry.methods.length > 0 ? new Set(entry.methods) : null,
    paths:
      entry.paths && entry.paths.length > 0 ? new PathMatcher(entry.paths, `${field}[${i}].paths`) : null,
  }));
}

function toMatches(to: ReadonlyArray<CompiledTo> | null, method: string, path: string): boolean {
  if (to === null) return true;
  for (const entry of to) {
    // HTTP methods are case-sensitive (RFC 9110 section 9.1), so "get" is not "GET".
    if (
      (entry.methods === null || entry.methods.has(method)) &&
      (entry.paths === null || entry.paths.matches(path))
    ) {
      return true;
    }
  }
  return false;
}

function matches(m: CompiledMatch, req: PolicyRequest): boolean {
  return (m.from === null || m.from.matches(req.source)) && toMatches(m.to, req.method, req.path);
}

function explainTo(to: ReadonlyArray<CompiledTo> | null, req: PolicyRequest): ToExplanation[] {
  if (to === null) return [];
  return to.map((entry, index) => {
    const methodMatched = entry.methods === null || entry.methods.has(req.method);
    const pathMatched = entry.paths === null || entry.paths.matches(req.path);
    return { index, methodMatched, pathMatched, matched: methodMatched && pathMatched };
  });
}

/** JSON with object keys sorted at every depth and Dates as ISO strings, so equal configs hash equally. */
function canonicalJson(value: unknown): string {
  if (value instanceof Date) return JSON.stringify(value.toISOString());
  if (Array.isArray(value))
    return `[${value.map((v) => (v === undefined ? "null" : canonicalJson(v))).join(",")}]`;
  if (value !== null && typeof value === "object") {
    const entries = Object.entries(value)
      .filter(([, v]) => v !== undefined)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
      .map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`);
    return `{${entries.join(",")}}`;
  }
  return JSON.stringify(value);
}

export interface PolicyOptions {
  /** Milliseconds since the epoch; decides whether an override has expired. Defaults to Date.now. */
  now?: () => number;
}

/** A compiled `inbound.policy`; build one per config version and share it across requests. */
export class Policy {
  /** Number of rules, dry-run rules included (for /status). */
  readonly ruleCount: number;
  readonly overrideCount: number;
  /** Hex sha256 of the canonical JSON of the config (for /status: tells which policy a sidecar runs). */
  readonly sha256: string;
  readonly defaultAction: "allow" | "deny";

  private readonly now: () => number;
  private readonly rules: readonly CompiledRule[];
  private readonly denyRules: readonly CompiledRule[];
  private readonly allowRules: readonly CompiledRule[];
  private readonly dryRunRules: readonly CompiledRule[];
  private readonly overrides: readonly CompiledOverride[];
  private readonly defaultDecision: Decision;

  constructor(config: PolicyConfig, options: PolicyOptions = {}) {
    this.now = options.now ?? Date.now;
    this.defaultAction = config.default;
    this.defaultDecision = Object.freeze({
      allow: config.default === "allow",
      rule: "default",
      reason: config.default === "allow" ? "default_allow" : "default_deny",
      shadow: NO_SHADOW,
    });

    const seen = new Set<string>();
    this.rules = config.rules.map((rule, i) => {
      const field = `${FIELD}.rules[${i}]`;
      if (RESERVED_RULE_NAMES.has(rule.name)) {
        throw new MtlsdError(
          "POLICY_INVALID",
          `${field}.name: "${rule.name}" is reserved (decisions use it for themselves); choose another name`,
        );
      }
      if (seen.has(rule.name)) {
        throw new MtlsdError(
          "POLICY_INVALID",
          `${field}.name: "${rule.name}" is already used by another rule`,
        );
      }
      seen.add(rule.name);
      const allow = rule.action === "allow";
      return {
        name: rule.name,
        action: rule.action,
        dryRun: rule.dryRun === true,
        from: rule.from && rule.from.length > 0 ? new SourceMatcher(rule.from, `${field}.from`) : null,
        to: compileTo(rule.to, `${field}.to`),
        decision: Object.freeze({
          allow,
          rule: rule.name,
          reason: allow ? "rule_allow" : "rule_deny",
          shadow: NO_SHADOW,
        }),
        shadow: Object.freeze({ rule: rule.name, result: allow ? "shadow_allow" : "shadow_deny" }),
      };
    });
    this.denyRules = this.rules.filter((r) => !r.dryRun && r.action === "deny");
    this.allowRules = this.rules.filter((r) => !r.dryRun && r.action === "allow");
    this.dryRunRules = this.rules.filter((r) => r.dryRun);

    this.overrides = (config.overrides ?? []).map((o, i) => {
      const field = `${FIELD}.overrides[${i}]`;
      // Unlike a rule, an override may not cover every source: a break-glass allow names who it is for.
      if (o.from.length === 0) {
        throw new MtlsdError(
          "POLICY_INVALID",
          `${field}.from: expected at least one source, found an empty list`,
        );
      }
      const override = Object.freeze({
        reason: o.reason,
        approvedBy: o.approvedBy,
        expires: new Date(o.expires),
      });
      return {
        source: o,
        expiresAt: o.expires.getTime(),
        from: new SourceMatcher(o.from, `${field}.from`),
        to: compileTo(o.to, `${field}.to`),
        decision: Object.freeze({
          allow: true,
          rule: "override",
          reason: "override",
          shadow: NO_SHADOW,
          override,
        }),
      };
    });

    this.ruleCount = this.rules.length;
    this.overrideCount = this.overrides.length;
    this.sha256 = createHash("sha256").update(canonicalJson(config)).digest("hex");
  }

  /** The enforced decision for a request whose path is already normalized (see normalizePath). Never logs. */
  evaluate(req: PolicyRequest): Decision {
    return this.evaluateAt(req, undefined);
  }

  /** `at` pins the clock (explain uses one instant for everything it reports); undefined reads it lazily. */
  private evaluateAt(req: PolicyRequest, at: number | undefined): Decision {
    const decided = this.enforced(req, at);
    if (this.dryRunRules.length === 0) return decided;
    let shadow: ShadowHit[] | null = null;
    for (const rule of this.dryRunRules) {
      if (!matches(rule, req)) continue;
      if (shadow === null) shadow = [rule.shadow];
      else shadow.push(rule.shadow);
    }
    if (shadow === null) return decided;
    return Object.freeze({ ...decided, shadow: Object.freeze(shadow) });
  }

  private enforced(req: PolicyRequest, at: number | undefined): Decision {
    // Deny first regardless of rule order: Istio evaluates all DENY policies before any ALLOW.
    for (const rule of this.denyRules) if (matches(rule, req)) return rule.decision;
    for (const rule of this.allowRules) if (matches(rule, req)) return rule.decision;
    if (this.overrides.length > 0) {
      // The clock is read only here, so a policy without overrides never pays for it.
      const now = at ?? this.now();
      for (const o of this.overrides) if (o.expiresAt > now && matches(o, req)) return o.decision;
    }
    return this.defaultDecision;
  }

  /**
   * Overrides whose `expires` is at or before `now` (default: the policy's clock). They are ignored by evaluate;
   * the objects are the config's own, so a caller can remember which ones it already logged.
   */
  expiredOverrides(now: number = this.now()): PolicyOverride[] {
    return this.overrides.filter((o) => o.expiresAt <= now).map((o) => o.source);
  }

  /** Overrides still in force at `now` (default: the policy's clock), as the config gave them. */
  activeOverrides(now: number = this.now()): PolicyOverride[] {
    return this.overrides.filter((o) => o.expiresAt > now).map((o) => o.source);
  }

  /**
   * Everything `mtlsd policy explain` shows. `req.path` is taken as a raw request-target and normalized first,
   * exactly as the inbound handler does, so what is explained is what would be enforced.
   */
  explain(req: PolicyRequest): Explanation {
    const normalized = normalizePath(req.path);
    const base = {
      source: req.source,
      method: req.method,
      target: req.path,
      normalized,
      default: this.defaultAction,
    };
    if (!normalized.ok) return { ...base, decision: null, rules: [], overrides: [] };

    const r: PolicyRequest = { source: req.source, method: req.method, path: normalized.path };
    const now = this.now();
    const rules: RuleExplanation[] = this.rules.map((rule) => {
      const fromMatched = rule.from === null || rule.from.matches(r.source);
      const toMatched = toMatches(rule.to, r.method, r.path);
      return {
        name: rule.name,
        action: rule.action,
        dryRun: rule.dryRun,
        fromMatched,
        toMatched,
        to: explainTo(rule.to, r),
        matched: fromMatched && toMatched,
      };
    });
    const overrides: OverrideExplanation[] = this.overrides.map((o, index) => {
      const fromMatched = o.from === null || o.from.matches(r.source);
      const toMatched = toMatches(o.to, r.method, r.path);
      const expired = o.expiresAt <= now;
      return {
        index,
        reason: o.source.reason,
        approvedBy: o.source.approvedBy,
        expires: new Date(o.expiresAt),
        expired,
        fromMatched,
        toMatched,
        to: explainTo(o.to, r),
        matched: !expired && fromMatched && toMatched,
      };
    });
    return { ...base, decision: this.evaluateAt(r, now), rules, overrides };
  }
}

/** Compiles a policy; throws MtlsdError POLICY_INVALID naming the offending field. */
export function compilePolicy(config: PolicyConfig, options?: PolicyOptions): Policy {
  return new Policy(config, options);
}
