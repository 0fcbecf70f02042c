//! The NATS sink: publishes each change as a structured CloudEvent to a subject rendered from a
//! template, either with core NATS (fire and forget, flushed to the socket) or to JetStream
//! (acknowledged by the stream, deduplicated by `Nats-Msg-Id`).
//!
//! Core NATS has no acknowledgements: once the message is flushed to the server's socket it is
//! delivered at most once to whoever subscribes at that moment, and a server that dies right
//! after the flush loses it. Use `jetstream: true` for at-least-once delivery end to end; the
//! stream's duplicate window (2 minutes by default) drops the copies a retry may produce, since
//! every delivery carries the CloudEvent id as `Nats-Msg-Id`.

#![cfg(feature = "nats")]

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use async_nats::connection::State;
use async_nats::jetstream;
use async_nats::jetstream::context::PublishErrorKind as JsErrorKind;
use async_nats::{ConnectOptions, HeaderMap};
use futures::future::BoxFuture;
use serde::Deserialize;

use crate::secret::redact_url;
use crate::sink::{Delivery, Sink, SinkError, Template, dot_token};

/// The default subject template.
pub const DEFAULT_SUBJECT: &str = "crwatch.{group}.{kind}.{namespace}.{name}";

/// The content type of the published body.
pub const CONTENT_TYPE: &str = "application/cloudevents+json";

/// The `nats` section of a sink.
///
/// ```yaml
/// nats:
///   url: nats://127.0.0.1:4222          # or a list of servers
///   subject: crwatch.{group}.{kind}.{namespace}.{name}
///   jetstream: true                     # default false (core NATS)
///   credentials:                        # optional
///     credsFile: /var/run/secrets/nats/user.creds
///   timeout: 5s
/// ```
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NatsConfig {
    /// One server URL or a list of them (`nats://host:4222`, `tls://host:4222`).
    #[serde(deserialize_with = "one_or_many")]
    pub url: Vec<String>,
    /// Subject template; variables are mapped through [`dot_token`]. Default
    /// `crwatch.{group}.{kind}.{namespace}.{name}`.
    #[serde(default = "default_subject")]
    pub subject: String,
    /// Publish to JetStream and wait for the stream's acknowledgement. Default false.
    #[serde(default)]
    pub jetstream: bool,
    /// How to authenticate; default none (or what the URL carries).
    #[serde(default)]
    pub credentials: Option<NatsCredentials>,
    /// Limit for connecting, flushing and waiting for a JetStream acknowledgement. Default 5s.
    #[serde(
        default = "default_timeout",
        deserialize_with = "crate::config::bounds::timeout"
    )]
    pub timeout: Duration,
}

/// NATS authentication: user and password, a token, or a `.creds` file (JWT and NKey seed).
/// Secrets come from files or environment variables, never from the configuration itself.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NatsCredentials {
    /// User name.
    #[serde(default)]
    pub user: Option<String>,
    /// File holding the user name.
    #[serde(default)]
    pub user_file: Option<PathBuf>,
    /// File holding the password.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// File holding the token.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Environment variable holding the token.
    #[serde(default)]
    pub token_env: Option<String>,
    /// A NATS `.creds` file (user JWT and NKey seed).
    #[serde(default)]
    pub creds_file: Option<PathBuf>,
}

fn default_subject() -> String {
    DEFAULT_SUBJECT.to_string()
}

fn default_timeout() -> Duration {
    Duration::from_secs(5)
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(url) => vec![url],
        OneOrMany::Many(urls) => urls,
    })
}

impl fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsConfig")
            .field("url", &self.url.iter().map(|u| redact_url(u)).collect::<Vec<_>>())
            .field("subject", &self.subject)
            .field("jetstream", &self.jetstream)
            .field("credentials", &self.credentials)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl NatsConfig {
    /// Check what can be checked without connecting: at least one URL, a valid subject
    /// template, a non-zero timeout, and a consistent credentials section.
    pub fn validate(&self) -> Result<(), String> {
        if self.url.is_empty() || self.url.iter().any(|u| u.trim().is_empty()) {
            return Err("nats.url: give a server URL or a list of them".into());
        }
        Template::parse(&self.subject).map_err(|e| format!("nats.subject: {e}"))?;
        if self.timeout.is_zero() {
            return Err("nats.timeout must be more than 0".into());
        }
        if let Some(c) = &self.credentials {
            c.validate()?;
        }
        Ok(())
    }
}

