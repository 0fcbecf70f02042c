//! Field-level diffs between two versions of an object (`spec.users[1].username` changed from
//! `"a"` to `"b"`, `status.conditions[Ready].status` from `"False"` to `"True"`), in the spirit
//! of kopf's `diff` argument, with a noise filter for fields the API server rewrites on every
//! write.
//!
//! Paths are rendered like jq/kubectl paths: object keys joined with `.`, and keys that are not
//! plain identifiers (dots, slashes, leading digits, empty, non-ASCII) quoted as JSON strings in
//! brackets: `metadata.labels["app.kubernetes.io/name"]`. List elements are addressed by key
//! where the list has one ([`ListKeys`]: the built-in merge keys of Kubernetes kinds and the
//! `x-kubernetes-list-map-keys` of a CRD's schema): `status.conditions[Ready]`,
//! `spec.containers[app]`, `ports[containerPort=8080]`, `volumeMounts[mountPath="/data"]`,
//! `[port=53,protocol=UDP]` for compound keys, `metadata.finalizers[="a.io/b"]` for sets. Other
//! lists are addressed by index: `spec.users[1]`. A keyed element that appears is reported as
//! added, one that goes as removed, and a reorder alone is no change. The root itself is the
//! empty path `""`. Rendering is unambiguous, so every rendered path can be parsed back (that is
//! what [`Diff::apply_to`], [`Diff::touches`] and [`Filter`] rely on).
//!
//! The text rendering (`Display`) is for people: one line per change, long values shortened
//! (see [`FieldChange::short_values`]); the structured changes keep full values.
//!
//! ```
//! use crwatch::diff::Diff;
//! use serde_json::json;
//!
//! let old = json!({"spec": {"size": "10Gi", "users": [{"username": "admin"}]}});
//! let new = json!({"spec": {"size": "20Gi", "users": [{"username": "admin"}, {"username": "app"}]}});
//! let diff = Diff::between(&old, &new);
//! assert_eq!(
//!     diff.to_string(),
//!     "spec.size: \"10Gi\" → \"20Gi\"\n+ spec.users[1]: {\"username\":\"app\"}"
//! );
//! assert!(diff.spec_changed() && !diff.status_changed());
//!
//! let old = json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}});
//! let new = json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}});
//! assert_eq!(Diff::between(&old, &new).to_string(), "status.conditions[Ready].status: \"False\" → \"True\"");
//! ```

mod filter;
mod keys;
mod path;
mod render;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use filter::Filter;
pub use keys::{ListKeys, ListType};
pub use path::PathError;

use path::{ParsedSeg, Seg, is_key_value, parse_path, push_index, push_key, push_selector};

/// Nesting depth past which [`Diff::between`] stops descending and reports the whole subtree as
/// one [`Op::Changed`]: objects may be nested far deeper (servers send up to 10,000 levels and
/// [`crate::json`] decodes any depth), but a change path hundreds of segments long says nothing
/// more, and it keeps the walk's recursion bounded. The walk also moves to a fresh stack
/// segment when its stack runs low ([`crate::json::with_stack`]).
const MAX_DEPTH: usize = 256;

static DEFAULT_FILTER: LazyLock<Filter> = LazyLock::new(Filter::default);

/// What happened at one path.
///
/// ```
/// use crwatch::diff::{Diff, Op};
/// use serde_json::json;
///
/// let diff = Diff::between(&json!({"a": 1}), &json!({"b": 1}));
/// let ops: Vec<Op> = diff.changes.iter().map(|c| c.op).collect();
/// assert_eq!(ops, [Op::Removed, Op::Added]);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// The path exists only in the new value (`old` is `None`).
    Added,
    /// The path exists only in the old value (`new` is `None`).
    Removed,
    /// The path exists in both with different scalar values or different JSON types.
    Changed,
}

/// One changed path with its old and new values.
///
/// ```
/// use crwatch::diff::{Diff, FieldChange, Op};
/// use serde_json::json;
///
/// let diff = Diff::between(&json!({"spec": {"size": 1}}), &json!({"spec": {"size": 2}}));
/// assert_eq!(
///     diff.changes,
///     [FieldChange {
///         path: "spec.size".into(),
///         op: Op::Changed,
///         old: Some(json!(1)),
///         new: Some(json!(2)),
///     }]
/// );
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FieldChange {
    /// Rendered path, e.g. `spec.users[1].username` or `metadata.labels["app.kubernetes.io/name"]`.
    pub path: String,
    /// Added, removed or changed.
    pub op: Op,
    /// The value before (absent for [`Op::Added`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old: Option<Value>,
    /// The value after (absent for [`Op::Removed`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new: Option<Value>,
}

