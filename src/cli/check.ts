// `mtlsd check`: validates a config and its credentials, and optionally a live peer, naming every problem found.
import { readFile } from "node:fs/promises";
import { parseArgs } from "node:util";
import {
  ConfigError,
  type LoadedConfig,
  loadConfigFile,
  parseDuration,
  parseHostPort,
} from "../config/index.ts";
import {
  type CredentialFiles,
  type CredentialLabels,
  type CredentialMaterial,
  type Credentials,
  fileLabels,
  loadWorkloadApi,
  readCredentialMaterial,
  validateCredentials,
} from "../credentials/index.ts";
import { MtlsdError } from "../errors.ts";
import { classifyVerifyError, type HandshakeFailureReason } from "../identity/index.ts";
import { formatExplanation, Policy } from "../policy/index.ts";
import {
  type CertFacts,
  certFacts,
  describeWindow,
  fieldLines,
  kindOf,
  readCertificateFile,
} from "./cert-text.ts";
import { configPath } from "./config-path.ts";
import { type CliIo, EXIT_FAILURE, EXIT_OK, EXIT_USAGE, UsageError } from "./io.ts";
import { type PeerProbe, type Problem, probePeer } from "./peer-probe.ts";
import { describeValidity, formatSpan, isoSeconds, type Style, styleFor } from "./text.ts";

const DEFAULT_TIMEOUT_MS = 5000;

/** The names `check` gives the handshake failure reasons of DESIGN.md. */
const PROBLEM_KIND: Partial<Record<HandshakeFailureReason, string>> = {
  cert_expired: "expired",
  cert_not_yet_valid: "not yet valid (clock skew)",
  unknown_ca: "unknown CA",
  wrong_trust_domain: "wrong trust domain",
  bad_svid: "bad SVID",
  revoked: "revoked",
};

/** Credential error codes (see run.ts) turned into the names `check` reports. */
function credentialProblem(error: MtlsdError, leaf: CertFacts | undefined, now: Date): Problem {
  const { code, message } = error;
  switch (code) {
    case "CERT_EXPIRED":
      return { kind: "expired", detail: message };
    case "CERT_NOT_YET_VALID":
      return { kind: "not yet valid (clock skew)", detail: withSkew(message, leaf, now) };
    case "WRONG_TRUST_DOMAIN":
      return { kind: "wrong trust domain", detail: message };
    case "SVID_INVALID":
      return { kind: "bad SVID", detail: message };
    case "CERT_REVOKED":
      return { kind: "revoked", detail: message };
    case "CERT_KEY_MISMATCH":
      return { kind: "key mismatch", detail: message };
    case "CREDENTIAL_UNREADABLE":
      return { kind: "unreadable", detail: message };
    case "CERT_PARSE":
    case "KEY_PARSE":
    case "BUNDLE_INVALID":
      return { kind: "bad PEM", detail: message };
    case "CHAIN_UNTRUSTED": {
      // The handshake test quotes OpenSSL's verify code, e.g. "(UNABLE_TO_GET_ISSUER_CERT_LOCALLY)": name its cause.
      const verifyCode = /\(([A-Z0-9_]+)\)/.exec(message)?.[1];
      const reason = verifyCode ? classifyVerifyError(verifyCode).reason : undefined;
      return {
        kind: reason ? (PROBLEM_KIND[reason] ?? "chain untrusted") : "chain untrusted",
        detail: message,
      };
    }
    default:
      if (code.startsWith("CRL_")) return { kind: "bad CRL", detail: message };
      return { kind: code.toLowerCase().replaceAll("_", " "), detail: message };
  }
}

function withSkew(message: string, leaf: CertFacts | undefined, now: Date): string {
  if (!leaf || leaf.notBefore <= now) return message;
  return `${message} (it starts in ${formatSpan(leaf.notBefore.getTime() - now.getTime())}: this host's clock is behind the issuer's by at least that much)`;
}

/** An override as `check` prints it, read defensively: `inbound.policy.overrides` is not in every config schema. */
export interface OverrideView {
  reason: string;
  approvedBy: string;
  expires: Date;
  from: string[];
}

