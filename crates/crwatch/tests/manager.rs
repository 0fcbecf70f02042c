//! The manager against crwatch-apiserver: probes and metrics, workers only after sync,
//! graceful shutdown that lets in-flight reconciles finish, and leader election where
//! exactly one of two managers reconciles and the other takes over when it stops.

mod common;

use common::{cm, wait_for};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crwatch::controller::{Action, Builder, Request};
use crwatch::leader::{LeaderElectionConfig, LeaderState};
use crwatch::manager::{Manager, ManagerConfig, ManagerError};
use crwatch_apiserver::TestServer;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let code = out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    (code, body)
}

fn local_config() -> ManagerConfig {
    ManagerConfig {
        metrics_addr: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        probe_addr: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        ..ManagerConfig::default()
    }
}

/// Leader election on Lease `lease` as `id`, with a 2 s lease, so tests take over quickly.
fn fast_election(lease: &str, id: &str) -> LeaderElectionConfig {
    LeaderElectionConfig {
        identity: id.to_string(),
        lease_duration: Duration::from_secs(2),
        renew_deadline: Duration::from_millis(1500),
        retry_period: Duration::from_millis(200),
        ..LeaderElectionConfig::new("default", lease)
    }
}

#[derive(Default)]
struct Ctx {
    started: AtomicUsize,
    finished: AtomicUsize,
    slow: AtomicBool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_metrics_and_graceful_shutdown() {
    let server = TestServer::start().await.unwrap();
    let client = server.client();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    cms.create(&PostParams::default(), &cm("a", "")).await.unwrap();
    let mut mgr = Manager::new(client.clone(), local_config());
    let ctx = Arc::new(Ctx::default());
    // Built through the manager, so it reports into the manager's /metrics.
    let ctrl = mgr.controller("cms", mgr.factory().all::<ConfigMap>()).build(
        |_req: Request<ConfigMap>, ctx: Arc<Ctx>| async move {
            ctx.started.fetch_add(1, Ordering::SeqCst);
            if ctx.slow.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            ctx.finished.fetch_add(1, Ordering::SeqCst);
            Ok(Action::done())
        },
        ctx.clone(),
    );
    mgr.add(ctrl);
    let mut bound = mgr.bound_addresses();
    let ready = mgr.readiness();
    let stop = CancellationToken::new();
    let stop2 = stop.clone();
    let run = tokio::spawn(mgr.run(async move { stop2.cancelled().await }));
    let (metrics_addr, probe_addr) = loop {
        if let (Some(m), Some(p)) = *bound.borrow_and_update() {
            break (m, p);
        }
        bound.changed().await.unwrap();
    };
    assert_eq!(http_get(probe_addr, "/healthz").await.0, 200);
    wait_for(20, "ready after sync", || ready.get().then_some(())).await;
    assert_eq!(http_get(probe_addr, "/readyz").await, (200, "ok".into()));
    wait_for(20, "first reconcile", || {
        (ctx.finished.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    let (code, text) = http_get(metrics_addr, "/metrics").await;
    assert_eq!(code, 200);
    for name in [
        "controller_runtime_reconcile_total{controller=\"cms\",result=\"success\"} 1",
        "controller_runtime_max_concurrent_reconciles{controller=\"cms\"} 1",
        // Created at 0 with the controller, as controller-runtime does, so that `increase()`
        // in an alert sees the first error or panic.
        "controller_runtime_reconcile_errors_total{controller=\"cms\"} 0",
        "controller_runtime_reconcile_panics_total{controller=\"cms\"} 0",
        "controller_runtime_reconcile_total{controller=\"cms\",result=\"error\"} 0",
        "controller_runtime_active_workers{controller=\"cms\"} 0",
        "controller_runtime_reconcile_time_seconds_bucket",
        "workqueue_adds_total{name=\"cms\",controller=\"cms\"} 1",
        "workqueue_depth{name=\"cms\",controller=\"cms\"} 0",
        // The informer's figures: its cache is complete and holds the ConfigMaps listed.
        "crwatch_source_synced{source=\"/api/v1/configmaps in all namespaces\"} 1",
        "crwatch_source_relists_total{source=\"/api/v1/configmaps in all namespaces\"} 1",
    ] {
        assert!(text.contains(name), "missing {name} in\n{text}");
    }
    let sample = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| {
                l.strip_prefix(&format!(
                    "{name}{{source=\"/api/v1/configmaps in all namespaces\"}} "
                ))
            })
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
    };
    let listed = cms.list(&Default::default()).await.unwrap().items.len() as f64;
    assert_eq!(sample("crwatch_source_objects"), listed);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let synced_at = sample("crwatch_source_last_sync_timestamp_seconds");
    assert!(
        now - synced_at < 60.0 && synced_at <= now + 1.0,
        "last sync {synced_at}, now {now}"
    );

    // Shutdown while a reconcile is in flight: it finishes before run() returns.
    ctx.slow.store(true, Ordering::SeqCst);
    cms.create(&PostParams::default(), &cm("b", "")).await.unwrap();
    wait_for(20, "slow reconcile started", || {
        (ctx.started.load(Ordering::SeqCst) == 2).then_some(())
    })
    .await;
    stop.cancel();
    run.await.unwrap().unwrap();
    assert_eq!(
        ctx.finished.load(Ordering::SeqCst),
        2,
        "the in-flight reconcile completed"
    );
    assert!(!ready.get());
}

#[derive(Default)]
struct Who {
    reconciled_by: Mutex<HashSet<String>>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_one_of_two_managers_reconciles_and_the_other_takes_over() {
    let server = TestServer::start().await.unwrap();
    let client = server.client();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let who = Arc::new(Who::default());
    let election = |id: &str| fast_election("crwatch-test", id);
    let start = |id: &'static str| {
        let mut mgr = Manager::new(
            client.clone(),
            ManagerConfig {
                metrics_addr: None,
                probe_addr: None,
                leader_election: Some(election(id)),
                ..ManagerConfig::default()
            },
        );
        let ctrl = Builder::new("elected", mgr.factory().all::<ConfigMap>()).build(
            move |req: Request<ConfigMap>, who: Arc<Who>| async move {
                who.reconciled_by
                    .lock()
                    .unwrap()
                    .insert(format!("{id}:{}", req.key().name));
                Ok(Action::done())
            },
            who.clone(),
        );
        mgr.add(ctrl);
        let state = mgr.leader_state();
        let metrics = mgr.metrics().clone();
        let stop = CancellationToken::new();
        let stop2 = stop.clone();
        let task = tokio::spawn(mgr.run(async move { stop2.cancelled().await }));
        (state, metrics, stop, task)
    };
    let (state_a, metrics_a, stop_a, task_a) = start("a");
    let (state_b, metrics_b, stop_b, task_b) = start("b");
    let leader =
        |s: &tokio::sync::watch::Receiver<Option<LeaderState>>| *s.borrow() == Some(LeaderState::Leader);
    wait_for(20, "a leader", || {
        (leader(&state_a) || leader(&state_b)).then_some(())
    })
    .await;
    let (first, second) = if leader(&state_a) { ("a", "b") } else { ("b", "a") };
    assert!(!(leader(&state_a) && leader(&state_b)), "two leaders");
    // client-go's gauge, as controller-runtime's dashboards and alerts read it.
    let (leading, standby) = if first == "a" {
        (&metrics_a, &metrics_b)
    } else {
        (&metrics_b, &metrics_a)
    };
    let status = |m: &crwatch::metrics::Metrics| {
        m.encode()
            .lines()
            .find_map(|l| l.strip_prefix("leader_election_master_status{name=\"crwatch-test\"} "))
            .map(str::to_string)
    };
    assert_eq!(status(leading).as_deref(), Some("1"));
    assert_eq!(status(standby).as_deref(), Some("0"));
    cms.create(&PostParams::default(), &cm("one", "")).await.unwrap();
    wait_for(20, "leader reconciles", || {
        who.reconciled_by
            .lock()
            .unwrap()
            .contains(&format!("{first}:one"))
            .then_some(())
    })
    .await;
    assert!(
        !who.reconciled_by
            .lock()
            .unwrap()
            .iter()
            .any(|k| k.starts_with(second)),
        "the standby reconciled"
    );

    // Stop the leader: it releases the lease and the standby takes over well within the
    // lease duration.
    let ((stop_first, task_first), (stop_second, task_second), state_second, metrics_second) = if first == "a"
    {
        (
            (stop_a, task_a),
            (stop_b, task_b),
            state_b.clone(),
            metrics_b.clone(),
        )
    } else {
        (
            (stop_b, task_b),
            (stop_a, task_a),
            state_a.clone(),
            metrics_a.clone(),
        )
    };
    let stopped_at = tokio::time::Instant::now();
    stop_first.cancel();
    task_first.await.unwrap().unwrap();
    wait_for(10, "standby takes over", || leader(&state_second).then_some(())).await;
    assert_eq!(status(&metrics_second).as_deref(), Some("1"));
    assert!(
        stopped_at.elapsed() < Duration::from_secs(2),
        "took over within the lease duration"
    );
    cms.create(&PostParams::default(), &cm("two", "")).await.unwrap();
    wait_for(20, "new leader reconciles", || {
        who.reconciled_by
            .lock()
            .unwrap()
            .contains(&format!("{second}:two"))
            .then_some(())
    })
    .await;
    stop_second.cancel();
    match task_second.await.unwrap() {
        Ok(()) | Err(ManagerError::LeadershipLost) => {}
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_lease_stops_reconciling_at_once() {
    let server = TestServer::start().await.unwrap();
    let client = server.client();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let mut le = LeaderElectionConfig::new("default", "crwatch-lose");
    le.lease_duration = Duration::from_secs(2);
    le.renew_deadline = Duration::from_millis(1500);
    le.retry_period = Duration::from_millis(200);
    let mut mgr = Manager::new(
        client.clone(),
        ManagerConfig {
            metrics_addr: None,
            probe_addr: None,
            leader_election: Some(le),
            ..ManagerConfig::default()
        },
    );
    let ctx = Arc::new(Ctx::default());
    let ctrl = Builder::new("slow", mgr.factory().all::<ConfigMap>())
        .shutdown_timeout(Duration::from_secs(30))
        .build(
            |_req: Request<ConfigMap>, ctx: Arc<Ctx>| async move {
                ctx.started.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(20)).await;
                ctx.finished.fetch_add(1, Ordering::SeqCst);
                Ok(Action::done())
            },
            ctx.clone(),
        );
    mgr.add(ctrl);
    let state = mgr.leader_state();
    let task = tokio::spawn(mgr.run(std::future::pending()));
    wait_for(20, "leader", || {
        (*state.borrow() == Some(LeaderState::Leader)).then_some(())
    })
    .await;
    cms.create(&PostParams::default(), &cm("x", "")).await.unwrap();
    wait_for(20, "reconcile in flight", || {
        (ctx.started.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    // Every lease renewal fails from now on: the leader must step down within the renew
    // deadline and abandon the in-flight reconcile instead of draining it for 30 s.
    server
        .faults()
        .fail_next(1000, 500, crwatch_apiserver::Match::resource("leases"));
    let lost_at = tokio::time::Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("manager stopped")
        .unwrap();
    assert!(matches!(result, Err(ManagerError::LeadershipLost)), "{result:?}");
    assert!(
        lost_at.elapsed() < Duration::from_secs(5),
        "stopped {:?} after renewals began failing",
        lost_at.elapsed()
    );
    assert_eq!(
        ctx.finished.load(Ordering::SeqCst),
        0,
        "the in-flight reconcile was abandoned"
    );
}

/// With leader election on, a sharded controller runs on every replica (its keys split
/// through its ring), while an unsharded one stays a singleton on the leader; the ring reports
/// into the manager's `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_controllers_run_on_every_replica_singletons_on_the_leader() {
    let server = TestServer::start().await.unwrap();
    let client = server.client();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    for i in 0..40 {
        cms.create(&PostParams::default(), &cm(&format!("cm-{i}"), ""))
            .await
            .unwrap();
    }
    let who = Arc::new(Who::default());
    let start = |id: &'static str| {
        let le = fast_election("crwatch-mixed", id);
        let mut mgr = Manager::new(
            client.clone(),
            ManagerConfig {
                leader_election: Some(le),
                ..local_config()
            },
        );
        let ring = mgr
            .shard_ring(crwatch::shard::ShardConfig {
                identity: id.to_string(),
                lease_duration: Duration::from_secs(2),
                renew_deadline: Duration::from_millis(1500),
                retry_period: Duration::from_millis(200),
                ..crwatch::shard::ShardConfig::new("default", "mixed")
            })
            .unwrap();
        let sharded = mgr
            .controller("sharded", mgr.factory().all::<ConfigMap>())
            .shard(ring)
            .build(
                move |req: Request<ConfigMap>, who: Arc<Who>| async move {
                    who.reconciled_by
                        .lock()
                        .unwrap()
                        .insert(format!("sharded:{id}:{}", req.key().name));
                    Ok(Action::done())
                },
                who.clone(),
            );
        let singleton = mgr
            .controller("singleton", mgr.factory().all::<ConfigMap>())
            .build(
                move |req: Request<ConfigMap>, who: Arc<Who>| async move {
                    who.reconciled_by
                        .lock()
                        .unwrap()
                        .insert(format!("singleton:{id}:{}", req.key().name));
                    Ok(Action::done())
                },
                who.clone(),
            );
        mgr.add(sharded);
        mgr.add(singleton);
        let addrs = mgr.bound_addresses();
        let stop = CancellationToken::new();
        let stop2 = stop.clone();
        let task = tokio::spawn(mgr.run(async move { stop2.cancelled().await }));
        (addrs, stop, task)
    };
    let (addrs_a, stop_a, task_a) = start("a");
    let (_addrs_b, stop_b, task_b) = start("b");
    let count = |prefix: &str| {
        who.reconciled_by
            .lock()
            .unwrap()
            .iter()
            .filter(|k| k.starts_with(prefix))
            .count()
    };
    // Every ConfigMap reconciled by the sharded controller, on both replicas between them,
    // and by the singleton on exactly one.
    wait_for(30, "both replicas share the sharded keys", || {
        let (a, b) = (count("sharded:a:"), count("sharded:b:"));
        (a > 0 && b > 0 && a + b >= 40).then_some(())
    })
    .await;
    wait_for(30, "the singleton reconciles everything", || {
        (count("singleton:a:").max(count("singleton:b:")) == 40).then_some(())
    })
    .await;
    assert!(
        count("singleton:a:") == 0 || count("singleton:b:") == 0,
        "the singleton ran on both replicas"
    );
    let metrics = addrs_a.borrow().0.expect("metrics address");
    let (_, body) = http_get(metrics, "/metrics").await;
    assert!(
        body.contains("crwatch_shard_members{ring=\"mixed\",shard=\"a\"} 2"),
        "{body}"
    );
    stop_a.cancel();
    stop_b.cancel();
    for t in [task_a, task_b] {
        match t.await.unwrap() {
            Ok(()) | Err(ManagerError::LeadershipLost) => {}
            Err(e) => panic!("{e}"),
        }
    }
}
