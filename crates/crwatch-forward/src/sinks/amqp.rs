//! The AMQP 0.9.1 (RabbitMQ) sink: publishes each change as a structured CloudEvent to an
//! exchange with a routing key rendered from a template, and counts it delivered only once the
//! broker confirmed it (publisher confirms).
//!
//! The connection is made lazily: a broker that is down when `crwatch forward` starts, or that
//! goes away later, makes attempts fail with [`SinkError::Retryable`], and the next attempt
//! connects again (declaring the exchange again when `declareExchange` is on).

#![cfg(feature = "amqp")]

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use futures::future::BoxFuture;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind};
use serde::Deserialize;
use tokio::sync::Mutex;

use crate::secret::redact_url;
use crate::sink::{Delivery, Sink, SinkError, Template, dot_token};

/// The default routing-key template.
pub const DEFAULT_ROUTING_KEY: &str = "{group}.{kind}.{namespace}.{name}";

/// The content type of the published body.
pub const CONTENT_TYPE: &str = "application/cloudevents+json";

/// The `amqp` section of a sink.
///
/// ```yaml
/// amqp:
///   urlEnv: AMQP_URL                    # or url: / urlFile:, exactly one
///   exchange: crwatch                   # "" = the default exchange
///   exchangeType: topic
///   declareExchange: true
///   routingKey: "{group}.{kind}.{namespace}.{name}"
///   persistent: true
///   mandatory: false
///   timeout: 10s
/// ```
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AmqpConfig {
    /// Broker URL, `amqp://user:password@host:5672/%2f` (or `amqps://`).
    #[serde(default)]
    pub url: Option<String>,
    /// File holding the broker URL (for URLs with passwords, e.g. a mounted secret).
    #[serde(default)]
    pub url_file: Option<PathBuf>,
    /// Environment variable holding the broker URL.
    #[serde(default)]
    pub url_env: Option<String>,
    /// Exchange to publish to; the empty string is the default exchange, which routes by queue
    /// name (then `routingKey` names the queue).
    pub exchange: String,
    /// Exchange type used when declaring it: `topic` (default), `direct`, `fanout`, `headers`
    /// or a plugin's type.
    #[serde(default = "default_exchange_type")]
    pub exchange_type: String,
    /// Declare the exchange (durable) on every connect. Default true. An existing exchange of
    /// another type or durability makes the declaration fail.
    #[serde(default = "yes")]
    pub declare_exchange: bool,
    /// Routing-key template; variables are mapped through [`dot_token`]. Default
    /// `{group}.{kind}.{namespace}.{name}`.
    #[serde(default = "default_routing_key")]
    pub routing_key: String,
    /// Persistent messages (delivery mode 2), which survive a broker restart in durable queues.
    /// Default true.
    #[serde(default = "yes")]
    pub persistent: bool,
    /// Ask the broker to return messages no queue takes; such a delivery then fails (retryable).
    /// Default false: unroutable messages are confirmed and dropped by the broker.
    #[serde(default)]
    pub mandatory: bool,
    /// Limit for connecting and for the broker's confirmation. Default 10s.
    #[serde(
        default = "default_timeout",
        deserialize_with = "crate::config::bounds::timeout"
    )]
    pub timeout: Duration,
}

fn default_exchange_type() -> String {
    "topic".to_string()
}

