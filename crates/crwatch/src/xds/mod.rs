//! What an xDS server and client of crwatch objects share: the Envoy protos (from
//! `envoy-types`), Istio's `istio.mcp.v1alpha1.Resource`, type URLs, JSON ⇄ `Struct`, and
//! object ⇄ MCP resource.
//!
//! Resources follow Istio's MCP-over-xDS conventions:
//!
//! - the xDS type URL of a resource type is `<group>/<version>/<Kind>`, with `core` for the
//!   core group (`core/v1/ConfigMap`, `stable.example.com/v1/Database`): see [`type_url`];
//! - each resource is an [`mcp::Resource`] packed in an `Any` of type
//!   [`MCP_RESOURCE_TYPE_URL`]; its metadata carries the name (`namespace/name`, or `name` for
//!   cluster-scoped objects), the version (the object's `resourceVersion`), labels,
//!   annotations and the creation time; its body is the whole object as a
//!   `google.protobuf.Struct` (an `Any` of type [`STRUCT_TYPE_URL`]).
//!
//! ```
//! use crwatch::xds::{object_to_resource, resource_to_object, pack_resource, unpack_resource};
//! let cm = serde_json::json!({
//!     "apiVersion": "v1", "kind": "ConfigMap",
//!     "metadata": {"name": "app", "namespace": "prod", "resourceVersion": "42",
//!                  "labels": {"team": "a"}, "creationTimestamp": "2026-01-02T03:04:05Z"},
//!     "data": {"replicas": "3"}
//! });
//! let resource = object_to_resource(&cm).unwrap();
//! let meta = resource.metadata.as_ref().unwrap();
//! assert_eq!(meta.name, "prod/app");
//! assert_eq!(meta.version, "42");
//! let any = pack_resource(&resource);
//! assert_eq!(any.type_url, crwatch::xds::MCP_RESOURCE_TYPE_URL);
//! let back = resource_to_object(&unpack_resource(&any).unwrap()).unwrap();
//! assert_eq!(back, cm);
//! ```

use std::collections::HashMap;

use prost::Message;
use serde_json::{Map, Number, Value};

pub use envoy_types;
pub use envoy_types::pb::envoy::service::discovery::v3 as discovery;
pub use envoy_types::pb::google::protobuf;
pub use envoy_types::pb::google::rpc::Status;

/// The `Any` type URL of an [`mcp::Resource`].
pub const MCP_RESOURCE_TYPE_URL: &str = "type.googleapis.com/istio.mcp.v1alpha1.Resource";
/// The `Any` type URL of a `google.protobuf.Struct` (the body of an MCP resource).
pub const STRUCT_TYPE_URL: &str = "type.googleapis.com/google.protobuf.Struct";
/// The deepest JSON nesting carried in a `Struct`. Each JSON level is three protobuf messages
/// (`Struct`, its map entry and `Value`), and protobuf decoders (prost, Python's, Go's) stop at 100 nested
/// messages by default: deeper objects are refused with [`XdsError::TooDeep`].
pub const MAX_DEPTH: usize = 32;

/// Istio's Mesh Configuration Protocol messages (`istio.mcp.v1alpha1`), with the field
/// numbers of istio/api's `mcp/v1alpha1/resource.proto` and `metadata.proto`.
pub mod mcp {
    use std::collections::HashMap;

    use super::protobuf::{Any, Timestamp};

    /// `istio.mcp.v1alpha1.Metadata`: what every MCP resource carries.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Metadata {
        /// Fully qualified name: `namespace/name`, or `name` for cluster-scoped objects.
        #[prost(string, tag = "1")]
        pub name: String,
        /// When the object was created.
        #[prost(message, optional, tag = "2")]
        pub create_time: Option<Timestamp>,
        /// The object's version (its `resourceVersion`); opaque to subscribers.
        #[prost(string, tag = "3")]
        pub version: String,
        /// The object's labels.
        #[prost(map = "string, string", tag = "4")]
        pub labels: HashMap<String, String>,
        /// The object's annotations.
        #[prost(map = "string, string", tag = "5")]
        pub annotations: HashMap<String, String>,
    }

    /// `istio.mcp.v1alpha1.Resource`: metadata and a body.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Resource {
        /// Common metadata.
        #[prost(message, optional, tag = "1")]
        pub metadata: Option<Metadata>,
        /// The payload: for crwatch, the whole object as a `google.protobuf.Struct`.
        #[prost(message, optional, tag = "2")]
        pub body: Option<Any>,
    }

    impl prost::Name for Resource {
        const NAME: &'static str = "Resource";
        const PACKAGE: &'static str = "istio.mcp.v1alpha1";
    }

    impl prost::Name for Metadata {
        const NAME: &'static str = "Metadata";
        const PACKAGE: &'static str = "istio.mcp.v1alpha1";
    }
}

