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
//! **The shared dictionary is the interning.** Objects of one kind repeat most of their
//! strings (apiVersion, kind, namespaces, label and annotation keys and values, owner
//! references, field names, images, conditions). Once enough objects were seen (the first big
//! list, or [`SAMPLES`] packed objects), the codec trains one zstd dictionary of
//! [`DICT_BYTES`] from a sample of them and compresses every later object against it, so what
//! all objects share is stored once: Pods of about 3 KiB shrink to a few hundred bytes instead
//! of about 1.3 KiB. The dictionary lives as long as the store (later settings keep it), so
//! every object packed with it stays readable.
//!
//! Layout: `format: u8` (0: plain zstd, 1: with the dictionary), `raw_len: u32 LE`,
//! `rv_len: u16 LE`, rv bytes, `uid_len: u16 LE`, uid bytes, then one zstd frame of `raw_len`
//! bytes of JSON.

use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use kube::Resource;

/// How many packed objects' JSON the codec samples before it trains its dictionary.
pub const SAMPLES: usize = 512;
/// The sampled JSON kept for training at most (bytes): the bound on the sample buffer.
const SAMPLE_BYTES: usize = 4 << 20;
/// The dictionary's size: room for what objects of one kind share, small next to any cache
/// worth compressing.
pub const DICT_BYTES: usize = 32 << 10;

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

/// A parsed [`Packed`] header.
struct Parts<'a> {
    with_dict: bool,
    raw_len: usize,
    rv: Option<&'a str>,
    uid: Option<&'a str>,
    frame: &'a [u8],
}

impl Packed {
    /// The header and frame. The layout is written only by [`Codec::pack`], so a header that
    /// does not parse cannot occur; it still reads as "no version" and an empty frame (which
    /// does not decode and is reported) rather than panicking.
    fn parts(&self) -> Parts<'_> {
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
        let (Some(format), Some(raw)) = (take(&mut b, 1), take(&mut b, 4)) else {
            return Parts {
                with_dict: false,
                raw_len: 0,
                rv: None,
                uid: None,
                frame: &[],
            };
        };
        Parts {
            with_dict: format[0] == 1,
            raw_len: u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]) as usize,
            rv: field(&mut b),
            uid: field(&mut b),
            frame: b,
        }
    }

    pub(super) fn version(&self) -> (Option<&str>, Option<&str>) {
        let p = self.parts();
        (p.rv, p.uid)
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
        self.parts().raw_len
    }
}

/// A trained dictionary; `id` tells the per-thread zstd contexts which one they hold.
pub(super) struct Dict {
    #[cfg_attr(not(feature = "compact"), allow(dead_code))]
    id: u64,
    #[cfg_attr(not(feature = "compact"), allow(dead_code))]
    bytes: Vec<u8>,
}

/// The zstd calls, behind the feature (without it nothing is ever packed: a store only gets a
/// codec through [`Store::compact_cold`](super::Store::compact_cold), which needs it).
#[cfg(feature = "compact")]
mod zst {
    use super::Dict;
    use std::cell::RefCell;

