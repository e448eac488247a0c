//! Back-pressure on a connection that does not read what it is sent (DESIGN "Slow consumers",
//! issue 7). Past `limits.outbox_bytes_max` bytes waiting for a connection, the shard stops
//! reading from it: its multishot recv is cancelled and not re-armed, so the client's own sends
//! fill the kernel's queues and block there. A PINGREQ or QoS 1 PUBLISH flood whose answers are
//! never read can then grow nothing but those bounded queues. Reading resumes once the kernel
//! has taken the outbox down to half the cap (hysteresis: not a cancel and re-arm per send). A
//! connection that stays paused while the kernel takes none of its bytes for
//! `outbox_stall_secs` is closed: its client reads nothing at all.
//!
//! Checked where the bytes move, never by a scan: a connection is checked for pausing when it
//! is flushed at the end of a turn (every connection written to in the turn is), for resuming
//! when one of its sends completes, and for a stall by the coarse timer's sweep.
//!
//! - The cancel (`Op::Cancel`) counts in `control_in_flight` like a closing connection's, so a
//!   connection that closes meanwhile keeps its slot until the cancel is done. Bytes in recv
//!   completions that arrive before the cancel lands are handled as usual: the kernel hands a
//!   multishot recv a bounded burst of buffers, so the outbox passes its cap by a bounded amount
//!   (`outbox_bytes_high_water` shows how far). The recv's last completion (-ECANCELED, no
//!   F_MORE) clears `recv_armed`; with reading resumed by then, it re-arms the recv.
//! - While paused the connection takes no new QoS 0 message and no queued QoS 1/2 one
//!   (`Conn::outbox_full`): the outbox drains to the low-water mark even while publishers
//!   outpace the client, so a slow reader's PINGREQ still gets answered.
//! - While paused nothing re-arms the recv: not the ENOBUFS re-arm list, not a final completion
//!   carrying bytes (`rearm_recv` checks `recv_paused`).
//! - Keepalive: the packets of a paused client wait unread in the kernel, so its silence cannot
//!   be observed; its keepalive is suspended and restarts at the resume. How long a paused
//!   connection may live is bounded by `outbox_stall_secs` instead (0: by nothing; the client's
//!   outbox, and the kernel's queues, are bounded anyway).
//! - A slow consumer that does read keeps its connection: each send that moves bytes restarts
//!   the stall clock, and its outbox drains below the low-water mark in time.
//!
//! The same pause stops a publisher of QoS 0 retained messages that outruns another shard.
//! Every shard keeps a replica of each retained message, so replicas wait in the mesh's
//! overflow instead of being dropped like QoS 0 forwards, and a QoS 0 publisher has no window
//! that a held ack would close (QoS 1/2 ones do, `held.rs`): left alone, one client publishing
//! QoS 0 retained messages as fast as it can grew the overflow by gigabytes in seconds. So a
//! QoS 0 retained PUBLISH that finds some target's overflow at `mesh_overflow_max` pauses its
//! connection's reads (`Pause::MESH`, apart from the outbox's pause: the connection still gets
//! its messages), and at the end of each turn that moves overflow into the rings,
//! every such connection reads again once all overflows are under half the limit. A shard
//! that sleeps with overflow asks the targets to wake it as they drain (`held.rs`).

use crate::ring::{Op, Token};

use super::conn::{ring_of, Conn, ConnState, Pause};
use super::Shard;

/// A paused connection whose kernel took none of its bytes for `stall_secs` since
/// `progress_ms` (the pause, or the last send that moved bytes). 0 turns the check off.
pub fn outbox_stalled(progress_ms: u64, stall_secs: u16, now_ms: u64) -> bool {
    stall_secs != 0 && now_ms >= progress_ms + u64::from(stall_secs) * 1000
}

impl Shard {
    /// At a connection's flush: past the cap, stop reading from it.
    pub(super) fn pause_recv_if_full(&mut self, slot: u32, generation: u32) {
        let outbox_bytes_max = self.config.limits.outbox_bytes_max as usize;
        let Some(conn) = self.conns.get_mut(slot, generation) else {
            return;
        };
        let pending = conn.pending_bytes();
        self.stats.outbox_bytes_high_water = self.stats.outbox_bytes_high_water.max(pending as u64);
        if pending < outbox_bytes_max
            || conn.recv_paused.has(Pause::OUTBOX)
            || conn.state != ConnState::Connected
        {
            return;
        }
        conn.recv_paused.set(Pause::OUTBOX, true);
        let now_ms = self.now_ms;
        if let Some(buffers) = conn.buffers.as_mut() {
            buffers.progress_ms = now_ms;
        }
        self.stats.recv_paused_count += 1;
        if !self.recv_paused_logged {
            self.recv_paused_logged = true;
            log::warn!(
                "a connection has {pending} B waiting to be sent, over \
                 limits.outbox_bytes_max ({outbox_bytes_max} B): reading from it pauses until \
                 half is sent (logged once; counted in recv_paused_count)"
            );
        }
        self.cancel_recv(slot, generation);
    }

