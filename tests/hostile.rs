//! Hostile clients (issue 7): connection storms, clients that trickle or flood bytes before
//! their CONNECT. Every wait is bounded; the storms stay within the test process's open-file
//! limit (RLIMIT_NOFILE 20,000: the clients' sockets are ours, the broker's connections are
//! direct descriptors and not in our table).

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Barrier, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// Connections per storm: 15,000 client sockets leave this process ~4,900 of its 20,000
/// descriptors for the harness and the broker (whose connections are direct descriptors, not
/// in our table), and ~13,000 ephemeral ports of the 28,000 on loopback. Under a lower
/// open-file limit the storm shrinks to fit, and says so.
const STORM_CONNECTIONS: usize = 15_000;

fn storm_connections() -> usize {
    let limit = ringmq::ring::nofile_limit() as usize;
    let fits = STORM_CONNECTIONS.min(limit.saturating_sub(2_000)).max(500);
    if fits < STORM_CONNECTIONS {
        eprintln!("RLIMIT_NOFILE {limit}: storms of {fits} connections, not {STORM_CONNECTIONS}");
    }
    fits
}

/// The storms hold thousands of descriptors: one at a time in this process.
static STORM: Mutex<()> = Mutex::new(());

fn storm_lock() -> MutexGuard<'static, ()> {
    STORM.lock().unwrap_or_else(|e| e.into_inner())
}

/// What each storm connection sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A valid CONNECT, then nothing: must get a CONNACK.
    Connect,
    /// Random bytes: must be closed (or, by chance a CONNECT, answered).
    Garbage,
    /// A valid CONNECT, then random bytes: must be answered or closed.
    ConnectThenGarbage,
}

/// How the storm ended, connection by connection.
#[derive(Debug, Default)]
struct Outcome {
    attempted: usize,
    /// TCP connect failed or timed out.
    refused: usize,
    connacked: usize,
    closed: usize,
    /// Neither a CONNACK nor a close before the deadline: the broker lost it.
    silent: usize,
}

/// A small xorshift: garbage that differs per connection, no crate needed.
fn garbage(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Opens `total` connections from `threads` threads at once, each sending what `kind_of`
/// says, then waits (up to `deadline`) for every answer: a CONNACK or a close. Returns the
/// outcome and the sockets, still open.
fn storm(
    addr: SocketAddr,
    total: usize,
    threads: usize,
    deadline: Duration,
    kind_of: fn(usize) -> Kind,
) -> (Outcome, Vec<TcpStream>) {
    let start = Arc::new(Barrier::new(threads));
    let opened = Arc::new(Barrier::new(threads));
    let end = Instant::now() + deadline;
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let (start, opened) = (start.clone(), opened.clone());
            thread::spawn(move || {
                let mut outcome = Outcome::default();
                let mut streams = Vec::new();
                start.wait();
                for n in (t..total).step_by(threads) {
                    outcome.attempted += 1;
                    let Ok(mut stream) = TcpStream::connect_timeout(&addr, deadline) else {
                        outcome.refused += 1;
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
                    let kind = kind_of(n);
                    let mut bytes = Vec::new();
                    if kind != Kind::Garbage {
                        bytes.extend(Connect::v311(&format!("storm-{n}")).bytes());
                    }
                    if kind != Kind::Connect {
                        bytes.extend(garbage(n as u64, 64 + n % 64));
                    }
                    // The broker may close a garbage sender before it has written it all.
                    let _ = stream.write_all(&bytes);
                    streams.push((kind, stream));
                }
                opened.wait();
                let mut kept = Vec::with_capacity(streams.len());
                for (kind, mut stream) in streams {
                    match read_answer(&mut stream, end) {
                        Answer::ConnAck => outcome.connacked += 1,
                        Answer::Closed => outcome.closed += 1,
                        Answer::Nothing => outcome.silent += 1,
                    }
                    if kind == Kind::Connect {
                        kept.push(stream);
                    }
                }
                (outcome, kept)
            })
        })
        .collect();
    let mut outcome = Outcome::default();
    let mut streams = Vec::new();
    for worker in workers {
        let (o, s) = worker.join().expect("storm thread");
        outcome.attempted += o.attempted;
        outcome.refused += o.refused;
        outcome.connacked += o.connacked;
        outcome.closed += o.closed;
        outcome.silent += o.silent;
        streams.extend(s);
    }
    (outcome, streams)
}

enum Answer {
    ConnAck,
    Closed,
    Nothing,
}

/// The broker's first answer: a CONNACK (its 4 bytes), or a close (EOF or reset).
fn read_answer(stream: &mut TcpStream, end: Instant) -> Answer {
    let mut got = Vec::new();
    let mut chunk = [0u8; 256];
    loop {
        if got.len() >= 4 && got[0] == 0x20 {
            return Answer::ConnAck;
        }
        let now = Instant::now();
        if now >= end {
            return Answer::Nothing;
        }
        let _ = stream.set_read_timeout(Some(end - now));
        match stream.read(&mut chunk) {
            Ok(0) => return Answer::Closed,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Answer::Nothing
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return Answer::Closed,
        }
    }
}

