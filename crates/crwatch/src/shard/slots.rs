//! The hash space of a shard ring: KEP-5866's FNV-1a hash of a uid or namespace, the slots it
//! is cut into, their assignment to members (rendezvous hashing with bounded loads) and slot
//! sets as `shardSelector` ranges.

/// FNV-1a, 64 bits: the hash KEP-5866's `shardRange()` applies to a uid or namespace.
///
/// ```
/// assert_eq!(crwatch::shard::fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
/// ```
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A strong 64-bit mix (splitmix64's finaliser): FNV-1a alone barely spreads strings that
/// differ only in their last bytes, as `pod-1#3` and `pod-1#4` do.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Which field of an object decides its shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ShardKey {
    /// `metadata.uid`: objects spread evenly; owned objects follow their owner's uid.
    #[default]
    Uid,
    /// `metadata.namespace`: a namespace's objects stay together, owned objects included, so
    /// owned informers can be sharded on the server too.
    Namespace,
}

impl ShardKey {
    /// The field path as `shardRange()` names it.
    pub fn field(self) -> &'static str {
        match self {
            ShardKey::Uid => "object.metadata.uid",
            ShardKey::Namespace => "object.metadata.namespace",
        }
    }
}

/// The slot of a hash among `slots` (a power of two).
///
/// ```
/// use crwatch::shard::slot_of;
/// assert_eq!(slot_of(0, 64), 0);
/// assert_eq!(slot_of(u64::MAX, 64), 63);
/// assert_eq!(slot_of(u64::MAX, 1), 0);
/// ```
pub fn slot_of(hash: u64, slots: u32) -> u32 {
    let bits = slots.max(1).trailing_zeros();
    if bits == 0 {
        0
    } else {
        (hash >> (64 - bits)) as u32
    }
}

/// The owner (an index into `members`) of each of `slots` slots: rendezvous hashing with
/// bounded loads (see the module docs). `members` must be sorted and free of duplicates for
/// every replica to agree; an empty list owns nothing (all `usize::MAX`).
pub fn assign(members: &[String], slots: u32) -> Vec<usize> {
    let n = members.len();
    let slots = slots.max(1) as usize;
    if n == 0 {
        return vec![usize::MAX; slots];
    }
    // Loads end at `lo` or `lo + 1`, with exactly `extra` members at `lo + 1`.
    let (lo, extra) = (slots / n, slots % n);
    let mut at_hi = 0;
    let seeds: Vec<u64> = members.iter().map(|m| fnv1a64(m.as_bytes())).collect();
    let mut load = vec![0usize; n];
    let mut owners = Vec::with_capacity(slots);
    let mut ranked: Vec<(u64, usize)> = Vec::with_capacity(n);
    for s in 0..slots {
        ranked.clear();
        let salt = mix(s as u64 ^ 0x5bd1_e995);
        ranked.extend(seeds.iter().enumerate().map(|(i, seed)| (mix(seed ^ salt), i)));
        ranked.sort_unstable_by(|a, b| b.cmp(a));
        // Some member has room: the capacities add up to `slots`, more than assigned so far.
        let owner = ranked
            .iter()
            .map(|(_, i)| *i)
            .find(|i| load[*i] < lo || (load[*i] == lo && at_hi < extra))
            .unwrap_or(ranked[0].1);
        if load[owner] == lo {
            at_hi += 1;
        }
        load[owner] += 1;
        owners.push(owner);
    }
    owners
}

/// A set of slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotSet {
    bits: Vec<bool>,
}

impl SlotSet {
    /// No slot of `slots`.
    pub fn empty(slots: u32) -> Self {
        SlotSet {
            bits: vec![false; slots.max(1) as usize],
        }
    }

    /// The slots `members` assigns to `me` (none when `me` is not a member).
    pub fn assigned(members: &[String], me: &str, slots: u32) -> Self {
        let mut set = SlotSet::empty(slots);
        if let Some(i) = members.iter().position(|m| m == me) {
            for (s, owner) in assign(members, slots).into_iter().enumerate() {
                set.bits[s] = owner == i;
            }
        }
        set
    }

    /// Whether `slot` is in the set.
    pub fn contains(&self, slot: u32) -> bool {
        self.bits.get(slot as usize).copied().unwrap_or(false)
    }

    /// How many slots are in the set.
    pub fn len(&self) -> usize {
        self.bits.iter().filter(|b| **b).count()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        !self.bits.iter().any(|b| *b)
    }

