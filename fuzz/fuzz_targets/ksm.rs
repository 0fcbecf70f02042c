//! kube-state-metrics' custom-resource-state configurations (`crwatch::ksm::Config`) and their
//! evaluation against any object (`Collector::render`, what `crwatch metrics` serves).
//!
//! Input: line 1 is the object (JSON; fields merged over a small `Foo`), the rest the
//! configuration (JSON; a configuration using every feature when it is not one). Invariants:
//! no panic; a refused configuration says why; every series line of the output is
//! `name{labels} value` with a Prometheus value, and every family has HELP and TYPE lines.
#![no_main]

use crwatch::ksm::{Collector, Config};
use crwatch::store::Store;
use kube_core::DynamicObject;
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

/// Gauges with `valueFrom`, `labelFromKey`, list lookups and `nilIsZero`, a StateSet and an
/// Info, with resource- and metric-level labels (`*` copies included).
fn rich_config() -> Value {
    json!({"kind": "CustomResourceStateMetrics", "spec": {"resources": [{
        "groupVersionKind": {"group": "myteam.io", "version": "v1", "kind": "Foo"},
        "commonLabels": {"crd_type": "foo"},
        "labelsFromPath": {"name": ["metadata", "name"], "*": ["metadata", "labels"]},
        "metrics": [
            {"name": "uptime", "help": "u", "each": {"type": "Gauge", "gauge": {"path": ["status", "uptime"], "nilIsZero": true}}},
            {"name": "ready_count", "help": "r", "each": {"type": "Gauge", "gauge": {
                "path": ["status", "sub"], "labelFromKey": "type",
                "labelsFromPath": {"active": ["active"]}, "valueFrom": ["ready"]}}},
            {"name": "condition", "help": "c", "each": {"type": "Gauge", "gauge": {
                "path": ["status", "conditions"], "labelsFromPath": {"type": ["type"]}, "valueFrom": ["status"]}}},
            {"name": "order_value", "help": "o", "each": {"type": "Gauge", "gauge": {
                "path": ["spec", "order", "[id=1]", "value"]}}},
            {"name": "phase", "help": "p", "each": {"type": "StateSet", "stateSet": {
                "path": ["status", "phase"], "labelName": "phase", "list": ["Pending", "Ready", "Failed"]}}},
            {"name": "info", "help": "i", "each": {"type": "Info", "info": {
                "labelsFromPath": {"version": ["spec", "version"], "lorem_*": ["metadata", "annotations"]}}}},
        ],
    }]}})
}

fn is_value(v: &str) -> bool {
    matches!(v, "NaN" | "+Inf" | "-Inf") || v.parse::<f64>().is_ok()
}

fuzz_target!(|data: &[u8]| {
    let (first, rest) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b""[..]),
    };
    let mut object = json!({
        "apiVersion": "myteam.io/v1",
        "kind": "Foo",
        "metadata": {"name": "foo", "namespace": "default", "labels": {"app": "web"}},
    });
    if let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(first)
        && let Some(target) = object.as_object_mut()
    {
        for (k, v) in fields {
            // Keep an object the store can key: a name that is a string.
            if k != "metadata" || v.get("name").is_some_and(Value::is_string) {
                target.insert(k, v);
            }
        }
    }
    let config = match serde_json::from_slice::<Value>(rest) {
        Ok(value) => match Config::from_value(value) {
            Ok(config) => config,
            Err(e) => {
                assert!(!e.to_string().is_empty());
                return;
            }
        },
        Err(_) => match Config::from_value(rich_config()) {
            Ok(config) => config,
            Err(e) => panic!("the built-in configuration is refused: {e}"),
        },
    };
    let Ok(object) = serde_json::from_value::<DynamicObject>(object) else {
        return;
    };
    let store = Store::<DynamicObject>::new();
    store.apply(object);
    let stores = config.resources().iter().map(|_| store.clone()).collect();
    let Ok(collector) = Collector::new(config, stores) else {
        panic!("one store per resource entry was given");
    };
    let text = collector.render();
    for line in text.lines() {
        if line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("a series line without a value: {line:?}"));
        assert!(is_value(value), "not a Prometheus value: {line:?}");
        assert!(
            series.ends_with('}') || !series.contains('{'),
            "labels not closed: {line:?}"
        );
    }
});
