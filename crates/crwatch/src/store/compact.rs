//! Compressed storage for cold objects: what a store [`Entry`](super) holds instead of the
//! decoded object once the object has left the store's hot set (feature `compact`).
//!
//! A cold object is kept as its JSON, compressed with zstd, behind one `Arc<[u8]>`. Its
//! resourceVersion and uid sit uncompressed in a small header, so a relist can tell changed
//! objects from unchanged ones without decoding anything. Readers of a cold object get a fresh
//! `Arc<K>` decoded from it (a few microseconds for a 3 KiB ConfigMap); readers of a hot object
//! get the cached `Arc<K>` itself, as without compaction. Event handlers always receive the
//! objects the source delivered, never a decoded copy.
//!
//! Header layout: `raw_len: u32 LE`, `rv_len: u16 LE`, rv bytes, `uid_len: u16 LE`, uid bytes,
//! then one zstd frame of `raw_len` bytes of JSON.

use std::sync::Arc;

use kube::Resource;

/// What a store entry holds: the object itself, or its compressed JSON.
pub(super) enum Slot<K> {
    Hot(Arc<K>),
    Cold(Packed),
}

impl<K> Clone for Slot<K> {
    fn clone(&self) -> Self {
        match self {
            Slot::Hot(o) => Slot::Hot(Arc::clone(o)),
            Slot::Cold(p) => Slot::Cold(p.clone()),
        }
    }
}

impl<K: Resource> Slot<K> {
    /// The object's resourceVersion and uid, without decoding it.
    pub(super) fn version(&self) -> (Option<&str>, Option<&str>) {
        match self {
            Slot::Hot(o) => (o.meta().resource_version.as_deref(), o.meta().uid.as_deref()),
            Slot::Cold(p) => p.version(),
        }
    }
}

/// A compressed object (see the module docs for the layout).
#[derive(Clone)]
pub(super) struct Packed(Arc<[u8]>);

impl Packed {
    /// (raw JSON length, rv, uid, the zstd frame). The layout is written only by
    /// [`Codec::pack`], so a header that does not parse cannot occur; it still reads as "no
    /// version" and an empty frame rather than panicking.
    fn parts(&self) -> (usize, Option<&str>, Option<&str>, &[u8]) {
        fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
            let (head, rest) = b.split_at_checked(n)?;
            *b = rest;
            Some(head)
        }
        fn field<'a>(b: &mut &'a [u8]) -> Option<&'a str> {
            let len = take(b, 2)?;
            let len = u16::from_le_bytes([len[0], len[1]]) as usize;
            let s = std::str::from_utf8(take(b, len)?).ok()?;
            (!s.is_empty()).then_some(s)
        }
        let mut b: &[u8] = &self.0;
        let Some(raw) = take(&mut b, 4) else {
            return (0, None, None, &[]);
        };
        let raw = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]) as usize;
        let rv = field(&mut b);
        let uid = field(&mut b);
        (raw, rv, uid, b)
    }

    pub(super) fn version(&self) -> (Option<&str>, Option<&str>) {
        let (_, rv, uid, _) = self.parts();
        (rv, uid)
    }

    pub(super) fn ptr_eq(&self, other: &Packed) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// Bytes held (the compressed frame and the header).
    pub(super) fn len(&self) -> usize {
        self.0.len()
    }

    /// Bytes of JSON it stands for.
    pub(super) fn raw_len(&self) -> usize {
        self.parts().0
    }
}

/// How a store compresses cold objects: settings plus the serde functions for `K`, which
/// [`Store::compact_cold`](super::Store::compact_cold) instantiates where `K`'s serde bounds
/// are known (the store itself does not require them).
pub(super) struct Codec<K> {
    pub(super) hot: usize,
    min_bytes: usize,
    #[cfg_attr(not(feature = "compact"), allow(dead_code))]
    level: i32,
    #[cfg_attr(not(feature = "compact"), allow(dead_code))]
    encode: fn(&K) -> Option<Vec<u8>>,
    #[cfg_attr(not(feature = "compact"), allow(dead_code))]
    decode: fn(&[u8]) -> Option<K>,
}

