//! Small real HTTP/1.1 backends on loopback that say who answered and what they were sent: the
//! upstreams behind nginx in the gateway operator's tests, demo and benchmark.
//!
//! Every answer carries `x-backend: <name>` and a JSON body describing the request (method, path,
//! host, headers), so a test can tell which upstream nginx chose and which headers it passed or
//! rewrote. Credentials are never echoed: `authorization`, `proxy-authorization`, `x-api-key` and
//! `api-key` appear as `"present"` next to a `<name>_sha256` digest, so a test can check that the
//! right upstream key was injected without the key ending up in a log.
//!
//! In OpenAI-compatible mode ([`Backend::start_openai`]) a backend also answers `GET …/models` and
//! `POST …/chat/completions` the way an inference server does, under any path prefix.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_TYPE, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

/// Largest request body a backend reads; a larger one is answered with 413.
pub const MAX_REQUEST_BODY: usize = 1 << 20;

/// Largest delay [`Backend::set_delay`] accepts.
pub const MAX_DELAY: Duration = Duration::from_secs(60);

/// Header naming the backend that answered, on every response.
pub const BACKEND_HEADER: &str = "x-backend";

/// Headers whose values are secrets: echoed as `"present"` plus a SHA-256 digest, never verbatim.
pub const SECRET_HEADERS: [&str; 4] = ["authorization", "proxy-authorization", "x-api-key", "api-key"];

/// Most connections served at once; further clients wait in the listen backlog (bounded memory).
const MAX_CONNECTIONS: usize = 4096;

/// How long [`Backend::shutdown`] lets in-flight requests finish before cutting them off; a
/// request held by [`Backend::set_delay`] may otherwise keep shutdown waiting for a minute.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// How long a client may take to send a request head (slowloris bound).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// After the body limit is hit, up to this many further bytes are read and discarded so the
/// client sees the 413 rather than a connection reset caused by unread data at close.
const DRAIN_LIMIT: usize = 16 << 20;

/// The longest backend name (it becomes a header value and a JSON field).
const MAX_NAME_LEN: usize = 253;

/// Bodies up to this size that are UTF-8 are echoed under `"body"`.
const ECHO_BODY_LIMIT: usize = 64 << 10;

/// Errors starting or configuring a [`Backend`].
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The name is empty, too long or not a valid header value.
    #[error("invalid backend name {0:?}: 1..={MAX_NAME_LEN} visible ASCII characters")]
    InvalidName(String),
    /// Binding the listening socket failed.
    #[error("backend {name}: cannot listen on {addr}: {source}")]
    Bind {
        /// The backend's name.
        name: String,
        /// The address asked for.
        addr: SocketAddr,
        /// Why binding failed.
        #[source]
        source: std::io::Error,
    },
    /// A setting outside its documented range.
    #[error("backend {name}: {setting} {value:?} is outside 0..={max:?}")]
    OutOfRange {
        /// The backend's name.
        name: String,
        /// Which setting.
        setting: &'static str,
        /// The rejected value.
        value: Duration,
        /// The largest accepted value.
        max: Duration,
    },
}

/// The state a backend's request handlers share.
#[derive(Debug)]
struct Shared {
    name: String,
    /// `Some(model ids)` in OpenAI-compatible mode.
    models: Option<Vec<String>>,
    delay_micros: AtomicU64,
    requests: AtomicU64,
}

