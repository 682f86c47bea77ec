// The gRPC status mtlsd answers for each HTTP status it would have sent, and how its grpc-message is encoded.
import * as grpc from "@grpc/grpc-js";
import t from "tap";
import { encodeGrpcMessage, grpcStatusFor } from "../src/proxy/index.ts";

t.test("every HTTP status the gRPC HTTP-to-gRPC mapping names gets its gRPC status", async (t) => {
  // grpc/grpc doc/http-grpc-status-mapping.md, as DESIGN.md ("Protocols") restates it.
  const mapping: [number, number, string][] = [
    [400, grpc.status.INTERNAL, "INTERNAL"],
    [401, grpc.status.UNAUTHENTICATED, "UNAUTHENTICATED"],
    [403, grpc.status.PERMISSION_DENIED, "PERMISSION_DENIED"],
    [404, grpc.status.UNIMPLEMENTED, "UNIMPLEMENTED"],
    [429, grpc.status.UNAVAILABLE, "UNAVAILABLE"],
    [502, grpc.status.UNAVAILABLE, "UNAVAILABLE"],
    [503, grpc.status.UNAVAILABLE, "UNAVAILABLE"],
    [504, grpc.status.UNAVAILABLE, "UNAVAILABLE"],
  ];
  for (const [http, expected, name] of mapping) {
    t.equal(grpcStatusFor(http), expected, `${http} → ${expected} ${name}`);
  }
});

t.test("every other HTTP status the sidecar makes gets UNKNOWN", async (t) => {
  // Statuses mtlsd answers with itself that the mapping does not name, and a few it never sends.
  for (const http of [200, 405, 408, 413, 431, 499, 500, 501]) {
    t.equal(grpcStatusFor(http), grpc.status.UNKNOWN, `${http} → 2 UNKNOWN`);
  }
});

t.test("a grpc-message of printable ASCII is sent as it is", async (t) => {
  const message = "denied by policy (policy_denied): /pkg.Svc/Method ~!@#$^&*()_+-=[]{};':\",./<>?`|";
  t.equal(encodeGrpcMessage(message), message);
});

t.test("a grpc-message escapes % itself, so a literal %41 is not read as A", async (t) => {
  t.equal(encodeGrpcMessage("100% sure, %41"), "100%25 sure, %2541");
});

t.test("a grpc-message percent-encodes each UTF-8 byte outside printable ASCII, as %XX", async (t) => {
  t.equal(encodeGrpcMessage("é"), "%C3%A9", "two bytes of U+00E9");
  t.equal(encodeGrpcMessage("✓"), "%E2%9C%93", "three bytes of U+2713");
  t.equal(encodeGrpcMessage("🔒"), "%F0%9F%94%92", "four bytes of U+1F512");
  t.equal(encodeGrpcMessage("a\tb\r\nc"), "a%09b%0D%0Ac", "controls, which no header value may carry");
  t.equal(encodeGrpcMessage("\u007f"), "%7F", "DEL is not printable");
  t.equal(encodeGrpcMessage(" "), " ", "space (0x20) is the first unencoded byte");
  t.equal(encodeGrpcMessage("~"), "~", "tilde (0x7E) is the last");
});

t.test("an encoded grpc-message is a valid header value that decodes back to the message", async (t) => {
  const message = "no such order ✓ 100% — naïve 🔒\n(upstream_unreachable)";
  const encoded = encodeGrpcMessage(message);
  t.match(encoded, /^[\x20-\x7e]*$/, "only printable ASCII on the wire");
  t.equal(decodeURIComponent(encoded), message);
});
