//! The object store: every object by resource and key, one increasing revision across all of
//! them (as etcd gives), a bounded history of changes per resource for watches and consistent
//! paging (sized like the real server's watch cache, see [`ResourceHistory`]), and the fan-out
//! of new changes to watchers, and lists a page at a time from any kept revision.
//!
//! Objects are kept as their compact JSON text ([`Stored`], about 1.2 to 1.7 times the JSON
//! per object with everything the store keeps for it, where parsed `Value`s took 2.5 to 8.5
//! times) and parsed when read; a parsed object is shared while anyone holds it.
//!
//! A page of a list costs what the page holds, not what the resource holds: it starts at its
//! continue key in the ordered map, reads an older revision through an overlay of the changes
//! made since (history, not a copy of the resource), stops after one more match than it
//! returns, and counts what is left from the count the previous page left behind.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::broadcast;

use crate::registry::GroupResource;

/// `(namespace, name)`; the namespace is empty for cluster-scoped objects.
pub type ObjKey = (String, String);

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// Created.
    Added,
    /// Changed.
    Modified,
    /// Removed.
    Deleted,
}

impl EventType {
    /// The watch event type string.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// An object as the store keeps it: its compact JSON text and its resourceVersion, parsed
/// again when read.
///
/// A parsed `serde_json::Value` costs 2.5 to 8 times its JSON (every map entry is about 112
/// bytes plus its key's allocation, and managedFields are a tree of tiny maps), so holding
/// the text keeps a stored object within about twice its JSON. The text is also what the
/// state file and lists write. While anyone holds the parsed value, readers share it (a
/// change fanned out to many watchers and handlers is parsed once, not once each).
pub struct Stored {
    text: Box<str>,
    rv: u64,
    parsed: Mutex<Parse>,
}

/// A stored object's parse: shared while a reader holds it, or kept for the object's life
/// (see [`Stored::value_kept`]).
enum Parse {
    Shared(Weak<Value>),
    Kept(Arc<Value>),
}

impl Stored {
    /// The stored form of `obj`, sharing `obj` with readers while its writer holds it.
    fn new(obj: &Arc<Value>) -> Arc<Stored> {
        Arc::new(Stored {
            text: to_text(obj),
            rv: rv_of(obj),
            parsed: Mutex::new(Parse::Shared(Arc::downgrade(obj))),
        })
    }

    /// The stored form of `obj`, parsed again on first read.
    fn from_value(obj: &Value) -> Arc<Stored> {
        Arc::new(Stored {
            text: to_text(obj),
            rv: rv_of(obj),
            parsed: Mutex::new(Parse::Shared(Weak::new())),
        })
    }

    /// The object as compact JSON (the bytes serializing its value gives).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Its encoded JSON length.
    pub fn size(&self) -> usize {
        self.text.len()
    }

    /// Its resourceVersion as a number (0 when missing or not a number).
    pub fn rv(&self) -> u64 {
        self.rv
    }

    /// The object, parsed (or shared with whoever still holds it parsed).
    pub fn value(&self) -> Arc<Value> {
        self.parse(false)
    }

    /// The object, parsed, and kept parsed as long as this version is stored: for readers
    /// that come back to the same objects again and again (the workload simulator lists all
    /// Pods, Nodes and ReplicaSets on every step; parsing them each time made it quadratic).
    pub fn value_kept(&self) -> Arc<Value> {
        self.parse(true)
    }

    fn parse(&self, keep: bool) -> Arc<Value> {
        // Parsing under the lock: readers of the same object at once share one parse.
        let mut parsed = self.parsed.lock().unwrap_or_else(|p| p.into_inner());
        let have = match &*parsed {
            Parse::Kept(v) => return Arc::clone(v),
            Parse::Shared(w) => w.upgrade(),
        };
        if let Some(v) = have {
            if keep {
                *parsed = Parse::Kept(Arc::clone(&v));
            }
            return v;
        }
        // The text is serde_json's own output for a `Value`, so it parses back (at any depth:
        // no recursion limit); a failure would be a serde_json bug, reported, not a panic.
        let v = Arc::new(
            crate::decode::from_slice_deep::<Value>(self.text.as_bytes()).unwrap_or_else(|e| {
                tracing::error!("a stored object does not parse again: {e}");
                Value::Null
            }),
        );
        *parsed = if keep {
            Parse::Kept(Arc::clone(&v))
        } else {
            Parse::Shared(Arc::downgrade(&v))
        };
        v
    }
}

impl std::fmt::Debug for Stored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// An object read back (from a state file) in its stored form, with what the store indexes it
/// by, ready for [`Store::load_stored`].
#[derive(Debug)]
pub struct LoadedObject {
    /// Its resource.
    pub gr: GroupResource,
    /// Its key.
    pub key: ObjKey,
    /// Its uid, if it has one.
    pub uid: Option<String>,
    /// The object.
    pub stored: Arc<Stored>,
}

impl LoadedObject {
    /// `obj` of resource `gr`, stored (`obj` itself can go right after).
    pub fn new(gr: GroupResource, obj: &Value) -> Self {
        LoadedObject {
            gr,
            key: key_of(obj),
            uid: uid_of(obj),
            stored: Stored::from_value(obj),
        }
    }
}

/// `obj` as compact JSON.
fn to_text(obj: &Value) -> Box<str> {
    // Writing a Value into a String cannot fail (its map keys are strings).
    serde_json::to_string(obj).unwrap_or_default().into_boxed_str()
}

/// One change, as kept in history and sent to watchers.
#[derive(Debug)]
pub struct Event {
    /// The revision the change created.
    pub rev: u64,
    /// Which resource changed.
    pub gr: GroupResource,
    /// What happened.
    pub kind: EventType,
    /// The changed object's key.
    pub key: ObjKey,
    /// The object after the change (for a delete: the last state, with the delete's revision).
    pub object: Arc<Stored>,
    /// The object before the change, for updates and deletes.
    pub prev: Option<Arc<Stored>>,
    /// The object's encoded JSON length: what history's byte limit counts.
    pub size: usize,
    /// The encoded watch lines of this change, shared by every watcher that renders it the
    /// same way while any of them still holds one (so it is encoded once, not per watcher).
    pub lines: crate::watch::LineCache,
}

/// A subscription to every future change.
pub type Subscription = broadcast::Receiver<Arc<Event>>;

/// Changes after a revision still in history, the newest revision, and a subscription for
/// what comes next.
pub type Replay = (Vec<Arc<Event>>, u64, Subscription);

/// The requested revision is older than the kept history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compacted {
    /// The revision asked for.
    pub requested: u64,
    /// The oldest revision a watch or list can still start from (what the real watch cache
    /// reports as `oldest-1` in `too old resource version: X (Y)`).
    pub oldest: u64,
}

/// A write lost a race with another write (the stored resourceVersion moved on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteError {
    /// The object exists already (create).
    Exists,
    /// The object does not exist (update, delete).
    Missing,
    /// The object's revision is not the expected one.
    Stale,
}

#[derive(Default)]
struct Inner {
    rev: u64,
    /// Changes up to this revision are durable and have been sent to watchers.
    published: u64,
    /// With a state file: committed changes waiting to be on disk before watchers see them.
    pending: VecDeque<Arc<Event>>,
    objects: BTreeMap<GroupResource, BTreeMap<ObjKey, Arc<Stored>>>,
    /// How many objects each namespace of each resource holds, so a page of a namespaced list
    /// knows the total without counting (kept with `objects` by `put` and `take`).
    ns_counts: HashMap<GroupResource, HashMap<String, usize>>,
    /// What the pages handed out recently left to list, so the next page need not count.
    cursors: Cursors,
    uids: HashMap<String, (GroupResource, ObjKey)>,
    /// Each resource's own history, as the real server keeps one watch cache per resource (so
    /// a busy resource does not push out the history of a quiet one).
    histories: BTreeMap<GroupResource, ResourceHistory>,
    /// What the object versions all histories keep alive cost.
    history_bytes: HistoryBytes,
    /// Where a resource's history starts when it has none yet: the revision the server started
    /// at (or was compacted at). Like the real watch cache, which starts empty at its initial
    /// LIST's revision, nothing from before it can be watched.
    floor: u64,
}

/// How far changes are on disk (without a state file: everything committed).
#[derive(Debug, Clone, Default)]
pub struct Durable {
    /// Every change up to this revision is durable.
    pub rev: u64,
    /// Why the newest changes cannot be written, while that lasts.
    pub error: Option<String>,
}

/// Writing a change to the state file failed: it was not acknowledged.
#[derive(Debug, Clone, thiserror::Error)]
#[error("storage error: {0}")]
pub struct NotDurable(pub String);

