//! Polling an HTTP endpoint as a source: a JSON object or list, fetched on an interval with
//! ETag / Last-Modified validators (a `304 Not Modified` costs nothing), or held open as a
//! Consul-style blocking query (`?index=N&wait=30s`), turned into objects of the common shape.
//!
//! # Objects
//!
//! Every item becomes a [`DynamicObject`]:
//!
//! | field | value |
//! |---|---|
//! | `apiVersion`, `kind` | `http.crwatch.io/v1`, `Item`, or the item's own when it has both |
//! | `metadata.namespace` | the URL's host, or [`HttpSource::namespace`] |
//! | `metadata.name` | the item's key ([`HttpSource::key`]) |
//! | `metadata.uid` | [`stable_uid`]`(url, key)` |
//! | `metadata.resourceVersion` | a hash of the item |
//! | `data` | the item as received |
//!
//! # Events
//!
//! The first successful poll is a complete list (`Init`, `InitApply`*, `InitDone`). Later polls
//! are compared with the previous one and only what changed is sent, as `Apply` (added or
//! modified items) and `Delete` (items gone, with their last known state): per-item events
//! cost the informer one store operation each, where a relist would make it compare every
//! object. Every successful poll, including a `304`, ends with `Progress(None)`. A failed poll
//! (connection error, 5xx, a body that is not JSON, a missing key, ...) is reported as one
//! `Err(SourceError)` without the response body, the last good state stays, and the source
//! retries with exponential backoff (and at least as long as a `Retry-After` on 429/503 asks).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt;
use kube::api::DynamicObject;
use reqwest::Url;
use reqwest::header::{
    ACCEPT, AUTHORIZATION, ETAG, HeaderMap, HeaderName, HeaderValue, IF_MODIFIED_SINCE, IF_NONE_MATCH,
    LAST_MODIFIED, RETRY_AFTER,
};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::object::{ObjectBuilder, stable_uid};
use super::{Event, EventStream, Source, SourceError};

/// The `apiVersion` of items that do not bring their own.
pub const API_VERSION: &str = "http.crwatch.io/v1";
/// The `kind` of items that do not bring their own.
pub const KIND: &str = "Item";
/// How often the endpoint is polled by default.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
/// The default share of the interval added at random to each pause (0.1 = up to 10 %).
pub const DEFAULT_JITTER: f64 = 0.1;
/// The default timeout of one request (a blocking query gets its `wait` on top).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// The default limit of a response body.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 64 * 1024 * 1024;
/// The default limit of items in one response.
pub const DEFAULT_MAX_ITEMS: usize = 100_000;
/// The default first pause after a failed poll (client-go's watch reconnect backoff).
pub const DEFAULT_BACKOFF_INITIAL: Duration = Duration::from_millis(800);
/// The default longest pause after failed polls.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// The default index header of blocking queries (Consul's).
pub const DEFAULT_INDEX_HEADER: &str = "X-Consul-Index";
/// How long the server may hold a blocking query by default.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(30);
/// The default shortest time between the starts of two blocking queries (the rate limit
/// Consul asks clients for, so an index that changes all the time does not become a busy loop).
pub const DEFAULT_MIN_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// The longest `Retry-After` honoured; longer requests are cut to this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// A setting of an [`HttpSource`] that cannot work. The message names the setting and what
/// to change; it never contains a header value, a token or a URL's credentials.
#[derive(Debug, thiserror::Error)]
pub enum HttpSourceError {
    /// The URL is not an absolute `http://` or `https://` URL.
    #[error(
        "url {url:?}: {reason}; expected an absolute http:// or https:// URL such as https://example.com/api/items"
    )]
    Url {
        /// The URL, without credentials.
        url: String,
        /// What is wrong with it.
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
    /// A setting with a wrong shape (a JSON pointer without a leading `/`, an empty key, ...).
    #[error("{setting}: {reason}")]
    Invalid {
        /// The builder method.
        setting: &'static str,
        /// What is wrong and what to do.
        reason: String,
    },
    /// The TLS set-up failed (the CA file, the system roots).
    #[error("tls: {0}")]
    Tls(String),
    /// reqwest refused the client configuration.
    #[error("building the HTTP client: {0}")]
    Client(String),
}

fn range(setting: &'static str, value: impl fmt::Debug, expected: &'static str) -> HttpSourceError {
    HttpSourceError::Range {
        setting,
        value: format!("{value:?}"),
        expected,
    }
}

/// Consul-style blocking queries.
#[derive(Debug, Clone)]
struct Blocking {
    header: String,
    index_param: String,
    wait_param: String,
    wait: Duration,
    min_interval: Duration,
}

