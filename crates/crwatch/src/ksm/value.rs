//! What kube-state-metrics' custom-resource-state engine sees of an object: a tree of JSON
//! values walked by paths (`[status, conditions, "[type=Ready]", status]`), Go's `%v`
//! rendering of values as label values, and its `toFloat64` conversion of values to samples
//! (bools, `"true"`/`"yes"`, RFC 3339 times, quantities such as `250m` or `1Gi`, percentages,
//! numbers). Each rule follows `pkg/customresourcestate/registry_factory.go`; comments say
//! where Go's behaviour is kept on purpose.
//!
//! Objects are read in place from the informer's cache: the root of an object is a view over
//! the cached `DynamicObject` (only its metadata is turned into JSON, lazily, when a path
//! reads it), never a copy of the whole object.

use std::cell::OnceCell;
use std::fmt::Write as _;

use kube::api::DynamicObject;
use serde_json::{Map, Value};

/// The root of one object: `apiVersion`, `kind`, `metadata` and every other top-level field.
pub(crate) struct Root<'a> {
    api_version: Option<&'a str>,
    kind: Option<&'a str>,
    meta: &'a kube::api::ObjectMeta,
    meta_json: OnceCell<Value>,
    data: Option<&'a Map<String, Value>>,
}

impl<'a> Root<'a> {
    pub(crate) fn new(obj: &'a DynamicObject) -> Self {
        Root {
            api_version: obj.types.as_ref().map(|t| t.api_version.as_str()),
            kind: obj.types.as_ref().map(|t| t.kind.as_str()),
            meta: &obj.metadata,
            meta_json: OnceCell::new(),
            data: obj.data.as_object(),
        }
    }

    fn metadata(&self) -> &Value {
        // Serializing ObjectMeta cannot fail (plain data); Null stands for "absent" if it did.
        self.meta_json
            .get_or_init(|| serde_json::to_value(self.meta).unwrap_or(Value::Null))
    }

    fn get(&self, key: &str) -> Option<Node<'_>> {
        match key {
            "apiVersion" => self.api_version.map(Node::Str),
            "kind" => self.kind.map(Node::Str),
            "metadata" => Node::json(self.metadata()),
            _ => self.data.and_then(|d| d.get(key)).and_then(Node::json),
        }
    }

    fn entries(&self) -> Vec<(&str, Option<Node<'_>>)> {
        let mut out = vec![];
        if let Some(v) = self.api_version {
            out.push(("apiVersion", Some(Node::Str(v))));
        }
        if let Some(k) = self.kind {
            out.push(("kind", Some(Node::Str(k))));
        }
        out.push(("metadata", Node::json(self.metadata())));
        if let Some(d) = self.data {
            for (k, v) in d {
                if !matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                    out.push((k.as_str(), Node::json(v)));
                }
            }
        }
        out
    }
}

