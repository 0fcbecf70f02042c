//! The inference service: subscribes to `PromptTemplate`s and `ModelConfig`s through
//! `crwatch serve` (delta xDS, [`crwatch::source::xds::XdsSource`]), keeps the active prompt
//! and parameters in memory, swaps them the moment a new version arrives (no restart, no
//! dropped request), NACKs a template that does not render, and shows all of it over HTTP:
//!
//! - `GET /config`: the active model configuration and prompt template (with their versions),
//!   how many swaps happened, and the xDS ACK/NACK counts;
//! - `POST /render` `{"variables": {"question": "..."}}`: the prompt rendered with the active
//!   template, the sampling parameters, and a backend picked by the routing weights (no model
//!   is called: this is where one would be);
//! - `GET /healthz`: 200 once both subscriptions synced and a complete configuration is active.
//!
//! A rejected template never becomes active: the xDS client keeps the previous version of
//! that resource (or none), so the service goes on rendering with the last good one.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use crwatch::informer::{Handler, Informer};
use crwatch::source::xds::{XdsSource, XdsSourceError, XdsStats};
use crwatch::store::{ObjectKey, Store};
use kube::api::DynamicObject;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::types::{ModelConfigSpec, PromptTemplateSpec, Route};

/// The xDS type URL of `PromptTemplate`s.
pub const PROMPT_TEMPLATE_TYPE: &str = "ai.crwatch.io/v1alpha1/PromptTemplate";
/// The xDS type URL of `ModelConfig`s.
pub const MODEL_CONFIG_TYPE: &str = "ai.crwatch.io/v1alpha1/ModelConfig";
/// The largest `POST /render` body accepted.
pub const MAX_RENDER_BODY: usize = 1024 * 1024;
/// The backend named when a model configuration has no routes.
pub const DEFAULT_BACKEND: &str = "default";

/// How the service reaches `crwatch serve` and which configuration it follows.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// The xDS server, `http://host:port` (or `https://`).
    pub xds: String,
    /// The namespace of the ModelConfig (and of the PromptTemplate it names).
    pub namespace: String,
    /// The ModelConfig to follow.
    pub model_config: String,
    /// A PromptTemplate to use instead of the one the ModelConfig names.
    pub prompt_template: Option<String>,
    /// The xDS node id (default: `inference-service-<random>`).
    pub node_id: Option<String>,
    /// A CA file for an `https://` xDS server.
    pub ca_file: Option<PathBuf>,
    /// A bearer token file for the xDS server.
    pub token_file: Option<PathBuf>,
    /// How long to wait for the xDS server's first response (default 15 s).
    pub initial_fetch_timeout: Option<Duration>,
}

/// Why a `PromptTemplate` cannot be used, as the NACK's message says it.
///
/// ```
/// use ai_context::service::check_prompt_template;
/// let pt: kube::api::DynamicObject = serde_json::from_value(serde_json::json!({
///     "apiVersion": "ai.crwatch.io/v1alpha1", "kind": "PromptTemplate",
///     "metadata": {"name": "t", "namespace": "prod"},
///     "spec": {"template": "Hello {{user}", "variables": [{"name": "user"}]}
/// })).unwrap();
/// let err = check_prompt_template(&pt).unwrap_err();
/// assert!(err.starts_with("spec.template: unbalanced braces"), "{err}");
/// ```
pub fn check_prompt_template(object: &DynamicObject) -> Result<(), String> {
    let spec = spec_of::<PromptTemplateSpec>(object)?;
    spec.compile().map_err(|e| format!("spec.template: {e}"))?;
    Ok(())
}

/// Why a `ModelConfig` cannot be used (its ranges, as the CRD checks them).
pub fn check_model_config(object: &DynamicObject) -> Result<(), String> {
    spec_of::<ModelConfigSpec>(object)?
        .check()
        .map_err(|e| e.to_string())
}

fn spec_of<T: serde::de::DeserializeOwned>(object: &DynamicObject) -> Result<T, String> {
    let spec = object.data.get("spec").cloned().unwrap_or(Value::Null);
    serde_json::from_value(spec)
        .map_err(|e| format!("spec: {}", crwatch::source::redact_decode_message(&e.to_string())))
}

/// The active model configuration.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ActiveModel {
    /// `namespace/name`.
    pub name: String,
    /// Its resourceVersion.
    pub resource_version: String,
    /// Its spec.
    pub spec: ModelConfigSpec,
}

/// The active prompt template.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ActivePrompt {
    /// `namespace/name`.
    pub name: String,
    /// Its resourceVersion.
    pub resource_version: String,
    /// Its spec.
    pub spec: PromptTemplateSpec,
}