fn default_routing_key() -> String {
    DEFAULT_ROUTING_KEY.to_string()
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

fn yes() -> bool {
    true
}

impl fmt::Debug for AmqpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpConfig")
            .field("url", &self.url.as_deref().map(redact_url))
            .field("url_file", &self.url_file)
            .field("url_env", &self.url_env)
            .field("exchange", &self.exchange)
            .field("exchange_type", &self.exchange_type)
            .field("declare_exchange", &self.declare_exchange)
            .field("routing_key", &self.routing_key)
            .field("persistent", &self.persistent)
            .field("mandatory", &self.mandatory)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl AmqpConfig {
    /// Check what can be checked without connecting: exactly one URL source, a valid
    /// routing-key template, a known exchange type, a non-zero timeout.
    pub fn validate(&self) -> Result<(), String> {
        let sources = self.url.is_some() as u8 + self.url_file.is_some() as u8 + self.url_env.is_some() as u8;
        if sources != 1 {
            return Err("amqp: set exactly one of url, urlFile, urlEnv".into());
        }
        Template::parse(&self.routing_key).map_err(|e| format!("amqp.routingKey: {e}"))?;
        if self.exchange_type.trim().is_empty() {
            return Err("amqp.exchangeType must not be empty".into());
        }
        if self.timeout.is_zero() {
            return Err("amqp.timeout must be more than 0".into());
        }
        Ok(())
    }

    /// The broker URL, read from the file or environment variable if so configured.
    fn resolve_url(&self) -> anyhow::Result<String> {
        crate::secret::read(
            self.url.as_deref(),
            self.url_file.as_deref(),
            self.url_env.as_deref(),
            "amqp.url",
        )?
        // A URL file may end in a newline or carry blanks around the URL.
        .map(|url| url.trim().to_string())
        .ok_or_else(|| anyhow::anyhow!("amqp: set exactly one of url, urlFile, urlEnv"))
    }

    fn exchange_kind(&self) -> ExchangeKind {
        match self.exchange_type.as_str() {
            "direct" => ExchangeKind::Direct,
            "fanout" => ExchangeKind::Fanout,
            "headers" => ExchangeKind::Headers,
            "topic" => ExchangeKind::Topic,
            other => ExchangeKind::Custom(other.to_string()),
        }
    }
}

/// One connection with a confirming channel; `generation` tells links apart so a failure seen
/// on an old link does not throw away a newer one.
struct Link {
    generation: u64,
    connection: Connection,
    channel: Channel,
}

impl Link {
    fn usable(&self) -> bool {
        self.connection.status().connected() && self.channel.status().connected()
    }
}

#[derive(Default)]
struct LinkState {
    link: Option<Link>,
    generation: u64,
}

/// Publishes deliveries to an AMQP exchange with publisher confirms. One attempt per
/// [`Sink::deliver`] call; concurrent attempts share one connection and channel.
pub struct AmqpSink {
    url: String,
    exchange: String,
    kind: ExchangeKind,
    declare: bool,
    routing_key: Template,
    persistent: bool,
    mandatory: bool,
    timeout: Duration,
    state: Mutex<LinkState>,
}

impl fmt::Debug for AmqpSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpSink")
            .field("url", &redact_url(&self.url))
            .field("exchange", &self.exchange)
            .field("routing_key", &self.routing_key)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl AmqpSink {
    /// Everything [`connect`](Self::connect) checks before it dials: the configuration, the
    /// URL with its secrets, and the routing-key template.
    pub fn check(config: &AmqpConfig) -> anyhow::Result<()> {
        config.validate().map_err(anyhow::Error::msg)?;
        config.resolve_url()?;
        Template::parse(&config.routing_key).map_err(anyhow::Error::msg)?;
        Ok(())
    }

    /// Validate `config`, resolve the URL and try to connect once. A broker that cannot be
    /// reached does not fail this (the next delivery attempt connects); a broker that refuses
    /// the login, the virtual host or the exchange declaration does.
    pub async fn connect(config: &AmqpConfig) -> anyhow::Result<Self> {
        config.validate().map_err(anyhow::Error::msg)?;
        let url = config.resolve_url()?;
        let sink = Self {
            exchange: config.exchange.clone(),
            kind: config.exchange_kind(),
            declare: config.declare_exchange,
            routing_key: Template::parse(&config.routing_key).map_err(anyhow::Error::msg)?,
            persistent: config.persistent,
            mandatory: config.mandatory,
            timeout: config.timeout,
            state: Mutex::new(LinkState::default()),
            url,
        };
        let mut state = sink.state.lock().await;
        match sink.open(state.generation + 1).await {
            Ok(link) => {
                state.generation = link.generation;
                state.link = Some(link);
            }
            Err(OpenError::Refused(e)) => {
                return Err(e).with_context(|| format!("connecting to {}", redact_url(&sink.url)));
            }
            Err(OpenError::Unreachable(e)) => {
                tracing::warn!(
                    url = %redact_url(&sink.url),
                    "AMQP broker not reachable yet, connecting on the first delivery: {e:#}"
                );
            }
        }
        drop(state);
        Ok(sink)
    }

    /// The routing key `delivery` is published with.
    pub fn routing_key_for(&self, delivery: &Delivery) -> String {
        self.routing_key.render(&delivery.vars, dot_token)
    }

    /// Connect, open a channel, enable confirms and declare the exchange, within the timeout.
    async fn open(&self, generation: u64) -> Result<Link, OpenError> {
        let open = async {
            let connection = Connection::connect(&self.url, ConnectionProperties::default())
                .await
                .map_err(|e| OpenError::from_lapin(e, "AMQP connect"))?;
            let channel = connection
                .create_channel()
                .await
                .map_err(|e| OpenError::from_lapin(e, "opening an AMQP channel"))?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(|e| OpenError::from_lapin(e, "enabling publisher confirms"))?;
            if self.declare && !self.exchange.is_empty() {
                let options = ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                };
                channel
                    .exchange_declare(
                        self.exchange.as_str().into(),
                        self.kind.clone(),
                        options,
                        FieldTable::default(),
                    )
                    .await
                    .map_err(|e| {
                        OpenError::from_lapin(
                            e,
                            &format!("declaring the durable exchange {:?}", self.exchange),
                        )
                    })?;
            }
            Ok(Link {
                generation,
                connection,
                channel,
            })
        };
        tokio::time::timeout(self.timeout, open)
            .await
            .unwrap_or_else(|_| {
                Err(OpenError::Unreachable(anyhow::anyhow!(
                    "no AMQP connection within {}",
                    humantime::format_duration(self.timeout)
                )))
            })
    }

    /// The current channel, connecting first if there is none or it broke.
    async fn channel(&self) -> Result<(u64, Channel), SinkError> {
        let mut state = self.state.lock().await;
        if let Some(link) = &state.link
            && link.usable()
        {
            return Ok((link.generation, link.channel.clone()));
        }
        if let Some(old) = state.link.take() {
            close_in_background(old);
        }
        let link = self.open(state.generation + 1).await.map_err(|e| {
            let e = match e {
                OpenError::Refused(e) | OpenError::Unreachable(e) => e,
            };
            SinkError::Retryable(format!("connecting to {}: {e:#}", redact_url(&self.url)))
        })?;
        state.generation = link.generation;
        let out = (link.generation, link.channel.clone());
        state.link = Some(link);
        Ok(out)
    }

    /// Drop the link of `generation` (if still current) so the next attempt reconnects.
    async fn invalidate(&self, generation: u64) {
        let mut state = self.state.lock().await;
        if state.link.as_ref().is_some_and(|l| l.generation == generation)
            && let Some(old) = state.link.take()
        {
            close_in_background(old);
        }
    }

    fn properties(&self, delivery: &Delivery) -> BasicProperties {
        let event = &*delivery.event;
        let timestamp = event
            .get("time")
            .and_then(|t| t.as_str())
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .and_then(|t| u64::try_from(t.timestamp()).ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs())
            });
        let mut props = BasicProperties::default()
            .with_content_type(CONTENT_TYPE.into())
            .with_message_id(delivery.id.as_str().into())
            .with_timestamp(timestamp);
        if let Some(kind) = event.get("type").and_then(|t| t.as_str()) {
            props = props.with_type(kind.into());
        }
        if self.persistent {
            props = props.with_delivery_mode(2);
        }
        props
    }

    async fn publish(&self, delivery: &Delivery) -> Result<(), SinkError> {
        let routing_key = self.routing_key_for(delivery);
        if routing_key.len() > 255 {
            return Err(SinkError::Permanent(format!(
                "AMQP routing key longer than 255 bytes: {routing_key:?}"
            )));
        }
        let body = serde_json::to_vec(&*delivery.event)
            .map_err(|e| SinkError::Permanent(format!("serializing the CloudEvent: {e}")))?;
        let (generation, channel) = self.channel().await?;
        let target = format!("exchange {:?} with routing key {routing_key}", self.exchange);
        let options = BasicPublishOptions {
            mandatory: self.mandatory,
            ..Default::default()
        };
        let publish = async {
            let confirm = channel
                .basic_publish(
                    self.exchange.as_str().into(),
                    routing_key.as_str().into(),
                    options,
                    &body,
                    self.properties(delivery),
                )
                .await?;
            confirm.await
        };
        let confirmation = match tokio::time::timeout(self.timeout, publish).await {
            Err(_) => {
                // A connection the broker dropped without a word (it restarted) can look open
                // for a long time: connect again rather than wait on it for every retry.
                self.invalidate(generation).await;
                return Err(SinkError::Retryable(format!(
                    "no publisher confirm from the AMQP broker within {} for {target}",
                    humantime::format_duration(self.timeout)
                )));
            }
            Ok(Err(e)) => {
                self.invalidate(generation).await;
                return Err(SinkError::Retryable(format!("AMQP publish to {target}: {e}")));
            }
            Ok(Ok(confirmation)) => confirmation,
        };
        match confirmation {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned)) => {
                Err(SinkError::Retryable(format!(
                    "AMQP broker returned the message for {target}: {} {} (no queue is bound for it)",
                    returned.reply_code, returned.reply_text
                )))
            }
            Confirmation::Nack(None) => Err(SinkError::Retryable(format!(
                "AMQP broker nacked the message for {target}"
            ))),
            Confirmation::NotRequested => {
                self.invalidate(generation).await;
                Err(SinkError::Retryable(format!(
                    "AMQP channel lost publisher confirms while publishing to {target}"
                )))
            }
        }
    }
}