/// Closes with a reset (SO_LINGER 0): the broker sees ECONNRESET, no FIN handshake.
fn reset_all(streams: Vec<TcpStream>) {
    for stream in streams {
        let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    }
}

/// A fresh client gets its CONNACK within `within`, at the first try.
fn assert_fresh_client_served(addr: SocketAddr, within: Duration) {
    let started = Instant::now();
    let mut client = RawClient::open(addr);
    client.send(&Connect::v311(&unique_id("after-storm")).bytes());
    let packet = client
        .try_read_packet_or_close(within)
        .unwrap_or_else(|| panic!("no CONNACK within {within:?} after the storm"));
    assert_eq!(packet.connack(), (false, 0));
    eprintln!("fresh client served in {:?}", started.elapsed());
    client.ping();
}

/// A fresh client gets its CONNACK within `within`, trying again after a close as any client
/// does: right after a storm over capacity the broker may still be closing the storm's
/// connections, and it refuses (closes) what it has no slot for.
fn assert_fresh_client_served_retrying(addr: SocketAddr, within: Duration) {
    let started = Instant::now();
    let deadline = started + within;
    let mut tries = 0;
    loop {
        tries += 1;
        let mut client = RawClient::open(addr);
        client.send_ignoring_errors(&Connect::v311(&unique_id("after-storm")).bytes());
        let left = deadline.saturating_duration_since(Instant::now());
        if let Some(packet) = client.try_read_packet_or_close(left) {
            assert_eq!(packet.connack(), (false, 0));
            eprintln!(
                "fresh client served in {:?} ({tries} tries)",
                started.elapsed()
            );
            client.ping();
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no CONNACK within {within:?} after the storm ({tries} tries)"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

fn storm_config(shards: usize) -> ringmq::config::Config {
    let mut config = test_config();
    config.shards = shards;
    config.rings_per_shard = 1;
    // Room for the whole storm on any one shard (hand-offs gather clients by home shard).
    config.ring_files_max = 19_000;
    // Garbage that happens to start like a CONNECT waits for the rest: not for long.
    config.limits.connect_timeout_secs = 2;
    config
}

fn connect_storm(shards: usize, total: usize) {
    let _storm = storm_lock();
    let broker = TestBroker::start(storm_config(shards));
    let started = Instant::now();
    let (outcome, streams) = storm(broker.addr(), total, 16, Duration::from_secs(30), |_| {
        Kind::Connect
    });
    eprintln!(
        "{shards} shard(s): {} / {} CONNACKed in {:?}: {outcome:?}",
        outcome.connacked,
        outcome.attempted,
        started.elapsed()
    );
    assert_eq!(outcome.connacked, total, "{outcome:?}");
    reset_all(streams);
    assert_fresh_client_served(broker.addr(), Duration::from_secs(2));
}

fn garbage_storm(shards: usize, total: usize) {
    let _storm = storm_lock();
    let broker = TestBroker::start(storm_config(shards));
    let started = Instant::now();
    let (outcome, streams) = storm(broker.addr(), total, 16, Duration::from_secs(30), |n| {
        if n % 2 == 0 {
            Kind::Garbage
        } else {
            Kind::ConnectThenGarbage
        }
    });
    eprintln!(
        "{shards} shard(s): {} / {} answered in {:?}: {outcome:?}",
        outcome.connacked + outcome.closed,
        outcome.attempted,
        started.elapsed()
    );
    assert_eq!(outcome.silent + outcome.refused, 0, "{outcome:?}");
    reset_all(streams);
    assert_fresh_client_served(broker.addr(), Duration::from_secs(2));
}

#[test]
fn issue7_connect_storm_on_1_shard() {
    connect_storm(1, storm_connections());
}

#[test]
fn issue7_connect_storm_on_2_shards() {
    connect_storm(2, storm_connections());
}

#[test]
fn issue7_garbage_storm_on_1_shard() {
    garbage_storm(1, storm_connections());
}

#[test]
fn issue7_garbage_storm_on_2_shards() {
    garbage_storm(2, storm_connections());
}

/// More connections than the broker has slots for, all held open: each one is answered, with a
/// CONNACK or a close, none left hanging in the listen backlog; once they are gone the broker
/// serves a new client at once.
fn over_capacity_storm(shards: usize) {
    let _storm = storm_lock();
    let mut config = storm_config(shards);
    config.ring_files_max = 64;
    let broker = TestBroker::start(config);
    let total = 1000;
    let (outcome, streams) = storm(broker.addr(), total, 8, Duration::from_secs(10), |_| {
        Kind::Connect
    });
    eprintln!("{shards} shard(s), 64 slots per ring: {outcome:?}");
    assert_eq!(outcome.silent + outcome.refused, 0, "{outcome:?}");
    assert!(outcome.connacked > 0, "{outcome:?}");
    reset_all(streams);
    assert_fresh_client_served_retrying(broker.addr(), Duration::from_secs(3));
}

#[test]
fn issue7_over_capacity_storm_is_answered_on_1_shard() {
    over_capacity_storm(1);
}

#[test]
fn issue7_over_capacity_storm_is_answered_on_2_shards() {
    over_capacity_storm(2);
}

/// Issue 7 item 4: before CONNECT the deadline runs from the accept, whatever bytes trickle in.
/// The client sends a CONNECT one byte every 250 ms (about 12 s for all but its last byte)
/// and must be closed about `connect_timeout_secs` after it connected.
#[test]
fn issue7_connect_deadline_runs_from_the_accept_not_the_last_byte() {
    let mut config = test_config();
    config.limits.connect_timeout_secs = 2;
    let broker = TestBroker::start(config);
    let client_id = format!("{}-{}", unique_id("trickle"), "x".repeat(20));
    let connect = Connect::v311(&client_id).bytes();
    assert!(connect.len() > 40, "long enough to outlast the deadline");
    let started = Instant::now();
    let mut stream = TcpStream::connect_timeout(&broker.addr(), WAIT).expect("connect");
    stream.set_nodelay(true).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(250)))
        .unwrap();
    let mut closed_after = None;
    for byte in &connect[..connect.len() - 1] {
        if stream.write_all(&[*byte]).is_err() {
            closed_after = Some(started.elapsed());
            break;
        }
        let mut buf = [0u8; 16];
        match stream.read(&mut buf) {
            Ok(0) => {
                closed_after = Some(started.elapsed());
                break;
            }
            Ok(n) => panic!("the broker answered a partial CONNECT: {:02x?}", &buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => {
                closed_after = Some(started.elapsed());
                break;
            }
        }
    }
    let closed_after = closed_after.unwrap_or_else(|| {
        panic!(
            "still open after {:?} of trickling with connect_timeout_secs = 2",
            started.elapsed()
        )
    });
    eprintln!("closed after {closed_after:?}");
    assert!(
        closed_after >= Duration::from_millis(1500) && closed_after <= Duration::from_millis(4500),
        "closed after {closed_after:?}, expected about 2 s (coarse 1 s timer)"
    );
}

/// The other side of item 4: once the CONNECT is in, keepalive counts from the CONNECT, not
/// from the accept. A client that waits 2.5 s before a CONNECT with keepalive 2 (held to 3 s)
/// is still served 1 s later.
#[test]
fn issue7_keepalive_counts_from_the_connect_not_the_accept() {
    let broker = start_broker();
    let mut client = RawClient::open(broker.addr());
    thread::sleep(Duration::from_millis(2500));
    let mut connect = Connect::v311(&unique_id("late-connect"));
    connect.keepalive_secs = 2;
    client.send(&connect.bytes());
    assert_eq!(client.read_packet().connack(), (false, 0));
    thread::sleep(Duration::from_millis(1000));
    client.ping();
}

/// Issue 7 item 5: a CONNECT announcing more than `connect_packet_size_max` (default 8 KiB) is
/// closed at its fixed header, before the broker buffers its body; whatever the client floods
/// in after it is not kept.
#[test]
fn issue7_a_connect_over_the_cap_is_closed_at_its_header() {
    let mut config = test_config();
    // Far away: only the cap can close this connection within WAIT.
    config.limits.connect_timeout_secs = 120;
    let broker = TestBroker::start(config);
    let mut client = RawClient::open(broker.addr());
    let mut header = vec![0x10];
    put_remaining_length(64 << 10, &mut header);
    client.send_ignoring_errors(&header);
    client.send_ignoring_errors(&vec![0x41; 16 << 10]);
    client.expect_closed_silently();
    broker.wait_counter("connect_too_large_count", |s| s.connect_too_large_count, 1);
    assert_broker_still_serves(broker.addr());
}

/// A CONNECT carrying a 6 KiB password (a token) fits the default cap; one of 9 KiB does not,
/// until the cap is raised.
#[test]
fn issue7_connect_cap_fits_tokens_and_is_configurable() {
    let mut token_6k = Connect::v311(&unique_id("token"));
    token_6k.username = Some("user".into());
    token_6k.password = Some(vec![b't'; 6 << 10]);
    let mut token_9k = token_6k.clone();
    token_9k.client_id = unique_id("token");
    token_9k.password = Some(vec![b't'; 9 << 10]);

    let broker = start_broker();
    RawClient::connect_with(broker.addr(), &token_6k);
    let mut refused = RawClient::open(broker.addr());
    refused.send_ignoring_errors(&token_9k.bytes());
    refused.expect_closed_silently();
    drop(broker);

    let mut config = test_config();
    config.limits.connect_packet_size_max = 16 << 10;
    let broker = TestBroker::start(config);
    RawClient::connect_with(broker.addr(), &token_9k);
}
