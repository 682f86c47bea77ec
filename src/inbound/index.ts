// The inbound module's public face: the mTLS listener and the XFCC formatting it uses.
export { type InboundConnection, kConnection } from "./connection.ts";
export { buildInboundHeaders } from "./headers.ts";
export { InboundListener, type InboundOptions, type InboundStats } from "./listener.ts";
export {
  applyXfccMode,
  formatXfccElement,
  parseXfcc,
  type XfccElement,
  type XfccFields,
  type XfccMode,
} from "./xfcc.ts";