impl NatsCredentials {
    fn validate(&self) -> Result<(), String> {
        let user = self.user.is_some() as u8 + self.user_file.is_some() as u8;
        let password = self.password_file.is_some() as u8 + self.password_env.is_some() as u8;
        let token = self.token_file.is_some() as u8 + self.token_env.is_some() as u8;
        let creds = self.creds_file.is_some() as u8;
        if user > 1 || password > 1 || token > 1 {
            return Err(
                "nats.credentials: set user or userFile, passwordFile or passwordEnv, \
                        tokenFile or tokenEnv: one of each at most"
                    .into(),
            );
        }
        if (user == 1) != (password == 1) {
            return Err(
                "nats.credentials: a user needs a password (passwordFile or passwordEnv) and \
                        a password needs a user (user or userFile)"
                    .into(),
            );
        }
        if user + token + creds != 1 {
            return Err("nats.credentials: set exactly one of user/password, token, credsFile".into());
        }
        Ok(())
    }

    /// Connect options carrying these credentials, secrets read now.
    async fn options(&self) -> anyhow::Result<ConnectOptions> {
        if let Some(path) = &self.creds_file {
            return ConnectOptions::with_credentials_file(path)
                .await
                .with_context(|| format!("reading NATS credentials file {}", path.display()));
        }
        if let Some(token) = secret(self.token_file.as_ref(), self.token_env.as_deref(), "token")? {
            return Ok(ConnectOptions::with_token(token));
        }
        let user = crate::secret::read(
            self.user.as_deref(),
            self.user_file.as_deref(),
            None,
            "nats.credentials.user",
        )?;
        let password = secret(
            self.password_file.as_ref(),
            self.password_env.as_deref(),
            "password",
        )?;
        match (user, password) {
            (Some(user), Some(password)) => Ok(ConnectOptions::with_user_and_password(user, password)),
            _ => bail!("nats.credentials: set exactly one of user/password, token, credsFile"),
        }
    }
}

fn secret(file: Option<&PathBuf>, env: Option<&str>, what: &str) -> anyhow::Result<Option<String>> {
    crate::secret::read(
        None,
        file.map(PathBuf::as_path),
        env,
        &format!("nats.credentials.{what}"),
    )
}

/// Publishes deliveries to NATS. One attempt per [`Sink::deliver`] call; the client reconnects
/// in the background, and attempts fail with [`SinkError::Retryable`] while it is disconnected.
pub struct NatsSink {
    client: async_nats::Client,
    jetstream: Option<jetstream::Context>,
    subject: Template,
    timeout: Duration,
}

