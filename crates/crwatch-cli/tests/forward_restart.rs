//! `crwatch forward` over the one list/watch engine: a forwarder restarted against an API
//! server that lost its history, readiness while the server fails, the WARN-once logging and
//! the shutdown summary, `--check --server`, an HTTP source, and the README's example.

mod receiver;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use crwatch_apiserver::{Config, TestServer};
use crwatch_cli::Connection;
use crwatch_cli::forward::Forwarder;
use crwatch_cli::forward::config::ForwardConfig;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use receiver::{Receiver, wait_for};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_crwatch");

async fn start(server: &TestServer, yaml: &str) -> Forwarder {
    let config = ForwardConfig::parse(yaml, "forward.yaml").expect("valid config");
    let conn = Connection {
        kubeconfig: Some(server.kubeconfig().to_path_buf()),
        context: None,
    };
    crwatch_cli::forward::start(config, "forward.yaml", &conn)
        .await
        .expect("forwarder starts")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn server_on(port: u16) -> TestServer {
    // The previous server's port may take a moment to be free again.
    let mut tries = 0;
    let s = loop {
        match TestServer::with_config(Config {
            port,
            http_port: None,
            bookmark_interval: Duration::from_secs(1),
            ..Config::default()
        })
        .await
        {
            Ok(s) => break s,
            Err(e) if tries < 100 => {
                tries += 1;
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("server starts: {e}"),
        }
    };
    s.server()
        .apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "h"}}))
        .await
        .expect("namespace");
    s
}

async fn create(api: &Api<ConfigMap>, name: &str) -> ConfigMap {
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": name}, "data": {"n": "0"}})).unwrap();
    api.create(&PostParams::default(), &cm).await.expect("create")
}

fn uid(cm: &ConfigMap) -> String {
    cm.metadata.uid.clone().unwrap()
}

fn has(events: &[Value], kind: &str, uid: &str) -> bool {
    events.iter().any(|e| {
        e["type"] == format!("io.crwatch.resource.{kind}") && e["data"]["object"]["metadata"]["uid"] == uid
    })
}

fn hook_config(hook: &str, checkpoint: &std::path::Path, extra: &str) -> String {
    format!(
        "resources:\n  - resource: configmaps\n    namespaces: [h]\nsinks:\n  - name: hook\n    webhook:\n      url: {hook}\n      timeout: 2s\n    retry:\n      initialBackoff: 10ms\n      maxBackoff: 100ms\ncheckpoint:\n  path: {}\n  interval: 100ms\nmetrics: \"127.0.0.1:0\"\nprobes: \"127.0.0.1:0\"\n{extra}",
        checkpoint.display()
    )
}

