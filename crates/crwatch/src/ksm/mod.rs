//! kube-state-metrics' custom-resource-state metrics, served from crwatch informers.
//!
//! A [`Config`] is kube-state-metrics' `CustomResourceStateMetrics` file, read unchanged
//! (gauges, info and stateSet metrics, `labelsFromPath` with `*` copies, `labelFromKey`,
//! `valueFrom`, `nilIsZero`, `[key=value]` list lookups, `commonLabels`, `metricNamePrefix`).
//! A [`Collector`] evaluates it at scrape time against the objects in one
//! [`Store`](crate::store::Store) per resource entry: nothing is copied or kept between
//! scrapes, and a series disappears with its object.
//!
//! Output matches kube-state-metrics': the same names, label sets (sorted, with
//! `customresource_group`, `customresource_kind`, `customresource_version`), values (Go's
//! number formatting), `# HELP`/`# TYPE` lines (info and stateset families as `gauge` in the
//! text format), and order of series within an object. Objects are written in key order.
//!
//! What kube-state-metrics only logs is counted here too: for every family,
//! `crwatch_customresource_state_errors{customresource_group,customresource_kind,customresource_version,metric}`
//! is the number of values the last scrape could not read (a value that is not a number,
//! a required path missing). Error messages name the path and the type found, never the
//! value (it may be a secret).
//!
//! Bounds: one series per object × family × entry of the path (× state for a StateSet).
//! Label values are not truncated (kube-state-metrics does not truncate them either).
//!
//! Serve it on its own ([`Collector::render`], Prometheus text 0.0.4, as `crwatch metrics`
//! does) or on a manager's `/metrics` (register it as a prometheus-client collector):
//!
//! ```
//! use crwatch::ksm::{Collector, Config};
//! use crwatch::store::Store;
//! use kube::api::DynamicObject;
//!
//! let config = Config::from_value(serde_json::json!({
//!     "kind": "CustomResourceStateMetrics",
//!     "spec": {"resources": [{
//!         "groupVersionKind": {"group": "myteam.io", "version": "v1", "kind": "Foo"},
//!         "metrics": [{
//!             "name": "uptime", "help": "Foo uptime",
//!             "each": {"type": "Gauge", "gauge": {"path": ["status", "uptime"]}}
//!         }]
//!     }]}
//! }))
//! .unwrap();
//! // Usually `informer.store()` of an informer over the resource (see `Config::resources`).
//! let store = Store::<DynamicObject>::new();
//! let foo: DynamicObject = serde_json::from_value(serde_json::json!({
//!     "apiVersion": "myteam.io/v1", "kind": "Foo",
//!     "metadata": {"name": "foo", "namespace": "default"},
//!     "status": {"uptime": 43.21}
//! }))
//! .unwrap();
//! store.apply(foo);
//! let collector = Collector::new(config, vec![store]).unwrap();
//! assert!(collector.render().contains(
//!     "kube_customresource_uptime{customresource_group=\"myteam.io\",customresource_kind=\"Foo\",customresource_version=\"v1\"} 43.21\n"
//! ));
//!
//! // On a manager's /metrics, next to controller-runtime's metrics:
//! let metrics = crwatch::metrics::Metrics::default();
//! metrics.with_registry(|r| r.register_collector(Box::new(collector.clone())));
//! assert!(metrics.encode().contains("kube_customresource_uptime{"));
//! ```

mod config;
mod render;
mod value;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use kube::api::DynamicObject;

use config::CompiledResource;
pub use config::{
    ConfigError, CustomResourceStateMetrics, Generator, GroupVersionKind, Metric, MetricGauge, MetricInfo,
    MetricStateSet, MetricType, MetricsSpec, Resource,
};
use render::{Series, evaluate, write_header, write_series};
use value::Root;

use crate::store::Store;

/// The content type of [`Collector::render`]'s output (as kube-state-metrics serves it).
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The name of the error gauge (see the module documentation).
pub const ERRORS_METRIC: &str = "crwatch_customresource_state_errors";

/// Families sharing a name are written under one header, as kube-state-metrics dedupes it.
#[derive(Debug, Clone)]
struct Group {
    name: String,
    help: String,
    /// (resource index, family index).
    members: Vec<(usize, usize)>,
}

/// A checked `CustomResourceStateMetrics` configuration.
#[derive(Debug, Clone)]
pub struct Config {
    file: CustomResourceStateMetrics,
    resources: Vec<CompiledResource>,
    groups: Vec<Group>,
}

