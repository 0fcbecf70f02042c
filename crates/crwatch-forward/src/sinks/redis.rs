//! The Redis Streams sink: appends each change as one entry to a stream (`XADD`) whose key is
//! rendered from a template, trimmed to a bounded length, and counts it delivered only once
//! Redis replied with the new entry's id.
//!
//! # Entries
//!
//! One change is one entry with these fields, in this order: `id` (the CloudEvent id
//! `<uid>:<resourceVersion>`, `:deleted` appended for deletions: the same on every retry and
//! after a restart), `specversion`, `type`, `source`, `subject`, `time`, `datacontenttype`,
//! any extension attributes the event carries (such as `traceparent`), and `data`: the
//! CloudEvent's `data` as compact JSON text. Together the fields are the CloudEvent in Redis'
//! own structure, so consumers can filter on `type` or `subject` without parsing JSON, and the
//! whole event is rebuilt by parsing `data` and taking the other fields as attributes.
//!
//! # Duplicates
//!
//! `XADD` with a server-generated entry id (`*`) is not idempotent: a retry after a reply that
//! was lost on the way (connection dropped, timeout) appends the change again. Two layers:
//!
//! - every entry carries the `id` field, so a consumer can always detect a repeat;
//! - with `dedupWindow` (default 10 minutes), the write is one Lua script run atomically by the
//!   server (`EVAL`, needs no client-side script support): if the key `<stream>:dedup:<id>`
//!   exists, the entry was written already and its entry id is returned; otherwise `XADD` and
//!   `SET <stream>:dedup:<id> <entry id> EX <window>`. A retry within the window therefore adds
//!   nothing. The keys expire by themselves: their number is bounded by the change rate times
//!   the window (about 220 bytes each on Redis 7: 100000 keys took 21 MB, so 100 changes/s
//!   with the default window hold about 13 MB). `dedupWindow: 0s` writes with a plain `XADD`
//!   (for ACL users allowed only `XADD`; duplicates stay detectable by `id`). The dedup key
//!   shares the stream's key prefix, so one ACL key pattern such as `~crwatch:*` covers both.
//!   The script costs the server about twice a plain `XADD` (redis-benchmark, one client:
//!   72000 against 135000 writes/s), far below what one forwarder sends.
//!
//! # Bound
//!
//! Every `XADD` trims the stream to `maxLen` entries (default 100000), oldest first: consumers
//! that fall further behind than that lose the oldest entries. Trimming is approximate (`~`)
//! by default, which Redis does in whole internal nodes (100 entries by default), so a stream
//! may hold slightly more than `maxLen`; `maxLenExact: true` trims to exactly `maxLen` at a
//! higher cost per write.
//!
//! # Failures
//!
//! The connection is made lazily and remade after any connection error: a server that is
//! down when `crwatch forward` starts, or that goes away later, makes attempts fail with
//! [`SinkError::Retryable`], and the forwarder retries them (in order per object) until the
//! server is back. A key of another type (`WRONGTYPE`) and an ACL refusal (`NOPERM`) are
//! [`SinkError::Permanent`]: retrying cannot help that change, which goes to the dead-letter
//! file. Wrong credentials fail `connect` (a configuration error) when the server is reachable
//! at start; later (a password rotated on the server) they fail attempts as retryable with a
//! message saying so. Passwords never appear in logs, errors or `Debug` output.
//!
//! Redis acknowledges a write once it has applied it in memory; whether the entry survives a
//! crash of Redis itself is its persistence setting (`appendonly yes` with `appendfsync
//! always` loses nothing acknowledged; the default `everysec` may lose the last second).
//!
//! The sink talks to one Redis server (a primary); Redis Cluster is not supported (the stream
//! and its dedup keys would live in different slots).

#![cfg(feature = "redis")]

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use futures::future::BoxFuture;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, ErrorKind, IntoConnectionInfo, RedisError, Value};
use serde::{Deserialize, Deserializer};
use tokio::sync::Mutex;

use crate::secret::redact_url;
use crate::sink::{Delivery, Sink, SinkError, Template};

/// The default stream key template: one stream per resource type.
pub const DEFAULT_STREAM: &str = "crwatch:{group}:{resource}";

/// The default `maxLen`.
pub const DEFAULT_MAX_LEN: u64 = 100_000;

/// `maxLen`: at least one entry, at most a billion (entries hold whole objects).
pub const MAX_LEN: (u64, u64) = (1, 1_000_000_000);

/// `dedupWindow`: 0 (off) to a day.
pub const DEDUP_WINDOW: (Duration, Duration) = (Duration::ZERO, Duration::from_secs(86_400));

/// The CloudEvent attributes written first, in this order; `data` comes last.
const ATTRIBUTES: &[&str] = &[
    "specversion",
    "type",
    "source",
    "subject",
    "time",
    "datacontenttype",
];

/// KEYS[1] the stream, KEYS[2] the dedup key; ARGV[1] `~` or `=`, ARGV[2] maxLen, ARGV[3] the
/// window in seconds, ARGV[4..] field/value pairs. Returns `{entry id, 1 if a duplicate}`.
/// Scripts run atomically, so no other client sees the entry without its dedup key.
const DEDUP_XADD: &str = r#"
local seen = redis.call('GET', KEYS[2])
if seen then return {seen, 1} end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[1], ARGV[2], '*', unpack(ARGV, 4))
redis.call('SET', KEYS[2], id, 'EX', ARGV[3])
return {id, 0}
"#;