/// Where the key of an item is.
#[derive(Debug, Clone)]
enum KeySpec {
    /// `metadata.name` for Kubernetes-looking items, `id` otherwise.
    Default,
    /// A JSON pointer (`/spec/id`).
    Pointer(String),
    /// A field name or a dotted path (`id`, `metadata.name`).
    Path(Vec<String>),
}

/// An HTTP endpoint polled as a source of [`DynamicObject`]s (see the [module](self) for the
/// object shape and the events).
///
/// Built with chained setters; nothing is checked until [`HttpSource::validate`] (or the first
/// call of [`Source::events`], which reports a bad setting as its only event and ends).
///
/// ```
/// use std::time::Duration;
/// use crwatch::source::http::HttpSource;
/// let source = HttpSource::new("https://inventory.example.com/api/hosts")
///     .items("/data")
///     .key("id")
///     .interval(Duration::from_secs(60))
///     .header("Accept-Language", "en")
///     .bearer_token_file("/var/run/secrets/inventory/token");
/// source.validate()?;
/// # Ok::<(), crwatch::source::http::HttpSourceError>(())
/// ```
///
/// A Consul-style blocking query, held by the server until something changes:
///
/// ```
/// use std::time::Duration;
/// use crwatch::source::http::HttpSource;
/// let source = HttpSource::new("http://127.0.0.1:8500/v1/catalog/services")
///     .blocking_query("X-Consul-Index")
///     .wait(Duration::from_secs(60));
/// assert!(source.validate().is_ok());
/// // Out-of-range settings are refused with the setting's name:
/// let err = HttpSource::new("http://x/").max_items(0).validate().unwrap_err();
/// assert!(err.to_string().contains("max_items"));
/// ```
#[derive(Clone)]
pub struct HttpSource {
    url: String,
    items: Option<String>,
    key: KeySpec,
    namespace: Option<String>,
    headers: Vec<(String, String)>,
    token_file: Option<PathBuf>,
    interval: Duration,
    jitter: f64,
    backoff_initial: Duration,
    backoff_max: Duration,
    timeout: Duration,
    max_body: u64,
    max_items: usize,
    ca_file: Option<PathBuf>,
    insecure: bool,
    plain_http_credentials: bool,
    blocking: Option<Blocking>,
}

impl fmt::Debug for HttpSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpSource")
            .field("url", &redact_url(&self.url))
            .field("items", &self.items)
            .field("key", &self.key)
            .field("namespace", &self.namespace)
            // Header values may be credentials.
            .field(
                "headers",
                &self.headers.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .field("token_file", &self.token_file)
            .field("interval", &self.interval)
            .field("blocking", &self.blocking)
            .finish_non_exhaustive()
    }
}

impl HttpSource {
    /// Poll `url` (GET) every 30 s, items at the top level, keyed by `id` (or `metadata.name`).
    pub fn new(url: impl Into<String>) -> Self {
        HttpSource {
            url: url.into(),
            items: None,
            key: KeySpec::Default,
            namespace: None,
            headers: vec![],
            token_file: None,
            interval: DEFAULT_INTERVAL,
            jitter: DEFAULT_JITTER,
            backoff_initial: DEFAULT_BACKOFF_INITIAL,
            backoff_max: DEFAULT_BACKOFF_MAX,
            timeout: DEFAULT_TIMEOUT,
            max_body: DEFAULT_MAX_BODY_BYTES,
            max_items: DEFAULT_MAX_ITEMS,
            ca_file: None,
            insecure: false,
            plain_http_credentials: crate::client::insecure_http_credentials_from_env(),
            blocking: None,
        }
    }

    /// The JSON pointer to the items (`/data`, `/result/items`). The value there is a list of
    /// items, or an object taken as the only item. Default: the whole body (a top-level list,
    /// or a top-level object as one item).
    pub fn items(mut self, pointer: impl Into<String>) -> Self {
        self.items = Some(pointer.into());
        self
    }

