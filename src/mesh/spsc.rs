//! A bounded, lock-free, single-producer single-consumer ring: one per ordered pair of shards.
//!
//! Shaped for a shard loop that pushes and drains in batches:
//! - `head` (next slot to read, written only by the consumer) and `tail` (next slot to write,
//!   written only by the producer) sit on their own cache lines, so the two threads never write
//!   the same line.
//! - Each half keeps a private copy of the other half's index and reloads it only when the copy
//!   says the ring is full (producer) or empty (consumer): a batch of pushes touches the
//!   consumer's line at most once, and the other way round.
//! - `drain` takes a whole batch with one Acquire load of `tail` and one Release store of `head`;
//!   `try_write` then `publish` gives one batch with one Release store of `tail`, so a shard
//!   pushing many messages in a turn writes the line the consumer reads once per turn.
//! - Indexes grow without bound (wrapping) and are masked into a power-of-two slot array, so
//!   "full" (`tail - head == capacity`) and "empty" (`tail == head`) need no spare slot.
//!
//! A full ring never blocks: `try_push` hands the value back and the caller decides (the mesh
//! keeps it in a local overflow queue).
//!
//! Invariant, relied on by every `unsafe` block below: the slots at indexes `head..tail` (taken
//! modulo the capacity) hold initialised values and belong to the consumer; all other slots are
//! uninitialised and belong to the producer. The consumer's private `head` may run ahead of the
//! shared one (it publishes once per batch), which only makes the producer see fewer free slots.

use std::cell::{Cell, UnsafeCell};
use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam_utils::CachePadded;

/// Creates a ring holding at least `capacity` values (rounded up to a power of two) and returns
/// its two halves. Each half can move to another thread; neither can be shared or cloned, so
/// there is exactly one producer and one consumer.
///
/// Panics if `capacity` is 0 or cannot be rounded up to a power of two: configuration errors,
/// for config validation to catch first.
pub fn channel<T: Send>(capacity: usize) -> (Producer<T>, Consumer<T>) {
    assert!(capacity > 0, "spsc capacity must be at least 1");
    let capacity = capacity
        .checked_next_power_of_two()
        .expect("spsc capacity too large to round up to a power of two");
    let slots = (0..capacity)
        .map(|_| UnsafeCell::new(MaybeUninit::uninit()))
        .collect::<Box<[_]>>();
    let shared = Arc::new(Shared {
        head: CachePadded::new(AtomicUsize::new(0)),
        tail: CachePadded::new(AtomicUsize::new(0)),
        slots,
        mask: capacity - 1,
    });
    let producer = Producer {
        shared: Arc::clone(&shared),
        tail: 0,
        published: 0,
        head_cached: 0,
        _not_sync: PhantomData,
    };
    let consumer = Consumer {
        shared,
        head: 0,
        tail_cached: 0,
        _not_sync: PhantomData,
    };
    (producer, consumer)
}

struct Shared<T> {
    /// Next index to read. Stored by the consumer (Release), loaded by the producer (Acquire).
    head: CachePadded<AtomicUsize>,
    /// Next index to write. Stored by the producer (Release), loaded by the consumer (Acquire).
    tail: CachePadded<AtomicUsize>,
    slots: Box<[UnsafeCell<MaybeUninit<T>>]>,
    /// `capacity - 1`; capacity is a power of two.
    mask: usize,
}

impl<T> Shared<T> {
    fn capacity(&self) -> usize {
        self.mask + 1
    }

    fn slot(&self, index: usize) -> *mut MaybeUninit<T> {
        self.slots[index & self.mask].get()
    }
}

// SAFETY: `Shared` is only reached through one `Producer` and one `Consumer`. A slot is touched
// by one side at a time, and ownership of a slot passes between them through the Release store /
// Acquire load of `tail` (producer -> consumer) and `head` (consumer -> producer), so values of a
// `Send` type move between threads but are never accessed from two threads at once.
unsafe impl<T: Send> Send for Shared<T> {}
// SAFETY: as above; the shared references the two halves hold only reach slots they own.
unsafe impl<T: Send> Sync for Shared<T> {}