/// A small HTTP/1.1 server on loopback that answers every request with `200`, an `x-backend`
/// header and a JSON description of the request.
///
/// It serves until [`shutdown`](Backend::shutdown) (graceful) or until dropped (immediate).
///
/// ```no_run
/// # async fn demo() -> anyhow::Result<()> {
/// use gateway_operator::backend::Backend;
/// let a = Backend::start("a").await?;
/// println!("upstream a at {}", a.url()); // http://127.0.0.1:PORT
/// // ... point nginx at a.addr(), send traffic ...
/// assert!(a.requests() > 0);
/// a.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Backend {
    addr: SocketAddr,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Backend {
    /// Starts a backend named `name` on `127.0.0.1` with a free port.
    pub async fn start(name: &str) -> Result<Backend, BackendError> {
        Self::start_on(name, SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await
    }

    /// Starts a backend named `name` on `addr` (port 0 picks a free port).
    pub async fn start_on(name: &str, addr: SocketAddr) -> Result<Backend, BackendError> {
        Self::spawn(name, addr, None).await
    }

    /// Starts an OpenAI-compatible backend on `127.0.0.1` that lists one model, named like the
    /// backend. See [`start_openai_with_models`](Backend::start_openai_with_models).
    pub async fn start_openai(name: &str) -> Result<Backend, BackendError> {
        Self::start_openai_with_models(name, &[name]).await
    }

    /// Starts an OpenAI-compatible backend on `127.0.0.1` whose `GET …/models` lists `models`.
    ///
    /// Besides the echo of every other request it answers, under any path prefix:
    /// * `GET …/models`: `{"object":"list","data":[{"id":…,"object":"model","owned_by":name}]}`;
    /// * `POST …/chat/completions` with a JSON body naming a `model`: a `chat.completion` whose
    ///   `model` echoes the request's and whose message says `backend <name> answered model <m>`
    ///   (a `text/event-stream` of `chat.completion.chunk`s ending in `[DONE]` when
    ///   `"stream": true`). It also carries `"backend"` and the redacted `"headers"`, so an
    ///   injected upstream key can be checked. A body without `model` gets 400.
    pub async fn start_openai_with_models(name: &str, models: &[&str]) -> Result<Backend, BackendError> {
        let models = models.iter().map(|m| (*m).to_owned()).collect();
        Self::spawn(name, SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), Some(models)).await
    }

    async fn spawn(
        name: &str,
        addr: SocketAddr,
        models: Option<Vec<String>>,
    ) -> Result<Backend, BackendError> {
        if name.is_empty() || name.len() > MAX_NAME_LEN || !name.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(BackendError::InvalidName(name.to_owned()));
        }
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| BackendError::Bind {
                name: name.to_owned(),
                addr,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| BackendError::Bind {
            name: name.to_owned(),
            addr,
            source,
        })?;
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            models,
            delay_micros: AtomicU64::new(0),
            requests: AtomicU64::new(0),
        });
        let cancel = CancellationToken::new();
        let task = tokio::spawn(serve(listener, Arc::clone(&shared), cancel.clone()));
        Ok(Backend {
            addr,
            shared,
            cancel,
            task: Some(task),
        })
    }

    /// The backend's name, as sent in `x-backend`.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How many requests it has answered (or is answering) so far, 413s included.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }

    /// Holds every later request for `delay` before answering (for timeout tests);
    /// `Duration::ZERO` turns it off. Accepts `0..=60 s`.
    pub fn set_delay(&self, delay: Duration) -> Result<(), BackendError> {
        if delay > MAX_DELAY {
            return Err(BackendError::OutOfRange {
                name: self.shared.name.clone(),
                setting: "delay",
                value: delay,
                max: MAX_DELAY,
            });
        }
        // At most 60 s, so the microseconds fit in u64 by far.
        let micros = u64::try_from(delay.as_micros()).unwrap_or(u64::MAX);
        self.shared.delay_micros.store(micros, Ordering::Relaxed);
        Ok(())
    }

    /// Stops accepting, lets in-flight requests finish (at most 10 s) and closes every
    /// connection. New connections are refused once this returns.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            // A join error means the serve task panicked or was aborted; either way it is gone.
            let _ = task.await;
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            // Aborting drops the task's JoinSet, which aborts every connection at once.
            task.abort();
        }
    }
}

