//! Transports: what stands between a connection's socket bytes and the MQTT inbox/outbox path.
//! A connection's listener (`Conns::listener`) says which: plain connections take the
//! ring's bytes as they are (`recv.rs`, `send.rs`, untouched by TLS), TLS connections go
//! through their `TlsConn` here, on the shard's own loop, with no thread of its own:
//!
//! - in: the multishot recv's ciphertext is fed to rustls from the provided buffer
//!   (`read_tls` from a slice, `process_new_packets`), and the plaintext goes down the same
//!   path as plain bytes (`on_bytes`), so the connect deadline, `connect_packet_size_max` and
//!   every packet rule apply unchanged. The handshake runs in `AwaitConnect`, so the connect
//!   deadline bounds it.
//! - out: handlers encode plaintext into the outbox as for any connection; the flush moves it
//!   into rustls only when the records before it are sent (`write_tls` into `sending`), so the
//!   outbox cap stays the bound on what a slow reader makes us hold.
//!
//! The `TlsConn` is made at the connection's first byte (a connection that never speaks costs
//! what a plain one does) and kept by (slot, generation) beside the connection: `Conn` stays
//! at its 40 B. A hand-off carries it to the client's home shard (`handoff.rs`); a bad record
//! or failed handshake closes only its connection (counted as `tls_errors`).
//!
//! WebSocket (`ws`, and `wss` on top of TLS) takes the same two hooks, with its `WsConn`
//! (`crate::websocket`) made at the first byte and kept likewise: the Upgrade request and the
//! frames in, their unmasked payload down the MQTT path; at the flush, what the connection
//! owes (the 101, pongs), the outbox as a binary frame and a close frame, in that order, in
//! place in the outbox (`frame_outbox`), which a `wss` connection then seals into records.
//! A refused upgrade or a broken frame rule closes only its connection, after its answer
//! (`CloseReason::WebSocket`).

use std::io::{Read, Write};

use bytes::BufMut;

use crate::listener::Listener;
use crate::ring::Completion;
use crate::websocket::{self, WsConn};

use super::conn::{ring_of, ConnBuffers, ConnState};
use super::{CloseReason, Shard};

/// What feeding a connection's records gave.
enum Fed {
    /// Plaintext (maybe none) is in `tls_plaintext`.
    Ok { peer_closed: bool },
    /// A bad record, a failed handshake, or no TLS state could be made.
    Failed,
}

impl Shard {
    /// Whether connection `slot` speaks TLS (its listener is `mqtt+tls`).
    pub(super) fn is_tls(&self, slot: u32) -> bool {
        self.tls_listeners && self.listeners[self.conns.listener(slot)].tls.is_some()
    }

    /// Whether connection `slot` speaks WebSocket (its listener is `ws` or `wss`).
    pub(super) fn is_ws(&self, slot: u32) -> bool {
        self.ws_listeners && self.listeners[self.conns.listener(slot)].websocket
    }

    /// A recv completion of a `ws` connection (not handing off, not closing): the Upgrade
    /// request or frames in, their MQTT bytes through the MQTT path.
    pub(super) fn on_recv_ws(
        &mut self,
        slot: u32,
        generation: u32,
        completion: Completion,
        bid: u16,
    ) {
        let rearm = !completion.more();
        let ring = ring_of(slot);
        self.ws_payload.clear();
        let bytes = self.rings[ring].buffer(bid, completion.result as usize);
        let fed = unframe(
            &mut self.ws,
            &self.listeners[self.conns.listener(slot)],
            self.config.limits.packet_size_max,
            (slot, generation),
            bytes,
            &mut self.ws_payload,
        );
        self.rings[ring].recycle(bid);
        self.after_unframe(slot, generation, fed, false, rearm);
    }

    /// The payload the frames held to the MQTT path, then the close their rules call for.
    fn after_unframe(
        &mut self,
        slot: u32,
        generation: u32,
        fed: websocket::Fed,
        peer_closed: bool,
        rearm: bool,
    ) {
        self.queue_transport_output(slot, generation);
        let payload = std::mem::take(&mut self.ws_payload);
        self.ws_payload = self.down_inbox_path(slot, generation, payload);
        if fed == websocket::Fed::Close {
            self.close(slot, generation, CloseReason::WebSocket);
            return;
        }
        if peer_closed {
            self.close(slot, generation, CloseReason::Io);
            return;
        }
        if rearm {
            self.rearm_recv(slot, generation);
        }
    }

    /// MQTT bytes of connection `slot` down the inbox path (the arena, or behind a partial
    /// packet its inbox); the scratch vector is handed back.
    fn down_inbox_path(&mut self, slot: u32, generation: u32, bytes: Vec<u8>) -> Vec<u8> {
        if bytes.is_empty() {
            return bytes;
        }
        let Some(conn) = self.conns.get_mut(slot, generation) else {
            return bytes;
        };
        let (buf, from_inbox) = super::recv::into_inbox_path(
            &mut self.arena,
            &mut self.arena_block,
            &mut self.stats,
            conn,
            &bytes,
        );
        self.on_bytes(slot, generation, buf, from_inbox);
        bytes
    }

