//! Label and field selectors: the server's `?labelSelector=` / `?fieldSelector=` parsers and
//! matching (crwatch-apiserver's selector module), the structured `metav1.LabelSelector`, and
//! the runtime's `-l` parser (`crwatch::store::parse_selector`).
//!
//! Input: line 1 a label selector (or a `metav1.LabelSelector` as JSON), line 2 a field
//! selector, then `key=value` labels of the object matched against them.
//! Invariants: no panic; a selector the runtime accepts, the server accepts too, and both
//! select the same labels (the runtime filters listers itself and sends the string to the
//! server for lists and watches).
#![no_main]

use std::collections::BTreeMap;

use crwatch_apiserver::selector::{FieldSelector, LabelSelector, field_value};
use kube_core::SelectorExt;
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

/// Every field any kind lets a field selector use on the server.
const FIELDS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "type",
    "status.phase",
    "source",
    "reason",
    "involvedObject.kind",
    "involvedObject.name",
    "regarding.name",
    "reportingController",
];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.split('\n');
    let label = lines.next().unwrap_or_default();
    let field = lines.next().unwrap_or_default();
    let labels: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let obj = json!({
        "apiVersion": "v1",
        "kind": "Event",
        "type": labels.get("type"),
        "metadata": {"name": labels.get("name"), "namespace": labels.get("ns"), "labels": labels},
        "source": {"component": labels.get("component")},
        "involvedObject": {"kind": "Pod", "name": labels.get("name")},
    });

    // The server's string form.
    if let Ok(sel) = LabelSelector::parse(label) {
        let _ = sel.matches(&labels);
        let _ = sel.matches_object(&obj);
        let _ = sel.is_empty();
    }
    // The structured form (admission webhooks' namespaceSelector/objectSelector).
    if let Ok(v) = serde_json::from_str::<Value>(label)
        && let Ok(sel) = LabelSelector::from_object(&v)
    {
        let _ = sel.matches(&labels);
    }
    if let Ok(fs) = FieldSelector::parse(field, FIELDS) {
        let _ = fs.matches(&obj);
        let _ = fs.pinned_name();
    }
    for f in FIELDS {
        let _ = field_value(&obj, f);
    }

    // The runtime's parser: it checks `-l`/`labelSelector:` strings and filters listers with
    // them, while the raw string goes to the server; both must agree on what it selects.
    if let Ok(sel) = crwatch::store::parse_selector(label) {
        let server = LabelSelector::parse(label)
            .unwrap_or_else(|e| panic!("the server rejects {label:?} that the runtime accepts: {e}"));
        assert_eq!(
            server.matches(&labels),
            sel.matches(&labels),
            "runtime and server disagree on {label:?} for {labels:?}"
        );
        let _ = sel.to_string();
    }
});
