//! Helpers shared by the `crwatch` CLI tests: an API server with the Database CRD, sample
//! objects, ANSI stripping and terminal-screen reading, and the watch scenario that
//! `tests/get.rs` checks in a pipe and `tests/pty.rs` on a terminal, line by line.

// Each test binary uses a part of this module.
#![allow(dead_code)]

pub mod changes;

use std::path::Path;
use std::time::Duration;

use crwatch_apiserver::TestServer;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::discovery::ApiResource;
use serde_json::{Value, json};

/// The built `crwatch` binary.
pub const BIN: &str = env!("CARGO_BIN_EXE_crwatch");

/// How long a test waits for output or a condition.
pub const WAIT: Duration = Duration::from_secs(20);

/// A test server with the Database CRD installed.
pub async fn server() -> TestServer {
    let server = TestServer::start().await.expect("server starts");
    let crd = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/database-crd.yaml");
    server.server().apply_file(&crd).await.expect("CRD applied");
    server
}

/// A Database manifest.
pub fn database(name: &str, ns: &str, size: &str, labels: Value) -> Value {
    json!({
        "apiVersion": "stable.example.com/v1",
        "kind": "Database",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"engine": "PostgreSQL", "version": "15", "size": size},
    })
}

/// The Databases of a namespace, through the server's kube client.
pub fn databases(server: &TestServer, ns: &str) -> Api<DynamicObject> {
    let ar = ApiResource {
        group: "stable.example.com".into(),
        version: "v1".into(),
        api_version: "stable.example.com/v1".into(),
        kind: "Database".into(),
        plural: "databases".into(),
    };
    Api::namespaced_with(server.client(), ns, &ar)
}

/// The whitespace-separated words of a line.
pub fn words(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

/// `s` without ANSI escape sequences (CSI `ESC [ ... final`, and two-byte `ESC x`).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            out.push(c);
            continue;
        }
        if chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        } else {
            chars.next();
        }
    }
    out
}

/// The complete lines a terminal shows for `raw` output: escapes stripped, `\r\n` as a line
/// end, and a bare `\r` (a spinner redrawing its line) keeping only what was written after it.
pub fn screen_lines(raw: &str) -> Vec<String> {
    let plain = strip_ansi(raw).replace("\r\n", "\n");
    let Some(end) = plain.rfind('\n') else {
        return vec![];
    };
    plain[..end]
        .split('\n')
        .map(|l| l.rsplit('\r').next().unwrap_or("").to_string())
        .collect()
}

/// The cells of a table `row`, cut where the `header`'s columns start: a row whose columns do
/// not line up with the header gives cells with stray or missing characters.
pub fn cells_at(header: &str, row: &str) -> Vec<String> {
    let h: Vec<char> = header.chars().collect();
    let starts: Vec<usize> = (0..h.len())
        .filter(|&i| h[i] != ' ' && (i == 0 || h[i - 1] == ' '))
        .collect();
    let r: Vec<char> = row.chars().collect();
    starts
        .iter()
        .enumerate()
        .map(|(k, &s)| {
            let e = starts.get(k + 1).copied().unwrap_or(r.len()).min(r.len());
            let cell: String = r.get(s.min(e)..e).unwrap_or_default().iter().collect();
            // The cell before a column start must end in a space, or the row is misaligned.
            if s > 0 && s < r.len() && r[s - 1] != ' ' {
                format!("<misaligned at {s}>{cell}")
            } else {
                cell.trim().to_string()
            }
        })
        .collect()
}

/// Wait until `cond` holds, checking every 20 ms, for at most [`WAIT`].
pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    tokio::time::timeout(WAIT, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting until {what}"));
}

/// The arguments of the scenario's watch (before `--kubeconfig`).
pub const SCENARIO_ARGS: &[&str] = &["get", "databases", "-w", "--diff"];

/// The scenario's state before the watch starts: one Database.
pub async fn scenario_setup(server: &TestServer) {
    server
        .server()
        .apply(database("my-app-db", "default", "10Gi", json!({})))
        .await
        .expect("database created");
}

/// The scenario's changes, once the watch shows the ADDED row: a spec change, a status change
/// (as an operator writes it), and the deletion.
pub async fn scenario_changes(server: &TestServer) {
    let api = databases(server, "default");
    api.patch(
        "my-app-db",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"size": "20Gi"}})),
    )
    .await
    .expect("spec patched");
    api.patch_status(
        "my-app-db",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Ready", "ready": true}})),
    )
    .await
    .expect("status patched");
    api.delete("my-app-db", &Default::default())
        .await
        .expect("deleted");
}

/// Whether `lines` include the scenario's last row.
pub fn scenario_done(lines: &[String]) -> bool {
    lines.iter().any(|l| l.starts_with("DELETED"))
}

fn is_age(cell: &str) -> bool {
    cell.strip_suffix('s')
        .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
}

/// Check the scenario's output (escapes stripped) line by line: the header, the rows aligned
/// under it, and under each MODIFIED row its diff, spec changes apart from status changes.
pub fn check_scenario(lines: &[String]) {
    let lines: Vec<&str> = lines
        .iter()
        .map(String::as_str)
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(lines.len(), 9, "{lines:#?}");
    let header = lines[0];
    assert_eq!(
        words(header),
        ["EVENT", "NAME", "ENGINE", "VERSION", "PHASE", "READY", "AGE"],
        "{lines:#?}"
    );
    let row = |i: usize, want: [&str; 6]| {
        let cells = cells_at(header, lines[i]);
        assert_eq!(cells.len(), 7, "{:?}", lines[i]);
        assert_eq!(cells[..6], want, "row {i}: {:?} (all: {lines:#?})", lines[i]);
        assert!(is_age(&cells[6]), "row {i} age: {:?}", lines[i]);
    };
    row(1, ["ADDED", "my-app-db", "PostgreSQL", "15", "", ""]);
    row(2, ["MODIFIED", "my-app-db", "PostgreSQL", "15", "", ""]);
    assert_eq!(lines[3], "    spec:");
    assert_eq!(lines[4], "      spec.size: \"10Gi\" → \"20Gi\"");
    row(5, ["MODIFIED", "my-app-db", "PostgreSQL", "15", "Ready", "true"]);
    assert_eq!(lines[6], "    status:");
    assert_eq!(lines[7], "      + status: {\"phase\":\"Ready\",\"ready\":true}");
    row(8, ["DELETED", "my-app-db", "PostgreSQL", "15", "Ready", "true"]);
}