    /// The slots in the set.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.bits
            .iter()
            .enumerate()
            .filter(|(_, b)| **b)
            .map(|(s, _)| s as u32)
    }

    /// The slots in both sets.
    pub fn intersect(&self, other: &SlotSet) -> SlotSet {
        SlotSet {
            bits: self.bits.iter().zip(&other.bits).map(|(a, b)| *a && *b).collect(),
        }
    }

    /// The slots in either set.
    pub fn union(&self, other: &SlotSet) -> SlotSet {
        SlotSet {
            bits: self.bits.iter().zip(&other.bits).map(|(a, b)| *a || *b).collect(),
        }
    }

    /// The slots of `self` not in `other`.
    pub fn minus(&self, other: &SlotSet) -> SlotSet {
        SlotSet {
            bits: self
                .bits
                .iter()
                .zip(&other.bits)
                .map(|(a, b)| *a && !*b)
                .collect(),
        }
    }

    /// The set as hash ranges, adjacent slots merged: `[start, end)` with `end` up to 2^64.
    pub fn ranges(&self) -> Vec<(u64, u128)> {
        let width: u128 = (1u128 << 64) / self.bits.len() as u128;
        let mut out: Vec<(u64, u128)> = Vec::new();
        for s in self.iter() {
            let start = u128::from(s) * width;
            let end = start + width;
            match out.last_mut() {
                Some(last) if last.1 == start => last.1 = end,
                // start < 2^64: s < slots.
                _ => out.push((start as u64, end)),
            }
        }
        out
    }

    /// A KEP-5866 `shardSelector` for this set over `key`: `shardRange(object.metadata.uid,
    /// '0x0000000000000000', '0x4000000000000000') || …`. An empty set selects the one-hash range
    /// `[0, 1)`, which in practice matches nothing (a selector cannot be empty).
    ///
    /// ```
    /// use crwatch::shard::{ShardKey, SlotSet};
    /// let all = SlotSet::assigned(&["me".to_string()], "me", 4);
    /// assert_eq!(
    ///     all.selector(ShardKey::Uid),
    ///     "shardRange(object.metadata.uid, '0x0000000000000000', '0x10000000000000000')"
    /// );
    /// ```
    pub fn selector(&self, key: ShardKey) -> String {
        let ranges = self.ranges();
        let ranges = if ranges.is_empty() { vec![(0, 1)] } else { ranges };
        ranges
            .iter()
            .map(|(start, end)| format!("shardRange({}, '0x{start:016x}', '0x{end:016x}')", key.field()))
            .collect::<Vec<_>>()
            .join(" || ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        let mut v: Vec<String> = (0..n).map(|i| format!("replica-{i}_{:08x}", i * 7919)).collect();
        v.sort();
        v
    }

    #[test]
    fn fnv_matches_the_published_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn loads_differ_by_at_most_one_slot() {
        for n in 1..=10 {
            let members = names(n);
            for slots in [1u32, 8, 64, 256] {
                let owners = assign(&members, slots);
                let mut load = vec![0usize; n];
                for o in &owners {
                    load[*o] += 1;
                }
                let (min, max) = (load.iter().min().copied(), load.iter().max().copied());
                if slots as usize >= n {
                    assert!(
                        max.unwrap_or(0) - min.unwrap_or(0) <= 1,
                        "n={n} slots={slots} {load:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_joining_member_moves_few_slots() {
        for n in 1..8 {
            let before = names(n);
            let mut after = before.clone();
            after.push("zz-new".into());
            after.sort();
            let a = assign(&before, 256);
            let b = assign(&after, 256);
            let moved = a
                .iter()
                .zip(&b)
                .filter(|(x, y)| before[**x] != after[**y])
                .count();
            // Ideal: 256 / (n + 1) move to the newcomer; allow the bounded-load cascade.
            let ideal = 256 / (n + 1);
            assert!(moved <= ideal * 2 + 4, "n={n}: {moved} moved, ideal {ideal}");
        }
    }

    #[test]
    fn every_slot_has_exactly_one_owner_and_ranges_cover_the_space() {
        let members = names(3);
        let sets: Vec<SlotSet> = members
            .iter()
            .map(|m| SlotSet::assigned(&members, m, 64))
            .collect();
        for s in 0..64 {
            assert_eq!(sets.iter().filter(|x| x.contains(s)).count(), 1);
        }
        let mut ranges: Vec<(u64, u128)> = sets.iter().flat_map(|s| s.ranges()).collect();
        ranges.sort();
        assert_eq!(ranges.first().map(|r| r.0), Some(0));
        assert_eq!(ranges.last().map(|r| r.1), Some(1u128 << 64));
        for w in ranges.windows(2) {
            assert_eq!(u128::from(w[1].0), w[0].1);
        }
    }

    #[test]
    fn selectors_follow_the_kep_syntax() {
        let set = SlotSet {
            bits: vec![true, false, true, true],
        };
        assert_eq!(
            set.selector(ShardKey::Namespace),
            "shardRange(object.metadata.namespace, '0x0000000000000000', '0x4000000000000000') || \
             shardRange(object.metadata.namespace, '0x8000000000000000', '0x10000000000000000')"
        );
        assert_eq!(
            SlotSet::empty(4).selector(ShardKey::Uid),
            "shardRange(object.metadata.uid, '0x0000000000000000', '0x0000000000000001')"
        );
    }
}
