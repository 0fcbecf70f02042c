//! Field-level diffs between two versions of an object (`spec.users[1].username` changed from
//! `"a"` to `"b"`), in the spirit of kopf's `diff` argument, with a noise filter for fields the
//! API server rewrites on every write.
//!
//! Paths are rendered like jq/kubectl paths: object keys joined with `.`, list elements as
//! `[index]`, and keys that are not plain identifiers (dots, slashes, leading digits, empty,
//! non-ASCII) quoted as JSON strings in brackets: `metadata.labels["app.kubernetes.io/name"]`.
//! The root itself is the empty path `""`. Rendering is unambiguous, so every rendered path can
//! be parsed back (that is what [`Diff::apply_to`], [`Diff::touches`] and [`Filter`] rely on).
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
//! ```

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Nesting depth past which [`Diff::between`] stops descending and reports the whole subtree as
/// one [`Op::Changed`]: it keeps recursion bounded for hand-built values that are deeper than
/// anything serde_json parses (its own limit is 128), so no input can exhaust the stack here.
const MAX_DEPTH: usize = 256;

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
/// the new value has; list elements by index).
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

/// Which paths a diff ignores. [`Filter::default`] drops fields that change on every write
/// without saying anything about intent:
///
/// - `metadata.resourceVersion`, `metadata.managedFields`, `metadata.selfLink`;
/// - `metadata.generation`: it is derived (the API server bumps it when `spec` changes, and the
///   `spec` change itself is in the diff), so reporting it would only double every spec change;
/// - `metadata.annotations["kubectl.kubernetes.io/last-applied-configuration"]`: a serialized
///   copy of the object that `kubectl apply` rewrites alongside the fields it carries.
///
/// A pattern matches its path and everything under it; `[*]` matches any list index.
///
/// ```
/// use crwatch::diff::{Diff, Filter};
/// use serde_json::json;
///
/// let old = json!({"status": {"conditions": [{"type": "Ready", "lastProbeTime": "t1"}]}});
/// let new = json!({"status": {"conditions": [{"type": "Ready", "lastProbeTime": "t2"}]}});
/// let filter = Filter::default().ignore("status.conditions[*].lastProbeTime");
/// assert!(Diff::between_with(&old, &new, &filter).is_empty());
/// assert!(!Diff::between_with(&old, &new, &Filter::none()).is_empty());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    patterns: Vec<Pattern>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Pattern {
    Segments(Vec<PatSeg>),
    /// A string that is not a valid path. Every rendered path parses, so it can never match;
    /// it is kept only so [`Filter::patterns`] shows what the caller wrote.
    Invalid(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum PatSeg {
    Key(String),
    Index(usize),
    AnyIndex,
}

/// A path string that does not follow the path syntax described in the [module docs](self).
///
/// ```
/// use crwatch::diff::Filter;
///
/// let err = Filter::none().try_ignore("spec..size").unwrap_err();
/// assert!(err.to_string().contains("spec..size"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid diff path {path:?} at byte {pos}: {reason}; use keys joined by '.', [N] for list elements and [\"quoted\"] for keys with dots or other special characters"
)]
pub struct PathError {
    /// The path as given.
    pub path: String,
    /// Byte offset of the problem.
    pub pos: usize,
    /// What was expected there.
    pub reason: &'static str,
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

impl Default for Filter {
    fn default() -> Self {
        Filter::none()
            .ignore("metadata.resourceVersion")
            .ignore("metadata.managedFields")
            .ignore("metadata.generation")
            .ignore("metadata.selfLink")
            .ignore(r#"metadata.annotations["kubectl.kubernetes.io/last-applied-configuration"]"#)
    }
}

impl Filter {
    /// A filter that ignores nothing.
    ///
    /// ```
    /// use crwatch::diff::{Diff, Filter};
    /// use serde_json::json;
    ///
    /// let d = Diff::between_with(
    ///     &json!({"metadata": {"resourceVersion": "1"}}),
    ///     &json!({"metadata": {"resourceVersion": "2"}}),
    ///     &Filter::none(),
    /// );
    /// assert_eq!(d.paths(), ["metadata.resourceVersion"]);
    /// ```
    pub fn none() -> Self {
        Filter { patterns: Vec::new() }
    }

