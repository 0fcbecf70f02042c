//! Sharded controllers against crwatch-apiserver: replicas split the keys, never reconcile
//! one key at the same time (checked across replicas on every reconcile), take over a killed
//! replica's keys once its Lease expires, hand keys over to a new replica, and survive a
//! membership storm with every object's final state reconciled.
//!
//! Each replica runs on its own tokio runtime and thread with its own client: killing one
//! shuts its runtime down, dropping its tasks and connections as a crashed process would (its
//! Lease stays behind until it expires).

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crwatch::controller::{Action, Builder, Request};
use crwatch::informer::InformerFactory;
use crwatch::shard::{ShardConfig, ShardMode, ShardRing, ShardStatus};
use crwatch::source::kube::KubeSource;
use crwatch::store::ObjectKey;
use crwatch_apiserver::TestServer;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};
use tokio_util::sync::CancellationToken;

const LEASE: Duration = Duration::from_secs(3);
const RENEW: Duration = Duration::from_secs(2);
const RETRY: Duration = Duration::from_millis(250);

/// What every replica's reconciler reports into.
#[derive(Default)]
struct Seen {
    /// Which replica is reconciling each key right now.
    running: Mutex<HashMap<ObjectKey, String>>,
    /// A key found running on another replica when a reconcile started.
    overlaps: Mutex<Vec<String>>,
    /// The last `data.v` reconciled per key, and by whom.
    last: Mutex<HashMap<ObjectKey, (String, String)>>,
    reconciles: Mutex<HashMap<String, usize>>,
    /// While set, reconciles take a while, so overlaps and handovers of running work show.
    slow: AtomicBool,
    /// Reconciles of deleted objects (nothing here is ever deleted).
    deletions: AtomicUsize,
}

/// Marks a key as running on a replica until dropped.
struct Running(Arc<Seen>, ObjectKey);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.lock().unwrap().remove(&self.1);
    }
}

struct Replica {
    id: String,
    runtime: Option<tokio::runtime::Runtime>,
    cancel: CancellationToken,
    done: Option<tokio::task::JoinHandle<()>>,
    status: tokio::sync::watch::Receiver<ShardStatus>,
    ring: ShardRing,
    /// Objects in the replica's cache.
    cached: Arc<AtomicUsize>,
}