    /// Where each item's key is: a JSON pointer (`/spec/id`), a field name (`id`) or a dotted
    /// path (`metadata.name`). Strings and numbers are accepted. Default: `metadata.name` when
    /// the item has `apiVersion`, `kind` and `metadata.name`, `id` otherwise.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        let key = key.into();
        self.key = if key.starts_with('/') {
            KeySpec::Pointer(key)
        } else {
            KeySpec::Path(key.split('.').map(str::to_string).collect())
        };
        self
    }

    /// The namespace of every object (default: the URL's host).
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// A request header (sent on every request; its value is never logged).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Send `Authorization: Bearer <token>` with the token read from `path` before every
    /// request, so a rotated token is used at once. Surrounding whitespace is ignored; the
    /// token is never logged.
    ///
    /// Over plain `http://` the token (and an `Authorization` header) is refused, as client-go
    /// refuses to send credentials without TLS, unless [`HttpSource::plain_http_credentials`]
    /// or `CRWATCH_INSECURE_HTTP_CREDENTIALS=1` asks for it.
    pub fn bearer_token_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.token_file = Some(path.into());
        self
    }

    /// Send the bearer token or `Authorization` header over plain `http://` too (anyone on the
    /// path can read them: for a local test endpoint only). Default: off, unless
    /// `CRWATCH_INSECURE_HTTP_CREDENTIALS` is `1` or `true`.
    pub fn plain_http_credentials(mut self, allow: bool) -> Self {
        self.plain_http_credentials = allow;
        self
    }

    /// The pause between polls (10 ms to 24 h; default 30 s). Not used between blocking
    /// queries, which follow each other as fast as [`HttpSource::min_poll_interval`] allows.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// A random share of up to `jitter` of each pause is added to it, so many pollers spread
    /// out (0.0 to 1.0; default 0.1).
    pub fn jitter(mut self, jitter: f64) -> Self {
        self.jitter = jitter;
        self
    }

    /// After a failed poll, wait `initial`, doubling with every further failure up to `max`
    /// (1 ms to 1 h, `initial <= max`; default 800 ms to 30 s). The jitter is added on top.
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff_initial = initial;
        self.backoff_max = max;
        self
    }

    /// The timeout of one request, connecting to the last byte (10 ms to 1 h; default 30 s).
    /// A blocking query gets its `wait` plus a sixteenth on top, as the server may hold it
    /// that long.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The largest response body accepted (1 KiB to 1 GiB; default 64 MiB).
    pub fn max_body_bytes(mut self, bytes: u64) -> Self {
        self.max_body = bytes;
        self
    }

    /// The most items accepted in one response (1 to 10,000,000; default 100,000).
    pub fn max_items(mut self, items: usize) -> Self {
        self.max_items = items;
        self
    }

    /// Trust the CA certificates in this PEM file as well as the system's.
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }

    /// Do not verify the server's certificate (off by default; only for tests and
    /// throw-away set-ups). Cannot be combined with [`HttpSource::ca_file`].
    pub fn insecure_skip_verify(mut self, insecure: bool) -> Self {
        self.insecure = insecure;
        self
    }

    /// Use blocking queries: the index from response header `index_header` is sent back as
    /// `?index=N&wait=30s`, and the server holds the request until something changes or the
    /// wait is over. Follows Consul's rules: an index that goes backwards resets to 0, an
    /// index of 0 counts as 1, and requests start at most once per
    /// [`HttpSource::min_poll_interval`]. Without the header in a response the source falls
    /// back to polling on [`HttpSource::interval`].
    pub fn blocking_query(mut self, index_header: impl Into<String>) -> Self {
        let header = index_header.into();
        let blocking = self.blocking.get_or_insert_with(|| Blocking {
            header: String::new(),
            index_param: "index".to_string(),
            wait_param: "wait".to_string(),
            wait: DEFAULT_WAIT,
            min_interval: DEFAULT_MIN_POLL_INTERVAL,
        });
        blocking.header = header;
        self
    }

    /// The query parameter names of blocking queries (default `index` and `wait`).
    pub fn blocking_params(mut self, index: impl Into<String>, wait: impl Into<String>) -> Self {
        let b = self.blocking_mut();
        b.index_param = index.into();
        b.wait_param = wait.into();
        self
    }

    /// How long the server may hold a blocking query (100 ms to 10 min; default 30 s).
    pub fn wait(mut self, wait: Duration) -> Self {
        self.blocking_mut().wait = wait;
        self
    }

    /// The shortest time between the starts of two blocking queries (0 to 1 h; default 1 s).
    pub fn min_poll_interval(mut self, min: Duration) -> Self {
        self.blocking_mut().min_interval = min;
        self
    }

    fn blocking_mut(&mut self) -> &mut Blocking {
        self.blocking.get_or_insert_with(|| Blocking {
            header: DEFAULT_INDEX_HEADER.to_string(),
            index_param: "index".to_string(),
            wait_param: "wait".to_string(),
            wait: DEFAULT_WAIT,
            min_interval: DEFAULT_MIN_POLL_INTERVAL,
        })
    }

    /// Check every setting (and read the CA file), without any request.
    pub fn validate(&self) -> Result<(), HttpSourceError> {
        self.fetcher(true).map(|_| ())
    }

    /// The URL without credentials or query, for messages.
    fn display_url(&self) -> String {
        redact_url(&self.url)
    }

    pub(crate) fn parse_url(&self) -> Result<Url, HttpSourceError> {
        let bad = |reason: String| HttpSourceError::Url {
            url: redact_url(&self.url),
            reason,
        };
        let url = Url::parse(&self.url).map_err(|e| bad(e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad(format!("the scheme {:?} is not supported", url.scheme())));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(bad("no host".to_string()));
        }
        Ok(url)
    }

    fn check_ranges(&self) -> Result<(), HttpSourceError> {
        const MS: Duration = Duration::from_millis(1);
        const HOUR: Duration = Duration::from_secs(3600);
        if !(Duration::from_millis(10)..=Duration::from_secs(86400)).contains(&self.interval) {
            return Err(range("interval", self.interval, "10ms to 24h"));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(range("jitter", self.jitter, "0.0 to 1.0"));
        }
        if !(MS..=HOUR).contains(&self.backoff_initial) {
            return Err(range("backoff (initial)", self.backoff_initial, "1ms to 1h"));
        }
        if !(self.backoff_initial..=HOUR).contains(&self.backoff_max) {
            return Err(range(
                "backoff (max)",
                self.backoff_max,
                "the initial backoff to 1h",
            ));
        }
        if !(Duration::from_millis(10)..=HOUR).contains(&self.timeout) {
            return Err(range("timeout", self.timeout, "10ms to 1h"));
        }
        if !(1024..=1024 * 1024 * 1024).contains(&self.max_body) {
            return Err(range(
                "max_body_bytes",
                self.max_body,
                "1 KiB (1024) to 1 GiB (1073741824)",
            ));
        }
        if !(1..=10_000_000).contains(&self.max_items) {
            return Err(range("max_items", self.max_items, "1 to 10000000"));
        }
        if let Some(b) = &self.blocking {
            if !(Duration::from_millis(100)..=Duration::from_secs(600)).contains(&b.wait) {
                return Err(range("wait", b.wait, "100ms to 10m"));
            }
            if b.min_interval > HOUR {
                return Err(range("min_poll_interval", b.min_interval, "0 to 1h"));
            }
            HeaderName::from_bytes(b.header.as_bytes()).map_err(|_| HttpSourceError::Invalid {
                setting: "blocking_query",
                reason: format!("{:?} is not a valid header name", b.header),
            })?;
            if b.index_param.is_empty() || b.wait_param.is_empty() || b.index_param == b.wait_param {
                return Err(HttpSourceError::Invalid {
                    setting: "blocking_params",
                    reason: "the index and wait parameters must be two different, non-empty names".into(),
                });
            }
        }
        if let Some(p) = &self.items
            && !p.is_empty()
            && !p.starts_with('/')
        {
            return Err(HttpSourceError::Invalid {
                setting: "items",
                reason: format!("{p:?} is not a JSON pointer: start it with '/', e.g. /{p}"),
            });
        }
        if let KeySpec::Path(parts) = &self.key
            && parts.iter().any(String::is_empty)
        {
            return Err(HttpSourceError::Invalid {
                setting: "key",
                reason:
                    "expected a field name (id), a dotted path (metadata.name) or a JSON pointer (/spec/id)"
                        .into(),
            });
        }
        if self.insecure && self.ca_file.is_some() {
            return Err(HttpSourceError::Invalid {
                setting: "insecure_skip_verify",
                reason: "trusting a CA file and skipping verification contradict each other; set one".into(),
            });
        }
        Ok(())
    }

    /// The request machinery: client, URL, headers, validators. `conditional` sends ETag and
    /// Last-Modified validators (a reconciliation that must see the full list turns it off).
    pub(crate) fn fetcher(&self, conditional: bool) -> Result<Fetcher, HttpSourceError> {
        let url = self.parse_url()?;
        self.check_ranges()?;
        let authorization = self.token_file.is_some()
            || self
                .headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("authorization"));
        if authorization && url.scheme() == "http" && !self.plain_http_credentials {
            return Err(HttpSourceError::Invalid {
                setting: "bearer_token_file",
                reason: format!(
                    "credentials are only sent over https:// (anyone on the path could read them over http://); use https, or set {}=1 (or plain_http_credentials(true)) for a local test endpoint",
                    crate::client::INSECURE_HTTP_CREDENTIALS_ENV
                ),
            });
        }
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        for (name, value) in &self.headers {
            let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| HttpSourceError::Invalid {
                setting: "header",
                reason: format!("{name:?} is not a valid header name"),
            })?;
            if self.token_file.is_some() && header == AUTHORIZATION {
                return Err(HttpSourceError::Invalid {
                    setting: "header",
                    reason: "Authorization is set from bearer_token_file; set one of them".into(),
                });
            }
            // The value is not quoted: it may be a credential.
            let mut value = HeaderValue::from_str(value).map_err(|_| HttpSourceError::Invalid {
                setting: "header",
                reason: format!("the value of {name} is not a valid header value"),
            })?;
            value.set_sensitive(true);
            headers.insert(header, value);
        }
        let tls = client_tls(self.ca_file.as_ref(), self.insecure, url.scheme() == "https")?;
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .redirect(reqwest::redirect::Policy::limited(5))
            .user_agent(concat!("crwatch/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| HttpSourceError::Client(error_chain(&e)))?;
        let index_header =
            match &self.blocking {
                Some(b) => Some(HeaderName::from_bytes(b.header.as_bytes()).map_err(|_| {
                    HttpSourceError::Invalid {
                        setting: "blocking_query",
                        reason: format!("{:?} is not a valid header name", b.header),
                    }
                })?),
                None => None,
            };
        Ok(Fetcher {
            client,
            url,
            headers,
            token_file: self.token_file.clone(),
            timeout: self.timeout,
            max_body: self.max_body,
            conditional,
            etag: None,
            last_modified: None,
            body_hash: None,
            blocking: self.blocking.clone(),
            index_header,
            index: 0,
        })
    }

    /// Whether an items pointer is set (the webhook source asks).
    #[cfg_attr(not(feature = "webhook"), allow(dead_code))]
    pub(crate) fn has_items_pointer(&self) -> bool {
        self.items.as_deref().is_some_and(|p| !p.is_empty())
    }

    /// The items of a response body: the value at the items pointer, a list or one object.
    pub(crate) fn extract_items(&self, mut body: Value) -> Result<Vec<Value>, String> {
        let target = match self.items.as_deref() {
            None | Some("") => body,
            Some(p) => match body.pointer_mut(p) {
                Some(v) => v.take(),
                None => return Err(format!("the response has nothing at {p} (the items pointer)")),
            },
        };
        let where_ = self
            .items
            .as_deref()
            .filter(|p| !p.is_empty())
            .unwrap_or("the top level");
        let items = match target {
            Value::Array(items) => items,
            obj @ Value::Object(_) => vec![obj],
            other => {
                return Err(format!(
                    "the value at {where_} is {}, expected a list of items or an object",
                    type_name(&other)
                ));
            }
        };
        if items.len() > self.max_items {
            return Err(format!(
                "{} items at {where_}, more than the limit of {}; raise max_items",
                items.len(),
                self.max_items
            ));
        }
        Ok(items)
    }

    /// The key of item number `index`.
    fn key_of(&self, item: &Value, index: usize) -> Result<String, String> {
        let (found, described) = match &self.key {
            KeySpec::Pointer(p) => (item.pointer(p), p.clone()),
            KeySpec::Path(parts) => (path(item, parts), parts.join(".")),
            KeySpec::Default if looks_like_kubernetes(item) => {
                (item.pointer("/metadata/name"), "metadata.name".to_string())
            }
            KeySpec::Default => (item.get("id"), "id".to_string()),
        };
        match found {
            Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
            Some(Value::Number(n)) => Ok(n.to_string()),
            None | Some(Value::Null) => Err(format!(
                "item {index} has no key at {described}; every item needs one (see HttpSource::key)"
            )),
            Some(other) => Err(format!(
                "item {index}: the key at {described} is {}, expected a non-empty string or a number",
                type_name(other)
            )),
        }
    }

    /// The object for `item`.
    fn object(&self, namespace: &str, key: String, item: Value) -> DynamicObject {
        let (api_version, kind) = match (item.get("apiVersion"), item.get("kind")) {
            (Some(Value::String(a)), Some(Value::String(k))) if !a.is_empty() && !k.is_empty() => {
                (a.clone(), k.clone())
            }
            _ => (API_VERSION.to_string(), KIND.to_string()),
        };
        let rv = value_hash(&item);
        ObjectBuilder::new(&api_version, &kind, key.clone())
            .namespace(namespace)
            .uid(stable_uid(&self.url, &key))
            .resource_version(rv)
            .field("data", item)
            .build()
    }

    /// All objects of a response body, keyed, the last item of a duplicate key winning.
    fn objects(&self, namespace: &str, body: Value) -> Result<Keyed, String> {
        let items = self.extract_items(body)?;
        let mut keys = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            keys.push(self.key_of(item, i)?);
        }
        let mut position: HashMap<String, usize> = HashMap::with_capacity(items.len());
        let mut out: Vec<Option<(String, DynamicObject)>> = Vec::with_capacity(items.len());
        let mut duplicates = vec![];
        for (key, item) in keys.into_iter().zip(items) {
            let obj = self.object(namespace, key.clone(), item);
            if let Some(&at) = position.get(&key) {
                // The earlier one is dropped; the later one takes its place in the order.
                out[at] = None;
                duplicates.push(key.clone());
            }
            position.insert(key.clone(), out.len());
            out.push(Some((key, obj)));
        }
        Ok((out.into_iter().flatten().collect(), duplicates))
    }

    fn default_namespace(&self, url: &Url) -> String {
        self.namespace
            .clone()
            .unwrap_or_else(|| url.host_str().unwrap_or_default().to_string())
    }

    fn pause(&self, base: Duration) -> Duration {
        base + base.mul_f64(rand::random::<f64>() * self.jitter)
    }

    fn backoff_after(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(32);
        let base = self
            .backoff_initial
            .checked_mul(1u32 << exp.min(31))
            .unwrap_or(self.backoff_max)
            .min(self.backoff_max);
        self.pause(base)
    }
}

