//! kube-state-metrics' `CustomResourceStateMetrics` configuration, field for field
//! (`pkg/customresourcestate/config.go`, `config_metrics_types.go`), and its compilation into
//! the families [`super::render`] evaluates. Unknown fields are ignored, as kube-state-metrics'
//! YAML decoder ignores them, so files written for it load unchanged.
//!
//! One field is crwatch's own: `source` on a resource entry (a `file://`, `postgres://`,
//! `mysql://` or `https://` URI) serves metrics over a non-Kubernetes source. kube-state-metrics
//! ignores it, so a file that uses it still loads there (and watches the GVK in the cluster).

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

use super::value::{Path, ValueType, sanitize_label_name};

/// The whole file: `kind: CustomResourceStateMetrics` and `spec.resources`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CustomResourceStateMetrics {
    /// `CustomResourceStateMetrics` (may be left out, as kube-state-metrics allows).
    #[serde(default)]
    pub kind: Option<String>,
    /// Not read by kube-state-metrics; accepted and ignored.
    #[serde(default)]
    pub api_version: Option<String>,
    /// The resources and their metrics.
    #[serde(default)]
    pub spec: MetricsSpec,
}

/// `spec`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct MetricsSpec {
    /// One entry per watched resource type.
    #[serde(default)]
    pub resources: Vec<Resource>,
}

/// `spec.resources[]`: one resource type and its metric families.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Resource {
    /// Group, version and kind of the objects.
    pub group_version_kind: GroupVersionKind,
    /// Labels added to every series of the resource.
    #[serde(default, deserialize_with = "string_map")]
    pub common_labels: BTreeMap<String, String>,
    /// Labels whose values come from the object, by path.
    #[serde(default, deserialize_with = "path_map")]
    pub labels_from_path: BTreeMap<String, Vec<String>>,
    /// Prefix of every metric name; unset means `kube_customresource`, `""` means none.
    #[serde(default, deserialize_with = "opt_string")]
    pub metric_name_prefix: Option<String>,
    /// The resource's plural (default: from discovery).
    #[serde(default, deserialize_with = "opt_string")]
    pub resource_plural: Option<String>,
    /// The metric families.
    #[serde(default)]
    pub metrics: Vec<Generator>,
    /// kube-state-metrics' log verbosity for errors; accepted, errors are counted instead.
    #[serde(default)]
    pub error_log_v: Option<serde_json::Value>,
    /// crwatch only: a source URI (`file://DIR`, `postgres://…`, `mysql://…`, `https://…`)
    /// instead of the Kubernetes API; every object of the source is evaluated, and
    /// `groupVersionKind` only names the `customresource_*` labels. kube-state-metrics
    /// ignores this field.
    #[serde(default, deserialize_with = "opt_string")]
    pub source: Option<String>,
}

/// `groupVersionKind`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct GroupVersionKind {
    /// API group (empty for the core group).
    #[serde(default, deserialize_with = "string")]
    pub group: String,
    /// Version, e.g. `v1`.
    #[serde(default, deserialize_with = "string")]
    pub version: String,
    /// Kind, e.g. `Foo`.
    #[serde(default, deserialize_with = "string")]
    pub kind: String,
}

impl std::fmt::Display for GroupVersionKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.group.is_empty() {
            write!(f, "{}/{}", self.version, self.kind)
        } else {
            write!(f, "{}/{}/{}", self.group, self.version, self.kind)
        }
    }
}

/// `metrics[]`: one metric family.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Generator {
    /// Name, after the prefix.
    #[serde(default, deserialize_with = "string")]
    pub name: String,
    /// HELP text.
    #[serde(default, deserialize_with = "string")]
    pub help: String,
    /// What to read and how.
    #[serde(default)]
    pub each: Metric,
    /// Labels added to every series of this family (over the resource's).
    #[serde(default, deserialize_with = "string_map")]
    pub common_labels: BTreeMap<String, String>,
    /// Labels from the object, by path from its root (over the resource's).
    #[serde(default, deserialize_with = "path_map")]
    pub labels_from_path: BTreeMap<String, Vec<String>>,
    /// Accepted and ignored (see [`Resource::error_log_v`]).
    #[serde(default)]
    pub error_log_v: Option<serde_json::Value>,
}

/// `each`: the type and its settings.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Metric {
    /// `Gauge`, `StateSet` or `Info` (any case).
    #[serde(rename = "type", default, deserialize_with = "string")]
    pub kind: String,
    /// For `Gauge`.
    #[serde(default)]
    pub gauge: Option<MetricGauge>,
    /// For `StateSet`.
    #[serde(default)]
    pub state_set: Option<MetricStateSet>,
    /// For `Info`.
    #[serde(default)]
    pub info: Option<MetricInfo>,
}

