//! `crwatch get` against servers that misbehave or serve the unusual, end to end with the
//! built binary: objects nested far past serde_json's 128 levels, credentials that must not go
//! over plain HTTP, a port that accepts and never answers, and a watch whose server comes back
//! with a new CA or a new token (each new cause said on stderr, not only the first).

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::BIN;
use crwatch_apiserver::{ApiServer, Config, TestServer};
use k8s_openapi::api::core::v1::ConfigMap;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// `crwatch get ARGS --kubeconfig K` to completion within `limit`: (exit code, stdout, stderr).
async fn get(
    kubeconfig: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    limit: Duration,
) -> (i32, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.arg("get")
        .args(args)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .env_remove("KUBECONFIG")
        .env_remove("CRWATCH_INSECURE_HTTP_CREDENTIALS")
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(limit, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("crwatch get {args:?} ends within {limit:?}"))
        .expect("crwatch runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A kubeconfig for `server` with `token`; `ca` is base64 PEM, or `None` to skip verification.
fn kubeconfig(dir: &Path, name: &str, server: &str, token: &str, ca: Option<&str>) -> PathBuf {
    let trust = match ca {
        Some(ca) => format!("certificate-authority-data: {ca}"),
        None => "insecure-skip-tls-verify: true".to_string(),
    };
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\n    {trust}\nusers:\n- name: u\n  user:\n    token: {token}\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\n    namespace: default\ncurrent-context: c\n"
    );
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// `{"a": {"a": … {"leaf": leaf} … }}`, `depth` levels of `a`.
fn nested(depth: usize, leaf: &str) -> Value {
    let mut v = json!({ "leaf": leaf });
    for _ in 0..depth {
        v = json!({ "a": v });
    }
    v
}

/// How many levels of `a` lead to `leaf`, and the leaf.
fn depth_of(mut v: &Value) -> (usize, String) {
    let mut depth = 0;
    while let Some(next) = v.get("a") {
        depth += 1;
        v = next;
    }
    (depth, v["leaf"].as_str().unwrap_or_default().to_string())
}

/// 500 levels, far past serde_json's 128 (`ROBUST_DEPTH` measures other depths).
fn depth() -> usize {
    std::env::var("ROBUST_DEPTH")
        .ok()
        .and_then(|d| d.parse().ok())
        .unwrap_or(500)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_nested_500_deep_list_and_watch() {
    let depth = depth();
    let server = TestServer::start().await.expect("server starts");
    let api = server.server();
    // A kind that keeps unknown fields, so the nesting is stored as given (not pruned).
    api.apply(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "deeps.test.example.com"},
        "spec": {
            "group": "test.example.com",
            "names": {"plural": "deeps", "singular": "deep", "kind": "Deep", "listKind": "DeepList"},
            "scope": "Namespaced",
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}
            }]
        }
    }))
    .await
    .expect("CRD applied");
    let deep = |leaf: &str| {
        json!({
            "apiVersion": "test.example.com/v1", "kind": "Deep",
            "metadata": {"name": "d1", "namespace": "default"},
            "spec": nested(depth, leaf),
        })
    };
    api.apply(deep("first"))
        .await
        .expect("the deep object is accepted");
    let kc = server.kubeconfig();

    // Lists: whole objects (the raw fast path) and Tables.
    let (code, out, err) = get(kc, &["deeps", "-o", "json"], &[], common::WAIT).await;
    assert_eq!(code, 0, "{err}");
    let list: Value = crwatch::json::from_str(&out).expect("JSON output");
    assert_eq!(depth_of(&list["items"][0]["spec"]), (depth, "first".into()));
    let (code, out, err) = get(kc, &["deeps"], &[], common::WAIT).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.lines().nth(1).is_some_and(|l| l.starts_with("d1 ")), "{out}");
    let (code, out, err) = get(kc, &["deeps", "d1", "-o", "json"], &[], common::WAIT).await;
    assert_eq!(code, 0, "{err}");
    let one: Value = crwatch::json::from_str(&out).expect("JSON output");
    assert_eq!(depth_of(&one["spec"]), (depth, "first".into()));

    // A watch: the initial list, then a change to the deepest field as a watch event.
    let mut child = Command::new(BIN)
        .args(["get", "deeps", "-w", "-o", "jsonl", "--kubeconfig"])
        .arg(kc)
        .env_remove("KUBECONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("crwatch starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = async || -> Value {
        let line = tokio::time::timeout(common::WAIT, lines.next_line())
            .await
            .expect("a line within 20 s")
            .unwrap()
            .expect("crwatch still running");
        crwatch::json::from_str(&line).expect("a JSON line")
    };
    let first = next().await;
    assert_eq!(depth_of(&first["object"]["spec"]), (depth, "first".into()));
    api.apply(deep("second"))
        .await
        .expect("the deep object is updated");
    let second = next().await;
    assert_eq!(second["type"], "MODIFIED", "{second}");
    assert_eq!(depth_of(&second["object"]["spec"]), (depth, "second".into()));
    child.kill().await.unwrap();
}

