//! A steady-rate HTTP load generator that accounts for every request it sends, plus one-shot
//! requests and "wait until a response matches" polling for the tests and the benchmark.
//!
//! The acceptance criterion it serves is "while 100 route changes are applied under steady load,
//! 0 requests fail — counted, not slept on". So every request ends in exactly one counter:
//! `sent == ok + failed` once [`LoadGen::stop`] returns, and requests that could not even be
//! started because too many were in flight are counted as `skipped`, never silently dropped.
//!
//! Pacing: the schedule is anchored at the start — request *k* is due at `k / rate` — and a
//! wake-up fires every request that has come due. That is `MissedTickBehavior::Burst` in effect:
//! after a scheduler stall the generator catches up, so `sent ≈ rate × elapsed` holds on a busy
//! CI machine, and it works above 1000/s where a timer tick per request could not. A catch-up
//! burst is bounded by the in-flight limit (the excess is `skipped`).

use std::collections::{BTreeMap, BTreeSet};
use std::error::Error as StdError;
use std::fmt;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CONNECTION, HOST, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

/// The highest accepted `rate_per_sec`.
pub const MAX_RATE: u32 = 100_000;
/// Default bound on requests in flight at once.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1024;
/// The highest accepted `max_in_flight`.
pub const MAX_IN_FLIGHT_LIMIT: usize = 65_536;
/// Default per-request timeout (connect, request and whole response).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest accepted per-request timeout.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(300);
/// How many failure descriptions [`LoadStats::failures`] keeps (the first ones).
pub const FAILURE_SAMPLES: usize = 20;
/// The largest response body [`request`] returns.
pub const MAX_RESPONSE_BODY: usize = 1 << 20;
/// The largest request body a load may send.
pub const MAX_REQUEST_BODY: usize = 64 << 20;
/// The most requests a bounded run (`total`) may ask for.
pub const MAX_TOTAL: u64 = 1_000_000_000;
/// The longest [`wait_until`] / [`first_success_after`] will poll.
pub const MAX_WAIT: Duration = Duration::from_secs(3600);
/// The header a backend names itself in (see [`crate::backend::BACKEND_HEADER`]).
pub const BACKEND_HEADER: &str = "x-backend";

/// Distinct `x-backend` values tracked; more are counted under [`OTHER_BACKENDS`].
const MAX_BACKENDS_TRACKED: usize = 256;
/// The [`LoadStats::by_backend`] key for backends beyond the tracked number.
pub const OTHER_BACKENDS: &str = "(other)";
/// `x-backend` values longer than this are truncated before counting.
const MAX_BACKEND_NAME: usize = 128;
/// How much longer than the request timeout [`LoadGen::stop`] waits for in-flight requests;
/// every request has its own timeout, so this only covers scheduling delay.
const DRAIN_MARGIN: Duration = Duration::from_secs(2);

/// Errors from configuring a load or from a single request.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A setting outside its documented range, or an unparsable path/header.
    #[error("invalid load configuration: {0}")]
    InvalidConfig(String),
    /// The TCP connection could not be made.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The target.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// No complete response within the timeout.
    #[error("no complete response from {addr} within {timeout:?}")]
    Timeout {
        /// The target.
        addr: SocketAddr,
        /// The timeout that passed.
        timeout: Duration,
    },
    /// The HTTP exchange failed (reset, closed early, malformed response).
    #[error("HTTP exchange with {addr} failed: {detail}")]
    Http {
        /// The target.
        addr: SocketAddr,
        /// The error and its causes, one line.
        detail: String,
    },
    /// The response body exceeded [`MAX_RESPONSE_BODY`].
    #[error("response body from {addr} is larger than {limit} bytes")]
    BodyTooLarge {
        /// The target.
        addr: SocketAddr,
        /// The limit.
        limit: usize,
    },
    /// [`wait_until`] saw no matching response in time.
    #[error("no matching response from {addr} within {timeout:?} ({attempts} attempts; last: {last})")]
    NoMatch {
        /// The target.
        addr: SocketAddr,
        /// How long it polled.
        timeout: Duration,
        /// How many requests it made.
        attempts: u64,
        /// The last outcome seen.
        last: String,
    },
}

/// Which response statuses count as success.
#[derive(Clone)]
pub enum Expect {
    /// Statuses in this range (the default is `200..=299`).
    Range(RangeInclusive<u16>),
    /// Exactly these statuses.
    Statuses(BTreeSet<u16>),
    /// Statuses for which the function returns true.
    Predicate(Arc<dyn Fn(u16) -> bool + Send + Sync>),
}

impl Expect {
    /// Exactly the given statuses, e.g. `Expect::any_of([200, 429])`.
    pub fn any_of(statuses: impl IntoIterator<Item = u16>) -> Self {
        Expect::Statuses(statuses.into_iter().collect())
    }

    /// Statuses accepted by `f`.
    pub fn predicate(f: impl Fn(u16) -> bool + Send + Sync + 'static) -> Self {
        Expect::Predicate(Arc::new(f))
    }

    /// Whether `status` is acceptable.
    pub fn matches(&self, status: u16) -> bool {
        match self {
            Expect::Range(range) => range.contains(&status),
            Expect::Statuses(set) => set.contains(&status),
            Expect::Predicate(f) => f(status),
        }
    }
}

impl Default for Expect {
    fn default() -> Self {
        Expect::Range(200..=299)
    }
}

