//! The Kubernetes source: list + watch through kube-runtime's watcher, with resourceVersion
//! tracking, bookmarks, relist on 410 Gone, and reconnect backoff from 800 ms to 30 s.

use std::fmt::Debug;

use futures::StreamExt;
use kube::api::{Api, DynamicObject};
use kube::core::PartialObjectMeta;
use kube::runtime::WatchStreamExt;
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
}

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
        (self.config.label_selector.clone(), self.config.field_selector.clone())
    }

    /// Fetch metadata only (`PartialObjectMetadata`): far less memory for large objects.
    pub fn metadata_only(self) -> MetadataSource<K> {
        MetadataSource {
            api: self.api,
            config: self.config,
            scope: self.scope,
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
        let config = self.config;
        watcher::watcher(self.api, config)
            .default_backoff()
            .map(move |r| r.map_err(|e| to_error(&name, e)))
            .boxed()
    }
}

/// A source of `PartialObjectMeta<K>`: metadata only, from [`KubeSource::metadata_only`].
pub struct MetadataSource<K: Resource> {
    api: Api<K>,
    config: Config,
    scope: String,
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
        stream.default_backoff().map(move |r| r.map_err(|e| to_error(&name, e))).boxed()
    }
}
