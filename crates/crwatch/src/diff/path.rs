//! The path syntax of diffs: rendering path segments (`spec.users`, `[3]`,
//! `["app.kubernetes.io/name"]`, `[Ready]`, `[containerPort=8080,protocol=TCP]`) and parsing
//! them back, so every rendered path names exactly one place.
//!
//! Grammar of one bracketed segment:
//!
//! - `[N]`: list element by index (no leading zeros);
//! - `["key"]`: object key that is not a plain identifier, as a JSON string;
//! - `[value]`: list element whose single key (or, in a set, whose value) is the string
//!   `value`, when that string is a plain identifier (not `true`, `false` or `null`);
//! - `[=json]`: set element with any other scalar value, e.g. `[="a.b/c"]` or `[=42]`;
//! - `[k=v,k2=v2]`: list element by named key fields, each value a plain identifier or JSON
//!   scalar, each name a plain identifier or a JSON string;
//! - `[*]`: any list element (only in patterns: filters and list-key rules).

use std::fmt::Write;

use serde_json::Value;

/// A path string that does not follow the path syntax described in the
/// [module docs](crate::diff).
///
/// ```
/// use crwatch::diff::Filter;
///
/// let err = Filter::none().try_ignore("spec..size").unwrap_err();
/// assert!(err.to_string().contains("spec..size"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid diff path {path:?} at byte {pos}: {reason}; use keys joined by '.', [N] for list elements by index, [key] or [k=v,...] for list elements by key, and [\"quoted\"] for keys with dots or other special characters"
)]
pub struct PathError {
    /// The path as given.
    pub path: String,
    /// Byte offset of the problem.
    pub pos: usize,
    /// What was expected there.
    pub reason: &'static str,
}

/// The key fields of one list element: `(field name, value)`; the name is `None` when the
/// path leaves it implicit (`[Ready]`, set elements).
pub(crate) type Fields<N, V> = Vec<(Option<N>, V)>;

/// A borrowed path segment while walking values.
#[derive(Clone, Debug)]
pub(crate) enum Seg<'a> {
    Key(&'a str),
    Index(usize),
    /// A list element chosen by key values.
    Select(Fields<&'a str, &'a Value>),
}

/// An owned path segment parsed from a string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ParsedSeg {
    Key(String),
    Index(usize),
    Select(Fields<String, Value>),
    /// `[*]`, only where wildcards are allowed.
    AnyIndex,
}

impl ParsedSeg {
    /// The borrowed form, for matching; `None` for `[*]`.
    pub(crate) fn as_seg(&self) -> Option<Seg<'_>> {
        match self {
            ParsedSeg::Key(k) => Some(Seg::Key(k)),
            ParsedSeg::Index(i) => Some(Seg::Index(*i)),
            ParsedSeg::Select(f) => Some(Seg::Select(f.iter().map(|(n, v)| (n.as_deref(), v)).collect())),
            ParsedSeg::AnyIndex => None,
        }
    }
}

/// What list-key rules need to know about a path segment: an object key, or some element.
pub(crate) trait SegKind {
    /// The object key, or `None` for a list element.
    fn key(&self) -> Option<&str>;
}

impl SegKind for Seg<'_> {
    fn key(&self) -> Option<&str> {
        match self {
            Seg::Key(k) => Some(k),
            _ => None,
        }
    }
}

impl SegKind for ParsedSeg {
    fn key(&self) -> Option<&str> {
        match self {
            ParsedSeg::Key(k) => Some(k),
            _ => None,
        }
    }
}

/// Whether a pattern's selector matches a path's: the same values in the same order, and the
/// same names where both sides name the field (`[type=Ready]` matches `[Ready]`).
pub(crate) fn selector_matches(pat: &[(Option<String>, Value)], path: &[(Option<&str>, &Value)]) -> bool {
    pat.len() == path.len()
        && pat.iter().zip(path).all(|((pn, pv), (n, v))| {
            pv == *v
                && match (pn, n) {
                    (Some(a), Some(b)) => a == b,
                    _ => true,
                }
        })
}

