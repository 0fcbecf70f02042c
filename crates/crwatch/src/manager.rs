//! The manager: runs several controllers over shared informers, starts their workers only
//! after the caches synced, serves `/metrics`, `/healthz` and `/readyz`, takes part in leader
//! election, and shuts down gracefully on SIGTERM / SIGINT.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use crate::controller::{Builder, Controller};
use crate::health::{self, Readiness};
use crate::informer::InformerFactory;
use crate::leader::{LeaderElectionConfig, LeaderElector, LeaderState};
use crate::metrics::Metrics;

/// How a manager runs. Defaults follow controller-runtime.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// Where `/metrics` is served (`None`: not served). Default `0.0.0.0:8080`.
    pub metrics_addr: Option<SocketAddr>,
    /// Where `/healthz` and `/readyz` are served (`None`: not served). Default `0.0.0.0:8081`.
    pub probe_addr: Option<SocketAddr>,
    /// How long to wait for caches before giving up. Default 2 minutes.
    pub cache_sync_timeout: Duration,
    /// Leader election; `None` runs controllers unconditionally.
    pub leader_election: Option<LeaderElectionConfig>,
    /// `/readyz` fails once a source (a watch, a file watcher, a database listener) has been
    /// failing for longer than this. Default 60 s; at least 1 s.
    pub source_grace: Duration,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        ManagerConfig {
            metrics_addr: Some(SocketAddr::from(([0, 0, 0, 0], 8080))),
            probe_addr: Some(SocketAddr::from(([0, 0, 0, 0], 8081))),
            cache_sync_timeout: Duration::from_secs(120),
            leader_election: None,
            source_grace: Duration::from_secs(60),
        }
    }
}