/// The store. Cheap to share behind an `Arc`.
pub struct Store {
    inner: Mutex<Inner>,
    /// The state file's writer, when there is one.
    journal: std::sync::OnceLock<crate::state::StateDb>,
    durable: tokio::sync::watch::Sender<Durable>,
    events: broadcast::Sender<Arc<Event>>,
    /// Each resource's history capacity bounds: (lower, upper).
    window: (usize, usize),
    /// History's byte limit over all resources (see [`HistoryBytes`]).
    window_bytes: usize,
    buffer: usize,
    /// Map entries every list page has looked at, ever (see [`Store::list_visits`]).
    visits: AtomicU64,
}

/// The object's resourceVersion as a number (0 when missing or not a number).
pub fn rv_of(obj: &Value) -> u64 {
    obj.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn uid_of(obj: &Value) -> Option<String> {
    obj.pointer("/metadata/uid")
        .and_then(Value::as_str)
        .map(String::from)
}

/// The `(namespace, name)` key of an object.
pub fn key_of(obj: &Value) -> ObjKey {
    let s = |p: &str| {
        obj.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    (s("/metadata/namespace"), s("/metadata/name"))
}

impl Store {
    /// An empty store keeping at most `window` changes of history per resource (see
    /// [`ResourceHistory`] for how much below that it keeps) and buffering `watch_buffer`
    /// undelivered changes per watcher before closing a watcher that fell behind.
    pub fn new(window: usize, watch_buffer: usize) -> Self {
        let upper = window.max(1);
        let buffer = watch_buffer.max(16);
        let (events, _) = broadcast::channel(buffer);
        Store {
            inner: Mutex::new(Inner {
                rev: 1,
                published: 1,
                ..Default::default()
            }),
            journal: std::sync::OnceLock::new(),
            durable: tokio::sync::watch::Sender::new(Durable { rev: 1, error: None }),
            events,
            window: (upper.min(LOWER_BOUND_CAPACITY), upper),
            window_bytes: DEFAULT_HISTORY_BYTES,
            buffer,
            visits: AtomicU64::new(0),
        }
    }

    /// How many undelivered changes a watcher may have queued before it is closed.
    pub fn watch_buffer(&self) -> usize {
        self.buffer
    }

    /// Keep at most `bytes` of object versions in history (see [`HistoryBytes`]); older
    /// changes are compacted as by the count limit.
    pub fn with_history_bytes(mut self, bytes: usize) -> Self {
        self.window_bytes = bytes;
        self
    }

    /// The bytes of object versions history keeps alive now, and how many changes it holds
    /// (over all resources).
    pub fn history_usage(&self) -> (usize, usize) {
        let inner = self.lock();
        let kept = inner.histories.values().map(|h| h.events.len()).sum();
        (inner.history_bytes.total, kept)
    }

    /// One resource's history now: how many changes it holds, and its capacity (which grows
    /// and shrinks as the real watch cache's does).
    pub fn history_of(&self, gr: &GroupResource) -> (usize, usize) {
        let inner = self.lock();
        inner
            .histories
            .get(gr)
            .map_or((0, self.window.0), |h| (h.events.len(), h.capacity))
    }

    /// The oldest revision a watch or paged list of `gr` can still start from.
    pub fn oldest_in(&self, gr: &GroupResource) -> u64 {
        let inner = self.lock();
        inner.histories.get(gr).map_or(inner.floor, |h| h.compacted)
    }

    /// Up to `max` published changes of `gr` after revision `from`, for a watcher catching up
    /// from history a chunk at a time (so it never pins more than a chunk of old versions).
    /// When these reach the newest published change, also a subscription that continues right
    /// after them. `from` older than the resource's history is [`Compacted`] (410 Gone).
    pub fn catch_up_in(
        &self,
        gr: &GroupResource,
        from: u64,
        max: usize,
    ) -> Result<(Vec<Arc<Event>>, Option<Subscription>), Compacted> {
        let inner = self.lock();
        let published = inner.published;
        let (chunk, caught_up) = match inner.histories.get(gr) {
            Some(h) => {
                let mut rest = h.since(from)?.take_while(|e| e.rev <= published);
                let chunk: Vec<Arc<Event>> = rest.by_ref().take(max.max(1)).cloned().collect();
                (chunk, rest.next().is_none())
            }
            None if from < inner.floor => {
                return Err(Compacted {
                    requested: from,
                    oldest: inner.floor,
                });
            }
            None => (vec![], true),
        };
        // Subscribing under the lock: the next published change is the first one received.
        Ok((chunk, caught_up.then(|| self.events.subscribe())))
    }

    /// Every resource's published changes after `from`, merged in revision order (for
    /// [`Store::catch_up`] and [`Store::history_and_subscribe`], which are not per resource).
    fn merged_since(inner: &Inner, from: u64) -> Result<Vec<Arc<Event>>, Compacted> {
        let oldest = inner
            .histories
            .values()
            .map(|h| h.compacted)
            .fold(inner.floor, u64::max);
        if from < oldest {
            return Err(Compacted {
                requested: from,
                oldest,
            });
        }
        let published = inner.published;
        let mut all: Vec<Arc<Event>> = vec![];
        for h in inner.histories.values() {
            all.extend(h.since(from)?.take_while(|e| e.rev <= published).cloned());
        }
        all.sort_by_key(|e| e.rev);
        Ok(all)
    }

    /// Up to `max` published changes of every resource after revision `from` (the newest
    /// start of any resource's history bounds it; a watcher of one resource uses
    /// [`Store::catch_up_in`]). When these reach the newest published change, also a
    /// subscription that continues right after them.
    pub fn catch_up(
        &self,
        from: u64,
        max: usize,
    ) -> Result<(Vec<Arc<Event>>, Option<Subscription>), Compacted> {
        let inner = self.lock();
        let mut chunk = Self::merged_since(&inner, from)?;
        let caught_up = chunk.len() <= max.max(1);
        chunk.truncate(max.max(1));
        // Subscribing under the lock: the next published change is the first one received.
        Ok((chunk, caught_up.then(|| self.events.subscribe())))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the maps consistent (every mutation is a
        // single insert or remove), so a poisoned lock is still safe to use.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The newest revision.
    pub fn revision(&self) -> u64 {
        self.lock().rev
    }

    /// The oldest revision a watch or paged list of every resource can still start from
    /// (each resource's own is [`Store::oldest_in`]).
    pub fn oldest(&self) -> u64 {
        let inner = self.lock();
        inner
            .histories
            .values()
            .map(|h| h.compacted)
            .fold(inner.floor, u64::max)
    }

    /// One object.
    pub fn get(&self, gr: &GroupResource, key: &ObjKey) -> Option<Arc<Value>> {
        Some(self.get_stored(gr, key)?.value())
    }

    /// One object as stored (parsed only when read).
    pub fn get_stored(&self, gr: &GroupResource, key: &ObjKey) -> Option<Arc<Stored>> {
        self.lock().objects.get(gr).and_then(|m| m.get(key)).cloned()
    }

    /// The resource and key of the object with this uid.
    pub fn by_uid(&self, uid: &str) -> Option<(GroupResource, Arc<Value>)> {
        let (gr, obj) = {
            let inner = self.lock();
            let (gr, key) = inner.uids.get(uid)?;
            (gr.clone(), inner.objects.get(gr)?.get(key)?.clone())
        };
        Some((gr, obj.value()))
    }

    /// Every object of a resource (in one namespace, or all), sorted by key, and the revision
    /// of that snapshot. The server's own components read through this (the workload
    /// simulator, RBAC's index, namespace and CRD cleanup, Service IP allocation) and come back
    /// to the same objects, so what it returns stays parsed while stored
    /// ([`Stored::value_kept`]); clients' lists and watches use the text.
    pub fn list(&self, gr: &GroupResource, ns: Option<&str>) -> (Vec<Arc<Value>>, u64) {
        let (stored, rev) = {
            let inner = self.lock();
            (Self::collect(&inner.objects, gr, ns), inner.rev)
        };
        (stored.iter().map(|s| s.value_kept()).collect(), rev)
    }

    /// [`Store::list`] as stored (nothing parsed).
    pub fn list_stored(&self, gr: &GroupResource, ns: Option<&str>) -> (Vec<Arc<Stored>>, u64) {
        let inner = self.lock();
        (Self::collect(&inner.objects, gr, ns), inner.rev)
    }

    fn collect(
        objects: &BTreeMap<GroupResource, BTreeMap<ObjKey, Arc<Stored>>>,
        gr: &GroupResource,
        ns: Option<&str>,
    ) -> Vec<Arc<Stored>> {
        let Some(m) = objects.get(gr) else { return vec![] };
        match ns {
            Some(ns) => m
                .range((ns.to_string(), String::new())..)
                .take_while(|((n, _), _)| n == ns)
                .map(|(_, v)| v.clone())
                .collect(),
            None => m.values().cloned().collect(),
        }
    }

    /// The objects of a resource as they were at revision `rev`, rebuilt from history.
    pub fn list_at(
        &self,
        gr: &GroupResource,
        ns: Option<&str>,
        rev: u64,
    ) -> Result<Vec<Arc<Value>>, Compacted> {
        Ok(self
            .list_at_stored(gr, ns, rev)?
            .iter()
            .map(|s| s.value())
            .collect())
    }

    /// [`Store::list_at`] as stored (nothing parsed).
    pub fn list_at_stored(
        &self,
        gr: &GroupResource,
        ns: Option<&str>,
        rev: u64,
    ) -> Result<Vec<Arc<Stored>>, Compacted> {
        let query = PageQuery {
            ns,
            at: Some(rev),
            ..PageQuery::default()
        };
        Ok(self.list_page_stored(gr, &query, &mut |_| true)?.items)
    }

    /// One page of a list: up to `query.limit` objects that `keep` accepts, in key order,
    /// after `query.after`, as they were at `query.at` (the newest revision when `None`).
    ///
    /// It visits the entries from the start key on, and no further than one match past the
    /// page (to know whether more follow), plus the changes history holds after an older
    /// revision; `keep` runs under the store's lock. A revision older than history is
    /// [`Compacted`].
    ///
    /// ```
    /// # use crwatch_apiserver::registry::GroupResource;
    /// # use crwatch_apiserver::store::{PageQuery, Store};
    /// let store = Store::new(100, 100);
    /// let gr = GroupResource { group: "".into(), resource: "configmaps".into() };
    /// for name in ["a", "b", "c"] {
    ///     let cm = serde_json::json!({"metadata": {"namespace": "ns", "name": name}});
    ///     store.create(&gr, cm).unwrap();
    /// }
    /// let first = store
    ///     .list_page(&gr, &PageQuery { limit: 2, count_remaining: true, ..Default::default() }, &mut |_| true)
    ///     .unwrap();
    /// assert_eq!((first.items.len(), first.more, first.remaining), (2, true, Some(1)));
    /// let after = first.last_key().unwrap();
    /// let query = PageQuery { at: Some(first.rev), after: Some(&after), limit: 2, ..Default::default() };
    /// let second = store.list_page(&gr, &query, &mut |_| true).unwrap();
    /// assert_eq!((second.items.len(), second.more), (1, false));
    /// ```
    pub fn list_page(
        &self,
        gr: &GroupResource,
        query: &PageQuery<'_>,
        keep: &mut dyn FnMut(&Value) -> bool,
    ) -> Result<Page, Compacted> {
        let mut parsed = vec![];
        let page = self.list_page_stored(gr, query, &mut |s| {
            let v = s.value();
            let kept = keep(&v);
            if kept {
                parsed.push(v);
            }
            kept
        })?;
        // `keep` also saw the match after a full page.
        parsed.truncate(page.items.len());
        Ok(Page {
            items: parsed,
            rev: page.rev,
            more: page.more,
            remaining: page.remaining,
            visited: page.visited,
            last: page.last,
        })
    }

    /// [`Store::list_page`] on the stored objects: nothing is parsed unless `keep` does, and
    /// the page holds the objects as stored.
    pub fn list_page_stored(
        &self,
        gr: &GroupResource,
        query: &PageQuery<'_>,
        keep: &mut dyn FnMut(&Stored) -> bool,
    ) -> Result<Page<Arc<Stored>>, Compacted> {
        let mut inner = self.lock();
        let newest = inner.rev;
        let rev = query.at.unwrap_or(newest);
        let overlay = Self::overlay(&inner, gr, query.ns, rev)?;
        let mut visited = 0usize;
        let mut items = vec![];
        let mut more = false;
        let last = {
            let entries = Self::entries_at(&inner, gr, query.ns, query.after, &overlay, &mut visited);
            let mut last_key = None;
            for (k, v) in entries {
                if !keep(v) {
                    continue;
                }
                if query.limit > 0 && items.len() == query.limit {
                    more = true;
                    break;
                }
                items.push(v.clone());
                last_key = Some(k);
            }
            last_key.cloned()
        };
        let mut remaining = None;
        if more && query.count_remaining {
            let cursor = |after: Option<&ObjKey>| Cursor {
                gr: gr.clone(),
                ns: query.ns.map(str::to_string),
                rev,
                after: after.cloned(),
            };
            // A future revision (a made-up token) is no fixed state: nothing about it is kept.
            let cacheable = rev <= newest;
            let before = match inner.cursors.get(&cursor(query.after)).filter(|_| cacheable) {
                Some(n) => n,
                None => match query.after {
                    None => Self::total_at(&inner, gr, query.ns, &overlay),
                    // A token this server did not just hand out (or one it forgot): count.
                    Some(_) => {
                        Self::entries_at(&inner, gr, query.ns, query.after, &overlay, &mut visited).count()
                    }
                },
            };
            let left = before.saturating_sub(items.len());
            if cacheable && let Some(last) = &last {
                inner.cursors.put(cursor(Some(last)), left);
            }
            remaining = Some(left);
        }
        self.visits.fetch_add(visited as u64, Ordering::Relaxed);
        Ok(Page {
            items,
            rev,
            more,
            remaining,
            visited,
            last,
        })
    }

    /// Map entries list pages have looked at since the start (objects and changes from
    /// history), so tests can check that a page costs what it holds.
    pub fn list_visits(&self) -> u64 {
        self.visits.load(Ordering::Relaxed)
    }

    /// What differs at `rev` from the newest state, for the keys that changed since: the
    /// object they had then, or `None` when they did not exist. Empty at the newest revision.
    fn overlay(
        inner: &Inner,
        gr: &GroupResource,
        ns: Option<&str>,
        rev: u64,
    ) -> Result<BTreeMap<ObjKey, Option<Arc<Stored>>>, Compacted> {
        let mut overlay = BTreeMap::new();
        if rev >= inner.rev {
            return Ok(overlay);
        }
        let history = match inner.histories.get(gr) {
            Some(h) => h.since(rev)?,
            None if rev < inner.floor => {
                return Err(Compacted {
                    requested: rev,
                    oldest: inner.floor,
                });
            }
            // Nothing of this resource changed since then.
            None => return Ok(overlay),
        };
        // Newest first, so the oldest change after `rev` has the last word: its previous
        // state (or absence, for a create) is the state at `rev`.
        for ev in history.rev() {
            if ns.is_some_and(|ns| ev.key.0 != ns) {
                continue;
            }
            let key = ev.key.clone();
            match (&ev.kind, &ev.prev) {
                (EventType::Added, _) => {
                    overlay.insert(key, None);
                }
                (_, Some(prev)) => {
                    overlay.insert(key, Some(prev.clone()));
                }
                (_, None) => {}
            }
        }
        Ok(overlay)
    }

    /// The objects in scope at the revision `overlay` describes, in key order, after `after`;
    /// every map entry looked at counts in `visited`.
    fn entries_at<'a>(
        inner: &'a Inner,
        gr: &GroupResource,
        ns: Option<&'a str>,
        after: Option<&ObjKey>,
        overlay: &'a BTreeMap<ObjKey, Option<Arc<Stored>>>,
        visited: &'a mut usize,
    ) -> impl Iterator<Item = (&'a ObjKey, &'a Arc<Stored>)> + 'a {
        let lower = start_bound(ns, after);
        let in_scope = move |k: &&ObjKey| ns.is_none_or(|ns| k.0 == ns);
        let current = inner
            .objects
            .get(gr)
            .into_iter()
            .flat_map(move |m| m.range((lower.clone(), Bound::Unbounded)))
            .take_while(move |(k, _)| in_scope(k));
        let lower = start_bound(ns, after);
        let changed = overlay
            .range((lower, Bound::Unbounded))
            .take_while(move |(k, _)| in_scope(k));
        Merge {
            current: current.peekable(),
            changed: changed.peekable(),
            visited,
        }
    }

    /// How many objects are in scope at the revision `overlay` describes.
    fn total_at(
        inner: &Inner,
        gr: &GroupResource,
        ns: Option<&str>,
        overlay: &BTreeMap<ObjKey, Option<Arc<Stored>>>,
    ) -> usize {
        let now = match ns {
            None => inner.objects.get(gr).map_or(0, BTreeMap::len),
            Some(ns) => inner
                .ns_counts
                .get(gr)
                .and_then(|c| c.get(ns))
                .copied()
                .unwrap_or(0),
        };
        let current = inner.objects.get(gr);
        overlay.iter().fold(now, |n, (k, then)| {
            let exists_now = current.is_some_and(|m| m.contains_key(k));
            match (exists_now, then.is_some()) {
                (true, false) => n.saturating_sub(1),
                (false, true) => n + 1,
                _ => n,
            }
        })
    }

    fn commit(
        &self,
        inner: &mut Inner,
        gr: &GroupResource,
        kind: EventType,
        key: ObjKey,
        object: Arc<Stored>,
        prev: Option<Arc<Stored>>,
    ) {
        let ev = Arc::new(Event {
            rev: inner.rev,
            gr: gr.clone(),
            kind,
            key,
            size: object.size(),
            object,
            prev,
            lines: Default::default(),
        });
        inner.history_bytes.push(&ev);
        let (floor, (lower, upper)) = (inner.floor, self.window);
        let Inner {
            histories,
            history_bytes,
            ..
        } = inner;
        let history = histories
            .entry(gr.clone())
            .or_insert_with(|| ResourceHistory::new(floor, lower, upper));
        // Oldest first, by this resource's capacity; compacted revisions get 410 Gone.
        for old in history.push(ev.clone(), Instant::now()) {
            history_bytes.evict(&old);
        }
        // And by bytes over all resources: the oldest change of any resource goes first.
        while history_bytes.total > self.window_bytes {
            let oldest = histories
                .values_mut()
                .filter(|h| !h.events.is_empty())
                .min_by_key(|h| h.events.front().map_or(u64::MAX, |e| e.event.rev));
            let Some(old) = oldest.and_then(ResourceHistory::pop_oldest) else {
                break;
            };
            history_bytes.evict(&old);
        }
        match self.journal.get() {
            // Watchers see the change once it is on disk (`publish`), so no client ever sees a
            // change, or a revision, that a crash could take back.
            Some(journal) => {
                let key = ev.key.clone();
                journal.send(match kind {
                    EventType::Deleted => crate::state::Record::Delete {
                        rev: ev.rev,
                        gr: gr.clone(),
                        key,
                    },
                    _ => crate::state::Record::Put {
                        rev: ev.rev,
                        gr: gr.clone(),
                        key,
                        object: ev.object.clone(),
                    },
                });
                inner.pending.push_back(ev);
            }
            None => {
                inner.published = ev.rev;
                // No receivers is fine: nobody is watching.
                let _ = self.events.send(ev);
            }
        }
    }

    /// Write every change from now on to `journal` (a state file) and acknowledge changes only
    /// once they are on disk. Called once, right after loading.
    pub(crate) fn set_journal(
        self: &Arc<Self>,
        opened: crate::state::Opened,
    ) -> Result<(), crate::state::StateError> {
        // Everything before (the loaded state) is on disk already.
        let rev = self.revision();
        self.durable.send_modify(|d| d.rev = d.rev.max(rev));
        let weak = Arc::downgrade(self);
        let journal = opened.start(Box::new(move |r| {
            if let Some(store) = weak.upgrade() {
                store.publish(r);
            }
        }))?;
        let _ = self.journal.set(journal);
        Ok(())
    }

    /// The state file's writer, if there is one.
    pub(crate) fn journal(&self) -> Option<&crate::state::StateDb> {
        self.journal.get()
    }

    /// Changes up to `upto` are on disk: show them to watchers, in order.
    fn publish(&self, r: Result<u64, String>) {
        let mut inner = self.lock();
        match r {
            Ok(upto) => {
                while inner.pending.front().is_some_and(|e| e.rev <= upto) {
                    if let Some(ev) = inner.pending.pop_front() {
                        inner.published = ev.rev;
                        let _ = self.events.send(ev);
                    }
                }
                self.durable.send_modify(|d| {
                    d.rev = d.rev.max(upto);
                    d.error = None;
                });
            }
            Err(e) => self.durable.send_modify(|d| d.error = Some(e)),
        }
    }

    /// Wait until every change up to `rev` is durable (at once without a state file). A
    /// response must not show, or acknowledge, what a crash could take back.
    pub async fn sync(&self, rev: u64) -> Result<(), NotDurable> {
        // Without a state file every change is as durable as it gets once committed.
        if self.journal.get().is_none() {
            return Ok(());
        }
        let mut rx = self.durable.subscribe();
        let d = rx
            .wait_for(|d| d.rev >= rev || d.error.is_some())
            .await
            .map_err(|_| NotDurable("the state file's writer stopped".into()))?;
        if d.rev >= rev {
            return Ok(());
        }
        Err(NotDurable(d.error.clone().unwrap_or_default()))
    }

    /// Wait until every change committed so far is durable (at once without a state file).
    pub async fn sync_all(&self) -> Result<(), NotDurable> {
        if self.journal.get().is_none() {
            return Ok(());
        }
        self.sync(self.revision()).await
    }

    fn stamp(inner: &mut Inner, obj: &mut Value) {
        inner.rev += 1;
        if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("resourceVersion".into(), Value::String(inner.rev.to_string()));
        }
    }

    /// Store a new object; it gets the next revision.
    pub fn create(&self, gr: &GroupResource, mut obj: Value) -> Result<Arc<Value>, WriteError> {
        let mut inner = self.lock();
        let key = key_of(&obj);
        if inner.objects.get(gr).is_some_and(|m| m.contains_key(&key)) {
            return Err(WriteError::Exists);
        }
        Self::stamp(&mut inner, &mut obj);
        let obj = Arc::new(obj);
        if let Some(uid) = uid_of(&obj) {
            inner.uids.insert(uid, (gr.clone(), key.clone()));
        }
        let stored = Stored::new(&obj);
        inner.put(gr, key.clone(), stored.clone());
        self.commit(&mut inner, gr, EventType::Added, key, stored, None);
        Ok(obj)
    }

    /// The stored object at `key`, if its revision is `expected`.
    fn expect(
        inner: &Inner,
        gr: &GroupResource,
        key: &ObjKey,
        expected: u64,
    ) -> Result<Arc<Stored>, WriteError> {
        let prev = inner
            .objects
            .get(gr)
            .and_then(|m| m.get(key))
            .cloned()
            .ok_or(WriteError::Missing)?;
        if prev.rv() != expected {
            return Err(WriteError::Stale);
        }
        Ok(prev)
    }

    /// Replace an object whose stored revision is `expected`.
    pub fn update(
        &self,
        gr: &GroupResource,
        mut obj: Value,
        expected: u64,
    ) -> Result<Arc<Value>, WriteError> {
        let mut inner = self.lock();
        let key = key_of(&obj);
        let prev = Self::expect(&inner, gr, &key, expected)?;
        Self::stamp(&mut inner, &mut obj);
        let obj = Arc::new(obj);
        let stored = Stored::new(&obj);
        inner.put(gr, key.clone(), stored.clone());
        self.commit(&mut inner, gr, EventType::Modified, key, stored, Some(prev));
        Ok(obj)
    }

    /// Remove an object whose stored revision is `expected`. `last` is the final state to
    /// report (watchers see it with the delete's revision).
    pub fn delete(
        &self,
        gr: &GroupResource,
        mut last: Value,
        expected: u64,
    ) -> Result<Arc<Value>, WriteError> {
        let mut inner = self.lock();
        let key = key_of(&last);
        let prev = Self::expect(&inner, gr, &key, expected)?;
        inner.take(gr, &key);
        // The stored object's uid: normally the final state's, which needs no parse.
        let entry = (gr.clone(), key.clone());
        let uid = uid_of(&last)
            .filter(|u| inner.uids.get(u) == Some(&entry))
            .or_else(|| uid_of(&prev.value()));
        if let Some(uid) = uid {
            inner.uids.remove(&uid);
        }
        Self::stamp(&mut inner, &mut last);
        let last = Arc::new(last);
        let stored = Stored::new(&last);
        self.commit(&mut inner, gr, EventType::Deleted, key, stored, Some(prev));
        Ok(last)
    }

    /// The changes of every resource after revision `from` still in history, plus a
    /// subscription for newer ones.
    pub fn history_and_subscribe(&self, from: u64) -> Result<Replay, Compacted> {
        let inner = self.lock();
        // Changes not yet durable reach the subscription once they are.
        let backlog = Self::merged_since(&inner, from)?;
        let rx = self.events.subscribe();
        Ok((backlog, inner.rev, rx))
    }

    /// A subscription to every future change.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.events.subscribe()
    }

    /// Forget all history: watches and paged lists from older revisions get 410 Gone.
    pub fn compact(&self) {
        let mut inner = self.lock();
        let rev = inner.rev;
        for h in inner.histories.values_mut() {
            h.restart(rev);
        }
        inner.history_bytes = HistoryBytes::default();
        inner.floor = rev;
    }

    /// Every object as stored, by resource (nothing parsed).
    pub fn dump_stored(&self) -> Vec<(GroupResource, Arc<Stored>)> {
        let inner = self.lock();
        inner
            .objects
            .iter()
            .flat_map(|(gr, m)| m.values().map(move |o| (gr.clone(), o.clone())))
            .collect()
    }

    /// Every stored object, by resource (for saving state).
    pub fn dump(&self) -> Vec<(GroupResource, Arc<Value>)> {
        let stored: Vec<(GroupResource, Arc<Stored>)> = {
            let inner = self.lock();
            inner
                .objects
                .iter()
                .flat_map(|(gr, m)| m.values().map(move |o| (gr.clone(), o.clone())))
                .collect()
        };
        stored.into_iter().map(|(gr, o)| (gr, o.value())).collect()
    }

    /// Load saved objects as they are (keeping their resourceVersions), and continue from
    /// `revision` (the newest one ever handed out) or the largest resourceVersion, whichever is
    /// larger, so revisions never repeat after deletes; history starts empty.
    pub fn load(&self, objects: Vec<(GroupResource, Value)>, revision: u64) {
        let objects = objects
            .into_iter()
            .map(|(gr, obj)| LoadedObject::new(gr, &obj))
            .collect();
        self.load_stored(objects, revision);
    }

    /// [`Store::load`] of objects already in their stored form (as a state file is read: one
    /// object parsed at a time, never all at once).
    pub fn load_stored(&self, objects: Vec<LoadedObject>, revision: u64) {
        let mut inner = self.lock();
        inner.rev = inner.rev.max(revision);
        for o in objects {
            inner.rev = inner.rev.max(o.stored.rv());
            if let Some(uid) = o.uid {
                inner.uids.insert(uid, (o.gr.clone(), o.key.clone()));
            }
            inner.put(&o.gr, o.key, o.stored);
        }
        // Nothing from before the start can be watched: every history starts here.
        let rev = inner.rev;
        for h in inner.histories.values_mut() {
            h.restart(rev);
        }
        inner.history_bytes = HistoryBytes::default();
        inner.floor = rev;
        inner.published = rev;
        self.durable.send_modify(|d| d.rev = d.rev.max(rev));
    }
}

