//! Conversion between served versions whose schemas differ: `events.k8s.io/v1` Events are
//! stored as core `v1` Events (one storage, as on the real server) and converted on every read
//! and write, following `k8s.io/kubernetes/pkg/apis/events/v1/conversion.go` and the internal
//! core Event. Output is shaped as Go's encoder writes the typed objects (`omitempty` drops
//! empty strings and zero counts, but struct fields and zero timestamps stay, as `{}` and `null`).
//! `autoscaling/v1` HorizontalPodAutoscalers are the stored `autoscaling/v2` ones, converted as
//! `pkg/apis/autoscaling/v1/conversion.go` does for what v1 can say (the CPU utilization
//! target and its current value); v2's other metrics, behavior and conditions are not written
//! into annotations as the real conversion does, so a v1 write drops them.

use serde_json::{Map, Value, json};

use crate::registry::ResourceDef;

/// Whether objects of `def` are stored in another group's schema and must be converted.
pub fn converts(def: &ResourceDef) -> bool {
    (def.group == "events.k8s.io" && def.kind == "Event") || is_hpa_v1(def)
}

fn is_hpa_v1(def: &ResourceDef) -> bool {
    def.group == "autoscaling" && def.version == "v1" && def.kind == "HorizontalPodAutoscaler"
}

/// The CPU utilization target of a v2 metric list, if it has one.
fn cpu_utilization(metrics: Option<&Value>, target: &str, value: &str) -> Option<Value> {
    metrics?.as_array()?.iter().find_map(|m| {
        let r = m.get("resource")?;
        (m.get("type")? == "Resource" && r.get("name")? == "cpu")
            .then(|| r.get(target)?.get(value).cloned())
            .flatten()
    })
}

/// A stored `autoscaling/v2` HorizontalPodAutoscaler as `autoscaling/v1` shows it.
fn hpa_to_v1(stored: &Value) -> Value {
    let mut out = stored.clone();
    if let Some(spec) = out.get_mut("spec").and_then(Value::as_object_mut) {
        let cpu = cpu_utilization(spec.get("metrics"), "target", "averageUtilization");
        spec.remove("metrics");
        spec.remove("behavior");
        if let Some(cpu) = cpu {
            spec.insert("targetCPUUtilizationPercentage".into(), cpu);
        }
    }
    if let Some(status) = out.get_mut("status").and_then(Value::as_object_mut) {
        let cpu = cpu_utilization(status.get("currentMetrics"), "current", "averageUtilization");
        status.remove("currentMetrics");
        status.remove("conditions");
        if let Some(cpu) = cpu {
            status.insert("currentCPUUtilizationPercentage".into(), cpu);
        }
        status.entry("currentReplicas").or_insert(json!(0));
    }
    out
}

