//! The tools' arguments (their JSON schemas come from these structs) and the tool
//! definitions `tools/list` answers with.

use std::sync::Arc;

use rmcp::model::{JsonObject, Tool, ToolAnnotations};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};

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

#[cfg(test)]
mod tests {
    use super::*;

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
