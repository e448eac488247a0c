//! MQTT 5.0 reason codes and problem information through the broker (issue 8): Maximum QoS on
//! the way in, PUBREL/PUBREC/PUBCOMP of unknown ids (0x92), a client's failed PUBREC, retained
//! messages over their quota (0x97) and their expiry, an oversized CONNECT (0x95), Request
//! Response Information, Reason Strings and Request Problem Information 0, AUTH, and the
//! client's DISCONNECT reasons.
//!
//! Packets are built and read with rumqttc's own v5 codec (`rumqttc::v5::mqttbytes`), or
//! written byte by byte where no client would send them; mosquitto_pub/sub -V 5 check the
//! request/response flow from outside.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use common::v5::{connect, Frame, V5Client};
use common::*;
use rumqttc::v5::mqttbytes::v5::{
    ConnectProperties, DisconnectReasonCode, Filter, LastWill, Packet, PubAck, PubAckReason,
    PubComp, PubCompReason, PubRec, PubRecReason, PubRel, PubRelReason, Publish, PublishProperties,
    Subscribe,
};
use rumqttc::v5::mqttbytes::QoS;

fn publish(topic: &str, qos: QoS, pkid: u16, retain: bool, payload: &str) -> Publish {
    Publish {
        pkid,
        retain,
        ..Publish::new(topic, qos, payload.to_string(), None)
    }
}

fn no_problem_information() -> ConnectProperties {
    ConnectProperties {
        request_problem_info: Some(0),
        ..ConnectProperties::new()
    }
}

// ---------------------------------------------------------------------------------------------
// Maximum QoS
// ---------------------------------------------------------------------------------------------

#[test]
fn issue8_publish_above_maximum_qos_gets_disconnect_0x9b() {
    // [MQTT-3.2.2-11] CONNACK said Maximum QoS 1: a QoS 2 PUBLISH is refused.
    let broker = broker_with(|c| c.limits.qos_max = 1);
    let mut client = V5Client::connect(broker.addr(), &unique_id("v5-maxqos"));
    client.send(Packet::Publish(publish(
        "max/qos",
        QoS::ExactlyOnce,
        1,
        false,
        "x",
    )));
    let frame = client.read();
    assert_eq!(frame.first_byte, 0xE0, "server DISCONNECT: {frame:?}");
    assert_eq!(frame.reason_code(), 0x9B, "QoS not supported");
    assert!(frame.reason_string().is_some(), "with a Reason String");
    assert!(client.closed());

    // QoS 1 is within it.
    let mut client = V5Client::connect(broker.addr(), &unique_id("v5-maxqos-ok"));
    let ack = client
        .publish(publish("max/qos", QoS::AtLeastOnce, 1, false, "x"))
        .puback();
    assert_eq!(ack.reason, PubAckReason::NoMatchingSubscribers);

    // 3.1.1 keeps its behaviour: QoS 2 is acknowledged.
    let mut v3 = RawClient::connect(broker.addr(), &unique_id("v3-maxqos"));
    v3.publish("max/qos", 2, false, 7, b"x");
    v3.ping();

    // [MQTT-3.2.2-12] A will above it: CONNACK 0x9B.
    let will = LastWill::new("max/will", "w", QoS::ExactlyOnce, false, None);
    let (mut client, frame) = V5Client::connect_with(
        broker.addr(),
        connect(&unique_id("v5-maxqos-will"), true, None),
        Some(will),
    );
    assert_eq!(frame.reason_code(), 0x9B, "{frame:?}");
    assert!(client.closed());
}

// ---------------------------------------------------------------------------------------------
// Acks of unknown packet ids
// ---------------------------------------------------------------------------------------------

