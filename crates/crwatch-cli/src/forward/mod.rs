//! `crwatch forward`: route changes of chosen resources to sinks (HTTP webhook, NATS, AMQP,
//! files) as CloudEvents, at least once, in order per object, resuming from a checkpoint.
//!
//! The flow: [`source`] streams (list + watch per resource and namespace) → [`pipeline`]
//! (filters, bounded per-sink queues split into per-object lanes, retries, dead letters) →
//! [`sink`]s; acknowledgements flow back to the [`checkpoint`] committer, which advances the
//! resume point only over changes every sink acknowledged.

pub mod checkpoint;
pub mod config;
pub mod event;
pub mod metrics;
pub mod pipeline;
pub mod sink;
pub mod sinks;
pub mod source;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use self::checkpoint::Committer;
use self::config::{Address, ForwardConfig, SinkConfig};
use self::event::EventBuilder;
use self::metrics::ForwardMetrics;
use self::pipeline::{Dispatcher, Route, SinkRunner};
use self::sink::Sink;
use self::source::{StreamRunner, StreamSpec};
use crate::Connection;
use crate::resolve::{discover, resolve};

/// Run `crwatch forward` until SIGTERM or Ctrl-C.
pub async fn run(args: crate::args::ForwardArgs) -> anyhow::Result<()> {
    let config = ForwardConfig::load(&args.config)?;
    if args.check {
        // Build the sinks too: templates, secrets, CA files and URLs are checked there.
        for s in &config.sinks {
            build_sink(s, &args.config.display().to_string()).await?;
        }
        println!("{}: configuration is valid", args.config.display());
        return Ok(());
    }
    let conn = Connection {
        kubeconfig: args.kubeconfig.clone(),
        context: args.context.clone(),
    };
    let forwarder = Forwarder::start(config, &args.config.display().to_string(), &conn).await?;
    eprintln!(
        "crwatch forward: {} stream(s) to {} sink(s){}",
        forwarder.streams,
        forwarder.sinks,
        forwarder
            .metrics_addr
            .map(|a| format!("; metrics on http://{a}/metrics"))
            .unwrap_or_default()
    );
    crwatch::manager::shutdown_signal().await;
    eprintln!("crwatch forward: shutting down, delivering what is queued");
    forwarder.shutdown().await
}

async fn build_sink(s: &SinkConfig, file: &str) -> anyhow::Result<Arc<dyn Sink>> {
    let name = &s.name.value;
    let what = || format!("{file}: sink {name:?}");
    if let Some(c) = &s.webhook {
        return Ok(Arc::new(sinks::webhook::WebhookSink::new(c).with_context(what)?));
    }
    if let Some(c) = &s.file {
        return Ok(Arc::new(sinks::file::FileSink::open(c).with_context(what)?));
    }
    #[cfg(feature = "nats")]
    if let Some(c) = &s.nats {
        return Ok(Arc::new(
            sinks::nats::NatsSink::connect(c).await.with_context(what)?,
        ));
    }
    #[cfg(feature = "amqp")]
    if let Some(c) = &s.amqp {
        return Ok(Arc::new(
            sinks::amqp::AmqpSink::connect(c).await.with_context(what)?,
        ));
    }
    anyhow::bail!("{}: no destination configured", what())
}

/// A running forwarder.
pub struct Forwarder {
    cancel_sources: CancellationToken,
    abort: CancellationToken,
    stop_http: CancellationToken,
    sources: Vec<tokio::task::JoinHandle<()>>,
    workers: Vec<tokio::task::JoinHandle<()>>,
    saver: tokio::task::JoinHandle<()>,
    committer: Arc<Committer>,
    grace: Duration,
    /// Streams watched.
    pub streams: usize,
    /// Sinks fed.
    pub sinks: usize,
    /// Where `/metrics` is served.
    pub metrics_addr: Option<SocketAddr>,
    /// Where the probes are served.
    pub probes_addr: Option<SocketAddr>,
    /// The metrics registry (also served on `/metrics`).
    pub registry: crwatch::metrics::Metrics,
}

