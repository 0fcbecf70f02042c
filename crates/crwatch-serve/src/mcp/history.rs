//! The bounded per-object history behind the `diff` tool: the last few versions of every
//! watched object (already redacted), and what changed since a given resourceVersion as
//! field paths ([`crwatch::diff`]).
//!
//! At most `per_object` versions are kept per object (the oldest is dropped when a new one
//! arrives); a deleted object's history goes with it. A resourceVersion older than the oldest
//! kept version is answered with [`HistoryError::TooOld`], which names the oldest one kept.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crwatch::diff::Diff;
use serde_json::Value;

use super::uri::ObjectUri;

/// Versions kept per object unless configured otherwise.
pub const DEFAULT_VERSIONS_PER_OBJECT: usize = 16;

/// The range `--history` accepts.
pub const VERSIONS_PER_OBJECT_RANGE: std::ops::RangeInclusive<usize> = 1..=1000;

#[derive(Debug, Default)]
struct Versions {
    /// Oldest first: (resourceVersion, object).
    kept: VecDeque<(String, Arc<Value>)>,
    /// Whether older versions were dropped (otherwise the first kept one is the object's
    /// first version this server saw).
    truncated: bool,
}

/// Why `diff` cannot answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    /// The object is not watched, or not there (deleted, or never seen).
    #[error(
        "no history for {0}: it is not a watched object (start crwatch mcp with -r for its resource) or it was deleted"
    )]
    Unknown(String),
    /// The version is older than what is kept.
    #[error(
        "resourceVersion {asked} of {uri} is older than the oldest version kept ({oldest}); \
         crwatch mcp keeps the last {per_object} versions of each object: read the object instead, \
         or ask for a version from {oldest} on"
    )]
    TooOld {
        /// The object.
        uri: String,
        /// The version asked for.
        asked: String,
        /// The oldest version kept.
        oldest: String,
        /// The bound.
        per_object: usize,
    },
    /// The version is not one this server saw and cannot be placed among the kept ones.
    #[error(
        "resourceVersion {asked} of {uri} is not one of the kept versions ({kept}) and is not comparable with them"
    )]
    NotKept {
        /// The object.
        uri: String,
        /// The version asked for.
        asked: String,
        /// The kept versions, oldest first.
        kept: String,
    },
}

/// What changed since a version.
#[derive(Debug, Clone, PartialEq)]
pub struct Since {
    /// The version the diff starts from (the object as it was at the version asked for);
    /// `None` when the object did not exist yet.
    pub from: Option<String>,
    /// The current version.
    pub to: String,
    /// The changes, as field paths.
    pub diff: Diff,
}

/// Bounded history of every watched object.
///
/// ```
/// use crwatch_serve::mcp::history::History;
/// use crwatch_serve::mcp::uri::ObjectUri;
/// use serde_json::json;
///
/// let mut h = History::new(2);
/// let uri = ObjectUri::new("", "v1", "ConfigMap", Some("default"), "c");
/// h.record(&uri, "1", json!({"data": {"a": "1"}}).into());
/// h.record(&uri, "2", json!({"data": {"a": "2"}}).into());
/// let since = h.since(&uri, "1")?;
/// assert_eq!(since.diff.paths(), ["data.a"]);
/// # Ok::<(), crwatch_serve::mcp::history::HistoryError>(())
/// ```
#[derive(Debug)]
pub struct History {
    per_object: usize,
    objects: HashMap<ObjectUri, Versions>,
}

impl History {
    /// A history keeping `per_object` versions of each object (at least one).
    pub fn new(per_object: usize) -> Self {
        History {
            per_object: per_object.max(1),
            objects: HashMap::new(),
        }
    }

    /// The bound.
    pub fn per_object(&self) -> usize {
        self.per_object
    }

    /// Record a version (a repeated resourceVersion replaces nothing).
    pub fn record(&mut self, uri: &ObjectUri, resource_version: &str, object: Arc<Value>) {
        let versions = self.objects.entry(uri.clone()).or_default();
        if versions.kept.back().is_some_and(|(rv, _)| rv == resource_version) {
            return;
        }
        versions.kept.push_back((resource_version.to_owned(), object));
        while versions.kept.len() > self.per_object {
            versions.kept.pop_front();
            versions.truncated = true;
        }
    }

    /// Forget a deleted object.
    pub fn forget(&mut self, uri: &ObjectUri) {
        self.objects.remove(uri);
    }

    /// Forget everything (a relist starts over).
    pub fn clear(&mut self) {
        self.objects.clear();
    }

    /// Objects with a history.
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    /// Whether no object has a history.
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// Versions kept for `uri`, oldest first.
    pub fn versions(&self, uri: &ObjectUri) -> Vec<String> {
        self.objects
            .get(uri)
            .map(|v| v.kept.iter().map(|(rv, _)| rv.clone()).collect())
            .unwrap_or_default()
    }

