//! One `hash -> mask` table for the whole process: which shards have a subscriber on each
//! filter without wildcards, read by every shard, written by the shard whose subscribers change.
//!
//! A replicated index (`ExactMasks`' sets, one copy per shard) costs every shard an entry for
//! every other shard's filters: with eight shards, 7 entries for each client's own filter,
//! about 260 B of the 536 B an idle subscribed connection cost on 8 shards (bench/idle.sh,
//! 100,000 connections). Here each filter has one slot of 16 B whatever the shard count.
//!
//! - Reads take no lock and write nothing: load the table pointer, probe linearly from the
//!   hash for a slot with that key (an empty slot ends the probe). The table's lines change
//!   only when subscriptions do, so on the publish path they stay in every core's cache.
//! - Writes (a shard's first subscriber on a filter, or its last leaving) take a mutex: they
//!   are per subscription change, not per message. A shard sets and clears only its own bit.
//!   A slot keeps its key once written (a filter left by every shard keeps a slot with mask 0)
//!   until the table is rebuilt: bigger when 3/4 of its slots have keys, smaller when under
//!   1/8 are live. A rebuild copies the live slots into a new table and swaps the pointer.
//! - The table a rebuild replaced is freed once no shard can still be reading it, known
//!   without any per-read cost (quiescent-state reclamation): a shard reads the table only
//!   within a loop turn and holds no reference past it, and says at each turn's start which
//!   epoch it has seen (`quiescent`), and before it sleeps in the kernel that it reads nothing
//!   (`offline`). A table retired at epoch E is freed when every shard is offline or has seen E.
//!
//! Key 0 marks an empty slot, so a hash of 0 is kept as 1: a collision, which, as for every
//! collision in the exact index, can only add a shard to a mask (one forward that finds no
//! subscriber there), never drop one.

use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use crossbeam_utils::CachePadded;

/// Slots in the smallest table.
const CAPACITY_MIN: usize = 64;

/// `quiescent` value of a shard that reads nothing (asleep, or not started).
const OFFLINE: u64 = u64::MAX;

struct Slot {
    /// The filter's hash (0: empty).
    key: AtomicU64,
    /// A bit per shard with a subscriber on it.
    shards: AtomicU64,
}

struct Table {
    slots: Box<[Slot]>,
    /// `slots.len() - 1`; the length is a power of two.
    mask: usize,
}

impl Table {
    fn new(capacity: usize) -> Box<Table> {
        let capacity = capacity.max(CAPACITY_MIN).next_power_of_two();
        let slots = (0..capacity)
            .map(|_| Slot {
                key: AtomicU64::new(0),
                shards: AtomicU64::new(0),
            })
            .collect();
        Box::new(Table {
            slots,
            mask: capacity - 1,
        })
    }

    fn capacity(&self) -> usize {
        self.mask + 1
    }

    /// The slot holding `key`, or the empty slot where it would go. Ends: a table always has
    /// an empty slot (writes keep 1/4 of them empty).
    #[inline]
    fn probe(&self, key: u64) -> (&Slot, bool) {
        let mut index = key as usize & self.mask;
        loop {
            let slot = &self.slots[index];
            match slot.key.load(Ordering::Acquire) {
                found if found == key => return (slot, true),
                0 => return (slot, false),
                _ => index = (index + 1) & self.mask,
            }
        }
    }
}

/// What only the writer (under the mutex) touches.
struct Writer {
    /// Slots with a key, live or not.
    used: usize,
    /// Slots with a non-zero mask.
    live: usize,
    /// Tables replaced by a rebuild, with the epoch they were retired at.
    retired: Vec<(u64, Box<Table>)>,
}

pub struct SharedMasks {
    table: AtomicPtr<Table>,
    writer: Mutex<Writer>,
    /// Bumped at each retirement.
    epoch: AtomicU64,
    /// Per shard: the epoch it saw at its last turn's start, or `OFFLINE`.
    seen: Box<[CachePadded<AtomicU64>]>,
    /// Live slots, for `is_empty` on the publish path (changes only with subscriptions).
    live: CachePadded<AtomicUsize>,
}

impl std::fmt::Debug for SharedMasks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedMasks")
            .field("live", &self.len())
            .finish_non_exhaustive()
    }
}

impl SharedMasks {
    /// For `shard_count` shards, every one offline until its first `quiescent`.
    pub fn new(shard_count: usize) -> SharedMasks {
        SharedMasks {
            table: AtomicPtr::new(Box::into_raw(Table::new(CAPACITY_MIN))),
            writer: Mutex::new(Writer {
                used: 0,
                live: 0,
                retired: Vec::new(),
            }),
            epoch: AtomicU64::new(0),
            seen: (0..shard_count)
                .map(|_| CachePadded::new(AtomicU64::new(OFFLINE)))
                .collect(),
            live: CachePadded::new(AtomicUsize::new(0)),
        }
    }