/// A plain-HTTP "server" that records each request's head and answers 401.
fn recording_http_server() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let heads = Arc::new(Mutex::new(vec![]));
    let seen = heads.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).is_ok_and(|n| n == 1) {
                head.push(byte[0]);
            }
            seen.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&head).to_lowercase());
            let body = r#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"Unauthorized","reason":"Unauthorized","code":401}"#;
            let _ = write!(
                conn,
                "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (url, heads)
}

#[tokio::test]
async fn the_token_is_not_sent_over_plain_http_unless_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let (url, heads) = recording_http_server();
    let kc = kubeconfig(dir.path(), "kc", &url, "secret-token", None);
    let (code, _, err) = get(&kc, &["configmaps"], &[], common::WAIT).await;
    assert_eq!(
        (code, err.trim_end()),
        (1, "error: You must be logged in to the server (Unauthorized)")
    );
    {
        let heads = heads.lock().unwrap();
        assert!(!heads.is_empty());
        assert!(
            heads
                .iter()
                .all(|h| !h.contains("authorization") && !h.contains("secret-token")),
            "{heads:?}"
        );
    }
    // The explicit opt-in sends it.
    heads.lock().unwrap().clear();
    let (code, _, _) = get(
        &kc,
        &["configmaps"],
        &[("CRWATCH_INSECURE_HTTP_CREDENTIALS", "1")],
        common::WAIT,
    )
    .await;
    assert_eq!(code, 1);
    let heads = heads.lock().unwrap();
    assert!(
        heads
            .iter()
            .any(|h| h.contains("authorization: bearer secret-token")),
        "{heads:?}"
    );
}

#[tokio::test]
async fn a_port_that_accepts_and_never_answers_fails_within_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = vec![];
        while let Ok((conn, _)) = listener.accept().await {
            held.push(conn);
        }
    });
    let kc = kubeconfig(dir.path(), "kc", &url, "t", None);
    for args in [&["configmaps"][..], &["configmaps", "-w"]] {
        let started = std::time::Instant::now();
        // The connect timeout (TCP and TLS handshake) is 10 s; 45 s is for a slow machine.
        let (code, out, err) = get(&kc, args, &[], Duration::from_secs(45)).await;
        eprintln!("{args:?} failed after {:?}: {err}", started.elapsed());
        assert_eq!(code, 1, "{err}");
        assert!(out.is_empty());
        assert_eq!(
            err.trim_end(),
            format!(
                "Unable to connect to the server {url}: timeout connecting to the server (TCP connect or TLS handshake)"
            )
        );
    }
}

