//! The one list/watch engine: lists (paged, or streamed with `sendInitialEvents`), watches from
//! a resourceVersion with bookmarks, resumes from a checkpoint, relists after 410 Gone, and
//! notices a server whose history restarted (a resourceVersion it has not reached, versions
//! going backwards, a changed server identity) instead of waiting it out. Every consumer of
//! Kubernetes changes in crwatch (informers, `crwatch get`, `crwatch forward`) runs on this.
//!
//! It speaks raw HTTP through [`kube::Client::send`] rather than kube-runtime's watcher because
//! the watcher can neither start from a stored resourceVersion nor ask for Tables; and rather
//! than kube's `request*` helpers because those log a whole response body (Secrets included)
//! when it does not decode. Here bodies are bounded, decoded at any depth ([`crate::json`]),
//! and never logged: a failure names the object and the problem, not the content.
//!
//! Every request is timed: response headers within [`HEADER_TIMEOUT`], a list body never
//! silent for longer than [`BODY_IDLE_TIMEOUT`], a watch never silent past its server-side
//! timeout plus a margin.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{AsyncBufRead, AsyncBufReadExt};
use kube::Client;
use kube::api::{ListParams, WatchParams};
use serde_json::Value;
use tokio::sync::mpsc;

use super::ReconnectBackoff;
use crate::source::{Checkpoint, ErrorKind, Event, EventStream, SourceError, Undecodable};

/// How objects are fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Representation {
    /// Whole objects.
    Object,
    /// `PartialObjectMetadata`: only apiVersion, kind and metadata.
    Metadata,
    /// Server-side Tables (the rows `kubectl get` prints), each row with its object embedded.
    Table,
    /// Server-side Tables whose rows embed only the object's metadata
    /// (`includeObject=Metadata`, as `kubectl get` asks): what printing rows needs, without
    /// holding every object's spec and data.
    TableMetadata,
}

const TABLE_ACCEPT: &str = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json";
const METADATA_LIST_ACCEPT: &str =
    "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json";
const METADATA_ACCEPT: &str = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json";

/// Events waiting for the consumer; past this the engine stops reading from the server (the
/// server closes a watcher that falls too far behind, and the engine resumes from its
/// last resourceVersion).
const CHANNEL_CAPACITY: usize = 256;

/// A watch silent for this long past its server-side timeout is taken for a dead connection.
const IDLE_MARGIN: Duration = Duration::from_secs(30);

/// From a request to its response's headers (the API server's own request timeout is 60 s,
/// and it sends a watch's headers at once).
pub(crate) const HEADER_TIMEOUT: Duration = Duration::from_secs(60);

/// The longest a list body may stall between two chunks.
pub(crate) const BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The most of an error response read (a Status is a few hundred bytes).
const MAX_ERROR_BODY: usize = 64 << 10;

/// The most of the `kube-system` namespace read for the server's identity (an object may have
/// up to 256 KiB of annotations).
const MAX_IDENTITY_BYTES: usize = 1 << 20;

/// Everything the engine needs to know about one list/watch.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    /// The collection's path (`/api/v1/namespaces/default/configmaps`).
    pub url: String,
    /// For list items and watch objects that come without them.
    pub api_version: String,
    /// For list items and watch objects that come without them.
    pub kind: String,
    pub labels: Option<String>,
    pub fields: Option<String>,
    pub representation: Representation,
    pub page_size: u32,
    pub streaming_lists: bool,
    pub backoff: (Duration, Duration),
    /// Server-side watch timeout, seconds.
    pub watch_timeout: u32,
    /// Largest single watch event or list page, bytes.
    pub max_event_bytes: usize,
    /// Whether to tie checkpoints to the `kube-system` namespace's uid.
    pub check_identity: bool,
    /// A KEP-5866 `shardSelector` sent with every list and watch; a change relists.
    pub shard: Option<ShardSpec>,
}

/// Server-side sharding of one list/watch (KEP-5866).
#[derive(Debug, Clone)]
pub(crate) struct ShardSpec {
    /// The selector to send; when it changes the engine lists again under the new one.
    pub selector: tokio::sync::watch::Receiver<String>,
    /// Whether the server honoured it (`metadata.shardInfo` in list answers); `None` until a
    /// list answered.
    pub honoured: tokio::sync::watch::Sender<Option<bool>>,
}

/// Turns one item (an object, or `{"object":…, "cells":…}` for Tables) into the source's type.
pub(crate) type Decode<K> = Arc<dyn Fn(Value) -> Result<K, serde_json::Error> + Send + Sync>;

/// Turns one list item's raw JSON into the source's type directly (no intermediate `Value`):
/// the fast path for lists of whole objects or metadata, which are most of a sync's work.
pub(crate) type DecodeRaw<K> = Arc<dyn Fn(&str) -> Result<K, serde_json::Error> + Send + Sync>;

/// A list page with its items left as raw JSON.
#[derive(serde::Deserialize)]
struct RawPage<'a> {
    #[serde(default)]
    metadata: RawListMeta,
    #[serde(borrow, default)]
    items: Vec<&'a serde_json::value::RawValue>,
}

#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawListMeta {
    #[serde(default)]
    resource_version: String,
    #[serde(default, rename = "continue")]
    continue_: String,
    /// KEP-5866: present when the server applied the list's `shardSelector`.
    #[serde(default, rename = "shardInfo")]
    shard_info: Option<serde::de::IgnoredAny>,
}

/// A watch event with its object left as raw JSON (the typed fast path).
#[derive(serde::Deserialize)]
struct RawEvent<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    object: &'a serde_json::value::RawValue,
}

/// What the fast path reads of an object besides decoding it (other fields are skipped).
#[derive(serde::Deserialize, Default)]
struct RawObjectHead {
    #[serde(default)]
    kind: String,
    #[serde(default)]
    metadata: RawObjectMeta,
}

#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawObjectMeta {
    #[serde(default)]
    resource_version: String,
}

/// The column definitions of the last Table the server sent (shared with whoever prints rows).
pub type Columns = Arc<Mutex<Option<Vec<Value>>>>;

