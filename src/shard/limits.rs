//! Bounds on what clients make a shard hold (issue 7), apart from the data path: the limits'
//! counters and their one log line each, the expiry of persistent sessions whose client
//! stayed away, and MQTT 5 wills waiting out their Will Delay Interval (at most one per
//! session: a return cancels it, the session's end sends it).
//!
//! Expiry without a sweep of every session: a persistent session that loses its connection
//! is queued with its deadline (its own `session_expiry_secs`: MQTT 5 clients each say how
//! long, 3.1.1 ones get `persistent_session_expiry_secs`). The queue is a min-heap on the
//! deadline, so the timer only looks at the earliest, a bounded batch per tick. An entry is
//! checked when it comes due (the client may have come back, or gone again later, which
//! queued a newer entry), and the queue is rebuilt from the sessions if stale entries ever
//! outnumber them (a client connecting and leaving in a loop).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::protocol::LastWill;
use crate::session::Session;

use super::{Sessions, Shard};

/// Sessions expired per timer tick at most: a crowd leaving at once is removed over several
/// ticks instead of stalling one turn.
const EXPIRIES_PER_TICK_MAX: usize = 1024;
/// Queue entries looked at per tick at most (most are stale when clients come back).
const EXPIRY_ENTRIES_PER_TICK_MAX: usize = 16 * EXPIRIES_PER_TICK_MAX;

/// A limit a client ran into: counted in `ShardStats`, logged once per shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum LimitHit {
    IncomingInflight,
    SubscriptionsPerClient,
    Retained,
    Sessions,
    /// Counted where it happens (`mesh_dropped_qos0`, `acks_held`); logged here.
    MeshOverflow,
}

impl LimitHit {
    fn explain(self) -> &'static str {
        match self {
            LimitHit::IncomingInflight => {
                "a client held limits.incoming_inflight_max QoS 2 messages unreleased: disconnected"
            }
            LimitHit::SubscriptionsPerClient => {
                "a client held limits.subscriptions_per_client_max filters: SUBACK 0x80 for more"
            }
            LimitHit::Retained => {
                "limits.retained_max or retained_bytes_max reached: new retained topics are \
                 delivered but not retained"
            }
            LimitHit::Sessions => {
                "limits.sessions_max persistent sessions: a CONNECT creating one more is refused"
            }
            LimitHit::MeshOverflow => {
                "a ring to another shard backed up past limits.mesh_overflow_max: QoS 0 forwards \
                 are dropped, QoS 1/2 publishers get their acks once the shard caught up"
            }
        }
    }
}

/// Deadlines of detached persistent sessions, earliest first: (deadline in shard seconds,
/// session index).
#[derive(Default)]
pub(super) struct ExpiryQueue {
    entries: BinaryHeap<Reverse<(u64, u32)>>,
}

/// When a detached session expires, in shard seconds; `None` for a session that never does
/// (a connected or clean one, or one whose expiry is `u32::MAX`) [MQTT-3.1.2-22].
fn deadline_secs(s: &Session) -> Option<u64> {
    if s.clean_session || s.conn.is_some() || s.session_expiry_secs == u32::MAX {
        return None;
    }
    Some(u64::from(s.detached_secs) + u64::from(s.session_expiry_secs))
}

impl ExpiryQueue {
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(super) fn push(&mut self, deadline_secs: u64, session: u32) {
        self.entries.push(Reverse((deadline_secs, session)));
    }

    /// The earliest entry's session if it is due, taken off the queue.
    fn pop_due(&mut self, now_secs: u64) -> Option<u32> {
        let &Reverse((deadline_secs, session)) = self.entries.peek()?;
        if deadline_secs > now_secs {
            return None;
        }
        self.entries.pop();
        Some(session)
    }

    /// One entry per detached persistent session that can expire.
    fn rebuild(&mut self, sessions: &Sessions) {
        self.entries.clear();
        for (index, s) in sessions.iter() {
            if let Some(deadline_secs) = deadline_secs(s) {
                self.entries.push(Reverse((deadline_secs, index)));
            }
        }
    }
}

