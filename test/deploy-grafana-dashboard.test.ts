// The Grafana dashboard shipped in deploy/grafana, against a real Prometheus scraping two real sidecars that carry
// allowed, denied, shadow-denied, break-glass, plaintext, gRPC and failing traffic: every variable and every
// panel's query parses and returns data. The same Prometheus evaluates the shipped alerting rules.
import { readFileSync } from "node:fs";
import http from "node:http";
import path from "node:path";
import t from "tap";
import { RULES_FILE } from "../scripts/write-prometheus-rule.ts";
import { startApp } from "./helpers/app.ts";
import { mtlsClient } from "./helpers/clients.ts";
import { ROOT } from "./helpers/docs.ts";
import { echoClient, unary } from "./helpers/grpc.ts";
import { createTestPki, type IdentityFiles } from "./helpers/pki.ts";
import { type PrometheusServer, startPrometheus } from "./helpers/prometheus-server.ts";
import { startSidecar } from "./helpers/sidecar.ts";

interface Target {
  refId: string;
  expr: string;
  datasource: { type: string; uid: string };
}
interface Panel {
  id: number;
  type: string;
  title: string;
  gridPos: { h: number; w: number; x: number; y: number };
  datasource?: { type: string; uid: string };
  targets?: Target[];
}
interface Variable {
  name: string;
  type: string;
  query: string | { query: string };
  includeAll?: boolean;
  multi?: boolean;
}
interface Dashboard {
  uid: string;
  title: string;
  schemaVersion: number;
  templating: { list: Variable[] };
  panels: Panel[];
}

// Prometheus scrapes its first target up to 5 s after it starts, then a few seconds of traffic and scrapes: well
// within tap's 30 s on an idle machine, but not on a CI machine running the other test files beside it.
t.setTimeout(90_000);

const dashboard = JSON.parse(
  readFileSync(path.join(ROOT, "deploy/grafana/mtlsd-dashboard.json"), "utf8"),
) as Dashboard;
const queryPanels = dashboard.panels.filter((panel) => panel.type !== "row");
/** Grafana's reference to the data source variable, in every target. */
const DATASOURCE = "$" + "{datasource}";

t.test(
  "the dashboard is a current Grafana dashboard with job, identity and instance variables",
  async (t) => {
    t.equal(dashboard.uid, "mtlsd");
    t.ok(dashboard.schemaVersion >= 41, `schemaVersion ${dashboard.schemaVersion}`);
    const variables = Object.fromEntries(
      dashboard.templating.list.map((variable) => [variable.name, variable]),
    );
    t.equal(variables.datasource?.type, "datasource", "the Prometheus data source is chosen on import");
    for (const name of ["job", "identity", "instance"]) {
      t.equal(variables[name]?.type, "query", `${name} is a query variable`);
      t.ok(variables[name]?.multi && variables[name]?.includeAll, `${name} takes several values, or all`);
    }
    const ids = dashboard.panels.map((panel) => panel.id);
    t.equal(new Set(ids).size, ids.length, "panel ids are unique");
    for (const panel of dashboard.panels) {
      t.ok(panel.gridPos.x + panel.gridPos.w <= 24, `${panel.title} fits the 24-column grid`);
    }
    const rows = dashboard.panels.filter((panel) => panel.type === "row").map((panel) => panel.title);
    t.same(rows, ["Overview", "Rollout", "Traffic", "Credentials", "Upstreams"]);
    for (const panel of queryPanels) {
      t.ok(panel.targets && panel.targets.length > 0, `${panel.title} has a query`);
      for (const target of panel.targets ?? []) {
        t.same(target.datasource, { type: "prometheus", uid: DATASOURCE }, `${panel.title} asks $datasource`);
        t.match(target.expr, /job=~"\$job", instance=~"\$instance"/, `${panel.title} follows the variables`);
      }
    }
  },
);

/** Grafana's rendering of a multi-value variable for a Prometheus regex: each value escaped, joined by `|`. */
function regexOf(values: readonly string[]): string {
  const escaped = values.map((value) => value.replace(/[\\^$*+?.()|{}[\]]/g, (char) => `\\\\${char}`));
  return escaped.length === 1 ? escaped[0]! : `(${escaped.join("|")})`;
}

