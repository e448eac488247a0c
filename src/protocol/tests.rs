//! Codec tests across modules: round trips of every packet in every version, spec byte vectors,
//! split reads, malformed inputs with their exact errors, and never-panic checks on prefixes and
//! mutations of valid packets.

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;

use super::decode::ctx;
use super::*;

const V3: ProtocolVersion = ProtocolVersion::V3_1_1;
const V5: ProtocolVersion = ProtocolVersion::V5;

fn enc(packet: &Packet, version: ProtocolVersion) -> Vec<u8> {
    let mut out = Vec::new();
    encode(packet, version, &mut out).unwrap_or_else(|e| panic!("encode {packet:?}: {e}"));
    assert_eq!(
        out.len(),
        encoded_len(packet, version),
        "encoded_len of {packet:?}"
    );
    out
}

fn dec(bytes: &[u8], version: ProtocolVersion) -> Result<Option<Packet>, DecodeError> {
    let mut buf = BytesMut::from(bytes);
    decode(&mut buf, version, u32::MAX)
}

/// Decodes exactly one packet that fills `bytes`.
fn dec_one(bytes: &[u8], version: ProtocolVersion) -> Packet {
    let mut buf = BytesMut::from(bytes);
    let packet = decode(&mut buf, version, u32::MAX)
        .unwrap_or_else(|e| panic!("decode {bytes:02x?}: {e}"))
        .expect("a whole packet");
    assert!(buf.is_empty(), "bytes left after {packet:?}");
    packet
}

fn s(text: &str) -> ByteString {
    ByteString::from(text)
}

/// A length-prefixed string or binary field.
fn field(bytes: &[u8]) -> Vec<u8> {
    let mut out = (bytes.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(bytes);
    out
}

/// A whole packet: first byte, remaining length, body.
fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut len = body.len();
    loop {
        let byte = (len % 128) as u8;
        len /= 128;
        if len == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    }
    out.extend_from_slice(body);
    out
}

/// Every property allowed in `context` set to a sample value (two of the repeatable ones).
fn all_props(context: u16) -> Properties {
    let mut p = Properties::default();
    for id in 0..=0x2Au8 {
        match ctx::allowed(id) {
            Some(allowed) if allowed & context != 0 => set_sample(&mut p, id, context),
            _ => {}
        }
    }
    p
}

fn set_sample(p: &mut Properties, id: u8, context: u16) {
    match id {
        0x01 => p.payload_format_indicator = Some(1),
        0x02 => p.message_expiry_interval = Some(3600),
        0x03 => p.content_type = Some(s("text/plain")),
        0x08 => p.response_topic = Some(s("reply/to")),
        0x09 => p.correlation_data = Some(Bytes::from_static(b"\x00\x01corr")),
        0x0B => {
            p.subscription_identifiers.push(268_435_455);
            if context == ctx::PUBLISH {
                p.subscription_identifiers.push(7);
            }
        }
        0x11 => p.session_expiry_interval = Some(u32::MAX),
        0x12 => p.assigned_client_identifier = Some(s("auto-1")),
        0x13 => p.server_keep_alive = Some(30),
        0x15 => p.authentication_method = Some(s("SCRAM-SHA-1")),
        0x16 => p.authentication_data = Some(Bytes::from_static(b"\xff\x00data")),
        0x17 => p.request_problem_information = Some(0),
        0x18 => p.will_delay_interval = Some(5),
        0x19 => p.request_response_information = Some(1),
        0x1A => p.response_information = Some(s("resp/")),
        0x1C => p.server_reference = Some(s("other:1883")),
        0x1F => p.reason_string = Some(s("because")),
        0x21 => p.receive_maximum = Some(20),
        0x22 => p.topic_alias_maximum = Some(10),
        0x23 => p.topic_alias = Some(3),
        0x24 => p.maximum_qos = Some(1),
        0x25 => p.retain_available = Some(0),
        0x26 => {
            p.user_properties.push((s("k"), s("v")));
            p.user_properties.push((s("k"), s("v2 \u{e9}\u{1f600}")));
        }
        0x27 => p.maximum_packet_size = Some(1 << 20),
        0x28 => p.wildcard_subscription_available = Some(1),
        0x29 => p.subscription_identifier_available = Some(0),
        0x2A => p.shared_subscription_available = Some(1),
        _ => {}
    }
}

fn connect(protocol: ProtocolVersion, with_props: bool) -> Packet {
    let props = |context| {
        if with_props {
            all_props(context)
        } else {
            Properties::default()
        }
    };
    Packet::Connect(Box::new(Connect {
        protocol,
        clean_start: true,
        keepalive_secs: 60,
        client_id: s("client-\u{fc}"),
        will: Some(LastWill {
            topic: s("last/will"),
            payload: Bytes::from_static(b"gone\x00"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: props(ctx::WILL).into(),
        }),
        username: Some(s("user")),
        password: Some(Bytes::from_static(b"\x00secret\xff")),
        properties: props(ctx::CONNECT).into(),
    }))
}

fn publish(qos: QoS, packet_id: u16, properties: Properties) -> Packet {
    Packet::Publish(Publish {
        dup: qos != QoS::AtMostOnce,
        qos,
        retain: qos == QoS::ExactlyOnce,
        topic: s("sensors/\u{3c0}/temp"),
        packet_id,
        payload: Bytes::from_static(b"{\"t\":21.5}"),
        properties: properties.into(),
    })
}

/// One of every packet type valid in `version`, v5 ones with every allowed property.
fn samples(version: ProtocolVersion) -> Vec<Packet> {
    let v5 = version.is_v5();
    let props = |context| {
        if v5 {
            all_props(context)
        } else {
            Properties::default()
        }
    };
    let ack = |packet_id, code: ReasonCode| PubAck {
        packet_id,
        code: if v5 { code } else { ReasonCode::Success },
        properties: props(ctx::PUBACK).into(),
    };
    let mut packets = vec![
        connect(if v5 { V5 } else { V3 }, v5),
        // A will-less, anonymous CONNECT.
        Packet::Connect(Box::new(Connect {
            protocol: version,
            clean_start: false,
            keepalive_secs: 0,
            client_id: s(""),
            will: None,
            username: None,
            password: None,
            properties: Props::NONE,
        })),
        Packet::ConnAck(ConnAck {
            session_present: true,
            code: ReasonCode::Success,
            properties: props(ctx::CONNACK).into(),
        }),
        Packet::ConnAck(ConnAck {
            session_present: false,
            code: ReasonCode::NotAuthorized,
            properties: Props::NONE,
        }),
        publish(QoS::AtMostOnce, 0, props(ctx::PUBLISH)),
        publish(QoS::AtLeastOnce, 1, props(ctx::PUBLISH)),
        publish(QoS::ExactlyOnce, 65_535, Properties::default()),
        Packet::PubAck(ack(2, ReasonCode::NoMatchingSubscribers)),
        Packet::PubAck(PubAck::new(3)),
        Packet::PubRec(ack(4, ReasonCode::QuotaExceeded)),
        Packet::PubRel(ack(5, ReasonCode::PacketIdentifierNotFound)),
        Packet::PubRel(PubAck::new(6)),
        Packet::PubComp(ack(7, ReasonCode::Success)),
        Packet::Subscribe(Subscribe {
            packet_id: 8,
            filters: vec![
                (
                    s("a/+/c"),
                    SubscriptionOptions {
                        qos: QoS::AtMostOnce,
                        ..Default::default()
                    },
                ),
                (
                    s("#"),
                    SubscriptionOptions {
                        qos: QoS::ExactlyOnce,
                        no_local: v5,
                        retain_as_published: v5,
                        retain_handling: if v5 { 2 } else { 0 },
                    },
                ),
            ],
            properties: props(ctx::SUBSCRIBE).into(),
        }),
        Packet::SubAck(SubAck {
            packet_id: 9,
            codes: vec![
                ReasonCode::GRANTED_QOS0,
                ReasonCode::GrantedQoS1,
                ReasonCode::GrantedQoS2,
                ReasonCode::UnspecifiedError,
            ],
            properties: props(ctx::SUBACK).into(),
        }),
        Packet::Unsubscribe(Unsubscribe {
            packet_id: 10,
            filters: vec![s("a/+/c"), s("x")],
            properties: props(ctx::UNSUBSCRIBE).into(),
        }),
        Packet::UnsubAck(UnsubAck {
            packet_id: 11,
            codes: if v5 {
                vec![ReasonCode::Success, ReasonCode::NoSubscriptionExisted]
            } else {
                Vec::new()
            },
            properties: props(ctx::UNSUBACK).into(),
        }),
        Packet::PingReq,
        Packet::PingResp,
        Packet::Disconnect(Disconnect::default()),
    ];
    if v5 {
        packets.push(Packet::Disconnect(Disconnect {
            code: ReasonCode::DisconnectWithWillMessage,
            properties: Props::NONE,
        }));
        packets.push(Packet::Disconnect(Disconnect {
            code: ReasonCode::ServerMoved,
            properties: all_props(ctx::DISCONNECT).into(),
        }));
        packets.push(Packet::Auth(Auth {
            code: ReasonCode::ContinueAuthentication,
            properties: all_props(ctx::AUTH).into(),
        }));
        packets.push(Packet::Auth(Auth {
            code: ReasonCode::Success,
            properties: Props::NONE,
        }));
        // An empty topic name stands for the topic alias.
        let aliased = Properties {
            topic_alias: Some(1),
            ..Default::default()
        };
        packets.push(Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: s(""),
            packet_id: 0,
            payload: Bytes::new(),
            properties: aliased.into(),
        }));
    }
    packets
}

