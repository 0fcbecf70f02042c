//! HTTP webhook sink: POSTs each change as a CloudEvent (HTTP structured or binary mode), optionally
//! HMAC-signed, over HTTP or HTTPS (system roots plus an optional private CA).

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use futures::future::BoxFuture;
use hmac::{Hmac, KeyInit, Mac};
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, LOCATION, RETRY_AFTER};
use reqwest::{StatusCode, Url};
use serde::Deserialize;
use sha2::Sha256;

use crate::sink::{Delivery, Sink, SinkError};

/// Content type of a structured-mode CloudEvent.
const STRUCTURED_CONTENT_TYPE: &str = "application/cloudevents+json; charset=utf-8";
/// How much of an error response's body goes into the error message.
const EXCERPT_BYTES: usize = 256;
/// How much of a successful response's body is read so the connection can be reused; larger
/// bodies are dropped, which closes the connection instead.
const DRAIN_BYTES: usize = 64 * 1024;
/// Headers the sink sets itself; `headers` may not override them.
const RESERVED_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "transfer-encoding",
    "host",
    "connection",
    "idempotency-key",
    "traceparent",
    "tracestate",
];

/// The `webhook` section of a sink.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WebhookConfig {
    /// Where to POST, `http://` or `https://`.
    pub url: String,
    /// CloudEvents HTTP mode. Default `structured`.
    #[serde(default)]
    pub mode: WebhookMode,
    /// Extra request headers (for example `Authorization`); values are never logged.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Sign each body with HMAC-SHA256.
    #[serde(default)]
    pub signature: Option<SignatureConfig>,
    /// TLS settings for `https://` URLs.
    #[serde(default)]
    pub tls: WebhookTlsConfig,
    /// Limit for one whole request, connecting to reading the response. Default 10s.
    #[serde(
        default = "default_timeout",
        deserialize_with = "crate::config::bounds::timeout"
    )]
    pub timeout: Duration,
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

impl fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Header values often carry credentials (`Authorization`), and so may the URL's userinfo.
        f.debug_struct("WebhookConfig")
            .field("url", &redact_url(&self.url))
            .field("mode", &self.mode)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("signature", &self.signature)
            .field("tls", &self.tls)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// CloudEvents HTTP protocol binding mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookMode {
    /// The whole CloudEvent as the JSON body (`application/cloudevents+json`).
    #[default]
    Structured,
    /// Attributes as `ce-*` headers, `data` as the body.
    Binary,
}

/// `signature`: where the HMAC key comes from and which header carries the signature.
/// Only the key's location is configured here, so deriving `Debug` shows no secret.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SignatureConfig {
    /// Header carrying `sha256=<hex HMAC-SHA256 of the body>`. Default `X-Crwatch-Signature`.
    #[serde(default = "default_signature_header")]
    pub header: String,
    /// File holding the key (trailing whitespace and newlines are ignored); for mounted Secrets.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// Environment variable holding the key, used as is.
    #[serde(default)]
    pub secret_env: Option<String>,
}

fn default_signature_header() -> String {
    "X-Crwatch-Signature".to_string()
}

/// `tls`: trust settings for `https://` URLs.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WebhookTlsConfig {
    /// PEM file with CA certificates trusted in addition to the system roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Accept any server certificate. For testing only; excludes `caFile`.
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// Delivers changes to an HTTP endpoint. Cheap to share: one connection pool for all deliveries.
pub struct WebhookSink {
    client: reqwest::Client,
    url: Url,
    mode: WebhookMode,
    headers: HeaderMap,
    signer: Option<Signer>,
    timeout: Duration,
}

struct Signer {
    header: HeaderName,
    /// Keyed once; cloned per request.
    mac: Hmac<Sha256>,
}

