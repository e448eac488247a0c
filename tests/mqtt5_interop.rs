//! MQTT 5.0 interoperability (issue 8): what Eclipse Paho's interoperability suite
//! (`client_test5.py`) showed ringmq getting wrong, each checked here through raw bytes on 1
//! and 4 shards, so it stays fixed without the suite:
//! - a server DISCONNECT must reach a client that is still sending (Paho's
//!   `test_flow_control2`: the client answers PUBRECs while the broker closes on its excess
//!   over Receive Maximum);
//! - a Will Delay Interval and a Session Expiry Interval are never cut short (Paho's
//!   `test_will_delay` saw a will 3 s early by up to a second).
//!
//! Packets are written byte by byte here, through the v5 test client (tests/common/v5.rs)
//! whose reads tell a reset from an orderly end, which the MQTT client libraries hide.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::v5::{Frame, Received, V5Client};
use common::*;

/// A Four Byte Integer property.
fn u32_property(id: u8, value: u32, out: &mut Vec<u8>) {
    out.push(id);
    out.extend_from_slice(&value.to_be_bytes());
}

const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
const WILL_DELAY_INTERVAL: u8 = 0x18;

/// An MQTT 5 CONNECT: `properties` and, with a will, `will_properties`, already encoded
/// (each under 128 bytes).
fn connect_v5(
    client_id: &str,
    clean_start: bool,
    properties: &[u8],
    will: Option<(&str, &[u8])>,
) -> Vec<u8> {
    let mut body = Vec::new();
    put_string(b"MQTT", &mut body);
    body.push(5);
    let mut flags = if clean_start { 0x02 } else { 0 };
    if will.is_some() {
        flags |= 0x04; // will, QoS 0
    }
    body.push(flags);
    body.extend_from_slice(&60u16.to_be_bytes());
    body.push(properties.len() as u8);
    body.extend_from_slice(properties);
    put_string(client_id.as_bytes(), &mut body);
    if let Some((topic, will_properties)) = will {
        body.push(will_properties.len() as u8);
        body.extend_from_slice(will_properties);
        put_string(topic.as_bytes(), &mut body);
        put_string(b"gone", &mut body);
    }
    packet(0x10, &body)
}

/// A v5 QoS 0..2 PUBLISH without properties.
fn publish_v5(topic: &str, qos: u8, packet_id: u16, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    put_string(topic.as_bytes(), &mut body);
    if qos > 0 {
        body.extend_from_slice(&packet_id.to_be_bytes());
    }
    body.push(0); // no properties
    body.extend_from_slice(payload);
    packet(0x30 | (qos << 1), &body)
}

/// A v5 SUBSCRIBE of one filter at QoS 0, without properties.
fn subscribe_v5(packet_id: u16, filter: &str) -> Vec<u8> {
    let mut body = packet_id.to_be_bytes().to_vec();
    body.push(0);
    put_string(filter.as_bytes(), &mut body);
    body.push(0);
    packet(0x82, &body)
}

/// Connects with `connect` (bytes), expecting success; returns the client and the
/// session-present flag.
fn connect5(addr: SocketAddr, connect: &[u8]) -> (V5Client, bool) {
    let mut client = V5Client::open(addr);
    client.send_bytes(connect);
    let connack = client.read();
    assert_eq!(connack.first_byte, 0x20, "CONNACK expected: {connack:?}");
    assert_eq!(connack.body[1], 0, "CONNACK refused: {connack:?}");
    (client, connack.body[0] & 1 == 1)
}

/// The topic of a v5 PUBLISH.
fn publish_topic(packet: &Frame) -> String {
    assert_eq!(
        packet.first_byte & 0xF0,
        0x30,
        "PUBLISH expected: {packet:?}"
    );
    let len = usize::from(u16::from_be_bytes([packet.body[0], packet.body[1]]));
    String::from_utf8(packet.body[2..2 + len].to_vec()).expect("UTF-8 topic")
}

// ---------------------------------------------------------------------------------------------
// A server DISCONNECT reaches a client that is still sending
// ---------------------------------------------------------------------------------------------

