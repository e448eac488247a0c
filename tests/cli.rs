//! The `ringmq` binary as a user runs it: flags, a TOML config file, flags overriding the file,
//! a clean stop on SIGTERM. Also keeps README.md honest: its TOML example must parse to the
//! defaults and name every key of `Config` and `Limits`.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use common::binary::{refused_start, Ringmq};
use common::*;
use ringmq::config::Config;

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn fixture(name: &str) -> PathBuf {
    manifest_dir().join("tests/fixtures").join(name)
}

/// CONNECT with optional credentials; returns the CONNACK return code.
fn connack_code(addr: SocketAddr, credentials: Option<(&str, &str)>) -> u8 {
    let mut connect = Connect::v311(&unique_id("cli"));
    if let Some((username, password)) = credentials {
        connect.username = Some(username.into());
        connect.password = Some(password.as_bytes().to_vec());
    }
    let mut client = RawClient::open(addr);
    client.send(&connect.bytes());
    client.read_packet().connack().1
}

#[test]
fn binary_serves_pubsub_and_stops_on_sigterm() {
    let broker = Ringmq::start(&[]);
    assert_broker_still_serves(broker.addr);
    broker.stop();
}

/// The signal numbers blocked by thread `tid` of process `pid` (SigBlk in its status).
fn blocked_signals(pid: u32, tid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("SigBlk:"))?;
    u64::from_str_radix(line["SigBlk:".len()..].trim(), 16).ok()
}

/// A process-directed SIGTERM goes to any thread that does not block it; in one that has the
/// default action it kills the whole process, status "signal 15" instead of a clean stop
/// (CI saw it once: the logger's writer thread started before the main thread blocked the
/// signals). Every thread but the main one, whatever features it serves, blocks them all.
#[test]
fn every_thread_blocks_the_signals_the_main_thread_waits_for() {
    let dir = TempDir::new("cli-sigmask");
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let metrics_listen = format!("127.0.0.1:{metrics_port}");
    let broker = Ringmq::start(&[
        "--shards",
        "2",
        "--metrics-listen",
        &metrics_listen,
        "--persistence-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_broker_still_serves(broker.addr);
    let pid = broker.pid();
    let wanted = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];
    let mut threads = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let tid = task.unwrap().file_name().into_string().unwrap();
        let comm =
            std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).unwrap_or_default();
        // The main thread takes them in sigtimedwait, which unblocks them while it waits.
        if tid == pid.to_string() {
            continue;
        }
        // A thread may end between the listing and the read: only those still there count.
        let Some(blocked) = blocked_signals(pid, &tid) else {
            continue;
        };
        for signal in wanted {
            assert!(
                blocked & (1 << (signal - 1)) != 0,
                "thread {tid} ({}) does not block signal {signal}: SigBlk {blocked:#x}",
                comm.trim()
            );
        }
        threads.push(comm.trim().to_string());
    }
    assert!(
        threads.iter().any(|t| t == "ringmq-log") && threads.len() >= 3,
        "the logger, the shards and the rest were looked at: {threads:?}"
    );
    broker.stop();
}

/// Starts the broker with `RINGMQ_TEST_PANIC=<mode>` on 2 shards, makes the test client's
/// home shard panic, and returns (home shard, stderr) once the process exited non-zero
/// within a bound.
fn panic_the_home_shard(mode: &str) -> (usize, String) {
    let mut broker = Ringmq::start_with_env(&["--shards", "2"], &[("RINGMQ_TEST_PANIC", mode)]);
    let id = ringmq::broker::TEST_PANIC_CLIENT_ID;
    let home = ringmq::mesh::home_shard(id.as_bytes(), 2);
    let mut client = RawClient::open(broker.addr);
    client.send(&Connect::v311(id).bytes());
    let sent_at = Instant::now();
    let bound = Duration::from_secs(2);
    let status = loop {
        if let Some(status) = broker.try_wait() {
            break status;
        }
        assert!(
            sent_at.elapsed() < bound,
            "ringmq still runs {bound:?} after a shard panicked"
        );
        thread::sleep(Duration::from_millis(10));
    };
    // Exited, not killed by a signal (an abort is SIGABRT).
    assert_eq!(status.code(), Some(1), "exited with {status}");
    let stderr = broker.stderr_after_exit();
    let line = format!("shard {home} panicked: test panic: client id {id}");
    assert!(stderr.contains(&line), "no {line:?} in stderr: {stderr}");
    (home, stderr)
}

