//! Controllers: a builder (`for` a primary resource, `owns` dependents through controller
//! ownerReferences, `watches` anything with a mapper, predicates, concurrency) and the runner
//! that takes keys from a rate-limited workqueue and calls the reconciler, one worker per key
//! at a time, with backoff on errors, terminal errors that are not retried, and panics caught.

pub mod predicate;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::BoxFuture;
use kube::Resource;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::events::{EventType, Recorder};
use crate::informer::{HandlerFns, Informer};
use crate::metrics::{ControllerLabel, ControllerMetrics, ResultLabels};
use crate::queue::{AddOpts, Priority, WorkQueue};
use crate::ryow::{Freshness, WaitOutcome, Writes};
use crate::shard::{ShardKey, ShardRing};
use crate::source::Undecodable;
use crate::store::{ObjectKey, Store};
pub use predicate::Predicate;

/// How long a controller run without a manager waits for its cache (controller-runtime's
/// default).
pub const CACHE_SYNC_TIMEOUT: Duration = Duration::from_secs(120);

/// Undecodable primary objects waiting for their Event; beyond this they get none.
const UNDECODABLE_EVENTS: usize = 64;

/// How long a reconcile waits by default for the caches to show the previous reconcile's
/// writes of its key (see [`Builder::read_your_writes`]).
pub const READ_YOUR_WRITES_TIMEOUT: Duration = Duration::from_secs(10);

/// Keys whose last reconcile's writes are remembered for the next one; at the limit, keys whose
/// writes the caches already show are forgotten first, then arbitrary ones (which then start
/// without waiting).
const MAX_PENDING_WRITES: usize = 8192;

/// The Event reason for a primary object that does not decode.
pub const DECODE_FAILED: &str = "DecodeFailed";

/// Publish a Warning Event on each object that did not decode, until `cancel`.
async fn publish_undecodable(
    controller: String,
    recorder: Recorder,
    mut rx: tokio::sync::mpsc::Receiver<Undecodable>,
    cancel: CancellationToken,
) {
    loop {
        let u = tokio::select! {
            _ = cancel.cancelled() => return,
            u = rx.recv() => match u { Some(u) => u, None => return },
        };
        let regarding = k8s_openapi::api::core::v1::ObjectReference {
            api_version: Some(u.api_version.clone()),
            kind: Some(u.kind.clone()),
            namespace: u.namespace.clone(),
            name: Some(u.name.clone()),
            uid: u.uid.clone(),
            ..Default::default()
        };
        // The error names a field and a kind of value, never the value itself.
        let message = format!(
            "controller {controller} cannot read this {kind}: {error}. It is ignored until fixed: correct that \
             field to match the {kind} schema (or update the controller if the schema changed)",
            kind = u.kind,
            error = u.error,
        );
        if let Err(e) = recorder
            .publish(&regarding, EventType::Warning, DECODE_FAILED, &message, "Decode")
            .await
        {
            tracing::warn!(controller = %controller, object = %u.name, error = %e, "could not publish the DecodeFailed Event");
        }
    }
}

/// What to do after a successful reconcile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Action {
    requeue_after: Option<Duration>,
}

impl Action {
    /// Nothing more until the object changes.
    pub fn done() -> Self {
        Action { requeue_after: None }
    }

    /// Reconcile again after `d` even if nothing changes (polling external state).
    pub fn requeue_after(d: Duration) -> Self {
        Action {
            requeue_after: Some(d),
        }
    }

    /// The requested delay, if any.
    pub fn requeue_delay(&self) -> Option<Duration> {
        self.requeue_after
    }
}

/// A reconcile failure: transient ones are retried with per-key exponential backoff,
/// terminal ones are not retried (until the object changes), counted and logged.
pub enum ReconcileError {
    /// Worth retrying: the API or an external system was unavailable, a conflict, ...
    Transient(anyhow::Error),
    /// Retrying cannot help: invalid spec, permanent refusal.
    Terminal(anyhow::Error),
}

impl ReconcileError {
    /// A transient error.
    pub fn transient(e: impl Into<anyhow::Error>) -> Self {
        ReconcileError::Transient(e.into())
    }

    /// A terminal error.
    pub fn terminal(e: impl Into<anyhow::Error>) -> Self {
        ReconcileError::Terminal(e.into())
    }

    /// Whether retrying is pointless.
    pub fn is_terminal(&self) -> bool {
        matches!(self, ReconcileError::Terminal(_))
    }
}

impl<E: Into<anyhow::Error>> From<E> for ReconcileError {
    fn from(e: E) -> Self {
        ReconcileError::Transient(e.into())
    }
}

impl fmt::Debug for ReconcileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReconcileError::Transient(e) => write!(f, "transient: {e:#}"),
            ReconcileError::Terminal(e) => write!(f, "terminal: {e:#}"),
        }
    }
}

