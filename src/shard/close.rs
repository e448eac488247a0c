//! Closing a connection: why it ends (`CloseReason`, which decides its will), the session
//! detached, the socket shut down (after a flush, for a refusing CONNACK), and the slot
//! released once the kernel holds nothing of it (`Conn::quiescent`).

use bytes::BytesMut;

use crate::ring::{Op, Token};

use super::conn::{self, ring_of, slot_of, ConnState};
use super::Shard;

/// Why a connection ends; decides whether its will is published.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum CloseReason {
    /// The client sent DISCONNECT: the will is discarded [MQTT-3.14.4-3].
    Disconnect,
    /// The peer closed, reset, or an I/O error.
    Io,
    /// Malformed packet or protocol violation.
    Protocol,
    KeepaliveTimeout,
    /// Over `outbox_bytes_max` for `outbox_stall_secs` with nothing sent: the client reads
    /// nothing.
    OutboxStalled,
    /// Another connection took over the client id [MQTT-3.1.4-2].
    TakenOver,
    /// CONNACK refused the client; nothing to publish.
    Refused,
    /// No CONNECT in time.
    ConnectTimeout,
    /// Moving the connection to its client's home shard failed.
    HandOffFailed,
}

impl CloseReason {
    pub(super) fn publishes_will(self) -> bool {
        matches!(
            self,
            CloseReason::Io
                | CloseReason::Protocol
                | CloseReason::KeepaliveTimeout
                | CloseReason::OutboxStalled
                | CloseReason::TakenOver
        )
    }
}

impl Shard {
    /// A shutdown or cancel completed; its effect shows up as the recv's and send's last
    /// completions, but the slot is held until it is done (see `Conn::control_in_flight`).
    pub(super) fn on_control(&mut self, token: Token) {
        let Some(conn) = self.conns.get_mut(token.slot, token.generation) else {
            return;
        };
        conn.control_in_flight = conn.control_in_flight.saturating_sub(1);
        self.maybe_release(token.slot, token.generation);
    }

    /// Starts closing a connection: detaches its session (destroyed if clean), publishes its
    /// will when the reason calls for it, then shuts the socket down (after flushing, for a
    /// refusing CONNACK). The slot is freed once the kernel holds nothing of it.
    pub(super) fn close(&mut self, slot: u32, generation: u32, reason: CloseReason) {
        let Some(conn) = self.conns.get_mut(slot, generation) else {
            return;
        };
        if conn.state == ConnState::Closing {
            return;
        }
        if conn.state == ConnState::Connected {
            self.stats.connections -= 1;
            self.peers.release();
        }
        if reason == CloseReason::Protocol {
            self.stats.protocol_errors += 1;
        }
        conn.state = ConnState::Closing;
        if let Some(buffers) = conn.buffers.as_mut() {
            buffers.inbox = BytesMut::new();
        }
        let will = conn.will.take();
        let session = std::mem::replace(&mut conn.session, conn::NO_SESSION);
        let flush_first = reason == CloseReason::Refused && conn.pending_bytes() > 0;
        if flush_first {
            conn.close_after_flush = true;
            if !conn.dirty {
                conn.dirty = true;
                self.dirty.push((slot, generation));
            }
        } else {
            self.shutdown(slot, generation);
        }
        if session != conn::NO_SESSION {
            self.detach_session(session);
        }
        if reason.publishes_will() {
            if let Some(will) = will {
                self.publish_will(*will);
            }
        }
        self.maybe_release(slot, generation);
    }

    pub(super) fn shutdown(&mut self, slot: u32, generation: u32) {
        let Some(conn) = self.conns.get_mut(slot, generation) else {
            return;
        };
        if conn.shutdown_sent {
            return;
        }
        conn.shutdown_sent = true;
        if let Some(buffers) = conn.buffers.as_mut() {
            buffers.outbox = BytesMut::new();
        }
        // Shutdown ends the multishot recv (and a send stuck on a full socket); the cancel
        // covers a recv the shutdown does not wake. Closing the slot alone would not end it.
        let ring = &mut self.rings[ring_of(slot)];
        ring.shutdown(slot_of(slot), Token::new(Op::Shutdown, slot, generation));
        conn.control_in_flight += 1;
        if conn.recv_armed {
            ring.cancel(
                Token::new(Op::Recv, slot, generation),
                Token::new(Op::Cancel, slot, generation),
            );
            conn.control_in_flight += 1;
        }
    }

    /// Frees the slot once nothing of the connection is in flight: removes the entry (bumping
    /// the generation) and closes the fixed-file slot, which the kernel may then reuse.
    pub(super) fn maybe_release(&mut self, slot: u32, generation: u32) {
        let Some(conn) = self.conns.get_mut(slot, generation) else {
            return;
        };
        if !conn.quiescent() {
            return;
        }
        if let Some(mut conn) = self.conns.remove(slot, generation) {
            if let Some(buffers) = conn.buffers.as_mut() {
                buffers.sending.clear();
            }
            conn.trim(&mut self.pools);
        }
        self.stats.connections_closed += 1;
        self.rings[ring_of(slot)].close(slot_of(slot), Token::new(Op::Close, slot, generation));
    }
}
