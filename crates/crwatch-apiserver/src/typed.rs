//! Decoding a built-in kind as the real server decodes it into its Go type: walking the object
//! along the kind's published schema ([`crate::builtin`]), a value of the wrong JSON type is
//! refused with encoding/json's wording (`json: cannot unmarshal string into Go struct field
//! DeploymentSpec.spec.replicas of type int32`), a field the type does not have is dropped and
//! reported (`spec.template.spec.containers[0].imagePullPolicyy`), and a `null` in a known field
//! is dropped (Go decodes it to the zero value, which `omitempty` leaves out again).
//!
//! The walk is iterative over the object (an explicit stack), so any depth the request decoder
//! accepted is walked without recursion; schemas recurse only as deep as the object does.

use serde_json::Value;

use crate::builtin;
use crate::registry::ResourceDef;

/// Why a built-in object cannot be decoded: encoding/json's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeError(pub String);

/// Decode `obj` as `def`'s Go type: `Err` with the decoder's message for a value of the wrong
/// type; otherwise unknown fields are removed and their paths returned (for `fieldValidation`).
/// Kinds without a published schema (custom resources) are left alone.
pub fn decode(def: &ResourceDef, obj: &mut Value) -> Result<Vec<String>, TypeError> {
    let Some(name) = builtin::definition_of(def) else {
        return Ok(vec![]);
    };
    let Some(schema) = builtin::definitions().get(name) else {
        return Ok(vec![]);
    };
    let mut unknown = vec![];
    let mut stack = vec![Node {
        value: obj,
        schema,
        definition: Some(name),
        path: String::new(),
        field: String::new(),
        strukt: def.kind.clone(),
    }];
    while let Some(node) = stack.pop() {
        node.visit(&mut stack, &mut unknown)?;
    }
    unknown.sort();
    Ok(unknown)
}

/// The fields the published schema requires (Go struct fields without `omitempty`, which the
/// real validation checks) that `obj` lacks or leaves empty, as `(path, "Required value")`
/// causes: `spec.template.spec.containers[0].name`. Status is the controllers' business and is
/// not checked; the object is walked iteratively, like [`decode`].
pub fn missing_required(def: &ResourceDef, obj: &Value) -> Vec<crate::status::Cause> {
    let Some(schema) = builtin::definition_of(def).and_then(|n| builtin::definitions().get(n)) else {
        return vec![];
    };
    let mut out = vec![];
    let mut stack: Vec<(&Value, &'static Value, String)> = vec![(obj, schema, String::new())];
    while let Some((value, schema, path)) = stack.pop() {
        let Some((schema, definition)) = follow(schema, None) else {
            continue;
        };
        if definition.and_then(special_type).is_some() {
            continue;
        }
        match value {
            Value::Object(map) => {
                let Some(props) = schema.get("properties").and_then(Value::as_object) else {
                    if let Some(values) = schema.get("additionalProperties").filter(|a| a.is_object()) {
                        for (k, v) in map {
                            stack.push((v, values, format!("{path}[{k}]")));
                        }
                    }
                    continue;
                };
                for field in schema
                    .get("required")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let Some(field) = field.as_str() else { continue };
                    let empty = match map.get(field) {
                        None | Some(Value::Null) => true,
                        Some(Value::String(s)) => s.is_empty(),
                        Some(_) => false,
                    };
                    if empty {
                        out.push(crate::status::Cause::new(
                            "FieldValueRequired",
                            join(&path, field),
                            "Required value",
                        ));
                    }
                }
                for (k, v) in map {
                    if path.is_empty() && matches!(k.as_str(), "status" | "metadata") {
                        continue;
                    }
                    if let Some(child) = props.get(k) {
                        stack.push((v, child, join(&path, k)));
                    }
                }
            }
            Value::Array(items) => {
                if let Some(item) = schema.get("items") {
                    for (i, v) in items.iter().enumerate() {
                        stack.push((v, item, format!("{path}[{i}]")));
                    }
                }
            }
            _ => {}
        }
    }
    out.sort_by(|a, b| a.field.cmp(&b.field));
    out
}

