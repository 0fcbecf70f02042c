//! Prometheus metrics of the xDS server, per subscriber stream (label `subscriber`: the node
//! id of its first request and a stream number) and type URL. A subscriber's series go when
//! it disconnects, so their number follows the connected streams.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Labels `protocol` (`sotw` or `delta`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolLabel {
    /// `sotw` or `delta`.
    pub protocol: String,
}

/// Labels `subscriber`, `type_url`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SubscriberTypeLabels {
    /// The subscriber stream.
    pub subscriber: String,
    /// The xDS type URL.
    pub type_url: String,
}

/// Labels `type_url`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    /// The xDS type URL.
    pub type_url: String,
}

/// The metric families.
#[derive(Clone, Default)]
pub struct XdsMetrics {
    /// `crwatch_xds_subscribers{protocol}`: connected subscriber streams.
    pub subscribers: Family<ProtocolLabel, Gauge>,
    /// `crwatch_xds_acked_version{subscriber,type_url}`: the snapshot version last ACKed.
    pub acked_version: Family<SubscriberTypeLabels, Gauge>,
    /// `crwatch_xds_nacks_total{subscriber,type_url}`: NACKs received.
    pub nacks: Family<SubscriberTypeLabels, Counter>,
    /// `crwatch_xds_type_nacks_total{type_url}`: NACKs received from all subscribers (kept
    /// after they disconnect).
    pub type_nacks: Family<TypeLabel, Counter>,
    /// `crwatch_xds_pending_resources{subscriber,type_url}`: resources changed since what the
    /// subscriber has (its queue, coalesced to the latest state per resource).
    pub pending: Family<SubscriberTypeLabels, Gauge>,
    /// `crwatch_xds_responses_total{type_url}`: responses sent.
    pub responses: Family<TypeLabel, Counter>,
    /// `crwatch_xds_snapshot_version{type_url}`: the current snapshot version.
    pub snapshot_version: Family<TypeLabel, Gauge>,
    /// `crwatch_xds_snapshot_resources{type_url}`: resources in the current snapshot.
    pub snapshot_resources: Family<TypeLabel, Gauge>,
    /// `crwatch_xds_status_reports_dropped_total`: NACK/ACK status reports dropped because the
    /// report queue was full.
    pub reports_dropped: Counter,
}

impl XdsMetrics {
    /// Register the families in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = XdsMetrics::default();
        registry.register(
            "crwatch_xds_subscribers",
            "Connected xDS subscriber streams",
            m.subscribers.clone(),
        );
        registry.register(
            "crwatch_xds_acked_version",
            "Snapshot version last acknowledged per subscriber and type",
            m.acked_version.clone(),
        );
        registry.register(
            "crwatch_xds_nacks",
            "NACKs received per subscriber and type",
            m.nacks.clone(),
        );
        registry.register(
            "crwatch_xds_type_nacks",
            "NACKs received per type from all subscribers",
            m.type_nacks.clone(),
        );
        registry.register(
            "crwatch_xds_pending_resources",
            "Resources changed since what the subscriber has, per type (coalesced)",
            m.pending.clone(),
        );
        registry.register(
            "crwatch_xds_responses",
            "xDS responses sent per type",
            m.responses.clone(),
        );
        registry.register(
            "crwatch_xds_snapshot_version",
            "Current snapshot version per type",
            m.snapshot_version.clone(),
        );
        registry.register(
            "crwatch_xds_snapshot_resources",
            "Resources in the current snapshot per type",
            m.snapshot_resources.clone(),
        );
        registry.register(
            "crwatch_xds_status_reports_dropped",
            "NACK/ACK status reports dropped because the report queue was full",
            m.reports_dropped.clone(),
        );
        m
    }

    /// Forget a subscriber's series (it disconnected).
    pub fn forget(&self, subscriber: &str, type_urls: &[String]) {
        for t in type_urls {
            let l = SubscriberTypeLabels {
                subscriber: subscriber.to_string(),
                type_url: t.clone(),
            };
            self.acked_version.remove(&l);
            self.nacks.remove(&l);
            self.pending.remove(&l);
        }
    }
}

/// A registry with the xDS families, encodable as Prometheus text.
#[derive(Clone)]
pub struct MetricsRegistry {
    registry: Arc<std::sync::Mutex<Registry>>,
    /// The families.
    pub xds: XdsMetrics,
}

impl Default for MetricsRegistry {
    fn default() -> Self {
        let mut registry = Registry::default();
        let xds = XdsMetrics::register(&mut registry);
        MetricsRegistry {
            registry: Arc::new(std::sync::Mutex::new(registry)),
            xds,
        }
    }
}

impl MetricsRegistry {
    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let r = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &r);
        out
    }
}
