//! The shard's persistence log (issue 10; the format and the replay are in `persist.rs`).
//!
//! Records appended while a turn handles packets wait in `pending`; at the turn's end they go
//! out with one IORING_OP_WRITE through the shard's own ring (no thread, no syscall of their
//! own), and with `sync = "ack"` one fdatasync follows the write. Records appended meanwhile
//! form the next batch: the slower the disk, the larger each batch (group commit). One
//! operation is in flight at a time, so the buffer the kernel reads never moves.
//!
//! An ack that depends on a record (a retained message's PUBACK/PUBREC) is held as the mesh
//! holds acks (`held.rs`), on the pseudo-target [`DISK`] with the record's number: it goes
//! out once `durable` has passed it. With `sync = "interval"` acks do not wait; written
//! records get their fdatasync at most `sync_interval_ms` later.
//!
//! A failed write or fdatasync (disk full, I/O error) stops the log for good: it is logged
//! once, nothing more is written, `durable` never advances again, so no ack that depends on a
//! record goes out any more (the clients' windows fill: back-pressure), and nothing is ever
//! acknowledged that is not stored.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use io_uring::types::Timespec;

use crate::config::{Persistence, PersistenceSync};
use crate::persist::{self, Log};
use crate::protocol::{Properties, QoS};
use crate::ring::{Op, Ring, Token};

/// The `held.rs` target that means "this shard's log": sequence = a record's number.
pub(super) const DISK: u16 = u16::MAX;

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
}

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
        }
    }

    /// Records on disk (with `sync = "ack"`; written, with `"interval"`).
    pub(super) fn durable(&self) -> u64 {
        self.durable
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
        self.appended += 1;
        if !self.failed {
            persist::append_retained(&mut self.pending, topic, payload, qos, properties);
        }
        self.appended
    }

    /// At the end of a turn: the pending records' write, or an fdatasync that is due.
    pub(super) fn turn_ends(&mut self, ring: &mut Ring) {
        if self.in_flight != InFlight::Idle || self.failed {
            return;
        }
        if !self.pending.is_empty() {
            self.writing.clear();
            std::mem::swap(&mut self.pending, &mut self.writing);
            self.written = 0;
            self.batch_upto = self.appended;
            self.submit_write(ring);
        } else if self.sync_due && self.written_upto > self.durable {
            self.submit_sync(ring, self.written_upto);
        }
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
    pub(super) fn on_write(&mut self, ring: &mut Ring, result: i32, shard: usize) -> bool {
        if result <= 0 {
            self.fail(shard, "write", result);
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
    pub(super) fn on_sync(&mut self, result: i32, shard: usize) -> bool {
        if result < 0 {
            self.fail(shard, "fdatasync", result);
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

    fn fail(&mut self, shard: usize, what: &str, result: i32) {
        self.failed = true;
        self.in_flight = InFlight::Idle;
        self.pending = Vec::new();
        eprintln!(
            "ringmq: shard {shard}: persistence log {}: {what} failed: {}; nothing more is \
             written, and acks that depend on it are no longer sent",
            self.path.display(),
            std::io::Error::from_raw_os_error(-result)
        );
    }

    /// At stop, after the ring's operations ended: what is still in memory goes to disk
    /// (SIGTERM loses nothing that was handled, acked or not).
    pub(super) fn stop(&mut self, shard: usize) {
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
        let result = result
            .and_then(|()| self.file.write_all_at(&self.pending, self.offset))
            .and_then(|()| self.file.sync_data());
        if let Err(e) = result {
            eprintln!(
                "ringmq: shard {shard}: persistence log {}: final write failed: {e}",
                self.path.display()
            );
        }
        self.offset += self.pending.len() as u64;
        self.pending.clear();
        self.in_flight = InFlight::Idle;
    }
}
