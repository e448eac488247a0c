//! The load generator against a deliberately faulty "broker": a raw TCP server that answers
//! CONNACK and SUBACK and forwards publishes to the matching subscriber, dropping, duplicating
//! and swapping some on purpose (chosen by the sequence number in the stamp). The load
//! generator must count exactly the faults the fake made. Also: a refused CONNECT and an
//! unreachable broker are counted, and the run still ends on time.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use ringmq::protocol::{
    decode, encode, encode_publish, ConnAck, Packet, Props, ProtocolVersion, QoS, ReasonCode,
    SubAck,
};
use ringmq_loadgen::stamp::Stamp;

#[derive(Default)]
struct Faults {
    forwarded: AtomicU64,
    dropped: AtomicU64,
    duplicated: AtomicU64,
    swapped: AtomicU64,
}

/// What the fake does to the message with sequence `seq`.
#[derive(PartialEq)]
enum Fault {
    None,
    Drop,
    Duplicate,
    /// Held back and sent after the next message.
    Delay,
}

fn fault_of(seq: u32) -> Fault {
    if seq % 10 == 3 {
        Fault::Drop
    } else if seq % 50 == 7 {
        Fault::Duplicate
    } else if seq % 25 == 11 {
        Fault::Delay
    } else {
        Fault::None
    }
}

type Subscribers = Arc<Mutex<Vec<(String, TcpStream)>>>;

fn write_packet(stream: &mut TcpStream, packet: &Packet) {
    let mut out = BytesMut::new();
    encode(packet, ProtocolVersion::V3_1_1, &mut out).unwrap();
    let _ = stream.write_all(&out);
}

fn forward(subscribers: &Subscribers, topic: &str, payload: &[u8], copies: usize) {
    let mut out = BytesMut::new();
    for _ in 0..copies {
        encode_publish(
            &mut out,
            ProtocolVersion::V3_1_1,
            topic,
            payload,
            QoS::AtMostOnce,
            false,
            false,
            0,
            None,
        )
        .unwrap();
    }
    for (filter, stream) in subscribers.lock().unwrap().iter_mut() {
        if filter == topic {
            let _ = stream.write_all(&out);
        }
    }
}

#[derive(Clone, Copy, Default)]
struct Behaviour {
    /// Answer CONNECT with "not authorized".
    refuse: bool,
    /// Close every subscriber's connection when this sequence arrives from a publisher.
    hang_up_at: Option<u32>,
    /// Stop reading from the publisher for this long when this sequence arrives.
    stall_at: Option<(u32, Duration)>,
}

fn serve(mut stream: TcpStream, subscribers: Subscribers, faults: Arc<Faults>, how: Behaviour) {
    let _ = stream.set_nodelay(true);
    let mut inbox = BytesMut::new();
    let mut held: Option<(String, Vec<u8>)> = None;
    let mut buf = [0u8; 16384];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        inbox.extend_from_slice(&buf[..n]);
        while let Ok(Some(packet)) = decode(&mut inbox, ProtocolVersion::V3_1_1, 1 << 20) {
            match packet {
                Packet::Connect(_) => {
                    let code = if how.refuse {
                        ReasonCode::NotAuthorized
                    } else {
                        ReasonCode::Success
                    };
                    write_packet(
                        &mut stream,
                        &Packet::ConnAck(ConnAck {
                            session_present: false,
                            code,
                            properties: Props::NONE,
                        }),
                    );
                }
                Packet::Subscribe(s) => {
                    let filter = s.filters[0].0.to_string();
                    subscribers
                        .lock()
                        .unwrap()
                        .push((filter, stream.try_clone().unwrap()));
                    write_packet(
                        &mut stream,
                        &Packet::SubAck(SubAck {
                            packet_id: s.packet_id,
                            codes: vec![ReasonCode::GRANTED_QOS0],
                            properties: Props::NONE,
                        }),
                    );
                }
                Packet::Publish(p) => {
                    let seq = Stamp::read(&p.payload).unwrap().sequence;
                    if let Some((at, pause)) = how.stall_at {
                        if at == seq {
                            std::thread::sleep(pause);
                        }
                    }
                    if how.hang_up_at == Some(seq) {
                        for (_, s) in subscribers.lock().unwrap().drain(..) {
                            let _ = s.shutdown(std::net::Shutdown::Both);
                        }
                    }
                    match fault_of(seq) {
                        Fault::Drop => {
                            faults.dropped.fetch_add(1, Ordering::Relaxed);
                        }
                        Fault::Duplicate => {
                            faults.duplicated.fetch_add(1, Ordering::Relaxed);
                            forward(&subscribers, &p.topic, &p.payload, 2);
                        }
                        Fault::Delay => {
                            held = Some((p.topic.to_string(), p.payload.to_vec()));
                            continue;
                        }
                        Fault::None => forward(&subscribers, &p.topic, &p.payload, 1),
                    }
                    faults.forwarded.fetch_add(1, Ordering::Relaxed);
                    if let Some((topic, payload)) = held.take() {
                        faults.swapped.fetch_add(1, Ordering::Relaxed);
                        forward(&subscribers, &topic, &payload, 1);
                    }
                }
                Packet::PingReq => write_packet(&mut stream, &Packet::PingResp),
                Packet::Disconnect(_) => return,
                _ => {}
            }
        }
    }
}

