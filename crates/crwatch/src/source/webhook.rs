//! An inbound HTTP(S) endpoint as a source: objects pushed as JSON (one, a list, a `List`) or
//! as CloudEvents 1.0 (structured, batched or binary mode), optionally HMAC-signed, handed to
//! the informer as `Apply` / `Delete` events, with an optional periodic reconciliation against
//! a list URL so that pushes the endpoint missed are found.
//!
//! # Endpoints
//!
//! | method and path | does |
//! |---|---|
//! | `POST /` or `POST /objects` | applies (or deletes, see below) the pushed objects |
//! | `DELETE /objects/{namespace}/{name}` | deletes one object (`_` for no namespace) |
//!
//! A push is deleted rather than applied when it says so: the `X-Crwatch-Operation: delete`
//! header, or a CloudEvent whose `type` ends in `.deleted` (as
//! `io.crwatch.resource.deleted`, the type crwatch's own webhook sink sends) or `.delete`.
//!
//! # Answers
//!
//! `202 Accepted` once every event of the request was handed to the consumer (never earlier);
//! `400` for JSON that is not an object, or lacks `apiVersion`, `kind` or `metadata.name`
//! (the JSON error body says which item and what); `401` for a missing or wrong signature
//! when a secret is configured; `404` for other paths; `405` (with `Allow`) for other
//! methods; `413` over the size limit; `415` for content types other than JSON and
//! CloudEvents JSON; `503` with `Retry-After` when the consumer did not take the events in
//! time (the queue is bounded; nothing is buffered beyond it). A request is validated
//! completely before anything is handed over: a list with one bad item applies nothing.
//!
//! # Events
//!
//! `Progress(None)` once the server listens and after every accepted request; the first one
//! marks the informer synced. Without reconciliation the source never lists: pushes are all
//! there is, and an informer resumed from a snapshot keeps what it had (an empty list would
//! report every object of the snapshot as deleted after a restart). With reconciliation, each
//! successful fetch of the list URL is a complete list (`Init`, `InitApply`*, `InitDone`), and
//! the informer works out what the pushes missed.
//! A push that arrives while a reconciliation is fetching may be undone by that (older) list
//! until the next push or reconciliation: keep the list URL as fresh as the pushes.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::{ALLOW, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use hmac::{Hmac, KeyInit, Mac};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use kube::api::DynamicObject;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::net::TcpListener;
use tokio::sync::{Mutex, mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::http::{HttpSource, looks_like_kubernetes, value_hash};
use super::object::{ObjectBuilder, stable_uid};
use super::{Event, EventStream, Source, SourceError};

/// The default listen address.
pub const DEFAULT_BIND: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 8090);
/// The default limit of a request body.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
/// The default signature header (`sha256=<hex>`). GitHub's `X-Hub-Signature-256` is accepted too.
pub const DEFAULT_SIGNATURE_HEADER: &str = "X-Crwatch-Signature";
/// GitHub's signature header, always accepted when a secret is configured.
pub const GITHUB_SIGNATURE_HEADER: &str = "X-Hub-Signature-256";
/// The header that turns a push into a delete (`delete`) or says it is an apply (`apply`).
pub const OPERATION_HEADER: &str = "X-Crwatch-Operation";
/// How many requests' events may wait for the consumer by default.
pub const DEFAULT_QUEUE: usize = 64;
/// How long a request waits for room in the queue by default before it gets a 503.
pub const DEFAULT_HANDOFF_TIMEOUT: Duration = Duration::from_secs(5);
/// The default pause between reconciliations.
pub const DEFAULT_RECONCILE_INTERVAL: Duration = Duration::from_secs(300);
/// The `apiVersion` of the placeholder sent for a `DELETE` of an object the source never saw.
pub const API_VERSION: &str = "webhook.crwatch.io/v1";