impl fmt::Debug for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expect::Range(range) => write!(f, "Range({range:?})"),
            Expect::Statuses(set) => write!(f, "Statuses({set:?})"),
            Expect::Predicate(_) => f.write_str("Predicate(..)"),
        }
    }
}

/// What a [`LoadGen`] sends, how fast, and what counts as success.
///
/// Build with [`LoadConfig::new`] and override fields with struct update syntax.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// Where to connect (e.g. nginx on `127.0.0.1:PORT`).
    pub target: SocketAddr,
    /// The `Host` header (selects the nginx server block).
    pub host: String,
    /// Path and optional query, starting with `/`.
    pub path: String,
    /// Request method; default GET.
    pub method: Method,
    /// Extra request headers.
    pub headers: Vec<(String, String)>,
    /// Request body, if any (at most 64 MiB; shared, not copied, per request).
    pub body: Option<Bytes>,
    /// Requests started per second, `1..=100_000`.
    pub rate_per_sec: u32,
    /// Per-request bound on connect + request + whole response, `1 ms..=300 s`; default 5 s.
    pub timeout: Duration,
    /// `false` (default): a new TCP connection per request (`Connection: close`), so a failure
    /// is about the server (nginx's reload), not about keep-alive races. `true`: reuse idle
    /// connections; a request that fails on a *reused* connection before a response arrived
    /// is counted in `retried` and retried once on a new connection, as curl and Go do.
    pub keepalive: bool,
    /// Which statuses are a success; default `200..=299`.
    pub expect: Expect,
    /// Most requests in flight, `1..=65_536`; default 1024. When reached, due requests are
    /// counted as `skipped` instead of queued.
    pub max_in_flight: usize,
    /// Stop scheduling after this many requests (`1..=10^9`), for runs whose count must be exact
    /// regardless of machine load; `None` (default) runs until stopped.
    pub total: Option<u64>,
}

impl LoadConfig {
    /// A GET load of `rate_per_sec` requests per second to `target` with `Host: host` and `path`,
    /// other settings at their defaults.
    pub fn new(
        target: SocketAddr,
        host: impl Into<String>,
        path: impl Into<String>,
        rate_per_sec: u32,
    ) -> Self {
        LoadConfig {
            target,
            host: host.into(),
            path: path.into(),
            method: Method::GET,
            headers: Vec::new(),
            body: None,
            rate_per_sec,
            timeout: DEFAULT_TIMEOUT,
            keepalive: false,
            expect: Expect::default(),
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            total: None,
        }
    }

    /// Checks every setting's range and that path, host and headers are valid HTTP.
    pub fn validate(&self) -> Result<(), LoadError> {
        Prepared::new(self).map(|_| ())
    }
}

/// A request ready to be cloned onto the wire: everything parsed and checked once.
#[derive(Debug, Clone)]
struct Prepared {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
}

impl Prepared {
    fn new(cfg: &LoadConfig) -> Result<Self, LoadError> {
        let invalid = |m: String| Err(LoadError::InvalidConfig(m));
        if !(1..=MAX_RATE).contains(&cfg.rate_per_sec) {
            return invalid(format!(
                "rate_per_sec {} is outside 1..={MAX_RATE}",
                cfg.rate_per_sec
            ));
        }
        if !(1..=MAX_IN_FLIGHT_LIMIT).contains(&cfg.max_in_flight) {
            return invalid(format!(
                "max_in_flight {} is outside 1..={MAX_IN_FLIGHT_LIMIT}",
                cfg.max_in_flight
            ));
        }
        if let Some(total) = cfg.total
            && !(1..=MAX_TOTAL).contains(&total)
        {
            return invalid(format!("total {total} is outside 1..={MAX_TOTAL}"));
        }
        Self::build(
            &cfg.method,
            &cfg.host,
            &cfg.path,
            &cfg.headers,
            cfg.body.clone(),
            cfg.timeout,
            !cfg.keepalive,
        )
    }

    fn from_spec(spec: &RequestSpec) -> Result<Self, LoadError> {
        Self::build(
            &spec.method,
            &spec.host,
            &spec.path,
            &spec.headers,
            spec.body.clone(),
            spec.timeout,
            true,
        )
    }

    fn build(
        method: &Method,
        host: &str,
        path: &str,
        extra: &[(String, String)],
        body: Option<Bytes>,
        timeout: Duration,
        close: bool,
    ) -> Result<Self, LoadError> {
        let invalid = |m: String| Err(LoadError::InvalidConfig(m));
        if timeout < Duration::from_millis(1) || timeout > MAX_TIMEOUT {
            return invalid(format!("timeout {timeout:?} is outside 1ms..={MAX_TIMEOUT:?}"));
        }
        if !path.starts_with('/') {
            return invalid(format!("path {path:?} must start with '/'"));
        }
        let Ok(path_and_query) = path.parse::<PathAndQuery>() else {
            return invalid(format!("path {path:?} is not a valid request target"));
        };
        let uri = Uri::from(path_and_query);
        if host.is_empty() {
            return invalid("host must not be empty".to_owned());
        }
        let Ok(host) = HeaderValue::from_str(host) else {
            return invalid(format!("host {host:?} is not a valid header value"));
        };
        let mut headers = HeaderMap::new();
        headers.insert(HOST, host);
        for (name, value) in extra {
            let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else {
                return invalid(format!("header name {name:?} is not valid"));
            };
            let Ok(value) = HeaderValue::from_str(value) else {
                return invalid(format!("the value of header {name} is not a valid header value"));
            };
            headers.append(name, value);
        }
        if close {
            headers.insert(CONNECTION, HeaderValue::from_static("close"));
        }
        let body = body.unwrap_or_default();
        if body.len() > MAX_REQUEST_BODY {
            return invalid(format!("body of {} bytes exceeds {MAX_REQUEST_BODY}", body.len()));
        }
        Ok(Prepared {
            method: method.clone(),
            uri,
            headers,
            body,
        })
    }