/// Starts the fake on an ephemeral loopback port; its threads end with the test process.
fn start_fake(how: Behaviour) -> (u16, Arc<Faults>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let faults = Arc::new(Faults::default());
    let subscribers: Subscribers = Arc::default();
    let f = Arc::clone(&faults);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let (subscribers, f) = (Arc::clone(&subscribers), Arc::clone(&f));
            std::thread::spawn(move || serve(stream, subscribers, f, how));
        }
    });
    (port, faults)
}

#[test]
fn faults_of_the_broker_are_counted_exactly() {
    let (port, faults) = start_fake(Behaviour::default());
    let port = port.to_string();
    // 1000 msgs/s for 0.4 s: exactly 400 intended send times, sequences 0..400.
    let report = common::loadgen(&[
        "pairs",
        "-n",
        "1",
        "--rate",
        "1000",
        "--port",
        &port,
        "--warmup",
        "0",
        "--duration",
        "0.4",
        "--drain",
        "1",
        "-q",
    ]);
    let s = &report.summary;
    let dropped = faults.dropped.load(Ordering::Relaxed);
    let duplicated = faults.duplicated.load(Ordering::Relaxed);
    let swapped = faults.swapped.load(Ordering::Relaxed);
    assert_eq!(s.sent, 400);
    assert_eq!(s.sent_in_window, 400);
    assert_eq!(
        (dropped, duplicated, swapped),
        (40, 8, 16),
        "the fake's own plan"
    );
    assert_eq!(s.connected, 2);
    assert_eq!(s.expected, 400);
    assert_eq!(s.lost, dropped);
    assert_eq!(s.duplicates, duplicated);
    assert_eq!(s.reordered, swapped);
    assert_eq!(s.received, 400 - dropped + duplicated);
    assert_eq!(s.unexpected, 0);
    assert_eq!(s.latency.count, s.received_in_window);
}

