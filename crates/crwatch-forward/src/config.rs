//! The `forward.yaml` configuration: its types, and loading with errors that name the file, the
//! line and the field. Unknown fields are rejected everywhere, so a typo never silently turns a
//! setting off.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::sink::Template;

/// The whole configuration file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ForwardConfig {
    /// What to watch.
    pub resources: Vec<ResourceConfig>,
    /// Where to send changes.
    pub sinks: Vec<SinkConfig>,
    /// Where to remember what every sink acknowledged, so a restart resumes there.
    #[serde(default)]
    pub checkpoint: Option<CheckpointConfig>,
    /// Prometheus metrics address (`/metrics`); `off` disables. Default `0.0.0.0:8080`.
    #[serde(default = "default_metrics")]
    pub metrics: Address,
    /// Probe address (`/healthz`, `/readyz`); `off` disables. Default `0.0.0.0:8081`.
    #[serde(default = "default_probes")]
    pub probes: Address,
    /// CloudEvents `source` prefix; default: the API server's URL.
    #[serde(default)]
    pub source: Option<String>,
    /// How long a shutdown waits for queued changes to be delivered (0s to 1h). Default 10s.
    #[serde(default = "default_grace", deserialize_with = "bounds::shutdown_grace")]
    pub shutdown_grace: Duration,
    /// `/readyz` answers 503 once a stream's source has been failing this long (1s to 1h).
    /// Default 60s.
    #[serde(
        default = "default_unhealthy_after",
        deserialize_with = "bounds::unhealthy_after"
    )]
    pub unhealthy_after: Duration,
}

fn default_unhealthy_after() -> Duration {
    Duration::from_secs(60)
}

/// A listen address or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Address {
    /// Listen here.
    On(SocketAddr),
    /// Disabled.
    Off,
}

impl<'de> Deserialize<'de> for Address {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s == "off" || s.is_empty() {
            return Ok(Address::Off);
        }
        // `:8080` means every interface, as Go programs (and controller-runtime flags) accept.
        let full = if s.starts_with(':') {
            format!("0.0.0.0{s}")
        } else {
            s.clone()
        };
        full.parse().map(Address::On).map_err(|_| {
            serde::de::Error::custom(format!("invalid address {s:?}: expected host:port or off"))
        })
    }
}

fn default_metrics() -> Address {
    Address::On(SocketAddr::from(([0, 0, 0, 0], 8080)))
}

fn default_probes() -> Address {
    Address::On(SocketAddr::from(([0, 0, 0, 0], 8081)))
}

fn default_grace() -> Duration {
    Duration::from_secs(10)
}

/// One resource type (or one non-Kubernetes source) to watch.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ResourceConfig {
    /// Resource name as `crwatch get` takes it: plural, singular, short name, kind,
    /// `plural.group` or `plural.version.group`. Exactly one of `resource` and `source`.
    #[serde(default)]
    pub resource: Option<Spanned<String>>,
    /// A non-Kubernetes source instead of a resource: `https://…` or `http://…` (polled),
    /// `webhook` (objects pushed to `listen`), `postgres://…` (with that feature).
    #[serde(default)]
    pub source: Option<Spanned<String>>,
    /// HTTP sources: how often the URL is polled (100ms to 24h). Default 30s.
    #[serde(default, deserialize_with = "bounds::poll_interval")]
    pub interval: Option<Duration>,
    /// HTTP sources: JSON pointer to the items (`/items`); default the whole body.
    #[serde(default)]
    pub items: Option<String>,
    /// HTTP sources: where each item's key is (`id`, `/spec/id`, `metadata.name`).
    #[serde(default)]
    pub key: Option<String>,
    /// Webhook sources: the address to listen on (`127.0.0.1:9000`, `:9000`).
    #[serde(default)]
    pub listen: Option<Spanned<String>>,
    /// Namespaces to watch; empty means all (or the resource is cluster-scoped).
    #[serde(default)]
    pub namespaces: Vec<Spanned<String>>,
    /// Label selector.
    #[serde(default)]
    pub label_selector: Option<String>,
    /// Field selector.
    #[serde(default)]
    pub field_selector: Option<String>,
    /// Which changes to forward; default all three.
    #[serde(default = "all_events")]
    pub events: Vec<EventType>,
    /// Forward a modification only when one of these field paths changed (e.g. `spec` ignores
    /// status-only updates). Additions and deletions always pass.
    #[serde(default)]
    pub fields: Vec<Spanned<String>>,
    /// Sink names; default every sink.
    #[serde(default)]
    pub sinks: Vec<Spanned<String>>,
    /// Do not forward objects that already exist when the forwarder starts without a checkpoint.
    #[serde(default)]
    pub skip_existing: bool,
}