impl<T> Drop for Shared<T> {
    fn drop(&mut self) {
        // Both halves are gone (the last `Arc` is dropping, which synchronises with the other
        // half's drop). The consumer's drop published its private head, so `head..tail` is
        // exactly the set of values that were pushed and never taken.
        let head = *self.head.get_mut();
        let tail = *self.tail.get_mut();
        let mut index = head;
        while index != tail {
            // SAFETY: indexes in `head..tail` hold initialised values that nobody took; each is
            // dropped once, and the slots are never read again.
            unsafe { (*self.slot(index)).assume_init_drop() };
            index = index.wrapping_add(1);
        }
    }
}

/// The writing half. `Send` when `T` is; not `Sync`, not `Clone`.
pub struct Producer<T> {
    shared: Arc<Shared<T>>,
    /// Next index to write; the shared `tail` equals it after `publish`.
    tail: usize,
    /// The `tail` last published (our own copy: reading the shared one would touch the line
    /// the consumer reads).
    published: usize,
    /// Last `head` loaded from the consumer; the real one is at or past it.
    head_cached: usize,
    /// `Cell` is `Send` and `!Sync`: one thread at a time holds a producer.
    _not_sync: PhantomData<Cell<()>>,
}

impl<T> Producer<T> {
    /// Appends `value` and publishes it (`try_write` then `publish`), or hands it back when
    /// the ring is full. Never blocks.
    pub fn try_push(&mut self, value: T) -> Result<(), T> {
        self.try_write(value)?;
        self.publish();
        Ok(())
    }

    /// Appends `value` without publishing it, or hands it back when the ring is full: the
    /// consumer sees it after the next `publish`, so a batch of writes stores the shared
    /// `tail` (the line the consumer reads) once, not once per value. Never blocks.
    pub fn try_write(&mut self, value: T) -> Result<(), T> {
        let tail = self.tail;
        if tail.wrapping_sub(self.head_cached) == self.shared.capacity() {
            // Acquire: the consumer's reads out of the slots it freed happen before our writes.
            self.head_cached = self.shared.head.load(Ordering::Acquire);
            if tail.wrapping_sub(self.head_cached) == self.shared.capacity() {
                return Err(value);
            }
        }
        // SAFETY: `tail - head < capacity`, so slot `tail` is outside `head..tail`: it is
        // uninitialised and owned by the producer, and the consumer will not read it until
        // `publish`'s Release store makes it part of `head..tail`.
        unsafe { (*self.shared.slot(tail)).write(value) };
        self.tail = tail.wrapping_add(1);
        Ok(())
    }

    /// Makes every value written so far visible to the consumer: one Release store of `tail`,
    /// skipped when there is nothing new.
    pub fn publish(&mut self) {
        if self.published != self.tail {
            self.shared.tail.store(self.tail, Ordering::Release);
            self.published = self.tail;
        }
    }

    /// Values in the ring as the producer sees them: exact or an over-estimate by what the
    /// consumer took but has not yet published.
    pub fn len(&self) -> usize {
        self.tail
            .wrapping_sub(self.shared.head.load(Ordering::Acquire))
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn capacity(&self) -> usize {
        self.shared.capacity()
    }

    /// Values the consumer has taken since the ring was made (wrapping), as published at the
    /// end of its last batch: the value pushed as the n-th (from 0) is taken once this
    /// passes n. A producer that must not act before the consumer has seen a value watches
    /// this.
    pub fn taken(&self) -> usize {
        self.shared.head.load(Ordering::Acquire)
    }
}

/// The reading half. `Send` when `T` is; not `Sync`, not `Clone`.
pub struct Consumer<T> {
    shared: Arc<Shared<T>>,
    /// Next index to read. It may run ahead of the shared `head` inside a batch (and after a
    /// panic in a `drain` callback); `Drop` publishes it.
    head: usize,
    /// Last `tail` loaded from the producer; the real one is at or past it.
    tail_cached: usize,
    _not_sync: PhantomData<Cell<()>>,
}

impl<T> Consumer<T> {
    /// Values taken so far (wrapping), this consumer's own count: what it handled, even
    /// before the end of its batch publishes it as `Producer::taken`.
    pub fn taken_count(&self) -> usize {
        self.head
    }