/// Objects by key in response order, and the keys that were duplicated.
type Keyed = (Vec<(String, DynamicObject)>, Vec<String>);

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn path<'a>(item: &'a Value, parts: &[String]) -> Option<&'a Value> {
    parts.iter().try_fold(item, |v, p| v.get(p))
}

/// Whether `item` has `apiVersion`, `kind` and `metadata.name` strings.
pub(crate) fn looks_like_kubernetes(item: &Value) -> bool {
    item.get("apiVersion").is_some_and(Value::is_string)
        && item.get("kind").is_some_and(Value::is_string)
        && item.pointer("/metadata/name").is_some_and(Value::is_string)
}

/// A short content hash (16 hex digits of SHA-256) of a JSON value, as a resourceVersion.
pub(crate) fn value_hash(v: &Value) -> String {
    let bytes = serde_json::to_vec(v).unwrap_or_default();
    let digest = Sha256::digest(&bytes);
    hex::encode(&digest[..8])
}

fn body_hash(bytes: &[u8]) -> [u8; 32] {
    let digest = Sha256::digest(bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(&digest);
    out
}

/// The URL without credentials, query or fragment.
pub(crate) fn redact_url(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.set_fragment(None);
            u.to_string()
        }
        Err(_) => "<not a URL>".to_string(),
    }
}

