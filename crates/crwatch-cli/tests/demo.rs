//! `crwatch demo` end to end: the built binary runs the whole script and ends by itself, its
//! watch output checked line by line; `--keep` leaves a server that kubectl can use until
//! Ctrl-C; and an operator plugged in through the library takes over the status steps.
//!
//! With the `demo-operator` feature (`cargo test -p crwatch-cli --features demo-operator --test
//! demo`, as scripts/test runs it), the demo with the real Database operator on a local
//! PostgreSQL is checked too, and its fallback to the script when PostgreSQL is missing.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{BIN, WAIT, cells_at, words};
use futures::StreamExt;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::discovery::ApiResource;
use kube::runtime::watcher;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

#[tokio::test]
async fn the_demo_plays_its_script_and_ends_by_itself() {
    let out = Command::new(BIN)
        .args(["demo", "--pace", "0s", "--no-operator"])
        .env_remove("NO_COLOR")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(WAIT, out)
        .await
        .expect("the demo ends within 20 s")
        .expect("the demo runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    let header = lines[0];
    assert_eq!(
        words(header),
        [
            "EVENT",
            "NAMESPACE",
            "NAME",
            "ENGINE",
            "VERSION",
            "PHASE",
            "READY",
            "AGE"
        ]
    );
    // Rows (without AGE) and diff lines, in order; rows cut where the header's columns start.
    let shown: Vec<String> = lines[1..]
        .iter()
        .map(|l| {
            if l.starts_with(' ') {
                l.to_string()
            } else {
                cells_at(header, l)[..7].join("|")
            }
        })
        .collect();
    let expected = [
        "ADDED|default|my-app-db|PostgreSQL|15||",
        "ADDED|analytics|reports-db|MySQL|11||",
        "MODIFIED|default|my-app-db|PostgreSQL|15|Provisioning|false",
        "    status:",
        "      + status: {\"phase\":\"Provisioning\",\"ready\":false,\"message\":\"Creating database default_my_app_db\"}",
        "MODIFIED|default|my-app-db|PostgreSQL|15|Ready|true",
        "    status:",
        "      status.phase: \"Provisioning\" → \"Ready\"",
        "      status.ready: false → true",
        "      status.message: \"Creating database default_my_app_db\" → \"Database is ready\"",
        "      + status.connectionString: \"postgresql://db.example:5432/default_my_app_db\"",
        "      + status.observedGeneration: 1",
        "MODIFIED|default|my-app-db|PostgreSQL|15|Ready|true",
        "    spec:",
        "      spec.size: \"1Gi\" → \"2Gi\"",
        "MODIFIED|default|my-app-db|PostgreSQL|15|Ready|true",
        "    spec:",
        // Users are a list-map keyed by username in the CRD: the diff names the user.
        "      + spec.users[appuser]: {\"username\":\"appuser\"}",
        "DELETED|analytics|reports-db|MySQL|11||",
    ];
    assert_eq!(shown, expected, "{stdout}");
    // The narration, on stderr, undimmed in a pipe.
    let said: Vec<&str> = stderr.lines().filter(|l| l.starts_with("→ ")).collect();
    assert_eq!(said.len(), 9, "{stderr}");
    assert_eq!(said[0], "→ crwatch get databases -A -w --diff");
    assert_eq!(said[1], "→ kubectl apply -f my-app-db.yaml");
    assert!(said[4].starts_with("→ kubectl patch db my-app-db --subresource=status --type=merge -p '{\"status\":{\"phase\":\"Provisioning\""));
    assert_eq!(
        said[6],
        "→ kubectl patch db my-app-db --type=merge -p '{\"spec\":{\"size\":\"2Gi\"}}'"
    );
    assert_eq!(said[8], "→ kubectl delete db reports-db -n analytics");
    assert!(
        stderr.contains("    kind: Database\n"),
        "manifests are shown: {stderr}"
    );
    assert_eq!(stderr.lines().last(), Some("crwatch demo: done."));
    assert!(!stdout.contains('\x1b') && !stderr.contains('\x1b'));
}

#[tokio::test]
async fn with_keep_the_server_stays_for_kubectl_until_ctrl_c() {
    let mut child = Command::new(BIN)
        .args(["demo", "--pace", "0s", "--keep", "--no-operator"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the demo starts");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let hint = tokio::time::timeout(WAIT, async {
        while let Some(l) = stderr.next_line().await.expect("stderr readable") {
            if l.starts_with("Try: kubectl --kubeconfig ") {
                return l;
            }
        }
        panic!("the demo ended without the kubectl hint");
    })
    .await
    .expect("the hint within 20 s");
    let kubeconfig = hint
        .strip_prefix("Try: kubectl --kubeconfig ")
        .and_then(|r| r.strip_suffix(" get db -A -w"))
        .expect("the hint names the kubeconfig")
        .to_string();

    // kubectl works against the kept server, and the demo's watch shows what it changes.
    let cache = tempfile::tempdir().expect("a cache directory");
    let kubectl = |args: &[&str]| {
        std::process::Command::new(std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into()))
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .arg(format!("--cache-dir={}", cache.path().display()))
            .env("HOME", cache.path())
            .args(args)
            .output()
            .expect("kubectl runs")
    };
    let got = kubectl(&["get", "db", "-A", "-o", "name"]);
    assert_eq!(
        String::from_utf8_lossy(&got.stdout),
        "database.stable.example.com/my-app-db\n",
        "{}",
        String::from_utf8_lossy(&got.stderr)
    );
    let patched = kubectl(&[
        "patch",
        "db",
        "my-app-db",
        "--type=merge",
        "-p",
        r#"{"spec":{"size":"3Gi"}}"#,
    ]);
    assert!(
        patched.status.success(),
        "{}",
        String::from_utf8_lossy(&patched.stderr)
    );
    tokio::time::timeout(WAIT, async {
        while let Some(l) = stdout.next_line().await.expect("stdout readable") {
            if l == "      spec.size: \"2Gi\" → \"3Gi\"" {
                return;
            }
        }
        panic!("the watch ended");
    })
    .await
    .expect("the change shows within 20 s");

    // Ctrl-C ends it cleanly and removes the kubeconfig.
    let pid = child.id().expect("a pid").to_string();
    let signalled = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("kill runs");
    assert!(signalled.success());
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("the demo ends within 20 s of Ctrl-C")
        .expect("the demo exits");
    assert_eq!(status.code(), Some(0));
    assert!(!std::path::Path::new(&kubeconfig).exists());
}

