"""The official MCP Python SDK (`mcp` from PyPI) as a client of `crwatch mcp`.

Run by crates/crwatch-cli/tests/mcp.rs against crwatch-apiserver, once per transport (stdio,
streamable HTTP with a bearer token) and protocol revision (2025-11-25 via `initialize`,
2026-07-28 via `server/discover` and `subscriptions/listen`). It lists (with pagination) and
reads, subscribes, sees the update after a real `kubectl patch`, and calls every tool. Every
step prints a line; the last line is `OK <revision> <transport>`; any failure raises.

Usage:
  mcp_client.py --revision legacy|modern --namespace NS --kubeconfig F \
      (--stdio CMD... | --url URL --token T)
"""

from __future__ import annotations

import argparse
import json
import sys

import anyio
import mcp_types as types
from mcp.client.client import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.client.subscriptions import ResourcesListChanged, ResourceUpdated
from mcp.shared._httpx_utils import create_mcp_http_client

STEP_TIMEOUT = 30


def log(*parts: object) -> None:
    print(*parts, flush=True)


def check(cond: bool, what: str) -> None:
    if not cond:
        raise AssertionError(what)


class Kubectl:
    def __init__(self, kubeconfig: str, namespace: str) -> None:
        self.kubeconfig = kubeconfig
        self.namespace = namespace

    async def run(self, *args: str, stdin: str | None = None) -> str:
        cmd = ["kubectl", "--kubeconfig", self.kubeconfig, "-n", self.namespace, *args]
        proc = await anyio.run_process(cmd, input=stdin.encode() if stdin else None, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.decode()}")
        return proc.stdout.decode()


def cm_uri(ns: str, name: str) -> str:
    return f"k8s://core/v1/ConfigMap/namespaces/{ns}/{name}"


def tool_json(result: types.CallToolResult) -> dict:
    check(not result.is_error, f"tool error: {result.content}")
    text = result.content[0].text  # type: ignore[union-attr]
    return json.loads(text)


def tool_error(result: types.CallToolResult) -> str:
    check(bool(result.is_error), f"expected a tool error, got {result.content}")
    return result.content[0].text  # type: ignore[union-attr]


async def list_all(client: Client) -> tuple[list[types.Resource], int]:
    resources: list[types.Resource] = []
    cursor = None
    pages = 0
    while True:
        page = await client.list_resources(cursor=cursor, cache_mode="refresh")
        pages += 1
        resources.extend(page.resources)
        cursor = page.next_cursor
        if not cursor:
            return resources, pages
        check(pages < 100, "pagination does not end")


