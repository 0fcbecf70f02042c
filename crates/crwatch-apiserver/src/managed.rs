//! Field ownership: `metadata.managedFields` bookkeeping on every write and the conflict rules
//! of server-side apply. Lists are owned as a whole (atomic), which is what custom resources
//! without list-type markers get on the real server too.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use crate::status::{ApiError, Cause};

/// A field path like `["spec", "size"]`.
pub type Path = Vec<String>;

/// Metadata fields a manager can own; the rest of metadata belongs to the server.
const OWNED_METADATA: &[&str] = &["labels", "annotations", "finalizers", "ownerReferences"];

/// Every leaf path of an object (maps are walked, lists and scalars are leaves).
pub fn leaf_paths(obj: &Value) -> BTreeSet<Path> {
    let mut out = BTreeSet::new();
    let Some(m) = obj.as_object() else { return out };
    for (k, v) in m {
        match k.as_str() {
            "apiVersion" | "kind" => {}
            "metadata" => {
                for mk in OWNED_METADATA {
                    if let Some(mv) = v.get(*mk) {
                        walk(mv, vec!["metadata".into(), (*mk).into()], &mut out);
                    }
                }
            }
            _ => walk(v, vec![k.clone()], &mut out),
        }
    }
    out
}

fn walk(v: &Value, path: Path, out: &mut BTreeSet<Path>) {
    match v.as_object() {
        Some(m) if !m.is_empty() => {
            for (k, child) in m {
                let mut p = path.clone();
                p.push(k.clone());
                walk(child, p, out);
            }
        }
        _ => {
            out.insert(path);
        }
    }
}

fn get_path<'a>(obj: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(obj, |cur, k| cur.get(k))
}

fn remove_path(obj: &mut Value, path: &[String]) {
    let Some((last, parent)) = path.split_last() else {
        return;
    };
    let mut cur = obj;
    for k in parent {
        match cur.get_mut(k) {
            Some(next) => cur = next,
            None => return,
        }
    }
    if let Some(m) = cur.as_object_mut() {
        m.remove(last);
    }
}

/// Paths whose value differs between two objects (added, removed or changed leaves).
pub fn changed_paths(old: &Value, new: &Value) -> BTreeSet<Path> {
    let a = leaf_paths(old);
    let b = leaf_paths(new);
    a.union(&b)
        .filter(|p| get_path(old, p) != get_path(new, p))
        .cloned()
        .collect()
}

/// A set of paths as `fieldsV1` (`{"f:spec": {"f:size": {}}}`).
pub fn to_fields_v1(paths: &BTreeSet<Path>) -> Value {
    let mut root = Map::new();
    for p in paths {
        let mut cur = &mut root;
        for k in p {
            let entry = cur
                .entry(format!("f:{k}"))
                .or_insert_with(|| Value::Object(Map::new()));
            match entry.as_object_mut() {
                Some(m) => cur = m,
                None => break,
            }
        }
    }
    Value::Object(root)
}

/// Leaf paths of a `fieldsV1` value (the inverse of [`to_fields_v1`]).
pub fn from_fields_v1(v: &Value) -> BTreeSet<Path> {
    fn rec(v: &Value, path: Path, out: &mut BTreeSet<Path>) {
        let children: Vec<(&String, &Value)> = v
            .as_object()
            .map(|m| m.iter().filter(|(k, _)| k.starts_with("f:")).collect())
            .unwrap_or_default();
        if children.is_empty() {
            if !path.is_empty() {
                out.insert(path);
            }
            return;
        }
        for (k, child) in children {
            let mut p = path.clone();
            p.push(k[2..].to_string());
            rec(child, p, out);
        }
    }
    let mut out = BTreeSet::new();
    rec(v, vec![], &mut out);
    out
}

/// One entry of `metadata.managedFields`.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The field manager.
    pub manager: String,
    /// `Apply` or `Update`.
    pub operation: String,
    /// The API version the fields were written at.
    pub api_version: String,
    /// `""` for the main resource, `status` or `scale` for a subresource.
    pub subresource: String,
    /// When the entry last changed.
    pub time: String,
    /// The owned paths.
    pub fields: BTreeSet<Path>,
}

