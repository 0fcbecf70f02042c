//! Request body decoding: JSON (and YAML for apply patches) into values, noting duplicate
//! fields as a strict decoder would, without ever panicking on malformed input.
//!
//! Nesting depth: Go's `encoding/json` (and so the real kube-apiserver) rejects documents
//! nested deeper than 10000 levels with `invalid character '{' exceeded max depth`. Every
//! `serde_json::Value` operation (clone, compare, serialize, drop) recurses once per level,
//! at about 1 KiB of stack per level in debug builds, so at 10000 levels any of them would
//! overflow a 2 MiB tokio worker stack. The server therefore rejects request bodies deeper
//! than [`MAX_DEPTH`] with the same error, and parses everything it accepted with no
//! recursion limit ([`from_slice_deep`]), so nothing it stored ever fails to parse again.

use std::fmt;

use serde::de::{DeserializeOwned, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::status::ApiError;

/// A decoded body and the paths of fields that appeared more than once (last one wins).
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// The value.
    pub value: Value,
    /// Paths like `spec.size` of fields given twice.
    pub duplicates: Vec<String>,
}

struct Seed<'a> {
    path: String,
    dups: &'a mut Vec<String>,
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

impl<'de> DeserializeSeed<'de> for Seed<'_> {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Seed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v)
            .map(Value::Number)
            .unwrap_or(Value::Null))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = vec![];
        let mut i = 0usize;
        loop {
            let seed = Seed {
                path: format!("{}[{i}]", self.path),
                dups: &mut *self.dups,
            };
            match seq.next_element_seed(seed)? {
                Some(v) => out.push(v),
                None => break,
            }
            i += 1;
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let path = join(&self.path, &key);
            let seed = Seed {
                path: path.clone(),
                dups: &mut *self.dups,
            };
            let v = map.next_value_seed(seed)?;
            if out.insert(key, v).is_some() {
                self.dups.push(path);
            }
        }
        Ok(Value::Object(out))
    }
}

/// The deepest nesting (objects and arrays, the outermost one included) a request body may
/// have. The real server allows 10000 (Go's `encoding/json` limit); see the module docs for
/// why this server stops earlier, with the same error.
pub const MAX_DEPTH: usize = 512;

/// How much deeper than [`MAX_DEPTH`] a request body may nest: an object's managedFields
/// mirror its deepest field five levels further down (`metadata.managedFields[].fieldsV1`),
/// so a client that reads an object at the limit and sends it back must not be refused. The
/// object itself, managedFields aside, is held to [`MAX_DEPTH`] ([`object_depth`]).
pub const BODY_DEPTH_SLACK: usize = 8;

/// Where a JSON text first nests deeper than `max` levels: the offending byte (`{` or `[`).
/// A linear scan with no recursion; strings (and the brackets inside them) are skipped.
fn too_deep(body: &[u8], max: usize) -> Option<u8> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in body {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    return Some(b);
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

/// The error Go's JSON scanner gives past its depth limit.
fn depth_error(c: u8) -> String {
    format!("invalid character '{}' exceeded max depth", c as char)
}

/// Reject a JSON body nested deeper than [`MAX_DEPTH`] (and [`BODY_DEPTH_SLACK`]), worded as
/// the real server's decoder.
pub fn check_depth(body: &[u8]) -> Result<(), ApiError> {
    match too_deep(body, MAX_DEPTH + BODY_DEPTH_SLACK) {
        Some(c) => Err(ApiError::bad_request(format!(
            "error decoding request body: {}",
            depth_error(c)
        ))),
        None => Ok(()),
    }
}

/// How deeply a value nests (a scalar is 0, `{}` is 1), without recursion.
pub fn depth(value: &Value) -> usize {
    let mut max = 0;
    let mut stack = vec![(value, 0usize)];
    while let Some((v, d)) = stack.pop() {
        match v {
            Value::Object(m) => {
                max = max.max(d + 1);
                stack.extend(m.values().map(|c| (c, d + 1)));
            }
            Value::Array(a) => {
                max = max.max(d + 1);
                stack.extend(a.iter().map(|c| (c, d + 1)));
            }
            _ => {}
        }
    }
    max
}

/// How deeply an object nests, its `metadata.managedFields` aside (they mirror its fields a
/// few levels further down).
pub fn object_depth(obj: &Value) -> usize {
    let Some(m) = obj.as_object() else {
        return depth(obj);
    };
    let mut max = 1;
    for (k, v) in m {
        let d = match (k.as_str(), v.as_object()) {
            ("metadata", Some(meta)) => {
                1 + meta
                    .iter()
                    .filter(|(k, _)| k.as_str() != "managedFields")
                    .map(|(_, v)| depth(v))
                    .max()
                    .unwrap_or(0)
            }
            _ => depth(v),
        };
        max = max.max(1 + d);
    }
    max
}

/// The 400 for an object nested deeper than [`MAX_DEPTH`] (by its body or by a patch).
pub fn too_deep_error() -> ApiError {
    ApiError::bad_request(format!("error decoding request body: {}", depth_error(b'{')))
}

/// Parse JSON of any nesting depth (no recursion limit; the stack grows on the heap as
/// needed). For anything the server stored, e.g. a state file: the server accepts objects
/// up to [`MAX_DEPTH`] levels, and lists, watch events and state files wrap them in a few
/// more, past serde_json's default limit of 128.
///
/// A very deep result is best dropped with [`drop_deep`].
pub fn from_slice_deep<T: DeserializeOwned>(bytes: &[u8]) -> serde_json::Result<T> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    de.disable_recursion_limit();
    let value = T::deserialize(serde_stacker::Deserializer::new(&mut de))?;
    de.end()?;
    Ok(value)
}