/// All field changes between two values, in document order (old keys first, then keys only
/// the new value has; list elements by index, or for keyed lists old elements first, then
/// elements only the new list has).
///
/// Values of added and removed subtrees are reported whole and unfiltered: the filter decides
/// which paths are compared, not what a reported value contains.
///
/// ```
/// use crwatch::diff::Diff;
/// use serde_json::json;
///
/// let old = json!({"metadata": {"resourceVersion": "1", "labels": {"app": "x"}}});
/// let new = json!({"metadata": {"resourceVersion": "2"}});
/// let diff = Diff::between(&old, &new);
/// // resourceVersion is noise and filtered out by default:
/// assert_eq!(diff.to_string(), "- metadata.labels: {\"app\":\"x\"}");
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Diff {
    /// The changes, in document order.
    pub changes: Vec<FieldChange>,
}

/// Applying a diff failed because the target does not have the shape the diff expects.
///
/// ```
/// use crwatch::diff::Diff;
/// use serde_json::json;
///
/// let diff = Diff::between(&json!({"a": {"b": 1}}), &json!({"a": {"b": 2}}));
/// let mut unrelated = json!([1, 2]);
/// assert!(diff.apply_to(&mut unrelated).is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cannot apply change at {path:?}: {reason}")]
pub struct ApplyError {
    /// The path of the change that failed.
    pub path: String,
    /// Why it failed.
    pub reason: &'static str,
}

/// What a diff compares and how: which paths to ignore ([`Filter`]) and which lists to match
/// by key ([`ListKeys`]). Built from either alone (the other at its default) or from both, so
/// every `*_with` function takes `&filter`, `&keys` or `(&filter, &keys)`.
///
/// ```
/// use crwatch::diff::{Diff, DiffOptions, Filter, ListKeys};
/// use serde_json::json;
///
/// let (old, new) = (json!({"a": [1, 2]}), json!({"a": [2, 1]}));
/// let keys = ListKeys::default().set("a")?;
/// assert!(Diff::between_with(&old, &new, &keys).is_empty());
/// assert!(Diff::between_with(&old, &new, (&Filter::none(), &keys)).is_empty());
/// assert_eq!(Diff::between_with(&old, &new, DiffOptions::default()).len(), 2);
/// # Ok::<(), crwatch::diff::PathError>(())
/// ```
#[derive(Clone, Copy, Debug)]
pub struct DiffOptions<'a> {
    /// Paths not compared.
    pub filter: &'a Filter,
    /// Lists compared by key.
    pub keys: &'a ListKeys,
}

impl Default for DiffOptions<'_> {
    /// The default noise filter and the built-in list keys.
    fn default() -> Self {
        DiffOptions {
            filter: &DEFAULT_FILTER,
            keys: ListKeys::builtin(),
        }
    }
}

impl<'a> From<&'a Filter> for DiffOptions<'a> {
    fn from(filter: &'a Filter) -> Self {
        DiffOptions {
            filter,
            ..Default::default()
        }
    }
}

impl<'a> From<&'a ListKeys> for DiffOptions<'a> {
    fn from(keys: &'a ListKeys) -> Self {
        DiffOptions {
            keys,
            ..Default::default()
        }
    }
}

impl<'a> From<(&'a Filter, &'a ListKeys)> for DiffOptions<'a> {
    fn from((filter, keys): (&'a Filter, &'a ListKeys)) -> Self {
        DiffOptions { filter, keys }
    }
}

/// Walker state shared by the recursion, so paths are built in one reused buffer.
struct Walker<'f> {
    filter: &'f Filter,
    keys: &'f ListKeys,
    segs: Vec<Seg<'f>>,
    path: String,
    out: Vec<FieldChange>,
}