#[test]
fn every_packet_round_trips_in_both_versions() {
    for version in [V3, V5] {
        let packets = samples(version);
        assert!(packets.len() >= 20);
        for packet in packets {
            let bytes = enc(&packet, version);
            assert_eq!(dec_one(&bytes, version), packet, "{version:?} {bytes:02x?}");
        }
    }
}

#[test]
fn v5_samples_carry_every_property_their_packet_allows() {
    let p = all_props(ctx::CONNACK);
    assert_eq!(p.maximum_qos, Some(1));
    assert_eq!(p.shared_subscription_available, Some(1));
    assert_eq!(all_props(ctx::PUBLISH).subscription_identifiers.len(), 2);
    assert_eq!(all_props(ctx::WILL).will_delay_interval, Some(5));
}

#[test]
fn mqtt_3_1_connect_round_trips_as_mqisdp() {
    let packet = connect(ProtocolVersion::V3_1, false);
    // The version argument does not matter for CONNECT, either way.
    let bytes = enc(&packet, V5);
    assert_eq!(&bytes[2..11], b"\x00\x06MQIsdp\x03");
    assert_eq!(dec_one(&bytes, V3), packet);
    assert_eq!(dec_one(&bytes, V5), packet);
}

#[test]
fn v3_leaves_out_v5_fields() {
    let packet = connect(V3, true); // properties set, but a 3.1.1 CONNECT has none
    let bytes = enc(&packet, V5);
    let Packet::Connect(mut expected) = packet else {
        unreachable!()
    };
    expected.properties = Props::NONE;
    if let Some(will) = expected.will.as_mut() {
        will.properties = Props::NONE;
    }
    assert_eq!(dec_one(&bytes, V5), Packet::Connect(expected));

    let ack = Packet::PubAck(PubAck {
        packet_id: 1,
        code: ReasonCode::QuotaExceeded,
        properties: all_props(ctx::PUBACK).into(),
    });
    assert_eq!(enc(&ack, V3), [0x40, 0x02, 0x00, 0x01]);
    let disconnect = Packet::Disconnect(Disconnect {
        code: ReasonCode::ServerMoved,
        properties: all_props(ctx::DISCONNECT).into(),
    });
    assert_eq!(enc(&disconnect, V3), [0xE0, 0x00]);
    let mut out = Vec::new();
    let auth = Packet::Auth(Auth {
        code: ReasonCode::Success,
        properties: Props::NONE,
    });
    assert_eq!(
        encode(&auth, V3, &mut out),
        Err(EncodeError::Invalid("AUTH exists only in MQTT 5"))
    );
    assert!(out.is_empty());
}

#[test]
fn v3_connack_return_codes_map_both_ways() {
    let table = [
        (ReasonCode::Success, 0),
        (ReasonCode::UnsupportedProtocolVersion, 1),
        (ReasonCode::ClientIdentifierNotValid, 2),
        (ReasonCode::ServerUnavailable, 3),
        (ReasonCode::BadUserNameOrPassword, 4),
        (ReasonCode::NotAuthorized, 5),
    ];
    for (code, byte) in table {
        let packet = Packet::ConnAck(ConnAck {
            session_present: false,
            code,
            properties: Props::NONE,
        });
        assert_eq!(enc(&packet, V3), [0x20, 0x02, 0x00, byte]);
        assert_eq!(dec_one(&[0x20, 0x02, 0x00, byte], V3), packet);
    }
    // Failures 3.1.1 has no word for become "server unavailable".
    let banned = Packet::ConnAck(ConnAck {
        session_present: false,
        code: ReasonCode::Banned,
        properties: Props::NONE,
    });
    assert_eq!(enc(&banned, V3), [0x20, 0x02, 0x00, 0x03]);
    assert_eq!(enc(&banned, V5), [0x20, 0x03, 0x00, 0x8A, 0x00]);
}

#[test]
fn v3_suback_failures_become_0x80() {
    let packet = Packet::SubAck(SubAck {
        packet_id: 1,
        codes: vec![ReasonCode::GrantedQoS1, ReasonCode::TopicFilterInvalid],
        properties: Props::NONE,
    });
    assert_eq!(enc(&packet, V3), [0x90, 0x04, 0x00, 0x01, 0x01, 0x80]);
}

/// 3.1.1 section 3.1.2.10: protocol name, level 4, flags 0xCE, keep alive 10.
#[test]
fn spec_3_1_1_connect_example() {
    let mut body = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0xCE, 0x00, 0x0A];
    for f in [&b"c1"[..], b"w/t", b"bye", b"u", b"p"] {
        body.extend(field(f));
    }
    let bytes = frame(0x10, &body);
    let expected = Packet::Connect(Box::new(Connect {
        protocol: V3,
        clean_start: true,
        keepalive_secs: 10,
        client_id: s("c1"),
        will: Some(LastWill {
            topic: s("w/t"),
            payload: Bytes::from_static(b"bye"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Props::NONE,
        }),
        username: Some(s("u")),
        password: Some(Bytes::from_static(b"p")),
        properties: Props::NONE,
    }));
    assert_eq!(dec_one(&bytes, V3), expected);
    assert_eq!(enc(&expected, V3), bytes);
}

