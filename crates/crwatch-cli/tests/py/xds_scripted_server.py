"""A scripted delta-xDS server written with grpcio and Envoy's xds-protos (not crwatch's
server), for the crwatch xDS client source: it checks every request the client sends against
the protocol (node, explicit wildcard, ACK by nonce, NACK with error_detail, no initial versions
on the first stream, initial_resource_versions on the reconnect) and prints `ok: ...` per
check, `FAIL: ...` and exits on a mismatch, `SCRIPT OK` at the end.

Usage: xds_scripted_server.py  (prints `listening PORT` first)"""

import json
import sys
import threading
from concurrent import futures

import grpc
from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, json_format, message_factory, struct_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

T = "core/v1/ConfigMap"
MCP_RESOURCE = "type.googleapis.com/istio.mcp.v1alpha1.Resource"
STRUCT = "type.googleapis.com/google.protobuf.Struct"
done = threading.Event()


def mcp_resource_class():
    """istio.mcp.v1alpha1.Resource {metadata = 1, body = 2} with Metadata {name = 1,
    create_time = 2, version = 3, labels = 4, annotations = 5}, as istio/api defines them."""
    from google.protobuf import timestamp_pb2  # noqa: F401  (puts timestamp.proto in the pool)
    f = descriptor_pb2.FileDescriptorProto(name="scripted/istio_mcp.proto", package="istio.mcp.v1alpha1",
                                           syntax="proto3")
    f.dependency.extend(["google/protobuf/any.proto", "google/protobuf/timestamp.proto"])
    F = descriptor_pb2.FieldDescriptorProto
    meta = f.message_type.add(name="Metadata")
    meta.field.add(name="name", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    meta.field.add(name="create_time", number=2, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL,
                   type_name=".google.protobuf.Timestamp")
    meta.field.add(name="version", number=3, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    for name, num, entry in [("labels", 4, "LabelsEntry"), ("annotations", 5, "AnnotationsEntry")]:
        e = meta.nested_type.add(name=entry)
        e.options.map_entry = True
        e.field.add(name="key", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
        e.field.add(name="value", number=2, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
        meta.field.add(name=name, number=num, type=F.TYPE_MESSAGE, label=F.LABEL_REPEATED,
                       type_name=".istio.mcp.v1alpha1.Metadata." + entry)
    res = f.message_type.add(name="Resource")
    res.field.add(name="metadata", number=1, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL,
                  type_name=".istio.mcp.v1alpha1.Metadata")
    res.field.add(name="body", number=2, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL,
                  type_name=".google.protobuf.Any")
    pool = descriptor_pool.Default()
    pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("istio.mcp.v1alpha1.Resource"))


McpResource = mcp_resource_class()


def check(cond, what):
    if not cond:
        print("FAIL:", what, flush=True)
        done.set()
        sys.exit(1)
    print("ok:", what, flush=True)


def configmap(name, version, value):
    """A delta Resource carrying an MCP Resource whose body is the ConfigMap as a Struct."""
    obj = {"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": name, "namespace": "default", "resourceVersion": version,
                        "labels": {"scripted": "yes"}},
           "data": {"value": value}}
    body = struct_pb2.Struct()
    json_format.ParseDict(obj, body)
    mcp = McpResource()
    mcp.metadata.name = "default/" + name
    mcp.metadata.version = version
    mcp.metadata.labels["scripted"] = "yes"
    mcp.body.type_url = STRUCT
    mcp.body.value = body.SerializeToString()
    return discovery_pb2.Resource(name="default/" + name, version=version,
                                  resource=any_pb2.Any(type_url=MCP_RESOURCE, value=mcp.SerializeToString()))


def response(nonce, resources, removed=()):
    return discovery_pb2.DeltaDiscoveryResponse(type_url=T, nonce=nonce, system_version_info=nonce,
                                                resources=resources, removed_resources=list(removed))


def is_ack(req, nonce):
    return req.type_url == T and req.response_nonce == nonce and not req.HasField("error_detail")


class Ads(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    def __init__(self):
        self.streams = 0

    def DeltaAggregatedResources(self, requests, context):
        n = self.streams
        self.streams += 1
        first = next(requests)
        check(first.node.id == "scripted", f"stream {n}: the first request names the node")
        check(first.type_url == T, f"stream {n}: type URL {first.type_url}")
        check(list(first.resource_names_subscribe) == ["*"], f"stream {n}: explicit wildcard")
        check(first.response_nonce == "", f"stream {n}: the first request answers nothing")
        if n == 0:
            check(len(first.initial_resource_versions) == 0, "no initial versions on the first stream")
            yield response("n1", [configmap("a", "v1", "1"), configmap("b", "v1", "1")],
                           removed=["default/never-had"])
            check(is_ack(next(requests), "n1"), "ACK of the first state (a removal of an unknown name ignored)")
            bad = discovery_pb2.Resource(name="default/bad", version="v1",
                                         resource=any_pb2.Any(type_url=STRUCT, value=b""))
            yield response("n2", [bad])
            r = next(requests)
            check(r.response_nonce == "n2" and r.HasField("error_detail"), "NACK by error_detail")
            check(r.error_detail.code == 3, f"error_detail.code INVALID_ARGUMENT ({r.error_detail.code})")
            check("default/bad" in r.error_detail.message, f"the message names the resource: {r.error_detail.message}")
            yield response("n3", [configmap("a", "v2", "2")], removed=["default/b"])
            check(is_ack(next(requests), "n3"), "ACK of a change and a removal")
            context.abort(grpc.StatusCode.UNAVAILABLE, "scripted restart")
        else:
            check(dict(first.initial_resource_versions) == {"default/a": "v2"},
                  f"reconnect: initial_resource_versions {dict(first.initial_resource_versions)}")
            yield response("n4", [configmap("c", "v1", "1")])
            check(is_ack(next(requests), "n4"), "ACK after the reconnect")
            print("SCRIPT OK", flush=True)
            done.set()
            for _ in requests:
                pass


def main():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(Ads(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print("listening", port, flush=True)
    # Stops by itself: after the script, or after 60 s.
    done.wait(60)
    server.stop(grace=1)


if __name__ == "__main__":
    main()
