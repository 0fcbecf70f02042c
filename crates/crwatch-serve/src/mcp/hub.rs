//! The state every `crwatch mcp` session shares: the informers of the watched resources
//! (`-r`), the bounded history of their objects, the change events sessions turn into
//! notifications, discovery for everything else, and paging over the watched objects.
//!
//! Watched objects come from crwatch informers over the one list/watch engine; nothing here
//! opens a watch. Objects of types that are not watched are read from the API server on
//! demand (found through [`crwatch::discovery`]).
//!
//! Change events go out through one bounded broadcast ring of `queue` events. A session that
//! falls `queue` events behind loses the oldest ones and is told so
//! ([`tokio::sync::broadcast::error::RecvError::Lagged`]); since every MCP change notification
//! is a level trigger ("this changed, read it again"), the session then notifies a list
//! change and an update of every URI it subscribed to, and nothing grows without bound.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crwatch::discovery::{ResourceType, discover, resolve};
use crwatch::informer::{AsyncHandler, Change, Informer};
use crwatch::source::kube::KubeSource;
use crwatch::store::ObjectKey;
use futures::future::BoxFuture;
use kube::api::{Api, DynamicObject};
use serde_json::Value;
use tokio::sync::{RwLock, broadcast};
use tokio_util::sync::CancellationToken;

use super::history::{History, VERSIONS_PER_OBJECT_RANGE};
use super::redact::redact;
use super::uri::ObjectUri;

/// Resources per `resources/list` page unless configured otherwise.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// The range `--page-size` accepts.
pub const PAGE_SIZE_RANGE: std::ops::RangeInclusive<usize> = 1..=1000;
/// Change events kept for slow sessions unless configured otherwise.
pub const DEFAULT_QUEUE: usize = 1024;
/// The range `--queue` accepts.
pub const QUEUE_RANGE: std::ops::RangeInclusive<usize> = 16..=65536;
/// How long start-up waits for the watched resources' first lists.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(120);

/// What `crwatch mcp` serves.
#[derive(Debug, Clone)]
pub struct McpConfig {
    /// Resources to watch (and offer as MCP resources), named as `crwatch get` names them.
    pub resources: Vec<String>,
    /// Namespace of the watched namespaced resources (`None`: the kubeconfig context's).
    pub namespace: Option<String>,
    /// Watch namespaced resources in all namespaces.
    pub all_namespaces: bool,
    /// Label selector of the watched resources.
    pub selector: Option<String>,
    /// Offer the `apply` and `patch` tools.
    pub allow_writes: bool,
    /// Resources per `resources/list` page ([`PAGE_SIZE_RANGE`]).
    pub page_size: usize,
    /// Versions kept per object for `diff` ([`VERSIONS_PER_OBJECT_RANGE`]).
    pub history: usize,
    /// Change events kept for slow sessions ([`QUEUE_RANGE`]).
    pub queue: usize,
}

impl Default for McpConfig {
    fn default() -> Self {
        McpConfig {
            resources: vec![],
            namespace: None,
            all_namespaces: false,
            selector: None,
            allow_writes: false,
            page_size: DEFAULT_PAGE_SIZE,
            history: super::history::DEFAULT_VERSIONS_PER_OBJECT,
            queue: DEFAULT_QUEUE,
        }
    }
}

impl McpConfig {
    /// Check the numeric settings.
    pub fn validate(&self) -> Result<(), HubError> {
        let check = |name: &'static str, v: usize, r: std::ops::RangeInclusive<usize>| {
            if r.contains(&v) {
                Ok(())
            } else {
                Err(HubError::OutOfRange {
                    name,
                    value: v,
                    min: *r.start(),
                    max: *r.end(),
                })
            }
        };
        check("--page-size", self.page_size, PAGE_SIZE_RANGE)?;
        check("--history", self.history, VERSIONS_PER_OBJECT_RANGE)?;
        check("--queue", self.queue, QUEUE_RANGE)
    }
}

