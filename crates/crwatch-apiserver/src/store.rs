//! The object store: every object by resource and key, one increasing revision across all of
//! them (as etcd gives), a bounded history of changes for watches and consistent paging, and
//! the fan-out of new changes to watchers.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

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

/// One change, as kept in history and sent to watchers.
#[derive(Debug)]
pub struct Event {
    /// The revision the change created.
    pub rev: u64,
    /// Which resource changed.
    pub gr: GroupResource,
    /// What happened.
    pub kind: EventType,
    /// The object after the change (for a delete: the last state, with the delete's revision).
    pub object: Arc<Value>,
    /// The object before the change, for updates and deletes.
    pub prev: Option<Arc<Value>>,
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
    objects: BTreeMap<GroupResource, BTreeMap<ObjKey, Arc<Value>>>,
    uids: HashMap<String, (GroupResource, ObjKey)>,
    history: VecDeque<Arc<Event>>,
    /// Revisions up to and including this one are no longer in history.
    compacted: u64,
}

/// The store. Cheap to share behind an `Arc`.
pub struct Store {
    inner: Mutex<Inner>,
    events: broadcast::Sender<Arc<Event>>,
    window: usize,
    buffer: usize,
}

fn rv_of(obj: &Value) -> u64 {
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
    /// An empty store keeping `window` changes of history and buffering `watch_buffer`
    /// undelivered changes per watcher before closing a watcher that fell behind.
    pub fn new(window: usize, watch_buffer: usize) -> Self {
        let buffer = watch_buffer.max(16);
        let (events, _) = broadcast::channel(buffer);
        Store {
            inner: Mutex::new(Inner {
                rev: 1,
                ..Default::default()
            }),
            events,
            window: window.max(1),
            buffer,
        }
    }

    /// How many undelivered changes a watcher may have queued before it is closed.
    pub fn watch_buffer(&self) -> usize {
        self.buffer
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

    /// The oldest revision a watch or paged list can still start from.
    pub fn oldest(&self) -> u64 {
        self.lock().compacted
    }

    /// One object.
    pub fn get(&self, gr: &GroupResource, key: &ObjKey) -> Option<Arc<Value>> {
        self.lock().objects.get(gr).and_then(|m| m.get(key)).cloned()
    }

    /// The resource and key of the object with this uid.
    pub fn by_uid(&self, uid: &str) -> Option<(GroupResource, Arc<Value>)> {
        let inner = self.lock();
        let (gr, key) = inner.uids.get(uid)?;
        let obj = inner.objects.get(gr)?.get(key)?.clone();
        Some((gr.clone(), obj))
    }

    /// Every object of a resource (in one namespace, or all), sorted by key, and the revision
    /// of that snapshot.
    pub fn list(&self, gr: &GroupResource, ns: Option<&str>) -> (Vec<Arc<Value>>, u64) {
        let inner = self.lock();
        (Self::collect(&inner.objects, gr, ns), inner.rev)
    }

    fn collect(
        objects: &BTreeMap<GroupResource, BTreeMap<ObjKey, Arc<Value>>>,
        gr: &GroupResource,
        ns: Option<&str>,
    ) -> Vec<Arc<Value>> {
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
        let inner = self.lock();
        if rev >= inner.rev {
            return Ok(Self::collect(&inner.objects, gr, ns));
        }
        if rev < inner.compacted {
            return Err(Compacted {
                requested: rev,
                oldest: inner.compacted,
            });
        }
        let mut state: BTreeMap<ObjKey, Arc<Value>> = inner.objects.get(gr).cloned().unwrap_or_default();
        for ev in inner.history.iter().rev().take_while(|e| e.rev > rev) {
            if &ev.gr != gr {
                continue;
            }
            let key = key_of(&ev.object);
            match (&ev.kind, &ev.prev) {
                (EventType::Added, _) => {
                    state.remove(&key);
                }
                (_, Some(prev)) => {
                    state.insert(key, prev.clone());
                }
                (_, None) => {}
            }
        }
        Ok(state
            .into_iter()
            .filter(|((n, _), _)| ns.is_none_or(|ns| ns == n))
            .map(|(_, v)| v)
            .collect())
    }

    fn commit(
        &self,
        inner: &mut Inner,
        gr: &GroupResource,
        kind: EventType,
        object: Arc<Value>,
        prev: Option<Arc<Value>>,
    ) {
        let ev = Arc::new(Event {
            rev: inner.rev,
            gr: gr.clone(),
            kind,
            object,
            prev,
        });
        inner.history.push_back(ev.clone());
        while inner.history.len() > self.window {
            if let Some(old) = inner.history.pop_front() {
                inner.compacted = old.rev;
            }
        }
        // No receivers is fine: nobody is watching.
        let _ = self.events.send(ev);
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
        inner
            .objects
            .entry(gr.clone())
            .or_default()
            .insert(key, obj.clone());
        self.commit(&mut inner, gr, EventType::Added, obj.clone(), None);
        Ok(obj)
    }

    /// The stored object at `key`, if its revision is `expected`.
    fn expect(
        inner: &Inner,
        gr: &GroupResource,
        key: &ObjKey,
        expected: u64,
    ) -> Result<Arc<Value>, WriteError> {
        let prev = inner
            .objects
            .get(gr)
            .and_then(|m| m.get(key))
            .cloned()
            .ok_or(WriteError::Missing)?;
        if rv_of(&prev) != expected {
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
        inner
            .objects
            .entry(gr.clone())
            .or_default()
            .insert(key, obj.clone());
        self.commit(&mut inner, gr, EventType::Modified, obj.clone(), Some(prev));
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
        if let Some(m) = inner.objects.get_mut(gr) {
            m.remove(&key);
        }
        if let Some(uid) = uid_of(&prev) {
            inner.uids.remove(&uid);
        }
        Self::stamp(&mut inner, &mut last);
        let last = Arc::new(last);
        self.commit(&mut inner, gr, EventType::Deleted, last.clone(), Some(prev));
        Ok(last)
    }

    /// A snapshot of a resource plus a subscription that starts right after it, so a watch
    /// that begins with the current state misses nothing and sees nothing twice.
    pub fn snapshot_and_subscribe(
        &self,
        gr: &GroupResource,
        ns: Option<&str>,
    ) -> (Vec<Arc<Value>>, u64, broadcast::Receiver<Arc<Event>>) {
        let inner = self.lock();
        let rx = self.events.subscribe();
        (Self::collect(&inner.objects, gr, ns), inner.rev, rx)
    }

    /// The changes after revision `from` still in history, plus a subscription for newer ones.
    pub fn history_and_subscribe(&self, from: u64) -> Result<Replay, Compacted> {
        let inner = self.lock();
        if from < inner.compacted {
            return Err(Compacted {
                requested: from,
                oldest: inner.compacted,
            });
        }
        let rx = self.events.subscribe();
        let start = inner.history.partition_point(|e| e.rev <= from);
        let backlog = inner.history.iter().skip(start).cloned().collect();
        Ok((backlog, inner.rev, rx))
    }

    /// A subscription to every future change.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.events.subscribe()
    }

    /// Forget all history: watches and paged lists from older revisions get 410 Gone.
    pub fn compact(&self) {
        let mut inner = self.lock();
        inner.history.clear();
        inner.compacted = inner.rev;
    }

    /// Every stored object, by resource (for saving state).
    pub fn dump(&self) -> Vec<(GroupResource, Arc<Value>)> {
        let inner = self.lock();
        inner
            .objects
            .iter()
            .flat_map(|(gr, m)| m.values().map(move |o| (gr.clone(), o.clone())))
            .collect()
    }

    /// Load saved objects as they are (keeping their resourceVersions), and move the revision
    /// past the largest one; history starts empty.
    pub fn load(&self, objects: Vec<(GroupResource, Value)>) {
        let mut inner = self.lock();
        for (gr, obj) in objects {
            inner.rev = inner.rev.max(rv_of(&obj));
            let key = key_of(&obj);
            if let Some(uid) = uid_of(&obj) {
                inner.uids.insert(uid, (gr.clone(), key.clone()));
            }
            inner.objects.entry(gr).or_default().insert(key, Arc::new(obj));
        }
        inner.compacted = inner.rev;
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
}
