// The docs stay true: the configuration reference matches the schema, every link leads somewhere, examples load.
import { readFileSync } from "node:fs";
import path from "node:path";
import t from "tap";
import { parse as parseYaml } from "yaml";
import {
  configReferenceMarkdown,
  configReferenceRows,
  parseConfig,
  replaceGeneratedReference,
} from "../src/config/index.ts";
import { anchorsOf, deadLinks, markdownPages, ROOT, slug } from "./helpers/docs.ts";

const read = (relative: string) => readFileSync(path.join(ROOT, relative), "utf8");
const REFERENCE = "docs/configuration.md";

type JsonSchema = { [key: string]: unknown };
const isObject = (value: unknown): value is JsonSchema =>
  typeof value === "object" && value !== null && !Array.isArray(value);

/** Every key of the published JSON Schema, spelt as the reference spells it (`[]` list items, `<name>` names). */
function publishedKeys(schema: JsonSchema, at = "", out: string[] = []): string[] {
  for (const [key, child] of Object.entries(isObject(schema.properties) ? schema.properties : {})) {
    const childAt = at ? `${at}.${key}` : key;
    out.push(childAt);
    publishedKeys(child as JsonSchema, childAt, out);
  }
  if (isObject(schema.items)) publishedKeys(schema.items, `${at}[]`, out);
  if (isObject(schema.additionalProperties)) publishedKeys(schema.additionalProperties, `${at}.<name>`, out);
  return out;
}

t.test("the configuration reference is what the config schema generates", async (t) => {
  const page = read(REFERENCE);
  t.equal(
    replaceGeneratedReference(page, configReferenceMarkdown()),
    page,
    `${REFERENCE} is stale: run \`npm run schema\` and commit the result`,
  );
});

t.test("every key of the published JSON Schema has a row in the configuration reference", async (t) => {
  const page = read(REFERENCE);
  const keys = publishedKeys(JSON.parse(read("config/mtlsd.schema.json")) as JsonSchema);
  t.ok(keys.length > 40, "the schema has its keys");
  for (const key of keys) {
    const top = key.split(/[.[]/)[0]!;
    if (key === top) t.ok(anchorsOf(page).has(slug(top)), `${top} has a section`);
    else t.ok(page.includes(`| \`${key}\` |`), `${REFERENCE} lists ${key}`);
  }
});

t.test("every key in the configuration reference says what it does", async (t) => {
  for (const row of configReferenceRows()) {
    t.ok(row.description.length > 0, `${row.key} has a description in src/config/config-schema.ts`);
  }
});

t.test("the reference can only be regenerated into a page that marks where it goes", async (t) => {
  t.throws(() => replaceGeneratedReference("# Configuration\n", "| table |\n"), /lacks the markers/);
});

t.test("every relative link in README.md and docs/ leads to a file and an anchor that exist", async (t) => {
  for (const page of markdownPages()) {
    t.same(deadLinks(page, read(page)), [], `${page} has no dead links`);
  }
});

t.test("a link to a missing page or a missing heading counts as dead", async (t) => {
  const pages: Record<string, string> = { "docs/policy.md": "# Policy\n\n## Break-glass overrides\n" };
  const page = [
    "# Operations",
    "[ok](policy.md#break-glass-overrides) [ok](#operations) [site](https://example.org/x)",
    "[gone](polcy.md) [no anchor](policy.md#break-glass) [no local anchor](#runbook)",
    "```sh",
    "echo '[in code](nowhere.md)'",
    "```",
  ].join("\n");
  t.same(
    deadLinks("docs/operations.md", page, (file) => pages[file]),
    [
      "polcy.md (no file docs/polcy.md)",
      "policy.md#break-glass (no heading with anchor #break-glass in docs/policy.md)",
      "#runbook (no heading with anchor #runbook in docs/operations.md)",
    ],
  );
});

t.test("headings get GitHub's anchors, duplicates numbered", async (t) => {
  const anchors = anchorsOf(
    "## Checking a config and a peer: `mtlsd check`\n### 1. Permissive: accept both\n## Limits\n## Limits\n",
  );
  t.same(
    [...anchors],
    ["checking-a-config-and-a-peer-mtlsd-check", "1-permissive-accept-both", "limits", "limits-1"],
  );
});

t.test("the docs index lists every page in docs/", async (t) => {
  const index = read("docs/README.md");
  for (const page of markdownPages().filter(
    (page) => page.startsWith("docs/") && page !== "docs/README.md",
  )) {
    t.ok(index.includes(`](${path.basename(page)})`), `docs/README.md links to ${page}`);
  }
});

t.test("the front page shows the latest benchmark table", async (t) => {
  t.ok(
    read("README.md").includes(read("bench/results/latest.md").trim()),
    "README.md holds bench/results/latest.md verbatim: copy it in after a benchmark run",
  );
});

t.test("every whole config shown in the docs is a valid config", async (t) => {
  let checked = 0;
  for (const page of markdownPages()) {
    for (const [, block] of read(page).matchAll(/```yaml\n([\s\S]*?)```/g)) {
      const parsed = parseYaml(block!) as unknown;
      if (typeof parsed !== "object" || parsed === null || !("identity" in parsed)) continue;
      if (!("inbound" in parsed) && !("outbound" in parsed)) continue;
      t.doesNotThrow(() => parseConfig(block!, page), `the config in ${page} loads`);
      checked++;
    }
  }
  t.ok(checked >= 2, "the front page's and the reference's configs were checked");
});
