//! The `crwatch-apiserver` binary as a user runs it: it prints how to point kubectl at it,
//! applies `--crd` manifests, stops on SIGTERM, and keeps its objects across restarts with
//! `--state`.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Running {
    child: Child,
    stdout: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start the binary and wait for its banner (it ends with the Ctrl-C line).
fn start(dir: &Path, extra: &[&str]) -> Running {
    let mut child = Command::new(env!("CARGO_BIN_EXE_crwatch-apiserver"))
        .args(["--port", "0", "--kubeconfig"])
        .arg(dir.join("kubeconfig"))
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start crwatch-apiserver");
    let mut reader = BufReader::new(child.stdout.take().expect("stdout"));
    let mut stdout = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut line = String::new();
        let n = reader.read_line(&mut line).expect("read banner");
        assert!(n > 0, "server exited before it was ready; printed:\n{stdout}");
        stdout.push_str(&line);
        if line.starts_with("Press Ctrl-C") {
            break;
        }
        assert!(Instant::now() < deadline, "no banner within 30 s");
    }
    Running { child, stdout }
}

fn kubectl(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(common::find_kubectl("kubectl"))
        .env("KUBECONFIG", dir.join("kubeconfig"))
        .env("HOME", dir)
        .args(args)
        .output()
        .expect("run kubectl")
}

fn stop(mut r: Running) {
    let pid = r.child.id().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(st) = r.child.try_wait().expect("wait") {
            assert!(st.success(), "server exited with {st}");
            return;
        }
        assert!(Instant::now() < deadline, "server did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn binary_serves_kubectl_applies_crds_and_keeps_state_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let crd = common::database_crd_path();
    let args = ["--crd", crd.to_str().unwrap(), "--state", state.to_str().unwrap()];

    let first = start(dir.path(), &args);
    assert!(
        first.stdout.contains("export KUBECONFIG="),
        "banner: {}",
        first.stdout
    );
    assert!(
        first.stdout.contains("serving https://127.0.0.1:"),
        "banner: {}",
        first.stdout
    );
    let db = "apiVersion: stable.example.com/v1\nkind: Database\nmetadata:\n  name: kept\nspec:\n  engine: PostgreSQL\n  version: \"15\"\n  size: 1Gi\n";
    std::fs::write(dir.path().join("db.yaml"), db).unwrap();
    let out = kubectl(
        dir.path(),
        &["apply", "-f", dir.path().join("db.yaml").to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let before = kubectl(
        dir.path(),
        &[
            "get",
            "db",
            "kept",
            "-o",
            "jsonpath={.metadata.uid} {.metadata.resourceVersion}",
        ],
    );
    assert!(before.status.success());
    stop(first);
    assert!(state.exists(), "state file written on shutdown");

    // The same objects, uid and resourceVersion come back, and the CRD is served again.
    let second = start(dir.path(), &["--state", state.to_str().unwrap()]);
    let after = kubectl(
        dir.path(),
        &[
            "get",
            "db",
            "kept",
            "-o",
            "jsonpath={.metadata.uid} {.metadata.resourceVersion}",
        ],
    );
    assert!(
        after.status.success(),
        "{}",
        String::from_utf8_lossy(&after.stderr)
    );
    assert_eq!(before.stdout, after.stdout);
    // New writes continue the revision sequence.
    let out = kubectl(dir.path(), &["label", "db", "kept", "x=y"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rv = kubectl(
        dir.path(),
        &["get", "db", "kept", "-o", "jsonpath={.metadata.resourceVersion}"],
    );
    let old_rv: u64 = String::from_utf8_lossy(&before.stdout)
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let new_rv: u64 = String::from_utf8_lossy(&rv.stdout).parse().unwrap();
    assert!(new_rv > old_rv);
    stop(second);
}

#[test]
fn binary_rejects_a_wrong_token_and_a_bad_state_file() {
    let dir = tempfile::tempdir().unwrap();
    let running = start(dir.path(), &["--token", "right"]);
    let kc = std::fs::read_to_string(dir.path().join("kubeconfig")).unwrap();
    std::fs::write(
        dir.path().join("kubeconfig"),
        kc.replace("token: right", "token: wrong"),
    )
    .unwrap();
    let out = kubectl(dir.path(), &["get", "ns"]);
    assert!(!out.status.success());
    // Newer kubectl words the 401 of its discovery requests this way, as against a real cluster.
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("error: You must be logged in to the server"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(running);

    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "not json").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_crwatch-apiserver"))
        .args(["--port", "0", "--state"])
        .arg(&bad)
        .arg("--kubeconfig")
        .arg(dir.path().join("kc2"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a crwatch-apiserver state file"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_kubeconfig_into_a_missing_directory_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-dir");
    let out = Command::new(env!("CARGO_BIN_EXE_crwatch-apiserver"))
        .args(["--port", "0", "--kubeconfig"])
        .arg(missing.join("kubeconfig"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not exist (create it first)"), "{err}");
    assert!(!missing.exists(), "the directory was created");
}

#[test]
fn feature_gates_turn_on_sharded_list_and_watch() {
    let dir = tempfile::tempdir().unwrap();
    let running = start(dir.path(), &["--feature-gates=ShardedListAndWatch=true"]);
    assert!(
        running.stdout.contains("feature gates: ShardedListAndWatch=true"),
        "banner: {}",
        running.stdout
    );
    // Every Namespace hashes the empty namespace, FNV-1a 64 "" = 0xcbf29ce484222325.
    let sel = "shardRange(object.metadata.namespace, '0xcbf29ce484222325', '0xcbf29ce484222326')";
    let path = format!(
        "/api/v1/namespaces?shardSelector={}",
        form_urlencoded::byte_serialize(sel.as_bytes()).collect::<String>()
    );
    let out = kubectl(dir.path(), &["get", "--raw", &path]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list["metadata"]["shardInfo"]["selector"], sel);
    assert!(!list["items"].as_array().unwrap().is_empty());
    drop(running);

    // A value that is not a bool, or a gate it does not implement, is refused at start.
    for (flag, want) in [
        (
            "--feature-gates=ShardedListAndWatch=yes",
            "invalid value of ShardedListAndWatch=yes, err: strconv.ParseBool: parsing \"yes\": invalid syntax",
        ),
        (
            "--feature-gates=NoSuchGate=true",
            "unrecognized feature gate: NoSuchGate",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_crwatch-apiserver"))
            .args(["--port", "0", flag, "--kubeconfig"])
            .arg(dir.path().join("kc2"))
            .output()
            .unwrap();
        assert!(!out.status.success(), "{flag}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{flag}: {err}");
    }
}