/// Append `name=value` (value URL-encoded) to a request kube's `Request` builder made: the
/// parameters its `ListParams` cannot express.
fn add_query(req: &mut http::Request<Vec<u8>>, name: &str, value: &str) {
    let uri = req.uri().to_string();
    let sep = if uri.contains('?') { '&' } else { '?' };
    let value: String = form_urlencoded::byte_serialize(value.as_bytes()).collect();
    if let Ok(u) = format!("{uri}{sep}{name}={value}").parse() {
        *req.uri_mut() = u;
    }
}

/// Start the engine; events arrive on the returned stream until it is dropped.
pub(crate) fn start<K: Send + 'static>(
    client: Client,
    spec: Spec,
    name: String,
    resume: Option<Checkpoint>,
    decode: Decode<K>,
    decode_raw: Option<DecodeRaw<K>>,
    columns: Columns,
) -> EventStream<K> {
    let (tx, mut rx) = mpsc::channel(CHANNEL_CAPACITY);
    let engine = Engine {
        client,
        backoff: ReconnectBackoff::new(spec.backoff.0, spec.backoff.1),
        spec,
        name,
        decode,
        decode_raw,
        columns,
        tx,
        identity: None,
        newest: None,
        verify: false,
        listed_selector: None,
    };
    tokio::spawn(async move {
        let closed = engine.tx.clone();
        tokio::select! {
            // The consumer went away: stop at once rather than at the next event.
            _ = closed.closed() => {}
            _ = engine.run(resume) => {}
        }
    });
    Box::pin(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)))
}

/// The error for an object that did not decode: it names the object, and the decoder's
/// message is already free of the object's values.
fn undecodable_error(source: &str, mut named: Undecodable, e: &serde_json::Error) -> SourceError {
    named.error = e.to_string();
    SourceError {
        source_name: source.to_string(),
        message: named.to_string(),
        relist: false,
        kind: ErrorKind::Undecodable(Box::new(named)),
    }
}

/// Why a watch ended.
enum End {
    /// The resourceVersion is gone (410), or the server's history restarted: list again.
    Relist,
    /// The watch ended normally (server timeout): watch again from where it got to.
    Resume,
    /// The watch closed before delivering anything: watch again after a backoff pause (a
    /// server that keeps closing watches at once is not hammered).
    Closed,
    /// The watch failed: back off, then watch again from where it got to.
    Failed,
}

struct Engine<K> {
    client: Client,
    spec: Spec,
    name: String,
    decode: Decode<K>,
    decode_raw: Option<DecodeRaw<K>>,
    columns: Columns,
    tx: mpsc::Sender<Result<Event<K>, SourceError>>,
    backoff: ReconnectBackoff,
    /// The server's identity (`kube-system`'s uid) when it could be read.
    identity: Option<String>,
    /// The newest resourceVersion seen, when versions are numbers (etcd revisions): one
    /// smaller than this means the server's history restarted.
    newest: Option<u64>,
    /// Whether the server's identity must be checked once the next watch connects.
    verify: bool,
    /// The `shardSelector` the cache's objects were listed under.
    listed_selector: Option<String>,
}

/// The consumer is gone; stop.
struct Gone;

/// What the server says about its identity.
enum Identity {
    Known(String),
    /// Not readable here (RBAC, or no such namespace): other signs must do.
    Unreadable,
    /// The server did not answer.
    Unreachable,
}