/// Drop a value without recursion (dropping a `Value` recurses once per level, which
/// overflows the stack for values thousands of levels deep).
pub fn drop_deep(value: Value) {
    let mut stack = vec![value];
    while let Some(v) = stack.pop() {
        match v {
            Value::Object(m) => stack.extend(m.into_iter().map(|(_, c)| c)),
            Value::Array(a) => stack.extend(a),
            _ => {}
        }
    }
}

/// Parse a JSON body (a patch, a webhook answer) into `T` after the depth check, with the
/// stack growing as needed.
pub fn json_checked<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    if let Some(c) = too_deep(body, MAX_DEPTH + BODY_DEPTH_SLACK) {
        return Err(depth_error(c));
    }
    from_slice_deep(body).map_err(|e| e.to_string())
}

/// Decode JSON, noting duplicate fields.
pub fn json(body: &[u8]) -> Result<Decoded, ApiError> {
    check_depth(body)?;
    let mut dups = vec![];
    let mut de = serde_json::Deserializer::from_slice(body);
    de.disable_recursion_limit();
    let value = Seed {
        path: String::new(),
        dups: &mut dups,
    }
    .deserialize(serde_stacker::Deserializer::new(&mut de))
    .and_then(|v| de.end().map(|_| v))
    .map_err(|e| ApiError::bad_request(format!("error decoding request body: {e}")))?;
    Ok(Decoded {
        value,
        duplicates: dups,
    })
}

/// Decode JSON or YAML (apply patches may be either).
pub fn json_or_yaml(body: &[u8]) -> Result<Decoded, ApiError> {
    let trimmed = body
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .map(|i| body[i]);
    if trimmed == Some(b'{') {
        return json(body);
    }
    let text =
        std::str::from_utf8(body).map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?;
    let value: Value = serde_saphyr::from_str(text)
        .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?;
    if depth(&value) > MAX_DEPTH + BODY_DEPTH_SLACK {
        drop_deep(value);
        return Err(ApiError::bad_request(format!(
            "error decoding YAML: {}",
            depth_error(b'{')
        )));
    }
    Ok(Decoded {
        value,
        duplicates: vec![],
    })
}

