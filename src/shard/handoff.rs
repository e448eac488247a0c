//! Moving a connection to its client's home shard (DESIGN: "Client ids own a home shard").
//!
//! On the accepting shard: the CONNECT names a client homed elsewhere, so the connection goes
//! `HandingOff`. Its multishot recv is cancelled and bytes still completing are kept with the
//! CONNECT; only after the recv's last completion (no `IORING_CQE_F_MORE`) can no byte land
//! here, and the direct descriptor is sent to the home shard's primary ring with MSG_RING
//! (`MsgRingSendFd`, slot allocated there; a full table answers -ENFILE and the home shard's
//! next ring is tried). When that completes the source slot is closed and the bytes go through
//! the mesh (`MeshMessage::Connection`) — after the descriptor, so a failed send (every table
//! of the home shard full) needs no message to undo: the connection is just closed and
//! counted.
//!
//! On the home shard: the descriptor arrives as a completion whose result is the allocated slot
//! and whose `user_data` is the hand-off id; the bytes arrive through the mesh with the same
//! id. Either may come first (`peers::HandOffsIn`); with both, the connection is adopted: its
//! bytes decoded as if read here, then a multishot recv armed.

use std::collections::HashMap;

use bytes::BytesMut;

use crate::mesh::{self, Carried, HandOff, MeshMessage};
use crate::ring::{Completion, Op, Token};
use crate::tls::TlsHandOff;

use super::conn::{conn_id, ring_of, slot_of, ConnState};
use super::{CloseReason, Shard, ARENA_BLOCK};

/// A hand-off on its way out of this shard.
pub(super) struct HandOffOut {
    generation: u32,
    target: usize,
    /// The home shard's ring tried now: the primary first, the next one after -ENFILE.
    target_ring: usize,
    /// The CONNECT and every byte read after it.
    pub(super) bytes: BytesMut,
    /// Set once the descriptor is sent: the id the home shard's completion carries.
    handoff_id: Option<u64>,
    /// The connect deadline passed while the descriptor's send was in flight: the connection
    /// is closing here, and a descriptor that lands anyway goes with no bytes (`abandon`).
    abandoned: bool,
}

/// Outgoing hand-offs by connection id.
pub(super) type HandOffsOut = HashMap<u32, HandOffOut>;

/// The id of hand-off `sequence` from shard `source` into the target's ring `target_ring`: a
/// token, so the home shard's `complete` recognises the descriptor's completion by its op and
/// learns which of its rings holds the slot (`handoff_ring`).
pub(super) fn handoff_id(source: usize, target_ring: usize, sequence: u32) -> u64 {
    let origin = (target_ring as u32) << 8 | source as u32;
    Token::new(Op::HandOffFd, sequence, origin).pack()
}

/// The target ring a hand-off id names.
pub(super) fn handoff_ring(handoff_id: u64) -> usize {
    Token::unpack(handoff_id).map_or(0, |token| (token.generation >> 8) as usize)
}

// Shards fit the 8 bits below the ring index in a token's generation.
const _: () = assert!(crate::mesh::SHARDS_MAX <= 256);

impl Shard {
    /// The home shard of `client_id`, when it is not this one. An empty id gets one assigned
    /// here (homed here, see `on_connect`), so it never moves.
    pub(super) fn foreign_home(&self, client_id: &str) -> Option<usize> {
        if client_id.is_empty() {
            return None;
        }
        let home = mesh::home_shard(client_id.as_bytes(), self.shard_count);
        (home != self.index).then_some(home)
    }

    pub(super) fn begin_handoff(
        &mut self,
        slot: u32,
        generation: u32,
        home: usize,
        bytes: BytesMut,
    ) {
        let Some(conn) = self.conns.get_mut(slot, generation) else {
            return;
        };
        conn.state = ConnState::HandingOff;
        let recv_armed = conn.recv_armed;
        if let Some(buffers) = conn.buffers.as_mut() {
            buffers.inbox = BytesMut::new();
        }
        conn.trim(&mut self.pools);
        self.handoffs_out.insert(
            slot,
            HandOffOut {
                generation,
                target: home,
                target_ring: 0,
                bytes,
                handoff_id: None,
                abandoned: false,
            },
        );
        if recv_armed {
            // The recv's last completion (after this cancel) sends the descriptor.
            self.rings[ring_of(slot)].cancel(
                Token::new(Op::Recv, slot, generation),
                Token::new(Op::Cancel, slot, generation),
            );
            if let Some(conn) = self.conns.get_mut(slot, generation) {
                conn.control_in_flight += 1;
            }
        } else {
            self.send_handoff(slot, generation);
        }
    }