/// What a page of a list asks for ([`Store::list_page`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct PageQuery<'a> {
    /// One namespace, or all.
    pub ns: Option<&'a str>,
    /// The revision to read at; `None`: the newest.
    pub at: Option<u64>,
    /// Start after this key (a continue token's last key).
    pub after: Option<&'a ObjKey>,
    /// At most this many objects; 0: no limit.
    pub limit: usize,
    /// Count the objects after the page when more follow (meaningful for unfiltered lists:
    /// what is counted is every object in scope, whatever the filter).
    pub count_remaining: bool,
}

/// One page of a list: parsed objects ([`Store::list_page`]) or as stored
/// ([`Store::list_page_stored`]).
#[derive(Debug)]
pub struct Page<T = Arc<Value>> {
    /// The objects, in key order.
    pub items: Vec<T>,
    /// The revision the page shows.
    pub rev: u64,
    /// More accepted objects follow the page (the last item's key continues it).
    pub more: bool,
    /// How many objects in scope follow the page, when asked for and `more`.
    pub remaining: Option<usize>,
    /// Map entries the page looked at (objects, and changes from history).
    pub visited: usize,
    /// The key of the last object.
    last: Option<ObjKey>,
}

impl<T> Page<T> {
    /// The key of the page's last object: where the next page starts after.
    pub fn last_key(&self) -> Option<ObjKey> {
        self.last.clone()
    }
}

