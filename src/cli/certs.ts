// `mtlsd certs init|issue|inspect`: a dev PKI in a directory, and a readable verdict on any certificate file.
import { readFile } from "node:fs/promises";
import net from "node:net";
import path from "node:path";
import { parseArgs } from "node:util";
import { parseDuration } from "../config/index.ts";
import { MtlsdError } from "../errors.ts";
import { signingCertProblems, svidProblems } from "../identity/index.ts";
import {
  type CertFacts,
  certFacts,
  describeSans,
  describeWindow,
  fieldLines,
  issuedBy,
  kindOf,
  readCertificateFile,
} from "./cert-text.ts";
import { type CliIo, EXIT_FAILURE, EXIT_OK, EXIT_USAGE, UsageError } from "./io.ts";
import {
  initPkiDirectory,
  issueIdentityFiles,
  loadPkiIssuer,
  PKI_FILES,
  type WrittenFile,
} from "./pki-dir.ts";
import { describeValidity, isoSeconds, type Style, styleFor } from "./text.ts";

export const CERTS_HELP = `mtlsd certs: a dev PKI (P-256 root and intermediate, X509-SVID leaves) and a certificate inspector

Usage:
  mtlsd certs init --dir DIR --trust-domain TD [--root-ttl 365d] [--intermediate-ttl 180d] [--force]
      writes DIR/root.crt, root.key, intermediate.crt, intermediate.key, bundle.pem (keys 0600)
  mtlsd certs issue --dir DIR --spiffe-id ID [--dns NAME]... [--ip ADDR]... [--ttl 1h] [--name NAME] [--force]
      writes DIR/NAME.crt (leaf, then intermediate) and DIR/NAME.key (0600); NAME defaults to the
      last segment of the SPIFFE ID
  mtlsd certs inspect FILE... [--trust-domain TD]
      prints each certificate (subject, issuer, serial, SANs, validity, SHA-256, key) and an X509-SVID
      verdict; exit 1 when a certificate fails its checks

Existing files are never replaced without --force. These CAs are for development and tests; in
production, issue certificates with cert-manager, SPIRE or your own CA.
`;

function duration(value: string | undefined, option: string): number | undefined {
  if (value === undefined) return undefined;
  const ms = parseDuration(value);
  if (ms === undefined || ms <= 0) {
    throw new UsageError(`--${option} ${JSON.stringify(value)}: expected a duration like 30m, 1h, 90d`);
  }
  return ms;
}

function required(value: string | undefined, option: string, example: string): string {
  if (value === undefined || value === "")
    throw new UsageError(`--${option} is required (e.g. --${option} ${example})`);
  return value;
}

/** Paths as the user would type them: relative to where they ran the command when that is shorter. */
function shown(io: CliIo, file: string): string {
  const relative = path.relative(io.cwd, file);
  return relative !== "" && !relative.startsWith("..") && !path.isAbsolute(relative) ? relative : file;
}

function listFiles(io: CliIo, files: WrittenFile[], style: Style): string[] {
  const names = files.map((file) => shown(io, file.path));
  const width = Math.max(...names.map((name) => name.length));
  return files.map((file, i) => {
    const mode = file.mode === 0o600 ? style.dim(" (mode 0600)") : "";
    return `  ${names[i]!.padEnd(width)}  ${file.role}${mode}`;
  });
}

async function init(args: string[], io: CliIo): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      dir: { type: "string" },
      "trust-domain": { type: "string" },
      "root-ttl": { type: "string" },
      "intermediate-ttl": { type: "string" },
      force: { type: "boolean", default: false },
    },
    strict: true,
  });
  const dir = path.resolve(io.cwd, required(values.dir, "dir", "./pki"));
  const trustDomain = required(values["trust-domain"], "trust-domain", "example.org");
  const rootTtlMs = duration(values["root-ttl"], "root-ttl");
  const intermediateTtlMs = duration(values["intermediate-ttl"], "intermediate-ttl");
  const style = styleFor(io.stdout, io.env);
  const now = new Date();
  const pki = await initPkiDirectory(dir, {
    trustDomain,
    ...(rootTtlMs === undefined ? {} : { rootTtlMs }),
    ...(intermediateTtlMs === undefined ? {} : { intermediateTtlMs }),
    force: values.force,
  });
  const lines = [
    `Created a dev PKI for trust domain ${style.bold(trustDomain)} in ${shown(io, dir)}:`,
    ...listFiles(io, pki.files, style),
    `  the root CA ${describeValidity(pki.root.cert.notBefore, pki.root.cert.notAfter, now)} (${isoSeconds(pki.root.cert.notAfter)}), the intermediate ${describeValidity(pki.intermediate.cert.notBefore, pki.intermediate.cert.notAfter, now)}`,
    "",
    "Next, a certificate for each workload:",
    `  mtlsd certs issue --dir ${shown(io, dir)} --spiffe-id spiffe://${trustDomain}/ns/orders/sa/orders`,
    "",
  ];
  io.stdout.write(lines.join("\n"));
  return EXIT_OK;
}

