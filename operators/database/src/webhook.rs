//! The admission webhook for `Database` objects: validation and defaulting over HTTPS
//! (`admission.k8s.io/v1` AdmissionReview), and the `ValidatingWebhookConfiguration` /
//! `MutatingWebhookConfiguration` that register it.
//!
//! # Endpoints
//!
//! * `POST /validate` runs [`crate::validate::validate`] on CREATE and
//!   [`crate::validate::validate_update`] (old object against new) on UPDATE, and denies with
//!   the API server's own wording and `Status` (`422 Invalid`, one cause per field):
//!   `Database.stable.example.com "my-db" is invalid: spec.users[1].username: Invalid value:
//!   "postgres": is reserved`.
//! * `POST /mutate` answers a JSON patch adding `spec.deletionPolicy: Retain` and
//!   `spec.server: default` where the object has no such field. The patch is computed from the
//!   object's JSON as received, not from a [`crate::types::DatabaseSpec`] round trip, so it only
//!   ever adds what is missing and never rewrites what the user wrote.
//! * `GET /healthz` answers `ok`.
//!
//! A body that is not an `admission.k8s.io/v1` AdmissionReview with a request gets a plain
//! `400 Bad Request` with a `Status` saying what is wrong; nothing a client sends makes the
//! server panic.
//!
//! # What is not checked, on purpose
//!
//! * **Updates that leave `spec` alone** (labels, annotations, finalizers) are admitted without
//!   validating the spec, and so are updates of an object that is being deleted: a rule
//!   tightened after an object was created must not stop its finalizer from being removed.
//! * **Subresources** (`databases/status`) are not matched by the configurations' rules, and are
//!   admitted if a misconfigured rule sends them anyway: the reconciler writes status.
//!
//! The reconciler runs the same validation before touching a database server, so an operator
//! installed without the webhook (or with `failurePolicy: Ignore`) still refuses bad specs; the
//! webhook only moves the error to where the user sees it, at `kubectl apply`.
//!
//! # Why the AdmissionReview fields are read by hand
//!
//! kube's `admission` types would need kube-core's `json-patch` 4 for patches (the workspace uses
//! 5) and deserialise the object into a `DynamicObject`; the webhook needs the raw JSON anyway,
//! to patch only missing fields and to report the exact value at a field path, and reading the
//! dozen fields it uses lets a malformed request get a message naming the field at fault.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, ServiceReference, ValidatingWebhook,
    ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{Map, Value, json};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::certs::{CertError, Certs};
use crate::types::{DEFAULT_SERVER, DatabaseSpec, DeletionPolicy};
use crate::validate::{FieldError, validate, validate_update};

/// The port webhooks listen on by convention (controller-runtime's default).
pub const DEFAULT_PORT: u16 = 9443;
/// The validating endpoint.
pub const VALIDATE_PATH: &str = "/validate";
/// The defaulting (mutating) endpoint.
pub const MUTATE_PATH: &str = "/mutate";
/// The liveness endpoint of the webhook server.
pub const HEALTH_PATH: &str = "/healthz";

/// The name of both webhook configurations (they are different kinds, so may share it).
pub const CONFIGURATION_NAME: &str = "database-operator";
/// The validating webhook's name, as the API server quotes it in denials:
/// `admission webhook "validate.databases.stable.example.com" denied the request: ...`.
pub const VALIDATING_WEBHOOK_NAME: &str = "validate.databases.stable.example.com";
/// The mutating webhook's name.
pub const MUTATING_WEBHOOK_NAME: &str = "default.databases.stable.example.com";
/// How long the API server waits for an answer before applying `failurePolicy`.
pub const TIMEOUT_SECONDS: i32 = 5;

const GROUP: &str = "stable.example.com";
const VERSION: &str = "v1";
const KIND: &str = "Database";
const PLURAL: &str = "databases";
const REVIEW_API_VERSION: &str = "admission.k8s.io/v1";

/// A review carries the object twice (new and old), each up to the API server's 1.5 MiB.
const MAX_BODY_BYTES: usize = 8 << 20;
/// A client that has not finished its TLS handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long in-flight requests may take to finish after cancellation.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Webhook configurations.

/// The Service in front of the webhook, for in-cluster `clientConfig.service`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceRef {
    /// The Service's namespace (the operator's).
    pub namespace: String,
    /// The Service's name.
    pub name: String,
    /// The Service's port (which forwards to [`DEFAULT_PORT`] on the Pods).
    pub port: u16,
}

impl Default for ServiceRef {
    /// `database-operator/database-operator-webhook:443`, as `deploy/deployment.yaml` has it.
    fn default() -> Self {
        ServiceRef {
            namespace: "database-operator".into(),
            name: "database-operator-webhook".into(),
            port: 443,
        }
    }
}

impl ServiceRef {
    /// The DNS names the serving certificate must cover for this Service
    /// ([`crate::certs::service_dns_names`]).
    ///
    /// ```
    /// use database_operator::webhook::ServiceRef;
    /// assert_eq!(ServiceRef::default().dns_names()[0], "database-operator-webhook.database-operator.svc");
    /// ```
    pub fn dns_names(&self) -> Vec<String> {
        crate::certs::service_dns_names(&self.namespace, &self.name)
    }
}

/// Where the API server sends admission reviews.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WebhookTarget {
    /// Through a Service, inside the cluster.
    Service(ServiceRef),
    /// To a base URL such as `https://127.0.0.1:9443` (the paths are appended): for development,
    /// a webhook outside the cluster, or `crwatch-apiserver`, which cannot resolve Services.
    Url(String),
}

