"""Fetch one type's state of the world from `crwatch serve` and print `name template` lines.

usage: xds_fetch.py ADDR TYPE_URL"""

import sys

from xds_common import Stream, decode, discovery_pb2

addr, T = sys.argv[1:3]
s = Stream(addr, None, delta=False)
s.send(discovery_pb2.DiscoveryRequest(type_url=T, resource_names=["*"]))
r = s.recv()
for a in r.resources:
    meta, obj = decode(a)
    print(meta.name, obj.get("spec", obj.get("data", {})).get("template", ""), flush=True)
s.send(discovery_pb2.DiscoveryRequest(type_url=T, resource_names=["*"], version_info=r.version_info,
                                      response_nonce=r.nonce))
s.close()
print("FETCH OK", flush=True)
