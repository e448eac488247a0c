//! Back-pressure on clients that take more than they give (issue 7, items 6 and 7).
//!
//! A client that floods requests and never reads the answers must not make the broker buffer
//! without limit: past `outbox_bytes_max` the broker stops reading from it, so the client's own
//! writes block in the kernel, and after `outbox_stall_secs` it is disconnected. Other clients
//! of the shard carry on meanwhile. Messages queued for a client must not pin whole receive
//! blocks: `arena_blocks_allocated` stays near zero while queued messages pile up.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use ringmq::config::Config;

/// The outbox cap in these tests: small, so a flood passes it in a few milliseconds.
const OUTBOX_MAX: u32 = 64 << 10;

fn flood_config(outbox_stall_secs: u16) -> Config {
    let mut config = test_config();
    config.limits.outbox_bytes_max = OUTBOX_MAX;
    config.limits.outbox_stall_secs = outbox_stall_secs;
    // The kernel's send queue sits in front of the outbox; keep it from absorbing the flood.
    config.socket_send_buffer_bytes = 4096;
    config
}

/// A connected 3.1.1 client over a socket with small kernel buffers, so what it does not read
/// piles up at the broker instead of in its own receive queue.
fn open_flooder(addr: SocketAddr, connect: &Connect) -> TcpStream {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    socket.set_send_buffer_size(16 << 10).expect("SO_SNDBUF");
    socket
        .connect_timeout(&addr.into(), WAIT)
        .unwrap_or_else(|e| panic!("TCP connect to {addr}: {e}"));
    let mut stream: TcpStream = socket.into();
    stream.set_nodelay(true).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.write_all(&connect.bytes()).expect("CONNECT");
    let mut connack = [0u8; 4];
    stream.read_exact(&mut connack).expect("CONNACK");
    assert_eq!(connack, [0x20, 2, 0, 0], "CONNACK accepting the client");
    stream
}

