"""A state-of-the-world xDS client (grpcio + xds-protos) of `crwatch serve`: legacy wildcard,
ACK, NACK (the previous version stays; no resend loop; the Accepted condition), explicit names,
removal by absence, a reconnect at the current version (nothing re-sent), and a bad token.

usage: xds_sotw.py ADDR TOKEN TYPE_URL NAMESPACE KUBECONFIG"""

import sys

import grpc
from envoy.config.core.v3 import base_pb2
from xds_common import Kube, Stream, check, decode, discovery_pb2, nack_detail

addr, token, T, ns, kc = sys.argv[1:6]
k = Kube(kc, ns)
A, B, D = f"{ns}/a", f"{ns}/b", f"{ns}/d"
state = {"version": "", "nonce": ""}
log = []


def req(names=(), **kw):
    return discovery_pb2.DiscoveryRequest(type_url=T, resource_names=list(names), **kw)


def objects(r):
    return {decode(a)[0].name: decode(a)[1] for a in r.resources}


def answer(s, r, names=()):
    bad = [n for n, o in objects(r).items() if "INVALID" in o.get("spec", {}).get("template", "")]
    if bad:
        s.send(req(names, version_info=state["version"], response_nonce=r.nonce,
                   error_detail=nack_detail(f"{bad}: template does not parse")))
    else:
        state["version"] = r.version_info
        s.send(req(names, version_info=r.version_info, response_nonce=r.nonce))
    state["nonce"] = r.nonce


def wait_for(s, pred, what, names=()):
    for _ in range(50):
        r = s.recv()
        log.append(r)
        answer(s, r, names)
        if pred(r):
            return r
    raise AssertionError(f"never got {what}")


# No token: refused.
bad = Stream(addr, "wrong-token", delta=False)
bad.send(req())
try:
    bad.recv()
    check(False, "a wrong token is refused")
except grpc.RpcError as e:
    check(e.code() == grpc.StatusCode.UNAUTHENTICATED, f"a wrong token is refused ({e.code()})")
bad.close()

s = Stream(addr, token, delta=False)
s.send(req(node=base_pb2.Node(id="py-sotw")))  # legacy wildcard: no names
r = s.recv()
log.append(r)
check(sorted(objects(r)) == [A, B], f"legacy wildcard: the whole state {sorted(objects(r))}")
check(r.version_info != "" and r.nonce != "", "version and nonce")
answer(s, r)
v1 = int(state["version"])

k.patch_spec("widgets", "a", {"template": "INVALID"})
r = wait_for(s, lambda r: "INVALID" in objects(r).get(A, {}).get("spec", {}).get("template", ""), "the invalid a")
check(sorted(objects(r)) == [A, B], "every response carries the complete state")
check(state["version"] == str(v1), "after the NACK the client stays at the previous version")
c = k.wait_condition("widgets", "a", lambda c, o: c["status"] == "False" and c["reason"] == "Rejected")
check("does not parse" in c["message"], "NACK -> Accepted=False with the error message")

k.patch_spec("widgets", "a", {"template": "fine {{name}}"})
r = wait_for(s, lambda r: objects(r).get(A, {}).get("spec", {}).get("template") == "fine {{name}}", "the fixed a")
check(int(r.version_info) > v1, "versions grow")
k.wait_condition("widgets", "a", lambda c, o: c["status"] == "True" and c["reason"] == "Acknowledged")
check(True, "ACK -> Accepted=True")
nacked = [x for x in log if any("INVALID" in o.get("spec", {}).get("template", "") for o in objects(x).values())]
check(len(nacked) <= 2, f"the NACKed state was not re-sent in a loop ({len(nacked)} responses)")

# Explicit names: only a.
s.send(req([A], version_info=state["version"], response_nonce=state["nonce"]))
r = wait_for(s, lambda r: sorted(objects(r)) == [A], "only a", names=[A])
# a deleted: the next response lacks it (removal by absence).
k.delete("widgets", "a")
r = wait_for(s, lambda r: len(r.resources) == 0, "the state without a", names=[A])
check(True, "deletion = absence from the state of the world")
last = state["version"]
s.close()

# Reconnect as a wildcard subscriber at the current version: nothing is re-sent until a change.
s = Stream(addr, token, delta=False)
s.send(req(["*"], node=base_pb2.Node(id="py-sotw-2"), version_info=last))
k.apply({"apiVersion": "test.crwatch.io/v1", "kind": "Widget",
         "metadata": {"name": "d", "namespace": ns}, "spec": {"template": "d {{name}}"}})
r = s.recv()
check(sorted(objects(r)) == [B, D], f"after reconnecting: the first response is the change ({sorted(objects(r))})")
check(int(r.version_info) > int(last), "and its version is newer")
s.send(req(["*"], version_info=r.version_info, response_nonce=r.nonce))
s.close()
print("SOTW OK", flush=True)
