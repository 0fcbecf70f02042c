//! Read-your-own-writes (`crwatch::ryow`) against crwatch-apiserver: a tracking client notes
//! the writes made inside `record` (creates, updates, patches, deletes, with the versions the
//! server answered) and nothing outside; callers get the answers unchanged; `wait_caught_up`
//! returns once an informer shows the writes and times out against a cache that never will; a
//! controller requeued at once never acts twice on a stale cache.

mod common;

use std::sync::Arc;
use std::time::Duration;

use crwatch::informer::InformerFactory;
use crwatch::ryow::{self, Freshness, StoreFreshness, WaitOutcome, Write, Writes};
use crwatch::store::{ObjectKey, Store};
use crwatch_apiserver::TestServer;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};

use common::cm;

fn rv(c: &ConfigMap) -> String {
    c.metadata.resource_version.clone().unwrap()
}

fn find<'a>(writes: &'a Writes, name: &str) -> &'a Write {
    writes
        .iter()
        .find(|w| w.name == name)
        .unwrap_or_else(|| panic!("no write of {name} in {writes:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_inside_record_are_noted_with_the_versions_the_server_answered() {
    let server = TestServer::start().await.unwrap();
    let plain = server.client();
    let client = ryow::tracking(plain.clone());
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let old = Api::<ConfigMap>::namespaced(plain.clone(), "default")
        .create(&PostParams::default(), &cm("old", "1"))
        .await
        .unwrap();

    let (answers, writes) = ryow::record(async {
        cms.create(&PostParams::default(), &cm("a", "1")).await.unwrap();
        let a = cms
            .patch(
                "a",
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"data": {"v": "2"}})),
            )
            .await
            .unwrap();
        let b = cms.create(&PostParams::default(), &cm("b", "1")).await.unwrap();
        let mut b2 = b.clone();
        b2.data = Some([("v".to_string(), "3".to_string())].into());
        let b = cms.replace("b", &PostParams::default(), &b2).await.unwrap();
        cms.delete("old", &DeleteParams::default()).await.unwrap();
        // A failed write (404) notes nothing.
        assert!(
            cms.patch(
                "missing",
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({}))
            )
            .await
            .is_err()
        );
        // Reads note nothing.
        cms.get("a").await.unwrap();
        (a, b)
    })
    .await;
    let (a, b) = answers;

    assert_eq!(
        writes.iter().map(|w| w.name.as_str()).collect::<Vec<_>>(),
        ["a", "b", "old"],
        "{writes:?}"
    );
    let wa = find(&writes, "a");
    assert_eq!(
        wa.resource_version,
        Some(rv(&a)),
        "the patch's version, the latest"
    );
    assert_eq!(wa.uid, a.metadata.uid);
    assert!(wa.created && !wa.deleted);
    assert_eq!(
        (
            wa.api_version.as_str(),
            wa.resource.as_str(),
            wa.kind.as_deref(),
            wa.namespace.as_deref()
        ),
        ("v1", "configmaps", Some("ConfigMap"), Some("default"))
    );
    let wb = find(&writes, "b");
    assert_eq!(wb.resource_version, Some(rv(&b)), "the replace's version");
    let wold = find(&writes, "old");
    assert!(wold.deleted && !wold.created);
    assert_eq!(wold.uid, old.metadata.uid);

    // Outside `record`, the same client notes nothing (and works).
    cms.create(&PostParams::default(), &cm("outside", "1"))
        .await
        .unwrap();
    let (_, none) = ryow::record(async {}).await;
    assert!(none.is_empty());
}

/// POSTs `c` as raw JSON and returns the answer's text.
async fn post(client: &kube::Client, c: &ConfigMap) -> Result<String, kube::Error> {
    let req = http::Request::post("/api/v1/namespaces/default/configmaps")
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(serde_json::to_vec(c).unwrap())
        .unwrap();
    client.request_text(req).await
}

