//! Durable `--state` (issue 10, items 1, 2, 3 and 10): acknowledged writes survive kill -9 and
//! SIGTERM, the revision never goes backwards or repeats across restarts (deletes included), a
//! watch resumed from the last revision misses nothing, deeply nested objects load again, the
//! files are owner-only, and clients keep working across restarts because the server keeps its
//! CA, certificate, token and port.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crwatch_apiserver::{ApiServer, Config};
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, ListParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;

struct Running {
    child: Child,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start the binary on `dir`'s kubeconfig and state file; wait for its banner.
fn start(dir: &Path) -> Running {
    let mut child = Command::new(env!("CARGO_BIN_EXE_crwatch-apiserver"))
        .args(["--port", "0", "--kubeconfig"])
        .arg(dir.join("kubeconfig"))
        .arg("--state")
        .arg(dir.join("state.db"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start crwatch-apiserver");
    let mut reader = BufReader::new(child.stdout.take().expect("stdout"));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut line = String::new();
        let n = reader.read_line(&mut line).expect("read banner");
        assert!(n > 0, "server exited before it was ready");
        if line.starts_with("Press Ctrl-C") {
            break;
        }
        assert!(Instant::now() < deadline, "no banner within 30 s");
    }
    Running { child }
}

async fn client(dir: &Path) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(dir.join("kubeconfig")).expect("kubeconfig");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("config");
    kube::Client::try_from(cfg).expect("client")
}

fn cm(name: &str, v: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name}, "data": {"v": v}})).expect("cm")
}

fn rv(cm: &ConfigMap) -> u64 {
    cm.metadata
        .resource_version
        .as_deref()
        .and_then(|r| r.parse().ok())
        .expect("resourceVersion")
}

/// What the writers were told: the acknowledged value of each name (None: deleted), and the
/// names whose last write got no answer (either outcome is right for those).
#[derive(Default)]
struct Model {
    acked: BTreeMap<String, Option<String>>,
    uncertain: BTreeSet<String>,
    revisions: Vec<u64>,
}

/// One writer: creates, updates and deletes its own names until a request fails.
async fn writer(cms: Api<ConfigMap>, id: usize, cycle: usize, model: Arc<Mutex<Model>>) {
    for i in 0.. {
        let name = format!("w{id}-{}", i % 7);
        let value = format!("c{cycle}-{i}");
        let current = model.lock().unwrap().acked.get(&name).cloned().flatten();
        model.lock().unwrap().uncertain.insert(name.clone());
        let result = match (current, i % 5) {
            (Some(_), 4) => cms
                .delete(&name, &DeleteParams::default())
                .await
                .map(|r| r.left().map(|c| rv(&c)).unwrap_or(0))
                .map(|rev| (None, rev)),
            (Some(_), _) => cms
                .replace(&name, &PostParams::default(), &cm(&name, &value))
                .await
                .map(|c| (Some(value.clone()), rv(&c))),
            (None, _) => cms
                .create(&PostParams::default(), &cm(&name, &value))
                .await
                .map(|c| (Some(value.clone()), rv(&c))),
        };
        match result {
            Ok((v, rev)) => {
                let mut m = model.lock().unwrap();
                m.acked.insert(name.clone(), v);
                m.uncertain.remove(&name);
                if rev > 0 {
                    m.revisions.push(rev);
                }
            }
            // Killed under us (or a stale read after an unanswered write): stop; what it
            // was writing stays uncertain.
            Err(_) => return,
        }
    }
}

/// The value of each listed object, by name.
fn values(list: &kube::core::ObjectList<ConfigMap>) -> BTreeMap<String, Option<String>> {
    list.items
        .iter()
        .map(|c| {
            (
                c.metadata.name.clone().unwrap_or_default(),
                c.data.as_ref().and_then(|d| d.get("v").cloned()),
            )
        })
        .collect()
}

/// Every acknowledged value is there, every acknowledged delete stays deleted.
async fn lost_writes(cms: &Api<ConfigMap>, model: &Model) -> (usize, u64) {
    let list = cms
        .list(&ListParams::default())
        .await
        .expect("list after restart");
    let have = values(&list);
    let lost = model
        .acked
        .iter()
        .filter(|(name, _)| !model.uncertain.contains(*name))
        .filter(|(name, want)| have.get(*name).cloned().unwrap_or(None) != **want)
        .count();
    let list_rv = list
        .metadata
        .resource_version
        .as_deref()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    (lost, list_rv)
}

