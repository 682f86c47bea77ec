// The identity module's public face: SPIFFE IDs, X509-SVID checks, peer identities, refusal reasons.
export {
  type CertificateFields,
  type CrlFields,
  KeyUsage,
  nameText,
  readCertificate,
  readCrl,
  sameSerial,
  verifySignature,
} from "./certificate-der.ts";
export { DenyList, type DenyListConfig, type DenyVerdict, normalizeSerial } from "./deny-list.ts";
export {
  classifyTlsError,
  classifyVerifyError,
  HANDSHAKE_FAILURE_REASONS,
  type HandshakeFailureReason,
} from "./handshake-failure.ts";
export {
  identifyPeer,
  type PeerCheck,
  type PeerIdentity,
  PeerIdentityCache,
  type TrustSource,
} from "./peer.ts";
export { isValidTrustDomain, parseSpiffeId, type SpiffeId, type SpiffeIdResult } from "./spiffe-id.ts";
export { formatSubjectRfc2253, subjectDerOfCertificate } from "./subject.ts";
export {
  checkLeafSvid,
  type SvidCheck,
  type SvidProblem,
  type SvidReport,
  type SvidRole,
  signingCertProblems,
  svidProblems,
} from "./svid.ts";