impl Shard {
    /// A will whose connection ended: published now, or, with an MQTT 5 Will Delay Interval
    /// and a session that outlives the connection, once the delay has passed (or the session
    /// ended) unless the client came back first [MQTT-3.1.3-9].
    pub(super) fn publish_or_delay_will(&mut self, session: u32, will: Box<LastWill>) {
        let delay_secs = will.properties.will_delay_interval.unwrap_or(0);
        let persists = self.sessions.get(session).is_some();
        if delay_secs == 0 || !persists {
            self.publish_will(session, *will);
            self.will_published(session);
            return;
        }
        // From the clock read now, in milliseconds rounded up: the turn's `now_ms` (read
        // before this turn's completions) or a due second rounded down would send it early.
        let due_ms = self.clock_ms_rounded_up() + u64::from(delay_secs) * 1000;
        self.delayed_wills.push((due_ms, session, will));
    }

    /// The client of `session` is back: its delayed will is not sent.
    pub(super) fn cancel_delayed_will(&mut self, session: u32) {
        if !self.delayed_wills.is_empty() {
            self.delayed_wills.retain(|(_, s, _)| *s != session);
        }
    }

    /// The session ends: its delayed will, if any, goes now.
    fn publish_delayed_will(&mut self, session: u32) {
        if let Some(at) = self
            .delayed_wills
            .iter()
            .position(|(_, s, _)| *s == session)
        {
            let (_, _, will) = self.delayed_wills.swap_remove(at);
            self.publish_will(session, *will);
            self.will_published(session);
        }
    }

    /// Its will was published: a persistent session's record of it ends.
    fn will_published(&mut self, session: u32) {
        if self.durable.is_some() {
            self.log_will_end(session);
        }
    }

    /// Wills whose delay has passed, on the timer tick.
    pub(super) fn publish_due_wills(&mut self) {
        if self.delayed_wills.is_empty() {
            return;
        }
        let now_ms = self.now_ms;
        let mut wills = std::mem::take(&mut self.delayed_wills);
        let mut index = 0;
        while index < wills.len() {
            if wills[index].0 <= now_ms {
                let (_, session, will) = wills.swap_remove(index);
                self.publish_will(session, *will);
                self.will_published(session);
            } else {
                index += 1;
            }
        }
        self.delayed_wills.append(&mut wills);
    }

    /// Counts a limit hit and logs it the first time on this shard.
    pub(super) fn limit_hit(&mut self, hit: LimitHit) {
        let stats = &mut self.stats;
        match hit {
            LimitHit::IncomingInflight => stats.incoming_inflight_exceeded += 1,
            LimitHit::SubscriptionsPerClient => stats.subscriptions_refused += 1,
            LimitHit::Retained => stats.retained_refused += 1,
            LimitHit::Sessions => stats.sessions_refused += 1,
            LimitHit::MeshOverflow => {}
        }
        let bit = 1u32 << hit as u32;
        if self.limits_logged & bit == 0 {
            self.limits_logged |= bit;
            log::warn!("{}", hit.explain());
        }
    }

    /// The shard clock read now (not at the turn's start, as `now_ms`), rounded up to the
    /// next millisecond: for a deadline that must not come early.
    fn clock_ms_rounded_up(&self) -> u64 {
        (self.clock.elapsed().as_micros() as u64).div_ceil(1000)
    }

    pub(super) fn now_secs(&self) -> u64 {
        self.now_ms / 1000
    }

    /// A persistent session lost its connection: its expiry starts now.
    pub(super) fn queue_expiry(&mut self, session: u32) {
        // Rounded up, from the clock read now: the sweep compares whole seconds, and a second
        // rounded down would end the session (and send its delayed will) up to a second
        // before its interval passed.
        let now_secs = self.clock_ms_rounded_up().div_ceil(1000);
        let Some(s) = self.sessions.get_mut(session) else {
            return;
        };
        s.detached_secs = now_secs.min(u64::from(u32::MAX)) as u32;
        let Some(deadline_secs) = deadline_secs(s) else {
            return;
        };
        self.sessions.expiry.push(deadline_secs, session);
        if self.sessions.expiry.len() > 2 * self.sessions.len() + EXPIRIES_PER_TICK_MAX {
            let mut queue = std::mem::take(&mut self.sessions.expiry);
            queue.rebuild(&self.sessions);
            self.sessions.expiry = queue;
        }
    }

