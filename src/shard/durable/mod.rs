//! The shard's persistence log (issue 10; the format and the replay are in `persist/`). This
//! file: the log's batches, their writes and fdatasyncs, voided records, and what acks wait
//! for; `compaction.rs`: compaction while running; `records.rs`: what packets and session
//! changes record, and the sessions read back at start.
//!
//! Records appended while a turn handles packets wait in `pending`; at the turn's end they go
//! out with one IORING_OP_WRITE through the shard's own ring (no thread, no syscall of their
//! own), and with `sync = "ack"` one fdatasync follows the write. Records appended meanwhile
//! form the next batch: the slower the disk, the larger each batch (group commit). One
//! operation is in flight at a time, so the buffer the kernel reads never moves.
//!
//! An ack that depends on a record (a retained message's PUBACK/PUBREC) is held as the mesh
//! holds acks (`held.rs`), on the pseudo-target [`DISK`] with the record's number: it goes
//! out once `durable` has passed it, and so does a QoS 2 PUBLISH to a persistent session, on
//! the record of its packet id (`log_sent`). Every batch ends with a commit record: a start
//! keeps a batch whole or drops it whole (`persist/`). With `sync = "interval"` acks do not
//! wait; written records get their fdatasync at most `sync_interval_ms` later.
//!
//! A QoS 1 message's record and its PUBACK often meet before the batch is cut (with `sync =
//! "ack"` the batch waits for the fdatasync in flight, and the subscriber acknowledges within
//! microseconds): the PUBACK then voids the record in `pending` instead of appending a
//! `Delivered` (`void_unwritten`), and the cut squeezes voided records out, so neither is ever
//! written, read back by a compaction, or replayed. Record numbers stay as handed out (acks
//! wait on them); a batch that was all voided is durable at once. The publisher's ack waits
//! for such a record on [`VOIDABLE`]: once it is voided the message is delivered and
//! acknowledged, nothing of it needs storing, and the ack goes at the end of that turn
//! (`release_voided`) instead of after the next batch's fdatasync: the acks of messages to
//! connected subscribers no longer wait for the disk's write-and-sync cycle.
//!
//! A failed write or fdatasync (disk full, I/O error) stops the log for good: it is logged
//! once, nothing more is written, `durable` never advances again, so no ack that depends on a
//! record goes out any more (the clients' windows fill: back-pressure), and nothing is ever
//! acknowledged that is not stored. MQTT 5 QoS 1/2 PUBLISHes are refused from then on with
//! 0x97 (Quota exceeded, `publish_refusal`); both are counted (`persistence_refused`).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use io_uring::types::Timespec;

use crate::config::{Persistence, PersistenceSync};
use crate::persist::{self, Log};
use crate::protocol::{Properties, QoS};
use crate::ring::{Op, Ring, Token};

mod compaction;
mod records;

use super::Shard;
use compaction::Compaction;

/// The `held.rs` target that means "this shard's log": sequence = a record's number.
pub(super) const DISK: u16 = u16::MAX;

/// The `held.rs` target for a QoS 1 message's record that its subscriber's PUBACK may void:
/// the wait is over once the record is on disk or voided (the message is then delivered and
/// acknowledged, nothing of it needs storing). Sequence = the record's number.
pub(super) const VOIDABLE: u16 = u16::MAX - 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum InFlight {
    Idle,
    Writing,
    Syncing,
}

