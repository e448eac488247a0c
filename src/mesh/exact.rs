//! Interest in filters without wildcards, kept as 64-bit hashes instead of text.
//!
//! A filter with no `+` or `#` matches exactly one topic: itself. Most such filters belong to
//! one client (`devices/17/commands`), so there are about as many as there are connections, and
//! the interest index of every other shard holds one entry for each. As trie nodes those entries
//! cost about 74 B each on the other shards plus 43 B in the subscribing shard's counts; as
//! `hash -> mask` entries they cost 16 B each plus the table's control byte and spare room, and
//! the subscribing shard needs no count of its own (below).
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
use std::sync::OnceLock;

use foldhash::fast::FixedState;
use hashbrown::HashTable;

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

/// A `hash -> value` table whose keys are already hashes, shrunk when a quarter full.
#[derive(Debug, Default)]
struct HashedTable<V> {
    table: HashTable<(u64, V)>,
}

impl<V> HashedTable<V> {
    #[inline]
    fn get(&self, hash: u64) -> Option<&V> {
        self.table
            .find(hash, |&(key, _)| key == hash)
            .map(|(_, value)| value)
    }

    fn get_mut(&mut self, hash: u64) -> Option<&mut V> {
        self.table
            .find_mut(hash, |&(key, _)| key == hash)
            .map(|(_, value)| value)
    }

    fn get_or_insert(&mut self, hash: u64, value: V) -> &mut V {
        let entry = self
            .table
            .entry(hash, |&(key, _)| key == hash, |&(key, _)| key)
            .or_insert((hash, value));
        &mut entry.into_mut().1
    }

    fn remove(&mut self, hash: u64) {
        if let Ok(entry) = self.table.find_entry(hash, |&(key, _)| key == hash) {
            entry.remove();
        }
        let capacity = self.table.capacity();
        if capacity > SHRINK_MIN && self.table.len() * 4 < capacity {
            self.table.shrink_to(self.table.len() * 2, |&(key, _)| key);
        }
    }

    fn len(&self) -> usize {
        self.table.len()
    }
}

/// Other shards' interest in hashed filters: hash -> bitmask of the shards with a subscriber.
#[derive(Debug, Default)]
pub struct ExactMasks {
    masks: HashedTable<u64>,
}

impl ExactMasks {
    /// Sets or clears `bit` on `hash`; true when the hash gained or lost its entry.
    pub fn apply(&mut self, hash: u64, bit: u64, interested: bool) -> bool {
        if interested {
            let mask = self.masks.get_or_insert(hash, 0);
            let new = *mask == 0;
            *mask |= bit;
            return new;
        }
        let Some(mask) = self.masks.get_mut(hash) else {
            return false;
        };
        if *mask & bit == 0 {
            return false;
        }
        *mask &= !bit;
        if *mask != 0 {
            return false;
        }
        self.masks.remove(hash);
        true
    }

    #[inline]
    pub fn mask(&self, hash: u64) -> u64 {
        self.masks.get(hash).copied().unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.masks.len() == 0
    }

    pub fn len(&self) -> usize {
        self.masks.len()
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

    #[test]
    fn masks_keep_the_or_of_the_shards() {
        let mut masks = ExactMasks::default();
        assert!(masks.apply(7, 0b01, true));
        assert!(!masks.apply(7, 0b10, true));
        assert!(!masks.apply(7, 0b10, true), "idempotent");
        assert_eq!(masks.mask(7), 0b11);
        assert!(!masks.apply(7, 0b100, false), "never set: nothing changes");
        assert!(!masks.apply(8, 0b1, false), "unknown hash");
        assert!(!masks.apply(7, 0b01, false));
        assert_eq!(masks.mask(7), 0b10);
        assert!(masks.apply(7, 0b10, false));
        assert_eq!(masks.mask(7), 0);
        assert!(masks.is_empty());
    }

    #[test]
    fn tables_grow_and_shrink_back() {
        let mut masks = ExactMasks::default();
        for hash in 0..10_000u64 {
            masks.apply(hash.wrapping_mul(0x9e37_79b9_7f4a_7c15), 1, true);
        }
        let grown = masks.masks.table.capacity();
        for hash in 0..9_990u64 {
            masks.apply(hash.wrapping_mul(0x9e37_79b9_7f4a_7c15), 1, false);
        }
        assert!(masks.masks.table.capacity() < grown / 16);
        for hash in 9_990..10_000u64 {
            assert_eq!(masks.mask(hash.wrapping_mul(0x9e37_79b9_7f4a_7c15)), 1);
        }
    }

    /// Heap per hashed filter in the other shards' mask table.
    /// `cargo test --lib exact::tests::bytes -- --nocapture`.
    #[test]
    fn bytes_per_hashed_filter() {
        use crate::topic::alloc_count::live_bytes_of;
        const FILTER_COUNT: usize = 100_000;
        let hasher = FilterHasher::process();
        let hashes: Vec<u64> = (0..FILTER_COUNT)
            .map(|i| hasher.hash(&format!("bench/client-{i}/in")))
            .collect();
        let (masks, _) = live_bytes_of(|| {
            let mut masks = ExactMasks::default();
            for (i, &hash) in hashes.iter().enumerate() {
                masks.apply(hash, 1 << (i % 4), true);
            }
            masks
        });
        let masks = masks / FILTER_COUNT as i64;
        eprintln!("hashed filter: {masks} B per mask entry");
        assert!(masks <= 40, "{masks} B");
    }
}
