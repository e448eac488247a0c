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
    /// QoS 0 messages dropped because the subscriber's outbox was over `outbox_bytes_max`.
    pub dropped_outbox_full: u64,
    /// QoS 1/2 messages dropped because a session queue was at `offline_queue_max`.
    pub dropped_queue_full: u64,
    /// QoS 0 messages for a persistent session that was offline (not queued).
    pub dropped_offline_qos0: u64,
    /// Times the fixed-file table was full on accept (-ENFILE).
    pub table_full_count: u64,
    /// Multishot recvs ended because the provided-buffer ring was empty (-ENOBUFS).
    pub recv_nobufs_count: u64,
    /// Connections closed for a malformed packet or a protocol violation.
    pub protocol_errors: u64,
    pub accept_errors: u64,
}

impl fmt::Display for ShardStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "connections {} (accepted {}, refused {}, closed {}), messages in {} out {}, \
             dropped: outbox full {}, queue full {}, offline QoS 0 {}; table full {}, \
             recv ENOBUFS {}, protocol errors {}, accept errors {}",
            self.connections,
            self.connections_accepted,
            self.connections_refused,
            self.connections_closed,
            self.messages_in,
            self.messages_out,
            self.dropped_outbox_full,
            self.dropped_queue_full,
            self.dropped_offline_qos0,
            self.table_full_count,
            self.recv_nobufs_count,
            self.protocol_errors,
            self.accept_errors,
        )
    }
}
