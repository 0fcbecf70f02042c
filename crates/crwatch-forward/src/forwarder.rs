//! The running forwarder: resolves the configured resources (and opens the non-Kubernetes
//! sources), opens the checkpoint and the sinks, starts one informer per stream, serves
//! `/metrics` and the probes, and shuts down with a grace period and a summary of what stayed
//! undelivered.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crwatch::discovery::{ResourceType, resolve};
use crwatch::informer::Informer;
use kube::api::DynamicObject;
use tokio_util::sync::CancellationToken;

use crate::Error;
use crate::checkpoint::Committer;
use crate::config::{Address, ConfigError, ForwardConfig, ResourceConfig, SinkConfig, SourceKind};
use crate::event::{EventBuilder, redact_uri};
use crate::metrics::{ForwardMetrics, StreamLabels};
use crate::pipeline::{Dispatcher, Route, SinkRunner, SinkState};
use crate::sink::Sink;
#[allow(unused_imports)]
use crate::sinks;
use crate::stream::{StreamHandler, snapshot_of};

/// A connected Kubernetes API server, for `resources[].resource` entries.
#[derive(Clone)]
pub struct Kubernetes {
    /// The client.
    pub client: kube::Client,
    /// The server's URL: the default CloudEvents `source` prefix.
    pub url: String,
    /// Every resource type the server serves ([`crwatch::discovery::discover`]).
    pub types: Vec<ResourceType>,
}

/// Build the sink a configuration names (checking templates, secrets, CA files and URLs).
pub async fn build_sink(s: &SinkConfig) -> Result<Arc<dyn Sink>, Error> {
    let name = s.name.value.clone();
    let failed = |e: anyhow::Error| Error::Sink {
        sink: name.clone(),
        message: format!("{e:#}"),
    };
    #[cfg(feature = "webhook")]
    if let Some(c) = &s.webhook {
        return Ok(Arc::new(sinks::webhook::WebhookSink::new(c).map_err(failed)?));
    }
    #[cfg(feature = "file")]
    if let Some(c) = &s.file {
        return Ok(Arc::new(sinks::file::FileSink::open(c).map_err(failed)?));
    }
    #[cfg(feature = "nats")]
    if let Some(c) = &s.nats {
        return Ok(Arc::new(sinks::nats::NatsSink::connect(c).await.map_err(failed)?));
    }
    #[cfg(feature = "amqp")]
    if let Some(c) = &s.amqp {
        return Ok(Arc::new(sinks::amqp::AmqpSink::connect(c).await.map_err(failed)?));
    }
    #[cfg(feature = "mqtt")]
    if let Some(c) = &s.mqtt {
        return Ok(Arc::new(
            sinks::mqtt::MqttSink::connect_named(c, &s.name.value)
                .await
                .map_err(failed)?,
        ));
    }
    #[cfg(feature = "redis")]
    if let Some(c) = &s.redis {
        return Ok(Arc::new(
            sinks::redis::RedisSink::connect(c).await.map_err(failed)?,
        ));
    }
    let _ = failed;
    Err(Error::Sink {
        sink: name.clone(),
        message: "no destination this build supports is configured".into(),
    })
}

/// Check a sink's configuration as [`build_sink`] does (templates, secrets, CA files and
/// URLs), without connecting to any broker: what `crwatch forward --check` runs. A file sink
/// opens its file, as delivering would.
pub async fn check_sink(s: &SinkConfig) -> Result<(), Error> {
    let name = s.name.value.clone();
    let failed = |e: anyhow::Error| Error::Sink {
        sink: name.clone(),
        message: format!("{e:#}"),
    };
    #[cfg(feature = "nats")]
    if let Some(c) = &s.nats {
        return sinks::nats::NatsSink::check(c).await.map_err(failed);
    }
    #[cfg(feature = "amqp")]
    if let Some(c) = &s.amqp {
        return sinks::amqp::AmqpSink::check(c).map_err(failed);
    }
    #[cfg(feature = "mqtt")]
    if let Some(c) = &s.mqtt {
        return sinks::mqtt::MqttSink::check(c).map_err(failed);
    }
    #[cfg(feature = "redis")]
    if let Some(c) = &s.redis {
        return sinks::redis::RedisSink::new(c).map(drop).map_err(failed);
    }
    let _ = failed;
    // The webhook and file sinks make no connection when built.
    build_sink(s).await.map(drop)
}

