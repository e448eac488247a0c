//! Shared harness for the integration tests: a broker on 127.0.0.1:0, a raw TCP client that speaks
//! hand-written bytes, a rumqttc client driven on its own thread, and the mosquitto command-line
//! clients as child processes.
//!
//! The broker is judged only through independent implementations (rumqttc, mosquitto_pub/sub,
//! bytes written by hand from the spec), never through ringmq's own codec, so a codec bug cannot
//! hide itself. Every wait is bounded: a test that hangs is a failed test, not a stuck CI job.
//!
//! `RINGMQ_TEST_BROKER=mosquitto` runs the same tests against a local mosquitto instead of ringmq,
//! to check the tests themselves against a reference broker.
#![allow(dead_code)] // Each test binary uses a different part of this module.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use ringmq::broker::Broker;
use ringmq::config::Config;
use ringmq::shard::ShardStats;
use rumqttc::{
    Client, ConnAck, Connection, Event, MqttOptions, Outgoing, Packet, Publish, QoS,
    SubscribeReasonCode,
};

/// How long any single expected event may take. Generous: CI runs on two noisy cores.
pub const WAIT: Duration = Duration::from_secs(5);
/// How long we listen to be sure something does NOT happen (after a sentinel where possible).
pub const QUIET: Duration = Duration::from_millis(500);

static NEXT_ID: AtomicUsize = AtomicUsize::new(0);

/// A client id unique in this process and across concurrently running test binaries.
pub fn unique_id(prefix: &str) -> String {
    let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}

/// A unique client id whose home is `shard` of `shard_count` (ids hash to their home shard).
pub fn unique_id_on(shard: usize, shard_count: usize, prefix: &str) -> String {
    loop {
        let id = unique_id(prefix);
        if ringmq::mesh::home_shard(id.as_bytes(), shard_count) == shard {
            return id;
        }
    }
}

/// A topic unique to one test, so tests sharing nothing also share no topic by accident.
pub fn unique_topic(prefix: &str) -> String {
    unique_id(prefix).replace('-', "/")
}

// ---------------------------------------------------------------------------------------------
// Broker
// ---------------------------------------------------------------------------------------------

/// A config for tests: loopback, ephemeral port, one shard with one ring, defaults elsewhere.
/// `RINGMQ_TEST_SHARDS=N`, `RINGMQ_TEST_RINGS=N` and `RINGMQ_TEST_RING_FILES=N` run the whole
/// suite on N shards, N rings per shard, N slots per ring.
pub fn test_config() -> Config {
    let from_env = |name: &str, default: usize| -> usize {
        std::env::var(name)
            .ok()
            .map(|v| v.parse().unwrap_or_else(|_| panic!("{name} is a number")))
            .unwrap_or(default)
    };
    Config {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        shards: from_env("RINGMQ_TEST_SHARDS", 1),
        rings_per_shard: from_env("RINGMQ_TEST_RINGS", 1),
        // A few hundred connections are plenty for any test; keep each ring's table small.
        // RINGMQ_TEST_RING_FILES=8 with several rings spreads a test's clients over them.
        ring_files_max: from_env("RINGMQ_TEST_RING_FILES", 256) as u32,
        // No `$SYS` traffic in tests of other things (tests/observability.rs turns it on).
        sys_interval_secs: 0,
        ..Default::default()
    }
}

/// A broker for one test; stopped when dropped.
pub struct TestBroker {
    addr: SocketAddr,
    ringmq: Option<Broker>,
    mosquitto: Option<(Child, TempDir)>,
}

