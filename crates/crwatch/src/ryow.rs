//! Read-your-own-writes for reconcilers (KEP-5647, "stale controller"): what a reconcile wrote,
//! and waiting until the informer caches have seen it before the same key is reconciled again.
//!
//! A reconcile creates a child or updates a status; the next reconcile of that key can start
//! before the informer has received the watch event for that write, read the stale cache and
//! act twice (create a second child, bump a counter twice). Client libraries paper over it with
//! sleeps. Here:
//!
//! 1. A tracking client ([`TrackingLayer`] in a client's stack, or [`tracking`] around a
//!    finished [`kube::Client`]): every mutating request (POST, PUT, PATCH, DELETE) made
//!    *inside* [`record`] whose answer is a 2xx object (or, for a DELETE, a `Status`) is noted
//!    as a [`Write`] (what object, which resourceVersion and uid, deleted or not) in that
//!    reconcile's [`Writes`]. [`crate::client::build`] (hence
//!    [`crate::client::from_kubeconfig`]) adds the layer, so it is on by default.
//!    Outside [`record`] the wrapper passes requests and responses through untouched (no
//!    buffering); inside, it buffers a mutating request's response body up to
//!    [`MAX_TRACKED_BODY`] to read its metadata and hands the same bytes on. Bodies are never
//!    logged.
//! 2. The controller runs each reconcile in [`record`] and keeps its [`Writes`] for the key.
//! 3. Before reconciling that key again it calls [`wait_caught_up`] with the caches it reads
//!    from ([`Freshness`], e.g. [`informer_freshness`]): it returns as soon as every cache that
//!    holds the written kinds shows each write (the cached object's resourceVersion is at least
//!    the written one; a deleted object is gone), woken by the stores' change notifications
//!    ([`Store::changed`]), never by polling, or gives up after a timeout. The metrics are
//!    [`crate::metrics::CacheWaitMetrics`].
//!
//! resourceVersions are compared as unsigned integers when both parse, as KEP-5647 allows
//! (every Kubernetes API server and crwatch-apiserver use etcd-style revisions); otherwise only
//! equality (or a different uid under the name) counts.
//!
//! Caveats: writes made from another task than the reconcile's (a `tokio::spawn` inside it)
//! are not seen (the log is a task-local); a write that makes an object leave a cache's label
//! or field selector counts as seen once the key is absent from that cache, but a *created*
//! object the cache's selector never admits is only seen through the informer's position
//! ([`informer_freshness`]: the last resourceVersion it is current to), so such a wait can last
//! until the timeout when no other event for that resource arrives; collection deletes
//! (`DELETE` without a name) and dry runs are not tracked.

use std::cell::RefCell;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body as TrackedBody, Bytes, HttpBody};
use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};
use http_body_util::BodyExt;
use kube::Resource;
use serde::Serialize;

use crate::informer::Informer;
use crate::store::{ObjectKey, Store};

/// The largest response body [`tracking`] buffers to read a write's metadata: a bigger answer
/// is passed on as it streams and its write is not recorded (the wait then skips it).
pub const MAX_TRACKED_BODY: usize = 16 << 20;

/// The most objects one reconcile's [`Writes`] keeps (the latest write per object); more are
/// counted in [`Writes::dropped`] and not waited for.
pub const MAX_WRITES: usize = 256;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One object a reconcile wrote, as the API server answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    /// `group/version` (or `v1` for the core group) from the request's path.
    pub api_version: String,
    /// The resource's plural name from the request's path (`configmaps`).
    pub resource: String,
    /// The kind the server answered with; `None` for subresources (their answer is another
    /// kind, e.g. `Scale`) and deletions answered by a `Status`.
    pub kind: Option<String>,
    /// The namespace; `None` for cluster-scoped objects.
    pub namespace: Option<String>,
    /// The object's name.
    pub name: String,
    /// The object's uid, when the answer had one.
    pub uid: Option<String>,
    /// The resourceVersion the write produced (`None` only for deletions answered by a
    /// `Status`).
    pub resource_version: Option<String>,
    /// The object is gone (a DELETE that no finalizer or grace period held back).
    pub deleted: bool,
    /// This log saw the object created (POST), so its absence from a cache means the cache
    /// has not caught up yet, not that it was deleted or filtered out.
    pub created: bool,
}

impl Write {
    /// The API group (`""` for the core group).
    pub fn group(&self) -> &str {
        self.api_version.rsplit_once('/').map_or("", |(g, _)| g)
    }

