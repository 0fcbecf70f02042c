//! Prometheus metrics with controller-runtime's names and labels, so existing dashboards
//! work: reconcile counts, errors, durations and worker gauges per controller.

use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::HistogramWithExemplars;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels `controller`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabel {
    /// The controller's name.
    pub controller: String,
}

/// Labels `controller`, `result` (`success`, `error`, `requeue`, `requeue_after`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// The controller's name.
    pub controller: String,
    /// How the reconcile ended.
    pub result: String,
}

/// The exemplar label of `controller_runtime_reconcile_time_seconds`: the id of the reconcile's
/// trace (hex, as OpenTelemetry and Grafana show it), when it was sampled.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TraceLabel {
    /// The trace id.
    pub trace_id: String,
}

fn reconcile_buckets() -> impl Iterator<Item = f64> {
    // controller-runtime's buckets for controller_runtime_reconcile_time_seconds.
    [
        0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0,
        1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 15.0, 20.0, 25.0, 30.0,
        40.0, 50.0, 60.0,
    ]
    .into_iter()
}

/// The per-controller metric families.
#[derive(Clone)]
pub struct ControllerMetrics {
    /// `controller_runtime_reconcile_total{controller,result}`.
    pub reconcile_total: Family<ResultLabels, Counter>,
    /// `controller_runtime_reconcile_errors_total{controller}`.
    pub reconcile_errors: Family<ControllerLabel, Counter>,
    /// `controller_runtime_terminal_reconcile_errors_total{controller}`.
    pub terminal_errors: Family<ControllerLabel, Counter>,
    /// `controller_runtime_reconcile_panics_total{controller}`.
    pub panics: Family<ControllerLabel, Counter>,
    /// `controller_runtime_reconcile_time_seconds{controller}`, with the trace id of the latest
    /// traced reconcile per bucket as an OpenMetrics exemplar (see [`crate::trace`]).
    pub reconcile_time: Family<ControllerLabel, HistogramWithExemplars<TraceLabel>>,
    /// `controller_runtime_max_concurrent_reconciles{controller}`.
    pub max_concurrent: Family<ControllerLabel, Gauge>,
    /// `controller_runtime_active_workers{controller}`.
    pub active_workers: Family<ControllerLabel, Gauge>,
    /// Read-your-own-writes waits (`crwatch_controller_cache_wait_*`).
    pub cache_wait: CacheWaitMetrics,
}

fn cache_wait_buckets() -> impl Iterator<Item = f64> {
    // From a millisecond (an informer a watch event behind) to the longest sensible timeout.
    [
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ]
    .into_iter()
}

/// How long reconciles waited for their controller's caches to see the previous reconcile's
/// writes ([`crate::ryow`]).
#[derive(Clone)]
pub struct CacheWaitMetrics {
    /// `crwatch_controller_cache_wait_seconds{controller}`: every wait that had writes to wait
    /// for, caught up or timed out.
    pub wait: Family<ControllerLabel, Histogram>,
    /// `crwatch_controller_cache_wait_timeouts_total{controller}`: waits that gave up and
    /// reconciled against a cache still behind.
    pub timeouts: Family<ControllerLabel, Counter>,
}