/// A value a path resolved to. Go's `nil` (a missing field, JSON `null`) is `None` around it.
#[derive(Clone)]
pub(crate) enum Node<'a> {
    /// A JSON value (never `Null`).
    Json(&'a Value),
    /// The object's root.
    Root(&'a Root<'a>),
    /// `apiVersion` or `kind` of the root.
    Str(&'a str),
    /// KSM returns an error *value* from a path for a list index out of range; it flows on
    /// as a value (its message becomes a label value, a number conversion fails on it).
    IndexError(String),
}

impl<'a> Node<'a> {
    pub(crate) fn json(v: &'a Value) -> Option<Node<'a>> {
        (!v.is_null()).then_some(Node::Json(v))
    }

    /// The string, when this is a string.
    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Node::Json(Value::String(s)) => Some(s),
            Node::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Whether this is an object (Go `map[string]interface{}`).
    pub(crate) fn is_map(&self) -> bool {
        matches!(self, Node::Json(Value::Object(_)) | Node::Root(_))
    }

    /// The entries of an object, `None` otherwise.
    pub(crate) fn entries(&self) -> Option<Vec<(&str, Option<Node<'_>>)>> {
        match self {
            Node::Json(Value::Object(m)) => {
                Some(m.iter().map(|(k, v)| (k.as_str(), Node::json(v))).collect())
            }
            Node::Root(r) => Some(r.entries()),
            _ => None,
        }
    }

    /// Go's type name as `%T` prints it (for StateSet's "expected string" error).
    pub(crate) fn go_type(node: Option<&Node<'_>>) -> &'static str {
        match node {
            None => "<nil>",
            Some(Node::Json(Value::Bool(_))) => "bool",
            Some(Node::Json(Value::Number(n))) if n.is_i64() || n.is_u64() => "int64",
            Some(Node::Json(Value::Number(_))) => "float64",
            Some(Node::Json(Value::String(_)) | Node::Str(_)) => "string",
            Some(Node::Json(Value::Array(_))) => "[]interface {}",
            Some(Node::Json(Value::Object(_)) | Node::Root(_)) => "map[string]interface {}",
            Some(Node::Json(Value::Null)) => "<nil>",
            Some(Node::IndexError(_)) => "*errors.errorString",
        }
    }
}

/// One step of a path.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Op {
    /// A map key (also `key=value`: the value of `key` when it equals `value`), or a list
    /// index (negative counts from the end).
    Key(String),
    /// `[key=value]`: the first element of a list whose `key` equals `value` (as a string,
    /// else as a number, else as a bool).
    Lookup {
        /// The segment as written.
        part: String,
        key: String,
        value: String,
        number: Option<f64>,
        boolean: Option<bool>,
    },
}

/// A compiled path.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Path(pub(crate) Vec<Op>);

impl Path {
    /// Compile `segments`; `Err` says what is wrong with which segment.
    pub(crate) fn compile(segments: &[String]) -> Result<Path, String> {
        let mut ops = vec![];
        for part in segments {
            if part.len() >= 2 && part.starts_with('[') && part.ends_with(']') {
                let inner = &part[1..part.len() - 1];
                let Some((key, value)) = inner.split_once('=') else {
                    return Err(format!("invalid list lookup: {part} (use [key=value])"));
                };
                ops.push(Op::Lookup {
                    part: part.clone(),
                    key: key.to_string(),
                    value: value.to_string(),
                    number: string_to_f64(value, None).ok(),
                    boolean: go_parse_bool(value),
                });
            } else {
                ops.push(Op::Key(part.clone()));
            }
        }
        Ok(Path(ops))
    }

    /// The first segment, if any.
    pub(crate) fn first(&self) -> Option<&str> {
        self.0.first().map(|op| match op {
            Op::Key(k) => k.as_str(),
            Op::Lookup { part, .. } => part.as_str(),
        })
    }

    /// Resolve against `node` (`None`: Go's nil).
    pub(crate) fn get<'n>(&self, node: Option<Node<'n>>) -> Option<Node<'n>> {
        let mut cur = node;
        for op in &self.0 {
            let n = cur?;
            cur = apply(op, n);
        }
        cur
    }
}

impl std::fmt::Display for Path {
    /// KSM's rendering: `[status,conditions]`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_char('[')?;
        for (i, op) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_char(',')?;
            }
            match op {
                Op::Key(k) => f.write_str(k)?,
                Op::Lookup { part, .. } => f.write_str(part)?,
            }
        }
        f.write_char(']')
    }
}

// The lifetime juggling: a node borrowed from a Root lives as long as the Root reference.
fn apply<'n>(op: &Op, node: Node<'n>) -> Option<Node<'n>> {
    match op {
        Op::Key(part) => {
            if node.is_map() {
                // `key=value` on a map: the value when `key` holds exactly that string.
                let pieces: Vec<&str> = part.split('=').collect();
                if let [key, value] = pieces[..]
                    && let Some(Some(found)) = map_get_owned(&node, key)
                    && found.as_str() == Some(value)
                {
                    return Some(found);
                }
                return map_get_owned(&node, part).flatten();
            }
            if let Node::Json(Value::Array(items)) = node {
                // Go's strconv.Atoi: an optional sign and decimal digits.
                let Ok(mut i) = part.parse::<i64>() else {
                    return None;
                };
                let len = items.len() as i64;
                if i < 0 {
                    i += len;
                }
                if !(0..len).contains(&i) {
                    return Some(Node::IndexError(format!("list index out of range: {part}")));
                }
                // In range, checked above.
                return items.get(i as usize).and_then(Node::json);
            }
            None
        }
        Op::Lookup {
            key,
            value,
            number,
            boolean,
            ..
        } => {
            let Node::Json(Value::Array(items)) = node else {
                return None;
            };
            for item in items {
                let Value::Object(m) = item else { continue };
                let Some(candidate) = m.get(key) else { continue };
                if candidate.as_str() == Some(value.as_str()) {
                    return Some(Node::Json(item));
                }
                if let Some(n) = number
                    && let Ok(c) = to_f64(Node::json(candidate).as_ref(), false, None)
                    && c == *n
                {
                    return Some(Node::Json(item));
                }
                if let Some(b) = boolean
                    && candidate.as_bool() == Some(*b)
                {
                    return Some(Node::Json(item));
                }
            }
            None
        }
    }
}

