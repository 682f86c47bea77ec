// A PKI made by the openssl CLI, not by mtlsd, works end to end: the sidecar loads it, openssl and curl get in.
import { randomBytes } from "node:crypto";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import t from "tap";
import { stringify } from "yaml";
import { parseConfig } from "../src/config/index.ts";
import { parseXfcc } from "../src/inbound/index.ts";
import { Sidecar } from "../src/sidecar.ts";
import { startApp } from "./helpers/app.ts";
import { curlRequest, type HttpResponse, openssl, parseHttpResponse } from "./helpers/clients.ts";
import { captureLogs } from "./helpers/sidecar.ts";

const TRUST_DOMAIN = "example.org";
const ORDERS_ID = `spiffe://${TRUST_DOMAIN}/ns/orders/sa/orders`;
const FRONTEND_ID = `spiffe://${TRUST_DOMAIN}/ns/frontend/sa/frontend`;
// Several RDNs and a comma that RFC 2253 must escape, so the subject's order and escaping are both tested.
const FRONTEND_SUBJECT = "/C=US/O=Acme, Inc./OU=Web/CN=frontend";

const dir = await mkdtemp(path.join(os.tmpdir(), "mtlsd-openssl-"));
t.teardown(() => rm(dir, { recursive: true, force: true }));
const file = (name: string) => path.join(dir, name);

/** Runs openssl and fails loudly with its stderr, so a broken PKI step is not mistaken for a sidecar bug. */
async function mustOpenssl(args: string[]): Promise<string> {
  const result = await openssl(args);
  if (result.code !== 0) throw new Error(`openssl ${args.join(" ")} failed: ${result.stderr}`);
  return result.stdout;
}

// A config file of our own, so the system's openssl.cnf cannot add extensions behind the test's back.
await writeFile(file("req.cnf"), "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = unused\n");
await writeFile(
  file("ext.cnf"),
  `[intermediate]
basicConstraints = critical,CA:TRUE,pathlen:0
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
subjectAltName = URI:spiffe://${TRUST_DOMAIN}

[orders]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth,clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
subjectAltName = URI:${ORDERS_ID},DNS:localhost

[frontend]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth,clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
subjectAltName = URI:${FRONTEND_ID},DNS:frontend.example.org
`,
);

const EC_P256 = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];

async function sign(name: string, issuer: string, section: string): Promise<void> {
  // biome-ignore format: one option and its value per line reads like the command it is
  await mustOpenssl([
    "x509", "-req", "-sha256", "-days", "1",
    "-in", file(`${name}.csr`),
    "-CA", file(`${issuer}.crt`),
    "-CAkey", file(`${issuer}.key`),
    "-set_serial", `0x${randomBytes(16).toString("hex")}`,
    "-extfile", file("ext.cnf"),
    "-extensions", section,
    "-out", file(`${name}.crt`),
  ]);
}

/** A new P-256 key (PKCS#8) and a certificate request for it. */
async function request(name: string, subject: string): Promise<void> {
  // biome-ignore format: one option and its value per line reads like the command it is
  await mustOpenssl([
    "req", "-config", file("req.cnf"), "-new", ...EC_P256,
    "-keyout", file(`${name}.key`),
    "-out", file(`${name}.csr`),
    "-subj", subject,
  ]);
}

// biome-ignore format: one option and its value per line reads like the command it is
await mustOpenssl([
  "req", "-config", file("req.cnf"), "-x509", ...EC_P256, "-sha256", "-days", "1",
  "-keyout", file("root.key"),
  "-out", file("root.crt"),
  "-subj", "/O=Acme/CN=Acme Test Root",
  "-addext", "basicConstraints=critical,CA:TRUE",
  "-addext", "keyUsage=critical,keyCertSign,cRLSign",
  "-addext", "subjectKeyIdentifier=hash",
  "-addext", `subjectAltName=URI:spiffe://${TRUST_DOMAIN}`,
]);
await request("intermediate", "/O=Acme/CN=Acme Test Intermediate");
await sign("intermediate", "root", "intermediate");
// The orders key is SEC1 ("EC PRIVATE KEY"), the form `openssl ecparam -genkey` and many tools still write.
await mustOpenssl(["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", file("orders.key")]);
// biome-ignore format: one option and its value per line reads like the command it is
await mustOpenssl([
  "req", "-config", file("req.cnf"), "-new",
  "-key", file("orders.key"),
  "-out", file("orders.csr"),
  "-subj", "/O=Acme/CN=orders",
]);
await sign("orders", "intermediate", "orders");
await request("frontend", FRONTEND_SUBJECT);
await sign("frontend", "intermediate", "frontend");

const intermediatePem = await readFile(file("intermediate.crt"), "utf8");
await writeFile(file("orders.chain.pem"), (await readFile(file("orders.crt"), "utf8")) + intermediatePem);
await writeFile(file("frontend.chain.pem"), (await readFile(file("frontend.crt"), "utf8")) + intermediatePem);