impl fmt::Debug for NatsSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsSink")
            .field("state", &self.client.connection_state())
            .field("jetstream", &self.jetstream.is_some())
            .field("subject", &self.subject)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl NatsSink {
    /// Everything [`connect`](Self::connect) checks, without connecting: the configuration,
    /// the subject template and the credentials (secrets and files read, never shown).
    pub async fn check(config: &NatsConfig) -> anyhow::Result<()> {
        config.validate().map_err(anyhow::Error::msg)?;
        Template::parse(&config.subject).map_err(anyhow::Error::msg)?;
        if let Some(c) = &config.credentials {
            c.options().await?;
        }
        Ok(())
    }

    /// Validate `config`, read its secrets and start connecting. A server that is down does not
    /// fail this: the client keeps trying in the background and deliveries are retryable until
    /// it is up. Bad configuration and unreadable secrets do fail it.
    pub async fn connect(config: &NatsConfig) -> anyhow::Result<Self> {
        config.validate().map_err(anyhow::Error::msg)?;
        let subject = Template::parse(&config.subject).map_err(anyhow::Error::msg)?;
        let options = match &config.credentials {
            Some(c) => c.options().await?,
            None => ConnectOptions::new(),
        };
        let servers: Vec<String> = config.url.iter().map(|u| redact_url(u)).collect();
        let log_servers = servers.join(",");
        let client = options
            .name("crwatch-forward")
            .retry_on_initial_connect()
            .connection_timeout(config.timeout)
            .request_timeout(Some(config.timeout))
            .event_callback(move |event| {
                let servers = log_servers.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => tracing::info!(%servers, "NATS connected"),
                        async_nats::Event::Disconnected => tracing::warn!(%servers, "NATS disconnected"),
                        other => tracing::warn!(%servers, "NATS: {other}"),
                    }
                }
            })
            .connect(config.url.clone())
            .await
            .with_context(|| format!("connecting to NATS at {}", servers.join(",")))?;
        let jetstream = config.jetstream.then(|| {
            let mut context = jetstream::new(client.clone());
            context.set_timeout(config.timeout);
            context
        });
        Ok(Self {
            client,
            jetstream,
            subject,
            timeout: config.timeout,
        })
    }

    /// The subject `delivery` goes to.
    pub fn subject_for(&self, delivery: &Delivery) -> String {
        self.subject.render(&delivery.vars, dot_token)
    }

    /// The underlying client (for health reporting).
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    async fn publish(&self, delivery: &Delivery) -> Result<(), SinkError> {
        let subject = self.subject_for(delivery);
        let state = self.client.connection_state();
        if state != State::Connected {
            return Err(SinkError::Retryable(format!(
                "NATS is not connected ({state}); not publishing to {subject}"
            )));
        }
        let body = serde_json::to_vec(&*delivery.event)
            .map_err(|e| SinkError::Permanent(format!("serializing the CloudEvent: {e}")))?;
        let mut headers = HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, delivery.id.as_str());
        headers.insert("Content-Type", CONTENT_TYPE);
        match &self.jetstream {
            Some(js) => self.publish_jetstream(js, subject, headers, body).await,
            None => self.publish_core(subject, headers, body).await,
        }
    }

    async fn publish_core(
        &self,
        subject: String,
        headers: HeaderMap,
        body: Vec<u8>,
    ) -> Result<(), SinkError> {
        use async_nats::client::PublishErrorKind;
        let publish = async {
            self.client
                .publish_with_headers(subject.clone(), headers, body.into())
                .await
                .map_err(|e| match e.kind() {
                    PublishErrorKind::InvalidSubject | PublishErrorKind::MaxPayloadExceeded => {
                        SinkError::Permanent(format!("NATS publish to {subject}: {e}"))
                    }
                    PublishErrorKind::Send => SinkError::Retryable(format!("NATS publish to {subject}: {e}")),
                })?;
            self.client
                .flush()
                .await
                .map_err(|e| SinkError::Retryable(format!("NATS flush after publishing to {subject}: {e}")))
        };
        tokio::time::timeout(self.timeout, publish)
            .await
            .unwrap_or_else(|_| {
                Err(SinkError::Retryable(format!(
                    "NATS publish to {subject} not flushed within {}",
                    humantime::format_duration(self.timeout)
                )))
            })
    }

    async fn publish_jetstream(
        &self,
        js: &jetstream::Context,
        subject: String,
        headers: HeaderMap,
        body: Vec<u8>,
    ) -> Result<(), SinkError> {
        let timeout = humantime::format_duration(self.timeout);
        let error = |e: jetstream::context::PublishError| match e.kind() {
            JsErrorKind::StreamNotFound => SinkError::Retryable(format!(
                "no JetStream stream captures subject {subject}; create one (e.g. `nats stream add` \
                 with subjects {subject:?} or a wildcard covering it)"
            )),
            JsErrorKind::TimedOut => SinkError::Retryable(format!(
                "no JetStream acknowledgement for {subject} within {timeout}"
            )),
            JsErrorKind::MaxPayloadExceeded => {
                SinkError::Permanent(format!("JetStream publish to {subject}: {e}"))
            }
            _ => SinkError::Retryable(format!("JetStream publish to {subject}: {e}")),
        };
        let publish = async {
            let ack = js
                .publish_with_headers(subject.clone(), headers, body.into())
                .await
                .map_err(error)?;
            let ack = ack.await.map_err(error)?;
            if ack.duplicate {
                tracing::debug!(%subject, stream = %ack.stream, seq = ack.sequence, "JetStream dropped a duplicate");
            }
            Ok(())
        };
        tokio::time::timeout(self.timeout, publish)
            .await
            .unwrap_or_else(|_| {
                Err(SinkError::Retryable(format!(
                    "no JetStream acknowledgement for {subject} within {timeout}"
                )))
            })
    }
}