impl Config {
    /// Check a configuration already parsed from YAML or JSON into a `serde_json::Value`
    /// (the library has no YAML parser; `crwatch metrics` parses the file with its line
    /// numbers). Errors name the field, e.g. `spec.resources[0].metrics[1].each.type`.
    ///
    /// ```
    /// let err = crwatch::ksm::Config::from_value(serde_json::json!({
    ///     "spec": {"resources": [{
    ///         "groupVersionKind": {"group": "g", "version": "v1", "kind": "K"},
    ///         "metrics": [{"name": "x", "each": {"type": "Histogram"}}]
    ///     }]}
    /// }))
    /// .unwrap_err();
    /// assert_eq!(err.field, "spec.resources[0].metrics[0].each.type");
    /// assert!(err.message.contains("use Gauge, StateSet or Info"));
    /// ```
    pub fn from_value(value: serde_json::Value) -> Result<Config, ConfigError> {
        let file: CustomResourceStateMetrics =
            serde_path_to_error::deserialize(value).map_err(|e| ConfigError {
                field: e.path().to_string(),
                message: e.inner().to_string(),
            })?;
        Config::new(file)
    }

    /// Check a deserialized configuration.
    pub fn new(file: CustomResourceStateMetrics) -> Result<Config, ConfigError> {
        if let Some(kind) = &file.kind
            && kind != "CustomResourceStateMetrics"
        {
            return Err(ConfigError {
                field: "kind".into(),
                message: format!("{kind:?}: expected CustomResourceStateMetrics"),
            });
        }
        if file.spec.resources.is_empty() {
            return Err(ConfigError {
                field: "spec.resources".into(),
                message: "empty: list at least one resource (groupVersionKind and metrics)".into(),
            });
        }
        let mut resources = vec![];
        for (i, r) in file.spec.resources.iter().enumerate() {
            resources.push(r.compile(&format!("spec.resources[{i}]"))?);
        }
        let mut groups: Vec<Group> = vec![];
        for (ri, r) in resources.iter().enumerate() {
            for (fi, f) in r.families.iter().enumerate() {
                match groups.iter_mut().find(|g| g.name == f.name) {
                    Some(g) => g.members.push((ri, fi)),
                    None => groups.push(Group {
                        name: f.name.clone(),
                        help: f.help.clone(),
                        members: vec![(ri, fi)],
                    }),
                }
            }
        }
        Ok(Config {
            file,
            resources,
            groups,
        })
    }

    /// The resource entries, in file order: build one store (informer) per entry, for its
    /// `group_version_kind` (or `source`).
    pub fn resources(&self) -> &[Resource] {
        &self.file.spec.resources
    }

    /// The configuration as read.
    pub fn file(&self) -> &CustomResourceStateMetrics {
        &self.file
    }

    /// The metric names served, in output order.
    pub fn metric_names(&self) -> Vec<&str> {
        self.groups.iter().map(|g| g.name.as_str()).collect()
    }
}

/// Why a [`Collector`] could not be built.
#[derive(Debug, thiserror::Error)]
#[error(
    "{stores} store(s) given for {resources} resource entries: give one store per entry of spec.resources"
)]
pub struct StoreCountMismatch {
    /// Stores given.
    pub stores: usize,
    /// Resource entries in the configuration.
    pub resources: usize,
}

struct Inner {
    config: Config,
    stores: Vec<Store<DynamicObject>>,
    /// Per (resource, family): errors met in the last scrape.
    last_errors: Vec<Vec<AtomicU64>>,
}

/// Renders a [`Config`]'s metrics from the objects in its stores, at every scrape.
#[derive(Clone)]
pub struct Collector {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collector")
            .field("metrics", &self.inner.config.metric_names())
            .finish_non_exhaustive()
    }
}

impl Collector {
    /// A collector over `stores`: one per entry of `config.resources()`, in that order.
    pub fn new(config: Config, stores: Vec<Store<DynamicObject>>) -> Result<Collector, StoreCountMismatch> {
        if stores.len() != config.resources.len() {
            return Err(StoreCountMismatch {
                stores: stores.len(),
                resources: config.resources.len(),
            });
        }
        let last_errors = config
            .resources
            .iter()
            .map(|r| r.families.iter().map(|_| AtomicU64::new(0)).collect())
            .collect();
        Ok(Collector {
            inner: Arc::new(Inner {
                config,
                stores,
                last_errors,
            }),
        })
    }

