//! A remote `crwatch serve` (or any delta-xDS server of Istio's MCP-over-xDS resources) as a
//! source: the client side of `DeltaAggregatedResources`, so a remote cache is an informer like
//! any other and servers can be chained.
//!
//! # Protocol
//!
//! One ADS stream per source, one type URL (`<group>/<version>/<Kind>`, see [`crate::xds`]):
//!
//! - the first request subscribes to `*` (an explicit wildcard) or to the named resources
//!   (`namespace/name`), and on a reconnect carries `initial_resource_versions` with the
//!   version of every resource the source holds, so the server sends only what changed and
//!   removals of what went away meanwhile;
//! - every response is answered once its events were taken by the consumer (the informer): an
//!   ACK (`response_nonce`), or a NACK (`response_nonce` plus `error_detail`, gRPC code
//!   `INVALID_ARGUMENT`) when a resource could not be decoded or the caller's
//!   [`XdsSource::validator`] rejected it. The resources of a NACKed response that were valid
//!   are applied; a rejected one keeps its previous version (or stays absent), as Envoy keeps
//!   the last good configuration, and is reported to the informer as a skipped object
//!   ([`ErrorKind::Undecodable`]: named, with the reason, in `Informer::undecodable`; the
//!   source stays healthy). The NACK's message is `namespace/name: reason` per rejected
//!   resource, `; `-separated (`crwatch serve --report-nacks` writes it into an
//!   `Accepted=False` condition);
//! - `removed_resources` (and `removed_resource_names`) delete what the source holds; removals
//!   of resources it never had are ignored, as the protocol allows.
//!
//! # Events
//!
//! The first response of a run is the complete state: `Init`, one `InitApply` per resource,
//! `InitDone`. When no response comes within [`XdsSource::initial_fetch_timeout`] (a server
//! with nothing to send may stay silent), the source reports an empty complete state, as
//! Envoy's `initial_fetch_timeout` does. Later responses, including the first one after a
//! reconnect, are single changes: `Apply` for a new or changed resource (one whose version is
//! unchanged is skipped), `Delete` with the last known object for a removal. Every response
//! ends with `Progress(None)`.
//!
//! # Limits
//!
//! - No buffer grows without bound: the next response is read only after the consumer took
//!   every event of the previous one and the (N)ACK went out, so a slow consumer holds the
//!   server back through HTTP/2 flow control (and `crwatch serve` coalesces what waits for it
//!   to the latest state per resource). One response is at most
//!   [`XdsSource::max_message_bytes`] (default 64 MiB); a larger one fails the stream, which
//!   is reported and reconnected.
//! - Requests wait in a queue of [`REQUEST_QUEUE`]; only one (N)ACK is ever outstanding.
//! - The source keeps a copy of each object it holds (a deletion carries the last state, as
//!   the informer's handlers expect), so it holds what the informer's store holds, once more.
//! - A broken connection (the server went away; a peer that vanished without closing is
//!   found by TCP keepalive: probes after 30 s idle, every 10 s, 3 unanswered = dead, so
//!   within about a minute) is reported as one error and reconnected with backoff (800 ms
//!   doubling to 30 s, jittered, as client-go's watch reconnects), from the versions held.
//!   HTTP/2 pings are off by default ([`XdsSource::http2_keepalive`]): gRPC-Go servers
//!   (go-control-plane, Istio) answer pings more often than every 5 minutes with `GOAWAY`.
//!
//! ```no_run
//! use crwatch::informer::Informer;
//! use crwatch::source::xds::XdsSource;
//! use kube::api::DynamicObject;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let source = XdsSource::from_url("xds://127.0.0.1:18000/core/v1/ConfigMap")?
//!     .validator(|cm: &DynamicObject| match cm.data.pointer("/data/replicas") {
//!         Some(serde_json::Value::String(s)) if s.parse::<u32>().is_err() => {
//!             Err(format!("data.replicas is not a number"))
//!         }
//!         _ => Ok(()),
//!     });
//! let informer: Informer<DynamicObject> = Informer::new(source);
//! informer.start(tokio_util::sync::CancellationToken::new());
//! informer.wait_synced(std::time::Duration::from_secs(30)).await?;
//! for cm in informer.store().list() {
//!     println!("{:?}", cm.metadata.name);
//! }
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::core::v3::node::UserAgentVersionType;
use futures::{SinkExt, StreamExt};
use kube::api::DynamicObject;
use serde_json::Value;
use tokio::time::Instant;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::{ErrorKind, Event, EventStream, Source, SourceError, Undecodable};
use crate::xds::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use crate::xds::discovery::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use crate::xds::{Status, TypeUrl, resource_to_object, unpack_resource};

/// The explicit wildcard subscription.
pub const WILDCARD: &str = "*";
/// How many requests may wait to be sent on a stream (the first one and one (N)ACK at a time).
pub const REQUEST_QUEUE: usize = 4;
/// The default largest response accepted.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// The default time to wait for the first response before reporting an empty state.
pub const DEFAULT_INITIAL_FETCH_TIMEOUT: Duration = Duration::from_secs(15);
/// The default connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The default first pause after a failure (client-go's watch reconnect backoff).
pub const DEFAULT_BACKOFF_INITIAL: Duration = Duration::from_millis(800);
/// The default longest pause after failures.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// TCP keepalive: the first probe after this long without traffic...
const TCP_KEEPALIVE: Duration = Duration::from_secs(30);
/// ...then one this often...
const TCP_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// ...and the connection is dead after this many unanswered probes.
const TCP_KEEPALIVE_RETRIES: u32 = 3;
/// How long an HTTP/2 ping may go unanswered (when [`XdsSource::http2_keepalive`] is set).
const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// gRPC `INVALID_ARGUMENT`, the code of a NACK's `error_detail`.
const INVALID_ARGUMENT: i32 = 3;
/// The longest `error_detail` message sent (the rest is cut, with a count of what was cut).
const MAX_NACK_MESSAGE: usize = 4096;