/// A stand-in for the Database operator: provisions every Database it sees (status
/// Provisioning, then Ready) until the demo stops it.
async fn fake_operator(
    client: kube::Client,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let ar = ApiResource {
        group: "stable.example.com".into(),
        version: "v1".into(),
        api_version: "stable.example.com/v1".into(),
        kind: "Database".into(),
        plural: "databases".into(),
    };
    let all: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    let mut events = std::pin::pin!(watcher::watcher(all, watcher::Config::default()));
    let mut provisioned = std::collections::HashSet::new();
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            e = events.next() => e,
        };
        let Some(Ok(watcher::Event::Apply(db) | watcher::Event::InitApply(db))) = event else {
            continue;
        };
        if db.data["status"]["ready"] == json!(true) || db.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let ns = db.metadata.namespace.clone().unwrap_or_default();
        let name = db.metadata.name.clone().unwrap_or_default();
        if !provisioned.insert((ns.clone(), name.clone())) {
            continue;
        }
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ar);
        for status in [
            json!({"phase": "Provisioning", "ready": false}),
            json!({"phase": "Ready", "ready": true, "message": "provisioned by the fake operator"}),
        ] {
            api.patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": status})),
            )
            .await?;
        }
    }
}

#[tokio::test]
async fn an_operator_plugged_in_takes_over_the_status_steps() {
    let stopped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = stopped.clone();
    let operator: crwatch_cli::demo::Operator = Box::new(move |client, stop| {
        Box::pin(async move {
            let r = fake_operator(client, stop).await;
            seen.store(true, std::sync::atomic::Ordering::SeqCst);
            r
        })
    });
    let demo = crwatch_cli::demo::run_with(crwatch_cli::demo::Options {
        pace: Duration::ZERO,
        keep: false,
        operator: Some(operator),
    });
    tokio::time::timeout(WAIT, demo)
        .await
        .expect("the demo ends within 20 s")
        .expect("the demo succeeds");
    assert!(
        stopped.load(std::sync::atomic::Ordering::SeqCst),
        "the operator ran until the demo stopped it"
    );
}

