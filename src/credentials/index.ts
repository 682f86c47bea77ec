// The credentials module's public face: load and validate PEM material, and the store that swaps it.
export { crlOption } from "./crl.ts";
export {
  type CertSummary,
  type CredentialFiles,
  type Credentials,
  type LoadOptions,
  loadCredentials,
  validateCredentials,
} from "./load.ts";
export { type CredentialListener, CredentialStore } from "./store.ts";
