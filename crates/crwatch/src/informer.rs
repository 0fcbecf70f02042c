//! Shared informers: one source feeding one indexed store, fanning real changes out to any
//! number of handlers (`on_add`, `on_update(old, new, diff)`, `on_delete(last_known)`), with an
//! optional resync; and the factory that makes sure each (resource, namespace, selectors)
//! is watched once however many controllers use it.

use std::any::{Any, TypeId};
use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use kube::Resource;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use crate::diff::Diff;
use crate::source::kube::KubeSource;
use crate::source::{Checkpoint, ErrorKind, Event, Source, SourceError, Undecodable};
use crate::store::snapshot::{Snapshot, SnapshotFile};
use crate::store::{ObjectKey, Store, SyncTimeout, same_object};

/// Reacts to changes of objects in an informer's store. All methods default to doing nothing.
///
/// Handlers run on the informer's task, in order, for every change: keep them quick (enqueue a
/// key, send on a channel) and hand slow work elsewhere. A handler must not call
/// [`Informer::add_handler`] on the informer that calls it (that would deadlock).
pub trait Handler<K>: Send + Sync + 'static {
    /// An object appeared (or the handler was added after start: the current state, as adds).
    fn on_add(&self, obj: &Arc<K>) {
        let _ = obj;
    }
    /// An object changed; `diff` says what (empty on resync).
    fn on_update(&self, old: &Arc<K>, new: &Arc<K>, diff: &Diff) {
        let _ = (old, new, diff);
    }
    /// An object went; this is the last state the informer knew.
    fn on_delete(&self, last_known: &Arc<K>) {
        let _ = last_known;
    }
    /// An object could not be decoded into `K` and was skipped (see
    /// [`Informer::undecodable`]); also called, for each such object, when the handler is
    /// added after start.
    fn on_undecodable(&self, object: &Undecodable) {
        let _ = object;
    }
    /// Whether [`Handler::on_update`] reads its `diff`. Computing a diff costs a walk of both
    /// objects, so when no handler of an informer wants one, it passes an empty diff instead.
    fn wants_diff(&self) -> bool {
        true
    }
}

type AddFn<K> = Box<dyn Fn(&Arc<K>) + Send + Sync>;
type UndecodableFn = Box<dyn Fn(&Undecodable) + Send + Sync>;
type UpdateFn<K> = Box<dyn Fn(&Arc<K>, &Arc<K>, &Diff) + Send + Sync>;

/// A handler built from closures.
///
/// ```
/// use crwatch::informer::HandlerFns;
/// use k8s_openapi::api::core::v1::ConfigMap;
/// let h = HandlerFns::<ConfigMap>::new()
///     .on_add(|cm| println!("added {:?}", cm.metadata.name))
///     .on_update(|_, _, diff| println!("changed:\n{diff}"));
/// ```
pub struct HandlerFns<K> {
    add: Option<AddFn<K>>,
    update: Option<UpdateFn<K>>,
    delete: Option<AddFn<K>>,
    undecodable: Option<UndecodableFn>,
    diff: bool,
}

impl<K> Default for HandlerFns<K> {
    fn default() -> Self {
        HandlerFns {
            add: None,
            update: None,
            delete: None,
            undecodable: None,
            diff: true,
        }
    }
}

impl<K> HandlerFns<K> {
    /// No reactions yet.
    pub fn new() -> Self {
        Self::default()
    }
    /// React to adds.
    pub fn on_add(mut self, f: impl Fn(&Arc<K>) + Send + Sync + 'static) -> Self {
        self.add = Some(Box::new(f));
        self
    }
    /// React to updates.
    pub fn on_update(mut self, f: impl Fn(&Arc<K>, &Arc<K>, &Diff) + Send + Sync + 'static) -> Self {
        self.update = Some(Box::new(f));
        self
    }
    /// The update reaction ignores its `diff` (see [`Handler::wants_diff`]): it gets an empty
    /// one, and the informer skips computing it when no other handler wants it.
    ///
    /// ```
    /// use crwatch::informer::{Handler, HandlerFns};
    /// use k8s_openapi::api::core::v1::ConfigMap;
    /// let h = HandlerFns::<ConfigMap>::new().on_update(|_, new, _| println!("{:?}", new.metadata.name)).without_diff();
    /// assert!(!h.wants_diff());
    /// ```
    pub fn without_diff(mut self) -> Self {
        self.diff = false;
        self
    }
    /// React to deletes.
    pub fn on_delete(mut self, f: impl Fn(&Arc<K>) + Send + Sync + 'static) -> Self {
        self.delete = Some(Box::new(f));
        self
    }
    /// React to objects that could not be decoded.
    pub fn on_undecodable(mut self, f: impl Fn(&Undecodable) + Send + Sync + 'static) -> Self {
        self.undecodable = Some(Box::new(f));
        self
    }
}

impl<K: Send + Sync + 'static> Handler<K> for HandlerFns<K> {
    fn on_add(&self, obj: &Arc<K>) {
        if let Some(f) = &self.add {
            f(obj)
        }
    }
    fn on_update(&self, old: &Arc<K>, new: &Arc<K>, diff: &Diff) {
        if let Some(f) = &self.update {
            f(old, new, diff)
        }
    }
    fn on_delete(&self, last_known: &Arc<K>) {
        if let Some(f) = &self.delete {
            f(last_known)
        }
    }
    fn on_undecodable(&self, object: &Undecodable) {
        if let Some(f) = &self.undecodable {
            f(object)
        }
    }
    fn wants_diff(&self) -> bool {
        self.diff && self.update.is_some()
    }
}

