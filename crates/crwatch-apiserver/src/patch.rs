//! Patch formats: JSON patch, JSON merge patch, strategic merge patch (with the merge keys of
//! the built-in kinds served here) and the merge step of server-side apply.
//!
//! Limits, as the real server's: at most [`MAX_JSON_PATCH_OPERATIONS`] operations in a JSON
//! patch (413 otherwise), and `copy` operations may add at most [`MAX_JSON_PATCH_COPY_BYTES`]
//! in total (422), so a small patch of repeated copies cannot double an object until memory
//! runs out. Merge, strategic and apply patches cannot grow an object past the size of the
//! patch itself, which the request body limit bounds; the size of the stored result is
//! checked by the API (`Api::check_stored_size`).

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

/// The most operations a JSON patch may have (`maxJSONPatchOperations` of the real server's
/// patch handler).
pub const MAX_JSON_PATCH_OPERATIONS: usize = 10_000;

/// The most bytes `copy` operations of one JSON patch may add together (the real server's
/// `JSONPatchMaxCopyBytes`, 3 MiB, which it sets as json-patch's `AccumulatedCopySizeLimit`).
pub const MAX_JSON_PATCH_COPY_BYTES: u64 = 3 * 1024 * 1024;

/// The real server's answer to a JSON patch that cannot be applied: 422 Invalid with a generic
/// message only (`NewGenericServerResponse` drops the json-patch error text), for a failed
/// test, a missing path and an exceeded copy limit alike.
fn unappliable() -> ApiError {
    ApiError::new(
        422,
        "Invalid",
        "the server rejected our request due to an error in our request",
    )
}

/// The length of a value's compact JSON encoding, as json-patch measures a copied value,
/// without building the encoding.
fn encoded_len(v: &Value) -> u64 {
    struct Count(u64);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len() as u64;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    // Writing to a counter cannot fail; a failure would only make the count smaller.
    let _ = stacker::maybe_grow(64 * 1024, 1024 * 1024, || serde_json::to_writer(&mut c, v));
    c.0
}