/// Decides whether the source takes an object: `Err(message)` rejects it (the message goes
/// back to the server in the NACK's `error_detail`, so it must not contain secrets).
pub type Validator = Arc<dyn Fn(&DynamicObject) -> Result<(), String> + Send + Sync>;

/// A setting of an [`XdsSource`] that cannot work; the message names the setting and what to
/// change, never a token.
#[derive(Debug, thiserror::Error)]
pub enum XdsSourceError {
    /// The URL is not `xds://host:port/<group>/<version>/<Kind>` (or an endpoint URL).
    #[error(
        "{url:?}: {reason}; expected xds://HOST:PORT/<group>/<version>/<Kind>, e.g. xds://127.0.0.1:18000/core/v1/ConfigMap"
    )]
    Url {
        /// The URL, without its query.
        url: String,
        /// What is wrong.
        reason: String,
    },
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
        /// The builder method or URL parameter.
        setting: &'static str,
        /// What is wrong and what to do.
        reason: String,
    },
}

/// What the source did, for tests, metrics and status pages.
#[derive(Debug, Default)]
pub struct XdsStats {
    /// Streams opened.
    pub connects: AtomicU64,
    /// Responses received.
    pub responses: AtomicU64,
    /// Resources received (each added or changed resource of a response; removals are
    /// names only and not counted).
    pub resources: AtomicU64,
    /// Responses ACKed.
    pub acks: AtomicU64,
    /// Responses NACKed.
    pub nacks: AtomicU64,
    /// Resources rejected (each NACK rejects one or more).
    pub rejected: AtomicU64,
}

impl XdsStats {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// A counter's current value.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// A delta-xDS subscription to one type of MCP-over-xDS resources, as a source of
/// [`DynamicObject`]s (see the [module](self) for the protocol, the events and the limits).
///
/// Built with chained setters; nothing is checked until [`XdsSource::validate`] (or the first
/// call of [`Source::events`], which reports a bad setting as its only event and ends).
///
/// ```
/// use std::time::Duration;
/// use crwatch::source::xds::XdsSource;
/// let source = XdsSource::new("http://127.0.0.1:18000", "ai.crwatch.io/v1alpha1/PromptTemplate")
///     .names(["prod/support", "prod/sales"])
///     .node_id("inference-7f9c")
///     .initial_fetch_timeout(Duration::from_secs(5));
/// source.validate()?;
/// // The URL form, with TLS and a bearer token:
/// let tls = XdsSource::from_url(
///     "xds://xds.example.com:443/core/v1/ConfigMap?tls=true&ca_file=/etc/ca.pem&token_file=/var/run/token",
/// )?;
/// assert!(tls.describe_endpoint().starts_with("https://"));
/// // Settings out of range are refused with their name:
/// let err = XdsSource::new("http://x:1", "core/v1/ConfigMap").max_message_bytes(10).validate().unwrap_err();
/// assert!(err.to_string().contains("max_message_bytes"));
/// # Ok::<(), crwatch::source::xds::XdsSourceError>(())
/// ```
#[derive(Clone)]
pub struct XdsSource {
    endpoint: String,
    type_url: String,
    names: Vec<String>,
    validator: Option<Validator>,
    node_id: String,
    ca_file: Option<PathBuf>,
    identity: Option<(PathBuf, PathBuf)>,
    server_name: Option<String>,
    token_file: Option<PathBuf>,
    plain_http_credentials: bool,
    backoff_initial: Duration,
    backoff_max: Duration,
    connect_timeout: Duration,
    initial_fetch_timeout: Duration,
    max_message_bytes: usize,
    http2_keepalive: Option<Duration>,
    stats: Arc<XdsStats>,
}

impl fmt::Debug for XdsSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XdsSource")
            .field("endpoint", &self.endpoint)
            .field("type_url", &self.type_url)
            .field("names", &self.names)
            .field("validator", &self.validator.is_some())
            .field("node_id", &self.node_id)
            .field("ca_file", &self.ca_file)
            .field("token_file", &self.token_file)
            .finish_non_exhaustive()
    }
}

fn range(setting: &'static str, value: impl fmt::Debug, expected: &'static str) -> XdsSourceError {
    XdsSourceError::Range {
        setting,
        value: format!("{value:?}"),
        expected,
    }
}