impl Diff {
    /// Diff two JSON values with the [default noise filter](Filter::default) and the
    /// [built-in list keys](ListKeys::default).
    ///
    /// ```
    /// use crwatch::diff::Diff;
    /// use serde_json::json;
    ///
    /// let d = Diff::between(&json!({"spec": {"users": ["a", "b"]}}), &json!({"spec": {"users": ["a"]}}));
    /// assert_eq!(d.to_string(), "- spec.users[1]: \"b\"");
    /// ```
    pub fn between(old: &Value, new: &Value) -> Diff {
        Diff::between_with(old, new, DiffOptions::default())
    }

    /// Diff two JSON values with other [options](DiffOptions): skipping the paths a [`Filter`]
    /// ignores, matching lists by the keys of a [`ListKeys`] (say, those of a CRD's schema), or
    /// both.
    ///
    /// ```
    /// use crwatch::diff::{Diff, Filter, ListKeys};
    /// use serde_json::json;
    ///
    /// let d = Diff::between_with(&json!(1), &json!("1"), &Filter::none());
    /// assert_eq!(d.paths(), [""]); // a type change at the root
    ///
    /// let keys = ListKeys::default().map("spec.users", &["username"])?;
    /// let d = Diff::between_with(
    ///     &json!({"spec": {"users": [{"username": "a"}, {"username": "b"}]}}),
    ///     &json!({"spec": {"users": [{"username": "b"}]}}),
    ///     &keys,
    /// );
    /// assert_eq!(d.to_string(), "- spec.users[a]: {\"username\":\"a\"}");
    /// # Ok::<(), crwatch::diff::PathError>(())
    /// ```
    pub fn between_with<'a>(old: &Value, new: &Value, options: impl Into<DiffOptions<'a>>) -> Diff {
        let DiffOptions { filter, keys } = options.into();
        let mut w = Walker {
            filter,
            keys,
            segs: Vec::new(),
            path: String::new(),
            out: Vec::new(),
        };
        w.walk(old, new);
        Diff { changes: w.out }
    }

    /// Diff two serializable objects (e.g. two versions of a Kubernetes resource) with the
    /// default filter.
    ///
    /// Serialization into JSON cannot fail for kube and k8s-openapi types; if it does fail
    /// for some custom type (a map with non-string keys, a failing `Serialize` impl), that side
    /// is treated as `null`, so the diff reports the object as changed rather than hiding a
    /// change. Use [`Diff::try_of`] to see the error instead.
    ///
    /// ```
    /// use crwatch::diff::Diff;
    /// use k8s_openapi::api::core::v1::ConfigMap;
    ///
    /// let mut old = ConfigMap::default();
    /// old.data = Some([("k".to_string(), "v1".to_string())].into());
    /// let mut new = old.clone();
    /// new.data = Some([("k".to_string(), "v2".to_string())].into());
    /// assert_eq!(Diff::of(&old, &new).to_string(), "data.k: \"v1\" → \"v2\"");
    /// ```
    pub fn of<K: Serialize>(old: &K, new: &K) -> Diff {
        Diff::of_with(old, new, DiffOptions::default())
    }

    /// Like [`Diff::of`], with other [options](DiffOptions) (a filter, list keys or both).
    ///
    /// ```
    /// use crwatch::diff::{Diff, ListKeys};
    /// use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
    ///
    /// let pod = |names: &[&str]| Pod {
    ///     spec: Some(PodSpec {
    ///         containers: names.iter().map(|n| Container { name: n.to_string(), ..Default::default() }).collect(),
    ///         ..Default::default()
    ///     }),
    ///     ..Default::default()
    /// };
    /// let d = Diff::of_with(&pod(&["app", "sidecar"]), &pod(&["sidecar", "app"]), ListKeys::builtin());
    /// assert!(d.is_empty()); // containers are keyed by name: a reorder is no change
    /// let d = Diff::of_with(&pod(&["app", "sidecar"]), &pod(&["sidecar", "app"]), ListKeys::none());
    /// assert_eq!(d.paths(), ["spec.containers[0].name", "spec.containers[1].name"]);
    /// ```
    pub fn of_with<'a, K: Serialize>(old: &K, new: &K, options: impl Into<DiffOptions<'a>>) -> Diff {
        let old = serde_json::to_value(old).unwrap_or(Value::Null);
        let new = serde_json::to_value(new).unwrap_or(Value::Null);
        Diff::between_with(&old, &new, options)
    }

    /// Like [`Diff::of`], but returns the serialization error if either side fails.
    ///
    /// ```
    /// use crwatch::diff::Diff;
    /// use std::collections::BTreeMap;
    ///
    /// let bad: BTreeMap<(u8, u8), u8> = [((1, 2), 3)].into();
    /// assert!(Diff::try_of(&bad, &bad).is_err());
    /// assert!(Diff::try_of(&1, &2).is_ok());
    /// ```
    pub fn try_of<K: Serialize>(old: &K, new: &K) -> Result<Diff, serde_json::Error> {
        Ok(Diff::between(
            &serde_json::to_value(old)?,
            &serde_json::to_value(new)?,
        ))
    }

    /// True when nothing (outside the filtered paths) changed.
    ///
    /// ```
    /// use crwatch::diff::Diff;
    /// use serde_json::json;
    ///
    /// assert!(Diff::between(&json!({"a": [1]}), &json!({"a": [1]})).is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// Number of changed paths.
    ///
    /// ```
    /// use crwatch::diff::Diff;
    /// use serde_json::json;
    ///
    /// assert_eq!(Diff::between(&json!([1, 2]), &json!([3])).len(), 2);
    /// ```
    pub fn len(&self) -> usize {
        self.changes.len()
    }

    /// The rendered paths of all changes, in order.
    ///
    /// ```
    /// use crwatch::diff::Diff;
    /// use serde_json::json;
    ///
    /// let d = Diff::between(&json!({"metadata": {"labels": {}}}), &json!({"metadata": {"labels": {"app.kubernetes.io/name": "db"}}}));
    /// assert_eq!(d.paths(), [r#"metadata.labels["app.kubernetes.io/name"]"#]);
    /// ```
    pub fn paths(&self) -> Vec<&str> {
        self.changes.iter().map(|c| c.path.as_str()).collect()
    }

    /// Whether anything at or under `prefix` changed. A change reported at an ancestor (say
    /// `spec` added as a whole) counts when the value at `prefix` inside it differs, so
    /// `touches("spec.size")` is true when a whole `spec` with a `size` appeared (list elements
    /// named by key inside such a value are found with the built-in [`ListKeys`]). `[*]` stands
    /// for any list element, and `[type=Ready]` matches `[Ready]`. A `prefix` that is not a
    /// valid path touches nothing.
    ///
    /// ```
    /// use crwatch::diff::Diff;
    /// use serde_json::json;
    ///
    /// let d = Diff::between(&json!({}), &json!({"spec": {"size": 1}}));
    /// assert!(d.touches("spec") && d.touches("spec.size"));
    /// assert!(!d.touches("spec.version") && !d.touches("status"));
    ///
    /// let d = Diff::between(
    ///     &json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}}),
    ///     &json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}}),
    /// );
    /// assert!(d.touches("status.conditions[Ready]") && d.touches("status.conditions[type=Ready].status"));
    /// assert!(d.touches("status.conditions[*].status") && !d.touches("status.conditions[Synced]"));
    /// ```
    pub fn touches(&self, prefix: &str) -> bool {
        let Ok(prefix) = parse_path(prefix, true) else {
            return false;
        };
        self.changes.iter().any(|c| {
            let Ok(path) = parse_path(&c.path, false) else {
                return false;
            };
            if starts_with(&path, &prefix) {
                return true;
            }
            if prefix.len() > path.len() && starts_with(&prefix[..path.len()], &path) {
                let rest = &prefix[path.len()..];
                // A wildcard below a change reported whole: that subtree changed somewhere.
                if rest.contains(&ParsedSeg::AnyIndex) {
                    return true;
                }
                let keys = ListKeys::builtin();
                let old = c.old.as_ref().and_then(|v| lookup(v, rest, keys));
                let new = c.new.as_ref().and_then(|v| lookup(v, rest, keys));
                return old != new;
            }
            false
        })
    }

    /// True when every change lies at or under one of `prefixes` (and so also for an empty
    /// diff). Typical use: skip reconciling when only `status` moved.
    ///
    /// ```
    /// use crwatch::diff::Diff;
    /// use serde_json::json;
    ///
    /// let d = Diff::between(&json!({"status": {"phase": "Pending"}}), &json!({"status": {"phase": "Ready"}}));
    /// assert!(d.only_under(&["status"]));
    /// assert!(!d.only_under(&["spec"]));
    /// ```
    pub fn only_under(&self, prefixes: &[&str]) -> bool {
        let prefixes: Vec<Vec<ParsedSeg>> =
            prefixes.iter().filter_map(|p| parse_path(p, true).ok()).collect();
        self.changes.iter().all(|c| {
            parse_path(&c.path, false).is_ok_and(|path| prefixes.iter().any(|p| starts_with(&path, p)))
        })
    }

    /// Whether anything under `spec` changed.
    ///
    /// ```
    /// use crwatch::diff::Diff;
    /// use serde_json::json;
    ///
    /// assert!(Diff::between(&json!({"spec": {"a": 1}}), &json!({"spec": {"a": 2}})).spec_changed());
    /// ```
    pub fn spec_changed(&self) -> bool {
        self.touches("spec")
    }

    /// Whether anything under `status` changed.
    ///
    /// ```
    /// use crwatch::diff::Diff;
    /// use serde_json::json;
    ///
    /// assert!(Diff::between(&json!({}), &json!({"status": {"ready": true}})).status_changed());
    /// ```
    pub fn status_changed(&self) -> bool {
        self.touches("status")
    }

    /// Whether anything under `metadata` changed (outside the filtered noise).
    ///
    /// ```
    /// use crwatch::diff::Diff;
    /// use serde_json::json;
    ///
    /// let rv = Diff::between(&json!({"metadata": {"resourceVersion": "1"}}), &json!({"metadata": {"resourceVersion": "2"}}));
    /// assert!(!rv.metadata_changed());
    /// let label = Diff::between(&json!({"metadata": {}}), &json!({"metadata": {"labels": {"a": "b"}}}));
    /// assert!(label.metadata_changed());
    /// ```
    pub fn metadata_changed(&self) -> bool {
        self.touches("metadata")
    }

    /// Apply the changes to `target` (normally the `old` value the diff was computed from),
    /// turning it into `new` except for filtered paths, which keep their old values, and the
    /// order of keyed lists: an added keyed element goes to the end, and a reorder alone is no
    /// change. Elements named by a key value alone (`[Ready]`) are found with the built-in
    /// [`ListKeys`]; use [`Diff::apply_to_with`] for a diff made with other keys.
    ///
    /// ```
    /// use crwatch::diff::{Diff, Filter};
    /// use serde_json::json;
    ///
    /// let old = json!({"spec": {"users": ["a", "b", "c"], "size": 1}});
    /// let new = json!({"spec": {"users": ["a"], "size": "1Gi"}});
    /// let mut v = old.clone();
    /// Diff::between_with(&old, &new, &Filter::none()).apply_to(&mut v)?;
    /// assert_eq!(v, new);
    /// # Ok::<(), crwatch::diff::ApplyError>(())
    /// ```
    pub fn apply_to(&self, target: &mut Value) -> Result<(), ApplyError> {
        self.apply_to_with(target, ListKeys::builtin())
    }

    /// Like [`Diff::apply_to`], finding keyed list elements with `keys` (the ones the diff was
    /// made with).
    ///
    /// ```
    /// use crwatch::diff::{Diff, ListKeys};
    /// use serde_json::json;
    ///
    /// let keys = ListKeys::default().map("spec.users", &["username"])?;
    /// let old = json!({"spec": {"users": [{"username": "a", "role": "r"}, {"username": "b"}]}});
    /// let new = json!({"spec": {"users": [{"username": "a", "role": "rw"}]}});
    /// let d = Diff::between_with(&old, &new, &keys);
    /// assert_eq!(d.paths(), ["spec.users[a].role", "spec.users[b]"]);
    /// let mut v = old.clone();
    /// d.apply_to_with(&mut v, &keys).expect("applies");
    /// assert_eq!(v, new);
    /// # Ok::<(), crwatch::diff::PathError>(())
    /// ```
    pub fn apply_to_with(&self, target: &mut Value, keys: &ListKeys) -> Result<(), ApplyError> {
        // Removed list elements by index are always a tail of their list and are reported in
        // ascending order, so they must be taken out back to front, after everything else, for
        // the indices of the other changes to stay valid. Keyed elements have no such problem.
        let mut tail_removals = Vec::new();
        for c in &self.changes {
            let err = |reason| ApplyError {
                path: c.path.clone(),
                reason,
            };
            let path = parse_path(&c.path, false).map_err(|_| err("path does not parse"))?;
            if c.op == Op::Removed && matches!(path.last(), Some(ParsedSeg::Index(_))) {
                tail_removals.push((c, path));
                continue;
            }
            apply_one(target, c, &path, keys).map_err(err)?;
        }
        for (c, path) in tail_removals.into_iter().rev() {
            apply_one(target, c, &path, keys).map_err(|reason| ApplyError {
                path: c.path.clone(),
                reason,
            })?;
        }
        Ok(())
    }
}