    fn request(&self) -> Request<Full<Bytes>> {
        let mut request = Request::new(Full::new(self.body.clone()));
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.headers_mut() = self.headers.clone();
        request
    }
}

/// One line for an error and its causes ("connection closed before message completed: …").
fn error_chain(error: &(dyn StdError + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Opens a connection and performs the HTTP/1.1 handshake. The returned future drives the
/// connection and must be polled (spawned or raced) while the request is in progress.
async fn connect(
    addr: SocketAddr,
) -> Result<
    (
        SendRequest<Full<Bytes>>,
        http1::Connection<TokioIo<TcpStream>, Full<Bytes>>,
    ),
    LoadError,
> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|source| LoadError::Connect { addr, source })?;
    // Small requests: do not let Nagle delay the last segment.
    let _ = stream.set_nodelay(true);
    http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| LoadError::Http {
            addr,
            detail: error_chain(&e),
        })
}

/// What a load request reports back.
struct Answer {
    status: u16,
    backend: Option<String>,
}

/// Where the response body goes: counted and dropped (load) or kept up to a limit (one-shot).
enum BodySink {
    Discard,
    Keep(Vec<u8>),
}

/// Reads a response body to its end into `sink`.
async fn read_response_body(
    addr: SocketAddr,
    mut body: Incoming,
    sink: &mut BodySink,
) -> Result<(), LoadError> {
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| LoadError::Http {
            addr,
            detail: format!("reading the body: {}", error_chain(&e)),
        })?;
        if let (Ok(data), BodySink::Keep(kept)) = (frame.into_data(), &mut *sink) {
            if kept.len().saturating_add(data.len()) > MAX_RESPONSE_BODY {
                return Err(LoadError::BodyTooLarge {
                    addr,
                    limit: MAX_RESPONSE_BODY,
                });
            }
            kept.extend_from_slice(&data);
        }
    }
    Ok(())
}

/// One request on a fresh connection that is closed afterwards; the connection is driven inside
/// this future, so dropping it (timeout, abort) leaves nothing behind.
async fn exchange_once(
    addr: SocketAddr,
    request: Request<Full<Bytes>>,
    sink: &mut BodySink,
) -> Result<http::response::Parts, LoadError> {
    let (mut sender, conn) = connect(addr).await?;
    tokio::pin!(conn);
    let exchange = async {
        let response = sender.send_request(request).await.map_err(|e| LoadError::Http {
            addr,
            detail: error_chain(&e),
        })?;
        let (parts, body) = response.into_parts();
        read_response_body(addr, body, sink).await?;
        Ok::<_, LoadError>(parts)
    };
    tokio::pin!(exchange);
    tokio::select! {
        biased;
        result = &mut exchange => return result,
        // The connection ending first (e.g. the server closed it) does not decide the outcome:
        // the exchange then completes or reports the error itself.
        _ = &mut conn => {}
    }
    exchange.await
}

/// Idle keep-alive connections, at most `max_in_flight` of them.
struct Pool {
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
    max_idle: usize,
}

impl Pool {
    fn take(&self) -> Option<SendRequest<Full<Bytes>>> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(sender) = idle.pop() {
            if !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    }

    fn put(&self, sender: SendRequest<Full<Bytes>>) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < self.max_idle && !sender.is_closed() {
            idle.push(sender);
        }
    }

    fn clear(&self) {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner).clear();
    }
}

/// A bounded latency histogram: exact below 64 µs, then 32 buckets per power of two (≤ 3.2%
/// relative error), up to 2^41 µs (values above are clamped). About 9 KiB, lock-free.
struct Histogram {
    buckets: Box<[AtomicU64]>,
    max_micros: AtomicU64,
}

const HIST_LINEAR: u64 = 64;
const HIST_SUB: u64 = 32;
const HIST_MAX_EXP: u32 = 40;
const HIST_BUCKETS: usize = (HIST_LINEAR + (HIST_MAX_EXP as u64 - 6 + 1) * HIST_SUB) as usize;

impl Histogram {
    fn new() -> Self {
        Histogram {
            buckets: (0..HIST_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            max_micros: AtomicU64::new(0),
        }
    }

    fn index(micros: u64) -> usize {
        if micros < HIST_LINEAR {
            return micros as usize;
        }
        let micros = micros.min((1u64 << (HIST_MAX_EXP + 1)) - 1);
        let exp = u64::from(63 - micros.leading_zeros()); // 6..=HIST_MAX_EXP
        let mantissa = micros >> (exp - 5); // 32..=63
        (HIST_LINEAR + (exp - 6) * HIST_SUB + (mantissa - HIST_SUB)) as usize
    }

    /// The largest value that falls into bucket `index`.
    fn upper(index: usize) -> u64 {
        let index = index as u64;
        if index < HIST_LINEAR {
            return index;
        }
        let i = index - HIST_LINEAR;
        let exp = i / HIST_SUB + 6;
        let mantissa = i % HIST_SUB + HIST_SUB;
        ((mantissa + 1) << (exp - 5)) - 1
    }

    fn record(&self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        // index() clamps, so it is always below HIST_BUCKETS.
        if let Some(bucket) = self.buckets.get(Self::index(micros)) {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        self.max_micros.fetch_max(micros, Ordering::Relaxed);
    }

    fn max(&self) -> Duration {
        Duration::from_micros(self.max_micros.load(Ordering::Relaxed))
    }

    /// The latency at quantile `q` (0..=1), as the upper bound of its bucket, capped at the max.
    fn quantile(&self, q: f64) -> Duration {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return Duration::ZERO;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (index, count) in counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                let max = self.max_micros.load(Ordering::Relaxed);
                return Duration::from_micros(Self::upper(index).min(max));
            }
        }
        self.max()
    }
}

