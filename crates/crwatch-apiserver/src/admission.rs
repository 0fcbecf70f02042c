//! Dynamic admission: calling the mutating and validating webhooks of `MutatingWebhookConfiguration` /
//! `ValidatingWebhookConfiguration` objects over HTTPS, with the real kube-apiserver's matching rules,
//! failure policies, AdmissionReview v1 wire format and error wording.
//!
//! The entry point is [`Admission::admit`]. It never touches storage: the caller passes the current
//! webhook configurations and the [`Attributes`] of the request, and gets back the (possibly patched)
//! object plus warnings, or an [`AdmissionError`] whose [`AdmissionError::status`] is the `Status` body
//! to answer with.
//!
//! Known differences from a real cluster:
//! - `clientConfig.service` cannot be resolved (there is no cluster network). Such a webhook fails to be
//!   called, as a real server fails for a Service that does not exist, so `failurePolicy` decides. Inside a
//!   cluster the address would be `https://{name}.{namespace}.svc:{port}{path}`.
//! - `matchPolicy: Equivalent` behaves like `Exact` because this server does not convert between versions.
//! - `matchConditions` (CEL) are not evaluated: a webhook whose rules and selectors match is called.
//! - Only AdmissionReview `v1` is spoken.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Map, Value, json};

use crate::registry::ResourceDef;
use crate::selector::{LabelSelector, labels_of};

/// Default `timeoutSeconds` of an admissionregistration.k8s.io/v1 webhook.
const DEFAULT_TIMEOUT_SECONDS: u64 = 10;
/// The API server rejects configurations above this; clamp rather than trust the stored object.
const MAX_TIMEOUT_SECONDS: u64 = 30;

/// The operation being admitted, as AdmissionReview spells it.
///
/// ```
/// # use crwatch_apiserver::admission::Operation;
/// assert_eq!(Operation::Create.as_str(), "CREATE");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// `CREATE`
    Create,
    /// `UPDATE` (also used for patches and subresource writes)
    Update,
    /// `DELETE`
    Delete,
}

impl Operation {
    /// The upper-case name used in webhook rules and AdmissionReview requests.
    pub fn as_str(&self) -> &'static str {
        match self {
            Operation::Create => "CREATE",
            Operation::Update => "UPDATE",
            Operation::Delete => "DELETE",
        }
    }
}

/// What is being admitted: one write request against one resource.
#[derive(Debug, Clone)]
pub struct Attributes {
    /// The operation.
    pub operation: Operation,
    /// The resource (kind, group, version, plural, scope) the request is for.
    pub def: Arc<ResourceDef>,
    /// `""`, `"status"` or `"scale"`.
    pub subresource: String,
    /// Name of the object.
    pub name: String,
    /// Namespace of the object, `""` for cluster-scoped objects.
    pub namespace: String,
    /// The new object (`None` on delete).
    pub object: Option<Value>,
    /// The existing object (`None` on create).
    pub old_object: Option<Value>,
    /// The `CreateOptions` / `UpdateOptions` / `DeleteOptions` of the request, with `kind` and
    /// `apiVersion: meta.k8s.io/v1`.
    pub options: Value,
    /// Whether the request is a dry run.
    pub dry_run: bool,
    /// Name of the requesting user, like `admin`.
    pub user: String,
    /// Labels of the object's namespace, or of the Namespace itself when admitting a Namespace.
    pub namespace_labels: BTreeMap<String, String>,
}

/// The outcome of a successful admission.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Admitted {
    /// The object after all mutating webhooks (`None` on delete).
    pub object: Option<Value>,
    /// Warnings returned by webhooks, in call order without duplicates, for `Warning` headers.
    pub warnings: Vec<String>,
}

/// Why admission refused a request; [`AdmissionError::status`] renders the response body.
///
/// ```
/// # use crwatch_apiserver::admission::AdmissionError;
/// let err = AdmissionError::Failed { message: r#"failed calling webhook "w": boom"#.into() };
/// assert_eq!(err.code(), 500);
/// assert_eq!(err.status()["reason"], "InternalError");
/// assert_eq!(err.to_string(), r#"Internal error occurred: failed calling webhook "w": boom"#);
/// ```
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AdmissionError {
    /// A webhook answered `allowed: false` (or the request cannot be admitted as asked, like a dry run
    /// against a webhook with side effects). `message` is complete, e.g.
    /// `admission webhook "x" denied the request: MESSAGE`; `reason` may be empty as webhooks choose it.
    #[error("{message}")]
    Denied {
        /// HTTP status code, at least 400.
        code: u16,
        /// The `reason` of the Status, possibly empty.
        reason: String,
        /// The full message.
        message: String,
        /// The webhook's `status.details` (e.g. per-field causes), passed on as the real server
        /// does.
        details: Option<Value>,
    },
    /// A webhook could not be called, or answered nonsense, and its `failurePolicy` is `Fail`.
    /// `message` is the cause, like `failed calling webhook "x": failed to call webhook: Post ...`;
    /// the response is a 500 `InternalError` whose message is prefixed `Internal error occurred: `.
    #[error("Internal error occurred: {message}")]
    Failed {
        /// The cause, without the `Internal error occurred: ` prefix.
        message: String,
    },
    /// Admission itself failed regardless of failure policy (a patch that does not apply, a patch on a
    /// delete, an unparsable namespaceSelector). Rendered like [`AdmissionError::Failed`].
    #[error("Internal error occurred: {message}")]
    Internal {
        /// The cause, without the `Internal error occurred: ` prefix.
        message: String,
    },
}

impl AdmissionError {
    /// The HTTP status code to answer with.
    pub fn code(&self) -> u16 {
        match self {
            AdmissionError::Denied { code, .. } => *code,
            AdmissionError::Failed { .. } | AdmissionError::Internal { .. } => 500,
        }
    }

    /// The `metav1.Status` body the real server answers with.
    ///
    /// ```
    /// # use crwatch_apiserver::admission::AdmissionError;
    /// let err = AdmissionError::Denied { code: 400, reason: String::new(), message: "no".into(), details: None };
    /// let status = err.status();
    /// assert_eq!(status["kind"], "Status");
    /// assert_eq!(status["code"], 400);
    /// assert!(status.get("reason").is_none());
    /// ```
    pub fn status(&self) -> Value {
        let mut status = Map::new();
        status.insert("kind".into(), json!("Status"));
        status.insert("apiVersion".into(), json!("v1"));
        status.insert("metadata".into(), json!({}));
        status.insert("status".into(), json!("Failure"));
        status.insert("message".into(), json!(self.to_string()));
        match self {
            AdmissionError::Denied { reason, details, .. } => {
                // Go's omitempty: a webhook that gives no reason yields a Status without one.
                if !reason.is_empty() {
                    status.insert("reason".into(), json!(reason));
                }
                if let Some(details) = details {
                    status.insert("details".into(), details.clone());
                }
            }
            AdmissionError::Failed { message } | AdmissionError::Internal { message } => {
                status.insert("reason".into(), json!("InternalError"));
                status.insert("details".into(), json!({"causes": [{"message": message}]}));
            }
        }
        status.insert("code".into(), json!(self.code()));
        Value::Object(status)
    }
}

/// How calling one webhook went wrong, before `failurePolicy` is applied.
enum HookError {
    /// `ErrCallingWebhook` in the real server: subject to `failurePolicy`.
    Call(String),
    /// Anything else: returned as is.
    Final(AdmissionError),
}

