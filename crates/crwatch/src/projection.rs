//! Projections: informer transforms that keep only the fields a controller reads, so the
//! cache holds less. [`Projection::fields`] keeps an allow-list of field paths (plus the
//! metadata every controller needs: name, namespace, uid, resourceVersion, generation,
//! timestamps, labels, owners, finalizers); [`Projection::metadata_only`] keeps all metadata
//! but `managedFields` and nothing else.
//!
//! A projected object is still a `K` (fields left out are their defaults), shared by `Arc` as
//! before; readers pay nothing. The informer pays one JSON round trip per event. A type whose
//! required fields a projection leaves out cannot be rebuilt: such an object is kept whole
//! and a warning is logged once per informer, so a wrong allow-list costs memory, never data.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use kube::Resource;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::informer::Transform;

/// The metadata fields [`Projection::fields`] always keeps.
pub const IDENTITY_METADATA: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "ownerReferences",
    "finalizers",
];

/// A field path is empty or has an empty segment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid field path {path:?}: use dot-separated field names such as spec.template.spec.containers")]
pub struct ProjectionError {
    /// The path given.
    pub path: String,
}

/// Which fields a cache keeps.
///
/// ```
/// use crwatch::projection::Projection;
/// use k8s_openapi::api::core::v1::ConfigMap;
///
/// let keep = Projection::fields(["data.mode"]).unwrap();
/// let mut cm: ConfigMap = serde_json::from_value(serde_json::json!({
///     "metadata": {"name": "settings", "annotations": {"big": "x"}},
///     "data": {"mode": "fast", "blob": "...megabytes..."},
/// })).unwrap();
/// (keep.transform::<ConfigMap>())(&mut cm);
/// assert_eq!(cm.data.unwrap().len(), 1);
/// assert!(cm.metadata.annotations.is_none());
/// assert_eq!(cm.metadata.name.as_deref(), Some("settings"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Projection {
    /// Paths kept (split into segments); `None`: all metadata, nothing else.
    paths: Option<Vec<Vec<String>>>,
}

impl Projection {
    /// Keep these field paths (`spec.replicas`, `status.conditions`, `data.mode`,
    /// `metadata.annotations`) and the identity metadata. A path through a list applies to each
    /// element (`spec.containers.image` keeps every container's image).
    pub fn fields<S: AsRef<str>>(paths: impl IntoIterator<Item = S>) -> Result<Self, ProjectionError> {
        let mut out = Vec::new();
        for p in paths {
            let p = p.as_ref();
            let segs: Vec<String> = p.split('.').map(str::to_string).collect();
            if p.is_empty() || segs.iter().any(String::is_empty) {
                return Err(ProjectionError { path: p.to_string() });
            }
            out.push(segs);
        }
        for m in IDENTITY_METADATA {
            out.push(vec!["metadata".to_string(), (*m).to_string()]);
        }
        out.push(vec!["apiVersion".into()]);
        out.push(vec!["kind".into()]);
        Ok(Projection { paths: Some(out) })
    }

    /// Keep all metadata (without `managedFields`) and nothing else: what a controller that
    /// only reacts to existence, labels or owners needs.
    ///
    /// ```
    /// use crwatch::projection::Projection;
    /// use k8s_openapi::api::core::v1::ConfigMap;
    /// let mut cm: ConfigMap = serde_json::from_value(serde_json::json!({
    ///     "metadata": {"name": "a", "annotations": {"x": "1"}}, "data": {"k": "v"}})).unwrap();
    /// (Projection::metadata_only().transform::<ConfigMap>())(&mut cm);
    /// assert!(cm.data.is_none());
    /// assert_eq!(cm.metadata.annotations.unwrap()["x"], "1");
    /// ```
    pub fn metadata_only() -> Self {
        Projection { paths: None }
    }

