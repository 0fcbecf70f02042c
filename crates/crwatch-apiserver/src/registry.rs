//! The resource registry: which kinds the server serves, under which names, with which schema.
//!
//! Built-in kinds are registered at start; every established `CustomResourceDefinition`
//! adds one [`ResourceDef`] per served version and removes them again when it goes.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};

/// Verbs a normal resource supports, in the order the real server lists them.
pub const ALL_VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// Where the scale subresource finds its numbers (from a CRD's `subresources.scale`).
#[derive(Debug, Clone, PartialEq)]
pub struct ScaleSpec {
    /// JSON path of the desired replicas, like `.spec.replicas`.
    pub spec_replicas_path: String,
    /// JSON path of the observed replicas, like `.status.replicas`.
    pub status_replicas_path: String,
    /// JSON path of the serialized label selector, if any.
    pub label_selector_path: Option<String>,
}

/// One column of `kubectl get` output (a CRD's `additionalPrinterColumns` entry).
#[derive(Debug, Clone, PartialEq)]
pub struct PrinterColumn {
    /// Column header as written in the CRD (`kubectl` upper-cases it).
    pub name: String,
    /// OpenAPI type: `string`, `integer`, `number`, `boolean` or `date`.
    pub type_: String,
    /// Optional format hint, like `name`.
    pub format: String,
    /// Shown in the column definition.
    pub description: String,
    /// 0 is shown by default, higher only with `-o wide`.
    pub priority: i64,
    /// A simple JSONPath, like `.spec.engine` or `.status.conditions[?(@.type=="Ready")].status`.
    pub json_path: String,
}

/// Everything the server knows about one resource at one group/version.
#[derive(Debug, Clone)]
pub struct ResourceDef {
    /// API group, empty for the core group.
    pub group: String,
    /// API version within the group, like `v1`.
    pub version: String,
    /// Kind, like `Database`.
    pub kind: String,
    /// Plural resource name used in URLs, like `databases`.
    pub plural: String,
    /// Singular name, like `database`.
    pub singular: String,
    /// Short names, like `db`.
    pub short_names: Vec<String>,
    /// Categories, like `all`.
    pub categories: Vec<String>,
    /// Namespaced (true) or cluster-scoped (false).
    pub namespaced: bool,
    /// Verbs served.
    pub verbs: Vec<String>,
    /// Whether the object has a `/status` subresource that owns `.status`.
    pub status_subresource: bool,
    /// The scale subresource, if any.
    pub scale: Option<ScaleSpec>,
    /// The structural schema (`openAPIV3Schema`) of a custom resource.
    pub schema: Option<Value>,
    /// Columns for table output; empty means the default Name/Age columns.
    pub printer_columns: Vec<PrinterColumn>,
    /// The CRD that defines this resource, if it is a custom resource.
    pub crd: Option<String>,
    /// Whether writes that change more than metadata and status bump `metadata.generation`.
    pub has_generation: bool,
    /// Whether a delete answers with the deleted object (custom resources) or a Status.
    pub delete_returns_object: bool,
    /// Whether an update needs `metadata.resourceVersion` (custom resources) or may omit it.
    pub requires_resource_version_on_update: bool,
    /// The version objects are stored in; other served versions are converted by apiVersion only.
    pub storage_version: String,
    /// The group objects are stored under (the group of [`ResourceDef::key`]). It differs from
    /// `group` only for a resource that shares another group's storage, like `events.k8s.io`
    /// Events, which are core `v1` Events converted on every read and write.
    pub storage_group: String,
}

