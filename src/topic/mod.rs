//! Topic names and filters (`filter`), the subscriptions each shard matches publishes against
//! (`subscriptions`: exact filters by hash, wildcard ones in the `trie`), and the
//! retained-message store new subscriptions are answered from (`retained`).
//!
//! They split levels on `/` over borrowed `&str`s; matching allocates nothing.

pub mod filter;
pub(crate) mod level_map;
pub mod retained;
pub(crate) mod stack;
pub mod subscriptions;
pub mod trie;

pub use filter::{
    matches, parse_shared, validate_topic_filter, validate_topic_name, TopicError, SHARE_PREFIX,
    TOPIC_BYTES_MAX,
};
pub use retained::RetainedStore;
pub use subscriptions::Subscriptions;
pub use trie::Trie;

/// Counts heap allocations and live bytes per thread, so tests can assert that matching allocates
/// nothing and measure what a structure costs per entry. It is the global allocator of the library's unit-test binary only (the broker binary uses
/// mimalloc); it forwards to the system allocator.
#[cfg(test)]
pub(crate) mod alloc_count {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    thread_local! {
        static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
        /// Bytes requested and not yet freed on this thread (negative when it frees memory another
        /// thread allocated).
        static LIVE_BYTES: Cell<i64> = const { Cell::new(0) };
        /// The same, in glibc chunk sizes (what `mallinfo2` and RSS see): the request plus an
        /// 8-byte header, rounded up to 16, at least 32.
        static LIVE_CHUNK_BYTES: Cell<i64> = const { Cell::new(0) };
    }

    fn chunk_size(size: usize) -> i64 {
        ((size + 8).div_ceil(16) * 16).max(32) as i64
    }

    fn account(size: usize, sign: i64) {
        LIVE_BYTES.with(|n| n.set(n.get() + sign * size as i64));
        LIVE_CHUNK_BYTES.with(|n| n.set(n.get() + sign * chunk_size(size)));
    }

    struct Counting;

    // SAFETY: forwards every call to `System` unchanged; the counter is a const-initialized
    // thread-local `Cell`, which itself never allocates.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            ALLOCATIONS.with(|n| n.set(n.get() + 1));
            account(layout.size(), 1);
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            account(layout.size(), -1);
            unsafe { System.dealloc(ptr, layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            ALLOCATIONS.with(|n| n.set(n.get() + 1));
            account(layout.size(), -1);
            account(new_size, 1);
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    #[global_allocator]
    static GLOBAL: Counting = Counting;

    /// Allocations made on this thread while running `f`.
    pub(crate) fn allocations_during(f: impl FnOnce()) -> u64 {
        let before = ALLOCATIONS.with(Cell::get);
        f();
        ALLOCATIONS.with(Cell::get) - before
    }

    /// Bytes requested and not yet freed on this thread, as (requested, glibc chunk) bytes.
    pub(crate) fn live_bytes() -> (i64, i64) {
        (LIVE_BYTES.with(Cell::get), LIVE_CHUNK_BYTES.with(Cell::get))
    }

    /// Heap bytes `make` leaves allocated on this thread in what it returns, as
    /// (requested, glibc chunk) bytes. The value is dropped after the count.
    pub(crate) fn live_bytes_of<T>(make: impl FnOnce() -> T) -> (i64, i64) {
        let before = (LIVE_BYTES.with(Cell::get), LIVE_CHUNK_BYTES.with(Cell::get));
        let value = make();
        let after = (LIVE_BYTES.with(Cell::get), LIVE_CHUNK_BYTES.with(Cell::get));
        drop(value);
        (after.0 - before.0, after.1 - before.1)
    }
}