/// An error and its causes, one line.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
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

/// The TLS client configuration: ring, the system roots plus the CA file, or no verification.
fn client_tls(
    ca_file: Option<&PathBuf>,
    insecure: bool,
    https: bool,
) -> Result<rustls::ClientConfig, HttpSourceError> {
    if insecure {
        tracing::warn!("http source: TLS certificate verification is disabled (insecure_skip_verify)");
    }
    crate::tls::client_config(ca_file.map(PathBuf::as_path), insecure, https)
        .map_err(|e| HttpSourceError::Tls(e.to_string()))
}

/// A failed request: what to report, and how long the server asked us to wait.
#[derive(Debug)]
pub(crate) struct FetchError {
    pub(crate) message: String,
    pub(crate) retry_after: Option<Duration>,
}

impl FetchError {
    fn new(message: impl Into<String>) -> Self {
        FetchError {
            message: message.into(),
            retry_after: None,
        }
    }
}

/// What the server answered, before it is accepted.
pub(crate) enum Fetched {
    /// 304: nothing changed (the validators hold only the blocking-query index).
    NotModified(Validators),
    /// 200 with the same bytes as last time (nothing to parse).
    Unchanged(Validators),
    /// A new body.
    Body(Value, Validators),
}

/// The validators of a response, kept only once its body was accepted.
#[derive(Debug, Default)]
pub(crate) struct Validators {
    etag: Option<HeaderValue>,
    last_modified: Option<HeaderValue>,
    body_hash: Option<[u8; 32]>,
    /// The blocking-query index the next request should send (None: the header was missing).
    index: Option<u64>,
}

