//! `ringmq`: clap args -> Config -> start shards -> wait for SIGINT/SIGTERM -> stop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use ringmq::broker::Broker;
use ringmq::config::Config;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A thread-per-core io_uring MQTT broker. Flags override the config file.
#[derive(Parser, Debug)]
#[command(name = "ringmq", version, about)]
struct Args {
    /// Address every shard listens on (SO_REUSEPORT) [default: 0.0.0.0:1883].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// TOML config file: listen, shards, rings_per_shard, password_file, allow_anonymous,
    /// ring_files_max, ring_entries, recv_buffer_count, recv_buffer_size,
    /// socket_send_buffer_bytes and [limits].
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
    /// Accept clients that send no username (true|false) [default: true].
    #[arg(long)]
    allow_anonymous: Option<bool>,
}

fn config_from(args: Args) -> Result<Config, String> {
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if let Some(listen) = args.listen {
        config.listen = listen;
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
    if let Some(allow) = args.allow_anonymous {
        config.allow_anonymous = allow;
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

/// SIGINT and SIGTERM, blocked in this thread before any shard starts (so every thread
/// inherits the mask) and taken with `sigwait` instead of a handler.
fn termination_signals() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise the set we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        set
    }
}

fn main() -> ExitCode {
    let config = match config_from(Args::parse()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("ringmq: {e}");
            return ExitCode::from(2);
        }
    };
    raise_nofile_limit();
    let signals = termination_signals();
    // SAFETY: blocks the signals for this thread; threads spawned later inherit the mask.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &signals, std::ptr::null_mut()) };
    let broker = match Broker::start(config) {
        Ok(broker) => broker,
        Err(e) => {
            eprintln!("ringmq: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut signal: libc::c_int = 0;
    // SAFETY: waits for one of the blocked signals; writes its number into `signal`.
    unsafe { libc::sigwait(&signals, &mut signal) };
    eprintln!("ringmq: signal {signal}: stopping");
    broker.stop();
    ExitCode::SUCCESS
}