/// The `redis` section of a sink.
///
/// ```yaml
/// redis:
///   url: redis://redis.example:6379/0   # rediss:// for TLS
///   stream: "crwatch:{group}:{resource}"
///   maxLen: 100000                      # oldest entries trimmed beyond this
///   maxLenExact: false                  # default: approximate (~) trimming
///   dedupWindow: 10m                    # 0s: plain XADD
///   username: crwatch                   # ACL user; default: the default user
///   passwordFile: /var/run/secrets/redis/password   # or passwordEnv / password
///   tls:                                # rediss:// only
///     caFile: /etc/crwatch/redis-ca.pem
///     certFile: /etc/crwatch/client.pem # client certificate, with keyFile
///     keyFile: /etc/crwatch/client-key.pem
///   timeout: 10s
/// ```
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RedisConfig {
    /// `redis://[user[:password]@]host[:port][/db]`, or `rediss://…` for TLS. A password in the
    /// URL works but is better kept in `passwordFile` or `passwordEnv`.
    pub url: String,
    /// Stream key template; variables are used as they are. Default
    /// `crwatch:{group}:{resource}` (one stream per resource type).
    #[serde(default = "default_stream")]
    pub stream: String,
    /// Trim each stream to this many entries on every write, oldest first (1 to a billion).
    /// Default 100000.
    #[serde(default = "default_max_len", deserialize_with = "max_len")]
    pub max_len: u64,
    /// Trim to exactly `maxLen` (`MAXLEN =`) instead of approximately (`MAXLEN ~`, cheaper; the
    /// stream may hold up to about 100 entries more). Default false.
    #[serde(default)]
    pub max_len_exact: bool,
    /// How long a written change's id is remembered so that a retry does not append it again
    /// (0s to 24h; 0s turns this off and writes with a plain `XADD`). Default 10m.
    #[serde(default = "default_dedup_window", deserialize_with = "dedup_window")]
    pub dedup_window: Duration,
    /// ACL user name (default: the URL's, else `default`).
    #[serde(default)]
    pub username: Option<String>,
    /// The password itself (prefer `passwordFile` or `passwordEnv`).
    #[serde(default)]
    pub password: Option<String>,
    /// File holding the password (trailing newlines are ignored).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// TLS settings for `rediss://` URLs.
    #[serde(default)]
    pub tls: RedisTlsConfig,
    /// Limit for connecting and for Redis' reply to one write. Default 10s.
    #[serde(
        default = "default_timeout",
        deserialize_with = "crate::config::bounds::timeout"
    )]
    pub timeout: Duration,
}

/// `tls`: trust and client certificate for `rediss://` URLs.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RedisTlsConfig {
    /// PEM file of the CA certificates to trust instead of the system's.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (chain), for servers with `tls-auth-clients`; needs `keyFile`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `certFile`.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Skip certificate verification. Not supported by this build's Redis client (it lacks the
    /// `tls-rustls-insecure` feature): rejected with advice to use `caFile`.
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

fn default_stream() -> String {
    DEFAULT_STREAM.to_string()
}

fn default_max_len() -> u64 {
    DEFAULT_MAX_LEN
}

fn default_dedup_window() -> Duration {
    Duration::from_secs(600)
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

/// `maxLen`, checked at the value like [`crate::config::bounds`].
fn max_len<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let v = u64::deserialize(d)?;
    if v < MAX_LEN.0 || v > MAX_LEN.1 {
        return Err(serde::de::Error::custom(format!(
            "maxLen: must be between {} and {}, not {v}",
            MAX_LEN.0, MAX_LEN.1
        )));
    }
    Ok(v)
}