    /// The cache key of the object written.
    pub fn key(&self) -> ObjectKey {
        ObjectKey::new(self.namespace.as_deref(), &self.name)
    }

    fn same_object(&self, other: &Write) -> bool {
        self.name == other.name
            && self.namespace == other.namespace
            && self.resource == other.resource
            && self.group() == other.group()
    }
}

/// The writes of one reconcile: the latest write per object, at most [`MAX_WRITES`] objects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Writes {
    writes: Vec<Write>,
    dropped: usize,
}

impl Writes {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    /// Notes `w`, replacing an earlier write of the same object (a later answer carries the
    /// later resourceVersion). An object created earlier in this log stays "created" while its
    /// uid is the same.
    ///
    /// ```
    /// use crwatch::ryow::{Write, Writes};
    ///
    /// let w = |rv: &str, created: bool| Write {
    ///     api_version: "v1".into(), resource: "configmaps".into(), kind: Some("ConfigMap".into()),
    ///     namespace: Some("default".into()), name: "a".into(), uid: Some("u1".into()),
    ///     resource_version: Some(rv.into()), deleted: false, created,
    /// };
    /// let mut log = Writes::new();
    /// log.push(w("5", true));
    /// log.push(w("6", false));
    /// assert_eq!(log.len(), 1);
    /// let latest = log.iter().next().unwrap();
    /// assert_eq!((latest.resource_version.as_deref(), latest.created), (Some("6"), true));
    /// ```
    pub fn push(&mut self, mut w: Write) {
        if let Some(old) = self.writes.iter_mut().find(|o| o.same_object(&w)) {
            let same_incarnation = match (&old.uid, &w.uid) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            };
            w.created |= old.created && same_incarnation;
            *old = w;
        } else if self.writes.len() < MAX_WRITES {
            self.writes.push(w);
        } else {
            self.dropped += 1;
        }
    }

    /// Adds every write of `other` (in order), as if made after this log's.
    pub fn extend(&mut self, other: Writes) {
        self.dropped += other.dropped;
        for w in other.writes {
            self.push(w);
        }
    }

    /// The writes, in the order their objects were first written.
    pub fn iter(&self) -> impl Iterator<Item = &Write> {
        self.writes.iter()
    }

    /// How many objects are noted.
    pub fn len(&self) -> usize {
        self.writes.len()
    }

    /// Whether nothing was noted.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    /// Writes of objects past [`MAX_WRITES`], not kept (and so not waited for).
    pub fn dropped(&self) -> usize {
        self.dropped
    }
}

tokio::task_local! {
    /// The log of the reconcile running on this task ([`record`]). Borrowed only inside
    /// synchronous closures, never across an await.
    static LOG: RefCell<Writes>;
}

/// Runs `f` with a fresh write log and returns its output with the writes that
/// [`tracking`] clients made from within it (on the same task). A `record` inside another
/// keeps its writes to itself.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let (out, writes) = crwatch::ryow::record(async { 42 }).await;
/// assert_eq!(out, 42);
/// assert!(writes.is_empty());
/// # });
/// ```
pub async fn record<F: Future>(f: F) -> (F::Output, Writes) {
    LOG.scope(RefCell::new(Writes::new()), async {
        let out = f.await;
        let writes = LOG
            .try_with(|log| log.try_borrow_mut().map(|mut w| std::mem::take(&mut *w)))
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        (out, writes)
    })
    .await
}

/// Whether this task is inside [`record`].
pub fn is_recording() -> bool {
    LOG.try_with(|_| ()).is_ok()
}

fn note(w: Write) {
    // Outside `record` there is no log: nothing to do. The log is never borrowed across an
    // await, so the borrow cannot fail; if it ever did, the write is skipped, not a panic.
    let _ = LOG.try_with(|log| {
        if let Ok(mut log) = log.try_borrow_mut() {
            log.push(w);
        }
    });
}

/// `client`, noting the writes made inside [`record`] (see the module docs). The default
/// namespace and expiry are kept. This puts a second request buffer (one more task hop, a few
/// tens of microseconds on a busy machine) in front of `client`'s; a client built by
/// [`crate::client::build`] already tracks, with [`TrackingLayer`] inside its own stack.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let config = kube::Config::new("http://127.0.0.1:1".parse().unwrap());
/// let client = kube::Client::try_from(config).unwrap();
/// let tracked = crwatch::ryow::tracking(client);
/// assert_eq!(tracked.default_namespace(), "default");
/// # });
/// ```
pub fn tracking(client: kube::Client) -> kube::Client {
    tracking_with_limit(client, MAX_TRACKED_BODY)
}