    /// What changed in `uri` since `resource_version`: the object as it was then (the newest
    /// kept version not newer than it) against the current one.
    pub fn since(&self, uri: &ObjectUri, resource_version: &str) -> Result<Since, HistoryError> {
        let versions = self
            .objects
            .get(uri)
            .filter(|v| !v.kept.is_empty())
            .ok_or_else(|| HistoryError::Unknown(uri.to_string()))?;
        let (to, current) = versions
            .kept
            .back()
            .ok_or_else(|| HistoryError::Unknown(uri.to_string()))?;
        let diff_from = |from: Option<&(String, Arc<Value>)>| Since {
            from: from.map(|(rv, _)| rv.clone()),
            to: to.clone(),
            diff: match from {
                Some((_, old)) => Diff::between(old, current),
                None => Diff::between(&Value::Object(Default::default()), current),
            },
        };
        if let Some(found) = versions.kept.iter().find(|(rv, _)| rv == resource_version) {
            return Ok(diff_from(Some(found)));
        }
        let kept = || {
            versions
                .kept
                .iter()
                .map(|(rv, _)| rv.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let not_kept = || HistoryError::NotKept {
            uri: uri.to_string(),
            asked: resource_version.to_owned(),
            kept: kept(),
        };
        // resourceVersions are opaque, but every API server in use (etcd's revisions,
        // crwatch-apiserver's counter) gives integers that grow: placed among them if so.
        let asked: u64 = resource_version.parse().map_err(|_| not_kept())?;
        let numbered: Option<Vec<u64>> = versions.kept.iter().map(|(rv, _)| rv.parse().ok()).collect();
        let numbered = numbered.ok_or_else(not_kept)?;
        match numbered.iter().rposition(|n| *n <= asked) {
            Some(i) => Ok(diff_from(versions.kept.get(i))),
            None if !versions.truncated => Ok(diff_from(None)),
            None => Err(HistoryError::TooOld {
                uri: uri.to_string(),
                asked: resource_version.to_owned(),
                oldest: versions
                    .kept
                    .front()
                    .map(|(rv, _)| rv.clone())
                    .unwrap_or_default(),
                per_object: self.per_object,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn uri() -> ObjectUri {
        ObjectUri::new("apps", "v1", "Deployment", Some("default"), "web")
    }

    fn replicas(n: u64) -> Arc<Value> {
        Arc::new(json!({"spec": {"replicas": n}}))
    }

    #[test]
    fn keeps_at_most_the_bound_and_says_so() {
        let mut h = History::new(3);
        for rv in 10..20 {
            h.record(&uri(), &rv.to_string(), replicas(rv));
        }
        assert_eq!(h.versions(&uri()), ["17", "18", "19"]);
        let e = h.since(&uri(), "12").unwrap_err();
        assert_eq!(
            e,
            HistoryError::TooOld {
                uri: uri().to_string(),
                asked: "12".into(),
                oldest: "17".into(),
                per_object: 3
            }
        );
        assert!(e.to_string().contains("keeps the last 3 versions"), "{e}");
    }

    #[test]
    fn diffs_from_the_version_the_object_had_then() {
        let mut h = History::new(16);
        h.record(&uri(), "5", replicas(1));
        h.record(&uri(), "9", replicas(2));
        h.record(&uri(), "12", replicas(3));
        let exact = h.since(&uri(), "9").unwrap();
        assert_eq!((exact.from.as_deref(), exact.to.as_str()), (Some("9"), "12"));
        assert_eq!(exact.diff.changes[0].path, "spec.replicas");
        assert_eq!(exact.diff.changes[0].old, Some(json!(2)));
        // Version 7 is another object's: this one was at 5 then.
        let between = h.since(&uri(), "7").unwrap();
        assert_eq!(between.from.as_deref(), Some("5"));
        // Nothing changed since the current version.
        assert!(h.since(&uri(), "12").unwrap().diff.is_empty());
        // Before the first version (nothing dropped): the object did not exist.
        let created = h.since(&uri(), "1").unwrap();
        assert_eq!(created.from, None);
        assert_eq!(created.diff.paths(), ["spec"]);
    }

    #[test]
    fn unknown_objects_and_opaque_versions() {
        let mut h = History::new(4);
        assert!(matches!(h.since(&uri(), "1"), Err(HistoryError::Unknown(_))));
        h.record(&uri(), "a", replicas(1));
        h.record(&uri(), "b", replicas(2));
        assert_eq!(h.since(&uri(), "a").unwrap().diff.len(), 1);
        assert!(matches!(h.since(&uri(), "zz"), Err(HistoryError::NotKept { .. })));
        h.forget(&uri());
        assert!(h.is_empty());
    }
}
