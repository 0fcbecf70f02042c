//! `crwatch serve` end to end: the built binary over an in-process crwatch-apiserver, with
//! real xDS clients crwatch did not write (Python grpcio + Envoy's xds-protos): a delta and a
//! state-of-the-world client (subscribe, receive, ACK, NACK and its `Accepted` condition,
//! unsubscribe, resubscribe, reconnect), a slow subscriber beside a fast one (bounded memory,
//! coalescing), metrics, the token, and the plaintext-on-loopback rule.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::BIN;
use crwatch_apiserver::TestServer;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::discovery::ApiResource;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

const TYPE_URL: &str = "test.crwatch.io/v1/Widget";
const TOKEN: &str = "s3cret-token-for-tests";

fn py_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../crwatch-serve/tests/py")
}

fn widgets_ar() -> ApiResource {
    ApiResource {
        group: "test.crwatch.io".into(),
        version: "v1".into(),
        api_version: "test.crwatch.io/v1".into(),
        kind: "Widget".into(),
        plural: "widgets".into(),
    }
}

/// A server with the Widget CRD (status subresource) and widgets `a` and `b` in `ns`.
async fn setup(ns: &str) -> TestServer {
    let server = TestServer::start().await.expect("server starts");
    server
        .server()
        .apply(json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": "widgets.test.crwatch.io"},
            "spec": {
                "group": "test.crwatch.io",
                "names": {"kind": "Widget", "plural": "widgets", "singular": "widget", "listKind": "WidgetList"},
                "scope": "Namespaced",
                "versions": [{"name": "v1", "served": true, "storage": true,
                    "subresources": {"status": {}},
                    "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}],
            },
        }))
        .await
        .expect("CRD");
    server
        .server()
        .apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}))
        .await
        .expect("namespace");
    for name in ["a", "b"] {
        server
            .server()
            .apply(json!({
                "apiVersion": "test.crwatch.io/v1", "kind": "Widget",
                "metadata": {"name": name, "namespace": ns, "labels": {"app": "demo"}},
                "spec": {"template": "hello {{name}}"},
            }))
            .await
            .expect("widget");
    }
    server
}

struct Serve {
    child: Child,
    addr: String,
    metrics: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// `crwatch serve -r widgets -n NS --listen 127.0.0.1:0 --token-file F --metrics ...`, once it
/// says where it listens.
async fn serve(server: &TestServer, ns: &str) -> Serve {
    serve_with(server, ns, &[]).await
}

async fn serve_with(server: &TestServer, ns: &str, extra: &[&std::ffi::OsStr]) -> Serve {
    let token = server.dir().join("xds-token");
    std::fs::write(&token, format!("{TOKEN}\n")).expect("token file");
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "-r",
            "widgets",
            "-n",
            ns,
            "--listen",
            "127.0.0.1:0",
            "--metrics",
            &metrics,
        ])
        .arg("--token-file")
        .arg(&token)
        .args(extra)
        .arg("--kubeconfig")
        .arg(server.kubeconfig())
        .env_remove("KUBECONFIG")
        .env("CRWATCH_LOG", "warn,crwatch_serve=info")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("crwatch serve starts");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let addr = tokio::time::timeout(common::WAIT, async {
        while let Some(line) = lines.next_line().await.expect("stderr line") {
            eprintln!("serve: {line}");
            if let Some(rest) =
                line.strip_prefix("crwatch serve: xDS (ADS, state of the world and delta) on ")
            {
                let addr = rest.split_whitespace().next().unwrap_or_default();
                return addr.trim_start_matches("https://").to_string();
            }
        }
        panic!("crwatch serve ended before listening");
    })
    .await
    .expect("crwatch serve listens within 20 s");
    assert!(!addr.is_empty(), "the listen address is printed");
    // Keep echoing its log (NACK warnings, status writes) into the test output.
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("serve: {line}");
        }
    });
    Serve { child, addr, metrics }
}

/// Run a Python client script with a timeout; its output must end with `ok_line`.
async fn python(script: &str, args: &[&str], ok_line: &str) -> String {
    let py = crwatch_testsupport::python::python().await.expect("python venv");
    let out = Command::new(py)
        .arg(py_dir().join(script))
        .args(args)
        .current_dir(py_dir())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(180), out)
        .await
        .unwrap_or_else(|_| panic!("{script} ends within 180 s"))
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{script} stdout:\n{stdout}\n{script} stderr:\n{stderr}");
    assert!(
        out.status.success() && stdout.contains(ok_line),
        "{script} failed"
    );
    stdout
}

