//! Which lists a diff compares by key rather than by index: the strategic-merge-patch merge keys
//! of the built-in Kubernetes kinds, and the `x-kubernetes-list-type` / `x-kubernetes-list-map-keys`
//! of a CRD's structural schema.
//!
//! The built-in table follows the `patchMergeKey` tags of k8s.io/api (conditions by `type`,
//! containers, env, volumes and image pull secrets by `name`, volumeMounts by `mountPath`,
//! container ports by `containerPort` and Service ports by `port`, ownerReferences by `uid`, ...)
//! and matches by field name wherever the field appears, so a Pod template inside a Deployment,
//! a CronJob or a custom resource is covered too. crwatch-apiserver's strategic merge patch
//! carries its own, smaller table (it cannot depend on this crate); this one is the reference.
//!
//! Keys are a presentation choice, never a correctness risk: a list whose elements lack a key
//! field, carry a non-scalar or duplicate key value, or (for sets) are not distinct scalars is
//! compared by index, exactly as before.

use std::sync::LazyLock;

use serde_json::Value;

use super::path::{ParsedSeg, PathError, SegKind, parse_path};

/// How the elements of one list are identified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListType {
    /// By index (`x-kubernetes-list-type: atomic`, or nothing known).
    Atomic,
    /// By the values of key fields. Each entry is one candidate set of key fields; the first
    /// that identifies every element of both lists uniquely is used (container ports try
    /// `containerPort`, then `containerPort`+`protocol`, then the Service port keys).
    Map(Vec<Vec<String>>),
    /// By value: a list of distinct scalars whose order does not matter.
    Set,
}

/// One rule: where it applies and what it says.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Rule {
    /// Any list stored under this object key, at any depth (the built-in table).
    Field(&'static str, ListType),
    /// The list at exactly this path pattern (`[*]` for any element, [`AnyKey`] for any
    /// object key).
    Path(Vec<PatSeg>, ListType),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum PatSeg {
    Key(String),
    /// Any object key (a schema's `additionalProperties`).
    AnyKey,
    /// Any list element.
    AnyElement,
}

/// The list-identity rules a diff uses: built-in merge keys plus, optionally, those of a CRD
/// schema or added by hand. [`ListKeys::default`] is the built-in table alone.
///
/// ```
/// use crwatch::diff::{Diff, ListKeys};
/// use serde_json::json;
///
/// let old = json!({"status": {"conditions": [
///     {"type": "Ready", "status": "False"}, {"type": "Synced", "status": "True"}]}});
/// let new = json!({"status": {"conditions": [
///     {"type": "Synced", "status": "True"}, {"type": "Ready", "status": "True"}]}});
/// // conditions are keyed by `type` out of the box; the reorder alone says nothing
/// assert_eq!(Diff::between(&old, &new).to_string(), "status.conditions[Ready].status: \"False\" → \"True\"");
/// // without keys, lists compare by index
/// assert_eq!(Diff::between_with(&old, &new, ListKeys::none()).len(), 3);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListKeys {
    /// Searched last to first, so later rules override earlier ones; path rules always win
    /// over field rules.
    rules: Vec<Rule>,
}

/// `(field, keys)` of the built-in kinds; see the module docs. `Set` fields are separate.
const BUILTIN_MAPS: &[(&str, &[&[&str]])] = &[
    ("conditions", &[&["type"]]),
    ("containers", &[&["name"]]),
    ("initContainers", &[&["name"]]),
    ("ephemeralContainers", &[&["name"]]),
    ("env", &[&["name"]]),
    ("volumes", &[&["name"]]),
    ("volumeMounts", &[&["mountPath"]]),
    ("volumeDevices", &[&["devicePath"]]),
    (
        "ports",
        &[
            &["containerPort"],
            &["containerPort", "protocol"],
            &["port"],
            &["port", "protocol"],
        ],
    ),
    ("ownerReferences", &[&["uid"]]),
    ("imagePullSecrets", &[&["name"]]),
    ("secrets", &[&["name"]]),
    ("hostAliases", &[&["ip"]]),
    ("podIPs", &[&["ip"]]),
    ("hostIPs", &[&["ip"]]),
    ("addresses", &[&["type"]]),
    ("resourceClaims", &[&["name"]]),
    ("resourceClaimStatuses", &[&["name"]]),
    ("schedulingGates", &[&["name"]]),
    (
        "topologySpreadConstraints",
        &[&["topologyKey"], &["topologyKey", "whenUnsatisfiable"]],
    ),
    ("webhooks", &[&["name"]]),
    ("matchConditions", &[&["name"]]),
];

