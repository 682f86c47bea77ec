// The benchmark's ghostunnel rows run ghostunnel as both sidecars, with the bench certificates and identities.
import t from "tap";
import { ghostunnelArgs } from "../bench/ghostunnel.ts";

const side = {
  listenPort: 1001,
  targetPort: 1002,
  keystore: "/certs/orders.pem",
  cacert: "/certs/bundle.pem",
  peerSpiffeId: "spiffe://example.org/ns/frontend/sa/frontend",
};

t.test("the inbound side is a ghostunnel server that lets in only the frontend's identity", async (t) => {
  t.same(ghostunnelArgs("inbound", side), [
    "server",
    ...["--listen", "127.0.0.1:1001", "--target", "127.0.0.1:1002"],
    ...["--keystore", "/certs/orders.pem", "--cacert", "/certs/bundle.pem", "--quiet=conns"],
    ...["--allow-uri", "spiffe://example.org/ns/frontend/sa/frontend"],
  ]);
});

t.test("the outbound side is a ghostunnel client that verifies the server's identity and name", async (t) => {
  const args = ghostunnelArgs("outbound", {
    ...side,
    peerSpiffeId: "spiffe://example.org/ns/orders/sa/orders",
  });
  t.equal(args[0], "client");
  t.match(
    args.join(" "),
    /--override-server-name localhost --verify-uri spiffe:\/\/example\.org\/ns\/orders\/sa\/orders$/,
  );
  t.notOk(args.includes("--allow-uri"), "access control flags are the server's");
});