pub(super) struct Durable {
    file: File,
    path: PathBuf,
    sync: PersistenceSync,
    /// Records appended this turn (and while the last batch was in flight).
    pending: Vec<u8>,
    /// The batch the kernel is writing; never touched while `in_flight` is `Writing`.
    writing: Vec<u8>,
    /// Bytes of `writing` already written (a short write goes on from there).
    written: usize,
    /// File offset of `writing[written..]`.
    offset: u64,
    /// Records appended so far: the number of the last one.
    appended: u64,
    /// Records in `pending`'s batches up to the one in flight (its last record's number).
    batch_upto: u64,
    /// Records written by completed writes (in the page cache, not yet synced).
    written_upto: u64,
    /// Records covered by the fdatasync in flight.
    syncing_upto: u64,
    /// Records on disk: what an ack may depend on.
    durable: u64,
    in_flight: InFlight,
    /// `sync = "interval"`: written records wait for an fdatasync, due when the timer fires.
    sync_due: bool,
    timer_armed: bool,
    interval: Box<Timespec>,
    failed: bool,
    /// Per source shard: the mesh messages taken when the batch in flight was cut (or, when
    /// nothing is in flight, taken so far): what its fdatasync makes durable.
    batch_taken: Vec<usize>,
    compaction: Compaction,
    /// Batches written to the old log since the compaction's read began.
    tail: Vec<u8>,
    /// The log's size after the last compaction (or at the start): a measure of live state.
    live_bytes: u64,
    compact_min_bytes: u64,
    /// QoS 2 flow keys of this shard's persistent sessions (`exactly_once.rs`).
    pub(super) keys: super::exactly_once::FlowKeys,
    /// Every record in `pending` (not yet cut into a batch), by number from the first: a QoS
    /// 1 message's names its session and message. A PUBACK before the cut voids the record
    /// (`void_unwritten`) instead of adding a `Delivered` one: neither is ever written.
    unwritten: Vec<Unwritten>,
    /// Records of `pending` voided, squeezed out when the batch is cut.
    voided: usize,
    /// A record was voided since the last look: acks waiting on `VOIDABLE` may go.
    voided_since_look: bool,
}

/// A record in `pending`: where it starts, and for a QoS 1 message's, its session and
/// `message_id` (`NOT_VOIDABLE` for any other).
struct Unwritten {
    offset: usize,
    session: u32,
    message_id: u32,
}

const NOT_VOIDABLE: u32 = u32::MAX;

/// The kind byte of a voided record in `pending` (no record kind is 0); never written.
const VOID: u8 = 0;

impl Durable {
    pub(super) fn new(log: Log, config: &Persistence) -> Durable {
        Durable {
            file: log.file,
            path: log.path,
            sync: config.sync,
            pending: Vec::new(),
            writing: Vec::new(),
            written: 0,
            offset: log.offset,
            appended: 0,
            batch_upto: 0,
            written_upto: 0,
            syncing_upto: 0,
            durable: 0,
            in_flight: InFlight::Idle,
            sync_due: false,
            timer_armed: false,
            interval: Box::new(Timespec::from(std::time::Duration::from_millis(u64::from(
                config.sync_interval_ms,
            )))),
            failed: false,
            batch_taken: Vec::new(),
            compaction: Compaction::Idle,
            tail: Vec::new(),
            live_bytes: log.offset,
            compact_min_bytes: config.compact_min_bytes,
            keys: Default::default(),
            unwritten: Default::default(),
            voided: 0,
            voided_since_look: false,
        }
    }

    /// Records on disk (with `sync = "ack"`; written, with `"interval"`).
    pub(super) fn durable(&self) -> u64 {
        self.durable
    }

    /// The log failed (disk full, I/O error): nothing more is stored.
    pub(super) fn failed(&self) -> bool {
        self.failed
    }

    /// Whether acks wait for their records.
    pub(super) fn acks_wait(&self) -> bool {
        self.sync == PersistenceSync::Ack
    }

    /// Appends a retained message's record (an empty payload deletes); returns its number.
    pub(super) fn append_retained(
        &mut self,
        topic: &str,
        payload: &[u8],
        qos: QoS,
        properties: Option<&Properties>,
    ) -> u64 {
        self.append(|out| persist::append_retained(out, topic, payload, qos, properties))
    }

    /// Appends the record `write` writes (with `persist::append_record`); returns its number.
    pub(super) fn append(&mut self, write: impl FnOnce(&mut Vec<u8>)) -> u64 {
        self.appended += 1;
        if !self.failed {
            self.unwritten.push(Unwritten {
                offset: self.pending.len(),
                session: NOT_VOIDABLE,
                message_id: 0,
            });
            write(&mut self.pending);
        }
        self.appended
    }