// What the app must be told about the frontend, computed by openssl from the certificate itself.
await mustOpenssl(["x509", "-in", file("frontend.crt"), "-outform", "DER", "-out", file("frontend.der")]);
const frontendSha256 = (await mustOpenssl(["dgst", "-sha256", "-r", file("frontend.der")])).split(" ")[0]!;
const frontendSubject = (
  await mustOpenssl(["x509", "-in", file("frontend.crt"), "-noout", "-subject", "-nameopt", "RFC2253"])
)
  .trim()
  .replace(/^subject=/, "");

const app = await startApp();
t.teardown(() => app.stop());
const { lines: logs, stream } = captureLogs();
const configPath = file("orders.yaml");
const configText = stringify({
  identity: {
    cert: file("orders.chain.pem"),
    key: file("orders.key"),
    trustBundle: file("root.crt"),
    trustDomain: TRUST_DOMAIN,
  },
  inbound: {
    listen: "127.0.0.1:0",
    app: app.url,
    policy: { rules: [{ name: "frontend-calls-orders", action: "allow", from: [FRONTEND_ID] }] },
  },
  admin: { listen: "127.0.0.1:0" },
  log: { level: "debug" },
});
await writeFile(configPath, configText);
const sidecar = await Sidecar.start(parseConfig(configText, configPath), { logStream: stream });
t.teardown(() => sidecar.stop());
const port = sidecar.addresses().inbound!.port;

type Test = Parameters<Parameters<typeof t.test>[0]>[0];

/** Checks the app's echo of the request, above all the XFCC the sidecar built from openssl's certificate. */
function assertEchoedXfcc(t: Test, response: HttpResponse | null, requestPath: string): void {
  t.equal(response?.status, 200);
  t.equal(response?.headers["x-app"], "echo", "the app answered");
  const echoed = JSON.parse(response?.body ?? "{}") as { url: string; headers: Record<string, string> };
  t.equal(echoed.url, requestPath);
  const xfcc = echoed.headers["x-forwarded-client-cert"] ?? "";
  t.match(xfcc, `Hash=${frontendSha256};`, "Hash is openssl's sha256 of the DER leaf");
  t.match(xfcc, ';Subject="CN=frontend,OU=Web,O=Acme', "Subject is quoted, most specific RDN first");
  const elements = parseXfcc(xfcc);
  t.equal(elements.length, 1, "one element: ours");
  t.same(
    elements[0]!.map(({ key, value }) => [key, value]),
    [
      ["By", ORDERS_ID],
      ["Hash", frontendSha256],
      ["Subject", frontendSubject],
      ["URI", FRONTEND_ID],
      ["DNS", "frontend.example.org"],
    ],
  );
}

t.test("the sidecar starts with an openssl-made chain and a SEC1 EC key", async (t) => {
  t.match(await readFile(file("orders.key"), "utf8"), /^-----BEGIN EC PRIVATE KEY-----\n/, "the key is SEC1");
  t.match(
    await readFile(file("frontend.key"), "utf8"),
    /^-----BEGIN PRIVATE KEY-----\n/,
    "the other is PKCS#8",
  );
  const started = logs.find((line) => line.msg === "mtlsd started");
  t.match(started, { identity: ORDERS_ID, trust_domain: TRUST_DOMAIN });
  t.equal(
    frontendSubject,
    "CN=frontend,OU=Web,O=Acme\\, Inc.,C=US",
    "openssl's RFC 2253 form, for reference",
  );
});

t.test("openssl s_client with an openssl-made client certificate gets 200 and a true XFCC", async (t) => {
  const requestPath = "/v1/orders/s_client";
  const request = `GET ${requestPath} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n`;
  // -quiet implies -ign_eof: s_client keeps reading after its stdin ends, until the server closes.
  // biome-ignore format: one option and its value per line reads like the command it is
  const args = [
    "s_client", "-quiet",
    "-connect", `127.0.0.1:${port}`,
    "-servername", "localhost",
    "-CAfile", file("root.crt"), "-verify_return_error",
    "-verify_hostname", "localhost",
    "-cert", file("frontend.crt"),
    "-cert_chain", file("intermediate.crt"),
    "-key", file("frontend.key"),
  ];
  const result = await openssl(args, { input: request });
  t.equal(result.code, 0, result.stderr);
  assertEchoedXfcc(t, parseHttpResponse(result.stdout), requestPath);
});

t.test("curl with the same openssl-made files gets 200 and a true XFCC", async (t) => {
  const requestPath = "/v1/orders/curl";
  const result = await curlRequest(`https://localhost:${port}${requestPath}`, {
    cacert: file("root.crt"),
    cert: file("frontend.chain.pem"),
    key: file("frontend.key"),
  });
  t.equal(result.code, 0, result.stderr);
  assertEchoedXfcc(t, result.response, requestPath);
});