/// `map[key]` for a map node, with the result tied to the node's lifetime `'n`.
fn map_get_owned<'n>(node: &Node<'n>, key: &str) -> Option<Option<Node<'n>>> {
    match node {
        Node::Json(Value::Object(m)) => Some(m.get(key).and_then(Node::json)),
        Node::Root(r) => {
            let r: &'n Root<'n> = r;
            Some(r.get(key))
        }
        _ => None,
    }
}

/// Go's `strconv.ParseBool`.
pub(crate) fn go_parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// How a gauge's value field is read (`valueType`, newer kube-state-metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ValueType {
    /// `duration`: Go durations such as `1h30m`, in seconds.
    Duration,
    /// `quantity`: Kubernetes quantities such as `250m` or `1Gi`.
    Quantity,
}

/// KSM's `toFloat64`. Errors never include the value itself: values may be secrets, and the
/// messages are logged.
pub(crate) fn to_f64(
    node: Option<&Node<'_>>,
    nil_is_zero: bool,
    vt: Option<ValueType>,
) -> Result<f64, String> {
    let Some(node) = node else {
        return if nil_is_zero {
            Ok(0.0)
        } else {
            Err("expected number but found nil value".into())
        };
    };
    match node {
        Node::Json(Value::Bool(b)) => Ok(if *b { 1.0 } else { 0.0 }),
        Node::Json(Value::Number(n)) => n.as_f64().ok_or_else(|| "number out of range".to_string()),
        Node::Json(Value::String(s)) => string_to_f64(s, vt),
        Node::Str(s) => string_to_f64(s, vt),
        Node::Json(Value::Array(_)) => Err("expected number but found a list".into()),
        Node::Json(Value::Object(_)) | Node::Root(_) => Err("expected number but found an object".into()),
        Node::Json(Value::Null) => Err("expected number but found nil value".into()),
        Node::IndexError(e) => Err(format!("expected number but was {e}")),
    }
}

fn string_to_f64(s: &str, vt: Option<ValueType>) -> Result<f64, String> {
    match vt {
        Some(ValueType::Duration) => {
            return parse_go_duration(s).ok_or_else(|| "string is not a duration (e.g. 1h30m)".to_string());
        }
        Some(ValueType::Quantity) => {
            return parse_quantity(s).ok_or_else(|| "string is not a quantity (e.g. 250m, 1Gi)".to_string());
        }
        None => {}
    }
    // Condition statuses (metav1.Condition): True/False/Unknown, any case.
    let lower = s.to_lowercase();
    if lower == "true" || lower == "yes" {
        return Ok(1.0);
    }
    if lower == "false" || lower == "no" || lower == "unknown" {
        return Ok(0.0);
    }
    if let Some(t) = parse_rfc3339(s) {
        return Ok(t);
    }
    if let Some(q) = parse_quantity(s) {
        return Ok(q);
    }
    // k8s validation.IsValidPercent: digits then `%`.
    if let Some(digits) = s.strip_suffix('%')
        && !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
    {
        return digits
            .parse::<f64>()
            .map(|v| v / 100.0)
            .map_err(|_| "invalid percentage".to_string());
    }
    parse_go_float(s)
        .ok_or_else(|| "string is not a number, bool, timestamp, quantity or percentage".to_string())
}