/// What can go wrong converting between objects and xDS resources.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum XdsError {
    /// The object is not a JSON object (or has no `metadata.name`).
    #[error("not a Kubernetes-shaped object: {0}")]
    NotAnObject(String),
    /// The object nests deeper than [`MAX_DEPTH`].
    #[error("the object nests deeper than {MAX_DEPTH} levels, more than protobuf decoders accept")]
    TooDeep,
    /// A number that JSON cannot carry (NaN or infinite) came in a `Struct`.
    #[error("a number JSON cannot carry: {0}")]
    BadNumber(f64),
    /// An `Any` of another type than expected.
    #[error("expected an Any of type {expected}, got {got:?}")]
    WrongType {
        /// The type URL wanted.
        expected: &'static str,
        /// The type URL found.
        got: String,
    },
    /// Bytes that do not decode as the message they claim to be.
    #[error("undecodable {what}: {source}")]
    Decode {
        /// Which message.
        what: &'static str,
        /// Why.
        #[source]
        source: prost::DecodeError,
    },
    /// A type URL that is not `<group>/<version>/<Kind>`.
    #[error("type URL {0:?} is not <group>/<version>/<Kind> (core kinds: core/v1/<Kind>)")]
    BadTypeUrl(String),
}

/// The group, version and kind a type URL names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TypeUrl {
    /// API group, empty for the core group.
    pub group: String,
    /// API version.
    pub version: String,
    /// Kind.
    pub kind: String,
}

impl TypeUrl {
    /// Parse `<group>/<version>/<Kind>` (`core` is the core group).
    ///
    /// ```
    /// let t = crwatch::xds::TypeUrl::parse("core/v1/ConfigMap").unwrap();
    /// assert_eq!((t.group.as_str(), t.api_version().as_str()), ("", "v1"));
    /// let d = crwatch::xds::TypeUrl::parse("stable.example.com/v1/Database").unwrap();
    /// assert_eq!(d.api_version(), "stable.example.com/v1");
    /// assert!(crwatch::xds::TypeUrl::parse("v1/ConfigMap").is_err());
    /// ```
    pub fn parse(url: &str) -> Result<Self, XdsError> {
        let mut parts = url.split('/');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(g), Some(v), Some(k), None) if !g.is_empty() && !v.is_empty() && !k.is_empty() => {
                Ok(TypeUrl {
                    group: if g == "core" { String::new() } else { g.to_string() },
                    version: v.to_string(),
                    kind: k.to_string(),
                })
            }
            _ => Err(XdsError::BadTypeUrl(url.to_string())),
        }
    }

    /// The type of objects with this `apiVersion` and `kind`.
    pub fn of(api_version: &str, kind: &str) -> Self {
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        TypeUrl {
            group: group.to_string(),
            version: version.to_string(),
            kind: kind.to_string(),
        }
    }

    /// `group/version`, or `version` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

impl std::fmt::Display for TypeUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let group = if self.group.is_empty() {
            "core"
        } else {
            &self.group
        };
        write!(f, "{group}/{}/{}", self.version, self.kind)
    }
}

/// The xDS type URL of objects with this `apiVersion` and `kind`.
///
/// ```
/// assert_eq!(crwatch::xds::type_url("v1", "ConfigMap"), "core/v1/ConfigMap");
/// assert_eq!(crwatch::xds::type_url("apps/v1", "Deployment"), "apps/v1/Deployment");
/// ```
pub fn type_url(api_version: &str, kind: &str) -> String {
    TypeUrl::of(api_version, kind).to_string()
}

