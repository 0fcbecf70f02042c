//! Server-side table output (`Accept: application/json;as=Table;v=v1;g=meta.k8s.io`), the
//! columns `kubectl get` prints, and the simple JSONPath printer columns and scale use.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::registry::{PrinterColumn, ResourceDef};

/// Evaluate a simple JSONPath (`.spec.x`, `.items[0].y`, `.conditions[?(@.type=="Ready")].status`,
/// with or without `{}` braces) and return the first result.
pub fn eval<'a>(obj: &'a Value, path: &str) -> Option<&'a Value> {
    let path = path.trim().trim_start_matches('{').trim_end_matches('}');
    let path = path.strip_prefix('$').unwrap_or(path);
    let mut cur = obj;
    let mut rest = path;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            let field = &r[..end];
            if !field.is_empty() {
                cur = cur.get(field)?;
            }
            rest = &r[end..];
        } else if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']')?;
            let inner = &r[..end];
            rest = &r[end + 1..];
            if let Some(filter) = inner.strip_prefix("?(@.").and_then(|f| f.strip_suffix(')')) {
                let (field, want) = filter.split_once("==")?;
                let want = want.trim().trim_matches(|c| c == '"' || c == '\'');
                cur = cur.as_array()?.iter().find(|item| {
                    item.get(field.trim())
                        .map(|v| v.as_str().map(String::from).unwrap_or_else(|| v.to_string()))
                        .as_deref()
                        == Some(want)
                })?;
            } else if inner == "*" {
                cur = cur.as_array()?.first()?;
            } else {
                let idx: i64 = inner.parse().ok()?;
                let arr = cur.as_array()?;
                let idx = if idx < 0 { arr.len() as i64 + idx } else { idx };
                cur = arr.get(usize::try_from(idx).ok()?)?;
            }
        } else {
            // A path without a leading dot, as some CRDs write them.
            rest = &rest[rest.len()..];
            cur = path.split('.').try_fold(obj, |c, f| c.get(f))?;
        }
    }
    Some(cur)
}

/// A duration as kubectl prints ages: `45s`, `3m12s`, `5h`, `2d3h`, `400d`, `3y12d`.
pub fn human_duration(secs: i64) -> String {
    if secs < -1 {
        return "<invalid>".into();
    }
    let secs = secs.max(0);
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86400);
    if secs < 120 {
        format!("{secs}s")
    } else if m < 10 {
        if secs % 60 == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{}s", secs % 60)
        }
    } else if h < 3 {
        format!("{m}m")
    } else if h < 8 {
        if m % 60 == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{}m", m % 60)
        }
    } else if h < 48 {
        format!("{h}h")
    } else if h < 24 * 8 {
        if h % 24 == 0 {
            format!("{d}d")
        } else {
            format!("{d}d{}h", h % 24)
        }
    } else if d < 365 * 2 {
        format!("{d}d")
    } else if d < 365 * 8 {
        let y = d / 365;
        if d % 365 == 0 {
            format!("{y}y")
        } else {
            format!("{y}y{}d", d % 365)
        }
    } else {
        format!("{}y", d / 365)
    }
}

fn age(ts: Option<&Value>) -> Value {
    let Some(s) = ts.and_then(Value::as_str) else {
        return json!("<unknown>");
    };
    match DateTime::parse_from_rfc3339(s) {
        Ok(t) => json!(human_duration((Utc::now() - t.with_timezone(&Utc)).num_seconds())),
        Err(_) => json!("<invalid>"),
    }
}

fn col(name: &str, type_: &str, format: &str, description: &str, priority: i64) -> PrinterColumn {
    PrinterColumn {
        name: name.into(),
        type_: type_.into(),
        format: format.into(),
        description: description.into(),
        priority,
        json_path: String::new(),
    }
}

const NAME_DESC: &str = "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names";
const AGE_DESC: &str = "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata";

type Cells = fn(&Value) -> Vec<Value>;