fn all_events() -> Vec<EventType> {
    vec![EventType::Added, EventType::Modified, EventType::Deleted]
}

/// A kind of change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    /// The object appeared.
    Added,
    /// The object changed.
    Modified,
    /// The object is gone.
    Deleted,
}

impl EventType {
    /// `added`, `modified` or `deleted`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "added",
            EventType::Modified => "modified",
            EventType::Deleted => "deleted",
        }
    }
}

/// Where and how often the checkpoint is written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CheckpointConfig {
    /// The checkpoint file (written atomically: temporary file, fsync, rename).
    pub path: PathBuf,
    /// How often a changed checkpoint is written (10ms to 1h). Default 1s.
    #[serde(
        default = "default_checkpoint_interval",
        deserialize_with = "bounds::checkpoint_interval"
    )]
    pub interval: Duration,
}

fn default_checkpoint_interval() -> Duration {
    Duration::from_secs(1)
}

/// One sink: a name, exactly one destination, and delivery settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SinkConfig {
    /// Name used in `resources[].sinks`, metrics and logs.
    pub name: Spanned<String>,
    /// HTTP webhook.
    #[serde(default)]
    pub webhook: Option<WebhookSection>,
    /// NATS (core or JetStream).
    #[serde(default)]
    pub nats: Option<NatsSection>,
    /// AMQP 0.9.1 (RabbitMQ).
    #[serde(default)]
    pub amqp: Option<AmqpSection>,
    /// JSON lines to a file or stdout.
    #[serde(default)]
    pub file: Option<FileSection>,
    /// MQTT 3.1.1 or 5 (QoS 1).
    #[serde(default)]
    pub mqtt: Option<MqttSection>,
    /// Redis Streams (`XADD`).
    #[serde(default)]
    pub redis: Option<RedisSection>,
    /// Retry settings.
    #[serde(default)]
    pub retry: RetryConfig,
    /// Changes the sink refused for good go here as JSON lines; without it they are logged and
    /// dropped.
    #[serde(default)]
    pub dead_letter: Option<PathBuf>,
    /// Changes queued for this sink before the watch is held back (1 to
    /// [`bounds::MAX_QUEUE_SIZE`]). Default 1000.
    #[serde(default = "default_queue_size", deserialize_with = "bounds::queue_size")]
    pub queue_size: usize,
    /// Parallel deliveries; changes of one object always go through the same lane, in order
    /// (1 to [`bounds::MAX_PARALLELISM`], and at most `queueSize`). Default 1.
    #[serde(default = "default_parallelism", deserialize_with = "bounds::parallelism")]
    pub parallelism: usize,
}

fn default_queue_size() -> usize {
    1000
}

fn default_parallelism() -> usize {
    1
}

/// Retry settings: exponential backoff with full jitter.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RetryConfig {
    /// First backoff (1ms to 24h). Default 500ms.
    #[serde(default = "default_initial_backoff", deserialize_with = "bounds::backoff")]
    pub initial_backoff: Duration,
    /// Longest backoff (1ms to 24h). Default 1m.
    #[serde(default = "default_max_backoff", deserialize_with = "bounds::backoff")]
    pub max_backoff: Duration,
    /// Attempts before a change goes to the dead-letter file (1 to
    /// [`bounds::MAX_ATTEMPTS`]); default unlimited (at least once).
    #[serde(default, deserialize_with = "bounds::max_attempts")]
    pub max_attempts: Option<u32>,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            initial_backoff: default_initial_backoff(),
            max_backoff: default_max_backoff(),
            max_attempts: None,
        }
    }
}

fn default_initial_backoff() -> Duration {
    Duration::from_millis(500)
}

fn default_max_backoff() -> Duration {
    Duration::from_secs(60)
}

