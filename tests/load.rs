//! Many clients at once, and running out of connection slots: small enough to stay quick on two
//! cores, big enough that the in-flight windows fill, queues form and slots are reused.

mod common;

use std::collections::HashMap;

use common::*;

#[test]
fn many_publishers_to_many_subscribers_at_qos1_lose_nothing() {
    // 10 publishers × 100 QoS 1 messages to 20 subscribers: each subscriber gets all 1000, each
    // publisher's in order, none twice. A window of 8 makes the queues work.
    let mut config = test_config();
    config.limits.inflight_max = 8;
    let broker = TestBroker::start(config);
    let root = unique_topic("load");
    let (publisher_count, message_count, subscriber_count) = (10u16, 100u16, 20);

    let mut subscribers: Vec<RawClient> = (0..subscriber_count)
        .map(|_| {
            let mut s = RawClient::connect(broker.addr(), &unique_id("load-sub"));
            assert_eq!(s.subscribe(1, &[(&format!("{root}/#"), 1)]), vec![1]);
            s
        })
        .collect();
    let mut publishers: Vec<RawClient> = (0..publisher_count)
        .map(|_| RawClient::connect(broker.addr(), &unique_id("load-pub")))
        .collect();
    // Interleave the publishers: message n of every publisher, then n + 1.
    for n in 0..message_count {
        for (p, publisher) in publishers.iter_mut().enumerate() {
            let topic = format!("{root}/{p}");
            let payload = format!("{p}:{n}");
            publisher.send(&publish_bytes(
                topic.as_bytes(),
                1,
                false,
                false,
                n + 1,
                payload.as_bytes(),
            ));
        }
    }
    for publisher in publishers.iter_mut() {
        for n in 0..message_count {
            assert_eq!(publisher.read_packet().ack_id(PUBACK), n + 1);
        }
    }

    for (s, subscriber) in subscribers.iter_mut().enumerate() {
        let mut next: HashMap<u16, u16> = HashMap::new();
        for _ in 0..publisher_count as u32 * message_count as u32 {
            let publish = subscriber.read_publish();
            subscriber.send(&puback_bytes(publish.packet_id.unwrap()));
            let text = String::from_utf8(publish.payload).unwrap();
            let (p, n) = text.split_once(':').unwrap();
            let (p, n): (u16, u16) = (p.parse().unwrap(), n.parse().unwrap());
            let expected = next.entry(p).or_insert(0);
            assert_eq!(
                n, *expected,
                "subscriber {s}: publisher {p} out of order or lost"
            );
            *expected += 1;
        }
        subscriber.expect_silence(std::time::Duration::from_millis(100));
    }
}

#[test]
fn full_connection_table_recovers_when_a_slot_frees() {
    // DESIGN.md "A full table": the connection over the fixed-file table's size is closed by
    // the kernel; accepting resumes once a connection closes.
    let mut config = test_config();
    // One shard with one ring: exactly four slots in the whole broker.
    config.shards = 1;
    config.rings_per_shard = 1;
    config.ring_files_max = 4;
    let broker = TestBroker::start(config);
    let mut connected: Vec<RawClient> = (0..4)
        .map(|_| RawClient::connect(broker.addr(), &unique_id("table")))
        .collect();

    // The fifth is not served: closed, or at least never answered.
    let mut over = RawClient::open(broker.addr());
    over.send_ignoring_errors(&Connect::v311(&unique_id("over")).bytes());
    if let Some(packet) = over.expect_closed_or_packet() {
        panic!("a fifth connection was served with 4 slots: {packet:?}");
    }

    broker.wait_counter("table_full_count", |s| s.table_full_count, 1);
    connected.pop().unwrap().disconnect();
    // A slot is free again: a new connection is served (within WAIT).
    let mut again = RawClient::connect(broker.addr(), &unique_id("again"));
    again.ping();
    for client in connected.iter_mut() {
        client.ping();
    }
    assert_broker_still_serves_with_slots(&mut again);
}

/// With every slot taken, check routing through the connections we already hold.
fn assert_broker_still_serves_with_slots(client: &mut RawClient) {
    let topic = unique_topic("slots");
    client.subscribe(1, &[(&topic, 0)]);
    client.send(&publish_bytes(
        topic.as_bytes(),
        0,
        false,
        false,
        0,
        b"self",
    ));
    assert_eq!(client.read_publish().payload, b"self");
}

