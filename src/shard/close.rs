//! Closing a connection: why it ends (`CloseReason`, which decides its will), the session
//! detached, the socket shut down (after a flush, for a refusing CONNACK), and the slot
//! released once the kernel holds nothing of it (`Conn::quiescent`).

use bytes::BytesMut;

use crate::protocol::{Disconnect, Packet, ReasonCode};
use crate::ring::{Op, Token};

use super::conn::{self, ring_of, slot_of, ConnState};
use super::Shard;

/// Why a connection ends; decides whether its will is published.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum CloseReason {
    /// The client sent DISCONNECT: the will is discarded [MQTT-3.14.4-3].
    Disconnect,
    /// MQTT 5 DISCONNECT with a reason other than 0x00 (0x04, or an error): the will is
    /// published [MQTT-3.1.2-8].
    DisconnectWithWill,
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
    /// A WebSocket close frame, a broken frame rule or a refused upgrade: the answer (close
    /// frame or HTTP refusal) is flushed first. Without an MQTT DISCONNECT, so a will goes.
    WebSocket,
}

impl CloseReason {
    /// The reason an MQTT 5 client is told in the server's DISCONNECT before the close
    /// (spec 3.14.2.1); `None`: no DISCONNECT (the client left, or never connected, or reads
    /// nothing).
    fn disconnect_code(self) -> Option<ReasonCode> {
        match self {
            CloseReason::Protocol => Some(ReasonCode::ProtocolError),
            CloseReason::KeepaliveTimeout => Some(ReasonCode::KeepAliveTimeout),
            CloseReason::TakenOver => Some(ReasonCode::SessionTakenOver),
            CloseReason::Disconnect
            | CloseReason::DisconnectWithWill
            | CloseReason::Io
            | CloseReason::OutboxStalled
            | CloseReason::Refused
            | CloseReason::ConnectTimeout
            | CloseReason::HandOffFailed
            | CloseReason::WebSocket => None,
        }
    }

    pub(super) fn publishes_will(self) -> bool {
        matches!(
            self,
            CloseReason::Io
                | CloseReason::DisconnectWithWill
                | CloseReason::Protocol
                | CloseReason::KeepaliveTimeout
                | CloseReason::OutboxStalled
                | CloseReason::TakenOver
                | CloseReason::WebSocket
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
        self.close_with(slot, generation, reason, reason.disconnect_code());
    }

    /// `close`, telling an MQTT 5 client `code` in a DISCONNECT first [MQTT-4.13.1-1] (none
    /// for `None` or a 3.1.x client, which has no server DISCONNECT).
    pub(super) fn close_with(
        &mut self,
        slot: u32,
        generation: u32,
        reason: CloseReason,
        code: Option<ReasonCode>,
    ) {
        let Some(conn) = self.conns.get_mut(slot, generation) else {
            return;
        };
        if conn.state == ConnState::Closing {
            return;
        }
        let tell = code.filter(|_| conn.state == ConnState::Connected && conn.version.is_v5());
        if let Some(code) = tell {
            // After what the outbox holds (the CONNACK may still be in it: a CONNECT and a bad
            // packet in one read); the flush is bounded by `close_overdue`.
            // A DISCONNECT may carry its Reason String even to a client that asked for no
            // problem information [MQTT-3.1.2-29].
            let disconnect = Disconnect {
                code,
                properties: super::problem::reason_properties(code),
            };
            self.write(slot, generation, &Packet::Disconnect(disconnect));
        }
        self.log_close(slot, generation, reason, code);
        let now_ms = self.now_ms;
        let Some(conn) = self.conns.get_mut(slot, generation) else {
            return;
        };
        if conn.state == ConnState::Connected {
            self.stats.connections -= 1;
            self.peers.release();
        }
        if reason == CloseReason::Protocol {
            self.stats.protocol_errors += 1;
        }
        conn.state = ConnState::Closing;
        conn.set_linger(tell.is_some());
        if let Some(buffers) = conn.buffers.as_mut() {
            buffers.inbox = BytesMut::new();
        }
        let will = conn.take_will();
        let session = std::mem::replace(&mut conn.session, conn::NO_SESSION);
        // A WebSocket's answer is owed even when the outbox is empty (`transport.rs`).
        let flush_first = reason == CloseReason::WebSocket
            || ((reason == CloseReason::Refused || tell.is_some()) && conn.pending_bytes() > 0);
        if flush_first {
            // The timer shuts it down if the flush takes longer (`close_overdue`).
            conn.last_packet_ms = now_ms;
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
                self.publish_or_delay_will(session, will);
            }
        }
        self.maybe_release(slot, generation);
    }

    /// A connection closing after a flush whose flush has not finished in a tick or two (the
    /// client reads nothing): shut down without it.
    /// A lingering one whose client has not closed within `LINGER_MS`: ended too.
    pub(super) fn close_overdue(&mut self, slot: u32, generation: u32) {
        let Some(conn) = self.conns.get_mut(slot, generation) else {
            return;
        };
        if conn.close_after_flush && !conn.shutdown_sent {
            // It reads nothing: no linger either.
            conn.set_linger(false);
            self.shutdown(slot, generation);
        } else {
            self.end_linger(slot, generation);
        }
        self.maybe_release(slot, generation);
    }

    /// Shuts the socket down, ending the recv and any send. After a server DISCONNECT
    /// (`ConnV5::linger`) only the write side: the client sees the DISCONNECT then the end of
    /// the stream, and what it sent meanwhile (it may be mid-burst, like a client over Receive
    /// Maximum) is read and dropped rather than answered with a reset, which would discard
    /// the DISCONNECT unread in its receive queue [MQTT-4.13.1-1]. The linger ends when the
    /// client closes, or at `LINGER_MS` (`close_overdue`).
    pub(super) fn shutdown(&mut self, slot: u32, generation: u32) {
        let now_ms = self.now_ms;
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
        let token = Token::new(Op::Shutdown, slot, generation);
        if conn.lingers() && conn.recv_armed && !conn.recv_cancelling {
            // The linger's deadline runs from here.
            conn.last_packet_ms = now_ms;
            self.rings[ring_of(slot)].shutdown_write(slot_of(slot), token);
            conn.control_in_flight += 1;
            return;
        }
        conn.set_linger(false);
        self.shutdown_reads(slot, generation);
    }

    /// Ends a linger: the reads stop too (a connection not shut down yet just will not linger).
    pub(super) fn end_linger(&mut self, slot: u32, generation: u32) {
        let Some(conn) = self.conns.get_mut(slot, generation) else {
            return;
        };
        if !conn.lingers() {
            return;
        }
        conn.set_linger(false);
        if conn.shutdown_sent {
            self.shutdown_reads(slot, generation);
        }
    }

    fn shutdown_reads(&mut self, slot: u32, generation: u32) {
        let Some(conn) = self.conns.get_mut(slot, generation) else {
            return;
        };
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
        let listener = self.conns.listener(slot);
        if let Some(mut conn) = self.conns.remove(slot, generation) {
            if let Some(buffers) = conn.buffers.as_mut() {
                buffers.sending.clear();
            }
            conn.trim(&mut self.pools);
            self.listeners[listener].release();
            if !self.tls.is_empty() {
                self.tls.remove(&(slot, generation));
            }
            if !self.ws.is_empty() {
                self.ws.remove(&(slot, generation));
            }
        }
        self.stats.connections_closed += 1;
        self.rings[ring_of(slot)].close(slot_of(slot), Token::new(Op::Close, slot, generation));
    }
}