/// Go's `encoding/json` syntax check (`checkValid`), with its exact error text: the first
/// error the real server's decoder meets in a malformed body (`unexpected end of JSON input`,
/// `invalid character 'x' looking for beginning of value`, ...). `None` when `body` is one
/// well-formed JSON value. Go does not check UTF-8 here, and neither does this. Nesting stops
/// at [`MAX_DEPTH`] (and [`BODY_DEPTH_SLACK`]) with Go's wording for its own limit (10000).
pub fn go_syntax_error(body: &[u8]) -> Option<String> {
    #[derive(Clone, Copy, PartialEq)]
    enum In {
        Object,
        Array,
    }
    #[derive(Clone, Copy, PartialEq)]
    enum St {
        BeginValue,
        BeginKeyOrEmpty,
        BeginKey,
        EndValue,
        InString,
        Esc,
        EscU(u8),
        Neg,
        Zero,
        Digits,
        Dot,
        DotDigits,
        E,
        ESign,
        EDigits,
        Lit(&'static [u8], u8),
        BeginValueOrEmpty,
    }
    fn err(c: u8, context: &str) -> String {
        format!("invalid character {} {context}", go_quote_char(c))
    }
    let mut stack: Vec<In> = vec![];
    let mut st = St::BeginValue;
    let mut key = false;
    let mut done = false;
    let is_space = |c: u8| matches!(c, b' ' | b'\t' | b'\r' | b'\n');
    for &c in body {
        // A value just ended: what may follow it.
        loop {
            match st {
                St::EndValue => {
                    if is_space(c) {
                        break;
                    }
                    match stack.last() {
                        None => return Some(err(c, "after top-level value")),
                        Some(In::Object) if key => {
                            if c == b':' {
                                key = false;
                                st = St::BeginValue;
                                break;
                            }
                            return Some(err(c, "after object key"));
                        }
                        Some(In::Object) => match c {
                            b',' => {
                                key = true;
                                st = St::BeginKey;
                                break;
                            }
                            b'}' => {
                                stack.pop();
                                st = St::EndValue;
                                key = false;
                                if stack.is_empty() {
                                    done = true;
                                }
                                break;
                            }
                            _ => return Some(err(c, "after object key:value pair")),
                        },
                        Some(In::Array) => match c {
                            b',' => {
                                st = St::BeginValue;
                                break;
                            }
                            b']' => {
                                stack.pop();
                                st = St::EndValue;
                                if stack.is_empty() {
                                    done = true;
                                }
                                break;
                            }
                            _ => return Some(err(c, "after array element")),
                        },
                    }
                }
                St::BeginValue | St::BeginValueOrEmpty => {
                    if is_space(c) {
                        break;
                    }
                    if st == St::BeginValueOrEmpty && c == b']' {
                        st = St::EndValue;
                        continue;
                    }
                    st = match c {
                        b'{' => {
                            stack.push(In::Object);
                            if stack.len() > MAX_DEPTH + BODY_DEPTH_SLACK {
                                return Some(err(c, "exceeded max depth"));
                            }
                            key = true;
                            St::BeginKeyOrEmpty
                        }
                        b'[' => {
                            stack.push(In::Array);
                            if stack.len() > MAX_DEPTH + BODY_DEPTH_SLACK {
                                return Some(err(c, "exceeded max depth"));
                            }
                            St::BeginValueOrEmpty
                        }
                        b'"' => St::InString,
                        b'-' => St::Neg,
                        b'0' => St::Zero,
                        b'1'..=b'9' => St::Digits,
                        b't' => St::Lit(b"true", 1),
                        b'f' => St::Lit(b"false", 1),
                        b'n' => St::Lit(b"null", 1),
                        _ => return Some(err(c, "looking for beginning of value")),
                    };
                    break;
                }
                St::BeginKeyOrEmpty | St::BeginKey => {
                    if is_space(c) {
                        break;
                    }
                    if st == St::BeginKeyOrEmpty && c == b'}' {
                        stack.pop();
                        key = false;
                        st = St::EndValue;
                        if stack.is_empty() {
                            done = true;
                        }
                        break;
                    }
                    if c != b'"' {
                        return Some(err(c, "looking for beginning of object key string"));
                    }
                    st = St::InString;
                    break;
                }
                St::InString => {
                    match c {
                        b'"' => {
                            st = St::EndValue;
                            if stack.is_empty() {
                                done = true;
                            }
                        }
                        b'\\' => st = St::Esc,
                        0..0x20 => return Some(err(c, "in string literal")),
                        _ => {}
                    }
                    break;
                }
                St::Esc => {
                    st = match c {
                        b'b' | b'f' | b'n' | b'r' | b't' | b'\\' | b'/' | b'"' => St::InString,
                        b'u' => St::EscU(0),
                        _ => return Some(err(c, "in string escape code")),
                    };
                    break;
                }
                St::EscU(n) => {
                    if !c.is_ascii_hexdigit() {
                        return Some(err(c, "in \\u hexadecimal character escape"));
                    }
                    st = if n == 3 { St::InString } else { St::EscU(n + 1) };
                    break;
                }
                St::Neg => {
                    st = match c {
                        b'0' => St::Zero,
                        b'1'..=b'9' => St::Digits,
                        _ => return Some(err(c, "in numeric literal")),
                    };
                    break;
                }
                St::Zero | St::Digits | St::DotDigits => {
                    if st == St::Digits && c.is_ascii_digit() || st == St::DotDigits && c.is_ascii_digit() {
                        break;
                    }
                    if c == b'.' && st != St::DotDigits {
                        st = St::Dot;
                        break;
                    }
                    if c == b'e' || c == b'E' {
                        st = St::E;
                        break;
                    }
                    st = St::EndValue;
                    if stack.is_empty() {
                        done = true;
                    }
                    continue;
                }
                St::Dot => {
                    if !c.is_ascii_digit() {
                        return Some(err(c, "after decimal point in numeric literal"));
                    }
                    st = St::DotDigits;
                    break;
                }
                St::E | St::ESign => {
                    if st == St::E && (c == b'+' || c == b'-') {
                        st = St::ESign;
                        break;
                    }
                    if !c.is_ascii_digit() {
                        return Some(err(c, "in exponent of numeric literal"));
                    }
                    st = St::EDigits;
                    break;
                }
                St::EDigits => {
                    if c.is_ascii_digit() {
                        break;
                    }
                    st = St::EndValue;
                    if stack.is_empty() {
                        done = true;
                    }
                    continue;
                }
                St::Lit(word, i) => {
                    if c != word[usize::from(i)] {
                        let name = std::str::from_utf8(word).unwrap_or_default();
                        return Some(err(
                            c,
                            &format!(
                                "in literal {name} (expecting {})",
                                go_quote_char(word[usize::from(i)])
                            ),
                        ));
                    }
                    if usize::from(i) + 1 == word.len() {
                        st = St::EndValue;
                        if stack.is_empty() {
                            done = true;
                        }
                    } else {
                        st = St::Lit(word, i + 1);
                    }
                    break;
                }
            }
        }
    }
    // A top-level number ends with the input.
    let number_end = stack.is_empty() && matches!(st, St::Zero | St::Digits | St::DotDigits | St::EDigits);
    if done || number_end || (st == St::EndValue && stack.is_empty()) {
        None
    } else {
        Some("unexpected end of JSON input".into())
    }
}

/// Go's `quoteChar`: how its JSON scanner shows the offending byte.
fn go_quote_char(c: u8) -> String {
    match c {
        b'\'' => r"'\''".into(),
        b'"' => "'\"'".into(),
        0x07 => r"'\a'".into(),
        0x08 => r"'\b'".into(),
        0x0c => r"'\f'".into(),
        b'\n' => r"'\n'".into(),
        b'\r' => r"'\r'".into(),
        b'\t' => r"'\t'".into(),
        0x0b => r"'\v'".into(),
        b'\\' => r"'\\'".into(),
        0..0x20 | 0x7f => format!("'\\x{c:02x}'"),
        // As a rune, U+0080 to U+009F (controls), U+00A0 and U+00AD are not printable.
        0x80..=0xa0 | 0xad => format!("'\\u{c:04x}'"),
        _ => format!("'{}'", char::from(c)),
    }
}

/// Go's `hex.Dump`: 16 bytes a line, offset, hex (an extra space after the eighth), and the
/// printable characters between bars.
fn go_hex_dump(data: &[u8]) -> String {
    let mut out = String::new();
    for (line, chunk) in data.chunks(16).enumerate() {
        out.push_str(&format!("{:08x}  ", line * 16));
        for i in 0..16 {
            match chunk.get(i) {
                Some(b) => out.push_str(&format!("{b:02x} ")),
                None => out.push_str("   "),
            }
            if i == 7 {
                out.push(' ');
            }
        }
        out.push_str(" |");
        out.extend(chunk.iter().map(|&b| {
            if (32..=126).contains(&b) {
                char::from(b)
            } else {
                '.'
            }
        }));
        out.push_str("|\n");
    }
    out
}

/// The real server's `summarizeData(body, 30)`: a body starting with `{` as text (its first
/// 30 bytes and ` ...` when longer), anything else as a hex dump, `<empty>` for nothing.
pub fn summarize(body: &[u8]) -> String {
    const MAX: usize = 30;
    let (head, more) = if body.len() > MAX {
        (&body[..MAX], " ...")
    } else {
        (body, "")
    };
    match body.first() {
        None => "<empty>".into(),
        Some(b'{') => format!("{}{more}", String::from_utf8_lossy(head)),
        Some(_) => format!("{}{more}", go_hex_dump(head)),
    }
}

/// The type Go's `DefaultMetaFactory.Interpret` reads `apiVersion` and `kind` into, as its
/// `encoding/json` names it in type errors.
const FIND_KIND_TYPE: &str =
    r#"struct { APIVersion string "json:\"apiVersion,omitempty\""; Kind string "json:\"kind,omitempty\"" }"#;

/// How Go's encoding/json names a JSON value's type in "cannot unmarshal X into ..." errors.
pub(crate) fn json_type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// `apiVersion` and `kind` as the real server's decoder first reads them
/// (`DefaultMetaFactory.Interpret`: Go's `encoding/json`, keys matched case-insensitively, the
/// last one winning), or its error.
fn interpret(value: &Value) -> Result<(String, String), String> {
    let (mut av, mut kind) = (String::new(), String::new());
    let mut first_error = None;
    match value {
        Value::Object(m) => {
            for (k, v) in m {
                let field = if k.eq_ignore_ascii_case("apiVersion") {
                    (&mut av, "apiVersion")
                } else if k.eq_ignore_ascii_case("kind") {
                    (&mut kind, "kind")
                } else {
                    continue;
                };
                match v {
                    Value::String(s) => *field.0 = s.clone(),
                    Value::Null => {}
                    other => {
                        first_error.get_or_insert_with(|| {
                            format!(
                                "json: cannot unmarshal {} into Go struct field .{} of type string",
                                json_type_name(other),
                                field.1
                            )
                        });
                    }
                }
            }
        }
        Value::Null => {}
        other => {
            first_error = Some(format!(
                "json: cannot unmarshal {} into Go value of type {FIND_KIND_TYPE}",
                json_type_name(other)
            ));
        }
    }
    if let Some(e) = first_error {
        return Err(format!("couldn't get version/kind; json parse error: {e}"));
    }
    if av.matches('/').count() > 1 {
        return Err(format!("unexpected GroupVersion string: {av}"));
    }
    Ok((av, kind))
}

/// `(group, version)` of an apiVersion (`schema.ParseGroupVersion`; `/` alone is empty).
fn split_gv(av: &str) -> (&str, &str) {
    match av.split_once('/') {
        _ if av == "/" => ("", ""),
        Some((g, v)) => (g, v),
        None => ("", av),
    }
}

fn gv_string(group: &str, version: &str) -> String {
    if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    }
}