impl TestBroker {
    pub fn start(config: Config) -> TestBroker {
        if std::env::var("RINGMQ_TEST_BROKER").as_deref() == Ok("mosquitto") {
            return TestBroker::start_mosquitto(&config);
        }
        let broker = Broker::start(config).unwrap_or_else(|e| panic!("Broker::start failed: {e}"));
        TestBroker {
            addr: broker.local_addr(),
            ringmq: Some(broker),
            mosquitto: None,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn is_mosquitto(&self) -> bool {
        self.mosquitto.is_some()
    }

    /// Waits (bounded) until the broker's counters, summed over shards by `count`, reach at
    /// least `at_least`; returns the count. Shards publish their counters about once a second.
    /// Against mosquitto there are no such counters: returns `at_least` at once.
    pub fn wait_counter(&self, what: &str, count: fn(&ShardStats) -> u64, at_least: u64) -> u64 {
        let Some(broker) = &self.ringmq else {
            return at_least;
        };
        let deadline = Instant::now() + WAIT;
        loop {
            let total: u64 = broker.stats().iter().map(count).sum();
            if total >= at_least {
                return total;
            }
            assert!(
                Instant::now() < deadline,
                "counter {what} is {total} after {WAIT:?}, expected at least {at_least}"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every shard's counters as last published (about once a second); empty against
    /// mosquitto.
    pub fn stats(&self) -> Vec<ShardStats> {
        self.ringmq.as_ref().map_or_else(Vec::new, Broker::stats)
    }

    /// The reference broker with the same limits, where mosquitto has an equivalent.
    fn start_mosquitto(config: &Config) -> TestBroker {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("pick a free port")
            .port();
        let dir = TempDir::new("mosquitto");
        let l = &config.limits;
        let mut conf = format!(
            "listener {port} 127.0.0.1\nuser root\npersistence false\nallow_anonymous {}\n\
             max_inflight_messages {}\nmax_queued_messages {}\nmax_packet_size {}\n",
            config.allow_anonymous, l.inflight_max, l.offline_queue_max, l.packet_size_max
        );
        if l.keepalive_max_secs != 0 {
            conf.push_str(&format!("max_keepalive {}\n", l.keepalive_max_secs));
        }
        if let Some(path) = &config.password_file {
            conf.push_str(&format!("password_file {}\n", path.display()));
        }
        let conf_path = dir.path().join("mosquitto.conf");
        std::fs::write(&conf_path, conf).expect("write mosquitto.conf");
        let child = Command::new(require_tool("mosquitto"))
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn mosquitto");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(
                Instant::now() < deadline,
                "mosquitto did not listen on {addr}"
            );
            thread::sleep(Duration::from_millis(20));
        }
        TestBroker {
            addr,
            ringmq: None,
            mosquitto: Some((child, dir)),
        }
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if let Some(broker) = self.ringmq.take() {
            // Bounded like every other wait: a broker that does not stop fails the test, and
            // so does one whose shard failed (panicked) during it.
            let (stopped, done) = mpsc::channel();
            thread::spawn(move || {
                let _ = stopped.send(broker.stop());
            });
            match done.recv_timeout(WAIT) {
                _ if thread::panicking() => {}
                Ok(Ok(())) => {}
                Ok(Err(failure)) => panic!("the broker failed: {failure}"),
                Err(_) => panic!("Broker::stop did not return within {WAIT:?}"),
            }
        }
        if let Some((mut child, _dir)) = self.mosquitto.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts a broker with `test_config()`.
pub fn start_broker() -> TestBroker {
    TestBroker::start(test_config())
}

/// A directory under the system temp dir, removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("ringmq-test-{}", unique_id(prefix)));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------------------------
// Raw MQTT 3.1.1 bytes, written from the spec by hand
// ---------------------------------------------------------------------------------------------

pub const PINGREQ: [u8; 2] = [0xC0, 0x00];
pub const PINGRESP: [u8; 2] = [0xD0, 0x00];
pub const DISCONNECT: [u8; 2] = [0xE0, 0x00];

/// Packet types (high nibble of the first byte).
pub const CONNACK: u8 = 2;
pub const PUBLISH: u8 = 3;
pub const PUBACK: u8 = 4;
pub const PUBREC: u8 = 5;
pub const PUBREL: u8 = 6;
pub const PUBCOMP: u8 = 7;
pub const SUBACK: u8 = 9;
pub const UNSUBACK: u8 = 11;

/// [MQTT-2.2.3] Variable byte integer: 7 bits per byte, high bit = more follows.
pub fn put_remaining_length(mut n: usize, out: &mut Vec<u8>) {
    assert!(n <= 268_435_455, "remaining length {n} too large");
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if n == 0 {
            break;
        }
    }
}

/// [MQTT-1.5.3] A two-byte length, then the bytes (not checked: tests send invalid UTF-8 too).
pub fn put_string(s: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

/// A fixed header byte, the remaining length, then the body.
pub fn packet(first_byte: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first_byte];
    put_remaining_length(body.len(), &mut out);
    out.extend_from_slice(body);
    out
}

#[derive(Clone, Debug)]
pub struct Will {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
}

/// Every field of a CONNECT, including the ones a well-behaved client never gets wrong.
#[derive(Clone, Debug)]
pub struct Connect {
    pub protocol_name: Vec<u8>,
    pub level: u8,
    pub client_id: String,
    pub clean_session: bool,
    pub keepalive_secs: u16,
    pub will: Option<Will>,
    pub username: Option<String>,
    pub password: Option<Vec<u8>>,
    /// [MQTT-3.1.2-3] The reserved flag bit 0 must be 0; tests set it to check it is refused.
    pub reserved_flag: bool,
}

impl Connect {
    /// MQTT 3.1.1 ("MQTT", level 4), clean session, keepalive 60 s.
    pub fn v311(client_id: &str) -> Connect {
        Connect {
            protocol_name: b"MQTT".to_vec(),
            level: 4,
            client_id: client_id.to_string(),
            clean_session: true,
            keepalive_secs: 60,
            will: None,
            username: None,
            password: None,
            reserved_flag: false,
        }
    }

    /// MQTT 3.1 ("MQIsdp", level 3).
    pub fn v31(client_id: &str) -> Connect {
        Connect {
            protocol_name: b"MQIsdp".to_vec(),
            level: 3,
            ..Connect::v311(client_id)
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
        let mut body = Vec::new();
        put_string(&self.protocol_name, &mut body);
        body.push(self.level);
        let mut flags = 0u8;
        if self.reserved_flag {
            flags |= 0x01;
        }
        if self.clean_session {
            flags |= 0x02;
        }
        if let Some(will) = &self.will {
            flags |= 0x04 | (will.qos << 3);
            if will.retain {
                flags |= 0x20;
            }
        }
        if self.password.is_some() {
            flags |= 0x40;
        }
        if self.username.is_some() {
            flags |= 0x80;
        }
        body.push(flags);
        body.extend_from_slice(&self.keepalive_secs.to_be_bytes());
        put_string(self.client_id.as_bytes(), &mut body);
        if let Some(will) = &self.will {
            put_string(will.topic.as_bytes(), &mut body);
            put_string(&will.payload, &mut body);
        }
        if let Some(username) = &self.username {
            put_string(username.as_bytes(), &mut body);
        }
        if let Some(password) = &self.password {
            put_string(password, &mut body);
        }
        packet(0x10, &body)
    }
}

/// A PUBLISH with a topic given as raw bytes (so tests can send invalid UTF-8).
pub fn publish_bytes(
    topic: &[u8],
    qos: u8,
    retain: bool,
    dup: bool,
    packet_id: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut first = 0x30 | (qos << 1);
    if retain {
        first |= 0x01;
    }
    if dup {
        first |= 0x08;
    }
    let mut body = Vec::new();
    put_string(topic, &mut body);
    if qos > 0 {
        body.extend_from_slice(&packet_id.to_be_bytes());
    }
    body.extend_from_slice(payload);
    packet(first, &body)
}

/// [MQTT-3.8.1-1] SUBSCRIBE's fixed header flags are 0b0010.
pub fn subscribe_bytes(packet_id: u16, filters: &[(&str, u8)]) -> Vec<u8> {
    let mut body = packet_id.to_be_bytes().to_vec();
    for (filter, qos) in filters {
        put_string(filter.as_bytes(), &mut body);
        body.push(*qos);
    }
    packet(0x82, &body)
}

/// [MQTT-3.10.1-1] UNSUBSCRIBE's fixed header flags are 0b0010.
pub fn unsubscribe_bytes(packet_id: u16, filters: &[&str]) -> Vec<u8> {
    let mut body = packet_id.to_be_bytes().to_vec();
    for filter in filters {
        put_string(filter.as_bytes(), &mut body);
    }
    packet(0xA2, &body)
}

pub fn puback_bytes(packet_id: u16) -> Vec<u8> {
    packet(0x40, &packet_id.to_be_bytes())
}

pub fn pubrec_bytes(packet_id: u16) -> Vec<u8> {
    packet(0x50, &packet_id.to_be_bytes())
}

/// [MQTT-3.6.1-1] PUBREL's fixed header flags are 0b0010.
pub fn pubrel_bytes(packet_id: u16) -> Vec<u8> {
    packet(0x62, &packet_id.to_be_bytes())
}

pub fn pubcomp_bytes(packet_id: u16) -> Vec<u8> {
    packet(0x70, &packet_id.to_be_bytes())
}

/// One packet as read from the wire: the first byte and the body after the remaining length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawPacket {
    pub first_byte: u8,
    pub body: Vec<u8>,
}

/// A PUBLISH parsed by hand.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawPublish {
    pub topic: String,
    pub qos: u8,
    pub retain: bool,
    pub dup: bool,
    pub packet_id: Option<u16>,
    pub payload: Vec<u8>,
}

impl RawPacket {
    pub fn kind(&self) -> u8 {
        self.first_byte >> 4
    }

    /// (session present, return code), checking it is a well-formed CONNACK [MQTT-3.2].
    pub fn connack(&self) -> (bool, u8) {
        assert_eq!(self.first_byte, 0x20, "expected CONNACK, got {self:?}");
        assert_eq!(
            self.body.len(),
            2,
            "CONNACK remaining length must be 2: {self:?}"
        );
        assert_eq!(
            self.body[0] & 0xFE,
            0,
            "CONNACK reserved bits set: {self:?}"
        );
        (self.body[0] & 1 == 1, self.body[1])
    }

    /// The packet id of a PUBACK/PUBREC/PUBREL/PUBCOMP/UNSUBACK, checking type and flags.
    pub fn ack_id(&self, kind: u8) -> u16 {
        let flags = if kind == PUBREL { 2 } else { 0 };
        assert_eq!(
            self.first_byte,
            (kind << 4) | flags,
            "expected packet type {kind}, got {self:?}"
        );
        assert_eq!(
            self.body.len(),
            2,
            "ack remaining length must be 2: {self:?}"
        );
        u16::from_be_bytes([self.body[0], self.body[1]])
    }

    /// (packet id, return codes) of a SUBACK.
    pub fn suback(&self) -> (u16, Vec<u8>) {
        assert_eq!(self.first_byte, 0x90, "expected SUBACK, got {self:?}");
        assert!(self.body.len() >= 3, "SUBACK too short: {self:?}");
        let id = u16::from_be_bytes([self.body[0], self.body[1]]);
        (id, self.body[2..].to_vec())
    }

    pub fn publish(&self) -> RawPublish {
        assert_eq!(self.kind(), PUBLISH, "expected PUBLISH, got {self:?}");
        let qos = (self.first_byte >> 1) & 3;
        assert!(qos < 3, "PUBLISH with QoS 3 from the broker: {self:?}");
        let b = &self.body;
        assert!(b.len() >= 2, "PUBLISH too short: {self:?}");
        let topic_len = u16::from_be_bytes([b[0], b[1]]) as usize;
        let mut at = 2 + topic_len;
        assert!(
            b.len() >= at,
            "PUBLISH topic runs past the packet: {self:?}"
        );
        let topic = String::from_utf8(b[2..at].to_vec()).expect("topic is UTF-8");
        let packet_id = if qos > 0 {
            assert!(b.len() >= at + 2, "PUBLISH without packet id: {self:?}");
            let id = u16::from_be_bytes([b[at], b[at + 1]]);
            assert_ne!(id, 0, "[MQTT-2.3.1-1] packet id 0 on a QoS>0 PUBLISH");
            at += 2;
            Some(id)
        } else {
            None
        };
        RawPublish {
            topic,
            qos,
            retain: self.first_byte & 1 == 1,
            dup: self.first_byte & 8 == 8,
            packet_id,
            payload: b[at..].to_vec(),
        }
    }
}

/// The (fixed header, body) lengths of the packet at the front of `buf`, if it is complete.
fn packet_extent(buf: &[u8]) -> Option<(usize, usize)> {
    let mut length = 0usize;
    let mut multiplier = 1usize;
    let mut at = 1;
    loop {
        let byte = *buf.get(at)?;
        length += (byte & 0x7F) as usize * multiplier;
        multiplier *= 128;
        at += 1;
        if byte & 0x80 == 0 {
            break;
        }
        assert!(
            at <= 4,
            "broker sent a remaining length over 4 bytes: {buf:02x?}"
        );
    }
    (buf.len() >= at + length).then_some((at, length))
}

/// Splits one packet off the front of `buf` if it is complete.
fn take_packet(buf: &mut Vec<u8>) -> Option<RawPacket> {
    let (at, length) = packet_extent(buf)?;
    let packet = RawPacket {
        first_byte: buf[0],
        body: buf[at..at + length].to_vec(),
    };
    buf.drain(..at + length);
    Some(packet)
}

enum ReadOutcome {
    Data,
    Closed,
    TimedOut,
}

/// A TCP client that writes and reads MQTT bytes by hand, every read bounded.
pub struct RawClient {
    stream: TcpStream,
    inbox: Vec<u8>,
}

impl RawClient {
    /// Opens a TCP connection; sends nothing.
    pub fn open(addr: SocketAddr) -> RawClient {
        let stream = TcpStream::connect_timeout(&addr, WAIT)
            .unwrap_or_else(|e| panic!("TCP connect to {addr}: {e}"));
        stream.set_nodelay(true).unwrap();
        stream.set_write_timeout(Some(WAIT)).unwrap();
        RawClient {
            stream,
            inbox: Vec::new(),
        }
    }

    /// Opens a TCP connection with a small receive buffer (a slow consumer fills it quickly).
    pub fn open_with_recv_buffer(addr: SocketAddr, bytes: usize) -> RawClient {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        socket.set_recv_buffer_size(bytes).expect("SO_RCVBUF");
        socket
            .connect_timeout(&addr.into(), WAIT)
            .unwrap_or_else(|e| panic!("TCP connect to {addr}: {e}"));
        let stream: TcpStream = socket.into();
        stream.set_nodelay(true).unwrap();
        stream.set_write_timeout(Some(WAIT)).unwrap();
        RawClient {
            stream,
            inbox: Vec::new(),
        }
    }

    /// Opens a connection, sends `connect` and checks the CONNACK accepts it; returns the
    /// client and the session-present flag.
    pub fn connect_with(addr: SocketAddr, connect: &Connect) -> (RawClient, bool) {
        let mut client = RawClient::open(addr);
        client.send(&connect.bytes());
        let (session_present, code) = client.read_packet().connack();
        assert_eq!(code, 0, "CONNACK refused {connect:?}");
        (client, session_present)
    }

    /// A 3.1.1 clean-session connection with this client id, accepted.
    pub fn connect(addr: SocketAddr, client_id: &str) -> RawClient {
        RawClient::connect_with(addr, &Connect::v311(client_id)).0
    }

    /// The client's end of the connection: the address the broker's log lines name.
    pub fn local_addr(&self) -> SocketAddr {
        self.stream
            .local_addr()
            .expect("a connected socket has an address")
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("write {} bytes: {e}", bytes.len()));
    }

    /// For bytes sent where the broker may already have closed the connection.
    pub fn send_ignoring_errors(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes);
    }

    fn fill(&mut self, deadline: Instant) -> ReadOutcome {
        let now = Instant::now();
        if now >= deadline {
            return ReadOutcome::TimedOut;
        }
        self.stream.set_read_timeout(Some(deadline - now)).unwrap();
        let mut chunk = [0u8; 4096];
        match self.stream.read(&mut chunk) {
            Ok(0) => ReadOutcome::Closed,
            Ok(n) => {
                self.inbox.extend_from_slice(&chunk[..n]);
                ReadOutcome::Data
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                ReadOutcome::TimedOut
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => ReadOutcome::Data,
            // A reset is the broker closing on us with bytes of ours unread.
            Err(_) => ReadOutcome::Closed,
        }
    }

    /// The next packet within `within`; None on timeout. Panics if the connection closes.
    pub fn try_read_packet(&mut self, within: Duration) -> Option<RawPacket> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(packet) = take_packet(&mut self.inbox) {
                return Some(packet);
            }
            match self.fill(deadline) {
                ReadOutcome::Data => {}
                ReadOutcome::TimedOut => return None,
                ReadOutcome::Closed => panic!(
                    "broker closed the connection while a packet was expected (pending bytes {:02x?})",
                    self.inbox
                ),
            }
        }
    }