#[cfg(feature = "webhook")]
/// The webhook section.
pub type WebhookSection = crate::sinks::webhook::WebhookConfig;
#[cfg(not(feature = "webhook"))]
/// The webhook section (this build has no webhook sink).
pub type WebhookSection = serde::de::IgnoredAny;

#[cfg(feature = "file")]
/// The file section.
pub type FileSection = crate::sinks::file::FileConfig;
#[cfg(not(feature = "file"))]
/// The file section (this build has no file sink).
pub type FileSection = serde::de::IgnoredAny;

#[cfg(feature = "nats")]
/// The NATS section.
pub type NatsSection = crate::sinks::nats::NatsConfig;
#[cfg(not(feature = "nats"))]
/// The NATS section (this build has no NATS support).
pub type NatsSection = serde::de::IgnoredAny;

#[cfg(feature = "amqp")]
/// The AMQP section.
pub type AmqpSection = crate::sinks::amqp::AmqpConfig;
#[cfg(not(feature = "amqp"))]
/// The AMQP section (this build has no AMQP support).
pub type AmqpSection = serde::de::IgnoredAny;

#[cfg(feature = "mqtt")]
/// The MQTT section.
pub type MqttSection = crate::sinks::mqtt::MqttConfig;
#[cfg(not(feature = "mqtt"))]
/// The MQTT section (this build has no MQTT support).
pub type MqttSection = serde::de::IgnoredAny;

#[cfg(feature = "redis")]
/// The Redis section.
pub type RedisSection = crate::sinks::redis::RedisConfig;
#[cfg(not(feature = "redis"))]
/// The Redis section (this build has no Redis support).
pub type RedisSection = serde::de::IgnoredAny;

/// The documented range of every number in the configuration, checked while parsing so that
/// an error points at the value itself (`forward.yaml:7:16: queueSize: must be between 1 and
/// 1000000, not 18446744073709551615`), in `crwatch forward --check` and at start alike.
/// The upper bounds keep every setting far from overflows and from memory or tasks that a
/// typo could multiply: nothing is allocated in proportion to a setting up front (queues grow
/// as changes arrive), but each lane of `parallelism` is a task of its own.
pub mod bounds {
    use std::fmt::Display;
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    /// Largest `sinks[].queueSize`: changes held per sink (each holds one object).
    pub const MAX_QUEUE_SIZE: usize = 1_000_000;
    /// Largest `sinks[].parallelism`: each lane is a task with its own connection use.
    pub const MAX_PARALLELISM: usize = 1024;
    /// Largest `sinks[].retry.maxAttempts`.
    pub const MAX_ATTEMPTS: u32 = 1_000_000;
    /// Largest rotated-file count (`sinks[].file.maxFiles`): each rotation renames them all.
    pub const MAX_FILES: usize = 1000;
    /// `sinks[].file.maxSize`: at least one small line, at most 1 TiB.
    pub const FILE_SIZE: (u64, u64) = (1024, 1 << 40);
    /// `shutdownGrace`.
    pub const SHUTDOWN_GRACE: (Duration, Duration) = (Duration::ZERO, Duration::from_secs(3600));
    /// `unhealthyAfter`.
    pub const UNHEALTHY_AFTER: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(3600));
    /// `resources[].interval` (HTTP polling).
    pub const POLL_INTERVAL: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(86_400));
    /// `checkpoint.interval`.
    pub const CHECKPOINT_INTERVAL: (Duration, Duration) =
        (Duration::from_millis(10), Duration::from_secs(3600));
    /// `retry.initialBackoff` and `retry.maxBackoff`.
    pub const BACKOFF: (Duration, Duration) = (Duration::from_millis(1), Duration::from_secs(86_400));
    /// Sinks' `timeout` (webhook, NATS, AMQP).
    pub const TIMEOUT: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(3600));

    fn within<T: PartialOrd + Display, E: serde::de::Error>(
        field: &str,
        v: T,
        min: T,
        max: T,
    ) -> Result<T, E> {
        if v < min || v > max {
            return Err(E::custom(format!(
                "{field}: must be between {min} and {max}, not {v}"
            )));
        }
        Ok(v)
    }

    /// A duration within `min..=max` (humantime syntax), the error naming `field`: for sinks'
    /// own bounded durations.
    pub(crate) fn duration<'de, D: Deserializer<'de>>(
        d: D,
        field: &str,
        (min, max): (Duration, Duration),
    ) -> Result<Duration, D::Error> {
        let v: Duration = humantime_serde::deserialize(d)?;
        if v < min || v > max {
            let f = humantime::format_duration;
            return Err(serde::de::Error::custom(format!(
                "{field}: must be between {} and {}, not {}",
                f(min),
                f(max),
                f(v)
            )));
        }
        Ok(v)
    }

    /// `sinks[].queueSize`.
    pub fn queue_size<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
        within("queueSize", u64::deserialize(d)?, 1, MAX_QUEUE_SIZE as u64).map(|v| v as usize)
    }
    /// `sinks[].parallelism`.
    pub fn parallelism<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
        within("parallelism", u64::deserialize(d)?, 1, MAX_PARALLELISM as u64).map(|v| v as usize)
    }
    /// `sinks[].retry.maxAttempts`.
    pub fn max_attempts<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
        let v = u64::deserialize(d)?;
        within("maxAttempts", v, 1, u64::from(MAX_ATTEMPTS)).map(|v| Some(v as u32))
    }
    /// `sinks[].file.maxFiles`.
    pub fn max_files<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
        within("maxFiles", u64::deserialize(d)?, 0, MAX_FILES as u64).map(|v| v as usize)
    }
    /// `sinks[].file.maxSize`, already parsed from a number or a quantity.
    pub fn file_size<E: serde::de::Error>(v: u64) -> Result<u64, E> {
        within("maxSize", v, FILE_SIZE.0, FILE_SIZE.1)
    }
    /// `shutdownGrace`.
    pub fn shutdown_grace<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        duration(d, "shutdownGrace", SHUTDOWN_GRACE)
    }
    /// `unhealthyAfter`.
    pub fn unhealthy_after<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        duration(d, "unhealthyAfter", UNHEALTHY_AFTER)
    }
    /// `resources[].interval`.
    pub fn poll_interval<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        duration(d, "interval", POLL_INTERVAL).map(Some)
    }
    /// `checkpoint.interval`.
    pub fn checkpoint_interval<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        duration(d, "interval", CHECKPOINT_INTERVAL)
    }
    /// `retry.initialBackoff`, `retry.maxBackoff`.
    pub fn backoff<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        duration(d, "backoff", BACKOFF)
    }
    /// A sink's `timeout`.
    pub fn timeout<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        duration(d, "timeout", TIMEOUT)
    }
}

