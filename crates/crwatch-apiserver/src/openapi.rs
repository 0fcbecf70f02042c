//! OpenAPI documents: `/openapi/v2` (Swagger 2.0) and `/openapi/v3` (index plus one OpenAPI 3.0
//! document per group-version), shaped like the ones kube-apiserver publishes.
//!
//! What clients rely on, and this module therefore guarantees:
//! - every kind gets a definition named like the real server names it (`io.k8s.api.apps.v1.Deployment`,
//!   custom resources `com.example.stable.v1.Database` from the reversed group), carrying
//!   `x-kubernetes-group-version-kind`; custom resources use their CRD schema with `apiVersion`,
//!   `kind` and `metadata` (a reference to `ObjectMeta`) added, as apiextensions-apiserver does;
//!   built-in kinds use their published schemas ([`crate::builtin`]) and every definition those
//!   refer to;
//! - every resource gets its paths (list, create, deletecollection, get, replace, delete, patch and
//!   the `status`/`scale` subresources) whose operations carry `x-kubernetes-group-version-kind` and
//!   `x-kubernetes-action`, with the query parameters the server understands. Every PATCH operation
//!   lists `fieldValidation` inline, which is how kubectl decides to use server-side field
//!   validation; `kubectl explain` finds the kind through the same operation extensions;
//! - PATCH operations never advertise `application/strategic-merge-patch+json`: the published
//!   schemas here lack the `x-kubernetes-patch-*` extensions, so kubectl must compute strategic
//!   merge patches from its compiled-in types rather than from these documents (the server
//!   applies them with its own merge keys; custom resources never support them).
//!
//! Documents are built deterministically (sorted keys), so [`digest`] of a group-version document is
//! stable and serves as the `hash` in the v3 index.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Map, Value, json};

use crate::features::FeatureGates;
use crate::registry::ResourceDef;

/// Definition-name prefix of the shared meta/v1 types.
const META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1";
/// Definition name of `autoscaling/v1` `Scale`, used by scale subresources.
const SCALE: &str = "io.k8s.api.autoscaling.v1.Scale";

const API_VERSION_DESC: &str = "APIVersion defines the versioned schema of this representation of an \
object. Servers should convert recognized schemas to the latest internal value, and may reject unrecognized \
values. More info: \
https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#resources";
const KIND_DESC: &str = "Kind is a string value representing the REST resource this object represents. \
Servers may infer this from the endpoint the client submits requests to. Cannot be updated. In CamelCase. \
More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds";
const EMBEDDED_API_VERSION_DESC: &str = "apiVersion defines the versioned schema of this representation of \
an object. More info: \
https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#resources";
const EMBEDDED_KIND_DESC: &str = "kind is a string value representing the type of this object. In \
CamelCase. More info: \
https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds";
const OBJECT_META_DESC: &str = "Standard object's metadata. More info: \
https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata";
const LIST_META_DESC: &str = "Standard list metadata. More info: \
https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds";

/// Which of the two document formats is being built; they differ in reference prefixes and in how
/// parameters, request bodies and responses are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavor {
    V2,
    V3,
}

impl Flavor {
    /// `{"$ref": ...}` to a named definition.
    fn reference(self, name: &str) -> Value {
        let prefix = match self {
            Flavor::V2 => "#/definitions/",
            Flavor::V3 => "#/components/schemas/",
        };
        json!({ "$ref": format!("{prefix}{name}") })
    }

    /// A property that refers to a definition and has its own description. OpenAPI 3 ignores
    /// siblings of `$ref`, so v3 wraps the reference in `allOf` as kube-openapi does.
    fn ref_property(self, name: &str, description: &str) -> Value {
        match self {
            Flavor::V2 => {
                let mut v = self.reference(name);
                v["description"] = json!(description);
                v
            }
            Flavor::V3 => json!({ "allOf": [self.reference(name)], "description": description }),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Public API
// ---------------------------------------------------------------------------------------------

/// `/openapi/v2`: one Swagger 2.0 document with definitions and paths for every served resource.
///
/// Custom resources get their CRD schema converted the way the real server publishes it for v2
/// (no `nullable`, `anyOf`/`oneOf`/`allOf`/`not`; subtrees that preserve unknown fields become
/// untyped); built-in kinds get their published schemas. This is the JSON form; client-go asks for
/// protobuf only, which [`v2_protobuf_minimal`] answers.
///
/// With the `ShardedListAndWatch` gate on, list, watch and deletecollection take `shardSelector`
/// and `ListMeta` has `shardInfo`, as in Kubernetes 1.36's documents.
pub fn v2(defs: &[Arc<ResourceDef>], gates: FeatureGates) -> Value {
    let flavor = Flavor::V2;
    let mut definitions = BTreeMap::new();
    let mut paths = BTreeMap::new();
    for def in defs {
        add_resource(flavor, def, &mut definitions, &mut paths);
    }
    add_meta_definitions(flavor, defs.iter().map(|d| d.as_ref()), &mut definitions);
    if gates.sharded_list_and_watch {
        add_sharding(flavor, &mut paths, &mut definitions);
    }
    json!({
        "swagger": "2.0",
        "info": { "title": "Kubernetes", "version": "unversioned" },
        "paths": to_object(paths),
        "definitions": to_object(definitions),
    })
}

/// The `Content-Type` the real server answers protobuf requests for `/openapi/v2` with.
pub const V2_PROTOBUF_CONTENT_TYPE: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

/// `/openapi/v2` for clients that accept only protobuf, as client-go does
/// (`Accept: application/com.github.proto-openapi.spec.v2@v1.0+protobuf`, nothing else): a minimal but
/// valid gnostic `openapi_v2.Document` (`swagger: "2.0"` and `info`, no paths or definitions).
///
/// kubectl 1.27 and 1.28 fetch this before `explain` and `apply` and give up if it does not parse (a
/// 406 is not good enough); they then use the v3 documents for everything that matters (explain,
/// field validation support, patch types). Without definitions here, kubectl builds strategic merge
/// patches for built-in kinds from its compiled-in types, which is what we want.
pub fn v2_protobuf_minimal() -> Vec<u8> {
    fn field(out: &mut Vec<u8>, number: u8, bytes: &[u8]) {
        out.push((number << 3) | 2); // length-delimited
        let mut len = bytes.len();
        while len >= 0x80 {
            out.push((len as u8 & 0x7f) | 0x80);
            len >>= 7;
        }
        out.push(len as u8);
        out.extend_from_slice(bytes);
    }
    let mut info = Vec::new();
    field(&mut info, 1, b"Kubernetes"); // Info.title
    field(&mut info, 2, b"unversioned"); // Info.version
    let mut doc = Vec::new();
    field(&mut doc, 1, b"2.0"); // Document.swagger
    field(&mut doc, 2, &info); // Document.info
    doc
}

/// `/openapi/v3`: the index of group-version documents, one entry per served group-version:
/// `{"paths": {"apis/stable.example.com/v1": {"serverRelativeURL":
/// "/openapi/v3/apis/stable.example.com/v1?hash=<HASH>"}, "api/v1": {...}}}`.
///
/// The hash is [`digest`] of exactly the document [`v3_group_version`] returns, so clients may cache
/// `?hash=` URLs as immutable.
pub fn v3_index(defs: &[Arc<ResourceDef>], gates: FeatureGates) -> Value {
    let mut paths = Map::new();
    for gv in group_version_paths(defs) {
        if let Some(doc) = v3_group_version(defs, &gv, gates) {
            let url = format!("/openapi/v3/{gv}?hash={}", digest(&doc));
            paths.insert(gv, json!({ "serverRelativeURL": url }));
        }
    }
    json!({ "paths": paths })
}

/// `/openapi/v3/apis/{group}/{version}` or `/openapi/v3/api/v1`: the OpenAPI 3.0 document of one
/// group-version (`gv_path` is `apis/stable.example.com/v1` or `api/v1`, leading/trailing slashes
/// ignored), with `paths` and `components.schemas`; `None` if nothing is served there.
pub fn v3_group_version(defs: &[Arc<ResourceDef>], gv_path: &str, gates: FeatureGates) -> Option<Value> {
    let gv_path = gv_path.trim_matches('/');
    let members: Vec<&ResourceDef> = defs
        .iter()
        .map(|d| d.as_ref())
        .filter(|d| group_version_path(d) == gv_path)
        .collect();
    if members.is_empty() {
        return None;
    }
    let flavor = Flavor::V3;
    let mut schemas = BTreeMap::new();
    let mut paths = BTreeMap::new();
    for def in &members {
        add_resource(flavor, def, &mut schemas, &mut paths);
    }
    add_meta_definitions(flavor, members.iter().copied(), &mut schemas);
    if gates.sharded_list_and_watch {
        add_sharding(flavor, &mut paths, &mut schemas);
    }
    let info = if members.iter().all(|d| d.is_custom()) {
        json!({ "title": "Kubernetes CRD Swagger", "version": "v0.1.0" })
    } else {
        json!({ "title": "Kubernetes", "version": "unversioned" })
    };
    Some(json!({
        "openapi": "3.0.0",
        "info": info,
        "paths": to_object(paths),
        "components": { "schemas": to_object(schemas) },
    }))
}

/// The stable digest of a document: 32 upper-case hex digits (FNV-1a, 128 bit) of its compact JSON.
/// Used as the `hash` query parameter in the v3 index; also suitable as an `ETag`.
pub fn digest(doc: &Value) -> String {
    const OFFSET: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    const PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;
    let text = doc.to_string();
    let mut h = OFFSET;
    for b in text.bytes() {
        h ^= u128::from(b);
        h = h.wrapping_mul(PRIME);
    }
    format!("{h:032X}")
}

/// The OpenAPI definition name of a kind, as the real server names it: `io.k8s.api.core.v1.ConfigMap`,
/// `io.k8s.api.apps.v1.Deployment`,
/// `io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.CustomResourceDefinition`, and for
/// custom resources the reversed group, `com.example.stable.v1.Database`.
pub fn definition_name(def: &ResourceDef) -> String {
    kind_definition_name(def, &def.kind)
}

/// The OpenAPI definition name of a kind's list type, like `com.example.stable.v1.DatabaseList`.
pub fn list_definition_name(def: &ResourceDef) -> String {
    kind_definition_name(def, &list_kind(def))
}

/// The v3 group-version path of a resource: `api/v1` for the core group, else `apis/{group}/{version}`.
pub fn group_version_path(def: &ResourceDef) -> String {
    if def.group.is_empty() {
        format!("api/{}", def.version)
    } else {
        format!("apis/{}/{}", def.group, def.version)
    }
}

// ---------------------------------------------------------------------------------------------
// Naming
// ---------------------------------------------------------------------------------------------

fn list_kind(def: &ResourceDef) -> String {
    format!("{}List", def.kind)
}

fn kind_definition_name(def: &ResourceDef, kind: &str) -> String {
    let package = if def.is_custom() {
        def.group.split('.').rev().collect::<Vec<_>>().join(".")
    } else {
        match def.group.as_str() {
            "" => "io.k8s.api.core".to_string(),
            "apiextensions.k8s.io" => "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions".to_string(),
            "apiregistration.k8s.io" => "io.k8s.kube-aggregator.pkg.apis.apiregistration".to_string(),
            g if g.ends_with(".k8s.io") => {
                format!("io.k8s.api.{}", g.split('.').next().unwrap_or(g))
            }
            g => format!("io.k8s.api.{g}"),
        }
    };
    format!("{package}.{}.{kind}", def.version)
}

fn gvk(def: &ResourceDef, kind: &str) -> Value {
    json!({ "group": def.group, "kind": kind, "version": def.version })
}

/// `StableExampleComV1` / `CoreV1` / `AppsV1`: the group-version part of operation ids.
fn operation_prefix(def: &ResourceDef) -> (String, String) {
    let group = if def.group.is_empty() {
        "core"
    } else {
        def.group.trim_end_matches(".k8s.io")
    };
    let camel = |s: &str, upper_first: bool| -> String {
        let mut out = String::new();
        let mut upper = upper_first;
        for c in s.chars() {
            if c == '.' || c == '-' || c == '/' {
                upper = true;
                continue;
            }
            if upper {
                out.extend(c.to_uppercase());
                upper = false;
            } else {
                out.push(c);
            }
        }
        out
    };
    let prefix = format!("{}{}", camel(group, true), camel(&def.version, true));
    let tag = format!("{}_{}", camel(group, false), def.version);
    (prefix, tag)
}

fn article(kind: &str) -> &'static str {
    match kind.chars().next().map(|c| c.to_ascii_lowercase()) {
        Some('a' | 'e' | 'i' | 'o' | 'u') => " an ",
        _ => " a ",
    }
}

// ---------------------------------------------------------------------------------------------
// Schemas of the resources
// ---------------------------------------------------------------------------------------------

fn add_resource(
    flavor: Flavor,
    def: &ResourceDef,
    definitions: &mut BTreeMap<String, Value>,
    paths: &mut BTreeMap<String, Value>,
) {
    definitions.insert(definition_name(def), kind_schema(flavor, def));
    definitions.insert(list_definition_name(def), list_schema(flavor, def));
    // A built-in kind's published schema refers to the definitions of the types it uses.
    if let Some(name) = crate::builtin::definition_of(def) {
        for used in crate::builtin::closure([name]) {
            if used == name {
                continue;
            }
            if let Some(schema) = crate::builtin::definitions().get(&used) {
                definitions.insert(used, with_refs(flavor, schema.clone()));
            }
        }
    }
    for (path, item) in resource_paths(flavor, def) {
        paths.insert(path, item);
    }
}

/// The schema of the kind itself, with `x-kubernetes-group-version-kind`.
fn kind_schema(flavor: Flavor, def: &ResourceDef) -> Value {
    let published = crate::builtin::definition_of(def).and_then(|n| crate::builtin::definitions().get(n));
    let mut schema = match (&def.schema, published) {
        (Some(crd_schema), _) if crd_schema.is_object() => custom_schema(flavor, crd_schema),
        (Some(_), _) => json!({ "type": "object" }),
        (None, _) if def.is_custom() => json!({ "type": "object" }),
        (None, Some(published)) => with_refs(flavor, published.clone()),
        (None, None) => json!({ "type": "object" }),
    };
    schema["x-kubernetes-group-version-kind"] = json!([gvk(def, &def.kind)]);
    schema
}

/// A published schema with its references (`#/definitions/<name>`) in the document's form.
fn with_refs(flavor: Flavor, mut schema: Value) -> Value {
    fn walk(flavor: Flavor, v: &mut Value) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get_mut("$ref")
                    && let Some(name) = r.strip_prefix("#/definitions/")
                {
                    *r = flavor.reference(name)["$ref"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                }
                m.values_mut().for_each(|c| walk(flavor, c));
            }
            Value::Array(items) => items.iter_mut().for_each(|c| walk(flavor, c)),
            _ => {}
        }
    }
    walk(flavor, &mut schema);
    schema
}

