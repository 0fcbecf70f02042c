//! The contract between the forwarder and its sinks: what one delivery carries, the [`Sink`]
//! trait a sink implements (one attempt per call; the forwarder owns retries, backoff,
//! dead-lettering, ordering and acknowledgement), and subject/routing-key templates.

use std::sync::Arc;

use futures::future::BoxFuture;

/// The variables a subject or routing-key template may use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TemplateVars {
    /// API group, `core` for the legacy group.
    pub group: String,
    /// API version, e.g. `v1`.
    pub version: String,
    /// Kind, e.g. `Database`.
    pub kind: String,
    /// Plural resource name, e.g. `databases`.
    pub resource: String,
    /// Namespace, `_` for cluster-scoped objects.
    pub namespace: String,
    /// Object name.
    pub name: String,
    /// `added`, `modified` or `deleted`.
    pub event: String,
}

impl TemplateVars {
    fn get(&self, var: &str) -> Option<&str> {
        Some(match var {
            "group" => &self.group,
            "version" => &self.version,
            "kind" => &self.kind,
            "resource" => &self.resource,
            "namespace" => &self.namespace,
            "name" => &self.name,
            "event" | "type" => &self.event,
            _ => return None,
        })
    }
}

/// One change on its way to a sink.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The CloudEvent id: `<uid>:<resourceVersion>`, with `:deleted` appended for deletions.
    /// Stable across retries and restarts, so consumers can drop duplicates.
    pub id: String,
    /// The CloudEvent in structured JSON form (`specversion`, `id`, `source`, `type`, `subject`,
    /// `time`, `datacontenttype`, `data`).
    pub event: Arc<serde_json::Value>,
    /// Values for templates.
    pub vars: Arc<TemplateVars>,
}

/// Why one delivery attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Worth retrying (network, timeout, 5xx, 408, 429, broker not confirming).
    #[error("{0}")]
    Retryable(String),
    /// Retrying cannot help (4xx other than 408/429, message rejected as malformed): the change
    /// goes to the dead-letter file.
    #[error("{0}")]
    Permanent(String),
}

/// Separates an error's summary from details that may echo the destination's answer (a
/// response body): logs show only the summary ([`SinkError::summary`]); dead-letter records
/// keep both.
pub const DETAIL_MARKER: &str = "; the response began: ";

impl SinkError {
    /// The message without details that may echo a response body: what logs may show.
    pub fn summary(&self) -> &str {
        let (SinkError::Retryable(m) | SinkError::Permanent(m)) = self;
        m.split(DETAIL_MARKER).next().unwrap_or(m)
    }
}

/// A destination for changes. `deliver` makes one attempt and returns once the destination
/// acknowledged the change (HTTP 2xx, JetStream ack, publisher confirm, file written).
pub trait Sink: Send + Sync + 'static {
    /// One delivery attempt.
    fn deliver<'a>(&'a self, delivery: &'a Delivery) -> BoxFuture<'a, Result<(), SinkError>>;
}

/// A subject or routing-key template such as `crwatch.{group}.{kind}.{namespace}.{name}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Var(String),
}

/// The variables templates know.
pub const TEMPLATE_VARS: &[&str] = &[
    "group",
    "version",
    "kind",
    "resource",
    "namespace",
    "name",
    "event",
];

impl Template {
    /// Parse a template; unknown variables and unbalanced braces are errors.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_string()));
            }
            let after = &rest[open + 1..];
            let close = after
                .find('}')
                .ok_or_else(|| format!("unclosed '{{' in template {text:?}"))?;
            let var = &after[..close];
            if !TEMPLATE_VARS.contains(&var) && var != "type" {
                return Err(format!(
                    "unknown variable {{{var}}} in template {text:?}; known: {}",
                    TEMPLATE_VARS
                        .iter()
                        .map(|v| format!("{{{v}}}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            parts.push(Part::Var(var.to_string()));
            rest = &after[close + 1..];
        }
        if rest.contains('}') {
            return Err(format!("unbalanced '}}' in template {text:?}"));
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_string()));
        }
        Ok(Self { parts })
    }

    /// Render with `vars`; each variable's value passes through `token` first (NATS subjects and
    /// AMQP routing keys use `.` as a separator, so their sinks map `.` inside values to `_`).
    pub fn render(&self, vars: &TemplateVars, token: impl Fn(&str) -> String) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Var(v) => out.push_str(&token(vars.get(v).unwrap_or_default())),
            }
        }
        out
    }
}

/// Make a value safe as one token of a dot-separated subject or routing key: `.`, whitespace,
/// `*` and `>` become `_`, and an empty value becomes `_`.
pub fn dot_token(value: &str) -> String {
    if value.is_empty() {
        return "_".to_string();
    }
    value
        .chars()
        .map(|c| {
            if c == '.' || c == '*' || c == '>' || c.is_whitespace() {
                '_'
            } else {
                c
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_render_and_reject_unknown_variables() {
        let t = Template::parse("crwatch.{group}.{kind}.{namespace}.{name}").unwrap();
        let vars = TemplateVars {
            group: "stable.example.com".into(),
            kind: "Database".into(),
            namespace: "default".into(),
            name: "a.b".into(),
            ..Default::default()
        };
        assert_eq!(
            t.render(&vars, dot_token),
            "crwatch.stable_example_com.Database.default.a_b"
        );
        assert!(
            Template::parse("x.{nope}")
                .unwrap_err()
                .contains("unknown variable {nope}")
        );
        assert!(Template::parse("x.{kind").is_err());
        assert!(Template::parse("x.kind}").is_err());
        assert_eq!(
            Template::parse("{type}").unwrap().render(
                &TemplateVars {
                    event: "added".into(),
                    ..Default::default()
                },
                |s| s.to_string()
            ),
            "added"
        );
    }
}
