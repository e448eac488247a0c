//! The broker's log lines (issue 11), read from the `ringmq` binary's stderr as an operator
//! sees them: the startup, a client's connect (client id, protocol, address), a refused
//! CONNECT, a take-over, a keepalive expiry, a protocol error (each with the client's
//! address), a limit hit told once; `--log-level warn`
//! hides connects; a burst of connections is rate-limited with a count of what was left out.
//! Clients: mosquitto_pub for MQTT 5, raw bytes for 3.1.1 and for what clients never send.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::binary::{run_to_exit, Ringmq};
use common::*;

/// Waits for a line that the broker's timer (a 1 s tick) produces: two ticks and room.
const TICKS: Duration = Duration::from_secs(10);

fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
        .to_str()
        .unwrap()
        .to_string()
}

/// `2026-12-04T06:19:40.123Z INFO  ...`: RFC 3339 UTC with milliseconds, then the level.
fn assert_line_format(line: &str, level: &str) {
    let bytes = line.as_bytes();
    assert!(line.len() > 30, "{line:?}");
    let digits = [0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18, 20, 21, 22];
    assert!(
        digits.iter().all(|&i| bytes[i].is_ascii_digit()),
        "timestamp of {line:?}"
    );
    for (at, c) in [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')] {
        assert_eq!(bytes[at], c, "{line:?}");
    }
    assert_eq!(&line[19..20], ".", "milliseconds in {line:?}");
    assert_eq!(&line[23..25], "Z ", "UTC in {line:?}");
    assert_eq!(line[25..].split(' ').next(), Some(level), "{line:?}");
}

#[test]
fn startup_and_a_v5_and_a_v311_connect_name_client_protocol_and_listener() {
    let mut broker = Ringmq::start(&["--log-level", "info"]);
    let listening = broker.wait_line(&["listening on", &broker.addr.to_string()], WAIT);
    assert_line_format(&listening, "INFO");
    assert!(listening.contains("(mqtt)"), "{listening}");

    // MQTT 5.0 through mosquitto_pub.
    let id = unique_id("log-v5");
    let published = Proc::spawn(
        "mosquitto_pub",
        &[
            "-V".into(),
            "5".into(),
            "-h".into(),
            "127.0.0.1".into(),
            "-p".into(),
            broker.addr.port().to_string(),
            "-i".into(),
            id.clone(),
            "-k".into(),
            "42".into(),
            "-t".into(),
            unique_topic("log"),
            "-m".into(),
            "x".into(),
        ],
    )
    .finish();
    assert!(published.status.success(), "{}", published.stderr);
    let quoted = format!("client \"{id}\"");
    let line = broker.wait_line(&["connect:", &quoted], WAIT);
    assert_line_format(&line, "INFO");
    assert!(line.contains("(MQTT 5.0)"), "{line}");
    assert!(line.contains("keepalive 42 s"), "{line}");
    assert!(line.contains("clean start 1"), "{line}");
    assert!(
        line.contains(&format!("listener {} (mqtt)", broker.addr)),
        "{line}"
    );
    let line = broker.wait_line(&["disconnect:", &quoted], WAIT);
    assert!(line.ends_with("client DISCONNECT"), "{line}");

    // MQTT 3.1.1, clean session 0, a username.
    let id = unique_id("log-v311");
    let mut connect = Connect::v311(&id);
    connect.clean_session = false;
    connect.username = Some("carol".into());
    let (client, _) = RawClient::connect_with(broker.addr, &connect);
    let from = format!("from {}", client.local_addr());
    assert!(from.starts_with("from 127.0.0.1:"), "{from}");
    let line = broker.wait_line(&["connect:", &format!("client \"{id}\"")], WAIT);
    assert!(line.contains("(MQTT 3.1.1)"), "{line}");
    assert!(
        line.contains(&from),
        "the client's address and port: {line}"
    );
    assert!(line.contains("clean start 0"), "{line}");
    assert!(line.contains("username \"carol\""), "{line}");
    drop(client); // no DISCONNECT: the peer closes
    let line = broker.wait_line(&["disconnect:", &format!("client \"{id}\"")], WAIT);
    assert!(line.contains("closed by the client"), "{line}");
    assert!(line.contains("(MQTT 3.1.1)"), "{line}");
    assert!(
        line.contains(&from),
        "a reset socket still has its address: {line}"
    );
    broker.stop();
}

