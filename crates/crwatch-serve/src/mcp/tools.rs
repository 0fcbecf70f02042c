//! The tools of `crwatch mcp`: `get`, `list`, `describe`, `diff`, `wait`, and with
//! `--allow-writes` `apply` and `patch` (dry-run unless `dryRun: false`).
//!
//! Each tool has a JSON schema for its input (from the argument structs below) and answers
//! with the result as JSON text (and the same JSON as structured content). Every failure a
//! caller can act on is a tool error (`isError: true`) with a message saying what to do.
//! Every object returned is redacted ([`super::redact`]). Tools read the API server (so a
//! call sees the writes before it); resources are served from the watch cache.

use std::sync::Arc;
use std::time::Duration;

use kube::api::{ListParams, Patch, PatchParams};
use rmcp::model::{CallToolResult, ContentBlock, JsonObject, Tool, ToolAnnotations};
use schemars::JsonSchema;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

use super::hub::{Hub, HubEvent, ReadError, served_json};
use super::uri::ObjectUri;

/// Items a `list` call returns unless it asks for fewer.
pub const DEFAULT_LIST_LIMIT: u32 = 100;
/// Most items one `list` call returns (`continue` pages on).
pub const MAX_LIST_LIMIT: u32 = 500;
/// `wait`'s timeout unless given.
pub const DEFAULT_WAIT_SECONDS: u64 = 30;
/// Longest `wait`.
pub const MAX_WAIT_SECONDS: u64 = 300;
/// How often `wait` reads an object whose resource is not watched.
pub const WAIT_POLL: Duration = Duration::from_secs(1);
/// How long `diff` waits for the watch to deliver the version the API server has.
pub const DIFF_CATCH_UP: Duration = Duration::from_secs(5);
/// The field manager of `apply` unless given.
pub const FIELD_MANAGER: &str = "crwatch-mcp";
/// Most Events `describe` looks through.
const EVENT_LIMIT: u32 = 500;
/// Kinds `describe` looks for owned objects among (besides every watched resource).
const CHILD_KINDS: [(&str, &str, &str); 6] = [
    ("apps", "v1", "ReplicaSet"),
    ("", "v1", "Pod"),
    ("batch", "v1", "Job"),
    ("apps", "v1", "ControllerRevision"),
    ("", "v1", "PersistentVolumeClaim"),
    ("discovery.k8s.io", "v1", "EndpointSlice"),
];

/// One object, by resource name (as `kubectl get` takes it), name and namespace.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectArgs {
    /// Resource type as kubectl names it: plural, singular, short name or kind
    /// (`deployments`, `deploy`, `Deployment`, `databases.stable.example.com`).
    pub resource: String,
    /// Object name.
    pub name: String,
    /// Namespace (default: the server's default namespace; ignored for cluster-scoped types).
    #[serde(default)]
    pub namespace: Option<String>,
}

/// `list` arguments.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListArgs {
    /// Resource type as kubectl names it.
    pub resource: String,
    /// Namespace (default: the server's default namespace).
    #[serde(default)]
    pub namespace: Option<String>,
    /// All namespaces.
    #[serde(default)]
    pub all_namespaces: bool,
    /// Label selector, e.g. `app=web,tier!=cache`.
    #[serde(default)]
    pub label_selector: Option<String>,
    /// Field selector, e.g. `status.phase=Running`.
    #[serde(default)]
    pub field_selector: Option<String>,
    /// At most this many items (1 to 500, default 100).
    #[serde(default)]
    pub limit: Option<u32>,
    /// The `continue` token of the previous page.
    #[serde(default, rename = "continue")]
    pub continue_token: Option<String>,
}

/// `diff` arguments.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DiffArgs {
    /// The object's resource URI (`k8s://apps/v1/Deployment/namespaces/default/web`).
    pub uri: String,
    /// The resourceVersion to compare from (the object as it was then).
    pub since_resource_version: String,
}