    /// A recv completion of a connection being handed off: the MQTT bytes it held (through
    /// its TLS and WebSocket states) join those that go with it; the buffer is recycled. A
    /// bad record or frame adds nothing: the home shard meets the error again (or the state
    /// that says so) and closes the connection.
    pub(super) fn handing_off_bytes(&mut self, slot: u32, generation: u32, bid: u16, len: usize) {
        let ring = ring_of(slot);
        let ws = self.is_ws(slot);
        let mut plaintext = std::mem::take(&mut self.tls_plaintext);
        plaintext.clear();
        let tls = self.is_tls(slot);
        if tls {
            if let Fed::Failed = self.feed_tls(slot, generation, bid, len) {
                self.tls_plaintext.clear();
            }
            std::mem::swap(&mut plaintext, &mut self.tls_plaintext);
        }
        let input: &[u8] = if tls {
            &plaintext
        } else {
            self.rings[ring].buffer(bid, len)
        };
        let out = self.handoffs_out.get_mut(&slot);
        match (out, ws) {
            (Some(out), true) => {
                self.ws_payload.clear();
                unframe(
                    &mut self.ws,
                    &self.listeners[self.conns.listener(slot)],
                    self.config.limits.packet_size_max,
                    (slot, generation),
                    input,
                    &mut self.ws_payload,
                );
                out.bytes.extend_from_slice(&self.ws_payload);
            }
            (Some(out), false) => out.bytes.extend_from_slice(input),
            (None, _) => {}
        }
        if !tls {
            self.rings[ring].recycle(bid);
        }
        self.tls_plaintext = plaintext;
    }

    /// Makes the connection's TLS state at its first byte; false when it cannot be made.
    fn ensure_tls(&mut self, slot: u32, generation: u32) -> bool {
        let key = (slot, generation);
        if self.tls.contains_key(&key) {
            return true;
        }
        let listener = &self.listeners[self.conns.listener(slot)];
        let Some(Ok(tls)) = listener.tls.as_ref().map(|tls| tls.accept()) else {
            return false;
        };
        self.tls.insert(key, Box::new(tls));
        true
    }

    /// Feeds the ciphertext in provided buffer `bid` of the connection's ring to its TLS
    /// state (made on first use) and recycles the buffer; the plaintext the records held is
    /// left in `self.tls_plaintext`.
    fn feed_tls(&mut self, slot: u32, generation: u32, bid: u16, len: usize) -> Fed {
        self.tls_plaintext.clear();
        let ring = ring_of(slot);
        let fed = if self.ensure_tls(slot, generation) {
            let use_identity = self.listeners[self.conns.listener(slot)]
                .config
                .use_identity_as_username;
            match self.tls.get_mut(&(slot, generation)) {
                Some(tls) => {
                    let records = self.rings[ring].buffer(bid, len);
                    feed(tls, records, &mut self.tls_plaintext, use_identity)
                }
                None => Fed::Failed,
            }
        } else {
            Fed::Failed
        };
        self.rings[ring].recycle(bid);
        fed
    }

    /// A recv completion of a TLS connection (not handing off, not closing): its records in,
    /// their plaintext through the MQTT path, the handshake's answer queued for the flush.
    pub(super) fn on_recv_tls(
        &mut self,
        slot: u32,
        generation: u32,
        completion: Completion,
        bid: u16,
    ) {
        let rearm = !completion.more();
        let peer_closed = match self.feed_tls(slot, generation, bid, completion.result as usize) {
            Fed::Failed => {
                self.fail_tls(slot, generation);
                return;
            }
            Fed::Ok { peer_closed } => peer_closed,
        };
        if self.is_ws(slot) {
            // `wss`: the plaintext is the Upgrade request and frames.
            self.ws_payload.clear();
            let fed = unframe(
                &mut self.ws,
                &self.listeners[self.conns.listener(slot)],
                self.config.limits.packet_size_max,
                (slot, generation),
                &self.tls_plaintext,
                &mut self.ws_payload,
            );
            self.after_unframe(slot, generation, fed, peer_closed, rearm);
            return;
        }
        self.queue_transport_output(slot, generation);
        let plaintext = std::mem::take(&mut self.tls_plaintext);
        self.tls_plaintext = self.down_inbox_path(slot, generation, plaintext);
        if peer_closed {
            self.close(slot, generation, CloseReason::Io);
            return;
        }
        if rearm {
            self.rearm_recv(slot, generation);
        }
    }