#[test]
fn a_client_homed_on_another_shard_is_logged_by_its_home_shard() {
    let mut broker = Ringmq::start(&["--shards", "2"]);
    for home in 0..2 {
        let id = unique_id_on(home, 2, "log-home");
        let client = RawClient::connect(broker.addr, &id);
        // After a hand-off the address comes from the home shard's slot.
        let from = format!("from {}", client.local_addr());
        let line = broker.wait_line(&["connect:", &format!("client \"{id}\"")], WAIT);
        assert!(line.contains(&format!("shard {home}: connect:")), "{line}");
        assert!(line.contains(&from), "{line}");
        client.disconnect();
        let line = broker.wait_line(&["disconnect:", &format!("client \"{id}\"")], WAIT);
        assert!(
            line.contains(&format!("shard {home}: disconnect:")),
            "{line}"
        );
        assert!(line.contains(&from), "{line}");
    }
    broker.stop();
}

#[test]
fn a_bad_password_is_logged_as_a_refused_connect_with_its_code() {
    let mut broker = Ringmq::start(&[
        "--password-file",
        &fixture("passwd"),
        "--allow-anonymous",
        "false",
    ]);
    let id = unique_id("log-refused");
    let mut connect = Connect::v311(&id);
    connect.username = Some("alice".into());
    connect.password = Some(b"wrong".to_vec());
    let mut client = RawClient::open(broker.addr);
    client.send(&connect.bytes());
    assert_eq!(
        client.read_packet().connack().1,
        4,
        "bad user name or password"
    );
    let line = broker.wait_line(&["refused CONNECT", &format!("client \"{id}\"")], WAIT);
    assert_line_format(&line, "INFO");
    assert!(
        line.contains(&format!("from {}", client.local_addr())),
        "{line}"
    );
    assert!(line.contains("return code 4"), "{line}");
    assert!(line.contains("bad user name or password"), "{line}");
    // A refused client never connected: no disconnect line for it.
    broker.take_lines(QUIET);
    assert_eq!(broker.count("disconnect:"), 0, "{:?}", broker.seen);
    broker.stop();
}

#[test]
fn a_take_over_is_logged_on_the_old_connection() {
    // [MQTT-3.1.4-2] The second connection with a client id closes the first.
    let mut broker = Ringmq::start(&[]);
    let id = unique_id("log-takeover");
    let mut first = RawClient::connect(broker.addr, &id);
    let second = RawClient::connect(broker.addr, &id);
    let first_from = format!("from {}", first.local_addr());
    let second_from = format!("from {}", second.local_addr());
    first.expect_closed();
    let line = broker.wait_line(&["disconnect:", &format!("client \"{id}\"")], WAIT);
    assert!(line.contains("taken over"), "{line}");
    assert!(
        line.contains(&first_from),
        "the old connection's address: {line}"
    );
    // Both connects are logged, each with its own address.
    broker.wait_line(&["connect:", &format!("client \"{id}\"")], WAIT);
    broker.wait_line(&["connect:", &second_from], WAIT);
    // ": connect:", not the "disconnect:" line's tail.
    assert_eq!(broker.count(&format!(": connect: client \"{id}\"")), 2);
    assert_eq!(broker.count(&first_from), 2, "connect and disconnect");
    broker.stop();
}

#[test]
fn a_keepalive_expiry_is_logged_with_the_keepalive() {
    // [MQTT-3.1.2-24] Silent for 1.5 x keepalive: disconnected.
    let mut broker = Ringmq::start(&[]);
    let id = unique_id("log-keepalive");
    let mut connect = Connect::v311(&id);
    connect.keepalive_secs = 1;
    let (mut client, _) = RawClient::connect_with(broker.addr, &connect);
    let from = format!("from {}", client.local_addr());
    client.expect_closed_within(TICKS);
    let line = broker.wait_line(&["disconnect:", &format!("client \"{id}\"")], WAIT);
    assert!(line.contains("keepalive expired"), "{line}");
    assert!(line.contains(&from), "{line}");
    assert!(line.contains("1.5 x 1 s"), "{line}");
    broker.stop();
}

#[test]
fn a_protocol_error_is_logged_with_its_reason() {
    let mut broker = Ringmq::start(&[]);
    let id = unique_id("log-protocol");
    let mut client = RawClient::connect(broker.addr, &id);
    // [MQTT-3.8.1-1] SUBSCRIBE's fixed header flags must be 0010.
    let mut bad = subscribe_bytes(1, &[("a/b", 0)]);
    bad[0] = 0x80;
    client.send(&bad);
    client.expect_closed();
    let line = broker.wait_line(&["disconnect:", &format!("client \"{id}\"")], WAIT);
    assert!(line.contains("protocol error"), "{line}");
    assert!(line.contains("flags"), "the decoder's reason: {line}");
    broker.stop();
}

