//! Reading: a multishot recv per connection into the provided-buffer ring, its completions
//! copied once into the receive arena (or behind a partial packet, the connection's inbox),
//! decoded and handled; a recv that ended is re-armed unless the connection is closing,
//! handing off or paused (`backpressure.rs`). Before its CONNECT a connection may buffer one
//! CONNECT's worth, and a CONNECT naming a client homed elsewhere starts a hand-off.

use bytes::BytesMut;

use crate::protocol::{self, DecodeError, Decoded, Packet, ProtocolVersion, ReasonCode};
use crate::ring::{Completion, Op, Token};

use super::conn::{self, ring_of, slot_of, ConnState};
use super::{CloseReason, Shard, ARENA_BLOCK};

/// The only copy: `bytes` (the kernel's provided buffer, or a TLS connection's plaintext) ->
/// the arena (or, behind a partial packet, the connection's inbox); whether the buffer
/// returned is the inbox.
pub(super) fn into_inbox_path(
    arena: &mut BytesMut,
    arena_block: &mut usize,
    stats: &mut super::ShardStats,
    conn: &mut conn::Conn,
    bytes: &[u8],
) -> (BytesMut, bool) {
    if let Some(buffers) = conn.buffers.as_mut().filter(|b| !b.inbox.is_empty()) {
        buffers.inbox.extend_from_slice(bytes);
        return (std::mem::take(&mut buffers.inbox), true);
    }
    arena_reserve(arena, arena_block, stats, bytes.len());
    arena.extend_from_slice(bytes);
    (arena.split(), false)
}

/// Room for `len` more bytes in the arena. Reclaims the current block in place once every
/// payload cut from it is gone; allocates a fresh one (counted) only while some are still held.
pub(super) fn arena_reserve(
    arena: &mut BytesMut,
    arena_block: &mut usize,
    stats: &mut super::ShardStats,
    len: usize,
) {
    if arena.capacity() - arena.len() < len {
        arena.reserve(ARENA_BLOCK.max(len));
        let block = arena.as_ptr() as usize;
        if block != *arena_block {
            *arena_block = block;
            stats.arena_blocks_allocated += 1;
        }
    }
}

impl Shard {
    pub(super) fn on_recv(&mut self, token: Token, completion: Completion) {
        let buffer_id = completion.buffer_id();
        let tls = self.tls_listeners && self.is_tls(token.slot);
        let ws = !tls && self.ws_listeners && self.is_ws(token.slot);
        let Some(conn) = self.conns.get_mut(token.slot, token.generation) else {
            // Cannot happen while the slot waits for the recv's last completion; be safe.
            if let Some(bid) = buffer_id {
                self.rings[ring_of(token.slot)].recycle(bid);
            }
            return;
        };
        if conn.state == ConnState::HandingOff {
            self.on_recv_handing_off(token, completion);
            return;
        }
        if !completion.more() {
            conn.recv_armed = false;
            conn.recv_cancelling = false;
        }
        let result = completion.result;
        if result > 0 {
            self.stats.bytes_received += result as u64;
            let Some(bid) = buffer_id else {
                return;
            };
            if conn.state == ConnState::Closing {
                self.rings[ring_of(token.slot)].recycle(bid);
                self.maybe_release(token.slot, token.generation);
                return;
            }
            // Before CONNECT the deadline runs from the accept: bytes trickling in must not
            // keep a connection that never completes its CONNECT (issue 7).
            if conn.state == ConnState::Connected {
                conn.last_packet_ms = self.now_ms;
            }
            if tls {
                self.on_recv_tls(token.slot, token.generation, completion, bid);
                return;
            }
            if ws {
                self.on_recv_ws(token.slot, token.generation, completion, bid);
                return;
            }
            let bytes = self.rings[ring_of(token.slot)].buffer(bid, result as usize);
            let (buf, from_inbox) = into_inbox_path(
                &mut self.arena,
                &mut self.arena_block,
                &mut self.stats,
                conn,
                bytes,
            );
            self.rings[ring_of(token.slot)].recycle(bid);
            let rearm = !completion.more();
            self.on_bytes(token.slot, token.generation, buf, from_inbox);
            if rearm {
                self.rearm_recv(token.slot, token.generation);
            }
            return;
        }
        if result == -libc::ENOBUFS && conn.state != ConnState::Closing {
            // The buffer ring ran dry this turn; buffers come back as soon as the turn's bytes
            // are copied out, so re-arm at the end of the turn.
            self.stats.recv_nobufs_count += 1;
            // Turns like this one need more: double the buffers in circulation (`bufring.rs`).
            self.rings[ring_of(token.slot)].grow_buffers();
            self.recv_rearm.push((token.slot, token.generation));
            return;
        }
        if completion.more() {
            return;
        }
        if result == -libc::ECANCELED && conn.state != ConnState::Closing {
            // A pause's cancel landed (`backpressure.rs`); reading resumed meanwhile if the
            // connection is no longer paused.
            self.rearm_recv(token.slot, token.generation);
            return;
        }
        // End of stream (0), reset, cancel after our shutdown, or another error.
        if conn.state == ConnState::Closing {
            self.maybe_release(token.slot, token.generation);
        } else {
            self.close(token.slot, token.generation, CloseReason::Io);
        }
    }