/// [`tracking`] with another body limit than [`MAX_TRACKED_BODY`].
pub fn tracking_with_limit(client: kube::Client, max_body: usize) -> kube::Client {
    let ns = client.default_namespace().to_owned();
    let valid_until = *client.valid_until();
    let layer = TrackingLayer { max_body };
    kube::Client::new(tower::Layer::layer(&layer, Sender(client)), ns).with_valid_until(valid_until)
}

/// A finished client's `send` as a tower service (for [`tracking`]).
#[derive(Clone)]
struct Sender(kube::Client);

impl tower::Service<http::Request<kube::client::Body>> for Sender {
    type Response = http::Response<kube::client::Body>;
    type Error = kube::Error;
    type Future = BoxFuture<'static, Result<Self::Response, kube::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), kube::Error>> {
        // The client waits for its own capacity in `send`.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<kube::client::Body>) -> Self::Future {
        let client = self.0.clone();
        Box::pin(async move { client.send(req).await })
    }
}

/// The tower layer that notes writes made inside [`record`], for a `kube::client::ClientBuilder`
/// stack (what [`crate::client::build`] uses).
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let config = kube::Config::new("http://127.0.0.1:1".parse().unwrap());
/// let client = kube::client::ClientBuilder::try_from(config)
///     .unwrap()
///     .with_layer(&crwatch::ryow::TrackingLayer::default())
///     .build();
/// # });
/// ```
#[derive(Debug, Clone, Copy)]
pub struct TrackingLayer {
    max_body: usize,
}

impl Default for TrackingLayer {
    fn default() -> Self {
        TrackingLayer {
            max_body: MAX_TRACKED_BODY,
        }
    }
}

impl TrackingLayer {
    /// A layer buffering at most `max_body` bytes of an answer (see [`MAX_TRACKED_BODY`]).
    pub fn with_limit(max_body: usize) -> Self {
        TrackingLayer { max_body }
    }
}

impl<S> tower::Layer<S> for TrackingLayer {
    type Service = TrackingService<S>;

    fn layer(&self, inner: S) -> TrackingService<S> {
        TrackingService {
            inner,
            max_body: self.max_body,
        }
    }
}

/// The service of [`TrackingLayer`].
#[derive(Debug, Clone)]
pub struct TrackingService<S> {
    inner: S,
    max_body: usize,
}

impl<S, B> tower::Service<http::Request<kube::client::Body>> for TrackingService<S>
where
    S: tower::Service<http::Request<kube::client::Body>, Response = http::Response<B>>,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = http::Response<TrackedBody>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: http::Request<kube::client::Body>) -> Self::Future {
        let max_body = self.max_body;
        let target = Target::of(req.method(), req.uri());
        let sent = self.inner.call(req);
        Box::pin(async move {
            // kube::Client calls `call` on its buffer's worker task but polls this future on
            // the caller's: the reconcile's log is visible here, not in `call`.
            let target = target.filter(|_| is_recording());
            // Errors go back as they are (boxed); kube::Client::send downcasts them again.
            let res = sent.await.map_err(Into::into)?.map(TrackedBody::new);
            Ok(match target {
                None => res,
                Some(target) => capture(target, res, max_body).await,
            })
        })
    }
}

/// What a mutating request's path names.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    method: Verb,
    api_version: String,
    resource: String,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    Create,
    Update,
    Delete,
}

impl Target {
    /// The object a mutating request writes; `None` for reads, dry runs and paths that are not
    /// an API object's.
    fn of(method: &http::Method, uri: &http::Uri) -> Option<Target> {
        let method = match *method {
            http::Method::POST => Verb::Create,
            http::Method::PUT | http::Method::PATCH => Verb::Update,
            http::Method::DELETE => Verb::Delete,
            _ => return None,
        };
        if uri
            .query()
            .is_some_and(|q| q.split('&').any(|p| p.starts_with("dryRun=")))
        {
            return None; // nothing is persisted
        }
        let segs: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
        let (api_version, rest) = match segs.as_slice() {
            ["api", v, rest @ ..] => (v.to_string(), rest),
            ["apis", g, v, rest @ ..] => (format!("{g}/{v}"), rest),
            _ => return None,
        };
        // `namespaces/{ns}/{resource}...`, except a Namespace's own subresources
        // (`namespaces/{name}/status`, `.../finalize`).
        let namespaced = rest.len() >= 3
            && rest[0] == "namespaces"
            && !(rest.len() == 3 && matches!(rest[2], "status" | "finalize"));
        let (namespace, rest) = if namespaced {
            (Some(rest[1].to_owned()), &rest[2..])
        } else {
            (None, rest)
        };
        let (resource, name, subresource) = match rest {
            [r] => (*r, None, None),
            [r, n] => (*r, Some(*n), None),
            [r, n, s] => (*r, Some(*n), Some(*s)),
            _ => return None,
        };
        if resource.is_empty() || name.is_some_and(str::is_empty) {
            return None;
        }
        Some(Target {
            method,
            api_version,
            resource: resource.to_owned(),
            namespace,
            name: name.map(str::to_owned),
            subresource: subresource.map(str::to_owned),
        })
    }
}