    /// Appends the record of a QoS 1 message owed to `session`, known by `message_id` until
    /// the batch is cut; returns its number (its low 32 bits are the message's `log_tag`).
    pub(super) fn append_unwritten(
        &mut self,
        session: u32,
        message_id: u32,
        write: impl FnOnce(&mut Vec<u8>),
    ) -> u64 {
        let record = self.append(write);
        if let Some(last) = self.unwritten.last_mut().filter(|_| !self.failed) {
            last.session = session;
            last.message_id = message_id;
        }
        record
    }

    /// `session` acknowledged QoS 1 message `message_id`, whose window entry says `log_tag`:
    /// when its record is still in `pending`, it is voided (and no `Delivered` is needed).
    /// Returns whether it was. The tag finds the record; the session and the message id
    /// confirm it (a tag from 2^32 records ago names another; one of the same session and
    /// message is as good, equal messages being interchangeable).
    pub(super) fn void_unwritten(&mut self, session: u32, message_id: u32, log_tag: u32) -> bool {
        let first = self.batch_upto + 1;
        let back = u64::from(log_tag.wrapping_sub(first as u32));
        if log_tag == 0 || back >= self.appended - self.batch_upto {
            return false;
        }
        let Some(unwritten) = self.unwritten.get(back as usize) else {
            return false;
        };
        let offset = unwritten.offset;
        let same = unwritten.session == session
            && unwritten.message_id == message_id
            && session != NOT_VOIDABLE;
        if !same || self.pending[offset] == VOID {
            return false;
        }
        self.pending[offset] = VOID;
        self.voided += 1;
        self.voided_since_look = true;
        true
    }

    /// Whether record `record` was voided (while its batch is not cut: after the cut, its
    /// wait ends with the batch's fdatasync).
    pub(super) fn is_voided(&self, record: u64) -> bool {
        let Some(back) = record.checked_sub(self.batch_upto + 1) else {
            return false;
        };
        self.unwritten
            .get(back as usize)
            .is_some_and(|u| self.pending.get(u.offset) == Some(&VOID))
    }

    /// Whether a record was voided since the last call.
    pub(super) fn take_voided(&mut self) -> bool {
        std::mem::take(&mut self.voided_since_look)
    }

    /// Removes the voided records from `pending`, moving the others down, once per batch.
    fn squeeze_pending(&mut self) {
        self.unwritten.clear();
        if self.voided == 0 {
            return;
        }
        self.voided = 0;
        let pending = &mut self.pending;
        let (mut at, mut kept) = (0, 0);
        while at < pending.len() {
            let body = u32::from_le_bytes(pending[at + 1..at + 5].try_into().expect("4 bytes"));
            let len = persist::RECORD_HEADER + body as usize;
            if pending[at] != VOID {
                pending.copy_within(at..at + len, kept);
                kept += len;
            }
            at += len;
        }
        pending.truncate(kept);
    }

    /// At the end of a turn: the pending records' write, or an fdatasync that is due.
    /// Returns whether a new batch was cut, and whether `durable` advanced without one (every
    /// record appended since the last batch was voided: nothing to store).
    pub(super) fn turn_ends(&mut self, ring: &mut Ring) -> (bool, bool) {
        if self.in_flight != InFlight::Idle || self.failed {
            return (false, false);
        }
        match self.compaction {
            Compaction::Idle
                if self.offset > self.compact_min_bytes && self.offset > 2 * self.live_bytes =>
            {
                self.start_compaction(ring);
            }
            Compaction::Ready { .. } => {
                // The old log is quiet: the tail goes now, and new batches wait for the switch.
                self.write_tail(ring);
                return (false, false);
            }
            // The tail is being written: the switch comes first.
            Compaction::Writing {
                tail_at: Some(_), ..
            }
            | Compaction::Syncing {
                tail_written: true, ..
            } => return (false, false),
            _ => {}
        }
        self.squeeze_pending();
        if !self.pending.is_empty() {
            persist::append_commit(&mut self.pending);
            self.writing.clear();
            std::mem::swap(&mut self.pending, &mut self.writing);
            self.written = 0;
            self.batch_upto = self.appended;
            self.submit_write(ring);
            return (true, false);
        }
        if self.appended > self.batch_upto && self.written_upto == self.durable {
            // Records were appended and all voided; everything before them is durable.
            self.batch_upto = self.appended;
            self.written_upto = self.appended;
            self.durable = self.appended;
            return (false, true);
        }
        if self.sync_due && self.written_upto > self.durable {
            self.submit_sync(ring, self.written_upto);
        }
        (false, false)
    }