/// Building the webhook configurations' YAML failed.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The certificates cannot be used.
    #[error(transparent)]
    Certs(#[from] CertError),
    /// The address cannot be listened on.
    #[error("listening on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// Serialising the configurations failed.
    #[error("writing the webhook configurations as YAML: {0}")]
    Yaml(String),
}

/// The first lines of [`webhook_configurations`]' output.
pub const CONFIG_HEADER: &str = "# generated by `database-operator webhook-config`; do not edit.\n\
     # caBundle must be the CA that signed the webhook's serving certificate (ca.crt);\n\
     # regenerate whenever it changes: database-operator webhook-config --cert-dir DIR\n";

/// The note [`webhook_configurations`] adds when it has no CA to put in `caBundle`.
pub const NO_CA_NOTE: &str = "# NOTE: no caBundle yet, so the API server cannot call the webhook and, with\n\
     # failurePolicy Fail, refuses every Database write. Generate certificates and\n\
     # replace this file with the output of `database-operator webhook-config`\n\
     # (see deploy/README.md).\n";

/// The `MutatingWebhookConfiguration` and `ValidatingWebhookConfiguration` of the webhook, as
/// two YAML documents: rules for CREATE and UPDATE of `stable.example.com/v1` `databases`,
/// `sideEffects: None`, `admissionReviewVersions: [v1]`, `failurePolicy: Fail`,
/// `timeoutSeconds: 5`, and `caBundle` set to `ca_pem` (omitted, with a note, when `ca_pem`
/// is empty).
///
/// ```
/// use database_operator::webhook::{WebhookTarget, webhook_configurations};
///
/// let certs = database_operator::certs::generate(&[]).unwrap();
/// let yaml = webhook_configurations(
///     certs.ca_pem.as_deref().unwrap(),
///     &WebhookTarget::Url("https://127.0.0.1:9443".into()),
/// )
/// .unwrap();
/// assert!(yaml.contains("url: https://127.0.0.1:9443/validate"));
/// assert!(yaml.contains("kind: MutatingWebhookConfiguration"));
/// ```
pub fn webhook_configurations(ca_pem: &str, target: &WebhookTarget) -> Result<String, WebhookError> {
    let client_config = |path: &str| {
        let (service, url) = match target {
            WebhookTarget::Service(s) => (
                Some(ServiceReference {
                    namespace: s.namespace.clone(),
                    name: s.name.clone(),
                    path: Some(path.into()),
                    port: Some(i32::from(s.port)),
                }),
                None,
            ),
            WebhookTarget::Url(base) => (None, Some(format!("{}{path}", base.trim_end_matches('/')))),
        };
        WebhookClientConfig {
            ca_bundle: (!ca_pem.is_empty()).then(|| ByteString(ca_pem.as_bytes().to_vec())),
            service,
            url,
        }
    };
    let strings = |items: &[&str]| Some(items.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    let rules = Some(vec![RuleWithOperations {
        api_groups: strings(&[GROUP]),
        api_versions: strings(&[VERSION]),
        operations: strings(&["CREATE", "UPDATE"]),
        resources: strings(&[PLURAL]),
        scope: Some("Namespaced".into()),
    }]);
    let metadata = ObjectMeta {
        name: Some(CONFIGURATION_NAME.into()),
        labels: Some(
            [(
                "app.kubernetes.io/name".to_string(),
                "database-operator".to_string(),
            )]
            .into(),
        ),
        ..ObjectMeta::default()
    };
    let mutating = MutatingWebhookConfiguration {
        metadata: metadata.clone(),
        webhooks: Some(vec![MutatingWebhook {
            name: MUTATING_WEBHOOK_NAME.into(),
            admission_review_versions: vec!["v1".into()],
            client_config: client_config(MUTATE_PATH),
            failure_policy: Some("Fail".into()),
            match_policy: Some("Equivalent".into()),
            reinvocation_policy: Some("Never".into()),
            rules: rules.clone(),
            side_effects: "None".into(),
            timeout_seconds: Some(TIMEOUT_SECONDS),
            ..MutatingWebhook::default()
        }]),
    };
    let validating = ValidatingWebhookConfiguration {
        metadata,
        webhooks: Some(vec![ValidatingWebhook {
            name: VALIDATING_WEBHOOK_NAME.into(),
            admission_review_versions: vec!["v1".into()],
            client_config: client_config(VALIDATE_PATH),
            failure_policy: Some("Fail".into()),
            match_policy: Some("Equivalent".into()),
            rules,
            side_effects: "None".into(),
            timeout_seconds: Some(TIMEOUT_SECONDS),
            ..ValidatingWebhook::default()
        }]),
    };
    let yaml = |e: serde_saphyr::SerializeError| WebhookError::Yaml(e.to_string());
    let mutating = serde_saphyr::to_string(&mutating).map_err(yaml)?;
    let validating = serde_saphyr::to_string(&validating).map_err(yaml)?;
    let note = if ca_pem.is_empty() { NO_CA_NOTE } else { "" };
    Ok(format!("{CONFIG_HEADER}{note}{mutating}---\n{validating}"))
}

// ---------------------------------------------------------------------------------------------
// Admission: pure functions from a request body to a response body.

/// The two admission endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `/validate`.
    Validate,
    /// `/mutate`.
    Mutate,
}

/// A request body that is not an AdmissionReview this webhook can answer; the server responds
/// `400 Bad Request` with a `Status` carrying this message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadRequest(pub String);