    /// The next packet within `within`; None on timeout or when the connection closes.
    pub fn try_read_packet_or_close(&mut self, within: Duration) -> Option<RawPacket> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(packet) = take_packet(&mut self.inbox) {
                return Some(packet);
            }
            match self.fill(deadline) {
                ReadOutcome::Data => {}
                ReadOutcome::TimedOut | ReadOutcome::Closed => return None,
            }
        }
    }

    /// The next packet; panics after WAIT.
    pub fn read_packet(&mut self) -> RawPacket {
        self.try_read_packet(WAIT)
            .unwrap_or_else(|| panic!("no packet from the broker within {WAIT:?}"))
    }

    /// The next packet must be a PUBLISH.
    pub fn read_publish(&mut self) -> RawPublish {
        self.read_packet().publish()
    }

    /// Nothing arrives within `within` (and the connection stays open).
    pub fn expect_silence(&mut self, within: Duration) {
        if let Some(packet) = self.try_read_packet(within) {
            panic!("expected nothing from the broker, got {packet:?}");
        }
    }

    /// Reads until the broker closes the connection (EOF or reset) within WAIT; returns every
    /// byte that arrived before the close. Panics if it stays open.
    pub fn expect_closed(&mut self) -> Vec<u8> {
        self.expect_closed_within(WAIT)
    }

    pub fn expect_closed_within(&mut self, within: Duration) -> Vec<u8> {
        let deadline = Instant::now() + within;
        loop {
            match self.fill(deadline) {
                ReadOutcome::Data => {}
                ReadOutcome::Closed => return std::mem::take(&mut self.inbox),
                ReadOutcome::TimedOut => panic!(
                    "broker kept the connection open for {within:?} (received {:02x?})",
                    self.inbox
                ),
            }
        }
    }

    /// Either the next packet, or None when the broker closes the connection first (bytes of an
    /// incomplete packet before the close fail the test).
    pub fn expect_closed_or_packet(&mut self) -> Option<RawPacket> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(packet) = take_packet(&mut self.inbox) {
                return Some(packet);
            }
            match self.fill(deadline) {
                ReadOutcome::Data => {}
                ReadOutcome::Closed => {
                    assert!(self.inbox.is_empty(), "partial packet: {:02x?}", self.inbox);
                    return None;
                }
                ReadOutcome::TimedOut => panic!("neither a packet nor a close within {WAIT:?}"),
            }
        }
    }

    /// The broker closes the connection without sending anything more.
    pub fn expect_closed_silently(&mut self) {
        let bytes = self.expect_closed();
        assert!(
            bytes.is_empty(),
            "broker sent {bytes:02x?} before closing; MQTT 3.1.1 has nothing to send here"
        );
    }

    /// Subscribes and returns the granted QoS codes.
    pub fn subscribe(&mut self, packet_id: u16, filters: &[(&str, u8)]) -> Vec<u8> {
        self.send(&subscribe_bytes(packet_id, filters));
        let (id, codes) = self.read_packet().suback();
        assert_eq!(id, packet_id, "[MQTT-3.8.4-2] SUBACK packet id");
        assert_eq!(
            codes.len(),
            filters.len(),
            "[MQTT-3.8.4-5] one code per filter"
        );
        codes
    }

    /// Publishes at QoS 0/1/2 and completes the QoS handshake.
    pub fn publish(&mut self, topic: &str, qos: u8, retain: bool, packet_id: u16, payload: &[u8]) {
        self.send(&publish_bytes(
            topic.as_bytes(),
            qos,
            retain,
            false,
            packet_id,
            payload,
        ));
        match qos {
            0 => {}
            1 => assert_eq!(self.read_packet().ack_id(PUBACK), packet_id),
            _ => {
                assert_eq!(self.read_packet().ack_id(PUBREC), packet_id);
                self.send(&pubrel_bytes(packet_id));
                assert_eq!(self.read_packet().ack_id(PUBCOMP), packet_id);
            }
        }
    }

    /// PINGREQ answered by PINGRESP: a round trip proving everything sent before was processed.
    pub fn ping(&mut self) {
        self.send(&PINGREQ);
        let packet = self.read_packet();
        assert_eq!(
            (packet.first_byte, packet.body.len()),
            (0xD0, 0),
            "expected PINGRESP"
        );
    }

    /// DISCONNECT, then close our side.
    pub fn disconnect(mut self) {
        self.send(&DISCONNECT);
        let _ = self.stream.shutdown(Shutdown::Write);
        let _ = self.expect_closed_within(WAIT);
    }
}