#[test]
fn issue8_pubrel_and_pubrec_of_unknown_ids_get_0x92() {
    let broker = start_broker();
    let mut client = V5Client::connect(broker.addr(), &unique_id("v5-unknown-ids"));
    // PUBREL for an id never published: PUBCOMP 0x92 (spec 3.7.2.1).
    client.send(Packet::PubRel(PubRel::new(41, None)));
    let frame = client.read();
    match &frame.packet {
        Some(Packet::PubComp(ack)) => {
            assert_eq!(ack.pkid, 41);
            assert_eq!(ack.reason, PubCompReason::PacketIdentifierNotFound);
        }
        other => panic!("PUBCOMP expected: {other:?}"),
    }
    assert_publish_ack_is_plain(&frame);
    // PUBREC for an id we never sent: PUBREL 0x92 (spec 3.6.2.1).
    client.send(Packet::PubRec(PubRec::new(42, None)));
    match client.read().packet {
        Some(Packet::PubRel(ack)) => {
            assert_eq!(ack.pkid, 42);
            assert_eq!(ack.reason, PubRelReason::PacketIdentifierNotFound);
        }
        other => panic!("PUBREL expected: {other:?}"),
    }
    // PUBACK and PUBCOMP of unknown ids are ignored, and the connection lives on.
    client.send(Packet::PubAck(PubAck::new(43, None)));
    client.send(Packet::PubComp(PubComp::new(44, None)));
    client.assert_alive();

    // A PUBREL that completes a real flow gets PUBCOMP 0x00, a second one 0x92.
    client.send(Packet::Publish(publish(
        "unknown/ids",
        QoS::ExactlyOnce,
        5,
        false,
        "x",
    )));
    assert_eq!(client.read().first_byte, 0x50, "PUBREC");
    for expected in [
        PubCompReason::Success,
        PubCompReason::PacketIdentifierNotFound,
    ] {
        client.send(Packet::PubRel(PubRel::new(5, None)));
        match client.read().packet {
            Some(Packet::PubComp(ack)) => assert_eq!(ack.reason, expected),
            other => panic!("PUBCOMP expected: {other:?}"),
        }
    }

    // 3.1.1: plain PUBCOMP / PUBREL, as before.
    let mut v3 = RawClient::connect(broker.addr(), &unique_id("v3-unknown-ids"));
    v3.send(&pubrel_bytes(41));
    let ack = v3.read_packet();
    assert_eq!((ack.kind(), ack.ack_id(PUBCOMP)), (PUBCOMP, 41));
    v3.send(&pubrec_bytes(42));
    let ack = v3.read_packet();
    assert_eq!((ack.kind(), ack.ack_id(PUBREL)), (PUBREL, 42));
    v3.ping();
}

#[test]
fn issue8_a_failed_pubrec_ends_the_flow_without_pubrel() {
    // Spec 4.3.3: PUBREL only answers a PUBREC under 0x80; one of 0x80 or above frees the id.
    let broker = start_broker();
    let topic = unique_topic("v5/pubrec-refused");
    let properties = ConnectProperties {
        receive_maximum: Some(1),
        ..ConnectProperties::new()
    };
    let mut subscriber = V5Client::connect_props(broker.addr(), &unique_id("v5-rec"), properties);
    subscriber.subscribe(&topic, QoS::ExactlyOnce);
    let mut publisher = V5Client::connect(broker.addr(), &unique_id("v5-rec-pub"));
    let frame = publisher.publish(publish(&topic, QoS::ExactlyOnce, 1, false, "first"));
    assert_eq!(frame.first_byte, 0x50, "PUBREC");
    publisher.send(Packet::PubRel(PubRel::new(1, None)));
    assert_eq!(publisher.read().first_byte, 0x70, "PUBCOMP");
    let frame = publisher.publish(publish(&topic, QoS::AtLeastOnce, 2, false, "second"));
    assert_eq!(frame.first_byte, 0x40, "PUBACK");
    let first = subscriber.read_publish();
    assert_eq!(first.payload, "first");
    subscriber.send(Packet::PubRec(PubRec {
        reason: PubRecReason::UnspecifiedError,
        ..PubRec::new(first.pkid, None)
    }));
    // No PUBREL: the next message comes instead (Receive Maximum 1: the window opened).
    let next = subscriber.read_publish();
    assert_eq!(next.payload, "second", "the refused flow ended");
    assert_eq!(next.qos, QoS::AtLeastOnce);
}

