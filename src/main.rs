//! `ringmq`: clap args -> Config -> start shards -> wait for SIGINT/SIGTERM or a failed shard
//! -> stop; SIGHUP reloads the password and ACL files on the way. Logs go through `log` to
//! stderr (`ringmq::logger`), at `--log-level`. A failed shard (a panic) ends the process with a non-zero status within a fraction
//! of a second, for a supervisor to restart it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use ringmq::broker::Broker;
use ringmq::config::{Config, LogLevel};
use ringmq::logger;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A thread-per-core io_uring MQTT broker. Flags override the config file.
#[derive(Parser, Debug)]
#[command(name = "ringmq", version, about)]
struct Args {
    /// Address every shard listens on (SO_REUSEPORT) with plain MQTT; beside the config's
    /// `[[listener]]` sections, if any [default: 0.0.0.0:1883].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// TOML config file: listen, [[listener]], shards, rings_per_shard, password_file,
    /// acl_file, allow_anonymous,
    /// ring_files_max, ring_entries, recv_buffer_count, recv_buffer_size,
    /// socket_send_buffer_bytes, sys_interval_secs, metrics_listen, [limits] and [persistence].
    #[arg(long)]
    config: Option<PathBuf>,
    /// Shard threads, each pinned to core k mod cores with its own io_uring and listener; a
    /// client lives on the shard its id hashes to. 0 = one per CPU available [default: 0].
    #[arg(long)]
    shards: Option<usize>,
    /// io_uring rings per shard, each with its own fixed-file table as large as the open-file
    /// limit allows: a shard holds rings × that many connections [default: 1].
    #[arg(long)]
    rings_per_shard: Option<usize>,
    /// mosquitto_passwd file ($7$ PBKDF2-SHA512 or $6$ SHA-512 entries) to check usernames and
    /// passwords against.
    #[arg(long)]
    password_file: Option<PathBuf>,
    /// mosquitto-format ACL file (user, topic and pattern lines): what it does not grant is
    /// denied. SIGHUP reloads it and the password file.
    #[arg(long)]
    acl_file: Option<PathBuf>,
    /// Accept clients that send no username (true|false) [default: true].
    #[arg(long)]
    allow_anonymous: Option<bool>,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9100) [default: off].
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// Seconds between publications of the $SYS topics; 0 = none [default: 10].
    #[arg(long)]
    sys_interval_secs: Option<u32>,
    /// error, warn, info (connects and disconnects too, rate-limited), debug or trace; over
    /// `RUST_LOG` (a plain level) and the file's `log_level` [default: info].
    #[arg(long)]
    log_level: Option<LogLevel>,
    /// Turns persistence on with its logs in DIR (created if missing): retained messages
    /// survive a restart, even a kill -9 ([persistence] in the config file for the rest).
    #[arg(long, value_name = "DIR")]
    persistence_dir: Option<PathBuf>,
}

fn config_from(args: Args) -> Result<Config, String> {
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if let Some(listen) = args.listen {
        config.listen = Some(listen);
    }
    if let Some(shards) = args.shards {
        config.shards = shards;
    }
    if let Some(rings) = args.rings_per_shard {
        config.rings_per_shard = rings;
    }
    if let Some(path) = args.password_file {
        config.password_file = Some(path);
    }
    if let Some(path) = args.acl_file {
        config.acl_file = Some(path);
    }
    if let Some(allow) = args.allow_anonymous {
        config.allow_anonymous = allow;
    }
    if let Some(addr) = args.metrics_listen {
        config.metrics_listen = Some(addr);
    }
    if let Some(secs) = args.sys_interval_secs {
        config.sys_interval_secs = secs;
    }
    match (args.log_level, std::env::var("RUST_LOG")) {
        (Some(level), _) => config.log_level = level,
        (None, Ok(text)) if !text.is_empty() => match text.parse() {
            Ok(level) => config.log_level = level,
            Err(e) => log::warn!("RUST_LOG ignored (only a plain level is understood): {e}"),
        },
        (None, _) => {}
    }
    if let Some(dir) = args.persistence_dir {
        config.persistence.dir = Some(dir);
        config.persistence.mode = ringmq::config::PersistenceMode::On;
    }
    config.validate()?;
    Ok(config)
}

