// The config module's public face: the schema-derived types, loading and validation, the JSON Schema.

export { type ConfigChange, configChangeKeys, configChanges } from "./changes.ts";
export {
  type AdminConfig,
  type Config,
  configSchema,
  type DenyConfig,
  type FederationConfig,
  type IdentityConfig,
  type InboundConfig,
  type LimitsConfig,
  type OutboundConfig,
  parseHostPort,
  parseWorkloadApiSocket,
  type UpstreamConfig,
  type WorkloadApiConfig,
  type WorkloadApiSocket,
} from "./config-schema.ts";
export { ConfigError, type LoadedConfig, loadConfigFile, type ParseOptions, parseConfig } from "./load.ts";
export { pathPatternProblem } from "./path-pattern.ts";
export { formatByteSize, formatDuration, parseByteSize, parseDuration } from "./schema.ts";

import { configSchema } from "./config-schema.ts";

/** The JSON Schema (draft 2020-12) published as config/mtlsd.schema.json for editors. */
export function configJsonSchema(): Record<string, unknown> {
  return {
    $schema: "https://json-schema.org/draft/2020-12/schema",
    $id: "https://github.com/mtlsd/mtlsd/config/mtlsd.schema.json",
    title: "mtlsd configuration",
    ...configSchema.toJsonSchema(),
  };
}
export {
  configReferenceMarkdown,
  configReferenceRows,
  type ReferenceRow,
  replaceGeneratedReference,
} from "./reference.ts";