/// One webhook of a configuration, with the configuration it came from.
struct Hook<'a> {
    config: String,
    spec: &'a Value,
    name: String,
}

impl<'a> Hook<'a> {
    fn str(&self, field: &str) -> Option<&'a str> {
        self.spec.get(field).and_then(Value::as_str)
    }

    fn ignores_failures(&self) -> bool {
        self.str("failurePolicy") == Some("Ignore")
    }

    fn timeout(&self) -> u64 {
        self.spec
            .get("timeoutSeconds")
            .and_then(Value::as_u64)
            .unwrap_or(DEFAULT_TIMEOUT_SECONDS)
            .clamp(1, MAX_TIMEOUT_SECONDS)
    }

    fn reinvoke_if_needed(&self) -> bool {
        self.str("reinvocationPolicy") == Some("IfNeeded")
    }
}

/// Webhooks of the configurations, ordered as the real server calls them: configurations by name,
/// then webhooks in the order they are listed.
fn hooks_of(configs: &[Value]) -> Vec<Hook<'_>> {
    let mut sorted: Vec<&Value> = configs.iter().collect();
    sorted.sort_by_key(|c| {
        c.pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
    });
    let mut hooks = vec![];
    for config in sorted {
        let config_name = config
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        for spec in config
            .get("webhooks")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            hooks.push(Hook {
                config: config_name.to_string(),
                name: spec
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                spec,
            });
        }
    }
    hooks
}

/// Webhooks never see writes to admission configuration itself, so a broken webhook cannot lock
/// everyone out of fixing it.
fn is_exempt(def: &ResourceDef) -> bool {
    def.group == "admissionregistration.k8s.io"
        && matches!(
            def.plural.as_str(),
            "validatingwebhookconfigurations"
                | "mutatingwebhookconfigurations"
                | "validatingadmissionpolicies"
                | "validatingadmissionpolicybindings"
                | "mutatingadmissionpolicies"
                | "mutatingadmissionpolicybindings"
        )
}

fn strings<'a>(rule: &'a Value, field: &str) -> impl Iterator<Item = &'a str> {
    rule.get(field)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
}

fn is_namespace(def: &ResourceDef) -> bool {
    def.group.is_empty() && def.plural == "namespaces"
}

/// Whether one `rules` entry covers the request.
fn rule_matches(rule: &Value, attrs: &Attributes) -> bool {
    let def = &attrs.def;
    let scope_ok = match rule.get("scope").and_then(Value::as_str).unwrap_or("*") {
        // A Namespace is cluster-scoped even though its requests carry a namespace.
        "Namespaced" => def.namespaced && !is_namespace(def),
        "Cluster" => !def.namespaced || is_namespace(def),
        _ => true,
    };
    let op = attrs.operation.as_str();
    let op_ok = strings(rule, "operations").any(|o| o == "*" || o == op);
    let group_ok = strings(rule, "apiGroups").any(|g| g == "*" || g == def.group);
    let version_ok = strings(rule, "apiVersions").any(|v| v == "*" || v == def.version);
    let resource_ok = strings(rule, "resources").any(|r| {
        let (res, sub) = r.split_once('/').unwrap_or((r, ""));
        (res == "*" || res == def.plural) && (sub == "*" || sub == attrs.subresource)
    });
    scope_ok && op_ok && group_ok && version_ok && resource_ok
}

/// Whether the webhook applies to the request (`rules`, `namespaceSelector`, `objectSelector`).
fn should_call(hook: &Hook<'_>, attrs: &Attributes) -> Result<bool, AdmissionError> {
    // Cluster-scoped objects other than Namespaces are never exempted by a namespaceSelector.
    let ns_match = if attrs.namespace.is_empty() && !is_namespace(&attrs.def) {
        Ok(true)
    } else {
        match hook.spec.get("namespaceSelector") {
            None | Some(Value::Null) => Ok(true),
            Some(sel) => LabelSelector::from_object(sel)
                .map(|s| s.matches(&attrs.namespace_labels))
                .map_err(|e| AdmissionError::Internal { message: e.0 }),
        }
    };
    // As in the real server, a selector error only surfaces for webhooks that would otherwise apply.
    if matches!(ns_match, Ok(false)) {
        return Ok(false);
    }
    let obj_match = match hook.spec.get("objectSelector") {
        None | Some(Value::Null) => true,
        Some(sel) => match LabelSelector::from_object(sel) {
            Ok(s) if s.is_empty() => true,
            Ok(s) => [&attrs.object, &attrs.old_object]
                .into_iter()
                .flatten()
                .any(|o| s.matches(&labels_of(o))),
            Err(_) => false,
        },
    };
    if !obj_match {
        return Ok(false);
    }
    let rules_match = hook
        .spec
        .get("rules")
        .and_then(Value::as_array)
        .is_some_and(|rules| rules.iter().any(|r| rule_matches(r, attrs)));
    if !rules_match {
        return Ok(false);
    }
    ns_match
}

/// The `kind` of the object sent for the request (the scale subresource speaks `autoscaling/v1 Scale`).
fn request_kind(attrs: &Attributes) -> Value {
    if attrs.subresource == "scale" {
        json!({"group": "autoscaling", "version": "v1", "kind": "Scale"})
    } else {
        json!({"group": attrs.def.group, "version": attrs.def.version, "kind": attrs.def.kind})
    }
}

/// The AdmissionReview v1 request body.
fn review(uid: &str, attrs: &Attributes, object: Option<&Value>) -> Value {
    let kind = request_kind(attrs);
    let resource =
        json!({"group": attrs.def.group, "version": attrs.def.version, "resource": attrs.def.plural});
    let mut req = Map::new();
    req.insert("uid".into(), json!(uid));
    req.insert("kind".into(), kind.clone());
    req.insert("resource".into(), resource.clone());
    if !attrs.subresource.is_empty() {
        req.insert("subResource".into(), json!(attrs.subresource));
    }
    req.insert("requestKind".into(), kind);
    req.insert("requestResource".into(), resource);
    if !attrs.subresource.is_empty() {
        req.insert("requestSubResource".into(), json!(attrs.subresource));
    }
    if !attrs.name.is_empty() {
        req.insert("name".into(), json!(attrs.name));
    }
    if !attrs.namespace.is_empty() {
        req.insert("namespace".into(), json!(attrs.namespace));
    }
    req.insert("operation".into(), json!(attrs.operation.as_str()));
    req.insert("userInfo".into(), crate::authn::admission_user_info(&attrs.user));
    req.insert("object".into(), object.cloned().unwrap_or(Value::Null));
    req.insert(
        "oldObject".into(),
        attrs.old_object.clone().unwrap_or(Value::Null),
    );
    req.insert("dryRun".into(), json!(attrs.dry_run));
    req.insert("options".into(), attrs.options.clone());
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": Value::Object(req)})
}

/// What a webhook's AdmissionReview response said, once checked.
struct Verdict {
    allowed: bool,
    result: Option<Value>,
    patch: Option<(String, Vec<u8>)>,
    warnings: Vec<String>,
}