async fn scrape(metrics: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(metrics)
        .await
        .expect("metrics listener");
    stream
        .write_all(
            format!("GET /metrics HTTP/1.1\r\nHost: {metrics}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .expect("request");
    let mut body = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut stream, &mut body)
        .await
        .expect("response");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_client_subscribes_acks_nacks_unsubscribes_resubscribes_and_reconnects() {
    let ns = "xds-delta";
    let server = setup(ns).await;
    let s = serve(&server, ns).await;
    let kc = server.kubeconfig().to_string_lossy().into_owned();
    python("xds_delta.py", &[&s.addr, TOKEN, TYPE_URL, ns, &kc], "DELTA OK").await;
    let m = scrape(&s.metrics).await;
    assert!(
        m.lines()
            .any(|l| l.starts_with("crwatch_xds_type_nacks_total{") && !l.ends_with(" 0")),
        "NACKs are counted:\n{m}"
    );
    assert!(m.contains("crwatch_xds_snapshot_resources{type_url=\"test.crwatch.io/v1/Widget\"}"));
    drop(s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotw_client_gets_the_whole_state_acks_nacks_and_reconnects_without_resend() {
    let ns = "xds-sotw";
    let server = setup(ns).await;
    let s = serve(&server, ns).await;
    let kc = server.kubeconfig().to_string_lossy().into_owned();
    python("xds_sotw.py", &[&s.addr, TOKEN, TYPE_URL, ns, &kc], "SOTW OK").await;
    // SIGTERM: every stream ends and the server exits cleanly.
    let mut child = s.child;
    let pid = child.id().expect("pid").to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .expect("kill");
    assert!(killed.success());
    let status = tokio::time::timeout(common::WAIT, child.wait())
        .await
        .expect("crwatch serve stops within 20 s of SIGTERM")
        .expect("exit status");
    assert!(status.success(), "{status}");
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_costs_bounded_memory_and_gets_the_latest_state() {
    let ns = "xds-slow";
    let server = setup(ns).await;
    let s = serve(&server, ns).await;
    let pid = s.child.id().expect("pid");
    let py = crwatch_testsupport::python::python().await.expect("python venv");
    let mut client = Command::new(py)
        .arg(py_dir().join("xds_slow.py"))
        .args([&s.addr, TOKEN, TYPE_URL, &format!("{ns}/a")])
        .current_dir(py_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python runs");
    let mut stdin = client.stdin.take().expect("stdin");
    let mut out = BufReader::new(client.stdout.take().expect("stdout")).lines();
    let ready = tokio::time::timeout(Duration::from_secs(60), out.next_line())
        .await
        .expect("the clients connect")
        .expect("a line");
    assert_eq!(ready.as_deref(), Some("READY"));
    let api: Api<DynamicObject> = Api::namespaced_with(server.client(), ns, &widgets_ar());
    let before = rss_kib(pid);
    let mut peak = before;
    // 300 changes of a 64 KiB object (19 MiB in all), as fast as the API server takes them.
    let filler = "x".repeat(64 * 1024);
    let started = Instant::now();
    let n = 300;
    for i in 0..n {
        let patch = json!({"spec": {"template": format!("{filler} v{i}")}});
        api.patch("a", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("patch");
        if i % 20 == 0 {
            peak = peak.max(rss_kib(pid));
        }
    }
    let flood = started.elapsed();
    let m = scrape(&s.metrics).await;
    let pending: Vec<&str> = m
        .lines()
        .filter(|l| l.starts_with("crwatch_xds_pending_resources{") && l.contains("py-slow"))
        .collect();
    println!(
        "flood of {n} changes took {flood:?}; server RSS {before} KiB before, peak {peak} KiB; slow subscriber: {pending:?}"
    );
    stdin
        .write_all(format!("GO v{}\n", n - 1).as_bytes())
        .await
        .expect("stdin");
    let mut lines = vec![];
    let done = tokio::time::timeout(Duration::from_secs(90), async {
        while let Ok(Some(line)) = out.next_line().await {
            println!("xds_slow.py: {line}");
            let ok = line.starts_with("SLOW OK");
            lines.push(line);
            if ok {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    assert!(
        done,
        "the slow and fast subscribers got the latest state: {lines:?}"
    );
    let after = rss_kib(pid);
    println!("server RSS after: {after} KiB");
    // The snapshots in flight are a few copies of one 64 KiB object; the rest is allocator
    // slack. Unbounded buffering would hold the 19 MiB of changes, and more per subscriber.
    assert!(
        peak.saturating_sub(before) < 48 * 1024,
        "server memory grew by {} KiB during the flood",
        peak.saturating_sub(before)
    );
    let queued: Vec<u64> = pending
        .iter()
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    assert!(
        !queued.is_empty() && queued.iter().all(|q| *q <= 2),
        "the slow subscriber's queue is at most the latest state of each of the 2 resources: {pending:?}"
    );
    drop(s);
}

#[tokio::test]
async fn plaintext_is_refused_off_loopback() {
    let out = Command::new(BIN)
        .args(["serve", "-r", "configmaps", "--listen", "0.0.0.0:0"])
        .env("KUBECONFIG", "/nonexistent")
        .output()
        .await
        .expect("crwatch runs");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refusing to serve plaintext gRPC on 0.0.0.0:0"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_client_certificates() {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType};
    let ns = "xds-tls";
    let server = setup(ns).await;
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "crwatch serve test CA");
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("CA");
    let issue = |name: &str| {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(vec![name.to_string()]).expect("params");
        params
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().expect("ip")));
        let cert = params.signed_by(&key, &ca).expect("certificate");
        (cert.pem(), key.serialize_pem())
    };
    let dir = server.dir().to_path_buf();
    let write = |name: &str, pem: &str| {
        let p = dir.join(name);
        std::fs::write(&p, pem).expect("pem");
        p
    };
    let ca_pem = write("ca.pem", &ca.pem());
    let (c, k) = issue("localhost");
    let (server_cert, server_key) = (write("server.pem", &c), write("server-key.pem", &k));
    let (c, k) = issue("subscriber");
    let (client_cert, client_key) = (write("client.pem", &c), write("client-key.pem", &k));
    let s = serve_with(
        &server,
        ns,
        &[
            "--tls-cert".as_ref(),
            server_cert.as_os_str(),
            "--tls-key".as_ref(),
            server_key.as_os_str(),
            "--client-ca".as_ref(),
            ca_pem.as_os_str(),
        ],
    )
    .await;
    let p = |p: &PathBuf| p.to_string_lossy().into_owned();
    python(
        "xds_tls.py",
        &[
            &s.addr,
            TOKEN,
            TYPE_URL,
            &p(&ca_pem),
            &p(&client_cert),
            &p(&client_key),
        ],
        "TLS OK",
    )
    .await;
    drop(s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_of_documents_is_served_kind_by_kind() {
    let dir = tempfile::tempdir().expect("temporary directory");
    std::fs::write(
        dir.path().join("prompts.yaml"),
        "apiVersion: ai.example.com/v1\nkind: PromptTemplate\nmetadata: {name: greet, namespace: ai}\nspec: {template: 'hello {{name}}'}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: other, namespace: ai}\ndata: {template: x}\n",
    )
    .expect("file");
    let uri = format!("file://{}", dir.path().display());
    let mut child = Command::new(BIN)
        .args(["serve", "-r", &uri, "--listen", "127.0.0.1:0"])
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("crwatch serve starts");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let addr = tokio::time::timeout(common::WAIT, async {
        while let Some(line) = lines.next_line().await.expect("stderr line") {
            if let Some(rest) =
                line.strip_prefix("crwatch serve: xDS (ADS, state of the world and delta) on ")
            {
                return rest.split_whitespace().next().unwrap_or_default().to_string();
            }
        }
        panic!("crwatch serve ended before listening");
    })
    .await
    .expect("listening");
    let out = python(
        "xds_fetch.py",
        &[&addr, "ai.example.com/v1/PromptTemplate"],
        "FETCH OK",
    )
    .await;
    assert!(out.lines().any(|l| l == "ai/greet hello {{name}}"), "{out}");
    let out = python("xds_fetch.py", &[&addr, "core/v1/ConfigMap"], "FETCH OK").await;
    assert!(out.lines().any(|l| l == "ai/other x"), "{out}");
}