/// One value to decode and where it is.
struct Node<'a> {
    value: &'a mut Value,
    /// Its schema, `$ref` not yet followed.
    schema: &'static Value,
    /// The definition the schema is (the kind's own at the root).
    definition: Option<&'static str>,
    /// Path for unknown fields: `spec.containers[0].foo`.
    path: String,
    /// encoding/json's field path: `spec.containers.foo` (no indices or keys).
    field: String,
    /// The innermost Go struct, as encoding/json names it in errors.
    strukt: String,
}

impl<'a> Node<'a> {
    fn visit(self, stack: &mut Vec<Node<'a>>, unknown: &mut Vec<String>) -> Result<(), TypeError> {
        let Node {
            value,
            schema,
            definition,
            path,
            field,
            strukt,
        } = self;
        let Some((schema, definition)) = follow(schema, definition) else {
            return Ok(());
        };
        if value.is_null() {
            return Ok(());
        }
        if let Some(special) = definition.and_then(special_type) {
            return check_special(special, value, &field, &strukt);
        }
        let ty = || go_type(schema, definition);
        match schema.get("type").and_then(Value::as_str) {
            Some("object") => {
                if !value.is_object() {
                    return Err(mismatch(value, &field, &strukt, &ty()));
                }
                let Value::Object(map) = value else {
                    return Ok(());
                };
                if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                    let dropped: Vec<String> =
                        map.keys().filter(|k| !props.contains_key(*k)).cloned().collect();
                    for k in dropped {
                        if let Some(v) = map.remove(&k) {
                            crate::decode::drop_deep(v);
                        }
                        unknown.push(join(&path, &k));
                    }
                    map.retain(|_, v| !v.is_null());
                    // Fields of a named definition belong to that Go struct.
                    let child_struct = definition.map(short_name).unwrap_or_else(|| strukt.clone());
                    for (k, v) in map.iter_mut() {
                        if let Some(child) = props.get(k) {
                            stack.push(Node {
                                value: v,
                                schema: child,
                                definition: None,
                                path: join(&path, k),
                                field: join(&field, k),
                                strukt: child_struct.clone(),
                            });
                        }
                    }
                } else if let Some(values) = schema.get("additionalProperties").filter(|a| a.is_object()) {
                    for (k, v) in map.iter_mut() {
                        stack.push(Node {
                            value: v,
                            schema: values,
                            definition: None,
                            path: format!("{path}[{k}]"),
                            field: field.clone(),
                            strukt: strukt.clone(),
                        });
                    }
                }
            }
            Some("array") => {
                if !value.is_array() {
                    return Err(mismatch(value, &field, &strukt, &ty()));
                }
                let (Value::Array(items), Some(item_schema)) = (value, schema.get("items")) else {
                    return Ok(());
                };
                for (i, v) in items.iter_mut().enumerate() {
                    stack.push(Node {
                        value: v,
                        schema: item_schema,
                        definition: None,
                        path: format!("{path}[{i}]"),
                        field: field.clone(),
                        strukt: strukt.clone(),
                    });
                }
            }
            Some("string") if !value.is_string() => return Err(mismatch(value, &field, &strukt, &ty())),
            Some("boolean") if !value.is_boolean() => return Err(mismatch(value, &field, &strukt, "bool")),
            Some("number") if !value.is_number() => return Err(mismatch(value, &field, &strukt, "float64")),
            Some("integer") => {
                let ty = ty();
                let Value::Number(n) = value else {
                    return Err(mismatch(value, &field, &strukt, &ty));
                };
                let fits = match ty.as_str() {
                    "int32" => n.as_i64().is_some_and(|i| i32::try_from(i).is_ok()),
                    _ => n.as_i64().is_some(),
                };
                if !fits {
                    return Err(TypeError(format!(
                        "json: cannot unmarshal number {n} into Go struct field {strukt}.{field} of type {ty}"
                    )));
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// Types whose Go implementation decodes itself (their errors carry no field context).
#[derive(Clone, Copy)]
enum Special {
    IntOrString,
    Quantity,
    Time,
    /// Arbitrary JSON (`RawExtension`, apiextensions `JSON`, `FieldsV1`).
    Any,
}

fn special_type(definition: &str) -> Option<Special> {
    Some(match definition {
        "io.k8s.apimachinery.pkg.util.intstr.IntOrString" => Special::IntOrString,
        "io.k8s.apimachinery.pkg.api.resource.Quantity" => Special::Quantity,
        "io.k8s.apimachinery.pkg.apis.meta.v1.Time" | "io.k8s.apimachinery.pkg.apis.meta.v1.MicroTime" => {
            Special::Time
        }
        "io.k8s.apimachinery.pkg.runtime.RawExtension"
        | "io.k8s.apimachinery.pkg.apis.meta.v1.FieldsV1"
        | "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.JSON"
        | "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.JSONSchemaPropsOrArray"
        | "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.JSONSchemaPropsOrBool"
        | "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.JSONSchemaPropsOrStringArray" => {
            Special::Any
        }
        _ => return None,
    })
}

/// The suffixes `resource.ParseQuantity` knows (binary, decimal SI); exponents are checked apart.
const QUANTITY_SUFFIXES: &[&str] = &[
    "", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "n", "u", "m", "k", "M", "G", "T", "P", "E",
];

/// `resource.ParseQuantity`'s acceptance, with its error messages.
fn quantity_error(text: &str) -> Option<&'static str> {
    const FORMAT: &str =
        "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'";
    let body = text.strip_prefix(['+', '-']).unwrap_or(text);
    let digits = body
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(body.len());
    let (number, suffix) = body.split_at(digits);
    if number.is_empty() || number == "." || number.matches('.').count() > 1 {
        return Some(FORMAT);
    }
    if !suffix.chars().all(|c| "eEinumkKMGTP+-0123456789".contains(c)) {
        return Some(FORMAT);
    }
    let exponent = suffix
        .strip_prefix(['e', 'E'])
        .map(|e| e.strip_prefix(['+', '-']).unwrap_or(e))
        .is_some_and(|e| !e.is_empty() && e.chars().all(|c| c.is_ascii_digit()));
    if !exponent && !QUANTITY_SUFFIXES.contains(&suffix) {
        return Some("unable to parse quantity's suffix");
    }
    None
}

fn check_special(special: Special, value: &mut Value, field: &str, strukt: &str) -> Result<(), TypeError> {
    match special {
        Special::Any => Ok(()),
        // `intstr.IntOrString.UnmarshalJSON`: a string, else an int32.
        Special::IntOrString => match value {
            Value::String(_) => Ok(()),
            Value::Number(n) if n.as_i64().is_some_and(|i| i32::try_from(i).is_ok()) => Ok(()),
            Value::Number(n) => Err(TypeError(format!(
                "json: cannot unmarshal number {n} into Go value of type int32"
            ))),
            other => Err(TypeError(format!(
                "json: cannot unmarshal {} into Go value of type int32",
                crate::decode::json_type_name(other)
            ))),
        },
        // `resource.Quantity.UnmarshalJSON` takes the text of a string or a number.
        Special::Quantity => {
            let text = match value {
                Value::String(s) => s.trim().to_string(),
                Value::Number(n) => n.to_string(),
                other => return Err(mismatch(other, field, strukt, "resource.Quantity")),
            };
            if let Some(e) = quantity_error(&text) {
                return Err(TypeError(e.into()));
            }
            // Kept as text, as the Go type serializes it.
            *value = Value::String(text);
            Ok(())
        }
        // `metav1.Time.UnmarshalJSON`: a JSON string in RFC 3339.
        Special::Time => match value {
            Value::String(s) if s.is_empty() => Ok(()),
            Value::String(s) => match chrono::DateTime::parse_from_rfc3339(s) {
                Ok(_) => Ok(()),
                Err(_) => Err(TypeError(format!(
                    "parsing time \"{s}\" as \"2006-01-02T15:04:05Z07:00\": cannot parse \"{s}\" as \"2006\""
                ))),
            },
            other => Err(TypeError(format!(
                "json: cannot unmarshal {} into Go value of type string",
                crate::decode::json_type_name(other)
            ))),
        },
    }
}

/// The definition a schema refers to: `{"$ref": ..}`, or `{"allOf": [{"$ref": ..}], ..}` where
/// the reference has siblings (a description).
fn reference(schema: &Value) -> Option<&str> {
    schema.get("$ref").and_then(Value::as_str).or_else(|| {
        match schema.get("allOf").and_then(Value::as_array) {
            Some(all) if all.len() == 1 => all[0].get("$ref").and_then(Value::as_str),
            _ => None,
        }
    })
}

/// A schema with its reference followed, and the definition it is (`definition` when it is no
/// reference); `None` for a reference to nothing.
fn follow(
    schema: &'static Value,
    definition: Option<&'static str>,
) -> Option<(&'static Value, Option<&'static str>)> {
    match reference(schema) {
        Some(r) => Some((builtin::resolve(r)?, r.strip_prefix("#/definitions/"))),
        None => Some((schema, definition)),
    }
}

/// `io.k8s.api.apps.v1.DeploymentSpec` → `DeploymentSpec`.
fn short_name(definition: &str) -> String {
    definition.rsplit('.').next().unwrap_or(definition).to_string()
}

/// How Go's reflect names the type a schema decodes into: `int32`, `string`, `[]v1.Container`,
/// `map[string]string`, `v1.DeploymentSpec`.
fn go_type(schema: &Value, definition: Option<&str>) -> String {
    if let Some(name) = definition {
        return package_type(name);
    }
    if let Some(r) = reference(schema) {
        return package_type(r.trim_start_matches("#/definitions/"));
    }
    match schema.get("type").and_then(Value::as_str) {
        Some("integer") => match schema.get("format").and_then(Value::as_str) {
            Some("int32") => "int32".into(),
            _ => "int64".into(),
        },
        Some("number") => "float64".into(),
        Some("boolean") => "bool".into(),
        Some("string") => match schema.get("format").and_then(Value::as_str) {
            Some("byte") => "[]uint8".into(),
            _ => "string".into(),
        },
        Some("array") => format!(
            "[]{}",
            schema
                .get("items")
                .map(|i| go_type(i, None))
                .unwrap_or_else(|| "interface {}".into())
        ),
        Some("object") => match schema.get("additionalProperties").filter(|a| a.is_object()) {
            Some(values) => format!("map[string]{}", go_type(values, None)),
            None => "map[string]interface {}".into(),
        },
        _ => "interface {}".into(),
    }
}

/// `io.k8s.api.apps.v1.DeploymentSpec` → `v1.DeploymentSpec`.
fn package_type(definition: &str) -> String {
    let mut parts = definition.rsplit('.');
    match (parts.next(), parts.next()) {
        (Some(t), Some(p)) => format!("{p}.{t}"),
        _ => definition.to_string(),
    }
}

fn mismatch(value: &Value, field: &str, strukt: &str, ty: &str) -> TypeError {
    if field.is_empty() {
        return TypeError(format!(
            "json: cannot unmarshal {} into Go value of type {ty}",
            crate::decode::json_type_name(value)
        ));
    }
    TypeError(format!(
        "json: cannot unmarshal {} into Go struct field {strukt}.{field} of type {ty}",
        crate::decode::json_type_name(value)
    ))
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}