    /// The handshake, the session or the WebSocket has bytes to send that the outbox does
    /// not hold (records, a 101, a pong, a close frame): the flush writes them.
    pub(super) fn queue_transport_output(&mut self, slot: u32, generation: u32) {
        let key = (slot, generation);
        let wants_write = self.tls.get(&key).is_some_and(|tls| tls.conn.wants_write())
            || self.ws.get(&key).is_some_and(|ws| ws.wants_write());
        if !wants_write {
            return;
        }
        if let Some(conn) = self.conns.get_mut(slot, generation) {
            if !conn.dirty {
                conn.dirty = true;
                self.dirty.push((slot, generation));
            }
        }
    }

    /// A bad record or failed handshake: only this connection is closed, without a word in
    /// the clear (its TLS state is gone, so nothing more is written to it).
    fn fail_tls(&mut self, slot: u32, generation: u32) {
        self.stats.tls_errors += 1;
        self.tls.remove(&(slot, generation));
        self.close(slot, generation, CloseReason::Io);
    }

    /// At the flush, before the send (and the seal, for `wss`): a WebSocket connection's
    /// outbox becomes what it owes, a binary frame and a close frame, once the send before is
    /// gone. While handing off nothing is framed: what it owes goes with the state.
    /// True when the outbox now ends with the connection's last bytes (`WsConn::frame_outbox`).
    pub(super) fn frame_outbox(
        ws: Option<&mut WsConn>,
        state: ConnState,
        buffers: &mut ConnBuffers,
    ) -> bool {
        if state == ConnState::HandingOff || !buffers.sending.is_empty() {
            return false;
        }
        match ws {
            Some(ws) => ws.frame_outbox(&mut buffers.outbox),
            // It never spoke: nothing to frame, and nothing MQTT can be in the outbox.
            None => {
                buffers.outbox.clear();
                false
            }
        }
    }

    /// At the flush, before the send: a TLS connection's plaintext outbox becomes records in
    /// `sending`, once the records sent before are gone. A TLS connection without TLS state
    /// (it failed) sends nothing. While handing off nothing is written: the records it owes go
    /// with the state.
    /// With `close_notify` (a `wss` connection's last bytes are in the outbox), the TLS
    /// session is ended after them, so the client reads a clean end rather than a truncation.
    pub(super) fn seal_outbox(
        tls: Option<&mut crate::tls::TlsConn>,
        state: ConnState,
        buffers: &mut ConnBuffers,
        close_notify: bool,
    ) {
        let Some(tls) = tls else {
            buffers.outbox.clear();
            return;
        };
        if state == ConnState::HandingOff || !buffers.sending.is_empty() {
            return;
        }
        if !buffers.outbox.is_empty() {
            // Unbounded buffer (`TlsListener::accept`): it takes all, bounded by the outbox cap.
            let _ = tls.conn.writer().write_all(&buffers.outbox);
            buffers.outbox.clear();
        }
        if close_notify {
            tls.conn.send_close_notify();
        }
        let mut sending = (&mut buffers.sending).writer();
        while tls.conn.wants_write() {
            if tls.conn.write_tls(&mut sending).is_err() {
                break;
            }
        }
    }
}

/// Feeds `input` (bytes read, or a `wss` connection's plaintext) to the connection's
/// WebSocket state, made at its first byte; the MQTT bytes its frames held are appended to
/// `payload`. Frames are bounded by `packet_size_max`: no larger than the largest packet.
fn unframe(
    states: &mut hashbrown::HashMap<(u32, u32), Box<WsConn>, foldhash::fast::RandomState>,
    listener: &Listener,
    packet_size_max: u32,
    key: (u32, u32),
    input: &[u8],
    payload: &mut Vec<u8>,
) -> websocket::Fed {
    let settings = websocket::Settings {
        path: &listener.config.path,
        frame_size_max: packet_size_max as u64,
    };
    states
        .entry(key)
        .or_insert_with(|| Box::new(WsConn::new()))
        .feed(input, payload, settings)
}

/// Feeds `records` to `tls`, appending the plaintext they held to `plaintext`.
fn feed(
    tls: &mut crate::tls::TlsConn,
    mut records: &[u8],
    plaintext: &mut Vec<u8>,
    use_identity: bool,
) -> Fed {
    let mut peer_closed = false;
    while !records.is_empty() {
        match tls.conn.read_tls(&mut records) {
            Ok(0) | Err(_) => return Fed::Failed,
            Ok(_) => {}
        }
        let state = match tls.conn.process_new_packets() {
            Ok(state) => state,
            Err(_) => return Fed::Failed,
        };
        peer_closed |= state.peer_has_closed();
        let count = state.plaintext_bytes_to_read();
        if count > 0 {
            let start = plaintext.len();
            plaintext.resize(start + count, 0);
            if tls
                .conn
                .reader()
                .read_exact(&mut plaintext[start..])
                .is_err()
            {
                return Fed::Failed;
            }
        }
    }
    if use_identity {
        tls.note_identity();
    }
    Fed::Ok { peer_closed }
}