#[cfg(feature = "compact")]
thread_local! {
    // zstd contexts are a few hundred KiB; one per thread that packs or unpacks, reused,
    // instead of one allocated per object.
    static COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(None) };
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

impl<K: Resource> Codec<K> {
    #[cfg(feature = "compact")]
    pub(super) fn new(settings: &Compaction) -> Self
    where
        K: serde::Serialize + serde::de::DeserializeOwned,
    {
        Codec {
            hot: settings.hot,
            min_bytes: settings.min_bytes,
            level: settings.level,
            encode: |o| serde_json::to_vec(o).ok(),
            decode: |b| serde_json::from_slice(b).ok(),
        }
    }

    /// The object compressed, or `None` when it stays as it is: smaller than `min_bytes` as
    /// JSON, no smaller compressed, or its JSON does not decode back into `K` (checked here,
    /// once per object version, so a cold object always decodes).
    #[cfg(feature = "compact")]
    pub(super) fn pack(&self, obj: &K) -> Option<Packed> {
        let json = (self.encode)(obj)?;
        if json.len() < self.min_bytes || u32::try_from(json.len()).is_err() {
            return None;
        }
        (self.decode)(&json)?;
        let frame = COMPRESSOR.with_borrow_mut(|c| {
            if c.as_ref().is_none_or(|(level, _)| *level != self.level) {
                *c = Some((self.level, zstd::bulk::Compressor::new(self.level).ok()?));
            }
            c.as_mut()?.1.compress(&json).ok()
        })?;
        let meta = obj.meta();
        let rv = meta.resource_version.as_deref().unwrap_or_default().as_bytes();
        let uid = meta.uid.as_deref().unwrap_or_default().as_bytes();
        let (rv_len, uid_len) = (u16::try_from(rv.len()).ok()?, u16::try_from(uid.len()).ok()?);
        let len = 8 + rv.len() + uid.len() + frame.len();
        if len >= json.len() {
            return None;
        }
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(&(json.len() as u32).to_le_bytes());
        out.extend_from_slice(&rv_len.to_le_bytes());
        out.extend_from_slice(rv);
        out.extend_from_slice(&uid_len.to_le_bytes());
        out.extend_from_slice(uid);
        out.extend_from_slice(&frame);
        Some(Packed(out.into()))
    }

    #[cfg(not(feature = "compact"))]
    pub(super) fn pack(&self, _obj: &K) -> Option<Packed> {
        let _ = self.min_bytes;
        None
    }

    /// The object back. `pack` checked that its JSON decodes, so `None` means the bytes were
    /// damaged in memory; the caller reports it.
    #[cfg(feature = "compact")]
    pub(super) fn unpack(&self, packed: &Packed) -> Option<K> {
        let (raw, _, _, frame) = packed.parts();
        let json = DECOMPRESSOR.with_borrow_mut(|d| {
            if d.is_none() {
                *d = Some(zstd::bulk::Decompressor::new().ok()?);
            }
            d.as_mut()?.decompress(frame, raw).ok()
        })?;
        (self.decode)(&json)
    }

    #[cfg(not(feature = "compact"))]
    pub(super) fn unpack(&self, _packed: &Packed) -> Option<K> {
        None
    }
}

/// Resolve slots read under the store's lock into objects, after the lock is released.
/// A cold slot that does not decode (memory damage: `pack` proved it decodes) is left out
/// with an ERROR line naming the object's version, never a panic.
pub(super) fn resolve<K: Resource>(codec: Option<&Codec<K>>, slot: Slot<K>) -> Option<Arc<K>> {
    match slot {
        Slot::Hot(o) => Some(o),
        Slot::Cold(p) => {
            let obj = codec.and_then(|c| c.unpack(&p));
            if obj.is_none() {
                let (rv, uid) = p.version();
                tracing::error!(
                    resource_version = rv.unwrap_or_default(),
                    uid = uid.unwrap_or_default(),
                    "crwatch store: a compressed object did not decode and is skipped; this \
                     means memory corruption: restart the process"
                );
            }
            obj.map(Arc::new)
        }
    }
}