    /// Also ignore `path` and everything under it. `[*]` stands for any list index. A string
    /// that is not a valid path matches nothing; use [`Filter::try_ignore`] to be told.
    ///
    /// ```
    /// use crwatch::diff::{Diff, Filter};
    /// use serde_json::json;
    ///
    /// let f = Filter::default().ignore("status.lastProbeTime");
    /// let d = Diff::between_with(&json!({"status": {"lastProbeTime": 1}}), &json!({"status": {"lastProbeTime": 2}}), &f);
    /// assert!(d.is_empty());
    /// ```
    pub fn ignore(self, path: &str) -> Self {
        match self.clone().try_ignore(path) {
            Ok(f) => f,
            Err(_) => {
                let mut f = self;
                f.patterns.push(Pattern::Invalid(path.to_owned()));
                f
            }
        }
    }

    /// Like [`Filter::ignore`], but rejects a path that does not parse.
    ///
    /// ```
    /// use crwatch::diff::Filter;
    ///
    /// assert!(Filter::none().try_ignore(r#"metadata.annotations["a.b/c"]"#).is_ok());
    /// assert!(Filter::none().try_ignore("spec[").is_err());
    /// ```
    pub fn try_ignore(mut self, path: &str) -> Result<Self, PathError> {
        let segs = parse_path(path, true)?;
        let pat = segs
            .into_iter()
            .map(|s| match s {
                ParsedSeg::Key(k) => PatSeg::Key(k),
                ParsedSeg::Index(i) => PatSeg::Index(i),
                ParsedSeg::AnyIndex => PatSeg::AnyIndex,
            })
            .collect();
        self.patterns.push(Pattern::Segments(pat));
        Ok(self)
    }

    /// The ignored paths, as given.
    ///
    /// ```
    /// use crwatch::diff::Filter;
    ///
    /// assert!(Filter::default().patterns().contains(&"metadata.managedFields".to_string()));
    /// assert!(Filter::none().patterns().is_empty());
    /// ```
    pub fn patterns(&self) -> Vec<String> {
        self.patterns
            .iter()
            .map(|p| match p {
                Pattern::Invalid(s) => s.clone(),
                Pattern::Segments(segs) => {
                    let mut out = String::new();
                    for s in segs {
                        match s {
                            PatSeg::Key(k) => push_key(&mut out, k),
                            PatSeg::Index(i) => push_index(&mut out, *i),
                            PatSeg::AnyIndex => out.push_str("[*]"),
                        }
                    }
                    out
                }
            })
            .collect()
    }

    /// Whether a rendered path (or one of its ancestors) is ignored.
    ///
    /// ```
    /// use crwatch::diff::Filter;
    ///
    /// let f = Filter::default();
    /// assert!(f.is_ignored("metadata.managedFields[0].manager"));
    /// assert!(!f.is_ignored("metadata.labels"));
    /// ```
    pub fn is_ignored(&self, path: &str) -> bool {
        let Ok(segs) = parse_path(path, false) else {
            return false;
        };
        let segs: Vec<Seg<'_>> = segs
            .iter()
            .filter_map(|s| match s {
                ParsedSeg::Key(k) => Some(Seg::Key(k)),
                ParsedSeg::Index(i) => Some(Seg::Index(*i)),
                ParsedSeg::AnyIndex => None,
            })
            .collect();
        (0..=segs.len()).any(|n| self.matches(&segs[..n]))
    }

