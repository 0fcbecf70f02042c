//! The indexed cache: every object a source has seen, behind `Arc`, keyed by
//! [`ObjectKey`] (`namespace/name`), with secondary indexes and read-only [`Lister`]s.
//!
//! This is client-go's `ThreadSafeStore` + `Indexer` + `HasSynced`. Writers (the reflector)
//! call [`Store::apply`], [`Store::delete`] and [`Store::replace`]; readers get cheap `Arc`
//! clones. Index functions run outside the lock and snapshots are built under a read lock,
//! so readers only ever wait for a writer's map insertions, never for user code.
//!
//! ```
//! use crwatch::store::{ObjectKey, Store};
//! use k8s_openapi::api::core::v1::ConfigMap;
//!
//! let store = Store::<ConfigMap>::new();
//! let mut cm = ConfigMap::default();
//! cm.metadata.namespace = Some("default".into());
//! cm.metadata.name = Some("settings".into());
//! store.apply(cm);
//! let key: ObjectKey = "default/settings".parse()?;
//! assert!(store.get(&key).is_some());
//! assert_eq!(store.lister().list_namespace("default").len(), 1);
//! # Ok::<(), crwatch::store::InvalidKey>(())
//! ```

mod compact;
mod index;
mod lister;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use kube::Resource;

pub mod snapshot;

pub use compact::CompactionStats;
#[cfg(feature = "compact")]
pub use compact::{Compaction, CompactionError};
pub use index::{
    IndexFn, LABEL_INDEX, NAMESPACE_INDEX, OWNER_INDEX, index_controller_owner, index_labels, index_namespace,
};
pub use lister::{Lister, SelectorError, parse_selector};

use compact::{Codec, Slot};
use index::{IndexValues, Indexers, Indices, SharedKey};

/// client-go's `MetaNamespaceKey`: `ns/name`, or `name` for cluster-scoped objects.
///
/// An empty namespace means cluster-scoped, as in client-go, so `new(Some(""), "x")` equals
/// `new(None, "x")`. Keys order by namespace (cluster-scoped first), then name.
///
/// ```
/// use crwatch::store::ObjectKey;
///
/// let k = ObjectKey::new(Some("default"), "db");
/// assert_eq!(k.to_string(), "default/db");
/// assert_eq!("default/db".parse::<ObjectKey>()?, k);
/// assert_eq!("node-1".parse::<ObjectKey>()?, ObjectKey::new(None, "node-1"));
/// # Ok::<(), crwatch::store::InvalidKey>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    /// The namespace; `None` for cluster-scoped objects.
    pub namespace: Option<String>,
    /// The object's name.
    pub name: String,
}

impl ObjectKey {
    /// A key from namespace and name.
    ///
    /// ```
    /// use crwatch::store::ObjectKey;
    ///
    /// assert_eq!(ObjectKey::new(Some(""), "n"), ObjectKey::new(None, "n"));
    /// ```
    pub fn new(ns: Option<&str>, name: &str) -> Self {
        ObjectKey {
            namespace: ns.filter(|ns| !ns.is_empty()).map(str::to_owned),
            name: name.to_owned(),
        }
    }

    /// The key of an object, from its metadata (an object without a name, which the API server
    /// never returns, gets the empty name).
    ///
    /// ```
    /// use crwatch::store::ObjectKey;
    /// use k8s_openapi::api::core::v1::Namespace;
    ///
    /// let mut ns = Namespace::default();
    /// ns.metadata.name = Some("prod".into());
    /// assert_eq!(ObjectKey::of(&ns).to_string(), "prod");
    /// ```
    pub fn of<K: Resource>(obj: &K) -> Self {
        let meta = obj.meta();
        ObjectKey::new(
            meta.namespace.as_deref(),
            meta.name.as_deref().unwrap_or_default(),
        )
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{ns}/{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// A string that is not `name` or `namespace/name`.
///
/// ```
/// use crwatch::store::ObjectKey;
///
/// assert!("a/b/c".parse::<ObjectKey>().is_err());
/// assert!("".parse::<ObjectKey>().is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid object key {0:?}: expected \"name\" or \"namespace/name\"")]
pub struct InvalidKey(pub String);

impl FromStr for ObjectKey {
    type Err = InvalidKey;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (ns, name) = match s.split_once('/') {
            Some((ns, name)) => (Some(ns), name),
            None => (None, s),
        };
        if name.is_empty() || name.contains('/') {
            return Err(InvalidKey(s.to_owned()));
        }
        Ok(ObjectKey::new(ns, name))
    }
}

/// What [`Store::replace`] changed, each list sorted by key.
///
/// ```
/// use crwatch::store::{Replaced, Store};
/// use k8s_openapi::api::core::v1::ConfigMap;
///
/// let store = Store::<ConfigMap>::new();
/// let r: Replaced<ConfigMap> = store.replace(vec![]);
/// assert!(r.is_empty());
/// ```
#[derive(Debug)]
pub struct Replaced<K> {
    /// Objects that were not in the store before.
    pub added: Vec<Arc<K>>,
    /// `(old, new)` for objects whose resourceVersion differs (or is missing on either side,
    /// since then nothing proves them unchanged).
    pub updated: Vec<(Arc<K>, Arc<K>)>,
    /// Objects that are gone, in their last known state.
    pub deleted: Vec<Arc<K>>,
}

impl<K> Replaced<K> {
    /// True when the replace changed nothing.
    ///
    /// ```
    /// use crwatch::store::Store;
    /// use k8s_openapi::api::core::v1::ConfigMap;
    ///
    /// let mut cm = ConfigMap::default();
    /// cm.metadata.name = Some("a".into());
    /// cm.metadata.resource_version = Some("1".into());
    /// let store = Store::new();
    /// assert!(!store.replace(vec![cm.clone()]).is_empty());
    /// assert!(store.replace(vec![cm]).is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.updated.is_empty() && self.deleted.is_empty()
    }
}

impl<K> Default for Replaced<K> {
    fn default() -> Self {
        Replaced {
            added: Vec::new(),
            updated: Vec::new(),
            deleted: Vec::new(),
        }
    }
}

/// [`Store::wait_synced`] gave up.
///
/// ```
/// use crwatch::store::SyncTimeout;
/// use std::time::Duration;
///
/// let e = SyncTimeout { timeout: Duration::from_secs(120) };
/// assert!(e.to_string().contains("120s"));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "cache did not sync within {timeout:?}: the initial list has not completed; check that the source can list the resource (RBAC, connectivity, CRD installed)"
)]
pub struct SyncTimeout {
    /// How long was waited.
    pub timeout: Duration,
}

/// One cached object (itself, or compressed when cold) and the index values it is filed
/// under.
struct Entry<K> {
    obj: Slot<K>,
    values: IndexValues,
}

