// The endpoint keys of an upstream: where its instances are, how requests are balanced, ejected and retried.
import t from "tap";
import { ConfigError, parseConfig } from "../src/config/index.ts";

const FILE = "/etc/mtlsd/mtlsd.yaml";
const HEAD = `identity:
  cert: tls.crt
  key: tls.key
  trustBundle: ca.crt
  trustDomain: example.org
outbound:
  upstreams:
    orders:
      identity: spiffe://example.org/ns/orders/sa/orders
`;
/** The line of the first key written after HEAD. */
const NEXT_LINE = 10;

function issuesOf(text: string): ConfigError["issues"] {
  try {
    parseConfig(text, FILE);
  } catch (error) {
    if (error instanceof ConfigError) return error.issues;
    throw error;
  }
  throw new Error("the config was accepted");
}

t.test("an upstream's endpoint keys take their defaults", async (t) => {
  const { config } = parseConfig(`${HEAD}      address: orders.internal:15006\n`, FILE);
  t.match(config.outbound!.upstreams.orders, {
    address: "orders.internal:15006",
    resolveInterval: 30_000,
    balance: "least_request",
    outlier: { consecutiveFailures: 5, ejectFor: 30_000, maxEjectFor: 300_000 },
    retries: 0,
  });
  t.equal(config.outbound!.upstreams.orders!.endpoints, undefined);
});

t.test("an explicit endpoints list is taken as given", async (t) => {
  const { config } = parseConfig(
    `${HEAD}      endpoints: [10.0.0.1:15006, "[fd00::2]:15006", orders-3.internal:15006]\n      balance: round_robin\n      retries: 2\n`,
    FILE,
  );
  t.same(config.outbound!.upstreams.orders!.endpoints, [
    "10.0.0.1:15006",
    "[fd00::2]:15006",
    "orders-3.internal:15006",
  ]);
  t.equal(config.outbound!.upstreams.orders!.balance, "round_robin");
  t.equal(config.outbound!.upstreams.orders!.retries, 2);
});

t.test("an empty endpoints list is refused: an upstream needs somewhere to send", async (t) => {
  const [issue] = issuesOf(`${HEAD}      endpoints: []\n`);
  t.match(issue, {
    path: "outbound.upstreams.orders.endpoints",
    line: NEXT_LINE,
    expected: "a list of at least 1",
    found: "a list of 0",
  });
});

t.test("an upstream with both address and endpoints is refused, naming both", async (t) => {
  const issues = issuesOf(`${HEAD}      address: orders.internal:15006\n      endpoints: [10.0.0.1:15006]\n`);
  t.match(issues, [
    {
      path: "outbound.upstreams.orders.endpoints",
      line: NEXT_LINE + 1,
      expected: "either outbound.upstreams.orders.address or outbound.upstreams.orders.endpoints, not both",
      found: "both",
    },
  ]);
});

t.test("an upstream with neither address nor endpoints says what it needs", async (t) => {
  const [issue] = issuesOf(HEAD);
  t.match(issue, {
    path: "outbound.upstreams.orders.address",
    expected: /address \(host:port; a DNS name stands for all its records\) or endpoints/,
    found: "neither address nor endpoints",
  });
});

t.test("an endpoint listed twice is refused at the second, naming the first", async (t) => {
  const [issue] = issuesOf(
    `${HEAD}      endpoints:\n        - 10.0.0.1:15006\n        - 10.0.0.2:15006\n        - 10.0.0.1:15006\n`,
  );
  t.match(issue, {
    path: "outbound.upstreams.orders.endpoints[2]",
    line: NEXT_LINE + 3,
    expected: /each endpoint once/,
    found: '"10.0.0.1:15006", already outbound.upstreams.orders.endpoints[0]',
  });
});

t.test("an endpoint that is not host:port is refused at its place in the list", async (t) => {
  const [issue] = issuesOf(`${HEAD}      endpoints: [10.0.0.1:15006, orders-2.internal]\n`);
  t.match(issue, {
    path: "outbound.upstreams.orders.endpoints[1]",
    expected: /host:port/,
    found: '"orders-2.internal" (not host:port)',
  });
});

t.test("an unknown balance is refused with the ones there are", async (t) => {
  const [issue] = issuesOf(`${HEAD}      address: orders.internal:15006\n      balance: random\n`);
  t.match(issue, {
    path: "outbound.upstreams.orders.balance",
    line: NEXT_LINE + 1,
    expected: "one of least_request | round_robin",
    found: '"random"',
  });
});

t.test("a maxEjectFor shorter than ejectFor is refused: it caps the doubling", async (t) => {
  const [issue] = issuesOf(
    `${HEAD}      address: orders.internal:15006\n      outlier: { ejectFor: 1m, maxEjectFor: 30s }\n`,
  );
  t.match(issue, {
    path: "outbound.upstreams.orders.outlier.maxEjectFor",
    expected: "at least outlier.ejectFor (1m): it caps the doubling ejection time",
    found: "30s",
  });
});

t.test("retries beyond 5 and a zero consecutiveFailures are refused", async (t) => {
  const issues = issuesOf(
    `${HEAD}      address: orders.internal:15006\n      retries: 9\n      outlier: { consecutiveFailures: 0 }\n`,
  );
  t.match(
    issues.map((issue) => [issue.path, issue.expected]),
    [
      ["outbound.upstreams.orders.outlier.consecutiveFailures", "an integer from 1 to 1000"],
      ["outbound.upstreams.orders.retries", "an integer from 0 to 5"],
    ],
  );
});

t.test("a resolveInterval below 100ms is refused", async (t) => {
  const [issue] = issuesOf(`${HEAD}      address: orders.internal:15006\n      resolveInterval: 10ms\n`);
  t.match(issue, { path: "outbound.upstreams.orders.resolveInterval", found: "10ms" });
});
