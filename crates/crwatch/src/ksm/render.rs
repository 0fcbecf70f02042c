//! Evaluating a compiled family against one object, exactly as kube-state-metrics'
//! `compiledGauge/Info/StateSet.Values`, `addPathLabels`, `BaseLabels` and `DefaultLabels`
//! do (including their quirks: a gauge over an object swallows per-entry conversion errors,
//! a StateSet under `status` skips a missing state silently), and writing series in the
//! Prometheus text format as kube-state-metrics' metric writer does.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::config::{Each, Family, label_key};
use super::value::{Node, Path, Root, go_float, go_fmt, to_f64};

/// One series: labels (sorted by name) and value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Series {
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) value: f64,
}

/// `addPathLabels`: `*`-keys first (in sorted order) copy whole maps, then the named labels
/// override them; a path that resolves to nothing adds no label.
fn add_path_labels(obj: Option<&Node<'_>>, labels: &[(String, Path)], out: &mut BTreeMap<String, String>) {
    let is_star = |k: &str| k.starts_with('*') || k.ends_with('*');
    // `labels` is sorted by key (it comes from a BTreeMap), as Go sorts the star keys.
    for (star, path) in labels.iter().filter(|(k, _)| is_star(k)) {
        let Some(m) = path.get(obj.cloned()) else { continue };
        let Some(entries) = m.entries() else { continue };
        for (k, v) in entries {
            let name = match star.strip_suffix('*') {
                Some(prefix) => format!("{prefix}{k}"),
                None => k.to_string(),
            };
            let mut value = String::new();
            go_fmt(v.as_ref(), &mut value);
            out.insert(label_key(&name), value);
        }
    }
    for (k, path) in labels.iter().filter(|(k, _)| !is_star(k)) {
        let Some(v) = path.get(obj.cloned()) else { continue };
        let mut value = String::new();
        go_fmt(Some(&v), &mut value);
        out.insert(label_key(k), value);
    }
}

/// KSM's `less`: by sorted label names, then values, then count.
fn less(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> std::cmp::Ordering {
    for ((ak, av), (bk, bv)) in a.iter().zip(b.iter()) {
        if ak != bk {
            return ak.cmp(bk);
        }
        if av != bv {
            return av.cmp(bv);
        }
    }
    a.len().cmp(&b.len())
}

/// The series of `family` for one object, and the errors met (already located by path).
pub(crate) fn evaluate(family: &Family, root: &Root<'_>, errors: &mut Vec<String>) -> Vec<Series> {
    let root_node = Node::Root(root);
    let mut base = family.common.clone();
    add_path_labels(Some(&root_node), &family.labels, &mut base);
    let mut values = match &family.each {
        Each::Gauge {
            path,
            labels,
            label_from_key,
            value_from,
            value_type,
            nil_is_zero,
        } => {
            let g = Gauge {
                path,
                labels,
                label_from_key,
                value_from,
                value_type: *value_type,
                nil_is_zero: *nil_is_zero,
            };
            g.values(path.get(Some(root_node.clone())), errors)
        }
        Each::Info {
            path,
            labels,
            label_from_key,
        } => info_values(
            path.get(Some(root_node.clone())),
            labels,
            label_from_key,
            path,
            errors,
        ),
        Each::StateSet {
            path,
            labels,
            list,
            label_name,
            value_from,
        } => {
            let v = path.get(Some(root_node.clone()));
            let mut out = vec![];
            match &v {
                Some(Node::Json(serde_json::Value::Array(items))) => {
                    for item in items {
                        stateset_values(
                            Node::json(item),
                            path,
                            labels,
                            list,
                            label_name,
                            value_from,
                            &mut out,
                            errors,
                        );
                    }
                }
                _ => stateset_values(v, path, labels, list, label_name, value_from, &mut out, errors),
            }
            out
        }
    };
    values.sort_by(|a, b| less(&a.labels, &b.labels));
    for v in &mut values {
        for (k, val) in &base {
            v.labels.entry(k.clone()).or_insert_with(|| val.clone());
        }
    }
    values
}

struct Gauge<'c> {
    path: &'c Path,
    labels: &'c [(String, Path)],
    label_from_key: &'c str,
    value_from: &'c Path,
    value_type: Option<super::value::ValueType>,
    nil_is_zero: bool,
}