/// A CRD's `openAPIV3Schema` as the real server publishes it: int-or-string unfolded, embedded
/// resources completed, v2 restrictions applied, and `apiVersion`/`kind`/`metadata` added at the root.
fn custom_schema(flavor: Flavor, crd_schema: &Value) -> Value {
    let mut s = crd_schema.clone();
    unfold_int_or_string(&mut s);
    if flavor == Flavor::V2 {
        if is_true(&s, "x-kubernetes-preserve-unknown-fields") {
            // kubectl (v2) would otherwise reject every field it does not know.
            return json!({ "type": "object" });
        }
        to_v2(&mut s);
    }
    let mut props = type_meta_properties(flavor);
    if let Some(own) = s.get("properties").and_then(Value::as_object) {
        for (k, v) in own {
            if k != "apiVersion" && k != "kind" && k != "metadata" {
                props.insert(k.clone(), v.clone());
            }
        }
    }
    if let Some(obj) = s.as_object_mut() {
        obj.insert("properties".into(), Value::Object(props));
    }
    add_embedded_properties(flavor, &mut s, true);
    s
}

fn is_true(s: &Value, key: &str) -> bool {
    s.get(key).and_then(Value::as_bool) == Some(true)
}

/// Visit the direct sub-schemas (properties, items, additionalProperties) of a schema.
fn for_each_child(s: &mut Value, f: &mut dyn FnMut(&mut Value)) {
    if let Some(props) = s.get_mut("properties").and_then(Value::as_object_mut) {
        for v in props.values_mut() {
            f(v);
        }
    }
    if let Some(items) = s.get_mut("items") {
        if items.is_object() {
            f(items);
        } else if let Some(list) = items.as_array_mut() {
            for v in list {
                f(v);
            }
        }
    }
    if let Some(ap) = s.get_mut("additionalProperties")
        && ap.is_object()
    {
        f(ap);
    }
}

/// `x-kubernetes-int-or-string: true` gains `anyOf: [{type: integer}, {type: string}]`, as the
/// structural schema's `Unfold` does.
fn unfold_int_or_string(s: &mut Value) {
    for_each_child(s, &mut unfold_int_or_string);
    if !is_true(s, "x-kubernetes-int-or-string") {
        return;
    }
    let Some(obj) = s.as_object_mut() else { return };
    let int_or_string = json!([{ "type": "integer" }, { "type": "string" }]);
    match obj.get("anyOf") {
        None => {
            obj.insert("anyOf".into(), int_or_string);
        }
        Some(existing) if *existing == int_or_string => {}
        Some(_) => {
            let mut all_of = vec![json!({ "anyOf": int_or_string })];
            if let Some(Value::Array(more)) = obj.remove("allOf") {
                all_of.extend(more);
            }
            obj.insert("allOf".into(), Value::Array(all_of));
        }
    }
}

/// What `ToStructuralOpenAPIV2` does: drop what Swagger 2.0 (or kubectl's v2 handling) cannot express.
fn to_v2(s: &mut Value) {
    // Properties that may be null lose their type below, so they cannot stay required.
    let nullable = |v: &Value| v.get("nullable").and_then(Value::as_bool) == Some(true);
    let nullable_props: Vec<String> = s
        .get("properties")
        .and_then(Value::as_object)
        .map(|p| {
            p.iter()
                .filter(|(_, v)| nullable(v))
                .map(|(k, _)| k.clone())
                .collect()
        })
        .unwrap_or_default();
    let nullable_values = s.get("additionalProperties").is_some_and(nullable);
    for_each_child(s, &mut to_v2);
    let Some(obj) = s.as_object_mut() else { return };
    for k in ["allOf", "oneOf", "anyOf", "not"] {
        obj.remove(k);
    }
    if obj.remove("nullable").and_then(|v| v.as_bool()) == Some(true) {
        obj.remove("type");
        obj.remove("items");
        obj.remove("properties");
    }
    let preserve = obj
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        == Some(true);
    if preserve {
        obj.remove("items");
        obj.remove("properties");
    }
    let type_is = |obj: &Map<String, Value>, t: &str| obj.get("type").and_then(Value::as_str) == Some(t);
    if !obj.contains_key("items") && type_is(obj, "array") {
        obj.remove("type");
    }
    if preserve && type_is(obj, "object") {
        obj.remove("type");
    }
    if nullable_values {
        obj.remove("required");
    } else if let Some(Value::Array(required)) = obj.get_mut("required") {
        required.retain(|r| r.as_str().is_none_or(|r| !nullable_props.iter().any(|n| n == r)));
        if required.is_empty() {
            obj.remove("required");
        }
    }
}