/// `each.gauge`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MetricGauge {
    /// Path to the value, or to an object or list with a series per entry.
    #[serde(default, deserialize_with = "path")]
    pub path: Vec<String>,
    /// Labels by path relative to `path` (or each of its entries).
    #[serde(default, deserialize_with = "path_map")]
    pub labels_from_path: BTreeMap<String, Vec<String>>,
    /// When `path` is an object: a label with each entry's key.
    #[serde(default, deserialize_with = "string")]
    pub label_from_key: String,
    /// Path, relative to `path`'s entries, of the number.
    #[serde(default, deserialize_with = "path")]
    pub value_from: Vec<String>,
    /// `duration` or `quantity`: how to read a string value (default: guess).
    #[serde(default, deserialize_with = "string")]
    pub value_type: String,
    /// A missing value is 0 instead of no series.
    #[serde(default)]
    pub nil_is_zero: bool,
}

/// `each.info`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MetricInfo {
    /// Path to an object or list (a series per entry).
    #[serde(default, deserialize_with = "path")]
    pub path: Vec<String>,
    /// Labels by path relative to `path`.
    #[serde(default, deserialize_with = "path_map")]
    pub labels_from_path: BTreeMap<String, Vec<String>>,
    /// When `path` is an object: a label with each entry's key.
    #[serde(default, deserialize_with = "string")]
    pub label_from_key: String,
}

/// `each.stateSet`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MetricStateSet {
    /// Path to the state (or a list of objects holding one at `valueFrom`).
    #[serde(default, deserialize_with = "path")]
    pub path: Vec<String>,
    /// Labels by path relative to `path`.
    #[serde(default, deserialize_with = "path_map")]
    pub labels_from_path: BTreeMap<String, Vec<String>>,
    /// The states: one series each, 1 for the current one.
    #[serde(default, deserialize_with = "path")]
    pub list: Vec<String>,
    /// The label holding the state.
    #[serde(default, deserialize_with = "string")]
    pub label_name: String,
    /// Path, relative to `path`, of the state.
    #[serde(default, deserialize_with = "path")]
    pub value_from: Vec<String>,
}

// Go's YAML decoder reads any scalar into a string field (`version: 1`, `[spec, order, 0]`);
// these helpers do the same, so such files keep loading.
fn scalar_string(v: serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        serde_json::Value::Null => Some(String::new()),
        _ => None,
    }
}

fn string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    scalar_string(v).ok_or_else(|| serde::de::Error::custom("expected a string"))
}

fn opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    if v.is_null() {
        // `metricNamePrefix: ~` is unset, as Go's *string is nil for it.
        return Ok(None);
    }
    scalar_string(v)
        .map(Some)
        .ok_or_else(|| serde::de::Error::custom("expected a string"))
}

fn path<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    path_of(v).map_err(serde::de::Error::custom)
}

fn path_of(v: serde_json::Value) -> Result<Vec<String>, &'static str> {
    match v {
        serde_json::Value::Null => Ok(vec![]),
        serde_json::Value::Array(items) => items
            .into_iter()
            .map(|i| scalar_string(i).ok_or("expected a list of strings, e.g. [status, phase]"))
            .collect(),
        _ => Err("expected a list of strings, e.g. [status, phase]"),
    }
}

fn string_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    match v {
        serde_json::Value::Null => Ok(BTreeMap::new()),
        serde_json::Value::Object(m) => m
            .into_iter()
            .map(|(k, v)| {
                scalar_string(v)
                    .map(|s| (k.clone(), s))
                    .ok_or_else(|| serde::de::Error::custom(format!("{k}: expected a string")))
            })
            .collect(),
        _ => Err(serde::de::Error::custom(
            "expected a map of label names to values",
        )),
    }
}

fn path_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, Vec<String>>, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    match v {
        serde_json::Value::Null => Ok(BTreeMap::new()),
        serde_json::Value::Object(m) => m
            .into_iter()
            .map(|(k, v)| {
                path_of(v)
                    .map(|p| (k.clone(), p))
                    .map_err(|e| serde::de::Error::custom(format!("{k}: {e}")))
            })
            .collect(),
        _ => Err(serde::de::Error::custom(
            "expected a map of label names to paths, e.g. name: [metadata, name]",
        )),
    }
}

/// A configuration error: where (a path in the file, e.g.
/// `spec.resources[0].metrics[1].each.gauge.path`) and what.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConfigError {
    /// The field, as a path from the document's root.
    pub field: String,
    /// What is wrong and what to write instead.
    pub message: String,
}

