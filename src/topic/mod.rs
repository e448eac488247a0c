//! Topic names and filters (`filter`), the subscription trie each shard matches publishes against
//! (`trie`), and the retained-message store new subscriptions are answered from (`retained`).
//!
//! All three split levels on `/` over borrowed `&str`s; matching allocates nothing.

pub mod filter;
pub mod retained;
mod stack;
pub mod trie;

pub use filter::{
    matches, parse_shared, validate_topic_filter, validate_topic_name, TopicError, SHARE_PREFIX,
    TOPIC_BYTES_MAX,
};
pub use retained::RetainedStore;
pub use trie::Trie;

/// Counts heap allocations per thread, so tests can assert that matching allocates nothing.
/// It is the global allocator of the library's unit-test binary only (the broker binary uses
/// mimalloc); it forwards to the system allocator.
#[cfg(test)]
pub(crate) mod alloc_count {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    thread_local! {
        static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
    }

    struct Counting;

    // SAFETY: forwards every call to `System` unchanged; the counter is a const-initialized
    // thread-local `Cell`, which itself never allocates.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            ALLOCATIONS.with(|n| n.set(n.get() + 1));
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            unsafe { System.dealloc(ptr, layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            ALLOCATIONS.with(|n| n.set(n.get() + 1));
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
}
