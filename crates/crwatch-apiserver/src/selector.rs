//! Label and field selectors: the `?labelSelector=` / `?fieldSelector=` string syntax and the
//! structured `metav1.LabelSelector` (matchLabels / matchExpressions) used by webhooks.

use std::collections::BTreeMap;

use serde_json::Value;

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq)]
pub enum Requirement {
    /// `key=value` or `key==value` (or `key in (a,b)` with several values).
    In(String, Vec<String>),
    /// `key!=value` or `key notin (a,b)`.
    NotIn(String, Vec<String>),
    /// `key`
    Exists(String),
    /// `!key`
    DoesNotExist(String),
    /// `key>n` and `key<n` (only matchExpressions-free selectors use them; kept for parity).
    Gt(String, i64),
    /// `key<n`
    Lt(String, i64),
}

/// A parsed label selector: every requirement must hold. Empty matches everything.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LabelSelector {
    /// The requirements, all of which must match.
    pub requirements: Vec<Requirement>,
}

/// A selector string that cannot be parsed; the message matches the real server's wording.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct SelectorError(pub String);

/// Whether `key` is a valid label key (optional DNS prefix, then a name of at most 63 characters).
pub fn valid_label_key(key: &str) -> bool {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|part| {
                !part.is_empty()
                    && part
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    && !part.starts_with('-')
                    && !part.ends_with('-')
            })
    });
    name_ok && prefix_ok
}

impl LabelSelector {
    /// Parse the string form, e.g. `app=web,tier in (a,b),!legacy`, as the real server's
    /// `labels.Parse` does, with its error messages word for word.
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let tokens = lex(s);
        let mut p = Parser { tokens, pos: 0 };
        let requirements = p.parse().map_err(SelectorError)?;
        Ok(LabelSelector { requirements })
    }

    /// Build from a `metav1.LabelSelector` object (`matchLabels`, `matchExpressions`).
    /// `null` or `{}` selects everything.
    pub fn from_object(v: &Value) -> Result<Self, SelectorError> {
        let mut requirements = vec![];
        if let Some(m) = v.get("matchLabels").and_then(Value::as_object) {
            for (k, val) in m {
                let val = val.as_str().unwrap_or_default();
                requirements.push(Requirement::In(k.clone(), vec![val.to_string()]));
            }
        }
        if let Some(exprs) = v.get("matchExpressions").and_then(Value::as_array) {
            for e in exprs {
                let key = e
                    .get("key")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                let values: Vec<String> = e
                    .get("values")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(|x| x.as_str().map(String::from)).collect())
                    .unwrap_or_default();
                let op = e.get("operator").and_then(Value::as_str).unwrap_or_default();
                requirements.push(match op {
                    "In" => Requirement::In(key, values),
                    "NotIn" => Requirement::NotIn(key, values),
                    "Exists" => Requirement::Exists(key),
                    "DoesNotExist" => Requirement::DoesNotExist(key),
                    other => {
                        return Err(SelectorError(format!(
                            "{other:?} is not a valid label selector operator"
                        )));
                    }
                });
            }
        }
        Ok(LabelSelector { requirements })
    }

    /// Whether an object with these labels is selected.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| match r {
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
            Requirement::Gt(k, n) => labels
                .get(k)
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|v| v > *n),
            Requirement::Lt(k, n) => labels
                .get(k)
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|v| v < *n),
        })
    }

    /// Whether the object (its `metadata.labels`) is selected.
    pub fn matches_object(&self, obj: &Value) -> bool {
        self.requirements.is_empty() || self.matches(&labels_of(obj))
    }

    /// Whether the selector selects everything.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }
}

/// A token of the selector syntax (`k8s.io/apimachinery/pkg/labels/selector.go`).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Tok {
    Error,
    End,
    ClosedPar,
    Comma,
    DoesNotExist,
    DoubleEquals,
    Equals,
    GreaterThan,
    Identifier,
    In,
    LessThan,
    NotEquals,
    NotIn,
    OpenPar,
}

fn keyword(s: &str) -> Option<Tok> {
    Some(match s {
        ")" => Tok::ClosedPar,
        "," => Tok::Comma,
        "!" => Tok::DoesNotExist,
        "==" => Tok::DoubleEquals,
        "=" => Tok::Equals,
        ">" => Tok::GreaterThan,
        "in" => Tok::In,
        "<" => Tok::LessThan,
        "!=" => Tok::NotEquals,
        "notin" => Tok::NotIn,
        "(" => Tok::OpenPar,
        _ => return None,
    })
}

