//! `crwatch forward` to Redis Streams end to end: the real `crwatch` binary against
//! crwatch-apiserver and a real redis-server (with a password, given to the binary through
//! `passwordEnv`), which is killed and restarted on the same port while objects change. The
//! stream is read back with Debian's `redis-cli` (`XRANGE`): every change is there, in
//! resourceVersion order per object (with 4 lanes sharing one connection), each entry's `id`
//! field is its CloudEvent id (so repeats are detectable), and the password appears nowhere in
//! the binary's output.

#![cfg(feature = "redis")]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::changes::{Changes, Sequences, fold};
use crwatch_apiserver::TestServer;
use crwatch_testsupport::redis::{RedisOptions, RedisServer};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_crwatch");

/// How long changes may take to show up in the stream, a server restart included.
const ARRIVAL: Duration = Duration::from_secs(60);

/// The stream the default template `crwatch:{group}:{resource}` gives ConfigMaps.
const STREAM: &str = "crwatch:core:configmaps";

const PASSWORD_ENV: &str = "CRWATCH_TEST_REDIS_PASSWORD";

/// The `crwatch forward` process: SIGTERM and reaped when dropped (also when the test fails).
struct Forward {
    child: Option<Child>,
    log: PathBuf,
}

impl Forward {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, wait (up to 30 s, then SIGKILL), and return whether it exited successfully.
    fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One stream entry: Redis' entry id and its fields in order.
#[derive(Debug, Clone)]
struct Entry {
    entry_id: String,
    fields: Vec<(String, String)>,
}

impl Entry {
    fn get(&self, name: &str) -> &str {
        self.fields
            .iter()
            .find(|(f, _)| f == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_default()
    }

    fn object(&self) -> Value {
        let data: Value = serde_json::from_str(self.get("data")).unwrap_or(Value::Null);
        data["object"].clone()
    }

    /// `added:0`, `modified:3`, `deleted:3`.
    fn label(&self) -> String {
        let kind = self.get("type").trim_start_matches("io.crwatch.resource.");
        let object = self.object();
        let n = object["data"]["n"].as_str().unwrap_or("-");
        format!("{kind}:{n}")
    }
}

/// Every entry of the stream, read with `redis-cli` (RESP2 as JSON).
fn xrange(server: &RedisServer) -> Result<Vec<Entry>, String> {
    let out = Command::new("redis-cli")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &server.port().to_string(),
            "-2",
            "--json",
        ])
        .args(["XRANGE", STREAM, "-", "+"])
        // Not on the command line, where `ps` would show it.
        .env("REDISCLI_AUTH", server.password().unwrap_or_default())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running redis-cli: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || stdout.contains("ERR") {
        return Err(format!(
            "redis-cli failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let value: Value =
        serde_json::from_str(&stdout).map_err(|e| format!("redis-cli printed {stdout:?}: {e}"))?;
    let entries = value.as_array().ok_or_else(|| format!("not an array: {value}"))?;
    entries
        .iter()
        .map(|e| {
            let entry_id = e[0].as_str().ok_or("no entry id")?.to_string();
            let flat = e[1].as_array().ok_or("no fields")?;
            let fields = flat
                .chunks(2)
                .map(|kv| {
                    (
                        kv[0].as_str().unwrap_or_default().to_string(),
                        kv.get(1).and_then(Value::as_str).unwrap_or_default().to_string(),
                    )
                })
                .collect();
            Ok(Entry { entry_id, fields })
        })
        .collect()
}

/// Per subject, the labels of the stream's entries in order, repeats of an id folded; and how
/// many repeats there were.
fn received(entries: &[Entry]) -> (Sequences, usize) {
    let labels: Vec<String> = entries.iter().map(Entry::label).collect();
    fold(
        entries
            .iter()
            .zip(labels)
            .map(|(e, label)| (e.get("id"), e.get("subject"), label)),
    )
}

/// Poll `check` every 50 ms until it returns `Ok`, failing after `timeout` with its last reason.
async fn eventually<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(v) => return v,
            Err(why) => assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}; last state: {why}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

// The API server runs on the test's runtime while the binary runs beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_loses_nothing_across_a_redis_restart_and_keeps_per_object_order() {
    let server = TestServer::start().await.unwrap();
    let password = "r3dis-e2e-secret";
    let mut redis = RedisServer::start_with(RedisOptions {
        password: Some(password.into()),
        tls: None,
    })
    .await
    .expect("starting redis-server");
    let ns = "redis-e2e";
    let mut changes = Changes::new(&server, ns).await;

    // Existing objects are forwarded in their current state when the forwarder starts: one
    // such object shows when the binary is watching, so later changes arrive one by one.
    changes.create("ready", 0).await;

    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "forward.yaml",
        &format!(
            "resources:\n  - resource: configmaps\n    namespaces: [{ns}]\nsinks:\n  - name: stream\n    \
             redis:\n      url: {}\n      passwordEnv: {PASSWORD_ENV}\n      timeout: 1s\n    parallelism: 4\n    retry:\n      \
             initialBackoff: 10ms\n      maxBackoff: 200ms\nmetrics: \"off\"\nprobes: \"off\"\nshutdownGrace: 2s\n",
            redis.url()
        ),
    );
    let log = dir.path().join("forward.log");
    let log_file = std::fs::File::create(&log).unwrap();
    let child = Command::new(BIN)
        .args(["forward", "-f"])
        .arg(&cfg)
        .arg("--kubeconfig")
        .arg(server.kubeconfig())
        .env(PASSWORD_ENV, password)
        .env_remove("CRWATCH_LOG")
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file)
        .spawn()
        .expect("starting crwatch forward");
    let mut fwd = Forward {
        child: Some(child),
        log,
    };

    eventually("the forwarder forwarding the existing object", ARRIVAL, || {
        changes.matches(received(&xrange(&redis)?))
    })
    .await;

    // N objects with several updates each while Redis is up.
    let names: Vec<String> = (0..5).map(|i| format!("obj-{i}")).collect();
    for name in &names {
        changes.create(name, 0).await;
    }
    for n in 1..=2 {
        for name in &names {
            changes.set(name, n).await;
        }
    }
    eventually("the first changes in the stream", ARRIVAL, || {
        changes.matches(received(&xrange(&redis)?))
    })
    .await;

    // Redis killed (as a crash) while the objects keep changing.
    redis.stop();
    for n in 3..=5 {
        for name in &names {
            changes.set(name, n).await;
        }
    }
    changes.create("late", 0).await;
    changes.set("late", 1).await;
    changes.delete(&names[0]).await;
    eventually("the forwarder noticing that Redis is down", ARRIVAL, || {
        let log = fwd.log();
        if log.contains("deliveries are failing") {
            Ok(())
        } else {
            Err(log)
        }
    })
    .await;

    redis.restart().await.expect("restarting redis-server");
    let repeats = eventually("every change after the restart", ARRIVAL, || {
        changes.matches(received(&xrange(&redis)?))
    })
    .await;

    let entries = xrange(&redis).unwrap();
    assert_eq!(entries.len(), changes.total() + repeats);
    let mut by_id: BTreeMap<String, &Entry> = BTreeMap::new();
    let mut last_rv: BTreeMap<String, u64> = BTreeMap::new();
    for e in &entries {
        let object = e.object();
        let meta = &object["metadata"];
        let rv: u64 = meta["resourceVersion"].as_str().unwrap().parse().unwrap();
        let base = format!("{}:{rv}", meta["uid"].as_str().unwrap());
        let want = if e.get("type") == "io.crwatch.resource.deleted" {
            format!("{base}:deleted")
        } else {
            base
        };
        assert_eq!(e.get("id"), want, "the id field is the CloudEvent id: {e:?}");
        assert_eq!(e.get("specversion"), "1.0");
        assert_eq!(e.get("datacontenttype"), "application/json");
        assert!(e.get("source").ends_with("/api/v1/configmaps"), "{e:?}");
        if let Some(first) = by_id.get(e.get("id")) {
            // A repeat is the same change: only the entry id differs.
            assert_eq!(first.fields, e.fields, "a repeat of {} differs", e.get("id"));
            continue;
        }
        by_id.insert(e.get("id").to_string(), e);
        let subject = e.get("subject").to_string();
        if let Some(prev) = last_rv.insert(subject.clone(), rv) {
            assert!(
                prev < rv || e.get("type") == "io.crwatch.resource.deleted",
                "{subject}: resourceVersion {rv} after {prev} (entry {})",
                e.entry_id
            );
        }
    }
    println!(
        "{} changes, {} entries ({repeats} repeats of an id)",
        changes.total(),
        entries.len()
    );

    assert!(
        fwd.stop(),
        "crwatch forward exits cleanly on SIGTERM:\n{}",
        fwd.log()
    );
    let log = fwd.log();
    assert!(!log.contains(password), "the password is never logged:\n{log}");
}
