//! Turning file contents into objects: YAML/JSON documents (one resource each) or raw files
//! (`file.crwatch.io/v1` `File`), with resourceVersions derived from the content.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use kube::api::DynamicObject;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::source::object::{ObjectBuilder, stable_uid};

/// The annotation carrying a document's file, relative to the source root (`/`-separated).
pub const PATH_ANNOTATION: &str = "file.crwatch.io/path";
/// The `apiVersion` of raw [`File`](super::Mode::Raw) objects.
pub const RAW_API_VERSION: &str = "file.crwatch.io/v1";
/// The `kind` of raw file objects.
pub const RAW_KIND: &str = "File";

/// What identifies a resource across files: group, kind, namespace and name (like the
/// Kubernetes API, the version is not part of the identity: `apps/v1beta1` and `apps/v1` of
/// one Deployment are one resource).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct DocKey {
    pub group: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for DocKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.group.is_empty() {
            write!(f, "{}", self.kind)?;
        } else {
            write!(f, "{}.{}", self.kind, self.group)?;
        }
        if self.namespace.is_empty() {
            write!(f, " {}", self.name)
        } else {
            write!(f, " {}/{}", self.namespace, self.name)
        }
    }
}

/// The documents of one file, by identity.
pub(crate) type Docs = BTreeMap<DocKey, Arc<DynamicObject>>;

/// What parsing needs besides the bytes.
pub(crate) struct ParseCtx<'a> {
    /// `file:<canonical root>`, the namespace of stable uids.
    pub uid_source: &'a str,
    /// Only documents of these kinds (`Kind` or `Kind.group`); empty: all.
    pub kinds: &'a [String],
    /// Namespace for documents without one (`None`: leave them cluster-scoped).
    pub default_namespace: Option<&'a str>,
}

fn yaml_options() -> serde_saphyr::Options {
    // Budgets against YAML bombs (alias expansion, deep nesting, huge node counts): a file that
    // exceeds them is reported as unparseable instead of eating memory or CPU.
    serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_documents: 10_000,
            max_depth: 100,
            max_nodes: 2_000_000,
            max_aliases: 10_000,
            max_anchors: 10_000,
            max_recorded_anchor_events: 200_000,
            max_recorded_anchor_bytes: 16 << 20,
        },
        alias_limits: serde_saphyr::alias_limits! {
            max_total_replayed_events: 200_000,
        },
        // Without a schema, YAML 1.1's `y`/`n`/`on`/`off` booleans would turn names,
        // namespaces and values into `true`/`false`: only `true`/`false` are booleans here.
        strict_booleans: true,
        // `defaultMode: 0644` means octal, as kubectl reads it.
        legacy_octal_numbers: true,
    }
}

/// Parse a YAML or JSON file into its documents. `Err` says what is wrong and where.
///
/// YAML is read without a schema: only `true`/`false` are booleans (so `name: n` stays a
/// string), and numbers with a leading `0` are octal (`defaultMode: 0644`), as kubectl does.
pub(crate) fn parse_documents(rel: &str, bytes: &[u8], ctx: &ParseCtx<'_>) -> Result<Docs, String> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let text = std::str::from_utf8(bytes).map_err(|e| {
        format!(
            "not UTF-8 text (invalid byte at offset {}); documents must be UTF-8 YAML or JSON",
            e.valid_up_to()
        )
    })?;
    let values: Vec<Value> = if rel.ends_with(".json") {
        let v: Value = serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
        match v {
            Value::Array(items) => items,
            v => vec![v],
        }
    } else {
        serde_saphyr::from_multiple_with_options::<Value>(text, yaml_options())
            .map_err(|e| format!("invalid YAML: {}", first_line(&e.to_string())))?
    };
    let mut docs = Docs::new();
    let mut index = 0usize;
    for v in values {
        for v in expand_list(v) {
            index += 1;
            let Some((key, obj)) = document(rel, index, v, ctx)? else {
                continue;
            };
            if docs.contains_key(&key) {
                return Err(format!(
                    "document {index} defines {key} a second time in the same file; remove one copy"
                ));
            }
            docs.insert(key, Arc::new(obj));
        }
    }
    Ok(docs)
}

fn first_line(s: &str) -> String {
    // Parser messages can quote the input; keep them short for logs and the CLI.
    let line = s.lines().next().unwrap_or_default();
    if line.len() > 300 {
        let mut end = 300;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &line[..end])
    } else {
        line.to_string()
    }
}

/// `kind: List` / `*List` with `items` becomes its items (as kubectl does).
fn expand_list(v: Value) -> Vec<Value> {
    let is_list = v
        .get("kind")
        .and_then(Value::as_str)
        .is_some_and(|k| k.ends_with("List"))
        && v.get("items").is_some_and(Value::is_array);
    if !is_list {
        return vec![v];
    }
    match v {
        Value::Object(mut m) => match m.remove("items") {
            Some(Value::Array(items)) => items,
            _ => vec![],
        },
        _ => vec![],
    }
}

