//! Object metadata rules shared by every kind: name formats, label syntax, timestamps,
//! generated names and the field manager a request writes as.

use rand::Rng;
use serde_json::Value;

use crate::status::Cause;

/// Now, as the RFC 3339 seconds-precision UTC string Kubernetes uses.
pub fn now() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// A name for `generateName`: the prefix plus five characters the real server draws from.
pub fn generate_name(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    let suffix: String = (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    // The real server cuts the prefix so the whole name stays within 63 characters.
    let max_prefix = 63 - 5;
    let prefix = if prefix.len() > max_prefix {
        &prefix[..max_prefix]
    } else {
        prefix
    };
    format!("{prefix}{suffix}")
}

const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";

fn is_label(s: &str) -> bool {
    s.len() <= 63 && is_label_shaped(s)
}

/// The label regex alone: the real server's subdomain check applies only the regex and the
/// 253-character total, so a subdomain's parts may be longer than 63 characters.
fn is_label_shaped(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Whether `s` is a DNS-1123 subdomain (most object names).
pub fn is_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_label_shaped)
}

/// Why `name` is not a valid object name, if it is not. Namespaces need a DNS label,
/// other kinds a DNS subdomain.
pub fn name_problems(name: &str, label_only: bool) -> Vec<Cause> {
    let invalid = |detail: &str| {
        Cause::new(
            "FieldValueInvalid",
            "metadata.name",
            format!("Invalid value: \"{name}\": {detail}"),
        )
    };
    let mut out = vec![];
    if label_only {
        if name.len() > 63 {
            out.push(invalid("must be no more than 63 characters"));
        }
        if !is_label(name) || name.is_empty() {
            out.push(invalid(DNS1123_LABEL_MSG));
        }
    } else {
        if name.len() > 253 {
            out.push(invalid("must be no more than 253 characters"));
        }
        if !is_subdomain(name) {
            out.push(invalid(DNS1123_SUBDOMAIN_MSG));
        }
    }
    out
}

/// Label key and value problems under `metadata.labels`.
pub fn label_problems(obj: &Value) -> Vec<Cause> {
    let mut out = vec![];
    let Some(labels) = obj.pointer("/metadata/labels").and_then(Value::as_object) else {
        return out;
    };
    for (k, v) in labels {
        if !crate::selector::valid_label_key(k) {
            out.push(Cause::new(
                "FieldValueInvalid",
                "metadata.labels",
                format!("Invalid value: \"{k}\": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"),
            ));
        }
        let Some(v) = v.as_str() else {
            out.push(Cause::new(
                "FieldValueTypeInvalid",
                format!("metadata.labels.{k}"),
                "Invalid value: must be a string",
            ));
            continue;
        };
        let ok = v.is_empty()
            || (v.len() <= 63
                && v.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                && v.starts_with(|c: char| c.is_ascii_alphanumeric())
                && v.ends_with(|c: char| c.is_ascii_alphanumeric()));
        if !ok {
            out.push(Cause::new(
                "FieldValueInvalid",
                "metadata.labels",
                format!("Invalid value: \"{v}\": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"),
            ));
        }
    }
    out
}

/// The field manager of a request: `fieldManager`, else the User-Agent up to its first `/`,
/// as the real server derives it.
pub fn field_manager(explicit: Option<&str>, user_agent: &str) -> String {
    match explicit {
        Some(m) if !m.is_empty() => m.to_string(),
        _ => {
            let ua = user_agent.split('/').next().unwrap_or_default();
            let ua: String = ua.chars().take(128).collect();
            if ua.is_empty() { "unknown".into() } else { ua }
        }
    }
}

/// A string field of `metadata`.
pub fn meta_str<'a>(obj: &'a Value, field: &str) -> &'a str {
    obj.get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// `metadata.finalizers` as strings.
pub fn finalizers(obj: &Value) -> Vec<String> {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|f| f.as_str().map(String::from)).collect())
        .unwrap_or_default()
}

/// Set `metadata.<field>`, creating `metadata` if needed.
pub fn set_meta(obj: &mut Value, field: &str, value: Value) {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = Value::Object(Default::default());
    }
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        if value.is_null() {
            m.remove(field);
        } else {
            m.insert(field.to_string(), value);
        }
    }
}

/// The uids named in `metadata.ownerReferences`.
pub fn owner_uids(obj: &Value) -> Vec<String> {
    obj.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|r| r.get("uid").and_then(Value::as_str).map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subdomain_parts_may_exceed_63_characters_but_namespaces_may_not() {
        let long = format!("{}-db", "n".repeat(197));
        assert!(name_problems(&long, false).is_empty());
        assert!(!name_problems(&long, true).is_empty());
        assert!(!name_problems(&"n".repeat(254), false).is_empty());
    }

    #[test]
    fn names_follow_dns_rules() {
        assert!(name_problems("my-db.v1", false).is_empty());
        assert!(!name_problems("My_DB", false).is_empty());
        assert!(!name_problems("a.b", true).is_empty());
        let g = generate_name("web-");
        assert!(g.starts_with("web-") && g.len() == 9);
    }

    #[test]
    fn field_manager_comes_from_the_user_agent() {
        assert_eq!(field_manager(None, "kubectl/v1.32.4 (linux/amd64)"), "kubectl");
        assert_eq!(field_manager(Some("mine"), "kubectl/v1"), "mine");
    }
}
