// A small schema language: one definition yields the TypeScript type, the validator and the JSON Schema.
//
// Why not a library: mtlsd's errors must name the field path and say what was expected and found,
// values such as `30s` and `16KiB` become numbers, and the JSON Schema is published for editors.
// Each of those needs hooks a general-purpose validator would have to be bent to give.

/** One problem found in a document: where, what was expected, what was there. */
export interface Issue {
  path: string;
  expected: string;
  found: string;
}

export type JsonSchema = { [key: string]: unknown };

const INVALID: unique symbol = Symbol("invalid");
type Invalid = typeof INVALID;

export abstract class Schema<T> {
  description = "";

  /** Returns the parsed value, or INVALID after pushing at least one issue. */
  abstract read(value: unknown, path: string, issues: Issue[]): T | Invalid;
  abstract toJsonSchema(): JsonSchema;

  describe(text: string): this {
    this.description = text;
    return this;
  }

  optional(): OptionalSchema<T> {
    return new OptionalSchema(this);
  }

  default(value: T): DefaultSchema<T> {
    return new DefaultSchema(this, value);
  }

  protected json(schema: JsonSchema): JsonSchema {
    return this.description ? { description: this.description, ...schema } : schema;
  }
}

/** A field that may be absent; its type gains `undefined`. */
export class OptionalSchema<T> extends Schema<T | undefined> {
  readonly presence = "optional" as const;
  readonly inner: Schema<T>;

  constructor(inner: Schema<T>) {
    super();
    this.inner = inner;
    this.description = inner.description;
  }

  read(value: unknown, path: string, issues: Issue[]): T | undefined | Invalid {
    return value === undefined || value === null ? undefined : this.inner.read(value, path, issues);
  }

  toJsonSchema(): JsonSchema {
    // `.optional().describe(...)` sets the text on this wrapper; editors must still see it.
    return withDescription(this.inner.toJsonSchema(), this.description);
  }
}

function withDescription(schema: JsonSchema, description: string): JsonSchema {
  return description ? { ...schema, description } : schema;
}

/** A field that takes a default when absent; its type stays required. */
export class DefaultSchema<T> extends Schema<T> {
  readonly presence = "default" as const;
  readonly inner: Schema<T>;
  readonly defaultValue: T;

  constructor(inner: Schema<T>, defaultValue: T) {
    super();
    this.inner = inner;
    this.defaultValue = defaultValue;
    this.description = inner.description;
  }

  read(value: unknown, path: string, issues: Issue[]): T | Invalid {
    if (value !== undefined && value !== null) return this.inner.read(value, path, issues);
    // Defaults are shared constants: hand out a copy so a caller can never mutate the next default.
    return structuredClone(this.defaultValue);
  }

  toJsonSchema(): JsonSchema {
    return {
      ...withDescription(this.inner.toJsonSchema(), this.description),
      default: jsonDefault(this.defaultValue, this.inner),
    };
  }
}

function jsonDefault(value: unknown, schema: Schema<unknown>): unknown {
  if (schema instanceof DurationSchema && typeof value === "number") return formatDuration(value);
  if (schema instanceof ByteSizeSchema && typeof value === "number") return formatByteSize(value);
  // An object's default holds parsed values (ms, bytes); editors need them spelt as in a config file.
  if (schema instanceof ObjectSchema && isMapping(value)) {
    return Object.fromEntries(
      Object.entries(value).map(([key, field]) => {
        const fieldSchema = schema.shape[key];
        const inner =
          fieldSchema instanceof DefaultSchema || fieldSchema instanceof OptionalSchema
            ? fieldSchema.inner
            : fieldSchema;
        return [key, inner ? jsonDefault(field, inner) : field];
      }),
    );
  }
  return value;
}

/** Describes a found value briefly, for error messages. */
export function describeValue(value: unknown): string {
  if (value === null || value === undefined) return "nothing";
  if (typeof value === "string")
    return JSON.stringify(value.length > 80 ? `${value.slice(0, 77)}...` : value);
  if (typeof value === "number" || typeof value === "boolean") return `${typeof value} ${String(value)}`;
  if (Array.isArray(value)) return `a list of ${value.length}`;
  if (value instanceof Date) return `the date ${value.toISOString()}`;
  return "a mapping";
}

export interface StringOptions {
  /** What the string must look like, in words ("a SPIFFE ID"), used in errors and the JSON Schema. */
  expected?: string;
  pattern?: RegExp;
  minLength?: number;
  /** Further checks: return a reason when the value is wrong. */
  check?: (value: string) => string | undefined;
  format?: string;
}

