//! The protocol byte by byte. Mostly what a conforming client never sends: the broker must close
//! that one connection (MQTT 3.1.1 has no packet to explain why, except CONNACK codes during
//! CONNECT), never panic, and keep serving everyone else, so these tests end by checking that a
//! separate client on the same broker still gets its messages. Also details that client
//! libraries hide: exact return codes, acknowledgement order, framing.

mod common;

use common::*;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Opens a connection, sends a valid CONNECT, then `bytes`; the broker must close without a word.
fn connected_then_closed(bytes: &[u8]) {
    let broker = start_broker();
    let mut client = RawClient::connect(broker.addr(), &unique_id("bad"));
    client.send_ignoring_errors(bytes);
    client.expect_closed_silently();
    broker.wait_counter("protocol_errors", |s| s.protocol_errors, 1);
    assert_broker_still_serves(broker.addr());
}

/// Opens a connection and sends `bytes` as the first thing; the broker must close silently.
fn first_bytes_then_closed(bytes: &[u8]) {
    let broker = start_broker();
    let mut client = RawClient::open(broker.addr());
    client.send_ignoring_errors(bytes);
    client.expect_closed_silently();
    assert_broker_still_serves(broker.addr());
}

/// Sends `connect` as the first packet; expects CONNACK with `code`, then the close
/// [MQTT-3.2.2-5].
fn connack_refused(broker: &TestBroker, connect: &[u8], code: u8) {
    let mut client = RawClient::open(broker.addr());
    client.send(connect);
    let (session_present, got) = client.read_packet().connack();
    assert_eq!(got, code, "CONNACK return code");
    assert!(
        !session_present,
        "[MQTT-3.2.2-4] session present is 0 with a non-zero code"
    );
    client.expect_closed_silently();
}

// ---------------------------------------------------------------------------------------------
// CONNECT
// ---------------------------------------------------------------------------------------------

#[test]
fn first_packet_not_connect_is_closed() {
    // [MQTT-3.1.0-1] The first packet from the client must be CONNECT.
    first_bytes_then_closed(&PINGREQ);
}

#[test]
fn first_packet_publish_is_closed() {
    first_bytes_then_closed(&publish_bytes(b"a/b", 0, false, false, 0, b"x"));
}

#[test]
fn second_connect_is_closed() {
    // [MQTT-3.1.0-2] A second CONNECT is a protocol violation.
    connected_then_closed(&Connect::v311(&unique_id("again")).bytes());
}

#[test]
fn bad_protocol_name_is_closed() {
    // [MQTT-3.1.2-1] An unknown protocol name: the server may disconnect; it must not go on as
    // MQTT. ringmq closes without a CONNACK.
    let mut connect = Connect::v311(&unique_id("name"));
    connect.protocol_name = b"MQTX".to_vec();
    first_bytes_then_closed(&connect.bytes());
}

#[test]
fn lowercase_protocol_name_is_closed() {
    // [MQTT-3.1.2-1] The protocol name is "MQTT", case-sensitive.
    let mut connect = Connect::v311(&unique_id("lower"));
    connect.protocol_name = b"mqtt".to_vec();
    first_bytes_then_closed(&connect.bytes());
}

#[test]
fn unsupported_protocol_level_gets_connack_1() {
    // [MQTT-3.1.2-2] An unsupported level: CONNACK 0x01, then close.
    let broker = start_broker();
    let mut connect = Connect::v311(&unique_id("level"));
    connect.level = 6;
    connack_refused(&broker, &connect.bytes(), 1);
    assert_broker_still_serves(broker.addr());
}

#[test]
fn connect_reserved_flag_is_closed() {
    // [MQTT-3.1.2-3] The reserved CONNECT flag must be 0.
    let mut connect = Connect::v311(&unique_id("reserved"));
    connect.reserved_flag = true;
    first_bytes_then_closed(&connect.bytes());
}

#[test]
fn will_qos_without_will_flag_is_closed() {
    // [MQTT-3.1.2-13] Will flag 0: will QoS must be 0. Flags: clean session + will QoS 1.
    let mut bytes = Connect::v311(&unique_id("will-qos")).bytes();
    let flags_at = 2 + 6 + 1; // fixed header, "MQTT" string, level
    assert_eq!(bytes[flags_at], 0x02);
    bytes[flags_at] = 0x02 | 0x08;
    first_bytes_then_closed(&bytes);
}

#[test]
fn will_retain_without_will_flag_is_closed() {
    // [MQTT-3.1.2-15] Will flag 0: will retain must be 0.
    let mut bytes = Connect::v311(&unique_id("will-retain")).bytes();
    let flags_at = 2 + 6 + 1;
    bytes[flags_at] |= 0x20;
    first_bytes_then_closed(&bytes);
}

#[test]
fn will_qos3_is_closed() {
    // [MQTT-3.1.2-14] Will QoS 3 is not allowed.
    let mut connect = Connect::v311(&unique_id("will-qos3"));
    connect.will = Some(Will {
        topic: "w".into(),
        payload: b"x".to_vec(),
        qos: 3,
        retain: false,
    });
    first_bytes_then_closed(&connect.bytes());
}