/// `dedupWindow`, checked at the value like [`crate::config::bounds`].
fn dedup_window<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let v = crate::config::bounds::duration(d, "dedupWindow", DEDUP_WINDOW)?;
    if v.subsec_nanos() != 0 {
        return Err(serde::de::Error::custom(format!(
            "dedupWindow: whole seconds only (Redis expires keys in seconds), not {}",
            humantime::format_duration(v)
        )));
    }
    Ok(v)
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redact_url(&self.url))
            .field("stream", &self.stream)
            .field("max_len", &self.max_len)
            .field("max_len_exact", &self.max_len_exact)
            .field("dedup_window", &self.dedup_window)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("password_file", &self.password_file)
            .field("password_env", &self.password_env)
            .field("tls", &self.tls)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl RedisConfig {
    /// Check what can be checked without connecting or reading files: the URL's scheme, the
    /// stream template, one password source at most, and TLS settings that fit the URL.
    pub fn validate(&self) -> Result<(), String> {
        let tls_url = if self.url.starts_with("rediss://") {
            true
        } else if self.url.starts_with("redis://") {
            false
        } else {
            return Err(format!(
                "redis.url: {:?} is not a redis:// or rediss:// URL",
                redact_url(&self.url)
            ));
        };
        Template::parse(&self.stream).map_err(|e| format!("redis.stream: {e}"))?;
        let sources = self.password.is_some() as u8
            + self.password_file.is_some() as u8
            + self.password_env.is_some() as u8;
        if sources > 1 {
            return Err("redis: set one of password, passwordFile, passwordEnv at most".into());
        }
        let tls = &self.tls;
        let tls_set = tls.ca_file.is_some()
            || tls.cert_file.is_some()
            || tls.key_file.is_some()
            || tls.insecure_skip_verify;
        if tls_set && !tls_url {
            return Err("redis.tls: applies to rediss:// URLs only (this one is redis://)".into());
        }
        if tls.cert_file.is_some() != tls.key_file.is_some() {
            return Err("redis.tls: certFile and keyFile go together".into());
        }
        if tls.insecure_skip_verify {
            return Err(
                "redis.tls.insecureSkipVerify: not supported by this build's Redis client; \
                 trust the server's CA with tls.caFile instead"
                    .into(),
            );
        }
        Ok(())
    }

    /// The password from `password`, `passwordFile` or `passwordEnv`, read now.
    fn read_password(&self) -> anyhow::Result<Option<String>> {
        crate::secret::read(
            self.password.as_deref(),
            self.password_file.as_deref(),
            self.password_env.as_deref(),
            "redis.password",
        )
    }

    /// The client for this configuration, secrets and certificates read now.
    fn client(&self) -> anyhow::Result<(Client, Option<String>)> {
        let target = redact_url(&self.url);
        let mut info = self
            .url
            .as_str()
            .into_connection_info()
            .map_err(|e| anyhow::anyhow!("redis.url {target}: {}", e.kind_text()))?;
        let mut settings = info.redis_settings().clone();
        if let Some(user) = &self.username {
            settings = settings.set_username(user);
        }
        let password = match self.read_password()? {
            Some(p) => {
                if settings.password().is_some() {
                    bail!(
                        "redis: the URL has a password and {} is set too: use one",
                        self.password_source()
                    );
                }
                settings = settings.set_password(&p);
                Some(p)
            }
            None => settings.password().map(str::to_string),
        };
        if password.is_none() && settings.username().is_some() {
            // The client sends AUTH only with a password: the user name alone would be ignored.
            bail!("redis: a username needs a password (password, passwordFile, passwordEnv or in the URL)");
        }
        info = info.set_redis_settings(settings);
        let read = |path: &PathBuf, what: &str| {
            std::fs::read(path).with_context(|| format!("reading redis.tls.{what} {}", path.display()))
        };
        let client = if self.url.starts_with("rediss://") {
            let client_tls = match (&self.tls.cert_file, &self.tls.key_file) {
                (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
                    client_cert: read(cert, "certFile")?,
                    client_key: read(key, "keyFile")?,
                }),
                _ => None,
            };
            let root_cert = match &self.tls.ca_file {
                Some(path) => {
                    let pem = read(path, "caFile")?;
                    // Checked here: the client would only say "no trust anchors" on every attempt.
                    if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
                        bail!("redis.tls.caFile {} holds no PEM certificates", path.display());
                    }
                    Some(pem)
                }
                None => None,
            };
            Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls,
                    root_cert,
                },
            )
            .map_err(|e| anyhow::anyhow!("redis.tls: {}", scrub(&e.to_string(), password.as_deref())))?
        } else {
            Client::open(info).map_err(|e| anyhow::anyhow!("redis.url {target}: {}", e.kind_text()))?
        };
        Ok((client, password))
    }

    fn password_source(&self) -> &'static str {
        if self.password_file.is_some() {
            "passwordFile"
        } else if self.password_env.is_some() {
            "passwordEnv"
        } else {
            "password"
        }
    }
}

/// A short text for errors about the URL that cannot echo it (and so its password).
trait KindText {
    fn kind_text(&self) -> String;
}

impl KindText for RedisError {
    fn kind_text(&self) -> String {
        format!("{} ({:?})", self.category(), self.kind())
    }
}

/// `text` with every occurrence of `secret` replaced by `***`.
fn scrub(text: &str, secret: Option<&str>) -> String {
    match secret {
        Some(s) if !s.is_empty() => text.replace(s, "***"),
        _ => text.to_string(),
    }
}

/// Appends deliveries to Redis Streams. One attempt per [`Sink::deliver`] call over one shared
/// multiplexed connection (so parallel lanes pipeline their writes); a connection error drops
/// it and the next attempt connects again.
pub struct RedisSink {
    client: Client,
    connection_config: AsyncConnectionConfig,
    connection: Mutex<Option<MultiplexedConnection>>,
    stream: Template,
    max_len: String,
    trim: &'static str,
    dedup_window: Option<u64>,
    timeout: Duration,
    /// The URL without its password, for messages.
    target: String,
    /// Removed from every error text.
    password: Option<String>,
}

