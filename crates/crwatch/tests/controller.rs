//! Controllers against crwatch-apiserver: every object's final state is reconciled under
//! dropped watches, compactions and bursts of 500/429; no key is ever reconciled twice at
//! once (checked); panics and errors are retried with backoff; terminal errors are not;
//! owned and mapped objects enqueue their primaries; predicates filter updates.

mod common;

use common::{cm, wait_for};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crwatch::controller::{Action, Builder, Predicate, ReconcileError, Request};
use crwatch::informer::InformerFactory;
use crwatch::source::kube::KubeSource;
use crwatch::store::ObjectKey;
use crwatch_apiserver::{Match, TestServer};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct Seen {
    in_flight: Mutex<HashSet<ObjectKey>>,
    overlap: AtomicBool,
    /// Last value of data.v reconciled per key (None after a delete).
    last: Mutex<HashMap<ObjectKey, Option<String>>>,
    calls: AtomicUsize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_final_state_is_reconciled_under_faults_and_keys_never_overlap() {
    let server = TestServer::start().await.unwrap();
    let client = server.client();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let factory = InformerFactory::new(client.clone());
    let seen = Arc::new(Seen::default());
    // A short reconnect backoff keeps the test quick; the default (800 ms to 30 s) would
    // spend minutes backing off through this many injected failures.
    let source = KubeSource::<ConfigMap>::all(client.clone())
        .backoff(Duration::from_millis(10), Duration::from_millis(200));
    let controller = Builder::new("chaos", factory.informer(source))
        .concurrency(8)
        .build(
            |req: Request<ConfigMap>, seen: Arc<Seen>| async move {
                let key = req.key();
                if !seen.in_flight.lock().unwrap().insert(key.clone()) {
                    seen.overlap.store(true, Ordering::SeqCst);
                }
                seen.calls.fetch_add(1, Ordering::SeqCst);
                // Hold the key a little so overlaps would be visible.
                tokio::time::sleep(Duration::from_millis(2)).await;
                let value = match &req {
                    Request::Apply(c) => c.data.as_ref().and_then(|d| d.get("v")).cloned(),
                    Request::Deleted { .. } => None,
                };
                seen.last.lock().unwrap().insert(key.clone(), value);
                seen.in_flight.lock().unwrap().remove(&key);
                Ok(Action::done())
            },
            seen.clone(),
        );
    factory.start();
    let cancel = CancellationToken::new();
    let run = tokio::spawn(controller.run(cancel.clone()));

    // Random-ish changes while the server misbehaves.
    let faults = server.faults().clone();
    let mut expected: BTreeMap<String, Option<String>> = BTreeMap::new();
    let mut rng: u64 = 0x2545F4914F6CDD1D;
    for step in 0..300u64 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let name = format!("cm-{}", rng % 20);
        let value = step.to_string();
        // Failures stay queued until the informer next lists or watches, and kube's client
        // retries 429s with its own growing backoff, so bursts are few and short.
        match step % 100 {
            10 | 60 => faults.drop_watches(),
            20 => {
                // Cut the informer off, change something and compact history, so it must
                // relist (410) rather than resume.
                faults.pause();
                faults.drop_watches();
                server
                    .server()
                    .apply(serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": "while-paused", "namespace": "default"}, "data": {"v": value}}))
                    .await
                    .unwrap();
                expected.insert("while-paused".into(), Some(value.clone()));
                faults.compact();
                faults.resume();
            }
            30 => faults.fail_next(2, 500, Match::verb("list")),
            40 => faults.fail_next(2, 429, Match::verb("watch")),
            _ => {}
        }
        let exists = expected.get(&name).is_some_and(Option::is_some);
        if rng.is_multiple_of(7) && exists {
            cms.delete(&name, &DeleteParams::default()).await.unwrap();
            expected.insert(name, None);
        } else if exists {
            cms.patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"data": {"v": value}})),
            )
            .await
            .unwrap();
            expected.insert(name, Some(value));
        } else {
            cms.create(&PostParams::default(), &cm(&name, &value))
                .await
                .unwrap();
            expected.insert(name, Some(value));
        }
    }
    let want: HashMap<ObjectKey, Option<String>> = expected
        .iter()
        .map(|(n, v)| (ObjectKey::new(Some("default"), n), v.clone()))
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let missing: Vec<String> = {
            let last = seen.last.lock().unwrap();
            // An object created and deleted while the informer was cut off never needs a
            // reconcile; every other final state must have been reconciled.
            want.iter()
                .filter(|(k, v)| last.get(*k) != Some(*v) && !(v.is_none() && last.get(*k).is_none()))
                .map(|(k, v)| format!("{k}: want {v:?}, reconciled {:?}", last.get(k)))
                .collect()
        };
        if missing.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "final states not reconciled: {missing:?}; lists {} watches {}",
            faults.count("list", "configmaps"),
            faults.count("watch", "configmaps"),
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !seen.overlap.load(Ordering::SeqCst),
        "a key was reconciled by two workers at once"
    );
    assert!(
        faults.count("list", "configmaps") >= 2,
        "the compaction forced a relist"
    );
    cancel.cancel();
    run.await.unwrap();
    factory.shutdown();
}