/// Whether `path` starts with `prefix`, where `[*]` in the prefix matches any element and
/// selectors match as [`Filter`] patterns do (`[type=Ready]` matches `[Ready]`).
fn starts_with(path: &[ParsedSeg], prefix: &[ParsedSeg]) -> bool {
    path.len() >= prefix.len()
        && prefix.iter().zip(path).all(|(p, s)| match (p, s) {
            (ParsedSeg::AnyIndex, ParsedSeg::Index(_) | ParsedSeg::Select(_)) => true,
            (ParsedSeg::Select(a), ParsedSeg::Select(b)) => {
                let b: Vec<(Option<&str>, &Value)> = b.iter().map(|(n, v)| (n.as_deref(), v)).collect();
                path::selector_matches(a, &b)
            }
            _ => p == s,
        })
}

fn apply_one(
    target: &mut Value,
    c: &FieldChange,
    path: &[ParsedSeg],
    keys: &ListKeys,
) -> Result<(), &'static str> {
    let Some((last, parent_path)) = path.split_last() else {
        return match (c.op, &c.new) {
            (Op::Removed, _) => {
                *target = Value::Null;
                Ok(())
            }
            (_, Some(v)) => {
                *target = v.clone();
                Ok(())
            }
            (_, None) => Err("change has no new value"),
        };
    };
    let parent = lookup_mut(target, parent_path, keys).ok_or("parent path does not exist")?;
    match (parent, last, c.op) {
        (Value::Object(m), ParsedSeg::Key(k), Op::Removed) => {
            m.shift_remove(k).map(drop).ok_or("key to remove does not exist")
        }
        (Value::Object(m), ParsedSeg::Key(k), _) => {
            let v = c.new.clone().ok_or("change has no new value")?;
            m.insert(k.clone(), v);
            Ok(())
        }
        (Value::Array(a), ParsedSeg::Index(i), Op::Removed) => {
            if *i < a.len() {
                a.remove(*i);
                Ok(())
            } else {
                Err("list index to remove is out of range")
            }
        }
        (Value::Array(a), ParsedSeg::Index(i), Op::Added) => {
            let v = c.new.clone().ok_or("change has no new value")?;
            if *i <= a.len() {
                a.insert(*i, v);
                Ok(())
            } else {
                Err("list index to add is past the end")
            }
        }
        (Value::Array(a), ParsedSeg::Index(i), Op::Changed) => {
            let v = c.new.clone().ok_or("change has no new value")?;
            let slot = a.get_mut(*i).ok_or("list index to change is out of range")?;
            *slot = v;
            Ok(())
        }
        (Value::Array(a), ParsedSeg::Select(sel), op) => {
            let found = find_element(a, sel, keys.lookup(parent_path));
            match (op, found) {
                (Op::Removed, Some(i)) => {
                    a.remove(i);
                    Ok(())
                }
                (Op::Removed, None) => Err("keyed list element to remove does not exist"),
                (Op::Added, Some(_)) => Err("keyed list element to add exists already"),
                (Op::Added, None) => {
                    a.push(c.new.clone().ok_or("change has no new value")?);
                    Ok(())
                }
                (Op::Changed, Some(i)) => {
                    a[i] = c.new.clone().ok_or("change has no new value")?;
                    Ok(())
                }
                (Op::Changed, None) => Err("keyed list element to change does not exist"),
            }
        }
        _ => Err("parent has the wrong type for this path segment"),
    }
}

