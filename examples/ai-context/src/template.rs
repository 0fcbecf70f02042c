//! Prompt templates: text with `{{variable}}` placeholders, checked against the variables a
//! `PromptTemplate` declares, and rendered with the values of one request.
//!
//! The grammar is deliberately small (a prompt is text, not a program):
//!
//! - `{{ name }}` is a placeholder; spaces inside the braces are ignored; `name` is a letter or
//!   `_` followed by letters, digits or `_`;
//! - single braces are plain text (`{"json": true}` is fine);
//! - a `{{` without its `}}`, a `}}` without its `{{`, a `{{` inside a placeholder, an empty
//!   placeholder and a name that is not an identifier are errors, with the line and column;
//! - a placeholder whose name is not declared is an error (the service NACKs such a template
//!   rather than fail requests later).

use std::collections::BTreeSet;
use std::fmt;

/// Why a template cannot be used. The message names the position and what to change; it
/// quotes at most a variable name, never the surrounding template text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// A `{{` that is never closed.
    #[error("unbalanced braces: the {{{{ at {at} is never closed with }}}}")]
    Unclosed {
        /// Where the `{{` is.
        at: Position,
    },
    /// A `}}` that closes nothing.
    #[error("unbalanced braces: the }}}} at {at} closes no {{{{")]
    Unopened {
        /// Where the `}}` is.
        at: Position,
    },
    /// A `{{` inside a placeholder.
    #[error("unbalanced braces: a {{{{ at {at} opens inside the placeholder opened at {opened}")]
    Nested {
        /// Where the inner `{{` is.
        at: Position,
        /// Where the placeholder it is in was opened.
        opened: Position,
    },
    /// `{{ }}`.
    #[error("empty placeholder at {at}: write {{{{name}}}} with a declared variable")]
    Empty {
        /// Where the placeholder starts.
        at: Position,
    },
    /// A placeholder whose content is not an identifier.
    #[error(
        "placeholder at {at} is not a variable name: use letters, digits and _, starting with a letter or _"
    )]
    BadName {
        /// Where the placeholder starts.
        at: Position,
    },
    /// A placeholder of a variable the template does not declare.
    #[error("undeclared variable {name:?} at {at}: declare it in spec.variables (declared: {declared})")]
    Undeclared {
        /// The variable.
        name: String,
        /// Where the placeholder starts.
        at: Position,
        /// The declared names, comma-separated (or `none`).
        declared: String,
    },
}

/// A line and column (both from 1, columns in characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// The line, from 1.
    pub line: usize,
    /// The column in characters, from 1.
    pub column: usize,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {} column {}", self.line, self.column)
    }
}

/// One piece of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Var(String),
}

/// A template that parsed and uses only declared variables.
///
/// ```
/// use ai_context::template::Template;
/// let t = Template::parse("Answer as {{ persona }}: {{question}}", ["persona", "question"]).unwrap();
/// assert_eq!(t.variables().collect::<Vec<_>>(), ["persona", "question"]);
/// let out = t.render(|name| Some(if name == "persona" { "a pirate" } else { "why?" }.to_string())).unwrap();
/// assert_eq!(out, "Answer as a pirate: why?");
///
/// // Undeclared variables and unbalanced braces are refused with the position.
/// let err = Template::parse("Hi {{name}}", ["user"]).unwrap_err();
/// assert!(err.to_string().starts_with("undeclared variable \"name\" at line 1 column 4"));
/// let err = Template::parse("Hi {{name", ["name"]).unwrap_err();
/// assert!(err.to_string().starts_with("unbalanced braces"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