#[test]
fn issue_7_a_shard_panic_ends_the_process_non_zero_and_names_the_shard() {
    // Issue 7: a panicking shard left a zombie process that SIGTERM could not stop. Now the
    // process exits non-zero at once, for a supervisor to restart it. And the dead shard's
    // operations are cancelled and waited for before its memory is freed (they were left to
    // the kernel's teardown of the ring, which may run after the memory is gone).
    let (home, stderr) = panic_the_home_shard("1");
    let line = format!("shard {home}: in-flight operations cancelled after the failure");
    assert!(stderr.contains(&line), "no {line:?} in stderr: {stderr}");
}

#[test]
fn issue_7_a_panic_in_the_failed_shards_cleanup_neither_hangs_nor_aborts() {
    // RINGMQ_TEST_PANIC=2: the cleanup after the panic panics too. The process still exits
    // non-zero in time, and the shard's memory is left to the process's end.
    let (home, stderr) = panic_the_home_shard("2");
    let line = format!("shard {home}: the cleanup after the failure panicked too");
    assert!(stderr.contains(&line), "no {line:?} in stderr: {stderr}");
}

/// Every shard's listener sets SO_REUSEPORT, which would let a second broker (same user) join
/// the first one's port and silently take half its new clients: it must refuse to start.
#[test]
fn a_second_broker_on_the_same_port_refuses_to_start() {
    let broker = Ringmq::start(&["--shards", "2"]);
    let listen = broker.addr.to_string();
    let (code, stderr) = refused_start(&["--listen", &listen, "--shards", "2"]);
    assert_ne!(code, Some(0), "stderr: {stderr}");
    assert!(stderr.contains("another broker"), "stderr: {stderr}");
    assert_eq!(
        connack_code(broker.addr, None),
        0,
        "the first broker still serves"
    );
    broker.stop();
}

#[test]
fn password_file_and_allow_anonymous_flags() {
    // The fixture was written by mosquitto_passwd (see src/auth.rs): alice / alice-secret.
    let passwd = fixture("passwd");
    let broker = Ringmq::start(&[
        "--password-file",
        passwd.to_str().unwrap(),
        "--allow-anonymous",
        "false",
    ]);
    assert_eq!(
        connack_code(broker.addr, Some(("alice", "alice-secret"))),
        0
    );
    assert_eq!(connack_code(broker.addr, Some(("alice", "wrong"))), 4);
    assert_eq!(connack_code(broker.addr, None), 5);
    broker.stop();
}

#[test]
fn sha512_crypt_password_file_is_accepted() {
    // `$6$` entries (mosquitto 1.x): carol / carol-pw (see src/auth.rs).
    let broker = Ringmq::start(&[
        "--password-file",
        fixture("passwd-sha512").to_str().unwrap(),
        "--allow-anonymous",
        "false",
    ]);
    assert_eq!(connack_code(broker.addr, Some(("carol", "carol-pw"))), 0);
    assert_eq!(connack_code(broker.addr, Some(("carol", "nope"))), 4);
    broker.stop();
}

#[test]
fn config_file_is_read_and_flags_override_it() {
    let dir = TempDir::new("cli-config");
    let path = dir.path().join("ringmq.toml");
    let passwd = fixture("passwd");
    std::fs::write(
        &path,
        format!(
            "allow_anonymous = false\npassword_file = {:?}\n\n[limits]\nqos_max = 1\n",
            passwd.to_str().unwrap()
        ),
    )
    .unwrap();
    let config = path.to_str().unwrap();

    // From the file: anonymous refused, QoS capped at 1.
    let broker = Ringmq::start(&["--config", config]);
    assert_eq!(connack_code(broker.addr, None), 5);
    let mut connect = Connect::v311(&unique_id("cli-qos"));
    connect.username = Some("alice".into());
    connect.password = Some(b"alice-secret".to_vec());
    let (mut client, _) = RawClient::connect_with(broker.addr, &connect);
    assert_eq!(client.subscribe(1, &[("capped/qos", 2)]), vec![1]);
    drop(client);
    broker.stop();

    // The flag wins over the file.
    let broker = Ringmq::start(&["--config", config, "--allow-anonymous", "true"]);
    assert_eq!(connack_code(broker.addr, None), 0);
    broker.stop();
}

/// The scheduler's time slice of each thread of process `pid` named `ringmq-shard-*`, and of
/// its main thread, in ns, from /proc/PID/task/TID/sched; None where the kernel does not show
/// it (no CONFIG_SCHED_DEBUG) or ignores a thread's own slice (before Linux 6.12).
fn thread_slices(pid: u32) -> Option<(Vec<u64>, u64)> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let mut numbers = release.split(|c: char| !c.is_ascii_digit());
    let major: u32 = numbers.next()?.parse().ok()?;
    let minor: u32 = numbers.next()?.parse().ok()?;
    if (major, minor) < (6, 12) {
        return None;
    }
    let slice = |tid: &str| -> Option<u64> {
        let sched = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/sched")).ok()?;
        let line = sched.lines().find(|l| l.starts_with("se.slice"))?;
        line.split(':').nth(1)?.trim().parse().ok()
    };
    let main = slice(&pid.to_string())?;
    let mut shards = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let tid = task.ok()?.file_name().into_string().ok()?;
        let comm = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).ok()?;
        if comm.starts_with("ringmq-shard-") {
            shards.push(slice(&tid)?);
        }
    }
    Some((shards, main))
}

