//! Interest in filters without wildcards, kept as 64-bit hashes instead of text.
//!
//! A filter with no `+` or `#` matches exactly one topic: itself. Most such filters belong to
//! one client (`devices/17/commands`), so there are about as many as there are connections, and
//! the interest index of every other shard holds one entry for each. As trie nodes those entries
//! cost about 74 B each on the other shards plus 43 B in the subscribing shard's counts; as
//! hashes they cost 8 B each (up to 4 shards: a set per shard) or 16 B (`hash -> mask`) plus
//! the table's control byte and spare room, and the subscribing shard needs no count of its
//! own (below).
//!
//! Nothing here needs the text, because a hash can only err one way. Two filters with one hash
//! share one entry: the subscribing shard's subscriptions keep exact filters by this same hash
//! with their subscribers (`topic::Subscriptions`), so the shard announces a hash when its
//! first subscriber arrives and withdraws it when the last one leaves; the other shards keep
//! the OR of the shards that announced it (`ExactMasks`). A publish to a topic whose hash
//! collides with someone's filter is forwarded to that shard, which checks the subscriber's own
//! copy of the filter text and delivers nothing: one wasted forward, never a lost message. The
//! seed is random per process (shared by its shards, which must agree), so a client cannot
//! choose colliding filters to cause those forwards.

use std::hash::BuildHasher;
use std::sync::{Arc, OnceLock};

use foldhash::fast::FixedState;
use hashbrown::HashTable;

use super::shared_masks::SharedMasks;

/// Whether `filter` is kept by hash: no wildcard character anywhere (an invalid filter mixing
/// one into a level also stays in the trie, as literal text) and not a `$share/` group, which
/// the shared-group index keeps by name.
pub fn hashed(filter: &str) -> bool {
    !filter.starts_with(crate::topic::filter::SHARE_PREFIX)
        && !filter.bytes().any(|byte| byte == b'+' || byte == b'#')
}

/// The process-wide filter and topic hash (each index keeps a copy, so a lookup reads no
/// shared state).
#[derive(Clone, Debug)]
pub struct FilterHasher {
    state: FixedState,
    /// Tests only: the hash bits kept (`collide_on_this_thread`), to force collisions.
    #[cfg(test)]
    keep: u64,
}

impl FilterHasher {
    /// The hasher every shard of this process uses.
    pub fn process() -> FilterHasher {
        static SEED: OnceLock<u64> = OnceLock::new();
        let seed = *SEED.get_or_init(|| foldhash::fast::RandomState::default().hash_one(0u64));
        FilterHasher {
            state: FixedState::with_seed(seed),
            #[cfg(test)]
            keep: TEST_KEEP.with(std::cell::Cell::get),
        }
    }

    #[inline]
    pub fn hash(&self, text: &str) -> u64 {
        let hash = self.state.hash_one(text.as_bytes());
        #[cfg(test)]
        let hash = hash & self.keep;
        hash
    }
}

#[cfg(test)]
thread_local! {
    static TEST_KEEP: std::cell::Cell<u64> = const { std::cell::Cell::new(u64::MAX) };
}

/// Tests only: hashers made after this on this thread keep only the bits of `keep` of each
/// hash (0: every filter and topic has one hash), so collisions can be tested. Each test runs
/// on its own thread, so this ends with the test.
#[cfg(test)]
pub fn collide_on_this_thread(keep: u64) {
    TEST_KEEP.with(|cell| cell.set(keep));
}

/// Entries below this many table slots are never shrunk (a small table costs nothing much).
const SHRINK_MIN: usize = 64;

/// A set of hashes (a hash is its own key), shrunk when a quarter full.
#[derive(Debug, Default)]
struct HashSet {
    table: HashTable<u64>,
}

impl HashSet {
    #[inline]
    fn contains(&self, hash: u64) -> bool {
        self.table.find(hash, |&entry| entry == hash).is_some()
    }