/// An `autoscaling/v1` HorizontalPodAutoscaler in the stored `autoscaling/v2` form.
fn hpa_to_v2(obj: Value) -> Value {
    let mut out = obj;
    if let Some(spec) = out.get_mut("spec").and_then(Value::as_object_mut)
        && let Some(cpu) = spec.remove("targetCPUUtilizationPercentage")
        && !cpu.is_null()
    {
        spec.insert(
            "metrics".into(),
            json!([{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": cpu}}}]),
        );
    }
    if let Some(status) = out.get_mut("status").and_then(Value::as_object_mut)
        && let Some(cpu) = status.remove("currentCPUUtilizationPercentage")
        && !cpu.is_null()
    {
        status.insert(
            "currentMetrics".into(),
            json!([{"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": cpu}}}]),
        );
    }
    out
}

/// A stored object as served at `def`'s version (the caller sets apiVersion and kind).
pub fn to_version(def: &ResourceDef, stored: &Value) -> Value {
    if is_hpa_v1(def) {
        hpa_to_v1(stored)
    } else if converts(def) {
        event_from_v1(stored.clone())
    } else {
        stored.clone()
    }
}

/// An object written at `def`'s version in the storage schema.
pub fn to_storage(def: &ResourceDef, obj: Value) -> Value {
    if is_hpa_v1(def) {
        hpa_to_v2(obj)
    } else if converts(def) {
        event_to_v1(obj)
    } else {
        obj
    }
}

/// A stored object as the storage schema shapes it (core v1 Events get their Go encoding,
/// so that a write at either version stores the same thing).
pub fn normalize_storage(def: &ResourceDef, obj: Value) -> Value {
    if def.group.is_empty() && def.kind == "Event" {
        event_to_v1(event_from_v1(obj))
    } else {
        obj
    }
}

/// Convert an `events.k8s.io/v1` Event to a core `v1` Event (the stored form).
pub fn event_to_v1(obj: Value) -> Value {
    let mut m = into_map(obj);
    let mut out = Map::new();
    out.insert("apiVersion".into(), json!("v1"));
    out.insert("kind".into(), json!("Event"));
    out.insert("metadata".into(), object_or_empty(m.remove("metadata")));
    out.insert("involvedObject".into(), object_ref(m.remove("regarding")));
    put_str(&mut out, "reason", m.remove("reason"));
    put_str(&mut out, "message", m.remove("note"));
    out.insert("source".into(), event_source(m.remove("deprecatedSource")));
    out.insert(
        "firstTimestamp".into(),
        or_null(m.remove("deprecatedFirstTimestamp")),
    );
    out.insert(
        "lastTimestamp".into(),
        or_null(m.remove("deprecatedLastTimestamp")),
    );
    put_count(&mut out, "count", m.remove("deprecatedCount"));
    put_str(&mut out, "type", m.remove("type"));
    out.insert("eventTime".into(), or_null(m.remove("eventTime")));
    if let Some(s) = non_null(m.remove("series")) {
        out.insert("series".into(), series(s, false));
    }
    put_str(&mut out, "action", m.remove("action"));
    if let Some(r) = non_null(m.remove("related")) {
        out.insert("related".into(), object_ref(Some(r)));
    }
    out.insert(
        "reportingComponent".into(),
        or_empty_str(m.remove("reportingController")),
    );
    out.insert(
        "reportingInstance".into(),
        or_empty_str(m.remove("reportingInstance")),
    );
    Value::Object(out)
}

/// Convert a core `v1` Event (the stored form) to an `events.k8s.io/v1` Event.
pub fn event_from_v1(obj: Value) -> Value {
    let mut m = into_map(obj);
    let mut out = Map::new();
    out.insert("apiVersion".into(), json!("events.k8s.io/v1"));
    out.insert("kind".into(), json!("Event"));
    out.insert("metadata".into(), object_or_empty(m.remove("metadata")));
    out.insert("eventTime".into(), or_null(m.remove("eventTime")));
    if let Some(s) = non_null(m.remove("series")) {
        out.insert("series".into(), series(s, true));
    }
    put_str(&mut out, "reportingController", m.remove("reportingComponent"));
    put_str(&mut out, "reportingInstance", m.remove("reportingInstance"));
    put_str(&mut out, "action", m.remove("action"));
    put_str(&mut out, "reason", m.remove("reason"));
    out.insert("regarding".into(), object_ref(m.remove("involvedObject")));
    if let Some(r) = non_null(m.remove("related")) {
        out.insert("related".into(), object_ref(Some(r)));
    }
    put_str(&mut out, "note", m.remove("message"));
    put_str(&mut out, "type", m.remove("type"));
    out.insert("deprecatedSource".into(), event_source(m.remove("source")));
    out.insert(
        "deprecatedFirstTimestamp".into(),
        or_null(m.remove("firstTimestamp")),
    );
    out.insert(
        "deprecatedLastTimestamp".into(),
        or_null(m.remove("lastTimestamp")),
    );
    put_count(&mut out, "deprecatedCount", m.remove("count"));
    Value::Object(out)
}

/// An Event in the core v1 schema whichever version it is served at (tables print core Events).
pub fn event_as_v1(obj: &Value) -> Value {
    let events_k8s_io = obj
        .get("apiVersion")
        .and_then(Value::as_str)
        .is_some_and(|av| av.starts_with("events.k8s.io/"));
    if events_k8s_io {
        event_to_v1(obj.clone())
    } else {
        obj.clone()
    }
}

/// The storage field a field selector on `def` names (`regarding.name` is the stored
/// `involvedObject.name`, as `AddFieldLabelConversionsForEvent` maps it).
pub fn storage_field(def: &ResourceDef, field: &str) -> String {
    if !converts(def) {
        return field.to_string();
    }
    if let Some(rest) = field.strip_prefix("regarding.") {
        return format!("involvedObject.{rest}");
    }
    match field {
        "reportingController" => "reportingComponent".into(),
        other => other.into(),
    }
}

fn into_map(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn non_null(v: Option<Value>) -> Option<Value> {
    v.filter(|v| !v.is_null())
}

fn or_null(v: Option<Value>) -> Value {
    v.unwrap_or(Value::Null)
}

fn object_or_empty(v: Option<Value>) -> Value {
    non_null(v).unwrap_or_else(|| json!({}))
}

fn or_empty_str(v: Option<Value>) -> Value {
    non_null(v).unwrap_or_else(|| json!(""))
}

/// An `omitempty` string: kept unless empty or null.
fn put_str(out: &mut Map<String, Value>, k: &str, v: Option<Value>) {
    match non_null(v) {
        Some(Value::String(s)) if s.is_empty() => {}
        Some(v) => {
            out.insert(k.into(), v);
        }
        None => {}
    }
}

/// An `omitempty` integer: kept unless zero or null.
fn put_count(out: &mut Map<String, Value>, k: &str, v: Option<Value>) {
    match non_null(v) {
        Some(n) if n.as_i64() == Some(0) => {}
        Some(n) => {
            out.insert(k.into(), n);
        }
        None => {}
    }
}

/// An `ObjectReference` (every field `omitempty`; the struct itself is always written).
fn object_ref(v: Option<Value>) -> Value {
    let mut out = Map::new();
    for (k, v) in into_map(non_null(v).unwrap_or(Value::Null)) {
        put_str(&mut out, &k, Some(v));
    }
    Value::Object(out)
}

/// An `EventSource` (`component` and `host`, both `omitempty`).
fn event_source(v: Option<Value>) -> Value {
    object_ref(v)
}

/// An `EventSeries`: events.k8s.io writes `count` always, core v1 only when non-zero;
/// `lastObservedTime` is always written (null when unset).
fn series(v: Value, count_always: bool) -> Value {
    let mut m = into_map(v);
    let mut out = Map::new();
    let count = non_null(m.remove("count"));
    if count_always {
        out.insert("count".into(), count.unwrap_or_else(|| json!(0)));
    } else {
        put_count(&mut out, "count", count);
    }
    out.insert("lastObservedTime".into(), or_null(m.remove("lastObservedTime")));
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full_events_v1() -> Value {
        json!({
            "apiVersion": "events.k8s.io/v1",
            "kind": "Event",
            "metadata": {"name": "e", "namespace": "ns", "uid": "u", "resourceVersion": "7"},
            "eventTime": "2025-01-01T00:00:00.000000Z",
            "series": {"count": 3, "lastObservedTime": "2025-01-01T00:01:00.000000Z"},
            "reportingController": "example.com/ctl",
            "reportingInstance": "ctl-1",
            "action": "Sync",
            "reason": "Synced",
            "regarding": {"kind": "Pod", "namespace": "ns", "name": "p", "uid": "pu", "apiVersion": "v1", "fieldPath": "spec.containers{c}"},
            "related": {"kind": "Node", "name": "n1"},
            "note": "it synced",
            "type": "Normal",
            "deprecatedSource": {"component": "kubelet", "host": "n1"},
            "deprecatedFirstTimestamp": "2025-01-01T00:00:00Z",
            "deprecatedLastTimestamp": "2025-01-01T00:01:00Z",
            "deprecatedCount": 3
        })
    }

    #[test]
    fn events_v1_maps_onto_core_v1_fields() {
        let v1 = event_to_v1(full_events_v1());
        assert_eq!(v1["apiVersion"], "v1");
        assert_eq!(v1["involvedObject"]["name"], "p");
        assert_eq!(v1["involvedObject"]["fieldPath"], "spec.containers{c}");
        assert_eq!(v1["related"]["name"], "n1");
        assert_eq!(v1["message"], "it synced");
        assert_eq!(v1["reportingComponent"], "example.com/ctl");
        assert_eq!(v1["reportingInstance"], "ctl-1");
        assert_eq!(v1["source"], json!({"component": "kubelet", "host": "n1"}));
        assert_eq!(v1["firstTimestamp"], "2025-01-01T00:00:00Z");
        assert_eq!(v1["lastTimestamp"], "2025-01-01T00:01:00Z");
        assert_eq!(v1["count"], 3);
        assert_eq!(v1["series"]["count"], 3);
        assert_eq!(v1["eventTime"], "2025-01-01T00:00:00.000000Z");
        assert_eq!(v1["metadata"]["uid"], "u");
        assert!(v1.get("note").is_none() && v1.get("regarding").is_none());
    }

    #[test]
    fn round_trips_are_lossless() {
        let ev = full_events_v1();
        assert_eq!(event_from_v1(event_to_v1(ev.clone())), ev);
        let v1 = event_to_v1(ev);
        assert_eq!(event_to_v1(event_from_v1(v1.clone())), v1);
    }

    #[test]
    fn sparse_events_get_go_encoding() {
        // A minimal events.k8s.io/v1 write, stored as core v1.
        let v1 = event_to_v1(json!({
            "metadata": {"name": "e"},
            "eventTime": "2025-01-01T00:00:00.000000Z",
            "reportingController": "ctl",
            "reportingInstance": "ctl-1",
            "action": "A",
            "reason": "R",
            "regarding": {"kind": "Pod", "name": "p"},
            "type": "Normal"
        }));
        assert_eq!(v1["source"], json!({}));
        assert_eq!(v1["firstTimestamp"], Value::Null);
        assert_eq!(v1["lastTimestamp"], Value::Null);
        assert!(v1.get("count").is_none());
        assert!(v1.get("message").is_none());
        assert!(v1.get("series").is_none());
        // A legacy core v1 event read at events.k8s.io/v1.
        let ev = event_from_v1(json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": "e"},
            "involvedObject": {"kind": "Pod", "name": "p", "namespace": ""},
            "reason": "R",
            "message": "m",
            "count": 0
        }));
        assert_eq!(ev["eventTime"], Value::Null);
        assert_eq!(ev["regarding"], json!({"kind": "Pod", "name": "p"}));
        assert_eq!(ev["deprecatedSource"], json!({}));
        assert_eq!(ev["deprecatedFirstTimestamp"], Value::Null);
        assert!(ev.get("deprecatedCount").is_none());
        assert!(ev.get("reportingController").is_none());
        assert_eq!(ev["note"], "m");
        // Series: count is required at events.k8s.io/v1, omitempty at core v1.
        let ev = event_from_v1(json!({"series": {"lastObservedTime": "t"}}));
        assert_eq!(ev["series"], json!({"count": 0, "lastObservedTime": "t"}));
        assert_eq!(event_to_v1(ev)["series"], json!({"lastObservedTime": "t"}));
    }

    #[test]
    fn field_selectors_map_to_storage_fields() {
        let events = crate::registry::builtin_resources()
            .into_iter()
            .find(|d| d.group == "events.k8s.io")
            .expect("events.k8s.io registered");
        assert_eq!(storage_field(&events, "regarding.name"), "involvedObject.name");
        assert_eq!(
            storage_field(&events, "reportingController"),
            "reportingComponent"
        );
        assert_eq!(storage_field(&events, "metadata.name"), "metadata.name");
        let mut ev = json!({"note": "x", "message": "y", "regarding": {"nme": "p"}});
        assert_eq!(
            crate::typed::decode(&events, &mut ev).unwrap(),
            ["message", "regarding.nme"]
        );
    }
}