impl CacheWaitMetrics {
    /// Register the families in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = CacheWaitMetrics {
            wait: Family::new_with_constructor(|| Histogram::new(cache_wait_buckets())),
            timeouts: Family::default(),
        };
        registry.register(
            "crwatch_controller_cache_wait_seconds",
            "Time a reconcile waited for the informer caches to see the previous reconcile's writes",
            m.wait.clone(),
        );
        // prometheus-client appends `_total` to counters.
        registry.register(
            "crwatch_controller_cache_wait_timeouts",
            "Reconciles that started before the caches saw the previous reconcile's writes (wait timed out)",
            m.timeouts.clone(),
        );
        m
    }

    /// Record one wait's outcome for `controller` (nothing to wait for records nothing).
    ///
    /// ```
    /// use crwatch::metrics::Metrics;
    /// use crwatch::ryow::WaitOutcome;
    /// use std::time::Duration;
    ///
    /// let m = Metrics::default();
    /// m.controllers.cache_wait.observe("foo", &WaitOutcome::TimedOut(Duration::from_secs(5)));
    /// let text = m.encode();
    /// assert!(text.contains("crwatch_controller_cache_wait_timeouts_total{controller=\"foo\"} 1"));
    /// assert!(text.contains("crwatch_controller_cache_wait_seconds_count{controller=\"foo\"} 1"));
    /// ```
    pub fn observe(&self, controller: &str, outcome: &crate::ryow::WaitOutcome) {
        use crate::ryow::WaitOutcome;
        let label = ControllerLabel {
            controller: controller.to_owned(),
        };
        match outcome {
            WaitOutcome::NothingToWait => {}
            WaitOutcome::Fresh(d) => self.wait.get_or_create(&label).observe(d.as_secs_f64()),
            WaitOutcome::TimedOut(d) => {
                self.wait.get_or_create(&label).observe(d.as_secs_f64());
                self.timeouts.get_or_create(&label).inc();
            }
        }
    }
}

impl ControllerMetrics {
    /// Register the families in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = ControllerMetrics {
            reconcile_total: Family::default(),
            reconcile_errors: Family::default(),
            terminal_errors: Family::default(),
            panics: Family::default(),
            reconcile_time: Family::new_with_constructor(|| HistogramWithExemplars::new(reconcile_buckets())),
            max_concurrent: Family::default(),
            active_workers: Family::default(),
            cache_wait: CacheWaitMetrics::register(registry),
        };
        // prometheus-client appends `_total` to counters.
        registry.register(
            "controller_runtime_reconcile",
            "Total number of reconciliations per controller",
            m.reconcile_total.clone(),
        );
        registry.register(
            "controller_runtime_reconcile_errors",
            "Total number of reconciliation errors per controller",
            m.reconcile_errors.clone(),
        );
        registry.register(
            "controller_runtime_terminal_reconcile_errors",
            "Total number of terminal reconciliation errors per controller",
            m.terminal_errors.clone(),
        );
        registry.register(
            "controller_runtime_reconcile_panics",
            "Total number of reconciliation panics per controller",
            m.panics.clone(),
        );
        registry.register(
            "controller_runtime_reconcile_time_seconds",
            "Length of time per reconciliation per controller",
            m.reconcile_time.clone(),
        );
        registry.register(
            "controller_runtime_max_concurrent_reconciles",
            "Maximum number of concurrent reconciles per controller",
            m.max_concurrent.clone(),
        );
        registry.register(
            "controller_runtime_active_workers",
            "Number of currently used workers per controller",
            m.active_workers.clone(),
        );
        m
    }

    /// A fresh registry with these families (for controllers run without a manager).
    pub fn standalone() -> Self {
        Self::register(&mut Registry::default())
    }
}

/// The registry a manager serves on `/metrics`, shared by its controllers and queues.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
    /// Controller metric families.
    pub controllers: ControllerMetrics,
    /// Workqueue metric families.
    pub queues: crate::queue::metrics::QueueMetrics,
    /// Shard ring metric families (`crwatch_shard_*`).
    pub shards: crate::shard::ShardMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let controllers = ControllerMetrics::register(&mut registry);
        let queues = crate::queue::metrics::QueueMetrics::new(&mut registry);
        let shards = crate::shard::ShardMetrics::default();
        shards.register(&mut registry);
        registry.register_collector(Box::new(TraceCollector));
        Metrics {
            registry: Arc::new(Mutex::new(registry)),
            controllers,
            queues,
            shards,
        }
    }
}

impl Metrics {
    /// Register more metrics of your own in the same registry.
    pub fn with_registry<T>(&self, f: impl FnOnce(&mut Registry) -> T) -> T {
        let mut r = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut r)
    }

    /// The Prometheus text exposition of everything registered.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let r = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &r);
        out
    }
}