    /// A recv completion of a connection being handed off: its bytes join the CONNECT; the
    /// last one lets the descriptor go.
    pub(super) fn on_recv_handing_off(&mut self, token: Token, completion: Completion) {
        let ring = ring_of(token.slot);
        if let Some(bid) = completion.buffer_id() {
            if completion.result > 0 {
                let len = completion.result as usize;
                self.handing_off_bytes(token.slot, token.generation, bid, len);
            } else {
                self.rings[ring].recycle(bid);
            }
        }
        if completion.more() {
            return;
        }
        if let Some(conn) = self.conns.get_mut(token.slot, token.generation) {
            conn.recv_armed = false;
        }
        self.send_handoff(token.slot, token.generation);
    }

    pub(super) fn send_handoff(&mut self, slot: u32, generation: u32) {
        let Some(out) = self.handoffs_out.get_mut(&slot) else {
            return;
        };
        if out.generation != generation || out.handoff_id.is_some() {
            return;
        }
        if self
            .conns
            .get(slot, generation)
            .is_some_and(|conn| conn.send_in_flight || conn.recv_armed)
        {
            // A TLS connection's handshake records may still be on their way out: the
            // descriptor leaves after them (`on_send`), so nothing sent here can follow
            // what the home shard sends.
            return;
        }
        let Some(target_ring_fd) = self.peers.ring_fd(out.target, out.target_ring) else {
            self.handoffs_out.remove(&slot);
            self.fail_handoff(slot, generation);
            return;
        };
        self.handoff_sequence = self.handoff_sequence.wrapping_add(1);
        let id = handoff_id(self.index, out.target_ring, self.handoff_sequence);
        out.handoff_id = Some(id);
        // The send holds the slot like any operation on it (`Conn::quiescent`): a connection
        // abandoned meanwhile is not released before its descriptor has left.
        if let Some(conn) = self.conns.get_mut(slot, generation) {
            conn.control_in_flight += 1;
        }
        self.rings[ring_of(slot)].send_fixed_file(
            slot_of(slot),
            target_ring_fd,
            id,
            Token::new(Op::HandOffSend, slot, generation),
        );
    }

    /// The MSG_RING that carried the descriptor completed on this (the source) ring.
    pub(super) fn on_handoff_send(&mut self, token: Token, completion: Completion) {
        let Some(mut out) = self.handoffs_out.remove(&token.slot) else {
            return;
        };
        if out.generation != token.generation {
            self.handoffs_out.insert(token.slot, out);
            return;
        }
        let Some(handoff_id) = out.handoff_id else {
            return;
        };
        if let Some(conn) = self.conns.get_mut(token.slot, token.generation) {
            conn.control_in_flight = conn.control_in_flight.saturating_sub(1);
        }
        if completion.result == -libc::EOVERFLOW {
            // The socket is in the home shard's table, but the completion naming its slot
            // could not be posted there (the kernel's CQ overflow list could not grow): the
            // slot is the home shard's to count, though it cannot be released before the
            // shard stops (no one knows its number; closing slots to find it would race with
            // accepts whose completions are not reaped yet). The close below shuts the socket
            // down, which ends it for the client.
            let ring = out.target_ring as u16;
            self.mesh_push(out.target, MeshMessage::HandOffLost { ring });
            if out.abandoned {
                self.maybe_release(token.slot, token.generation);
            } else {
                self.note_handoff_error(out.target, completion.result);
                self.fail_handoff(token.slot, token.generation);
            }
            return;
        }
        if out.abandoned {
            self.abandoned_send_done(token, completion, out.target, handoff_id);
            return;
        }
        if completion.result == -libc::ENFILE && out.target_ring + 1 < self.peers.rings_per_shard()
        {
            // That ring's table is full (the kernel posted nothing there): the next one.
            out.target_ring += 1;
            out.handoff_id = None;
            self.handoffs_out.insert(token.slot, out);
            self.send_handoff(token.slot, token.generation);
            return;
        }
        if completion.result < 0 {
            self.note_handoff_error(out.target, completion.result);
            self.fail_handoff(token.slot, token.generation);
            return;
        }
        // The home shard holds the socket now: our slot goes without a shutdown, and its
        // TLS state (if any) goes with the bytes.
        let listener = self.conns.listener(token.slot);
        let tls = self.tls.remove(&(token.slot, token.generation));
        let ws = self.ws.remove(&(token.slot, token.generation));
        if self.conns.remove(token.slot, token.generation).is_some() {
            self.rings[ring_of(token.slot)].close(
                slot_of(token.slot),
                Token::new(Op::Close, token.slot, token.generation),
            );
        }
        self.stats.handoffs_out += 1;
        let message = MeshMessage::Connection(HandOff {
            source_shard: self.index as u16,
            listener: listener as u8,
            tls: TlsHandOff::new(tls),
            ws: Carried::new(ws),
            handoff_id,
            ring_slot_hint: None,
            bytes_read: out.bytes.freeze(),
        });
        self.mesh_push(out.target, message);
    }

