//! What a shard knows of the other shards: how to wake them, whether they may be asleep, and
//! their rings' descriptors (the targets of a connection hand-off). Plus the pure
//! bookkeeping of hand-offs in flight, which pairs a descriptor and its bytes whichever comes
//! first.
//!
//! Wake-ups follow the mesh's rule: at most one per target per turn, and only to a shard that
//! may be sleeping. A shard sets its `sleeping` flag before it blocks in the kernel and checks
//! its inbound rings once more after that (both sequentially consistent); a producer pushes,
//! then reads the flag. Either the sleeper sees the message or the producer sees the flag, so a
//! wake-up is never lost and an awake shard costs the producer no syscall.

use std::collections::HashMap;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam_utils::CachePadded;

use crate::mesh::HandOff;

use super::Waker;

/// Shared by all shards of a broker, built before they start.
pub struct Peers {
    wakers: Vec<Arc<Waker>>,
    /// Per shard, on a cache line of its own: a shard writes its flags twice per sleep, and
    /// with every shard's flags on one line each of those writes would take the line from
    /// every other shard that reads a flag on its turn.
    flags: Box<[CachePadded<SleepFlags>]>,
    /// Index = shard * rings_per_shard + ring.
    ring_fds: Vec<AtomicI32>,
    rings_per_shard: usize,
    /// Connected clients in the whole broker, against `limits.connections_max`.
    connections: AtomicU64,
    /// Persistent sessions in the whole broker, against `limits.sessions_max`.
    sessions: AtomicU64,
    /// Index = source * shards + target: the messages from source that target has taken
    /// and made durable (its log's fdatasync covered what they caused), with persistence on
    /// and `sync = "ack"` (`durable/`).
    durable_taken: Vec<AtomicUsize>,
    shard_count: usize,
}

#[derive(Default)]
struct SleepFlags {
    sleeping: AtomicBool,
    /// The shard has messages waiting in its overflow for a full ring: a consumer that drains
    /// from it wakes it so it can push them on.
    backlogged: AtomicBool,
}

impl Peers {
    pub fn new(wakers: Vec<Arc<Waker>>, rings_per_shard: usize) -> Arc<Peers> {
        let rings_per_shard = rings_per_shard.max(1);
        let count = wakers.len();
        Arc::new(Peers {
            wakers,
            flags: (0..count).map(|_| CachePadded::default()).collect(),
            ring_fds: (0..count * rings_per_shard)
                .map(|_| AtomicI32::new(-1))
                .collect(),
            rings_per_shard,
            connections: AtomicU64::new(0),
            sessions: AtomicU64::new(0),
            durable_taken: (0..count * count).map(|_| AtomicUsize::new(0)).collect(),
            shard_count: count,
        })
    }

    /// Messages from `source` that `target` took and made durable (wrapping).
    pub fn durable_taken(&self, source: usize, target: usize) -> usize {
        self.durable_taken[source * self.shard_count + target].load(Ordering::Acquire)
    }

    /// `target` made durable what it took from `source` up to `taken`. True when it moved.
    pub fn set_durable_taken(&self, source: usize, target: usize, taken: usize) -> bool {
        let cell = &self.durable_taken[source * self.shard_count + target];
        cell.swap(taken, Ordering::Release) != taken
    }