async function issue(args: string[], io: CliIo): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      dir: { type: "string" },
      "spiffe-id": { type: "string" },
      dns: { type: "string", multiple: true },
      ip: { type: "string", multiple: true },
      ttl: { type: "string" },
      name: { type: "string" },
      force: { type: "boolean", default: false },
    },
    strict: true,
  });
  const dir = path.resolve(io.cwd, required(values.dir, "dir", "./pki"));
  const spiffeId = required(values["spiffe-id"], "spiffe-id", "spiffe://example.org/ns/orders/sa/orders");
  const ttlMs = duration(values.ttl, "ttl");
  for (const address of values.ip ?? []) {
    if (net.isIP(address) === 0)
      throw new UsageError(`--ip ${JSON.stringify(address)} is not an IPv4 or IPv6 address`);
  }
  for (const name of values.dns ?? []) {
    if (
      !/^(\*\.)?([A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*$/.test(
        name,
      )
    ) {
      throw new UsageError(`--dns ${JSON.stringify(name)} is not a DNS name like orders.internal`);
    }
  }
  const style = styleFor(io.stdout, io.env);
  const issuer = await loadPkiIssuer(dir);
  const identity = await issueIdentityFiles(dir, issuer, {
    spiffeId,
    dnsNames: values.dns ?? [],
    ipAddresses: values.ip ?? [],
    ...(ttlMs === undefined ? {} : { ttlMs }),
    ...(values.name === undefined ? {} : { name: values.name }),
    force: values.force,
  });
  const { cert } = identity.issued;
  const lines = [
    `Issued ${style.bold(spiffeId)}, serial ${identity.issued.serialHex}, valid until ${isoSeconds(cert.notAfter)} (${describeValidity(cert.notBefore, cert.notAfter, new Date())}):`,
    ...listFiles(io, identity.files, style),
    "",
    "In the workload's mtlsd.yaml:",
    "  identity:",
    `    cert: ${shown(io, identity.certPath)}`,
    `    key: ${shown(io, identity.keyPath)}`,
    `    trustBundle: ${shown(io, path.join(dir, PKI_FILES.bundle))}`,
    `    trustDomain: ${issuer.trustDomain || new URL(spiffeId).host}`,
    "",
  ];
  io.stdout.write(lines.join("\n"));
  return EXIT_OK;
}

/** The verdict lines for one certificate, and whether it passed. */
function verdict(
  facts: CertFacts,
  trustDomain: string | undefined,
  now: Date,
  style: Style,
): { label: string; lines: string[]; ok: boolean } {
  const problems: string[] = [];
  if (now < facts.notBefore || now > facts.notAfter) {
    problems.push(
      `${describeValidity(facts.notBefore, facts.notAfter, now)} (checked against this host's clock)`,
    );
  }
  if (!facts.isCA) {
    // Without --trust-domain a leaf is judged in its own trust domain: every rule but that one still applies.
    const ownDomain = /^spiffe:\/\/([^/]+)/.exec(facts.uris[0] ?? "")?.[1] ?? "";
    const report = svidProblems(facts.fields, "own", trustDomain ?? ownDomain);
    problems.push(...report.problems.map((problem) => problem.detail));
    if (problems.length === 0) {
      return { label: "X509-SVID", lines: [style.good(`valid: ${report.spiffeId}`)], ok: true };
    }
    return {
      label: "X509-SVID",
      lines: [style.bad("NOT VALID"), ...problems.map((p) => `- ${p}`)],
      ok: false,
    };
  }
  problems.push(...signingCertProblems(facts.fields));
  if (problems.length === 0) {
    const parts = ["CA:TRUE", "key usage keyCertSign (critical)"];
    if (facts.pathLength !== undefined) parts.push(`path length ${facts.pathLength}`);
    const trustDomainId = facts.uris.find((uri) => uri.startsWith("spiffe://"));
    if (trustDomainId) parts.push(`SPIFFE ID ${trustDomainId}`);
    return { label: "CA checks", lines: [style.good(`ok: ${parts.join(", ")}`)], ok: true };
  }
  return { label: "CA checks", lines: [style.bad("FAILED"), ...problems.map((p) => `- ${p}`)], ok: false };
}

async function inspect(args: string[], io: CliIo): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    options: { "trust-domain": { type: "string" } },
    allowPositionals: true,
    strict: true,
  });
  if (positionals.length === 0) throw new UsageError("give at least one FILE to inspect (PEM or DER)");
  const style = styleFor(io.stdout, io.env);
  const now = new Date();
  let failed = 0;
  const out: string[] = [];
  for (const file of positionals) {
    let content: Buffer;
    try {
      content = await readFile(path.resolve(io.cwd, file));
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      throw new MtlsdError(
        "CERT_UNREADABLE",
        `${file}: cannot read: ${code === "ENOENT" ? "no such file" : (error as Error).message}`,
      );
    }
    const { certificates, otherBlocks } = readCertificateFile(content, file);
    const all = certificates.map((der, i) => certFacts(der, `certificate ${i + 1} in ${file}`));
    const count = all.length === 1 ? "1 certificate" : `${all.length} certificates`;
    const extra = otherBlocks.length > 0 ? `; also ${otherBlocks.join(", ")} (not shown)` : "";
    if (out.length > 0) out.push("");
    out.push(style.bold(`${file}: ${count}${extra}`));
    for (const [i, facts] of all.entries()) {
      const next = all[i + 1];
      const fields: [string, string][] = [
        ["issuer", facts.issuer],
        ["serial", facts.serialHex],
        ["SANs", describeSans(facts)],
        ["validity", describeWindow(facts, now, style)],
        ["key", facts.keyType],
        ["SHA-256", facts.sha256],
      ];
      let chainOk = true;
      if (facts.selfSigned) fields.push(["issued by", "itself (self-signed)"]);
      else if (next) {
        chainOk = issuedBy(facts, next);
        fields.push([
          "issued by",
          chainOk
            ? `[${i + 2}] (signature verifies)`
            : style.bad(`NOT [${i + 2}]: the chain is out of order or a certificate is missing`),
        ]);
      } else fields.push(["issued by", `${facts.issuer} (not in this file)`]);
      const judged = verdict(facts, values["trust-domain"], now, style);
      const [first, ...rest] = judged.lines;
      fields.push([judged.label, first!]);
      if (!judged.ok || !chainOk) failed++;
      out.push(`[${i + 1}] ${kindOf(facts)}: ${facts.subject}`);
      out.push(...fieldLines(fields, "    "));
      const pad = " ".repeat(4 + Math.max(...fields.map(([label]) => label.length)) + 2);
      out.push(...rest.map((line) => `${pad}${line}`));
    }
  }
  if (failed > 0)
    out.push(style.bad(`${failed} certificate${failed === 1 ? "" : "s"} failed the checks above`));
  io.stdout.write(`${out.join("\n")}\n`);
  return failed > 0 ? EXIT_FAILURE : EXIT_OK;
}

