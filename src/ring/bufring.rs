//! The provided-buffer ring: one pool of receive buffers per ring, shared by every connection.
//! A multishot recv picks a buffer only when bytes arrive, so an idle connection owns none; the
//! shard copies the bytes out and hands the buffer straight back (`recycle`), so the pool only
//! has to cover the receives of one loop turn, not the number of connections.
//!
//! A pool starts with `PROVIDED_START` of its buffers in circulation and doubles them each
//! time a receive finds none left (-ENOBUFS, `grow`), up to its `count`: the kernel takes
//! buffers in ring order, so every buffer handed to it is soon touched and resident, and a
//! shard whose turns never need many (idle connections) keeps 256 KiB of 4 KiB buffers per
//! ring instead of the whole pool.
//!
//! Both the ring of entries and the buffers are anonymous mappings: the kernel wants the entry
//! ring page-aligned, and the pages stay put for as long as the kernel may write into them
//! (the owning `Ring` drops the io_uring before this).
//!
//! A simulated ring (`super::sim`) uses the same memory unregistered: the simulated kernel takes
//! buffers from the entry ring exactly as the kernel does (`kernel_take`), so `recycle` is the
//! code under test there too.

use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;
use io_uring::Submitter;

/// Buffers a pool hands the kernel at first (or all of them, if fewer).
pub const PROVIDED_START: u16 = 64;

pub struct BufRing {
    entries: *mut BufRingEntry,
    entries_len: usize,
    buffers: *mut u8,
    buffers_len: usize,
    /// Entries in the ring, and the most buffers it may circulate.
    count: u16,
    /// Buffers in circulation (ids `0..provided`): a power of two, at most `count`.
    provided: u16,
    size: u32,
    /// Our copy of the tail; published to the kernel with a release store after each change.
    tail: u16,
    group: u16,
}

// The mappings are owned by this value alone and used only by the thread owning the ring.
unsafe impl Send for BufRing {}

fn map_anonymous(len: usize) -> io::Result<*mut u8> {
    // SAFETY: a fresh private anonymous mapping; no existing memory is touched.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(ptr.cast())
}

impl BufRing {
    /// Maps `count` buffers of `size` bytes, registers them as buffer group `group` and hands
    /// them all to the kernel. `count` must be a power of two, at most 32768.
    pub fn new(
        submitter: &Submitter<'_>,
        group: u16,
        count: u16,
        size: u32,
    ) -> io::Result<BufRing> {
        let mut ring = BufRing::map(group, count, size)?;
        // SAFETY: the entry ring is page-aligned, `count` entries long, and lives until drop,
        // which happens after the io_uring that uses it is gone (field order in `Ring`).
        unsafe { submitter.register_buf_ring_with_flags(ring.entries as u64, count, group, 0)? };
        ring.provide_all();
        Ok(ring)
    }

    /// The same pool for a simulated ring: mapped and provided, registered nowhere.
    pub fn unregistered(group: u16, count: u16, size: u32) -> io::Result<BufRing> {
        let mut ring = BufRing::map(group, count, size)?;
        ring.provide_all();
        Ok(ring)
    }