    /// Every record appended is durable, and nothing is in flight.
    fn settled(&self) -> bool {
        self.in_flight == InFlight::Idle && self.pending.is_empty() && !self.failed
    }

    fn submit_write(&mut self, ring: &mut Ring) {
        let rest = &self.writing[self.written..];
        let len = rest.len().min(u32::MAX as usize / 2) as u32;
        self.in_flight = InFlight::Writing;
        // SAFETY: `writing` is neither touched nor dropped while the write is in flight: it is
        // swapped only when `in_flight` is `Idle`, and `stop` waits for the ring's operations
        // (`cancel_all`) before the shard, which owns it, is dropped.
        unsafe {
            ring.write_file(
                self.file.as_raw_fd(),
                rest.as_ptr(),
                len,
                self.offset,
                Token::shard(Op::LogWrite),
            )
        };
    }

    fn submit_sync(&mut self, ring: &mut Ring, upto: u64) {
        self.in_flight = InFlight::Syncing;
        self.syncing_upto = upto;
        self.sync_due = false;
        ring.datasync_file(self.file.as_raw_fd(), Token::shard(Op::LogSync));
    }

    /// A write completed with `result`. Returns whether `durable` advanced.
    pub(super) fn on_write(&mut self, ring: &mut Ring, result: i32) -> bool {
        if result <= 0 {
            self.fail("write", result);
            return false;
        }
        self.written += result as usize;
        self.offset += result as u64;
        if self.written < self.writing.len() {
            self.submit_write(ring);
            return false;
        }
        self.in_flight = InFlight::Idle;
        self.written_upto = self.batch_upto;
        if !matches!(self.compaction, Compaction::Idle) {
            self.tail.extend_from_slice(&self.writing);
        }
        match self.sync {
            PersistenceSync::Ack => {
                self.submit_sync(ring, self.written_upto);
                false
            }
            PersistenceSync::Interval => {
                // Acks did not wait; the records are in the page cache, safe from a crash of
                // the process, and on disk once the timer's fdatasync completes.
                self.durable = self.written_upto;
                if !self.timer_armed {
                    self.timer_armed = true;
                    let interval: *const Timespec = &*self.interval;
                    // SAFETY: the box lives as long as the shard (see `submit_write`).
                    unsafe { ring.timeout(interval, Token::shard(Op::LogTimer)) };
                }
                true
            }
        }
    }

    /// An fdatasync completed with `result`. Returns whether `durable` advanced.
    pub(super) fn on_sync(&mut self, result: i32) -> bool {
        if result < 0 {
            self.fail("fdatasync", result);
            return false;
        }
        self.in_flight = InFlight::Idle;
        let advanced = self.syncing_upto > self.durable;
        self.durable = self.durable.max(self.syncing_upto);
        advanced
    }

    /// The interval's timer fired: written records are due for their fdatasync.
    pub(super) fn on_timer(&mut self) {
        self.timer_armed = false;
        self.sync_due = true;
    }

