//! Issue 7, fuzzing: the timed run of `tests/fuzz_shards.rs`'s generator, or the replay of one
//! input.
//!
//! ```sh
//! cargo run --release --example fuzz_shards -- --seconds 600 [--seed N]
//! cargo run --release --example fuzz_shards -- --replay FILE [--trace]
//! cargo run --release --example fuzz_shards -- --minimize FILE   # writes FILE.min
//! cargo run --release --example fuzz_shards -- --seconds 60 --corpus-out fuzz/corpus/shards
//! ```
//!
//! A timed run plays random inputs and mutations of the inputs that reached new behaviour
//! (a new set of non-zero shard counters, a cheap stand-in for coverage), starting from
//! `fuzz/corpus/shards/`. An input that breaks an invariant is written to
//! `target/fuzz-shards/crash-*` and the run goes on; the exit status is 1 if any did. The
//! shards' own log lines go to /dev/null unless `--logs`. `--corpus-out DIR` writes the 16
//! kept inputs that moved the most counters, as seeds.

#[path = "../tests/fuzz_shards/play.rs"]
mod play;

use std::collections::HashSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use play::Rng;

/// The timed run's own moves on top of the shared generator.
impl Rng {
    /// A few byte-level mutations: flips, overwrites, inserts, deletes, a splice.
    fn mutate(&mut self, input: &[u8], other: &[u8]) -> Vec<u8> {
        let mut out = input.to_vec();
        for _ in 0..1 + self.below(4) {
            let at = self.below(out.len());
            match self.below(5) {
                0 if !out.is_empty() => out[at] ^= 1 << self.below(8),
                1 if !out.is_empty() => out[at] = self.next() as u8,
                2 => out.insert(at, self.next() as u8),
                3 if out.len() > 1 => {
                    out.remove(at);
                }
                _ => {
                    let from = self.below(other.len());
                    let len = self.below(64).min(other.len() - from.min(other.len()));
                    out.splice(at..at, other[from..from + len].iter().copied());
                }
            }
        }
        out
    }
}

/// Inputs kept for mutation at most.
const POOL_MAX: usize = 4096;

