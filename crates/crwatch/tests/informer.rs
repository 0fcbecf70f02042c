//! Shared informers against crwatch-apiserver: one watch however many users, handlers with
//! diffs, late handlers, relists that report only real changes, resync, transforms, indexes.

mod common;

use common::{Seen, cm, recorder, wait_for};

use std::time::Duration;

use crwatch::informer::InformerFactory;
use crwatch::store::{LABEL_INDEX, NAMESPACE_INDEX, ObjectKey};
use crwatch_apiserver::TestServer;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_watch_serves_every_handler_and_diffs_say_what_changed() {
    let server = TestServer::start().await.unwrap();
    let client = server.client();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    cms.create(&PostParams::default(), &cm("before", "1"))
        .await
        .unwrap();

    let factory = InformerFactory::new(client.clone());
    let first = factory.all::<ConfigMap>();
    let second = factory.all::<ConfigMap>();
    let (seen_a, ha) = recorder();
    first.add_handler(ha);
    factory.start();
    factory
        .wait_for_cache_sync(Duration::from_secs(20))
        .await
        .unwrap();
    // A handler added after sync first gets the current state as adds.
    let (seen_b, hb) = recorder();
    second.add_handler(hb);
    assert_eq!(seen_b.lock().unwrap().clone(), vec![Seen::Add("before".into())]);

    cms.create(&PostParams::default(), &cm("x", "1")).await.unwrap();
    cms.patch(
        "x",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"data": {"v": "2"}})),
    )
    .await
    .unwrap();
    cms.delete("x", &DeleteParams::default()).await.unwrap();
    let want = vec![
        Seen::Add("before".into()),
        Seen::Add("x".into()),
        Seen::Update("x".into(), vec!["data.v".into()]),
        Seen::Delete("x".into()),
    ];
    wait_for(20, "all events", || {
        (seen_a.lock().unwrap().len() >= 4).then_some(())
    })
    .await;
    assert_eq!(seen_a.lock().unwrap().clone(), want);
    wait_for(20, "second handler", || {
        (seen_b.lock().unwrap().len() >= 4).then_some(())
    })
    .await;
    assert_eq!(seen_b.lock().unwrap().clone(), want);
    // Two informer handles, two handlers, one list and one watch on the server.
    assert_eq!(server.faults().count("watch", "configmaps"), 1);
    assert_eq!(server.faults().count("list", "configmaps"), 1);
    // The default transform dropped managedFields before storing.
    let stored = first
        .store()
        .get(&ObjectKey::new(Some("default"), "before"))
        .unwrap();
    assert!(stored.metadata.managed_fields.is_none());
    factory.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relist_after_410_reports_only_real_changes() {
    let server = TestServer::start().await.unwrap();
    let client = server.client();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    for n in ["same", "changed", "gone"] {
        cms.create(&PostParams::default(), &cm(n, "1")).await.unwrap();
    }
    let factory = InformerFactory::new(client.clone());
    let informer = factory.all::<ConfigMap>();
    let (seen, h) = recorder();
    informer.add_handler(h);
    factory.start();
    factory
        .wait_for_cache_sync(Duration::from_secs(20))
        .await
        .unwrap();
    seen.lock().unwrap().clear();

    // While the informer is cut off: one change, one delete, one create; then the history
    // it would resume from is compacted away, so it must relist.
    let faults = server.faults();
    let lists_before = faults.count("list", "configmaps");
    // The informer's watch must be streaming (not held at the gate) before the server pauses.
    wait_for(20, "the watch", || {
        (faults.served("watch", "configmaps") > 0).then_some(())
    })
    .await;
    faults.pause();
    let watches = faults.count("watch", "configmaps");
    faults.drop_watches();
    // The old watch must be gone (its successor is held by the pause) before the writes, or it
    // could still deliver them and no relist would be needed.
    wait_for(20, "the informer to watch again", || {
        (faults.count("watch", "configmaps") > watches).then_some(())
    })
    .await;
    let srv = server.server();
    srv.apply(serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "changed", "namespace": "default"}, "data": {"v": "2"}})).await.unwrap();
    srv.apply(serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "new", "namespace": "default"}, "data": {"v": "1"}})).await.unwrap();
    srv.delete("v1", "ConfigMap", "default", "gone").await.unwrap();
    faults.compact();
    faults.resume();
    wait_for(20, "relist", || {
        (faults.count("list", "configmaps") > lists_before).then_some(())
    })
    .await;
    wait_for(20, "three changes", || {
        (seen.lock().unwrap().len() >= 3).then_some(())
    })
    .await;
    let mut got = seen.lock().unwrap().clone();
    got.sort_by_key(|s| format!("{s:?}"));
    let mut want = vec![
        Seen::Update("changed".into(), vec!["data.v".into()]),
        Seen::Add("new".into()),
        Seen::Delete("gone".into()),
    ];
    want.sort_by_key(|s| format!("{s:?}"));
    assert_eq!(got, want, "no spurious add for the unchanged object");
    assert_eq!(informer.store().len(), 3);
    factory.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resync_replays_the_cache_and_indexes_follow_changes() {
    let server = TestServer::start().await.unwrap();
    let client = server.client();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    cms.create(&PostParams::default(), &cm("a", "1")).await.unwrap();
    let factory = InformerFactory::new(client.clone());
    let informer = factory.all::<ConfigMap>();
    informer.set_resync(Some(Duration::from_millis(200)));
    let (seen, h) = recorder();
    informer.add_handler(h);
    factory.start();
    factory
        .wait_for_cache_sync(Duration::from_secs(20))
        .await
        .unwrap();
    // The watch starts right after the list; count requests from then on.
    wait_for(20, "the watch", || {
        (server.faults().count("watch", "configmaps") == 1).then_some(())
    })
    .await;
    let requests_before = server.faults().requests().len();
    wait_for(20, "a resync update", || {
        seen.lock()
            .unwrap()
            .iter()
            .any(|s| matches!(s, Seen::Update(n, paths) if n == "a" && paths.is_empty()))
            .then_some(())
    })
    .await;
    assert_eq!(
        server.faults().requests().len(),
        requests_before,
        "resync makes no API calls"
    );

    let store = informer.store();
    assert_eq!(store.by_index(LABEL_INDEX, "app=web").len(), 1);
    assert_eq!(store.by_index(NAMESPACE_INDEX, "default").len(), 1);
    cms.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"metadata": {"labels": {"app": "db"}}})),
    )
    .await
    .unwrap();
    wait_for(20, "index update", || {
        (store.by_index(LABEL_INDEX, "app=db").len() == 1).then_some(())
    })
    .await;
    assert!(store.by_index(LABEL_INDEX, "app=web").is_empty());
    let lister = store.lister();
    assert_eq!(lister.list_selector("app in (db,x)").unwrap().len(), 1);
    factory.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamic_informers_by_gvk_and_metadata_only_informers() {
    let server = TestServer::start().await.unwrap();
    let client = server.client();
    let crd = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/database-crd.yaml"
    ))
    .unwrap();
    let crd: serde_json::Value = serde_saphyr::from_str(&crd).unwrap();
    server.server().apply(crd).await.unwrap();
    server
        .server()
        .apply(
            serde_json::json!({"apiVersion": "stable.example.com/v1", "kind": "Database",
            "metadata": {"name": "db1", "namespace": "default", "labels": {"tier": "gold"}},
            "spec": {"engine": "PostgreSQL", "version": "15", "size": "1Gi"}}),
        )
        .await
        .unwrap();
    let mut big = cm("big", &"x".repeat(10_000));
    big.metadata.labels = Some([("size".to_string(), "large".to_string())].into());
    Api::<ConfigMap>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &big)
        .await
        .unwrap();

    let factory = InformerFactory::new(client.clone());
    let gvk = kube::api::GroupVersionKind::gvk("stable.example.com", "v1", "Database");
    let dbs = factory.dynamic(&gvk, Some("default")).await.unwrap();
    let meta = factory.metadata(crwatch::source::kube::KubeSource::<ConfigMap>::all(
        client.clone(),
    ));
    let again = factory.metadata(crwatch::source::kube::KubeSource::<ConfigMap>::all(
        client.clone(),
    ));
    factory.start();
    factory
        .wait_for_cache_sync(Duration::from_secs(20))
        .await
        .unwrap();
    let db = dbs.store().get(&ObjectKey::new(Some("default"), "db1")).unwrap();
    assert_eq!(db.data["spec"]["engine"], "PostgreSQL");
    assert_eq!(dbs.store().by_index(LABEL_INDEX, "tier=gold").len(), 1);
    let partial = again
        .store()
        .get(&ObjectKey::new(Some("default"), "big"))
        .unwrap();
    assert_eq!(partial.metadata.labels.as_ref().unwrap()["size"], "large");
    assert_eq!(meta.store().len(), again.store().len());
    // Two handles, one metadata-only watch.
    wait_for(20, "the watch", || {
        (server.faults().count("watch", "configmaps") >= 1).then_some(())
    })
    .await;
    assert_eq!(server.faults().count("watch", "configmaps"), 1);
    factory.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diffs_are_computed_only_when_a_handler_reads_them() {
    use crwatch::informer::HandlerFns;
    use std::sync::{Arc, Mutex};
    let server = TestServer::start().await.unwrap();
    let client = server.client();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    cms.create(&PostParams::default(), &cm("x", "1")).await.unwrap();
    let factory = InformerFactory::new(client.clone());
    let informer = factory.all::<ConfigMap>();
    // Whether each update arrived with a diff.
    let diffs: Arc<Mutex<Vec<bool>>> = Arc::default();
    let d = diffs.clone();
    informer.add_handler(
        HandlerFns::new()
            .on_update(move |_: &Arc<ConfigMap>, _: &Arc<ConfigMap>, diff| {
                d.lock().unwrap().push(!diff.is_empty())
            })
            .without_diff(),
    );
    factory.start();
    factory
        .wait_for_cache_sync(Duration::from_secs(20))
        .await
        .unwrap();
    let patch = |v: &str| Patch::Merge(serde_json::json!({"data": {"v": v}}));
    cms.patch("x", &PatchParams::default(), &patch("2"))
        .await
        .unwrap();
    wait_for(20, "the first update", || {
        (diffs.lock().unwrap().len() == 1).then_some(())
    })
    .await;
    assert_eq!(
        *diffs.lock().unwrap(),
        [false],
        "no handler reads diffs: none computed"
    );
    let (_seen, wants) = recorder();
    informer.add_handler(wants);
    cms.patch("x", &PatchParams::default(), &patch("3"))
        .await
        .unwrap();
    wait_for(20, "the second update", || {
        (diffs.lock().unwrap().len() == 2).then_some(())
    })
    .await;
    assert_eq!(
        *diffs.lock().unwrap(),
        [false, true],
        "another handler reads them: computed once, passed to all"
    );
    factory.shutdown();
}