/// MQTT 5 section 3.1.2.12: flags 0xC2, keep alive 10, Session Expiry Interval 10.
#[test]
fn spec_5_connect_example() {
    let mut body = vec![
        0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0xC2, 0x00, 0x0A, 0x05, 0x11, 0x00, 0x00, 0x00,
        0x0A,
    ];
    for f in [&b"c1"[..], b"u", b"p"] {
        body.extend(field(f));
    }
    let bytes = frame(0x10, &body);
    let properties = Properties {
        session_expiry_interval: Some(10),
        ..Default::default()
    };
    let expected = Packet::Connect(Box::new(Connect {
        protocol: V5,
        clean_start: true,
        keepalive_secs: 10,
        client_id: s("c1"),
        will: None,
        username: Some(s("u")),
        password: Some(Bytes::from_static(b"p")),
        properties: properties.into(),
    }));
    // Parsed by its own level even on a connection still assumed to be 3.1.1.
    assert_eq!(dec_one(&bytes, V3), expected);
    assert_eq!(enc(&expected, V5), bytes);
}

/// 3.1.1 examples: PUBLISH variable header (3.3.2.3), SUBSCRIBE payload (3.8.3.1), SUBACK
/// payload (3.9.3), and the two-byte packets.
#[test]
fn spec_3_1_1_byte_vectors() {
    let publish = [0x32, 0x07, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x0A];
    assert_eq!(
        dec_one(&publish, V3),
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: s("a/b"),
            packet_id: 10,
            payload: Bytes::new(),
            properties: Props::NONE,
        })
    );
    let subscribe = [
        0x82, 0x0E, 0x00, 0x0A, 0x00, 0x03, b'a', b'/', b'b', 0x01, 0x00, 0x03, b'c', b'/', b'd',
        0x02,
    ];
    let expected = Packet::Subscribe(Subscribe {
        packet_id: 10,
        filters: vec![
            (
                s("a/b"),
                SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    ..Default::default()
                },
            ),
            (
                s("c/d"),
                SubscriptionOptions {
                    qos: QoS::ExactlyOnce,
                    ..Default::default()
                },
            ),
        ],
        properties: Props::NONE,
    });
    assert_eq!(dec_one(&subscribe, V3), expected);
    assert_eq!(enc(&expected, V3), subscribe);
    let suback = [0x90, 0x06, 0x00, 0x0A, 0x00, 0x01, 0x02, 0x80];
    assert_eq!(
        dec_one(&suback, V3),
        Packet::SubAck(SubAck {
            packet_id: 10,
            codes: vec![
                ReasonCode::Success,
                ReasonCode::GrantedQoS1,
                ReasonCode::GrantedQoS2,
                ReasonCode::UnspecifiedError
            ],
            properties: Props::NONE,
        })
    );
    for version in [V3, V5] {
        assert_eq!(dec_one(&[0xC0, 0x00], version), Packet::PingReq);
        assert_eq!(dec_one(&[0xD0, 0x00], version), Packet::PingResp);
        assert_eq!(enc(&Packet::PingReq, version), [0xC0, 0x00]);
        assert_eq!(enc(&Packet::PingResp, version), [0xD0, 0x00]);
        assert_eq!(
            enc(&Packet::Disconnect(Disconnect::default()), version),
            [0xE0, 0x00]
        );
    }
}

/// MQTT 5 3.4.2.1 / 3.14.2.1 / 3.15.2.1: the short forms of acks, DISCONNECT and AUTH.
#[test]
fn v5_short_forms() {
    let success = PubAck::new(1);
    assert_eq!(
        dec_one(&[0x40, 0x02, 0x00, 0x01], V5),
        Packet::PubAck(success.clone())
    );
    assert_eq!(
        enc(&Packet::PubAck(success.clone()), V5),
        [0x40, 0x02, 0x00, 0x01]
    );
    // A reason code alone, and a reason code with an empty property length.
    let quota = PubAck {
        code: ReasonCode::QuotaExceeded,
        ..success
    };
    assert_eq!(
        dec_one(&[0x50, 0x03, 0x00, 0x01, 0x97], V5),
        Packet::PubRec(quota.clone())
    );
    assert_eq!(
        dec_one(&[0x50, 0x04, 0x00, 0x01, 0x97, 0x00], V5),
        Packet::PubRec(quota.clone())
    );
    assert_eq!(
        enc(&Packet::PubRec(quota), V5),
        [0x50, 0x03, 0x00, 0x01, 0x97]
    );
    assert_eq!(
        dec_one(&[0x62, 0x03, 0x00, 0x01, 0x92], V5),
        Packet::PubRel(PubAck {
            packet_id: 1,
            code: ReasonCode::PacketIdentifierNotFound,
            properties: Properties::default().into()
        })
    );
    assert_eq!(
        dec_one(&[0xE0, 0x00], V5),
        Packet::Disconnect(Disconnect::default())
    );
    assert_eq!(
        dec_one(&[0xE0, 0x01, 0x04], V5),
        Packet::Disconnect(Disconnect {
            code: ReasonCode::DisconnectWithWillMessage,
            properties: Properties::default().into()
        })
    );
    assert_eq!(
        dec_one(&[0xF0, 0x00], V5),
        Packet::Auth(Auth {
            code: ReasonCode::Success,
            properties: Properties::default().into()
        })
    );
}

#[test]
fn encode_publish_matches_encode() {
    for version in [V3, V5] {
        for packet in samples(version) {
            let Packet::Publish(p) = &packet else {
                continue;
            };
            let mut out = BytesMut::new();
            encode_publish(
                &mut out,
                version,
                &p.topic,
                &p.payload,
                p.qos,
                p.retain,
                p.dup,
                p.packet_id,
                p.properties.get(),
            )
            .unwrap();
            assert_eq!(out[..], enc(&packet, version)[..]);
        }
    }
}

/// Issue 8: one connection's Topic Alias goes next to a message's shared properties, and the
/// size the Maximum Packet Size check sees is the size written.
#[test]
fn publish_parts_add_a_topic_alias_and_know_their_size() {
    let shared = Properties {
        content_type: Some("text/plain".into()),
        ..Properties::default()
    };
    for (topic, properties) in [
        ("a/b", None),
        ("", None),
        ("a/b", Some(&shared)),
        ("", Some(&shared)),
    ] {
        let parts = PublishParts {
            topic,
            payload: b"hello",
            qos: QoS::AtLeastOnce,
            retain: false,
            dup: true,
            packet_id: 7,
            properties,
            topic_alias: Some(3),
        };
        let mut out = BytesMut::new();
        encode_publish_parts(&mut out, V5, &parts).unwrap();
        assert_eq!(out.len(), publish_parts_len(V5, &parts));
        let Packet::Publish(p) = dec_one(&out, V5) else {
            panic!("a PUBLISH");
        };
        assert_eq!((&*p.topic, p.properties.topic_alias), (topic, Some(3)));
        assert_eq!(
            p.properties.content_type,
            properties.and_then(|p| p.content_type.clone())
        );
        assert_eq!(
            (p.dup, p.packet_id, &p.payload[..]),
            (true, 7, &b"hello"[..])
        );
        // 3.1.1 has no alias: the topic must be there, and goes out without one.
        let mut v3 = BytesMut::new();
        let encoded = encode_publish_parts(&mut v3, V3, &parts);
        if topic.is_empty() {
            assert!(encoded.is_err() && v3.is_empty());
        } else {
            assert_eq!(v3.len(), publish_parts_len(V3, &parts));
            let mut plain = BytesMut::new();
            let (qos, retain, dup) = (QoS::AtLeastOnce, false, true);
            encode_publish(
                &mut plain, V3, topic, b"hello", qos, retain, dup, 7, properties,
            )
            .unwrap();
            assert_eq!(v3, plain);
        }
    }
    let zero = PublishParts {
        topic: "t",
        payload: b"",
        qos: QoS::AtMostOnce,
        retain: false,
        dup: false,
        packet_id: 0,
        properties: None,
        topic_alias: Some(0),
    };
    assert!(encode_publish_parts(&mut BytesMut::new(), V5, &zero).is_err());
    // [MQTT-3.3.2-8] A client's alias 0 is "Topic Alias invalid", not a plain protocol error.
    let alias_zero = [0x30, 0x07, 0x00, 0x01, b't', 0x03, 0x23, 0x00, 0x00];
    let error = dec(&alias_zero, V5).unwrap_err();
    assert_eq!(error.reason_code(), ReasonCode::TopicAliasInvalid);
}