/// The key range of a page: after `after`, within `ns`.
fn start_bound(ns: Option<&str>, after: Option<&ObjKey>) -> Bound<ObjKey> {
    let first_of_ns = ns.map(|ns| (ns.to_string(), String::new()));
    match (after, first_of_ns) {
        (Some(k), Some(first)) if *k < first => Bound::Included(first),
        (Some(k), _) => Bound::Excluded(k.clone()),
        (None, Some(first)) => Bound::Included(first),
        (None, None) => Bound::Unbounded,
    }
}

/// The newest objects merged with an overlay of their state at an older revision: where a key
/// is in both, the overlay's state wins (`None`: the key did not exist then).
struct Merge<'a, C, O>
where
    C: Iterator<Item = (&'a ObjKey, &'a Arc<Stored>)>,
    O: Iterator<Item = (&'a ObjKey, &'a Option<Arc<Stored>>)>,
{
    current: std::iter::Peekable<C>,
    changed: std::iter::Peekable<O>,
    visited: &'a mut usize,
}

impl<'a, C, O> Iterator for Merge<'a, C, O>
where
    C: Iterator<Item = (&'a ObjKey, &'a Arc<Stored>)>,
    O: Iterator<Item = (&'a ObjKey, &'a Option<Arc<Stored>>)>,
{
    type Item = (&'a ObjKey, &'a Arc<Stored>);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let take_changed = match (self.current.peek(), self.changed.peek()) {
                (None, None) => return None,
                (Some(_), None) => false,
                (None, Some(_)) => true,
                (Some((c, _)), Some((o, _))) => {
                    if c == o {
                        // The same key: its state then replaces its state now.
                        self.current.next();
                        *self.visited += 1;
                        true
                    } else {
                        o < c
                    }
                }
            };
            *self.visited += 1;
            if take_changed {
                match self.changed.next() {
                    Some((k, Some(v))) => return Some((k, v)),
                    // Absent at that revision.
                    Some((_, None)) => continue,
                    None => return None,
                }
            }
            return self.current.next();
        }
    }
}