/// Everything behind the lock. Invariant: every entry's `values` and `indices` are aligned
/// with `indexers` (one slot per index function), and `indices` files exactly the entries'
/// values. Each mutation below runs all user code (index functions) before it touches any
/// field, so a panicking index function leaves the state intact and lock poisoning can be
/// ignored safely.
struct State<K> {
    indexers: Arc<Indexers<K>>,
    objects: BTreeMap<SharedKey, Entry<K>>,
    indices: Indices,
    /// Compressed storage of cold objects, once enabled ([`Store::compact_cold`]).
    codec: Option<Arc<Codec<K>>>,
    /// With a codec: the objects written most recently, oldest first, as (key, address of the
    /// `Arc` written). An item whose entry has since been rewritten or deleted is stale and
    /// skipped. At most `codec.hot + 1` items.
    hot: VecDeque<(SharedKey, usize)>,
}

struct Shared<K> {
    state: RwLock<State<K>>,
    synced: tokio::sync::watch::Sender<bool>,
    /// Woken after every content change (apply, delete, replace), for waiters such as
    /// read-your-own-writes ([`Store::changed`]). `notify_waiters` with nobody waiting is one
    /// uncontended mutex and one atomic add, so writers pay next to nothing for it.
    changes: Arc<tokio::sync::Notify>,
}

/// The indexed cache. Cloning is cheap and clones share the content.
///
/// ```
/// use crwatch::store::{LABEL_INDEX, Store};
/// use k8s_openapi::api::core::v1::ConfigMap;
///
/// let store = Store::<ConfigMap>::new();
/// let writer = store.clone();
/// let mut cm = ConfigMap::default();
/// cm.metadata.name = Some("a".into());
/// cm.metadata.labels = Some([("tier".to_string(), "db".to_string())].into());
/// writer.apply(cm);
/// assert_eq!(store.len(), 1);
/// assert_eq!(store.index_values(LABEL_INDEX), ["tier=db"]);
/// ```
pub struct Store<K> {
    shared: Arc<Shared<K>>,
}

impl<K> Clone for Store<K> {
    fn clone(&self) -> Self {
        Store {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<K> fmt::Debug for Store<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.read();
        f.debug_struct("Store")
            .field("len", &st.objects.len())
            .field("indexes", &st.indexers.names)
            .field("synced", &*self.shared.synced.borrow())
            .finish()
    }
}

impl<K: Resource + Clone + Send + Sync + 'static> Default for Store<K> {
    fn default() -> Self {
        Store::new()
    }
}

impl<K> Store<K> {
    fn read(&self) -> RwLockReadGuard<'_, State<K>> {
        // Poisoning is harmless here: see the invariant on `State`.
        self.shared.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, State<K>> {
        self.shared.state.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Same resourceVersion on both sides. A missing version proves nothing, so it counts as
/// changed: sources without versions (files) then see every relisted object as updated
/// unless they synthesize one, e.g. from a content hash.
fn same_version_str(a: Option<&str>, b: Option<&str>) -> bool {
    matches!((a, b), (Some(a), Some(b)) if a == b)
}

/// [`same_object`] on uids.
fn same_uid(a: Option<&str>, b: Option<&str>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    }
}

/// Whether two states under one key are the same object: a different uid means it was
/// deleted and created again (unknown uids count as the same object).
pub fn same_object<K: Resource>(a: &K, b: &K) -> bool {
    same_uid(a.meta().uid.as_deref(), b.meta().uid.as_deref())
}

/// Whether two slots hold the very same stored state (the same `Arc`).
fn same_slot<K>(a: &Slot<K>, b: &Slot<K>) -> bool {
    match (a, b) {
        (Slot::Hot(a), Slot::Hot(b)) => Arc::ptr_eq(a, b),
        (Slot::Cold(a), Slot::Cold(b)) => a.ptr_eq(b),
        _ => false,
    }
}

/// Hot objects past the hot set's limit, oldest first, to be compressed: pops `hot` down to
/// `limit` and keeps the items still current (the entry holds the `Arc` that was written).
fn take_cold<K>(
    objects: &BTreeMap<SharedKey, Entry<K>>,
    hot: &mut VecDeque<(SharedKey, usize)>,
    limit: usize,
) -> Vec<(SharedKey, Arc<K>)> {
    let mut out = Vec::new();
    while hot.len() > limit {
        let Some((key, addr)) = hot.pop_front() else { break };
        if let Some(Entry {
            obj: Slot::Hot(o), ..
        }) = objects.get(&key)
            && Arc::as_ptr(o) as usize == addr
        {
            out.push((key, Arc::clone(o)));
        }
    }
    out
}

impl<K: Resource + Clone + Send + Sync + 'static> Store<K> {
    /// An empty, unsynced store with the built-in indexes [`NAMESPACE_INDEX`],
    /// [`LABEL_INDEX`] and [`OWNER_INDEX`].
    ///
    /// ```
    /// use crwatch::store::Store;
    /// use k8s_openapi::api::core::v1::Pod;
    ///
    /// let store = Store::<Pod>::new();
    /// assert!(store.is_empty() && !store.has_synced());
    /// ```
    pub fn new() -> Self {
        let indexers = Indexers::<K>::builtin();
        let indices = Indices::with_len(indexers.fns.len());
        Store {
            shared: Arc::new(Shared {
                state: RwLock::new(State {
                    indexers: Arc::new(indexers),
                    objects: BTreeMap::new(),
                    indices,
                    codec: None,
                    hot: VecDeque::new(),
                }),
                synced: tokio::sync::watch::Sender::new(false),
                changes: Arc::new(tokio::sync::Notify::new()),
            }),
        }
    }

    /// Registers (or replaces, when `name` exists, built-ins included) an index and files
    /// every object already in the store under it. Index functions should be cheap and must
    /// not call back into this store.
    ///
    /// ```
    /// use crwatch::store::Store;
    /// use k8s_openapi::api::core::v1::ConfigMap;
    ///
    /// let store = Store::<ConfigMap>::new();
    /// let mut cm = ConfigMap::default();
    /// cm.metadata.name = Some("a".into());
    /// cm.data = Some([("engine".to_string(), "postgres".to_string())].into());
    /// store.apply(cm);
    /// store.add_indexer("engine", |cm: &ConfigMap| {
    ///     cm.data.iter().flatten().filter(|(k, _)| *k == "engine").map(|(_, v)| v.clone()).collect()
    /// });
    /// assert_eq!(store.by_index("engine", "postgres").len(), 1);
    /// ```
    pub fn add_indexer(&self, name: &str, f: impl Fn(&K) -> Vec<String> + Send + Sync + 'static) {
        let f: IndexFn<K> = Arc::new(f);
        loop {
            // Compute outside the lock from a snapshot; objects that change meanwhile are
            // recomputed under the lock.
            let (indexers, codec, snapshot) = {
                let st = self.read();
                let objs: Vec<(ObjectKey, Slot<K>)> = st
                    .objects
                    .iter()
                    .map(|(k, e)| ((**k).clone(), e.obj.clone()))
                    .collect();
                (Arc::clone(&st.indexers), st.codec.clone(), objs)
            };
            let mut precomputed: HashMap<ObjectKey, (Slot<K>, Vec<String>)> = snapshot
                .into_iter()
                .map(|(k, slot)| {
                    let vals = compact::resolve(codec.as_deref(), slot.clone())
                        .map(|o| index::normalize(f(&o)))
                        .unwrap_or_default();
                    (k, (slot, vals))
                })
                .collect();
            let (new_indexers, pos) = indexers.with(name, Arc::clone(&f));

            let mut st = self.write();
            if !Arc::ptr_eq(&st.indexers, &indexers) {
                continue; // another indexer was registered meanwhile: start over on top of it
            }
            let codec = st.codec.clone();
            let values: Vec<Vec<String>> = st
                .objects
                .iter()
                .map(|(key, e)| match precomputed.remove(&**key) {
                    Some((slot, vals)) if same_slot(&slot, &e.obj) => vals,
                    // Changed meanwhile (rare): computed here, under the lock.
                    _ => compact::resolve(codec.as_deref(), e.obj.clone())
                        .map(|o| index::normalize(f(&o)))
                        .unwrap_or_default(),
                })
                .collect();
            // All user code has run; only now mutate (see the invariant on `State`).
            let State {
                indexers: st_indexers,
                objects,
                indices,
                ..
            } = &mut *st;
            indices.clear(pos);
            for ((key, e), vals) in objects.iter_mut().zip(values) {
                let vals = indices.add(pos, key, &vals);
                match e.values.get_mut(pos) {
                    Some(slot) => *slot = vals,
                    None => e.values.push(vals),
                }
            }
            *st_indexers = Arc::new(new_indexers);
            return;
        }
    }