/// Apply an RFC 6902 JSON patch.
pub fn json_patch(target: &Value, body: &[u8]) -> ApiResult<Value> {
    let ops: json_patch::Patch = crate::decode::json_checked(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
    if ops.0.len() > MAX_JSON_PATCH_OPERATIONS {
        return Err(ApiError::request_entity_too_large(&format!(
            "The allowed maximum operations in a JSON patch is {MAX_JSON_PATCH_OPERATIONS}, got {}",
            ops.0.len()
        )));
    }
    let mut out = target.clone();
    apply_ops(&mut out, &ops.0).map_err(|_| unappliable())?;
    Ok(out)
}

/// Apply JSON patch operations (a request's, or a mutating webhook's) with the copy limit,
/// one operation at a time, so that the bytes each `copy` adds are counted before the next
/// one can double them again. `Err` is json-patch's error text.
pub fn apply_ops(doc: &mut Value, ops: &[json_patch::PatchOperation]) -> Result<(), String> {
    use json_patch::PatchOperation as Op;
    let mut copied = 0u64;
    // An upper bound of the document's depth: every operation that puts a value somewhere can
    // make it as deep as the path plus the value. Operations that nest values ever deeper
    // would otherwise outgrow what the stack can walk long before the object is checked.
    let mut depth = crate::decode::depth(doc);
    let limit = crate::decode::MAX_DEPTH + crate::decode::BODY_DEPTH_SLACK;
    for op in ops {
        let placed = match op {
            Op::Add(a) => Some((a.path.as_str(), crate::decode::depth(&a.value))),
            Op::Replace(r) => Some((r.path.as_str(), crate::decode::depth(&r.value))),
            Op::Copy(c) => Some((
                c.path.as_str(),
                doc.pointer(c.from.as_str()).map_or(0, crate::decode::depth),
            )),
            Op::Move(m) => Some((
                m.path.as_str(),
                doc.pointer(m.from.as_str()).map_or(0, crate::decode::depth),
            )),
            Op::Remove(_) | Op::Test(_) => None,
        };
        if let Some((path, value_depth)) = placed {
            let segments = path.matches('/').count();
            depth = depth.max(segments + value_depth);
            if depth > limit {
                return Err("the patched object would nest deeper than the server accepts".into());
            }
        }
        if let json_patch::PatchOperation::Copy(c) = op {
            let from = doc.pointer(c.from.as_str()).ok_or_else(|| {
                format!(
                    "copy operation does not apply: doc is missing from path: {}",
                    c.from
                )
            })?;
            copied += encoded_len(from);
            if copied > MAX_JSON_PATCH_COPY_BYTES {
                // json-patch's AccumulatedCopySizeError.
                return Err(format!(
                    "Unable to complete the copy, the accumulated size increase of copy is {copied}, exceeding the limit {MAX_JSON_PATCH_COPY_BYTES}"
                ));
            }
        }
        json_patch::patch(doc, std::slice::from_ref(op)).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Apply an RFC 7386 JSON merge patch.
pub fn merge_patch(target: &Value, body: &[u8]) -> ApiResult<Value> {
    let patch: Value = crate::decode::json_checked(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
    if !patch.is_object() {
        return Err(ApiError::bad_request(
            "json: cannot unmarshal into Go value of type map[string]interface {}",
        ));
    }
    let mut out = target.clone();
    merge(&mut out, &patch);
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
    let patch: Value = crate::decode::json_checked(body)
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

/// RFC 7386 merge, one level per call, the stack growing as needed for deep documents.
fn merge(target: &mut Value, patch: &Value) {
    stacker::maybe_grow(64 * 1024, 1024 * 1024, || {
        let Some(pm) = patch.as_object() else {
            *target = patch.clone();
            return;
        };
        if !target.is_object() {
            *target = Value::Object(Map::new());
        }
        let Some(tm) = target.as_object_mut() else { return };
        for (k, pv) in pm {
            if pv.is_null() {
                tm.remove(k);
            } else {
                merge(tm.entry(k.clone()).or_insert(Value::Null), pv);
            }
        }
    })
}

fn smp_object(target: &mut Value, patch: &Value, custom: bool) {
    stacker::maybe_grow(64 * 1024, 1024 * 1024, || smp_object_level(target, patch, custom))
}

fn smp_object_level(target: &mut Value, patch: &Value, custom: bool) {
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
    stacker::maybe_grow(64 * 1024, 1024 * 1024, || apply_merge_level(target, applied))
}

fn apply_merge_level(target: &mut Value, applied: &Value) {
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

    #[test]
    fn json_patch_operation_count_and_copy_size_are_limited() {
        let target = json!({"a": "x"});
        let ops: Vec<Value> = (0..=MAX_JSON_PATCH_OPERATIONS)
            .map(|_| json!({"op": "test", "path": "/a", "value": "x"}))
            .collect();
        let err = json_patch(&target, &serde_json::to_vec(&ops).unwrap()).unwrap_err();
        assert_eq!((err.code, err.reason.as_str()), (413, "RequestEntityTooLarge"));
        assert_eq!(
            err.message,
            "Request entity too large: The allowed maximum operations in a JSON patch is 10000, got 10001"
        );
        // Each copy doubles /d: 1 KiB doubles past the 3 MiB limit in a dozen operations.
        let target = json!({"d": ["x".repeat(1024)]});
        let doubling: Vec<Value> = (0..40)
            .map(|_| json!({"op": "copy", "from": "/d", "path": "/d/-"}))
            .collect();
        let err = json_patch(&target, &serde_json::to_vec(&doubling).unwrap()).unwrap_err();
        assert_eq!((err.code, err.reason.as_str()), (422, "Invalid"));
        // Below the limit copies work.
        let few = &doubling[..3];
        let out = json_patch(&target, &serde_json::to_vec(few).unwrap()).unwrap();
        assert_eq!(out["d"].as_array().unwrap().len(), 4);
    }

    #[test]
    fn merge_patches_of_deep_documents_do_not_overflow() {
        let deep =
            "{\"a\":".repeat(crate::decode::MAX_DEPTH - 1) + "1" + &"}".repeat(crate::decode::MAX_DEPTH - 1);
        let target: Value = crate::decode::from_slice_deep(deep.as_bytes()).unwrap();
        let out = std::thread::Builder::new()
            // The default stack of a tokio worker.
            .stack_size(2 * 1024 * 1024)
            .spawn(move || {
                let measure = |v: Value| {
                    let d = crate::decode::depth(&v);
                    crate::decode::drop_deep(v);
                    d
                };
                let out = merge_patch(&target, deep.as_bytes()).map(measure);
                let smp = strategic_merge_patch(&target, deep.as_bytes(), true).map(measure);
                crate::decode::drop_deep(target);
                (out, smp)
            })
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(out.0.unwrap(), crate::decode::MAX_DEPTH - 1);
        assert_eq!(out.1.unwrap(), crate::decode::MAX_DEPTH - 1);
    }
}