const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A setting of a [`WebhookSource`] that cannot work, or a listener that cannot start. The
/// message names the setting or file and what to do; never a secret.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The address cannot be bound.
    #[error("binding {addr}: {source} (is another process using the port? choose another address)")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The secret file is unreadable or empty.
    #[error("secret file {path}: {reason}")]
    Secret {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The certificate or key cannot be used.
    #[error("tls: {0}")]
    Tls(String),
    /// A number or duration outside its range.
    #[error("{setting} = {value} is out of range: expected {expected}")]
    Range {
        /// The builder method.
        setting: &'static str,
        /// The rejected value.
        value: String,
        /// The accepted range.
        expected: &'static str,
    },
    /// A setting with a wrong shape.
    #[error("{setting}: {reason}")]
    Invalid {
        /// The builder method.
        setting: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The reconciliation's HTTP source is misconfigured.
    #[error("reconcile: {0}")]
    Reconcile(#[from] super::http::HttpSourceError),
}

/// An HTTP(S) endpoint that receives pushed objects (see the [module](self) for the endpoints,
/// answers and events).
///
/// ```
/// use std::time::Duration;
/// use crwatch::source::webhook::WebhookSource;
/// use crwatch::source::{Event, Source};
/// use futures::StreamExt;
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let source = WebhookSource::new("127.0.0.1:0".parse()?)
///     .max_body_bytes(256 * 1024)
///     .listen()
///     .await?;
/// let addr = source.local_addr().expect("listening");
/// let mut events = Box::new(source).events();
/// // "Listening"; without reconciliation there is no list, only pushes.
/// assert_eq!(events.next().await.transpose()?, Some(Event::Progress(None)));
/// println!("push objects to http://{addr}/objects");
/// # Ok(()) }
/// ```
pub struct WebhookSource {
    bind: SocketAddr,
    tls: Option<(PathBuf, PathBuf)>,
    secret_file: Option<PathBuf>,
    signature_header: String,
    max_body: usize,
    queue: usize,
    handoff_timeout: Duration,
    namespace: Option<String>,
    source_id: String,
    reconcile: Option<(HttpSource, Duration)>,
    prepared: Option<Prepared>,
    addr_tx: watch::Sender<Option<SocketAddr>>,
}

impl fmt::Debug for WebhookSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookSource")
            .field("bind", &self.bind)
            .field("local_addr", &self.local_addr())
            .field("tls", &self.tls.is_some())
            .field("secret_file", &self.secret_file)
            .field("max_body", &self.max_body)
            .field("reconcile", &self.reconcile)
            .finish_non_exhaustive()
    }
}

/// Everything checked and opened before serving.
struct Prepared {
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mac: Option<Hmac<Sha256>>,
    reconcile: Option<(HttpSource, super::http::Fetcher, Duration)>,
}

/// The address a [`WebhookSource`] listens on, once it does (see [`WebhookSource::address`]).
#[derive(Debug, Clone)]
pub struct BoundAddress(watch::Receiver<Option<SocketAddr>>);

impl BoundAddress {
    /// Wait until the source listens; `None` if it stopped (or failed) before that.
    pub async fn wait(&mut self) -> Option<SocketAddr> {
        self.0.wait_for(Option::is_some).await.ok().and_then(|a| *a)
    }
}

impl WebhookSource {
    /// An endpoint on `bind` (use port 0 for any free port), plain HTTP, unsigned, 1 MiB limit.
    pub fn new(bind: SocketAddr) -> Self {
        WebhookSource {
            bind,
            tls: None,
            secret_file: None,
            signature_header: DEFAULT_SIGNATURE_HEADER.to_string(),
            max_body: DEFAULT_MAX_BODY_BYTES,
            queue: DEFAULT_QUEUE,
            handoff_timeout: DEFAULT_HANDOFF_TIMEOUT,
            namespace: None,
            source_id: "webhook".to_string(),
            reconcile: None,
            prepared: None,
            addr_tx: watch::Sender::new(None),
        }
    }

    /// Serve HTTPS with the certificate chain and private key in these PEM files.
    pub fn tls(mut self, cert_file: impl Into<PathBuf>, key_file: impl Into<PathBuf>) -> Self {
        self.tls = Some((cert_file.into(), key_file.into()));
        self
    }

