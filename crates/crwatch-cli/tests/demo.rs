//! `crwatch demo` end to end: the built binary runs the whole script and ends by itself, its
//! watch output checked line by line; `--keep` leaves a server that kubectl can use until
//! Ctrl-C; and an operator plugged in through the library takes over the status steps.

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
        .args(["demo", "--pace", "0s"])
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
        "      + spec.users[1]: {\"username\":\"appuser\"}",
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
        .args(["demo", "--pace", "0s", "--keep"])
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