/// Keys printed without quotes: what reads naturally in `spec.users` and
/// `metadata.labels.app-name`, and cannot be confused with the rest of the syntax.
pub(crate) fn is_bare_key(k: &str) -> bool {
    let mut chars = k.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// A string value printed without quotes inside a selector: a plain identifier that cannot be
/// read as a JSON literal.
fn is_bare_value(s: &str) -> bool {
    is_bare_key(s) && !matches!(s, "true" | "false" | "null")
}

/// Whether a value can identify a list element (k8s list-map keys are scalars).
pub(crate) fn is_key_value(v: &Value) -> bool {
    matches!(v, Value::String(_) | Value::Number(_) | Value::Bool(_))
}

pub(crate) fn push_key(out: &mut String, k: &str) {
    if is_bare_key(k) {
        if !out.is_empty() {
            out.push('.');
        }
        out.push_str(k);
    } else {
        out.push('[');
        push_json_string(out, k);
        out.push(']');
    }
}

pub(crate) fn push_index(out: &mut String, i: usize) {
    // Writing to a String cannot fail.
    let _ = write!(out, "[{i}]");
}

/// Renders a selector segment. A single field whose value is a plain identifier drops the
/// field name (`[Ready]`); a single unnamed field otherwise is `[=json]`; everything else
/// names its fields (`[containerPort=8080]`, `[port=53,protocol=UDP]`).
pub(crate) fn push_selector<N: AsRef<str>, V: std::borrow::Borrow<Value>>(
    out: &mut String,
    fields: &[(Option<N>, V)],
) {
    out.push('[');
    match fields {
        [(_, v)] if v.borrow().as_str().is_some_and(is_bare_value) => {
            out.push_str(v.borrow().as_str().unwrap_or_default());
        }
        [(None, v)] => {
            out.push('=');
            push_value(out, v.borrow());
        }
        _ => {
            for (i, (name, v)) in fields.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                // Unnamed fields only come from sets, which have one field; an empty name
                // keeps the rendering parseable if one ever turns up.
                let name = name.as_ref().map_or("", AsRef::as_ref);
                if is_bare_key(name) {
                    out.push_str(name);
                } else {
                    push_json_string(out, name);
                }
                out.push('=');
                push_value(out, v.borrow());
            }
        }
    }
    out.push(']');
}

fn push_value(out: &mut String, v: &Value) {
    match v {
        Value::String(s) if is_bare_value(s) => out.push_str(s),
        other => {
            let _ = write!(out, "{other}");
        }
    }
}

pub(crate) fn push_json_string(out: &mut String, s: &str) {
    out.push_str(&Value::String(s.to_owned()).to_string());
}

/// Renders parsed segments back into a path (`[*]` included).
pub(crate) fn render(segs: &[ParsedSeg]) -> String {
    let mut out = String::new();
    for s in segs {
        match s {
            ParsedSeg::Key(k) => push_key(&mut out, k),
            ParsedSeg::Index(i) => push_index(&mut out, *i),
            ParsedSeg::Select(f) => push_selector(&mut out, f),
            ParsedSeg::AnyIndex => out.push_str("[*]"),
        }
    }
    out
}

/// Parses the path syntax of the module docs; `[*]` only when `wildcards` is set.
pub(crate) fn parse_path(path: &str, wildcards: bool) -> Result<Vec<ParsedSeg>, PathError> {
    let err = |pos, reason| PathError {
        path: path.to_owned(),
        pos,
        reason,
    };
    let bytes = path.as_bytes();
    let mut segs = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'[' => {
                i += 1;
                let rest = &path[i..];
                if rest.starts_with('"') {
                    let (key, len) = json_string_at(rest).ok_or_else(|| err(i, "invalid quoted key"))?;
                    i += len;
                    if bytes.get(i) == Some(&b'=') {
                        let (fields, end) =
                            parse_fields(path, i + 1, Some(key)).map_err(|(p, r)| err(p, r))?;
                        i = end;
                        segs.push(ParsedSeg::Select(fields));
                    } else {
                        segs.push(ParsedSeg::Key(key));
                    }
                } else if wildcards && rest.starts_with('*') {
                    i += 1;
                    segs.push(ParsedSeg::AnyIndex);
                } else if rest.starts_with(|c: char| c.is_ascii_digit()) {
                    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
                    let n = rest[..digits]
                        .parse()
                        .map_err(|_| err(i, "expected a list index"))?;
                    // Rendered indices never have leading zeros; accepting them would let two
                    // strings name one path.
                    if digits > 1 && rest.starts_with('0') {
                        return Err(err(i, "list index with a leading zero"));
                    }
                    i += digits;
                    segs.push(ParsedSeg::Index(n));
                } else if let Some(after) = rest.strip_prefix('=') {
                    let (v, len) =
                        scalar_at(after).ok_or_else(|| err(i + 1, "expected a value after '='"))?;
                    i += 1 + len;
                    segs.push(ParsedSeg::Select(vec![(None, v)]));
                } else {
                    let token = bare_key_at(path, i)
                        .ok_or_else(|| err(i, "expected an index, a key or a quoted key"))?;
                    i += token.len();
                    if bytes.get(i) == Some(&b'=') {
                        let (fields, end) =
                            parse_fields(path, i + 1, Some(token.to_owned())).map_err(|(p, r)| err(p, r))?;
                        i = end;
                        segs.push(ParsedSeg::Select(fields));
                    } else if is_bare_value(token) {
                        segs.push(ParsedSeg::Select(vec![(None, Value::String(token.to_owned()))]));
                    } else {
                        return Err(err(
                            i - token.len(),
                            "a JSON literal needs a field name or '=' in a selector",
                        ));
                    }
                }
                if bytes.get(i) != Some(&b']') {
                    return Err(err(i, "expected ']'"));
                }
                i += 1;
            }
            b'.' if !segs.is_empty() => {
                let start = i + 1;
                let key = bare_key_at(path, start).ok_or_else(|| err(start, "expected a key after '.'"))?;
                i = start + key.len();
                segs.push(ParsedSeg::Key(key.to_owned()));
            }
            _ if segs.is_empty() => {
                let key = bare_key_at(path, i).ok_or_else(|| err(i, "expected a key or '['"))?;
                i += key.len();
                segs.push(ParsedSeg::Key(key.to_owned()));
            }
            _ => return Err(err(i, "expected '.' or '['")),
        }
    }
    Ok(segs)
}