/// After a check: what a write that got no answer did is now known; continue from the server.
async fn settle(cms: &Api<ConfigMap>, model: &Mutex<Model>) {
    let list = cms.list(&ListParams::default()).await.expect("list");
    let have = values(&list);
    let mut m = model.lock().unwrap();
    for name in std::mem::take(&mut m.uncertain) {
        let now = have.get(&name).cloned().unwrap_or(None);
        m.acked.insert(name, now);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9_and_revisions_never_repeat() {
    let cycles: usize = std::env::var("CRWATCH_KILL_CYCLES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(20);
    let dir = tempfile::tempdir().unwrap();
    let model = Arc::new(Mutex::new(Model::default()));
    let mut lost_total = 0;
    let mut highest_acked = 0u64;
    let mut first_client = None;
    for cycle in 0..cycles {
        let mut server = start(dir.path());
        // The client made against the first run keeps working: same CA, token and port.
        let client = match &first_client {
            Some(c) => kube::Client::clone(c),
            None => {
                let c = client(dir.path()).await;
                first_client = Some(c.clone());
                c
            }
        };
        let cms: Api<ConfigMap> = Api::namespaced(client, "default");
        let snapshot = model.lock().unwrap().clone_model();
        let (lost, list_rv) = lost_writes(&cms, &snapshot).await;
        lost_total += lost;
        settle(&cms, &model).await;
        assert!(
            list_rv >= highest_acked,
            "cycle {cycle}: the revision went back from {highest_acked} to {list_rv}"
        );
        let before = model.lock().unwrap().revisions.len();
        let writers: Vec<_> = (0..4)
            .map(|id| tokio::spawn(writer(cms.clone(), id, cycle, model.clone())))
            .collect();
        // Kill while the writers are busy: after some acknowledgements in this run.
        let deadline = Instant::now() + Duration::from_secs(30);
        while model.lock().unwrap().revisions.len() < before + 40 {
            assert!(Instant::now() < deadline, "cycle {cycle}: writes stalled");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        server.child.kill().expect("kill -9");
        let _ = server.child.wait();
        for w in writers {
            let _ = w.await;
        }
        let m = model.lock().unwrap();
        let new: Vec<u64> = m.revisions[before..].to_vec();
        // Every write acknowledged after the restart is newer than anything acknowledged before.
        assert!(
            new.iter().all(|r| *r > highest_acked),
            "cycle {cycle}: a revision at or below {highest_acked} was handed out again: {new:?}"
        );
        let unique: BTreeSet<u64> = new.iter().copied().collect();
        assert_eq!(
            unique.len(),
            new.len(),
            "cycle {cycle}: a revision was handed out twice"
        );
        highest_acked = highest_acked.max(new.iter().copied().max().unwrap_or(0));
    }
    // The last run's writes, after one more restart.
    let _server = start(dir.path());
    let cms: Api<ConfigMap> = Api::namespaced(first_client.expect("client"), "default");
    let snapshot = model.lock().unwrap().clone_model();
    let (lost, list_rv) = lost_writes(&cms, &snapshot).await;
    lost_total += lost;
    assert!(list_rv >= highest_acked);
    let acked = model.lock().unwrap().revisions.len();
    eprintln!("{acked} writes acknowledged over {cycles} kill -9 cycles; {lost_total} lost");
    assert_eq!(lost_total, 0, "acknowledged writes were lost");
}

impl Model {
    fn clone_model(&self) -> Model {
        Model {
            acked: self.acked.clone(),
            uncertain: self.uncertain.clone(),
            revisions: vec![],
        }
    }
}

#[test]
fn sigterm_during_writes_loses_nothing_acknowledged() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let server = start(dir.path());
        let cms: Api<ConfigMap> = Api::namespaced(client(dir.path()).await, "default");
        let model = Arc::new(Mutex::new(Model::default()));
        let writers: Vec<_> = (0..4)
            .map(|id| tokio::spawn(writer(cms.clone(), id, 0, model.clone())))
            .collect();
        let deadline = Instant::now() + Duration::from_secs(30);
        while model.lock().unwrap().revisions.len() < 100 {
            assert!(Instant::now() < deadline, "writes stalled");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let pid = server.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        for w in writers {
            let _ = w.await;
        }
        drop(server);
        let _again = start(dir.path());
        let cms: Api<ConfigMap> = Api::namespaced(client(dir.path()).await, "default");
        let snapshot = model.lock().unwrap().clone_model();
        let (lost, _) = lost_writes(&cms, &snapshot).await;
        assert_eq!(lost, 0, "acknowledged writes lost over SIGTERM");
    });
}

fn state_config(dir: &Path) -> Config {
    Config {
        state_file: Some(dir.join("state.db")),
        ..Config::default()
    }
}

async fn local_client(server: &ApiServer, dir: &Path) -> kube::Client {
    server.write_kubeconfig(&dir.join("kubeconfig")).unwrap();
    client(dir).await
}

/// Why 1: after deletes, the revision of a restarted server went back below the saved one and
/// handed out resourceVersions again; a watch resumed from the old revision missed changes.
#[tokio::test]
async fn revision_continues_after_deletes_and_a_resumed_watch_misses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = ApiServer::start(state_config(dir.path())).await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(local_client(&server, dir.path()).await, "default");
    for i in 0..20 {
        cms.create(&PostParams::default(), &cm(&format!("c{i}"), "x"))
            .await
            .unwrap();
    }
    for i in 0..18 {
        cms.delete(&format!("c{i}"), &DeleteParams::default())
            .await
            .unwrap();
    }
    let last = server.revision();
    // Dropped, not shut down: the same as a crash for everything acknowledged.
    drop(server);

    let server = ApiServer::start(state_config(dir.path())).await.unwrap();
    assert!(
        server.revision() >= last,
        "revision went back: {} < {last}",
        server.revision()
    );
    let client = local_client(&server, dir.path()).await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    // A watch from the last revision seen before the restart sees the next change (the
    // history is gone, so either the change arrives or 410 says to relist; never silence).
    let mut watch = cms
        .watch(&WatchParams::default().timeout(20), &last.to_string())
        .await
        .unwrap()
        .boxed();
    let created = cms
        .create(&PostParams::default(), &cm("after", "y"))
        .await
        .unwrap();
    assert!(rv(&created) > last, "a resourceVersion was handed out again");
    let ev = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("the resumed watch stayed silent")
        .expect("stream ended")
        .expect("watch error");
    match ev {
        WatchEvent::Added(c) => assert_eq!(c.metadata.name.as_deref(), Some("after")),
        WatchEvent::Error(e) => assert_eq!(e.code, 410, "{e:?}"),
        other => panic!("unexpected {other:?}"),
    }
    server.shutdown().await.unwrap();
}

/// Why 3 (server side): an accepted object nested deeper than serde_json's default recursion
/// limit (128) made the state file unloadable.
#[tokio::test]
async fn a_deeply_nested_object_loads_again() {
    let dir = tempfile::tempdir().unwrap();
    let server = ApiServer::start(state_config(dir.path())).await.unwrap();
    let mut deep = json!("leaf");
    for _ in 0..126 {
        deep = json!({ "a": deep });
    }
    let crd = json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "deeps.example.com"},
        "spec": {"group": "example.com", "scope": "Namespaced",
            "names": {"plural": "deeps", "singular": "deep", "kind": "Deep"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}}}]}
    });
    server.apply(crd).await.unwrap();
    server
        .apply(json!({"apiVersion": "example.com/v1", "kind": "Deep",
            "metadata": {"name": "d", "namespace": "default"}, "spec": {"deep": deep}}))
        .await
        .unwrap();
    server.shutdown().await.unwrap();

    let server = ApiServer::start(state_config(dir.path()))
        .await
        .expect("a state file holding a deep object loads");
    let client = local_client(&server, dir.path()).await;
    let req = http::Request::get("/apis/example.com/v1/namespaces/default/deeps/d")
        .body(Vec::new())
        .unwrap();
    let text = client.request_text(req).await.expect("get the deep object");
    assert!(text.contains("leaf"));
    server.shutdown().await.unwrap();
}