impl fmt::Debug for WebhookSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookSink")
            .field("url", &redact_url(self.url.as_str()))
            .field("mode", &self.mode)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("signature_header", &self.signer.as_ref().map(|s| &s.header))
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl WebhookSink {
    /// Validate the configuration, read the signing key and CA file, and build the HTTP client.
    /// Errors name the offending setting, file or variable, never the key itself.
    pub fn new(config: &WebhookConfig) -> anyhow::Result<Self> {
        let url = Url::parse(&config.url).with_context(|| format!("url {:?}", redact_url(&config.url)))?;
        if !matches!(url.scheme(), "http" | "https") || !url.has_host() {
            bail!(
                "url {:?}: expected an http:// or https:// URL with a host",
                redact_url(&config.url)
            );
        }
        if config.timeout.is_zero() {
            bail!("timeout must be greater than zero");
        }
        let signer = config.signature.as_ref().map(Signer::new).transpose()?;
        let headers = extra_headers(&config.headers, signer.as_ref().map(|s| &s.header))?;
        let tls = client_tls(&config.tls, url.scheme() == "https")?;
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            // A redirect would resend the body (and signature) somewhere not configured; the 3xx
            // is reported instead, so the URL gets fixed.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(config.timeout)
            .user_agent(concat!("crwatch/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("building the HTTP client")?;
        Ok(Self {
            client,
            url,
            mode: config.mode,
            headers,
            signer,
            timeout: config.timeout,
        })
    }

    async fn send(&self, delivery: &Delivery) -> Result<(), SinkError> {
        let mut headers = self.headers.clone();
        let body = match self.mode {
            WebhookMode::Structured => {
                headers.insert(CONTENT_TYPE, HeaderValue::from_static(STRUCTURED_CONTENT_TYPE));
                serde_json::to_vec(&*delivery.event)
                    .map_err(|e| SinkError::Permanent(format!("encoding the event: {e}")))?
            }
            WebhookMode::Binary => binary_request(&delivery.event, &mut headers)?,
        };
        let key = HeaderValue::from_str(&delivery.id).map_err(|_| {
            SinkError::Permanent(format!("event id {:?} is not a valid header value", delivery.id))
        })?;
        headers.insert(HeaderName::from_static("idempotency-key"), key);
        // W3C Trace Context for this hop: the attempt's `deliver` span (the event's own
        // `traceparent` attribute names its creation and stays the same on every attempt).
        if let Some((parent, state)) = crwatch::trace::traceparent(&tracing::Span::current()) {
            for (name, value) in [("traceparent", Some(parent)), ("tracestate", state)] {
                if let Some(value) = value.and_then(|v| HeaderValue::from_str(&v).ok()) {
                    headers.insert(HeaderName::from_static(name), value);
                }
            }
        }
        if let Some(signer) = &self.signer {
            headers.insert(signer.header.clone(), signer.sign(&body)?);
        }
        let response = self
            .client
            .post(self.url.clone())
            .headers(headers)
            .body(body)
            .send()
            .await
            .map_err(|e| self.transport_error(e))?;
        classify(response).await
    }

    fn transport_error(&self, e: reqwest::Error) -> SinkError {
        if e.is_timeout() {
            return SinkError::Retryable(format!(
                "webhook did not answer within {}",
                humantime::format_duration(self.timeout)
            ));
        }
        let what = if e.is_connect() {
            "connecting to webhook"
        } else {
            "sending to webhook"
        };
        // The URL may hold credentials; the forwarder's logs say which sink this is.
        let mut msg = format!("{what}: {}", error_chain(&e.without_url()));
        if msg.contains("invalid peer certificate") {
            msg.push_str(" (trusted CAs: the system's, plus tls.caFile if set)");
        }
        SinkError::Retryable(msg)
    }
}

impl Sink for WebhookSink {
    fn deliver<'a>(&'a self, delivery: &'a Delivery) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(self.send(delivery))
    }
}

impl Signer {
    fn new(config: &SignatureConfig) -> anyhow::Result<Self> {
        let header = HeaderName::from_bytes(config.header.as_bytes())
            .with_context(|| format!("signature.header {:?} is not a valid header name", config.header))?;
        let key = match (&config.secret_file, &config.secret_env) {
            (Some(path), None) => {
                let raw = std::fs::read(path)
                    .with_context(|| format!("reading signature.secretFile {}", path.display()))?;
                // `echo secret > file` and editors add a newline the sender never means to sign with.
                let len = raw
                    .iter()
                    .rposition(|b| !b.is_ascii_whitespace())
                    .map_or(0, |i| i + 1);
                if len == 0 {
                    bail!("signature.secretFile {} is empty", path.display());
                }
                raw[..len].to_vec()
            }
            (None, Some(name)) => {
                // `var_os`, not `var`: the latter's error for non-UTF-8 values quotes the value.
                let value = std::env::var_os(name).with_context(|| {
                    format!("signature.secretEnv: environment variable {name} is not set")
                })?;
                if value.is_empty() {
                    bail!("signature.secretEnv: environment variable {name} is empty");
                }
                value.into_encoded_bytes()
            }
            _ => bail!("signature: set exactly one of secretFile and secretEnv"),
        };
        let mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&key)
            .map_err(|_| anyhow::anyhow!("signature: the key cannot be used for HMAC-SHA256"))?;
        Ok(Self { header, mac })
    }

    fn sign(&self, body: &[u8]) -> Result<HeaderValue, SinkError> {
        let mut mac = self.mac.clone();
        mac.update(body);
        HeaderValue::from_str(&format!("sha256={}", hex::encode(mac.finalize().into_bytes())))
            .map_err(|e| SinkError::Permanent(format!("building the signature header: {e}")))
    }
}