fn truthy(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

impl XdsSource {
    /// Subscribe to every resource of `type_url` (`<group>/<version>/<Kind>`) at `endpoint`
    /// (`http://host:port`, or `https://host:port` for TLS).
    pub fn new(endpoint: impl Into<String>, type_url: impl Into<String>) -> Self {
        XdsSource {
            endpoint: endpoint.into(),
            type_url: type_url.into(),
            names: vec![],
            validator: None,
            node_id: format!("crwatch-{}", uuid::Uuid::new_v4()),
            ca_file: None,
            identity: None,
            server_name: None,
            token_file: None,
            plain_http_credentials: crate::client::insecure_http_credentials_from_env(),
            backoff_initial: DEFAULT_BACKOFF_INITIAL,
            backoff_max: DEFAULT_BACKOFF_MAX,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            initial_fetch_timeout: DEFAULT_INITIAL_FETCH_TIMEOUT,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            http2_keepalive: None,
            stats: Arc::default(),
        }
    }

    /// A source from `xds://HOST:PORT/<group>/<version>/<Kind>[?PARAMS]`. Parameters:
    /// `names=ns/a,ns/b` (default: all), `tls=true`, `ca_file=PATH` (implies TLS),
    /// `cert_file=PATH&key_file=PATH` (a client certificate, implies TLS), `server_name=NAME`,
    /// `token_file=PATH`, `node=ID`.
    pub fn from_url(url: &str) -> Result<Self, XdsSourceError> {
        let shown = url.split('?').next().unwrap_or_default().to_string();
        let bad = |reason: &str| XdsSourceError::Url {
            url: shown.clone(),
            reason: reason.to_string(),
        };
        let rest = url
            .strip_prefix("xds://")
            .ok_or_else(|| bad("the scheme is not xds://"))?;
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, type_url) = rest
            .split_once('/')
            .ok_or_else(|| bad("no type URL after the address"))?;
        if authority.is_empty() || authority.contains('@') {
            return Err(bad("expected HOST:PORT (credentials go in token_file=)"));
        }
        if authority
            .rsplit_once(':')
            .is_none_or(|(_, p)| p.parse::<u16>().is_err())
        {
            return Err(bad("the address needs a port"));
        }
        TypeUrl::parse(type_url).map_err(|e| bad(&e.to_string()))?;
        let mut tls = false;
        let mut source = XdsSource::new(String::new(), type_url);
        let (mut cert, mut key) = (None, None);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v);
            match k {
                "names" => {
                    source.names = v
                        .split(',')
                        .filter(|n| !n.is_empty())
                        .map(str::to_string)
                        .collect();
                }
                "tls" => {
                    tls = truthy(&v).ok_or_else(|| XdsSourceError::Invalid {
                        setting: "tls",
                        reason: format!("{v:?} is not true or false"),
                    })?;
                }
                "ca_file" => {
                    tls = true;
                    source.ca_file = Some(v.into());
                }
                "cert_file" => {
                    tls = true;
                    cert = Some(PathBuf::from(v));
                }
                "key_file" => key = Some(PathBuf::from(v)),
                "server_name" => source.server_name = Some(v),
                "token_file" => source.token_file = Some(v.into()),
                "node" => source.node_id = v,
                other => {
                    return Err(XdsSourceError::Invalid {
                        setting: "url",
                        reason: format!(
                            "unknown parameter {other:?}; known: names, tls, ca_file, cert_file, key_file, server_name, token_file, node"
                        ),
                    });
                }
            }
        }
        match (cert, key) {
            (Some(c), Some(k)) => source.identity = Some((c, k)),
            (None, None) => {}
            _ => {
                return Err(XdsSourceError::Invalid {
                    setting: "cert_file",
                    reason: "a client certificate needs both cert_file and key_file".into(),
                });
            }
        }
        let scheme = if tls { "https" } else { "http" };
        source.endpoint = format!("{scheme}://{authority}");
        source.validate()?;
        Ok(source)
    }

    /// Subscribe to these resources only (`namespace/name`, or `name` when cluster-scoped)
    /// instead of all of them. An empty list (the default) subscribes to the wildcard `*`.
    pub fn names<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.names = names.into_iter().map(Into::into).collect();
        self
    }

    /// Check every resource before taking it; a rejected one is NACKed with the message, and
    /// the source keeps the previous version of it (or none).
    pub fn validator(
        mut self,
        validator: impl Fn(&DynamicObject) -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        self.validator = Some(Arc::new(validator));
        self
    }

    /// The node id sent in the first request (default: `crwatch-<random uuid>`); servers
    /// name subscribers by it in their metrics.
    pub fn node_id(mut self, id: impl Into<String>) -> Self {
        self.node_id = id.into();
        self
    }

    /// Trust the CA certificates in this PEM file (for an `https://` endpoint; default: the
    /// system's roots).
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }

    /// Present this client certificate and key (PEM files) for mutual TLS.
    pub fn client_identity(mut self, cert_file: impl Into<PathBuf>, key_file: impl Into<PathBuf>) -> Self {
        self.identity = Some((cert_file.into(), key_file.into()));
        self
    }

    /// The name the server's certificate must carry (default: the endpoint's host).
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// Send `authorization: Bearer <token>` with the token read from `path` on every
    /// (re)connect, so a rotated token is used at once. Refused over plain `http://` unless
    /// [`XdsSource::plain_http_credentials`] or `CRWATCH_INSECURE_HTTP_CREDENTIALS=1` allows it.
    pub fn bearer_token_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.token_file = Some(path.into());
        self
    }

    /// Send the bearer token over plain `http://` too (for a loopback test server only).
    pub fn plain_http_credentials(mut self, allow: bool) -> Self {
        self.plain_http_credentials = allow;
        self
    }

    /// After a failure wait `initial`, doubling up to `max` (1 ms to 1 h, `initial <= max`;
    /// default 800 ms to 30 s), plus up to 10 % jitter.
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff_initial = initial;
        self.backoff_max = max;
        self
    }

    /// How long connecting may take (10 ms to 10 min; default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long to wait for the first response before reporting an empty state (10 ms to
    /// 10 min; default 15 s).
    pub fn initial_fetch_timeout(mut self, timeout: Duration) -> Self {
        self.initial_fetch_timeout = timeout;
        self
    }

    /// The largest response accepted (64 KiB to 1 GiB; default 64 MiB).
    pub fn max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes;
        self
    }

    /// Send an HTTP/2 ping this often (10 s to 1 h), and count the connection as broken when
    /// one goes unanswered for 20 s. Off by default: TCP keepalive already finds a vanished
    /// peer within about a minute, and gRPC-Go servers (go-control-plane, Istio) close
    /// connections that ping more often than every 5 minutes.
    pub fn http2_keepalive(mut self, every: Duration) -> Self {
        self.http2_keepalive = Some(every);
        self
    }

    /// What the source did so far (shared by its clones and its running stream).
    pub fn stats(&self) -> Arc<XdsStats> {
        self.stats.clone()
    }

    /// The endpoint, as `http(s)://host:port`.
    pub fn describe_endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The type URL subscribed to.
    pub fn type_url(&self) -> &str {
        &self.type_url
    }

    /// Check every setting, without connecting.
    pub fn validate(&self) -> Result<(), XdsSourceError> {
        const HOUR: Duration = Duration::from_secs(3600);
        const TEN_MIN: Duration = Duration::from_secs(600);
        let https = self.endpoint.starts_with("https://");
        if !(https || self.endpoint.starts_with("http://")) {
            return Err(XdsSourceError::Url {
                url: self.endpoint.clone(),
                reason: "the endpoint is not http://HOST:PORT or https://HOST:PORT".into(),
            });
        }
        Endpoint::from_shared(self.endpoint.clone()).map_err(|e| XdsSourceError::Url {
            url: self.endpoint.clone(),
            reason: e.to_string(),
        })?;
        TypeUrl::parse(&self.type_url).map_err(|e| XdsSourceError::Invalid {
            setting: "type_url",
            reason: e.to_string(),
        })?;
        if let Some(n) = self.names.iter().find(|n| n.is_empty()) {
            return Err(XdsSourceError::Invalid {
                setting: "names",
                reason: format!("{n:?}: resource names must not be empty"),
            });
        }
        if !(Duration::from_millis(1)..=HOUR).contains(&self.backoff_initial) {
            return Err(range("backoff (initial)", self.backoff_initial, "1ms to 1h"));
        }
        if !(self.backoff_initial..=HOUR).contains(&self.backoff_max) {
            return Err(range(
                "backoff (max)",
                self.backoff_max,
                "the initial backoff to 1h",
            ));
        }
        if !(Duration::from_millis(10)..=TEN_MIN).contains(&self.connect_timeout) {
            return Err(range("connect_timeout", self.connect_timeout, "10ms to 10m"));
        }
        if !(Duration::from_millis(10)..=TEN_MIN).contains(&self.initial_fetch_timeout) {
            return Err(range(
                "initial_fetch_timeout",
                self.initial_fetch_timeout,
                "10ms to 10m",
            ));
        }
        if !(64 * 1024..=1024 * 1024 * 1024).contains(&self.max_message_bytes) {
            return Err(range(
                "max_message_bytes",
                self.max_message_bytes,
                "64 KiB (65536) to 1 GiB (1073741824)",
            ));
        }
        if let Some(every) = self.http2_keepalive
            && !(Duration::from_secs(10)..=HOUR).contains(&every)
        {
            return Err(range("http2_keepalive", every, "10s to 1h"));
        }
        if self.node_id.is_empty() {
            return Err(XdsSourceError::Invalid {
                setting: "node_id",
                reason: "the node id must not be empty".into(),
            });
        }
        if !https && (self.ca_file.is_some() || self.identity.is_some() || self.server_name.is_some()) {
            return Err(XdsSourceError::Invalid {
                setting: "ca_file",
                reason: "TLS settings need an https:// endpoint (tls=true in an xds:// URL)".into(),
            });
        }
        if self.token_file.is_some() && !https && !self.plain_http_credentials {
            return Err(XdsSourceError::Invalid {
                setting: "bearer_token_file",
                reason: format!(
                    "the token is only sent over TLS (anyone on the path could read it otherwise); use tls=true, or set {}=1 (or plain_http_credentials(true)) for a loopback test server",
                    crate::client::INSECURE_HTTP_CREDENTIALS_ENV
                ),
            });
        }
        Ok(())
    }

    /// The TLS configuration, reading the certificate files.
    fn tls_config(&self) -> Result<Option<ClientTlsConfig>, String> {
        if !self.endpoint.starts_with("https://") {
            return Ok(None);
        }
        let read = |p: &PathBuf, what: &str| {
            std::fs::read(p).map_err(|e| format!("reading the {what} {}: {e}", p.display()))
        };
        let mut tls = ClientTlsConfig::new();
        match &self.ca_file {
            Some(p) => tls = tls.ca_certificate(Certificate::from_pem(read(p, "CA file")?)),
            None => tls = tls.with_native_roots(),
        }
        if let Some((cert, key)) = &self.identity {
            tls = tls.identity(Identity::from_pem(
                read(cert, "client certificate")?,
                read(key, "client key")?,
            ));
        }
        if let Some(name) = &self.server_name {
            tls = tls.domain_name(name.clone());
        }
        Ok(Some(tls))
    }

    fn backoff_after(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(31);
        let base = self
            .backoff_initial
            .checked_mul(1u32 << exp)
            .unwrap_or(self.backoff_max)
            .min(self.backoff_max);
        base + base.mul_f64(rand::random::<f64>() * 0.1)
    }
}

