"""`crwatch serve` over TLS with client certificates (mTLS): a state-of-the-world client with
the CA and its certificate gets the state; one without a client certificate is refused.

usage: xds_tls.py ADDR TOKEN TYPE_URL CA_PEM CLIENT_CERT_PEM CLIENT_KEY_PEM"""

import sys

import grpc
from xds_common import Stream, check, decode, discovery_pb2

addr, token, T, ca, cert, key = sys.argv[1:7]
read = lambda p: open(p, "rb").read()

s = Stream(addr, token, delta=False, creds=grpc.ssl_channel_credentials(read(ca), read(key), read(cert)))
s.send(discovery_pb2.DiscoveryRequest(type_url=T))
r = s.recv()
check(len(r.resources) == 2, f"mTLS: the state arrives ({[decode(a)[0].name for a in r.resources]})")
s.close()

s = Stream(addr, token, delta=False, creds=grpc.ssl_channel_credentials(read(ca)))
s.send(discovery_pb2.DiscoveryRequest(type_url=T))
try:
    s.recv(timeout=20)
    check(False, "a client without a certificate is refused")
except grpc.RpcError as e:
    check(e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL),
          f"a client without a certificate is refused ({e.code()})")
s.close()
print("TLS OK", flush=True)