/// The stored ConfigMap `name`, as the server's JSON.
async fn get(client: &kube::Client, name: &str) -> serde_json::Value {
    let req = http::Request::get(format!("/api/v1/namespaces/default/configmaps/{name}"))
        .body(vec![])
        .unwrap();
    serde_json::from_str(&client.request_text(req).await.unwrap()).unwrap()
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_reach_the_caller_unchanged() {
    let server = TestServer::start().await.unwrap();
    let plain = server.client();

    // A body near a ConfigMap's 1 MiB limit arrives in many chunks and is put back together.
    let big = "x".repeat(1000 << 10);
    let client = ryow::tracking(plain.clone());
    let (answer, writes) = ryow::record(post(&client, &cm("big", &big))).await;
    let answer = json(&answer.unwrap());
    assert_eq!(answer, get(&plain, "big").await);
    assert_eq!(answer["data"]["v"].as_str().map(str::len), Some(big.len()));
    assert_eq!(writes.len(), 1);

    // Over the tracking limit: passed through as it streams, nothing noted.
    let limited = ryow::tracking_with_limit(plain.clone(), 64);
    let (answer, writes) = ryow::record(post(&limited, &cm("small", "1"))).await;
    assert_eq!(json(&answer.unwrap()), get(&plain, "small").await);
    assert!(writes.is_empty(), "{writes:?}");
    let (answer, writes) = ryow::record(post(&limited, &cm("big2", &big))).await;
    assert_eq!(json(&answer.unwrap()), get(&plain, "big2").await);
    assert!(writes.is_empty(), "{writes:?}");

    // Errors come back as the same kube::Error, and note nothing.
    let (answer, writes) = ryow::record(post(&client, &cm("small", "1"))).await;
    match answer {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 409),
        other => panic!("expected a 409, got {other:?}"),
    }
    assert!(writes.is_empty(), "{writes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_from_a_kubeconfig_track_by_default() {
    let server = TestServer::start().await.unwrap();
    let client = crwatch::client::from_kubeconfig(Some(server.kubeconfig()), &Default::default())
        .await
        .unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let (created, writes) = ryow::record(cms.create(&PostParams::default(), &cm("layered", "1"))).await;
    let created = created.unwrap();
    assert_eq!(
        find(&writes, "layered").resource_version,
        created.metadata.resource_version
    );
    // Errors keep their kind through the layer.
    let (again, writes) = ryow::record(cms.create(&PostParams::default(), &cm("layered", "1"))).await;
    assert!(matches!(again, Err(kube::Error::Api(s)) if s.code == 409));
    assert!(writes.is_empty());
    // Reads and watches pass through.
    assert_eq!(
        cms.get("layered").await.unwrap().metadata.uid,
        created.metadata.uid
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reconciles_on_one_client_keep_their_own_writes() {
    // kube::Client calls the service on its buffer's worker task; the log must be the one of
    // the task awaiting the request.
    let server = TestServer::start().await.unwrap();
    let client = ryow::tracking(server.client());
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
            tokio::spawn(ryow::record(async move {
                for j in 0..3 {
                    cms.create(&PostParams::default(), &cm(&format!("t{i}-{j}"), "1"))
                        .await
                        .unwrap();
                }
            }))
        })
        .collect();
    for (i, t) in tasks.into_iter().enumerate() {
        let ((), writes) = t.await.unwrap();
        let names: Vec<_> = writes.iter().map(|w| w.name.clone()).collect();
        assert_eq!(names, [0, 1, 2].map(|j| format!("t{i}-{j}")));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_ends_once_the_informer_shows_the_writes() {
    let server = TestServer::start().await.unwrap();
    let client = ryow::tracking(server.client());
    let factory = InformerFactory::new(client.clone());
    let informer = factory.all::<ConfigMap>();
    factory.start();
    factory
        .wait_for_cache_sync(Duration::from_secs(20))
        .await
        .unwrap();
    let caches = vec![ryow::informer_freshness(&informer, &())];
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");

    for round in 0..20 {
        let name = format!("child-{round}");
        let (child, writes) = ryow::record(async {
            cms.create(&PostParams::default(), &cm(&name, "1")).await.unwrap();
            cms.patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"data": {"v": "2"}})),
            )
            .await
            .unwrap()
        })
        .await;
        let out = ryow::wait_caught_up(&writes, &caches, Duration::from_secs(20)).await;
        assert!(matches!(out, WaitOutcome::Fresh(_)), "{out:?}");
        // What the next reconcile reads is at least what this one wrote.
        let cached = informer
            .store()
            .get(&ObjectKey::new(Some("default"), &name))
            .expect("the child is cached");
        assert_eq!(cached.metadata.resource_version, child.metadata.resource_version);

        let ((), writes) = ryow::record(async {
            cms.delete(&name, &DeleteParams::default()).await.unwrap();
        })
        .await;
        let out = ryow::wait_caught_up(&writes, &caches, Duration::from_secs(20)).await;
        assert!(matches!(out, WaitOutcome::Fresh(_)), "{out:?}");
        assert!(
            informer
                .store()
                .get(&ObjectKey::new(Some("default"), &name))
                .is_none()
        );
    }
    factory.shutdown();
}