    /// Takes the oldest value, or `None` when the ring is empty.
    pub fn pop(&mut self) -> Option<T> {
        let head = self.head;
        if head == self.tail_cached {
            // Acquire: the producer's writes into the slots up to `tail` happen before our reads.
            self.tail_cached = self.shared.tail.load(Ordering::Acquire);
            if head == self.tail_cached {
                return None;
            }
        }
        // SAFETY: `head != tail`, so slot `head` is initialised and owned by the consumer. The
        // value is moved out exactly once: `head` advances before anything else can run.
        let value = unsafe { (*self.shared.slot(head)).assume_init_read() };
        self.head = head.wrapping_add(1);
        self.shared.head.store(self.head, Ordering::Release);
        Some(value)
    }

    /// Takes up to `max` values, oldest first, handing each to `f`; returns how many. One
    /// Acquire load of the producer's `tail` and one Release store of `head` for the batch.
    ///
    /// If `f` panics, the values already handed over are gone and the rest stay in the ring.
    pub fn drain(&mut self, max: usize, f: impl FnMut(T)) -> usize {
        if self.tail_cached.wrapping_sub(self.head) < max {
            self.see();
        }
        self.drain_seen(max, f)
    }

    /// Looks at the producer's `tail`: what `drain_seen` may take from now on.
    pub fn see(&mut self) {
        // Acquire: the producer's writes into the slots up to `tail` happen before our reads.
        self.tail_cached = self.shared.tail.load(Ordering::Acquire);
    }

    /// As `drain`, of the values there at the last `see` (or `drain`, or `pop` that looked)
    /// only: what was pushed since waits for the next look.
    pub fn drain_seen(&mut self, max: usize, mut f: impl FnMut(T)) -> usize {
        let start = self.head;
        let count = self.tail_cached.wrapping_sub(start).min(max);
        for _ in 0..count {
            let head = self.head;
            // SAFETY: `head` lies in `start..start + count`, inside `head..tail` as loaded
            // above, so the slot is initialised and owned by the consumer. `self.head` advances
            // before `f` runs, so a panicking `f` cannot make this slot be read or dropped again
            // (`Drop` publishes `self.head`).
            let value = unsafe { (*self.shared.slot(head)).assume_init_read() };
            self.head = head.wrapping_add(1);
            f(value);
        }
        if count > 0 {
            self.shared.head.store(self.head, Ordering::Release);
        }
        count
    }