/// `%XX` escapes in a URL parameter (paths with spaces, names with `/` written as `%2F`);
/// anything else, a malformed escape included, stays as it is.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = bytes.get(i + 1..i + 3)
            && let Some(b) = std::str::from_utf8(hex)
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What the source holds of one resource.
struct Held {
    version: String,
    object: DynamicObject,
}

/// An open stream.
struct Conn {
    requests: futures::channel::mpsc::Sender<DeltaDiscoveryRequest>,
    responses: tonic::Streaming<DeltaDiscoveryResponse>,
}

type Item = Result<Event<DynamicObject>, SourceError>;

/// The client's state across reconnects.
struct Runner {
    config: XdsSource,
    name: String,
    api_version: String,
    kind: String,
    held: BTreeMap<String, Held>,
    /// Resources rejected and not held, so a removal of one clears the informer's record.
    rejected_names: BTreeSet<String>,
    synced: bool,
    conn: Option<Conn>,
    /// The (N)ACK of the last response, sent once its events were taken.
    pending: Option<DeltaDiscoveryRequest>,
    failures: u32,
    /// When the current run started waiting for its first response.
    waiting_since: Instant,
}

/// gRPC status codes as the HTTP status codes `ErrorKind::Server` carries.
fn http_code(code: tonic::Code) -> u16 {
    use tonic::Code;
    match code {
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => 400,
        Code::Unauthenticated => 401,
        Code::PermissionDenied => 403,
        Code::NotFound => 404,
        Code::AlreadyExists | Code::Aborted => 409,
        Code::ResourceExhausted => 429,
        Code::Cancelled => 499,
        Code::Unimplemented => 501,
        Code::Unavailable => 503,
        Code::DeadlineExceeded => 504,
        _ => 500,
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let s = cause.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        next = cause.source();
    }
    out
}

