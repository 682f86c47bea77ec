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
export {
  type BackoffTiming,
  fetchWorkloadApiMaterial,
  type MaterialOptions,
  materialFromMessage,
  WORKLOAD_API_BACKOFF,
  type WorkloadApiSettings,
  WorkloadApiSource,
  type WorkloadApiSourceOptions,
  type X509SvidMessage,
  type X509SvidResponse,
} from "./workload-api.ts";