/// Settings of compressed storage for cold objects (feature `compact`): see
/// [`Store::compact_cold`](super::Store::compact_cold).
///
/// ```
/// use crwatch::store::Compaction;
///
/// let c = Compaction::new().hot(256)?.min_bytes(1024)?.level(3)?;
/// assert!(Compaction::new().level(42).is_err());
/// # Ok::<(), crwatch::store::CompactionError>(())
/// ```
#[cfg(feature = "compact")]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compaction {
    hot: usize,
    min_bytes: usize,
    level: i32,
}

#[cfg(feature = "compact")]
impl Default for Compaction {
    fn default() -> Self {
        Compaction::new()
    }
}

/// A compaction setting out of range.
#[cfg(feature = "compact")]
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("compaction setting {name} = {value}: must be between {min} and {max}")]
pub struct CompactionError {
    /// The setting.
    pub name: &'static str,
    /// The value given.
    pub value: i64,
    /// The smallest value allowed.
    pub min: i64,
    /// The largest value allowed.
    pub max: i64,
}

#[cfg(feature = "compact")]
fn in_range(name: &'static str, value: i64, min: i64, max: i64) -> Result<(), CompactionError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(CompactionError {
            name,
            value,
            min,
            max,
        })
    }
}

#[cfg(feature = "compact")]
impl Compaction {
    /// The defaults: the 256 most recently written objects stay decoded, objects under 512
    /// bytes of JSON are never compressed, zstd level 1 (about 10 µs to pack and 3 µs to
    /// unpack a 3 KiB ConfigMap; higher levels barely shrink Kubernetes JSON further).
    pub fn new() -> Self {
        Compaction {
            hot: 256,
            min_bytes: 512,
            level: 1,
        }
    }

    /// How many of the most recently written objects stay decoded (0 to 10,000,000). Reads of
    /// those return the cached `Arc` itself; reads of the rest decode.
    pub fn hot(mut self, objects: usize) -> Result<Self, CompactionError> {
        in_range("hot", objects as i64, 0, 10_000_000)?;
        self.hot = objects;
        Ok(self)
    }

    /// Objects whose JSON is smaller than this stay decoded (0 to 64 MiB): compressing small
    /// objects saves little and costs a decode on every read.
    pub fn min_bytes(mut self, bytes: usize) -> Result<Self, CompactionError> {
        in_range("min_bytes", bytes as i64, 0, 64 << 20)?;
        self.min_bytes = bytes;
        Ok(self)
    }

    /// The zstd level (1 to 19).
    pub fn level(mut self, level: i32) -> Result<Self, CompactionError> {
        in_range("level", i64::from(level), 1, 19)?;
        self.level = level;
        Ok(self)
    }
}

/// What compaction currently holds (see [`Store::compaction_stats`](super::Store::compaction_stats)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CompactionStats {
    /// Objects held decoded.
    pub hot: usize,
    /// Objects held compressed.
    pub cold: usize,
    /// Bytes the compressed objects take (headers included).
    pub cold_bytes: usize,
    /// Bytes of JSON the compressed objects stand for.
    pub cold_json_bytes: usize,
}

#[cfg(all(test, feature = "compact"))]
mod tests {
    use super::super::{LABEL_INDEX, NAMESPACE_INDEX, ObjectKey, Store};
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use proptest::prelude::*;

    /// A ConfigMap with `bytes` of compressible data.
    fn cm(ns: &str, name: &str, rv: &str, uid: &str, bytes: usize) -> ConfigMap {
        let mut cm = ConfigMap::default();
        cm.metadata.namespace = Some(ns.into());
        cm.metadata.name = Some(name.into());
        cm.metadata.resource_version = Some(rv.into());
        cm.metadata.uid = Some(uid.into());
        cm.metadata.labels = Some([("app".to_string(), name.to_string())].into());
        let line = format!("{name} = {rv}\n");
        cm.data = Some([("config".to_string(), line.repeat(bytes / line.len() + 1))].into());
        cm
    }

    fn compacting(hot: usize) -> Store<ConfigMap> {
        let store = Store::new();
        store.compact_cold(Compaction::new().hot(hot).unwrap().min_bytes(256).unwrap());
        store
    }