    /// Whether a pattern matches exactly this path (ancestors are checked while descending).
    fn matches(&self, segs: &[Seg<'_>]) -> bool {
        self.patterns.iter().any(|p| match p {
            Pattern::Invalid(_) => false,
            Pattern::Segments(pat) => {
                pat.len() == segs.len()
                    && pat.iter().zip(segs).all(|(p, s)| match (p, s) {
                        (PatSeg::Key(a), Seg::Key(b)) => a == b,
                        (PatSeg::Index(a), Seg::Index(b)) => a == b,
                        (PatSeg::AnyIndex, Seg::Index(_)) => true,
                        _ => false,
                    })
            }
        })
    }
}

/// A borrowed path segment while walking values.
#[derive(Clone, Copy, Debug)]
enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

/// An owned path segment parsed from a string.
#[derive(Clone, Debug, PartialEq, Eq)]
enum ParsedSeg {
    Key(String),
    Index(usize),
    AnyIndex,
}

/// Walker state shared by the recursion, so paths are built in one reused buffer.
struct Walker<'f> {
    filter: &'f Filter,
    segs: Vec<Seg<'f>>,
    path: String,
    out: Vec<FieldChange>,
}

impl Diff {
    /// Diff two JSON values with the [default noise filter](Filter::default).
    ///
    /// ```
    /// use crwatch::diff::Diff;
    /// use serde_json::json;
    ///
    /// let d = Diff::between(&json!({"spec": {"users": ["a", "b"]}}), &json!({"spec": {"users": ["a"]}}));
    /// assert_eq!(d.to_string(), "- spec.users[1]: \"b\"");
    /// ```
    pub fn between(old: &Value, new: &Value) -> Diff {
        Diff::between_with(old, new, &Filter::default())
    }