/// A free port on the loopback interface.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// An API server on `port` with `token` and a CA of its own, retried while the port is still
/// held by one just stopped.
async fn start_on(port: u16, token: &str) -> ApiServer {
    let deadline = tokio::time::Instant::now() + common::WAIT;
    loop {
        let config = Config {
            port,
            token: Some(token.to_string()),
            bookmark_interval: Duration::from_secs(1),
            ..Config::default()
        };
        match ApiServer::start(config).await {
            Ok(s) => return s,
            Err(e) if tokio::time::Instant::now() < deadline => {
                eprintln!("port {port} not free yet: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("starting on port {port}: {e}"),
        }
    }
}

/// The API server of [`serve_helper`] in a process of its own, so that it stops as a real
/// server does: every connection closed at once.
struct ServerProcess(tokio::process::Child);

/// Start [`serve_helper`] on `port` with `token`; its kubeconfig (written once it serves, with
/// ConfigMap `cm1` in `default`) goes to `kubeconfig`.
async fn serve_apart(port: u16, token: &str, kubeconfig: &Path) -> ServerProcess {
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["serve_helper", "--exact", "--ignored", "--nocapture"])
        .env("ROBUST_SERVE_PORT", port.to_string())
        .env("ROBUST_SERVE_TOKEN", token)
        .env("ROBUST_SERVE_KUBECONFIG", kubeconfig)
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the server process starts");
    let deadline = tokio::time::Instant::now() + common::WAIT;
    while !kubeconfig.exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the server process serves within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ServerProcess(child)
}

/// Not a test: the server process of [`serve_apart`] (does nothing unless run by it).
#[tokio::test]
#[ignore = "a helper the restart tests run as a separate process"]
async fn serve_helper() {
    let Ok(port) = std::env::var("ROBUST_SERVE_PORT") else {
        return;
    };
    let token = std::env::var("ROBUST_SERVE_TOKEN").unwrap();
    let kubeconfig = std::env::var("ROBUST_SERVE_KUBECONFIG").unwrap();
    let server = start_on(port.parse().unwrap(), &token).await;
    server
        .apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm1", "namespace": "default"}}))
        .await
        .unwrap();
    server.write_kubeconfig(Path::new(&kubeconfig)).unwrap();
    std::future::pending::<()>().await;
}

/// Run `crwatch get configmaps -w` with `kc` until `cm1` is listed, kill the server process,
/// start `restarted`, and return stderr up to the first line containing `expected` (within
/// 60 s).
async fn watch_across_restart(
    mut first: ServerProcess,
    kc: &Path,
    restarted: impl AsyncFnOnce() -> ServerProcess,
    expected: &str,
) -> Vec<String> {
    let mut child = Command::new(BIN)
        .args(["get", "configmaps", "-w", "--kubeconfig"])
        .arg(kc)
        .env_remove("KUBECONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("crwatch starts");
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut err = BufReader::new(child.stderr.take().unwrap()).lines();
    let listed = async {
        while let Some(line) = out.next_line().await.unwrap() {
            if line.split_whitespace().nth(1) == Some("cm1") {
                return true;
            }
        }
        false
    };
    if !tokio::time::timeout(common::WAIT, listed).await.unwrap_or(false) {
        let _ = child.kill().await;
        let mut said = vec![];
        while let Ok(Ok(Some(l))) = tokio::time::timeout(Duration::from_secs(1), err.next_line()).await {
            said.push(l);
        }
        panic!("cm1 not listed within 20 s; stderr: {said:#?}");
    }
    first.0.kill().await.unwrap();
    let mut second = restarted().await;
    let mut said = vec![];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !said.last().is_some_and(|l: &String| l.contains(expected)) {
        let line = tokio::time::timeout_at(deadline, err.next_line())
            .await
            .unwrap_or_else(|_| panic!("no {expected:?} on stderr within 60 s; said {said:#?}"))
            .unwrap()
            .expect("crwatch still running");
        said.push(line);
    }
    child.kill().await.unwrap();
    second.0.kill().await.unwrap();
    said
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_whose_server_comes_back_with_a_new_ca_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let kc = dir.path().join("kc");
    let first = serve_apart(port, "tok", &kc).await;
    let kc_new = dir.path().join("kc-new");
    let said = watch_across_restart(
        first,
        &kc,
        async || serve_apart(port, "tok", &kc_new).await,
        "certificate signed by unknown authority",
    )
    .await;
    eprintln!("{said:#?}");
    assert!(said[0].starts_with("crwatch: watch interrupted ("), "{said:#?}");
    let last = said.last().unwrap();
    assert!(
        last.starts_with(
            "crwatch: still reconnecting: watch failed: tls: failed to verify certificate: x509: certificate signed by unknown authority ("
        ),
        "{last}"
    );
    // Each cause once: no line repeats the one before it.
    assert!(said.windows(2).all(|w| w[0] != w[1]), "{said:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_whose_token_stops_working_says_unauthorized() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let first = serve_apart(port, "old-token", &dir.path().join("kc-server")).await;
    let kc = kubeconfig(
        dir.path(),
        "kc",
        &format!("https://127.0.0.1:{port}"),
        "old-token",
        None,
    );
    let kc_new = dir.path().join("kc-new");
    let said = watch_across_restart(
        first,
        &kc,
        async || serve_apart(port, "new-token", &kc_new).await,
        "Unauthorized",
    )
    .await;
    eprintln!("{said:#?}");
    assert_eq!(
        said.last().unwrap(),
        "crwatch: still reconnecting: watch failed: Unauthorized (401)"
    );
}

/// A client from `kubeconfig` text, built as the CLI builds its clients.
async fn client_from(text: &str) -> kube::Client {
    let kc = kube::config::Kubeconfig::from_yaml(text).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    crwatch::client::build(config, &crwatch::client::ClientOptions::default()).unwrap()
}

/// Wait until the informer's health names `cause` (within 20 s), and return its last error.
async fn failing_with(informer: &crwatch::informer::Informer<ConfigMap>, cause: &str) -> String {
    let deadline = tokio::time::Instant::now() + common::WAIT;
    loop {
        let health = informer.health();
        if let Some(e) = health.last_error.filter(|e| e.contains(cause)) {
            assert!(!health.connected);
            return e;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {cause:?} in the health within 20 s: {:?}",
            informer.health()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_informers_health_names_the_certificate_or_authorization_problem() {
    let server = TestServer::start().await.expect("server starts");
    let other = TestServer::start().await.expect("server starts");
    let text = server.server().kubeconfig_yaml();
    let ca = |s: &TestServer| {
        let yaml = s.server().kubeconfig_yaml();
        yaml.lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix("certificate-authority-data: ")
                    .map(str::to_string)
            })
            .unwrap()
    };
    // Another server's CA: the certificate is not trusted.
    let wrong_ca = text.replace(&ca(&server), &ca(&other));
    let informer = crwatch::informer::Informer::new(
        crwatch::source::kube::KubeSource::<ConfigMap>::namespaced(client_from(&wrong_ca).await, "default"),
    );
    let cancel = tokio_util::sync::CancellationToken::new();
    informer.start(cancel.clone());
    let e = failing_with(&informer, "certificate signed by unknown authority").await;
    assert!(
        e.starts_with("tls: failed to verify certificate: x509: ")
            || e.contains(": tls: failed to verify certificate: x509: "),
        "{e}"
    );
    cancel.cancel();

    // A token the server does not know: 401, said as such.
    let wrong_token = text.replace(server.server().token(), "not-the-token");
    let informer =
        crwatch::informer::Informer::new(crwatch::source::kube::KubeSource::<ConfigMap>::namespaced(
            client_from(&wrong_token).await,
            "default",
        ));
    let cancel = tokio_util::sync::CancellationToken::new();
    informer.start(cancel.clone());
    failing_with(&informer, "Unauthorized (401)").await;
    cancel.cancel();
}

/// What the CLI does with one object (decode, clone, serialize, diff, drop) at the real API
/// server's deepest (10,000 levels: Go's JSON decoder refuses more), on a stack of the size the
/// binary gives its threads (a 2 MiB tokio worker overflows near 3,000 levels in debug builds).
#[test]
fn an_object_nested_10000_deep_survives_what_the_cli_does_with_it() {
    let depth: usize = std::env::var("ROBUST_STACK_DEPTH")
        .ok()
        .and_then(|d| d.parse().ok())
        .unwrap_or(10_000);
    let doc = |leaf: &str| {
        format!(
            r#"{{"apiVersion":"test.example.com/v1","kind":"Deep","metadata":{{"name":"d1","namespace":"default"}},"spec":{}{{"leaf":"{leaf}"}}{}}}"#,
            r#"{"a":"#.repeat(depth),
            "}".repeat(depth)
        )
    };
    let (a, b) = (doc("first"), doc("second"));
    std::thread::Builder::new()
        .stack_size(crwatch_cli::THREAD_STACK_BYTES)
        .spawn(move || {
            let a: kube::api::DynamicObject = crwatch::json::from_str(&a).unwrap();
            let b: kube::api::DynamicObject = crwatch::json::from_str(&b).unwrap();
            let copy = a.clone();
            let value = serde_json::to_value(&copy).unwrap();
            assert_eq!(depth_of(&value["spec"]), (depth, "first".into()));
            let text = serde_json::to_string(&b).unwrap();
            assert!(text.contains("second"));
            let diff = crwatch::diff::Diff::of(&a, &b);
            assert_eq!(diff.len(), 1);
            crwatch::json::drop_deep(value);
        })
        .unwrap()
        .join()
        .expect("no stack overflow");
}

/// A stub API server serving ConfigMaps whose list first fails with a 500 whose (non-Status)
/// body holds a password, then lists one good object and one that does not decode, holding
/// the password too; watches stay open and silent.
async fn leaky_server(dir: &Path) -> PathBuf {
    use axum::http::{StatusCode, Uri, header};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let lists = Arc::new(AtomicUsize::new(0));
    let app = axum::Router::new().fallback(move |uri: Uri| {
        let lists = lists.clone();
        async move {
            let ok = |v: Value| (StatusCode::OK, v.to_string());
            let (code, body) = match uri.path() {
                "/api" => ok(json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []})),
                "/api/v1" => ok(json!({"kind": "APIResourceList", "groupVersion": "v1", "resources": [
                    {"name": "configmaps", "singularName": "configmap", "namespaced": true, "kind": "ConfigMap",
                     "verbs": ["get", "list", "watch"], "shortNames": ["cm"]}]})),
                "/apis" => ok(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": []})),
                "/api/v1/namespaces/default/configmaps" if uri.query().is_some_and(|q| q.contains("watch=true")) => {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    ok(json!({}))
                }
                "/api/v1/namespaces/default/configmaps" if lists.fetch_add(1, Ordering::SeqCst) == 0 => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "<html>upstream said: password=hunter2</html>".to_string(),
                ),
                "/api/v1/namespaces/default/configmaps" => ok(json!({
                    "kind": "ConfigMapList", "apiVersion": "v1", "metadata": {"resourceVersion": "5"},
                    "items": [
                        {"metadata": {"name": "good", "namespace": "default", "resourceVersion": "4"}, "data": {"k": "v"}},
                        {"metadata": {"name": "bad", "namespace": "default", "resourceVersion": "5", "labels": "hunter2"}}
                    ]
                })),
                _ => (StatusCode::NOT_FOUND, json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                    "message": "not found", "reason": "NotFound", "code": 404}).to_string()),
            };
            (code, [(header::CONTENT_TYPE, "application/json")], body)
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    kubeconfig(dir, "leaky", &url, "t", None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_bodies_never_reach_stderr_or_logs() {
    let dir = tempfile::tempdir().unwrap();
    let kc = leaky_server(dir.path()).await;
    let mut child = Command::new(BIN)
        .args(["get", "configmaps", "-w", "-o", "name", "--kubeconfig"])
        .arg(&kc)
        .env_remove("KUBECONFIG")
        .env("CRWATCH_LOG", "trace")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("crwatch starts");
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let err = BufReader::new(child.stderr.take().unwrap()).lines();
    let stderr = tokio::spawn(async move {
        let mut err = err;
        let mut all = vec![];
        while let Ok(Some(l)) = err.next_line().await {
            all.push(l);
        }
        all
    });
    // The 500 is retried (800 ms), then the good object is listed despite the bad one.
    let line = tokio::time::timeout(common::WAIT, out.next_line())
        .await
        .expect("a line within 20 s")
        .unwrap()
        .expect("crwatch still running");
    assert_eq!(line, "configmap/good");
    child.kill().await.unwrap();
    let said = stderr.await.unwrap();
    assert!(
        said.iter()
            .any(|l| l.contains("an error on the server has prevented the request from succeeding (500)")),
        "{said:#?}"
    );
    assert!(
        said.iter().any(|l| l.contains("could not be decoded")),
        "{said:#?}"
    );
    let leaks: Vec<_> = said.iter().filter(|l| l.contains("hunter2")).collect();
    assert!(leaks.is_empty(), "{leaks:#?}");
}

/// An informer snapshot holding a deep object loads again after a restart (it is the server's
/// JSON, written back by crwatch).
#[test]
fn a_snapshot_with_a_deep_object_loads_again() {
    let dir = tempfile::tempdir().unwrap();
    let file = crwatch::store::snapshot::SnapshotFile::new(dir.path().join("snapshot.json"));
    let mut object: kube::api::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "test.example.com/v1", "kind": "Deep", "metadata": {"name": "d1", "namespace": "default"},
    }))
    .unwrap();
    object.data = json!({ "spec": nested(500, "deep") });
    file.save(&crwatch::store::snapshot::Snapshot::new(None, vec![object]))
        .unwrap();
    let loaded = file
        .load::<kube::api::DynamicObject>()
        .unwrap()
        .expect("the snapshot is there");
    assert_eq!(depth_of(&loaded.objects[0].data["spec"]), (500, "deep".into()));
}