#[test]
fn a_publish_to_sys_topics_gets_0x87_and_reaches_nobody() {
    // Spec 4.7.2: `$SYS/` belongs to the server; a client's message there is dropped, and an
    // MQTT 5 publisher is told it was not authorized (mosquitto's 03-publish-dollar-v5), by
    // PUBACK or by a PUBREC that ends the flow (spec 4.3.3).
    let broker = start_broker();
    let topic = format!("$SYS/{}", unique_topic("client"));
    let mut watcher = V5Client::connect(broker.addr(), &unique_id("v5-sys-watch"));
    watcher.subscribe(&topic, QoS::AtLeastOnce);
    let mut publisher = V5Client::connect(broker.addr(), &unique_id("v5-sys-pub"));
    let frame = publisher.publish(publish(&topic, QoS::AtLeastOnce, 1, true, "forged"));
    assert_eq!(
        (frame.first_byte, frame.reason_code()),
        (0x40, 0x87),
        "{frame:?}"
    );
    let frame = publisher.publish(publish(&topic, QoS::ExactlyOnce, 2, false, "forged"));
    assert_eq!(
        (frame.first_byte, frame.reason_code()),
        (0x50, 0x87),
        "{frame:?}"
    );
    publisher.send(Packet::Publish(publish(
        &topic,
        QoS::AtMostOnce,
        0,
        false,
        "forged",
    )));
    let frame = publisher.publish(publish("v5/sys/after", QoS::AtLeastOnce, 3, false, "ok"));
    assert_eq!(frame.first_byte, 0x40, "still connected: {frame:?}");
    assert!(
        watcher.try_read(Duration::from_millis(300)).is_none(),
        "nothing reached the $SYS subscriber"
    );
    broker.wait_counter("dropped_sys_publish", |s| s.dropped_sys_publish, 3);
}

// ---------------------------------------------------------------------------------------------
// Retained quota and expiry
// ---------------------------------------------------------------------------------------------

/// The retained messages a fresh subscription to `filter` gets, sorted, by a client homed on
/// `shard`.
fn retained_seen(addr: SocketAddr, shard: usize, shards: usize, filter: &str) -> Vec<String> {
    let mut reader = V5Client::connect(addr, &unique_id_on(shard, shards, "reader"));
    reader.subscribe(filter, QoS::AtMostOnce);
    let mut seen = Vec::new();
    while let Some(frame) = reader.try_read(QUIET) {
        if let Some(Packet::Publish(p)) = frame.packet {
            assert!(p.retain);
            seen.push(String::from_utf8_lossy(&p.topic).into_owned());
        }
    }
    seen.sort();
    seen
}