/// Go's `strconv.ParseFloat(s, 64)` for the forms people write: decimal with optional
/// exponent, `inf`/`infinity`/`nan` in any case. Out of range is an error as in Go.
fn parse_go_float(s: &str) -> Option<f64> {
    let body = s.strip_prefix(['+', '-']).unwrap_or(s);
    let lower = body.to_ascii_lowercase();
    if matches!(lower.as_str(), "inf" | "infinity" | "nan") {
        return s.parse::<f64>().ok();
    }
    if body.is_empty()
        || !body
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'))
    {
        return None;
    }
    let v = s.parse::<f64>().ok()?;
    // Go reports ErrRange for overflow; Rust saturates to infinity.
    v.is_finite().then_some(v)
}

/// `time.Parse(time.RFC3339, s)` then `Unix()`: whole seconds.
fn parse_rfc3339(s: &str) -> Option<f64> {
    // Go's RFC3339 layout wants `T` and a `Z` or numeric zone; chrono is as strict about the
    // date and time, and also takes a lowercase `t`/`z`, which Go refuses.
    let b = s.as_bytes();
    if b.len() < 20 || b[10] != b'T' || s.ends_with('z') {
        return None;
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp() as f64)
}

/// `resource.ParseQuantity(s).AsApproximateFloat64()`.
pub(crate) fn parse_quantity(s: &str) -> Option<f64> {
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut negative = false;
    if let Some(&c) = bytes.first()
        && (c == b'+' || c == b'-')
    {
        negative = c == b'-';
        i = 1;
    }
    let num_start = i;
    let mut digits = 0;
    while i < bytes.len() && bytes[i].is_ascii_digit() {
        i += 1;
        digits += 1;
    }
    if i < bytes.len() && bytes[i] == b'.' {
        i += 1;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
            digits += 1;
        }
    }
    if digits == 0 {
        return None;
    }
    let number: f64 = s[num_start..i].parse().ok()?;
    let suffix = &s[i..];
    let factor = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        _ => {
            // A decimal exponent: `e3`, `E-2`.
            let rest = suffix.strip_prefix(['e', 'E'])?;
            let digits = rest.strip_prefix(['+', '-']).unwrap_or(rest);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let exp: i32 = rest.parse().ok()?;
            10f64.powi(exp)
        }
    };
    let v = number * factor;
    Some(if negative { -v } else { v })
}

/// Go's `time.ParseDuration`, in seconds.
fn parse_go_duration(s: &str) -> Option<f64> {
    let (negative, mut rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Some(0.0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total = 0.0;
    while !rest.is_empty() {
        let end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if end == 0 {
            return None;
        }
        let n: f64 = rest[..end].parse().ok()?;
        rest = &rest[end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_end..];
        total += n * unit;
    }
    Some(if negative { -total } else { total })
}

/// Go's `%v` of a value, as KSM puts values into labels.
pub(crate) fn go_fmt(node: Option<&Node<'_>>, out: &mut String) {
    match node {
        None => out.push_str("<nil>"),
        Some(Node::Json(v)) => go_fmt_json(v, out),
        Some(Node::Str(s)) => out.push_str(s),
        Some(Node::IndexError(e)) => out.push_str(e),
        Some(n @ Node::Root(_)) => {
            let mut entries = n.entries().unwrap_or_default();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push_str("map[");
            for (i, (k, v)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                out.push_str(k);
                out.push(':');
                go_fmt(v.as_ref(), out);
            }
            out.push(']');
        }
    }
}

fn go_fmt_json(v: &Value, out: &mut String) {
    // Objects nest as deep as the API server allows (10,000 levels): grow the stack on the
    // heap rather than overflow it when a `*` label copies such a value.
    stacker::maybe_grow(32 * 1024, 1024 * 1024, || go_fmt_json_inner(v, out));
}

fn go_fmt_json_inner(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push_str("<nil>"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            // Kubernetes decodes integral JSON numbers as int64, others as float64.
            if let Some(i) = n.as_i64() {
                let _ = write!(out, "{i}");
            } else if let Some(u) = n.as_u64() {
                // Beyond int64: Go's decoder falls back to float64.
                go_float(u as f64, out);
            } else {
                go_float(n.as_f64().unwrap_or(f64::NAN), out);
            }
        }
        Value::String(s) => out.push_str(s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                go_fmt_json(item, out);
            }
            out.push(']');
        }
        Value::Object(m) => {
            // Go prints maps with sorted keys.
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push_str("map[");
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                out.push_str(k);
                out.push(':');
                if let Some(v) = m.get(*k) {
                    go_fmt_json(v, out);
                }
            }
            out.push(']');
        }
    }
}