#[test]
fn encode_refuses_what_the_wire_cannot_carry() {
    let mut out = Vec::new();
    // 268,435,455 is the largest remaining length; calloc'd zeros cost no memory until touched.
    let payload = vec![0u8; VAR_INT_MAX as usize];
    assert_eq!(
        encode_publish(
            &mut out,
            V3,
            "t",
            &payload,
            QoS::AtMostOnce,
            false,
            false,
            0,
            None
        ),
        Err(EncodeError::PacketTooLarge {
            remaining_length: VAR_INT_MAX as usize + 3
        })
    );
    let topic = "t".repeat(65_536);
    assert_eq!(
        encode_publish(
            &mut out,
            V3,
            &topic,
            b"",
            QoS::AtMostOnce,
            false,
            false,
            0,
            None
        ),
        Err(EncodeError::FieldTooLong { len: 65_536 })
    );
    assert_eq!(
        encode_publish(
            &mut out,
            V3,
            "t",
            b"",
            QoS::AtLeastOnce,
            false,
            false,
            0,
            None
        ),
        Err(EncodeError::ZeroPacketId)
    );
    assert_eq!(
        encode_publish(
            &mut out,
            V3,
            "t",
            b"",
            QoS::AtMostOnce,
            false,
            true,
            0,
            None
        ),
        Err(EncodeError::Invalid("DUP set on a QoS 0 PUBLISH"))
    );
    assert_eq!(
        encode_publish(
            &mut out,
            V3,
            "",
            b"",
            QoS::AtMostOnce,
            false,
            false,
            0,
            None
        ),
        Err(EncodeError::Invalid(
            "an empty topic name without a topic alias"
        ))
    );
    let mut ids = Properties::default();
    ids.subscription_identifiers.push(VAR_INT_MAX + 1);
    assert_eq!(
        encode_publish(
            &mut out,
            V5,
            "t",
            b"",
            QoS::AtMostOnce,
            false,
            false,
            0,
            Some(&ids)
        ),
        Err(EncodeError::VarIntTooLarge(VAR_INT_MAX + 1))
    );
    assert!(out.is_empty(), "nothing written on error");
    let mut small = [0u8; 4];
    assert_eq!(
        encode_publish(
            &mut &mut small[..],
            V3,
            "t",
            b"12",
            QoS::AtMostOnce,
            false,
            false,
            0,
            None
        ),
        Err(EncodeError::BufferTooSmall {
            needed: 7,
            available: 4
        })
    );
}

/// Feeds `chunks` one after another into one buffer, decoding whatever is whole after each.
fn decode_all(chunks: &[&[u8]], version: ProtocolVersion) -> Vec<Packet> {
    let mut buf = BytesMut::new();
    let mut packets = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            let before = buf.clone();
            match decode(&mut buf, version, u32::MAX).expect("valid stream") {
                Some(packet) => packets.push(packet),
                None => {
                    assert_eq!(buf, before, "Ok(None) leaves the buffer untouched");
                    break;
                }
            }
        }
    }
    assert!(buf.is_empty());
    packets
}

fn sample_stream(version: ProtocolVersion) -> (Vec<u8>, Vec<Packet>) {
    let v5 = version.is_v5();
    let props = |context| {
        if v5 {
            all_props(context)
        } else {
            Properties::default()
        }
    };
    let packets = vec![
        connect(version, v5),
        Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters: vec![(
                s("a/#"),
                SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    ..Default::default()
                },
            )],
            properties: props(ctx::SUBSCRIBE).into(),
        }),
        publish(QoS::AtMostOnce, 0, props(ctx::PUBLISH)),
        publish(QoS::AtLeastOnce, 2, Properties::default()),
        // A payload long enough for a two-byte remaining length.
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::ExactlyOnce,
            retain: false,
            topic: s("a/b"),
            packet_id: 3,
            payload: Bytes::from(vec![0x5A; 300]),
            properties: props(ctx::PUBLISH).into(),
        }),
        Packet::PubRel(PubAck::new(3)),
        Packet::PingReq,
        Packet::Disconnect(Disconnect::default()),
    ];
    let stream = packets.iter().flat_map(|p| enc(p, version)).collect();
    (stream, packets)
}