    /// Require an HMAC-SHA256 signature of the body, keyed with the contents of `path`
    /// (trailing whitespace ignored), in [`WebhookSource::signature_header`] or GitHub's
    /// `X-Hub-Signature-256`, as `sha256=<hex>`.
    pub fn secret_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.secret_file = Some(path.into());
        self
    }

    /// The signature header (default `X-Crwatch-Signature`).
    pub fn signature_header(mut self, name: impl Into<String>) -> Self {
        self.signature_header = name.into();
        self
    }

    /// The largest request body accepted (1 KiB to 64 MiB; default 1 MiB).
    pub fn max_body_bytes(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// How many requests' events may wait for the consumer (1 to 65536; default 64).
    pub fn queue(mut self, requests: usize) -> Self {
        self.queue = requests;
        self
    }

    /// How long a request waits for room in the queue before it gets `503` with
    /// `Retry-After` (1 ms to 5 min; default 5 s).
    pub fn handoff_timeout(mut self, timeout: Duration) -> Self {
        self.handoff_timeout = timeout;
        self
    }

    /// The namespace of pushed objects that have none (default: none).
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// The name that makes the uids of objects without one ([`stable_uid`]`(id, "ns/name")`):
    /// keep it stable across restarts (default `webhook`).
    pub fn source_id(mut self, id: impl Into<String>) -> Self {
        self.source_id = id.into();
        self
    }

    /// Every `interval` (1 s to 24 h), and once at start, fetch the complete list with
    /// `list` (its URL, headers, token, TLS, limits and `items` pointer; a body that is a
    /// Kubernetes `List` needs no pointer) and send it as a complete list, so the informer
    /// finds pushes that were missed. Items must have `apiVersion`, `kind` and `metadata.name`,
    /// as pushed objects do.
    pub fn reconcile(mut self, list: HttpSource, interval: Duration) -> Self {
        self.reconcile = Some((list, interval));
        self
    }

    /// Where the source listens, once [`WebhookSource::listen`] returned.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        *self.addr_tx.borrow()
    }

    /// A handle to wait for the address (useful with port 0 when the informer starts the
    /// source).
    pub fn address(&self) -> BoundAddress {
        BoundAddress(self.addr_tx.subscribe())
    }

    /// Check the settings, read the secret and the certificate, and bind the address, so
    /// errors show before the informer starts and [`WebhookSource::local_addr`] is known.
    /// Serving starts with [`Source::events`].
    pub async fn listen(mut self) -> Result<Self, WebhookError> {
        if self.prepared.is_none() {
            self.prepared = Some(self.prepare().await?);
        }
        Ok(self)
    }

    fn check(&self) -> Result<(), WebhookError> {
        let range = |setting, value: String, expected| WebhookError::Range {
            setting,
            value,
            expected,
        };
        if !(1024..=64 * 1024 * 1024).contains(&self.max_body) {
            return Err(range(
                "max_body_bytes",
                self.max_body.to_string(),
                "1024 to 67108864",
            ));
        }
        if !(1..=65536).contains(&self.queue) {
            return Err(range("queue", self.queue.to_string(), "1 to 65536"));
        }
        if !(Duration::from_millis(1)..=Duration::from_secs(300)).contains(&self.handoff_timeout) {
            return Err(range(
                "handoff_timeout",
                format!("{:?}", self.handoff_timeout),
                "1ms to 5m",
            ));
        }
        if let Some((_, interval)) = &self.reconcile
            && !(Duration::from_secs(1)..=Duration::from_secs(86400)).contains(interval)
        {
            return Err(range(
                "reconcile (interval)",
                format!("{interval:?}"),
                "1s to 24h",
            ));
        }
        if axum::http::HeaderName::from_bytes(self.signature_header.as_bytes()).is_err() {
            return Err(WebhookError::Invalid {
                setting: "signature_header",
                reason: format!("{:?} is not a valid header name", self.signature_header),
            });
        }
        if self.source_id.is_empty() {
            return Err(WebhookError::Invalid {
                setting: "source_id",
                reason: "must not be empty".into(),
            });
        }
        Ok(())
    }

    async fn prepare(&self) -> Result<Prepared, WebhookError> {
        self.check()?;
        let mac = match &self.secret_file {
            Some(path) => Some(read_secret(path)?),
            None => None,
        };
        let tls = match &self.tls {
            Some((cert, key)) => Some(tls_acceptor(cert, key)?),
            None => None,
        };
        let reconcile = match &self.reconcile {
            Some((list, interval)) => Some((list.clone(), list.fetcher(false)?, *interval)),
            None => None,
        };
        let listener = TcpListener::bind(self.bind)
            .await
            .map_err(|source| WebhookError::Bind {
                addr: self.bind,
                source,
            })?;
        let local = listener.local_addr().map_err(|source| WebhookError::Bind {
            addr: self.bind,
            source,
        })?;
        self.addr_tx.send_replace(Some(local));
        Ok(Prepared {
            listener,
            tls,
            mac,
            reconcile,
        })
    }

    /// Start serving; the receiver gets every batch of events.
    async fn start(
        mut self,
    ) -> Result<(mpsc::Receiver<Vec<Item>>, tokio_util::sync::DropGuard), SourceError> {
        let name = self.describe();
        let prepared = match self.prepared.take() {
            Some(p) => p,
            None => self
                .prepare()
                .await
                .map_err(|e| SourceError::new(name.clone(), e.to_string()))?,
        };
        let (tx, rx) = mpsc::channel(self.queue);
        let cancel = CancellationToken::new();
        let shared = Arc::new(Shared {
            name: name.clone(),
            tx,
            known: Mutex::new(HashMap::new()),
            mac: prepared.mac,
            signature_header: self.signature_header.to_ascii_lowercase(),
            max_body: self.max_body,
            handoff_timeout: self.handoff_timeout,
            namespace: self.namespace.clone(),
            source_id: self.source_id.clone(),
        });
        let local = self.local_addr();
        tracing::info!(source = %name, addr = ?local, tls = prepared.tls.is_some(), "webhook source listening");
        // Room for these is certain: the channel is new and holds at least one batch.
        let first = vec![Ok(Event::Progress(None))];
        let _ = shared.tx.try_send(first);
        if let Some((list, fetcher, interval)) = prepared.reconcile {
            tokio::spawn(reconcile_loop(
                shared.clone(),
                list,
                fetcher,
                interval,
                cancel.clone(),
            ));
        }
        let app = Router::new().fallback(handle).with_state(shared);
        tokio::spawn(serve(prepared.listener, prepared.tls, app, cancel.clone()));
        Ok((rx, cancel.drop_guard()))
    }
}

