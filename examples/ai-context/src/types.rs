//! The custom resources of the AI-context example (`ai.crwatch.io/v1alpha1`): `PromptTemplate`
//! (template text with `{{variable}}` placeholders and its declared variables) and
//! `ModelConfig` (model, sampling parameters, routing weights, the prompt to use), with the
//! validation their CRD schemas carry.
//!
//! The schemas check shapes and ranges (temperature 0..2, top-p 0..1, max tokens above 0,
//! weights 0..100 with at least one above 0, variable names). Whether a template renders
//! (balanced braces, only declared variables) is the inference service's check: it NACKs such
//! a template over xDS, and `crwatch serve --report-nacks` writes the rejection back as an
//! `Accepted=False` condition.

use crwatch::conditions::{Condition, conditions_schema};
use kube::CustomResource;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};

/// The API group of the example's resources.
pub const GROUP: &str = "ai.crwatch.io";
/// Their version.
pub const VERSION: &str = "v1alpha1";
/// A variable name: a letter or `_`, then letters, digits or `_`.
pub const VARIABLE_NAME_PATTERN: &str = "^[A-Za-z_][A-Za-z0-9_]*$";
/// The longest template text accepted.
pub const MAX_TEMPLATE_LEN: usize = 32 * 1024;
/// The most variables a template declares.
pub const MAX_VARIABLES: usize = 64;
/// The most routes a model configuration has.
pub const MAX_ROUTES: usize = 16;

/// A prompt template: text with `{{variable}}` placeholders, and the variables it may use.
///
/// ```
/// use ai_context::types::{PromptTemplate, PromptTemplateSpec, PromptVariable};
/// let spec: PromptTemplateSpec = serde_json::from_value(serde_json::json!({
///     "template": "You are {{persona}}. Answer: {{question}}",
///     "variables": [{"name": "persona", "default": "a helpful assistant"}, {"name": "question"}],
/// }))
/// .unwrap();
/// let pt = PromptTemplate::new("support", spec);
/// assert_eq!(pt.spec.variables[0].default.as_deref(), Some("a helpful assistant"));
/// assert!(pt.spec.compile().is_ok());
/// ```
#[derive(CustomResource, Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "ai.crwatch.io",
    version = "v1alpha1",
    kind = "PromptTemplate",
    plural = "prompttemplates",
    singular = "prompttemplate",
    shortname = "pt",
    namespaced,
    status = "AiStatus",
    doc = "A prompt template: text with {{variable}} placeholders and the variables it may use.",
    printcolumn = r#"{"name":"Variables","type":"string","jsonPath":".spec.variables[*].name"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(description = "The template wanted.")]
pub struct PromptTemplateSpec {
    /// The template text; {{name}} is replaced by the variable's value. Single braces are
    /// plain text; a {{ must be closed by }} and name a declared variable.
    #[schemars(length(min = 1, max = 32768))]
    pub template: String,
    /// The variables the template may use.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "variables_schema")]
    pub variables: Vec<PromptVariable>,
    /// What the template is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,
}

impl PromptTemplateSpec {
    /// The template, parsed and checked against the declared variables.
    pub fn compile(&self) -> Result<crate::template::Template, crate::template::TemplateError> {
        crate::template::Template::parse(&self.template, self.variables.iter().map(|v| v.name.as_str()))
    }
}

/// One variable of a template.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PromptVariable {
    /// Its name, as used in {{name}}.
    #[schemars(length(min = 1, max = 63), pattern(VARIABLE_NAME_PATTERN))]
    pub name: String,
    /// What it holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,
    /// The value used when a request gives none; without a default the variable is required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32768))]
    pub default: Option<String>,
}

fn variables_schema(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = generator.subschema_for::<Vec<PromptVariable>>();
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert("x-kubernetes-list-map-keys".into(), serde_json::json!(["name"]));
    schema.insert("maxItems".into(), MAX_VARIABLES.into());
    schema.insert("description".into(), "The variables the template may use.".into());
    schema
}