impl Runner {
    fn error(&self, message: impl Into<String>) -> SourceError {
        SourceError::new(self.name.clone(), message)
    }

    fn status_error(&self, what: &str, status: &tonic::Status) -> SourceError {
        let code = status.code();
        // A transport failure surfaces as Unavailable/Unknown with a source error inside.
        let cause = std::error::Error::source(status).map(error_chain);
        let kind = match (code, cause) {
            (tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Internal, Some(cause)) => {
                ErrorKind::Transport {
                    refused: cause.contains("onnection refused"),
                    cause,
                }
            }
            // The client never cancels a stream it still reads: the connection went (a TLS
            // peer that refused us after the handshake shows up this way too).
            (tonic::Code::Cancelled, cause) => ErrorKind::Transport {
                refused: false,
                cause: cause.unwrap_or_else(|| format!("the connection was closed: {}", status.message())),
            },
            _ => ErrorKind::Server {
                code: http_code(code),
                reason: format!("{code:?}"),
                message: status.message().to_string(),
            },
        };
        let hint = match code {
            tonic::Code::Unauthenticated => " (check the bearer token file)",
            tonic::Code::PermissionDenied => " (the token or certificate is not allowed this type)",
            tonic::Code::Unimplemented => " (is this an xDS server with DeltaAggregatedResources?)",
            _ => "",
        };
        let detail = match &kind {
            ErrorKind::Transport { cause, .. } => cause.clone(),
            _ => format!("{code:?}: {}", status.message()),
        };
        self.error(format!("{what}: {detail}{hint}")).with_kind(kind)
    }

    /// The first request of a stream: the subscription, and the versions held.
    fn first_request(&self) -> DeltaDiscoveryRequest {
        let names = if self.config.names.is_empty() {
            vec![WILDCARD.to_string()]
        } else {
            self.config.names.clone()
        };
        let initial_resource_versions: HashMap<String, String> = if self.synced {
            self.held
                .iter()
                .map(|(k, h)| (k.clone(), h.version.clone()))
                .collect()
        } else {
            HashMap::new()
        };
        DeltaDiscoveryRequest {
            node: Some(Node {
                id: self.config.node_id.clone(),
                cluster: "crwatch".to_string(),
                user_agent_name: "crwatch".to_string(),
                user_agent_version_type: Some(UserAgentVersionType::UserAgentVersion(
                    env!("CARGO_PKG_VERSION").to_string(),
                )),
                ..Node::default()
            }),
            type_url: self.config.type_url.clone(),
            resource_names_subscribe: names,
            initial_resource_versions,
            ..DeltaDiscoveryRequest::default()
        }
    }