/// One change, as an [`AsyncHandler`] receives it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Change<K> {
    /// An object appeared.
    Added(Arc<K>),
    /// An object changed.
    Updated {
        /// Before.
        old: Arc<K>,
        /// After.
        new: Arc<K>,
        /// What changed.
        diff: Diff,
    },
    /// An object went (its last known state).
    Deleted(Arc<K>),
    /// A relist begins: the changes up to the next [`Change::Checkpoint`] come from comparing
    /// a fresh list with the cache, in key order rather than in the order they happened, so a
    /// consumer that records checkpoints must not resume from an older one in between.
    Relist,
    /// The relist's differences are all delivered: the cache equals the fresh list.
    RelistDone,
    /// Every change before this one is current to the source's checkpoint.
    Checkpoint(Checkpoint),
}

/// A handler the informer waits for: it gets every change in order, and the informer reads
/// no further from its source until the returned future completes. Slow consumers therefore
/// slow the source down (a Kubernetes watch that falls too far behind is closed by the server
/// and resumed from the last resourceVersion) instead of buffering without bound.
///
/// ```
/// use crwatch::informer::{AsyncHandler, Change};
/// use futures::future::BoxFuture;
/// use k8s_openapi::api::core::v1::ConfigMap;
///
/// struct Forward(tokio::sync::mpsc::Sender<String>);
/// impl AsyncHandler<ConfigMap> for Forward {
///     fn handle(&self, change: Change<ConfigMap>) -> BoxFuture<'_, ()> {
///         Box::pin(async move {
///             if let Change::Added(cm) = change {
///                 // Waits while the channel is full: backpressure, not a growing buffer.
///                 let _ = self.0.send(cm.metadata.name.clone().unwrap_or_default()).await;
///             }
///         })
///     }
/// }
/// ```
pub trait AsyncHandler<K>: Send + Sync + 'static {
    /// Handle one change.
    fn handle(&self, change: Change<K>) -> BoxFuture<'_, ()>;

    /// The source reported an error (it retries by itself; nothing changed). Keep it quick.
    fn on_error(&self, error: &SourceError) {
        let _ = error;
    }
}

impl<K, T: AsyncHandler<K>> AsyncHandler<K> for Arc<T> {
    fn handle(&self, change: Change<K>) -> BoxFuture<'_, ()> {
        (**self).handle(change)
    }
    fn on_error(&self, error: &SourceError) {
        (**self).on_error(error)
    }
}

/// Runs on every object before it is stored.
pub type Transform<K> = Arc<dyn Fn(&mut K) + Send + Sync>;

/// The default transform: drop `metadata.managedFields`, which controllers rarely read and
/// which can be a third of an object's size.
pub fn drop_managed_fields<K: Resource>(obj: &mut K) {
    obj.meta_mut().managed_fields = None;
}

/// Counters an informer keeps about its source.
#[derive(Debug, Default)]
pub struct InformerStats {
    /// Events received from the source.
    pub events: AtomicU64,
    /// Errors the source reported (it retried by itself); undecodable objects not included.
    pub errors: AtomicU64,
    /// Objects skipped because they could not be decoded into the informer's type.
    pub decode_errors: AtomicU64,
    /// Complete (re)lists applied.
    pub relists: AtomicU64,
    /// Objects received so far by the list under way (for progress displays).
    pub listed: AtomicU64,
    /// Whether the source is connected (its last report was progress, not an error).
    pub connected: AtomicBool,
    /// When the source last delivered an event or confirmed progress (ms since the Unix epoch).
    pub last_event_ms: AtomicU64,
    /// When the source last failed (ms since the Unix epoch; 0: never).
    pub last_error_ms: AtomicU64,
    /// When the cache last became complete: a (re)list applied, or a resumed snapshot
    /// confirmed current (ms since the Unix epoch; 0: never).
    pub last_sync_ms: AtomicU64,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// How an informer's source is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceHealth {
    /// Whether the source is connected now.
    pub connected: bool,
    /// How long it has been failing (`None` while connected).
    pub unhealthy_for: Option<Duration>,
    /// The last error, when it is failing.
    pub last_error: Option<String>,
}

struct Inner<K> {
    name: String,
    store: Store<K>,
    handlers: RwLock<Vec<Arc<dyn Handler<K>>>>,
    source: Mutex<Option<Box<dyn Source<K>>>>,
    transform: RwLock<Option<Transform<K>>>,
    resync: Mutex<Option<Duration>>,
    started: AtomicBool,
    stats: InformerStats,
    async_handlers: RwLock<Vec<Arc<dyn AsyncHandler<K>>>>,
    /// The newest checkpoint the source reported (what a snapshot is current to).
    checkpoint: Mutex<Option<Checkpoint>>,
    /// Where to start from instead of a fresh list.
    resume: Mutex<Option<Snapshot<K>>>,
    /// Where to persist snapshots, and how often.
    persist: Mutex<Option<(SnapshotFile, Duration)>>,
    /// Async handlers added after start, waiting for their replay of the current state.
    joining: Mutex<Vec<Arc<dyn AsyncHandler<K>>>>,
    joined: tokio::sync::Notify,
    /// Since when the source has been failing, and why.
    failing: Mutex<Option<(tokio::time::Instant, String)>>,
    /// Whether a relist is between `Init` and `InitDone` (a snapshot then has no checkpoint).
    relisting: AtomicBool,
    /// How lists are matched up in diffs (a CRD's list-map keys; built-in merge keys otherwise).
    list_keys: RwLock<Option<Arc<crate::diff::ListKeys>>>,
    /// The objects that do not decode now (at most one entry per object on the server).
    undecodable: Mutex<HashMap<ObjectKey, Undecodable>>,
    /// The undecodable objects the list under way reported.
    listed_undecodable: Mutex<HashSet<ObjectKey>>,
}