impl fmt::Display for ReconcileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReconcileError::Transient(e) | ReconcileError::Terminal(e) => write!(f, "{e:#}"),
        }
    }
}

/// What a reconcile is about.
#[derive(Debug, Clone)]
pub enum Request<K> {
    /// The object as the cache has it now.
    Apply(Arc<K>),
    /// The object is gone; the last state the cache knew, if it ever saw it.
    Deleted {
        /// Its key.
        key: ObjectKey,
        /// Its last known state.
        last_known: Option<Arc<K>>,
    },
}

impl<K> Request<K> {
    /// The object's key.
    pub fn key(&self) -> ObjectKey
    where
        K: Resource,
    {
        match self {
            Request::Apply(o) => ObjectKey::of(&**o),
            Request::Deleted { key, .. } => key.clone(),
        }
    }
}

/// The result of one reconcile.
pub type ReconcileResult = Result<Action, ReconcileError>;

/// The reconcile function: any `Fn(Request<K>, Arc<C>) -> impl Future<Output = ReconcileResult>`.
pub trait Reconciler<K, C>: Send + Sync + 'static {
    /// Bring the world in line with the object.
    fn reconcile(&self, req: Request<K>, ctx: Arc<C>) -> BoxFuture<'static, ReconcileResult>;
}

impl<K, C, F, Fut> Reconciler<K, C> for F
where
    F: Fn(Request<K>, Arc<C>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ReconcileResult> + Send + 'static,
{
    fn reconcile(&self, req: Request<K>, ctx: Arc<C>) -> BoxFuture<'static, ReconcileResult> {
        Box::pin(self(req, ctx))
    }
}

/// Keys of primary objects a watched object maps to.
pub type Mapper<O> = Arc<dyn Fn(&O) -> Vec<ObjectKey> + Send + Sync>;

/// Builds a [`Controller`].
///
/// ```no_run
/// use std::sync::Arc;
/// use crwatch::controller::{Action, Builder, Predicate, Request};
/// use crwatch::informer::InformerFactory;
/// use k8s_openapi::api::apps::v1::Deployment;
/// use k8s_openapi::api::core::v1::ConfigMap;
/// # async fn f(client: kube::Client) {
/// let factory = InformerFactory::new(client);
/// let controller = Builder::new("config-watcher", factory.all::<ConfigMap>())
///     .owns(factory.all::<Deployment>())
///     .with_predicate(Predicate::generation_changed().or(Predicate::labels_changed()))
///     .concurrency(4)
///     .build(|req: Request<ConfigMap>, _ctx: Arc<()>| async move {
///         println!("reconciling {}", req.key());
///         Ok(Action::done())
///     }, Arc::new(()));
/// factory.start();
/// controller.run(tokio_util::sync::CancellationToken::new()).await;
/// # }
/// ```
pub struct Builder<K> {
    name: String,
    primary: Informer<K>,
    predicate: Option<Predicate<K>>,
    concurrency: usize,
    shutdown_timeout: Duration,
    metrics: Option<ControllerMetrics>,
    queue_metrics: Option<crate::queue::metrics::QueueMetrics>,
    watches: Vec<Wiring>,
    recorder: Option<Recorder>,
    shard: Option<ShardRing>,
    /// Caches a reconcile's writes must show before the key's next reconcile starts.
    caches: Vec<Arc<dyn Freshness>>,
    read_your_writes: Option<Duration>,
}

/// Connects an informer's handlers to the controller's queue; run when the controller starts,
/// so a standby replica's queue stays empty.
type Wiring = Box<dyn FnOnce(WorkQueue<ObjectKey>) + Send>;

fn owner_keys<O: Resource>(obj: &O, kind: &str, group: &str) -> Vec<ObjectKey> {
    let ns = obj.meta().namespace.clone();
    obj.meta()
        .owner_references
        .iter()
        .flatten()
        .filter(|r| r.controller == Some(true) && r.kind == kind)
        .filter(|r| r.api_version.rsplit_once('/').map(|(g, _)| g).unwrap_or("") == group)
        .map(|r| ObjectKey::new(ns.as_deref(), &r.name))
        .collect()
}