/// ObjectMeta's `finalizers` is `+listType=set` (patch strategy merge).
const BUILTIN_SETS: &[&str] = &["finalizers"];

static BUILTIN: LazyLock<ListKeys> = LazyLock::new(|| {
    let mut rules: Vec<Rule> = BUILTIN_MAPS
        .iter()
        .map(|(field, cands)| {
            let cands = cands
                .iter()
                .map(|keys| keys.iter().map(|k| (*k).to_owned()).collect())
                .collect();
            Rule::Field(field, ListType::Map(cands))
        })
        .collect();
    rules.extend(BUILTIN_SETS.iter().map(|f| Rule::Field(f, ListType::Set)));
    ListKeys { rules }
});

static NONE: ListKeys = ListKeys { rules: Vec::new() };

impl Default for ListKeys {
    fn default() -> Self {
        BUILTIN.clone()
    }
}

/// Schemas deeper than this are not searched further (CRD schemas have no references, so this
/// only guards against hand-made values).
const MAX_SCHEMA_DEPTH: usize = 64;

impl ListKeys {
    /// The built-in merge keys (the same as [`ListKeys::default`]), borrowed from a static.
    ///
    /// ```
    /// use crwatch::diff::ListKeys;
    ///
    /// assert_eq!(ListKeys::builtin(), &ListKeys::default());
    /// ```
    pub fn builtin() -> &'static ListKeys {
        &BUILTIN
    }

    /// No keys at all: every list compares by index.
    ///
    /// ```
    /// use crwatch::diff::{Diff, ListKeys};
    /// use serde_json::json;
    ///
    /// let d = Diff::between_with(
    ///     &json!({"status": {"conditions": [{"type": "A", "status": "1"}]}}),
    ///     &json!({"status": {"conditions": [{"type": "A", "status": "2"}]}}),
    ///     ListKeys::none(),
    /// );
    /// assert_eq!(d.paths(), ["status.conditions[0].status"]);
    /// ```
    pub fn none() -> &'static ListKeys {
        &NONE
    }

    /// The built-in keys plus those of a structural schema (a CRD version's
    /// `schema.openAPIV3Schema`): every array with `x-kubernetes-list-type: map` is keyed by its
    /// `x-kubernetes-list-map-keys`, `set` compares by value, and `atomic` compares by index
    /// even where a built-in field name would say otherwise. Arrays without a list type keep
    /// the built-in behaviour, so `status.conditions` is keyed by `type` either way.
    ///
    /// ```
    /// use crwatch::diff::{Diff, ListKeys};
    /// use serde_json::json;
    ///
    /// let schema = json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {
    ///     "users": {"type": "array", "x-kubernetes-list-type": "map",
    ///               "x-kubernetes-list-map-keys": ["username"],
    ///               "items": {"type": "object", "properties": {"username": {"type": "string"}}}}}}}});
    /// let keys = ListKeys::from_schema(&schema);
    /// let old = json!({"spec": {"users": [{"username": "admin"}, {"username": "app", "role": "r"}]}});
    /// let new = json!({"spec": {"users": [{"username": "app", "role": "rw"}]}});
    /// assert_eq!(
    ///     Diff::between_with(&old, &new, &keys).to_string(),
    ///     "- spec.users[admin]: {\"username\":\"admin\"}\nspec.users[app].role: \"r\" → \"rw\""
    /// );
    /// ```
    pub fn from_schema(schema: &Value) -> ListKeys {
        let mut keys = ListKeys::default();
        let mut at = Vec::new();
        keys.add_schema(schema, &mut at);
        keys
    }

    /// The keys of one served version of a CustomResourceDefinition (as JSON, e.g.
    /// `serde_json::to_value(&crd)`), or the built-in keys alone when the version has no schema.
    ///
    /// ```
    /// use crwatch::diff::ListKeys;
    /// use serde_json::json;
    ///
    /// let crd = json!({"spec": {"versions": [{"name": "v1", "schema": {"openAPIV3Schema": {
    ///     "type": "object", "properties": {"spec": {"type": "object", "properties": {
    ///         "tags": {"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}}}}}}}}]}});
    /// assert_ne!(ListKeys::from_crd(&crd, "v1"), ListKeys::default());
    /// assert_eq!(ListKeys::from_crd(&crd, "v2"), ListKeys::default());
    /// ```
    pub fn from_crd(crd: &Value, version: &str) -> ListKeys {
        let schema = crd
            .pointer("/spec/versions")
            .and_then(Value::as_array)
            .and_then(|vs| {
                vs.iter()
                    .find(|v| v.get("name").and_then(Value::as_str) == Some(version))
            })
            .and_then(|v| v.pointer("/schema/openAPIV3Schema"));
        match schema {
            Some(s) => ListKeys::from_schema(s),
            None => ListKeys::default(),
        }
    }

    /// Also key the list at `path` (`[*]` for any element, e.g. `spec.groups[*].members`) by
    /// the fields `keys` (several for a compound key).
    ///
    /// ```
    /// use crwatch::diff::{Diff, ListKeys};
    /// use serde_json::json;
    ///
    /// let keys = ListKeys::default().map("spec.routes", &["host", "path"])?;
    /// let d = Diff::between_with(
    ///     &json!({"spec": {"routes": [{"host": "a", "path": "/", "to": "x"}]}}),
    ///     &json!({"spec": {"routes": [{"host": "a", "path": "/", "to": "y"}]}}),
    ///     &keys,
    /// );
    /// assert_eq!(d.paths(), [r#"spec.routes[host=a,path="/"].to"#]);
    /// # Ok::<(), crwatch::diff::PathError>(())
    /// ```
    pub fn map(self, path: &str, keys: &[&str]) -> Result<ListKeys, PathError> {
        let keys = keys.iter().map(|k| (*k).to_owned()).collect();
        self.with(path, ListType::Map(vec![keys]))
    }

    /// Also compare the list at `path` as a set of scalars.
    ///
    /// ```
    /// use crwatch::diff::{Diff, ListKeys};
    /// use serde_json::json;
    ///
    /// let keys = ListKeys::default().set("spec.tags")?;
    /// let d = Diff::between_with(&json!({"spec": {"tags": ["a", "b"]}}), &json!({"spec": {"tags": ["b", "c"]}}), &keys);
    /// assert_eq!(d.to_string(), "- spec.tags[a]: \"a\"\n+ spec.tags[c]: \"c\"");
    /// # Ok::<(), crwatch::diff::PathError>(())
    /// ```
    pub fn set(self, path: &str) -> Result<ListKeys, PathError> {
        self.with(path, ListType::Set)
    }

    /// Compare the list at `path` by index, whatever the built-in table says.
    ///
    /// ```
    /// use crwatch::diff::{Diff, ListKeys};
    /// use serde_json::json;
    ///
    /// let keys = ListKeys::default().atomic("status.conditions")?;
    /// let d = Diff::between_with(
    ///     &json!({"status": {"conditions": [{"type": "A", "status": "1"}]}}),
    ///     &json!({"status": {"conditions": [{"type": "A", "status": "2"}]}}),
    ///     &keys,
    /// );
    /// assert_eq!(d.paths(), ["status.conditions[0].status"]);
    /// # Ok::<(), crwatch::diff::PathError>(())
    /// ```
    pub fn atomic(self, path: &str) -> Result<ListKeys, PathError> {
        self.with(path, ListType::Atomic)
    }

    fn with(mut self, path: &str, ty: ListType) -> Result<ListKeys, PathError> {
        let pat = parse_path(path, true)?
            .into_iter()
            .map(|s| match s {
                ParsedSeg::Key(k) => Ok(PatSeg::Key(k)),
                ParsedSeg::AnyIndex => Ok(PatSeg::AnyElement),
                ParsedSeg::Index(_) | ParsedSeg::Select(_) => Err(PathError {
                    path: path.to_owned(),
                    pos: 0,
                    reason: "list-key rules take [*] for list elements, not a particular element",
                }),
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.rules.push(Rule::Path(pat, ty));
        Ok(self)
    }

    /// How the list at `path` is identified.
    ///
    /// ```
    /// use crwatch::diff::{ListKeys, ListType};
    ///
    /// let keys = ListKeys::default();
    /// assert_eq!(keys.list_type("spec.template.spec.containers")?, ListType::Map(vec![vec!["name".into()]]));
    /// assert_eq!(keys.list_type("spec.users")?, ListType::Atomic);
    /// # Ok::<(), crwatch::diff::PathError>(())
    /// ```
    pub fn list_type(&self, path: &str) -> Result<ListType, PathError> {
        let segs = parse_path(path, true)?;
        Ok(self.lookup(&segs).clone())
    }

    /// The rule for the list at `segs`; [`ListType::Atomic`] when none applies.
    pub(crate) fn lookup<S: SegKind>(&self, segs: &[S]) -> &ListType {
        static ATOMIC: ListType = ListType::Atomic;
        let path_rule = self.rules.iter().rev().find_map(|r| match r {
            Rule::Path(pat, ty) if path_matches(pat, segs) => Some(ty),
            _ => None,
        });
        if let Some(ty) = path_rule {
            return ty;
        }
        let Some(field) = segs.last().and_then(SegKind::key) else {
            return &ATOMIC;
        };
        self.rules
            .iter()
            .rev()
            .find_map(|r| match r {
                Rule::Field(f, ty) if *f == field => Some(ty),
                _ => None,
            })
            .unwrap_or(&ATOMIC)
    }

    fn add_schema(&mut self, schema: &Value, at: &mut Vec<PatSeg>) {
        if at.len() > MAX_SCHEMA_DEPTH {
            return;
        }
        if let Some(items) = schema.get("items") {
            let ty = match schema.get("x-kubernetes-list-type").and_then(Value::as_str) {
                Some("map") => {
                    let keys: Vec<String> = schema
                        .get("x-kubernetes-list-map-keys")
                        .and_then(Value::as_array)
                        .map(|ks| ks.iter().filter_map(Value::as_str).map(str::to_owned).collect())
                        .unwrap_or_default();
                    // A map list without keys is invalid in Kubernetes; index is the safe reading.
                    Some(if keys.is_empty() {
                        ListType::Atomic
                    } else {
                        ListType::Map(vec![keys])
                    })
                }
                Some("set") => Some(ListType::Set),
                Some("atomic") => Some(ListType::Atomic),
                _ => None,
            };
            if let Some(ty) = ty {
                self.rules.push(Rule::Path(at.clone(), ty));
            }
            at.push(PatSeg::AnyElement);
            self.add_schema(items, at);
            at.pop();
        }
        if let Some(props) = schema.get("properties").and_then(Value::as_object) {
            for (k, s) in props {
                at.push(PatSeg::Key(k.clone()));
                self.add_schema(s, at);
                at.pop();
            }
        }
        if let Some(s) = schema.get("additionalProperties").filter(|s| s.is_object()) {
            at.push(PatSeg::AnyKey);
            self.add_schema(s, at);
            at.pop();
        }
    }
}

fn path_matches<S: SegKind>(pat: &[PatSeg], segs: &[S]) -> bool {
    pat.len() == segs.len()
        && pat.iter().zip(segs).all(|(p, s)| match (p, s.key()) {
            (PatSeg::Key(a), Some(b)) => a == b,
            (PatSeg::AnyKey, Some(_)) => true,
            (PatSeg::AnyElement, None) => true,
            _ => false,
        })
}