/// Buffers a successful answer (up to `max_body`), notes its write, and returns the same bytes.
async fn capture(
    target: Target,
    res: http::Response<TrackedBody>,
    max_body: usize,
) -> http::Response<TrackedBody> {
    let declared = res
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if !res.status().is_success() || declared.is_some_and(|n| n > max_body) {
        return res.map(TrackedBody::new);
    }
    let (parts, mut body) = res.into_parts();
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut len = 0usize;
    loop {
        match body.frame().await {
            None => break,
            Some(Err(e)) => {
                // Hand on what arrived, then the error, as the caller would have seen them.
                let read = futures::stream::iter(chunks.into_iter().map(Ok));
                let failed = futures::stream::once(async move { Err::<Bytes, _>(e) });
                return http::Response::from_parts(parts, TrackedBody::from_stream(read.chain(failed)));
            }
            Some(Ok(frame)) => {
                // Trailers are dropped: the API server sends none and kube-rs reads none.
                let Ok(data) = frame.into_data() else { continue };
                len += data.len();
                chunks.push(data);
                if len > max_body {
                    // Too big to note: stream the rest through, record nothing.
                    let read = futures::stream::iter(chunks.into_iter().map(Ok));
                    let rest = TryStreamExt::map_err(body.into_data_stream(), BoxError::from);
                    return http::Response::from_parts(parts, TrackedBody::from_stream(read.chain(rest)));
                }
            }
        }
    }
    let bytes = match chunks.len() {
        1 => chunks.pop().unwrap_or_default(),
        _ => Bytes::from(chunks.concat()),
    };
    if let Some(w) = write_of(&target, &bytes) {
        note(w);
    }
    http::Response::from_parts(parts, TrackedBody::from(bytes))
}