/// Writes `packets` (whole packets, repeated) without blocking and without ever reading, until
/// a write has found the socket full for `blocked_for` in a row, or `stop` is set. Returns the
/// bytes written and whether the writes blocked; after blocking it keeps trying (the client
/// keeps pushing) until `stop`, reporting the block once on `blocked`.
fn flood(
    stream: &TcpStream,
    packets: &[u8],
    blocked_for: Duration,
    blocked: mpsc::Sender<u64>,
    stop: &AtomicBool,
) -> (u64, bool) {
    stream.set_nonblocking(true).unwrap();
    let mut stream = stream;
    let (mut offset, mut written) = (0usize, 0u64);
    let mut full_since: Option<Instant> = None;
    let mut reported = false;
    while !stop.load(Ordering::Relaxed) {
        match stream.write(&packets[offset..]) {
            Ok(n) => {
                written += n as u64;
                offset = (offset + n) % packets.len();
                full_since = None;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                let since = *full_since.get_or_insert_with(Instant::now);
                if !reported && since.elapsed() >= blocked_for {
                    reported = true;
                    let _ = blocked.send(written);
                }
                thread::sleep(Duration::from_millis(10));
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            // The broker closed the connection (a test of the stall limit expects it).
            Err(_) => break,
        }
    }
    let _ = stream.set_nonblocking(false);
    (written, reported)
}

/// A flood running on its own thread; `wait_blocked` says whether the broker stopped reading.
struct Flood {
    stop: Arc<AtomicBool>,
    blocked: mpsc::Receiver<u64>,
    thread: Option<thread::JoinHandle<(u64, bool)>>,
}

impl Flood {
    fn start(stream: &TcpStream, packets: Vec<u8>) -> Flood {
        let stream = stream.try_clone().expect("clone the flooder's socket");
        let stop = Arc::new(AtomicBool::new(false));
        let (report, blocked) = mpsc::channel();
        let flag = stop.clone();
        let thread =
            thread::spawn(move || flood(&stream, &packets, Duration::from_secs(1), report, &flag));
        Flood {
            stop,
            blocked,
            thread: Some(thread),
        }
    }

    /// The bytes written when the writes had blocked for a second in a row; fails the test if
    /// they never do within `within` (the broker kept reading what it could not answer).
    fn wait_blocked(&mut self, within: Duration) -> u64 {
        match self.blocked.recv_timeout(within) {
            Ok(written) => written,
            Err(_) => {
                let (written, _) = self.finish();
                panic!(
                    "the broker kept reading from a client that reads nothing: {} MB written \
                     in {within:?} and the writes never blocked for a second",
                    written >> 20
                );
            }
        }
    }

    /// Stops the flood; returns the bytes written and whether they blocked.
    fn finish(&mut self) -> (u64, bool) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .map(|t| t.join().expect("flood thread"))
            .unwrap_or((0, false))
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn pingreqs(count: usize) -> Vec<u8> {
    PINGREQ.repeat(count)
}

/// The current total of a counter over all shards (shards publish them about once a second).
fn counter(broker: &TestBroker, count: fn(&ringmq::shard::ShardStats) -> u64) -> u64 {
    broker.wait_counter("(current value)", count, 0)
}

#[test]
fn issue_7_a_client_that_never_reads_is_paused_and_resumes_without_loss() {
    let broker = TestBroker::start(flood_config(0));
    let topic = unique_topic("calm");
    let mut calm = RawClient::connect(broker.addr(), &unique_id("calm"));
    assert_eq!(calm.subscribe(1, &[(&topic, 1)]), vec![1]);
    let mut calm_publisher = RawClient::connect(broker.addr(), &unique_id("calm-pub"));

    // Keepalive 2 s: the flooder is paused for longer than 1.5 x that, and must not be
    // disconnected for a silence that is ours (we stopped reading), not the client's.
    let mut connect = Connect::v311(&unique_id("flooder"));
    connect.keepalive_secs = 2;
    let mut flooder = open_flooder(broker.addr(), &connect);
    let paused_at = Instant::now();
    let mut flood = Flood::start(&flooder, pingreqs(32 << 10));
    let written = flood.wait_blocked(Duration::from_secs(20));

    // The broker paused reading instead of buffering: the outbox passed its cap by at most what
    // one turn reads (the kernel hands a multishot recv a bounded burst).
    broker.wait_counter("recv_paused_count", |s| s.recv_paused_count, 1);
    let high_water = counter(&broker, |s| s.outbox_bytes_high_water);
    assert!(
        high_water >= u64::from(OUTBOX_MAX) && high_water <= u64::from(OUTBOX_MAX) + (512 << 10),
        "outbox high water {high_water} B with a cap of {OUTBOX_MAX} B ({written} B flooded)"
    );

    // Meanwhile the shard serves its other client at once, while the flooder keeps pushing.
    for n in 0..5u16 {
        let start = Instant::now();
        calm.ping();
        calm_publisher.publish(&topic, 1, false, 10 + n, b"meanwhile");
        let publish = calm.read_publish();
        assert_eq!(publish.payload, b"meanwhile");
        calm.send(&puback_bytes(publish.packet_id.unwrap()));
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "a round trip of the well-behaved client took {:?}",
            start.elapsed()
        );
    }
    // Past the keepalive deadline (3 s) while paused.
    let paused_for = Duration::from_secs(4);
    if let Some(rest) = paused_for.checked_sub(paused_at.elapsed()) {
        thread::sleep(rest);
    }

    // The flooder now reads: one PINGRESP per PINGREQ it sent, none lost while reads were
    // paused and resumed.
    let (written, blocked) = flood.finish();
    assert!(blocked);
    let reader = flooder.try_clone().unwrap();
    let reading = thread::spawn(move || read_pingresps(reader));
    if written % 2 == 1 {
        // The flood stopped inside a PINGREQ: finish it (blocking, the broker reads again).
        flooder.set_write_timeout(Some(WAIT)).unwrap();
        flooder
            .write_all(&PINGREQ[1..])
            .expect("finish the last PINGREQ");
    }
    let expected = written.div_ceil(2);
    flooder.write_all(&PINGREQ).expect("one more PINGREQ");
    let received = reading.join().expect("reader");
    assert_eq!(
        received,
        expected + 1,
        "PINGRESPs for {expected} PINGREQs and one more"
    );
    assert!(counter(&broker, |s| s.outbox_stall_disconnects) == 0);
    drop(flooder);
    calm_publisher.disconnect();
    calm.disconnect();
}

/// Reads PINGRESPs until none has come for two seconds; returns how many (every byte checked).
fn read_pingresps(mut stream: TcpStream) -> u64 {
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut buf = vec![0u8; 64 << 10];
    let mut total = 0u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => panic!("the broker closed the connection after {total} bytes"),
            Ok(n) => {
                for (i, &byte) in buf[..n].iter().enumerate() {
                    let expected = PINGRESP[((total + i as u64) % 2) as usize];
                    assert_eq!(
                        byte,
                        expected,
                        "byte {} is not a PINGRESP's",
                        total + i as u64
                    );
                }
                total += n as u64;
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!("read after {total} bytes: {e}"),
        }
    }
    assert_eq!(total % 2, 0, "half a PINGRESP");
    total / 2
}