/// [MQTT-3.3.1-5] A retained message over `retained_max` is refused with 0x97 at QoS 1 and 2,
/// and nothing of it happens (not stored, not delivered); at QoS 0 it is delivered but not
/// stored, as under 3.1.1. Every shard holds the same set.
fn check_retained_quota(shards: usize) {
    let broker = broker_with(|c| {
        c.shards = shards;
        c.limits.retained_max = 1;
    });
    let addr = broker.addr();
    let prefix = unique_topic("v5/quota");
    let topic = |n: usize| format!("{prefix}/{n}");
    let mut live = V5Client::connect(addr, &unique_id_on(shards - 1, shards, "quota-live"));
    live.subscribe(&format!("{prefix}/#"), QoS::AtLeastOnce);
    let mut publisher = V5Client::connect(addr, &unique_id_on(0, shards, "quota-pub"));
    let ack = publisher
        .publish(publish(&topic(1), QoS::AtLeastOnce, 1, true, "one"))
        .puback();
    assert_eq!(ack.reason, PubAckReason::Success);
    assert_eq!(live.read_publish().payload, "one");

    let frame = publisher.publish(publish(&topic(2), QoS::AtLeastOnce, 2, true, "two"));
    assert_eq!(frame.puback().reason, PubAckReason::QuotaExceeded);
    assert_publish_ack_is_plain(&frame);
    match publisher
        .publish(publish(&topic(3), QoS::ExactlyOnce, 3, true, "three"))
        .packet
    {
        Some(Packet::PubRec(rec)) => assert_eq!(rec.reason, PubRecReason::QuotaExceeded),
        other => panic!("PUBREC expected: {other:?}"),
    }
    // A refused QoS 2 id is not kept: the same id starts a new flow at once.
    let frame = publisher.publish(publish(&topic(1), QoS::ExactlyOnce, 3, true, "one again"));
    match frame.packet {
        Some(Packet::PubRec(rec)) => assert_eq!(rec.reason, PubRecReason::Success),
        other => panic!("PUBREC expected: {other:?}"),
    }
    publisher.send(Packet::PubRel(PubRel::new(3, None)));
    assert_eq!(publisher.read().first_byte, 0x70, "PUBCOMP");
    publisher.send(Packet::Publish(publish(
        &topic(4),
        QoS::AtMostOnce,
        0,
        true,
        "four",
    )));
    // The refused ones never reached the subscriber; the replacement and QoS 0 did.
    assert_eq!(live.read_publish().payload, "one again");
    assert_eq!(live.read_publish().payload, "four", "QoS 0: delivered");
    assert!(live.try_read(QUIET).is_none());
    for shard in 0..shards {
        assert_eq!(
            retained_seen(addr, shard, shards, &format!("{prefix}/#")),
            [topic(1)],
            "shard {shard}"
        );
    }
    broker.wait_counter("retained_refused", |s| s.retained_refused, 3);
}

#[test]
fn issue8_retained_over_quota_gets_0x97_one_shard() {
    check_retained_quota(1);
}

#[test]
fn issue8_retained_over_quota_gets_0x97_across_shards() {
    check_retained_quota(4);
}

fn with_expiry_interval(secs: u32) -> PublishProperties {
    PublishProperties {
        message_expiry_interval: Some(secs),
        ..PublishProperties::default()
    }
}

/// [MQTT-3.3.2-5] An expired retained message is deleted, not just skipped: it no longer
/// counts against `retained_max`, on any shard.
fn check_expired_retained_stop_counting(shards: usize) {
    let broker = broker_with(|c| {
        c.shards = shards;
        c.limits.retained_max = 1;
    });
    let addr = broker.addr();
    let prefix = unique_topic("v5/expiring");
    let topic = |n: usize| format!("{prefix}/{n}");
    let mut publisher = V5Client::connect(addr, &unique_id_on(0, shards, "expiring-pub"));
    let short = Publish {
        properties: Some(with_expiry_interval(1)),
        ..publish(&topic(1), QoS::AtLeastOnce, 1, true, "short")
    };
    assert_eq!(
        publisher.publish(short).puback().reason,
        PubAckReason::NoMatchingSubscribers
    );
    let frame = publisher.publish(publish(&topic(2), QoS::AtLeastOnce, 2, true, "two"));
    assert_eq!(frame.puback().reason, PubAckReason::QuotaExceeded, "full");
    // Past its expiry (and a timer tick), the place is free again, no subscription needed.
    std::thread::sleep(Duration::from_millis(2_500));
    let frame = publisher.publish(publish(&topic(2), QoS::AtLeastOnce, 3, true, "two"));
    assert_eq!(
        frame.puback().reason,
        PubAckReason::NoMatchingSubscribers,
        "the expired message was deleted"
    );
    for shard in 0..shards {
        assert_eq!(
            retained_seen(addr, shard, shards, &format!("{prefix}/#")),
            [topic(2)],
            "shard {shard}"
        );
    }
}

#[test]
fn issue8_expired_retained_messages_stop_counting_one_shard() {
    check_expired_retained_stop_counting(1);
}

#[test]
fn issue8_expired_retained_messages_stop_counting_across_shards() {
    check_expired_retained_stop_counting(4);
}