#[test]
fn password_without_username_is_closed() {
    // [MQTT-3.1.2-22] Password flag 1 requires username flag 1.
    let mut connect = Connect::v311(&unique_id("pw-only"));
    connect.password = Some(b"secret".to_vec());
    first_bytes_then_closed(&connect.bytes());
}

#[test]
fn wildcard_in_will_topic_is_closed() {
    // [MQTT-3.1.3-10] [MQTT-3.3.2-2] The will topic is a topic name: no wildcards.
    let mut connect = Connect::v311(&unique_id("will-wild"));
    connect.will = Some(Will {
        topic: "w/#".into(),
        payload: b"x".to_vec(),
        qos: 0,
        retain: false,
    });
    // Closing silently or refusing with a CONNACK code first are both fine here.
    let broker = start_broker();
    let mut client = RawClient::open(broker.addr());
    client.send_ignoring_errors(&connect.bytes());
    let bytes = client.expect_closed();
    if !bytes.is_empty() {
        assert_eq!(bytes.len(), 4, "only a CONNACK may come back: {bytes:02x?}");
        assert_eq!(&bytes[..3], &[0x20, 0x02, 0x00], "CONNACK: {bytes:02x?}");
        assert_ne!(bytes[3], 0, "the will topic with a wildcard was accepted");
    }
    assert_broker_still_serves(broker.addr());
}

/// A CONNECT whose client id, will topic or username bytes are given raw.
fn connect_with_raw_strings(
    client_id: &[u8],
    will_topic: Option<&[u8]>,
    username: Option<&[u8]>,
) -> Vec<u8> {
    let mut body = Vec::new();
    put_string(b"MQTT", &mut body);
    body.push(4);
    let mut flags = 0x02;
    if will_topic.is_some() {
        flags |= 0x04;
    }
    if username.is_some() {
        flags |= 0x80;
    }
    body.push(flags);
    body.extend_from_slice(&60u16.to_be_bytes());
    put_string(client_id, &mut body);
    if let Some(topic) = will_topic {
        put_string(topic, &mut body);
        put_string(b"payload", &mut body);
    }
    if let Some(username) = username {
        put_string(username, &mut body);
    }
    packet(0x10, &body)
}

#[test]
fn invalid_utf8_in_client_id_is_closed() {
    // [MQTT-1.5.3-1] Client id is a UTF-8 string [MQTT-3.1.3-4].
    first_bytes_then_closed(&connect_with_raw_strings(&[b'c', 0xFF], None, None));
}

#[test]
fn invalid_utf8_in_will_topic_is_closed() {
    first_bytes_then_closed(&connect_with_raw_strings(
        b"will-utf8",
        Some(&[b'w', 0xC0, 0x80]),
        None,
    ));
}

#[test]
fn invalid_utf8_in_username_is_closed() {
    // [MQTT-3.1.3-11] The user name is a UTF-8 string.
    first_bytes_then_closed(&connect_with_raw_strings(
        b"user-utf8",
        None,
        Some(&[0xFE, b'u']),
    ));
}

#[test]
fn mqtt31_connect_and_pubsub_work() {
    // MQTT 3.1: protocol name "MQIsdp", level 3, same packets otherwise.
    let broker = start_broker();
    let topic = unique_topic("v31");
    let (mut subscriber, present) =
        RawClient::connect_with(broker.addr(), &Connect::v31(&unique_id("v31-sub")));
    assert!(!present);
    assert_eq!(subscriber.subscribe(1, &[(&topic, 1)]), vec![1]);
    let (mut publisher, _) =
        RawClient::connect_with(broker.addr(), &Connect::v31(&unique_id("v31-pub")));
    publisher.publish(&topic, 1, false, 5, b"old protocol");
    let publish = subscriber.read_publish();
    assert_eq!((publish.topic.as_str(), publish.qos), (topic.as_str(), 1));
    assert_eq!(publish.payload, b"old protocol");
    subscriber.send(&puback_bytes(publish.packet_id.unwrap()));
    // A 3.1.1 subscriber gets a 3.1 publisher's messages as well.
    let mut modern = RawClient::connect(broker.addr(), &unique_id("v311-sub"));
    modern.subscribe(1, &[(&topic, 0)]);
    publisher.publish(&topic, 0, false, 0, b"to both");
    assert_eq!(modern.read_publish().payload, b"to both");
    assert_eq!(subscriber.read_publish().payload, b"to both");
    publisher.disconnect();
    subscriber.disconnect();
}