    async fn connect(&self) -> Result<Conn, SourceError> {
        let endpoint = Endpoint::from_shared(self.config.endpoint.clone())
            .map_err(|e| self.error(format!("endpoint: {e}")))?
            .connect_timeout(self.config.connect_timeout)
            .tcp_nodelay(true)
            .tcp_keepalive(Some(TCP_KEEPALIVE))
            .tcp_keepalive_interval(Some(TCP_KEEPALIVE_INTERVAL))
            .tcp_keepalive_retries(Some(TCP_KEEPALIVE_RETRIES));
        let endpoint = match self.config.http2_keepalive {
            Some(every) => endpoint
                .http2_keep_alive_interval(every)
                .keep_alive_timeout(HTTP2_KEEPALIVE_TIMEOUT)
                .keep_alive_while_idle(true),
            None => endpoint,
        };
        let endpoint = match self.config.tls_config().map_err(|e| self.error(e))? {
            Some(tls) => endpoint
                .tls_config(tls)
                .map_err(|e| self.error(format!("tls: {}", error_chain(&e))))?,
            None => endpoint,
        };
        let channel: Channel = endpoint.connect().await.map_err(|e| {
            let cause = error_chain(&e);
            self.error(format!("connecting to {}: {cause}", self.config.endpoint))
                .with_kind(ErrorKind::Transport {
                    refused: cause.contains("onnection refused"),
                    cause,
                })
        })?;
        let mut client = AggregatedDiscoveryServiceClient::new(channel)
            .max_decoding_message_size(self.config.max_message_bytes)
            .max_encoding_message_size(self.config.max_message_bytes);
        let (mut tx, rx) = futures::channel::mpsc::channel(REQUEST_QUEUE);
        tx.try_send(self.first_request())
            .map_err(|_| self.error("queueing the first request failed"))?;
        let mut request = tonic::Request::new(rx);
        if let Some(path) = &self.config.token_file {
            let raw = tokio::fs::read(path)
                .await
                .map_err(|e| self.error(format!("reading the bearer token file {}: {e}", path.display())))?;
            let token = String::from_utf8_lossy(raw.trim_ascii()).into_owned();
            if token.is_empty() {
                return Err(self.error(format!("the bearer token file {} is empty", path.display())));
            }
            let value = format!("Bearer {token}").parse().map_err(|_| {
                self.error(format!(
                    "the bearer token file {} holds characters not allowed in a header",
                    path.display()
                ))
            })?;
            request.metadata_mut().insert("authorization", value);
        }
        let response = client
            .delta_aggregated_resources(request)
            .await
            .map_err(|s| self.status_error("opening the ADS stream", &s))?;
        XdsStats::add(&self.config.stats.connects, 1);
        Ok(Conn {
            requests: tx,
            responses: response.into_inner(),
        })
    }

    /// Drop the stream after a failure; the next call reconnects after a backoff.
    fn fail(&mut self, error: SourceError) -> Vec<Item> {
        self.conn = None;
        self.pending = None;
        self.failures = self.failures.saturating_add(1);
        vec![Err(error)]
    }

    /// The events of the next response (after sending the (N)ACK of the previous one).
    async fn next(&mut self) -> Vec<Item> {
        if self.conn.is_none() {
            if self.failures > 0 {
                let delay = self.config.backoff_after(self.failures);
                tracing::debug!(source = %self.name, failures = self.failures, ?delay, "reconnecting");
                tokio::time::sleep(delay).await;
            }
            match self.connect().await {
                Ok(conn) => {
                    self.conn = Some(conn);
                    self.failures = 0;
                    // The initial fetch timeout counts from the stream that can answer.
                    if !self.synced {
                        self.waiting_since = Instant::now();
                    }
                }
                Err(e) => {
                    self.failures = self.failures.saturating_add(1);
                    return vec![Err(e)];
                }
            }
        }
        let Some(conn) = self.conn.as_mut() else {
            return vec![];
        };
        if let Some(ack) = self.pending.take()
            && conn.requests.send(ack).await.is_err()
        {
            let e = self.error("the ADS stream closed before the (N)ACK could be sent");
            return self.fail(e);
        }
        let message = if self.synced {
            Ok(conn.responses.message().await)
        } else {
            let deadline = self.waiting_since + self.config.initial_fetch_timeout;
            tokio::time::timeout_at(deadline, conn.responses.message()).await
        };
        match message {
            Err(_elapsed) => {
                tracing::warn!(
                    source = %self.name,
                    timeout = ?self.config.initial_fetch_timeout,
                    "no response within the initial fetch timeout; the state is empty until the server sends one"
                );
                self.synced = true;
                vec![Ok(Event::Init), Ok(Event::InitDone), Ok(Event::Progress(None))]
            }
            Ok(Ok(Some(response))) => {
                XdsStats::add(&self.config.stats.responses, 1);
                XdsStats::add(&self.config.stats.resources, response.resources.len() as u64);
                self.apply(response)
            }
            Ok(Ok(None)) => {
                let e = self
                    .error("the server closed the ADS stream")
                    .with_kind(ErrorKind::Transport {
                        refused: false,
                        cause: "stream closed".into(),
                    });
                self.fail(e)
            }
            Ok(Err(status)) => {
                let e = self.status_error("the ADS stream failed", &status);
                self.fail(e)
            }
        }
    }

    /// A rejected resource as the informer's skipped object: named (from the object when it
    /// decoded, else from the resource name `namespace/name`), with the reason.
    fn skipped(&self, name: &str, object: Option<&DynamicObject>, why: &str, deleted: bool) -> SourceError {
        let (ns, short) = match name.split_once('/') {
            Some((ns, n)) => (Some(ns.to_string()), n.to_string()),
            None => (None, name.to_string()),
        };
        let u = Undecodable {
            api_version: self.api_version.clone(),
            kind: self.kind.clone(),
            namespace: object.map_or(ns, |o| o.metadata.namespace.clone()),
            name: object.and_then(|o| o.metadata.name.clone()).unwrap_or(short),
            uid: object.and_then(|o| o.metadata.uid.clone()),
            deleted,
            error: why.to_string(),
        };
        self.error(u.to_string())
            .with_kind(ErrorKind::Undecodable(Box::new(u)))
    }

