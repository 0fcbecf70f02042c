//! Text rendering of diffs: one short line per change. Values that would make a long line are
//! shortened for reading (a window around the first difference of two long strings, the
//! changed line of multi-line strings, a cut with the full size for anything else); the
//! structured [`FieldChange`] keeps the full values for machines.

use std::fmt;

use serde_json::Value;

use super::{Diff, FieldChange, Op};

/// Two values whose compact JSON together stays within this many characters are shown whole.
const BOTH_WHOLE: usize = 120;
/// A lone value (added, removed) is shown whole up to this many characters.
const ONE_WHOLE: usize = 120;
/// Characters of a value kept when it is cut.
const CUT: usize = 60;
/// Characters of unchanged text shown on each side of a difference inside a long string.
const CONTEXT: usize = 16;
/// Characters of the differing part of a long string shown before it is cut.
const MIDDLE: usize = 32;

impl FieldChange {
    /// The old and new values as the text rendering shows them: compact JSON, shortened when
    /// long (see the [module docs](crate::diff)). Useful for renderings of their own (colours,
    /// tables) that should stay as short as `Display`.
    ///
    /// ```
    /// use crwatch::diff::Diff;
    /// use serde_json::json;
    ///
    /// let big = "x".repeat(3_000_000);
    /// let mut changed = big.clone();
    /// changed.replace_range(1_500_000..1_500_001, "Y");
    /// let d = Diff::between(&json!({"data": {"blob": big}}), &json!({"data": {"blob": changed}}));
    /// let (old, new) = d.changes[0].short_values();
    /// assert_eq!(old.as_deref(), Some("\"…xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx…\" (3.0 MB)"));
    /// assert_eq!(new.as_deref(), Some("\"…xxxxxxxxxxxxxxxxYxxxxxxxxxxxxxxxx…\" (3.0 MB)"));
    /// assert!(d.to_string().len() < 200);
    /// ```
    pub fn short_values(&self) -> (Option<String>, Option<String>) {
        match (self.op, &self.old, &self.new) {
            (Op::Changed, Some(a), Some(b)) => {
                let (a, b) = short_pair(a, b);
                (Some(a), Some(b))
            }
            (_, old, new) => (
                old.as_ref().map(|v| short_one(v, ONE_WHOLE)),
                new.as_ref().map(|v| short_one(v, ONE_WHOLE)),
            ),
        }
    }
}

/// Both sides of a change, each short.
fn short_pair(a: &Value, b: &Value) -> (String, String) {
    let (ja, jb) = (a.to_string(), b.to_string());
    if ja.chars().count() + jb.chars().count() <= BOTH_WHOLE {
        return (ja, jb);
    }
    match (a, b) {
        (Value::String(sa), Value::String(sb)) if sa.contains('\n') || sb.contains('\n') => {
            changed_lines(sa, sb)
        }
        (Value::String(sa), Value::String(sb)) => {
            let (wa, wb) = window(sa, sb);
            (with_size(&wa, sa.len()), with_size(&wb, sb.len()))
        }
        _ => (short_one(a, CUT), short_one(b, CUT)),
    }
}

/// One value, cut after `max` characters of its compact JSON.
fn short_one(v: &Value, max: usize) -> String {
    let json = v.to_string();
    if json.chars().count() <= max {
        return json;
    }
    let cut: String = json.chars().take(CUT.min(max)).collect();
    format!("{cut}… ({})", size(json.len()))
}

/// The differing parts of two single-line strings with a little context, each as a JSON
/// string with `…` where text was left out.
fn window(a: &str, b: &str) -> (String, String) {
    let prefix = common_prefix(a, b);
    // The suffix must not overlap the prefix in either string.
    let suffix = common_suffix(&a[prefix..], &b[prefix..]);
    let show = |s: &str| {
        let before = &s[..prefix];
        let middle = &s[prefix..s.len() - suffix];
        let after = &s[s.len() - suffix..];
        let before_shown = last_chars(before, CONTEXT);
        let middle_shown = first_chars(middle, MIDDLE);
        // Context after the change only when the whole change fits, or it would not be
        // adjacent to what it follows.
        let after_shown = if middle_shown.len() == middle.len() {
            first_chars(after, CONTEXT)
        } else {
            ""
        };
        let mut inner = String::new();
        if before_shown.len() < before.len() {
            inner.push('…');
        }
        inner.push_str(&escape(before_shown));
        inner.push_str(&escape(middle_shown));
        inner.push_str(&escape(after_shown));
        if prefix + middle_shown.len() + after_shown.len() < s.len() {
            inner.push('…');
        }
        format!("\"{inner}\"")
    };
    (show(a), show(b))
}

