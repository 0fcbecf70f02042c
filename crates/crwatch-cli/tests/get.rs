//! `crwatch get` end to end: the built binary against an in-process crwatch-apiserver, output
//! checked line by line.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use crwatch_apiserver::TestServer;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::discovery::ApiResource;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStderr, ChildStdout, Command};

const BIN: &str = env!("CARGO_BIN_EXE_crwatch");

async fn server() -> TestServer {
    let server = TestServer::start().await.expect("server starts");
    let crd = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/database-crd.yaml");
    server.server().apply_file(&crd).await.expect("CRD applied");
    server
}

fn database(name: &str, ns: &str, size: &str, labels: Value) -> Value {
    json!({
        "apiVersion": "stable.example.com/v1",
        "kind": "Database",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"engine": "PostgreSQL", "version": "15", "size": size},
    })
}

struct Out {
    code: i32,
    stdout: Vec<String>,
    stderr: String,
}

async fn crwatch(server: &TestServer, args: &[&str]) -> Out {
    let out = Command::new(BIN)
        .arg("get")
        .args(args)
        .arg("--kubeconfig")
        .arg(server.kubeconfig())
        .env_remove("KUBECONFIG")
        .output()
        .await
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

fn words(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
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

    let ar = ApiResource {
        group: "stable.example.com".into(),
        version: "v1".into(),
        api_version: "stable.example.com/v1".into(),
        kind: "Database".into(),
        plural: "databases".into(),
    };
    let api: Api<DynamicObject> = Api::namespaced_with(server.client(), "default", &ar);
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
    faults.pause();
    faults.drop_watches();
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