impl<K> Builder<K>
where
    K: Resource + Clone + Serialize + Send + Sync + 'static,
    K::DynamicType: Default,
{
    /// A controller named `name` for the objects of `primary`.
    pub fn new(name: &str, primary: Informer<K>) -> Self {
        let caches = vec![crate::ryow::informer_freshness(
            &primary,
            &K::DynamicType::default(),
        )];
        Builder {
            name: name.to_string(),
            primary,
            predicate: None,
            concurrency: 1,
            shutdown_timeout: Duration::from_secs(30),
            metrics: None,
            queue_metrics: None,
            watches: vec![],
            recorder: None,
            shard: None,
            caches,
            read_your_writes: Some(READ_YOUR_WRITES_TIMEOUT),
        }
    }

    /// Read-your-own-writes (on by default, [`READ_YOUR_WRITES_TIMEOUT`]): before a key is
    /// reconciled again, wait until the primary and owned informers' caches show every write
    /// its previous reconcile made through a tracking client ([`crate::client::build`] makes
    /// them; wrap others with [`crate::ryow::tracking`]), for at most `timeout`. A reconcile
    /// then never acts on a cache older than its own last writes (creating a second child,
    /// say). The wait is woken by the caches, never polled; its time and timeouts are the
    /// metrics `crwatch_controller_cache_wait_seconds` and
    /// `crwatch_controller_cache_wait_timeouts_total`. `None` turns it off.
    ///
    /// The timeout is clamped to 1 ms … 10 min.
    ///
    /// ```
    /// use std::time::Duration;
    /// use crwatch::controller::Builder;
    /// use crwatch::informer::InformerFactory;
    /// use k8s_openapi::api::core::v1::ConfigMap;
    /// # fn f(client: kube::Client) {
    /// let factory = InformerFactory::new(client);
    /// let builder = Builder::new("example", factory.all::<ConfigMap>())
    ///     .read_your_writes(Some(Duration::from_secs(2)));
    /// # }
    /// ```
    pub fn read_your_writes(mut self, timeout: Option<Duration>) -> Self {
        self.read_your_writes = timeout.map(|t| t.clamp(Duration::from_millis(1), Duration::from_secs(600)));
        self
    }

    /// Also wait for `cache` to show a reconcile's writes (see [`Builder::read_your_writes`]):
    /// for objects a reconcile writes that neither the primary nor an owned informer holds,
    /// e.g. a dynamic informer of [`Builder::watches`].
    pub fn fresh_after_writes(mut self, cache: Arc<dyn Freshness>) -> Self {
        self.caches.push(cache);
        self
    }

    /// Share the primary objects with the other replicas in `ring` (see [`crate::shard`]):
    /// this replica reconciles only the keys of the slots the ring gives it, never a key
    /// another replica is reconciling, and takes keys over as replicas come and go. The
    /// primary informer is asked to list and watch only those slots (KEP-5866); whether the
    /// server does is [`ShardRing::mode`]. The controller runs the ring (its Lease) itself, and
    /// a [`Manager`](crate::manager::Manager) runs sharded controllers on every replica, with or
    /// without leader election (which then guards only the unsharded ones).
    ///
    /// ```no_run
    /// use std::sync::Arc;
    /// use crwatch::controller::{Action, Builder, Request};
    /// use crwatch::informer::InformerFactory;
    /// use crwatch::shard::{ShardConfig, ShardRing};
    /// use k8s_openapi::api::core::v1::ConfigMap;
    /// # async fn f(client: kube::Client) -> Result<(), crwatch::shard::ShardError> {
    /// let factory = InformerFactory::new(client.clone());
    /// let ring = ShardRing::new(client, ShardConfig::new("operators", "config-watcher"))?;
    /// let controller = Builder::new("config-watcher", factory.all::<ConfigMap>())
    ///     .shard(ring.clone())
    ///     .build(|req: Request<ConfigMap>, _: Arc<()>| async move { Ok(Action::done()) }, Arc::new(()));
    /// factory.start();
    /// controller.run(tokio_util::sync::CancellationToken::new()).await;
    /// println!("filtering: {:?}", ring.mode());
    /// # Ok(()) }
    /// ```
    pub fn shard(mut self, ring: ShardRing) -> Self {
        if !self.primary.shard(&ring) {
            ring.client_side_only();
        }
        self.shard = Some(ring);
        self
    }

    /// Publish Events with `recorder`: a Warning `DecodeFailed` on every primary object that
    /// does not decode into `K` (so `kubectl describe` shows its owner why it is ignored).
    /// A manager's [`controller`](crate::manager::Manager::controller) builder has one already.
    pub fn events(mut self, recorder: Recorder) -> Self {
        self.recorder = Some(recorder);
        self
    }

    /// Only updates of the primary object passing `p` enqueue it (creations and deletions
    /// always do). Several calls combine with `and`.
    pub fn with_predicate(mut self, p: Predicate<K>) -> Self {
        self.predicate = Some(match self.predicate.take() {
            Some(existing) => existing.and(p),
            None => p,
        });
        self
    }

    /// Keep only the projected fields of the primary objects in the cache (see
    /// [`crate::projection`]): the reconciler then sees projected objects. Call before the
    /// informer starts, so the first list is projected too.
    ///
    /// ```
    /// use crwatch::controller::Builder;
    /// use crwatch::informer::InformerFactory;
    /// use crwatch::projection::Projection;
    /// use k8s_openapi::api::apps::v1::Deployment;
    /// use k8s_openapi::api::core::v1::ConfigMap;
    /// # fn f(client: kube::Client) -> Result<(), crwatch::projection::ProjectionError> {
    /// let factory = InformerFactory::new(client);
    /// let builder = Builder::new("example", factory.all::<ConfigMap>())
    ///     .projection(Projection::fields(["data.mode"])?)
    ///     // Owned Deployments: the controller reads their status, nothing of the spec.
    ///     .owns_projected(factory.all::<Deployment>(), Projection::fields(["status"])?);
    /// # Ok(())
    /// # }
    /// ```
    pub fn projection(self, projection: crate::projection::Projection) -> Self
    where
        K: serde::de::DeserializeOwned,
    {
        self.primary.set_projection(projection);
        self
    }

    /// [`Builder::owns`] with the owned objects projected (see [`Builder::projection`]):
    /// owned objects are often many and big, and a controller usually reads only their status
    /// and owner references (identity metadata always stays).
    pub fn owns_projected<O>(self, informer: Informer<O>, projection: crate::projection::Projection) -> Self
    where
        O: Resource + Clone + Serialize + serde::de::DeserializeOwned + Send + Sync + 'static,
        O::DynamicType: Default,
    {
        informer.set_projection(projection);
        self.owns(informer)
    }

    /// Reconcile the controlling owner (an ownerReference with `controller: true` to a `K`)
    /// whenever an object of `informer` changes.
    pub fn owns<O>(mut self, informer: Informer<O>) -> Self
    where
        O: Resource + Clone + Serialize + Send + Sync + 'static,
        O::DynamicType: Default,
    {
        self.caches.push(crate::ryow::informer_freshness(
            &informer,
            &O::DynamicType::default(),
        ));
        let dt = K::DynamicType::default();
        let kind = K::kind(&dt).to_string();
        let group = K::group(&dt).to_string();
        self.watches(informer, move |o: &O| owner_keys(o, &kind, &group))
    }

    /// Reconcile the primary keys `mapper` returns whenever an object of `informer` changes.
    pub fn watches<O>(
        mut self,
        informer: Informer<O>,
        mapper: impl Fn(&O) -> Vec<ObjectKey> + Send + Sync + 'static,
    ) -> Self
    where
        O: Resource + Clone + Serialize + Send + Sync + 'static,
    {
        let mapper: Mapper<O> = Arc::new(mapper);
        let controller = self.name.clone();
        self.watches.push(Box::new(move |queue| {
            let enqueue = move |o: &O| {
                for k in mapper(o) {
                    enqueue_key(&queue, &controller, k, Priority::DEFAULT);
                }
            };
            let (e1, e2, e3) = (enqueue.clone(), enqueue.clone(), enqueue);
            informer.add_handler(
                HandlerFns::new()
                    .on_add(move |o: &Arc<O>| e1(o))
                    .on_update(move |o: &Arc<O>, n: &Arc<O>, _| {
                        // The old object may point at another primary (owner or mapping changed).
                        e2(o);
                        e2(n);
                    })
                    .without_diff()
                    .on_delete(move |o: &Arc<O>| e3(o)),
            );
        }));
        self
    }

    /// At most `n` reconciles at once (default 1, as controller-runtime; never unbounded).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// How long shutdown waits for in-flight reconciles (default 30 s).
    pub fn shutdown_timeout(mut self, d: Duration) -> Self {
        self.shutdown_timeout = d;
        self
    }

    /// Report into these metric families (a manager passes its own).
    pub fn metrics(mut self, metrics: &crate::metrics::Metrics) -> Self {
        self.metrics = Some(metrics.controllers.clone());
        self.queue_metrics = Some(metrics.queues.clone());
        self
    }

    /// Wire the handlers and make the controller.
    pub fn build<C, R>(self, reconciler: R, ctx: Arc<C>) -> Controller<K, C>
    where
        C: Send + Sync + 'static,
        R: Reconciler<K, C>,
    {
        let mut qb = WorkQueue::builder(&self.name);
        if let Some(m) = &self.queue_metrics {
            qb = qb.metrics(m.clone(), &self.name);
        }
        let queue: WorkQueue<ObjectKey> = qb.build();
        let tombstones: Arc<Mutex<HashMap<ObjectKey, Arc<K>>>> = Arc::default();
        let mut wiring: Vec<Wiring> = Vec::with_capacity(self.watches.len() + 1);
        // Bounded: a flood of bad objects drops Events (each is logged and counted anyway).
        let (undecodable_tx, undecodable_rx) = tokio::sync::mpsc::channel::<Undecodable>(UNDECODABLE_EVENTS);
        {
            let primary = self.primary.clone();
            let predicate = self.predicate.clone();
            let ts_add = tombstones.clone();
            let ts_del = tombstones.clone();
            let publish = self.recorder.is_some();
            let ring = self.shard.clone();
            let listing = self.primary.clone();
            let (n1, n2, n3) = (self.name.clone(), self.name.clone(), self.name.clone());
            wiring.push(Box::new(move |queue: WorkQueue<ObjectKey>| {
                let (q1, q2, q3) = (queue.clone(), queue.clone(), queue);
                primary.add_handler(
                    HandlerFns::new()
                        .on_undecodable(move |u: &Undecodable| {
                            if publish && undecodable_tx.try_send(u.clone()).is_err() {
                                tracing::debug!(object = %u.name, "too many undecodable objects at once; no Event for this one");
                            }
                        })
                        .on_add(move |o: &Arc<K>| {
                            let key = ObjectKey::of(&**o);
                            lock(&ts_add).remove(&key);
                            // The initial list: nothing is known to have changed, so real
                            // changes go first (controller-runtime's LowPriority).
                            let priority = match listing.has_synced() {
                                true => Priority::DEFAULT,
                                false => Priority::LOW,
                            };
                            enqueue_key(&q1, &n1, key, priority);
                        })
                        .on_update(move |old: &Arc<K>, new: &Arc<K>, _| {
                            if predicate.as_ref().is_none_or(|p| p.test(old, new)) {
                                // A resync replays an unchanged object.
                                let priority = match old.meta().resource_version == new.meta().resource_version {
                                    true => Priority::LOW,
                                    false => Priority::DEFAULT,
                                };
                                enqueue_key(&q2, &n2, ObjectKey::of(&**new), priority);
                            }
                        })
                        .on_delete(move |o: &Arc<K>| {
                            // A sharded cache drops objects that moved to another replica's
                            // slots: not a deletion, and not ours to handle.
                            if let Some(ring) = &ring
                                && shard_slot(ring, &**o).is_some_and(|s| !ring.interested(s))
                            {
                                return;
                            }
                            let key = ObjectKey::of(&**o);
                            lock(&ts_del).insert(key.clone(), o.clone());
                            enqueue_key(&q3, &n3, key, Priority::DEFAULT);
                        })
                        .without_diff(),
                );
            }));
        }
        wiring.extend(self.watches);
        let metrics = self.metrics.unwrap_or_else(ControllerMetrics::standalone);
        let label = ControllerLabel {
            controller: self.name.clone(),
        };
        metrics
            .max_concurrent
            .get_or_create(&label)
            .set(self.concurrency as i64);
        // As controller-runtime does: every result and error series exists from the start at
        // 0, so `increase()` and `rate()` see a controller's first error or panic.
        for result in ["success", "error", "requeue", "requeue_after"] {
            let _ = metrics.reconcile_total.get_or_create(&ResultLabels {
                controller: self.name.clone(),
                result: result.to_string(),
            });
        }
        for counter in [
            &metrics.reconcile_errors,
            &metrics.terminal_errors,
            &metrics.panics,
        ] {
            let _ = counter.get_or_create(&label);
        }
        let _ = metrics.active_workers.get_or_create(&label);
        Controller {
            name: self.name,
            store: self.primary.store(),
            queue,
            wiring: Mutex::new(wiring),
            tombstones,
            reconciler: Arc::new(reconciler),
            ctx,
            recorder: self.recorder,
            undecodable: Mutex::new(Some(undecodable_rx)),
            concurrency: self.concurrency,
            shutdown_timeout: self.shutdown_timeout,
            metrics,
            shard: self.shard,
            caches: self.caches,
            read_your_writes: self.read_your_writes,
            pending_writes: Mutex::new(HashMap::new()),
        }
    }
}

