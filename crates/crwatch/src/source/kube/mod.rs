//! The Kubernetes source: what to list and watch (a kind, a namespace, selectors, a
//! representation: whole objects, metadata only, or server-side Tables), run by the one
//! list/watch [`engine`]: resume from a checkpoint, relist on 410 Gone or a restarted server,
//! bookmarks, reconnect backoff from 800 ms to 30 s.

pub mod engine;
pub mod table;

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use kube::api::DynamicObject;
use kube::core::PartialObjectMeta;
use kube::discovery::ApiResource;
use kube::{Client, Resource};
use serde::de::DeserializeOwned;

pub use engine::{Columns, Representation, error_kind};
pub use table::TableRow;

use super::{Checkpoint, EventStream, Source};
use engine::{Decode, DecodeRaw, Spec};

/// What to watch and how.
///
/// ```no_run
/// use crwatch::source::kube::KubeSource;
/// use k8s_openapi::api::core::v1::ConfigMap;
/// # fn f(client: kube::Client) {
/// let source = KubeSource::<ConfigMap>::namespaced(client, "default").labels("app=web");
/// # }
/// ```
pub struct KubeSource<K> {
    client: Client,
    spec: Spec,
    scope: String,
    decode: Decode<K>,
    decode_raw: Option<DecodeRaw<K>>,
    resume: Option<Checkpoint>,
    columns: Columns,
}

impl<K> Clone for KubeSource<K> {
    fn clone(&self) -> Self {
        KubeSource {
            client: self.client.clone(),
            spec: self.spec.clone(),
            scope: self.scope.clone(),
            decode: self.decode.clone(),
            decode_raw: self.decode_raw.clone(),
            resume: self.resume.clone(),
            columns: self.columns.clone(),
        }
    }
}

/// Reconnect backoff: exponential from `initial` to `max` with jitter, as client-go's
/// reflector does; it resets after two minutes without errors.
#[derive(Debug, Clone)]
pub struct ReconnectBackoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl ReconnectBackoff {
    /// From `initial`, doubling, up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        ReconnectBackoff {
            initial,
            max,
            next: initial,
        }
    }
}

impl Iterator for ReconnectBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        // Up to +100% jitter (capped at max) so many clients do not reconnect in lockstep.
        let jitter = rand::random_range(0.0..1.0);
        Some(base.mul_f64(1.0 + jitter).min(self.max.max(base)))
    }
}

impl ReconnectBackoff {
    /// Start again from the initial delay (after a success).
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

/// client-go's reflector backoff: 800 ms doubling to 30 s.
pub const DEFAULT_BACKOFF: (Duration, Duration) = (Duration::from_millis(800), Duration::from_secs(30));

fn describe_scope(ns: Option<&str>) -> String {
    match ns {
        Some(ns) => format!("in namespace {ns}"),
        None => "in all namespaces".into(),
    }
}

/// Bounds: server-side watch timeout (seconds) and the largest watch event or list page.
const WATCH_TIMEOUT_SECS: u32 = 290;
const MAX_EVENT_BYTES: usize = 64 << 20;

fn typed_decode<K: DeserializeOwned + Send + 'static>() -> Decode<K> {
    // From a borrowed value, so that a failure can be decoded again to find where.
    Arc::new(|v| {
        K::deserialize(&v).map_err(|_| {
            // Deep objects decode at any depth; the second pass must too.
            explain(serde_path_to_error::deserialize::<_, K>(stacked(&v)).err())
        })
    })
}

/// `de` with a stack that grows on the heap as it recurses (as [`crate::json`] decodes).
fn stacked<'de, D: serde::Deserializer<'de>>(de: D) -> serde_stacker::Deserializer<D> {
    serde_stacker::Deserializer {
        de,
        red_zone: 64 << 10,
        stack_size: 2 << 20,
    }
}

/// A decode failure as it may be shown: where in the object and what kind of value was wrong,
/// never the value (see [`crate::source::redact_decode_message`]). Only failures pay for the
/// second, path-tracking decode.
fn explain(e: Option<serde_path_to_error::Error<serde_json::Error>>) -> serde_json::Error {
    use serde::de::Error as _;
    let Some(e) = e else {
        return serde_json::Error::custom("the object does not match the type");
    };
    let what = crate::source::redact_decode_message(&e.inner().to_string());
    match e.path().to_string() {
        p if p == "." => serde_json::Error::custom(what),
        p => serde_json::Error::custom(format!("{p}: {what}")),
    }
}

/// List items straight from their JSON; `types` fills apiVersion and kind where the server
/// left them out (list items usually come without them).
fn raw_decode<K, F>(fill: F) -> Option<DecodeRaw<K>>
where
    K: DeserializeOwned + Send + 'static,
    F: Fn(&mut K) + Send + Sync + 'static,
{
    Some(Arc::new(move |s| {
        let mut k: K = crate::json::from_str(s).map_err(|_| {
            let mut de = serde_json::Deserializer::from_str(s);
            de.disable_recursion_limit();
            explain(serde_path_to_error::deserialize::<_, K>(stacked(&mut de)).err())
        })?;
        fill(&mut k);
        Ok(k)
    }))
}