fn is_special(c: u8) -> bool {
    matches!(c, b'=' | b'!' | b'(' | b')' | b',' | b'>' | b'<')
}

/// The real lexer: whitespace separates, special symbols form the longest known operator,
/// anything else up to the next space or symbol is an identifier (or `in` / `notin`). A NUL
/// byte ends the input, as there.
fn lex(s: &str) -> Vec<(Tok, String)> {
    let b = s.as_bytes();
    let mut i = 0;
    let at = |i: usize| b.get(i).copied().unwrap_or(0);
    let mut out = vec![];
    loop {
        while matches!(at(i), b' ' | b'\t' | b'\r' | b'\n') {
            i += 1;
        }
        let c = at(i);
        if c == 0 {
            out.push((Tok::End, String::new()));
            return out;
        }
        let start = i;
        if is_special(c) {
            let mut last: Option<(Tok, usize)> = None;
            while is_special(at(i)) {
                i += 1;
                match keyword(&s[start..i]) {
                    Some(t) => last = Some((t, i)),
                    None if last.is_some() => break,
                    None => {}
                }
            }
            match last {
                Some((t, end)) => {
                    i = end;
                    out.push((t, s[start..end].to_string()));
                }
                None => out.push((
                    Tok::Error,
                    format!("error expected: keyword found '{}'", &s[start..i]),
                )),
            }
        } else {
            while at(i) != 0 && !is_special(at(i)) && !matches!(at(i), b' ' | b'\t' | b'\r' | b'\n') {
                i += 1;
            }
            let word = String::from_utf8_lossy(&b[start..i]).into_owned();
            out.push((keyword(&word).unwrap_or(Tok::Identifier), word));
        }
    }
}

struct Parser {
    tokens: Vec<(Tok, String)>,
    pos: usize,
}

/// The operator names the real parser lists in "expected:" errors.
const BINARY_OPERATORS: &str = "in, notin, =, ==, !=, gt, lt";

impl Parser {
    /// The next token (`in` and `notin` read as identifiers where values are expected).
    fn peek(&self, values: bool) -> (Tok, String) {
        let (t, lit) = self
            .tokens
            .get(self.pos)
            .cloned()
            .unwrap_or((Tok::End, String::new()));
        match t {
            Tok::In | Tok::NotIn if values => (Tok::Identifier, lit),
            _ => (t, lit),
        }
    }

    fn next(&mut self, values: bool) -> (Tok, String) {
        let t = self.peek(values);
        self.pos += 1;
        t
    }

    fn parse(&mut self) -> Result<Vec<Requirement>, String> {
        let mut out = vec![];
        loop {
            let (t, lit) = self.peek(true);
            match t {
                Tok::Identifier | Tok::DoesNotExist => {
                    out.push(
                        self.requirement()
                            .map_err(|e| format!("unable to parse requirement: {e}"))?,
                    );
                    let (t, lit) = self.next(true);
                    match t {
                        Tok::End => return Ok(out),
                        Tok::Comma => {
                            let (t2, lit2) = self.peek(true);
                            if t2 != Tok::Identifier && t2 != Tok::DoesNotExist {
                                return Err(format!("found '{lit2}', expected: identifier after ','"));
                            }
                        }
                        _ => return Err(format!("found '{lit}', expected: ',' or 'end of string'")),
                    }
                }
                Tok::End => return Ok(out),
                _ => {
                    return Err(format!(
                        "found '{lit}', expected: !, identifier, or 'end of string'"
                    ));
                }
            }
        }
    }

