// Where a command finds its config file: -c, then $MTLSD_CONFIG, then ./mtlsd.yaml (DESIGN.md).
import path from "node:path";
import type { CliIo } from "./io.ts";

export function configPath(value: string | undefined, io: CliIo): string {
  return path.resolve(io.cwd, value ?? io.env.MTLSD_CONFIG ?? "mtlsd.yaml");
}
