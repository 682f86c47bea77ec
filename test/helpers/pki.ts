// A throwaway PKI on disk for tests: root, intermediate, and SPIFFE leaves written as PEM files.
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import {
  createIntermediateCA,
  createRootCA,
  type IssuedCert,
  type Issuer,
  issueLeaf,
  type LeafOptions,
} from "../../src/pki/index.ts";

export interface IdentityFiles {
  name: string;
  spiffeId: string;
  certPath: string;
  keyPath: string;
  /** Leaf followed by intermediates. */
  chainPem: string;
  keyPem: string;
  issued: IssuedCert;
}

export interface TestPki {
  dir: string;
  trustDomain: string;
  root: Issuer;
  intermediate: Issuer;
  /** PEM file with the root: the trust bundle. */
  bundlePath: string;
  bundlePem: string;
  /** Issues a leaf `spiffe://<td>/ns/<name>/sa/<name>` (unless opts.spiffeId) and writes it to disk. */
  identity(name: string, options?: LeafOptions, issuer?: Issuer): Promise<IdentityFiles>;
  cleanup(): Promise<void>;
}

/** The `identity:` config block for a sidecar running as `identity` and trusting `pki`'s root. */
export function identityConfig(
  pki: Pick<TestPki, "bundlePath" | "trustDomain">,
  identity: Pick<IdentityFiles, "certPath" | "keyPath">,
): { cert: string; key: string; trustBundle: string; trustDomain: string } {
  return {
    cert: identity.certPath,
    key: identity.keyPath,
    trustBundle: pki.bundlePath,
    trustDomain: pki.trustDomain,
  };
}

export async function createTestPki(trustDomain = "example.org"): Promise<TestPki> {
  const dir = await mkdtemp(path.join(os.tmpdir(), "mtlsd-test-"));
  const root = await createRootCA({ trustDomain });
  const intermediate = await createIntermediateCA(root);
  const bundlePath = path.join(dir, "bundle.pem");
  await writeFile(bundlePath, root.certPem);
  return {
    dir,
    trustDomain,
    root,
    intermediate,
    bundlePath,
    bundlePem: root.certPem,
    async identity(name, options = {}, issuer = intermediate) {
      const spiffeId = options.spiffeId ?? `spiffe://${trustDomain}/ns/${name}/sa/${name}`;
      const issued = await issueLeaf(issuer, { dnsNames: ["localhost"], ...options, spiffeId });
      const certPath = path.join(dir, `${name}.crt`);
      const keyPath = path.join(dir, `${name}.key`);
      await writeFile(certPath, issued.chainPem);
      await writeFile(keyPath, issued.keyPem, { mode: 0o600 });
      return { name, spiffeId, certPath, keyPath, chainPem: issued.chainPem, keyPem: issued.keyPem, issued };
    },
    async cleanup() {
      await rm(dir, { recursive: true, force: true });
    },
  };
}