/// A separate client on the same broker still gets its messages: the broker kept serving others
/// after whatever a previous connection did.
pub fn assert_broker_still_serves(addr: SocketAddr) {
    let topic = unique_topic("alive");
    let mut subscriber = RawClient::connect(addr, &unique_id("alive-sub"));
    assert_eq!(subscriber.subscribe(1, &[(&topic, 1)]), vec![1]);
    let mut publisher = RawClient::connect(addr, &unique_id("alive-pub"));
    publisher.publish(&topic, 1, false, 1, b"still here");
    let publish = subscriber.read_publish();
    assert_eq!(
        (publish.topic.as_str(), publish.payload.as_slice()),
        (topic.as_str(), &b"still here"[..])
    );
    subscriber.send(&puback_bytes(publish.packet_id.unwrap()));
    publisher.disconnect();
    subscriber.disconnect();
}

// ---------------------------------------------------------------------------------------------
// rumqttc, driven on its own thread so every wait is a bounded channel receive
// ---------------------------------------------------------------------------------------------

/// Options for a rumqttc client: unique id, clean session, 30 s keepalive, 1 MiB packets.
pub fn mqtt_options(addr: SocketAddr, prefix: &str) -> MqttOptions {
    mqtt_options_with_id(addr, &unique_id(prefix))
}