/// For multi-line strings: the first changed line of each side (shortened), prefixed with its
/// line number, and how many more lines changed.
fn changed_lines<'s>(a: &'s str, b: &'s str) -> (String, String) {
    let la: Vec<&'s str> = a.split('\n').collect();
    let lb: Vec<&'s str> = b.split('\n').collect();
    let head = la.iter().zip(&lb).take_while(|(x, y)| x == y).count();
    let tail = la[head..]
        .iter()
        .rev()
        .zip(lb[head..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let (changed_a, changed_b) = (la.len() - head - tail, lb.len() - head - tail);
    let line = |lines: &[&str], changed: usize, total: usize, other: &str| -> String {
        let mut out = match lines.get(head).filter(|_| changed > 0) {
            Some(l) => {
                let (w, _) = window(l, other);
                format!("line {}: {w}", head + 1)
            }
            None => format!("no line {}", head + 1),
        };
        if changed > 1 {
            out.push_str(&format!(" (+{} more changed)", changed - 1));
        }
        out.push_str(&format!(" ({total} lines)"));
        out
    };
    let first = |lines: &[&'s str], changed: usize| -> &'s str {
        if changed > 0 {
            lines.get(head).copied().unwrap_or("")
        } else {
            ""
        }
    };
    let (fa, fb) = (first(&la, changed_a), first(&lb, changed_b));
    (
        line(&la, changed_a, la.len(), fb),
        line(&lb, changed_b, lb.len(), fa),
    )
}

fn with_size(shown: &str, bytes: usize) -> String {
    format!("{shown} ({})", size(bytes))
}

/// A byte count the way people read it: `312 B`, `4.2 kB`, `2.9 MB`.
fn size(bytes: usize) -> String {
    // Display only: the precision lost by the float conversion is far below what is printed.
    let b = bytes as f64;
    if bytes < 1000 {
        format!("{bytes} B")
    } else if bytes < 1_000_000 {
        format!("{:.1} kB", b / 1e3)
    } else if bytes < 1_000_000_000 {
        format!("{:.1} MB", b / 1e6)
    } else {
        format!("{:.1} GB", b / 1e9)
    }
}

/// JSON string escaping without the quotes.
fn escape(s: &str) -> String {
    let q = Value::String(s.to_owned()).to_string();
    q[1..q.len() - 1].to_owned()
}

/// Byte length of the longest common prefix, on a character boundary.
fn common_prefix(a: &str, b: &str) -> usize {
    let mut n = a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count();
    while !a.is_char_boundary(n) || !b.is_char_boundary(n) {
        n -= 1;
    }
    n
}

/// Byte length of the longest common suffix, on a character boundary.
fn common_suffix(a: &str, b: &str) -> usize {
    let mut n = a
        .bytes()
        .rev()
        .zip(b.bytes().rev())
        .take_while(|(x, y)| x == y)
        .count();
    while !a.is_char_boundary(a.len() - n) || !b.is_char_boundary(b.len() - n) {
        n -= 1;
    }
    n
}

fn first_chars(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

fn last_chars(s: &str, n: usize) -> &str {
    if n == 0 {
        return "";
    }
    match s.char_indices().rev().nth(n - 1) {
        Some((i, _)) => &s[i..],
        None => s,
    }
}

impl fmt::Display for FieldChange {
    /// `path: old → new`, `+ path: new` or `- path: old`, values as compact JSON, long ones
    /// shortened as [`FieldChange::short_values`] describes. With a precision (`{:.40}`) each
    /// value is instead cut to that many characters and ends in `…`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (old, new) = match f.precision() {
            Some(max) => {
                let cut = |v: &Option<Value>| {
                    let s = v.as_ref().map_or_else(|| "null".to_owned(), Value::to_string);
                    if s.chars().count() > max {
                        let mut cut: String = s.chars().take(max).collect();
                        cut.push('…');
                        cut
                    } else {
                        s
                    }
                };
                (cut(&self.old), cut(&self.new))
            }
            None => {
                let (old, new) = self.short_values();
                let null = || "null".to_owned();
                (old.unwrap_or_else(null), new.unwrap_or_else(null))
            }
        };
        match self.op {
            Op::Changed => write!(f, "{}: {old} → {new}", self.path),
            Op::Added => write!(f, "+ {}: {new}", self.path),
            Op::Removed => write!(f, "- {}: {old}", self.path),
        }
    }
}

impl fmt::Display for Diff {
    /// One line per change (see [`FieldChange`]'s `Display`), no trailing newline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, c) in self.changes.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            fmt::Display::fmt(c, f)?;
        }
        Ok(())
    }
}
