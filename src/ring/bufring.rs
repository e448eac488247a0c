//! The provided-buffer ring: one pool of receive buffers per ring, shared by every connection.
//! A multishot recv picks a buffer only when bytes arrive, so an idle connection owns none; the
//! shard copies the bytes out and hands the buffer straight back (`recycle`), so the pool only
//! has to cover the receives of one loop turn, not the number of connections.
//!
//! Both the ring of entries and the buffers are anonymous mappings: the kernel wants the entry
//! ring page-aligned, and the pages stay put for as long as the kernel may write into them
//! (the owning `Ring` drops the io_uring before this).

use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;
use io_uring::Submitter;

pub struct BufRing {
    entries: *mut BufRingEntry,
    entries_len: usize,
    buffers: *mut u8,
    buffers_len: usize,
    count: u16,
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
        let mut ring = BufRing {
            entries,
            entries_len,
            buffers,
            buffers_len,
            count,
            size,
            tail: 0,
            group,
        };
        // SAFETY: the entry ring is page-aligned, `count` entries long, and lives until drop,
        // which happens after the io_uring that uses it is gone (field order in `Ring`).
        unsafe { submitter.register_buf_ring_with_flags(entries as u64, count, group, 0)? };
        for bid in 0..count {
            ring.push(bid);
        }
        ring.publish();
        Ok(ring)
    }

    pub fn group(&self) -> u16 {
        self.group
    }

    pub fn buffer_size(&self) -> u32 {
        self.size
    }

    /// The first `len` bytes of buffer `bid`, as the kernel filled them.
    pub fn get(&self, bid: u16, len: usize) -> &[u8] {
        assert!(bid < self.count, "buffer id {bid} out of range");
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
        assert!(bid < self.count, "buffer id {bid} out of range");
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

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: both regions were mapped in `new` with exactly these lengths.
        unsafe {
            libc::munmap(self.entries.cast(), self.entries_len);
            libc::munmap(self.buffers.cast(), self.buffers_len);
        }
    }
}