    /// Decodes every whole packet in `buf` and handles it; keeps a partial tail in the inbox,
    /// copied into a buffer of its own so the arena block is not pinned by it. The bytes are
    /// frozen once per read: a PUBLISH without properties is routed borrowing them
    /// (`protocol::decode_in`), and only the deliveries that keep it take handles.
    pub(super) fn on_bytes(&mut self, slot: u32, generation: u32, buf: BytesMut, from_inbox: bool) {
        let packet_size_max = self.config.limits.packet_size_max;
        // Before its CONNECT a client is nobody: it may make the broker buffer one CONNECT's
        // worth, no more (issue 7).
        let connect_size_max = packet_size_max.min(self.config.limits.connect_packet_size_max);
        let bytes = buf.freeze();
        // Whole packets before `at` were handled in this call.
        let mut at = 0;
        loop {
            let Some(conn) = self.conns.get_mut(slot, generation) else {
                return;
            };
            if matches!(conn.state, ConnState::Closing | ConnState::HandingOff) {
                return;
            }
            let awaiting_connect = conn.state == ConnState::AwaitConnect;
            let size_max = if awaiting_connect {
                connect_size_max
            } else {
                packet_size_max
            };
            match protocol::decode_in(&bytes, at, conn.version, size_max) {
                Ok(Some((Decoded::Publish(publish), size))) => {
                    at += size;
                    self.handle_publish_in(slot, generation, publish, &bytes);
                }
                Ok(Some((Decoded::Packet(packet), size))) => {
                    if awaiting_connect {
                        // The CONNECT is in: keepalive counts from here, not from the accept.
                        conn.last_packet_ms = self.now_ms;
                    }
                    if let (true, Packet::Connect(connect)) = (awaiting_connect, &packet) {
                        // It may belong to another shard: the bytes from the CONNECT on go
                        // over with the socket (once per connection).
                        if let Some(home) = self.foreign_home(&connect.client_id) {
                            let rest = BytesMut::from(&bytes[at..]);
                            self.begin_handoff(slot, generation, home, rest);
                            return;
                        }
                    }
                    at += size;
                    self.handle(slot, generation, packet)
                }
                Ok(None) => {
                    if at == bytes.len() {
                        conn.trim(&mut self.pools);
                        return;
                    }
                    if from_inbox && at == 0 {
                        // Still the one partial packet in the connection's own buffer: keep
                        // growing it, no copy (nothing else holds it).
                        let inbox = bytes
                            .try_into_mut()
                            .unwrap_or_else(|b| BytesMut::from(&b[..]));
                        conn.buffers(&mut self.pools).inbox = inbox;
                        return;
                    }
                    // A tail behind whole packets: into a buffer of its own, sized to what
                    // arrived, so neither an arena block nor a large packet's buffer stays
                    // pinned by a few bytes.
                    conn.buffers(&mut self.pools).inbox = conn::partial_inbox(&bytes[at..]);
                    return;
                }
                Err(error) => {
                    if awaiting_connect && matches!(error, DecodeError::PacketTooLarge { .. }) {
                        self.on_connect_too_large(slot, generation, &bytes[at..], connect_size_max);
                        return;
                    }
                    self.on_decode_error(slot, generation, error);
                    return;
                }
            }
        }
    }

    /// A CONNECT announcing more than `connect_packet_size_max` at its fixed header: never
    /// buffered. An MQTT 5 client is told CONNACK 0x95 Packet too large before the close
    /// (spec 3.2.2.2), once the first bytes show its protocol level (if they have not all
    /// arrived, the few that did wait for the rest, still under the connect deadline); any
    /// other closes as under 3.1.1, silently.
    fn on_connect_too_large(
        &mut self,
        slot: u32,
        generation: u32,
        buf: &[u8],
        connect_size_max: u32,
    ) {
        let level = match protocol::connect_protocol_level(buf) {
            Ok(None) => {
                // Fewer than a dozen bytes (the fixed header and protocol name): keep them.
                if let Some(conn) = self.conns.get_mut(slot, generation) {
                    conn.buffers(&mut self.pools).inbox = conn::partial_inbox(buf);
                }
                return;
            }
            Ok(Some(level)) => level,
            Err(()) => 0,
        };
        self.stats.connect_too_large_count += 1;
        if !self.connect_too_large_logged {
            self.connect_too_large_logged = true;
            log::warn!(
                "a CONNECT over limits.connect_packet_size_max \
                 ({connect_size_max} B): connection closed (counted in \
                 connect_too_large_count; raise the limit for large wills or passwords)"
            );
        }
        if level == ProtocolVersion::V5 as u8 {
            self.refuse(
                slot,
                generation,
                ProtocolVersion::V5,
                ReasonCode::PacketTooLarge,
            );
            return;
        }
        self.on_decode_error(
            slot,
            generation,
            DecodeError::PacketTooLarge {
                size: connect_size_max.saturating_add(1),
                size_max: connect_size_max,
            },
        );
    }

    pub(super) fn rearm_recv(&mut self, slot: u32, generation: u32) {
        let Some(conn) = self.conns.get_mut(slot, generation) else {
            return;
        };
        if matches!(conn.state, ConnState::Closing | ConnState::HandingOff)
            || conn.recv_armed
            || conn.recv_paused.any()
        {
            return;
        }
        conn.recv_armed = true;
        self.rings[ring_of(slot)].recv_multi(slot_of(slot), Token::new(Op::Recv, slot, generation));
    }

    pub(super) fn rearm_recvs(&mut self) {
        let pending = std::mem::take(&mut self.recv_rearm);
        for &(slot, generation) in &pending {
            self.rearm_recv(slot, generation);
        }
        self.recv_rearm = pending;
        self.recv_rearm.clear();
    }
}