/// A model configuration: which model, its sampling parameters, the backends requests are
/// routed to, and the prompt template to use.
///
/// ```
/// use ai_context::types::ModelConfigSpec;
/// let spec: ModelConfigSpec = serde_json::from_value(serde_json::json!({
///     "model": "llama-3.1-8b-instruct",
///     "temperature": 0.2, "topP": 0.9, "maxTokens": 512,
///     "promptTemplate": "support",
///     "routes": [{"backend": "gpu-a", "weight": 90}, {"backend": "gpu-b", "weight": 10}],
/// }))
/// .unwrap();
/// assert!(spec.check().is_ok());
/// assert!(ModelConfigSpec { temperature: 2.5, ..spec }.check().is_err());
/// ```
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "ai.crwatch.io",
    version = "v1alpha1",
    kind = "ModelConfig",
    plural = "modelconfigs",
    singular = "modelconfig",
    shortname = "mc",
    namespaced,
    status = "AiStatus",
    doc = "A model configuration: model, sampling parameters, routing weights and the prompt template to use.",
    printcolumn = r#"{"name":"Model","type":"string","jsonPath":".spec.model"}"#,
    printcolumn = r#"{"name":"Temperature","type":"number","jsonPath":".spec.temperature"}"#,
    printcolumn = r#"{"name":"Prompt","type":"string","jsonPath":".spec.promptTemplate"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = Rule::new("!has(self.spec.routes) || self.spec.routes.exists(r, r.weight > 0)")
        .message("spec.routes: at least one route needs a weight above 0")
)]
#[serde(rename_all = "camelCase")]
#[schemars(description = "The model configuration wanted.")]
pub struct ModelConfigSpec {
    /// The model's name, as the backends know it.
    #[schemars(length(min = 1, max = 253))]
    pub model: String,
    /// Sampling temperature, 0 to 2.
    #[serde(default = "default_one")]
    #[schemars(range(min = 0.0, max = 2.0))]
    pub temperature: f64,
    /// Nucleus sampling: the probability mass considered, 0 to 1.
    #[serde(default = "default_one")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub top_p: f64,
    /// The most tokens a response may have (1 to 1,000,000).
    #[schemars(range(min = 1, max = 1_000_000))]
    pub max_tokens: i64,
    /// The PromptTemplate (in this namespace) requests are rendered with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub prompt_template: Option<String>,
    /// The backends serving the model and the share of requests each gets (weights are
    /// relative; at least one must be above 0). Empty: one default backend.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "routes_schema")]
    pub routes: Vec<Route>,
}

fn default_one() -> f64 {
    1.0
}

/// A setting outside its range (the CRD schema refuses these too; a source other than the
/// API server might not).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("spec.{field}: {reason}")]
pub struct SpecError {
    /// The field, as in the CRD.
    pub field: String,
    /// What is wrong and what is accepted.
    pub reason: String,
}

impl ModelConfigSpec {
    /// Check the ranges the CRD schema checks.
    pub fn check(&self) -> Result<(), SpecError> {
        let bad = |field: &str, reason: String| {
            Err(SpecError {
                field: field.to_string(),
                reason,
            })
        };
        if self.model.is_empty() {
            return bad("model", "must not be empty".into());
        }
        if !(0.0..=2.0).contains(&self.temperature) {
            return bad("temperature", format!("{} is outside 0 to 2", self.temperature));
        }
        if !(0.0..=1.0).contains(&self.top_p) {
            return bad("topP", format!("{} is outside 0 to 1", self.top_p));
        }
        if !(1..=1_000_000).contains(&self.max_tokens) {
            return bad(
                "maxTokens",
                format!("{} is outside 1 to 1000000", self.max_tokens),
            );
        }
        if self.routes.len() > MAX_ROUTES {
            return bad(
                "routes",
                format!("{} routes, at most {MAX_ROUTES}", self.routes.len()),
            );
        }
        if let Some(r) = self.routes.iter().find(|r| r.weight > 100) {
            return bad(
                "routes",
                format!("weight {} of {} is outside 0 to 100", r.weight, r.backend),
            );
        }
        if !self.routes.is_empty() && self.routes.iter().all(|r| r.weight == 0) {
            return bad("routes", "at least one route needs a weight above 0".into());
        }
        Ok(())
    }
}

/// One backend and its share of the requests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    /// The backend's name.
    #[schemars(length(min = 1, max = 253))]
    pub backend: String,
    /// Its relative weight, 0 to 100.
    #[schemars(range(min = 0, max = 100))]
    pub weight: u32,
}

fn routes_schema(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = generator.subschema_for::<Vec<Route>>();
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert(
        "x-kubernetes-list-map-keys".into(),
        serde_json::json!(["backend"]),
    );
    schema.insert("maxItems".into(), MAX_ROUTES.into());
    schema.insert(
        "description".into(),
        "The backends serving the model and the share of requests each gets (weights are relative; \
         at least one must be above 0). Empty: one default backend."
            .into(),
    );
    schema
}

/// What was observed about a resource: `Accepted` (written by `crwatch serve --report-nacks`
/// when a subscriber rejects the object) and others.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(description = "What was observed about this resource.")]
pub struct AiStatus {
    /// The metadata.generation this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub observed_generation: Option<i64>,
    /// Current conditions (Accepted, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}
