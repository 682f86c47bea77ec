// The credentials module's public face: load and validate PEM material, and the store that swaps it.

export {
  type CertSummary,
  type CredentialFiles,
  type CredentialMaterial,
  type Credentials,
  type CrlSummary,
  type LoadOptions,
  loadCredentials,
  materialSha256,
  readCredentialMaterial,
  validateCredentials,
} from "./load.ts";
export { type CredentialListener, CredentialStore } from "./store.ts";