export class StringSchema extends Schema<string> {
  readonly options: StringOptions;

  constructor(options: StringOptions = {}) {
    super();
    this.options = options;
  }

  read(value: unknown, path: string, issues: Issue[]): string | Invalid {
    const expected = this.options.expected ?? "a string";
    if (typeof value !== "string") {
      issues.push({ path, expected, found: describeValue(value) });
      return INVALID;
    }
    if (this.options.minLength !== undefined && value.length < this.options.minLength) {
      issues.push({ path, expected, found: value.length === 0 ? "an empty string" : describeValue(value) });
      return INVALID;
    }
    if (this.options.pattern && !this.options.pattern.test(value)) {
      issues.push({ path, expected, found: describeValue(value) });
      return INVALID;
    }
    const problem = this.options.check?.(value);
    if (problem) {
      issues.push({ path, expected, found: `${describeValue(value)} (${problem})` });
      return INVALID;
    }
    return value;
  }

  toJsonSchema(): JsonSchema {
    const schema: JsonSchema = { type: "string" };
    if (this.options.pattern) schema.pattern = this.options.pattern.source;
    if (this.options.minLength !== undefined) schema.minLength = this.options.minLength;
    if (this.options.format) schema.format = this.options.format;
    if (this.options.expected && !this.description) schema.description = this.options.expected;
    return this.json(schema);
  }
}

export class EnumSchema<const V extends string> extends Schema<V> {
  readonly values: readonly V[];

  constructor(values: readonly V[]) {
    super();
    this.values = values;
  }

  read(value: unknown, path: string, issues: Issue[]): V | Invalid {
    if (typeof value === "string" && (this.values as readonly string[]).includes(value)) return value as V;
    issues.push({ path, expected: `one of ${this.values.join(" | ")}`, found: describeValue(value) });
    return INVALID;
  }

  toJsonSchema(): JsonSchema {
    return this.json({ type: "string", enum: [...this.values] });
  }
}

export class BooleanSchema extends Schema<boolean> {
  read(value: unknown, path: string, issues: Issue[]): boolean | Invalid {
    if (typeof value === "boolean") return value;
    issues.push({ path, expected: "true or false", found: describeValue(value) });
    return INVALID;
  }

  toJsonSchema(): JsonSchema {
    return this.json({ type: "boolean" });
  }
}

export class IntegerSchema extends Schema<number> {
  readonly min: number;
  readonly max: number;

  constructor(min: number, max: number) {
    super();
    this.min = min;
    this.max = max;
  }

  read(value: unknown, path: string, issues: Issue[]): number | Invalid {
    if (typeof value === "number" && Number.isInteger(value) && value >= this.min && value <= this.max)
      return value;
    issues.push({
      path,
      expected: `an integer from ${this.min} to ${this.max}`,
      found: describeValue(value),
    });
    return INVALID;
  }

  toJsonSchema(): JsonSchema {
    return this.json({ type: "integer", minimum: this.min, maximum: this.max });
  }
}

/**
 * A count that may also be written `auto` (`workers`): `auto` reads as `resolveAuto()` (the cores available), so
 * the rest of the program only ever sees a number.
 */
export class IntegerOrAutoSchema extends IntegerSchema {
  readonly resolveAuto: () => number;

  constructor(min: number, max: number, resolveAuto: () => number) {
    super(min, max);
    this.resolveAuto = resolveAuto;
  }

  override read(value: unknown, path: string, issues: Issue[]): number | Invalid {
    if (value === "auto") return Math.min(Math.max(this.resolveAuto(), this.min), this.max);
    if (typeof value === "number" && Number.isInteger(value) && value >= this.min && value <= this.max)
      return value;
    issues.push({
      path,
      expected: `an integer from ${this.min} to ${this.max}, or auto`,
      found: describeValue(value),
    });
    return INVALID;
  }

  override toJsonSchema(): JsonSchema {
    return this.json({
      oneOf: [
        { type: "integer", minimum: this.min, maximum: this.max },
        { type: "string", enum: ["auto"] },
      ],
    });
  }
}

