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
//! at its 48 B. A hand-off carries it to the client's home shard (`handoff.rs`); a bad record
//! or failed handshake closes only its connection (counted as `tls_errors`).
//!
//! A WebSocket transport fits the same two hooks: frames in, plaintext to `on_bytes`;
//! the outbox framed at the flush.

use std::io::{Read, Write};

use bytes::BufMut;

use crate::ring::Completion;

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
        self.queue_tls_output(slot, generation);
        if !self.tls_plaintext.is_empty() {
            let plaintext = std::mem::take(&mut self.tls_plaintext);
            let Some(conn) = self.conns.get_mut(slot, generation) else {
                self.tls_plaintext = plaintext;
                return;
            };
            let (buf, from_inbox) = super::recv::into_inbox_path(
                &mut self.arena,
                &mut self.arena_block,
                &mut self.stats,
                conn,
                &plaintext,
            );
            self.tls_plaintext = plaintext;
            self.on_bytes(slot, generation, buf, from_inbox);
        }
        if peer_closed {
            self.close(slot, generation, CloseReason::Io);
            return;
        }
        if rearm {
            self.rearm_recv(slot, generation);
        }
    }

    /// A recv completion of a TLS connection being handed off: the plaintext its records
    /// held is left in `self.tls_plaintext`, to join the bytes that go with it (a bad record
    /// leaves none: the home shard meets the error again and closes the connection).
    pub(super) fn handing_off_tls_plaintext(
        &mut self,
        slot: u32,
        generation: u32,
        bid: u16,
        len: usize,
    ) {
        if let Fed::Failed = self.feed_tls(slot, generation, bid, len) {
            self.tls_plaintext.clear();
        }
    }

    /// The handshake or the session has records to send: the flush writes them.
    pub(super) fn queue_tls_output(&mut self, slot: u32, generation: u32) {
        let wants_write = self
            .tls
            .get(&(slot, generation))
            .is_some_and(|tls| tls.conn.wants_write());
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

    /// At the flush, before the send: a TLS connection's plaintext outbox becomes records in
    /// `sending`, once the records sent before are gone. A TLS connection without TLS state
    /// (it failed) sends nothing. While handing off nothing is written: the records it owes go
    /// with the state.
    pub(super) fn seal_outbox(
        tls: Option<&mut crate::tls::TlsConn>,
        state: ConnState,
        buffers: &mut ConnBuffers,
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
        let mut sending = (&mut buffers.sending).writer();
        while tls.conn.wants_write() {
            if tls.conn.write_tls(&mut sending).is_err() {
                break;
            }
        }
    }
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