    /// Decode one resource into an object of this source's type.
    fn decode(&self, resource: &crate::xds::discovery::Resource) -> Result<DynamicObject, String> {
        let any = resource
            .resource
            .as_ref()
            .ok_or("the resource carries no body (a name-only resource cannot be applied)")?;
        let mcp = unpack_resource(any).map_err(|e| e.to_string())?;
        let mut value = resource_to_object(&mcp).map_err(|e| e.to_string())?;
        let Value::Object(map) = &mut value else {
            return Err("the body is not an object".into());
        };
        map.entry("apiVersion")
            .or_insert_with(|| Value::String(self.api_version.clone()));
        map.entry("kind")
            .or_insert_with(|| Value::String(self.kind.clone()));
        let mut object: DynamicObject = serde_json::from_value(value)
            .map_err(|e| format!("not an object: {}", super::redact_decode_message(&e.to_string())))?;
        if object.metadata.name.as_deref().is_none_or(str::is_empty) {
            return Err("the object has no metadata.name".into());
        }
        if object.metadata.resource_version.is_none() && !resource.version.is_empty() {
            object.metadata.resource_version = Some(resource.version.clone());
        }
        Ok(object)
    }

    /// Take a response: its events, and the (N)ACK to send once they were taken.
    fn apply(&mut self, response: DeltaDiscoveryResponse) -> Vec<Item> {
        let mut rejected: Vec<(String, String)> = vec![];
        // Each rejected resource, as the informer's "skipped object" (no source failure).
        let mut skipped: Vec<Item> = vec![];
        let mut events: Vec<Item> = vec![];
        let wrong_type = response.type_url != self.config.type_url;
        if wrong_type {
            rejected.push((
                String::new(),
                format!(
                    "response of type {:?} on a stream subscribed to {:?}",
                    response.type_url, self.config.type_url
                ),
            ));
        } else {
            let mut changed = Vec::with_capacity(response.resources.len());
            for resource in &response.resources {
                let decoded = self.decode(resource);
                let checked = match (&decoded, &self.config.validator) {
                    (Ok(object), Some(v)) => v(object),
                    (Ok(_), None) => Ok(()),
                    (Err(why), _) => Err(why.clone()),
                };
                match (decoded, checked) {
                    (Ok(object), Ok(())) => {
                        self.rejected_names.remove(&resource.name);
                        changed.push((resource.name.clone(), resource.version.clone(), object))
                    }
                    // (A body that did not decode has its reason in `checked` too.)
                    (object, checked) => {
                        let why = checked.err().unwrap_or_default();
                        let note = format!("rejected (NACK sent; the previous version stays): {why}");
                        skipped.push(Err(self.skipped(
                            &resource.name,
                            object.ok().as_ref(),
                            &note,
                            false,
                        )));
                        if !self.held.contains_key(&resource.name) {
                            self.rejected_names.insert(resource.name.clone());
                        }
                        rejected.push((resource.name.clone(), why));
                    }
                }
            }
            let removed = response
                .removed_resources
                .iter()
                .cloned()
                .chain(response.removed_resource_names.iter().map(|r| r.name.clone()));
            let mut deleted = vec![];
            for name in removed {
                if let Some(held) = self.held.remove(&name) {
                    deleted.push(held.object);
                } else if self.rejected_names.remove(&name) {
                    // Never held (it was rejected): the informer only forgets its record.
                    skipped.push(Err(self.skipped(&name, None, "removed", true)));
                }
            }
            let mut applied = vec![];
            for (name, version, object) in changed {
                let same = self
                    .held
                    .get(&name)
                    .is_some_and(|h| !version.is_empty() && h.version == version);
                if !same {
                    applied.push(object.clone());
                }
                self.held.insert(name, Held { version, object });
            }
            if self.synced {
                events.extend(applied.into_iter().map(|o| Ok(Event::Apply(o))));
                events.extend(deleted.into_iter().map(|o| Ok(Event::Delete(o))));
                events.append(&mut skipped);
            } else {
                self.synced = true;
                events.push(Ok(Event::Init));
                events.extend(self.held.values().map(|h| Ok(Event::InitApply(h.object.clone()))));
                events.append(&mut skipped);
                events.push(Ok(Event::InitDone));
            }
        }
        let stats = &self.config.stats;
        let error_detail = if rejected.is_empty() {
            XdsStats::add(&stats.acks, 1);
            None
        } else {
            XdsStats::add(&stats.nacks, 1);
            XdsStats::add(&stats.rejected, rejected.len() as u64);
            let message = nack_message(&rejected);
            tracing::warn!(source = %self.name, nonce = %response.nonce, %message, "NACK: the previous versions stay");
            if wrong_type {
                events.push(Err(self.error(format!("rejected (NACK sent): {message}"))));
            }
            Some(Status {
                code: INVALID_ARGUMENT,
                message,
                details: vec![],
            })
        };
        self.pending = Some(DeltaDiscoveryRequest {
            type_url: self.config.type_url.clone(),
            response_nonce: response.nonce,
            error_detail,
            ..DeltaDiscoveryRequest::default()
        });
        events.push(Ok(Event::Progress(None)));
        events
    }
}