    /// Diff two JSON values, skipping the paths `filter` ignores.
    ///
    /// ```
    /// use crwatch::diff::{Diff, Filter};
    /// use serde_json::json;
    ///
    /// let d = Diff::between_with(&json!(1), &json!("1"), &Filter::none());
    /// assert_eq!(d.paths(), [""]); // a type change at the root
    /// ```
    pub fn between_with<'a>(old: &'a Value, new: &'a Value, filter: &'a Filter) -> Diff {
        let mut w = Walker {
            filter,
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
        let old = serde_json::to_value(old).unwrap_or(Value::Null);
        let new = serde_json::to_value(new).unwrap_or(Value::Null);
        Diff::between(&old, &new)
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
    /// `touches("spec.size")` is true when a whole `spec` with a `size` appeared. A `prefix`
    /// that is not a valid path touches nothing.
    ///
    /// ```
    /// use crwatch::diff::Diff;
    /// use serde_json::json;
    ///
    /// let d = Diff::between(&json!({}), &json!({"spec": {"size": 1}}));
    /// assert!(d.touches("spec") && d.touches("spec.size"));
    /// assert!(!d.touches("spec.version") && !d.touches("status"));
    /// ```
    pub fn touches(&self, prefix: &str) -> bool {
        let Ok(prefix) = parse_path(prefix, false) else {
            return false;
        };
        self.changes.iter().any(|c| {
            let Ok(path) = parse_path(&c.path, false) else {
                return false;
            };
            if path.starts_with(&prefix) {
                return true;
            }
            if let Some(rest) = prefix.strip_prefix(path.as_slice()) {
                let old = c.old.as_ref().and_then(|v| lookup(v, rest));
                let new = c.new.as_ref().and_then(|v| lookup(v, rest));
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
        let prefixes: Vec<Vec<ParsedSeg>> = prefixes
            .iter()
            .filter_map(|p| parse_path(p, false).ok())
            .collect();
        self.changes.iter().all(|c| {
            parse_path(&c.path, false).is_ok_and(|path| prefixes.iter().any(|p| path.starts_with(p)))
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
    /// turning it into `new` except for filtered paths, which keep their old values.
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
        // Removed list elements are always a tail of their list and are reported in ascending
        // order, so they must be taken out back to front, after everything else, for the
        // indices of the other changes to stay valid.
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
            apply_one(target, c, &path).map_err(err)?;
        }
        for (c, path) in tail_removals.into_iter().rev() {
            apply_one(target, c, &path).map_err(|reason| ApplyError {
                path: c.path.clone(),
                reason,
            })?;
        }
        Ok(())
    }
}

fn apply_one(target: &mut Value, c: &FieldChange, path: &[ParsedSeg]) -> Result<(), &'static str> {
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
    let parent = lookup_mut(target, parent_path).ok_or("parent path does not exist")?;
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
        _ => Err("parent has the wrong type for this path segment"),
    }
}

fn lookup<'v>(mut v: &'v Value, path: &[ParsedSeg]) -> Option<&'v Value> {
    for seg in path {
        v = match (v, seg) {
            (Value::Object(m), ParsedSeg::Key(k)) => m.get(k)?,
            (Value::Array(a), ParsedSeg::Index(i)) => a.get(*i)?,
            _ => return None,
        };
    }
    Some(v)
}

fn lookup_mut<'v>(mut v: &'v mut Value, path: &[ParsedSeg]) -> Option<&'v mut Value> {
    for seg in path {
        v = match (v, seg) {
            (Value::Object(m), ParsedSeg::Key(k)) => m.get_mut(k)?,
            (Value::Array(a), ParsedSeg::Index(i)) => a.get_mut(*i)?,
            _ => return None,
        };
    }
    Some(v)
}

impl<'f> Walker<'f> {
    fn walk(&mut self, old: &'f Value, new: &'f Value) {
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
                Some(vb) => self.child(Seg::Key(k), |w| w.walk(va, vb)),
                None => self.child(Seg::Key(k), |w| {
                    w.emit_unless_filtered(Op::Removed, Some(va), None)
                }),
            }
        }
        for (k, vb) in b {
            if !a.contains_key(k) {
                self.child(Seg::Key(k), |w| w.emit_unless_filtered(Op::Added, None, Some(vb)));
            }
        }
    }

    fn walk_arrays(&mut self, a: &'f [Value], b: &'f [Value]) {
        for (i, (va, vb)) in a.iter().zip(b).enumerate() {
            self.child(Seg::Index(i), |w| w.walk(va, vb));
        }
        for (i, va) in a.iter().enumerate().skip(b.len()) {
            self.child(Seg::Index(i), |w| {
                w.emit_unless_filtered(Op::Removed, Some(va), None)
            });
        }
        for (i, vb) in b.iter().enumerate().skip(a.len()) {
            self.child(Seg::Index(i), |w| {
                w.emit_unless_filtered(Op::Added, None, Some(vb))
            });
        }
    }

    /// Runs `f` with `seg` pushed onto the current path, then restores the path.
    fn child(&mut self, seg: Seg<'f>, f: impl FnOnce(&mut Self)) {
        let len = self.path.len();
        match seg {
            Seg::Key(k) => push_key(&mut self.path, k),
            Seg::Index(i) => push_index(&mut self.path, i),
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

/// Keys printed without quotes: what reads naturally in `spec.users` and
/// `metadata.labels.app-name`, and cannot be confused with the rest of the syntax.
fn is_bare_key(k: &str) -> bool {
    let mut chars = k.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn push_key(out: &mut String, k: &str) {
    if is_bare_key(k) {
        if !out.is_empty() {
            out.push('.');
        }
        out.push_str(k);
    } else {
        out.push('[');
        push_json_string(out, k);
        out.push(']');
    }
}

fn push_index(out: &mut String, i: usize) {
    use fmt::Write;
    // Writing to a String cannot fail.
    let _ = write!(out, "[{i}]");
}

fn push_json_string(out: &mut String, s: &str) {
    out.push_str(&Value::String(s.to_owned()).to_string());
}

/// Parses the path syntax of the module docs; `[*]` only when `wildcards` is set.
fn parse_path(path: &str, wildcards: bool) -> Result<Vec<ParsedSeg>, PathError> {
    let err = |pos, reason| PathError {
        path: path.to_owned(),
        pos,
        reason,
    };
    let bytes = path.as_bytes();
    let mut segs = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'[' => {
                let rest = &path[i + 1..];
                if let Some(after) = rest.strip_prefix('"') {
                    let len = json_string_len(after).ok_or_else(|| err(i + 1, "unterminated quoted key"))?;
                    let lit = &rest[..len + 2];
                    let key: String =
                        serde_json::from_str(lit).map_err(|_| err(i + 1, "invalid quoted key"))?;
                    i += 1 + lit.len();
                    segs.push(ParsedSeg::Key(key));
                } else if wildcards && rest.starts_with('*') {
                    i += 2;
                    segs.push(ParsedSeg::AnyIndex);
                } else {
                    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
                    let n = rest[..digits]
                        .parse()
                        .map_err(|_| err(i + 1, "expected a list index"))?;
                    // Rendered indices never have leading zeros; accepting them would let two
                    // strings name one path.
                    if digits > 1 && rest.starts_with('0') {
                        return Err(err(i + 1, "list index with a leading zero"));
                    }
                    i += 1 + digits;
                    segs.push(ParsedSeg::Index(n));
                }
                if bytes.get(i) != Some(&b']') {
                    return Err(err(i, "expected ']'"));
                }
                i += 1;
            }
            b'.' if !segs.is_empty() => {
                let start = i + 1;
                let key = bare_key_at(path, start).ok_or_else(|| err(start, "expected a key after '.'"))?;
                i = start + key.len();
                segs.push(ParsedSeg::Key(key.to_owned()));
            }
            _ if segs.is_empty() => {
                let key = bare_key_at(path, i).ok_or_else(|| err(i, "expected a key or '['"))?;
                i += key.len();
                segs.push(ParsedSeg::Key(key.to_owned()));
            }
            _ => return Err(err(i, "expected '.' or '['")),
        }
    }
    Ok(segs)
}

fn bare_key_at(path: &str, start: usize) -> Option<&str> {
    let rest = path.get(start..)?;
    let len = rest
        .bytes()
        .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'-')
        .count();
    let key = &rest[..len];
    is_bare_key(key).then_some(key)
}