    /// Adds `hash`; true when it was not there.
    fn insert(&mut self, hash: u64) -> bool {
        match self
            .table
            .entry(hash, |&entry| entry == hash, |&entry| entry)
        {
            hashbrown::hash_table::Entry::Occupied(_) => false,
            hashbrown::hash_table::Entry::Vacant(entry) => {
                entry.insert(hash);
                true
            }
        }
    }

    /// Removes `hash`; true when it was there.
    fn remove(&mut self, hash: u64) -> bool {
        let Ok(entry) = self.table.find_entry(hash, |&entry| entry == hash) else {
            return false;
        };
        entry.remove();
        let capacity = self.table.capacity();
        if capacity > SHRINK_MIN && self.table.len() * 4 < capacity {
            self.table.shrink_to(self.table.len() * 2, |&entry| entry);
        }
        true
    }

    fn len(&self) -> usize {
        self.table.len()
    }
}

/// Up to this many shards, the other shards' interest is one set of hashes per shard; past it,
/// one `hash -> mask` table for every shard (`shared_masks.rs`).
pub const SETS_SHARDS_MAX: usize = 4;

/// Other shards' interest in hashed filters: which shards have a subscriber on a hash.
///
/// Almost every such filter is one client's, on one shard, so the entry that says so is most
/// of the cost. With few shards it is the hash alone (8 B and a control byte) in the set of
/// the shard that announced it, kept by each other shard, and a lookup probes each non-empty
/// set: one probe with two shards, at most three with four. With more shards, copies in every
/// shard would cost more than one table for the process (16 B a slot, `shared_masks.rs`),
/// which all of them read and each writes its own bits to. Both answer the same masks.
#[derive(Debug)]
pub struct ExactMasks {
    kind: Kind,
    /// With sets: (hash, shard) pairs in all.
    entries: usize,
    /// With sets: a bit per shard whose set is not empty, the only ones a lookup probes.
    occupied: u64,
}

#[derive(Debug)]
enum Kind {
    /// Index = shard. This shard's own set stays empty: it announces only to the others.
    Sets(Box<[HashSet]>),
    /// One table for every shard of the process (`shared_masks.rs`): each shard writes its
    /// own bits, its own filters included, instead of announcing them.
    Shared(Arc<SharedMasks>),
}

impl ExactMasks {
    /// For `shard_count` shards (1..=`SHARDS_MAX`), with a table of its own past
    /// `SETS_SHARDS_MAX` (one index answering for several shards, as in tests).
    pub fn new(shard_count: usize) -> ExactMasks {
        ExactMasks::sharing(shard_count, ExactMasks::shared_for(shard_count))
    }

    /// The table every shard's index shares: `Some` past `SETS_SHARDS_MAX` shards.
    pub fn shared_for(shard_count: usize) -> Option<Arc<SharedMasks>> {
        (shard_count > SETS_SHARDS_MAX).then(|| Arc::new(SharedMasks::new(shard_count)))
    }

    /// For `shard_count` shards, on `shared` (from `shared_for`) when there is one.
    pub fn sharing(shard_count: usize, shared: Option<Arc<SharedMasks>>) -> ExactMasks {
        let kind = match shared {
            Some(shared) => Kind::Shared(shared),
            None => Kind::Sets((0..shard_count).map(|_| HashSet::default()).collect()),
        };
        ExactMasks {
            kind,
            entries: 0,
            occupied: 0,
        }
    }

    /// Whether the shards share one table: then a shard applies its own changes here (visible
    /// to every shard at once) rather than announcing them through the mesh.
    pub fn is_shared(&self) -> bool {
        matches!(self.kind, Kind::Shared(_))
    }

    /// A shard's loop turn starts (`shared_masks.rs`: when a replaced table may be freed).
    #[inline]
    pub fn quiescent(&self, shard: usize) {
        if let Kind::Shared(shared) = &self.kind {
            shared.quiescent(shard);
        }
    }

