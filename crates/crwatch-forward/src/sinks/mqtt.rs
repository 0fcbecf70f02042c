//! The MQTT sink (3.1.1 and 5): publishes each change as a structured CloudEvent (the CloudEvents
//! MQTT binding's structured mode) with QoS 1 to a topic rendered from a template, and counts it
//! delivered only once the broker's PUBACK for that very publish arrived. Optionally it keeps
//! each object's latest state as the topic's retained message and clears it on deletion.
//!
//! One task per sink owns rumqttc's event loop: it connects, reconnects with backoff, and
//! matches PUBACKs to the deliveries waiting for them. rumqttc hands out packet ids when it
//! takes a publish from its request channel, in channel order, and reports each as
//! `Outgoing::Publish(pkid)`; so the deliveries waiting for their packet id form a queue in
//! channel order, and those waiting for their PUBACK a short list keyed by packet id (at most
//! `maxInflight` long). When the connection drops, every waiting delivery fails as retryable,
//! and the publishes rumqttc would resend on its own are dropped instead: the forwarder resends
//! them itself, in order, so a stale copy can never overtake a newer change of the same object.
//! While disconnected, deliveries fail at once (retryable), so nothing queues behind a dead
//! connection.

#![cfg(feature = "mqtt")]

use std::collections::VecDeque;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::bail;
use futures::future::BoxFuture;
use rumqttc::v5::mqttbytes::v5::{PubAckReason, PublishProperties};
use rumqttc::{Outgoing, QoS, TlsConfiguration, Transport};
use serde::{Deserialize, Deserializer};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::sink::{Delivery, Sink, SinkError, Template};

/// The MQTT client library, for tests and tools that read back what the sink published.
pub use rumqttc;

/// The default topic template.
pub const DEFAULT_TOPIC: &str = "crwatch/{group}/{kind}/{namespace}/{name}";

/// The MQTT 5 content type of the published payload (structured mode, JSON event format).
pub const CONTENT_TYPE: &str = "application/cloudevents+json";

/// The largest MQTT packet (the remaining-length field's limit).
const MAX_PACKET: usize = 268_435_455;

/// `keepAlive`: MQTT carries it in seconds in 16 bits.
pub const KEEP_ALIVE: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(65_535));
/// `sessionExpiry` (MQTT 5): 0 ends the session at disconnect; the top is just below "never".
pub const SESSION_EXPIRY: (Duration, Duration) = (Duration::ZERO, Duration::from_secs(4_294_967_294));
/// `maxInflight`: publishes sent and not yet acknowledged.
pub const MAX_INFLIGHT: (u64, u64) = (1, 1000);

/// The `mqtt` section of a sink.
///
/// ```yaml
/// mqtt:
///   url: mqtts://broker.example.com:8883   # mqtt:// (1883) or mqtts:// (8883)
///   protocol: "5"                          # or "3.1.1" (default)
///   topic: crwatch/{group}/{kind}/{namespace}/{name}
///   qos: 1
///   retain: true                           # keep each object's latest state retained
///   username: crwatch
///   passwordFile: /var/run/secrets/mqtt/password   # or password / passwordEnv
///   tls:
///     caFile: /etc/crwatch/mqtt-ca.pem
///   timeout: 10s                           # for the PUBACK
/// ```
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MqttConfig {
    /// Broker URL: `mqtt://host:1883` or `mqtts://host:8883` (also `tcp://`, `ssl://`).
    pub url: String,
    /// `3.1.1` (default) or `5`.
    #[serde(default)]
    pub protocol: MqttProtocol,
    /// Topic template; each variable's value has `/`, `+`, `#` and NUL mapped to `_`
    /// ([`topic_token`]). Default `crwatch/{group}/{kind}/{namespace}/{name}`.
    #[serde(default = "default_topic")]
    pub topic: String,
    /// Quality of service: 1 (at least once, the default and the only one offered: 0 could
    /// lose changes, and the CloudEvent id already lets consumers drop duplicates).
    #[serde(default = "default_qos", deserialize_with = "qos")]
    pub qos: u8,
    /// Client identifier; default `crwatch-<sink name>-<host name>`, stable across restarts so
    /// a restarted forwarder resumes its session.
    #[serde(default)]
    pub client_id: Option<String>,
    /// Start a new session on every connect (`cleanSession` in 3.1.1, `cleanStart` in 5).
    /// Default false.
    #[serde(default, alias = "cleanStart")]
    pub clean_session: bool,
    /// MQTT 5: how long the broker keeps the session after a disconnect (0s to ~136 years).
    /// Default 1h.
    #[serde(default = "default_session_expiry", deserialize_with = "session_expiry")]
    pub session_expiry: Duration,
    /// User name.
    #[serde(default)]
    pub username: Option<String>,
    /// Password, inline (prefer `passwordFile` or `passwordEnv`).
    #[serde(default)]
    pub password: Option<String>,
    /// File holding the password (a trailing newline is ignored).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// TLS settings (for `mqtts://`).
    #[serde(default)]
    pub tls: Option<MqttTlsConfig>,
    /// Publish each change retained, so a new subscriber gets every object's latest state at
    /// once; a deletion is published (not retained) and then the retained message is cleared
    /// with an empty retained publish. Needs `{name}` in the topic. Default false.
    #[serde(default)]
    pub retain: bool,
    /// Keep-alive interval (1s to 65535s). Default 30s.
    #[serde(default = "default_keep_alive", deserialize_with = "keep_alive")]
    pub keep_alive: Duration,
    /// Limit for connecting and for the broker's PUBACK. Default 10s.
    #[serde(
        default = "default_timeout",
        deserialize_with = "crate::config::bounds::timeout"
    )]
    pub timeout: Duration,
    /// Publishes sent and not yet acknowledged (1 to 1000). Default 100.
    #[serde(default = "default_inflight", deserialize_with = "max_inflight")]
    pub max_inflight: u16,
}

/// The MQTT protocol version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MqttProtocol {
    /// MQTT 3.1.1.
    #[default]
    V311,
    /// MQTT 5.
    V5,
}

impl<'de> Deserialize<'de> for MqttProtocol {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // `protocol: 5` is a number in YAML, `protocol: 3.1.1` a string.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Float(f64),
            Text(String),
        }
        let text = match Raw::deserialize(d)? {
            Raw::Int(n) => n.to_string(),
            Raw::Float(f) => f.to_string(),
            Raw::Text(s) => s,
        };
        match text.trim() {
            "3.1.1" => Ok(MqttProtocol::V311),
            "5" | "5.0" => Ok(MqttProtocol::V5),
            other => Err(serde::de::Error::custom(format!(
                "protocol: must be \"3.1.1\" or \"5\", not {other:?}"
            ))),
        }
    }
}

/// TLS settings of the MQTT sink.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MqttTlsConfig {
    /// CA certificates (PEM) to trust instead of the system's.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM chain) for brokers that require one; needs `keyFile`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Accept any broker certificate. For testing only; excludes `caFile`.
    #[serde(default)]
    pub insecure_skip_verify: bool,
    /// The name the broker's certificate must carry; default the URL's host.
    #[serde(default)]
    pub server_name: Option<String>,
}

fn default_topic() -> String {
    DEFAULT_TOPIC.to_string()
}

fn default_qos() -> u8 {
    1
}

fn default_session_expiry() -> Duration {
    Duration::from_secs(3600)
}

fn default_keep_alive() -> Duration {
    Duration::from_secs(30)
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_inflight() -> u16 {
    100
}

/// `qos`: only 1 is offered, with a reason for the others.
fn qos<'de, D: Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
    match u64::deserialize(d)? {
        1 => Ok(1),
        0 => Err(serde::de::Error::custom(
            "qos: 0 (at most once) could lose changes, and the forwarder delivers at least once: use 1",
        )),
        2 => Err(serde::de::Error::custom(
            "qos: 2 is not supported: use 1 (the CloudEvent id lets consumers drop the rare duplicate)",
        )),
        v => Err(serde::de::Error::custom(format!("qos: must be 1, not {v}"))),
    }
}

use crate::config::bounds::duration as bounded;

fn keep_alive<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let v = bounded(d, "keepAlive", KEEP_ALIVE)?;
    // MQTT counts whole seconds.
    Ok(Duration::from_secs(v.as_secs()))
}

fn session_expiry<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    bounded(d, "sessionExpiry", SESSION_EXPIRY)
}