/// Where byte offset `at` of `text` is.
fn position(text: &str, at: usize) -> Position {
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    Position {
        line,
        column: text[line_start..at].chars().count() + 1,
    }
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl Template {
    /// Parse `text`, allowing only the `declared` variables.
    pub fn parse<I, S>(text: &str, declared: I) -> Result<Template, TemplateError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let declared: BTreeSet<String> = declared.into_iter().map(|s| s.as_ref().to_string()).collect();
        let mut parts = Vec::new();
        let mut rest = 0;
        loop {
            let open = text[rest..].find("{{").map(|i| rest + i);
            let close = text[rest..].find("}}").map(|i| rest + i);
            match (open, close) {
                (None, None) => break,
                (Some(o), None) => {
                    return Err(TemplateError::Unclosed {
                        at: position(text, o),
                    });
                }
                (Some(o), Some(c)) if o < c => {
                    if let Some(inner) = text[o + 2..c].find("{{") {
                        return Err(TemplateError::Nested {
                            at: position(text, o + 2 + inner),
                            opened: position(text, o),
                        });
                    }
                    if o > rest {
                        parts.push(Part::Text(text[rest..o].to_string()));
                    }
                    let name = text[o + 2..c].trim();
                    let at = position(text, o);
                    if name.is_empty() {
                        return Err(TemplateError::Empty { at });
                    }
                    if !is_identifier(name) {
                        return Err(TemplateError::BadName { at });
                    }
                    if !declared.contains(name) {
                        let list: Vec<&str> = declared.iter().map(String::as_str).collect();
                        return Err(TemplateError::Undeclared {
                            name: name.to_string(),
                            at,
                            declared: if list.is_empty() {
                                "none".to_string()
                            } else {
                                list.join(", ")
                            },
                        });
                    }
                    parts.push(Part::Var(name.to_string()));
                    rest = c + 2;
                }
                // A `}}` before any `{{`.
                (_, Some(c)) => {
                    return Err(TemplateError::Unopened {
                        at: position(text, c),
                    });
                }
            }
        }
        if rest < text.len() {
            parts.push(Part::Text(text[rest..].to_string()));
        }
        Ok(Template { parts })
    }

    /// The variables the template uses, each once, in order of first use.
    pub fn variables(&self) -> impl Iterator<Item = &str> {
        let mut seen = BTreeSet::new();
        self.parts.iter().filter_map(move |p| match p {
            Part::Var(v) if seen.insert(v.as_str()) => Some(v.as_str()),
            _ => None,
        })
    }

    /// The text with every placeholder replaced by `value(name)`; the first variable without a
    /// value is the error.
    pub fn render(&self, mut value: impl FnMut(&str) -> Option<String>) -> Result<String, MissingValue> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Var(v) => match value(v) {
                    Some(s) => out.push_str(&s),
                    None => return Err(MissingValue(v.clone())),
                },
            }
        }
        Ok(out)
    }
}

/// A variable the request gave no value for, and that has no default.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("variable {0:?} needs a value: pass it in \"variables\" (it has no default)")]
pub struct MissingValue(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(t: &str) -> Result<Template, TemplateError> {
        Template::parse(t, ["a", "b"])
    }

    #[test]
    fn plain_text_and_single_braces_are_text() {
        let t = parse("no vars {\"json\": {\"x\": 1} }").unwrap();
        assert_eq!(t.render(|_| None).unwrap(), "no vars {\"json\": {\"x\": 1} }");
        assert_eq!(parse("").unwrap().render(|_| None).unwrap(), "");
    }

    #[test]
    fn placeholders_render_repeatedly() {
        let t = parse("{{a}}-{{ b }}-{{a}}").unwrap();
        assert_eq!(t.variables().collect::<Vec<_>>(), ["a", "b"]);
        let out = t.render(|n| Some(n.to_uppercase())).unwrap();
        assert_eq!(out, "A-B-A");
        assert_eq!(
            t.render(|n| (n == "a").then(String::new)),
            Err(MissingValue("b".into()))
        );
    }

    #[test]
    fn errors_carry_positions() {
        assert_eq!(
            parse("x\n  {{a"),
            Err(TemplateError::Unclosed {
                at: Position { line: 2, column: 3 }
            })
        );
        assert_eq!(
            parse("a}} {{a}}"),
            Err(TemplateError::Unopened {
                at: Position { line: 1, column: 2 }
            })
        );
        assert_eq!(
            parse("{{a {{b}}"),
            Err(TemplateError::Nested {
                at: Position { line: 1, column: 5 },
                opened: Position { line: 1, column: 1 }
            })
        );
        assert!(matches!(parse("{{ }}"), Err(TemplateError::Empty { .. })));
        assert!(matches!(parse("{{a b}}"), Err(TemplateError::BadName { .. })));
        assert!(matches!(parse("{{1a}}"), Err(TemplateError::BadName { .. })));
        let err = Template::parse("{{x}}", Vec::<String>::new()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "undeclared variable \"x\" at line 1 column 1: declare it in spec.variables (declared: none)"
        );
        // A stray closing pair after a good placeholder.
        assert!(matches!(parse("{{a}} }}"), Err(TemplateError::Unopened { .. })));
    }

    #[test]
    fn columns_count_characters() {
        assert_eq!(
            parse("é{{"),
            Err(TemplateError::Unclosed {
                at: Position { line: 1, column: 2 }
            })
        );
    }
}
