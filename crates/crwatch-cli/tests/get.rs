//! `crwatch get` end to end: the built binary against an in-process crwatch-apiserver, output
//! checked line by line; errors (unknown types, forbidden, unreachable servers) with their exit
//! codes.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::{BIN, database, databases, server, words};
use crwatch_apiserver::TestServer;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStderr, ChildStdout, Command};

struct Out {
    code: i32,
    stdout: Vec<String>,
    stderr: String,
}

async fn crwatch(server: &TestServer, args: &[&str]) -> Out {
    crwatch_with(server.kubeconfig(), args).await
}

/// `crwatch get ARGS --kubeconfig KUBECONFIG`, to completion (at most 20 s).
async fn crwatch_with(kubeconfig: &Path, args: &[&str]) -> Out {
    let out = Command::new(BIN)
        .arg("get")
        .args(args)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .env_remove("KUBECONFIG")
        .env_remove("NO_COLOR")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(common::WAIT, out)
        .await
        .expect("crwatch ends within 20 s")
        .expect("crwatch runs");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[tokio::test]
async fn resolves_every_name_form_and_prints_the_printer_columns() {
    let server = server().await;
    server
        .server()
        .apply(database("my-app-db", "default", "10Gi", json!({"app": "shop"})))
        .await
        .unwrap();
    for name in [
        "databases",
        "database",
        "db",
        "Database",
        "DB",
        "databases.stable.example.com",
        "databases.v1.stable.example.com",
    ] {
        let out = crwatch(&server, &[name]).await;
        assert_eq!(out.code, 0, "{name}: {}", out.stderr);
        assert_eq!(out.stdout.len(), 2, "{name}: {:?}", out.stdout);
        assert_eq!(
            words(&out.stdout[0]),
            ["NAME", "ENGINE", "VERSION", "PHASE", "READY", "AGE"],
            "{name}"
        );
        assert_eq!(
            words(&out.stdout[1])[..3],
            ["my-app-db", "PostgreSQL", "15"],
            "{name}"
        );
        // kubectl's alignment: each column starts where its header does, 3 spaces apart.
        assert!(
            out.stdout[0].starts_with("NAME        ENGINE       VERSION   PHASE"),
            "{:?}",
            out.stdout
        );
        assert!(
            out.stdout[1].starts_with("my-app-db   PostgreSQL   15 "),
            "{:?}",
            out.stdout
        );
    }
}

#[tokio::test]
async fn unknown_and_ambiguous_names_fail_like_kubectl() {
    let server = server().await;
    let out = crwatch(&server, &["dbx"]).await;
    assert_eq!(out.code, 1);
    assert!(out.stdout.is_empty());
    assert_eq!(
        out.stderr.lines().collect::<Vec<_>>(),
        [
            "error: the server doesn't have a resource type \"dbx\"",
            "Did you mean \"db\"?"
        ]
    );
    for group in ["a.example.com", "b.example.com"] {
        server
            .server()
            .apply(json!({
                "apiVersion": "apiextensions.k8s.io/v1",
                "kind": "CustomResourceDefinition",
                "metadata": {"name": format!("widgets.{group}")},
                "spec": {
                    "group": group,
                    "names": {"kind": "Widget", "plural": "widgets", "singular": "widget", "listKind": "WidgetList"},
                    "scope": "Namespaced",
                    "versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {
                        "type": "object", "x-kubernetes-preserve-unknown-fields": true}}}],
                },
            }))
            .await
            .unwrap();
    }
    let out = crwatch(&server, &["widget"]).await;
    assert_eq!(out.code, 1);
    assert_eq!(
        out.stderr.trim_end(),
        "error: the resource type \"widget\" is ambiguous; use one of: widgets.a.example.com, widgets.b.example.com"
    );
    let out = crwatch(&server, &["widgets.b.example.com"]).await;
    assert_eq!(
        (out.code, out.stderr.trim()),
        (0, "No resources found in default namespace.")
    );
    let out = crwatch(&server, &["db", "missing"]).await;
    assert_eq!(out.code, 1);
    assert_eq!(
        out.stderr.trim_end(),
        "Error from server (NotFound): databases.stable.example.com \"missing\" not found"
    );
}