fn document(
    rel: &str,
    index: usize,
    v: Value,
    ctx: &ParseCtx<'_>,
) -> Result<Option<(DocKey, DynamicObject)>, String> {
    let Value::Object(map) = v else {
        return Err(format!(
            "document {index} is not a mapping; each document must be an object with apiVersion, kind and metadata.name"
        ));
    };
    let text = |field: &str| {
        map.get(field)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let api_version = text("apiVersion");
    let kind = text("kind");
    if api_version.is_empty() || kind.is_empty() {
        return Err(format!("document {index} has no apiVersion or kind"));
    }
    let group = api_version
        .rsplit_once('/')
        .map(|(g, _)| g)
        .unwrap_or_default()
        .to_string();
    if !ctx.kinds.is_empty()
        && !ctx
            .kinds
            .iter()
            .any(|k| *k == kind || (!group.is_empty() && *k == format!("{kind}.{group}")))
    {
        return Ok(None);
    }
    let mut obj: DynamicObject = serde_json::from_value(Value::Object(map))
        .map_err(|e| format!("document {index} ({kind}) has invalid metadata: {e}"))?;
    let name = obj.metadata.name.clone().unwrap_or_default();
    if name.is_empty() {
        return Err(format!(
            "document {index} ({kind}) has no metadata.name (generateName is not supported for files)"
        ));
    }
    if obj.metadata.namespace.as_deref().is_none_or(str::is_empty) {
        obj.metadata.namespace = ctx.default_namespace.map(str::to_string);
    }
    let key = DocKey {
        group,
        kind,
        namespace: obj.metadata.namespace.clone().unwrap_or_default(),
        name,
    };
    if obj.metadata.uid.as_deref().is_none_or(str::is_empty) {
        let id = format!("{}/{}/{}/{}", key.group, key.kind, key.namespace, key.name);
        obj.metadata.uid = Some(stable_uid(ctx.uid_source, &id));
    }
    obj.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(PATH_ANNOTATION.to_string(), rel.to_string());
    set_version(&mut obj)?;
    Ok(Some((key, obj)))
}

/// A raw file as an object: `data: {path, size, sha256, content | contentBase64}`; content is
/// left out (`contentOmitted: true`) when the file is larger than the content limit.
pub(crate) fn raw_object(
    rel: &str,
    uid_source: &str,
    size: u64,
    sha256: &str,
    content: Option<&[u8]>,
) -> Result<(DocKey, DynamicObject), String> {
    let mut data = Map::new();
    data.insert("path".into(), Value::from(rel));
    data.insert("size".into(), Value::from(size));
    data.insert("sha256".into(), Value::from(sha256));
    match content {
        Some(bytes) => match std::str::from_utf8(bytes) {
            Ok(s) => {
                data.insert("content".into(), Value::from(s));
            }
            Err(_) => {
                data.insert("contentBase64".into(), Value::from(base64(bytes)));
            }
        },
        None => {
            data.insert("contentOmitted".into(), Value::Bool(true));
        }
    }
    let mut obj = ObjectBuilder::new(RAW_API_VERSION, RAW_KIND, rel)
        .uid(stable_uid(uid_source, rel))
        .annotation(PATH_ANNOTATION, rel)
        .field("data", Value::Object(data))
        .build();
    set_version(&mut obj)?;
    let key = DocKey {
        group: "file.crwatch.io".into(),
        kind: RAW_KIND.into(),
        namespace: String::new(),
        name: rel.to_string(),
    };
    Ok((key, obj))
}

/// resourceVersion = the first 16 hex digits of the SHA-256 of the object's canonical JSON
/// (sorted keys, without the resourceVersion itself): unchanged content, unchanged version.
fn set_version(obj: &mut DynamicObject) -> Result<(), String> {
    obj.metadata.resource_version = None;
    let v = serde_json::to_value(&*obj).map_err(|e| format!("cannot encode the object: {e}"))?;
    let mut hasher = Sha256::new();
    canonical(&v, &mut hasher);
    let digest = hex::encode(hasher.finalize());
    obj.metadata.resource_version = Some(digest[..16].to_string());
    Ok(())
}

fn canonical(v: &Value, h: &mut Sha256) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            h.update(b"{");
            for k in keys {
                canonical(&Value::String(k.clone()), h);
                h.update(b":");
                if let Some(v) = m.get(k) {
                    canonical(v, h);
                }
                h.update(b",");
            }
            h.update(b"}");
        }
        Value::Array(a) => {
            h.update(b"[");
            for v in a {
                canonical(v, h);
                h.update(b",");
            }
            h.update(b"]");
        }
        other => h.update(other.to_string().as_bytes()),
    }
}