#[test]
fn issue8_retained_properties_count_in_retained_bytes_max() {
    let prefix = unique_topic("v5/rbytes");
    let topic = format!("{prefix}/1");
    // Room for the topic and a 10-byte payload, and a little more: not for 100 bytes of
    // user properties.
    let room = topic.len() as u64 + 10 + 20;
    let broker = broker_with(|c| c.limits.retained_bytes_max = room);
    let mut publisher = V5Client::connect(broker.addr(), &unique_id("v5-rbytes"));
    let heavy = Publish {
        properties: Some(PublishProperties {
            user_properties: vec![("k".into(), "v".repeat(100))],
            ..PublishProperties::default()
        }),
        ..publish(&topic, QoS::AtLeastOnce, 1, true, "0123456789")
    };
    assert_eq!(
        publisher.publish(heavy).puback().reason,
        PubAckReason::QuotaExceeded
    );
    let light = publish(&topic, QoS::AtLeastOnce, 2, true, "0123456789");
    assert_eq!(
        publisher.publish(light).puback().reason,
        PubAckReason::NoMatchingSubscribers
    );
    assert_eq!(retained_seen(broker.addr(), 0, 1, &topic), [topic]);
}

// ---------------------------------------------------------------------------------------------
// CONNECT too large
// ---------------------------------------------------------------------------------------------

/// A v5 CONNECT with a client id of `id_len` bytes, in bytes.
fn large_v5_connect(id_len: usize) -> Vec<u8> {
    let connect = connect(&"c".repeat(id_len), true, None);
    let mut out = BytesMut::new();
    Packet::Connect(connect, None, None)
        .write(&mut out, None)
        .expect("rumqttc encodes it");
    out.to_vec()
}

#[test]
fn issue8_oversized_v5_connect_gets_connack_0x95() {
    let broker = broker_with(|c| c.limits.connect_packet_size_max = 1024);
    // All at once: the first read shows level 5.
    let mut client = V5Client::open(broker.addr());
    client.send_bytes(&large_v5_connect(4000));
    let frame = client.read();
    assert_eq!(frame.first_byte, 0x20, "CONNACK: {frame:?}");
    assert_eq!(frame.reason_code(), 0x95, "Packet too large");
    assert_eq!(frame.reason_string().as_deref(), Some("packet too large"));
    assert!(client.closed());

    // A few bytes first (fixed header only): the broker waits for the level, not the packet.
    let bytes = large_v5_connect(4000);
    let mut client = V5Client::open(broker.addr());
    client.send_bytes(&bytes[..4]);
    assert!(client.try_read(QUIET).is_none(), "nothing to say yet");
    client.send_bytes(&bytes[4..40]);
    let frame = client.read();
    assert_eq!(frame.reason_code(), 0x95, "{frame:?}");
    assert!(client.closed());

    // 3.1.1 closes silently, as before.
    let big = common::Connect::v311(&"c".repeat(4000));
    let mut v3 = RawClient::open(broker.addr());
    v3.send_ignoring_errors(&big.bytes());
    v3.expect_closed_silently();
    broker.wait_counter("connect_too_large", |s| s.connect_too_large_count, 3);
}

// ---------------------------------------------------------------------------------------------
// Request Response Information, and Paho's request/response flow
// ---------------------------------------------------------------------------------------------

#[test]
fn issue8_request_response_information() {
    let broker = start_broker();
    let id = unique_id("v5-rri");
    let properties = ConnectProperties {
        request_response_info: Some(1),
        ..ConnectProperties::new()
    };
    let (_client, frame) =
        V5Client::connect_with(broker.addr(), connect(&id, true, Some(properties)), None);
    let p = frame.connack().properties.expect("properties");
    assert_eq!(
        p.response_information.as_deref(),
        Some(format!("response/{id}").as_str()),
        "spec 3.2.2.3.15"
    );
    // Not asked (absent, or 0): none.
    for request in [None, Some(0)] {
        let properties = ConnectProperties {
            request_response_info: request,
            ..ConnectProperties::new()
        };
        let (_client, frame) = V5Client::connect_with(
            broker.addr(),
            connect(&unique_id("v5-rri-no"), true, Some(properties)),
            None,
        );
        let p = frame.connack().properties.expect("properties");
        assert_eq!(p.response_information, None, "{request:?}");
    }
}

