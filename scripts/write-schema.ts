// Regenerates config/mtlsd.schema.json from the config schema, so editors validate configs against the real rules.
import { writeFileSync } from "node:fs";
import { configJsonSchema } from "../src/config/index.ts";

const target = new URL("../config/mtlsd.schema.json", import.meta.url);
writeFileSync(target, `${JSON.stringify(configJsonSchema(), null, 2)}\n`);
process.stdout.write(`wrote ${target.pathname}\n`);