/// The live counters behind [`LoadGen::snapshot`].
struct Counters {
    started: Instant,
    /// Set when the run has ended, so `elapsed` stops growing.
    finished_after_micros: AtomicU64,
    sent: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
    skipped: AtomicU64,
    retried: AtomicU64,
    timeouts: AtomicU64,
    connect_errors: AtomicU64,
    unexpected_status: AtomicU64,
    /// Index = status code (hyper only produces 100..=999).
    by_status: Box<[AtomicU64]>,
    by_backend: Mutex<BTreeMap<String, u64>>,
    failures: Mutex<Vec<String>>,
    latency: Histogram,
}

impl Counters {
    fn new() -> Self {
        Counters {
            started: Instant::now(),
            finished_after_micros: AtomicU64::new(u64::MAX),
            sent: AtomicU64::new(0),
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            connect_errors: AtomicU64::new(0),
            unexpected_status: AtomicU64::new(0),
            by_status: (0..1000).map(|_| AtomicU64::new(0)).collect(),
            by_backend: Mutex::new(BTreeMap::new()),
            failures: Mutex::new(Vec::new()),
            latency: Histogram::new(),
        }
    }

    fn elapsed(&self) -> Duration {
        match self.finished_after_micros.load(Ordering::Acquire) {
            u64::MAX => self.started.elapsed(),
            micros => Duration::from_micros(micros),
        }
    }

    fn sample_failure(&self, what: &str) {
        let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        if failures.len() < FAILURE_SAMPLES {
            let at = self.started.elapsed().as_secs_f64();
            failures.push(format!("t={at:.3}s: {what}"));
        }
    }

    fn fail(&self, what: &str) {
        self.sample_failure(what);
        self.failed.fetch_add(1, Ordering::Relaxed);
    }

    fn record_answer(&self, answer: &Answer) {
        if let Some(slot) = self.by_status.get(usize::from(answer.status)) {
            slot.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(name) = &answer.backend {
            let mut map = self.by_backend.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(count) = map.get_mut(name) {
                *count += 1;
            } else if map.len() < MAX_BACKENDS_TRACKED {
                map.insert(name.clone(), 1);
            } else {
                *map.entry(OTHER_BACKENDS.to_owned()).or_insert(0) += 1;
            }
        }
    }

    fn snapshot(&self) -> LoadStats {
        // Outcomes before `sent`, so in_flight never underflows in a racing snapshot.
        let ok = self.ok.load(Ordering::Acquire);
        let failed = self.failed.load(Ordering::Acquire);
        let sent = self.sent.load(Ordering::Acquire);
        let by_status = self
            .by_status
            .iter()
            .enumerate()
            .filter_map(|(status, count)| {
                let count = count.load(Ordering::Relaxed);
                (count > 0).then(|| (u16::try_from(status).unwrap_or(u16::MAX), count))
            })
            .collect();
        LoadStats {
            elapsed: self.elapsed(),
            sent,
            ok,
            failed,
            skipped: self.skipped.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            timeouts: self.timeouts.load(Ordering::Relaxed),
            connect_errors: self.connect_errors.load(Ordering::Relaxed),
            unexpected_status: self.unexpected_status.load(Ordering::Relaxed),
            in_flight: sent.saturating_sub(ok + failed),
            by_status,
            by_backend: self
                .by_backend
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            latency_p50: self.latency.quantile(0.50),
            latency_p99: self.latency.quantile(0.99),
            latency_max: self.latency.max(),
            failures: self
                .failures
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        }
    }
}

/// Counts of a load run so far (from [`LoadGen::snapshot`]) or in total (from [`LoadGen::stop`],
/// where `sent == ok + failed` holds exactly).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct LoadStats {
    /// Time since the start (until the end, for a finished run).
    pub elapsed: Duration,
    /// Requests started.
    pub sent: u64,
    /// Requests answered with an expected status.
    pub ok: u64,
    /// Requests that failed: connect errors, timeouts, resets and unexpected statuses.
    pub failed: u64,
    /// Requests that came due while `max_in_flight` were outstanding and so were not sent.
    pub skipped: u64,
    /// Keep-alive only: requests that failed on a reused connection before a response and were
    /// retried once on a new connection (their final outcome is in `ok` or `failed`).
    pub retried: u64,
    /// Of `failed`: no complete response within the timeout.
    pub timeouts: u64,
    /// Of `failed`: the TCP connection could not be made.
    pub connect_errors: u64,
    /// Of `failed`: answered, but with a status `expect` rejects.
    pub unexpected_status: u64,
    /// Requests started but not finished at the time of the snapshot.
    pub in_flight: u64,
    /// Responses by status code (expected or not).
    pub by_status: BTreeMap<u16, u64>,
    /// Responses by their `x-backend` header (responses without it are not counted here).
    pub by_backend: BTreeMap<String, u64>,
    /// Median latency of the `ok` requests (bucket upper bound, ≤ 3.2% above the true value).
    pub latency_p50: Duration,
    /// 99th percentile latency of the `ok` requests.
    pub latency_p99: Duration,
    /// Highest latency of an `ok` request.
    pub latency_max: Duration,
    /// The first [`FAILURE_SAMPLES`] failures: time since start and status or error text.
    pub failures: Vec<String>,
}