#[test]
fn issue_7_a_client_that_never_reads_is_disconnected_after_outbox_stall_secs() {
    let broker = TestBroker::start(flood_config(2));
    let will_topic = unique_topic("stalled-will");
    let mut watcher = RawClient::connect(broker.addr(), &unique_id("watcher"));
    assert_eq!(watcher.subscribe(1, &[(&will_topic, 0)]), vec![0]);

    // QoS 1 PUBLISHes to a topic nobody subscribes to: each one owes a PUBACK it never reads.
    let mut connect = Connect::v311(&unique_id("stalled"));
    connect.will = Some(Will {
        topic: will_topic.clone(),
        payload: b"gone".to_vec(),
        qos: 0,
        retain: false,
    });
    let flooder = open_flooder(broker.addr(), &connect);
    let nobody = unique_topic("nobody");
    let publishes: Vec<u8> = (1..=4096u16)
        .flat_map(|id| publish_bytes(nobody.as_bytes(), 1, false, false, id, b"x"))
        .collect();
    let mut flood = Flood::start(&flooder, publishes);
    flood.wait_blocked(Duration::from_secs(20));
    broker.wait_counter("recv_paused_count", |s| s.recv_paused_count, 1);

    // 2 s with nothing taken, checked by the 1 s timer: closed within a few seconds.
    broker.wait_counter(
        "outbox_stall_disconnects",
        |s| s.outbox_stall_disconnects,
        1,
    );
    let will = watcher.read_publish();
    assert_eq!(
        (will.topic.as_str(), will.payload.as_slice()),
        (will_topic.as_str(), &b"gone"[..]),
        "a stalled client's will is published (it did not DISCONNECT)"
    );
    flood.finish();
    let mut flooder = flooder;
    flooder.set_read_timeout(Some(WAIT)).unwrap();
    let mut sink = vec![0u8; 64 << 10];
    let deadline = Instant::now() + WAIT;
    loop {
        match flooder.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(_) => assert!(
                Instant::now() < deadline,
                "the stalled client is still open"
            ),
        }
    }
    assert_broker_still_serves(broker.addr());
}

/// Sends one QoS 1 message to `topic`, then about one arena block (64 KiB) of QoS 0 traffic to
/// a topic without subscribers, so every QoS 1 message lands in a receive block of its own. Each
/// packet goes alone (a round trip after it), so it is read whole into the arena rather than
/// into a connection's partial-packet buffer. After each QoS 1 message, a round trip with the
/// subscriber: its shard has taken the message (from the mesh, when it came from another
/// shard) before the traffic moves the publisher's arena on. Returns the PUBLISHes the
/// subscriber got meanwhile.
fn publish_through_blocks(
    publisher: &mut RawClient,
    subscriber: &mut RawClient,
    topic: &str,
    count: u16,
) -> Vec<RawPublish> {
    let traffic = unique_topic("traffic");
    let mut filler = publish_bytes(traffic.as_bytes(), 0, false, false, 0, &[b'.'; 4000]);
    filler.extend_from_slice(&PINGREQ);
    let mut received = Vec::new();
    for n in 0..count {
        publisher.publish(topic, 1, false, n + 1, &message_payload(n));
        subscriber.send(&PINGREQ);
        loop {
            let packet = subscriber.read_packet();
            if packet.first_byte == PINGRESP[0] {
                break;
            }
            received.push(packet.publish());
        }
        for _ in 0..16 {
            publisher.send(&filler);
            let pong = publisher.read_packet();
            assert_eq!((pong.first_byte, pong.body.len()), (0xD0, 0), "PINGRESP");
        }
    }
    received
}

fn message_payload(n: u16) -> Vec<u8> {
    format!("message {n:05}").into_bytes()
}

/// The subscriber takes every message, in order, with its bytes intact (`received`: those it
/// already got).
fn take_all(subscriber: &mut RawClient, received: Vec<RawPublish>, topic: &str, count: u16) {
    let mut received = received.into_iter();
    for n in 0..count {
        let publish = received.next().unwrap_or_else(|| subscriber.read_publish());
        assert_eq!(publish.topic, topic);
        assert_eq!(publish.payload, message_payload(n), "message {n}");
        subscriber.send(&puback_bytes(publish.packet_id.unwrap()));
    }
}