#[test]
fn a_publisher_subscribed_to_its_own_topic_gets_its_ack_before_its_copy() {
    // A client reading packet by packet sends PUBLISH and reads its PUBACK or PUBREC; the copy
    // it is owed as a subscriber comes after (found by mosquitto's 02-subpub-qos2).
    let broker = start_broker();
    let topic = unique_topic("own-copy");
    let mut client = RawClient::connect(broker.addr(), &unique_id("own-copy"));
    assert_eq!(client.subscribe(1, &[(&topic, 2)]), vec![2]);
    client.send(&publish_bytes(
        topic.as_bytes(),
        1,
        false,
        false,
        11,
        b"one",
    ));
    assert_eq!(client.read_packet().ack_id(PUBACK), 11, "PUBACK first");
    let copy = client.read_publish();
    assert_eq!((copy.qos, copy.payload.as_slice()), (1, &b"one"[..]));
    client.send(&puback_bytes(copy.packet_id.unwrap()));
    client.send(&publish_bytes(
        topic.as_bytes(),
        2,
        false,
        false,
        12,
        b"two",
    ));
    assert_eq!(client.read_packet().ack_id(PUBREC), 12, "PUBREC first");
    let copy = client.read_publish();
    assert_eq!((copy.qos, copy.payload.as_slice()), (2, &b"two"[..]));
    client.send(&pubrel_bytes(12));
    assert_eq!(client.read_packet().ack_id(PUBCOMP), 12);
    client.ping();
}

#[test]
fn mqtt31_connack_has_no_session_present_flag_though_the_session_resumes() {
    // MQTT 3.1's CONNACK byte 1 is reserved (0): it has no Session Present flag. The session
    // itself is kept all the same (found by mosquitto's 03-publish-c2b-disconnect-qos2).
    let broker = start_broker();
    let topic = unique_topic("v31-resume");
    let id = unique_id("v31-resume");
    let persistent = Connect {
        clean_session: false,
        ..Connect::v31(&id)
    };
    let (mut client, present) = RawClient::connect_with(broker.addr(), &persistent);
    assert!(!present);
    client.subscribe(1, &[(&topic, 1)]);
    client.disconnect();
    let mut publisher = RawClient::connect(broker.addr(), &unique_id("v31-resume-pub"));
    publisher.publish(&topic, 1, false, 7, b"while away");
    let (mut client, present) = RawClient::connect_with(broker.addr(), &persistent);
    assert!(!present, "3.1 CONNACK flags byte must be 0");
    assert_eq!(
        client.read_publish().payload,
        b"while away",
        "the session resumed"
    );
    // The same session under 3.1.1 says so [MQTT-3.2.2-2].
    drop(client);
    let (_client, present) = RawClient::connect_with(
        broker.addr(),
        &Connect {
            clean_session: false,
            ..Connect::v311(&id)
        },
    );
    assert!(present);
}

#[test]
fn mqtt31_empty_client_id_gets_connack_2() {
    // MQTT 3.1 (section 3.1, Client Identifier): 1 to 23 characters; a zero-length one is
    // "identifier rejected", clean session or not (3.1.1 would assign one [MQTT-3.1.3-6]).
    let broker = start_broker();
    connack_refused(&broker, &Connect::v31("").bytes(), 2);
    assert_broker_still_serves(broker.addr());
}

#[test]
fn mqtt31_dup_on_a_pubrel_or_subscribe_sent_again_is_accepted() {
    // MQTT 3.1 sets DUP on a PUBREL, SUBSCRIBE or UNSUBSCRIBE it sends again (its section
    // 2.1); 3.1.1 allows only 0010 there [MQTT-3.6.1-1], which `reserved_flags_*` checks.
    let broker = start_broker();
    let topic = unique_topic("v31-dup");
    let (mut client, _) =
        RawClient::connect_with(broker.addr(), &Connect::v31(&unique_id("v31-dup")));
    let with_dup = |mut bytes: Vec<u8>| {
        bytes[0] |= 0b1000;
        bytes
    };
    client.send(&with_dup(subscribe_bytes(3, &[(&topic, 2)])));
    assert_eq!(client.read_packet().suback(), (3, vec![2]));
    client.send(&publish_bytes(
        topic.as_bytes(),
        2,
        false,
        false,
        9,
        b"once",
    ));
    let mut pubrec_and_publish = [client.read_packet(), client.read_packet()];
    pubrec_and_publish.sort_by_key(|p| p.first_byte);
    assert_eq!(pubrec_and_publish[0].publish().payload, b"once");
    assert_eq!(pubrec_and_publish[1].ack_id(PUBREC), 9);
    client.send(&with_dup(pubrel_bytes(9)));
    assert_eq!(client.read_packet().ack_id(PUBCOMP), 9);
    client.send(&with_dup(unsubscribe_bytes(4, &[&topic])));
    assert_eq!(client.read_packet().ack_id(UNSUBACK), 4);
    client.ping();
}

#[test]
fn empty_client_id_with_persistent_session_gets_connack_2() {
    // [MQTT-3.1.3-8] Zero-length client id with clean session 0: CONNACK 0x02, then close.
    let broker = start_broker();
    let mut connect = Connect::v311("");
    connect.clean_session = false;
    connack_refused(&broker, &connect.bytes(), 2);
    assert_broker_still_serves(broker.addr());
}