const DURATION_UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };
const DURATION_PATTERN = /^(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+$/;
const DURATION_PART = /(\d+(?:\.\d+)?)(ms|s|m|h|d)/g;

/** Parses `250ms`, `30s`, `5m`, `1h30m`, `7d` into milliseconds; undefined when malformed. */
export function parseDuration(text: string): number | undefined {
  if (!DURATION_PATTERN.test(text)) return undefined;
  let total = 0;
  for (const [, amount, unit] of text.matchAll(DURATION_PART))
    total += Number(amount) * DURATION_UNITS[unit!]!;
  return Math.round(total);
}

export function formatDuration(ms: number): string {
  // A day reads better as 24h (as DESIGN.md writes overridesMaxLifetime); days start at 48h.
  for (const [unit, size] of [
    ["d", ms >= 2 * 86_400_000 ? 86_400_000 : Number.POSITIVE_INFINITY],
    ["h", 3_600_000],
    ["m", 60_000],
    ["s", 1000],
  ] as const) {
    if (ms >= size && ms % size === 0) return `${ms / size}${unit}`;
  }
  return `${ms}ms`;
}

/** How a quantity with a unit is written, read back and described. */
interface Unit {
  parse(value: unknown): number | undefined;
  format(amount: number): string;
  /** Examples for the error message: "a duration like …". */
  like: string;
  json: JsonSchema;
}

/** A number written with a unit, within bounds; the bounds are named in the unit in the error. */
class QuantitySchema extends Schema<number> {
  readonly #unit: Unit;
  /** The bounds, in the unit's base (ms, bytes); public so the configuration reference can print them. */
  readonly min: number;
  readonly max: number;

  constructor(unit: Unit, min: number, max: number) {
    super();
    this.#unit = unit;
    this.min = min;
    this.max = max;
  }

  /** How a config file writes `amount` ("30s", "16KiB"). */
  format(amount: number): string {
    return this.#unit.format(amount);
  }

  read(value: unknown, path: string, issues: Issue[]): number | Invalid {
    const amount = this.#unit.parse(value);
    if (amount === undefined || amount < this.min || amount > this.max) {
      const { like, format } = this.#unit;
      issues.push({
        path,
        expected: `${like}, from ${format(this.min)} to ${format(this.max)}`,
        found: describeValue(value),
      });
      return INVALID;
    }
    return amount;
  }

  toJsonSchema(): JsonSchema {
    return this.json({ ...this.#unit.json });
  }
}

const DURATION: Unit = {
  parse: (value) => (typeof value === "string" ? parseDuration(value) : undefined),
  format: formatDuration,
  like: "a duration like 250ms, 30s, 5m or 1h",
  json: { type: "string", pattern: DURATION_PATTERN.source },
};

/** A duration written like `30s`; read as milliseconds. */
export class DurationSchema extends QuantitySchema {
  constructor(minMs: number, maxMs: number) {
    super(DURATION, minMs, maxMs);
  }
}

const SIZE_UNITS: Record<string, number> = { "": 1, B: 1, KiB: 1024, MiB: 1024 ** 2, GiB: 1024 ** 3 };
const SIZE_PATTERN = /^(\d+)(B|KiB|MiB|GiB)?$/;

export function parseByteSize(value: unknown): number | undefined {
  if (typeof value === "number") return Number.isInteger(value) && value >= 0 ? value : undefined;
  if (typeof value !== "string") return undefined;
  const match = SIZE_PATTERN.exec(value);
  return match ? Number(match[1]) * SIZE_UNITS[match[2] ?? ""]! : undefined;
}

export function formatByteSize(bytes: number): string {
  for (const unit of ["GiB", "MiB", "KiB"]) {
    const size = SIZE_UNITS[unit]!;
    if (bytes >= size && bytes % size === 0) return `${bytes / size}${unit}`;
  }
  return `${bytes}B`;
}

const BYTE_SIZE: Unit = {
  parse: parseByteSize,
  format: formatByteSize,
  like: "a size like 16KiB or 1MiB",
  json: {
    oneOf: [
      { type: "string", pattern: SIZE_PATTERN.source },
      { type: "integer", minimum: 0 },
    ],
  },
};

/** A size written like `16KiB` (or a plain number of bytes); read as bytes. */
export class ByteSizeSchema extends QuantitySchema {
  constructor(min: number, max: number) {
    super(BYTE_SIZE, min, max);
  }
}

const TIMESTAMP_EXPECTED = "an RFC 3339 timestamp with a time zone, like 2026-11-24T18:00:00Z";

/** An ISO 8601 timestamp with a time zone (`2026-11-24T18:00:00Z`); read as a Date. */
export class TimestampSchema extends Schema<Date> {
  read(value: unknown, path: string, issues: Issue[]): Date | Invalid {
    const expected = TIMESTAMP_EXPECTED;
    if (value instanceof Date && !Number.isNaN(value.getTime())) return value;
    if (
      typeof value === "string" &&
      /^\d{4}-\d\d-\d\dT\d\d:\d\d(:\d\d(\.\d+)?)?(Z|[+-]\d\d:\d\d)$/.test(value)
    ) {
      const date = new Date(value);
      if (!Number.isNaN(date.getTime())) return date;
    }
    issues.push({ path, expected, found: describeValue(value) });
    return INVALID;
  }

  toJsonSchema(): JsonSchema {
    return this.json({ type: "string", format: "date-time" });
  }
}

export class ArraySchema<T> extends Schema<T[]> {
  readonly item: Schema<T>;
  readonly minItems: number;

  constructor(item: Schema<T>, minItems: number) {
    super();
    this.item = item;
    this.minItems = minItems;
  }

  read(value: unknown, path: string, issues: Issue[]): T[] | Invalid {
    if (!Array.isArray(value)) {
      issues.push({ path, expected: "a list", found: describeValue(value) });
      return INVALID;
    }
    if (value.length < this.minItems) {
      issues.push({ path, expected: `a list of at least ${this.minItems}`, found: describeValue(value) });
      return INVALID;
    }
    const out: T[] = [];
    let ok = true;
    value.forEach((element, index) => {
      const parsed = this.item.read(element, `${path}[${index}]`, issues);
      if (parsed === INVALID) ok = false;
      else out.push(parsed);
    });
    return ok ? out : INVALID;
  }

  toJsonSchema(): JsonSchema {
    const schema: JsonSchema = { type: "array", items: this.item.toJsonSchema() };
    if (this.minItems > 0) schema.minItems = this.minItems;
    return this.json(schema);
  }
}

/** A mapping from names to values of one schema (e.g. `outbound.upstreams`). */
export class RecordSchema<T> extends Schema<Record<string, T>> {
  readonly value: Schema<T>;
  readonly keyPattern: RegExp;
  readonly keyExpected: string;
  readonly minEntries: number;

  constructor(value: Schema<T>, keyPattern: RegExp, keyExpected: string, minEntries: number) {
    super();
    this.value = value;
    this.keyPattern = keyPattern;
    this.keyExpected = keyExpected;
    this.minEntries = minEntries;
  }

  read(value: unknown, path: string, issues: Issue[]): Record<string, T> | Invalid {
    if (!isMapping(value)) {
      issues.push({ path, expected: "a mapping of names", found: describeValue(value) });
      return INVALID;
    }
    const entries = Object.entries(value);
    if (entries.length < this.minEntries) {
      issues.push({ path, expected: `at least ${this.minEntries} entry`, found: "none" });
      return INVALID;
    }
    const out: Record<string, T> = Object.create(null);
    let ok = true;
    for (const [key, element] of entries) {
      if (!this.keyPattern.test(key)) {
        issues.push({ path: `${path}.${key}`, expected: this.keyExpected, found: JSON.stringify(key) });
        ok = false;
        continue;
      }
      const parsed = this.value.read(element, `${path}.${key}`, issues);
      if (parsed === INVALID) ok = false;
      else out[key] = parsed;
    }
    return ok ? out : INVALID;
  }

  toJsonSchema(): JsonSchema {
    const schema: JsonSchema = {
      type: "object",
      propertyNames: { pattern: this.keyPattern.source },
      additionalProperties: this.value.toJsonSchema(),
    };
    if (this.minEntries > 0) schema.minProperties = this.minEntries;
    return this.json(schema);
  }
}

// biome-ignore lint/suspicious/noExplicitAny: the shape is checked field by field; `any` only erases the field types here.
type Shape = Record<string, Schema<any>>;
type OptionalKeys<S extends Shape> = {
  [K in keyof S]: S[K] extends OptionalSchema<unknown> ? K : never;
}[keyof S];
type RequiredKeys<S extends Shape> = Exclude<keyof S, OptionalKeys<S>>;
type Simplify<T> = { [K in keyof T]: T[K] } & {};
export type ObjectOf<S extends Shape> = Simplify<
  { [K in RequiredKeys<S>]: Infer<S[K]> } & { [K in OptionalKeys<S>]?: Infer<S[K]> }
>;
export type Infer<S> = S extends Schema<infer T> ? T : never;

/** A mapping with known keys; unknown keys are errors (with a suggestion when one is close). */
export class ObjectSchema<S extends Shape> extends Schema<ObjectOf<S>> {
  readonly shape: S;
  /** Sets of keys of which exactly one must be given whole (published as `oneOf`; the loader explains it). */
  /** Key names only: typed loosely so that every ObjectSchema is still an ObjectSchema<Shape>. */
  alternatives: string[][] = [];

  constructor(shape: S) {
    super();
    this.shape = shape;
  }

  /** Exactly one of these sets of keys must be present, for editors; cross-field checks word the error. */
  requireOneOf(...alternatives: (keyof S & string)[][]): this {
    this.alternatives = alternatives;
    return this;
  }

  read(value: unknown, path: string, issues: Issue[]): ObjectOf<S> | Invalid {
    if (!isMapping(value)) {
      issues.push({ path: path || "(top level)", expected: "a mapping", found: describeValue(value) });
      return INVALID;
    }
    const known = Object.keys(this.shape);
    let ok = true;
    for (const key of Object.keys(value)) {
      if (Object.hasOwn(this.shape, key)) continue;
      const suggestion = closest(key, known);
      issues.push({
        path: join(path, key),
        expected: suggestion
          ? `a known key (did you mean "${suggestion}"?)`
          : `one of the keys ${known.join(", ")}`,
        found: "an unknown key",
      });
      ok = false;
    }
    const out: Record<string, unknown> = {};
    for (const [key, schema] of Object.entries(this.shape)) {
      const field = (value as Record<string, unknown>)[key];
      if (field === undefined && !(schema instanceof OptionalSchema) && !(schema instanceof DefaultSchema)) {
        issues.push({
          path: join(path, key),
          expected: describeExpected(schema),
          found: "nothing (it is required)",
        });
        ok = false;
        continue;
      }
      const parsed = schema.read(field, join(path, key), issues);
      if (parsed === INVALID) ok = false;
      else if (parsed !== undefined) out[key] = parsed;
    }
    return ok ? (out as ObjectOf<S>) : INVALID;
  }

  toJsonSchema(): JsonSchema {
    const properties: Record<string, JsonSchema> = {};
    const required: string[] = [];
    for (const [key, schema] of Object.entries(this.shape)) {
      properties[key] = schema.toJsonSchema();
      if (!(schema instanceof OptionalSchema) && !(schema instanceof DefaultSchema)) required.push(key);
    }
    const schema: JsonSchema = { type: "object", properties, additionalProperties: false };
    if (required.length > 0) schema.required = required;
    if (this.alternatives.length > 0) schema.oneOf = this.alternatives.map((keys) => ({ required: keys }));
    return this.json(schema);
  }
}

function describeExpected(schema: Schema<unknown>): string {
  if (schema instanceof StringSchema) return schema.options.expected ?? "a string";
  if (schema instanceof ObjectSchema) return "a mapping";
  if (schema instanceof ArraySchema) return "a list";
  if (schema instanceof RecordSchema) return "a mapping of names";
  if (schema instanceof EnumSchema) return `one of ${schema.values.join(" | ")}`;
  if (schema instanceof TimestampSchema) return TIMESTAMP_EXPECTED;
  return "a value";
}

function join(path: string, key: string): string {
  return path ? `${path}.${key}` : key;
}

function isMapping(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value) && !(value instanceof Date);
}

/** The known key within edit distance 2 of a misspelt one, if any. */
function closest(word: string, candidates: string[]): string | undefined {
  let best: string | undefined;
  let bestDistance = 3;
  for (const candidate of candidates) {
    const distance = editDistance(word.toLowerCase(), candidate.toLowerCase());
    if (distance < bestDistance) {
      best = candidate;
      bestDistance = distance;
    }
  }
  return best;
}

function editDistance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      current[j] = Math.min(previous[j]! + 1, current[j - 1]! + 1, previous[j - 1]! + cost);
    }
    previous = current;
  }
  return previous[b.length]!;
}

/** Builders, so the config schema reads like the YAML it describes. */
export const s = {
  string: (options?: StringOptions) => new StringSchema(options),
  enum: <const V extends string>(...values: V[]) => new EnumSchema<V>(values),
  boolean: () => new BooleanSchema(),
  integer: (min: number, max: number) => new IntegerSchema(min, max),
  integerOrAuto: (min: number, max: number, resolveAuto: () => number) =>
    new IntegerOrAutoSchema(min, max, resolveAuto),
  duration: (minMs = 1, maxMs = 365 * 86_400_000) => new DurationSchema(minMs, maxMs),
  byteSize: (min: number, max: number) => new ByteSizeSchema(min, max),
  timestamp: () => new TimestampSchema(),
  array: <T>(item: Schema<T>, minItems = 0) => new ArraySchema(item, minItems),
  record: <T>(value: Schema<T>, keyPattern: RegExp, keyExpected: string, minEntries = 0) =>
    new RecordSchema(value, keyPattern, keyExpected, minEntries),
  object: <S extends Shape>(shape: S) => new ObjectSchema(shape),
};

export { INVALID };