/// Answer one AdmissionReview: the complete `admission.k8s.io/v1` AdmissionReview response to
/// send with `200 OK`, or why the request cannot be answered.
///
/// ```
/// use database_operator::webhook::{Endpoint, review};
/// use serde_json::json;
///
/// let request = json!({
///     "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
///     "request": {
///         "uid": "705ab4f5", "operation": "CREATE", "name": "my-db", "namespace": "default",
///         "kind": {"group": "stable.example.com", "version": "v1", "kind": "Database"},
///         "object": {"metadata": {"name": "my-db"}, "spec": {
///             "engine": "PostgreSQL", "version": "15", "size": "1Gi",
///             "users": [{"username": "root"}]}},
///     },
/// });
/// let answer = review(Endpoint::Validate, request.to_string().as_bytes()).unwrap();
/// assert_eq!(answer["response"]["allowed"], false);
/// assert_eq!(
///     answer["response"]["status"]["message"],
///     r#"Database.stable.example.com "my-db" is invalid: spec.users[0].username: Invalid value: "root": is reserved"#
/// );
/// assert!(review(Endpoint::Validate, b"{}").is_err());
/// ```
pub fn review(endpoint: Endpoint, body: &[u8]) -> Result<Value, BadRequest> {
    let request = Request::parse(body)?;
    let response = match endpoint {
        Endpoint::Validate => validate_request(&request)?,
        Endpoint::Mutate => mutate_request(&request)?,
    };
    Ok(response.into_review(&request.uid))
}

/// The fields of an AdmissionReview request the webhook uses.
struct Request {
    uid: String,
    operation: String,
    group: String,
    version: String,
    kind: String,
    sub_resource: String,
    name: String,
    namespace: String,
    object: Option<Value>,
    old_object: Option<Value>,
}