#[test]
fn empty_client_id_with_clean_session_is_accepted() {
    // [MQTT-3.1.3-6] Zero-length client id with clean session 1: the server assigns an id.
    let broker = start_broker();
    let topic = unique_topic("anon-id");
    let (mut first, present) = RawClient::connect_with(broker.addr(), &Connect::v311(""));
    assert!(!present);
    // A second empty-id client is a different client, not a take-over.
    let (mut second, _) = RawClient::connect_with(broker.addr(), &Connect::v311(""));
    assert_eq!(first.subscribe(1, &[(&topic, 0)]), vec![0]);
    second.publish(&topic, 0, false, 0, b"hi");
    assert_eq!(first.read_publish().payload, b"hi");
    second.ping();
    first.disconnect();
    second.disconnect();
}

#[test]
fn connection_without_connect_is_closed_after_connect_timeout() {
    // [MQTT-3.1.0-1] comment: a server should close a connection that sends no CONNECT within a
    // reasonable time; ringmq's is limits.connect_timeout_secs.
    let mut config = test_config();
    config.limits.connect_timeout_secs = 1;
    let broker = TestBroker::start(config);
    let mut silent = RawClient::open(broker.addr());
    let mut partial = RawClient::open(broker.addr());
    partial.send(&Connect::v311(&unique_id("partial")).bytes()[..5]);
    let started = std::time::Instant::now();
    silent.expect_closed_silently();
    partial.expect_closed_silently();
    let elapsed = started.elapsed();
    assert!(
        elapsed >= std::time::Duration::from_millis(900),
        "closed after {elapsed:?}, before the 1 s connect timeout"
    );
    assert!(
        elapsed <= std::time::Duration::from_millis(3500),
        "closed after {elapsed:?}"
    );
    assert_broker_still_serves(broker.addr());
}

#[test]
fn connections_over_connections_max_get_connack_3() {
    // CONNACK 0x03 "server unavailable" once connections_max clients are connected.
    let mut config = test_config();
    config.limits.connections_max = 2;
    let broker = TestBroker::start(config);
    let mut first = RawClient::connect(broker.addr(), &unique_id("max1"));
    let second = RawClient::connect(broker.addr(), &unique_id("max2"));
    connack_refused(&broker, &Connect::v311(&unique_id("max3")).bytes(), 3);
    // A place frees up when one leaves.
    second.disconnect();
    let mut third = RawClient::connect(broker.addr(), &unique_id("max3"));
    third.ping();
    first.ping();
}

// ---------------------------------------------------------------------------------------------
// Authentication
// ---------------------------------------------------------------------------------------------

fn auth_broker(dir: &TempDir, allow_anonymous: bool) -> TestBroker {
    let mut config = test_config();
    config.password_file = Some(password_file(
        dir,
        &[("alice", "wonderland"), ("bob", "builder")],
    ));
    config.allow_anonymous = allow_anonymous;
    TestBroker::start(config)
}

fn with_credentials(username: &str, password: &[u8]) -> Vec<u8> {
    let mut connect = Connect::v311(&unique_id(username));
    connect.username = Some(username.into());
    connect.password = Some(password.to_vec());
    connect.bytes()
}

#[test]
fn correct_password_is_accepted() {
    let dir = TempDir::new("auth");
    let broker = auth_broker(&dir, false);
    for (user, password) in [("alice", "wonderland"), ("bob", "builder")] {
        let mut client = RawClient::open(broker.addr());
        client.send(&with_credentials(user, password.as_bytes()));
        assert_eq!(client.read_packet().connack(), (false, 0), "{user}");
        client.disconnect();
    }
}

#[test]
fn wrong_password_gets_connack_4() {
    // [MQTT-3.2.2-5] Refused: bad user name or password (0x04), then close.
    let dir = TempDir::new("auth");
    let broker = auth_broker(&dir, false);
    connack_refused(&broker, &with_credentials("alice", b"builder"), 4);
    connack_refused(&broker, &with_credentials("mallory", b"wonderland"), 4);
    // Bob's password is not alice's.
    connack_refused(&broker, &with_credentials("bob", b"wonderland"), 4);
}

#[test]
fn anonymous_is_refused_with_connack_5_when_not_allowed() {
    let dir = TempDir::new("auth");
    let broker = auth_broker(&dir, false);
    connack_refused(&broker, &Connect::v311(&unique_id("anon")).bytes(), 5);
}

#[test]
fn anonymous_is_accepted_when_allowed_but_passwords_still_checked() {
    let dir = TempDir::new("auth");
    let broker = auth_broker(&dir, true);
    let mut client = RawClient::open(broker.addr());
    client.send(&Connect::v311(&unique_id("anon")).bytes());
    assert_eq!(client.read_packet().connack(), (false, 0));
    connack_refused(&broker, &with_credentials("alice", b"nope"), 4);
}

// ---------------------------------------------------------------------------------------------
// Fixed header: packet types, flags, lengths
// ---------------------------------------------------------------------------------------------

#[test]
fn subscribe_with_wrong_reserved_flags_is_closed() {
    // [MQTT-3.8.1-1] SUBSCRIBE flags must be 0b0010; here 0b0000.
    let mut bytes = subscribe_bytes(1, &[("a/b", 0)]);
    bytes[0] = 0x80;
    connected_then_closed(&bytes);
}