/// Paho's `test_request_response` (interoperability/client_test5.py), on 1 and 4 shards: both
/// clients subscribe with No Local; the requester's Response Topic and Correlation Data reach
/// the responder, whose response, sent with the properties it received, reaches only the
/// requester.
fn check_request_response(shards: usize) {
    let broker = broker_with(|c| c.shards = shards);
    let addr = broker.addr();
    let topic = unique_topic("v5/request");
    let no_local = |filter: &str| Subscribe {
        pkid: 1,
        ..Subscribe::new(
            Filter {
                nolocal: true,
                ..Filter::new(filter, QoS::ExactlyOnce)
            },
            None,
        )
    };
    let mut requester = V5Client::connect(addr, &unique_id_on(0, shards, "requester"));
    let mut responder = V5Client::connect(addr, &unique_id_on(shards - 1, shards, "responder"));
    for client in [&mut requester, &mut responder] {
        client.send(Packet::Subscribe(no_local(&topic)));
        assert_eq!(client.read().first_byte, 0x90, "SUBACK");
    }
    let request = Publish {
        properties: Some(PublishProperties {
            response_topic: Some(topic.clone()),
            correlation_data: Some(bytes::Bytes::from_static(b"334")),
            ..PublishProperties::default()
        }),
        ..publish(&topic, QoS::AtLeastOnce, 1, false, "request")
    };
    assert_eq!(
        requester.publish(request).puback().reason,
        PubAckReason::Success
    );
    let received = responder.read_publish();
    assert_eq!(received.payload, "request");
    let properties = received.properties.expect("properties");
    assert_eq!(properties.response_topic.as_deref(), Some(topic.as_str()));
    assert_eq!(properties.correlation_data.as_deref(), Some(&b"334"[..]));
    responder.send(Packet::PubAck(PubAck::new(received.pkid, None)));
    let response = Publish {
        properties: Some(properties.clone()),
        ..publish(&topic, QoS::AtLeastOnce, 1, false, "response")
    };
    let frame = responder.publish(response);
    assert_eq!(frame.puback().reason, PubAckReason::Success);
    let answer = requester.read_publish();
    assert_eq!(answer.payload, "response");
    assert_eq!(
        answer
            .properties
            .and_then(|p| p.correlation_data)
            .as_deref(),
        Some(&b"334"[..])
    );
    assert!(responder.try_read(QUIET).is_none(), "No Local");
}

#[test]
fn issue8_paho_request_response_one_shard() {
    check_request_response(1);
}

#[test]
fn issue8_paho_request_response_across_shards() {
    check_request_response(4);
}