    /// The shards with a subscriber on `hash`. Called by a shard within a loop turn (between
    /// its `quiescent` and its next `offline`), or by a thread that is the only user.
    #[inline]
    pub fn mask(&self, hash: u64) -> u64 {
        // SAFETY: the pointer is always a live table: a replaced one is freed only once every
        // shard has passed a turn start (or slept) after the swap, and the caller reads within
        // one turn.
        let table = unsafe { &*self.table.load(Ordering::SeqCst) };
        match table.probe(key_of(hash)) {
            (slot, true) => slot.shards.load(Ordering::Acquire),
            _ => 0,
        }
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.live.load(Ordering::Relaxed) == 0
    }

    /// Filters with a non-zero mask.
    pub fn len(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// A shard's turn starts: it holds no reference to a table.
    #[inline]
    pub fn quiescent(&self, shard: usize) {
        let epoch = self.epoch.load(Ordering::SeqCst);
        self.seen[shard].store(epoch, Ordering::SeqCst);
    }

    /// A shard is about to sleep (or stop): it reads nothing until its next `quiescent`.
    #[inline]
    pub fn offline(&self, shard: usize) {
        self.seen[shard].store(OFFLINE, Ordering::SeqCst);
    }

    /// Sets (`interested`) or clears `shard`'s bit on `hash`. Setting what is set, or clearing
    /// what is not, changes nothing.
    pub fn apply(&self, hash: u64, shard: usize, interested: bool) {
        let key = key_of(hash);
        let bit = 1u64 << shard;
        // A panic elsewhere while holding the lock leaves nothing half-done that matters here.
        let mut writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: only a writer (holding the lock) replaces the pointer.
        let mut table = unsafe { &*self.table.load(Ordering::SeqCst) };
        let (slot, found) = table.probe(key);
        let before = if found {
            slot.shards.load(Ordering::Relaxed)
        } else {
            0
        };
        let after = if interested {
            before | bit
        } else {
            before & !bit
        };
        if before == after {
            return;
        }
        if found {
            slot.shards.store(after, Ordering::Release);
        } else {
            if (writer.used + 1) * 4 > table.capacity() * 3 {
                let capacity = (writer.live + 1) * 2;
                table = self.rebuild(&mut writer, capacity);
            }
            let (slot, _) = table.probe(key);
            // The mask before the key: a reader that sees the key sees its mask.
            slot.shards.store(after, Ordering::Relaxed);
            slot.key.store(key, Ordering::Release);
            writer.used += 1;
        }
        match (before, after) {
            (0, _) => writer.live += 1,
            (_, 0) => writer.live -= 1,
            _ => {}
        }
        self.live.store(writer.live, Ordering::Relaxed);
        if table.capacity() > CAPACITY_MIN && writer.live * 8 < table.capacity() {
            let capacity = writer.live * 2;
            self.rebuild(&mut writer, capacity);
        }
        self.free_retired(&mut writer);
    }

    /// Replaces the table with one of at least `capacity` slots holding the live ones, and
    /// retires the old one. Returns the new table.
    fn rebuild(&self, writer: &mut Writer, capacity: usize) -> &Table {
        // SAFETY: as in `apply` (the caller holds the lock).
        let old = unsafe { &*self.table.load(Ordering::SeqCst) };
        let new = Table::new(capacity);
        for slot in old.slots.iter() {
            let shards = slot.shards.load(Ordering::Relaxed);
            if shards != 0 {
                let key = slot.key.load(Ordering::Relaxed);
                let (target, _) = new.probe(key);
                target.shards.store(shards, Ordering::Relaxed);
                target.key.store(key, Ordering::Relaxed);
            }
        }
        writer.used = writer.live;
        let new = Box::into_raw(new);
        let old = self.table.swap(new, Ordering::SeqCst);
        let epoch = self.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        // SAFETY: `old` came from `Box::into_raw` and is in no other list.
        writer.retired.push((epoch, unsafe { Box::from_raw(old) }));
        // SAFETY: just stored; only a later rebuild (under the lock we hold) replaces it.
        unsafe { &*new }
    }

    /// Frees the retired tables no shard can still be reading.
    fn free_retired(&self, writer: &mut Writer) {
        if writer.retired.is_empty() {
            return;
        }
        let oldest_seen = self
            .seen
            .iter()
            .map(|seen| seen.load(Ordering::SeqCst))
            .min()
            .unwrap_or(OFFLINE);
        writer.retired.retain(|(epoch, _)| *epoch > oldest_seen);
    }

    #[cfg(test)]
    fn capacity(&self) -> usize {
        // SAFETY: tests call this from the only thread using the table.
        unsafe { &*self.table.load(Ordering::SeqCst) }.capacity()
    }

    #[cfg(test)]
    fn retired(&self) -> usize {
        self.writer.lock().unwrap().retired.len()
    }
}

impl Drop for SharedMasks {
    fn drop(&mut self) {
        // SAFETY: nobody else holds `self`; the pointer came from `Box::into_raw`.
        drop(unsafe { Box::from_raw(*self.table.get_mut()) });
    }
}

#[inline]
fn key_of(hash: u64) -> u64 {
    hash.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    fn spread(i: u64) -> u64 {
        i.wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }

    #[test]
    fn masks_keep_each_shards_bit() {
        let masks = SharedMasks::new(8);
        masks.apply(7, 0, true);
        masks.apply(7, 7, true);
        masks.apply(7, 7, true);
        assert_eq!(masks.mask(7), 1 | 1 << 7);
        assert_eq!(masks.len(), 1);
        masks.apply(7, 3, false);
        assert_eq!(masks.mask(7), 1 | 1 << 7, "never set: nothing changes");
        masks.apply(8, 0, false);
        assert_eq!(masks.mask(8), 0);
        masks.apply(7, 0, false);
        masks.apply(7, 7, false);
        assert_eq!(masks.mask(7), 0);
        assert!(masks.is_empty());
        // Hash 0 is kept as 1: they share a slot, which can only add shards.
        masks.apply(0, 2, true);
        assert_eq!(masks.mask(0), 0b100);
        assert_eq!(masks.mask(1), 0b100);
    }

    #[test]
    fn tables_grow_shrink_and_free_what_they_replaced() {
        let masks = SharedMasks::new(2);
        for i in 0..10_000 {
            masks.apply(spread(i), 1, true);
        }
        let grown = masks.capacity();
        assert!(grown >= 10_000 * 4 / 3, "{grown}");
        assert_eq!(masks.retired(), 0, "every shard offline: freed at once");
        for i in 0..9_990 {
            masks.apply(spread(i), 1, false);
        }
        assert!(masks.capacity() < grown / 16, "{}", masks.capacity());
        for i in 9_990..10_000 {
            assert_eq!(masks.mask(spread(i)), 0b10);
        }
        for i in 0..9_990 {
            assert_eq!(masks.mask(spread(i)), 0);
        }
        assert_eq!(masks.len(), 10);
    }

    #[test]
    fn a_replaced_table_waits_for_every_shard_to_pass_a_turn() {
        let masks = SharedMasks::new(3);
        masks.quiescent(0);
        masks.quiescent(1);
        // Shard 2 offline (asleep): it holds nothing.
        for i in 0..1_000 {
            masks.apply(spread(i), 0, true);
        }
        let retired = masks.retired();
        assert!(
            retired > 0,
            "shards 0 and 1 are in a turn that began before the swaps"
        );
        masks.quiescent(0);
        masks.apply(spread(5_000), 0, true);
        assert_eq!(masks.retired(), retired, "shard 1 still in its old turn");
        masks.offline(1);
        masks.apply(spread(5_001), 0, true);
        assert_eq!(
            masks.retired(),
            0,
            "shard 0 saw the last epoch, 1 sleeps, 2 sleeps"
        );
    }

    /// Reader threads probing while a writer grows and shrinks the table: every filter that
    /// stays subscribed is always found, and nothing is read after it is freed (run under
    /// Miri or a sanitizer to check the latter; here, a wrong mask would show).
    #[test]
    fn readers_always_find_the_filters_that_stay() {
        const READERS: usize = 2;
        let masks = Arc::new(SharedMasks::new(READERS + 1));
        let writer_shard = READERS;
        for i in 0..100 {
            masks.apply(spread(i), writer_shard, true);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let started = Arc::new(AtomicUsize::new(0));
        let readers: Vec<_> = (0..READERS)
            .map(|shard| {
                let (masks, stop) = (Arc::clone(&masks), Arc::clone(&stop));
                let started = Arc::clone(&started);
                std::thread::spawn(move || {
                    let mut turns = 0u64;
                    started.fetch_add(1, Ordering::SeqCst);
                    while !stop.load(Ordering::Relaxed) {
                        masks.quiescent(shard);
                        for i in 0..100 {
                            assert_eq!(masks.mask(spread(i)), 1 << writer_shard, "filter {i}");
                        }
                        turns += 1;
                        if turns.is_multiple_of(7) {
                            masks.offline(shard);
                            std::thread::yield_now();
                        }
                    }
                    masks.offline(shard);
                    turns
                })
            })
            .collect();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while started.load(Ordering::SeqCst) < READERS && std::time::Instant::now() < deadline {
            std::thread::yield_now();
        }
        for round in 0..20u64 {
            for i in 1_000..6_000 {
                masks.apply(spread(i + round * 10_000), writer_shard, true);
            }
            for i in 1_000..6_000 {
                masks.apply(spread(i + round * 10_000), writer_shard, false);
            }
        }
        stop.store(true, Ordering::Relaxed);
        for reader in readers {
            reader.join().expect("reader");
        }
        assert_eq!(masks.len(), 100);
    }
}