/// The Go package a built-in group's internal types live in (what conversion errors name).
fn internal_package(group: &str) -> &str {
    match group {
        "" | "events.k8s.io" => "core",
        g => g.split('.').next().unwrap_or(g),
    }
}

/// The name of the real server's scheme of built-in types, as its errors quote it.
const LEGACY_SCHEME: &str = "k8s.io/kubernetes/pkg/api/legacyscheme/scheme.go:30";

/// Decode a create or update body for `def` as the real server does, with its wording for
/// every way the body can be wrong: malformed JSON or not an object (`the object provided is
/// unrecognized (must be of type K): couldn't get version/kind; json parse error: ...`), a
/// kind or apiVersion the URL's type cannot take (`X in version "v" cannot be handled as a K:
/// ...`), or another version of the same kind (`the API version in the data (x) does not match
/// the expected API version (y)`).
///
/// A built-in kind's missing `apiVersion` and `kind` default from the URL, as the real server
/// decodes into its typed objects; a custom resource needs `kind` (`Object 'Kind' is missing in
/// '...'`) and `apiVersion`. `served(apiVersion, kind)` says whether the server serves that
/// kind at that version. `subresource` is `scale` for a Scale body (only checked as JSON).
pub fn object_body(
    body: &[u8],
    def: &crate::registry::ResourceDef,
    subresource: &str,
    served: &dyn Fn(&str, &str) -> bool,
) -> Result<Decoded, ApiError> {
    let unrecognized = |e: String| {
        ApiError::bad_request(format!(
            "the object provided is unrecognized (must be of type {}): {e} ({})",
            if subresource == "scale" {
                "Scale"
            } else {
                def.kind.as_str()
            },
            summarize(body)
        ))
    };
    if let Some(e) = go_syntax_error(body) {
        return Err(unrecognized(format!(
            "couldn't get version/kind; json parse error: {e}"
        )));
    }
    let mut decoded = json(body)?;
    let (av, kind) = interpret(&decoded.value).map_err(unrecognized)?;
    if subresource == "scale" {
        return Ok(decoded);
    }
    let (body_group, body_version) = split_gv(&av);
    let cannot = |kind: &str, version: &str, why: String| {
        ApiError::bad_request(format!(
            "{kind} in version \"{version}\" cannot be handled as a {}: {why}",
            def.kind
        ))
    };
    if def.is_custom() {
        // Decoded as unstructured: `kind` must be there (the version comes from the body).
        let raw_kind = decoded
            .value
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let raw_av = decoded
            .value
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        // The error names the URL's version when the body has none (the decoder's defaults).
        let shown_version = if body_version.is_empty() && body_group.is_empty() {
            def.version.as_str()
        } else {
            body_version
        };
        if raw_kind.is_empty() {
            let text = String::from_utf8_lossy(body.trim_ascii());
            return Err(cannot(
                &def.kind,
                shown_version,
                format!("Object 'Kind' is missing in '{text}'"),
            ));
        }
        let (g, v) = split_gv(&raw_av);
        if g != def.group {
            return Err(cannot(
                &raw_kind,
                v,
                format!(
                    "{g}/{v}, Kind={raw_kind} is unstructured and is not suitable for converting to \"{}\"",
                    def.api_version()
                ),
            ));
        }
        if v != def.version && !served(&raw_av, &def.kind) {
            return Err(cannot(
                &raw_kind,
                v,
                format!("request to convert CR from an invalid group/version: {raw_av}"),
            ));
        }
        if v != def.version {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({raw_av}) does not match the expected API version ({})",
                def.api_version()
            )));
        }
        if raw_kind != def.kind {
            let name = decoded
                .value
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            return Err(ApiError::invalid(
                &def.group,
                &def.kind,
                &name,
                vec![crate::status::Cause::new(
                    "FieldValueInvalid",
                    "kind",
                    format!("Invalid value: \"{raw_kind}\": must be {}", def.kind),
                )],
            ));
        }
        return Ok(decoded);
    }
    // A built-in kind: missing parts default from the URL (Go's `gvkWithDefaults`).
    let kind = if kind.is_empty() { def.kind.clone() } else { kind };
    let (group, version) = match (body_group, body_version) {
        ("", "") => (def.group.as_str(), def.version.as_str()),
        (g, "") if g == def.group => (g, def.version.as_str()),
        gv => gv,
    };
    if version.is_empty() {
        let text = String::from_utf8_lossy(body);
        return Err(cannot(
            &kind,
            version,
            format!("Object 'apiVersion' is missing in '{text}'"),
        ));
    }
    let gv = gv_string(group, version);
    if !served(&gv, &kind) {
        return Err(cannot(
            &kind,
            version,
            format!("no kind \"{kind}\" is registered for version \"{gv}\" in scheme \"{LEGACY_SCHEME}\""),
        ));
    }
    let same_type = kind == def.kind && internal_package(group) == internal_package(&def.group);
    if !same_type {
        return Err(cannot(
            &kind,
            version,
            format!(
                "converting ({version}.{kind}) to ({}.{}): unknown conversion",
                internal_package(&def.group),
                def.kind
            ),
        ));
    }
    if gv != def.api_version() {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({gv}) does not match the expected API version ({})",
            def.api_version()
        )));
    }
    if decoded.value.is_null() {
        // Go decodes `null` into an empty object.
        decoded.value = Value::Object(Map::new());
    }
    Ok(decoded)
}

