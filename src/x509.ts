// The one place that loads @peculiar/x509, for the CLI's PKI (issuing, CRLs, `mtlsd certs`, demo) and tests only:
// it needs the reflect-metadata polyfill and a WebCrypto provider first. `mtlsd run` never imports this (with
// its dependencies it costs ~13 MiB of RSS per sidecar); the runtime reads certificates with
// identity/certificate-der.ts, and test/cli-run-modules.test.ts fails if the sidecar loads this again.
import "reflect-metadata";
import { webcrypto } from "node:crypto";
import * as x509 from "@peculiar/x509";

x509.cryptoProvider.set(webcrypto as Crypto);

export { x509 };