impl ConfigError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The metric type of a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricType {
    /// A number per object (or per entry of a list or object).
    Gauge,
    /// One series per state, 1 for the current one.
    StateSet,
    /// Labels only, value 1.
    Info,
}

impl MetricType {
    /// kube-state-metrics' type name (`gauge`, `stateset`, `info`).
    pub fn as_str(self) -> &'static str {
        match self {
            MetricType::Gauge => "gauge",
            MetricType::StateSet => "stateset",
            MetricType::Info => "info",
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) enum Each {
    Gauge {
        path: Path,
        labels: Vec<(String, Path)>,
        label_from_key: String,
        value_from: Path,
        value_type: Option<ValueType>,
        nil_is_zero: bool,
    },
    Info {
        path: Path,
        labels: Vec<(String, Path)>,
        label_from_key: String,
    },
    StateSet {
        path: Path,
        labels: Vec<(String, Path)>,
        list: Vec<String>,
        label_name: String,
        value_from: Path,
    },
}

/// One compiled family.
#[derive(Debug, Clone)]
pub(crate) struct Family {
    pub(crate) name: String,
    pub(crate) help: String,
    pub(crate) each: Each,
    /// Resource's and family's commonLabels plus the GVK labels (by key, sorted).
    pub(crate) common: BTreeMap<String, String>,
    /// Resource's and family's labelsFromPath, from the object's root.
    pub(crate) labels: Vec<(String, Path)>,
}

/// One compiled resource entry.
#[derive(Debug, Clone)]
pub(crate) struct CompiledResource {
    pub(crate) spec: Resource,
    pub(crate) families: Vec<Family>,
}

/// Whether `name` is a valid Prometheus metric name.
fn valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Whether `name` is a valid Prometheus label name.
fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn compile_paths(map: &BTreeMap<String, Vec<String>>, at: &str) -> Result<Vec<(String, Path)>, ConfigError> {
    map.iter()
        .map(|(k, v)| {
            Path::compile(v)
                .map(|p| (k.clone(), p))
                .map_err(|e| ConfigError::new(format!("{at}.{k}"), e))
        })
        .collect()
}

fn compile_path(segments: &[String], at: String) -> Result<Path, ConfigError> {
    Path::compile(segments).map_err(|e| ConfigError::new(at, e))
}

impl Resource {
    /// The metric name prefix: `kube_customresource` unless `metricNamePrefix` says
    /// otherwise (`""`: none).
    pub fn metric_name_prefix(&self) -> &str {
        self.metric_name_prefix
            .as_deref()
            .unwrap_or("kube_customresource")
    }