impl Request {
    fn parse(body: &[u8]) -> Result<Request, BadRequest> {
        let bad = |m: String| BadRequest(m);
        let review: Value = serde_json::from_slice(body)
            .map_err(|e| bad(format!("the request body is not a JSON AdmissionReview: {e}")))?;
        let Some(review) = review.as_object() else {
            return Err(bad(
                "the request body is not a JSON object (an AdmissionReview)".into()
            ));
        };
        let api_version = review
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let kind = review.get("kind").and_then(Value::as_str).unwrap_or_default();
        if (api_version, kind) != (REVIEW_API_VERSION, "AdmissionReview") {
            return Err(bad(format!(
                "expected apiVersion {REVIEW_API_VERSION:?} and kind \"AdmissionReview\", got {api_version:?} \
                 and {kind:?}; list only v1 in the configuration's admissionReviewVersions"
            )));
        }
        let Some(request) = review.get("request").and_then(Value::as_object) else {
            return Err(bad("the AdmissionReview has no request".into()));
        };
        let text = |field: &str| {
            request
                .get(field)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let uid = text("uid");
        if uid.is_empty() {
            return Err(bad("request.uid is missing".into()));
        }
        let operation = text("operation");
        if !matches!(operation.as_str(), "CREATE" | "UPDATE" | "DELETE" | "CONNECT") {
            return Err(bad(format!(
                "request.operation is {operation:?}, not one of CREATE, UPDATE, DELETE, CONNECT"
            )));
        }
        let gvk = request.get("kind").and_then(Value::as_object);
        let gvk_field = |f: &str| {
            gvk.and_then(|k| k.get(f))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let object = |field: &str| -> Result<Option<Value>, BadRequest> {
            match request.get(field) {
                None | Some(Value::Null) => Ok(None),
                Some(o @ Value::Object(_)) => Ok(Some(o.clone())),
                Some(_) => Err(bad(format!("request.{field} is not an object"))),
            }
        };
        Ok(Request {
            operation,
            group: gvk_field("group"),
            version: gvk_field("version"),
            kind: gvk_field("kind"),
            sub_resource: text("subResource"),
            name: text("name"),
            namespace: text("namespace"),
            object: object("object")?,
            old_object: object("oldObject")?,
            uid,
        })
    }

    fn is_database(&self) -> bool {
        (self.group.as_str(), self.version.as_str(), self.kind.as_str()) == (GROUP, VERSION, KIND)
    }

    /// The object's name: `request.name`, or the object's own (empty with `generateName`).
    fn object_name(&self) -> String {
        if !self.name.is_empty() {
            return self.name.clone();
        }
        self.object
            .as_ref()
            .and_then(|o| o.pointer("/metadata/name"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    }

    /// The object, which CREATE and UPDATE must carry.
    fn require_object(&self) -> Result<&Value, BadRequest> {
        self.object
            .as_ref()
            .ok_or_else(|| BadRequest(format!("request.object is missing on {}", self.operation)))
    }
}

/// What the webhook decided.
enum Verdict {
    Allow { patch: Vec<Value> },
    Deny { status: Value },
}

impl Verdict {
    fn allow() -> Verdict {
        Verdict::Allow { patch: vec![] }
    }

    fn into_review(self, uid: &str) -> Value {
        let mut response = Map::new();
        response.insert("uid".into(), json!(uid));
        match self {
            Verdict::Allow { patch } => {
                response.insert("allowed".into(), json!(true));
                if !patch.is_empty() {
                    let bytes = Value::Array(patch).to_string();
                    response.insert("patchType".into(), json!("JSONPatch"));
                    response.insert(
                        "patch".into(),
                        json!(base64::engine::general_purpose::STANDARD.encode(bytes)),
                    );
                }
            }
            Verdict::Deny { status } => {
                response.insert("allowed".into(), json!(false));
                response.insert("status".into(), status);
            }
        }
        json!({"apiVersion": REVIEW_API_VERSION, "kind": "AdmissionReview", "response": response})
    }
}

/// A denial for a request this webhook should never have been sent.
fn misrouted(request: &Request, configuration: &str) -> Verdict {
    let what = format!("{}/{} {}", request.group, request.version, request.kind);
    Verdict::Deny {
        status: failure(
            400,
            "BadRequest",
            &format!(
                "the Database webhook admits {GROUP}/{VERSION} {KIND} only, not {what}; check the rules of \
                 {configuration} {CONFIGURATION_NAME:?}"
            ),
            None,
        ),
    }
}

fn failure(code: u16, reason: &str, message: &str, details: Option<Value>) -> Value {
    let mut status = json!({
        "apiVersion": "v1",
        "kind": "Status",
        "status": "Failure",
        "code": code,
        "reason": reason,
        "message": message,
    });
    if let Some(details) = details {
        status["details"] = details;
    }
    status
}

fn validate_request(request: &Request) -> Result<Verdict, BadRequest> {
    if !request.is_database() {
        return Ok(misrouted(request, "ValidatingWebhookConfiguration"));
    }
    if !request.sub_resource.is_empty() {
        return Ok(Verdict::allow());
    }
    let problems = match request.operation.as_str() {
        "CREATE" => {
            let object = request.require_object()?;
            match parse_spec(object) {
                Ok(spec) => validate(&spec)
                    .err()
                    .unwrap_or_default()
                    .iter()
                    .map(Problem::from)
                    .collect(),
                Err(problems) => problems,
            }
        }
        "UPDATE" => {
            let object = request.require_object()?;
            let Some(old) = &request.old_object else {
                return Err(BadRequest("request.oldObject is missing on UPDATE".into()));
            };
            if is_deleting(object) || object.get("spec") == old.get("spec") {
                return Ok(Verdict::allow());
            }
            match (parse_spec(old), parse_spec(object)) {
                (_, Err(problems)) => problems,
                (Ok(old), Ok(new)) => validate_update(&old, &new)
                    .err()
                    .unwrap_or_default()
                    .iter()
                    .map(Problem::from)
                    .collect(),
                // An old object that no longer reads (stored under an older schema) cannot be
                // compared with; the new one must still be valid.
                (Err(_), Ok(new)) => validate(&new)
                    .err()
                    .unwrap_or_default()
                    .iter()
                    .map(Problem::from)
                    .collect(),
            }
        }
        _ => vec![],
    };
    if problems.is_empty() {
        return Ok(Verdict::allow());
    }
    let name = request.object_name();
    let object = request.object.as_ref().unwrap_or(&Value::Null);
    tracing::info!(
        namespace = %request.namespace, name = %name, operation = %request.operation,
        problems = problems.len(), "denied an invalid Database"
    );
    Ok(Verdict::Deny {
        status: invalid_status(&name, &problems, object),
    })
}

fn mutate_request(request: &Request) -> Result<Verdict, BadRequest> {
    if !request.is_database() {
        return Ok(misrouted(request, "MutatingWebhookConfiguration"));
    }
    if !request.sub_resource.is_empty() || !matches!(request.operation.as_str(), "CREATE" | "UPDATE") {
        return Ok(Verdict::allow());
    }
    let object = request.require_object()?;
    if is_deleting(object) {
        return Ok(Verdict::allow());
    }
    Ok(Verdict::Allow {
        patch: defaults_patch(object),
    })
}

fn is_deleting(object: &Value) -> bool {
    object
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|t| !t.is_null())
}

/// The JSON patch (RFC 6902 operations) that fills in the defaults an object lacks:
/// `spec.deletionPolicy: Retain` and `spec.server: default`, each only when the field is absent
/// or null. An empty string is left alone: it already means "default" to the operator, and
/// rewriting what the user wrote would make GitOps tools report a difference forever. An object
/// without a `spec` object gets no patch (validation refuses it).
///
/// ```
/// use serde_json::json;
/// let patch = database_operator::webhook::defaults_patch(&json!({"spec": {"deletionPolicy": "Delete"}}));
/// assert_eq!(patch, vec![json!({"op": "add", "path": "/spec/server", "value": "default"})]);
/// ```
pub fn defaults_patch(object: &Value) -> Vec<Value> {
    let Some(spec) = object.get("spec").and_then(Value::as_object) else {
        return vec![];
    };
    let retain = serde_json::to_value(DeletionPolicy::Retain).unwrap_or_else(|_| json!("Retain"));
    [("deletionPolicy", retain), ("server", json!(DEFAULT_SERVER))]
        .into_iter()
        .filter(|(field, _)| spec.get(*field).is_none_or(Value::is_null))
        .map(|(field, value)| json!({"op": "add", "path": format!("/spec/{field}"), "value": value}))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Field errors as the API server words them.

/// One field error, in one of the API server's three shapes.
#[derive(Clone, Debug, PartialEq)]
enum Problem {
    /// `field: Required value`
    Required { field: String },
    /// `field: Unsupported value: "x": supported values: "a", "b"`
    Unsupported {
        field: String,
        supported: &'static [&'static str],
    },
    /// `field: Invalid value: <value at field>: detail`
    Invalid { field: String, detail: String },
}

impl From<&FieldError> for Problem {
    fn from(e: &FieldError) -> Self {
        Problem::Invalid {
            field: e.field.clone(),
            detail: e.message.clone(),
        }
    }
}

impl Problem {
    fn field(&self) -> &str {
        match self {
            Problem::Required { field }
            | Problem::Unsupported { field, .. }
            | Problem::Invalid { field, .. } => field,
        }
    }

    /// `(reason, body)`: the cause reason and the error text after `field: `.
    fn render(&self, object: &Value) -> (&'static str, String) {
        let value = lookup(object, self.field());
        match self {
            Problem::Required { .. } => ("FieldValueRequired", "Required value".into()),
            Problem::Unsupported { supported, .. } => {
                let list = supported
                    .iter()
                    .map(|s| format!("{s:?}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let shown = value.map(show).unwrap_or_else(|| "null".into());
                (
                    "FieldValueNotSupported",
                    format!("Unsupported value: {shown}: supported values: {list}"),
                )
            }
            Problem::Invalid { detail, .. } => match value {
                Some(value) => {
                    // validate's messages often start with the value itself (`"root" is
                    // reserved`); the API server's shape already shows it once.
                    let detail = match value.as_str() {
                        Some(s) => {
                            let quoted = format!("{s:?}");
                            detail
                                .strip_prefix(&quoted)
                                .and_then(|rest| rest.strip_prefix(": ").or_else(|| rest.strip_prefix(' ')))
                                .filter(|rest| !rest.is_empty())
                                .unwrap_or(detail)
                        }
                        None => detail,
                    };
                    (
                        "FieldValueInvalid",
                        format!("Invalid value: {}: {detail}", show(value)),
                    )
                }
                None => ("FieldValueInvalid", detail.clone()),
            },
        }
    }
}

/// A value as the API server shows it in errors: strings quoted, the rest as compact JSON.
fn show(value: &Value) -> String {
    const LIMIT: usize = 120;
    let text = value.to_string();
    if text.len() <= LIMIT {
        return text;
    }
    let mut end = LIMIT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

/// The value at a field path such as `spec.users[1].username`.
fn lookup<'a>(object: &'a Value, path: &str) -> Option<&'a Value> {
    let mut current = object;
    for part in path.split('.') {
        let (key, mut indexes) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            current = current.get(key)?;
        }
        while let Some(rest) = indexes.strip_prefix('[') {
            let (index, after) = rest.split_once(']')?;
            current = current.get(index.parse::<usize>().ok()?)?;
            indexes = after;
        }
    }
    Some(current).filter(|v| !v.is_null())
}

/// The `Status` of a denial: `422 Invalid`, the API server's message format, one cause per
/// problem.
fn invalid_status(name: &str, problems: &[Problem], object: &Value) -> Value {
    let rendered: Vec<(&str, &str, String)> = problems
        .iter()
        .map(|p| {
            let (reason, body) = p.render(object);
            (reason, p.field(), body)
        })
        .collect();
    let lines: Vec<String> = rendered
        .iter()
        .map(|(_, field, body)| format!("{field}: {body}"))
        .collect();
    let list = match lines.as_slice() {
        [one] => one.clone(),
        many => format!("[{}]", many.join(", ")),
    };
    let message = format!("{KIND}.{GROUP} {name:?} is invalid: {list}");
    let causes: Vec<Value> = rendered
        .iter()
        .map(|(reason, field, body)| json!({"reason": reason, "message": body, "field": field}))
        .collect();
    failure(
        422,
        "Invalid",
        &message,
        Some(json!({"name": name, "group": GROUP, "kind": KIND, "causes": causes})),
    )
}

/// The object's spec, or the problems that keep it from reading as a [`DatabaseSpec`], worded
/// as the API server's schema validation words them. The CRD schema catches all of these before
/// a validating webhook is called; they matter for a server without the CRD's schema, and for
/// the mutating webhook, which runs first.
fn parse_spec(object: &Value) -> Result<DatabaseSpec, Vec<Problem>> {
    let spec = match object.get("spec") {
        None | Some(Value::Null) => {
            return Err(vec![Problem::Required { field: "spec".into() }]);
        }
        Some(Value::Object(spec)) => spec,
        Some(_) => {
            return Err(vec![Problem::Invalid {
                field: "spec".into(),
                detail: "must be an object".into(),
            }]);
        }
    };
    let mut problems = Vec::new();
    let mut string_field = |field: &str, required: bool, supported: Option<&'static [&'static str]>| {
        let path = format!("spec.{field}");
        match spec.get(field) {
            None | Some(Value::Null) if required => problems.push(Problem::Required { field: path }),
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => {
                if let Some(supported) = supported.filter(|list| !list.contains(&s.as_str())) {
                    problems.push(Problem::Unsupported {
                        field: path,
                        supported,
                    });
                }
            }
            Some(_) => problems.push(Problem::Invalid {
                field: path,
                detail: "must be a string".into(),
            }),
        }
    };
    string_field("engine", true, Some(&["PostgreSQL", "MySQL"]));
    string_field("version", true, None);
    string_field("size", true, None);
    string_field("deletionPolicy", false, Some(&["Retain", "Delete"]));
    string_field("server", false, None);
    match spec.get("users") {
        None | Some(Value::Null) => {}
        Some(Value::Array(users)) => {
            for (i, user) in users.iter().enumerate() {
                let field = format!("spec.users[{i}]");
                match user.get("username") {
                    Some(Value::String(_)) => {}
                    None | Some(Value::Null) => problems.push(Problem::Required {
                        field: format!("{field}.username"),
                    }),
                    Some(_) if !user.is_object() => problems.push(Problem::Invalid {
                        field,
                        detail: "must be an object".into(),
                    }),
                    Some(_) => problems.push(Problem::Invalid {
                        field: format!("{field}.username"),
                        detail: "must be a string".into(),
                    }),
                }
            }
        }
        Some(_) => problems.push(Problem::Invalid {
            field: "spec.users".into(),
            detail: "must be a list".into(),
        }),
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    serde_json::from_value(Value::Object(spec.clone())).map_err(|e| {
        vec![Problem::Invalid {
            field: "spec".into(),
            detail: format!("cannot be read: {e}"),
        }]
    })
}

// ---------------------------------------------------------------------------------------------
// The HTTPS server.

/// The webhook's routes (`/validate`, `/mutate`, `/healthz`), without TLS; [`serve`] serves them
/// over HTTPS.
pub fn router() -> Router {
    Router::new()
        .route(
            VALIDATE_PATH,
            post(|body: Bytes| async move { answer(Endpoint::Validate, &body) }),
        )
        .route(
            MUTATE_PATH,
            post(|body: Bytes| async move { answer(Endpoint::Mutate, &body) }),
        )
        .route(HEALTH_PATH, get(|| async { "ok" }))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
}

fn answer(endpoint: Endpoint, body: &[u8]) -> Response {
    let (code, body) = match review(endpoint, body) {
        Ok(review) => (StatusCode::OK, review),
        Err(BadRequest(message)) => {
            tracing::warn!(%message, "refused a malformed admission request");
            (
                StatusCode::BAD_REQUEST,
                failure(400, "BadRequest", &message, None),
            )
        }
    };
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// A running webhook server; see [`serve`].
#[derive(Debug)]
pub struct WebhookServer {
    local_addr: SocketAddr,
    task: JoinHandle<()>,
}

impl WebhookServer {
    /// The address the server listens on (the real port when asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Wait until the server has stopped after cancellation: no longer listening, in-flight
    /// requests answered (or cut off after a grace period of 10 s).
    pub async fn stopped(self) {
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "the webhook server task failed");
        }
    }
}

/// Listen on `addr` and serve the webhook ([`router`]) over HTTPS with `certs` (HTTP/2 and
/// HTTP/1.1), until `cancel` is cancelled. Returns once listening; the server runs on a task.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use database_operator::{certs, webhook};
/// use tokio_util::sync::CancellationToken;
///
/// let certs = certs::load_or_generate("/tmp/k8s-webhook-server/serving-certs".as_ref(), &[])?;
/// let cancel = CancellationToken::new();
/// let server = webhook::serve(([0, 0, 0, 0], webhook::DEFAULT_PORT).into(), &certs, cancel.clone()).await?;
/// println!("serving on https://{}", server.local_addr());
/// server.stopped().await;
/// # Ok(()) }
/// ```
pub async fn serve(
    addr: SocketAddr,
    certs: &Certs,
    cancel: CancellationToken,
) -> Result<WebhookServer, WebhookError> {
    let acceptor = tokio_rustls::TlsAcceptor::from(certs.server_config()?);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| WebhookError::Bind { addr, source })?;
    let local_addr = listener
        .local_addr()
        .map_err(|source| WebhookError::Bind { addr, source })?;
    let app = router();
    tracing::info!(addr = %local_addr, "admission webhook listening");
    let task = tokio::spawn(async move {
        let graceful = GracefulShutdown::new();
        let mut connections = JoinSet::new();
        loop {
            let tcp = tokio::select! {
                _ = cancel.cancelled() => break,
                Some(_) = connections.join_next(), if !connections.is_empty() => continue,
                accepted = listener.accept() => match accepted {
                    Ok((tcp, _)) => tcp,
                    Err(e) => {
                        // Out of file descriptors, usually: give the system a moment.
                        tracing::warn!(error = %e, "accepting a webhook connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, app, watcher) = (acceptor.clone(), app.clone(), graceful.watcher());
            connections.spawn(async move {
                let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "webhook TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!("webhook TLS handshake timed out");
                        return;
                    }
                };
                let builder = Builder::new(TokioExecutor::new());
                let connection =
                    builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
                if let Err(e) = watcher.watch(connection).await {
                    tracing::debug!(error = %e, "webhook connection ended with an error");
                }
            });
        }
        drop(listener);
        if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("webhook requests still running after {SHUTDOWN_GRACE:?}; cutting them off");
        }
        connections.shutdown().await;
        tracing::info!("admission webhook stopped");
    });
    Ok(WebhookServer { local_addr, task })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(operation: &str, object: Value, old: Option<Value>) -> Value {
        json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "uid-1",
                "kind": {"group": "stable.example.com", "version": "v1", "kind": "Database"},
                "resource": {"group": "stable.example.com", "version": "v1", "resource": "databases"},
                "operation": operation,
                "name": "my-db",
                "namespace": "default",
                "userInfo": {"username": "admin"},
                "object": object,
                "oldObject": old,
                "dryRun": false,
            }
        })
    }

    fn database(spec: Value) -> Value {
        json!({"apiVersion": "stable.example.com/v1", "kind": "Database",
               "metadata": {"name": "my-db", "namespace": "default"}, "spec": spec})
    }

    fn good_spec() -> Value {
        json!({"engine": "PostgreSQL", "version": "15", "size": "10Gi",
               "users": [{"username": "admin"}, {"username": "appuser"}]})
    }

    fn call(endpoint: Endpoint, review_request: &Value) -> Value {
        let answer = review(endpoint, review_request.to_string().as_bytes()).unwrap();
        assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(answer["kind"], "AdmissionReview");
        assert_eq!(answer["response"]["uid"], "uid-1");
        answer["response"].clone()
    }

    fn message(response: &Value) -> String {
        assert_eq!(response["allowed"], false, "{response}");
        response["status"]["message"].as_str().unwrap().to_string()
    }

    fn decoded_patch(response: &Value) -> Value {
        assert_eq!(response["patchType"], "JSONPatch");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(response["patch"].as_str().unwrap())
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn a_valid_database_is_allowed() {
        let response = call(
            Endpoint::Validate,
            &request("CREATE", database(good_spec()), None),
        );
        assert_eq!(response["allowed"], true);
        assert!(response.get("status").is_none());
        assert!(response.get("patch").is_none(), "validation never patches");
    }

    #[test]
    fn reserved_names_are_denied_with_the_api_servers_wording() {
        let mut spec = good_spec();
        spec["users"][1]["username"] = json!("postgres");
        let response = call(Endpoint::Validate, &request("CREATE", database(spec), None));
        assert_eq!(
            message(&response),
            r#"Database.stable.example.com "my-db" is invalid: spec.users[1].username: Invalid value: "postgres": is reserved"#
        );
        let status = &response["status"];
        assert_eq!(
            (status["code"].as_u64(), status["reason"].as_str()),
            (Some(422), Some("Invalid"))
        );
        assert_eq!(status["details"]["kind"], "Database");
        assert_eq!(status["details"]["group"], "stable.example.com");
        assert_eq!(
            status["details"]["causes"],
            json!([{"reason": "FieldValueInvalid", "field": "spec.users[1].username",
                    "message": "Invalid value: \"postgres\": is reserved"}])
        );
    }

    #[test]
    fn several_problems_are_listed_like_an_aggregate() {
        let spec = json!({"engine": "PostgreSQL", "version": "15", "size": "0",
                          "users": [{"username": "a;drop"}, {"username": "root"}, {"username": "a;drop"}]});
        let text = message(&call(
            Endpoint::Validate,
            &request("CREATE", database(spec), None),
        ));
        assert!(text.starts_with(r#"Database.stable.example.com "my-db" is invalid: [spec.size: Invalid value: "0": must be positive, "#), "{text}");
        assert!(
            text.contains(r#"spec.users[0].username: Invalid value: "a;drop": is not a valid user name"#),
            "{text}"
        );
        assert!(
            text.contains(r#"spec.users[1].username: Invalid value: "root": is reserved"#),
            "{text}"
        );
        assert!(
            text.contains(r#"spec.users[2].username: Invalid value: "a;drop": duplicate username "a;drop" (also spec.users[0])"#),
            "{text}"
        );
        assert!(text.ends_with(']'), "{text}");
    }

    #[test]
    fn the_engine_cannot_change_but_metadata_only_updates_of_old_objects_pass() {
        let old = database(good_spec());
        let mut new = old.clone();
        new["spec"]["engine"] = json!("MySQL");
        let text = message(&call(
            Endpoint::Validate,
            &request("UPDATE", new, Some(old.clone())),
        ));
        assert_eq!(
            text,
            r#"Database.stable.example.com "my-db" is invalid: spec.engine: Invalid value: "MySQL": is immutable (was PostgreSQL, now MySQL)"#
        );

        // Stored before "postgres" was refused: a label or finalizer change still goes through,
        // and so does anything while the object is being deleted.
        let mut grandfathered = old.clone();
        grandfathered["spec"]["users"][0]["username"] = json!("postgres");
        let mut labelled = grandfathered.clone();
        labelled["metadata"]["labels"] = json!({"team": "a"});
        let response = call(
            Endpoint::Validate,
            &request("UPDATE", labelled, Some(grandfathered.clone())),
        );
        assert_eq!(response["allowed"], true);
        let mut deleting = grandfathered.clone();
        deleting["metadata"]["deletionTimestamp"] = json!("2025-01-01T00:00:00Z");
        deleting["spec"]["size"] = json!("20Gi");
        let response = call(
            Endpoint::Validate,
            &request("UPDATE", deleting, Some(grandfathered.clone())),
        );
        assert_eq!(response["allowed"], true);
        // A spec change is validated in full.
        let mut resized = grandfathered.clone();
        resized["spec"]["size"] = json!("20Gi");
        let text = message(&call(
            Endpoint::Validate,
            &request("UPDATE", resized, Some(grandfathered)),
        ));
        assert!(text.contains("spec.users[0].username"), "{text}");
    }

    #[test]
    fn schema_level_problems_read_like_schema_errors() {
        let spec =
            json!({"engine": "Oracle", "size": 10, "deletionPolicy": "Keep", "users": [{"name": "x"}]});
        let text = message(&call(
            Endpoint::Validate,
            &request("CREATE", database(spec), None),
        ));
        for expected in [
            r#"spec.engine: Unsupported value: "Oracle": supported values: "PostgreSQL", "MySQL""#,
            "spec.version: Required value",
            "spec.size: Invalid value: 10: must be a string",
            r#"spec.deletionPolicy: Unsupported value: "Keep": supported values: "Retain", "Delete""#,
            "spec.users[0].username: Required value",
        ] {
            assert!(text.contains(expected), "{expected:?} missing from {text}");
        }
        let text = message(&call(
            Endpoint::Validate,
            &request("CREATE", json!({"metadata": {"name": "my-db"}}), None),
        ));
        assert_eq!(
            text,
            r#"Database.stable.example.com "my-db" is invalid: spec: Required value"#
        );
    }

    #[test]
    fn defaulting_adds_only_missing_fields() {
        let response = call(Endpoint::Mutate, &request("CREATE", database(good_spec()), None));
        assert_eq!(response["allowed"], true);
        assert_eq!(
            decoded_patch(&response),
            json!([{"op": "add", "path": "/spec/deletionPolicy", "value": "Retain"},
                   {"op": "add", "path": "/spec/server", "value": "default"}])
        );

        let mut spec = good_spec();
        spec["deletionPolicy"] = json!("Delete");
        spec["server"] = json!("eu-1");
        let response = call(
            Endpoint::Mutate,
            &request("UPDATE", database(spec.clone()), Some(database(spec))),
        );
        assert_eq!(response["allowed"], true);
        assert!(
            response.get("patch").is_none() && response.get("patchType").is_none(),
            "{response}"
        );

        // "" already means the default server; null is as good as absent.
        assert_eq!(
            defaults_patch(&json!({"spec": {"server": "", "deletionPolicy": null}})),
            vec![json!({"op": "add", "path": "/spec/deletionPolicy", "value": "Retain"})]
        );
        assert!(defaults_patch(&json!({"spec": "nonsense"})).is_empty());
        assert!(defaults_patch(&json!({})).is_empty());
    }

    #[test]
    fn status_and_deletes_are_left_alone() {
        let mut status_update = request("UPDATE", database(json!({})), Some(database(json!({}))));
        status_update["request"]["subResource"] = json!("status");
        assert_eq!(call(Endpoint::Validate, &status_update)["allowed"], true);
        assert!(call(Endpoint::Mutate, &status_update).get("patch").is_none());
        let delete = request("DELETE", Value::Null, Some(database(json!({}))));
        assert_eq!(call(Endpoint::Validate, &delete)["allowed"], true);
        assert_eq!(call(Endpoint::Mutate, &delete)["allowed"], true);
    }

    #[test]
    fn other_kinds_are_denied_with_a_hint_at_the_rules() {
        let mut secret = request("CREATE", json!({"metadata": {"name": "s"}}), None);
        secret["request"]["kind"] = json!({"group": "", "version": "v1", "kind": "Secret"});
        let text = message(&call(Endpoint::Validate, &secret));
        assert!(text.contains("not /v1 Secret"), "{text}");
        assert!(
            text.contains("ValidatingWebhookConfiguration \"database-operator\""),
            "{text}"
        );
    }

    #[test]
    fn malformed_requests_are_bad_requests() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"not json".to_vec(), "not a JSON AdmissionReview"),
            (b"[]".to_vec(), "not a JSON object"),
            (json!({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview"}).to_string().into_bytes(), "expected apiVersion"),
            (json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}).to_string().into_bytes(), "has no request"),
            (json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"operation": "CREATE"}}).to_string().into_bytes(), "uid is missing"),
            (json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": "u", "operation": "EXPLODE"}}).to_string().into_bytes(), "request.operation"),
        ];
        for (body, expected) in cases {
            for endpoint in [Endpoint::Validate, Endpoint::Mutate] {
                let err = review(endpoint, &body).unwrap_err();
                assert!(err.0.contains(expected), "{expected:?} not in {err}");
            }
        }
        let mut no_object = request("CREATE", Value::Null, None);
        assert!(
            review(Endpoint::Validate, no_object.to_string().as_bytes())
                .unwrap_err()
                .0
                .contains("request.object is missing")
        );
        no_object["request"]["object"] = json!("a string");
        assert!(
            review(Endpoint::Mutate, no_object.to_string().as_bytes())
                .unwrap_err()
                .0
                .contains("not an object")
        );
        let no_old = request("UPDATE", database(good_spec()), None);
        assert!(
            review(Endpoint::Validate, no_old.to_string().as_bytes())
                .unwrap_err()
                .0
                .contains("oldObject")
        );
    }

    #[test]
    fn lookup_follows_field_paths() {
        let object = database(good_spec());
        assert_eq!(lookup(&object, "spec.users[1].username"), Some(&json!("appuser")));
        assert_eq!(lookup(&object, "spec.engine"), Some(&json!("PostgreSQL")));
        assert_eq!(lookup(&object, "spec.users[7].username"), None);
        assert_eq!(lookup(&object, "spec.server"), None);
        assert_eq!(lookup(&object, "spec.users[x]"), None);
    }

    #[test]
    fn configurations_for_a_service_carry_the_bundle_and_rules() {
        let ca = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let yaml = webhook_configurations(ca, &WebhookTarget::Service(ServiceRef::default())).unwrap();
        let docs: Vec<Value> = serde_saphyr::from_multiple(&yaml).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0]["kind"], "MutatingWebhookConfiguration");
        assert_eq!(docs[1]["kind"], "ValidatingWebhookConfiguration");
        let bundle = base64::engine::general_purpose::STANDARD.encode(ca);
        for (doc, path) in docs.iter().zip([MUTATE_PATH, VALIDATE_PATH]) {
            let hook = &doc["webhooks"][0];
            assert_eq!(hook["clientConfig"]["caBundle"], bundle.as_str());
            assert_eq!(
                hook["clientConfig"]["service"],
                json!({"name": "database-operator-webhook", "namespace": "database-operator", "path": path, "port": 443})
            );
            assert_eq!(hook["failurePolicy"], "Fail");
            assert_eq!(hook["sideEffects"], "None");
            assert_eq!(hook["timeoutSeconds"], 5);
            assert_eq!(hook["admissionReviewVersions"], json!(["v1"]));
            assert_eq!(
                hook["rules"],
                json!([{"apiGroups": ["stable.example.com"], "apiVersions": ["v1"],
                        "operations": ["CREATE", "UPDATE"], "resources": ["databases"], "scope": "Namespaced"}])
            );
        }
        assert!(!yaml.contains("NOTE: no caBundle"));
        let placeholder = webhook_configurations("", &WebhookTarget::Service(ServiceRef::default())).unwrap();
        assert!(placeholder.contains("NOTE: no caBundle"));
        assert!(!placeholder.contains("caBundle:"));
    }
}