/// Why a manager stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// The caches did not sync in time.
    #[error(transparent)]
    CacheSync(#[from] crate::informer::CacheSyncTimeout),
    /// An endpoint could not be bound.
    #[error("serving {what} on {addr}: {source}")]
    Bind {
        /// Which endpoint.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The leader election configuration is invalid.
    #[error(transparent)]
    LeaderElection(#[from] crate::leader::LeaderElectionError),
    /// This replica was leader and lost the lease; controllers were stopped at once.
    /// Restart the process to take part in the election again (as controller-runtime does).
    #[error("leader election lost")]
    LeadershipLost,
}

type RunFn = Box<dyn FnOnce(CancellationToken, CancellationToken) -> BoxFuture<'static, ()> + Send>;

/// Runs controllers. Build it, add controllers made from [`Manager::factory`]'s informers,
/// then [`Manager::run`].
///
/// ```no_run
/// use std::sync::Arc;
/// use crwatch::controller::{Action, Builder, Request};
/// use crwatch::manager::{Manager, ManagerConfig};
/// use k8s_openapi::api::core::v1::ConfigMap;
/// # async fn f(client: kube::Client) -> anyhow::Result<()> {
/// let mut mgr = Manager::new(client, ManagerConfig::default());
/// let ctrl = Builder::new("cm", mgr.factory().all::<ConfigMap>())
///     .metrics(mgr.metrics())
///     .build(|_req: Request<ConfigMap>, _ctx: Arc<()>| async { Ok(Action::done()) }, Arc::new(()));
/// mgr.add(ctrl);
/// mgr.run(crwatch::manager::shutdown_signal()).await?;
/// # Ok(()) }
/// ```
pub struct Manager {
    client: kube::Client,
    factory: Arc<InformerFactory>,
    metrics: Metrics,
    config: ManagerConfig,
    controllers: Vec<RunFn>,
    /// Sharded controllers: they run on every replica, leader or not.
    sharded: Vec<RunFn>,
    ready: Readiness,
    leader_state: tokio::sync::watch::Sender<Option<LeaderState>>,
    bound: tokio::sync::watch::Sender<(Option<SocketAddr>, Option<SocketAddr>)>,
}

impl Manager {
    /// A manager using `client`.
    pub fn new(client: kube::Client, config: ManagerConfig) -> Self {
        let factory = Arc::new(InformerFactory::new(client.clone()));
        let ready = Readiness::default();
        let grace = config.source_grace.max(Duration::from_secs(1));
        let watched = Arc::downgrade(&factory);
        ready.add_check(move || match watched.upgrade() {
            Some(f) => match f.unhealthy(grace) {
                failing if failing.is_empty() => Ok(()),
                failing => Err(failing.join("; ")),
            },
            None => Ok(()),
        });
        let metrics = Metrics::default();
        let sampled = Arc::downgrade(&factory);
        metrics.register_sources(move || sampled.upgrade().map(|f| f.samples()).unwrap_or_default());
        let leader_state = tokio::sync::watch::channel(None).0;
        if let Some(le) = &config.leader_election {
            let state: tokio::sync::watch::Receiver<Option<LeaderState>> = leader_state.subscribe();
            metrics.register_leader(&le.lease_name, move || {
                matches!(*state.borrow(), Some(LeaderState::Leader))
            });
        }
        Manager {
            factory,
            client,
            metrics,
            config,
            controllers: vec![],
            sharded: vec![],
            ready,
            leader_state,
            bound: tokio::sync::watch::channel((None, None)).0,
        }
    }

    /// The shared informer factory: every controller's informers should come from here.
    pub fn factory(&self) -> &InformerFactory {
        &self.factory
    }

    /// The client.
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// The metrics registry served on `/metrics` (pass it to controller builders).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Readiness (true once caches synced).
    pub fn readiness(&self) -> Readiness {
        self.ready.clone()
    }

    /// Leader state: `None` without leader election.
    pub fn leader_state(&self) -> tokio::sync::watch::Receiver<Option<LeaderState>> {
        self.leader_state.subscribe()
    }

    /// The metrics and probe addresses actually bound, once running (useful with port 0).
    pub fn bound_addresses(&self) -> tokio::sync::watch::Receiver<(Option<SocketAddr>, Option<SocketAddr>)> {
        self.bound.subscribe()
    }

    /// A controller builder for `primary` that already reports into this manager's
    /// `/metrics` (a controller built with [`Builder::new`] needs `.metrics(mgr.metrics())`
    /// for that) and publishes Events as `name` (see [`Builder::events`]).
    pub fn controller<K>(&self, name: &str, primary: crate::informer::Informer<K>) -> Builder<K>
    where
        K: kube::Resource + Clone + serde::Serialize + Send + Sync + 'static,
        K::DynamicType: Default,
    {
        Builder::new(name, primary)
            .metrics(&self.metrics)
            .events(crate::events::Recorder::new(self.client.clone(), name))
    }

    /// A membership of the shard ring `config` describes, over this manager's client and
    /// reporting into its `/metrics` (`crwatch_shard_*{ring,shard}`); give it to
    /// [`Builder::shard`].
    ///
    /// ```no_run
    /// # async fn f(client: kube::Client) -> Result<(), Box<dyn std::error::Error>> {
    /// use crwatch::manager::{Manager, ManagerConfig};
    /// use crwatch::shard::ShardConfig;
    /// use k8s_openapi::api::core::v1::ConfigMap;
    /// let mut mgr = Manager::new(client, ManagerConfig::default());
    /// let ring = mgr.shard_ring(ShardConfig::new("operators", "config-watcher"))?;
    /// let controller = mgr
    ///     .controller("config-watcher", mgr.factory().all::<ConfigMap>())
    ///     .shard(ring)
    ///     .build(|_req: crwatch::controller::Request<ConfigMap>, _: std::sync::Arc<()>| async {
    ///         Ok(crwatch::controller::Action::done())
    ///     }, std::sync::Arc::new(()));
    /// mgr.add(controller);
    /// # Ok(()) }
    /// ```
    pub fn shard_ring(
        &self,
        config: crate::shard::ShardConfig,
    ) -> Result<crate::shard::ShardRing, crate::shard::ShardError> {
        crate::shard::ShardRing::with_metrics(self.client.clone(), config, self.metrics.shards.clone())
    }

    /// Add a controller. A sharded one ([`Builder::shard`]) runs on every replica as soon as
    /// the caches sync; the others only on the leader when leader election is configured.
    pub fn add<K, C>(&mut self, controller: Controller<K, C>)
    where
        K: kube::Resource + Clone + Send + Sync + 'static,
        C: Send + Sync + 'static,
    {
        let list = if controller.shard_ring().is_some() {
            &mut self.sharded
        } else {
            &mut self.controllers
        };
        list.push(Box::new(move |cancel, abort| {
            Box::pin(controller.run_until(cancel, abort))
        }));
    }

    /// Run until `shutdown` completes (see [`shutdown_signal`]): serve endpoints, start and
    /// sync caches, win the election if configured, run the controllers; then stop taking
    /// work, let in-flight reconciles finish, stop the watches and release the lease.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), ManagerError> {
        let stop_endpoints = CancellationToken::new();
        let _stop_endpoints_guard = stop_endpoints.clone().drop_guard();
        let mut bound = (None, None);
        if let Some(addr) = self.config.metrics_addr {
            let a = health::serve(
                addr,
                health::metrics_router(self.metrics.clone()),
                stop_endpoints.clone(),
            )
            .await
            .map_err(|source| ManagerError::Bind {
                what: "metrics",
                addr,
                source,
            })?;
            bound.0 = Some(a);
        }
        if let Some(addr) = self.config.probe_addr {
            let a = health::serve(
                addr,
                health::probes_router(self.ready.clone()),
                stop_endpoints.clone(),
            )
            .await
            .map_err(|source| ManagerError::Bind {
                what: "probes",
                addr,
                source,
            })?;
            bound.1 = Some(a);
        }
        self.bound.send_replace(bound);

        if let Some(le) = &self.config.leader_election {
            // Refuse a bad configuration before spending minutes syncing caches.
            le.validate()?;
        }
        tokio::pin!(shutdown);
        self.factory.start();
        tokio::select! {
            r = self.factory.wait_for_cache_sync(self.config.cache_sync_timeout) => r?,
            _ = &mut shutdown => {
                self.factory.shutdown();
                return Ok(());
            }
        }
        self.ready.set(true);

        let controllers_cancel = CancellationToken::new();
        let controllers_abort = CancellationToken::new();
        // Sharded controllers coordinate through their own ring, not the leader's lease.
        let sharded_cancel = CancellationToken::new();
        let mut sharded = tokio::task::JoinSet::new();
        for c in self.sharded {
            sharded.spawn(c(sharded_cancel.clone(), CancellationToken::new()));
        }
        let elector_cancel = CancellationToken::new();
        let mut elector_task = None;
        if let Some(le) = self.config.leader_election.clone() {
            let elector = Arc::new(LeaderElector::new(self.client.clone(), le)?);
            let mut state = elector.state();
            let mut step_downs = elector.step_downs();
            {
                let elector = elector.clone();
                let cancel = elector_cancel.clone();
                elector_task = Some(tokio::spawn(async move { elector.run(cancel).await }));
            }
            // Standbys wait here with warm caches.
            loop {
                // Read the step-down count before the state: a step-down after this point
                // shows up as a change, one before it shows in the state read next.
                step_downs.borrow_and_update();
                let current = state.borrow_and_update().clone();
                self.leader_state.send_replace(Some(current.clone()));
                if current == LeaderState::Leader {
                    break;
                }
                tokio::select! {
                    changed = state.changed() => if changed.is_err() { break },
                    _ = &mut shutdown => {
                        sharded_cancel.cancel();
                        while sharded.join_next().await.is_some() {}
                        elector_cancel.cancel();
                        if let Some(t) = elector_task { let _ = t.await; }
                        self.factory.shutdown();
                        return Ok(());
                    }
                }
            }
            let lost = controllers_abort.clone();
            let tx = self.leader_state.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        // Any step-down ends this term, even if the lease was won back since.
                        changed = step_downs.changed() => {
                            let _ = changed;
                            tx.send_replace(Some(state.borrow().clone()));
                            lost.cancel();
                            return;
                        }
                        changed = state.changed() => {
                            if changed.is_err() {
                                lost.cancel();
                                return;
                            }
                            tx.send_replace(Some(state.borrow_and_update().clone()));
                        }
                    }
                }
            });
        }

        let mut running = tokio::task::JoinSet::new();
        for c in self.controllers {
            running.spawn(c(controllers_cancel.clone(), controllers_abort.clone()));
        }
        let lost_leadership = tokio::select! {
            _ = &mut shutdown => false,
            _ = controllers_abort.cancelled() => true,
        };
        tracing::info!(lost_leadership, "stopping controllers");
        controllers_cancel.cancel();
        sharded_cancel.cancel();
        while running.join_next().await.is_some() {}
        while sharded.join_next().await.is_some() {}
        self.factory.shutdown();
        self.ready.set(false);
        elector_cancel.cancel();
        if let Some(t) = elector_task {
            let _ = t.await;
        }
        if lost_leadership {
            Err(ManagerError::LeadershipLost)
        } else {
            Ok(())
        }
    }
}

/// A metrics, probe or webhook address flag as operators spell it: `host:port`, `:port` (all
/// interfaces, as Go's flags), or `off`/empty for none.
///
/// ```
/// use crwatch::manager::listen_address;
/// assert_eq!(listen_address(":8080").unwrap(), Some("0.0.0.0:8080".parse().unwrap()));
/// assert_eq!(listen_address("off").unwrap(), None);
/// assert!(listen_address("8080").unwrap_err().contains("host:port"));
/// ```
pub fn listen_address(text: &str) -> Result<Option<SocketAddr>, String> {
    if text == "off" || text.is_empty() {
        return Ok(None);
    }
    let full = if text.starts_with(':') {
        format!("0.0.0.0{text}")
    } else {
        text.to_string()
    };
    full.parse()
        .map(Some)
        .map_err(|_| format!("invalid address {text:?}: expected host:port, :port or off"))
}

/// Completes on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
