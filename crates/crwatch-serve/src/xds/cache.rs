//! The served state: one immutable, versioned [`TypeSnapshot`] per type URL, published by an
//! informer handler ([`Publisher`]) and read by every subscriber stream.
//!
//! A list that arrives as one (the informer's `Relist` … `RelistDone`, the first list and every
//! relist) is published as one snapshot version, so no subscriber sees half of it; single
//! watch events are published one version each. Versions only grow, also across relists and
//! across restarts of the server: each is `max(previous + 1, microseconds since the epoch)`.
//!
//! Publishing never waits for subscribers: the newest snapshot replaces the previous one in a
//! `tokio::sync::watch` cell, and each subscriber works out what it lacks when it is ready to
//! send (this is the coalescing: a slow subscriber skips intermediate versions and gets the
//! latest state per resource).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use crwatch::informer::{AsyncHandler, Change};
use crwatch::source::SourceError;
use crwatch::xds::protobuf::Any;
use futures::future::BoxFuture;
use kube::api::DynamicObject;
use serde_json::Value;
use tokio::sync::watch;

/// How many published versions a snapshot remembers the changed names of. A subscriber
/// further behind than that compares its whole view with the snapshot instead.
pub const JOURNAL_LEN: usize = 256;

/// One served resource.
#[derive(Debug)]
pub struct Entry {
    /// MCP name: `namespace/name` or `name`.
    pub name: String,
    /// Per-resource version (the object's `resourceVersion`; the snapshot version it changed
    /// at when the source gives none).
    pub version: String,
    /// The `istio.mcp.v1alpha1.Resource` packed in an `Any`.
    pub any: Any,
    /// The object as served (for NACK reporting: uid, generation, status).
    pub object: Arc<Value>,
}

/// The state of one type at one version.
#[derive(Debug, Clone)]
pub struct TypeSnapshot {
    /// The type URL (`<group>/<version>/<Kind>`).
    pub type_url: String,
    /// The snapshot version (grows with every publication).
    pub version: u64,
    /// Resources by name.
    pub entries: Arc<BTreeMap<String, Arc<Entry>>>,
    /// `(version, names changed at it)` for the last [`JOURNAL_LEN`] publications.
    journal: Arc<VecDeque<(u64, Vec<String>)>>,
    /// Every version after this one is in the journal.
    journal_floor: u64,
}

impl TypeSnapshot {
    /// An empty snapshot (nothing listed yet is *not* this: see [`TypeCache::current`]).
    pub fn empty(type_url: &str, version: u64) -> Self {
        TypeSnapshot {
            type_url: type_url.to_string(),
            version,
            entries: Arc::default(),
            journal: Arc::default(),
            journal_floor: version,
        }
    }

    /// A snapshot with these entries (tests and tools).
    pub fn with_entries(type_url: &str, version: u64, entries: impl IntoIterator<Item = Entry>) -> Self {
        let mut s = Self::empty(type_url, version);
        s.entries = Arc::new(
            entries
                .into_iter()
                .map(|e| (e.name.clone(), Arc::new(e)))
                .collect(),
        );
        s
    }

    /// The version as the protocol carries it.
    pub fn version_string(&self) -> String {
        self.version.to_string()
    }

    /// The names that changed (appeared, changed or went) after version `since`, or `None`
    /// when the journal does not reach back that far.
    pub fn changed_since(&self, since: u64) -> Option<BTreeSet<String>> {
        if since < self.journal_floor {
            return None;
        }
        Some(
            self.journal
                .iter()
                .filter(|(v, _)| *v > since)
                .flat_map(|(_, names)| names.iter().cloned())
                .collect(),
        )
    }

    /// The next snapshot: `changes` applied (`None` removes), at a version greater than this
    /// one's.
    pub fn next(&self, changes: Vec<(String, Option<Arc<Entry>>)>) -> Self {
        let version = next_version(self.version);
        let mut entries = (*self.entries).clone();
        let mut names = Vec::with_capacity(changes.len());
        for (name, entry) in changes {
            match entry {
                Some(e) => {
                    entries.insert(name.clone(), e);
                }
                None => {
                    entries.remove(&name);
                }
            }
            names.push(name);
        }
        let mut journal = (*self.journal).clone();
        let mut floor = self.journal_floor;
        journal.push_back((version, names));
        while journal.len() > JOURNAL_LEN {
            if let Some((v, _)) = journal.pop_front() {
                floor = v;
            }
        }
        TypeSnapshot {
            type_url: self.type_url.clone(),
            version,
            entries: Arc::new(entries),
            journal: Arc::new(journal),
            journal_floor: floor,
        }
    }
}

fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// A version after `previous`: the clock in microseconds when it is ahead, so versions also
/// grow across restarts of the server.
pub fn next_version(previous: u64) -> u64 {
    (previous + 1).max(now_micros())
}

/// The cell of one type: `None` until the first list is complete.
#[derive(Clone)]
pub struct TypeCache {
    type_url: String,
    tx: Arc<watch::Sender<Option<Arc<TypeSnapshot>>>>,
    bump: Arc<watch::Sender<u64>>,
}

impl TypeCache {
    /// The type URL served.
    pub fn type_url(&self) -> &str {
        &self.type_url
    }

    /// The current snapshot (`None` before the first list completed).
    pub fn current(&self) -> Option<Arc<TypeSnapshot>> {
        self.tx.borrow().clone()
    }

    /// Replace the snapshot and wake every subscriber.
    pub fn publish(&self, snapshot: TypeSnapshot) {
        self.tx.send_replace(Some(Arc::new(snapshot)));
        self.bump.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// Every served type, and one "something changed" signal for the subscriber streams.
#[derive(Clone)]
pub struct Cache {
    types: Arc<Mutex<HashMap<String, TypeCache>>>,
    bump: Arc<watch::Sender<u64>>,
}

impl Default for Cache {
    fn default() -> Self {
        Cache {
            types: Arc::default(),
            bump: Arc::new(watch::channel(0).0),
        }
    }
}

impl Cache {
    /// The cell for `type_url`, made on first use.
    pub fn type_cache(&self, type_url: &str) -> TypeCache {
        let mut types = self.types.lock().unwrap_or_else(|p| p.into_inner());
        types
            .entry(type_url.to_string())
            .or_insert_with(|| TypeCache {
                type_url: type_url.to_string(),
                tx: Arc::new(watch::channel(None).0),
                bump: self.bump.clone(),
            })
            .clone()
    }

    /// The cell for `type_url` if it is served.
    pub fn get(&self, type_url: &str) -> Option<TypeCache> {
        self.types
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(type_url)
            .cloned()
    }

    /// The served type URLs.
    pub fn type_urls(&self) -> Vec<String> {
        let mut v: Vec<_> = self
            .types
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        v.sort();
        v
    }

    /// The current snapshot of `type_url`.
    pub fn snapshot(&self, type_url: &str) -> Option<Arc<TypeSnapshot>> {
        self.get(type_url).and_then(|t| t.current())
    }

    /// A receiver that changes whenever any type publishes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.bump.subscribe()
    }
}

/// The entry an object becomes, or why it cannot be served.
pub fn entry_of(object: Value, fallback_version: u64) -> Result<Entry, crwatch::xds::XdsError> {
    let resource = crwatch::xds::object_to_resource(&object)?;
    let meta = resource.metadata.clone().unwrap_or_default();
    let version = if meta.version.is_empty() {
        fallback_version.to_string()
    } else {
        meta.version.clone()
    };
    Ok(Entry {
        name: meta.name,
        version,
        any: crwatch::xds::pack_resource(&resource),
        object: Arc::new(object),
    })
}

/// Where a [`Publisher`] puts objects.
enum Target {
    /// One type: objects without `apiVersion`/`kind` get these.
    Fixed(TypeCache, String, String),
    /// Each object under the type URL of its own `apiVersion`/`kind` (a directory of
    /// documents of several kinds); objects without them are not served.
    Routed(Cache),
}

/// One change: a name and its new entry (`None`: gone).
type NamedChange = (String, Option<Arc<Entry>>);
/// Changes with the type each goes to.
type Staged = Vec<(TypeCache, String, Option<Arc<Entry>>)>;

/// The informer handler that publishes: lists as one version per type, single events one
/// version each. It never waits for subscribers.
pub struct Publisher {
    target: Target,
    /// The changes of a list under way (`Some` between `Relist` and `RelistDone`).
    staged: Mutex<Option<Staged>>,
}

impl Publisher {
    /// A publisher into `cache` for objects of `api_version`/`kind`.
    pub fn new(cache: TypeCache, api_version: &str, kind: &str) -> Self {
        Publisher {
            target: Target::Fixed(cache, api_version.to_string(), kind.to_string()),
            staged: Mutex::default(),
        }
    }

    /// A publisher that serves each object under the type URL of its own `apiVersion` and
    /// `kind`, making the types in `cache` as they appear.
    pub fn routed(cache: Cache) -> Self {
        Publisher {
            target: Target::Routed(cache),
            staged: Mutex::default(),
        }
    }

