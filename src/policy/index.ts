// Public face of the policy module: compile `inbound.policy`, decide per request, explain, and normalize paths.

export { compilePolicy, Policy, type PolicyOptions } from "./engine.ts";
export { formatExplanation } from "./explain.ts";
export { normalizePath } from "./path.ts";
export type {
  Decision,
  DecisionReason,
  Explanation,
  OverrideExplanation,
  PathResult,
  PolicyConfig,
  PolicyOverride,
  PolicyRequest,
  PolicyRule,
  PolicyTo,
  RuleExplanation,
  ShadowHit,
  ShadowResult,
  ToExplanation,
} from "./types.ts";