/// Accepts connections until cancelled, then shuts them down gracefully within the grace period.
async fn serve(listener: TcpListener, shared: Arc<Shared>, cancel: CancellationToken) {
    let graceful = GracefulShutdown::new();
    let mut conns: JoinSet<()> = JoinSet::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    loop {
        tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept(), if conns.len() < MAX_CONNECTIONS => match accepted {
                Ok((stream, _peer)) => {
                    // Small request/response exchanges: do not let Nagle hold the last segment.
                    let _ = stream.set_nodelay(true);
                    let shared = Arc::clone(&shared);
                    let service = service_fn(move |req| {
                        let shared = Arc::clone(&shared);
                        async move { Ok::<_, Infallible>(handle(&shared, req).await) }
                    });
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    let conn = graceful.watch(conn);
                    conns.spawn(async move {
                        // A connection error (client reset, header timeout) ends only that connection.
                        let _ = conn.await;
                    });
                }
                Err(error) => {
                    // Typically EMFILE: back off briefly instead of spinning on accept.
                    tracing::warn!(backend = %shared.name, %error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        }
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(backend = %shared.name, "connections still busy after the grace period; closing them");
    }
    conns.shutdown().await;
}

/// A request body read within the limit, or the fact that it exceeded it.
enum ReadBody {
    Complete(Bytes),
    TooLarge,
    Failed,
}

/// Reads the body, keeping at most [`MAX_REQUEST_BODY`] bytes; past that keeps draining (without
/// storing) up to [`DRAIN_LIMIT`] so the 413 reaches the client.
async fn read_body(mut body: Incoming) -> ReadBody {
    let mut kept: Vec<u8> = Vec::new();
    let mut total: usize = 0;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return ReadBody::Failed;
        };
        if let Ok(data) = frame.into_data() {
            total = total.saturating_add(data.len());
            if total <= MAX_REQUEST_BODY {
                kept.extend_from_slice(&data);
            } else if total > MAX_REQUEST_BODY.saturating_add(DRAIN_LIMIT) {
                break;
            }
        }
    }
    if total > MAX_REQUEST_BODY {
        ReadBody::TooLarge
    } else {
        ReadBody::Complete(Bytes::from(kept))
    }
}

/// The lower-case hex SHA-256 of `value`: what a backend reports for a secret header, so a test
/// can compare it with the key it expects nginx to inject.
///
/// ```
/// assert_eq!(
///     gateway_operator::backend::sha256_hex(b"abc"),
///     "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
/// );
/// ```
pub fn sha256_hex(value: &[u8]) -> String {
    hex::encode(Sha256::digest(value))
}

/// The request headers as a JSON object, lower-case names, repeated headers joined by `, `,
/// secrets replaced by `"present"` plus `<name>_sha256`.
fn headers_json(headers: &HeaderMap) -> Map<String, Value> {
    let mut out = Map::new();
    for name in headers.keys() {
        let key = name.as_str();
        let values: Vec<&HeaderValue> = headers.get_all(name).iter().collect();
        if SECRET_HEADERS.contains(&key) {
            out.insert(key.to_owned(), Value::from("present"));
            // Only the first value is digested; a repeated credential header is itself odd
            // enough that a test would see it as "present" with the first digest.
            if let Some(first) = values.first() {
                out.insert(format!("{key}_sha256"), Value::from(sha256_hex(first.as_bytes())));
            }
            continue;
        }
        let joined = values
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect::<Vec<_>>()
            .join(", ");
        out.insert(key.to_owned(), Value::from(joined));
    }
    out
}

fn respond(
    shared: &Shared,
    status: StatusCode,
    content_type: &'static str,
    body: Vec<u8>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    // The name was checked to be visible ASCII at start, so it is a valid header value.
    if let Ok(value) = HeaderValue::from_str(&shared.name) {
        headers.insert(BACKEND_HEADER, value);
    }
    response
}

fn respond_json(shared: &Shared, status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    respond(shared, status, "application/json", body.to_string().into_bytes())
}

