// Which 403s tell the outbound that a peer sidecar refuses our certificate (eject the endpoint, send the request
// elsewhere), and which are an app's or a policy's answer (passed on as they are).
import t from "tap";
import { peerRefusal } from "../src/outbound/refusal.ts";
import { REFUSAL_MARK } from "../src/proxy/index.ts";

t.test("a 403 with a handshake reason and the refusal mark naming it is a refusal", async (t) => {
  t.equal(peerRefusal(403, { "x-mtlsd-reason": "revoked", [REFUSAL_MARK]: "revoked" }), "revoked");
  t.equal(peerRefusal(403, { "x-mtlsd-reason": "unknown_ca", [REFUSAL_MARK]: "unknown_ca" }), "unknown_ca");
});

t.test(
  "an app's 403 with a handshake reason is not, even with Connection: close from a draining sidecar",
  async (t) => {
    t.equal(peerRefusal(403, { "x-mtlsd-reason": "revoked", connection: "close" }), undefined);
    t.equal(peerRefusal(403, { "x-mtlsd-reason": "unknown_ca" }), undefined);
  },
);

t.test("a mark that names another reason, a policy denial, or another status is not a refusal", async (t) => {
  t.equal(peerRefusal(403, { "x-mtlsd-reason": "revoked", [REFUSAL_MARK]: "unknown_ca" }), undefined);
  t.equal(
    peerRefusal(403, { "x-mtlsd-reason": "policy_denied", [REFUSAL_MARK]: "policy_denied" }),
    undefined,
  );
  t.equal(peerRefusal(401, { "x-mtlsd-reason": "revoked", [REFUSAL_MARK]: "revoked" }), undefined);
});