impl ResourceDef {
    /// `group/version`, or just `version` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `plural.group`, or just `plural` for the core group: the name errors use.
    pub fn group_resource(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// `Kind.group`, as the real server names a kind in validation errors.
    pub fn group_kind(&self) -> String {
        if self.group.is_empty() {
            self.kind.clone()
        } else {
            format!("{}.{}", self.kind, self.group)
        }
    }

    /// The storage key shared by all versions of the resource (and by every group that shares
    /// its storage).
    pub fn key(&self) -> GroupResource {
        GroupResource {
            group: self.storage_group.clone(),
            resource: self.plural.clone(),
        }
    }

    /// Whether this is the group and version the stored objects are in: exactly one served
    /// resource per storage key is, so walking only these visits every stored object once.
    pub fn is_storage(&self) -> bool {
        self.version == self.storage_version && self.group == self.storage_group
    }

    /// The `apiVersion` stored objects carry.
    pub fn storage_api_version(&self) -> String {
        if self.storage_group.is_empty() {
            self.storage_version.clone()
        } else {
            format!("{}/{}", self.storage_group, self.storage_version)
        }
    }

    /// Whether this is a custom resource (defined by a CRD).
    pub fn is_custom(&self) -> bool {
        self.crd.is_some()
    }
}

/// Storage identity of a resource: versions of one resource share their objects.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct GroupResource {
    /// API group, empty for core.
    pub group: String,
    /// Plural resource name.
    pub resource: String,
}

impl std::fmt::Display for GroupResource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.group.is_empty() {
            f.write_str(&self.resource)
        } else {
            write!(f, "{}.{}", self.resource, self.group)
        }
    }
}

/// The kinds served before any CRD exists (see [`crate::builtin`]).
pub fn builtin_resources() -> Vec<ResourceDef> {
    crate::builtin::resources()
}

/// The set of served resources, replaced wholesale (copy on write) when CRDs change.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    defs: Vec<Arc<ResourceDef>>,
}

impl Registry {
    /// A registry with the built-in kinds.
    pub fn with_builtins() -> Self {
        Registry {
            defs: builtin_resources().into_iter().map(Arc::new).collect(),
        }
    }

    /// All served resources.
    pub fn all(&self) -> &[Arc<ResourceDef>] {
        &self.defs
    }