pub fn mqtt_options_with_id(addr: SocketAddr, client_id: &str) -> MqttOptions {
    let mut options = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_clean_session(true)
        .set_max_packet_size(1 << 20, 1 << 20);
    options
}

/// A connected rumqttc client. Incoming packets arrive on a channel from the driver thread;
/// publishes that arrive while waiting for something else are kept in order for later.
pub struct MqttClient {
    pub client: Client,
    pub connack: ConnAck,
    events: Receiver<Result<Packet, String>>,
    publishes: VecDeque<Publish>,
    stop: Arc<AtomicBool>,
    driver: Option<JoinHandle<()>>,
}

impl MqttClient {
    /// Connects and waits for the CONNACK; panics if refused or slow.
    pub fn connect(options: MqttOptions) -> MqttClient {
        match MqttClient::try_connect(options) {
            Ok(client) => client,
            Err(e) => panic!("rumqttc connect failed: {e}"),
        }
    }

    /// Connects; Err describes a refusal, a closed connection or a timeout.
    pub fn try_connect(options: MqttOptions) -> Result<MqttClient, String> {
        let (client, connection) = Client::new(options, 64);
        let (sender, events) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let driver = {
            let stop = stop.clone();
            thread::spawn(move || drive(connection, sender, &stop))
        };
        let mut mqtt = MqttClient {
            client,
            connack: ConnAck {
                session_present: false,
                code: rumqttc::ConnectReturnCode::Success,
            },
            events,
            publishes: VecDeque::new(),
            stop,
            driver: Some(driver),
        };
        match mqtt.events.recv_timeout(WAIT) {
            Ok(Ok(Packet::ConnAck(connack))) => {
                mqtt.connack = connack;
                Ok(mqtt)
            }
            Ok(Ok(other)) => Err(format!("expected CONNACK, got {other:?}")),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(format!("no CONNACK within {WAIT:?}")),
        }
    }