#[test]
fn decode_does_not_depend_on_where_reads_split() {
    for version in [V3, V5] {
        let (stream, packets) = sample_stream(version);
        let whole = decode_all(&[&stream], version);
        assert_eq!(whole, packets);
        for cut in 1..stream.len() {
            assert_eq!(
                decode_all(&[&stream[..cut], &stream[cut..]], version),
                whole,
                "{version:?} cut at {cut}"
            );
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(
            decode_all(&bytes, version),
            whole,
            "{version:?} byte by byte"
        );
    }
}

#[test]
fn packet_too_large_is_refused_before_the_body_arrives() {
    // Only the fixed header of a 1 + 3 + 20,000-byte PUBLISH has arrived.
    let mut buf = BytesMut::from(&[0x30, 0xA0, 0x9C, 0x01][..]);
    assert_eq!(
        decode(&mut buf, V3, 1024),
        Err(DecodeError::PacketTooLarge {
            size: 20_004,
            size_max: 1024
        })
    );
    assert_eq!(
        frame_len(&buf, 1024),
        Err(DecodeError::PacketTooLarge {
            size: 20_004,
            size_max: 1024
        })
    );
    assert_eq!(frame_len(&buf, 20_004), Ok(Some(20_004)));
    assert_eq!(
        DecodeError::PacketTooLarge {
            size: 1,
            size_max: 0
        }
        .reason_code(),
        ReasonCode::PacketTooLarge
    );
}

#[test]
fn decoded_publish_shares_the_receive_buffer() {
    let bytes = enc(&publish(QoS::AtLeastOnce, 1, Properties::default()), V3);
    let mut buf = BytesMut::from(&bytes[..]);
    let start = buf.as_ptr() as usize;
    let Some(Packet::Publish(p)) = decode(&mut buf, V3, u32::MAX).unwrap() else {
        panic!()
    };
    let payload_at = p.payload.as_ptr() as usize;
    assert!(
        payload_at > start && payload_at < start + bytes.len(),
        "payload not copied"
    );
}

// Bodies for malformed CONNECTs.
fn connect_body(name: &[u8], level: u8, flags: u8, tail: &[u8]) -> Vec<u8> {
    let mut body = field(name);
    body.extend_from_slice(&[level, flags, 0x00, 0x3C]);
    body.extend_from_slice(tail);
    body
}

#[test]
fn malformed_inputs_give_exact_errors() {
    use DecodeError::*;
    use ReasonCode as R;
    let c1 = field(b"c1");
    let v3_connect = |flags: u8, tail: &[u8]| frame(0x10, &connect_body(b"MQTT", 4, flags, tail));
    let v5_connect = |props: &[u8]| {
        let mut tail = vec![props.len() as u8];
        tail.extend_from_slice(props);
        tail.extend(field(b"c1"));
        frame(0x10, &connect_body(b"MQTT", 5, 0x02, &tail))
    };
    // A v5 QoS 0 PUBLISH to "t" with these property bytes.
    let v5_publish = |props: &[u8]| {
        let mut body = field(b"t");
        body.push(props.len() as u8);
        body.extend_from_slice(props);
        frame(0x30, &body)
    };
    let v5_subscribe = |props: &[u8], options: u8| {
        let mut body = vec![0x00, 0x01, props.len() as u8];
        body.extend_from_slice(props);
        body.extend(field(b"a/b"));
        body.push(options);
        frame(0x82, &body)
    };
    let publish_topic = |topic: &[u8]| {
        let mut body = field(topic);
        body.extend_from_slice(b"payload");
        frame(0x30, &body)
    };

    let cases: Vec<(&str, ProtocolVersion, Vec<u8>, DecodeError, ReasonCode)> = vec![
        (
            "packet type 0",
            V3,
            vec![0x00, 0x00],
            InvalidPacketType(0),
            R::MalformedPacket,
        ),
        (
            "AUTH under 3.1.1",
            V3,
            vec![0xF0, 0x00],
            InvalidPacketType(15),
            R::MalformedPacket,
        ),
        // [MQTT-2.2.2-2] [MQTT-3.6.1-1]
        (
            "PUBREL flags 0",
            V3,
            vec![0x60, 0x02, 0x00, 0x01],
            InvalidFlags {
                packet_type: 6,
                flags: 0,
            },
            R::MalformedPacket,
        ),
        (
            "SUBSCRIBE flags 0",
            V5,
            frame(0x80, &[0x00, 0x01, 0x00, 0x00, 0x01, b'a', 0x00]),
            InvalidFlags {
                packet_type: 8,
                flags: 0,
            },
            R::MalformedPacket,
        ),
        (
            "UNSUBSCRIBE flags 3",
            V3,
            frame(0xA3, &[0x00, 0x01, 0x00, 0x01, b'a']),
            InvalidFlags {
                packet_type: 10,
                flags: 3,
            },
            R::MalformedPacket,
        ),
        (
            "PINGREQ flags 1",
            V3,
            vec![0xC1, 0x00],
            InvalidFlags {
                packet_type: 12,
                flags: 1,
            },
            R::MalformedPacket,
        ),
        (
            "CONNECT flags 2",
            V3,
            vec![0x12, 0x00],
            InvalidFlags {
                packet_type: 1,
                flags: 2,
            },
            R::MalformedPacket,
        ),
        // [MQTT-3.3.1-4]
        (
            "PUBLISH QoS 3",
            V3,
            vec![0x36, 0x05, 0x00, 0x01, b't', 0x00, 0x01],
            InvalidQoS,
            R::MalformedPacket,
        ),
        // [MQTT-3.3.1-2]
        (
            "PUBLISH QoS 0 with DUP",
            V5,
            vec![0x38, 0x04, 0x00, 0x01, b't', 0x00],
            InvalidFlags {
                packet_type: 3,
                flags: 8,
            },
            R::MalformedPacket,
        ),
        // [MQTT-1.5.5-1]
        (
            "5-byte remaining length",
            V3,
            vec![0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
            MalformedRemainingLength,
            R::MalformedPacket,
        ),
        (
            "PINGREQ with a body",
            V3,
            vec![0xC0, 0x01, 0x00],
            TrailingBytes,
            R::MalformedPacket,
        ),
        (
            "PUBACK too short",
            V3,
            vec![0x40, 0x01, 0x00],
            RemainingLengthTooShort,
            R::MalformedPacket,
        ),
        (
            "3.1.1 PUBACK with a reason code",
            V3,
            vec![0x40, 0x03, 0x00, 0x01, 0x00],
            TrailingBytes,
            R::MalformedPacket,
        ),
        (
            "3.1.1 DISCONNECT with a body",
            V3,
            vec![0xE0, 0x01, 0x00],
            TrailingBytes,
            R::MalformedPacket,
        ),
        (
            "string past the remaining length",
            V3,
            frame(0x30, &[0x00, 0x09, b'a']),
            RemainingLengthTooShort,
            R::MalformedPacket,
        ),
        // [MQTT-3.1.2-1]
        (
            "protocol name MQTX",
            V3,
            frame(0x10, &connect_body(b"MQTX", 4, 0x02, &c1)),
            InvalidProtocolName,
            R::UnsupportedProtocolVersion,
        ),
        // [MQTT-3.1.2-2]
        (
            "protocol level 6",
            V3,
            frame(0x10, &connect_body(b"MQTT", 6, 0x02, &c1)),
            UnsupportedProtocolVersion { level: 6 },
            R::UnsupportedProtocolVersion,
        ),
        (
            "MQIsdp at level 4",
            V3,
            frame(0x10, &connect_body(b"MQIsdp", 4, 0x02, &c1)),
            UnsupportedProtocolVersion { level: 4 },
            R::UnsupportedProtocolVersion,
        ),
        (
            "MQTT at level 3",
            V3,
            frame(0x10, &connect_body(b"MQTT", 3, 0x02, &c1)),
            UnsupportedProtocolVersion { level: 3 },
            R::UnsupportedProtocolVersion,
        ),
        // [MQTT-3.1.2-3]
        (
            "CONNECT reserved flag",
            V3,
            v3_connect(0x03, &c1),
            InvalidConnectFlags(0x03),
            R::MalformedPacket,
        ),
        // [MQTT-3.1.2-13]
        (
            "will QoS without will",
            V3,
            v3_connect(0x0A, &c1),
            InvalidConnectFlags(0x0A),
            R::MalformedPacket,
        ),
        // [MQTT-3.1.2-15]
        (
            "will retain without will",
            V3,
            v3_connect(0x22, &c1),
            InvalidConnectFlags(0x22),
            R::MalformedPacket,
        ),
        // [MQTT-3.1.2-14]
        (
            "will QoS 3",
            V3,
            v3_connect(0x1E, &c1),
            InvalidQoS,
            R::MalformedPacket,
        ),
        // [MQTT-3.1.2-22]
        (
            "3.1.1 password without user name",
            V3,
            v3_connect(0x42, &[c1.clone(), field(b"pw")].concat()),
            InvalidConnectFlags(0x42),
            R::MalformedPacket,
        ),
        (
            "will topic with a wildcard",
            V3,
            v3_connect(0x06, &[c1.clone(), field(b"w/+"), field(b"x")].concat()),
            WildcardInTopicName,
            R::TopicNameInvalid,
        ),
        (
            "empty will topic",
            V3,
            v3_connect(0x06, &[c1.clone(), field(b""), field(b"x")].concat()),
            EmptyTopicName,
            R::ProtocolError,
        ),
        (
            "CONNECT without client id",
            V3,
            v3_connect(0x02, &[]),
            RemainingLengthTooShort,
            R::MalformedPacket,
        ),
        // [MQTT-1.5.3-1] [MQTT-1.5.3-2]
        (
            "topic not UTF-8",
            V3,
            publish_topic(&[b'a', 0xC3, 0x28]),
            InvalidUtf8,
            R::MalformedPacket,
        ),
        (
            "topic with a surrogate",
            V3,
            publish_topic(&[0xED, 0xA0, 0x80]),
            InvalidUtf8,
            R::MalformedPacket,
        ),
        (
            "topic with U+0000",
            V3,
            publish_topic(b"a\x00b"),
            NullCharacter,
            R::MalformedPacket,
        ),
        (
            "client id not UTF-8",
            V3,
            v3_connect(0x02, &field(&[0xFF])),
            InvalidUtf8,
            R::MalformedPacket,
        ),
        // [MQTT-3.3.2-2]
        (
            "topic with +",
            V3,
            publish_topic(b"a/+"),
            WildcardInTopicName,
            R::TopicNameInvalid,
        ),
        (
            "topic with #",
            V5,
            v5_publish(&[])
                .iter()
                .map(|&b| if b == b't' { b'#' } else { b })
                .collect(),
            WildcardInTopicName,
            R::TopicNameInvalid,
        ),
        // [MQTT-4.7.3-1]
        (
            "empty topic",
            V3,
            publish_topic(b""),
            EmptyTopicName,
            R::ProtocolError,
        ),
        (
            "v5 empty topic without alias",
            V5,
            frame(0x30, &[0x00, 0x00, 0x00]),
            EmptyTopicName,
            R::ProtocolError,
        ),
        // [MQTT-2.3.1-1]
        (
            "QoS 1 PUBLISH packet id 0",
            V3,
            frame(0x32, &[0x00, 0x01, b't', 0x00, 0x00]),
            ZeroPacketId,
            R::ProtocolError,
        ),
        (
            "PUBACK packet id 0",
            V5,
            vec![0x40, 0x02, 0x00, 0x00],
            ZeroPacketId,
            R::ProtocolError,
        ),
        (
            "SUBSCRIBE packet id 0",
            V3,
            frame(0x82, &[0x00, 0x00, 0x00, 0x01, b'a', 0x00]),
            ZeroPacketId,
            R::ProtocolError,
        ),
        // [MQTT-3.8.3-3] [MQTT-3.10.3-2]
        (
            "SUBSCRIBE without filters",
            V3,
            vec![0x82, 0x02, 0x00, 0x01],
            EmptySubscription,
            R::ProtocolError,
        ),
        (
            "v5 SUBSCRIBE without filters",
            V5,
            vec![0x82, 0x03, 0x00, 0x01, 0x00],
            EmptySubscription,
            R::ProtocolError,
        ),
        (
            "UNSUBSCRIBE without filters",
            V3,
            vec![0xA2, 0x02, 0x00, 0x01],
            EmptySubscription,
            R::ProtocolError,
        ),
        (
            "SUBSCRIBE filter without options",
            V3,
            frame(0x82, &[0x00, 0x01, 0x00, 0x01, b'a']),
            RemainingLengthTooShort,
            R::MalformedPacket,
        ),
        // [MQTT-3-8.3-4]
        (
            "3.1.1 subscription options with no-local",
            V3,
            frame(0x82, &[0x00, 0x01, 0x00, 0x01, b'a', 0x04]),
            InvalidSubscriptionOptions(0x04),
            R::MalformedPacket,
        ),
        // [MQTT-3.8.3-5]
        (
            "v5 subscription options bit 6",
            V5,
            v5_subscribe(&[], 0x41),
            InvalidSubscriptionOptions(0x41),
            R::MalformedPacket,
        ),
        (
            "subscription QoS 3",
            V5,
            v5_subscribe(&[], 0x03),
            InvalidQoS,
            R::MalformedPacket,
        ),
        (
            "retain handling 3",
            V5,
            v5_subscribe(&[], 0x30),
            InvalidRetainHandling,
            R::ProtocolError,
        ),
        (
            "two subscription identifiers on SUBSCRIBE",
            V5,
            v5_subscribe(&[0x0B, 0x01, 0x0B, 0x02], 0x00),
            DuplicateProperty(0x0B),
            R::ProtocolError,
        ),
        (
            "subscription identifier 0",
            V5,
            v5_subscribe(&[0x0B, 0x00], 0x00),
            InvalidPropertyValue { id: 0x0B },
            R::ProtocolError,
        ),
        (
            "duplicate message expiry",
            V5,
            v5_publish(&[0x02, 0, 0, 0, 1, 0x02, 0, 0, 0, 2]),
            DuplicateProperty(0x02),
            R::ProtocolError,
        ),
        (
            "session expiry on PUBLISH",
            V5,
            v5_publish(&[0x11, 0, 0, 0, 1]),
            PropertyNotAllowed { id: 0x11 },
            R::MalformedPacket,
        ),
        (
            "topic alias on CONNECT",
            V5,
            v5_connect(&[0x23, 0x00, 0x01]),
            PropertyNotAllowed { id: 0x23 },
            R::MalformedPacket,
        ),
        (
            "property 0x05",
            V5,
            v5_publish(&[0x05, 0x00]),
            UnknownProperty(0x05),
            R::MalformedPacket,
        ),
        (
            "property 0x80",
            V5,
            v5_publish(&[0x80, 0x01]),
            UnknownProperty(0x80),
            R::MalformedPacket,
        ),
        (
            "payload format 2",
            V5,
            v5_publish(&[0x01, 0x02]),
            InvalidPropertyValue { id: 0x01 },
            R::ProtocolError,
        ),
        (
            "topic alias 0",
            V5,
            v5_publish(&[0x23, 0x00, 0x00]),
            InvalidPropertyValue { id: 0x23 },
            // [MQTT-3.3.2-8] Issue 8: DISCONNECT 0x94, as for an alias over the maximum.
            R::TopicAliasInvalid,
        ),
        (
            "response topic with a wildcard",
            V5,
            v5_publish(&[0x08, 0x00, 0x01, b'#']),
            WildcardInTopicName,
            R::TopicNameInvalid,
        ),
        (
            "receive maximum 0",
            V5,
            v5_connect(&[0x21, 0x00, 0x00]),
            InvalidPropertyValue { id: 0x21 },
            R::ProtocolError,
        ),
        (
            "maximum packet size 0",
            V5,
            v5_connect(&[0x27, 0, 0, 0, 0]),
            InvalidPropertyValue { id: 0x27 },
            R::ProtocolError,
        ),
        (
            "request problem information 2",
            V5,
            v5_connect(&[0x17, 0x02]),
            InvalidPropertyValue { id: 0x17 },
            R::ProtocolError,
        ),
        (
            "authentication data without method",
            V5,
            v5_connect(&[0x16, 0x00, 0x01, 0xAA]),
            ProtocolError("authentication data without a method"),
            R::ProtocolError,
        ),
        (
            "user property without value",
            V5,
            v5_publish(&[0x26, 0x00, 0x01, b'k']),
            MalformedPacket("a property runs past the property length"),
            R::MalformedPacket,
        ),
        (
            "property length past the packet",
            V5,
            frame(0x30, &[0x00, 0x01, b't', 0x09, 0x01, 0x00]),
            RemainingLengthTooShort,
            R::MalformedPacket,
        ),
        (
            "property length of 5 bytes",
            V5,
            frame(0x30, &[0x00, 0x01, b't', 0x80, 0x80, 0x80, 0x80, 0x01]),
            MalformedPacket("a variable byte integer takes more than 4 bytes"),
            R::MalformedPacket,
        ),
        (
            "PUBACK reason 0x05",
            V5,
            vec![0x40, 0x03, 0x00, 0x01, 0x05],
            InvalidReasonCode(0x05),
            R::MalformedPacket,
        ),
        (
            "PUBREL reason 0x10",
            V5,
            vec![0x62, 0x03, 0x00, 0x01, 0x10],
            InvalidReasonCode(0x10),
            R::MalformedPacket,
        ),
        (
            "DISCONNECT reason 0x01",
            V5,
            vec![0xE0, 0x01, 0x01],
            InvalidReasonCode(0x01),
            R::MalformedPacket,
        ),
        (
            "AUTH reason 0x87",
            V5,
            vec![0xF0, 0x01, 0x87],
            InvalidReasonCode(0x87),
            R::MalformedPacket,
        ),
        (
            "3.1.1 CONNACK return code 6",
            V3,
            vec![0x20, 0x02, 0x00, 0x06],
            InvalidReasonCode(0x06),
            R::MalformedPacket,
        ),
        (
            "3.1.1 SUBACK return code 3",
            V3,
            vec![0x90, 0x03, 0x00, 0x01, 0x03],
            InvalidReasonCode(0x03),
            R::MalformedPacket,
        ),
        // [MQTT-3.2.2-1]
        (
            "CONNACK reserved flag",
            V3,
            vec![0x20, 0x02, 0x02, 0x00],
            MalformedPacket("CONNACK flags set reserved bits"),
            R::MalformedPacket,
        ),
        (
            "SUBACK without codes",
            V3,
            vec![0x90, 0x02, 0x00, 0x01],
            ProtocolError("an acknowledgement without reason codes"),
            R::ProtocolError,
        ),
    ];
    assert!(cases.len() >= 30);
    for (name, version, bytes, error, reason) in cases {
        assert_eq!(dec(&bytes, version), Err(error), "{name}: {bytes:02x?}");
        assert_eq!(error.reason_code(), reason, "{name}");
        assert!(!error.to_string().is_empty());
    }
}

/// Table 2.2.2.2 from the other side: every defined property placed where it is not allowed is
/// refused by id (the encoder trusts its caller, so it writes them).
#[test]
fn properties_outside_their_packets_are_refused() {
    for id in 0..=0x2Au8 {
        let Some(allowed) = ctx::allowed(id) else {
            continue;
        };
        let mut props = Properties::default();
        set_sample(&mut props, id, 0);
        let packets = [
            (ctx::PUBLISH, publish(QoS::AtLeastOnce, 1, props.clone())),
            (
                ctx::PUBACK,
                Packet::PubAck(PubAck {
                    packet_id: 1,
                    code: ReasonCode::Success,
                    properties: props.clone().into(),
                }),
            ),
            (
                ctx::DISCONNECT,
                Packet::Disconnect(Disconnect {
                    code: ReasonCode::Success,
                    properties: props.clone().into(),
                }),
            ),
            (
                ctx::AUTH,
                Packet::Auth(Auth {
                    code: ReasonCode::Success,
                    properties: props.clone().into(),
                }),
            ),
            (
                ctx::UNSUBSCRIBE,
                Packet::Unsubscribe(Unsubscribe {
                    packet_id: 1,
                    filters: vec![s("a")],
                    properties: props.clone().into(),
                }),
            ),
            (
                ctx::CONNACK,
                Packet::ConnAck(ConnAck {
                    session_present: false,
                    code: ReasonCode::Success,
                    properties: props.clone().into(),
                }),
            ),
        ];
        for (context, packet) in packets {
            let result = dec(&enc(&packet, V5), V5);
            if allowed & context == 0 {
                assert_eq!(
                    result,
                    Err(DecodeError::PropertyNotAllowed { id }),
                    "{id:#04x} in {packet:?}"
                );
            } else {
                assert_eq!(result, Ok(Some(packet)), "{id:#04x}");
            }
        }
    }
}

/// The smallest xorshift: deterministic mutations without a dependency.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Decodes `bytes` until it ends or fails; whatever decodes must encode and decode back to
/// itself. Any panic fails the test.
fn decode_and_reencode(bytes: &[u8], version: ProtocolVersion) -> usize {
    let mut buf = BytesMut::from(bytes);
    let mut decoded = 0;
    while let Ok(Some(packet)) = decode(&mut buf, version, 1 << 20) {
        decoded += 1;
        let mut out = BytesMut::new();
        encode(&packet, version, &mut out).unwrap_or_else(|e| panic!("re-encode {packet:?}: {e}"));
        assert_eq!(out.len(), encoded_len(&packet, version));
        assert_eq!(dec(&out, version), Ok(Some(packet)));
    }
    decoded
}

/// `decode_in` over the same bytes frozen gives, packet by packet, what `decode` gives (a
/// PUBLISH read in place, made whole by `into_publish`), with the same sizes and the same error
/// at the end; `publish_at` reads those same PUBLISHes and nothing else. Returns how many
/// PUBLISHes were read in place.
fn decode_in_agrees(bytes: &[u8], version: ProtocolVersion) -> usize {
    let frozen = Bytes::copy_from_slice(bytes);
    let mut buf = BytesMut::from(bytes);
    let mut at = 0;
    let mut in_place = 0;
    loop {
        let before = buf.len();
        let expected = decode(&mut buf, version, 1 << 20);
        let got = decode_in(&frozen, at, version, 1 << 20);
        match (expected, got) {
            (Ok(Some(packet)), Ok(Some((decoded, size)))) => {
                assert_eq!(size, before - buf.len(), "{packet:?}");
                // `publish_at` reads exactly the PUBLISHes `decode_in` reads in place.
                let at_front = publish_at(&frozen[at..], version, 1 << 20);
                let read = match decoded {
                    Decoded::Publish(publish) => {
                        in_place += 1;
                        assert_eq!(at_front, Some((publish, size)));
                        Packet::Publish(publish.into_publish(&frozen))
                    }
                    Decoded::Packet(packet) => {
                        assert_eq!(at_front, None, "{packet:?}");
                        packet
                    }
                };
                assert_eq!(read, packet);
                at += size;
            }
            (Ok(None), Ok(None)) => {
                assert_eq!(publish_at(&frozen[at..], version, 1 << 20), None);
                return in_place;
            }
            (Err(expected), Err(got)) => {
                assert_eq!(got, expected, "{bytes:02x?}");
                assert_eq!(publish_at(&frozen[at..], version, 1 << 20), None);
                return in_place;
            }
            (expected, got) => panic!("decode {expected:?}, decode_in {got:?}: {bytes:02x?}"),
        }
    }
}

#[test]
fn plain_publishes_are_read_in_place() {
    for version in [V3, V5] {
        let publish = |qos, topic: &str, payload: &'static [u8], properties| {
            Packet::Publish(Publish {
                dup: false,
                qos,
                retain: qos == QoS::AtLeastOnce,
                topic: ByteString::from(topic),
                packet_id: if qos == QoS::AtMostOnce { 0 } else { 7 },
                payload: Bytes::from_static(payload),
                properties,
            })
        };
        let mut bytes = Vec::new();
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            bytes.extend(enc(&publish(qos, "a/b", b"hello", Props::NONE), version));
            bytes.extend(enc(&publish(qos, "t", b"", Props::NONE), version));
        }
        bytes.extend(enc(&Packet::PingReq, version));
        assert_eq!(decode_in_agrees(&bytes, version), 6);
        // [MQTT-3.3.2-2] A wildcard is refused the same way read in place or not.
        let wildcard = enc(&publish(QoS::AtMostOnce, "a/+", b"x", Props::NONE), version);
        assert_eq!(decode_in_agrees(&wildcard, version), 0);
        let frozen = Bytes::from(wildcard);
        assert_eq!(
            decode_in(&frozen, 0, version, 1 << 20).unwrap_err(),
            DecodeError::WildcardInTopicName
        );
    }
    // With properties: the general path.
    let properties = Properties {
        message_expiry_interval: Some(9),
        ..Properties::default()
    };
    let with = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: ByteString::from("a"),
        packet_id: 0,
        payload: Bytes::from_static(b"x"),
        properties: Props::from(properties),
    });
    let frozen = Bytes::from(enc(&with, V5));
    let decoded = decode_in(&frozen, 0, V5, 1 << 20).unwrap().unwrap();
    assert!(matches!(decoded, (Decoded::Packet(ref p), _) if *p == with));
    assert_eq!(decode_in_agrees(&frozen, V5), 0);
}

