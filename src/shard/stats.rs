//! Per-shard counters: plain integers the shard bumps on its own thread, returned when the
//! shard stops (and printed), and the struct a metrics endpoint will read.

use std::fmt;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShardStats {
    /// Connections with an accepted CONNECT right now.
    pub connections: u64,
    pub connections_accepted: u64,
    /// CONNACKs with a non-zero return code.
    pub connections_refused: u64,
    pub connections_closed: u64,
    /// PUBLISH packets received from clients (wills included).
    pub messages_in: u64,
    /// PUBLISH packets written to outboxes.
    pub messages_out: u64,
    /// QoS 0 messages dropped because the subscriber's outbox was over `outbox_bytes_max` (or,
    /// with reads from it paused, not yet drained to half of it).
    pub dropped_outbox_full: u64,
    /// QoS 1/2 messages dropped because a session queue was at `offline_queue_max`.
    pub dropped_queue_full: u64,
    /// QoS 0 messages for a persistent session that was offline (not queued).
    pub dropped_offline_qos0: u64,
    /// Queued messages dropped because their MQTT 5 Message Expiry Interval ran out first.
    pub dropped_expired: u64,
    /// Packets not sent because they were larger than the MQTT 5 client's Maximum Packet Size
    /// [MQTT-3.1.2-24] (a QoS 1/2 message so dropped counts as delivered).
    pub dropped_packet_too_large: u64,
    /// Times the fixed-file table was full on accept (-ENFILE).
    pub table_full_count: u64,
    /// Connections closed at accept because their listener was at its `connections_max`.
    pub listener_full_count: u64,
    /// TLS connections closed for a failed handshake or a bad record (issue 9).
    pub tls_errors: u64,
    /// Multishot recvs ended because the provided-buffer ring was empty (-ENOBUFS).
    pub recv_nobufs_count: u64,
    /// Connections closed for a malformed packet or a protocol violation.
    pub protocol_errors: u64,
    pub accept_errors: u64,
    /// Connections closed because their first packet (the CONNECT) announced more than
    /// `limits.connect_packet_size_max`.
    pub connect_too_large_count: u64,
    /// Messages pushed to other shards (publishes, interest, retained, hand-offs).
    pub mesh_pushes: u64,
    /// Pushes that found the target's ring full and waited in the overflow queue.
    pub mesh_overflowed: u64,
    /// QoS 0 publishes dropped because the target's overflow was at `mesh_overflow_max`.
    pub mesh_dropped_qos0: u64,
    /// The most messages seen waiting in one target's overflow.
    pub mesh_overflow_high_water: u64,
    /// Messages taken from other shards' rings.
    pub mesh_received: u64,
    /// Wake-ups sent to sleeping shards (at most one per target per turn).
    pub mesh_wakes: u64,
    /// Connections handed to their client's home shard, and received from other shards.
    pub handoffs_out: u64,
    pub handoffs_in: u64,
    /// Hand-offs that failed (the home shard's table was full, ...): the connection closed.
    pub handoffs_failed: u64,
    /// Sockets handed to this shard that landed in a slot the kernel could not announce
    /// (the sender read -EOVERFLOW): the slot stays taken until the shard stops.
    pub handoff_slots_lost: u64,
    /// Shared-group messages dropped after every shard with members had none left.
    pub dropped_no_group_member: u64,
    /// Times reading from a connection paused because its outbox passed `outbox_bytes_max`.
    pub recv_paused_count: u64,
    /// Connections closed after `outbox_stall_secs` over `outbox_bytes_max` with nothing sent.
    pub outbox_stall_disconnects: u64,
    /// The most bytes seen waiting for one connection (outbox plus the send in flight), at the
    /// end of a loop turn: how far past `outbox_bytes_max` an outbox gets.
    pub outbox_bytes_high_water: u64,
    /// Fresh receive-arena blocks allocated because bytes of the previous one were still held
    /// (a message in flight, queued or being routed); 0 while every block is reused in place.
    pub arena_blocks_allocated: u64,
    /// Connections closed for leaving more than `incoming_inflight_max` inbound QoS 1/2
    /// messages unacknowledged (QoS 2 awaiting PUBREL, PUBACKs held behind the mesh).
    pub incoming_inflight_exceeded: u64,
    /// Filters refused (SUBACK 0x80) because the client held `subscriptions_per_client_max`.
    pub subscriptions_refused: u64,
    /// Retained PUBLISHes to a new topic not stored: `retained_max` or `retained_bytes_max`.
    pub retained_refused: u64,
    /// CONNECTs refused because the broker held `sessions_max` persistent sessions.
    pub sessions_refused: u64,
    /// Persistent sessions removed after `persistent_session_expiry_secs` away.
    pub sessions_expired: u64,
    /// Acknowledgements (SUBACK, PUBACK, PUBREC) held until the other shards took what the
    /// packet they acknowledge sent them: interest changes, retained messages, and QoS 1/2
    /// forwards waiting over `mesh_overflow_max`.
    pub acks_held: u64,
}

impl fmt::Display for ShardStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "connections {} (accepted {}, refused {}, closed {}), messages in {} out {}, \
             dropped: outbox full {}, queue full {}, offline QoS 0 {}, expired {}, too large {}; table full {}, \
             recv ENOBUFS {}, protocol errors {}, accept errors {}, CONNECT too large {}; \
             mesh: pushed {} (overflowed {}, most waiting {}, QoS 0 dropped {}), received {}, \
             wakes {}; hand-offs out {} in {} failed {} (slots lost {}); shared group gone {}; reads paused {}, \
             stalled outboxes closed {}, outbox high water {} B; arena blocks allocated {}; \
             limits: incoming in flight {}, subscriptions {}, retained {}, sessions {} \
             (expired {}); acks held {}",
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
            self.outbox_stall_disconnects,
            self.outbox_bytes_high_water,
            self.arena_blocks_allocated,
            self.incoming_inflight_exceeded,
            self.subscriptions_refused,
            self.retained_refused,
            self.sessions_refused,
            self.sessions_expired,
            self.acks_held,
        )
    }
}
