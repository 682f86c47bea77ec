// The runtime's ceiling: a minimal Node TLS byte relay, one side of the two-hop path, with no HTTP at all.
//
// `relay.ts inbound`: an mTLS server (client certificate required, checked against the bench CA) that pipes
// each connection to a fresh plain connection to the app. `relay.ts outbound`: a plain server that pipes each
// connection to a fresh mTLS connection to the inbound relay, presenting the client certificate. Same Node
// binary as mtlsd, no parsing, no policy, no logs: what is left is the socket, TLS and stream cost per byte,
// which is the least any Node sidecar doing this job pays.
//
//   node bench/relay.ts inbound|outbound --listen PORT --target PORT --cert F --key F --ca F
import { readFileSync } from "node:fs";
import net from "node:net";
import tls from "node:tls";
import { parseArgs } from "node:util";

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    listen: { type: "string" },
    target: { type: "string" },
    cert: { type: "string" },
    key: { type: "string" },
    ca: { type: "string" },
  },
});
const side = positionals[0];
const { listen, target, cert, key, ca } = values;
if ((side !== "inbound" && side !== "outbound") || !listen || !target || !cert || !key || !ca) {
  process.stderr.write(
    "usage: relay.ts inbound|outbound --listen PORT --target PORT --cert F --key F --ca F\n",
  );
  process.exit(2);
}

/** Either side failing ends both: a relay has nothing to retry. */
function splice(a: net.Socket, b: net.Socket): void {
  const end = () => {
    a.destroy();
    b.destroy();
  };
  a.on("error", end).on("close", end);
  b.on("error", end).on("close", end);
  a.pipe(b).pipe(a);
}

// Built once, as any sidecar should (a context per connection costs more than a request); the server builds
// its own once from the same options.
const credentials = { cert: readFileSync(cert), key: readFileSync(key), ca: readFileSync(ca) };
const context = tls.createSecureContext(credentials);
const address = { host: "127.0.0.1", port: Number(target) };

const server =
  side === "inbound"
    ? tls.createServer(
        { ...credentials, requestCert: true, rejectUnauthorized: true, noDelay: true },
        (client) => splice(client, net.connect({ ...address, noDelay: true })),
      )
    : net.createServer({ noDelay: true }, (client) => {
        const upstream = tls.connect({ ...address, secureContext: context, servername: "localhost" });
        splice(client, upstream.setNoDelay(true));
      });
// A peer that fails its handshake (or a port probe that hangs up) is its own problem, not the relay's.
server.on("tlsClientError", () => undefined);
server.listen(Number(listen), "127.0.0.1");