/// What one stream watches.
enum Watch {
    Kube {
        rt: ResourceType,
        namespace: Option<String>,
    },
    Source {
        kind: SourceKind,
    },
}

struct Stream {
    entry: usize,
    watch: Watch,
    /// For messages and the checkpoint key.
    name: String,
    /// The checkpoint key: a change of what is watched starts the stream afresh.
    key: String,
    labels: StreamLabels,
}

fn located(file: &str, r: &ResourceConfig, message: String) -> ConfigError {
    ConfigError {
        file: file.to_string(),
        location: ForwardConfig::entry_location(r),
        message,
    }
}

/// Resolve one Kubernetes resource entry against `types`, checking that namespaces are given
/// for namespaced kinds only.
fn resolve_entry(
    r: &ResourceConfig,
    name: &str,
    file: &str,
    types: &[ResourceType],
) -> Result<ResourceType, ConfigError> {
    let rt = resolve(types, name).map_err(|e| located(file, r, format!("resource {name:?}: {e}")))?;
    if let Some(ns) = r.namespaces.first().filter(|_| !rt.namespaced) {
        return Err(ConfigError {
            file: file.to_string(),
            location: Some((ns.referenced.line(), ns.referenced.column())),
            message: format!(
                "resource {name:?} ({}) is cluster-scoped: remove namespaces",
                rt.full_name()
            ),
        });
    }
    Ok(rt)
}

/// Resolve every Kubernetes resource of `config` against `types` and check that namespaces
/// are given for namespaced kinds only: every problem, located in `file`.
pub fn check_resources(config: &ForwardConfig, file: &str, types: &[ResourceType]) -> Vec<ConfigError> {
    config
        .resources
        .iter()
        .filter_map(|r| {
            let name = r.resource.as_ref()?;
            resolve_entry(r, &name.value, file, types).err()
        })
        .collect()
}

/// [`check_resources`], and that every namespace listed exists on the server.
pub async fn check_server(config: &ForwardConfig, file: &str, kube: &Kubernetes) -> Vec<ConfigError> {
    let mut errors = check_resources(config, file, &kube.types);
    let api: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(kube.client.clone());
    for r in &config.resources {
        for ns in &r.namespaces {
            let at = Some((ns.referenced.line(), ns.referenced.column()));
            let message = match crwatch::api::get_opt(&api, &ns.value).await {
                Ok(Some(_)) => continue,
                Ok(None) => format!("namespace {:?} does not exist on the server", ns.value),
                Err(kube::Error::Api(s)) if s.code == 403 => continue, // may not read namespaces
                Err(e) => format!("namespace {:?}: {e}", ns.value),
            };
            errors.push(ConfigError {
                file: file.to_string(),
                location: at,
                message,
            });
        }
    }
    errors
}

