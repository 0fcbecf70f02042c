//! The one list/watch engine against crwatch-apiserver: resuming from a snapshot, a server that
//! lost its history (new identity, a resourceVersion it has not reached), 410 relists diffed
//! against what was known (uid changes as delete + add), Tables, metadata-only objects,
//! streaming lists, health, and persisted snapshots.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Seen, cm, recorder, wait_for};
use crwatch::informer::{AsyncHandler, Change, Informer};
use crwatch::source::kube::{KubeSource, TableRow};
use crwatch::source::{Checkpoint, Source};
use crwatch::store::snapshot::{Snapshot, SnapshotFile};
use crwatch_apiserver::TestServer;
use futures::StreamExt;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};

fn taken(seen: &Arc<Mutex<Vec<Seen>>>) -> Vec<Seen> {
    std::mem::take(&mut *seen.lock().unwrap())
}

fn sorted(mut v: Vec<Seen>) -> Vec<Seen> {
    v.sort_by_key(|s| format!("{s:?}"));
    v
}

async fn synced_snapshot(informer: &Informer<ConfigMap>) -> Snapshot<ConfigMap> {
    informer.wait_synced(Duration::from_secs(20)).await.unwrap();
    wait_for(20, "a checkpoint", || informer.checkpoint()).await;
    informer.snapshot()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_from_a_snapshot_reports_only_what_changed_since_without_listing() {
    let server = TestServer::start().await.unwrap();
    let client = server.client();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    for n in ["keep", "edit", "drop"] {
        cms.create(&PostParams::default(), &cm(n, "1")).await.unwrap();
    }
    let cancel = tokio_util::sync::CancellationToken::new();
    let first = Informer::new(KubeSource::<ConfigMap>::namespaced(client.clone(), "default"));
    first.start(cancel.clone());
    let snapshot = synced_snapshot(&first).await;
    cancel.cancel();
    assert_eq!(snapshot.objects.len(), 3);

    // While nobody watches.
    cms.patch(
        "edit",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"data": {"v": "2"}})),
    )
    .await
    .unwrap();
    cms.delete("drop", &DeleteParams::default()).await.unwrap();
    cms.create(&PostParams::default(), &cm("new", "1")).await.unwrap();

    let lists_before = server.faults().count("list", "configmaps");
    let second = Informer::new(KubeSource::<ConfigMap>::namespaced(client.clone(), "default"));
    let (seen, h) = recorder();
    second.add_handler(h);
    second.resume_from(snapshot);
    let cancel = tokio_util::sync::CancellationToken::new();
    second.start(cancel.clone());
    second.wait_synced(Duration::from_secs(20)).await.unwrap();
    wait_for(20, "the three changes", || {
        (seen.lock().unwrap().len() >= 3).then_some(())
    })
    .await;
    assert_eq!(
        taken(&seen),
        vec![
            Seen::Update("edit".into(), vec!["data.v".into()]),
            Seen::Delete("drop".into()),
            Seen::Add("new".into()),
        ],
        "the watch replays exactly the changes since the snapshot, in order"
    );
    assert_eq!(
        server.faults().count("list", "configmaps"),
        lists_before,
        "a resumed informer does not list"
    );
    assert_eq!(second.store().len(), 3);
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_lost_its_history_is_detected_and_diffed_deletions_included() {
    // The snapshot comes from one server; the "restarted" one has another history whose
    // resourceVersions have already passed the snapshot's.
    let old = TestServer::start().await.unwrap();
    let old_cms: Api<ConfigMap> = Api::namespaced(old.client(), "default");
    for n in ["a", "b"] {
        old_cms.create(&PostParams::default(), &cm(n, "1")).await.unwrap();
    }
    let cancel = tokio_util::sync::CancellationToken::new();
    let first = Informer::new(KubeSource::<ConfigMap>::namespaced(old.client(), "default"));
    first.start(cancel.clone());
    let snapshot = synced_snapshot(&first).await;
    cancel.cancel();
    let snapshot_rv: u64 = snapshot
        .checkpoint
        .as_ref()
        .unwrap()
        .resource_version
        .parse()
        .unwrap();
    assert!(snapshot.checkpoint.as_ref().unwrap().identity.is_some());

    let new = TestServer::start().await.unwrap();
    let new_cms: Api<ConfigMap> = Api::namespaced(new.client(), "default");
    new_cms
        .create(&PostParams::default(), &cm("a", "1"))
        .await
        .unwrap();
    new_cms
        .create(&PostParams::default(), &cm("c", "1"))
        .await
        .unwrap();
    let mut i = 0;
    while new.server().revision() <= snapshot_rv + 2 {
        let name = format!("filler-{i}");
        new_cms
            .create(&PostParams::default(), &cm(&name, "1"))
            .await
            .unwrap();
        new_cms.delete(&name, &DeleteParams::default()).await.unwrap();
        i += 1;
    }

    let second = Informer::new(KubeSource::<ConfigMap>::namespaced(new.client(), "default"));
    let (seen, h) = recorder();
    second.add_handler(h);
    second.resume_from(snapshot);
    let cancel = tokio_util::sync::CancellationToken::new();
    second.start(cancel.clone());
    wait_for(20, "the relist diff", || {
        (seen.lock().unwrap().len() >= 4).then_some(())
    })
    .await;
    assert_eq!(
        sorted(taken(&seen)),
        sorted(vec![
            // `a` exists on both, but as another object (another uid).
            Seen::Delete("a".into()),
            Seen::Add("a".into()),
            Seen::Delete("b".into()),
            Seen::Add("c".into()),
        ])
    );
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resource_version_the_server_has_not_reached_means_relist_not_wait() {
    let server = TestServer::start().await.unwrap();
    let client = server.client();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    cms.create(&PostParams::default(), &cm("there", "1"))
        .await
        .unwrap();
    // A checkpoint far ahead of the server and of no known identity (RBAC may hide it).
    let mut gone = cm("gone", "1");
    gone.metadata.namespace = Some("default".into());
    gone.metadata.uid = Some("0000".into());
    gone.metadata.resource_version = Some("999".into());
    let snapshot = Snapshot::new(Some(Checkpoint::new("1000000")), vec![gone]);
    let informer =
        Informer::new(KubeSource::<ConfigMap>::namespaced(client, "default").without_identity_check());
    let (seen, h) = recorder();
    informer.add_handler(h);
    informer.resume_from(snapshot);
    let cancel = tokio_util::sync::CancellationToken::new();
    informer.start(cancel.clone());
    wait_for(30, "the relist diff", || {
        (seen.lock().unwrap().len() >= 2).then_some(())
    })
    .await;
    assert_eq!(
        sorted(taken(&seen)),
        sorted(vec![Seen::Delete("gone".into()), Seen::Add("there".into())])
    );
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_410_a_recreated_object_is_deleted_then_added() {
    let server = TestServer::start().await.unwrap();
    let client = server.client();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    cms.create(&PostParams::default(), &cm("x", "1")).await.unwrap();
    let informer = Informer::new(KubeSource::<ConfigMap>::namespaced(client.clone(), "default"));
    let (seen, h) = recorder();
    informer.add_handler(h);
    let cancel = tokio_util::sync::CancellationToken::new();
    informer.start(cancel.clone());
    informer.wait_synced(Duration::from_secs(20)).await.unwrap();
    assert_eq!(taken(&seen), vec![Seen::Add("x".into())]);

    let faults = server.faults();
    // The informer's watch must be streaming (not held at the gate) before the server pauses.
    wait_for(20, "the watch", || {
        (faults.served("watch", "configmaps") > 0).then_some(())
    })
    .await;
    faults.pause();
    let watches = faults.count("watch", "configmaps");
    faults.drop_watches();
    // The old watch must be gone (its successor held by the pause) before the writes.
    wait_for(20, "the informer to watch again", || {
        (faults.count("watch", "configmaps") > watches).then_some(())
    })
    .await;
    let srv = server.server();
    srv.delete("v1", "ConfigMap", "default", "x").await.unwrap();
    srv.apply(serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "namespace": "default"}, "data": {"v": "1"}})).await.unwrap();
    faults.compact();
    faults.resume();
    wait_for(20, "delete and add", || {
        (seen.lock().unwrap().len() >= 2).then_some(())
    })
    .await;
    assert_eq!(
        taken(&seen),
        vec![Seen::Delete("x".into()), Seen::Add("x".into())]
    );
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_carry_cells_and_columns_and_metadata_only_carries_no_data() {
    let server = TestServer::start().await.unwrap();
    let client = server.client();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    cms.create(&PostParams::default(), &cm("t", "1")).await.unwrap();
    let ar = ApiResource::erase::<ConfigMap>(&());
    let source = KubeSource::<DynamicObject>::dynamic(client.clone(), &ar, Some("default")).tables();
    let columns = source.columns();
    let informer: Informer<TableRow> = Informer::new(source);
    let cancel = tokio_util::sync::CancellationToken::new();
    informer.start(cancel.clone());
    informer.wait_synced(Duration::from_secs(20)).await.unwrap();
    let names: Vec<String> = columns
        .lock()
        .unwrap()
        .clone()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names[..2], ["Name".to_string(), "Data".to_string()]);
    let row = informer.store().list()[0].clone();
    assert_eq!(row.cells.as_ref().unwrap()[0], "t");
    assert_eq!(row.object.data["data"]["v"], "1");
    // Watch events are Tables too.
    cms.create(&PostParams::default(), &cm("u", "1")).await.unwrap();
    wait_for(20, "the watched row", || {
        (informer.store().len() == 2).then_some(())
    })
    .await;
    assert!(informer.store().list().iter().all(|r| r.cells.is_some()));

    let meta = Informer::new(KubeSource::<ConfigMap>::namespaced(client, "default").metadata_only());
    meta.start(cancel.clone());
    meta.wait_synced(Duration::from_secs(20)).await.unwrap();
    assert_eq!(meta.store().len(), 2);
    let value = serde_json::to_value(&*meta.store().list()[0]).unwrap();
    assert!(value.get("data").is_none(), "{value}");
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_lists_deliver_the_initial_state_then_changes() {
    let server = TestServer::start().await.unwrap();
    let client = server.client();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    for i in 0..5 {
        cms.create(&PostParams::default(), &cm(&format!("s{i}"), "1"))
            .await
            .unwrap();
    }
    let lists = server.faults().count("list", "configmaps");
    let source = KubeSource::<ConfigMap>::namespaced(client, "default").streaming_lists();
    let mut events = Box::new(source).events();
    let mut initial = 0;
    loop {
        match events.next().await.unwrap().unwrap() {
            crwatch::source::Event::Init => {}
            crwatch::source::Event::InitApply(_) => initial += 1,
            crwatch::source::Event::InitDone => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(initial, 5);
    assert_eq!(
        server.faults().count("list", "configmaps"),
        lists,
        "no list request"
    );
    cms.create(&PostParams::default(), &cm("later", "1"))
        .await
        .unwrap();
    loop {
        if let crwatch::source::Event::Apply(o) = events.next().await.unwrap().unwrap() {
            assert_eq!(o.metadata.name.as_deref(), Some("later"));
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_streaming_lists_gets_paged_lists() {
    let server = TestServer::start().await.unwrap();
    let client = server.client();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    cms.create(&PostParams::default(), &cm("p", "1")).await.unwrap();
    // An older server refuses the streaming-list parameters with 422 Invalid.
    server
        .faults()
        .fail_next(1, 422, crwatch_apiserver::Match::verb("watch"));
    let informer = Informer::new(KubeSource::<ConfigMap>::namespaced(client, "default").streaming_lists());
    let cancel = tokio_util::sync::CancellationToken::new();
    informer.start(cancel.clone());
    informer.wait_synced(Duration::from_secs(20)).await.unwrap();
    assert_eq!(informer.store().len(), 1);
    assert_eq!(
        server.faults().count("list", "configmaps"),
        1,
        "fell back to a paged list"
    );
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_is_down_is_visible() {
    let server = TestServer::start().await.unwrap();
    let client = server.client();
    let informer = Informer::new(
        KubeSource::<ConfigMap>::namespaced(client, "default")
            .backoff(Duration::from_millis(50), Duration::from_millis(200)),
    );
    let cancel = tokio_util::sync::CancellationToken::new();
    informer.start(cancel.clone());
    informer.wait_synced(Duration::from_secs(20)).await.unwrap();
    wait_for(20, "connected", || informer.health().connected.then_some(())).await;
    assert!(informer.is_healthy(Duration::ZERO));

    // The watch must be streaming (past the gate) for the drop to end it.
    wait_for(20, "the watch", || {
        (server.faults().served("watch", "configmaps") > 0).then_some(())
    })
    .await;
    server
        .faults()
        .fail_next(15, 500, crwatch_apiserver::Match::any());
    server.faults().drop_watches();
    wait_for(20, "failing", || (!informer.health().connected).then_some(())).await;
    let health = informer.health();
    assert!(
        health.last_error.unwrap().contains("500"),
        "the error says what failed"
    );
    assert!(
        informer.is_healthy(Duration::from_secs(3600)),
        "within the grace period"
    );
    wait_for(20, "past a short grace", || {
        (!informer.is_healthy(Duration::from_millis(100))).then_some(())
    })
    .await;

    // The injected failures run out; the source reconnects by itself.
    wait_for(20, "connected again", || {
        informer.health().connected.then_some(())
    })
    .await;
    assert!(informer.is_healthy(Duration::ZERO));
    cancel.cancel();
}

struct Collect(Arc<Mutex<Vec<String>>>);

impl AsyncHandler<ConfigMap> for Collect {
    fn handle(&self, change: Change<ConfigMap>) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let line = match change {
                Change::Added(o) => format!("added {}", o.metadata.name.clone().unwrap_or_default()),
                Change::Updated { new, .. } => {
                    format!("updated {}", new.metadata.name.clone().unwrap_or_default())
                }
                Change::Deleted(o) => format!("deleted {}", o.metadata.name.clone().unwrap_or_default()),
                Change::Relist => "relist".into(),
                _ => return,
            };
            // A slow consumer: the informer waits for it.
            tokio::time::sleep(Duration::from_millis(5)).await;
            self.0.lock().unwrap().push(line);
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persisted_snapshots_resume_across_restarts_and_async_handlers_see_everything_in_order() {
    let server = TestServer::start().await.unwrap();
    let client = server.client();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    cms.create(&PostParams::default(), &cm("one", "1")).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("configmaps.json");

    let run = |seen: Arc<Mutex<Vec<String>>>| {
        let informer = Informer::new(KubeSource::<ConfigMap>::namespaced(client.clone(), "default"));
        informer
            .persist_to(SnapshotFile::new(&path), Duration::from_secs(1))
            .unwrap();
        informer.add_async_handler(Collect(seen));
        let cancel = tokio_util::sync::CancellationToken::new();
        informer.start(cancel.clone());
        (informer, cancel)
    };
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let (informer, cancel) = run(seen.clone());
    informer.wait_synced(Duration::from_secs(20)).await.unwrap();
    for i in 0..20 {
        cms.create(&PostParams::default(), &cm(&format!("n{i:02}"), "1"))
            .await
            .unwrap();
    }
    wait_for(20, "all adds", || {
        (seen.lock().unwrap().len() >= 22).then_some(())
    })
    .await;
    let mut want = vec!["relist".to_string(), "added one".into()];
    want.extend((0..20).map(|i| format!("added n{i:02}")));
    assert_eq!(*seen.lock().unwrap(), want);
    cancel.cancel();
    wait_for(20, "the snapshot on stop", || {
        std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .filter(|v| v["objects"].as_array().map(Vec::len) == Some(21))
    })
    .await;
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );

    cms.delete("one", &DeleteParams::default()).await.unwrap();
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let (informer, cancel) = run(seen.clone());
    informer.wait_synced(Duration::from_secs(20)).await.unwrap();
    wait_for(20, "the deletion", || {
        (!seen.lock().unwrap().is_empty()).then_some(())
    })
    .await;
    assert_eq!(*seen.lock().unwrap(), vec!["deleted one".to_string()]);
    assert_eq!(informer.store().len(), 20);
    cancel.cancel();
}

/// A plain-HTTP client for `port` with `token` (the same for two servers started on it).
fn http_client(port: u16, token: &str) -> kube::Client {
    let mut config = kube::Config::new(format!("http://127.0.0.1:{port}").parse().unwrap());
    config.auth_info.token = Some(token.to_string().into());
    kube::Client::try_from(config).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restarted_without_its_history_under_a_running_watch_is_relisted_and_diffed() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let config = || crwatch_apiserver::Config {
        http_port: Some(port),
        token: Some("same-token".into()),
        bookmark_interval: Duration::from_secs(1),
        ..crwatch_apiserver::Config::default()
    };
    let first = TestServer::with_config(config()).await.unwrap();
    for n in ["a", "b"] {
        first
            .server()
            .apply(serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": n, "namespace": "default"}}))
            .await
            .unwrap();
    }
    let informer = Informer::new(
        KubeSource::<ConfigMap>::namespaced(http_client(port, "same-token"), "default")
            .backoff(Duration::from_millis(50), Duration::from_millis(200)),
    );
    let (seen, h) = recorder();
    informer.add_handler(h);
    let cancel = tokio_util::sync::CancellationToken::new();
    informer.start(cancel.clone());
    informer.wait_synced(Duration::from_secs(20)).await.unwrap();
    wait_for(20, "the two adds", || {
        (seen.lock().unwrap().len() == 2).then_some(())
    })
    .await;
    taken(&seen);
    let revision = first.server().revision();
    first.shutdown().await.unwrap();

    // Same address, fresh history that has already passed the old resourceVersion, so a watch
    // from it would be accepted: only the changed identity gives the restart away.
    // The old listener may take a moment to let go of the port.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let second = loop {
        match TestServer::with_config(config()).await {
            Ok(s) => break s,
            Err(e) if tokio::time::Instant::now() < deadline => {
                eprintln!("port {port} not free yet ({e}); retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the second server never started on port {port}: {e}"),
        }
    };
    let srv = second.server();
    srv.apply(serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "default"}}))
        .await
        .unwrap();
    let mut i = 0;
    while srv.revision() <= revision + 2 {
        let name = format!("filler-{i}");
        srv.apply(serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "kube-public"}}))
            .await
            .unwrap();
        i += 1;
    }
    wait_for(30, "the relist diff", || {
        (seen.lock().unwrap().len() >= 3).then_some(())
    })
    .await;
    assert_eq!(
        sorted(taken(&seen)),
        sorted(vec![
            Seen::Delete("a".into()),
            Seen::Delete("b".into()),
            Seen::Add("c".into())
        ])
    );
    assert_eq!(informer.store().len(), 1);
    cancel.cancel();
}
