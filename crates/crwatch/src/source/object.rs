//! The common object shape of sources outside Kubernetes: files, table rows, HTTP items and
//! pushed webhooks become [`DynamicObject`]s with `apiVersion`, `kind`, `metadata` (name,
//! namespace, labels, uid, resourceVersion from the source's own versioning) and a body, so
//! the store, informer, controller, `crwatch get` and the forwarder treat them like Kubernetes
//! objects.

use std::collections::BTreeMap;

use kube::api::{DynamicObject, ObjectMeta, TypeMeta};
use serde_json::{Map, Value};

/// The API group every non-Kubernetes source uses for its objects' `apiVersion`
/// (`<source>.crwatch.io/v1`, e.g. `file.crwatch.io/v1`).
pub const GROUP_SUFFIX: &str = "crwatch.io";

/// A stable uid for an object that has no uid of its own: a name-based (v5) UUID of the
/// source and the object's key, so the same row or file keeps its uid across restarts, and two
/// sources never share one.
///
/// ```
/// use crwatch::source::object::stable_uid;
/// assert_eq!(stable_uid("file:/etc/app", "a.yaml"), stable_uid("file:/etc/app", "a.yaml"));
/// assert_ne!(stable_uid("file:/etc/app", "a.yaml"), stable_uid("file:/etc/app", "b.yaml"));
/// ```
pub fn stable_uid(source: &str, key: &str) -> String {
    let mut name = Vec::with_capacity(source.len() + key.len() + 1);
    name.extend_from_slice(source.as_bytes());
    name.push(0);
    name.extend_from_slice(key.as_bytes());
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, &name).to_string()
}

/// Builds an object in the common shape.
///
/// ```
/// use crwatch::source::object::ObjectBuilder;
/// use serde_json::json;
/// let row = ObjectBuilder::new("postgres.crwatch.io/v1", "Row", "42")
///     .namespace("orders")
///     .uid("5f0c6c1e-0000-5000-8000-000000000000")
///     .resource_version("17")
///     .label("status", "paid")
///     .field("data", json!({"id": 42, "status": "paid"}))
///     .build();
/// assert_eq!(row.metadata.name.as_deref(), Some("42"));
/// assert_eq!(row.data["data"]["status"], "paid");
/// let v = serde_json::to_value(&row).unwrap();
/// assert_eq!(v["kind"], "Row");
/// assert_eq!(v["data"]["id"], 42);
/// ```
#[derive(Debug, Clone)]
pub struct ObjectBuilder {
    types: TypeMeta,
    meta: ObjectMeta,
    body: Map<String, Value>,
}

impl ObjectBuilder {
    /// An object of `api_version`/`kind` named `name`.
    pub fn new(api_version: &str, kind: &str, name: impl Into<String>) -> Self {
        ObjectBuilder {
            types: TypeMeta {
                api_version: api_version.to_string(),
                kind: kind.to_string(),
            },
            meta: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            body: Map::new(),
        }
    }

    /// Its namespace (sources use it for a table, a directory or an endpoint).
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.meta.namespace = Some(namespace.into());
        self
    }

    /// Its uid (see [`stable_uid`]).
    pub fn uid(mut self, uid: impl Into<String>) -> Self {
        self.meta.uid = Some(uid.into());
        self
    }

    /// Its version, from the source's own versioning (a content hash, a row version, an ETag).
    pub fn resource_version(mut self, rv: impl Into<String>) -> Self {
        self.meta.resource_version = Some(rv.into());
        self
    }

    /// One label.
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.meta
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(key.into(), value.into());
        self
    }

    /// One annotation.
    pub fn annotation(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.meta
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(key.into(), value.into());
        self
    }

    /// `metadata.creationTimestamp` (for `AGE` columns).
    pub fn created(mut self, at: k8s_openapi::jiff::Timestamp) -> Self {
        self.meta.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at));
        self
    }

    /// A top-level body field (`data`, `spec`, ...).
    pub fn field(mut self, name: impl Into<String>, value: Value) -> Self {
        self.body.insert(name.into(), value);
        self
    }

    /// The object.
    pub fn build(self) -> DynamicObject {
        DynamicObject {
            types: Some(self.types),
            metadata: self.meta,
            data: Value::Object(self.body),
        }
    }
}