impl Source<DynamicObject> for WebhookSource {
    fn describe(&self) -> String {
        match self.local_addr() {
            Some(addr) => format!("webhook {addr}"),
            None => format!("webhook {}", self.bind),
        }
    }

    fn events(self: Box<Self>) -> EventStream<DynamicObject> {
        futures::stream::once(self.start())
            .flat_map(|started| match started {
                Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
                Ok((rx, guard)) => futures::stream::unfold(
                    (rx, guard, VecDeque::new()),
                    |(mut rx, guard, mut queue)| async move {
                        loop {
                            if let Some(item) = queue.pop_front() {
                                return Some((item, (rx, guard, queue)));
                            }
                            queue.extend(rx.recv().await?);
                        }
                    },
                )
                .boxed(),
            })
            .boxed()
    }
}

type Item = Result<Event<DynamicObject>, SourceError>;
type Key = (Option<String>, String);

/// What request handlers share.
struct Shared {
    name: String,
    tx: mpsc::Sender<Vec<Item>>,
    /// The last state of every object handed over, by (namespace, name). Its lock also puts
    /// hand-overs in order, so this map and the consumer agree.
    known: Mutex<HashMap<Key, DynamicObject>>,
    mac: Option<Hmac<Sha256>>,
    signature_header: String,
    max_body: usize,
    handoff_timeout: Duration,
    namespace: Option<String>,
    source_id: String,
}

fn read_secret(path: &PathBuf) -> Result<Hmac<Sha256>, WebhookError> {
    let bad = |reason: String| WebhookError::Secret {
        path: path.clone(),
        reason,
    };
    let raw = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    // `echo secret > file` adds a newline the sender never signs with.
    let key = raw.trim_ascii_end();
    if key.is_empty() {
        return Err(bad("empty; put the shared secret in it".into()));
    }
    <Hmac<Sha256> as KeyInit>::new_from_slice(key)
        .map_err(|_| bad("cannot be used as an HMAC-SHA256 key".into()))
}