/// A configuration error, located in the file.
#[derive(Debug, thiserror::Error)]
#[error("{file}{}: {message}", location.map(|(l, c)| format!(":{l}:{c}")).unwrap_or_default())]
pub struct ConfigError {
    /// The file.
    pub file: String,
    /// Line and column, when known.
    pub location: Option<(u64, u64)>,
    /// What is wrong, naming the field.
    pub message: String,
}

impl ForwardConfig {
    /// Read and check `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.display().to_string(),
            location: None,
            message: format!("cannot read: {e}"),
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parse and check `text`; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Self, ConfigError> {
        let config: ForwardConfig = serde_saphyr::from_str(text).map_err(|e| {
            let location = e.location().map(|l| (l.line(), l.column()));
            ConfigError {
                file: file.to_string(),
                location,
                message: saphyr_message(&e.to_string()),
            }
        })?;
        config.check(file)?;
        Ok(config)
    }

    fn check(&self, file: &str) -> Result<(), ConfigError> {
        let at = |loc: &serde_saphyr::Location, message: String| ConfigError {
            file: file.to_string(),
            location: Some((loc.line(), loc.column())),
            message,
        };
        let whole = |message: String| ConfigError {
            file: file.to_string(),
            location: None,
            message,
        };
        if self.resources.is_empty() {
            return Err(whole("resources: at least one resource is needed".into()));
        }
        if self.sinks.is_empty() {
            return Err(whole("sinks: at least one sink is needed".into()));
        }
        let mut names = BTreeSet::new();
        for (i, sink) in self.sinks.iter().enumerate() {
            let loc = &sink.name.referenced;
            if sink.name.value.is_empty() {
                return Err(at(loc, format!("sinks[{i}].name: must not be empty")));
            }
            if !names.insert(sink.name.value.as_str()) {
                return Err(at(
                    loc,
                    format!("sinks[{i}].name: duplicate sink name {:?}", sink.name.value),
                ));
            }
            let kinds = [
                sink.webhook.is_some(),
                sink.nats.is_some(),
                sink.amqp.is_some(),
                sink.file.is_some(),
                sink.mqtt.is_some(),
                sink.redis.is_some(),
            ];
            if kinds.iter().filter(|k| **k).count() != 1 {
                return Err(at(
                    loc,
                    format!(
                        "sinks[{i}] ({}): set exactly one of webhook, nats, amqp, file, mqtt, redis",
                        sink.name.value
                    ),
                ));
            }
            #[cfg(not(feature = "webhook"))]
            if sink.webhook.is_some() {
                return Err(at(
                    loc,
                    format!("sinks[{i}].webhook: this crwatch was built without the webhook sink"),
                ));
            }
            #[cfg(not(feature = "file"))]
            if sink.file.is_some() {
                return Err(at(
                    loc,
                    format!("sinks[{i}].file: this crwatch was built without the file sink"),
                ));
            }
            #[cfg(not(feature = "nats"))]
            if sink.nats.is_some() {
                return Err(at(
                    loc,
                    format!("sinks[{i}].nats: this crwatch was built without NATS support"),
                ));
            }
            #[cfg(not(feature = "amqp"))]
            if sink.amqp.is_some() {
                return Err(at(
                    loc,
                    format!("sinks[{i}].amqp: this crwatch was built without AMQP support"),
                ));
            }
            #[cfg(not(feature = "mqtt"))]
            if sink.mqtt.is_some() {
                return Err(at(
                    loc,
                    format!("sinks[{i}].mqtt: this crwatch was built without MQTT support"),
                ));
            }
            #[cfg(not(feature = "redis"))]
            if sink.redis.is_some() {
                return Err(at(
                    loc,
                    format!("sinks[{i}].redis: this crwatch was built without Redis support"),
                ));
            }
            // Each bound alone is checked while parsing, at the value; this one relates two.
            if sink.parallelism > sink.queue_size {
                return Err(at(
                    loc,
                    format!(
                        "sinks[{i}].parallelism: {} is above queueSize ({}): must be between 1 and queueSize",
                        sink.parallelism, sink.queue_size
                    ),
                ));
            }
            if sink.retry.initial_backoff > sink.retry.max_backoff {
                return Err(at(
                    loc,
                    format!("sinks[{i}].retry: initialBackoff is above maxBackoff"),
                ));
            }
        }
        for (i, r) in self.resources.iter().enumerate() {
            let name = match (&r.resource, &r.source) {
                (Some(name), None) => name,
                (None, Some(source)) => {
                    check_source(i, r, source).map_err(|m| at(&source.referenced, m))?;
                    source
                }
                (Some(name), Some(_)) => {
                    return Err(at(
                        &name.referenced,
                        format!("resources[{i}]: set resource or source, not both"),
                    ));
                }
                (None, None) => {
                    return Err(whole(format!(
                        "resources[{i}]: set resource (a Kubernetes resource) or source (a URI)"
                    )));
                }
            };
            if name.value.trim().is_empty() {
                return Err(at(
                    &name.referenced,
                    format!("resources[{i}].resource: must not be empty"),
                ));
            }
            if r.resource.is_some()
                && (r.interval.is_some() || r.items.is_some() || r.key.is_some() || r.listen.is_some())
            {
                return Err(at(
                    &name.referenced,
                    format!("resources[{i}]: interval, items, key and listen apply to sources only"),
                ));
            }
            let mut namespaces = BTreeSet::new();
            if let Some(ns) = r
                .namespaces
                .iter()
                .find(|ns| !namespaces.insert(ns.value.as_str()))
            {
                return Err(at(
                    &ns.referenced,
                    format!("resources[{i}].namespaces: {:?} is listed twice", ns.value),
                ));
            }
            if r.events.is_empty() {
                return Err(at(
                    &name.referenced,
                    format!("resources[{i}].events: empty list forwards nothing; omit it for all events"),
                ));
            }
            for s in &r.sinks {
                if !names.contains(s.value.as_str()) {
                    return Err(at(
                        &s.referenced,
                        format!(
                            "resources[{i}].sinks: no sink named {:?} (sinks: {})",
                            s.value,
                            names.iter().copied().collect::<Vec<_>>().join(", ")
                        ),
                    ));
                }
            }
            for f in &r.fields {
                if let Err(e) = crwatch::diff::Filter::none().try_ignore(&f.value) {
                    return Err(at(&f.referenced, format!("resources[{i}].fields: {e}")));
                }
            }
            if let Some(Err(e)) = r.label_selector.as_deref().map(crwatch::store::parse_selector) {
                return Err(at(&name.referenced, format!("resources[{i}].labelSelector: {e}")));
            }
        }
        Ok(())
    }

