//! Which paths a diff ignores: [`Filter`], with the default noise filter for fields the API
//! server rewrites on every write.

use super::path::{ParsedSeg, PathError, Seg, parse_path, render, selector_matches};

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
    /// Parsed segments; `[*]` matches any list element, by index or by key.
    Segments(Vec<ParsedSeg>),
    /// A string that is not a valid path. Every rendered path parses, so it can never match;
    /// it is kept only so [`Filter::patterns`] shows what the caller wrote.
    Invalid(String),
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
        self.patterns.push(Pattern::Segments(segs));
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
                Pattern::Segments(segs) => render(segs),
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
        let segs: Vec<Seg<'_>> = segs.iter().filter_map(ParsedSeg::as_seg).collect();
        (0..=segs.len()).any(|n| self.matches(&segs[..n]))
    }

    /// Whether a pattern matches exactly this path (ancestors are checked while descending).
    pub(super) fn matches(&self, segs: &[Seg<'_>]) -> bool {
        self.patterns.iter().any(|p| match p {
            Pattern::Invalid(_) => false,
            Pattern::Segments(pat) => {
                pat.len() == segs.len()
                    && pat.iter().zip(segs).all(|(p, s)| match (p, s) {
                        (ParsedSeg::Key(a), Seg::Key(b)) => a == b,
                        (ParsedSeg::Index(a), Seg::Index(b)) => a == b,
                        (ParsedSeg::Select(a), Seg::Select(b)) => selector_matches(a, b),
                        (ParsedSeg::AnyIndex, Seg::Index(_) | Seg::Select(_)) => true,
                        _ => false,
                    })
            }
        })
    }
}