#[test]
fn log_level_warn_hides_connects_and_startup_but_not_warnings() {
    let dir = TempDir::new("log-warn");
    let path = dir.path().join("ringmq.toml");
    std::fs::write(&path, "[limits]\nsubscriptions_per_client_max = 1\n").unwrap();
    let mut broker = Ringmq::start(&["--log-level", "warn", "--config", path.to_str().unwrap()]);
    let id = unique_id("log-quiet");
    let mut client = RawClient::connect(broker.addr, &id);
    assert_eq!(
        client.subscribe(1, &[("a/1", 0), ("a/2", 0)]),
        vec![0, 0x80]
    );
    // The warning shows: the level filters, it does not silence everything.
    broker.wait_line(&["WARN", "limits.subscriptions_per_client_max"], WAIT);
    client.disconnect();
    let lines = broker.stop();
    assert!(
        lines.iter().all(|l| !l.contains(" INFO ")),
        "info lines at warn: {lines:?}"
    );
    assert!(!lines.iter().any(|l| l.contains(&id)), "{lines:?}");
}

#[test]
fn log_level_in_the_config_file_and_a_bad_level() {
    let dir = TempDir::new("log-config");
    let path = dir.path().join("ringmq.toml");
    std::fs::write(&path, "log_level = \"error\"\n").unwrap();
    let broker = Ringmq::start(&["--config", path.to_str().unwrap()]);
    RawClient::connect(broker.addr, &unique_id("log-file")).disconnect();
    let lines = broker.stop();
    assert!(
        lines
            .iter()
            .all(|l| !l.contains(" INFO ") && !l.contains(" WARN ")),
        "{lines:?}"
    );

    let (status, stderr) = run_to_exit(&["--log-level", "loud", "--listen", "127.0.0.1:0"]);
    assert!(!status.success());
    assert!(stderr.contains("loud"), "{stderr}");
}

#[test]
fn a_burst_of_connections_is_rate_limited_and_the_rest_counted() {
    const CONNECTIONS: usize = 600;
    let mut broker = Ringmq::start(&[]);
    let prefix = unique_id("log-burst");
    for n in 0..CONNECTIONS {
        RawClient::connect(broker.addr, &format!("{prefix}-{n}")).disconnect();
    }
    // Each connection makes two lines (connect, disconnect); what was written plus what the
    // summaries count must be all of them, once the last second's summary is out.
    let deadline = Instant::now() + TICKS;
    let (written, suppressed) = loop {
        broker.take_lines(Duration::from_millis(200));
        let written = broker.count(&format!("client \"{prefix}-"));
        let suppressed: usize = broker
            .seen
            .iter()
            .filter(|l| l.contains("connection lines suppressed"))
            .map(|l| {
                let after = l.split(": ").last().unwrap();
                after.split(' ').next().unwrap().parse::<usize>().unwrap()
            })
            .sum();
        if written + suppressed >= 2 * CONNECTIONS || Instant::now() >= deadline {
            break (written, suppressed);
        }
    };
    assert!(
        written < CONNECTIONS,
        "{written} lines for {CONNECTIONS} connections: not rate-limited"
    );
    assert!(suppressed > 0, "no suppressed-lines summary");
    assert_eq!(
        written + suppressed,
        2 * CONNECTIONS,
        "every line written or counted"
    );
    broker.stop();
}

#[test]
fn a_limit_hit_is_logged_once_naming_its_key_and_counted_always() {
    let dir = TempDir::new("log-limit");
    let path = dir.path().join("ringmq.toml");
    std::fs::write(&path, "[limits]\nsubscriptions_per_client_max = 1\n").unwrap();
    let mut broker = Ringmq::start(&["--config", path.to_str().unwrap()]);
    let mut client = RawClient::connect(broker.addr, &unique_id("log-limit"));
    assert_eq!(client.subscribe(1, &[("a/1", 0)]), vec![0]);
    for packet_id in 2..6 {
        let topic = format!("a/{packet_id}");
        assert_eq!(client.subscribe(packet_id, &[(&topic, 0)]), vec![0x80]);
    }
    let line = broker.wait_line(&["limits.subscriptions_per_client_max"], WAIT);
    assert_line_format(&line, "WARN");
    // Two timer ticks later still one line: the next comes a minute after at the earliest.
    broker.take_lines(Duration::from_millis(2500));
    assert_eq!(
        broker.count("subscriptions_per_client_max"),
        1,
        "{:?}",
        broker.seen
    );
    client.disconnect();
    let lines = broker.stop();
    // Counted always: the stop line's counters say 4.
    let stopped = lines
        .iter()
        .find(|l| l.contains("stopped:"))
        .expect("a stop line");
    assert!(stopped.contains("subscriptions 4"), "{stopped}");
}
