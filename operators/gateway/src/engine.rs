//! The sync engine: one serialized step that plans from the caches, renders, tests with
//! `nginx -t`, and makes the result live, and the outcome every status is written from.
//!
//! * Nothing is reloaded when the rendered configuration's hash is the one nginx serves
//!   (also right after an operator restart: rendering is deterministic).
//! * A candidate `nginx -t` refuses is never live. The error is pinned on the resource whose
//!   lines (or side file) nginx names; that resource is left out with `RejectedByNginx` and the
//!   rest is tested again (at most [`MAX_ATTEMPTS`] times). nginx's verdict is remembered for
//!   exactly that content, so an unchanged bad resource is not tested again and again.
//! * An error nginx does not pin on anyone keeps the last good configuration live and fails
//!   the sync (the controller retries with backoff).
//! * Bursts coalesce: syncs are serialized, and a sync that finds the configuration already
//!   live (because the one before it saw the same caches) does nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::nginx::{Nginx, NginxError};
use crate::plan::{Plan, ResKey, Snapshot, Verdict, plan};
use crate::render::{Rendered, render};

/// How many resources one sync may leave out for nginx errors before giving up.
pub const MAX_ATTEMPTS: usize = 32;
/// The most remembered nginx verdicts (one per resource content; pruned to live resources).
pub const MAX_MEMO: usize = 100_000;

/// Where the cached objects come from (informer stores in the operator; plain values in
/// tests and benchmarks).
pub type SnapshotFn = Arc<dyn Fn() -> Snapshot + Send + Sync>;

/// Why a sync failed.
#[derive(Debug, Error)]
pub enum SyncError {
    /// nginx trouble not pinned on a resource.
    #[error(transparent)]
    Nginx(#[from] NginxError),
    /// Too many resources refused in one sync.
    #[error("nginx refused {0} candidate configurations in a row; the previous configuration stays live")]
    TooManyRejections(usize),
}

/// What one sync left behind.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Every resource's verdict (with nginx refusals).
    pub verdicts: BTreeMap<ResKey, Verdict>,
    /// The resources live in nginx, with the generation that is live.
    pub programmed: BTreeMap<ResKey, i64>,
    /// The live configuration's hash.
    pub live: Option<String>,
    /// Why the latest sync failed, if it did.
    pub error: Option<String>,
    /// Whether the sync reloaded nginx.
    pub reloaded: bool,
    /// How long the sync took.
    pub took: Duration,
}

#[derive(Default)]
struct State {
    live: Option<String>,
    programmed: BTreeMap<ResKey, i64>,
    /// nginx refusals: resource -> (content hash, message).
    memo: BTreeMap<ResKey, (String, String)>,
    /// The watch epoch the live configuration was planned from.
    planned_epoch: Option<u64>,
}

/// The engine's Prometheus metrics.
#[derive(Debug, Clone, Default)]
pub struct EngineMetrics {
    /// `gateway_nginx_reloads_total`: generations made live (starts included).
    pub reloads: prometheus_client::metrics::counter::Counter,
    /// `gateway_sync_errors_total`: syncs that left the previous configuration live.
    pub sync_errors: prometheus_client::metrics::counter::Counter,
    /// `gateway_nginx_rejections_total`: resources left out because `nginx -t` refused them.
    pub rejections: prometheus_client::metrics::counter::Counter,
    /// `gateway_sync_duration_seconds`: plan, render, test and reload.
    pub sync_seconds: Arc<prometheus_client::metrics::gauge::Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// `gateway_config_bytes`: the live configuration's size.
    pub config_bytes: prometheus_client::metrics::gauge::Gauge,
    /// `gateway_resources_refused`: resources not served (invalid, conflicted, refused by nginx).
    pub refused: prometheus_client::metrics::gauge::Gauge,
    /// `gateway_resources_served`: resources live in nginx.
    pub served: prometheus_client::metrics::gauge::Gauge,
}