/// One source, one store, many handlers. Cheap to clone.
///
/// ```no_run
/// use crwatch::informer::{HandlerFns, Informer};
/// use crwatch::source::kube::KubeSource;
/// use k8s_openapi::api::core::v1::ConfigMap;
/// # async fn f(client: kube::Client) -> Result<(), Box<dyn std::error::Error>> {
/// let informer = Informer::new(KubeSource::<ConfigMap>::all(client));
/// informer.add_handler(HandlerFns::new().on_add(|cm: &std::sync::Arc<ConfigMap>| println!("{:?}", cm.metadata.name)));
/// informer.start(tokio_util::sync::CancellationToken::new());
/// informer.wait_synced(std::time::Duration::from_secs(120)).await?;
/// println!("{} config maps", informer.store().len());
/// # Ok(()) }
/// ```
pub struct Informer<K> {
    inner: Arc<Inner<K>>,
}

impl<K> Clone for Informer<K> {
    fn clone(&self) -> Self {
        Informer {
            inner: self.inner.clone(),
        }
    }
}

fn guarded(what: &str, f: impl FnOnce()) {
    // A handler that panics must not take the informer (and every other handler) down.
    if std::panic::catch_unwind(AssertUnwindSafe(f)).is_err() {
        tracing::error!(
            handler_call = what,
            "informer handler panicked; the event was skipped for that handler"
        );
    }
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    // Handlers run outside any write section, so a poisoned lock still holds a valid list.
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

fn lock<T>(l: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    l.lock().unwrap_or_else(|p| p.into_inner())
}

impl<K> Informer<K>
where
    K: Resource + Clone + Serialize + Send + Sync + 'static,
{
    /// An informer over `source`, with the default transform (drop managedFields) and no resync.
    pub fn new(source: impl Source<K>) -> Self {
        Self::with_store(source, Store::new())
    }

    /// [`Informer::new`] filling `store`, an empty store that readers already hold: for a
    /// consumer that has to be wired before its source can exist (a CRD not installed yet).
    ///
    /// ```
    /// use crwatch::informer::Informer;
    /// use crwatch::source::kube::KubeSource;
    /// use crwatch::store::Store;
    /// use k8s_openapi::api::core::v1::ConfigMap;
    ///
    /// # async fn demo(client: kube::Client) {
    /// let store = Store::<ConfigMap>::new();
    /// let reader = store.clone(); // handed out before the source exists
    /// let informer = Informer::with_store(KubeSource::<ConfigMap>::all(client), store);
    /// assert!(reader.is_empty());
    /// # }
    /// ```
    pub fn with_store(source: impl Source<K>, store: Store<K>) -> Self {
        let name = source.describe();
        Informer {
            inner: Arc::new(Inner {
                name,
                store,
                handlers: RwLock::new(vec![]),
                source: Mutex::new(Some(Box::new(source))),
                transform: RwLock::new(Some(Arc::new(drop_managed_fields::<K>))),
                resync: Mutex::new(None),
                started: AtomicBool::new(false),
                stats: InformerStats::default(),
                async_handlers: RwLock::new(vec![]),
                checkpoint: Mutex::new(None),
                resume: Mutex::new(None),
                persist: Mutex::new(None),
                joining: Mutex::new(vec![]),
                joined: tokio::sync::Notify::new(),
                failing: Mutex::new(None),
                relisting: AtomicBool::new(false),
                list_keys: RwLock::new(None),
                undecodable: Mutex::new(HashMap::new()),
                listed_undecodable: Mutex::new(HashSet::new()),
            }),
        }
    }

    /// Replace the transform (`None` stores objects exactly as received).
    pub fn set_transform(&self, transform: Option<Transform<K>>) {
        *write(&self.inner.transform) = transform;
    }

    /// Keep only the projected fields in the cache (see [`crate::projection`]); every
    /// handler of this informer sees projected objects. Set it before the informer starts.
    ///
    /// ```
    /// use crwatch::informer::InformerFactory;
    /// use crwatch::projection::Projection;
    /// use k8s_openapi::api::core::v1::ConfigMap;
    /// # async fn f(client: kube::Client) {
    /// let factory = InformerFactory::new(client);
    /// let configs = factory.all::<ConfigMap>();
    /// configs.set_projection(Projection::fields(["data.mode"]).unwrap());
    /// # }
    /// ```
    pub fn set_projection(&self, projection: crate::projection::Projection)
    where
        K: serde::de::DeserializeOwned,
    {
        self.set_transform(Some(projection.transform::<K>()));
    }

    /// List and watch only `ring`'s slots for this replica, where the source and its server
    /// can (KEP-5866 `shardSelector`); call before the informer starts. Returns whether the
    /// source will ask. A shared informer is sharded for all its users.
    pub fn shard(&self, ring: &crate::shard::ShardRing) -> bool {
        match lock(&self.inner.source).as_mut() {
            Some(source) => source.shard(ring),
            None => false,
        }
    }

    /// Keep cold objects compressed in the cache (feature `compact`; see
    /// [`Store::compact_cold`]): about half the memory for large objects, at the cost of a
    /// decode when a cold object is read. Handlers still get the objects as delivered.
    ///
    /// ```
    /// use crwatch::informer::InformerFactory;
    /// use crwatch::store::Compaction;
    /// use k8s_openapi::api::core::v1::ConfigMap;
    /// # async fn f(client: kube::Client) -> Result<(), crwatch::store::CompactionError> {
    /// let factory = InformerFactory::new(client);
    /// factory.all::<ConfigMap>().compact_cold(Compaction::new().hot(512)?);
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "compact")]
    pub fn compact_cold(&self, settings: crate::store::Compaction)
    where
        K: serde::Serialize + serde::de::DeserializeOwned,
    {
        self.inner.store.compact_cold(settings);
    }

    /// Diff lists by these keys (e.g. `ListKeys::from_crd(&crd, "v1")`, so a CRD's
    /// `x-kubernetes-list-map-keys` name list items in diffs); the built-in merge keys otherwise.
    pub fn set_list_keys(&self, keys: crate::diff::ListKeys) {
        *write(&self.inner.list_keys) = Some(Arc::new(keys));
    }

    /// Replay the whole cache to handlers as updates every `period` (no API calls).
    pub fn set_resync(&self, period: Option<Duration>) {
        *lock(&self.inner.resync) = period;
    }

    /// What this informer watches.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The store (add indexers before start so they cover every object from the first list).
    pub fn store(&self) -> Store<K> {
        self.inner.store.clone()
    }

    /// Counters about the source.
    pub fn stats(&self) -> &InformerStats {
        &self.inner.stats
    }

    /// Add a handler. Added after start, it first receives the current state as adds, and
    /// misses nothing in between.
    pub fn add_handler(&self, handler: impl Handler<K>) {
        let handler: Arc<dyn Handler<K>> = Arc::new(handler);
        let mut handlers = write(&self.inner.handlers);
        // The writer lock excludes dispatch, so the snapshot and the registration are atomic.
        for obj in self.inner.store.list() {
            guarded("on_add", || handler.on_add(&obj));
        }
        for u in lock(&self.inner.undecodable).values() {
            guarded("on_undecodable", || handler.on_undecodable(u));
        }
        handlers.push(handler);
    }

    /// The objects on the server that do not decode into `K` now, by name (never content).
    /// They are skipped: an object never seen decoded is not in the store; one that stopped
    /// decoding keeps its last decoded state in the store (no handler is told of a change
    /// that cannot be read, and none of a delete that did not happen) until it decodes
    /// again or is deleted.
    pub fn undecodable(&self) -> Vec<Undecodable> {
        let mut all: Vec<_> = lock(&self.inner.undecodable).values().cloned().collect();
        all.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        all
    }

    /// Whether the first complete list has been applied.
    pub fn has_synced(&self) -> bool {
        self.inner.store.has_synced()
    }

    /// Wait until the first complete list has been applied.
    pub async fn wait_synced(&self, timeout: Duration) -> Result<(), SyncTimeout> {
        self.inner.store.wait_synced(timeout).await
    }

    /// Add a handler the informer waits for (see [`AsyncHandler`]). Added after start, it
    /// first receives the current state as adds (on the informer's task, so nothing is missed
    /// or reordered in between).
    pub fn add_async_handler(&self, handler: impl AsyncHandler<K>) {
        let handler: Arc<dyn AsyncHandler<K>> = Arc::new(handler);
        if self.inner.started.load(Ordering::SeqCst) {
            lock(&self.inner.joining).push(handler);
            self.inner.joined.notify_one();
        } else {
            write(&self.inner.async_handlers).push(handler);
        }
    }

    /// Start from `snapshot` instead of an empty cache: the store holds its objects (handlers
    /// are not told about them), and the source resumes after the snapshot's checkpoint when it
    /// can; otherwise it lists, and handlers see exactly what differs from the snapshot
    /// (modified with a diff, added, deleted with the last known state, deleted and added when
    /// the uid changed). Call before [`Informer::start`].
    pub fn resume_from(&self, snapshot: Snapshot<K>) {
        *lock(&self.inner.resume) = Some(snapshot);
    }

    /// Keep a snapshot of the cache at `file`, written every `every` (at least 1 s) when
    /// something changed and when the informer stops; a snapshot already there is resumed
    /// from (see [`Informer::resume_from`]). The file is written atomically and readable only
    /// by its owner. Call before [`Informer::start`].
    pub fn persist_to(
        &self,
        file: SnapshotFile,
        every: Duration,
    ) -> Result<(), crate::store::snapshot::SnapshotError>
    where
        K: DeserializeOwned,
    {
        if let Some(snapshot) = file.load::<K>()? {
            self.resume_from(snapshot);
        }
        *lock(&self.inner.persist) = Some((file, every.max(Duration::from_secs(1))));
        Ok(())
    }

    /// The newest checkpoint the source reported: the cache is current to it.
    pub fn checkpoint(&self) -> Option<Checkpoint> {
        if self.inner.relisting.load(Ordering::SeqCst) {
            return None;
        }
        lock(&self.inner.checkpoint).clone()
    }

    /// The cache and the checkpoint it is current to, for persisting.
    pub fn snapshot(&self) -> Snapshot<K> {
        // The store and the checkpoint change together on the informer's task; a snapshot
        // taken between an object and its checkpoint is one change behind, which resuming
        // from repeats (at least once), never skips.
        let checkpoint = self.checkpoint();
        let objects = self.inner.store.list().iter().map(|o| (**o).clone()).collect();
        Snapshot::new(checkpoint, objects)
    }

    /// How the source is doing: connected, or failing for how long and why.
    pub fn health(&self) -> SourceHealth {
        let failing = lock(&self.inner.failing).clone();
        SourceHealth {
            connected: failing.is_none() && self.inner.stats.connected.load(Ordering::SeqCst),
            unhealthy_for: failing.as_ref().map(|(since, _)| since.elapsed()),
            last_error: failing.map(|(_, e)| e),
        }
    }

    /// Whether the source has been failing for no longer than `grace` (readiness: a source that
    /// is down is visible).
    pub fn is_healthy(&self, grace: Duration) -> bool {
        match &*lock(&self.inner.failing) {
            None => true,
            Some((since, _)) => since.elapsed() <= grace,
        }
    }

    /// Start watching (once; later calls do nothing) until `cancel` fires.
    pub fn start(&self, cancel: CancellationToken) {
        if self.inner.started.swap(true, Ordering::SeqCst) {
            return;
        }
        let Some(mut source) = lock(&self.inner.source).take() else {
            return;
        };
        if let Some(snapshot) = lock(&self.inner.resume).take() {
            let transform = read(&self.inner.transform).clone();
            let objects = snapshot
                .objects
                .into_iter()
                .map(|mut o| {
                    if let Some(t) = &transform {
                        t(&mut o);
                    }
                    o
                })
                .collect();
            let _ = self.inner.store.replace(objects);
            if let Some(cp) = &snapshot.checkpoint
                && source.resume(cp)
            {
                *lock(&self.inner.checkpoint) = Some(cp.clone());
            }
        }
        let inner = self.inner.clone();
        let persist = lock(&self.inner.persist).clone();
        if let Some((file, every)) = persist {
            let this = self.clone();
            let cancel = cancel.clone();
            tokio::spawn(async move { persist_loop(this, file, every, cancel).await });
        }
        tokio::spawn(async move { run(inner, source, cancel).await });
    }
}