/// The parts of an answer a [`Write`] needs; everything else is skipped unread.
#[derive(serde::Deserialize)]
struct Head {
    kind: Option<String>,
    metadata: Option<HeadMeta>,
    details: Option<StatusDetails>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct HeadMeta {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    deletion_timestamp: Option<String>,
}

#[derive(serde::Deserialize)]
struct StatusDetails {
    uid: Option<String>,
}

/// The write a successful answer to `target` reports, if it names one.
fn write_of(target: &Target, body: &[u8]) -> Option<Write> {
    let head: Head = crate::json::from_slice(body).ok()?;
    let main = target.subresource.is_none();
    if head.kind.as_deref() == Some("Status") {
        // A DELETE answered by a Status: the object is gone, and only the URL names it.
        if target.method != Verb::Delete || !main {
            return None;
        }
        return Some(Write {
            api_version: target.api_version.clone(),
            resource: target.resource.clone(),
            kind: None,
            namespace: target.namespace.clone(),
            name: target.name.clone()?,
            uid: head.details.and_then(|d| d.uid),
            resource_version: None,
            deleted: true,
            created: false,
        });
    }
    let meta = head.metadata?;
    // A DELETE answered by the object still there (finalizers, grace period) is an update.
    let deleted = target.method == Verb::Delete && main && meta.deletion_timestamp.is_none();
    if !deleted && meta.resource_version.is_none() {
        return None; // e.g. a review object: nothing stored, nothing to wait for
    }
    Some(Write {
        api_version: target.api_version.clone(),
        resource: target.resource.clone(),
        kind: if main { head.kind } else { None },
        namespace: meta.namespace.or_else(|| target.namespace.clone()),
        name: meta.name.or_else(|| target.name.clone())?,
        uid: meta.uid,
        resource_version: meta.resource_version,
        deleted,
        created: target.method == Verb::Create && main,
    })
}

/// Whether resourceVersion `cached` is at least `written`: as unsigned integers when both
/// parse (KEP-5647), otherwise `None` (only equality is known then).
///
/// ```
/// use crwatch::ryow::rv_at_least;
///
/// assert_eq!(rv_at_least("10", "9"), Some(true));
/// assert_eq!(rv_at_least("9", "10"), Some(false)); // not a string comparison
/// assert_eq!(rv_at_least("abc", "9"), None);
/// ```
pub fn rv_at_least(cached: &str, written: &str) -> Option<bool> {
    match (cached.parse::<u64>(), written.parse::<u64>()) {
        (Ok(c), Ok(w)) => Some(c >= w),
        _ => None,
    }
}

/// Whether a cache whose entry under the write's key has resourceVersion and uid `cached`
/// (`None`: no entry), and which is current to resourceVersion `position` when known, shows
/// write `w`.
///
/// ```
/// use crwatch::ryow::{Write, shows};
///
/// let w = Write {
///     api_version: "v1".into(), resource: "configmaps".into(), kind: None,
///     namespace: None, name: "a".into(), uid: Some("u1".into()),
///     resource_version: Some("10".into()), deleted: false, created: true,
/// };
/// assert!(!shows(None, None, &w)); // created, not there yet
/// assert!(!shows(Some((Some("9"), Some("u1"))), None, &w));
/// assert!(shows(Some((Some("10"), Some("u1"))), None, &w));
/// assert!(shows(None, Some("12"), &w)); // current past the write: filtered out
/// ```
pub fn shows(cached: Option<(Option<&str>, Option<&str>)>, position: Option<&str>, w: &Write) -> bool {
    let written_rv = w.resource_version.as_deref();
    let here = match cached {
        // Gone: deleted, or (for an object not created by this log) never or no longer in
        // this cache's selection.
        None => w.deleted || !w.created,
        Some((_, uid)) if w.deleted => matches!((uid, w.uid.as_deref()), (Some(a), Some(b)) if a != b),
        Some((rv, uid)) => {
            let other_uid = matches!((uid, w.uid.as_deref()), (Some(a), Some(b)) if a != b);
            match (rv, written_rv) {
                (Some(c), Some(wr)) => rv_at_least(c, wr).unwrap_or(c == wr || other_uid),
                _ => other_uid,
            }
        }
    };
    // A cache current to a version at or past the write has applied it, whatever it shows.
    // Not for deletions: their answer carries the version before the delete, if any.
    here || (!w.deleted
        && matches!((position, written_rv), (Some(p), Some(wr)) if rv_at_least(p, wr) == Some(true)))
}

/// A cache [`wait_caught_up`] can wait on.
pub trait Freshness: Send + Sync {
    /// Whether this cache holds objects of the write's kind (so it must show the write).
    fn covers(&self, w: &Write) -> bool;
    /// Whether this cache shows the write (see [`shows`]).
    fn caught_up(&self, w: &Write) -> bool;
    /// Resolves at the next change of the cache after this call (registered when called).
    fn changed(&self) -> BoxFuture<'static, ()>;
}

type Position = Box<dyn Fn() -> Option<String> + Send + Sync>;

/// [`Freshness`] of a [`Store`] holding one resource.
pub struct StoreFreshness<K> {
    store: Store<K>,
    group: String,
    kind: String,
    plural: String,
    position: Option<Position>,
}

impl<K> StoreFreshness<K>
where
    K: Resource + Clone + Send + Sync + 'static,
{
    /// `store`, holding objects of `api_version` (`group/version` or `v1`), `kind` and
    /// resource `plural`.
    pub fn new(store: Store<K>, api_version: &str, kind: &str, plural: &str) -> Self {
        StoreFreshness {
            store,
            group: api_version.rsplit_once('/').map_or("", |(g, _)| g).to_owned(),
            kind: kind.to_owned(),
            plural: plural.to_owned(),
            position: None,
        }
    }

    /// `store` of `K`'s resource (`dt`: `&()` for static types, the `ApiResource` for
    /// dynamic ones).
    pub fn of(store: Store<K>, dt: &K::DynamicType) -> Self {
        Self::new(store, &K::api_version(dt), &K::kind(dt), &K::plural(dt))
    }

    /// Also counts a write as seen once `position()` (the resourceVersion the cache is
    /// current to, e.g. its informer's checkpoint) reaches it. It is read when the store
    /// changes and at the timeout, not watched.
    pub fn with_position(mut self, position: impl Fn() -> Option<String> + Send + Sync + 'static) -> Self {
        self.position = Some(Box::new(position));
        self
    }
}

impl<K> Freshness for StoreFreshness<K>
where
    K: Resource + Clone + Send + Sync + 'static,
{
    fn covers(&self, w: &Write) -> bool {
        w.group() == self.group && (w.resource == self.plural || w.kind.as_deref() == Some(&*self.kind))
    }

    fn caught_up(&self, w: &Write) -> bool {
        let cached = self.store.version_of(&w.key());
        let position = self.position.as_ref().and_then(|p| p());
        shows(
            cached.as_ref().map(|(rv, uid)| (rv.as_deref(), uid.as_deref())),
            position.as_deref(),
            w,
        )
    }

    fn changed(&self) -> BoxFuture<'static, ()> {
        Box::pin(self.store.changed())
    }
}