#[test]
fn unsubscribe_with_wrong_reserved_flags_is_closed() {
    // [MQTT-3.10.1-1] UNSUBSCRIBE flags must be 0b0010.
    let mut bytes = unsubscribe_bytes(1, &["a/b"]);
    bytes[0] = 0xA0;
    connected_then_closed(&bytes);
}

#[test]
fn pubrel_with_wrong_reserved_flags_is_closed() {
    // [MQTT-3.6.1-1] PUBREL flags must be 0b0010.
    connected_then_closed(&packet(0x60, &1u16.to_be_bytes()));
}

#[test]
fn pingreq_with_flags_is_closed() {
    // [MQTT-2.2.2-2] Reserved flags of PINGREQ are 0.
    connected_then_closed(&[0xC1, 0x00]);
}

#[test]
fn reserved_packet_type_is_closed() {
    // Packet types 0 and 15 are reserved in 3.1.1 [MQTT-2.2.1].
    connected_then_closed(&[0xF0, 0x00]);
}

#[test]
fn server_only_packets_from_a_client_are_closed() {
    // CONNACK, SUBACK, UNSUBACK and PINGRESP flow only from server to client.
    for bytes in [
        vec![0x20, 0x02, 0x00, 0x00],
        vec![0x90, 0x03, 0x00, 0x01, 0x00],
        vec![0xB0, 0x02, 0x00, 0x01],
        PINGRESP.to_vec(),
    ] {
        connected_then_closed(&bytes);
    }
}

#[test]
fn remaining_length_of_five_bytes_is_closed() {
    // [MQTT-2.2.3] The remaining length has at most four bytes.
    connected_then_closed(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]);
}

#[test]
fn string_longer_than_its_packet_is_closed() {
    // A topic length that runs past the end of the packet is malformed.
    connected_then_closed(&[0x30, 0x04, 0x00, 0x10, b'a', b'b']);
}

// ---------------------------------------------------------------------------------------------
// Topic names, topic filters, packet ids
// ---------------------------------------------------------------------------------------------

#[test]
fn invalid_utf8_in_topic_is_closed() {
    // [MQTT-1.5.3-1] Ill-formed UTF-8 in a topic: close. 0xC3 0x28 is an invalid sequence.
    connected_then_closed(&publish_bytes(
        &[b'a', 0xC3, 0x28],
        0,
        false,
        false,
        0,
        b"x",
    ));
}

#[test]
fn utf16_surrogate_in_topic_is_closed() {
    // [MQTT-1.5.3-1] U+D800 encoded as UTF-8 (ED A0 80) is not allowed.
    connected_then_closed(&publish_bytes(
        &[b'a', 0xED, 0xA0, 0x80],
        0,
        false,
        false,
        0,
        b"x",
    ));
}

#[test]
fn nul_character_in_topic_is_closed() {
    // [MQTT-1.5.3-2] U+0000 must not appear in a string.
    connected_then_closed(&publish_bytes(b"a\0b", 0, false, false, 0, b"x"));
}

#[test]
fn nul_character_in_subscribe_filter_is_closed() {
    connected_then_closed(&subscribe_bytes(1, &[("a\0b", 0)]));
}

#[test]
fn plus_wildcard_in_publish_topic_is_closed() {
    // [MQTT-3.3.2-2] The topic name in PUBLISH must not contain wildcards.
    connected_then_closed(&publish_bytes(b"a/+", 0, false, false, 0, b"x"));
}

#[test]
fn hash_wildcard_in_publish_topic_is_closed() {
    connected_then_closed(&publish_bytes(b"a/#", 1, false, false, 1, b"x"));
}

#[test]
fn empty_publish_topic_is_closed() {
    // [MQTT-4.7.3-1] Topic names are at least one character long.
    connected_then_closed(&publish_bytes(b"", 0, false, false, 0, b"x"));
}

#[test]
fn byte_order_mark_in_topic_is_kept() {
    // [MQTT-1.5.3-3] U+FEFF is not skipped or stripped: "\u{FEFF}t" and "t" are different topics.
    let broker = start_broker();
    let plain = unique_topic("bom");
    let bom = format!("\u{FEFF}{plain}");
    let mut subscriber = RawClient::connect(broker.addr(), &unique_id("bom-sub"));
    subscriber.subscribe(1, &[(&plain, 0), (&bom, 0)]);
    let mut publisher = RawClient::connect(broker.addr(), &unique_id("bom-pub"));
    publisher.publish(&bom, 0, false, 0, b"with bom");
    publisher.publish(&plain, 0, false, 0, b"plain");
    let first = subscriber.read_publish();
    assert_eq!(
        (first.topic.as_str(), first.payload.as_slice()),
        (bom.as_str(), &b"with bom"[..])
    );
    let second = subscriber.read_publish();
    assert_eq!(
        (second.topic.as_str(), second.payload.as_slice()),
        (plain.as_str(), &b"plain"[..])
    );
    subscriber.expect_silence(std::time::Duration::from_millis(200));
}

#[test]
fn qos3_publish_is_closed() {
    // [MQTT-3.3.1-4] A PUBLISH must not have both QoS bits set.
    connected_then_closed(&publish_bytes(b"a/b", 3, false, false, 1, b"x"));
}