    fn fail(&mut self, what: &str, result: i32) {
        self.failed = true;
        self.in_flight = InFlight::Idle;
        self.pending = Vec::new();
        self.unwritten.clear();
        self.voided = 0;
        log::error!(
            "persistence log {}: {what} failed: {}; nothing more is written, and acks that \
             depend on it are no longer sent",
            self.path.display(),
            std::io::Error::from_raw_os_error(-result)
        );
    }

    /// At stop, after the ring's operations ended: what is still in memory goes to disk
    /// (SIGTERM loses nothing that was handled, acked or not).
    pub(super) fn stop(&mut self) {
        if let Compaction::Writing { next, .. }
        | Compaction::Syncing { next, .. }
        | Compaction::Ready { next } = &self.compaction
        {
            // Never switched to: the old log is whole.
            let _ = std::fs::remove_file(&next.path);
        }
        if self.failed {
            return;
        }
        let mut result = Ok(());
        if self.in_flight == InFlight::Writing {
            // Its completion was never reaped: write it again (the same bytes at the same
            // offset, whatever part the kernel already wrote).
            result = self
                .file
                .write_all_at(&self.writing[self.written..], self.offset);
            self.offset += (self.writing.len() - self.written) as u64;
        }
        self.squeeze_pending();
        if !self.pending.is_empty() {
            persist::append_commit(&mut self.pending);
        }
        let result = result
            .and_then(|()| self.file.write_all_at(&self.pending, self.offset))
            .and_then(|()| self.file.sync_data());
        if let Err(e) = result {
            log::error!(
                "persistence log {}: final write failed: {e}",
                self.path.display()
            );
        }
        self.offset += self.pending.len() as u64;
        self.pending.clear();
        self.in_flight = InFlight::Idle;
    }
}

impl Shard {
    /// Before the turn's outboxes go: acks that waited only for records their subscribers'
    /// PUBACKs voided this turn go too (before the cut, which forgets what was voided).
    pub(super) fn release_voided(&mut self) {
        if self
            .durable
            .as_deref_mut()
            .is_some_and(Durable::take_voided)
        {
            self.release_held();
        }
    }

    /// The turn's end for the log: its batch goes out; with several shards and `sync =
    /// "ack"`, what this shard took from each other shard's ring is published as durable once
    /// the records it caused are (`Peers::durable_taken`): their publishers' acks wait for that
    /// (`held.rs`), as a local publisher's wait for `DISK`.
    pub(super) fn durable_turn_ends(&mut self) {
        let Some(durable) = self.durable.as_deref_mut() else {
            return;
        };
        let (cut, advanced) = durable.turn_ends(&mut self.rings[0]);
        if advanced {
            self.release_held();
        }
        let Some(durable) = self.durable.as_deref_mut() else {
            return;
        };
        if self.shard_count == 1 || !durable.acks_wait() {
            return;
        }
        if cut || durable.settled() {
            let mesh = &self.mesh;
            durable.batch_taken.clear();
            durable
                .batch_taken
                .extend((0..self.shard_count).map(|source| mesh.taken_from(source)));
        }
        if !cut && durable.settled() {
            // Nothing taken since the last batch caused a record: durable as it is.
            self.publish_durable_taken();
        }
    }

    /// The log's fdatasync completed: what was taken before its batch was cut is durable.
    pub(super) fn on_durable_sync(&mut self) {
        if self.shard_count > 1 && self.durable.as_deref().is_some_and(Durable::acks_wait) {
            self.publish_durable_taken();
        }
    }

    fn publish_durable_taken(&mut self) {
        let Some(durable) = self.durable.as_deref() else {
            return;
        };
        let mut moved = 0u64;
        for (source, &taken) in durable.batch_taken.iter().enumerate() {
            if source != self.index && self.peers.set_durable_taken(source, self.index, taken) {
                moved |= 1 << source;
            }
        }
        if moved == 0 {
            return;
        }
        // Pairs with the sleeper's fence between setting its flag and checking its holds.
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        let mut sleepers = 0u64;
        super::peers::for_each_bit(moved, |source| {
            if self.peers.is_backlogged_sleeper(source) {
                sleepers |= 1 << source;
            }
        });
        self.wake(sleepers);
    }