impl LoadStats {
    /// The fraction (0..=1) of responses carrying `x-backend: name` among all responses that
    /// carried an `x-backend` header; 0 when none did.
    pub fn backend_share(&self, name: &str) -> f64 {
        let total: u64 = self.by_backend.values().sum();
        if total == 0 {
            return 0.0;
        }
        self.by_backend.get(name).copied().unwrap_or(0) as f64 / total as f64
    }
}

impl fmt::Display for LoadStats {
    /// One line, e.g. `2.00s sent 400 ok 400 failed 0 skipped 0 retried 0 p50 1.1ms p99 3.0ms
    /// max 4.2ms backends a=200 b=200`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        write!(
            f,
            "{:.2}s sent {} ok {} failed {} skipped {} retried {} p50 {:.1}ms p99 {:.1}ms max {:.1}ms",
            self.elapsed.as_secs_f64(),
            self.sent,
            self.ok,
            self.failed,
            self.skipped,
            self.retried,
            ms(self.latency_p50),
            ms(self.latency_p99),
            ms(self.latency_max),
        )?;
        if !self.by_backend.is_empty() {
            f.write_str(" backends")?;
            for (name, count) in &self.by_backend {
                write!(f, " {name}={count}")?;
            }
        }
        let unexpected: Vec<String> = self
            .by_status
            .iter()
            .filter(|(status, _)| !(200..=299).contains(*status))
            .map(|(status, count)| format!("{status}={count}"))
            .collect();
        if !unexpected.is_empty() {
            write!(f, " non-2xx {}", unexpected.join(" "))?;
        }
        Ok(())
    }
}

/// What every request task of one run shares.
struct Ctx {
    target: SocketAddr,
    prepared: Prepared,
    timeout: Duration,
    expect: Expect,
    keepalive: bool,
    pool: Pool,
    counters: Arc<Counters>,
    /// Ends spawned keep-alive connection tasks when the run ends.
    cancel: CancellationToken,
}

impl Ctx {
    /// One request on a connection of the pool or a new one, retried once on a new connection
    /// if a reused one failed before a response arrived.
    async fn keepalive_exchange(&self) -> Result<Answer, LoadError> {
        if let Some(sender) = self.pool.take() {
            match self.send_on(sender).await {
                Ok(answer) => return Ok(answer),
                Err(Retry::Yes(_)) => {
                    self.counters.retried.fetch_add(1, Ordering::Relaxed);
                }
                Err(Retry::No(error)) => return Err(error),
            }
        }
        let (sender, conn) = connect(self.target).await?;
        let cancel = self.cancel.clone();
        tokio::spawn(async move {
            tokio::select! {
                // The run ended: drop the connection.
                () = cancel.cancelled() => {}
                // The server closed it or the last sender was dropped.
                _ = conn => {}
            }
        });
        self.send_on(sender).await.map_err(Retry::into_error)
    }