/// Why the hub could not start, or a type could not be found.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// A setting is out of range.
    #[error("{name} {value} is out of range: use {min} to {max}")]
    OutOfRange {
        /// The flag.
        name: &'static str,
        /// The value given.
        value: usize,
        /// Smallest allowed.
        min: usize,
        /// Largest allowed.
        max: usize,
    },
    /// Discovery failed.
    #[error("discovering the API server's resource types: {0:#}")]
    Discovery(anyhow::Error),
    /// A resource name is not served.
    #[error("{0}")]
    Resolve(#[from] crwatch::discovery::ResolveError),
    /// A group/version/kind is not served.
    #[error(
        "the server does not serve kind {kind} in {api_version} (check the URI's group, version and kind)"
    )]
    NoKind {
        /// `group/version`.
        api_version: String,
        /// Kind.
        kind: String,
    },
}

/// A change event: what sessions turn into notifications.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HubEvent {
    /// The object at this URI changed (added, updated or deleted).
    Updated(String),
    /// The set of watched objects changed.
    ListChanged,
}

/// One watched resource.
struct Watched {
    rt: ResourceType,
    informer: Informer<DynamicObject>,
}

/// What the informers' handlers write to.
struct Shared {
    history: Mutex<History>,
    events: broadcast::Sender<HubEvent>,
}

/// The state shared by all sessions. Cheap to share (`Arc`).
pub struct Hub {
    client: kube::Client,
    default_namespace: String,
    config: McpConfig,
    types: RwLock<Option<Arc<Vec<ResourceType>>>>,
    watched: Vec<Watched>,
    shared: Arc<Shared>,
    cancel: CancellationToken,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field(
                "watched",
                &self.watched.iter().map(|w| w.rt.full_name()).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// Lock a mutex whose data stays consistent even if a holder panicked (every critical
/// section here is a single insert/remove/lookup).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The JSON an object is served as: apiVersion and kind filled in, redacted.
pub fn served_json(object: &DynamicObject, rt: &ResourceType) -> Value {
    let mut v = serde_json::to_value(object).unwrap_or(Value::Null);
    if let Some(o) = v.as_object_mut() {
        let av = rt.api_resource().api_version;
        o.entry("apiVersion").or_insert_with(|| Value::String(av));
        o.entry("kind").or_insert_with(|| Value::String(rt.kind.clone()));
    }
    redact(&mut v);
    v
}

/// The URI of an object of type `rt`.
pub fn uri_of(object: &DynamicObject, rt: &ResourceType) -> ObjectUri {
    ObjectUri::new(
        &rt.group,
        &rt.version,
        &rt.kind,
        object.metadata.namespace.as_deref(),
        object.metadata.name.as_deref().unwrap_or_default(),
    )
}

/// Records every change of one watched resource in the history and announces it.
struct Recorder {
    rt: ResourceType,
    shared: Arc<Shared>,
}

impl Recorder {
    fn record(&self, object: &DynamicObject) -> String {
        let uri = uri_of(object, &self.rt);
        let rv = object.metadata.resource_version.clone().unwrap_or_default();
        let value = Arc::new(served_json(object, &self.rt));
        lock(&self.shared.history).record(&uri, &rv, value);
        uri.to_string()
    }

    fn announce(&self, event: HubEvent) {
        // No session listening is not an error: nothing to tell.
        let _ = self.shared.events.send(event);
    }
}

impl AsyncHandler<DynamicObject> for Recorder {
    fn handle(&self, change: Change<DynamicObject>) -> BoxFuture<'_, ()> {
        match change {
            Change::Added(o) => {
                let uri = self.record(&o);
                self.announce(HubEvent::ListChanged);
                self.announce(HubEvent::Updated(uri));
            }
            Change::Updated { new, .. } => {
                let uri = self.record(&new);
                self.announce(HubEvent::Updated(uri));
            }
            Change::Deleted(o) => {
                let uri = uri_of(&o, &self.rt);
                lock(&self.shared.history).forget(&uri);
                self.announce(HubEvent::ListChanged);
                self.announce(HubEvent::Updated(uri.to_string()));
            }
            // Relists arrive as the differences above; checkpoints need nothing here.
            _ => {}
        }
        Box::pin(std::future::ready(()))
    }
}

impl Hub {
    /// Resolve and start the informers of `config.resources`, and wait (up to
    /// [`SYNC_TIMEOUT`]) for their first lists. `default_namespace` is the kubeconfig
    /// context's.
    pub async fn start(
        client: kube::Client,
        default_namespace: String,
        config: McpConfig,
    ) -> Result<Arc<Hub>, HubError> {
        config.validate()?;
        let (events, _) = broadcast::channel(config.queue);
        let shared = Arc::new(Shared {
            history: Mutex::new(History::new(config.history)),
            events,
        });
        let cancel = CancellationToken::new();
        let mut hub = Hub {
            client,
            default_namespace,
            config,
            types: RwLock::new(None),
            watched: vec![],
            shared,
            cancel,
        };
        if !hub.config.resources.is_empty() {
            let types = hub.types().await?;
            let mut seen = HashSet::new();
            for name in hub.config.resources.clone() {
                let rt = resolve(&types, &name)?;
                if !seen.insert((rt.group.clone(), rt.kind.clone())) {
                    continue;
                }
                let namespace = hub.watch_namespace(&rt);
                let mut source = KubeSource::<DynamicObject>::dynamic(
                    hub.client.clone(),
                    &rt.api_resource(),
                    namespace.as_deref(),
                );
                if let Some(l) = &hub.config.selector {
                    source = source.labels(l);
                }
                let informer = Informer::new(source);
                informer.set_transform(Some(Arc::new(
                    crwatch::informer::drop_managed_fields::<DynamicObject>,
                )));
                informer.add_async_handler(Recorder {
                    rt: rt.clone(),
                    shared: hub.shared.clone(),
                });
                informer.start(hub.cancel.child_token());
                hub.watched.push(Watched { rt, informer });
            }
            // All at once: one resource that cannot be listed costs SYNC_TIMEOUT once.
            let waits = hub.watched.iter().map(|w| async move {
                if let Err(e) = w.informer.wait_synced(SYNC_TIMEOUT).await {
                    tracing::warn!(resource = %w.rt.full_name(), "{e}; serving what is listed so far");
                }
            });
            futures::future::join_all(waits).await;
        }
        Ok(Arc::new(hub))
    }