    fn requirement(&mut self) -> Result<Requirement, String> {
        let (mut t, mut key) = self.next(true);
        let negated = t == Tok::DoesNotExist;
        if negated {
            (t, key) = self.next(true);
        }
        if t != Tok::Identifier {
            return Err(format!("found '{key}', expected: identifier"));
        }
        if let Some(e) = qualified_name_error(&key) {
            return Err(format!("<nil>: Invalid value: {}: {e}", go_quote(&key)));
        }
        if negated {
            return Ok(Requirement::DoesNotExist(key));
        }
        if matches!(self.peek(true).0, Tok::End | Tok::Comma) {
            return Ok(Requirement::Exists(key));
        }
        let (op, lit) = self.next(false);
        let values = match op {
            Tok::In | Tok::NotIn => self.set()?,
            Tok::Equals | Tok::DoubleEquals | Tok::NotEquals | Tok::GreaterThan | Tok::LessThan => {
                self.exact()?
            }
            _ => return Err(format!("found '{lit}', expected: {BINARY_OPERATORS}")),
        };
        // `NewRequirement`'s checks, all of them, as one aggregate error.
        let mut errs = vec![];
        let mut numbers = vec![];
        if matches!(op, Tok::GreaterThan | Tok::LessThan) {
            for (i, v) in values.iter().enumerate() {
                match v.parse::<i64>() {
                    Ok(n) => numbers.push(n),
                    Err(_) => errs.push(format!(
                        "values[{i}]: Invalid value: {}: for 'Gt', 'Lt' operators, the value must be an integer",
                        go_quote(v)
                    )),
                }
            }
        }
        for (i, v) in values.iter().enumerate() {
            if let Some(e) = label_value_error(v) {
                errs.push(format!("values[{i}][{key}]: Invalid value: {}: {e}", go_quote(v)));
            }
        }
        match errs.len() {
            0 => {}
            1 => return Err(errs.remove(0)),
            _ => {
                errs.dedup();
                return Err(format!("[{}]", errs.join(", ")));
            }
        }
        Ok(match op {
            Tok::In | Tok::Equals | Tok::DoubleEquals => Requirement::In(key, values),
            Tok::NotIn | Tok::NotEquals => Requirement::NotIn(key, values),
            Tok::GreaterThan => Requirement::Gt(key, numbers.first().copied().unwrap_or_default()),
            _ => Requirement::Lt(key, numbers.first().copied().unwrap_or_default()),
        })
    }

    /// `(a,b)`: `()` is the empty value; commas may be doubled or trail.
    fn set(&mut self) -> Result<Vec<String>, String> {
        let (t, lit) = self.next(true);
        if t != Tok::OpenPar {
            return Err(format!("found '{lit}' expected: '('"));
        }
        let (t, first) = self.peek(true);
        match t {
            Tok::Identifier | Tok::Comma => {
                let values = self.identifiers()?;
                if self.next(true).0 != Tok::ClosedPar {
                    // (The real parser names the first token in the parentheses here.)
                    return Err(format!("found '{first}', expected: ')'"));
                }
                Ok(values)
            }
            Tok::ClosedPar => {
                self.next(true);
                Ok(vec![String::new()])
            }
            _ => Err(format!("found '{first}', expected: ',', ')' or identifier")),
        }
    }

    fn identifiers(&mut self) -> Result<Vec<String>, String> {
        let mut values: Vec<String> = vec![];
        let add = |values: &mut Vec<String>, v: String| {
            if !values.contains(&v) {
                values.push(v);
            }
        };
        loop {
            let (t, lit) = self.next(true);
            match t {
                Tok::Identifier => {
                    add(&mut values, lit);
                    let (t2, lit2) = self.peek(true);
                    match t2 {
                        Tok::Comma => continue,
                        Tok::ClosedPar => return Ok(values),
                        _ => return Err(format!("found '{lit2}', expected: ',' or ')'")),
                    }
                }
                Tok::Comma => {
                    if values.is_empty() {
                        add(&mut values, String::new());
                    }
                    match self.peek(true).0 {
                        Tok::ClosedPar => {
                            add(&mut values, String::new());
                            return Ok(values);
                        }
                        Tok::Comma => {
                            self.next(true);
                            add(&mut values, String::new());
                        }
                        _ => {}
                    }
                }
                _ => return Err(format!("found '{lit}', expected: ',', or identifier")),
            }
        }
    }

    /// The one value after `=`, `==`, `!=`, `>` or `<` (empty at a comma or the end).
    fn exact(&mut self) -> Result<Vec<String>, String> {
        if matches!(self.peek(true).0, Tok::End | Tok::Comma) {
            return Ok(vec![String::new()]);
        }
        let (t, lit) = self.next(true);
        if t == Tok::Identifier {
            return Ok(vec![lit]);
        }
        Err(format!("found '{lit}', expected: identifier"))
    }
}

/// Go's `%q` of a string: double quotes, with Go's escapes for what is not printable.
fn go_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

const REGEX_NAME: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";

fn name_part_ok(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(c))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

fn dns_subdomain_ok(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|part| {
            let b = part.as_bytes();
            !b.is_empty()
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
        })
}