async def scenario(client: Client, args: argparse.Namespace, notes: "Notes") -> None:
    ns = args.namespace
    k = Kubectl(args.kubeconfig, ns)
    want = "2025-11-25" if args.revision == "legacy" else "2026-07-28"
    check(client.protocol_version == want, f"negotiated {client.protocol_version}, want {want}")
    log("negotiated", client.protocol_version)

    # Lists with pagination (the server runs with --page-size 2).
    resources, pages = await list_all(client)
    uris = sorted(r.uri for r in resources)
    log("listed", len(uris), "resources in", pages, "pages")
    check(pages >= 3, f"expected several pages, got {pages}")
    check(len(uris) == len(set(uris)), "a resource appears twice")
    for name in ["watched-1", "watched-2", "watched-3", "watched-4"]:
        check(cm_uri(ns, name) in uris, f"{name} not listed: {uris}")
    secret_uri = f"k8s://core/v1/Secret/namespaces/{ns}/db-credentials"
    check(secret_uri in uris, f"secret not listed: {uris}")
    check(all(r.mime_type == "application/json" for r in resources), "mime types")

    templates = await client.list_resource_templates()
    tpl = sorted(t.uri_template for t in templates.resource_templates)
    log("templates", tpl)
    check("k8s://{group}/{version}/{kind}/namespaces/{namespace}/{name}" in tpl, "namespaced template")
    check("k8s://{group}/{version}/{kind}/{name}" in tpl, "cluster template")

    # Reads.
    read = await client.read_resource(cm_uri(ns, "watched-1"), cache_mode="refresh")
    obj = json.loads(read.contents[0].text)  # type: ignore[union-attr]
    check(obj["data"]["k"] == "v1", f"read {obj.get('data')}")
    check("managedFields" not in obj["metadata"], "managedFields served")
    rv_before = obj["metadata"]["resourceVersion"]
    log("read watched-1 at", rv_before)
    read = await client.read_resource(secret_uri, cache_mode="refresh")
    secret_text = read.contents[0].text  # type: ignore[union-attr]
    secret = json.loads(secret_text)
    check(sorted(secret["data"]) == ["password", "username"], f"secret keys {secret.get('data')}")
    check(set(secret["data"].values()) == {"<redacted>"}, "secret values served")
    check("aHVudGVyMg" not in secret_text and "hunter2" not in secret_text, "secret value leaked")
    log("read secret: keys only")
    # Not watched, read on demand: the namespace object (cluster-scoped).
    read = await client.read_resource(f"k8s://core/v1/Namespace/{ns}", cache_mode="refresh")
    check(json.loads(read.contents[0].text)["metadata"]["name"] == ns, "namespace read")  # type: ignore[union-attr]
    try:
        await client.read_resource(cm_uri(ns, "no-such"), cache_mode="refresh")
        raise AssertionError("reading a missing object succeeded")
    except Exception as e:  # MCPError
        log("missing object:", e)

    # Subscriptions, then a real kubectl patch.
    target = cm_uri(ns, "watched-1")
    if args.revision == "modern":
        unwatched = f"k8s://core/v1/Namespace/{ns}"
        async with client.listen(resource_subscriptions=[target, unwatched], resources_list_changed=True) as sub:
            honored = sub.honored
            log("listen acknowledged", honored.resource_subscriptions, honored.resources_list_changed)
            check(honored.resource_subscriptions == [target], f"honored {honored}")
            check(honored.resources_list_changed is True, "list changes not honored")
            started_at = anyio.current_time()
            await k.run("patch", "configmap", "watched-1", "--type=merge", "-p", '{"data":{"k":"v2"}}')
            patched_at = anyio.current_time()
            with anyio.fail_after(STEP_TIMEOUT):
                async for ev in sub:
                    log("event", ev)
                    if isinstance(ev, ResourceUpdated) and ev.uri == target:
                        break
            now = anyio.current_time()
            log(f"update notified {1000 * (now - patched_at):.1f} ms after kubectl patch exited ({1000 * (now - started_at):.0f} ms after it started)")
            await k.run("create", "configmap", "watched-5", "--from-literal=k=v1")
            with anyio.fail_after(STEP_TIMEOUT):
                async for ev in sub:
                    log("event", ev)
                    if isinstance(ev, ResourcesListChanged):
                        break
        # Subscribing the legacy way is not part of this revision.
        try:
            await client.session.send_request(
                types.SubscribeRequest(params=types.SubscribeRequestParams(uri=target)), types.EmptyResult
            )
            raise AssertionError("resources/subscribe accepted on 2026-07-28")
        except Exception as e:
            log("resources/subscribe on 2026-07-28:", type(e).__name__, e)
    else:
        await client.subscribe_resource(target)
        try:
            await client.subscribe_resource(f"k8s://core/v1/Namespace/{ns}")
            raise AssertionError("subscribing to an unwatched object succeeded")
        except Exception as e:
            log("unwatched subscribe refused:", e)
        started_at = anyio.current_time()
        await k.run("patch", "configmap", "watched-1", "--type=merge", "-p", '{"data":{"k":"v2"}}')
        patched_at = anyio.current_time()
        with anyio.fail_after(STEP_TIMEOUT):
            await notes.updated_event(target).wait()
        log("notified: updated", target)
        now = anyio.current_time()
        log(f"update notified {1000 * (now - patched_at):.1f} ms after kubectl patch exited ({1000 * (now - started_at):.0f} ms after it started)")
        await k.run("create", "configmap", "watched-5", "--from-literal=k=v1")
        with anyio.fail_after(STEP_TIMEOUT):
            await notes.list_changed.wait()
        log("notified: list changed")
        await client.unsubscribe_resource(target)
    read = await client.read_resource(target, cache_mode="refresh")
    check(json.loads(read.contents[0].text)["data"]["k"] == "v2", "update not read back")  # type: ignore[union-attr]
    resources, _ = await list_all(client)
    check(cm_uri(ns, "watched-5") in {r.uri for r in resources}, "new object not listed")

    # Every tool.
    tools = await client.list_tools(cache_mode="refresh")
    names = [t.name for t in tools.tools]
    log("tools", names)
    check(names == ["get", "list", "describe", "diff", "wait", "apply", "patch"], f"tools {names}")
    for t in tools.tools:
        check(t.input_schema.get("type") == "object", f"{t.name} schema")

    got = tool_json(await client.call_tool("get", {"resource": "cm", "name": "watched-1", "namespace": ns}))
    check(got["object"]["data"]["k"] == "v2", f"get {got}")
    check(got["uri"] == target, f"get uri {got['uri']}")
    got = tool_json(await client.call_tool("get", {"resource": "secrets", "name": "db-credentials", "namespace": ns}))
    check(set(got["object"]["data"].values()) == {"<redacted>"}, "get returned secret values")
    err = tool_error(await client.call_tool("get", {"resource": "cm", "name": "nope", "namespace": ns}))
    check("not found" in err, err)
    err = tool_error(await client.call_tool("get", {"resource": "flurbs", "name": "x"}))
    log("unknown resource:", err)
    log("get ok")

    listed = tool_json(
        await client.call_tool("list", {"resource": "configmaps", "namespace": ns, "labelSelector": "app=mcp-test"})
    )
    check(listed["count"] == 4, f"list by label: {listed['count']}")
    paged = tool_json(await client.call_tool("list", {"resource": "configmaps", "namespace": ns, "limit": 2}))
    check(paged["count"] == 2 and paged["continue"], f"list page {paged['count']} {paged['continue']}")
    fields = tool_json(
        await client.call_tool(
            "list", {"resource": "configmaps", "namespace": ns, "fieldSelector": "metadata.name=watched-2"}
        )
    )
    check([i["object"]["metadata"]["name"] for i in fields["items"]] == ["watched-2"], "field selector")
    secrets = tool_json(await client.call_tool("list", {"resource": "secrets", "namespace": ns}))
    check("hunter2" not in json.dumps(secrets) and "aHVudGVyMg" not in json.dumps(secrets), "list leaked a secret")
    log("list ok")

    described = tool_json(await client.call_tool("describe", {"resource": "deployments", "name": "web", "namespace": ns}))
    log("describe web: owned", [o["uri"] for o in described["owned"]], "events", len(described["events"]))
    check(described["object"]["kind"] == "Deployment", "describe object")
    check(isinstance(described["events"], list) and isinstance(described["owned"], list), "describe shape")
    check(any("/ReplicaSet/" in o["uri"] for o in described["owned"]), "describe: no owned ReplicaSet")

    diffed = tool_json(await client.call_tool("diff", {"uri": target, "sinceResourceVersion": rv_before}))
    log("diff", diffed["from"], "->", diffed["to"], [c["path"] for c in diffed["changes"]])
    check([c["path"] for c in diffed["changes"]] == ["data.k"], f"diff {diffed}")
    check(diffed["changes"][0]["old"] == "v1" and diffed["changes"][0]["new"] == "v2", "diff values")
    err = tool_error(await client.call_tool("diff", {"uri": f"k8s://core/v1/Namespace/{ns}", "sinceResourceVersion": "1"}))
    check("not watched" in err, err)
    log("diff ok")

    waited = tool_json(
        await client.call_tool(
            "wait", {"resource": "cm", "name": "watched-1", "namespace": ns, "field": ".data.k", "value": "v2"}
        )
    )
    check(waited["met"] == ".data.k=v2", f"wait {waited}")
    err = tool_error(
        await client.call_tool(
            "wait",
            {"resource": "cm", "name": "watched-2", "namespace": ns, "field": "data.k", "value": "never", "timeoutSeconds": 1},
        )
    )
    check("timed out" in err, err)

    async def delete_later() -> None:
        await anyio.sleep(0.2)
        await k.run("delete", "configmap", "watched-4")

    async with anyio.create_task_group() as tg:
        tg.start_soon(delete_later)
        waited = tool_json(
            await client.call_tool(
                "wait", {"resource": "cm", "name": "watched-4", "namespace": ns, "deleted": True, "timeoutSeconds": 30}
            )
        )
    check(waited["met"] == "deletion", f"wait deleted {waited}")
    log("wait ok")

    manifest = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "applied", "namespace": ns},
        "data": {"a": "1"},
    }
    dry = tool_json(await client.call_tool("apply", {"manifest": manifest}))
    check(dry["dryRun"] is True and dry["object"]["data"]["a"] == "1", f"apply dry run {dry}")
    tool_error(await client.call_tool("get", {"resource": "cm", "name": "applied", "namespace": ns}))
    real = tool_json(await client.call_tool("apply", {"manifest": manifest, "dryRun": False}))
    check(real["dryRun"] is False, "apply")
    got = tool_json(await client.call_tool("get", {"resource": "cm", "name": "applied", "namespace": ns}))
    check(got["object"]["data"]["a"] == "1", "applied object")
    secret_manifest = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "applied-secret", "namespace": ns},
        "stringData": {"token": "s3cr3t-value"},
    }
    applied_secret = await client.call_tool("apply", {"manifest": secret_manifest, "dryRun": False})
    check("s3cr3t-value" not in json.dumps(applied_secret.model_dump()), "apply returned a secret value")
    log("apply ok")

    patched = tool_json(
        await client.call_tool(
            "patch", {"resource": "cm", "name": "watched-2", "namespace": ns, "patch": {"data": {"k": "dry"}}}
        )
    )
    check(patched["dryRun"] is True and patched["object"]["data"]["k"] == "dry", "patch dry run")
    got = tool_json(await client.call_tool("get", {"resource": "cm", "name": "watched-2", "namespace": ns}))
    check(got["object"]["data"]["k"] == "v1", "a dry run wrote")
    patched = tool_json(
        await client.call_tool(
            "patch",
            {
                "resource": "cm",
                "name": "watched-2",
                "namespace": ns,
                "patchType": "json",
                "patch": [{"op": "replace", "path": "/data/k", "value": "v9"}],
                "dryRun": False,
            },
        )
    )
    check(patched["object"]["data"]["k"] == "v9", "json patch")
    patched = tool_json(
        await client.call_tool(
            "patch",
            {
                "resource": "deployments",
                "name": "web",
                "namespace": ns,
                "patchType": "strategic",
                "patch": {"metadata": {"labels": {"tier": "front"}}},
                "dryRun": False,
            },
        )
    )
    check(patched["object"]["metadata"]["labels"]["tier"] == "front", "strategic patch")
    err = tool_error(
        await client.call_tool("patch", {"resource": "cm", "name": "watched-2", "namespace": ns, "patchType": "json", "patch": {"x": 1}})
    )
    check("RFC 6902" in err, err)
    log("patch ok")

    # A Secret that changes: diff, describe and the listed resource show keys, never values.
    secret_rv = tool_json(
        await client.call_tool("get", {"resource": "secret", "name": "db-credentials", "namespace": ns})
    )["object"]["metadata"]["resourceVersion"]
    await k.run("patch", "secret", "db-credentials", "--type=merge", "-p", '{"stringData":{"password":"n3w-pass","api-key":"k3y"}}')
    tool_json(
        await client.call_tool(
            "wait",
            {"resource": "secret", "name": "db-credentials", "namespace": ns, "field": "data.api-key", "value": "<redacted>"},
        )
    )
    secret_diff = await client.call_tool("diff", {"uri": secret_uri, "sinceResourceVersion": secret_rv})
    secret_desc = await client.call_tool("describe", {"resource": "secret", "name": "db-credentials", "namespace": ns})
    read = await client.read_resource(secret_uri, cache_mode="refresh")
    for leaked in ["n3w-pass", "bjN3LXBhc3M", "k3y", "azN5", "aHVudGVyMg", "YWRtaW4"]:
        for what, out in [("diff", secret_diff.model_dump_json()), ("describe", secret_desc.model_dump_json()),
                          ("read", read.model_dump_json())]:
            check(leaked not in out, f"{what} leaked a Secret value")
    check([c["path"] for c in tool_json(secret_diff)["changes"]] == ["data.api-key"], f"secret diff {secret_diff}")
    log("secret changes: keys only")

    try:
        await client.call_tool("no-such-tool", {})
        raise AssertionError("unknown tool accepted")
    except Exception as e:
        log("unknown tool:", e)