function overrideView(value: unknown): OverrideView | undefined {
  if (typeof value !== "object" || value === null) return undefined;
  const { reason, approvedBy, expires, from } = value as Record<string, unknown>;
  // The config module gives a Date; a string or epoch milliseconds are read the same way rather than dropped.
  const when =
    expires instanceof Date
      ? expires
      : typeof expires === "string" || typeof expires === "number"
        ? new Date(expires)
        : undefined;
  if (typeof reason !== "string" || typeof approvedBy !== "string" || !when || Number.isNaN(when.getTime())) {
    return undefined;
  }
  const sources = Array.isArray(from)
    ? from.filter((entry): entry is string => typeof entry === "string")
    : [];
  return { reason, approvedBy, expires: when, from: sources };
}

export function overridesOf(policy: object): OverrideView[] {
  const overrides = "overrides" in policy ? policy.overrides : undefined;
  if (!Array.isArray(overrides)) return [];
  return overrides.map(overrideView).filter((o): o is OverrideView => o !== undefined);
}

class Report {
  readonly lines: string[] = [];
  readonly problems: Problem[] = [];
  readonly warnings: string[] = [];
  readonly style: Style;

  constructor(style: Style) {
    this.style = style;
  }

  section(title: string): void {
    if (this.lines.length > 0) this.lines.push("");
    this.lines.push(this.style.bold(title));
  }

  fields(fields: [string, string][]): void {
    this.lines.push(...fieldLines(fields, "  "));
  }

  line(text: string): void {
    this.lines.push(`  ${text}`);
  }

  problem(problem: Problem): void {
    if (this.problems.some((p) => p.kind === problem.kind && p.detail === problem.detail)) return;
    this.problems.push(problem);
  }

  warn(text: string): void {
    this.warnings.push(text);
  }

  render(): string {
    const out = [...this.lines, ""];
    for (const warning of this.warnings) out.push(`${this.style.warn("warning")}: ${warning}`);
    for (const p of this.problems) out.push(`${this.style.bad(`PROBLEM ${p.kind}`)}: ${p.detail}`);
    if (this.problems.length === 0) out.push(this.style.good("result: OK"));
    else {
      const kinds = [...new Set(this.problems.map((p) => p.kind))].join(", ");
      out.push(
        this.style.bad(
          `result: ${this.problems.length} problem${this.problems.length === 1 ? "" : "s"} (${kinds})`,
        ),
      );
    }
    return `${out.join("\n")}\n`;
  }
}

async function readChain(file: string): Promise<CertFacts[] | undefined> {
  try {
    return chainOf(await readFile(file), file);
  } catch {
    // loadCredentials reports the same file with the field name; here we only lose the display.
    return undefined;
  }
}

function chainOf(content: Buffer | string, where: string): CertFacts[] | undefined {
  try {
    const { certificates } = readCertificateFile(
      typeof content === "string" ? Buffer.from(content) : content,
      where,
    );
    return certificates.map((der, i) => certFacts(der, `certificate ${i + 1} in ${where}`));
  } catch {
    return undefined;
  }
}

/** Our identity's material as `mtlsd run` would get it, and how each part is named in messages. */
interface IdentityMaterial {
  material: CredentialMaterial;
  labels: CredentialLabels;
  /** What the report calls the certificate, key and bundle: file paths, or the Workload API. */
  where: { cert: string; key: string; trustBundle: string };
}

/** Reads the files, or asks the Workload API once; undefined (with the problem reported) when neither works. */
async function identityMaterial(
  loaded: LoadedConfig,
  report: Report,
  timeoutMs: number,
): Promise<IdentityMaterial | undefined> {
  const { identity } = loaded.config;
  if (identity.workloadApi) {
    const socket = identity.workloadApi.socket!;
    try {
      const { fetchWorkloadApiMaterial } = await loadWorkloadApi();
      const fetched = await fetchWorkloadApiMaterial(
        {
          settings: {
            socket,
            spiffeId: identity.workloadApi.spiffeId,
            startupTimeoutMs: identity.workloadApi.startupTimeout,
          },
          federation: identity.federation,
        },
        timeoutMs,
      );
      const where = `the Workload API (${socket})`;
      return { ...fetched, where: { cert: where, key: where, trustBundle: where } };
    } catch (error) {
      if (!(error instanceof MtlsdError)) throw error;
      report.fields([
        ["source", `Workload API ${socket}`],
        ["verdict", report.style.bad("FAILED: no X509-SVID")],
      ]);
      report.problem({ kind: "workload API", detail: error.message });
      return undefined;
    }
  }
  const files = identityFiles(loaded);
  try {
    return {
      material: await readCredentialMaterial(files),
      labels: fileLabels(files),
      where: { cert: files.cert, key: files.key, trustBundle: files.trustBundle },
    };
  } catch (error) {
    if (!(error instanceof MtlsdError)) throw error;
    // Still read what can be read for the display; the unreadable part is the problem.
    return {
      material: { chainPem: "", keyPem: "", bundlePem: "" },
      labels: fileLabels(files),
      where: { cert: files.cert, key: files.key, trustBundle: files.trustBundle },
    };
  }
}

