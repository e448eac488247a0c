//! SPSC throughput between two threads: `cargo bench --bench mesh`.
//!
//! Measures what a shard pair sees: one thread pushes as fast as the ring takes values, the
//! other drains in batches of `mesh_batch_max` (256, the default), both spinning when the ring
//! is full or empty. Three cases:
//! - `u64`: the ring alone.
//! - `MeshMessage`: an 88-byte publish, pushed straight into the ring. Topic and payload are
//!   static, so a clone costs no atomic: this measures the ring, not reference counts.
//! - `ShardMesh`: the same message through `ShardMesh::push` / `drain`, overflow included.
//! - `interest shards_for`: one thread matching topics against a 10,000-filter interest index.
//!
//! The writer is pinned to the first core and the reader to the second, as two shards would be.
//! A side that finds the ring full or empty spins briefly, then yields (`Backoff::snooze`), so a
//! busy machine slows the run down rather than stalling it.
//! An op is one message moved from one thread to the other, or one `shards_for` lookup.
//! Each case runs several times and prints its best and median: plain lines, no harness. On a
//! busy or small machine the numbers are a floor.

use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use bytestring::ByteString;
use crossbeam_utils::Backoff;
use ringmq::mesh::{spsc, Forward, InlineForward, InterestIndex, Mesh, MeshMessage};
use ringmq::protocol::QoS;

const MESSAGE_COUNT: u64 = 5_000_000;
const RING_CAPACITY: usize = 1024;
const BATCH_MAX: usize = 256;
const RUN_COUNT: usize = 7;

/// A case runs `count` messages through and returns how long that took.
type Case = fn(u64) -> Duration;

const CASES: [(&str, Case); 7] = [
    ("spsc u64", spsc_u64),
    ("spsc MeshMessage", spsc_message),
    ("ShardMesh MeshMessage", shard_mesh_message),
    ("ShardMesh counted", shard_mesh_counted),
    ("ShardMesh copied", shard_mesh_copied),
    ("ShardMesh inline", shard_mesh_inline),
    ("interest shards_for", interest_shards_for),
];

fn main() {
    // `cargo bench` passes `--bench`; a filter argument picks cases by name.
    let filter: Option<String> = std::env::args().skip(1).find(|arg| !arg.starts_with('-'));
    println!(
        "mesh: {MESSAGE_COUNT} ops per run, ring capacity {RING_CAPACITY}, batch {BATCH_MAX}, \
         best of {RUN_COUNT}, {} cpus",
        thread::available_parallelism().map_or(0, |n| n.get())
    );
    for (name, case) in CASES {
        if filter
            .as_deref()
            .is_some_and(|filter| !name.contains(filter))
        {
            continue;
        }
        let mut runs: Vec<Duration> = (0..RUN_COUNT).map(|_| case(MESSAGE_COUNT)).collect();
        runs.sort_unstable();
        let best = runs[0].as_secs_f64();
        let median = runs[RUN_COUNT / 2].as_secs_f64();
        println!(
            "{name:<22} best {:>6.1} M ops/s {:>7.2} ns/op, median {:>7.2} ns/op",
            MESSAGE_COUNT as f64 / best / 1e6,
            best * 1e9 / MESSAGE_COUNT as f64,
            median * 1e9 / MESSAGE_COUNT as f64
        );
    }
}

/// The cores this process may run on, read once before any thread is pinned (a pinned thread
/// sees only its own core).
fn cores() -> &'static [core_affinity::CoreId] {
    static CORES: OnceLock<Vec<core_affinity::CoreId>> = OnceLock::new();
    CORES.get_or_init(|| core_affinity::get_core_ids().unwrap_or_default())
}

/// Pins the calling thread to the `index`-th core, when there are two cores to spread over.
fn pin(index: usize) {
    if cores().len() >= 2 {
        core_affinity::set_for_current(cores()[index]);
    }
}

/// Runs `writer` on a thread pinned to core 0 and `reader` on this thread pinned to core 1;
/// returns the time from start until the reader is done, and the writer's result.
fn timed<W: Send + 'static>(
    writer: impl FnOnce() -> W + Send + 'static,
    reader: impl FnOnce(),
) -> (Duration, W) {
    pin(1);
    let start = Instant::now();
    let writer = thread::spawn(move || {
        pin(0);
        writer()
    });
    reader();
    let elapsed = start.elapsed();
    (elapsed, writer.join().expect("writer thread"))
}

