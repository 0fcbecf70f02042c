//! The operator process: a crwatch manager with the Database controller (owning the
//! credentials Secrets), optional leader election, metrics and probes, and graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use crwatch::controller::Predicate;
use crwatch::events::Recorder;
use crwatch::leader::LeaderElectionConfig;
use crwatch::manager::{Manager, ManagerConfig};
use crwatch::source::kube::KubeSource;
use k8s_openapi::api::core::v1::Secret;

use crate::config::Server;
use crate::controller::{Context, MANAGED_BY, reconcile};
use crate::types::Database;

/// How the operator runs.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Metrics address (`None` disables).
    pub metrics_addr: Option<SocketAddr>,
    /// Probe address (`None` disables).
    pub probe_addr: Option<SocketAddr>,
    /// Leader election (namespace, lease name); `None` runs without.
    pub leader_election: Option<(String, String)>,
    /// Parallel reconciles.
    pub concurrency: usize,
    /// Lease timings for tests: (lease duration, renew deadline, retry period).
    pub lease_timings: Option<(Duration, Duration, Duration)>,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            metrics_addr: Some(SocketAddr::from(([0, 0, 0, 0], 8080))),
            probe_addr: Some(SocketAddr::from(([0, 0, 0, 0], 8081))),
            leader_election: None,
            concurrency: 4,
            lease_timings: None,
        }
    }
}

/// Run the operator until `shutdown` completes (or leadership is lost, which is an error so
/// the process restarts and campaigns again).
pub async fn run(
    client: kube::Client,
    servers: Vec<Server>,
    options: RunOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let leader_election = options.leader_election.as_ref().map(|(ns, lease)| {
        let base = LeaderElectionConfig::new(ns, lease);
        match options.lease_timings {
            Some((lease_duration, renew_deadline, retry_period)) => LeaderElectionConfig {
                lease_duration,
                renew_deadline,
                retry_period,
                ..base
            },
            None => base,
        }
    });
    let mut mgr = Manager::new(
        client.clone(),
        ManagerConfig {
            metrics_addr: options.metrics_addr,
            probe_addr: options.probe_addr,
            leader_election,
            ..ManagerConfig::default()
        },
    );
    let databases = mgr.factory().all::<Database>();
    // Only the operator's own Secrets are cached: caching every Secret would cost memory and
    // needlessly widen what a compromised operator exposes.
    let secrets = mgr.factory().informer(
        KubeSource::<Secret>::all(client.clone()).labels(&format!("{}={}", MANAGED_BY.0, MANAGED_BY.1)),
    );
    let recorder = Recorder::new(client.clone(), "database-operator");
    // The controller's own Events (DecodeFailed on a Database the operator cannot read) come
    // from the same reporter as the reconciler's.
    let controller_events = recorder.clone();
    let ctx = Arc::new(Context::new(client, servers, recorder).context("configuring database servers")?);
    let controller = mgr
        .controller("database", databases)
        .events(controller_events)
        .owns(secrets)
        // Status writes bump no generation; deletion does (the API server sets it with
        // deletionTimestamp), so spec changes and deletions both get here.
        .with_predicate(Predicate::generation_changed())
        .concurrency(options.concurrency.max(1))
        .build(reconcile, ctx);
    mgr.add(controller);
    mgr.run(shutdown).await.context("running the operator")
}
