//! The shard section: a reconcile-bound controller (each reconcile waits a fixed time, as one
//! that calls an external system does) run as 1, 2 and 3 replicas of one shard ring, and the
//! cache heap per replica with and without server-side sharding (KEP-5866 on crwatch-apiserver).
//!
//! The replicas run in this process, each with its own client, informer, ring Lease and
//! controller, against an in-process crwatch-apiserver. Throughput is the whole update of every
//! object, from the first write until every object's new value has been reconciled.
//! kube-runtime has no sharding, so the rows are crwatch's only.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use crwatch::controller::{Action, Builder, Request};
use crwatch::informer::InformerFactory;
use crwatch::shard::{ShardConfig, ShardMode, ShardRing, ShardStatus};
use crwatch::source::kube::KubeSource;
use crwatch::store::ObjectKey;
use crwatch_apiserver::{Config, FeatureGates, TestServer};
use k8s_openapi::api::core::v1::ConfigMap;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::cache::poll_within;
use crate::report::{Row, median, mib};

const NAMESPACE: &str = "bench";

/// The last revision each key was reconciled at.
type Reconciled = Arc<Mutex<HashMap<ObjectKey, u64>>>;

struct Replica {
    cancel: CancellationToken,
    done: tokio::task::JoinHandle<()>,
    status: tokio::sync::watch::Receiver<ShardStatus>,
    ring: ShardRing,
}

async fn start_replica(
    server: &TestServer,
    id: usize,
    cost: Duration,
    reconciled: Reconciled,
) -> Result<Replica> {
    let kc = kube::config::Kubeconfig::read_from(server.kubeconfig())?;
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    let client = kube::Client::try_from(config)?;
    let ring = ShardRing::new(
        client.clone(),
        ShardConfig {
            identity: format!("bench-replica-{id}"),
            lease_duration: Duration::from_secs(3),
            renew_deadline: Duration::from_secs(2),
            retry_period: Duration::from_millis(250),
            ..ShardConfig::new(NAMESPACE, "bench")
        },
    )?;
    let factory = InformerFactory::new(client.clone());
    let informer = factory.informer(KubeSource::<ConfigMap>::namespaced(client, NAMESPACE));
    let controller = Builder::new("bench", informer).shard(ring.clone()).build(
        move |req: Request<ConfigMap>, reconciled: Reconciled| async move {
            tokio::time::sleep(cost).await;
            if let Request::Apply(c) = &req {
                let revision = c
                    .data
                    .as_ref()
                    .and_then(|d| d.get("revision"))
                    .and_then(|r| r.parse().ok())
                    .unwrap_or(0);
                if let Ok(mut r) = reconciled.lock() {
                    r.insert(req.key(), revision);
                }
            }
            Ok(Action::done())
        },
        reconciled,
    );
    factory.start();
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    let status = ring.status();
    let done = tokio::spawn(async move {
        controller.run(stop).await;
        factory.shutdown();
    });
    Ok(Replica {
        cancel,
        done,
        status,
        ring,
    })
}

/// Write every object at `revision`, with `bytes` of payload (in three values).
async fn write_all(server: &TestServer, objects: usize, revision: u64, bytes: usize) -> Result<()> {
    for i in 0..objects {
        let mut data = serde_json::Map::new();
        data.insert("revision".into(), revision.to_string().into());
        for k in 0..3 {
            data.insert(
                format!("value-{k}"),
                crate::cache::payload(i, k, bytes / 3).into(),
            );
        }
        server
            .server()
            .apply(json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": crate::cache::name_of(i), "namespace": NAMESPACE},
                "data": data,
            }))
            .await?;
    }
    Ok(())
}

fn all_at(reconciled: &Reconciled, objects: usize, revision: u64) -> bool {
    let Ok(r) = reconciled.lock() else { return false };
    r.len() >= objects && r.values().filter(|v| **v == revision).count() == objects
}

/// Payload of the objects the memory rows cache (as the cache section's, about 3 KiB).
const MEMORY_PAYLOAD: usize = 3000;

/// Payload of the objects the throughput rows update: small, so the in-process server's
/// writes (which share the two cores with the replicas) stay ahead of the reconciles.
const THROUGHPUT_PAYLOAD: usize = 60;

async fn server(sharded_gate: bool, objects: usize, bytes: usize) -> Result<TestServer> {
    let server = TestServer::with_config(Config {
        feature_gates: FeatureGates {
            sharded_list_and_watch: sharded_gate,
        },
        ..Default::default()
    })
    .await?;
    server
        .server()
        .apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}))
        .await?;
    write_all(&server, objects, 1, bytes).await?;
    Ok(server)
}