    /// A session restored at start whose client had been away `away_ms` (wall clock) before
    /// it: what is left of its interval runs from now. Its `session_expiry_secs` is shortened
    /// to that (a return sets it again from the CONNECT), the deadline rounded up to the second.
    pub(super) fn queue_restored_expiry(&mut self, session: u32, away_ms: u64) {
        let now_ms = self.clock_ms_rounded_up();
        if let Some(s) = self.sessions.get_mut(session) {
            if s.session_expiry_secs != u32::MAX {
                let left_ms = (u64::from(s.session_expiry_secs) * 1000).saturating_sub(away_ms);
                let deadline_secs = (now_ms + left_ms).div_ceil(1000);
                let left_secs = deadline_secs - now_ms.div_ceil(1000);
                s.session_expiry_secs = left_secs.min(u64::from(u32::MAX - 1)) as u32;
            }
        }
        self.queue_expiry(session);
    }

    /// Removes persistent sessions whose client stayed away past the expiry: a bounded batch
    /// from the front of the queue, on the timer tick.
    pub(super) fn expire_sessions(&mut self) {
        let now_secs = self.now_secs();
        let mut expired = 0;
        for _ in 0..EXPIRY_ENTRIES_PER_TICK_MAX {
            if expired == EXPIRIES_PER_TICK_MAX {
                break;
            }
            let Some(session) = self.sessions.expiry.pop_due(now_secs) else {
                break;
            };
            let due = self
                .sessions
                .get(session)
                .and_then(deadline_secs)
                .is_some_and(|deadline_secs| deadline_secs <= now_secs);
            if due {
                // [MQTT-3.1.3-9] The session ends: a will still waiting goes now.
                self.publish_delayed_will(session);
                self.log_session_end(session);
                self.clear_subscriptions(session);
                self.sessions.remove(session);
                self.forget_client_acl(session);
                self.peers.release_session();
                self.stats.sessions_expired += 1;
                expired += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ProtocolVersion;
    use crate::session::{ConnRef, Session};

    #[test]
    fn rebuild_keeps_one_entry_per_detached_persistent_session_in_deadline_order() {
        let mut sessions = Sessions::default();
        let mut add = |id: &str, clean: bool, connected: bool, detached_secs: u32| {
            let mut s = Session::new(id.into(), clean, ProtocolVersion::V3_1_1);
            s.detached_secs = detached_secs;
            s.session_expiry_secs = if id == "never" { u32::MAX } else { 100 };
            if connected {
                s.conn = Some(ConnRef {
                    slot: 1,
                    generation: 0,
                });
            }
            sessions.insert(s)
        };
        let late = add("late", false, false, 50);
        add("clean", true, false, 0);
        add("back", false, true, 0);
        let early = add("early", false, false, 10);
        let mut queue = ExpiryQueue::default();
        for _ in 0..10 {
            queue.push(0, late);
        }
        add("never", false, false, 0);
        let soon = add("soon", false, false, 0);
        if let Some(s) = sessions.get_mut(soon) {
            s.session_expiry_secs = 5;
        }
        queue.rebuild(&sessions);
        assert_eq!(queue.len(), 3, "one entry per session that can expire");
        assert_eq!(queue.pop_due(4), None);
        assert_eq!(
            queue.pop_due(5),
            Some(soon),
            "its own expiry, shorter than the rest"
        );
        assert_eq!(queue.pop_due(109), None, "nothing due before 110");
        assert_eq!(queue.pop_due(110), Some(early));
        assert_eq!(queue.pop_due(149), None);
        assert_eq!(queue.pop_due(150), Some(late));
        assert_eq!(queue.pop_due(u64::MAX), None);
    }
}