/// Length of a JSON string body up to (not including) its closing quote.
fn json_string_len(s: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, b) in s.bytes().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' => escaped = true,
            b'"' => return Some(i),
            _ => {}
        }
    }
    None
}

impl fmt::Display for FieldChange {
    /// `path: old → new`, `+ path: new` or `- path: old`, values as compact JSON. With a
    /// precision (`{:.40}`) each value is cut to that many characters and ends in `…`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |v: &Option<Value>| {
            let s = v.as_ref().map_or_else(|| "null".to_owned(), Value::to_string);
            match f.precision() {
                Some(max) if s.chars().count() > max => {
                    let mut cut: String = s.chars().take(max).collect();
                    cut.push('…');
                    cut
                }
                _ => s,
            }
        };
        match self.op {
            Op::Changed => write!(f, "{}: {} → {}", self.path, show(&self.old), show(&self.new)),
            Op::Added => write!(f, "+ {}: {}", self.path, show(&self.new)),
            Op::Removed => write!(f, "- {}: {}", self.path, show(&self.old)),
        }
    }
}

impl fmt::Display for Diff {
    /// One line per change (see [`FieldChange`]'s `Display`), no trailing newline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, c) in self.changes.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            fmt::Display::fmt(c, f)?;
        }
        Ok(())
    }
}

impl<'a> IntoIterator for &'a Diff {
    type Item = &'a FieldChange;
    type IntoIter = std::slice::Iter<'a, FieldChange>;

