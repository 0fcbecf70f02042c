//! What `crwatch mcp` lets out of an object: never a Secret's values (only its keys), never
//! `metadata.managedFields`.
//!
//! Every object that leaves the server (resources, tool results, describe, diff history,
//! apply and patch answers) goes through [`redact`] first. A Secret keeps its `data` and
//! `stringData` keys with each value replaced by [`REDACTED`]; the
//! `kubectl.kubernetes.io/last-applied-configuration` annotation (which holds the values
//! too) is replaced the same way.

use serde_json::Value;

/// What a Secret value is replaced with.
pub const REDACTED: &str = "<redacted>";

/// The annotation `kubectl apply` keeps the whole applied object in.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Whether `object` is a Secret: any kind named `Secret`, whatever its group (a custom
/// `Secret` kind is treated like the core one rather than trusted).
pub fn is_secret(object: &Value) -> bool {
    object.get("kind").and_then(Value::as_str) == Some("Secret")
}

/// Drop `metadata.managedFields` and, for Secrets, replace every value by [`REDACTED`].
///
/// ```
/// use crwatch_serve::mcp::redact::{redact, REDACTED};
/// use serde_json::json;
///
/// let mut s = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"},
///                    "data": {"password": "aHVudGVyMg=="}});
/// redact(&mut s);
/// assert_eq!(s["data"]["password"], REDACTED);
/// ```
pub fn redact(object: &mut Value) {
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
    }
    if !is_secret(object) {
        return;
    }
    for field in ["data", "stringData"] {
        if let Some(map) = object.get_mut(field).and_then(Value::as_object_mut) {
            for v in map.values_mut() {
                *v = Value::String(REDACTED.into());
            }
        } else if let Some(v) = object.get_mut(field)
            && !v.is_null()
        {
            // Not a map: nothing a client may see either.
            *v = Value::String(REDACTED.into());
        }
    }
    if let Some(annotations) = object
        .pointer_mut("/metadata/annotations")
        .and_then(Value::as_object_mut)
        && let Some(v) = annotations.get_mut(LAST_APPLIED)
    {
        *v = Value::String(REDACTED.into());
    }
}

/// [`redact`] on a copy.
pub fn redacted(object: &Value) -> Value {
    let mut v = object.clone();
    redact(&mut v);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secrets_keep_keys_lose_values() {
        let mut s = json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "db", "managedFields": [{"manager": "kubectl"}],
                         "annotations": {LAST_APPLIED: "{\"data\":{\"password\":\"aHVudGVyMg==\"}}",
                                         "team": "payments"}},
            "data": {"password": "aHVudGVyMg==", "user": "YWRtaW4="},
            "stringData": {"token": "hunter2"},
            "type": "Opaque"
        });
        redact(&mut s);
        let text = s.to_string();
        assert!(!text.contains("aHVudGVyMg"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(!text.contains("YWRtaW4"), "{text}");
        assert_eq!(s["data"], json!({"password": REDACTED, "user": REDACTED}));
        assert_eq!(s["stringData"], json!({"token": REDACTED}));
        assert_eq!(s["metadata"]["annotations"]["team"], "payments");
        assert!(s["metadata"].get("managedFields").is_none());
        assert_eq!(s["type"], "Opaque");
    }

    #[test]
    fn other_kinds_only_lose_managed_fields() {
        let mut cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
                            "metadata": {"name": "c", "managedFields": []},
                            "data": {"password": "visible"}});
        redact(&mut cm);
        assert_eq!(cm["data"]["password"], "visible");
        assert!(cm["metadata"].get("managedFields").is_none());
        // A custom kind called Secret is treated like the core one.
        let custom = json!({"apiVersion": "example.com/v1", "kind": "Secret", "data": {"a": "b"}});
        assert_eq!(redacted(&custom)["data"]["a"], REDACTED);
    }
}