/// Check the response the way the real server's `VerifyAdmissionResponse` does; errors are its wording.
fn verify(uid: &str, mutating: bool, body: &Value) -> Result<Verdict, String> {
    let Some(resp) = body.get("response").filter(|r| !r.is_null()) else {
        return Err("webhook response was absent".into());
    };
    let got_uid = resp.get("uid").and_then(Value::as_str).unwrap_or_default();
    if got_uid != uid {
        return Err(format!("expected response.uid={uid:?}, got {got_uid:?}"));
    }
    let api_version = body.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
    let kind = body.get("kind").and_then(Value::as_str).unwrap_or_default();
    if api_version != "admission.k8s.io/v1" || kind != "AdmissionReview" {
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        return Err(format!(
            "expected webhook response of admission.k8s.io/v1, Kind=AdmissionReview, got {group}/{version}, Kind={kind}"
        ));
    }
    let patch_type = resp.get("patchType").and_then(Value::as_str).unwrap_or_default();
    let patch = match resp.get("patch").and_then(Value::as_str).unwrap_or_default() {
        "" => vec![],
        b64 => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| format!("illegal base64 data in response.patch: {e}"))?,
    };
    if mutating {
        if !patch.is_empty() && patch_type.is_empty() {
            return Err("webhook returned response.patch but not response.patchType".into());
        }
        if !patch_type.is_empty() && patch.is_empty() {
            return Err("webhook returned response.patchType but not response.patch".into());
        }
    } else if !patch.is_empty() || !patch_type.is_empty() {
        return Err("validating webhook may not return response.patch or response.patchType".into());
    }
    Ok(Verdict {
        allowed: resp.get("allowed").and_then(Value::as_bool).unwrap_or(false),
        result: resp.get("status").filter(|s| !s.is_null()).cloned(),
        patch: (!patch.is_empty()).then(|| (patch_type.to_string(), patch)),
        warnings: strings(resp, "warnings").map(String::from).collect(),
    })
}

/// The rejection a webhook's `status` turns into (the real server's `ToStatusErr`).
fn denial(hook: &str, result: Option<&Value>) -> AdmissionError {
    let field = |f: &str| {
        result
            .and_then(|r| r.get(f))
            .and_then(Value::as_str)
            .unwrap_or_default()
    };
    let (message, reason) = (field("message"), field("reason"));
    let denied_by = format!("admission webhook {hook:?} denied the request");
    let message = if !message.is_empty() {
        format!("{denied_by}: {message}")
    } else if !reason.is_empty() {
        format!("{denied_by}: {reason}")
    } else {
        format!("{denied_by} without explanation")
    };
    // A rejection never answers with a success code.
    let code = result
        .and_then(|r| r.get("code"))
        .and_then(Value::as_u64)
        .and_then(|c| u16::try_from(c).ok())
        .filter(|c| *c >= 400)
        .unwrap_or(400);
    // The real server returns the webhook's Status as it is, with only code, status and
    // message adjusted, so its details (causes per field) reach the client.
    let details = result
        .and_then(|r| r.get("details"))
        .filter(|d| d.is_object())
        .cloned();
    AdmissionError::Denied {
        code,
        reason: reason.to_string(),
        message,
        details,
    }
}

/// Go's wording for a few well-known transport failures, so messages read like the real server's.
fn describe_transport_error(err: &reqwest::Error, url: &reqwest::Url) -> String {
    if err.is_timeout() {
        return "context deadline exceeded".into();
    }
    let host_port = format!(
        "{}:{}",
        url.host_str().unwrap_or_default(),
        url.port_or_known_default().unwrap_or_default()
    );
    type DynError = dyn std::error::Error + 'static;
    // reqwest's own message repeats the URL that `Post "URL": ` already names; start below it.
    let mut causes: Vec<&DynError> = vec![];
    let mut cur: Option<&DynError> = std::error::Error::source(err).or(Some(err));
    while let Some(e) = cur {
        causes.push(e);
        // io::Error::source skips the error it wraps (often another io::Error), so descend explicitly.
        cur = match e.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
            Some(inner) => Some(inner),
            None => e.source(),
        };
    }
    for cause in &causes {
        if let Some(tls) = cause.downcast_ref::<rustls::Error>() {
            let verify_failed = "tls: failed to verify certificate: x509:";
            return match tls {
                // A CA with the right name but the wrong key is still an unknown authority to Go.
                rustls::Error::InvalidCertificate(
                    rustls::CertificateError::UnknownIssuer | rustls::CertificateError::BadSignature,
                ) => format!("{verify_failed} certificate signed by unknown authority"),
                rustls::Error::InvalidCertificate(
                    rustls::CertificateError::NotValidForName
                    | rustls::CertificateError::NotValidForNameContext { .. },
                ) => format!(
                    "{verify_failed} certificate is not valid for {}",
                    url.host_str().unwrap_or_default()
                ),
                other => format!("tls: {other}"),
            };
        }
        let refused = cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused);
        if refused {
            return format!("dial tcp {host_port}: connect: connection refused");
        }
    }
    // An io::Error displays as the error it wraps, so neighbours repeat; keep one of each.
    let mut chain: Vec<String> = causes.iter().map(|e| e.to_string()).collect();
    chain.dedup();
    chain.join(": ")
}

/// Close to Go's rest client wording for a non-2xx answer that is not a `Status`.
fn describe_http_status(code: u16, body: &str) -> String {
    match code {
        400 => "the server rejected our request for an unknown reason".into(),
        401 => "Unauthorized".into(),
        403 => "forbidden".into(),
        404 => "the server could not find the requested resource".into(),
        405 => "the server does not allow this method on the requested resource".into(),
        500 => format!("an error on the server ({:?}) has prevented the request from succeeding", body.trim()),
        503 => "the server is currently unable to handle the request".into(),
        504 => "the server was unable to return a response in the time allotted, but may still be processing the request".into(),
        _ => format!("the server responded with the status code {code} but did not return more information"),
    }
}

/// Calls admission webhooks. Keep one per server (share it behind an `Arc`): it caches one HTTPS
/// client, and so its connections, per CA bundle.
///
/// ```no_run
/// # use crwatch_apiserver::admission::{Admission, Attributes};
/// # async fn demo(attrs: Attributes, mutating: Vec<serde_json::Value>, validating: Vec<serde_json::Value>) {
/// let admission = Admission::new();
/// match admission.admit(&mutating, &validating, &attrs).await {
///     Ok(admitted) => println!("store {:?}, warn {:?}", admitted.object, admitted.warnings),
///     Err(err) => println!("answer {} {}", err.code(), err.status()),
/// }
/// # }
/// ```
#[derive(Debug, Default)]
pub struct Admission {
    clients: Mutex<HashMap<String, reqwest::Client>>,
}

impl Admission {
    /// An admission controller with no cached connections.
    pub fn new() -> Self {
        Self::default()
    }

    /// Run the mutating webhooks (configurations by name, webhooks in order, with one reinvocation
    /// round for `reinvocationPolicy: IfNeeded`), then the validating webhooks concurrently, against
    /// the request. Returns the possibly mutated object and the webhooks' warnings.
    ///
    /// `mutating` and `validating` are the current `MutatingWebhookConfiguration` and
    /// `ValidatingWebhookConfiguration` objects. Writes to webhook configurations themselves are
    /// never sent to webhooks.
    pub async fn admit(
        &self,
        mutating: &[Value],
        validating: &[Value],
        attrs: &Attributes,
    ) -> Result<Admitted, AdmissionError> {
        let mut warnings = vec![];
        let object = self
            .admit_into(mutating, validating, attrs, &mut warnings)
            .await?;
        Ok(Admitted { object, warnings })
    }