/// One source's figures at scrape time (see [`Metrics::register_sources`]).
#[derive(Debug, Clone, PartialEq)]
pub struct SourceSample {
    /// What the source watches (the informer's name).
    pub source: String,
    /// Whether it is connected now.
    pub connected: bool,
    /// When it last delivered an event or confirmed progress (seconds since the Unix epoch; 0:
    /// never).
    pub last_event_seconds: f64,
    /// Events received.
    pub events: u64,
    /// Complete (re)lists applied.
    pub relists: u64,
    /// Errors it reported (it retried by itself).
    pub errors: u64,
    /// Objects it skipped because they did not decode into the consumer's type.
    pub decode_errors: u64,
    /// Objects in the cache now.
    pub objects: u64,
    /// Whether the cache holds a complete list now (false before the first list and while a
    /// relist after a lost watch is under way).
    pub synced: bool,
    /// When the cache last became complete (seconds since the Unix epoch; 0: never).
    pub last_sync_seconds: f64,
}

type Samples = Arc<dyn Fn() -> Vec<SourceSample> + Send + Sync>;

/// Encodes `crwatch_source_*` from samples taken at scrape time.
struct SourceCollector(Samples);

impl std::fmt::Debug for SourceCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SourceCollector")
    }
}

impl prometheus_client::collector::Collector for SourceCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::MetricType;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        let samples = (self.0)();
        let labels = |s: &SourceSample| [("source", s.source.clone())];
        let mut m = encoder.encode_descriptor(
            "crwatch_source_connected",
            "Whether the source is connected (1) or failing (0).",
            None,
            MetricType::Gauge,
        )?;
        for s in &samples {
            ConstGauge::new(i64::from(s.connected)).encode(m.encode_family(&labels(s))?)?;
        }
        let mut m = encoder.encode_descriptor(
            "crwatch_source_last_event_timestamp_seconds",
            "When the source last delivered an event or confirmed progress.",
            None,
            MetricType::Gauge,
        )?;
        for s in &samples {
            ConstGauge::new(s.last_event_seconds).encode(m.encode_family(&labels(s))?)?;
        }
        let mut m = encoder.encode_descriptor(
            "crwatch_source_objects",
            "Objects in the source's cache.",
            None,
            MetricType::Gauge,
        )?;
        for s in &samples {
            ConstGauge::new(s.objects as i64).encode(m.encode_family(&labels(s))?)?;
        }
        let mut m = encoder.encode_descriptor(
            "crwatch_source_synced",
            "Whether the source's cache holds a complete list (1) or is still listing (0).",
            None,
            MetricType::Gauge,
        )?;
        for s in &samples {
            ConstGauge::new(i64::from(s.synced)).encode(m.encode_family(&labels(s))?)?;
        }
        let mut m = encoder.encode_descriptor(
            "crwatch_source_last_sync_timestamp_seconds",
            "When the source's cache last became complete (a list applied).",
            None,
            MetricType::Gauge,
        )?;
        for s in &samples {
            ConstGauge::new(s.last_sync_seconds).encode(m.encode_family(&labels(s))?)?;
        }
        for (name, help, value) in [
            (
                "crwatch_source_events",
                "Events received from the source.",
                (|s: &SourceSample| s.events) as fn(&SourceSample) -> u64,
            ),
            ("crwatch_source_relists", "Complete (re)lists applied.", |s| {
                s.relists
            }),
            (
                "crwatch_source_errors",
                "Errors the source reported (it retries by itself).",
                |s| s.errors,
            ),
            (
                "crwatch_source_decode_errors",
                "Objects skipped because they did not decode into the consumer's type.",
                |s| s.decode_errors,
            ),
        ] {
            let mut m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for s in &samples {
                ConstCounter::new(value(s)).encode(m.encode_family(&labels(s))?)?;
            }
        }
        Ok(())
    }
}