/** The credential files of a config without identity.workloadApi (the config loader made sure all are given). */
function identityFiles(loaded: LoadedConfig): CredentialFiles {
  const { identity } = loaded.config;
  return {
    cert: identity.cert!,
    key: identity.key!,
    trustBundle: identity.trustBundle!,
    crl: identity.crl,
    federation: identity.federation,
  };
}

/**
 * The identity section: what the files (or the Workload API) hold, then the verdict of the same validation
 * `mtlsd run` performs, then every trust domain's roots. Returns our material, for the peer probe.
 */
async function checkIdentity(
  loaded: LoadedConfig,
  report: Report,
  now: Date,
  timeoutMs: number,
): Promise<IdentityMaterial | undefined> {
  const { identity } = loaded.config;
  const { style } = report;
  report.section("identity");
  const found = await identityMaterial(loaded, report, timeoutMs);
  if (!found) return undefined;
  const { where } = found;
  const chain = identity.workloadApi
    ? chainOf(found.material.chainPem, where.cert)
    : await readChain(where.cert);
  const bundle = identity.workloadApi
    ? chainOf(found.material.bundlePem, where.trustBundle)
    : await readChain(where.trustBundle);
  const leaf = chain?.[0];
  const spiffeId = leaf?.uris.find((uri) => uri.startsWith("spiffe://"));
  const fields: [string, string][] = [
    ...(identity.workloadApi
      ? ([["source", `Workload API ${identity.workloadApi.socket}`]] as [string, string][])
      : []),
    ["SPIFFE ID", spiffeId ?? (leaf ? style.bad("none (no spiffe:// URI SAN)") : "(unreadable)")],
    ["trust domain", identity.trustDomain],
    ["certificate", `${where.cert}${leaf ? `: ${leaf.subject}, serial ${leaf.serialHex}` : ""}`],
  ];
  if (leaf) {
    fields.push(["valid", describeWindow(leaf, now, style)]);
    fields.push(["issuer", leaf.issuer]);
    const intermediates = (chain ?? []).slice(1);
    fields.push([
      "chain",
      intermediates.length === 0
        ? "the leaf alone"
        : `leaf + ${intermediates.map((c) => `${c.subject} (${describeValidity(c.notBefore, c.notAfter, now)})`).join(", ")}`,
    ]);
  }
  fields.push(["key", where.key]);
  fields.push([
    "trust bundle",
    `${where.trustBundle}${bundle ? `: ${bundle.map((root) => `${root.subject} (${describeValidity(root.notBefore, root.notAfter, now)})`).join("; ")}` : ""}`,
  ]);
  let verdict: string;
  let credentials: Credentials | undefined;
  try {
    const material = identity.workloadApi
      ? found.material
      : await readCredentialMaterial(identityFiles(loaded));
    credentials = await validateCredentials(material, found.labels, {
      trustDomain: identity.trustDomain,
      federation: identity.federation.map((entry) => entry.trustDomain),
      now,
    });
    verdict = style.good(
      "ok: key matches, valid X509-SVID in the trust domain, chain verifies against the bundle",
    );
    // Issuers renew with a third of the lifetime left; less than that means a renewal is late.
    const { notBefore, notAfter } = credentials.leaf;
    const left = notAfter.getTime() - now.getTime();
    if (left < (notAfter.getTime() - notBefore.getTime()) / 3) {
      report.warn(
        `${found.labels.cert} expires in ${formatSpan(left)}, with less than a third of its lifetime left: is renewal working?`,
      );
    }
  } catch (error) {
    if (!(error instanceof MtlsdError)) throw error;
    const problem = credentialProblem(error, leaf, now);
    report.problem(problem);
    verdict = style.bad(`FAILED: ${problem.kind}`);
  }
  fields.push(["verdict", verdict]);
  report.fields(fields);
  if (credentials) checkTrustDomains(credentials, report);
  return found;
}