    /// Where each `resources[]` entry is in the file (its `resource` or `source` value).
    pub fn entry_location(resource: &ResourceConfig) -> Option<(u64, u64)> {
        resource
            .resource
            .as_ref()
            .or(resource.source.as_ref())
            .map(|s| (s.referenced.line(), s.referenced.column()))
    }

    /// The sinks a resource entry routes to (indexes into `sinks`).
    pub fn sinks_of(&self, resource: &ResourceConfig) -> Vec<usize> {
        if resource.sinks.is_empty() {
            return (0..self.sinks.len()).collect();
        }
        self.sinks
            .iter()
            .enumerate()
            .filter(|(_, s)| resource.sinks.iter().any(|n| n.value == s.name.value))
            .map(|(i, _)| i)
            .collect()
    }
}

/// The kinds of `source:` URIs, as this build supports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// `http://` or `https://`: polled.
    Http,
    /// `webhook`: objects pushed to `listen`.
    Webhook,
    /// `postgres://` or `postgresql://`.
    Postgres,
    /// `mysql://` or `mariadb://`: polled.
    Mysql,
    /// `file://`: a directory of YAML/JSON documents or raw files.
    File,
}

impl SourceKind {
    /// The kind of `uri`, or what is wrong with it.
    pub fn of(uri: &str) -> Result<Self, String> {
        let kind = if uri.starts_with("http://") || uri.starts_with("https://") {
            SourceKind::Http
        } else if uri == "webhook" {
            SourceKind::Webhook
        } else if uri.starts_with("postgres://") || uri.starts_with("postgresql://") {
            SourceKind::Postgres
        } else if uri.starts_with("mysql://") || uri.starts_with("mariadb://") {
            SourceKind::Mysql
        } else if uri.starts_with("file://") {
            SourceKind::File
        } else {
            return Err(format!(
                "unsupported source {:?}: use https://… or http://… (polled), webhook (pushed), postgres://…, mysql://… or file://…",
                crate::event::redact_uri(uri)
            ));
        };
        let (built, feature) = match kind {
            SourceKind::Http => (cfg!(feature = "source-http"), "source-http"),
            SourceKind::Webhook => (cfg!(feature = "source-webhook"), "source-webhook"),
            SourceKind::Postgres => (cfg!(feature = "source-postgres"), "source-postgres"),
            SourceKind::Mysql => (cfg!(feature = "source-mysql"), "source-mysql"),
            SourceKind::File => (cfg!(feature = "source-file"), "source-file"),
        };
        if !built {
            return Err(format!(
                "this crwatch was built without the {feature} feature, which {:?} needs",
                crate::event::redact_uri(uri)
            ));
        }
        Ok(kind)
    }
}