async fn persist_loop<K>(
    informer: Informer<K>,
    file: SnapshotFile,
    every: Duration,
    cancel: CancellationToken,
) where
    K: Resource + Clone + Serialize + Send + Sync + 'static,
{
    let mut last: Option<(Option<Checkpoint>, u64)> = None;
    let mut save = |informer: &Informer<K>| {
        let state = (
            informer.checkpoint(),
            informer.inner.stats.events.load(Ordering::Relaxed),
        );
        if !informer.has_synced() || last.as_ref() == Some(&state) {
            return;
        }
        let snapshot = informer.snapshot();
        let file = file.clone();
        match file.save(&snapshot) {
            Ok(()) => last = Some(state),
            Err(e) => tracing::warn!(informer = %informer.name(), error = %e, "could not save the snapshot"),
        }
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => {
                save(&informer);
                return;
            }
            _ = tick.tick() => save(&informer),
        }
    }
}

fn key_of<K: Resource>(obj: &K) -> ObjectKey {
    ObjectKey::of(obj)
}

fn same_version<K: Resource>(a: &K, b: &K) -> bool {
    let (ra, rb) = (&a.meta().resource_version, &b.meta().resource_version);
    ra.is_some() && ra == rb && same_object(a, b)
}

async fn run<K>(inner: Arc<Inner<K>>, source: Box<dyn Source<K>>, cancel: CancellationToken)
where
    K: Resource + Clone + Serialize + Send + Sync + 'static,
{
    let mut events = source.events();
    let mut buffer: Option<Vec<K>> = None;
    let resync = *lock(&inner.resync);
    let mut ticker = resync.map(|p| tokio::time::interval_at(tokio::time::Instant::now() + p, p));
    loop {
        let next = tokio::select! {
            _ = cancel.cancelled() => return,
            _ = async { match ticker.as_mut() { Some(t) => { t.tick().await; } None => std::future::pending().await } } => {
                let handlers = read(&inner.handlers);
                for obj in inner.store.list() {
                    let empty = Diff::default();
                    for h in handlers.iter() {
                        guarded("on_update", || h.on_update(&obj, &obj, &empty));
                    }
                }
                continue;
            }
            _ = inner.joined.notified() => {
                let joining: Vec<_> = std::mem::take(&mut *lock(&inner.joining));
                for h in joining {
                    for obj in inner.store.list() {
                        tokio::select! {
                            _ = cancel.cancelled() => return,
                            _ = h.handle(Change::Added(obj)) => {}
                        }
                    }
                    write(&inner.async_handlers).push(h);
                }
                continue;
            }
            next = events.next() => next,
        };
        let Some(next) = next else {
            tracing::warn!(informer = %inner.name, "source ended");
            return;
        };
        inner.stats.events.fetch_add(1, Ordering::Relaxed);
        track_health(&inner, &next);
        if let Err(e) = &next {
            for h in read(&inner.async_handlers).iter() {
                guarded("on_error", || h.on_error(e));
            }
        }
        // A panicking transform or index function loses this one event, not the informer.
        let changes = match std::panic::catch_unwind(AssertUnwindSafe(|| {
            apply_event(&inner, &mut buffer, next)
        })) {
            Ok(changes) => changes,
            Err(_) => {
                inner.stats.errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(informer = %inner.name, "processing an event panicked; the event was skipped");
                vec![]
            }
        };
        if !changes.is_empty() {
            let handlers: Vec<_> = read(&inner.async_handlers).clone();
            for change in changes {
                for h in &handlers {
                    let handled = AssertUnwindSafe(h.handle(change.clone()));
                    let outcome = tokio::select! {
                        _ = cancel.cancelled() => return,
                        r = futures::FutureExt::catch_unwind(handled) => r,
                    };
                    if outcome.is_err() {
                        tracing::error!(informer = %inner.name, "async handler panicked; the change was skipped for that handler");
                    }
                }
            }
        }
    }
}