/// Server A; objects a and b forwarded; forwarder stopped; A replaced on the same port by B
/// without A's state (its resourceVersions pass A's when `pass` is set); B has a (new uid) and
/// c. The restarted forwarder reports deleted a, added a, deleted b, added c.
async fn restarted_against_a_server_that_lost_its_history(pass: bool) {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = dir.path().join("checkpoint.json");
    let rx = Receiver::start().await;

    let a_server = server_on(port).await;
    let api: Api<ConfigMap> = Api::namespaced(a_server.client(), "h");
    // Some history first, so B (below) may or may not reach A's resourceVersion.
    for i in 0..5 {
        create(&api, &format!("pad{i}")).await;
        api.delete(&format!("pad{i}"), &DeleteParams::default())
            .await
            .unwrap();
    }
    let old_a = create(&api, "a").await;
    let old_b = create(&api, "b").await;
    let fwd = start(&a_server, &hook_config(&rx.url(), &checkpoint, "")).await;
    wait_for("a and b added", || {
        let e = rx.events();
        has(&e, "added", &uid(&old_a)) && has(&e, "added", &uid(&old_b))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    fwd.shutdown().await.unwrap();
    let a_rv: u64 = old_b.metadata.resource_version.clone().unwrap().parse().unwrap();
    a_server.shutdown().await.unwrap();

    let b_server = server_on(port).await;
    let api: Api<ConfigMap> = Api::namespaced(b_server.client(), "h");
    if pass {
        for i in 0..20 {
            create(&api, &format!("churn{i}")).await;
            api.delete(&format!("churn{i}"), &DeleteParams::default())
                .await
                .unwrap();
        }
    }
    let new_a = create(&api, "a").await;
    let c = create(&api, "c").await;
    let b_rv: u64 = c.metadata.resource_version.clone().unwrap().parse().unwrap();
    assert_eq!(b_rv > a_rv, pass, "B's resourceVersion {b_rv} vs A's {a_rv}");
    rx.clear();

    let fwd = start(&b_server, &hook_config(&rx.url(), &checkpoint, "")).await;
    wait_for("deleted a, added a, deleted b, added c", || {
        let e = rx.events();
        has(&e, "deleted", &uid(&old_a))
            && has(&e, "added", &uid(&new_a))
            && has(&e, "deleted", &uid(&old_b))
            && has(&e, "added", &uid(&c))
    })
    .await;
    let events = rx.events();
    let pos = |kind: &str, u: &str| {
        events
            .iter()
            .position(|e| {
                e["type"] == format!("io.crwatch.resource.{kind}")
                    && e["data"]["object"]["metadata"]["uid"] == u
            })
            .unwrap()
    };
    assert!(
        pos("deleted", &uid(&old_a)) < pos("added", &uid(&new_a)),
        "a: deleted before added again"
    );
    assert!(
        events.iter().all(|e| e["subject"] != "h/pad0"),
        "nothing from A's history is invented"
    );
    fwd.shutdown().await.unwrap();
    b_server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_server_whose_history_restarted_past_the_checkpoint_is_relisted_and_diffed() {
    restarted_against_a_server_that_lost_its_history(true).await;
}

#[tokio::test]
async fn a_server_whose_history_has_not_reached_the_checkpoint_is_relisted_and_diffed() {
    restarted_against_a_server_that_lost_its_history(false).await;
}

async fn status(url: &str) -> u16 {
    match reqwest::get(url).await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

#[tokio::test]
async fn readyz_is_503_while_the_server_fails_and_200_after_it_recovers() {
    let server = server_on(0).await;
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let fwd = start(
        &server,
        &hook_config(&rx.url(), &dir.path().join("cp.json"), "unhealthyAfter: 1s\n"),
    )
    .await;
    let readyz = format!("http://{}/readyz", fwd.probes_addr.unwrap());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while status(&readyz).await != 200 {
        assert!(tokio::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server
        .faults()
        .fail_next(3, 500, crwatch_apiserver::faults::Match::any());
    server.faults().drop_watches();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while status(&readyz).await != 503 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never unready while the server fails"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let text = fwd.registry.encode();
    assert!(text.contains("crwatch_forward_stream_connected"), "{text}");
    assert!(text.contains("crwatch_forward_source_errors_total"), "{text}");
    assert!(
        text.contains("crwatch_forward_stream_last_event_timestamp_seconds"),
        "{text}"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while status(&readyz).await != 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not ready again after the server recovered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    fwd.shutdown().await.unwrap();
}

fn write(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

// The server runs on the test's runtime while the binary is awaited synchronously.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_deliveries_warn_once_and_shutdown_says_what_stayed_undelivered() {
    let server = server_on(0).await;
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "h");
    create(&api, "x").await;
    let dir = tempfile::tempdir().unwrap();
    let nobody = format!("http://127.0.0.1:{}/events", free_port());
    let cfg = write(
        dir.path(),
        "forward.yaml",
        &format!(
            "resources:\n  - resource: configmaps\n    namespaces: [h]\nsinks:\n  - name: hook\n    webhook: {{url: \"{nobody}\", headers: {{Authorization: \"Bearer s3cret\"}}}}\n    retry: {{initialBackoff: 10ms, maxBackoff: 50ms}}\nmetrics: \"off\"\nprobes: \"off\"\nshutdownGrace: 500ms\n"
        ),
    );
    let mut child = Command::new(BIN)
        .args(["forward", "-f"])
        .arg(&cfg)
        .arg("--kubeconfig")
        .arg(server.kubeconfig())
        .env_remove("CRWATCH_LOG")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(status.success(), "{stderr}");
    assert_eq!(
        stderr.matches("deliveries are failing").count(),
        1,
        "one WARN for many failed attempts:\n{stderr}"
    );
    assert!(stderr.contains("WARN"), "{stderr}");
    assert!(!stderr.contains("s3cret"), "no secret in logs:\n{stderr}");
    assert!(
        stderr.contains("undelivered changes per sink (hook: 1)"),
        "{stderr}"
    );
    assert!(stderr.contains("configmaps in namespace h: 1"), "{stderr}");
}

// The server runs on the test's runtime while the binary is awaited synchronously.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_server_reports_unknown_resources_and_namespaces_with_locations() {
    let server = server_on(0).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "forward.yaml",
        "resources:\n  - resource: configmapz\n  - resource: namespaces\n    namespaces: [h]\n  - resource: configmaps\n    namespaces: [h, nowhere]\nsinks:\n  - name: out\n    file: {path: \"-\"}\n",
    );
    let offline = Command::new(BIN)
        .args(["forward", "--check", "-f"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        offline.status.success(),
        "{}",
        String::from_utf8_lossy(&offline.stderr)
    );
    let out = Command::new(BIN)
        .args(["forward", "--check", "--server", "-f"])
        .arg(&cfg)
        .arg("--kubeconfig")
        .arg(server.kubeconfig())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let file = cfg.display().to_string();
    assert!(
        stderr.contains(&format!("{file}:2:15: resource \"configmapz\"")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "{file}:4:18: resource \"namespaces\" (namespaces) is cluster-scoped"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{file}:6:21: namespace \"nowhere\" does not exist")),
        "{stderr}"
    );
    // A server that is not there is worded as kubectl words it.
    let port = free_port();
    let kubeconfig = write(
        dir.path(),
        "kubeconfig",
        &format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: \"https://127.0.0.1:{port}\", insecure-skip-tls-verify: true}}}}]\ncontexts: [{{name: c, context: {{cluster: c, user: u}}}}]\ncurrent-context: c\nusers: [{{name: u, user: {{token: t}}}}]\n"
        ),
    );
    let out = Command::new(BIN)
        .args(["forward", "--check", "--server", "-f"])
        .arg(&cfg)
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.trim().lines().last().unwrap_or_default();
    assert!(
        last == format!(
            "The connection to the server 127.0.0.1:{port} was refused - did you specify the right host or port?"
        ) || last.starts_with(&format!(
            "Unable to connect to the server https://127.0.0.1:{port}"
        )),
        "kubectl's wording, without `error: `:\n{stderr}"
    );
}

#[tokio::test]
async fn an_http_source_is_forwarded_to_a_file_sink() {
    use axum::routing::get;
    let items = std::sync::Arc::new(std::sync::Mutex::new(json!([{"id": "one", "v": 1}])));
    let served = items.clone();
    let app = axum::Router::new().route(
        "/items",
        get(move || {
            let v = served.lock().unwrap().clone();
            async move { axum::Json(v) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("events.jsonl");
    let yaml = format!(
        "resources:\n  - source: \"http://user:pw@{addr}/items?token=x\"\n    interval: 200ms\nsinks:\n  - name: out\n    file: {{path: {}}}\nmetrics: \"off\"\nprobes: \"off\"\n",
        out.display()
    );
    let config = ForwardConfig::parse(&yaml, "forward.yaml").unwrap();
    let fwd = Forwarder::start(config, "forward.yaml", None).await.unwrap();
    let lines = || -> Vec<Value> {
        std::fs::read_to_string(&out)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    wait_for("the item added", || lines().len() == 1).await;
    *items.lock().unwrap() = json!([{"id": "one", "v": 2}, {"id": "two", "v": 1}]);
    wait_for("modified and added", || lines().len() == 3).await;
    *items.lock().unwrap() = json!([{"id": "two", "v": 1}]);
    wait_for("deleted", || lines().len() == 4).await;
    let l = lines();
    let types: Vec<&str> = l.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types[0], "io.crwatch.resource.added");
    assert!(types[1..3].contains(&"io.crwatch.resource.modified"), "{types:?}");
    assert!(types[1..3].contains(&"io.crwatch.resource.added"), "{types:?}");
    assert_eq!(types[3], "io.crwatch.resource.deleted");
    assert_eq!(
        l[0]["source"],
        format!("http://{addr}/items"),
        "no credentials, no query"
    );
    let modified = l
        .iter()
        .find(|e| e["type"] == "io.crwatch.resource.modified")
        .unwrap();
    assert_eq!(modified["data"]["diff"][0]["path"], "data.v");
    fwd.shutdown().await.unwrap();
}

// The server runs on the test's runtime while the binary is awaited synchronously.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_example_runs_against_the_demo_setup() {
    let server = TestServer::start().await.unwrap();
    let crd = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/database-crd.yaml");
    server.server().apply_file(&crd).await.expect("CRD applied");
    let rx = Receiver::start().await;
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/forward.yaml"
    ))
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Only the webhook URL changes (and the local ports, so tests run side by side); the
    // relative paths resolve in the working directory.
    let text = example
        .replace("http://localhost:9000/events", &rx.url())
        .replace("127.0.0.1:8080", "127.0.0.1:0")
        .replace("127.0.0.1:8081", "127.0.0.1:0");
    assert_ne!(text, example, "the example names the local webhook receiver");
    let cfg = write(dir.path(), "forward.yaml", &text);
    let mut child = Command::new(BIN)
        .args(["forward", "-f"])
        .arg(&cfg)
        .arg("--kubeconfig")
        .arg(server.kubeconfig())
        .current_dir(dir.path())
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let db = json!({"apiVersion": "stable.example.com/v1", "kind": "Database",
        "metadata": {"name": "my-app-db", "namespace": "default"},
        "spec": {"engine": "PostgreSQL", "version": "15", "size": "10Gi"}});
    server.server().apply(db).await.expect("database");
    wait_for("the Database's CloudEvent", || {
        rx.events().iter().any(|e| e["subject"] == "default/my-app-db")
    })
    .await;
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(status.success(), "{stderr}");
    assert!(
        dir.path().join("crwatch-checkpoint.json").exists(),
        "the checkpoint is written"
    );
}

#[tokio::test]
async fn a_file_source_restarted_from_its_checkpoint_forwards_only_what_changed_while_down() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("conf");
    std::fs::create_dir(&conf).unwrap();
    let doc = |name: &str, v: u32| {
        format!(
            "apiVersion: example.com/v1\nkind: Setting\nmetadata: {{name: {name}, namespace: app}}\nspec: {{v: {v}}}\n"
        )
    };
    std::fs::write(conf.join("a.yaml"), doc("a", 1)).unwrap();
    std::fs::write(conf.join("b.yaml"), doc("b", 1)).unwrap();
    let out = dir.path().join("events.jsonl");
    let yaml = format!(
        "resources:\n  - source: \"file://{}\"\nsinks:\n  - name: out\n    file: {{path: {}}}\ncheckpoint: {{path: {}, interval: 1s}}\nmetrics: \"off\"\nprobes: \"off\"\n",
        conf.display(),
        out.display(),
        dir.path().join("checkpoint.json").display()
    );
    let lines = || -> Vec<Value> {
        std::fs::read_to_string(&out)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let config = ForwardConfig::parse(&yaml, "forward.yaml").unwrap();
    let fwd = Forwarder::start(config, "forward.yaml", None).await.unwrap();
    wait_for("the two documents", || lines().len() == 2).await;
    fwd.shutdown().await.unwrap();

    // While the forwarder is down: one edit, one deletion, one new file.
    std::fs::write(conf.join("a.yaml"), doc("a", 2)).unwrap();
    std::fs::remove_file(conf.join("b.yaml")).unwrap();
    std::fs::write(conf.join("c.yaml"), doc("c", 1)).unwrap();

    let config = ForwardConfig::parse(&yaml, "forward.yaml").unwrap();
    let fwd = Forwarder::start(config, "forward.yaml", None).await.unwrap();
    wait_for("the three differences", || lines().len() == 5).await;
    let mut seen: Vec<(String, String)> = lines()[2..]
        .iter()
        .map(|e| {
            (
                e["type"]
                    .as_str()
                    .unwrap()
                    .trim_start_matches("io.crwatch.resource.")
                    .to_string(),
                e["subject"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [("added", "app/c"), ("deleted", "app/b"), ("modified", "app/a")]
            .map(|(t, s)| (t.to_string(), s.to_string()))
    );
    let modified = lines()
        .into_iter()
        .find(|e| e["type"] == "io.crwatch.resource.modified")
        .unwrap();
    assert_eq!(modified["data"]["diff"][0]["path"], "spec.v");
    fwd.shutdown().await.unwrap();
}