/// Parse `metadata.managedFields`.
pub fn entries(obj: &Value) -> Vec<Entry> {
    let Some(list) = obj.pointer("/metadata/managedFields").and_then(Value::as_array) else {
        return vec![];
    };
    let s = |e: &Value, k: &str| e.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
    list.iter()
        .map(|e| Entry {
            manager: s(e, "manager"),
            operation: s(e, "operation"),
            api_version: s(e, "apiVersion"),
            subresource: s(e, "subresource"),
            time: s(e, "time"),
            fields: e.get("fieldsV1").map(from_fields_v1).unwrap_or_default(),
        })
        .collect()
}

/// Write entries back into `metadata.managedFields` (dropping entries that own nothing).
pub fn set_entries(obj: &mut Value, list: Vec<Entry>) {
    let json: Vec<Value> = list
        .into_iter()
        .filter(|e| !e.fields.is_empty())
        .map(|e| {
            let mut v = json!({
                "manager": e.manager,
                "operation": e.operation,
                "apiVersion": e.api_version,
                "time": e.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": to_fields_v1(&e.fields),
            });
            if !e.subresource.is_empty() {
                v["subresource"] = json!(e.subresource);
            }
            v
        })
        .collect();
    let value = if json.is_empty() {
        Value::Null
    } else {
        Value::Array(json)
    };
    crate::meta::set_meta(obj, "managedFields", value);
}

/// Record an `Update` (create, update, patch) by `manager`: it takes the fields it changed.
pub fn record_update(
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    api_version: &str,
    sub: &str,
    now: &str,
) {
    // The field walks recurse once per level of the object.
    crate::schema::deep_stack(|| record_update_walk(old, new, manager, api_version, sub, now))
}

fn record_update_walk(
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    api_version: &str,
    sub: &str,
    now: &str,
) {
    let mut list = old.map(entries).unwrap_or_default();
    let changed = match old {
        Some(old) => changed_paths(old, new),
        None => leaf_paths(new),
    };
    let present = leaf_paths(new);
    for e in &mut list {
        e.fields.retain(|p| !changed.contains(p) && present.contains(p));
    }
    if !changed.is_empty() {
        match list
            .iter_mut()
            .find(|e| e.manager == manager && e.operation == "Update" && e.subresource == sub)
        {
            Some(e) => {
                e.fields
                    .extend(changed.into_iter().filter(|p| present.contains(p)));
                e.time = now.to_string();
                e.api_version = api_version.to_string();
            }
            None => list.push(Entry {
                manager: manager.to_string(),
                operation: "Update".into(),
                api_version: api_version.to_string(),
                subresource: sub.to_string(),
                time: now.to_string(),
                fields: changed.into_iter().filter(|p| present.contains(p)).collect(),
            }),
        }
    }
    set_entries(new, list);
}

/// A manager as the real server's `printManager` names it in conflicts: `"name"`, plus
/// ` with subresource "status"` and, for Update managers, ` using <apiVersion>`.
fn print_manager(e: &Entry) -> String {
    let mut s = format!("{:?}", e.manager);
    if !e.subresource.is_empty() {
        s.push_str(&format!(" with subresource {:?}", e.subresource));
    }
    if e.operation == "Update" {
        s.push_str(&format!(" using {}", e.api_version));
    }
    s
}

fn dotted(p: &Path) -> String {
    format!(".{}", p.join("."))
}

/// Server-side apply of `applied` by `manager` onto `current` (None when creating).
/// Returns the new object with its managedFields, or a 409 listing the conflicts.
pub fn apply(
    current: Option<&Value>,
    applied: &Value,
    manager: &str,
    force: bool,
    api_version: &str,
    sub: &str,
    now: &str,
) -> Result<Value, ApiError> {
    crate::schema::deep_stack(|| apply_walk(current, applied, manager, force, api_version, sub, now))
}