/// The position of the element `sel` names in `list`. Named fields compare directly; a lone
/// unnamed value is a set element (a scalar equal to it) or, in a list of objects, the value
/// of the list's single key field according to `ty`. A linear scan: applying is rare and
/// lists are short next to the cost of parsing each path.
fn find_element(list: &[Value], sel: &[(Option<String>, Value)], ty: &ListType) -> Option<usize> {
    match sel {
        [(None, v)] => list.iter().position(|e| e == v).or_else(|| {
            let ListType::Map(candidates) = ty else {
                return None;
            };
            candidates
                .iter()
                .filter(|c| c.len() == 1)
                .find_map(|c| list.iter().position(|e| e.get(&c[0]) == Some(v)))
        }),
        fields => list.iter().position(|e| {
            fields
                .iter()
                .all(|(n, v)| n.as_ref().is_some_and(|n| e.get(n) == Some(v)))
        }),
    }
}

fn lookup<'v>(mut v: &'v Value, path: &[ParsedSeg], keys: &ListKeys) -> Option<&'v Value> {
    // Rules are matched on whole paths from the root; below a reported change only the
    // field-name rules can apply, which is what matching on the remaining path gives.
    for (n, seg) in path.iter().enumerate() {
        v = match (v, seg) {
            (Value::Object(m), ParsedSeg::Key(k)) => m.get(k)?,
            (Value::Array(a), ParsedSeg::Index(i)) => a.get(*i)?,
            (Value::Array(a), ParsedSeg::Select(sel)) => &a[find_element(a, sel, keys.lookup(&path[..n]))?],
            _ => return None,
        };
    }
    Some(v)
}