    /// The next incoming packet that is not a PUBLISH matching `want`; publishes are kept.
    fn wait_for(&mut self, what: &str, want: impl Fn(&Packet) -> bool) -> Packet {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(Ok(packet)) if want(&packet) => return packet,
                Ok(Ok(Packet::Publish(publish))) => self.publishes.push_back(publish),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => panic!("connection failed while waiting for {what}: {e}"),
                Err(_) => panic!("no {what} within {WAIT:?}"),
            }
        }
    }

    /// Subscribes and waits for the SUBACK; returns the granted QoS (None = failure 0x80).
    pub fn subscribe(&mut self, filter: &str, qos: QoS) -> Option<QoS> {
        self.client.subscribe(filter, qos).expect("queue SUBSCRIBE");
        self.wait_suback().remove(0)
    }

    pub fn subscribe_many(&mut self, filters: &[(&str, QoS)]) -> Vec<Option<QoS>> {
        let filters: Vec<_> = filters
            .iter()
            .map(|(f, q)| rumqttc::SubscribeFilter::new(f.to_string(), *q))
            .collect();
        self.client
            .subscribe_many(filters)
            .expect("queue SUBSCRIBE");
        self.wait_suback()
    }

    fn wait_suback(&mut self) -> Vec<Option<QoS>> {
        match self.wait_for("SUBACK", |p| matches!(p, Packet::SubAck(_))) {
            Packet::SubAck(suback) => suback
                .return_codes
                .into_iter()
                .map(|c| match c {
                    SubscribeReasonCode::Success(qos) => Some(qos),
                    SubscribeReasonCode::Failure => None,
                })
                .collect(),
            _ => unreachable!(),
        }
    }

    pub fn unsubscribe(&mut self, filter: &str) {
        self.client.unsubscribe(filter).expect("queue UNSUBSCRIBE");
        self.wait_for("UNSUBACK", |p| matches!(p, Packet::UnsubAck(_)));
    }

    /// Publishes without waiting for any acknowledgement.
    pub fn publish(&self, topic: &str, qos: QoS, retain: bool, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, qos, retain, payload)
            .expect("queue PUBLISH");
    }

    /// Publishes and, for QoS 1/2, waits for the broker's PUBACK/PUBCOMP (the broker then owns
    /// the message). For QoS 0 it waits for a PINGRESP instead: the broker reads a connection in
    /// order, so the publish was handled before the ping.
    pub fn publish_acked(
        &mut self,
        topic: &str,
        qos: QoS,
        retain: bool,
        payload: impl Into<Vec<u8>>,
    ) {
        self.publish(topic, qos, retain, payload);
        self.wait_acks(qos, 1);
    }

    /// Waits for `count` acknowledgements of publishes sent at `qos`.
    pub fn wait_acks(&mut self, qos: QoS, count: usize) {
        for _ in 0..count {
            match qos {
                QoS::AtMostOnce => self.ping(),
                QoS::AtLeastOnce => {
                    self.wait_for("PUBACK", |p| matches!(p, Packet::PubAck(_)));
                }
                QoS::ExactlyOnce => {
                    self.wait_for("PUBCOMP", |p| matches!(p, Packet::PubComp(_)));
                }
            }
        }
    }

    /// A round trip to the broker. rumqttc sends PINGREQ only on its keepalive timer, so this
    /// uses a subscription to a private topic instead: SUBACK comes after everything before it.
    pub fn ping(&mut self) {
        let filter = unique_topic("ping");
        self.subscribe(&filter, QoS::AtMostOnce);
    }

    /// The next PUBLISH within `within`, or None.
    pub fn try_recv_publish(&mut self, within: Duration) -> Option<Publish> {
        if let Some(publish) = self.publishes.pop_front() {
            return Some(publish);
        }
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(Ok(Packet::Publish(publish))) => return Some(publish),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => panic!("connection failed while waiting for PUBLISH: {e}"),
                Err(RecvTimeoutError::Timeout) => return None,
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("driver thread ended while waiting for PUBLISH")
                }
            }
        }
    }

    /// The next PUBLISH; panics after WAIT.
    pub fn recv_publish(&mut self) -> Publish {
        self.try_recv_publish(WAIT)
            .unwrap_or_else(|| panic!("no PUBLISH within {WAIT:?}"))
    }

    /// No PUBLISH within QUIET.
    pub fn expect_no_publish(&mut self) {
        if let Some(publish) = self.try_recv_publish(QUIET) {
            panic!("expected no PUBLISH, got {publish:?}");
        }
    }

    /// Waits for the connection to end (the broker closed it); panics after WAIT.
    pub fn expect_disconnected(&mut self) {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(Ok(_)) => {}
                Ok(Err(_)) | Err(RecvTimeoutError::Disconnected) => return,
                Err(RecvTimeoutError::Timeout) => panic!("connection still open after {WAIT:?}"),
            }
        }
    }

    /// Sends DISCONNECT and waits for the driver to end.
    pub fn disconnect(mut self) {
        let _ = self.client.disconnect();
        self.join();
    }

    fn join(&mut self) {
        if let Some(driver) = self.driver.take() {
            let deadline = Instant::now() + WAIT;
            while !driver.is_finished() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(5));
            }
            if driver.is_finished() {
                let _ = driver.join();
            }
        }
    }
}