/// [MQTT-3.3.4-9] over Receive Maximum: DISCONNECT 0x93, and [MQTT-4.13.1-1] the client must
/// get to read it. Like Paho's `test_flow_control2`, the client sends one QoS 2 PUBLISH more
/// than the broker's Receive Maximum in one burst, then reads the PUBRECs, answering each
/// with a PUBREL, until the DISCONNECT. The broker must not close in a way that resets the
/// connection under it (which refuses the client's writes and may discard the DISCONNECT):
/// it shuts its side after the DISCONNECT and drops what still arrives until the client
/// closes.
fn check_disconnect_reaches_a_client_still_sending(shards: usize) {
    let receive_maximum = 8u16;
    let broker = broker_with(|c| {
        c.shards = shards;
        c.limits.incoming_inflight_max = receive_maximum;
    });
    let id = unique_id_on(shards - 1, shards, "interop-flow");
    let (mut client, _) = connect5(broker.addr(), &connect_v5(&id, true, &[], None));
    let mut burst = Vec::new();
    for packet_id in 1..=receive_maximum + 1 {
        burst.extend_from_slice(&publish_v5("interop/flow", 2, packet_id, b"m"));
    }
    client.try_send_bytes(&burst).expect("the burst is written");
    let mut pubrecs = 0;
    loop {
        match client.read_within(WAIT) {
            Received::Frame(p) if p.first_byte == 0x50 => {
                pubrecs += 1;
                let packet_id = u16::from_be_bytes([p.body[0], p.body[1]]);
                // Time for a reset to come back, as it would to a slower client.
                std::thread::sleep(Duration::from_millis(20));
                if let Err(e) = client.try_send_bytes(&pubrel_bytes(packet_id)) {
                    panic!("PUBREL {packet_id} refused ({e}) before the DISCONNECT was read");
                }
            }
            Received::Frame(p) if p.first_byte == 0xE0 => {
                assert_eq!(p.body.first(), Some(&0x93), "DISCONNECT reason: {p:?}");
                break;
            }
            other => panic!("after {pubrecs} PUBRECs, before the DISCONNECT: {other:?}"),
        }
    }
    assert_eq!(
        pubrecs,
        usize::from(receive_maximum),
        "one PUBREC per PUBLISH within the window"
    );
    // Then the orderly end: a FIN after the DISCONNECT, not a reset.
    assert_eq!(client.read_within(WAIT), Received::End);
    assert_broker_still_serves(broker.addr());
}

#[test]
fn interop_disconnect_0x93_reaches_a_client_still_sending_mqtt_4_13_1_1() {
    check_disconnect_reaches_a_client_still_sending(1);
}

#[test]
fn interop_disconnect_0x93_reaches_a_client_still_sending_across_shards() {
    check_disconnect_reaches_a_client_still_sending(4);
}