fn lookup_mut<'v>(mut v: &'v mut Value, path: &[ParsedSeg], keys: &ListKeys) -> Option<&'v mut Value> {
    for (n, seg) in path.iter().enumerate() {
        v = match (v, seg) {
            (Value::Object(m), ParsedSeg::Key(k)) => m.get_mut(k)?,
            (Value::Array(a), ParsedSeg::Index(i)) => a.get_mut(*i)?,
            (Value::Array(a), ParsedSeg::Select(sel)) => {
                let i = find_element(a, sel, keys.lookup(&path[..n]))?;
                &mut a[i]
            }
            _ => return None,
        };
    }
    Some(v)
}

/// The key of each element of a list under one candidate key set (rendered as its path
/// segment, which is unique per key value), or `None` when an element lacks a key field, has a
/// non-scalar key value or repeats another element's key.
fn map_keys<'v>(list: &'v [Value], fields: &'v [String]) -> Option<Vec<(String, Seg<'v>)>> {
    let mut seen = HashSet::with_capacity(list.len());
    list.iter()
        .map(|e| {
            let obj = e.as_object()?;
            let sel: Vec<(Option<&str>, &Value)> = fields
                .iter()
                .map(|f| {
                    obj.get(f)
                        .filter(|v| is_key_value(v))
                        .map(|v| (Some(f.as_str()), v))
                })
                .collect::<Option<_>>()?;
            let mut rendered = String::new();
            push_selector(&mut rendered, &sel);
            seen.insert(rendered.clone())
                .then_some((rendered, Seg::Select(sel)))
        })
        .collect()
}