impl EngineMetrics {
    /// Register the metrics in `registry`.
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "gateway_nginx_reloads",
            "Generations made live in nginx (starts included)",
            self.reloads.clone(),
        );
        registry.register(
            "gateway_sync_errors",
            "Syncs that left the previous nginx configuration live",
            self.sync_errors.clone(),
        );
        registry.register(
            "gateway_nginx_rejections",
            "Resources left out because nginx -t refused their configuration",
            self.rejections.clone(),
        );
        registry.register(
            "gateway_sync_duration_seconds",
            "Duration of the latest sync (plan, render, nginx -t, reload)",
            (*self.sync_seconds).clone(),
        );
        registry.register(
            "gateway_config_bytes",
            "Size of the live nginx configuration",
            self.config_bytes.clone(),
        );
        registry.register(
            "gateway_resources_refused",
            "GatewayRoutes and AIGateways not served",
            self.refused.clone(),
        );
        registry.register(
            "gateway_resources_served",
            "GatewayRoutes and AIGateways live in nginx",
            self.served.clone(),
        );
    }
}

/// The engine.
pub struct Engine {
    nginx: Nginx,
    snapshot: SnapshotFn,
    state: tokio::sync::Mutex<State>,
    latest: Mutex<Arc<Outcome>>,
    reloads: std::sync::atomic::AtomicU64,
    /// Bumped by every watch event; a sync that planned from the current epoch and finds
    /// nginx serving its generation has nothing to do.
    epoch: std::sync::atomic::AtomicU64,
    metrics: EngineMetrics,
}

impl Engine {
    /// An engine over `nginx`, planning from `snapshot`.
    pub fn new(nginx: Nginx, snapshot: SnapshotFn) -> Self {
        Engine {
            nginx,
            snapshot,
            state: tokio::sync::Mutex::new(State::default()),
            latest: Mutex::new(Arc::new(Outcome::default())),
            reloads: std::sync::atomic::AtomicU64::new(0),
            epoch: std::sync::atomic::AtomicU64::new(1),
            metrics: EngineMetrics::default(),
        }
    }

    /// The engine's metrics (register them with [`EngineMetrics::register`]).
    pub fn metrics(&self) -> &EngineMetrics {
        &self.metrics
    }

