//! The `log` backend the binary installs: one line per record on stderr,
//! `2026-12-04T06:19:40.123Z INFO  shard 1: message` (UTC, RFC 3339 with milliseconds; the
//! shard prefix on a shard's thread, `set_shard`).
//!
//! Why our own and not `env_logger`: a shard must never wait on stderr. A pipe nobody reads
//! (a supervisor that stalls, a test harness reading only at the end) blocks a write, and a
//! synchronous logger would stop the shard's loop with it. Here the caller formats the line
//! and hands it to a bounded queue (`try_send`, never a wait); one writer thread writes what
//! the queue holds, a batch per write. A full queue drops the line, counts it, and the writer
//! says how many were dropped. The price, a `String` per line, is paid only for lines that are
//! enabled: a disabled level costs the callers one relaxed load (`log::max_level`), and
//! per-connection lines are rate-limited by their shard (`shard::log_lines`).
//!
//! Records of other crates (rustls logs a client's protocol errors at `warn`, per connection
//! and unthrottled) are shown only at `debug` and `trace`: ringmq counts those errors itself.
//!
//! A library user (the integration tests) installs nothing: every `log` macro is then a no-op.

use std::cell::Cell;
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::{Level, LevelFilter, Log, Metadata, Record};

/// Lines waiting for the writer at most; past it new ones are dropped (and counted).
const QUEUE_LINES_MAX: usize = 4096;
/// How long `flush` waits for the writer (at exit, so a stuck stderr cannot hold the exit).
const FLUSH_WAIT: Duration = Duration::from_secs(1);

enum Entry {
    Line(String),
    /// Acknowledged once every line queued before it is written.
    Flush(SyncSender<()>),
}

struct Logger {
    queue: OnceLock<SyncSender<Entry>>,
    dropped: AtomicU64,
    /// Other crates' records pass too (`debug` and `trace`).
    foreign: AtomicBool,
}

static LOGGER: Logger = Logger {
    queue: OnceLock::new(),
    dropped: AtomicU64::new(0),
    foreign: AtomicBool::new(false),
};

thread_local! {
    static SHARD: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Lines logged on this thread name shard `index`.
pub fn set_shard(index: usize) {
    SHARD.with(|shard| shard.set(Some(index)));
}

/// Installs the logger (once per process; later calls only set the level) and starts its
/// writer thread.
pub fn init(level: LevelFilter) {
    if LOGGER.queue.get().is_none() {
        let (sender, receiver) = mpsc::sync_channel(QUEUE_LINES_MAX);
        let started = std::thread::Builder::new()
            .name("ringmq-log".into())
            .spawn(move || write_lines(receiver));
        if started.is_ok() && LOGGER.queue.set(sender).is_ok() {
            let _ = log::set_logger(&LOGGER);
        }
    }
    set_level(level);
}

pub fn set_level(level: LevelFilter) {
    LOGGER
        .foreign
        .store(level >= LevelFilter::Debug, Ordering::Relaxed);
    log::set_max_level(level);
}

/// Waits (up to a second) until every line logged so far is written.
pub fn flush() {
    log::logger().flush();
}

/// The writer thread: a batch of lines per write, and a line for those dropped meanwhile.
fn write_lines(receiver: Receiver<Entry>) {
    let mut batch = String::new();
    let mut acks = Vec::new();
    while let Ok(entry) = receiver.recv() {
        let mut next = Some(entry);
        while let Some(entry) = next.take() {
            match entry {
                Entry::Line(line) => batch.push_str(&line),
                Entry::Flush(ack) => acks.push(ack),
            }
            if batch.len() < 64 << 10 {
                next = receiver.try_recv().ok();
            }
        }
        let dropped = LOGGER.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            let _ = writeln!(
                batch,
                "{} WARN  {dropped} log lines dropped: stderr did not keep up",
                Timestamp::now()
            );
        }
        // A failed write has nowhere to be told.
        let _ = std::io::stderr().lock().write_all(batch.as_bytes());
        batch.clear();
        for ack in acks.drain(..) {
            let _ = ack.send(());
        }
    }
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
            && (metadata.target().starts_with("ringmq") || self.foreign.load(Ordering::Relaxed))
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let Some(queue) = self.queue.get() else {
            return;
        };
        let line = format_line(Timestamp::now(), record.level(), SHARD.get(), record.args());
        if let Err(TrySendError::Full(_)) = queue.try_send(Entry::Line(line)) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn flush(&self) {
        let Some(queue) = self.queue.get() else {
            return;
        };
        let deadline = Instant::now() + FLUSH_WAIT;
        let (ack, acked) = mpsc::sync_channel(1);
        let mut entry = Entry::Flush(ack);
        loop {
            match queue.try_send(entry) {
                Ok(()) => break,
                Err(TrySendError::Full(back)) if Instant::now() < deadline => {
                    entry = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => return,
            }
        }
        let _ = acked.recv_timeout(deadline.saturating_duration_since(Instant::now()));
    }
}

fn format_line(
    at: Timestamp,
    level: Level,
    shard: Option<usize>,
    args: &std::fmt::Arguments,
) -> String {
    let mut line = String::with_capacity(128);
    let _ = write!(line, "{at} {level:<5} ");
    if let Some(shard) = shard {
        let _ = write!(line, "shard {shard}: ");
    }
    let _ = writeln!(line, "{args}");
    line
}

/// A UTC time that prints as RFC 3339 with milliseconds: `2026-12-04T06:19:40.123Z`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timestamp(Duration);

impl Timestamp {
    pub fn now() -> Timestamp {
        Timestamp(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default(),
        )
    }
}

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.0.as_secs();
        let (year, month, day) = civil_from_days((secs / 86_400) as i64);
        let of_day = secs % 86_400;
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
            of_day / 3600,
            of_day / 60 % 60,
            of_day % 60,
            self.0.subsec_millis()
        )
    }
}