impl fmt::Debug for RedisSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSink")
            .field("target", &self.target)
            .field("stream", &self.stream)
            .field("max_len", &self.max_len)
            .field("trim", &self.trim)
            .field("dedup_window", &self.dedup_window)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisSink {
    /// Validate `config` and read its secrets and certificates, without any network I/O (what
    /// an offline check needs). The first delivery connects.
    pub fn new(config: &RedisConfig) -> anyhow::Result<Self> {
        config.validate().map_err(anyhow::Error::msg)?;
        let stream = Template::parse(&config.stream).map_err(anyhow::Error::msg)?;
        let (client, password) = config.client()?;
        let connection_config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(config.timeout))
            .set_response_timeout(Some(config.timeout));
        Ok(Self {
            client,
            connection_config,
            connection: Mutex::new(None),
            stream,
            max_len: config.max_len.to_string(),
            trim: if config.max_len_exact { "=" } else { "~" },
            dedup_window: (!config.dedup_window.is_zero()).then_some(config.dedup_window.as_secs()),
            timeout: config.timeout,
            target: redact_url(&config.url),
            password,
        })
    }

    /// [`new`](Self::new), then connect and `PING` once. A server that cannot be reached does
    /// not fail this (attempts are retryable until it is up; a warning says why); a server
    /// that refuses the credentials does, as does bad configuration.
    pub async fn connect(config: &RedisConfig) -> anyhow::Result<Self> {
        let sink = Self::new(config)?;
        match sink.ping().await {
            Ok(()) => tracing::info!(server = %sink.target, "Redis connected"),
            Err(e) if is_auth_error(&e) => {
                bail!(
                    "Redis at {} refused the credentials: {}",
                    sink.target,
                    sink.text(&e)
                )
            }
            Err(e) => tracing::warn!(
                server = %sink.target,
                "Redis is not reachable yet ({}); deliveries are retried until it is",
                sink.text(&e)
            ),
        }
        Ok(sink)
    }

    /// The stream key `delivery` goes to.
    pub fn stream_for(&self, delivery: &Delivery) -> String {
        self.stream.render(&delivery.vars, |s| s.to_string())
    }

    /// The shared connection, made now if there is none.
    async fn connection(&self) -> Result<MultiplexedConnection, RedisError> {
        let mut slot = self.connection.lock().await;
        if let Some(c) = &*slot {
            return Ok(c.clone());
        }
        let c = self
            .client
            .get_multiplexed_async_connection_with_config(&self.connection_config)
            .await?;
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Connect and `PING`: a server without a password for us answers `NOAUTH` only then.
    async fn ping(&self) -> Result<(), RedisError> {
        let ping = async {
            let mut conn = self.connection().await?;
            redis::cmd("PING").query_async::<Value>(&mut conn).await
        };
        match tokio::time::timeout(self.timeout, ping).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                self.reset().await;
                Err(e)
            }
            Err(_) => {
                self.reset().await;
                Err(RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "no answer to PING within {}",
                        humantime::format_duration(self.timeout)
                    ),
                )))
            }
        }
    }

    /// Forget the connection after an error that may have broken it.
    async fn reset(&self) {
        *self.connection.lock().await = None;
    }

    /// An error's text without the password.
    fn text(&self, e: &RedisError) -> String {
        scrub(&e.to_string(), self.password.as_deref())
    }

    /// The entry's fields and values (see the module documentation).
    fn fields(delivery: &Delivery) -> Result<Vec<(String, String)>, SinkError> {
        let object = delivery
            .event
            .as_object()
            .ok_or_else(|| SinkError::Permanent("the CloudEvent is not a JSON object".into()))?;
        let text = |v: &serde_json::Value| match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let mut fields = vec![("id".to_string(), delivery.id.clone())];
        for name in ATTRIBUTES {
            if let Some(v) = object.get(*name) {
                fields.push((name.to_string(), text(v)));
            }
        }
        // Extensions (traceparent, …) in the event's key order (serde_json sorts them).
        for (name, v) in object {
            if name != "id" && name != "data" && !ATTRIBUTES.contains(&name.as_str()) {
                fields.push((name.clone(), text(v)));
            }
        }
        if let Some(data) = object.get("data") {
            fields.push(("data".to_string(), data.to_string()));
        }
        Ok(fields)
    }

    async fn append(&self, delivery: &Delivery) -> Result<(), SinkError> {
        let stream = self.stream_for(delivery);
        let fields = Self::fields(delivery)?;
        let mut cmd = match self.dedup_window {
            Some(window) => {
                let mut cmd = redis::cmd("EVAL");
                cmd.arg(DEDUP_XADD)
                    .arg(2)
                    .arg(&stream)
                    .arg(format!("{stream}:dedup:{}", delivery.id))
                    .arg(self.trim)
                    .arg(&self.max_len)
                    .arg(window);
                cmd
            }
            None => {
                let mut cmd = redis::cmd("XADD");
                cmd.arg(&stream)
                    .arg("MAXLEN")
                    .arg(self.trim)
                    .arg(&self.max_len)
                    .arg("*");
                cmd
            }
        };
        for (field, value) in &fields {
            cmd.arg(field).arg(value);
        }
        let write = async {
            let mut conn = self.connection().await?;
            cmd.query_async::<Value>(&mut conn).await
        };
        let result = tokio::time::timeout(self.timeout, write).await;
        let reply = match result {
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) => {
                if !is_server_error(&e) {
                    self.reset().await;
                }
                return Err(self.classify(&stream, &e));
            }
            Err(_) => {
                // The reply may still come on this connection; a new one keeps later replies
                // from being matched to the wrong request.
                self.reset().await;
                return Err(SinkError::Retryable(format!(
                    "no reply from Redis at {} to XADD {stream} within {}",
                    self.target,
                    humantime::format_duration(self.timeout)
                )));
            }
        };
        if let Value::Array(items) = &reply
            && let [id, Value::Int(1)] = items.as_slice()
        {
            tracing::debug!(%stream, id = %delivery.id, entry = ?id, "Redis: already written, not appended again");
        }
        Ok(())
    }

    fn classify(&self, stream: &str, e: &RedisError) -> SinkError {
        let text = self.text(e);
        let at = &self.target;
        match e.code() {
            Some("WRONGTYPE") => SinkError::Permanent(format!(
                "Redis at {at}: the key {stream} (or its dedup key) holds another type than a stream: {text}"
            )),
            Some("NOPERM") => SinkError::Permanent(format!(
                "Redis at {at}: the ACL user may not write {stream}{}: {text}",
                if self.dedup_window.is_some() {
                    " (with dedupWindow it needs EVAL, GET and SET on <stream>:dedup:*, as well as XADD)"
                } else {
                    ""
                }
            )),
            _ if is_auth_error(e) => SinkError::Retryable(format!(
                "Redis at {at} refused the credentials (changed on the server?): {text}"
            )),
            _ => SinkError::Retryable(format!("Redis at {at}, XADD {stream}: {text}")),
        }
    }
}

/// Wrong user or password, or a password missing.
fn is_auth_error(e: &RedisError) -> bool {
    e.kind() == ErrorKind::AuthenticationFailed || matches!(e.code(), Some("NOAUTH" | "WRONGPASS"))
}