/** Every trust domain we accept peers from, with the fingerprints of its roots (compare with the issuer's). */
function checkTrustDomains(credentials: Credentials, report: Report): void {
  report.section("trust domains");
  const domains = [
    { trustDomain: credentials.trustDomain, roots: credentials.trustBundle, what: "ours" },
    ...credentials.federation.map((bundle) => ({ ...bundle, what: "federated" })),
  ];
  for (const { trustDomain, roots, what } of domains) {
    report.line(`- ${trustDomain} (${what}): ${roots.length} root${roots.length === 1 ? "" : "s"}`);
    for (const root of roots) report.line(`    ${root.subject}  sha256 ${root.sha256}`);
    if (roots.length === 0) {
      report.problem({
        kind: "no bundle",
        detail: `the Workload API delivered no federated bundle for ${trustDomain}: its peers are refused until it does`,
      });
    }
  }
}

function checkPolicy(loaded: LoadedConfig, policy: Policy | undefined, report: Report, now: Date): void {
  const { inbound } = loaded.config;
  if (!inbound || !policy) return;
  report.section("inbound");
  const dryRun = inbound.policy.rules.filter((rule) => rule.dryRun).length;
  const rules = inbound.policy.rules.length;
  const overrides = overridesOf(inbound.policy);
  const active = overrides.filter((o) => o.expires > now);
  report.fields([
    ["listen", `${inbound.listen} (mTLS) → app ${inbound.app}`],
    [
      "policy",
      `default ${inbound.policy.default}, ${rules} rule${rules === 1 ? "" : "s"}${dryRun > 0 ? ` (${dryRun} dry-run)` : ""}, sha256 ${policy.sha256.slice(0, 12)}`,
    ],
    ["overrides", overrides.length === 0 ? "none" : `${active.length} active of ${overrides.length}`],
  ]);
  for (const o of overrides) {
    const state =
      o.expires > now
        ? report.style.warn(`ACTIVE, expires in ${formatSpan(o.expires.getTime() - now.getTime())}`)
        : `expired ${formatSpan(now.getTime() - o.expires.getTime())} ago (ignored)`;
    report.line(`  - "${o.reason}" approved by ${o.approvedBy}, from ${o.from.join(", ")}: ${state}`);
  }
}

function checkOutbound(loaded: LoadedConfig, report: Report): void {
  const { outbound } = loaded.config;
  if (!outbound) return;
  report.section("outbound");
  report.fields([["listen", `${outbound.listen} (plain HTTP from the app)`]]);
  for (const [name, upstream] of Object.entries(outbound.upstreams)) {
    // An app that can set neither a proxy nor a Host header is pointed at this port: say which it is.
    const port = upstream.listen
      ? `; the app may also call ${upstream.listen} (plain HTTP, no Host needed)`
      : "";
    const where = upstream.address ?? (upstream.endpoints ?? []).join(", ");
    report.line(`- ${name}: ${where} must present ${upstream.identity}${port}`);
  }
}

/** Where probes and Prometheus reach this sidecar: the port to open to them, and to nobody else. */
function checkAdmin(loaded: LoadedConfig, report: Report): void {
  report.section("admin");
  report.fields([
    [
      "listen",
      `${loaded.config.admin.listen} (/healthz /readyz /metrics /status; plain HTTP, no authentication)`,
    ],
  ]);
}

interface PeerQuestion {
  host: string;
  port: number;
  method: string;
  path: string;
  /** True when --method or --path was given: a DENY then answers the question asked, and is a problem. */
  askedRequest: boolean;
  timeoutMs: number;
}

function describePeerChain(probe: PeerProbe, report: Report, now: Date): string[] {
  const lines: string[] = [];
  for (const [i, cert] of probe.chain.entries()) {
    lines.push(`    [${i}] ${kindOf(cert)}: ${cert.subject}`);
    lines.push(
      ...fieldLines(
        [
          ["issuer", cert.issuer],
          ["serial", cert.serialHex],
          ["valid", describeWindow(cert, now, report.style)],
        ],
        "        ",
      ),
    );
  }
  return lines;
}

