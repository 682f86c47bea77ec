// The credentials module's public face: sources (files, the Workload API), the store that validates and swaps, rotation.

export { derToPem, splitDer } from "./der.ts";
export { ExpiryMonitor, type ExpiryMonitorOptions } from "./expiry.ts";
export {
  type CertSummary,
  type CredentialFiles,
  type CredentialLabels,
  type CredentialMaterial,
  type Credentials,
  type CrlSummary,
  crlOption,
  fileLabels,
  type LoadOptions,
  loadCredentials,
  materialSha256,
  readCredentialMaterial,
  type TrustDomainBundle,
  validateCredentials,
} from "./load.ts";
export {
  CredentialReloader,
  RELOAD_TIMING,
  type ReloaderOptions,
  type ReloadOutcome,
  type ReloadResult,
  type ReloadStatus,
  type ReloadTiming,
  type ReloadTrigger,
} from "./reload.ts";
export {
  type CredentialSource,
  type CredentialSourceKind,
  FileSource,
  type FileSourceOptions,
  type SourceOptions,
} from "./source.ts";
export { type CredentialListener, CredentialStore, type TrustSettings } from "./store.ts";
export { DirectoryWatch } from "./watch.ts";
// The Workload API client pulls in gRPC and protobuf (about a hundred modules and several MiB of heap): a sidecar
// that reads files never loads it. Its types are free; its code comes through `loadWorkloadApi()`.
export type {
  BackoffTiming,
  MaterialOptions,
  WorkloadApiSettings,
  WorkloadApiSourceOptions,
  X509SvidMessage,
  X509SvidResponse,
} from "./workload-api.ts";

/** The Workload API client module, loaded on first use. */
export function loadWorkloadApi(): Promise<typeof import("./workload-api.ts")> {
  return import("./workload-api.ts");
}
