// The `workers` key: a count or `auto`, 1 by default, a bad value named with its field.
import { availableParallelism } from "node:os";
import t from "tap";
import { ConfigError, parseConfig } from "../src/config/index.ts";

const FILE = "/etc/mtlsd/mtlsd.yaml";
const BASE = `identity:
  cert: /etc/mtlsd/tls.crt
  key: /etc/mtlsd/tls.key
  trustBundle: /etc/mtlsd/ca.crt
  trustDomain: example.org
inbound: { app: "http://127.0.0.1:8080" }
`;

function problemsOf(text: string): string {
  try {
    parseConfig(text, FILE);
  } catch (error) {
    if (error instanceof ConfigError) return error.message;
    throw error;
  }
  throw new Error("expected a ConfigError");
}

t.test("workers defaults to 1: one process, no cluster", async (t) => {
  t.equal(parseConfig(BASE, FILE).config.workers, 1);
});

t.test("workers takes a count", async (t) => {
  t.equal(parseConfig(`${BASE}workers: 4\n`, FILE).config.workers, 4);
});

t.test("workers: auto is one per available core", async (t) => {
  t.equal(parseConfig(`${BASE}workers: auto\n`, FILE).config.workers, availableParallelism());
});

t.test("workers: 0 is refused, naming the field and the accepted values", async (t) => {
  const message = problemsOf(`${BASE}workers: 0\n`);
  t.match(message, "workers");
  t.match(message, "an integer from 1 to 256, or auto");
  t.match(message, "0");
});

t.test("workers given as a word other than auto is refused", async (t) => {
  const message = problemsOf(`${BASE}workers: all\n`);
  t.match(message, "an integer from 1 to 256, or auto");
  t.match(message, '"all"');
});
