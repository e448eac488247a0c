//! Writing: what handlers encode goes to the connection's outbox, and the end of each turn
//! sends every outbox that filled, one send per connection in flight; a completion moves a
//! partial send on, resumes a paused reader (`backpressure.rs`), and pumps the session's
//! queue.

use bytes::Buf;

use crate::ring::{Completion, Op, Token};

use super::conn::{self, ring_of, slot_of, ConnState, Pause};
use super::{CloseReason, Shard};

impl Shard {
    pub(super) fn on_send(&mut self, token: Token, completion: Completion) {
        let Some(conn) = self.conns.get_mut(token.slot, token.generation) else {
            return;
        };
        conn.send_in_flight = false;
        let buffers = conn.buffers(&mut self.pools);
        // A send of a non-empty buffer that moved nothing would be retried forever: treat it
        // as the error it is.
        if completion.result < 0 || (completion.result == 0 && !buffers.sending.is_empty()) {
            buffers.sending.clear();
            if conn.state == ConnState::HandingOff {
                // A TLS connection's handshake records failed to go out: it goes nowhere.
                self.handoffs_out.remove(&token.slot);
                self.fail_handoff(token.slot, token.generation);
            } else if conn.state == ConnState::Closing {
                // A close waiting for this flush (a refusing CONNACK) has nothing left to
                // wait for: shut down now, or the slot is never released.
                self.shutdown(token.slot, token.generation);
                self.maybe_release(token.slot, token.generation);
            } else {
                self.close(token.slot, token.generation, CloseReason::Io);
            }
            return;
        }
        let sent = (completion.result as usize).min(buffers.sending.len());
        self.stats.bytes_sent += sent as u64;
        buffers.sending.advance(sent);
        if buffers.sending.is_empty() {
            self.pools.put_outbox(std::mem::take(&mut buffers.sending));
        }
        if conn.state == ConnState::Closing && conn.shutdown_sent {
            self.maybe_release(token.slot, token.generation);
            return;
        }
        let paused = conn.recv_paused.has(Pause::OUTBOX);
        // A partial send continues, a refilled outbox goes out, and a closing connection
        // whose outbox has drained is shut down: all at the end of this turn.
        if !conn.dirty {
            conn.dirty = true;
            self.dirty.push((token.slot, token.generation));
        }
        let session = conn.session;
        if conn.state == ConnState::HandingOff {
            // The descriptor waited for this send (`send_handoff`).
            self.send_handoff(token.slot, token.generation);
        }
        if paused && sent > 0 {
            self.resume_recv_if_drained(token.slot, token.generation);
        }
        if session != conn::NO_SESSION {
            self.pump(session);
        }
    }

    /// One send per connection per turn. A connection with a send in flight keeps
    /// appending; its completion puts it back on the list.
    pub(super) fn flush_outboxes(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        for &(slot, generation) in &dirty {
            self.pause_recv_if_full(slot, generation);
            let sealed = self.tls_listeners && self.is_tls(slot);
            let framed = self.ws_listeners && self.is_ws(slot);
            let Some(conn) = self.conns.get_mut(slot, generation) else {
                continue;
            };
            conn.dirty = false;
            if conn.send_in_flight || conn.shutdown_sent {
                continue;
            }
            let state = conn.state;
            let buffers = conn.buffers(&mut self.pools);
            let mut last_bytes = false;
            if framed {
                let ws = self.ws.get_mut(&(slot, generation)).map(|ws| &mut **ws);
                last_bytes = Shard::frame_outbox(ws, state, buffers);
            }
            if sealed {
                let tls = self.tls.get_mut(&(slot, generation)).map(|tls| &mut **tls);
                Shard::seal_outbox(tls, state, buffers, last_bytes);
            }
            if buffers.sending.is_empty() && !buffers.outbox.is_empty() {
                std::mem::swap(&mut buffers.sending, &mut buffers.outbox);
            }
            if !buffers.sending.is_empty() {
                let len = buffers.sending.len().min(u32::MAX as usize) as u32;
                let ptr = buffers.sending.as_ptr();
                conn.send_in_flight = true;
                // SAFETY: `sending` is not touched until this send completes (`on_send`), and
                // the connection is not freed while `send_in_flight` (`maybe_release`).
                unsafe {
                    self.rings[ring_of(slot)].send(
                        slot_of(slot),
                        ptr,
                        len,
                        Token::new(Op::Send, slot, generation),
                    )
                };
            } else if conn.state == ConnState::Closing && conn.close_after_flush {
                self.shutdown(slot, generation);
                self.maybe_release(slot, generation);
            } else {
                // Nothing left to send: the connection went idle, its buffers go back.
                conn.trim(&mut self.pools);
            }
        }
        self.dirty = dirty;
        self.dirty.clear();
    }
}
