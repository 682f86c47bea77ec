// How an upstream's DNS names become addresses: the system's resolver, or DNS servers named for mtlsd alone.
import dns from "node:dns";
import net from "node:net";

/** Every address a host name stands for now (IPv4 and IPv6); rejects when there is none or the lookup failed. */
export type ResolveHost = (hostname: string) => Promise<string[]>;

/**
 * getaddrinfo, as every other program on the host resolves names: /etc/hosts, nsswitch, search domains. Every
 * address it returns (A and AAAA records alike) is an endpoint.
 */
export function systemResolver(): ResolveHost {
  return async (hostname) => {
    const found = await dns.promises.lookup(hostname, { all: true, order: "verbatim" });
    return found.map(({ address }) => address);
  };
}

/**
 * Asks `servers` (`IP` or `IP:port`, as `dns.setServers` takes them) for the A and AAAA records directly,
 * bypassing /etc/hosts: for a service registry's DNS interface (Consul answers on 127.0.0.1:8600) that the host's
 * resolver does not forward to. Either family may be missing; both missing is a failure.
 */
export function dnsServerResolver(servers: readonly string[], timeoutMs: number): ResolveHost {
  const resolver = new dns.promises.Resolver({ timeout: timeoutMs, tries: 2 });
  resolver.setServers([...servers]);
  return async (hostname) => {
    const [v4, v6] = await Promise.allSettled([resolver.resolve4(hostname), resolver.resolve6(hostname)]);
    const addresses = [
      ...(v4.status === "fulfilled" ? v4.value : []),
      ...(v6.status === "fulfilled" ? v6.value : []),
    ];
    if (addresses.length > 0) return addresses;
    // The A lookup's error says more (NXDOMAIN as ENOTFOUND) than the AAAA one's usual ENODATA.
    throw v4.status === "rejected" ? v4.reason : (v6 as PromiseRejectedResult).reason;
  };
}

/** `$MTLSD_DNS_SERVERS`: comma-separated `IP` or `IP:port`; an error names the entry that is neither. */
export function parseDnsServers(text: string): { servers: string[] } | { error: string } {
  const servers = text
    .split(",")
    .map((entry) => entry.trim())
    .filter((entry) => entry !== "");
  if (servers.length === 0) return { error: "no server given" };
  for (const server of servers) {
    const match = /^(?:\[([0-9a-fA-F:.]+)\]|([0-9.]+))(?::(\d{1,5}))?$/.exec(server);
    const ip = match?.[1] ?? match?.[2] ?? (net.isIPv6(server) ? server : undefined);
    const port = match?.[3] === undefined ? 53 : Number(match[3]);
    if (!ip || !net.isIP(ip) || port < 1 || port > 65535) {
      return { error: `"${server}" is not an IP address with an optional port, like 127.0.0.1:8600` };
    }
  }
  return { servers };
}

/** `host:port` of one resolved address: IPv6 in brackets, as in a URL. */
export function joinHostPort(host: string, port: number): string {
  return net.isIPv6(host) ? `[${host}]:${port}` : `${host}:${port}`;
}