/** Names what OpenSSL said about the peer's chain, pointing at the certificate that caused it. */
function peerVerifyProblem(probe: PeerProbe, ourRoots: CertFacts[], now: Date): Problem | undefined {
  const failure = probe.verifyFailure;
  if (!failure) return undefined;
  const peer = `the peer (${probe.address})`;
  switch (failure.reason) {
    case "cert_expired": {
      const expired = probe.chain.find((c) => c.notAfter < now);
      return {
        kind: "expired",
        detail: expired
          ? `${peer} presents ${expired.subject}, which expired ${formatSpan(now.getTime() - expired.notAfter.getTime())} ago (${isoSeconds(expired.notAfter)})`
          : `${peer}: ${failure.detail}`,
      };
    }
    case "cert_not_yet_valid": {
      const early = probe.chain.find((c) => c.notBefore > now);
      return {
        kind: "not yet valid (clock skew)",
        detail: early
          ? `${peer} presents ${early.subject}, valid only from ${isoSeconds(early.notBefore)}: ${formatSpan(early.notBefore.getTime() - now.getTime())} from now by this host's clock; one of the two clocks is off (clock skew)`
          : `${peer}: ${failure.detail}`,
      };
    }
    case "unknown_ca": {
      const top = probe.chain.at(-1);
      // A re-created dev PKI, or a second CA "of the same name", is the classic cause: say so when we see it.
      const namesake = top && ourRoots.find((root) => root.subject === top.issuer);
      const hint = namesake
        ? `; our bundle has a root named ${namesake.subject}, but it did not sign this chain: the peer's certificates come from a different CA of the same name`
        : "";
      return {
        kind: "unknown CA",
        detail: `${peer}'s chain does not lead to a root in our trust bundle${top ? ` (it ends at ${top.subject}, issued by ${top.issuer})` : ""}: ${failure.detail}${hint}`,
      };
    }
    case "revoked":
      return { kind: "revoked", detail: `${peer}: ${failure.detail}` };
    case "wrong_trust_domain":
      return { kind: "wrong trust domain", detail: `${peer}: ${failure.detail}` };
    default:
      return { kind: "bad SVID", detail: `${peer}: ${failure.detail}` };
  }
}