#[test]
fn outbound_packet_ids_wrap_without_zero() {
    // [MQTT-2.3.1-1] Packet ids are non-zero; after 65535 the broker wraps around. 65,600 QoS 1
    // messages to one subscriber, acknowledged as they come.
    let mut config = test_config();
    config.limits.offline_queue_max = 100_000;
    let broker = TestBroker::start(config);
    let topic = unique_topic("wrap");
    let total: u32 = 65_600;
    let mut subscriber = RawClient::connect(broker.addr(), &unique_id("wrap-sub"));
    subscriber.subscribe(1, &[(&topic, 1)]);
    let reader = std::thread::spawn(move || {
        let mut max_id = 0;
        for n in 0..total {
            let publish = subscriber.read_publish();
            let id = publish.packet_id.unwrap(); // RawPacket::publish asserts id != 0
            max_id = max_id.max(id);
            subscriber.send(&puback_bytes(id));
            assert_eq!(
                publish.payload,
                n.to_be_bytes(),
                "message {n} lost or out of order"
            );
        }
        max_id
    });
    let mut publisher = RawClient::connect(broker.addr(), &unique_id("wrap-pub"));
    let batch = 1000;
    for start in (0..total).step_by(batch) {
        let end = (start + batch as u32).min(total);
        let mut bytes = Vec::new();
        for n in start..end {
            let id = (n % 60_000 + 1) as u16;
            bytes.extend(publish_bytes(
                topic.as_bytes(),
                1,
                false,
                false,
                id,
                &n.to_be_bytes(),
            ));
        }
        publisher.send(&bytes);
        for n in start..end {
            assert_eq!(
                publisher.read_packet().ack_id(PUBACK),
                (n % 60_000 + 1) as u16
            );
        }
    }
    let max_id = reader.join().expect("subscriber thread");
    assert!(max_id > 0);
}

#[test]
fn slow_qos1_consumer_loses_nothing() {
    // DESIGN.md "Slow consumers": past outbox_bytes_max QoS 1 messages wait in the session queue
    // (they are not dropped like QoS 0) and flow once the subscriber reads again.
    let mut config = test_config();
    config.limits.outbox_bytes_max = 64 * 1024;
    let broker = TestBroker::start(config);
    let topic = unique_topic("slow-q1");
    let mut slow = RawClient::open_with_recv_buffer(broker.addr(), 4096);
    slow.send(&Connect::v311(&unique_id("slow-q1")).bytes());
    assert_eq!(slow.read_packet().connack(), (false, 0));
    slow.subscribe(1, &[(&topic, 1)]);

    let total = 500u32;
    let mut publisher = RawClient::connect(broker.addr(), &unique_id("slow-q1-pub"));
    for n in 0..total {
        let mut payload = n.to_be_bytes().to_vec();
        payload.resize(4096, b'.');
        let id = (n + 1) as u16;
        publisher.send(&publish_bytes(
            topic.as_bytes(),
            1,
            false,
            false,
            id,
            &payload,
        ));
        assert_eq!(publisher.read_packet().ack_id(PUBACK), id);
    }
    // 2 MB published while the subscriber read nothing; now it reads and acknowledges.
    for n in 0..total {
        let publish = slow.read_publish();
        assert_eq!(
            publish.payload[..4],
            n.to_be_bytes(),
            "message {n} lost or out of order"
        );
        assert_eq!(publish.payload.len(), 4096);
        slow.send(&puback_bytes(publish.packet_id.unwrap()));
    }
    slow.expect_silence(std::time::Duration::from_millis(200));
}