/// `wait` arguments: exactly one of `condition`, `field` or `deleted`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WaitArgs {
    /// Resource type as kubectl names it.
    pub resource: String,
    /// Object name.
    pub name: String,
    /// Namespace (default: the server's default namespace).
    #[serde(default)]
    pub namespace: Option<String>,
    /// Wait until the condition of this type (`Ready`, `Available`, `Complete`) ...
    #[serde(default)]
    pub condition: Option<String>,
    /// ... has this status (default `True`).
    #[serde(default)]
    pub status: Option<String>,
    /// Wait until the field at this path (`.status.phase`, `spec.replicas`,
    /// `status.conditions[0].type`) ...
    #[serde(default)]
    pub field: Option<String>,
    /// ... equals this value (compared as text).
    #[serde(default)]
    pub value: Option<String>,
    /// Wait until the object is gone.
    #[serde(default)]
    pub deleted: bool,
    /// Give up after this many seconds (1 to 300, default 30).
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
}

/// `apply` arguments.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApplyArgs {
    /// The object to apply (with apiVersion, kind, metadata.name; metadata.namespace
    /// defaults to the server's default namespace).
    pub manifest: JsonObject,
    /// Field manager (default `crwatch-mcp`).
    #[serde(default)]
    pub field_manager: Option<String>,
    /// Take over fields other managers own.
    #[serde(default)]
    pub force: bool,
    /// Only validate and show the result (default `true`); `false` really writes.
    #[serde(default)]
    pub dry_run: Option<bool>,
}

/// How `patch` merges.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PatchType {
    /// JSON merge patch (RFC 7386).
    Merge,
    /// JSON patch (RFC 6902): a list of operations.
    Json,
    /// Strategic merge patch (built-in kinds only).
    Strategic,
}

/// `patch` arguments.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PatchArgs {
    /// Resource type as kubectl names it.
    pub resource: String,
    /// Object name.
    pub name: String,
    /// Namespace (default: the server's default namespace).
    #[serde(default)]
    pub namespace: Option<String>,
    /// `merge` (default), `json` or `strategic`.
    #[serde(default)]
    pub patch_type: Option<PatchType>,
    /// The patch: an object for merge and strategic, a list of operations for json.
    pub patch: Value,
    /// Only validate and show the result (default `true`); `false` really writes.
    #[serde(default)]
    pub dry_run: Option<bool>,
}

fn schema<T: JsonSchema>() -> Arc<JsonObject> {
    let v = serde_json::to_value(schemars::schema_for!(T)).unwrap_or_else(|_| json!({"type": "object"}));
    let mut o = match v {
        Value::Object(o) => o,
        _ => JsonObject::new(),
    };
    // MCP clients expect a plain object schema.
    o.remove("$schema");
    o.remove("title");
    Arc::new(o)
}

fn read_only(tool: Tool) -> Tool {
    tool.with_annotations(ToolAnnotations::new().read_only(true).open_world(false))
}

/// The tools offered (`apply` and `patch` only with `allow_writes`).
pub fn tools(allow_writes: bool) -> Vec<Tool> {
    let mut tools = vec![
        read_only(Tool::new(
            "get",
            "Get one Kubernetes object as JSON (managedFields dropped; Secret values replaced by <redacted>).",
            schema::<ObjectArgs>(),
        )),
        read_only(Tool::new(
            "list",
            "List objects of a resource type with optional label and field selectors; at most `limit` items, \
             `continue` pages on.",
            schema::<ListArgs>(),
        )),
        read_only(Tool::new(
            "describe",
            "An object with its Events and the objects it owns (by ownerReferences).",
            schema::<ObjectArgs>(),
        )),
        read_only(Tool::new(
            "diff",
            "What changed in a watched object since a resourceVersion, as field paths with old and new values. \
             A bounded number of versions is kept per object.",
            schema::<DiffArgs>(),
        )),
        read_only(Tool::new(
            "wait",
            "Wait until an object's condition has a status, a field equals a value, or the object is deleted; \
             with a timeout (default 30 s, at most 300 s).",
            schema::<WaitArgs>(),
        )),
    ];
    if allow_writes {
        tools.push(
            Tool::new(
                "apply",
                "Server-side apply of one object. Dry run unless dryRun is false.",
                schema::<ApplyArgs>(),
            )
            .with_annotations(
                ToolAnnotations::new()
                    .destructive(false)
                    .idempotent(true)
                    .open_world(false),
            ),
        );
        tools.push(
            Tool::new(
                "patch",
                "Patch one object (merge, json or strategic). Dry run unless dryRun is false.",
                schema::<PatchArgs>(),
            )
            .with_annotations(
                ToolAnnotations::new()
                    .destructive(true)
                    .idempotent(false)
                    .open_world(false),
            ),
        );
    }
    tools
}