/// `x-kubernetes-embedded-resource: true` objects get `apiVersion`, `kind` and `metadata`
/// properties (and require the first two), as apiextensions-apiserver's builder adds them.
fn add_embedded_properties(flavor: Flavor, s: &mut Value, root: bool) {
    for_each_child(s, &mut |child| add_embedded_properties(flavor, child, false));
    if root {
        return;
    }
    if flavor == Flavor::V2 && is_true(s, "x-kubernetes-preserve-unknown-fields") {
        return;
    }
    if !is_true(s, "x-kubernetes-embedded-resource") {
        return;
    }
    let Some(obj) = s.as_object_mut() else { return };
    let props = obj.entry("properties").or_insert_with(|| json!({}));
    if let Some(props) = props.as_object_mut() {
        props.insert(
            "apiVersion".into(),
            json!({ "description": EMBEDDED_API_VERSION_DESC, "type": "string" }),
        );
        props.insert(
            "kind".into(),
            json!({ "description": EMBEDDED_KIND_DESC, "type": "string" }),
        );
        props.insert(
            "metadata".into(),
            flavor.ref_property(&format!("{META}.ObjectMeta"), OBJECT_META_DESC),
        );
    }
    let required = obj.entry("required").or_insert_with(|| json!([]));
    if let Some(required) = required.as_array_mut() {
        for k in ["kind", "apiVersion"] {
            if !required.iter().any(|r| r == k) {
                required.push(json!(k));
            }
        }
    }
}

/// The list kind, as the builder makes it for CRDs (and as built-in lists look).
fn list_schema(flavor: Flavor, def: &ResourceDef) -> Value {
    let items_desc = format!(
        "List of {}. More info: \
https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md",
        def.plural
    );
    json!({
        "description": format!("{} is a list of {}", list_kind(def), def.kind),
        "properties": {
            "apiVersion": { "description": API_VERSION_DESC, "type": "string" },
            "items": {
                "description": items_desc,
                "items": flavor.reference(&definition_name(def)),
                "type": "array",
            },
            "kind": { "description": KIND_DESC, "type": "string" },
            "metadata": flavor.ref_property(&format!("{META}.ListMeta"), LIST_META_DESC),
        },
        "required": ["items"],
        "type": "object",
        "x-kubernetes-group-version-kind": [gvk(def, &list_kind(def))],
    })
}

/// `apiVersion`, `kind` and `metadata`, as every kind's schema starts.
fn type_meta_properties(flavor: Flavor) -> Map<String, Value> {
    let mut props = Map::new();
    props.insert(
        "apiVersion".into(),
        json!({ "description": API_VERSION_DESC, "type": "string" }),
    );
    props.insert(
        "kind".into(),
        json!({ "description": KIND_DESC, "type": "string" }),
    );
    props.insert(
        "metadata".into(),
        flavor.ref_property(&format!("{META}.ObjectMeta"), OBJECT_META_DESC),
    );
    props
}

/// One operation to describe.
struct OpSpec {
    method: &'static str,
    /// Verb used in descriptions: list, create, deletecollection, read, replace, delete, patch.
    verb: &'static str,
    /// `x-kubernetes-action`.
    action: &'static str,
    subresource: &'static str,
    all_namespaces: bool,
}

fn resource_paths(flavor: Flavor, def: &ResourceDef) -> Vec<(String, Value)> {
    let prefix = format!("/{}", group_version_path(def));
    let collection = if def.namespaced {
        format!("{prefix}/namespaces/{{namespace}}/{}", def.plural)
    } else {
        format!("{prefix}/{}", def.plural)
    };
    let verbs = |v: &str| def.verbs.iter().any(|x| x == v);
    let op = |method, verb, action, subresource, all_namespaces| OpSpec {
        method,
        verb,
        action,
        subresource,
        all_namespaces,
    };
    let mut out = vec![];

    if def.namespaced && verbs("list") {
        let ops = vec![op("get", "list", "list", "", true)];
        out.push((
            format!("{prefix}/{}", def.plural),
            path_item(flavor, def, ops, false),
        ));
    }
    let mut ops = vec![];
    if verbs("list") {
        ops.push(op("get", "list", "list", "", false));
    }
    if verbs("create") {
        ops.push(op("post", "create", "post", "", false));
    }
    if verbs("deletecollection") {
        ops.push(op("delete", "deletecollection", "deletecollection", "", false));
    }
    if !ops.is_empty() {
        out.push((collection.clone(), path_item(flavor, def, ops, false)));
    }
    let mut ops = vec![];
    if verbs("get") {
        ops.push(op("get", "read", "get", "", false));
    }
    if verbs("update") {
        ops.push(op("put", "replace", "put", "", false));
    }
    if verbs("delete") {
        ops.push(op("delete", "delete", "delete", "", false));
    }
    if verbs("patch") {
        ops.push(op("patch", "patch", "patch", "", false));
    }
    if !ops.is_empty() {
        out.push((
            format!("{collection}/{{name}}"),
            path_item(flavor, def, ops, true),
        ));
    }
    for (sub, enabled) in [("status", def.status_subresource), ("scale", def.scale.is_some())] {
        if enabled {
            let ops = vec![
                op("get", "read", "get", sub, false),
                op("put", "replace", "put", sub, false),
                op("patch", "patch", "patch", sub, false),
            ];
            out.push((
                format!("{collection}/{{name}}/{sub}"),
                path_item(flavor, def, ops, true),
            ));
        }
    }
    out
}

fn path_item(flavor: Flavor, def: &ResourceDef, ops: Vec<OpSpec>, named: bool) -> Value {
    let mut item = Map::new();
    let all_namespaces = ops.iter().all(|o| o.all_namespaces);
    for spec in &ops {
        item.insert(spec.method.into(), operation(flavor, def, spec));
    }
    let mut params = vec![];
    if named {
        let scale = ops.iter().any(|o| o.subresource == "scale");
        let what = if scale {
            "Scale".to_string()
        } else {
            def.kind.clone()
        };
        params.push(path_param(flavor, "name", &format!("name of the {what}")));
    }
    if def.namespaced && !all_namespaces {
        params.push(path_param(
            flavor,
            "namespace",
            "object name and auth scope, such as for teams and projects",
        ));
    }
    params.push(query_param(flavor, "pretty"));
    item.insert("parameters".into(), Value::Array(params));
    Value::Object(item)
}

fn operation(flavor: Flavor, def: &ResourceDef, spec: &OpSpec) -> Value {
    let (prefix, tag) = operation_prefix(def);
    let kind = &def.kind;
    let sub = spec.subresource;
    let scale = sub == "scale";
    let sub_of = if sub.is_empty() {
        String::new()
    } else {
        format!(" {sub} of")
    };
    let description = match spec.verb {
        "list" if def.is_custom() => format!("list objects of kind {kind}"),
        "list" => format!("list or watch objects of kind {kind}"),
        "create" => format!("create{}{kind}", article(kind)),
        "deletecollection" => format!("delete collection of {kind}"),
        "delete" => format!("delete{}{kind}", article(kind)),
        "patch" => format!("partially update{sub_of} the specified {kind}"),
        verb => format!("{verb}{sub_of} the specified {kind}"),
    };
    let namespaced = if def.namespaced && !spec.all_namespaces {
        "Namespaced"
    } else {
        ""
    };
    let sub_suffix = {
        let mut c = sub.chars();
        c.next()
            .map(|f| f.to_uppercase().chain(c).collect::<String>())
            .unwrap_or_default()
    };
    let operation_id = match spec.verb {
        "list" if spec.all_namespaces => format!("list{prefix}{kind}ForAllNamespaces"),
        "deletecollection" => format!("delete{prefix}Collection{namespaced}{kind}"),
        verb => format!("{verb}{prefix}{namespaced}{kind}{sub_suffix}"),
    };
    // The builder tags every CRD route, even /scale, with the CRD's kind; built-in scale
    // subresources are autoscaling/v1 Scale.
    let (response, op_gvk) = if scale {
        let g = if def.is_custom() {
            gvk(def, kind)
        } else {
            json!({ "group": "autoscaling", "kind": "Scale", "version": "v1" })
        };
        (SCALE.to_string(), g)
    } else if spec.verb == "list" {
        (list_definition_name(def), gvk(def, kind))
    } else if spec.verb == "deletecollection" || (spec.verb == "delete" && !def.delete_returns_object) {
        (format!("{META}.Status"), gvk(def, kind))
    } else {
        (definition_name(def), gvk(def, kind))
    };

    let params: Vec<Value> = query_params_for(spec.verb)
        .iter()
        .map(|p| query_param(flavor, p))
        .collect();
    let produces: Vec<&str> = if def.is_custom() {
        vec!["application/json", "application/yaml"]
    } else {
        vec![
            "application/json",
            "application/yaml",
            "application/vnd.kubernetes.protobuf",
        ]
    };
    let consumes: Vec<&str> = match spec.method {
        "patch" => vec![
            "application/json-patch+json",
            "application/merge-patch+json",
            "application/apply-patch+yaml",
        ],
        _ => vec!["application/json", "application/yaml"],
    };
    let body = match spec.verb {
        "create" | "replace" => Some((response.clone(), true)),
        "patch" => Some((format!("{META}.Patch"), true)),
        "delete" | "deletecollection" => Some((format!("{META}.DeleteOptions"), false)),
        _ => None,
    };
    let mut codes: Vec<(&str, &str)> = vec![("200", "OK")];
    match spec.action {
        "post" => codes.extend([("201", "Created"), ("202", "Accepted")]),
        "put" | "patch" => codes.push(("201", "Created")),
        "delete" => codes.push(("202", "Accepted")),
        _ => {}
    }
    let mut op = Map::new();
    op.insert("description".into(), json!(description));
    op.insert("operationId".into(), json!(operation_id));
    match flavor {
        Flavor::V2 => {
            if body.is_some() || spec.method != "get" {
                op.insert("consumes".into(), json!(consumes));
            } else {
                op.insert("consumes".into(), json!(["*/*"]));
            }
            let mut all_params = vec![];
            if let Some((name, required)) = &body {
                all_params.push(json!({
                    "in": "body",
                    "name": "body",
                    "required": required,
                    "schema": flavor.reference(name),
                }));
            }
            all_params.extend(params);
            if !all_params.is_empty() {
                op.insert("parameters".into(), Value::Array(all_params));
            }
            op.insert("produces".into(), json!(produces));
            let mut responses = Map::new();
            for (code, text) in &codes {
                responses.insert(
                    (*code).into(),
                    json!({ "description": text, "schema": flavor.reference(&response) }),
                );
            }
            responses.insert("401".into(), json!({ "description": "Unauthorized" }));
            op.insert("responses".into(), Value::Object(responses));
            op.insert("schemes".into(), json!(["https"]));
        }
        Flavor::V3 => {
            if !params.is_empty() {
                op.insert("parameters".into(), Value::Array(params));
            }
            if let Some((name, required)) = &body {
                let mut content = Map::new();
                for c in &consumes {
                    content.insert((*c).into(), json!({ "schema": flavor.reference(name) }));
                }
                let mut rb = json!({ "content": content });
                if *required {
                    rb["required"] = json!(true);
                }
                op.insert("requestBody".into(), rb);
            }
            let mut responses = Map::new();
            for (code, text) in &codes {
                let mut content = Map::new();
                for p in &produces {
                    content.insert((*p).into(), json!({ "schema": flavor.reference(&response) }));
                }
                responses.insert((*code).into(), json!({ "content": content, "description": text }));
            }
            responses.insert("401".into(), json!({ "description": "Unauthorized" }));
            op.insert("responses".into(), Value::Object(responses));
        }
    }
    op.insert("tags".into(), json!([tag]));
    op.insert("x-kubernetes-action".into(), json!(spec.action));
    op.insert("x-kubernetes-group-version-kind".into(), op_gvk);
    Value::Object(op)
}

