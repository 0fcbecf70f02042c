"""A slow delta subscriber next to a fast one: the slow one subscribes and then reads nothing
(and so ACKs nothing) while the test floods changes; the fast one must see every change up to
the last promptly; when the slow one finally reads, it gets the latest state after at most a
couple of responses (the intermediate versions are coalesced away).

usage: xds_slow.py ADDR TOKEN TYPE_URL NAME
stdin: one line `GO MARKER` once the flood is done (MARKER is in the last template)."""

import sys
import threading
import time

from envoy.config.core.v3 import base_pb2
from xds_common import Stream, check, decode, discovery_pb2

addr, token, T, name = sys.argv[1:5]


def req(**kw):
    return discovery_pb2.DeltaDiscoveryRequest(type_url=T, **kw)


slow = Stream(addr, token, delta=True)
slow.send(req(node=base_pb2.Node(id="py-slow"), resource_names_subscribe=["*"]))
fast = Stream(addr, token, delta=True)
fast.send(req(node=base_pb2.Node(id="py-fast"), resource_names_subscribe=["*"]))
latest = {"template": None, "responses": 0, "seen": []}


def fast_loop():
    while True:
        try:
            r = fast.recv(timeout=120)
        except Exception:
            return
        if r is None:
            return
        latest["responses"] += 1
        for res in r.resources:
            if res.name == name:
                latest["template"] = decode(res.resource)[1]["spec"]["template"]
                latest["seen"].append(time.time())
        fast.send(req(response_nonce=r.nonce))


threading.Thread(target=fast_loop, daemon=True).start()
print("READY", flush=True)
line = sys.stdin.readline().split()
marker = line[1]
t0 = time.time()
deadline = t0 + 30
while time.time() < deadline and not (latest["template"] or "").endswith(marker):
    time.sleep(0.05)
check((latest["template"] or "").endswith(marker), f"the fast subscriber saw the last change ({latest['responses']} responses)")
print(f"fast: last change seen {time.time() - t0:.3f}s after the flood ended", flush=True)

# The slow one reads now: the first (old) response, ACK, then the latest state.
n = 0
got = None
while n < 10:
    r = slow.recv(timeout=20)
    n += 1
    for res in r.resources:
        if res.name == name:
            got = decode(res.resource)[1]["spec"]["template"]
    slow.send(req(response_nonce=r.nonce))
    if got is not None and got.endswith(marker):
        break
check(got is not None and got.endswith(marker), f"the slow subscriber got the latest state after {n} responses")
check(n <= 3, "intermediate versions were coalesced")
slow.close()
fast.close()
print(f"SLOW OK responses={n}", flush=True)