impl Sink for AmqpSink {
    fn deliver<'a>(&'a self, delivery: &'a Delivery) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(self.publish(delivery))
    }
}

/// Why opening a link failed: the broker could not be reached (try again later) or refused
/// (bad credentials, virtual host, conflicting exchange: a configuration problem).
enum OpenError {
    Unreachable(anyhow::Error),
    Refused(anyhow::Error),
}

impl OpenError {
    fn from_lapin(e: lapin::Error, what: &str) -> Self {
        let refused = e.is_amqp_error();
        let e = anyhow::Error::new(e).context(what.to_string());
        if refused {
            Self::Refused(e)
        } else {
            Self::Unreachable(e)
        }
    }
}

/// Close a replaced connection without holding up the caller.
fn close_in_background(link: Link) {
    tokio::spawn(async move {
        if link.connection.status().connected() {
            let close = link.connection.close(200, "crwatch reconnecting".into());
            let _ = tokio::time::timeout(Duration::from_secs(5), close).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use futures::StreamExt;
    use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
    use tokio::sync::OnceCell;

    use super::*;
    use crate::sink::TemplateVars;
    use crwatch_testsupport::rabbitmq::RabbitMq;

    static BROKER: OnceCell<RabbitMq> = OnceCell::const_new();

    async fn broker() -> &'static RabbitMq {
        BROKER
            .get_or_init(|| async { RabbitMq::start().await.expect("starting rabbitmq-server") })
            .await
    }

    fn config(url: &str, exchange: &str) -> AmqpConfig {
        serde_saphyr::from_str(&format!("url: {url}\nexchange: {exchange}\ntimeout: 5s\n")).unwrap()
    }

    fn delivery(id: &str, name: &str) -> Delivery {
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
                "data": {"object": {"metadata": {"name": name}}},
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

    /// Deliver until it succeeds (the broker may still be coming up), or panic after 60 s.
    async fn deliver_until_ok(sink: &AmqpSink, d: &Delivery) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match sink.deliver(d).await {
                Ok(()) => return,
                Err(e) => assert!(Instant::now() < deadline, "still failing after 60s: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    #[test]
    fn config_parses_with_defaults_and_hides_the_password() {
        let c: AmqpConfig =
            serde_saphyr::from_str("url: amqp://bob:s3cret@rabbit:5672/%2f\nexchange: events\n").unwrap();
        assert_eq!(c.exchange_type, "topic");
        assert!(c.declare_exchange);
        assert_eq!(c.routing_key, DEFAULT_ROUTING_KEY);
        assert!(c.persistent);
        assert!(!c.mandatory);
        assert_eq!(c.timeout, Duration::from_secs(10));
        c.validate().unwrap();
        let debug = format!("{c:?}");
        assert!(!debug.contains("s3cret"), "{debug}");
        assert!(debug.contains("amqp://bob:***@rabbit:5672/%2f"), "{debug}");

        let c: AmqpConfig = serde_saphyr::from_str(
            "urlEnv: AMQP_URL\nexchange: ''\nexchangeType: direct\ndeclareExchange: false\n\
             routingKey: q.{name}\npersistent: false\nmandatory: true\ntimeout: 1s\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert!(matches!(c.exchange_kind(), ExchangeKind::Direct));

        assert!(serde_saphyr::from_str::<AmqpConfig>("url: amqp://h\nexchange: e\nrouting: x\n").is_err());
        let two: AmqpConfig = serde_saphyr::from_str("url: amqp://h\nurlEnv: X\nexchange: e\n").unwrap();
        assert!(two.validate().unwrap_err().contains("exactly one"));
        let none: AmqpConfig = serde_saphyr::from_str("exchange: e\n").unwrap();
        assert!(none.validate().is_err());
        let bad: AmqpConfig =
            serde_saphyr::from_str("url: amqp://h\nexchange: e\nroutingKey: '{nope}'\n").unwrap();
        assert!(bad.validate().unwrap_err().contains("unknown variable"));
    }

    #[tokio::test]
    async fn publishes_with_confirms_and_properties() {
        let broker = broker().await;
        let sink = AmqpSink::connect(&config(&broker.url(), "crwatch-props"))
            .await
            .unwrap();

        let conn = Connection::connect(&broker.url(), ConnectionProperties::default())
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        let queue = ch
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        ch.queue_bind(
            queue.name().clone(),
            "crwatch-props".into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        let mut consumer = ch
            .basic_consume(
                queue.name().clone(),
                "test".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();

        let d = delivery("uid-1:5", "db.one");
        sink.deliver(&d).await.unwrap();

        let msg = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("no message within 10s")
            .expect("consumer ended")
            .unwrap();
        assert_eq!(
            msg.routing_key.as_str(),
            "stable_example_com.Database.default.db_one"
        );
        let body: serde_json::Value = serde_json::from_slice(&msg.data).unwrap();
        assert_eq!(body, *d.event);
        let p = &msg.properties;
        assert_eq!(p.content_type().as_ref().map(|s| s.as_str()), Some(CONTENT_TYPE));
        assert_eq!(p.message_id().as_ref().map(|s| s.as_str()), Some("uid-1:5"));
        assert_eq!(
            p.kind().as_ref().map(|s| s.as_str()),
            Some("io.crwatch.resource.modified")
        );
        assert_eq!(*p.delivery_mode(), Some(2));
        assert_eq!(*p.timestamp(), Some(1_735_787_045));
    }

    #[tokio::test]
    async fn unroutable_mandatory_message_is_retryable() {
        let broker = broker().await;
        let mut c = config(&broker.url(), "crwatch-unbound");
        c.mandatory = true;
        let sink = AmqpSink::connect(&c).await.unwrap();
        match sink.deliver(&delivery("uid-2:1", "x")).await {
            Err(SinkError::Retryable(msg)) => assert!(msg.contains("NO_ROUTE"), "{msg}"),
            other => panic!("expected Retryable, got {other:?}"),
        }
        // Without mandatory the broker confirms and drops it.
        let sink = AmqpSink::connect(&config(&broker.url(), "crwatch-unbound"))
            .await
            .unwrap();
        sink.deliver(&delivery("uid-2:1", "x")).await.unwrap();
    }

    #[tokio::test]
    async fn wrong_password_fails_connect() {
        let broker = broker().await;
        let url = broker.url().replace("guest:guest", "guest:wrong");
        let err = AmqpSink::connect(&config(&url, "crwatch-auth"))
            .await
            .unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("ACCESS_REFUSED") && !msg.contains("wrong"), "{msg}");
    }

    #[tokio::test]
    async fn broker_down_is_retryable_and_recovers_after_restart() {
        let mut broker = RabbitMq::start().await.unwrap();
        let sink = AmqpSink::connect(&config(&broker.url(), "crwatch-restart"))
            .await
            .unwrap();
        sink.deliver(&delivery("uid-3:1", "a")).await.unwrap();

        broker.stop();
        let d = delivery("uid-3:2", "b");
        match sink.deliver(&d).await {
            Err(SinkError::Retryable(_)) => {}
            other => panic!("expected Retryable, got {other:?}"),
        }
        // A sink created while the broker is down connects on a later attempt.
        let late = AmqpSink::connect(&config(&broker.url(), "crwatch-restart"))
            .await
            .unwrap();
        match late.deliver(&d).await {
            Err(SinkError::Retryable(msg)) => assert!(msg.contains("connecting to"), "{msg}"),
            other => panic!("expected Retryable, got {other:?}"),
        }
        assert!(!format!("{late:?}").contains("guest:guest"));

        broker.restart().await.unwrap();
        deliver_until_ok(&sink, &d).await;
        deliver_until_ok(&late, &delivery("uid-3:3", "c")).await;
    }
}