    fn value_of(&self, object: &DynamicObject) -> Option<(TypeCache, Value)> {
        let mut value = serde_json::to_value(object).ok()?;
        let obj = value.as_object_mut()?;
        if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("managedFields");
        }
        let tc = match &self.target {
            Target::Fixed(tc, api_version, kind) => {
                obj.entry("apiVersion")
                    .or_insert_with(|| Value::String(api_version.clone()));
                obj.entry("kind").or_insert_with(|| Value::String(kind.clone()));
                tc.clone()
            }
            Target::Routed(cache) => {
                let api_version = obj.get("apiVersion").and_then(Value::as_str)?;
                let kind = obj.get("kind").and_then(Value::as_str)?;
                cache.type_cache(&crwatch::xds::type_url(api_version, kind))
            }
        };
        Some((tc, value))
    }

    fn change_of(
        &self,
        object: &DynamicObject,
        deleted: bool,
    ) -> Option<(TypeCache, String, Option<Arc<Entry>>)> {
        let (tc, value) = self.value_of(object)?;
        let name = crwatch::xds::resource_name(&value)?;
        if deleted {
            return Some((tc, name, None));
        }
        let fallback = tc.current().map(|s| s.version + 1).unwrap_or(1);
        match entry_of(value, fallback) {
            Ok(e) => Some((tc, name, Some(Arc::new(e)))),
            Err(e) => {
                tracing::warn!(type_url = %tc.type_url(), resource = %name, error = %e,
                    "not serving this object (it is withdrawn from subscribers until it can be served)");
                Some((tc, name, None))
            }
        }
    }

    /// Publish `changes`, one version per type touched.
    fn publish(changes: Staged, skip_unpublished: bool) {
        let mut by_type: Vec<(TypeCache, Vec<NamedChange>)> = vec![];
        for (tc, name, entry) in changes {
            match by_type.iter_mut().find(|(t, _)| t.type_url() == tc.type_url()) {
                Some((_, v)) => v.push((name, entry)),
                None => by_type.push((tc, vec![(name, entry)])),
            }
        }
        for (tc, changes) in by_type {
            let current = match tc.current() {
                Some(s) => (*s).clone(),
                // Outside a list, a type never published has no consistent state to extend
                // unless its objects are routed (a new kind appearing in a directory).
                None if !skip_unpublished => TypeSnapshot::empty(tc.type_url(), 0),
                None => continue,
            };
            tc.publish(current.next(changes));
        }
    }

    fn apply(&self, change: Option<(TypeCache, String, Option<Arc<Entry>>)>) {
        let Some(change) = change else { return };
        let mut staged = self.staged.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(staged) = staged.as_mut() {
            staged.push(change);
            return;
        }
        drop(staged);
        Self::publish(vec![change], matches!(self.target, Target::Fixed(..)));
    }

    fn handle_change(&self, change: Change<DynamicObject>) {
        match change {
            Change::Relist => {
                *self.staged.lock().unwrap_or_else(|p| p.into_inner()) = Some(vec![]);
            }
            Change::RelistDone => {
                let staged = self
                    .staged
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take()
                    .unwrap_or_default();
                // The first list publishes the fixed type even when it is empty.
                if let Target::Fixed(tc, ..) = &self.target
                    && tc.current().is_none()
                    && staged.is_empty()
                {
                    tc.publish(TypeSnapshot::empty(tc.type_url(), 0).next(vec![]));
                }
                Self::publish(staged, false);
            }
            Change::Added(o) => self.apply(self.change_of(&o, false)),
            Change::Updated { new, .. } => self.apply(self.change_of(&new, false)),
            Change::Deleted(o) => self.apply(self.change_of(&o, true)),
            // Checkpoints (bookmarks) move the source's resume point, not the served state.
            _ => {}
        }
    }
}

