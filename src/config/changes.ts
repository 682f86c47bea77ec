// What differs between two configs, key by key, walked from the schema so that no key is overlooked.
import { type Config, configSchema } from "./config-schema.ts";
import { DefaultSchema, ObjectSchema, OptionalSchema, RecordSchema, type Schema } from "./schema.ts";

/** One changed setting. */
export interface ConfigChange {
  /** The key as the configuration reference spells it: `outbound.upstreams.<name>.timeout`. */
  key: string;
  /** Where it is in this config: `outbound.upstreams.orders.timeout`. */
  path: string;
}

type Shape = ObjectSchema<Record<string, Schema<unknown>>>;

/**
 * Every key a change can be reported under, in schema order: each setting (a list counts as one), each optional
 * section (it can come or go as a whole), and each named mapping (an entry can come or go). Sections that are
 * always there are walked into, never reported themselves.
 */
export function configChangeKeys(): string[] {
  const keys: string[] = [];
  const walkField = (field: Schema<unknown>, key: string): void => {
    const inner = unwrap(field);
    if (inner instanceof ObjectSchema) {
      if (field instanceof OptionalSchema) keys.push(key);
      walkObject(inner, key);
    } else if (inner instanceof RecordSchema) {
      keys.push(key);
      walkField(inner.value, `${key}.<name>`);
    } else keys.push(key);
  };
  const walkObject = (schema: Shape, at: string): void => {
    for (const [name, field] of Object.entries(schema.shape)) walkField(field, at ? `${at}.${name}` : name);
  };
  walkObject(configSchema, "");
  return keys;
}

/** Every setting that differs between `running` and `next`, as `configChangeKeys` names them. */
export function configChanges(running: Config, next: Config): ConfigChange[] {
  const changes: ConfigChange[] = [];
  diffObject(configSchema, running, next, "", "", changes);
  return changes;
}

function diffObject(
  schema: Shape,
  a: unknown,
  b: unknown,
  key: string,
  path: string,
  changes: ConfigChange[],
): void {
  const left = a as Record<string, unknown>;
  const right = b as Record<string, unknown>;
  for (const [name, field] of Object.entries(schema.shape)) {
    const childKey = key ? `${key}.${name}` : name;
    const childPath = path ? `${path}.${name}` : name;
    diffField(field, left[name], right[name], childKey, childPath, changes);
  }
}

function diffField(
  field: Schema<unknown>,
  a: unknown,
  b: unknown,
  key: string,
  path: string,
  changes: ConfigChange[],
): void {
  const inner = unwrap(field);
  if (inner instanceof ObjectSchema) {
    // An optional section that comes or goes is one change; one present on both sides is compared key by key.
    if (a === undefined || b === undefined) {
      if (a !== b) changes.push({ key, path });
    } else diffObject(inner, a, b, key, path, changes);
    return;
  }
  if (inner instanceof RecordSchema) {
    // An entry that comes or goes is a change of the mapping, named by its entry; one on both sides is walked.
    const left = a as Record<string, unknown>;
    const right = b as Record<string, unknown>;
    for (const name of new Set([...Object.keys(left), ...Object.keys(right)])) {
      const entry = `${path}.${name}`;
      if (!Object.hasOwn(left, name) || !Object.hasOwn(right, name)) changes.push({ key, path: entry });
      else diffField(inner.value, left[name], right[name], `${key}.<name>`, entry, changes);
    }
    return;
  }
  // Parsed values are plain data (strings, numbers, booleans, lists, mappings, dates): their JSON compares them.
  if (a !== b && JSON.stringify(a) !== JSON.stringify(b)) changes.push({ key, path });
}

function unwrap(field: Schema<unknown>): Schema<unknown> {
  return field instanceof OptionalSchema || field instanceof DefaultSchema ? unwrap(field.inner) : field;
}
