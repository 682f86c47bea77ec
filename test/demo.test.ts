// `mtlsd demo` as a newcomer meets it: the real command end to end, `--keep` with curl, and Ctrl-C mid-tour.
import { access } from "node:fs/promises";
import t from "tap";
import { runCli, spawnCli, waitForExit } from "./helpers/cli.ts";
import { curl } from "./helpers/clients.ts";

const TOUR_BOUND_MS = 45_000;

/** The throwaway directory the transcript names, so a test can check it is gone. */
function demoDir(transcript: string): string {
  const dir = /in (\/\S*mtlsd-demo-[A-Za-z0-9]+)\n/.exec(transcript)?.[1];
  if (!dir) throw new Error(`the transcript names no demo directory:\n${transcript}`);
  return dir;
}

async function exists(file: string): Promise<boolean> {
  return access(file).then(
    () => true,
    () => false,
  );
}

/** Resolves once the child's stdout matches `pattern` (bounded), with the match. */
async function waitForOutput(
  child: ReturnType<typeof spawnCli>,
  pattern: RegExp,
  timeoutMs = TOUR_BOUND_MS,
): Promise<RegExpExecArray> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const match = pattern.exec(child.output());
    if (match) return match;
    if (child.exitCode !== null)
      throw new Error(`demo exited (${child.exitCode}) before printing ${pattern}:\n${child.output()}`);
    if (Date.now() > deadline) throw new Error(`no ${pattern} within ${timeoutMs}ms:\n${child.output()}`);
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

const tour = await runCli(["demo"], { timeoutMs: TOUR_BOUND_MS });
const transcript = tour.stdout;

t.test("the demo runs with no config, exits 0 and writes nothing to stderr", async (t) => {
  t.equal(tour.code, 0, tour.stderr);
  t.equal(tour.stderr, "");
  t.match(transcript, /Done in \d+/);
});

t.test("the transcript shows an allowed call: 200 and the XFCC the orders app received", async (t) => {
  t.match(transcript, /3\. An allowed call: frontend -> orders/);
  t.match(
    transcript,
    /x-forwarded-client-cert: By=spiffe:\/\/example\.org\/ns\/orders\/sa\/orders;Hash=[0-9a-f]{64};Subject="CN=frontend";URI=spiffe:\/\/example\.org\/ns\/frontend\/sa\/frontend\n/,
  );
  t.match(transcript, /x-forwarded-proto: https\n/);
  t.match(transcript, /allowed the\s+request by rule "frontend-manages-orders"/);
  t.match(transcript, /The user got: 200 OK/);
});

t.test(
  "the transcript shows the reporting workload denied with 403 and the rule's name from the log",
  async (t) => {
    t.match(transcript, /<- 403 Forbidden {2}x-mtlsd-reason: policy_denied/);
    t.match(
      transcript,
      /"source_identity":"spiffe:\/\/example\.org\/ns\/reporting\/sa\/reporting".*"rule":"reporting-is-read-only"/,
    );
    t.match(transcript, /Denied by rule "reporting-is-read-only"\./);
    t.match(transcript, /The orders app never saw the request\./);
  },
);

t.test("the transcript counts the TLS handshakes the pooled connection saved", async (t) => {
  const match =
    /(\d+) calls from frontend so far -> the orders sidecar accepted (\d+) TLS connections? from frontend's sidecar\n\s+\((\d+) full handshakes?, (\d+) resumed\) instead of (\d+)/.exec(
      transcript,
    );
  t.ok(match, "the savings line is there");
  const [calls, accepted, full, resumed, insteadOf] = match!.slice(1).map(Number) as [
    number,
    number,
    number,
    number,
    number,
  ];
  t.equal(calls, 51, "one page in step 3 and 50 in step 5");
  t.equal(insteadOf, calls);
  t.equal(full + resumed, accepted);
  t.ok(accepted >= 1 && accepted < calls, `${accepted} TLS connections for ${calls} calls`);
});