impl Replica {
    /// Start replica `id` of the `sharded` controller on its own runtime.
    async fn start(kubeconfig: PathBuf, id: &str, seen: Arc<Seen>) -> Replica {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let cancel = CancellationToken::new();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let id_owned = id.to_string();
        let stop = cancel.clone();
        let cached = Arc::new(AtomicUsize::new(0));
        let count = cached.clone();
        let done = runtime.spawn(async move {
            let kc = kube::config::Kubeconfig::read_from(&kubeconfig).unwrap();
            let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .unwrap();
            let client = kube::Client::try_from(config).unwrap();
            let ring = ShardRing::new(
                client.clone(),
                ShardConfig {
                    identity: id_owned.clone(),
                    lease_duration: LEASE,
                    renew_deadline: RENEW,
                    retry_period: RETRY,
                    ..ShardConfig::new("default", "sharded")
                },
            )
            .unwrap();
            let factory = InformerFactory::new(client.clone());
            let source = KubeSource::<ConfigMap>::namespaced(client.clone(), "default")
                .labels("app=web")
                .backoff(Duration::from_millis(10), Duration::from_millis(200));
            let me = id_owned.clone();
            let informer = factory.informer(source);
            let store = informer.store();
            let stop_count = stop.clone();
            tokio::spawn(async move {
                while !stop_count.is_cancelled() {
                    count.store(store.len(), Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            });
            let controller = Builder::new("sharded", informer)
                .shard(ring.clone())
                .concurrency(4)
                .build(
                    move |req: Request<ConfigMap>, seen: Arc<Seen>| {
                        let me = me.clone();
                        async move {
                            let key = req.key();
                            if let Some(other) = seen.running.lock().unwrap().insert(key.clone(), me.clone())
                            {
                                seen.overlaps
                                    .lock()
                                    .unwrap()
                                    .push(format!("{key}: {me} and {other}"));
                            }
                            // A reconcile ends when its replica dies, too (its future is dropped).
                            let _running = Running(seen.clone(), key.clone());
                            let pause = if seen.slow.load(Ordering::SeqCst) { 20 } else { 1 };
                            tokio::time::sleep(Duration::from_millis(pause)).await;
                            match &req {
                                Request::Apply(c) => {
                                    let v = c
                                        .data
                                        .as_ref()
                                        .and_then(|d| d.get("v"))
                                        .cloned()
                                        .unwrap_or_default();
                                    seen.last.lock().unwrap().insert(key.clone(), (v, me.clone()));
                                }
                                Request::Deleted { .. } => {
                                    seen.deletions.fetch_add(1, Ordering::SeqCst);
                                }
                            }
                            *seen.reconciles.lock().unwrap().entry(me.clone()).or_default() += 1;
                            Ok(Action::done())
                        }
                    },
                    seen,
                );
            factory.start();
            let _ = tx.send(ring.clone());
            controller.run(stop).await;
            factory.shutdown();
        });
        let ring = rx.await.unwrap();
        Replica {
            id: id.to_string(),
            runtime: Some(runtime),
            cancel,
            done: Some(done),
            status: ring.status(),
            ring,
            cached,
        }
    }

    /// Stop gracefully: finish in-flight work, leave the ring (its Lease is deleted).
    async fn stop(mut self) {
        self.cancel.cancel();
        if let Some(done) = self.done.take() {
            tokio::time::timeout(Duration::from_secs(20), done)
                .await
                .expect("replica stops")
                .unwrap();
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }

    /// Crash: every task and connection of the replica is dropped at once.
    fn kill(mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }

    fn active(&self) -> usize {
        self.status.borrow().active.len()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

async fn write_all(cms: &Api<ConfigMap>, n: usize, value: &str) {
    for i in 0..n {
        let name = format!("cm-{i:03}");
        let c = common::cm(&name, value);
        match cms.get_opt(&name).await.unwrap() {
            Some(mut old) => {
                old.data = c.data;
                cms.replace(&name, &PostParams::default(), &old).await.unwrap();
            }
            None => {
                cms.create(&PostParams::default(), &c).await.unwrap();
            }
        }
    }
}

/// Wait until every one of the `n` objects was last reconciled with `value`.
async fn all_reconciled(seen: &Seen, n: usize, value: &str, secs: u64) {
    common::wait_for(secs, &format!("every object reconciled at {value}"), || {
        let last = seen.last.lock().unwrap();
        let done = (0..n)
            .filter(|i| {
                last.get(&ObjectKey::new(Some("default"), &format!("cm-{i:03}")))
                    .is_some_and(|(v, _)| v == value)
            })
            .count();
        (done == n).then_some(())
    })
    .await;
}

/// Wait until the replicas agree on the members and their active slots partition the ring.
async fn converged(replicas: &[&Replica], secs: u64) {
    let ids: Vec<String> = {
        let mut v: Vec<String> = replicas.iter().map(|r| r.id.clone()).collect();
        v.sort();
        v
    };
    common::wait_for(secs, "the ring to converge", || {
        let statuses: Vec<ShardStatus> = replicas.iter().map(|r| r.status.borrow().clone()).collect();
        let agreed = statuses.iter().all(|s| s.members == ids && s.acknowledged == ids);
        let total: usize = statuses.iter().map(|s| s.active.len()).sum();
        (agreed && total == 64).then_some(())
    })
    .await;
}

fn assert_no_overlap(seen: &Seen) {
    let overlaps = seen.overlaps.lock().unwrap();
    assert!(
        overlaps.is_empty(),
        "keys reconciled by two replicas at once: {overlaps:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_split_the_keys_and_never_overlap() {
    let server = TestServer::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    let seen = Arc::new(Seen::default());
    write_all(&cms, 90, "1").await;
    let a = Replica::start(server.kubeconfig().to_path_buf(), "replica-a", seen.clone()).await;
    let b = Replica::start(server.kubeconfig().to_path_buf(), "replica-b", seen.clone()).await;
    let c = Replica::start(server.kubeconfig().to_path_buf(), "replica-c", seen.clone()).await;
    converged(&[&a, &b, &c], 30).await;
    all_reconciled(&seen, 90, "1", 30).await;
    // Without the feature gate the server sends everything: client-side filtering.
    assert_eq!(a.ring.mode(), ShardMode::ClientSide);

    // Converged: every change is reconciled once, by its slot's owner only.
    seen.slow.store(true, Ordering::SeqCst);
    seen.reconciles.lock().unwrap().clear();
    write_all(&cms, 90, "2").await;
    all_reconciled(&seen, 90, "2", 30).await;
    let per_replica = seen.reconciles.lock().unwrap().clone();
    assert_eq!(
        per_replica.len(),
        3,
        "every replica reconciled some keys: {per_replica:?}"
    );
    for (id, n) in &per_replica {
        assert!(
            *n >= 10 && *n <= 60,
            "{id} reconciled {n} of 90 keys: {per_replica:?}"
        );
    }
    assert_eq!([a.active(), b.active(), c.active()].iter().sum::<usize>(), 64);
    for n in [a.active(), b.active(), c.active()] {
        assert!((21..=22).contains(&n), "balanced slots: {n}");
    }
    assert_no_overlap(&seen);
    for r in [a, b, c] {
        r.stop().await;
    }
    // Every replica deleted its Lease on the way out.
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(server.client(), "default");
    assert!(leases.list(&Default::default()).await.unwrap().items.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replicas_keys_are_taken_over_after_its_lease_expires() {
    let server = TestServer::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    let seen = Arc::new(Seen::default());
    write_all(&cms, 60, "1").await;
    let a = Replica::start(server.kubeconfig().to_path_buf(), "replica-a", seen.clone()).await;
    let b = Replica::start(server.kubeconfig().to_path_buf(), "replica-b", seen.clone()).await;
    let c = Replica::start(server.kubeconfig().to_path_buf(), "replica-c", seen.clone()).await;
    converged(&[&a, &b, &c], 30).await;
    all_reconciled(&seen, 60, "1", 30).await;

    let killed_at = Instant::now();
    c.kill();
    write_all(&cms, 60, "2").await;
    all_reconciled(&seen, 60, "2", 30).await;
    let took = killed_at.elapsed();
    println!(
        "keys of the killed replica reconciled again {took:?} after the kill (lease {LEASE:?}, retry {RETRY:?})"
    );
    // The survivors wait for the Lease to expire on their own clocks: at most the lease
    // duration after they last saw it change, which was at most a retry period before the kill.
    assert!(
        took >= LEASE - RETRY * 2,
        "taken over before the lease expired: {took:?}"
    );
    assert!(
        took <= LEASE + RETRY * 4 + Duration::from_secs(3),
        "took {took:?}"
    );
    converged(&[&a, &b], 10).await;
    assert_no_overlap(&seen);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_added_replica_gets_keys_through_the_handover() {
    let server = TestServer::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    let seen = Arc::new(Seen::default());
    write_all(&cms, 60, "0").await;
    let a = Replica::start(server.kubeconfig().to_path_buf(), "replica-a", seen.clone()).await;
    let b = Replica::start(server.kubeconfig().to_path_buf(), "replica-b", seen.clone()).await;
    converged(&[&a, &b], 30).await;
    all_reconciled(&seen, 60, "0", 30).await;

    // Changes keep coming, reconciles are slow, and a third replica joins meanwhile.
    seen.slow.store(true, Ordering::SeqCst);
    let writer = {
        let cms = cms.clone();
        tokio::spawn(async move {
            for round in 1..=4 {
                write_all(&cms, 60, &round.to_string()).await;
            }
        })
    };
    let c = Replica::start(server.kubeconfig().to_path_buf(), "replica-c", seen.clone()).await;
    converged(&[&a, &b, &c], 30).await;
    writer.await.unwrap();
    all_reconciled(&seen, 60, "4", 30).await;
    assert!(c.active() >= 21, "the new replica owns its share: {}", c.active());
    seen.reconciles.lock().unwrap().clear();
    write_all(&cms, 60, "5").await;
    all_reconciled(&seen, 60, "5", 30).await;
    assert!(
        seen.reconciles
            .lock()
            .unwrap()
            .get("replica-c")
            .is_some_and(|n| *n > 0)
    );
    assert_no_overlap(&seen);
    for r in [a, b, c] {
        r.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_membership_storm_never_overlaps_and_loses_nothing() {
    let server = TestServer::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    let seen = Arc::new(Seen::default());
    write_all(&cms, 40, "0").await;
    seen.slow.store(true, Ordering::SeqCst);
    let kubeconfig = server.kubeconfig().to_path_buf();
    let mut replicas = vec![
        Replica::start(kubeconfig.clone(), "storm-0", seen.clone()).await,
        Replica::start(kubeconfig.clone(), "storm-1", seen.clone()).await,
    ];
    let writer = {
        let cms = cms.clone();
        tokio::spawn(async move {
            for round in 1..=6 {
                write_all(&cms, 40, &round.to_string()).await;
            }
        })
    };
    // Joins, graceful leaves and crashes, faster than the ring settles.
    let mut next = 2;
    let mut rng: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..10 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        match rng % 3 {
            0 | 1 if replicas.len() < 4 => {
                replicas
                    .push(Replica::start(kubeconfig.clone(), &format!("storm-{next}"), seen.clone()).await);
                next += 1;
            }
            0 if replicas.len() > 1 => {
                let i = (rng >> 8) as usize % replicas.len();
                replicas.remove(i).stop().await;
            }
            _ if replicas.len() > 1 => {
                let i = (rng >> 8) as usize % replicas.len();
                replicas.remove(i).kill();
            }
            _ => {}
        }
        // Wait for a ring read or two, not for convergence.
        let pause = RETRY * (1 + (rng >> 16) as u32 % 4);
        tokio::time::sleep(pause).await;
    }
    writer.await.unwrap();
    let refs: Vec<&Replica> = replicas.iter().collect();
    converged(&refs, 40).await;
    write_all(&cms, 40, "final").await;
    all_reconciled(&seen, 40, "final", 30).await;
    assert_no_overlap(&seen);
    for r in replicas {
        r.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_sharded_list_and_watch_each_replica_caches_only_its_slots() {
    let server = TestServer::with_config(crwatch_apiserver::Config {
        bookmark_interval: Duration::from_secs(1),
        feature_gates: crwatch_apiserver::FeatureGates {
            sharded_list_and_watch: true,
        },
        ..Default::default()
    })
    .await
    .unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    let seen = Arc::new(Seen::default());
    write_all(&cms, 90, "1").await;
    let a = Replica::start(server.kubeconfig().to_path_buf(), "replica-a", seen.clone()).await;
    let b = Replica::start(server.kubeconfig().to_path_buf(), "replica-b", seen.clone()).await;
    converged(&[&a, &b], 30).await;
    all_reconciled(&seen, 90, "1", 30).await;
    assert_eq!(a.ring.mode(), ShardMode::ServerSide);
    assert_eq!(b.ring.mode(), ShardMode::ServerSide);
    // Each cache holds about half the objects, and together exactly all of them.
    let cached = |r: &Replica| r.cached.load(Ordering::SeqCst);
    common::wait_for(10, "caches to hold only their own slots", || {
        (cached(&a) + cached(&b) == 90).then_some(())
    })
    .await;
    assert!((20..=70).contains(&cached(&a)), "replica a caches {}", cached(&a));

    // A third replica: slots move, caches follow (relists under the new selectors), and no
    // object that merely moved to another replica is handled as deleted.
    let c = Replica::start(server.kubeconfig().to_path_buf(), "replica-c", seen.clone()).await;
    converged(&[&a, &b, &c], 30).await;
    common::wait_for(10, "caches to follow the new slots", || {
        (cached(&a) + cached(&b) + cached(&c) == 90).then_some(())
    })
    .await;
    write_all(&cms, 90, "2").await;
    all_reconciled(&seen, 90, "2", 30).await;
    assert_eq!(
        seen.deletions.load(Ordering::SeqCst),
        0,
        "moves are not deletions"
    );
    assert_no_overlap(&seen);
    for r in [a, b, c] {
        r.stop().await;
    }
}
