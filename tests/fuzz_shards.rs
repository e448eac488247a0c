//! Issue 7, fuzzing: sequences of packets from several clients across 2 shards, on the shards'
//! real code with a simulated kernel (`tests/fuzz_shards/play.rs` says what is generated and
//! checked). Stable Rust, bounded: the committed corpus (`fuzz/corpus/shards/`), then
//! `RINGMQ_FUZZ_ITERATIONS` (default 5,000) inputs from a fixed seed (`RINGMQ_FUZZ_SEED`).
//! A failing input is written to `target/fuzz-shards/` and named in the failure; replay it
//! with `cargo run --release --example fuzz_shards -- --replay FILE`. The timed run:
//! `cargo run --release --example fuzz_shards -- --seconds 600`.

#[path = "fuzz_shards/play.rs"]
mod play;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use play::Rng;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

fn play_or_save(input: &[u8], what: &str) -> play::Outcome {
    match catch_unwind(AssertUnwindSafe(|| play::play(input))) {
        Ok(outcome) => outcome,
        Err(panic) => {
            let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-shards");
            let _ = std::fs::create_dir_all(&dir);
            let path = dir.join(format!("crash-{}", what.replace(' ', "-")));
            let _ = std::fs::write(&path, input);
            let message = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            panic!(
                "issue 7: {what} broke an invariant: {message}; input saved to {}",
                path.display()
            );
        }
    }
}

fn corpus() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/shards");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    files
}

#[test]
fn issue_7_fuzz_shards_corpus_and_seeded_inputs_keep_every_invariant() {
    let mut total = play::Outcome::default();
    for path in corpus() {
        let input = std::fs::read(&path).expect("a corpus file");
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        play_or_save(&input, &format!("corpus {}", name.unwrap_or_default()));
    }
    let seed = env_u64("RINGMQ_FUZZ_SEED", 0x5eed_7007);
    let iterations = env_u64("RINGMQ_FUZZ_ITERATIONS", 5_000);
    let mut rng = Rng(seed | 1);
    for iteration in 0..iterations {
        let input = rng.input();
        total.add(&play_or_save(
            &input,
            &format!("seed {seed} input {iteration}"),
        ));
    }
    eprintln!("{iterations} inputs: {total:?}");
    assert!(
        total.actions > iterations as usize * 10,
        "the inputs drove the shards"
    );
    assert!(
        total.messages_out > 0 && total.handoffs > 0 && total.mesh_overflowed > 0,
        "the inputs reached deliveries, hand-offs and full mesh rings: {total:?}"
    );
}