fn plan(config: &ForwardConfig, file: &str, kube: Option<&Kubernetes>) -> Result<Vec<Stream>, Error> {
    let mut streams = vec![];
    for (entry, r) in config.resources.iter().enumerate() {
        if let Some(uri) = &r.source {
            let kind = SourceKind::of(&uri.value).map_err(|m| located(file, r, m))?;
            let name = redact_uri(&uri.value);
            streams.push(Stream {
                entry,
                watch: Watch::Source { kind },
                key: format!("#{entry}|source={name}"),
                labels: StreamLabels {
                    resource: name.clone(),
                    namespace: String::new(),
                },
                name,
            });
            continue;
        }
        let Some(name) = &r.resource else { continue };
        let Some(kube) = kube else {
            return Err(located(
                file,
                r,
                format!("resource {:?} needs a Kubernetes API server", name.value),
            )
            .into());
        };
        let rt = resolve_entry(r, &name.value, file, &kube.types)?;
        let namespaces: Vec<Option<String>> = if r.namespaces.is_empty() {
            vec![None]
        } else {
            r.namespaces.iter().map(|n| Some(n.value.clone())).collect()
        };
        for namespace in namespaces {
            let full = rt.full_name();
            let key = format!(
                "#{entry}|{full}/{}|ns={}|labels={}|fields={}",
                rt.version,
                namespace.as_deref().unwrap_or("*"),
                r.label_selector.as_deref().unwrap_or(""),
                r.field_selector.as_deref().unwrap_or("")
            );
            let name = match &namespace {
                Some(ns) => format!("{full} in namespace {ns}"),
                None => full.clone(),
            };
            streams.push(Stream {
                entry,
                labels: StreamLabels {
                    resource: full,
                    namespace: namespace.clone().unwrap_or_default(),
                },
                watch: Watch::Kube {
                    rt: rt.clone(),
                    namespace,
                },
                name,
                key,
            });
        }
    }
    Ok(streams)
}

/// An informer over the stream's source.
async fn informer(
    stream: &Stream,
    r: &ResourceConfig,
    kube: Option<&Kubernetes>,
) -> Result<Informer<DynamicObject>, Error> {
    let source_error = |message: String| Error::Source {
        stream: stream.name.clone(),
        message,
    };
    match &stream.watch {
        Watch::Kube { rt, namespace } => {
            let Some(kube) = kube else {
                return Err(source_error("needs a Kubernetes API server".into()));
            };
            let mut source = crwatch::source::kube::KubeSource::dynamic(
                kube.client.clone(),
                &rt.api_resource(),
                namespace.as_deref(),
            );
            if let Some(l) = &r.label_selector {
                source = source.labels(l);
            }
            if let Some(f) = &r.field_selector {
                source = source.fields(f);
            }
            Ok(Informer::new(source))
        }
        Watch::Source { kind } => {
            let uri = r.source.as_ref().map(|s| s.value.clone()).unwrap_or_default();
            match kind {
                #[cfg(feature = "source-http")]
                SourceKind::Http => {
                    let mut s = crwatch::source::http::HttpSource::new(uri);
                    if let Some(i) = r.interval {
                        s = s.interval(i);
                    }
                    if let Some(p) = &r.items {
                        s = s.items(p.clone());
                    }
                    if let Some(k) = &r.key {
                        s = s.key(k.clone());
                    }
                    s.validate().map_err(|e| source_error(e.to_string()))?;
                    Ok(Informer::new(s))
                }
                #[cfg(feature = "source-webhook")]
                SourceKind::Webhook => {
                    let listen = r.listen.as_ref().map(|l| l.value.as_str()).unwrap_or_default();
                    let addr = crate::config::parse_address(listen).map_err(source_error)?;
                    let s = crwatch::source::webhook::WebhookSource::new(addr)
                        .listen()
                        .await
                        .map_err(|e| source_error(e.to_string()))?;
                    Ok(Informer::new(s))
                }
                #[cfg(feature = "source-postgres")]
                SourceKind::Postgres => {
                    let s = crwatch::source::postgres::PostgresSource::from_url(&uri)
                        .map_err(|e| source_error(e.to_string()))?;
                    Ok(Informer::new(s))
                }
                #[cfg(feature = "source-mysql")]
                SourceKind::Mysql => {
                    // The URL carries the polling settings (`interval=`, `updated_at=`, ...).
                    let s = crwatch::source::mysql::MysqlSource::from_url(&uri)
                        .map_err(|e| source_error(e.to_string()))?;
                    Ok(Informer::new(s))
                }
                #[cfg(feature = "source-file")]
                SourceKind::File => {
                    let s = crwatch::source::file::FileSource::from_url(&uri)
                        .map_err(|e| source_error(e.to_string()))?;
                    Ok(Informer::new(s))
                }
                #[allow(unreachable_patterns)]
                _ => Err(source_error(format!(
                    "{} is not supported by this build",
                    redact_uri(&uri)
                ))),
            }
        }
    }
}

