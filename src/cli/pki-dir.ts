// A dev PKI kept in one directory, as `mtlsd certs` and `mtlsd demo` lay it out: fixed file names, keys 0600.
import { randomBytes } from "node:crypto";
import { access, chmod, mkdir, readFile, rename, rm, writeFile } from "node:fs/promises";
import path from "node:path";
import { MtlsdError } from "../errors.ts";
import { parseSpiffeId } from "../identity/index.ts";
import {
  createIntermediateCA,
  createRootCA,
  type IssuedCert,
  type Issuer,
  issueLeaf,
  loadIssuer,
  pkiDefaults,
} from "../pki/index.ts";

/** The names `certs init` writes in the directory; `certs issue` reads the intermediate back from them. */
export const PKI_FILES = Object.freeze({
  rootCert: "root.crt",
  rootKey: "root.key",
  intermediateCert: "intermediate.crt",
  intermediateKey: "intermediate.key",
  /** The trust bundle every workload is given: the root alone. */
  bundle: "bundle.pem",
});

const RESERVED_NAMES = new Set(["root", "intermediate", "bundle"]);
const LEAF_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;
const PRIVATE = 0o600;
const PUBLIC = 0o644;

export interface WrittenFile {
  path: string;
  /** What the file is for, as the command prints it. */
  role: string;
  mode: number;
}

interface PendingFile extends WrittenFile {
  content: string;
}

async function exists(file: string): Promise<boolean> {
  return access(file).then(
    () => true,
    () => false,
  );
}

/**
 * Writes every file or none: without `force`, an existing file stops the command before anything is written
 * (so a second `certs init` cannot orphan the leaves issued by the first CA). With `force`, each file is
 * written beside its target and renamed over it, so a reader never sees half a key.
 */
async function writeAll(files: PendingFile[], force: boolean): Promise<WrittenFile[]> {
  if (!force) {
    const taken: string[] = [];
    for (const file of files) if (await exists(file.path)) taken.push(file.path);
    if (taken.length > 0) {
      throw new MtlsdError(
        "PKI_FILE_EXISTS",
        `${taken.join(", ")} already exist${taken.length === 1 ? "s" : ""}; nothing was written. Pass --force to replace ${taken.length === 1 ? "it" : "them"}`,
      );
    }
  }
  for (const file of files) {
    if (force) {
      const temporary = `${file.path}.${randomBytes(6).toString("hex")}.tmp`;
      try {
        await writeFile(temporary, file.content, { mode: file.mode, flag: "wx" });
        await chmod(temporary, file.mode);
        await rename(temporary, file.path);
      } catch (error) {
        await rm(temporary, { force: true });
        throw error;
      }
    } else {
      // "wx" fails rather than follow a file (or symlink) that appeared since the check above.
      await writeFile(file.path, file.content, { mode: file.mode, flag: "wx" });
      // The mode given to open() is filtered by the umask; keys must end up 0600 whatever it is.
      await chmod(file.path, file.mode);
    }
  }
  return files.map(({ path, role, mode }) => ({ path, role, mode }));
}

export interface InitOptions {
  trustDomain: string;
  rootTtlMs?: number;
  intermediateTtlMs?: number;
  force?: boolean;
}

export interface InitializedPki {
  root: Issuer;
  intermediate: Issuer;
  files: WrittenFile[];
}

/** Makes a root and an intermediate (P-256) for `trustDomain` and writes them, and the bundle, into `dir`. */
export async function initPkiDirectory(dir: string, options: InitOptions): Promise<InitializedPki> {
  const root = await createRootCA({
    trustDomain: options.trustDomain,
    ttlMs: options.rootTtlMs ?? pkiDefaults.rootTtlMs,
  });
  const intermediate = await createIntermediateCA(root, {
    // An intermediate never outlives its root: peers would refuse the chain before the leaf expired.
    notAfter: new Date(
      Math.min(
        root.cert.notAfter.getTime(),
        Date.now() - pkiDefaults.clockSkewMs + (options.intermediateTtlMs ?? pkiDefaults.intermediateTtlMs),
      ),
    ),
  });
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const file = (name: string) => path.join(dir, name);
  const files = await writeAll(
    [
      { path: file(PKI_FILES.rootCert), role: "root CA certificate", mode: PUBLIC, content: root.certPem },
      { path: file(PKI_FILES.rootKey), role: "root CA private key", mode: PRIVATE, content: root.keyPem },
      {
        path: file(PKI_FILES.intermediateCert),
        role: "intermediate CA certificate (signs the leaves)",
        mode: PUBLIC,
        content: intermediate.certPem,
      },
      {
        path: file(PKI_FILES.intermediateKey),
        role: "intermediate CA private key",
        mode: PRIVATE,
        content: intermediate.keyPem,
      },
      {
        path: file(PKI_FILES.bundle),
        role: "trust bundle (the root): identity.trustBundle of every workload",
        mode: PUBLIC,
        content: root.certPem,
      },
    ],
    options.force === true,
  );
  return { root, intermediate, files };
}