    /// A shard is about to sleep in the kernel, or stops.
    #[inline]
    pub fn offline(&self, shard: usize) {
        if let Kind::Shared(shared) = &self.kind {
            shared.offline(shard);
        }
    }

    /// Marks (`interested`) or clears `shard`'s interest in `hash`. Setting what is set, or
    /// clearing what is not, changes nothing.
    pub fn apply(&mut self, hash: u64, shard: usize, interested: bool) {
        let bit = 1u64 << shard;
        match &mut self.kind {
            Kind::Sets(sets) => {
                let Some(set) = sets.get_mut(shard) else {
                    return;
                };
                if interested {
                    let new = set.insert(hash);
                    self.entries += usize::from(new);
                    self.occupied |= bit;
                } else if set.remove(hash) {
                    self.entries -= 1;
                    if set.len() == 0 {
                        self.occupied &= !bit;
                    }
                }
            }
            Kind::Shared(shared) => shared.apply(hash, shard, interested),
        }
    }

    /// The shards interested in `hash`.
    #[inline]
    pub fn mask(&self, hash: u64) -> u64 {
        match &self.kind {
            Kind::Sets(sets) => {
                let mut mask = 0;
                let mut occupied = self.occupied;
                while occupied != 0 {
                    let shard = occupied.trailing_zeros() as usize;
                    occupied &= occupied - 1;
                    if sets[shard].contains(hash) {
                        mask |= 1u64 << shard;
                    }
                }
                mask
            }
            Kind::Shared(shared) => shared.mask(hash),
        }
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        match &self.kind {
            Kind::Sets(_) => self.entries == 0,
            Kind::Shared(shared) => shared.is_empty(),
        }
    }

