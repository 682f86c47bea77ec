// `mtlsd check` with the identity from a Workload API: the SVID it hands out, its expiry, every trust domain's roots.
import { writeFile } from "node:fs/promises";
import path from "node:path";
import t from "tap";
import { stringify } from "yaml";
import { runCli } from "./helpers/cli.ts";
import { createTestPki } from "./helpers/pki.ts";
import { WorkloadApiServer } from "./helpers/workload-api.ts";

const pki = await createTestPki();
t.teardown(() => pki.cleanup());
const partner = await createTestPki("partner.example");
t.teardown(() => partner.cleanup());
const orders = await pki.identity("orders");
const svid = {
  spiffeId: orders.spiffeId,
  chainPem: orders.chainPem,
  keyPem: orders.keyPem,
  bundlePem: pki.bundlePem,
};

let configs = 0;
async function writeConfig(identity: Record<string, unknown>): Promise<string> {
  const file = path.join(pki.dir, `check-workload-api-${++configs}.yaml`);
  await writeFile(
    file,
    stringify({ identity: { trustDomain: "example.org", ...identity }, inbound: { listen: "127.0.0.1:0" } }),
  );
  return file;
}

t.test("check prints the SVID from the Workload API, its expiry and each trust domain's roots", async (t) => {
  const agent = await WorkloadApiServer.start(path.join(pki.dir, "check-agent.sock"), {
    svids: [svid],
    federated: { "partner.example": partner.bundlePem },
  });
  t.teardown(() => agent.stop());
  const file = await writeConfig({
    workloadApi: { socket: agent.socket },
    federation: [{ trustDomain: "partner.example" }],
  });
  const result = await runCli(["check", "-c", file]);
  t.equal(result.code, 0, result.stdout + result.stderr);
  t.match(result.stdout, `source        Workload API ${agent.socket}`);
  t.match(result.stdout, /SPIFFE ID +spiffe:\/\/example\.org\/ns\/orders\/sa\/orders\n/);
  t.match(result.stdout, /valid +\S+ to \S+ \(expires in (59|58)m/);
  t.match(result.stdout, /verdict +ok: key matches/);
  t.match(
    result.stdout,
    /trust domains\n +- example\.org \(ours\): 1 root\n +CN=example\.org root CA +sha256 [0-9a-f]{64}/,
  );
  t.match(
    result.stdout,
    /- partner\.example \(federated\): 1 root\n +CN=partner\.example root CA +sha256 [0-9a-f]{64}/,
  );
  t.match(result.stdout, /result: OK\n$/);
});

t.test("check takes the socket from $SPIFFE_ENDPOINT_SOCKET when the config names none", async (t) => {
  const agent = await WorkloadApiServer.start(path.join(pki.dir, "env-agent.sock"), { svids: [svid] });
  t.teardown(() => agent.stop());
  const file = await writeConfig({ workloadApi: {} });
  const result = await runCli(["check", "-c", file], { env: { SPIFFE_ENDPOINT_SOCKET: agent.socket } });
  t.equal(result.code, 0, result.stdout + result.stderr);
  t.match(result.stdout, `Workload API ${agent.socket}`);
});

t.test("check names a Workload API socket that does not exist, and exits 1", async (t) => {
  const missing = path.join(pki.dir, "nobody-home.sock");
  const file = await writeConfig({ workloadApi: { socket: `unix://${missing}` } });
  const result = await runCli(["check", "-c", file, "--timeout", "2s"]);
  t.equal(result.code, 1, result.stdout);
  t.match(
    result.stdout,
    `PROBLEM workload API: identity.workloadApi.socket: the Workload API at unix://${missing}: no such socket`,
  );
});

t.test("check reports a federated domain the Workload API sent no bundle for", async (t) => {
  const agent = await WorkloadApiServer.start(path.join(pki.dir, "no-federation.sock"), { svids: [svid] });
  t.teardown(() => agent.stop());
  const file = await writeConfig({
    workloadApi: { socket: agent.socket },
    federation: [{ trustDomain: "partner.example" }],
  });
  const result = await runCli(["check", "-c", file]);
  t.equal(result.code, 1, result.stdout);
  t.match(result.stdout, "- partner.example (federated): 0 roots");
  t.match(
    result.stdout,
    "PROBLEM no bundle: the Workload API delivered no federated bundle for partner.example",
  );
});

t.test("check validates the SVID it is handed: a key that does not match is a problem", async (t) => {
  const other = await pki.identity("other");
  const agent = await WorkloadApiServer.start(path.join(pki.dir, "bad-svid.sock"), {
    svids: [{ ...svid, keyPem: other.keyPem }],
  });
  t.teardown(() => agent.stop());
  const result = await runCli(["check", "-c", await writeConfig({ workloadApi: { socket: agent.socket } })]);
  t.equal(result.code, 1, result.stdout);
  t.match(result.stdout, /PROBLEM key mismatch: the private key of the X509-SVID/);
});

t.test("check gives up on a Workload API that sends nothing within --timeout", async (t) => {
  const agent = await WorkloadApiServer.start(path.join(pki.dir, "silent-agent.sock"), { svids: [svid] });
  t.teardown(() => agent.stop());
  agent.silent = true;
  const file = await writeConfig({ workloadApi: { socket: agent.socket } });
  const result = await runCli(["check", "-c", file, "--timeout", "1s"]);
  t.equal(result.code, 1, result.stdout);
  t.match(result.stdout, `the Workload API at ${agent.socket} sent no X509-SVID within 1s`);
});