impl Drop for MqttClient {
    /// Dropping ends the driver, which drops the socket without a DISCONNECT.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.join();
    }
}

/// Runs the rumqttc event loop until the connection fails, DISCONNECT is sent or `stop` is set.
/// It never reconnects: a test decides when to connect again. (rumqttc's event loop keeps a
/// sender of its own request channel, so dropping the `Client` would not end it.)
fn drive(
    mut connection: Connection,
    sender: mpsc::Sender<Result<Packet, String>>,
    stop: &AtomicBool,
) {
    // The first poll connects: give it all of WAIT, since a poll cut short by its timeout would
    // drop the half-made connection and start another. Later polls are cut every 50 ms to look
    // at `stop`; that is safe while the poll waits on the socket or the request channel, which
    // is where an idle poll waits (only a write blocked on a full socket buffer could be cut,
    // and loopback buffers are far larger than anything these tests send at once).
    let mut timeout = WAIT;
    while !stop.load(Ordering::Relaxed) {
        match connection.recv_timeout(timeout) {
            Ok(Ok(Event::Incoming(packet))) => {
                if sender.send(Ok(packet)).is_err() {
                    return;
                }
            }
            Ok(Ok(Event::Outgoing(Outgoing::Disconnect))) => return,
            Ok(Ok(Event::Outgoing(_))) => {}
            Ok(Err(e)) => {
                let _ = sender.send(Err(e.to_string()));
                return;
            }
            Err(rumqttc::RecvTimeoutError::Timeout) => {}
            Err(rumqttc::RecvTimeoutError::Disconnected) => return,
        }
        timeout = Duration::from_millis(50);
    }
}

// ---------------------------------------------------------------------------------------------
// mosquitto_pub / mosquitto_sub
// ---------------------------------------------------------------------------------------------

/// The path of a mosquitto tool; panics with what to do when it is missing, so a box without
/// the tools fails these tests loudly instead of skipping them.
pub fn require_tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path).chain(["/usr/sbin".into(), "/usr/local/sbin".into()]);
    for dir in dirs {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "`{name}` is not installed: run tests/setup.sh (installs mosquitto and mosquitto-clients)"
    );
}

/// A child process killed (and reaped) when dropped.
pub struct Proc {
    child: Child,
    lines: Receiver<String>,
    name: String,
}

/// Output of a finished process.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: Vec<String>,
    pub stderr: String,
}

impl Proc {
    /// Spawns `tool args...`, stdout read line by line on a thread.
    pub fn spawn(tool: &str, args: &[String]) -> Proc {
        // Piped stdout is block-buffered by stdio; the tests read mosquitto_sub's debug lines as
        // they come (its SUBACK tells us it is ready), so force line buffering.
        let mut child = Command::new(require_tool("stdbuf"))
            .arg("-oL")
            .arg(require_tool(tool))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {tool}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let (sender, lines) = mpsc::channel();
        thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if sender.send(line).is_err() {
                    return;
                }
            }
        });
        Proc {
            child,
            lines,
            name: format!("{tool} {}", args.join(" ")),
        }
    }

    /// Reads stdout until a line containing `needle`; returns the lines before and including it.
    pub fn wait_line(&mut self, needle: &str) -> Vec<String> {
        let deadline = Instant::now() + WAIT;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(needle);
                    seen.push(line);
                    if found {
                        return seen;
                    }
                }
                Err(_) => {
                    let stderr = self.stderr_now();
                    panic!(
                        "`{}` printed no line with {needle:?} within {WAIT:?}; output: {seen:?}; \
                         stderr: {stderr}",
                        self.name
                    )
                }
            }
        }
    }

    fn stderr_now(&mut self) -> String {
        if self.child.try_wait().ok().flatten().is_none() {
            return "(still running)".into();
        }
        let mut text = String::new();
        if let Some(mut stderr) = self.child.stderr.take() {
            let _ = stderr.read_to_string(&mut text);
        }
        text
    }

    /// Waits (bounded) for the process to exit by itself; kills it and panics after WAIT.
    pub fn finish(self) -> Finished {
        self.finish_within(WAIT)
    }

    /// As `finish`, for a process that runs for up to `within`.
    pub fn finish_within(mut self, within: Duration) -> Finished {
        let deadline = Instant::now() + within;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                let rest: Vec<String> = self.lines.try_iter().collect();
                panic!(
                    "`{}` still running after {within:?}; stdout: {rest:?}",
                    self.name
                );
            }
            thread::sleep(Duration::from_millis(10));
        };
        let mut stderr = String::new();
        if let Some(mut pipe) = self.child.stderr.take() {
            let _ = pipe.read_to_string(&mut stderr);
        }
        // The reader thread ends at EOF, shortly after the exit.
        let mut stdout = Vec::new();
        let drain_deadline = Instant::now() + WAIT;
        loop {
            let left = drain_deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => stdout.push(line),
                Err(_) => break,
            }
        }
        Finished {
            status,
            stdout,
            stderr,
        }
    }

    /// SIGKILL: the client vanishes without DISCONNECT.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Marks the lines mosquitto_sub prints for messages (`-F`), apart from its `-d` debug lines.
