// What both listeners do when Node's HTTP server reports a client error: one rule for every direction.
import type net from "node:net";
import type { HttpDrain } from "./drain.ts";
import { failForward } from "./forward.ts";
import { describeClientError } from "./respond.ts";

export type ClientErrorAnswer = ReturnType<typeof describeClientError>;

/**
 * Settles a client error on `socket`. A reset or unwritable socket is destroyed, and so is one whose error is
 * in the body of a request already answered (nothing is left to answer, and it was logged once already); mid-request (a body too slow,
 * or breaking its framing) the request being forwarded answers and logs it; once a response has started, any
 * bytes of ours would corrupt it, so only cutting is honest. Returns what to answer when the caller still must
 * (nothing was in progress on the connection), else undefined.
 */
export function settleClientError(
  error: Error & { code?: string },
  socket: net.Socket,
  drain: HttpDrain,
): ClientErrorAnswer | undefined {
  if (error.code === "ECONNRESET" || !socket.writable || drain.discardingBodyOn(socket)) {
    socket.destroy();
    return undefined;
  }
  const answer = describeClientError(error);
  const res = drain.responseOn(socket);
  if (res && failForward(res, answer)) return undefined;
  if (res?.headersSent) {
    socket.destroy();
    return undefined;
  }
  return answer;
}
