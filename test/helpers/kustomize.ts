// Renders a kustomization as `kubectl kustomize` does, for the subset deploy/kubernetes uses, without kubectl.
//
// Supported: `resources` (files and directories), `images` (newName/newTag) and JSON 6902 `patches` with a
// target. Anything else in a kustomization throws, so a new feature there cannot be silently ignored here.
import { readFileSync, statSync } from "node:fs";
import path from "node:path";
import { isRecord, type Yaml, yamlDocuments } from "./deploy.ts";

const SUPPORTED = new Set(["apiVersion", "kind", "resources", "images", "patches"]);

interface Target {
  group?: string;
  version?: string;
  kind?: string;
  name?: string;
}

export interface Rendered {
  /** Every resource, in kustomization order. */
  resources: Yaml[];
  /** Every file the kustomization read, kustomization.yaml files included. */
  files: string[];
}

export function renderKustomization(dir: string): Rendered {
  const file = path.join(dir, "kustomization.yaml");
  const [kustomization] = yamlDocuments(readFileSync(file, "utf8"), file, "1.1");
  if (!kustomization) throw new Error(`${file}: empty`);
  for (const key of Object.keys(kustomization)) {
    if (!SUPPORTED.has(key)) throw new Error(`${file}: the test renderer does not support "${key}"`);
  }
  const files = [file];
  let resources: Yaml[] = [];
  for (const entry of (kustomization.resources ?? []) as string[]) {
    const target = path.resolve(dir, entry);
    if (statSync(target).isDirectory()) {
      const nested = renderKustomization(target);
      resources.push(...nested.resources);
      files.push(...nested.files);
    } else {
      resources.push(...yamlDocuments(readFileSync(target, "utf8"), target, "1.1"));
      files.push(target);
    }
  }
  for (const image of (kustomization.images ?? []) as { name: string; newName?: string; newTag?: string }[]) {
    for (const container of podContainers(resources)) {
      const [name, tag] = splitImage(container.image as string);
      if (name !== image.name) continue;
      container.image = `${image.newName ?? name}${image.newTag ? `:${image.newTag}` : tag ? `:${tag}` : ""}`;
    }
  }
  for (const patch of (kustomization.patches ?? []) as { target: Target; patch: string }[]) {
    const matching = resources.filter((resource) => matches(resource, patch.target));
    if (matching.length === 0)
      throw new Error(`${file}: patch target ${JSON.stringify(patch.target)} matches nothing`);
    const operations = yamlDocuments(patch.patch, `${file} patch`, "1.1")[0] as unknown as Operation[];
    resources = resources.map((resource) =>
      matching.includes(resource) ? applyJsonPatch(resource, operations) : resource,
    );
  }
  return { resources, files };
}

/** Containers and init containers of every Deployment (the only workload kind here). */
export function podContainers(resources: Yaml[]): Yaml[] {
  return resources.flatMap((resource) => {
    const spec = (resource.spec as Yaml | undefined)?.template as Yaml | undefined;
    const pod = spec?.spec as Yaml | undefined;
    if (!pod) return [];
    return [...((pod.initContainers ?? []) as Yaml[]), ...((pod.containers ?? []) as Yaml[])];
  });
}

function splitImage(image: string): [string, string | undefined] {
  const colon = image.lastIndexOf(":");
  return colon > image.lastIndexOf("/")
    ? [image.slice(0, colon), image.slice(colon + 1)]
    : [image, undefined];
}

function matches(resource: Yaml, target: Target): boolean {
  const [group, version] = String(resource.apiVersion).includes("/")
    ? String(resource.apiVersion).split("/")
    : ["", String(resource.apiVersion)];
  const name = (resource.metadata as Yaml | undefined)?.name;
  return (
    (target.group === undefined || target.group === group) &&
    (target.version === undefined || target.version === version) &&
    (target.kind === undefined || target.kind === resource.kind) &&
    (target.name === undefined || target.name === name)
  );
}

interface Operation {
  op: "add" | "replace" | "remove";
  path: string;
  value?: unknown;
}

/** RFC 6902 add, replace and remove; a path that does not exist is an error, as in kustomize. */
function applyJsonPatch(document: Yaml, operations: Operation[]): Yaml {
  const result = structuredClone(document);
  for (const operation of operations) {
    const parts = operation.path
      .split("/")
      .slice(1)
      .map((part) => part.replaceAll("~1", "/").replaceAll("~0", "~"));
    const last = parts.pop()!;
    let parent: unknown = result;
    for (const part of parts) {
      parent = Array.isArray(parent) ? parent[Number(part)] : isRecord(parent) ? parent[part] : undefined;
      if (parent === undefined) throw new Error(`patch path ${operation.path} does not exist`);
    }
    if (Array.isArray(parent)) {
      const index = last === "-" ? parent.length : Number(last);
      if (operation.op !== "add" && !(index in parent))
        throw new Error(`patch path ${operation.path} does not exist`);
      if (operation.op === "add") parent.splice(index, 0, operation.value);
      else if (operation.op === "replace") parent[index] = operation.value;
      else parent.splice(index, 1);
    } else if (isRecord(parent)) {
      if (operation.op !== "add" && !(last in parent))
        throw new Error(`patch path ${operation.path} does not exist`);
      if (operation.op === "remove") delete parent[last];
      else parent[last] = operation.value;
    } else {
      throw new Error(`patch path ${operation.path} does not exist`);
    }
  }
  return result;
}