impl AsyncHandler<DynamicObject> for Publisher {
    fn handle(&self, change: Change<DynamicObject>) -> BoxFuture<'_, ()> {
        self.handle_change(change);
        Box::pin(async {})
    }

    fn on_error(&self, error: &SourceError) {
        if error.relist {
            tracing::info!(source = %error.source_name, "relisting: subscribers get the differences as one version");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, version: &str) -> Arc<Entry> {
        Arc::new(Entry {
            name: name.into(),
            version: version.into(),
            any: Any::default(),
            object: Arc::new(Value::Null),
        })
    }

    #[test]
    fn versions_grow_and_the_journal_says_what_changed() {
        let s0 = TypeSnapshot::empty("core/v1/ConfigMap", 5);
        let s1 = s0.next(vec![
            ("a".into(), Some(entry("a", "1"))),
            ("b".into(), Some(entry("b", "1"))),
        ]);
        assert!(s1.version > s0.version);
        let s2 = s1.next(vec![("a".into(), None)]);
        assert!(s2.version > s1.version);
        assert_eq!(s2.entries.len(), 1);
        assert_eq!(
            s2.changed_since(s1.version).unwrap(),
            BTreeSet::from(["a".to_string()])
        );
        assert_eq!(s2.changed_since(s0.version).unwrap().len(), 2);
        assert!(s2.changed_since(s0.version - 1).is_none());
        let mut s = s2.clone();
        for i in 0..JOURNAL_LEN + 1 {
            s = s.next(vec![(format!("n{i}"), Some(entry("x", "1")))]);
        }
        assert!(
            s.changed_since(s2.version).is_none(),
            "beyond the journal: a full comparison"
        );
        assert!(s.changed_since(s.version).unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_list_is_published_as_one_version() {
        let cache = Cache::default();
        let tc = cache.type_cache("core/v1/ConfigMap");
        let p = Publisher::new(tc.clone(), "v1", "ConfigMap");
        let mut rx = cache.subscribe();
        let cm = |name: &str, rv: &str| {
            let v = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": "ns", "resourceVersion": rv}});
            Arc::new(serde_json::from_value::<DynamicObject>(v).unwrap())
        };
        p.handle(Change::Relist).await;
        p.handle(Change::Added(cm("a", "1"))).await;
        p.handle(Change::Added(cm("b", "2"))).await;
        assert!(tc.current().is_none(), "nothing before the list is complete");
        p.handle(Change::RelistDone).await;
        let s = tc.current().unwrap();
        assert_eq!(s.entries.len(), 2);
        assert!(rx.has_changed().unwrap());
        rx.borrow_and_update();
        p.handle(Change::Deleted(cm("a", "1"))).await;
        let s2 = tc.current().unwrap();
        assert_eq!(s2.entries.keys().collect::<Vec<_>>(), vec!["ns/b"]);
        assert!(s2.version > s.version);
        // A relist that changes two objects: one version.
        p.handle(Change::Relist).await;
        p.handle(Change::Added(cm("c", "3"))).await;
        p.handle(Change::Deleted(cm("b", "2"))).await;
        assert_eq!(tc.current().unwrap().version, s2.version);
        p.handle(Change::RelistDone).await;
        let s3 = tc.current().unwrap();
        assert_eq!(s3.entries.keys().collect::<Vec<_>>(), vec!["ns/c"]);
        assert_eq!(s3.changed_since(s2.version).unwrap().len(), 2);
    }

    #[tokio::test]
    async fn routed_objects_go_under_their_own_type_and_an_empty_first_list_is_a_state() {
        let cache = Cache::default();
        let p = Publisher::routed(cache.clone());
        let obj = |av: &str, kind: &str, name: &str| {
            let v = serde_json::json!({"apiVersion": av, "kind": kind, "metadata": {"name": name}});
            Arc::new(serde_json::from_value::<DynamicObject>(v).unwrap())
        };
        p.handle(Change::Relist).await;
        p.handle(Change::Added(obj("v1", "ConfigMap", "a"))).await;
        p.handle(Change::Added(obj("ai.example.com/v1", "PromptTemplate", "t")))
            .await;
        p.handle(Change::RelistDone).await;
        assert_eq!(
            cache.type_urls(),
            ["ai.example.com/v1/PromptTemplate", "core/v1/ConfigMap"]
        );
        assert_eq!(cache.snapshot("core/v1/ConfigMap").unwrap().entries.len(), 1);
        // A kind that appears later is served from then on.
        p.handle(Change::Added(obj("ai.example.com/v1", "ModelConfig", "m")))
            .await;
        assert_eq!(
            cache
                .snapshot("ai.example.com/v1/ModelConfig")
                .unwrap()
                .entries
                .len(),
            1
        );

        let fixed = Cache::default();
        let tc = fixed.type_cache("core/v1/Secret");
        let p = Publisher::new(tc.clone(), "v1", "Secret");
        p.handle(Change::Relist).await;
        p.handle(Change::RelistDone).await;
        assert!(
            tc.current().unwrap().entries.is_empty(),
            "an empty list is the (empty) state"
        );
    }
}
