//! Per-shard counters: plain integers the shard bumps on its own thread, with no atomics and
//! no locks on the hot path. Once a second (the timer's sweep) the shard copies them into its
//! own slot of a `StatsBoard`, a seqlock of relaxed atomic stores only that shard writes, on a
//! cache line of its own; readers (the `$SYS` publisher on shard 0 and the metrics endpoint)
//! read every slot and sum them, retrying a slot caught mid-write. The list of counters is
//! written once, in `shard_stats!`, so the struct, the board's slots and the metrics' names
//! and help texts cannot drift apart.
//!
//! Beside the counters, each slot carries the shard's two `Latency` histograms (issue 11):
//! how long a message waited in the shard, from the loop turn that reaped it to the end of the
//! same turn's flush, where its send was submitted (one clock read per turn that wrote
//! messages); and how long a message forwarded from another shard took to get here, from the
//! publishing shard's turn (stamped on the forward, no clock read of its own) to its take from
//! the ring (one clock read per drain that took messages). Never a clock read per message;
//! a bucket is a shift and a leading-zero count.

use std::fmt;
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use crossbeam_utils::CachePadded;

/// How a value adds up over shards, and what Prometheus calls it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatKind {
    /// Only grows: summed over shards (a Prometheus counter).
    Counter,
    /// A level now: summed over shards (a gauge).
    Gauge,
    /// A high-water mark or a replicated level: the largest shard's (a gauge).
    GaugeMax,
}

/// One counter's name (the `ShardStats` field), kind and help text (its doc comment).
#[derive(Clone, Copy, Debug)]
pub struct StatInfo {
    pub name: &'static str,
    pub kind: StatKind,
    pub help: &'static str,
}

