//! MQTT 3.1.1 behaviour seen through rumqttc (an independent client), with raw sockets where a
//! test needs what a well-behaved client never does: stop pinging, vanish, withhold acks.
//! Each test starts its own broker, so tests share no state and run in parallel.

mod common;

use std::time::{Duration, Instant};

use common::*;
use rumqttc::{LastWill, QoS};

// ---------------------------------------------------------------------------------------------
// Connection: CONNECT, keepalive, take-over
// ---------------------------------------------------------------------------------------------

#[test]
fn connect_gets_connack_accepted_without_session() {
    let broker = start_broker();
    let client = MqttClient::connect(mqtt_options(broker.addr(), "connect"));
    assert_eq!(client.connack.code, rumqttc::ConnectReturnCode::Success);
    // [MQTT-3.2.2-1] Clean session 1: session present is 0.
    assert!(!client.connack.session_present);
    client.disconnect();
}

#[test]
fn pingreq_gets_pingresp() {
    // [MQTT-3.12.4-1]
    let broker = start_broker();
    let mut client = RawClient::connect(broker.addr(), &unique_id("ping"));
    client.send(&PINGREQ);
    let packet = client.read_packet();
    assert_eq!(packet.first_byte, PINGRESP[0]);
    assert!(packet.body.is_empty());
    client.disconnect();
}

#[test]
fn keepalive_expiry_disconnects_and_publishes_will() {
    // [MQTT-3.1.2-24] No packet within 1.5 × keepalive: the server disconnects the client, and
    // [MQTT-3.1.2-8] that is a close without DISCONNECT, so the will goes out.
    let broker = start_broker();
    let (mut client, mut watcher, will_topic) = will_setup(&broker, 1);
    let started = Instant::now();
    client.expect_closed_within(Duration::from_secs(6));
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1000),
        "closed after {elapsed:?}, before the 1.5 s keepalive grace"
    );
    assert!(
        elapsed <= Duration::from_millis(3500),
        "closed after {elapsed:?}; 1.5 × 1 s keepalive plus a 1 s timer tick is 2.5 s"
    );
    let publish = watcher.recv_publish();
    assert_eq!(publish.topic, will_topic);
}

#[test]
fn pings_keep_a_connection_alive() {
    let broker = start_broker();
    let mut connect = Connect::v311(&unique_id("pinger"));
    connect.keepalive_secs = 1;
    let (mut client, _) = RawClient::connect_with(broker.addr(), &connect);
    // Four seconds of pings every 500 ms: well past 1.5 × keepalive, still open.
    for _ in 0..8 {
        std::thread::sleep(Duration::from_millis(500));
        client.ping();
    }
}

#[test]
fn keepalive_zero_never_times_out() {
    // [MQTT-3.1.2-10] comment: keepalive 0 turns the mechanism off.
    let broker = start_broker();
    let mut connect = Connect::v311(&unique_id("ka0"));
    connect.keepalive_secs = 0;
    let (mut client, _) = RawClient::connect_with(broker.addr(), &connect);
    client.expect_silence(Duration::from_millis(2600));
    client.ping();
}

#[test]
fn keepalive_max_secs_is_enforced() {
    // limits.keepalive_max_secs (config.rs: "Keepalive granted at most"). MQTT 3.1.1 cannot tell
    // the client a shorter keepalive, so the broker either refuses a longer one in CONNACK (as
    // mosquitto does, code 2) or holds the client to the maximum: silent for 1.5 × 1 s, closed.
    let mut config = test_config();
    config.limits.keepalive_max_secs = 1;
    let broker = TestBroker::start(config);
    let mut connect = Connect::v311(&unique_id("ka-max"));
    connect.keepalive_secs = 60;
    let mut client = RawClient::open(broker.addr());
    client.send(&connect.bytes());
    let (_, code) = client.read_packet().connack();
    let started = Instant::now();
    let rest = client.expect_closed_within(Duration::from_millis(3500));
    assert!(rest.is_empty(), "{rest:02x?}");
    if code == 0 {
        assert!(
            started.elapsed() >= Duration::from_millis(1000),
            "closed after {:?}",
            started.elapsed()
        );
    }
}

#[test]
fn second_connection_with_same_client_id_takes_over() {
    // [MQTT-3.1.4-2] The server disconnects the existing client with the same client id.
    let broker = start_broker();
    let client_id = unique_id("takeover");
    let mut first = RawClient::connect(broker.addr(), &client_id);
    let mut second = RawClient::connect(broker.addr(), &client_id);
    first.expect_closed();
    // The new connection works.
    second.ping();
    second.disconnect();
}

// ---------------------------------------------------------------------------------------------
// Publish and subscribe: QoS, order, payloads
// ---------------------------------------------------------------------------------------------