    fn key(name: &str) -> ObjectKey {
        ObjectKey::new(Some("ns"), name)
    }

    #[test]
    fn cold_objects_read_back_equal_and_the_hot_set_is_bounded() {
        let store = compacting(2);
        let objs: Vec<ConfigMap> = (0..10)
            .map(|i| cm("ns", &format!("o{i}"), "1", &format!("u{i}"), 2000))
            .collect();
        for o in &objs {
            store.apply(o.clone());
        }
        let stats = store.compaction_stats();
        assert_eq!((stats.hot, stats.cold), (2, 8), "{stats:?}");
        assert!(stats.cold_bytes * 4 < stats.cold_json_bytes, "{stats:?}");
        for (i, o) in objs.iter().enumerate() {
            assert_eq!(*store.get(&key(&format!("o{i}"))).unwrap(), *o);
        }
        let listed: Vec<ConfigMap> = store.list().iter().map(|o| (**o).clone()).collect();
        assert_eq!(listed, objs);
        // The most recent writes are the hot ones: reads return the cached Arc itself.
        assert!(Arc::ptr_eq(
            &store.get(&key("o9")).unwrap(),
            &store.get(&key("o9")).unwrap()
        ));
    }

    #[test]
    fn small_objects_stay_decoded() {
        let store = compacting(0);
        store.apply(cm("ns", "small", "1", "u", 10));
        store.apply(cm("ns", "big", "1", "u2", 4000));
        let stats = store.compaction_stats();
        assert_eq!((stats.hot, stats.cold), (1, 1), "{stats:?}");
    }

    #[test]
    fn updates_and_deletes_return_the_previous_state_of_cold_objects() {
        let store = compacting(0);
        let v1 = cm("ns", "a", "1", "u", 2000);
        assert!(store.apply(v1.clone()).is_none());
        assert_eq!(store.compaction_stats().cold, 1);
        let v2 = cm("ns", "a", "2", "u", 2000);
        assert_eq!(*store.apply(v2.clone()).unwrap(), v1);
        assert_eq!(*store.delete(&key("a")).unwrap(), v2);
        assert!(store.is_empty());
    }

    #[test]
    fn indexes_selectors_and_late_indexers_see_cold_objects() {
        let store = compacting(1);
        for i in 0..5 {
            store.apply(cm("ns", &format!("o{i}"), "1", &format!("u{i}"), 2000));
        }
        store.apply(cm("other", "x", "1", "ux", 2000));
        assert!(store.compaction_stats().cold >= 5);
        assert_eq!(store.by_index(NAMESPACE_INDEX, "ns").len(), 5);
        assert_eq!(store.by_index(LABEL_INDEX, "app=o3").len(), 1);
        let lister = store.lister();
        assert_eq!(lister.list_namespace("ns").len(), 5);
        assert_eq!(lister.list_selector("app in (o1,o2,x)").unwrap().len(), 3);
        assert_eq!(lister.list_namespace_selector("ns", "app!=o1").unwrap().len(), 4);
        store.add_indexer("rv", |cm: &ConfigMap| {
            cm.metadata.resource_version.iter().cloned().collect()
        });
        assert_eq!(store.by_index("rv", "1").len(), 6);
    }

    #[test]
    fn a_relist_over_cold_objects_reports_only_real_changes() {
        let store = compacting(0);
        store.replace(vec![
            cm("ns", "same", "1", "u1", 2000),
            cm("ns", "changed", "1", "u2", 2000),
            cm("ns", "recreated", "1", "u3", 2000),
            cm("ns", "gone", "1", "u4", 2000),
        ]);
        assert_eq!(store.compaction_stats().cold, 4);
        let r = store.replace(vec![
            cm("ns", "same", "1", "u1", 2000),
            cm("ns", "changed", "2", "u2", 2000),
            cm("ns", "recreated", "5", "u9", 2000),
            cm("ns", "new", "1", "u5", 2000),
        ]);
        let names = |v: &[Arc<ConfigMap>]| {
            v.iter()
                .map(|o| o.metadata.name.clone().unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&r.added), ["new", "recreated"]);
        assert_eq!(names(&r.deleted), ["gone", "recreated"]);
        assert_eq!(r.updated.len(), 1);
        let (old, new) = &r.updated[0];
        assert_eq!(**old, cm("ns", "changed", "1", "u2", 2000));
        assert_eq!(new.metadata.resource_version.as_deref(), Some("2"));
        assert_eq!(r.deleted[1].metadata.uid.as_deref(), Some("u3"));
    }