/// Why 10: the state file (and any temporary file) held Secrets and was world-readable.
#[cfg(unix)]
#[tokio::test]
async fn state_and_kubeconfig_files_are_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let server = ApiServer::start(state_config(dir.path())).await.unwrap();
    server
        .apply(json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "s", "namespace": "default"}, "stringData": {"password": "hunter2"}}))
        .await
        .unwrap();
    server.write_kubeconfig(&dir.path().join("kubeconfig")).unwrap();
    server.shutdown().await.unwrap();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let entry = entry.unwrap();
        let mode = entry.metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "{} is mode {mode:o}", entry.path().display());
    }
}

/// Deliver 1: a restarted server keeps its CA, serving certificate, token and port, so a client
/// built before the restart reconnects by itself (in-process, and through the kubeconfig alone).
#[tokio::test]
async fn clients_reconnect_after_a_restart_without_new_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let server = ApiServer::start(state_config(dir.path())).await.unwrap();
    let url = server.url().to_string();
    let client = local_client(&server, dir.path()).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    cms.create(&PostParams::default(), &cm("kept", "1"))
        .await
        .unwrap();
    server.shutdown().await.unwrap();

    let server = ApiServer::start(state_config(dir.path())).await.unwrap();
    assert_eq!(server.url(), url, "the port changed");
    let got = cms
        .get("kept")
        .await
        .expect("the old client works after the restart");
    assert_eq!(got.data.unwrap()["v"], "1");
    server.shutdown().await.unwrap();

    // Without a state file, the kubeconfig written by the last run keeps the identity.
    let kc_dir = tempfile::tempdir().unwrap();
    let kubeconfig = kc_dir.path().join("kubeconfig");
    let first = ApiServer::start(Config::default()).await.unwrap();
    first.write_kubeconfig(&kubeconfig).unwrap();
    let old = client_from(&kubeconfig).await;
    let url = first.url().to_string();
    drop(first);
    let identity = crwatch_apiserver::Identity::from_kubeconfig(&kubeconfig).expect("identity");
    let second = ApiServer::start(Config {
        identity: Some(identity),
        ..Config::default()
    })
    .await
    .unwrap();
    assert_eq!(second.url(), url);
    let ns: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(old);
    ns.get("default")
        .await
        .expect("the old client works with the kept identity");
}