impl Gauge<'_> {
    /// `compiledGauge.value`: `Ok(None)` is "no series, no error".
    fn value(&self, it: Option<Node<'_>>) -> Result<Option<Series>, String> {
        let got = self.value_from.get(it.clone());
        let Some(got) = got else {
            if self.nil_is_zero {
                return Ok(Some(Series {
                    labels: BTreeMap::new(),
                    value: 0.0,
                }));
            }
            if it.is_none() {
                return Err("got nil while resolving path".into());
            }
            return Ok(None);
        };
        let value = to_f64(Some(&got), self.nil_is_zero, self.value_type)
            .map_err(|e| format!("{}: {e}", self.value_from))?;
        Ok(Some(Series {
            labels: BTreeMap::new(),
            value,
        }))
    }

    fn values(&self, v: Option<Node<'_>>, errors: &mut Vec<String>) -> Vec<Series> {
        let mut out = vec![];
        let path = self.path;
        // KSM's shortcut: a one-segment valueFrom that names the entry's key itself.
        let shortcut = match &self.value_from.0[..] {
            [super::value::Op::Key(k)] if !k.is_empty() && !k.contains(',') => Some(k.as_str()),
            _ => None,
        };
        match &v {
            Some(node) if node.is_map() => {
                for (key, it) in node.entries().unwrap_or_default() {
                    let mut ev = None;
                    if shortcut == Some(key) {
                        match to_f64(it.as_ref(), self.nil_is_zero, self.value_type) {
                            Ok(value) => {
                                ev = Some(Series {
                                    labels: BTreeMap::new(),
                                    value,
                                })
                            }
                            Err(e) => {
                                errors.push(format!("{path}: [{key}]: {e}"));
                                continue;
                            }
                        }
                    }
                    let mut ev = match ev {
                        Some(ev) => ev,
                        // KSM drops the entry without reporting the error here.
                        None => match self.value(it.clone()) {
                            Ok(Some(ev)) => ev,
                            _ => continue,
                        },
                    };
                    if !key.is_empty() && !self.label_from_key.is_empty() {
                        ev.labels.insert(self.label_from_key.to_string(), key.to_string());
                    }
                    add_path_labels(it.as_ref(), self.labels, &mut ev.labels);
                    // Also from the parent: paths may reach siblings of the entries.
                    add_path_labels(v.as_ref(), self.labels, &mut ev.labels);
                    out.push(ev);
                }
            }
            Some(Node::Json(serde_json::Value::Array(items))) => {
                for (i, item) in items.iter().enumerate() {
                    let it = Node::json(item);
                    match self.value(it.clone()) {
                        Err(e) => errors.push(format!("{path}: [{i}]: {e}")),
                        Ok(None) => {}
                        Ok(Some(mut ev)) => {
                            add_path_labels(it.as_ref(), self.labels, &mut ev.labels);
                            out.push(ev);
                        }
                    }
                }
            }
            _ => match self.value(v.clone()) {
                Err(e) => errors.push(format!("{path}: {e}")),
                Ok(None) => {}
                Ok(Some(mut ev)) => {
                    add_path_labels(v.as_ref(), self.labels, &mut ev.labels);
                    out.push(ev);
                }
            },
        }
        out
    }
}

fn info_one(v: Option<&Node<'_>>, labels: &[(String, Path)], out: &mut Vec<Series>) {
    if v.is_none() {
        return;
    }
    let mut l = BTreeMap::new();
    add_path_labels(v, labels, &mut l);
    if !l.is_empty() {
        out.push(Series {
            labels: l,
            value: 1.0,
        });
    }
}

fn info_values(
    v: Option<Node<'_>>,
    labels: &[(String, Path)],
    label_from_key: &str,
    path: &Path,
    errors: &mut Vec<String>,
) -> Vec<Series> {
    let mut out = vec![];
    match &v {
        Some(Node::Json(serde_json::Value::Array(items))) => {
            for item in items {
                info_one(Node::json(item).as_ref(), labels, &mut out);
            }
        }
        Some(node) if node.is_map() => {
            let mut own = vec![];
            info_one(Some(node), labels, &mut own);
            if !label_from_key.is_empty() && own.iter().any(|s| s.labels.contains_key(label_from_key)) {
                errors.push(format!(
                    "{path}: labelFromKey ({label_from_key}) generated labels conflict with labelsFromPath, consider renaming it"
                ));
            }
            for (key, it) in node.entries().unwrap_or_default() {
                let mut l = BTreeMap::new();
                if !key.is_empty() && !label_from_key.is_empty() {
                    l.insert(label_from_key.to_string(), key.to_string());
                }
                add_path_labels(it.as_ref(), labels, &mut l);
                if !l.is_empty() {
                    out.push(Series {
                        labels: l,
                        value: 1.0,
                    });
                }
            }
            out.extend(own);
        }
        _ => info_one(v.as_ref(), labels, &mut out),
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn stateset_values(
    v: Option<Node<'_>>,
    path: &Path,
    labels: &[(String, Path)],
    list: &[String],
    label_name: &str,
    value_from: &Path,
    out: &mut Vec<Series>,
    errors: &mut Vec<String>,
) {
    let comparable = value_from.get(v.clone());
    let Some(value) = comparable.as_ref().and_then(|c| c.as_str()) else {
        // KSM skips a state under `status` that is not there yet, silently.
        if path.first() == Some("status") {
            return;
        }
        errors.push(format!(
            "{path}: expected value for path to be string, got {}",
            Node::go_type(comparable.as_ref())
        ));
        return;
    };
    for entry in list {
        let mut l = BTreeMap::new();
        l.insert(label_name.to_string(), entry.clone());
        add_path_labels(v.as_ref(), labels, &mut l);
        out.push(Series {
            labels: l,
            value: if value == entry { 1.0 } else { 0.0 },
        });
    }
}

/// Escape a label value as kube-state-metrics does: `\`, newline and `"`.
pub(crate) fn escape_label_value(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

/// Escape HELP text as the text format requires: `\` and newline.
pub(crate) fn escape_help(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// `name{a="1",b="2"} value` and a newline.
pub(crate) fn write_series(name: &str, s: &Series, out: &mut String) {
    out.push_str(name);
    if !s.labels.is_empty() {
        out.push('{');
        for (i, (k, v)) in s.labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(k);
            out.push_str("=\"");
            escape_label_value(v, out);
            out.push('"');
        }
        out.push('}');
    }
    out.push(' ');
    go_float(s.value, out);
    out.push('\n');
}

/// `# HELP` and `# TYPE` lines; kube-state-metrics prints info and stateset families as
/// gauges in the Prometheus text format (0.0.4 has no such types).
pub(crate) fn write_header(name: &str, help: &str, out: &mut String) {
    let _ = write!(out, "# HELP {name} ");
    escape_help(help, out);
    let _ = writeln!(out, "\n# TYPE {name} gauge");
}
