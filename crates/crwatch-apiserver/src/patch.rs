//! Patch formats: JSON patch, JSON merge patch, strategic merge patch (with the merge keys of
//! the built-in kinds served here) and the merge step of server-side apply.

use serde_json::{Map, Value};

use crate::status::{ApiError, ApiResult};

/// How a PATCH body is to be read, from its Content-Type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    /// `application/json-patch+json` (RFC 6902).
    Json,
    /// `application/merge-patch+json` (RFC 7386).
    Merge,
    /// `application/strategic-merge-patch+json`.
    Strategic,
    /// `application/apply-patch+yaml` (server-side apply).
    Apply,
}

impl PatchType {
    /// The patch type named by a Content-Type header.
    pub fn from_content_type(ct: &str) -> ApiResult<Self> {
        let base = ct.split(';').next().unwrap_or_default().trim();
        match base {
            "application/json-patch+json" => Ok(PatchType::Json),
            "application/merge-patch+json" => Ok(PatchType::Merge),
            "application/strategic-merge-patch+json" => Ok(PatchType::Strategic),
            "application/apply-patch+yaml"
            | "application/apply-patch+json"
            | "application/apply-patch+cbor" => Ok(PatchType::Apply),
            other => Err(ApiError::unsupported_media_type(other)),
        }
    }
}

/// Apply an RFC 6902 JSON patch.
pub fn json_patch(target: &Value, body: &[u8]) -> ApiResult<Value> {
    let ops: json_patch::Patch = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
    let mut out = target.clone();
    json_patch::patch(&mut out, &ops).map_err(|_| {
        // The real server answers a failed test or a missing path as 422 Invalid with this
        // generic message only (`NewGenericServerResponse` drops the json-patch error text).
        ApiError::new(
            422,
            "Invalid",
            "the server rejected our request due to an error in our request",
        )
    })?;
    Ok(out)
}

/// Apply an RFC 7386 JSON merge patch.
pub fn merge_patch(target: &Value, body: &[u8]) -> ApiResult<Value> {
    let patch: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
    if !patch.is_object() {
        return Err(ApiError::bad_request(
            "json: cannot unmarshal into Go value of type map[string]interface {}",
        ));
    }
    let mut out = target.clone();
    json_patch::merge(&mut out, &patch);
    Ok(out)
}

/// The merge key of a list field in the built-in kinds served here, by the field's name.
/// Custom resources have none, so their lists are replaced (as a merge patch does).
fn merge_key(field: &str) -> Option<&'static str> {
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets"
        | "secrets" => Some("name"),
        "volumeMounts" => Some("mountPath"),
        "ports" => Some("containerPort"),
        "ownerReferences" => Some("uid"),
        _ => None,
    }
}

/// Apply a strategic merge patch: a merge patch that merges lists by their merge key and
/// understands the `$patch`, `$setElementOrder`, `$retainKeys` and `$deleteFromPrimitiveList`
/// directives kubectl sends.
pub fn strategic_merge_patch(target: &Value, body: &[u8], custom: bool) -> ApiResult<Value> {
    let patch: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
    if !patch.is_object() {
        return Err(ApiError::bad_request(
            "json: cannot unmarshal into Go value of type map[string]interface {}",
        ));
    }
    let mut out = target.clone();
    smp_object(&mut out, &patch, custom);
    Ok(out)
}

