//! Accepting connections: one multishot accept per listener, all on one of the shard's rings
//! at a time, into that ring's fixed-file table (DESIGN: "A full table"). The listeners share
//! the slots, so they share this state: they move, pause and drain together, and only an
//! accept that ended alone (no F_MORE) is re-armed alone. An accept's token names its ring
//! and its listener (`accept_slot`).
//!
//! The rule this file keeps (issue 7): at the end of every turn the accept is armed, or it is
//! re-armed at the next timer tick at the latest. A connection the kernel has completed waits
//! in the listen backlog, unanswered, for as long as nobody accepts it: with a pause on a full
//! table that only a closing connection lifted (`maybe_release`), a shard whose connections
//! left by hand-off (which frees their slots by another path) or never left stopped answering
//! new ones for good, and a storm over capacity left thousands of clients hanging.
//!
//! When the last free slot is taken the accept is cancelled (paused), before the next
//! connection hits -ENFILE, which would make the kernel close it: new connections wait in the
//! backlog for a slot's close, which re-arms the accept at once. The pause lasts one tick at
//! most. Then, if no slot is free, the backlog is drained: each connection that finds no slot
//! is closed by the kernel (-ENFILE ends the multishot accept, which is re-armed at once)
//! until a turn passes without one, and the accept pauses again. So a client over capacity
//! sees a close within about a second and may retry, instead of waiting forever; draining
//! costs one submission per refused connection, bounded by the connection rate. Other errors
//! in a row (a kernel out of memory, ...) make the retry wait for the tick.
//!
//! Free slots are counted from the kernel's side (`slots_used`): a slot is taken when an
//! accept or a hand-off fills it and given back when its close completes, not when the
//! connection's entry is removed; so a ring is never thought roomy while its closes or
//! hand-offs in are still in flight.

use std::io;
use std::os::fd::AsRawFd;

use crate::ring::{next_generation, Completion, Op, Token};

use super::conn::{conn_id, ring_of, slot_of};
use super::{CloseReason, Shard};

/// Slots a ring keeps free for a burst of accepts before accepting moves to another ring.
const ACCEPT_MARGIN_MAX: u32 = 1024;
/// Accept errors in a row (other than a full table) after which the retry waits for the next
/// timer tick instead of spinning.
const ACCEPT_ERROR_STREAK_MAX: u32 = 64;

/// The token slot of an accept: its ring and its listener.
fn accept_slot(ring: usize, listener: usize) -> u32 {
    (listener as u32) << 8 | ring as u32
}

/// The ring an accept's token names.
pub(super) fn accept_ring(token: Token) -> usize {
    (token.slot & 0xff) as usize
}

/// The listener an accept's token names.
pub(super) fn accept_listener(token: Token) -> usize {
    (token.slot >> 8) as usize
}

// A ring index fits the 8 bits below the listener's in an accept's token.
const _: () = assert!(super::conn::RINGS_MAX <= 256);

/// The accepts' state and each ring's slot count; no I/O, so the rule above is unit-tested.
#[derive(Debug)]
pub(super) struct Accept {
    /// The ring whose table takes new connections.
    pub ring: usize,
    /// Per listener, the token of the accept armed last (its slot names ring and listener).
    pub tokens: Vec<Token>,
    /// Per listener, the accept armed last is live: neither ended (no completion without
    /// F_MORE yet) nor cancelled by a pause.
    pub armed: Vec<bool>,
    /// The last generation handed out: every arm gets a fresh one.
    generation: u32,
    /// Errors in a row; past `ACCEPT_ERROR_STREAK_MAX` re-arming waits for the tick.
    error_streak: u32,
    wait: Wait,
    /// A wait for a slot outlasted a tick: connections that find no slot are closed, until a
    /// turn passes without one (the backlog is empty).
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

/// What the shard does with the armed accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Step {
    Keep,
    /// Arm one on `ring` (after it ended, or was paused, or a wait is over).
    Arm,
    /// Cancel it and arm one on ring `to` (its ring is (nearly) full, `to` is not).
    Move {
        to: usize,
    },
    /// Cancel it: every table is full; new connections wait in the backlog.
    Pause,
}