#[tokio::test]
async fn waiting_times_out_against_a_cache_that_never_sees_the_write() {
    let server = TestServer::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(ryow::tracking(server.client()), "default");
    let ((), writes) = ryow::record(async {
        cms.create(&PostParams::default(), &cm("unseen", "1"))
            .await
            .unwrap();
    })
    .await;
    assert_eq!(writes.len(), 1);
    // A store nobody feeds. The clock is paused after the write, so the timeout passes at once.
    let never: Vec<Arc<dyn Freshness>> = vec![Arc::new(StoreFreshness::of(Store::<ConfigMap>::new(), &()))];
    tokio::time::pause();
    let out = ryow::wait_caught_up(&writes, &never, Duration::from_secs(30)).await;
    // (The paused clock's timer wheel rounds up to the next millisecond.)
    assert!(
        matches!(out, WaitOutcome::TimedOut(d) if d >= Duration::from_secs(30) && d < Duration::from_secs(31)),
        "{out:?}"
    );
}

/// What the stale-cache reconciler saw.
#[derive(Default)]
struct Stale {
    /// Create calls per parent (more than one is a double action).
    creates: std::sync::Mutex<std::collections::HashMap<String, usize>>,
    /// Creates the server refused as AlreadyExists: the reconcile read a cache that did not
    /// show the previous reconcile's child yet.
    conflicts: std::sync::atomic::AtomicUsize,
    /// Reconciles per parent, to stop requeueing.
    runs: std::sync::Mutex<std::collections::HashMap<String, usize>>,
}

/// The "stale cache double action": a reconcile creates a child Secret when the cache
/// shows none, then asks to run again at once (as a status update or any other event of the
/// primary would). Without read-your-own-writes the next reconcile usually starts before the
/// Secret informer has the child, sees none and creates it again (409 AlreadyExists); with it,
/// the controller waits for the cache first. (With `.read_your_writes(None)` this test saw 19
/// of 50 children created twice or more.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requeued_reconcile_never_acts_twice_on_a_stale_cache() {
    use crwatch::controller::{Action, Builder, ReconcileError, Request};
    use k8s_openapi::api::core::v1::Secret;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use std::sync::atomic::Ordering;

    let server = TestServer::start().await.unwrap();
    let client = ryow::tracking(server.client());
    let factory = InformerFactory::new(client.clone());
    let secrets = factory.all::<Secret>();
    let children = secrets.store();
    let seen = Arc::new(Stale::default());
    let controller = Builder::new("stale", factory.all::<ConfigMap>())
        .owns(secrets)
        .concurrency(4)
        .build(
            move |req: Request<ConfigMap>, seen: Arc<Stale>| {
                let client = client.clone();
                let children = children.clone();
                async move {
                    let Request::Apply(parent) = req else {
                        return Ok(Action::done());
                    };
                    let name = parent.metadata.name.clone().unwrap_or_default();
                    let child = format!("{name}-child");
                    let runs = {
                        let mut runs = seen.runs.lock().unwrap();
                        let n = runs.entry(name.clone()).or_default();
                        *n += 1;
                        *n
                    };
                    if children.get(&ObjectKey::new(Some("default"), &child)).is_none() {
                        *seen.creates.lock().unwrap().entry(name.clone()).or_default() += 1;
                        let mut s = Secret::default();
                        s.metadata.name = Some(child);
                        s.metadata.owner_references = Some(vec![OwnerReference {
                            api_version: "v1".into(),
                            kind: "ConfigMap".into(),
                            name: name.clone(),
                            uid: parent.metadata.uid.clone().unwrap_or_default(),
                            controller: Some(true),
                            ..Default::default()
                        }]);
                        let api: Api<Secret> = Api::namespaced(client, "default");
                        match api.create(&PostParams::default(), &s).await {
                            Ok(_) => {}
                            Err(kube::Error::Api(e)) if e.code == 409 => {
                                seen.conflicts.fetch_add(1, Ordering::SeqCst);
                            }
                            Err(e) => return Err(ReconcileError::transient(e)),
                        }
                    }
                    // Run again at once a few times: each run must see the child.
                    Ok(match runs < 4 {
                        true => Action::requeue_after(Duration::ZERO),
                        false => Action::done(),
                    })
                }
            },
            seen.clone(),
        );
    factory.start();
    let cancel = tokio_util::sync::CancellationToken::new();
    let run = tokio::spawn(controller.run(cancel.clone()));

    let parents: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    let n = 50;
    for i in 0..n {
        parents
            .create(&PostParams::default(), &cm(&format!("parent-{i}"), "1"))
            .await
            .unwrap();
    }
    common::wait_for(60, "every parent reconciled 4 times", || {
        let runs = seen.runs.lock().unwrap();
        (runs.len() == n && runs.values().all(|r| *r >= 4)).then_some(())
    })
    .await;
    cancel.cancel();
    run.await.unwrap();

    let creates = seen.creates.lock().unwrap();
    let twice: Vec<_> = creates.iter().filter(|(_, c)| **c > 1).collect();
    assert!(twice.is_empty(), "children created more than once: {twice:?}");
    assert_eq!(seen.conflicts.load(Ordering::SeqCst), 0);
    assert_eq!(creates.len(), n);
}