    /// The namespace watched for `rt` (`None`: all, or cluster-scoped).
    fn watch_namespace(&self, rt: &ResourceType) -> Option<String> {
        match (rt.namespaced, self.config.all_namespaces) {
            (true, false) => Some(
                self.config
                    .namespace
                    .clone()
                    .unwrap_or_else(|| self.default_namespace.clone()),
            ),
            _ => None,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &McpConfig {
        &self.config
    }

    /// The Kubernetes client.
    pub fn client(&self) -> &kube::Client {
        &self.client
    }

    /// The namespace tools use when none is given.
    pub fn default_namespace(&self) -> &str {
        self.config
            .namespace
            .as_deref()
            .unwrap_or(&self.default_namespace)
    }

    /// A receiver of change events (see the module docs for its bound).
    pub fn subscribe(&self) -> broadcast::Receiver<HubEvent> {
        self.shared.events.subscribe()
    }

    /// A token cancelled when the hub stops.
    pub fn stopping(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Stop the informers.
    pub fn stop(&self) {
        self.cancel.cancel();
    }

    /// The watched resources whose first list has not completed (RBAC, connectivity): they
    /// are served as far as listed, and keep retrying.
    pub fn unsynced(&self) -> Vec<String> {
        self.watched
            .iter()
            .filter(|w| !w.informer.has_synced())
            .map(|w| w.rt.full_name())
            .collect()
    }

    /// The names of the watched resources (`plural.group`).
    pub fn watched_names(&self) -> Vec<String> {
        self.watched.iter().map(|w| w.rt.full_name()).collect()
    }

    /// Every resource type the server serves (discovered once, again when a name is not
    /// found: a CRD may have been installed since).
    pub async fn types(&self) -> Result<Arc<Vec<ResourceType>>, HubError> {
        if let Some(t) = self.types.read().await.as_ref() {
            return Ok(t.clone());
        }
        self.rediscover().await
    }

    async fn rediscover(&self) -> Result<Arc<Vec<ResourceType>>, HubError> {
        let types = Arc::new(discover(&self.client).await.map_err(HubError::Discovery)?);
        *self.types.write().await = Some(types.clone());
        Ok(types)
    }

    /// The type a kubectl-style name stands for.
    pub async fn resolve(&self, name: &str) -> Result<ResourceType, HubError> {
        match resolve(&self.types().await?, name) {
            Ok(rt) => Ok(rt),
            Err(_) => Ok(resolve(&self.rediscover().await?, name)?),
        }
    }

    /// The type of a group/version/kind.
    pub async fn type_of(&self, group: &str, version: &str, kind: &str) -> Result<ResourceType, HubError> {
        let find = |types: &[ResourceType]| {
            types
                .iter()
                .find(|t| t.group == group && t.version == version && t.kind == kind)
                .cloned()
        };
        if let Some(rt) = find(&self.types().await?) {
            return Ok(rt);
        }
        find(&self.rediscover().await?).ok_or_else(|| HubError::NoKind {
            api_version: if group.is_empty() {
                version.to_owned()
            } else {
                format!("{group}/{version}")
            },
            kind: kind.to_owned(),
        })
    }

    fn watched_for(&self, uri: &ObjectUri) -> Option<&Watched> {
        self.watched.iter().find(|w| {
            w.rt.group == uri.group
                && w.rt.version == uri.version
                && w.rt.kind == uri.kind
                && match (self.watch_namespace(&w.rt), &uri.namespace) {
                    (None, _) => true,
                    (Some(ns), Some(u)) => &ns == u,
                    (Some(_), None) => false,
                }
        })
    }

    /// Whether `uri` is an object of a watched resource (and so can be subscribed to).
    pub fn is_watched(&self, uri: &ObjectUri) -> bool {
        self.watched_for(uri).is_some()
    }

    /// The watched informer's current object at `uri`: `Some(None)` when watched and absent,
    /// `None` when not watched.
    pub fn cached(&self, uri: &ObjectUri) -> Option<Option<Value>> {
        let w = self.watched_for(uri)?;
        let key = ObjectKey::new(uri.namespace.as_deref(), &uri.name);
        Some(w.informer.store().get(&key).map(|o| served_json(&o, &w.rt)))
    }

    /// The object at `uri` (`None`: not found): from the watched informer if it has it, else
    /// from the API server (an object outside `-l`, or one the watch has not delivered yet).
    pub async fn read(&self, uri: &ObjectUri) -> Result<Option<Value>, ReadError> {
        if let Some(Some(cached)) = self.cached(uri) {
            return Ok(Some(cached));
        }
        let rt = self.type_of(&uri.group, &uri.version, &uri.kind).await?;
        self.get(&rt, uri.namespace.as_deref(), &uri.name).await
    }

    /// The object at `uri` from the API server (`None`: not found), whether watched or not:
    /// what the tools read, so a call sees the writes before it (the watch cache may not
    /// have them yet).
    pub async fn read_fresh(&self, uri: &ObjectUri) -> Result<Option<Value>, ReadError> {
        let rt = self.type_of(&uri.group, &uri.version, &uri.kind).await?;
        self.get(&rt, uri.namespace.as_deref(), &uri.name).await
    }

    /// An object of type `rt` from the API server (`None`: not found).
    pub async fn get(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<Value>, ReadError> {
        let api = self.api(rt, namespace);
        match api.get_opt(name).await {
            Ok(Some(o)) => Ok(Some(served_json(&o, rt))),
            Ok(None) => Ok(None),
            Err(e) => Err(ReadError::Api(e)),
        }
    }

    /// The dynamic API of `rt` in `namespace` (ignored for cluster-scoped types).
    pub fn api(&self, rt: &ResourceType, namespace: Option<&str>) -> Api<DynamicObject> {
        let ar = rt.api_resource();
        match (rt.namespaced, namespace) {
            (true, Some(ns)) => Api::namespaced_with(self.client.clone(), ns, &ar),
            (true, None) => Api::all_with(self.client.clone(), &ar),
            (false, _) => Api::all_with(self.client.clone(), &ar),
        }
    }

    /// Every watched object's URI, sorted.
    pub fn watched_uris(&self) -> Vec<(ObjectUri, Arc<DynamicObject>)> {
        let mut all: Vec<_> = self
            .watched
            .iter()
            .flat_map(|w| {
                w.informer
                    .store()
                    .list()
                    .into_iter()
                    .map(|o| (uri_of(&o, &w.rt), o))
                    .collect::<Vec<_>>()
            })
            .collect();
        all.sort_by_cached_key(|a| a.0.to_string());
        all
    }

    /// The watched objects owned by `uid` (ownerReferences).
    pub fn owned_by(&self, uid: &str) -> Vec<Value> {
        let mut out = vec![];
        for w in &self.watched {
            for o in w.informer.store().list() {
                let owned = o
                    .metadata
                    .owner_references
                    .as_ref()
                    .is_some_and(|refs| refs.iter().any(|r| r.uid == uid));
                if owned {
                    out.push(served_json(&o, &w.rt));
                }
            }
        }
        out
    }

    /// What changed in a watched object since `resource_version`.
    pub fn since(
        &self,
        uri: &ObjectUri,
        resource_version: &str,
    ) -> Result<super::history::Since, super::history::HistoryError> {
        lock(&self.shared.history).since(uri, resource_version)
    }

    /// Whether the history of `uri` holds version `resource_version`.
    pub fn history_has(&self, uri: &ObjectUri, resource_version: &str) -> bool {
        lock(&self.shared.history)
            .versions(uri)
            .iter()
            .any(|rv| rv == resource_version)
    }

    /// The history bound.
    pub fn history_bound(&self) -> usize {
        lock(&self.shared.history).per_object()
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Why an object could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The type is unknown.
    #[error(transparent)]
    Type(#[from] HubError),
    /// The API server refused.
    #[error("reading from the API server: {0}")]
    Api(kube::Error),
}

/// One page of `items` (sorted by key) after `cursor` (the last key of the previous page),
/// at most `page_size` long, and the cursor of the next page if there is one.
///
/// The cursor is the last key served, so a page never repeats or skips an object that
/// stayed while others came and went.
///
/// ```
/// use crwatch_serve::mcp::hub::page;
///
/// let keys = ["a", "b", "c"];
/// let (first, next) = page(&keys, |k| k.to_string(), None, 2);
/// assert_eq!((first, next.as_deref()), (vec![&"a", &"b"], Some("b")));
/// let (rest, next) = page(&keys, |k| k.to_string(), next.as_deref(), 2);
/// assert_eq!((rest, next), (vec![&"c"], None));
/// ```
pub fn page<'a, T>(
    items: &'a [T],
    key: impl Fn(&T) -> String,
    cursor: Option<&str>,
    page_size: usize,
) -> (Vec<&'a T>, Option<String>) {
    let start = match cursor {
        Some(c) => items.partition_point(|i| key(i).as_str() <= c),
        None => 0,
    };
    let end = (start + page_size.max(1)).min(items.len());
    let out: Vec<&T> = items[start..end].iter().collect();
    let next = (end < items.len()).then(|| out.last().map(|i| key(i))).flatten();
    (out, next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_cover_everything_once_even_when_items_change() {
        let mut items: Vec<String> = (0..25).map(|i| format!("k{i:02}")).collect();
        let (p1, c1) = page(&items, Clone::clone, None, 10);
        let n1 = p1.len();
        assert_eq!(n1, 10);
        assert_eq!(c1.as_deref(), Some("k09"));
        // An item before the cursor goes, one after it comes: nothing repeats or is skipped.
        items.remove(3);
        items.push("k99".into());
        let (p2, c2) = page(&items, Clone::clone, c1.as_deref(), 10);
        assert_eq!(p2.first().map(|s| s.as_str()), Some("k10"));
        let (p3, c3) = page(&items, Clone::clone, c2.as_deref(), 10);
        assert_eq!(p3.last().map(|s| s.as_str()), Some("k99"));
        assert_eq!(c3, None);
        assert_eq!(n1 + p2.len() + p3.len(), 26);
    }

    #[test]
    fn empty_and_exact_pages() {
        let none: Vec<String> = vec![];
        assert_eq!(page(&none, Clone::clone, None, 5), (vec![], None));
        let five: Vec<String> = (0..5).map(|i| i.to_string()).collect();
        let (p, c) = page(&five, Clone::clone, None, 5);
        assert_eq!((p.len(), c), (5, None));
        // A cursor past the end: an empty last page.
        assert_eq!(page(&five, Clone::clone, Some("9"), 5), (vec![], None));
    }

    #[test]
    fn settings_are_range_checked() {
        let ok = McpConfig::default();
        assert!(ok.validate().is_ok());
        let bad = McpConfig {
            page_size: 0,
            ..McpConfig::default()
        };
        assert_eq!(
            bad.validate().unwrap_err().to_string(),
            "--page-size 0 is out of range: use 1 to 1000"
        );
        let bad = McpConfig {
            queue: 1,
            ..McpConfig::default()
        };
        assert!(bad.validate().is_err());
    }
}
