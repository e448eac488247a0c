//! Compaction of a running shard's log (`Durable`, `mod.rs`).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use crate::persist;
use crate::ring::{Op, Ring, Token};

use super::Durable;

/// Bytes a compaction reads back at a time (a larger batch makes the buffer grow to hold it).
const COMPACT_READ: usize = 1 << 20;

/// Compaction while running: the log's first `end` bytes are read back through the ring, a
/// slice of [`COMPACT_READ`] bytes per read, each replayed as it comes (`persist::Compactor`:
/// no copy of the whole log in memory), into the fewest records that say the same, written to a
/// new file beside it, while the shard goes on appending to the old one; batches written
/// meanwhile are kept (`tail`). Then, with the old log quiet (no write in flight, new batches
/// held back for that moment), the tail follows the snapshot, the new file is synced and
/// renamed over the old one (an atomic switch: a crash before it leaves the old log whole,
/// after it the new one), and appending goes on there. Every byte goes through the ring; the
/// new file's creation, the rename and the directory's fsync are plain calls, once each.
pub(super) enum Compaction {
    Idle,
    Reading {
        /// `buf[..filled]`: read, not yet replayed (a batch cut by the last read's end).
        buf: Vec<u8>,
        filled: usize,
        /// The log's offset of `buf[filled]`, and where the read stops.
        at: u64,
        end: u64,
        compactor: Box<persist::Compactor>,
    },
    /// The snapshot, then (`tail_at`: where the tail starts in `buf`) the tail.
    Writing {
        next: NewLog,
        buf: Vec<u8>,
        done: usize,
        tail_at: Option<usize>,
    },
    Syncing {
        next: NewLog,
        tail_written: bool,
    },
    /// The snapshot is on disk: the tail goes once the old log is quiet.
    Ready {
        next: NewLog,
    },
}

pub(super) struct NewLog {
    file: File,
    pub(super) path: PathBuf,
    len: u64,
}

impl Durable {
    pub(super) fn start_compaction(&mut self, ring: &mut Ring) {
        self.tail.clear();
        self.compaction = Compaction::Reading {
            buf: vec![0; COMPACT_READ.min(self.offset as usize)],
            filled: 0,
            at: 0,
            end: self.offset,
            compactor: Box::new(persist::Compactor::new(&self.path)),
        };
        self.submit_compact_read(ring);
    }

    fn submit_compact_read(&mut self, ring: &mut Ring) {
        let Compaction::Reading {
            buf,
            filled,
            at,
            end,
            ..
        } = &mut self.compaction
        else {
            return;
        };
        let rest = &mut buf[*filled..];
        let len = (rest.len() as u64).min(*end - *at).min(u32::MAX as u64 / 2) as u32;
        // SAFETY: the buffer is neither touched nor dropped while the read is in flight: the
        // state changes only on its completion, and `stop` waits for the ring's operations.
        unsafe {
            ring.read_file(
                self.file.as_raw_fd(),
                rest.as_mut_ptr(),
                len,
                *at,
                Token::shard(Op::CompactRead),
            )
        };
    }

    fn submit_compact_write(&mut self, ring: &mut Ring) {
        let Compaction::Writing {
            next, buf, done, ..
        } = &self.compaction
        else {
            return;
        };
        let rest = &buf[*done..];
        let len = rest.len().min(u32::MAX as usize / 2) as u32;
        let offset = next.len + *done as u64;
        // SAFETY: as `submit_compact_read`.
        unsafe {
            ring.write_file(
                next.file.as_raw_fd(),
                rest.as_ptr(),
                len,
                offset,
                Token::shard(Op::CompactWrite),
            )
        };
    }

    /// The old log is quiet and the snapshot on disk: the batches written since the read
    /// began follow it in the new file.
    pub(super) fn write_tail(&mut self, ring: &mut Ring) {
        let Compaction::Ready { next } = std::mem::replace(&mut self.compaction, Compaction::Idle)
        else {
            return;
        };
        let buf = std::mem::take(&mut self.tail);
        if buf.is_empty() {
            self.sync_new_log(ring, next, true);
            return;
        }
        self.compaction = Compaction::Writing {
            next,
            buf,
            done: 0,
            tail_at: Some(0),
        };
        self.submit_compact_write(ring);
    }