/// Connected or failing, from what the source reports.
fn track_health<K>(inner: &Inner<K>, next: &Result<Event<K>, SourceError>) {
    match next {
        // One bad object is no failure of the source: readiness stays as it is.
        Err(SourceError {
            kind: ErrorKind::Undecodable(_),
            ..
        }) => {}
        Err(e) => {
            inner.stats.connected.store(false, Ordering::SeqCst);
            inner.stats.last_error_ms.store(now_ms(), Ordering::Relaxed);
            let mut failing = lock(&inner.failing);
            let since = failing
                .as_ref()
                .map(|(s, _)| *s)
                .unwrap_or_else(tokio::time::Instant::now);
            *failing = Some((since, e.message.clone()));
        }
        Ok(Event::Init | Event::InitApply(_)) => {}
        Ok(_) => {
            inner.stats.connected.store(true, Ordering::SeqCst);
            inner.stats.last_event_ms.store(now_ms(), Ordering::Relaxed);
            *lock(&inner.failing) = None;
        }
    }
}

/// Apply one source event to the store, tell the (synchronous) handlers what really changed,
/// and return the changes for the async handlers (none when there are none).
fn apply_event<K>(
    inner: &Inner<K>,
    buffer: &mut Option<Vec<K>>,
    next: Result<Event<K>, SourceError>,
) -> Vec<Change<K>>
where
    K: Resource + Clone + Serialize + Send + Sync + 'static,
{
    let transform = read(&inner.transform).clone();
    let prepare = |mut o: K| {
        if let Some(t) = &transform {
            t(&mut o);
        }
        o
    };
    let want_changes = !read(&inner.async_handlers).is_empty();
    let keys = read(&inner.list_keys).clone();
    let diff_of = |old: &K, new: &K| match &keys {
        Some(k) => Diff::of_with(old, new, &**k),
        None => Diff::of(old, new),
    };
    let mut changes = vec![];
    match next {
        Err(SourceError {
            kind: ErrorKind::Undecodable(u),
            ..
        }) => return skip_undecodable(inner, buffer.is_some(), &u, want_changes),
        Err(e) => {
            inner.stats.errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(informer = %inner.name, error = %e, "source failed; it retries with backoff");
        }
        Ok(Event::Progress(cp)) => {
            if let Some(cp) = cp {
                *lock(&inner.checkpoint) = Some(cp.clone());
                if want_changes {
                    changes.push(Change::Checkpoint(cp));
                }
            }
            // A source resumed from a snapshot may never list: its first progress says the
            // cache is current.
            if !inner.store.has_synced() && buffer.is_none() && !inner.relisting.load(Ordering::SeqCst) {
                inner.stats.last_sync_ms.store(now_ms(), Ordering::Relaxed);
                inner.store.mark_synced();
            }
        }
        Ok(Event::Init) => {
            lock(&inner.listed_undecodable).clear();
            inner.stats.listed.store(0, Ordering::Relaxed);
            *buffer = Some(vec![]);
            inner.relisting.store(true, Ordering::SeqCst);
        }
        Ok(Event::InitApply(o)) => {
            inner.stats.listed.fetch_add(1, Ordering::Relaxed);
            buffer.get_or_insert_with(Vec::new).push(prepare(o));
        }
        Ok(Event::InitDone) => {
            let mut objs = buffer.take().unwrap_or_default();
            keep_undecodable(inner, &mut objs);
            let handlers = read(&inner.handlers);
            let replaced = inner.store.replace(objs);
            inner.stats.relists.fetch_add(1, Ordering::Relaxed);
            if want_changes {
                changes.push(Change::Relist);
            }
            // Deletions first: an object deleted and created again under its name is
            // reported as deleted, then added.
            for obj in &replaced.deleted {
                for h in handlers.iter() {
                    guarded("on_delete", || h.on_delete(obj));
                }
                if want_changes {
                    changes.push(Change::Deleted(obj.clone()));
                }
            }
            for obj in &replaced.added {
                for h in handlers.iter() {
                    guarded("on_add", || h.on_add(obj));
                }
                if want_changes {
                    changes.push(Change::Added(obj.clone()));
                }
            }
            for (old, new) in &replaced.updated {
                let diff = if !want_changes && !handlers.iter().any(|h| h.wants_diff()) {
                    Diff::default()
                } else {
                    diff_of(old, new)
                };
                for h in handlers.iter() {
                    guarded("on_update", || h.on_update(old, new, &diff));
                }
                if want_changes {
                    changes.push(Change::Updated {
                        old: old.clone(),
                        new: new.clone(),
                        diff,
                    });
                }
            }
            if want_changes {
                changes.push(Change::RelistDone);
            }
            inner.relisting.store(false, Ordering::SeqCst);
            inner.stats.last_sync_ms.store(now_ms(), Ordering::Relaxed);
            inner.store.mark_synced();
        }
        Ok(Event::Apply(o)) => {
            // Handlers run inside it, so what they queue is linked to this event.
            let span = crate::trace::watch_event_span(&inner.name, &o);
            let _entered = span.enter();
            lock(&inner.undecodable).remove(&key_of(&o));
            let o = prepare(o);
            let handlers = read(&inner.handlers);
            // The store and the handlers share one copy.
            let new = Arc::new(o);
            let added = |changes: &mut Vec<Change<K>>| {
                for h in handlers.iter() {
                    guarded("on_add", || h.on_add(&new));
                }
                if want_changes {
                    changes.push(Change::Added(new.clone()));
                }
            };
            let applied = inner.store.apply(new.clone());
            span.record(
                "crwatch.event.type",
                match &applied {
                    None => "ADDED",
                    Some(old) if same_version(&**old, &*new) => "UNCHANGED",
                    Some(_) => "MODIFIED",
                },
            );
            match applied {
                None => added(&mut changes),
                Some(old) if same_version(&*old, &*new) => {}
                Some(old) if !same_object(&*old, &*new) => {
                    for h in handlers.iter() {
                        guarded("on_delete", || h.on_delete(&old));
                    }
                    if want_changes {
                        changes.push(Change::Deleted(old.clone()));
                    }
                    added(&mut changes);
                }
                Some(old) => {
                    let diff = if !want_changes && !handlers.iter().any(|h| h.wants_diff()) {
                        Diff::default()
                    } else {
                        diff_of(&old, &new)
                    };
                    for h in handlers.iter() {
                        guarded("on_update", || h.on_update(&old, &new, &diff));
                    }
                    if want_changes {
                        changes.push(Change::Updated { old, new, diff });
                    }
                }
            }
        }
        Ok(Event::Delete(o)) => {
            let span = crate::trace::watch_event_span(&inner.name, &o);
            span.record("crwatch.event.type", "DELETED");
            let _entered = span.enter();
            let handlers = read(&inner.handlers);
            let key = key_of(&o);
            lock(&inner.undecodable).remove(&key);
            // The delete event carries the final state (finalizers, deletionTimestamp);
            // handlers get that rather than the cache's older copy.
            if inner.store.delete(&key).is_some() {
                let last = Arc::new(prepare(o));
                for h in handlers.iter() {
                    guarded("on_delete", || h.on_delete(&last));
                }
                if want_changes {
                    changes.push(Change::Deleted(last));
                }
            }
        }
    }
    changes
}