fn sample_message() -> MeshMessage {
    MeshMessage::Publish(Forward {
        topic: ByteString::from_static("sensors/building-7/floor-3/temperature"),
        payload: Bytes::from_static(b"{\"celsius\":21.5}"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: None,
        origin_shard: 0,
        turn_us: 0,
    })
}

fn spsc_u64(count: u64) -> Duration {
    let (mut producer, mut consumer) = spsc::channel::<u64>(RING_CAPACITY);
    let mut sum = 0u64;
    let (elapsed, ()) = timed(
        move || {
            let backoff = Backoff::new();
            for value in 0..count {
                let mut value = value;
                while let Err(back) = producer.try_push(value) {
                    value = back;
                    backoff.snooze();
                }
                backoff.reset();
            }
        },
        || {
            let backoff = Backoff::new();
            let mut received = 0u64;
            while received < count {
                let taken = consumer.drain(BATCH_MAX, |value| sum = sum.wrapping_add(value));
                if taken == 0 {
                    backoff.snooze();
                } else {
                    backoff.reset();
                }
                received += taken as u64;
            }
        },
    );
    assert_eq!(sum, count * (count - 1) / 2, "every value arrived once");
    elapsed
}

fn spsc_message(count: u64) -> Duration {
    let (mut producer, mut consumer) = spsc::channel::<MeshMessage>(RING_CAPACITY);
    let message = sample_message();
    let mut received = 0;
    let (elapsed, ()) = timed(
        move || {
            let backoff = Backoff::new();
            for _ in 0..count {
                let mut next = message.clone();
                while let Err(back) = producer.try_push(next) {
                    next = back;
                    backoff.snooze();
                }
                backoff.reset();
            }
        },
        || received = receive_messages(count, |f| consumer.drain(BATCH_MAX, f)),
    );
    assert_eq!(received, count);
    elapsed
}

fn shard_mesh_message(count: u64) -> Duration {
    let message = sample_message();
    shard_mesh_with(count, move || message.clone(), drop)
}

/// As `shard_mesh_message`, but topic and payload share one reference-counted block (as a
/// forward sharing the receive arena does): the writer's clones and the reader's drops
/// touch one count from two cores.
fn shard_mesh_counted(count: u64) -> Duration {
    let topic = ByteString::from("sensors/building-7/floor-3/temperature");
    let payload = Bytes::copy_from_slice(b"{\"celsius\":21.5}");
    shard_mesh_with(count, move || forward(topic.clone(), payload.clone()), drop)
}

/// As `shard_mesh_message`, but topic and payload copied into a block kept for the target
/// (`Shard::mesh_copy`): two splits of a `BytesMut` per message.
fn shard_mesh_copied(count: u64) -> Duration {
    let topic = b"sensors/building-7/floor-3/temperature";
    let payload = b"{\"celsius\":21.5}";
    let mut block = bytes::BytesMut::new();
    shard_mesh_with(
        count,
        move || {
            let (topic, payload) = std::hint::black_box((&topic[..], &payload[..]));
            if block.capacity() - block.len() < topic.len() + payload.len() {
                block.reserve(16 << 10);
            }
            block.extend_from_slice(topic);
            let topic = block.split().freeze();
            block.extend_from_slice(payload);
            let payload = block.split().freeze();
            // SAFETY: a copy of an ASCII string.
            forward(unsafe { ByteString::from_bytes_unchecked(topic) }, payload)
        },
        drop,
    )
}

/// As `shard_mesh_copied`, but the bytes travel in the ring slot (`InlineForward`) and the
/// reader copies them into its own block (`Shard::arena_copy`), as a target shard does.
fn shard_mesh_inline(count: u64) -> Duration {
    let topic = "sensors/building-7/floor-3/temperature";
    let payload = b"{\"celsius\":21.5}";
    let mut arena = bytes::BytesMut::new();
    shard_mesh_with(
        count,
        move || {
            // Opaque to the optimiser, as a received topic and payload are.
            let (topic, payload) = std::hint::black_box((topic, &payload[..]));
            let inline = InlineForward::new(topic, payload, QoS::AtMostOnce, false, 0, 0);
            MeshMessage::PublishInline(inline.expect("fits"))
        },
        move |message| {
            if let MeshMessage::PublishInline(inline) = message {
                let len = inline.topic().len() + inline.payload().len();
                if arena.capacity() - arena.len() < len {
                    arena.reserve(64 << 10);
                }
                arena.extend_from_slice(inline.topic().as_bytes());
                let topic = arena.split().freeze();
                arena.extend_from_slice(inline.payload());
                let payload = arena.split().freeze();
                std::hint::black_box((topic, payload));
            }
        },
    )
}

fn forward(topic: ByteString, payload: Bytes) -> MeshMessage {
    MeshMessage::Publish(Forward {
        topic,
        payload,
        qos: QoS::AtMostOnce,
        retain: false,
        properties: None,
        origin_shard: 0,
        turn_us: 0,
    })
}

/// `make` builds each message on the writer's core; `take` handles each on the reader's.
fn shard_mesh_with(
    count: u64,
    mut make: impl FnMut() -> MeshMessage + Send + 'static,
    mut take: impl FnMut(MeshMessage),
) -> Duration {
    let mut shards = Mesh::new(2, RING_CAPACITY);
    let mut target = shards.pop().expect("shard 1");
    let mut source = shards.pop().expect("shard 0");
    let mut received = 0;
    let (elapsed, ()) = timed(
        move || {
            let backoff = Backoff::new();
            let mut pushed = 0;
            while pushed < count {
                let batch = (count - pushed).min(BATCH_MAX as u64);
                for _ in 0..batch {
                    source.push(1, make());
                }
                pushed += batch;
                source.flush_overflow();
                std::hint::black_box(source.take_wake_targets());
                while source.overflow_total() > RING_CAPACITY {
                    // What moved into the ring must be published, or the reader never sees
                    // it and the ring never empties.
                    source.flush_overflow();
                    std::hint::black_box(source.take_wake_targets());
                    backoff.snooze();
                }
                backoff.reset();
            }
            while source.overflow_total() > 0 {
                source.flush_overflow();
                std::hint::black_box(source.take_wake_targets());
                backoff.snooze();
            }
        },
        || {
            received = receive_messages(count, |f| {
                target.drain(BATCH_MAX, |_source, message| {
                    // The reader's work on the message, then the common tally (which sees
                    // the inline form as nothing).
                    take(message);
                    f(MeshMessage::HandOffLost { ring: 0 })
                })
            })
        },
    );
    assert_eq!(received, count);
    elapsed
}

/// One thread: `shards_for` over an index of 10,000 literal filters plus a few wildcards, for
/// topics that hit a literal filter, a `+` filter and `#` filters (the common publish).
fn interest_shards_for(count: u64) -> Duration {
    const DEVICE_COUNT: usize = 10_000;
    let mut index = InterestIndex::new(16);
    for device in 0..DEVICE_COUNT {
        index.apply(&format!("sensors/{device}/temperature"), device % 16, true);
    }
    index.apply("sensors/+/humidity", 3, true);
    index.apply("sensors/#", 5, true);
    index.apply("#", 7, true);
    index.apply("$SYS/#", 9, true);
    let topics: Vec<String> = (0..1024)
        .map(|n| match n % 4 {
            0 | 1 => format!("sensors/{}/temperature", n * 7 % DEVICE_COUNT),
            2 => format!("sensors/{n}/humidity"),
            _ => format!("lights/{n}/state"),
        })
        .collect();
    let start = Instant::now();
    let mut union = 0u64;
    for n in 0..count as usize {
        union |= index.shards_for(std::hint::black_box(&topics[n % topics.len()]));
    }
    let elapsed = start.elapsed();
    // The wildcards' shards (3, 5, 7) were hit; `$SYS/#` (9) never matches these topics.
    let union = std::hint::black_box(union);
    assert_eq!(
        union & (1 << 3 | 1 << 5 | 1 << 7 | 1 << 9),
        1 << 3 | 1 << 5 | 1 << 7
    );
    elapsed
}

/// Drains until `count` publishes arrived, touching each payload so the work is not elided.
fn receive_messages(
    count: u64,
    mut drain: impl FnMut(&mut dyn FnMut(MeshMessage)) -> usize,
) -> u64 {
    let backoff = Backoff::new();
    let mut received = 0u64;
    let mut payload_bytes = 0usize;
    while received < count {
        let taken = drain(&mut |message| {
            if let MeshMessage::Publish(forward) = message {
                payload_bytes += forward.payload.len();
            }
        });
        if taken == 0 {
            backoff.snooze();
        } else {
            backoff.reset();
        }
        received += taken as u64;
    }
    std::hint::black_box(payload_bytes);
    received
}