fn max_inflight<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    let v = u64::deserialize(d)?;
    let (min, max) = MAX_INFLIGHT;
    if v < min || v > max {
        return Err(serde::de::Error::custom(format!(
            "maxInflight: must be between {min} and {max}, not {v}"
        )));
    }
    // At most 1000: fits.
    Ok(v as u16)
}

impl fmt::Debug for MqttConfig {
    // The password never shows.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MqttConfig")
            .field("url", &self.url)
            .field("protocol", &self.protocol)
            .field("topic", &self.topic)
            .field("qos", &self.qos)
            .field("client_id", &self.client_id)
            .field("clean_session", &self.clean_session)
            .field("session_expiry", &self.session_expiry)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("password_file", &self.password_file)
            .field("password_env", &self.password_env)
            .field("tls", &self.tls)
            .field("retain", &self.retain)
            .field("keep_alive", &self.keep_alive)
            .field("timeout", &self.timeout)
            .field("max_inflight", &self.max_inflight)
            .finish()
    }
}

/// Where the broker is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAddress {
    /// Host name or IP address (without brackets).
    pub host: String,
    /// Port.
    pub port: u16,
    /// `mqtts://`.
    pub tls: bool,
}

/// Parse `mqtt://host[:port]` or `mqtts://host[:port]` (`tcp://` and `ssl://` too). Credentials
/// in the URL are refused, so they cannot end up in logs: use `username` and `passwordFile`.
pub fn parse_url(url: &str) -> Result<BrokerAddress, String> {
    let expected = "expected mqtt://host:port or mqtts://host:port";
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("mqtt.url: {expected}, not {url:?}"))?;
    let tls = match scheme.to_ascii_lowercase().as_str() {
        "mqtt" | "tcp" => false,
        "mqtts" | "ssl" => true,
        other => {
            return Err(format!("mqtt.url: unknown scheme {other:?}: {expected}"));
        }
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains('@') {
        return Err(
            "mqtt.url: credentials in the URL are not accepted (they would show in logs): \
             use username with passwordFile, passwordEnv or password"
                .into(),
        );
    }
    if authority.contains(['/', '?', '#']) {
        return Err(format!(
            "mqtt.url: no path or query is allowed: {expected}, not {url:?}"
        ));
    }
    let default_port = if tls { 8883 } else { 1883 };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("mqtt.url: unclosed '[' in {url:?}"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(format!("mqtt.url: {expected}, not {url:?}")),
        };
        (host.to_string(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host.to_string(), Some(port)),
            None => (authority.to_string(), None),
        }
    };
    if host.is_empty() {
        return Err(format!("mqtt.url: no host in {url:?}"));
    }
    let port = match port {
        None => default_port,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("mqtt.url: port must be between 1 and 65535, not {p:?}"))?,
    };
    Ok(BrokerAddress { host, port, tls })
}

impl MqttConfig {
    /// Check what can be checked without connecting: the URL, the topic template, the
    /// consistency of credentials, TLS and `retain`. Numbers are range-checked while parsing.
    pub fn validate(&self) -> Result<BrokerAddress, String> {
        let address = parse_url(&self.url)?;
        if self.topic.is_empty() {
            return Err("mqtt.topic must not be empty".into());
        }
        Template::parse(&self.topic).map_err(|e| format!("mqtt.topic: {e}"))?;
        if self.topic.contains(['+', '#', '\0']) {
            return Err(format!(
                "mqtt.topic: {:?} holds a wildcard (+, #) or NUL, which a published topic may not",
                self.topic
            ));
        }
        if self.topic.starts_with('$') {
            return Err("mqtt.topic: topics starting with $ are reserved for the broker".into());
        }
        if self.retain && !self.topic.contains("{name}") {
            return Err(
                "mqtt.retain: the topic must contain {name} (one retained message per object), \
                 or an object's deletion would clear another object's state"
                    .into(),
            );
        }
        if self.client_id.as_deref().is_some_and(|c| c.trim().is_empty()) {
            return Err("mqtt.clientId must not be empty; omit it for the default".into());
        }
        let passwords = self.password.is_some() as u8
            + self.password_file.is_some() as u8
            + self.password_env.is_some() as u8;
        if passwords > 1 {
            return Err("mqtt: set one of password, passwordFile, passwordEnv".into());
        }
        if passwords == 1 && self.username.is_none() {
            return Err("mqtt: a password needs a username".into());
        }
        if let Some(tls) = &self.tls {
            if !address.tls {
                return Err("mqtt.tls: TLS settings need an mqtts:// URL".into());
            }
            if tls.insecure_skip_verify && tls.ca_file.is_some() {
                return Err("mqtt.tls: caFile and insecureSkipVerify cannot both be set".into());
            }
            if tls.cert_file.is_some() != tls.key_file.is_some() {
                return Err("mqtt.tls: certFile and keyFile go together".into());
            }
            if tls
                .server_name
                .as_deref()
                .is_some_and(|n| rustls::pki_types::ServerName::try_from(n).is_err())
            {
                return Err("mqtt.tls.serverName: not a valid DNS name or IP address".into());
            }
        }
        Ok(address)
    }

    /// The password, read from the file or environment variable if so configured.
    fn resolve_password(&self) -> anyhow::Result<Option<String>> {
        crate::secret::read(
            self.password.as_deref(),
            self.password_file.as_deref(),
            self.password_env.as_deref(),
            "mqtt.password",
        )
    }

    /// The configured client id, or `crwatch-<sink>-<host>` (`crwatch-<host>-<hash>` without a
    /// sink name, the hash over URL, topic and user so that two sinks differ).
    fn client_id_for(&self, sink: &str) -> String {
        if let Some(id) = &self.client_id {
            return id.clone();
        }
        let host = hostname();
        let raw = if sink.is_empty() {
            let key = format!(
                "{}\n{}\n{}",
                self.url,
                self.topic,
                self.username.as_deref().unwrap_or_default()
            );
            format!("crwatch-{host}-{:08x}", fnv1a(key.as_bytes()) as u32)
        } else {
            format!("crwatch-{sink}-{host}")
        };
        raw.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    }
}

/// The machine's host name (Linux), else `$HOSTNAME`, else `localhost`.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
        .unwrap_or_else(|| "localhost".to_string())
}

