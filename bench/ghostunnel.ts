// ghostunnel's command line for each side of the two-hop path (server: mTLS in, plain to the app; client: the reverse).
//
// ghostunnel (Go, L4) is the closest peer and the one that shows what a compiled byte relay does on the same
// machine. It is not in Debian and cannot be built here (no Go module proxy), so the benchmark runs it only
// from a binary given in GHOSTUNNEL. Flags as in ghostunnel's main.go: `--keystore` takes the combined PEM
// (chain and key), an access-control flag is required in server mode, and `--quiet=conns` keeps a log line
// per connection off, as mtlsd's rows run with request logs off.

export interface GhostunnelSide {
  listenPort: number;
  targetPort: number;
  /** Combined PEM: certificate chain, then key. */
  keystore: string;
  cacert: string;
  /** Server: the client identity let in. Client: the server identity required. */
  peerSpiffeId: string;
}

export function ghostunnelArgs(side: "inbound" | "outbound", options: GhostunnelSide): string[] {
  const common = [
    "--listen",
    `127.0.0.1:${options.listenPort}`,
    "--target",
    `127.0.0.1:${options.targetPort}`,
    "--keystore",
    options.keystore,
    "--cacert",
    options.cacert,
    "--quiet=conns",
  ];
  if (side === "inbound") return ["server", ...common, "--allow-uri", options.peerSpiffeId];
  // The bench certificates name localhost; the target is an address, so say which name to verify.
  return ["client", ...common, "--override-server-name", "localhost", "--verify-uri", options.peerSpiffeId];
}
