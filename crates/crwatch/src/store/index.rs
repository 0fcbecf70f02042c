//! Secondary indexes of the store: index functions (client-go's `IndexFunc`), the built-in
//! namespace, label and controller-owner indexers, and the value → keys maps they maintain.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use kube::Resource;

use super::ObjectKey;

/// An index function: the values under which an object is findable in one index (none, one or
/// many). It runs on every insert and update, so it should be cheap; its result for an object
/// is remembered, so removal never depends on calling it again.
///
/// ```
/// use crwatch::store::{IndexFn, Store};
/// use k8s_openapi::api::core::v1::ConfigMap;
/// use std::sync::Arc;
///
/// let by_key_count: IndexFn<ConfigMap> =
///     Arc::new(|cm: &ConfigMap| vec![cm.data.as_ref().map_or(0, |d| d.len()).to_string()]);
/// let store = Store::<ConfigMap>::new();
/// store.add_indexer("keys", move |cm: &ConfigMap| by_key_count(cm));
/// ```
pub type IndexFn<K> = Arc<dyn Fn(&K) -> Vec<String> + Send + Sync>;

/// Built-in index of objects by namespace (cluster-scoped objects have no entry).
///
/// ```
/// use crwatch::store::{NAMESPACE_INDEX, Store};
/// use k8s_openapi::api::core::v1::ConfigMap;
///
/// let store = Store::<ConfigMap>::new();
/// let mut cm = ConfigMap::default();
/// cm.metadata.name = Some("a".into());
/// cm.metadata.namespace = Some("prod".into());
/// store.apply(cm);
/// assert_eq!(store.by_index(NAMESPACE_INDEX, "prod").len(), 1);
/// ```
pub const NAMESPACE_INDEX: &str = "namespace";

/// Built-in index of objects by label, one value `key=value` per label.
///
/// ```
/// use crwatch::store::{LABEL_INDEX, Store};
/// use k8s_openapi::api::core::v1::ConfigMap;
///
/// let store = Store::<ConfigMap>::new();
/// let mut cm = ConfigMap::default();
/// cm.metadata.name = Some("a".into());
/// cm.metadata.labels = Some([("app".to_string(), "web".to_string())].into());
/// store.apply(cm);
/// assert_eq!(store.by_index(LABEL_INDEX, "app=web").len(), 1);
/// ```
pub const LABEL_INDEX: &str = "label";

/// Built-in index of objects by the uid of their controlling owner (the ownerReference with
/// `controller: true`): how a controller finds the children of a parent without listing all.
///
/// ```
/// use crwatch::store::{OWNER_INDEX, Store};
/// use k8s_openapi::api::core::v1::ConfigMap;
/// use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
///
/// let store = Store::<ConfigMap>::new();
/// let mut cm = ConfigMap::default();
/// cm.metadata.name = Some("db-credentials".into());
/// cm.metadata.owner_references = Some(vec![OwnerReference {
///     uid: "1234".into(),
///     controller: Some(true),
///     ..Default::default()
/// }]);
/// store.apply(cm);
/// assert_eq!(store.by_index(OWNER_INDEX, "1234").len(), 1);
/// ```
pub const OWNER_INDEX: &str = "owner";

/// The index function behind [`NAMESPACE_INDEX`].
///
/// ```
/// use crwatch::store::index_namespace;
/// use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
///
/// let mut cm = ConfigMap::default();
/// cm.metadata.namespace = Some("prod".into());
/// assert_eq!(index_namespace(&cm), ["prod"]);
/// assert!(index_namespace(&Namespace::default()).is_empty());
/// ```
pub fn index_namespace<K: Resource>(obj: &K) -> Vec<String> {
    obj.meta()
        .namespace
        .iter()
        .filter(|ns| !ns.is_empty())
        .cloned()
        .collect()
}

/// The index function behind [`LABEL_INDEX`].
///
/// ```
/// use crwatch::store::index_labels;
/// use k8s_openapi::api::core::v1::ConfigMap;
///
/// let mut cm = ConfigMap::default();
/// cm.metadata.labels = Some([("app".to_string(), "web".to_string())].into());
/// assert_eq!(index_labels(&cm), ["app=web"]);
/// ```
pub fn index_labels<K: Resource>(obj: &K) -> Vec<String> {
    obj.meta()
        .labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect()
}

/// The index function behind [`OWNER_INDEX`].
///
/// ```
/// use crwatch::store::index_controller_owner;
/// use k8s_openapi::api::core::v1::ConfigMap;
/// use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
///
/// let mut cm = ConfigMap::default();
/// cm.metadata.owner_references = Some(vec![
///     OwnerReference { uid: "a".into(), controller: None, ..Default::default() },
///     OwnerReference { uid: "b".into(), controller: Some(true), ..Default::default() },
/// ]);
/// assert_eq!(index_controller_owner(&cm), ["b"]);
/// ```
pub fn index_controller_owner<K: Resource>(obj: &K) -> Vec<String> {
    obj.meta()
        .owner_references
        .iter()
        .flatten()
        .filter(|r| r.controller == Some(true))
        .map(|r| r.uid.clone())
        .collect()
}

/// The registered index functions, in registration order. Replaced as a whole (copy on
/// write), so a writer can compute index values outside the store lock and then check with
/// `Arc::ptr_eq` that nobody registered an indexer in between.
pub(crate) struct Indexers<K> {
    pub(crate) names: Vec<String>,
    pub(crate) fns: Vec<IndexFn<K>>,
}

