//! Accepting connections: one multishot accept, on one of the shard's rings at a time, into
//! that ring's fixed-file table (DESIGN: "A full table").
//!
//! The rule this file keeps (issue 7): at the end of every turn the accept is armed, or it is
//! re-armed at the next timer tick at the latest. A connection the kernel has completed waits
//! in the listen backlog, unanswered, for as long as nobody accepts it: with a pause on a full
//! table that only a closing connection lifted (`maybe_release`), a shard whose connections
//! left by hand-off (which frees their slots by another path) or never left stopped answering
//! new ones for good, and a storm over capacity left thousands of clients hanging.
//!
//! A full table now pauses the accept until a slot's close completes, for one tick at most.
//! If the tick comes first, the backlog is drained: each connection that finds no slot is
//! closed by the kernel (-ENFILE ends the multishot accept, which is re-armed at once) until
//! a turn passes without one, so a client over capacity sees a close within about a second
//! and may retry, instead of waiting forever. Draining costs one submission per refused
//! connection, bounded by the connection rate; the pause absorbs a table that is full only
//! while closes are in flight (a client that just saw its connection end connects again).
//! Other errors in a row (a kernel out of memory, ...) make the retry wait for the tick.
//!
//! Free slots are counted from the kernel's side (`slots_used`): a slot is taken when an
//! accept or a hand-off fills it and given back when its close completes, not when the
//! connection's entry is removed; so a ring is never thought roomy while its closes or
//! hand-offs in are still in flight.

use std::io;
use std::os::fd::AsRawFd;

use crate::ring::{next_generation, Completion, Op, Token};

use super::conn::{conn_id, ring_of, slot_of};
use super::Shard;

/// Slots a ring keeps free for a burst of accepts before accepting moves to another ring.
const ACCEPT_MARGIN_MAX: u32 = 1024;
/// Accept errors in a row (other than a full table) after which the retry waits for the next
/// timer tick instead of spinning.
const ACCEPT_ERROR_STREAK_MAX: u32 = 64;

/// The accept's state and each ring's slot count; no I/O, so the rule above is unit-tested.
#[derive(Debug)]
pub(super) struct Accept {
    /// The ring whose table takes new connections.
    pub ring: usize,
    /// The token of the accept armed last (its slot field names the ring).
    pub token: Token,
    /// The accept armed last has not ended (no completion without F_MORE yet).
    pub armed: bool,
    /// Errors in a row; past `ACCEPT_ERROR_STREAK_MAX` re-arming waits for the tick.
    error_streak: u32,
    wait: Wait,
    /// The wait for a slot outlasted a tick: connections that find no slot are closed, until
    /// a turn passes without one (the backlog is empty).
    draining: bool,
    /// An accept found the table full during this turn.
    refused_this_turn: bool,
    /// Slots the kernel holds, per ring: filled by an accept or a hand-off, not yet closed.
    slots_used: Vec<u32>,
    /// Slots per ring.
    files: u32,
    table_full_logged: bool,
    error_logged: bool,
}

/// Why a disarmed accept is not re-armed at the end of the turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wait {
    No,
    /// Every table is full: until a slot's close completes, or the next tick.
    Slot,
    /// Errors kept coming: until the next tick.
    Tick,
}

/// What an accept's failure asks of the shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Failure {
    /// A cancelled accept (moved to another ring, or stopping): nothing.
    Cancelled,
    /// The ring's table was full; the kernel closed that connection. `first`: log it.
    TableFull { first: bool },
    /// Another error; `backoff_begins`: the retry now waits for the tick (log it once).
    Error { backoff_begins: bool },
}

impl Accept {
    pub fn new(rings: usize, files: u32) -> Accept {
        Accept {
            ring: 0,
            token: Token::shard(Op::Accept),
            armed: false,
            error_streak: 0,
            wait: Wait::No,
            draining: false,
            refused_this_turn: false,
            slots_used: vec![0; rings],
            files,
            table_full_logged: false,
            error_logged: false,
        }
    }