#[derive(Default)]
struct Counts {
    calls: Mutex<HashMap<String, usize>>,
}

impl Counts {
    fn bump(&self, name: &str) -> usize {
        let mut c = self.calls.lock().unwrap();
        let n = c.entry(name.to_string()).or_default();
        *n += 1;
        *n
    }
    fn get(&self, name: &str) -> usize {
        self.calls.lock().unwrap().get(name).copied().unwrap_or(0)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panics_and_errors_are_retried_terminal_errors_are_not() {
    let server = TestServer::start().await.unwrap();
    let client = server.client();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let factory = InformerFactory::new(client.clone());
    let metrics = crwatch::metrics::Metrics::default();
    let counts = Arc::new(Counts::default());
    let controller = Builder::new("errors", factory.all::<ConfigMap>())
        .metrics(&metrics)
        .build(
            |req: Request<ConfigMap>, counts: Arc<Counts>| async move {
                let name = req.key().name;
                let n = counts.bump(&name);
                match name.as_str() {
                    "panics" if n == 1 => panic!("first attempt panics"),
                    "fails" if n < 3 => Err(ReconcileError::transient(anyhow::anyhow!("not yet"))),
                    "terminal" => Err(ReconcileError::terminal(anyhow::anyhow!("invalid spec"))),
                    "requeue" if n < 3 => Ok(Action::requeue_after(Duration::from_millis(50))),
                    _ => Ok(Action::done()),
                }
            },
            counts.clone(),
        );
    factory.start();
    let cancel = CancellationToken::new();
    let run = tokio::spawn(controller.run(cancel.clone()));
    for n in ["panics", "fails", "terminal", "requeue"] {
        cms.create(&PostParams::default(), &cm(n, "1")).await.unwrap();
    }
    wait_for(20, "panic retried", || (counts.get("panics") >= 2).then_some(())).await;
    wait_for(20, "transient error retried until success", || {
        (counts.get("fails") >= 3).then_some(())
    })
    .await;
    wait_for(20, "requeue_after honoured", || {
        (counts.get("requeue") >= 3).then_some(())
    })
    .await;
    wait_for(20, "terminal error seen", || {
        (counts.get("terminal") >= 1).then_some(())
    })
    .await;
    // Give a retry every chance to happen; it must not (the queue is otherwise idle).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(counts.get("terminal"), 1, "terminal errors are not retried");
    assert_eq!(counts.get("fails"), 3, "no reconcile after success");
    // A change to the object brings it back.
    cms.patch(
        "terminal",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"data": {"v": "2"}})),
    )
    .await
    .unwrap();
    wait_for(20, "terminal object reconciled after a change", || {
        (counts.get("terminal") == 2).then_some(())
    })
    .await;
    let text = metrics.encode();
    assert!(
        text.contains("controller_runtime_reconcile_panics_total{controller=\"errors\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("controller_runtime_terminal_reconcile_errors_total{controller=\"errors\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("controller_runtime_reconcile_total{controller=\"errors\",result=\"error\"}"),
        "{text}"
    );
    assert!(
        text.contains("workqueue_adds_total{name=\"errors\",controller=\"errors\"}"),
        "{text}"
    );
    cancel.cancel();
    run.await.unwrap();
    factory.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owned_and_mapped_objects_enqueue_primaries_and_predicates_filter_updates() {
    let server = TestServer::start().await.unwrap();
    let client = server.client();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let factory = InformerFactory::new(client.clone());
    let counts = Arc::new(Counts::default());
    let controller = Builder::new("owner", factory.all::<ConfigMap>())
        .owns(factory.all::<Secret>())
        .watches(factory.all::<Secret>(), |s: &Secret| {
            s.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("for"))
                .map(|n| vec![ObjectKey::new(s.metadata.namespace.as_deref(), n)])
                .unwrap_or_default()
        })
        .with_predicate(Predicate::labels_changed())
        .build(
            |req: Request<ConfigMap>, counts: Arc<Counts>| async move {
                counts.bump(&req.key().name);
                Ok(Action::done())
            },
            counts.clone(),
        );
    factory.start();
    let cancel = CancellationToken::new();
    let run = tokio::spawn(controller.run(cancel.clone()));
    let owner = cms
        .create(&PostParams::default(), &cm("owner", "1"))
        .await
        .unwrap();
    cms.create(&PostParams::default(), &cm("mapped", "1"))
        .await
        .unwrap();
    wait_for(20, "initial reconciles", || {
        (counts.get("owner") == 1 && counts.get("mapped") == 1).then_some(())
    })
    .await;

    // A data-only change is filtered by the labels predicate; a label change is not.
    cms.patch(
        "owner",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"data": {"v": "2"}})),
    )
    .await
    .unwrap();
    cms.patch(
        "owner",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"metadata": {"labels": {"l": "1"}}})),
    )
    .await
    .unwrap();
    wait_for(20, "label change reconciled", || {
        (counts.get("owner") == 2).then_some(())
    })
    .await;

    // An owned Secret (controller ownerReference) enqueues its owner.
    let mut s = Secret::default();
    s.metadata.name = Some("owned".into());
    s.metadata.owner_references = Some(vec![
        k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            name: "owner".into(),
            uid: owner.metadata.uid.clone().unwrap(),
            controller: Some(true),
            ..Default::default()
        },
    ]);
    secrets.create(&PostParams::default(), &s).await.unwrap();
    wait_for(20, "owner reconciled for its Secret", || {
        (counts.get("owner") == 3).then_some(())
    })
    .await;

    // A Secret pointing at "mapped" through the mapper enqueues that ConfigMap.
    let mut m = Secret::default();
    m.metadata.name = Some("pointer".into());
    m.metadata.annotations = Some([("for".to_string(), "mapped".to_string())].into());
    secrets.create(&PostParams::default(), &m).await.unwrap();
    wait_for(20, "mapped reconciled", || {
        (counts.get("mapped") == 2).then_some(())
    })
    .await;
    assert_eq!(
        server.faults().count("watch", "secrets"),
        1,
        "owns and watches share one Secret watch"
    );
    cancel.cancel();
    run.await.unwrap();
    factory.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletion_retried_after_an_error_still_carries_the_last_known_object() {
    let server = TestServer::start().await.unwrap();
    let client = server.client();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let factory = InformerFactory::new(client.clone());
    #[derive(Default)]
    struct Deletions {
        applied: AtomicBool,
        seen: Mutex<Vec<Option<String>>>,
    }
    let deletions = Arc::new(Deletions::default());
    let controller = Builder::new("tombstones", factory.all::<ConfigMap>()).build(
        |req: Request<ConfigMap>, d: Arc<Deletions>| async move {
            if let Request::Apply(_) = &req {
                d.applied.store(true, Ordering::SeqCst);
            }
            if let Request::Deleted { last_known, .. } = req {
                let value = last_known.and_then(|c| c.data.as_ref().and_then(|m| m.get("v")).cloned());
                let attempt = {
                    let mut seen = d.seen.lock().unwrap();
                    seen.push(value);
                    seen.len()
                };
                if attempt < 3 {
                    return Err(ReconcileError::transient(anyhow::anyhow!(
                        "external cleanup failed"
                    )));
                }
            }
            Ok(Action::done())
        },
        deletions.clone(),
    );
    factory.start();
    let cancel = CancellationToken::new();
    let run = tokio::spawn(controller.run(cancel.clone()));
    cms.create(&PostParams::default(), &cm("doomed", "last"))
        .await
        .unwrap();
    wait_for(20, "the object reconciled", || {
        deletions.applied.load(Ordering::SeqCst).then_some(())
    })
    .await;
    cms.delete("doomed", &DeleteParams::default()).await.unwrap();
    wait_for(20, "three deletion attempts", || {
        (deletions.seen.lock().unwrap().len() >= 3).then_some(())
    })
    .await;
    assert_eq!(
        deletions.seen.lock().unwrap().clone(),
        vec![Some("last".to_string()); 3],
        "every retry sees the last known object"
    );
    cancel.cancel();
    run.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_builder_projection_shapes_what_the_reconciler_and_the_cache_hold() {
    use crwatch::projection::Projection;
    let server = TestServer::start().await.unwrap();
    let client = server.client();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let mut obj = cm("big", "1");
    obj.data = Some(
        [
            ("keep".to_string(), "k".to_string()),
            ("drop".to_string(), "x".repeat(4096)),
        ]
        .into(),
    );
    cms.create(&PostParams::default(), &obj).await.unwrap();
    let factory = InformerFactory::new(client.clone());
    let informer = factory.all::<ConfigMap>();
    let seen: Arc<Mutex<Vec<Vec<String>>>> = Arc::default();
    let controller = Builder::new("projected", informer.clone())
        .projection(Projection::fields(["data.keep"]).unwrap())
        .build(
            |req: Request<ConfigMap>, seen: Arc<Mutex<Vec<Vec<String>>>>| async move {
                if let Request::Apply(c) = &req {
                    let keys = c.data.iter().flatten().map(|(k, _)| k.clone()).collect();
                    seen.lock().unwrap().push(keys);
                }
                Ok(Action::done())
            },
            seen.clone(),
        );
    factory.start();
    let cancel = CancellationToken::new();
    let run = tokio::spawn(controller.run(cancel.clone()));
    wait_for(20, "the reconcile", || {
        (!seen.lock().unwrap().is_empty()).then_some(())
    })
    .await;
    assert_eq!(seen.lock().unwrap()[0], ["keep"]);
    let cached = informer
        .store()
        .get(&ObjectKey::new(Some("default"), "big"))
        .unwrap();
    assert_eq!(cached.data.as_ref().map(|d| d.len()), Some(1));
    cancel.cancel();
    run.await.unwrap();
}

/// Objects of the initial list are queued at low priority: a change made while that backlog is
/// being worked through is reconciled next, not after the whole list (FIFO would put it ~190
/// reconciles later).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_overtakes_the_initial_list_backlog() {
    let server = TestServer::start().await.unwrap();
    let client = server.client();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    for i in 0..200 {
        cms.create(&PostParams::default(), &cm(&format!("cm-{i:03}"), "initial"))
            .await
            .unwrap();
    }
    let order: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let factory = InformerFactory::new(client.clone());
    let controller = Builder::new("backlog", factory.all::<ConfigMap>()).build(
        |req: Request<ConfigMap>, order: Arc<Mutex<Vec<(String, String)>>>| async move {
            // Slow enough that the initial list is still queued when the change comes, and that
            // a slow patch or watch delivery under load lets only a few reconciles pass.
            tokio::time::sleep(Duration::from_millis(20)).await;
            if let Request::Apply(c) = &req {
                let v = c
                    .data
                    .as_ref()
                    .and_then(|d| d.get("v"))
                    .cloned()
                    .unwrap_or_default();
                order.lock().unwrap().push((req.key().name.clone(), v));
            }
            Ok(Action::done())
        },
        order.clone(),
    );
    factory.start();
    let cancel = CancellationToken::new();
    let run = tokio::spawn(controller.run(cancel.clone()));
    wait_for(30, "the backlog to start", || {
        (order.lock().unwrap().len() >= 10).then_some(())
    })
    .await;
    // The last object of the list, changed by a user.
    let at_change = order.lock().unwrap().len();
    assert!(at_change < 150, "the backlog went too fast to test: {at_change}");
    cms.patch(
        "cm-199",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"data": {"v": "changed"}})),
    )
    .await
    .unwrap();
    let reconciled_at = wait_for(30, "the change reconciled", || {
        order
            .lock()
            .unwrap()
            .iter()
            .position(|(n, v)| n == "cm-199" && v == "changed")
    })
    .await;
    assert!(
        reconciled_at < at_change + 30,
        "the change waited behind the initial list: reconciled {} reconciles after it was made",
        reconciled_at - at_change
    );
    cancel.cancel();
    run.await.unwrap();
}