/// Like [`map_keys`] for a set: every element a distinct scalar.
fn set_keys(list: &[Value]) -> Option<Vec<(String, Seg<'_>)>> {
    let mut seen = HashSet::with_capacity(list.len());
    list.iter()
        .map(|e| {
            if !is_key_value(e) {
                return None;
            }
            let sel = vec![(None, e)];
            let mut rendered = String::new();
            push_selector(&mut rendered, &sel);
            seen.insert(rendered.clone())
                .then_some((rendered, Seg::Select(sel)))
        })
        .collect()
}

impl<'f> Walker<'f> {
    fn walk(&mut self, old: &'f Value, new: &'f Value) {
        crate::json::with_stack(|| self.walk_here(old, new))
    }

    fn walk_here(&mut self, old: &'f Value, new: &'f Value) {
        if self.filter.matches(&self.segs) {
            return;
        }
        match (old, new) {
            (Value::Object(a), Value::Object(b)) if self.segs.len() < MAX_DEPTH => self.walk_objects(a, b),
            (Value::Array(a), Value::Array(b)) if self.segs.len() < MAX_DEPTH => self.walk_arrays(a, b),
            _ if old == new => {}
            _ => self.emit(Op::Changed, Some(old), Some(new)),
        }
    }

    fn walk_objects(&mut self, a: &'f Map<String, Value>, b: &'f Map<String, Value>) {
        for (k, va) in a {
            match b.get(k) {
                Some(vb) => self.child(Seg::Key(k), None, |w| w.walk(va, vb)),
                None => self.child(Seg::Key(k), None, |w| {
                    w.emit_unless_filtered(Op::Removed, Some(va), None)
                }),
            }
        }
        for (k, vb) in b {
            if !a.contains_key(k) {
                self.child(Seg::Key(k), None, |w| {
                    w.emit_unless_filtered(Op::Added, None, Some(vb))
                });
            }
        }
    }

