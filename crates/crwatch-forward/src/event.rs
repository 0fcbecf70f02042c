//! Changes as the forwarder sees them, and their CloudEvents 1.0 form (structured JSON).

use std::sync::Arc;

use serde_json::{Value, json};

use crwatch::discovery::ResourceType;

use crate::config::EventType;
use crate::sink::{Delivery, TemplateVars};

/// One change of one object.
#[derive(Debug, Clone)]
pub struct Change {
    /// Added, modified or deleted.
    pub event: EventType,
    /// `namespace/name` (`name` when cluster-scoped).
    pub key: String,
    /// The object after the change (the last known state for deletions).
    pub object: Arc<Value>,
    /// The object before the change, when known.
    pub old: Option<Arc<Value>>,
    /// Field changes from `old` to `object` (modifications only).
    pub diff: crwatch::diff::Diff,
}

fn meta<'a>(object: &'a Value, field: &str) -> &'a str {
    object
        .pointer(&format!("/metadata/{field}"))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// The CloudEvent id of a change: `uid:resourceVersion`, plus `:deleted` for deletions (a
/// deletion found by a relist carries the last known resourceVersion, which an earlier
/// change already used).
pub fn event_id(change: &Change) -> String {
    let uid = meta(&change.object, "uid");
    let rv = meta(&change.object, "resourceVersion");
    match change.event {
        EventType::Deleted => format!("{uid}:{rv}:deleted"),
        _ => format!("{uid}:{rv}"),
    }
}

/// Builds deliveries for one resource type (or one non-Kubernetes source).
#[derive(Debug, Clone)]
pub struct EventBuilder {
    source: String,
    /// `None` for non-Kubernetes sources: group, version and kind come from each object.
    rt: Option<ResourceType>,
}

/// `uri` without credentials (`user:password@`) or query: what a CloudEvent's `source` may
/// show of a non-Kubernetes source.
///
/// ```
/// use crwatch_forward::event::redact_uri;
/// assert_eq!(redact_uri("postgres://app:s3cret@db:5432/shop?sslmode=require"), "postgres://db:5432/shop");
/// assert_eq!(redact_uri("https://api.example.com/items?token=x"), "https://api.example.com/items");
/// assert_eq!(redact_uri("webhook"), "webhook");
/// ```
pub fn redact_uri(uri: &str) -> String {
    let uri = uri.split(['?', '#']).next().unwrap_or(uri);
    match uri.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            format!("{scheme}://{host}{path}")
        }
        None => uri.to_string(),
    }
}

impl EventBuilder {
    /// Deliveries of a non-Kubernetes source: the CloudEvents `source` is `uri` without
    /// credentials, and group, version and kind come from each object's `apiVersion` and `kind`.
    pub fn for_source(uri: &str) -> Self {
        Self {
            source: redact_uri(uri),
            rt: None,
        }
    }

    /// `source_prefix` is the CloudEvents source's start (the API server URL by default); the
    /// API path of the resource is appended.
    pub fn new(source_prefix: &str, rt: ResourceType) -> Self {
        let path = if rt.group.is_empty() {
            format!("/api/{}/{}", rt.version, rt.plural)
        } else {
            format!("/apis/{}/{}/{}", rt.group, rt.version, rt.plural)
        };
        Self {
            source: format!("{}{path}", source_prefix.trim_end_matches('/')),
            rt: Some(rt),
        }
    }

    /// The delivery of `change`.
    pub fn delivery(&self, change: &Change) -> Delivery {
        let id = event_id(change);
        let namespace = meta(&change.object, "namespace");
        let name = meta(&change.object, "name");
        let subject = if namespace.is_empty() {
            name.to_string()
        } else {
            format!("{namespace}/{name}")
        };
        let (group, version, kind, resource) = match &self.rt {
            Some(rt) => (
                rt.group.clone(),
                rt.version.clone(),
                rt.kind.clone(),
                rt.plural.clone(),
            ),
            None => {
                let api_version = change.object["apiVersion"].as_str().unwrap_or_default();
                let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
                let kind = change.object["kind"].as_str().unwrap_or_default().to_string();
                let plural = format!("{}s", kind.to_lowercase());
                (group.to_string(), version.to_string(), kind, plural)
            }
        };
        let mut data = json!({ "object": &*change.object });
        if change.event == EventType::Modified {
            data["diff"] = serde_json::to_value(&change.diff).unwrap_or(Value::Null);
        }
        let event = json!({
            "specversion": "1.0",
            "id": id,
            "source": self.source,
            "type": format!("io.crwatch.resource.{}", change.event.as_str()),
            "subject": subject,
            "time": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "datacontenttype": "application/json",
            "resourceversion": meta(&change.object, "resourceVersion"),
            "kind": kind,
            "data": data,
        });
        let vars = TemplateVars {
            group: if group.is_empty() { "core".into() } else { group },
            version,
            kind,
            resource,
            namespace: if namespace.is_empty() {
                "_".into()
            } else {
                namespace.to_string()
            },
            name: name.to_string(),
            event: change.event.as_str().to_string(),
        };
        Delivery {
            id,
            event: Arc::new(event),
            vars: Arc::new(vars),
        }
    }
}