/// The slot of an object in `ring`: by the hash of its uid or namespace (`None`: no uid yet).
fn shard_slot<K: Resource>(ring: &ShardRing, obj: &K) -> Option<u32> {
    match ring.config().key {
        ShardKey::Namespace => Some(ring.slot_of_value(obj.meta().namespace.as_deref().unwrap_or(""))),
        ShardKey::Uid => obj.meta().uid.as_deref().map(|u| ring.slot_of_value(u)),
    }
}

/// Queue `key` for `controller`; while tracing is on, with the span of the event being handled
/// (see [`crate::trace`]).
fn enqueue_key(queue: &WorkQueue<ObjectKey>, controller: &str, key: ObjectKey, priority: i32) {
    if crate::trace::enabled() {
        let cause = crate::trace::Cause::enqueue(controller, &key, priority);
        let opts = AddOpts {
            priority,
            ..AddOpts::default()
        };
        queue.add_traced(key, opts, cause);
    } else {
        queue.add_with_priority(key, priority);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The tombstone map is only ever inserted into or removed from; poisoning leaves it valid.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A built controller; [`Controller::run`] runs its workers.
pub struct Controller<K, C> {
    name: String,
    store: Store<K>,
    queue: WorkQueue<ObjectKey>,
    wiring: Mutex<Vec<Wiring>>,
    tombstones: Arc<Mutex<HashMap<ObjectKey, Arc<K>>>>,
    reconciler: Arc<dyn Reconciler<K, C>>,
    ctx: Arc<C>,
    recorder: Option<Recorder>,
    /// Primary objects that did not decode, for Events (taken by the run).
    undecodable: Mutex<Option<tokio::sync::mpsc::Receiver<Undecodable>>>,
    concurrency: usize,
    shutdown_timeout: Duration,
    metrics: ControllerMetrics,
    shard: Option<ShardRing>,
    caches: Vec<Arc<dyn Freshness>>,
    read_your_writes: Option<Duration>,
    /// The writes of each key's last reconcile, until its next one starts.
    pending_writes: Mutex<HashMap<ObjectKey, Writes>>,
}

impl<K, C> Controller<K, C>
where
    K: Resource + Clone + Send + Sync + 'static,
    C: Send + Sync + 'static,
{
    /// The controller's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The workqueue (to enqueue keys from outside, e.g. on external events).
    pub fn queue(&self) -> WorkQueue<ObjectKey> {
        self.queue.clone()
    }

    /// The shard ring this controller shares its keys in, if sharded.
    pub fn shard_ring(&self) -> Option<&ShardRing> {
        self.shard.as_ref()
    }

    /// The slot of `key` in `ring`, from the cached object or its tombstone.
    fn key_slot(&self, ring: &ShardRing, key: &ObjectKey) -> Option<u32> {
        if ring.config().key == ShardKey::Namespace {
            return Some(ring.slot_of_value(key.namespace.as_deref().unwrap_or("")));
        }
        match self.store.get(key) {
            Some(obj) => shard_slot(ring, &*obj),
            None => lock(&self.tombstones)
                .get(key)
                .and_then(|o| shard_slot(ring, &**o)),
        }
    }

    /// Enqueue every cached key (and pending deletion) in slots that became active here: their
    /// events may have been skipped while another replica owned them.
    fn enqueue_gained(&self, gained: &crate::shard::SlotSet, ring: &ShardRing) {
        let tombstones: Vec<(ObjectKey, Arc<K>)> = lock(&self.tombstones)
            .iter()
            .map(|(k, o)| (k.clone(), o.clone()))
            .collect();
        let cached = self.store.list().into_iter().map(|o| (ObjectKey::of(&*o), o));
        for (key, obj) in cached.chain(tombstones) {
            if shard_slot(ring, &*obj).is_some_and(|s| gained.contains(s)) {
                self.queue.add(key);
            }
        }
    }

    /// Run the workers until `cancel` fires; then stop taking work and let in-flight
    /// reconciles finish (up to the shutdown timeout).
    pub async fn run(self, cancel: CancellationToken) {
        self.run_until(cancel, CancellationToken::new()).await
    }

    /// Like [`Controller::run`], and when `abort` fires, in-flight reconciles are abandoned at
    /// once (a manager does this when it loses the leader lease, since another replica may
    /// already be reconciling the same objects).
    pub async fn run_until(self, cancel: CancellationToken, abort: CancellationToken) {
        let wiring: Vec<Wiring> = std::mem::take(&mut *lock(&self.wiring));
        for w in wiring {
            w(self.queue.clone());
        }
        let rx = lock(&self.undecodable).take();
        if let (Some(recorder), Some(rx)) = (self.recorder.clone(), rx) {
            tokio::spawn(publish_undecodable(
                self.name.clone(),
                recorder,
                rx,
                cancel.clone(),
            ));
        }
        // Reconciling against a cache that has not listed yet would report live objects as
        // deleted; the manager waits for every cache, a bare controller waits for its own.
        tokio::select! {
            synced = self.store.wait_synced(CACHE_SYNC_TIMEOUT) => if let Err(e) = synced {
                tracing::error!(controller = %self.name, error = %e, "cache did not sync; not starting workers");
                return;
            },
            _ = cancel.cancelled() => return,
        }
        let this = Arc::new(self);
        // The ring outlives the workers: on the way out it stops starting work, waits for what is
        // in flight and only then gives its slots up.
        let ring_cancel = CancellationToken::new();
        let mut ring_task = None;
        if let Some(ring) = this.shard.clone() {
            let stop = ring_cancel.clone();
            ring_task = Some(tokio::spawn(async move { ring.run(stop).await }));
            let (that, stop) = (this.clone(), ring_cancel.clone());
            tokio::spawn(async move { that.follow_ring(stop).await });
        }
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..this.concurrency {
            let this = this.clone();
            workers.spawn(async move {
                while let Some((key, priority, cause)) = this.queue.get_traced().await {
                    // Sharded: only keys of slots active here, counted in flight for handovers.
                    let guard = match &this.shard {
                        Some(ring) => match this.key_slot(ring, &key).and_then(|s| ring.try_begin(s)) {
                            Some(g) => Some(g),
                            None => {
                                this.queue.forget(&key);
                                this.queue.done(&key);
                                continue;
                            }
                        },
                        None => None,
                    };
                    this.process(&key, priority, cause).await;
                    this.queue.done(&key);
                    drop(guard);
                }
            });
        }
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = abort.cancelled() => {}
        }
        this.queue.shut_down();
        let drained = tokio::select! {
            d = tokio::time::timeout(this.shutdown_timeout, async {
                while workers.join_next().await.is_some() {}
            }) => d.is_ok(),
            _ = abort.cancelled() => false,
        };
        if !drained {
            tracing::warn!(controller = %this.name, timeout = ?this.shutdown_timeout, aborted = abort.is_cancelled(), "abandoning reconciles still running");
            workers.abort_all();
            while workers.join_next().await.is_some() {}
        }
        // Nothing runs any more (aborted work dropped its guards): leave the ring.
        ring_cancel.cancel();
        if let Some(task) = ring_task {
            let _ = task.await;
        }
    }

    /// Enqueue the keys of slots as they become active here, until `stop`.
    async fn follow_ring(&self, stop: CancellationToken) {
        let Some(ring) = &self.shard else { return };
        let mut status = ring.status();
        let mut before = crate::shard::SlotSet::empty(ring.config().slots);
        loop {
            let active = status.borrow_and_update().active.clone();
            let gained = active.minus(&before);
            if !gained.is_empty() {
                self.enqueue_gained(&gained, ring);
            }
            before = active;
            tokio::select! {
                _ = stop.cancelled() => return,
                changed = status.changed() => if changed.is_err() { return },
            }
        }
    }

    fn clear_tombstone(&self, key: &ObjectKey) {
        if self.store.get(key).is_none() {
            lock(&self.tombstones).remove(key);
        }
    }

    /// Wait until the caches show the writes of `key`'s previous reconcile.
    async fn catch_up(&self, key: &ObjectKey) {
        let Some(timeout) = self.read_your_writes else {
            return;
        };
        let Some(writes) = lock(&self.pending_writes).remove(key) else {
            return;
        };
        let outcome = crate::ryow::wait_caught_up(&writes, &self.caches, timeout).await;
        self.metrics.cache_wait.observe(&self.name, &outcome);
        if let WaitOutcome::TimedOut(waited) = outcome {
            tracing::warn!(controller = %self.name, key = %key, ?waited, "the caches still do not show the previous reconcile's writes; reconciling anyway");
        }
    }

    /// Remember `writes` of `key`'s reconcile for its next one (bounded, see
    /// [`MAX_PENDING_WRITES`]).
    fn remember_writes(&self, key: &ObjectKey, writes: Writes) {
        if self.read_your_writes.is_none() || writes.is_empty() {
            return;
        }
        let mut pending = lock(&self.pending_writes);
        if pending.len() >= MAX_PENDING_WRITES && !pending.contains_key(key) {
            let caches = &self.caches;
            pending.retain(|_, ws| {
                ws.iter()
                    .any(|w| caches.iter().any(|c| c.covers(w) && !c.caught_up(w)))
            });
            if pending.len() >= MAX_PENDING_WRITES
                && let Some(victim) = pending.keys().next().cloned()
            {
                pending.remove(&victim);
            }
        }
        pending.insert(key.clone(), writes);
    }

    /// Requeue a failed key with backoff; while tracing, in the trace of its cause.
    fn requeue_failed(&self, key: &ObjectKey, priority: i32, cause: impl FnOnce() -> crate::trace::Cause) {
        if crate::trace::enabled() {
            self.queue.add_rate_limited_traced(key.clone(), priority, cause());
        } else {
            self.queue.add_rate_limited_with_priority(key.clone(), priority);
        }
    }

    /// The `reconcile` span of `key`: child of the event that queued it (`cause`), with the
    /// queue's attributes; the result and error are recorded when it ends.
    fn reconcile_span(
        &self,
        key: &ObjectKey,
        priority: i32,
        cause: Option<&crate::trace::Cause>,
    ) -> tracing::Span {
        let span = tracing::info_span!(
            "reconcile",
            "crwatch.controller" = %self.name,
            "k8s.namespace.name" = key.namespace.as_deref().unwrap_or(""),
            "crwatch.object.name" = %key.name,
            "crwatch.queue.priority" = priority,
            "crwatch.queue.retries" = self.queue.num_requeues(key),
            "crwatch.queue.time_ms" = tracing::field::Empty,
            "crwatch.queue.backoff_ms" = tracing::field::Empty,
            "crwatch.reconcile.result" = tracing::field::Empty,
            "error.type" = tracing::field::Empty,
            "otel.status_code" = tracing::field::Empty,
            "otel.status_description" = tracing::field::Empty,
        );
        if let Some(cause) = cause {
            cause.adopt(&span);
        }
        span
    }

    /// Reconcile `key` (handed out at `priority`, which a retry keeps, as controller-runtime's
    /// priority queue does).
    async fn process(&self, key: &ObjectKey, priority: i32, cause: Option<crate::trace::Cause>) {
        let label = ControllerLabel {
            controller: self.name.clone(),
        };
        let span = match crate::trace::enabled() {
            true => self.reconcile_span(key, priority, cause.as_ref()),
            false => tracing::Span::none(),
        };
        self.catch_up(key).instrument(span.clone()).await;
        let req = match self.store.get(key) {
            Some(obj) => Request::Apply(obj),
            // Keep the tombstone until the deletion was handled: a retry needs it too.
            None => Request::Deleted {
                key: key.clone(),
                last_known: lock(&self.tombstones).get(key).cloned(),
            },
        };
        self.metrics.active_workers.get_or_create(&label).inc();
        let started = Instant::now();
        // The call itself is inside the catch too: a reconciler may panic before its future.
        let (reconciler, ctx) = (self.reconciler.clone(), self.ctx.clone());
        let (outcome, writes) = crate::ryow::record(
            AssertUnwindSafe(async move { reconciler.reconcile(req, ctx).await }).catch_unwind(),
        )
        .instrument(span.clone())
        .await;
        self.remember_writes(key, writes);
        // The exemplar links this observation to its trace (only a sampled one).
        let exemplar =
            crate::trace::sampled_trace_id(&span).map(|trace_id| crate::metrics::TraceLabel { trace_id });
        self.metrics.reconcile_time.get_or_create(&label).observe(
            started.elapsed().as_secs_f64(),
            exemplar,
            None,
        );
        // A retry stays in the trace of what caused the reconcile.
        let retry_cause = || match &cause {
            Some(c) => c.clone(),
            None => crate::trace::Cause::of_span(&span),
        };
        let outcome_label = match &outcome {
            Ok(Ok(a)) if a.requeue_delay().is_some() => "requeue_after",
            Ok(Ok(_)) => "success",
            Ok(Err(ReconcileError::Terminal(_))) => "terminal_error",
            Ok(Err(ReconcileError::Transient(_))) => "error",
            Err(_) => "panic",
        };
        span.record("crwatch.reconcile.result", outcome_label);
        if let Ok(Err(e)) = &outcome {
            span.record(
                "error.type",
                if e.is_terminal() { "terminal" } else { "transient" },
            );
            span.record("otel.status_code", "ERROR");
            span.record("otel.status_description", format!("{e}").as_str());
        } else if outcome.is_err() {
            span.record("error.type", "panic");
            span.record("otel.status_code", "ERROR");
        }
        self.metrics.active_workers.get_or_create(&label).dec();
        let result = |r: &str| ResultLabels {
            controller: self.name.clone(),
            result: r.to_string(),
        };
        match outcome {
            Ok(Ok(action)) => {
                self.queue.forget(key);
                self.clear_tombstone(key);
                match action.requeue_delay() {
                    Some(d) => {
                        self.metrics
                            .reconcile_total
                            .get_or_create(&result("requeue_after"))
                            .inc();
                        self.queue.add_after(key.clone(), d);
                    }
                    None => {
                        self.metrics
                            .reconcile_total
                            .get_or_create(&result("success"))
                            .inc();
                    }
                }
            }
            Ok(Err(ReconcileError::Terminal(e))) => {
                self.metrics.reconcile_total.get_or_create(&result("error")).inc();
                self.metrics.reconcile_errors.get_or_create(&label).inc();
                self.metrics.terminal_errors.get_or_create(&label).inc();
                tracing::error!(controller = %self.name, key = %key, error = format!("{e:#}"), "reconcile failed terminally; not retrying until the object changes");
                self.queue.forget(key);
                self.clear_tombstone(key);
            }
            Ok(Err(ReconcileError::Transient(e))) => {
                self.metrics.reconcile_total.get_or_create(&result("error")).inc();
                self.metrics.reconcile_errors.get_or_create(&label).inc();
                tracing::warn!(controller = %self.name, key = %key, error = format!("{e:#}"), retries = self.queue.num_requeues(key), "reconcile failed; retrying with backoff");
                self.requeue_failed(key, priority, retry_cause);
            }
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                self.metrics.reconcile_total.get_or_create(&result("error")).inc();
                self.metrics.reconcile_errors.get_or_create(&label).inc();
                self.metrics.panics.get_or_create(&label).inc();
                tracing::error!(controller = %self.name, key = %key, panic = %what, "reconcile panicked; retrying with backoff");
                self.requeue_failed(key, priority, retry_cause);
            }
        }
    }
}