#[test]
fn qos1_publish_with_packet_id_zero_is_closed() {
    // [MQTT-2.3.1-1] QoS > 0 packets carry a non-zero packet id.
    connected_then_closed(&publish_bytes(b"a/b", 1, false, false, 0, b"x"));
}

#[test]
fn subscribe_with_packet_id_zero_is_closed() {
    // [MQTT-2.3.1-1] SUBSCRIBE, UNSUBSCRIBE carry a non-zero packet id.
    connected_then_closed(&subscribe_bytes(0, &[("a/b", 0)]));
}

#[test]
fn unsubscribe_with_packet_id_zero_is_closed() {
    connected_then_closed(&unsubscribe_bytes(0, &["a/b"]));
}

#[test]
fn subscribe_without_filters_is_closed() {
    // [MQTT-3.8.3-3] A SUBSCRIBE contains at least one filter.
    connected_then_closed(&packet(0x82, &1u16.to_be_bytes()));
}

#[test]
fn subscribe_with_qos3_is_closed() {
    // [MQTT-3-8.3-4] Requested QoS 3 (or reserved bits set) is malformed.
    connected_then_closed(&subscribe_bytes(1, &[("a/b", 3)]));
}

#[test]
fn unsubscribe_without_filters_is_closed() {
    // [MQTT-3.10.3-2]
    connected_then_closed(&packet(0xA2, &1u16.to_be_bytes()));
}

#[test]
fn invalid_subscribe_filter_is_refused() {
    // [MQTT-4.7.1-2] `#` must be last; [MQTT-4.7.1-3] `+` must fill a whole level. The broker may
    // answer SUBACK 0x80 for that filter or close the connection; it must not grant it.
    for filter in ["a/#/b", "a/b#", "a+/b", ""] {
        let broker = start_broker();
        let mut client = RawClient::connect(broker.addr(), &unique_id("bad-filter"));
        client.send_ignoring_errors(&subscribe_bytes(1, &[(filter, 0), ("ok/filter", 0)]));
        let bytes = client.expect_closed_or_packet();
        if let Some(packet) = bytes {
            let (id, codes) = packet.suback();
            assert_eq!(id, 1);
            assert_eq!(codes[0], 0x80, "filter {filter:?} was granted");
        }
        assert_broker_still_serves(broker.addr());
    }
}

#[test]
fn subscribe_with_many_filters_gets_one_code_each() {
    // [MQTT-3.8.4-4] [MQTT-3.8.4-5] One SUBACK, return codes in the order of the filters.
    let broker = start_broker();
    let root = unique_topic("many");
    let filters: Vec<String> = (0..100).map(|i| format!("{root}/{i}")).collect();
    let requested: Vec<(&str, u8)> = filters
        .iter()
        .enumerate()
        .map(|(i, f)| (f.as_str(), (i % 3) as u8))
        .collect();
    let mut client = RawClient::connect(broker.addr(), &unique_id("many"));
    let codes = client.subscribe(3, &requested);
    let want: Vec<u8> = (0..100).map(|i| (i % 3) as u8).collect();
    assert_eq!(codes, want);
    let mut publisher = RawClient::connect(broker.addr(), &unique_id("many-pub"));
    publisher.publish(&filters[99], 0, false, 0, b"last");
    assert_eq!(client.read_publish().topic, filters[99]);
}

// ---------------------------------------------------------------------------------------------
// Packet sizes
// ---------------------------------------------------------------------------------------------

fn small_packet_broker() -> TestBroker {
    let mut config = test_config();
    config.limits.packet_size_max = 1024;
    TestBroker::start(config)
}

#[test]
fn packet_bigger_than_packet_size_max_is_closed() {
    let broker = small_packet_broker();
    // Well under the limit: accepted and delivered.
    let topic = unique_topic("size");
    let mut subscriber = RawClient::connect(broker.addr(), &unique_id("size-sub"));
    subscriber.subscribe(1, &[(&topic, 0)]);
    let mut client = RawClient::connect(broker.addr(), &unique_id("size"));
    client.publish(&topic, 0, false, 0, &[b'x'; 512]);
    assert_eq!(subscriber.read_publish().payload.len(), 512);
    // Well over it: closed.
    client.send_ignoring_errors(&publish_bytes(
        topic.as_bytes(),
        0,
        false,
        false,
        0,
        &[b'y'; 2000],
    ));
    client.expect_closed_silently();
    subscriber.ping(); // the oversized message went nowhere and the subscriber is fine
    assert_broker_still_serves(broker.addr());
}

#[test]
fn oversized_packet_is_refused_from_its_fixed_header() {
    // The size is checked from the fixed header, before the body is buffered (config.rs): a
    // client announcing 100 MB is closed without sending them.
    let broker = small_packet_broker();
    let mut client = RawClient::connect(broker.addr(), &unique_id("huge"));
    let mut header = vec![0x30];
    put_remaining_length(100_000_000, &mut header);
    header.extend_from_slice(&[0x00, 0x03, b'a', b'/', b'b']);
    client.send(&header);
    client.expect_closed_silently();
    assert_broker_still_serves(broker.addr());
}