/// A tool failure the caller sees.
#[derive(Debug)]
pub struct ToolError(pub String);

impl<E: std::fmt::Display> From<E> for ToolError {
    fn from(e: E) -> Self {
        ToolError(e.to_string())
    }
}

type ToolResult = Result<Value, ToolError>;

fn parse<T: DeserializeOwned>(tool: &str, args: Option<JsonObject>) -> Result<T, ToolError> {
    serde_json::from_value(Value::Object(args.unwrap_or_default())).map_err(|e| {
        ToolError(format!(
            "invalid arguments for {tool}: {e} (tools/list has the input schema)"
        ))
    })
}

/// Explain a Kubernetes API error the way kubectl would.
fn api_error(what: &str, e: kube::Error) -> ToolError {
    match e {
        kube::Error::Api(s) => ToolError(format!("{what}: {} ({}, HTTP {})", s.message, s.reason, s.code)),
        e => ToolError(format!("{what}: {e}")),
    }
}

/// Run tool `name` (`None` when there is no such tool).
pub async fn call(hub: &Hub, name: &str, args: Option<JsonObject>) -> Option<CallToolResult> {
    let result = match name {
        "get" => async { get(hub, parse(name, args)?).await }.await,
        "list" => async { list(hub, parse(name, args)?).await }.await,
        "describe" => async { describe(hub, parse(name, args)?).await }.await,
        "diff" => async { diff(hub, parse(name, args)?).await }.await,
        "wait" => async { wait(hub, parse(name, args)?).await }.await,
        "apply" if hub.config().allow_writes => async { apply(hub, parse(name, args)?).await }.await,
        "patch" if hub.config().allow_writes => async { patch(hub, parse(name, args)?).await }.await,
        _ => return None,
    };
    Some(match result {
        Ok(v) => {
            let text = serde_json::to_string_pretty(&v).unwrap_or_default();
            let mut r = CallToolResult::success(vec![ContentBlock::text(text)]);
            if v.is_object() {
                r.structured_content = Some(v);
            }
            r
        }
        Err(ToolError(message)) => CallToolResult::error(vec![ContentBlock::text(message)]),
    })
}

/// The namespace a tool acts in: the one given, else the server's default.
fn namespace_for(hub: &Hub, given: &Option<String>) -> String {
    given
        .clone()
        .unwrap_or_else(|| hub.default_namespace().to_owned())
}

async fn get_object(
    hub: &Hub,
    args: &ObjectArgs,
) -> Result<(crwatch::discovery::ResourceType, Value), ToolError> {
    let rt = hub.resolve(&args.resource).await?;
    let ns = namespace_for(hub, &args.namespace);
    let uri = ObjectUri::new(
        &rt.group,
        &rt.version,
        &rt.kind,
        rt.namespaced.then_some(ns.as_str()),
        &args.name,
    );
    let found = hub.read_fresh(&uri).await.map_err(|e| match e {
        ReadError::Api(e) => api_error(&format!("reading {uri}"), e),
        e => ToolError(e.to_string()),
    })?;
    match found {
        Some(v) => Ok((rt, v)),
        None => Err(ToolError(match rt.namespaced {
            true => format!("{} {:?} not found in namespace {ns}", rt.full_name(), args.name),
            false => format!("{} {:?} not found", rt.full_name(), args.name),
        })),
    }
}

async fn get(hub: &Hub, args: ObjectArgs) -> ToolResult {
    let (_, object) = get_object(hub, &args).await?;
    Ok(json!({"uri": ObjectUri::of_object(&object).map(|u| u.to_string()), "object": object}))
}