#[test]
fn prefixes_of_valid_packets_wait_for_more() {
    for version in [V3, V5] {
        for packet in samples(version) {
            let bytes = enc(&packet, version);
            for end in 0..bytes.len() {
                assert_eq!(
                    dec(&bytes[..end], version),
                    Ok(None),
                    "{packet:?} cut at {end}"
                );
            }
        }
    }
}

#[test]
fn mutations_of_valid_packets_never_panic() {
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let mut decoded = 0;
    let mut in_place = 0;
    for version in [V3, V5] {
        let (stream, _) = sample_stream(version);
        let mut seeds: Vec<Vec<u8>> = samples(version).iter().map(|p| enc(p, version)).collect();
        seeds.push(stream);
        for seed in &seeds {
            decode_and_reencode(seed, version);
            in_place += decode_in_agrees(seed, version);
            for _ in 0..400 {
                let mut bytes = seed.clone();
                for _ in 0..1 + rng.below(4) {
                    let at = rng.below(bytes.len());
                    match rng.below(5) {
                        0 => bytes[at] ^= 1 << rng.below(8),
                        1 => bytes[at] = rng.next() as u8,
                        2 => bytes.insert(at, rng.next() as u8),
                        3 => {
                            bytes.remove(at);
                        }
                        _ => bytes.truncate(at),
                    }
                    if bytes.is_empty() {
                        bytes.push(rng.next() as u8);
                    }
                }
                decoded += decode_and_reencode(&bytes, version);
                decoded += decode_and_reencode(&bytes, if version.is_v5() { V3 } else { V5 });
                in_place += decode_in_agrees(&bytes, version);
                in_place += decode_in_agrees(&bytes, if version.is_v5() { V3 } else { V5 });
            }
        }
    }
    // Pure noise, too.
    for _ in 0..5000 {
        let len = rng.below(64);
        let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        decode_and_reencode(&bytes, V3);
        decode_and_reencode(&bytes, V5);
        decode_in_agrees(&bytes, V3);
        decode_in_agrees(&bytes, V5);
    }
    // Mutations must reach past the first checks: many still decode (e.g. a changed payload).
    assert!(decoded > 2000, "only {decoded} mutated inputs decoded");
    assert!(in_place > 500, "only {in_place} PUBLISHes read in place");
}