    /// The resource at `group/version/plural`.
    pub fn get(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceDef>> {
        self.defs
            .iter()
            .find(|d| d.group == group && d.version == version && d.plural == plural)
            .cloned()
    }

    /// The storage version of a resource, by group and plural.
    pub fn storage(&self, gr: &GroupResource) -> Option<Arc<ResourceDef>> {
        self.defs
            .iter()
            .find(|d| d.key() == *gr && d.is_storage())
            .cloned()
    }

    /// The resource serving `apiVersion`/`kind`.
    pub fn by_kind(&self, api_version: &str, kind: &str) -> Option<Arc<ResourceDef>> {
        self.defs
            .iter()
            .find(|d| d.api_version() == api_version && d.kind == kind)
            .cloned()
    }

    /// Group name to its versions (ordered as served, preferred first).
    pub fn groups(&self) -> BTreeMap<String, Vec<String>> {
        let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for d in &self.defs {
            let versions = groups.entry(d.group.clone()).or_default();
            if !versions.contains(&d.version) {
                versions.push(d.version.clone());
            }
        }
        groups
    }

    /// Replace every resource defined by the CRD `crd_name` with `defs`.
    pub fn set_crd(&mut self, crd_name: &str, defs: Vec<ResourceDef>) {
        self.defs.retain(|d| d.crd.as_deref() != Some(crd_name));
        self.defs.extend(defs.into_iter().map(Arc::new));
    }
}

/// Why a CRD could not be turned into served resources.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CrdError(pub String);

/// The resources a `CustomResourceDefinition` object serves (one per served version).
pub fn defs_from_crd(crd: &Value) -> Result<Vec<ResourceDef>, CrdError> {
    let name = crd
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .ok_or_else(|| CrdError("metadata.name: Required value".into()))?;
    let spec = crd
        .get("spec")
        .ok_or_else(|| CrdError("spec: Required value".into()))?;
    let s = |v: &Value, p: &str| {
        v.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let strings = |v: &Value, p: &str| -> Vec<String> {
        v.pointer(p)
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|x| x.as_str().map(String::from)).collect())
            .unwrap_or_default()
    };
    let group = s(spec, "/group");
    let plural = s(spec, "/names/plural");
    let kind = s(spec, "/names/kind");
    let mut singular = s(spec, "/names/singular");
    if singular.is_empty() {
        singular = kind.to_ascii_lowercase();
    }
    let namespaced = s(spec, "/scope") != "Cluster";
    let versions = spec
        .get("versions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let storage_version = versions
        .iter()
        .find(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
        .map(|v| s(v, "/name"))
        .unwrap_or_default();
    let mut out = vec![];
    for v in versions {
        if v.get("served").and_then(Value::as_bool) != Some(true) {
            continue;
        }
        let scale = v.pointer("/subresources/scale").map(|sc| ScaleSpec {
            spec_replicas_path: s(sc, "/specReplicasPath"),
            status_replicas_path: s(sc, "/statusReplicasPath"),
            label_selector_path: sc
                .get("labelSelectorPath")
                .and_then(Value::as_str)
                .map(String::from),
        });
        let printer_columns = v
            .get("additionalPrinterColumns")
            .and_then(Value::as_array)
            .map(|cols| {
                cols.iter()
                    .map(|c| PrinterColumn {
                        name: s(c, "/name"),
                        type_: s(c, "/type"),
                        format: s(c, "/format"),
                        description: s(c, "/description"),
                        priority: c.get("priority").and_then(Value::as_i64).unwrap_or(0),
                        json_path: s(c, "/jsonPath"),
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push(ResourceDef {
            group: group.clone(),
            version: s(&v, "/name"),
            kind: kind.clone(),
            plural: plural.clone(),
            singular: singular.clone(),
            short_names: strings(spec, "/names/shortNames"),
            categories: strings(spec, "/names/categories"),
            namespaced,
            verbs: ALL_VERBS.iter().map(|v| v.to_string()).collect(),
            status_subresource: v.pointer("/subresources/status").is_some(),
            scale,
            schema: v.pointer("/schema/openAPIV3Schema").cloned(),
            printer_columns,
            crd: Some(name.to_string()),
            has_generation: true,
            delete_returns_object: true,
            requires_resource_version_on_update: true,
            storage_version: storage_version.clone(),
            storage_group: group.clone(),
        });
    }
    Ok(out)
}

/// The discovery `APIResource` entry of a resource (without subresources).
pub fn api_resource(def: &ResourceDef) -> Value {
    let mut r = json!({
        "name": def.plural,
        "singularName": def.singular,
        "namespaced": def.namespaced,
        "kind": def.kind,
        "verbs": def.verbs,
    });
    if !def.short_names.is_empty() {
        r["shortNames"] = json!(def.short_names);
    }
    if !def.categories.is_empty() {
        r["categories"] = json!(def.categories);
    }
    r["storageVersionHash"] = json!(storage_version_hash(def));
    r
}

fn storage_version_hash(def: &ResourceDef) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (&def.storage_group, &def.storage_version, &def.kind).hash(&mut h);
    let bytes = h.finish().to_be_bytes();
    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, bytes)[..11].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crd_with_two_versions_serves_both_and_stores_one() {
        let crd = json!({
            "metadata": {"name": "databases.stable.example.com"},
            "spec": {
                "group": "stable.example.com",
                "scope": "Namespaced",
                "names": {"plural": "databases", "kind": "Database", "shortNames": ["db"]},
                "versions": [
                    {"name": "v1", "served": true, "storage": true, "subresources": {"status": {}}},
                    {"name": "v1beta1", "served": true, "storage": false},
                    {"name": "v1alpha1", "served": false, "storage": false}
                ]
            }
        });
        let defs = defs_from_crd(&crd).unwrap();
        assert_eq!(defs.len(), 2);
        assert_eq!(defs[0].singular, "database");
        assert!(defs[0].status_subresource);
        assert!(!defs[1].status_subresource);
        assert!(defs.iter().all(|d| d.storage_version == "v1"));
        assert_eq!(defs[0].group_kind(), "Database.stable.example.com");
    }
}