impl<K: Resource + 'static> Indexers<K> {
    pub(crate) fn builtin() -> Self {
        Indexers {
            names: vec![NAMESPACE_INDEX.into(), LABEL_INDEX.into(), OWNER_INDEX.into()],
            fns: vec![
                Arc::new(index_namespace::<K>),
                Arc::new(index_labels::<K>),
                Arc::new(index_controller_owner::<K>),
            ],
        }
    }
}

impl<K> Indexers<K> {
    pub(crate) fn position(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    /// This set with `name` added, or replaced when it exists; also returns its position.
    pub(crate) fn with(&self, name: &str, f: IndexFn<K>) -> (Self, usize) {
        let mut names = self.names.clone();
        let mut fns = self.fns.clone();
        let pos = match self.position(name) {
            Some(pos) => {
                fns[pos] = f;
                pos
            }
            None => {
                names.push(name.to_owned());
                fns.push(f);
                names.len() - 1
            }
        };
        (Indexers { names, fns }, pos)
    }

    /// The values of every index for `obj`, aligned with `self.fns`.
    pub(crate) fn compute(&self, obj: &K) -> Computed {
        self.fns.iter().map(|f| normalize(f(obj))).collect()
    }
}

/// Sorted and deduplicated, so two results compare equal exactly when they index the same.
pub(crate) fn normalize(mut values: Vec<String>) -> Vec<String> {
    values.sort_unstable();
    values.dedup();
    values
}

/// An object's key, shared by the object map and every index set it is filed in (one
/// allocation per object instead of one per index value).
pub(crate) type SharedKey = Arc<ObjectKey>;

/// An index value, interned: every object filed under `default` or `app=web` points at the
/// same string, which is also the index map's key.
pub(crate) type Interned = Arc<str>;

/// Per index (aligned with [`Indexers::fns`]), the values one object is filed under, as the
/// index functions return them (normalized).
pub(crate) type Computed = Vec<Vec<String>>;

/// Per index, the interned values one object is filed under (what the store keeps).
pub(crate) type IndexValues = Vec<Box<[Interned]>>;

/// Per index, value → keys of the objects filed under it. Keys are kept sorted so lookups
/// return objects in the same deterministic order as `Store::list`. Empty sets are removed so
/// `index_values` lists only values that find something.
#[derive(Default)]
pub(crate) struct Indices {
    maps: Vec<HashMap<Interned, BTreeSet<SharedKey>>>,
}

impl Indices {
    pub(crate) fn with_len(n: usize) -> Self {
        Indices {
            maps: (0..n).map(|_| HashMap::new()).collect(),
        }
    }

    pub(crate) fn get(&self, pos: usize, value: &str) -> Option<&BTreeSet<SharedKey>> {
        self.maps.get(pos)?.get(value)
    }

    pub(crate) fn values(&self, pos: usize) -> Vec<String> {
        let mut v: Vec<String> = self
            .maps
            .get(pos)
            .map(|m| m.keys().map(|k| k.to_string()).collect())
            .unwrap_or_default();
        v.sort_unstable();
        v
    }

    /// Files `key` under the values of one index; returns them interned.
    pub(crate) fn add(&mut self, pos: usize, key: &SharedKey, values: &[String]) -> Box<[Interned]> {
        if self.maps.len() <= pos {
            self.maps.resize_with(pos + 1, HashMap::new);
        }
        let map = &mut self.maps[pos];
        values
            .iter()
            .map(|v| {
                let interned = match map.get_key_value(v.as_str()) {
                    Some((k, _)) => Arc::clone(k),
                    None => Interned::from(v.as_str()),
                };
                map.entry(Arc::clone(&interned))
                    .or_default()
                    .insert(Arc::clone(key));
                interned
            })
            .collect()
    }

    /// Unfiles `key` from the values of one index.
    pub(crate) fn remove(&mut self, pos: usize, key: &ObjectKey, values: &[Interned]) {
        let Some(map) = self.maps.get_mut(pos) else { return };
        for v in values {
            if let Some(keys) = map.get_mut(v) {
                keys.remove(key);
                if keys.is_empty() {
                    map.remove(v);
                }
            }
        }
    }

    /// Moves `key` from its old values to its new ones, touching only indexes that differ;
    /// returns the new values interned.
    pub(crate) fn update(
        &mut self,
        key: &SharedKey,
        old: Option<&IndexValues>,
        new: &Computed,
    ) -> IndexValues {
        new.iter()
            .enumerate()
            .map(|(pos, new_vals)| {
                let old_vals = old.and_then(|o| o.get(pos));
                if let Some(old_vals) = old_vals {
                    if old_vals.len() == new_vals.len()
                        && old_vals.iter().zip(new_vals).all(|(a, b)| **a == **b)
                    {
                        return old_vals.clone();
                    }
                    self.remove(pos, key, old_vals);
                }
                self.add(pos, key, new_vals)
            })
            .collect()
    }

    /// Drops every entry of index `pos` (before it is rebuilt for a replaced indexer).
    pub(crate) fn clear(&mut self, pos: usize) {
        if let Some(map) = self.maps.get_mut(pos) {
            map.clear();
        }
    }
}
