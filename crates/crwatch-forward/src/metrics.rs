//! The forwarder's Prometheus metrics: changes received and filtered per resource, and per sink
//! delivered, failed attempts, retries, dead-lettered, queue depth and delivery latency.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// Labels of per-resource metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabels {
    /// `plural.group`.
    pub resource: String,
    /// `added`, `modified` or `deleted`.
    pub event: String,
}

/// Labels of per-sink metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabels {
    /// Sink name from the configuration.
    pub sink: String,
}

/// Labels of per-resource metrics without an event type.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceOnly {
    /// `plural.group`, or the source URI without credentials.
    pub resource: String,
}

/// Labels of per-stream metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabels {
    /// `plural.group`, or the source URI without credentials.
    pub resource: String,
    /// The namespace watched; empty for all namespaces, cluster-scoped kinds and sources.
    pub namespace: String,
}

fn latency_buckets() -> impl Iterator<Item = f64> {
    [
        0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
    ]
    .into_iter()
}

/// Every forwarder metric family.
#[derive(Clone)]
pub struct ForwardMetrics {
    /// Changes seen on watches.
    pub received: Family<ResourceLabels, Counter>,
    /// Changes dropped by the resource's `events` or `fields` filters.
    pub filtered: Family<ResourceLabels, Counter>,
    /// Relists (first sync, 410 Gone, a restarted server).
    pub relists: Family<ResourceOnly, Counter>,
    /// Watch reconnections after errors.
    pub reconnects: Family<ResourceOnly, Counter>,
    /// Errors a stream's source reported (it retries by itself).
    pub source_errors: Family<StreamLabels, Counter>,
    /// Objects a stream skipped because they did not decode (each also logged by name).
    pub decode_errors: Family<StreamLabels, Counter>,
    /// Whether a stream's source is connected (1) or failing (0).
    pub connected: Family<StreamLabels, Gauge>,
    /// When a stream's source last delivered an event or confirmed progress (Unix seconds).
    pub last_event: Family<StreamLabels, Gauge<f64, AtomicU64>>,
    /// Changes a sink acknowledged.
    pub delivered: Family<SinkLabels, Counter>,
    /// Failed delivery attempts.
    pub failed: Family<SinkLabels, Counter>,
    /// Attempts that were retries.
    pub retried: Family<SinkLabels, Counter>,
    /// Changes written to the dead-letter file (or dropped without one).
    pub dead_lettered: Family<SinkLabels, Counter>,
    /// Changes queued for a sink.
    pub queue_depth: Family<SinkLabels, Gauge>,
    /// Seconds from seeing a change to the sink's acknowledgement.
    pub latency: Family<SinkLabels, Histogram>,
}

impl ForwardMetrics {
    /// Register the families in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            received: Family::default(),
            filtered: Family::default(),
            relists: Family::default(),
            reconnects: Family::default(),
            source_errors: Family::default(),
            decode_errors: Family::default(),
            connected: Family::default(),
            last_event: Family::default(),
            delivered: Family::default(),
            failed: Family::default(),
            retried: Family::default(),
            dead_lettered: Family::default(),
            queue_depth: Family::default(),
            latency: Family::new_with_constructor(|| Histogram::new(latency_buckets())),
        };
        registry.register(
            "crwatch_forward_received",
            "Changes seen on watches",
            m.received.clone(),
        );
        registry.register(
            "crwatch_forward_filtered",
            "Changes dropped by event or field filters",
            m.filtered.clone(),
        );
        registry.register(
            "crwatch_forward_relists",
            "Full lists (first sync, 410 Gone)",
            m.relists.clone(),
        );
        registry.register(
            "crwatch_forward_watch_reconnects",
            "Watch reconnections",
            m.reconnects.clone(),
        );
        registry.register(
            "crwatch_forward_source_errors",
            "Errors a stream's source reported (it retries by itself)",
            m.source_errors.clone(),
        );
        registry.register(
            "crwatch_forward_decode_errors",
            "Objects a stream skipped because they did not decode",
            m.decode_errors.clone(),
        );
        registry.register(
            "crwatch_forward_stream_connected",
            "Whether a stream's source is connected (1) or failing (0)",
            m.connected.clone(),
        );
        registry.register(
            "crwatch_forward_stream_last_event_timestamp_seconds",
            "When a stream's source last delivered an event or confirmed progress",
            m.last_event.clone(),
        );
        registry.register(
            "crwatch_forward_delivered",
            "Changes acknowledged by the sink",
            m.delivered.clone(),
        );
        registry.register(
            "crwatch_forward_failed",
            "Failed delivery attempts",
            m.failed.clone(),
        );
        registry.register("crwatch_forward_retried", "Delivery retries", m.retried.clone());
        registry.register(
            "crwatch_forward_dead_lettered",
            "Changes the sink refused for good",
            m.dead_lettered.clone(),
        );
        registry.register(
            "crwatch_forward_queue_depth",
            "Changes queued for the sink",
            m.queue_depth.clone(),
        );
        registry.register(
            "crwatch_forward_delivery_latency_seconds",
            "From seeing a change to its acknowledgement",
            m.latency.clone(),
        );
        m
    }

    /// Metrics registered nowhere (tests).
    pub fn standalone() -> Self {
        Self::register(&mut Registry::default())
    }
}