#[tokio::test]
async fn namespaces_selectors_and_output_formats() {
    let server = server().await;
    server
        .server()
        .apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "other"}}))
        .await
        .unwrap();
    for (name, ns, app) in [
        ("a-db", "default", "shop"),
        ("b-db", "default", "blog"),
        ("c-db", "other", "shop"),
    ] {
        server
            .server()
            .apply(database(name, ns, "1Gi", json!({"app": app})))
            .await
            .unwrap();
    }
    let out = crwatch(&server, &["db", "-A"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let rows: Vec<Vec<&str>> = out.stdout.iter().map(|l| words(l)[..2].to_vec()).collect();
    assert_eq!(
        rows,
        [
            ["NAMESPACE", "NAME"],
            ["default", "a-db"],
            ["default", "b-db"],
            ["other", "c-db"]
        ]
    );
    let out = crwatch(&server, &["db", "-A", "-l", "app=shop", "-o", "name"]).await;
    assert_eq!(
        out.stdout,
        [
            "database.stable.example.com/a-db",
            "database.stable.example.com/c-db"
        ]
    );
    let out = crwatch(&server, &["db", "-n", "other", "-o", "name"]).await;
    assert_eq!(out.stdout, ["database.stable.example.com/c-db"]);
    let out = crwatch(
        &server,
        &["db", "--field-selector", "metadata.name=b-db", "-o", "name"],
    )
    .await;
    assert_eq!(out.stdout, ["database.stable.example.com/b-db"]);

    let out = crwatch(&server, &["db", "-o", "json"]).await;
    let list: Value = serde_json::from_str(&out.stdout.join("\n")).unwrap();
    assert_eq!(list["kind"], "List");
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a-db", "b-db"]);
    assert_eq!(list["items"][0]["kind"], "Database");
    assert_eq!(list["items"][0]["apiVersion"], "stable.example.com/v1");

    let out = crwatch(&server, &["db", "a-db", "-o", "yaml"]).await;
    let obj: Value = serde_saphyr::from_str(&out.stdout.join("\n")).unwrap();
    assert_eq!(
        (obj["kind"].as_str(), obj["spec"]["size"].as_str()),
        (Some("Database"), Some("1Gi"))
    );

    let out = crwatch(&server, &["db", "-o", "jsonl"]).await;
    assert_eq!(out.stdout.len(), 2);
    let first: Value = serde_json::from_str(&out.stdout[0]).unwrap();
    assert_eq!(first["metadata"]["name"], "a-db");
}

/// A running `crwatch get -w`, its output read line by line with a timeout.
struct Watch {
    child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr: Lines<BufReader<ChildStderr>>,
}

impl Watch {
    fn start(server: &TestServer, args: &[&str]) -> Watch {
        let mut child = Command::new(BIN)
            .arg("get")
            .args(args)
            .arg("--kubeconfig")
            .arg(server.kubeconfig())
            .env_remove("KUBECONFIG")
            .env_remove("NO_COLOR")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("crwatch starts");
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let stderr = BufReader::new(child.stderr.take().unwrap()).lines();
        Watch {
            child,
            stdout,
            stderr,
        }
    }

    async fn line(&mut self) -> String {
        tokio::time::timeout(Duration::from_secs(20), self.stdout.next_line())
            .await
            .expect("a line within 20 s")
            .expect("stdout readable")
            .expect("crwatch still running")
    }

    async fn stderr_line(&mut self) -> String {
        tokio::time::timeout(Duration::from_secs(20), self.stderr.next_line())
            .await
            .expect("a stderr line within 20 s")
            .expect("stderr readable")
            .expect("crwatch still running")
    }

    /// Lines printed within `wait` (none expected to be missed: used to prove silence).
    async fn lines_within(&mut self, wait: Duration) -> Vec<String> {
        let mut lines = vec![];
        let deadline = tokio::time::Instant::now() + wait;
        while let Ok(Ok(Some(l))) = tokio::time::timeout_at(deadline, self.stdout.next_line()).await {
            lines.push(l);
        }
        lines
    }
}

#[tokio::test]
async fn watch_with_diff_survives_dropped_watches_and_compaction_without_duplicates() {
    let server = server().await;
    server
        .server()
        .apply(database("my-app-db", "default", "10Gi", json!({})))
        .await
        .unwrap();
    let mut watch = Watch::start(&server, &["db", "-w", "--diff"]);
    assert_eq!(
        words(&watch.line().await),
        ["EVENT", "NAME", "ENGINE", "VERSION", "PHASE", "READY", "AGE"]
    );
    let added = watch.line().await;
    assert_eq!(words(&added)[..4], ["ADDED", "my-app-db", "PostgreSQL", "15"]);
    assert!(added.starts_with("ADDED      my-app-db   "), "{added:?}");

    let api = databases(&server, "default");
    api.patch(
        "my-app-db",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"size": "20Gi"}})),
    )
    .await
    .unwrap();
    let modified = watch.line().await;
    assert_eq!(
        words(&modified)[..4],
        ["MODIFIED", "my-app-db", "PostgreSQL", "15"]
    );
    assert_eq!(watch.line().await, "    spec:");
    assert_eq!(watch.line().await, "      spec.size: \"10Gi\" → \"20Gi\"");

    // Every watch ends while the server moves on and forgets its history: the reconnecting
    // watch gets 410 Gone and must relist, printing nothing for the unchanged object.
    let faults = server.faults();
    // crwatch's watch must be streaming (not held at the gate) before the server pauses.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while faults.served("watch", "databases") == 0 {
        assert!(std::time::Instant::now() < deadline, "crwatch never watched");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    faults.pause();
    let watches = faults.count("watch", "databases");
    faults.drop_watches();
    // Only once the old watch is gone (its successor held by the pause) does compaction force a
    // relist; a watch still open would simply carry on.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while faults.count("watch", "databases") <= watches {
        assert!(
            std::time::Instant::now() < deadline,
            "crwatch never watched again"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server
        .server()
        .apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "bump", "namespace": "default"}}))
        .await
        .unwrap();
    faults.compact();
    faults.resume();
    let note = watch.stderr_line().await;
    assert!(note.starts_with("crwatch: "), "{note:?}");
    let mut notes = vec![note];
    while !notes.iter().any(|n| n.contains("reconnected")) {
        notes.push(watch.stderr_line().await);
    }
    assert!(notes.iter().any(|n| n.contains("relisting")), "{notes:?}");
    assert_eq!(
        watch.lines_within(Duration::from_secs(2)).await,
        Vec::<String>::new()
    );

    // And it still reports what happens next, once.
    api.delete("my-app-db", &Default::default()).await.unwrap();
    let deleted = watch.line().await;
    assert_eq!(words(&deleted)[..2], ["DELETED", "my-app-db"]);
    assert_eq!(
        watch.lines_within(Duration::from_secs(1)).await,
        Vec::<String>::new()
    );
    watch.child.kill().await.unwrap();
}