/// Go's `strconv.FormatFloat(f, 'g', -1, 64)` (and `%v` of a float64): the shortest digits
/// that read back the same, in exponent form when the decimal exponent is below -4 or at
/// least 6 (`1.048576e+08`), as Go's shortest `%g` does.
pub(crate) fn go_float(f: f64, out: &mut String) {
    if f.is_nan() {
        out.push_str("NaN");
        return;
    }
    if f.is_infinite() {
        out.push_str(if f > 0.0 { "+Inf" } else { "-Inf" });
        return;
    }
    if f == 0.0 {
        out.push_str(if f.is_sign_negative() { "-0" } else { "0" });
        return;
    }
    // Rust's `{:e}` gives the shortest round-trip digits: `-1.048576e8`.
    let e = format!("{f:e}");
    let (mantissa, exp) = e.split_once('e').unwrap_or((&e, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (neg, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mantissa),
    };
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    if neg {
        out.push('-');
    }
    if !(-4..6).contains(&exp) {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let _ = write!(out, "e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
        return;
    }
    if exp < 0 {
        out.push_str("0.");
        for _ in 0..(-exp - 1) {
            out.push('0');
        }
        out.push_str(&digits);
        return;
    }
    // 0 <= exp < 6: the integer part has exp + 1 digits.
    let int_len = exp as usize + 1;
    if digits.len() <= int_len {
        out.push_str(&digits);
        for _ in digits.len()..int_len {
            out.push('0');
        }
    } else {
        out.push_str(&digits[..int_len]);
        out.push('.');
        out.push_str(&digits[int_len..]);
    }
}

/// KSM's `SanitizeLabelName`: every character outside `[a-zA-Z0-9_]` becomes `_`.
pub(crate) fn sanitize_label_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(f: f64) -> String {
        let mut s = String::new();
        go_float(f, &mut s);
        s
    }

    #[test]
    fn floats_print_as_go_does() {
        assert_eq!(g(43.21), "43.21");
        assert_eq!(g(1.048576e8), "1.048576e+08");
        assert_eq!(g(123456.0), "123456");
        assert_eq!(g(1234567.0), "1.234567e+06");
        assert_eq!(g(0.1), "0.1");
        assert_eq!(g(0.0001), "0.0001");
        assert_eq!(g(0.00001), "1e-05");
        assert_eq!(g(-2.5), "-2.5");
        assert_eq!(g(1e21), "1e+21");
        assert_eq!(g(100.0), "100");
        assert_eq!(g(f64::INFINITY), "+Inf");
        assert_eq!(g(f64::NAN), "NaN");
    }

    #[test]
    fn strings_convert_as_ksm_does() {
        let c = |s: &str| string_to_f64(s, None);
        assert_eq!(c("True"), Ok(1.0));
        assert_eq!(c("yes"), Ok(1.0));
        assert_eq!(c("Unknown"), Ok(0.0));
        assert_eq!(c("2019-10-22T16:29:31Z"), Ok(1571761771.0));
        assert_eq!(c("2019-10-22T16:29:31.5+02:00"), Ok(1571754571.0));
        assert_eq!(c("250m"), Ok(0.25));
        assert_eq!(c("1Gi"), Ok(1073741824.0));
        assert_eq!(c("262144k"), Ok(262144000.0));
        assert_eq!(c("1e3"), Ok(1000.0));
        assert_eq!(c("50%"), Ok(0.5));
        assert_eq!(c("-3.5"), Ok(-3.5));
        assert!(c("NaN").is_ok_and(f64::is_nan));
        assert_eq!(c("+Inf"), Ok(f64::INFINITY));
        assert!(c("1.2.3").is_err());
        assert!(c("abc").is_err());
        assert!(c("").is_err());
        assert_eq!(string_to_f64("1h30m", Some(ValueType::Duration)), Ok(5400.0));
        assert_eq!(string_to_f64("1.5s", Some(ValueType::Duration)), Ok(1.5));
        assert!(string_to_f64("1x", Some(ValueType::Duration)).is_err());
    }
}