/// Set `types` when it is missing.
fn fill_types(types: &mut Option<kube::api::TypeMeta>, api_version: &str, kind: &str) {
    if types.is_none() {
        *types = Some(kube::api::TypeMeta {
            api_version: api_version.to_string(),
            kind: kind.to_string(),
        });
    }
}

impl<K> KubeSource<K>
where
    K: Resource + DeserializeOwned + Send + 'static,
    K::DynamicType: Default,
{
    /// Every object of the kind, in all namespaces (or cluster-scoped).
    pub fn all(client: Client) -> Self {
        Self::new(client, &K::DynamicType::default(), None)
    }

    /// The objects of one namespace.
    pub fn namespaced(client: Client, namespace: &str) -> Self
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    {
        Self::new(client, &K::DynamicType::default(), Some(namespace))
    }
}

impl KubeSource<DynamicObject> {
    /// Untyped objects of any kind, by its [`ApiResource`]; `namespace` `None` means all
    /// namespaces (or a cluster-scoped kind).
    pub fn dynamic(client: Client, resource: &ApiResource, namespace: Option<&str>) -> Self {
        let mut source = KubeSource::new(client, resource, namespace);
        let (av, kind) = (resource.api_version.clone(), resource.kind.clone());
        source.decode_raw = raw_decode(move |o: &mut DynamicObject| fill_types(&mut o.types, &av, &kind));
        source
    }

    /// Server-side Tables instead of objects: each [`TableRow`] has the cells `kubectl get`
    /// prints and the object itself; [`KubeSource::columns`] has the column definitions.
    pub fn tables(self) -> KubeSource<TableRow> {
        self.tables_as(Representation::Table)
    }

    /// Server-side Tables whose rows carry only each object's metadata
    /// (`PartialObjectMetadata`, as `kubectl get` asks for): enough to print and name rows, a
    /// fraction of the memory and bytes of [`KubeSource::tables`] for objects with big specs
    /// or data.
    pub fn tables_metadata(self) -> KubeSource<TableRow> {
        self.tables_as(Representation::TableMetadata)
    }

    fn tables_as(self, representation: Representation) -> KubeSource<TableRow> {
        KubeSource {
            client: self.client,
            spec: Spec {
                representation,
                ..self.spec
            },
            scope: self.scope,
            decode: Arc::new(TableRow::from_value),
            decode_raw: None,
            resume: self.resume,
            columns: self.columns,
        }
    }
}

impl KubeSource<DynamicObject> {
    /// Whole objects as [`TableRow`]s without cells: one type for consumers that take Tables
    /// or plain objects depending on what they print.
    pub fn rows(self) -> KubeSource<TableRow> {
        KubeSource {
            client: self.client,
            spec: self.spec,
            scope: self.scope,
            decode: Arc::new(|object| TableRow::from_value(serde_json::json!({ "object": object }))),
            decode_raw: self.decode_raw.map(|d| -> DecodeRaw<TableRow> {
                Arc::new(move |s| {
                    Ok(TableRow {
                        object: d(s)?,
                        cells: None,
                    })
                })
            }),
            resume: self.resume,
            columns: self.columns,
        }
    }
}

impl<K: Resource + DeserializeOwned + Send + 'static> KubeSource<K> {
    /// The objects of a kind described by `dt`, in `namespace` (`None`: all namespaces, or a
    /// cluster-scoped kind).
    pub fn new(client: Client, dt: &K::DynamicType, namespace: Option<&str>) -> Self {
        KubeSource {
            client,
            spec: Spec {
                url: K::url_path(dt, namespace),
                api_version: K::api_version(dt).into_owned(),
                kind: K::kind(dt).into_owned(),
                labels: None,
                fields: None,
                representation: Representation::Object,
                page_size: 500,
                streaming_lists: false,
                backoff: DEFAULT_BACKOFF,
                watch_timeout: WATCH_TIMEOUT_SECS,
                max_event_bytes: MAX_EVENT_BYTES,
                check_identity: true,
                shard: None,
            },
            scope: describe_scope(namespace),
            decode: typed_decode(),
            decode_raw: raw_decode(|_: &mut K| {}),
            resume: None,
            columns: Columns::default(),
        }
    }

    /// Fetch metadata only (`PartialObjectMetadata`): far less memory for large objects.
    pub fn metadata_only(self) -> KubeSource<PartialObjectMeta<K>>
    where
        K: Clone + Debug,
    {
        KubeSource {
            client: self.client,
            spec: Spec {
                representation: Representation::Metadata,
                ..self.spec
            },
            scope: self.scope,
            decode: typed_decode(),
            decode_raw: raw_decode(|o: &mut PartialObjectMeta<K>| {
                fill_types(&mut o.types, "meta.k8s.io/v1", "PartialObjectMetadata")
            }),
            resume: self.resume,
            columns: self.columns,
        }
    }
}