#[tokio::test]
async fn watch_only_skips_the_current_state() {
    let server = server().await;
    server
        .server()
        .apply(database("old-db", "default", "1Gi", json!({})))
        .await
        .unwrap();
    let mut watch = Watch::start(&server, &["database", "--watch-only", "-o", "name"]);
    // Once the watch is open (the list before it is done), create a new object.
    let faults = server.faults();
    tokio::time::timeout(Duration::from_secs(20), async {
        while faults.count("watch", "databases") == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("crwatch opens a watch");
    server
        .server()
        .apply(database("new-db", "default", "1Gi", json!({})))
        .await
        .unwrap();
    assert_eq!(watch.line().await, "database.stable.example.com/new-db");
    watch.child.kill().await.unwrap();
}

/// Lines of `watch` until `done` holds for them.
async fn lines_until(watch: &mut Watch, done: impl Fn(&[String]) -> bool) -> Vec<String> {
    let mut lines = vec![];
    while !done(&lines) {
        lines.push(watch.line().await);
    }
    lines
}

#[tokio::test]
async fn watch_in_a_pipe_is_plain_and_streams_line_by_line() {
    let server = server().await;
    common::scenario_setup(&server).await;
    let mut watch = Watch::start(&server, &common::SCENARIO_ARGS[1..]);
    // Each event arrives while crwatch runs: output is flushed per event even in a pipe.
    let mut lines = lines_until(&mut watch, |l| l.iter().any(|l| l.starts_with("ADDED"))).await;
    common::scenario_changes(&server).await;
    lines.extend(lines_until(&mut watch, common::scenario_done).await);
    common::check_scenario(&lines);
    assert!(
        lines.iter().all(|l| !l.contains('\x1b')),
        "no colours in a pipe: {lines:?}"
    );
    watch.child.kill().await.unwrap();
    let mut stderr = vec![];
    while let Ok(Ok(Some(l))) = tokio::time::timeout(common::WAIT, watch.stderr.next_line()).await {
        stderr.push(l);
    }
    assert_eq!(stderr, Vec::<String>::new(), "no spinner or notes in a pipe");
}

#[tokio::test]
async fn watch_rows_of_built_in_kinds_have_the_columns_of_the_list() {
    let server = server().await;
    let cm = |name: &str, data: Value| {
        json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": "default", "labels": {"test": "yes"}}, "data": data})
    };
    server.server().apply(cm("a", json!({"x": "1"}))).await.unwrap();
    let out = crwatch(&server, &["cm", "-l", "test=yes"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(words(&out.stdout[0]), ["NAME", "DATA", "AGE"]);

    let mut watch = Watch::start(&server, &["configmaps", "-l", "test=yes", "-w", "--diff"]);
    let header = watch.line().await;
    assert_eq!(words(&header), ["EVENT", "NAME", "DATA", "AGE"]);
    let cells = |line: &str| common::cells_at(&header, line)[..3].to_vec();
    assert_eq!(cells(&watch.line().await), ["ADDED", "a", "1"]);
    server
        .server()
        .apply(cm("b", json!({"x": "1", "y": "2"})))
        .await
        .unwrap();
    assert_eq!(cells(&watch.line().await), ["ADDED", "b", "2"]);
    let cms: kube::Api<kube::api::DynamicObject> = kube::Api::namespaced_with(
        server.client(),
        "default",
        &kube::discovery::ApiResource::erase::<k8s_openapi::api::core::v1::ConfigMap>(&()),
    );
    cms.patch(
        "b",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"z": "3"}})),
    )
    .await
    .unwrap();
    assert_eq!(cells(&watch.line().await), ["MODIFIED", "b", "3"]);
    assert_eq!(watch.line().await, "    data:");
    assert_eq!(watch.line().await, "      + data.z: \"3\"");
    cms.delete("b", &Default::default()).await.unwrap();
    assert_eq!(cells(&watch.line().await), ["DELETED", "b", "3"]);
    watch.child.kill().await.unwrap();
}