async fn list(hub: &Hub, args: ListArgs) -> ToolResult {
    let rt = hub.resolve(&args.resource).await?;
    let limit = args.limit.unwrap_or(DEFAULT_LIST_LIMIT);
    if !(1..=MAX_LIST_LIMIT).contains(&limit) {
        return Err(ToolError(format!(
            "limit {limit} is out of range: use 1 to {MAX_LIST_LIMIT}"
        )));
    }
    let ns = (!args.all_namespaces).then(|| namespace_for(hub, &args.namespace));
    let api = hub.api(&rt, ns.as_deref());
    let mut lp = ListParams::default().limit(limit);
    if let Some(l) = &args.label_selector {
        lp = lp.labels(l);
    }
    if let Some(f) = &args.field_selector {
        lp = lp.fields(f);
    }
    if let Some(c) = &args.continue_token {
        lp = lp.continue_token(c);
    }
    let listed = api
        .list(&lp)
        .await
        .map_err(|e| api_error(&format!("listing {}", rt.full_name()), e))?;
    let items: Vec<Value> = listed
        .items
        .iter()
        .map(|o| {
            let v = served_json(o, &rt);
            json!({"uri": ObjectUri::of_object(&v).map(|u| u.to_string()), "object": v})
        })
        .collect();
    Ok(json!({
        "resource": rt.full_name(),
        "count": items.len(),
        "items": items,
        "continue": listed.metadata.continue_.filter(|c| !c.is_empty()),
        "resourceVersion": listed.metadata.resource_version,
    }))
}

fn summary(o: &Value) -> Value {
    json!({
        "uri": ObjectUri::of_object(o).map(|u| u.to_string()),
        "kind": o.get("kind"),
        "namespace": o.pointer("/metadata/namespace"),
        "name": o.pointer("/metadata/name"),
        "resourceVersion": o.pointer("/metadata/resourceVersion"),
    })
}

async fn describe(hub: &Hub, args: ObjectArgs) -> ToolResult {
    let (rt, object) = get_object(hub, &args).await?;
    let uid = object
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let ns = object
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("default")
        .to_owned();
    // Events about it.
    let events_type = hub.type_of("", "v1", "Event").await?;
    let api = hub.api(&events_type, Some(&ns));
    let name = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let by_name = ListParams::default()
        .fields(&format!("involvedObject.name={name}"))
        .limit(EVENT_LIMIT);
    let listed = match api.list(&by_name).await {
        Ok(l) => l,
        // A server without that field selector: look through the namespace's Events.
        Err(_) => api
            .list(&ListParams::default().limit(EVENT_LIMIT))
            .await
            .map_err(|e| api_error(&format!("listing Events in {ns}"), e))?,
    };
    let mut events: Vec<Value> = listed
        .items
        .iter()
        .map(|e| served_json(e, &events_type))
        .filter(|e| e.pointer("/involvedObject/uid").and_then(Value::as_str) == Some(uid.as_str()))
        .map(|e| {
            json!({
                "type": e.get("type"), "reason": e.get("reason"), "message": e.get("message"),
                "count": e.get("count"), "firstTimestamp": e.get("firstTimestamp"),
                "lastTimestamp": e.get("lastTimestamp").or(e.get("eventTime")),
                "source": e.pointer("/source/component").or(e.get("reportingComponent")),
            })
        })
        .collect();
    events.sort_by_key(|e| e["lastTimestamp"].as_str().unwrap_or_default().to_owned());
    // Objects it owns: among the watched ones, and the kinds controllers usually create.
    let mut owned: Vec<Value> = hub.owned_by(&uid);
    if rt.namespaced {
        for (g, v, k) in CHILD_KINDS {
            let Ok(child) = hub.type_of(g, v, k).await else {
                continue;
            };
            let Ok(l) = hub
                .api(&child, Some(&ns))
                .list(&ListParams::default().limit(EVENT_LIMIT))
                .await
            else {
                continue;
            };
            for o in &l.items {
                let mine = o
                    .metadata
                    .owner_references
                    .as_ref()
                    .is_some_and(|refs| refs.iter().any(|r| r.uid == uid));
                if mine {
                    owned.push(served_json(o, &child));
                }
            }
        }
    }
    let mut owned: Vec<Value> = owned.iter().map(summary).collect();
    owned.sort_by_key(|o| o["uri"].as_str().unwrap_or_default().to_owned());
    owned.dedup_by_key(|o| o["uri"].clone());
    Ok(json!({
        "uri": ObjectUri::of_object(&object).map(|u| u.to_string()),
        "object": object,
        "events": events,
        "owned": owned,
    }))
}