    fn map(group: u16, count: u16, size: u32) -> io::Result<BufRing> {
        if !count.is_power_of_two() || count > 32768 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("recv_buffer_count = {count}: must be a power of two, at most 32768"),
            ));
        }
        let entries_len = count as usize * std::mem::size_of::<BufRingEntry>();
        let buffers_len = count as usize * size as usize;
        let entries = map_anonymous(entries_len)?.cast::<BufRingEntry>();
        let buffers = match map_anonymous(buffers_len) {
            Ok(ptr) => ptr,
            Err(e) => {
                // SAFETY: `entries` was mapped just above with this length.
                unsafe { libc::munmap(entries.cast(), entries_len) };
                return Err(e);
            }
        };
        Ok(BufRing {
            entries,
            entries_len,
            buffers,
            buffers_len,
            count,
            provided: count.min(PROVIDED_START),
            size,
            tail: 0,
            group,
        })
    }

    /// Hands the first `provided` buffers to the kernel.
    fn provide_all(&mut self) {
        self.provide(0..self.provided);
    }

    /// Doubles the buffers in circulation (a receive found none left), up to `count`.
    pub fn grow(&mut self) {
        let grown = (self.provided * 2).min(self.count);
        self.provide(self.provided..grown);
        self.provided = grown;
    }

    fn provide(&mut self, bids: std::ops::Range<u16>) {
        for bid in bids {
            self.push(bid);
        }
        self.publish();
    }

    /// Buffers in circulation.
    pub fn provided(&self) -> u16 {
        self.provided
    }

    pub fn group(&self) -> u16 {
        self.group
    }

    pub fn buffer_size(&self) -> u32 {
        self.size
    }

    /// The first `len` bytes of buffer `bid`, as the kernel filled them.
    pub fn get(&self, bid: u16, len: usize) -> &[u8] {
        assert!(bid < self.provided, "buffer id {bid} out of range");
        assert!(
            len <= self.size as usize,
            "recv length {len} over the buffer size"
        );
        // SAFETY: bid and len are within the mapping (asserted); the kernel gave this buffer
        // to us with the completion and does not touch it again until it is recycled.
        unsafe {
            std::slice::from_raw_parts(self.buffers.add(bid as usize * self.size as usize), len)
        }
    }

    /// Hands buffer `bid` back to the kernel as soon as its bytes have been copied out.
    pub fn recycle(&mut self, bid: u16) {
        assert!(bid < self.provided, "buffer id {bid} out of range");
        self.push(bid);
        self.publish();
    }

    fn push(&mut self, bid: u16) {
        let index = (self.tail & (self.count - 1)) as usize;
        // SAFETY: index < count, inside the entry mapping; the kernel only reads entries
        // between its head and the published tail, and this one is past the tail.
        let entry = unsafe { &mut *self.entries.add(index) };
        entry.set_addr(self.buffers as u64 + bid as u64 * self.size as u64);
        entry.set_len(self.size);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        // SAFETY: the tail field overlays entry 0's reserved field, inside the mapping, and
        // the kernel reads it with an acquire load.
        unsafe {
            let tail = BufRingEntry::tail(self.entries) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }
}

impl BufRing {
    /// The kernel's side, for the simulated kernel: the next buffer provided after `head`
    /// (the kernel's own head, which it keeps), read from the entry ring as the kernel reads
    /// it. `None`: the ring is empty (the kernel's -ENOBUFS).
    pub fn kernel_take(&mut self, head: &mut u16) -> Option<(u16, &mut [u8])> {
        // SAFETY: as in `publish`; an acquire load pairs with its release store.
        let tail = unsafe {
            (*(BufRingEntry::tail(self.entries) as *const AtomicU16)).load(Ordering::Acquire)
        };
        if *head == tail {
            return None;
        }
        // More buffers provided than exist: one was recycled twice (or never taken).
        assert!(
            tail.wrapping_sub(*head) <= self.provided,
            "buffer ring holds {} entries for {} buffers: a buffer was recycled twice",
            tail.wrapping_sub(*head),
            self.provided
        );
        // SAFETY: the index is masked into the entry mapping.
        let entry = unsafe { &*self.entries.add((*head & (self.count - 1)) as usize) };
        *head = head.wrapping_add(1);
        let (bid, addr, len) = (entry.bid(), entry.addr(), entry.len() as usize);
        let start = self.buffers as u64;
        assert!(
            bid < self.provided
                && addr >= start
                && addr + len as u64 <= start + self.buffers_len as u64,
            "provided buffer {bid} at {addr:#x} (+{len}) lies outside the pool"
        );
        // SAFETY: inside the buffer mapping (asserted); the buffer is the kernel's until the
        // completion that names it hands it to the shard.
        Some((bid, unsafe {
            std::slice::from_raw_parts_mut(addr as *mut u8, len)
        }))
    }

    /// Buffers provided past the kernel's `head`.
    pub fn kernel_available(&self, head: u16) -> u16 {
        self.tail.wrapping_sub(head)
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: both regions were mapped in `new` with exactly these lengths.
        unsafe {
            libc::munmap(self.entries.cast(), self.entries_len);
            libc::munmap(self.buffers.cast(), self.buffers_len);
        }
    }
}