/// What an accept's failure asks of the shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Failure {
    /// A cancelled accept (paused, moved to another ring, or stopping): nothing.
    Cancelled,
    /// The ring's table was full; the kernel closed that connection. `first`: log it.
    TableFull { first: bool },
    /// Another error; `backoff_begins`: the retry now waits for the tick (log it once).
    Error { backoff_begins: bool },
}

impl Accept {
    pub fn new(rings: usize, files: u32, listeners: usize) -> Accept {
        Accept {
            ring: 0,
            tokens: vec![Token::shard(Op::Accept); listeners],
            armed: vec![false; listeners],
            generation: 0,
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

    /// The token for a new accept of `listener` on `self.ring`: a fresh generation per arm
    /// tells this accept's completions from those of one cancelled earlier.
    pub fn arm(&mut self, listener: usize) -> Token {
        self.generation = next_generation(self.generation);
        let token = Token::new(
            Op::Accept,
            accept_slot(self.ring, listener),
            self.generation,
        );
        self.tokens[listener] = token;
        self.armed[listener] = true;
        token
    }

    /// Some listener's accept is live.
    fn any_armed(&self) -> bool {
        self.armed.iter().any(|&armed| armed)
    }

    /// Every listener's accept is live.
    fn all_armed(&self) -> bool {
        self.armed.iter().all(|&armed| armed)
    }

    /// Marks every accept cancelled (a pause or a move). Cancelling one that already ended
    /// finds nothing (its token's generation is its own).
    fn disarm_all(&mut self) {
        self.armed.iter_mut().for_each(|armed| *armed = false);
    }

    /// The turn ends. Draining ends once an armed accept saw a whole turn go by without
    /// refusing anyone: it was issued at the turn's start and found the backlog empty; with
    /// the tables still full, the accept pauses again. Otherwise it is armed unless live or
    /// waiting (for a slot, or for the tick).
    pub fn turn_ends(&mut self) -> Step {
        let refused = std::mem::take(&mut self.refused_this_turn);
        if self.draining && self.any_armed() && !refused {
            self.draining = false;
            return self.after_fill();
        }
        if !self.all_armed() && self.wait == Wait::No {
            Step::Arm
        } else {
            Step::Keep
        }
    }

    /// The timer ticked: whatever waited is re-armed; a wait for a slot that did not come
    /// turns into draining the backlog.
    pub fn on_tick(&mut self) {
        self.error_streak = 0;
        if self.wait == Wait::Slot {
            self.draining = true;
        }
        self.wait = Wait::No;
    }

    /// A completion of accept `token`: whether it is the armed one (a cancelled one ends
    /// later, with -ECANCELED, maybe after accepting was re-armed).
    pub fn completed(&mut self, token: Token, more: bool) -> bool {
        let listener = accept_listener(token);
        let current = self.tokens.get(listener) == Some(&token);
        if current && !more {
            self.armed[listener] = false;
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
    pub fn slot_freed(&mut self, ring: usize) -> Step {
        if let Some(used) = self.slots_used.get_mut(ring) {
            *used = used.saturating_sub(1);
        }
        if self.wait == Wait::Slot {
            self.wait = Wait::No;
            self.ring = ring;
            return Step::Keep; // armed at the end of the turn
        }
        if self.any_armed() && ring != self.ring && self.free(self.ring) == 0 && self.free(ring) > 0
        {
            return Step::Move { to: ring };
        }
        Step::Keep
    }

    /// Slots of `ring` the kernel holds, as counted here.
    pub fn used(&self, ring: usize) -> u32 {
        self.slots_used.get(ring).copied().unwrap_or(0)
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

    /// A slot of the accepting ring was filled (by an accept or a hand-off). Nearly full, the
    /// accept moves to a ring with room: a multishot accept takes a whole burst from the
    /// backlog in one go, and the margin absorbs it. With no ring below the mark it fills its
    /// own to the last slot, then pauses (see the file doc), unless it is draining.
    pub fn after_fill(&mut self) -> Step {
        let margin = (self.files / 8).min(ACCEPT_MARGIN_MAX);
        if !self.any_armed() || self.free(self.ring) > margin {
            return Step::Keep;
        }
        let (free, target) = (self.free(self.ring), self.roomiest());
        if target != self.ring && (self.free(target) > margin || free == 0 && self.free(target) > 0)
        {
            return Step::Move { to: target };
        }
        if free > 0 || self.draining {
            return Step::Keep;
        }
        self.disarm_all();
        self.wait = Wait::Slot;
        Step::Pause
    }

    /// An accept failed with `errno`; the armed accept ends with any error. After a full
    /// table (the kernel's count was ahead of ours) it moves to the roomiest ring, and with
    /// none free waits for a slot, unless draining.
    pub fn failed(&mut self, errno: i32, current: bool, more: bool) -> Failure {
        if errno == libc::ECANCELED {
            return Failure::Cancelled;
        }
        let ended = current && !more;
        if errno == libc::ENFILE {
            self.refused_this_turn = true;
            if ended {
                self.ring = self.roomiest();
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
    /// Arms the multishot accept of every listener that has none live, on `accept.ring`.
    pub(super) fn arm_accept(&mut self) {
        for listener in 0..self.sockets.len() {
            if self.accept.armed[listener] {
                continue;
            }
            let token = self.accept.arm(listener);
            let fd = self.sockets[listener].as_raw_fd();
            self.rings[self.accept.ring].accept_multi(fd, token);
        }
    }

    /// Carries out what the accepts' state asked for.
    pub(super) fn step_accept(&mut self, step: Step) {
        let cancel = |shard: &mut Shard| {
            shard.accept.disarm_all();
            for index in 0..shard.accept.tokens.len() {
                let token = shard.accept.tokens[index];
                let ring = accept_ring(token);
                let cancel_token = Token::new(Op::AcceptCancel, ring as u32, 0);
                shard.rings[ring].cancel(token, cancel_token);
            }
        };
        match step {
            Step::Keep => {}
            Step::Arm => self.arm_accept(),
            Step::Move { to } => {
                cancel(self);
                self.accept.ring = to;
                self.arm_accept();
            }
            Step::Pause => cancel(self),
        }
    }

    /// A slot of the accepting ring was filled: keep its margin, or pause on a full table.
    pub(super) fn accept_after_fill(&mut self, ring: usize) {
        if ring == self.accept.ring {
            let step = self.accept.after_fill();
            self.step_accept(step);
        }
    }

    /// A fixed-file slot's close completed.
    pub(super) fn on_slot_closed(&mut self, token: Token) {
        let step = self.accept.slot_freed(ring_of(token.slot));
        self.step_accept(step);
    }

    pub(super) fn on_accept(&mut self, token: Token, completion: Completion) {
        let ring = accept_ring(token);
        let listener = accept_listener(token);
        let current = self.accept.completed(token, completion.more());
        let result = completion.result;
        if result >= 0 {
            self.accept.accepted(ring);
            let slot = conn_id(ring, result as u32);
            let generation = self.conns.insert(slot, self.now_ms, listener as u8);
            self.stats.connections_accepted += 1;
            if !self.listeners[listener].admit() {
                // Over the listener's `connections_max`: closed at once, as mosquitto does.
                self.stats.listener_full_count += 1;
                self.close(slot, generation, CloseReason::Refused);
                if current {
                    self.accept_after_fill(ring);
                }
                return;
            }
            self.rings[ring].recv_multi(slot_of(slot), Token::new(Op::Recv, slot, generation));
            if let Some(conn) = self.conns.get_mut(slot, generation) {
                conn.recv_armed = true;
            }
            if current {
                self.accept_after_fill(ring);
            }
            return;
        }
        match self.accept.failed(-result, current, completion.more()) {
            Failure::Cancelled => {}
            Failure::TableFull { first } => {
                self.stats.table_full_count += 1;
                if first {
                    log::warn!(
                        "fixed-file tables full ({} ring × {} slots; ring_files_max, or the \
                         open-file limit): new connections wait for a slot up to a second, then \
                         are closed (counted in table_full_count)",
                        self.rings.len(),
                        self.files
                    );
                }
            }
            Failure::Error { backoff_begins } => {
                self.stats.accept_errors += 1;
                if backoff_begins {
                    log::error!(
                        "accept keeps failing ({}): retrying once a second",
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
    fn turn_ending_with(accept: &mut Accept, errno: i32) -> (Failure, Step) {
        let token = accept.tokens[0];
        let current = accept.completed(token, false);
        let failure = accept.failed(errno, current, false);
        (failure, end_turn(accept))
    }

    /// The end of a turn, arming when asked to.
    fn end_turn(accept: &mut Accept) -> Step {
        let step = accept.turn_ends();
        if step == Step::Arm {
            accept.arm(0);
        }
        step
    }

    /// `count` accepts on the armed accept's ring; the step the last one asked for.
    fn accept_n(accept: &mut Accept, count: u32) -> Step {
        let mut step = Step::Keep;
        for _ in 0..count {
            let (token, ring) = (accept.tokens[0], accept.ring);
            assert!(accept.completed(token, true));
            accept.accepted(ring);
            step = accept.after_fill();
        }
        step
    }

    #[test]
    fn issue7_a_full_table_pauses_until_a_slot_frees_or_one_tick_then_drains() {
        let mut accept = Accept::new(1, 4, 1);
        accept.arm(0);
        assert_eq!(accept_n(&mut accept, 3), Step::Keep);
        assert_eq!(
            accept_n(&mut accept, 1),
            Step::Pause,
            "the last slot is taken"
        );
        assert_eq!(
            end_turn(&mut accept),
            Step::Keep,
            "new connections wait in the backlog"
        );
        assert_eq!(accept.slot_freed(0), Step::Keep);
        assert_eq!(
            end_turn(&mut accept),
            Step::Arm,
            "a freed slot re-arms at once"
        );
        assert_eq!(accept_n(&mut accept, 1), Step::Pause);
        // No slot frees: the tick ends the wait and the backlog is drained by closes (the
        // kernel closes each connection that finds no slot) ...
        accept.on_tick();
        assert_eq!(end_turn(&mut accept), Step::Arm, "the tick re-arms");
        for _ in 0..3 {
            let (failure, step) = turn_ending_with(&mut accept, libc::ENFILE);
            assert!(matches!(failure, Failure::TableFull { .. }));
            assert_eq!(step, Step::Arm, "draining");
        }
        // ... until a turn goes by with the accept live and nobody refused: still full, it
        // pauses again.
        assert_eq!(end_turn(&mut accept), Step::Pause);
        assert_eq!(end_turn(&mut accept), Step::Keep);
        accept.on_tick();
        assert_eq!(end_turn(&mut accept), Step::Arm);
    }

    #[test]
    fn issue7_an_unexpected_full_table_waits_for_a_slot_too() {
        // The kernel's table can be full while our count is not yet (a race with a close):
        // -ENFILE ends the accept, which then waits like a pause.
        let mut accept = Accept::new(1, 4, 1);
        accept.arm(0);
        let (failure, step) = turn_ending_with(&mut accept, libc::ENFILE);
        assert_eq!(
            (failure, step),
            (Failure::TableFull { first: true }, Step::Arm)
        );
        accept_n(&mut accept, 4);
        let (_, step) = turn_ending_with(&mut accept, libc::ENFILE);
        assert_eq!(step, Step::Keep, "waits");
        accept.slot_freed(0);
        assert_eq!(end_turn(&mut accept), Step::Arm);
    }

    #[test]
    fn issue7_a_slot_freed_by_a_hand_off_ends_the_wait() {
        // A hand-off frees its slot with a close of ours but not through `maybe_release`
        // (which alone lifted the old pause): the close's completion counts, whatever freed it.
        let mut accept = Accept::new(1, 2, 1);
        accept.arm(0);
        assert_eq!(accept_n(&mut accept, 2), Step::Pause);
        assert_eq!(end_turn(&mut accept), Step::Keep);
        accept.slot_freed(0);
        assert_eq!(end_turn(&mut accept), Step::Arm);
    }

    #[test]
    fn issue7_errors_in_a_row_wait_for_one_tick_only() {
        let mut accept = Accept::new(1, 4, 1);
        accept.arm(0);
        for n in 1..=ACCEPT_ERROR_STREAK_MAX + 1 {
            let (failure, step) = turn_ending_with(&mut accept, libc::ENOMEM);
            let backoff = n > ACCEPT_ERROR_STREAK_MAX;
            assert_eq!(
                failure,
                Failure::Error {
                    backoff_begins: backoff
                }
            );
            assert_eq!(step == Step::Arm, !backoff, "error {n}");
        }
        accept.on_tick();
        assert_eq!(end_turn(&mut accept), Step::Arm, "the tick re-arms");
    }

    #[test]
    fn a_cancelled_accept_does_not_disarm_the_live_one() {
        let mut accept = Accept::new(2, 4, 1);
        let old = accept.arm(0);
        accept.ring = 1;
        accept.arm(0);
        assert!(!accept.completed(old, false));
        assert_eq!(
            accept.failed(libc::ECANCELED, false, false),
            Failure::Cancelled
        );
        assert!(accept.armed[0]);
        assert_eq!(end_turn(&mut accept), Step::Keep);
        // The live one ending (here: a completion without F_MORE after an accept, as when the
        // completion queue overflowed) is re-armed at the end of the turn.
        let live = accept.tokens[0];
        assert!(accept.completed(live, false));
        assert_eq!(end_turn(&mut accept), Step::Arm);
    }

    #[test]
    fn accepting_moves_to_the_roomiest_ring_before_pausing() {
        let mut accept = Accept::new(3, 8, 1);
        accept.arm(0);
        accept.slot_taken(1);
        // Margin 1 (8 / 8): the 7th accept leaves one slot and moves to the emptiest ring.
        assert_eq!(accept_n(&mut accept, 6), Step::Keep);
        assert_eq!(accept_n(&mut accept, 1), Step::Move { to: 2 });
        accept.ring = 2;
        accept.arm(0);
        assert_eq!(
            accept_n(&mut accept, 7),
            Step::Move { to: 1 },
            "ring 1 has 7 free"
        );
        accept.ring = 1;
        accept.arm(0);
        assert_eq!(
            accept_n(&mut accept, 6),
            Step::Keep,
            "no ring above the margin"
        );
        assert_eq!(
            accept_n(&mut accept, 1),
            Step::Move { to: 2 },
            "full: any room"
        );
        accept.ring = 2;
        accept.arm(0);
        assert_eq!(accept_n(&mut accept, 1), Step::Move { to: 0 });
        accept.ring = 0;
        accept.arm(0);
        assert_eq!(accept_n(&mut accept, 1), Step::Pause, "every table full");
        // A close on ring 1 ends the wait there.
        assert_eq!(accept.slot_freed(1), Step::Keep);
        assert_eq!((end_turn(&mut accept), accept.ring), (Step::Arm, 1));
        accept.slot_freed(0);
        accept.slot_freed(0);
        assert_eq!(accept.free(0), 2);
    }

    #[test]
    fn a_close_elsewhere_moves_an_accept_stuck_on_a_full_ring() {
        let mut accept = Accept::new(2, 2, 1);
        accept.arm(0);
        accept.slot_taken(0);
        accept.slot_taken(0);
        accept.slot_taken(1);
        accept.slot_taken(1);
        // Live on a full ring (draining, or filled by hand-offs): a close on the other ring
        // moves it there.
        assert_eq!(accept.slot_freed(1), Step::Move { to: 1 });
        assert_eq!(accept.slot_freed(0), Step::Keep, "its own ring");
        accept.slot_freed(0);
        accept.slot_freed(0);
        assert_eq!(accept.free(0), 2, "never below zero");
    }
}