async fn diff(hub: &Hub, args: DiffArgs) -> ToolResult {
    let uri: ObjectUri = args.uri.parse()?;
    if !hub.is_watched(&uri) {
        return Err(ToolError(format!(
            "{uri} is not watched, so no history is kept: start crwatch mcp with -r for its resource \
             (watched: {})",
            match hub.watched_names() {
                w if w.is_empty() => "none".to_owned(),
                w => w.join(", "),
            }
        )));
    }
    // The history comes from the watch; the caller may know a newer version (it just
    // patched the object): wait, briefly, until the watch has delivered it.
    let mut events = hub.subscribe();
    let current = hub.read_fresh(&uri).await.map_err(|e| match e {
        ReadError::Api(e) => api_error(&format!("reading {uri}"), e),
        e => ToolError(e.to_string()),
    })?;
    let current_rv = current
        .as_ref()
        .and_then(|o| o.pointer("/metadata/resourceVersion"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let caught_up = match &current_rv {
        None => true,
        Some(rv) => {
            // Every event is a reason to look again (the history is written before it is sent).
            let wait = async {
                while !hub.history_has(&uri, rv) {
                    if let Err(RecvError::Closed) = events.recv().await {
                        return;
                    }
                }
            };
            tokio::time::timeout(DIFF_CATCH_UP, wait).await.is_ok() && hub.history_has(&uri, rv)
        }
    };
    let since = hub.since(&uri, &args.since_resource_version)?;
    Ok(json!({
        "uri": uri.to_string(),
        "watchBehind": !caught_up,
        "from": since.from,
        "to": since.to,
        "versionsKeptPerObject": hub.history_bound(),
        "changed": !since.diff.is_empty(),
        "changes": since.diff.changes,
    }))
}

/// The value at a JSONPath-ish path (`.status.phase`, `{.spec.replicas}`,
/// `status.conditions[0].type`).
///
/// ```
/// use crwatch_serve::mcp::tools::field_at;
/// use serde_json::json;
///
/// let o = json!({"status": {"conditions": [{"type": "Ready"}], "phase": "Running"}});
/// assert_eq!(field_at(&o, "{.status.phase}"), Some(&json!("Running")));
/// assert_eq!(field_at(&o, "status.conditions[0].type"), Some(&json!("Ready")));
/// assert_eq!(field_at(&o, ".status.missing"), None);
/// ```
pub fn field_at<'a>(object: &'a Value, path: &str) -> Option<&'a Value> {
    let path = path
        .trim()
        .trim_start_matches('{')
        .trim_end_matches('}')
        .trim_start_matches('.');
    let mut at = object;
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, indexes) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            at = at.get(key)?;
        }
        for index in indexes.split('[').filter(|s| !s.is_empty()) {
            let i: usize = index.trim_end_matches(']').parse().ok()?;
            at = at.get(i)?;
        }
    }
    Some(at)
}

fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

/// What `wait` waits for.
enum Until {
    Condition(String, String),
    Field(String, String),
    Deleted,
}

impl Until {
    fn of(args: &WaitArgs) -> Result<Until, ToolError> {
        match (&args.condition, &args.field, args.deleted) {
            (Some(c), None, false) => Ok(Until::Condition(
                c.clone(),
                args.status.clone().unwrap_or_else(|| "True".into()),
            )),
            (None, Some(f), false) => match &args.value {
                Some(v) => Ok(Until::Field(f.clone(), v.clone())),
                None => Err(ToolError(
                    "wait with field needs value: the value the field must equal".into(),
                )),
            },
            (None, None, true) => Ok(Until::Deleted),
            _ => Err(ToolError(
                "wait needs exactly one of condition (with status), field (with value) or deleted: true"
                    .into(),
            )),
        }
    }