fn tls_acceptor(cert: &PathBuf, key: &PathBuf) -> Result<tokio_rustls::TlsAcceptor, WebhookError> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| WebhookError::Tls(format!("reading certificate file {}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(WebhookError::Tls(format!(
            "certificate file {} holds no PEM certificates",
            cert.display()
        )));
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| WebhookError::Tls(format!("reading key file {}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| WebhookError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| {
            WebhookError::Tls(format!(
                "certificate {} and key {} do not fit together: {e}",
                cert.display(),
                key.display()
            ))
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Accept connections until cancelled.
async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    app: Router,
    cancel: CancellationToken,
) {
    let mut connections = JoinSet::new();
    loop {
        let tcp = tokio::select! {
            _ = cancel.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of file descriptors, usually: give the system a moment.
                    tracing::warn!(error = %e, "webhook source: accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let (tls, app) = (tls.clone(), app.clone());
        connections.spawn(async move {
            let service = TowerToHyperService::new(app);
            let builder = Builder::new(TokioExecutor::new());
            let result = match tls {
                None => builder.serve_connection(TokioIo::new(tcp), service).await,
                Some(acceptor) => {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => builder.serve_connection(TokioIo::new(stream), service).await,
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "webhook source: TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!("webhook source: TLS handshake timed out");
                            return;
                        }
                    }
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "webhook source: connection ended with an error");
            }
        });
    }
    // Dropping the set aborts the connections: the consumer is gone.
    connections.shutdown().await;
}

/// Fetch the list URL now and every `interval`, and hand each list over complete.
async fn reconcile_loop(
    shared: Arc<Shared>,
    list: HttpSource,
    fetcher: super::http::Fetcher,
    interval: Duration,
    cancel: CancellationToken,
) {
    let mut failures = 0u32;
    loop {
        let delay = match reconcile_once(&shared, &list, &fetcher).await {
            Ok(()) => {
                failures = 0;
                interval
            }
            Err(message) => {
                failures = failures.saturating_add(1);
                let err = SourceError::new(shared.name.clone(), format!("reconciling: {message}"));
                if shared.tx.send(vec![Err(err)]).await.is_err() {
                    return;
                }
                // 1 s doubling, never longer than the interval.
                Duration::from_secs(1u64 << failures.min(16).saturating_sub(1)).min(interval)
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

async fn reconcile_once(
    shared: &Shared,
    list: &HttpSource,
    fetcher: &super::http::Fetcher,
) -> Result<(), String> {
    let body = match fetcher.fetch().await.map_err(|e| e.message)? {
        super::http::Fetched::Body(body, _) => body,
        // Validators are off: a full body always comes back.
        _ => return Err("the list URL answered without a body".into()),
    };
    let body = match body {
        Value::Object(mut obj)
            if !list.has_items_pointer() && obj.get("items").is_some_and(Value::is_array) =>
        {
            obj.remove("items").unwrap_or(Value::Null)
        }
        other => other,
    };
    let items = list.extract_items(body)?;
    let mut objects = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        objects.push(shared.to_object(item, Some(i)).map_err(|e| e.message)?);
    }
    let mut known = shared.known.lock().await;
    let mut batch = Vec::with_capacity(objects.len() + 3);
    batch.push(Ok(Event::Init));
    let mut next = HashMap::with_capacity(objects.len());
    for obj in objects {
        next.insert(key_of(&obj), obj.clone());
        batch.push(Ok(Event::InitApply(obj)));
    }
    batch.push(Ok(Event::InitDone));
    batch.push(Ok(Event::Progress(None)));
    shared
        .tx
        .send(batch)
        .await
        .map_err(|_| "the consumer is gone".to_string())?;
    *known = next;
    Ok(())
}

fn key_of(obj: &DynamicObject) -> Key {
    (
        obj.metadata.namespace.clone(),
        obj.metadata.name.clone().unwrap_or_default(),
    )
}

/// A request refused, with its status and a message for the sender.
#[derive(Debug)]
struct Reject {
    status: StatusCode,
    message: String,
}

fn reject(status: StatusCode, message: impl Into<String>) -> Reject {
    Reject {
        status,
        message: message.into(),
    }
}

impl IntoResponse for Reject {
    fn into_response(self) -> Response {
        (self.status, axum::Json(json!({"error": self.message}))).into_response()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Apply,
    Delete,
}

/// What one request asks for, validated.
enum Change {
    Apply(DynamicObject),
    /// A delete of an object, with the state the sender sent if any.
    Delete(Key, Option<DynamicObject>),
}

async fn handle(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    match shared.handle(req).await {
        Ok(r) => r,
        Err(r) => r.into_response(),
    }
}

impl Shared {
    async fn handle(&self, req: Request) -> Result<Response, Reject> {
        let path = req.uri().path().trim_end_matches('/').to_string();
        let segments: Vec<&str> = path.split('/').skip(1).collect();
        let delete_target = match segments.as_slice() {
            [] | [""] | ["objects"] => {
                if req.method() != Method::POST {
                    return Ok(method_not_allowed("POST"));
                }
                None
            }
            ["objects", ns, name] if !ns.is_empty() && !name.is_empty() => {
                if req.method() != Method::DELETE {
                    return Ok(method_not_allowed("DELETE"));
                }
                let ns = percent_decode(ns)
                    .ok_or_else(|| reject(StatusCode::BAD_REQUEST, "bad namespace in path"))?;
                let name = percent_decode(name)
                    .ok_or_else(|| reject(StatusCode::BAD_REQUEST, "bad name in path"))?;
                Some(((ns != "_").then_some(ns), name))
            }
            _ => {
                return Err(reject(
                    StatusCode::NOT_FOUND,
                    "no such endpoint: POST / or /objects, DELETE /objects/{namespace}/{name}",
                ));
            }
        };
        let (parts, body) = req.into_parts();
        let body = self.read_body(&parts.headers, body).await?;
        self.verify(&parts.headers, &body)?;
        let changes = match delete_target {
            Some(key) => vec![Change::Delete(key, None)],
            None => self.parse(&parts.headers, &body)?,
        };
        self.hand_over(changes).await
    }

    async fn read_body(&self, headers: &HeaderMap, body: Body) -> Result<Vec<u8>, Reject> {
        let too_large = || {
            reject(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is larger than the limit of {} bytes", self.max_body),
            )
        };
        if let Some(len) = headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            && len > self.max_body as u64
        {
            return Err(too_large());
        }
        let mut out = Vec::new();
        let mut stream = body.into_data_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|_| reject(StatusCode::BAD_REQUEST, "reading the body failed"))?;
            if out.len() + chunk.len() > self.max_body {
                return Err(too_large());
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    /// Check the HMAC-SHA256 signature, when a secret is configured (constant-time compare).
    fn verify(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), Reject> {
        let Some(mac) = &self.mac else { return Ok(()) };
        let unauthorized = |m: &str| reject(StatusCode::UNAUTHORIZED, m);
        let value = headers
            .get(self.signature_header.as_str())
            .or_else(|| headers.get("x-hub-signature-256"))
            .ok_or_else(|| {
                unauthorized("missing signature: send the HMAC-SHA256 of the body as sha256=<hex>")
            })?;
        let value = value
            .to_str()
            .map_err(|_| unauthorized("malformed signature"))?
            .trim();
        let hex_part = value
            .strip_prefix("sha256=")
            .ok_or_else(|| unauthorized("malformed signature: expected sha256=<hex>"))?;
        let tag =
            hex::decode(hex_part).map_err(|_| unauthorized("malformed signature: expected sha256=<hex>"))?;
        mac.clone()
            .chain_update(body)
            .verify_slice(&tag)
            .map_err(|_| unauthorized("the signature does not match the body"))
    }

    /// The changes a POST asks for, all validated.
    fn parse(&self, headers: &HeaderMap, body: &[u8]) -> Result<Vec<Change>, Reject> {
        let header_op = match headers
            .get(OPERATION_HEADER)
            .map(|v| v.to_str().map(str::to_ascii_lowercase))
        {
            None => None,
            Some(Ok(v)) if v == "apply" => Some(Op::Apply),
            Some(Ok(v)) if v == "delete" => Some(Op::Delete),
            Some(_) => {
                return Err(reject(
                    StatusCode::BAD_REQUEST,
                    format!("{OPERATION_HEADER} must be apply or delete"),
                ));
            }
        };
        let media = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
            .unwrap_or_default();
        let json = |body: &[u8]| -> Result<Value, Reject> {
            crate::json::from_slice(body).map_err(|e| {
                reject(
                    StatusCode::BAD_REQUEST,
                    format!("the body is not valid JSON: {e}"),
                )
            })
        };
        let unsupported = || {
            reject(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "unsupported content type {media:?}: send application/json, \
                     application/cloudevents+json or application/cloudevents-batch+json"
                ),
            )
        };
        let mut changes = vec![];
        match media.as_str() {
            "application/cloudevents+json" => {
                let event = json(body)?;
                changes.push(self.cloud_event(event, header_op, None)?);
            }
            "application/cloudevents-batch+json" => {
                let Value::Array(events) = json(body)? else {
                    return Err(reject(
                        StatusCode::BAD_REQUEST,
                        "a CloudEvents batch must be a JSON list",
                    ));
                };
                for (i, event) in events.into_iter().enumerate() {
                    changes.push(self.cloud_event(event, header_op, Some(i))?);
                }
            }
            m if m == "application/json" || (m.starts_with("application/") && m.ends_with("+json")) => {
                if headers.contains_key("ce-specversion") {
                    let event = binary_event(headers, json(body)?)?;
                    changes.push(self.cloud_event(event, header_op, None)?);
                } else {
                    let op = header_op.unwrap_or(Op::Apply);
                    for (i, item) in plain_items(json(body)?)?.into_iter().enumerate() {
                        changes.push(self.change(op, item, Some(i))?);
                    }
                }
            }
            _ => return Err(unsupported()),
        }
        if changes.is_empty() {
            return Err(reject(StatusCode::BAD_REQUEST, "the body holds no objects"));
        }
        Ok(changes)
    }

    fn change(&self, op: Op, item: Value, index: Option<usize>) -> Result<Change, Reject> {
        let obj = self.to_object(item, index)?;
        Ok(match op {
            Op::Apply => Change::Apply(obj),
            Op::Delete => Change::Delete(key_of(&obj), Some(obj)),
        })
    }

    /// The change a CloudEvent (structured form) asks for.
    fn cloud_event(
        &self,
        event: Value,
        header_op: Option<Op>,
        index: Option<usize>,
    ) -> Result<Change, Reject> {
        let at = index.map(|i| format!("event {i}: ")).unwrap_or_default();
        let bad = |m: String| reject(StatusCode::BAD_REQUEST, format!("{at}{m}"));
        let Value::Object(mut event) = event else {
            return Err(bad("a CloudEvent must be a JSON object".into()));
        };
        match event.get("specversion") {
            Some(Value::String(v)) if v == "1.0" => {}
            _ => return Err(bad("specversion must be \"1.0\"".into())),
        }
        for attr in ["id", "source", "type"] {
            if event.get(attr).and_then(Value::as_str).is_none_or(str::is_empty) {
                return Err(bad(format!("the CloudEvent has no {attr}")));
            }
        }
        if event.contains_key("data_base64") {
            return Err(bad(
                "data_base64 is not supported: send the object as JSON data".into()
            ));
        }
        if let Some(ct) = event.get("datacontenttype").and_then(Value::as_str) {
            let ct = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
            if ct != "application/json" && !ct.ends_with("+json") {
                return Err(reject(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    format!("{at}datacontenttype {ct:?} is not JSON"),
                ));
            }
        }
        let ty = event.get("type").and_then(Value::as_str).unwrap_or_default();
        let op = header_op.unwrap_or(if ty.ends_with(".deleted") || ty.ends_with(".delete") {
            Op::Delete
        } else {
            Op::Apply
        });
        let data = event.remove("data");
        let object = match data {
            Some(Value::Object(mut data))
                if !data.contains_key("apiVersion") && data.get("object").is_some_and(Value::is_object) =>
            {
                // crwatch's own sink sends {object, diff}.
                data.remove("object").unwrap_or(Value::Null)
            }
            Some(Value::Null) | None if op == Op::Delete => {
                // A delete may name the object in `subject` alone: `namespace/name` or `name`.
                let subject = event.get("subject").and_then(Value::as_str).unwrap_or_default();
                let (ns, name) = match subject.split_once('/') {
                    Some((ns, name)) => (Some(ns.to_string()).filter(|n| !n.is_empty()), name.to_string()),
                    None => (self.namespace.clone(), subject.to_string()),
                };
                if name.is_empty() || name.contains('/') {
                    return Err(bad("a delete without data needs subject namespace/name".into()));
                }
                return Ok(Change::Delete((ns, name), None));
            }
            Some(other) => other,
            None => return Err(bad("the CloudEvent has no data (the object)".into())),
        };
        self.change(op, object, index).map_err(|mut r| {
            r.message = format!("{at}{}", r.message);
            r
        })
    }

    /// A pushed object in the common shape: identity checked, uid and resourceVersion filled.
    fn to_object(&self, item: Value, index: Option<usize>) -> Result<DynamicObject, Reject> {
        let at = index.map(|i| format!("item {i}: ")).unwrap_or_default();
        let bad = |m: &str| reject(StatusCode::BAD_REQUEST, format!("{at}{m}"));
        if !item.is_object() {
            return Err(bad(
                "expected a JSON object with apiVersion, kind and metadata.name",
            ));
        }
        for (ptr, what) in [
            ("/apiVersion", "apiVersion"),
            ("/kind", "kind"),
            ("/metadata/name", "metadata.name"),
        ] {
            match item.pointer(ptr) {
                Some(Value::String(s)) if !s.is_empty() => {}
                Some(Value::String(_)) => return Err(bad(&format!("{what} is empty"))),
                Some(_) => return Err(bad(&format!("{what} must be a string"))),
                None => return Err(bad(&format!("{what} is missing"))),
            }
        }
        debug_assert!(looks_like_kubernetes(&item));
        let name = item
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if name.contains('/') {
            return Err(bad("metadata.name must not contain '/'"));
        }
        let hash = value_hash(&item);
        let mut obj: DynamicObject = serde_json::from_value(item)
            .map_err(|e| bad(&format!("not an object with Kubernetes metadata: {e}")))?;
        if obj.metadata.namespace.as_deref() == Some("") {
            obj.metadata.namespace = None;
        }
        if obj.metadata.namespace.is_none() {
            obj.metadata.namespace = self.namespace.clone();
        }
        if obj.metadata.uid.as_deref().is_none_or(str::is_empty) {
            let key = format!(
                "{}/{}",
                obj.metadata.namespace.as_deref().unwrap_or_default(),
                obj.metadata.name.as_deref().unwrap_or_default()
            );
            obj.metadata.uid = Some(stable_uid(&self.source_id, &key));
        }
        if obj.metadata.resource_version.as_deref().is_none_or(str::is_empty) {
            obj.metadata.resource_version = Some(hash);
        }
        Ok(obj)
    }

    /// Hand the changes to the consumer in one batch, waiting at most the hand-off timeout.
    async fn hand_over(&self, changes: Vec<Change>) -> Result<Response, Reject> {
        let busy = || {
            let secs = self.handoff_timeout.as_secs().max(1);
            let mut r = reject(
                StatusCode::SERVICE_UNAVAILABLE,
                "the consumer is not keeping up; retry later",
            )
            .into_response();
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                r.headers_mut().insert(RETRY_AFTER, v);
            }
            r
        };
        let deadline = tokio::time::Instant::now() + self.handoff_timeout;
        let Ok(mut known) = tokio::time::timeout_at(deadline, self.known.lock()).await else {
            return Ok(busy());
        };
        let permit = match tokio::time::timeout_at(deadline, self.tx.reserve()).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) => {
                return Err(reject(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the source is shutting down",
                ));
            }
            Err(_) => return Ok(busy()),
        };
        let (mut applied, mut deleted) = (0usize, 0usize);
        let mut batch = Vec::with_capacity(changes.len() + 1);
        for change in changes {
            match change {
                Change::Apply(obj) => {
                    applied += 1;
                    known.insert(key_of(&obj), obj.clone());
                    batch.push(Ok(Event::Apply(obj)));
                }
                Change::Delete(key, sent) => {
                    deleted += 1;
                    let last = known.remove(&key).or(sent).unwrap_or_else(|| {
                        let mut b = ObjectBuilder::new(API_VERSION, "Object", key.1.clone());
                        if let Some(ns) = &key.0 {
                            b = b.namespace(ns.clone());
                        }
                        b.build()
                    });
                    batch.push(Ok(Event::Delete(last)));
                }
            }
        }
        batch.push(Ok(Event::Progress(None)));
        permit.send(batch);
        drop(known);
        Ok((
            StatusCode::ACCEPTED,
            axum::Json(json!({"applied": applied, "deleted": deleted})),
        )
            .into_response())
    }
}

fn method_not_allowed(allow: &'static str) -> Response {
    let mut r = reject(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method not allowed here; use {allow}"),
    )
    .into_response();
    r.headers_mut().insert(ALLOW, HeaderValue::from_static(allow));
    r
}

/// The items of a plain JSON push: an object, a list, or a `…List` with `items`.
fn plain_items(body: Value) -> Result<Vec<Value>, Reject> {
    match body {
        Value::Array(items) => Ok(items),
        Value::Object(mut obj)
            if obj
                .get("kind")
                .and_then(Value::as_str)
                .is_some_and(|k| k.ends_with("List"))
                && obj.get("items").is_some_and(Value::is_array) =>
        {
            match obj.remove("items") {
                Some(Value::Array(items)) => Ok(items),
                _ => Ok(vec![]),
            }
        }
        obj @ Value::Object(_) => Ok(vec![obj]),
        _ => Err(reject(
            StatusCode::BAD_REQUEST,
            "expected a JSON object (apiVersion, kind, metadata.name) or a list of them",
        )),
    }
}

/// A binary-mode CloudEvent (`ce-*` headers, the body is the data) in structured form.
fn binary_event(headers: &HeaderMap, data: Value) -> Result<Value, Reject> {
    let mut event = serde_json::Map::new();
    for (name, value) in headers {
        if let Some(attr) = name.as_str().strip_prefix("ce-") {
            let value = value
                .to_str()
                .ok()
                .and_then(percent_decode)
                .ok_or_else(|| reject(StatusCode::BAD_REQUEST, format!("header {name} is not valid")))?;
            event.insert(attr.to_string(), Value::String(value));
        }
    }
    if let Some(ct) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) {
        event.insert("datacontenttype".into(), Value::String(ct.to_string()));
    }
    event.insert("data".into(), data);
    Ok(Value::Object(event))
}

/// Undo `%XX` escapes (CloudEvents binary-mode header values, path segments).
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}
