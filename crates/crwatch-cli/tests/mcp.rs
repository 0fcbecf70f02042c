//! `crwatch mcp` with the official MCP Python SDK as its client (a client crwatch did not
//! write), on crwatch-apiserver: both protocol revisions (2025-11-25 through `initialize`,
//! 2026-07-28 through `server/discover` and `subscriptions/listen`), over stdio and over
//! streamable HTTP with a bearer token. The client lists with pagination, reads, subscribes,
//! sees the update after a real `kubectl patch`, and calls every tool
//! (crates/crwatch-serve/tests/py/mcp_client.py); Secret values never reach it.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crwatch_apiserver::TestServer;

const CRWATCH: &str = env!("CARGO_BIN_EXE_crwatch");
/// The whole client scenario, kubectl calls included.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(300);

fn manifests(ns: &str) -> String {
    let mut out = format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n");
    for i in 1..=4 {
        out += &format!(
            "---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: watched-{i}\n  namespace: {ns}\n  \
             labels: {{app: mcp-test}}\ndata:\n  k: v1\n"
        );
    }
    out += &format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: db-credentials\n  namespace: {ns}\n\
         data:\n  password: aHVudGVyMg==\n  username: YWRtaW4=\n"
    );
    out += &format!(
        "---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  namespace: {ns}\nspec:\n  \
         replicas: 1\n  selector:\n    matchLabels: {{app: web}}\n  template:\n    metadata:\n      labels: {{app: web}}\n    \
         spec:\n      containers:\n      - name: nginx\n        image: nginx:1.27\n"
    );
    out
}

fn kubectl_apply(server: &TestServer, yaml: &str) {
    let mut child = server
        .kubectl()
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(yaml.as_bytes())
        .expect("manifests written");
    let out = child.wait_with_output().expect("kubectl output");
    assert!(
        out.status.success(),
        "kubectl apply failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn mcp_args(server: &TestServer, ns: &str) -> Vec<String> {
    [
        "mcp",
        "--kubeconfig",
        &server.kubeconfig().display().to_string(),
        "-n",
        ns,
        "-r",
        "configmaps",
        "-r",
        "secrets",
        "--page-size",
        "2",
        "--allow-writes",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Run the Python client to its end (or [`CLIENT_TIMEOUT`]) and check it said OK.
async fn run_client(server: &TestServer, ns: &str, revision: &str, transport: &[String]) {
    let python: PathBuf = crwatch_testsupport::python::python().await.expect("python venv");
    let script =
        crwatch_testsupport::python::workspace_root().join("crates/crwatch-serve/tests/py/mcp_client.py");
    let mut cmd = tokio::process::Command::new(python);
    cmd.arg(script)
        .args(["--revision", revision, "--namespace", ns, "--kubeconfig"])
        .arg(server.kubeconfig())
        .args(transport)
        .env("KUBECACHEDIR", server.dir().join("kube-cache"))
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(CLIENT_TIMEOUT, cmd.output())
        .await
        .expect("the MCP client finished in time")
        .expect("the MCP client ran");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report = format!("--- stdout\n{stdout}\n--- stderr\n{stderr}");
    assert!(out.status.success(), "the MCP client failed\n{report}");
    let last = stdout.lines().last().unwrap_or_default();
    assert!(last.starts_with(&format!("OK {revision}")), "{report}");
    assert!(
        !stdout.contains("aHVudGVyMg=="),
        "a Secret value reached the client\n{report}"
    );
    println!("{report}");
}

async fn stdio(revision: &str, ns: &str) {
    let server = TestServer::start().await.expect("server");
    kubectl_apply(&server, &manifests(ns));
    let mut transport = vec!["--stdio".to_string(), CRWATCH.to_string()];
    transport.extend(mcp_args(&server, ns));
    run_client(&server, ns, revision, &transport).await;
}

/// Start `crwatch mcp --http 127.0.0.1:0` and read its URL from stderr.
fn start_http(server: &TestServer, ns: &str, token_file: &Path) -> (KillOnDrop, String) {
    let mut child = Command::new(CRWATCH)
        .args(mcp_args(server, ns))
        .args(["--http", "127.0.0.1:0", "--token-file"])
        .arg(token_file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("crwatch mcp starts");
    let stderr = child.stderr.take().expect("stderr");
    let child = KillOnDrop(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("crwatch mcp: {line}");
            if let Some(url) = line.split_whitespace().find(|w| w.starts_with("http://")) {
                let _ = tx.send(url.to_string());
            }
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("crwatch mcp printed its URL");
    (child, url)
}

async fn http(revision: &str, ns: &str) {
    let server = TestServer::start().await.expect("server");
    kubectl_apply(&server, &manifests(ns));
    let token = "t0ken-for-the-mcp-test";
    let token_file = server.dir().join("mcp-token");
    std::fs::write(&token_file, format!("{token}\n")).expect("token file");
    let (_mcp, url) = start_http(&server, ns, &token_file);
    let transport = vec!["--url".into(), url, "--token".into(), token.into()];
    run_client(&server, ns, revision, &transport).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn stdio_2025_11_25() {
    stdio("legacy", "mcp-stdio-legacy").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn stdio_2026_07_28() {
    stdio("modern", "mcp-stdio-modern").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn http_2025_11_25() {
    http("legacy", "mcp-http-legacy").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn http_2026_07_28() {
    http("modern", "mcp-http-modern").await;
}

#[test]
fn refuses_a_public_address_without_a_token() {
    let out = Command::new(CRWATCH)
        .args(["mcp", "--http", "0.0.0.0:0", "--kubeconfig", "/nonexistent"])
        .output()
        .expect("crwatch runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("without a token"), "{stderr}");
}

#[test]
fn range_checks_its_settings() {
    let out = Command::new(CRWATCH)
        .args(["mcp", "--page-size", "0", "--kubeconfig", "/nonexistent"])
        .output()
        .expect("crwatch runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--page-size 0 is out of range"), "{stderr}");
}