/// A client that lingers after the server's DISCONNECT (it neither closes nor reads) does
/// not hold its slot: the broker cuts it a few seconds later.
#[test]
fn interop_a_client_that_never_closes_after_a_server_disconnect_is_cut() {
    let broker = broker_with(|c| c.limits.incoming_inflight_max = 1);
    let id = unique_id("interop-linger");
    let (mut client, _) = connect5(broker.addr(), &connect_v5(&id, true, &[], None));
    let mut burst = publish_v5("interop/linger", 2, 1, b"m");
    burst.extend_from_slice(&publish_v5("interop/linger", 2, 2, b"m"));
    client.try_send_bytes(&burst).expect("the burst is written");
    let started = Instant::now();
    // It reads the PUBREC and the DISCONNECT, answers nothing and keeps the socket open.
    let mut packets = Vec::new();
    let end = loop {
        match client.read_within(WAIT) {
            Received::Frame(p) => packets.push(p.first_byte),
            other => break other,
        }
    };
    assert_eq!(packets, vec![0x50, 0xE0], "PUBREC then DISCONNECT");
    assert_eq!(end, Received::End);
    broker.wait_counter("connection released", |s| s.connections_closed, 1);
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "released after {:?}",
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// Will Delay Interval and Session Expiry Interval are never cut short
// ---------------------------------------------------------------------------------------------

/// Clients dropped a third of a second apart, so that one of them lands wherever the shard's
/// one-second timer stands.
const STAGGER: Duration = Duration::from_millis(333);

/// [MQTT-3.1.3-9] The will waits out its Will Delay Interval (2 s here, within a session
/// expiry of 60 s): never sent before, and sent within the timer's granularity after. The
/// subscriber is homed on another shard than the clients when there are several.
fn check_will_delay_is_never_cut_short(shards: usize) {
    let broker = broker_with(|c| c.shards = shards);
    let prefix = unique_topic("interop/will");
    let sub_id = unique_id_on(0, shards, "interop-will-sub");
    let (mut sub, _) = connect5(broker.addr(), &connect_v5(&sub_id, true, &[], None));
    sub.send_bytes(&subscribe_v5(1, &format!("{prefix}/+")));
    assert_eq!(sub.read().first_byte, 0x90, "SUBACK");
    let mut properties = Vec::new();
    u32_property(SESSION_EXPIRY_INTERVAL, 60, &mut properties);
    let mut will_properties = Vec::new();
    u32_property(WILL_DELAY_INTERVAL, 2, &mut will_properties);
    let mut clients = Vec::new();
    for i in 0..3 {
        let id = unique_id_on(shards - 1, shards, "interop-will");
        let topic = format!("{prefix}/{i}");
        let connect = connect_v5(&id, true, &properties, Some((&topic, &will_properties)));
        clients.push((topic, connect5(broker.addr(), &connect).0));
    }
    // Interest in the will topics reaches the clients' shard through the mesh.
    std::thread::sleep(Duration::from_millis(if shards > 1 { 300 } else { 0 }));
    let mut dropped = Vec::new();
    for (topic, client) in clients {
        // Gone without DISCONNECT: the will is due 2 s from here.
        dropped.push((topic, Instant::now()));
        drop(client);
        std::thread::sleep(STAGGER);
    }
    let mut seen = 0;
    while seen < dropped.len() {
        let packet = match sub.read_within(Duration::from_secs(6)) {
            Received::Frame(p) => p,
            other => panic!("{seen} of {} wills arrived, then {other:?}", dropped.len()),
        };
        let arrived = Instant::now();
        let topic = publish_topic(&packet);
        let (_, at) = dropped
            .iter()
            .find(|(t, _)| *t == topic)
            .unwrap_or_else(|| panic!("unexpected will {topic}"));
        let waited = arrived - *at;
        assert!(
            waited >= Duration::from_secs(2),
            "the will of {topic} came {waited:?} after its client went: before its 2 s delay"
        );
        assert!(
            waited < Duration::from_millis(4500),
            "the will of {topic} came {waited:?} after its client went"
        );
        seen += 1;
    }
}

#[test]
fn interop_will_delay_is_never_cut_short_mqtt_3_1_3_9() {
    check_will_delay_is_never_cut_short(1);
}

#[test]
fn interop_will_delay_is_never_cut_short_across_shards() {
    check_will_delay_is_never_cut_short(4);
}

/// [MQTT-3.1.2-23] A session outlives its connection by its Session Expiry Interval (2 s
/// here): a client back 1.7 s after its DISCONNECT finds it (session present), one back 4.5 s
/// after does not.
fn check_session_expiry_is_never_cut_short(shards: usize) {
    let broker = broker_with(|c| c.shards = shards);
    let mut properties = Vec::new();
    u32_property(SESSION_EXPIRY_INTERVAL, 2, &mut properties);
    let ids: Vec<String> = (0..3)
        .map(|_| unique_id_on(shards - 1, shards, "interop-expiry"))
        .collect();
    let disconnect_all = |clean_start: bool| -> Vec<Instant> {
        ids.iter()
            .map(|id| {
                let connect = connect_v5(id, clean_start, &properties, None);
                let (mut client, present) = connect5(broker.addr(), &connect);
                if clean_start {
                    assert!(!present, "{id}: clean start");
                }
                client.send_bytes(&packet(0xE0, &[]));
                let at = Instant::now();
                assert_eq!(
                    client.read_within(WAIT),
                    Received::End,
                    "{id}: closed after DISCONNECT"
                );
                std::thread::sleep(STAGGER);
                at
            })
            .collect()
    };
    let reconnect_at = |gone: &[Instant], after: Duration| -> Vec<bool> {
        ids.iter()
            .zip(gone)
            .map(|(id, at)| {
                if let Some(wait) = (*at + after).checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let connect = connect_v5(id, false, &properties, None);
                let (mut client, present) = connect5(broker.addr(), &connect);
                client.send_bytes(&packet(0xE0, &[]));
                present
            })
            .collect()
    };
    let gone = disconnect_all(true);
    let present = reconnect_at(&gone, Duration::from_millis(1700));
    assert_eq!(present, vec![true; 3], "sessions 1.7 s into a 2 s expiry");
    // Each reconnect ended with a DISCONNECT again: the 2 s run anew from there.
    let gone = disconnect_all(false);
    let present = reconnect_at(&gone, Duration::from_millis(4500));
    assert_eq!(present, vec![false; 3], "sessions 4.5 s into a 2 s expiry");
}

#[test]
fn interop_session_expiry_is_never_cut_short_mqtt_3_1_2_23() {
    check_session_expiry_is_never_cut_short(1);
}

#[test]
fn interop_session_expiry_is_never_cut_short_across_shards() {
    check_session_expiry_is_never_cut_short(4);
}

// ---------------------------------------------------------------------------------------------
// Offline queue across shards: properties kept, Message Expiry counted down
// ---------------------------------------------------------------------------------------------

/// The properties of a v5 PUBLISH, as (identifier, value bytes) in wire order.
fn publish_properties(packet: &Frame) -> Vec<(u8, Vec<u8>)> {
    let body = &packet.body;
    let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
    let mut at = 2 + topic_len;
    if (packet.first_byte >> 1) & 3 > 0 {
        at += 2;
    }
    let (len, used) = varint(&body[at..]);
    at += used;
    let end = at + len;
    let mut properties = Vec::new();
    while at < end {
        let id = body[at];
        at += 1;
        let size = match id {
            0x01 => 1,
            0x02 => 4,
            0x23 => 2,
            0x0B => varint(&body[at..]).1,
            0x03 | 0x08 | 0x09 => 2 + usize::from(u16::from_be_bytes([body[at], body[at + 1]])),
            0x26 => {
                let key = 2 + usize::from(u16::from_be_bytes([body[at], body[at + 1]]));
                let value = &body[at + key..];
                key + 2 + usize::from(u16::from_be_bytes([value[0], value[1]]))
            }
            other => panic!("unexpected PUBLISH property {other:#x}: {packet:?}"),
        };
        properties.push((id, body[at..at + size].to_vec()));
        at += size;
    }
    properties
}

fn varint(bytes: &[u8]) -> (usize, usize) {
    let mut value = 0usize;
    for (i, byte) in bytes.iter().enumerate().take(4) {
        value |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return (value, i + 1);
        }
    }
    panic!("bad variable byte integer {bytes:02x?}");
}