impl Forwarder {
    /// Connect, resolve the resources, open the checkpoint and sinks, and start forwarding.
    pub async fn start(config: ForwardConfig, file: &str, conn: &Connection) -> anyhow::Result<Self> {
        let (client, default_ns, url) = crate::connect_with_url(conn).await?;
        let _ = default_ns;
        let types = discover(&client).await?;

        let registry = crwatch::metrics::Metrics::default();
        let metrics = registry.with_registry(ForwardMetrics::register);

        let mut sinks = Vec::new();
        for s in &config.sinks {
            sinks.push(SinkRunner {
                name: s.name.value.clone(),
                sink: build_sink(s, file).await?,
                retry: s.retry.clone(),
                dead_letter: s.dead_letter.clone(),
                queue_size: s.queue_size,
                parallelism: s.parallelism,
            });
        }

        let source_prefix = config.source.clone().unwrap_or(url);
        let mut specs = Vec::new();
        let mut routes = Vec::new();
        for (entry_index, r) in config.resources.iter().enumerate() {
            let rt = resolve(&types, &r.resource.value).map_err(|e| config::ConfigError {
                file: file.to_string(),
                location: Some((r.resource.referenced.line(), r.resource.referenced.column())),
                message: format!("resource {:?}: {e}", r.resource.value),
            })?;
            if !rt.namespaced && !r.namespaces.is_empty() {
                return Err(config::ConfigError {
                    file: file.to_string(),
                    location: Some((r.resource.referenced.line(), r.resource.referenced.column())),
                    message: format!(
                        "resource {:?} is cluster-scoped: namespaces do not apply",
                        r.resource.value
                    ),
                }
                .into());
            }
            let namespaces: Vec<Option<String>> = if r.namespaces.is_empty() {
                vec![None]
            } else {
                r.namespaces.iter().cloned().map(Some).collect()
            };
            for namespace in namespaces {
                specs.push(StreamSpec {
                    entry: entry_index,
                    index: specs.len(),
                    resource: rt.api_resource(),
                    full_name: rt.full_name(),
                    namespace,
                    labels: r.label_selector.clone(),
                    fields: r.field_selector.clone(),
                    skip_existing: r.skip_existing,
                });
                routes.push(Route {
                    builder: EventBuilder::new(&source_prefix, rt.clone()),
                    sinks: config.sinks_of(r),
                    events: r.events.clone(),
                    fields: r.fields.iter().map(|f| f.value.clone()).collect(),
                    resource: rt.full_name(),
                });
            }
        }

        let checkpoint_path = config.checkpoint.as_ref().map(|c| c.path.clone());
        // Room for every queue, the change each lane is delivering, and one being dispatched:
        // beyond that the watch waits (see Committer::open).
        let max_in_flight = config
            .sinks
            .iter()
            .map(|s| s.queue_size + s.parallelism)
            .sum::<usize>()
            + 1;
        let committer = Arc::new(Committer::open(
            specs.iter().map(StreamSpec::key).collect(),
            checkpoint_path,
            max_in_flight,
        )?);
        let abort = CancellationToken::new();
        let (dispatcher, workers) =
            Dispatcher::start(routes, sinks, committer.clone(), metrics.clone(), abort.clone())?;

        let stop_http = CancellationToken::new();
        let readiness = crwatch::health::Readiness::default();
        let metrics_addr = match config.metrics {
            Address::On(a) => Some(
                crwatch::health::serve(
                    a,
                    crwatch::health::metrics_router(registry.clone()),
                    stop_http.clone(),
                )
                .await
                .with_context(|| format!("serving metrics on {a}"))?,
            ),
            Address::Off => None,
        };
        let probes_addr = match config.probes {
            Address::On(a) => Some(
                crwatch::health::serve(
                    a,
                    crwatch::health::probes_router(readiness.clone()),
                    stop_http.clone(),
                )
                .await
                .with_context(|| format!("serving probes on {a}"))?,
            ),
            Address::Off => None,
        };

        let cancel_sources = CancellationToken::new();
        let mut flags = Vec::new();
        let mut sources = Vec::new();
        let streams = specs.len();
        for spec in specs {
            let synced = Arc::new(AtomicBool::new(false));
            flags.push(synced.clone());
            let start = committer.committed(spec.index);
            let runner = StreamRunner {
                spec,
                client: client.clone(),
                dispatcher: dispatcher.clone(),
                metrics: metrics.clone(),
                synced,
                backoff: (Duration::from_millis(800), Duration::from_secs(30)),
            };
            sources.push(tokio::spawn(runner.run(start, cancel_sources.clone())));
        }
        drop(dispatcher);
        let ready_cancel = cancel_sources.clone();
        tokio::spawn(async move {
            // Ready once every stream has listed or resumed its watch.
            loop {
                if flags.iter().all(|f| f.load(Ordering::SeqCst)) {
                    readiness.set(true);
                    return;
                }
                tokio::select! {
                    _ = ready_cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        });

        let interval = config
            .checkpoint
            .as_ref()
            .map(|c| c.interval)
            .unwrap_or(Duration::from_secs(1));
        let saver_committer = committer.clone();
        let saver_stop = stop_http.clone();
        let saver = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = saver_stop.cancelled() => return,
                    _ = tokio::time::sleep(interval) => {}
                }
                if let Err(e) = saver_committer.save_if_dirty() {
                    tracing::error!(error = %format!("{e:#}"), "cannot write the checkpoint");
                }
            }
        });

        Ok(Self {
            cancel_sources,
            abort,
            stop_http,
            sources,
            workers,
            saver,
            committer,
            grace: config.shutdown_grace,
            streams,
            sinks: config.sinks.len(),
            metrics_addr,
            probes_addr,
            registry,
        })
    }

    /// Changes not yet acknowledged by every sink.
    pub fn in_flight(&self) -> usize {
        self.committer.in_flight()
    }

    /// Stop watching, give queued changes the grace period to be delivered, and write the
    /// checkpoint.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.cancel_sources.cancel();
        for s in self.sources {
            let _ = s.await;
        }
        let drain = futures::future::join_all(self.workers);
        if tokio::time::timeout(self.grace, drain).await.is_err() {
            tracing::warn!(
                in_flight = self.committer.in_flight(),
                "shutdown grace period over: undelivered changes will be sent after a restart"
            );
            self.abort.cancel();
        }
        self.stop_http.cancel();
        let _ = self.saver.await;
        self.committer.save_if_dirty()
    }
}