/// What the service runs with right now.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Active {
    /// The model configuration, once it arrived.
    pub model_config: Option<ActiveModel>,
    /// The prompt template, once it arrived (and was accepted).
    pub prompt_template: Option<ActivePrompt>,
    /// How often the active configuration changed since the start.
    pub swaps: u64,
    /// What is missing, when something is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

impl Active {
    fn same_versions(&self, other: &Active) -> bool {
        let v = |a: &Active| {
            (
                a.model_config.as_ref().map(|m| m.resource_version.clone()),
                a.model_config.as_ref().map(|m| m.name.clone()),
                a.prompt_template.as_ref().map(|p| p.resource_version.clone()),
                a.prompt_template.as_ref().map(|p| p.name.clone()),
                a.problem.clone(),
            )
        };
        v(self) == v(other)
    }
}

/// What computes the active configuration from the two stores.
struct Selector {
    namespace: String,
    model_config: String,
    prompt_template: Option<String>,
    prompts: Store<DynamicObject>,
    models: Store<DynamicObject>,
    active: watch::Sender<Arc<Active>>,
}

impl Selector {
    fn compute(&self) -> Active {
        let ns = self.namespace.as_str();
        let mut next = Active::default();
        let key = ObjectKey::new(Some(ns), &self.model_config);
        let model = self.models.get(&key).and_then(|o| {
            spec_of::<ModelConfigSpec>(&o).ok().map(|spec| ActiveModel {
                name: format!("{ns}/{}", self.model_config),
                resource_version: o.metadata.resource_version.clone().unwrap_or_default(),
                spec,
            })
        });
        let prompt_name = self
            .prompt_template
            .clone()
            .or_else(|| model.as_ref().and_then(|m| m.spec.prompt_template.clone()));
        match &prompt_name {
            Some(name) => {
                let key = ObjectKey::new(Some(ns), name);
                next.prompt_template = self.prompts.get(&key).and_then(|o| {
                    spec_of::<PromptTemplateSpec>(&o).ok().map(|spec| ActivePrompt {
                        name: format!("{ns}/{name}"),
                        resource_version: o.metadata.resource_version.clone().unwrap_or_default(),
                        spec,
                    })
                });
                if next.prompt_template.is_none() {
                    next.problem = Some(format!("no accepted PromptTemplate {ns}/{name} yet"));
                }
            }
            None => {
                next.problem = Some(format!(
                    "ModelConfig {ns}/{} names no promptTemplate (and --prompt-template is not set)",
                    self.model_config
                ));
            }
        }
        if model.is_none() {
            next.problem = Some(format!("no ModelConfig {ns}/{} yet", self.model_config));
        }
        next.model_config = model;
        next
    }

    fn recompute(&self) {
        let mut next = self.compute();
        self.active.send_if_modified(|current| {
            if current.same_versions(&next) {
                return false;
            }
            // A new version with the same content (a status write) is no swap.
            let swapped = current.model_config.as_ref().map(|m| (&m.name, &m.spec))
                != next.model_config.as_ref().map(|m| (&m.name, &m.spec))
                || current.prompt_template.as_ref().map(|p| (&p.name, &p.spec))
                    != next.prompt_template.as_ref().map(|p| (&p.name, &p.spec));
            next.swaps = current.swaps + u64::from(swapped);
            if swapped && let (Some(p), Some(m)) = (&next.prompt_template, &next.model_config) {
                tracing::info!(
                    prompt = %p.name, prompt_version = %p.resource_version,
                    model_config = %m.name, model_version = %m.resource_version,
                    model = %m.spec.model, "configuration swapped"
                );
            }
            *current = Arc::new(std::mem::take(&mut next));
            true
        });
    }
}

struct Recompute(Arc<Selector>);

impl Handler<DynamicObject> for Recompute {
    fn on_add(&self, _: &Arc<DynamicObject>) {
        self.0.recompute();
    }
    fn on_update(&self, _: &Arc<DynamicObject>, _: &Arc<DynamicObject>, _: &crwatch::diff::Diff) {
        self.0.recompute();
    }
    fn on_delete(&self, _: &Arc<DynamicObject>) {
        self.0.recompute();
    }
}

/// The running service: two xDS subscriptions and the active configuration.
pub struct Service {
    prompts: Informer<DynamicObject>,
    models: Informer<DynamicObject>,
    selector: Arc<Selector>,
    prompt_stats: Arc<XdsStats>,
    model_stats: Arc<XdsStats>,
}

