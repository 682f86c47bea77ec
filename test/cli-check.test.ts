// `mtlsd check -c FILE` as on-call meets it: the real CLI, real credentials, each failure named, exit codes 0/1/2.
import { writeFile } from "node:fs/promises";
import path from "node:path";
import t from "tap";
import { stringify } from "yaml";
import { overridesOf } from "../src/cli/check.ts";
import { runCli } from "./helpers/cli.ts";
import { createTestPki, type IdentityFiles, identityConfig } from "./helpers/pki.ts";

const pki = await createTestPki();
t.teardown(() => pki.cleanup());
const other = await createTestPki();
t.teardown(() => other.cleanup());
const orders = await pki.identity("orders");

let configs = 0;
/** Writes a config for `identity` into the PKI directory and returns its path. */
async function writeConfig(identity: IdentityFiles, extra: Record<string, unknown> = {}): Promise<string> {
  const file = path.join(pki.dir, `check-${++configs}.yaml`);
  const config = {
    identity: identityConfig(pki, identity),
    inbound: {
      listen: "127.0.0.1:0",
      policy: {
        rules: [
          {
            name: "frontend-reads-orders",
            action: "allow",
            from: ["spiffe://example.org/ns/frontend/sa/frontend"],
          },
        ],
      },
    },
    ...extra,
  };
  await writeFile(file, stringify(config));
  return file;
}