fn apply_walk(
    current: Option<&Value>,
    applied: &Value,
    manager: &str,
    force: bool,
    api_version: &str,
    sub: &str,
    now: &str,
) -> Result<Value, ApiError> {
    let applied_paths = leaf_paths(applied);
    let mut list = current.map(entries).unwrap_or_default();
    let mut obj = current.cloned().unwrap_or_else(|| json!({}));
    // (the manager as the real server prints it, its sort key, the path)
    let mut conflicts: Vec<(String, String, Path)> = vec![];
    for e in &list {
        if e.manager == manager && e.operation == "Apply" {
            continue;
        }
        for p in e.fields.intersection(&applied_paths) {
            if get_path(&obj, p) != get_path(applied, p) {
                let key = format!(
                    "{}\u{0}{}\u{0}{}\u{0}{}",
                    e.manager, e.operation, e.api_version, e.subresource
                );
                conflicts.push((print_manager(e), key, p.clone()));
            }
        }
    }
    if !conflicts.is_empty() && !force {
        let n = conflicts.len();
        let causes: Vec<Cause> = conflicts
            .iter()
            .map(|(m, _, p)| Cause::new("FieldManagerConflict", dotted(p), format!("conflict with {m}")))
            .collect();
        let message = if n == 1 {
            format!(
                "Apply failed with 1 conflict: {}: {}",
                causes[0].message, causes[0].field
            )
        } else {
            // Grouped by manager, managers sorted, lines joined by newlines (getConflictMessage).
            let mut keys: Vec<(&String, &String)> = conflicts.iter().map(|(m, k, _)| (k, m)).collect();
            keys.sort();
            keys.dedup();
            let mut lines: Vec<String> = vec![];
            for (k, m) in keys {
                lines.push(format!("conflicts with {m}:"));
                for (_, _, p) in conflicts.iter().filter(|(_, ck, _)| ck == k) {
                    lines.push(format!("- {}", dotted(p)));
                }
            }
            format!("Apply failed with {n} conflicts: {}", lines.join("\n"))
        };
        let mut err = ApiError::new(409, "Conflict", message);
        err = err.with_details(json!({
            "causes": causes.iter().map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field})).collect::<Vec<_>>()
        }));
        return Err(err);
    }
    // Fields this manager applied before but no longer applies, and nobody else owns, go.
    let previous: BTreeSet<Path> = list
        .iter()
        .filter(|e| e.manager == manager && e.operation == "Apply" && e.subresource == sub)
        .flat_map(|e| e.fields.iter().cloned())
        .collect();
    let others: BTreeSet<Path> = list
        .iter()
        .filter(|e| !(e.manager == manager && e.operation == "Apply"))
        .flat_map(|e| e.fields.iter().cloned())
        .collect();
    for p in previous.difference(&applied_paths) {
        if !others.contains(p) {
            remove_path(&mut obj, p);
        }
    }
    crate::patch::apply_merge(&mut obj, applied);
    if force {
        let forced: BTreeSet<&Path> = conflicts.iter().map(|(_, _, p)| p).collect();
        for e in &mut list {
            e.fields.retain(|p| !forced.contains(p));
        }
    }
    list.retain(|e| !(e.manager == manager && e.operation == "Apply" && e.subresource == sub));
    list.push(Entry {
        manager: manager.to_string(),
        operation: "Apply".into(),
        api_version: api_version.to_string(),
        subresource: sub.to_string(),
        time: now.to_string(),
        fields: applied_paths,
    });
    set_entries(&mut obj, list);
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_v1_round_trips() {
        let obj = json!({"metadata": {"labels": {"a": "1"}, "name": "x"}, "spec": {"size": "1Gi", "users": [{"u": 1}]}});
        let paths = leaf_paths(&obj);
        let f = to_fields_v1(&paths);
        assert_eq!(
            f,
            json!({"f:metadata": {"f:labels": {"f:a": {}}}, "f:spec": {"f:size": {}, "f:users": {}}})
        );
        assert_eq!(from_fields_v1(&f), paths);
    }

    #[test]
    fn apply_conflicts_with_another_manager_unless_forced() {
        let mut obj = json!({"metadata": {"name": "x"}, "spec": {"size": "1Gi"}});
        record_update(None, &mut obj, "kubectl-edit", "v1", "", "t");
        let applied = json!({"spec": {"size": "2Gi"}});
        let err = apply(Some(&obj), &applied, "me", false, "v1", "", "t").unwrap_err();
        assert_eq!(err.code, 409);
        assert_eq!(
            err.message,
            "Apply failed with 1 conflict: conflict with \"kubectl-edit\" using v1: .spec.size"
        );
        let out = apply(Some(&obj), &applied, "me", true, "v1", "", "t").unwrap();
        assert_eq!(out["spec"]["size"], "2Gi");
        let e = entries(&out);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].manager, "me");
    }

    #[test]
    fn apply_removes_fields_the_manager_stopped_applying() {
        let first = apply(
            None,
            &json!({"spec": {"a": 1, "b": 2}}),
            "me",
            false,
            "v1",
            "",
            "t",
        )
        .unwrap();
        let second = apply(
            Some(&first),
            &json!({"spec": {"a": 1}}),
            "me",
            false,
            "v1",
            "",
            "t",
        )
        .unwrap();
        assert_eq!(second["spec"], json!({"a": 1}));
    }
}