async function checkPeer(
  loaded: LoadedConfig,
  policy: Policy | undefined,
  question: PeerQuestion,
  ours: IdentityMaterial | undefined,
  report: Report,
  now: Date,
): Promise<void> {
  const { identity, outbound } = loaded.config;
  const { style } = report;
  const address = `${question.host.includes(":") ? `[${question.host}]` : question.host}:${question.port}`;
  report.section(`peer ${address}`);
  let material: CredentialMaterial | undefined;
  try {
    material = identity.workloadApi ? ours?.material : await readCredentialMaterial(identityFiles(loaded));
  } catch (error) {
    report.line(`skipped: our own credential files cannot be read (${(error as Error).message})`);
    return;
  }
  if (!material) {
    report.line("skipped: the Workload API gave us no credentials to present");
    return;
  }
  const probe = await probePeer({
    host: question.host,
    port: question.port,
    chainPem: material.chainPem,
    keyPem: material.keyPem,
    bundlePem: [material.bundlePem, ...Object.values(material.federated ?? {})].join("\n"),
    trustDomain: [identity.trustDomain, ...identity.federation.map((entry) => entry.trustDomain)],
    trust: {
      current: {
        trustDomain: identity.trustDomain,
        bundlePem: material.bundlePem,
        bundleSha256: "as read by check",
        federation: identity.federation.map(({ trustDomain }) => ({
          trustDomain,
          pem: material.federated?.[trustDomain] ?? "",
        })),
      },
    },
    timeoutMs: question.timeoutMs,
  });
  if (probe.connectFailure) {
    report.fields([["TLS", style.bad(`no session: ${probe.connectFailure.kind}`)]]);
    report.problem(probe.connectFailure);
    return;
  }
  report.fields([
    ["TLS", `${probe.protocol}, ${probe.cipher}, handshake ${probe.handshakeMs} ms`],
    ["chain", `${probe.chain.length} certificate${probe.chain.length === 1 ? "" : "s"}, as verified:`],
  ]);
  report.lines.push(...describePeerChain(probe, report, now));

  const fields: [string, string][] = [];
  const ourRoots = chainOf(material.bundlePem, "our trust bundle") ?? [];
  const verify = peerVerifyProblem(probe, ourRoots, now);
  if (verify) report.problem(verify);
  const peerDomain = probe.svid?.spiffeId ? new URL(probe.svid.spiffeId).host : undefined;
  fields.push([
    "verification",
    verify
      ? style.bad(`FAILED: ${verify.kind}`)
      : style.good(
          peerDomain && peerDomain !== identity.trustDomain
            ? `ok: the chain leads to a root in the bundle of ${peerDomain}`
            : "ok: the chain leads to a root in our trust bundle",
        ),
  ]);
  const leaf = probe.chain[0];
  const svid = probe.svid;
  const peerId = svid?.spiffeId;
  fields.push(["SPIFFE ID", peerId ?? style.bad("none")]);
  if (svid) {
    if (svid.problems.length === 0)
      fields.push([
        "X509-SVID",
        style.good(
          peerId?.startsWith(`spiffe://${identity.trustDomain}/`) === false
            ? `valid, in the federated trust domain ${new URL(peerId).host}`
            : `valid, in our trust domain ${identity.trustDomain}`,
        ),
      ]);
    else {
      fields.push([
        "X509-SVID",
        style.bad(`NOT VALID for us: ${svid.problems.map((p) => p.detail).join("; ")}`),
      ]);
      for (const p of svid.problems) {
        report.problem({
          kind: p.reason === "wrong_trust_domain" ? "wrong trust domain" : "bad SVID",
          detail: `the peer (${address}): ${p.detail}`,
        });
      }
    }
  }
  if (leaf)
    fields.push([
      "expires",
      `${isoSeconds(leaf.notAfter)} (${describeValidity(leaf.notBefore, leaf.notAfter, now)})`,
    ]);
  // What the peer made of us: mtlsd answers a refused client certificate with a 403 naming the reason.
  if (probe.refusedUs) {
    fields.push(["our cert", style.bad(`REFUSED by the peer: ${probe.refusedUs.reason}`)]);
    report.problem({
      kind: "refused by peer",
      detail: `the peer (${address}) refused our certificate: ${probe.refusedUs.detail}; the peer's log says why`,
    });
  } else fields.push(["our cert", `accepted by the peer (no refusal within ${probe.refusalWaitMs} ms)`]);

  // A peer whose certificate we would refuse never gets as far as an upstream match or a policy decision.
  const refusedAtHandshake =
    verify?.kind ??
    (svid && svid.problems.length > 0 ? "its certificate is not a valid X509-SVID for us" : undefined);
  if (refusedAtHandshake) {
    fields.push([
      "outbound",
      `not reached: our sidecar refuses this peer at the handshake (${refusedAtHandshake})`,
    ]);
    if (policy)
      fields.push([
        "inbound",
        `not reached: our sidecar refuses this peer at the handshake (${refusedAtHandshake})`,
      ]);
    report.fields(fields);
    return;
  }
  // Outbound: would our sidecar accept this server as one of its upstreams?
  const upstreams = Object.entries(outbound?.upstreams ?? {});
  const atAddress = upstreams.filter(([, u]) =>
    [u.address, ...(u.endpoints ?? [])].some((at) => at?.toLowerCase() === address.toLowerCase()),
  );
  let isOurUpstream = false;
  if (!peerId) fields.push(["outbound", "no SPIFFE ID to compare with our upstreams"]);
  else if (atAddress.length > 0) {
    for (const [name, upstream] of atAddress) {
      if (upstream.identity === peerId) {
        isOurUpstream = true;
        fields.push(["outbound", style.good(`upstream "${name}" expects ${upstream.identity}: it matches`)]);
      } else {
        fields.push(["outbound", style.bad(`upstream "${name}" expects ${upstream.identity}: MISMATCH`)]);
        report.problem({
          kind: "identity mismatch",
          detail: `upstream "${name}" (${address}) must present ${upstream.identity}, but the peer presents ${peerId}; calls to ${name} fail with 502 upstream_identity_mismatch`,
        });
      }
    }
  } else {
    const byIdentity = upstreams.filter(([, u]) => u.identity === peerId).map(([name]) => `"${name}"`);
    isOurUpstream = byIdentity.length > 0;
    fields.push([
      "outbound",
      byIdentity.length > 0
        ? `this identity is what upstream ${byIdentity.join(", ")} must present`
        : "no upstream of ours expects this identity",
    ]);
  }

  // Inbound: would our policy let this identity call us?
  const explanation =
    peerId && policy
      ? policy.explain({ source: peerId, method: question.method, path: question.path })
      : undefined;
  if (explanation) {
    const decision = explanation.decision;
    const allowed = decision?.allow === true;
    const by = !decision
      ? "the path is refused (bad_path)"
      : decision.rule === "default"
        ? "by the default"
        : `by rule "${decision.rule}"`;
    fields.push([
      "inbound",
      `our policy would ${allowed ? style.good("ALLOW") : style.bad("DENY")} ${question.method} ${question.path} from this peer, ${by}`,
    ]);
    if (!allowed) {
      if (question.askedRequest || !isOurUpstream) {
        report.problem({
          kind: "policy denial",
          detail: `our inbound policy denies ${question.method} ${question.path} from ${peerId}, ${by}; details: mtlsd policy explain`,
        });
      } else {
        fields.push([
          "",
          "(not a problem: the peer is our upstream; ask about a request it makes to us with --method/--path)",
        ]);
      }
    }
  } else if (!policy) fields.push(["inbound", "no inbound in this config: nobody calls us"]);
  report.fields(fields);
  if (explanation) {
    for (const line of formatExplanation(explanation).split("\n")) report.line(`  ${line}`);
  }
}