    fn holds(&self, object: Option<&Value>) -> bool {
        match (self, object) {
            (Until::Deleted, o) => o.is_none(),
            (_, None) => false,
            (Until::Condition(t, status), Some(o)) => o
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .is_some_and(|cs| {
                    cs.iter().any(|c| {
                        c.get("type")
                            .and_then(Value::as_str)
                            .is_some_and(|ct| ct.eq_ignore_ascii_case(t))
                            && c.get("status")
                                .and_then(Value::as_str)
                                .is_some_and(|s| s.eq_ignore_ascii_case(status))
                    })
                }),
            (Until::Field(path, value), Some(o)) => field_at(o, path).is_some_and(|v| &as_text(v) == value),
        }
    }

    fn describe(&self) -> String {
        match self {
            Until::Condition(t, s) => format!("condition {t}={s}"),
            Until::Field(p, v) => format!("{p}={v}"),
            Until::Deleted => "deletion".into(),
        }
    }
}

async fn wait(hub: &Hub, args: WaitArgs) -> ToolResult {
    let until = Until::of(&args)?;
    let seconds = args.timeout_seconds.unwrap_or(DEFAULT_WAIT_SECONDS);
    if !(1..=MAX_WAIT_SECONDS).contains(&seconds) {
        return Err(ToolError(format!(
            "timeoutSeconds {seconds} is out of range: use 1 to {MAX_WAIT_SECONDS}"
        )));
    }
    let rt = hub.resolve(&args.resource).await?;
    let ns = namespace_for(hub, &args.namespace);
    let uri = ObjectUri::new(
        &rt.group,
        &rt.version,
        &rt.kind,
        rt.namespaced.then_some(ns.as_str()),
        &args.name,
    );
    let key = uri.to_string();
    let started = tokio::time::Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    // Subscribed before the first read, so no change slips between.
    let mut events = hub.subscribe();
    let watched = hub.is_watched(&uri);
    loop {
        let object = hub.read_fresh(&uri).await.map_err(|e| match e {
            ReadError::Api(e) => api_error(&format!("reading {uri}"), e),
            e => ToolError(e.to_string()),
        })?;
        if until.holds(object.as_ref()) {
            return Ok(json!({
                "uri": key, "met": until.describe(),
                "waitedSeconds": started.elapsed().as_secs_f64(),
                "object": object,
            }));
        }
        // Watched: woken by its changes; otherwise read again every WAIT_POLL.
        let next = async {
            if !watched {
                tokio::time::sleep(WAIT_POLL).await;
                return;
            }
            loop {
                match events.recv().await {
                    Ok(HubEvent::Updated(u)) if u == key => return,
                    Ok(_) => {}
                    // Fell behind: read again, it may have changed.
                    Err(RecvError::Lagged(_)) => return,
                    Err(RecvError::Closed) => std::future::pending::<()>().await,
                }
            }
        };
        if tokio::time::timeout_at(deadline, next).await.is_err() {
            return Err(ToolError(format!(
                "timed out after {seconds} s waiting for {} of {uri}; last seen: {}",
                until.describe(),
                match &object {
                    None => "not found".to_owned(),
                    Some(o) => format!(
                        "resourceVersion {}, status {}",
                        as_text(o.pointer("/metadata/resourceVersion").unwrap_or(&Value::Null)),
                        o.get("status")
                            .map(|s| s.to_string())
                            .unwrap_or_else(|| "none".into())
                    ),
                }
            )));
        }
    }
}