impl Service {
    /// Build the subscriptions (nothing connects before [`Service::start`]).
    pub fn new(config: &ServiceConfig) -> Result<Service, XdsSourceError> {
        let node = config
            .node_id
            .clone()
            .unwrap_or_else(|| format!("inference-service-{}", rand::random::<u32>()));
        let source = |type_url: &str| {
            let mut s = XdsSource::new(config.xds.clone(), type_url).node_id(node.clone());
            if let Some(ca) = &config.ca_file {
                s = s.ca_file(ca);
            }
            if let Some(t) = &config.token_file {
                s = s.bearer_token_file(t);
            }
            if let Some(t) = config.initial_fetch_timeout {
                s = s.initial_fetch_timeout(t);
            }
            s
        };
        let prompts = source(PROMPT_TEMPLATE_TYPE).validator(check_prompt_template);
        let models = source(MODEL_CONFIG_TYPE).validator(check_model_config);
        prompts.validate()?;
        models.validate()?;
        let (prompt_stats, model_stats) = (prompts.stats(), models.stats());
        let prompts = Informer::new(prompts);
        let models = Informer::new(models);
        let (active, _) = watch::channel(Arc::new(Active {
            problem: Some("waiting for the first state of both xDS subscriptions".into()),
            ..Active::default()
        }));
        let selector = Arc::new(Selector {
            namespace: config.namespace.clone(),
            model_config: config.model_config.clone(),
            prompt_template: config.prompt_template.clone(),
            prompts: prompts.store(),
            models: models.store(),
            active,
        });
        prompts.add_handler(Recompute(selector.clone()));
        models.add_handler(Recompute(selector.clone()));
        Ok(Service {
            prompts,
            models,
            selector,
            prompt_stats,
            model_stats,
        })
    }

    /// Start both subscriptions; they stop when `cancel` is cancelled. Once both synced, the
    /// active configuration is computed (also when they are empty, so `problem` says what is
    /// missing).
    pub fn start(&self, cancel: CancellationToken) {
        self.prompts.start(cancel.clone());
        self.models.start(cancel.clone());
        let (prompts, models, selector) = (self.prompts.clone(), self.models.clone(), self.selector.clone());
        tokio::spawn(async move {
            let synced = async {
                while prompts.wait_synced(Duration::from_secs(60)).await.is_err() {}
                while models.wait_synced(Duration::from_secs(60)).await.is_err() {}
                selector.recompute();
            };
            tokio::select! {
                _ = synced => {}
                _ = cancel.cancelled() => {}
            }
        });
    }

    /// Wait until both subscriptions have their first state.
    pub async fn wait_synced(&self, timeout: Duration) -> anyhow::Result<()> {
        self.prompts.wait_synced(timeout).await?;
        self.models.wait_synced(timeout).await?;
        self.selector.recompute();
        Ok(())
    }

    /// What the service runs with right now.
    pub fn active(&self) -> Arc<Active> {
        self.selector.active.borrow().clone()
    }

    /// Changes of the active configuration.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Active>> {
        self.selector.active.subscribe()
    }

    fn synced(&self) -> bool {
        self.prompts.has_synced() && self.models.has_synced()
    }

    fn stats_json(&self) -> Value {
        let s = |st: &XdsStats| {
            json!({
                "connects": XdsStats::get(&st.connects),
                "responses": XdsStats::get(&st.responses),
                "acks": XdsStats::get(&st.acks),
                "nacks": XdsStats::get(&st.nacks),
                "rejected": XdsStats::get(&st.rejected),
            })
        };
        json!({"promptTemplates": s(&self.prompt_stats), "modelConfigs": s(&self.model_stats)})
    }

    /// The HTTP API (`GET /config`, `POST /render`, `GET /healthz`).
    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/config", get(config))
            .route("/render", post(render))
            .route("/healthz", get(healthz))
            .layer(DefaultBodyLimit::max(MAX_RENDER_BODY))
            .with_state(self)
    }
}

async fn config(State(service): State<Arc<Service>>) -> Json<Value> {
    let active = service.active();
    let mut body = serde_json::to_value(&*active).unwrap_or(Value::Null);
    body["synced"] = Value::Bool(service.synced());
    body["xds"] = service.stats_json();
    Json(body)
}

async fn healthz(State(service): State<Arc<Service>>) -> Response {
    let active = service.active();
    if !service.synced() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "xDS subscriptions not synced yet\n",
        )
            .into_response();
    }
    match &active.problem {
        Some(p) => (StatusCode::SERVICE_UNAVAILABLE, format!("{p}\n")).into_response(),
        None => (StatusCode::OK, "ok\n").into_response(),
    }
}

/// A `POST /render` body.
#[derive(Debug, Deserialize)]
pub struct RenderRequest {
    /// The values of the template's variables (defaults fill in the rest).
    #[serde(default)]
    pub variables: BTreeMap<String, String>,
}