    /// A completion of the compaction's read, writes or fdatasync.
    pub(in crate::shard) fn on_compact(&mut self, ring: &mut Ring, op: Op, result: i32) {
        if result < 0 || (op != Op::CompactSync && result == 0) {
            let what = match op {
                Op::CompactRead => "read",
                Op::CompactWrite => "write",
                _ => "fdatasync",
            };
            self.abandon_compaction(&format!(
                "{what} failed: {}",
                std::io::Error::from_raw_os_error(-result.min(-1))
            ));
            return;
        }
        match op {
            Op::CompactRead => self.on_compact_read(ring, result as usize),
            Op::CompactWrite => {
                let Compaction::Writing { buf, done, .. } = &mut self.compaction else {
                    return;
                };
                *done += result as usize;
                if *done < buf.len() {
                    self.submit_compact_write(ring);
                    return;
                }
                let Compaction::Writing {
                    mut next,
                    buf,
                    tail_at,
                    ..
                } = std::mem::replace(&mut self.compaction, Compaction::Idle)
                else {
                    return;
                };
                next.len += buf.len() as u64;
                self.sync_new_log(ring, next, tail_at.is_some());
            }
            _ => {
                let Compaction::Syncing { next, tail_written } =
                    std::mem::replace(&mut self.compaction, Compaction::Idle)
                else {
                    return;
                };
                if tail_written {
                    self.switch(next);
                } else {
                    self.compaction = Compaction::Ready { next };
                }
            }
        }
    }

    fn on_compact_read(&mut self, ring: &mut Ring, read: usize) {
        let Compaction::Reading {
            buf,
            filled,
            at,
            end,
            compactor,
        } = &mut self.compaction
        else {
            return;
        };
        *filled += read;
        *at += read as u64;
        let used = match compactor.feed(&buf[..*filled]) {
            Ok(used) => used,
            Err(e) => return self.abandon_compaction(&e),
        };
        buf.copy_within(used..*filled, 0);
        *filled -= used;
        if *at < *end {
            if *filled == buf.len() {
                // One batch larger than the buffer.
                buf.resize(2 * buf.len(), 0);
            }
            self.submit_compact_read(ring);
            return;
        }
        if *filled != 0 {
            // What is read back was written whole, batch by batch.
            return self.abandon_compaction("the log read back ends inside a batch");
        }
        let Compaction::Reading { compactor, .. } =
            std::mem::replace(&mut self.compaction, Compaction::Idle)
        else {
            return;
        };
        let snapshot = compactor.finish();
        let path = self.path.with_extension("compact");
        let file = match std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
        {
            Ok(file) => file,
            Err(e) => return self.abandon_compaction(&format!("create {}: {e}", path.display())),
        };
        let next = NewLog { file, path, len: 0 };
        if snapshot.is_empty() {
            // Nothing live: straight to the fdatasync (of an empty file).
            self.sync_new_log(ring, next, false);
            return;
        }
        self.compaction = Compaction::Writing {
            next,
            buf: snapshot,
            done: 0,
            tail_at: None,
        };
        self.submit_compact_write(ring);
    }

    /// What is written to the new log (`tail_written`: the tail too, not only the snapshot)
    /// goes to disk: an fdatasync, then `Op::CompactSync`.
    fn sync_new_log(&mut self, ring: &mut Ring, next: NewLog, tail_written: bool) {
        let fd = next.file.as_raw_fd();
        self.compaction = Compaction::Syncing { next, tail_written };
        ring.datasync_file(fd, Token::shard(Op::CompactSync));
    }

    /// The new log holds the snapshot and the tail, on disk: it replaces the old one.
    fn switch(&mut self, next: NewLog) {
        let renamed = std::fs::rename(&next.path, &self.path).and_then(|()| {
            let dir = self.path.parent().unwrap_or(std::path::Path::new("."));
            File::open(dir).and_then(|dir| dir.sync_all())
        });
        if let Err(e) = renamed {
            let _ = std::fs::remove_file(&next.path);
            return self.abandon_compaction(&format!("rename: {e}"));
        }
        let before = self.offset;
        self.file = next.file;
        self.offset = next.len;
        self.live_bytes = next.len;
        log::info!(
            "persistence log {}: compacted, {before} -> {} bytes",
            self.path.display(),
            next.len
        );
    }

    /// Compaction failed: the old log goes on as it was (it lacks nothing), and the next try
    /// waits until it has doubled again.
    fn abandon_compaction(&mut self, why: &str) {
        let old = std::mem::replace(&mut self.compaction, Compaction::Idle);
        let next = match old {
            Compaction::Writing { next, .. }
            | Compaction::Syncing { next, .. }
            | Compaction::Ready { next } => Some(next),
            _ => None,
        };
        if let Some(next) = next {
            let _ = std::fs::remove_file(&next.path);
        }
        self.tail = Vec::new();
        self.live_bytes = self.offset;
        log::warn!(
            "persistence log {}: compaction abandoned ({why}); the log goes on uncompacted",
            self.path.display()
        );
    }
}