/// A v5 QoS 1 PUBLISH with properties (already encoded, under 128 bytes).
fn publish_v5_with(topic: &str, packet_id: u16, properties: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    put_string(topic.as_bytes(), &mut body);
    body.extend_from_slice(&packet_id.to_be_bytes());
    body.push(properties.len() as u8);
    body.extend_from_slice(properties);
    body.extend_from_slice(payload);
    packet(0x32, &body)
}

/// [MQTT-3.3.2-5] [MQTT-3.3.2-6] A message queued for a session that is away is kept with its
/// properties (in order, [MQTT-3.3.2-18]) and its Message Expiry Interval counts down while it
/// waits: one that expires meanwhile is not delivered, one that does not arrives with what is
/// left of its interval. With several shards the publisher and the subscriber are homed on
/// different ones (the message is forwarded, then queued).
fn check_offline_queue_keeps_properties_and_counts_expiry_down(shards: usize) {
    let broker = broker_with(|c| c.shards = shards);
    let topic = unique_topic("interop/queued");
    let sub_id = unique_id_on(shards - 1, shards, "interop-queued-sub");
    let mut properties = Vec::new();
    u32_property(SESSION_EXPIRY_INTERVAL, 60, &mut properties);
    let (mut sub, _) = connect5(broker.addr(), &connect_v5(&sub_id, true, &properties, None));
    let mut subscribe = 1u16.to_be_bytes().to_vec();
    subscribe.push(0);
    put_string(topic.as_bytes(), &mut subscribe);
    subscribe.push(1); // QoS 1
    sub.send_bytes(&packet(0x82, &subscribe));
    assert_eq!(sub.read().first_byte, 0x90, "SUBACK");
    sub.send_bytes(&packet(0xE0, &[]));
    assert_eq!(sub.read_within(WAIT), Received::End);

    let pub_id = unique_id_on(0, shards, "interop-queued-pub");
    let (mut publisher, _) = connect5(broker.addr(), &connect_v5(&pub_id, true, &[], None));
    let mut kept = Vec::new();
    u32_property(0x02, 30, &mut kept); // Message Expiry Interval
    kept.push(0x03); // Content Type
    put_string(b"text/plain", &mut kept);
    kept.push(0x26); // User Property, twice, in this order
    put_string(b"k", &mut kept);
    put_string(b"2", &mut kept);
    kept.push(0x26);
    put_string(b"a", &mut kept);
    put_string(b"1", &mut kept);
    let mut expiring = Vec::new();
    u32_property(0x02, 1, &mut expiring);
    publisher.send_bytes(&publish_v5_with(&topic, 1, &expiring, b"expires"));
    publisher.send_bytes(&publish_v5_with(&topic, 2, &kept, b"kept"));
    for _ in 0..2 {
        assert_eq!(publisher.read().first_byte, 0x40, "PUBACK");
    }
    std::thread::sleep(Duration::from_millis(2500));

    let (mut sub, present) = connect5(
        broker.addr(),
        &connect_v5(&sub_id, false, &properties, None),
    );
    assert!(present, "the session waited");
    let message = sub.read();
    assert_eq!(publish_topic(&message), topic);
    assert!(
        message.body.ends_with(b"kept"),
        "only the unexpired message: {message:?}"
    );
    let properties = publish_properties(&message);
    let left = properties
        .iter()
        .find(|(id, _)| *id == 0x02)
        .map(|(_, v)| u32::from_be_bytes([v[0], v[1], v[2], v[3]]))
        .expect("Message Expiry Interval forwarded");
    assert!((26..=28).contains(&left), "{left} s left of 30 after 2.5 s");
    let rest: Vec<(u8, Vec<u8>)> = properties
        .into_iter()
        .filter(|(id, _)| *id != 0x02)
        .collect();
    let mut expected_rest = Vec::new();
    let mut content_type = Vec::new();
    put_string(b"text/plain", &mut content_type);
    expected_rest.push((0x03, content_type));
    for (k, v) in [(b"k", b"2"), (b"a", b"1")] {
        let mut pair = Vec::new();
        put_string(k, &mut pair);
        put_string(v, &mut pair);
        expected_rest.push((0x26, pair));
    }
    assert_eq!(
        rest, expected_rest,
        "Content Type and User Properties in order"
    );
    match sub.read_within(Duration::from_millis(500)) {
        Received::TimedOut => {}
        other => panic!("the expired message must not follow: {other:?}"),
    }
}

#[test]
fn interop_offline_queue_keeps_properties_and_counts_expiry_down_mqtt_3_3_2_6() {
    check_offline_queue_keeps_properties_and_counts_expiry_down(1);
}

#[test]
fn interop_offline_queue_keeps_properties_and_counts_expiry_down_across_shards() {
    check_offline_queue_keeps_properties_and_counts_expiry_down(4);
}