/// A JSON object as a `google.protobuf.Struct`. Numbers become doubles (integers beyond
/// 2^53 lose precision, as in every protobuf JSON mapping).
pub fn json_to_struct(object: &Map<String, Value>) -> Result<protobuf::Struct, XdsError> {
    struct_at(object, 0)
}

fn struct_at(object: &Map<String, Value>, depth: usize) -> Result<protobuf::Struct, XdsError> {
    if depth >= MAX_DEPTH {
        return Err(XdsError::TooDeep);
    }
    let mut fields = HashMap::with_capacity(object.len());
    for (k, v) in object {
        fields.insert(k.clone(), value_at(v, depth + 1)?);
    }
    Ok(protobuf::Struct { fields })
}

/// A JSON value as a `google.protobuf.Value`.
pub fn json_to_value(value: &Value) -> Result<protobuf::Value, XdsError> {
    value_at(value, 0)
}

fn value_at(value: &Value, depth: usize) -> Result<protobuf::Value, XdsError> {
    use protobuf::value::Kind;
    if depth >= MAX_DEPTH {
        return Err(XdsError::TooDeep);
    }
    let kind = match value {
        Value::Null => Kind::NullValue(protobuf::NullValue::NullValue as i32),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(a) => Kind::ListValue(protobuf::ListValue {
            values: a
                .iter()
                .map(|v| value_at(v, depth + 1))
                .collect::<Result<_, _>>()?,
        }),
        Value::Object(o) => Kind::StructValue(struct_at(o, depth)?),
    };
    Ok(protobuf::Value { kind: Some(kind) })
}

/// A `google.protobuf.Struct` as a JSON object, keys sorted. Whole numbers within ±2^53 come
/// back as JSON integers (so `replicas: 3` stays `3`, not `3.0`).
pub fn struct_to_json(s: &protobuf::Struct) -> Result<Map<String, Value>, XdsError> {
    struct_to_json_at(s, 0)
}

fn struct_to_json_at(s: &protobuf::Struct, depth: usize) -> Result<Map<String, Value>, XdsError> {
    if depth >= MAX_DEPTH {
        return Err(XdsError::TooDeep);
    }
    let mut keys: Vec<_> = s.fields.keys().collect();
    keys.sort();
    let mut out = Map::with_capacity(keys.len());
    for k in keys {
        out.insert(k.clone(), value_to_json_at(&s.fields[k], depth + 1)?);
    }
    Ok(out)
}

/// A `google.protobuf.Value` as JSON (see [`struct_to_json`] for numbers).
pub fn value_to_json(v: &protobuf::Value) -> Result<Value, XdsError> {
    value_to_json_at(v, 0)
}

/// The largest integer a double holds exactly.
const EXACT: f64 = 9_007_199_254_740_992.0;