impl Sink for NatsSink {
    fn deliver<'a>(&'a self, delivery: &'a Delivery) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(self.publish(delivery))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use futures::StreamExt;
    use tokio::sync::OnceCell;

    use super::*;
    use crate::sink::TemplateVars;
    use crwatch_testsupport::nats::NatsServer;

    static SERVER: OnceCell<NatsServer> = OnceCell::const_new();

    async fn server() -> &'static NatsServer {
        SERVER
            .get_or_init(|| async { NatsServer::start().await.expect("starting nats-server") })
            .await
    }

    fn config(url: &str, subject: &str, jetstream: bool) -> NatsConfig {
        NatsConfig {
            url: vec![url.to_string()],
            subject: subject.to_string(),
            jetstream,
            credentials: None,
            timeout: Duration::from_secs(2),
        }
    }

    fn delivery(id: &str, name: &str) -> Delivery {
        Delivery {
            id: id.to_string(),
            event: Arc::new(serde_json::json!({
                "specversion": "1.0",
                "id": id,
                "source": "/apis/stable.example.com/v1/namespaces/default/databases",
                "type": "io.crwatch.resource.added",
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
                event: "added".into(),
            }),
        }
    }

    async fn wait_connected(sink: &NatsSink) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while sink.client().connection_state() != State::Connected {
            assert!(
                Instant::now() < deadline,
                "NATS client did not connect within 20s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Deliver until it succeeds (the client reconnects with backoff), or panic after 30 s.
    async fn deliver_until_ok(sink: &NatsSink, d: &Delivery) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match sink.deliver(d).await {
                Ok(()) => return,
                Err(e) => assert!(Instant::now() < deadline, "still failing after 30s: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn create_stream(url: &str, name: &str, subjects: &[&str]) -> jetstream::Context {
        let client = async_nats::connect(url).await.unwrap();
        let js = jetstream::new(client);
        js.create_stream(jetstream::stream::Config {
            name: name.to_string(),
            subjects: subjects.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
        .await
        .unwrap();
        js
    }

    #[test]
    fn config_parses_with_defaults_and_hides_secrets() {
        let c: NatsConfig = serde_saphyr::from_str("url: nats://u:secret@127.0.0.1:4222\n").unwrap();
        assert_eq!(c.url, vec!["nats://u:secret@127.0.0.1:4222"]);
        assert_eq!(c.subject, DEFAULT_SUBJECT);
        assert!(!c.jetstream);
        assert_eq!(c.timeout, Duration::from_secs(5));
        let debug = format!("{c:?}");
        assert!(!debug.contains("secret"), "{debug}");
        assert!(debug.contains("nats://u:***@127.0.0.1:4222"), "{debug}");
        c.validate().unwrap();

        let c: NatsConfig = serde_saphyr::from_str(
            "url: [nats://a:4222, nats://b:4222]\nsubject: x.{kind}\njetstream: true\ntimeout: 250ms\n\
             credentials:\n  user: bob\n  passwordEnv: NATS_PASSWORD\n",
        )
        .unwrap();
        assert_eq!(c.url.len(), 2);
        assert!(c.jetstream);
        assert_eq!(c.timeout, Duration::from_millis(250));
        c.validate().unwrap();

        assert!(serde_saphyr::from_str::<NatsConfig>("url: nats://a\nsubjcet: x\n").is_err());
        let bad: NatsConfig = serde_saphyr::from_str("url: nats://a\nsubject: x.{nope}\n").unwrap();
        assert!(bad.validate().unwrap_err().contains("unknown variable"));
        let bad: NatsConfig =
            serde_saphyr::from_str("url: nats://a\ncredentials:\n  user: bob\n  tokenEnv: T\n").unwrap();
        assert!(bad.validate().is_err());
        assert_eq!(redact_url("nats://tok@h:1"), "nats://***@h:1");
        assert_eq!(redact_url("nats://h:1"), "nats://h:1");
    }

    #[tokio::test]
    async fn core_publish_carries_headers_and_body() {
        let server = server().await;
        let client = async_nats::connect(server.url()).await.unwrap();
        let mut sub = client.subscribe("core.>").await.unwrap();
        client.flush().await.unwrap();

        let sink = NatsSink::connect(&config(
            &server.url(),
            "core.{group}.{kind}.{namespace}.{name}",
            false,
        ))
        .await
        .unwrap();
        wait_connected(&sink).await;
        let d = delivery("uid-1:42", "db.one");
        sink.deliver(&d).await.unwrap();

        let msg = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .expect("no message within 10s")
            .expect("subscription ended");
        assert_eq!(
            msg.subject.as_str(),
            "core.stable_example_com.Database.default.db_one"
        );
        let headers = msg.headers.expect("headers");
        assert_eq!(headers.get("Nats-Msg-Id").map(|v| v.as_str()), Some("uid-1:42"));
        assert_eq!(
            headers.get("Content-Type").map(|v| v.as_str()),
            Some(CONTENT_TYPE)
        );
        let body: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
        assert_eq!(body, *d.event);
    }

    #[tokio::test]
    async fn jetstream_acks_and_drops_duplicates() {
        let server = server().await;
        let js = create_stream(&server.url(), "CRWATCH", &["crwatch.>"]).await;
        let sink = NatsSink::connect(&config(&server.url(), DEFAULT_SUBJECT, true))
            .await
            .unwrap();
        wait_connected(&sink).await;
        let d = delivery("uid-2:7", "dup");
        sink.deliver(&d).await.unwrap();
        sink.deliver(&d).await.unwrap();
        let mut stream = js.get_stream("CRWATCH").await.unwrap();
        assert_eq!(stream.info().await.unwrap().state.messages, 1);
        let stored = stream
            .get_last_raw_message_by_subject(&sink.subject_for(&d))
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&stored.payload).unwrap();
        assert_eq!(body, *d.event);
    }

    #[tokio::test]
    async fn jetstream_without_a_stream_is_retryable() {
        let server = server().await;
        let sink = NatsSink::connect(&config(&server.url(), "nostream.{kind}.{name}", true))
            .await
            .unwrap();
        wait_connected(&sink).await;
        match sink.deliver(&delivery("uid-3:1", "x")).await {
            Err(SinkError::Retryable(msg)) => {
                assert!(
                    msg.contains("no JetStream stream captures subject nostream.Database.x"),
                    "{msg}"
                )
            }
            other => panic!("expected Retryable, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn server_down_is_retryable_and_recovers_after_restart() {
        let mut server = NatsServer::start().await.unwrap();
        create_stream(&server.url(), "RESTART", &["restart.>"]).await;
        let js_sink = NatsSink::connect(&config(&server.url(), "restart.{kind}.{name}", true))
            .await
            .unwrap();
        let core_sink = NatsSink::connect(&config(&server.url(), "core.{kind}.{name}", false))
            .await
            .unwrap();
        wait_connected(&js_sink).await;
        wait_connected(&core_sink).await;
        js_sink.deliver(&delivery("uid-4:1", "a")).await.unwrap();
        core_sink.deliver(&delivery("uid-4:1", "a")).await.unwrap();

        server.stop();
        let d = delivery("uid-4:2", "b");
        assert!(matches!(js_sink.deliver(&d).await, Err(SinkError::Retryable(_))));
        // Core NATS cannot tell at once: it fails once the client noticed the lost connection.
        let deadline = Instant::now() + Duration::from_secs(10);
        while core_sink.deliver(&d).await.is_ok() {
            assert!(
                Instant::now() < deadline,
                "core publish still succeeds 10s after the server died"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // A sink created while the server is down connects in the background.
        let late_sink = NatsSink::connect(&config(&server.url(), "restart.{kind}.{name}", true))
            .await
            .unwrap();
        match late_sink.deliver(&d).await {
            Err(SinkError::Retryable(msg)) => assert!(msg.contains("not connected"), "{msg}"),
            other => panic!("expected Retryable, got {other:?}"),
        }

        server.restart().await.unwrap();
        deliver_until_ok(&js_sink, &d).await;
        deliver_until_ok(&late_sink, &delivery("uid-4:3", "c")).await;
        deliver_until_ok(&core_sink, &d).await;

        let js = jetstream::new(async_nats::connect(server.url()).await.unwrap());
        let mut stream = js.get_stream("RESTART").await.unwrap();
        // a (before the stop, kept in the file store), b, c; retried duplicates of b are dropped.
        assert_eq!(stream.info().await.unwrap().state.messages, 3);
    }
}