#[test]
fn oversized_connect_is_closed() {
    let broker = small_packet_broker();
    let mut connect = Connect::v311(&unique_id("big-connect"));
    connect.will = Some(Will {
        topic: "w".into(),
        payload: vec![b'z'; 4000],
        qos: 0,
        retain: false,
    });
    let mut client = RawClient::open(broker.addr());
    client.send_ignoring_errors(&connect.bytes());
    client.expect_closed_silently();
    assert_broker_still_serves(broker.addr());
}

// ---------------------------------------------------------------------------------------------
// Streams: framing, order, connections coming and going
// ---------------------------------------------------------------------------------------------

#[test]
fn packets_split_byte_by_byte_are_understood() {
    // The broker must not care where TCP cuts the stream.
    let broker = start_broker();
    let topic = unique_topic("split");
    let mut subscriber = RawClient::connect(broker.addr(), &unique_id("split-sub"));
    subscriber.subscribe(1, &[(&topic, 0)]);
    let mut client = RawClient::open(broker.addr());
    let mut stream = Connect::v311(&unique_id("split")).bytes();
    stream.extend(publish_bytes(
        topic.as_bytes(),
        0,
        false,
        false,
        0,
        b"in pieces",
    ));
    for byte in &stream {
        client.send(std::slice::from_ref(byte));
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert_eq!(client.read_packet().connack(), (false, 0));
    assert_eq!(subscriber.read_publish().payload, b"in pieces");
}

#[test]
fn many_packets_in_one_write_are_all_handled() {
    let broker = start_broker();
    let topic = unique_topic("batch");
    let mut subscriber = RawClient::connect(broker.addr(), &unique_id("batch-sub"));
    subscriber.subscribe(1, &[(&topic, 0)]);
    let mut client = RawClient::open(broker.addr());
    let mut stream = Connect::v311(&unique_id("batch")).bytes();
    for i in 0..50u8 {
        stream.extend(publish_bytes(topic.as_bytes(), 0, false, false, 0, &[i]));
    }
    stream.extend_from_slice(&PINGREQ);
    client.send(&stream);
    assert_eq!(client.read_packet().connack(), (false, 0));
    assert_eq!(client.read_packet().first_byte, PINGRESP[0]);
    for i in 0..50u8 {
        assert_eq!(subscriber.read_publish().payload, vec![i]);
    }
}

#[test]
fn acknowledgements_come_in_publish_order() {
    // [MQTT-4.6.0-2] PUBACKs in the order the PUBLISHes arrived; [MQTT-4.6.0-3] PUBRECs too.
    let broker = start_broker();
    let topic = unique_topic("ack-order");
    let mut client = RawClient::connect(broker.addr(), &unique_id("ack-order"));
    let mut burst = Vec::new();
    for id in 1..=20u16 {
        burst.extend(publish_bytes(topic.as_bytes(), 1, false, false, id, b"q1"));
    }
    for id in 21..=40u16 {
        burst.extend(publish_bytes(topic.as_bytes(), 2, false, false, id, b"q2"));
    }
    client.send(&burst);
    for id in 1..=20u16 {
        assert_eq!(client.read_packet().ack_id(PUBACK), id);
    }
    for id in 21..=40u16 {
        assert_eq!(client.read_packet().ack_id(PUBREC), id);
    }
    let mut rels = Vec::new();
    for id in 21..=40u16 {
        rels.extend(pubrel_bytes(id));
    }
    client.send(&rels);
    for id in 21..=40u16 {
        assert_eq!(client.read_packet().ack_id(PUBCOMP), id);
    }
}

#[test]
fn a_client_receives_its_own_publishes() {
    // MQTT 3.1.1 has no "no local" option: a subscriber that publishes gets its own message.
    let broker = start_broker();
    let topic = unique_topic("echo");
    let mut client = RawClient::connect(broker.addr(), &unique_id("echo"));
    client.subscribe(1, &[(&topic, 0)]);
    client.send(&publish_bytes(
        topic.as_bytes(),
        0,
        false,
        false,
        0,
        b"echo",
    ));
    assert_eq!(client.read_publish().payload, b"echo");
}

#[test]
fn empty_payload_is_delivered_empty() {
    let broker = start_broker();
    let topic = unique_topic("empty");
    let mut subscriber = RawClient::connect(broker.addr(), &unique_id("empty-sub"));
    subscriber.subscribe(1, &[(&topic, 1)]);
    let mut publisher = RawClient::connect(broker.addr(), &unique_id("empty-pub"));
    publisher.publish(&topic, 1, false, 1, b"");
    let publish = subscriber.read_publish();
    assert_eq!(
        (publish.topic.as_str(), publish.payload.len()),
        (topic.as_str(), 0)
    );
}

#[test]
fn a_client_hanging_up_mid_packet_harms_no_one() {
    let broker = start_broker();
    let mut client = RawClient::connect(broker.addr(), &unique_id("half"));
    // Half a PUBLISH, then gone.
    client.send(&publish_bytes(b"half/packet", 1, false, false, 1, b"payload")[..8]);
    drop(client);
    let mut client = RawClient::open(broker.addr());
    client.send(&Connect::v311(&unique_id("half-connect")).bytes()[..7]);
    drop(client);
    assert_broker_still_serves(broker.addr());
}

#[test]
fn many_bad_connections_in_a_row_leave_the_broker_serving() {
    // One broker, every kind of garbage one after another (no fresh broker per case).
    let broker = start_broker();
    let garbage: Vec<Vec<u8>> = vec![
        PINGREQ.to_vec(),
        vec![0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
        vec![0x10, 0x00],
        vec![0x10, 0x02, 0x00, 0x04],
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        vec![0x00; 16],
        vec![0xFF; 16],
    ];
    for bytes in &garbage {
        let mut client = RawClient::open(broker.addr());
        client.send_ignoring_errors(bytes);
        client.expect_closed();
    }
    assert_broker_still_serves(broker.addr());
}

#[test]
fn connection_accepted_right_after_a_close_keeps_working() {
    // A closing connection's last operations must not reach the next connection, which the
    // kernel may give the same fixed-file slot.
    let broker = start_broker();
    for _ in 0..10 {
        let gone = RawClient::connect(broker.addr(), &unique_id("gone"));
        drop(gone);
        let mut next = RawClient::connect(broker.addr(), &unique_id("next"));
        next.ping();
        next.expect_silence(std::time::Duration::from_millis(100));
        next.ping();
        next.disconnect();
    }
}

// ---------------------------------------------------------------------------------------------
// Mutated and random input
// ---------------------------------------------------------------------------------------------

/// xorshift64*: a fixed-seed generator, so a failing case can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn mutated_and_random_packets_never_stop_the_broker() {
    // The connection state machine behind the decoder, driven with near-valid input: valid
    // packets with a few bytes changed, cut short, or plain random bytes. Whatever the broker
    // does with one connection, it keeps serving the next.
    let broker = start_broker();
    let mut valid = Vec::new();
    valid.extend(subscribe_bytes(1, &[("fuzz/+", 2), ("fuzz/#", 1)]));
    valid.extend(publish_bytes(b"fuzz/a", 0, false, false, 0, b"zero"));
    valid.extend(publish_bytes(b"fuzz/b", 1, true, false, 2, b"one"));
    valid.extend(publish_bytes(b"fuzz/c", 2, false, false, 3, b"two"));
    valid.extend(pubrel_bytes(3));
    valid.extend(puback_bytes(1));
    valid.extend(unsubscribe_bytes(4, &["fuzz/+"]));
    valid.extend_from_slice(&PINGREQ);
    // RINGMQ_FUZZ_CASES and RINGMQ_FUZZ_SEED run it longer or differently by hand.
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let cases = env("RINGMQ_FUZZ_CASES", 300);
    let seed = env("RINGMQ_FUZZ_SEED", 0x5EED_1234_ABCD_0001);
    let mut rng = Rng(seed.max(1));
    for case in 0..cases {
        if case % 50 == 0 && case > 0 {
            // A failure here names the seed and the cases to replay.
            eprintln!("seed {seed}: cases before {case} done");
            assert_broker_still_serves(broker.addr());
        }
        if case % 4 == 3 {
            // A mutated CONNECT as the first packet: connect flags, will, credentials.
            let mut connect = Connect::v311(&unique_id("fuzz-connect"));
            connect.clean_session = rng.below(2) == 0;
            connect.keepalive_secs = rng.below(3) as u16;
            connect.will = Some(Will {
                topic: "fuzz/will".into(),
                payload: b"will".to_vec(),
                qos: rng.below(3) as u8,
                retain: rng.below(2) == 0,
            });
            connect.username = Some("user".into());
            connect.password = Some(b"pass".to_vec());
            let mut bytes = connect.bytes();
            bytes.extend(publish_bytes(b"fuzz/after", 1, false, false, 1, b"x"));
            for _ in 0..1 + rng.below(2) {
                let at = rng.below(bytes.len());
                bytes[at] = rng.next() as u8;
            }
            let mut client = RawClient::open(broker.addr());
            client.send_ignoring_errors(&bytes);
            let _ = client.try_read_packet_or_close(std::time::Duration::from_millis(5));
            continue;
        }
        let mut bytes = valid.clone();
        match case % 4 {
            0 => {
                for _ in 0..1 + rng.below(3) {
                    let at = rng.below(bytes.len());
                    bytes[at] = rng.next() as u8;
                }
            }
            1 => {
                let at = rng.below(bytes.len());
                bytes[at] = rng.next() as u8;
                bytes.truncate(1 + rng.below(bytes.len()));
            }
            _ => {
                bytes = (0..1 + rng.below(64)).map(|_| rng.next() as u8).collect();
            }
        }
        let mut client = RawClient::connect(broker.addr(), &unique_id("fuzz"));
        client.send_ignoring_errors(&bytes);
        // Whatever comes back (acks, publishes, a close) is fine; just don't linger.
        let _ = client.try_read_packet_or_close(std::time::Duration::from_millis(5));
        drop(client);
    }
    assert_broker_still_serves(broker.addr());
}