#[test]
fn issue8_mosquitto_response_topic_and_correlation_data() {
    let broker = start_broker();
    let topic = unique_topic("v5/mosq-request");
    // The later -F replaces the harness's: topic, Response Topic, Correlation Data.
    let sub = mosquitto_sub(
        broker.port(),
        &topic,
        1,
        1,
        &["-V", "5", "-F", "RR|%t|%R|%D"],
    );
    let published = mosquitto_pub(
        broker.port(),
        &[
            "-V",
            "5",
            "-t",
            &topic,
            "-q",
            "1",
            "-m",
            "request",
            "-D",
            "publish",
            "response-topic",
            "reply/to/me",
            "-D",
            "publish",
            "correlation-data",
            "334",
        ],
    );
    assert!(published.status.success(), "{published:?}");
    let finished = sub.finish();
    let expected = format!("RR|{topic}|reply/to/me|334");
    assert!(
        finished.stdout.contains(&expected),
        "{expected} in {finished:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Reason Strings and Request Problem Information
// ---------------------------------------------------------------------------------------------

/// A publish ack refusing something is its 4 bytes (packet id, reason code, an empty property
/// length) and no Reason String: Eclipse Paho's reference client codec refuses a PUBACK,
/// PUBREC, PUBREL or PUBCOMP longer than that (the code says what went wrong).
fn assert_publish_ack_is_plain(frame: &Frame) {
    assert!(frame.body.len() <= 4, "a plain publish ack: {frame:?}");
    assert_eq!(frame.reason_string(), None, "{frame:?}");
}

#[test]
fn issue8_request_problem_information_zero_silences_suback_reason_strings() {
    // [MQTT-3.1.2-29] With 0: no Reason String on anything but PUBLISH, CONNACK, DISCONNECT.
    let broker = broker_with(|c| {
        c.limits.retained_max = 0;
        c.limits.subscriptions_per_client_max = 1;
    });
    let topic = unique_topic("v5/problem");
    let mut told = V5Client::connect(broker.addr(), &unique_id("v5-told"));
    told.subscribe(&format!("{topic}/first"), QoS::AtLeastOnce);
    let frame = told.subscribe_frame(vec![Filter::new(&topic, QoS::AtLeastOnce)], None);
    assert_eq!(
        frame.reason_codes(),
        [0x97],
        "over subscriptions_per_client_max"
    );
    assert_eq!(frame.reason_string().as_deref(), Some("quota exceeded"));
    let frame = told.publish(publish(&topic, QoS::AtLeastOnce, 1, true, "r"));
    assert_eq!(frame.puback().reason, PubAckReason::QuotaExceeded);
    assert_publish_ack_is_plain(&frame);

    let mut quiet = V5Client::connect_props(
        broker.addr(),
        &unique_id("v5-quiet"),
        no_problem_information(),
    );
    quiet.subscribe(&format!("{topic}/first"), QoS::AtLeastOnce);
    let frame = quiet.subscribe_frame(vec![Filter::new(&topic, QoS::AtLeastOnce)], None);
    assert_eq!(frame.reason_codes(), [0x97]);
    assert_eq!(frame.reason_string(), None, "{frame:?}");
    let frame = quiet.publish(publish(&topic, QoS::AtLeastOnce, 1, true, "r"));
    assert_eq!(frame.puback().reason, PubAckReason::QuotaExceeded);
    assert_publish_ack_is_plain(&frame);
    quiet.send(Packet::PubRel(PubRel::new(9, None)));
    let frame = quiet.read();
    assert_eq!(frame.first_byte, 0x70);
    assert_publish_ack_is_plain(&frame);
    // A DISCONNECT still carries its Reason String.
    quiet.send_bytes(&[0x36, 0x05, 0x00, 0x01, b't', 0x00, 0x01]);
    let frame = quiet.read();
    assert_eq!(frame.reason_code(), 0x81);
    assert_eq!(frame.reason_string().as_deref(), Some("malformed packet"));
}

#[test]
fn issue8_server_disconnects_carry_reason_strings() {
    let broker = broker_with(|c| {
        c.limits.packet_size_max = 1024;
        c.limits.topic_alias_max = 4;
    });
    let mut client = V5Client::connect(broker.addr(), &unique_id("v5-reason-large"));
    client.send(Packet::Publish(Publish::new(
        "big",
        QoS::AtMostOnce,
        vec![0u8; 4096],
        None,
    )));
    let frame = client.read();
    assert_eq!(frame.reason_code(), 0x95);
    assert_eq!(frame.reason_string().as_deref(), Some("packet too large"));

    let mut client = V5Client::connect(broker.addr(), &unique_id("v5-reason-alias"));
    let aliased = Publish {
        properties: Some(PublishProperties {
            // Over the Topic Alias Maximum of 4 [MQTT-3.3.2-9].
            topic_alias: Some(5),
            ..PublishProperties::default()
        }),
        ..publish("alias", QoS::AtMostOnce, 0, false, "x")
    };
    client.send(Packet::Publish(aliased));
    let frame = client.read();
    assert_eq!(frame.reason_code(), 0x94);
    assert_eq!(
        frame.disconnect().reason_code,
        DisconnectReasonCode::TopicAliasInvalid
    );
    assert_eq!(
        frame.reason_string().as_deref(),
        Some("topic alias out of range")
    );
}

// ---------------------------------------------------------------------------------------------
// AUTH
// ---------------------------------------------------------------------------------------------

#[test]
fn issue8_enhanced_authentication() {
    let broker = start_broker();
    // [MQTT-4.12.0-1] No method is supported: 0x8C, with its Reason String.
    let properties = ConnectProperties {
        authentication_method: Some("SCRAM-SHA-256".into()),
        authentication_data: Some(bytes::Bytes::from_static(b"n,,n=user,r=nonce")),
        ..ConnectProperties::new()
    };
    let (mut client, frame) = V5Client::connect_with(
        broker.addr(),
        connect(&unique_id("v5-scram"), true, Some(properties)),
        None,
    );
    assert_eq!(frame.reason_code(), 0x8C, "{frame:?}");
    assert_eq!(
        frame.reason_string().as_deref(),
        Some("authentication method not supported")
    );
    assert!(client.closed());

    // Spec 4.12: AUTH from a client that did not authenticate with a method at CONNECT is a
    // protocol error, whatever it names.
    // (rumqttc's v5 module does not export its AUTH properties: the bytes by hand.)
    let reauthenticate = |method: Option<&str>| -> Vec<u8> {
        let mut properties = Vec::new();
        if let Some(method) = method {
            properties.push(0x15);
            put_string(method.as_bytes(), &mut properties);
        }
        let mut body = vec![0x19, properties.len() as u8];
        body.extend_from_slice(&properties);
        packet(0xF0, &body)
    };
    for method in [None, Some("SCRAM-SHA-256")] {
        let mut client = V5Client::connect(broker.addr(), &unique_id("v5-auth-stray"));
        client.send_bytes(&reauthenticate(method));
        let frame = client.read();
        assert_eq!(frame.first_byte, 0xE0, "DISCONNECT: {frame:?}");
        assert_eq!(frame.reason_code(), 0x82, "Protocol Error");
        assert!(client.closed());
    }
}

// ---------------------------------------------------------------------------------------------
// Client DISCONNECT reasons
// ---------------------------------------------------------------------------------------------

#[test]
fn issue8_every_client_disconnect_reason_is_accepted() {
    // Spec 3.14.2.1: the codes a client may send. The will goes unless the reason is 0x00
    // [MQTT-3.1.2-8] [MQTT-3.14.4-3].
    let broker = start_broker();
    let topic = unique_topic("v5/disconnect-will");
    let mut watcher = V5Client::connect(broker.addr(), &unique_id("v5-will-watch"));
    watcher.subscribe(&topic, QoS::AtMostOnce);
    let codes: [u8; 15] = [
        0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x90, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x87,
    ];
    for code in codes {
        let will = LastWill::new(&topic, format!("{code:#04x}"), QoS::AtMostOnce, false, None);
        let (mut client, frame) = V5Client::connect_with(
            broker.addr(),
            connect(&unique_id("v5-disc"), true, None),
            Some(will),
        );
        assert_eq!(frame.reason_code(), 0);
        client.send_bytes(&[0xE0, 0x02, code, 0x00]);
        assert!(
            client.try_read(WAIT).is_none(),
            "reason {code:#04x}: closed without a DISCONNECT back"
        );
        if code == 0x00 {
            assert!(watcher.try_read(QUIET).is_none(), "0x00 discards the will");
        } else {
            assert_eq!(watcher.read_publish().payload, format!("{code:#04x}"));
        }
    }
}

#[test]
fn issue8_disconnect_with_an_invalid_reason_is_malformed() {
    let broker = start_broker();
    for code in [0x01u8, 0x05, 0x8C, 0xFF] {
        let mut client = V5Client::connect(broker.addr(), &unique_id("v5-disc-bad"));
        client.send_bytes(&[0xE0, 0x01, code]);
        let frame = client.read();
        assert_eq!(frame.first_byte, 0xE0, "{frame:?}");
        assert_eq!(
            frame.reason_code(),
            0x81,
            "reason {code:#04x}: Malformed Packet"
        );
        assert!(client.closed());
    }
}
