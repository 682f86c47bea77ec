// `openssl s_server` as a TLS upstream that is not mtlsd: unlike Node's TLS server, it says why it refuses a client.
import { spawn } from "node:child_process";
import { once } from "node:events";
import net, { type AddressInfo } from "node:net";
import { createInterface } from "node:readline";

export interface OpensslServer {
  /** `127.0.0.1:port`. */
  address: string;
  stop(): Promise<void>;
}

async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/**
 * Serves `certPath` (with its chain) and requires a client certificate that chains to `caPath`. A client whose
 * certificate does not gets the TLS alert OpenSSL picks for the failure (unknown_ca for another CA's), which in
 * TLS 1.3 arrives after the client's side of the handshake is done. `alpn` names the protocol it selects, if any.
 */
export async function startOpensslServer(options: {
  certPath: string;
  keyPath: string;
  caPath: string;
  alpn?: string;
}): Promise<OpensslServer> {
  const port = await freePort();
  const args = [
    "s_server",
    "-accept",
    `127.0.0.1:${port}`,
    "-cert",
    options.certPath,
    "-cert_chain",
    options.certPath,
    "-key",
    options.keyPath,
    "-CAfile",
    options.caPath,
    "-Verify",
    "1",
    "-verify_return_error",
    "-www",
  ];
  if (options.alpn) args.push("-alpn", options.alpn);
  const child = spawn("openssl", args, { stdio: ["ignore", "pipe", "ignore"] });
  const stop = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    child.kill();
    await once(child, "exit");
  };
  const lines = createInterface({ input: child.stdout! });
  try {
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("openssl s_server did not start within 5s")), 5000);
      lines.on("line", (line) => {
        if (line.startsWith("ACCEPT")) {
          clearTimeout(timer);
          resolve();
        }
      });
      child.once("exit", (code) => reject(new Error(`openssl s_server exited with ${code}`)));
    });
  } catch (error) {
    await stop();
    throw error;
  }
  return { address: `127.0.0.1:${port}`, stop };
}