macro_rules! shard_stats {
    ($($(#[doc = $doc:literal])* $kind:ident $name:ident,)*) => {
        #[derive(Clone, Debug, Default, PartialEq, Eq)]
        pub struct ShardStats {
            $($(#[doc = $doc])* pub $name: u64,)*
        }

        /// Every counter of `ShardStats`, in field order.
        pub const STATS: &[StatInfo] = &[
            $(StatInfo {
                name: stringify!($name),
                kind: StatKind::$kind,
                help: concat!($($doc,)* ""),
            },)*
        ];

        /// The number of counters in `ShardStats`.
        pub const STAT_COUNT: usize = [$(stringify!($name),)*].len();

        impl ShardStats {
            /// The counters in `STATS` order.
            pub fn values(&self) -> [u64; STAT_COUNT] {
                [$(self.$name,)*]
            }

            pub fn from_values(values: &[u64; STAT_COUNT]) -> ShardStats {
                let mut values = values.iter().copied();
                ShardStats {
                    $($name: values.next().unwrap_or(0),)*
                }
            }
        }
    };
}

shard_stats! {

    /// Connections with an accepted CONNECT right now.
    Gauge connections,
    /// CONNECTs accepted (CONNACK 0).
    Counter connections_accepted,
    /// CONNACKs with a non-zero return code.
    Counter connections_refused,
    /// Connections closed, for any reason.
    Counter connections_closed,
    /// PUBLISH packets received from clients (wills included).
    Counter messages_in,
    /// PUBLISH packets written to outboxes.
    Counter messages_out,
    /// QoS 0 messages dropped because the subscriber's outbox was over `outbox_bytes_max` (or,
    /// with reads from it paused, not yet drained to half of it).
    Counter dropped_outbox_full,
    /// QoS 1/2 messages dropped because a session queue was at `offline_queue_max`.
    Counter dropped_queue_full,
    /// QoS 0 messages for a persistent session that was offline (not queued).
    Counter dropped_offline_qos0,
    /// Queued messages dropped because their MQTT 5 Message Expiry Interval ran out first.
    Counter dropped_expired,
    /// Packets not sent because they were larger than the MQTT 5 client's Maximum Packet Size
    /// [MQTT-3.1.2-24] (a QoS 1/2 message so dropped counts as delivered).
    Counter dropped_packet_too_large,
    /// Times the fixed-file table was full on accept (-ENFILE).
    Counter table_full_count,
    /// Connections closed at accept because their listener was at its `connections_max`.
    Counter listener_full_count,
    /// TLS connections closed for a failed handshake or a bad record (issue 9).
    Counter tls_errors,
    /// Multishot recvs ended because the provided-buffer ring was empty (-ENOBUFS).
    Counter recv_nobufs_count,
    /// Connections closed for a malformed packet or a protocol violation.
    Counter protocol_errors,
    /// Accepts that failed (other than a full table).
    Counter accept_errors,
    /// Connections closed because their first packet (the CONNECT) announced more than
    /// `limits.connect_packet_size_max`.
    Counter connect_too_large_count,
    /// Messages pushed to other shards (publishes, interest, retained, hand-offs).
    Counter mesh_pushes,
    /// Pushes that found the target's ring full and waited in the overflow queue.
    Counter mesh_overflowed,
    /// QoS 0 publishes dropped because the target's overflow was at `mesh_overflow_max`.
    Counter mesh_dropped_qos0,
    /// The most messages seen waiting in one target's overflow.
    GaugeMax mesh_overflow_high_water,
    /// Messages taken from other shards' rings.
    Counter mesh_received,
    /// Wake-ups sent to sleeping shards (at most one per target per turn).
    Counter mesh_wakes,
    /// Connections handed to their client's home shard, and received from other shards.
    Counter handoffs_out,
    /// Connections received from other shards (their client's home is here).
    Counter handoffs_in,
    /// Hand-offs that failed (the home shard's table was full, ...): the connection closed.
    Counter handoffs_failed,
    /// Sockets handed to this shard that landed in a slot the kernel could not announce
    /// (the sender read -EOVERFLOW): the slot stays taken until the shard stops.
    Counter handoff_slots_lost,
    /// Shared-group messages dropped after every shard with members had none left.
    Counter dropped_no_group_member,
    /// Times reading from a connection paused because its outbox passed `outbox_bytes_max`.
    Counter recv_paused_count,
    /// Times reading from a connection paused because its QoS 0 retained PUBLISH found a
    /// shard-to-shard overflow past `mesh_overflow_max`.
    Counter mesh_paused_count,
    /// Connections closed after `outbox_stall_secs` over `outbox_bytes_max` with nothing sent.
    Counter outbox_stall_disconnects,
    /// The most bytes seen waiting for one connection (outbox plus the send in flight), at the
    /// end of a loop turn: how far past `outbox_bytes_max` an outbox gets.
    GaugeMax outbox_bytes_high_water,
    /// Fresh receive-arena blocks allocated because bytes of the previous one were still held
    /// (a message in flight, queued or being routed); 0 while every block is reused in place.
    Counter arena_blocks_allocated,
    /// Connections closed for leaving more than `incoming_inflight_max` inbound QoS 1/2
    /// messages unacknowledged (QoS 2 awaiting PUBREL, PUBACKs held behind the mesh).
    Counter incoming_inflight_exceeded,
    /// Filters refused (SUBACK 0x80) because the client held `subscriptions_per_client_max`.
    Counter subscriptions_refused,
    /// Retained PUBLISHes to a new topic not stored: `retained_max` or `retained_bytes_max`.
    Counter retained_refused,
    /// CONNECTs refused because the broker held `sessions_max` persistent sessions.
    Counter sessions_refused,
    /// Persistent sessions removed after `persistent_session_expiry_secs` away.
    Counter sessions_expired,
    /// With the persistence log failed (disk full, I/O error): MQTT 5 QoS 1/2 PUBLISHes
    /// refused with 0x97, and acks left unsent for good because their record is not stored.
    Counter persistence_refused,
    /// Deliveries of a re-sent QoS 2 message (DUP=1) skipped for persistent sessions that
    /// already had it from before a crash (its flow's key, `exactly_once.rs`).
    Counter qos2_repeats_skipped,
    /// Acknowledgements (SUBACK, PUBACK, PUBREC) held until the other shards took what the
    /// packet they acknowledge sent them: interest changes, retained messages, and QoS 1/2
    /// forwards waiting over `mesh_overflow_max`.
    Counter acks_held,
    /// Bytes read from clients' sockets.
    Counter bytes_received,
    /// Bytes the kernel took from outboxes (sent to clients).
    Counter bytes_sent,
    /// The most connections this shard held at once.
    GaugeMax connections_high_water,
    /// Sessions held, connected or not (a persistent one stays after its client leaves).
    Gauge sessions,
    /// Subscriptions (filter, client) held by this shard's clients, `$share` ones included.
    Gauge subscriptions,
    /// Retained messages in this shard's replica (every shard holds the same set).
    GaugeMax retained_messages,
    /// Connection slots in use in this shard's fixed-file tables (of `ring_slots`).
    Gauge ring_slots_used,
    /// Connection slots in this shard's fixed-file tables (rings x `ring_files_max`).
    Gauge ring_slots,
    /// PUBLISHes from clients to `$SYS/...` topics, dropped: those are the broker's.
    Counter dropped_sys_publish,

}

/// Buckets of the latency histogram: bucket `i` counts waits of at most `1 µs << i` (1 µs to
/// about 0.5 s), and one more bucket takes everything longer.
pub const LATENCY_BUCKETS: usize = 20;
/// The upper bound of latency bucket `i`, in nanoseconds.
pub const fn latency_bound_ns(i: usize) -> u64 {
    1000 << i
}

/// A shard's receive-to-send waits: a log2 histogram with fixed buckets, plain integers the
/// shard bumps on its own thread. `record` takes a count, so a whole turn's messages are one
/// observation each for the price of one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Latency {
    /// Not cumulative: `buckets[i]` counts waits in (bound(i-1), bound(i)]; the last, longer.
    pub buckets: [u64; LATENCY_BUCKETS + 1],
    pub sum_ns: u64,
}

impl Latency {
    /// `count` messages waited `wait_ns` each.
    pub fn record(&mut self, wait_ns: u64, count: u64) {
        // Whole microseconds started past the first: 0 for <= 1 µs, then ceil(log2).
        let micros = wait_ns.saturating_sub(1) / 1000;
        let index = (u64::BITS - micros.leading_zeros()) as usize;
        self.buckets[index.min(LATENCY_BUCKETS)] += count;
        self.sum_ns = self.sum_ns.wrapping_add(wait_ns.wrapping_mul(count));
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// Adds another shard's histogram (the broker's, summed).
    pub fn add(&mut self, other: &Latency) {
        for (total, value) in self.buckets.iter_mut().zip(other.buckets) {
            *total = total.wrapping_add(value);
        }
        self.sum_ns = self.sum_ns.wrapping_add(other.sum_ns);
    }
}

/// A shard's two histograms.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShardLatency {
    /// From the loop turn that reaped a message (a client's recv, or the take from another
    /// shard's ring) to the submission of its send at the end of that turn.
    pub receive_to_send: Latency,
    /// A forwarded PUBLISH: from the loop turn on the publisher's shard that received it to
    /// its take from the mesh ring here, counted once per local subscriber it went to.
    pub mesh_transit: Latency,
}

/// A histogram's cells on the board: its buckets, then its sum.
const LATENCY_CELLS: usize = LATENCY_BUCKETS + 2;
/// The board's cells per slot: the counters, then the two histograms.
const SLOT_CELLS: usize = STAT_COUNT + 2 * LATENCY_CELLS;

impl Latency {
    fn cells(&self) -> impl Iterator<Item = u64> + '_ {
        self.buckets.iter().copied().chain([self.sum_ns])
    }

    fn from_cells(cells: &[u64]) -> Latency {
        let mut latency = Latency {
            sum_ns: cells[LATENCY_BUCKETS + 1],
            ..Latency::default()
        };
        latency
            .buckets
            .copy_from_slice(&cells[..LATENCY_BUCKETS + 1]);
        latency
    }
}

/// The process's clock origin, shared by the shards: a forward's stamp (`Forward::turn_us`)
/// is read on another shard's clock.
pub fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Each shard's last published counters, one cache-line-padded slot per shard.
pub struct StatsBoard {
    slots: Box<[CachePadded<StatsSlot>]>,
}

/// A seqlock: `sequence` is odd while the one writer (the slot's shard) stores the values.
struct StatsSlot {
    sequence: AtomicU64,
    values: [AtomicU64; SLOT_CELLS],
}

/// Reads of one slot retried while its shard was writing it, before taking what was read (a
/// write is a few hundred stores, once a second: a reader rarely needs one retry). Past
/// `READ_SPINS` the reader yields, for a writer preempted mid-write.
const READ_TRIES_MAX: usize = 10_000;
const READ_SPINS: usize = 64;

impl StatsBoard {
    pub fn new(shard_count: usize) -> StatsBoard {
        StatsBoard {
            slots: (0..shard_count)
                .map(|_| {
                    CachePadded::new(StatsSlot {
                        sequence: AtomicU64::new(0),
                        values: std::array::from_fn(|_| AtomicU64::new(0)),
                    })
                })
                .collect(),
        }
    }

    pub fn shard_count(&self) -> usize {
        self.slots.len()
    }

    /// Shard `index` stores its counters. Only that shard calls this for its slot: the
    /// sequence is bumped with plain stores, no read-modify-write.
    pub fn publish(&self, index: usize, stats: &ShardStats, latency: &ShardLatency) {
        let slot = &self.slots[index];
        let sequence = slot.sequence.load(Ordering::Relaxed);
        slot.sequence.store(sequence + 1, Ordering::Relaxed);
        fence(Ordering::Release);
        let values = stats
            .values()
            .into_iter()
            .chain(latency.receive_to_send.cells())
            .chain(latency.mesh_transit.cells());
        for (cell, value) in slot.values.iter().zip(values) {
            cell.store(value, Ordering::Relaxed);
        }
        slot.sequence.store(sequence + 2, Ordering::Release);
    }

    /// Shard `index`'s counters as of its last `publish`.
    pub fn read(&self, index: usize) -> ShardStats {
        let cells = self.read_cells(index);
        let mut values = [0u64; STAT_COUNT];
        values.copy_from_slice(&cells[..STAT_COUNT]);
        ShardStats::from_values(&values)
    }

    /// Shard `index`'s latency histograms as of its last `publish`.
    pub fn read_latency(&self, index: usize) -> ShardLatency {
        let cells = self.read_cells(index);
        let (receive_to_send, mesh_transit) = cells[STAT_COUNT..].split_at(LATENCY_CELLS);
        ShardLatency {
            receive_to_send: Latency::from_cells(receive_to_send),
            mesh_transit: Latency::from_cells(mesh_transit),
        }
    }

    /// Every shard's latency histograms, in shard order.
    pub fn read_all_latency(&self) -> Vec<ShardLatency> {
        (0..self.slots.len())
            .map(|index| self.read_latency(index))
            .collect()
    }

    fn read_cells(&self, index: usize) -> [u64; SLOT_CELLS] {
        let slot = &self.slots[index];
        let mut values = [0u64; SLOT_CELLS];
        for tries in 0..READ_TRIES_MAX {
            let before = slot.sequence.load(Ordering::Acquire);
            for (value, cell) in values.iter_mut().zip(&slot.values) {
                *value = cell.load(Ordering::Relaxed);
            }
            fence(Ordering::Acquire);
            let after = slot.sequence.load(Ordering::Relaxed);
            if before == after && before.is_multiple_of(2) {
                break;
            }
            if tries < READ_SPINS {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        values
    }

    /// Every shard's counters, in shard order.
    pub fn read_all(&self) -> Vec<ShardStats> {
        (0..self.slots.len())
            .map(|index| self.read(index))
            .collect()
    }
}

/// The broker's totals: counters and gauges summed over shards, high-water marks and
/// replicated levels (`StatKind::GaugeMax`) the largest shard's.
pub fn total(shards: &[ShardStats]) -> ShardStats {
    let mut sum = [0u64; STAT_COUNT];
    for shard in shards {
        for ((total, value), info) in sum.iter_mut().zip(shard.values()).zip(STATS) {
            *total = match info.kind {
                StatKind::Counter | StatKind::Gauge => total.wrapping_add(value),
                StatKind::GaugeMax => (*total).max(value),
            };
        }
    }
    ShardStats::from_values(&sum)
}

impl fmt::Display for ShardStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "connections {} (accepted {}, refused {}, closed {}), messages in {} out {}, \
             dropped: outbox full {}, queue full {}, offline QoS 0 {}, expired {}, too large {}; table full {}, \
             recv ENOBUFS {}, protocol errors {}, accept errors {}, CONNECT too large {}; \
             mesh: pushed {} (overflowed {}, most waiting {}, QoS 0 dropped {}), received {}, \
             wakes {}; hand-offs out {} in {} failed {} (slots lost {}); shared group gone {}; reads paused {} (mesh {}), \
             stalled outboxes closed {}, outbox high water {} B; arena blocks allocated {}; \
             limits: incoming in flight {}, subscriptions {}, retained {}, sessions {} \
             (expired {}); acks held {}; bytes in {} out {}; $SYS publishes dropped {}",
            self.connections,
            self.connections_accepted,
            self.connections_refused,
            self.connections_closed,
            self.messages_in,
            self.messages_out,
            self.dropped_outbox_full,
            self.dropped_queue_full,
            self.dropped_offline_qos0,
            self.dropped_expired,
            self.dropped_packet_too_large,
            self.table_full_count,
            self.recv_nobufs_count,
            self.protocol_errors,
            self.accept_errors,
            self.connect_too_large_count,
            self.mesh_pushes,
            self.mesh_overflowed,
            self.mesh_overflow_high_water,
            self.mesh_dropped_qos0,
            self.mesh_received,
            self.mesh_wakes,
            self.handoffs_out,
            self.handoffs_in,
            self.handoffs_failed,
            self.handoff_slots_lost,
            self.dropped_no_group_member,
            self.recv_paused_count,
            self.mesh_paused_count,
            self.outbox_stall_disconnects,
            self.outbox_bytes_high_water,
            self.arena_blocks_allocated,
            self.incoming_inflight_exceeded,
            self.subscriptions_refused,
            self.retained_refused,
            self.sessions_refused,
            self.sessions_expired,
            self.acks_held,
            self.bytes_received,
            self.bytes_sent,
            self.dropped_sys_publish,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_in_field_order() {
        let stats = ShardStats {
            connections: 3,
            messages_in: 7,
            dropped_sys_publish: 9,
            ..ShardStats::default()
        };
        assert_eq!(ShardStats::from_values(&stats.values()), stats);
        assert_eq!(STATS.len(), STAT_COUNT);
        assert_eq!(STATS[0].name, "connections");
        assert!(
            STATS.iter().all(|info| !info.help.is_empty()),
            "every counter has help"
        );
    }

    #[test]
    fn board_sums_counters_and_takes_the_largest_high_water() {
        let board = StatsBoard::new(2);
        let a = ShardStats {
            messages_in: 5,
            connections: 2,
            retained_messages: 4,
            outbox_bytes_high_water: 100,
            ..ShardStats::default()
        };
        let b = ShardStats {
            messages_in: 7,
            connections: 1,
            retained_messages: 4,
            outbox_bytes_high_water: 300,
            ..ShardStats::default()
        };
        board.publish(0, &a, &ShardLatency::default());
        board.publish(1, &b, &ShardLatency::default());
        board.publish(1, &b, &ShardLatency::default());
        assert_eq!(board.read(0), a);
        let sum = total(&board.read_all());
        assert_eq!(sum.messages_in, 12);
        assert_eq!(sum.connections, 3);
        assert_eq!(
            sum.retained_messages, 4,
            "a replica is not counted per shard"
        );
        assert_eq!(sum.outbox_bytes_high_water, 300);
    }

    #[test]
    fn latency_buckets_are_log2_microseconds() {
        let mut latency = Latency::default();
        latency.record(0, 1);
        latency.record(1000, 1);
        latency.record(1001, 2);
        latency.record(4000, 1);
        latency.record(4001, 1);
        latency.record(u64::MAX / 2, 1);
        assert_eq!(&latency.buckets[..4], &[2, 2, 1, 1]);
        assert_eq!(latency.buckets[LATENCY_BUCKETS], 1, "past the last bound");
        assert_eq!(latency.count(), 7);
        for i in 0..LATENCY_BUCKETS {
            let mut one = Latency::default();
            one.record(latency_bound_ns(i), 1);
            assert_eq!(one.buckets[i], 1, "a bound falls in its own bucket");
        }
        let board = StatsBoard::new(1);
        let mut both = ShardLatency::default();
        both.receive_to_send.record(1500, 3);
        both.mesh_transit.record(9_000_000, 2);
        board.publish(0, &ShardStats::default(), &both);
        assert_eq!(
            board.read_latency(0),
            both,
            "each histogram in its own cells"
        );
        assert_eq!(board.read_latency(0).receive_to_send.sum_ns, 4500);
        assert_eq!(board.read_latency(0).mesh_transit.buckets[14], 2);
    }

    #[test]
    fn a_reader_never_sees_a_torn_slot() {
        let board = std::sync::Arc::new(StatsBoard::new(1));
        let writer = {
            let board = board.clone();
            std::thread::spawn(move || {
                // Back to back, far faster than a shard's once a second, yet with room for a
                // reader between two: a reader overlapping every one of 20,000 publishes in a
                // row (a busy 2-core machine did it) runs out of tries by design.
                for n in 0..20_000u64 {
                    let stats = ShardStats::from_values(&[n; STAT_COUNT]);
                    board.publish(0, &stats, &ShardLatency::default());
                    std::thread::yield_now();
                }
            })
        };
        while !writer.is_finished() {
            let values = board.read(0).values();
            assert!(values.iter().all(|&v| v == values[0]), "torn read");
        }
        writer.join().unwrap();
    }
}