/// An object that did not decode: counted, logged by name, handlers told. What happens to a
/// copy in the cache: see [`Informer::undecodable`]. Returns the changes for async handlers.
fn skip_undecodable<K>(inner: &Inner<K>, listing: bool, u: &Undecodable, want_changes: bool) -> Vec<Change<K>>
where
    K: Resource + Clone + Serialize + Send + Sync + 'static,
{
    inner.stats.decode_errors.fetch_add(1, Ordering::Relaxed);
    // Named, never shown: the error says where and what kind of value, not the value.
    tracing::warn!(
        informer = %inner.name,
        kind = %u.kind,
        namespace = %u.namespace.as_deref().unwrap_or(""),
        name = %u.name,
        uid = %u.uid.as_deref().unwrap_or(""),
        error = %u.error,
        "an object does not decode into the informer's type and was skipped; fix the object (or the type) and it is picked up"
    );
    let key = ObjectKey::new(u.namespace.as_deref(), &u.name);
    let handlers = read(&inner.handlers);
    for h in handlers.iter() {
        guarded("on_undecodable", || h.on_undecodable(u));
    }
    let mut changes = vec![];
    if listing {
        lock(&inner.listed_undecodable).insert(key.clone());
        lock(&inner.undecodable).insert(key, u.clone());
        return changes;
    }
    let cached = inner.store.get(&key);
    // A cached copy of another object under the same name (the uid changed) is gone.
    let gone = u.deleted || cached.as_ref().is_some_and(|c| !same_uid(&**c, u));
    if u.deleted {
        lock(&inner.undecodable).remove(&key);
    } else {
        lock(&inner.undecodable).insert(key.clone(), u.clone());
    }
    if gone && let Some(last) = cached.and_then(|_| inner.store.delete(&key)) {
        for h in handlers.iter() {
            guarded("on_delete", || h.on_delete(&last));
        }
        if want_changes {
            changes.push(Change::Deleted(last));
        }
    }
    changes
}