impl<K> KubeSource<K> {
    /// Only objects matching this label selector (`app=web,tier in (a,b)`).
    pub fn labels(mut self, selector: &str) -> Self {
        self.spec.labels = Some(selector.to_string()).filter(|s| !s.is_empty());
        self
    }

    /// Only objects matching this field selector (`metadata.name=x`).
    pub fn fields(mut self, selector: &str) -> Self {
        self.spec.fields = Some(selector.to_string()).filter(|s| !s.is_empty());
        self
    }

    /// Use the streaming-list protocol (`sendInitialEvents`) instead of paged lists; a server
    /// that does not support it gets paged lists.
    pub fn streaming_lists(mut self) -> Self {
        self.spec.streaming_lists = true;
        self
    }

    /// Reconnect backoff after errors, from `initial` doubling to `max` (default 800 ms to 30 s).
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.spec.backoff = (initial.max(Duration::from_millis(1)), max.max(initial));
        self
    }

    /// List page size (default 500; 0 lists everything at once).
    pub fn page_size(mut self, size: u32) -> Self {
        self.spec.page_size = size;
        self
    }

    /// Server-side watch timeout (default 290 s; 1 s to 1 h): the watch is then resumed from
    /// its last resourceVersion.
    pub fn watch_timeout(mut self, timeout: Duration) -> Self {
        self.spec.watch_timeout = timeout.as_secs().clamp(1, 3600) as u32;
        self
    }

    /// The largest watch event the source accepts (default 64 MiB, at least 64 KiB); a larger
    /// one breaks the watch off with an error instead of growing memory without bound.
    pub fn max_event_bytes(mut self, bytes: usize) -> Self {
        self.spec.max_event_bytes = bytes.max(64 << 10);
        self
    }

    /// Send `ring`'s `shardSelector` with every list and watch (KEP-5866), and list again
    /// whenever it changes. A server without the `ShardedListAndWatch` feature ignores it and
    /// sends everything; [`ShardRing::mode`](crate::shard::ShardRing::mode) tells which.
    pub fn shard(mut self, ring: &crate::shard::ShardRing) -> Self {
        self.spec.shard = Some(engine::ShardSpec {
            selector: ring.selector(),
            honoured: ring.server_side_sender(),
        });
        self
    }

    /// Do not read the `kube-system` namespace to tell a restarted server from the one a
    /// checkpoint came from (for clients that may not read namespaces). Versions that go
    /// backwards and versions the server has not reached are still detected.
    pub fn without_identity_check(mut self) -> Self {
        self.spec.check_identity = false;
        self
    }

    /// The column definitions of the last Table the server sent (for [`KubeSource::tables`]).
    pub fn columns(&self) -> Columns {
        self.columns.clone()
    }

    /// The API path and scope, for keying shared informers.
    pub fn describe_url(&self) -> String {
        format!("{} {}", self.spec.url, self.scope)
    }

    /// The selectors, for keying shared informers.
    pub fn selectors(&self) -> (Option<String>, Option<String>) {
        (self.spec.labels.clone(), self.spec.fields.clone())
    }

    /// How objects are fetched.
    pub fn representation(&self) -> Representation {
        self.spec.representation
    }
}

impl<K: Send + 'static> Source<K> for KubeSource<K> {
    fn describe(&self) -> String {
        let what = match self.spec.representation {
            Representation::Object => "",
            Representation::Metadata => " (metadata)",
            Representation::Table => " (table)",
            Representation::TableMetadata => " (table, metadata)",
        };
        format!("{} {}{what}", self.spec.url, self.scope)
    }

    fn resume(&mut self, checkpoint: &Checkpoint) -> bool {
        self.resume = Some(checkpoint.clone());
        true
    }

    fn shard(&mut self, ring: &crate::shard::ShardRing) -> bool {
        self.spec.shard = Some(engine::ShardSpec {
            selector: ring.selector(),
            honoured: ring.server_side_sender(),
        });
        true
    }

    fn events(self: Box<Self>) -> EventStream<K> {
        let name = self.describe();
        let this = *self;
        engine::start(
            this.client,
            this.spec,
            name,
            this.resume,
            this.decode,
            this.decode_raw,
            this.columns,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap_and_resets() {
        let mut b = ReconnectBackoff::new(Duration::from_millis(800), Duration::from_secs(30));
        let first: Vec<Duration> = (&mut b).take(10).collect();
        for (i, d) in first.iter().enumerate() {
            let base = Duration::from_millis(800) * 2u32.pow(i as u32);
            let base = base.min(Duration::from_secs(30));
            assert!(
                *d >= base && *d <= (base * 2).min(Duration::from_secs(30)).max(base),
                "step {i}: {d:?}"
            );
        }
        assert_eq!(first[9], Duration::from_secs(30));
        b.reset();
        let again = b.next().unwrap();
        assert!(again >= Duration::from_millis(800) && again <= Duration::from_millis(1600));
    }
}