    /// Note that a watched object changed (informer handlers call this).
    pub fn touch(&self) {
        self.epoch.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// The nginx.
    pub fn nginx(&self) -> &Nginx {
        &self.nginx
    }

    /// How many reloads (and starts) this engine did.
    pub fn reloads(&self) -> u64 {
        self.reloads.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The latest outcome.
    pub fn latest(&self) -> Arc<Outcome> {
        self.latest.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Bring nginx in line with the caches; see the module docs.
    pub async fn sync(&self) -> Arc<Outcome> {
        let started = Instant::now();
        let mut state = self.state.lock().await;
        if state.live.is_none() {
            // First sync (or after a restart): adopt what a running nginx serves.
            state.live = self.nginx.serving().await;
        }
        if let Err(e) = self.nginx.ensure_running().await {
            tracing::warn!(error = %e, "nginx is not running and could not be started");
        }
        // Read before the snapshot: an event after this point bumps it, so the next sync
        // plans again.
        let epoch = self.epoch.load(std::sync::atomic::Ordering::SeqCst);
        if state.planned_epoch == Some(epoch)
            && state.live.is_some()
            && self.nginx.serving().await == state.live
        {
            let mut same = (*self.latest()).clone();
            same.reloaded = false;
            same.took = started.elapsed();
            return Arc::new(same);
        }
        let mut plan = plan(&(self.snapshot)());
        let result = self.apply(&mut state, &mut plan).await;
        let mut outcome = Outcome {
            verdicts: plan.verdicts.clone(),
            live: state.live.clone(),
            took: started.elapsed(),
            ..Outcome::default()
        };
        match result {
            Ok(reloaded) => {
                state.programmed = plan.units.iter().map(|u| (u.key.clone(), u.generation)).collect();
                state.planned_epoch = Some(epoch);
                outcome.reloaded = reloaded;
            }
            Err(e) => {
                tracing::warn!(error = %e, "gateway sync failed");
                state.planned_epoch = None;
                self.metrics.sync_errors.inc();
                outcome.error = Some(e.to_string());
            }
        }
        let refused = outcome.verdicts.values().filter(|v| v.refused.is_some()).count();
        self.metrics.refused.set(refused as i64);
        self.metrics.served.set(state.programmed.len() as i64);
        self.metrics.sync_seconds.set(outcome.took.as_secs_f64());
        outcome.programmed = state.programmed.clone();
        let outcome = Arc::new(outcome);
        *self.latest.lock().unwrap_or_else(|p| p.into_inner()) = outcome.clone();
        outcome
    }

    async fn apply(&self, state: &mut State, plan: &mut Plan) -> Result<bool, SyncError> {
        // Forget refusals of resources that are gone or changed.
        let first = render(plan, self.nginx.settings());
        state
            .memo
            .retain(|k, (hash, _)| first.unit_hashes.get(k) == Some(hash));
        let remembered: Vec<(ResKey, String)> = state
            .memo
            .iter()
            .map(|(k, (_, m))| (k.clone(), m.clone()))
            .collect();
        let mut rendered = if remembered.is_empty() {
            first
        } else {
            for (k, m) in remembered {
                plan.refuse(&k, "RejectedByNginx", m);
            }
            render(plan, self.nginx.settings())
        };
        for _ in 0..MAX_ATTEMPTS {
            if state.live.as_deref() == Some(rendered.hash.as_str())
                && self.nginx.serving().await.as_deref() == Some(rendered.hash.as_str())
            {
                return Ok(false);
            }
            self.nginx.write_generation(&rendered)?;
            match self.nginx.test(&rendered).await {
                Ok(()) => {
                    self.nginx.activate(&rendered).await?;
                    self.reloads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    self.metrics.reloads.inc();
                    self.metrics.config_bytes.set(rendered.conf.len() as i64);
                    tracing::info!(generation = %rendered.hash, units = plan.units.len(), "nginx serves a new generation");
                    state.live = Some(rendered.hash.clone());
                    return Ok(true);
                }
                Err(NginxError::Rejected { message, line, file }) => {
                    let _ = std::fs::remove_dir_all(self.nginx.settings().gen_dir(&rendered.hash));
                    let Some(owner) = culprit(&rendered, line, file.as_deref()) else {
                        return Err(NginxError::Rejected { message, line, file }.into());
                    };
                    tracing::warn!(resource = %owner, %message, "nginx refused a resource's configuration; leaving it out");
                    if state.memo.len() < MAX_MEMO
                        && let Some(h) = rendered.unit_hashes.get(&owner)
                    {
                        state.memo.insert(owner.clone(), (h.clone(), message.clone()));
                    }
                    self.metrics.rejections.inc();
                    plan.refuse(&owner, "RejectedByNginx", message);
                    rendered = render(plan, self.nginx.settings());
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(SyncError::TooManyRejections(MAX_ATTEMPTS))
    }

    /// The resources a sync would plan right now (for mapping watch events to keys).
    pub fn snapshot(&self) -> Snapshot {
        (self.snapshot)()
    }
}

fn culprit(r: &Rendered, line: Option<usize>, file: Option<&str>) -> Option<ResKey> {
    if let Some(k) = line.and_then(|l| r.owner_of_line(l)) {
        return Some(k.clone());
    }
    // Side files are named after their unit: tls/<id>.crt, templates/<id>-<name>.json.
    let file = file?;
    let name = file.rsplit('/').next()?;
    let id: String = name.chars().take_while(|c| c.is_ascii_alphanumeric()).collect();
    r.owner_of_id(&id).cloned()
}

/// The keys whose verdicts differ between two outcomes (to requeue their status writes).
pub fn changed(before: &Outcome, after: &Outcome) -> BTreeSet<ResKey> {
    let mut out = BTreeSet::new();
    for (k, v) in &after.verdicts {
        if before.verdicts.get(k) != Some(v) || before.programmed.get(k) != after.programmed.get(k) {
            out.insert(k.clone());
        }
    }
    out
}