/// Validate `headers`: valid names and values, no duplicates (names are case-insensitive) and
/// nothing the sink sets itself.
fn extra_headers(
    config: &BTreeMap<String, String>,
    signature_header: Option<&HeaderName>,
) -> anyhow::Result<HeaderMap> {
    let mut headers = HeaderMap::new();
    for (name, value) in config {
        let header = HeaderName::from_bytes(name.as_bytes())
            .with_context(|| format!("headers: {name:?} is not a valid header name"))?;
        if RESERVED_HEADERS.contains(&header.as_str())
            || header.as_str().starts_with("ce-")
            || Some(&header) == signature_header
        {
            bail!("headers: {name} is set by the webhook sink and cannot be overridden");
        }
        if headers.contains_key(&header) {
            bail!("headers: {name} is given more than once");
        }
        // The value is not quoted: it may be a credential.
        let mut value = HeaderValue::from_str(value)
            .with_context(|| format!("headers: the value of {name} is not valid"))?;
        // Keeps values out of hyper's and reqwest's debug output.
        value.set_sensitive(true);
        headers.insert(header, value);
    }
    Ok(headers)
}

/// The TLS client configuration: ring, the system roots plus `caFile` (or no verification at all).
fn client_tls(config: &WebhookTlsConfig, https: bool) -> anyhow::Result<rustls::ClientConfig> {
    if config.insecure_skip_verify {
        // Same rule as kubectl: trusting a CA and skipping verification contradict each other.
        if config.ca_file.is_some() {
            bail!("tls: caFile and insecureSkipVerify cannot both be set");
        }
        tracing::warn!("webhook sink: TLS certificate verification is disabled (tls.insecureSkipVerify)");
    }
    crwatch::tls::client_config(config.ca_file.as_deref(), config.insecure_skip_verify, https).map_err(|e| {
        use crwatch::tls::TlsError;
        match e {
            TlsError::CaFile { path, reason } => {
                anyhow::anyhow!("reading tls.caFile {}: {reason}", path.display())
            }
            TlsError::EmptyCaFile(path) => {
                anyhow::anyhow!("tls.caFile {} holds no PEM certificates", path.display())
            }
            TlsError::NoRoots => anyhow::anyhow!(
                "tls: no trusted CA certificates: the system has none (see SSL_CERT_FILE, \
                 SSL_CERT_DIR) and tls.caFile is not set"
            ),
            other => anyhow::Error::new(other),
        }
    })
}

/// Binary mode: every attribute but the data becomes a `ce-` header; the body is `data` as JSON.
fn binary_request(event: &serde_json::Value, headers: &mut HeaderMap) -> Result<Vec<u8>, SinkError> {
    let attributes = event
        .as_object()
        .ok_or_else(|| SinkError::Permanent("the event is not a JSON object".to_string()))?;
    if attributes.contains_key("data_base64") {
        return Err(SinkError::Permanent(
            "binary mode does not support events with data_base64".to_string(),
        ));
    }
    for (name, value) in attributes {
        if matches!(name.as_str(), "data" | "datacontenttype") {
            continue;
        }
        let text = match value {
            serde_json::Value::String(s) => percent_encode(s),
            serde_json::Value::Null => continue,
            other => percent_encode(&other.to_string()),
        };
        let header = HeaderName::from_bytes(format!("ce-{name}").as_bytes())
            .map_err(|_| SinkError::Permanent(format!("attribute {name:?} cannot be an HTTP header")))?;
        let value = HeaderValue::from_str(&text)
            .map_err(|_| SinkError::Permanent(format!("attribute {name:?} cannot be an HTTP header")))?;
        headers.insert(header, value);
    }
    let Some(data) = attributes.get("data") else {
        return Ok(Vec::new());
    };
    let content_type = attributes
        .get("datacontenttype")
        .and_then(|v| v.as_str())
        .unwrap_or("application/json");
    let content_type = HeaderValue::from_str(content_type).map_err(|_| {
        SinkError::Permanent(format!("datacontenttype {content_type:?} is not a valid header"))
    })?;
    headers.insert(CONTENT_TYPE, content_type);
    serde_json::to_vec(data).map_err(|e| SinkError::Permanent(format!("encoding the event data: {e}")))
}