/// The committed fuzz seeds stay valid: each decodes whole in the version its name gives.
#[test]
fn fuzz_seeds_decode() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/decode");
    let mut seed_count = 0;
    for entry in std::fs::read_dir(&dir).expect("fuzz/corpus/decode") {
        let path = entry.expect("dir entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        if !name.starts_with("seed-") {
            continue;
        }
        let version = if name.contains("v5") { V5 } else { V3 };
        let bytes = std::fs::read(&path).expect("seed");
        let mut buf = BytesMut::from(&bytes[..]);
        let mut packet_count = 0;
        while !buf.is_empty() {
            match decode(&mut buf, version, u32::MAX) {
                Ok(Some(_)) => packet_count += 1,
                other => panic!("{name}: {other:?} after {packet_count} packets"),
            }
        }
        assert!(packet_count > 0, "{name}");
        seed_count += 1;
    }
    assert!(seed_count >= 10, "only {seed_count} seeds");
}

/// The word-wide pre-check behind string validation never misses a byte below 0x2C.
#[test]
fn word_wide_scan_agrees_with_a_byte_loop() {
    let mut rng = XorShift(0x1234_5678_9ABC_DEF1);
    for _ in 0..100_000 {
        let len = rng.below(40);
        // Mostly topic-like bytes, now and then one from anywhere.
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                if rng.below(16) == 0 {
                    rng.next() as u8
                } else {
                    0x2C + rng.below(0x54) as u8
                }
            })
            .collect();
        let expected = super::decode::Scan {
            below_0x2c: bytes.iter().any(|&b| b < 0x2C),
            ascii: bytes.is_ascii(),
        };
        assert_eq!(super::decode::scan(&bytes), expected, "{bytes:02x?}");
    }
    // Short strings (padded), whole words, and tails read as the last word overlapping the
    // one before.
    for len in [1, 2, 5, 7, 8, 9, 13, 16, 23] {
        for b in 0..=255u8 {
            for at in 0..len {
                let mut bytes = vec![b'a'; len];
                bytes[at] = b;
                let expected = super::decode::Scan {
                    below_0x2c: b < 0x2C,
                    ascii: b < 0x80,
                };
                assert_eq!(
                    super::decode::scan(&bytes),
                    expected,
                    "{b:#04x} at {at} of {len}"
                );
            }
        }
    }
}

