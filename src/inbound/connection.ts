// What the inbound side knows about a connection, computed once at handshake and read by every request on it.
import type net from "node:net";
import type { PeerIdentity } from "../identity/index.ts";

export interface InboundConnection {
  readonly peer: PeerIdentity | null;
  /** Our XFCC element for this peer, or null when there is no client certificate. */
  readonly xfcc: string | null;
  readonly plaintext: boolean;
}

/** A symbol property on the socket: cheaper per request than a WeakMap lookup, invisible to other code. */
export const kConnection = Symbol("mtlsd.inboundConnection");
export type InboundSocket = net.Socket & { [kConnection]?: InboundConnection };