    /// Sends the request on `sender`, returning the connection to the pool when it stays open.
    async fn send_on(&self, mut sender: SendRequest<Full<Bytes>>) -> Result<Answer, Retry> {
        let addr = self.target;
        let http_error = |e: hyper::Error| LoadError::Http {
            addr,
            detail: error_chain(&e),
        };
        if let Err(e) = sender.ready().await {
            return Err(Retry::Yes(http_error(e)));
        }
        let response = match sender.send_request(self.prepared.request()).await {
            Ok(response) => response,
            // A parse error means response bytes arrived; a user error is ours: neither is
            // the "server closed the idle connection as we reused it" race.
            Err(e) if e.is_parse() || e.is_user() => return Err(Retry::No(http_error(e))),
            Err(e) => return Err(Retry::Yes(http_error(e))),
        };
        let (parts, body) = response.into_parts();
        read_response_body(addr, body, &mut BodySink::Discard)
            .await
            .map_err(Retry::No)?;
        let closing = parts
            .headers
            .get(CONNECTION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        if !closing {
            self.pool.put(sender);
        }
        Ok(answer_of(&parts))
    }

    /// Runs one request of the load and records its outcome. Recording is the last thing it
    /// does and has no await after it, so a task aborted at stop has recorded nothing.
    async fn fire(self: Arc<Self>, _permit: OwnedSemaphorePermit) {
        let start = Instant::now();
        let exchange = async {
            if self.keepalive {
                self.keepalive_exchange().await
            } else {
                let parts =
                    exchange_once(self.target, self.prepared.request(), &mut BodySink::Discard).await?;
                Ok(answer_of(&parts))
            }
        };
        let result = tokio::time::timeout(self.timeout, exchange).await;
        let counters = &self.counters;
        match result {
            Err(_) => {
                counters.timeouts.fetch_add(1, Ordering::Relaxed);
                counters.fail(&format!(
                    "timeout: no complete response within {:?}",
                    self.timeout
                ));
            }
            Ok(Err(error)) => {
                if matches!(error, LoadError::Connect { .. }) {
                    counters.connect_errors.fetch_add(1, Ordering::Relaxed);
                }
                counters.fail(&error.to_string());
            }
            Ok(Ok(answer)) => {
                counters.record_answer(&answer);
                if self.expect.matches(answer.status) {
                    counters.latency.record(start.elapsed());
                    counters.ok.fetch_add(1, Ordering::Release);
                } else {
                    counters.unexpected_status.fetch_add(1, Ordering::Relaxed);
                    let from = answer
                        .backend
                        .as_deref()
                        .map(|b| format!(" from backend {b}"))
                        .unwrap_or_default();
                    counters.fail(&format!("unexpected status {}{from}", answer.status));
                }
            }
        }
    }
}

/// Whether a keep-alive failure may be retried on a new connection.
enum Retry {
    Yes(LoadError),
    No(LoadError),
}

impl Retry {
    fn into_error(self) -> LoadError {
        match self {
            Retry::Yes(e) | Retry::No(e) => e,
        }
    }
}

fn answer_of(parts: &http::response::Parts) -> Answer {
    let backend = parts
        .headers
        .get(BACKEND_HEADER)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .map(|mut name| {
            if name.len() > MAX_BACKEND_NAME {
                let mut end = MAX_BACKEND_NAME;
                while !name.is_char_boundary(end) {
                    end -= 1;
                }
                name.truncate(end);
            }
            name
        });
    Answer {
        status: parts.status.as_u16(),
        backend,
    }
}

/// A running steady-rate load. Dropping it aborts everything at once; [`stop`](LoadGen::stop)
/// ends it with exact counts.
///
/// ```no_run
/// # async fn demo(nginx: std::net::SocketAddr) -> anyhow::Result<()> {
/// use gateway_operator::loadgen::{LoadConfig, LoadGen};
/// let load = LoadGen::start(LoadConfig::new(nginx, "shop.example", "/api", 200))?;
/// // ... apply 100 GatewayRoute changes ...
/// let stats = load.stop().await;
/// println!("{stats}");
/// assert_eq!(stats.failed, 0, "failures: {:?}", stats.failures);
/// # Ok(()) }
/// ```
pub struct LoadGen {
    ctx: Arc<Ctx>,
    /// Stops scheduling; in-flight requests still finish.
    stop: CancellationToken,
    driver: Option<JoinHandle<()>>,
}

impl fmt::Debug for LoadGen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadGen")
            .field("target", &self.ctx.target)
            .field("stats", &self.snapshot())
            .finish()
    }
}

impl LoadGen {
    /// Validates `cfg` and starts sending at once (the first request at t = 0). Needs a Tokio
    /// runtime.
    pub fn start(cfg: LoadConfig) -> Result<LoadGen, LoadError> {
        let prepared = Prepared::new(&cfg)?;
        let ctx = Arc::new(Ctx {
            target: cfg.target,
            prepared,
            timeout: cfg.timeout,
            expect: cfg.expect.clone(),
            keepalive: cfg.keepalive,
            pool: Pool {
                idle: Mutex::new(Vec::new()),
                max_idle: cfg.max_in_flight,
            },
            counters: Arc::new(Counters::new()),
            cancel: CancellationToken::new(),
        });
        let stop = CancellationToken::new();
        let driver = tokio::spawn(drive(
            Arc::clone(&ctx),
            cfg.rate_per_sec,
            cfg.max_in_flight,
            cfg.total,
            stop.clone(),
        ));
        Ok(LoadGen {
            ctx,
            stop,
            driver: Some(driver),
        })
    }

    /// The counts so far (requests in flight are in `in_flight`).
    pub fn snapshot(&self) -> LoadStats {
        self.ctx.counters.snapshot()
    }

    /// Stops scheduling, waits for the requests in flight (each is bounded by the timeout) and
    /// returns the final counts, where `sent == ok + failed`.
    pub async fn stop(mut self) -> LoadStats {
        self.stop.cancel();
        self.join().await
    }

    /// For a run with `total`: waits until all `total` requests were sent and answered, at most
    /// `limit`, then stops as [`stop`](LoadGen::stop) does. Check `sent` to see whether it got
    /// there. Without `total` this waits `limit` and stops.
    pub async fn finish(mut self, limit: Duration) -> LoadStats {
        if let Some(driver) = self.driver.as_mut()
            && let Ok(joined) = tokio::time::timeout(limit, driver).await
        {
            // The run ended by itself; a finished JoinHandle must not be polled again.
            self.driver = None;
            if let Err(error) = joined {
                self.ctx
                    .counters
                    .sample_failure(&format!("load driver ended abnormally: {error}"));
            }
        }
        self.stop.cancel();
        self.join().await
    }

    async fn join(&mut self) -> LoadStats {
        if let Some(driver) = self.driver.take()
            && let Err(error) = driver.await
        {
            self.ctx
                .counters
                .sample_failure(&format!("load driver ended abnormally: {error}"));
        }
        self.ctx.cancel.cancel();
        self.ctx.pool.clear();
        self.ctx.counters.snapshot()
    }
}

impl Drop for LoadGen {
    fn drop(&mut self) {
        self.stop.cancel();
        self.ctx.cancel.cancel();
        if let Some(driver) = self.driver.take() {
            // Aborting the driver drops its JoinSet, which aborts every request in flight.
            driver.abort();
        }
    }
}

