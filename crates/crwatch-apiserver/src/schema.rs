//! CRD structural schemas for custom resources: pruning, defaulting, validation, structural checks.
//!
//! The real server runs these steps in this order when it decodes a custom resource: [`prune`]
//! (unknown fields), [`apply_defaults`] (which first drops non-nullable nulls without a default), then
//! [`validate`]. Error texts follow k8s.io/apimachinery's `field.Error` (v1.33 rendering) fed by
//! kube-openapi's validator, including its quirks (e.g. type errors carry the offending JSON type name as
//! the bad value, and `anyOf`/`oneOf`/`allOf`/`not` failures are reported under the field `<nil>`).

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;

use regex::Regex;
use serde_json::{Map, Value};

/// Kinds of field errors, as in k8s.io/apimachinery/pkg/util/validation/field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorType {
    /// A referenced value was not found (`FieldValueNotFound`).
    NotFound,
    /// A required value is missing (`FieldValueRequired`).
    Required,
    /// A value that must be unique is repeated (`FieldValueDuplicate`).
    Duplicate,
    /// A malformed or out-of-range value (`FieldValueInvalid`).
    Invalid,
    /// A value outside an enumeration (`FieldValueNotSupported`).
    NotSupported,
    /// A value not permitted here (`FieldValueForbidden`).
    Forbidden,
    /// A value that is too long (`FieldValueTooLong`).
    TooLong,
    /// A list or map with too many items (`FieldValueTooMany`).
    TooMany,
    /// An error not caused by the user's input (`InternalError`).
    Internal,
    /// A value of the wrong JSON type (`FieldValueTypeInvalid`).
    TypeInvalid,
}

impl ErrorType {
    /// The `reason` of a StatusCause, e.g. `FieldValueRequired`.
    pub fn reason(self) -> &'static str {
        match self {
            ErrorType::NotFound => "FieldValueNotFound",
            ErrorType::Required => "FieldValueRequired",
            ErrorType::Duplicate => "FieldValueDuplicate",
            ErrorType::Invalid => "FieldValueInvalid",
            ErrorType::NotSupported => "FieldValueNotSupported",
            ErrorType::Forbidden => "FieldValueForbidden",
            ErrorType::TooLong => "FieldValueTooLong",
            ErrorType::TooMany => "FieldValueTooMany",
            ErrorType::Internal => "InternalError",
            ErrorType::TypeInvalid => "FieldValueTypeInvalid",
        }
    }

    /// The human label that starts a cause message, e.g. `Required value`.
    pub fn label(self) -> &'static str {
        match self {
            ErrorType::NotFound => "Not found",
            ErrorType::Required => "Required value",
            ErrorType::Duplicate => "Duplicate value",
            ErrorType::Invalid | ErrorType::TypeInvalid => "Invalid value",
            ErrorType::NotSupported => "Unsupported value",
            ErrorType::Forbidden => "Forbidden",
            ErrorType::TooLong => "Too long",
            ErrorType::TooMany => "Too many",
            ErrorType::Internal => "Internal error",
        }
    }
}

/// One field-level validation error, like k8s.io/apimachinery's `field.Error`.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    /// What kind of problem this is.
    pub error_type: ErrorType,
    /// The field path, e.g. `spec.users[1].username` (or `<nil>` for errors the real server reports
    /// without a path).
    pub field: String,
    /// The offending value; `None` when the message omits it.
    pub bad_value: Option<Value>,
    /// Extra explanation appended to the message; may be empty.
    pub detail: String,
}

impl FieldError {
    fn new(
        error_type: ErrorType,
        field: impl Into<String>,
        bad_value: Option<Value>,
        detail: String,
    ) -> Self {
        FieldError {
            error_type,
            field: field.into(),
            bad_value,
            detail,
        }
    }

    /// `Required value[: detail]`.
    pub fn required(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(ErrorType::Required, field, None, detail.into())
    }

    /// `Invalid value: <value>: detail`.
    pub fn invalid(field: impl Into<String>, value: Value, detail: impl Into<String>) -> Self {
        Self::new(ErrorType::Invalid, field, Some(value), detail.into())
    }

    /// `Invalid value: <value>: detail` with the `FieldValueTypeInvalid` reason.
    pub fn type_invalid(field: impl Into<String>, value: Value, detail: impl Into<String>) -> Self {
        Self::new(ErrorType::TypeInvalid, field, Some(value), detail.into())
    }

    /// `Unsupported value: <value>: supported values: "a", "b"`.
    pub fn not_supported(field: impl Into<String>, value: Value, supported: &[String]) -> Self {
        let detail = if supported.is_empty() {
            String::new()
        } else {
            let quoted: Vec<String> = supported.iter().map(|s| go_quote(s)).collect();
            format!("supported values: {}", quoted.join(", "))
        };
        Self::new(ErrorType::NotSupported, field, Some(value), detail)
    }

    /// `Forbidden: detail`.
    pub fn forbidden(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(ErrorType::Forbidden, field, None, detail.into())
    }

    /// `Too long: may not be more than <max> bytes` (v1.32+ wording; a negative max gives
    /// `value is too long`).
    pub fn too_long(field: impl Into<String>, max: i64) -> Self {
        let detail = match max {
            m if m < 0 => "value is too long".to_string(),
            1 => "may not be more than 1 byte".to_string(),
            m => format!("may not be more than {m} bytes"),
        };
        Self::new(ErrorType::TooLong, field, None, detail)
    }

    /// `Too many: <actual>: must have at most <max> items` (negative numbers are left out as the real
    /// server does).
    pub fn too_many(field: impl Into<String>, actual: i64, max: i64) -> Self {
        let detail = match max {
            m if m < 0 => "has too many items".to_string(),
            1 => "must have at most 1 item".to_string(),
            m => format!("must have at most {m} items"),
        };
        let value = (actual >= 0).then(|| Value::from(actual));
        Self::new(ErrorType::TooMany, field, value, detail)
    }

    /// `Duplicate value: <value>`.
    pub fn duplicate(field: impl Into<String>, value: Value) -> Self {
        Self::new(ErrorType::Duplicate, field, Some(value), String::new())
    }

    /// `Invalid value: <rendered>: detail`, for a bad value the real server prints with Go's `%#v` of
    /// a type that has no JSON form here (like a CRD's `apiextensions.ValidationRule`).
    pub fn invalid_raw(field: impl Into<String>, rendered: String, detail: impl Into<String>) -> Self {
        let detail = detail.into();
        Self::new(ErrorType::Invalid, field, None, format!("{rendered}: {detail}"))
    }

    /// `Internal error: detail`.
    pub fn internal(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(ErrorType::Internal, field, None, detail.into())
    }

    /// The `reason` of a StatusCause: "FieldValueRequired", "FieldValueInvalid", "FieldValueNotSupported",
    /// "FieldValueTooLong", "FieldValueTooMany", "FieldValueForbidden", "FieldValueDuplicate",
    /// "FieldValueTypeInvalid"...
    pub fn reason(&self) -> &'static str {
        self.error_type.reason()
    }

    /// The cause message without the field, e.g. `Unsupported value: "Oracle": supported values:
    /// "PostgreSQL", "MySQL"` or `Required value` or `Invalid value: "abc": spec.size in body should
    /// match '^[0-9]+'`.
    pub fn message(&self) -> String {
        let label = self.error_type.label();
        let mut s = match (self.error_type, &self.bad_value) {
            (ErrorType::Required | ErrorType::Forbidden | ErrorType::TooLong | ErrorType::Internal, _)
            | (_, None) => label.to_string(),
            (_, Some(v)) => format!("{label}: {}", render_bad_value(v)),
        };
        if !self.detail.is_empty() {
            s.push_str(": ");
            s.push_str(&self.detail);
        }
        s
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message())
    }
}

impl std::error::Error for FieldError {}

// ---------------------------------------------------------------------------------------------------
// Go-compatible rendering. The real messages come from Go's fmt verbs, so numbers, strings and maps
// must be printed the way Go prints them for the texts to match byte for byte.
// ---------------------------------------------------------------------------------------------------

/// Renders a bad value the way apimachinery v1.33 `ErrorBody` does: strings (and null, which becomes the
/// string "null") quoted, numbers and booleans bare, maps and lists in Go's `%#v` syntax.
fn render_bad_value(v: &Value) -> String {
    match v {
        Value::Null => go_quote("null"),
        Value::String(s) => go_quote(s),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => go_number(n),
        Value::Object(_) | Value::Array(_) => go_sharp_v(v),
    }
}

fn go_number(n: &serde_json::Number) -> String {
    if let Some(i) = n.as_i64() {
        i.to_string()
    } else if let Some(u) = n.as_u64() {
        u.to_string()
    } else {
        go_float(n.as_f64().unwrap_or(0.0))
    }
}

/// Go's `%#v` for values decoded into `interface{}`.
fn go_sharp_v(v: &Value) -> String {
    match v {
        Value::Null => "interface {}(nil)".to_string(),
        Value::String(s) => go_quote(s),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => go_number(n),
        Value::Array(a) => {
            let items: Vec<String> = a.iter().map(go_sharp_v).collect();
            format!("[]interface {{}}{{{}}}", items.join(", "))
        }
        Value::Object(m) => {
            // Go prints map keys sorted.
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let items: Vec<String> = keys
                .iter()
                .map(|k| format!("{}:{}", go_quote(k), go_sharp_v(&m[k.as_str()])))
                .collect();
            format!("map[string]interface {{}}{{{}}}", items.join(", "))
        }
    }
}

/// Go's `%v` for a float64: shortest representation, exponent form below 1e-4 and from 1e6 on.
fn go_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".to_string();
    }
    if f.is_infinite() {
        return if f > 0.0 { "+Inf" } else { "-Inf" }.to_string();
    }
    if f == 0.0 {
        return if f.is_sign_negative() { "-0" } else { "0" }.to_string();
    }
    let sci = format!("{f:e}");
    let (mantissa, exp) = match sci.split_once('e') {
        Some((m, e)) => (m.to_string(), e.parse::<i32>().unwrap_or(0)),
        None => (sci.clone(), 0),
    };
    if !(-4..6).contains(&exp) {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    } else {
        format!("{f}")
    }
}

/// Go's `strconv.Quote`.
/// A string quoted the way Go's `%q` (strconv.Quote) quotes it.
pub(crate) fn go_quote_str(s: &str) -> String {
    go_quote(s)
}

fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if c.is_control() || (c.is_whitespace() && c != ' ') || c == '\u{feff}' => {
                if (c as u32) < 0x10000 {
                    out.push_str(&format!("\\u{:04x}", c as u32));
                } else {
                    out.push_str(&format!("\\U{:08x}", c as u32));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// JSON with object keys sorted, as Go's `json.Marshal` writes maps; used for enum value lists and
/// for set comparisons that must ignore key order.
fn canonical_json(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let items: Vec<String> = keys
                .iter()
                .map(|k| {
                    format!(
                        "{}:{}",
                        Value::String((*k).clone()),
                        canonical_json(&m[k.as_str()])
                    )
                })
                .collect();
            format!("{{{}}}", items.join(","))
        }
        Value::Array(a) => {
            let items: Vec<String> = a.iter().map(canonical_json).collect();
            format!("[{}]", items.join(","))
        }
        Value::Number(n) => match n.as_f64() {
            // Go's encoder switches to exponent form only outside [1e-6, 1e21).
            Some(f) if n.is_f64() && f != 0.0 && (f.abs() < 1e-6 || f.abs() >= 1e21) => {
                let s = go_float(f);
                s.replace("e-0", "e-")
            }
            _ => v.to_string(),
        },
        _ => v.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------------
// Schema access helpers (the schema is the CRD's openAPIV3Schema as JSON).
// ---------------------------------------------------------------------------------------------------

fn flag(s: &Value, key: &str) -> bool {
    s.get(key).and_then(Value::as_bool).unwrap_or(false)
}

fn properties(s: &Value) -> Option<&Map<String, Value>> {
    s.get("properties").and_then(Value::as_object)
}

fn items_schema(s: &Value) -> Option<&Value> {
    s.get("items").filter(|v| v.is_object())
}

/// additionalProperties in its three shapes; `Bool(_)` has no schema, like a nil `Structural` inside a
/// non-nil `StructuralOrBool`.
enum AddProps<'a> {
    Absent,
    Bool(bool),
    Schema(&'a Value),
}

fn additional_properties(s: &Value) -> AddProps<'_> {
    match s.get("additionalProperties") {
        Some(Value::Bool(b)) => AddProps::Bool(*b),
        Some(v @ Value::Object(_)) => AddProps::Schema(v),
        _ => AddProps::Absent,
    }
}

fn schema_types(s: &Value) -> Vec<&str> {
    if flag(s, "x-kubernetes-int-or-string") {
        return vec!["integer", "string"];
    }
    match s.get("type").and_then(Value::as_str) {
        Some(t) if !t.is_empty() => vec![t],
        _ => Vec::new(),
    }
}

fn has_default(s: &Value) -> bool {
    s.get("default").is_some_and(|d| !d.is_null())
}

fn is_meta_field(k: &str) -> bool {
    matches!(k, "apiVersion" | "kind" | "metadata")
}

fn child_path(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

// ---------------------------------------------------------------------------------------------------
// Pruning
// ---------------------------------------------------------------------------------------------------

/// Remove fields not in the schema (unless x-kubernetes-preserve-unknown-fields). At the root,
/// apiVersion, kind and metadata are kept (metadata itself is not pruned by the CRD schema except that
/// only name/generateName may be constrained). Returns the paths of removed fields, e.g. ["spec.foo",
/// "spec.users[0].bar"], sorted, in the form the real server uses for fieldValidation warnings/errors
/// (`unknown field "spec.foo"`).
pub fn prune(schema: &Value, obj: &mut Value) -> Vec<String> {
    let mut pruned = Vec::new();
    deep_stack(|| prune_node(obj, Some(schema), true, "", &mut pruned));
    pruned.sort();
    pruned
}

fn prune_node(x: &mut Value, s: Option<&Value>, force_embedded: bool, path: &str, out: &mut Vec<String>) {
    if let Some(s) = s.filter(|s| flag(s, "x-kubernetes-preserve-unknown-fields")) {
        skip_prune(x, s, force_embedded, path, out);
        return;
    }
    match x {
        Value::Object(map) => {
            let Some(s) = s else {
                for k in map.keys() {
                    out.push(child_path(path, k));
                }
                map.clear();
                return;
            };
            prune_object(map, s, force_embedded, path, false, out);
        }
        Value::Array(items) => {
            let item_schema = s.and_then(items_schema);
            for (i, v) in items.iter_mut().enumerate() {
                prune_node(v, item_schema, false, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// Prune the fields of one object against schema `s`: specified properties and
/// additionalProperties by their own schemas; unknown fields are removed (and reported)
/// unless `keep_unknown` (inside x-kubernetes-preserve-unknown-fields).
fn prune_object(
    map: &mut Map<String, Value>,
    s: &Value,
    force_embedded: bool,
    path: &str,
    keep_unknown: bool,
    out: &mut Vec<String>,
) {
    let embedded = force_embedded || flag(s, "x-kubernetes-embedded-resource");
    let props = properties(s);
    let mut remove = Vec::new();
    for (k, v) in map.iter_mut() {
        if embedded && is_meta_field(k) {
            continue;
        }
        if let Some(p) = props.and_then(|p| p.get(k)) {
            prune_node(v, Some(p), false, &child_path(path, k), out);
        } else {
            match additional_properties(s) {
                AddProps::Schema(a) => prune_node(v, Some(a), false, &child_path(path, k), out),
                AddProps::Bool(_) => prune_node(v, None, false, &child_path(path, k), out),
                AddProps::Absent if keep_unknown => {}
                AddProps::Absent => {
                    out.push(child_path(path, k));
                    remove.push(k.clone());
                }
            }
        }
    }
    for k in remove {
        map.shift_remove(&k);
    }
}

/// Inside x-kubernetes-preserve-unknown-fields unknown fields stay, but specified fields below are still
/// pruned by their own schemas.
fn skip_prune(x: &mut Value, s: &Value, force_embedded: bool, path: &str, out: &mut Vec<String>) {
    match x {
        Value::Object(map) => prune_object(map, s, force_embedded, path, true, out),
        Value::Array(items) => {
            if let Some(item_schema) = items_schema(s) {
                for (i, v) in items.iter_mut().enumerate() {
                    skip_prune(v, item_schema, false, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------------------
// Defaulting
// ---------------------------------------------------------------------------------------------------

/// Apply `default` values from the schema: objects get missing properties that have a default, also
/// inside array items and additionalProperties. As the real server does on decode, non-nullable nulls
/// without a default are dropped first ([`prune_nulls`]); a null in a non-nullable field that has a
/// default is replaced by the default, while a null in a nullable field is kept. Call after [`prune`].
pub fn apply_defaults(schema: &Value, obj: &mut Value) {
    prune_nulls(schema, obj);
    deep_stack(|| default_node(obj, Some(schema)));
}

/// Remove object fields whose value is null although their schema is neither nullable nor has a
/// default (the real server's `PruneNonNullableNullsWithoutDefaults`; [`apply_defaults`] calls it).
pub fn prune_nulls(schema: &Value, obj: &mut Value) {
    deep_stack(|| prune_nulls_node(obj, Some(schema)));
}

/// Run a walk that recurses once per level of an object on a stack large enough for the
/// deepest object the server accepts ([`crate::decode::MAX_DEPTH`] levels at a few KiB each
/// in debug builds), whatever stack the caller has left (a tokio worker has 2 MiB).
pub(crate) fn deep_stack<R>(f: impl FnOnce() -> R) -> R {
    stacker::maybe_grow(4 * 1024 * 1024, 16 * 1024 * 1024, f)
}

fn non_nullable_non_defaultable(s: Option<&Value>) -> bool {
    s.is_some_and(|s| !flag(s, "nullable") && !has_default(s))
}

fn prune_nulls_node(x: &mut Value, s: Option<&Value>) {
    match x {
        Value::Object(map) => {
            let mut remove = Vec::new();
            for (k, v) in map.iter_mut() {
                let field_schema = s.and_then(|s| {
                    properties(s)
                        .and_then(|p| p.get(k))
                        .or(match additional_properties(s) {
                            AddProps::Schema(a) => Some(a),
                            _ => None,
                        })
                });
                if v.is_null() && non_nullable_non_defaultable(field_schema) {
                    remove.push(k.clone());
                } else {
                    prune_nulls_node(v, field_schema);
                }
            }
            for k in remove {
                map.shift_remove(&k);
            }
        }
        Value::Array(items) => {
            let item_schema = s.and_then(items_schema);
            for v in items.iter_mut() {
                prune_nulls_node(v, item_schema);
            }
        }
        _ => {}
    }
}

fn default_value(s: &Value) -> Value {
    s.get("default").cloned().unwrap_or(Value::Null)
}

fn default_node(x: &mut Value, s: Option<&Value>) {
    let Some(s) = s else { return };
    match x {
        Value::Object(map) => {
            if let Some(props) = properties(s) {
                for (k, p) in props {
                    if !has_default(p) {
                        continue;
                    }
                    let missing = match map.get(k) {
                        None => true,
                        Some(v) => v.is_null() && !flag(p, "nullable"),
                    };
                    if missing {
                        map.insert(k.clone(), default_value(p));
                    }
                }
            }
            let props = properties(s);
            for (k, v) in map.iter_mut() {
                if let Some(p) = props.and_then(|p| p.get(k)) {
                    default_node(v, Some(p));
                } else if let AddProps::Schema(a) = additional_properties(s) {
                    if v.is_null() && !flag(a, "nullable") {
                        *v = default_value(a);
                    }
                    default_node(v, Some(a));
                }
            }
        }
        Value::Array(items) => {
            let Some(item_schema) = items_schema(s) else {
                return;
            };
            for v in items.iter_mut() {
                if v.is_null() && !flag(item_schema, "nullable") {
                    *v = default_value(item_schema);
                }
                default_node(v, Some(item_schema));
            }
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------------------
// Validation (kube-openapi's SchemaValidator semantics)
// ---------------------------------------------------------------------------------------------------

/// Validate against the schema: type (string, integer, number, boolean, object, array; integer must be
/// integral; `int-or-string` via x-kubernetes-int-or-string), required, enum, pattern, minimum/maximum
/// (+exclusiveMinimum/exclusiveMaximum), multipleOf, minLength/maxLength, minItems/maxItems,
/// minProperties/maxProperties, uniqueItems, nullable, string formats, additionalProperties,
/// allOf/anyOf/oneOf/not, then the apiVersion/kind checks of x-kubernetes-embedded-resource objects and
/// the uniqueness of x-kubernetes-list-type set/map lists. The root's metadata is not validated here.
/// Returns every error, in the real server's order where it is deterministic (object properties are
/// visited in schema order, where the real server's order is random).
pub fn validate(schema: &Value, obj: &Value) -> Vec<FieldError> {
    deep_stack(|| validate_walk(schema, obj))
}

fn validate_walk(schema: &Value, obj: &Value) -> Vec<FieldError> {
    let mut errs = validate_schema(schema, obj, "", true).errs;
    errs.extend(validate_embedded(schema, obj, ""));
    if let Value::Object(m) = obj {
        errs.extend(validate_lists_in_object(schema, m, ""));
    }
    errs
}

/// A validation result: errors plus kube-openapi's "match count", which decides which failing
/// `anyOf`/`oneOf` branch gets reported.
#[derive(Default)]
struct Res {
    errs: Vec<FieldError>,
    count: u64,
}

impl Res {
    fn ok(count: u64) -> Self {
        Res {
            errs: Vec::new(),
            count,
        }
    }

    fn err(e: FieldError) -> Self {
        Res {
            errs: vec![e],
            count: 0,
        }
    }

    // kube-openapi keeps reported errors unique.
    fn add(&mut self, e: FieldError) {
        if !self.errs.contains(&e) {
            self.errs.push(e);
        }
    }

    fn merge(&mut self, other: Res) {
        for e in other.errs {
            self.add(e);
        }
        self.count += other.count;
    }

    fn is_valid(&self) -> bool {
        self.errs.is_empty()
    }
}

/// The field of an error whose kube-openapi name is `name` (errors without a name get the nil path).
fn field_of(name: &str) -> String {
    let trimmed = name.strip_prefix('.').unwrap_or(name);
    if name.is_empty() || name == "." {
        "<nil>".to_string()
    } else {
        trimmed.to_string()
    }
}

#[derive(Clone, Copy)]
enum Num {
    Int(i64),
    Float(f64),
}

fn as_num(v: &Value) -> Option<Num> {
    let n = v.as_number()?;
    // A JSON number that does not fit int64 is decoded as float64 by the real server.
    Some(match n.as_i64() {
        Some(i) => Num::Int(i),
        None => Num::Float(n.as_f64()?),
    })
}

/// JSON type name and Go format name kube-openapi infers for a decoded value.
fn data_type(v: &Value) -> (&'static str, &'static str) {
    match v {
        Value::Null => ("null", ""),
        Value::Bool(_) => ("boolean", ""),
        Value::String(_) => ("string", ""),
        Value::Array(_) => ("array", ""),
        Value::Object(_) => ("object", ""),
        Value::Number(_) => match as_num(v) {
            Some(Num::Int(_)) => ("integer", "int64"),
            _ => ("number", "float64"),
        },
    }
}

/// Like swag.IsFloat64AJSONInteger: integral (within a tiny tolerance) and inside ±2^53.
fn is_json_integer(f: f64) -> bool {
    const MAX: f64 = 9_007_199_254_740_992.0;
    if !f.is_finite() || !(-MAX..=MAX).contains(&f) {
        return false;
    }
    let r = f.round();
    f == r || (f - r).abs() < 1e-9 * f.abs().max(1.0)
}

/// Formats the real server keeps (others are stripped before validation), normalized without dashes.
const SUPPORTED_FORMATS: &[&str] = &[
    "bsonobjectid",
    "uri",
    "email",
    "hostname",
    "ipv4",
    "ipv6",
    "cidr",
    "mac",
    "uuid",
    "uuid3",
    "uuid4",
    "uuid5",
    "isbn",
    "isbn10",
    "isbn13",
    "creditcard",
    "ssn",
    "hexcolor",
    "rgbcolor",
    "byte",
    "password",
    "date",
    "duration",
    "datetime",
];

/// The schema's format if the real server would keep it, with its normalized name.
fn effective_format(s: &Value) -> Option<(&str, String)> {
    let f = s
        .get("format")
        .and_then(Value::as_str)
        .filter(|f| !f.is_empty())?;
    let normalized = f.replace('-', "");
    SUPPORTED_FORMATS
        .contains(&normalized.as_str())
        .then_some((f, normalized))
}

fn type_error(path: &str, expected: &str, actual: &str) -> FieldError {
    FieldError::type_invalid(
        field_of(path),
        Value::String(actual.to_string()),
        format!("{path} in body must be of type {expected}: {}", go_quote(actual)),
    )
}

fn validate_schema(s: &Value, data: &Value, path: &str, at_root: bool) -> Res {
    let mut res = Res::default();
    if !s.is_object() {
        return res;
    }
    let types = schema_types(s);
    let format = effective_format(s);

    if data.is_null() {
        res.merge(validate_type(s, &types, format.as_ref(), data, path));
        res.merge(validate_enum(s, data, path));
        return res;
    }

    if !types.is_empty() || format.is_some() {
        res.merge(validate_type(s, &types, format.as_ref(), data, path));
        res.count += 1;
    }
    res.merge(validate_junctors(s, data, path));
    res.count += 1;
    if let Value::String(text) = data {
        res.merge(validate_string(s, text, path));
        res.count += 1;
        if let Some((name, normalized)) = &format {
            let r = if format_ok(normalized, text) {
                Res::ok(1)
            } else {
                Res::err(FieldError::type_invalid(
                    field_of(path),
                    data.clone(),
                    format!("{path} in body must be of type {name}: {}", go_quote(text)),
                ))
            };
            res.merge(r);
            res.count += 1;
        }
    }
    if let Some(n) = as_num(data) {
        res.merge(validate_number(s, n, data, path));
        res.count += 1;
    }
    if let Value::Array(items) = data {
        res.merge(validate_array(s, items, path));
        res.count += 1;
    }
    res.merge(validate_enum(s, data, path));
    res.count += 1;
    if let Value::Object(map) = data {
        res.merge(validate_object(s, map, path, at_root));
        res.count += 1;
    }
    res.count += 1;
    res
}

fn validate_type(
    s: &Value,
    types: &[&str],
    format: Option<&(&str, String)>,
    data: &Value,
    path: &str,
) -> Res {
    if data.is_null() {
        if !types.is_empty() && !types.contains(&"null") && !flag(s, "nullable") {
            return Res::err(type_error(path, &types.join(","), "null"));
        }
        return Res::ok(1);
    }
    let (sch_type, data_format) = data_type(data);
    let is_float_int =
        matches!(as_num(data), Some(Num::Float(f)) if is_json_integer(f)) && types.contains(&"integer");
    let is_int_float = sch_type == "integer" && types.contains(&"number");
    let kind_is_str_or_array = data.is_string() || data.is_array();
    let type_matches = types.contains(&sch_type) || is_float_int || is_int_float;
    if let Some((name, _)) = format {
        // A non-string value under a format is checked against the format's name first.
        let format_matches = kind_is_str_or_array || type_matches || data_format == *name;
        if !format_matches {
            return Res::err(type_error(path, name, data_format));
        }
        if !(types.contains(&"number") || types.contains(&"integer")) && kind_is_str_or_array {
            return Res::ok(1);
        }
    }
    if !type_matches {
        return Res::err(type_error(path, &types.join(","), sch_type));
    }
    Res::ok(1)
}

/// `"path" must validate ...` errors, which the real server reports under the nil field path.
fn composite_error(detail: String) -> FieldError {
    FieldError::invalid("<nil>", Value::String(String::new()), detail)
}

fn schema_list<'a>(s: &'a Value, key: &str) -> &'a [Value] {
    s.get(key)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn validate_junctors(s: &Value, data: &Value, path: &str) -> Res {
    let mut main = Res::ok(1);
    if !["anyOf", "oneOf", "allOf", "not"]
        .iter()
        .any(|k| s.get(*k).is_some())
    {
        return main;
    }
    let quoted = go_quote(path);

    let any_of = schema_list(s, "anyOf");
    if !any_of.is_empty() {
        let mut best: Option<Res> = None;
        let mut first_success: Option<Res> = None;
        for branch in any_of {
            let r = validate_schema(branch, data, path, false);
            if r.is_valid() {
                best = None;
                first_success = Some(r);
                break;
            }
            if best.as_ref().is_none_or(|b| r.count > b.count) {
                best = Some(r);
            }
        }
        if first_success.is_none() {
            main.add(composite_error(format!(
                "{quoted} must validate at least one schema (anyOf)"
            )));
        }
        if let Some(b) = best.or(first_success) {
            main.merge(b);
        }
    }

    let one_of = schema_list(s, "oneOf");
    if !one_of.is_empty() {
        let mut best: Option<Res> = None;
        let mut first_success: Option<Res> = None;
        let mut validated = 0;
        for branch in one_of {
            let r = validate_schema(branch, data, path, false);
            if r.is_valid() {
                validated += 1;
                best = None;
                if first_success.is_none() {
                    first_success = Some(r);
                }
                continue;
            }
            if validated == 0 && best.as_ref().is_none_or(|b| r.count > b.count) {
                best = Some(r);
            }
        }
        if validated != 1 {
            let extra = if validated == 0 {
                "Found none valid".to_string()
            } else {
                format!("Found {validated} valid alternatives")
            };
            main.add(composite_error(format!(
                "{quoted} must validate one and only one schema (oneOf). {extra}"
            )));
            if let Some(b) = best {
                main.merge(b);
            }
        } else if let Some(f) = first_success {
            main.merge(f);
        }
    }

    let all_of = schema_list(s, "allOf");
    if !all_of.is_empty() {
        let mut validated = 0;
        for branch in all_of {
            let r = validate_schema(branch, data, path, false);
            if r.is_valid() {
                validated += 1;
            }
            main.merge(r);
        }
        if validated != all_of.len() {
            let extra = if validated == 0 { ". None validated" } else { "" };
            main.add(composite_error(format!(
                "{quoted} must validate all the schemas (allOf){extra}"
            )));
        }
    }

    if let Some(not) = s.get("not").filter(|n| n.is_object())
        && validate_schema(not, data, path, false).is_valid()
    {
        main.add(composite_error(format!(
            "{quoted} must not validate the schema (not)"
        )));
    }
    main
}

fn validate_string(s: &Value, text: &str, path: &str) -> Res {
    let len = text.chars().count() as u64;
    if let Some(max) = s.get("maxLength").and_then(Value::as_u64)
        && len > max
    {
        return Res::err(FieldError::too_long(
            field_of(path),
            i64::try_from(max).unwrap_or(i64::MAX),
        ));
    }
    if let Some(min) = s.get("minLength").and_then(Value::as_u64)
        && len < min
    {
        return Res::err(FieldError::invalid(
            field_of(path),
            Value::String(text.to_string()),
            format!("{path} in body should be at least {min} chars long"),
        ));
    }
    if let Some(pattern) = s.get("pattern").and_then(Value::as_str).filter(|p| !p.is_empty()) {
        let detail = match pattern_matches(pattern, text) {
            Ok(true) => return Res::default(),
            Ok(false) => format!("{path} in body should match '{pattern}'"),
            Err(e) => format!("{path} in body should match '{pattern}, but pattern is invalid: {e}'"),
        };
        return Res::err(FieldError::invalid(
            field_of(path),
            Value::String(text.to_string()),
            detail,
        ));
    }
    Res::default()
}

fn validate_number(s: &Value, n: Num, data: &Value, path: &str) -> Res {
    let mut res = Res::ok(1);
    let bad = || data.clone();
    let field = field_of(path);

    if let Some(factor) = s.get("multipleOf").and_then(Value::as_f64) {
        let int_factor = factor as i64;
        let err = match n {
            _ if factor < 0.0 => Some(FieldError::invalid(
                field.clone(),
                Value::from(factor),
                format!(
                    "factor MultipleOf declared for {path} must be positive: {}",
                    go_float(factor)
                ),
            )),
            Num::Int(i) if int_factor != 0 => (i % int_factor != 0).then(|| {
                FieldError::invalid(
                    field.clone(),
                    bad(),
                    format!("{path} in body should be a multiple of {int_factor}"),
                )
            }),
            _ => {
                let f = match n {
                    Num::Int(i) => i as f64,
                    Num::Float(f) => f,
                };
                let mult = if factor < 1.0 {
                    1.0 / factor * f
                } else {
                    f / factor
                };
                (!is_json_integer(mult)).then(|| {
                    FieldError::invalid(
                        field.clone(),
                        bad(),
                        format!("{path} in body should be a multiple of {}", go_float(factor)),
                    )
                })
            }
        };
        if let Some(e) = err {
            res.add(e);
        }
    }

    // Integers are compared against the bound truncated to an integer, as kube-openapi does.
    let bound_check = |key: &str, excl_key: &str, lower: bool| -> Option<FieldError> {
        let bound = s.get(key).and_then(Value::as_f64)?;
        let exclusive = flag(s, excl_key);
        let (fails, shown) = match n {
            Num::Int(i) => {
                let b = bound as i64;
                let fails = if lower {
                    i < b || (exclusive && i == b)
                } else {
                    i > b || (exclusive && i == b)
                };
                (fails, b.to_string())
            }
            Num::Float(f) => {
                let fails = if lower {
                    f < bound || (exclusive && f == bound)
                } else {
                    f > bound || (exclusive && f == bound)
                };
                (fails, go_float(bound))
            }
        };
        let relation = match (lower, exclusive) {
            (true, false) => "greater than or equal to",
            (true, true) => "greater than",
            (false, false) => "less than or equal to",
            (false, true) => "less than",
        };
        fails.then(|| {
            FieldError::invalid(
                field.clone(),
                bad(),
                format!("{path} in body should be {relation} {shown}"),
            )
        })
    };
    if let Some(e) = bound_check("minimum", "exclusiveMinimum", true) {
        res.add(e);
    }
    if let Some(e) = bound_check("maximum", "exclusiveMaximum", false) {
        res.add(e);
    }
    res
}

fn validate_array(s: &Value, items: &[Value], path: &str) -> Res {
    let mut res = Res::default();
    if let Some(item_schema) = items_schema(s) {
        for (i, v) in items.iter().enumerate() {
            res.merge(validate_schema(item_schema, v, &format!("{path}[{i}]"), false));
        }
    }
    let size = items.len() as u64;
    if let Some(min) = s.get("minItems").and_then(Value::as_u64)
        && size < min
    {
        res.add(FieldError::invalid(
            field_of(path),
            Value::from(size),
            format!("{path} in body should have at least {min} items"),
        ));
    }
    if let Some(max) = s.get("maxItems").and_then(Value::as_u64)
        && size > max
    {
        res.add(FieldError::too_many(
            field_of(path),
            size as i64,
            i64::try_from(max).unwrap_or(i64::MAX),
        ));
    }
    if flag(s, "uniqueItems") {
        let mut seen = HashSet::new();
        if !items.iter().all(|v| seen.insert(canonical_json(v))) {
            res.add(FieldError::invalid(
                field_of(path),
                Value::String(String::new()),
                format!("{path} in body shouldn't contain duplicates"),
            ));
        }
    }
    res.count += 1;
    res
}

/// Enum membership with Go's reflect conversion rules: the value is converted to each allowed value's
/// type when Go allows it (so 1.5 matches an integer 1, and an integer matches the string of its code
/// point), and null never matches.
fn enum_matches(allowed: &Value, data: &Value) -> bool {
    match (allowed, data) {
        (_, Value::Null) | (Value::Null, _) => false,
        (Value::String(a), Value::String(d)) => a == d,
        (Value::String(a), Value::Number(_)) => match as_num(data) {
            Some(Num::Int(i)) => {
                let c = u32::try_from(i)
                    .ok()
                    .and_then(char::from_u32)
                    .unwrap_or('\u{fffd}');
                a.chars().eq(std::iter::once(c))
            }
            _ => false,
        },
        (Value::Number(_), Value::Number(_)) => match (as_num(allowed), as_num(data)) {
            (Some(Num::Int(a)), Some(Num::Int(d))) => a == d,
            (Some(Num::Int(a)), Some(Num::Float(d))) => a == d as i64,
            (Some(Num::Float(a)), Some(Num::Int(d))) => a == d as f64,
            (Some(Num::Float(a)), Some(Num::Float(d))) => a == d,
            _ => false,
        },
        (Value::Bool(a), Value::Bool(d)) => a == d,
        (Value::Object(_), Value::Object(_)) | (Value::Array(_), Value::Array(_)) => allowed == data,
        _ => false,
    }
}

fn validate_enum(s: &Value, data: &Value, path: &str) -> Res {
    let allowed = schema_list(s, "enum");
    if allowed.is_empty() || allowed.iter().any(|a| enum_matches(a, data)) {
        return Res::default();
    }
    let values: Vec<String> = allowed
        .iter()
        .map(|a| match a {
            Value::String(s) => s.clone(),
            other => canonical_json(other),
        })
        .collect();
    Res::err(FieldError::not_supported(field_of(path), data.clone(), &values))
}

fn validate_object(s: &Value, map: &Map<String, Value>, path: &str, at_root: bool) -> Res {
    let n = map.len() as u64;
    if let Some(min) = s.get("minProperties").and_then(Value::as_u64)
        && n < min
    {
        return Res::err(FieldError::invalid(
            field_of(path),
            Value::from(n),
            format!("{path} in body should have at least {min} properties"),
        ));
    }
    if let Some(max) = s.get("maxProperties").and_then(Value::as_u64)
        && n > max
    {
        return Res::err(FieldError::too_many(
            field_of(path),
            n as i64,
            i64::try_from(max).unwrap_or(i64::MAX),
        ));
    }

    let mut res = Res::default();
    let props = properties(s);
    let is_property = |k: &str| props.is_some_and(|p| p.contains_key(k));
    match additional_properties(s) {
        AddProps::Bool(false) => {
            for k in map.keys().filter(|k| !is_property(k)) {
                res.add(FieldError::invalid(
                    field_of(path),
                    Value::String(k.clone()),
                    format!("{path}.{k} in body is a forbidden property"),
                ));
            }
        }
        AddProps::Schema(a) => {
            for (k, v) in map.iter().filter(|(k, _)| !is_property(k)) {
                res.merge(validate_schema(a, v, &format!("{path}.{k}"), false));
            }
        }
        _ => {}
    }
    if let Some(props) = props {
        for (k, p) in props {
            if at_root && k == "metadata" {
                continue;
            }
            if let Some(v) = map.get(k) {
                res.merge(validate_schema(p, v, &child_path(path, k), false));
            }
        }
    }
    for k in schema_list(s, "required").iter().filter_map(Value::as_str) {
        if !map.contains_key(k) {
            res.add(FieldError::required(field_of(&format!("{path}.{k}")), ""));
        }
    }
    res
}

// ---------------------------------------------------------------------------------------------------
// Patterns and formats
// ---------------------------------------------------------------------------------------------------

thread_local! {
    static PATTERNS: RefCell<HashMap<String, Result<Regex, String>>> = RefCell::new(HashMap::new());
}

/// Go's RE2 classes \d, \w, \s and \b are ASCII-only while Rust's are Unicode; rewrite them so a pattern
/// accepts exactly what the real server accepts.
fn go_pattern_to_rust(p: &str) -> String {
    let chars: Vec<char> = p.chars().collect();
    let mut out = String::with_capacity(p.len() + 8);
    let mut in_class = false;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\\' && i + 1 < chars.len() {
            let e = chars[i + 1];
            let rewritten = match (in_class, e) {
                (false, 'd') => Some("[0-9]"),
                (false, 'D') => Some("[^0-9]"),
                (false, 'w') => Some("[0-9A-Za-z_]"),
                (false, 'W') => Some("[^0-9A-Za-z_]"),
                (false, 's') => Some("[\\t\\n\\f\\r ]"),
                (false, 'S') => Some("[^\\t\\n\\f\\r ]"),
                (false, 'b') => Some("(?-u:\\b)"),
                (false, 'B') => Some("(?-u:\\B)"),
                (true, 'd') => Some("0-9"),
                (true, 'w') => Some("0-9A-Za-z_"),
                (true, 's') => Some("\\t\\n\\f\\r "),
                (true, 'D') => Some("[:^digit:]"),
                (true, 'W') => Some("[:^word:]"),
                (true, 'S') => Some("[:^space:]"),
                _ => None,
            };
            match rewritten {
                Some(r) => out.push_str(r),
                None => {
                    out.push(c);
                    out.push(e);
                }
            }
            i += 2;
            continue;
        }
        if in_class {
            if c == '[' && chars.get(i + 1) == Some(&':') {
                // A POSIX class like [:alpha:] inside a bracket: copy it whole.
                let rest: String = chars[i..].iter().collect();
                if let Some(end) = rest.find(":]") {
                    out.push_str(&rest[..end + 2]);
                    i += rest[..end + 2].chars().count();
                    continue;
                }
            }
            if c == ']' {
                in_class = false;
            }
            out.push(c);
            i += 1;
            continue;
        }
        out.push(c);
        i += 1;
        if c == '[' {
            in_class = true;
            if chars.get(i) == Some(&'^') {
                out.push('^');
                i += 1;
            }
            if chars.get(i) == Some(&']') {
                out.push_str("\\]");
                i += 1;
            }
        }
    }
    out
}

fn pattern_matches(pattern: &str, text: &str) -> Result<bool, String> {
    PATTERNS.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.len() > 512 {
            cache.clear();
        }
        let re = cache
            .entry(pattern.to_string())
            .or_insert_with(|| Regex::new(&go_pattern_to_rust(pattern)).map_err(|e| e.to_string()));
        re.as_ref().map(|re| re.is_match(text)).map_err(Clone::clone)
    })
}

/// Matches one of this module's fixed patterns (written in Go syntax, like the user's).
fn static_match(pattern: &str, text: &str) -> bool {
    pattern_matches(pattern, text).unwrap_or(false)
}

fn is_date(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return false;
    }
    let digits = |r: std::ops::Range<usize>| -> Option<u32> {
        s.get(r)
            .filter(|p| p.bytes().all(|c| c.is_ascii_digit()))
            .and_then(|p| p.parse().ok())
    };
    let (Some(y), Some(m), Some(d)) = (digits(0..4), digits(5..7), digits(8..10)) else {
        return false;
    };
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    (1..=days).contains(&d)
}

fn is_date_time(s: &str) -> bool {
    if s.len() < 4 {
        return false;
    }
    let lower = s.to_lowercase();
    let parts: Vec<&str> = lower.split('t').collect();
    if parts.len() < 2 || !is_date(parts[0]) {
        return false;
    }
    let re = r"^([0-9]{2}):([0-9]{2}):([0-9]{2})(.[0-9]+)?(z|([+-][0-9]{2}:[0-9]{2}))$";
    if !static_match(re, parts[1]) {
        return false;
    }
    let t = parts[1];
    t.get(0..2).is_some_and(|h| h <= "23")
        && t.get(3..5).is_some_and(|m| m <= "59")
        && t.get(6..8).is_some_and(|x| x <= "59")
}

fn is_base64(s: &str) -> bool {
    let s: String = s.chars().filter(|c| *c != '\r' && *c != '\n').collect();
    if !s.len().is_multiple_of(4) {
        return false;
    }
    let body = s.trim_end_matches('=');
    s.len() - body.len() <= 2
        && body
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'+' || c == b'/')
}

fn is_mac(s: &str) -> bool {
    let grouped = |sep: char, width: usize| {
        let parts: Vec<&str> = s.split(sep).collect();
        matches!(parts.len() * width / 2, 6 | 8 | 20)
            && parts
                .iter()
                .all(|p| p.len() == width && p.bytes().all(|c| c.is_ascii_hexdigit()))
    };
    grouped(':', 2) || grouped('-', 2) || grouped('.', 4)
}

fn is_cidr(s: &str) -> bool {
    let Some((ip, prefix)) = s.split_once('/') else {
        return false;
    };
    let Ok(addr) = ip.parse::<IpAddr>() else {
        return false;
    };
    let max = if addr.is_ipv4() { 32 } else { 128 };
    !prefix.is_empty()
        && prefix.len() <= 3
        && prefix.bytes().all(|c| c.is_ascii_digit())
        && prefix.parse::<u32>().is_ok_and(|p| p <= max)
}

fn format_ok(normalized: &str, s: &str) -> bool {
    match normalized {
        "datetime" => is_date_time(s),
        "date" => is_date(s),
        "uuid" => static_match(
            r"(?i)^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$",
            s,
        ),
        "uuid3" => static_match(
            r"(?i)^[0-9a-f]{8}-[0-9a-f]{4}-3[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}$",
            s,
        ),
        "uuid4" => static_match(
            r"(?i)^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$",
            s,
        ),
        "uuid5" => static_match(
            r"(?i)^[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$",
            s,
        ),
        "ipv4" => s.parse::<IpAddr>().is_ok() && s.contains('.'),
        "ipv6" => s.parse::<IpAddr>().is_ok() && s.contains(':'),
        "cidr" => is_cidr(s),
        "mac" => is_mac(s),
        "byte" => is_base64(s),
        "hostname" => {
            s.len() <= 255
                && static_match(
                    r"^([a-zA-Z0-9\p{S}\p{L}]((-?[a-zA-Z0-9\p{S}\p{L}]{0,62})?)|([a-zA-Z0-9\p{S}\p{L}](([a-zA-Z0-9-\p{S}\p{L}]{0,61}[a-zA-Z0-9\p{S}\p{L}])?)(\.)){1,}([a-zA-Z\p{L}]){2,63})$",
                    s,
                )
        }
        "email" => static_match(r"^[^@\s]+@[^@\s]+$", s),
        "hexcolor" => static_match(r"^#?([0-9a-fA-F]{3}|[0-9a-fA-F]{6})$", s),
        "rgbcolor" => static_match(
            r"^rgb\(\s*(0|[1-9]\d?|1\d\d?|2[0-4]\d|25[0-5])\s*,\s*(0|[1-9]\d?|1\d\d?|2[0-4]\d|25[0-5])\s*,\s*(0|[1-9]\d?|1\d\d?|2[0-4]\d|25[0-5])\s*\)$",
            s,
        ),
        "bsonobjectid" => s.len() == 24 && s.bytes().all(|c| c.is_ascii_hexdigit()),
        "ssn" => static_match(r"^\d{3}[- ]?\d{2}[- ]?\d{4}$", s),
        "duration" => s == "0" || static_match(r"^[-+]?((\d+(\.\d*)?|\.\d+)\s*[a-zA-Zµμ]+\s*)+$", s),
        // uri, isbn*, creditcard and password are accepted as any string here.
        _ => true,
    }
}

// ---------------------------------------------------------------------------------------------------
// Embedded resources and list types (the checks the real server runs after schema validation)
// ---------------------------------------------------------------------------------------------------

fn is_dns1035_label(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 63 {
        errs.push("must be no more than 63 characters".to_string());
    }
    if !static_match(r"^[a-z]([-a-z0-9]*[a-z0-9])?$", s) {
        errs.push(
            "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an \
             alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', \
             regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"
                .to_string(),
        );
    }
    errs
}

fn validate_embedded(s: &Value, x: &Value, path: &str) -> Vec<FieldError> {
    let mut errs = Vec::new();
    match x {
        Value::Object(map) => {
            if flag(s, "x-kubernetes-embedded-resource") {
                errs.extend(validate_type_meta(map, path));
            }
            let props = properties(s);
            for (k, v) in map {
                if let Some(p) = props.and_then(|p| p.get(k)) {
                    errs.extend(validate_embedded(p, v, &child_path(path, k)));
                } else if let AddProps::Schema(a) = additional_properties(s) {
                    errs.extend(validate_embedded(a, v, &format!("{path}[{k}]")));
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = items_schema(s) {
                for (i, v) in items.iter().enumerate() {
                    errs.extend(validate_embedded(item_schema, v, &format!("{path}[{i}]")));
                }
            }
        }
        _ => {}
    }
    errs
}

fn validate_type_meta(map: &Map<String, Value>, path: &str) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let api_version_path = child_path(path, "apiVersion");
    let kind_path = child_path(path, "kind");
    if !map.contains_key("apiVersion") {
        errs.push(FieldError::required(api_version_path.clone(), ""));
    }
    if !map.contains_key("kind") {
        errs.push(FieldError::required(kind_path.clone(), ""));
    }
    for (k, v) in map {
        match k.as_str() {
            "apiVersion" => match v.as_str() {
                None => errs.push(FieldError::invalid(
                    api_version_path.clone(),
                    v.clone(),
                    "must be a string",
                )),
                Some("") => errs.push(FieldError::required(api_version_path.clone(), "")),
                Some(gv) if gv.matches('/').count() > 1 => errs.push(FieldError::invalid(
                    api_version_path.clone(),
                    v.clone(),
                    format!("unexpected GroupVersion string: {gv}"),
                )),
                Some(_) => {}
            },
            "kind" => match v.as_str() {
                None => errs.push(FieldError::invalid(
                    kind_path.clone(),
                    v.clone(),
                    "must be a string",
                )),
                Some("") => errs.push(FieldError::required(kind_path.clone(), "")),
                Some(kind) => {
                    let problems = is_dns1035_label(&kind.to_lowercase());
                    if !problems.is_empty() {
                        errs.push(FieldError::invalid(
                            kind_path.clone(),
                            v.clone(),
                            format!(
                                "may have mixed case, but should otherwise match: {}",
                                problems.join(",")
                            ),
                        ));
                    }
                }
            },
            _ => {}
        }
    }
    errs
}

fn validate_lists_in_object(s: &Value, map: &Map<String, Value>, path: &str) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if let AddProps::Schema(a) = additional_properties(s) {
        for (k, v) in map {
            errs.extend(validate_lists(a, v, &format!("{path}[{k}]")));
        }
    }
    if let Some(props) = properties(s) {
        for (k, v) in map {
            if let Some(p) = props.get(k) {
                errs.extend(validate_lists(p, v, &child_path(path, k)));
            }
        }
    }
    errs
}

fn validate_lists(s: &Value, x: &Value, path: &str) -> Vec<FieldError> {
    match x {
        Value::Object(map) => validate_lists_in_object(s, map, path),
        Value::Array(items) => validate_list_array(s, items, path),
        _ => Vec::new(),
    }
}

/// Indices of the second appearance of each repeated element, compared like Go's map keys (scalars) and
/// JSON encodings (compound values).
fn non_unique_indices(items: &[Value]) -> Vec<usize> {
    let mut seen: HashMap<String, u32> = HashMap::new();
    let mut out = Vec::new();
    for (i, v) in items.iter().enumerate() {
        let times = seen.entry(canonical_json(v)).or_insert(0);
        *times += 1;
        if *times == 2 {
            out.push(i);
        }
    }
    out
}

fn validate_list_array(s: &Value, items: &[Value], path: &str) -> Vec<FieldError> {
    let mut errs = Vec::new();
    match s.get("x-kubernetes-list-type").and_then(Value::as_str) {
        Some("set") if items.len() > 1 => {
            for i in non_unique_indices(items) {
                errs.push(FieldError::duplicate(format!("{path}[{i}]"), items[i].clone()));
            }
        }
        Some("map") => errs.extend(validate_list_map(s, items, path)),
        _ => {}
    }
    if let Some(item_schema) = items_schema(s) {
        for (i, v) in items.iter().enumerate() {
            errs.extend(validate_lists(item_schema, v, &format!("{path}[{i}]")));
        }
    }
    errs
}

fn validate_list_map(s: &Value, items: &[Value], path: &str) -> Vec<FieldError> {
    for (i, x) in items.iter().enumerate() {
        if !x.is_null() && !x.is_object() {
            return vec![FieldError::invalid(
                format!("{path}[{i}]"),
                x.clone(),
                "must be an object for an array of list-type map",
            )];
        }
    }
    if items.len() <= 1 {
        return Vec::new();
    }
    let key_fields: Vec<&str> = schema_list(s, "x-kubernetes-list-map-keys")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let keys: Vec<Value> = items
        .iter()
        .map(|x| {
            let mut key = Map::new();
            if let Value::Object(m) = x {
                for f in &key_fields {
                    if let Some(v) = m.get(*f) {
                        key.insert((*f).to_string(), v.clone());
                    }
                }
            }
            Value::Object(key)
        })
        .collect();
    non_unique_indices(&keys)
        .into_iter()
        .map(|i| FieldError::duplicate(format!("{path}[{i}]"), keys[i].clone()))
        .collect()
}

// ---------------------------------------------------------------------------------------------------
// Structural schema checks (what the real server requires of a CRD's openAPIV3Schema)
// ---------------------------------------------------------------------------------------------------

/// Check that a CRD's openAPIV3Schema is structural enough to serve: the API-level restrictions
/// (uniqueItems, additionalProperties beside properties, unsupported keywords, unknown types) are
/// reported first, in schema order; only when there are none, the structural rules (every specified
/// field has a type unless x-kubernetes-preserve-unknown-fields or int-or-string, object at the root,
/// metadata restricted to name/generateName, no types or defaults inside allOf/anyOf/oneOf/not, fields
/// in those also specified outside) are checked, sorted by message as the real server does. Paths look
/// like `spec.versions[0].schema.openAPIV3Schema.properties[spec].type` for the prefix
/// `spec.versions[0].schema.openAPIV3Schema`.
pub fn check_structural(schema: &Value, path_prefix: &str) -> Vec<FieldError> {
    let mut api = Vec::new();
    api_checks(schema, path_prefix, &mut api);
    if !api.is_empty() {
        return api;
    }
    let mut errs = Vec::new();
    structural_invariants(schema, Level::Root, path_prefix, &mut errs);
    structural_completeness(schema, path_prefix, &mut errs);
    errs.sort_by_key(|e| e.to_string());
    errs
}

fn key_path(path: &str, key: &str) -> String {
    format!("{path}[{key}]")
}

fn index_path(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

const OPENAPI_V3_TYPES: &[&str] = &["array", "boolean", "integer", "number", "object", "string"];

fn api_checks(s: &Value, path: &str, errs: &mut Vec<FieldError>) {
    if !s.is_object() {
        return;
    }
    if let Some(t) = s.get("type").and_then(Value::as_str).filter(|t| !t.is_empty())
        && !OPENAPI_V3_TYPES.contains(&t)
    {
        let supported: Vec<String> = OPENAPI_V3_TYPES.iter().map(|t| t.to_string()).collect();
        errs.push(FieldError::not_supported(
            child_path(path, "type"),
            Value::from(t),
            &supported,
        ));
    }
    for (key, name) in [
        ("id", "id"),
        ("additionalItems", "additionalItems"),
        ("patternProperties", "patternProperties"),
        ("definitions", "definitions"),
        ("dependencies", "dependencies"),
        ("$ref", "$ref"),
    ] {
        if s.get(key).is_some_and(|v| !v.is_null()) {
            errs.push(FieldError::forbidden(
                child_path(path, key),
                format!("{name} is not supported"),
            ));
        }
    }
    if s.get("items").is_some_and(Value::is_array) {
        errs.push(FieldError::forbidden(
            child_path(path, "items"),
            "items must be a schema object and not an array",
        ));
    }
    if flag(s, "uniqueItems") {
        errs.push(FieldError::forbidden(
            child_path(path, "uniqueItems"),
            "uniqueItems cannot be set to true since the runtime complexity becomes quadratic",
        ));
    }
    let has_props = properties(s).is_some_and(|p| !p.is_empty());
    match additional_properties(s) {
        AddProps::Bool(false) | AddProps::Schema(_) if has_props => {
            errs.push(FieldError::forbidden(
                child_path(path, "additionalProperties"),
                "additionalProperties and properties are mutual exclusive",
            ));
        }
        _ => {}
    }
    if s.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(false)) {
        errs.push(FieldError::invalid(
            child_path(path, "x-kubernetes-preserve-unknown-fields"),
            Value::Bool(false),
            "must be true or undefined",
        ));
    }
    if let Some(props) = properties(s) {
        for (k, p) in props {
            api_checks(p, &key_path(&child_path(path, "properties"), k), errs);
        }
    }
    if let AddProps::Schema(a) = additional_properties(s) {
        api_checks(a, &child_path(path, "additionalProperties"), errs);
    }
    for key in ["allOf", "anyOf", "oneOf"] {
        for (i, b) in schema_list(s, key).iter().enumerate() {
            api_checks(b, &index_path(&child_path(path, key), i), errs);
        }
    }
    if let Some(not) = s.get("not") {
        api_checks(not, &child_path(path, "not"), errs);
    }
    if let Some(items) = items_schema(s) {
        api_checks(items, &child_path(path, "items"), errs);
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Level {
    Root,
    Item,
    Field,
}

fn schema_type(s: &Value) -> &str {
    s.get("type").and_then(Value::as_str).unwrap_or("")
}

fn is_bare_type(s: &Value, t: &str) -> bool {
    s.as_object()
        .is_some_and(|m| m.len() == 1 && m.get("type").and_then(Value::as_str) == Some(t))
}

/// `anyOf: [{type: integer}, {type: string}]`, the one place a nested type is allowed.
fn is_int_or_string_any_of(s: &Value) -> bool {
    let any = schema_list(s, "anyOf");
    any.len() == 2 && is_bare_type(&any[0], "integer") && is_bare_type(&any[1], "string")
}

fn structural_invariants(s: &Value, lvl: Level, path: &str, errs: &mut Vec<FieldError>) {
    if !s.is_object() {
        return;
    }
    let ty = schema_type(s);
    let embedded = flag(s, "x-kubernetes-embedded-resource");
    let preserve = flag(s, "x-kubernetes-preserve-unknown-fields");
    let int_or_string = flag(s, "x-kubernetes-int-or-string");

    if ty == "array" && items_schema(s).is_none() {
        errs.push(FieldError::required(
            child_path(path, "items"),
            "must be specified",
        ));
    }
    if let Some(items) = items_schema(s) {
        structural_invariants(items, Level::Item, &child_path(path, "items"), errs);
    }
    if let Some(props) = properties(s) {
        for (k, p) in props {
            structural_invariants(
                p,
                Level::Field,
                &key_path(&child_path(path, "properties"), k),
                errs,
            );
        }
    }
    let add_props = additional_properties(s);
    if !matches!(add_props, AddProps::Absent) {
        if lvl == Level::Root {
            errs.push(FieldError::forbidden(
                child_path(path, "additionalProperties"),
                "must not be used at the root",
            ));
        }
        if let AddProps::Schema(a) = add_props {
            structural_invariants(a, Level::Field, &child_path(path, "additionalProperties"), errs);
        }
    }
    if int_or_string && preserve {
        errs.push(FieldError::invalid(
            child_path(path, "x-kubernetes-preserve-unknown-fields"),
            Value::Bool(true),
            "must be false if x-kubernetes-int-or-string is true",
        ));
    }
    if int_or_string && embedded {
        errs.push(FieldError::invalid(
            child_path(path, "x-kubernetes-embedded-resource"),
            Value::Bool(true),
            "must be false if x-kubernetes-int-or-string is true",
        ));
    }

    let skip_any_of = is_int_or_string_any_of(s);
    let skip_first_all_of_any_of = schema_list(s, "allOf")
        .first()
        .is_some_and(is_int_or_string_any_of);
    value_validation(s, skip_any_of, skip_first_all_of_any_of, path, errs);

    if embedded && ty != "object" {
        let detail = "must be object if x-kubernetes-embedded-resource is true";
        if ty.is_empty() {
            errs.push(FieldError::required(child_path(path, "type"), detail));
        } else {
            errs.push(FieldError::invalid(
                child_path(path, "type"),
                Value::from(ty),
                detail,
            ));
        }
    } else if ty.is_empty() && !int_or_string && !preserve {
        let detail = match lvl {
            Level::Root => "must not be empty at the root",
            Level::Item => "must not be empty for specified array items",
            Level::Field => "must not be empty for specified object fields",
        };
        errs.push(FieldError::required(child_path(path, "type"), detail));
    }
    if embedded && !matches!(add_props, AddProps::Absent) {
        errs.push(FieldError::forbidden(
            child_path(path, "additionalProperties"),
            "must not be used if x-kubernetes-embedded-resource is set",
        ));
    }
    if lvl == Level::Root && !ty.is_empty() && ty != "object" {
        errs.push(FieldError::invalid(
            child_path(path, "type"),
            Value::from(ty),
            "must be object at the root",
        ));
    }

    let check_metadata = lvl == Level::Root || embedded;
    let props_path = child_path(path, "properties");
    if check_metadata {
        for name in ["kind", "apiVersion"] {
            if let Some(p) = properties(s).and_then(|p| p.get(name))
                && schema_type(p) != "string"
            {
                errs.push(FieldError::invalid(
                    child_path(&key_path(&props_path, name), "type"),
                    Value::from(schema_type(p)),
                    "must be string",
                ));
            }
        }
    }
    if let Some(meta) = properties(s).and_then(|p| p.get("metadata")) {
        let meta_path = key_path(&props_path, "metadata");
        if check_metadata && schema_type(meta) != "object" {
            errs.push(FieldError::invalid(
                child_path(&meta_path, "type"),
                Value::from(schema_type(meta)),
                "must be object",
            ));
        }
        if lvl == Level::Root && !metadata_schema_is_allowed(meta) {
            errs.push(FieldError::forbidden(
                meta_path,
                "must not specify anything other than name and generateName, but metadata is implicitly specified",
            ));
        }
    }
    if embedded && !preserve && properties(s).is_none_or(Map::is_empty) {
        errs.push(FieldError::required(
            child_path(path, "properties"),
            "must not be empty if x-kubernetes-embedded-resource is true without x-kubernetes-preserve-unknown-fields",
        ));
    }
}

/// The root metadata schema may only carry type, default and properties limited to name/generateName.
fn metadata_schema_is_allowed(meta: &Value) -> bool {
    let Some(m) = meta.as_object() else { return true };
    m.iter().all(|(k, v)| match k.as_str() {
        "type" | "default" => true,
        "properties" => v
            .as_object()
            .is_none_or(|p| p.keys().all(|k| k == "name" || k == "generateName")),
        _ => false,
    })
}

fn value_validation(
    s: &Value,
    skip_any_of: bool,
    skip_first_all_of_any_of: bool,
    path: &str,
    errs: &mut Vec<FieldError>,
) {
    if !skip_any_of {
        for (i, b) in schema_list(s, "anyOf").iter().enumerate() {
            nested_value_validation(b, false, &index_path(&child_path(path, "anyOf"), i), errs);
        }
    }
    for (i, b) in schema_list(s, "allOf").iter().enumerate() {
        let skip = skip_first_all_of_any_of && i == 0;
        nested_value_validation(b, skip, &index_path(&child_path(path, "allOf"), i), errs);
    }
    for (i, b) in schema_list(s, "oneOf").iter().enumerate() {
        nested_value_validation(b, false, &index_path(&child_path(path, "oneOf"), i), errs);
    }
    if let Some(not) = s.get("not").filter(|n| n.is_object()) {
        nested_value_validation(not, false, &child_path(path, "not"), errs);
    }
    if let Some(p) = s.get("pattern").and_then(Value::as_str).filter(|p| !p.is_empty())
        && let Err(e) = Regex::new(&go_pattern_to_rust(p))
    {
        errs.push(FieldError::invalid(
            child_path(path, "pattern"),
            Value::from(p),
            format!("must be a valid regular expression, but isn't: {e}"),
        ));
    }
}

fn nested_value_validation(v: &Value, skip_any_of: bool, path: &str, errs: &mut Vec<FieldError>) {
    if !v.is_object() {
        return;
    }
    value_validation(v, skip_any_of, false, path, errs);
    if let Some(items) = items_schema(v) {
        nested_value_validation(items, false, &child_path(path, "items"), errs);
    }
    if let Some(props) = properties(v) {
        for (k, p) in props {
            nested_value_validation(p, false, &key_path(&child_path(path, "properties"), k), errs);
        }
    }
    let forbid = |errs: &mut Vec<FieldError>, key: &str, detail: &str| {
        errs.push(FieldError::forbidden(child_path(path, key), detail));
    };
    if !schema_type(v).is_empty() {
        forbid(errs, "type", "must be empty to be structural");
    }
    if !matches!(additional_properties(v), AddProps::Absent) {
        forbid(errs, "additionalProperties", "must be undefined to be structural");
    }
    if has_default(v) {
        forbid(errs, "default", "must be undefined to be structural");
    }
    if v.get("title")
        .and_then(Value::as_str)
        .is_some_and(|t| !t.is_empty())
    {
        forbid(errs, "title", "must be empty to be structural");
    }
    if v.get("description")
        .and_then(Value::as_str)
        .is_some_and(|t| !t.is_empty())
    {
        forbid(errs, "description", "must be empty to be structural");
    }
    if flag(v, "nullable") {
        forbid(errs, "nullable", "must be false to be structural");
    }
    if v.get("externalDocs").is_some() {
        forbid(errs, "externalDocs", "must be undefined to be structural");
    }
    if flag(v, "x-kubernetes-preserve-unknown-fields") {
        forbid(
            errs,
            "x-kubernetes-preserve-unknown-fields",
            "must be false to be structural",
        );
    }
    if flag(v, "x-kubernetes-embedded-resource") {
        forbid(
            errs,
            "x-kubernetes-embedded-resource",
            "must be false to be structural",
        );
    }
    if flag(v, "x-kubernetes-int-or-string") {
        forbid(
            errs,
            "x-kubernetes-int-or-string",
            "must be false to be structural",
        );
    }
    if !schema_list(v, "x-kubernetes-list-map-keys").is_empty() {
        forbid(
            errs,
            "x-kubernetes-list-map-keys",
            "must be empty to be structural",
        );
    }
    if v.get("x-kubernetes-list-type").is_some() {
        forbid(
            errs,
            "x-kubernetes-list-type",
            "must be undefined to be structural",
        );
    }
    if v.get("x-kubernetes-map-type").is_some() {
        forbid(
            errs,
            "x-kubernetes-map-type",
            "must be undefined to be structural",
        );
    }
    if !schema_list(v, "x-kubernetes-validations").is_empty() {
        forbid(errs, "x-kubernetes-validations", "must be empty to be structural");
    }
    if properties(v).is_some_and(|p| p.contains_key("metadata")) {
        errs.push(FieldError::forbidden(
            key_path(&child_path(path, "properties"), "metadata"),
            "must not be specified in a nested context",
        ));
    }
}

/// Every field or item constrained inside allOf/anyOf/oneOf/not must also be specified by the
/// structural part of the schema.
fn structural_completeness(s: &Value, path: &str, errs: &mut Vec<FieldError>) {
    if !s.is_object() {
        return;
    }
    value_validation_completeness(s, s, path, path, errs);
    if let Some(items) = items_schema(s) {
        structural_completeness(items, &child_path(path, "items"), errs);
    }
    if let Some(props) = properties(s) {
        for (k, p) in props {
            structural_completeness(p, &key_path(&child_path(path, "properties"), k), errs);
        }
    }
    if let AddProps::Schema(a) = additional_properties(s) {
        structural_completeness(a, &child_path(path, "additionalProperties"), errs);
    }
}

fn value_validation_completeness(
    v: &Value,
    s: &Value,
    s_path: &str,
    v_path: &str,
    errs: &mut Vec<FieldError>,
) {
    for key in ["allOf", "anyOf", "oneOf"] {
        for (i, b) in schema_list(v, key).iter().enumerate() {
            nested_completeness(b, Some(s), s_path, &index_path(&child_path(v_path, key), i), errs);
        }
    }
    if let Some(not) = v.get("not").filter(|n| n.is_object()) {
        nested_completeness(not, Some(s), s_path, &child_path(v_path, "not"), errs);
    }
}

fn nested_completeness(v: &Value, s: Option<&Value>, s_path: &str, v_path: &str, errs: &mut Vec<FieldError>) {
    let Some(s) = s else {
        errs.push(FieldError::required(
            s_path,
            format!("because it is defined in {v_path}"),
        ));
        return;
    };
    value_validation_completeness(v, s, s_path, v_path, errs);
    if let Some(items) = items_schema(v) {
        nested_completeness(
            items,
            items_schema(s),
            &child_path(s_path, "items"),
            &child_path(v_path, "items"),
            errs,
        );
    }
    if let Some(props) = properties(v) {
        for (k, p) in props {
            let s_child = key_path(&child_path(s_path, "properties"), k);
            let v_child = key_path(&child_path(v_path, "properties"), k);
            match properties(s).and_then(|sp| sp.get(k)) {
                Some(sp) => nested_completeness(p, Some(sp), &s_child, &v_child, errs),
                None => errs.push(FieldError::required(
                    s_child,
                    format!("because it is defined in {v_child}"),
                )),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn msgs(errs: &[FieldError]) -> Vec<String> {
        errs.iter().map(ToString::to_string).collect()
    }

    fn spec_schema(spec: Value) -> Value {
        json!({"type": "object", "properties": {"spec": spec}})
    }

    fn check(schema: &Value, obj: Value) -> Vec<String> {
        msgs(&validate(schema, &obj))
    }

    // ----- rendering -----

    #[test]
    fn go_float_matches_go_v_verb() {
        assert_eq!(go_float(10.0), "10");
        assert_eq!(go_float(10.5), "10.5");
        assert_eq!(go_float(123456.0), "123456");
        assert_eq!(go_float(1e6), "1e+06");
        assert_eq!(go_float(1234567.0), "1.234567e+06");
        assert_eq!(go_float(0.0001), "0.0001");
        assert_eq!(go_float(0.000015), "1.5e-05");
        assert_eq!(go_float(-2.25), "-2.25");
    }

    #[test]
    fn go_quote_escapes_like_strconv_quote() {
        assert_eq!(go_quote("a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(go_quote("x\ny\t\u{1}"), r#""x\ny\t\x01""#);
        assert_eq!(go_quote("héllo"), "\"héllo\"");
    }

    #[test]
    fn bad_values_render_like_apimachinery_v1_33() {
        let e = FieldError::invalid("f", json!({"b": 1, "a": "x", "c": [true, null]}), "d");
        assert_eq!(
            e.to_string(),
            r#"f: Invalid value: map[string]interface {}{"a":"x", "b":1, "c":[]interface {}{true, interface {}(nil)}}: d"#
        );
        assert_eq!(
            FieldError::invalid("f", Value::Null, "d").message(),
            r#"Invalid value: "null": d"#
        );
        assert_eq!(
            FieldError::invalid("f", json!(2.5), "d").message(),
            "Invalid value: 2.5: d"
        );
        assert_eq!(
            FieldError::invalid("f", json!(false), "").message(),
            "Invalid value: false"
        );
    }

    #[test]
    fn error_constructors_reasons_and_messages() {
        let cases = [
            (
                FieldError::required("spec.version", ""),
                "FieldValueRequired",
                "spec.version: Required value",
            ),
            (
                FieldError::required("a", "must not be empty"),
                "FieldValueRequired",
                "a: Required value: must not be empty",
            ),
            (
                FieldError::forbidden("a", "nope"),
                "FieldValueForbidden",
                "a: Forbidden: nope",
            ),
            (
                FieldError::too_long("a", 10),
                "FieldValueTooLong",
                "a: Too long: may not be more than 10 bytes",
            ),
            (
                FieldError::too_long("a", 1),
                "FieldValueTooLong",
                "a: Too long: may not be more than 1 byte",
            ),
            (
                FieldError::too_many("a", 3, 2),
                "FieldValueTooMany",
                "a: Too many: 3: must have at most 2 items",
            ),
            (
                FieldError::too_many("a", 2, 1),
                "FieldValueTooMany",
                "a: Too many: 2: must have at most 1 item",
            ),
            (
                FieldError::too_many("a", -1, 1),
                "FieldValueTooMany",
                "a: Too many: must have at most 1 item",
            ),
            (
                FieldError::duplicate("a[1]", json!("x")),
                "FieldValueDuplicate",
                r#"a[1]: Duplicate value: "x""#,
            ),
            (
                FieldError::not_supported("a", json!("v"), &["x".into(), "y".into()]),
                "FieldValueNotSupported",
                r#"a: Unsupported value: "v": supported values: "x", "y""#,
            ),
            (
                FieldError::type_invalid("a", json!("string"), "detail"),
                "FieldValueTypeInvalid",
                r#"a: Invalid value: "string": detail"#,
            ),
            (
                FieldError::internal("a", "boom"),
                "InternalError",
                "a: Internal error: boom",
            ),
        ];
        for (err, reason, text) in cases {
            assert_eq!(err.reason(), reason);
            assert_eq!(err.to_string(), text);
        }
    }

    // ----- validation: single keywords -----

    #[test]
    fn required_fields() {
        let schema = spec_schema(
            json!({"type": "object", "required": ["version", "engine"], "properties": {
            "version": {"type": "string"}, "engine": {"type": "string"}}}),
        );
        assert_eq!(
            check(&schema, json!({"spec": {"engine": "x"}})),
            vec!["spec.version: Required value"]
        );
        let root =
            json!({"type": "object", "required": ["spec"], "properties": {"spec": {"type": "object"}}});
        assert_eq!(
            check(&root, json!({"metadata": {"name": "a"}})),
            vec!["spec: Required value"]
        );
        assert_eq!(validate(&root, &json!({}))[0].reason(), "FieldValueRequired");
    }

    #[test]
    fn enum_values() {
        let schema = spec_schema(json!({"type": "object", "properties": {
            "engine": {"type": "string", "enum": ["PostgreSQL", "MySQL"]},
            "level": {"type": "integer", "enum": [1, 2]},
            "mode": {"type": "string", "nullable": true, "enum": ["a"]}}}));
        let errs = validate(
            &schema,
            &json!({"spec": {"engine": "Oracle", "level": 3, "mode": null}}),
        );
        assert_eq!(
            msgs(&errs),
            vec![
                r#"spec.engine: Unsupported value: "Oracle": supported values: "PostgreSQL", "MySQL""#,
                r#"spec.level: Unsupported value: 3: supported values: "1", "2""#,
                r#"spec.mode: Unsupported value: "null": supported values: "a""#,
            ]
        );
        assert_eq!(errs[0].reason(), "FieldValueNotSupported");
        assert_eq!(errs[0].field, "spec.engine");
        assert_eq!(
            errs[0].message(),
            r#"Unsupported value: "Oracle": supported values: "PostgreSQL", "MySQL""#
        );
        assert!(check(&schema, json!({"spec": {"engine": "MySQL", "level": 2}})).is_empty());
    }

    #[test]
    fn type_errors_carry_the_json_type_name() {
        let schema = spec_schema(json!({"type": "object", "properties": {
            "replicas": {"type": "integer"}, "name": {"type": "string"}, "ok": {"type": "boolean"},
            "ratio": {"type": "number"}, "list": {"type": "array", "items": {"type": "string"}},
            "obj": {"type": "object"}}}));
        let errs = validate(
            &schema,
            &json!({"spec": {"replicas": "3", "name": 5, "ok": "yes", "ratio": true, "list": {}, "obj": []}}),
        );
        assert_eq!(
            msgs(&errs),
            vec![
                r#"spec.replicas: Invalid value: "string": spec.replicas in body must be of type integer: "string""#,
                r#"spec.name: Invalid value: "integer": spec.name in body must be of type string: "integer""#,
                r#"spec.ok: Invalid value: "string": spec.ok in body must be of type boolean: "string""#,
                r#"spec.ratio: Invalid value: "boolean": spec.ratio in body must be of type number: "boolean""#,
                r#"spec.list: Invalid value: "object": spec.list in body must be of type array: "object""#,
                r#"spec.obj: Invalid value: "array": spec.obj in body must be of type object: "array""#,
            ]
        );
        assert!(errs.iter().all(|e| e.reason() == "FieldValueTypeInvalid"));
    }

    #[test]
    fn integers_must_be_integral_and_numbers_accept_integers() {
        let schema = spec_schema(json!({"type": "object", "properties": {
            "replicas": {"type": "integer"}, "ratio": {"type": "number"}}}));
        assert_eq!(
            check(&schema, json!({"spec": {"replicas": 1.5}})),
            vec![
                r#"spec.replicas: Invalid value: "number": spec.replicas in body must be of type integer: "number""#
            ]
        );
        assert!(check(&schema, json!({"spec": {"replicas": 2.0, "ratio": 3}})).is_empty());
    }

    #[test]
    fn null_is_invalid_unless_nullable() {
        let schema = spec_schema(json!({"type": "object", "properties": {
            "x": {"type": "string"}, "y": {"type": "string", "nullable": true},
            "list": {"type": "array", "items": {"type": "string"}},
            "nlist": {"type": "array", "items": {"type": "string", "nullable": true}}}}));
        assert_eq!(
            check(
                &schema,
                json!({"spec": {"x": null, "y": null, "list": ["a", null], "nlist": [null]}})
            ),
            vec![
                r#"spec.x: Invalid value: "null": spec.x in body must be of type string: "null""#,
                r#"spec.list[1]: Invalid value: "null": spec.list[1] in body must be of type string: "null""#,
            ]
        );
    }

    #[test]
    fn int_or_string() {
        let bare = spec_schema(json!({"type": "object", "properties": {
            "port": {"x-kubernetes-int-or-string": true}}}));
        assert!(check(&bare, json!({"spec": {"port": 80}})).is_empty());
        assert!(check(&bare, json!({"spec": {"port": "http"}})).is_empty());
        assert_eq!(
            check(&bare, json!({"spec": {"port": true}})),
            vec![
                r#"spec.port: Invalid value: "boolean": spec.port in body must be of type integer,string: "boolean""#
            ]
        );
        // controller-gen emits the anyOf form; the real server then also reports the anyOf failure and the
        // first branch's error.
        let generated = spec_schema(json!({"type": "object", "properties": {"port": {
            "x-kubernetes-int-or-string": true, "anyOf": [{"type": "integer"}, {"type": "string"}]}}}));
        assert!(check(&generated, json!({"spec": {"port": "80%"}})).is_empty());
        assert_eq!(
            check(&generated, json!({"spec": {"port": 1.5}})),
            vec![
                r#"spec.port: Invalid value: "number": spec.port in body must be of type integer,string: "number""#,
                r#"<nil>: Invalid value: "": "spec.port" must validate at least one schema (anyOf)"#,
                r#"spec.port: Invalid value: "number": spec.port in body must be of type integer: "number""#,
            ]
        );
    }

    #[test]
    fn string_lengths_count_characters() {
        let schema = spec_schema(json!({"type": "object", "properties": {
            "name": {"type": "string", "minLength": 3, "maxLength": 10},
            "code": {"type": "string", "maxLength": 1}}}));
        let errs = validate(&schema, &json!({"spec": {"name": "ab", "code": "xy"}}));
        assert_eq!(
            msgs(&errs),
            vec![
                r#"spec.name: Invalid value: "ab": spec.name in body should be at least 3 chars long"#,
                "spec.code: Too long: may not be more than 1 byte",
            ]
        );
        assert_eq!(errs[1].reason(), "FieldValueTooLong");
        assert_eq!(
            check(&schema, json!({"spec": {"name": "abcdefghijk"}})),
            vec!["spec.name: Too long: may not be more than 10 bytes"]
        );
        // Runes, not bytes, are counted although the message says bytes.
        assert!(check(&schema, json!({"spec": {"name": "ééééé"}})).is_empty());
    }

    #[test]
    fn pattern_uses_go_regexp_semantics() {
        let schema = spec_schema(json!({"type": "object", "properties": {
            "size": {"type": "string", "pattern": "^[0-9]+(Mi|Gi)$"},
            "digits": {"type": "string", "pattern": "^\\d+$"},
            "word": {"type": "string", "pattern": "^[\\w-]+$"},
            "partial": {"type": "string", "pattern": "b"}}}));
        assert_eq!(
            check(&schema, json!({"spec": {"size": "abc", "partial": "abc"}})),
            vec![r#"spec.size: Invalid value: "abc": spec.size in body should match '^[0-9]+(Mi|Gi)$'"#]
        );
        assert!(
            check(
                &schema,
                json!({"spec": {"size": "10Gi", "digits": "123", "word": "a_b-c"}})
            )
            .is_empty()
        );
        // Go's \d and \w are ASCII only.
        assert_eq!(
            check(&schema, json!({"spec": {"digits": "١٢", "word": "é"}})),
            vec![
                r#"spec.digits: Invalid value: "١٢": spec.digits in body should match '^\d+$'"#,
                r#"spec.word: Invalid value: "é": spec.word in body should match '^[\w-]+$'"#,
            ]
        );
    }

    #[test]
    fn go_pattern_translation() {
        assert_eq!(
            go_pattern_to_rust(r"^\d+\s\w$"),
            r"^[0-9]+[\t\n\f\r ][0-9A-Za-z_]$"
        );
        assert_eq!(go_pattern_to_rust(r"[\d\D]"), r"[0-9[:^digit:]]");
        assert_eq!(
            go_pattern_to_rust(r"[]a[:alpha:]\w]"),
            r"[\]a[:alpha:]0-9A-Za-z_]"
        );
        assert_eq!(pattern_matches(r"\bfoo\b", "a foo b"), Ok(true));
        assert_eq!(pattern_matches(r"\bfoo\b", "afoob"), Ok(false));
        assert_eq!(pattern_matches(r"^[^\d]+$", "abc"), Ok(true));
        assert_eq!(pattern_matches(r"^[\D]+$", "ab1"), Ok(false));
        assert!(pattern_matches("(", "x").is_err());
    }

    #[test]
    fn invalid_pattern_is_reported_like_kube_openapi() {
        let schema =
            spec_schema(json!({"type": "object", "properties": {"a": {"type": "string", "pattern": "("}}}));
        let errs = check(&schema, json!({"spec": {"a": "x"}}));
        assert_eq!(errs.len(), 1);
        assert!(errs[0].starts_with(
            r#"spec.a: Invalid value: "x": spec.a in body should match '(, but pattern is invalid: "#
        ));
    }

    #[test]
    fn string_checks_stop_at_the_first_failure() {
        let schema = spec_schema(json!({"type": "object", "properties": {
            "name": {"type": "string", "minLength": 5, "pattern": "^z"}}}));
        assert_eq!(
            check(&schema, json!({"spec": {"name": "ab"}})),
            vec![r#"spec.name: Invalid value: "ab": spec.name in body should be at least 5 chars long"#]
        );
    }

    #[test]
    fn numeric_bounds() {
        let schema = spec_schema(json!({"type": "object", "properties": {
            "replicas": {"type": "integer", "minimum": 1, "maximum": 10},
            "lo": {"type": "integer", "minimum": 0, "exclusiveMinimum": true},
            "hi": {"type": "number", "maximum": 2.5, "exclusiveMaximum": true},
            "ratio": {"type": "number", "minimum": 0.5},
            "n": {"type": "integer", "multipleOf": 5}}}));
        let errs = validate(
            &schema,
            &json!({"spec": {"replicas": 20, "lo": 0, "hi": 2.5, "ratio": 0.25, "n": 7}}),
        );
        assert_eq!(
            msgs(&errs),
            vec![
                "spec.replicas: Invalid value: 20: spec.replicas in body should be less than or equal to 10",
                "spec.lo: Invalid value: 0: spec.lo in body should be greater than 0",
                "spec.hi: Invalid value: 2.5: spec.hi in body should be less than 2.5",
                "spec.ratio: Invalid value: 0.25: spec.ratio in body should be greater than or equal to 0.5",
                "spec.n: Invalid value: 7: spec.n in body should be a multiple of 5",
            ]
        );
        assert_eq!(errs[0].reason(), "FieldValueInvalid");
        assert_eq!(
            check(&schema, json!({"spec": {"replicas": 0}})),
            vec![
                "spec.replicas: Invalid value: 0: spec.replicas in body should be greater than or equal to 1"
            ]
        );
        assert!(
            check(
                &schema,
                json!({"spec": {"replicas": 10, "lo": 1, "hi": 2.4, "ratio": 0.5, "n": 15}})
            )
            .is_empty()
        );
    }

    #[test]
    fn float_values_against_integer_bounds() {
        let schema = spec_schema(json!({"type": "object", "properties": {
            "x": {"type": "number", "maximum": 10},
            "y": {"type": "number", "multipleOf": 0.1}}}));
        assert_eq!(
            check(&schema, json!({"spec": {"x": 10.5, "y": 0.3}})),
            vec!["spec.x: Invalid value: 10.5: spec.x in body should be less than or equal to 10"]
        );
    }

    #[test]
    fn array_sizes_and_uniqueness() {
        let schema = spec_schema(json!({"type": "object", "properties": {
            "users": {"type": "array", "minItems": 1, "maxItems": 2, "items": {"type": "string"}},
            "tags": {"type": "array", "uniqueItems": true, "items": {"type": "string"}}}}));
        let errs = validate(
            &schema,
            &json!({"spec": {"users": ["a", "b", "c"], "tags": ["x", "y", "x"]}}),
        );
        assert_eq!(
            msgs(&errs),
            vec![
                "spec.users: Too many: 3: must have at most 2 items",
                r#"spec.tags: Invalid value: "": spec.tags in body shouldn't contain duplicates"#,
            ]
        );
        assert_eq!(errs[0].reason(), "FieldValueTooMany");
        assert_eq!(
            check(&schema, json!({"spec": {"users": []}})),
            vec!["spec.users: Invalid value: 0: spec.users in body should have at least 1 items"]
        );
    }

    #[test]
    fn property_counts() {
        let schema = spec_schema(json!({"type": "object", "properties": {
            "labels": {"type": "object", "minProperties": 1, "maxProperties": 2,
                       "additionalProperties": {"type": "string", "maxLength": 1}}}}));
        assert_eq!(
            check(&schema, json!({"spec": {"labels": {}}})),
            vec!["spec.labels: Invalid value: 0: spec.labels in body should have at least 1 properties"]
        );
        // Too many properties stops the object's other checks, as in kube-openapi.
        assert_eq!(
            check(
                &schema,
                json!({"spec": {"labels": {"a": "xx", "b": "y", "c": "z"}}})
            ),
            vec!["spec.labels: Too many: 3: must have at most 2 items"]
        );
    }

    #[test]
    fn additional_properties_schema() {
        let schema = spec_schema(json!({"type": "object", "properties": {
            "limits": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}}}}));
        assert_eq!(
            check(
                &schema,
                json!({"spec": {"limits": {"cpu": "1", "mem": -1, "ok": 3}}})
            ),
            vec![
                r#"spec.limits.cpu: Invalid value: "string": spec.limits.cpu in body must be of type integer: "string""#,
                "spec.limits.mem: Invalid value: -1: spec.limits.mem in body should be greater than or equal to 0",
            ]
        );
    }

    #[test]
    fn additional_properties_false_reports_forbidden_property() {
        let schema = spec_schema(json!({"type": "object", "additionalProperties": false,
            "properties": {"a": {"type": "string"}}}));
        assert_eq!(
            check(&schema, json!({"spec": {"a": "x", "b": 1}})),
            vec![r#"spec: Invalid value: "b": spec.b in body is a forbidden property"#]
        );
    }

    #[test]
    fn formats() {
        let schema = spec_schema(json!({"type": "object", "properties": {
            "at": {"type": "string", "format": "date-time"},
            "day": {"type": "string", "format": "date"},
            "id": {"type": "string", "format": "uuid"},
            "ip": {"type": "string", "format": "ipv4"},
            "net": {"type": "string", "format": "cidr"},
            "data": {"type": "string", "format": "byte"},
            "count": {"type": "integer", "format": "int32"},
            "free": {"type": "string", "format": "my-own-format"}}}));
        assert!(check(
            &schema,
            json!({"spec": {"at": "2024-02-29T03:04:05.123Z", "day": "2024-02-29", "id": "0b0d4a3e-8c0e-4b8e-9a51-0c4d8a8f7a11",
                  "ip": "10.0.0.1", "net": "10.0.0.0/8", "data": "aGVsbG8=", "count": 5000000000_i64, "free": "x"}})
        )
        .is_empty());
        let errs = validate(
            &schema,
            &json!({"spec": {"at": "yesterday", "day": "2023-02-29", "id": "nope", "ip": "300.1.1.1", "net": "10.0.0.0/33",
                   "data": "!!"}}),
        );
        assert_eq!(
            msgs(&errs),
            vec![
                r#"spec.at: Invalid value: "yesterday": spec.at in body must be of type date-time: "yesterday""#,
                r#"spec.day: Invalid value: "2023-02-29": spec.day in body must be of type date: "2023-02-29""#,
                r#"spec.id: Invalid value: "nope": spec.id in body must be of type uuid: "nope""#,
                r#"spec.ip: Invalid value: "300.1.1.1": spec.ip in body must be of type ipv4: "300.1.1.1""#,
                r#"spec.net: Invalid value: "10.0.0.0/33": spec.net in body must be of type cidr: "10.0.0.0/33""#,
                r#"spec.data: Invalid value: "!!": spec.data in body must be of type byte: "!!""#,
            ]
        );
        assert!(errs.iter().all(|e| e.reason() == "FieldValueTypeInvalid"));
        // A non-string value under a string format reports the format, as kube-openapi does.
        assert_eq!(
            check(&schema, json!({"spec": {"at": 5}})),
            vec![r#"spec.at: Invalid value: "int64": spec.at in body must be of type date-time: "int64""#]
        );
    }

    // ----- validation: structure, order, combinations -----

    #[test]
    fn nested_arrays_of_objects_use_indexed_paths() {
        let schema = spec_schema(
            json!({"type": "object", "properties": {"users": {"type": "array", "items": {
            "type": "object", "required": ["username"], "properties": {
                "username": {"type": "string", "minLength": 3},
                "roles": {"type": "array", "items": {"type": "object", "properties": {
                    "name": {"type": "string", "enum": ["admin", "viewer"]}}}}}}}}}),
        );
        let obj = json!({"spec": {"users": [
            {"username": "alice", "roles": [{"name": "admin"}, {"name": "root"}]},
            {"roles": []},
            {"username": "bo"}]}});
        assert_eq!(
            check(&schema, obj),
            vec![
                r#"spec.users[0].roles[1].name: Unsupported value: "root": supported values: "admin", "viewer""#,
                "spec.users[1].username: Required value",
                r#"spec.users[2].username: Invalid value: "bo": spec.users[2].username in body should be at least 3 chars long"#,
            ]
        );
    }

    #[test]
    fn every_error_is_reported_in_schema_order() {
        let schema = json!({"type": "object", "required": ["spec"], "properties": {
            "spec": {"type": "object", "required": ["version", "engine"], "properties": {
                "engine": {"type": "string", "enum": ["PostgreSQL", "MySQL"]},
                "replicas": {"type": "integer", "maximum": 10},
                "size": {"type": "string", "pattern": "^[0-9]+(Mi|Gi)$"},
                "version": {"type": "string"}}},
            "status": {"type": "object", "properties": {"phase": {"type": "string"}}}}});
        let obj = json!({"apiVersion": "db.example.com/v1", "kind": "Database", "metadata": {"name": "x"},
            "spec": {"size": "abc", "replicas": 20, "engine": "Oracle"}, "status": {"phase": 1}});
        assert_eq!(
            check(&schema, obj),
            vec![
                r#"spec.engine: Unsupported value: "Oracle": supported values: "PostgreSQL", "MySQL""#,
                "spec.replicas: Invalid value: 20: spec.replicas in body should be less than or equal to 10",
                r#"spec.size: Invalid value: "abc": spec.size in body should match '^[0-9]+(Mi|Gi)$'"#,
                "spec.version: Required value",
                r#"status.phase: Invalid value: "integer": status.phase in body must be of type string: "integer""#,
            ]
        );
    }

    #[test]
    fn type_error_and_enum_error_together() {
        let schema = spec_schema(json!({"type": "object", "properties": {
            "mode": {"type": "string", "enum": ["a", "b"]}}}));
        assert_eq!(
            check(&schema, json!({"spec": {"mode": 1}})),
            vec![
                r#"spec.mode: Invalid value: "integer": spec.mode in body must be of type string: "integer""#,
                r#"spec.mode: Unsupported value: 1: supported values: "a", "b""#,
            ]
        );
    }

    #[test]
    fn root_metadata_is_not_validated() {
        let schema = json!({"type": "object", "properties": {
            "metadata": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 3}}}}});
        assert!(
            check(
                &schema,
                json!({"metadata": {"name": "much-too-long", "labels": {"a": "b"}}})
            )
            .is_empty()
        );
    }

    #[test]
    fn preserve_unknown_fields_accepts_anything_untyped() {
        let schema = spec_schema(
            json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true,
            "properties": {"known": {"type": "integer"}}}),
        );
        assert!(
            check(
                &schema,
                json!({"spec": {"anything": {"deep": [1, "x"]}, "known": 1}})
            )
            .is_empty()
        );
        assert_eq!(check(&schema, json!({"spec": {"known": "x"}})).len(), 1);
    }

    #[test]
    fn any_of_one_of_all_of_not() {
        let schema = spec_schema(json!({"type": "object",
            "properties": {"a": {"type": "string"}, "b": {"type": "string"}, "n": {"type": "integer"}},
            "anyOf": [{"required": ["a"]}, {"required": ["b"]}]}));
        assert_eq!(
            check(&schema, json!({"spec": {"n": 1}})),
            vec![
                r#"<nil>: Invalid value: "": "spec" must validate at least one schema (anyOf)"#,
                "spec.a: Required value",
            ]
        );
        assert!(check(&schema, json!({"spec": {"b": "x"}})).is_empty());

        let one = spec_schema(json!({"type": "object",
            "properties": {"a": {"type": "string"}, "b": {"type": "string"}},
            "oneOf": [{"required": ["a"]}, {"required": ["b"]}]}));
        assert!(check(&one, json!({"spec": {"a": "x"}})).is_empty());
        assert_eq!(
            check(&one, json!({"spec": {"a": "x", "b": "y"}})),
            vec![
                r#"<nil>: Invalid value: "": "spec" must validate one and only one schema (oneOf). Found 2 valid alternatives"#
            ]
        );
        assert_eq!(
            check(&one, json!({"spec": {}})),
            vec![
                r#"<nil>: Invalid value: "": "spec" must validate one and only one schema (oneOf). Found none valid"#,
                "spec.a: Required value",
            ]
        );

        let all = spec_schema(json!({"type": "object", "properties": {"n": {"type": "integer",
            "allOf": [{"minimum": 1}, {"maximum": 5}]}}}));
        assert_eq!(
            check(&all, json!({"spec": {"n": 9}})),
            vec![
                "spec.n: Invalid value: 9: spec.n in body should be less than or equal to 5",
                r#"<nil>: Invalid value: "": "spec.n" must validate all the schemas (allOf)"#,
            ]
        );

        let not = spec_schema(json!({"type": "object", "properties": {"a": {"type": "string"}},
            "not": {"required": ["a"]}}));
        assert_eq!(
            check(&not, json!({"spec": {"a": "x"}})),
            vec![r#"<nil>: Invalid value: "": "spec" must not validate the schema (not)"#]
        );
    }

    #[test]
    fn embedded_resources_need_api_version_and_kind() {
        let schema = spec_schema(json!({"type": "object", "properties": {"template": {
            "type": "object", "x-kubernetes-embedded-resource": true, "x-kubernetes-preserve-unknown-fields": true}}}));
        assert_eq!(
            check(
                &schema,
                json!({"spec": {"template": {"metadata": {"name": "x"}}}})
            ),
            vec![
                "spec.template.apiVersion: Required value",
                "spec.template.kind: Required value"
            ]
        );
        assert!(
            check(
                &schema,
                json!({"spec": {"template": {"apiVersion": "v1", "kind": "Pod"}}})
            )
            .is_empty()
        );
        assert_eq!(
            check(
                &schema,
                json!({"spec": {"template": {"apiVersion": "a/b/c", "kind": "Bad_Kind"}}})
            ),
            vec![
                r#"spec.template.apiVersion: Invalid value: "a/b/c": unexpected GroupVersion string: a/b/c"#,
                "spec.template.kind: Invalid value: \"Bad_Kind\": may have mixed case, but should otherwise match: \
                 a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an \
                 alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', \
                 regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')",
            ]
        );
    }

    #[test]
    fn list_type_set_and_map_duplicates() {
        let schema = spec_schema(json!({"type": "object", "properties": {
            "tags": {"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}},
            "ports": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"],
                      "items": {"type": "object", "properties": {"name": {"type": "string"}, "port": {"type": "integer"}}}}}}));
        let errs = validate(
            &schema,
            &json!({"spec": {"tags": ["a", "b", "a", "a"], "ports": [{"name": "http", "port": 80}, {"name": "http", "port": 81}]}}),
        );
        assert_eq!(
            msgs(&errs),
            vec![
                r#"spec.tags[2]: Duplicate value: "a""#,
                r#"spec.ports[1]: Duplicate value: map[string]interface {}{"name":"http"}"#,
            ]
        );
        assert_eq!(errs[0].reason(), "FieldValueDuplicate");
    }

    // ----- pruning -----

    #[test]
    fn prune_keeps_type_and_object_meta_at_the_root() {
        let schema = spec_schema(json!({"type": "object", "properties": {"size": {"type": "string"}}}));
        let mut obj = json!({"apiVersion": "v1", "kind": "K", "metadata": {"name": "a", "weird": 1},
            "spec": {"size": "1", "foo": 2}, "extra": true});
        let pruned = prune(&schema, &mut obj);
        assert_eq!(pruned, vec!["extra", "spec.foo"]);
        assert_eq!(
            obj,
            json!({"apiVersion": "v1", "kind": "K", "metadata": {"name": "a", "weird": 1}, "spec": {"size": "1"}})
        );
    }

    #[test]
    fn prune_reports_sorted_paths_inside_arrays() {
        let schema = spec_schema(
            json!({"type": "object", "properties": {"users": {"type": "array", "items": {
            "type": "object", "properties": {"name": {"type": "string"}}}}}}),
        );
        let mut obj = json!({"spec": {"zeta": 1, "users": [{"name": "a", "bar": 1}, {"name": "b"}, {"baz": 2, "alpha": 3}]}});
        assert_eq!(
            prune(&schema, &mut obj),
            vec![
                "spec.users[0].bar",
                "spec.users[2].alpha",
                "spec.users[2].baz",
                "spec.zeta"
            ]
        );
        assert_eq!(
            obj,
            json!({"spec": {"users": [{"name": "a"}, {"name": "b"}, {}]}})
        );
    }

    #[test]
    fn prune_respects_preserve_unknown_fields_at_each_level() {
        // At spec: unknown kept, but a specified field below is still pruned by its own schema.
        let schema = spec_schema(
            json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true,
            "properties": {"known": {"type": "object", "properties": {"a": {"type": "string"}}}}}),
        );
        let mut obj = json!({"spec": {"free": {"x": 1}, "known": {"a": "1", "b": 2}}});
        assert_eq!(prune(&schema, &mut obj), vec!["spec.known.b"]);
        assert_eq!(obj, json!({"spec": {"free": {"x": 1}, "known": {"a": "1"}}}));

        // At the root: everything unknown stays.
        let root = json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true});
        let mut obj = json!({"spec": {"x": 1}, "other": [1]});
        assert!(prune(&root, &mut obj).is_empty());
        assert_eq!(obj, json!({"spec": {"x": 1}, "other": [1]}));

        // On array items only.
        let items = spec_schema(json!({"type": "object", "properties": {
            "raw": {"type": "array", "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}},
            "typed": {"type": "object", "properties": {"a": {"type": "integer"}}}}}));
        let mut obj = json!({"spec": {"raw": [{"anything": 1}], "typed": {"a": 1, "b": 2}}});
        assert_eq!(prune(&items, &mut obj), vec!["spec.typed.b"]);
        assert_eq!(
            obj,
            json!({"spec": {"raw": [{"anything": 1}], "typed": {"a": 1}}})
        );
    }

    #[test]
    fn prune_follows_additional_properties_and_empty_objects() {
        let schema = spec_schema(json!({"type": "object", "properties": {
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "byName": {"type": "object", "additionalProperties": {"type": "object", "properties": {"n": {"type": "integer"}}}},
            "opaque": {"type": "object"}}}));
        let mut obj =
            json!({"spec": {"labels": {"a": "b"}, "byName": {"k": {"n": 1, "junk": 2}}, "opaque": {"x": 1}}});
        assert_eq!(
            prune(&schema, &mut obj),
            vec!["spec.byName.k.junk", "spec.opaque.x"]
        );
        assert_eq!(
            obj,
            json!({"spec": {"labels": {"a": "b"}, "byName": {"k": {"n": 1}}, "opaque": {}}})
        );
    }

    #[test]
    fn prune_keeps_meta_fields_of_embedded_resources() {
        let schema = spec_schema(json!({"type": "object", "properties": {"template": {
            "type": "object", "x-kubernetes-embedded-resource": true,
            "properties": {"spec": {"type": "object", "properties": {"a": {"type": "string"}}}}}}}));
        let mut obj = json!({"spec": {"template": {"apiVersion": "v1", "kind": "Pod", "metadata": {"x": 1},
            "spec": {"a": "1", "b": 2}, "status": {}}}});
        assert_eq!(
            prune(&schema, &mut obj),
            vec!["spec.template.spec.b", "spec.template.status"]
        );
        assert_eq!(
            obj,
            json!({"spec": {"template": {"apiVersion": "v1", "kind": "Pod", "metadata": {"x": 1}, "spec": {"a": "1"}}}})
        );
    }

    // ----- defaulting -----

    #[test]
    fn defaults_fill_missing_fields_recursively() {
        let schema = spec_schema(json!({"type": "object", "default": {}, "properties": {
            "replicas": {"type": "integer", "default": 1},
            "engine": {"type": "string", "default": "PostgreSQL"},
            "backup": {"type": "object", "default": {}, "properties": {
                "enabled": {"type": "boolean", "default": true}}}}}));
        let mut obj = json!({"spec": {"engine": "MySQL"}});
        apply_defaults(&schema, &mut obj);
        assert_eq!(
            obj,
            json!({"spec": {"engine": "MySQL", "replicas": 1, "backup": {"enabled": true}}})
        );

        let mut empty = json!({});
        apply_defaults(&schema, &mut empty);
        assert_eq!(
            empty,
            json!({"spec": {"replicas": 1, "engine": "PostgreSQL", "backup": {"enabled": true}}})
        );
    }

    #[test]
    fn defaults_inside_arrays_and_maps() {
        let schema = spec_schema(json!({"type": "object", "properties": {
            "users": {"type": "array", "items": {"type": "object", "default": {"role": "none"}, "properties": {
                "name": {"type": "string"}, "role": {"type": "string", "default": "viewer"}}}},
            "pools": {"type": "object", "additionalProperties": {"type": "object", "properties": {
                "size": {"type": "integer", "default": 3}}}}}}));
        let mut obj = json!({"spec": {"users": [{"name": "a"}, {"name": "b", "role": "admin"}, null],
            "pools": {"x": {}, "y": {"size": 5}}}});
        apply_defaults(&schema, &mut obj);
        assert_eq!(
            obj,
            json!({"spec": {"users": [{"name": "a", "role": "viewer"}, {"name": "b", "role": "admin"}, {"role": "none"}],
                "pools": {"x": {"size": 3}, "y": {"size": 5}}}})
        );
    }

    #[test]
    fn defaults_and_nulls() {
        let schema = spec_schema(json!({"type": "object", "properties": {
            "a": {"type": "string", "default": "x"},
            "b": {"type": "string", "nullable": true, "default": "y"},
            "c": {"type": "string"},
            "d": {"type": "string", "nullable": true}}}));
        let mut obj = json!({"spec": {"a": null, "b": null, "c": null, "d": null}});
        apply_defaults(&schema, &mut obj);
        // Non-nullable null with a default gets it; nullable nulls stay; non-nullable nulls without a default
        // are dropped.
        assert_eq!(obj, json!({"spec": {"a": "x", "b": null, "d": null}}));
        assert!(validate(&schema, &obj).is_empty());
    }

    #[test]
    fn prune_nulls_alone() {
        let schema = spec_schema(json!({"type": "object", "properties": {
            "a": {"type": "string"}, "m": {"type": "object", "additionalProperties": {"type": "string"}},
            "l": {"type": "array", "items": {"type": "string"}}}}));
        let mut obj = json!({"spec": {"a": null, "m": {"k": null, "j": "x"}, "l": [null], "unknown": null}});
        prune_nulls(&schema, &mut obj);
        // List items are not removed, and fields without a schema are left to pruning.
        assert_eq!(
            obj,
            json!({"spec": {"m": {"j": "x"}, "l": [null], "unknown": null}})
        );
    }

    #[test]
    fn a_typical_generated_crd_schema_is_structural_and_validates() {
        let schema = json!({
            "description": "Database is the Schema for the databases API",
            "type": "object",
            "properties": {
                "apiVersion": {"type": "string"},
                "kind": {"type": "string"},
                "metadata": {"type": "object"},
                "spec": {"type": "object", "required": ["engine"], "properties": {
                    "engine": {"type": "string", "enum": ["PostgreSQL", "MySQL"]},
                    "port": {"anyOf": [{"type": "integer"}, {"type": "string"}], "x-kubernetes-int-or-string": true},
                    "users": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"],
                              "items": {"type": "object", "required": ["name"], "properties": {
                                  "name": {"type": "string"}, "roles": {"type": "array", "items": {"type": "string"}}}}},
                    "config": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                    "labels": {"type": "object", "additionalProperties": {"type": "string"}}}},
                "status": {"type": "object", "properties": {
                    "conditions": {"type": "array", "items": {"type": "object", "properties": {
                        "lastTransitionTime": {"type": "string", "format": "date-time"}}}}}}}});
        assert!(check_structural(&schema, PREFIX).is_empty());
        let obj = json!({"apiVersion": "db.example.com/v1", "kind": "Database", "metadata": {"name": "db"},
            "spec": {"engine": "MySQL", "port": "3306", "users": [{"name": "a", "roles": ["r"]}],
                     "config": {"x": {"y": 1}}, "labels": {"team": "a"}},
            "status": {"conditions": [{"lastTransitionTime": "2025-01-01T00:00:00Z"}]}});
        let mut pruned = obj.clone();
        assert!(prune(&schema, &mut pruned).is_empty());
        assert_eq!(pruned, obj);
        assert!(validate(&schema, &obj).is_empty());
    }

    // ----- structural checks -----

    const PREFIX: &str = "spec.versions[0].schema.openAPIV3Schema";

    #[test]
    fn structural_requires_types() {
        let schema = json!({"type": "object", "properties": {
            "spec": {"properties": {"a": {"type": "string"}}},
            "list": {"type": "array", "items": {"properties": {}}},
            "bad": {"type": "array"},
            "free": {"x-kubernetes-preserve-unknown-fields": true},
            "port": {"x-kubernetes-int-or-string": true, "anyOf": [{"type": "integer"}, {"type": "string"}]}}});
        assert_eq!(
            msgs(&check_structural(&schema, PREFIX)),
            vec![
                format!("{PREFIX}.properties[bad].items: Required value: must be specified"),
                format!(
                    "{PREFIX}.properties[list].items.type: Required value: must not be empty for specified array items"
                ),
                format!(
                    "{PREFIX}.properties[spec].type: Required value: must not be empty for specified object fields"
                ),
            ]
        );
    }

    #[test]
    fn structural_root_rules() {
        assert_eq!(
            msgs(&check_structural(&json!({"type": "string"}), PREFIX)),
            vec![format!(
                r#"{PREFIX}.type: Invalid value: "string": must be object at the root"#
            )]
        );
        assert_eq!(
            msgs(&check_structural(&json!({"properties": {}}), PREFIX)),
            vec![format!(
                "{PREFIX}.type: Required value: must not be empty at the root"
            )]
        );
        let meta = json!({"type": "object", "properties": {"metadata": {"type": "object", "properties": {
            "name": {"type": "string", "maxLength": 5}, "labels": {"type": "object"}}}}});
        assert_eq!(
            msgs(&check_structural(&meta, PREFIX)),
            vec![format!(
                "{PREFIX}.properties[metadata]: Forbidden: must not specify anything other than name and generateName, \
                 but metadata is implicitly specified"
            )]
        );
        let ok_meta = json!({"type": "object", "properties": {"metadata": {"type": "object", "properties": {
            "name": {"type": "string", "maxLength": 5}}}}});
        assert!(check_structural(&ok_meta, PREFIX).is_empty());
    }

    #[test]
    fn structural_nested_junctors() {
        let schema = json!({"type": "object", "properties": {"spec": {"type": "object",
            "properties": {"a": {"type": "string"}},
            "anyOf": [{"type": "object", "properties": {"a": {"minLength": 1}, "b": {"maxLength": 2}}}]}}});
        assert_eq!(
            msgs(&check_structural(&schema, PREFIX)),
            vec![
                format!("{PREFIX}.properties[spec].anyOf[0].type: Forbidden: must be empty to be structural"),
                format!(
                    "{PREFIX}.properties[spec].properties[b]: Required value: because it is defined in \
                     {PREFIX}.properties[spec].anyOf[0].properties[b]"
                ),
            ]
        );
    }

    #[test]
    fn api_level_schema_restrictions_come_first() {
        let schema = json!({"type": "object", "properties": {"spec": {"type": "object",
            "properties": {"a": {"type": "string"}, "tags": {"type": "array", "uniqueItems": true, "items": {"type": "string"}},
                           "x": {"type": "strin"}, "y": {}},
            "additionalProperties": {"type": "string"}}}});
        assert_eq!(
            msgs(&check_structural(&schema, PREFIX)),
            vec![
                format!(
                    "{PREFIX}.properties[spec].additionalProperties: Forbidden: additionalProperties and properties are mutual exclusive"
                ),
                format!(
                    "{PREFIX}.properties[spec].properties[tags].uniqueItems: Forbidden: uniqueItems cannot be set to true \
                     since the runtime complexity becomes quadratic"
                ),
                format!(
                    r#"{PREFIX}.properties[spec].properties[x].type: Unsupported value: "strin": supported values: "array", "boolean", "integer", "number", "object", "string""#
                ),
            ]
        );
    }

    #[test]
    fn structural_embedded_resource_rules() {
        let schema = json!({"type": "object", "properties": {
            "a": {"x-kubernetes-embedded-resource": true},
            "b": {"type": "object", "x-kubernetes-embedded-resource": true}}});
        assert_eq!(
            msgs(&check_structural(&schema, PREFIX)),
            vec![
                format!(
                    "{PREFIX}.properties[a].properties: Required value: must not be empty if x-kubernetes-embedded-resource \
                     is true without x-kubernetes-preserve-unknown-fields"
                ),
                format!(
                    "{PREFIX}.properties[a].type: Required value: must be object if x-kubernetes-embedded-resource is true"
                ),
                format!(
                    "{PREFIX}.properties[b].properties: Required value: must not be empty if x-kubernetes-embedded-resource \
                     is true without x-kubernetes-preserve-unknown-fields"
                ),
            ]
        );
    }
}