    /// Counts one more connected client unless the broker already holds `connections_max`.
    /// One atomic add per CONNECT; exact even when shards admit at the same time.
    pub fn admit(&self, connections_max: u32) -> bool {
        if self.connections.fetch_add(1, Ordering::Relaxed) >= u64::from(connections_max) {
            self.connections.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// A client admitted by `admit` is gone.
    pub fn release(&self) {
        self.connections.fetch_sub(1, Ordering::Relaxed);
    }

    /// Counts one more persistent session unless the broker already holds `sessions_max`;
    /// exact across shards, like `admit`.
    pub fn admit_session(&self, sessions_max: u32) -> bool {
        if self.sessions.fetch_add(1, Ordering::Relaxed) >= u64::from(sessions_max) {
            self.sessions.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// A persistent session admitted by `admit_session` ended (expired, or made clean).
    pub fn release_session(&self) {
        self.sessions.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn set_ring_fd(&self, shard: usize, ring: usize, fd: RawFd) {
        self.ring_fds[shard * self.rings_per_shard + ring].store(fd, Ordering::Release);
    }

    /// Ring `ring` of `shard`, once it is built.
    pub fn ring_fd(&self, shard: usize, ring: usize) -> Option<RawFd> {
        if ring >= self.rings_per_shard {
            return None;
        }
        let fd = self
            .ring_fds
            .get(shard * self.rings_per_shard + ring)?
            .load(Ordering::Acquire);
        (fd >= 0).then_some(fd)
    }

    pub fn rings_per_shard(&self) -> usize {
        self.rings_per_shard
    }

    /// Set before blocking in the kernel (then check the inbound rings once more), cleared after.
    pub fn set_sleeping(&self, shard: usize, sleeping: bool, backlogged: bool) {
        let flags = &self.flags[shard];
        flags.backlogged.store(backlogged, Ordering::Relaxed);
        flags.sleeping.store(sleeping, Ordering::SeqCst);
    }

    pub fn is_sleeping(&self, shard: usize) -> bool {
        self.flags[shard].sleeping.load(Ordering::SeqCst)
    }

    /// Asleep with messages waiting for room in our rings.
    pub fn is_backlogged_sleeper(&self, shard: usize) -> bool {
        self.is_sleeping(shard) && self.flags[shard].backlogged.load(Ordering::Relaxed)
    }

    /// The shards in `targets` (bit per shard) that may be sleeping: the ones to wake.
    pub fn sleepers(&self, targets: u64) -> u64 {
        sleeping_targets(targets, |shard| self.is_sleeping(shard))
    }

    /// Wakes `shard` through its eventfd (a syscall; the ring message in `Shard::wake` is
    /// preferred, this is for a shard whose ring is not known).
    pub fn wake_by_eventfd(&self, shard: usize) {
        self.wakers[shard].wake();
    }
}

/// The targets worth a wake-up: those that may be asleep. An awake shard drains its rings on
/// its next turn anyway; waking it would be a wasted syscall.
pub fn sleeping_targets(targets: u64, is_sleeping: impl Fn(usize) -> bool) -> u64 {
    let mut to_wake = 0;
    for_each_bit(targets, |shard| {
        if is_sleeping(shard) {
            to_wake |= 1u64 << shard;
        }
    });
    to_wake
}

pub fn for_each_bit(mut bits: u64, mut f: impl FnMut(usize)) {
    while bits != 0 {
        let bit = bits.trailing_zeros() as usize;
        bits &= bits - 1;
        f(bit);
    }
}

/// Hand-offs arriving on the home shard. The descriptor (a ring completion carrying the slot
/// the kernel allocated) and the bytes (a mesh message) travel separately and may arrive in
/// either order; whichever comes second completes the pair.
#[derive(Default)]
pub struct HandOffsIn {
    slots: HashMap<u64, u32>,
    messages: HashMap<u64, HandOff>,
}

impl HandOffsIn {
    /// The descriptor of hand-off `id` landed in `slot` (a connection id: ring and slot): the
    /// pair if its bytes are here.
    pub fn slot_arrived(&mut self, id: u64, slot: u32) -> Option<(u32, HandOff)> {
        match self.messages.remove(&id) {
            Some(message) => Some((slot, message)),
            None => {
                self.slots.insert(id, slot);
                None
            }
        }
    }

    /// The bytes of a hand-off arrived: the pair if its descriptor is here.
    pub fn message_arrived(&mut self, message: HandOff) -> Option<(u32, HandOff)> {
        match self.slots.remove(&message.handoff_id) {
            Some(slot) => Some((slot, message)),
            None => {
                self.messages.insert(message.handoff_id, message);
                None
            }
        }
    }

    /// Hand-offs waiting for their other half.
    pub fn pending(&self) -> usize {
        self.slots.len() + self.messages.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn hand_off(id: u64) -> HandOff {
        HandOff {
            source_shard: 1,
            listener: 0,
            tls: Default::default(),
            ws: Default::default(),
            handoff_id: id,
            ring_slot_hint: None,
            bytes_read: Bytes::from_static(b"\x10\x00"),
        }
    }

    #[test]
    fn hand_off_pairs_in_either_order() {
        let mut pending = HandOffsIn::default();
        assert!(pending.slot_arrived(7, 42).is_none());
        assert!(pending.message_arrived(hand_off(8)).is_none());
        assert_eq!(pending.pending(), 2);
        let (slot, message) = pending
            .message_arrived(hand_off(7))
            .expect("slot was first");
        assert_eq!((slot, message.handoff_id), (42, 7));
        let (slot, message) = pending.slot_arrived(8, 3).expect("bytes were first");
        assert_eq!((slot, message.handoff_id), (3, 8));
        assert_eq!(pending.pending(), 0);
    }

    #[test]
    fn only_sleeping_targets_are_woken() {
        let asleep = [false, true, true, false];
        let targets = 0b1011;
        assert_eq!(sleeping_targets(targets, |s| asleep[s]), 0b0010);
        assert_eq!(sleeping_targets(0, |_| true), 0);
        let mut seen = Vec::new();
        for_each_bit(0b1010_0001, |bit| seen.push(bit));
        assert_eq!(seen, vec![0, 5, 7]);
    }

    #[test]
    fn only_sleepers_are_named_for_a_wake() {
        let wakers: Vec<_> = (0..3).map(|_| Waker::new().expect("eventfd")).collect();
        let peers = Peers::new(wakers, 2);
        assert_eq!(peers.sleepers(0b111), 0, "nobody sleeps");
        peers.set_sleeping(2, true, false);
        assert_eq!(peers.sleepers(0b110), 0b100);
        peers.wake_by_eventfd(2);
        assert!(!peers.is_backlogged_sleeper(2));
        peers.set_sleeping(2, true, true);
        assert!(peers.is_backlogged_sleeper(2));
        peers.set_sleeping(2, false, false);
        assert_eq!(peers.sleepers(0b111), 0);
        assert_eq!(peers.ring_fd(1, 1), None);
        assert!(peers.admit(2) && peers.admit(2));
        assert!(!peers.admit(2), "the third is over the limit");
        peers.release();
        assert!(peers.admit(2), "a place freed up");
        peers.set_ring_fd(1, 1, 9);
        assert_eq!(peers.ring_fd(1, 1), Some(9));
        assert_eq!(peers.ring_fd(1, 0), None);
        assert_eq!(peers.ring_fd(1, 2), None, "past the rings of a shard");
    }
}