    thread_local! {
        // zstd contexts are a few hundred KiB: one per thread that packs or unpacks, reused,
        // and rebuilt only when the level or dictionary changes.
        static COMPRESSOR: RefCell<Option<((i32, u64), zstd::bulk::Compressor<'static>)>> =
            const { RefCell::new(None) };
        static DECOMPRESSOR: RefCell<Option<(u64, zstd::bulk::Decompressor<'static>)>> =
            const { RefCell::new(None) };
    }

    pub(super) fn compress(level: i32, dict: Option<&Dict>, json: &[u8]) -> Option<Vec<u8>> {
        let want = (level, dict.map_or(0, |d| d.id));
        COMPRESSOR.with_borrow_mut(|c| {
            if c.as_ref().is_none_or(|(have, _)| *have != want) {
                let ctx = match dict {
                    Some(d) => zstd::bulk::Compressor::with_dictionary(level, &d.bytes),
                    None => zstd::bulk::Compressor::new(level),
                };
                *c = Some((want, ctx.ok()?));
            }
            c.as_mut()?.1.compress(json).ok()
        })
    }

    pub(super) fn decompress(dict: Option<&Dict>, frame: &[u8], raw_len: usize) -> Option<Vec<u8>> {
        let want = dict.map_or(0, |d| d.id);
        DECOMPRESSOR.with_borrow_mut(|d| {
            if d.as_ref().is_none_or(|(have, _)| *have != want) {
                let ctx = match dict {
                    Some(dict) => zstd::bulk::Decompressor::with_dictionary(&dict.bytes),
                    None => zstd::bulk::Decompressor::new(),
                };
                *d = Some((want, ctx.ok()?));
            }
            d.as_mut()?.1.decompress(frame, raw_len).ok()
        })
    }

    pub(super) fn train(samples: &[Vec<u8>], size: usize) -> Option<Vec<u8>> {
        zstd::dict::from_samples(samples, size).ok()
    }
}

#[cfg(not(feature = "compact"))]
mod zst {
    use super::Dict;

    pub(super) fn compress(_level: i32, _dict: Option<&Dict>, _json: &[u8]) -> Option<Vec<u8>> {
        None
    }

    pub(super) fn decompress(_dict: Option<&Dict>, _frame: &[u8], _raw_len: usize) -> Option<Vec<u8>> {
        None
    }

    pub(super) fn train(_samples: &[Vec<u8>], _size: usize) -> Option<Vec<u8>> {
        None
    }
}

/// The dictionary's state: still sampling, or decided (trained, or training failed: then
/// objects are packed without one).
pub(super) struct Dictionary {
    trained: OnceLock<Option<Arc<Dict>>>,
    /// JSON of objects packed so far, at most [`SAMPLES`] of them and [`SAMPLE_BYTES`] in all;
    /// emptied when the dictionary is trained.
    samples: Mutex<Vec<Vec<u8>>>,
}

impl Dictionary {
    #[cfg_attr(not(feature = "compact"), allow(dead_code))]
    pub(super) fn new() -> Self {
        Dictionary {
            trained: OnceLock::new(),
            samples: Mutex::new(Vec::new()),
        }
    }

    fn get(&self) -> Option<&Dict> {
        self.trained.get().and_then(|d| d.as_deref())
    }

    /// Train from `samples` now (once per store): `None` leaves it undecided (too few).
    fn train(&self, samples: &[Vec<u8>]) {
        static IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        if samples.len() < SAMPLES / 8 || self.trained.get().is_some() {
            return;
        }
        let dict = zst::train(samples, DICT_BYTES).map(|bytes| {
            Arc::new(Dict {
                id: IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                bytes,
            })
        });
        if dict.is_none() {
            tracing::debug!(
                samples = samples.len(),
                "crwatch store: no compression dictionary could be trained; compressing without"
            );
        }
        let _ = self.trained.set(dict);
        self.samples
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// Keep `json` as a sample; trains once enough were kept.
    fn sample(&self, json: &[u8]) {
        if self.trained.get().is_some() {
            return;
        }
        let full = {
            let mut s = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
            let bytes: usize = s.iter().map(Vec::len).sum();
            if s.len() < SAMPLES && bytes + json.len() <= SAMPLE_BYTES {
                s.push(json.to_vec());
            }
            (s.len() >= SAMPLES || bytes + json.len() > SAMPLE_BYTES).then(|| std::mem::take(&mut *s))
        };
        if let Some(samples) = full {
            self.train(&samples);
        }
    }
}

/// How a store compresses cold objects: settings plus the serde functions for `K`, which
/// [`Store::compact_cold`](super::Store::compact_cold) instantiates where `K`'s serde bounds
/// are known (the store itself does not require them).
pub(super) struct Codec<K> {
    pub(super) hot: usize,
    min_bytes: usize,
    level: i32,
    encode: fn(&K) -> Option<Vec<u8>>,
    decode: fn(&[u8]) -> Option<K>,
    /// Shared with the codecs that replace this one, so objects packed with it stay readable.
    pub(super) dictionary: Arc<Dictionary>,
}

impl<K: Resource> Codec<K> {
    #[cfg(feature = "compact")]
    pub(super) fn new(settings: &Compaction, dictionary: Arc<Dictionary>) -> Self
    where
        K: serde::Serialize + serde::de::DeserializeOwned,
    {
        Codec {
            hot: settings.hot,
            min_bytes: settings.min_bytes,
            level: settings.level,
            encode: |o| serde_json::to_vec(o).ok(),
            decode: |b| serde_json::from_slice(b).ok(),
            dictionary,
        }
    }

    /// Train the dictionary from a spread of `objs` (a big list, before packing it), unless
    /// one was trained already or there are too few.
    #[cfg_attr(not(feature = "compact"), allow(dead_code))]
    pub(super) fn prepare<'a>(&self, objs: impl ExactSizeIterator<Item = &'a Arc<K>>)
    where
        K: 'a,
    {
        if self.dictionary.trained.get().is_some() || objs.len() < SAMPLES / 8 {
            return;
        }
        let step = (objs.len() / SAMPLES).max(1);
        let mut bytes = 0;
        let samples: Vec<Vec<u8>> = objs
            .step_by(step)
            .filter_map(|o| (self.encode)(o))
            .take_while(|j| {
                bytes += j.len();
                bytes <= SAMPLE_BYTES
            })
            .collect();
        self.dictionary.train(&samples);
    }

    /// The object compressed, or `None` when it stays as it is: smaller than `min_bytes` as
    /// JSON, no smaller compressed, or its JSON does not decode back into `K` (checked here,
    /// once per object version, so a cold object always decodes).
    pub(super) fn pack(&self, obj: &K) -> Option<Packed> {
        let json = (self.encode)(obj)?;
        if json.len() < self.min_bytes || u32::try_from(json.len()).is_err() {
            return None;
        }
        (self.decode)(&json)?;
        let dict = self.dictionary.get();
        if dict.is_none() {
            self.dictionary.sample(&json);
        }
        let dict = self.dictionary.get();
        let frame = zst::compress(self.level, dict, &json)?;
        let meta = obj.meta();
        let rv = meta.resource_version.as_deref().unwrap_or_default().as_bytes();
        let uid = meta.uid.as_deref().unwrap_or_default().as_bytes();
        let (rv_len, uid_len) = (u16::try_from(rv.len()).ok()?, u16::try_from(uid.len()).ok()?);
        let len = 9 + rv.len() + uid.len() + frame.len();
        if len >= json.len() {
            return None;
        }
        let mut out = Vec::with_capacity(len);
        out.push(u8::from(dict.is_some()));
        out.extend_from_slice(&(json.len() as u32).to_le_bytes());
        out.extend_from_slice(&rv_len.to_le_bytes());
        out.extend_from_slice(rv);
        out.extend_from_slice(&uid_len.to_le_bytes());
        out.extend_from_slice(uid);
        out.extend_from_slice(&frame);
        Some(Packed(out.into()))
    }

    /// The object back. `pack` checked that its JSON decodes, so `None` means the bytes were
    /// damaged in memory; the caller reports it.
    pub(super) fn unpack(&self, packed: &Packed) -> Option<K> {
        let p = packed.parts();
        let dict = if p.with_dict {
            Some(self.dictionary.get()?)
        } else {
            None
        };
        let json = zst::decompress(dict, p.frame, p.raw_len)?;
        (self.decode)(&json)
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

    /// Pod-like objects: distinct names, values and numbers, but most structure shared.
    fn similar(i: usize) -> ConfigMap {
        let mut o = cm(
            "ns",
            &format!("web-{i:05}"),
            &(1000 + i).to_string(),
            &format!("uid-{i:08x}"),
            0,
        );
        o.data = Some(
            [
                (
                    "image".to_string(),
                    "registry.example.com/team/web-frontend:1.4.2".to_string(),
                ),
                (
                    "node".to_string(),
                    format!("node-{}.zone-a.cluster.example.com", i % 50),
                ),
                (
                    "settings".to_string(),
                    format!(
                        "replicas: {}\ntimeout: 30s\nlog-level: info\nfeature-gates: Alpha=false,Beta=true\n",
                        i % 7
                    ),
                ),
                (
                    "owner".to_string(),
                    "apps/v1 ReplicaSet web-7d9f8c6b5 controller=true".to_string(),
                ),
            ]
            .into(),
        );
        o
    }

    #[test]
    fn a_dictionary_trained_on_the_first_list_shares_what_objects_repeat() {
        let plain = compacting(0);
        let few: Vec<ConfigMap> = (0..SAMPLES / 8 - 1).map(similar).collect();
        plain.replace(few);
        let without = plain.compaction_stats();

        let store = compacting(0);
        let objs: Vec<ConfigMap> = (0..2000).map(similar).collect();
        store.replace(objs.clone());
        let with = store.compaction_stats();
        assert_eq!(with.cold, 2000, "{with:?}");
        let per = |s: CompactionStats| s.cold_bytes as f64 / s.cold_json_bytes as f64;
        // Too few objects to train on: plain zstd. Enough: against the dictionary, far smaller.
        assert!(
            per(with) * 2.0 < per(without),
            "with {with:?}, without {without:?}"
        );
        let listed: Vec<ConfigMap> = store.list().iter().map(|o| (**o).clone()).collect();
        assert_eq!(listed.len(), objs.len());
        assert!(listed.iter().all(|o| objs.contains(o)));

        // New settings keep the dictionary: everything packed with it still reads back.
        store.compact_cold(Compaction::new().hot(10).unwrap().min_bytes(1).unwrap());
        assert_eq!(*store.get(&key("web-01234")).unwrap(), similar(1234));
        store.apply(similar(5000));
        assert_eq!(store.list().len(), 2001);
    }

    #[test]
    fn a_store_fed_one_object_at_a_time_trains_after_enough_samples() {
        let store = compacting(0);
        for i in 0..SAMPLES + 200 {
            store.apply(similar(i));
        }
        let stats = store.compaction_stats();
        assert_eq!(stats.cold, SAMPLES + 200, "{stats:?}");
        for i in [0, SAMPLES - 1, SAMPLES, SAMPLES + 199] {
            assert_eq!(*store.get(&key(&format!("web-{i:05}"))).unwrap(), similar(i));
        }
        // The objects packed after training are smaller than those packed before.
        let size = |i: usize| {
            let st = store.read();
            match &st.objects[&key(&format!("web-{i:05}"))].obj {
                Slot::Cold(p) => p.len(),
                Slot::Hot(_) => usize::MAX,
            }
        };
        assert!(
            size(SAMPLES + 100) * 2 < size(10),
            "{} vs {}",
            size(SAMPLES + 100),
            size(10)
        );
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