/// What stayed undelivered at shutdown.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Undelivered {
    /// Per sink: changes queued or being delivered.
    pub sinks: Vec<(String, usize)>,
    /// Per stream: changes not acknowledged by every sink (sent again after a restart, from
    /// the checkpoint).
    pub streams: Vec<(String, usize)>,
}

impl Undelivered {
    /// Whether everything was delivered.
    pub fn is_empty(&self) -> bool {
        self.sinks.iter().all(|(_, n)| *n == 0) && self.streams.iter().all(|(_, n)| *n == 0)
    }
}

impl std::fmt::Display for Undelivered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_empty() {
            return write!(f, "every change was delivered");
        }
        let list = |v: &[(String, usize)]| {
            v.iter()
                .filter(|(_, n)| *n > 0)
                .map(|(name, n)| format!("{name}: {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        write!(
            f,
            "undelivered changes per sink ({}); per stream ({}); they are sent again after a restart when a checkpoint is configured",
            list(&self.sinks),
            list(&self.streams)
        )
    }
}

/// A running forwarder.
///
/// ```no_run
/// use crwatch_forward::{ForwardConfig, Forwarder, Kubernetes};
/// # async fn f(client: kube::Client) -> Result<(), Box<dyn std::error::Error>> {
/// let config = ForwardConfig::parse(
///     "resources:\n  - resource: configmaps\nsinks:\n  - name: out\n    file: {path: \"-\"}\n",
///     "forward.yaml",
/// )?;
/// let types = crwatch::discovery::discover(&client).await?;
/// let kube = Kubernetes { client, url: "https://127.0.0.1:6443".into(), types };
/// let forwarder = Forwarder::start(config, "forward.yaml", Some(kube)).await?;
/// tokio::signal::ctrl_c().await?;
/// let undelivered = forwarder.shutdown().await?;
/// eprintln!("{undelivered}");
/// # Ok(()) }
/// ```
pub struct Forwarder {
    cancel_sources: CancellationToken,
    abort: CancellationToken,
    stop_http: CancellationToken,
    handlers: Vec<Arc<StreamHandler>>,
    informers: Vec<Informer<DynamicObject>>,
    stream_names: Vec<String>,
    workers: Vec<tokio::task::JoinHandle<()>>,
    saver: tokio::task::JoinHandle<()>,
    committer: Arc<Committer>,
    sink_states: Vec<(String, Arc<SinkState>)>,
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
    /// Resolve the resources (against `kube`'s types; `None` when every entry is a
    /// non-Kubernetes source), open the checkpoint and the sinks, and start forwarding. `file`
    /// names the configuration in errors.
    pub async fn start(config: ForwardConfig, file: &str, kube: Option<Kubernetes>) -> Result<Self, Error> {
        let kube = kube.as_ref();
        let registry = crwatch::metrics::Metrics::default();
        let metrics = registry.with_registry(ForwardMetrics::register);
        let streams = plan(&config, file, kube)?;

        let mut sinks = Vec::new();
        for s in &config.sinks {
            sinks.push(SinkRunner {
                name: s.name.value.clone(),
                sink: build_sink(s).await?,
                retry: s.retry.clone(),
                dead_letter: s.dead_letter.clone(),
                queue_size: s.queue_size,
                parallelism: s.parallelism,
            });
        }

        let source_prefix = config
            .source
            .clone()
            .or_else(|| kube.map(|k| k.url.clone()))
            .unwrap_or_default();
        let routes = streams
            .iter()
            .map(|s| {
                let r = &config.resources[s.entry];
                let builder = match &s.watch {
                    Watch::Kube { rt, .. } => EventBuilder::new(&source_prefix, rt.clone()),
                    Watch::Source { .. } => {
                        EventBuilder::for_source(r.source.as_ref().map_or("", |u| u.value.as_str()))
                    }
                };
                Route {
                    builder,
                    sinks: config.sinks_of(r),
                    events: r.events.clone(),
                    fields: r.fields.iter().map(|f| f.value.clone()).collect(),
                    resource: s.labels.resource.clone(),
                }
            })
            .collect();

        let checkpoint_path = config.checkpoint.as_ref().map(|c| c.path.clone());
        // Room for every queue, the change each lane is delivering, and one being dispatched:
        // beyond that the watch waits (see Committer::open).
        let max_in_flight = config
            .sinks
            .iter()
            .map(|s| s.queue_size.saturating_add(s.parallelism))
            .fold(1usize, usize::saturating_add);
        let committer = Arc::new(Committer::open(
            streams.iter().map(|s| s.key.clone()).collect(),
            checkpoint_path,
            max_in_flight,
        )?);
        let abort = CancellationToken::new();
        let (dispatcher, workers) =
            Dispatcher::start(routes, sinks, committer.clone(), metrics.clone(), abort.clone())?;

        let stop_http = CancellationToken::new();
        let readiness = crwatch::health::Readiness::default();
        let serve = |what: &'static str, addr: SocketAddr, router| {
            let stop = stop_http.clone();
            async move {
                crwatch::health::serve(addr, router, stop)
                    .await
                    .map_err(|e| Error::Serve {
                        what,
                        addr,
                        message: e.to_string(),
                    })
            }
        };
        let metrics_addr = match config.metrics {
            Address::On(a) => {
                Some(serve("metrics", a, crwatch::health::metrics_router(registry.clone())).await?)
            }
            Address::Off => None,
        };
        let probes_addr = match config.probes {
            Address::On(a) => {
                Some(serve("probes", a, crwatch::health::probes_router(readiness.clone())).await?)
            }
            Address::Off => None,
        };

