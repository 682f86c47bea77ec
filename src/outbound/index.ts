// The outbound module's public face: the listener that upgrades the app's plain HTTP to pooled mTLS.
export { clientContext, OutboundListener, type OutboundOptions } from "./listener.ts";
export { type Ejection, EndpointHealth, type OutlierSettings } from "./outlier.ts";
export { dnsServerResolver, parseDnsServers, type ResolveHost, systemResolver } from "./resolve.ts";
export { type Route, Router } from "./router.ts";
export { type EndpointStats, Upstream, type UpstreamStats } from "./upstream.ts";
