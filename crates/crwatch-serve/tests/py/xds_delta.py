"""A delta-xDS client (grpcio + xds-protos) of `crwatch serve`: wildcard subscribe, receive,
ACK, NACK (and the Accepted condition it sets), explicit subscribe/unsubscribe, resubscribe, a
name that does not exist, and a reconnect with initial_resource_versions.

usage: xds_delta.py ADDR TOKEN TYPE_URL NAMESPACE KUBECONFIG"""

import sys

from envoy.config.core.v3 import base_pb2
from xds_common import Kube, Stream, check, decode, discovery_pb2, nack_detail

addr, token, T, ns, kc = sys.argv[1:6]
k = Kube(kc, ns)
A, B, C = f"{ns}/a", f"{ns}/b", f"{ns}/c"
have = {}  # name -> (version, object)
log = []  # every response, in order


def req(**kw):
    return discovery_pb2.DeltaDiscoveryRequest(type_url=T, **kw)


def valid(obj):
    return "INVALID" not in obj.get("spec", {}).get("template", "")


def answer(s, r):
    """ACK, or NACK when any resource is invalid (the client keeps its previous ones)."""
    bad = []
    for res in r.resources:
        meta, obj = decode(res.resource)
        assert meta.name == res.name, (meta.name, res.name)
        if valid(obj):
            have[res.name] = (res.version, obj)
        else:
            bad.append(res.name)
    for name in r.removed_resources:
        have.pop(name, None)
    if bad:
        s.send(req(response_nonce=r.nonce, error_detail=nack_detail(f"template of {bad}: unknown variable {{{{x}}}}")))
    else:
        s.send(req(response_nonce=r.nonce))


def wait_for(s, pred, what):
    for _ in range(50):
        r = s.recv()
        log.append(r)
        answer(s, r)
        if pred(r):
            return r
    raise AssertionError(f"never got {what}")


def names(r):
    return sorted(x.name for x in r.resources)


s = Stream(addr, token, delta=True)
s.send(req(node=base_pb2.Node(id="py-delta"), resource_names_subscribe=["*"]))
r = s.recv()
log.append(r)
check(r.type_url == T, f"type URL {r.type_url}")
check(names(r) == [A, B], f"wildcard: every object {names(r)}")
meta, obj = decode(r.resources[0].resource)
o = k.get("widgets", "a")
check(meta.version == o["metadata"]["resourceVersion"] == r.resources[0].version, "version = resourceVersion")
check(obj["spec"]["template"] == "hello {{name}}" and obj["metadata"]["name"] == "a", "body: the object as a Struct")
check(dict(meta.labels) == {"app": "demo"} and meta.create_time.seconds > 0, "labels and create time")
answer(s, r)

# NACK: an invalid template; the object gets Accepted=False.
k.patch_spec("widgets", "a", {"template": "INVALID {{x}}"})
wait_for(s, lambda r: A in names(r), "the invalid a")
c = k.wait_condition("widgets", "a", lambda c, o: c["status"] == "False" and c["reason"] == "Rejected"
                     and "unknown variable" in c["message"]
                     and c["observedGeneration"] == o["metadata"]["generation"])
check(True, f"NACK -> Accepted=False: {c['message']}")
before = len(log)
# The next change (b) must come through without a NACK loop on a in between.
k.patch_spec("widgets", "b", {"template": "bye {{name}}"})
wait_for(s, lambda r: B in names(r), "b's change")
resent_a = sum(1 for r in log[before:] if A in names(r))
check(resent_a <= 1, f"no resend loop after the NACK (a re-sent {resent_a}x, for its status write)")

# Fixed: ACK -> Accepted=True.
k.patch_spec("widgets", "a", {"template": "hello again {{name}}"})
wait_for(s, lambda r: A in names(r) and valid(decode(r.resources[names(r).index(A)].resource)[1]), "the fixed a")
c = k.wait_condition("widgets", "a", lambda c, o: c["status"] == "True" and c["reason"] == "Acknowledged")
check(True, "ACK -> Accepted=True")

# Explicit a instead of the wildcard: a is sent again (newly subscribed by name).
s.send(req(resource_names_subscribe=[A], resource_names_unsubscribe=["*"]))
wait_for(s, lambda r: names(r) == [A], "a, newly subscribed by name")
# b goes: the client is no longer subscribed to it, so it hears nothing of it.
k.delete("widgets", "b")
k.patch_spec("widgets", "a", {"template": "third {{name}}"})
r = wait_for(s, lambda r: A in names(r) and have[A][1]["spec"]["template"] == "third {{name}}", "a's third template")
check(all(B not in x.removed_resources and B not in names(x) for x in log[-3:]), "no removal of b (not subscribed)")

# Unsubscribe a, subscribe again: re-sent though unchanged.
version_a = have[A][0]
s.send(req(resource_names_unsubscribe=[A]))
s.send(req(resource_names_subscribe=[A]))
r = wait_for(s, lambda r: A in names(r), "a after resubscribing")
check(r.resources[0].version == version_a, "resubscribe re-sends the unchanged a")

# A name that does not exist: removed_resources says so.
s.send(req(resource_names_subscribe=[f"{ns}/zz"]))
r = wait_for(s, lambda r: f"{ns}/zz" in r.removed_resources, "zz reported absent")
check(names(r) == [], "nothing else in that response")
s.close()

# Reconnect: the client has a (current) and b (gone); c appeared meanwhile.
k.apply({"apiVersion": "test.crwatch.io/v1", "kind": "Widget",
         "metadata": {"name": "c", "namespace": ns}, "spec": {"template": "new {{name}}"}})
s = Stream(addr, token, delta=True)
s.send(req(node=base_pb2.Node(id="py-delta-2"), resource_names_subscribe=["*"],
           initial_resource_versions={A: have[A][0], B: "1"}))
r = s.recv()
check(names(r) == [C], f"reconnect: only what changed is sent ({names(r)})")
check(list(r.removed_resources) == [B], f"reconnect: b removed ({list(r.removed_resources)})")
s.send(req(response_nonce=r.nonce))
s.close()
print("DELTA OK", flush=True)