    /// [`Admission::admit`], appending the webhooks' warnings (without duplicates) to `warnings`
    /// also when admission fails: the real server sends them as `Warning` headers with the error
    /// response too. Returns the possibly mutated object.
    pub async fn admit_into(
        &self,
        mutating: &[Value],
        validating: &[Value],
        attrs: &Attributes,
        warnings: &mut Vec<String>,
    ) -> Result<Option<Value>, AdmissionError> {
        let mut own = vec![];
        let result = self.run(mutating, validating, attrs, &mut own).await;
        let mut seen = std::collections::HashSet::new();
        own.retain(|w| seen.insert(w.clone()));
        warnings.extend(own);
        result
    }

    async fn run(
        &self,
        mutating: &[Value],
        validating: &[Value],
        attrs: &Attributes,
        warnings: &mut Vec<String>,
    ) -> Result<Option<Value>, AdmissionError> {
        let mut object = attrs.object.clone();
        if is_exempt(&attrs.def) {
            return Ok(object);
        }

        let mutating_hooks = hooks_of(mutating);
        // Reinvocation follows the real server: a change re-arms every IfNeeded webhook called so far.
        let mut reinvoke = vec![false; mutating_hooks.len()];
        let mut invoked_reinvocable = vec![false; mutating_hooks.len()];
        let mut should_reinvoke = false;
        for round in 0..2 {
            if round == 1 && !should_reinvoke {
                break;
            }
            for (i, hook) in mutating_hooks.iter().enumerate() {
                if round == 1 && !reinvoke[i] {
                    continue;
                }
                let current = Attributes {
                    object: object.clone(),
                    ..attrs.clone()
                };
                if !should_call(hook, &current)? {
                    continue;
                }
                let changed = match self.call(hook, &current, true, warnings).await {
                    Ok(Some(patched)) => {
                        let changed = object.as_ref() != Some(&patched);
                        object = Some(patched);
                        changed
                    }
                    Ok(None) => false,
                    Err(HookError::Call(msg)) if hook.ignores_failures() => {
                        tracing::warn!(webhook = %hook.name, "failed calling webhook, failing open: {msg}");
                        false
                    }
                    Err(HookError::Call(msg)) => return Err(AdmissionError::Failed { message: msg }),
                    Err(HookError::Final(e)) => return Err(e),
                };
                if round == 0 {
                    if changed {
                        should_reinvoke = true;
                        for j in 0..mutating_hooks.len() {
                            if invoked_reinvocable[j] {
                                reinvoke[j] = true;
                                invoked_reinvocable[j] = false;
                            }
                        }
                    }
                    if hook.reinvoke_if_needed() {
                        invoked_reinvocable[i] = true;
                    }
                }
            }
        }

        let final_attrs = Attributes {
            object: object.clone(),
            ..attrs.clone()
        };
        let mut relevant = vec![];
        for hook in hooks_of(validating) {
            if should_call(&hook, &final_attrs)? {
                relevant.push(hook);
            }
        }
        let final_ref = &final_attrs;
        let results = futures::future::join_all(relevant.iter().map(|hook| async move {
            let mut hook_warnings = vec![];
            let result = self.call(hook, final_ref, false, &mut hook_warnings).await;
            (hook, result, hook_warnings)
        }))
        .await;
        let mut first_error = None;
        for (hook, result, hook_warnings) in results {
            warnings.extend(hook_warnings);
            let err = match result {
                Ok(_) => continue,
                Err(HookError::Call(msg)) if hook.ignores_failures() => {
                    tracing::warn!(webhook = %hook.name, "failed calling webhook, failing open: {msg}");
                    continue;
                }
                Err(HookError::Call(msg)) => AdmissionError::Failed { message: msg },
                Err(HookError::Final(e)) => e,
            };
            first_error.get_or_insert(err);
        }
        if let Some(err) = first_error {
            return Err(err);
        }
        Ok(object)
    }

    /// Call one webhook. `Ok(Some(obj))` is the object after a mutating webhook's patch.
    async fn call(
        &self,
        hook: &Hook<'_>,
        attrs: &Attributes,
        mutating: bool,
        warnings: &mut Vec<String>,
    ) -> Result<Option<Value>, HookError> {
        let calling =
            |reason: String| HookError::Call(format!("failed calling webhook {:?}: {reason}", hook.name));
        if attrs.dry_run {
            match hook.str("sideEffects") {
                None => return Err(calling("Webhook SideEffects is nil".into())),
                Some("None" | "NoneOnDryRun") => {}
                Some(_) => {
                    return Err(HookError::Final(AdmissionError::Denied {
                        code: 400,
                        reason: "BadRequest".into(),
                        message: format!("admission webhook {:?} does not support dry run", hook.name),
                        details: None,
                    }));
                }
            }
        }
        if let Some(versions) = hook.spec.get("admissionReviewVersions").and_then(Value::as_array) {
            let accepts = |v: &str| versions.iter().any(|x| x.as_str() == Some(v));
            if !accepts("v1") {
                let why = if accepts("v1beta1") {
                    "webhook only accepts v1beta1 AdmissionReview, which this server does not speak"
                } else {
                    "webhook does not accept v1 or v1beta1 AdmissionReview"
                };
                return Err(calling(format!("could not create admission objects: {why}")));
            }
        }

        let timeout = hook.timeout();
        let config = hook.spec.get("clientConfig").unwrap_or(&Value::Null);
        let Some(raw_url) = config.get("url").and_then(Value::as_str) else {
            return Err(calling(format!(
                "failed to call webhook: {}",
                service_failure(config, timeout)
            )));
        };
        let mut url = reqwest::Url::parse(raw_url)
            .map_err(|e| calling(format!("could not get REST client: parse {raw_url:?}: {e}")))?;
        // The real server tells the webhook its deadline the same way.
        url.query_pairs_mut()
            .append_pair("timeout", &format!("{timeout}s"));
        let client = self
            .client(config.get("caBundle").and_then(Value::as_str).unwrap_or_default())
            .map_err(|e| calling(format!("could not get REST client: {e}")))?;

        let uid = uuid::Uuid::new_v4().to_string();
        let body = review(&uid, attrs, attrs.object.as_ref());
        tracing::debug!(webhook = %hook.name, configuration = %hook.config, %url, "calling admission webhook");
        let post_failed =
            |why: String| calling(format!("failed to call webhook: Post {:?}: {why}", url.as_str()));
        let response = client
            .post(url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::ACCEPT, "application/json, */*")
            .timeout(Duration::from_secs(timeout))
            .json(&body)
            .send()
            .await
            .map_err(|e| post_failed(describe_transport_error(&e, &url)))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| post_failed(describe_transport_error(&e, &url)))?;
        if !status.is_success() {
            return Err(calling(format!(
                "failed to call webhook: {}",
                describe_http_status(status.as_u16(), &text)
            )));
        }
        let answer: Value = crate::decode::json_checked(text.as_bytes())
            .map_err(|e| calling(format!("failed to call webhook: couldn't decode response: {e}")))?;
        let verdict = verify(&uid, mutating, &answer)
            .map_err(|e| calling(format!("received invalid webhook response: {e}")))?;
        warnings.extend(verdict.warnings);
        if !verdict.allowed {
            return Err(HookError::Final(denial(&hook.name, verdict.result.as_ref())));
        }
        let Some((patch_type, patch)) = verdict.patch else {
            return Ok(None);
        };
        let ops: json_patch::Patch = crate::decode::json_checked(&patch)
            .map_err(|e| calling(format!("received undecodable patch in webhook response: {e}")))?;
        if ops.0.is_empty() {
            return Ok(None);
        }
        let Some(mut object) = attrs.object.clone() else {
            return Err(HookError::Final(AdmissionError::Internal {
                message: format!(
                    "admission webhook {:?} attempted to modify the object, which is not supported for this operation",
                    hook.name
                ),
            }));
        };
        if patch_type != "JSONPatch" {
            return Err(calling(format!("unsupported patch type {patch_type:?}")));
        }
        // With the same copy limit as a client's JSON patch, as the real server's json-patch
        // applies it to webhook patches too.
        crate::patch::apply_ops(&mut object, &ops.0)
            .map_err(|message| HookError::Final(AdmissionError::Internal { message }))?;
        Ok(Some(object))
    }

    /// The HTTPS client trusting exactly `ca_bundle` (base64 PEM); built once per bundle.
    fn client(&self, ca_bundle: &str) -> Result<reqwest::Client, String> {
        let mut clients = self
            .clients
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(client) = clients.get(ca_bundle) {
            return Ok(client.clone());
        }
        let mut roots = rustls::RootCertStore::empty();
        if !ca_bundle.is_empty() {
            let pem = base64::engine::general_purpose::STANDARD
                .decode(ca_bundle.trim())
                .map_err(|e| format!("invalid caBundle: {e}"))?;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                let cert = cert.map_err(|e| format!("invalid caBundle: {e}"))?;
                roots.add(cert).map_err(|e| format!("invalid caBundle: {e}"))?;
            }
        }
        // Without a caBundle a real server trusts the system roots; there are none worth trusting
        // here, so the handshake fails with "unknown authority" just as it would for a private CA.
        let mut tls =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots)
                .with_no_client_auth();
        // A preconfigured TLS config is used as is, so offer HTTP/2 here or it is never negotiated.
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            // Webhooks are local to the caller; an HTTPS_PROXY in the environment must not capture them.
            .no_proxy()
            .build()
            .map_err(|e| e.to_string())?;
        clients.insert(ca_bundle.to_string(), client.clone());
        Ok(client)
    }
}