fn str_at(o: &Value, p: &str) -> String {
    o.pointer(p)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn count_at(o: &Value, p: &str) -> usize {
    o.pointer(p)
        .map(|v| {
            v.as_object()
                .map(|m| m.len())
                .or(v.as_array().map(Vec::len))
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

fn builtin_columns(def: &ResourceDef) -> Option<(Vec<PrinterColumn>, Cells)> {
    let name = col("Name", "string", "name", NAME_DESC, 0);
    let age_col = col("Age", "string", "", AGE_DESC, 0);
    Some(match (def.group.as_str(), def.kind.as_str()) {
        ("", "ConfigMap") => (vec![name, col("Data", "string", "", "", 0), age_col], |o| {
            let n = count_at(o, "/data") + count_at(o, "/binaryData");
            vec![json!(n), age(o.pointer("/metadata/creationTimestamp"))]
        }),
        ("", "Secret") => (
            vec![
                name,
                col("Type", "string", "", "", 0),
                col("Data", "string", "", "", 0),
                age_col,
            ],
            |o| {
                vec![
                    json!(str_at(o, "/type")),
                    json!(count_at(o, "/data")),
                    age(o.pointer("/metadata/creationTimestamp")),
                ]
            },
        ),
        ("", "Namespace") => (vec![name, col("Status", "string", "", "", 0), age_col], |o| {
            vec![
                json!(str_at(o, "/status/phase")),
                age(o.pointer("/metadata/creationTimestamp")),
            ]
        }),
        ("", "ServiceAccount") => (vec![name, col("Secrets", "string", "", "", 0), age_col], |o| {
            vec![
                json!(count_at(o, "/secrets")),
                age(o.pointer("/metadata/creationTimestamp")),
            ]
        }),
        ("coordination.k8s.io", "Lease") => (vec![name, col("Holder", "string", "", "", 0), age_col], |o| {
            vec![
                json!(str_at(o, "/spec/holderIdentity")),
                age(o.pointer("/metadata/creationTimestamp")),
            ]
        }),
        ("apps", "Deployment") => (
            vec![
                name,
                col("Ready", "string", "", "", 0),
                col("Up-to-date", "string", "", "", 0),
                col("Available", "string", "", "", 0),
                age_col,
                col("Containers", "string", "", "", 1),
                col("Images", "string", "", "", 1),
                col("Selector", "string", "", "", 1),
            ],
            |o| {
                let n = |p: &str| o.pointer(p).and_then(Value::as_i64).unwrap_or(0);
                let containers = o
                    .pointer("/spec/template/spec/containers")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                let names: Vec<String> = containers.iter().map(|c| str_at(c, "/name")).collect();
                let images: Vec<String> = containers.iter().map(|c| str_at(c, "/image")).collect();
                let selector =
                    crate::selector::match_labels_string(o, "/spec/selector/matchLabels").unwrap_or_default();
                vec![
                    json!(format!("{}/{}", n("/status/readyReplicas"), n("/spec/replicas"))),
                    json!(n("/status/updatedReplicas")),
                    json!(n("/status/availableReplicas")),
                    age(o.pointer("/metadata/creationTimestamp")),
                    json!(names.join(",")),
                    json!(images.join(",")),
                    json!(selector),
                ]
            },
        ),
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            (vec![name, col("Created At", "date", "", "", 0)], |o| {
                vec![json!(str_at(o, "/metadata/creationTimestamp"))]
            })
        }
        (_, "Event") => (
            // As the real server's printEvent (both versions print the core Event).
            vec![
                col("Last Seen", "string", "", "", 0),
                col("Type", "string", "", "", 0),
                col("Reason", "string", "", "", 0),
                col("Object", "string", "", "", 0),
                col("Subobject", "string", "", "", 1),
                col("Source", "string", "", "", 1),
                col("Message", "string", "", "", 0),
                col("First Seen", "string", "", "", 1),
                col("Count", "string", "", "", 1),
                col("Name", "string", "name", NAME_DESC, 1),
            ],
            |o| {
                let o = &crate::convert::event_as_v1(o);
                let set = |p: &str| o.pointer(p).filter(|v| !v.is_null());
                let first = age(set("/firstTimestamp").or(set("/eventTime")));
                let mut last = match set("/lastTimestamp") {
                    Some(t) => age(Some(t)),
                    None => first.clone(),
                };
                let mut count = o.get("count").and_then(Value::as_i64).unwrap_or(0);
                if let Some(series) = set("/series") {
                    last = age(series.get("lastObservedTime"));
                    count = series.get("count").and_then(Value::as_i64).unwrap_or(0);
                } else if count == 0 {
                    // Singleton events have no count in the new API.
                    count = 1;
                }
                let kind = str_at(o, "/involvedObject/kind").to_ascii_lowercase();
                let name = str_at(o, "/involvedObject/name");
                let object = if name.is_empty() {
                    kind
                } else {
                    format!("{kind}/{name}")
                };
                let first_non_empty = |a: String, b: String| if a.is_empty() { b } else { a };
                let component =
                    first_non_empty(str_at(o, "/source/component"), str_at(o, "/reportingComponent"));
                let instance = first_non_empty(str_at(o, "/source/host"), str_at(o, "/reportingInstance"));
                let source = if instance.is_empty() {
                    component
                } else {
                    format!("{component}, {instance}")
                };
                vec![
                    last,
                    json!(str_at(o, "/type")),
                    json!(str_at(o, "/reason")),
                    json!(object),
                    json!(str_at(o, "/involvedObject/fieldPath")),
                    json!(source),
                    json!(str_at(o, "/message").trim()),
                    first,
                    json!(count),
                    json!(str_at(o, "/metadata/name")),
                ]
            },
        ),
        _ => return None,
    })
}

fn name_cells_first(kind: &str) -> bool {
    kind != "Event"
}

fn custom_cell(c: &PrinterColumn, obj: &Value) -> Value {
    let Some(v) = eval(obj, &c.json_path) else {
        return Value::Null;
    };
    match c.type_.as_str() {
        "date" => age(Some(v)),
        "integer" => v.as_i64().map(|n| json!(n)).unwrap_or(Value::Null),
        "number" => v.as_f64().map(|n| json!(n)).unwrap_or(Value::Null),
        "boolean" => v.as_bool().map(|b| json!(b)).unwrap_or(Value::Null),
        _ => match v {
            Value::String(s) => json!(s),
            Value::Null => Value::Null,
            other => json!(other.to_string()),
        },
    }
}

fn column_json(c: &PrinterColumn) -> Value {
    json!({"name": c.name, "type": c.type_, "format": c.format, "description": c.description, "priority": c.priority})
}

/// The object's metadata as `PartialObjectMetadata` (what tables embed per row and what
/// metadata-only requests get), managedFields included as on the real server.
pub fn partial_metadata(obj: &Value) -> Value {
    let meta = obj.get("metadata").cloned().unwrap_or_else(|| json!({}));
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": meta})
}

/// Render objects as a `meta.k8s.io/v1` Table. `with_columns` is false for watch events after
/// the first, as the real server sends the column definitions once.
pub fn to_table(def: &ResourceDef, objects: &[&Value], list_meta: Value, with_columns: bool) -> Value {
    type CellFn = Box<dyn Fn(&Value) -> Vec<Value>>;
    let (columns, cells): (Vec<PrinterColumn>, CellFn) = if def.is_custom() {
        let mut cols = vec![col("Name", "string", "name", NAME_DESC, 0)];
        let custom = if def.printer_columns.is_empty() {
            vec![PrinterColumn {
                json_path: ".metadata.creationTimestamp".into(),
                ..col("Age", "date", "", AGE_DESC, 0)
            }]
        } else {
            def.printer_columns.clone()
        };
        cols.extend(custom.iter().cloned());
        (
            cols,
            Box::new(move |o: &Value| custom.iter().map(|c| custom_cell(c, o)).collect()),
        )
    } else if let Some((cols, f)) = builtin_columns(def).or_else(|| crate::sim::printers::columns(def)) {
        (cols, Box::new(f))
    } else {
        (
            vec![
                col("Name", "string", "name", NAME_DESC, 0),
                col("Age", "string", "", AGE_DESC, 0),
            ],
            Box::new(|o: &Value| vec![age(o.pointer("/metadata/creationTimestamp"))]),
        )
    };
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let mut row = vec![];
            if name_cells_first(&def.kind) {
                row.push(json!(
                    crate::sim::printers::display_name(def, o).unwrap_or_else(|| str_at(o, "/metadata/name"))
                ));
            }
            row.extend(cells(o));
            json!({"cells": row, "object": partial_metadata(o)})
        })
        .collect();
    let mut table = json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "rows": rows,
    });
    if with_columns {
        table["columnDefinitions"] = Value::Array(columns.iter().map(column_json).collect());
    } else {
        table["columnDefinitions"] = Value::Null;
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonpath_subset() {
        let o = json!({"spec": {"users": [{"n": "a"}, {"n": "b"}]}, "status": {"conditions": [
            {"type": "Synced", "status": "False"}, {"type": "Ready", "status": "True"}
        ]}});
        assert_eq!(eval(&o, ".spec.users[1].n"), Some(&json!("b")));
        assert_eq!(eval(&o, "{.spec.users[-1].n}"), Some(&json!("b")));
        assert_eq!(
            eval(&o, ".status.conditions[?(@.type==\"Ready\")].status"),
            Some(&json!("True"))
        );
        assert_eq!(eval(&o, ".spec.missing"), None);
    }

    #[test]
    fn ages_print_like_kubectl() {
        assert_eq!(human_duration(45), "45s");
        assert_eq!(human_duration(192), "3m12s");
        assert_eq!(human_duration(3600 * 5), "5h");
        assert_eq!(human_duration(3600 * 51), "2d3h");
        assert_eq!(human_duration(86400 * 400), "400d");
    }
}