#[test]
fn stored_payloads_survive_heavy_traffic() {
    // Payloads are shared slices of a receive arena that the broker reuses: a retained message
    // and messages queued for an offline session must keep their bytes while thousands of
    // other messages pass through (and the arena blocks under them are recycled).
    let broker = start_broker();
    let root = unique_topic("arena");
    let retained_topic = format!("{root}/retained");
    let queued_topic = format!("{root}/queued");
    let traffic_topic = format!("{root}/traffic");
    let pattern = |seed: u8, len: usize| -> Vec<u8> {
        (0..len)
            .map(|i| seed.wrapping_add((i % 251) as u8))
            .collect()
    };

    let mut publisher = RawClient::connect(broker.addr(), &unique_id("arena-pub"));
    publisher.publish(&retained_topic, 1, true, 1, &pattern(7, 3000));

    // A will, parsed from a CONNECT at the start, published only at the end.
    let will_topic = format!("{root}/will");
    let mut will_connect = Connect::v311(&unique_id("arena-will"));
    will_connect.will = Some(Will {
        topic: will_topic.clone(),
        payload: pattern(55, 1500),
        qos: 1,
        retain: false,
    });
    let (will_client, _) = RawClient::connect_with(broker.addr(), &will_connect);

    let mut connect = Connect::v311(&unique_id("arena-offline"));
    connect.clean_session = false;
    let (mut offline, _) = RawClient::connect_with(broker.addr(), &connect);
    offline.subscribe(1, &[(&queued_topic, 1)]);
    offline.disconnect();
    for n in 0..10u8 {
        publisher.publish(
            &queued_topic,
            1,
            false,
            2 + n as u16,
            &pattern(100 + n, 500 + n as usize),
        );
    }

    // Heavy traffic: 5,000 messages of varied sizes, consumed by a subscriber.
    let mut consumer = RawClient::connect(broker.addr(), &unique_id("arena-consumer"));
    consumer.subscribe(1, &[(&traffic_topic, 0)]);
    for batch in 0..50u32 {
        let mut bytes = Vec::new();
        for i in 0..100u32 {
            let n = batch * 100 + i;
            let len = 1 + (n as usize * 37) % 2000;
            bytes.extend(publish_bytes(
                traffic_topic.as_bytes(),
                0,
                false,
                false,
                0,
                &pattern(n as u8, len),
            ));
        }
        publisher.send(&bytes);
        for i in 0..100u32 {
            let n = batch * 100 + i;
            let len = 1 + (n as usize * 37) % 2000;
            assert!(
                consumer.read_publish().payload == pattern(n as u8, len),
                "traffic {n}"
            );
        }
    }

    let mut late = RawClient::connect(broker.addr(), &unique_id("arena-late"));
    late.subscribe(1, &[(&retained_topic, 0), (&will_topic, 1)]);
    let retained = late.read_publish();
    assert!(retained.retain);
    assert_eq!(retained.topic, retained_topic);
    assert!(
        retained.payload == pattern(7, 3000),
        "retained payload changed under traffic"
    );

    drop(will_client);
    let will = late.read_publish();
    assert_eq!(will.topic, will_topic);
    assert!(
        will.payload == pattern(55, 1500),
        "will payload changed under traffic"
    );

    let (mut offline, present) = RawClient::connect_with(broker.addr(), &connect);
    assert!(present);
    for n in 0..10u8 {
        let publish = offline.read_publish();
        assert_eq!(publish.topic, queued_topic);
        assert!(
            publish.payload == pattern(100 + n, 500 + n as usize),
            "queued message {n} changed under traffic"
        );
        offline.send(&puback_bytes(publish.packet_id.unwrap()));
    }
}

