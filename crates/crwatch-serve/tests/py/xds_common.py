"""Shared pieces of the Python xDS clients that test `crwatch serve`: a gRPC channel with the
bearer token, a bidirectional ADS stream with timeouts, Istio's MCP Resource decoded with a
descriptor built here (xds-protos does not ship istio.mcp), and kubectl."""

import json
import queue
import subprocess
import sys
import threading
import time

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, struct_pb2, json_format
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.rpc import status_pb2

MCP_RESOURCE = "type.googleapis.com/istio.mcp.v1alpha1.Resource"
STRUCT = "type.googleapis.com/google.protobuf.Struct"


def _mcp_classes():
    """istio.mcp.v1alpha1.Metadata and Resource with istio/api's field numbers."""
    pool = descriptor_pool.Default()
    # any.proto and timestamp.proto are in the default pool once imported.
    from google.protobuf import any_pb2, timestamp_pb2  # noqa: F401
    f = descriptor_pb2.FileDescriptorProto()
    f.name = "crwatch_test/istio_mcp.proto"
    f.package = "istio.mcp.v1alpha1"
    f.syntax = "proto3"
    f.dependency.extend(["google/protobuf/any.proto", "google/protobuf/timestamp.proto"])
    T = descriptor_pb2.FieldDescriptorProto
    meta = f.message_type.add(name="Metadata")
    for name, num, typ, tname in [("name", 1, T.TYPE_STRING, None),
                                   ("create_time", 2, T.TYPE_MESSAGE, ".google.protobuf.Timestamp"),
                                   ("version", 3, T.TYPE_STRING, None)]:
        fd = meta.field.add(name=name, number=num, type=typ, label=T.LABEL_OPTIONAL)
        if tname:
            fd.type_name = tname
    for name, num, entry in [("labels", 4, "LabelsEntry"), ("annotations", 5, "AnnotationsEntry")]:
        e = meta.nested_type.add(name=entry)
        e.options.map_entry = True
        e.field.add(name="key", number=1, type=T.TYPE_STRING, label=T.LABEL_OPTIONAL)
        e.field.add(name="value", number=2, type=T.TYPE_STRING, label=T.LABEL_OPTIONAL)
        meta.field.add(name=name, number=num, type=T.TYPE_MESSAGE, label=T.LABEL_REPEATED,
                       type_name=".istio.mcp.v1alpha1.Metadata." + entry)
    res = f.message_type.add(name="Resource")
    res.field.add(name="metadata", number=1, type=T.TYPE_MESSAGE, label=T.LABEL_OPTIONAL,
                  type_name=".istio.mcp.v1alpha1.Metadata")
    res.field.add(name="body", number=2, type=T.TYPE_MESSAGE, label=T.LABEL_OPTIONAL,
                  type_name=".google.protobuf.Any")
    pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("istio.mcp.v1alpha1.Resource"))


McpResource = _mcp_classes()


def decode(any_msg):
    """(metadata, object) of an Any holding an MCP Resource whose body is a Struct."""
    assert any_msg.type_url == MCP_RESOURCE, any_msg.type_url
    r = McpResource()
    r.ParseFromString(any_msg.value)
    assert r.body.type_url == STRUCT, r.body.type_url
    s = struct_pb2.Struct()
    s.ParseFromString(r.body.value)
    return r.metadata, json_format.MessageToDict(s)


def check(cond, what):
    if not cond:
        print("FAIL:", what, flush=True)
        sys.exit(1)
    print("ok:", what, flush=True)


class Stream:
    """One ADS stream (delta or SotW) with requests from a queue and responses read with a
    timeout."""

    def __init__(self, addr, token, delta, creds=None):
        if creds is None:
            self.channel = grpc.insecure_channel(addr)
        else:
            self.channel = grpc.secure_channel(addr, creds)
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self.channel)
        self.requests = queue.Queue()
        self.responses = queue.Queue()
        md = [("authorization", "Bearer " + token)] if token else []
        call = stub.DeltaAggregatedResources if delta else stub.StreamAggregatedResources
        self.call = call(self._gen(), metadata=md)
        threading.Thread(target=self._read, daemon=True).start()

    def _gen(self):
        while True:
            r = self.requests.get()
            if r is None:
                return
            yield r

    def _read(self):
        try:
            for r in self.call:
                self.responses.put(r)
        except grpc.RpcError as e:
            self.responses.put(e)
        self.responses.put(None)

    def send(self, req):
        self.requests.put(req)

    def recv(self, timeout=20.0):
        r = self.responses.get(timeout=timeout)
        if isinstance(r, grpc.RpcError):
            raise r
        return r

    def close(self):
        self.requests.put(None)
        self.call.cancel()
        self.channel.close()


def nack_detail(message):
    return status_pb2.Status(code=3, message=message)


class Kube:
    def __init__(self, kubeconfig, namespace):
        self.kc = kubeconfig
        self.ns = namespace

    def run(self, *args, input=None):
        out = subprocess.run(["kubectl", "--kubeconfig", self.kc, "-n", self.ns, *args],
                             input=input, capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {out.stderr}")
        return out.stdout

    def get(self, kind, name):
        return json.loads(self.run("get", kind, name, "-o", "json"))

    def patch_spec(self, kind, name, spec):
        self.run("patch", kind, name, "--type=merge", "-p", json.dumps({"spec": spec}))

    def apply(self, obj):
        self.run("apply", "-f", "-", input=json.dumps(obj))

    def delete(self, kind, name):
        self.run("delete", kind, name, "--wait=false")

    def condition(self, kind, name, ctype="Accepted"):
        o = self.get(kind, name)
        for c in o.get("status", {}).get("conditions", []):
            if c.get("type") == ctype:
                return c, o
        return None, o

    def wait_condition(self, kind, name, pred, timeout=30.0):
        deadline = time.time() + timeout
        last = None
        while time.time() < deadline:
            last, o = self.condition(kind, name)
            if last is not None and pred(last, o):
                return last
            time.sleep(0.2)
        raise AssertionError(f"condition on {kind}/{name} never matched; last: {last}")