/// `validation.IsQualifiedName`'s errors joined with `; `, as label keys are checked.
fn qualified_name_error(key: &str) -> Option<String> {
    let parts: Vec<&str> = key.split('/').collect();
    let mut errs = vec![];
    let name = match parts[..] {
        [name] => name,
        [prefix, name] => {
            if prefix.is_empty() {
                errs.push("prefix part must be non-empty".to_string());
            } else {
                if prefix.len() > 253 {
                    errs.push("prefix part must be no more than 253 characters".to_string());
                }
                if !dns_subdomain_ok(prefix) {
                    errs.push("prefix part a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')".to_string());
                }
            }
            name
        }
        _ => {
            return Some(format!(
                "a qualified name {REGEX_NAME} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
            ));
        }
    };
    if name.is_empty() {
        errs.push("name part must be non-empty".into());
    } else if name.len() > 63 {
        errs.push("name part must be no more than 63 characters".into());
    }
    if !name_part_ok(name) {
        errs.push(format!("name part {REGEX_NAME}"));
    }
    (!errs.is_empty()).then(|| errs.join("; "))
}

/// `validation.IsValidLabelValue`'s errors joined with `; `.
fn label_value_error(v: &str) -> Option<String> {
    let mut errs = vec![];
    if v.len() > 63 {
        errs.push("must be no more than 63 characters".to_string());
    }
    if !v.is_empty() && !name_part_ok(v) {
        errs.push("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')".to_string());
    }
    (!errs.is_empty()).then(|| errs.join("; "))
}

/// A `matchLabels` map as the selector string `k=v,k2=v2` (what `kubectl get -o wide` and
/// the scale subresource show).
pub fn match_labels_string(obj: &Value, pointer: &str) -> Option<String> {
    obj.pointer(pointer).and_then(Value::as_object).map(|m| {
        m.iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
            .collect::<Vec<_>>()
            .join(",")
    })
}

/// `metadata.labels` as a map (missing or malformed labels are empty).
pub fn labels_of(obj: &Value) -> BTreeMap<String, String> {
    obj.pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// A parsed field selector: `metadata.name=x,metadata.namespace!=y`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FieldSelector {
    /// `(field, value, equals)`; `equals == false` means `!=`.
    pub terms: Vec<(String, String, bool)>,
}

impl FieldSelector {
    /// Parse a field selector, accepting the fields `allowed` (as the real server does per kind).
    pub fn parse(s: &str, allowed: &[&str]) -> Result<Self, SelectorError> {
        let mut terms = vec![];
        if s.trim().is_empty() {
            return Ok(FieldSelector { terms });
        }
        for part in s.split(',') {
            let part = part.trim();
            let (field, value, eq) = if let Some((f, v)) = part.split_once("!=") {
                (f, v, false)
            } else if let Some((f, v)) = part.split_once("==") {
                (f, v, true)
            } else if let Some((f, v)) = part.split_once('=') {
                (f, v, true)
            } else {
                return Err(SelectorError(format!(
                    "invalid selector: '{s}'; can't understand '{part}'"
                )));
            };
            let field = field.trim();
            if !allowed.contains(&field) {
                return Err(SelectorError(format!("field label not supported: {field}")));
            }
            terms.push((field.to_string(), value.trim().to_string(), eq));
        }
        Ok(FieldSelector { terms })
    }

    /// Whether the object matches every term.
    pub fn matches(&self, obj: &Value) -> bool {
        self.terms.iter().all(|(field, value, eq)| {
            let actual = field_value(obj, field);
            (actual.as_deref().unwrap_or("") == value) == *eq
        })
    }

    /// The single `metadata.name=` value, when the selector pins one name.
    pub fn pinned_name(&self) -> Option<&str> {
        self.terms
            .iter()
            .find(|(f, _, eq)| f == "metadata.name" && *eq)
            .map(|(_, v, _)| v.as_str())
    }

    /// Whether the selector selects everything.
    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }
}