/// `delivery` with CloudEvents' distributed-tracing extension attributes: `traceparent` (W3C
/// Trace Context, `00-<trace id>-<span id>-<flags>`) and, when not empty, `tracestate`. In binary
/// mode they become the `ce-traceparent` and `ce-tracestate` headers like every other attribute.
///
/// ```
/// # use std::sync::Arc;
/// # use crwatch_forward::sink::{Delivery, TemplateVars};
/// # let delivery = Delivery { id: "u:1".into(), event: Arc::new(serde_json::json!({"id": "u:1"})), vars: Arc::new(TemplateVars::default()) };
/// let traced = crwatch_forward::event::with_trace_context(&delivery, "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", None);
/// assert_eq!(traced.event["traceparent"], "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
/// assert!(traced.event.get("tracestate").is_none());
/// ```
pub fn with_trace_context(delivery: &Delivery, traceparent: &str, tracestate: Option<&str>) -> Delivery {
    let mut event = (*delivery.event).clone();
    if let Some(attributes) = event.as_object_mut() {
        attributes.insert("traceparent".into(), traceparent.into());
        if let Some(state) = tracestate {
            attributes.insert("tracestate".into(), state.into());
        }
    }
    Delivery {
        id: delivery.id.clone(),
        event: Arc::new(event),
        vars: delivery.vars.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloudevents_carry_stable_ids_and_the_diff() {
        let rt = ResourceType {
            group: "stable.example.com".into(),
            version: "v1".into(),
            kind: "Database".into(),
            plural: "databases".into(),
            singular: "database".into(),
            short_names: vec![],
            namespaced: true,
            preferred: true,
        };
        let b = EventBuilder::new("https://127.0.0.1:6443/", rt);
        let old = json!({"metadata": {"name": "a", "namespace": "ns", "uid": "u1", "resourceVersion": "5"}, "spec": {"size": "1Gi"}});
        let new = json!({"metadata": {"name": "a", "namespace": "ns", "uid": "u1", "resourceVersion": "6"}, "spec": {"size": "2Gi"}});
        let change = Change {
            event: EventType::Modified,
            key: "ns/a".into(),
            diff: crwatch::diff::Diff::between(&old, &new),
            object: Arc::new(new),
            old: Some(Arc::new(old)),
        };
        let d = b.delivery(&change);
        assert_eq!(d.id, "u1:6");
        assert_eq!(
            d.event["source"],
            "https://127.0.0.1:6443/apis/stable.example.com/v1/databases"
        );
        assert_eq!(d.event["type"], "io.crwatch.resource.modified");
        assert_eq!(d.event["subject"], "ns/a");
        assert_eq!(d.event["data"]["diff"][0]["path"], "spec.size");
        assert_eq!(d.vars.namespace, "ns");
        let deleted = Change {
            event: EventType::Deleted,
            ..change
        };
        assert_eq!(b.delivery(&deleted).id, "u1:6:deleted");
        assert!(b.delivery(&deleted).event["data"].get("diff").is_none());
    }

    #[test]
    fn non_kubernetes_sources_name_themselves_without_credentials() {
        let b = EventBuilder::for_source("https://user:pw@api.example.com/items?key=secret");
        let item = json!({"apiVersion": "http.crwatch.io/v1", "kind": "Item",
            "metadata": {"name": "a", "namespace": "api.example.com", "uid": "u", "resourceVersion": "h1"}});
        let d = b.delivery(&Change {
            event: EventType::Added,
            key: "api.example.com/a".into(),
            object: Arc::new(item),
            old: None,
            diff: Default::default(),
        });
        assert_eq!(d.event["source"], "https://api.example.com/items");
        assert_eq!(d.event["kind"], "Item");
        assert_eq!(d.id, "u:h1");
        assert_eq!(d.vars.group, "http.crwatch.io");
        assert_eq!(d.vars.version, "v1");
    }
}