/// FNV-1a: a hash that stays the same across Rust versions (the default hasher may not).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Make a value safe as part of an MQTT topic: `/` (the level separator), the wildcards `+` and
/// `#`, and NUL become `_`, and an empty value becomes `_` (an empty level would merge with its
/// neighbour in subscribers' eyes).
pub fn topic_token(value: &str) -> String {
    if value.is_empty() {
        return "_".to_string();
    }
    value
        .chars()
        .map(|c| {
            if matches!(c, '/' | '+' | '#' | '\0') {
                '_'
            } else {
                c
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// TLS

/// The rustls client configuration ([`crwatch::tls::ClientTls`]): the CA file instead of the
/// system's CAs (or no verification), an optional client certificate, and an optional name to
/// verify against; errors name the `mqtt.tls` setting.
fn client_tls(tls: &MqttTlsConfig) -> anyhow::Result<rustls::ClientConfig> {
    use crwatch::tls::{ClientTls, TlsError};
    if tls.insecure_skip_verify {
        tracing::warn!("mqtt sink: TLS certificate verification is disabled (tls.insecureSkipVerify)");
    }
    let client_cert = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => Some((cert.as_path(), key.as_path())),
        _ => None,
    };
    ClientTls {
        ca_file: tls.ca_file.as_deref(),
        system_roots: tls.ca_file.is_none(),
        insecure: tls.insecure_skip_verify,
        server_name: tls.server_name.as_deref(),
        client_cert,
        alpn: &[],
    }
    .build()
    .map_err(|e| match e {
        TlsError::CaFile { path, reason } => {
            anyhow::anyhow!("reading mqtt.tls.caFile {}: {reason}", path.display())
        }
        TlsError::EmptyCaFile(path) => {
            anyhow::anyhow!("mqtt.tls.caFile {} holds no PEM certificates", path.display())
        }
        TlsError::NoRoots => anyhow::anyhow!(
            "mqtt.tls: no trusted CA certificates: the system has none (see SSL_CERT_FILE, \
             SSL_CERT_DIR) and tls.caFile is not set"
        ),
        TlsError::ServerName(name) => {
            anyhow::anyhow!("mqtt.tls.serverName: {name:?} is not a valid DNS name or IP address")
        }
        TlsError::ClientCert { path, reason } => {
            anyhow::anyhow!("reading mqtt.tls.certFile/keyFile {}: {reason}", path.display())
        }
        TlsError::ClientKey(reason) => {
            anyhow::anyhow!("mqtt.tls: the client certificate and key do not fit together: {reason}")
        }
        other => anyhow::Error::new(other).context("mqtt.tls"),
    })
}

// ---------------------------------------------------------------------------------------------
// The two protocol versions behind one face.

/// rumqttc's client handle (the request channel into the event loop).
enum Client {
    V4(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

/// rumqttc's event loop.
enum Loop {
    V4(Box<rumqttc::EventLoop>),
    V5(Box<rumqttc::v5::EventLoop>),
}

/// What the driver needs to know of an event.
enum Event {
    Connected {
        session_present: bool,
    },
    /// A publish taken from the request channel got this packet id.
    Sent(u16),
    /// The broker's PUBACK, with what it means for the delivery.
    Acked(u16, Result<(), SinkError>),
    Other,
}

/// A connection failure, worded for logs and errors; `fatal` when retrying cannot help without
/// a configuration change (refused credentials, an untrusted certificate).
struct Failure {
    message: String,
    fatal: bool,
}

/// One publish: topic, payload, retained or not, and the MQTT 5 properties.
struct Message {
    topic: String,
    payload: Vec<u8>,
    retain: bool,
    properties: Option<PublishProperties>,
}

impl Client {
    fn try_publish(&self, m: Message) -> Result<(), String> {
        match self {
            Client::V4(c) => c
                .try_publish(m.topic, QoS::AtLeastOnce, m.retain, m.payload)
                .map_err(|e| e.to_string()),
            Client::V5(c) => {
                let qos = rumqttc::v5::mqttbytes::QoS::AtLeastOnce;
                match m.properties {
                    Some(p) => c.try_publish_with_properties(m.topic, qos, m.retain, m.payload, p),
                    None => c.try_publish(m.topic, qos, m.retain, m.payload),
                }
                .map_err(|e| e.to_string())
            }
        }
    }
}

impl Loop {
    async fn poll(&mut self) -> Result<Event, Failure> {
        match self {
            Loop::V4(l) => match l.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(ack))) => Ok(Event::Connected {
                    session_present: ack.session_present,
                }),
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(ack))) => {
                    Ok(Event::Acked(ack.pkid, Ok(())))
                }
                Ok(rumqttc::Event::Outgoing(Outgoing::Publish(pkid))) => Ok(Event::Sent(pkid)),
                Ok(_) => Ok(Event::Other),
                Err(e) => Err(describe_v4(e)),
            },
            Loop::V5(l) => {
                use rumqttc::v5::mqttbytes::v5::Packet;
                match l.poll().await {
                    Ok(rumqttc::v5::Event::Incoming(Packet::ConnAck(ack))) => Ok(Event::Connected {
                        session_present: ack.session_present,
                    }),
                    Ok(rumqttc::v5::Event::Incoming(Packet::PubAck(ack))) => {
                        Ok(Event::Acked(ack.pkid, puback_v5(ack.reason)))
                    }
                    Ok(rumqttc::v5::Event::Outgoing(Outgoing::Publish(pkid))) => Ok(Event::Sent(pkid)),
                    Ok(_) => Ok(Event::Other),
                    Err(e) => Err(describe_v5(e)),
                }
            }
        }
    }

    /// Forget what the lost connection left: rumqttc would resend unacknowledged publishes and
    /// the requests still in its channel after reconnecting, and hand out events it buffered
    /// from the old connection; the forwarder resends the publishes itself instead, and stale
    /// packet ids must not be matched to new deliveries.
    fn forget(&mut self) {
        match self {
            Loop::V4(l) => {
                l.clean();
                l.pending.clear();
                l.state.events.clear();
            }
            Loop::V5(l) => {
                l.clean();
                l.pending.clear();
                l.state.events.clear();
            }
        }
    }
}

fn puback_v5(reason: PubAckReason) -> Result<(), SinkError> {
    match reason {
        PubAckReason::Success | PubAckReason::NoMatchingSubscribers => Ok(()),
        PubAckReason::NotAuthorized | PubAckReason::TopicNameInvalid | PubAckReason::PayloadFormatInvalid => {
            Err(SinkError::Permanent(format!(
                "the broker refused the publish (PUBACK reason {reason:?})"
            )))
        }
        other => Err(SinkError::Retryable(format!(
            "the broker did not accept the publish (PUBACK reason {other:?})"
        ))),
    }
}

/// Whether an I/O error carries a rustls error (a TLS handshake refused, as opposed to a
/// connection that broke).
fn rustls_error(e: &std::io::Error) -> Option<&rustls::Error> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
}

fn describe_io(e: &std::io::Error) -> Failure {
    if let Some(tls) = rustls_error(e) {
        return describe_rustls(tls);
    }
    let message = match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused (is the broker running?)".to_string(),
        std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset => {
            format!("the broker closed the connection ({e})")
        }
        _ => format!("I/O error: {e}"),
    };
    Failure {
        message,
        fatal: false,
    }
}

fn describe_rustls(e: &rustls::Error) -> Failure {
    use rustls::AlertDescription as A;
    let hint = match e {
        rustls::Error::InvalidCertificate(_) => {
            " (trusted CAs: tls.caFile if set, else the system's; the certificate must name the \
             URL's host or tls.serverName)"
        }
        rustls::Error::AlertReceived(A::CertificateRequired) => {
            " (the broker requires a client certificate: set tls.certFile and tls.keyFile)"
        }
        rustls::Error::AlertReceived(A::BadCertificate | A::UnknownCA | A::CertificateUnknown) => {
            " (the broker refused the client certificate, tls.certFile)"
        }
        _ => "",
    };
    let fatal = matches!(
        e,
        rustls::Error::InvalidCertificate(_)
            | rustls::Error::AlertReceived(
                A::CertificateRequired | A::BadCertificate | A::UnknownCA | A::CertificateUnknown
            )
    );
    Failure {
        message: format!("TLS handshake failed: {e}{hint}"),
        fatal,
    }
}

/// The rustls error somewhere in `e`'s causes: a TLS alert can surface while rumqttc reads the
/// CONNACK (TLS 1.3 brokers check client certificates after the handshake), deep in its errors.
fn rustls_cause<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut next = Some(e);
    while let Some(err) = next {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(tls) = err.downcast_ref::<std::io::Error>().and_then(rustls_error) {
            return Some(tls);
        }
        next = err.source();
    }
    None
}

fn describe_tls(e: &rumqttc::TlsError) -> Failure {
    match e {
        rumqttc::TlsError::Io(io) => match rustls_error(io) {
            Some(tls) => describe_rustls(tls),
            None => Failure {
                message: format!("TLS handshake failed: {io}"),
                fatal: false,
            },
        },
        rumqttc::TlsError::TLS(tls) => describe_rustls(tls),
        other => Failure {
            message: format!("TLS: {other}"),
            fatal: true,
        },
    }
}

/// A refusal in the CONNACK: which code, and whether configuration must change.
fn refused(code: &str, number: Option<u8>) -> Failure {
    let fatal = matches!(
        code,
        "BadUserNamePassword"
            | "NotAuthorized"
            | "BadClientId"
            | "ClientIdentifierNotValid"
            | "RefusedProtocolVersion"
            | "UnsupportedProtocolVersion"
            | "Banned"
            | "BadAuthenticationMethod"
    );
    let hint = match code {
        "BadUserNamePassword" => ": check username and the password",
        "NotAuthorized" => ": the broker does not allow this client (credentials or ACL)",
        "BadClientId" | "ClientIdentifierNotValid" => ": check clientId",
        "RefusedProtocolVersion" | "UnsupportedProtocolVersion" => ": try another protocol",
        _ => "",
    };
    let number = number.map(|n| format!(" {n}")).unwrap_or_default();
    Failure {
        message: format!("the broker refused the connection: CONNACK code{number} {code}{hint}"),
        fatal,
    }
}

fn describe_v4(e: rumqttc::ConnectionError) -> Failure {
    use rumqttc::ConnectionError as E;
    if let Some(tls) = rustls_cause(&e) {
        return describe_rustls(tls);
    }
    match &e {
        E::ConnectionRefused(code) => refused(&format!("{code:?}"), Some(*code as u8)),
        E::Io(io) => describe_io(io),
        E::Tls(tls) => describe_tls(tls),
        E::NetworkTimeout => Failure {
            message: "no connection within the timeout".into(),
            fatal: false,
        },
        E::MqttState(rumqttc::StateError::AwaitPingResp) => Failure {
            message: "the broker stopped answering pings".into(),
            fatal: false,
        },
        E::MqttState(rumqttc::StateError::Io(io)) => describe_io(io),
        _ => Failure {
            message: e.to_string(),
            fatal: false,
        },
    }
}

