// Changes the config file of a running in-process sidecar and reloads it, as an operator's edit and SIGHUP do.
import { readFile, writeFile } from "node:fs/promises";
import { parse, stringify } from "yaml";
import type { ConfigReloadOutcome } from "../../src/config-reload.ts";
import type { RunningSidecar } from "./sidecar.ts";

// biome-ignore lint/suspicious/noExplicitAny: a test edits the YAML document freely, as a person would.
export type RawConfig = Record<string, any>;

/** Rewrites `running`'s config file with `edit` applied, then reloads it; resolves with the reload's outcome. */
export async function editConfig(
  running: Pick<RunningSidecar, "configPath" | "sidecar">,
  edit: (config: RawConfig) => void,
): Promise<ConfigReloadOutcome> {
  const config = parse(await readFile(running.configPath, "utf8")) as RawConfig;
  edit(config);
  await writeFile(running.configPath, stringify(config));
  return running.sidecar.reloadConfig("request");
}
