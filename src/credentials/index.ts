// The credentials module's public face: load and validate PEM material, the store that swaps it, and rotation.

export { ExpiryMonitor, type ExpiryMonitorOptions } from "./expiry.ts";
export {
  type CertSummary,
  type CredentialFiles,
  type CredentialMaterial,
  type Credentials,
  type CrlSummary,
  crlOption,
  type LoadOptions,
  loadCredentials,
  materialSha256,
  readCredentialMaterial,
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
export { type CredentialListener, CredentialStore } from "./store.ts";
export { DirectoryWatch } from "./watch.ts";