/// Makes the requests of an [`HttpSource`] (shared with the webhook source's reconciliation).
pub(crate) struct Fetcher {
    client: reqwest::Client,
    url: Url,
    headers: HeaderMap,
    token_file: Option<PathBuf>,
    timeout: Duration,
    max_body: u64,
    conditional: bool,
    etag: Option<HeaderValue>,
    last_modified: Option<HeaderValue>,
    body_hash: Option<[u8; 32]>,
    blocking: Option<Blocking>,
    index_header: Option<HeaderName>,
    index: u64,
}

fn format_wait(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// `Retry-After` as seconds or an HTTP date, capped at [`MAX_RETRY_AFTER`].
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let wait = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => {
            let at = httpdate::parse_http_date(value).ok()?;
            at.duration_since(std::time::SystemTime::now())
                .unwrap_or_default()
        }
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

impl Fetcher {
    /// Whether this fetcher makes blocking queries.
    fn blocking(&self) -> Option<&Blocking> {
        self.blocking.as_ref()
    }

    /// Accept a response's validators (call once its body was processed).
    pub(crate) fn commit(&mut self, v: Validators) {
        if self.conditional && v.body_hash.is_some() {
            self.etag = v.etag;
            self.last_modified = v.last_modified;
            self.body_hash = v.body_hash;
        }
        if let Some(index) = v.index {
            self.index = index;
        }
    }

    /// The blocking-query index of a response, Consul's rules applied.
    fn index_of(&self, headers: &HeaderMap) -> Option<u64> {
        let name = self.index_header.as_ref()?;
        let new = headers.get(name)?.to_str().ok()?.trim().parse::<u64>().ok()?;
        Some(if new < self.index {
            // An index that goes backwards (a restored snapshot, a new leader) resets to 0,
            // so the next request gets the current state at once.
            0
        } else {
            // An index of 0 would make every following request return at once; treat it as 1.
            new.max(1)
        })
    }

    /// One request.
    pub(crate) async fn fetch(&self) -> Result<Fetched, FetchError> {
        let mut url = self.url.clone();
        let mut timeout = self.timeout;
        if let Some(b) = &self.blocking
            && self.index > 0
        {
            url.query_pairs_mut()
                .append_pair(&b.index_param, &self.index.to_string())
                .append_pair(&b.wait_param, &format_wait(b.wait));
            // Consul adds up to wait/16 of jitter to the wait.
            timeout += b.wait + b.wait / 16;
        }
        let mut headers = self.headers.clone();
        if let Some(path) = &self.token_file {
            headers.insert(AUTHORIZATION, read_token(path).await?);
        }
        if self.conditional {
            if let Some(etag) = &self.etag {
                headers.insert(IF_NONE_MATCH, etag.clone());
            }
            if let Some(lm) = &self.last_modified {
                headers.insert(IF_MODIFIED_SINCE, lm.clone());
            }
        }
        let send = self.client.get(url).headers(headers).timeout(timeout).send();
        let mut response = send.await.map_err(|e| transport_error(e, timeout))?;
        let status = response.status();
        let index = self.index_of(response.headers());
        if status == reqwest::StatusCode::NOT_MODIFIED {
            if self.etag.is_none() && self.last_modified.is_none() {
                return Err(FetchError::new(
                    "HTTP 304 Not Modified to a request without validators; the server is confused",
                ));
            }
            return Ok(Fetched::NotModified(Validators {
                index,
                ..Validators::default()
            }));
        }
        if !status.is_success() {
            let mut err = FetchError::new(format!("HTTP {status}{}", status_hint(status)));
            if matches!(status.as_u16(), 429 | 503) {
                err.retry_after = retry_after(response.headers());
            }
            return Err(err);
        }
        let mut validators = Validators {
            etag: response.headers().get(ETAG).cloned(),
            last_modified: response.headers().get(LAST_MODIFIED).cloned(),
            body_hash: None,
            index,
        };
        if let Some(len) = response.content_length()
            && len > self.max_body
        {
            return Err(FetchError::new(format!(
                "the response is {len} bytes, more than the limit of {}; raise max_body_bytes",
                self.max_body
            )));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| transport_error(e, timeout))? {
            if (body.len() + chunk.len()) as u64 > self.max_body {
                return Err(FetchError::new(format!(
                    "the response is more than the limit of {} bytes; raise max_body_bytes",
                    self.max_body
                )));
            }
            body.extend_from_slice(&chunk);
        }
        let hash = body_hash(&body);
        validators.body_hash = Some(hash);
        if self.conditional && self.body_hash == Some(hash) {
            return Ok(Fetched::Unchanged(validators));
        }
        match crate::json::from_slice::<Value>(&body) {
            Ok(v) => Ok(Fetched::Body(v, validators)),
            // Only the position and category: the message must not quote the body.
            Err(e) => Err(FetchError::new(format!(
                "the response is not valid JSON ({:?} error at line {} column {})",
                e.classify(),
                e.line(),
                e.column()
            ))),
        }
    }
}

fn status_hint(status: reqwest::StatusCode) -> &'static str {
    match status.as_u16() {
        401 | 403 => " (check the bearer token file and the headers)",
        404 => " (check the URL)",
        _ => "",
    }
}

