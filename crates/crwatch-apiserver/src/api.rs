//! The REST semantics of the resource verbs: what create, update, patch, delete, get and list
//! do to objects (metadata, status subresource, generation, finalizers, schema validation,
//! admission, managed fields), independent of HTTP.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use base64::Engine;
use serde_json::{Value, json};

use crate::admission::{Admission, Attributes, Operation};
use crate::faults::Faults;
use crate::meta::{self, meta_str, set_meta};
use crate::patch::{self, PatchType};
use crate::rbac::go_quote;
use crate::registry::{self, GroupResource, Registry, ResourceDef};
use crate::schema;
use crate::selector::{FieldSelector, LabelSelector};
use crate::status::{ApiError, ApiResult, Cause};
use crate::store::{Store, Stored, WriteError};

/// Query parameters of a request.
#[derive(Debug, Clone, Default)]
pub struct Params(pub HashMap<String, String>);

impl Params {
    /// A parameter's value.
    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str)
    }

    fn flag(&self, k: &str) -> bool {
        matches!(self.get(k), Some("true" | "1"))
    }

    /// An integer parameter (`limit`, `timeoutSeconds`, `gracePeriodSeconds`), converted as the
    /// real server's parameter codec converts it (`strconv.ParseInt`): anything else is a 400
    /// with Go's error text.
    pub fn int64(&self, k: &str) -> ApiResult<Option<i64>> {
        let Some(v) = self.get(k) else { return Ok(None) };
        v.parse::<i64>().map(Some).map_err(|e| {
            let why = match e.kind() {
                std::num::IntErrorKind::PosOverflow | std::num::IntErrorKind::NegOverflow => {
                    "value out of range"
                }
                _ => "invalid syntax",
            };
            ApiError::bad_request(format!("strconv.ParseInt: parsing {}: {why}", go_quote(v)))
        })
    }

    /// Check the integer parameters of `ListOptions` (list and watch).
    pub fn check_list_options(&self) -> ApiResult<()> {
        self.int64("limit")?;
        self.int64("timeoutSeconds")?;
        Ok(())
    }

    /// `dryRun=All`.
    pub fn dry_run(&self) -> ApiResult<bool> {
        match self.get("dryRun") {
            None | Some("") => Ok(false),
            Some("All") => Ok(true),
            Some(other) => Err(ApiError::invalid(
                "meta.k8s.io",
                "CreateOptions",
                "",
                vec![Cause::new(
                    "FieldValueNotSupported",
                    "dryRun",
                    format!("Unsupported value: \"{other}\": supported values: \"All\""),
                )],
            )),
        }
    }
}

/// How unknown and duplicate fields are treated (`fieldValidation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldValidation {
    /// Drop them silently.
    Ignore,
    /// Drop them and say so in `Warning` headers (the default).
    Warn,
    /// Reject the request.
    Strict,
}

impl FieldValidation {
    fn from_params(p: &Params) -> ApiResult<Self> {
        match p.get("fieldValidation") {
            None | Some("") | Some("Warn") => Ok(FieldValidation::Warn),
            Some("Ignore") => Ok(FieldValidation::Ignore),
            Some("Strict") => Ok(FieldValidation::Strict),
            Some(other) => Err(ApiError::bad_request(format!(
                "fieldValidation must be one of Ignore, Warn, or Strict, got {other}"
            ))),
        }
    }
}

/// One resource request after routing.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// The resource at the requested version.
    pub def: Arc<ResourceDef>,
    /// Namespace from the URL, empty for cluster scope or all namespaces.
    pub namespace: String,
    /// Object name from the URL, empty for collections.
    pub name: String,
    /// `status`, `scale` or empty.
    pub sub: String,
    /// Query parameters.
    pub params: Params,
    /// The client's User-Agent (for the default field manager).
    pub user_agent: String,
    /// The authenticated user.
    pub user: String,
}

/// A response body with its code and any warnings for `Warning` headers.
#[derive(Debug, Clone)]
pub struct Out {
    /// HTTP status code.
    pub code: u16,
    /// The body.
    pub body: Value,
    /// Warnings.
    pub warnings: Vec<String>,
}

impl Out {
    fn new(code: u16, body: Value, warnings: Vec<String>) -> Self {
        Out { code, body, warnings }
    }
}

/// The API: registry, store, admission and faults together.
pub struct Api {
    pub(crate) registry: RwLock<Registry>,
    pub(crate) store: Arc<Store>,
    pub(crate) admission: Admission,
    pub(crate) faults: Faults,
    /// The feature gates in force (`Config::feature_gates`).
    pub(crate) features: crate::features::FeatureGates,
}

/// Namespaces the NamespaceLifecycle admission plugin never lets anyone delete.
pub const IMMORTAL_NAMESPACES: [&str; 3] = ["default", "kube-system", "kube-public"];

/// Finalizer the server puts on a CRD while it deletes the CRD's objects.
pub const CRD_CLEANUP_FINALIZER: &str = "customresourcecleanup.apiextensions.k8s.io";

fn gr_of(def: &ResourceDef) -> GroupResource {
    def.key()
}

fn obj_rv(obj: &Value) -> u64 {
    meta_str(obj, "resourceVersion").parse().unwrap_or(0)
}

fn without_meta_status(obj: &Value, drop_status: bool) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.as_object_mut() {
        m.remove("metadata");
        if drop_status {
            m.remove("status");
        }
    }
    o
}

/// Write errors from the store, worded for the resource.
fn write_error(e: WriteError, def: &ResourceDef, name: &str) -> ApiError {
    match e {
        WriteError::Exists => ApiError::already_exists(&def.group, &def.plural, name),
        WriteError::Missing => ApiError::not_found(&def.group, &def.plural, name),
        WriteError::Stale => ApiError::stale(&def.group, &def.plural, name),
    }
}

impl Api {
    pub(crate) fn new(store: Arc<Store>, faults: Faults) -> Self {
        Api {
            registry: RwLock::new(Registry::with_builtins()),
            store,
            admission: Admission::new(),
            faults,
            features: crate::features::FeatureGates::default(),
        }
    }