    /// The connect deadline passed with the hand-off unfinished (`expire_timers`): the recv's
    /// cancel has not ended it, or the descriptor's send has not completed. The connection is
    /// closed like any other: the shutdown ends a recv the cancel could not, and the slot is
    /// released once nothing of it is in flight, the descriptor's send included.
    ///
    /// A MSG_RING descriptor send completes once the home shard's thread runs its task work,
    /// which it does whenever it waits in the kernel; a home shard that left its loop fails it
    /// (-EOWNERDEAD). Only a home shard stuck in a turn would hold it, and then the broker is
    /// stuck anyway.
    pub(super) fn abandon_handoff(&mut self, slot: u32, generation: u32) {
        let sending = match self.handoffs_out.get_mut(&slot) {
            Some(out) if out.generation == generation => {
                out.abandoned = true;
                out.handoff_id.is_some()
            }
            _ => false,
        };
        if !sending {
            self.handoffs_out.remove(&slot);
        }
        self.stats.handoffs_failed += 1;
        self.close(slot, generation, CloseReason::HandOffFailed);
    }

    /// The descriptor send of an abandoned hand-off completed. When it landed, the home shard
    /// holds the socket (shut down by our close) in a slot only its completion names: it gets
    /// the hand-off's message with no bytes, adopts the socket, reads its end and releases it.
    fn abandoned_send_done(
        &mut self,
        token: Token,
        completion: Completion,
        target: usize,
        handoff_id: u64,
    ) {
        if completion.result >= 0 {
            // No bytes and no TLS state: the home shard only reads the socket's end.
            let message = MeshMessage::Connection(HandOff {
                source_shard: self.index as u16,
                listener: self.conns.listener(token.slot) as u8,
                tls: TlsHandOff::default(),
                ws: Carried::default(),
                handoff_id,
                ring_slot_hint: None,
                bytes_read: bytes::Bytes::new(),
            });
            self.mesh_push(target, message);
        }
        self.maybe_release(token.slot, token.generation);
    }

    fn note_handoff_error(&mut self, target: usize, result: i32) {
        if !self.handoff_error_logged {
            self.handoff_error_logged = true;
            log::warn!(
                "handing a connection to shard {target} failed ({}); such \
                 connections are closed and counted",
                std::io::Error::from_raw_os_error(-result)
            );
        }
    }

    pub(super) fn fail_handoff(&mut self, slot: u32, generation: u32) {
        self.stats.handoffs_failed += 1;
        if let Some(conn) = self.conns.get_mut(slot, generation) {
            // Back to a state `close` knows; the recv has ended.
            conn.state = ConnState::AwaitConnect;
        }
        self.close(slot, generation, CloseReason::HandOffFailed);
    }

