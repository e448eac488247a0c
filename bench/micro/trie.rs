//! Subscription trie and interest index matching: `cargo bench --bench trie`.
//!
//! 10,000 filters shaped like a broker's clients (mostly `bench/client-{i}/in`, some with `+`
//! and `#`), matched against 100,000 topic names of which about half have a subscriber. An op is
//! one `Trie::for_each_match` or one `InterestIndex::shards_for`. Each case runs several times and
//! prints its best and median in ns per match: plain lines, no harness. On a busy machine the
//! best run is the figure to compare.

use std::hint::black_box;
use std::time::{Duration, Instant};

use ringmq::mesh::InterestIndex;
use ringmq::topic::Trie;

const FILTER_COUNT: usize = 10_000;
const TOPIC_COUNT: usize = 100_000;
const RUN_COUNT: usize = 9;

/// xorshift64*: the same topics on every run, without a dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n
    }
}

fn filters() -> Vec<String> {
    (0..FILTER_COUNT)
        .map(|i| match i % 20 {
            0 => format!("bench/client-{i}/+"),
            1 => format!("bench/client-{i}/#"),
            2 => format!("bench/+/status/{i}"),
            _ => format!("bench/client-{i}/in"),
        })
        .collect()
}

fn topics() -> Vec<String> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    (0..TOPIC_COUNT)
        .map(|_| {
            let client = rng.below(FILTER_COUNT * 2);
            match rng.below(10) {
                0 => format!("bench/client-{client}/status/{}", rng.below(FILTER_COUNT)),
                1 => format!("bench/client-{client}/out"),
                _ => format!("bench/client-{client}/in"),
            }
        })
        .collect()
}

fn report(name: &str, mut runs: Vec<Duration>, matched: u64) {
    runs.sort_unstable();
    let per_op = |run: Duration| run.as_nanos() as f64 / TOPIC_COUNT as f64;
    println!(
        "{name:<22} best {:>7.1} ns/match   median {:>7.1} ns/match   ({matched} matches per run)",
        per_op(runs[0]),
        per_op(runs[runs.len() / 2]),
    );
}

fn main() {
    let filters = filters();
    let topics = topics();
    println!("trie: {FILTER_COUNT} filters, {TOPIC_COUNT} topics per run, best of {RUN_COUNT}");

    let mut trie: Trie<u8> = Trie::new();
    for (i, filter) in filters.iter().enumerate() {
        trie.insert(filter, i as u32, 1);
    }
    let mut matched = 0;
    let runs = (0..RUN_COUNT)
        .map(|_| {
            matched = 0;
            let start = Instant::now();
            for topic in &topics {
                trie.for_each_match(black_box(topic), |subscriber, _| {
                    matched += u64::from(black_box(subscriber) != u32::MAX);
                });
            }
            start.elapsed()
        })
        .collect();
    report("trie for_each_match", runs, matched);

    let mut index = InterestIndex::new(8);
    for (i, filter) in filters.iter().enumerate() {
        index.apply(filter, i % 8, true);
    }
    time_shards_for("interest shards_for", &index, &topics);

    // The load generator's fan-in: one wildcard filter, short topics that all match it.
    let mut index = InterestIndex::new(8);
    index.apply("b/fanin/+", 1, true);
    let topics: Vec<String> = (0..TOPIC_COUNT)
        .map(|i| format!("b/fanin/{}", i % 64))
        .collect();
    time_shards_for("interest fan-in topic", &index, &topics);
}

/// `InterestIndex::shards_for` over `topics`, `RUN_COUNT` times, reported as `name`.
fn time_shards_for(name: &str, index: &InterestIndex, topics: &[String]) {
    let mut matched = 0;
    let runs = (0..RUN_COUNT)
        .map(|_| {
            matched = 0;
            let start = Instant::now();
            for topic in topics {
                matched += u64::from(index.shards_for(black_box(topic)) != 0);
            }
            start.elapsed()
        })
        .collect();
    report(name, runs, matched);
}