async fn apply(hub: &Hub, args: ApplyArgs) -> ToolResult {
    let mut manifest = Value::Object(args.manifest);
    let api_version = manifest
        .get("apiVersion")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let kind = manifest.get("kind").and_then(Value::as_str).map(str::to_owned);
    let name = manifest
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let (Some(api_version), Some(kind), Some(name)) = (api_version, kind, name) else {
        return Err(ToolError(
            "the manifest needs apiVersion, kind and metadata.name".into(),
        ));
    };
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", &api_version));
    let rt = hub.type_of(group, version, &kind).await?;
    let ns = match rt.namespaced {
        true => {
            let ns = manifest
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| hub.default_namespace().to_owned());
            if let Some(meta) = manifest.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.insert("namespace".into(), Value::String(ns.clone()));
            }
            Some(ns)
        }
        false => None,
    };
    let dry_run = args.dry_run.unwrap_or(true);
    let mut pp = PatchParams::apply(args.field_manager.as_deref().unwrap_or(FIELD_MANAGER));
    pp.force = args.force;
    pp.dry_run = dry_run;
    let applied = hub
        .api(&rt, ns.as_deref())
        .patch(&name, &pp, &Patch::Apply(&manifest))
        .await
        .map_err(|e| api_error(&format!("applying {kind} {name}"), e))?;
    let object = served_json(&applied, &rt);
    Ok(
        json!({"dryRun": dry_run, "uri": ObjectUri::of_object(&object).map(|u| u.to_string()), "object": object}),
    )
}

async fn patch(hub: &Hub, args: PatchArgs) -> ToolResult {
    let rt = hub.resolve(&args.resource).await?;
    let ns = rt.namespaced.then(|| namespace_for(hub, &args.namespace));
    let dry_run = args.dry_run.unwrap_or(true);
    let pp = PatchParams {
        dry_run,
        ..PatchParams::default()
    };
    let kind = args.patch_type.unwrap_or(PatchType::Merge);
    let patch: Patch<Value> = match kind {
        PatchType::Merge => Patch::Merge(args.patch),
        PatchType::Strategic => Patch::Strategic(args.patch),
        PatchType::Json => Patch::Json(serde_json::from_value(args.patch).map_err(|e| {
            ToolError(format!(
                "a json patch is a list of RFC 6902 operations ({{\"op\", \"path\", \"value\"}}): {e}"
            ))
        })?),
    };
    let patched = hub
        .api(&rt, ns.as_deref())
        .patch(&args.name, &pp, &patch)
        .await
        .map_err(|e| api_error(&format!("patching {} {}", rt.full_name(), args.name), e))?;
    let object = served_json(&patched, &rt);
    Ok(
        json!({"dryRun": dry_run, "uri": ObjectUri::of_object(&object).map(|u| u.to_string()), "object": object}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_conditions() {
        let o = json!({"status": {"phase": "Running", "replicas": 3,
                        "conditions": [{"type": "Ready", "status": "True"}]}});
        assert!(Until::Condition("ready".into(), "True".into()).holds(Some(&o)));
        assert!(!Until::Condition("Ready".into(), "False".into()).holds(Some(&o)));
        assert!(Until::Field(".status.replicas".into(), "3".into()).holds(Some(&o)));
        assert!(!Until::Field(".status.phase".into(), "Pending".into()).holds(Some(&o)));
        assert!(Until::Deleted.holds(None));
        assert!(!Until::Deleted.holds(Some(&o)));
        assert!(!Until::Field("x".into(), "y".into()).holds(None));
    }

    #[test]
    fn wait_needs_exactly_one_target() {
        let args = |v: Value| serde_json::from_value::<WaitArgs>(v).unwrap();
        assert!(Until::of(&args(json!({"resource": "pods", "name": "p"}))).is_err());
        assert!(Until::of(&args(json!({"resource": "pods", "name": "p", "field": "a"}))).is_err());
        assert!(
            Until::of(&args(
                json!({"resource": "pods", "name": "p", "deleted": true, "condition": "Ready"})
            ))
            .is_err()
        );
        assert!(Until::of(&args(json!({"resource": "pods", "name": "p", "deleted": true}))).is_ok());
    }

    #[test]
    fn tool_list_depends_on_writes_and_has_schemas() {
        let names = |w| tools(w).iter().map(|t| t.name.to_string()).collect::<Vec<_>>();
        assert_eq!(names(false), ["get", "list", "describe", "diff", "wait"]);
        assert_eq!(
            names(true),
            ["get", "list", "describe", "diff", "wait", "apply", "patch"]
        );
        for t in tools(true) {
            assert_eq!(t.input_schema.get("type"), Some(&json!("object")), "{}", t.name);
            assert!(t.input_schema.get("properties").is_some(), "{}", t.name);
        }
    }
}