fn query_params_for(verb: &str) -> &'static [&'static str] {
    match verb {
        "list" => &[
            "allowWatchBookmarks",
            "continue",
            "fieldSelector",
            "labelSelector",
            "limit",
            "resourceVersion",
            "resourceVersionMatch",
            "sendInitialEvents",
            "timeoutSeconds",
            "watch",
        ],
        "create" | "replace" => &["dryRun", "fieldManager", "fieldValidation"],
        "patch" => &["dryRun", "fieldManager", "fieldValidation", "force"],
        "delete" => &[
            "dryRun",
            "gracePeriodSeconds",
            "orphanDependents",
            "propagationPolicy",
        ],
        "deletecollection" => &[
            "continue",
            "dryRun",
            "fieldSelector",
            "gracePeriodSeconds",
            "labelSelector",
            "limit",
            "orphanDependents",
            "propagationPolicy",
            "resourceVersion",
            "resourceVersionMatch",
            "sendInitialEvents",
            "timeoutSeconds",
        ],
        _ => &[],
    }
}

fn path_param(flavor: Flavor, name: &str, description: &str) -> Value {
    match flavor {
        Flavor::V2 => json!({
            "description": description,
            "in": "path",
            "name": name,
            "required": true,
            "type": "string",
            "uniqueItems": true,
        }),
        Flavor::V3 => json!({
            "description": description,
            "in": "path",
            "name": name,
            "required": true,
            "schema": { "type": "string", "uniqueItems": true },
        }),
    }
}

fn query_param(flavor: Flavor, name: &str) -> Value {
    let (type_, description) = query_param_doc(name);
    match flavor {
        Flavor::V2 => json!({
            "description": description,
            "in": "query",
            "name": name,
            "type": type_,
            "uniqueItems": true,
        }),
        Flavor::V3 => json!({
            "description": description,
            "in": "query",
            "name": name,
            "schema": { "type": type_, "uniqueItems": true },
        }),
    }
}

/// KEP-5866 in the documents (Kubernetes 1.36, `ShardedListAndWatch`): every operation taking
/// `labelSelector` (list, watch, deletecollection: `ListOptions`) takes `shardSelector` after
/// `sendInitialEvents`, and `ListMeta` gets `shardInfo`.
fn add_sharding(flavor: Flavor, paths: &mut BTreeMap<String, Value>, schemas: &mut BTreeMap<String, Value>) {
    for item in paths.values_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for (key, op) in item.iter_mut() {
            if key == "parameters" {
                continue;
            }
            let Some(params) = op.get_mut("parameters").and_then(Value::as_array_mut) else {
                continue;
            };
            let name = |p: &Value| p.get("name").and_then(Value::as_str).map(str::to_string);
            if !params.iter().any(|p| name(p).as_deref() == Some("labelSelector")) {
                continue;
            }
            // Query parameters are in name order: before the first one after it.
            let at = params
                .iter()
                .position(|p| {
                    p.get("in").and_then(Value::as_str) == Some("query")
                        && name(p).is_some_and(|n| n.as_str() > "shardSelector")
                })
                .unwrap_or(params.len());
            params.insert(at, query_param(flavor, "shardSelector"));
        }
    }
    let info = format!("{META}.ShardInfo");
    if let Some(props) = schemas
        .get_mut(&format!("{META}.ListMeta"))
        .and_then(|m| m.get_mut("properties"))
        .and_then(Value::as_object_mut)
    {
        props.insert(
            "shardInfo".into(),
            flavor.ref_property(
                &info,
                "shardInfo is set when the list was filtered by a shard selector (shardSelector): it \
echoes the selector the server applied. Its absence means the server did not filter.",
            ),
        );
        schemas.insert(
            info,
            json!({
                "description": "ShardInfo describes the shard selector that was applied to produce a list \
            response. Its presence on a list response indicates the list is a filtered subset.",
                "properties": {
                    "selector": {
                        "default": "",
                        "description": "selector is the shard selector string from the request, echoed back \
            so clients can verify which shard they received and merge responses from multiple shards.",
                        "type": "string",
                    },
                },
                "required": ["selector"],
                "type": "object",
            }),
        );
    }
}

fn query_param_doc(name: &str) -> (&'static str, &'static str) {
    match name {
        "shardSelector" => (
            "string",
            "shardSelector restricts the list of returned objects using a CEL-based shard selector \
expression. The format uses the shardRange() function combined with || (logical OR) to specify one or more \
hash ranges:\n\n  shardRange(object.metadata.uid, '0x0', '0x8000000000000000')\n  \
shardRange(object.metadata.uid, '0x0', '0x8000000000000000') || shardRange(object.metadata.uid, \
'0x8000000000000000', '0x10000000000000000')\n\nField paths use CEL-style object-rooted syntax (e.g. \
\"object.metadata.uid\"), NOT the fieldSelector format (\"metadata.uid\"). Currently supported paths:\n  - \
object.metadata.uid\n  - object.metadata.namespace\n\nhexStart and hexEnd are single-quoted CEL string \
literals with a '0x' prefix, defining the inclusive lower and exclusive upper bounds over the 64-bit FNV-1a \
hash space. The full range is [0x0, 0x10000000000000000), where the exclusive upper bound equals \
2^64.\n\nExamples:\n  2-shard split:\n    shard 0: shardRange(object.metadata.uid, '0x0000000000000000', \
'0x8000000000000000')\n    shard 1: shardRange(object.metadata.uid, '0x8000000000000000', \
'0x10000000000000000')\n  4-shard split:\n    shard 0: shardRange(object.metadata.uid, \
'0x0000000000000000', '0x4000000000000000')\n    shard 1: shardRange(object.metadata.uid, \
'0x4000000000000000', '0x8000000000000000')\n    shard 2: shardRange(object.metadata.uid, \
'0x8000000000000000', '0xc000000000000000')\n    shard 3: shardRange(object.metadata.uid, \
'0xc000000000000000', '0x10000000000000000')\n\nThis is an alpha field and requires enabling the \
ShardedListAndWatch feature gate.",
        ),
        "pretty" => ("string", "If 'true', then the output is pretty printed."),
        "dryRun" => (
            "string",
            "When present, indicates that modifications should not be persisted. An invalid or unrecognized \
dryRun directive will result in an error response and no further processing of the request. Valid values \
are: - All: all dry run stages will be processed",
        ),
        "fieldManager" => (
            "string",
            "fieldManager is a name associated with the actor or entity that is making these changes. The \
value must be less than or 128 characters long, and only contain printable characters, as defined by \
https://golang.org/pkg/unicode/#IsPrint.",
        ),
        "fieldValidation" => (
            "string",
            "fieldValidation instructs the server on how to handle objects in the request (POST/PUT/PATCH) \
containing unknown or duplicate fields. Valid values are: - Ignore: This will ignore any unknown fields \
that are silently dropped from the object, and will ignore all but the last duplicate field that the \
decoder encounters. This is the default behavior prior to v1.23. - Warn: This will send a warning via the \
standard warning response header for each unknown field that is dropped from the object, and for each \
duplicate field that is encountered. The request will still succeed if there are no other errors, and will \
only persist the last of any duplicate fields. This is the default in v1.23+ - Strict: This will fail the \
request with a BadRequest error if any unknown fields would be dropped from the object, or if any duplicate \
fields are present. The error returned from the server will contain all unknown and duplicate fields \
encountered.",
        ),
        "force" => (
            "boolean",
            "Force is going to \"force\" Apply requests. It means user will re-acquire conflicting fields \
owned by other people. Force flag must be unset for non-apply patch requests.",
        ),
        "allowWatchBookmarks" => (
            "boolean",
            "allowWatchBookmarks requests watch events with type \"BOOKMARK\". Servers that do not \
implement bookmarks may ignore this flag and bookmarks are sent at the server's discretion. Clients should \
not assume bookmarks are returned at any specific interval, nor may they assume the server will send any \
BOOKMARK event during a session. If this is not a watch, this field is ignored.",
        ),
        "continue" => (
            "string",
            "The continue option should be set when retrieving more results from the server. Since this \
value is server defined, clients may only use the continue value from a previous query result with \
identical query parameters (except for the value of continue) and the server may reject a continue value it \
does not recognize.",
        ),
        "fieldSelector" => (
            "string",
            "A selector to restrict the list of returned objects by their fields. Defaults to everything.",
        ),
        "labelSelector" => (
            "string",
            "A selector to restrict the list of returned objects by their labels. Defaults to everything.",
        ),
        "limit" => (
            "integer",
            "limit is a maximum number of responses to return for a list call. If more items exist, the \
server will set the `continue` field on the list metadata to a value that can be used with the same initial \
query to retrieve the next set of results.",
        ),
        "resourceVersion" => (
            "string",
            "resourceVersion sets a constraint on what resource versions a request may be served from. See \
https://kubernetes.io/docs/reference/using-api/api-concepts/#resource-versions for details.\n\nDefaults to \
unset",
        ),
        "resourceVersionMatch" => (
            "string",
            "resourceVersionMatch determines how resourceVersion is applied to list calls. It is highly \
recommended that resourceVersionMatch be set for list calls where resourceVersion is set See \
https://kubernetes.io/docs/reference/using-api/api-concepts/#resource-versions for details.\n\nDefaults to \
unset",
        ),
        "sendInitialEvents" => (
            "boolean",
            "`sendInitialEvents=true` may be set together with `watch=true`. In that case, the watch stream \
will begin with synthetic events to produce the current state of objects in the collection.",
        ),
        "timeoutSeconds" => (
            "integer",
            "Timeout for the list/watch call. This limits the duration of the call, regardless of any \
activity or inactivity.",
        ),
        "watch" => (
            "boolean",
            "Watch for changes to the described resources and return them as a stream of add, update, and \
remove notifications. Specify resourceVersion.",
        ),
        "gracePeriodSeconds" => (
            "integer",
            "The duration in seconds before the object should be deleted. Value must be non-negative \
integer. The value zero indicates delete immediately. If this value is nil, the default grace period for \
the specified type will be used. Defaults to a per object value if not specified. zero means delete \
immediately.",
        ),
        "orphanDependents" => (
            "boolean",
            "Deprecated: please use the PropagationPolicy, this field will be deprecated in 1.7. Should the \
dependent objects be orphaned. If true/false, the \"orphan\" finalizer will be added to/removed from the \
object's finalizers list. Either this field or PropagationPolicy may be set, but not both.",
        ),
        "propagationPolicy" => (
            "string",
            "Whether and how garbage collection will be performed. Either this field or OrphanDependents \
may be set, but not both. The default policy is decided by the existing finalizer set in the \
metadata.finalizers and the resource-specific default policy. Acceptable values are: 'Orphan' - orphan the \
dependents; 'Background' - allow the garbage collector to delete the dependents in the background; \
'Foreground' - a cascading policy that deletes all dependents in the foreground.",
        ),
        _ => ("string", ""),
    }
}