impl Metrics {
    /// Report sources as `crwatch_source_connected`, `crwatch_source_last_event_timestamp_seconds`,
    /// `crwatch_source_objects`, `crwatch_source_synced`,
    /// `crwatch_source_last_sync_timestamp_seconds`, `crwatch_source_events_total` (events/s:
    /// its rate), `crwatch_source_relists_total`, `crwatch_source_errors_total` and
    /// `crwatch_source_decode_errors_total` (label `source`), sampled by `samples` at each
    /// scrape.
    ///
    /// ```
    /// use crwatch::metrics::{Metrics, SourceSample};
    /// let m = Metrics::default();
    /// m.register_sources(|| vec![SourceSample {
    ///     source: "file:/etc/app".into(), connected: true, last_event_seconds: 1.0,
    ///     events: 3, relists: 1, errors: 0, decode_errors: 2,
    ///     objects: 40, synced: true, last_sync_seconds: 1.0,
    /// }]);
    /// let text = m.encode();
    /// assert!(text.contains("crwatch_source_connected{source=\"file:/etc/app\"} 1"));
    /// assert!(text.contains("crwatch_source_relists_total{source=\"file:/etc/app\"} 1"));
    /// assert!(text.contains("crwatch_source_decode_errors_total{source=\"file:/etc/app\"} 2"));
    /// assert!(text.contains("crwatch_source_objects{source=\"file:/etc/app\"} 40"));
    /// assert!(text.contains("crwatch_source_synced{source=\"file:/etc/app\"} 1"));
    /// ```
    pub fn register_sources(&self, samples: impl Fn() -> Vec<SourceSample> + Send + Sync + 'static) {
        self.with_registry(|r| r.register_collector(Box::new(SourceCollector(Arc::new(samples)))));
    }
}

/// Encodes client-go's `leader_election_master_status{name}` from a probe read at scrape time.
struct LeaderCollector {
    name: String,
    leading: Arc<dyn Fn() -> bool + Send + Sync>,
}

impl std::fmt::Debug for LeaderCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderCollector")
            .field("name", &self.name)
            .finish()
    }
}

impl prometheus_client::collector::Collector for LeaderCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        let mut m = encoder.encode_descriptor(
            "leader_election_master_status",
            "Gauge of if the reporting system is master of the relevant lease, 0 indicates backup, 1 indicates master. 'name' is the string used to identify the lease. Please make sure to group by name.",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        prometheus_client::metrics::gauge::ConstGauge::new(i64::from((self.leading)()))
            .encode(m.encode_family(&[("name", self.name.clone())])?)
    }
}

impl Metrics {
    /// Report leadership of the lease `name` as client-go (and so controller-runtime) does:
    /// `leader_election_master_status{name}` is 1 while `leading()` says so, 0 otherwise.
    /// A [`Manager`](crate::manager::Manager) with leader election registers it itself.
    ///
    /// ```
    /// let m = crwatch::metrics::Metrics::default();
    /// m.register_leader("my-controller", || true);
    /// assert!(m.encode().contains("leader_election_master_status{name=\"my-controller\"} 1"));
    /// ```
    pub fn register_leader(&self, name: &str, leading: impl Fn() -> bool + Send + Sync + 'static) {
        let collector = LeaderCollector {
            name: name.to_string(),
            leading: Arc::new(leading),
        };
        self.with_registry(|r| r.register_collector(Box::new(collector)));
    }
}

/// Encodes the span exporter's counters ([`crate::trace::stats`]) while traces are exported.
#[derive(Debug)]
struct TraceCollector;

impl prometheus_client::collector::Collector for TraceCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::MetricType;
        use prometheus_client::metrics::counter::ConstCounter;
        // Nothing to say without an exporter (no endpoint, or built without `otel`).
        if !crate::trace::enabled() {
            return Ok(());
        }
        let stats = crate::trace::stats();
        for (name, help, value) in [
            (
                "crwatch_trace_spans_exported",
                "Spans handed to the OTLP exporter.",
                stats.exported,
            ),
            (
                "crwatch_trace_spans_dropped",
                "Spans dropped because the exporter's queue was full.",
                stats.dropped,
            ),
            (
                "crwatch_trace_spans_failed",
                "Spans lost because an export failed (collector unreachable, timeout, rejection).",
                stats.failed,
            ),
        ] {
            let m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(value).encode(m)?;
        }
        Ok(())
    }
}