#[test]
fn issue_7_messages_queued_for_a_connected_client_do_not_pin_receive_blocks() {
    let mut config = test_config();
    // One message in flight: every later one waits in the queue of a connected client.
    config.limits.inflight_max = 1;
    let broker = TestBroker::start(config);
    let topic = unique_topic("queued");
    let mut subscriber = RawClient::connect(broker.addr(), &unique_id("queued-sub"));
    assert_eq!(subscriber.subscribe(1, &[(&topic, 1)]), vec![1]);
    let mut publisher = RawClient::connect(broker.addr(), &unique_id("queued-pub"));
    let count = 100;
    let received = publish_through_blocks(&mut publisher, &mut subscriber, &topic, count);

    // Counters come once a second; this one is published with the last messages in.
    broker.wait_counter("messages_in", |s| s.messages_in, u64::from(count) * 17);
    thread::sleep(Duration::from_millis(1100));
    let allocated = counter(&broker, |s| s.arena_blocks_allocated);
    assert!(
        allocated < u64::from(count) / 4,
        "{allocated} receive blocks allocated for {count} queued messages: each one pins its block"
    );
    take_all(&mut subscriber, received, &topic, count);
    subscriber.disconnect();
}

#[test]
fn issue_7_messages_forwarded_from_another_shard_do_not_pin_its_receive_blocks() {
    let shards = 2;
    let mut config = test_config();
    config.shards = shards;
    config.limits.inflight_max = 1;
    let broker = TestBroker::start(config);
    let topic = unique_topic("forwarded");
    let mut subscriber =
        RawClient::connect(broker.addr(), &unique_id_on(1, shards, "forwarded-sub"));
    assert_eq!(subscriber.subscribe(1, &[(&topic, 1)]), vec![1]);
    let mut publisher =
        RawClient::connect(broker.addr(), &unique_id_on(0, shards, "forwarded-pub"));
    let count = 100;
    let received = publish_through_blocks(&mut publisher, &mut subscriber, &topic, count);

    broker.wait_counter("messages_in", |s| s.messages_in, u64::from(count) * 17);
    thread::sleep(Duration::from_millis(1100));
    let allocated = counter(&broker, |s| s.arena_blocks_allocated);
    assert!(
        allocated < u64::from(count) / 4,
        "{allocated} receive blocks allocated for {count} messages queued on another shard"
    );
    take_all(&mut subscriber, received, &topic, count);
    subscriber.disconnect();
}

#[test]
fn issue_7_a_slow_subscriber_fed_faster_than_it_reads_still_gets_its_pingresp() {
    // Its outbox stays near the cap as long as the publisher outpaces it. Reading from it must
    // still resume (the outbox drains to half while paused: it takes no new QoS 0 meanwhile),
    // or its PINGREQ would never be answered and its client would give up on the connection.
    let broker = TestBroker::start(flood_config(0));
    let topic = unique_topic("slow-reader");
    let mut slow = RawClient::open_with_recv_buffer(broker.addr(), 4096);
    slow.send(&Connect::v311(&unique_id("slow-reader")).bytes());
    assert_eq!(slow.read_packet().connack(), (false, 0));
    assert_eq!(slow.subscribe(1, &[(&topic, 0)]), vec![0]);

    let stop = Arc::new(AtomicBool::new(false));
    let publishing = {
        let (stop, addr, topic) = (stop.clone(), broker.addr(), topic.clone());
        thread::spawn(move || {
            let mut publisher = RawClient::connect(addr, &unique_id("fast-pub"));
            let burst: Vec<u8> = (0..64)
                .flat_map(|_| publish_bytes(topic.as_bytes(), 0, false, false, 0, &[b'.'; 1000]))
                .collect();
            while !stop.load(Ordering::Relaxed) {
                publisher.send(&burst);
            }
        })
    };
    // Slowly: a packet, then a pause, for a second before asking, then until the answer.
    let read_slowly = |slow: &mut RawClient| -> bool {
        let packet = slow.read_packet();
        thread::sleep(Duration::from_micros(500));
        packet.first_byte == PINGRESP[0]
    };
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(1) {
        assert!(!read_slowly(&mut slow));
    }
    broker.wait_counter("recv_paused_count", |s| s.recv_paused_count, 1);
    slow.send(&PINGREQ);
    let asked = Instant::now();
    let mut answered = false;
    while asked.elapsed() < Duration::from_secs(10) {
        if read_slowly(&mut slow) {
            answered = true;
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    publishing.join().expect("publisher");
    assert!(
        answered,
        "no PINGRESP within 10 s for a subscriber that kept reading"
    );
}
