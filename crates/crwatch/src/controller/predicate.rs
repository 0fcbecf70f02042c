//! Predicates: which updates of a watched object are worth a reconcile. They filter updates
//! only; creations and deletions always pass, as with controller-runtime's predicates.

use std::sync::Arc;

use kube::Resource;

/// Decides from the old and new object whether an update should enqueue a reconcile.
///
/// ```
/// use crwatch::controller::predicate::Predicate;
/// use k8s_openapi::api::core::v1::ConfigMap;
/// let p = Predicate::<ConfigMap>::generation_changed().or(Predicate::labels_changed());
/// ```
pub struct Predicate<K> {
    f: PredicateFn<K>,
}

type PredicateFn<K> = Arc<dyn Fn(&K, &K) -> bool + Send + Sync>;

impl<K> Clone for Predicate<K> {
    fn clone(&self) -> Self {
        Predicate { f: self.f.clone() }
    }
}

impl<K: Resource + 'static> Predicate<K> {
    /// Any function of the old and new object.
    pub fn custom(f: impl Fn(&K, &K) -> bool + Send + Sync + 'static) -> Self {
        Predicate { f: Arc::new(f) }
    }

    /// `metadata.generation` changed: the spec changed (status-only writes are ignored).
    pub fn generation_changed() -> Self {
        Self::custom(|old, new| {
            old.meta().generation != new.meta().generation || new.meta().generation.is_none()
        })
    }

    /// `metadata.labels` changed.
    pub fn labels_changed() -> Self {
        Self::custom(|old, new| old.meta().labels != new.meta().labels)
    }

    /// `metadata.annotations` changed.
    pub fn annotations_changed() -> Self {
        Self::custom(|old, new| old.meta().annotations != new.meta().annotations)
    }

    /// `metadata.resourceVersion` changed (anything at all changed).
    pub fn resource_version_changed() -> Self {
        Self::custom(|old, new| old.meta().resource_version != new.meta().resource_version)
    }

    /// Both must pass.
    pub fn and(self, other: Predicate<K>) -> Self {
        Self::custom(move |o, n| (self.f)(o, n) && (other.f)(o, n))
    }

    /// Either may pass.
    pub fn or(self, other: Predicate<K>) -> Self {
        Self::custom(move |o, n| (self.f)(o, n) || (other.f)(o, n))
    }

    /// Evaluate.
    pub fn test(&self, old: &K, new: &K) -> bool {
        (self.f)(old, new)
    }
}

/// The opposite predicate: `!Predicate::generation_changed()`.
impl<K: Resource + 'static> std::ops::Not for Predicate<K> {
    type Output = Predicate<K>;

    fn not(self) -> Self {
        Predicate::custom(move |o, n| !(self.f)(o, n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;

    fn cm(generation: i64, label: &str, rv: &str) -> ConfigMap {
        let mut c = ConfigMap::default();
        c.metadata.generation = Some(generation);
        c.metadata.resource_version = Some(rv.into());
        c.metadata.labels = Some([("l".to_string(), label.to_string())].into());
        c
    }

    #[test]
    fn predicates_compose() {
        let a = cm(1, "x", "1");
        let status_only = cm(1, "x", "2");
        let relabel = cm(1, "y", "3");
        let spec = cm(2, "x", "4");
        let generation = Predicate::<ConfigMap>::generation_changed();
        assert!(!generation.test(&a, &status_only));
        assert!(generation.test(&a, &spec));
        let either = generation.clone().or(Predicate::labels_changed());
        assert!(either.test(&a, &relabel));
        assert!(!either.test(&a, &status_only));
        let both = generation.clone().and(Predicate::labels_changed());
        assert!(!both.test(&a, &spec));
        assert!((!generation).test(&a, &status_only));
        assert!(Predicate::<ConfigMap>::resource_version_changed().test(&a, &status_only));
        assert!(!Predicate::<ConfigMap>::annotations_changed().test(&a, &spec));
    }
}