impl<K: Send + 'static> Engine<K> {
    async fn send(&self, e: Result<Event<K>, SourceError>) -> Result<(), Gone> {
        self.tx.send(e).await.map_err(|_| Gone)
    }

    async fn error(&self, message: String, relist: bool) -> Result<(), Gone> {
        self.send(Err(SourceError {
            source_name: self.name.clone(),
            message,
            relist,
            kind: ErrorKind::Other,
        }))
        .await
    }

    /// A failed request, with what kind of failure it was.
    async fn failed(&self, what: &str, e: &kube::Error) -> Result<(), Gone> {
        self.send(Err(SourceError {
            source_name: self.name.clone(),
            message: format!("{what}: {}", cause_of(e)),
            relist: false,
            kind: error_kind(e),
        }))
        .await
    }

    fn checkpoint(&self, rv: &str) -> Checkpoint {
        Checkpoint {
            resource_version: rv.to_string(),
            identity: self.identity.clone(),
        }
    }

    /// A whole answer (a list page), at most the largest event size.
    async fn get_bytes(&self, req: http::Request<Vec<u8>>) -> Result<Vec<u8>, kube::Error> {
        let res = send(&self.client, req).await?;
        read_body(res.into_body(), self.spec.max_event_bytes).await
    }

    async fn pause(&mut self) {
        let wait = self.backoff.next().unwrap_or(self.spec.backoff.1);
        tokio::time::sleep(wait).await;
    }

    async fn run(mut self, resume: Option<Checkpoint>) -> Result<(), Gone> {
        let mut rv = resume.map(|cp| {
            self.newest = cp.resource_version.parse().ok();
            self.identity = cp.identity;
            cp.resource_version
        });
        // Before trusting a watch from a resourceVersion this process did not just list, make
        // sure the server is still the one that version belongs to: at start (a checkpoint),
        // and after every broken watch (the server may have come back as another server).
        self.verify = self.spec.check_identity;
        let mut streaming = self.spec.streaming_lists;
        loop {
            let Some(from) = rv.clone() else {
                // A fresh list starts a fresh history: learn whose it is, for its checkpoints.
                if self.spec.check_identity
                    && self.identity.is_none()
                    && let Identity::Known(id) = self.read_identity().await?
                {
                    self.identity = Some(id);
                }
                if streaming {
                    match self.streaming_list().await? {
                        StreamEnd::Listed(list_rv) => {
                            self.verify = false;
                            rv = Some(list_rv);
                            continue;
                        }
                        StreamEnd::Unsupported => {
                            tracing::info!(source = %self.name, "the server does not stream lists (sendInitialEvents); using paged lists");
                            streaming = false;
                        }
                        StreamEnd::Failed => self.pause().await,
                    }
                    continue;
                }
                match self.list().await? {
                    Some(list_rv) => {
                        // A version from our own fresh list needs no identity check.
                        self.verify = false;
                        rv = Some(list_rv);
                    }
                    None => self.pause().await,
                }
                continue;
            };
            let mut at = from.clone();
            let end = self.watch(&from, &mut at).await?;
            rv = Some(at);
            match end {
                // The history being left may have been another server's: read the identity
                // again with the next list.
                End::Relist => {
                    rv = None;
                    self.identity = None;
                }
                End::Resume => {}
                End::Closed | End::Failed => {
                    self.pause().await;
                    self.verify = self.spec.check_identity;
                }
            }
        }
    }

    /// The uid of the `kube-system` namespace: it changes only when the cluster (or a test
    /// server without saved state) is created anew.
    async fn read_identity(&self) -> Result<Identity, Gone> {
        let Ok(req) = http::Request::get("/api/v1/namespaces/kube-system").body(vec![]) else {
            return Ok(Identity::Unreadable);
        };
        let res = match send(&self.client, req).await {
            Ok(res) => read_body(res.into_body(), MAX_IDENTITY_BYTES).await,
            Err(e) => Err(e),
        };
        let text = match res {
            Ok(t) => t,
            Err(e) => {
                return Ok(match error_kind(&e) {
                    ErrorKind::Server { code, .. } if code < 500 && code != 429 => Identity::Unreadable,
                    _ => {
                        self.failed("reading the server's identity", &e).await?;
                        Identity::Unreachable
                    }
                });
            }
        };
        let uid = crate::json::from_slice::<Value>(&text).ok().and_then(|v| {
            v.pointer("/metadata/uid")
                .and_then(Value::as_str)
                .map(str::to_string)
        });
        Ok(uid.map_or(Identity::Unreadable, Identity::Known))
    }

    /// Note a resourceVersion; false when it went backwards (the server's history restarted).
    fn advance(&mut self, rv: &str) -> bool {
        let Ok(n) = rv.parse::<u64>() else {
            return true;
        };
        match self.newest {
            Some(newest) if n < newest => false,
            _ => {
                self.newest = Some(n);
                true
            }
        }
    }

    fn accept(&self, req: &mut http::Request<Vec<u8>>, list: bool) {
        let accept = match (self.spec.representation, list) {
            (Representation::Object, _) => return,
            (Representation::Metadata, true) => METADATA_LIST_ACCEPT,
            (Representation::Metadata, false) => METADATA_ACCEPT,
            (Representation::Table | Representation::TableMetadata, _) => TABLE_ACCEPT,
        };
        req.headers_mut()
            .insert(http::header::ACCEPT, http::HeaderValue::from_static(accept));
        let include = match self.spec.representation {
            Representation::Table => "Object",
            Representation::TableMetadata => "Metadata",
            Representation::Object | Representation::Metadata => return,
        };
        add_query(req, "includeObject", include);
    }

    /// Add `selector` (if sharded) to a list or watch request as its `shardSelector`.
    fn shard_param(req: &mut http::Request<Vec<u8>>, selector: Option<&str>) {
        if let Some(selector) = selector {
            add_query(req, "shardSelector", selector);
        }
    }

    /// The `shardSelector` to send now, if sharded.
    fn current_selector(&self) -> Option<String> {
        self.spec.shard.as_ref().map(|s| s.selector.borrow().clone())
    }

    /// Whether the selector changed since the last list (the objects listed then are the
    /// wrong set: list again).
    fn shard_moved(&self) -> bool {
        match &self.spec.shard {
            Some(shard) => self.listed_selector.as_deref() != Some(shard.selector.borrow().as_str()),
            None => false,
        }
    }

    /// Record whether the server applied the selector of a list (KEP-5866's `shardInfo`).
    fn shard_honoured(&self, honoured: bool) {
        if let Some(shard) = &self.spec.shard {
            let before = shard.honoured.send_replace(Some(honoured));
            if before != Some(honoured) {
                if honoured {
                    tracing::info!(source = %self.name, "the server shards this list and watch (shardSelector)");
                } else {
                    tracing::info!(source = %self.name, "the server ignores shardSelector (no ShardedListAndWatch): receiving every object and filtering here");
                }
            }
        }
    }

    fn list_params(&self) -> ListParams {
        let mut lp = ListParams::default().limit(self.spec.page_size);
        if let Some(l) = &self.spec.labels {
            lp = lp.labels(l);
        }
        if let Some(f) = &self.spec.fields {
            lp = lp.fields(f);
        }
        lp
    }

    fn watch_params(&self) -> WatchParams {
        self.with_selectors(WatchParams::default().timeout(self.spec.watch_timeout))
    }

    fn with_selectors(&self, mut wp: WatchParams) -> WatchParams {
        if let Some(l) = &self.spec.labels {
            wp = wp.labels(l);
        }
        if let Some(f) = &self.spec.fields {
            wp = wp.fields(f);
        }
        wp
    }

    /// A paged list as `Init`, `InitApply`…, `InitDone`, `Progress`. `None` when it failed.
    async fn list(&mut self) -> Result<Option<String>, Gone> {
        let mut restarts = 0;
        'again: loop {
            self.send(Ok(Event::Init)).await?;
            let mut cont: Option<String> = None;
            // Every page of one list under one selector; a change meanwhile relists after it.
            let selector = self.current_selector();
            loop {
                let mut lp = self.list_params();
                if let Some(c) = &cont {
                    lp = lp.continue_token(c);
                }
                let mut req = match kube::core::Request::new(&self.spec.url).list(&lp) {
                    Ok(r) => r,
                    Err(e) => {
                        self.error(format!("building the list request: {e}"), false)
                            .await?;
                        return Ok(None);
                    }
                };
                self.accept(&mut req, true);
                Self::shard_param(&mut req, selector.as_deref());
                let page = match self.get_bytes(req).await {
                    Ok(p) => p,
                    // The continue token expired (compaction): the list starts over, as
                    // client-go's pager does.
                    Err(kube::Error::Api(s)) if s.code == 410 && cont.is_some() && restarts < 5 => {
                        restarts += 1;
                        continue 'again;
                    }
                    Err(e) => {
                        self.failed("list failed", &e).await?;
                        return Ok(None);
                    }
                };
                let raw = self
                    .decode_raw
                    .clone()
                    .and_then(|d| Some((d, crate::json::from_slice::<RawPage<'_>>(&page).ok()?)));
                let page_rv = if let Some((decode, page)) = raw {
                    if selector.is_some() {
                        self.shard_honoured(page.metadata.shard_info.is_some());
                    }
                    cont = Some(page.metadata.continue_).filter(|c| !c.is_empty());
                    for item in page.items {
                        match decode(item.get()) {
                            Ok(obj) => self.send(Ok(Event::InitApply(obj))).await?,
                            // One malformed object is reported and skipped; the rest goes on.
                            Err(e) => {
                                let item = crate::json::from_str(item.get()).unwrap_or(Value::Null);
                                self.undecodable(&item, false, e).await?
                            }
                        }
                    }
                    page.metadata.resource_version
                } else {
                    let page: Value = match crate::json::from_slice(&page) {
                        Ok(v) => v,
                        Err(e) => {
                            self.error(format!("the server's list answer is not JSON: {e}"), false)
                                .await?;
                            return Ok(None);
                        }
                    };
                    if selector.is_some() {
                        self.shard_honoured(page.pointer("/metadata/shardInfo").is_some());
                    }
                    let page_rv = str_at(&page, "/metadata/resourceVersion").to_string();
                    cont = Some(str_at(&page, "/metadata/continue").to_string()).filter(|c| !c.is_empty());
                    for item in self.items(page) {
                        if let Some(obj) = self.decode(item, false).await? {
                            self.send(Ok(Event::InitApply(obj))).await?;
                        }
                    }
                    page_rv
                };
                if cont.is_none() {
                    if !self.advance(&page_rv) {
                        self.error(
                            format!(
                                "resourceVersion went backwards to {page_rv}: the server's history restarted"
                            ),
                            true,
                        )
                        .await?;
                    }
                    self.newest = page_rv.parse().ok();
                    self.listed_selector = selector;
                    self.send(Ok(Event::InitDone)).await?;
                    self.send(Ok(Event::Progress(Some(self.checkpoint(&page_rv)))))
                        .await?;
                    self.backoff = ReconnectBackoff::new(self.spec.backoff.0, self.spec.backoff.1);
                    return Ok(Some(page_rv));
                }
            }
        }
    }

    /// The items of a list page, Table, or single watch object, each typed.
    fn items(&self, v: Value) -> Vec<Value> {
        let Value::Object(mut m) = v else {
            return vec![];
        };
        if m.get("kind").and_then(Value::as_str) == Some("Table") {
            if let Some(cols) = m.get("columnDefinitions").and_then(Value::as_array)
                && !cols.is_empty()
                && let Ok(mut c) = self.columns.lock()
            {
                *c = Some(cols.clone());
            }
            let rows = match m.remove("rows") {
                Some(Value::Array(rows)) => rows,
                _ => vec![],
            };
            return rows
                .into_iter()
                .map(|mut row| {
                    let object = self.typed(row["object"].take());
                    serde_json::json!({"object": object, "cells": row["cells"].take()})
                })
                .collect();
        }
        let wrap = |o: Value| {
            if matches!(
                self.spec.representation,
                Representation::Table | Representation::TableMetadata
            ) {
                // A server that ignores the Table request: rows without cells.
                serde_json::json!({"object": o, "cells": null})
            } else {
                o
            }
        };
        match m.remove("items") {
            Some(Value::Array(items))
                if m.get("kind")
                    .and_then(Value::as_str)
                    .is_none_or(|k| k.ends_with("List")) =>
            {
                items.into_iter().map(|o| wrap(self.typed(o))).collect()
            }
            Some(items) => {
                m.insert("items".into(), items);
                vec![wrap(self.typed(Value::Object(m)))]
            }
            None => vec![wrap(self.typed(Value::Object(m)))],
        }
    }

    /// Set apiVersion and kind where the server left them out (list items).
    fn typed(&self, mut o: Value) -> Value {
        if let Some(m) = o.as_object_mut() {
            let (av, kind) = if self.spec.representation == Representation::Metadata {
                ("meta.k8s.io/v1", "PartialObjectMetadata")
            } else {
                (self.spec.api_version.as_str(), self.spec.kind.as_str())
            };
            m.entry("apiVersion").or_insert_with(|| Value::String(av.into()));
            m.entry("kind").or_insert_with(|| Value::String(kind.into()));
        }
        o
    }

    async fn decode(&self, item: Value, deleted: bool) -> Result<Option<K>, Gone> {
        // Named before decoding takes the item: a failure reports which object it was.
        let named = Undecodable::of(
            &item,
            &self.spec.api_version,
            &self.spec.kind,
            deleted,
            String::new(),
        );
        match (self.decode)(item) {
            Ok(k) => Ok(Some(k)),
            Err(e) => {
                // One malformed object is reported and skipped; the rest goes on.
                self.send(Err(undecodable_error(&self.name, named, &e))).await?;
                Ok(None)
            }
        }
    }

    /// Report `item`, which did not decode, as skipped.
    async fn undecodable(&self, item: &Value, deleted: bool, e: serde_json::Error) -> Result<(), Gone> {
        let named = Undecodable::of(
            item,
            &self.spec.api_version,
            &self.spec.kind,
            deleted,
            String::new(),
        );
        self.send(Err(undecodable_error(&self.name, named, &e))).await
    }

    async fn open_watch(
        &self,
        wp: &WatchParams,
        from: &str,
        selector: Option<&str>,
    ) -> Result<Result<impl AsyncBufRead + Unpin + use<K>, kube::Error>, String> {
        let mut req = kube::core::Request::new(&self.spec.url)
            .watch(wp, from)
            .map_err(|e| format!("building the watch request: {e}"))?;
        self.accept(&mut req, false);
        Self::shard_param(&mut req, selector);
        req.headers_mut().insert(
            http::header::ACCEPT_ENCODING,
            http::HeaderValue::from_static("identity"),
        );
        Ok(send(&self.client, req).await.map(|res| {
            use futures::TryStreamExt;
            use http_body_util::BodyExt;
            Box::pin(
                res.into_body()
                    .into_data_stream()
                    .map_err(std::io::Error::other)
                    .into_async_read(),
            )
        }))
    }

    /// Watch from `from`; `at` follows the stream's resourceVersion.
    async fn watch(&mut self, from: &str, at: &mut String) -> Result<End, Gone> {
        let wp = self.watch_params();
        // The shard moved since the list: what the cache holds is the wrong set.
        let mut moved = self.spec.shard.as_ref().map(|s| s.selector.clone());
        if self.shard_moved() {
            return Ok(End::Relist);
        }
        let selector = self.listed_selector.clone();
        let stream = match self.open_watch(&wp, from, selector.as_deref()).await {
            Err(m) => {
                self.error(m, false).await?;
                return Ok(End::Failed);
            }
            Ok(Err(kube::Error::Api(s))) if s.code == 410 => {
                self.error(
                    format!("resourceVersion {from} is too old (410 Gone): relisting"),
                    true,
                )
                .await?;
                return Ok(End::Relist);
            }
            Ok(Err(kube::Error::Api(s))) if too_large(&s) => {
                self.error(
                    format!(
                        "the server has not reached resourceVersion {from}: its history restarted; relisting"
                    ),
                    true,
                )
                .await?;
                return Ok(End::Relist);
            }
            Ok(Err(e)) => {
                self.failed("watch failed", &e).await?;
                return Ok(End::Failed);
            }
            Ok(Ok(s)) => s,
        };
        // Connected. Its events wait in the stream while the server's identity is checked
        // (after the watch request, so a server that holds requests still sees the watch).
        if self.verify {
            match self.read_identity().await? {
                Identity::Known(now) => {
                    self.verify = false;
                    if let Some(before) = self.identity.replace(now.clone())
                        && before != now
                    {
                        self.newest = None;
                        self.error(
                            format!(
                                "the server's history restarted (kube-system uid {before} → {now}): relisting"
                            ),
                            true,
                        )
                        .await?;
                        return Ok(End::Relist);
                    }
                }
                // RBAC hides it: versions that go backwards or that the server has not reached
                // still give a restarted server away.
                Identity::Unreadable => self.verify = false,
                Identity::Unreachable => {}
            }
        }
        // Healthy, and up to date as of `from`.
        self.send(Ok(Event::Progress(Some(self.checkpoint(from)))))
            .await?;
        let mut lines = stream;
        let mut buf = Vec::new();
        let idle = Duration::from_secs(u64::from(self.spec.watch_timeout)) + IDLE_MARGIN;
        let mut progressed = false;
        loop {
            let shard_moved = async {
                match moved.as_mut() {
                    Some(rx) => {
                        if rx.changed().await.is_err() {
                            std::future::pending::<()>().await;
                        }
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            let line = tokio::select! {
                line = tokio::time::timeout(idle, next_line(&mut lines, &mut buf, self.spec.max_event_bytes)) => line,
                () = shard_moved => return Ok(End::Relist),
            };
            match line {
                Err(_) => {
                    self.error("the watch went silent; reconnecting".into(), false)
                        .await?;
                    return Ok(End::Failed);
                }
                Ok(Ok(false)) => return Ok(if progressed { End::Resume } else { End::Closed }),
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(End::Resume),
                Ok(Err(e)) => {
                    self.error(format!("the watch broke off: {e}"), false).await?;
                    return Ok(End::Failed);
                }
                Ok(Ok(true)) => {}
            }
            if buf.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            if let Some((deleted, rv, obj)) = self.raw_event(&buf) {
                progressed = true;
                self.backoff = ReconnectBackoff::new(self.spec.backoff.0, self.spec.backoff.1);
                if let Some(end) = self.check_rv(rv.as_deref(), at).await? {
                    return Ok(end);
                }
                self.send(Ok(if deleted {
                    Event::Delete(obj)
                } else {
                    Event::Apply(obj)
                }))
                .await?;
                self.changed(rv, at).await?;
                continue;
            }
            let event: Value = match crate::json::from_slice(&buf) {
                Ok(v) => v,
                Err(e) => {
                    self.error(format!("a watch event is not JSON: {e}"), false)
                        .await?;
                    return Ok(End::Failed);
                }
            };
            progressed = true;
            self.backoff = ReconnectBackoff::new(self.spec.backoff.0, self.spec.backoff.1);
            match self.watch_event(event, at).await? {
                None => {}
                Some(end) => return Ok(end),
            }
        }
    }

    /// Before a change's objects are sent: `Some(End::Relist)` when its resourceVersion went
    /// backwards (the server's history restarted).
    async fn check_rv(&mut self, rv: Option<&str>, at: &str) -> Result<Option<End>, Gone> {
        match rv {
            Some(rv) if !self.advance(rv) => {
                self.error(
                    format!("resourceVersion went backwards ({rv} after {at}): the server's history restarted; relisting"),
                    true,
                )
                .await?;
                Ok(Some(End::Relist))
            }
            _ => Ok(None),
        }
    }

    /// After a change's objects were sent: the watch is at its resourceVersion (checkpointed).
    async fn changed(&mut self, rv: Option<String>, at: &mut String) -> Result<(), Gone> {
        if let Some(rv) = rv {
            *at = rv;
            self.send(Ok(Event::Progress(Some(self.checkpoint(at))))).await?;
        }
        Ok(())
    }

    /// Apply one watch event; `Some` ends the watch.
    async fn watch_event(&mut self, mut event: Value, at: &mut String) -> Result<Option<End>, Gone> {
        let kind = str_at(&event, "/type").to_string();
        let object = event["object"].take();
        match kind.as_str() {
            "ADDED" | "MODIFIED" | "DELETED" => {
                let rv = self.event_rv(&object);
                if let Some(end) = self.check_rv(rv.as_deref(), at).await? {
                    return Ok(Some(end));
                }
                for item in self.items(object) {
                    let Some(obj) = self.decode(item, kind == "DELETED").await? else {
                        continue;
                    };
                    let e = if kind == "DELETED" {
                        Event::Delete(obj)
                    } else {
                        Event::Apply(obj)
                    };
                    self.send(Ok(e)).await?;
                }
                self.changed(rv, at).await?;
                Ok(None)
            }
            "BOOKMARK" => {
                let rv = str_at(&object, "/metadata/resourceVersion").to_string();
                if !rv.is_empty() {
                    if !self.advance(&rv) {
                        self.error(
                            format!("a bookmark went backwards ({rv} after {at}): the server's history restarted; relisting"),
                            true,
                        )
                        .await?;
                        return Ok(Some(End::Relist));
                    }
                    *at = rv;
                }
                self.send(Ok(Event::Progress(Some(self.checkpoint(at))))).await?;
                Ok(None)
            }
            "ERROR" => {
                let code = object.get("code").and_then(Value::as_u64).unwrap_or(0);
                let message = str_at(&object, "/message").to_string();
                if code == 410 {
                    self.error(
                        format!("resourceVersion {at} is too old (410 Gone): relisting"),
                        true,
                    )
                    .await?;
                    return Ok(Some(End::Relist));
                }
                if let Ok(s) = crate::json::from_value::<kube::core::Status>(object)
                    && too_large(&s)
                {
                    self.error(
                        format!("the server has not reached resourceVersion {at}: its history restarted; relisting"),
                        true,
                    )
                    .await?;
                    return Ok(Some(End::Relist));
                }
                self.error(format!("watch error {code}: {message}"), false)
                    .await?;
                Ok(Some(End::Failed))
            }
            other => {
                self.error(format!("unknown watch event type {other:?}"), false)
                    .await?;
                Ok(None)
            }
        }
    }

    /// The typed fast path of a watch line: an ADDED, MODIFIED or DELETED event decoded
    /// straight from its text into `K` (one pass, as kube-runtime decodes), instead of into a
    /// `Value` first: (deleted, resourceVersion, object). `None` sends the line down the
    /// general path: other event types, Tables, sources without a raw decoder, objects nested
    /// deeper than serde_json's default limit (the general path decodes at any depth), and
    /// objects that do not decode (the general path reports those by name).
    fn raw_event(&self, buf: &[u8]) -> Option<(bool, Option<String>, K)> {
        let decode = self.decode_raw.as_ref()?;
        let event: RawEvent<'_> = serde_json::from_slice(buf).ok()?;
        let deleted = match &*event.kind {
            "ADDED" | "MODIFIED" => false,
            "DELETED" => true,
            _ => return None,
        };
        let head: RawObjectHead = serde_json::from_str(event.object.get()).ok()?;
        if head.kind == "Table" {
            return None;
        }
        let obj = decode(event.object.get()).ok()?;
        let rv = Some(head.metadata.resource_version).filter(|rv| !rv.is_empty());
        Some((deleted, rv, obj))
    }

    /// The resourceVersion of a watch event's object (a Table's first row's object).
    fn event_rv(&self, object: &Value) -> Option<String> {
        let rv = if object.get("kind").and_then(Value::as_str) == Some("Table") {
            object.pointer("/rows/0/object/metadata/resourceVersion")
        } else {
            object.pointer("/metadata/resourceVersion")
        };
        rv.and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    }

    /// A streamed list (`sendInitialEvents=true`): the initial objects arrive as watch events,
    /// then a bookmark marks their end; the same watch goes on with changes.
    async fn streaming_list(&mut self) -> Result<StreamEnd, Gone> {
        let wp = self.with_selectors(WatchParams::streaming_lists().timeout(self.spec.watch_timeout));
        let selector = self.current_selector();
        let stream = match self.open_watch(&wp, "", selector.as_deref()).await {
            Err(m) => {
                self.error(m, false).await?;
                return Ok(StreamEnd::Failed);
            }
            // Servers without the WatchList feature refuse the parameters.
            Ok(Err(kube::Error::Api(s))) if matches!(s.code, 400 | 403 | 422) => {
                return Ok(StreamEnd::Unsupported);
            }
            Ok(Err(e)) => {
                self.failed("watch failed", &e).await?;
                return Ok(StreamEnd::Failed);
            }
            Ok(Ok(s)) => s,
        };
        self.send(Ok(Event::Init)).await?;
        let mut lines = stream;
        let mut buf = Vec::new();
        let idle = Duration::from_secs(u64::from(self.spec.watch_timeout)) + IDLE_MARGIN;
        loop {
            match tokio::time::timeout(idle, next_line(&mut lines, &mut buf, self.spec.max_event_bytes)).await
            {
                Ok(Ok(true)) => {}
                Ok(Ok(false)) => return Ok(StreamEnd::Failed),
                Ok(Err(e)) => {
                    self.error(format!("the watch broke off: {e}"), false).await?;
                    return Ok(StreamEnd::Failed);
                }
                Err(_) => return Ok(StreamEnd::Failed),
            }
            if buf.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let Ok(mut event) = crate::json::from_slice::<Value>(&buf) else {
                self.error("a watch event is not JSON".into(), false).await?;
                return Ok(StreamEnd::Failed);
            };
            match str_at(&event, "/type") {
                "ADDED" => {
                    for item in self.items(event["object"].take()) {
                        if let Some(obj) = self.decode(item, false).await? {
                            self.send(Ok(Event::InitApply(obj))).await?;
                        }
                    }
                }
                "BOOKMARK"
                    if str_at(&event, "/object/metadata/annotations/k8s.io~1initial-events-end")
                        == "true" =>
                {
                    let rv = str_at(&event, "/object/metadata/resourceVersion").to_string();
                    self.newest = rv.parse().ok();
                    self.send(Ok(Event::InitDone)).await?;
                    self.send(Ok(Event::Progress(Some(self.checkpoint(&rv))))).await?;
                    // The same stream goes on with changes; hand it to the ordinary watch loop
                    // by resuming from the bookmark (the server keeps that history).
                    self.listed_selector = selector;
                    return Ok(StreamEnd::Listed(rv));
                }
                "BOOKMARK" => {}
                "ERROR" => {
                    let code = event.pointer("/object/code").and_then(Value::as_u64).unwrap_or(0);
                    if matches!(code, 400 | 403 | 422) {
                        return Ok(StreamEnd::Unsupported);
                    }
                    self.error(format!("watch error {code} during a streamed list"), false)
                        .await?;
                    return Ok(StreamEnd::Failed);
                }
                // Before the end bookmark every event is part of the initial state.
                _ => return Ok(StreamEnd::Failed),
            }
        }
    }
}

enum StreamEnd {
    Listed(String),
    Unsupported,
    Failed,
}

/// Send `req` and wait for the response's headers (at most [`HEADER_TIMEOUT`]); an error
/// status becomes [`kube::Error::Api`] with the server's Status, read from a bounded body and
/// never logged.
pub(crate) async fn send(
    client: &Client,
    req: http::Request<Vec<u8>>,
) -> Result<http::Response<kube::client::Body>, kube::Error> {
    let res = match tokio::time::timeout(HEADER_TIMEOUT, client.send(req.map(kube::client::Body::from))).await
    {
        Err(_) => return Err(timed_out("net/http: timeout awaiting response headers")),
        Ok(res) => res?,
    };
    let code = res.status();
    if code.is_client_error() || code.is_server_error() {
        // A body that breaks off or is not a Status still has its code to go by.
        let body = read_body(res.into_body(), MAX_ERROR_BODY)
            .await
            .unwrap_or_default();
        return Err(kube::Error::Api(status_of(code, &body).boxed()));
    }
    Ok(res)
}

/// The largest answer [`request_json`] reads.
pub const MAX_ANSWER_BYTES: usize = 64 << 20;

/// One request's JSON answer, the way the engine makes its own: timed, bounded (64 MiB),
/// decoded at any depth, and never logged (kube's `Client::request` logs a body that does not
/// decode). For `crwatch get NAME` and other one-off reads.
pub async fn request_json<T: serde::de::DeserializeOwned>(
    client: &Client,
    req: http::Request<Vec<u8>>,
) -> Result<T, kube::Error> {
    let res = send(client, req).await?;
    let body = read_body(res.into_body(), MAX_ANSWER_BYTES).await?;
    crate::json::from_slice(&body).map_err(kube::Error::SerdeError)
}

/// A whole response body of at most `max` bytes, never silent for longer than
/// [`BODY_IDLE_TIMEOUT`].
pub(crate) async fn read_body(mut body: kube::client::Body, max: usize) -> Result<Vec<u8>, kube::Error> {
    use http_body_util::BodyExt;
    let mut out = Vec::new();
    loop {
        let frame = match tokio::time::timeout(BODY_IDLE_TIMEOUT, body.frame()).await {
            Err(_) => {
                return Err(timed_out(&format!(
                    "the server stopped sending its answer for {}s",
                    BODY_IDLE_TIMEOUT.as_secs()
                )));
            }
            Ok(None) => return Ok(out),
            Ok(Some(frame)) => frame?,
        };
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > max {
                return Err(kube::Error::Service(Box::new(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("the server's answer is larger than {max} bytes"),
                ))));
            }
            out.extend_from_slice(&data);
        }
    }
}

/// A transport-level timeout, as [`error_kind`] reports it.
fn timed_out(what: &str) -> kube::Error {
    kube::Error::Service(Box::new(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        what.to_string(),
    )))
}

/// The Status of an error response: the server's own, or (for a body that is not one, e.g. a
/// proxy's page) one from the code alone, worded as client-go words such answers. The body
/// itself is left out: it may be anything.
fn status_of(code: http::StatusCode, body: &[u8]) -> kube::core::Status {
    if let Ok(mut s) = crate::json::from_slice::<kube::core::Status>(body)
        && (s.code != 0 || !s.message.is_empty() || !s.reason.is_empty())
    {
        if s.code == 0 {
            s.code = code.as_u16();
        }
        return s;
    }
    let (reason, message) = match code.as_u16() {
        401 => ("Unauthorized", "the server has asked for the client to provide credentials".to_string()),
        403 => ("Forbidden", "the server does not allow access to the requested resource".to_string()),
        404 => ("NotFound", "the server could not find the requested resource".to_string()),
        409 => ("Conflict", "the server reported a conflict".to_string()),
        422 => ("Invalid", "the server rejected our request due to an error in our request".to_string()),
        429 => (
            "TooManyRequests",
            "the server has received too many requests and has asked us to try again later".to_string(),
        ),
        500 => ("InternalError", "an error on the server has prevented the request from succeeding".to_string()),
        503 => ("ServiceUnavailable", "the server is currently unable to handle the request".to_string()),
        504 => (
            "Timeout",
            "the server was unable to return a response in the time allotted, but may still be processing the request"
                .to_string(),
        ),
        n => (
            "",
            format!("the server responded with the status code {n} but did not return more information"),
        ),
    };
    kube::core::Status::failure(&message, reason).with_code(code.as_u16())
}

/// "Too large resource version": the server has not reached the version asked for (504 with
/// cause `ResourceVersionTooLarge`, as the kube-apiserver's watch cache answers).
fn too_large(s: &kube::core::Status) -> bool {
    s.message.contains("Too large resource version")
        || s.details
            .as_ref()
            .is_some_and(|d| d.causes.iter().any(|c| c.reason == "ResourceVersionTooLarge"))
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or_default()
}

/// The kind of a failed request: the server's status, or the transport's innermost cause
/// (whether the connection was refused, and the innermost message).
///
/// ```
/// use crwatch::source::ErrorKind;
/// use crwatch::source::kube::error_kind;
/// let status = kube::core::Status::failure("nope", "Forbidden").with_code(403);
/// assert!(matches!(error_kind(&kube::Error::Api(status.boxed())), ErrorKind::Server { code: 403, .. }));
/// ```
pub fn error_kind(e: &kube::Error) -> ErrorKind {
    match e {
        kube::Error::Api(s) => ErrorKind::Server {
            code: s.code,
            reason: s.reason.clone(),
            message: s.message.clone(),
        },
        kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_) => {
            let mut cur: &(dyn std::error::Error + 'static) = e;
            let mut refused = false;
            let mut header_timeout = false;
            loop {
                if let Some(io) = cur.downcast_ref::<std::io::Error>() {
                    refused |= io.kind() == std::io::ErrorKind::ConnectionRefused;
                }
                // The client's response-header timeout (`crwatch::client`).
                header_timeout |= cur.is::<tower::timeout::error::Elapsed>();
                match cur.source() {
                    Some(next) => cur = next,
                    None => {
                        let cause = if header_timeout {
                            "net/http: timeout awaiting response headers".to_string()
                        } else {
                            transport_cause(cur.to_string())
                        };
                        return ErrorKind::Transport { refused, cause };
                    }
                }
            }
        }
        _ => ErrorKind::Other,
    }
}

/// A transport failure's innermost cause in the words kubectl users know (Go's): rustls's
/// certificate errors and the connect timeout's bare "deadline has elapsed" say what failed.
fn transport_cause(innermost: String) -> String {
    const TLS: &str = "tls: failed to verify certificate: x509: ";
    let x509 = [
        ("UnknownIssuer", "certificate signed by unknown authority"),
        ("Expired", "certificate has expired or is not yet valid"),
        ("NotValidYet", "certificate has expired or is not yet valid"),
        (
            "NotValidForName",
            "certificate is not valid for the server's name",
        ),
        // A new CA with the old one's name: Go finds the candidate and says "unknown authority".
        ("BadSignature", "certificate signed by unknown authority"),
        ("Revoked", "certificate has been revoked"),
    ];
    if let Some(detail) = innermost.strip_prefix("invalid peer certificate: ") {
        return match x509.iter().find(|(k, _)| detail.starts_with(k)) {
            Some((_, words)) => format!("{TLS}{words} (invalid peer certificate: {detail})"),
            None => format!("tls: failed to verify certificate: {detail}"),
        };
    }
    if innermost == "deadline has elapsed" {
        // hyper-timeout's connect timeout: the TCP connect or the TLS handshake did not finish.
        return "timeout connecting to the server (TCP connect or TLS handshake)".into();
    }
    innermost
}

/// What went wrong, in one line, as it is worth showing: the server's answer, or the transport's
/// innermost cause in kubectl's words.
pub(crate) fn cause_of(e: &kube::Error) -> String {
    match error_kind(e) {
        ErrorKind::Server {
            code,
            reason,
            message,
        } if message.is_empty() => format!("{reason} ({code})"),
        ErrorKind::Server { code, message, .. } => format!("{message} ({code})"),
        ErrorKind::Transport { cause, .. } => cause,
        _ => message_of(e),
    }
}

/// What went wrong, in one line (kube's errors nest their causes; no response body).
pub(crate) fn message_of(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} ({})", s.message, s.code),
        other => {
            let mut msg = other.to_string();
            let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(other);
            while let Some(c) = cur {
                let s = c.to_string();
                if !msg.contains(&s) {
                    msg = format!("{msg}: {s}");
                }
                cur = c.source();
            }
            msg
        }
    }
}