// ---------------------------------------------------------------------------------------------
// Shared meta/v1 (and autoscaling/v1 Scale) definitions
// ---------------------------------------------------------------------------------------------

fn add_meta_definitions<'a>(
    flavor: Flavor,
    defs: impl Iterator<Item = &'a ResourceDef>,
    out: &mut BTreeMap<String, Value>,
) {
    let mut needs_scale = false;
    for d in defs {
        needs_scale |= d.scale.is_some();
    }
    let m = |name: &str| format!("{META}.{name}");
    let r = |name: &str, desc: &str| flavor.ref_property(&m(name), desc);
    let s = |desc: &str| json!({ "description": desc, "type": "string" });
    let string_map = |desc: &str| {
        json!({ "additionalProperties": { "default": "", "type": "string" }, "descriptio\
n": desc, "type": "object" })
    };

    out.insert(
        m("ObjectMeta"),
        json!({
            "description": "ObjectMeta is metadata that all persisted resources must have, which includes \
all objects users must create.",
            "properties": {
                "annotations": string_map("Annotations is an unstructured key value map stored with a \
resource that may be set by external tools to store and retrieve arbitrary metadata. They are not queryable \
and should be preserved when modifying objects. More info: \
https://kubernetes.io/docs/concepts/overview/working-with-objects/annotations"),
                "creationTimestamp": r("Time", "CreationTimestamp is a timestamp representing the server \
time when this object was created. It is not guaranteed to be set in happens-before order across separate \
operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated \
by the system. Read-only. Null for lists. More info: \
https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata"),
                "deletionGracePeriodSeconds": {
                    "description": "Number of seconds allowed for this object to gracefully terminate \
before it will be removed from the system. Only set when deletionTimestamp is also set. May only be \
shortened. Read-only.",
                    "format": "int64",
                    "type": "integer",
                },
                "deletionTimestamp": r("Time", "DeletionTimestamp is RFC 3339 date and time at which this \
resource will be deleted. This field is set by the server when a graceful deletion is requested by the \
user, and is not directly settable by a client. The resource is expected to be deleted (no longer visible \
from resource lists, and not reachable by name) after the time in this field, once the finalizers list is \
empty. As long as the finalizers list contains items, deletion is blocked. Once the deletionTimestamp is \
set, this value may not be unset or be set further into the future, although it may be shortened or the \
resource may be deleted prior to this time. If not set, graceful deletion of the object has not been \
requested.\n\nPopulated by the system when a graceful deletion is requested. Read-only. More info: \
https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata"),
                "finalizers": {
                    "description": "Must be empty before the object is deleted from the registry. Each \
entry is an identifier for the responsible component that will remove the entry from the list. If the \
deletionTimestamp of the object is non-nil, entries in this list can only be removed. Finalizers may be \
processed and removed in any order.  Order is NOT enforced because it introduces significant risk of stuck \
finalizers. finalizers is a shared field, any actor with permission can reorder it.",
                    "items": { "default": "", "type": "string" },
                    "type": "array",
                    "x-kubernetes-list-type": "set",
                    "x-kubernetes-patch-strategy": "merge",
                },
                "generateName": s("GenerateName is an optional prefix, used by the server, to generate a \
unique name ONLY IF the Name field has not been provided. If this field is used, the name returned to the \
client will be different than the name passed. This value will also be combined with a unique suffix. The \
provided value has the same validation rules as the Name field, and may be truncated by the length of the \
suffix required to make the value unique on the server.\n\nIf this field is specified and the generated \
name exists, the server will return a 409.\n\nApplied only if Name is not specified. More info: \
https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#idempotency"),
                "generation": {
                    "description": "A sequence number representing a specific generation of the desired \
state. Populated by the system. Read-only.",
                    "format": "int64",
                    "type": "integer",
                },
                "labels": string_map("Map of string keys and values that can be used to organize and \
categorize (scope and select) objects. May match selectors of replication controllers and services. More \
info: https://kubernetes.io/docs/concepts/overview/working-with-objects/labels"),
                "managedFields": {
                    "description": "ManagedFields maps workflow-id and version to the set of fields that \
are managed by that workflow. This is mostly for internal housekeeping, and users typically shouldn't need \
to set or understand this field. A workflow can be the user's name, a controller's name, or the name of a \
specific apply path like \"ci-cd\". The set of fields is always in the version that the workflow used when \
modifying the object.",
                    "items": flavor.reference(&m("ManagedFieldsEntry")),
                    "type": "array",
                    "x-kubernetes-list-type": "atomic",
                },
                "name": s("Name must be unique within a namespace. Is required when creating resources, \
although some resources may allow a client to request the generation of an appropriate name automatically. \
Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More \
info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names"),
                "namespace": s("Namespace defines the space within which each name must be unique. An empty \
namespace is equivalent to the \"default\" namespace, but \"default\" is the canonical representation. Not \
all objects are required to be scoped to a namespace - the value of this field for those objects will be \
empty.\n\nMust be a DNS_LABEL. Cannot be updated. More info: \
https://kubernetes.io/docs/concepts/overview/working-with-objects/namespaces"),
                "ownerReferences": {
                    "description": "List of objects depended by this object. If ALL objects in the list \
have been deleted, this object will be garbage collected. If this object is managed by a controller, then \
an entry in this list will point to this controller, with the controller field set to true. There cannot be \
more than one managing controller.",
                    "items": flavor.reference(&m("OwnerReference")),
                    "type": "array",
                    "x-kubernetes-list-map-keys": ["uid"],
                    "x-kubernetes-list-type": "map",
                    "x-kubernetes-patch-merge-key": "uid",
                    "x-kubernetes-patch-strategy": "merge",
                },
                "resourceVersion": s("An opaque value that represents the internal version of this object \
that can be used by clients to determine when objects have changed. May be used for optimistic concurrency, \
change detection, and the watch operation on a resource or set of resources. Clients must treat these \
values as opaque and passed unmodified back to the server. They may only be valid for a particular resource \
or set of resources.\n\nPopulated by the system. Read-only. Value must be treated as opaque by clients and \
. More info: \
https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#concurrency-control-and\
-consistency"),
                "selfLink": s("Deprecated: selfLink is a legacy read-only field that is no longer populated \
by the system."),
                "uid": s("UID is the unique in time and space value for this object. It is typically \
generated by the server on successful creation of a resource and is not allowed to change on PUT \
operations.\n\nPopulated by the system. Read-only. More info: \
https://kubernetes.io/docs/concepts/overview/working-with-objects/names#uids"),
            },
            "type": "object",
        }),
    );
    out.insert(
        m("OwnerReference"),
        json!({
            "description": "OwnerReference contains enough information to let you identify an owning \
object. An owning object must be in the same namespace as the dependent, or be cluster-scoped, so there is \
no namespace field.",
            "properties": {
                "apiVersion": { "default": "", "description": "API version of the \
referent.", "type": "string" },
                "blockOwnerDeletion": {
                    "description": "If true, AND if the owner has the \"foregroundDeletion\" finalizer, \
then the owner cannot be deleted from the key-value store until this reference is removed. Defaults to \
false. To set this field, a user needs \"delete\" permission of the owner, otherwise 422 (Unprocessable \
Entity) will be returned.",
                    "type": "boolean",
                },
                "controller": {
                    "description": "If true, this reference points to the managing controller.",
                    "type": "boolean",
                },
                "kind": { "default": "", "description": "Kind of the referent. More info: \
https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds", "typ\
e": "string" },
                "name": { "default": "", "description": "Name of the referent. More info: \
https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names", "type": "string" },
                "uid": { "default": "", "description": "UID of the referent. More info: \
https://kubernetes.io/docs/concepts/overview/working-with-objects/names#uids", "type": "string" },
            },
            "required": ["apiVersion", "kind", "name", "uid"],
            "type": "object",
            "x-kubernetes-map-type": "atomic",
        }),
    );
    out.insert(
        m("ManagedFieldsEntry"),
        json!({
            "description": "ManagedFieldsEntry is a workflow-id, a FieldSet and the group version of the \
resource that the fieldset applies to.",
            "properties": {
                "apiVersion": s("APIVersion defines the version of this resource that this field set \
applies to. The format is \"group/version\" just like the top-level APIVersion field. It is necessary to \
track the version of a field set because it cannot be automatically converted."),
                "fieldsType": s("FieldsType is the discriminator for the different fields format and \
version. There is currently only one possible value: \"FieldsV1\""),
                "fieldsV1": r("FieldsV1", "FieldsV1 holds the first JSON version format as described in the \
\"FieldsV1\" type."),
                "manager": s("Manager is an identifier of the workflow managing these fields."),
                "operation": s("Operation is the type of operation which lead to this ManagedFieldsEntry \
being created. The only valid values for this field are 'Apply' and 'Update'."),
                "subresource": s("Subresource is the name of the subresource used to update that object, or \
empty string if the object was updated through the main resource. The value of this field is used to \
distinguish between managers, even if they share the same name. For example, a status update will be \
distinct from a regular update using the same manager name. Note that the APIVersion field is not related \
to the Subresource field and it always corresponds to the version of the main resource."),
                "time": r("Time", "Time is the timestamp of when the ManagedFields entry was added. The \
timestamp will also be updated if a field is added, the manager changes any of the owned fields value or \
removes a field. The timestamp does not update when a field is removed from the entry because another \
manager took it over."),
            },
            "type": "object",
        }),
    );
    out.insert(
        m("FieldsV1"),
        json!({
            "description": "FieldsV1 stores a set of fields in a data structure like a Trie, in JSON \
format.\n\nEach key is either a '.' representing the field itself, and will always map to an empty set, or \
a string representing a sub-field or item. The string will follow one of these four formats: 'f:<name>', \
where <name> is the name of a field in a struct, or key in a map 'v:<value>', where <value> is the exact \
json formatted value of a list item 'i:<index>', where <index> is position of a item in a list 'k:<keys>', \
where <keys> is a map of  a list item's key fields to their unique values If a key maps to an empty Fields \
value, the field that key represents is part of the set.\n\nThe exact format is defined in \
sigs.k8s.io/structured-merge-diff",
            "type": "object",
        }),
    );
    out.insert(
        m("Time"),
        json!({
            "description": "Time is a wrapper around time.Time which supports correct marshaling to YAML \
        and JSON.  Wrappers are provided for many of the factory methods that the time package offers.",
            "format": "date-time",
            "type": "string",
        }),
    );
    out.insert(
        m("ListMeta"),
        json!({
            "description": "ListMeta describes metadata that synthetic resources must have, including lists \
and various status objects. A resource may have only one of {ObjectMeta, ListMeta}.",
            "properties": {
                "continue": s("continue may be set if the user set a limit on the number of items returned, \
and indicates that the server has more data available. The value is opaque and may be used to issue another \
request to the endpoint that served this list to retrieve the next set of available objects."),
                "remainingItemCount": {
                    "description": "remainingItemCount is the number of subsequent items in the list which \
are not included in this list response.",
                    "format": "int64",
                    "type": "integer",
                },
                "resourceVersion": s("String that identifies the server's internal version of this object \
that can be used by clients to determine when objects have changed. Value must be treated as opaque by \
clients and passed unmodified back to the server. Populated by the system. Read-only. More info: \
https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#concurrency-control-and\
-consistency"),
                "selfLink": s("Deprecated: selfLink is a legacy read-only field that is no longer populated \
by the system."),
            },
            "type": "object",
        }),
    );
    out.insert(
        m("Status"),
        json!({
            "description": "Status is a return value for calls that don't return other objects.",
            "properties": {
                "apiVersion": s(API_VERSION_DESC),
                "code": {
                    "description": "Suggested HTTP return code for this status, 0 if not set.",
                    "format": "int32",
                    "type": "integer",
                },
                "details": r("StatusDetails", "Extended data associated with the reason.  Each reason may \
define its own extended details. This field is optional and the data returned is not guaranteed to conform \
to any schema except that defined by the reason type."),
                "kind": s(KIND_DESC),
                "message": s("A human-readable description of the status of this operation."),
                "metadata": r("ListMeta", LIST_META_DESC),
                "reason": s("A machine-readable description of why this operation is in the \"Failure\" \
status. If this value is empty there is no information available. A Reason clarifies an HTTP status code \
but does not override it."),
                "status": s("Status of the operation. One of: \"Success\" or \"Failure\". More info: \
https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#spec-and-status"),
            },
            "type": "object",
            "x-kubernetes-group-version-kind": [{ "group": "", "kind": "Status", "version": "v1" }],
        }),
    );
    out.insert(
        m("StatusDetails"),
        json!({
            "description": "StatusDetails is a set of additional properties that MAY be set by the server \
to provide additional information about a response. The Reason field of a Status object defines what \
attributes will be set. Clients must ignore fields that do not match the defined type of each attribute, \
and should assume that any attribute may be empty, invalid, or under defined.",
            "properties": {
                "causes": {
                    "description": "The Causes array includes more details associated with the StatusReason \
failure. Not all StatusReasons may provide detailed causes.",
                    "items": flavor.reference(&m("StatusCause")),
                    "type": "array",
                    "x-kubernetes-list-type": "atomic",
                },
                "group": s("The group attribute of the resource associated with the status StatusReason."),
                "kind": s("The kind attribute of the resource associated with the status StatusReason. On \
some operations may differ from the requested resource Kind. More info: \
https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds"),
                "name": s("The name attribute of the resource associated with the status StatusReason (when \
there is a single name which can be described)."),
                "retryAfterSeconds": {
                    "description": "If specified, the time in seconds before the operation should be \
retried. Some errors may indicate the client must take an alternate action - for those errors this field \
may indicate how long to wait before taking the alternate action.",
                    "format": "int32",
                    "type": "integer",
                },
                "uid": s("UID of the resource. (when there is a single resource which can be described). \
More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#uids"),
            },
            "type": "object",
        }),
    );
    out.insert(
        m("StatusCause"),
        json!({
            "description": "StatusCause provides more information about an api.Status failure, including \
cases when multiple errors are encountered.",
            "properties": {
                "field": s("The field of the resource that has caused this error, as named by its JSON \
serialization. May include dot and postfix notation for nested attributes. Arrays are zero-indexed.  Fields \
may appear more than once in an array of causes due to fields having multiple errors. Optional."),
                "message": s("A human-readable description of the cause of the error.  This field may be \
presented as-is to a reader."),
                "reason": s("A machine-readable description of the cause of the error. If this value is \
empty there is no information available."),
            },
            "type": "object",
        }),
    );
    out.insert(
        m("DeleteOptions"),
        json!({
            "description": "DeleteOptions may be provided when deleting an API object.",
            "properties": {
                "apiVersion": s(API_VERSION_DESC),
                "dryRun": {
                    "description": query_param_doc("dryRun").1,
                    "items": { "default": "", "type": "string" },
                    "type": "array",
                    "x-kubernetes-list-type": "atomic",
                },
                "gracePeriodSeconds": {
                    "description": query_param_doc("gracePeriodSeconds").1,
                    "format": "int64",
                    "type": "integer",
                },
                "kind": s(KIND_DESC),
                "orphanDependents": { "description": query_param_doc("orphanDependents").1, "type": "boolea\
        n" },
                "preconditions": r("Preconditions", "Must be fulfilled before a deletion is carried out. If \
        not possible, a 409 Conflict status will be returned."),
                "propagationPolicy": s(query_param_doc("propagationPolicy").1),
            },
            "type": "object",
        }),
    );
    out.insert(
        m("Preconditions"),
        json!({
            "description": "Preconditions must be fulfilled before an operation (update, delete, etc.) is \
        carried out.",
            "properties": {
                "resourceVersion": s("Specifies the target ResourceVersion"),
                "uid": s("Specifies the target UID."),
            },
            "type": "object",
        }),
    );
    out.insert(
        m("Patch"),
        json!({
            "description": "Patch is provided to give a concrete name and type to the Kubernetes PATCH \
        request body.",
            "type": "object",
        }),
    );
    if needs_scale {
        let scale = |name: &str| format!("io.k8s.api.autoscaling.v1.{name}");
        out.insert(
            SCALE.to_string(),
            json!({
                "description": "Scale represents a scaling request for a resource.",
                "properties": {
                    "apiVersion": s(API_VERSION_DESC),
                    "kind": s(KIND_DESC),
                    "metadata": r("ObjectMeta", OBJECT_META_DESC),
                    "spec": flavor.ref_property(&scale("ScaleSpec"), "spec defines the behavior of the \
scale. More info: \
https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#spec-and-status."),
                    "status": flavor.ref_property(&scale("ScaleStatus"), "status is the current status of \
the scale. More info: \
https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#spec-and-status. \
Read-only."),
                },
                "type": "object",
                "x-kubernetes-group-version-kind": [{ "group": "autoscaling", "kind": "Scale", "versio\
n": "v1" }],
            }),
        );
        out.insert(
            scale("ScaleSpec"),
            json!({
                "description": "ScaleSpec describes the attributes of a scale subresource.",
                "properties": {
                    "replicas": {
                        "description": "replicas is the desired number of instances for the scaled object.",
                        "format": "int32",
                        "type": "integer",
                    },
                },
                "type": "object",
            }),
        );
        out.insert(
            scale("ScaleStatus"),
            json!({
                "description": "ScaleStatus represents the current status of a scale subresource.",
                "properties": {
                    "replicas": {
                        "default": 0,
                        "description": "replicas is the actual number of observed instances of the scaled \
object.",
                        "format": "int32",
                        "type": "integer",
                    },
                    "selector": s("selector is the label query over pods that should match the replicas \
count. This is same as the label selector but in the string format to avoid introspection by clients. The \
string will be in the same format as the query-param syntax. More info about label selectors: \
https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/"),
                },
                "required": ["replicas"],
                "type": "object",
            }),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn to_object(map: BTreeMap<String, Value>) -> Value {
    Value::Object(map.into_iter().collect())
}

/// The distinct group-version paths served, sorted.
fn group_version_paths(defs: &[Arc<ResourceDef>]) -> Vec<String> {
    let mut gvs: Vec<String> = defs.iter().map(|d| group_version_path(d)).collect();
    gvs.sort();
    gvs.dedup();
    gvs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{builtin_resources, defs_from_crd};

    fn database_crd() -> Value {
        serde_json::from_str(
            r#"{
            "metadata": {"name": "databases.stable.example.com"},
            "spec": {
                "group": "stable.example.com",
                "scope": "Namespaced",
                "names": {"plural": "databases", "kind": "Database", "shortNames": ["db"]},
                "versions": [{
                    "name": "v1", "served": true, "storage": true,
                    "subresources": {"status": {}, "scale": {
                        "specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas"}},
                    "schema": {"openAPIV3Schema": {
                        "type": "object",
                        "description": "A database.",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "description": "Desired state.",
                                "required": ["engine", "comment"],
                                "properties": {
                                    "engine": {"type": "string", "enum": ["postgres", "mysql"]},
                                    "comment": {"type": "string", "nullable": true},
                                    "replicas": {"type": "integer"},
                                    "port": {"x-kubernetes-int-or-string": true},
                                    "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": true,
                                              "properties": {"a": {"type": "string"}}},
                                    "template": {"type": "object", "x-kubernetes-embedded-resource": true,
                                                 "x-kubernetes-preserve-unknown-fields": true},
                                    "users": {
                                        "type": "array",
                                        "description": "Users of the database.",
                                        "items": {
                                            "type": "object",
                                            "properties": {
                                                "name": {"type": "string", "description": "User name."},
                                                "roles": {"type": "array", "items": {"type": "string"}}
                                            }
                                        }
                                    }
                                }
                            },
                            "status": {"type": "object", "properties": {"replicas": {"type": "integer"}}}
                        }
                    }}
                }]
            }
        }"#,
        )
        .unwrap()
    }

    fn all_defs() -> Vec<Arc<ResourceDef>> {
        let mut defs: Vec<Arc<ResourceDef>> = builtin_resources().into_iter().map(Arc::new).collect();
        defs.extend(defs_from_crd(&database_crd()).unwrap().into_iter().map(Arc::new));
        defs
    }

    const ITEM: &str = "/apis/stable.example.com/v1/namespaces/{namespace}/databases/{name}";
    const DB_GVK: fn() -> Value =
        || json!({"group": "stable.example.com", "kind": "Database", "version": "v1"});

    fn has_query_param(op: &Value, name: &str) -> bool {
        op["parameters"]
            .as_array()
            .is_some_and(|ps| ps.iter().any(|p| p["name"] == name && p["in"] == "query"))
    }

    /// What kubectl's query param verifier does: every PATCH operation tagged with the GVK must list the
    /// parameter (it stops at the first one it meets, in random order).
    fn verifier_accepts(doc: &Value, gvk: &Value, param: &str) -> bool {
        let patches: Vec<&Value> = doc["paths"]
            .as_object()
            .unwrap()
            .values()
            .filter_map(|item| item.get("patch"))
            .filter(|op| op["x-kubernetes-group-version-kind"] == *gvk)
            .collect();
        !patches.is_empty() && patches.iter().all(|op| has_query_param(op, param))
    }

    #[test]
    fn minimal_v2_protobuf_is_swagger_and_info() {
        let pb = v2_protobuf_minimal();
        assert_eq!(&pb[..5], b"\x0a\x032.0");
        assert_eq!(pb[5], 0x12);
        assert_eq!(usize::from(pb[6]), pb.len() - 7);
        assert_eq!(&pb[7..9], b"\x0a\x0a");
        assert_eq!(&pb[9..19], b"Kubernetes");
    }

    #[test]
    fn names_follow_the_real_server() {
        let defs = all_defs();
        let names: Vec<String> = defs.iter().map(|d| definition_name(d)).collect();
        for expected in [
            "io.k8s.api.core.v1.ConfigMap",
            "io.k8s.api.apps.v1.Deployment",
            "io.k8s.api.coordination.v1.Lease",
            "io.k8s.api.events.v1.Event",
            "io.k8s.api.admissionregistration.v1.ValidatingWebhookConfiguration",
            "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.CustomResourceDefinition",
            "com.example.stable.v1.Database",
        ] {
            assert!(
                names.iter().any(|n| n == expected),
                "{expected} missing from {names:?}"
            );
        }
        let db = defs.iter().find(|d| d.kind == "Database").unwrap();
        assert_eq!(list_definition_name(db), "com.example.stable.v1.DatabaseList");
        assert_eq!(
            operation_prefix(db),
            (
                "StableExampleComV1".to_string(),
                "stableExampleCom_v1".to_string()
            )
        );
    }

    #[test]
    fn v2_has_the_crd_definition_with_gvk_and_meta() {
        let doc = v2(&all_defs(), FeatureGates::default());
        assert_eq!(doc["swagger"], "2.0");
        let db = &doc["definitions"]["com.example.stable.v1.Database"];
        assert_eq!(db["x-kubernetes-group-version-kind"], json!([DB_GVK()]));
        assert_eq!(db["properties"]["apiVersion"]["type"], "string");
        assert_eq!(db["properties"]["kind"]["type"], "string");
        assert_eq!(
            db["properties"]["metadata"]["$ref"],
            "#/definitions/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
        );
        assert_eq!(
            db["properties"]["spec"]["properties"]["users"]["items"]["properties"]["name"]["type"],
            "string"
        );
        let list = &doc["definitions"]["com.example.stable.v1.DatabaseList"];
        assert_eq!(list["x-kubernetes-group-version-kind"][0]["kind"], "DatabaseList");
        assert_eq!(
            list["properties"]["items"]["items"]["$ref"],
            "#/definitions/com.example.stable.v1.Database"
        );

        let meta = &doc["definitions"]["io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"]["properties"];
        for field in [
            "name",
            "namespace",
            "labels",
            "annotations",
            "uid",
            "resourceVersion",
            "generation",
            "creationTimestamp",
            "deletionTimestamp",
            "finalizers",
            "ownerReferences",
            "managedFields",
            "generateName",
        ] {
            assert!(
                meta[field]["description"].as_str().is_some_and(|d| !d.is_empty()),
                "{field}"
            );
        }
        for def in [
            "OwnerReference",
            "ManagedFieldsEntry",
            "Time",
            "ListMeta",
            "Status",
            "Patch",
            "DeleteOptions",
        ] {
            assert!(doc["definitions"][format!("{META}.{def}")].is_object(), "{def}");
        }
        // every $ref resolves
        let text = doc.to_string();
        for part in text.split("\"$ref\":\"#/definitions/").skip(1) {
            let name = &part[..part.find('"').unwrap()];
            assert!(doc["definitions"][name].is_object(), "dangling ref {name}");
        }
    }

    #[test]
    fn v2_patch_of_a_custom_resource_offers_field_validation() {
        let doc = v2(&all_defs(), FeatureGates::default());
        let patch = &doc["paths"][ITEM]["patch"];
        assert_eq!(patch["x-kubernetes-group-version-kind"], DB_GVK());
        assert_eq!(patch["x-kubernetes-action"], "patch");
        for p in ["dryRun", "fieldManager", "fieldValidation", "force"] {
            assert!(has_query_param(patch, p), "{p}");
        }
        let fv = patch["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "fieldValidation")
            .unwrap();
        assert_eq!(fv["type"], "string");
        assert!(
            !patch["consumes"]
                .as_array()
                .unwrap()
                .contains(&json!("application/strategic-merge-patch+json"))
        );
        let post = &doc["paths"]["/apis/stable.example.com/v1/namespaces/{namespace}/databases"]["post"];
        for p in ["dryRun", "fieldManager", "fieldValidation"] {
            assert!(has_query_param(post, p), "{p}");
        }
        assert!(has_query_param(&doc["paths"][ITEM]["put"], "fieldValidation"));
        assert!(verifier_accepts(&doc, &DB_GVK(), "fieldValidation"));
        let deploy = json!({"group": "apps", "kind": "Deployment", "version": "v1"});
        assert!(verifier_accepts(&doc, &deploy, "fieldValidation"));
        let ns = json!({"group": "", "kind": "Namespace", "version": "v1"});
        assert!(verifier_accepts(&doc, &ns, "fieldValidation"));
        assert!(doc["paths"]["/api/v1/namespaces/{name}"]["patch"].is_object());
        assert!(doc["paths"]["/apis/stable.example.com/v1/databases"]["get"].is_object());
    }

    #[test]
    fn v2_schema_drops_what_swagger_2_cannot_say() {
        let doc = v2(&all_defs(), FeatureGates::default());
        let spec = &doc["definitions"]["com.example.stable.v1.Database"]["properties"]["spec"];
        assert_eq!(
            spec["required"],
            json!(["engine"]),
            "nullable fields are no longer required"
        );
        assert!(spec["properties"]["comment"].get("type").is_none());
        assert!(spec["properties"]["comment"].get("nullable").is_none());
        assert!(spec["properties"]["port"].get("anyOf").is_none());
        let extra = &spec["properties"]["extra"];
        assert!(extra.get("type").is_none() && extra.get("properties").is_none());
        assert!(spec["properties"]["template"].get("properties").is_none());
        assert_eq!(spec["properties"]["engine"]["enum"], json!(["postgres", "mysql"]));
    }

    #[test]
    fn v3_index_lists_group_versions_and_their_documents_resolve() {
        let defs = all_defs();
        let index = v3_index(&defs, FeatureGates::default());
        let paths = index["paths"].as_object().unwrap();
        for gv in [
            "api/v1",
            "apis/apps/v1",
            "apis/stable.example.com/v1",
            "apis/apiextensions.k8s.io/v1",
        ] {
            let url = paths[gv]["serverRelativeURL"].as_str().unwrap();
            let (path, hash) = url.split_once("?hash=").unwrap();
            assert_eq!(path, format!("/openapi/v3/{gv}"));
            let doc = v3_group_version(
                &defs,
                path.trim_start_matches("/openapi/v3/"),
                FeatureGates::default(),
            )
            .unwrap();
            assert_eq!(hash, digest(&doc));
            assert_eq!(hash.len(), 32);
            assert!(hash.chars().all(|c| c.is_ascii_digit() || c.is_ascii_uppercase()));
            assert_eq!(doc["openapi"], "3.0.0");
        }
        assert!(v3_group_version(&defs, "apis/nope.example.com/v1", FeatureGates::default()).is_none());
        assert!(v3_group_version(&defs, "/apis/stable.example.com/v1/", FeatureGates::default()).is_some());
    }

    #[test]
    fn hashes_are_stable_and_follow_the_content() {
        let defs = all_defs();
        let mut reversed = defs.clone();
        reversed.reverse();
        assert_eq!(
            v3_index(&defs, FeatureGates::default()),
            v3_index(&reversed, FeatureGates::default())
        );
        let gv = "apis/stable.example.com/v1";
        let before = digest(&v3_group_version(&defs, gv, FeatureGates::default()).unwrap());
        let mut changed = database_crd();
        changed["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["description"] =
            json!("Changed.");
        let mut defs2: Vec<Arc<ResourceDef>> = builtin_resources().into_iter().map(Arc::new).collect();
        defs2.extend(defs_from_crd(&changed).unwrap().into_iter().map(Arc::new));
        assert_ne!(
            before,
            digest(&v3_group_version(&defs2, gv, FeatureGates::default()).unwrap())
        );
        assert_eq!(
            digest(&v3_group_version(&defs, "apis/apps/v1", FeatureGates::default()).unwrap()),
            digest(&v3_group_version(&defs2, "apis/apps/v1", FeatureGates::default()).unwrap())
        );
    }

    #[test]
    fn v3_document_supports_the_field_validation_check() {
        let defs = all_defs();
        let doc = v3_group_version(&defs, "apis/stable.example.com/v1", FeatureGates::default()).unwrap();
        assert!(verifier_accepts(&doc, &DB_GVK(), "fieldValidation"));
        let patch = &doc["paths"][ITEM]["patch"];
        let content = patch["requestBody"]["content"].as_object().unwrap();
        assert!(content.contains_key("application/merge-patch+json"));
        assert!(content.contains_key("application/apply-patch+yaml"));
        assert!(!content.contains_key("application/strategic-merge-patch+json"));
        // status and scale PATCH carry the CRD's GVK too, and the parameter.
        for sub in ["status", "scale"] {
            let op = &doc["paths"][format!("{ITEM}/{sub}")]["patch"];
            assert_eq!(op["x-kubernetes-group-version-kind"], DB_GVK());
            assert!(has_query_param(op, "fieldValidation"));
        }
        let core = v3_group_version(&defs, "api/v1", FeatureGates::default()).unwrap();
        let ns = json!({"group": "", "kind": "Namespace", "version": "v1"});
        assert!(verifier_accepts(&core, &ns, "fieldValidation"));
        // built-in scale is autoscaling/v1 Scale
        let apps = v3_group_version(&defs, "apis/apps/v1", FeatureGates::default()).unwrap();
        let scale = &apps["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}/scale"]["patch"];
        assert_eq!(scale["x-kubernetes-group-version-kind"]["kind"], "Scale");
        assert!(apps["components"]["schemas"][SCALE].is_object());
    }

    /// Resolve a schema's `$ref` (directly or through a single `allOf`) like kubectl explain does.
    fn resolve<'a>(doc: &'a Value, s: &'a Value) -> &'a Value {
        let r = s
            .get("$ref")
            .or_else(|| s.pointer("/allOf/0/$ref"))
            .and_then(Value::as_str);
        match r {
            Some(r) => {
                let name = r.trim_start_matches("#/components/schemas/");
                &doc["components"]["schemas"][name]
            }
            None => s,
        }
    }

    #[test]
    fn v3_document_supports_explain() {
        let defs = all_defs();
        let doc = v3_group_version(&defs, "apis/stable.example.com/v1", FeatureGates::default()).unwrap();
        // kubectl explain finds the GVK through the operations of the resource's paths ...
        let list = &doc["paths"]["/apis/stable.example.com/v1/namespaces/{namespace}/databases"]["get"];
        let gvk = &list["x-kubernetes-group-version-kind"];
        assert_eq!(*gvk, DB_GVK());
        // ... then the schema whose GVK list contains it.
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        let found: Vec<&Value> = schemas
            .values()
            .filter(|s| {
                s["x-kubernetes-group-version-kind"]
                    .as_array()
                    .is_some_and(|a| a.contains(gvk))
            })
            .collect();
        assert_eq!(found.len(), 1);
        let db = found[0];
        assert_eq!(db["description"], "A database.");
        let metadata = resolve(&doc, &db["properties"]["metadata"]);
        assert!(metadata["properties"]["labels"].is_object());
        let owner = resolve(&doc, &metadata["properties"]["ownerReferences"]["items"]);
        assert_eq!(owner["required"], json!(["apiVersion", "kind", "name", "uid"]));
        let users = &db["properties"]["spec"]["properties"]["users"];
        assert_eq!(users["items"]["properties"]["name"]["description"], "User name.");
        // v3 keeps what v2 drops.
        let spec = &db["properties"]["spec"];
        assert_eq!(spec["properties"]["comment"]["nullable"], true);
        assert_eq!(
            spec["properties"]["port"]["anyOf"],
            json!([{"type": "integer"}, {"type": "string"}])
        );
        assert_eq!(spec["properties"]["extra"]["properties"]["a"]["type"], "string");
        let template = &spec["properties"]["template"];
        assert_eq!(template["properties"]["kind"]["type"], "string");
        assert_eq!(template["required"], json!(["kind", "apiVersion"]));
        // all references resolve within the document
        let text = doc.to_string();
        for part in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
            let name = &part[..part.find('"').unwrap()];
            assert!(schemas.contains_key(name), "dangling ref {name}");
        }
    }

    #[test]
    fn builtins_have_their_published_schemas() {
        let defs = all_defs();
        let apps = v3_group_version(&defs, "apis/apps/v1", FeatureGates::default()).unwrap();
        let schemas = &apps["components"]["schemas"];
        let d = &schemas["io.k8s.api.apps.v1.Deployment"];
        assert!(d.get("x-kubernetes-preserve-unknown-fields").is_none());
        assert_eq!(
            d["properties"]["spec"]["allOf"][0]["$ref"],
            "#/components/schemas/io.k8s.api.apps.v1.DeploymentSpec"
        );
        assert_eq!(
            schemas["io.k8s.api.core.v1.PodSpec"]["properties"]["restartPolicy"]["type"],
            "string"
        );
        assert_eq!(d["x-kubernetes-group-version-kind"][0]["kind"], "Deployment");
        assert!(d["properties"]["spec"].is_object());
        let item = &apps["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"];
        assert_eq!(item["get"]["operationId"], "readAppsV1NamespacedDeployment");
        assert_eq!(item["delete"]["x-kubernetes-action"], "delete");
        let core = v3_group_version(&defs, "api/v1", FeatureGates::default()).unwrap();
        let ns = &core["paths"]["/api/v1/namespaces"];
        assert_eq!(ns["get"]["operationId"], "listCoreV1Namespace");
        assert!(ns.get("delete").is_none(), "namespaces have no deletecollection");
        assert!(core["paths"]["/api/v1/configmaps"]["get"].is_object());
        assert_eq!(core["info"]["title"], "Kubernetes");
    }

    #[test]
    fn cluster_scoped_custom_resources_have_no_namespace_paths() {
        let mut crd = database_crd();
        crd["spec"]["scope"] = json!("Cluster");
        let defs: Vec<Arc<ResourceDef>> = defs_from_crd(&crd).unwrap().into_iter().map(Arc::new).collect();
        let doc = v3_group_version(&defs, "apis/stable.example.com/v1", FeatureGates::default()).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        assert!(paths.keys().all(|p| !p.contains("{namespace}")));
        let item = &paths["/apis/stable.example.com/v1/databases/{name}"];
        assert_eq!(item["patch"]["operationId"], "patchStableExampleComV1Database");
        assert_eq!(item["parameters"].as_array().unwrap().len(), 2);
        assert_eq!(doc["info"]["title"], "Kubernetes CRD Swagger");
    }
}