static LAST_PANIC: Mutex<String> = Mutex::new(String::new());

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    if let Some(file) = value("--replay") {
        let input = std::fs::read(&file).expect("the input file");
        if args.iter().any(|a| a == "--trace") {
            std::env::set_var("RINGMQ_SIM_TRACE", "1");
        }
        let outcome = play::play(&input);
        println!("{file}: passed ({outcome:?})");
        return;
    }
    if let Some(file) = value("--minimize") {
        silence_stderr();
        minimize(&file);
        return;
    }
    let seconds: u64 = value("--seconds").map_or(60, |s| s.parse().expect("--seconds N"));
    let seed: u64 = value("--seed").map_or(0x5eed_7007, |s| s.parse().expect("--seed N"));
    if !args.iter().any(|a| a == "--logs") {
        silence_stderr();
    }
    std::panic::set_hook(Box::new(|info| {
        let backtrace = std::backtrace::Backtrace::force_capture();
        *LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner()) = format!("{info}\n{backtrace}");
    }));
    let crash_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-shards");
    let mut pool: Vec<Vec<u8>> = corpus()
        .iter()
        .filter_map(|p| std::fs::read(p).ok())
        .collect();
    let mut richest: Vec<(u32, Vec<u8>)> = Vec::new();
    let mut signatures = HashSet::new();
    let mut rng = Rng(seed | 1);
    let (mut iterations, mut crashes) = (0u64, 0u64);
    let mut total = play::Outcome::default();
    let mut seen_crashes = HashSet::new();
    let start = Instant::now();
    let deadline = start + Duration::from_secs(seconds);
    let mut next_report = start + Duration::from_secs(60);
    while Instant::now() < deadline {
        let input = if iterations < pool.len() as u64 {
            pool[iterations as usize].clone()
        } else if pool.is_empty() || rng.below(4) == 0 {
            rng.input()
        } else {
            let a = rng.below(pool.len());
            let b = rng.below(pool.len());
            rng.mutate(&pool[a], &pool[b])
        };
        iterations += 1;
        match catch_unwind(AssertUnwindSafe(|| play::play_with_signature(&input))) {
            Ok((outcome, signature)) => {
                total.add(&outcome);
                if signatures.insert(signature) {
                    richest.push((signature.count_ones(), input.clone()));
                    richest.sort_by_key(|entry| std::cmp::Reverse(entry.0));
                    richest.truncate(16);
                    if pool.len() < POOL_MAX {
                        pool.push(input);
                    } else {
                        let at = rng.below(pool.len());
                        pool[at] = input;
                    }
                }
            }
            Err(_) => {
                crashes += 1;
                let report = LAST_PANIC.lock().map(|s| s.clone()).unwrap_or_default();
                let first_line = report.lines().next().unwrap_or("").to_string();
                let _ = std::fs::create_dir_all(&crash_dir);
                let path = crash_dir.join(format!("crash-{seed}-{iterations}"));
                let _ = std::fs::write(&path, &input);
                if seen_crashes.insert(first_line.clone()) {
                    println!("CRASH {}: {report}", path.display());
                } else {
                    println!("crash again {}: {first_line}", path.display());
                }
            }
        }
        if Instant::now() >= next_report {
            next_report += Duration::from_secs(60);
            println!(
                "{:>4} s: {iterations} inputs, {crashes} crashes, {} behaviours",
                start.elapsed().as_secs(),
                signatures.len()
            );
        }
    }
    println!(
        "fuzz_shards: {iterations} inputs in {} s (seed {seed}): {} distinct behaviours, \
         {crashes} crashes; {total:?}",
        start.elapsed().as_secs(),
        signatures.len()
    );
    if let Some(dir) = value("--corpus-out") {
        let _ = std::fs::create_dir_all(&dir);
        for (n, (_, input)) in richest.iter().enumerate() {
            let path = Path::new(&dir).join(format!("seed-{n:02}"));
            std::fs::write(&path, input).expect("a corpus file");
        }
        println!("{} seeds written to {dir}", richest.len());
    }
    if crashes > 0 {
        std::process::exit(1);
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

/// The shards log once per condition per shard, and every input builds new shards.
fn silence_stderr() {
    // SAFETY: opens /dev/null and moves it onto descriptor 2; nothing else is touched.
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY);
        if null >= 0 {
            libc::dup2(null, 2);
            libc::close(null);
        }
    }
}

/// The panic message's first line of playing `input`, if it panics.
fn failure(input: &[u8]) -> Option<String> {
    let result = catch_unwind(AssertUnwindSafe(|| play::play(input)));
    result.err()?;
    let report = LAST_PANIC.lock().map(|s| s.clone()).unwrap_or_default();
    Some(report.lines().nth(1).unwrap_or("").to_string())
}

/// Cuts chunks out of a failing input, halving the chunk size, while it still fails with the
/// same message; writes the result beside it.
fn minimize(file: &str) {
    std::panic::set_hook(Box::new(|info| {
        *LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner()) = format!("{info}");
    }));
    let mut input = std::fs::read(file).expect("the input file");
    let Some(message) = failure(&input) else {
        println!("{file} does not fail");
        return;
    };
    let mut chunk = input.len() / 2;
    while chunk > 0 {
        let mut at = 0;
        while at < input.len() {
            let mut shorter = input.clone();
            shorter.drain(at..(at + chunk).min(input.len()));
            if failure(&shorter).as_deref() == Some(message.as_str()) {
                input = shorter;
            } else {
                at += chunk;
            }
        }
        chunk /= 2;
    }
    let out = format!("{file}.min");
    std::fs::write(&out, &input).expect("the minimized file");
    println!("{out}: {} bytes, fails with: {message}", input.len());
}