    /// `value` with only the projected fields.
    pub fn apply(&self, value: &Value) -> Value {
        match &self.paths {
            None => {
                let mut out = Map::new();
                for k in ["apiVersion", "kind"] {
                    if let Some(v) = value.get(k) {
                        out.insert(k.to_string(), v.clone());
                    }
                }
                if let Some(Value::Object(meta)) = value.get("metadata") {
                    let mut meta = meta.clone();
                    meta.remove("managedFields");
                    out.insert("metadata".into(), Value::Object(meta));
                }
                Value::Object(out)
            }
            Some(paths) => {
                let mut out = Value::Object(Map::new());
                for p in paths {
                    copy_path(value, &mut out, p);
                }
                out
            }
        }
    }

    /// The informer transform (see [`crate::informer::Informer::set_transform`]).
    pub fn transform<K>(self) -> Transform<K>
    where
        K: Resource + Serialize + DeserializeOwned + 'static,
    {
        let warned = AtomicBool::new(false);
        Arc::new(move |obj: &mut K| {
            let Ok(value) = serde_json::to_value(&*obj) else {
                return;
            };
            match serde_json::from_value::<K>(self.apply(&value)) {
                Ok(projected) => *obj = projected,
                Err(e) => {
                    // Keep the whole object: a projection saves memory, it must not lose data.
                    obj.meta_mut().managed_fields = None;
                    if !warned.swap(true, Ordering::Relaxed) {
                        tracing::warn!(error = %e, "the projection leaves out a required field; keeping whole objects (add the field to the projection)");
                    }
                }
            }
        })
    }
}

/// Copy `path` of `from` into `to`, creating objects on the way; lists map over elements.
fn copy_path(from: &Value, to: &mut Value, path: &[String]) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    let (Value::Object(src), Value::Object(dst)) = (from, &mut *to) else {
        return;
    };
    let Some(child) = src.get(first) else { return };
    if rest.is_empty() {
        dst.insert(first.clone(), child.clone());
        return;
    }
    match child {
        Value::Object(_) => {
            let slot = dst
                .entry(first.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            copy_path(child, slot, rest);
        }
        Value::Array(items) => {
            let slot = dst
                .entry(first.clone())
                .or_insert_with(|| Value::Array(items.iter().map(|_| Value::Object(Map::new())).collect()));
            if let Value::Array(out_items) = slot {
                for (item, out) in items.iter().zip(out_items.iter_mut()) {
                    copy_path(item, out, rest);
                }
            }
        }
        // A scalar where the path goes deeper: nothing to keep below it.
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::Deployment;

    use super::*;

    #[test]
    fn lists_map_over_elements_and_identity_metadata_stays() {
        let p = Projection::fields(["spec.template.spec.containers.image", "spec.replicas"]).unwrap();
        let v = serde_json::json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "uid": "u", "annotations": {"a": "b"}, "managedFields": [{}]},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"a": "b"}},
                     "template": {"spec": {"containers": [{"name": "a", "image": "x:1", "args": ["big"]}, {"name": "b", "image": "y:2"}]}}},
        });
        let out = p.apply(&v);
        assert_eq!(out["spec"]["replicas"], 3);
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"],
            serde_json::json!([{"image": "x:1"}, {"image": "y:2"}])
        );
        assert_eq!(out["metadata"], serde_json::json!({"name": "web", "uid": "u"}));
        assert!(out["spec"].get("selector").is_none());
    }

    #[test]
    fn a_projection_missing_required_fields_keeps_the_whole_object() {
        // Deployment's spec.selector and container names are required by k8s-openapi.
        let mut d: Deployment = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "managedFields": [{"manager": "x"}]},
            "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {"spec": {"containers": [{"name": "a", "image": "x"}]}}},
        }))
        .unwrap();
        (Projection::fields(["spec.template.spec.containers.image"])
            .unwrap()
            .transform::<Deployment>())(&mut d);
        assert!(d.spec.is_some(), "kept whole");
        assert!(d.metadata.managed_fields.is_none());
        // With the required fields in the allow-list it projects.
        (Projection::fields(["spec.selector", "spec.template.spec.containers.name"])
            .unwrap()
            .transform::<Deployment>())(&mut d);
        let spec = d.spec.unwrap();
        assert_eq!(spec.template.spec.unwrap().containers[0].image, None);
    }

    #[test]
    fn empty_segments_are_refused() {
        assert!(Projection::fields(["spec..x"]).is_err());
        assert!(Projection::fields([""]).is_err());
    }
}