/// The soft open-file limit caps each ring's fixed-file table: raise it to the hard limit.
fn raise_nofile_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain libc calls on a struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// SIGINT and SIGTERM (stop) and SIGHUP (reload), blocked in the main thread before any other
/// thread starts (so every thread inherits the mask) and taken with `sigwait` instead of a
/// handler.
fn termination_signals() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise the set we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        set
    }
}

/// How often the main thread looks at the shards while it waits for a signal: a failed shard
/// ends the process within this (plus the other shards' stop).
const FAILURE_POLL: Duration = Duration::from_millis(100);

/// Waits for a signal (returns its number) or for a shard failure (returns `None`).
fn wait_for_signal_or_failure(signals: &libc::sigset_t, broker: &Broker) -> Option<libc::c_int> {
    let timeout = libc::timespec {
        tv_sec: 0,
        tv_nsec: FAILURE_POLL.as_nanos() as libc::c_long,
    };
    loop {
        // SAFETY: waits up to `timeout` for one of the blocked signals; reads only our structs.
        let signal = unsafe { libc::sigtimedwait(signals, std::ptr::null_mut(), &timeout) };
        if signal > 0 {
            return Some(signal);
        }
        // -1: EAGAIN (the timeout) or EINTR; either way, look at the shards.
        if broker.failure().is_some() {
            return None;
        }
    }
}

fn main() -> ExitCode {
    // First of all: the logger's writer thread, started next, must inherit the mask too. A
    // process-directed SIGTERM goes to any thread that does not block it, and with the
    // default action there it killed the whole process (CI, stop 26).
    let signals = termination_signals();
    // SAFETY: blocks the signals for this thread; threads spawned later inherit the mask.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &signals, std::ptr::null_mut()) };
    no_transparent_huge_pages();
    logger::init(LogLevel::Info.filter());
    let code = run(&signals);
    // Lines still queued for stderr (a failure's) are written before the exit.
    logger::flush();
    code
}

/// Transparent huge pages off for this process, where the kernel backs anonymous memory with
/// them on its own (`/sys/kernel/mm/transparent_hugepage/enabled` = `always`; with `madvise`,
/// mimalloc's `no_thp` feature already keeps it from asking). Each shard allocates from its
/// own pages of the allocator's arena, so with 2 MiB pages every shard holds partly used huge
/// pages: on the 2-core VM, 100,000 idle subscribed connections on 2 shards x 3 rings cost
/// 581-642 B of RSS each with them and 399 B without (`bench/idle.sh`, results/
/// 2026-12-04-vm-idle-layouts-2). A kernel without the call (before 3.15) keeps its pages.
fn no_transparent_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE takes one integer argument and touches no memory of ours.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

fn run(signals: &libc::sigset_t) -> ExitCode {
    let config = match config_from(Args::parse()) {
        Ok(config) => config,
        Err(e) => {
            log::error!("{e}");
            return ExitCode::from(2);
        }
    };
    logger::set_level(config.log_level.filter());
    raise_nofile_limit();
    let broker = match Broker::start(config) {
        Ok(broker) => broker,
        Err(e) => {
            log::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    while let Some(signal) = wait_for_signal_or_failure(signals, &broker) {
        if signal != libc::SIGHUP {
            log::info!("signal {signal}: stopping");
            break;
        }
        // Connections stay; what fails to load leaves the old files in force.
        match broker.reload() {
            Ok(summary) => log::info!("SIGHUP: reloaded ({summary})"),
            Err(e) => log::error!("SIGHUP: reload failed, keeping the old files: {e}"),
        }
    }
    match broker.stop() {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            log::error!("exiting after a failure: {failure}");
            ExitCode::FAILURE
        }
    }
}