    fn into_iter(self) -> Self::IntoIter {
        self.changes.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn none(old: &Value, new: &Value) -> Diff {
        Diff::between_with(old, new, &Filter::none())
    }

    #[test]
    fn scalar_change_and_display() {
        let d = Diff::between(
            &json!({"spec": {"size": "10Gi"}}),
            &json!({"spec": {"size": "20Gi"}}),
        );
        assert_eq!(d.to_string(), "spec.size: \"10Gi\" → \"20Gi\"");
        assert_eq!(d.changes[0].op, Op::Changed);
    }

    #[test]
    fn list_tail_added_and_removed() {
        let a = json!({"spec": {"users": [{"username": "a"}, {"username": "b"}]}});
        let b = json!({"spec": {"users": [{"username": "a"}, {"username": "c"}, {"username": "d"}]}});
        let d = none(&a, &b);
        assert_eq!(
            d.to_string(),
            "spec.users[1].username: \"b\" → \"c\"\n+ spec.users[2]: {\"username\":\"d\"}"
        );
        let d = none(&b, &a);
        assert_eq!(d.paths(), ["spec.users[1].username", "spec.users[2]"]);
        assert_eq!(d.changes[1].op, Op::Removed);
    }

    #[test]
    fn type_change_is_changed_at_that_path() {
        let d = none(&json!({"a": {"b": 1}}), &json!({"a": [1]}));
        assert_eq!(d.changes.len(), 1);
        assert_eq!(d.changes[0].path, "a");
        assert_eq!(d.changes[0].op, Op::Changed);
        // 1 and 1.0 are different JSON numbers
        assert_eq!(none(&json!(1), &json!(1.0)).paths(), [""]);
    }

    #[test]
    fn odd_keys_are_quoted() {
        let d = none(
            &json!({"metadata": {"labels": {"app": "x"}}}),
            &json!({"metadata": {"labels": {"app.kubernetes.io/name": "db", "": 1, "9a": 2, "é": 3, "a\"b": 4, "ok-key_1": 5}}}),
        );
        assert_eq!(
            d.paths(),
            [
                "metadata.labels.app",
                r#"metadata.labels["app.kubernetes.io/name"]"#,
                r#"metadata.labels[""]"#,
                r#"metadata.labels["9a"]"#,
                r#"metadata.labels["é"]"#,
                r#"metadata.labels["a\"b"]"#,
                "metadata.labels.ok-key_1",
            ]
        );
        assert_eq!(d.to_string().lines().next(), Some("- metadata.labels.app: \"x\""));
        // top-level quoted key has no leading dot
        assert_eq!(none(&json!({}), &json!({"a.b": 1})).paths(), [r#"["a.b"]"#]);
    }

    #[test]
    fn default_filter_drops_noise_and_keeps_the_rest() {
        let old = json!({"metadata": {
            "name": "x", "resourceVersion": "1", "generation": 1, "selfLink": "/a",
            "managedFields": [{"manager": "a"}],
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}", "keep": "1"}
        }});
        let new = json!({"metadata": {
            "name": "x", "resourceVersion": "2", "generation": 2, "selfLink": "/b",
            "managedFields": [{"manager": "b"}, {"manager": "c"}],
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{\"a\":1}", "keep": "2"}
        }});
        assert_eq!(Diff::between(&old, &new).paths(), ["metadata.annotations.keep"]);
        assert_eq!(none(&old, &new).len(), 7);
        // a filtered key that appears or disappears is filtered too
        let d = Diff::between(
            &json!({"metadata": {}}),
            &json!({"metadata": {"resourceVersion": "1"}}),
        );
        assert!(d.is_empty());
    }

    #[test]
    fn filter_wildcards_and_invalid_patterns() {
        let f = Filter::none().ignore("a[*].t").ignore("not a path");
        let d = Diff::between_with(
            &json!({"a": [{"t": 1, "u": 1}]}),
            &json!({"a": [{"t": 2, "u": 2}]}),
            &f,
        );
        assert_eq!(d.paths(), ["a[0].u"]);
        assert!(f.patterns().contains(&"not a path".to_string()));
        assert!(f.patterns().contains(&"a[*].t".to_string()));
        assert!(Filter::none().try_ignore("not a path").is_err());
        assert!(f.is_ignored("a[3].t.x"));
        assert!(!f.is_ignored("a[3].u"));
    }

    #[test]
    fn touches_and_only_under() {
        let d = none(
            &json!({"spec": {"a": 1}, "status": {"p": 1}}),
            &json!({"spec": {"a": 2}, "status": {"p": 2}}),
        );
        assert!(d.touches("spec") && d.touches("spec.a") && d.touches("status"));
        assert!(!d.touches("spe") && !d.touches("spec.b") && !d.touches("metadata"));
        assert!(!d.touches("not valid ["));
        assert!(d.only_under(&["spec", "status"]));
        assert!(!d.only_under(&["spec"]));
        assert!(Diff::default().only_under(&[]));
        // change at an ancestor
        let d = none(&json!({}), &json!({"spec": {"a": {"b": 1}}}));
        assert!(d.touches("spec.a.b"));
        assert!(!d.touches("spec.a.c"));
        assert!(!d.only_under(&["spec.a"]));
        // root change touches everything it actually changes
        let d = none(&json!(1), &json!({"spec": 1}));
        assert!(d.spec_changed() && !d.status_changed() && !d.metadata_changed());
    }

    #[test]
    fn precision_truncates_values() {
        let d = none(&json!({"a": "0123456789"}), &json!({"a": "x"}));
        assert_eq!(format!("{d:.4}"), "a: \"012… → \"x\"");
    }

    #[test]
    fn try_of_and_of_with_unserializable_input() {
        use std::collections::BTreeMap;
        let bad: BTreeMap<(u8, u8), u8> = [((1, 2), 3)].into();
        assert!(Diff::try_of(&bad, &bad).is_err());
        assert!(Diff::of(&bad, &bad).is_empty()); // both null
        assert_eq!(Diff::of(&1, &2).paths(), [""]);
    }

    #[test]
    fn deep_values_do_not_overflow() {
        let mut a = json!(1);
        let mut b = json!(2);
        for _ in 0..(MAX_DEPTH * 2) {
            a = json!([a]);
            b = json!([b]);
        }
        let d = none(&a, &b);
        assert_eq!(d.len(), 1);
        assert_eq!(d.changes[0].path, "[0]".repeat(MAX_DEPTH));
        let mut v = a.clone();
        d.apply_to(&mut v).unwrap();
        assert_eq!(v, b);
    }

    #[test]
    fn apply_errors_instead_of_panicking() {
        let d = none(&json!({"a": [1, 2, 3]}), &json!({"a": [1]}));
        let mut target = json!({"a": [1]});
        assert!(d.apply_to(&mut target).is_err());
        let bad = Diff {
            changes: vec![FieldChange {
                path: "x[".into(),
                op: Op::Changed,
                old: None,
                new: None,
            }],
        };
        assert!(bad.apply_to(&mut json!({})).is_err());
    }

    #[test]
    fn serializes_as_list_of_changes() {
        let d = none(&json!({"a": 1}), &json!({}));
        assert_eq!(
            serde_json::to_value(&d).unwrap(),
            json!([{"path": "a", "op": "removed", "old": 1}])
        );
        let back: Diff = serde_json::from_value(serde_json::to_value(&d).unwrap()).unwrap();
        assert_eq!(back, d);
    }

    fn arb_key() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("metadata".to_string()),
            Just("resourceVersion".to_string()),
            Just("managedFields".to_string()),
            Just("annotations".to_string()),
            Just("kubectl.kubernetes.io/last-applied-configuration".to_string()),
            Just("spec".to_string()),
            "[a-c]{1,2}",
            ".{0,4}",
        ]
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            (-1e6f64..1e6).prop_map(Value::from),
            ".{0,3}".prop_map(Value::String),
        ];
        leaf.prop_recursive(5, 48, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::vec((arb_key(), inner), 0..5)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    /// Two related values: `b` is `a` with random edits, so diffs are small and deep.
    fn arb_pair() -> impl Strategy<Value = (Value, Value)> {
        (arb_json(), arb_json(), any::<u64>()).prop_map(|(a, other, seed)| {
            let mut b = a.clone();
            mutate(&mut b, &other, seed);
            (a, b)
        })
    }

    fn mutate(v: &mut Value, other: &Value, seed: u64) {
        match (v, seed % 4) {
            (Value::Object(m), 0 | 1) if !m.is_empty() => {
                let idx = (seed / 4) as usize % m.len();
                if let Some(child) = m.values_mut().nth(idx) {
                    mutate(child, other, seed / 7);
                }
            }
            (Value::Array(a), 0 | 1) if !a.is_empty() => {
                let idx = (seed / 4) as usize % a.len();
                mutate(&mut a[idx], other, seed / 7);
            }
            (Value::Array(a), 2) => a.truncate((seed / 4) as usize % (a.len() + 1)),
            (v, _) => *v = other.clone(),
        }
    }

    /// Removes every object key the filter ignores (ignored list elements or roots become a
    /// marker), so values can be compared modulo the filter.
    fn strip(v: &mut Value, filter: &Filter, segs: &mut Vec<(String, Option<usize>)>) {
        let matches = |segs: &[(String, Option<usize>)]| {
            let s: Vec<Seg<'_>> = segs
                .iter()
                .map(|(k, i)| match i {
                    Some(i) => Seg::Index(*i),
                    None => Seg::Key(k),
                })
                .collect();
            filter.matches(&s)
        };
        if matches(segs) {
            *v = Value::String("<ignored>".into());
            return;
        }
        match v {
            Value::Object(m) => {
                let keys: Vec<String> = m.keys().cloned().collect();
                for k in keys {
                    segs.push((k.clone(), None));
                    if matches(segs) {
                        m.shift_remove(&k);
                    } else if let Some(c) = m.get_mut(&k) {
                        strip(c, filter, segs);
                    }
                    segs.pop();
                }
            }
            Value::Array(a) => {
                for (i, c) in a.iter_mut().enumerate() {
                    segs.push((String::new(), Some(i)));
                    strip(c, filter, segs);
                    segs.pop();
                }
            }
            _ => {}
        }
    }

    fn normalized(mut v: Value, f: &Filter) -> Value {
        strip(&mut v, f, &mut Vec::new());
        v
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn apply_unfiltered_diff_yields_new((a, b) in arb_pair()) {
            let d = none(&a, &b);
            let mut v = a.clone();
            d.apply_to(&mut v).unwrap();
            prop_assert_eq!(&v, &b);
            prop_assert_eq!(d.is_empty(), a == b);
            let _ = d.to_string();
        }

        #[test]
        fn apply_unrelated_values((a, b) in (arb_json(), arb_json())) {
            let d = none(&a, &b);
            let mut v = a.clone();
            d.apply_to(&mut v).unwrap();
            prop_assert_eq!(v, b);
        }

        #[test]
        fn apply_filtered_diff_yields_new_modulo_filter((a, b) in arb_pair()) {
            let f = Filter::default().ignore("a[*].b");
            let d = Diff::between_with(&a, &b, &f);
            for p in d.paths() {
                prop_assert!(!f.is_ignored(p), "{} should have been filtered", p);
            }
            let mut v = a.clone();
            d.apply_to(&mut v).unwrap();
            prop_assert_eq!(normalized(v, &f), normalized(b, &f));
        }

        #[test]
        fn every_rendered_path_parses_back(key in ".{0,6}", i in 0usize..1000) {
            let mut p = String::new();
            push_key(&mut p, &key);
            push_index(&mut p, i);
            push_key(&mut p, &key);
            let segs = parse_path(&p, false).unwrap();
            prop_assert_eq!(segs, vec![ParsedSeg::Key(key.clone()), ParsedSeg::Index(i), ParsedSeg::Key(key)]);
        }

        #[test]
        fn parse_never_panics(s in ".{0,12}") {
            let _ = parse_path(&s, true);
            let d = Diff::default();
            let _ = d.touches(&s);
            let _ = Filter::none().ignore(&s).is_ignored(&s);
        }
    }
}