t.test("a good config prints our identity, its expiry and the trust domain, and exits 0", async (t) => {
  const result = await runCli(["check", "-c", await writeConfig(orders)]);
  t.equal(result.code, 0, result.stdout);
  t.match(result.stdout, /SPIFFE ID +spiffe:\/\/example\.org\/ns\/orders\/sa\/orders\n/);
  t.match(result.stdout, /trust domain +example\.org\n/);
  t.match(result.stdout, /valid +\S+ to \S+ \(expires in (59|58)m/);
  t.match(result.stdout, /chain +leaf \+ CN=example\.org intermediate CA/);
  t.match(result.stdout, /trust bundle +.*bundle\.pem: CN=example\.org root CA \(expires in 364d/);
  t.match(result.stdout, /verdict +ok: key matches, valid X509-SVID in the trust domain, chain verifies/);
  t.match(result.stdout, /policy +default deny, 1 rule, sha256 [0-9a-f]{12}\n/);
  t.match(result.stdout, /overrides +none\n/);
  t.match(result.stdout, /result: OK\n$/);
});

t.test("check names the admin listener, the default one when the config sets none", async (t) => {
  const defaulted = await runCli(["check", "-c", await writeConfig(orders)]);
  t.equal(defaulted.code, 0, defaulted.stdout);
  t.match(defaulted.stdout, /admin\n +listen +127\.0\.0\.1:15000 \(\/healthz \/readyz \/metrics \/status;/);
  const moved = await runCli([
    "check",
    "-c",
    await writeConfig(orders, { admin: { listen: "0.0.0.0:9901" } }),
  ]);
  t.equal(moved.code, 0, moved.stdout);
  t.match(moved.stdout, /listen +0\.0\.0\.0:9901 \(/);
});

t.test("check reads -c from $MTLSD_CONFIG like mtlsd run", async (t) => {
  const result = await runCli(["check"], { env: { MTLSD_CONFIG: await writeConfig(orders) } });
  t.equal(result.code, 0, result.stdout);
});

t.test("check lists the upstreams of an outbound config, with their endpoints", async (t) => {
  const file = await writeConfig(orders, {
    inbound: undefined,
    outbound: {
      listen: "127.0.0.1:0",
      upstreams: {
        payments: {
          address: "payments.internal:15006",
          identity: "spiffe://example.org/ns/payments/sa/payments",
        },
        ledger: {
          address: "ledger.internal:15006",
          identity: "spiffe://example.org/ns/ledger/sa/ledger",
          listen: "127.0.0.1:15102",
        },
        books: {
          endpoints: ["10.0.1.11:15006", "10.0.1.12:15006"],
          identity: "spiffe://example.org/ns/ledger/sa/ledger",
        },
      },
    },
  });
  const result = await runCli(["check", "-c", file]);
  t.equal(result.code, 0, result.stdout);
  t.match(
    result.stdout,
    /- payments: payments\.internal:15006 must present spiffe:\/\/example\.org\/ns\/payments\/sa\/payments\n/,
  );
  t.match(
    result.stdout,
    /- ledger: ledger\.internal:15006 must present spiffe:\/\/example\.org\/ns\/ledger\/sa\/ledger; the app may also call 127\.0\.0\.1:15102 \(plain HTTP, no Host needed\)/,
    "a per-upstream listen port is listed with its upstream",
  );
  t.match(
    result.stdout,
    /- books: 10\.0\.1\.11:15006, 10\.0\.1\.12:15006 must present spiffe:\/\/example\.org\/ns\/ledger\/sa\/ledger/,
  );
});

t.test("an expired certificate exits 1 and is named expired", async (t) => {
  const notAfter = new Date(Date.now() - 2 * 3_600_000);
  const expired = await pki.identity("expired", {
    notBefore: new Date(notAfter.getTime() - 3_600_000),
    notAfter,
  });
  const result = await runCli(["check", "-c", await writeConfig(expired)]);
  t.equal(result.code, 1);
  t.match(result.stdout, /valid +.*\(EXPIRED 2h(?: \d+s)? ago\)/);
  t.match(result.stdout, /verdict +FAILED: expired/);
  t.match(result.stdout, /PROBLEM expired: identity\.cert \(.*expired\.crt\) expired at/);
  t.match(result.stdout, /result: 1 problem \(expired\)/);
});

t.test("a certificate that starts in the future is named clock skew, with the size of the gap", async (t) => {
  const notBefore = new Date(Date.now() + 2 * 3_600_000);
  const early = await pki.identity("early", { notBefore, ttlMs: 3_600_000 });
  const result = await runCli(["check", "-c", await writeConfig(early)]);
  t.equal(result.code, 1);
  t.match(result.stdout, /PROBLEM not yet valid \(clock skew\): .*it starts in (1h 59m|2h)/);
});

t.test("a certificate outside the trust domain is named wrong trust domain", async (t) => {
  const stranger = await pki.identity("stranger", { spiffeId: "spiffe://other.org/ns/orders/sa/orders" });
  const result = await runCli(["check", "-c", await writeConfig(stranger)]);
  t.equal(result.code, 1);
  t.match(result.stdout, /SPIFFE ID +spiffe:\/\/other\.org\/ns\/orders\/sa\/orders\n/);
  t.match(
    result.stdout,
    /PROBLEM wrong trust domain: .*is in trust domain other\.org, expected example\.org/,
  );
});

t.test("a certificate from a CA outside the bundle is named unknown CA", async (t) => {
  const foreign = await other.identity("orders");
  const result = await runCli(["check", "-c", await writeConfig(foreign)]);
  t.equal(result.code, 1);
  t.match(
    result.stdout,
    /PROBLEM unknown CA: identity\.cert .* does not verify against identity\.trustBundle/,
  );
});

t.test("a leaf that is not an X509-SVID is named bad SVID", async (t) => {
  const twoIds = await pki.identity("two-ids", { extraUris: ["spiffe://example.org/ns/other/sa/other"] });
  const result = await runCli(["check", "-c", await writeConfig(twoIds)]);
  t.equal(result.code, 1);
  t.match(result.stdout, /PROBLEM bad SVID: .*has 2 URI SANs/);
});

t.test("a key that belongs to another certificate is named key mismatch", async (t) => {
  const frontend = await pki.identity("frontend");
  const result = await runCli(["check", "-c", await writeConfig({ ...orders, keyPath: frontend.keyPath })]);
  t.equal(result.code, 1);
  t.match(result.stdout, /PROBLEM key mismatch: identity\.key/);
});

t.test("a missing credential file exits 1 and names the file", async (t) => {
  const result = await runCli([
    "check",
    "-c",
    await writeConfig({ ...orders, certPath: path.join(pki.dir, "gone.crt") }),
  ]);
  t.equal(result.code, 1);
  t.match(result.stdout, /PROBLEM unreadable: identity\.cert \(.*gone\.crt\): cannot read: no such file/);
});

t.test("a certificate with less than a third of its life left passes with a renewal warning", async (t) => {
  const late = await pki.identity("late", {
    notBefore: new Date(Date.now() - 50 * 60_000),
    ttlMs: 60 * 60_000,
  });
  const result = await runCli(["check", "-c", await writeConfig(late)]);
  t.equal(result.code, 0, result.stdout);
  t.match(
    result.stdout,
    /warning: identity\.cert .* expires in (9|10)m.*less than a third of its lifetime left/,
  );
});

t.test("an invalid config exits 2 with the field, as mtlsd run does", async (t) => {
  const file = await writeConfig(orders, { inbound: { listen: "127.0.0.1:0", mode: "lenient" } });
  const result = await runCli(["check", "-c", file]);
  t.equal(result.code, 2);
  t.match(result.stderr, /invalid configuration.*\n.*inbound\.mode/);
  t.equal(result.stdout, "");
});

t.test("a missing config file exits 2", async (t) => {
  const result = await runCli(["check", "-c", path.join(pki.dir, "nope.yaml")]);
  t.equal(result.code, 2);
  t.match(result.stderr, /nope\.yaml: cannot read the config file: no such file/);
});

t.test("bad arguments exit 2", async (t) => {
  const file = await writeConfig(orders);
  const cases: [string[], RegExp][] = [
    [["check", "-c", file, "--method", "POST"], /--method and --path ask about a request from the --peer/],
    [["check", "-c", file, "--peer", "orders"], /--peer "orders": expected HOST:PORT/],
    [["check", "-c", file, "--peer", "127.0.0.1:1", "--timeout", "soon"], /--timeout "soon"/],
    [["check", "-c", file, "--peer", "127.0.0.1:1", "--method", "get"], /--method "get"/],
    [["check", "-c", file, "--verbose"], /Unknown option '--verbose'/],
  ];
  // Each case is its own process and none writes anything, so they run side by side.
  const results = await Promise.all(cases.map(([args]) => runCli(args)));
  for (const [i, [args, message]] of cases.entries()) {
    t.equal(results[i]!.code, 2, args.join(" "));
    t.match(results[i]!.stderr, message, args.join(" "));
  }
});

t.test(
  "break-glass overrides are read from inbound.policy, and anything malformed in them is skipped",
  async (t) => {
    // This branch's config schema has no `overrides` yet, so the reader is tested directly on what it may get.
    const expires = new Date("2026-11-24T18:00:00Z");
    const policy = {
      default: "deny",
      rules: [],
      overrides: [
        {
          from: ["spiffe://example.org/ns/ops/sa/oncall"],
          reason: "INC-1234",
          approvedBy: "alice@example.org",
          expires,
        },
        { from: ["*"], reason: "as text", approvedBy: "bob@example.org", expires: "2026-11-25T00:00:00Z" },
        { reason: "no approver", expires },
        "not an override",
        { from: ["*"], reason: "bad date", approvedBy: "carol@example.org", expires: "someday" },
      ],
    };
    t.same(overridesOf(policy), [
      {
        reason: "INC-1234",
        approvedBy: "alice@example.org",
        expires,
        from: ["spiffe://example.org/ns/ops/sa/oncall"],
      },
      {
        reason: "as text",
        approvedBy: "bob@example.org",
        expires: new Date("2026-11-25T00:00:00Z"),
        from: ["*"],
      },
    ]);
    t.same(overridesOf({ default: "deny", rules: [] }), [], "a policy without the key has none");
  },
);