/// `sched_slice_us`: each shard thread asks for that slice, so a shard woken by a packet
/// preempts whatever shares its core (a client that SUBSCRIBEs and, without waiting for the
/// SUBACK, has another client publish was missed 11-12 times in 20 across 2 shards on a
/// 2-core machine with the kernel's slice, once with 100 µs); 0 leaves the kernel's.
#[test]
fn shard_threads_ask_for_the_configured_time_slice() {
    let dir = TempDir::new("cli-slice");
    for (slice_us, want_custom) in [(250u64, true), (0, false)] {
        let path = dir.path().join(format!("slice-{slice_us}.toml"));
        std::fs::write(&path, format!("sched_slice_us = {slice_us}\n")).unwrap();
        let broker = Ringmq::start(&["--config", path.to_str().unwrap(), "--shards", "2"]);
        let Some((shards, main)) = thread_slices(broker.pid()) else {
            eprintln!("the kernel shows no per-thread slice here (before 6.12, or no sched debug)");
            broker.stop();
            return;
        };
        assert_eq!(shards.len(), 2, "two shard threads");
        for shard in shards {
            if want_custom {
                assert_eq!(shard, slice_us * 1000, "sched_slice_us = {slice_us}");
            } else {
                assert_eq!(shard, main, "sched_slice_us = 0 keeps the kernel's slice");
            }
        }
        assert_broker_still_serves(broker.addr);
        broker.stop();
    }
}

#[test]
fn bad_config_is_refused_with_a_message_naming_the_key() {
    let dir = TempDir::new("cli-bad");
    let unknown = dir.path().join("unknown.toml");
    std::fs::write(&unknown, "[limits]\nqos_maximum = 1\n").unwrap();
    let (code, stderr) = refused_start(&["--config", unknown.to_str().unwrap()]);
    assert_ne!(code, Some(0));
    assert!(stderr.contains("qos_maximum"), "stderr: {stderr}");

    let invalid = dir.path().join("invalid.toml");
    std::fs::write(&invalid, "[limits]\nqos_max = 3\n").unwrap();
    let (code, stderr) = refused_start(&["--config", invalid.to_str().unwrap()]);
    assert_ne!(code, Some(0));
    assert!(stderr.contains("qos_max"), "stderr: {stderr}");

    let (code, stderr) = refused_start(&["--config", "/nonexistent/ringmq.toml"]);
    assert_ne!(code, Some(0));
    assert!(
        stderr.contains("/nonexistent/ringmq.toml"),
        "stderr: {stderr}"
    );
}

/// The ```toml block of README.md.
fn readme_toml() -> String {
    let readme = std::fs::read_to_string(manifest_dir().join("README.md")).expect("README.md");
    let start = readme
        .find("```toml\n")
        .expect("README.md has a ```toml block")
        + 8;
    let end = start + readme[start..].find("```").expect("the block ends");
    readme[start..end].to_string()
}

#[test]
fn readme_toml_example_is_the_defaults() {
    let config = Config::from_toml(&readme_toml()).expect("README's TOML example parses");
    assert_eq!(
        config,
        Config::default(),
        "README's example must show the defaults"
    );
}

#[test]
fn readme_toml_example_names_every_key() {
    // Every `pub field:` of Config and Limits in src/config.rs appears as `field =` in the
    // README (commented out for optional ones).
    let source = std::fs::read_to_string(manifest_dir().join("src/config.rs")).unwrap();
    let toml = readme_toml();
    let mut checked = 0;
    for name in [
        "pub struct Limits",
        "pub struct Config",
        "pub struct Persistence",
    ] {
        let start = source.find(name).expect(name);
        let body = &source[start..start + source[start..].find("\n}").unwrap()];
        for line in body.lines() {
            let line = line.trim();
            let Some(field) = line.strip_prefix("pub ").and_then(|l| l.split(':').next()) else {
                continue;
            };
            if field.contains(' ') || field == "limits" || field == "persistence" {
                continue; // `pub struct ...` or the [limits] / [persistence] table itself
            }
            checked += 1;
            assert!(
                toml.lines().any(|l| l
                    .trim_start_matches("# ")
                    .starts_with(&format!("{field} ="))),
                "README.md's TOML example lacks `{field}`"
            );
        }
    }
    assert!(
        checked >= 10,
        "parsed only {checked} fields from src/config.rs"
    );
}