/** A query as Grafana sends it: variables replaced by their values, ranges by what the time picker gives. */
function render(expr: string, variables: Record<string, readonly string[]>): string {
  return expr
    .replaceAll("$__rate_interval", "1m")
    .replaceAll("$__range", "1h")
    .replace(/\$(\w+)/g, (whole, name: string) => {
      const values = variables[name];
      return values ? regexOf(values) : whole;
    });
}

/** `label_values(SELECTOR, LABEL)`, the form every variable of the dashboard uses. */
function labelValuesQuery(variable: Variable): { selector: string; label: string } {
  const text = typeof variable.query === "string" ? variable.query : variable.query.query;
  const match = /^label_values\((.+),\s*(\w+)\)$/.exec(text);
  if (!match) throw new Error(`variable ${variable.name}: not a label_values() query: ${text}`);
  return { selector: match[1]!, label: match[2]! };
}

t.test(
  "against a real Prometheus scraping two sidecars, every variable and panel query returns data",
  async (t) => {
    const pki = await createTestPki();
    t.teardown(() => pki.cleanup());
    const app = await startApp();
    t.teardown(() => app.stop());
    const [orders, frontend, reporting] = await Promise.all(
      ["orders", "frontend", "reporting"].map((name) => pki.identity(name)),
    );
    const stranger = await (await createTestPki()).identity("stranger");

    const ordersSidecar = await startSidecar(pki, orders!, {
      inbound: {
        listen: "127.0.0.1:0",
        app: app.url,
        mode: "permissive",
        policy: {
          default: "deny",
          rules: [
            { name: "no-admin", action: "deny", from: ["*"], to: [{ paths: ["/admin/*"] }] },
            {
              name: "frontend-reads",
              action: "allow",
              from: [frontend!.spiffeId],
              to: [{ methods: ["GET"] }],
            },
            {
              name: "would-deny-reports",
              action: "deny",
              from: ["*"],
              to: [{ paths: ["/reports"] }],
              dryRun: true,
            },
          ],
          overrides: [
            {
              from: [reporting!.spiffeId],
              to: [{ paths: ["/refunds/*"] }],
              reason: "INC-1234 refunds stuck",
              approvedBy: "alice@example.org",
              expires: new Date(Date.now() + 3_600_000).toISOString(),
            },
          ],
        },
      },
    });
    t.teardown(() => ordersSidecar.stop());
    const frontendSidecar = await startSidecar(pki, frontend!, {
      outbound: {
        listen: "127.0.0.1:0",
        upstreams: {
          orders: {
            address: `127.0.0.1:${ordersSidecar.inboundPort}`,
            identity: orders!.spiffeId,
            listen: "127.0.0.1:0",
          },
        },
      },
    });
    t.teardown(() => frontendSidecar.stop());
    const outboundPort = frontendSidecar.sidecar.addresses().outbound!.port;
    const ordersPort = frontendSidecar.sidecar.addresses().upstreams!.orders!.port;
    const admins = [ordersSidecar, frontendSidecar].map((running) => running.adminUrl.replace("http://", ""));

    const prometheus: PrometheusServer = await startPrometheus({
      targets: admins,
      job: "mtlsd",
      ruleFiles: [RULES_FILE.pathname],
    });
    t.teardown(() => prometheus.stop());

    const grpcClient = echoClient(`127.0.0.1:${ordersPort}`);
    t.teardown(() => grpcClient.close());
    const direct = (who: IdentityFiles) =>
      mtlsClient(`https://localhost:${ordersSidecar.inboundPort}`, {
        ca: pki.bundlePem,
        cert: who.chainPem,
        key: who.keyPem,
      });

    /** One round of every kind of traffic the panels show; each call's outcome is checked, so none is vacuous. */
    async function round(): Promise<void> {
      t.equal(await plainRequest(outboundPort, "orders", "GET", "/v1/orders"), 200, "allowed");
      t.equal(await plainRequest(outboundPort, "orders", "GET", "/reports"), 200, "allowed, shadow-denied");
      t.equal(await plainRequest(outboundPort, "orders", "GET", "/admin/users"), 403, "denied by a rule");
      t.equal(await plainRequest(outboundPort, "orders", "POST", "/v1/orders"), 403, "denied by the default");
      t.equal(await plainRequest(outboundPort, "nowhere", "GET", "/"), 502, "an unknown upstream");
      t.equal(
        await plainRequest(ordersSidecar.inboundPort, "orders", "GET", "/v1/orders"),
        403,
        "plaintext, served as unauthenticated in permissive mode",
      );
      const call = await unary(grpcClient.Unary, grpcClient, { text: "hello" });
      t.equal(call.error?.code, 7, "a gRPC call denied: PERMISSION_DENIED");
      const breakGlass = direct(reporting!);
      try {
        const response = await breakGlass.client.request({ path: "/refunds/7", method: "POST" });
        await response.body.text();
        t.equal(response.statusCode, 200, "let through by a break-glass override");
      } finally {
        await breakGlass.close();
      }
      const refused = direct(stranger);
      await refused.client
        .request({ path: "/", method: "GET" })
        .then((response) => response.body.text())
        .catch(() => undefined);
      await refused.close();
    }

    // A few seconds of traffic, scraped every second: each counter has samples before and after it moves.
    for (let index = 0; index < 5; index++) {
      await round();
      await new Promise((resolve) => setTimeout(resolve, 700));
    }

    // The variables, as Grafana resolves them in order, each from the values chosen before it (all of them).
    const chosen: Record<string, string[]> = {};
    for (const variable of dashboard.templating.list.filter((variable) => variable.type === "query")) {
      const { selector, label } = labelValuesQuery(variable);
      const values = await prometheus.labelValues(label, render(selector, chosen));
      chosen[variable.name] = values;
    }
    t.same(chosen.job, ["mtlsd"], "job offers the scrape job");
    t.same(
      chosen.identity,
      [frontend!.spiffeId, orders!.spiffeId].sort(),
      "identity offers both sidecars' identities",
    );
    t.same(chosen.instance, [...admins].sort(), "instance offers both sidecars");

    const queries = queryPanels.flatMap((panel) =>
      (panel.targets ?? []).map((target) => ({ panel: panel.title, expr: render(target.expr, chosen) })),
    );
    let empty: string[] = [];
    const deadline = Date.now() + 20_000;
    do {
      empty = [];
      for (const { panel, expr } of queries) {
        const answer = await prometheus.query(expr);
        if (answer.status === "error") {
          t.fail(`${panel}: Prometheus refused the query (${answer.errorType}: ${answer.error}): ${expr}`);
          return;
        }
        if (answer.data.result.length === 0) empty.push(`${panel}: ${expr}`);
      }
      if (empty.length > 0) await new Promise((resolve) => setTimeout(resolve, 1000));
    } while (empty.length > 0 && Date.now() < deadline);
    t.same(empty, [], `all ${queries.length} queries of ${queryPanels.length} panels return data`);

    // The shipped rules evaluate against the real series, and the traffic above sets off the rollout alerts.
    let rules = await prometheus.rules();
    for (const until = Date.now() + 10_000; Date.now() < until; ) {
      rules = await prometheus.rules();
      const active = new Set(
        rules.filter((rule) => rule.state && rule.state !== "inactive").map((rule) => rule.name),
      );
      if (
        ["MtlsdShadowDenialsPresent", "MtlsdBreakGlassOverrideInUse", "MtlsdPlaintextRequests"].every(
          (name) => active.has(name),
        )
      )
        break;
      await new Promise((resolve) => setTimeout(resolve, 500));
    }
    for (const rule of rules)
      t.equal(rule.health, "ok", `${rule.name} evaluates${rule.lastError ? `: ${rule.lastError}` : ""}`);
    const state = (name: string) => rules.find((rule) => rule.name === name)?.state;
    t.equal(state("MtlsdShadowDenialsPresent"), "firing", "a dry-run deny rule matched");
    t.equal(state("MtlsdBreakGlassOverrideInUse"), "firing", "an override let requests through");
    t.equal(
      state("MtlsdPlaintextRequests"),
      "pending",
      "plaintext arrives (pending: it alerts after 30 minutes)",
    );
    t.equal(state("MtlsdCertificateExpiring"), "inactive", "fresh certificates");
    t.equal(state("MtlsdSidecarDown"), "inactive");
  },
);

/** A plain HTTP request, as an app makes it, naming the upstream in Host. */
function plainRequest(port: number, host: string, method: string, requestPath: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const request = http.request({
      host: "127.0.0.1",
      port,
      method,
      path: requestPath,
      headers: { host },
      timeout: 10_000,
    });
    request.on("response", (response) => {
      response.resume();
      response.on("end", () => resolve(response.statusCode!));
    });
    request.on("timeout", () => request.destroy(new Error("no response in 10 s")));
    request.on("error", reject);
    request.end();
  });
}