/// A `POST /render` answer.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Rendered {
    /// The prompt.
    pub prompt: String,
    /// The model.
    pub model: String,
    /// Sampling temperature.
    pub temperature: f64,
    /// Top-p.
    pub top_p: f64,
    /// Token limit.
    pub max_tokens: i64,
    /// The backend picked by the routing weights.
    pub backend: String,
    /// The template used, `namespace/name@resourceVersion`.
    pub prompt_template: String,
    /// The model configuration used, `namespace/name@resourceVersion`.
    pub model_config: String,
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// A backend, drawn by weight (`DEFAULT_BACKEND` without routes).
pub fn pick_backend(routes: &[Route], draw: f64) -> String {
    let total: u64 = routes.iter().map(|r| u64::from(r.weight)).sum();
    if total == 0 {
        return routes
            .first()
            .map_or(DEFAULT_BACKEND.to_string(), |r| r.backend.clone());
    }
    let mut point = draw.clamp(0.0, 0.999_999) * total as f64;
    for r in routes {
        let w = f64::from(r.weight);
        if point < w {
            return r.backend.clone();
        }
        point -= w;
    }
    // Rounding at the top end: the last route with a weight.
    routes
        .iter()
        .rev()
        .find(|r| r.weight > 0)
        .map_or(DEFAULT_BACKEND.to_string(), |r| r.backend.clone())
}

async fn render(
    State(service): State<Arc<Service>>,
    body: Result<Json<RenderRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(request) = match body {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    // One snapshot for the whole request: a swap meanwhile does not mix versions.
    let active = service.active();
    let (Some(model), Some(prompt)) = (&active.model_config, &active.prompt_template) else {
        let why = active
            .problem
            .clone()
            .unwrap_or_else(|| "no configuration yet".into());
        return error(StatusCode::SERVICE_UNAVAILABLE, why);
    };
    let template = match prompt.spec.compile() {
        Ok(t) => t,
        // Accepted templates compile; this guards a server that skipped the NACK check.
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let defaults: BTreeMap<&str, &str> = prompt
        .spec
        .variables
        .iter()
        .filter_map(|v| v.default.as_deref().map(|d| (v.name.as_str(), d)))
        .collect();
    if let Some(unknown) = request
        .variables
        .keys()
        .find(|k| !prompt.spec.variables.iter().any(|v| &v.name == *k))
    {
        return error(
            StatusCode::BAD_REQUEST,
            format!("variable {unknown:?} is not declared by {}", prompt.name),
        );
    }
    let rendered = template.render(|name| {
        request
            .variables
            .get(name)
            .cloned()
            .or_else(|| defaults.get(name).map(|d| d.to_string()))
    });
    match rendered {
        Ok(text) => Json(Rendered {
            prompt: text,
            model: model.spec.model.clone(),
            temperature: model.spec.temperature,
            top_p: model.spec.top_p,
            max_tokens: model.spec.max_tokens,
            backend: pick_backend(&model.spec.routes, rand::random::<f64>()),
            prompt_template: format!("{}@{}", prompt.name, prompt.resource_version),
            model_config: format!("{}@{}", model.name, model.resource_version),
        })
        .into_response(),
        Err(e) => error(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(b: &str, w: u32) -> Route {
        Route {
            backend: b.into(),
            weight: w,
        }
    }

    #[test]
    fn backends_follow_weights() {
        let routes = [route("a", 90), route("b", 10), route("c", 0)];
        assert_eq!(pick_backend(&routes, 0.0), "a");
        assert_eq!(pick_backend(&routes, 0.89), "a");
        assert_eq!(pick_backend(&routes, 0.91), "b");
        assert_eq!(pick_backend(&routes, 1.0), "b");
        assert_eq!(pick_backend(&[], 0.5), DEFAULT_BACKEND);
        let counts = (0..1000)
            .map(|i| pick_backend(&routes, f64::from(i) / 1000.0))
            .filter(|b| b == "a")
            .count();
        assert_eq!(counts, 900);
    }

    #[test]
    fn model_configs_are_checked() {
        let mc: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "ai.crwatch.io/v1alpha1", "kind": "ModelConfig",
            "metadata": {"name": "m"},
            "spec": {"model": "x", "maxTokens": 0}
        }))
        .unwrap();
        assert_eq!(
            check_model_config(&mc).unwrap_err(),
            "spec.maxTokens: 0 is outside 1 to 1000000"
        );
        let no_spec: DynamicObject = serde_json::from_value(json!({"metadata": {"name": "m"}})).unwrap();
        assert!(check_model_config(&no_spec).unwrap_err().starts_with("spec:"));
    }
}