fn same_uid<K: Resource>(cached: &K, u: &Undecodable) -> bool {
    match (&cached.meta().uid, &u.uid) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    }
}

/// At the end of a list: forget undecodable objects the list no longer has, and keep the last
/// decoded copy of those that stopped decoding (the list could not carry them).
fn keep_undecodable<K>(inner: &Inner<K>, objs: &mut Vec<K>)
where
    K: Resource + Clone + Serialize + Send + Sync + 'static,
{
    let listed = std::mem::take(&mut *lock(&inner.listed_undecodable));
    let mut undecodable = lock(&inner.undecodable);
    undecodable.retain(|k, _| listed.contains(k));
    for (key, u) in undecodable.iter() {
        if let Some(cached) = inner.store.get(key)
            && same_uid(&*cached, u)
        {
            objs.push((*cached).clone());
        }
    }
}

/// Implemented by every informer so the factory can start and wait for all of them.
trait AnyInformer: Send + Sync {
    fn start_erased(&self, cancel: CancellationToken);
    fn synced(&self) -> bool;
    fn healthy(&self, grace: Duration) -> Result<(), String>;
    fn sample(&self) -> crate::metrics::SourceSample;
    fn wait_synced_erased(&self, timeout: Duration) -> futures::future::BoxFuture<'static, bool>;
    fn describe(&self) -> String;
    fn as_any(&self) -> &dyn Any;
}