    /// Distinct hashes some shard is interested in. With sets, a walk of them (for tests and
    /// checks, not the hot path).
    pub fn len(&self) -> usize {
        match &self.kind {
            Kind::Sets(sets) => sets
                .iter()
                .enumerate()
                .map(|(shard, set)| {
                    set.table
                        .iter()
                        .filter(|&&hash| {
                            sets[..shard].iter().all(|earlier| !earlier.contains(hash))
                        })
                        .count()
                })
                .sum(),
            Kind::Shared(shared) => shared.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_filters_are_hashed() {
        for filter in ["a", "a/b", "", "/", "a//b", "$SYS/x", "bench/client-1/in"] {
            assert!(hashed(filter), "{filter:?}");
        }
        for filter in [
            "#",
            "+",
            "a/+",
            "a/#",
            "+/b",
            "a+",
            "a/b#",
            "$share/g/a",
            "$share/g/+",
        ] {
            assert!(!hashed(filter), "{filter:?}");
        }
    }

    #[test]
    fn one_hasher_per_process() {
        let (one, two) = (FilterHasher::process(), FilterHasher::process());
        assert_eq!(one.hash("a/b"), two.hash("a/b"));
        assert_ne!(one.hash("a/b"), one.hash("a/c"));
        assert_ne!(one.hash(""), one.hash("/"));
    }

    /// Both kinds, sets (up to `SETS_SHARDS_MAX` shards) and one mask table (past it).
    const SHARD_COUNTS: [usize; 4] = [3, SETS_SHARDS_MAX, SETS_SHARDS_MAX + 1, 64];

    #[test]
    fn masks_keep_the_or_of_the_shards() {
        for shard_count in SHARD_COUNTS {
            let mut masks = ExactMasks::new(shard_count);
            let last = shard_count - 1;
            masks.apply(7, 0, true);
            masks.apply(7, last, true);
            masks.apply(7, last, true);
            assert_eq!(masks.mask(7), 1 | 1 << last, "{shard_count}: idempotent");
            assert_eq!(masks.len(), 1);
            masks.apply(7, 1, false);
            assert_eq!(masks.mask(7), 1 | 1 << last, "never set: nothing changes");
            masks.apply(8, 0, false);
            assert_eq!(masks.mask(8), 0, "unknown hash");
            masks.apply(9, 1, true);
            assert_eq!(masks.len(), 2);
            masks.apply(7, 0, false);
            assert_eq!(masks.mask(7), 1 << last);
            masks.apply(7, 0, false);
            assert_eq!(masks.mask(7), 1 << last, "cleared twice");
            masks.apply(7, last, false);
            assert_eq!(masks.mask(7), 0);
            assert_eq!(masks.mask(9), 0b10);
            masks.apply(9, 1, false);
            assert!(masks.is_empty(), "{shard_count}");
            assert_eq!(masks.len(), 0);
            assert_eq!(masks.occupied, 0, "no set left to probe");
        }
    }

    /// The kinds agree on every mask, through a random walk of sets and clears.
    #[test]
    fn sets_and_mask_table_answer_alike() {
        let mut sets = ExactMasks::new(SETS_SHARDS_MAX);
        let mut table = ExactMasks::new(SETS_SHARDS_MAX + 1);
        assert!(matches!(sets.kind, Kind::Sets(_)) && matches!(table.kind, Kind::Shared(_)));
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for step in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let (hash, shard, on) = (
                // Not 0: the shared table keeps hash 0 as 1, a collision the sets do not have.
                1 + state % 64,
                (state >> 8) as usize % SETS_SHARDS_MAX,
                state >> 20 & 3 != 0,
            );
            sets.apply(hash, shard, on);
            table.apply(hash, shard, on);
            assert_eq!(sets.mask(hash), table.mask(hash), "step {step}");
            assert_eq!(sets.is_empty(), table.is_empty(), "step {step}");
        }
        assert_eq!(sets.len(), table.len());
    }

    /// The sets (the shared table has its own test, `shared_masks.rs`).
    #[test]
    fn sets_grow_and_shrink_back() {
        for shard_count in [3, SETS_SHARDS_MAX] {
            let mut masks = ExactMasks::new(shard_count);
            let capacity = |masks: &ExactMasks| match &masks.kind {
                Kind::Sets(sets) => sets[1].table.capacity(),
                Kind::Shared(_) => unreachable!(),
            };
            for hash in 0..10_000u64 {
                masks.apply(hash.wrapping_mul(0x9e37_79b9_7f4a_7c15), 1, true);
            }
            let grown = capacity(&masks);
            for hash in 0..9_990u64 {
                masks.apply(hash.wrapping_mul(0x9e37_79b9_7f4a_7c15), 1, false);
            }
            assert!(capacity(&masks) < grown / 16, "{shard_count}");
            for hash in 9_990..10_000u64 {
                assert_eq!(masks.mask(hash.wrapping_mul(0x9e37_79b9_7f4a_7c15)), 0b10);
            }
        }
    }

    /// Heap per hashed filter (each on one shard): in the other shard's set with two shards,
    /// in the process's one table with eight (all shards together: before it, each of the
    /// seven other shards kept 17-34 B). `cargo test --lib exact::tests::bytes -- --nocapture`.
    #[test]
    fn bytes_per_hashed_filter() {
        use crate::topic::alloc_count::live_bytes_of;
        const FILTER_COUNT: usize = 100_000;
        let hasher = FilterHasher::process();
        let hashes: Vec<u64> = (0..FILTER_COUNT)
            .map(|i| hasher.hash(&format!("bench/client-{i}/in")))
            .collect();
        for (shard_count, most) in [(2, 24), (8, 48)] {
            let (bytes, _) = live_bytes_of(|| {
                let mut masks = ExactMasks::new(shard_count);
                for (i, &hash) in hashes.iter().enumerate() {
                    masks.apply(hash, 1 + i % (shard_count - 1), true);
                }
                masks
            });
            let bytes = bytes / FILTER_COUNT as i64;
            eprintln!("hashed filter, {shard_count} shards: {bytes} B per entry");
            assert!(bytes <= most, "{shard_count} shards: {bytes} B");
        }
    }
}
