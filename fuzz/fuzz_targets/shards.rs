//! Issue 7: the shards' packet handling under libFuzzer, with coverage feedback: several
//! clients across 2 shards on a simulated kernel (the generator and the invariants are
//! `tests/fuzz_shards/play.rs`, shared with the stable runners).
//!
//! Run: `cargo +nightly fuzz run shards` (seeds in `corpus/shards/`). On stable, the same
//! inputs: `cargo test --test fuzz_shards` and `cargo run --release --example fuzz_shards`.

#![no_main]

#[path = "../../tests/fuzz_shards/play.rs"]
#[allow(dead_code)] // The outcome's counts are for the stable runners' reports.
mod play;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    play::play(data);
});
