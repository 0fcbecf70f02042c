//! The tools of `crwatch mcp`: `get`, `list`, `describe`, `diff`, `wait`, and with
//! `--allow-writes` `apply` and `patch` (dry-run unless `dryRun: false`).
//!
//! Each tool has a JSON schema for its input (from the argument structs below) and answers
//! with the result as JSON text (and the same JSON as structured content). Every failure a
//! caller can act on is a tool error (`isError: true`) with a message saying what to do.
//! Argument structs and tool definitions are in `args.rs`, `wait` in `wait.rs`.
//! Every object returned is redacted ([`super::redact`]). Tools read the API server (so a
//! call sees the writes before it); resources are served from the watch cache.

mod args;
mod wait;

pub use args::*;
pub use wait::field_at;

use std::time::Duration;

use kube::api::{ListParams, Patch, PatchParams};
use rmcp::model::{CallToolResult, ContentBlock, JsonObject};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

use super::hub::{Hub, ReadError, served_json};
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
        "wait" => async { wait::wait(hub, parse(name, args)?).await }.await,
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