/** Reads the intermediate CA `certs init` wrote, naming the missing file and the command that makes it. */
export async function loadPkiIssuer(dir: string): Promise<Issuer> {
  const read = async (name: string) => {
    const file = path.join(dir, name);
    try {
      return await readFile(file, "utf8");
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      throw new MtlsdError(
        "PKI_NO_CA",
        code === "ENOENT"
          ? `${file}: no such file; create the CA first: mtlsd certs init --dir ${dir} --trust-domain TRUST_DOMAIN`
          : `${file}: cannot read: ${(error as Error).message}`,
        { cause: error },
      );
    }
  };
  // One after the other, so a directory with neither file always names the certificate first.
  const certPem = await read(PKI_FILES.intermediateCert);
  const keyPem = await read(PKI_FILES.intermediateKey);
  return loadIssuer(certPem, keyPem);
}

export interface IssueOptions {
  spiffeId: string;
  dnsNames?: string[];
  ipAddresses?: string[];
  ttlMs?: number;
  /** File name stem; default: the last segment of the SPIFFE ID's path. */
  name?: string;
  force?: boolean;
}

export interface IssuedIdentity {
  issued: IssuedCert;
  name: string;
  certPath: string;
  keyPath: string;
  files: WrittenFile[];
}

/** Issues an X509-SVID from `issuer` and writes `<name>.crt` (leaf, then intermediates) and `<name>.key` (0600). */
export async function issueIdentityFiles(
  dir: string,
  issuer: Issuer,
  options: IssueOptions,
): Promise<IssuedIdentity> {
  const parsed = parseSpiffeId(options.spiffeId);
  if (!parsed.ok) {
    throw new MtlsdError("PKI_INVALID_OPTION", `--spiffe-id ${options.spiffeId}: ${parsed.reason}`);
  }
  if (parsed.id.path === "") {
    throw new MtlsdError(
      "PKI_INVALID_OPTION",
      `--spiffe-id ${options.spiffeId}: a workload's SPIFFE ID needs a path, like spiffe://${parsed.id.trustDomain}/ns/orders/sa/orders`,
    );
  }
  if (issuer.trustDomain !== "" && parsed.id.trustDomain !== issuer.trustDomain) {
    throw new MtlsdError(
      "PKI_INVALID_OPTION",
      `--spiffe-id ${options.spiffeId} is in trust domain ${parsed.id.trustDomain}, but the CA in ${dir} is for ${issuer.trustDomain}; peers in ${issuer.trustDomain} would refuse it (wrong_trust_domain)`,
    );
  }
  const name = options.name ?? parsed.id.path.split("/").at(-1)!;
  if (!LEAF_NAME.test(name) || RESERVED_NAMES.has(name)) {
    throw new MtlsdError(
      "PKI_INVALID_OPTION",
      RESERVED_NAMES.has(name)
        ? `--name ${name} would overwrite the CA's own files; choose another --name`
        : `--name ${JSON.stringify(name)}: use letters, digits, ".", "_" and "-" (it becomes <name>.crt and <name>.key)`,
    );
  }
  const ttlMs = options.ttlMs ?? pkiDefaults.leafTtlMs;
  const notAfter = Date.now() - pkiDefaults.clockSkewMs + ttlMs;
  if (notAfter > issuer.cert.notAfter.getTime()) {
    throw new MtlsdError(
      "PKI_INVALID_OPTION",
      `a leaf valid that long would outlive the intermediate CA, which expires ${issuer.cert.notAfter.toISOString()}; choose a shorter --ttl, or make a new CA with certs init --force`,
    );
  }
  const issued = await issueLeaf(issuer, {
    spiffeId: parsed.id.uri,
    dnsNames: options.dnsNames ?? [],
    ipAddresses: options.ipAddresses ?? [],
    ttlMs,
  });
  const certPath = path.join(dir, `${name}.crt`);
  const keyPath = path.join(dir, `${name}.key`);
  const files = await writeAll(
    [
      {
        path: certPath,
        role: "certificate chain (leaf, then intermediate): identity.cert",
        mode: PUBLIC,
        content: issued.chainPem,
      },
      { path: keyPath, role: "private key: identity.key", mode: PRIVATE, content: issued.keyPem },
    ],
    options.force === true,
  );
  return { issued, name, certPath, keyPath, files };
}