/// CloudEvents HTTP binding 3.1.3.2: space, `"`, `%` and anything outside printable ASCII are
/// percent-encoded (as UTF-8 bytes).
fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if (0x21..=0x7e).contains(&b) && b != b'"' && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// 2xx acknowledges; 408, 429 and 5xx are worth retrying; anything else will not change.
async fn classify(mut response: reqwest::Response) -> Result<(), SinkError> {
    let status = response.status();
    if status.is_success() {
        // Consuming a small body lets the connection go back to the pool.
        read_prefix(&mut response, DRAIN_BYTES).await;
        return Ok(());
    }
    let header = |name| {
        response
            .headers()
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .map(str::to_owned)
    };
    let mut msg = format!("webhook answered {status}");
    if status.is_redirection() {
        let to = header(LOCATION).unwrap_or_else(|| "elsewhere".to_string());
        msg.push_str(&format!(
            " (redirect to {to} not followed: set url to the final address)"
        ));
    }
    if let Some(after) = header(RETRY_AFTER) {
        msg.push_str(&format!(" (Retry-After: {after})"));
    }
    let excerpt = excerpt(&read_prefix(&mut response, EXCERPT_BYTES).await);
    if !excerpt.is_empty() {
        // Kept for dead-letter records; logs show only what precedes this marker.
        msg.push_str(crate::sink::DETAIL_MARKER);
        msg.push_str(&excerpt);
    }
    let retryable = matches!(
        status,
        StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_MANY_REQUESTS
    ) || status.is_server_error();
    Err(if retryable {
        SinkError::Retryable(msg)
    } else {
        SinkError::Permanent(msg)
    })
}

/// Up to `limit` bytes of the body; a read error just ends it (the status already decided).
async fn read_prefix(response: &mut reqwest::Response, limit: usize) -> Vec<u8> {
    let mut body = Vec::new();
    while body.len() < limit {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk[..chunk.len().min(limit - body.len())]),
            _ => break,
        }
    }
    body
}

/// A one-line, bounded rendering of a response body for error messages.
fn excerpt(body: &[u8]) -> String {
    const MAX_CHARS: usize = 200;
    let text = String::from_utf8_lossy(body);
    let mut out = String::new();
    for (i, word) in text.split_whitespace().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(word);
    }
    if out.chars().count() > MAX_CHARS || body.len() >= EXCERPT_BYTES {
        out = out.chars().take(MAX_CHARS).collect();
        out.push('…');
    }
    out
}

/// An error and its sources, without the repetitions hyper and reqwest tend to produce.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        source = s.source();
    }
    msg
}