#[test]
fn refused_connect_is_counted_and_the_run_ends_on_time() {
    let (port, _) = start_fake(Behaviour {
        refuse: true,
        ..Behaviour::default()
    });
    let port = port.to_string();
    let started = Instant::now();
    let report = common::loadgen(&[
        "pairs",
        "-n",
        "2",
        "--max",
        "--port",
        &port,
        "--warmup",
        "0",
        "--duration",
        "0.3",
        "--drain",
        "0.2",
        "-q",
    ]);
    let s = &report.summary;
    assert_eq!(s.connected, 0);
    assert_eq!(s.connect_refused, 4);
    assert_eq!(s.connect_failed, 4);
    assert!(
        s.errors.keys().any(|e| e.contains("CONNACK refused")),
        "{:?}",
        s.errors
    );
    assert_eq!(s.sent, 0);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn unreachable_broker_is_counted_and_the_run_ends_on_time() {
    // A port nobody listens on: bind one, note it, close it.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let started = Instant::now();
    let report = common::loadgen(&[
        "fanin",
        "--publishers",
        "2",
        "--subscribers",
        "1",
        "--rate",
        "100",
        "--port",
        &port,
        "--warmup",
        "0",
        "--duration",
        "0.3",
        "--drain",
        "0.2",
        "-q",
    ]);
    let s = &report.summary;
    assert_eq!(s.connected, 0);
    assert_eq!(s.connect_failed, 3);
    assert!(
        s.errors
            .keys()
            .any(|e| e.starts_with("connect:") && e.contains("refused")),
        "{:?}",
        s.errors
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn dropped_connection_is_counted_and_its_messages_lost() {
    let (port, _) = start_fake(Behaviour {
        hang_up_at: Some(100),
        ..Behaviour::default()
    });
    let port = port.to_string();
    let report = common::loadgen(&[
        "pairs",
        "-n",
        "1",
        "--rate",
        "1000",
        "--port",
        &port,
        "--warmup",
        "0",
        "--duration",
        "0.3",
        "--drain",
        "0.5",
        "-q",
    ]);
    let s = &report.summary;
    assert_eq!(s.connected, 2);
    assert_eq!(s.dropped, 1, "{:?}", s.errors);
    assert!(
        s.errors.keys().any(|e| e.contains("closed by the broker")),
        "{:?}",
        s.errors
    );
    assert_eq!(s.sent, 300);
    assert!(
        s.received < 100,
        "nothing after the hang-up: {}",
        s.received
    );
    assert_eq!(s.lost, 300 - s.received + s.duplicates);
}

#[test]
fn several_rings_per_thread_count_the_same() {
    let (port, faults) = start_fake(Behaviour::default());
    let port = port.to_string();
    // 3 pairs = 6 connections over tables of 2 slots: three rings on one thread.
    let report = common::loadgen(&[
        "pairs",
        "-n",
        "3",
        "--rate",
        "600",
        "--port",
        &port,
        "--warmup",
        "0",
        "--duration",
        "0.5",
        "--drain",
        "1",
        "--ring-files-max",
        "2",
        "-q",
    ]);
    let s = &report.summary;
    assert_eq!(s.connected, 6, "{:?}", s.errors);
    assert_eq!(s.sent, 300);
    let dropped = faults.dropped.load(Ordering::Relaxed);
    let duplicated = faults.duplicated.load(Ordering::Relaxed);
    assert_eq!(s.lost, dropped);
    assert_eq!(s.duplicates, duplicated);
    assert_eq!(s.reordered, faults.swapped.load(Ordering::Relaxed));
    assert_eq!(s.received, 300 - dropped + duplicated);
}

#[test]
fn a_stalled_broker_shows_in_the_latency_not_in_fewer_messages() {
    // The fake stops reading for 1.5 s at message 200. Open loop at 1000 msgs/s with 64 KiB
    // payloads: ~100 MB fall due meanwhile, more than the socket buffers take, so the outbox
    // fills and the generator's own backlog holds the rest. Every message is still sent,
    // stamped with its intended time, so the stall lands in the histogram (no coordinated
    // omission) instead of in fewer messages.
    let (port, faults) = start_fake(Behaviour {
        stall_at: Some((200, Duration::from_millis(1500))),
        ..Behaviour::default()
    });
    let port = port.to_string();
    let report = common::loadgen(&[
        "pairs",
        "-n",
        "1",
        "--rate",
        "1000",
        "--payload",
        "65536",
        "--port",
        &port,
        "--warmup",
        "0",
        "--duration",
        "2",
        "--drain",
        "3",
        "-q",
    ]);
    let s = &report.summary;
    let dropped = faults.dropped.load(Ordering::Relaxed);
    assert_eq!(s.sent, 2000);
    assert_eq!(s.lost, dropped, "{:?}", s.errors);
    assert!(s.send_stalls > 0, "the generator's own backlog was used");
    assert!(
        s.send_lag.max_us > 100_000.0,
        "held messages left late: {:?}",
        s.send_lag
    );
    assert!(
        s.latency.max_us > 1_400_000.0,
        "max {} µs",
        s.latency.max_us
    );
    // Messages 200..1700 were intended during the stall: over half wait for it.
    assert!(s.latency.p50_us > 100_000.0, "p50 {} µs", s.latency.p50_us);
    assert!(s.latency.min_us < 50_000.0, "min {} µs", s.latency.min_us);
}