/// How many of a page's remaining objects are left after each continue key handed out
/// recently: `(resource, namespace, revision, key)` to a count. The state at a kept revision
/// never changes, so an entry stays true until it is pushed out (oldest first, at
/// [`CURSORS`] entries); a key not here is counted again.
#[derive(Default)]
struct Cursors {
    counts: HashMap<Cursor, usize>,
    order: VecDeque<Cursor>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Cursor {
    gr: GroupResource,
    ns: Option<String>,
    rev: u64,
    after: Option<ObjKey>,
}

/// How many continue keys' counts are kept: one per paged list in progress is enough, so a
/// thousand lists paging at once each find theirs.
const CURSORS: usize = 1024;

impl Cursors {
    fn get(&self, c: &Cursor) -> Option<usize> {
        self.counts.get(c).copied()
    }

    fn put(&mut self, c: Cursor, left: usize) {
        if self.counts.insert(c.clone(), left).is_none() {
            self.order.push_back(c);
        }
        while self.order.len() > CURSORS {
            if let Some(old) = self.order.pop_front() {
                self.counts.remove(&old);
            }
        }
    }
}

impl Inner {
    /// Store `obj` at `key`, counting it in its namespace when the key is new.
    fn put(&mut self, gr: &GroupResource, key: ObjKey, obj: Arc<Stored>) {
        let ns = key.0.clone();
        if self
            .objects
            .entry(gr.clone())
            .or_default()
            .insert(key, obj)
            .is_none()
        {
            *self
                .ns_counts
                .entry(gr.clone())
                .or_default()
                .entry(ns)
                .or_default() += 1;
        }
    }

    /// Remove the object at `key`, uncounting it.
    fn take(&mut self, gr: &GroupResource, key: &ObjKey) {
        if self.objects.get_mut(gr).and_then(|m| m.remove(key)).is_some()
            && let Some(counts) = self.ns_counts.get_mut(gr)
            && let Some(n) = counts.get_mut(&key.0)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&key.0);
            }
        }
    }
}

/// History's default byte limit: 256 MiB of object versions.
pub const DEFAULT_HISTORY_BYTES: usize = 256 << 20;

/// The capacity a resource's history starts at and never shrinks below: the real watch
/// cache's `defaultLowerBoundCapacity`.
pub const LOWER_BOUND_CAPACITY: usize = 100;

/// The capacity a resource's history never grows past by default: the real watch cache's
/// `defaultUpperBoundCapacity` (100 * 1024).
pub const UPPER_BOUND_CAPACITY: usize = 100 * 1024;

/// How long changes should stay in history: the real watch cache's `eventFreshDuration` (the
/// bookmark frequency plus a margin), which drives growing and shrinking the capacity.
pub const EVENT_FRESH_DURATION: Duration = Duration::from_secs(75);

/// One kept change and when it was recorded.
struct Held {
    event: Arc<Event>,
    at: Instant,
}

/// One resource's history, sized as the real server's watch cache (`watch_cache.go`): it starts
/// empty at the revision the server started at, holds `capacity` changes, and before adding a
/// change to a full history it doubles the capacity (up to `upper`) if even the oldest kept
/// change is younger than [`EVENT_FRESH_DURATION`], or halves it (down to `lower`, dropping the
/// oldest) if even the newest quarter is older than that; otherwise the oldest change goes. A
/// client that falls behind thus keeps at least 75 s of changes (up to 102,400 per resource)
/// and meets 410 Gone where it would on a real cluster.
struct ResourceHistory {
    events: VecDeque<Held>,
    capacity: usize,
    lower: usize,
    upper: usize,
    /// The oldest revision a watch can start from (as the real cache's `oldest-1`): the start
    /// while nothing was dropped, then one before the oldest kept change.
    compacted: u64,
}

impl ResourceHistory {
    fn new(start: u64, lower: usize, upper: usize) -> Self {
        let lower = lower.clamp(1, upper.max(1));
        ResourceHistory {
            events: VecDeque::new(),
            capacity: lower,
            lower,
            upper: upper.max(lower),
            compacted: start,
        }
    }

    /// Start over, empty, at `rev` (a compaction or a restart); the capacity stays.
    fn restart(&mut self, rev: u64) {
        self.events.clear();
        self.compacted = rev;
    }