    /// Whether what an ack waits for happened (`held.rs`): for `DISK`, the record is on disk;
    /// for a shard, it took the message from its ring, and with persistence on and `sync =
    /// "ack"` also made durable what the message caused there.
    pub(super) fn wait_over(&self, (target, sequence): (u16, usize)) -> bool {
        if target == DISK {
            return self.durable_upto() >= sequence as u64;
        }
        if target == VOIDABLE {
            return self.durable_upto() >= sequence as u64
                || self
                    .durable
                    .as_deref()
                    .is_some_and(|d| d.is_voided(sequence as u64));
        }
        let target = usize::from(target);
        match self.durable.as_deref() {
            Some(durable) if durable.acks_wait() => {
                let taken = self.peers.durable_taken(self.index, target);
                // Sequences wrap: "passed" within half the number space, as `mesh.taken`.
                (taken.wrapping_sub(sequence) as isize) > 0
            }
            _ => self.mesh.taken(target, sequence),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (kind, client id) of each record in `bytes`.
    fn kinds(bytes: &[u8]) -> Vec<(u8, String)> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let len = u32::from_le_bytes(bytes[at + 1..at + 5].try_into().unwrap()) as usize;
            let body = &bytes[at + persist::RECORD_HEADER..at + persist::RECORD_HEADER + len];
            let id_len = u16::from_le_bytes(body[..2].try_into().unwrap()) as usize;
            out.push((
                bytes[at],
                String::from_utf8(body[2..2 + id_len].to_vec()).unwrap(),
            ));
            at += persist::RECORD_HEADER + len;
        }
        out
    }

    #[test]
    fn a_qos1_message_acknowledged_before_its_batch_is_cut_is_never_written() {
        let path = std::env::temp_dir().join(format!("ringmq-void-{}.log", std::process::id()));
        let file = File::create(&path).unwrap();
        let log = Log {
            file,
            path: path.clone(),
            offset: 0,
        };
        let mut durable = Durable::new(log, &Persistence::default());
        let message = |client: &str, payload: &[u8]| {
            let client = client.to_string();
            let payload = payload.to_vec();
            move |out: &mut Vec<u8>| {
                persist::append_message(out, &client, "t", &payload, QoS::AtLeastOnce, false, None)
            }
        };
        durable.append(|out| persist::append_session(out, "a", 4, 0, 0));
        let id = persist::message_id("t", b"1");
        let first = durable.append_unwritten(1, id, message("a", b"1")) as u32;
        // An equal message for the same session, and the same one for another session.
        let second = durable.append_unwritten(1, id, message("a", b"1")) as u32;
        let other = durable.append_unwritten(2, id, message("b", b"1")) as u32;
        durable.append(|out| persist::append_subscribe(out, "a", "t/#", 1, 0));
        assert!(durable.void_unwritten(1, id, first));
        // Once only; and a tag must name the session's message.
        assert!(!durable.void_unwritten(1, id, first));
        assert!(!durable.void_unwritten(1, id, other));
        assert!(!durable.void_unwritten(1, persist::message_id("t", b"2"), second));
        assert!(!durable.void_unwritten(1, id, 0));
        assert!(!durable.void_unwritten(1, id, 99));
        assert!(durable.void_unwritten(1, id, second));
        durable.squeeze_pending();
        let kind = |k: persist::Kind, c: &str| (k as u8, c.to_string());
        assert_eq!(
            kinds(&durable.pending),
            [
                kind(persist::Kind::Session, "a"),
                kind(persist::Kind::Message, "b"),
                kind(persist::Kind::Subscribe, "a"),
            ]
        );
        // The numbers handed out stay as they were: acks wait on them.
        assert_eq!((first, durable.appended), (2, 5));
        // After the cut (here: the squeeze alone) nothing of the old batch is known.
        assert!(!durable.void_unwritten(2, id, other));
        let _ = std::fs::remove_file(&path);
    }
}
