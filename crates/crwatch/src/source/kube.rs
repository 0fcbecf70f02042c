//! The Kubernetes source: list + watch through kube-runtime's watcher, with resourceVersion
//! tracking, bookmarks, relist on 410 Gone, and reconnect backoff from 800 ms to 30 s.

use std::fmt::Debug;

use futures::StreamExt;
use kube::api::{Api, DynamicObject};
use kube::core::PartialObjectMeta;
use std::time::Duration;

use kube::runtime::WatchStreamExt;
use kube::runtime::utils::{Backoff, ResetTimerBackoff};
use kube::runtime::watcher::{self, Config};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;

use super::{EventStream, Source, SourceError};

/// What to watch and how.
///
/// ```no_run
/// use crwatch::source::kube::KubeSource;
/// use k8s_openapi::api::core::v1::ConfigMap;
/// # fn f(client: kube::Client) {
/// let source = KubeSource::<ConfigMap>::namespaced(client, "default").labels("app=web");
/// # }
/// ```
#[derive(Clone)]
pub struct KubeSource<K: Resource> {
    api: Api<K>,
    config: Config,
    scope: String,
    backoff: (Duration, Duration),
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

impl Backoff for ReconnectBackoff {
    fn reset(&mut self) {
        self.next = self.initial;
    }
}

fn backoff_of(b: (Duration, Duration)) -> ResetTimerBackoff<ReconnectBackoff> {
    ResetTimerBackoff::new(ReconnectBackoff::new(b.0, b.1), Duration::from_secs(120))
}

/// client-go's reflector backoff: 800 ms doubling to 30 s.
pub const DEFAULT_BACKOFF: (Duration, Duration) = (Duration::from_millis(800), Duration::from_secs(30));

fn describe_scope(ns: Option<&str>) -> String {
    match ns {
        Some(ns) => format!("in namespace {ns}"),
        None => "in all namespaces".into(),
    }
}

impl<K> KubeSource<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default,
{
    /// Every object of the kind, in all namespaces (or cluster-scoped).
    pub fn all(client: Client) -> Self {
        Self::from_api(Api::all(client), None)
    }

    /// The objects of one namespace.
    pub fn namespaced(client: Client, namespace: &str) -> Self
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    {
        Self::from_api(Api::namespaced(client, namespace), Some(namespace))
    }
}

impl KubeSource<DynamicObject> {
    /// Untyped objects of any kind, by its [`kube::discovery::ApiResource`]; `namespace`
    /// `None` means all namespaces.
    pub fn dynamic(client: Client, resource: &kube::discovery::ApiResource, namespace: Option<&str>) -> Self {
        let api = match namespace {
            Some(ns) => Api::namespaced_with(client, ns, resource),
            None => Api::all_with(client, resource),
        };
        KubeSource::from_api(api, namespace)
    }
}

impl<K: Resource> KubeSource<K> {
    /// Watch through a given `Api` (its scope decides the namespace).
    pub fn from_api(api: Api<K>, namespace: Option<&str>) -> Self {
        KubeSource {
            api,
            config: Config::default(),
            scope: describe_scope(namespace),
            backoff: DEFAULT_BACKOFF,
        }
    }

    /// Only objects matching this label selector (`app=web,tier in (a,b)`).
    pub fn labels(mut self, selector: &str) -> Self {
        self.config = self.config.labels(selector);
        self
    }

    /// Only objects matching this field selector (`metadata.name=x`).
    pub fn fields(mut self, selector: &str) -> Self {
        self.config = self.config.fields(selector);
        self
    }

    /// Use the streaming-list protocol (`sendInitialEvents`) instead of paged lists.
    pub fn streaming_lists(mut self) -> Self {
        self.config = self.config.streaming_lists();
        self
    }

    /// Reconnect backoff after errors, from `initial` doubling to `max` (default 800 ms to 30 s).
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff = (initial, max);
        self
    }

    /// List page size (default 500).
    pub fn page_size(mut self, size: u32) -> Self {
        self.config = self.config.page_size(size);
        self
    }

    /// The API path and scope, for keying shared informers.
    pub fn describe_url(&self) -> String {
        format!("{} {}", self.api.resource_url(), self.scope)
    }

    /// The selectors, for keying shared informers.
    pub fn selectors(&self) -> (Option<String>, Option<String>) {
        (
            self.config.label_selector.clone(),
            self.config.field_selector.clone(),
        )
    }

    /// Fetch metadata only (`PartialObjectMetadata`): far less memory for large objects.
    pub fn metadata_only(self) -> MetadataSource<K> {
        MetadataSource {
            api: self.api,
            config: self.config,
            scope: self.scope,
            backoff: self.backoff,
        }
    }
}

fn to_error(name: &str, e: watcher::Error) -> SourceError {
    let relist = matches!(&e, watcher::Error::WatchError(s) if s.code == 410);
    SourceError {
        source_name: name.to_string(),
        message: e.to_string(),
        relist,
    }
}

impl<K> Source<K> for KubeSource<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    fn describe(&self) -> String {
        format!("{} {}", self.api.resource_url(), self.scope)
    }

    fn events(self: Box<Self>) -> EventStream<K> {
        let name = self.describe();
        watcher::watcher(self.api, self.config)
            .backoff(backoff_of(self.backoff))
            .map(move |r| r.map(from_watcher).map_err(|e| to_error(&name, e)))
            .boxed()
    }
}

fn from_watcher<K>(e: watcher::Event<K>) -> super::Event<K> {
    match e {
        watcher::Event::Init => super::Event::Init,
        watcher::Event::InitApply(o) => super::Event::InitApply(o),
        watcher::Event::InitDone => super::Event::InitDone,
        watcher::Event::Apply(o) => super::Event::Apply(o),
        watcher::Event::Delete(o) => super::Event::Delete(o),
    }
}

/// A source of `PartialObjectMeta<K>`: metadata only, from [`KubeSource::metadata_only`].
pub struct MetadataSource<K: Resource> {
    api: Api<K>,
    config: Config,
    scope: String,
    backoff: (Duration, Duration),
}

impl<K> Source<PartialObjectMeta<K>> for MetadataSource<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    fn describe(&self) -> String {
        format!("{} {} (metadata)", self.api.resource_url(), self.scope)
    }

    fn events(self: Box<Self>) -> EventStream<PartialObjectMeta<K>> {
        let name = self.describe();
        // kube 5 suggests `Api<PartialObjectMeta<K>>`, which cannot be built from an `Api<K>`
        // of every scope; this function does the same metadata-only requests.
        #[allow(deprecated)]
        let stream = watcher::metadata_watcher(self.api, self.config);
        stream
            .backoff(backoff_of(self.backoff))
            .map(move |r| r.map(from_watcher).map_err(|e| to_error(&name, e)))
            .boxed()
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