    /// The kept changes after `from`, or [`Compacted`] when `from` is older than history.
    fn since(&self, from: u64) -> Result<impl DoubleEndedIterator<Item = &Arc<Event>>, Compacted> {
        if from < self.compacted {
            return Err(Compacted {
                requested: from,
                oldest: self.compacted,
            });
        }
        let start = self.events.partition_point(|e| e.event.rev <= from);
        Ok(self.events.range(start..).map(|e| &e.event))
    }

    /// Drop the oldest change.
    fn pop_oldest(&mut self) -> Option<Arc<Event>> {
        let old = self.events.pop_front()?;
        self.compacted = match self.events.front() {
            Some(next) => next.event.rev - 1,
            None => old.event.rev,
        };
        Some(old.event)
    }

    /// Add a change recorded at `now`; returns the changes dropped to make room.
    fn push(&mut self, event: Arc<Event>, now: Instant) -> Vec<Arc<Event>> {
        let mut dropped = vec![];
        if self.events.len() >= self.capacity {
            let oldest_fresh = self
                .events
                .front()
                .is_some_and(|e| now.saturating_duration_since(e.at) < EVENT_FRESH_DURATION);
            // The oldest of the newest quarter (as the real cache: at endIndex - capacity/4).
            let quarter = self.events.len() - (self.capacity / 4).min(self.events.len());
            let quarter_stale = self
                .events
                .get(quarter)
                .is_some_and(|e| now.saturating_duration_since(e.at) > EVENT_FRESH_DURATION);
            if oldest_fresh && self.capacity < self.upper {
                self.capacity = self.capacity.saturating_mul(2).min(self.upper);
            } else if !oldest_fresh && quarter_stale && self.capacity > self.lower {
                self.capacity = (self.capacity / 2).max(self.lower);
            }
            while self.events.len() >= self.capacity {
                match self.pop_oldest() {
                    Some(old) => dropped.push(old),
                    None => break,
                }
            }
        }
        self.events.push_back(Held { event, at: now });
        dropped
    }
}

/// The length of `v` encoded as compact JSON, counted without building the text.
pub fn encoded_len(v: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    // Writing a Value to a counter cannot fail.
    let _ = serde_json::to_writer(&mut c, v);
    c.0
}

/// What history's kept object versions cost, each distinct version counted once by its
/// encoded JSON length (a proxy for its memory; a parsed `Value` takes a small multiple).
///
/// An event keeps its object and, for updates and deletes, the version before (`prev`).
/// `prev` is normally the object of an earlier event of the same key, the same `Arc`: it is
/// counted with that event while it is kept, and stays counted after that event leaves
/// history for as long as the later event keeps it alive. A `prev` no kept event produced
/// (loaded from a state file, or already evicted) is counted when its event arrives. So
/// `total` is the size of every distinct version history holds, and the byte limit bounds it.
#[derive(Default)]
struct HistoryBytes {
    total: usize,
    /// Objects of kept events, by address, with their size.
    objects: HashMap<usize, usize>,
    /// Previous versions held by kept events, by address.
    prevs: HashMap<usize, HeldPrev>,
}

struct HeldPrev {
    size: usize,
    /// Kept events holding it (one, unless a version was reinstated).
    holders: usize,
    /// Counted in `total` on the holders' account (its own event is gone or never was).
    counted: bool,
}

fn addr(v: &Arc<Stored>) -> usize {
    Arc::as_ptr(v) as usize
}

impl HistoryBytes {
    fn push(&mut self, ev: &Event) {
        self.total = self.total.saturating_add(ev.size);
        self.objects.insert(addr(&ev.object), ev.size);
        if let Some(prev) = &ev.prev {
            let kept = self.objects.get(&addr(prev)).copied();
            let total = &mut self.total;
            let held = self.prevs.entry(addr(prev)).or_insert_with(|| HeldPrev {
                size: kept.unwrap_or_else(|| prev.size()),
                holders: 0,
                counted: false,
            });
            held.holders += 1;
            if kept.is_none() && !held.counted {
                held.counted = true;
                *total = total.saturating_add(held.size);
            }
        }
    }