/// Read one line into `buf` (without the newline): `Ok(false)` at the end of the stream. A
/// line longer than `max` is an error rather than unbounded memory.
async fn next_line<R: AsyncBufRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<bool> {
    buf.clear();
    loop {
        let avail = r.fill_buf().await?;
        if avail.is_empty() {
            // A partial last line is an interrupted event: drop it.
            return Ok(false);
        }
        if let Some(i) = avail.iter().position(|b| *b == b'\n') {
            buf.extend_from_slice(&avail[..i]);
            r.consume_unpin(i + 1);
            return Ok(true);
        }
        let n = avail.len();
        buf.extend_from_slice(avail);
        r.consume_unpin(n);
        if buf.len() > max {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("a watch event is larger than {max} bytes"),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_split_and_bounded() {
        let data: &[u8] = b"{\"a\":1}\n{\"b\":2}\npartial";
        let mut r = futures::io::Cursor::new(data);
        let mut buf = vec![];
        assert!(next_line(&mut r, &mut buf, 100).await.unwrap());
        assert_eq!(buf, b"{\"a\":1}");
        assert!(next_line(&mut r, &mut buf, 100).await.unwrap());
        assert_eq!(buf, b"{\"b\":2}");
        assert!(!next_line(&mut r, &mut buf, 100).await.unwrap());
        let big = vec![b'x'; 1000];
        let mut r = futures::io::BufReader::with_capacity(10, futures::io::Cursor::new(big));
        let e = next_line(&mut r, &mut buf, 100).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
    }

    #[test]
    fn error_answers_keep_the_servers_status_and_never_other_bodies() {
        let status = br#"{"kind":"Status","status":"Failure","message":"configmaps is forbidden","reason":"Forbidden","code":403}"#;
        let s = status_of(http::StatusCode::FORBIDDEN, status);
        assert_eq!(
            (s.code, s.reason.as_str(), s.message.as_str()),
            (403, "Forbidden", "configmaps is forbidden")
        );
        // A proxy's page: its code in client-go's words, and nothing of the body.
        let s = status_of(
            http::StatusCode::INTERNAL_SERVER_ERROR,
            b"<html>password=hunter2</html>",
        );
        assert_eq!(s.code, 500);
        assert_eq!(
            s.message,
            "an error on the server has prevented the request from succeeding"
        );
        let s = status_of(http::StatusCode::UNAUTHORIZED, b"");
        assert_eq!(
            (s.reason.as_str(), s.message.as_str()),
            (
                "Unauthorized",
                "the server has asked for the client to provide credentials"
            )
        );
        let s = status_of(http::StatusCode::IM_A_TEAPOT, b"{}");
        assert_eq!(
            s.message,
            "the server responded with the status code 418 but did not return more information"
        );
    }

    #[test]
    fn transport_causes_are_worded_as_go_words_them() {
        assert_eq!(
            transport_cause("invalid peer certificate: UnknownIssuer".into()),
            "tls: failed to verify certificate: x509: certificate signed by unknown authority (invalid peer certificate: UnknownIssuer)"
        );
        assert!(
            transport_cause("invalid peer certificate: BadSignature".into())
                .contains("signed by unknown authority")
        );
        assert!(
            transport_cause("invalid peer certificate: Other(x)".into())
                .starts_with("tls: failed to verify certificate: Other")
        );
        assert_eq!(
            transport_cause("deadline has elapsed".into()),
            "timeout connecting to the server (TCP connect or TLS handshake)"
        );
        assert_eq!(
            transport_cause("Connection refused (os error 111)".into()),
            "Connection refused (os error 111)"
        );
        let timeout = timed_out("net/http: timeout awaiting response headers");
        assert_eq!(
            error_kind(&timeout),
            ErrorKind::Transport {
                refused: false,
                cause: "net/http: timeout awaiting response headers".into()
            }
        );
    }

    #[test]
    fn too_large_is_recognised_by_cause_or_message() {
        let s: kube::core::Status = serde_json::from_value(serde_json::json!({
            "status": "Failure", "code": 504, "reason": "Timeout",
            "message": "Timeout: Too large resource version: 28, current: 5",
            "details": {"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}]}
        }))
        .unwrap();
        assert!(too_large(&s));
    }
}