async fn client_from(kubeconfig: &Path) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    kube::Client::try_from(cfg).unwrap()
}

/// A state file of the older single-JSON format is imported, not refused.
#[tokio::test]
async fn an_older_json_state_file_is_imported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let doc = json!({"revision": 500, "objects": [
        {"group": "", "resource": "namespaces", "object": {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "default", "uid": "u1", "resourceVersion": "2"}}},
        {"group": "", "resource": "configmaps", "object": {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "old", "namespace": "default", "uid": "u2", "resourceVersion": "7"},
            "data": {"v": "legacy"}}},
    ]});
    std::fs::write(&path, doc.to_string()).unwrap();
    let server = ApiServer::start(Config {
        state_file: Some(path.clone()),
        ..Config::default()
    })
    .await
    .unwrap();
    assert!(server.revision() >= 500, "the saved revision is kept");
    let cms: Api<ConfigMap> = Api::namespaced(local_client(&server, dir.path()).await, "default");
    assert_eq!(cms.get("old").await.unwrap().data.unwrap()["v"], "legacy");
    assert!(dir.path().join("state.db.json-backup").exists());
    server.shutdown().await.unwrap();
}

/// Numbers come back exactly as written, after a restart too: the store keeps objects as JSON
/// text and parses it on every read, so a float parsed with best-effort precision (serde_json
/// without `float_roundtrip`: about 30% of random doubles came back one unit off) would drift.
#[tokio::test]
async fn numbers_survive_storage_and_restarts_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let server = ApiServer::start(state_config(dir.path())).await.unwrap();
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let numbers: Vec<f64> = std::iter::from_fn(|| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        Some(f64::from_bits(x))
    })
    .filter(|f| f.is_finite())
    .take(2000)
    .collect();
    let crd = json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "numbers.example.com"},
        "spec": {"group": "example.com", "scope": "Namespaced",
            "names": {"plural": "numbers", "singular": "number", "kind": "Number"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}}}]}
    });
    server.apply(crd).await.unwrap();
    server
        .apply(json!({"apiVersion": "example.com/v1", "kind": "Number",
            "metadata": {"name": "n", "namespace": "default"}, "spec": {"values": numbers}}))
        .await
        .unwrap();
    let read_back = |text: String| -> Vec<f64> {
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["spec"]["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_f64().unwrap())
            .collect()
    };
    let get = || {
        http::Request::get("/apis/example.com/v1/namespaces/default/numbers/n")
            .body(Vec::new())
            .unwrap()
    };
    let client = local_client(&server, dir.path()).await;
    let before = read_back(client.request_text(get()).await.unwrap());
    server.shutdown().await.unwrap();
    let server = ApiServer::start(state_config(dir.path())).await.unwrap();
    let client = local_client(&server, dir.path()).await;
    let after = read_back(client.request_text(get()).await.unwrap());
    for (got, want) in [(&before, "before the restart"), (&after, "after the restart")] {
        let changed = numbers
            .iter()
            .zip(got.iter())
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        assert_eq!((got.len(), changed), (numbers.len(), 0), "{want}");
    }
    server.shutdown().await.unwrap();
}