fn check_source(i: usize, r: &ResourceConfig, source: &Spanned<String>) -> Result<(), String> {
    let kind = SourceKind::of(&source.value).map_err(|e| format!("resources[{i}].source: {e}"))?;
    if !r.namespaces.is_empty() || r.label_selector.is_some() || r.field_selector.is_some() {
        return Err(format!(
            "resources[{i}]: namespaces, labelSelector and fieldSelector apply to Kubernetes resources only"
        ));
    }
    if kind != SourceKind::Http && (r.interval.is_some() || r.items.is_some() || r.key.is_some()) {
        return Err(format!(
            "resources[{i}]: interval, items and key apply to http(s) sources only"
        ));
    }
    if kind == SourceKind::Webhook && r.skip_existing {
        return Err(format!(
            "resources[{i}].skipExisting: a webhook source has no existing objects, only pushes"
        ));
    }
    match (kind, &r.listen) {
        (SourceKind::Webhook, None) => Err(format!(
            "resources[{i}].listen: a webhook source needs an address to listen on, e.g. \":9000\""
        )),
        (SourceKind::Webhook, Some(l)) => parse_address(&l.value)
            .map(|_| ())
            .map_err(|e| format!("resources[{i}].listen: {e}")),
        (_, Some(_)) => Err(format!("resources[{i}].listen applies to webhook sources only")),
        _ => Ok(()),
    }
}