/// Where parsing failed (byte offset) and why.
type ParseFailure = (usize, &'static str);

/// Parses `v[,name=v]*` after the first `name=`; returns the fields and the offset of the
/// closing `]` (not consumed).
fn parse_fields(
    path: &str,
    mut i: usize,
    first: Option<String>,
) -> Result<(Fields<String, Value>, usize), ParseFailure> {
    let mut fields = Vec::new();
    let mut name = first;
    loop {
        let (v, len) = scalar_at(&path[i..]).ok_or((i, "expected a key value"))?;
        i += len;
        fields.push((name.take(), v));
        match path.as_bytes().get(i) {
            Some(b',') => {
                i += 1;
                let rest = &path[i..];
                let (n, len) = if rest.starts_with('"') {
                    json_string_at(rest).ok_or((i, "invalid quoted field name"))?
                } else {
                    let n = bare_key_at(path, i).ok_or((i, "expected a field name"))?;
                    (n.to_owned(), n.len())
                };
                i += len;
                if path.as_bytes().get(i) != Some(&b'=') {
                    return Err((i, "expected '=' after a field name"));
                }
                i += 1;
                name = Some(n);
            }
            _ => break,
        }
    }
    Ok((fields, i))
}

/// A selector value at the start of `s`: a plain identifier (a string), a JSON string, a JSON
/// number or `true`/`false`; with the number of bytes it takes. Rendering always picks one
/// spelling; parsing also accepts the others (`[type="Ready"]`), since people write filters.
fn scalar_at(s: &str) -> Option<(Value, usize)> {
    if s.starts_with('"') {
        let (v, len) = json_string_at(s)?;
        return Some((Value::String(v), len));
    }
    let len = s.find([',', ']']).unwrap_or(s.len());
    let token = &s[..len];
    if is_bare_value(token) {
        return Some((Value::String(token.to_owned()), len));
    }
    let v = match token {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        // serde_json (without its float_roundtrip feature) may parse a float one ulp off what
        // it printed; the standard library's parser is exact, so the value found is the one
        // rendered.
        t if t.contains(['.', 'e', 'E']) => {
            Value::Number(serde_json::Number::from_f64(t.parse::<f64>().ok()?)?)
        }
        t => match serde_json::from_str::<Value>(t).ok()? {
            n @ Value::Number(_) => n,
            _ => return None,
        },
    };
    Some((v, len))
}

/// A JSON string literal at the start of `s` and its length in bytes.
fn json_string_at(s: &str) -> Option<(String, usize)> {
    let body = s.strip_prefix('"')?;
    let len = json_string_len(body)? + 2;
    let v: String = serde_json::from_str(&s[..len]).ok()?;
    Some((v, len))
}

fn bare_key_at(path: &str, start: usize) -> Option<&str> {
    let rest = path.get(start..)?;
    let len = rest
        .bytes()
        .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'-')
        .count();
    let key = &rest[..len];
    is_bare_key(key).then_some(key)
}

/// Length of a JSON string body up to (not including) its closing quote.
fn json_string_len(s: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, b) in s.bytes().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' => escaped = true,
            b'"' => return Some(i),
            _ => {}
        }
    }
    None
}