/// The URL with any password replaced, for messages.
fn redact_url(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(_) => url.to_string(),
        // Unparseable text may still hold userinfo; keep only the part that cannot.
        Err(_) => match url.split_once('@') {
            Some((_, rest)) => format!("***@{rest}"),
            None => url.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::SocketAddr;

    use axum::Router;
    use axum::extract::{Path, State};
    use axum::routing::post;
    use bytes::Bytes;
    use serde_json::json;
    use tokio::sync::mpsc;

    use crate::sink::TemplateVars;

    struct Received {
        headers: HeaderMap,
        body: Bytes,
    }

    /// An HTTP receiver: `/hook` records and answers 202, `/status/{code}` answers `code`,
    /// `/slow` never answers.
    async fn receiver() -> (String, mpsc::UnboundedReceiver<Received>) {
        async fn record(
            State(tx): State<mpsc::UnboundedSender<Received>>,
            headers: HeaderMap,
            body: Bytes,
        ) -> StatusCode {
            let _ = tx.send(Received { headers, body });
            StatusCode::ACCEPTED
        }
        async fn status(
            Path(code): Path<u16>,
        ) -> (StatusCode, [(HeaderName, &'static str); 2], &'static str) {
            (
                StatusCode::from_u16(code).unwrap(),
                [(LOCATION, "/elsewhere"), (RETRY_AFTER, "7")],
                "boom:\n  the   database is down",
            )
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let app = Router::new()
            .route("/hook", post(record))
            .route("/status/{code}", post(status))
            .route("/slow", post(std::future::pending::<StatusCode>))
            .with_state(tx);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}"), rx)
    }

    fn delivery() -> Delivery {
        let event = json!({
            "specversion": "1.0",
            "id": "0f6a-uid:42",
            "source": "https://kube.example/apis/stable.example.com/v1/databases",
            "type": "io.crwatch.resource.modified",
            "subject": "default/db one",
            "time": "2025-01-02T03:04:05Z",
            "datacontenttype": "application/json",
            "data": {"object": {"metadata": {"name": "db"}}, "diff": [{"op": "add", "path": "/x", "value": "ü"}]},
        });
        Delivery {
            id: "0f6a-uid:42".into(),
            event: Arc::new(event),
            vars: Arc::new(TemplateVars::default()),
        }
    }

    fn config(yaml: &str) -> WebhookConfig {
        serde_saphyr::from_str(yaml).unwrap()
    }

    fn webhook(yaml: &str) -> WebhookSink {
        WebhookSink::new(&config(yaml)).unwrap()
    }

    fn hmac_hex(key: &[u8], body: &[u8]) -> String {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap();
        mac.update(body);
        hex::encode(mac.finalize().into_bytes())
    }

    fn header<'a>(r: &'a Received, name: &str) -> &'a str {
        r.headers
            .get(name)
            .unwrap_or_else(|| panic!("missing {name}"))
            .to_str()
            .unwrap()
    }

    #[test]
    fn config_defaults_and_debug_hide_secrets() {
        let c = config("url: https://user:pw@example.com/x\nheaders:\n  Authorization: Bearer s3cret\n");
        assert_eq!(c.mode, WebhookMode::Structured);
        assert_eq!(c.timeout, Duration::from_secs(10));
        assert!(c.signature.is_none() && c.tls.ca_file.is_none() && !c.tls.insecure_skip_verify);
        let debug = format!("{c:?}");
        assert!(!debug.contains("s3cret") && !debug.contains("pw@"), "{debug}");
        assert!(debug.contains("Authorization"), "{debug}");

        let c = config("url: http://x\nmode: binary\ntimeout: 250ms\nsignature:\n  secretEnv: K\n");
        assert_eq!(c.mode, WebhookMode::Binary);
        assert_eq!(c.timeout, Duration::from_millis(250));
        assert_eq!(c.signature.unwrap().header, "X-Crwatch-Signature");
        assert!(serde_saphyr::from_str::<WebhookConfig>("url: http://x\nurll: y\n").is_err());
    }

    #[test]
    fn construction_rejects_bad_settings() {
        let err = |yaml: &str| format!("{:#}", WebhookSink::new(&config(yaml)).unwrap_err());
        assert!(err("url: ftp://x/").contains("http:// or https://"));
        // A zero timeout is refused while parsing, at the value.
        let zero = serde_saphyr::from_str::<WebhookConfig>("url: http://x\ntimeout: 0s\n")
            .err()
            .unwrap();
        assert!(
            zero.to_string()
                .contains("timeout: must be between 10ms and 1h, not 0s"),
            "{zero}"
        );
        assert!(err("url: http://x\nheaders:\n  'bad name': v\n").contains("not a valid header name"));
        let e = err("url: http://x\nheaders:\n  X-Token: \"s3cret\\n\"\n");
        assert!(e.contains("X-Token") && !e.contains("s3cret"), "{e}");
        assert!(
            err("url: http://x\nheaders:\n  Content-Type: text/plain\n").contains("cannot be overridden")
        );
        assert!(err("url: http://x\nheaders:\n  ce-id: x\n").contains("cannot be overridden"));
        assert!(err("url: http://x\nheaders:\n  A: x\n  a: y\n").contains("more than once"));
        assert!(err("url: http://x\nsignature: {}\n").contains("exactly one"));
        assert!(
            err("url: http://x\nsignature:\n  secretEnv: CRWATCH_TEST_SURELY_UNSET_VAR\n")
                .contains("CRWATCH_TEST_SURELY_UNSET_VAR is not set")
        );
        assert!(
            err("url: http://x\nsignature:\n  secretFile: /nonexistent/key\n").contains("/nonexistent/key")
        );
        assert!(err("url: https://x\ntls:\n  caFile: /nonexistent/ca.pem\n").contains("/nonexistent/ca.pem"));
        assert!(
            err("url: https://x\ntls:\n  caFile: /nonexistent/ca.pem\n  insecureSkipVerify: true\n")
                .contains("cannot both be set")
        );
    }

    #[tokio::test]
    async fn structured_mode_signed_with_custom_headers() {
        let (base, mut rx) = receiver().await;
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("key");
        std::fs::write(&key_file, "topsecret\n").unwrap();
        let sink = webhook(&format!(
            "url: {base}/hook\nheaders:\n  X-Tenant: blue\nsignature:\n  secretFile: {}\n",
            key_file.display()
        ));
        assert!(!format!("{sink:?}").contains("topsecret"));
        let d = delivery();
        sink.deliver(&d).await.unwrap();

        let r = rx.recv().await.unwrap();
        assert_eq!(r.body, serde_json::to_vec(&*d.event).unwrap());
        assert_eq!(header(&r, "content-type"), STRUCTURED_CONTENT_TYPE);
        assert_eq!(header(&r, "idempotency-key"), "0f6a-uid:42");
        assert_eq!(header(&r, "x-tenant"), "blue");
        // The trailing newline of the key file is not part of the key.
        assert_eq!(
            header(&r, "x-crwatch-signature"),
            format!("sha256={}", hmac_hex(b"topsecret", &r.body))
        );
        assert!(r.headers.get("ce-id").is_none());
    }

    #[tokio::test]
    async fn binary_mode_maps_attributes_to_headers() {
        let (base, mut rx) = receiver().await;
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("key");
        std::fs::write(&key_file, "k").unwrap();
        let sink = webhook(&format!(
            "url: {base}/hook\nmode: binary\nsignature:\n  header: X-Sig\n  secretFile: {}\n",
            key_file.display()
        ));
        let d = delivery();
        sink.deliver(&d).await.unwrap();

        let r = rx.recv().await.unwrap();
        let data: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(data, d.event["data"]);
        assert_eq!(header(&r, "content-type"), "application/json");
        assert_eq!(header(&r, "ce-specversion"), "1.0");
        assert_eq!(header(&r, "ce-id"), "0f6a-uid:42");
        assert_eq!(
            header(&r, "ce-source"),
            "https://kube.example/apis/stable.example.com/v1/databases"
        );
        assert_eq!(header(&r, "ce-type"), "io.crwatch.resource.modified");
        assert_eq!(header(&r, "ce-subject"), "default/db%20one");
        assert_eq!(header(&r, "ce-time"), "2025-01-02T03:04:05Z");
        assert!(r.headers.get("ce-datacontenttype").is_none() && r.headers.get("ce-data").is_none());
        assert_eq!(header(&r, "idempotency-key"), "0f6a-uid:42");
        assert_eq!(header(&r, "x-sig"), format!("sha256={}", hmac_hex(b"k", &r.body)));
    }

    #[tokio::test]
    async fn statuses_are_classified() {
        let (base, mut rx) = receiver().await;
        for (code, retryable) in [
            (500, true),
            (503, true),
            (429, true),
            (408, true),
            (400, false),
            (404, false),
            (302, false),
        ] {
            let sink = webhook(&format!("url: {base}/status/{code}\n"));
            let err = sink.deliver(&delivery()).await.unwrap_err();
            let msg = err.to_string();
            assert_eq!(matches!(err, SinkError::Retryable(_)), retryable, "{code}: {msg}");
            assert!(msg.contains(&code.to_string()), "{msg}");
            assert!(msg.contains("boom: the database is down"), "{msg}");
            if code == 302 {
                assert!(
                    msg.contains("/elsewhere") && msg.contains("not followed"),
                    "{msg}"
                );
            }
            if code == 429 {
                assert!(msg.contains("Retry-After: 7"), "{msg}");
            }
        }
        // Nothing reached /hook, so the redirect was not followed.
        assert!(rx.try_recv().is_err());
    }

    #[tokio::test]
    async fn timeouts_and_refused_connections_are_retryable() {
        let (base, _rx) = receiver().await;
        let sink = webhook(&format!("url: {base}/slow\ntimeout: 200ms\n"));
        match sink.deliver(&delivery()).await {
            Err(SinkError::Retryable(msg)) => assert!(msg.contains("within 200ms"), "{msg}"),
            other => panic!("expected a retryable timeout, got {other:?}"),
        }

        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let sink = webhook(&format!("url: http://{addr}/\n"));
        match sink.deliver(&delivery()).await {
            Err(SinkError::Retryable(msg)) => assert!(msg.contains("connecting"), "{msg}"),
            other => panic!("expected a retryable connect error, got {other:?}"),
        }
    }

    /// A minimal HTTPS/1.1 server on blocking rustls streams (the crate has no async TLS server
    /// dependency): answers every request 200 and reports each request's first line.
    async fn https_server(
        certs: &crwatch_apiserver::tls::Certs,
    ) -> (SocketAddr, mpsc::UnboundedReceiver<String>) {
        let mut config = (*certs.server_config().unwrap()).clone();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let config = Arc::new(config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (config, tx) = (config.clone(), tx.clone());
                let tcp = tcp.into_std().unwrap();
                tcp.set_nonblocking(false).unwrap();
                tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                    let conn = rustls::ServerConnection::new(config).map_err(std::io::Error::other)?;
                    let mut reader = BufReader::new(rustls::StreamOwned::new(conn, tcp));
                    let mut request_line = String::new();
                    reader.read_line(&mut request_line)?;
                    let mut length = 0;
                    loop {
                        let mut line = String::new();
                        reader.read_line(&mut line)?;
                        if line.trim().is_empty() {
                            break;
                        }
                        if let Some((name, value)) = line.split_once(':')
                            && name.eq_ignore_ascii_case("content-length")
                        {
                            length = value.trim().parse().unwrap_or(0);
                        }
                    }
                    reader.read_exact(&mut vec![0; length])?;
                    let _ = tx.send(request_line.trim().to_string());
                    let stream = reader.get_mut();
                    stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")?;
                    stream.conn.send_close_notify();
                    stream.flush()
                });
            }
        });
        (addr, rx)
    }

    #[tokio::test]
    async fn https_with_private_ca() {
        let certs = crwatch_apiserver::tls::Certs::generate(&[]).unwrap();
        let (addr, mut requests) = https_server(&certs).await;
        let dir = tempfile::tempdir().unwrap();
        let trusted = dir.path().join("ca.pem");
        std::fs::write(&trusted, &certs.ca_pem).unwrap();
        let url = format!("https://{addr}/in");

        let sink = webhook(&format!("url: {url}\ntls:\n  caFile: {}\n", trusted.display()));
        sink.deliver(&delivery()).await.unwrap();
        assert_eq!(requests.recv().await.unwrap(), "POST /in HTTP/1.1");

        // A CA that did not sign the server's certificate.
        let other = dir.path().join("other.pem");
        let other_ca = rcgen::generate_simple_self_signed(vec!["other-ca".to_string()]).unwrap();
        std::fs::write(&other, other_ca.cert.pem()).unwrap();
        let sink = webhook(&format!("url: {url}\ntls:\n  caFile: {}\n", other.display()));
        match sink.deliver(&delivery()).await {
            Err(SinkError::Retryable(msg)) => {
                assert!(msg.contains("invalid peer certificate: UnknownIssuer"), "{msg}");
                assert!(msg.contains("tls.caFile"), "{msg}");
            }
            other => panic!("expected a retryable certificate error, got {other:?}"),
        }

        let sink = webhook(&format!("url: {url}\ntls:\n  insecureSkipVerify: true\n"));
        sink.deliver(&delivery()).await.unwrap();
        assert_eq!(requests.recv().await.unwrap(), "POST /in HTTP/1.1");
    }

    #[test]
    fn helpers() {
        assert_eq!(percent_encode("a b\"%ü/:"), "a%20b%22%25%C3%BC/:");
        assert_eq!(excerpt(b"  a\n\tb  "), "a b");
        assert!(excerpt(&[b'x'; EXCERPT_BYTES]).ends_with('…'));
        assert_eq!(redact_url("https://u:p@h/x"), "https://u:***@h/x");
        assert_eq!(redact_url("https://h/x"), "https://h/x");
    }
}