    #[test]
    fn enabling_on_a_full_store_compresses_what_is_there() {
        let store = Store::new();
        for i in 0..4 {
            store.apply(cm("ns", &format!("o{i}"), "1", "u", 2000));
        }
        store.compact_cold(Compaction::new().hot(1).unwrap());
        assert_eq!(store.compaction_stats().cold, 3);
        assert_eq!(store.list().len(), 4);
    }

    #[test]
    fn settings_are_range_checked() {
        assert!(Compaction::new().hot(10_000_001).is_err());
        assert!(Compaction::new().min_bytes((64 << 20) + 1).is_err());
        assert!(Compaction::new().level(0).is_err());
        let e = Compaction::new().level(20).unwrap_err();
        assert_eq!(
            e.to_string(),
            "compaction setting level = 20: must be between 1 and 19"
        );
    }

    #[derive(Clone, Debug)]
    enum Op {
        Apply(u8, u8),
        Delete(u8),
        Replace(Vec<(u8, u8)>),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..12, 0u8..4).prop_map(|(n, v)| Op::Apply(n, v)),
            1 => (0u8..12).prop_map(Op::Delete),
            1 => proptest::collection::vec((0u8..12, 0u8..4), 0..12).prop_map(Op::Replace),
        ]
    }

    fn obj(n: u8, v: u8) -> ConfigMap {
        // Sizes on both sides of min_bytes; the uid changes with v / 2 (re-creations).
        cm(
            "ns",
            &format!("o{n}"),
            &v.to_string(),
            &format!("u{n}-{}", v / 2),
            usize::from(n) * 60,
        )
    }

    fn seen(v: &[Arc<ConfigMap>]) -> Vec<ConfigMap> {
        v.iter().map(|o| (**o).clone()).collect()
    }

    proptest! {
        /// Whatever happens, a compacting store answers exactly as a plain one.
        #[test]
        fn compaction_is_invisible_to_readers(ops in proptest::collection::vec(op(), 1..40), hot in 0usize..4) {
            let plain = Store::<ConfigMap>::new();
            let compact = compacting(hot);
            for op in ops {
                match op {
                    Op::Apply(n, v) => {
                        let (a, b) = (plain.apply(obj(n, v)), compact.apply(obj(n, v)));
                        prop_assert_eq!(a.map(|o| (*o).clone()), b.map(|o| (*o).clone()));
                    }
                    Op::Delete(n) => {
                        let (a, b) = (plain.delete(&key(&format!("o{n}"))), compact.delete(&key(&format!("o{n}"))));
                        prop_assert_eq!(a.map(|o| (*o).clone()), b.map(|o| (*o).clone()));
                    }
                    Op::Replace(list) => {
                        let objs: Vec<ConfigMap> = list.iter().map(|&(n, v)| obj(n, v)).collect();
                        let (a, b) = (plain.replace(objs.clone()), compact.replace(objs));
                        prop_assert_eq!(seen(&a.added), seen(&b.added));
                        prop_assert_eq!(seen(&a.deleted), seen(&b.deleted));
                        let pairs = |r: &super::super::Replaced<ConfigMap>| r.updated.iter().map(|(o, n)| ((**o).clone(), (**n).clone())).collect::<Vec<_>>();
                        prop_assert_eq!(pairs(&a), pairs(&b));
                    }
                }
                prop_assert_eq!(seen(&plain.list()), seen(&compact.list()));
                prop_assert_eq!(seen(&plain.by_index(LABEL_INDEX, "app=o5")), seen(&compact.by_index(LABEL_INDEX, "app=o5")));
                prop_assert!(compact.compaction_stats().hot <= plain.len().min(hot + 1) + plain.len());
            }
        }
    }
}