/// An error reply from the server (the connection itself is fine).
fn is_server_error(e: &RedisError) -> bool {
    e.code().is_some() && !is_auth_error(e)
}

impl Sink for RedisSink {
    fn deliver<'a>(&'a self, delivery: &'a Delivery) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(self.append(delivery))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use redis::AsyncCommands;
    use tokio::sync::OnceCell;

    use super::*;
    use crate::sink::TemplateVars;
    use crwatch_testsupport::redis::{RedisOptions, RedisServer, RedisTls};

    static SERVER: OnceCell<RedisServer> = OnceCell::const_new();

    async fn server() -> &'static RedisServer {
        SERVER
            .get_or_init(|| async { RedisServer::start().await.expect("starting redis-server") })
            .await
    }

    fn config(yaml: &str) -> RedisConfig {
        serde_saphyr::from_str(yaml).expect("valid redis section")
    }

    fn delivery(id: &str, name: &str, n: u32) -> Delivery {
        Delivery {
            id: id.to_string(),
            event: Arc::new(serde_json::json!({
                "specversion": "1.0",
                "id": id,
                "source": "/apis/stable.example.com/v1/namespaces/default/databases",
                "type": "io.crwatch.resource.modified",
                "subject": format!("default/{name}"),
                "time": "2025-01-02T03:04:05Z",
                "datacontenttype": "application/json",
                "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                "data": {"object": {"metadata": {"name": name}, "spec": {"n": n}}},
            })),
            vars: Arc::new(TemplateVars {
                group: "stable.example.com".into(),
                version: "v1".into(),
                kind: "Database".into(),
                resource: "databases".into(),
                namespace: "default".into(),
                name: name.to_string(),
                event: "modified".into(),
            }),
        }
    }

    async fn reader(url: &str) -> MultiplexedConnection {
        Client::open(url)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    /// Every entry of `stream` as (entry id, fields in order).
    async fn xrange(url: &str, stream: &str) -> Vec<(String, Vec<(String, String)>)> {
        let mut conn = reader(url).await;
        let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg(stream)
            .arg("-")
            .arg("+")
            .query_async(&mut conn)
            .await
            .unwrap();
        entries
    }

    async fn xlen(url: &str, stream: &str) -> u64 {
        reader(url).await.xlen(stream).await.unwrap()
    }

    /// Deliver until it succeeds (the server is coming back), or panic after 30 s.
    async fn deliver_until_ok(sink: &RedisSink, d: &Delivery) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match sink.deliver(d).await {
                Ok(()) => return,
                Err(e) => assert!(Instant::now() < deadline, "still failing after 30s: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[test]
    fn config_parses_with_defaults_hides_secrets_and_names_bad_fields() {
        let c = config("url: redis://u:s3cret@127.0.0.1:6379/0\n");
        assert_eq!(c.stream, DEFAULT_STREAM);
        assert_eq!(c.max_len, 100_000);
        assert!(!c.max_len_exact);
        assert_eq!(c.dedup_window, Duration::from_secs(600));
        assert_eq!(c.timeout, Duration::from_secs(10));
        c.validate().unwrap();
        let c = config("url: redis://h\npassword: hunter2\n");
        let debug = format!("{c:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        let c = config("url: redis://u:s3cret@h:1/0\n");
        let debug = format!("{c:?}");
        assert!(
            !debug.contains("s3cret") && debug.contains("redis://u:***@h:1/0"),
            "{debug}"
        );

        let c = config(
            "url: rediss://h:6380\nstream: \"ev:{namespace}:{kind}\"\nmaxLen: 10\nmaxLenExact: true\n\
             dedupWindow: 0s\nusername: bob\npasswordEnv: REDIS_PASSWORD\ntimeout: 250ms\n\
             tls:\n  caFile: /ca.pem\n  certFile: /c.pem\n  keyFile: /k.pem\n",
        );
        assert!(c.max_len_exact && c.dedup_window.is_zero());
        c.validate().unwrap();

        let err = |yaml: &str| match serde_saphyr::from_str::<RedisConfig>(yaml) {
            Err(e) => e.to_string(),
            Ok(c) => c.validate().unwrap_err(),
        };
        assert!(
            err("url: redis://h\nmaxLen: 0\n").contains("maxLen: must be between 1 and 1000000000, not 0")
        );
        assert!(err("url: redis://h\nmaxLen: 2000000000\n").contains("maxLen: must be between"));
        assert!(
            err("url: redis://h\ndedupWindow: 2d\n").contains("dedupWindow: must be between 0s and 1day")
        );
        assert!(err("url: redis://h\ndedupWindow: 1500ms\n").contains("dedupWindow: whole seconds"));
        assert!(err("url: redis://h\ntimeout: 0s\n").contains("timeout: must be between"));
        assert!(err("url: redis://h\nstraem: x\n").contains("straem"));
        assert!(
            err("url: redis://h\nstream: \"x:{nope}\"\n").contains("redis.stream: unknown variable {nope}")
        );
        assert!(err("url: http://h\n").contains("not a redis:// or rediss:// URL"));
        assert!(err("url: redis://h\npassword: a\npasswordEnv: B\n").contains("one of password"));
        assert!(err("url: redis://h\ntls:\n  caFile: /ca.pem\n").contains("rediss:// URLs only"));
        assert!(err("url: rediss://h\ntls:\n  certFile: /c.pem\n").contains("certFile and keyFile"));
        assert!(err("url: rediss://h\ntls:\n  insecureSkipVerify: true\n").contains("tls.caFile instead"));
        // The offline constructor reads secrets and certificates but does not connect.
        RedisSink::new(&config("url: redis://192.0.2.1:6379/0\n")).unwrap();
        let missing = RedisSink::new(&config("url: redis://h\npasswordFile: /nonexistent/pw\n")).unwrap_err();
        assert!(format!("{missing:#}").contains("/nonexistent/pw"), "{missing:#}");
        let missing =
            RedisSink::new(&config("url: rediss://h\ntls:\n  caFile: /nonexistent/ca.pem\n")).unwrap_err();
        assert!(
            format!("{missing:#}").contains("reading redis.tls.caFile /nonexistent/ca.pem"),
            "{missing:#}"
        );
        assert_eq!(redact_url("redis://:pw@h:1/0"), "redis://:***@h:1/0");
        assert_eq!(redact_url("redis://h:1/0"), "redis://h:1/0");
    }

    #[tokio::test]
    async fn xadd_lands_with_the_cloudevent_fields_once_per_id() {
        let server = server().await;
        let sink = RedisSink::connect(&config(&format!(
            "url: {}\nstream: \"fields:{{kind}}\"\n",
            server.url()
        )))
        .await
        .unwrap();
        let d = delivery("uid-1:42", "db1", 7);
        sink.deliver(&d).await.unwrap();
        // A retry after a lost reply: the dedup key makes it a no-op.
        sink.deliver(&d).await.unwrap();
        let entries = xrange(&server.url(), "fields:Database").await;
        assert_eq!(entries.len(), 1, "{entries:?}");
        let names: Vec<&str> = entries[0].1.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            names,
            [
                "id",
                "specversion",
                "type",
                "source",
                "subject",
                "time",
                "datacontenttype",
                "traceparent",
                "data"
            ]
        );
        let get = |name: &str| {
            entries[0]
                .1
                .iter()
                .find(|(f, _)| f == name)
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        assert_eq!(get("id"), "uid-1:42");
        assert_eq!(get("type"), "io.crwatch.resource.modified");
        assert_eq!(get("subject"), "default/db1");
        assert_eq!(get("time"), "2025-01-02T03:04:05Z");
        let data: serde_json::Value = serde_json::from_str(&get("data")).unwrap();
        assert_eq!(data, d.event["data"]);
        let mut conn = reader(&server.url()).await;
        let remembered: String = conn.get("fields:Database:dedup:uid-1:42").await.unwrap();
        assert_eq!(remembered, entries[0].0, "the dedup key holds the entry id");
        let ttl: i64 = conn.ttl("fields:Database:dedup:uid-1:42").await.unwrap();
        assert!(ttl > 590 && ttl <= 600, "{ttl}");

        // Without the dedup window a repeat is appended, and detectable by its id field.
        let plain = RedisSink::connect(&config(&format!(
            "url: {}\nstream: \"plain:{{kind}}\"\ndedupWindow: 0s\n",
            server.url()
        )))
        .await
        .unwrap();
        plain.deliver(&d).await.unwrap();
        plain.deliver(&d).await.unwrap();
        let entries = xrange(&server.url(), "plain:Database").await;
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].1, entries[1].1, "the same fields, id included");
    }

    #[tokio::test]
    async fn streams_follow_the_default_and_custom_templates() {
        let server = server().await;
        let default = RedisSink::connect(&config(&format!("url: {}\n", server.url())))
            .await
            .unwrap();
        let custom = RedisSink::connect(&config(&format!(
            "url: {}\nstream: \"ev:{{namespace}}:{{kind}}:{{event}}\"\n",
            server.url()
        )))
        .await
        .unwrap();
        let db = delivery("uid-t:1", "t1", 1);
        let mut cm = delivery("uid-t:2", "t2", 1);
        cm.vars = Arc::new(TemplateVars {
            group: "core".into(),
            version: "v1".into(),
            kind: "ConfigMap".into(),
            resource: "configmaps".into(),
            namespace: "kube-system".into(),
            name: "t2".into(),
            event: "added".into(),
        });
        assert_eq!(default.stream_for(&db), "crwatch:stable.example.com:databases");
        assert_eq!(default.stream_for(&cm), "crwatch:core:configmaps");
        assert_eq!(custom.stream_for(&cm), "ev:kube-system:ConfigMap:added");
        for sink in [&default, &custom] {
            sink.deliver(&db).await.unwrap();
            sink.deliver(&cm).await.unwrap();
        }
        for stream in [
            "crwatch:stable.example.com:databases",
            "crwatch:core:configmaps",
            "ev:default:Database:modified",
            "ev:kube-system:ConfigMap:added",
        ] {
            assert_eq!(xlen(&server.url(), stream).await, 1, "{stream}");
        }
    }

    #[tokio::test]
    async fn max_len_trims_the_oldest_entries() {
        let server = server().await;
        let exact = RedisSink::connect(&config(&format!(
            "url: {}\nstream: exact\nmaxLen: 5\nmaxLenExact: true\n",
            server.url()
        )))
        .await
        .unwrap();
        for n in 0..8 {
            exact
                .deliver(&delivery(&format!("uid-x:{n}"), "x", n))
                .await
                .unwrap();
        }
        let ids: Vec<String> = xrange(&server.url(), "exact")
            .await
            .into_iter()
            .map(|(_, fields)| fields[0].1.clone())
            .collect();
        assert_eq!(ids, ["uid-x:3", "uid-x:4", "uid-x:5", "uid-x:6", "uid-x:7"]);

        // Approximate trimming removes whole nodes (100 entries): bounded, not exact.
        let approx = RedisSink::connect(&config(&format!(
            "url: {}\nstream: approx\nmaxLen: 10\ndedupWindow: 0s\n",
            server.url()
        )))
        .await
        .unwrap();
        for n in 0..450 {
            approx
                .deliver(&delivery(&format!("uid-a:{n}"), "a", n))
                .await
                .unwrap();
        }
        let len = xlen(&server.url(), "approx").await;
        assert!((10..=200).contains(&len), "approximately trimmed to 10: {len}");
    }

    /// A TCP proxy to 127.0.0.1:`upstream` that, once armed, loses the reply to the first
    /// request containing `needle`: it forwards the request, waits for Redis' reply (so the
    /// write happened) and closes the client's connection instead of passing the reply on.
    async fn reply_losing_proxy(
        upstream: u16,
        needle: &'static [u8],
    ) -> (u16, Arc<std::sync::atomic::AtomicBool>) {
        use std::sync::atomic::{AtomicBool, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let armed = Arc::new(AtomicBool::new(false));
        let arm = armed.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let armed = armed.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await else {
                        return;
                    };
                    let (mut cr, mut cw) = client.split();
                    let (mut sr, mut sw) = server.split();
                    let (mut up, mut down) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
                    let mut lose = false;
                    loop {
                        tokio::select! {
                            n = cr.read(&mut up) => {
                                let Ok(n @ 1..) = n else { return };
                                if up[..n].windows(needle.len()).any(|w| w == needle)
                                    && armed.swap(false, Ordering::SeqCst)
                                {
                                    lose = true;
                                }
                                if sw.write_all(&up[..n]).await.is_err() {
                                    return;
                                }
                            }
                            n = sr.read(&mut down) => {
                                let Ok(n @ 1..) = n else { return };
                                if lose {
                                    // The write was applied; its reply goes nowhere.
                                    return;
                                }
                                if cw.write_all(&down[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        (port, arm)
    }

    #[tokio::test]
    async fn a_retry_after_a_lost_reply_adds_no_second_entry_within_the_dedup_window() {
        let server = server().await;
        for (dedup, needle, stream, entries) in [
            ("10m", &b"EVAL"[..], "lost:dedup", 1),
            ("0s", &b"XADD"[..], "lost:plain", 2),
        ] {
            let (port, arm) = reply_losing_proxy(server.port(), needle).await;
            let sink = RedisSink::connect(&config(&format!(
                "url: redis://127.0.0.1:{port}/0\nstream: {stream}\ndedupWindow: {dedup}\ntimeout: 2s\n"
            )))
            .await
            .unwrap();
            let d = delivery("uid-l:1", "l", 1);
            arm.store(true, std::sync::atomic::Ordering::SeqCst);
            match sink.deliver(&d).await {
                Err(SinkError::Retryable(_)) => {}
                other => panic!("expected Retryable after the lost reply, got {other:?}"),
            }
            // The retry reconnects (through the proxy, which passes replies on now).
            sink.deliver(&d).await.unwrap();
            let stored = xrange(&server.url(), stream).await;
            assert_eq!(stored.len(), entries, "dedupWindow {dedup}: {stored:?}");
            assert!(
                stored
                    .iter()
                    .all(|(_, fields)| fields[0] == ("id".into(), "uid-l:1".into()))
            );
        }
    }

    #[tokio::test]
    async fn a_key_of_another_type_is_permanent() {
        let server = server().await;
        let mut conn = reader(&server.url()).await;
        let _: () = conn.set("wrongtype", "a string").await.unwrap();
        for dedup in ["10m", "0s"] {
            let sink = RedisSink::connect(&config(&format!(
                "url: {}\nstream: wrongtype\ndedupWindow: {dedup}\n",
                server.url()
            )))
            .await
            .unwrap();
            match sink.deliver(&delivery("uid-w:1", "w", 1)).await {
                Err(SinkError::Permanent(msg)) => assert!(msg.contains("WRONGTYPE"), "{msg}"),
                other => panic!("expected Permanent, got {other:?}"),
            }
        }
        // Nothing was remembered as written.
        let exists: bool = conn.exists("wrongtype:dedup:uid-w:1").await.unwrap();
        assert!(!exists);
    }

    #[tokio::test]
    async fn an_acl_refusal_is_permanent_and_says_what_the_user_needs() {
        let server = server().await;
        let mut conn = reader(&server.url()).await;
        // Allowed XADD on its streams only: enough without dedupWindow, not with it.
        let _: () = redis::cmd("ACL")
            .arg(
                &[
                    "SETUSER",
                    "xadd-only",
                    "reset",
                    "on",
                    ">xadd-pw",
                    "~acl:*",
                    "+xadd",
                    "+ping",
                ][..],
            )
            .query_async(&mut conn)
            .await
            .unwrap();
        let yaml = |dedup: &str| {
            format!(
                "url: {}\nusername: xadd-only\npassword: xadd-pw\nstream: \"acl:{{kind}}\"\ndedupWindow: {dedup}\n",
                server.url()
            )
        };
        let plain = RedisSink::connect(&config(&yaml("0s"))).await.unwrap();
        plain.deliver(&delivery("uid-acl:1", "acl", 1)).await.unwrap();
        let dedup = RedisSink::connect(&config(&yaml("1m"))).await.unwrap();
        match dedup.deliver(&delivery("uid-acl:2", "acl", 2)).await {
            Err(SinkError::Permanent(msg)) => {
                assert!(
                    msg.contains("no permissions") && msg.contains("needs EVAL"),
                    "{msg}"
                );
                assert!(!msg.contains("xadd-pw"), "{msg}");
            }
            other => panic!("expected Permanent, got {other:?}"),
        }
        assert_eq!(xlen(&server.url(), "acl:Database").await, 1);
    }

    #[tokio::test]
    async fn passwords_authenticate_and_a_wrong_one_is_refused_without_echoing_it() {
        let password = "correct-horse-battery";
        let server = RedisServer::start_with(RedisOptions {
            password: Some(password.into()),
            tls: None,
        })
        .await
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("password");
        std::fs::write(&file, format!("{password}\n")).unwrap();
        let sink = RedisSink::connect(&config(&format!(
            "url: {}\nstream: auth\npasswordFile: {}\n",
            server.url(),
            file.display()
        )))
        .await
        .unwrap();
        sink.deliver(&delivery("uid-p:1", "p", 1)).await.unwrap();
        let url = server.url().replace("redis://", &format!("redis://:{password}@"));
        let in_url = RedisSink::connect(&config(&format!("url: {url}\nstream: auth\n")))
            .await
            .unwrap();
        in_url.deliver(&delivery("uid-p:2", "p", 2)).await.unwrap();
        assert!(!format!("{in_url:?}").contains(password));

        let wrong = "not-the-password-xyz";
        let err = RedisSink::connect(&config(&format!(
            "url: {}\nstream: auth\npassword: {wrong}\n",
            server.url()
        )))
        .await
        .unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("refused the credentials"), "{text}");
        assert!(!text.contains(wrong), "{text}");
        let err = RedisSink::connect(&config(&format!("url: {}\nusername: bob\n", server.url())))
            .await
            .unwrap_err();
        assert!(
            format!("{err:#}").contains("a username needs a password"),
            "{err:#}"
        );
        let err = RedisSink::connect(&config(&format!("url: {}\nstream: auth\n", server.url())))
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains("refused the credentials"), "{err:#}");
        let err = RedisSink::connect(&config(&format!(
            "url: {url}\nstream: auth\npasswordFile: {}\n",
            file.display()
        )))
        .await
        .unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains("the URL has a password and passwordFile is set too"),
            "{text}"
        );
        assert!(!text.contains(password), "{text}");
    }

    #[tokio::test]
    async fn a_server_down_is_retryable_and_nothing_is_lost_after_its_restart() {
        let mut server = RedisServer::start().await.unwrap();
        let yaml = format!("url: {}\nstream: restart\ntimeout: 1s\n", server.url());
        let sink = RedisSink::connect(&config(&yaml)).await.unwrap();
        sink.deliver(&delivery("uid-r:1", "r", 1)).await.unwrap();

        server.stop();
        let d = delivery("uid-r:2", "r", 2);
        match sink.deliver(&d).await {
            Err(SinkError::Retryable(msg)) => assert!(msg.contains(&server.url()), "{msg}"),
            other => panic!("expected Retryable, got {other:?}"),
        }
        // A sink made while the server is down connects on a later attempt.
        let late = RedisSink::connect(&config(&yaml)).await.unwrap();
        assert!(matches!(late.deliver(&d).await, Err(SinkError::Retryable(_))));

        server.restart().await.unwrap();
        deliver_until_ok(&sink, &d).await;
        deliver_until_ok(&late, &d).await;
        deliver_until_ok(&late, &delivery("uid-r:3", "r", 3)).await;
        let ids: Vec<String> = xrange(&server.url(), "restart")
            .await
            .into_iter()
            .map(|(_, fields)| fields[0].1.clone())
            .collect();
        // r:1 survived the kill (append-only file); r:2 delivered twice but stored once.
        assert_eq!(ids, ["uid-r:1", "uid-r:2", "uid-r:3"]);
    }

    #[tokio::test]
    async fn tls_verifies_the_server_against_ca_file_and_presents_a_client_certificate() {
        let certs = crwatch_apiserver::tls::Certs::generate(&[]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, pem: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, pem).unwrap();
            path
        };
        let ca = write("ca.pem", &certs.ca_pem);
        let cert = write("cert.pem", &certs.cert_pem);
        let key = write("key.pem", &certs.key_pem);
        let server = RedisServer::start_with(RedisOptions {
            password: None,
            tls: Some(RedisTls {
                cert_file: cert.clone(),
                key_file: key.clone(),
                ca_file: ca.clone(),
                require_client_cert: true,
            }),
        })
        .await
        .unwrap();
        let url = server.tls_url().unwrap();
        // The server certificate doubles as the client certificate: the same CA signed it.
        let sink = RedisSink::connect(&config(&format!(
            "url: {url}\nstream: tls\ntimeout: 2s\ntls:\n  caFile: {}\n  certFile: {}\n  keyFile: {}\n",
            ca.display(),
            cert.display(),
            key.display()
        )))
        .await
        .unwrap();
        sink.deliver(&delivery("uid-s:1", "s", 1)).await.unwrap();
        assert_eq!(xlen(&server.url(), "tls").await, 1);

        // Without the CA the server is not trusted: attempts fail (retryable), saying why.
        let untrusted = RedisSink::connect(&config(&format!("url: {url}\nstream: tls\ntimeout: 2s\n")))
            .await
            .unwrap();
        match untrusted.deliver(&delivery("uid-s:2", "s", 2)).await {
            Err(SinkError::Retryable(msg)) => assert!(msg.to_lowercase().contains("certificate"), "{msg}"),
            other => panic!("expected Retryable, got {other:?}"),
        }
        let bad_ca = write("bad.pem", "not a certificate\n");
        let err = RedisSink::connect(&config(&format!(
            "url: {url}\ntls:\n  caFile: {}\n",
            bad_ca.display()
        )))
        .await
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("holds no PEM certificates"),
            "{err:#}"
        );
    }
}