#[test]
fn interleaved_partial_packets_from_many_connections_stay_apart() {
    // Each connection's partial packet is kept apart from the others' until it completes: ten
    // publishers send their packets in pieces, round-robin, pieces of different sizes.
    let broker = start_broker();
    let root = unique_topic("pieces");
    let mut subscriber = RawClient::connect(broker.addr(), &unique_id("pieces-sub"));
    subscriber.subscribe(1, &[(&format!("{root}/#"), 0)]);
    let mut publishers: Vec<RawClient> = (0..10)
        .map(|_| RawClient::connect(broker.addr(), &unique_id("pieces-pub")))
        .collect();
    for round in 0..20usize {
        let packets: Vec<Vec<u8>> = (0..publishers.len())
            .map(|p| {
                let payload = vec![b'a' + p as u8; 100 + round * 50 + p];
                publish_bytes(
                    format!("{root}/{p}").as_bytes(),
                    0,
                    false,
                    false,
                    0,
                    &payload,
                )
            })
            .collect();
        // Three pieces per packet, cut at different places for each publisher.
        let cuts: Vec<(usize, usize)> = packets
            .iter()
            .enumerate()
            .map(|(p, bytes)| (1 + (p * 7 + round) % 5, bytes.len() / 2 + p))
            .collect();
        for piece in 0..3 {
            for (p, publisher) in publishers.iter_mut().enumerate() {
                let (first, second) = cuts[p];
                let bytes = &packets[p];
                let range = match piece {
                    0 => 0..first,
                    1 => first..second,
                    _ => second..bytes.len(),
                };
                publisher.send(&bytes[range]);
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let mut seen = vec![false; publishers.len()];
        for _ in 0..publishers.len() {
            let publish = subscriber.read_publish();
            let p: usize = publish.topic.rsplit('/').next().unwrap().parse().unwrap();
            assert!(!seen[p], "publisher {p} twice in round {round}");
            seen[p] = true;
            assert_eq!(
                publish.payload,
                vec![b'a' + p as u8; 100 + round * 50 + p],
                "round {round}"
            );
        }
    }
}

#[test]
fn tiny_receive_buffers_run_dry_and_lose_nothing() {
    // Two 64-byte provided buffers for the whole shard: receives run out (ENOBUFS) and must be
    // re-armed; packets span many buffers. Ten publishers at once, QoS 1, nothing lost.
    let mut config = test_config();
    config.recv_buffer_count = 2;
    config.recv_buffer_size = 64;
    let broker = TestBroker::start(config);
    let root = unique_topic("dry");
    let mut subscriber = RawClient::connect(broker.addr(), &unique_id("dry-sub"));
    subscriber.subscribe(1, &[(&format!("{root}/#"), 0)]);
    let mut publishers: Vec<RawClient> = (0..10)
        .map(|_| RawClient::connect(broker.addr(), &unique_id("dry-pub")))
        .collect();
    let per_publisher = 50u16;
    for (p, publisher) in publishers.iter_mut().enumerate() {
        let mut bytes = Vec::new();
        for n in 0..per_publisher {
            let payload = format!("{p}:{n}:{}", "x".repeat(150));
            bytes.extend(publish_bytes(
                format!("{root}/{p}").as_bytes(),
                1,
                false,
                false,
                n + 1,
                payload.as_bytes(),
            ));
        }
        publisher.send(&bytes);
    }
    for publisher in publishers.iter_mut() {
        for n in 0..per_publisher {
            assert_eq!(publisher.read_packet().ack_id(PUBACK), n + 1);
        }
    }
    let mut next = vec![0u16; publishers.len()];
    for _ in 0..publishers.len() * per_publisher as usize {
        let publish = subscriber.read_publish();
        let text = String::from_utf8(publish.payload).unwrap();
        let mut parts = text.splitn(3, ':');
        let p: usize = parts.next().unwrap().parse().unwrap();
        let n: u16 = parts.next().unwrap().parse().unwrap();
        assert_eq!(n, next[p], "publisher {p}: lost or reordered");
        assert_eq!(parts.next().unwrap().len(), 150);
        next[p] += 1;
    }
    // The point of the test: the buffer ring did run dry.
    broker.wait_counter("recv_nobufs_count", |s| s.recv_nobufs_count, 1);
}

#[test]
fn tiny_submission_queue_still_serves_a_fan_out() {
    // Eight submission entries: one turn's sends to 30 subscribers overflow the queue, which must
    // be submitted and refilled, not lose operations.
    let mut config = test_config();
    config.ring_entries = 8;
    let broker = TestBroker::start(config);
    let topic = unique_topic("small-sq");
    let mut subscribers: Vec<RawClient> = (0..30)
        .map(|_| {
            let mut s = RawClient::connect(broker.addr(), &unique_id("sq-sub"));
            s.subscribe(1, &[(&topic, 1)]);
            s
        })
        .collect();
    let mut publisher = RawClient::connect(broker.addr(), &unique_id("sq-pub"));
    for n in 0..20u16 {
        publisher.publish(&topic, 1, false, n + 1, &n.to_be_bytes());
    }
    for subscriber in subscribers.iter_mut() {
        for n in 0..20u16 {
            let publish = subscriber.read_publish();
            assert_eq!(publish.payload, n.to_be_bytes());
            subscriber.send(&puback_bytes(publish.packet_id.unwrap()));
        }
    }
}

#[test]
fn connections_fill_every_ring_of_every_shard() {
    // DESIGN.md "More than one ring per shard": a shard holds rings × slots connections. Here
    // 2 shards × 4 rings × 8 slots = 64; 40 clients (with ids homed on both shards, so about half
    // are handed from the accepting shard to their home shard) must all be served.
    let mut config = test_config();
    config.shards = 2;
    config.rings_per_shard = 4;
    config.ring_files_max = 8;
    let broker = TestBroker::start(config);
    let topic = unique_topic("rings");
    let mut clients: Vec<RawClient> = Vec::new();
    for i in 0..40 {
        let mut client = RawClient::open(broker.addr());
        client.send(&Connect::v311(&unique_id("rings")).bytes());
        match client.expect_closed_or_packet() {
            Some(packet) => assert_eq!(packet.connack(), (false, 0), "client {i}"),
            None => panic!("client {i} of 40 was closed; the broker holds 64"),
        }
        assert_eq!(client.subscribe(1, &[(&topic, 0)]), vec![0], "client {i}");
        clients.push(client);
    }
    let mut publisher = RawClient::connect(broker.addr(), &unique_id("rings-pub"));
    publisher.publish(&topic, 1, false, 1, b"to all 40");
    for (i, client) in clients.iter_mut().enumerate() {
        assert_eq!(client.read_publish().payload, b"to all 40", "client {i}");
    }
}