fn describe_v5(e: rumqttc::v5::ConnectionError) -> Failure {
    use rumqttc::v5::ConnectionError as E;
    use rumqttc::v5::StateError as S;
    if let Some(tls) = rustls_cause(&e) {
        return describe_rustls(tls);
    }
    // This one does not name its cause as its source.
    if let E::MqttState(S::Deserialization(inner)) = &e
        && let Some(tls) = rustls_cause(inner)
    {
        return describe_rustls(tls);
    }
    match &e {
        E::ConnectionRefused(code) => refused(&format!("{code:?}"), None),
        E::MqttState(S::ConnFail { reason }) => refused(&format!("{reason:?}"), None),
        E::Io(io) => describe_io(io),
        E::Tls(tls) => describe_tls(tls),
        E::Timeout(_) => Failure {
            message: "no connection within the timeout".into(),
            fatal: false,
        },
        E::MqttState(S::AwaitPingResp) => Failure {
            message: "the broker stopped answering pings".into(),
            fatal: false,
        },
        E::MqttState(S::Io(io)) => describe_io(io),
        E::MqttState(S::ServerDisconnect {
            reason_code,
            reason_string,
        }) => Failure {
            message: format!(
                "the broker disconnected: {reason_code:?}{}",
                reason_string
                    .as_deref()
                    .map(|s| format!(" ({s})"))
                    .unwrap_or_default()
            ),
            fatal: false,
        },
        _ => Failure {
            message: e.to_string(),
            fatal: false,
        },
    }
}

// ---------------------------------------------------------------------------------------------
// The sink

type Waiter = oneshot::Sender<Result<(), SinkError>>;

/// What deliveries and the driver share (under a std mutex, never held across an await).
struct Link {
    client: Client,
    connected: bool,
    last_error: Option<String>,
    /// Deliveries whose publish is in rumqttc's request channel, in channel order, each with
    /// its slot in the channel (released once rumqttc took the publish out).
    unsent: VecDeque<(Waiter, OwnedSemaphorePermit)>,
    /// Deliveries whose publish went out with this packet id, waiting for the PUBACK.
    sent: Vec<(u16, Waiter)>,
}

impl Link {
    /// Fail every waiting delivery: the connection they were sent on is gone.
    fn fail_all(&mut self, why: &str) {
        let unsent = self.unsent.drain(..).map(|(w, _slot)| w);
        for waiter in unsent.chain(self.sent.drain(..).map(|(_, w)| w)) {
            let _ = waiter.send(Err(SinkError::Retryable(why.to_string())));
        }
    }
}

/// The connection state connect() waits on.
#[derive(Clone)]
enum Status {
    Connecting,
    Connected,
    Failed { message: String, fatal: bool },
}

/// Publishes deliveries to an MQTT broker with QoS 1. One attempt per [`Sink::deliver`] call;
/// concurrent attempts share one connection, kept by a background task.
pub struct MqttSink {
    link: Arc<Mutex<Link>>,
    /// Slots in rumqttc's request channel.
    slots: Arc<Semaphore>,
    slots_total: usize,
    topic: Template,
    retain: bool,
    v5: bool,
    timeout: Duration,
    url: String,
    client_id: String,
    stop: CancellationToken,
}

impl fmt::Debug for MqttSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MqttSink")
            .field("url", &self.url)
            .field("client_id", &self.client_id)
            .field("topic", &self.topic)
            .field("retain", &self.retain)
            .field("v5", &self.v5)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Drop for MqttSink {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn lock(link: &Mutex<Link>) -> MutexGuard<'_, Link> {
    // A panic while holding the lock leaves consistent data (every step is a push or a pop).
    link.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl MqttSink {
    /// Everything [`connect_named`](Self::connect_named) checks before it dials: the
    /// configuration, the topic template, the password and the TLS files.
    pub fn check(config: &MqttConfig) -> anyhow::Result<()> {
        let address = config.validate().map_err(anyhow::Error::msg)?;
        Template::parse(&config.topic).map_err(anyhow::Error::msg)?;
        config.resolve_password()?;
        if address.tls {
            client_tls(&config.tls.clone().unwrap_or_default())?;
        }
        Ok(())
    }

    /// [`connect_named`](Self::connect_named) without a sink name (the default client id is
    /// then derived from the host name, URL, topic and user).
    pub async fn connect(config: &MqttConfig) -> anyhow::Result<Self> {
        Self::connect_named(config, "").await
    }

    /// Validate `config`, read its secrets and files, start the connection task and wait (up
    /// to `timeout`) for the first outcome. A broker that cannot be reached does not fail this:
    /// the task keeps trying with backoff and deliveries are retryable until it is up. A broker
    /// that refuses the credentials or presents an untrusted certificate does.
    pub async fn connect_named(config: &MqttConfig, sink: &str) -> anyhow::Result<Self> {
        let address = config.validate().map_err(anyhow::Error::msg)?;
        let topic = Template::parse(&config.topic).map_err(anyhow::Error::msg)?;
        let password = config.resolve_password()?;
        let client_id = config.client_id_for(sink);
        let transport = if address.tls {
            let tls = client_tls(&config.tls.clone().unwrap_or_default())?;
            Some(Transport::tls_with_config(TlsConfiguration::Rustls(Arc::new(
                tls,
            ))))
        } else {
            None
        };
        let inflight = config.max_inflight;
        // The channel holds at most as many publishes as may be in flight: more would only wait.
        let capacity = usize::from(inflight);
        let connect_secs = config.timeout.as_secs().max(1);
        let (client, event_loop) = match config.protocol {
            MqttProtocol::V311 => {
                let mut o = rumqttc::MqttOptions::new(&client_id, &address.host, address.port);
                o.set_keep_alive(config.keep_alive)
                    .set_clean_session(config.clean_session)
                    .set_inflight(inflight)
                    .set_max_packet_size(64 * 1024, MAX_PACKET);
                if let Some(t) = transport {
                    o.set_transport(t);
                }
                if let Some(user) = &config.username {
                    o.set_credentials(user, password.clone().unwrap_or_default());
                }
                let (client, mut event_loop) = rumqttc::AsyncClient::new(o, capacity);
                event_loop.network_options.set_connection_timeout(connect_secs);
                (Client::V4(client), Loop::V4(Box::new(event_loop)))
            }
            MqttProtocol::V5 => {
                let mut o = rumqttc::v5::MqttOptions::new(&client_id, &address.host, address.port);
                let expiry = u32::try_from(config.session_expiry.as_secs()).unwrap_or(u32::MAX - 1);
                o.set_keep_alive(config.keep_alive)
                    .set_clean_start(config.clean_session)
                    .set_session_expiry_interval(Some(expiry))
                    .set_outgoing_inflight_upper_limit(inflight)
                    .set_max_packet_size(Some(64 * 1024))
                    .set_connection_timeout(connect_secs);
                if let Some(t) = transport {
                    o.set_transport(t);
                }
                if let Some(user) = &config.username {
                    o.set_credentials(user, password.clone().unwrap_or_default());
                }
                let (client, event_loop) = rumqttc::v5::AsyncClient::new(o, capacity);
                (Client::V5(client), Loop::V5(Box::new(event_loop)))
            }
        };
        let url = config.url.clone();
        let link = Arc::new(Mutex::new(Link {
            client,
            connected: false,
            last_error: None,
            unsent: VecDeque::new(),
            sent: Vec::new(),
        }));
        let stop = CancellationToken::new();
        let (status_tx, mut status) = watch::channel(Status::Connecting);
        tokio::spawn(drive(
            event_loop,
            link.clone(),
            status_tx,
            stop.clone(),
            url.clone(),
        ));
        let sink = Self {
            link,
            slots: Arc::new(Semaphore::new(capacity)),
            slots_total: capacity,
            topic,
            retain: config.retain,
            v5: config.protocol == MqttProtocol::V5,
            timeout: config.timeout,
            url: url.clone(),
            client_id,
            stop,
        };
        let first = tokio::time::timeout(
            config.timeout,
            status.wait_for(|s| !matches!(s, Status::Connecting)),
        )
        .await;
        match first.map(|r| r.map(|s| s.clone())) {
            Ok(Ok(Status::Failed { message, fatal: true })) => {
                bail!("connecting to {url}: {message}")
            }
            Ok(Ok(Status::Failed { message, .. })) => {
                tracing::warn!(%url, "MQTT broker not reachable yet, retrying in the background: {message}");
            }
            Ok(Ok(Status::Connected)) => {}
            _ => tracing::warn!(
                %url,
                "MQTT broker not connected within {}, retrying in the background",
                humantime::format_duration(config.timeout)
            ),
        }
        Ok(sink)
    }

    /// The topic `delivery` is published to.
    pub fn topic_for(&self, delivery: &Delivery) -> String {
        self.topic.render(&delivery.vars, topic_token)
    }

    /// The client identifier the sink connects with.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// Whether the connection is up.
    pub fn is_connected(&self) -> bool {
        lock(&self.link).connected
    }

    /// MQTT 5 publish properties of the structured mode: the content type of the JSON event
    /// format, a UTF-8 payload, and (as the binding allows) the event's attributes but `data`
    /// as user properties, so brokers and consumers can route and de-duplicate on them.
    fn properties(&self, event: &serde_json::Value) -> PublishProperties {
        let mut user_properties = Vec::new();
        if let Some(attributes) = event.as_object() {
            for (name, value) in attributes {
                if matches!(name.as_str(), "data" | "data_base64" | "datacontenttype") {
                    continue;
                }
                let value = match value {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Null => continue,
                    other => other.to_string(),
                };
                user_properties.push((name.clone(), value));
            }
        }
        PublishProperties {
            payload_format_indicator: Some(1),
            content_type: Some(CONTENT_TYPE.to_string()),
            user_properties,
            ..Default::default()
        }
    }

    /// Publish one message and wait for its PUBACK.
    async fn publish(&self, message: Message) -> Result<(), SinkError> {
        let topic = message.topic.clone();
        let deadline = tokio::time::Instant::now() + self.timeout;
        // A slot in rumqttc's request channel: more concurrent deliveries than it holds wait
        // here (within the timeout) instead of failing.
        let slot = match tokio::time::timeout_at(deadline, self.slots.clone().acquire_owned()).await {
            Ok(Ok(slot)) => slot,
            _ => {
                return Err(SinkError::Retryable(format!(
                    "MQTT publish to {topic}: {} publishes already waiting for {}",
                    self.slots_total,
                    humantime::format_duration(self.timeout)
                )));
            }
        };
        let receiver = {
            let mut link = lock(&self.link);
            if !link.connected {
                let why = link
                    .last_error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default();
                return Err(SinkError::Retryable(format!(
                    "MQTT broker {} is not connected{why}; not publishing to {topic}",
                    self.url
                )));
            }
            let (tx, rx) = oneshot::channel();
            // Under the lock, so the waiters' order is the channel's order.
            link.unsent.push_back((tx, slot));
            if let Err(e) = link.client.try_publish(message) {
                link.unsent.pop_back();
                return Err(SinkError::Retryable(format!(
                    "MQTT publish to {topic} not queued: {e}"
                )));
            }
            rx
        };
        match tokio::time::timeout_at(deadline, receiver).await {
            Ok(Ok(result)) => result.map_err(|e| match e {
                SinkError::Retryable(m) => SinkError::Retryable(format!("MQTT publish to {topic}: {m}")),
                SinkError::Permanent(m) => SinkError::Permanent(format!("MQTT publish to {topic}: {m}")),
            }),
            Ok(Err(_)) => Err(SinkError::Retryable(format!(
                "MQTT publish to {topic}: the connection task ended"
            ))),
            // The waiter stays queued until its packet id or the disconnect comes, so the
            // queue keeps matching rumqttc's channel.
            Err(_) => Err(SinkError::Retryable(format!(
                "no PUBACK from {} for {topic} within {}",
                self.url,
                humantime::format_duration(self.timeout)
            ))),
        }
    }

    async fn deliver_one(&self, delivery: &Delivery) -> Result<(), SinkError> {
        let topic = self.topic_for(delivery);
        let payload = serde_json::to_vec(&*delivery.event)
            .map_err(|e| SinkError::Permanent(format!("serializing the CloudEvent: {e}")))?;
        if payload.len() + topic.len() + 1024 > MAX_PACKET {
            return Err(SinkError::Permanent(format!(
                "the CloudEvent ({} bytes) is too big for one MQTT message",
                payload.len()
            )));
        }
        let properties = self.v5.then(|| self.properties(&delivery.event));
        let deleted = delivery.vars.event == "deleted";
        self.publish(Message {
            topic: topic.clone(),
            payload,
            retain: self.retain && !deleted,
            properties,
        })
        .await?;
        if self.retain && deleted {
            // An empty retained message removes the retained one (MQTT 3.1.1 §3.3.1.3, 5 §3.3.1.3).
            self.publish(Message {
                topic,
                payload: Vec::new(),
                retain: true,
                properties: None,
            })
            .await?;
        }
        Ok(())
    }
}

impl Sink for MqttSink {
    fn deliver<'a>(&'a self, delivery: &'a Delivery) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(self.deliver_one(delivery))
    }
}