/// Why a `clientConfig.service` webhook cannot be called, worded as a real server words a missing
/// Service, with the address it would have used inside a cluster.
fn service_failure(config: &Value, timeout: u64) -> String {
    let Some(service) = config.get("service").filter(|s| s.is_object()) else {
        return "webhook has neither clientConfig.url nor clientConfig.service".into();
    };
    let field = |f: &str| service.get(f).and_then(Value::as_str).unwrap_or_default();
    let port = service.get("port").and_then(Value::as_u64).unwrap_or(443);
    let path = match field("path") {
        "" => "/",
        p => p,
    };
    let name = field("name");
    format!(
        "Post \"https://{name}.{}.svc:{port}{path}?timeout={timeout}s\": service {name:?} not found \
         (crwatch-apiserver has no cluster network and cannot reach Services; use clientConfig.url)",
        field("namespace"),
    )
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    use axum::extract::State;
    use axum::http::Uri;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType};
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

    use super::*;
    use crate::registry::builtin_resources;

    /// What a test webhook answers for a review; `None` makes it hang.
    type Behaviour = Arc<dyn Fn(&Value) -> Option<Value> + Send + Sync>;

    struct TestCa {
        issuer: CertifiedIssuer<'static, KeyPair>,
        bundle: String,
    }

    fn test_ca() -> TestCa {
        named_ca("crwatch admission test CA")
    }

    fn named_ca(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let bundle = base64::engine::general_purpose::STANDARD.encode(issuer.pem());
        TestCa { issuer, bundle }
    }

    #[derive(Clone)]
    struct Served {
        behaviour: Behaviour,
        calls: Arc<AtomicUsize>,
        seen: Arc<Mutex<Vec<(String, Value)>>>,
    }

    /// A real HTTPS webhook server on 127.0.0.1 with a certificate issued by `ca`.
    struct TestWebhook {
        url: String,
        state: Served,
    }

    impl TestWebhook {
        fn calls(&self) -> usize {
            self.state.calls.load(Ordering::SeqCst)
        }

        fn last(&self) -> (String, Value) {
            self.state.seen.lock().unwrap().last().cloned().unwrap()
        }
    }

    async fn handle(
        State(state): State<Served>,
        uri: Uri,
        axum::Json(review): axum::Json<Value>,
    ) -> axum::Json<Value> {
        state.calls.fetch_add(1, Ordering::SeqCst);
        let target = uri.path_and_query().map(|p| p.to_string()).unwrap_or_default();
        state.seen.lock().unwrap().push((target, review.clone()));
        match (state.behaviour)(&review) {
            Some(answer) => axum::Json(answer),
            None => {
                tokio::time::sleep(Duration::from_secs(30)).await;
                axum::Json(allow(&review))
            }
        }
    }

    async fn serve(
        ca: &TestCa,
        behaviour: impl Fn(&Value) -> Option<Value> + Send + Sync + 'static,
    ) -> TestWebhook {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        let cert = params.signed_by(&key, &ca.issuer).unwrap();
        let mut tls =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(
                    vec![cert.der().clone()],
                    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
                )
                .unwrap();
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Served {
            behaviour: Arc::new(behaviour),
            calls: Arc::new(AtomicUsize::new(0)),
            seen: Arc::new(Mutex::new(vec![])),
        };
        let router = axum::Router::new()
            .route("/{*path}", axum::routing::post(handle))
            .with_state(state.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, router) = (acceptor.clone(), router.clone());
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper_util::service::TowerToHyperService::new(router);
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        TestWebhook {
            url: format!("https://{addr}/admit"),
            state,
        }
    }

    fn answer(review: &Value, response: Value) -> Value {
        let mut response = response;
        response["uid"] = review["request"]["uid"].clone();
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response})
    }

    fn allow(review: &Value) -> Value {
        answer(review, json!({"allowed": true}))
    }

    fn json_patch(ops: Value) -> String {
        base64::engine::general_purpose::STANDARD.encode(ops.to_string())
    }

    fn rule(groups: &[&str], resources: &[&str]) -> Value {
        json!({"operations": ["CREATE", "UPDATE"], "apiGroups": groups, "apiVersions": ["*"], "resources": resources})
    }

    fn hook(name: &str, url: &str, ca: &str, rules: Value) -> Value {
        json!({
            "name": name,
            "clientConfig": {"url": url, "caBundle": ca},
            "rules": rules,
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
        })
    }

    fn config(name: &str, hooks: Vec<Value>) -> Value {
        json!({"metadata": {"name": name}, "webhooks": hooks})
    }

    fn database_def() -> Arc<ResourceDef> {
        let mut def = builtin_resources()
            .into_iter()
            .find(|d| d.kind == "ConfigMap")
            .unwrap();
        def.group = "example.com".into();
        def.version = "v1".into();
        def.kind = "Database".into();
        def.plural = "databases".into();
        def.singular = "database".into();
        Arc::new(def)
    }

    fn builtin(kind: &str) -> Arc<ResourceDef> {
        Arc::new(builtin_resources().into_iter().find(|d| d.kind == kind).unwrap())
    }

    fn create(def: Arc<ResourceDef>, labels: Value) -> Attributes {
        let namespace = if def.namespaced { "default" } else { "" };
        Attributes {
            operation: Operation::Create,
            def,
            subresource: String::new(),
            name: "db1".into(),
            namespace: namespace.into(),
            object: Some(json!({
                "apiVersion": "example.com/v1",
                "kind": "Database",
                "metadata": {"name": "db1", "namespace": namespace, "labels": labels},
                "spec": {"engine": "postgres"},
            })),
            old_object: None,
            options: json!({"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}),
            dry_run: false,
            user: "admin".into(),
            namespace_labels: BTreeMap::new(),
        }
    }

    fn all_databases() -> Value {
        json!([rule(&["example.com"], &["databases"])])
    }

    #[tokio::test]
    async fn validating_webhook_denies_with_its_message_and_sees_a_v1_review() {
        let ca = test_ca();
        let wh = serve(&ca, |r| {
            Some(answer(
                r,
                json!({"allowed": false, "status": {"code": 403, "reason": "Forbidden", "message": "no databases on Sundays",
                    "details": {"causes": [{"field": "spec.day", "message": "Sunday"}]}}}),
            ))
        })
        .await;
        let quiet = serve(&ca, |r| Some(answer(r, json!({"allowed": false})))).await;
        let admission = Admission::new();
        let attrs = create(database_def(), json!({"app": "shop"}));

        let validating = [config(
            "deny",
            vec![hook("deny.example.com", &wh.url, &ca.bundle, all_databases())],
        )];
        let err = admission.admit(&[], &validating, &attrs).await.unwrap_err();
        assert_eq!(
            err,
            AdmissionError::Denied {
                code: 403,
                reason: "Forbidden".into(),
                message:
                    r#"admission webhook "deny.example.com" denied the request: no databases on Sundays"#
                        .into(),
                details: Some(json!({"causes": [{"field": "spec.day", "message": "Sunday"}]})),
            }
        );
        assert_eq!(
            err.status()["details"]["causes"][0]["field"],
            "spec.day",
            "details pass through"
        );
        assert_eq!(err.status()["reason"], "Forbidden");
        assert_eq!(err.status()["code"], 403);

        let (uri, review) = wh.last();
        assert_eq!(uri, "/admit?timeout=10s");
        assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(review["kind"], "AdmissionReview");
        let req = &review["request"];
        assert_eq!(req["uid"].as_str().unwrap().len(), 36);
        assert_eq!(
            req["kind"],
            json!({"group": "example.com", "version": "v1", "kind": "Database"})
        );
        assert_eq!(
            req["resource"],
            json!({"group": "example.com", "version": "v1", "resource": "databases"})
        );
        assert_eq!(req["operation"], "CREATE");
        assert_eq!(req["namespace"], "default");
        assert_eq!(req["name"], "db1");
        assert_eq!(req["userInfo"]["username"], "admin");
        assert_eq!(req["object"]["spec"]["engine"], "postgres");
        assert_eq!(req["oldObject"], Value::Null);
        assert_eq!(req["dryRun"], false);
        assert_eq!(req["options"]["kind"], "CreateOptions");

        let validating = [config(
            "quiet",
            vec![hook("quiet.example.com", &quiet.url, &ca.bundle, all_databases())],
        )];
        let err = admission.admit(&[], &validating, &attrs).await.unwrap_err();
        assert_eq!(err.code(), 400);
        assert_eq!(
            err.to_string(),
            r#"admission webhook "quiet.example.com" denied the request without explanation"#
        );
        assert!(err.status().get("reason").is_none());
    }

    #[tokio::test]
    async fn mutating_webhook_patch_adds_a_label_that_validation_then_sees() {
        let ca = test_ca();
        let mutator = serve(&ca, |r| {
            let patch = json_patch(json!([{"op": "add", "path": "/metadata/labels/injected", "value": "yes"}]));
            Some(answer(
                r,
                json!({"allowed": true, "patchType": "JSONPatch", "patch": patch, "warnings": ["label injected"]}),
            ))
        })
        .await;
        let validator = serve(&ca, |r| {
            let injected = r["request"]["object"]["metadata"]["labels"]["injected"] == "yes";
            Some(answer(
                r,
                json!({"allowed": injected, "warnings": ["label injected", "checked"]}),
            ))
        })
        .await;
        let mutating = [config(
            "inject",
            vec![hook(
                "inject.example.com",
                &mutator.url,
                &ca.bundle,
                all_databases(),
            )],
        )];
        let validating = [config(
            "check",
            vec![hook(
                "check.example.com",
                &validator.url,
                &ca.bundle,
                all_databases(),
            )],
        )];
        let admitted = Admission::new()
            .admit(
                &mutating,
                &validating,
                &create(database_def(), json!({"app": "shop"})),
            )
            .await
            .unwrap();
        let object = admitted.object.unwrap();
        assert_eq!(
            object["metadata"]["labels"],
            json!({"app": "shop", "injected": "yes"})
        );
        assert_eq!(
            admitted.warnings,
            vec!["label injected".to_string(), "checked".to_string()]
        );
        assert_eq!((mutator.calls(), validator.calls()), (1, 1));
    }

    #[tokio::test]
    async fn webhooks_whose_rules_do_not_match_are_not_called() {
        let ca = test_ca();
        let wh = serve(&ca, |r| Some(allow(r))).await;
        let admission = Admission::new();
        let rules_cases = [
            json!([rule(&["apps"], &["databases"])]),
            json!([rule(&["example.com"], &["widgets"])]),
            json!([rule(&["example.com"], &["databases/status"])]),
            json!([{"operations": ["DELETE"], "apiGroups": ["*"], "apiVersions": ["*"], "resources": ["*"]}]),
            json!([{"operations": ["*"], "apiGroups": ["*"], "apiVersions": ["v2"], "resources": ["*"]}]),
            json!([{"operations": ["*"], "apiGroups": ["*"], "apiVersions": ["*"], "resources": ["*"], "scope": "Cluster"}]),
            json!([]),
        ];
        for rules in rules_cases {
            let validating = [config(
                "c",
                vec![hook("w.example.com", &wh.url, &ca.bundle, rules.clone())],
            )];
            admission
                .admit(&[], &validating, &create(database_def(), json!({})))
                .await
                .unwrap();
            assert_eq!(wh.calls(), 0, "called for rules {rules}");
        }
        // The same webhook is called once the rules cover the request, including wildcards.
        let matching = [
            json!([rule(&["example.com"], &["databases"])]),
            json!([{"operations": ["*"], "apiGroups": ["*"], "apiVersions": ["*"], "resources": ["*"], "scope": "Namespaced"}]),
            json!([rule(&["*"], &["*/*"])]),
        ];
        for (i, rules) in matching.iter().enumerate() {
            let validating = [config(
                "c",
                vec![hook("w.example.com", &wh.url, &ca.bundle, rules.clone())],
            )];
            admission
                .admit(&[], &validating, &create(database_def(), json!({})))
                .await
                .unwrap();
            assert_eq!(wh.calls(), i + 1, "not called for rules {rules}");
        }
        // Subresources need an explicit `resource/sub` (or `*/*`) rule.
        let mut status_write = create(database_def(), json!({}));
        status_write.operation = Operation::Update;
        status_write.subresource = "status".into();
        let plain = [config(
            "c",
            vec![hook("w.example.com", &wh.url, &ca.bundle, all_databases())],
        )];
        admission.admit(&[], &plain, &status_write).await.unwrap();
        assert_eq!(wh.calls(), 3);
        let status_rule = json!([rule(&["example.com"], &["databases/status"])]);
        let sub = [config(
            "c",
            vec![hook("w.example.com", &wh.url, &ca.bundle, status_rule)],
        )];
        admission.admit(&[], &sub, &status_write).await.unwrap();
        assert_eq!(wh.calls(), 4);
        assert_eq!(wh.last().1["request"]["subResource"], "status");
        // Writes to webhook configurations are exempt from webhooks altogether.
        let mut vwc = create(builtin("ValidatingWebhookConfiguration"), json!({}));
        vwc.namespace.clear();
        let everything = [config(
            "c",
            vec![hook(
                "w.example.com",
                &wh.url,
                &ca.bundle,
                json!([rule(&["*"], &["*"])]),
            )],
        )];
        admission.admit(&[], &everything, &vwc).await.unwrap();
        assert_eq!(wh.calls(), 4);
    }

    #[tokio::test]
    async fn namespace_and_object_selectors_filter_calls() {
        let ca = test_ca();
        let wh = serve(&ca, |r| Some(allow(r))).await;
        let admission = Admission::new();
        let mut by_ns = hook(
            "ns.example.com",
            &wh.url,
            &ca.bundle,
            json!([rule(&["*"], &["*"])]),
        );
        by_ns["namespaceSelector"] = json!({"matchLabels": {"env": "prod"}});
        let by_ns = [config("ns", vec![by_ns])];

        let mut attrs = create(database_def(), json!({}));
        attrs.namespace_labels = BTreeMap::from([("env".to_string(), "dev".to_string())]);
        admission.admit(&[], &by_ns, &attrs).await.unwrap();
        assert_eq!(wh.calls(), 0);
        attrs.namespace_labels = BTreeMap::from([("env".to_string(), "prod".to_string())]);
        admission.admit(&[], &by_ns, &attrs).await.unwrap();
        assert_eq!(wh.calls(), 1);

        // A cluster-scoped object other than a Namespace ignores the namespaceSelector...
        let mut crd = create(builtin("CustomResourceDefinition"), json!({}));
        crd.namespace_labels.clear();
        admission.admit(&[], &by_ns, &crd).await.unwrap();
        assert_eq!(wh.calls(), 2);
        // ...while a Namespace is matched by its own labels.
        let mut ns = create(builtin("Namespace"), json!({}));
        ns.namespace_labels = BTreeMap::from([("env".to_string(), "dev".to_string())]);
        admission.admit(&[], &by_ns, &ns).await.unwrap();
        assert_eq!(wh.calls(), 2);

        let mut by_obj = hook(
            "obj.example.com",
            &wh.url,
            &ca.bundle,
            json!([rule(&["*"], &["*"])]),
        );
        by_obj["objectSelector"] =
            json!({"matchExpressions": [{"key": "team", "operator": "In", "values": ["a"]}]});
        let by_obj = [config("obj", vec![by_obj])];
        admission
            .admit(&[], &by_obj, &create(database_def(), json!({"team": "b"})))
            .await
            .unwrap();
        assert_eq!(wh.calls(), 2);
        admission
            .admit(&[], &by_obj, &create(database_def(), json!({"team": "a"})))
            .await
            .unwrap();
        assert_eq!(wh.calls(), 3);
        // An update matches when either the new or the old object is selected.
        let mut update = create(database_def(), json!({"team": "b"}));
        update.operation = Operation::Update;
        update.old_object = Some(json!({"metadata": {"name": "db1", "labels": {"team": "a"}}}));
        admission.admit(&[], &by_obj, &update).await.unwrap();
        assert_eq!(wh.calls(), 4);
    }

    #[tokio::test]
    async fn unreachable_webhook_fails_closed_with_the_real_wording_or_is_ignored() {
        let ca = test_ca();
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let url = format!("https://127.0.0.1:{port}/validate");
        let admission = Admission::new();
        let attrs = create(database_def(), json!({}));
        let mut h = hook("down.example.com", &url, &ca.bundle, all_databases());
        let err = admission
            .admit(&[], &[config("down", vec![h.clone()])], &attrs)
            .await
            .unwrap_err();
        let cause = format!(
            "failed calling webhook \"down.example.com\": failed to call webhook: Post \
             \"https://127.0.0.1:{port}/validate?timeout=10s\": dial tcp 127.0.0.1:{port}: connect: connection refused"
        );
        assert_eq!(
            err,
            AdmissionError::Failed {
                message: cause.clone()
            }
        );
        let status = err.status();
        assert_eq!(status["code"], 500);
        assert_eq!(status["reason"], "InternalError");
        assert_eq!(status["message"], format!("Internal error occurred: {cause}"));
        assert_eq!(status["details"]["causes"][0]["message"], cause);

        h["failurePolicy"] = json!("Ignore");
        let admitted = admission
            .admit(&[config("down", vec![h.clone()])], &[], &attrs)
            .await
            .unwrap();
        assert_eq!(admitted.object, attrs.object);
        admission
            .admit(&[], &[config("down", vec![h])], &attrs)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn timeout_seconds_is_honoured() {
        let ca = test_ca();
        let wh = serve(&ca, |_| None).await;
        let mut h = hook("slow.example.com", &wh.url, &ca.bundle, all_databases());
        h["timeoutSeconds"] = json!(1);
        let start = Instant::now();
        let err = Admission::new()
            .admit(
                &[config("slow", vec![h.clone()])],
                &[],
                &create(database_def(), json!({})),
            )
            .await
            .unwrap_err();
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "took {:?}",
            start.elapsed()
        );
        assert_eq!(
            err.to_string(),
            format!(
                "Internal error occurred: failed calling webhook \"slow.example.com\": failed to call webhook: \
                 Post \"{}?timeout=1s\": context deadline exceeded",
                wh.url
            )
        );
        h["failurePolicy"] = json!("Ignore");
        Admission::new()
            .admit(
                &[],
                &[config("slow", vec![h])],
                &create(database_def(), json!({})),
            )
            .await
            .unwrap();
        assert_eq!(wh.calls(), 2);
    }

    #[tokio::test]
    async fn an_untrusted_certificate_is_a_call_failure() {
        let ca = test_ca();
        // Same name, other key (a rotated CA) and another name altogether: neither is trusted.
        let impostor = test_ca();
        let other = named_ca("someone else's CA");
        let wh = serve(&ca, |r| Some(allow(r))).await;
        let admission = Admission::new();
        let attrs = create(database_def(), json!({}));
        for bundle in [impostor.bundle.as_str(), other.bundle.as_str(), ""] {
            let mut h = hook("tls.example.com", &wh.url, bundle, all_databases());
            let err = admission
                .admit(&[], &[config("tls", vec![h.clone()])], &attrs)
                .await
                .unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "Internal error occurred: failed calling webhook \"tls.example.com\": failed to call webhook: \
                     Post \"{}?timeout=10s\": tls: failed to verify certificate: x509: certificate signed by \
                     unknown authority",
                    wh.url
                )
            );
            h["failurePolicy"] = json!("Ignore");
            admission
                .admit(&[], &[config("tls", vec![h])], &attrs)
                .await
                .unwrap();
        }
        assert_eq!(wh.calls(), 0);
        // With the right bundle the same server is trusted.
        let h = hook("tls.example.com", &wh.url, &ca.bundle, all_databases());
        admission
            .admit(&[], &[config("tls", vec![h])], &attrs)
            .await
            .unwrap();
        assert_eq!(wh.calls(), 1);
    }

    #[tokio::test]
    async fn malformed_responses_are_call_failures() {
        let ca = test_ca();
        let wrong_uid = serve(&ca, |_| {
            Some(json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": {"uid": "nope", "allowed": true}}))
        })
        .await;
        let patching_validator = serve(&ca, |r| {
            Some(answer(
                r,
                json!({"allowed": true, "patchType": "JSONPatch", "patch": json_patch(json!([]))}),
            ))
        })
        .await;
        let bad_patch = serve(&ca, |r| {
            let patch = json_patch(json!([{"op": "replace", "path": "/spec/missing/deep", "value": 1}]));
            Some(answer(
                r,
                json!({"allowed": true, "patchType": "JSONPatch", "patch": patch}),
            ))
        })
        .await;
        let admission = Admission::new();
        let attrs = create(database_def(), json!({}));

        let h = hook("uid.example.com", &wrong_uid.url, &ca.bundle, all_databases());
        let err = admission
            .admit(&[], &[config("c", vec![h])], &attrs)
            .await
            .unwrap_err();
        let AdmissionError::Failed { message } = &err else {
            panic!("{err:?}")
        };
        let uid = wrong_uid.last().1["request"]["uid"].as_str().unwrap().to_string();
        assert_eq!(
            message,
            &format!(
                "failed calling webhook \"uid.example.com\": received invalid webhook response: \
                 expected response.uid=\"{uid}\", got \"nope\""
            )
        );

        let h = hook(
            "v.example.com",
            &patching_validator.url,
            &ca.bundle,
            all_databases(),
        );
        let err = admission
            .admit(&[], &[config("c", vec![h])], &attrs)
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .ends_with("validating webhook may not return response.patch or response.patchType"),
            "{err}"
        );

        // A patch that does not apply fails the request even with failurePolicy Ignore.
        let mut h = hook("m.example.com", &bad_patch.url, &ca.bundle, all_databases());
        h["failurePolicy"] = json!("Ignore");
        let err = admission
            .admit(&[config("c", vec![h])], &[], &attrs)
            .await
            .unwrap_err();
        assert!(matches!(err, AdmissionError::Internal { .. }), "{err:?}");
        assert_eq!(err.code(), 500);
    }

    #[tokio::test]
    async fn delete_sends_the_old_object_and_refuses_patches() {
        let ca = test_ca();
        let mutator = serve(&ca, |r| {
            let patch = json_patch(json!([{"op": "add", "path": "/metadata/labels", "value": {}}]));
            Some(answer(
                r,
                json!({"allowed": true, "patchType": "JSONPatch", "patch": patch}),
            ))
        })
        .await;
        let mut attrs = create(database_def(), json!({"app": "shop"}));
        attrs.operation = Operation::Delete;
        attrs.old_object = attrs.object.take();
        let h = hook(
            "m.example.com",
            &mutator.url,
            &ca.bundle,
            json!([rule(&["*"], &["*"])]),
        );
        let mut h_delete = h.clone();
        h_delete["rules"][0]["operations"] = json!(["DELETE"]);
        let err = Admission::new()
            .admit(&[config("c", vec![h_delete])], &[], &attrs)
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "Internal error occurred: admission webhook \"m.example.com\" attempted to modify the object, \
             which is not supported for this operation"
        );
        let review = mutator.last().1;
        assert_eq!(review["request"]["operation"], "DELETE");
        assert_eq!(review["request"]["object"], Value::Null);
        assert_eq!(
            review["request"]["oldObject"]["metadata"]["labels"]["app"],
            "shop"
        );
    }

    #[tokio::test]
    async fn dry_run_needs_webhooks_without_side_effects() {
        let ca = test_ca();
        let wh = serve(&ca, |r| Some(allow(r))).await;
        let mut attrs = create(database_def(), json!({}));
        attrs.dry_run = true;
        let mut h = hook("fx.example.com", &wh.url, &ca.bundle, all_databases());
        h["sideEffects"] = json!("Some");
        let err = Admission::new()
            .admit(&[], &[config("c", vec![h.clone()])], &attrs)
            .await
            .unwrap_err();
        assert_eq!(
            err,
            AdmissionError::Denied {
                code: 400,
                reason: "BadRequest".into(),
                message: "admission webhook \"fx.example.com\" does not support dry run".into(),
                details: None,
            }
        );
        assert_eq!(wh.calls(), 0);
        h["sideEffects"] = json!("NoneOnDryRun");
        Admission::new()
            .admit(&[], &[config("c", vec![h])], &attrs)
            .await
            .unwrap();
        assert_eq!(wh.last().1["request"]["dryRun"], true);
    }

    #[tokio::test]
    async fn service_references_fail_with_the_service_name() {
        let mut h = hook("svc.example.com", "", "", all_databases());
        h["clientConfig"] =
            json!({"service": {"name": "db-webhook", "namespace": "system", "path": "/validate"}});
        let err = Admission::new()
            .admit(
                &[],
                &[config("c", vec![h.clone()])],
                &create(database_def(), json!({})),
            )
            .await
            .unwrap_err();
        let message = err.to_string();
        assert!(
            message.starts_with(
                "Internal error occurred: failed calling webhook \"svc.example.com\": failed to call webhook: Post \
                 \"https://db-webhook.system.svc:443/validate?timeout=10s\": service \"db-webhook\" not found"
            ),
            "{message}"
        );
        h["failurePolicy"] = json!("Ignore");
        Admission::new()
            .admit(&[], &[config("c", vec![h])], &create(database_def(), json!({})))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn mutating_webhooks_run_in_configuration_name_order_and_are_reinvoked_if_needed() {
        let ca = test_ca();
        // Each webhook adds its label if missing and records the labels it saw.
        let labeller = |label: &'static str| {
            move |r: &Value| {
                let labels = &r["request"]["object"]["metadata"]["labels"];
                if labels.get(label).is_some() {
                    return Some(allow(r));
                }
                let patch = json_patch(
                    json!([{"op": "add", "path": format!("/metadata/labels/{label}"), "value": "1"}]),
                );
                Some(answer(
                    r,
                    json!({"allowed": true, "patchType": "JSONPatch", "patch": patch}),
                ))
            }
        };
        let first = serve(&ca, labeller("first")).await;
        let second = serve(&ca, labeller("second")).await;
        let mut reinvocable = hook("first.example.com", &first.url, &ca.bundle, all_databases());
        reinvocable["reinvocationPolicy"] = json!("IfNeeded");
        let mutating = [
            config(
                "b-second",
                vec![hook(
                    "second.example.com",
                    &second.url,
                    &ca.bundle,
                    all_databases(),
                )],
            ),
            config("a-first", vec![reinvocable]),
        ];
        let admitted = Admission::new()
            .admit(&mutating, &[], &create(database_def(), json!({})))
            .await
            .unwrap();
        assert_eq!(
            admitted.object.unwrap()["metadata"]["labels"],
            json!({"first": "1", "second": "1"})
        );
        assert_eq!((first.calls(), second.calls()), (2, 1));
        // The reinvocation saw the second webhook's label.
        assert_eq!(
            first.last().1["request"]["object"]["metadata"]["labels"]["second"],
            "1"
        );
    }
}