/// `host:port` or `:port` (every interface).
pub fn parse_address(s: &str) -> Result<SocketAddr, String> {
    let full = if s.starts_with(':') {
        format!("0.0.0.0{s}")
    } else {
        s.to_string()
    };
    full.parse()
        .map_err(|_| format!("invalid address {s:?}: expected host:port or :port"))
}

/// The first line of a serde-saphyr error without its own `line N column M:` prefix (the caller
/// puts the location in front as `file:line:column`).
fn saphyr_message(rendered: &str) -> String {
    let first = rendered.lines().next().unwrap_or(rendered);
    let first = first.strip_prefix("error: ").unwrap_or(first);
    match first.find(": ") {
        Some(i) if first.starts_with("line ") => first[i + 2..].to_string(),
        _ => first.to_string(),
    }
}

/// Parse a template, turning its error into a located config error.
pub fn template(t: &Spanned<String>, field: &str, file: &str) -> Result<Template, ConfigError> {
    Template::parse(&t.value).map_err(|message| ConfigError {
        file: file.to_string(),
        location: Some((t.referenced.line(), t.referenced.column())),
        message: format!("{field}: {message}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(yaml: &str) -> String {
        ForwardConfig::parse(yaml, "forward.yaml")
            .unwrap_err()
            .to_string()
    }

    const SINK: &str = "sinks:\n  - name: out\n    file:\n      path: \"-\"\n";

    #[test]
    fn a_minimal_config_parses_with_defaults() {
        let c = ForwardConfig::parse(&format!("resources:\n  - resource: db\n{SINK}"), "f").unwrap();
        assert_eq!(c.resources[0].events.len(), 3);
        assert_eq!(c.metrics, default_metrics());
        assert_eq!(c.sinks[0].queue_size, 1000);
        assert_eq!(c.sinks_of(&c.resources[0]), vec![0]);
    }

    #[test]
    fn unknown_fields_name_file_line_and_field() {
        let e = err(&format!(
            "resources:\n  - resource: db\n    namespace: [a]\n{SINK}"
        ));
        assert!(
            e.starts_with("forward.yaml:3:5: unknown field `namespace`"),
            "{e}"
        );
        let e = err(
            "resources:\n  - resource: db\nsinks:\n  - name: out\n    file:\n      path: x\n      maxsize: 1\n",
        );
        assert!(e.starts_with("forward.yaml:7:7: unknown field `maxsize`"), "{e}");
    }

    #[test]
    fn semantic_errors_are_located() {
        let e = err(&format!(
            "resources:\n  - resource: db\n    sinks: [nope]\n{SINK}"
        ));
        assert!(
            e.starts_with("forward.yaml:3:13: resources[0].sinks: no sink named \"nope\""),
            "{e}"
        );
        let e = err("resources:\n  - resource: db\nsinks:\n  - name: out\n");
        assert!(
            e.contains("forward.yaml:4:11: sinks[0] (out): set exactly one of"),
            "{e}"
        );
        let e = err(&format!(
            "resources:\n  - resource: db\n    events: [added, changed]\n{SINK}"
        ));
        assert!(
            e.contains(":3:") && e.contains("unknown variant `changed`"),
            "{e}"
        );
        let e = err(&format!("resources:\n  - resource: db\n{SINK}metrics: nowhere\n"));
        assert!(e.contains("invalid address \"nowhere\""), "{e}");
        let e = err(&format!(
            "resources:\n  - resource: db\n    fields: [\"spec..x\"]\n{SINK}"
        ));
        assert!(e.starts_with("forward.yaml:3:14: resources[0].fields:"), "{e}");
    }

    #[test]
    fn sources_and_unhealthy_after_are_checked() {
        let e = err(&format!(
            "resources:\n  - resource: db\n    source: https://x/\n{SINK}"
        ));
        assert!(e.contains("set resource or source, not both"), "{e}");
        let e = err(&format!("resources:\n  - namespaces: [a]\n{SINK}"));
        assert!(e.contains("resources[0]: set resource"), "{e}");
        let e = err(&format!("resources:\n  - source: ftp://u:pw@x/\n{SINK}"));
        assert!(
            e.starts_with("forward.yaml:2:13: resources[0].source: unsupported source \"ftp://x/\""),
            "{e}"
        );
        let e = err(&format!(
            "resources:\n  - resource: db\n{SINK}unhealthyAfter: 0s\n"
        ));
        assert!(
            e.starts_with("forward.yaml:7:17: unhealthyAfter: must be between 1s and 1h, not 0s"),
            "{e}"
        );
        let c = ForwardConfig::parse(&format!("resources:\n  - resource: db\n{SINK}"), "f").unwrap();
        assert_eq!(c.unhealthy_after, Duration::from_secs(60));
        if cfg!(feature = "source-webhook") {
            let e = err(&format!(
                "resources:\n  - source: webhook\n    listen: \":9000\"\n    skipExisting: true\n{SINK}"
            ));
            assert!(e.contains("a webhook source has no existing objects"), "{e}");
        }
    }

    /// Every number of the configuration, out of range: an error at the value, naming the
    /// field and its range, never a panic or an allocation of that size.
    #[test]
    fn every_number_is_range_checked_at_its_value() {
        let sink = |extra: &str| {
            format!("resources:\n  - resource: db\nsinks:\n  - name: out\n    file:\n      path: x\n{extra}")
        };
        let cases = [
            (sink("    queueSize: 18446744073709551615\n"), "7:16: queueSize: must be between 1 and 1000000, not 18446744073709551615"),
            (sink("    queueSize: 0\n"), "7:16: queueSize: must be between 1 and 1000000, not 0"),
            (sink("    parallelism: 100000000\n"), "7:18: parallelism: must be between 1 and 1024, not 100000000"),
            (sink("    retry:\n      maxAttempts: 0\n"), "8:20: maxAttempts: must be between 1 and 1000000, not 0"),
            (sink("    retry:\n      initialBackoff: 0s\n"), "8:23: backoff: must be between 1ms and 1day, not 0s"),
            (sink("    retry:\n      maxBackoff: 100000years\n"), "8:19: backoff: must be between 1ms and 1day"),
            (sink("      maxFiles: 1000000000\n"), "7:17: maxFiles: must be between 0 and 1000, not 1000000000"),
            (sink("      maxSize: 1\n"), "7:16: maxSize: must be between 1024 and 1099511627776, not 1"),
            (sink("shutdownGrace: 2h\n"), "7:16: shutdownGrace: must be between 0s and 1h, not 2h"),
            (sink("checkpoint:\n  path: cp\n  interval: 0s\n"), "9:13: interval: must be between 10ms and 1h, not 0s"),
            (
                "resources:\n  - source: https://x/\n    interval: 0s\nsinks:\n  - name: out\n    file:\n      path: x\n"
                    .to_string(),
                "3:15: interval: must be between 100ms and 1day, not 0s",
            ),
        ];
        for (yaml, want) in cases {
            let e = err(&yaml);
            assert!(e.starts_with(&format!("forward.yaml:{want}")), "{yaml}\n→ {e}");
        }
        let e = err(&sink("    queueSize: 4\n    parallelism: 8\n"));
        assert!(
            e.contains("sinks[0].parallelism: 8 is above queueSize (4)"),
            "{e}"
        );
        // The largest values are accepted.
        let c = ForwardConfig::parse(&sink("    queueSize: 1000000\n    parallelism: 1024\n"), "f").unwrap();
        assert_eq!((c.sinks[0].queue_size, c.sinks[0].parallelism), (1_000_000, 1024));
    }

    #[test]
    fn addresses_accept_go_style_and_off() {
        let c = ForwardConfig::parse(
            &format!("resources:\n  - resource: db\n{SINK}metrics: \":9090\"\nprobes: \"off\"\n"),
            "f",
        )
        .unwrap();
        assert_eq!(c.metrics, Address::On(SocketAddr::from(([0, 0, 0, 0], 9090))));
        assert_eq!(c.probes, Address::Off);
    }
}