    /// Evaluate every family; `emit` gets each group (name, help, whether any of its
    /// resources has objects, series in output order) and finally the error gauge's series.
    fn collect(&self, mut emit: impl FnMut(&str, &str, bool, &[(String, Series)])) -> Vec<Series> {
        let inner = &*self.inner;
        // Objects per resource, read once per scrape (Arcs into the cache, not copies).
        let objects: Vec<Vec<Arc<DynamicObject>>> = inner.stores.iter().map(Store::list).collect();
        let mut error_series = vec![];
        for group in &inner.config.groups {
            let mut series: Vec<(String, Series)> = vec![];
            let mut has_objects = false;
            for &(ri, fi) in &group.members {
                let resource = &inner.config.resources[ri];
                let family = &resource.families[fi];
                let objs = &objects[ri];
                has_objects |= !objs.is_empty();
                let mut count = 0u64;
                let mut first_error = None;
                for obj in objs {
                    let root = Root::new(obj);
                    let mut errors = vec![];
                    for s in evaluate(family, &root, &mut errors) {
                        series.push((family.name.clone(), s));
                    }
                    for e in errors {
                        count += 1;
                        // Names and paths only: values may be secrets.
                        tracing::debug!(
                            metric = %family.name,
                            namespace = obj.metadata.namespace.as_deref().unwrap_or(""),
                            name = obj.metadata.name.as_deref().unwrap_or(""),
                            error = %e,
                            "custom resource state metric: value not read"
                        );
                        first_error.get_or_insert(e);
                    }
                }
                let before = inner.last_errors[ri][fi].swap(count, Ordering::Relaxed);
                if before == 0
                    && let Some(e) = first_error
                {
                    tracing::warn!(
                        metric = %family.name,
                        errors = count,
                        first = %e,
                        "custom resource state metric: values could not be read (CRWATCH_LOG=debug names the objects)"
                    );
                }
                let gvk = &resource.spec.group_version_kind;
                error_series.push(Series {
                    labels: [
                        ("customresource_group", gvk.group.as_str()),
                        ("customresource_kind", gvk.kind.as_str()),
                        ("customresource_version", gvk.version.as_str()),
                        ("metric", family.name.as_str()),
                    ]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                    value: count as f64,
                });
            }
            emit(&group.name, &group.help, has_objects, &series);
        }
        error_series
    }

    /// The metrics in the Prometheus text format 0.0.4 ([`CONTENT_TYPE`]), as
    /// kube-state-metrics writes them, followed by the error gauge.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let errors = self.collect(|name, help, has_objects, series| {
            // kube-state-metrics writes a family's header when its store holds objects.
            if !has_objects {
                return;
            }
            write_header(name, help, &mut out);
            for (n, s) in series {
                write_series(n, s, &mut out);
            }
        });
        write_header(
            ERRORS_METRIC,
            "Values of custom resource state metrics the last scrape could not read (kube-state-metrics logs them)",
            &mut out,
        );
        for s in &errors {
            write_series(ERRORS_METRIC, s, &mut out);
        }
        out
    }

    /// An axum router serving [`Collector::render`] on `/metrics`.
    pub fn router(&self) -> axum::Router {
        let c = self.clone();
        axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let c = c.clone();
                async move {
                    // Rendering walks every cached object: off the async workers.
                    let body = tokio::task::spawn_blocking(move || c.render())
                        .await
                        .unwrap_or_else(|e| format!("# rendering failed: {e}\n"));
                    ([(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)], body)
                }
            }),
        )
    }
}

impl prometheus_client::collector::Collector for Collector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::MetricType as PromType;
        use prometheus_client::metrics::gauge::ConstGauge;
        let mut result = Ok(());
        let labels_of = |s: &Series| -> Vec<(String, String)> {
            s.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        let errors = self.collect(|name, help, has_objects, series| {
            if !has_objects || result.is_err() {
                return;
            }
            // Gauges keep their names in the OpenMetrics encoder (no `_total`/`_info` suffix),
            // so the names stay kube-state-metrics'.
            result = (|| {
                let mut m = encoder.encode_descriptor(name, help, None, PromType::Gauge)?;
                for (_, s) in series {
                    ConstGauge::new(s.value).encode(m.encode_family(&labels_of(s))?)?;
                }
                Ok(())
            })();
        });
        result?;
        let mut m = encoder.encode_descriptor(
            ERRORS_METRIC,
            "Values of custom resource state metrics the last scrape could not read (kube-state-metrics logs them)",
            None,
            PromType::Gauge,
        )?;
        for s in &errors {
            ConstGauge::new(s.value).encode(m.encode_family(&labels_of(s))?)?;
        }
        Ok(())
    }
}