/// Answers one request.
async fn handle(shared: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    shared.requests.fetch_add(1, Ordering::Relaxed);
    let (parts, body) = req.into_parts();

    let declared = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let too_large_body = || {
        let mut response = respond_json(
            shared,
            StatusCode::PAYLOAD_TOO_LARGE,
            &json!({"backend": shared.name, "error": format!("request body larger than {MAX_REQUEST_BODY} bytes")}),
        );
        // The rest of the body may still be on the wire: do not reuse this connection.
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
        response
    };
    let body = match declared {
        // Declared far too large: do not even drain it.
        Some(len) if len > (MAX_REQUEST_BODY + DRAIN_LIMIT) as u64 => return too_large_body(),
        _ => match read_body(body).await {
            ReadBody::Complete(bytes) => bytes,
            ReadBody::TooLarge => return too_large_body(),
            ReadBody::Failed => {
                return respond_json(
                    shared,
                    StatusCode::BAD_REQUEST,
                    &json!({"backend": shared.name, "error": "request body could not be read"}),
                );
            }
        },
    };

    let delay = Duration::from_micros(shared.delay_micros.load(Ordering::Relaxed));
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }

    let path = parts.uri.path().to_owned();
    let headers = headers_json(&parts.headers);
    if let Some(models) = &shared.models {
        if parts.method == Method::GET && (path.ends_with("/models") || path == "/models") {
            let data: Vec<Value> = models
                .iter()
                .map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": shared.name}))
                .collect();
            return respond_json(shared, StatusCode::OK, &json!({"object": "list", "data": data}));
        }
        if parts.method == Method::POST && path.ends_with("/chat/completions") {
            return chat_completion(shared, &body, Value::Object(headers));
        }
    }

    let host = parts
        .headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| parts.uri.authority().map(|a| a.to_string()));
    let mut echo = json!({
        "backend": shared.name,
        "method": parts.method.as_str(),
        "path": path,
        "query": parts.uri.query(),
        "uri": parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"),
        "host": host,
        "headers": Value::Object(headers),
        "body_bytes": body.len(),
    });
    if body.len() <= ECHO_BODY_LIMIT
        && let Ok(text) = std::str::from_utf8(&body)
        && let Some(map) = echo.as_object_mut()
    {
        map.insert("body".to_owned(), Value::from(text));
    }
    respond_json(shared, StatusCode::OK, &echo)
}

/// A rough, deterministic token count: whitespace-separated words.
fn words(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

/// Answers `POST …/chat/completions` like an OpenAI-compatible server.
fn chat_completion(shared: &Shared, body: &[u8], headers: Value) -> Response<Full<Bytes>> {
    let request: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let Some(model) = request.get("model").and_then(Value::as_str) else {
        return respond_json(
            shared,
            StatusCode::BAD_REQUEST,
            &json!({"error": {
                "message": "the request body must be JSON with a string \"model\"",
                "type": "invalid_request_error",
                "param": "model",
                "code": null,
            }}),
        );
    };
    let prompt_tokens: u64 = request
        .get("messages")
        .and_then(Value::as_array)
        .map(|messages| {
            messages
                .iter()
                .filter_map(|m| m.get("content").and_then(Value::as_str))
                .map(words)
                .sum()
        })
        .unwrap_or(0);
    let content = format!("backend {} answered model {model}", shared.name);
    let completion_tokens = words(&content);
    let n = shared.requests.load(Ordering::Relaxed);
    let id = format!("chatcmpl-{}-{n}", shared.name);
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);

    if request.get("stream").and_then(Value::as_bool) == Some(true) {
        let chunk = |delta: Value, finish: Value| {
            json!({
                "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                "backend": shared.name,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            })
        };
        let events = [
            chunk(json!({"role": "assistant", "content": content}), Value::Null),
            chunk(json!({}), Value::from("stop")),
        ];
        let mut sse = String::new();
        for event in events {
            sse.push_str("data: ");
            sse.push_str(&event.to_string());
            sse.push_str("\n\n");
        }
        sse.push_str("data: [DONE]\n\n");
        return respond(shared, StatusCode::OK, "text/event-stream", sse.into_bytes());
    }

    let completion = json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content},
            "finish_reason": "stop",
        }],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
        "backend": shared.name,
        "headers": headers,
    });
    respond_json(shared, StatusCode::OK, &completion)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_digested_not_echoed() {
        let mut headers = HeaderMap::new();
        headers.insert("authorization", HeaderValue::from_static("Bearer sk-secret"));
        headers.insert("x-api-key", HeaderValue::from_static("k1"));
        headers.append("x-multi", HeaderValue::from_static("a"));
        headers.append("x-multi", HeaderValue::from_static("b"));
        let json = Value::Object(headers_json(&headers)).to_string();
        assert!(!json.contains("sk-secret"), "{json}");
        assert!(json.contains(&sha256_hex(b"Bearer sk-secret")), "{json}");
        assert!(json.contains(r#""x-api-key":"present""#), "{json}");
        assert!(json.contains(r#""x-multi":"a, b""#), "{json}");
    }

    #[test]
    fn token_words() {
        assert_eq!(words("  a b\tc "), 3);
    }
}