async fn converge(replicas: &[Replica], slots: usize) -> Result<()> {
    let n = replicas.len();
    poll_within("the ring to converge", Duration::from_secs(60), || {
        let statuses: Vec<ShardStatus> = replicas.iter().map(|r| r.status.borrow().clone()).collect();
        statuses
            .iter()
            .all(|s| s.members.len() == n && s.acknowledged == s.members)
            && statuses.iter().map(|s| s.active.len()).sum::<usize>() == slots
    })
    .await
}

async fn stop(replicas: Vec<Replica>) -> Result<()> {
    for r in replicas {
        r.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(30), r.done)
            .await
            .context("a replica did not stop")??;
    }
    Ok(())
}

/// Reconciles per second for an update of every object with `n` replicas.
async fn throughput(n: usize, objects: usize, cost: Duration) -> Result<f64> {
    let server = server(false, objects, THROUGHPUT_PAYLOAD).await?;
    let reconciled: Reconciled = Arc::default();
    let mut replicas = vec![];
    for id in 0..n {
        replicas.push(start_replica(&server, id, cost, reconciled.clone()).await?);
    }
    converge(&replicas, 64).await?;
    poll_within("the first revision reconciled", Duration::from_secs(120), || {
        all_at(&reconciled, objects, 1)
    })
    .await?;
    let started = Instant::now();
    write_all(&server, objects, 2, THROUGHPUT_PAYLOAD).await?;
    poll_within("the second revision reconciled", Duration::from_secs(300), || {
        all_at(&reconciled, objects, 2)
    })
    .await?;
    let rate = objects as f64 / started.elapsed().as_secs_f64();
    stop(replicas).await?;
    Ok(rate)
}

/// Heap per replica (bytes) of three replicas' caches, and whether the server sharded.
async fn memory_per_replica(sharded_gate: bool, objects: usize) -> Result<(f64, ShardMode)> {
    let server = server(sharded_gate, objects, MEMORY_PAYLOAD).await?;
    let before = crate::alloc::settle().await.bytes;
    let reconciled: Reconciled = Arc::default();
    let mut replicas = vec![];
    for id in 0..3 {
        replicas.push(start_replica(&server, id, Duration::ZERO, reconciled.clone()).await?);
    }
    converge(&replicas, 64).await?;
    poll_within("every object reconciled", Duration::from_secs(120), || {
        all_at(&reconciled, objects, 1)
    })
    .await?;
    let after = crate::alloc::settle().await.bytes;
    let mode = replicas[0].ring.mode();
    stop(replicas).await?;
    Ok((after.saturating_sub(before) as f64 / 3.0, mode))
}

/// The section's rows: reconciles/s with 1, 2 and 3 replicas, the speed-up with 3, and the
/// heap per replica with and without server-side sharding.
pub async fn rows(objects: usize, cost: Duration, repeats: usize) -> Result<Vec<Row>> {
    const WHY: &str = "kube-runtime has no sharding";
    let mut rates: Vec<Row> = (1..=3)
        .map(|n| {
            Row::new(
                format!(
                    "sharded reconciles/s, {n} replica(s), {} ms each",
                    cost.as_millis()
                ),
                "/s",
            )
            .at(objects)
            .higher()
            .crwatch_only(WHY)
        })
        .collect();
    let mut speedup = Row::new("speed-up of 3 replicas over 1", "×")
        .at(objects)
        .higher()
        .crwatch_only(WHY);
    let mut client_side = Row::new("cache heap per replica of 3, client-side sharding", "MiB")
        .at(objects)
        .crwatch_only(WHY);
    let mut server_side = Row::new("cache heap per replica of 3, server-side sharding", "MiB")
        .at(objects)
        .crwatch_only(WHY);
    for round in 0..repeats {
        for (i, row) in rates.iter_mut().enumerate() {
            let rate = throughput(i + 1, objects, cost).await?;
            eprintln!("  round {round}: {} replica(s): {rate:.0} reconciles/s", i + 1);
            row.crwatch.push(rate);
        }
        let last = |r: &Row| r.crwatch.last().copied().unwrap_or(f64::NAN);
        speedup.crwatch.push(last(&rates[2]) / last(&rates[0]));
        for (gate, want, row) in [
            (false, ShardMode::ClientSide, &mut client_side),
            (true, ShardMode::ServerSide, &mut server_side),
        ] {
            let (bytes, mode) = memory_per_replica(gate, objects).await?;
            ensure!(mode == want, "expected {want:?} sharding, got {mode:?}");
            eprintln!(
                "  round {round}: {want:?}: {:.1} MiB per replica",
                mib(bytes as usize)
            );
            row.crwatch.push(mib(bytes as usize));
        }
    }
    eprintln!(
        "  speed-up with 3 replicas: {:.2}× (median)",
        median(&speedup.crwatch)
    );
    let mut rows = rates;
    rows.extend([speedup, client_side, server_side]);
    Ok(rows)
}
