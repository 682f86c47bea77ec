// Renders the configuration reference (docs/configuration.md) from the config schema, so the docs cannot drift.
import { configSchema } from "./config-schema.ts";
import {
  ArraySchema,
  BooleanSchema,
  ByteSizeSchema,
  DefaultSchema,
  DurationSchema,
  EnumSchema,
  IntegerOrAutoSchema,
  IntegerSchema,
  ObjectSchema,
  OptionalSchema,
  RecordSchema,
  type Schema,
  StringSchema,
  TimestampSchema,
} from "./schema.ts";

/** One key of the config, as the reference lists it. */
export interface ReferenceRow {
  /** Spelt as a reader finds it: `identity.reload.interval`, `inbound.policy.rules[].name`, `outbound.upstreams.<name>.address`. */
  key: string;
  type: string;
  /** `required`, `optional`, or the default as a config file writes it. */
  presence: string;
  description: string;
}

/** Every key of the schema, depth first, in the order the schema declares them. */
export function configReferenceRows(): ReferenceRow[] {
  const rows: ReferenceRow[] = [];
  walkObject(configSchema, "", rows);
  return rows;
}

/** The generated part of docs/configuration.md: one table per top-level section. */
export function configReferenceMarkdown(): string {
  const rows = configReferenceRows();
  const sections: string[] = [];
  for (const [top, field] of Object.entries(configSchema.shape)) {
    const own = rows.filter((row) => row.key === top || row.key.startsWith(`${top}.`));
    const head = own[0]!;
    // A section is introduced by its own description; a top-level setting (`workers`) is its table's one row.
    const section = unwrap(field) instanceof ObjectSchema;
    const lines = [
      `### ${top}`,
      "",
      ...(section ? [`${sentence(head.description)} ${presenceSentence(field)}`.trim(), ""] : []),
      "| key | type | default | what it does |",
      "|---|---|---|---|",
      ...(section ? own.slice(1) : own).map((row) => `| ${cells(row).join(" | ")} |`),
    ];
    sections.push(lines.join("\n"));
  }
  return `${sections.join("\n\n")}\n`;
}

function cells(row: ReferenceRow): string[] {
  return [`\`${row.key}\``, row.type, row.presence, row.description].map(escapeCell);
}

/** Keeps a cell one cell: pipes escaped, and outside code spans `*` and `<` taken literally, not as markup. */
function escapeCell(text: string): string {
  return text
    .split(/(`[^`]*`)/)
    .map((part, index) => (index % 2 === 1 ? part : part.replaceAll("*", "\\*").replaceAll("<", "&lt;")))
    .join("")
    .replaceAll("|", "\\|")
    .replaceAll("\n", " ");
}

function sentence(text: string): string {
  if (!text) return "";
  return /[.!?]$/.test(text) ? text : `${text}.`;
}

function presenceSentence(field: Schema<unknown>): string {
  if (field instanceof OptionalSchema) return "Optional.";
  if (field instanceof DefaultSchema) return "Optional: every key has a default.";
  return "Required.";
}

function walkObject(
  schema: ObjectSchema<Record<string, Schema<unknown>>>,
  at: string,
  rows: ReferenceRow[],
): void {
  for (const [key, field] of Object.entries(schema.shape)) {
    walkField(field, at ? `${at}.${key}` : key, rows);
  }
}

function walkField(field: Schema<unknown>, key: string, rows: ReferenceRow[]): void {
  const inner = unwrap(field);
  rows.push({
    key,
    type: typeOf(inner),
    presence: presenceOf(field),
    description: descriptionOf(field, inner),
  });
  walkInto(inner, key, rows);
}

/** Descends into what a field holds: an object's keys, a list's items, a named mapping's values. */
function walkInto(inner: Schema<unknown>, key: string, rows: ReferenceRow[]): void {
  if (inner instanceof ObjectSchema) walkObject(inner, key, rows);
  else if (inner instanceof ArraySchema) walkInto(unwrap(inner.item), `${key}[]`, rows);
  else if (inner instanceof RecordSchema) walkInto(unwrap(inner.value), `${key}.<name>`, rows);
}

function unwrap(field: Schema<unknown>): Schema<unknown> {
  return field instanceof OptionalSchema || field instanceof DefaultSchema ? unwrap(field.inner) : field;
}

function presenceOf(field: Schema<unknown>): string {
  if (field instanceof OptionalSchema) return "optional";
  if (!(field instanceof DefaultSchema)) return "required";
  const shown = field.toJsonSchema().default;
  // An object's default is the defaults of its keys, listed on their own rows.
  if (unwrap(field) instanceof ObjectSchema) return "see its keys";
  return `\`${typeof shown === "string" ? shown : JSON.stringify(shown)}\``;
}

function descriptionOf(field: Schema<unknown>, inner: Schema<unknown>): string {
  const parts = [field.description || inner.description];
  if (inner instanceof RecordSchema) parts.push(`Names: ${inner.keyExpected}.`);
  return parts.filter(Boolean).map(sentence).join(" ");
}

function typeOf(inner: Schema<unknown>): string {
  // A string's expected form ("host:port, like 127.0.0.1:15000") says more than "string".
  if (inner instanceof StringSchema) return inner.options.expected ?? "string";
  if (inner instanceof EnumSchema) return `one of ${inner.values.map((value) => `\`${value}\``).join(", ")}`;
  if (inner instanceof BooleanSchema) return "`true` or `false`";
  if (inner instanceof IntegerOrAutoSchema) return `integer, ${inner.min} to ${inner.max}, or \`auto\``;
  if (inner instanceof IntegerSchema) return `integer, ${inner.min} to ${inner.max}`;
  if (inner instanceof DurationSchema)
    return `duration, ${inner.format(inner.min)} to ${inner.format(inner.max)}`;
  if (inner instanceof ByteSizeSchema)
    return `size, ${inner.format(inner.min)} to ${inner.format(inner.max)}`;
  if (inner instanceof TimestampSchema) return "RFC 3339 timestamp";
  if (inner instanceof ArraySchema) {
    const item = unwrap(inner.item);
    const least = inner.minItems > 0 ? ` of at least ${inner.minItems}` : "";
    return item instanceof ObjectSchema
      ? `list${least} of mappings (keys below)`
      : `list${least}, each ${typeOf(item)}`;
  }
  if (inner instanceof RecordSchema) {
    const least = inner.minEntries > 0 ? `, at least ${inner.minEntries}` : "";
    return `mapping of names to mappings (keys below)${least}`;
  }
  return "mapping (keys below)";
}

/** The markers around the generated part of docs/configuration.md; prose lives outside them. */
export const GENERATED_BEGIN =
  "<!-- generated from src/config/config-schema.ts by `npm run schema`: do not edit by hand -->";
export const GENERATED_END = "<!-- end of generated reference -->";

/** `page` with the text between the markers replaced by `generated`; throws when the markers are missing. */
export function replaceGeneratedReference(page: string, generated: string): string {
  const begin = page.indexOf(GENERATED_BEGIN);
  const end = page.indexOf(GENERATED_END);
  if (begin === -1 || end < begin) {
    throw new Error(`the page lacks the markers ${GENERATED_BEGIN} ... ${GENERATED_END}`);
  }
  return `${page.slice(0, begin + GENERATED_BEGIN.length)}\n\n${generated}\n${page.slice(end)}`;
}