    /// Inserts or replaces an object (owned or already in an `Arc`, which is then shared, not
    /// copied); returns the previous version.
    ///
    /// ```
    /// use crwatch::store::Store;
    /// use k8s_openapi::api::core::v1::ConfigMap;
    ///
    /// let store = Store::<ConfigMap>::new();
    /// let mut cm = ConfigMap::default();
    /// cm.metadata.name = Some("a".into());
    /// assert!(store.apply(cm.clone()).is_none());
    /// assert!(store.apply(cm).is_some());
    /// ```
    pub fn apply(&self, obj: impl Into<Arc<K>>) -> Option<Arc<K>> {
        let obj: Arc<K> = obj.into();
        let key = ObjectKey::of(&*obj);
        let indexers = Arc::clone(&self.read().indexers);
        let values = indexers.compute(&obj);
        let mut st = self.write();
        // Rare: an indexer was added between computing and locking.
        let values = if Arc::ptr_eq(&st.indexers, &indexers) {
            values
        } else {
            st.indexers.compute(&obj)
        };
        let State {
            objects,
            indices,
            codec,
            hot,
            ..
        } = &mut *st;
        let (key, old) = match objects.get_key_value(&key) {
            Some((k, e)) => (Arc::clone(k), Some(&e.values)),
            None => (Arc::new(key), None),
        };
        let values = indices.update(&key, old, &values);
        let Some(codec) = codec.clone() else {
            let old = objects.insert(
                key,
                Entry {
                    obj: Slot::Hot(obj),
                    values,
                },
            );
            drop(st);
            self.notify_changed();
            return match old?.obj {
                Slot::Hot(old) => Some(old),
                // Without a codec nothing is ever compressed.
                Slot::Cold(_) => None,
            };
        };
        hot.push_back((Arc::clone(&key), Arc::as_ptr(&obj) as usize));
        let old = objects.insert(
            key,
            Entry {
                obj: Slot::Hot(obj),
                values,
            },
        );
        let evicted = take_cold(objects, hot, codec.hot);
        drop(st);
        self.notify_changed();
        self.compress(&codec, evicted);
        old.and_then(|e| compact::resolve(Some(&codec), e.obj))
    }

    /// Compresses objects that left the hot set, outside the lock, then swaps each in if the
    /// entry still holds the state that was compressed (a newer write stays hot). Objects
    /// that do not pack (small, or incompressible) stay as they are.
    fn compress(&self, codec: &Codec<K>, evicted: Vec<(SharedKey, Arc<K>)>) {
        let packed: Vec<_> = evicted
            .into_iter()
            .filter_map(|(key, obj)| codec.pack(&obj).map(|p| (key, obj, p)))
            .collect();
        if packed.is_empty() {
            return;
        }
        let mut replaced = Vec::with_capacity(packed.len());
        {
            let mut st = self.write();
            for (key, obj, p) in &packed {
                if let Some(e) = st.objects.get_mut(key)
                    && matches!(&e.obj, Slot::Hot(cur) if Arc::ptr_eq(cur, obj))
                {
                    replaced.push(std::mem::replace(&mut e.obj, Slot::Cold(p.clone())));
                }
            }
        }
        // The decoded objects are freed here, after the lock.
        drop((replaced, packed));
    }

    /// Removes an object; returns its last known state.
    ///
    /// ```
    /// use crwatch::store::{ObjectKey, Store};
    /// use k8s_openapi::api::core::v1::ConfigMap;
    ///
    /// let store = Store::<ConfigMap>::new();
    /// let mut cm = ConfigMap::default();
    /// cm.metadata.name = Some("a".into());
    /// store.apply(cm);
    /// assert!(store.delete(&ObjectKey::new(None, "a")).is_some());
    /// assert!(store.is_empty());
    /// ```
    pub fn delete(&self, key: &ObjectKey) -> Option<Arc<K>> {
        let mut st = self.write();
        let State { objects, indices, .. } = &mut *st;
        let e = objects.remove(key)?;
        for (pos, vals) in e.values.iter().enumerate() {
            indices.remove(pos, key, vals);
        }
        let codec = st.codec.clone();
        drop(st);
        self.notify_changed();
        compact::resolve(codec.as_deref(), e.obj)
    }