fn smp_object(target: &mut Value, patch: &Value, custom: bool) {
    let Some(pm) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if pm.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut replaced = pm.clone();
        replaced.remove("$patch");
        *target = Value::Object(replaced);
        return;
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Some(tm) = target.as_object_mut() else { return };
    if let Some(keep) = pm.get("$retainKeys").and_then(Value::as_array) {
        let keep: Vec<&str> = keep.iter().filter_map(Value::as_str).collect();
        tm.retain(|k, _| keep.contains(&k.as_str()));
    }
    for (k, pv) in pm {
        if k.starts_with('$') {
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(list), Some(del)) = (tm.get_mut(field).and_then(Value::as_array_mut), pv.as_array())
            {
                list.retain(|x| !del.contains(x));
            }
            continue;
        }
        if k.starts_with("$setElementOrder/") {
            continue;
        }
        match pv {
            Value::Null => {
                tm.remove(k);
            }
            Value::Object(_) => {
                let entry = tm.entry(k.clone()).or_insert(Value::Null);
                smp_object(entry, pv, custom);
            }
            Value::Array(items) => match merge_key(k).filter(|_| !custom) {
                Some(mk) => {
                    let entry = tm.entry(k.clone()).or_insert_with(|| Value::Array(vec![]));
                    smp_list(entry, items, mk, custom);
                }
                None => {
                    tm.insert(k.clone(), pv.clone());
                }
            },
            _ => {
                tm.insert(k.clone(), pv.clone());
            }
        }
    }
}

fn smp_list(target: &mut Value, items: &[Value], key: &str, custom: bool) {
    if !target.is_array() {
        *target = Value::Array(vec![]);
    }
    let Some(list) = target.as_array_mut() else { return };
    for item in items {
        let Some(kv) = item.get(key) else {
            list.push(item.clone());
            continue;
        };
        let pos = list.iter().position(|x| x.get(key) == Some(kv));
        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
        match (pos, delete) {
            (Some(i), true) => {
                list.remove(i);
            }
            (None, true) => {}
            (Some(i), false) => smp_object(&mut list[i], item, custom),
            (None, false) => {
                let mut fresh = Value::Object(Map::new());
                smp_object(&mut fresh, item, custom);
                list.push(fresh);
            }
        }
    }
}

/// Merge an applied configuration into an object: maps merge recursively, everything else
/// (lists included) is replaced.
pub fn apply_merge(target: &mut Value, applied: &Value) {
    match (target.as_object_mut(), applied.as_object()) {
        (Some(tm), Some(am)) => {
            for (k, av) in am {
                match tm.get_mut(k) {
                    Some(tv) if tv.is_object() && av.is_object() => apply_merge(tv, av),
                    _ => {
                        tm.insert(k.clone(), av.clone());
                    }
                }
            }
        }
        _ => *target = applied.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strategic_merge_merges_containers_by_name() {
        let target = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "a", "image": "a:1"}, {"name": "b", "image": "b:1"}
        ]}}}});
        let patch = json!({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "a"}, {"name": "b"}],
            "containers": [{"name": "b", "image": "b:2"}, {"name": "c", "$patch": "delete"}]
        }}}});
        let out = strategic_merge_patch(&target, patch.to_string().as_bytes(), false).unwrap();
        assert_eq!(out["spec"]["template"]["spec"]["containers"][0]["image"], "a:1");
        assert_eq!(out["spec"]["template"]["spec"]["containers"][1]["image"], "b:2");
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn strategic_merge_on_custom_resources_replaces_lists() {
        let target = json!({"spec": {"users": [{"name": "a"}, {"name": "b"}]}});
        let patch = json!({"spec": {"users": [{"name": "c"}]}});
        let out = strategic_merge_patch(&target, patch.to_string().as_bytes(), true).unwrap();
        assert_eq!(out["spec"]["users"], json!([{"name": "c"}]));
    }

    #[test]
    fn merge_patch_removes_nulls_and_json_patch_fails_cleanly() {
        let target = json!({"a": 1, "b": {"c": 2}});
        assert_eq!(merge_patch(&target, br#"{"b": null}"#).unwrap(), json!({"a": 1}));
        assert!(merge_patch(&target, b"[1]").is_err());
        let err = json_patch(&target, br#"[{"op": "test", "path": "/a", "value": 2}]"#).unwrap_err();
        assert_eq!(err.code, 422);
        assert!(json_patch(&target, b"not json").is_err());
    }
}