/// First and longest pause between connection attempts.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));

/// The connection task: polls rumqttc's event loop (which connects and reconnects), matches
/// packet ids and PUBACKs to waiting deliveries, fails them all when the connection drops, and
/// pauses with exponential backoff between attempts. Ends when the sink is dropped.
async fn drive(
    mut event_loop: Loop,
    link: Arc<Mutex<Link>>,
    status: watch::Sender<Status>,
    stop: CancellationToken,
    url: String,
) {
    let mut backoff = BACKOFF.0;
    let mut was_connected = false;
    let mut last_logged: Option<String> = None;
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => break,
            event = event_loop.poll() => event,
        };
        match event {
            Ok(Event::Connected { session_present }) => {
                {
                    let mut l = lock(&link);
                    l.connected = true;
                    l.last_error = None;
                }
                backoff = BACKOFF.0;
                was_connected = true;
                last_logged = None;
                tracing::info!(%url, session_present, "MQTT connected");
                status.send_replace(Status::Connected);
            }
            Ok(Event::Sent(pkid)) => {
                let mut l = lock(&link);
                if let Some((waiter, _slot)) = l.unsent.pop_front() {
                    l.sent.push((pkid, waiter));
                }
            }
            Ok(Event::Acked(pkid, result)) => {
                let mut l = lock(&link);
                // The oldest with this id: after a packet-id collision the newer one waits.
                if let Some(i) = l.sent.iter().position(|(p, _)| *p == pkid) {
                    let (_, waiter) = l.sent.remove(i);
                    let _ = waiter.send(result);
                }
            }
            Ok(Event::Other) => {}
            Err(failure) => {
                {
                    let mut l = lock(&link);
                    event_loop.forget();
                    l.connected = false;
                    l.last_error = Some(failure.message.clone());
                    l.fail_all(&format!(
                        "the connection to {url} was lost before the broker acknowledged: {}",
                        failure.message
                    ));
                }
                if was_connected {
                    tracing::warn!(%url, "MQTT connection lost: {}", failure.message);
                    was_connected = false;
                    last_logged = Some(failure.message.clone());
                } else if last_logged.as_deref() != Some(failure.message.as_str()) {
                    tracing::warn!(%url, "MQTT connection failed: {}", failure.message);
                    last_logged = Some(failure.message.clone());
                } else {
                    tracing::debug!(%url, "MQTT connection failed: {}", failure.message);
                }
                status.send_replace(Status::Failed {
                    message: failure.message,
                    fatal: failure.fatal,
                });
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF.1);
            }
        }
    }
    let mut l = lock(&link);
    l.connected = false;
    l.fail_all("the MQTT sink is shutting down");
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use rumqttc::v5::mqttbytes::v5::{Filter, Packet};
    use tokio::sync::{OnceCell, mpsc};

    use super::*;
    use crate::sink::TemplateVars;
    use crwatch_testsupport::mosquitto::{Mosquitto, MosquittoOptions, MosquittoTls};

    static BROKER: OnceCell<Mosquitto> = OnceCell::const_new();

    async fn broker() -> &'static Mosquitto {
        BROKER
            .get_or_init(|| async { Mosquitto::start().await.expect("starting mosquitto") })
            .await
    }

    fn parse(yaml: &str) -> MqttConfig {
        serde_saphyr::from_str(yaml).unwrap()
    }

    /// The error a configuration gets, from parsing or from validation.
    fn error(yaml: &str) -> String {
        match serde_saphyr::from_str::<MqttConfig>(yaml) {
            Err(e) => e.to_string(),
            Ok(c) => c.validate().expect_err("expected an invalid configuration"),
        }
    }

    fn delivery(id: &str, name: &str, event: &str) -> Delivery {
        Delivery {
            id: id.to_string(),
            event: Arc::new(serde_json::json!({
                "specversion": "1.0",
                "id": id,
                "source": "/apis/stable.example.com/v1/namespaces/default/databases",
                "type": format!("io.crwatch.resource.{event}"),
                "subject": format!("default/{name}"),
                "time": "2025-01-02T03:04:05Z",
                "datacontenttype": "application/json",
                "data": {"object": {"metadata": {"name": name}}},
            })),
            vars: Arc::new(TemplateVars {
                group: "stable.example.com".into(),
                version: "v1".into(),
                kind: "Database".into(),
                resource: "databases".into(),
                namespace: "default".into(),
                name: name.to_string(),
                event: event.into(),
            }),
        }
    }

    /// One message a subscriber got.
    #[derive(Debug)]
    struct Received {
        topic: String,
        payload: Vec<u8>,
        retain: bool,
        properties: Option<PublishProperties>,
    }

    /// A real MQTT 5 subscriber to `filter` (QoS 1); returns once the broker confirmed the
    /// subscription, with the messages arriving on the receiver and the client (to publish
    /// markers). Its task ends when the receiver is dropped.
    async fn subscribe(
        port: u16,
        filter: &str,
    ) -> (mpsc::UnboundedReceiver<Received>, rumqttc::v5::AsyncClient) {
        let id = format!(
            "sub-{}",
            fnv1a(format!("{filter}{:?}", Instant::now()).as_bytes())
        );
        let mut options = rumqttc::v5::MqttOptions::new(id, "127.0.0.1", port);
        options.set_max_packet_size(Some(16 << 20));
        let (client, mut event_loop) = rumqttc::v5::AsyncClient::new(options, 100);
        let (tx, rx) = mpsc::unbounded_channel();
        let (subscribed_tx, subscribed) = oneshot::channel();
        let filter = filter.to_string();
        let sub_client = client.clone();
        tokio::spawn(async move {
            let mut subscribed_tx = Some(subscribed_tx);
            loop {
                match event_loop.poll().await {
                    Ok(rumqttc::v5::Event::Incoming(Packet::ConnAck(_))) => {
                        let f = Filter::new(filter.clone(), rumqttc::v5::mqttbytes::QoS::AtLeastOnce);
                        sub_client.subscribe_many([f]).await.unwrap();
                    }
                    Ok(rumqttc::v5::Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(t) = subscribed_tx.take() {
                            let _ = t.send(());
                        }
                    }
                    Ok(rumqttc::v5::Event::Incoming(Packet::Publish(p))) => {
                        let received = Received {
                            topic: String::from_utf8_lossy(&p.topic).into_owned(),
                            payload: p.payload.to_vec(),
                            retain: p.retain,
                            properties: p.properties,
                        };
                        if tx.send(received).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => panic!("test subscriber: {e}"),
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(20), subscribed)
            .await
            .expect("no SUBACK within 20s")
            .unwrap();
        (rx, client)
    }

    async fn next(rx: &mut mpsc::UnboundedReceiver<Received>) -> Received {
        tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .expect("no message within 20s")
            .expect("subscriber ended")
    }

    async fn wait_connected(sink: &MqttSink) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !sink.is_connected() {
            assert!(Instant::now() < deadline, "MQTT sink did not connect within 20s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Deliver until it succeeds (the connection comes back with backoff), or panic after 30 s.
    async fn deliver_until_ok(sink: &MqttSink, d: &Delivery) {
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
    fn config_defaults_bounds_and_secrets() {
        let c = parse("url: mqtt://127.0.0.1:1883\nusername: u\npassword: s3cret\n");
        assert_eq!(c.protocol, MqttProtocol::V311);
        assert_eq!(c.topic, DEFAULT_TOPIC);
        assert_eq!(c.qos, 1);
        assert!(!c.clean_session && !c.retain);
        assert_eq!(c.keep_alive, Duration::from_secs(30));
        assert_eq!(c.timeout, Duration::from_secs(10));
        assert_eq!(c.session_expiry, Duration::from_secs(3600));
        assert_eq!(c.max_inflight, 100);
        let debug = format!("{c:?}");
        assert!(!debug.contains("s3cret"), "{debug}");
        assert_eq!(
            c.validate().unwrap(),
            BrokerAddress {
                host: "127.0.0.1".into(),
                port: 1883,
                tls: false
            }
        );
        // A stable default client id per sink name and host.
        assert_eq!(c.client_id_for("events"), c.client_id_for("events"));
        assert!(c.client_id_for("my sink").starts_with("crwatch-my_sink-"));
        assert_ne!(
            c.client_id_for(""),
            parse("url: mqtt://other\n").client_id_for("")
        );

        let c = parse(
            "url: mqtts://[::1]\nprotocol: 5\ncleanStart: true\nretain: true\nkeepAlive: 1m\n\
             sessionExpiry: 0s\nmaxInflight: 1000\ntimeout: 250ms\nclientId: me\n\
             tls:\n  insecureSkipVerify: true\n",
        );
        assert_eq!(c.protocol, MqttProtocol::V5);
        assert!(c.clean_session && c.retain);
        assert_eq!(c.client_id_for("x"), "me");
        assert_eq!(c.validate().unwrap().port, 8883);
        assert_eq!(c.validate().unwrap().host, "::1");
        assert_eq!(
            parse("url: mqtt://h\nprotocol: \"3.1.1\"\n").protocol,
            MqttProtocol::V311
        );
        assert_eq!(
            parse("url: mqtt://h\nprotocol: \"5\"\n").protocol,
            MqttProtocol::V5
        );
    }

    #[test]
    fn config_errors_name_the_field() {
        let cases = [
            ("url: http://h\n", "unknown scheme \"http\""),
            ("url: h:1883\n", "expected mqtt://host:port"),
            ("url: mqtt://u:pw@h\n", "credentials in the URL"),
            ("url: mqtt://h:0\n", "port must be between 1 and 65535"),
            ("url: mqtt://h:99999\n", "port must be between 1 and 65535"),
            ("url: mqtt://h/x\n", "no path or query"),
            ("url: mqtt://h\nqos: 0\n", "qos: 0 (at most once)"),
            ("url: mqtt://h\nqos: 2\n", "qos: 2 is not supported"),
            ("url: mqtt://h\nqos: 3\n", "qos: must be 1, not 3"),
            ("url: mqtt://h\nprotocol: 4.0\n", "protocol: must be"),
            ("url: mqtt://h\nprotocol: \"3\"\n", "protocol: must be"),
            (
                "url: mqtt://h\nkeepAlive: 0s\n",
                "keepAlive: must be between 1s and 18h 12m 15s, not 0s",
            ),
            ("url: mqtt://h\nkeepAlive: 1d\n", "keepAlive: must be between"),
            ("url: mqtt://h\ntimeout: 0s\n", "timeout: must be between"),
            (
                "url: mqtt://h\nmaxInflight: 0\n",
                "maxInflight: must be between 1 and 1000, not 0",
            ),
            (
                "url: mqtt://h\nmaxInflight: 70000\n",
                "maxInflight: must be between 1 and 1000",
            ),
            (
                "url: mqtt://h\nsessionExpiry: 200y\n",
                "sessionExpiry: must be between",
            ),
            ("url: mqtt://h\ntopik: x\n", "unknown field"),
            (
                "url: mqtt://h\ntopic: a/{nope}\n",
                "mqtt.topic: unknown variable {nope}",
            ),
            ("url: mqtt://h\ntopic: a/+/{name}\n", "wildcard"),
            ("url: mqtt://h\ntopic: a/#\n", "wildcard"),
            ("url: mqtt://h\ntopic: $SYS/{name}\n", "reserved"),
            (
                "url: mqtt://h\ntopic: a/{kind}\nretain: true\n",
                "must contain {name}",
            ),
            ("url: mqtt://h\npassword: x\n", "a password needs a username"),
            (
                "url: mqtt://h\nusername: u\npassword: x\npasswordEnv: P\n",
                "set one of password",
            ),
            ("url: mqtt://h\nclientId: \"\"\n", "clientId must not be empty"),
            ("url: mqtt://h\ntls:\n  caFile: /ca.pem\n", "need an mqtts:// URL"),
            (
                "url: mqtts://h\ntls:\n  caFile: /ca.pem\n  insecureSkipVerify: true\n",
                "cannot both be set",
            ),
            (
                "url: mqtts://h\ntls:\n  certFile: /c.pem\n",
                "certFile and keyFile go together",
            ),
            (
                "url: mqtts://h\ntls:\n  serverName: \"a b\"\n",
                "serverName: not a valid",
            ),
        ];
        for (yaml, want) in cases {
            let got = error(yaml);
            assert!(got.contains(want), "{yaml:?}: {got:?} should contain {want:?}");
        }
    }

    #[tokio::test]
    async fn secrets_are_read_from_files_and_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("password");
        std::fs::write(&file, "fr0m-file\n").unwrap();
        let c = parse(&format!(
            "url: mqtt://h\nusername: u\npasswordFile: {}\n",
            file.display()
        ));
        assert_eq!(c.resolve_password().unwrap().as_deref(), Some("fr0m-file"));
        let c = parse("url: mqtt://h\nusername: u\npasswordFile: /nonexistent/pw\n");
        let e = MqttSink::connect(&c).await.unwrap_err();
        assert!(
            format!("{e:#}").contains("mqtt.passwordFile: reading /nonexistent/pw"),
            "{e:#}"
        );
        let c = parse("url: mqtt://h\nusername: u\npasswordEnv: CRWATCH_TEST_UNSET_MQTT_PASSWORD\n");
        let e = MqttSink::connect(&c).await.unwrap_err();
        assert!(
            format!("{e:#}").contains("CRWATCH_TEST_UNSET_MQTT_PASSWORD is not set"),
            "{e:#}"
        );
    }

    #[test]
    fn topic_values_are_sanitised() {
        let t = Template::parse(DEFAULT_TOPIC).unwrap();
        let vars = TemplateVars {
            group: "".into(),
            kind: "Kind".into(),
            namespace: "a/b".into(),
            name: "x+y#z\0w".into(),
            ..Default::default()
        };
        assert_eq!(t.render(&vars, topic_token), "crwatch/_/Kind/a_b/x_y_z_w");
        assert_eq!(topic_token("stable.example.com"), "stable.example.com");
    }

    #[tokio::test]
    async fn publishes_are_acknowledged_v311() {
        let broker = broker().await;
        let (mut rx, _sub) = subscribe(broker.port(), "v311/#").await;
        let sink = MqttSink::connect_named(
            &parse(&format!(
                "url: {}\ntopic: v311/{{group}}/{{kind}}/{{namespace}}/{{name}}\n",
                broker.url()
            )),
            "v311",
        )
        .await
        .unwrap();
        wait_connected(&sink).await;
        assert!(sink.client_id().starts_with("crwatch-v311-"));
        // More than maxInflight at once: all acknowledged, each by its own PUBACK.
        let deliveries: Vec<Delivery> = (0..150)
            .map(|i| delivery(&format!("uid:{i}"), &format!("db.{i}"), "added"))
            .collect();
        let results = futures::future::join_all(deliveries.iter().map(|d| sink.deliver(d))).await;
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        let mut ids = std::collections::BTreeSet::new();
        for _ in 0..150 {
            let m = next(&mut rx).await;
            assert!(
                m.topic
                    .starts_with("v311/stable.example.com/Database/default/db."),
                "{}",
                m.topic
            );
            assert!(!m.retain);
            // MQTT 3.1.1 has no properties: the JSON event format is implied.
            assert!(m.properties.as_ref().is_none_or(|p| p.content_type.is_none()));
            let body: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
            ids.insert(body["id"].as_str().unwrap().to_string());
        }
        assert_eq!(ids.len(), 150);
        let l = lock(&sink.link);
        assert!(l.unsent.is_empty() && l.sent.is_empty(), "no waiter left behind");
    }

    #[tokio::test]
    async fn publishes_are_acknowledged_v5_with_cloudevents_properties() {
        let broker = broker().await;
        let (mut rx, _sub) = subscribe(broker.port(), "v5/#").await;
        let sink = MqttSink::connect(&parse(&format!(
            "url: {}\nprotocol: 5\ntopic: v5/{{kind}}/{{name}}\n",
            broker.url()
        )))
        .await
        .unwrap();
        wait_connected(&sink).await;
        let d = delivery("uid-5:7", "five", "modified");
        sink.deliver(&d).await.unwrap();
        let m = next(&mut rx).await;
        assert_eq!(m.topic, "v5/Database/five");
        let body: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(body, *d.event);
        let p = m.properties.expect("MQTT 5 properties");
        assert_eq!(p.content_type.as_deref(), Some(CONTENT_TYPE));
        assert_eq!(p.payload_format_indicator, Some(1));
        let user: std::collections::BTreeMap<_, _> = p.user_properties.into_iter().collect();
        assert_eq!(user["id"], "uid-5:7");
        assert_eq!(user["specversion"], "1.0");
        assert_eq!(user["type"], "io.crwatch.resource.modified");
        assert_eq!(user["subject"], "default/five");
        assert!(!user.contains_key("data") && !user.contains_key("datacontenttype"));
    }

    /// The retained messages on `topic` a new subscriber gets: subscribe, publish a marker,
    /// collect until the marker (the broker sends retained messages before later publishes).
    async fn retained_on(port: u16, topic: &str) -> Vec<Received> {
        let (mut rx, client) = subscribe(port, topic).await;
        client
            .publish(topic, rumqttc::v5::mqttbytes::QoS::AtLeastOnce, false, "marker")
            .await
            .unwrap();
        let mut out = Vec::new();
        loop {
            let m = next(&mut rx).await;
            if m.payload == b"marker" {
                return out;
            }
            out.push(m);
        }
    }

    #[tokio::test]
    async fn retained_state_is_kept_and_cleared_on_delete() {
        let broker = broker().await;
        for protocol in ["3.1.1", "5"] {
            let sink = MqttSink::connect(&parse(&format!(
                "url: {}\nprotocol: \"{protocol}\"\nretain: true\ntopic: retained/{protocol}/{{namespace}}/{{name}}\n",
                broker.url()
            )))
            .await
            .unwrap();
            wait_connected(&sink).await;
            let topic = format!("retained/{protocol}/default/r");
            sink.deliver(&delivery("u:1", "r", "added")).await.unwrap();
            sink.deliver(&delivery("u:2", "r", "modified")).await.unwrap();
            let got = retained_on(broker.port(), &topic).await;
            assert_eq!(got.len(), 1, "{got:?}");
            assert!(got[0].retain);
            let body: serde_json::Value = serde_json::from_slice(&got[0].payload).unwrap();
            assert_eq!(body["id"], "u:2", "the latest state");

            // A live subscriber sees the deletion event, then the empty message that clears it.
            let (mut live, _c) = subscribe(broker.port(), &topic).await;
            let _retained = next(&mut live).await;
            sink.deliver(&delivery("u:2:deleted", "r", "deleted"))
                .await
                .unwrap();
            let deletion = next(&mut live).await;
            let body: serde_json::Value = serde_json::from_slice(&deletion.payload).unwrap();
            assert_eq!(body["type"], "io.crwatch.resource.deleted");
            assert!(next(&mut live).await.payload.is_empty());
            assert!(retained_on(broker.port(), &topic).await.is_empty(), "cleared");
        }
    }

    #[tokio::test]
    async fn broker_down_is_retryable_and_recovers_on_the_same_port() {
        let mut broker = Mosquitto::start().await.unwrap();
        for protocol in ["3.1.1", "5"] {
            let sink = MqttSink::connect(&parse(&format!(
                "url: {}\nprotocol: \"{protocol}\"\ntopic: down/{{name}}\ntimeout: 2s\n",
                broker.url()
            )))
            .await
            .unwrap();
            wait_connected(&sink).await;
            sink.deliver(&delivery("d:1", "a", "added")).await.unwrap();

            // The broker crashes with publishes in flight: each is acknowledged or fails as
            // retryable, none hangs past the timeout, and no waiter is left behind.
            let many: Vec<Delivery> = (0..200)
                .map(|i| delivery(&format!("f:{i}"), &format!("f{i}"), "added"))
                .collect();
            let (results, ()) = tokio::join!(
                futures::future::join_all(many.iter().map(|d| sink.deliver(d))),
                async {
                    tokio::task::yield_now().await;
                    broker.kill();
                }
            );
            for r in &results {
                assert!(matches!(r, Ok(()) | Err(SinkError::Retryable(_))), "{r:?}");
            }
            let d = delivery("d:2", "b", "added");
            match sink.deliver(&d).await {
                Err(SinkError::Retryable(_)) => {}
                other => panic!("expected Retryable, got {other:?}"),
            }
            // Once the loss is noticed, attempts fail at once, saying why.
            let deadline = Instant::now() + Duration::from_secs(10);
            while sink.is_connected() {
                assert!(Instant::now() < deadline, "the loss went unnoticed for 10s");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            {
                let l = lock(&sink.link);
                assert!(
                    l.unsent.is_empty() && l.sent.is_empty(),
                    "waiters cleared on disconnect"
                );
            }
            assert_eq!(
                sink.slots.available_permits(),
                sink.slots_total,
                "channel slots released"
            );
            match sink.deliver(&d).await {
                Err(SinkError::Retryable(m)) => assert!(m.contains("is not connected"), "{m}"),
                other => panic!("expected Retryable, got {other:?}"),
            }
            // A sink created while the broker is down connects in the background.
            let late = MqttSink::connect(&parse(&format!(
                "url: {}\nprotocol: \"{protocol}\"\ntopic: down/{{name}}\ntimeout: 2s\n",
                broker.url()
            )))
            .await
            .unwrap();
            match late.deliver(&d).await {
                Err(SinkError::Retryable(m)) => assert!(m.contains("connection refused"), "{m}"),
                other => panic!("expected Retryable, got {other:?}"),
            }

            broker.restart().await.unwrap();
            let (mut rx, _sub) = subscribe(broker.port(), "down/#").await;
            deliver_until_ok(&sink, &d).await;
            deliver_until_ok(&late, &delivery("d:3", "c", "added")).await;
            let mut ids = std::collections::BTreeSet::new();
            while ids.len() < 2 {
                let m = next(&mut rx).await;
                let body: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
                ids.insert(body["id"].as_str().unwrap().to_string());
            }
            assert_eq!(ids, ["d:2".to_string(), "d:3".to_string()].into());
        }
    }

    #[tokio::test]
    async fn tls_with_a_private_ca_and_a_wrong_ca_fails_clearly() {
        let certs = crwatch_apiserver::tls::Certs::generate(&["broker.test".to_string()]).unwrap();
        let broker = Mosquitto::start_with(MosquittoOptions {
            tls: Some(MosquittoTls {
                cert_pem: certs.cert_pem.clone(),
                key_pem: certs.key_pem.clone(),
                client_ca_pem: None,
            }),
            ..Default::default()
        })
        .await
        .unwrap();
        let port = broker.tls_port().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, &certs.ca_pem).unwrap();
        let (mut rx, _sub) = subscribe(broker.port(), "tls/#").await;

        for (url, extra) in [
            (format!("mqtts://localhost:{port}"), String::new()),
            (
                format!("mqtts://127.0.0.1:{port}"),
                "\n  serverName: broker.test".to_string(),
            ),
        ] {
            let sink = MqttSink::connect(&parse(&format!(
                "url: {url}\nprotocol: 5\ntopic: tls/{{name}}\ntls:\n  caFile: {}{extra}\n",
                ca.display()
            )))
            .await
            .unwrap();
            wait_connected(&sink).await;
            sink.deliver(&delivery("t:1", "secure", "added")).await.unwrap();
            assert_eq!(next(&mut rx).await.topic, "tls/secure");
        }

        // A CA that did not sign the broker's certificate, and a name it does not carry.
        let other = dir.path().join("other.pem");
        let other_ca = rcgen::generate_simple_self_signed(vec!["other-ca".to_string()]).unwrap();
        std::fs::write(&other, other_ca.cert.pem()).unwrap();
        let e = MqttSink::connect(&parse(&format!(
            "url: mqtts://localhost:{port}\ntls:\n  caFile: {}\n",
            other.display()
        )))
        .await
        .unwrap_err();
        let e = format!("{e:#}");
        assert!(
            e.contains("TLS handshake failed") && e.contains("UnknownIssuer"),
            "{e}"
        );
        assert!(e.contains("tls.caFile"), "{e}");
        let e = MqttSink::connect(&parse(&format!(
            "url: mqtts://127.0.0.1:{port}\ntls:\n  caFile: {}\n  serverName: nope.test\n",
            ca.display()
        )))
        .await
        .unwrap_err();
        assert!(
            format!("{e:#}").contains("certificate not valid for name \"nope.test\""),
            "{e:#}"
        );
        // TLS spoken to the plain port is no certificate problem: retried in the background.
        let sink = MqttSink::connect(&parse(&format!(
            "url: mqtts://localhost:{}\ntimeout: 2s\ntls:\n  caFile: {}\n",
            broker.port(),
            ca.display()
        )))
        .await
        .unwrap();
        assert!(matches!(
            sink.deliver(&delivery("t:2", "x", "added")).await,
            Err(SinkError::Retryable(_))
        ));
    }

    #[tokio::test]
    async fn client_certificates_for_brokers_that_require_them() {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType};

        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "mqtt test CA");
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let issue = |name: &str| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
            params
                .subject_alt_names
                .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
            let cert = params.signed_by(&key, &ca).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = issue("localhost");
        let broker = Mosquitto::start_with(MosquittoOptions {
            tls: Some(MosquittoTls {
                cert_pem: server_cert,
                key_pem: server_key,
                client_ca_pem: Some(ca.pem()),
            }),
            ..Default::default()
        })
        .await
        .unwrap();
        let port = broker.tls_port().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, content: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, content).unwrap();
            p.display().to_string()
        };
        let ca_file = write("ca.pem", &ca.pem());
        let (client_cert, client_key) = issue("crwatch");
        let cert_file = write("client.pem", &client_cert);
        let key_file = write("client-key.pem", &client_key);

        let sink = MqttSink::connect(&parse(&format!(
            "url: mqtts://localhost:{port}\ntopic: mtls/{{name}}\ntls:\n  caFile: {ca_file}\n  \
             certFile: {cert_file}\n  keyFile: {key_file}\n"
        )))
        .await
        .unwrap();
        wait_connected(&sink).await;
        sink.deliver(&delivery("m:1", "mutual", "added")).await.unwrap();

        // Without a client certificate the broker ends the handshake: a configuration error.
        for protocol in ["3.1.1", "5"] {
            let e = MqttSink::connect(&parse(&format!(
                "url: mqtts://localhost:{port}\nprotocol: \"{protocol}\"\ntls:\n  caFile: {ca_file}\n"
            )))
            .await
            .unwrap_err();
            let e = format!("{e:#}");
            assert!(
                e.contains("TLS handshake failed") && e.contains("CertificateRequired"),
                "{e}"
            );
            assert!(e.contains("set tls.certFile and tls.keyFile"), "{e}");
        }
        // A key that does not belong to the certificate is a configuration error.
        let (_, other_key) = issue("other");
        let other_key = write("other-key.pem", &other_key);
        let e = MqttSink::connect(&parse(&format!(
            "url: mqtts://localhost:{port}\ntls:\n  caFile: {ca_file}\n  certFile: {cert_file}\n  \
             keyFile: {other_key}\n"
        )))
        .await
        .unwrap_err();
        assert!(
            format!("{e:#}").contains("mqtt.tls: the client certificate and key do not fit together"),
            "{e:#}"
        );
    }

    #[tokio::test]
    async fn refused_credentials_name_the_connack_code_and_never_show_the_password() {
        let broker = Mosquitto::start_with(MosquittoOptions {
            users: vec![("crwatch".into(), "right-pw".into())],
            ..Default::default()
        })
        .await
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        for protocol in ["3.1.1", "5"] {
            std::fs::write(&file, "wr0ng-pw\n").unwrap();
            let yaml = format!(
                "url: {}\nprotocol: \"{protocol}\"\nusername: crwatch\npasswordFile: {}\n",
                broker.url(),
                file.display()
            );
            let e = format!("{:#}", MqttSink::connect(&parse(&yaml)).await.unwrap_err());
            assert!(
                e.contains("the broker refused the connection: CONNACK code"),
                "{e}"
            );
            assert!(
                e.contains("BadUserNamePassword") || e.contains("NotAuthorized"),
                "{e}"
            );
            assert!(!e.contains("wr0ng-pw"), "{e}");
            std::fs::write(&file, "right-pw\n").unwrap();
            let sink = MqttSink::connect(&parse(&yaml)).await.unwrap();
            wait_connected(&sink).await;
            sink.deliver(&delivery("a:1", "auth", "added")).await.unwrap();
            assert!(!format!("{sink:?}").contains("right-pw"));
        }
    }
}