        let cancel_sources = CancellationToken::new();
        let mut informers = Vec::new();
        let mut handlers = Vec::new();
        for (index, stream) in streams.iter().enumerate() {
            let r = &config.resources[stream.entry];
            let informer = informer(stream, r, kube).await?;
            let committed = committer.committed(index);
            let fresh = committed.resource_version.is_none() && committed.objects.is_empty();
            if let Some(snapshot) = snapshot_of(&committed) {
                informer.resume_from(snapshot);
            }
            let type_meta = match &stream.watch {
                Watch::Kube { rt, .. } => {
                    let ar = rt.api_resource();
                    Some((ar.api_version, ar.kind))
                }
                Watch::Source { .. } => None,
            };
            let handler = Arc::new(StreamHandler::new(
                index,
                dispatcher.clone(),
                fresh && r.skip_existing,
                type_meta,
            ));
            informer.add_async_handler(handler.clone());
            handlers.push(handler);
            informers.push(informer);
        }
        for informer in &informers {
            informer.start(cancel_sources.clone());
        }
        let sink_states = dispatcher.states();
        drop(dispatcher);

        // Ready once every stream listed or resumed, and while none has been failing for
        // longer than unhealthyAfter.
        let unhealthy_after = config.unhealthy_after;
        let checked: Vec<(String, Informer<DynamicObject>)> = streams
            .iter()
            .map(|s| s.name.clone())
            .zip(informers.iter().cloned())
            .collect();
        readiness.add_check(move || {
            let failing: Vec<String> = checked
                .iter()
                .filter(|(_, i)| !i.is_healthy(unhealthy_after))
                .map(|(name, i)| {
                    let h = i.health();
                    format!(
                        "{name}: source failing for {}s ({})",
                        h.unhealthy_for.map_or(0, |d| d.as_secs()),
                        h.last_error.unwrap_or_default()
                    )
                })
                .collect();
            if failing.is_empty() {
                Ok(())
            } else {
                Err(failing.join("; "))
            }
        });
        let synced: Vec<Informer<DynamicObject>> = informers.clone();
        let ready_cancel = cancel_sources.clone();
        let ready_flag = readiness.clone();
        tokio::spawn(async move {
            loop {
                if synced.iter().all(Informer::has_synced) {
                    ready_flag.set(true);
                    return;
                }
                tokio::select! {
                    _ = ready_cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        });
        spawn_stream_metrics(
            streams
                .iter()
                .map(|s| s.labels.clone())
                .zip(informers.iter().cloned())
                .collect(),
            metrics,
            cancel_sources.clone(),
        );

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
                    tracing::error!(error = %e, "cannot write the checkpoint");
                }
            }
        });

        Ok(Self {
            cancel_sources,
            abort,
            stop_http,
            handlers,
            stream_names: streams.iter().map(|s| s.name.clone()).collect(),
            informers,
            workers,
            saver,
            committer,
            sink_states,
            grace: config.shutdown_grace,
            streams: streams.len(),
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

    /// What is undelivered now: per sink (queued or being delivered) and per stream.
    pub fn undelivered(&self) -> Undelivered {
        Undelivered {
            sinks: self
                .sink_states
                .iter()
                .map(|(name, s)| (name.clone(), s.outstanding()))
                .collect(),
            streams: self
                .stream_names
                .iter()
                .cloned()
                .zip(self.committer.pending_per_stream())
                .collect(),
        }
    }

    /// Whether every stream has listed (or resumed) once.
    pub fn has_synced(&self) -> bool {
        self.informers.iter().all(Informer::has_synced)
    }

    /// Wait until every stream has listed (or resumed) once; false after `timeout`.
    pub async fn wait_synced(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.has_synced() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// How each stream's source is doing, by stream name.
    pub fn health(&self) -> Vec<(String, crwatch::informer::SourceHealth)> {
        self.stream_names
            .iter()
            .cloned()
            .zip(self.informers.iter().map(Informer::health))
            .collect()
    }

    /// Stop watching, give queued changes the grace period to be delivered, write the
    /// checkpoint, and say what stayed undelivered.
    pub async fn shutdown(mut self) -> Result<Undelivered, Error> {
        self.cancel_sources.cancel();
        // Without the dispatcher the lanes see their queues close once they are empty.
        for h in &self.handlers {
            h.close();
        }
        let drain = futures::future::join_all(std::mem::take(&mut self.workers));
        if tokio::time::timeout(self.grace, drain).await.is_err() {
            self.abort.cancel();
        }
        let undelivered = self.undelivered();
        self.stop_http.cancel();
        let _ = (&mut self.saver).await;
        self.committer.save_if_dirty()?;
        Ok(undelivered)
    }
}

/// Copy each stream's informer statistics into the metrics every second.
fn spawn_stream_metrics(
    streams: Vec<(StreamLabels, Informer<DynamicObject>)>,
    metrics: ForwardMetrics,
    cancel: CancellationToken,
) {
    tokio::spawn(async move {
        let mut seen = vec![(0u64, 0u64, 0u64); streams.len()];
        loop {
            for ((labels, informer), (relists, errors, undecodable)) in streams.iter().zip(seen.iter_mut()) {
                let stats = informer.stats();
                let r = stats.relists.load(Ordering::Relaxed);
                let e = stats.errors.load(Ordering::Relaxed);
                let d = stats.decode_errors.load(Ordering::Relaxed);
                metrics
                    .decode_errors
                    .get_or_create(labels)
                    .inc_by(d.saturating_sub(*undecodable));
                *undecodable = d;
                let resource = crate::metrics::ResourceOnly {
                    resource: labels.resource.clone(),
                };
                metrics
                    .relists
                    .get_or_create(&resource)
                    .inc_by(r.saturating_sub(*relists));
                metrics
                    .reconnects
                    .get_or_create(&resource)
                    .inc_by(e.saturating_sub(*errors));
                metrics
                    .source_errors
                    .get_or_create(labels)
                    .inc_by(e.saturating_sub(*errors));
                (*relists, *errors) = (r, e);
                metrics
                    .connected
                    .get_or_create(labels)
                    .set(i64::from(informer.health().connected));
                let last = stats.last_event_ms.load(Ordering::Relaxed);
                metrics.last_event.get_or_create(labels).set(last as f64 / 1000.0);
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    });
}