#[test]
fn the_script_covers_create_edit_status_and_delete() {
    use crwatch_cli::demo::{Step, script};
    let steps = script();
    let count = |f: fn(&Step) -> bool| steps.iter().filter(|s| f(s)).count();
    assert_eq!(count(|s| matches!(s, Step::Apply(_))), 2);
    assert_eq!(count(|s| matches!(s, Step::Patch { .. })), 2);
    assert_eq!(count(|s| matches!(s, Step::Status { .. })), 2);
    assert_eq!(count(|s| matches!(s, Step::Delete(_))), 1);
}

#[test]
fn the_operator_script_provisions_logs_in_resizes_adds_a_user_and_drops() {
    use crwatch_cli::demo::{Step, operator_script};
    let steps = operator_script();
    let count = |f: fn(&Step) -> bool| steps.iter().filter(|s| f(s)).count();
    assert_eq!(count(|s| matches!(s, Step::Apply(_))), 2);
    assert_eq!(
        count(|s| matches!(s, Step::Status { .. })),
        0,
        "status is the operator's"
    );
    assert_eq!(count(|s| matches!(s, Step::Settled { .. })), 4);
    assert_eq!(count(|s| matches!(s, Step::ShowSecret(_))), 2);
    assert_eq!(count(|s| matches!(s, Step::Login { .. })), 1);
    assert!(matches!(steps.last(), Some(Step::Dropped(_))));
    // The deleted one is the one whose database the operator drops.
    let Some(Step::Apply(reports)) = steps
        .iter()
        .find(|s| matches!(s, Step::Apply(m) if m["metadata"]["name"] == "reports-db"))
    else {
        panic!("reports-db is created");
    };
    assert_eq!(reports["spec"]["deletionPolicy"], "Delete");
}