    /// Stops the connection's armed recv (its last completion clears `recv_armed`).
    fn cancel_recv(&mut self, slot: u32, generation: u32) {
        let Some(conn) = self.conns.get_mut(slot, generation) else {
            return;
        };
        if conn.recv_armed && !conn.recv_cancelling {
            conn.recv_cancelling = true;
            conn.control_in_flight += 1;
            self.rings[ring_of(slot)].cancel(
                Token::new(Op::Recv, slot, generation),
                Token::new(Op::Cancel, slot, generation),
            );
        }
    }

    /// After a QoS 0 retained PUBLISH: with some shard's overflow at `mesh_overflow_max`,
    /// stop reading from its connection.
    pub(super) fn pause_recv_if_mesh_behind(&mut self, slot: u32, generation: u32) {
        let overflow_max = self.config.limits.mesh_overflow_max as usize;
        if self.shard_count == 1 || self.mesh.overflow_deepest() < overflow_max {
            return;
        }
        let Some(conn) = self.conns.get_mut(slot, generation) else {
            return;
        };
        if conn.recv_paused.has(Pause::MESH) || conn.state != ConnState::Connected {
            return;
        }
        conn.recv_paused.set(Pause::MESH, true);
        self.mesh_paused.push((slot, generation));
        self.stats.mesh_paused_count += 1;
        if !self.mesh_paused_logged {
            self.mesh_paused_logged = true;
            log::warn!(
                "a client's QoS 0 retained messages outpace another shard: {} wait for it, \
                 limits.mesh_overflow_max ({overflow_max}): reading from the client pauses \
                 until they are under half (logged once; counted in mesh_paused_count)",
                self.mesh.overflow_deepest()
            );
        }
        self.cancel_recv(slot, generation);
    }

    /// At the end of a turn that moved overflow into the rings: every overflow under half of
    /// `mesh_overflow_max`, the connections paused for it read again.
    pub(super) fn resume_mesh_paused(&mut self) {
        let low_water = self.config.limits.mesh_overflow_max as usize / 2;
        if self.mesh_paused.is_empty() || self.mesh.overflow_deepest() > low_water {
            return;
        }
        let now_ms = self.now_ms;
        let paused = std::mem::take(&mut self.mesh_paused);
        for &(slot, generation) in &paused {
            let Some(conn) = self.conns.get_mut(slot, generation) else {
                continue;
            };
            conn.recv_paused.set(Pause::MESH, false);
            // Keepalive restarts: whatever the client sent meanwhile is still to be read.
            conn.last_packet_ms = now_ms;
            self.rearm_recv(slot, generation);
        }
        self.mesh_paused = paused;
        self.mesh_paused.clear();
    }

    /// After a send that moved bytes: a paused connection whose outbox is down to half the cap
    /// reads again.
    pub(super) fn resume_recv_if_drained(&mut self, slot: u32, generation: u32) {
        let low_water = self.config.limits.outbox_bytes_max as usize / 2;
        let now_ms = self.now_ms;
        let Some(conn) = self.conns.get_mut(slot, generation) else {
            return;
        };
        if !conn.recv_paused.has(Pause::OUTBOX) {
            return;
        }
        if let Some(buffers) = conn.buffers.as_mut() {
            buffers.progress_ms = now_ms;
        }
        if conn.pending_bytes() > low_water {
            return;
        }
        conn.recv_paused.set(Pause::OUTBOX, false);
        // Keepalive restarts: whatever the client sent while paused is still to be read.
        conn.last_packet_ms = now_ms;
        // With the pause's cancel still in flight, the recv's last completion re-arms instead.
        self.rearm_recv(slot, generation);
    }

    /// A connection the timer sweep closes for a stall: counted, and logged the first time.
    pub(super) fn note_outbox_stall(&mut self) {
        self.stats.outbox_stall_disconnects += 1;
        if !self.outbox_stall_logged {
            self.outbox_stall_logged = true;
            log::warn!(
                "closed a connection that read nothing for \
                 limits.outbox_stall_secs ({} s) with its outbox full (logged once; counted in \
                 outbox_stall_disconnects)",
                self.config.limits.outbox_stall_secs
            );
        }
    }
}

/// From the timer sweep: a paused connection whose kernel took nothing of its outbox for
/// `stall_secs`.
pub fn conn_stalled(conn: &Conn, stall_secs: u16, now_ms: u64) -> bool {
    conn.recv_paused.has(Pause::OUTBOX)
        && conn
            .buffers
            .as_ref()
            .is_some_and(|b| outbox_stalled(b.progress_ms, stall_secs, now_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stall_is_counted_from_the_last_progress() {
        assert!(!outbox_stalled(10_000, 30, 39_999));
        assert!(outbox_stalled(10_000, 30, 40_000));
    }

    #[test]
    fn stall_secs_zero_never_stalls() {
        assert!(!outbox_stalled(0, 0, u64::MAX / 2));
    }
}
