// What a primary and its workers say to each other over the cluster IPC channel (structured-clone-safe JSON).
import type {
  CredentialLabels,
  CredentialMaterial,
  CredentialSourceKind,
  ReloadStatus,
} from "../credentials/index.ts";
import type { UpstreamStats } from "../outbound/index.ts";
import type { SidecarAddresses } from "../sidecar.ts";

/** A credential version the primary validated, with the reload status its /status shows. */
export interface PushedCredentials {
  kind: CredentialSourceKind;
  material: CredentialMaterial;
  labels: CredentialLabels;
  status: Omit<ReloadStatus, "at"> & { at: string };
}

/** Primary → worker. Requests carrying `id` are answered by a reply with the same `id`. */
export type ToWorker =
  | {
      type: "start";
      id: number;
      file: string;
      /** The config as the primary started with it: restart-only settings (listen addresses) come from here. */
      text: string;
      credentials: PushedCredentials;
      /** Hex; session ticket keys derive from it. */
      ticketKeySecret: string;
    }
  | { type: "credentials"; credentials: PushedCredentials }
  | { type: "config"; id: number; text: string }
  | { type: "metrics"; id: number }
  | { type: "stats"; id: number }
  | { type: "drain"; timeoutMs: number };

/** How a worker applied a config the primary validated. */
export type ConfigApplied = { result: "applied" } | { result: "rejected"; error: string; code: string };

/** Worker → primary. */
export type FromWorker =
  | { type: "hello" }
  | { type: "listening"; addresses: SidecarAddresses }
  | { type: "failed"; code: string; message: string }
  | { type: "config"; id: number; outcome: ConfigApplied }
  | { type: "metrics"; id: number; metrics: unknown[] }
  | { type: "stats"; id: number; upstreams: Record<string, UpstreamStats> };