export async function checkCommand(args: string[], io: CliIo): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      config: { type: "string", short: "c" },
      peer: { type: "string" },
      method: { type: "string" },
      path: { type: "string" },
      timeout: { type: "string" },
    },
    strict: true,
  });
  if (!values.peer && (values.method !== undefined || values.path !== undefined)) {
    throw new UsageError(
      "--method and --path ask about a request from the --peer; give --peer HOST:PORT too",
    );
  }
  const peer = values.peer === undefined ? undefined : parseHostPort(values.peer);
  if (values.peer !== undefined && (!peer || peer.port === 0)) {
    throw new UsageError(
      `--peer ${JSON.stringify(values.peer)}: expected HOST:PORT, like orders.internal:15006`,
    );
  }
  const timeoutMs = values.timeout === undefined ? DEFAULT_TIMEOUT_MS : parseDuration(values.timeout);
  if (timeoutMs === undefined || timeoutMs <= 0) {
    throw new UsageError(`--timeout ${JSON.stringify(values.timeout)}: expected a duration like 5s`);
  }
  const method = values.method ?? "GET";
  if (!/^[A-Z]+$/.test(method))
    throw new UsageError(`--method ${JSON.stringify(method)}: expected an HTTP method in upper case`);
  const requestPath = values.path ?? "/";

  const file = configPath(values.config, io);
  let loaded: LoadedConfig;
  let policy: Policy | undefined;
  const report = new Report(styleFor(io.stdout, io.env));
  const now = new Date();
  try {
    loaded = loadConfigFile(file);
    report.section("config");
    report.line(`${file}: ${report.style.good("valid")}`);
    policy = checkPolicyFirst(loaded);
  } catch (error) {
    if (error instanceof MtlsdError) {
      io.stderr.write(`mtlsd check: ${error.message}\n`);
      return EXIT_USAGE;
    }
    throw error;
  }
  const ours = await checkIdentity(loaded, report, now, timeoutMs);
  checkPolicy(loaded, policy, report, now);
  checkOutbound(loaded, report);
  checkAdmin(loaded, report);
  if (peer) {
    await checkPeer(
      loaded,
      policy,
      {
        host: peer.host,
        port: peer.port,
        method,
        path: requestPath,
        askedRequest: values.method !== undefined || values.path !== undefined,
        timeoutMs,
      },
      ours,
      report,
      now,
    );
  }
  io.stdout.write(report.render());
  return report.problems.length > 0 ? EXIT_FAILURE : EXIT_OK;
}

/** Compiles the policy before anything is printed, so a policy error is a config error (exit 2), as in `run`. */
function checkPolicyFirst(loaded: LoadedConfig): Policy | undefined {
  const inbound = loaded.config.inbound;
  if (!inbound) return undefined;
  try {
    return new Policy(inbound.policy);
  } catch (error) {
    if (error instanceof MtlsdError && error.code === "POLICY_INVALID") {
      throw new ConfigError(loaded.file, [
        { path: "inbound.policy", expected: "a valid policy", found: error.message },
      ]);
    }
    throw error;
  }
}