/// Issue 8: an oversized CONNECT's level is read from its first bytes, wherever they stop.
#[test]
fn connect_protocol_level_from_the_first_bytes() {
    use super::connect_protocol_level as level;
    // CONNECT, remaining length 20,000 (3 bytes), "MQTT", level 5, then the rest.
    let v5 = [
        0x10, 0xA0, 0x9C, 0x01, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02,
    ];
    for cut in 0..11 {
        assert_eq!(level(&v5[..cut]), Ok(None), "cut at {cut}");
    }
    assert_eq!(level(&v5[..11]), Ok(Some(5)));
    assert_eq!(level(&v5), Ok(Some(5)));
    let v3 = [
        0x10, 0x7F, 0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', 0x03,
    ];
    assert_eq!(level(&v3), Ok(Some(3)));
    assert_eq!(level(&[0x30, 0x7F, 0x00]), Err(()), "not a CONNECT");
    assert_eq!(
        level(&[0x10, 0x7F, 0x00, 0x04, b'M', b'Q', b'X', b'X', 5]),
        Err(())
    );
    assert_eq!(
        level(&[0x10, 0x7F, 0x00, 0x09]),
        Err(()),
        "no such name length"
    );
    assert_eq!(
        level(&[0x10, 0xFF, 0xFF, 0xFF, 0xFF]),
        Err(()),
        "5-byte length"
    );
}