t.test("the transcript shows a live rotation with a new serial and no failed call", async (t) => {
  const issued = /serial ([0-9a-f]{12})…, was ([0-9a-f]{12})…\)/.exec(transcript);
  t.ok(issued, "the new and old serials are printed");
  t.not(issued?.[1], issued?.[2]);
  t.match(transcript, new RegExp(`new handshake with the orders sidecar now gets serial ${issued?.[1]}`));
  const calls = /<- (\d+) calls during the rotation, 0 failed/.exec(transcript);
  t.ok(calls, "the rotation ran under load with 0 failed calls");
  t.ok(Number(calls?.[1]) > 0);
});

t.test("the demo removes its temporary directory when it is done", async (t) => {
  t.notOk(await exists(demoDir(transcript)));
});

t.test("the transcript has no colour codes when stdout is not a terminal", async (t) => {
  t.notOk(transcript.includes("\u001b["));
});

t.test(
  "demo --keep prints URLs (admin ones too), serves curl through the printed outbound URL, and exits 0 on SIGTERM",
  async (t) => {
    const child = spawnCli(["demo", "--keep"]);
    t.teardown(() => {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    });
    await waitForOutput(child, /Requests, as the sidecars log them:\n/);
    const dir = demoDir(child.output());
    const url = /as the frontend app +curl (http:\/\/127\.0\.0\.1:\d+\/v1\/orders\/42)\n/.exec(
      child.output(),
    )?.[1];
    t.ok(url, "an outbound URL is printed");
    t.match(
      child.output(),
      /orders' mTLS port +curl --cacert \S+\/bundle\.pem --cert \S+\/frontend\.crt --key \S+\/frontend\.key https:\/\/127\.0\.0\.1:\d+/,
    );
    const status = /orders' sidecar status +curl (http:\/\/127\.0\.0\.1:\d+\/status)\n/.exec(
      child.output(),
    )?.[1];
    t.ok(status, "the orders sidecar's /status URL is printed");
    const document = await curl(["-sS", "--max-time", "5", status!]);
    t.equal(document.code, 0, document.stderr);
    t.match(JSON.parse(document.stdout), {
      identity: "spiffe://example.org/ns/orders/sa/orders",
      draining: false,
    });
    const admins = [
      ...child.output().matchAll(/^ {2}(orders|frontend|reporting) +(http:\/\/127\.0\.0\.1:\d+)$/gm),
    ];
    t.same(
      admins.map((match) => match[1]),
      ["orders", "frontend", "reporting"],
      "each sidecar's admin URL is printed",
    );
    t.equal(new Set(admins.map((match) => match[2])).size, 3, "on a port of its own");
    const reply = await curl(["-sS", "--max-time", "5", url!]);
    t.equal(reply.code, 0, reply.stderr);
    t.match(reply.stdout, /"caller":"spiffe:\/\/example\.org\/ns\/frontend\/sa\/frontend"/);
    await waitForOutput(
      child,
      /orders sidecar, inbound: allow GET \/v1\/orders\/42 from spiffe:\/\/example\.org\/ns\/frontend\/sa\/frontend/,
      5000,
    );
    child.kill("SIGTERM");
    t.equal(await waitForExit(child, "demo --keep", 15_000), 0);
    t.match(child.output(), /SIGTERM: stopping and removing/);
    t.notOk(await exists(dir), "the directory is removed");
  },
);

t.test("Ctrl-C in the middle of the tour stops everything and removes the directory", async (t) => {
  const child = spawnCli(["demo"]);
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  });
  let stderr = "";
  child.stderr!.setEncoding("utf8").on("data", (chunk: string) => {
    stderr += chunk;
  });
  await waitForOutput(child, /1\. A throwaway PKI/);
  const dir = demoDir(child.output());
  child.kill("SIGINT");
  t.equal(await waitForExit(child, "demo", 15_000), 1);
  t.match(stderr, /SIGINT: stopping and removing/);
  t.notOk(await exists(dir), "the directory is removed");
});
