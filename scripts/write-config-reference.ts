// Regenerates the key tables of docs/configuration.md from the config schema, so the reference cannot drift.
import { readFileSync, writeFileSync } from "node:fs";
import { configReferenceMarkdown, replaceGeneratedReference } from "../src/config/index.ts";

const target = new URL("../docs/configuration.md", import.meta.url);
const updated = replaceGeneratedReference(readFileSync(target, "utf8"), configReferenceMarkdown());
writeFileSync(target, updated);
process.stdout.write(`wrote ${target.pathname}\n`);