class Notes:
    """2025-11-25 notifications, as the session's message handler sees them."""

    def __init__(self) -> None:
        self.updated: dict[str, anyio.Event] = {}
        self.list_changed = anyio.Event()

    def updated_event(self, uri: str) -> anyio.Event:
        return self.updated.setdefault(uri, anyio.Event())

    async def handle(self, message: object) -> None:
        if isinstance(message, types.ResourceUpdatedNotification):
            log("notification: updated", message.params.uri)
            self.updated_event(message.params.uri).set()
        elif isinstance(message, types.ResourceListChangedNotification):
            self.list_changed.set()


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--revision", choices=["legacy", "modern"], required=True)
    p.add_argument("--namespace", required=True)
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--url")
    p.add_argument("--token")
    p.add_argument("--stdio", nargs=argparse.REMAINDER)
    args = p.parse_args()
    notes = Notes()
    mode = "legacy" if args.revision == "legacy" else "auto"
    if args.url:
        # No token, a wrong token: 401 with a Bearer challenge, before any MCP.
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
        async with create_mcp_http_client() as http:
            for headers in [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {args.token}"}]:
                r = await http.post(args.url, json=body, headers={"Accept": "application/json, text/event-stream", **headers})
                check(r.status_code == 401, f"{headers}: HTTP {r.status_code}")
                check(r.headers.get("www-authenticate") == "Bearer", "no Bearer challenge")
        log("missing and wrong tokens: 401")
        # A wrong token through the SDK: refused.
        bad = streamable_http_client(args.url, http_client=create_mcp_http_client(headers={"Authorization": "Bearer wrong"}))
        try:
            with anyio.fail_after(STEP_TIMEOUT):
                async with Client(bad, mode=mode) as c:
                    await c.list_tools()
            raise AssertionError("a wrong token was accepted")
        except AssertionError:
            raise
        except BaseException as e:  # noqa: BLE001 - any refusal will do
            log("wrong token refused:", type(e).__name__)
        headers = {"Authorization": f"Bearer {args.token}"}
        server = streamable_http_client(args.url, http_client=create_mcp_http_client(headers=headers))
        transport = "http"
    else:
        server = StdioServerParameters(command=args.stdio[0], args=args.stdio[1:])
        transport = "stdio"
    with anyio.fail_after(240):
        async with Client(server, mode=mode, message_handler=notes.handle) as client:
            await scenario(client, args, notes)
    log("OK", args.revision, transport)


if __name__ == "__main__":
    try:
        anyio.run(main)
    except BaseException as e:
        import traceback

        traceback.print_exc()
        sys.exit(1)