    fn evict(&mut self, ev: &Event) {
        let a = addr(&ev.object);
        self.objects.remove(&a);
        match self.prevs.get_mut(&a) {
            // A later kept event still holds this version: it stays counted on its account.
            Some(held) => held.counted = true,
            None => self.total = self.total.saturating_sub(ev.size),
        }
        if let Some(prev) = &ev.prev {
            let p = addr(prev);
            if let Some(held) = self.prevs.get_mut(&p) {
                held.holders = held.holders.saturating_sub(1);
                if held.holders == 0 {
                    if held.counted {
                        self.total = self.total.saturating_sub(held.size);
                    }
                    self.prevs.remove(&p);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn gr() -> GroupResource {
        GroupResource {
            group: "".into(),
            resource: "configmaps".into(),
        }
    }

    fn cm(name: &str, v: &str) -> Value {
        json!({"metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}")}, "data": {"v": v}})
    }

    #[test]
    fn revisions_increase_and_history_rebuilds_old_lists() {
        let s = Store::new(100, 100);
        let a = s.create(&gr(), cm("a", "1")).unwrap();
        let rev_a = rv_of(&a);
        let b = s.create(&gr(), cm("b", "1")).unwrap();
        assert!(rv_of(&b) > rev_a);
        let a2 = s.update(&gr(), cm("a", "2"), rev_a).unwrap();
        assert_eq!(
            s.update(&gr(), cm("a", "3"), rev_a).unwrap_err(),
            WriteError::Stale
        );
        s.delete(&gr(), (*b).clone(), rv_of(&b)).unwrap();
        let at_a = s.list_at(&gr(), Some("ns"), rev_a).unwrap();
        assert_eq!(at_a.len(), 1);
        assert_eq!(at_a[0]["data"]["v"], "1");
        let (now, _) = s.list(&gr(), Some("ns"));
        assert_eq!(now.len(), 1);
        assert_eq!(now[0], a2);
        assert!(s.by_uid("uid-b").is_none());
        assert!(s.by_uid("uid-a").is_some());
    }

    /// Every distinct object version history holds, by address, summed by encoded size.
    fn distinct_bytes(s: &Store) -> usize {
        let inner = s.lock();
        let mut seen = HashMap::new();
        for ev in inner
            .histories
            .values()
            .flat_map(|h| h.events.iter().map(|e| &e.event))
        {
            seen.insert(addr(&ev.object), ev.object.size());
            if let Some(p) = &ev.prev {
                seen.insert(addr(p), p.size());
            }
        }
        seen.values().sum()
    }

    #[test]
    fn history_is_bounded_in_bytes_counting_each_version_once() {
        const LIMIT: usize = 64 * 1024;
        let s = Store::new(10_000, 100).with_history_bytes(LIMIT);
        let big = |n: usize| "x".repeat(n);
        let mut rvs = vec![];
        for k in 0..4 {
            rvs.push(rv_of(&s.create(&gr(), cm(&format!("k{k}"), &big(1000))).unwrap()));
        }
        for i in 0..200 {
            let k = i % 4;
            let name = format!("k{k}");
            let cur = s.get(&gr(), &("ns".into(), name.clone())).unwrap();
            let next = if i % 7 == 0 {
                s.delete(&gr(), (*cur).clone(), rv_of(&cur)).unwrap();
                s.create(&gr(), cm(&name, &big(500 + i * 37 % 3000))).unwrap()
            } else {
                s.update(&gr(), cm(&name, &big(500 + i * 37 % 3000)), rv_of(&cur))
                    .unwrap()
            };
            rvs.push(rv_of(&next));
            let (bytes, kept) = s.history_usage();
            assert_eq!(bytes, distinct_bytes(&s), "exact accounting after change {i}");
            assert!(bytes <= LIMIT, "{bytes} bytes kept");
            assert!(kept < 10_000);
        }
        // Far fewer than 200 changes of 0.5 to 3.5 KB fit: the oldest are compacted (410).
        assert!(s.history_usage().1 < 100);
        assert!(s.history_and_subscribe(rvs[0]).is_err());
        assert!(s.history_and_subscribe(s.revision() - 1).is_ok());
        s.compact();
        assert_eq!(s.history_usage(), (0, 0));
    }

    #[test]
    fn a_change_bigger_than_the_byte_limit_compacts_everything() {
        let s = Store::new(10_000, 100).with_history_bytes(100);
        s.create(&gr(), cm("a", &"x".repeat(1000))).unwrap();
        assert_eq!(s.history_usage(), (0, 0));
        assert_eq!(s.oldest(), s.revision());
    }

    fn event(rev: u64) -> Arc<Event> {
        Arc::new(Event {
            rev,
            gr: gr(),
            kind: EventType::Added,
            key: ("ns".into(), rev.to_string()),
            object: Stored::from_value(&cm(&rev.to_string(), "1")),
            prev: None,
            size: 1,
            lines: Default::default(),
        })
    }

    #[test]
    fn history_grows_while_its_oldest_change_is_fresh_as_the_real_watch_cache() {
        let t0 = Instant::now();
        let mut h = ResourceHistory::new(10, LOWER_BOUND_CAPACITY, UPPER_BOUND_CAPACITY);
        // 1000 changes within a second: nothing is dropped, the capacity doubles 100 -> 1600.
        for i in 0..1000u64 {
            let dropped = h.push(event(11 + i), t0 + Duration::from_millis(i));
            assert!(dropped.is_empty(), "change {i} dropped {}", dropped.len());
        }
        assert_eq!((h.events.len(), h.capacity), (1000, 1600));
        assert_eq!(h.compacted, 10, "nothing dropped: the start is still watchable");
    }

    #[test]
    fn history_drops_the_oldest_once_stale_and_halves_when_the_newest_quarter_is_stale() {
        let t0 = Instant::now();
        let mut h = ResourceHistory::new(0, LOWER_BOUND_CAPACITY, UPPER_BOUND_CAPACITY);
        for i in 0..200u64 {
            h.push(event(1 + i), t0);
        }
        assert_eq!(h.capacity, 200);
        // 30 s later the oldest is still fresh: full, it doubles again.
        let t1 = t0 + Duration::from_secs(30);
        for i in 0..200u64 {
            h.push(event(201 + i), t1);
        }
        assert_eq!((h.events.len(), h.capacity), (400, 400));
        // 80 s after the start: full, the oldest stale but the newest quarter fresh: the
        // oldest goes, no resize.
        let t2 = t0 + Duration::from_secs(80);
        for i in 0..50u64 {
            h.push(event(401 + i), t2);
        }
        assert_eq!((h.events.len(), h.capacity), (400, 400));
        assert_eq!(h.events[0].event.rev, 51);
        // The real cache's `oldest-1`: one before the oldest kept change.
        assert_eq!(h.compacted, h.events[0].event.rev - 1);
        assert!(h.since(h.compacted).is_ok());
        let too_old = h.compacted - 1;
        assert_eq!(
            h.since(too_old).err(),
            Some(Compacted {
                requested: too_old,
                oldest: h.compacted
            })
        );
        // Once even the newest quarter is stale, a full history halves on the next change.
        let t3 = t1 + Duration::from_secs(80);
        h.push(event(451), t3);
        assert_eq!((h.events.len(), h.capacity), (200, 200));
        assert_eq!(h.events.back().map(|e| e.event.rev), Some(451));
        assert_eq!(
            h.events[0].event.rev, 252,
            "the newest 199 and the new one are kept"
        );
        let t4 = t3 + EVENT_FRESH_DURATION * 2;
        for i in 0..300u64 {
            h.push(
                event(452 + i),
                t4 + EVENT_FRESH_DURATION * 2 * u32::try_from(i).unwrap(),
            );
        }
        assert_eq!(h.capacity, LOWER_BOUND_CAPACITY, "never below the lower bound");
    }

    #[test]
    fn a_busy_resource_does_not_compact_a_quiet_ones_history() {
        let s = Store::new(2, 100);
        let secrets = GroupResource {
            group: "".into(),
            resource: "secrets".into(),
        };
        let quiet = s.create(&secrets, cm("s", "1")).unwrap();
        let a = s.create(&gr(), cm("a", "1")).unwrap();
        for i in 0..10 {
            let cur = s.get(&gr(), &key_of(&a)).unwrap();
            s.update(&gr(), cm("a", &i.to_string()), rv_of(&cur)).unwrap();
        }
        assert!(s.catch_up_in(&gr(), rv_of(&a), 10).is_err());
        // The quiet resource's single change is still there for a watch from before it.
        let (chunk, sub) = s.catch_up_in(&secrets, rv_of(&quiet) - 1, 10).unwrap();
        assert_eq!(chunk.len(), 1);
        assert!(sub.is_some());
        assert_eq!(s.history_of(&secrets), (1, 2));
    }

    #[test]
    fn after_a_restart_nothing_from_before_it_can_be_watched() {
        let s = Store::new(100, 100);
        s.load(
            vec![(gr(), {
                let mut o = cm("a", "1");
                o["metadata"]["resourceVersion"] = json!("41");
                o
            })],
            42,
        );
        // As the real cache, which starts empty at its initial LIST's revision.
        assert_eq!(
            s.catch_up_in(&gr(), 41, 10).err(),
            Some(Compacted {
                requested: 41,
                oldest: 42
            })
        );
        assert!(s.list_at(&gr(), None, 41).is_err());
        let (chunk, sub) = s.catch_up_in(&gr(), 42, 10).unwrap();
        assert!(chunk.is_empty() && sub.is_some());
        let b = s.create(&gr(), cm("b", "1")).unwrap();
        let (chunk, _) = s.catch_up_in(&gr(), 42, 10).unwrap();
        assert_eq!(chunk.len(), 1);
        assert_eq!(chunk[0].rev, rv_of(&b));
    }

    #[test]
    fn catching_up_goes_a_chunk_at_a_time_and_subscribes_at_the_end() {
        let s = Store::new(100, 100);
        let first = s.revision();
        for i in 0..5 {
            s.create(&gr(), cm(&format!("c{i}"), "1")).unwrap();
        }
        let (chunk, sub) = s.catch_up_in(&gr(), first, 3).unwrap();
        assert_eq!(chunk.len(), 3);
        assert!(sub.is_none(), "more to come");
        let (chunk, sub) = s.catch_up_in(&gr(), chunk[2].rev, 3).unwrap();
        assert_eq!(chunk.len(), 2);
        assert!(sub.is_some());
        // The merged, all-resource variant agrees.
        let (all, sub) = s.catch_up(first, 3).unwrap();
        assert_eq!(all.len(), 3);
        assert!(sub.is_none());
    }

    #[test]
    fn compaction_makes_old_revisions_gone() {
        let s = Store::new(2, 100);
        let a = s.create(&gr(), cm("a", "1")).unwrap();
        for i in 0..3 {
            let cur = s.get(&gr(), &key_of(&a)).unwrap();
            s.update(&gr(), cm("a", &i.to_string()), rv_of(&cur)).unwrap();
        }
        assert!(s.history_and_subscribe(rv_of(&a)).is_err());
        let newest = s.revision();
        let (backlog, _, _) = s.history_and_subscribe(newest - 1).unwrap();
        assert_eq!(backlog.len(), 1);
        s.compact();
        assert!(s.history_and_subscribe(newest - 1).is_err());
        assert!(s.history_and_subscribe(newest).is_ok());
    }

    fn cm_in(ns: &str, name: &str, v: &str, sel: bool) -> Value {
        json!({"metadata": {"name": name, "namespace": ns, "uid": format!("uid-{ns}-{name}"),
            "labels": {"sel": if sel { "yes" } else { "no" }}}, "data": {"v": v}})
    }

    /// What [`all_pages`] saw: objects, remaining counts, visits, and the snapshot revision.
    type Pages = (Vec<(String, String, String)>, Vec<Option<usize>>, Vec<usize>, u64);

    /// Every page of a list, following continue keys: the objects' (namespace, name, data),
    /// each page's remaining count, and each page's visits.
    fn all_pages(
        s: &Store,
        ns: Option<&str>,
        limit: usize,
        keep: &dyn Fn(&Value) -> bool,
        at: Option<u64>,
    ) -> Pages {
        let mut out = vec![];
        let mut remaining = vec![];
        let mut visits = vec![];
        let mut after: Option<ObjKey> = None;
        let mut at = at;
        loop {
            let q = PageQuery {
                ns,
                at,
                after: after.as_ref(),
                limit,
                count_remaining: true,
            };
            let page = s.list_page(&gr(), &q, &mut |o| keep(o)).unwrap();
            assert!(limit == 0 || page.items.len() <= limit);
            at = Some(page.rev);
            for o in &page.items {
                let (n, name) = key_of(o);
                out.push((n, name, o["data"]["v"].as_str().unwrap_or_default().to_string()));
            }
            remaining.push(page.remaining);
            visits.push(page.visited);
            if !page.more {
                assert_eq!(page.remaining, None);
                return (out, remaining, visits, page.rev);
            }
            assert!(!page.items.is_empty(), "more follow a page with items");
            after = page.last_key();
        }
    }

    fn model(s: &Store, ns: Option<&str>, keep: &dyn Fn(&Value) -> bool) -> Vec<(String, String, String)> {
        let (objs, _) = s.list(&gr(), ns);
        objs.iter()
            .filter(|o| keep(o))
            .map(|o| {
                let (n, name) = key_of(o);
                (n, name, o["data"]["v"].as_str().unwrap_or_default().to_string())
            })
            .collect()
    }

    #[test]
    fn pages_at_every_limit_match_the_whole_list_and_count_what_is_left() {
        let s = Store::new(10_000, 100);
        // "a" and "a-b": tuple order puts all of "a" first, string order would not.
        for ns in ["a", "a-b", "b"] {
            for i in 0..30 {
                s.create(&gr(), cm_in(ns, &format!("o{i:03}"), "1", i % 10 == 0))
                    .unwrap();
            }
        }
        let all = |_: &Value| true;
        let selected = |o: &Value| o["metadata"]["labels"]["sel"] == "yes";
        for ns in [None, Some("a"), Some("a-b"), Some("zz")] {
            let want = model(&s, ns, &all);
            let want_sel = model(&s, ns, &selected);
            for limit in [0, 1, 2, 3, 7, 10, 30, 89, 90, 91, 500] {
                let (got, remaining, _, _) = all_pages(&s, ns, limit, &all, None);
                assert_eq!(got, want, "{ns:?} limit {limit}");
                // Unfiltered: each page's count is exactly what the later pages hold.
                let mut left = want.len();
                for r in remaining.iter().take(remaining.len() - 1) {
                    left -= limit.min(left);
                    assert_eq!(*r, Some(left), "{ns:?} limit {limit}");
                }
                let (got, _, _, _) = all_pages(&s, ns, limit, &selected, None);
                assert_eq!(got, want_sel, "{ns:?} limit {limit} selected");
            }
        }
    }

    #[test]
    fn a_page_visits_what_it_holds_not_the_resource() {
        let s = Store::new(100, 100);
        for i in 0..5000 {
            s.create(&gr(), cm_in("ns", &format!("o{i:05}"), "1", i % 1000 == 999))
                .unwrap();
        }
        let before = s.list_visits();
        let (got, _, visits, _) = all_pages(&s, None, 100, &|_| true, None);
        assert_eq!(got.len(), 5000);
        assert_eq!(visits.len(), 50);
        // One past the page to know more follow; the count comes from the previous page.
        assert!(visits.iter().all(|v| *v <= 101), "{visits:?}");
        assert_eq!(s.list_visits() - before, visits.iter().sum::<usize>() as u64);
        // Writes after the snapshot: a page at it visits the changes too, not the resource.
        let (_, _, _, rev) = all_pages(&s, None, 100, &|_| true, Some(s.revision()));
        for i in 0..50 {
            let key = ("ns".to_string(), format!("o{:05}", i * 100));
            let cur = s.get(&gr(), &key).unwrap();
            s.update(&gr(), cm_in("ns", &key.1, "2", false), rv_of(&cur))
                .unwrap();
        }
        let (got, _, visits, _) = all_pages(&s, None, 100, &|_| true, Some(rev));
        assert!(got.iter().all(|(_, _, v)| v == "1"), "the snapshot's state");
        assert!(visits.iter().all(|v| *v <= 101 + 50 + 2), "{visits:?}");
        // A selector that skips most objects scans on, but never from the start.
        let selected = |o: &Value| o["metadata"]["labels"]["sel"] == "yes";
        let (got, _, visits, _) = all_pages(&s, None, 2, &selected, None);
        assert_eq!(got.len(), 5);
        // Matches are 1000 apart: a page of two looks from its start to the match after its
        // second (3000 entries), and the next page starts after its second, not at the start.
        assert_eq!(visits, [3000, 3000, 1000]);
    }

    #[test]
    fn older_revisions_page_through_history_and_latest_pages_see_changes() {
        let s = Store::new(10_000, 100);
        for i in 0..20 {
            s.create(&gr(), cm_in("ns", &format!("o{i:02}"), "old", false))
                .unwrap();
        }
        let snapshot = s.revision();
        let want = model(&s, None, &|_| true);
        let first = s
            .list_page(
                &gr(),
                &PageQuery {
                    limit: 5,
                    count_remaining: true,
                    ..Default::default()
                },
                &mut |_| true,
            )
            .unwrap();
        assert_eq!((first.rev, first.remaining), (snapshot, Some(15)));
        // Changes between pages: an update, a delete, a create inside and after the range.
        let k = |n: &str| ("ns".to_string(), n.to_string());
        let o07 = s.get(&gr(), &k("o07")).unwrap();
        s.update(&gr(), cm_in("ns", "o07", "new", false), rv_of(&o07))
            .unwrap();
        let o09 = s.get(&gr(), &k("o09")).unwrap();
        s.delete(&gr(), (*o09).clone(), rv_of(&o09)).unwrap();
        s.create(&gr(), cm_in("ns", "o04a", "new", false)).unwrap();
        s.create(&gr(), cm_in("ns", "o99", "new", false)).unwrap();
        // At the snapshot: exactly its state, counted exactly (a cursor handed out, and one not).
        let after = first.last_key().unwrap();
        let q = PageQuery {
            at: Some(snapshot),
            after: Some(&after),
            limit: 5,
            count_remaining: true,
            ..Default::default()
        };
        let second = s.list_page(&gr(), &q, &mut |_| true).unwrap();
        assert_eq!(second.remaining, Some(10));
        let (rest, _, _, _) = all_pages(&s, None, 5, &|_| true, Some(snapshot));
        assert_eq!(rest, want);
        let after = second.last_key().unwrap();
        s.lock().cursors = Cursors::default();
        let q = PageQuery {
            after: Some(&after),
            ..q
        };
        assert_eq!(
            s.list_page(&gr(), &q, &mut |_| true).unwrap().remaining,
            Some(5),
            "counted again"
        );
        // At the newest state (a token after a 410): the changes show.
        let q = PageQuery {
            at: None,
            after: Some(&("ns".to_string(), "o04".to_string())),
            limit: 0,
            count_remaining: true,
            ..Default::default()
        };
        let latest = s.list_page(&gr(), &q, &mut |_| true).unwrap();
        let names: Vec<String> = latest.items.iter().map(|o| key_of(o).1).collect();
        assert_eq!(names[..5], ["o04a", "o05", "o06", "o07", "o08"]);
        assert!(names.contains(&"o99".to_string()) && !names.contains(&"o09".to_string()));
        // Compacted: 410 for the snapshot, and list_at agrees with the pages.
        assert_eq!(s.list_at(&gr(), None, snapshot).unwrap().len(), 20);
        s.compact();
        assert!(
            s.list_page(
                &gr(),
                &PageQuery {
                    at: Some(snapshot),
                    ..Default::default()
                },
                &mut |_| true
            )
            .is_err()
        );
    }

    #[test]
    fn random_changes_between_pages_keep_each_snapshot_exact() {
        // A deterministic sequence (an LCG), so a failure replays.
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move |n: u64| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) % n
        };
        let s = Store::new(100_000, 100);
        let nss = ["a", "a-b", "b"];
        for round in 0..40 {
            for _ in 0..10 {
                let ns = nss[next(3) as usize];
                let name = format!("o{}", next(40));
                let key = (ns.to_string(), name.clone());
                match s.get(&gr(), &key) {
                    None => {
                        s.create(&gr(), cm_in(ns, &name, &round.to_string(), next(2) == 0))
                            .unwrap();
                    }
                    Some(cur) if next(3) == 0 => {
                        s.delete(&gr(), (*cur).clone(), rv_of(&cur)).unwrap();
                    }
                    Some(cur) => {
                        s.update(
                            &gr(),
                            cm_in(ns, &name, &round.to_string(), next(2) == 0),
                            rv_of(&cur),
                        )
                        .unwrap();
                    }
                }
            }
            let ns = [None, Some("a"), Some("a-b")][next(3) as usize];
            let selected = |o: &Value| o["metadata"]["labels"]["sel"] == "yes";
            let filtered = next(2) == 0;
            let keep: &dyn Fn(&Value) -> bool = if filtered { &selected } else { &|_| true };
            let want = model(&s, ns, keep);
            let snapshot = s.revision();
            // Page through with writes between pages: the result is the snapshot's.
            let limit = 1 + next(7) as usize;
            let mut got = vec![];
            let mut after: Option<ObjKey> = None;
            loop {
                let q = PageQuery {
                    ns,
                    at: Some(snapshot),
                    after: after.as_ref(),
                    limit,
                    count_remaining: !filtered,
                };
                let page = s.list_page(&gr(), &q, &mut |o| keep(o)).unwrap();
                if !filtered && let Some(r) = page.remaining {
                    assert_eq!(r, want.len() - got.len() - page.items.len(), "round {round}");
                }
                got.extend(page.items.iter().map(|o| {
                    let (n, name) = key_of(o);
                    (n, name, o["data"]["v"].as_str().unwrap_or_default().to_string())
                }));
                if !page.more {
                    break;
                }
                after = page.last_key();
                let name = format!("o{}", next(40));
                let key = ("a".to_string(), name.clone());
                match s.get(&gr(), &key) {
                    None => drop(s.create(&gr(), cm_in("a", &name, "between", true)).unwrap()),
                    Some(cur) => s.delete(&gr(), (*cur).clone(), rv_of(&cur)).map(drop).unwrap(),
                }
            }
            assert_eq!(got, want, "round {round}, {ns:?}, limit {limit}");
        }
    }
}