    /// The token for a new accept on `self.ring`: a fresh generation per arm tells this
    /// accept's completions from those of one cancelled earlier on the same ring.
    pub fn arm(&mut self) -> Token {
        let generation = next_generation(self.token.generation);
        self.token = Token::new(Op::Accept, self.ring as u32, generation);
        self.armed = true;
        self.token
    }

    /// The turn ends: whether to arm (unless armed or waiting for a slot or for the tick).
    /// Draining ends once an armed accept saw a whole turn go by without refusing anyone:
    /// it was issued at the turn's start and found the backlog empty.
    pub fn turn_ends(&mut self) -> bool {
        if self.armed && !self.refused_this_turn {
            self.draining = false;
        }
        self.refused_this_turn = false;
        !self.armed && self.wait == Wait::No
    }

    /// The timer ticked: whatever waited is re-armed. A wait for a slot that did not come
    /// turns into draining the backlog.
    pub fn on_tick(&mut self) {
        self.error_streak = 0;
        if self.wait == Wait::Slot {
            self.draining = true;
        }
        self.wait = Wait::No;
    }

    /// A completion of accept `token`: whether it is the armed one (a cancelled one ends
    /// later, with -ECANCELED, maybe after accepting was re-armed on the same ring).
    pub fn completed(&mut self, token: Token, more: bool) -> bool {
        let current = token == self.token;
        if current && !more {
            self.armed = false;
        }
        current
    }

    /// An accept filled a slot of `ring`.
    pub fn accepted(&mut self, ring: usize) {
        self.error_streak = 0;
        self.slot_taken(ring);
    }

    pub fn slot_taken(&mut self, ring: usize) {
        if let Some(used) = self.slots_used.get_mut(ring) {
            *used += 1;
        }
    }

    /// A slot's close completed: the kernel may hand it out again, and an accept waiting for
    /// a slot is re-armed on that ring.
    pub fn slot_freed(&mut self, ring: usize) {
        if let Some(used) = self.slots_used.get_mut(ring) {
            *used = used.saturating_sub(1);
        }
        if self.wait == Wait::Slot {
            self.wait = Wait::No;
            self.ring = ring;
        }
    }

    pub fn free(&self, ring: usize) -> u32 {
        self.files
            .saturating_sub(self.slots_used.get(ring).copied().unwrap_or(self.files))
    }

    /// The ring with the most free slots, the current one on a tie.
    fn roomiest(&self) -> usize {
        let rings = self.slots_used.len();
        (1..rings)
            .map(|k| (self.ring + k) % rings)
            .fold(self.ring, |best, r| {
                if self.free(r) > self.free(best) {
                    r
                } else {
                    best
                }
            })
    }

    /// The ring to move the armed accept to, when its ring is nearly full and another is not.
    /// Nearly: a multishot accept takes a whole burst from the backlog in one go, and the
    /// margin absorbs it. With no other ring below the mark, this one fills to the last slot.
    pub fn move_target(&self) -> Option<usize> {
        let margin = (self.files / 8).min(ACCEPT_MARGIN_MAX);
        if !self.armed || self.free(self.ring) > margin {
            return None;
        }
        let target = self.roomiest();
        (self.free(target) > margin).then_some(target)
    }

    /// A slot of `ring` was freed while the accepting ring is full: accept there instead,
    /// before the next connection is refused with -ENFILE.
    pub fn move_to_freed(&self, ring: usize) -> bool {
        self.armed && ring != self.ring && self.free(self.ring) == 0 && self.free(ring) > 0
    }

    /// An accept failed with `errno`; the armed accept ends with any error. After a full
    /// table it moves to the roomiest ring, and with none free waits for a slot (once per
    /// tick: see the file doc).
    pub fn failed(&mut self, errno: i32, current: bool, more: bool) -> Failure {
        if errno == libc::ECANCELED {
            return Failure::Cancelled;
        }
        let ended = current && !more;
        if errno == libc::ENFILE {
            if ended {
                self.ring = self.roomiest();
                self.refused_this_turn = true;
                if self.free(self.ring) == 0 && !self.draining {
                    self.wait = Wait::Slot;
                }
            }
            let first = !self.table_full_logged;
            self.table_full_logged = true;
            return Failure::TableFull { first };
        }
        self.error_streak += 1;
        let mut backoff_begins = false;
        if ended && self.error_streak > ACCEPT_ERROR_STREAK_MAX {
            self.wait = Wait::Tick;
            backoff_begins = !self.error_logged;
            self.error_logged = true;
        }
        Failure::Error { backoff_begins }
    }
}