    pub(crate) fn compile(&self, at: &str) -> Result<CompiledResource, ConfigError> {
        let gvk = &self.group_version_kind;
        if gvk.kind.is_empty() {
            return Err(ConfigError::new(
                format!("{at}.groupVersionKind.kind"),
                "missing: name the kind of the objects, e.g. kind: Foo",
            ));
        }
        if gvk.version.is_empty() {
            return Err(ConfigError::new(
                format!("{at}.groupVersionKind.version"),
                "missing: name the version, e.g. version: v1",
            ));
        }
        if gvk.kind == "*" || gvk.version == "*" {
            return Err(ConfigError::new(
                format!("{at}.groupVersionKind"),
                "wildcard versions and kinds (\"*\") are not supported by crwatch: list each kind and version",
            ));
        }
        for k in self.common_labels.keys() {
            if !valid_label_name(k) {
                return Err(ConfigError::new(
                    format!("{at}.commonLabels.{k}"),
                    "not a valid label name (letters, digits and _, not starting with a digit)",
                ));
            }
        }
        let mut families = vec![];
        for (j, g) in self.metrics.iter().enumerate() {
            let fat = format!("{at}.metrics[{j}]");
            families.push(compile_family(self, g, &fat)?);
        }
        Ok(CompiledResource {
            spec: self.clone(),
            families,
        })
    }
}

fn compile_family(r: &Resource, g: &Generator, at: &str) -> Result<Family, ConfigError> {
    if g.name.is_empty() {
        return Err(ConfigError::new(
            format!("{at}.name"),
            "missing: every metric needs a name",
        ));
    }
    let prefix = r.metric_name_prefix();
    let name = if prefix.is_empty() {
        g.name.clone()
    } else {
        format!("{prefix}_{}", g.name)
    };
    if !valid_metric_name(&name) {
        return Err(ConfigError::new(
            format!("{at}.name"),
            format!(
                "{name:?} is not a valid metric name (letters, digits, _ and :, not starting with a digit)"
            ),
        ));
    }
    for k in g.common_labels.keys() {
        if !valid_label_name(k) {
            return Err(ConfigError::new(
                format!("{at}.commonLabels.{k}"),
                "not a valid label name (letters, digits and _, not starting with a digit)",
            ));
        }
    }
    // kube-state-metrics: the GVK labels go into the resource's commonLabels (over any given
    // there), then the family's labels are merged over the resource's.
    let mut common = r.common_labels.clone();
    let gvk = &r.group_version_kind;
    common.insert("customresource_group".into(), gvk.group.clone());
    common.insert("customresource_version".into(), gvk.version.clone());
    common.insert("customresource_kind".into(), gvk.kind.clone());
    common.extend(g.common_labels.clone());
    let mut label_paths = r.labels_from_path.clone();
    label_paths.extend(g.labels_from_path.clone());
    let labels = compile_paths(&label_paths, &format!("{at}.labelsFromPath"))?;

    let e = &g.each;
    let each_at = format!("{at}.each");
    let kind = match e.kind.to_lowercase().as_str() {
        "gauge" => MetricType::Gauge,
        "stateset" => MetricType::StateSet,
        "info" => MetricType::Info,
        "" => {
            return Err(ConfigError::new(
                format!("{each_at}.type"),
                "missing: use Gauge, StateSet or Info",
            ));
        }
        _ => {
            return Err(ConfigError::new(
                format!("{each_at}.type"),
                format!("unknown metric type {:?}: use Gauge, StateSet or Info", e.kind),
            ));
        }
    };
    let each = match kind {
        MetricType::Gauge => {
            let Some(m) = &e.gauge else {
                return Err(ConfigError::new(
                    format!("{each_at}.gauge"),
                    "missing: a Gauge needs each.gauge (with at least path)",
                ));
            };
            let gat = format!("{each_at}.gauge");
            let value_type = match m.value_type.as_str() {
                "" => None,
                "duration" => Some(ValueType::Duration),
                "quantity" => Some(ValueType::Quantity),
                other => {
                    return Err(ConfigError::new(
                        format!("{gat}.valueType"),
                        format!("unknown value type {other:?}: use duration or quantity, or leave it out"),
                    ));
                }
            };
            Each::Gauge {
                path: compile_path(&m.path, format!("{gat}.path"))?,
                labels: compile_paths(&m.labels_from_path, &format!("{gat}.labelsFromPath"))?,
                label_from_key: m.label_from_key.clone(),
                value_from: compile_path(&m.value_from, format!("{gat}.valueFrom"))?,
                value_type,
                nil_is_zero: m.nil_is_zero,
            }
        }
        MetricType::Info => {
            let Some(m) = &e.info else {
                return Err(ConfigError::new(
                    format!("{each_at}.info"),
                    "missing: an Info metric needs each.info (with labelsFromPath)",
                ));
            };
            let iat = format!("{each_at}.info");
            Each::Info {
                path: compile_path(&m.path, format!("{iat}.path"))?,
                labels: compile_paths(&m.labels_from_path, &format!("{iat}.labelsFromPath"))?,
                label_from_key: m.label_from_key.clone(),
            }
        }
        MetricType::StateSet => {
            let Some(m) = &e.state_set else {
                return Err(ConfigError::new(
                    format!("{each_at}.stateSet"),
                    "missing: a StateSet needs each.stateSet (with path, labelName and list)",
                ));
            };
            let sat = format!("{each_at}.stateSet");
            if !valid_label_name(&m.label_name) {
                return Err(ConfigError::new(
                    format!("{sat}.labelName"),
                    if m.label_name.is_empty() {
                        "missing: the label that holds the state, e.g. labelName: phase".to_string()
                    } else {
                        format!("{:?} is not a valid label name", m.label_name)
                    },
                ));
            }
            Each::StateSet {
                path: compile_path(&m.path, format!("{sat}.path"))?,
                labels: compile_paths(&m.labels_from_path, &format!("{sat}.labelsFromPath"))?,
                list: m.list.clone(),
                label_name: m.label_name.clone(),
                value_from: compile_path(&m.value_from, format!("{sat}.valueFrom"))?,
            }
        }
    };
    Ok(Family {
        name,
        help: g.help.clone(),
        each,
        common,
        labels,
    })
}

/// Label names from `labelsFromPath` keys are sanitized by kube-state-metrics, not refused.
pub(crate) fn label_key(name: &str) -> String {
    sanitize_label_name(name)
}