    /// Values in the ring as the consumer sees them: exact or an under-estimate by what the
    /// producer is pushing right now.
    pub fn len(&self) -> usize {
        self.shared
            .tail
            .load(Ordering::Acquire)
            .wrapping_sub(self.head)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn capacity(&self) -> usize {
        self.shared.capacity()
    }
}

impl<T> Drop for Producer<T> {
    fn drop(&mut self) {
        // Publish the private tail so `Shared::drop` drops the values written but never
        // published.
        self.publish();
    }
}

impl<T> Drop for Consumer<T> {
    fn drop(&mut self) {
        // Publish the private head so `Shared::drop` does not drop values already taken.
        self.shared.head.store(self.head, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::panic::{catch_unwind, AssertUnwindSafe};
    use std::sync::atomic::AtomicUsize;
    use std::thread;
    use std::time::{Duration, Instant};

    fn assert_send<T: Send>() {}

    #[test]
    fn halves_are_send() {
        assert_send::<Producer<u64>>();
        assert_send::<Consumer<u64>>();
    }

    #[test]
    fn capacity_rounds_up_to_a_power_of_two() {
        let (producer, consumer) = channel::<u8>(5);
        assert_eq!(producer.capacity(), 8);
        assert_eq!(consumer.capacity(), 8);
        assert_eq!(channel::<u8>(1).0.capacity(), 1);
        assert_eq!(channel::<u8>(64).0.capacity(), 64);
    }

    #[test]
    fn empty_ring_pops_nothing() {
        let (producer, mut consumer) = channel::<u32>(4);
        assert!(producer.is_empty());
        assert!(consumer.is_empty());
        assert_eq!(consumer.pop(), None);
        assert_eq!(consumer.drain(10, |_| panic!("nothing to drain")), 0);
    }

    #[test]
    fn full_ring_hands_the_value_back() {
        let (mut producer, mut consumer) = channel::<u32>(4);
        for value in 0..4 {
            assert_eq!(producer.try_push(value), Ok(()));
        }
        assert_eq!(producer.len(), 4);
        assert_eq!(producer.try_push(99), Err(99));
        assert_eq!(consumer.pop(), Some(0));
        assert_eq!(producer.try_push(4), Ok(()));
        assert_eq!(producer.try_push(100), Err(100));
        let mut taken = Vec::new();
        assert_eq!(consumer.drain(usize::MAX, |value| taken.push(value)), 4);
        assert_eq!(taken, [1, 2, 3, 4]);
    }

    #[test]
    fn wraps_around_many_times_in_order() {
        let (mut producer, mut consumer) = channel::<u64>(8);
        let mut next_push = 0u64;
        let mut next_pop = 0u64;
        // Fill levels vary (1..=8) so head and tail cross the slot array's end at every offset.
        for round in 0..2_000u64 {
            let fill = 1 + round % 8;
            for _ in 0..fill {
                producer.try_push(next_push).unwrap();
                next_push += 1;
            }
            assert_eq!(consumer.len(), fill as usize);
            if round % 2 == 0 {
                while let Some(value) = consumer.pop() {
                    assert_eq!(value, next_pop);
                    next_pop += 1;
                }
            } else {
                let taken = consumer.drain(3, |value| {
                    assert_eq!(value, next_pop);
                    next_pop += 1;
                });
                assert_eq!(taken, fill.min(3) as usize);
                consumer.drain(usize::MAX, |value| {
                    assert_eq!(value, next_pop);
                    next_pop += 1;
                });
            }
            assert!(consumer.is_empty());
        }
        assert_eq!(next_pop, next_push);
        assert!(
            next_push > 8 * 500,
            "the indexes wrapped the slot array many times"
        );
    }

    #[test]
    fn drain_respects_max() {
        let (mut producer, mut consumer) = channel::<u32>(16);
        for value in 0..10 {
            producer.try_push(value).unwrap();
        }
        let mut taken = Vec::new();
        assert_eq!(consumer.drain(4, |value| taken.push(value)), 4);
        assert_eq!(consumer.drain(4, |value| taken.push(value)), 4);
        assert_eq!(consumer.drain(4, |value| taken.push(value)), 2);
        assert_eq!(consumer.drain(4, |value| taken.push(value)), 0);
        assert_eq!(taken, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn drain_seen_takes_only_what_the_last_look_saw() {
        let (mut producer, mut consumer) = channel::<u32>(16);
        producer.try_push(0).unwrap();
        producer.try_push(1).unwrap();
        consumer.see();
        producer.try_push(2).unwrap();
        let mut taken = Vec::new();
        assert_eq!(consumer.drain_seen(1, |value| taken.push(value)), 1);
        assert_eq!(consumer.drain_seen(8, |value| taken.push(value)), 1);
        assert_eq!(
            consumer.drain_seen(8, |value| taken.push(value)),
            0,
            "2 came later"
        );
        assert_eq!(consumer.len(), 1, "and waits in the ring");
        consumer.see();
        assert_eq!(consumer.drain_seen(8, |value| taken.push(value)), 1);
        assert_eq!(taken, [0, 1, 2]);
        assert_eq!(producer.taken(), 3);
    }

    /// Counts its drops, so a test can see every value dropped exactly once.
    struct Counted(Arc<AtomicUsize>);

    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn drop_drops_the_values_left_in_the_ring() {
        let drops = Arc::new(AtomicUsize::new(0));
        let (mut producer, mut consumer) = channel::<Counted>(8);
        // Wrap once so the leftovers straddle the end of the slot array.
        for _ in 0..6 {
            assert!(producer.try_push(Counted(drops.clone())).is_ok());
        }
        assert_eq!(consumer.drain(6, drop), 6);
        assert_eq!(drops.load(Ordering::Relaxed), 6);
        for _ in 0..5 {
            assert!(producer.try_push(Counted(drops.clone())).is_ok());
        }
        drop(consumer.pop());
        assert_eq!(drops.load(Ordering::Relaxed), 7);
        drop(consumer);
        assert_eq!(
            drops.load(Ordering::Relaxed),
            7,
            "the producer still holds the ring"
        );
        drop(producer);
        assert_eq!(drops.load(Ordering::Relaxed), 11);
    }

    /// Issue 12: written values wait for `publish` (one store of `tail` per batch), and a
    /// producer dropped before publishing still gets them dropped.
    #[test]
    fn written_values_are_seen_after_publish() {
        let drops = Arc::new(AtomicUsize::new(0));
        let (mut producer, mut consumer) = channel::<Counted>(4);
        for _ in 0..4 {
            assert!(producer.try_write(Counted(drops.clone())).is_ok());
        }
        assert!(
            producer.try_write(Counted(drops.clone())).is_err(),
            "full counts the unpublished"
        );
        assert_eq!(drops.load(Ordering::Relaxed), 1, "the refused value");
        assert_eq!(consumer.pop().map(drop), None, "not published yet");
        producer.publish();
        assert_eq!(consumer.drain(2, drop), 2);
        assert_eq!(drops.load(Ordering::Relaxed), 3);
        assert!(producer.try_write(Counted(drops.clone())).is_ok());
        drop(producer);
        drop(consumer);
        assert_eq!(
            drops.load(Ordering::Relaxed),
            6,
            "published and not, all dropped"
        );
    }

    #[test]
    fn a_panic_in_drain_drops_each_value_once() {
        let drops = Arc::new(AtomicUsize::new(0));
        let (mut producer, mut consumer) = channel::<Counted>(8);
        for _ in 0..8 {
            assert!(producer.try_push(Counted(drops.clone())).is_ok());
        }
        let mut seen = 0;
        let result = catch_unwind(AssertUnwindSafe(|| {
            consumer.drain(8, |value| {
                seen += 1;
                drop(value);
                if seen == 3 {
                    panic!("callback fails on the third value");
                }
            })
        }));
        assert!(result.is_err());
        assert_eq!(drops.load(Ordering::Relaxed), 3);
        assert_eq!(consumer.len(), 5);
        drop(consumer);
        drop(producer);
        assert_eq!(drops.load(Ordering::Relaxed), 8);
    }

    #[test]
    fn two_threads_move_a_million_values_in_order() {
        const COUNT: u64 = 1_000_000;
        // Bounded: a lost wake-up or a torn index would hang; fail instead.
        let deadline = Instant::now() + Duration::from_secs(120);
        let (mut producer, mut consumer) = channel::<u64>(1024);
        let writer = thread::spawn(move || {
            let mut next = 0u64;
            while next < COUNT {
                match producer.try_push(next) {
                    Ok(()) => next += 1,
                    Err(_) => {
                        assert!(Instant::now() < deadline, "producer stuck at {next}");
                        thread::yield_now();
                    }
                }
            }
        });
        let mut expected = 0u64;
        let mut batch = 1;
        while expected < COUNT {
            // Alternate single pops and batches of varying size.
            let taken = if batch % 3 == 0 {
                match consumer.pop() {
                    Some(value) => {
                        assert_eq!(value, expected);
                        expected += 1;
                        1
                    }
                    None => 0,
                }
            } else {
                consumer.drain(batch % 300, |value| {
                    assert_eq!(value, expected);
                    expected += 1;
                })
            };
            if taken == 0 {
                assert!(Instant::now() < deadline, "consumer stuck at {expected}");
                thread::yield_now();
            }
            batch += 1;
        }
        writer.join().unwrap();
        assert_eq!(consumer.pop(), None);
    }
}