/// Schedules requests until stopped or `total` were due, then waits for those in flight.
async fn drive(ctx: Arc<Ctx>, rate: u32, max_in_flight: usize, total: Option<u64>, stop: CancellationToken) {
    let counters = Arc::clone(&ctx.counters);
    let permits = Arc::new(Semaphore::new(max_in_flight));
    let mut tasks: JoinSet<()> = JoinSet::new();
    // Wake at the request period, but no more often than every millisecond (the timer's
    // resolution); each wake-up fires everything that has come due since.
    let period = Duration::from_secs(1)
        .checked_div(rate)
        .unwrap_or(Duration::from_secs(1))
        .max(Duration::from_millis(1));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let limit = total.unwrap_or(u64::MAX);
    let mut scheduled: u64 = 0;
    let started = counters.started;
    while scheduled < limit {
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            _ = ticker.tick() => {}
        }
        // Request k is due at k / rate; +1 because request 0 is due at t = 0.
        let due_nanos = started.elapsed().as_nanos() * u128::from(rate) / 1_000_000_000 + 1;
        let due = u64::try_from(due_nanos).unwrap_or(u64::MAX).min(limit);
        while scheduled < due {
            scheduled += 1;
            match Arc::clone(&permits).try_acquire_owned() {
                Ok(permit) => {
                    counters.sent.fetch_add(1, Ordering::Release);
                    tasks.spawn(Arc::clone(&ctx).fire(permit));
                }
                Err(_) => {
                    counters.skipped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        // Reap finished tasks so the set holds only those in flight (bounded by the permits).
        while tasks.try_join_next().is_some() {}
    }

    // Drain: every request has its own timeout, so this ends; the margin covers scheduling.
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(ctx.timeout + DRAIN_MARGIN, drain)
        .await
        .is_err()
    {
        tasks.abort_all();
        while let Some(joined) = tasks.join_next().await {
            // A cancelled task recorded nothing (see Ctx::fire): count it here so the totals add up.
            if joined.is_err() {
                counters.fail("aborted: still in flight when the load stopped");
            }
        }
    }
    let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX - 1);
    counters.finished_after_micros.store(micros, Ordering::Release);
}

/// One request for [`request`], [`wait_until`] and [`first_success_after`].
#[derive(Clone, Debug)]
pub struct RequestSpec {
    /// Request method; default GET.
    pub method: Method,
    /// The `Host` header.
    pub host: String,
    /// Path and optional query, starting with `/`.
    pub path: String,
    /// Extra headers.
    pub headers: Vec<(String, String)>,
    /// Request body, if any.
    pub body: Option<Bytes>,
    /// Bound on connect + request + whole response, `1 ms..=300 s`; default 5 s.
    pub timeout: Duration,
}

impl RequestSpec {
    /// `GET path` with `Host: host`.
    pub fn get(host: impl Into<String>, path: impl Into<String>) -> Self {
        RequestSpec {
            method: Method::GET,
            host: host.into(),
            path: path.into(),
            headers: Vec::new(),
            body: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// `POST path` with `Host: host` and `body`.
    pub fn post(host: impl Into<String>, path: impl Into<String>, body: impl Into<Bytes>) -> Self {
        RequestSpec {
            method: Method::POST,
            body: Some(body.into()),
            ..Self::get(host, path)
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// A complete response from [`request`].
#[derive(Clone, Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Response headers.
    pub headers: HeaderMap,
    /// The whole body (at most [`MAX_RESPONSE_BODY`]).
    pub body: Bytes,
}

impl Response {
    /// A header's value, if present and visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `x-backend` header: which backend answered.
    pub fn backend(&self) -> Option<&str> {
        self.header(BACKEND_HEADER)
    }

    /// The body parsed as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends one request on a new connection (closed afterwards) and returns the whole response.
///
/// ```no_run
/// # async fn demo(nginx: std::net::SocketAddr) -> anyhow::Result<()> {
/// use gateway_operator::loadgen::{RequestSpec, request};
/// let response = request(nginx, &RequestSpec::get("shop.example", "/api")).await?;
/// assert_eq!(response.status, 200);
/// println!("answered by {:?}", response.backend());
/// # Ok(()) }
/// ```
pub async fn request(target: SocketAddr, spec: &RequestSpec) -> Result<Response, LoadError> {
    let prepared = Prepared::from_spec(spec)?;
    request_prepared(target, &prepared, spec.timeout).await
}

async fn request_prepared(
    target: SocketAddr,
    prepared: &Prepared,
    timeout: Duration,
) -> Result<Response, LoadError> {
    let mut sink = BodySink::Keep(Vec::new());
    let parts = tokio::time::timeout(timeout, exchange_once(target, prepared.request(), &mut sink))
        .await
        .map_err(|_| LoadError::Timeout {
            addr: target,
            timeout,
        })??;
    let body = match sink {
        BodySink::Keep(kept) => Bytes::from(kept),
        BodySink::Discard => Bytes::new(),
    };
    Ok(Response {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    })
}

/// Polls `spec` every `poll_interval` (each attempt on a new connection) until `matches`
/// accepts a response; returns how long that took from the call and the matching response.
///
/// `poll_interval` must be within `1 ms..=60 s` and `timeout` within `1 ms..=1 h`; each attempt
/// is bounded by `spec.timeout` and by the time left.
pub async fn wait_until(
    target: SocketAddr,
    spec: &RequestSpec,
    poll_interval: Duration,
    timeout: Duration,
    mut matches: impl FnMut(&Response) -> bool,
) -> Result<(Duration, Response), LoadError> {
    let started = Instant::now();
    if poll_interval < Duration::from_millis(1) || poll_interval > Duration::from_secs(60) {
        return Err(LoadError::InvalidConfig(format!(
            "poll interval {poll_interval:?} is outside 1ms..=60s"
        )));
    }
    if timeout < Duration::from_millis(1) || timeout > MAX_WAIT {
        return Err(LoadError::InvalidConfig(format!(
            "wait timeout {timeout:?} is outside 1ms..={MAX_WAIT:?}"
        )));
    }
    let prepared = Prepared::from_spec(spec)?;
    let mut ticker = tokio::time::interval(poll_interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut attempts: u64 = 0;
    let mut last = String::from("no attempt made");
    loop {
        ticker.tick().await;
        let left = timeout.saturating_sub(started.elapsed());
        if left.is_zero() {
            break;
        }
        attempts += 1;
        match request_prepared(target, &prepared, spec.timeout.min(left)).await {
            Ok(response) => {
                let at = started.elapsed();
                if matches(&response) {
                    return Ok((at, response));
                }
                last = format!(
                    "status {} from backend {}",
                    response.status,
                    response.backend().unwrap_or("(none)")
                );
            }
            Err(error) => last = error.to_string(),
        }
    }
    Err(LoadError::NoMatch {
        addr: target,
        timeout,
        attempts,
        last,
    })
}

/// How long until `GET path` with `Host: host` is answered with a 2xx — and, if
/// `expect_backend` is given, by that backend (`x-backend`). Polls every `poll_interval` on new
/// connections, for at most `timeout`; the duration is measured from the call, so call it right
/// after applying the change being timed.
///
/// ```no_run
/// # async fn demo(nginx: std::net::SocketAddr) -> anyhow::Result<()> {
/// use std::time::Duration;
/// use gateway_operator::loadgen::first_success_after;
/// // ... apply the GatewayRoute change that points shop.example at backend "b" ...
/// let took = first_success_after(
///     nginx, "shop.example", "/", &[], Some("b"),
///     Duration::from_millis(5), Duration::from_secs(30),
/// ).await?;
/// println!("route change served after {took:?}");
/// # Ok(()) }
/// ```
pub async fn first_success_after(
    target: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(String, String)],
    expect_backend: Option<&str>,
    poll_interval: Duration,
    timeout: Duration,
) -> Result<Duration, LoadError> {
    let spec = RequestSpec {
        headers: headers.to_vec(),
        ..RequestSpec::get(host, path)
    };
    let (took, _) = wait_until(target, &spec, poll_interval, timeout, |response| {
        (200..=299).contains(&response.status)
            && expect_backend.is_none_or(|name| response.backend() == Some(name))
    })
    .await?;
    Ok(took)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_round_trip() {
        for micros in [0, 1, 63, 64, 65, 100, 127, 128, 1_000, 12_345, 5_000_000, 1 << 40] {
            let index = Histogram::index(micros);
            assert!(index < HIST_BUCKETS, "{micros}");
            let upper = Histogram::upper(index);
            assert!(upper >= micros, "{micros} -> {upper}");
            assert!(
                (upper - micros) as f64 <= micros as f64 * 0.033 + 1.0,
                "{micros} -> {upper}"
            );
            if index > 0 {
                assert!(Histogram::upper(index - 1) < micros, "{micros}");
            }
        }
        assert_eq!(Histogram::index(u64::MAX), HIST_BUCKETS - 1);
    }

    #[test]
    fn histogram_quantiles() {
        let h = Histogram::new();
        for ms in 1..=100 {
            h.record(Duration::from_millis(ms));
        }
        let p50 = h.quantile(0.5).as_secs_f64() * 1000.0;
        let p99 = h.quantile(0.99).as_secs_f64() * 1000.0;
        assert!((50.0..=52.0).contains(&p50), "{p50}");
        assert!((99.0..=100.0).contains(&p99), "{p99}");
        assert_eq!(h.max(), Duration::from_millis(100));
    }

    #[test]
    fn config_ranges_are_checked() {
        let target = SocketAddr::from(([127, 0, 0, 1], 1));
        let ok = LoadConfig::new(target, "h", "/", 200);
        assert!(ok.validate().is_ok());
        for bad in [
            LoadConfig {
                rate_per_sec: 0,
                ..ok.clone()
            },
            LoadConfig {
                rate_per_sec: MAX_RATE + 1,
                ..ok.clone()
            },
            LoadConfig {
                timeout: Duration::ZERO,
                ..ok.clone()
            },
            LoadConfig {
                max_in_flight: 0,
                ..ok.clone()
            },
            LoadConfig {
                total: Some(0),
                ..ok.clone()
            },
            LoadConfig {
                path: "nope".into(),
                ..ok.clone()
            },
            LoadConfig {
                host: String::new(),
                ..ok.clone()
            },
            LoadConfig {
                headers: vec![("bad name".into(), "v".into())],
                ..ok.clone()
            },
        ] {
            assert!(
                matches!(bad.validate(), Err(LoadError::InvalidConfig(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn expect_variants() {
        assert!(Expect::default().matches(204));
        assert!(!Expect::default().matches(429));
        assert!(Expect::any_of([200, 429]).matches(429));
        assert!(Expect::predicate(|s| s == 401 || s == 403).matches(403));
    }
}