fn value_to_json_at(v: &protobuf::Value, depth: usize) -> Result<Value, XdsError> {
    use protobuf::value::Kind;
    if depth >= MAX_DEPTH {
        return Err(XdsError::TooDeep);
    }
    Ok(match &v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::StringValue(s)) => Value::String(s.clone()),
        Some(Kind::NumberValue(n)) => {
            if !n.is_finite() {
                return Err(XdsError::BadNumber(*n));
            }
            if n.fract() == 0.0 && n.abs() <= EXACT {
                // Exact: |n| ≤ 2^53 fits an i64 without rounding.
                Value::Number(Number::from(*n as i64))
            } else {
                Number::from_f64(*n)
                    .map(Value::Number)
                    .ok_or(XdsError::BadNumber(*n))?
            }
        }
        Some(Kind::ListValue(l)) => Value::Array(
            l.values
                .iter()
                .map(|v| value_to_json_at(v, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        Some(Kind::StructValue(s)) => Value::Object(struct_to_json_at(s, depth)?),
    })
}

/// The MCP name of an object: `namespace/name`, or `name` without a namespace.
pub fn resource_name(object: &Value) -> Option<String> {
    let name = object.pointer("/metadata/name").and_then(Value::as_str)?;
    Some(
        match object
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
        {
            Some(ns) => format!("{ns}/{name}"),
            None => name.to_string(),
        },
    )
}

fn string_map(object: &Value, pointer: &str) -> HashMap<String, String> {
    object
        .pointer(pointer)
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

fn timestamp(rfc3339: &str) -> Option<protobuf::Timestamp> {
    let t = chrono::DateTime::parse_from_rfc3339(rfc3339).ok()?;
    Some(protobuf::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    })
}

/// An object (apiVersion, kind, metadata, ...) as an MCP resource: name, version
/// (`resourceVersion`), labels, annotations and creation time in the metadata, the whole
/// object as a `Struct` in the body.
pub fn object_to_resource(object: &Value) -> Result<mcp::Resource, XdsError> {
    let map = object
        .as_object()
        .ok_or_else(|| XdsError::NotAnObject("not a JSON object".into()))?;
    let name = resource_name(object).ok_or_else(|| XdsError::NotAnObject("no metadata.name".into()))?;
    let str_at = |p: &str| object.pointer(p).and_then(Value::as_str).unwrap_or_default();
    let body = json_to_struct(map)?;
    Ok(mcp::Resource {
        metadata: Some(mcp::Metadata {
            name,
            create_time: timestamp(str_at("/metadata/creationTimestamp")),
            version: str_at("/metadata/resourceVersion").to_string(),
            labels: string_map(object, "/metadata/labels"),
            annotations: string_map(object, "/metadata/annotations"),
        }),
        body: Some(protobuf::Any {
            type_url: STRUCT_TYPE_URL.to_string(),
            value: body.encode_to_vec(),
        }),
    })
}

/// The object an MCP resource carries (its `Struct` body as JSON). A resource without a body
/// gives an object built from its metadata alone.
pub fn resource_to_object(resource: &mcp::Resource) -> Result<Value, XdsError> {
    match &resource.body {
        Some(any) => {
            if any.type_url != STRUCT_TYPE_URL {
                return Err(XdsError::WrongType {
                    expected: STRUCT_TYPE_URL,
                    got: any.type_url.clone(),
                });
            }
            let s = protobuf::Struct::decode(any.value.as_slice()).map_err(|source| XdsError::Decode {
                what: "google.protobuf.Struct",
                source,
            })?;
            Ok(Value::Object(struct_to_json(&s)?))
        }
        None => {
            let meta = resource.metadata.clone().unwrap_or_default();
            let (ns, name) = match meta.name.split_once('/') {
                Some((ns, name)) => (Some(ns.to_string()), name.to_string()),
                None => (None, meta.name.clone()),
            };
            let mut m = serde_json::json!({"name": name, "resourceVersion": meta.version});
            if let Some(ns) = ns {
                m["namespace"] = Value::String(ns);
            }
            Ok(serde_json::json!({ "metadata": m }))
        }
    }
}

/// An MCP resource packed in an `Any` ([`MCP_RESOURCE_TYPE_URL`]).
pub fn pack_resource(resource: &mcp::Resource) -> protobuf::Any {
    protobuf::Any {
        type_url: MCP_RESOURCE_TYPE_URL.to_string(),
        value: resource.encode_to_vec(),
    }
}

/// The MCP resource in an `Any` of type [`MCP_RESOURCE_TYPE_URL`].
pub fn unpack_resource(any: &protobuf::Any) -> Result<mcp::Resource, XdsError> {
    if any.type_url != MCP_RESOURCE_TYPE_URL {
        return Err(XdsError::WrongType {
            expected: MCP_RESOURCE_TYPE_URL,
            got: any.type_url.clone(),
        });
    }
    mcp::Resource::decode(any.value.as_slice()).map_err(|source| XdsError::Decode {
        what: "istio.mcp.v1alpha1.Resource",
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn type_urls_round_trip() {
        for (av, kind, url) in [
            ("v1", "ConfigMap", "core/v1/ConfigMap"),
            (
                "stable.example.com/v1",
                "Database",
                "stable.example.com/v1/Database",
            ),
        ] {
            assert_eq!(type_url(av, kind), url);
            let t = TypeUrl::parse(url).unwrap();
            assert_eq!(t.api_version(), av);
            assert_eq!(t.kind, kind);
            assert_eq!(t.to_string(), url);
        }
        for bad in ["", "v1/ConfigMap", "a/b/c/d", "a//C"] {
            assert!(TypeUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn json_struct_round_trip_keeps_integers_and_nesting() {
        let v = json!({"a": 1, "b": -2.5, "c": [true, null, "x", {"d": []}], "e": {}, "big": 9007199254740992u64});
        let s = json_to_struct(v.as_object().unwrap()).unwrap();
        let back = Value::Object(struct_to_json(&s).unwrap());
        assert_eq!(back, v);
        assert!(back["a"].is_i64());
    }

    #[test]
    fn too_deep_objects_are_refused_and_the_limit_decodes() {
        let mut deep = json!("leaf");
        for _ in 0..MAX_DEPTH + 1 {
            deep = json!({ "x": deep });
        }
        assert!(matches!(json_to_value(&deep), Err(XdsError::TooDeep)));
        // The deepest accepted object survives a real protobuf decode (prost's limit is 100).
        let mut ok = json!("leaf");
        for _ in 0..MAX_DEPTH - 1 {
            ok = json!({ "x": ok });
        }
        let s = json_to_struct(ok.as_object().unwrap()).unwrap();
        let bytes = s.encode_to_vec();
        let decoded = protobuf::Struct::decode(bytes.as_slice()).unwrap();
        assert_eq!(Value::Object(struct_to_json(&decoded).unwrap()), ok);
    }

    #[test]
    fn non_finite_numbers_are_errors() {
        let v = protobuf::Value {
            kind: Some(protobuf::value::Kind::NumberValue(f64::NAN)),
        };
        assert!(matches!(value_to_json(&v), Err(XdsError::BadNumber(_))));
    }

    #[test]
    fn objects_become_mcp_resources_and_back() {
        let o = json!({
            "apiVersion": "stable.example.com/v1", "kind": "Database",
            "metadata": {"name": "db", "namespace": "ns", "resourceVersion": "7",
                         "labels": {"a": "b"}, "annotations": {"c": "d"},
                         "creationTimestamp": "2026-12-05T06:00:00.5Z"},
            "spec": {"size": 3}
        });
        let r = object_to_resource(&o).unwrap();
        let m = r.metadata.clone().unwrap();
        assert_eq!(m.name, "ns/db");
        assert_eq!(m.version, "7");
        assert_eq!(m.labels["a"], "b");
        assert_eq!(m.annotations["c"], "d");
        let t = m.create_time.unwrap();
        assert_eq!(t.nanos, 500_000_000);
        assert_eq!(r.body.as_ref().unwrap().type_url, STRUCT_TYPE_URL);
        let any = pack_resource(&r);
        let decoded = unpack_resource(&any).unwrap();
        assert_eq!(decoded, r);
        assert_eq!(resource_to_object(&decoded).unwrap(), o);
        // Cluster-scoped: the bare name.
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "prod"}});
        assert_eq!(object_to_resource(&ns).unwrap().metadata.unwrap().name, "prod");
        assert!(object_to_resource(&json!({"metadata": {}})).is_err());
        assert!(
            unpack_resource(&protobuf::Any {
                type_url: STRUCT_TYPE_URL.into(),
                value: vec![]
            })
            .is_err()
        );
    }

    #[test]
    fn field_numbers_match_istio_api() {
        // Hand-encoded per istio/api mcp/v1alpha1: Metadata{name=1, create_time=2, version=3,
        // labels=4, annotations=5}; Resource{metadata=1, body=2}.
        let r = mcp::Resource {
            metadata: Some(mcp::Metadata {
                name: "n".into(),
                create_time: Some(protobuf::Timestamp { seconds: 1, nanos: 0 }),
                version: "v".into(),
                labels: [("k".to_string(), "l".to_string())].into(),
                annotations: [("a".to_string(), "b".to_string())].into(),
            }),
            body: None,
        };
        let bytes = r.encode_to_vec();
        let meta = [
            0x0a, 1, b'n', // name
            0x12, 2, 0x08, 1, // create_time{seconds: 1}
            0x1a, 1, b'v', // version
            0x22, 6, 0x0a, 1, b'k', 0x12, 1, b'l', // labels entry
            0x2a, 6, 0x0a, 1, b'a', 0x12, 1, b'b', // annotations entry
        ];
        let mut want = vec![0x0a, meta.len() as u8];
        want.extend_from_slice(&meta);
        assert_eq!(bytes, want);
    }
}