impl<K> AnyInformer for Informer<K>
where
    K: Resource + Clone + Serialize + Send + Sync + 'static,
{
    fn start_erased(&self, cancel: CancellationToken) {
        self.start(cancel)
    }
    fn synced(&self) -> bool {
        self.has_synced()
    }
    fn sample(&self) -> crate::metrics::SourceSample {
        let s = self.stats();
        crate::metrics::SourceSample {
            source: self.name().to_string(),
            connected: self.health().connected,
            last_event_seconds: s.last_event_ms.load(Ordering::Relaxed) as f64 / 1000.0,
            events: s.events.load(Ordering::Relaxed),
            relists: s.relists.load(Ordering::Relaxed),
            errors: s.errors.load(Ordering::Relaxed),
            decode_errors: s.decode_errors.load(Ordering::Relaxed),
            objects: self.inner.store.len() as u64,
            synced: self.has_synced() && !self.inner.relisting.load(Ordering::SeqCst),
            last_sync_seconds: s.last_sync_ms.load(Ordering::Relaxed) as f64 / 1000.0,
        }
    }
    fn healthy(&self, grace: Duration) -> Result<(), String> {
        if self.is_healthy(grace) {
            return Ok(());
        }
        let h = self.health();
        Err(format!(
            "{}: source failing for {}s: {}",
            self.name(),
            h.unhealthy_for.unwrap_or_default().as_secs(),
            h.last_error.unwrap_or_default()
        ))
    }
    fn wait_synced_erased(&self, timeout: Duration) -> futures::future::BoxFuture<'static, bool> {
        let store = self.store();
        Box::pin(async move { store.wait_synced(timeout).await.is_ok() })
    }
    fn describe(&self) -> String {
        self.name().to_string()
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct FactoryKey {
    type_id: TypeId,
    url: String,
    labels: Option<String>,
    fields: Option<String>,
}

/// Caches did not sync in time.
#[derive(Debug, thiserror::Error)]
#[error("timed out after {timeout:?} waiting for caches to sync: {pending:?}")]
pub struct CacheSyncTimeout {
    /// How long it waited.
    pub timeout: Duration,
    /// The informers that had not synced.
    pub pending: Vec<String>,
}

/// Hands out shared informers: one watch per (kind, namespace, selectors), however many
/// controllers and handlers ask for it.
///
/// ```no_run
/// use crwatch::informer::InformerFactory;
/// use k8s_openapi::api::core::v1::Secret;
/// # async fn f(client: kube::Client) -> Result<(), Box<dyn std::error::Error>> {
/// let factory = InformerFactory::new(client);
/// let a = factory.all::<Secret>();
/// let b = factory.all::<Secret>(); // the same informer, the same single watch
/// factory.start();
/// factory.wait_for_cache_sync(std::time::Duration::from_secs(120)).await?;
/// # Ok(()) }
/// ```
pub struct InformerFactory {
    client: kube::Client,
    informers: Mutex<HashMap<FactoryKey, Arc<dyn AnyInformer>>>,
    cancel: CancellationToken,
    started: AtomicBool,
}

impl InformerFactory {
    /// A factory using `client`.
    pub fn new(client: kube::Client) -> Self {
        InformerFactory {
            client,
            informers: Mutex::new(HashMap::new()),
            cancel: CancellationToken::new(),
            started: AtomicBool::new(false),
        }
    }

    /// The client informers use.
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// The shared informer for a source: an existing one when the same kind, scope and
    /// selectors were asked for before.
    pub fn informer<K>(&self, source: KubeSource<K>) -> Informer<K>
    where
        K: Resource + Clone + Serialize + DeserializeOwned + Debug + Send + Sync + 'static,
    {
        let (labels, fields) = source.selectors();
        let key = FactoryKey {
            type_id: TypeId::of::<K>(),
            url: source.describe_url(),
            labels,
            fields,
        };
        self.get_or_insert(key, || Informer::new(source))
    }

    /// The informer registered under `key`, or a new one from `make` (started at once when
    /// the factory already runs).
    fn get_or_insert<T>(&self, key: FactoryKey, make: impl FnOnce() -> Informer<T>) -> Informer<T>
    where
        T: Resource + Clone + Serialize + Send + Sync + 'static,
    {
        let mut map = lock(&self.informers);
        if let Some(existing) = map
            .get(&key)
            .and_then(|i| i.as_any().downcast_ref::<Informer<T>>())
        {
            return existing.clone();
        }
        let informer = make();
        if self.started.load(Ordering::SeqCst) {
            informer.start(self.cancel.child_token());
        }
        map.insert(key, Arc::new(informer.clone()));
        informer
    }

    /// Every object of a kind, in all namespaces.
    pub fn all<K>(&self) -> Informer<K>
    where
        K: Resource + Clone + Serialize + DeserializeOwned + Debug + Send + Sync + 'static,
        K::DynamicType: Default,
    {
        self.informer(KubeSource::all(self.client.clone()))
    }

    /// An untyped informer for any kind, found by group/version/kind through discovery
    /// (`namespace` `None`: all namespaces).
    pub async fn dynamic(
        &self,
        gvk: &kube::api::GroupVersionKind,
        namespace: Option<&str>,
    ) -> Result<Informer<kube::api::DynamicObject>, kube::Error> {
        let (resource, _caps) = kube::discovery::pinned_kind(&self.client, gvk).await?;
        Ok(self.informer(KubeSource::dynamic(self.client.clone(), &resource, namespace)))
    }

    /// A metadata-only informer (`PartialObjectMetadata`): names, labels, owners and the like
    /// without the rest of each object, for kinds whose objects are large.
    pub fn metadata<K>(&self, source: KubeSource<K>) -> Informer<kube::core::PartialObjectMeta<K>>
    where
        K: Resource + Clone + Serialize + DeserializeOwned + Debug + Send + Sync + 'static,
        K::DynamicType: Default,
    {
        let (labels, fields) = source.selectors();
        let key = FactoryKey {
            type_id: TypeId::of::<kube::core::PartialObjectMeta<K>>(),
            url: source.describe_url(),
            labels,
            fields,
        };
        self.get_or_insert(key, || Informer::new(source.metadata_only()))
    }

    /// Share an informer over any source (files, a table, an HTTP endpoint, ...): the factory
    /// starts it with the others, waits for its sync, and reports its health. Adding the
    /// same informer twice changes nothing.
    pub fn add<K>(&self, informer: Informer<K>) -> Informer<K>
    where
        K: Resource + Clone + Serialize + Send + Sync + 'static,
    {
        let key = FactoryKey {
            type_id: TypeId::of::<K>(),
            url: format!("{:p}", Arc::as_ptr(&informer.inner)),
            labels: None,
            fields: None,
        };
        self.get_or_insert(key, || informer)
    }

    /// Each informer's source figures, for `/metrics` (see
    /// [`Metrics::register_sources`](crate::metrics::Metrics::register_sources)).
    pub fn samples(&self) -> Vec<crate::metrics::SourceSample> {
        lock(&self.informers).values().map(|i| i.sample()).collect()
    }

    /// Every informer whose source has been failing for longer than `grace`, with why.
    pub fn unhealthy(&self, grace: Duration) -> Vec<String> {
        lock(&self.informers)
            .values()
            .filter_map(|i| i.healthy(grace).err())
            .collect()
    }

    /// Start every informer made so far, and every one made from now on.
    pub fn start(&self) {
        self.started.store(true, Ordering::SeqCst);
        for i in lock(&self.informers).values() {
            i.start_erased(self.cancel.child_token());
        }
    }

    /// Wait until every informer has synced.
    pub async fn wait_for_cache_sync(&self, timeout: Duration) -> Result<(), CacheSyncTimeout> {
        let waits: Vec<_> = lock(&self.informers)
            .values()
            .map(|i| i.wait_synced_erased(timeout))
            .collect();
        let all = futures::future::join_all(waits).await;
        if all.iter().all(|ok| *ok) {
            return Ok(());
        }
        let pending = lock(&self.informers)
            .values()
            .filter(|i| !i.synced())
            .map(|i| i.describe())
            .collect();
        Err(CacheSyncTimeout { timeout, pending })
    }
    /// Stop every informer.
    pub fn shutdown(&self) {
        self.cancel.cancel();
    }
}

impl Drop for InformerFactory {
    fn drop(&mut self) {
        // Watches must not outlive the factory that started them.
        self.cancel.cancel();
    }
}