/// (year, month, day) of the day `days` after 1970-01-01, proleptic Gregorian (Howard
/// Hinnant's `civil_from_days`: eras of 400 years, years starting in March).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u32;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64, millis: u64) -> String {
        Timestamp(Duration::from_secs(secs) + Duration::from_millis(millis)).to_string()
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_milliseconds() {
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        // `date -u -d @951782400`: a leap day in a year divisible by 400.
        assert_eq!(at(951_782_400, 7), "2000-02-29T00:00:00.007Z");
        assert_eq!(at(4_107_542_399, 999), "2100-02-28T23:59:59.999Z");
        assert_eq!(at(1_796_365_980, 123), "2026-12-04T06:33:00.123Z");
    }

    #[test]
    fn every_day_of_four_centuries_follows_the_one_before() {
        let mut previous = civil_from_days(-1);
        for days in 0..146_097 {
            let (year, month, day) = civil_from_days(days);
            let (y, m, d) = previous;
            let next_day = (year, month, day) == (y, m, d + 1);
            let next_month = (year, month, day) == (y, m + 1, 1) && m < 12;
            let next_year = (year, month, day) == (y + 1, 1, 1) && m == 12;
            assert!(
                next_day || next_month || next_year,
                "{previous:?} -> {year}-{month}-{day}"
            );
            previous = (year, month, day);
        }
    }

    #[test]
    fn other_crates_records_pass_only_at_debug_and_trace() {
        let logger = Logger {
            queue: OnceLock::new(),
            dropped: AtomicU64::new(0),
            foreign: AtomicBool::new(false),
        };
        log::set_max_level(LevelFilter::Info);
        let record = |target, level| Metadata::builder().target(target).level(level).build();
        assert!(logger.enabled(&record("ringmq::shard::log_lines", Level::Info)));
        assert!(!logger.enabled(&record("ringmq::broker", Level::Debug)));
        assert!(!logger.enabled(&record("rustls::common_state", Level::Warn)));
        logger.foreign.store(true, Ordering::Relaxed);
        assert!(logger.enabled(&record("rustls::common_state", Level::Warn)));
    }

    #[test]
    fn a_line_has_time_level_shard_and_message() {
        let line = format_line(
            Timestamp(Duration::from_millis(1)),
            Level::Info,
            Some(3),
            &format_args!("hello {}", 1),
        );
        assert_eq!(line, "1970-01-01T00:00:00.001Z INFO  shard 3: hello 1\n");
        let line = format_line(
            Timestamp(Duration::ZERO),
            Level::Error,
            None,
            &format_args!("x"),
        );
        assert_eq!(line, "1970-01-01T00:00:00.000Z ERROR x\n");
    }
}