pub const MESSAGE_MARK: &str = "MSG|";

/// mosquitto_sub with debug output, printing each message as `MSG|topic|qos|retain|payload`,
/// exiting after `count` messages or `WAIT` seconds of silence. Returns once its SUBACK arrived.
pub fn mosquitto_sub(port: u16, topic: &str, qos: u8, count: usize, extra: &[&str]) -> Proc {
    let mut sub = Proc::spawn(
        "mosquitto_sub",
        &mosquitto_sub_args(port, topic, qos, count, extra),
    );
    sub.wait_line("SUBACK");
    sub
}

/// The arguments `mosquitto_sub` above uses, for a test that must not wait for the SUBACK.
pub fn mosquitto_sub_args(
    port: u16,
    topic: &str,
    qos: u8,
    count: usize,
    extra: &[&str],
) -> Vec<String> {
    let mut args = strings(&["-h", "127.0.0.1", "-p", &port.to_string(), "-d"]);
    args.extend(strings(&["-t", topic, "-q", &qos.to_string()]));
    args.extend(strings(&[
        "-C",
        &count.to_string(),
        "-W",
        &WAIT.as_secs().to_string(),
    ]));
    args.extend(strings(&["-F", &format!("{MESSAGE_MARK}%t|%q|%r|%p")]));
    args.extend(strings(extra));
    args
}

/// Runs mosquitto_pub to completion (bounded).
pub fn mosquitto_pub(port: u16, args: &[&str]) -> Finished {
    let mut all = strings(&["-h", "127.0.0.1", "-p", &port.to_string()]);
    all.extend(strings(args));
    Proc::spawn("mosquitto_pub", &all).finish()
}

/// The messages in mosquitto_sub output: (topic, qos, retain, payload).
pub fn sub_messages(finished: &Finished) -> Vec<(String, u8, bool, String)> {
    finished
        .stdout
        .iter()
        .filter_map(|line| line.strip_prefix(MESSAGE_MARK))
        .map(|rest| {
            let mut parts = rest.splitn(4, '|');
            let topic = parts.next().unwrap_or_default().to_string();
            let qos = parts.next().unwrap_or_default().parse().unwrap_or(9);
            let retain = parts.next() == Some("1");
            let payload = parts.next().unwrap_or_default().to_string();
            (topic, qos, retain, payload)
        })
        .collect()
}

pub fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// A mosquitto_passwd file with these users, made by the real tool (so the broker is checked
/// against the hashes mosquitto writes).
pub fn password_file(dir: &TempDir, users: &[(&str, &str)]) -> PathBuf {
    let path = dir.path().join("passwd");
    for (i, (user, password)) in users.iter().enumerate() {
        let mut args = vec!["-b".to_string()];
        if i == 0 {
            args.push("-c".into());
        }
        args.extend(strings(&[path.to_str().unwrap(), user, password]));
        let finished = Proc::spawn("mosquitto_passwd", &args).finish();
        assert!(
            finished.status.success(),
            "mosquitto_passwd failed: {}",
            finished.stderr
        );
    }
    path
}

// ---------------------------------------------------------------------------------------------
// interop (issue 8: Paho's MQTT 5 interoperability suite, tests/mqtt5_interop.rs)
// ---------------------------------------------------------------------------------------------

/// Splits one packet off the front of `buf` if it is complete, for a test's own reader.
pub fn take_raw_packet(buf: &mut Vec<u8>) -> Option<RawPacket> {
    take_packet(buf)
}

// ---------------------------------------------------------------------------------------------
// tls (issue 9): a broker started by the test itself (several listeners), stopped like others
// ---------------------------------------------------------------------------------------------

impl TestBroker {
    /// Takes over a broker the test started with its own config (e.g. several listeners):
    /// stopped, bounded, when dropped; `addr()` is its first listener's.
    pub fn wrap(broker: Broker) -> TestBroker {
        TestBroker {
            addr: broker.local_addr(),
            ringmq: Some(broker),
            mosquitto: None,
        }
    }
}

impl TestBroker {
    /// The ringmq broker itself (`None` against mosquitto), for its API (e.g. `reload_tls`).
    pub fn ringmq(&self) -> Option<&Broker> {
        self.ringmq.as_ref()
    }
}

// ---------------------------------------------------------------------------------------------
// observability (issue 11): $SYS topics and the metrics endpoint
// ---------------------------------------------------------------------------------------------

impl TestBroker {
    /// Where the broker serves `GET /metrics`; None without `metrics_listen` (or on mosquitto).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.ringmq.as_ref().and_then(Broker::metrics_addr)
    }
}

// ---------------------------------------------------------------------------------------------
// dedupe: the MQTT 5 client the v5 tests share, and a broker with an adjusted test config
// ---------------------------------------------------------------------------------------------

pub mod v5;

/// A broker with `test_config()` as `adjust` leaves it.
pub fn broker_with(adjust: impl FnOnce(&mut Config)) -> TestBroker {
    let mut config = test_config();
    adjust(&mut config);
    TestBroker::start(config)
}
pub mod binary;

// Certificates made at test time (a CA, a server certificate signed by it).
pub mod pki;