const SUBCOMMANDS: Record<string, (args: string[], io: CliIo) => Promise<number>> = { init, issue, inspect };

export async function certsCommand(args: string[], io: CliIo): Promise<number> {
  const [sub, ...rest] = args;
  if (sub === undefined || sub === "--help" || sub === "-h" || sub === "help") {
    (sub === undefined ? io.stderr : io.stdout).write(CERTS_HELP);
    return sub === undefined ? EXIT_USAGE : EXIT_OK;
  }
  const handler = SUBCOMMANDS[sub];
  if (!handler) throw new UsageError(`unknown subcommand "${sub}"; use init, issue or inspect`);
  try {
    return await handler(rest, io);
  } catch (error) {
    // Bad input (an existing file, an invalid SPIFFE ID, a directory without a CA) is a usage error: nothing was written.
    if (error instanceof MtlsdError) {
      io.stderr.write(`mtlsd certs ${sub}: ${error.message}\n`);
      return EXIT_USAGE;
    }
    // The file system said no (permissions, a full disk): a runtime failure, reported without a stack trace.
    if (typeof (error as NodeJS.ErrnoException).syscall === "string") {
      io.stderr.write(`mtlsd certs ${sub}: ${(error as Error).message}\n`);
      return EXIT_FAILURE;
    }
    throw error;
  }
}