    /// Replaces the whole content after a (re)list and reports only real changes: objects
    /// added, objects whose resourceVersion differs (old and new), and objects deleted (last
    /// known state). Objects with an unchanged resourceVersion are not reported, so handlers see
    /// no spurious adds after a relist or a 410. If `objs` holds one key twice, the last wins.
    ///
    /// ```
    /// use crwatch::store::Store;
    /// use k8s_openapi::api::core::v1::ConfigMap;
    ///
    /// fn cm(name: &str, rv: &str) -> ConfigMap {
    ///     let mut cm = ConfigMap::default();
    ///     cm.metadata.name = Some(name.into());
    ///     cm.metadata.resource_version = Some(rv.into());
    ///     cm
    /// }
    /// let store = Store::new();
    /// store.replace(vec![cm("a", "1"), cm("b", "1")]);
    /// let r = store.replace(vec![cm("a", "1"), cm("b", "2"), cm("c", "1")]);
    /// assert_eq!((r.added.len(), r.updated.len(), r.deleted.len()), (1, 1, 0));
    /// let r = store.replace(vec![cm("c", "1")]);
    /// assert_eq!(r.deleted.len(), 2);
    /// ```
    pub fn replace(&self, objs: Vec<K>) -> Replaced<K> {
        let objs: Vec<(ObjectKey, Arc<K>)> = objs
            .into_iter()
            .map(|o| (ObjectKey::of(&o), Arc::new(o)))
            .collect();
        let (new_list, old_objects, codec) = loop {
            // Build the new content entirely outside the lock (compressing included), then
            // swap it in.
            let (indexers, codec) = {
                let st = self.read();
                (Arc::clone(&st.indexers), st.codec.clone())
            };
            let mut computed = BTreeMap::new();
            for (key, obj) in &objs {
                computed.insert(key.clone(), (Arc::clone(obj), indexers.compute(obj)));
            }
            let mut indices = Indices::with_len(indexers.fns.len());
            let mut objects: BTreeMap<SharedKey, Entry<K>> = BTreeMap::new();
            let mut new_list: Vec<(ObjectKey, Arc<K>)> = Vec::with_capacity(computed.len());
            let mut hot = VecDeque::new();
            // With a codec, the last `hot` objects (in key order: a list says nothing about
            // which are in use) stay decoded and the rest are compressed.
            let compress_below = codec.as_ref().map_or(0, |c| computed.len().saturating_sub(c.hot));
            if let Some(c) = &codec
                && compress_below > 0
            {
                c.prepare(objs.iter().map(|(_, o)| o));
            }
            for (i, (key, (obj, values))) in computed.into_iter().enumerate() {
                let key = Arc::new(key);
                let values = indices.update(&key, None, &values);
                let slot = match &codec {
                    Some(c) if i < compress_below => c
                        .pack(&obj)
                        .map_or_else(|| Slot::Hot(Arc::clone(&obj)), Slot::Cold),
                    Some(_) => {
                        hot.push_back((Arc::clone(&key), Arc::as_ptr(&obj) as usize));
                        Slot::Hot(Arc::clone(&obj))
                    }
                    None => Slot::Hot(Arc::clone(&obj)),
                };
                new_list.push(((*key).clone(), obj));
                objects.insert(key, Entry { obj: slot, values });
            }
            let mut st = self.write();
            let same_codec = match (&st.codec, &codec) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            };
            if !Arc::ptr_eq(&st.indexers, &indexers) || !same_codec {
                continue; // an indexer or compaction was set meanwhile: rebuild with it
            }
            st.indices = indices;
            st.hot = hot;
            break (new_list, std::mem::replace(&mut st.objects, objects), codec);
        };
        self.notify_changed();
        // Diff and drop the old content after the lock is released: both are O(n). Old
        // objects are decoded only when reported (changed or deleted).
        let old = |slot| compact::resolve(codec.as_deref(), slot);
        let mut out = Replaced::default();
        let mut old_iter = old_objects.into_iter().peekable();
        for (key, new) in new_list {
            while let Some((_, e)) = old_iter.next_if(|(k, _)| **k < key) {
                out.deleted.extend(old(e.obj));
            }
            let Some((_, e)) = old_iter.next_if(|(k, _)| **k == key) else {
                out.added.push(new);
                continue;
            };
            let (rv, uid) = e.obj.version();
            let meta = new.meta();
            if !same_uid(uid, meta.uid.as_deref()) {
                // Deleted and created again under the same name while nobody looked.
                out.deleted.extend(old(e.obj));
                out.added.push(new);
            } else if !same_version_str(rv, meta.resource_version.as_deref()) {
                match old(e.obj) {
                    Some(o) => out.updated.push((o, new)),
                    None => out.added.push(new),
                }
            }
        }
        out.deleted.extend(old_iter.filter_map(|(_, e)| old(e.obj)));
        out
    }

    /// The resourceVersion and uid of the object under `key` (`None` when absent), read
    /// without decoding a compressed object or cloning it.
    ///
    /// ```
    /// use crwatch::store::{ObjectKey, Store};
    /// use k8s_openapi::api::core::v1::ConfigMap;
    ///
    /// let store = Store::<ConfigMap>::new();
    /// let mut cm = ConfigMap::default();
    /// cm.metadata.name = Some("a".into());
    /// cm.metadata.resource_version = Some("7".into());
    /// store.apply(cm);
    /// let (rv, uid) = store.version_of(&ObjectKey::new(None, "a")).unwrap();
    /// assert_eq!((rv.as_deref(), uid), (Some("7"), None));
    /// ```
    pub fn version_of(&self, key: &ObjectKey) -> Option<(Option<String>, Option<String>)> {
        let st = self.read();
        let (rv, uid) = st.objects.get(key)?.obj.version();
        Some((rv.map(str::to_owned), uid.map(str::to_owned)))
    }

    /// Resolves after the next change to the content ([`Store::apply`], [`Store::delete`],
    /// [`Store::replace`]) that happens after this call: the future is registered when it is
    /// made, not when first polled, so "make it, check the store, await it" misses nothing.
    ///
    /// ```
    /// use crwatch::store::Store;
    /// use k8s_openapi::api::core::v1::ConfigMap;
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let store = Store::<ConfigMap>::new();
    /// let changed = store.changed();
    /// store.apply(ConfigMap::default());
    /// changed.await; // already woken by the apply
    /// # });
    /// ```
    pub fn changed(&self) -> tokio::sync::futures::OwnedNotified {
        Arc::clone(&self.shared.changes).notified_owned()
    }

    fn notify_changed(&self) {
        self.shared.changes.notify_waiters();
    }

    /// The object under `key`.
    ///
    /// ```
    /// use crwatch::store::{ObjectKey, Store};
    /// use k8s_openapi::api::core::v1::ConfigMap;
    ///
    /// let store = Store::<ConfigMap>::new();
    /// assert!(store.get(&ObjectKey::new(Some("ns"), "missing")).is_none());
    /// ```
    pub fn get(&self, key: &ObjectKey) -> Option<Arc<K>> {
        let st = self.read();
        let slot = match &st.objects.get(key)?.obj {
            Slot::Hot(o) => return Some(Arc::clone(o)),
            cold => cold.clone(),
        };
        let codec = st.codec.clone();
        drop(st);
        compact::resolve(codec.as_deref(), slot)
    }

    /// The objects of the entries `pick` selects under the read lock; cold ones are decoded
    /// after the lock is released.
    fn collect(&self, pick: impl FnOnce(&State<K>) -> Vec<Slot<K>>) -> Vec<Arc<K>> {
        let (slots, codec) = {
            let st = self.read();
            (pick(&st), st.codec.clone())
        };
        slots
            .into_iter()
            .filter_map(|s| compact::resolve(codec.as_deref(), s))
            .collect()
    }

    /// A snapshot of all objects, sorted by key.
    ///
    /// ```
    /// use crwatch::store::Store;
    /// use k8s_openapi::api::core::v1::ConfigMap;
    ///
    /// let store = Store::<ConfigMap>::new();
    /// for name in ["b", "a"] {
    ///     let mut cm = ConfigMap::default();
    ///     cm.metadata.name = Some(name.into());
    ///     store.apply(cm);
    /// }
    /// let names: Vec<_> = store.list().iter().map(|c| c.metadata.name.clone().unwrap()).collect();
    /// assert_eq!(names, ["a", "b"]);
    /// ```
    pub fn list(&self) -> Vec<Arc<K>> {
        self.collect(|st| st.objects.values().map(|e| e.obj.clone()).collect())
    }

    /// Number of objects.
    ///
    /// ```
    /// use crwatch::store::Store;
    /// use k8s_openapi::api::core::v1::ConfigMap;
    ///
    /// assert_eq!(Store::<ConfigMap>::new().len(), 0);
    /// ```
    pub fn len(&self) -> usize {
        self.read().objects.len()
    }

    /// True when the store holds no object.
    ///
    /// ```
    /// use crwatch::store::Store;
    /// use k8s_openapi::api::core::v1::ConfigMap;
    ///
    /// assert!(Store::<ConfigMap>::new().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.read().objects.is_empty()
    }

    /// Objects filed under `value` in index `index`, sorted by key. An unknown index yields
    /// an empty list (check [`Store::index_names`] when that matters).
    ///
    /// ```
    /// use crwatch::store::{NAMESPACE_INDEX, Store};
    /// use k8s_openapi::api::core::v1::ConfigMap;
    ///
    /// let store = Store::<ConfigMap>::new();
    /// assert!(store.by_index(NAMESPACE_INDEX, "default").is_empty());
    /// assert!(store.by_index("no-such-index", "x").is_empty());
    /// ```
    pub fn by_index(&self, index: &str, value: &str) -> Vec<Arc<K>> {
        self.collect(|st| {
            let Some(keys) = st
                .indexers
                .position(index)
                .and_then(|pos| st.indices.get(pos, value))
            else {
                return Vec::new();
            };
            // Every indexed key is in `objects` (invariant on `State`); filter_map keeps this
            // total anyway.
            keys.iter()
                .filter_map(|k| st.objects.get(k))
                .map(|e| e.obj.clone())
                .collect()
        })
    }

    /// The values of index `index` that currently find at least one object, sorted.
    ///
    /// ```
    /// use crwatch::store::{NAMESPACE_INDEX, Store};
    /// use k8s_openapi::api::core::v1::ConfigMap;
    ///
    /// let store = Store::<ConfigMap>::new();
    /// for ns in ["b", "a", "b"] {
    ///     let mut cm = ConfigMap::default();
    ///     cm.metadata.namespace = Some(ns.into());
    ///     cm.metadata.name = Some("x".into());
    ///     store.apply(cm);
    /// }
    /// assert_eq!(store.index_values(NAMESPACE_INDEX), ["a", "b"]);
    /// ```
    pub fn index_values(&self, index: &str) -> Vec<String> {
        let st = self.read();
        st.indexers
            .position(index)
            .map(|pos| st.indices.values(pos))
            .unwrap_or_default()
    }

    /// Names of the registered indexes, built-ins first.
    ///
    /// ```
    /// use crwatch::store::Store;
    /// use k8s_openapi::api::core::v1::ConfigMap;
    ///
    /// assert_eq!(Store::<ConfigMap>::new().index_names(), ["namespace", "label", "owner"]);
    /// ```
    pub fn index_names(&self) -> Vec<String> {
        self.read().indexers.names.clone()
    }

    /// Records that the initial list has been applied (the reflector calls this after its
    /// first [`Store::replace`]); wakes every [`Store::wait_synced`].
    ///
    /// ```
    /// use crwatch::store::Store;
    /// use k8s_openapi::api::core::v1::ConfigMap;
    ///
    /// let store = Store::<ConfigMap>::new();
    /// store.mark_synced();
    /// assert!(store.has_synced());
    /// ```
    pub fn mark_synced(&self) {
        self.shared.synced.send_replace(true);
    }

    /// Whether [`Store::mark_synced`] has been called.
    ///
    /// ```
    /// use crwatch::store::Store;
    /// use k8s_openapi::api::core::v1::ConfigMap;
    ///
    /// assert!(!Store::<ConfigMap>::new().has_synced());
    /// ```
    pub fn has_synced(&self) -> bool {
        *self.shared.synced.borrow()
    }

    /// Waits until the store is synced, at most `timeout` (controller-runtime's default cache
    /// sync timeout is 2 minutes). Needs a Tokio runtime with the time driver.
    ///
    /// ```
    /// use crwatch::store::Store;
    /// use k8s_openapi::api::core::v1::ConfigMap;
    /// use std::time::Duration;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let store = Store::<ConfigMap>::new();
    /// let writer = store.clone();
    /// tokio::spawn(async move { writer.mark_synced() });
    /// store.wait_synced(Duration::from_secs(120)).await.expect("synced");
    /// assert!(Store::<ConfigMap>::new().wait_synced(Duration::from_millis(1)).await.is_err());
    /// # }
    /// ```
    pub async fn wait_synced(&self, timeout: Duration) -> Result<(), SyncTimeout> {
        let mut rx = self.shared.synced.subscribe();
        match tokio::time::timeout(timeout, rx.wait_for(|synced| *synced)).await {
            // The sender lives in `shared`, which `self` keeps alive, so `wait_for` cannot
            // fail with "closed"; were that ever to change, not synced is the safe answer.
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) | Err(_) => Err(SyncTimeout { timeout }),
        }
    }

    /// A read-only view for code that must not write (reconcilers, handlers).
    ///
    /// ```
    /// use crwatch::store::Store;
    /// use k8s_openapi::api::core::v1::ConfigMap;
    ///
    /// let lister = Store::<ConfigMap>::new().lister();
    /// assert!(lister.list().is_empty());
    /// ```
    pub fn lister(&self) -> Lister<K> {
        Lister::new(self.clone())
    }

    /// Keeps objects compressed once they are cold (feature `compact`): the
    /// [`Compaction::hot`] most recently written objects stay decoded; the others are held as
    /// zstd-compressed JSON against a dictionary trained on the first objects (what objects of
    /// a kind share, from field names to labels and owner references, is stored once): a
    /// tenth to a half of the memory, depending on how much objects share (their
    /// resourceVersion and uid stay readable, so a relist decodes only what changed). Reads of
    /// a hot object return the cached `Arc` itself; reads of a cold one ([`Store::get`],
    /// [`Store::list`], listers, indexes) decode a fresh copy, so listing everything costs a
    /// decode per object. `K` must round-trip through JSON without loss (fields marked
    /// `#[serde(skip)]` would be dropped); an object whose JSON does not decode back stays
    /// uncompressed. Can be called at any time; objects already stored are compressed
    /// now. Event handlers are unaffected: they get the objects as delivered.
    ///
    /// ```
    /// use crwatch::store::{Compaction, ObjectKey, Store};
    /// use k8s_openapi::api::core::v1::ConfigMap;
    ///
    /// let store = Store::<ConfigMap>::new();
    /// store.compact_cold(Compaction::new().hot(1)?.min_bytes(100)?);
    /// for name in ["a", "b"] {
    ///     let mut cm = ConfigMap::default();
    ///     cm.metadata.name = Some(name.into());
    ///     cm.data = Some([("config".to_string(), "key = value\n".repeat(100))].into());
    ///     store.apply(cm);
    /// }
    /// let stats = store.compaction_stats();
    /// assert_eq!((stats.hot, stats.cold), (1, 1));
    /// assert!(stats.cold_bytes * 10 < stats.cold_json_bytes);
    /// let a = store.get(&ObjectKey::new(None, "a")).expect("decoded");
    /// assert_eq!(a.data.as_ref().map(|d| d["config"].len()), Some(1200));
    /// # Ok::<(), crwatch::store::CompactionError>(())
    /// ```
    #[cfg(feature = "compact")]
    pub fn compact_cold(&self, settings: Compaction)
    where
        K: serde::Serialize + serde::de::DeserializeOwned,
    {
        let (codec, evicted) = {
            let mut st = self.write();
            let State {
                objects,
                codec: slot,
                hot,
                ..
            } = &mut *st;
            // A new codec keeps the dictionary: objects packed with it must stay readable.
            let dictionary = slot.as_ref().map_or_else(
                || Arc::new(compact::Dictionary::new()),
                |c| Arc::clone(&c.dictionary),
            );
            let codec = Arc::new(Codec::new(&settings, dictionary));
            *slot = Some(Arc::clone(&codec));
            hot.clear();
            hot.extend(objects.iter().filter_map(|(k, e)| match &e.obj {
                Slot::Hot(o) => Some((Arc::clone(k), Arc::as_ptr(o) as usize)),
                Slot::Cold(_) => None,
            }));
            let evicted = take_cold(objects, hot, codec.hot);
            (codec, evicted)
        };
        self.compress(&codec, evicted);
    }

    /// How many objects are held decoded and compressed, and the compressed bytes (all hot
    /// without [`Store::compact_cold`]). Walks the store under the read lock.
    ///
    /// ```
    /// use crwatch::store::Store;
    /// use k8s_openapi::api::core::v1::ConfigMap;
    ///
    /// assert_eq!(Store::<ConfigMap>::new().compaction_stats().cold, 0);
    /// ```
    pub fn compaction_stats(&self) -> CompactionStats {
        let st = self.read();
        let mut out = CompactionStats::default();
        for e in st.objects.values() {
            match &e.obj {
                Slot::Hot(_) => out.hot += 1,
                Slot::Cold(p) => {
                    out.cold += 1;
                    out.cold_bytes += p.len();
                    out.cold_json_bytes += p.raw_len();
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    fn cm(ns: &str, name: &str, rv: &str, labels: &[(&str, &str)]) -> ConfigMap {
        let mut cm = ConfigMap::default();
        cm.metadata.namespace = (!ns.is_empty()).then(|| ns.to_owned());
        cm.metadata.name = Some(name.to_owned());
        cm.metadata.resource_version = (!rv.is_empty()).then(|| rv.to_owned());
        if !labels.is_empty() {
            cm.metadata.labels = Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            );
        }
        cm
    }

    fn names(objs: &[Arc<ConfigMap>]) -> Vec<String> {
        objs.iter().map(|o| ObjectKey::of(&**o).to_string()).collect()
    }

    fn owned(uid: &str, controller: Option<bool>) -> ConfigMap {
        let mut c = cm("ns", &format!("child-{uid}-{controller:?}"), "1", &[]);
        c.metadata.owner_references = Some(vec![OwnerReference {
            uid: uid.into(),
            controller,
            ..Default::default()
        }]);
        c
    }

    #[test]
    fn object_key_display_parse_and_order() {
        let k = ObjectKey::new(Some("ns"), "a");
        assert_eq!(k.to_string(), "ns/a");
        assert_eq!("ns/a".parse::<ObjectKey>().unwrap(), k);
        assert_eq!("a".parse::<ObjectKey>().unwrap(), ObjectKey::new(None, "a"));
        assert_eq!("/a".parse::<ObjectKey>().unwrap(), ObjectKey::new(None, "a"));
        for bad in ["", "ns/", "a/b/c", "/"] {
            assert!(bad.parse::<ObjectKey>().is_err(), "{bad:?} should not parse");
        }
        assert!(ObjectKey::new(None, "z") < ObjectKey::new(Some("a"), "a"));
        let mut ns = Namespace::default();
        ns.metadata.name = Some("prod".into());
        assert_eq!(ObjectKey::of(&ns), ObjectKey::new(None, "prod"));
    }

    #[test]
    fn apply_get_delete_and_sorted_list() {
        let s = Store::<ConfigMap>::new();
        assert!(s.apply(cm("b", "x", "1", &[])).is_none());
        assert!(s.apply(cm("a", "y", "1", &[])).is_none());
        assert!(s.apply(cm("", "z", "1", &[])).is_none());
        let prev = s.apply(cm("b", "x", "2", &[])).unwrap();
        assert_eq!(prev.metadata.resource_version.as_deref(), Some("1"));
        assert_eq!(names(&s.list()), ["z", "a/y", "b/x"]);
        assert_eq!(s.len(), 3);
        let k = ObjectKey::new(Some("b"), "x");
        assert_eq!(s.get(&k).unwrap().metadata.resource_version.as_deref(), Some("2"));
        assert!(s.delete(&k).is_some());
        assert!(s.delete(&k).is_none());
        assert!(s.get(&k).is_none());
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn builtin_indexes_follow_updates_and_deletes() {
        let s = Store::<ConfigMap>::new();
        s.apply(cm("ns1", "a", "1", &[("app", "web"), ("tier", "fe")]));
        s.apply(cm("ns2", "b", "1", &[("app", "web")]));
        assert_eq!(names(&s.by_index(LABEL_INDEX, "app=web")), ["ns1/a", "ns2/b"]);
        assert_eq!(s.index_values(NAMESPACE_INDEX), ["ns1", "ns2"]);
        assert_eq!(s.index_values(LABEL_INDEX), ["app=web", "tier=fe"]);
        // relabel a: it leaves the old values and joins the new one
        s.apply(cm("ns1", "a", "2", &[("app", "db")]));
        assert_eq!(names(&s.by_index(LABEL_INDEX, "app=web")), ["ns2/b"]);
        assert_eq!(names(&s.by_index(LABEL_INDEX, "app=db")), ["ns1/a"]);
        assert!(s.by_index(LABEL_INDEX, "tier=fe").is_empty());
        assert_eq!(s.index_values(LABEL_INDEX), ["app=db", "app=web"]);
        // the index returns the current object, not a stale copy
        assert_eq!(
            s.by_index(LABEL_INDEX, "app=db")[0]
                .metadata
                .resource_version
                .as_deref(),
            Some("2")
        );
        s.delete(&ObjectKey::new(Some("ns2"), "b"));
        assert!(s.by_index(LABEL_INDEX, "app=web").is_empty());
        assert_eq!(s.index_values(NAMESPACE_INDEX), ["ns1"]);
        assert!(s.by_index("nope", "x").is_empty());
        assert!(s.index_values("nope").is_empty());
    }

    #[test]
    fn owner_index_uses_only_the_controller_reference() {
        let s = Store::<ConfigMap>::new();
        s.apply(owned("u1", Some(true)));
        s.apply(owned("u1", Some(false)));
        s.apply(owned("u1", None));
        s.apply(owned("u2", Some(true)));
        assert_eq!(s.by_index(OWNER_INDEX, "u1").len(), 1);
        assert_eq!(s.index_values(OWNER_INDEX), ["u1", "u2"]);
    }

    #[test]
    fn cluster_scoped_objects_have_no_namespace_entry() {
        let s = Store::<Namespace>::new();
        let mut ns = Namespace::default();
        ns.metadata.name = Some("prod".into());
        s.apply(ns);
        assert!(s.index_values(NAMESPACE_INDEX).is_empty());
        assert!(s.lister().get(None, "prod").is_some());
    }

    #[test]
    fn add_indexer_indexes_existing_and_later_objects_and_can_replace() {
        let s = Store::<ConfigMap>::new();
        s.apply(cm("ns", "a", "1", &[]));
        s.apply(cm("ns", "bb", "1", &[]));
        let name_len = |c: &ConfigMap| vec![c.metadata.name.as_ref().map_or(0, |n| n.len()).to_string()];
        s.add_indexer("len", name_len);
        assert_eq!(names(&s.by_index("len", "1")), ["ns/a"]);
        s.apply(cm("ns", "c", "1", &[]));
        assert_eq!(names(&s.by_index("len", "1")), ["ns/a", "ns/c"]);
        s.delete(&ObjectKey::new(Some("ns"), "a"));
        assert_eq!(names(&s.by_index("len", "1")), ["ns/c"]);
        // duplicates from an index fn are filed once
        s.add_indexer("dup", |_: &ConfigMap| vec!["x".into(), "x".into()]);
        assert_eq!(s.by_index("dup", "x").len(), 2);
        // replacing an index rebuilds it from scratch
        s.add_indexer("len", |_: &ConfigMap| vec!["same".into()]);
        assert!(s.by_index("len", "1").is_empty());
        assert_eq!(s.by_index("len", "same").len(), 2);
        assert_eq!(s.index_names(), ["namespace", "label", "owner", "len", "dup"]);
        // replace() keeps custom indexes
        s.replace(vec![cm("ns", "q", "1", &[])]);
        assert_eq!(names(&s.by_index("len", "same")), ["ns/q"]);
    }

    #[test]
    fn replace_reports_only_real_changes() {
        let s = Store::<ConfigMap>::new();
        let r = s.replace(vec![
            cm("ns", "a", "1", &[]),
            cm("ns", "b", "1", &[]),
            cm("ns", "c", "1", &[]),
        ]);
        assert_eq!(names(&r.added), ["ns/a", "ns/b", "ns/c"]);
        assert!(r.updated.is_empty() && r.deleted.is_empty());

        // relist after a 410: a unchanged, b updated, c deleted, d added
        let r = s.replace(vec![
            cm("ns", "d", "5", &[]),
            cm("ns", "b", "4", &[]),
            cm("ns", "a", "1", &[]),
        ]);
        assert_eq!(names(&r.added), ["ns/d"]);
        assert_eq!(r.updated.len(), 1);
        let (old, new) = &r.updated[0];
        assert_eq!(old.metadata.resource_version.as_deref(), Some("1"));
        assert_eq!(new.metadata.resource_version.as_deref(), Some("4"));
        assert_eq!(names(&r.deleted), ["ns/c"]);
        assert_eq!(r.deleted[0].metadata.resource_version.as_deref(), Some("1"));
        assert_eq!(names(&s.list()), ["ns/a", "ns/b", "ns/d"]);

        // identical relist: nothing to report
        assert!(
            s.replace(vec![
                cm("ns", "a", "1", &[]),
                cm("ns", "b", "4", &[]),
                cm("ns", "d", "5", &[])
            ])
            .is_empty()
        );

        // missing resourceVersions prove nothing: reported as updated
        s.replace(vec![cm("ns", "x", "", &[])]);
        let r = s.replace(vec![cm("ns", "x", "", &[])]);
        assert_eq!(r.updated.len(), 1);

        // duplicate keys: last wins
        let r = s.replace(vec![cm("ns", "x", "1", &[]), cm("ns", "x", "2", &[])]);
        assert_eq!(r.updated[0].1.metadata.resource_version.as_deref(), Some("2"));
        assert_eq!(s.len(), 1);

        // empty relist deletes everything
        let r = s.replace(vec![]);
        assert_eq!(names(&r.deleted), ["ns/x"]);
        assert!(s.is_empty());
    }

    #[test]
    fn replace_rebuilds_indexes() {
        let s = Store::<ConfigMap>::new();
        s.apply(cm("ns", "a", "1", &[("app", "web")]));
        s.replace(vec![cm("ns", "b", "1", &[("app", "db")])]);
        assert!(s.by_index(LABEL_INDEX, "app=web").is_empty());
        assert_eq!(names(&s.by_index(LABEL_INDEX, "app=db")), ["ns/b"]);
        assert_eq!(s.index_values(LABEL_INDEX), ["app=db"]);
    }

    #[test]
    fn panicking_index_fn_leaves_the_store_usable() {
        let s = Store::<ConfigMap>::new();
        s.apply(cm("ns", "a", "1", &[]));
        let s2 = s.clone();
        let r = std::thread::spawn(move || {
            s2.add_indexer("boom", |c: &ConfigMap| {
                if c.metadata.name.as_deref() == Some("a") {
                    panic!("index fn failed")
                }
                vec![]
            })
        })
        .join();
        assert!(r.is_err());
        assert_eq!(s.len(), 1);
        assert!(!s.index_names().contains(&"boom".to_string()));
        s.apply(cm("ns", "b", "1", &[("app", "x")]));
        assert_eq!(s.by_index(LABEL_INDEX, "app=x").len(), 1);
    }

    #[test]
    fn readers_see_consistent_snapshots_while_a_writer_applies() {
        let s = Store::<ConfigMap>::new();
        let done = Arc::new(AtomicBool::new(false));
        let reads = Arc::new(AtomicUsize::new(0));
        let readers: Vec<_> = (0..4)
            .map(|_| {
                let (s, done, reads) = (s.clone(), done.clone(), reads.clone());
                std::thread::spawn(move || {
                    let lister = s.lister();
                    while !done.load(Ordering::Relaxed) {
                        let all = lister.list();
                        let keys: Vec<ObjectKey> = all.iter().map(|o| ObjectKey::of(&**o)).collect();
                        assert!(keys.windows(2).all(|w| w[0] < w[1]), "list not sorted/unique");
                        for generation in ["even", "odd"] {
                            for o in s.by_index(LABEL_INDEX, &format!("gen={generation}")) {
                                let labels = o.metadata.labels.as_ref().expect("indexed object has labels");
                                assert_eq!(
                                    labels.get("gen").map(String::as_str),
                                    Some(generation),
                                    "stale index entry"
                                );
                            }
                        }
                        let sel = lister.list_selector("gen in (even)").expect("valid selector");
                        assert!(
                            sel.iter().all(|o| o
                                .metadata
                                .labels
                                .as_ref()
                                .is_some_and(|l| l["gen"] == "even"))
                        );
                        reads.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for i in 0..3000 {
            let parity = if i % 2 == 0 { "even" } else { "odd" };
            s.apply(cm(
                "ns",
                &format!("o{}", i % 50),
                &i.to_string(),
                &[("gen", parity)],
            ));
            if i % 7 == 0 {
                s.delete(&ObjectKey::new(Some("ns"), &format!("o{}", (i + 3) % 50)));
            }
            if i % 500 == 0 {
                s.replace(s.list().iter().map(|o| (**o).clone()).collect());
            }
        }
        done.store(true, Ordering::Relaxed);
        for r in readers {
            r.join().expect("reader panicked");
        }
        assert!(reads.load(Ordering::Relaxed) > 0);
        // final index state matches the objects exactly
        let even = s
            .list()
            .iter()
            .filter(|o| o.metadata.labels.as_ref().is_some_and(|l| l["gen"] == "even"))
            .count();
        assert_eq!(s.by_index(LABEL_INDEX, "gen=even").len(), even);
        assert_eq!(s.by_index(LABEL_INDEX, "gen=odd").len() + even, s.len());
    }

    #[test]
    fn concurrent_add_indexer_and_writes_lose_nothing() {
        let s = Store::<ConfigMap>::new();
        let writer = {
            let s = s.clone();
            std::thread::spawn(move || {
                for i in 0..2000 {
                    s.apply(cm("ns", &format!("o{i}"), "1", &[]));
                }
            })
        };
        // two threads register indexers at once: none may be lost or misaligned
        let other = {
            let s = s.clone();
            std::thread::spawn(move || {
                for n in 20..40 {
                    s.add_indexer(&format!("idx{n}"), |_: &ConfigMap| vec!["all".into()]);
                }
            })
        };
        for n in 0..20 {
            s.add_indexer(&format!("idx{n}"), |_: &ConfigMap| vec!["all".into()]);
        }
        writer.join().expect("writer panicked");
        other.join().expect("indexer thread panicked");
        assert_eq!(s.index_names().len(), 43);
        for n in 0..40 {
            assert_eq!(
                s.by_index(&format!("idx{n}"), "all").len(),
                2000,
                "index idx{n} incomplete"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn wait_synced_times_out_on_the_paused_clock() {
        let s = Store::<ConfigMap>::new();
        let start = tokio::time::Instant::now();
        let err = s.wait_synced(Duration::from_secs(120)).await.unwrap_err();
        assert_eq!(err.timeout, Duration::from_secs(120));
        assert_eq!(start.elapsed(), Duration::from_secs(120));
    }

    #[tokio::test(start_paused = true)]
    async fn wait_synced_returns_when_marked() {
        let s = Store::<ConfigMap>::new();
        let w = s.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(10)).await;
            w.mark_synced();
        });
        let start = tokio::time::Instant::now();
        s.wait_synced(Duration::from_secs(120)).await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_secs(10));
        assert!(s.has_synced());
        // already synced: returns at once
        s.wait_synced(Duration::ZERO).await.unwrap();
    }

    #[test]
    fn lister_namespaces_and_selectors() {
        let s = Store::<ConfigMap>::new();
        s.apply(cm("a", "x", "1", &[("app", "web"), ("tier", "fe")]));
        s.apply(cm("a", "y", "1", &[("app", "db")]));
        s.apply(cm("ab", "z", "1", &[("app", "web")]));
        s.apply(cm("", "c", "1", &[]));
        let l = s.lister();
        assert_eq!(names(&l.list_namespace("a")), ["a/x", "a/y"]);
        assert_eq!(names(&l.list_namespace("ab")), ["ab/z"]);
        assert!(l.list_namespace("b").is_empty());
        assert_eq!(l.list_namespace("").len(), 4);
        let sel = |q: &str| names(&l.list_selector(q).unwrap());
        assert_eq!(sel("app=web"), ["a/x", "ab/z"]);
        assert_eq!(sel("app==web,tier"), ["a/x"]);
        assert_eq!(sel("app!=web"), ["c", "a/y"]);
        assert_eq!(sel("app in (db, web),!tier"), ["a/y", "ab/z"]);
        assert_eq!(sel("app notin (web)"), ["c", "a/y"]);
        assert_eq!(sel(""), ["c", "a/x", "a/y", "ab/z"]);
        assert_eq!(
            names(&l.list_namespace_selector("a", "app=web").unwrap()),
            ["a/x"]
        );
        assert_eq!(l.by_index(NAMESPACE_INDEX, "ab").len(), 1);
        assert!(l.get(Some("a"), "x").is_some() && l.get(None, "x").is_none());
    }

    #[test]
    fn selector_parser_accepts_kubectl_syntax() {
        let ok = |q: &str| {
            parse_selector(q)
                .unwrap_or_else(|e| panic!("{q}: {e}"))
                .to_string()
        };
        assert_eq!(ok("a=b"), "a=b");
        assert_eq!(ok(" a == b , c != d "), "a=b,c!=d");
        assert_eq!(ok("a in (x,y),b notin(z)"), "a in (x,y),b notin (z)");
        assert_eq!(ok("app.kubernetes.io/name=db,!x"), "app.kubernetes.io/name=db,!x");
        assert_eq!(ok("a="), "a=");
        assert_eq!(ok("a in (x,)"), "a in (,x)");
        assert_eq!(ok("in"), "in");
        // apimachinery's parseIdentifiersList: `()` is {""}, and a comma after a comma is
        // taken with it as one empty value, so `(x,,)` ends on a stray ')' (fuzz/ selector).
        assert_eq!(ok("a in ()"), "a in ()");
        assert_eq!(ok("a in (x,,y)"), "a in (,x,y)");
        assert_eq!(ok("a in (x,,,)"), "a in (,x)");
        assert_eq!(ok("a in (,)"), "a in ()");
        for bad in [
            "a in x",
            "a in (x,,)",
            "a in (,,)",
            "a in (x y)",
            "a in (x",
            "a>1",
            "a<1",
            ",",
            "a,",
            "=b",
            "a=b=c",
            "a b",
            "-a=b",
            "a=b-",
            "Bad_Prefix/x=1",
            "a/b/c",
            "a=(",
            "!",
            "a notin",
            "é=1",
            // Not whitespace to the server's lexer (found by fuzz/ selector).
            "\u{b}\u{b}",
            "a=b\u{c}",
        ] {
            assert!(parse_selector(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(parse_selector(" a = b ,\tc\r\n").is_ok());
        let e = parse_selector("a>1").unwrap_err();
        assert_eq!(e.pos, 1);
    }
}