/// Check a server-side apply configuration's type as the real server does: the body must be
/// a YAML/JSON object (`error decoding YAML: ...`), and its apiVersion and kind those of the
/// URL, `expected` as `(group, version, kind)` (the field manager's version check: `invalid
/// object type: group/version, Kind=kind`, an unparseable apiVersion showing as empty).
pub fn check_apply_type(applied: &Value, expected: (&str, &str, &str)) -> Result<(), ApiError> {
    if !applied.is_object() && !applied.is_null() {
        return Err(ApiError::bad_request(format!(
            "error decoding YAML: error unmarshaling JSON: while decoding JSON: json: cannot unmarshal {} into Go value of type map[string]interface {{}}",
            json_type_name(applied)
        )));
    }
    let av = applied
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let kind = applied.get("kind").and_then(Value::as_str).unwrap_or_default();
    let (group, version, kind) = if av.matches('/').count() > 1 {
        ("", "", "")
    } else {
        let (g, v) = split_gv(av);
        (g, v, kind)
    };
    if (group, version, kind) != expected {
        return Err(ApiError::bad_request(format!(
            "invalid object type: {group}/{version}, Kind={kind}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(levels: usize) -> String {
        "{\"a\":".repeat(levels) + "1" + &"}".repeat(levels)
    }

    #[test]
    fn depth_is_limited_like_gos_decoder_and_strings_do_not_count() {
        assert!(json(nested(MAX_DEPTH + BODY_DEPTH_SLACK).as_bytes()).is_ok());
        let err = json(nested(MAX_DEPTH + BODY_DEPTH_SLACK + 1).as_bytes()).unwrap_err();
        assert_eq!(err.code, 400);
        assert!(
            err.message.ends_with("invalid character '{' exceeded max depth"),
            "{}",
            err.message
        );
        let brackets = format!("{{\"a\": \"{}\\\"{}\"}}", "[".repeat(2000), "{".repeat(2000));
        assert!(
            json(brackets.as_bytes()).is_ok(),
            "brackets inside strings are not nesting"
        );
        let yaml = format!(
            "a: {}{}\n",
            "[".repeat(MAX_DEPTH + BODY_DEPTH_SLACK),
            "]".repeat(MAX_DEPTH + BODY_DEPTH_SLACK)
        );
        // (serde-saphyr stops deep YAML earlier, with its own recursion limit.)
        let err = json_or_yaml(yaml.as_bytes()).unwrap_err();
        assert_eq!(err.code, 400, "{}", err.message);
    }

    #[test]
    fn object_depth_leaves_managed_fields_aside() {
        let obj = serde_json::json!({"metadata": {"name": "x", "managedFields": [{"fieldsV1": {"f:a": {"f:b": {}}}}]}, "spec": {"a": 1}});
        assert_eq!(depth(&obj), 7);
        assert_eq!(object_depth(&obj), 2);
        assert_eq!(
            object_depth(&serde_json::json!({"metadata": {"labels": {"a": "b"}}})),
            3
        );
    }

    #[test]
    fn deep_values_parse_measure_and_drop_without_recursion() {
        let text = nested(20_000);
        let v: Value = from_slice_deep(text.as_bytes()).unwrap();
        assert_eq!(depth(&v), 20_000);
        drop_deep(v);
        assert!(from_slice_deep::<Value>(b"{} x").is_err());
        assert_eq!(
            json_checked::<Value>(nested(MAX_DEPTH + BODY_DEPTH_SLACK + 1).as_bytes()).unwrap_err(),
            "invalid character '{' exceeded max depth"
        );
    }

    #[test]
    fn duplicates_are_reported_with_their_paths() {
        let d = json(br#"{"spec": {"a": 1, "a": 2, "l": [{"x": 1, "x": 1}]}}"#).unwrap();
        assert_eq!(d.value["spec"]["a"], 2);
        assert_eq!(d.duplicates, vec!["spec.a", "spec.l[0].x"]);
    }

    #[test]
    fn syntax_errors_are_worded_as_gos_encoding_json() {
        let cases: &[(&[u8], Option<&str>)] = &[
            (b"", Some("unexpected end of JSON input")),
            (b"{\"a\": 1", Some("unexpected end of JSON input")),
            (
                b"{\"a\": }",
                Some("invalid character '}' looking for beginning of value"),
            ),
            (
                b"{a: 1}",
                Some("invalid character 'a' looking for beginning of object key string"),
            ),
            (b"{\"a\" 1}", Some("invalid character '1' after object key")),
            (
                b"{\"a\": 1 \"b\": 2}",
                Some("invalid character '\"' after object key:value pair"),
            ),
            (b"[1 2]", Some("invalid character '2' after array element")),
            (b"{} {}", Some("invalid character '{' after top-level value")),
            (
                b"{\"a\": tru}",
                Some("invalid character '}' in literal true (expecting 'e')"),
            ),
            (
                b"{\"a\": nul}",
                Some("invalid character '}' in literal null (expecting 'l')"),
            ),
            (b"{\"a\": -x}", Some("invalid character 'x' in numeric literal")),
            (
                b"{\"a\": 1.}",
                Some("invalid character '}' after decimal point in numeric literal"),
            ),
            (
                b"{\"a\": 1e}",
                Some("invalid character '}' in exponent of numeric literal"),
            ),
            (
                b"{\"a\": \"\\q\"}",
                Some("invalid character 'q' in string escape code"),
            ),
            (
                b"{\"a\": \"\\u12g4\"}",
                Some("invalid character 'g' in \\u hexadecimal character escape"),
            ),
            (
                b"{\"a\": \"x\ny\"}",
                Some("invalid character '\\n' in string literal"),
            ),
            (
                b"\xff",
                Some("invalid character '\u{ff}' looking for beginning of value"),
            ),
            (
                b"{\"a\": 'x'}",
                Some("invalid character '\\'' looking for beginning of value"),
            ),
            (
                b" {\"a\": [1, 2.5e-3, {}, [], \"\\u00e9\", true, false, null]} ",
                None,
            ),
            (b"-0.5", None),
            (b"[]", None),
            (b"\"s\"", None),
        ];
        for (body, want) in cases {
            assert_eq!(
                go_syntax_error(body).as_deref(),
                *want,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn summaries_are_gos_summarize_data() {
        assert_eq!(summarize(b""), "<empty>");
        assert_eq!(summarize(b"{\"a\":1}"), "{\"a\":1}");
        assert_eq!(
            summarize(b"{\"metadata\":{\"name\":\"0123456789abcdef\"}}"),
            "{\"metadata\":{\"name\":\"012345678 ..."
        );
        assert_eq!(
            summarize(b"[1,2]"),
            "00000000  5b 31 2c 32 5d                                    |[1,2]|\n"
        );
        assert_eq!(
            summarize(b"  {\"kind\": \"ConfigMap\", \"apiVersion\": \"v1\"}"),
            "00000000  20 20 7b 22 6b 69 6e 64  22 3a 20 22 43 6f 6e 66  |  {\"kind\": \"Conf|\n\
             00000010  69 67 4d 61 70 22 2c 20  22 61 70 69 56 65        |igMap\", \"apiVe|\n ..."
        );
    }

    fn def(group: &str, version: &str, kind: &str, custom: bool) -> crate::registry::ResourceDef {
        crate::registry::ResourceDef {
            group: group.into(),
            version: version.into(),
            kind: kind.into(),
            crd: custom.then(|| format!("things.{group}")),
            ..crate::registry::builtin_resources()
                .into_iter()
                .next()
                .expect("a built-in")
        }
    }

    fn served(av: &str, kind: &str) -> bool {
        matches!(
            (av, kind),
            ("v1", "ConfigMap" | "Secret" | "Event")
                | ("events.k8s.io/v1", "Event")
                | ("example.com/v1" | "example.com/v2", "Widget")
        )
    }

    fn message(body: &str, def: &crate::registry::ResourceDef) -> String {
        match object_body(body.as_bytes(), def, "", &served) {
            Ok(_) => "ok".into(),
            Err(e) => format!("{} {}", e.code, e.message),
        }
    }

    #[test]
    fn bodies_are_refused_with_the_real_servers_words() {
        let cm = def("", "v1", "ConfigMap", false);
        let cases = [
            (
                r#"{"metadata": {"#,
                "400 the object provided is unrecognized (must be of type ConfigMap): couldn't get version/kind; json parse error: unexpected end of JSON input ({\"metadata\": {)",
            ),
            (
                "[1,2]",
                "400 the object provided is unrecognized (must be of type ConfigMap): couldn't get version/kind; json parse error: json: cannot unmarshal array into Go value of type struct { APIVersion string \"json:\\\"apiVersion,omitempty\\\"\"; Kind string \"json:\\\"kind,omitempty\\\"\" } (00000000  5b 31 2c 32 5d                                    |[1,2]|\n)",
            ),
            (
                r#"{"kind": 1}"#,
                "400 the object provided is unrecognized (must be of type ConfigMap): couldn't get version/kind; json parse error: json: cannot unmarshal number into Go struct field .kind of type string ({\"kind\": 1})",
            ),
            (
                r#"{"apiVersion": "a/b/c"}"#,
                "400 the object provided is unrecognized (must be of type ConfigMap): unexpected GroupVersion string: a/b/c ({\"apiVersion\": \"a/b/c\"})",
            ),
            // A built-in kind defaults what is missing from the URL.
            (r#"{"metadata": {"name": "a"}}"#, "ok"),
            (r#"{"kind": "ConfigMap", "metadata": {}}"#, "ok"),
            (r#"{"apiVersion": "v1"}"#, "ok"),
            (
                r#"{"apiVersion": "v1", "kind": "Secret"}"#,
                "400 Secret in version \"v1\" cannot be handled as a ConfigMap: converting (v1.Secret) to (core.ConfigMap): unknown conversion",
            ),
            (
                r#"{"apiVersion": "v1", "kind": "Nope"}"#,
                "400 Nope in version \"v1\" cannot be handled as a ConfigMap: no kind \"Nope\" is registered for version \"v1\" in scheme \"k8s.io/kubernetes/pkg/api/legacyscheme/scheme.go:30\"",
            ),
            (
                r#"{"apiVersion": "apps/v1", "kind": "ConfigMap"}"#,
                "400 ConfigMap in version \"v1\" cannot be handled as a ConfigMap: no kind \"ConfigMap\" is registered for version \"apps/v1\" in scheme \"k8s.io/kubernetes/pkg/api/legacyscheme/scheme.go:30\"",
            ),
        ];
        for (body, want) in cases {
            assert_eq!(message(body, &cm), want, "{body}");
        }
        // The same type under another group: decoded, then refused for its version.
        assert_eq!(
            message(
                r#"{"apiVersion": "events.k8s.io/v1", "kind": "Event"}"#,
                &def("", "v1", "Event", false)
            ),
            "400 the API version in the data (events.k8s.io/v1) does not match the expected API version (v1)"
        );

        let widget = def("example.com", "v1", "Widget", true);
        let cases = [
            (
                r#" {"metadata": {"name": "w"}} "#,
                "400 Widget in version \"v1\" cannot be handled as a Widget: Object 'Kind' is missing in '{\"metadata\": {\"name\": \"w\"}}'",
            ),
            (
                r#"{"kind": "Widget", "metadata": {"name": "w"}}"#,
                "400 Widget in version \"\" cannot be handled as a Widget: /, Kind=Widget is unstructured and is not suitable for converting to \"example.com/v1\"",
            ),
            (
                r#"{"apiVersion": "other.io/v1", "kind": "Widget"}"#,
                "400 Widget in version \"v1\" cannot be handled as a Widget: other.io/v1, Kind=Widget is unstructured and is not suitable for converting to \"example.com/v1\"",
            ),
            (
                r#"{"apiVersion": "example.com/v9", "kind": "Widget"}"#,
                "400 Widget in version \"v9\" cannot be handled as a Widget: request to convert CR from an invalid group/version: example.com/v9",
            ),
            (
                r#"{"apiVersion": "example.com/v2", "kind": "Widget"}"#,
                "400 the API version in the data (example.com/v2) does not match the expected API version (example.com/v1)",
            ),
            (
                r#"{"apiVersion": "example.com/v1", "kind": "Gadget", "metadata": {"name": "w"}}"#,
                "422 Widget.example.com \"w\" is invalid: kind: Invalid value: \"Gadget\": must be Widget",
            ),
            (r#"{"apiVersion": "example.com/v1", "kind": "Widget"}"#, "ok"),
        ];
        for (body, want) in cases {
            assert_eq!(message(body, &widget), want, "{body}");
        }
    }

    #[test]
    fn apply_configurations_of_another_type_are_refused_as_the_field_manager_does() {
        let check = |v: Value| check_apply_type(&v, ("", "v1", "ConfigMap")).map_err(|e| e.message);
        assert_eq!(
            check(serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap"})),
            Ok(())
        );
        for (v, want) in [
            (
                serde_json::json!({"kind": "ConfigMap"}),
                "invalid object type: /, Kind=ConfigMap",
            ),
            (
                serde_json::json!({"apiVersion": "v1"}),
                "invalid object type: /v1, Kind=",
            ),
            (
                serde_json::json!({"apiVersion": "apps/v1", "kind": "ConfigMap"}),
                "invalid object type: apps/v1, Kind=ConfigMap",
            ),
            (
                serde_json::json!({"apiVersion": "a/b/c", "kind": "ConfigMap"}),
                "invalid object type: /, Kind=",
            ),
            (Value::Null, "invalid object type: /, Kind="),
            (
                serde_json::json!([1]),
                "error decoding YAML: error unmarshaling JSON: while decoding JSON: json: cannot unmarshal array into Go value of type map[string]interface {}",
            ),
        ] {
            assert_eq!(check(v.clone()), Err(want.to_string()), "{v}");
        }
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        for bad in [&b"{"[..], b"{\"a\": }", b"\xff\xfe", b"[1,", b"{} {}"] {
            assert!(json(bad).is_err());
        }
        assert!(json_or_yaml(b"a: [1, 2").is_err());
        assert_eq!(
            json_or_yaml(b"a: 1\nb: x\n").unwrap().value,
            serde_json::json!({"a": 1, "b": "x"})
        );
    }
}