/// The demo with the Database operator on a local PostgreSQL, end to end.
#[cfg(feature = "demo-operator")]
#[tokio::test]
async fn with_the_operator_the_demo_provisions_on_a_local_postgresql() {
    let out = Command::new(BIN)
        .args(["demo", "--pace", "0s"])
        .env_remove("NO_COLOR")
        .env_remove("CRWATCH_PG_BIN")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(180), out)
        .await
        .expect("the demo ends within 3 minutes")
        .expect("the demo runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    let header = lines[0];
    // Rows as EVENT|NAMESPACE|NAME|ENGINE|VERSION|PHASE|READY, diff lines as they are.
    let rows: Vec<String> = lines[1..]
        .iter()
        .filter(|l| !l.starts_with(' '))
        .map(|l| cells_at(header, l)[..7].join("|"))
        .collect();
    let row = |r: &str| {
        rows.iter()
            .position(|x| x == r)
            .unwrap_or_else(|| panic!("no row {r}:\n{stdout}"))
    };
    let ready_app = row("MODIFIED|default|my-app-db|PostgreSQL|15|Ready|true");
    let ready_reports = row("MODIFIED|analytics|reports-db|PostgreSQL|15|Ready|true");
    let provisioning = row("MODIFIED|default|my-app-db|PostgreSQL|15|Provisioning|false");
    assert!(
        row("ADDED|default|my-app-db|PostgreSQL|15||") < provisioning && provisioning < ready_app,
        "{stdout}"
    );
    assert!(ready_app < ready_reports, "{stdout}");
    assert_eq!(
        rows.last().map(String::as_str),
        Some("DELETED|analytics|reports-db|PostgreSQL|15|Deleting|false"),
        "{stdout}"
    );
    // The operator's status changes, as diffs, in order.
    let diff_at = |line: &str| {
        lines
            .iter()
            .position(|l| *l == line)
            .unwrap_or_else(|| panic!("no line {line}:\n{stdout}"))
    };
    let provisioned = "      status.phase: \"Provisioning\" → \"Ready\"";
    assert_eq!(
        lines.iter().filter(|l| **l == provisioned).count(),
        2,
        "both Databases go Provisioning → Ready: {stdout}"
    );
    let resized = diff_at("      spec.size: \"1Gi\" → \"2Gi\"");
    let observed = diff_at("      status.observedGeneration: 1 → 2");
    let user_added = diff_at("      + spec.users[reporting]: {\"username\":\"reporting\"}");
    let deleting = diff_at("      status.phase: \"Ready\" → \"Deleting\"");
    assert!(
        diff_at(provisioned) < resized
            && resized < observed
            && observed < user_added
            && user_added < deleting,
        "{stdout}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("      + status.users[reporting_")),
        "{stdout}"
    );

    // The narration: the Secret without passwords, the login, the dropped database.
    let said: Vec<&str> = stderr.lines().collect();
    let at = |prefix: &str| {
        said.iter()
            .position(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line {prefix}...:\n{stderr}"))
    };
    let pg_line = said[at("crwatch demo: PostgreSQL 15.")];
    assert!(
        said.contains(&"    appuser.password: <32 characters>"),
        "{stderr}"
    );
    assert!(
        said.contains(&"  + reporting.password: <32 characters>"),
        "{stderr}"
    );
    let uris: Vec<&&str> = said.iter().filter(|l| l.contains(".uri: ")).collect();
    assert_eq!(uris.len(), 3, "{stderr}");
    assert!(
        uris.iter().all(|l| l.contains(":<password>@127.0.0.1:")),
        "no password in the URIs: {stderr}"
    );
    let login = at("  ✓ login succeeded: appuser_");
    let dropped = at("  ✓ database dropped: analytics_reports_db_");
    assert!(login < at("→ kubectl create namespace analytics"), "{stderr}");
    assert!(
        at("→ kubectl delete db reports-db -n analytics") < dropped,
        "{stderr}"
    );
    assert_eq!(
        said.last().copied(),
        Some("crwatch demo: done; PostgreSQL stopped and its data removed."),
        "{stderr}"
    );
    assert!(!stdout.contains('\x1b') && !stderr.contains('\x1b'));

    // PostgreSQL is gone: its port no longer answers.
    let port: u16 = pg_line
        .split(" at 127.0.0.1:")
        .nth(1)
        .and_then(|r| r.split(';').next())
        .and_then(|p| p.parse().ok())
        .expect("the PostgreSQL line names its port");
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err(),
        "PostgreSQL still listens on {port}"
    );
}

/// Without PostgreSQL binaries the operator demo falls back to the script, saying so.
#[cfg(feature = "demo-operator")]
#[tokio::test]
async fn with_the_operator_but_no_postgresql_the_demo_falls_back_to_the_script() {
    let empty = tempfile::tempdir().expect("a directory without PostgreSQL");
    let out = Command::new(BIN)
        .args(["demo", "--pace", "0s", "--operator"])
        .env("CRWATCH_PG_BIN", empty.path())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(WAIT, out)
        .await
        .expect("the demo ends within 20 s")
        .expect("the demo runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("crwatch demo: note: PostgreSQL cannot be started")),
        "{stderr}"
    );
    assert!(
        stdout.contains("      status.phase: \"Provisioning\" → \"Ready\"\n"),
        "the scripted status steps: {stdout}"
    );
    assert!(stdout.contains("MySQL"), "the scripted Databases: {stdout}");
    assert_eq!(stderr.lines().last(), Some("crwatch demo: done."));
}