/// The `error_detail` message of a NACK: `name: why` per rejected resource, `; `-separated,
/// cut at [`MAX_NACK_MESSAGE`] bytes.
fn nack_message(rejected: &[(String, String)]) -> String {
    let mut out = String::new();
    for (i, (name, why)) in rejected.iter().enumerate() {
        let part = if name.is_empty() {
            why.clone()
        } else {
            format!("{name}: {why}")
        };
        let sep = if out.is_empty() { "" } else { "; " };
        if out.len() + sep.len() + part.len() > MAX_NACK_MESSAGE {
            out.push_str(&format!("{sep}and {} more", rejected.len() - i));
            break;
        }
        out.push_str(sep);
        out.push_str(&part);
    }
    out
}

impl Source<DynamicObject> for XdsSource {
    fn describe(&self) -> String {
        format!("xds {} {}", self.endpoint, self.type_url)
    }

    fn events(self: Box<Self>) -> EventStream<DynamicObject> {
        let name = self.describe();
        if let Err(e) = self.validate() {
            let err = SourceError::new(name, e.to_string());
            return futures::stream::once(async move { Err(err) }).boxed();
        }
        // validate() parsed it.
        let t = TypeUrl::parse(&self.type_url).unwrap_or_else(|_| TypeUrl::of("", ""));
        let runner = Runner {
            api_version: t.api_version(),
            kind: t.kind,
            config: *self,
            name,
            held: BTreeMap::new(),
            rejected_names: BTreeSet::new(),
            synced: false,
            conn: None,
            pending: None,
            failures: 0,
            waiting_since: Instant::now(),
        };
        futures::stream::unfold((runner, VecDeque::new()), |(mut runner, mut queue)| async move {
            loop {
                if let Some(item) = queue.pop_front() {
                    return Some((item, (runner, queue)));
                }
                queue.extend(runner.next().await);
            }
        })
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_into_settings() {
        let s = XdsSource::from_url("xds://127.0.0.1:18000/core/v1/ConfigMap").unwrap();
        assert_eq!(s.endpoint, "http://127.0.0.1:18000");
        assert_eq!(s.type_url, "core/v1/ConfigMap");
        assert!(s.names.is_empty());
        let s = XdsSource::from_url(
            "xds://h:443/ai.crwatch.io/v1alpha1/PromptTemplate?names=prod/a,prod%2Fb&ca_file=/tmp/ca%20x.pem&node=n1",
        )
        .unwrap();
        assert_eq!(s.endpoint, "https://h:443");
        assert_eq!(s.names, ["prod/a", "prod/b"]);
        assert_eq!(s.ca_file, Some(PathBuf::from("/tmp/ca x.pem")));
        assert_eq!(s.node_id, "n1");
        for bad in [
            "http://h:1/core/v1/ConfigMap",
            "xds://h/core/v1/ConfigMap",
            "xds://h:1",
            "xds://h:1/v1/ConfigMap",
            "xds://u:p@h:1/core/v1/ConfigMap",
            "xds://h:1/core/v1/ConfigMap?bogus=1",
            "xds://h:1/core/v1/ConfigMap?token_file=/t",
            "xds://h:1/core/v1/ConfigMap?cert_file=/c",
            "xds://h:1/core/v1/ConfigMap?tls=maybe",
        ] {
            assert!(XdsSource::from_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn settings_are_range_checked() {
        let s = || XdsSource::new("http://h:1", "core/v1/ConfigMap");
        assert!(s().validate().is_ok());
        assert!(
            s().backoff(Duration::ZERO, Duration::from_secs(1))
                .validate()
                .is_err()
        );
        assert!(
            s().backoff(Duration::from_secs(2), Duration::from_secs(1))
                .validate()
                .is_err()
        );
        assert!(s().connect_timeout(Duration::from_secs(3600)).validate().is_err());
        assert!(s().initial_fetch_timeout(Duration::ZERO).validate().is_err());
        assert!(s().max_message_bytes(1 << 31).validate().is_err());
        assert!(s().node_id("").validate().is_err());
        assert!(s().http2_keepalive(Duration::from_secs(1)).validate().is_err());
        assert!(s().http2_keepalive(Duration::from_secs(300)).validate().is_ok());
        assert!(s().names([""]).validate().is_err());
        assert!(s().ca_file("/x").validate().is_err());
        assert!(XdsSource::new("h:1", "core/v1/ConfigMap").validate().is_err());
        assert!(
            s().bearer_token_file("/t")
                .plain_http_credentials(true)
                .validate()
                .is_ok()
        );
    }

    #[test]
    fn nack_messages_are_bounded() {
        let one = nack_message(&[("ns/a".into(), "bad".into())]);
        assert_eq!(one, "ns/a: bad");
        let many: Vec<(String, String)> = (0..1000).map(|i| (format!("ns/r{i}"), "x".repeat(50))).collect();
        let m = nack_message(&many);
        assert!(m.len() <= MAX_NACK_MESSAGE + 20, "{}", m.len());
        assert!(m.ends_with(" more"));
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Fb+c%zz%"), "a/b+c%zz%");
        assert_eq!(percent_decode("%4"), "%4");
    }

    #[test]
    fn backoff_grows_and_caps() {
        let s = XdsSource::new("http://h:1", "core/v1/ConfigMap")
            .backoff(Duration::from_millis(100), Duration::from_secs(1));
        assert!(s.backoff_after(1) < Duration::from_millis(111));
        assert!(s.backoff_after(3) >= Duration::from_millis(400));
        assert!(s.backoff_after(40) <= Duration::from_millis(1100));
    }
}