/// Standard base64 with padding (RFC 4648).
pub(crate) fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if chunk.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> ParseCtx<'static> {
        ParseCtx {
            uid_source: "file:/r",
            kinds: &[],
            default_namespace: None,
        }
    }

    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(&[0xff, 0xfe]), "//4=");
    }

    #[test]
    fn multi_document_yaml_with_lists_and_stable_versions() {
        let y = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a, namespace: n}\ndata: {k: v}\n---\n# empty\n---\napiVersion: v1\nkind: List\nitems:\n- apiVersion: apps/v1\n  kind: Deployment\n  metadata: {name: d}\n";
        let docs = parse_documents("x/a.yaml", y.as_bytes(), &ctx()).unwrap();
        assert_eq!(docs.len(), 2);
        assert!(docs.keys().any(|k| k.namespace == "n"));
        let again = parse_documents("x/a.yaml", y.as_bytes(), &ctx()).unwrap();
        for ((k1, a), (k2, b)) in docs.iter().zip(again.iter()) {
            assert_eq!(k1, k2);
            assert_eq!(a.metadata.resource_version, b.metadata.resource_version);
            assert_eq!(a.metadata.uid, b.metadata.uid);
            assert_eq!(
                a.metadata.annotations.as_ref().unwrap()[PATH_ANNOTATION],
                "x/a.yaml"
            );
        }
        let key = docs.keys().find(|k| k.kind == "Deployment").unwrap();
        assert_eq!(key.group, "apps");
        // Reordering keys does not change the version; changing a value does.
        let y2 = "kind: ConfigMap\napiVersion: v1\ndata: {k: v}\nmetadata: {namespace: n, name: a}\n";
        let y3 = "kind: ConfigMap\napiVersion: v1\ndata: {k: w}\nmetadata: {namespace: n, name: a}\n";
        let rv = |y: &str| {
            let d = parse_documents("x/a.yaml", y.as_bytes(), &ctx()).unwrap();
            d.values().next().unwrap().metadata.resource_version.clone()
        };
        let cm = docs.iter().find(|(k, _)| k.kind == "ConfigMap").unwrap().1;
        assert_eq!(rv(y2), cm.metadata.resource_version);
        assert_ne!(rv(y3), cm.metadata.resource_version);
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        let bad: Vec<&[u8]> = vec![
            b"\xff\xfe\x00garbage",
            b"a: [1, 2",
            b"- just\n- a list\n",
            b"apiVersion: v1\nkind: ConfigMap\n",
            b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: 3}\n",
            b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n",
        ];
        let want = [
            "not UTF-8",
            "line 1 column 4",
            "not a mapping",
            "no metadata.name",
            "invalid metadata",
            "second time",
        ];
        for (b, want) in bad.into_iter().zip(want) {
            let e = parse_documents("a.yaml", b, &ctx()).unwrap_err();
            assert!(e.contains(want), "{e}");
        }
        // A billion-laughs bomb is stopped by the budget.
        let mut bomb =
            String::from("a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n");
        let mut prev = 'a';
        for c in 'b'..='k' {
            bomb.push_str(&format!(
                "{c}: &{c} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"
            ));
            prev = c;
        }
        let e = parse_documents("bomb.yaml", bomb.as_bytes(), &ctx()).unwrap_err();
        assert!(e.contains("budget"), "{e}");
        // Deep nesting too.
        let deep = "[".repeat(100_000);
        assert!(parse_documents("deep.yaml", deep.as_bytes(), &ctx()).is_err());
        assert!(parse_documents("deep.json", deep.as_bytes(), &ctx()).is_err());
        // A huge single line is just a (long) error.
        let long = format!("key: \"{}", "x".repeat(2_000_000));
        assert!(parse_documents("long.yaml", long.as_bytes(), &ctx()).is_err());
    }

    #[test]
    fn json_object_list_and_kind_filter() {
        let j = r#"{"apiVersion":"v1","kind":"ConfigMapList","items":[{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"a"}},{"apiVersion":"v1","kind":"Secret","metadata":{"name":"s"}}]}"#;
        let kinds = vec!["ConfigMap".to_string()];
        let c = ParseCtx {
            uid_source: "file:/r",
            kinds: &kinds,
            default_namespace: Some("default"),
        };
        let docs = parse_documents("a.json", j.as_bytes(), &c).unwrap();
        assert_eq!(docs.len(), 1);
        let (k, o) = docs.iter().next().unwrap();
        assert_eq!(k.namespace, "default");
        assert_eq!(o.metadata.namespace.as_deref(), Some("default"));
    }

    #[test]
    fn raw_objects_carry_text_or_base64() {
        let (_, o) = raw_object("a/b.txt", "file:/r", 2, "ab", Some(b"hi")).unwrap();
        assert_eq!(o.data["data"]["content"], "hi");
        let (_, o) = raw_object("bin", "file:/r", 2, "ab", Some(&[0xff, 0])).unwrap();
        assert_eq!(o.data["data"]["contentBase64"], "/wA=");
        let (_, o) = raw_object("big", "file:/r", 2, "ab", None).unwrap();
        assert_eq!(o.data["data"]["contentOmitted"], true);
        assert_eq!(o.metadata.name.as_deref(), Some("big"));
    }
}
