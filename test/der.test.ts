// Concatenated DER, as the Workload API sends chains and bundles: split whole, refused when it is not DER.
import { X509Certificate } from "node:crypto";
import t from "tap";
import { derToPem, splitDer } from "../src/credentials/index.ts";
import { createTestPki } from "./helpers/pki.ts";

const pki = await createTestPki();
t.teardown(() => pki.cleanup());
const root = new X509Certificate(pki.bundlePem).raw;
const intermediate = new X509Certificate(pki.intermediate.certPem).raw;

t.test("concatenated certificates split into each one, and back into PEM", async (t) => {
  const items = splitDer(Buffer.concat([root, intermediate]), "the bundle");
  t.equal(items.length, 2);
  t.same(Buffer.from(items[1]!), intermediate);
  const pem = derToPem("CERTIFICATE", items);
  t.equal(new X509Certificate(pem).fingerprint256, new X509Certificate(root).fingerprint256);
  t.match(pem, /^-----BEGIN CERTIFICATE-----\n[A-Za-z0-9+/=\n]+-----END CERTIFICATE-----\n-----BEGIN/);
  t.same(splitDer(new Uint8Array(0), "nothing"), [], "nothing is no certificates");
});

t.test("bytes that are not whole DER structures are refused, naming what they were", async (t) => {
  const cases: [string, Uint8Array, RegExp][] = [
    ["a PEM text", Buffer.from(pki.bundlePem), /no SEQUENCE at byte 0/],
    ["a cut certificate", root.subarray(0, root.length - 10), /truncated at byte 0/],
    ["a length of five bytes", Buffer.from([0x30, 0x85, 1, 2, 3, 4, 5]), /bad length at byte 0/],
    ["a lone tag", Buffer.from([0x30]), /no SEQUENCE at byte 0/],
    [
      "trailing garbage",
      Buffer.concat([root, Buffer.from([0x01])]),
      new RegExp(`no SEQUENCE at byte ${root.length}`),
    ],
  ];
  for (const [what, bytes, message] of cases) {
    t.throws(() => splitDer(bytes, "the federated bundle"), { code: "CERT_PARSE", message }, what);
  }
});