/// The [`Freshness`] of `informer`'s cache of `K` (`dt`: `&()` for static types), using its
/// checkpoint as the position it is current to.
pub fn informer_freshness<K>(informer: &Informer<K>, dt: &K::DynamicType) -> Arc<dyn Freshness>
where
    K: Resource + Clone + Serialize + Send + Sync + 'static,
{
    let handle = informer.clone();
    Arc::new(
        StoreFreshness::of(informer.store(), dt)
            .with_position(move || handle.checkpoint().map(|c| c.resource_version)),
    )
}

/// How a [`wait_caught_up`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitOutcome {
    /// Every cache covering a write shows it, after waiting this long.
    Fresh(Duration),
    /// Some cache still did not show a write when the timeout passed.
    TimedOut(Duration),
    /// No write concerns the given caches (or there were none).
    NothingToWait,
}

/// Waits until every cache in `caches` that [`Freshness::covers`] a write in `writes` shows it,
/// or `timeout` passes. Sleeps on the caches' change notifications, re-checking only after a
/// change.
pub async fn wait_caught_up(
    writes: &Writes,
    caches: &[Arc<dyn Freshness>],
    timeout: Duration,
) -> WaitOutcome {
    let start = tokio::time::Instant::now();
    let mut pending: Vec<(&Write, &Arc<dyn Freshness>)> = writes
        .iter()
        .flat_map(|w| caches.iter().filter(|c| c.covers(w)).map(move |c| (w, c)))
        .collect();
    if pending.is_empty() {
        return WaitOutcome::NothingToWait;
    }
    let deadline = start + timeout;
    loop {
        // Register for changes before looking, so a change between the look and the wait
        // still wakes us.
        let mut watched: Vec<&Arc<dyn Freshness>> = Vec::new();
        for (_, c) in &pending {
            if !watched.iter().any(|w| Arc::ptr_eq(w, c)) {
                watched.push(c);
            }
        }
        let changed: Vec<_> = watched.iter().map(|c| c.changed()).collect();
        pending.retain(|(w, c)| !c.caught_up(w));
        if pending.is_empty() {
            return WaitOutcome::Fresh(start.elapsed());
        }
        if tokio::time::timeout_at(deadline, futures::future::select_all(changed))
            .await
            .is_err()
        {
            // A last look: a position may have advanced without a store change.
            pending.retain(|(w, c)| !c.caught_up(w));
            return match pending.is_empty() {
                true => WaitOutcome::Fresh(start.elapsed()),
                false => WaitOutcome::TimedOut(start.elapsed()),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;

    fn target(method: &str, path: &str) -> Option<Target> {
        Target::of(&method.parse().unwrap(), &path.parse().unwrap())
    }

    #[test]
    fn paths_name_the_object_written() {
        let t = target("POST", "/api/v1/namespaces/ns/configmaps").unwrap();
        assert_eq!(
            (
                t.method,
                &*t.api_version,
                &*t.resource,
                t.namespace.as_deref(),
                t.name.as_deref()
            ),
            (Verb::Create, "v1", "configmaps", Some("ns"), None)
        );
        let t = target("PUT", "/apis/apps/v1/namespaces/ns/deployments/d/status").unwrap();
        assert_eq!(
            (
                &*t.api_version,
                &*t.resource,
                t.name.as_deref(),
                t.subresource.as_deref()
            ),
            ("apps/v1", "deployments", Some("d"), Some("status"))
        );
        let t = target("DELETE", "/api/v1/namespaces/x").unwrap();
        assert_eq!(
            (&*t.resource, t.namespace.as_deref(), t.name.as_deref()),
            ("namespaces", None, Some("x"))
        );
        let t = target("PUT", "/api/v1/namespaces/x/finalize").unwrap();
        assert_eq!(
            (&*t.resource, t.name.as_deref(), t.subresource.as_deref()),
            ("namespaces", Some("x"), Some("finalize"))
        );
        let t = target("PATCH", "/apis/example.com/v1/foos/cluster-wide").unwrap();
        assert_eq!((t.namespace, t.name.as_deref()), (None, Some("cluster-wide")));
        assert!(target("GET", "/api/v1/namespaces/ns/configmaps/a").is_none());
        assert!(target("POST", "/api/v1/namespaces/ns/configmaps?dryRun=All").is_none());
        assert!(target("POST", "/version").is_none());
    }

    #[test]
    fn answers_become_writes() {
        let create = target("POST", "/api/v1/namespaces/ns/configmaps").unwrap();
        let body = br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"a","namespace":"ns","uid":"u","resourceVersion":"12"},"data":{"x":"y"}}"#;
        let w = write_of(&create, body).unwrap();
        assert_eq!(
            (
                w.name.as_str(),
                w.resource_version.as_deref(),
                w.kind.as_deref(),
                w.created,
                w.deleted
            ),
            ("a", Some("12"), Some("ConfigMap"), true, false)
        );
        let delete = target("DELETE", "/api/v1/namespaces/ns/configmaps/a").unwrap();
        let status = br#"{"kind":"Status","apiVersion":"v1","status":"Success","details":{"name":"a","kind":"configmaps","uid":"u"}}"#;
        let w = write_of(&delete, status).unwrap();
        assert_eq!(
            (w.name.as_str(), w.uid.as_deref(), w.deleted, w.resource_version),
            ("a", Some("u"), true, None)
        );
        let held = br#"{"kind":"ConfigMap","metadata":{"name":"a","namespace":"ns","uid":"u","resourceVersion":"13","deletionTimestamp":"2026-01-01T00:00:00Z","finalizers":["f"]}}"#;
        let w = write_of(&delete, held).unwrap();
        assert_eq!((w.deleted, w.resource_version.as_deref()), (false, Some("13")));
        let scale = target("PATCH", "/apis/apps/v1/namespaces/ns/deployments/d/scale").unwrap();
        let body = br#"{"kind":"Scale","apiVersion":"autoscaling/v1","metadata":{"name":"d","namespace":"ns","resourceVersion":"20"}}"#;
        let w = write_of(&scale, body).unwrap();
        assert_eq!(
            (&*w.api_version, &*w.resource, w.kind),
            ("apps/v1", "deployments", None)
        );
        // A review answers without a stored version: nothing to wait for.
        let review = target("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews").unwrap();
        assert!(write_of(&review, br#"{"kind":"SelfSubjectAccessReview","metadata":{}}"#).is_none());
        assert!(write_of(&create, b"not json").is_none());
    }

    #[test]
    fn resource_versions_compare_as_numbers_when_they_parse() {
        assert_eq!(rv_at_least("100", "99"), Some(true));
        assert_eq!(rv_at_least("99", "100"), Some(false));
        assert_eq!(rv_at_least("7", "7"), Some(true));
        assert_eq!(rv_at_least("a7", "7"), None);
        assert_eq!(rv_at_least("18446744073709551615", "1"), Some(true));
    }

    fn write(rv: Option<&str>, deleted: bool, created: bool) -> Write {
        Write {
            api_version: "v1".into(),
            resource: "configmaps".into(),
            kind: Some("ConfigMap".into()),
            namespace: Some("ns".into()),
            name: "a".into(),
            uid: Some("u1".into()),
            resource_version: rv.map(str::to_owned),
            deleted,
            created,
        }
    }

    #[test]
    fn what_counts_as_seen() {
        let upd = write(Some("10"), false, false);
        assert!(shows(Some((Some("10"), Some("u1"))), None, &upd));
        assert!(shows(Some((Some("11"), Some("u1"))), None, &upd));
        assert!(!shows(Some((Some("9"), Some("u1"))), None, &upd));
        // An older incarnation under the name is stale; a newer one is not.
        assert!(!shows(Some((Some("9"), Some("u0"))), None, &upd));
        assert!(shows(Some((Some("11"), Some("u2"))), None, &upd));
        // Opaque versions: only equality, or another object under the name.
        let opaque = write(Some("abc"), false, false);
        assert!(shows(Some((Some("abc"), Some("u1"))), None, &opaque));
        assert!(!shows(Some((Some("abd"), Some("u1"))), None, &opaque));
        assert!(shows(Some((Some("abd"), Some("u2"))), None, &opaque));
        // Absent: seen for an update (it left the selection), not for a create.
        assert!(shows(None, None, &upd));
        assert!(!shows(None, None, &write(Some("10"), false, true)));
        assert!(shows(None, Some("10"), &write(Some("10"), false, true)));
        assert!(!shows(None, Some("9"), &write(Some("10"), false, true)));
        // Deletions: gone, or another incarnation.
        let del = write(None, true, false);
        assert!(shows(None, None, &del));
        assert!(!shows(Some((Some("9"), Some("u1"))), Some("100"), &del));
        assert!(shows(Some((Some("12"), Some("u2"))), None, &del));
    }

    #[test]
    fn the_log_keeps_the_latest_write_per_object_and_is_bounded() {
        let mut log = Writes::new();
        log.push(write(Some("5"), false, true));
        log.push(write(Some("6"), false, false));
        log.push(write(None, true, false));
        assert_eq!(log.len(), 1);
        let w = log.iter().next().unwrap();
        assert!(w.deleted && w.created);
        // Created again: a new uid starts afresh.
        let mut again = write(Some("9"), false, false);
        again.uid = Some("u2".into());
        log.push(again);
        assert!(!log.iter().next().unwrap().created);
        for i in 0..MAX_WRITES + 10 {
            let mut w = write(Some("1"), false, false);
            w.name = format!("n{i}");
            log.push(w);
        }
        assert_eq!((log.len(), log.dropped()), (MAX_WRITES, 11));
    }

    fn cm(name: &str, rv: &str) -> ConfigMap {
        let mut c = ConfigMap::default();
        c.metadata.namespace = Some("ns".into());
        c.metadata.name = Some(name.into());
        c.metadata.uid = Some("u1".into());
        c.metadata.resource_version = Some(rv.into());
        c
    }

    #[tokio::test(start_paused = true)]
    async fn waits_for_the_store_and_times_out_without_it() {
        let store = Store::<ConfigMap>::new();
        let caches: Vec<Arc<dyn Freshness>> = vec![Arc::new(StoreFreshness::of(store.clone(), &()))];
        let mut writes = Writes::new();
        writes.push(write(Some("10"), false, true));

        // Nobody writes the store: the whole timeout passes (the clock is paused, so at once).
        let out = wait_caught_up(&writes, &caches, Duration::from_secs(5)).await;
        assert_eq!(out, WaitOutcome::TimedOut(Duration::from_secs(5)));

        // The store gets an older version, then the written one, 100 ms later.
        let feeder = store.clone();
        let feed = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            feeder.apply(cm("a", "9"));
            tokio::time::sleep(Duration::from_millis(50)).await;
            feeder.apply(cm("a", "10"));
        });
        let out = wait_caught_up(&writes, &caches, Duration::from_secs(5)).await;
        assert_eq!(out, WaitOutcome::Fresh(Duration::from_millis(100)));
        feed.await.unwrap();

        // Already there: no wait.
        let out = wait_caught_up(&writes, &caches, Duration::from_secs(5)).await;
        assert_eq!(out, WaitOutcome::Fresh(Duration::ZERO));

        // Nothing for these caches (another resource), or nothing at all.
        let mut other = write(Some("10"), false, true);
        other.resource = "secrets".into();
        other.kind = Some("Secret".into());
        let mut only_other = Writes::new();
        only_other.push(other);
        assert_eq!(
            wait_caught_up(&only_other, &caches, Duration::from_secs(5)).await,
            WaitOutcome::NothingToWait
        );
        assert_eq!(
            wait_caught_up(&Writes::new(), &caches, Duration::from_secs(5)).await,
            WaitOutcome::NothingToWait
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_deletion_is_seen_when_the_key_goes() {
        let store = Store::<ConfigMap>::new();
        store.apply(cm("a", "9"));
        let caches: Vec<Arc<dyn Freshness>> = vec![Arc::new(StoreFreshness::of(store.clone(), &()))];
        let mut writes = Writes::new();
        writes.push(write(None, true, false));
        let feeder = store.clone();
        let feed = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            feeder.delete(&ObjectKey::new(Some("ns"), "a"));
        });
        let out = wait_caught_up(&writes, &caches, Duration::from_secs(5)).await;
        assert_eq!(out, WaitOutcome::Fresh(Duration::from_millis(30)));
        feed.await.unwrap();
    }

    #[tokio::test]
    async fn record_collects_only_its_own_task() {
        let (_, writes) = record(async {
            note(write(Some("1"), false, true));
            assert!(is_recording());
            // A nested record keeps its writes to itself.
            let (_, inner) = record(async { note(write(Some("2"), false, false)) }).await;
            assert_eq!(inner.len(), 1);
        })
        .await;
        assert_eq!(
            writes.iter().next().unwrap().resource_version.as_deref(),
            Some("1")
        );
        assert!(!is_recording());
        note(write(Some("3"), false, false)); // outside: nowhere to go, no panic
    }
}
