//! Rows of server-side Tables (`Accept: application/json;as=Table;g=meta.k8s.io;v=v1`): the
//! cells `kubectl get` prints beside the object itself, as one cacheable resource.

use std::borrow::Cow;

use kube::Resource;
use kube::api::{ApiResource, DynamicObject, ObjectMeta};
use kube::core::DynamicResourceScope;
use serde::{Serialize, Serializer};
use serde_json::Value;

/// One row of a server-side Table: the object (embedded with `includeObject=Object`) and the
/// cells the server rendered for it (`None` when the server sent a plain object instead).
///
/// It is a [`Resource`] (its metadata is the object's), so it lives in a store and an informer
/// like any object. It serializes as the object alone: cells are presentation, and diffs and
/// snapshots are about the object.
///
/// ```
/// use crwatch::source::kube::TableRow;
/// use serde_json::json;
/// let row = TableRow::from_value(json!({
///     "object": {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "namespace": "default"}},
///     "cells": ["a", 1, "5s"],
/// })).unwrap();
/// assert_eq!(row.cells.as_deref().unwrap().len(), 3);
/// assert_eq!(serde_json::to_value(&row).unwrap()["kind"], "ConfigMap");
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct TableRow {
    /// The object the row shows.
    pub object: DynamicObject,
    /// The rendered cells, in the order of the Table's column definitions.
    pub cells: Option<Vec<Value>>,
}

impl TableRow {
    /// A row from `{"object": …, "cells": […]}` (cells may be null or missing).
    pub fn from_value(mut v: Value) -> Result<Self, serde_json::Error> {
        let cells = match v.get_mut("cells").map(Value::take) {
            Some(Value::Array(c)) => Some(c),
            _ => None,
        };
        let object = crate::json::from_value(v.get_mut("object").map(Value::take).unwrap_or(Value::Null))?;
        Ok(TableRow { object, cells })
    }
}

impl Serialize for TableRow {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.object.serialize(s)
    }
}

impl Resource for TableRow {
    type DynamicType = ApiResource;
    type Scope = DynamicResourceScope;

    fn group(dt: &ApiResource) -> Cow<'_, str> {
        DynamicObject::group(dt)
    }
    fn version(dt: &ApiResource) -> Cow<'_, str> {
        DynamicObject::version(dt)
    }
    fn kind(dt: &ApiResource) -> Cow<'_, str> {
        DynamicObject::kind(dt)
    }
    fn api_version(dt: &ApiResource) -> Cow<'_, str> {
        DynamicObject::api_version(dt)
    }
    fn plural(dt: &ApiResource) -> Cow<'_, str> {
        DynamicObject::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        &self.object.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.object.metadata
    }
}