    fn walk_arrays(&mut self, a: &'f [Value], b: &'f [Value]) {
        let keyed = match self.keys.lookup(&self.segs) {
            ListType::Atomic => None,
            ListType::Set => set_keys(a).zip(set_keys(b)),
            ListType::Map(candidates) => candidates
                .iter()
                .find_map(|fields| map_keys(a, fields).zip(map_keys(b, fields))),
        };
        match keyed {
            Some((ka, kb)) => self.walk_keyed(a, b, ka, kb),
            None => self.walk_indexed(a, b),
        }
    }

    /// Matches elements by key through a hash map: linear in the list lengths.
    fn walk_keyed(
        &mut self,
        a: &'f [Value],
        b: &'f [Value],
        ka: Vec<(String, Seg<'f>)>,
        kb: Vec<(String, Seg<'f>)>,
    ) {
        let in_b: HashMap<&str, usize> = kb.iter().enumerate().map(|(j, (k, _))| (k.as_str(), j)).collect();
        let in_a: HashSet<&str> = ka.iter().map(|(k, _)| k.as_str()).collect();
        for (va, (key, seg)) in a.iter().zip(&ka) {
            match in_b.get(key.as_str()) {
                Some(&j) => self.child(seg.clone(), Some(key), |w| w.walk(va, &b[j])),
                None => self.child(seg.clone(), Some(key), |w| {
                    w.emit_unless_filtered(Op::Removed, Some(va), None)
                }),
            }
        }
        for (vb, (key, seg)) in b.iter().zip(&kb) {
            if !in_a.contains(key.as_str()) {
                self.child(seg.clone(), Some(key), |w| {
                    w.emit_unless_filtered(Op::Added, None, Some(vb))
                });
            }
        }
    }

    fn walk_indexed(&mut self, a: &'f [Value], b: &'f [Value]) {
        for (i, (va, vb)) in a.iter().zip(b).enumerate() {
            self.child(Seg::Index(i), None, |w| w.walk(va, vb));
        }
        for (i, va) in a.iter().enumerate().skip(b.len()) {
            self.child(Seg::Index(i), None, |w| {
                w.emit_unless_filtered(Op::Removed, Some(va), None)
            });
        }
        for (i, vb) in b.iter().enumerate().skip(a.len()) {
            self.child(Seg::Index(i), None, |w| {
                w.emit_unless_filtered(Op::Added, None, Some(vb))
            });
        }
    }

    /// Runs `f` with `seg` pushed onto the current path (`rendered` is a selector's rendering,
    /// computed already for matching), then restores the path.
    fn child(&mut self, seg: Seg<'f>, rendered: Option<&str>, f: impl FnOnce(&mut Self)) {
        let len = self.path.len();
        match (&seg, rendered) {
            (_, Some(r)) => self.path.push_str(r),
            (Seg::Key(k), None) => push_key(&mut self.path, k),
            (Seg::Index(i), None) => push_index(&mut self.path, *i),
            (Seg::Select(sel), None) => push_selector(&mut self.path, sel),
        }
        self.segs.push(seg);
        f(self);
        self.segs.pop();
        self.path.truncate(len);
    }

    fn emit_unless_filtered(&mut self, op: Op, old: Option<&Value>, new: Option<&Value>) {
        if !self.filter.matches(&self.segs) {
            self.emit(op, old, new);
        }
    }

    fn emit(&mut self, op: Op, old: Option<&Value>, new: Option<&Value>) {
        self.out.push(FieldChange {
            path: self.path.clone(),
            op,
            old: old.cloned(),
            new: new.cloned(),
        });
    }
}

impl<'a> IntoIterator for &'a Diff {
    type Item = &'a FieldChange;
    type IntoIter = std::slice::Iter<'a, FieldChange>;

    fn into_iter(self) -> Self::IntoIter {
        self.changes.iter()
    }
}