    /// The current registry (cheap clone of the resource list).
    pub fn registry(&self) -> Registry {
        self.registry.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn with_registry_mut(&self, f: impl FnOnce(&mut Registry)) {
        let mut r = self.registry.write().unwrap_or_else(|p| p.into_inner());
        f(&mut r);
    }

    /// The object as served at `def`'s version (converted when that version's schema differs
    /// from the storage schema, as events.k8s.io/v1 Events do).
    pub fn present(def: &ResourceDef, obj: &Value) -> Value {
        let mut o = crate::convert::to_version(def, obj);
        o["apiVersion"] = json!(def.api_version());
        o["kind"] = json!(def.kind);
        o
    }

    fn current(&self, ctx: &Ctx) -> ApiResult<Arc<Value>> {
        self.store
            .get(&gr_of(&ctx.def), &(ctx.namespace.clone(), ctx.name.clone()))
            .ok_or_else(|| ApiError::not_found(&ctx.def.group, &ctx.def.plural, &ctx.name))
    }

    /// GET one object (or its status / scale).
    pub fn get(&self, ctx: &Ctx) -> ApiResult<Value> {
        let obj = self.current(ctx)?;
        if ctx.sub == "scale" {
            return self.scale_of(&ctx.def, &obj);
        }
        Ok(Self::present(&ctx.def, &obj))
    }

    /// Parse the selectors of a list or watch.
    pub fn selectors(&self, ctx: &Ctx) -> ApiResult<(LabelSelector, FieldSelector)> {
        let labels = LabelSelector::parse(ctx.params.get("labelSelector").unwrap_or_default())
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let mut allowed = vec!["metadata.name", "metadata.namespace"];
        match (ctx.def.group.as_str(), ctx.def.kind.as_str()) {
            // As `AddFieldLabelConversionsForEvent` of events.k8s.io/v1: mapped onto the stored
            // core v1 fields below.
            ("events.k8s.io", "Event") => allowed.extend([
                "regarding.kind",
                "regarding.namespace",
                "regarding.name",
                "regarding.uid",
                "regarding.apiVersion",
                "regarding.resourceVersion",
                "regarding.fieldPath",
                "reason",
                "reportingController",
                "source",
                "type",
            ]),
            ("", "Secret") => allowed.push("type"),
            ("", "Namespace") => allowed.push("status.phase"),
            // The field labels of the built-in kinds' `GetAttrs` (pkg/registry/*/strategy.go).
            ("", "Pod") => allowed.extend([
                "spec.nodeName",
                "spec.restartPolicy",
                "spec.schedulerName",
                "spec.serviceAccountName",
                "spec.hostNetwork",
                "status.phase",
                "status.podIP",
                "status.nominatedNodeName",
            ]),
            ("", "Node") => allowed.push("spec.unschedulable"),
            ("", "ReplicationController") | ("apps", "ReplicaSet") => allowed.push("status.replicas"),
            ("batch", "Job") => allowed.push("status.successful"),
            ("", "Service") => allowed.extend(["spec.clusterIP", "spec.type"]),
            ("certificates.k8s.io", "CertificateSigningRequest") => allowed.push("spec.signerName"),
            ("", "Event") => allowed.extend([
                "involvedObject.kind",
                "involvedObject.namespace",
                "involvedObject.name",
                "involvedObject.uid",
                "involvedObject.apiVersion",
                "involvedObject.resourceVersion",
                "involvedObject.fieldPath",
                "reason",
                "reportingComponent",
                "source",
                "type",
            ]),
            _ => {}
        }
        let mut fields = FieldSelector::parse(ctx.params.get("fieldSelector").unwrap_or_default(), &allowed)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        for term in &mut fields.terms {
            term.0 = crate::convert::storage_field(&ctx.def, &term.0);
        }
        Ok((labels, fields))
    }

    /// LIST a collection with selectors, paging and resourceVersion semantics, as one value
    /// (the whole body built at once; [`Api::list_page`] writes it a chunk at a time).
    pub async fn list(&self, ctx: &Ctx) -> ApiResult<Value> {
        Ok(self.list_page(ctx).await?.into_value())
    }

    /// LIST a collection with selectors, paging and resourceVersion semantics: the page's
    /// objects (the stored versions, shared) and the list's metadata, to be written with
    /// [`ListPage::chunks`]. A page costs what it holds: it starts at its continue key and
    /// reads no further than one match past its limit (see [`Store::list_page`]).
    pub async fn list_page(&self, ctx: &Ctx) -> ApiResult<ListPage> {
        let (labels, fields) = self.selectors(ctx)?;
        let gr = gr_of(&ctx.def);
        let ns = (!ctx.namespace.is_empty()).then_some(ctx.namespace.as_str());
        let rv = ctx.params.get("resourceVersion").unwrap_or_default();
        let rv_match = ctx.params.get("resourceVersionMatch").unwrap_or_default();
        ctx.params.check_list_options()?;
        // KEP-5866's `shardSelector` (only behind its gate; ignored otherwise, as upstream),
        // decoded after `limit` and the selectors as the real parameter conversion does.
        let shard = crate::shard::from_params(self.features, &ctx.params)?;
        // As etcd's: zero or a negative limit means no limit.
        let limit = usize::try_from(ctx.params.int64("limit")?.unwrap_or(0).max(0)).unwrap_or(usize::MAX);
        let cont = ctx.params.get("continue").unwrap_or_default();
        validate_list_options(rv, rv_match, cont)?;
        // Where to read (None: the newest revision), and the key to start after.
        let (at, start_after) = if !cont.is_empty() {
            if !rv.is_empty() && rv != "0" {
                return Err(ApiError::bad_request(
                    "specifying resource version is not allowed when using continue",
                ));
            }
            let (rev, start) = decode_continue(cont)?;
            // A token from a 410 (`rev` None) continues at the newest state (an inconsistent list).
            (rev, Some(start))
        } else if rv_match == "Exact" {
            let want: u64 = rv
                .parse()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv}")))?;
            self.wait_for_revision(want).await?;
            (Some(want), None)
        } else {
            if !rv.is_empty() && rv != "0" {
                let want: u64 = rv
                    .parse()
                    .map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv}")))?;
                self.wait_for_revision(want).await?;
            }
            (None, None)
        };
        let after = start_after.as_deref().map(continue_key);
        let unfiltered = labels.is_empty() && fields.is_empty() && shard.is_none();
        let query = crate::store::PageQuery {
            ns,
            at,
            after: after.as_ref(),
            limit,
            // Only an unfiltered list knows how many are left (as etcd counts keys).
            count_remaining: unfiltered,
        };
        // Objects are parsed only for selectors: an unfiltered list writes the stored text.
        let selectors = !labels.is_empty() || !fields.is_empty();
        let page = match self.store.list_page_stored(&gr, &query, &mut |o| {
            // The shard first: it reads only the uid or namespace, and drops most objects
            // before the selectors parse them.
            shard.as_ref().is_none_or(|s| s.matches_stored(o))
                && (!selectors || {
                    let o = o.value();
                    labels.matches_object(&o) && fields.matches(&o)
                })
        }) {
            Ok(page) => page,
            Err(_) if !cont.is_empty() => {
                let mut e = ApiError::gone(CONTINUE_EXPIRED);
                e.continue_token = start_after.as_deref().map(encode_continue_latest);
                return Err(e);
            }
            Err(_) => {
                return Err(ApiError::gone(
                    "The resourceVersion for the provided list is too old.",
                ));
            }
        };
        let mut list_meta = json!({"resourceVersion": page.rev.to_string()});
        if page.more
            && let Some((ns, name)) = page.last_key()
        {
            let start = format!("{ns}/{name}");
            list_meta["continue"] = json!(encode_continue(page.rev, &start));
            if let Some(remaining) = page.remaining.filter(|_| unfiltered) {
                list_meta["remainingItemCount"] = json!(remaining);
            }
        }
        // Tells the client the list is its shard (absent: the server did not filter).
        if let Some(shard) = &shard {
            list_meta["shardInfo"] = shard.shard_info();
        }
        Ok(ListPage {
            def: ctx.def.clone(),
            metadata: list_meta,
            items: page.items,
        })
    }

    /// Wait (up to 3 s, as the real server does) until the store reaches `rev`.
    pub(crate) async fn wait_for_revision(&self, rev: u64) -> ApiResult<()> {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
        let mut rx = self.store.subscribe();
        while self.store.revision() < rev {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(_) => continue,
                Err(_) => {
                    let mut e = ApiError::new(
                        504,
                        "Timeout",
                        format!(
                            "Timeout: Too large resource version: {rev}, current: {}",
                            self.store.revision()
                        ),
                    );
                    e.details = Some(Box::new(
                        json!({"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}], "retryAfterSeconds": 1}),
                    ));
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// A create or update body, decoded and checked as the real server does (its wording for
    /// malformed JSON and a kind or apiVersion the URL's type cannot take: `crate::decode`).
    fn decode_object(&self, ctx: &Ctx, body: &[u8]) -> ApiResult<crate::decode::Decoded> {
        let registry = self.registry();
        crate::decode::object_body(body, &ctx.def, &ctx.sub, &|av, kind| {
            registry.by_kind(av, kind).is_some()
        })
    }

    fn unknown_field_outcome(
        ctx: &Ctx,
        unknown: &[String],
        duplicates: &[String],
        warnings: &mut Vec<String>,
    ) -> ApiResult<()> {
        if unknown.is_empty() && duplicates.is_empty() {
            return Ok(());
        }
        let mut msgs: Vec<String> = duplicates
            .iter()
            .map(|d| format!("duplicate field \"{d}\""))
            .collect();
        msgs.extend(unknown.iter().map(|u| format!("unknown field \"{u}\"")));
        match FieldValidation::from_params(&ctx.params)? {
            FieldValidation::Ignore => Ok(()),
            FieldValidation::Warn => {
                warnings.extend(msgs);
                Ok(())
            }
            FieldValidation::Strict => Err(ApiError::bad_request(format!(
                "{kind} in version \"{v}\" cannot be handled as a {kind}: strict decoding error: {}",
                msgs.join(", "),
                kind = ctx.def.kind,
                v = ctx.def.version
            ))),
        }
    }

    /// Schema pruning, defaulting and validation for custom resources; unknown-field paths are returned.
    fn apply_schema(def: &ResourceDef, obj: &mut Value) -> (Vec<String>, Vec<Cause>) {
        let Some(schema) = &def.schema else {
            return (vec![], vec![]);
        };
        let unknown = schema::prune(schema, obj);
        schema::apply_defaults(schema, obj);
        let causes = schema::validate(schema, obj)
            .into_iter()
            .map(|e| Cause::new(e.reason(), e.field.clone(), e.message()))
            .collect();
        (unknown, causes)
    }

    fn namespace_labels(&self, ns: &str) -> std::collections::BTreeMap<String, String> {
        let gr = GroupResource {
            group: String::new(),
            resource: "namespaces".into(),
        };
        self.store
            .get(&gr, &(String::new(), ns.to_string()))
            .map(|n| crate::selector::labels_of(&n))
            .unwrap_or_default()
    }

    fn webhook_configs(&self, resource: &str) -> Vec<Value> {
        let gr = GroupResource {
            group: "admissionregistration.k8s.io".into(),
            resource: resource.into(),
        };
        let mut list: Vec<Value> = self
            .store
            .list(&gr, None)
            .0
            .iter()
            .map(|v| (**v).clone())
            .collect();
        list.sort_by(|a, b| meta_str(a, "name").cmp(meta_str(b, "name")));
        list
    }

    /// Run admission webhooks; returns the (possibly mutated) object.
    async fn admit(
        &self,
        ctx: &Ctx,
        operation: Operation,
        object: Option<Value>,
        old: Option<&Value>,
        warnings: &mut Vec<String>,
    ) -> ApiResult<Option<Value>> {
        // Webhook configurations themselves are never subject to webhooks, as on the real server.
        if ctx.def.group == "admissionregistration.k8s.io" {
            return Ok(object);
        }
        let mutating = self.webhook_configs("mutatingwebhookconfigurations");
        let validating = self.webhook_configs("validatingwebhookconfigurations");
        if mutating.is_empty() && validating.is_empty() {
            return Ok(object);
        }
        let name = object
            .as_ref()
            .or(old)
            .map(|o| meta_str(o, "name").to_string())
            .unwrap_or_else(|| ctx.name.clone());
        let ns_labels = if ctx.def.kind == "Namespace" && ctx.def.group.is_empty() {
            object
                .as_ref()
                .or(old)
                .map(crate::selector::labels_of)
                .unwrap_or_default()
        } else {
            self.namespace_labels(&ctx.namespace)
        };
        let options_kind = match operation {
            Operation::Create => "CreateOptions",
            Operation::Update => "UpdateOptions",
            Operation::Delete => "DeleteOptions",
        };
        let attrs = Attributes {
            operation,
            def: ctx.def.clone(),
            subresource: ctx.sub.clone(),
            name,
            namespace: ctx.namespace.clone(),
            object: object.map(|o| Self::present(&ctx.def, &o)),
            old_object: old.map(|o| Self::present(&ctx.def, o)),
            options: json!({"kind": options_kind, "apiVersion": "meta.k8s.io/v1"}),
            dry_run: ctx.params.dry_run()?,
            user: ctx.user.clone(),
            namespace_labels: ns_labels,
        };
        let admitted = self
            .admission
            .admit_into(&mutating, &validating, &attrs, warnings)
            .await;
        admitted.map_err(|e| {
            let s = e.status();
            let mut err = ApiError::new(
                e.code(),
                s.get("reason").and_then(Value::as_str).unwrap_or("InternalError"),
                s.get("message").and_then(Value::as_str).unwrap_or_default(),
            );
            err.details = s.get("details").cloned().map(Box::new);
            // As on the real server, the warnings so far go out with the error.
            err.warnings = warnings.clone().into_boxed_slice();
            err
        })
    }

    /// Everything a create or update does to the new object before it is stored.
    async fn prepare(
        &self,
        ctx: &Ctx,
        old: Option<&Value>,
        mut new: Value,
        duplicates: &[String],
        warnings: &mut Vec<String>,
    ) -> ApiResult<Value> {
        let def = ctx.def.clone();
        let storage_av = def.storage_api_version();
        // Fields the requested version's schema lacks (for built-in kinds with a known schema),
        // then the object in the storage schema.
        // However it was made (body, patch, apply), the object nests no deeper than the server
        // can walk; its managedFields may mirror it a few levels further down.
        if crate::decode::object_depth(&new) > crate::decode::MAX_DEPTH {
            crate::decode::drop_deep(new);
            return Err(crate::decode::too_deep_error());
        }
        // A built-in kind is decoded into its Go type first: a value of the wrong type fails
        // the request, a field the type lacks is dropped (and reported below).
        let mut unknown_builtin = crate::typed::decode(&def, &mut new).map_err(|e| {
            ApiError::bad_request(format!(
                "{kind} in version \"{v}\" cannot be handled as a {kind}: {}",
                e.0,
                kind = def.kind,
                v = def.version
            ))
        })?;
        new = crate::convert::to_storage(&def, new);
        if !new.get("metadata").is_some_and(Value::is_object) {
            new["metadata"] = json!({});
        }
        // Namespace from the URL.
        if def.namespaced {
            let body_ns = meta_str(&new, "namespace").to_string();
            if !body_ns.is_empty() && body_ns != ctx.namespace {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            set_meta(&mut new, "namespace", json!(ctx.namespace));
        } else {
            set_meta(&mut new, "namespace", Value::Null);
        }
        let now = meta::now();
        match old {
            None => {
                if meta_str(&new, "name").is_empty() {
                    let gen_name = meta_str(&new, "generateName").to_string();
                    if gen_name.is_empty() {
                        return Err(ApiError::invalid(
                            &def.group,
                            &def.kind,
                            "",
                            vec![Cause::new(
                                "FieldValueRequired",
                                "metadata.name",
                                "Required value: name or generateName is required",
                            )],
                        ));
                    }
                    set_meta(&mut new, "name", json!(meta::generate_name(&gen_name)));
                }
                set_meta(&mut new, "uid", json!(uuid::Uuid::new_v4().to_string()));
                set_meta(&mut new, "creationTimestamp", json!(now));
                set_meta(&mut new, "resourceVersion", Value::Null);
                set_meta(&mut new, "deletionTimestamp", Value::Null);
                set_meta(&mut new, "deletionGracePeriodSeconds", Value::Null);
                set_meta(&mut new, "selfLink", Value::Null);
                if def.has_generation {
                    set_meta(&mut new, "generation", json!(1));
                } else {
                    set_meta(&mut new, "generation", Value::Null);
                }
                if def.status_subresource
                    && ctx.sub.is_empty()
                    && let Some(m) = new.as_object_mut()
                {
                    m.remove("status");
                }
            }
            Some(old) => {
                let name = meta_str(old, "name").to_string();
                if meta_str(&new, "name") != name {
                    return Err(ApiError::bad_request(format!(
                        "the name of the object ({}) does not match the name on the URL ({name})",
                        meta_str(&new, "name")
                    )));
                }
                let body_uid = meta_str(&new, "uid").to_string();
                if !body_uid.is_empty() && body_uid != meta_str(old, "uid") {
                    return Err(ApiError::conflict(
                        &def.group,
                        &def.plural,
                        &name,
                        &format!(
                            "Precondition failed: UID in precondition: {body_uid}, UID in object meta: {}",
                            meta_str(old, "uid")
                        ),
                    ));
                }
                for k in [
                    "uid",
                    "creationTimestamp",
                    "deletionTimestamp",
                    "deletionGracePeriodSeconds",
                    "generation",
                ] {
                    set_meta(
                        &mut new,
                        k,
                        old["metadata"].get(k).cloned().unwrap_or(Value::Null),
                    );
                }
                match ctx.sub.as_str() {
                    "status" => {
                        // A status write changes only .status.
                        let status = new.get("status").cloned();
                        let mut merged = old.clone();
                        match status {
                            Some(s) => merged["status"] = s,
                            None => {
                                if let Some(m) = merged.as_object_mut() {
                                    m.remove("status");
                                }
                            }
                        }
                        set_meta(
                            &mut merged,
                            "resourceVersion",
                            new["metadata"]["resourceVersion"].clone(),
                        );
                        set_meta(
                            &mut merged,
                            "managedFields",
                            new["metadata"]["managedFields"].clone(),
                        );
                        new = merged;
                    }
                    "ephemeralcontainers" => {
                        // Only spec.ephemeralContainers changes (the subresource's strategy
                        // copies everything else from the stored pod).
                        let ephemeral = new.pointer("/spec/ephemeralContainers").cloned();
                        let mut merged = old.clone();
                        merged["spec"]["ephemeralContainers"] = ephemeral.unwrap_or(Value::Null);
                        if merged["spec"]["ephemeralContainers"].is_null()
                            && let Some(spec) = merged["spec"].as_object_mut()
                        {
                            spec.remove("ephemeralContainers");
                        }
                        for k in ["resourceVersion", "managedFields"] {
                            set_meta(&mut merged, k, new["metadata"][k].clone());
                        }
                        new = merged;
                    }
                    _ if def.status_subresource => match old.get("status") {
                        Some(s) => new["status"] = s.clone(),
                        None => {
                            if let Some(m) = new.as_object_mut() {
                                m.remove("status");
                            }
                        }
                    },
                    _ => {}
                }
            }
        }
        new["apiVersion"] = json!(storage_av);
        new["kind"] = json!(def.kind);
        // ObjectMeta's maps and lists are `omitempty`: an empty one is not stored (so a
        // client-side `kubectl apply`/`diff` sending `annotations: {}` changes nothing).
        if let Some(m) = new["metadata"].as_object_mut() {
            for k in ["labels", "annotations", "finalizers", "ownerReferences"] {
                let empty = |v: &Value| {
                    v.as_object().is_some_and(|o| o.is_empty()) || v.as_array().is_some_and(|a| a.is_empty())
                };
                if m.get(k).is_some_and(empty) {
                    m.remove(k);
                }
            }
        }
        self.kind_defaults(&def, &mut new)?;
        crate::strategy::defaults(&def, old, &mut new, &|| self.allocated(), &|| {
            self.default_storage_class()
        });

        let (mut unknown, mut causes) = Self::apply_schema(&def, &mut new);
        // CEL x-kubernetes-validations rules (src/cel.rs), run after the schema checks as the real strategy runs them.
        causes.extend(crate::cel::rule_causes(&def, &new, old, &causes, warnings));
        unknown.append(&mut unknown_builtin);
        Self::unknown_field_outcome(ctx, &unknown, duplicates, warnings)?;
        let name = meta_str(&new, "name").to_string();
        let label_only = def.kind == "Namespace" && def.group.is_empty();
        // RBAC objects are named as path segments (`system:discovery`), not DNS subdomains.
        let mut meta_causes = if crate::rbac::is_guarded(&def.group, &def.plural) {
            crate::rbac::name_problems(&name)
        } else {
            meta::name_problems(&name, label_only)
        };
        meta_causes.extend(meta::label_problems(&new));
        meta_causes.append(&mut causes);
        causes = meta_causes;
        causes.extend(self.kind_validation(&def, old, &new));
        causes.extend(crate::typed::missing_required(&def, &new));
        causes.extend(crate::strategy::causes(&def, &new));
        if let Some(old) = old {
            causes.extend(crate::strategy::update_causes(&def, old, &new));
        }
        // The schema's required fields and the kind's own checks may name the same field once.
        let mut seen = std::collections::HashSet::new();
        causes.retain(|c| seen.insert((c.field.clone(), c.message.clone())));

        if let Some(old) = old {
            // Finalizers: none may be added once deletion started.
            if !meta_str(old, "deletionTimestamp").is_empty() {
                let before = meta::finalizers(old);
                let added: Vec<String> = meta::finalizers(&new)
                    .into_iter()
                    .filter(|f| !before.contains(f))
                    .collect();
                if !added.is_empty() {
                    let list = added
                        .iter()
                        .map(|f| format!("{f:?}"))
                        .collect::<Vec<_>>()
                        .join(", ");
                    causes.push(Cause::new(
                        "FieldValueForbidden",
                        "metadata.finalizers",
                        format!(
                            "Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers []string{{{list}}}"
                        ),
                    ));
                }
            }
            if def.has_generation {
                let drop_status = def.status_subresource;
                if without_meta_status(old, drop_status) != without_meta_status(&new, drop_status) {
                    let g = old["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
                    set_meta(&mut new, "generation", json!(g));
                }
            }
        }
        if !causes.is_empty() {
            return Err(ApiError::invalid(&def.group, &def.kind, &name, causes));
        }
        if old.is_none() && def.namespaced {
            self.check_namespace_open(&def, &name, &ctx.namespace)?;
        }

        let operation = if old.is_some() {
            Operation::Update
        } else {
            Operation::Create
        };
        let before_admission = new.clone();
        let admitted = self.admit(ctx, operation, Some(new), old, warnings).await?;
        // Webhooks see (and mutate) the object at the requested version; without any, it comes
        // back as it went in.
        let mut new = match admitted {
            Some(o) if o == before_admission => o,
            Some(o) => crate::convert::to_storage(&def, o),
            None => before_admission.clone(),
        };
        if new != before_admission {
            new["apiVersion"] = json!(storage_av);
            let (_, mut causes) = Self::apply_schema(&def, &mut new);
            causes.extend(crate::cel::rule_causes(&def, &new, old, &causes, &mut Vec::new()));
            if !causes.is_empty() {
                return Err(ApiError::invalid(&def.group, &def.kind, &name, causes));
            }
        }
        if def.kind == "CustomResourceDefinition" && def.group == "apiextensions.k8s.io" {
            self.prepare_crd(&mut new, old)?;
        }
        Ok(new)
    }

    /// The NamespaceLifecycle admission plugin: no namespace, or one being terminated, takes no
    /// new objects (worded as `admission.NewForbidden` words it, naming the resource and object).
    fn check_namespace_open(&self, def: &ResourceDef, name: &str, ns: &str) -> ApiResult<()> {
        let gr = GroupResource {
            group: String::new(),
            resource: "namespaces".into(),
        };
        match self.store.get(&gr, &(String::new(), ns.to_string())) {
            None => Err(ApiError::not_found("", "namespaces", ns)),
            Some(n) if !meta_str(&n, "deletionTimestamp").is_empty() => {
                let resource = if def.group.is_empty() {
                    def.plural.clone()
                } else {
                    format!("{}.{}", def.plural, def.group)
                };
                let why =
                    format!("unable to create new content in namespace {ns} because it is being terminated");
                let mut e = ApiError::forbidden(if name.is_empty() {
                    format!("{resource} is forbidden: {why}")
                } else {
                    format!("{resource} \"{name}\" is forbidden: {why}")
                });
                let mut details = json!({"name": name, "kind": def.plural, "causes": [{"reason": "NamespaceTerminating", "message": format!("namespace {ns} is being terminated"), "field": "metadata.namespace"}]});
                if !def.group.is_empty() {
                    details["group"] = json!(def.group);
                }
                e.details = Some(Box::new(details));
                Err(e)
            }
            Some(_) => Ok(()),
        }
    }

    /// The cluster IPs and node ports existing Services hold.
    fn allocated(&self) -> crate::strategy::Allocated {
        let gr = GroupResource {
            group: String::new(),
            resource: "services".into(),
        };
        let mut out = crate::strategy::Allocated::default();
        for svc in self.store.list(&gr, None).0 {
            if let Some(ips) = svc.pointer("/spec/clusterIPs").and_then(Value::as_array) {
                out.cluster_ips
                    .extend(ips.iter().filter_map(Value::as_str).map(str::to_string));
            }
            if let Some(ports) = svc.pointer("/spec/ports").and_then(Value::as_array) {
                out.node_ports.extend(
                    ports
                        .iter()
                        .filter_map(|p| p.get("nodePort").and_then(Value::as_u64))
                        .filter_map(|p| u16::try_from(p).ok()),
                );
            }
        }
        out
    }

    /// The StorageClass marked default (the newest, if several are), as the
    /// DefaultStorageClass admission plugin picks it.
    fn default_storage_class(&self) -> Option<String> {
        let gr = GroupResource {
            group: "storage.k8s.io".into(),
            resource: "storageclasses".into(),
        };
        self.store
            .list(&gr, None)
            .0
            .into_iter()
            .filter(|sc| {
                [
                    "storageclass.kubernetes.io/is-default-class",
                    "storageclass.beta.kubernetes.io/is-default-class",
                ]
                .iter()
                .any(|a| {
                    sc.pointer("/metadata/annotations")
                        .and_then(|m| m.get(*a))
                        .and_then(Value::as_str)
                        == Some("true")
                })
            })
            .max_by(|a, b| meta_str(a, "creationTimestamp").cmp(meta_str(b, "creationTimestamp")))
            .map(|sc| meta_str(&sc, "name").to_string())
    }

    /// Defaults the real server (or its controllers) fill in for built-in kinds.
    fn kind_defaults(&self, def: &ResourceDef, obj: &mut Value) -> ApiResult<()> {
        match (def.group.as_str(), def.kind.as_str()) {
            ("", "Secret") => {
                if let Some(string_data) = obj.as_object_mut().and_then(|m| m.remove("stringData")) {
                    let mut data = obj.get("data").cloned().unwrap_or_else(|| json!({}));
                    if let Some(sd) = string_data.as_object() {
                        for (k, v) in sd {
                            let s = v.as_str().unwrap_or_default();
                            data[k] = json!(base64::engine::general_purpose::STANDARD.encode(s));
                        }
                    }
                    obj["data"] = data;
                }
                if let Some(data) = obj.get("data").and_then(Value::as_object) {
                    for (k, v) in data {
                        let ok = v
                            .as_str()
                            .is_some_and(|s| base64::engine::general_purpose::STANDARD.decode(s).is_ok());
                        if !ok {
                            return Err(ApiError::bad_request(format!(
                                "Secret in version \"v1\" cannot be handled as a Secret: illegal base64 data at input byte 0 (data.{k})"
                            )));
                        }
                    }
                }
                if obj.get("type").is_none_or(Value::is_null) {
                    obj["type"] = json!("Opaque");
                }
            }
            ("", "Namespace") => {
                // As the real server (NamespaceDefaultLabelName): always the namespace's name, so
                // webhooks' namespaceSelectors can select namespaces by name.
                let name = meta_str(obj, "name").to_string();
                if !obj["metadata"].get("labels").is_some_and(Value::is_object) {
                    obj["metadata"]["labels"] = json!({});
                }
                obj["metadata"]["labels"]["kubernetes.io/metadata.name"] = json!(name);
                if obj.pointer("/spec/finalizers").is_none() {
                    obj["spec"] = json!({"finalizers": ["kubernetes"]});
                }
                if obj.pointer("/status/phase").is_none() {
                    obj["status"] = json!({"phase": "Active"});
                }
            }
            ("", "Event") => {
                // Stored as Go encodes a core v1 Event, whichever version it was written at.
                *obj = crate::convert::normalize_storage(def, obj.take());
            }
            _ => {}
        }
        Ok(())
    }

    fn kind_validation(&self, def: &ResourceDef, _old: Option<&Value>, obj: &Value) -> Vec<Cause> {
        let mut out = vec![];
        // ValidateAnnotations: keys and values together at most 256 KiB.
        let annotations: usize = obj
            .pointer("/metadata/annotations")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
                    .sum()
            })
            .unwrap_or(0);
        if annotations > MAX_ANNOTATIONS_BYTES {
            out.push(too_long("metadata.annotations", MAX_ANNOTATIONS_BYTES));
        }
        // ValidateConfigMap / ValidateSecret: the data together at most 1 MiB (`core.MaxSecretSize`),
        // counted in decoded bytes. The ConfigMap error is about the whole object (field `[]`).
        if def.group.is_empty() && matches!(def.kind.as_str(), "ConfigMap" | "Secret") {
            let decoded = |v: &Value| {
                v.as_str()
                    .map(|s| {
                        base64::engine::general_purpose::STANDARD
                            .decode(s)
                            .map_or(s.len(), |b| b.len())
                    })
                    .unwrap_or(0)
            };
            let sum = |field: &str, f: &dyn Fn(&Value) -> usize| -> usize {
                obj.get(field)
                    .and_then(Value::as_object)
                    .map(|m| m.values().map(f).sum())
                    .unwrap_or(0)
            };
            let (total, field) = if def.kind == "ConfigMap" {
                let text = sum("data", &|v: &Value| v.as_str().map_or(0, str::len));
                (text + sum("binaryData", &decoded), "[]")
            } else {
                (sum("data", &decoded), "data")
            };
            if total > MAX_SECRET_SIZE {
                out.push(too_long(field, MAX_SECRET_SIZE));
            }
        }
        if def.group == "apps" && def.kind == "Deployment" {
            let selector = obj.pointer("/spec/selector");
            match selector {
                None => out.push(Cause::new(
                    "FieldValueRequired",
                    "spec.selector",
                    "Required value",
                )),
                Some(sel) => {
                    let template_labels = obj
                        .pointer("/spec/template/metadata/labels")
                        .cloned()
                        .unwrap_or_else(|| json!({}));
                    let matches = LabelSelector::from_object(sel)
                        .map(|s| s.matches_object(&json!({"metadata": {"labels": template_labels}})))
                        .unwrap_or(false);
                    if !matches {
                        out.push(Cause::new(
                            "FieldValueInvalid",
                            "spec.template.metadata.labels",
                            "Invalid value: map[string]string{...}: `selector` does not match template `labels`",
                        ));
                    }
                }
            }
            if obj
                .pointer("/spec/template/spec/containers")
                .and_then(Value::as_array)
                .is_none_or(Vec::is_empty)
            {
                out.push(Cause::new(
                    "FieldValueRequired",
                    "spec.template.spec.containers",
                    "Required value",
                ));
            }
        }
        out
    }

    /// Validate a CRD, default its names and set its status the way the API server's
    /// controllers do once the names are accepted.
    fn prepare_crd(&self, crd: &mut Value, old: Option<&Value>) -> ApiResult<()> {
        let name = meta_str(crd, "name").to_string();
        let s = |p: &str| {
            crd.pointer(p)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let (group, plural, kind) = (s("/spec/group"), s("/spec/names/plural"), s("/spec/names/kind"));
        let mut causes = vec![];
        for (field, v) in [
            ("spec.group", &group),
            ("spec.names.plural", &plural),
            ("spec.names.kind", &kind),
        ] {
            if v.is_empty() {
                causes.push(Cause::new("FieldValueRequired", field, "Required value"));
            }
        }
        if !group.is_empty() && !plural.is_empty() && name != format!("{plural}.{group}") {
            causes.push(Cause::new(
                "FieldValueInvalid",
                "metadata.name",
                format!("Invalid value: \"{name}\": must be spec.names.plural+\".\"+spec.group"),
            ));
        }
        let scope = s("/spec/scope");
        if scope != "Namespaced" && scope != "Cluster" {
            causes.push(Cause::new(
                "FieldValueNotSupported",
                "spec.scope",
                format!("Unsupported value: \"{scope}\": supported values: \"Cluster\", \"Namespaced\""),
            ));
        }
        let versions = crd
            .pointer("/spec/versions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if versions.is_empty() {
            causes.push(Cause::new(
                "FieldValueRequired",
                "spec.versions",
                "Required value: must have exactly one version marked as storage version",
            ));
        }
        let storage: Vec<&Value> = versions
            .iter()
            .filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
            .collect();
        if !versions.is_empty() && storage.len() != 1 {
            causes.push(Cause::new(
                "FieldValueInvalid",
                "spec.versions",
                format!("Invalid value: []apiextensions.CustomResourceDefinitionVersion{{...}}: must have exactly one version marked as storage version, status.storedVersions[{}]", storage.len()),
            ));
        }
        for (i, v) in versions.iter().enumerate() {
            if let Some(schema) = v.pointer("/schema/openAPIV3Schema") {
                for e in
                    schema::check_structural(schema, &format!("spec.versions[{i}].schema.openAPIV3Schema"))
                {
                    causes.push(Cause::new(e.reason(), e.field.clone(), e.message()));
                }
            }
        }
        // x-kubernetes-validations rules must compile (src/cel.rs).
        for e in crate::cel::check_crd(crd, old) {
            causes.push(Cause::new(e.reason(), e.field.clone(), e.message()));
        }
        if let Some(old) = old {
            let old_scope = old
                .pointer("/spec/scope")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if old_scope != scope && !scope.is_empty() {
                causes.push(Cause::new(
                    "FieldValueInvalid",
                    "spec.scope",
                    format!("Invalid value: \"{scope}\": field is immutable"),
                ));
            }
        }
        // Protected groups (k8s.io, kubernetes.io and their subdomains) need the API approval
        // annotation, as the real server's validateAPIApproval checks; an update that leaves
        // the approval state as it was is never refused (a controller updating the spec).
        let approval = api_approval(&group, crd);
        if let Some((state, reason)) = &approval {
            let unchanged = old
                .and_then(|o| api_approval(&group, o))
                .is_some_and(|(old_state, _)| old_state == *state);
            let value = crd
                .pointer("/metadata/annotations/api-approved.kubernetes.io")
                .and_then(Value::as_str)
                .unwrap_or_default();
            match state {
                Approval::Missing if !unchanged => causes.push(Cause::new(
                    "FieldValueRequired",
                    "metadata.annotations[api-approved.kubernetes.io]",
                    format!("Required value: {reason}"),
                )),
                Approval::Invalid if !unchanged => causes.push(Cause::new(
                    "FieldValueInvalid",
                    "metadata.annotations[api-approved.kubernetes.io]",
                    format!("Invalid value: {value:?}: {reason}"),
                )),
                _ => {}
            }
        }
        if !causes.is_empty() {
            return Err(ApiError::invalid(
                "apiextensions.k8s.io",
                "CustomResourceDefinition",
                &name,
                causes,
            ));
        }
        if crd.pointer("/spec/names/singular").is_none() {
            crd["spec"]["names"]["singular"] = json!(kind.to_ascii_lowercase());
        }
        if crd.pointer("/spec/names/listKind").is_none() {
            crd["spec"]["names"]["listKind"] = json!(format!("{kind}List"));
        }
        if crd.pointer("/spec/conversion").is_none() {
            crd["spec"]["conversion"] = json!({"strategy": "None"});
        }
        // Names must not clash with another CRD of the same group.
        let registry = self.registry();
        let conflict = registry.all().iter().find(|d| {
            d.group == group
                && d.crd.as_deref() != Some(name.as_str())
                && (d.plural == plural || d.kind == kind)
        });
        let now = meta::now();
        let cond = |t: &str, status: &str, reason: &str, message: &str| json!({"type": t, "status": status, "lastTransitionTime": now, "reason": reason, "message": message});
        let storage_name = storage
            .first()
            .and_then(|v| v.get("name"))
            .cloned()
            .unwrap_or(Value::Null);
        let mut stored_versions: Vec<Value> = old
            .and_then(|o| o.pointer("/status/storedVersions"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if !stored_versions.contains(&storage_name) {
            stored_versions.push(storage_name);
        }
        let terminating = !meta_str(crd, "deletionTimestamp").is_empty();
        let conditions = match conflict {
            Some(d) => vec![
                cond(
                    "NamesAccepted",
                    "False",
                    if d.plural == plural {
                        "PluralConflict"
                    } else {
                        "KindConflict"
                    },
                    &format!(
                        "{:?} is already in use",
                        if d.plural == plural { &plural } else { &kind }
                    ),
                ),
                cond(
                    "Established",
                    "False",
                    "NotAccepted",
                    "not all names are accepted",
                ),
            ],
            None => {
                let mut c = vec![
                    cond("NamesAccepted", "True", "NoConflicts", "no conflicts found"),
                    cond(
                        "Established",
                        "True",
                        "InitialNamesAccepted",
                        "the initial names have been accepted",
                    ),
                ];
                if let Some((state, reason)) = &approval {
                    let (status, why) = match state {
                        Approval::Approved => ("True", "ApprovedAnnotation"),
                        Approval::Bypassed => ("False", "UnapprovedAnnotation"),
                        Approval::Missing => ("False", "MissingAnnotation"),
                        Approval::Invalid => ("False", "InvalidAnnotation"),
                    };
                    c.push(cond("KubernetesAPIApprovalPolicyConformant", status, why, reason));
                }
                if terminating {
                    c.push(cond(
                        "Terminating",
                        "True",
                        "InstanceDeletionInProgress",
                        "CustomResource deletion is in progress",
                    ));
                }
                c
            }
        };
        // Keep lastTransitionTime of conditions whose status did not change.
        let old_conds = old
            .and_then(|o| o.pointer("/status/conditions"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let conditions: Vec<Value> = conditions
            .into_iter()
            .map(|mut c| {
                if let Some(prev) = old_conds
                    .iter()
                    .find(|p| p["type"] == c["type"] && p["status"] == c["status"])
                {
                    c["lastTransitionTime"] = prev["lastTransitionTime"].clone();
                }
                c
            })
            .collect();
        crd["status"] = json!({
            "conditions": conditions,
            "acceptedNames": crd["spec"]["names"].clone(),
            "storedVersions": stored_versions,
        });
        Ok(())
    }

    /// After a CRD write: serve (or stop serving) its resources.
    fn sync_crd(&self, crd: &Value) {
        let name = meta_str(crd, "name").to_string();
        let established = crd
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Established" && c["status"] == "True")
            });
        let defs = if established {
            registry::defs_from_crd(crd).unwrap_or_default()
        } else {
            vec![]
        };
        self.with_registry_mut(|r| r.set_crd(&name, defs));
    }

    /// Re-register every stored CRD (after loading saved state).
    pub(crate) fn sync_all_crds(&self) {
        let gr = GroupResource {
            group: "apiextensions.k8s.io".into(),
            resource: "customresourcedefinitions".into(),
        };
        for crd in self.store.list(&gr, None).0 {
            self.sync_crd(&crd);
        }
    }

    pub(crate) fn crd_removed(&self, name: &str) {
        self.with_registry_mut(|r| r.set_crd(name, vec![]));
    }

    fn after_write(&self, def: &ResourceDef, obj: &Value) {
        if def.kind == "CustomResourceDefinition" && def.group == "apiextensions.k8s.io" {
            self.sync_crd(obj);
        }
    }

    /// POST: create an object.
    pub async fn create(&self, ctx: &Ctx, body: &[u8]) -> ApiResult<Out> {
        if !ctx.name.is_empty() && ctx.sub.is_empty() {
            return Err(ApiError::method_not_allowed());
        }
        let decoded = self.decode_object(ctx, body)?;
        let manager = meta::field_manager(ctx.params.get("fieldManager"), &ctx.user_agent);
        let mut warnings = vec![];
        let mut obj = self
            .prepare(ctx, None, decoded.value, &decoded.duplicates, &mut warnings)
            .await?;
        meta_managed_update(None, &mut obj, &manager, &ctx.def, "");
        let stored = if ctx.params.dry_run()? {
            // A dry run still answers AlreadyExists for a taken name, as the real storage does.
            let name = meta_str(&obj, "name").to_string();
            if self
                .store
                .get(&gr_of(&ctx.def), &(ctx.namespace.clone(), name.clone()))
                .is_some()
            {
                return Err(ApiError::already_exists(&ctx.def.group, &ctx.def.plural, &name));
            }
            obj
        } else {
            let name = meta_str(&obj, "name").to_string();
            check_stored_size(&obj)?;
            let stored = self
                .store
                .create(&gr_of(&ctx.def), obj)
                .map_err(|e| write_error(e, &ctx.def, &name))?;
            self.after_write(&ctx.def, &stored);
            self.after_create(&ctx.def, &stored);
            (*stored).clone()
        };
        Ok(Out::new(201, Self::present(&ctx.def, &stored), warnings))
    }

    fn after_create(&self, def: &ResourceDef, obj: &Value) {
        // The service account controller gives every namespace a `default` ServiceAccount.
        if def.group.is_empty() && def.kind == "Namespace" {
            let ns = meta_str(obj, "name");
            let sa = json!({
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {
                    "name": "default",
                    "namespace": ns,
                    "uid": uuid::Uuid::new_v4().to_string(),
                    "creationTimestamp": meta::now(),
                }
            });
            let gr = GroupResource {
                group: String::new(),
                resource: "serviceaccounts".into(),
            };
            // Already there (state loaded from a file) is fine.
            let _ = self.store.create(&gr, sa);
        }
    }

    /// PUT: replace an object (or its status / scale).
    pub async fn update(&self, ctx: &Ctx, body: &[u8]) -> ApiResult<Out> {
        let decoded = self.decode_object(ctx, body)?;
        // An update without a resourceVersion is unconditional: on a concurrent write (a
        // controller writing status meanwhile) it is applied again to the new current object,
        // as the real server's GuaranteedUpdate does.
        let mut attempts = 0;
        loop {
            match self.update_once(ctx, &decoded).await {
                Err(e) if e.code == 409 && e.reason == "Conflict" && attempts < 16 => {
                    let pinned = decoded
                        .value
                        .pointer("/metadata/resourceVersion")
                        .and_then(Value::as_str)
                        .is_some_and(|rv| !rv.is_empty());
                    if pinned || ctx.def.requires_resource_version_on_update {
                        return Err(e);
                    }
                    attempts += 1;
                }
                other => return other,
            }
        }
    }

    async fn update_once(&self, ctx: &Ctx, decoded: &crate::decode::Decoded) -> ApiResult<Out> {
        let old = self.current(ctx)?;
        let mut body = decoded.value.clone();
        if ctx.sub == "scale" {
            body = self.scale_into_object(&ctx.def, &old, &body)?;
        }
        let rv = body
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if rv.is_empty() && ctx.def.requires_resource_version_on_update {
            return Err(ApiError::invalid(
                &ctx.def.group,
                &ctx.def.kind,
                &ctx.name,
                vec![Cause::new(
                    "FieldValueInvalid",
                    "metadata.resourceVersion",
                    "Invalid value: 0x0: must be specified for an update",
                )],
            ));
        }
        if !rv.is_empty() && rv != meta_str(&old, "resourceVersion") {
            return Err(ApiError::stale(&ctx.def.group, &ctx.def.plural, &ctx.name));
        }
        let mut warnings = vec![];
        let new = self
            .prepare(ctx, Some(&old), body, &decoded.duplicates, &mut warnings)
            .await?;
        let out = self.commit_update(ctx, &old, new, &warnings)?;
        if ctx.sub == "scale" {
            return Ok(Out::new(200, self.scale_of(&ctx.def, &out.body)?, warnings));
        }
        Ok(out)
    }

    /// Store an update (or, when the last finalizer of a deleting object went, the delete).
    fn commit_update(&self, ctx: &Ctx, old: &Value, mut new: Value, warnings: &[String]) -> ApiResult<Out> {
        let manager = meta::field_manager(ctx.params.get("fieldManager"), &ctx.user_agent);
        if ctx.params.get("__apply").is_none() {
            meta_managed_update(Some(old), &mut new, &manager, &ctx.def, &ctx.sub);
        }
        let unchanged = {
            let mut a = new.clone();
            let mut b = old.clone();
            set_meta(&mut a, "managedFields", Value::Null);
            set_meta(&mut b, "managedFields", Value::Null);
            set_meta(&mut a, "resourceVersion", Value::Null);
            set_meta(&mut b, "resourceVersion", Value::Null);
            a == b
        };
        // A write that changes nothing does not create a revision, as on the real server.
        if unchanged || ctx.params.dry_run()? {
            let body = if unchanged { old.clone() } else { new };
            return Ok(Out::new(200, Self::present(&ctx.def, &body), warnings.to_vec()));
        }
        let gr = gr_of(&ctx.def);
        let expected = obj_rv(old);
        let finished = !meta_str(&new, "deletionTimestamp").is_empty()
            && meta::finalizers(&new).is_empty()
            && !self.has_pending_spec_finalizers(&ctx.def, &new);
        if !finished {
            check_stored_size(&new)?;
        }
        let stored = if finished {
            self.store.delete(&gr, new, expected)
        } else {
            self.store.update(&gr, new, expected)
        }
        .map_err(|e| write_error(e, &ctx.def, &ctx.name))?;
        if finished && ctx.def.kind == "CustomResourceDefinition" {
            self.crd_removed(meta_str(&stored, "name"));
        } else {
            self.after_write(&ctx.def, &stored);
        }
        Ok(Out::new(200, Self::present(&ctx.def, &stored), warnings.to_vec()))
    }

    /// Namespaces wait for their `spec.finalizers` too.
    fn has_pending_spec_finalizers(&self, def: &ResourceDef, obj: &Value) -> bool {
        def.group.is_empty()
            && def.kind == "Namespace"
            && obj
                .pointer("/spec/finalizers")
                .and_then(Value::as_array)
                .is_some_and(|a| !a.is_empty())
    }

    /// PATCH: JSON, merge, strategic merge, or server-side apply.
    pub async fn patch(&self, ctx: &Ctx, content_type: &str, body: &[u8]) -> ApiResult<Out> {
        let ptype = match PatchType::from_content_type(content_type) {
            Err(e) if ctx.def.is_custom() => {
                return Err(ApiError {
                    message: e.message.replace(", application/strategic-merge-patch+json", ""),
                    ..e
                });
            }
            other => other?,
        };
        if ptype == PatchType::Strategic && ctx.def.is_custom() {
            // As the real server: custom resources have no strategic merge patch.
            return Err(ApiError::new(
                415,
                "UnsupportedMediaType",
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
            ));
        }
        if ptype == PatchType::Apply {
            return self.apply(ctx, body).await;
        }
        if ctx.params.get("force").is_some() {
            return Err(ApiError::invalid(
                "meta.k8s.io",
                "PatchOptions",
                "",
                vec![Cause::new(
                    "FieldValueForbidden",
                    "force",
                    "Forbidden: may not be specified for non-apply patch",
                )],
            ));
        }
        let decoded = match ptype {
            PatchType::Json => None,
            _ => Some(crate::decode::json(body)?),
        };
        // Whether the patch itself names a resourceVersion (a precondition): the patched object
        // always carries one, copied from the object it was applied to.
        let precondition = match &decoded {
            Some(d) => d
                .value
                .pointer("/metadata/resourceVersion")
                .is_some_and(|v| !v.is_null()),
            None => crate::decode::json(body).is_ok_and(|d| {
                d.value.as_array().is_some_and(|ops| {
                    ops.iter()
                        .any(|op| op.get("path").and_then(Value::as_str) == Some("/metadata/resourceVersion"))
                })
            }),
        };
        let duplicates = decoded.map(|d| d.duplicates).unwrap_or_default();
        // Retry on a concurrent write (a controller writing status meanwhile), as the real
        // server's GuaranteedUpdate does for patches without a resourceVersion precondition.
        for _ in 0..16 {
            let old = self.current(ctx)?;
            let base = if ctx.sub == "scale" {
                self.scale_of(&ctx.def, &old)?
            } else {
                Self::present(&ctx.def, &old)
            };
            let mut patched = match ptype {
                PatchType::Json => patch::json_patch(&base, body)?,
                PatchType::Strategic => patch::strategic_merge_patch(&base, body, ctx.def.is_custom())?,
                // Apply patches returned above; what is left is a merge patch.
                PatchType::Merge | PatchType::Apply => patch::merge_patch(&base, body)?,
            };
            if ctx.sub == "scale" {
                patched = self.scale_into_object(&ctx.def, &old, &patched)?;
            }
            let rv = meta_str(&patched, "resourceVersion").to_string();
            if !rv.is_empty() && rv != meta_str(&old, "resourceVersion") {
                return Err(ApiError::stale(&ctx.def.group, &ctx.def.plural, &ctx.name));
            }
            let mut warnings = vec![];
            let patched_json = patched.to_string();
            let new = match self
                .prepare(ctx, Some(&old), patched, &duplicates, &mut warnings)
                .await
            {
                // A strict decoding failure of a patch result is 422 on the real server (the
                // patcher wraps it as an invalid `patch` field), not the 400 create and update give.
                Err(e) if e.code == 400 && e.message.contains("strict decoding error: ") => {
                    let strict = &e.message[e.message.find("strict decoding error: ").unwrap_or(0)..];
                    let cause = Cause::new(
                        "FieldValueInvalid",
                        "patch",
                        format!(
                            "Invalid value: {}: {strict}",
                            serde_json::to_string(&patched_json).unwrap_or_default()
                        ),
                    );
                    return Err(ApiError::invalid("", "", "", vec![cause]));
                }
                other => other?,
            };
            // As the real patch handler: an object too large to store is tried once more
            // without its managedFields, which can be large.
            let result = if !ctx.params.dry_run()? && check_stored_size(&new).is_err() {
                let mut slim = new;
                set_meta(&mut slim, "managedFields", Value::Null);
                let mut ctx2 = ctx.clone();
                ctx2.params.0.insert("__apply".into(), "1".into());
                self.commit_update(&ctx2, &old, slim, &warnings)
            } else {
                self.commit_update(ctx, &old, new, &warnings)
            };
            match result {
                Err(e) if e.code == 409 && e.reason == "Conflict" && !precondition => continue,
                Ok(out) if ctx.sub == "scale" => {
                    return Ok(Out::new(200, self.scale_of(&ctx.def, &out.body)?, out.warnings));
                }
                other => return other,
            }
        }
        Err(ApiError::stale(&ctx.def.group, &ctx.def.plural, &ctx.name))
    }

    async fn apply(&self, ctx: &Ctx, body: &[u8]) -> ApiResult<Out> {
        let Some(manager) = ctx.params.get("fieldManager").filter(|m| !m.is_empty()) else {
            return Err(ApiError::invalid(
                "meta.k8s.io",
                "PatchOptions",
                "",
                vec![Cause::new(
                    "FieldValueRequired",
                    "fieldManager",
                    "Required value: is required for apply patch",
                )],
            ));
        };
        let decoded = crate::decode::json_or_yaml(body)?;
        let applied = decoded.value;
        // The real field manager's type check (a Scale is applied as autoscaling/v1 Scale).
        let d = &ctx.def;
        let expected = match ctx.sub.as_str() {
            "scale" => ("autoscaling", "v1", "Scale"),
            _ => (d.group.as_str(), d.version.as_str(), d.kind.as_str()),
        };
        crate::decode::check_apply_type(&applied, expected)?;
        let force = ctx.params.flag("force");
        let now = meta::now();
        let sub = ctx.sub.clone();
        let api_version = ctx.def.api_version();
        let mut applied_clean = applied.clone();
        if let Some(m) = applied_clean.get_mut("metadata").and_then(Value::as_object_mut) {
            for k in [
                "name",
                "namespace",
                "resourceVersion",
                "uid",
                "managedFields",
                "creationTimestamp",
                "generateName",
            ] {
                m.remove(k);
            }
        }
        for _ in 0..16 {
            let old = self
                .store
                .get(&gr_of(&ctx.def), &(ctx.namespace.clone(), ctx.name.clone()));
            let mut warnings = vec![];
            match old {
                None => {
                    if !sub.is_empty() {
                        return Err(ApiError::not_found(&ctx.def.group, &ctx.def.plural, &ctx.name));
                    }
                    let mut obj =
                        crate::managed::apply(None, &applied_clean, manager, force, &api_version, "", &now)?;
                    obj["apiVersion"] = json!(ctx.def.api_version());
                    obj["kind"] = json!(ctx.def.kind);
                    set_meta(&mut obj, "name", json!(ctx.name));
                    let mut obj = self
                        .prepare(ctx, None, obj, &decoded.duplicates, &mut warnings)
                        .await?;
                    // Keep the Apply entry computed above; prepare does not touch managedFields.
                    if obj.pointer("/metadata/managedFields").is_none() {
                        meta_managed_update(None, &mut obj, manager, &ctx.def, "");
                    }
                    if ctx.params.dry_run()? {
                        return Ok(Out::new(201, Self::present(&ctx.def, &obj), warnings));
                    }
                    check_stored_size(&obj)?;
                    match self.store.create(&gr_of(&ctx.def), obj) {
                        Ok(stored) => {
                            self.after_write(&ctx.def, &stored);
                            self.after_create(&ctx.def, &stored);
                            return Ok(Out::new(201, Self::present(&ctx.def, &stored), warnings));
                        }
                        Err(WriteError::Exists) => continue,
                        Err(e) => return Err(write_error(e, &ctx.def, &ctx.name)),
                    }
                }
                Some(old) => {
                    let rv = applied
                        .pointer("/metadata/resourceVersion")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    if !rv.is_empty() && rv != meta_str(&old, "resourceVersion") {
                        return Err(ApiError::stale(&ctx.def.group, &ctx.def.plural, &ctx.name));
                    }
                    let base = Self::present(&ctx.def, &old);
                    let merged = crate::managed::apply(
                        Some(&base),
                        &applied_clean,
                        manager,
                        force,
                        &api_version,
                        &sub,
                        &now,
                    )?;
                    let mut ctx2 = ctx.clone();
                    ctx2.params.0.insert("__apply".into(), "1".into());
                    let new = self
                        .prepare(&ctx2, Some(&old), merged, &decoded.duplicates, &mut warnings)
                        .await?;
                    match self.commit_update(&ctx2, &old, new, &warnings) {
                        Err(e)
                            if e.code == 409
                                && e.reason == "Conflict"
                                && e.details.as_ref().is_some_and(|d| d.get("causes").is_none()) =>
                        {
                            continue;
                        }
                        other => return other,
                    }
                }
            }
        }
        Err(ApiError::stale(&ctx.def.group, &ctx.def.plural, &ctx.name))
    }

    fn delete_options(ctx: &Ctx, body: &[u8]) -> ApiResult<Value> {
        let mut opts = if body.iter().all(u8::is_ascii_whitespace) {
            json!({})
        } else {
            crate::decode::json(body)?.value
        };
        for k in ["propagationPolicy", "gracePeriodSeconds", "orphanDependents"] {
            if let Some(v) = ctx.params.get(k) {
                opts[k] = match k {
                    "gracePeriodSeconds" => json!(ctx.params.int64(k)?.unwrap_or(0)),
                    "orphanDependents" => json!(v == "true"),
                    _ => json!(v),
                };
            }
        }
        Ok(opts)
    }

    /// `DeleteOptions.dryRun` in the body (where kube-rs and client-go put it) counts as the
    /// `dryRun` query parameter does.
    fn with_body_dry_run(ctx: &Ctx, opts: &Value) -> Ctx {
        let mut ctx = ctx.clone();
        let values: Vec<&str> = opts
            .get("dryRun")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if ctx.params.get("dryRun").is_none_or(str::is_empty) && !values.is_empty() {
            // An unsupported value is kept so that `Params::dry_run` rejects it.
            let value = values.iter().find(|v| **v != "All").unwrap_or(&"All");
            ctx.params.0.insert("dryRun".into(), value.to_string());
        }
        ctx
    }

    /// DELETE one object.
    pub async fn delete(&self, ctx: &Ctx, body: &[u8]) -> ApiResult<Out> {
        if !ctx.sub.is_empty() {
            return Err(ApiError::method_not_allowed());
        }
        // The NamespaceLifecycle admission plugin keeps its immortal namespaces, before the
        // object is even looked up (dry runs included).
        if ctx.def.group.is_empty()
            && ctx.def.kind == "Namespace"
            && IMMORTAL_NAMESPACES.contains(&ctx.name.as_str())
        {
            return Err(ApiError::forbidden(format!(
                "namespaces \"{}\" is forbidden: this namespace may not be deleted",
                ctx.name
            ))
            .with_details(json!({"name": ctx.name, "kind": "namespaces"})));
        }
        let opts = Self::delete_options(ctx, body)?;
        let ctx = &Self::with_body_dry_run(ctx, &opts);
        let cur = self.current(ctx)?;
        if let Some(uid) = opts.pointer("/preconditions/uid").and_then(Value::as_str)
            && uid != meta_str(&cur, "uid")
        {
            // Worded as the registry's BeforeDelete words it (the kind, not the resource).
            return Err(ApiError::conflict(
                &ctx.def.group,
                &ctx.def.kind,
                &ctx.name,
                &format!(
                    "the UID in the precondition ({uid}) does not match the UID in record ({}). The object might have been deleted and then recreated",
                    meta_str(&cur, "uid")
                ),
            ));
        }
        if let Some(rv) = opts
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            && rv != meta_str(&cur, "resourceVersion")
        {
            return Err(ApiError::conflict(
                &ctx.def.group,
                &ctx.def.kind,
                &ctx.name,
                &format!(
                    "the ResourceVersion in the precondition ({rv}) does not match the ResourceVersion in record ({}). The object might have been modified",
                    meta_str(&cur, "resourceVersion")
                ),
            ));
        }
        let mut warnings = vec![];
        self.admit(ctx, Operation::Delete, None, Some(&cur), &mut warnings)
            .await?;
        let policy = match opts.get("propagationPolicy").and_then(Value::as_str) {
            Some(p @ ("Foreground" | "Background" | "Orphan")) => p.to_string(),
            Some(other) => {
                return Err(ApiError::invalid(
                    "meta.k8s.io",
                    "DeleteOptions",
                    "",
                    vec![Cause::new(
                        "FieldValueNotSupported",
                        "propagationPolicy",
                        format!(
                            "Unsupported value: \"{other}\": supported values: \"Foreground\", \"Background\", \"Orphan\", \"nil\""
                        ),
                    )],
                ));
            }
            None if opts.get("orphanDependents").and_then(Value::as_bool) == Some(true) => "Orphan".into(),
            None => "Background".into(),
        };
        let dry = ctx.params.dry_run()?;
        // Hook: while the workload simulator runs, a Pod on a Node is deleted gracefully and
        // its simulated kubelet finishes the deletion (crate::sim::graceful_pod_delete).
        if let Some(next) = crate::sim::graceful_pod_delete(self, &ctx.def, &cur, &opts) {
            if dry || next == *cur {
                return Ok(Out::new(200, Self::present(&ctx.def, &next), warnings));
            }
            let stored = self
                .store
                .update(&gr_of(&ctx.def), next, obj_rv(&cur))
                .map_err(|e| write_error(e, &ctx.def, &ctx.name))?;
            return Ok(Out::new(200, Self::present(&ctx.def, &stored), warnings));
        }
        self.delete_object(&ctx.def, &cur, &policy, dry, warnings)
    }

    /// Delete (or start deleting) one object; used by DELETE, deletecollection and the
    /// garbage collector.
    pub(crate) fn delete_object(
        &self,
        def: &Arc<ResourceDef>,
        cur: &Value,
        policy: &str,
        dry: bool,
        warnings: Vec<String>,
    ) -> ApiResult<Out> {
        let name = meta_str(cur, "name").to_string();
        let mut finalizers = meta::finalizers(cur);
        let is_namespace = def.group.is_empty() && def.kind == "Namespace";
        let is_crd = def.group == "apiextensions.k8s.io" && def.kind == "CustomResourceDefinition";
        let extra = match policy {
            "Foreground" => Some("foregroundDeletion"),
            "Orphan" => Some("orphan"),
            _ => None,
        };
        if let Some(f) = extra
            && !finalizers.iter().any(|x| x == f)
        {
            finalizers.push(f.into());
        }
        if is_crd && !finalizers.iter().any(|f| f == CRD_CLEANUP_FINALIZER) {
            finalizers.push(CRD_CLEANUP_FINALIZER.into());
        }
        let needs_wait = !finalizers.is_empty() || is_namespace;
        let gr = gr_of(def);
        if !needs_wait {
            if dry {
                return Ok(Out::new(200, Self::deleted_body(def, cur), warnings));
            }
            let last = self
                .store
                .delete(&gr, cur.clone(), obj_rv(cur))
                .map_err(|e| write_error(e, def, &name))?;
            return Ok(Out::new(200, Self::deleted_body(def, &last), warnings));
        }
        let mut next = cur.clone();
        let already = !meta_str(cur, "deletionTimestamp").is_empty();
        if !already {
            set_meta(&mut next, "deletionTimestamp", json!(meta::now()));
            set_meta(&mut next, "deletionGracePeriodSeconds", json!(0));
            if def.has_generation {
                let g = cur["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
                set_meta(&mut next, "generation", json!(g));
            }
        }
        set_meta(
            &mut next,
            "finalizers",
            if finalizers.is_empty() {
                Value::Null
            } else {
                json!(finalizers)
            },
        );
        if is_namespace {
            next["status"] = json!({"phase": "Terminating"});
        }
        if is_crd && !already {
            let mut conds = next
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            conds.push(json!({"type": "Terminating", "status": "True", "lastTransitionTime": meta::now(), "reason": "InstanceDeletionInProgress", "message": "CustomResource deletion is in progress"}));
            next["status"]["conditions"] = json!(conds);
        }
        if dry || next == *cur {
            return Ok(Out::new(200, Self::present(def, &next), warnings));
        }
        let stored = self
            .store
            .update(&gr, next, obj_rv(cur))
            .map_err(|e| write_error(e, def, &name))?;
        Ok(Out::new(200, Self::present(def, &stored), warnings))
    }

    fn deleted_body(def: &ResourceDef, last: &Value) -> Value {
        if def.delete_returns_object {
            Self::present(def, last)
        } else {
            crate::status::success_status(
                &def.group,
                &def.plural,
                meta_str(last, "name"),
                meta_str(last, "uid"),
            )
        }
    }

    /// DELETE a collection (with selectors).
    pub async fn delete_collection(&self, ctx: &Ctx, body: &[u8]) -> ApiResult<Out> {
        let opts = Self::delete_options(ctx, body)?;
        let ctx = &Self::with_body_dry_run(ctx, &opts);
        let policy = opts
            .get("propagationPolicy")
            .and_then(Value::as_str)
            .unwrap_or("Background")
            .to_string();
        let (labels, fields) = self.selectors(ctx)?;
        // DeleteCollection takes ListOptions: a shard selector narrows it too (behind the gate).
        let shard = crate::shard::from_params(self.features, &ctx.params)?;
        let ns = (!ctx.namespace.is_empty()).then_some(ctx.namespace.as_str());
        let (objs, _) = self.store.list(&gr_of(&ctx.def), ns);
        let dry = ctx.params.dry_run()?;
        let mut items = vec![];
        for o in objs.iter().filter(|o| {
            labels.matches_object(o)
                && fields.matches(o)
                && shard.as_ref().is_none_or(|s| s.matches_object(o))
        }) {
            let mut one = ctx.clone();
            one.name = meta_str(o, "name").to_string();
            one.namespace = meta_str(o, "namespace").to_string();
            let mut warnings = vec![];
            self.admit(&one, Operation::Delete, None, Some(o), &mut warnings)
                .await?;
            match self.delete_object(&ctx.def, o, &policy, dry, warnings) {
                Ok(_) => items.push(Self::present(&ctx.def, o)),
                Err(e) if e.code == 404 || e.code == 409 => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Out::new(
            200,
            json!({
                "kind": format!("{}List", ctx.def.kind),
                "apiVersion": ctx.def.api_version(),
                "metadata": {"resourceVersion": self.store.revision().to_string()},
                "items": items,
            }),
            vec![],
        ))
    }

    fn scale_of(&self, def: &ResourceDef, obj: &Value) -> ApiResult<Value> {
        let Some(scale) = &def.scale else {
            return Err(ApiError::no_route());
        };
        let spec = crate::table::eval(obj, &scale.spec_replicas_path)
            .and_then(Value::as_i64)
            .unwrap_or(0);
        let status = crate::table::eval(obj, &scale.status_replicas_path)
            .and_then(Value::as_i64)
            .unwrap_or(0);
        let mut s = json!({
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": {
                "name": meta_str(obj, "name"),
                "namespace": meta_str(obj, "namespace"),
                "uid": meta_str(obj, "uid"),
                "resourceVersion": meta_str(obj, "resourceVersion"),
                "creationTimestamp": meta_str(obj, "creationTimestamp"),
            },
            "spec": {"replicas": spec},
            "status": {"replicas": status},
        });
        let selector = match &scale.label_selector_path {
            Some(p) => crate::table::eval(obj, p)
                .and_then(Value::as_str)
                .map(String::from),
            None if def.kind == "Deployment" => {
                crate::selector::match_labels_string(obj, "/spec/selector/matchLabels")
            }
            None => None,
        };
        if let Some(sel) = selector {
            s["status"]["selector"] = json!(sel);
        }
        Ok(s)
    }

    fn scale_into_object(&self, def: &ResourceDef, old: &Value, scale: &Value) -> ApiResult<Value> {
        let Some(spec) = &def.scale else {
            return Err(ApiError::no_route());
        };
        let replicas = scale
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .ok_or_else(|| {
                ApiError::invalid(
                    "autoscaling",
                    "Scale",
                    meta_str(old, "name"),
                    vec![Cause::new(
                        "FieldValueRequired",
                        "spec.replicas",
                        "Required value",
                    )],
                )
            })?;
        let mut obj = Self::present(def, old);
        let path: Vec<&str> = spec
            .spec_replicas_path
            .trim_start_matches('.')
            .split('.')
            .collect();
        let mut cur = &mut obj;
        for (i, k) in path.iter().enumerate() {
            if i + 1 == path.len() {
                cur[*k] = json!(replicas);
            } else {
                if !cur.get(*k).is_some_and(Value::is_object) {
                    cur[*k] = json!({});
                }
                cur = &mut cur[*k];
            }
        }
        let rv = meta_str(scale, "resourceVersion");
        if !rv.is_empty() {
            set_meta(&mut obj, "resourceVersion", json!(rv));
        }
        Ok(obj)
    }
}

fn meta_managed_update(old: Option<&Value>, new: &mut Value, manager: &str, def: &ResourceDef, sub: &str) {
    if crate::convert::converts(def) {
        // Field ownership is recorded in the schema of the version written, as on the real server.
        let old_v = old.map(|o| Api::present(def, o));
        let mut new_v = Api::present(def, new);
        crate::managed::record_update(
            old_v.as_ref(),
            &mut new_v,
            manager,
            &def.api_version(),
            sub,
            &meta::now(),
        );
        set_meta(new, "managedFields", new_v["metadata"]["managedFields"].clone());
        return;
    }
    crate::managed::record_update(old, new, manager, &def.api_version(), sub, &meta::now());
}

fn encode_continue(rev: u64, start: &str) -> String {
    let raw = json!({"v": "meta.k8s.io/v1", "rv": rev, "start": start}).to_string();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

/// A token that continues after `start` at the newest state (`rv: -1`, as the real server
/// hands out with a 410 for an expired token).
fn encode_continue_latest(start: &str) -> String {
    let raw = json!({"v": "meta.k8s.io/v1", "rv": -1, "start": start}).to_string();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

/// The snapshot revision (None: the newest) and the key to start after.
fn decode_continue(token: &str) -> ApiResult<(Option<u64>, String)> {
    let bad = || ApiError::bad_request(format!("continue key is not valid: {token}"));
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    let rev = match v.get("rv").and_then(Value::as_i64).ok_or_else(bad)? {
        -1 => None,
        r if r > 0 => Some(r as u64),
        _ => return Err(bad()),
    };
    let start = v
        .get("start")
        .and_then(Value::as_str)
        .ok_or_else(bad)?
        .to_string();
    Ok((rev, start))
}

/// The store key a continue token's `start` ("namespace/name", "/name" when cluster-scoped)
/// names. Namespaces hold no `/`, so the first one splits it; a start without one (no token
/// of this server's) starts after the whole namespace-less prefix, as comparing the strings
/// did.
fn continue_key(start: &str) -> crate::store::ObjKey {
    match start.split_once('/') {
        Some((ns, name)) => (ns.to_string(), name.to_string()),
        None => (start.to_string(), String::new()),
    }
}

/// One page of a LIST ([`Api::list_page`]): the list's metadata and the stored objects, each
/// presented at the request's version only as it is written.
#[derive(Debug)]
pub struct ListPage {
    def: Arc<ResourceDef>,
    /// The list's `metadata` (`resourceVersion`, and `continue` and `remainingItemCount` when
    /// more follow).
    pub metadata: Value,
    /// The stored objects of the page, in key order.
    pub items: Vec<Arc<Stored>>,
}

/// The stored text of `obj` when presenting it at `def`'s version changes nothing (as
/// [`Api::present`] would): `def` converts nothing, and the text starts with exactly its
/// apiVersion and kind. `None` means: present the parsed value.
pub(crate) fn as_presented<'a>(def: &ResourceDef, obj: &'a Stored) -> Option<&'a str> {
    if crate::convert::converts(def) {
        return None;
    }
    let mut prefix = Vec::with_capacity(64);
    prefix.extend_from_slice(b"{\"apiVersion\":");
    push_json(&mut prefix, &Value::String(def.api_version()));
    prefix.extend_from_slice(b",\"kind\":");
    push_json(&mut prefix, &Value::String(def.kind.clone()));
    prefix.push(b',');
    obj.text().as_bytes().starts_with(&prefix).then(|| obj.text())
}

/// What a list's items are written as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListShape {
    /// The objects: a `<Kind>List`.
    Objects,
    /// Their metadata only: a `PartialObjectMetadataList`.
    Metadata,
}

/// How many bytes of a list are written before they are handed on: the most a list's writer
/// holds besides the objects themselves.
pub const LIST_CHUNK_BYTES: usize = 64 * 1024;

impl ListPage {
    /// The whole list as one value (what [`ListPage::chunks`] writes for
    /// [`ListShape::Objects`]).
    pub fn into_value(self) -> Value {
        let items: Vec<Value> = self
            .items
            .iter()
            .map(|o| Api::present(&self.def, &o.value()))
            .collect();
        json!({
            "kind": format!("{}List", self.def.kind),
            "apiVersion": self.def.api_version(),
            "metadata": self.metadata,
            "items": items,
        })
    }

    /// The list as compact JSON, the same bytes as serializing the whole value, in chunks of
    /// about `chunk` bytes (at least one item each) written only as they are asked for: the
    /// memory a list takes does not grow with its size, and each object is let go once
    /// written.
    ///
    /// ```
    /// # use crwatch_apiserver::api::{ListPage, ListShape};
    /// # fn demo(page: ListPage) {
    /// let body: Vec<u8> = page.chunks(ListShape::Objects, 64 * 1024).flatten().collect();
    /// # }
    /// ```
    pub fn chunks(self, shape: ListShape, chunk: usize) -> ListChunks {
        let (kind, api_version) = match shape {
            ListShape::Objects => (format!("{}List", self.def.kind), self.def.api_version()),
            ListShape::Metadata => (
                "PartialObjectMetadataList".to_string(),
                "meta.k8s.io/v1".to_string(),
            ),
        };
        // The envelope as the whole value serializes it (insertion order, compact).
        let mut head = Vec::with_capacity(128);
        head.extend_from_slice(b"{\"kind\":");
        push_json(&mut head, &Value::String(kind));
        head.extend_from_slice(b",\"apiVersion\":");
        push_json(&mut head, &Value::String(api_version));
        head.extend_from_slice(b",\"metadata\":");
        push_json(&mut head, &self.metadata);
        head.extend_from_slice(b",\"items\":[");
        ListChunks {
            api_version: self.def.api_version(),
            def: self.def,
            shape,
            chunk: chunk.max(1),
            head: Some(head),
            items: self.items.into_iter(),
            first: true,
            done: false,
        }
    }
}

/// Serialize `v` compactly onto `out`.
fn push_json(out: &mut Vec<u8>, v: &Value) {
    // Writing a Value into a Vec cannot fail (its map keys are strings).
    let _ = serde_json::to_writer(&mut *out, v);
}

/// A list written a chunk at a time ([`ListPage::chunks`]).
pub struct ListChunks {
    def: Arc<ResourceDef>,
    api_version: String,
    shape: ListShape,
    chunk: usize,
    head: Option<Vec<u8>>,
    items: std::vec::IntoIter<Arc<Stored>>,
    first: bool,
    done: bool,
}

impl ListChunks {
    /// Write one item as the whole list's value would hold it: its stored text when that is
    /// what presenting it gives, else from its parsed value.
    fn push_item(&self, out: &mut Vec<u8>, o: &Stored) {
        if self.shape == ListShape::Objects
            && let Some(text) = as_presented(&self.def, o)
        {
            out.extend_from_slice(text.as_bytes());
            return;
        }
        self.push_value(out, &o.value());
    }

    fn push_value(&self, out: &mut Vec<u8>, o: &Value) {
        let as_stored = !crate::convert::converts(&self.def)
            && o.get("apiVersion").and_then(Value::as_str) == Some(self.api_version.as_str())
            && o.get("kind").and_then(Value::as_str) == Some(self.def.kind.as_str());
        match self.shape {
            // Presenting such an object changes nothing: write it without copying it.
            ListShape::Objects if as_stored => push_json(out, o),
            ListShape::Objects => push_json(out, &Api::present(&self.def, o)),
            ListShape::Metadata if as_stored => push_json(out, &crate::table::partial_metadata(o)),
            ListShape::Metadata => {
                push_json(out, &crate::table::partial_metadata(&Api::present(&self.def, o)))
            }
        }
    }
}

impl Iterator for ListChunks {
    type Item = Vec<u8>;

    fn next(&mut self) -> Option<Vec<u8>> {
        if self.done {
            return None;
        }
        let mut out = self.head.take().unwrap_or_default();
        out.reserve(self.chunk.min(LIST_CHUNK_BYTES * 4));
        while out.len() < self.chunk {
            let Some(o) = self.items.next() else {
                out.extend_from_slice(b"]}");
                self.done = true;
                break;
            };
            if !self.first {
                out.push(b',');
            }
            self.first = false;
            self.push_item(&mut out, &o);
        }
        Some(out)
    }
}

/// `core.MaxSecretSize`: the most data a ConfigMap or Secret may hold.
pub const MAX_SECRET_SIZE: usize = 1024 * 1024;

/// `TotalAnnotationSizeLimitB`: the most bytes of annotations (keys and values) an object may have.
pub const MAX_ANNOTATIONS_BYTES: usize = 256 * 1024;

/// etcd's default `--max-request-bytes` (1.5 MiB): the largest object the real server can
/// store. Larger writes fail in etcd with `etcdserver: request is too large`, which the
/// real server answers as a 500 without a reason. Measured here on the stored JSON (the real
/// server stores built-in kinds as protobuf, a little smaller).
pub const MAX_STORED_OBJECT_BYTES: usize = 1536 * 1024;

/// The etcd error the real server passes through for an object over [`MAX_STORED_OBJECT_BYTES`].
pub const REQUEST_TOO_LARGE: &str = "etcdserver: request is too large";

fn too_long(field: &str, max: usize) -> Cause {
    Cause::new(
        "FieldValueTooLong",
        field,
        format!("Too long: may not be more than {max} bytes"),
    )
}

/// Whether `obj` fits in etcd (see [`MAX_STORED_OBJECT_BYTES`]), measured without building its
/// encoding and stopping as soon as it is over.
pub fn check_stored_size(obj: &Value) -> ApiResult<()> {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            if self.0 > MAX_STORED_OBJECT_BYTES {
                return Err(std::io::Error::other("too large"));
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    match serde_json::to_writer(&mut c, obj) {
        Ok(()) => Ok(()),
        Err(_) if c.0 > MAX_STORED_OBJECT_BYTES => Err(ApiError::unknown(REQUEST_TOO_LARGE)),
        Err(e) => Err(ApiError::internal(e)),
    }
}

/// The real server's message for a continue token whose snapshot was compacted away.
const CONTINUE_EXPIRED: &str = "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.";

/// `ValidateListOptions` for a list: 422 Invalid `ListOptions.meta.k8s.io ""`.
fn validate_list_options(rv: &str, rv_match: &str, cont: &str) -> ApiResult<()> {
    let mut causes = vec![];
    if !rv_match.is_empty() {
        let forbidden = |m: &str| {
            Cause::new(
                "FieldValueForbidden",
                "resourceVersionMatch",
                format!("Forbidden: {m}"),
            )
        };
        if rv.is_empty() {
            causes.push(forbidden(
                "resourceVersionMatch is forbidden unless resourceVersion is provided",
            ));
        }
        if !cont.is_empty() {
            causes.push(forbidden(
                "resourceVersionMatch is forbidden when continue is provided",
            ));
        }
        if rv_match != "Exact" && rv_match != "NotOlderThan" {
            causes.push(Cause::new(
                "FieldValueNotSupported",
                "resourceVersionMatch",
                format!(
                    "Unsupported value: \"{rv_match}\": supported values: \"Exact\", \"NotOlderThan\", \"\""
                ),
            ));
        }
        if rv_match == "Exact" && rv == "0" {
            causes.push(forbidden(
                "resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"",
            ));
        }
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid("meta.k8s.io", "ListOptions", "", causes))
    }
}

/// The state of a CRD's `api-approved.kubernetes.io` annotation (apihelpers.APIApprovalState).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Approval {
    Approved,
    Bypassed,
    Missing,
    Invalid,
}

/// For a CRD in a protected group (`k8s.io`, `kubernetes.io` or a subdomain), the state of
/// its approval annotation and the real server's words for it; `None` for other groups.
fn api_approval(group: &str, crd: &Value) -> Option<(Approval, String)> {
    let protected = group == "k8s.io"
        || group.ends_with(".k8s.io")
        || group == "kubernetes.io"
        || group.ends_with(".kubernetes.io");
    if !protected {
        return None;
    }
    const KEY: &str = "api-approved.kubernetes.io";
    const SEE: &str = "see https://github.com/kubernetes/enhancements/pull/1111";
    let value = crd
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(KEY))
        .and_then(Value::as_str)
        .unwrap_or_default();
    Some(if value.is_empty() {
        (
            Approval::Missing,
            format!("protected groups must have approval annotation {KEY:?}, {SEE}"),
        )
    } else if value.starts_with("unapproved") {
        (Approval::Bypassed, format!("not approved: {value:?}"))
    } else if is_request_uri_with_host(value) {
        (Approval::Approved, format!("approved in {value}"))
    } else {
        (
            Approval::Invalid,
            format!(
                "protected groups must have approval annotation {KEY:?} with either a URL or a reason starting with \"unapproved\", {SEE}"
            ),
        )
    })
}

/// What Go's `url.ParseRequestURI` accepts with a scheme and a host: `scheme://host...`.
fn is_request_uri_with_host(v: &str) -> bool {
    let Some((scheme, rest)) = v.split_once("://") else {
        return false;
    };
    let scheme_ok = scheme.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    scheme_ok && !host.is_empty() && !v.contains(char::is_whitespace)
}