fn transport_error(e: reqwest::Error, timeout: Duration) -> FetchError {
    if e.is_timeout() {
        return FetchError::new(format!("no complete response within {timeout:?}"));
    }
    let what = if e.is_connect() {
        "connecting"
    } else {
        "requesting"
    };
    let mut msg = format!("{what}: {}", error_chain(&e.without_url()));
    if msg.contains("invalid peer certificate") {
        msg.push_str(" (trusted CAs: the system's, plus the CA file if set)");
    }
    FetchError::new(msg)
}

async fn read_token(path: &PathBuf) -> Result<HeaderValue, FetchError> {
    let raw = tokio::fs::read(path)
        .await
        .map_err(|e| FetchError::new(format!("reading the bearer token file {}: {e}", path.display())))?;
    let token = raw.trim_ascii();
    if token.is_empty() {
        return Err(FetchError::new(format!(
            "the bearer token file {} is empty",
            path.display()
        )));
    }
    let mut value = Vec::with_capacity(token.len() + 7);
    value.extend_from_slice(b"Bearer ");
    value.extend_from_slice(token);
    let mut value = HeaderValue::from_bytes(&value).map_err(|_| {
        FetchError::new(format!(
            "the bearer token file {} holds characters not allowed in a header",
            path.display()
        ))
    })?;
    value.set_sensitive(true);
    Ok(value)
}