impl Shard {
    /// Arms the multishot accept on `accept.ring`.
    pub(super) fn arm_accept(&mut self) {
        let token = self.accept.arm();
        self.rings[self.accept.ring].accept_multi(self.listener.as_raw_fd(), token);
    }

    /// Cancels the armed accept and arms one on ring `to`.
    fn move_accept(&mut self, to: usize) {
        let from = self.accept.ring;
        let cancel = Token::new(Op::AcceptCancel, from as u32, 0);
        self.rings[from].cancel(self.accept.token, cancel);
        self.accept.ring = to;
        self.arm_accept();
    }

    /// Keeps the accepting ring's margin (after an accept or a hand-off filled a slot).
    pub(super) fn move_accept_if_full(&mut self) {
        if let Some(to) = self.accept.move_target() {
            self.move_accept(to);
        }
    }

    /// A fixed-file slot's close completed.
    pub(super) fn on_slot_closed(&mut self, token: Token) {
        let ring = ring_of(token.slot);
        self.accept.slot_freed(ring);
        if self.accept.move_to_freed(ring) {
            self.move_accept(ring);
        }
    }

    pub(super) fn on_accept(&mut self, token: Token, completion: Completion) {
        let ring = token.slot as usize;
        let current = self.accept.completed(token, completion.more());
        let result = completion.result;
        if result >= 0 {
            self.accept.accepted(ring);
            let slot = conn_id(ring, result as u32);
            let generation = self.conns.insert(slot, self.now_ms);
            self.stats.connections_accepted += 1;
            self.rings[ring].recv_multi(slot_of(slot), Token::new(Op::Recv, slot, generation));
            if let Some(conn) = self.conns.get_mut(slot, generation) {
                conn.recv_armed = true;
            }
            if current {
                self.move_accept_if_full();
            }
            return;
        }
        match self.accept.failed(-result, current, completion.more()) {
            Failure::Cancelled => {}
            Failure::TableFull { first } => {
                self.stats.table_full_count += 1;
                if first {
                    eprintln!(
                        "ringmq: shard {}: fixed-file tables full ({} ring × {} slots): new \
                         connections wait for a slot up to a second, then are closed (counted)",
                        self.index,
                        self.rings.len(),
                        self.files
                    );
                }
            }
            Failure::Error { backoff_begins } => {
                self.stats.accept_errors += 1;
                if backoff_begins {
                    eprintln!(
                        "ringmq: shard {}: accept keeps failing ({}): retrying once a second",
                        self.index,
                        io::Error::from_raw_os_error(-result)
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A turn in which the armed accept ends with `errno`; whether it is re-armed at the end.
    fn turn_ending_with(accept: &mut Accept, errno: i32) -> (Failure, bool) {
        let token = accept.token;
        let current = accept.completed(token, false);
        let failure = accept.failed(errno, current, false);
        let rearm = accept.turn_ends();
        if rearm {
            accept.arm();
        }
        (failure, rearm)
    }

    /// The end of a turn in which nothing happened to the accept.
    fn quiet_turn(accept: &mut Accept) -> bool {
        let rearm = accept.turn_ends();
        if rearm {
            accept.arm();
        }
        rearm
    }

    #[test]
    fn issue7_a_full_table_waits_for_a_slot_or_one_tick_never_longer() {
        let mut accept = Accept::new(1, 4);
        accept.arm();
        for _ in 0..4 {
            accept.accepted(0);
        }
        let full = turn_ending_with(&mut accept, libc::ENFILE);
        assert_eq!(
            full,
            (Failure::TableFull { first: true }, false),
            "waits for a slot"
        );
        assert!(!quiet_turn(&mut accept));
        accept.slot_freed(0);
        assert!(quiet_turn(&mut accept), "a freed slot re-arms at once");
        accept.accepted(0);
        let full = turn_ending_with(&mut accept, libc::ENFILE);
        assert_eq!(full, (Failure::TableFull { first: false }, false));
        // No slot frees: the tick ends the wait, and the backlog is drained by closes (the
        // kernel closes each connection that finds no slot) ...
        accept.on_tick();
        assert!(quiet_turn(&mut accept), "the tick re-arms");
        for _ in 0..3 {
            assert!(turn_ending_with(&mut accept, libc::ENFILE).1, "draining");
        }
        // ... until a turn goes by with the accept armed and nobody refused.
        assert!(!quiet_turn(&mut accept), "still armed");
        assert!(
            !turn_ending_with(&mut accept, libc::ENFILE).1,
            "the next connection over capacity waits for a slot again"
        );
    }

    #[test]
    fn issue7_a_slot_freed_by_a_hand_off_ends_the_wait() {
        // A hand-off frees its slot with a close of ours but not through `maybe_release`
        // (which alone lifted the old pause): the close's completion counts, whatever freed it.
        let mut accept = Accept::new(1, 2);
        accept.arm();
        accept.accepted(0);
        accept.accepted(0);
        assert!(!turn_ending_with(&mut accept, libc::ENFILE).1);
        accept.slot_freed(0);
        assert!(quiet_turn(&mut accept));
    }

    #[test]
    fn issue7_errors_in_a_row_wait_for_one_tick_only() {
        let mut accept = Accept::new(1, 4);
        accept.arm();
        for n in 1..=ACCEPT_ERROR_STREAK_MAX + 1 {
            let (failure, rearm) = turn_ending_with(&mut accept, libc::ENOMEM);
            let backoff = n > ACCEPT_ERROR_STREAK_MAX;
            assert_eq!(
                failure,
                Failure::Error {
                    backoff_begins: backoff
                }
            );
            assert_eq!(rearm, !backoff, "error {n}");
        }
        accept.on_tick();
        assert!(quiet_turn(&mut accept), "the tick re-arms");
    }

    #[test]
    fn a_cancelled_accept_does_not_disarm_the_current_one() {
        let mut accept = Accept::new(2, 4);
        let old = accept.arm();
        accept.ring = 1;
        accept.arm();
        assert!(!accept.completed(old, false));
        assert_eq!(
            accept.failed(libc::ECANCELED, false, false),
            Failure::Cancelled
        );
        assert!(accept.armed && !quiet_turn(&mut accept));
        // The armed one ending (here: a completion without F_MORE after an accept, as when
        // the completion queue overflowed) is re-armed at the end of the turn.
        let current = accept.token;
        assert!(accept.completed(current, false));
        assert!(quiet_turn(&mut accept));
    }

    #[test]
    fn slots_count_from_fill_to_close_and_pick_the_roomiest_ring() {
        let mut accept = Accept::new(3, 8);
        accept.arm();
        for _ in 0..8 {
            accept.accepted(0);
        }
        accept.slot_taken(1);
        assert_eq!((accept.free(0), accept.free(1), accept.free(2)), (0, 7, 8));
        assert_eq!(accept.move_target(), Some(2));
        let (failure, rearm) = turn_ending_with(&mut accept, libc::ENFILE);
        assert_eq!(failure, Failure::TableFull { first: true });
        assert!(rearm);
        assert_eq!(accept.ring, 2, "re-armed where there is most room");
        // Ring 2 fills; a close on ring 0 gives the accept a place to go.
        for _ in 0..8 {
            accept.accepted(2);
        }
        accept.slot_freed(0);
        assert!(accept.move_to_freed(0));
        assert!(!accept.move_to_freed(2), "the accepting ring itself");
        accept.slot_freed(1);
        accept.slot_freed(1);
        assert_eq!(accept.free(1), 8, "never below zero");
    }

    #[test]
    fn one_ring_keeps_accepting_into_its_margin() {
        let mut accept = Accept::new(1, 16);
        accept.arm();
        for _ in 0..16 {
            accept.accepted(0);
            assert_eq!(accept.move_target(), None, "nowhere else to go");
        }
    }
}