/// A copy of the server's kubeconfig with `from` replaced by `to` (the server URL, the token).
fn kubeconfig_with(server: &TestServer, from: &str, to: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(server.kubeconfig()).unwrap();
    assert!(text.contains(from), "{from} in {text}");
    let path = server.dir().join(format!("kubeconfig-{}", to.len()));
    std::fs::write(&path, text.replace(from, to)).unwrap();
    path
}

fn assert_no_panic(out: &Out) {
    assert!(
        !out.stderr.contains("panicked") && !out.stderr.contains("RUST_BACKTRACE"),
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn unreachable_servers_are_named_and_exit_1() {
    let server = server().await;
    let url = server.server().url().to_string();
    let kubeconfig = kubeconfig_with(&server, &url, "https://127.0.0.1:1");
    for args in [
        &["databases"][..],
        &["databases", "-w"],
        &["db", "x", "-o", "yaml"],
    ] {
        let out = crwatch_with(&kubeconfig, args).await;
        assert_no_panic(&out);
        assert_eq!(
            (out.code, out.stderr.trim_end()),
            (
                1,
                "The connection to the server 127.0.0.1:1 was refused - did you specify the right host or port?"
            ),
            "{args:?}"
        );
        assert!(out.stdout.is_empty());
    }
}

#[tokio::test]
async fn wrong_credentials_and_usage_errors_exit_with_their_codes() {
    let server = server().await;
    let token = server.server().token().to_string();
    let kubeconfig = kubeconfig_with(&server, &token, "not-the-token");
    for args in [&["databases"][..], &["databases", "-w"]] {
        let out = crwatch_with(&kubeconfig, args).await;
        assert_no_panic(&out);
        assert_eq!(
            (out.code, out.stderr.trim_end()),
            (1, "error: You must be logged in to the server (Unauthorized)"),
            "{args:?}"
        );
    }
    // No such resource type, listing or watching.
    for args in [&["nosuchthings"][..], &["nosuchthings", "-w"]] {
        let out = crwatch(&server, args).await;
        assert_no_panic(&out);
        assert_eq!(
            (out.code, out.stderr.trim_end()),
            (
                1,
                "error: the server doesn't have a resource type \"nosuchthings\""
            )
        );
    }
    // Usage errors are clap's: exit code 2.
    let out = Command::new(BIN).arg("get").output().await.unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(BIN)
        .args(["get", "db", "-o", "nonsense"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

const FORBIDDEN: &str = "configmaps is forbidden: User \"alice\" cannot list resource \"configmaps\" in API group \"\" in the namespace \"default\"";

/// A server that serves discovery (ConfigMaps only) and forbids everything else, as a real
/// cluster answers a user without RBAC permissions.
async fn forbidding_server(dir: &Path) -> std::path::PathBuf {
    use axum::http::{StatusCode, Uri, header};
    let app = axum::Router::new().fallback(|uri: Uri| async move {
        let ok = |v: Value| (StatusCode::OK, v.to_string());
        let (code, body) = match uri.path() {
            "/api" => ok(json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []})),
            "/api/v1" => ok(json!({"kind": "APIResourceList", "groupVersion": "v1", "resources": [
                {"name": "configmaps", "singularName": "configmap", "namespaced": true, "kind": "ConfigMap",
                 "verbs": ["get", "list", "watch"], "shortNames": ["cm"]}]})),
            "/apis" => ok(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": []})),
            _ => (
                StatusCode::FORBIDDEN,
                json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": FORBIDDEN, "reason": "Forbidden", "details": {"kind": "configmaps"}, "code": 403})
                .to_string(),
            ),
        };
        (code, [(header::CONTENT_TYPE, "application/json")], body)
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let path = dir.join("forbidden-kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: stub\n  cluster:\n    server: http://127.0.0.1:{port}\nusers:\n- name: alice\n  user:\n    token: alice\ncontexts:\n- name: stub\n  context:\n    cluster: stub\n    user: alice\n    namespace: default\ncurrent-context: stub\n"
        ),
    )
    .unwrap();
    path
}

#[tokio::test]
async fn forbidden_answers_print_the_servers_message_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = forbidding_server(dir.path()).await;
    // Listing, getting one, and watching (which must not retry forever).
    for args in [
        &["configmaps"][..],
        &["cm", "x"],
        &["cm", "-w", "--diff"],
        &["cm", "-o", "json"],
    ] {
        let out = crwatch_with(&kubeconfig, args).await;
        assert_no_panic(&out);
        assert_eq!(
            (out.code, out.stderr.trim_end()),
            (1, format!("Error from server (Forbidden): {FORBIDDEN}").as_str()),
            "{args:?}"
        );
    }
}

#[tokio::test]
async fn diffs_name_list_items_by_the_crds_list_map_keys() {
    let server = server().await;
    let crd = json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "gateways.net.example.com"},
        "spec": {"group": "net.example.com", "scope": "Namespaced",
            "names": {"plural": "gateways", "singular": "gateway", "kind": "Gateway"},
            "versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {
                "type": "object", "properties": {"spec": {"type": "object", "properties": {
                    "listeners": {"type": "array", "x-kubernetes-list-type": "map",
                        "x-kubernetes-list-map-keys": ["name"],
                        "items": {"type": "object", "required": ["name"], "properties": {
                            "name": {"type": "string"}, "port": {"type": "integer"}}}}}}}}}}]}
    });
    server.server().apply(crd).await.unwrap();
    let gw = |listeners: Value| {
        json!({"apiVersion": "net.example.com/v1", "kind": "Gateway",
            "metadata": {"name": "edge", "namespace": "default"}, "spec": {"listeners": listeners}})
    };
    server
        .server()
        .apply(gw(
            json!([{"name": "http", "port": 80}, {"name": "https", "port": 443}]),
        ))
        .await
        .unwrap();
    let mut watch = Watch::start(&server, &["gateways", "-w", "--diff"]);
    assert_eq!(words(&watch.line().await)[..2], ["EVENT", "NAME"]);
    assert_eq!(words(&watch.line().await)[..2], ["ADDED", "edge"]);
    // Reordered, and one port changed: only the port change shows, named by the listener.
    server
        .server()
        .apply(gw(
            json!([{"name": "https", "port": 443}, {"name": "http", "port": 8080}]),
        ))
        .await
        .unwrap();
    assert_eq!(words(&watch.line().await)[..2], ["MODIFIED", "edge"]);
    assert_eq!(watch.line().await, "    spec:");
    assert_eq!(watch.line().await, "      spec.listeners[http].port: 80 → 8080");
}