    /// A descriptor arrived from another shard (home shard side), in a slot of `ring`, the
    /// ring that reaped the completion: that is the table the kernel installed it in,
    /// whatever the id says.
    ///
    /// Every descriptor the kernel installs here is accounted for: it is announced by this
    /// completion (counted now, then adopted or waiting in `handoffs_in` for its bytes), or
    /// its sender read -EOVERFLOW and says so (`on_handoff_lost`). A MSG_RING posts nothing
    /// here when it fails (-ENFILE: nothing installed), so no completion carries an error.
    pub(super) fn on_handoff_fd(&mut self, ring: usize, completion: Completion) {
        debug_assert!(
            completion.result >= 0,
            "MSG_RING posts no failure to its target"
        );
        debug_assert_eq!(
            handoff_ring(completion.user_data),
            ring,
            "the ring the id names"
        );
        if completion.result < 0 {
            return;
        }
        let slot = conn_id(ring, completion.result as u32);
        // The kernel filled a slot behind the accept's back: count it, keep the margin.
        self.accept.slot_taken(ring);
        self.accept_after_fill(ring);
        if let Some((slot, handoff)) = self.handoffs_in.slot_arrived(completion.user_data, slot) {
            self.adopt(slot, handoff);
        }
    }

    /// A socket landed in a slot of `ring` with no completion to name it (see
    /// `on_handoff_send`): counted as taken, so the accept's count stays the kernel's.
    pub(super) fn on_handoff_lost(&mut self, ring: usize) {
        if ring >= self.rings.len() {
            return;
        }
        self.stats.handoff_slots_lost += 1;
        if self.stats.handoff_slots_lost == 1 {
            log::warn!(
                "a socket handed over landed in a slot the kernel could not \
                 name (CQ overflow): the slot stays taken until the shard stops (counted)"
            );
        }
        self.accept.slot_taken(ring);
        self.accept_after_fill(ring);
    }

    /// The bytes of a hand-off arrived through the mesh (home shard side).
    pub(super) fn on_handoff_message(&mut self, handoff: HandOff) {
        if let Some((slot, handoff)) = self.handoffs_in.message_arrived(handoff) {
            self.adopt(slot, handoff);
        }
    }

    /// Takes over connection `slot` (ring and slot): its bytes first, then its recv.
    fn adopt(&mut self, slot: u32, handoff: HandOff) {
        let ring = ring_of(slot);
        let listener = (handoff.listener as usize).min(self.listeners.len() - 1);
        let generation = self.conns.insert(slot, self.now_ms, listener as u8);
        self.stats.handoffs_in += 1;
        if handoff.bytes_read.is_empty() {
            // An abandoned hand-off (`abandoned_send_done`): its source released the
            // listener's count with its own slot; this slot's release counts it again.
            self.listeners[listener].admit();
        }
        if let Some(tls) = handoff.tls.take() {
            self.tls.insert((slot, generation), tls);
        }
        let ws_closing = match handoff.ws.take() {
            Some(ws) => {
                let closing = ws.closing();
                self.ws.insert((slot, generation), ws);
                closing
            }
            None => false,
        };
        let bytes = &handoff.bytes_read;
        if self.arena.capacity() - self.arena.len() < bytes.len() {
            self.arena.reserve(ARENA_BLOCK.max(bytes.len()));
        }
        self.arena.extend_from_slice(bytes);
        let buf = self.arena.split();
        self.on_bytes(slot, generation, buf, false);
        let Some(conn) = self.conns.get_mut(slot, generation) else {
            return;
        };
        if conn.state == ConnState::Closing {
            // Refused or malformed: `close` already shut it down; nothing reads from it.
            self.maybe_release(slot, generation);
            return;
        }
        conn.recv_armed = true;
        self.rings[ring].recv_multi(slot_of(slot), Token::new(Op::Recv, slot, generation));
        // What the accepting shard owed (TLS 1.3 session tickets, the 101, pongs) goes out now.
        self.queue_transport_output(slot, generation);
        if ws_closing {
            // The client closed its WebSocket (or broke a frame rule) while handed over.
            self.close(slot, generation, CloseReason::WebSocket);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handoff_ids_name_the_source_and_are_recognised_as_such() {
        let id = handoff_id(3, 0, 77);
        let token = Token::unpack(id).expect("a token");
        assert_eq!(token.op, Op::HandOffFd);
        assert_eq!((token.generation, token.slot), (3, 77));
        assert_ne!(handoff_id(2, 0, 77), id);
        assert_ne!(handoff_id(3, 0, 78), id);
        assert_ne!(handoff_id(3, 1, 77), id, "another target ring");
        assert_eq!(handoff_ring(handoff_id(63, 255, u32::MAX)), 255);
        assert_eq!(handoff_ring(id), 0);
    }
}