/// The polling loop's state.
struct Poller {
    config: HttpSource,
    name: String,
    namespace: String,
    fetcher: Fetcher,
    /// The last accepted state; `None` until the first successful poll.
    state: Option<BTreeMap<String, DynamicObject>>,
    next_at: Instant,
    failures: u32,
    /// Whether the last blocking response carried an index (a reset to 0 included).
    last_index_seen: bool,
}

type Item = Result<Event<DynamicObject>, SourceError>;

impl Poller {
    /// Wait for the next poll, make it, and return its events.
    async fn poll(&mut self) -> Vec<Item> {
        tokio::time::sleep_until(self.next_at).await;
        let started = Instant::now();
        match self.poll_once().await {
            Ok(mut events) => {
                self.failures = 0;
                self.next_at = match self.fetcher.blocking() {
                    // A blocking query goes out again at once, rate-limited.
                    Some(b) if self.last_index_seen => (started + b.min_interval).max(Instant::now()),
                    _ => Instant::now() + self.config.pause(self.config.interval),
                };
                events.push(Ok(Event::Progress(None)));
                events
            }
            Err(e) => {
                self.failures = self.failures.saturating_add(1);
                let mut delay = self.config.backoff_after(self.failures);
                if let Some(ra) = e.retry_after {
                    delay = delay.max(ra);
                }
                tracing::debug!(source = %self.name, failures = self.failures, ?delay, "poll failed");
                self.next_at = Instant::now() + delay;
                vec![Err(SourceError::new(self.name.clone(), e.message))]
            }
        }
    }

    async fn poll_once(&mut self) -> Result<Vec<Item>, FetchError> {
        let fetched = self.fetcher.fetch().await?;
        let (body, validators) = match fetched {
            Fetched::NotModified(v) | Fetched::Unchanged(v) => {
                self.note_index(&v);
                self.fetcher.commit(v);
                return Ok(vec![]);
            }
            Fetched::Body(body, v) => (body, v),
        };
        let (objects, duplicates) = self
            .config
            .objects(&self.namespace, body)
            .map_err(FetchError::new)?;
        self.note_index(&validators);
        self.fetcher.commit(validators);
        let mut events = vec![];
        if !duplicates.is_empty() {
            let mut sample: Vec<&String> = duplicates.iter().take(3).collect();
            sample.dedup();
            events.push(Err(SourceError::new(
                self.name.clone(),
                format!(
                    "{} items share a key with an earlier item (e.g. {:?}); the last item with each key \
                     wins: make the key unique or choose another key field",
                    duplicates.len(),
                    sample
                ),
            )));
        }
        let new: BTreeMap<String, DynamicObject> = objects.iter().cloned().collect();
        match self.state.take() {
            None => {
                events.push(Ok(Event::Init));
                events.extend(objects.into_iter().map(|(_, o)| Ok(Event::InitApply(o))));
                events.push(Ok(Event::InitDone));
            }
            Some(mut old) => {
                for (key, obj) in objects {
                    match old.remove(&key) {
                        Some(prev) if prev.metadata.resource_version == obj.metadata.resource_version => {}
                        _ => events.push(Ok(Event::Apply(obj))),
                    }
                }
                events.extend(old.into_values().map(|o| Ok(Event::Delete(o))));
            }
        }
        self.state = Some(new);
        Ok(events)
    }

    fn note_index(&mut self, v: &Validators) {
        self.last_index_seen = v.index.is_some();
    }
}

impl Source<DynamicObject> for HttpSource {
    fn describe(&self) -> String {
        format!("http {}", self.display_url())
    }

    fn events(self: Box<Self>) -> EventStream<DynamicObject> {
        let name = self.describe();
        let fetcher = match self.fetcher(true) {
            Ok(f) => f,
            Err(e) => {
                let err = SourceError::new(name, format!("{e}"));
                return futures::stream::once(async move { Err(err) }).boxed();
            }
        };
        let namespace = self.default_namespace(&fetcher.url);
        let poller = Poller {
            config: *self,
            name,
            namespace,
            fetcher,
            state: None,
            next_at: Instant::now(),
            failures: 0,
            last_index_seen: false,
        };
        futures::stream::unfold((poller, VecDeque::new()), |(mut poller, mut queue)| async move {
            loop {
                if let Some(item) = queue.pop_front() {
                    return Some((item, (poller, queue)));
                }
                queue.extend(poller.poll().await);
            }
        })
        .boxed()
    }
}