fn qos(n: u8) -> QoS {
    match n {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

/// One publisher at `pub_qos`, three subscribers at QoS 0, 1, 2: each gets the message once, at
/// min(publish QoS, granted QoS) [MQTT-3.8.4-6], with topic and payload intact.
fn pubsub_at(pub_qos: u8) {
    let broker = start_broker();
    let topic = unique_topic("pubsub");
    let mut subscribers: Vec<MqttClient> = (0..3u8)
        .map(|sub_qos| {
            let mut s = MqttClient::connect(mqtt_options(broker.addr(), "sub"));
            assert_eq!(s.subscribe(&topic, qos(sub_qos)), Some(qos(sub_qos)));
            s
        })
        .collect();
    let mut publisher = MqttClient::connect(mqtt_options(broker.addr(), "pub"));
    let payload = format!("hello at qos {pub_qos}");
    publisher.publish_acked(&topic, qos(pub_qos), false, payload.clone());
    for (sub_qos, subscriber) in subscribers.iter_mut().enumerate() {
        let publish = subscriber.recv_publish();
        assert_eq!(publish.topic, topic);
        assert_eq!(publish.payload, payload.as_bytes());
        assert_eq!(
            publish.qos,
            qos(pub_qos.min(sub_qos as u8)),
            "publish at {pub_qos}, subscription at {sub_qos}"
        );
        assert!(!publish.retain, "[MQTT-3.3.1-9] live delivery has retain 0");
        assert!(!publish.dup, "first delivery has DUP 0");
    }
    for subscriber in subscribers.iter_mut() {
        subscriber.expect_no_publish();
    }
}

#[test]
fn pubsub_qos0() {
    pubsub_at(0);
}

#[test]
fn pubsub_qos1() {
    pubsub_at(1);
}

#[test]
fn pubsub_qos2() {
    pubsub_at(2);
}

#[test]
fn hundred_messages_from_one_publisher_keep_their_order() {
    // [MQTT-4.6.0-5] The server treats each topic as an Ordered Topic by default.
    let broker = start_broker();
    let topic = unique_topic("order");
    for sub_qos in [0u8, 1] {
        let mut subscriber = MqttClient::connect(mqtt_options(broker.addr(), "order-sub"));
        subscriber.subscribe(&topic, qos(sub_qos));
        let mut publisher = MqttClient::connect(mqtt_options(broker.addr(), "order-pub"));
        for i in 0..100 {
            publisher.publish(&topic, qos(sub_qos), false, format!("{i}"));
        }
        if sub_qos > 0 {
            publisher.wait_acks(qos(sub_qos), 100);
        }
        for i in 0..100 {
            let publish = subscriber.recv_publish();
            assert_eq!(
                publish.payload,
                format!("{i}").as_bytes(),
                "message {i} at QoS {sub_qos}"
            );
        }
        subscriber.expect_no_publish();
        publisher.disconnect();
        subscriber.disconnect();
    }
}

#[test]
fn large_payload_arrives_intact() {
    // Far bigger than one receive buffer: the broker reassembles it from many reads.
    let broker = start_broker();
    let topic = unique_topic("large");
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut subscriber = MqttClient::connect(mqtt_options(broker.addr(), "large-sub"));
    subscriber.subscribe(&topic, QoS::AtLeastOnce);
    let mut publisher = MqttClient::connect(mqtt_options(broker.addr(), "large-pub"));
    publisher.publish_acked(&topic, QoS::AtLeastOnce, false, payload.clone());
    let publish = subscriber.recv_publish();
    assert_eq!(publish.payload.len(), payload.len());
    assert!(publish.payload == payload, "payload corrupted");
}

#[test]
fn payload_sizes_around_remaining_length_boundaries() {
    // The broker's encoder writes 1- to 4-byte remaining lengths; our parser checks them.
    let mut config = test_config();
    config.limits.packet_size_max = 4 << 20;
    let broker = TestBroker::start(config);
    let topic = unique_topic("sizes");
    let mut subscriber = RawClient::connect(broker.addr(), &unique_id("sizes-sub"));
    subscriber.subscribe(1, &[(&topic, 0)]);
    let mut publisher = RawClient::connect(broker.addr(), &unique_id("sizes-pub"));
    let overhead = 2 + topic.len();
    let mut sizes = vec![0, 1];
    for boundary in [127usize, 16_383, 2_097_151] {
        for delta in [-2i64, -1, 0, 1, 2] {
            sizes.push((boundary as i64 + delta) as usize - overhead);
        }
    }
    for size in sizes {
        let payload: Vec<u8> = (0..size).map(|i| (i % 253) as u8).collect();
        publisher.publish(&topic, 0, false, 0, &payload);
        let publish = subscriber.read_publish();
        assert_eq!(publish.payload.len(), size);
        assert!(
            publish.payload == payload,
            "payload of {size} bytes corrupted"
        );
    }
}

#[test]
fn longest_topic_name_is_routed() {
    // [MQTT-1.5.3] A string is up to 65535 bytes.
    let broker = start_broker();
    let prefix = unique_topic("long");
    let topic = format!("{prefix}/{}", "x".repeat(65_535 - prefix.len() - 1));
    assert_eq!(topic.len(), 65_535);
    let mut subscriber = RawClient::connect(broker.addr(), &unique_id("long-sub"));
    assert_eq!(subscriber.subscribe(1, &[(&topic, 1)]), vec![1]);
    let mut publisher = RawClient::connect(broker.addr(), &unique_id("long-pub"));
    publisher.publish(&topic, 1, false, 1, b"long");
    let publish = subscriber.read_publish();
    assert_eq!(publish.topic, topic);
}

#[test]
fn one_message_fans_out_to_many_subscribers() {
    let broker = start_broker();
    let topic = unique_topic("fanout");
    let mut subscribers: Vec<RawClient> = (0..20)
        .map(|_| {
            let mut s = RawClient::connect(broker.addr(), &unique_id("fan"));
            assert_eq!(s.subscribe(1, &[(&topic, 0)]), vec![0]);
            s
        })
        .collect();
    let mut publisher = RawClient::connect(broker.addr(), &unique_id("fan-pub"));
    publisher.publish(&topic, 1, false, 1, b"to all");
    for subscriber in subscribers.iter_mut() {
        let publish = subscriber.read_publish();
        assert_eq!(
            (publish.payload.as_slice(), publish.qos),
            (&b"to all"[..], 0)
        );
    }
}

#[test]
fn dup_flag_is_not_propagated_to_subscribers() {
    // [MQTT-3.3.1-3] The DUP flag of an incoming PUBLISH is not passed on.
    let broker = start_broker();
    let topic = unique_topic("dup");
    let mut subscriber = RawClient::connect(broker.addr(), &unique_id("dup-sub"));
    subscriber.subscribe(1, &[(&topic, 1)]);
    let mut publisher = RawClient::connect(broker.addr(), &unique_id("dup-pub"));
    publisher.send(&publish_bytes(
        topic.as_bytes(),
        1,
        false,
        true,
        5,
        b"dup set",
    ));
    assert_eq!(publisher.read_packet().ack_id(PUBACK), 5);
    let publish = subscriber.read_publish();
    assert_eq!(publish.payload, b"dup set");
    assert!(!publish.dup, "DUP propagated: {publish:?}");
}

#[test]
fn qos2_outbound_handshake_with_raw_subscriber() {
    // [MQTT-4.3.3-1] The broker as sender: PUBLISH → PUBREC → PUBREL → PUBCOMP.
    let broker = start_broker();
    let topic = unique_topic("qos2-out");
    let mut subscriber = RawClient::connect(broker.addr(), &unique_id("qos2-out-sub"));
    assert_eq!(subscriber.subscribe(1, &[(&topic, 2)]), vec![2]);
    let mut publisher = MqttClient::connect(mqtt_options(broker.addr(), "qos2-out-pub"));
    publisher.publish_acked(&topic, QoS::ExactlyOnce, false, "two");
    let publish = subscriber.read_publish();
    assert_eq!((publish.qos, publish.payload.as_slice()), (2, &b"two"[..]));
    let id = publish.packet_id.unwrap();
    subscriber.send(&pubrec_bytes(id));
    assert_eq!(subscriber.read_packet().ack_id(PUBREL), id);
    subscriber.send(&pubcomp_bytes(id));
    subscriber.ping();
    subscriber.disconnect();
}

#[test]
fn inbound_qos2_is_delivered_exactly_once() {
    // [MQTT-4.3.3-2] Until PUBREL, a PUBLISH with the same packet id is not a new message.
    let broker = start_broker();
    let topic = unique_topic("qos2-in");
    let mut subscriber = MqttClient::connect(mqtt_options(broker.addr(), "qos2-sub"));
    subscriber.subscribe(&topic, QoS::ExactlyOnce);

    let mut publisher = RawClient::connect(broker.addr(), &unique_id("qos2-pub"));
    publisher.send(&publish_bytes(
        topic.as_bytes(),
        2,
        false,
        false,
        7,
        b"once",
    ));
    assert_eq!(publisher.read_packet().ack_id(PUBREC), 7);
    publisher.send(&publish_bytes(topic.as_bytes(), 2, false, true, 7, b"once"));
    assert_eq!(
        publisher.read_packet().ack_id(PUBREC),
        7,
        "PUBREC again for the duplicate"
    );
    publisher.send(&pubrel_bytes(7));
    assert_eq!(publisher.read_packet().ack_id(PUBCOMP), 7);

    let publish = subscriber.recv_publish();
    assert_eq!(
        (publish.payload.as_ref(), publish.qos),
        (&b"once"[..], QoS::ExactlyOnce)
    );
    subscriber.expect_no_publish();

    // After PUBCOMP the packet id is free: the same id now carries a new message.
    publisher.publish(&topic, 2, false, 7, b"next");
    assert_eq!(subscriber.recv_publish().payload, &b"next"[..]);
    subscriber.expect_no_publish();
}

#[test]
fn pubrel_for_unknown_packet_id_gets_pubcomp() {
    // [MQTT-4.3.3-1] The receiver answers PUBREL with PUBCOMP even if it holds no state for it
    // (e.g. a PUBREL resent after a reconnect).
    let broker = start_broker();
    let mut client = RawClient::connect(broker.addr(), &unique_id("pubrel"));
    client.send(&pubrel_bytes(42));
    assert_eq!(client.read_packet().ack_id(PUBCOMP), 42);
}

#[test]
fn stray_puback_is_ignored() {
    // A PUBACK for a packet id the broker never used: nothing to release; the connection lives.
    let broker = start_broker();
    let mut client = RawClient::connect(broker.addr(), &unique_id("stray"));
    client.send(&puback_bytes(999));
    client.send(&pubcomp_bytes(998));
    client.ping();
}

#[test]
fn granted_qos_is_capped_by_qos_max() {
    let mut config = test_config();
    config.limits.qos_max = 1;
    let broker = TestBroker::start(config);
    let mut client = MqttClient::connect(mqtt_options(broker.addr(), "qos-max"));
    assert_eq!(
        client.subscribe(&unique_topic("capped"), QoS::ExactlyOnce),
        Some(QoS::AtLeastOnce)
    );
}

// ---------------------------------------------------------------------------------------------
// Topics and subscriptions
// ---------------------------------------------------------------------------------------------

/// Subscribes `filter` plus a private sentinel topic, publishes `topics` then the sentinel, and
/// returns the topics received before the sentinel (one publisher keeps its order).
fn topics_matched(broker: &TestBroker, filter: &str, topics: &[String]) -> Vec<String> {
    let sentinel = unique_topic("sentinel");
    let mut subscriber = MqttClient::connect(mqtt_options(broker.addr(), "wild-sub"));
    let granted =
        subscriber.subscribe_many(&[(filter, QoS::AtMostOnce), (&sentinel, QoS::AtMostOnce)]);
    assert_eq!(granted, vec![Some(QoS::AtMostOnce); 2], "filter {filter}");
    let publisher = MqttClient::connect(mqtt_options(broker.addr(), "wild-pub"));
    for topic in topics {
        publisher.publish(topic, QoS::AtMostOnce, false, "x");
    }
    publisher.publish(&sentinel, QoS::AtMostOnce, false, "end");
    let mut received = Vec::new();
    loop {
        let publish = subscriber.recv_publish();
        if publish.topic == sentinel {
            return received;
        }
        received.push(publish.topic);
    }
}

#[test]
fn wildcards_match_per_spec() {
    let broker = start_broker();
    let root = unique_topic("sport");
    let t = |suffix: &str| format!("{root}{suffix}");
    let topics = vec![
        t(""),
        t("/tennis"),
        t("/tennis/player1"),
        t("/tennis/player1/ranking"),
        t("/tennis/player2"),
        t("/golf/player1"),
        t("/"),
    ];
    // [MQTT-4.7.1-2] `#` also matches the parent level: `sport/#` matches `sport`.
    assert_eq!(topics_matched(&broker, &t("/#"), &topics), topics);
    assert_eq!(
        topics_matched(&broker, &t("/tennis/+"), &topics),
        vec![t("/tennis/player1"), t("/tennis/player2")]
    );
    assert_eq!(
        topics_matched(&broker, &t("/+/player1"), &topics),
        vec![t("/tennis/player1"), t("/golf/player1")]
    );
    // [MQTT-4.7.1-3] `+` matches an empty level too.
    assert_eq!(
        topics_matched(&broker, &t("/+"), &topics),
        vec![t("/tennis"), t("/")]
    );
    assert_eq!(
        topics_matched(&broker, &t("/tennis/#"), &topics),
        vec![
            t("/tennis"),
            t("/tennis/player1"),
            t("/tennis/player1/ranking"),
            t("/tennis/player2")
        ]
    );
    assert_eq!(
        topics_matched(&broker, &t("/tennis/player1"), &topics),
        vec![t("/tennis/player1")]
    );
}

#[test]
fn leading_slash_and_plus_match_empty_first_level() {
    let broker = start_broker();
    let name = unique_id("finance");
    let topics = vec![format!("/{name}"), name.clone()];
    // "+/+" and "/+" match "/finance"; "+" matches "finance" but not "/finance".
    assert_eq!(
        topics_matched(&broker, "+/+", &topics),
        vec![format!("/{name}")]
    );
    assert_eq!(
        topics_matched(&broker, "/+", &topics),
        vec![format!("/{name}")]
    );
    assert_eq!(topics_matched(&broker, "+", &topics), vec![name]);
}

#[test]
fn dollar_topics_are_not_matched_by_leading_wildcards() {
    // [MQTT-4.7.2-1] Filters starting with a wildcard don't match topics starting with `$`.
    let broker = start_broker();
    let dollar = format!("${}", unique_id("dollar"));
    let plain = unique_topic("plain");
    let topics = vec![format!("{dollar}/x"), plain.clone()];
    let everything = topics_matched(&broker, "#", &topics);
    assert!(
        everything.contains(&plain),
        "# must match {plain}: {everything:?}"
    );
    assert!(
        !everything.iter().any(|t| t.starts_with('$')),
        "# matched a $ topic: {everything:?}"
    );
    assert_eq!(
        topics_matched(&broker, "+/x", &topics),
        Vec::<String>::new()
    );
    assert_eq!(
        topics_matched(&broker, &format!("{dollar}/#"), &topics),
        vec![format!("{dollar}/x")]
    );
}

#[test]
fn topics_are_case_sensitive_and_may_contain_spaces() {
    // [MQTT-4.7.3-4] Topics are compared character by character, without normalisation.
    let broker = start_broker();
    let root = unique_topic("Case");
    let topics = vec![
        format!("{root}/Topic"),
        format!("{root}/topic"),
        format!("{root}/with space"),
        format!("{root}/ünïcödé"),
    ];
    assert_eq!(
        topics_matched(&broker, &format!("{root}/Topic"), &topics),
        vec![format!("{root}/Topic")]
    );
    assert_eq!(
        topics_matched(&broker, &format!("{root}/with space"), &topics),
        vec![format!("{root}/with space")]
    );
    assert_eq!(
        topics_matched(&broker, &format!("{root}/ünïcödé"), &topics),
        vec![format!("{root}/ünïcödé")]
    );
}

#[test]
fn overlapping_subscriptions_deliver_once_at_highest_qos() {
    // [MQTT-3.3.5-1] Deliver respecting the maximum QoS of all matching subscriptions; ringmq
    // delivers one copy (the spec allows one per subscription; we promise one).
    let broker = start_broker();
    let root = unique_topic("overlap");
    let topic = format!("{root}/a");
    let mut subscriber = MqttClient::connect(mqtt_options(broker.addr(), "ov-sub"));
    let granted = subscriber.subscribe_many(&[
        (&format!("{root}/+"), QoS::AtMostOnce),
        (&format!("{root}/#"), QoS::AtLeastOnce),
        (&topic, QoS::AtMostOnce),
    ]);
    assert_eq!(
        granted,
        vec![
            Some(QoS::AtMostOnce),
            Some(QoS::AtLeastOnce),
            Some(QoS::AtMostOnce)
        ]
    );
    let mut publisher = MqttClient::connect(mqtt_options(broker.addr(), "ov-pub"));
    publisher.publish_acked(&topic, QoS::ExactlyOnce, false, "once");
    let publish = subscriber.recv_publish();
    assert_eq!(
        (publish.payload.as_ref(), publish.qos),
        (&b"once"[..], QoS::AtLeastOnce)
    );
    subscriber.expect_no_publish();
}

#[test]
fn unsubscribe_stops_delivery() {
    let broker = start_broker();
    let topic = unique_topic("unsub");
    let sentinel = unique_topic("unsub-sentinel");
    let mut subscriber = MqttClient::connect(mqtt_options(broker.addr(), "unsub-sub"));
    subscriber.subscribe_many(&[(&topic, QoS::AtLeastOnce), (&sentinel, QoS::AtLeastOnce)]);
    let mut publisher = MqttClient::connect(mqtt_options(broker.addr(), "unsub-pub"));
    publisher.publish_acked(&topic, QoS::AtLeastOnce, false, "before");
    assert_eq!(subscriber.recv_publish().payload, &b"before"[..]);

    // [MQTT-3.10.4-1] [MQTT-3.10.4-2] After UNSUBACK no new messages for that filter.
    subscriber.unsubscribe(&topic);
    publisher.publish_acked(&topic, QoS::AtLeastOnce, false, "after");
    publisher.publish_acked(&sentinel, QoS::AtLeastOnce, false, "sentinel");
    let publish = subscriber.recv_publish();
    assert_eq!(
        publish.topic, sentinel,
        "delivered after unsubscribe: {publish:?}"
    );
}

#[test]
fn unsubscribing_one_of_two_overlapping_filters_keeps_the_other() {
    let broker = start_broker();
    let root = unique_topic("overlap-unsub");
    let topic = format!("{root}/x");
    let mut subscriber = MqttClient::connect(mqtt_options(broker.addr(), "ou-sub"));
    subscriber.subscribe_many(&[
        (&format!("{root}/#"), QoS::AtLeastOnce),
        (&format!("{root}/+"), QoS::AtMostOnce),
    ]);
    subscriber.unsubscribe(&format!("{root}/#"));
    let mut publisher = MqttClient::connect(mqtt_options(broker.addr(), "ou-pub"));
    publisher.publish_acked(&topic, QoS::AtLeastOnce, false, "still");
    let publish = subscriber.recv_publish();
    assert_eq!(
        (publish.payload.as_ref(), publish.qos),
        (&b"still"[..], QoS::AtMostOnce)
    );
    subscriber.expect_no_publish();
}

#[test]
fn unsubscribe_of_unknown_filter_is_acknowledged() {
    // [MQTT-3.10.4-4] [MQTT-3.10.4-5] UNSUBACK even when nothing matched.
    let broker = start_broker();
    let mut client = RawClient::connect(broker.addr(), &unique_id("unsub-none"));
    client.send(&unsubscribe_bytes(9, &["never/subscribed"]));
    assert_eq!(client.read_packet().ack_id(UNSUBACK), 9);
}

#[test]
fn resubscribing_replaces_the_subscription() {
    // [MQTT-3.8.4-3] A SUBSCRIBE for an existing filter replaces it (new QoS) and re-sends the
    // retained messages; messages are not duplicated.
    let broker = start_broker();
    let topic = unique_topic("resub");
    let mut publisher = MqttClient::connect(mqtt_options(broker.addr(), "resub-pub"));
    publisher.publish_acked(&topic, QoS::AtLeastOnce, true, "retained");
    let mut subscriber = MqttClient::connect(mqtt_options(broker.addr(), "resub-sub"));
    subscriber.subscribe(&topic, QoS::AtMostOnce);
    let first = subscriber.recv_publish();
    assert_eq!((first.qos, first.retain), (QoS::AtMostOnce, true));
    subscriber.subscribe(&topic, QoS::AtLeastOnce);
    let again = subscriber.recv_publish();
    assert_eq!(again.payload, &b"retained"[..]);
    assert!(
        again.retain,
        "retained messages are re-sent on re-subscribe"
    );
    publisher.publish_acked(&topic, QoS::AtLeastOnce, false, "live");
    let live = subscriber.recv_publish();
    assert_eq!(
        (live.payload.as_ref(), live.qos),
        (&b"live"[..], QoS::AtLeastOnce)
    );
    subscriber.expect_no_publish();
}

// ---------------------------------------------------------------------------------------------
// Retained messages
// ---------------------------------------------------------------------------------------------

#[test]
fn retained_message_lifecycle() {
    let broker = start_broker();
    let topic = unique_topic("retained");
    let mut publisher = MqttClient::connect(mqtt_options(broker.addr(), "ret-pub"));
    publisher.publish_acked(&topic, QoS::AtLeastOnce, true, "v1");

    // [MQTT-3.3.1-6] [MQTT-3.3.1-8] A new subscription gets the retained message, retain=1.
    let mut first = MqttClient::connect(mqtt_options(broker.addr(), "ret-sub1"));
    first.subscribe(&topic, QoS::AtLeastOnce);
    let publish = first.recv_publish();
    assert_eq!(
        (publish.payload.as_ref(), publish.retain),
        (&b"v1"[..], true)
    );
    assert_eq!(publish.topic, topic);

    // [MQTT-3.3.1-9] A retained publish delivered live to an existing subscription has retain=0.
    publisher.publish_acked(&topic, QoS::AtLeastOnce, true, "v2");
    let publish = first.recv_publish();
    assert_eq!(
        (publish.payload.as_ref(), publish.retain),
        (&b"v2"[..], false)
    );

    // [MQTT-3.3.1-5] The newer retained message replaced the older one.
    let mut second = MqttClient::connect(mqtt_options(broker.addr(), "ret-sub2"));
    second.subscribe(&topic, QoS::AtLeastOnce);
    let publish = second.recv_publish();
    assert_eq!(
        (publish.payload.as_ref(), publish.retain),
        (&b"v2"[..], true)
    );
    second.expect_no_publish();

    // [MQTT-3.3.1-10] An empty retained payload deletes the retained message; [MQTT-3.3.1-11]
    // it is still delivered to current subscribers like any message.
    publisher.publish_acked(&topic, QoS::AtLeastOnce, true, "");
    let publish = first.recv_publish();
    assert!(publish.payload.is_empty() && !publish.retain, "{publish:?}");

    // A subscription made after the delete gets nothing retained: the first message it sees is
    // a live sentinel published after its SUBACK.
    let mut third = MqttClient::connect(mqtt_options(broker.addr(), "ret-sub3"));
    third.subscribe(&topic, QoS::AtLeastOnce);
    publisher.publish_acked(&topic, QoS::AtLeastOnce, false, "sentinel");
    let publish = third.recv_publish();
    assert_eq!(
        (publish.payload.as_ref(), publish.retain),
        (&b"sentinel"[..], false),
        "retained message survived the empty-payload delete"
    );
}

#[test]
fn retained_message_is_sent_at_most_granted_qos() {
    let broker = start_broker();
    let topic = unique_topic("retained-qos");
    let mut publisher = MqttClient::connect(mqtt_options(broker.addr(), "retq-pub"));
    publisher.publish_acked(&topic, QoS::ExactlyOnce, true, "kept");
    let mut subscriber = MqttClient::connect(mqtt_options(broker.addr(), "retq-sub"));
    subscriber.subscribe(&topic, QoS::AtMostOnce);
    let publish = subscriber.recv_publish();
    assert_eq!((publish.qos, publish.retain), (QoS::AtMostOnce, true));
}

#[test]
fn wildcard_subscription_gets_every_matching_retained_message() {
    let broker = start_broker();
    let root = unique_topic("retained-wild");
    let mut publisher = RawClient::connect(broker.addr(), &unique_id("rw-pub"));
    let retained = [root.clone(), format!("{root}/a"), format!("{root}/b/c")];
    for (i, topic) in retained.iter().enumerate() {
        publisher.publish(topic, 1, true, i as u16 + 1, topic.as_bytes());
    }
    publisher.publish(&format!("{root}x"), 1, true, 9, b"not under root");

    let mut subscriber = MqttClient::connect(mqtt_options(broker.addr(), "rw-sub"));
    subscriber.subscribe(&format!("{root}/#"), QoS::AtLeastOnce);
    let mut got: Vec<String> = (0..retained.len())
        .map(|_| {
            let publish = subscriber.recv_publish();
            assert!(publish.retain, "{publish:?}");
            assert_eq!(publish.payload, publish.topic.as_bytes());
            publish.topic
        })
        .collect();
    got.sort();
    let mut want = retained.to_vec();
    want.sort();
    assert_eq!(got, want);
    subscriber.expect_no_publish();

    let mut plus = MqttClient::connect(mqtt_options(broker.addr(), "rw-plus"));
    plus.subscribe(&format!("{root}/+"), QoS::AtLeastOnce);
    assert_eq!(plus.recv_publish().topic, format!("{root}/a"));
    plus.expect_no_publish();
}

// ---------------------------------------------------------------------------------------------
// Wills
// ---------------------------------------------------------------------------------------------

/// A raw client with a will on `will_topic`, and a watcher subscribed to it.
fn will_setup(broker: &TestBroker, keepalive_secs: u16) -> (RawClient, MqttClient, String) {
    let will_topic = unique_topic("will");
    let mut watcher = MqttClient::connect(mqtt_options(broker.addr(), "will-watch"));
    watcher.subscribe(&will_topic, QoS::AtLeastOnce);
    let mut connect = Connect::v311(&unique_id("will-client"));
    connect.keepalive_secs = keepalive_secs;
    connect.will = Some(Will {
        topic: will_topic.clone(),
        payload: b"gone".to_vec(),
        qos: 1,
        retain: false,
    });
    let (client, _) = RawClient::connect_with(broker.addr(), &connect);
    (client, watcher, will_topic)
}

#[test]
fn will_is_published_when_the_connection_drops() {
    // [MQTT-3.1.2-8] The will is published when the network connection closes without DISCONNECT.
    let broker = start_broker();
    let (client, mut watcher, will_topic) = will_setup(&broker, 60);
    drop(client);
    let publish = watcher.recv_publish();
    assert_eq!(publish.topic, will_topic);
    assert_eq!(publish.payload, &b"gone"[..]);
    assert_eq!(publish.qos, QoS::AtLeastOnce);
}

#[test]
fn will_set_by_rumqttc_is_published_when_the_client_vanishes() {
    let broker = start_broker();
    let will_topic = unique_topic("will-rumqttc");
    let mut watcher = MqttClient::connect(mqtt_options(broker.addr(), "will-watch"));
    watcher.subscribe(&will_topic, QoS::ExactlyOnce);
    let mut options = mqtt_options(broker.addr(), "will-rumqttc");
    options.set_last_will(LastWill::new(&will_topic, "bye", QoS::ExactlyOnce, false));
    let client = MqttClient::connect(options);
    drop(client); // socket closed, no DISCONNECT
    let publish = watcher.recv_publish();
    assert_eq!(
        (publish.payload.as_ref(), publish.qos),
        (&b"bye"[..], QoS::ExactlyOnce)
    );
}

#[test]
fn will_is_not_published_after_disconnect() {
    // [MQTT-3.1.2-10] [MQTT-3.14.4-3] DISCONNECT discards the will.
    let broker = start_broker();
    let (client, mut watcher, _) = will_setup(&broker, 60);
    client.disconnect();
    watcher.expect_no_publish();
}

#[test]
fn retained_will_is_retained() {
    // [MQTT-3.1.2-17] Will retain 1: the will is published as a retained message.
    let broker = start_broker();
    let will_topic = unique_topic("will-retained");
    let mut connect = Connect::v311(&unique_id("will-ret"));
    connect.will = Some(Will {
        topic: will_topic.clone(),
        payload: b"last words".to_vec(),
        qos: 0,
        retain: true,
    });
    let (client, _) = RawClient::connect_with(broker.addr(), &connect);
    let mut watcher = MqttClient::connect(mqtt_options(broker.addr(), "will-ret-watch"));
    watcher.subscribe(&will_topic, QoS::AtMostOnce);
    drop(client);
    let live = watcher.recv_publish();
    assert_eq!(live.payload, &b"last words"[..]);
    let mut late = MqttClient::connect(mqtt_options(broker.addr(), "will-ret-late"));
    late.subscribe(&will_topic, QoS::AtMostOnce);
    let retained = late.recv_publish();
    assert_eq!(
        (retained.payload.as_ref(), retained.retain),
        (&b"last words"[..], true)
    );
}

#[test]
fn will_is_published_when_the_broker_closes_for_a_protocol_error() {
    // [MQTT-3.1.2-8] The will goes out when the server closes the connection because of a
    // protocol error.
    let broker = start_broker();
    let (mut client, mut watcher, will_topic) = will_setup(&broker, 60);
    client.send_ignoring_errors(&publish_bytes(b"bad/+", 0, false, false, 0, b"x"));
    client.expect_closed();
    let publish = watcher.recv_publish();
    assert_eq!(
        (publish.topic.as_str(), publish.payload.as_ref()),
        (will_topic.as_str(), &b"gone"[..])
    );
}

// ---------------------------------------------------------------------------------------------
// Sessions (clean session 0)
// ---------------------------------------------------------------------------------------------

#[test]
fn persistent_session_keeps_subscriptions_and_queues_qos1() {
    // [MQTT-3.1.2-4] Clean session 0: the session (subscriptions, queued QoS 1/2 messages)
    // outlives the connection; [MQTT-3.2.2-2] CONNACK then says session present.
    let broker = start_broker();
    let client_id = unique_id("persistent");
    let topic = unique_topic("persistent");
    let options = |id: &str| {
        let mut o = mqtt_options_with_id(broker.addr(), id);
        o.set_clean_session(false);
        o
    };
    let mut subscriber = MqttClient::connect(options(&client_id));
    assert!(!subscriber.connack.session_present, "fresh session");
    subscriber.subscribe(&topic, QoS::AtLeastOnce);
    subscriber.disconnect();

    let mut publisher = MqttClient::connect(mqtt_options(broker.addr(), "persistent-pub"));
    for i in 0..3 {
        publisher.publish_acked(&topic, QoS::AtLeastOnce, false, format!("offline {i}"));
    }
    // QoS 0 to an offline session may be dropped or queued; not asserted.

    let mut subscriber = MqttClient::connect(options(&client_id));
    assert!(subscriber.connack.session_present, "[MQTT-3.2.2-2]");
    for i in 0..3 {
        let publish = subscriber.recv_publish();
        assert_eq!(publish.payload, format!("offline {i}").as_bytes());
        assert_eq!(publish.qos, QoS::AtLeastOnce);
    }
    // The subscription survived: a live message arrives without subscribing again.
    publisher.publish_acked(&topic, QoS::AtLeastOnce, false, "live");
    assert_eq!(subscriber.recv_publish().payload, &b"live"[..]);
    subscriber.disconnect();

    // Clean session 1 discards the session [MQTT-3.1.2-6]: no session present, no subscription.
    let clean = MqttClient::connect(mqtt_options_with_id(broker.addr(), &client_id));
    assert!(!clean.connack.session_present);
    clean.disconnect();
    let mut again = MqttClient::connect(options(&client_id));
    assert!(
        !again.connack.session_present,
        "clean session 1 must discard the old session"
    );
    publisher.publish_acked(&topic, QoS::AtLeastOnce, false, "nobody");
    again.expect_no_publish();
}

#[test]
fn clean_session_reconnect_after_persistent_starts_fresh() {
    // [MQTT-3.1.2-6] Clean session 1 discards any previous session: no session present, and
    // messages queued for the old session are not delivered.
    let broker = start_broker();
    let client_id = unique_id("fresh");
    let topic = unique_topic("fresh");
    let mut persistent = mqtt_options_with_id(broker.addr(), &client_id);
    persistent.set_clean_session(false);
    let mut subscriber = MqttClient::connect(persistent);
    subscriber.subscribe(&topic, QoS::AtLeastOnce);
    subscriber.disconnect();
    let mut publisher = MqttClient::connect(mqtt_options(broker.addr(), "fresh-pub"));
    publisher.publish_acked(&topic, QoS::AtLeastOnce, false, "queued");
    let mut clean = MqttClient::connect(mqtt_options_with_id(broker.addr(), &client_id));
    assert!(!clean.connack.session_present);
    clean.expect_no_publish();
}

#[test]
fn a_new_client_inherits_nothing_from_a_departed_clean_session() {
    // Session state is freed and reused: a clean-session client that left (with a subscription
    // and an unacknowledged QoS 1 message) must leave nothing behind for the next client.
    let broker = start_broker();
    let topic = unique_topic("departed");
    let mut gone = RawClient::connect(broker.addr(), &unique_id("departed"));
    gone.subscribe(1, &[(&topic, 1)]);
    let mut publisher = RawClient::connect(broker.addr(), &unique_id("departed-pub"));
    publisher.publish(&topic, 1, false, 1, b"unacked");
    assert_eq!(gone.read_publish().payload, b"unacked");
    gone.disconnect(); // no PUBACK

    let sentinel = unique_topic("departed-sentinel");
    let mut next = RawClient::connect(broker.addr(), &unique_id("next"));
    next.subscribe(1, &[(&sentinel, 0)]);
    publisher.publish(&topic, 1, false, 2, b"for nobody");
    publisher.publish(&sentinel, 0, false, 0, b"sentinel");
    let publish = next.read_publish();
    assert_eq!(
        publish.topic, sentinel,
        "got the departed client's message: {publish:?}"
    );
    next.expect_silence(QUIET);
}

#[test]
fn persistent_session_survives_take_over() {
    // [MQTT-3.1.4-2] The old connection closes; with clean session 0 the new one continues the
    // same session [MQTT-3.2.2-2].
    let broker = start_broker();
    let client_id = unique_id("takeover-persist");
    let topic = unique_topic("takeover-persist");
    let mut connect = Connect::v311(&client_id);
    connect.clean_session = false;
    let (mut old, present) = RawClient::connect_with(broker.addr(), &connect);
    assert!(!present);
    assert_eq!(old.subscribe(1, &[(&topic, 1)]), vec![1]);
    let (mut new, present) = RawClient::connect_with(broker.addr(), &connect);
    assert!(
        present,
        "the session outlives the connection it was taken from"
    );
    old.expect_closed();
    let mut publisher = RawClient::connect(broker.addr(), &unique_id("takeover-pub"));
    publisher.publish(&topic, 1, false, 1, b"to the new one");
    let publish = new.read_publish();
    assert_eq!(publish.payload, b"to the new one");
    new.send(&puback_bytes(publish.packet_id.unwrap()));
    new.ping();
}

#[test]
fn unacknowledged_qos1_is_resent_with_dup_on_reconnect() {
    // [MQTT-4.4.0-1] On reconnect with clean session 0, unacknowledged PUBLISH packets are
    // resent with their original packet ids; [MQTT-3.3.1-1] DUP is set on a re-delivery.
    let broker = start_broker();
    let client_id = unique_id("resend");
    let topic = unique_topic("resend");
    let mut connect = Connect::v311(&client_id);
    connect.clean_session = false;
    let (mut subscriber, _) = RawClient::connect_with(broker.addr(), &connect);
    assert_eq!(subscriber.subscribe(1, &[(&topic, 1)]), vec![1]);

    let mut publisher = MqttClient::connect(mqtt_options(broker.addr(), "resend-pub"));
    publisher.publish_acked(&topic, QoS::AtLeastOnce, false, "unacked");
    let first = subscriber.read_publish();
    assert_eq!(
        (first.payload.as_slice(), first.qos, first.dup),
        (&b"unacked"[..], 1, false)
    );
    drop(subscriber); // no PUBACK, no DISCONNECT

    let (mut subscriber, session_present) = RawClient::connect_with(broker.addr(), &connect);
    assert!(session_present);
    let again = subscriber.read_publish();
    assert_eq!(again.payload, b"unacked");
    assert_eq!(
        again.packet_id, first.packet_id,
        "same packet id on re-delivery"
    );
    assert!(again.dup, "[MQTT-3.3.1-1] re-delivery sets DUP");
    subscriber.send(&puback_bytes(again.packet_id.unwrap()));

    // Acknowledged now: a third connection gets nothing again.
    subscriber.ping();
    drop(subscriber);
    let (mut subscriber, _) = RawClient::connect_with(broker.addr(), &connect);
    subscriber.expect_silence(QUIET);
    subscriber.disconnect();
}

#[test]
fn resent_and_queued_messages_keep_their_order_on_reconnect() {
    // [MQTT-4.6.0-1] Re-sent PUBLISH packets go in their original order (with DUP), then the
    // messages that were still queued behind the window.
    let mut config = test_config();
    config.limits.inflight_max = 2;
    let broker = TestBroker::start(config);
    let topic = unique_topic("resume-order");
    let mut connect = Connect::v311(&unique_id("resume-order"));
    connect.clean_session = false;
    let (mut subscriber, _) = RawClient::connect_with(broker.addr(), &connect);
    subscriber.subscribe(1, &[(&topic, 1)]);
    let mut publisher = RawClient::connect(broker.addr(), &unique_id("resume-order-pub"));
    for n in 0..5u16 {
        publisher.publish(&topic, 1, false, n + 1, format!("{n}").as_bytes());
    }
    let first = subscriber.read_publish();
    let second = subscriber.read_publish();
    assert_eq!(
        (first.payload.as_slice(), second.payload.as_slice()),
        (&b"0"[..], &b"1"[..])
    );
    subscriber.expect_silence(QUIET); // window of 2 full
    drop(subscriber);

    let (mut subscriber, present) = RawClient::connect_with(broker.addr(), &connect);
    assert!(present);
    for n in 0..5u16 {
        let publish = subscriber.read_publish();
        assert_eq!(publish.payload, format!("{n}").as_bytes(), "message {n}");
        assert_eq!(
            publish.dup,
            n < 2,
            "DUP only on the re-sent ones: {publish:?}"
        );
        if n < 2 {
            let original = if n == 0 { &first } else { &second };
            assert_eq!(publish.packet_id, original.packet_id);
        }
        subscriber.send(&puback_bytes(publish.packet_id.unwrap()));
    }
    subscriber.expect_silence(QUIET);
}

#[test]
fn outbound_qos2_pubrel_is_resent_on_reconnect() {
    // [MQTT-4.4.0-1] After PUBREC the sender owes PUBREL: on reconnect it resends PUBREL, not
    // the PUBLISH (the receiver already has the message).
    let broker = start_broker();
    let topic = unique_topic("pubrel-resend");
    let mut connect = Connect::v311(&unique_id("pubrel-resend"));
    connect.clean_session = false;
    let (mut subscriber, _) = RawClient::connect_with(broker.addr(), &connect);
    assert_eq!(subscriber.subscribe(1, &[(&topic, 2)]), vec![2]);
    let mut publisher = RawClient::connect(broker.addr(), &unique_id("pubrel-pub"));
    publisher.publish(&topic, 2, false, 3, b"exactly once");
    let publish = subscriber.read_publish();
    let id = publish.packet_id.unwrap();
    subscriber.send(&pubrec_bytes(id));
    assert_eq!(subscriber.read_packet().ack_id(PUBREL), id);
    drop(subscriber); // no PUBCOMP

    let (mut subscriber, present) = RawClient::connect_with(broker.addr(), &connect);
    assert!(present);
    let packet = subscriber.read_packet();
    assert_eq!(
        packet.ack_id(PUBREL),
        id,
        "expected the PUBREL again, not the PUBLISH"
    );
    subscriber.send(&pubcomp_bytes(id));
    subscriber.ping();
    subscriber.disconnect();
}

#[test]
fn inbound_qos2_state_survives_reconnect() {
    // A publisher with clean session 0 that got PUBREC, reconnects and sends PUBREL: the
    // message is delivered once, and PUBCOMP comes back [MQTT-4.3.3-2] [MQTT-4.4.0-1].
    let broker = start_broker();
    let topic = unique_topic("qos2-reconnect");
    let mut subscriber = MqttClient::connect(mqtt_options(broker.addr(), "qos2r-sub"));
    subscriber.subscribe(&topic, QoS::ExactlyOnce);
    let mut connect = Connect::v311(&unique_id("qos2r-pub"));
    connect.clean_session = false;
    let (mut publisher, _) = RawClient::connect_with(broker.addr(), &connect);
    publisher.send(&publish_bytes(
        topic.as_bytes(),
        2,
        false,
        false,
        11,
        b"across",
    ));
    assert_eq!(publisher.read_packet().ack_id(PUBREC), 11);
    drop(publisher);

    let (mut publisher, present) = RawClient::connect_with(broker.addr(), &connect);
    assert!(present);
    // A client resending the PUBLISH (DUP) before its PUBREL must not create a second copy.
    publisher.send(&publish_bytes(
        topic.as_bytes(),
        2,
        false,
        true,
        11,
        b"across",
    ));
    assert_eq!(publisher.read_packet().ack_id(PUBREC), 11);
    publisher.send(&pubrel_bytes(11));
    assert_eq!(publisher.read_packet().ack_id(PUBCOMP), 11);
    assert_eq!(subscriber.recv_publish().payload, &b"across"[..]);
    subscriber.expect_no_publish();
}

#[test]
fn qos2_messages_queued_offline_arrive_at_qos2() {
    let broker = start_broker();
    let client_id = unique_id("offline-q2");
    let topic = unique_topic("offline-q2");
    let options = || {
        let mut o = mqtt_options_with_id(broker.addr(), &client_id);
        o.set_clean_session(false);
        o
    };
    let mut subscriber = MqttClient::connect(options());
    subscriber.subscribe(&topic, QoS::ExactlyOnce);
    subscriber.disconnect();
    let mut publisher = MqttClient::connect(mqtt_options(broker.addr(), "offline-q2-pub"));
    publisher.publish_acked(&topic, QoS::ExactlyOnce, false, "two");
    publisher.publish_acked(&topic, QoS::AtLeastOnce, false, "one");
    let mut subscriber = MqttClient::connect(options());
    assert!(subscriber.connack.session_present);
    let first = subscriber.recv_publish();
    assert_eq!(
        (first.payload.as_ref(), first.qos),
        (&b"two"[..], QoS::ExactlyOnce)
    );
    let second = subscriber.recv_publish();
    assert_eq!(
        (second.payload.as_ref(), second.qos),
        (&b"one"[..], QoS::AtLeastOnce)
    );
    subscriber.expect_no_publish();
}

#[test]
fn resumed_session_does_not_resend_retained_messages() {
    // Retained messages answer a SUBSCRIBE; resuming a session subscribes nothing.
    let broker = start_broker();
    let topic = unique_topic("resume-retained");
    let mut publisher = MqttClient::connect(mqtt_options(broker.addr(), "rr-pub"));
    publisher.publish_acked(&topic, QoS::AtLeastOnce, true, "retained");
    let client_id = unique_id("rr-sub");
    let options = || {
        let mut o = mqtt_options_with_id(broker.addr(), &client_id);
        o.set_clean_session(false);
        o
    };
    let mut subscriber = MqttClient::connect(options());
    subscriber.subscribe(&topic, QoS::AtLeastOnce);
    assert!(subscriber.recv_publish().retain);
    subscriber.disconnect();
    let mut subscriber = MqttClient::connect(options());
    assert!(subscriber.connack.session_present);
    subscriber.expect_no_publish();
}

// ---------------------------------------------------------------------------------------------
// Flow control: offline queue, in-flight window, slow consumers
// ---------------------------------------------------------------------------------------------

#[test]
fn offline_queue_is_bounded() {
    let mut config = test_config();
    config.limits.offline_queue_max = 5;
    config.limits.inflight_max = 2;
    let broker = TestBroker::start(config);
    let client_id = unique_id("bounded");
    let topic = unique_topic("bounded");
    let options = || {
        let mut o = mqtt_options_with_id(broker.addr(), &client_id);
        o.set_clean_session(false);
        o
    };
    let mut subscriber = MqttClient::connect(options());
    subscriber.subscribe(&topic, QoS::AtLeastOnce);
    subscriber.disconnect();

    let mut publisher = MqttClient::connect(mqtt_options(broker.addr(), "bounded-pub"));
    for i in 0..20 {
        publisher.publish(&topic, QoS::AtLeastOnce, false, format!("{i}"));
    }
    publisher.wait_acks(QoS::AtLeastOnce, 20);

    let mut subscriber = MqttClient::connect(options());
    assert!(subscriber.connack.session_present);
    let mut received = Vec::new();
    while let Some(publish) = subscriber.try_recv_publish(Duration::from_secs(1)) {
        received.push(String::from_utf8(publish.payload.to_vec()).unwrap());
        assert!(received.len() <= 20, "more than published");
    }
    // Over the bound new messages are dropped (config.rs: offline_queue_max), so the oldest
    // five are kept, in order.
    assert_eq!(
        received,
        vec!["0", "1", "2", "3", "4"],
        "offline_queue_max = 5"
    );
    // Counted when hit (DESIGN.md: every limit is reported when hit).
    let dropped = broker.wait_counter("dropped_queue_full", |s| s.dropped_queue_full, 15);
    if !broker.is_mosquitto() {
        assert_eq!(dropped, 15);
    }
}

#[test]
fn inflight_window_limits_unacknowledged_deliveries() {
    let mut config = test_config();
    config.limits.inflight_max = 3;
    let broker = TestBroker::start(config);
    let topic = unique_topic("window");
    let mut subscriber = RawClient::connect(broker.addr(), &unique_id("window-sub"));
    assert_eq!(subscriber.subscribe(1, &[(&topic, 1)]), vec![1]);

    let mut publisher = MqttClient::connect(mqtt_options(broker.addr(), "window-pub"));
    for i in 0..10 {
        publisher.publish(&topic, QoS::AtLeastOnce, false, format!("{i}"));
    }
    publisher.wait_acks(QoS::AtLeastOnce, 10);

    let mut next = 0;
    let read = |subscriber: &mut RawClient, next: &mut usize, count: usize| -> Vec<u16> {
        let mut ids = Vec::new();
        for _ in 0..count {
            let publish = subscriber.read_publish();
            assert_eq!(publish.payload, format!("{next}").as_bytes(), "order kept");
            *next += 1;
            ids.push(publish.packet_id.unwrap());
        }
        ids
    };
    let window = read(&mut subscriber, &mut next, 3);
    let mut distinct = window.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        3,
        "[MQTT-2.3.1-2] packet ids in flight are distinct: {window:?}"
    );
    subscriber.expect_silence(QUIET); // the window is full

    // One PUBACK frees one place.
    subscriber.send(&puback_bytes(window[0]));
    let more = read(&mut subscriber, &mut next, 1);
    subscriber.expect_silence(QUIET);

    // Acknowledge as we go: the other six flow.
    let mut outstanding: Vec<u16> = window[1..].iter().chain(&more).copied().collect();
    while next < 10 {
        subscriber.send(&puback_bytes(outstanding.remove(0)));
        outstanding.extend(read(&mut subscriber, &mut next, 1));
    }
    for id in outstanding {
        subscriber.send(&puback_bytes(id));
    }
    subscriber.expect_silence(QUIET);
    subscriber.disconnect();
}

#[test]
fn slow_qos0_consumer_does_not_hold_up_others() {
    // A subscriber that never reads: once its outbox passes outbox_bytes_max its QoS 0 messages
    // are dropped; the publisher and a fast subscriber carry on.
    let mut config = test_config();
    config.limits.outbox_bytes_max = 64 * 1024;
    // Without a cap the kernel's send queue autotunes to megabytes in front of the outbox and
    // would take the whole 2 MB itself.
    config.socket_send_buffer_bytes = 16 * 1024;
    let broker = TestBroker::start(config);
    let topic = unique_topic("slow");
    let mut slow = RawClient::open_with_recv_buffer(broker.addr(), 4096);
    slow.send(&Connect::v311(&unique_id("slow")).bytes());
    assert_eq!(slow.read_packet().connack(), (false, 0));
    assert_eq!(slow.subscribe(1, &[(&topic, 0)]), vec![0]);
    let mut fast = MqttClient::connect(mqtt_options(broker.addr(), "fast"));
    fast.subscribe(&topic, QoS::AtLeastOnce);

    let count = 2000;
    let payload = vec![b'p'; 1000];
    let mut publisher = MqttClient::connect(mqtt_options(broker.addr(), "slow-pub"));
    for i in 0..count {
        let mut message = format!("{i:06}").into_bytes();
        message.extend_from_slice(&payload);
        publisher.publish(&topic, QoS::AtLeastOnce, false, message);
    }
    publisher.wait_acks(QoS::AtLeastOnce, count);
    for i in 0..count {
        let publish = fast.recv_publish();
        assert_eq!(&publish.payload[..6], format!("{i:06}").as_bytes());
    }

    // The slow one now reads what it was given: fewer than all, in order, none twice.
    let mut last: Option<u32> = None;
    let mut received = 0;
    while let Some(packet) = slow.try_read_packet(Duration::from_secs(1)) {
        let publish = packet.publish();
        let seq: u32 = std::str::from_utf8(&publish.payload[..6])
            .unwrap()
            .parse()
            .unwrap();
        assert!(last.is_none_or(|l| seq > l), "order: {seq} after {last:?}");
        last = Some(seq);
        received += 1;
    }
    assert!(received > 0, "the slow consumer got nothing at all");
    broker.wait_counter("dropped_outbox_full", |s| s.dropped_outbox_full, 1);
    assert!(
        received < count,
        "all {count} messages (2 MB) were buffered for a consumer that did not read, over a \
         64 KiB outbox cap"
    );
    slow.ping();
}