/// The value of a selectable field (`metadata.name`, `spec.x`, `type`) as a string.
pub fn field_value(obj: &Value, field: &str) -> Option<String> {
    // A core Event's `source` selects on `source.component`, or `reportingComponent` when that
    // is empty (as the real server's `ToSelectableFields` for Events).
    if field == "source" && obj.get("kind").and_then(Value::as_str) == Some("Event") {
        let s = |p: &str| obj.pointer(p).and_then(Value::as_str).unwrap_or_default();
        let component = s("/source/component");
        return Some(
            if component.is_empty() {
                s("/reportingComponent")
            } else {
                component
            }
            .to_string(),
        );
    }
    // Fields the real `GetAttrs` formats from Go zero values when they are unset.
    let zero = match field {
        "spec.hostNetwork" | "spec.unschedulable" => Some("false"),
        "status.replicas" | "status.successful" => Some("0"),
        _ => None,
    };
    let mut cur = obj;
    for part in field.split('.') {
        match cur.get(part) {
            Some(next) => cur = next,
            None => return zero.map(str::to_string),
        }
    }
    match cur {
        Value::String(s) => Some(s.clone()),
        Value::Null => zero.map(str::to_string),
        other => Some(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn every_operator_parses_and_matches() {
        let l = labels(&[("app", "web"), ("tier", "front")]);
        for (sel, want) in [
            ("app=web", true),
            ("app==web", true),
            ("app!=web", false),
            ("app!=db", true),
            ("tier in (front,back)", true),
            ("tier notin (front)", false),
            ("app", true),
            ("!app", false),
            ("!missing", true),
            ("missing", false),
            ("app=web,tier in (x, front),!legacy", true),
            ("", true),
        ] {
            assert_eq!(LabelSelector::parse(sel).unwrap().matches(&l), want, "{sel}");
        }
    }

    #[test]
    fn malformed_selectors_are_errors() {
        for sel in ["app in front", "a b", "=x", "app=web,", "tier in (a b)"] {
            assert!(LabelSelector::parse(sel).is_err(), "{sel}");
        }
    }

    #[test]
    fn errors_are_worded_as_the_real_parser() {
        const NAME: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
        const VALUE: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";
        let cases = [
            ("=x", "found '=', expected: !, identifier, or 'end of string'".to_string()),
            ("app=web,", "found '', expected: identifier after ','".into()),
            ("a b", "unable to parse requirement: found 'b', expected: in, notin, =, ==, !=, gt, lt".into()),
            ("!a=b", "found '=', expected: ',' or 'end of string'".into()),
            ("app in front", "unable to parse requirement: found 'front' expected: '('".into()),
            ("tier in (a b)", "unable to parse requirement: found 'b', expected: ',' or ')'".into()),
            ("tier in (a", "unable to parse requirement: found '', expected: ',' or ')'".into()),
            ("a=(", "unable to parse requirement: found '(', expected: identifier".into()),
            ("a ~ b", "unable to parse requirement: found '~', expected: in, notin, =, ==, !=, gt, lt".into()),
            ("a=b=c", "found '=', expected: ',' or 'end of string'".into()),
            ("a>x", "unable to parse requirement: values[0]: Invalid value: \"x\": for 'Gt', 'Lt' operators, the value must be an integer".into()),
            ("a@b=c", format!("unable to parse requirement: <nil>: Invalid value: \"a@b\": {NAME}")),
            ("a=b@", format!("unable to parse requirement: values[0][a]: Invalid value: \"b@\": {VALUE}")),
            ("Ex/a", "unable to parse requirement: <nil>: Invalid value: \"Ex/a\": prefix part a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')".into()),
            ("x/", format!("unable to parse requirement: <nil>: Invalid value: \"x/\": name part must be non-empty; {NAME}")),
        ];
        for (sel, want) in cases {
            assert_eq!(LabelSelector::parse(sel).unwrap_err().0, want, "{sel}");
        }
        // What the real parser accepts.
        let l = labels(&[("a", ""), ("n", "5")]);
        for (sel, want) in [
            ("a in ()", true),
            ("a in (,x)", true),
            ("a=", true),
            ("a==,n", true),
            ("n>4,n<6", true),
            ("n > 5", false),
            (" a notin (x) ", true),
            ("in=x", false),
        ] {
            assert_eq!(LabelSelector::parse(sel).unwrap().matches(&l), want, "{sel}");
        }
    }

    #[test]
    fn structured_selector_matches() {
        let sel = LabelSelector::from_object(&serde_json::json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["prod"]}]
        }))
        .unwrap();
        assert!(sel.matches(&labels(&[("app", "web"), ("env", "dev")])));
        assert!(!sel.matches(&labels(&[("app", "web"), ("env", "prod")])));
    }

    #[test]
    fn field_selector_filters_on_name_and_namespace() {
        let allowed = ["metadata.name", "metadata.namespace"];
        let fs = FieldSelector::parse("metadata.name=a,metadata.namespace!=kube-system", &allowed).unwrap();
        let obj = serde_json::json!({"metadata": {"name": "a", "namespace": "default"}});
        assert!(fs.matches(&obj));
        assert_eq!(fs.pinned_name(), Some("a"));
        assert!(FieldSelector::parse("spec.x=1", &allowed).is_err());
    }
}
