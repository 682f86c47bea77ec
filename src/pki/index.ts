// The public face of the dev PKI: roots, intermediates and SPIFFE leaves for tests, `mtlsd demo` and `mtlsd certs`.

export {
  createIntermediateCA,
  createRootCA,
  type IntermediateCAOptions,
  type Issuer,
  loadIssuer,
  type RootCAOptions,
} from "./ca.ts";
export { pkiDefaults } from "./certificate.ts";
export { type CrlOptions, type IssuedCrl, issueCrl } from "./crl.ts";
export { type CryptoKeyPair, type KeyAlgorithm, pemEncodeKey } from "./keys.ts";
export {
  type ExtKeyUsageName,
  type IssuedCert,
  issueLeaf,
  type KeyUsageName,
  type LeafOptions,
} from "./leaf.ts";
